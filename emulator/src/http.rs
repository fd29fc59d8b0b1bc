//! Minimal HTTP/1.x: reading and parsing a request head with a size limit, and
//! building response heads and complete small responses the way Go's `net/http`
//! (behind gorilla's compress handler, as in Nomad) would write them.

use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use flate2::Compression;
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;

use crate::query::path_unescape;

/// Largest request head accepted (Go's `DefaultMaxHeaderBytes` is 1 MiB).
pub(crate) const MAX_HEAD_BYTES: usize = 1 << 20;

/// A parsed request head.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    /// Method, e.g. `GET`.
    pub method: String,
    /// Decoded path.
    pub path: String,
    /// Raw query string (after `?`, before any `#`).
    pub query: String,
    /// Minor version: `0` for HTTP/1.0, `1` for HTTP/1.1.
    pub minor: u8,
    /// Headers in order.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// First header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// `HTTP/1.0` or `HTTP/1.1`, echoed in the status line.
    pub fn proto(&self) -> &'static str {
        if self.minor == 0 { "HTTP/1.0" } else { "HTTP/1.1" }
    }

    /// Whether the connection may serve another request after this one.
    pub fn keep_alive(&self) -> bool {
        let conn = self.header("Connection").unwrap_or("");
        let has = |tok: &str| conn.split(',').any(|t| t.trim().eq_ignore_ascii_case(tok));
        if self.minor == 0 { false } else { !has("close") }
    }

    /// Length of a request body to skip, `Err` if it cannot be skipped safely.
    pub fn body_len(&self) -> Result<usize, ()> {
        if self.header("Transfer-Encoding").is_some() {
            return Err(());
        }
        match self.header("Content-Length") {
            None => Ok(0),
            Some(v) => v.trim().parse::<usize>().map_err(|_| ()),
        }
    }

    /// The compression gorilla's `CompressHandler` picks: the first of `gzip` or
    /// `deflate` listed (exact tokens after trimming, so `gzip;q=1` does not count).
    pub fn compression(&self) -> Option<Encoding> {
        let ae = self.header("Accept-Encoding")?;
        ae.split(',').find_map(|t| match t.trim() {
            "gzip" => Some(Encoding::Gzip),
            "deflate" => Some(Encoding::Deflate),
            _ => None,
        })
    }
}

/// A response content coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// `gzip`.
    Gzip,
    /// `deflate` (raw DEFLATE, as Go's `compress/flate` writes it).
    Deflate,
}

impl Encoding {
    /// The `Content-Encoding` token.
    pub fn token(self) -> &'static str {
        match self {
            Encoding::Gzip => "gzip",
            Encoding::Deflate => "deflate",
        }
    }
}

/// Why a request head could not be read.
#[derive(Debug)]
pub(crate) enum HeadError {
    /// The head is malformed; the text goes after `400 Bad Request: `.
    Malformed(&'static str),
    /// Larger than [`MAX_HEAD_BYTES`].
    TooLarge,
    /// Not HTTP/1.x.
    Version,
    /// The connection failed or closed mid-head.
    Io,
}

/// Reads one request head from `rd`, using and refilling `buf` (bytes after the head
/// stay in `buf`). `Ok(None)` on a clean EOF before any byte.
pub(crate) async fn read_request(
    rd: &mut OwnedReadHalf,
    buf: &mut Vec<u8>,
) -> Result<Option<Request>, HeadError> {
    let mut scanned: usize = 0;
    loop {
        // Ignore CRLFs before a request line (RFC 9112 §2.2).
        let lead = buf.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
        if lead > 0 {
            buf.drain(..lead);
            scanned = 0;
        }
        if let Some(end) = find_head_end(buf, scanned.saturating_sub(3)) {
            let head: Vec<u8> = buf.drain(..end).collect();
            return parse_head(&head).map(Some);
        }
        scanned = buf.len();
        if buf.len() > MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
        let mut chunk = [0u8; 8192];
        match rd.read(&mut chunk).await {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) | Err(_) => return Err(HeadError::Io),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Index just past the blank line ending the head (`\r\n\r\n` or bare `\n\n`).
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if buf.get(i + 1) == Some(&b'\n') {
                return Some(i + 2);
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

fn parse_head(head: &[u8]) -> Result<Request, HeadError> {
    let text = std::str::from_utf8(head).map_err(|_| HeadError::Malformed("invalid header"))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed("malformed HTTP request"));
    };
    if method.is_empty() || !method.bytes().all(is_token_byte) {
        return Err(HeadError::Malformed("invalid method"));
    }
    let minor = match version {
        "HTTP/1.1" => 1,
        "HTTP/1.0" => 0,
        v if v.starts_with("HTTP/") => return Err(HeadError::Version),
        _ => return Err(HeadError::Malformed("malformed HTTP version")),
    };
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(HeadError::Malformed("malformed MIME header line"));
        };
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(HeadError::Malformed("invalid header name"));
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
    let (path, query) = split_target(target)?;
    let req = Request { method: method.to_string(), path, query, minor, headers };
    if req.minor == 1 && req.header("Host").is_none() {
        return Err(HeadError::Malformed("missing required Host header"));
    }
    Ok(req)
}

/// Splits an origin-form or absolute-form target into a decoded path and raw query.
fn split_target(target: &str) -> Result<(String, String), HeadError> {
    let bad = HeadError::Malformed("invalid URI");
    let rest = if target.starts_with('/') {
        target
    } else if let Some(after) = target.strip_prefix("http://").or_else(|| target.strip_prefix("https://")) {
        after.find('/').map_or("/", |i| &after[i..])
    } else {
        return Err(bad);
    };
    let rest = rest.split('#').next().unwrap_or("");
    let (raw_path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let path = path_unescape(raw_path).ok_or(bad)?;
    Ok((path, query.to_string()))
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Go's reply to a head it cannot parse: written raw, then the connection closes.
pub(crate) fn bad_request(err: &HeadError) -> Vec<u8> {
    let (status, text) = match err {
        HeadError::Malformed(msg) => ("400 Bad Request", format!("400 Bad Request: {msg}")),
        HeadError::TooLarge => {
            ("431 Request Header Fields Too Large", "431 Request Header Fields Too Large".to_string())
        }
        HeadError::Version => (
            "505 HTTP Version Not Supported",
            "505 HTTP Version Not Supported: unsupported protocol version".to_string(),
        ),
        HeadError::Io => ("400 Bad Request", "400 Bad Request".to_string()),
    };
    format!("HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n{text}")
        .into_bytes()
}

/// Reason phrase of the status codes the emulator sends.
pub(crate) fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// A complete, non-streaming response (Nomad's `wrap` writing a coded error):
/// `Content-Length` framing, compressed when the request asked for gzip/deflate.
pub(crate) struct SimpleResponse<'a> {
    /// Status code.
    pub code: u16,
    /// Body text.
    pub body: &'a str,
    /// `Content-Type`; Go sniffs `text/plain; charset=utf-8` when the handler set none.
    pub content_type: &'a str,
    /// Whether the handler had set `Cache-Control: no-cache` (it does once the
    /// parameters are valid).
    pub no_cache: bool,
    /// `X-Nomad-Index`, for list endpoints.
    pub index: Option<u64>,
    /// `X-Nomad-NextToken`, for a list page with more after it.
    pub next_token: Option<&'a str>,
}

impl SimpleResponse<'_> {
    /// The response bytes for `req`; `keep_alive` adds nothing for 1.1 and
    /// `Connection: close` otherwise.
    pub fn render(&self, req: &Request, keep_alive: bool) -> Vec<u8> {
        let encoding = req.compression();
        let body = match encoding {
            Some(enc) => compress_all(enc, self.body.as_bytes()),
            None => self.body.as_bytes().to_vec(),
        };
        let mut head = format!("{} {} {}\r\n", req.proto(), self.code, reason(self.code));
        if self.no_cache {
            head.push_str("Cache-Control: no-cache\r\n");
        }
        if let Some(enc) = encoding {
            head.push_str(&format!("Content-Encoding: {}\r\n", enc.token()));
        }
        head.push_str(&format!("Content-Type: {}\r\n", self.content_type));
        head.push_str("Vary: Accept-Encoding\r\n");
        if let Some(index) = self.index {
            head.push_str(&format!("X-Nomad-Index: {index}\r\n"));
        }
        if let Some(token) = self.next_token {
            head.push_str(&format!("X-Nomad-NextToken: {token}\r\n"));
        }
        head.push_str(&format!("Date: {}\r\n", http_date(SystemTime::now())));
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        if !keep_alive && req.minor == 1 {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(&body);
        out
    }
}

fn compress_all(enc: Encoding, data: &[u8]) -> Vec<u8> {
    let result = match enc {
        Encoding::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), Compression::default());
            e.write_all(data).and_then(|()| e.finish())
        }
        Encoding::Deflate => {
            let mut e = flate2::write::DeflateEncoder::new(Vec::new(), Compression::default());
            e.write_all(data).and_then(|()| e.finish())
        }
    };
    // Writing into a Vec cannot fail.
    result.unwrap_or_default()
}

/// An IMF-fixdate (`Mon, 02 Jan 2006 15:04:05 GMT`), as in Go's `Date` header.
pub(crate) fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MON: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        WD[(days % 7) as usize],
        d,
        MON[(m - 1) as usize],
        y,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month 1-12, day 1-31) (H. Hinnant's algorithm).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn parses_heads() {
        let r = parse_head(
            b"GET /v1/event/stream?topic=Job&index=3 HTTP/1.1\r\nHost: x\r\nX-Nomad-Token:  abc \r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/v1/event/stream");
        assert_eq!(r.query, "topic=Job&index=3");
        assert_eq!(r.header("x-nomad-token"), Some("abc"));
        assert!(r.keep_alive());
        let r = parse_head(b"GET http://h:4646/v1/event/stream HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!((r.path.as_str(), r.minor, r.keep_alive()), ("/v1/event/stream", 0, false));
        assert!(matches!(
            parse_head(b"GET / HTTP/1.1\r\n\r\n"),
            Err(HeadError::Malformed("missing required Host header"))
        ));
        assert!(matches!(parse_head(b"GARBAGE\r\n\r\n"), Err(HeadError::Malformed(_))));
        assert!(matches!(parse_head(b"GET / HTTP/2.0\r\n\r\n"), Err(HeadError::Version)));
        assert!(matches!(
            parse_head(b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
    }

    #[test]
    fn compression_choice_follows_gorilla() {
        let mut r = parse_head(b"GET / HTTP/1.0\r\nAccept-Encoding: br, deflate, gzip\r\n\r\n").unwrap();
        assert_eq!(r.compression(), Some(Encoding::Deflate));
        r.headers = vec![("Accept-Encoding".into(), "gzip;q=1.0".into())];
        assert_eq!(r.compression(), None);
    }

    #[test]
    fn dates() {
        let t = UNIX_EPOCH + Duration::from_secs(1_136_214_245); // 2006-01-02 15:04:05
        assert_eq!(http_date(t), "Mon, 02 Jan 2006 15:04:05 GMT");
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
    }
}

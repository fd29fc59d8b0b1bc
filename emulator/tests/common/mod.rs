//! A tiny raw-TCP HTTP/1.x client for the emulator's tests: sends a request,
//! parses the response head, and reads the body raw, chunked and/or gzip-encoded,
//! line by line.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use flate2::write::GzDecoder;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

/// Fails the test if `fut` takes longer than 10 s.
pub async fn within<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), fut).await.expect("timed out")
}

/// A response whose head was read; the body is read through it.
pub struct Response {
    /// `HTTP/1.1 200 OK`.
    pub status_line: String,
    /// Status code.
    pub status: u16,
    /// Headers in order.
    pub headers: Vec<(String, String)>,
    stream: TcpStream,
    raw: Vec<u8>,
    chunked: bool,
    gzip: Option<GzDecoder<Vec<u8>>>,
    text: Vec<u8>,
    /// The body ended (EOF, last chunk, or Content-Length reached).
    pub ended: bool,
    /// The chunked body ended with the last chunk (not with EOF).
    pub terminated: bool,
    /// The connection reached EOF.
    pub eof: bool,
    remaining: Option<usize>,
}

/// Connects with default socket options.
pub async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.unwrap()
}

/// Connects with a small receive buffer, so the server's writes block soon.
pub async fn connect_small(addr: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(addr).await.unwrap()
}

/// `GET target` over a new connection.
pub async fn get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Response {
    send(connect(addr).await, "GET", target, headers).await
}

/// Sends a request on `stream` and reads the response head.
pub async fn send(mut stream: TcpStream, method: &str, target: &str, headers: &[(&str, &str)]) -> Response {
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: nomad.test\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    read_head(stream, Vec::new()).await
}

/// Sends raw request bytes on a new connection and reads the response head.
pub async fn raw_request(addr: SocketAddr, raw: &str) -> Response {
    let mut stream = connect(addr).await;
    stream.write_all(raw.as_bytes()).await.unwrap();
    read_head(stream, Vec::new()).await
}

/// Reads a response head from `stream` (with `raw` already received).
pub async fn read_head(mut stream: TcpStream, mut raw: Vec<u8>) -> Response {
    let end = loop {
        if let Some(pos) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let mut buf = vec![0u8; 4096];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "EOF before the response head: {:?}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8(raw.drain(..end).collect()).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap().to_string();
    let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.to_string(), v.trim().to_string())
        })
        .collect();
    let find =
        |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
    let chunked = find("Transfer-Encoding").is_some_and(|v| v == "chunked");
    let gzip = find("Content-Encoding").filter(|v| v == "gzip").map(|_| GzDecoder::new(Vec::new()));
    let remaining = find("Content-Length").map(|v| v.parse().unwrap());
    Response {
        status_line,
        status,
        headers,
        stream,
        raw,
        chunked,
        gzip,
        text: Vec::new(),
        ended: false,
        terminated: false,
        eof: false,
        remaining,
    }
}

impl Response {
    /// First header named `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    async fn fill(&mut self) -> bool {
        let mut buf = vec![0u8; 65536];
        match self.stream.read(&mut buf).await {
            Ok(0) | Err(_) => {
                self.eof = true;
                false
            }
            Ok(n) => {
                self.raw.extend_from_slice(&buf[..n]);
                true
            }
        }
    }

    fn decode(&mut self, data: &[u8]) {
        match &mut self.gzip {
            Some(gz) => {
                gz.write_all(data).unwrap();
                gz.flush().unwrap();
                self.text.append(gz.get_mut());
            }
            None => self.text.extend_from_slice(data),
        }
    }

    /// Gets more decoded body bytes; `false` once the body ended.
    async fn pump(&mut self) -> bool {
        if self.ended {
            return false;
        }
        if self.chunked {
            loop {
                if let Some(pos) = self.raw.windows(2).position(|w| w == b"\r\n") {
                    let size_text = String::from_utf8(self.raw[..pos].to_vec()).unwrap();
                    let size = usize::from_str_radix(size_text.trim(), 16).unwrap();
                    if size == 0 {
                        if self.raw.len() >= pos + 4 {
                            self.raw.drain(..pos + 4);
                            self.ended = true;
                            self.terminated = true;
                            return false;
                        }
                    } else if self.raw.len() >= pos + 2 + size + 2 {
                        let data: Vec<u8> = self.raw[pos + 2..pos + 2 + size].to_vec();
                        assert_eq!(&self.raw[pos + 2 + size..pos + 4 + size], b"\r\n");
                        self.raw.drain(..pos + 4 + size);
                        self.decode(&data);
                        return true;
                    }
                }
                if !self.fill().await {
                    self.ended = true;
                    return false;
                }
            }
        }
        if self.raw.is_empty() && !self.fill().await {
            self.ended = true;
            return false;
        }
        let mut data = std::mem::take(&mut self.raw);
        if let Some(rem) = &mut self.remaining {
            let keep = data.split_off((*rem).min(data.len()));
            self.raw = keep;
            *rem -= data.len();
            if *rem == 0 {
                self.ended = true;
            }
        }
        self.decode(&data);
        true
    }

    /// The next body line without its `\n`; `None` when the body ends first.
    pub async fn read_line(&mut self) -> Option<String> {
        loop {
            if let Some(pos) = self.text.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.text.drain(..=pos).collect();
                return Some(String::from_utf8(line[..line.len() - 1].to_vec()).unwrap());
            }
            if !self.pump().await {
                return None;
            }
        }
    }

    /// The next line that is not a `{}` heartbeat.
    pub async fn read_data_line(&mut self) -> Option<String> {
        loop {
            let line = self.read_line().await?;
            if line != "{}" {
                return Some(line);
            }
        }
    }

    /// Everything left of the body (decoded), until it ends.
    pub async fn rest(&mut self) -> String {
        while self.pump().await {}
        String::from_utf8(std::mem::take(&mut self.text)).unwrap()
    }

    /// Whether any decoded-but-unread or raw bytes arrive within `wait`.
    pub async fn silent_for(&mut self, wait: Duration) -> bool {
        if !self.text.is_empty() || !self.raw.is_empty() {
            return false;
        }
        tokio::time::timeout(wait, self.fill()).await.is_err()
    }

    /// Reads (and discards) until the server closes the connection; `true` on EOF.
    pub async fn closed(&mut self) -> bool {
        self.raw.clear();
        while self.fill().await {
            self.raw.clear();
        }
        self.eof
    }

    /// Sends another request on the same connection (keep-alive).
    pub async fn next_request(mut self, method: &str, target: &str) -> Response {
        assert!(self.ended && !self.eof, "connection not reusable");
        let req = format!("{method} {target} HTTP/1.1\r\nHost: nomad.test\r\n\r\n");
        self.stream.write_all(req.as_bytes()).await.unwrap();
        read_head(self.stream, self.raw).await
    }
}

//! Request parameters of `/v1/event/stream` (spec §2), parsed the way Nomad and
//! Go's `net/url` do: `topic` (repeatable), `index` (`strconv.Atoi`), `namespace`,
//! and the token headers.

use std::collections::HashMap;

/// Topic → requested keys, in request order (`topic=Job:a&topic=Job:b` → `Job: [a, b]`).
pub(crate) type Topics = HashMap<String, Vec<String>>;

/// Query pairs in order, decoded like Go's `url.ParseQuery`: pairs split on `&`, a pair
/// containing `;` or a bad escape is skipped, `+` means space.
pub(crate) fn parse_query(raw: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for pair in raw.split('&') {
        if pair.is_empty() || pair.contains(';') {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if let (Some(k), Some(v)) = (query_unescape(k), query_unescape(v)) {
            out.push((k, v));
        }
    }
    out
}

/// Percent-decodes a query component (`+` → space). `None` for a bad escape or
/// invalid UTF-8.
pub(crate) fn query_unescape(s: &str) -> Option<String> {
    unescape(s, true)
}

/// Percent-decodes a path (`+` stays `+`).
pub(crate) fn path_unescape(s: &str) -> Option<String> {
    unescape(s, false)
}

fn unescape(s: &str, plus_is_space: bool) -> Option<String> {
    if !s.contains(['%', '+']) {
        return Some(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hi = hex_val(*bytes.get(i + 1)?)?;
                let lo = hex_val(*bytes.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// First value of `name`, like Go's `Values.Get` (`""` when absent).
pub(crate) fn first<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Go's `strconv.Atoi` on a 64-bit platform, with its error text.
pub(crate) fn atoi(s: &str) -> Result<i64, String> {
    let syntax = || format!("strconv.Atoi: parsing {}: invalid syntax", go_quote(s));
    let range = || format!("strconv.Atoi: parsing {}: value out of range", go_quote(s));
    let (neg, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(syntax());
    }
    let mut v: i128 = 0;
    for b in digits.bytes() {
        v = v * 10 + i128::from(b - b'0');
        if v > i128::from(i64::MAX) + 1 {
            return Err(range());
        }
    }
    let v = if neg { -v } else { v };
    i64::try_from(v).map_err(|_| range())
}

/// Go's `strconv.Quote` for the printable-ASCII common case (used in error texts).
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `parseEventTopics`: no `topic` → `{"*": ["*"]}`; `T` → key `*`; `T:k` → key `k`;
/// more than one `:` → the exact 400 message.
/// Go's `time.ParseDuration` for what clients send: an optional sign-free sequence of
/// decimal numbers, each with a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), or `0`.
/// `None` for anything else (Nomad then answers 400).
pub(crate) fn parse_duration(text: &str) -> Option<std::time::Duration> {
    if text == "0" {
        return Some(std::time::Duration::ZERO);
    }
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * seconds;
    }
    std::time::Duration::try_from_secs_f64(total).ok()
}

pub(crate) fn parse_topics(pairs: &[(String, String)]) -> Result<Topics, String> {
    let mut topics = Topics::new();
    let mut any = false;
    for (k, v) in pairs {
        if k != "topic" {
            continue;
        }
        any = true;
        let parts: Vec<&str> = v.split(':').collect();
        let (topic, key) = match parts.as_slice() {
            [t] => (*t, "*"),
            [t, key] => (*t, *key),
            _ => {
                return Err(format!(
                    "Invalid topic query: error parsing topics: Invalid key value pair for topic, topic: {v}"
                ));
            }
        };
        topics.entry(topic.to_string()).or_default().push(key.to_string());
    }
    if !any {
        topics.insert("*".to_string(), vec!["*".to_string()]);
    }
    Ok(topics)
}

/// `parseToken`: `X-Nomad-Token` (trimmed) wins, else `Authorization: Bearer <secret>`.
pub(crate) fn parse_token(headers: &[(String, String)]) -> Option<String> {
    let get =
        |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
    if let Some(t) = get("X-Nomad-Token").filter(|t| !t.is_empty()) {
        return Some(t.trim().to_string());
    }
    let auth = get("Authorization").filter(|a| !a.is_empty())?;
    let parts: Vec<&str> = auth.split(' ').collect();
    match parts.as_slice() {
        [scheme, value] if scheme.eq_ignore_ascii_case("bearer") => Some(value.trim().to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Vec<(String, String)> {
        parse_query(s)
    }

    #[test]
    fn durations_like_go() {
        use std::time::Duration;
        assert_eq!(parse_duration("300s"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        for bad in ["", "5", "s", "5x", "-1s", "1 s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn topics() {
        let t = parse_topics(&q("topic=Job&topic=Job:web&topic=Allocation%3Aab%2Fc")).unwrap();
        assert_eq!(t["Job"], vec!["*", "web"]);
        assert_eq!(t["Allocation"], vec!["ab/c"]);
        let all = parse_topics(&q("index=3")).unwrap();
        assert_eq!(all["*"], vec!["*"]);
        let err = parse_topics(&q("topic=Job:a:b")).unwrap_err();
        assert_eq!(
            err,
            "Invalid topic query: error parsing topics: Invalid key value pair for topic, topic: Job:a:b"
        );
        assert_eq!(parse_topics(&q("topic=Allocation:")).unwrap()["Allocation"], vec![""]);
    }

    #[test]
    fn atoi_like_go() {
        assert_eq!(atoi("42"), Ok(42));
        assert_eq!(atoi("+7"), Ok(7));
        assert_eq!(atoi("-3"), Ok(-3));
        assert_eq!(atoi("abc").unwrap_err(), "strconv.Atoi: parsing \"abc\": invalid syntax");
        assert_eq!(
            atoi("99999999999999999999").unwrap_err(),
            "strconv.Atoi: parsing \"99999999999999999999\": value out of range"
        );
        assert_eq!(atoi("9223372036854775807"), Ok(i64::MAX));
        assert_eq!(atoi("-9223372036854775808"), Ok(i64::MIN));
        assert!(atoi("").is_err());
        assert!(atoi("1_0").is_err());
    }

    #[test]
    fn query_decoding() {
        let p = q("a=1+2&b=%zz&c;d=1&&e=x%20y&f");
        assert_eq!(
            p,
            vec![("a".into(), "1 2".into()), ("e".into(), "x y".into()), ("f".into(), String::new())]
        );
    }

    #[test]
    fn tokens() {
        let h = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        assert_eq!(parse_token(&h("x-nomad-token", " s1 ")), Some("s1".into()));
        assert_eq!(parse_token(&h("Authorization", "Bearer s2")), Some("s2".into()));
        assert_eq!(parse_token(&h("Authorization", "Basic s2")), None);
        assert_eq!(parse_token(&h("Authorization", "Bearer a b")), None);
        assert_eq!(parse_token(&[]), None);
    }
}

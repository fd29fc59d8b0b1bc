//! Parses one NDJSON line of Nomad's stream into a heartbeat or a batch of events.
//!
//! Only the envelope fields routing and identity need are decoded (Topic, Type, Key,
//! Namespace, Index); each event is kept as the exact byte slice Nomad sent, so payloads are
//! never re-serialised, nor even decoded: the parser is a hand-written single-pass scanner
//! that checks them against JSON's grammar and passes over them (about 1.1 GB/s on one core
//! of the development VM, see BENCHMARKS.md, seventh round). A line that is not valid JSON of the expected
//! shape is an error the caller reports with the line's position; it never panics, and
//! nesting depth costs heap, never stack.
//!
//! The scanner accepts exactly what [`crate::fuzzing::reference`] (serde_json over the same shape) accepts,
//! and reads the same values: the unit tests, the property tests and the fuzz target
//! `frame` (`fuzz/`) hold it to that.

use bytes::Bytes;

/// One parsed line.
#[derive(Debug)]
pub enum Frame {
    /// `{}`: Nomad's keep-alive.
    Heartbeat,
    /// `{"Index":N,"Events":[...]}`.
    Data {
        /// The raft index shared by every event of the line.
        index: u64,
        /// The events, in order.
        events: Vec<RawEvent>,
    },
}

/// One event of a data line: the fields the relay reads, and the raw bytes.
#[derive(Debug, Clone)]
pub struct RawEvent {
    /// `Topic`.
    pub topic: String,
    /// `Type`.
    pub event_type: String,
    /// `Key`.
    pub key: String,
    /// `Namespace` (empty when absent).
    pub namespace: String,
    /// The event object exactly as sent.
    pub raw: Bytes,
}

/// A line that is not a valid frame.
#[derive(Debug, thiserror::Error)]
#[error("malformed event stream line ({length} bytes, starting {start:?}): {reason}")]
pub struct FrameError {
    /// The line's length.
    pub length: usize,
    /// Its first bytes, lossily decoded.
    pub start: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Parses one line (without its newline). A line of whitespace only is a heartbeat.
///
/// One pass over the bytes: the envelope and each event's head fields are read, every other
/// value (payloads) is checked against JSON's grammar (RFC 8259) and passed over, to be
/// forwarded as the exact bytes Nomad wrote. A field the relay reads given twice is an error,
/// as serde makes it.
pub fn parse_line(line: &Bytes) -> Result<Frame, FrameError> {
    let error = |reason: String| FrameError {
        length: line.len(),
        start: String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned(),
        reason,
    };
    let text = std::str::from_utf8(line).map_err(|e| error(format!("not UTF-8: {e}")))?;
    if text.bytes().all(is_json_whitespace) {
        return Ok(Frame::Heartbeat);
    }
    let mut scanner = Scanner { text, pos: 0 };
    let (index, spans) =
        scanner.envelope().map_err(|reason| error(format!("{reason} at byte {}", scanner.pos)))?;
    let spans = match spans {
        Some(spans) if !spans.is_empty() => spans,
        _ if index == 0 => return Ok(Frame::Heartbeat),
        _ => return Err(error("a data line with an Index but no Events".into())),
    };
    let events = spans
        .into_iter()
        .map(|span| RawEvent {
            topic: span.topic,
            event_type: span.event_type,
            key: span.key,
            namespace: span.namespace,
            raw: line.slice(span.start..span.end),
        })
        .collect();
    Ok(Frame::Data { index, events })
}

/// One event found by the scanner: its head fields and where its bytes are in the line.
struct EventSpan {
    topic: String,
    event_type: String,
    key: String,
    namespace: String,
    start: usize,
    end: usize,
}

/// A forward-only reader over one line's text. Errors are short reasons; the caller adds the
/// position.
struct Scanner<'a> {
    text: &'a str,
    pos: usize,
}

/// JSON's four whitespace bytes (RFC 8259 §2).
fn is_json_whitespace(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

/// The length of the JSON number at the start of `bytes` (RFC 8259 §6: `-`, no leading
/// zeros, a fraction and an exponent each with at least one digit), or `None`.
fn number_length(bytes: &[u8]) -> Option<usize> {
    let digits = |from: usize| {
        bytes.get(from..).map_or(0, |rest| rest.iter().take_while(|b| b.is_ascii_digit()).count())
    };
    let mut pos = usize::from(bytes.first() == Some(&b'-'));
    match bytes.get(pos) {
        Some(b'0') => pos += 1,
        Some(b'1'..=b'9') => pos += digits(pos),
        _ => return None,
    }
    if bytes.get(pos) == Some(&b'.') {
        let fraction = digits(pos + 1);
        if fraction == 0 {
            return None;
        }
        pos += 1 + fraction;
    }
    if let Some(b'e' | b'E') = bytes.get(pos) {
        pos += 1;
        if let Some(b'+' | b'-') = bytes.get(pos) {
            pos += 1;
        }
        let exponent = digits(pos);
        if exponent == 0 {
            return None;
        }
        pos += exponent;
    }
    Some(pos)
}

impl<'a> Scanner<'a> {
    fn bytes(&self) -> &[u8] {
        self.text.as_bytes()
    }

    fn skip_whitespace(&mut self) {
        while self.bytes().get(self.pos).copied().is_some_and(is_json_whitespace) {
            self.pos += 1;
        }
    }

    /// The next byte after whitespace, not consumed.
    fn peek(&mut self) -> Option<u8> {
        self.skip_whitespace();
        self.bytes().get(self.pos).copied()
    }

    fn expect(&mut self, wanted: u8) -> Result<(), String> {
        match self.peek() {
            Some(byte) if byte == wanted => {
                self.pos += 1;
                Ok(())
            }
            Some(byte) => Err(format!("expected '{}', found '{}'", wanted as char, byte as char)),
            None => Err(format!("expected '{}', found the end of the line", wanted as char)),
        }
    }

    /// `{"Index":N,"Events":[...]}` followed by nothing but whitespace.
    fn envelope(&mut self) -> Result<(u64, Option<Vec<EventSpan>>), String> {
        let mut index = None;
        let mut events = None;
        self.object(|scanner, key| {
            match key {
                "Index" => once(&mut index, "Index", scanner.unsigned()?)?,
                "Events" => once(&mut events, "Events", scanner.events()?)?,
                _ => scanner.skip_value()?,
            }
            Ok(())
        })?;
        self.skip_whitespace();
        if self.pos != self.text.len() {
            return Err("trailing characters after the frame".into());
        }
        Ok((index.unwrap_or(0), events.flatten()))
    }

    /// An object: calls `field` with each key, positioned at its value, which `field` consumes.
    fn object(&mut self, mut field: impl FnMut(&mut Self, &str) -> Result<(), String>) -> Result<(), String> {
        self.expect(b'{')?;
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            if self.peek() != Some(b'"') {
                return Err("expected a field name".into());
            }
            let key = self.string()?;
            self.expect(b':')?;
            field(self, &key)?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err("expected ',' or '}' in an object".into()),
            }
        }
    }

    /// `null` or an array of event objects.
    fn events(&mut self) -> Result<Option<Vec<EventSpan>>, String> {
        if self.literal("null") {
            return Ok(None);
        }
        self.expect(b'[')?;
        let mut events = Vec::new();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Some(events));
        }
        loop {
            events.push(self.event().map_err(|reason| format!("event {}: {reason}", events.len()))?);
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Some(events));
                }
                _ => return Err("expected ',' or ']' after an event".into()),
            }
        }
    }

    fn event(&mut self) -> Result<EventSpan, String> {
        self.skip_whitespace();
        let start = self.pos;
        let (mut topic, mut event_type, mut key, mut namespace) = (None, None, None, None);
        self.object(|scanner, field| {
            match field {
                "Topic" => once(&mut topic, "Topic", scanner.string_value()?)?,
                "Type" => once(&mut event_type, "Type", scanner.string_value()?)?,
                "Key" => once(&mut key, "Key", scanner.string_value()?)?,
                "Namespace" => once(&mut namespace, "Namespace", scanner.string_value()?)?,
                _ => scanner.skip_value()?,
            }
            Ok(())
        })?;
        Ok(EventSpan {
            topic: topic.ok_or("missing field `Topic`")?,
            event_type: event_type.ok_or("missing field `Type`")?,
            key: key.unwrap_or_default(),
            namespace: namespace.unwrap_or_default(),
            start,
            end: self.pos,
        })
    }

    fn literal(&mut self, word: &str) -> bool {
        self.skip_whitespace();
        let found = self.bytes()[self.pos..].starts_with(word.as_bytes());
        if found {
            self.pos += word.len();
        }
        found
    }

    /// A JSON number that is an integer from 0 to 2^64-1.
    fn unsigned(&mut self) -> Result<u64, String> {
        self.skip_whitespace();
        let length = number_length(&self.bytes()[self.pos..]).ok_or("expected an unsigned integer")?;
        let text = &self.text[self.pos..self.pos + length];
        let value =
            text.parse().map_err(|_| format!("expected an unsigned integer below 2^64, found {text:.24}"))?;
        self.pos += length;
        Ok(value)
    }

    fn string_value(&mut self) -> Result<String, String> {
        match self.peek() {
            Some(b'"') => Ok(self.string()?.into_owned()),
            _ => Err("expected a string".into()),
        }
    }

    /// A string starting at the current byte (a quote), decoded.
    fn string(&mut self) -> Result<std::borrow::Cow<'a, str>, String> {
        let text: &'a str = self.text;
        let open = self.pos;
        let close = self.string_end(open + 1)?;
        self.pos = close + 1;
        let quoted = &text[open..=close];
        if quoted.contains('\\') {
            serde_json::from_str::<String>(quoted).map(Into::into).map_err(|e| e.to_string())
        } else {
            Ok(quoted[1..quoted.len() - 1].into())
        }
    }

    /// The position of the quote closing a string whose content starts at `from`. A raw
    /// control character inside is an error: JSON allows them only escaped (RFC 8259 §7), and
    /// a consumer's parser would refuse the event. So is an escape JSON does not define.
    fn string_end(&self, mut from: usize) -> Result<usize, String> {
        let start = from;
        let bytes = self.bytes();
        loop {
            let Some(offset) = memchr::memchr2(b'"', b'\\', &bytes[from..]) else {
                return Err("unterminated string".into());
            };
            let at = from + offset;
            if bytes[at] == b'"' {
                if bytes[start..at].iter().any(|byte| *byte < 0x20) {
                    return Err("a raw control character in a string".into());
                }
                return Ok(at);
            }
            from = match bytes.get(at + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => at + 2,
                Some(b'u')
                    if bytes.get(at + 2..at + 6).is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) =>
                {
                    at + 6
                }
                Some(_) => return Err("an escape JSON does not define in a string".into()),
                None => return Err("unterminated string".into()),
            };
        }
    }

    /// Passes over one value of any kind, checking it against JSON's grammar. Iterative: the
    /// containers open around the position are a stack on the heap, so a payload nested a
    /// million deep costs a megabyte, not the thread's stack.
    fn skip_value(&mut self) -> Result<(), String> {
        // The closing bracket of each container open, innermost last.
        let mut open: Vec<u8> = Vec::new();
        loop {
            // A value, or the opening of a container whose first value comes next.
            match self.peek() {
                Some(b'"') => self.pos = self.string_end(self.pos + 1)? + 1,
                Some(b'{') => {
                    self.pos += 1;
                    if self.peek() == Some(b'}') {
                        self.pos += 1;
                    } else {
                        open.push(b'}');
                        self.skip_key()?;
                        continue;
                    }
                }
                Some(b'[') => {
                    self.pos += 1;
                    if self.peek() == Some(b']') {
                        self.pos += 1;
                    } else {
                        open.push(b']');
                        continue;
                    }
                }
                Some(_) => self.skip_scalar()?,
                None => return Err("expected a value, found the end of the line".into()),
            }
            if !self.close_or_separate(&mut open)? {
                return Ok(());
            }
        }
    }

    /// After a complete value inside the containers `open`: passes the brackets that close
    /// here, then the comma (and key) before the next value. `false` once nothing is open.
    fn close_or_separate(&mut self, open: &mut Vec<u8>) -> Result<bool, String> {
        loop {
            let Some(&closing) = open.last() else { return Ok(false) };
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    if closing == b'}' {
                        self.skip_key()?;
                    }
                    return Ok(true);
                }
                Some(byte) if byte == closing => {
                    self.pos += 1;
                    open.pop();
                }
                Some(byte) => {
                    return Err(format!("expected ',' or '{}', found '{}'", closing as char, byte as char));
                }
                None => return Err("unclosed object or array".into()),
            }
        }
    }

    /// An object's key and the colon after it.
    fn skip_key(&mut self) -> Result<(), String> {
        if self.peek() != Some(b'"') {
            return Err("expected a field name".into());
        }
        self.pos = self.string_end(self.pos + 1)? + 1;
        self.expect(b':')
    }

    /// A number, `true`, `false` or `null`.
    fn skip_scalar(&mut self) -> Result<(), String> {
        let rest = &self.bytes()[self.pos..];
        let length = [&b"true"[..], b"false", b"null"]
            .into_iter()
            .find(|word| rest.starts_with(word))
            .map(<[u8]>::len)
            .or_else(|| number_length(rest));
        let Some(length) = length else {
            let word = String::from_utf8_lossy(&rest[..rest.len().min(20)]).into_owned();
            return Err(format!("expected a value, found {word:?}"));
        };
        self.pos += length;
        Ok(())
    }
}

/// Sets a field read from an object, refusing a second one (as serde's derive does).
fn once<T>(slot: &mut Option<T>, name: &str, value: T) -> Result<(), String> {
    if slot.replace(value).is_some() {
        return Err(format!("duplicate field `{name}`"));
    }
    Ok(())
}

/// Reads the `Index` from the first bytes of a line (`{"Index":N,...`), as Nomad always
/// writes it first. Used to name the index of a line too long to parse.
pub fn index_from_prefix(prefix: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(prefix).ok()?;
    let rest = text.strip_prefix("{\"Index\":")?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::{reference, scanned};
    use rand::{Rng, SeedableRng};

    #[test]
    fn heartbeat() {
        assert!(matches!(parse_line(&Bytes::from_static(b"{}")), Ok(Frame::Heartbeat)));
    }

    #[test]
    fn data_line_keeps_each_event_byte_for_byte() {
        let first = r#"{"Topic":"Job","Type":"JobRegistered","Key":"web","Namespace":"default","FilterKeys":null,"Index":12,"Payload":{"Job":{"ID":"web","Meta":{"a":"<&>"}}}}"#;
        let second = r#"{"Topic":"Node","Type":"NodeDrain","Key":"n1","Namespace":"","FilterKeys":null,"Index":12,"Payload":{"Node":{}}}"#;
        let line = Bytes::from(format!(r#"{{"Index":12,"Events":[{first},{second}]}}"#));
        let Frame::Data { index, events } = parse_line(&line).expect("valid") else {
            panic!("expected data");
        };
        assert_eq!(index, 12);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].raw, first.as_bytes());
        assert_eq!(events[1].raw, second.as_bytes());
        assert_eq!(events[0].topic, "Job");
        assert_eq!(events[0].event_type, "JobRegistered");
        assert_eq!(events[0].key, "web");
        assert_eq!(events[0].namespace, "default");
        assert_eq!(events[1].namespace, "");
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let line = Bytes::from_static(
            br#"{"Index":3,"Events":[{"Topic":"Job","Type":"JobRegistered","Key":"a\"b","Namespace":"x","Index":3,"Payload":{}}]}"#,
        );
        let Frame::Data { events, .. } = parse_line(&line).expect("valid") else { panic!() };
        assert_eq!(events[0].key, "a\"b");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for line in [
            &b"subscription closed by server"[..],
            b"{\"Index\":",
            b"\xff\xfe",
            b"[1,2]",
            b"{\"Index\":4,\"Events\":[]}",
        ] {
            assert!(parse_line(&Bytes::copy_from_slice(line)).is_err(), "{line:?}");
        }
    }

    #[test]
    fn hostile_lines_are_errors_or_agree_with_serde_never_a_panic() {
        let event = |payload: &str| {
            format!(
                r#"{{"Topic":"Job","Type":"JobRegistered","Key":"k","Namespace":"default","Index":5,"Payload":{payload}}}"#
            )
        };
        let deep = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
        let many: Vec<String> = (0..10_000).map(|n| event(&format!(r#"{{"N":{n}}}"#))).collect();
        let lines: Vec<Vec<u8>> = vec![
            // Index not a number, negative, beyond u64, fractional.
            br#"{"Index":"5","Events":[]}"#.to_vec(),
            br#"{"Index":-5,"Events":[]}"#.to_vec(),
            br#"{"Index":18446744073709551616,"Events":[]}"#.to_vec(),
            br#"{"Index":5.5,"Events":[]}"#.to_vec(),
            // An escaped NUL in a payload, invalid UTF-8 in a key, and a raw NUL byte in one.
            format!(r#"{{"Index":5,"Events":[{}]}}"#, event(r#""\u0000ok""#)).into_bytes(),
            [
                &br#"{"Index":5,"Events":[{"Topic":"Job","Type":"T","Key":""#[..],
                b"\xff\xfe",
                br#"","Index":5,"Payload":{}}]}"#,
            ]
            .concat(),
            [
                &br#"{"Index":5,"Events":[{"Topic":"Job","Type":"T","Key":"a"#[..],
                b"\0",
                br#"b","Index":5,"Payload":{}}]}"#,
            ]
            .concat(),
            // A payload nested 200,000 deep, and a line of 10,000 events.
            format!(r#"{{"Index":5,"Events":[{}]}}"#, event(&deep)).into_bytes(),
            format!(r#"{{"Index":5,"Events":[{}]}}"#, many.join(",")).into_bytes(),
        ];
        for line in &lines {
            crate::fuzzing::frame_parsing(line);
        }
        let Ok((_, events)) = scanned(lines.last().expect("lines")) else { panic!("the 10,000-event line") };
        assert_eq!(events.len(), 10_000);
    }

    fn generated_lines(count: usize) -> Vec<Vec<u8>> {
        let mut generator = nomad_emulator::Generator::new(nomad_emulator::GeneratorConfig {
            seed: 11,
            ..Default::default()
        });
        let mut lines = Vec::new();
        while lines.len() < count {
            lines.extend(generator.next_batches().iter().map(|batch| batch.to_line().into_bytes()));
        }
        lines
    }

    #[test]
    fn agrees_with_a_full_json_decoder_on_generated_lines() {
        for line in generated_lines(2_000) {
            let expected = reference(&line).expect("the generator writes valid frames");
            assert_eq!(scanned(&line).expect("valid frame"), expected);
        }
    }

    #[test]
    fn agrees_with_a_full_json_decoder_on_whitespace_and_escapes() {
        let line = br#" { "Events" : [ { "Payload" : { "a" : [ 1 , -2.5e3 , true , null , "x\"}]" ] } , "Namespace" : "n\u00e9" , "Type" : "T" , "Topic" : "Job" , "Key" : "k\\" } ] , "Index" : 7 , "Other" : { } } "#;
        assert_eq!(scanned(line).expect("valid frame"), reference(line).expect("valid JSON"));
    }

    /// Whether byte `at` of valid JSON `line` is outside every string.
    fn outside_strings(line: &[u8], at: usize) -> bool {
        let (mut inside, mut escaped) = (false, false);
        for &byte in &line[..at] {
            match (inside, escaped, byte) {
                (true, true, _) => escaped = false,
                (true, false, b'\\') => escaped = true,
                (_, _, b'"') => inside = !inside,
                _ => {}
            }
        }
        !inside
    }

    #[test]
    fn cut_and_damaged_lines_are_errors_never_panics_and_valid_ones_agree() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for line in generated_lines(200) {
            for _ in 0..20 {
                let cut = rng.random_range(1..line.len());
                assert!(scanned(&line[..cut]).is_err(), "a line cut at byte {cut} was accepted");
            }
            for _ in 0..20 {
                let mut damaged = line.clone();
                let at = rng.random_range(0..damaged.len());
                damaged[at] = b"{}[]\\\",:x \xff"[rng.random_range(0..11)];
                let result = scanned(&damaged);
                if let Some(expected) = reference(&damaged) {
                    assert_eq!(result.as_ref().expect("valid JSON must parse"), &expected);
                }
                if outside_strings(&line, at)
                    && matches!(damaged[at], b'{' | b'}' | b'[' | b']')
                    && line[at] != damaged[at]
                    && matches!(line[at], b'{' | b'}' | b'[' | b']')
                {
                    assert!(
                        result.is_err(),
                        "a swapped bracket at byte {at} was accepted: {}",
                        String::from_utf8_lossy(
                            &damaged[at.saturating_sub(60)..(at + 20).min(damaged.len())]
                        )
                    );
                }
            }
        }
    }

    #[test]
    fn index_prefix() {
        assert_eq!(index_from_prefix(b"{\"Index\":12345,\"Events\":[{"), Some(12345));
        assert_eq!(index_from_prefix(b"{\"Events\":"), None);
    }
}

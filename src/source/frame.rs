//! Parses one NDJSON line of Nomad's stream into a heartbeat or a batch of events.
//!
//! Only the envelope fields routing and identity need are decoded (Topic, Type, Key,
//! Namespace, Index); each event is kept as the exact byte slice Nomad sent, so payloads are
//! never re-serialised. A line that is not valid JSON of the expected shape is an error the
//! caller reports with the line's position; it never panics.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

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

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "Index", default)]
    index: u64,
    #[serde(rename = "Events", borrow, default)]
    events: Option<Vec<&'a RawValue>>,
}

#[derive(Deserialize)]
struct EventHead<'a> {
    #[serde(rename = "Topic", borrow)]
    topic: Cow<'a, str>,
    #[serde(rename = "Type", borrow)]
    event_type: Cow<'a, str>,
    #[serde(rename = "Key", borrow, default)]
    key: Cow<'a, str>,
    #[serde(rename = "Namespace", borrow, default)]
    namespace: Cow<'a, str>,
}

/// Parses one line (without its newline).
pub fn parse_line(line: &Bytes) -> Result<Frame, FrameError> {
    let error = |reason: String| FrameError {
        length: line.len(),
        start: String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned(),
        reason,
    };
    let text = std::str::from_utf8(line).map_err(|e| error(format!("not UTF-8: {e}")))?;
    if text.trim().is_empty() {
        return Ok(Frame::Heartbeat);
    }
    let envelope: Envelope<'_> = serde_json::from_str(text).map_err(|e| error(e.to_string()))?;
    let raw_events = match envelope.events {
        Some(events) if !events.is_empty() => events,
        _ if envelope.index == 0 => return Ok(Frame::Heartbeat),
        _ => return Err(error("a data line with an Index but no Events".into())),
    };
    let base = text.as_ptr() as usize;
    let mut events = Vec::with_capacity(raw_events.len());
    for raw in raw_events {
        let head: EventHead<'_> =
            serde_json::from_str(raw.get()).map_err(|e| error(format!("event {}: {e}", events.len())))?;
        let start = raw.get().as_ptr() as usize - base;
        let end = start + raw.get().len();
        events.push(RawEvent {
            topic: head.topic.into_owned(),
            event_type: head.event_type.into_owned(),
            key: head.key.into_owned(),
            namespace: head.namespace.into_owned(),
            raw: line.slice(start..end),
        });
    }
    Ok(Frame::Data { index: envelope.index, events })
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
    fn index_prefix() {
        assert_eq!(index_from_prefix(b"{\"Index\":12345,\"Events\":[{"), Some(12345));
        assert_eq!(index_from_prefix(b"{\"Events\":"), None);
    }
}

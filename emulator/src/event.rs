//! The event model: [`Event`] (one entry of a frame) and [`Batch`] (one buffer
//! item, i.e. one NDJSON line), and their exact JSON rendering.
//!
//! Nomad encodes events with go-msgpack's JSON handle: compact, fields in
//! struct order (`Topic, Type, Key, Namespace, FilterKeys, Index, Payload`),
//! `<`, `>` and `&` left as they are, control characters escaped.

use std::fmt::Write as _;
use std::ops::Range;

/// One event, as it appears inside a frame's `Events` array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `Topic`, e.g. `Allocation`, `Job`, `Node`.
    pub topic: String,
    /// `Type`, which comes from the raft operation (e.g. `PlanResult`), not from the object.
    pub event_type: String,
    /// `Key`: the object's ID (job ID, alloc ID, node ID, pool name, ...).
    pub key: String,
    /// `Namespace`; `""` for non-namespaced objects (Node, NodePool, ACL*, CSIPlugin).
    pub namespace: String,
    /// `FilterKeys`; `None` is encoded as `null`.
    pub filter_keys: Option<Vec<String>>,
    /// `Payload`: raw JSON object text, inserted verbatim (e.g. `{"Job":{...}}`).
    pub payload: String,
}

impl Event {
    /// Builds an event from its parts.
    pub fn new(
        topic: impl Into<String>,
        event_type: impl Into<String>,
        key: impl Into<String>,
        namespace: impl Into<String>,
        filter_keys: Option<Vec<String>>,
        payload: impl Into<String>,
    ) -> Event {
        Event {
            topic: topic.into(),
            event_type: event_type.into(),
            key: key.into(),
            namespace: namespace.into(),
            filter_keys,
            payload: payload.into(),
        }
    }

    /// The event's JSON text with the given `Index`, compact, fields in Nomad's order:
    /// `{"Topic":..,"Type":..,"Key":..,"Namespace":..,"FilterKeys":..|null,"Index":N,"Payload":{..}}`.
    pub fn to_json(&self, index: u64) -> String {
        let mut out = String::with_capacity(self.payload.len() + 160);
        self.write_json(index, &mut out);
        out
    }

    /// Appends the event's JSON text to `out` (see [`Event::to_json`]).
    pub fn write_json(&self, index: u64, out: &mut String) {
        out.push_str("{\"Topic\":");
        push_json_string(out, &self.topic);
        out.push_str(",\"Type\":");
        push_json_string(out, &self.event_type);
        out.push_str(",\"Key\":");
        push_json_string(out, &self.key);
        out.push_str(",\"Namespace\":");
        push_json_string(out, &self.namespace);
        out.push_str(",\"FilterKeys\":");
        match &self.filter_keys {
            None => out.push_str("null"),
            Some(keys) => {
                out.push('[');
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    push_json_string(out, k);
                }
                out.push(']');
            }
        }
        let _ = write!(out, ",\"Index\":{index},\"Payload\":");
        if self.payload.trim().is_empty() {
            out.push_str("null");
        } else {
            out.push_str(&self.payload);
        }
        out.push('}');
    }
}

/// One buffer item: the events of one committed transaction, sent as one NDJSON line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The raft index shared by the frame and all its events.
    pub index: u64,
    /// The events, in commit order. Publishing an empty batch is allowed, but it is
    /// never sent: Nomad skips empty frames.
    pub events: Vec<Event>,
}

impl Batch {
    /// Builds a batch.
    pub fn new(index: u64, events: Vec<Event>) -> Batch {
        Batch { index, events }
    }

    /// The unfiltered line `{"Index":N,"Events":[...]}`, without the trailing newline.
    pub fn to_line(&self) -> String {
        Rendered::new(self).line
    }

    /// Total number of payload bytes (a cheap size estimate).
    pub fn payload_bytes(&self) -> usize {
        self.events.iter().map(|e| e.payload.len()).sum()
    }
}

/// A batch rendered once at publish time, with the byte range of each event so
/// that filtered lines can be assembled by copying slices.
#[derive(Debug)]
pub(crate) struct Rendered {
    /// The full, unfiltered line (no newline).
    pub line: String,
    /// Byte range of each event's JSON inside `line`.
    pub spans: Vec<Range<usize>>,
}

impl Rendered {
    /// Renders `batch`.
    pub fn new(batch: &Batch) -> Rendered {
        let size: usize = batch.events.iter().map(|e| e.payload.len() + 160 + e.key.len()).sum();
        let mut line = String::with_capacity(size + 48);
        let _ = write!(line, "{{\"Index\":{},\"Events\":[", batch.index);
        let mut spans = Vec::with_capacity(batch.events.len());
        for (i, ev) in batch.events.iter().enumerate() {
            if i > 0 {
                line.push(',');
            }
            let start = line.len();
            ev.write_json(batch.index, &mut line);
            spans.push(start..line.len());
        }
        line.push_str("]}");
        Rendered { line, spans }
    }

    /// Builds the line holding the events at `selected` (indexes into `spans`, possibly
    /// repeated), in that order.
    pub fn select(&self, index: u64, selected: &[usize]) -> String {
        let size: usize = selected.iter().filter_map(|&i| self.spans.get(i)).map(|r| r.len() + 1).sum();
        let mut out = String::with_capacity(size + 48);
        let _ = write!(out, "{{\"Index\":{index},\"Events\":[");
        let mut first = true;
        for span in selected.iter().filter_map(|&i| self.spans.get(i)) {
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(&self.line[span.clone()]);
        }
        out.push_str("]}");
        out
    }
}

/// Appends `s` as a JSON string literal, escaped the way go-msgpack's JSON handle
/// does with `HTMLCharsAsIs` (quotes, backslashes, control characters, U+2028/9).
pub(crate) fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\' || b == 0xE2) {
        out.push_str(s);
    } else {
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{2028}' => out.push_str("\\u2028"),
                '\u{2029}' => out.push_str("\\u2029"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => out.push(c),
            }
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc_event() -> Event {
        Event::new(
            "Allocation",
            "PlanResult",
            "a1",
            "default",
            Some(vec!["web".into(), String::new()]),
            r#"{"Allocation":{"ID":"a1"}}"#,
        )
    }

    #[test]
    fn to_json_has_nomad_field_order() {
        let json = alloc_event().to_json(42);
        assert_eq!(
            json,
            r#"{"Topic":"Allocation","Type":"PlanResult","Key":"a1","Namespace":"default","FilterKeys":["web",""],"Index":42,"Payload":{"Allocation":{"ID":"a1"}}}"#
        );
    }

    #[test]
    fn null_filter_keys_and_escaping() {
        let ev = Event::new("Node", "NodeStreamEvent", "n\"1<&>", "", None, r#"{"Node":{}}"#);
        assert_eq!(
            ev.to_json(7),
            r#"{"Topic":"Node","Type":"NodeStreamEvent","Key":"n\"1<&>","Namespace":"","FilterKeys":null,"Index":7,"Payload":{"Node":{}}}"#
        );
    }

    #[test]
    fn line_and_selection() {
        let b = Batch::new(9, vec![alloc_event(), alloc_event()]);
        let line = b.to_line();
        assert!(line.starts_with(r#"{"Index":9,"Events":[{"Topic""#));
        assert!(line.ends_with("}]}"));
        let r = Rendered::new(&b);
        assert_eq!(r.select(9, &[0, 1]), line);
        let one = r.select(9, &[1]);
        assert_eq!(one, format!("{{\"Index\":9,\"Events\":[{}]}}", b.events[1].to_json(9)));
        let v: serde_json::Value = serde_json::from_str(&r.select(9, &[0, 0, 1])).unwrap();
        assert_eq!(v["Events"].as_array().unwrap().len(), 3);
    }
}

//! The on-disk form of one journaled event.
//!
//! ```text
//! u32 body length | u32 CRC-32 of body | body
//! body: u64 seq | u64 index | u64 digest | u32 occurrence
//!       | u16 source len | u16 topic len | u16 type len | u16 namespace len | u32 key len
//!       | source | topic | type | namespace | key | raw event bytes
//! ```
//!
//! All integers are little-endian. The checksum lets recovery tell a record cut short by a
//! crash from a complete one; decoding checks every length against the body, so a damaged
//! file is an error, never a panic or an over-read.

use bytes::Bytes;
use nomad_relay_sink_api::{Envelope, EventId};

/// Bytes before the body.
pub const HEADER_LEN: usize = 8;
const FIXED_BODY: usize = 8 + 8 + 8 + 4 + 2 + 2 + 2 + 2 + 4;

/// A record that cannot be decoded.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RecordError(pub String);

/// Appends the encoded record for `event` (with journal sequence `seq`) to `out`.
pub fn encode(seq: u64, event: &Envelope, out: &mut Vec<u8>) -> Result<(), RecordError> {
    let too_long = |what: &str| RecordError(format!("event {} has a {what} too long to journal", event.id));
    let source_len = u16::try_from(event.source.len()).map_err(|_| too_long("source name"))?;
    let topic_len = u16::try_from(event.topic.len()).map_err(|_| too_long("Topic"))?;
    let type_len = u16::try_from(event.event_type.len()).map_err(|_| too_long("Type"))?;
    let namespace_len = u16::try_from(event.namespace.len()).map_err(|_| too_long("Namespace"))?;
    let key_len = u32::try_from(event.key.len()).map_err(|_| too_long("Key"))?;
    let body_len = FIXED_BODY
        + event.source.len()
        + event.topic.len()
        + event.event_type.len()
        + event.namespace.len()
        + event.key.len()
        + event.raw.len();
    let body_len_u32 = u32::try_from(body_len).map_err(|_| too_long("body"))?;
    let start = out.len();
    out.reserve(HEADER_LEN + body_len);
    out.extend_from_slice(&body_len_u32.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    let body_start = out.len();
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&event.id.index.to_le_bytes());
    out.extend_from_slice(&event.id.digest.to_le_bytes());
    out.extend_from_slice(&event.id.occurrence.to_le_bytes());
    out.extend_from_slice(&source_len.to_le_bytes());
    out.extend_from_slice(&topic_len.to_le_bytes());
    out.extend_from_slice(&type_len.to_le_bytes());
    out.extend_from_slice(&namespace_len.to_le_bytes());
    out.extend_from_slice(&key_len.to_le_bytes());
    out.extend_from_slice(event.source.as_bytes());
    out.extend_from_slice(event.topic.as_bytes());
    out.extend_from_slice(event.event_type.as_bytes());
    out.extend_from_slice(event.namespace.as_bytes());
    out.extend_from_slice(event.key.as_bytes());
    out.extend_from_slice(&event.raw);
    let crc = crc32fast::hash(&out[body_start..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Reads the header: `(body length, checksum)`.
pub fn header(bytes: &[u8; HEADER_LEN]) -> (usize, u32) {
    let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    (len, crc)
}

/// The sequence number, event id and source name of a body, without decoding the rest.
pub fn peek(body: &[u8]) -> Option<(u64, EventId, &str)> {
    if body.len() < FIXED_BODY {
        return None;
    }
    let source_len = u16::from_le_bytes([body[28], body[29]]) as usize;
    let source = std::str::from_utf8(body.get(FIXED_BODY..FIXED_BODY + source_len)?).ok()?;
    let seq = u64::from_le_bytes(body[0..8].try_into().ok()?);
    let index = u64::from_le_bytes(body[8..16].try_into().ok()?);
    let digest = u64::from_le_bytes(body[16..24].try_into().ok()?);
    let occurrence = u32::from_le_bytes(body[24..28].try_into().ok()?);
    Some((seq, EventId { index, digest, occurrence }, source))
}

/// The raw event bytes of a body, without decoding the rest; `None` if its lengths do not fit.
pub fn raw(body: &[u8]) -> Option<&[u8]> {
    let u16_at = |at: usize| Some(u16::from_le_bytes([*body.get(at)?, *body.get(at + 1)?]) as usize);
    let key_len = u32::from_le_bytes(body.get(36..40)?.try_into().ok()?) as usize;
    let strings = u16_at(28)? + u16_at(30)? + u16_at(32)? + u16_at(34)? + key_len;
    body.get(FIXED_BODY + strings..)
}

/// Decodes a body whose checksum was verified.
pub fn decode(body: Bytes) -> Result<Envelope, RecordError> {
    let corrupt = |what: &str| RecordError(format!("journal record is damaged: {what}"));
    let (seq, id, _) = peek(&body).ok_or_else(|| corrupt("shorter than its fixed fields"))?;
    let u16_at = |at: usize| u16::from_le_bytes([body[at], body[at + 1]]) as usize;
    let source_len = u16_at(28);
    let topic_len = u16_at(30);
    let type_len = u16_at(32);
    let namespace_len = u16_at(34);
    let key_len = u32::from_le_bytes([body[36], body[37], body[38], body[39]]) as usize;
    let strings = source_len + topic_len + type_len + namespace_len + key_len;
    if FIXED_BODY + strings > body.len() {
        return Err(corrupt("field lengths exceed the record"));
    }
    let mut at = FIXED_BODY;
    let mut take = |len: usize| -> Result<String, RecordError> {
        let text =
            std::str::from_utf8(&body[at..at + len]).map_err(|_| corrupt("a field is not UTF-8"))?.to_owned();
        at += len;
        Ok(text)
    };
    let source = take(source_len)?;
    let topic = take(topic_len)?;
    let event_type = take(type_len)?;
    let namespace = take(namespace_len)?;
    let key = take(key_len)?;
    let raw = body.slice(FIXED_BODY + strings..);
    Ok(Envelope { seq, id, source, topic, event_type, key, namespace, raw })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let event = Envelope {
            seq: 0,
            id: EventId { index: 99, digest: 7, occurrence: 2 },
            source: "eu-west".into(),
            topic: "Allocation".into(),
            event_type: "PlanResult".into(),
            key: "a-1".into(),
            namespace: "prod".into(),
            raw: Bytes::from_static(b"{\"Topic\":\"Allocation\"}"),
        };
        let mut out = Vec::new();
        encode(42, &event, &mut out).expect("encode");
        let (len, crc) = header(out[..HEADER_LEN].try_into().expect("header"));
        assert_eq!(len, out.len() - HEADER_LEN);
        assert_eq!(crc, crc32fast::hash(&out[HEADER_LEN..]));
        let decoded = decode(Bytes::copy_from_slice(&out[HEADER_LEN..])).expect("decode");
        assert_eq!(decoded.seq, 42);
        assert_eq!(decoded.id, event.id);
        assert_eq!(decoded.source, "eu-west");
        assert_eq!((decoded.topic.as_str(), decoded.event_type.as_str()), ("Allocation", "PlanResult"));
        assert_eq!((decoded.key.as_str(), decoded.namespace.as_str()), ("a-1", "prod"));
        assert_eq!(decoded.raw, event.raw);
    }

    #[test]
    fn damaged_lengths_are_errors() {
        let mut body = vec![0u8; FIXED_BODY];
        body[36] = 0xff;
        assert!(decode(Bytes::from(body)).is_err());
        assert!(decode(Bytes::from_static(b"short")).is_err());
    }
}

//! The invariants of every parser of outside input, each a function that takes arbitrary
//! bytes and panics when its invariant is broken. The coverage-guided fuzz targets in `fuzz/`,
//! the property tests (`tests/properties.rs`) and the replay of every input a fuzzer ever
//! found (`fuzz/regressions/`, replayed by `tests/properties.rs`) call these same functions,
//! so the three check one thing each.
//!
//! | function | parser | invariant |
//! |---|---|---|
//! | [`line_splitting`] | [`LineSplitter`] | the pieces do not depend on where the chunks were cut |
//! | [`frame_parsing`] | [`parse_line`] | the same reading as [`reference`] (serde_json), or both refuse |
//! | [`record_decoding`] | [`record::decode`] | never panics; what decodes encodes back to the same bytes |
//! | [`config_loading`] | [`Config::from_toml`] | never panics: the text loads (and validates) or is an error |
//! | [`template_rendering`] | [`Template::parse`] | never panics; renders the text with each `{{Field}}` replaced by the event's value |
//!
//! None of them reads past a buffer: the workspace forbids `unsafe`, so every index is
//! bounds-checked, and a violation is a panic the fuzzer reports.

use crate::config::Config;
use crate::journal::record;
use crate::source::frame::{Frame, parse_line};
use crate::source::lines::{LineSplitter, Piece};
use bytes::Bytes;
use nomad_relay_sink_api::{Envelope, EventId, Template};

/// What a line reads as: its index and each event's (Topic, Type, Key, Namespace, bytes);
/// index 0 and no events for a heartbeat.
pub type Reading = (u64, Vec<(String, String, String, String, Vec<u8>)>);

/// The scanner's reading of a line, or its error.
pub fn scanned(line: &[u8]) -> Result<Reading, crate::source::frame::FrameError> {
    match parse_line(&Bytes::copy_from_slice(line))? {
        Frame::Heartbeat => Ok((0, Vec::new())),
        Frame::Data { index, events } => Ok((
            index,
            events.into_iter().map(|e| (e.topic, e.event_type, e.key, e.namespace, e.raw.to_vec())).collect(),
        )),
    }
}

/// The parser the scanner replaced, kept as its oracle: serde_json over the envelope
/// (`Index` a u64, default 0; `Events` null or an array) and over each event's head (`Topic`
/// and `Type` strings, `Key` and `Namespace` strings defaulting to empty), each event kept as
/// its raw bytes. A line of JSON whitespace only is a heartbeat (the relay's own rule, not
/// JSON's); a data line must have events. The envelope and each event must be objects:
/// serde's derive would also read a struct from an array (`[5,[...]]`), which is not Nomad's
/// shape (the fuzz target `frame` found this difference).
pub fn reference(line: &[u8]) -> Option<Reading> {
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(rename = "Index", default)]
        index: u64,
        #[serde(rename = "Events", borrow, default)]
        events: Option<Vec<&'a serde_json::value::RawValue>>,
    }
    #[derive(serde::Deserialize)]
    struct Head {
        #[serde(rename = "Topic")]
        topic: String,
        #[serde(rename = "Type")]
        event_type: String,
        #[serde(rename = "Key", default)]
        key: String,
        #[serde(rename = "Namespace", default)]
        namespace: String,
    }
    let text = std::str::from_utf8(line).ok()?;
    if text.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
        return Some((0, Vec::new()));
    }
    let is_object = |text: &str| text.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('{');
    if !is_object(text) {
        return None;
    }
    let envelope: Envelope<'_> = serde_json::from_str(text).ok()?;
    let mut events = Vec::new();
    for raw in envelope.events.unwrap_or_default() {
        if !is_object(raw.get()) {
            return None;
        }
        let head: Head = serde_json::from_str(raw.get()).ok()?;
        events.push((head.topic, head.event_type, head.key, head.namespace, raw.get().as_bytes().to_vec()));
    }
    match (envelope.index, events.is_empty()) {
        (0, true) => Some((0, events)),
        (_, true) => None,
        (index, false) => Some((index, events)),
    }
}

/// The frame scanner reads `line` as serde_json does, or both refuse it.
pub fn frame_parsing(line: &[u8]) {
    let ours = scanned(line);
    let theirs = reference(line);
    match (&ours, &theirs) {
        (Ok(ours), Some(theirs)) => {
            assert_eq!(ours, theirs, "the scanner and serde read {:?} differently", shown(line))
        }
        (Err(_), None) => {}
        _ => panic!(
            "the scanner and serde disagree on {:?}: scanner {:?}, serde {}",
            shown(line),
            ours.map(|(index, events)| (index, events.len())),
            if theirs.is_some() { "accepts" } else { "refuses" }
        ),
    }
}

/// The line splitter's pieces do not depend on how the stream is cut into chunks. The first
/// two bytes of `data` choose the line limit (1 to 1,024 bytes), the next eight the chunk
/// sizes; the rest is the stream. Every piece is checked against splitting the whole stream
/// at once: each line within the limit whole, each longer one reported with its length and
/// first 64 bytes, and what follows the last newline kept unfinished.
pub fn line_splitting(data: &[u8]) {
    let Some((limits, stream)) = data.split_at_checked(10) else { return };
    let max_line = usize::from(u16::from_le_bytes([limits[0], limits[1]]) % 1024) + 1;
    let sizes: Vec<usize> = limits[2..].iter().map(|size| usize::from(*size) + 1).collect();
    let stream = Bytes::copy_from_slice(stream);

    let mut splitter = LineSplitter::new(max_line);
    let mut pieces = Vec::new();
    let (mut at, mut turn) = (0, 0);
    while at < stream.len() {
        let end = (at + sizes[turn % sizes.len()]).min(stream.len());
        splitter.push(&stream.slice(at..end), &mut pieces);
        (at, turn) = (end, turn + 1);
    }
    let unfinished = splitter.finish();

    let mut expected = Vec::new();
    let mut lines: Vec<&[u8]> = stream.split(|b| *b == b'\n').collect();
    let last = lines.pop().unwrap_or_default();
    for line in lines {
        expected.push(if line.len() > max_line {
            Piece::Oversized {
                length: line.len() as u64,
                prefix: Bytes::copy_from_slice(&line[..line.len().min(64)]),
            }
        } else {
            Piece::Line(Bytes::copy_from_slice(line))
        });
    }
    let first_difference = pieces.iter().zip(&expected).position(|(ours, theirs)| ours != theirs);
    if let Some(at) = first_difference {
        panic!(
            "chunks of {sizes:?} with a {max_line}-byte limit: piece {at} is {:?}, splitting the whole stream gives {:?}",
            pieces[at], expected[at]
        );
    }
    assert_eq!(pieces.len(), expected.len(), "chunks of {sizes:?} with a {max_line}-byte limit: pieces");
    let expected_unfinished: &[u8] = if last.len() > max_line { b"" } else { last };
    assert_eq!(&unfinished[..], expected_unfinished, "the unfinished line");
}

/// Decoding a journal record body never panics, and a body that decodes encodes back to the
/// same bytes (so nothing in it was misread).
pub fn record_decoding(body: &[u8]) {
    let _ = record::peek(body);
    let _ = record::raw(body);
    if let Ok(header) =
        <&[u8; record::HEADER_LEN]>::try_from(body.get(..record::HEADER_LEN).unwrap_or_default())
    {
        let _ = record::header(header);
    }
    let Ok(event) = record::decode(Bytes::copy_from_slice(body)) else { return };
    let mut encoded = Vec::new();
    record::encode(event.seq, &event, &mut encoded).expect("a decoded record's fields fit its format");
    assert_eq!(&encoded[record::HEADER_LEN..], body, "decode then encode changed the record");
}

/// Loading any text as the configuration file (TOML, then every check `validate` makes)
/// never panics: it loads or is an error. The summary `validate` prints is rendered too.
pub fn config_loading(text: &[u8]) {
    let Ok(text) = std::str::from_utf8(text) else { return };
    if let Ok(config) = Config::from_toml(text) {
        let _ = crate::commands::validate(&config);
    }
}

/// Parsing any template never panics, and one that parses renders as its text with each
/// `{{Field}}` (spaces allowed inside the braces) replaced by the event's value. `data` is
/// the template, a NUL, then the event's Topic, Type, Key, Namespace and Source separated by
/// NULs.
pub fn template_rendering(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let Ok(template) = Template::parse(parts.next().unwrap_or_default()) else { return };
    let mut field = || parts.next().unwrap_or_default().to_owned();
    let event = Envelope {
        seq: 1,
        id: EventId { index: 7, digest: 0xfeed, occurrence: 1 },
        topic: field(),
        event_type: field(),
        key: field(),
        namespace: field(),
        source: field(),
        raw: Bytes::new(),
    };
    let value = |name: &str| match name {
        "Topic" => event.topic.clone(),
        "Type" => event.event_type.clone(),
        "Key" => event.key.clone(),
        "Namespace" => event.namespace.clone(),
        "Source" => event.source.clone(),
        "Index" => event.id.index.to_string(),
        "Id" => event.id.to_string(),
        other => panic!("the template parsed with an unknown field `{other}`"),
    };
    // Every `{{` opens a field that the next `}}` closes; the text between is literal.
    let mut pieces = template.source().split("{{");
    let mut expected = pieces.next().unwrap_or_default().to_owned();
    for piece in pieces {
        let (name, literal) = piece.split_once("}}").expect("a template that parsed closes every field");
        expected.push_str(&value(name.trim()));
        expected.push_str(literal);
    }
    assert_eq!(template.render(&event), expected, "template {:?}", template.source());
}

fn shown(line: &[u8]) -> String {
    String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned()
}

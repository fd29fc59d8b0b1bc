//! Splits Nomad's response body into NDJSON lines.
//!
//! Bytes arrive in pieces of any size: a line can span many reads and one read can hold many
//! lines. A line received whole is handed out as a zero-copy [`Bytes`] slice of its chunk; one
//! spread over several chunks is assembled in a buffer. A line longer than the configured
//! limit is not buffered: its bytes are discarded as they arrive and it is reported once, with
//! its length and the first bytes (which carry its `Index`), so the caller can record a gap.
//! Whatever is left when the stream ends is a partial line and is never parsed.

use bytes::{Bytes, BytesMut};

/// How many leading bytes of an over-long line are kept to identify it.
const OVERSIZED_PREFIX: usize = 64;

/// One item out of the splitter.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// A complete line, without its `\n`.
    Line(Bytes),
    /// A line longer than the limit was skipped.
    Oversized {
        /// Its full length in bytes, without the `\n`.
        length: u64,
        /// Its first bytes, for its `Index`.
        prefix: Bytes,
    },
}

/// Incremental NDJSON line splitter with a line-length limit.
#[derive(Debug)]
pub struct LineSplitter {
    /// The line in progress, as slices of the chunks it arrived in (copied once, at exactly
    /// its length, when it is complete: no buffer grows by doubling for a multi-MB line).
    parts: Vec<Bytes>,
    /// Bytes in `parts`.
    pending: usize,
    max_line: usize,
    /// Set while discarding an over-long line: its length so far and its prefix.
    discarding: Option<(u64, Bytes)>,
}

impl LineSplitter {
    /// A splitter that accepts lines of up to `max_line` bytes.
    pub fn new(max_line: usize) -> Self {
        LineSplitter { parts: Vec::new(), pending: 0, max_line, discarding: None }
    }

    /// Feeds one received chunk and appends every finished piece to `out`. A line that lies
    /// wholly inside `chunk` (the usual case: Nomad writes and flushes one line at a time) is a
    /// slice of it, not a copy; only a line spread over several chunks is assembled.
    pub fn push(&mut self, chunk: &Bytes, out: &mut Vec<Piece>) {
        let mut at = 0;
        while at < chunk.len() {
            let rest = &chunk[at..];
            if let Some((length, prefix)) = &mut self.discarding {
                // A limit under the prefix's length: keep the prefix whole all the same.
                if prefix.len() < OVERSIZED_PREFIX {
                    let end = memchr(rest).unwrap_or(rest.len()).min(OVERSIZED_PREFIX - prefix.len());
                    *prefix = [&prefix[..], &rest[..end]].concat().into();
                }
                match memchr(rest) {
                    Some(newline) => {
                        *length += newline as u64;
                        if let Some((length, prefix)) = self.discarding.take() {
                            out.push(Piece::Oversized { length, prefix });
                        }
                        at += newline + 1;
                    }
                    None => {
                        *length += rest.len() as u64;
                        return;
                    }
                }
                continue;
            }
            match memchr(rest) {
                Some(newline) => {
                    let line_len = self.pending + newline;
                    if line_len > self.max_line {
                        let length = line_len as u64;
                        let prefix = self.prefix_with(&rest[..newline]);
                        self.clear();
                        out.push(Piece::Oversized { length, prefix });
                    } else if self.parts.is_empty() {
                        out.push(Piece::Line(chunk.slice(at..at + newline)));
                    } else {
                        out.push(Piece::Line(self.assemble(&rest[..newline])));
                    }
                    at += newline + 1;
                }
                None => {
                    if self.pending + rest.len() > self.max_line {
                        let prefix = self.prefix_with(rest);
                        let length = (self.pending + rest.len()) as u64;
                        self.clear();
                        self.discarding = Some((length, prefix));
                    } else {
                        self.pending += rest.len();
                        self.parts.push(chunk.slice(at..));
                    }
                    return;
                }
            }
        }
    }

    /// The line in progress followed by `last`, in one buffer of exactly its length.
    fn assemble(&mut self, last: &[u8]) -> Bytes {
        let mut line = BytesMut::with_capacity(self.pending + last.len());
        for part in self.parts.drain(..) {
            line.extend_from_slice(&part);
        }
        line.extend_from_slice(last);
        self.pending = 0;
        line.freeze()
    }

    fn clear(&mut self) {
        self.parts.clear();
        self.pending = 0;
    }

    fn prefix_with(&self, more: &[u8]) -> Bytes {
        let mut prefix = Vec::with_capacity(OVERSIZED_PREFIX);
        for part in &self.parts {
            let wanted = OVERSIZED_PREFIX - prefix.len();
            prefix.extend_from_slice(&part[..part.len().min(wanted)]);
        }
        let wanted = OVERSIZED_PREFIX - prefix.len();
        prefix.extend_from_slice(&more[..more.len().min(wanted)]);
        Bytes::from(prefix)
    }

    /// Ends the stream: returns the unfinished last line (never to be parsed as an event;
    /// legacy Nomad appends its error text here) and resets the splitter.
    pub fn finish(&mut self) -> Bytes {
        self.discarding = None;
        self.assemble(&[])
    }

    /// Bytes held for the line in progress.
    pub fn pending(&self) -> usize {
        self.pending
    }
}

fn memchr(haystack: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', haystack)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(chunks: &[&[u8]], max: usize) -> (Vec<Piece>, Bytes) {
        let mut splitter = LineSplitter::new(max);
        let mut out = Vec::new();
        for chunk in chunks {
            splitter.push(&Bytes::copy_from_slice(chunk), &mut out);
        }
        let rest = splitter.finish();
        (out, rest)
    }

    #[test]
    fn lines_split_across_chunks_are_joined() {
        let (pieces, rest) = split_all(&[b"{\"In", b"dex\":1}\n{}", b"\n{\"a\":", b"2}\npart"], 1024);
        assert_eq!(
            pieces,
            vec![
                Piece::Line(Bytes::from_static(b"{\"Index\":1}")),
                Piece::Line(Bytes::from_static(b"{}")),
                Piece::Line(Bytes::from_static(b"{\"a\":2}")),
            ]
        );
        assert_eq!(rest, Bytes::from_static(b"part"));
    }

    #[test]
    fn a_line_received_whole_is_not_copied() {
        let chunk = Bytes::from_static(b"{\"Index\":1}\n{\"In");
        let mut splitter = LineSplitter::new(1024);
        let mut out = Vec::new();
        splitter.push(&chunk, &mut out);
        let Some(Piece::Line(line)) = out.first() else { panic!("expected a line, got {out:?}") };
        assert_eq!(&line[..], b"{\"Index\":1}");
        assert_eq!(line.as_ptr(), chunk.as_ptr(), "the line should be a slice of the chunk");
        splitter.push(&Bytes::from_static(b"dex\":2}\n"), &mut out);
        assert_eq!(out[1], Piece::Line(Bytes::from_static(b"{\"Index\":2}")));
    }

    #[test]
    fn every_byte_offset_split_gives_the_same_lines() {
        let text = b"{\"Index\":5,\"Events\":[]}\n{}\n{\"Index\":6}\n{\"tail";
        let want = vec![
            Piece::Line(Bytes::from_static(b"{\"Index\":5,\"Events\":[]}")),
            Piece::Line(Bytes::from_static(b"{}")),
            Piece::Line(Bytes::from_static(b"{\"Index\":6}")),
        ];
        for cut in 0..=text.len() {
            let (pieces, rest) = split_all(&[&text[..cut], &text[cut..]], 1024);
            assert_eq!(pieces, want, "cut at {cut}");
            assert_eq!(rest, Bytes::from_static(b"{\"tail"), "cut at {cut}");
        }
        // And split at every pair of offsets, three chunks.
        for first in 0..=text.len() {
            for second in first..=text.len() {
                let chunks = [&text[..first], &text[first..second], &text[second..]];
                let (pieces, rest) = split_all(&chunks, 1024);
                assert_eq!(pieces, want, "cuts at {first} and {second}");
                assert_eq!(rest, Bytes::from_static(b"{\"tail"));
            }
        }
    }

    #[test]
    fn oversized_line_is_reported_once_and_the_next_line_survives() {
        let mut big = b"{\"Index\":77,\"Events\":[".to_vec();
        big.extend(std::iter::repeat_n(b'x', 500));
        big.extend_from_slice(b"]}\n{\"Index\":78}\n");
        let chunks: Vec<&[u8]> = big.chunks(7).collect();
        let (pieces, _) = split_all(&chunks, 100);
        assert_eq!(pieces.len(), 2);
        match &pieces[0] {
            Piece::Oversized { length, prefix } => {
                assert_eq!(*length, 524);
                assert!(prefix.starts_with(b"{\"Index\":77,"));
            }
            other => panic!("expected oversized, got {other:?}"),
        }
        assert_eq!(pieces[1], Piece::Line(Bytes::from_static(b"{\"Index\":78}")));
    }

    #[test]
    fn line_of_exactly_the_limit_is_accepted() {
        let (pieces, _) = split_all(&[b"12345\n"], 5);
        assert_eq!(pieces, vec![Piece::Line(Bytes::from_static(b"12345"))]);
        let (pieces, _) = split_all(&[b"123456\n"], 5);
        assert!(matches!(pieces[0], Piece::Oversized { length: 6, .. }));
    }
}

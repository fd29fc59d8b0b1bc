//! The response body writer of one stream: Go-style "write then flush" units,
//! optionally compressed with a sync flush per unit (legacy gzip/deflate),
//! optionally chunk-framed (legacy HTTP/1.1), optionally split into random
//! pieces (`fragment_writes`), each piece under the write deadline.

use std::io::{self, Write as _};
use std::time::Duration;

use flate2::Compression;
use flate2::write::{DeflateEncoder, GzEncoder};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::io::AsyncWriteExt as _;
use tokio::net::tcp::OwnedWriteHalf;

use crate::http::Encoding;

/// A streaming compressor whose output is drained after every flush.
enum Compressor {
    Gzip(GzEncoder<Vec<u8>>),
    Deflate(DeflateEncoder<Vec<u8>>),
}

impl Compressor {
    fn new(enc: Encoding) -> Compressor {
        match enc {
            Encoding::Gzip => Compressor::Gzip(GzEncoder::new(Vec::new(), Compression::default())),
            Encoding::Deflate => Compressor::Deflate(DeflateEncoder::new(Vec::new(), Compression::default())),
        }
    }

    /// Compresses `data` and sync-flushes, returning the bytes produced.
    fn write_flush(&mut self, data: &[u8]) -> io::Result<Vec<u8>> {
        match self {
            Compressor::Gzip(e) => {
                e.write_all(data)?;
                e.flush()?;
                Ok(std::mem::take(e.get_mut()))
            }
            Compressor::Deflate(e) => {
                e.write_all(data)?;
                e.flush()?;
                Ok(std::mem::take(e.get_mut()))
            }
        }
    }

    /// Ends the compressed stream (gzip trailer), returning the remaining bytes.
    fn finish(&mut self) -> io::Result<Vec<u8>> {
        match self {
            Compressor::Gzip(e) => {
                e.try_finish()?;
                Ok(std::mem::take(e.get_mut()))
            }
            Compressor::Deflate(e) => {
                e.try_finish()?;
                Ok(std::mem::take(e.get_mut()))
            }
        }
    }
}

/// How the body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delimit {
    /// Raw bytes until the connection closes (modern, or legacy over HTTP/1.0).
    Close,
    /// `Transfer-Encoding: chunked` (legacy over HTTP/1.1).
    Chunked,
}

/// Writer for one response body.
pub(crate) struct BodyWriter {
    wr: OwnedWriteHalf,
    delimit: Delimit,
    compressor: Option<Compressor>,
    fragment: Option<StdRng>,
    deadline: Option<Duration>,
    /// Response head not yet sent; it goes out with the first body write, like Go's.
    pending_head: Option<Vec<u8>>,
}

impl BodyWriter {
    /// A body writer over `wr`.
    pub fn new(
        wr: OwnedWriteHalf,
        delimit: Delimit,
        encoding: Option<Encoding>,
        fragment_seed: Option<u64>,
        deadline: Option<Duration>,
    ) -> BodyWriter {
        BodyWriter {
            wr,
            delimit,
            compressor: encoding.map(Compressor::new),
            fragment: fragment_seed.map(StdRng::seed_from_u64),
            deadline,
            pending_head: None,
        }
    }

    /// Holds `head` back so it is sent together with the first body write.
    pub fn defer_head(&mut self, head: Vec<u8>) {
        self.pending_head = Some(head);
    }

    /// Sends a deferred head now, if any.
    pub async fn flush_head(&mut self) -> io::Result<()> {
        if let Some(head) = self.pending_head.take() {
            self.send_raw(&head, false).await?;
        }
        Ok(())
    }

    /// Writes raw bytes (not part of the body framing), e.g. a response head.
    pub async fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.send_raw(bytes, false).await
    }

    /// One Go `Write` followed by `Flush`: compressed and framed as a unit.
    pub async fn write_unit(&mut self, data: &[u8]) -> io::Result<()> {
        let payload = match &mut self.compressor {
            Some(c) => c.write_flush(data)?,
            None if self.delimit == Delimit::Close && self.pending_head.is_none() => {
                // Nothing to add around the bytes: send them as they are.
                return self.send_raw(data, true).await;
            }
            None => data.to_vec(),
        };
        let framed = self.frame(payload);
        self.send_body(framed).await
    }

    /// A line as Nomad writes it: the JSON bytes, then `"\n"` as a separate write.
    pub async fn write_line(&mut self, json: &[u8]) -> io::Result<()> {
        self.write_unit(json).await?;
        self.write_unit(b"\n").await
    }

    /// Ends the body: compressor trailer and, when chunked, the last chunk.
    pub async fn finish(&mut self) -> io::Result<()> {
        let mut out = Vec::new();
        if let Some(c) = &mut self.compressor {
            let tail = c.finish()?;
            out = self.frame(tail);
        }
        if self.delimit == Delimit::Chunked {
            out.extend_from_slice(b"0\r\n\r\n");
        }
        self.send_body(out).await
    }

    /// Appends an error text after the stream started (legacy `wrap`): no newline,
    /// then the end of the body.
    pub async fn end_with_error(&mut self, msg: &str) -> io::Result<()> {
        self.write_unit(msg.as_bytes()).await?;
        self.finish().await
    }

    fn frame(&self, payload: Vec<u8>) -> Vec<u8> {
        if payload.is_empty() || self.delimit == Delimit::Close {
            return payload;
        }
        let mut out = format!("{:x}\r\n", payload.len()).into_bytes();
        out.extend_from_slice(&payload);
        out.extend_from_slice(b"\r\n");
        out
    }

    async fn send_body(&mut self, bytes: Vec<u8>) -> io::Result<()> {
        let bytes = match self.pending_head.take() {
            Some(mut head) => {
                head.extend_from_slice(&bytes);
                head
            }
            None => bytes,
        };
        self.send_raw(&bytes, true).await
    }

    async fn send_raw(&mut self, bytes: &[u8], may_fragment: bool) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        if may_fragment && let Some(rng) = &mut self.fragment {
            let mut rest = bytes;
            while !rest.is_empty() {
                let n = piece_len(rng, rest.len());
                let (piece, tail) = rest.split_at(n);
                write_with_deadline(&mut self.wr, piece, self.deadline).await?;
                rest = tail;
            }
            Ok(())
        } else {
            write_with_deadline(&mut self.wr, bytes, self.deadline).await
        }
    }

    /// Gives the socket back (for a following request on the same connection).
    pub fn into_inner(self) -> OwnedWriteHalf {
        self.wr
    }

    /// Closes the write side (FIN).
    pub async fn shutdown(&mut self) {
        let _ = self.wr.shutdown().await;
    }
}

async fn write_with_deadline(
    wr: &mut OwnedWriteHalf,
    bytes: &[u8],
    deadline: Option<Duration>,
) -> io::Result<()> {
    let write = async {
        wr.write_all(bytes).await?;
        wr.flush().await
    };
    match deadline {
        None => write.await,
        Some(d) => tokio::time::timeout(d, write)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "write deadline exceeded"))?,
    }
}

/// Random piece size in `1..=len`, biased to small pieces.
fn piece_len(rng: &mut StdRng, len: usize) -> usize {
    let cap = match rng.random_range(0..100u32) {
        0..50 => 8,
        50..80 => 128,
        80..95 => 4096,
        _ => len,
    };
    rng.random_range(1..=cap.min(len))
}

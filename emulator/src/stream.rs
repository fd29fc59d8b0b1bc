//! One subscription's life after it was accepted: the initial `{}`, the
//! free-running heartbeat ticker, pulling batches from the buffer by sequence
//! number, filtering, token expiry, stalls, cuts, and how the body ends.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use tokio::io::AsyncReadExt as _;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::broadcast;
use tokio::time::{Instant, MissedTickBehavior};

use crate::acl::is_expired;
use crate::body::BodyWriter;
use crate::buffer::Fetch;
use crate::config::{AclToken, Cut, Framing};
use crate::filter::{Filter, Selection};
use crate::state::{Control, Shared};

/// Error texts Nomad appends to a legacy body.
const CLOSED: &str = "subscription closed by server, client should resubscribe";
const DROPPED: &str = "event dropped from buffer";
const EXPIRED: &str = "ACL token expired";

/// Most bytes kept from a client that sends data while streaming (a pipelined request).
const MAX_PENDING: usize = 64 * 1024;

/// An accepted subscription.
pub(crate) struct Subscription {
    /// Its filter.
    pub filter: Filter,
    /// Sequence number of the first item to deliver.
    pub start_seq: u64,
    /// Its resolved token (ACLs enabled) for expiry and revocation.
    pub token: Option<AclToken>,
    /// Control messages, subscribed before the subscription was counted.
    pub control: broadcast::Receiver<Control>,
}

/// How a stream ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum StreamEnd {
    /// The body was ended properly; the connection may serve another request.
    Reusable,
    /// The connection must be closed.
    Close,
}

/// The client's read side while streaming.
pub(crate) struct ReadSide<'a> {
    /// Socket read half.
    pub rd: &'a mut OwnedReadHalf,
    /// Bytes received but not yet parsed.
    pub pending: &'a mut Vec<u8>,
}

impl ReadSide<'_> {
    /// Resolves when the client closed the connection (or it failed); bytes it sends
    /// meanwhile are kept for a following request.
    async fn closed(&mut self) {
        let mut chunk = [0u8; 4096];
        loop {
            match self.rd.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if self.pending.len() < MAX_PENDING {
                        self.pending.extend_from_slice(&chunk[..n]);
                    }
                }
            }
        }
    }
}

/// Runs the stream until it ends.
pub(crate) async fn run(
    shared: &Shared,
    mut sub: Subscription,
    body: &mut BodyWriter,
    mut read: ReadSide<'_>,
) -> StreamEnd {
    let legacy = shared.config.framing == Framing::Legacy;
    let period = shared.config.heartbeat_interval.max(Duration::from_millis(1));
    let mut tick = tokio::time::interval_at(Instant::now() + period, period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut stall_rx = shared.stalled.subscribe();
    let mut tail_rx = shared.buffer.subscribe();
    let mut seq = sub.start_seq;
    let mut initial_pending = true;
    let mut cut_mid_line = false;

    loop {
        let stalled = *stall_rx.borrow_and_update();
        if initial_pending {
            let sent = if stalled {
                body.flush_head().await
            } else {
                initial_pending = false;
                body.write_line(b"{}").await
            };
            if sent.is_err() {
                return StreamEnd::Close;
            }
            if !stalled {
                continue;
            }
        }
        tokio::select! {
            biased;
            msg = sub.control.recv() => {
                let ending = match msg {
                    Ok(Control::Cut(Cut::MidLine)) => {
                        cut_mid_line = true;
                        None
                    }
                    Ok(Control::Cut(Cut::Clean)) => Some(true),
                    Ok(Control::Restart) => Some(false),
                    Ok(Control::Revoke(secret)) => {
                        sub.token.as_ref().filter(|t| t.secret == secret).map(|_| true)
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => Some(true),
                    Err(broadcast::error::RecvError::Closed) => Some(false),
                };
                if let Some(reusable) = ending {
                    return end(body, legacy, CLOSED, reusable).await;
                }
            }
            () = read.closed() => return StreamEnd::Close,
            changed = stall_rx.changed() => {
                if changed.is_err() {
                    return StreamEnd::Close;
                }
            }
            _ = tick.tick(), if !stalled => {
                if body.write_line(b"{}").await.is_err() {
                    return StreamEnd::Close;
                }
            }
            fetched = shared.buffer.next(seq, &mut tail_rx), if !stalled => {
                let item = match fetched {
                    Fetch::Item(item) => item,
                    Fetch::Dropped => return end(body, legacy, DROPPED, true).await,
                    Fetch::Pending => continue,
                };
                seq += 1;
                let line: Cow<'_, [u8]> = match (&item.hostile, sub.filter.select(&item.batch)) {
                    (Some(hostile), _) => Cow::Borrowed(hostile),
                    (None, Selection::Nothing) => continue,
                    (None, Selection::All) => Cow::Borrowed(item.rendered.line.as_bytes()),
                    (None, Selection::Some(picked)) => {
                        Cow::Owned(item.rendered.select(item.batch.index, &picked).into_bytes())
                    }
                };
                if sub.token.as_ref().is_some_and(|t| is_expired(t, SystemTime::now())) {
                    return end(body, legacy, EXPIRED, true).await;
                }
                if cut_mid_line {
                    let half = (line.len() / 2).max(1);
                    let _ = body.write_unit(&line[..half]).await;
                    return StreamEnd::Close;
                }
                if body.write_line(&line).await.is_err() {
                    return StreamEnd::Close;
                }
            }
        }
    }
}

/// Ends the stream with a Nomad error: legacy appends the text and ends the body;
/// modern just closes.
async fn end(body: &mut BodyWriter, legacy: bool, msg: &str, reusable: bool) -> StreamEnd {
    if legacy && body.end_with_error(msg).await.is_ok() && reusable {
        StreamEnd::Reusable
    } else {
        StreamEnd::Close
    }
}

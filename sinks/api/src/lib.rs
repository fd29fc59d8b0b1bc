//! The contract between nomad-relay and every sink it delivers to.
//!
//! A sink is the last step of the relay's data path: Nomad's event stream is first written
//! to a durable journal, then one sink worker per configured sink reads the journal from its
//! own cursor, hands batches of [`Envelope`]s to its [`Sink`], and moves the cursor only past
//! events the sink reported as [`Outcome::Delivered`] or [`Outcome::Rejected`].
//!
//! This crate holds only what a sink needs to know: the envelope, the per-event outcome, the
//! guarantee a sink states, the error type, and the template engine sinks use to render
//! subjects, topics and keys from event fields. Broker crates depend on nothing else of the
//! relay.

mod envelope;
mod sink;
mod template;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod units;

pub use envelope::{Envelope, EventId};
pub use sink::{DRAIN_EVERY, Guarantee, Outcome, Sink, SinkError, SinkErrorKind, Submission, held_back};
pub use template::{TEMPLATE_FIELDS, Template, TemplateError};

//! Topics that are broken on their own, while the brokers and the sink's other topics work: a
//! topic that is missing (and the sink may not create it), that Kafka will not describe to
//! this client, or whose records Kafka refused for the topic's sake (`TOPIC_AUTHORIZATION_FAILED`,
//! `UNKNOWN_TOPIC_OR_PART`).
//!
//! Events for a broken topic are parked (`Outcome::Parked`) without being produced, so they
//! hold back nothing but themselves. Each broken topic is tried again after a back-off that
//! doubles from [`FIRST_TRY`] to [`LAST_TRY`]: the next batch with events for it then goes
//! through the whole path (partitions read back, topic looked up, records produced), and a
//! record delivered to it makes it whole again.

use nomad_relay_sink_api::{SinkError, SinkErrorKind};
use rdkafka::types::RDKafkaErrorCode;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

/// The first wait before a broken topic is tried again.
pub const FIRST_TRY: Duration = Duration::from_secs(1);
/// The longest wait.
pub const LAST_TRY: Duration = Duration::from_secs(30);

/// A delivery-report error that concerns the record's topic only, per Kafka's protocol error
/// table (`TOPIC_AUTHORIZATION_FAILED` 29, `UNKNOWN_TOPIC_OR_PARTITION` 3) and librdkafka's own
/// `ERR__UNKNOWN_TOPIC`.
pub fn concerns_the_topic(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::UnknownTopicOrPartition
            | RDKafkaErrorCode::UnknownTopic
    )
}

struct Broken {
    kind: SinkErrorKind,
    why: String,
    next_try: Instant,
    tries: u32,
}

/// The broken topics of one sink.
#[derive(Default)]
pub struct BrokenTopics {
    topics: BTreeMap<String, Broken>,
}

impl BrokenTopics {
    /// Marks `topic` broken for `error`; it is tried again after the next back-off. More
    /// failures before that (the other records of one try) keep the back-off as it is.
    pub fn mark(&mut self, topic: &str, error: &SinkError) {
        let now = Instant::now();
        if let Some(broken) = self.topics.get_mut(topic).filter(|b| b.next_try > now) {
            broken.why = error.report();
            return;
        }
        let tries = self.topics.get(topic).map_or(0, |b| b.tries + 1);
        let wait = FIRST_TRY.saturating_mul(2u32.saturating_pow(tries.min(16))).min(LAST_TRY);
        let broken = Broken { kind: error.kind, why: error.report(), next_try: now + wait, tries };
        self.topics.insert(topic.to_owned(), broken);
    }

    /// Why events for `topic` are parked now; `None` when it is not broken or is due to be
    /// tried again.
    pub fn parks(&self, topic: &str, now: Instant) -> Option<SinkError> {
        let broken = self.topics.get(topic).filter(|b| b.next_try > now)?;
        Some(SinkError::new(
            broken.kind,
            format!("{} (tried again within {:?})", broken.why, broken.next_try - now),
        ))
    }

    /// Whether `topic` is broken and due to be tried again.
    pub fn due(&self, topic: &str, now: Instant) -> bool {
        self.topics.get(topic).is_some_and(|b| b.next_try <= now)
    }

    /// A record reached `topic`: it is whole again.
    pub fn healed(&mut self, topic: &str) {
        self.topics.remove(topic);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parked_until_due_with_a_growing_back_off_and_healed_by_a_delivery() {
        let mut broken = BrokenTopics::default();
        let now = Instant::now();
        assert!(broken.parks("a", now).is_none());
        broken.mark("a", &SinkError::new(SinkErrorKind::Refused, "no write access"));
        let why = broken.parks("a", Instant::now()).expect("parked");
        assert!(why.report().contains("no write access"), "{}", why.report());
        assert!(!broken.due("a", Instant::now()));
        assert!(broken.due("a", Instant::now() + FIRST_TRY), "due after the first back-off");
        broken.mark("a", &SinkError::new(SinkErrorKind::Refused, "another record of the same try"));
        assert!(broken.due("a", Instant::now() + FIRST_TRY), "the same try keeps its back-off");
        broken.healed("a");
        assert!(broken.parks("a", Instant::now()).is_none() && !broken.due("a", Instant::now()));
        assert!(concerns_the_topic(RDKafkaErrorCode::TopicAuthorizationFailed));
        assert!(!concerns_the_topic(RDKafkaErrorCode::MessageTimedOut), "a broker outage is not the topic's");
    }
}

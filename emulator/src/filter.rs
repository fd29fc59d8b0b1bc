//! Per-subscription event filtering, exactly as Nomad's `subscription.filter`
//! (spec §2.1), quirks included: the namespace gate passes `""` namespaces, a
//! wildcard mixed with a specific key on one topic is lost, and an event that
//! matches N requested keys is emitted N times.

use std::collections::HashSet;

use crate::event::Batch;
use crate::query::Topics;

/// What a subscriber receives of one batch.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Selection {
    /// Every event once, in order: the pre-rendered line can be sent as is.
    All,
    /// Nothing: the line is skipped.
    Nothing,
    /// These event positions, in order, possibly repeated.
    Some(Vec<usize>),
}

/// A subscription's topics and frozen namespace list.
#[derive(Debug)]
pub(crate) struct Filter {
    topics: Topics,
    namespaces: HashSet<String>,
}

fn is_wildcard(keys: &[String]) -> bool {
    keys.len() == 1 && keys[0] == "*"
}

impl Filter {
    /// A filter for `topics` and the (already expanded) namespace list.
    pub fn new(topics: Topics, namespaces: &[String]) -> Filter {
        Filter { topics, namespaces: namespaces.iter().cloned().collect() }
    }

    /// The events of `batch` this subscription gets.
    pub fn select(&self, batch: &Batch) -> Selection {
        let all_keys: &[String] = self.topics.get("*").map_or(&[], Vec::as_slice);
        let mut picked = Vec::new();
        for (i, ev) in batch.events.iter().enumerate() {
            if !ev.namespace.is_empty() && !self.namespaces.contains(&ev.namespace) {
                continue;
            }
            if is_wildcard(all_keys) {
                picked.push(i);
                continue;
            }
            let topic_keys: &[String] = self.topics.get(&ev.topic).map_or(&[], Vec::as_slice);
            if all_keys.len() + topic_keys.len() == 1 && is_wildcard_pair(all_keys, topic_keys) {
                picked.push(i);
                continue;
            }
            for key in all_keys.iter().chain(topic_keys) {
                let in_filter_keys =
                    ev.filter_keys.as_ref().is_some_and(|fks| fks.iter().any(|fk| fk == key));
                if *key == ev.key || in_filter_keys {
                    picked.push(i);
                }
            }
        }
        if picked.is_empty() {
            Selection::Nothing
        } else if picked.len() == batch.events.len() && picked.iter().enumerate().all(|(a, &b)| a == b) {
            Selection::All
        } else {
            Selection::Some(picked)
        }
    }
}

/// `keys == ["*"]` where `keys` is the concatenation of two lists of total length 1.
fn is_wildcard_pair(a: &[String], b: &[String]) -> bool {
    a.first().or_else(|| b.first()).is_some_and(|k| k == "*")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use crate::query::{parse_query, parse_topics};

    fn filter(q: &str, ns: &[&str]) -> Filter {
        let ns: Vec<String> = ns.iter().map(|s| s.to_string()).collect();
        Filter::new(parse_topics(&parse_query(q)).unwrap(), &ns)
    }

    fn ev(topic: &str, key: &str, ns: &str, fks: Option<&[&str]>) -> Event {
        Event::new(topic, "T", key, ns, fks.map(|f| f.iter().map(|s| s.to_string()).collect()), "{}")
    }

    fn batch() -> Batch {
        Batch::new(
            5,
            vec![
                ev("Job", "web", "default", None),
                ev("Allocation", "a1", "default", Some(&["web", "d1"])),
                ev("Node", "n1", "", None),
                ev("Job", "api", "prod", None),
            ],
        )
    }

    #[test]
    fn everything() {
        assert_eq!(filter("", &["default", "prod"]).select(&batch()), Selection::All);
        assert_eq!(filter("", &["default"]).select(&batch()), Selection::Some(vec![0, 1, 2]));
    }

    #[test]
    fn wildcard_lost_when_mixed() {
        let f = filter("topic=Job&topic=Job:web", &["default", "prod"]);
        assert_eq!(f.select(&batch()), Selection::Some(vec![0]));
        let f = filter("topic=*:web&topic=Job", &["default", "prod"]);
        assert_eq!(f.select(&batch()), Selection::Some(vec![0, 1]));
    }

    #[test]
    fn duplicates_per_matching_key() {
        let f = filter("topic=Allocation:web&topic=Allocation:d1", &["default"]);
        assert_eq!(f.select(&batch()), Selection::Some(vec![1, 1]));
        let f = filter("topic=Job:web&topic=*:web", &["default"]);
        assert_eq!(f.select(&batch()), Selection::Some(vec![0, 0, 1]));
    }

    #[test]
    fn topic_wildcard_and_unknown() {
        assert_eq!(filter("topic=Node", &["default"]).select(&batch()), Selection::Some(vec![2]));
        assert_eq!(filter("topic=NodeDrain", &["default"]).select(&batch()), Selection::Nothing);
        let empty_key = Batch::new(1, vec![ev("Allocation", "a", "default", Some(&["j", ""]))]);
        assert_eq!(filter("topic=Allocation:", &["default"]).select(&empty_key), Selection::All);
    }
}

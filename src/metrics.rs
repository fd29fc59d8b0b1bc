//! What the relay reports about itself: Prometheus metrics and readiness, read from the
//! counters the source and the workers keep ([`crate::stats`]).
//!
//! Labels are the configured source and sink names only, so the number of series is fixed by
//! the configuration.

use crate::stats::{FAILURE_KINDS, SinkStats, SourceStats};
use std::fmt::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::watch;

/// One metric read from a counter struct: name, Prometheus type, help text, and the read.
type Reading<T> = (&'static str, &'static str, &'static str, fn(&T) -> u64);

/// Everything the endpoint reads.
pub struct Telemetry {
    /// Each Nomad source's counters, by name.
    pub sources: Vec<(String, Arc<SourceStats>)>,
    /// Each sink's counters, by name.
    pub sinks: Vec<(String, Arc<SinkStats>)>,
    /// The journal directory (its size is read on each scrape).
    pub journal_dir: PathBuf,
    /// The journal writer's counters.
    pub journal: Arc<crate::journal::writer::JournalStats>,
    /// The journal's durable head (last record written).
    pub head: watch::Receiver<u64>,
    /// Set once shutdown has begun: the relay is no longer ready.
    pub stopping: Arc<std::sync::atomic::AtomicBool>,
    /// The high-availability role and counters; `None` without `[ha]`.
    pub ha: Option<Arc<crate::ha::HaStats>>,
    /// The endpoint's own connection counters.
    pub http: Arc<crate::http::HttpStats>,
}

/// Why the relay is not ready.
#[derive(Debug, serde::Serialize)]
pub struct NotReady {
    /// `source` or `sink`.
    pub kind: &'static str,
    /// Its configured name.
    pub name: String,
    /// What is wrong.
    pub reason: String,
}

impl Telemetry {
    /// Everything that keeps the relay from being ready: a source not connected to Nomad, a
    /// sink that cannot deliver.
    pub fn not_ready(&self) -> Vec<NotReady> {
        let mut problems = Vec::new();
        if self.stopping.load(Ordering::Relaxed) {
            problems.push(NotReady {
                kind: "relay",
                name: "nomad-relay".into(),
                reason: "shutting down".into(),
            });
        }
        for (name, stats) in &self.sources {
            if !stats.connected.load(Ordering::Relaxed) {
                problems.push(NotReady {
                    kind: "source",
                    name: name.clone(),
                    reason: "not connected to Nomad's event stream".into(),
                });
            }
        }
        // A standby delivers nothing, so its sinks are not expected to run.
        let standby = self.ha.as_ref().is_some_and(|ha| !ha.leader.load(Ordering::Relaxed));
        for (name, stats) in self.sinks.iter().filter(|_| !standby) {
            if !stats.healthy.load(Ordering::Relaxed) {
                problems.push(NotReady { kind: "sink", name: name.clone(), reason: stats.problem() });
            }
        }
        problems
    }

    /// The Prometheus text exposition of every metric. Reads the journal directory's size,
    /// so call it off the async runtime.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let head = *self.head.borrow();
        metric(&mut out, "nomad_relay_build_info", "gauge", "Build information; always 1.", |out| {
            sample(out, "nomad_relay_build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1);
        });
        self.render_sources(&mut out);
        self.render_sinks(&mut out, head);
        self.render_journal(&mut out, head);
        self.render_http(&mut out);
        self.render_ha(&mut out);
        out
    }

    /// The role ("leader", "standby"), or "single" without `[ha]`.
    pub fn role(&self) -> &'static str {
        match &self.ha {
            None => "single",
            Some(ha) if ha.leader.load(Ordering::Relaxed) => "leader",
            Some(_) => "standby",
        }
    }

    fn render_ha(&self, out: &mut String) {
        let Some(ha) = &self.ha else { return };
        let gauge = |out: &mut String, name: &str, kind: &str, help: &str, value: u64| {
            metric(out, name, kind, help, |out| sample(out, name, &[], value));
        };
        gauge(
            out,
            "nomad_relay_ha_leader",
            "gauge",
            "1 while this instance holds the lease and delivers, else 0.",
            u64::from(ha.leader.load(Ordering::Relaxed)),
        );
        gauge(
            out,
            "nomad_relay_ha_failovers_total",
            "counter",
            "Terms as leader this instance has begun.",
            ha.failovers.load(Ordering::Relaxed),
        );
        gauge(
            out,
            "nomad_relay_ha_lease_renew_failures_total",
            "counter",
            "Lease renewals that failed.",
            ha.renew_failures.load(Ordering::Relaxed),
        );
        let written = ha.checkpoint_unix_ms.load(Ordering::Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let age = if written == 0 { 0 } else { now.saturating_sub(written) / 1000 };
        gauge(
            out,
            "nomad_relay_ha_checkpoint_age_seconds",
            "gauge",
            "Seconds since the shared checkpoint was last written (leader) or read (standby); 0 before the first.",
            age,
        );
    }

    /// Per source: connection, index and line counters.
    fn render_sources(&self, out: &mut String) {
        let source_gauges: [Reading<SourceStats>; 9] = [
            ("nomad_relay_source_connected", "gauge", "1 while the event stream is open.", |s| {
                u64::from(s.connected.load(Ordering::Relaxed))
            }),
            ("nomad_relay_source_reconnects_total", "counter", "Connections opened after the first.", |s| {
                s.reconnects.load(Ordering::Relaxed)
            }),
            ("nomad_relay_source_last_index", "gauge", "Highest Nomad index seen on the stream.", |s| {
                s.last_index.load(Ordering::Relaxed)
            }),
            (
                "nomad_relay_source_gaps_detected_total",
                "counter",
                "Times Nomad may have dropped events the relay never received.",
                |s| s.gaps.load(Ordering::Relaxed),
            ),
            ("nomad_relay_source_read_bytes_total", "counter", "Bytes received from Nomad.", |s| {
                s.bytes_read.load(Ordering::Relaxed)
            }),
            ("nomad_relay_source_events_total", "counter", "Events written to the journal.", |s| {
                s.events_journaled.load(Ordering::Relaxed)
            }),
            (
                "nomad_relay_source_skipped_lines_total",
                "counter",
                "Lines that could not be read (malformed or too long).",
                |s| s.lines_skipped.load(Ordering::Relaxed),
            ),
            (
                "nomad_relay_source_namespace_catch_ups_total",
                "counter",
                "Resubscriptions from a new namespace's CreateIndex, below the checkpoint.",
                |s| s.namespace_catch_ups.load(Ordering::Relaxed),
            ),
            (
                "nomad_relay_source_index_resets_total",
                "counter",
                "Times Nomad's index went backwards (a stream stayed below the checkpoint).",
                |s| s.index_resets.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, read) in source_gauges {
            metric(out, name, kind, help, |out| {
                for (source, stats) in &self.sources {
                    sample(out, name, &[("source", source)], read(stats));
                }
            });
        }
    }

    /// Per sink: outcomes and state (`head`: the journal head).
    fn render_sinks(&self, out: &mut String, head: u64) {
        let sink_gauges: [Reading<SinkStats>; 11] = [
            (
                "nomad_relay_sink_delivered_events_total",
                "counter",
                "Events the destination confirmed.",
                |s| s.delivered.load(Ordering::Relaxed),
            ),
            (
                "nomad_relay_sink_duplicate_events_total",
                "counter",
                "Events sent again that the destination already held (a JetStream duplicate PubAck, a record the Kafka sink found): not stored again.",
                |s| s.duplicates.load(Ordering::Relaxed),
            ),
            (
                "nomad_relay_sink_retried_events_total",
                "counter",
                "Events sent again after a failed attempt (one event retried twice counts twice).",
                |s| s.retried.load(Ordering::Relaxed),
            ),
            (
                "nomad_relay_sink_rejected_events_total",
                "counter",
                "Events the destination refused for good (logged, skipped).",
                |s| s.rejected.load(Ordering::Relaxed),
            ),
            (
                "nomad_relay_sink_dropped_events_total",
                "counter",
                "Events removed from a full journal before this sink had them (when_full = drop_oldest).",
                |s| s.dropped.load(Ordering::Relaxed),
            ),
            (
                "nomad_relay_sink_damaged_records_total",
                "counter",
                "Journal records this sink could not read (damaged on disk; quarantined and replaced by a GapDetected marker).",
                |s| s.damaged.load(Ordering::Relaxed),
            ),
            (
                "nomad_relay_sink_in_flight_events",
                "gauge",
                "Events handed to the sink, not yet confirmed.",
                |s| s.in_flight.load(Ordering::Relaxed),
            ),
            (
                "nomad_relay_sink_in_flight_batches",
                "gauge",
                "Batches a pipelined sink has been handed and not yet confirmed.",
                |s| s.batches_in_flight.load(Ordering::Relaxed),
            ),
            (
                "nomad_relay_sink_parked_events",
                "gauge",
                "Events set aside because their own destination is broken (a Kafka topic), while the sink's others are served.",
                |s| s.parked.load(Ordering::Relaxed),
            ),
            (
                "nomad_relay_sink_cursor_index",
                "gauge",
                "Nomad index of the last event the sink is past.",
                |s| s.cursor_index.load(Ordering::Relaxed),
            ),
            ("nomad_relay_sink_healthy", "gauge", "1 while the sink delivers.", |s| {
                u64::from(s.healthy.load(Ordering::Relaxed))
            }),
        ];
        for (name, kind, help, read) in sink_gauges {
            metric(out, name, kind, help, |out| {
                for (sink, stats) in &self.sinks {
                    sample(out, name, &[("sink", sink)], read(stats));
                }
            });
        }
        self.render_sink_progress(out, head);
    }

    /// Per sink: failures by kind, lag in Nomad indexes and backlog in journal records.
    fn render_sink_progress(&self, out: &mut String, head: u64) {
        let last_index = self.sources.iter().map(|(_, s)| s.last_index.load(Ordering::Relaxed)).max();
        let name = "nomad_relay_sink_failures_total";
        metric(
            out,
            name,
            "counter",
            "Failed delivery attempts (and failed opens), by kind of failure.",
            |out| {
                for (sink, stats) in &self.sinks {
                    for (position, kind) in FAILURE_KINDS.iter().enumerate() {
                        sample(
                            out,
                            name,
                            &[("sink", sink), ("kind", kind.name())],
                            stats.failures[position].load(Ordering::Relaxed),
                        );
                    }
                }
            },
        );
        let name = "nomad_relay_sink_lag_index";
        metric(out, name, "gauge", "Last Nomad index seen minus the sink's cursor index.", |out| {
            for (sink, stats) in &self.sinks {
                let behind = stats.cursor.load(Ordering::Relaxed) <= head;
                let lag = match last_index {
                    Some(last) if behind => last.saturating_sub(stats.cursor_index.load(Ordering::Relaxed)),
                    _ => 0,
                };
                sample(out, name, &[("sink", sink)], lag);
            }
        });
        let name = "nomad_relay_sink_backlog_records";
        metric(out, name, "gauge", "Journal records the sink has not passed yet.", |out| {
            for (sink, stats) in &self.sinks {
                let next = stats.cursor.load(Ordering::Relaxed);
                sample(out, name, &[("sink", sink)], (head + 1).saturating_sub(next.max(1)));
            }
        });
    }

    /// The journal: head, size, failed writes, back-pressure, records held.
    fn render_journal(&self, out: &mut String, head: u64) {
        let name = "nomad_relay_journal_head_record";
        metric(out, name, "gauge", "Position of the last record written to the journal.", |out| {
            sample(out, name, &[], head);
        });
        let (bytes, oldest) = journal_extent(&self.journal_dir);
        let name = "nomad_relay_journal_bytes";
        metric(out, name, "gauge", "Bytes of journal segments on disk.", |out| {
            sample(out, name, &[], bytes);
        });
        let name = "nomad_relay_journal_write_errors_total";
        metric(
            out,
            name,
            "counter",
            "Journal writes that failed (a full disk, an I/O error) and were retried.",
            |out| {
                sample(out, name, &[], self.journal.write_errors.load(Ordering::Relaxed));
            },
        );
        let name = "nomad_relay_journal_blocked";
        metric(
            out,
            name,
            "gauge",
            "1 while the journal takes no events: full of undelivered ones, or writes failing.",
            |out| {
                sample(out, name, &[], u64::from(self.journal.blocked.load(Ordering::Relaxed)));
            },
        );
        let name = "nomad_relay_journal_entries";
        metric(out, name, "gauge", "Records the journal holds (after retention).", |out| {
            sample(out, name, &[], oldest.map_or(0, |oldest| (head + 1).saturating_sub(oldest)));
        });
    }

    /// The endpoint itself: connections open and refused.
    fn render_http(&self, out: &mut String) {
        let name = "nomad_relay_http_open_connections";
        metric(out, name, "gauge", "Connections to this endpoint being served.", |out| {
            sample(out, name, &[], self.http.open_connections.load(Ordering::Relaxed));
        });
        let name = "nomad_relay_http_refused_connections_total";
        metric(
            out,
            name,
            "counter",
            "Connections to this endpoint closed unanswered because `[http] max_connections` were open.",
            |out| {
                sample(out, name, &[], self.http.refused_connections.load(Ordering::Relaxed));
            },
        );
    }
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, samples: impl FnOnce(&mut String)) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    samples(out);
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: u64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (position, (label, text)) in labels.iter().enumerate() {
            if position > 0 {
                out.push(',');
            }
            let escaped = text.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            let _ = write!(out, "{label}=\"{escaped}\"");
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Bytes of the journal's segments and the first record of the oldest one (segment files are
/// named after their first record).
fn journal_extent(dir: &std::path::Path) -> (u64, Option<u64>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return (0, None) };
    let (mut bytes, mut oldest) = (0, None::<u64>);
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(first) = name.to_str().and_then(|n| n.strip_suffix(".seg")).and_then(|n| n.parse().ok())
        else {
            continue;
        };
        bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
        oldest = Some(oldest.map_or(first, |o: u64| o.min(first)));
    }
    (bytes, oldest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_sink_and_source_with_lag() {
        let source = Arc::new(SourceStats::default());
        source.last_index.store(120, Ordering::Relaxed);
        source.connected.store(true, Ordering::Relaxed);
        let sink = Arc::new(SinkStats::default());
        sink.cursor.store(5, Ordering::Relaxed);
        sink.cursor_index.store(100, Ordering::Relaxed);
        sink.delivered.store(4, Ordering::Relaxed);
        let (_tx, head) = watch::channel(9u64);
        let telemetry = Telemetry {
            sources: vec![("default".into(), source)],
            sinks: vec![("out \"1\"".into(), sink.clone())],
            journal_dir: PathBuf::from("/nonexistent"),
            journal: Arc::default(),
            head,
            stopping: Arc::default(),
            http: Arc::default(),
            ha: None,
        };
        let text = telemetry.render();
        assert!(text.contains("nomad_relay_sink_lag_index{sink=\"out \\\"1\\\"\"} 20"), "{text}");
        assert!(text.contains("nomad_relay_sink_backlog_records{sink=\"out \\\"1\\\"\"} 5"), "{text}");
        assert!(text.contains("nomad_relay_sink_delivered_events_total{sink=\"out \\\"1\\\"\"} 4"));
        sink.failed(nomad_relay_sink_api::SinkErrorKind::Config, "bad".into());
        let text = telemetry.render();
        assert!(
            text.contains("nomad_relay_sink_failures_total{sink=\"out \\\"1\\\"\",kind=\"config\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("nomad_relay_sink_failures_total{sink=\"out \\\"1\\\"\",kind=\"unavailable\"} 0"),
            "{text}"
        );
        assert!(text.contains("nomad_relay_source_connected{source=\"default\"} 1"));
        assert!(text.contains("# TYPE nomad_relay_sink_retried_events_total counter"));
        assert!(text.contains("nomad_relay_journal_entries 0"));
        let problems = telemetry.not_ready();
        assert_eq!(problems.len(), 1, "the sink is not healthy yet: {problems:?}");
        assert_eq!(problems[0].kind, "sink");
        telemetry.stopping.store(true, Ordering::Relaxed);
        assert_eq!(telemetry.not_ready().len(), 2, "not ready while shutting down");
    }
}

//! Catching up on a namespace the stream did not include: the plan, its rules across
//! reconnects and restarts, and the file that keeps it.
//!
//! With `namespace = "*"`, Nomad expands `*` to the namespaces that exist when a subscription
//! starts and freezes that list (`Event.validateACL`, spec §2), so a namespace created later
//! is invisible to an open stream. When the namespace watcher reports one that this
//! connection has not delivered any event of, its events since its `CreateIndex` may already
//! lie below the source's checkpoint `N`. Resubscribing at `N` would skip them, so the source
//! resubscribes at the lowest such `CreateIndex` (`from`) and, below `N`, takes only the new
//! namespaces' events: what the others had there is journaled already.
//!
//! Those late events are journaled with ids at Index `N` (`until`), in the order Nomad sends
//! them, with occurrence numbers counted from the start of the catch-up; their payloads keep
//! their own `Index`. So the journal's index order and the checkpoint contract hold, and a
//! catch-up that is repeated (after a reconnect or a crash) numbers the same events the same
//! way and finds the ones already journaled in the checkpoint's ids at `N`. The plan is saved
//! before the resubscription and kept until a start finds the checkpoint past `until`.

use crate::state_file::{self, StateFile, StateFileError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// A catch-up in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatchUp {
    /// The namespaces whose events below `until` are fetched again.
    pub namespaces: BTreeSet<String>,
    /// Where the catch-up subscription starts: their lowest `CreateIndex`.
    pub from: u64,
    /// The source's checkpoint when it began; the late events get ids at this Index.
    pub until: u64,
}

impl CatchUp {
    /// The catch-up needed at checkpoint `checkpoint` for `added` namespaces (name and
    /// `CreateIndex`) that this connection has not delivered, merged into `current` while that
    /// one has not passed its `until`. `None` when none was created at or below the checkpoint
    /// (a resubscription at the checkpoint covers them) and nothing is running.
    pub fn plan(current: Option<&CatchUp>, added: &[(String, u64)], checkpoint: u64) -> Option<CatchUp> {
        let below: Vec<&(String, u64)> = added.iter().filter(|(_, created)| *created <= checkpoint).collect();
        let mut plan = match current {
            Some(current) if current.until == checkpoint => current.clone(),
            _ if below.is_empty() => return None,
            _ => CatchUp { namespaces: BTreeSet::new(), from: checkpoint, until: checkpoint },
        };
        for (name, created) in below {
            plan.namespaces.insert(name.clone());
            plan.from = plan.from.min(*created);
        }
        Some(plan)
    }

    /// What is left of a saved catch-up when the journal's checkpoint is `checkpoint`: all of
    /// it if the checkpoint is still at `until`; none once past it (finished); with `until`
    /// lowered when the checkpoint is below it (the late events were not yet durable).
    pub fn after_restart(self, checkpoint: u64) -> Option<CatchUp> {
        if checkpoint > self.until || self.from > checkpoint {
            return None;
        }
        Some(CatchUp { until: checkpoint, ..self })
    }
}

#[derive(Serialize, Deserialize)]
struct CatchUpFile {
    version: u32,
    catch_up: CatchUp,
}

impl StateFile for CatchUpFile {
    const VERSION: u32 = 1;
    const WHAT: &'static str = "namespace catch-up file";
    const IF_DAMAGED: &'static str = "; remove it to start without the catch-up (events of a namespace created below the checkpoint may then be missed)";
}

/// Where the catch-up of the source with id scope `scope` is kept: `<data_dir>/sources/<scope>.catch-up.json`.
pub fn path(data_dir: &Path, scope: &str) -> PathBuf {
    data_dir.join("sources").join(format!("{scope}.catch-up.json"))
}

/// Reads the saved catch-up, if any (blocking).
pub fn load(path: &Path) -> Result<Option<CatchUp>, StateFileError> {
    Ok(state_file::load::<CatchUpFile>(path)?.map(|file| file.catch_up))
}

/// Saves `catch_up`, or removes the file when there is none (blocking).
pub fn save(path: &Path, catch_up: Option<&CatchUp>) -> Result<(), StateFileError> {
    match catch_up {
        Some(catch_up) => {
            state_file::save(path, &CatchUpFile { version: CatchUpFile::VERSION, catch_up: catch_up.clone() })
        }
        None => match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StateFileError::Io { path: path.to_owned(), source: e })
            }
            _ => Ok(()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn added(list: &[(&str, u64)]) -> Vec<(String, u64)> {
        list.iter().map(|(n, c)| (n.to_string(), *c)).collect()
    }

    #[test]
    fn plans_from_the_lowest_create_index_at_or_below_the_checkpoint() {
        assert_eq!(
            CatchUp::plan(None, &added(&[("late", 9)]), 8),
            None,
            "created above: a resubscription covers it"
        );
        let plan = CatchUp::plan(None, &added(&[("a", 5), ("b", 7), ("c", 9)]), 8).expect("plan");
        assert_eq!(plan, CatchUp { namespaces: ["a", "b"].map(String::from).into(), from: 5, until: 8 });
        let merged = CatchUp::plan(Some(&plan), &added(&[("d", 3)]), 8).expect("merged");
        assert_eq!((merged.from, merged.until, merged.namespaces.len()), (3, 8, 3), "a running one grows");
        let next = CatchUp::plan(Some(&plan), &added(&[("e", 10)]), 12).expect("new");
        assert_eq!(
            next,
            CatchUp { namespaces: ["e".to_owned()].into(), from: 10, until: 12 },
            "a finished one is replaced"
        );
        assert_eq!(
            CatchUp::plan(Some(&plan), &added(&[("f", 9)]), 8),
            Some(plan.clone()),
            "nothing new below: it goes on"
        );
    }

    #[test]
    fn after_a_restart_it_resumes_shrinks_or_ends() {
        let plan = CatchUp { namespaces: ["a".to_owned()].into(), from: 5, until: 8 };
        assert_eq!(plan.clone().after_restart(8), Some(plan.clone()));
        assert_eq!(plan.clone().after_restart(6).map(|p| p.until), Some(6));
        assert_eq!(plan.clone().after_restart(9), None, "past until: finished");
        assert_eq!(plan.after_restart(4), None, "below the namespace: the stream covers it");
    }

    #[test]
    fn saved_and_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = path(dir.path(), "default");
        assert_eq!(load(&path).expect("load"), None);
        let plan = CatchUp { namespaces: ["a".to_owned()].into(), from: 5, until: 8 };
        save(&path, Some(&plan)).expect("save");
        assert_eq!(load(&path).expect("load"), Some(plan));
        save(&path, None).expect("remove");
        save(&path, None).expect("remove twice");
        assert_eq!(load(&path).expect("load"), None);
    }
}

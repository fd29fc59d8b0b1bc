//! The names each Nomad source has had in the journal, so a renamed source keeps its place.
//!
//! A source is known by its id scope (`[[nomad]] id_scope`, `default` unless set): it goes
//! into every event id, and it stays when an operator renames the table (`[nomad]` becoming
//! `[[nomad]] name = "east"`). Journal records, though, carry the source's name. So the
//! journal keeps, per id scope, every name its records were written under
//! (`journal/names.json`), and recovery folds the records of all of them into the source's
//! checkpoint: the renamed source resumes where the old name stopped, with the same ids,
//! instead of starting over and journaling Nomad's buffer again.

use super::JournalError;
use crate::state_file::{self, StateFile};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One configured source as the journal knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceName {
    /// The `[[nomad]]` table's name, written in its records.
    pub name: String,
    /// Its id scope.
    pub scope: String,
}

/// `names.json`: per id scope, every name records were written under.
#[derive(Serialize, Deserialize, Default)]
struct NamesFile {
    version: u32,
    scopes: BTreeMap<String, BTreeSet<String>>,
}

impl StateFile for NamesFile {
    const VERSION: u32 = 1;
    const WHAT: &'static str = "source names file";
    const IF_DAMAGED: &'static str = "; remove it to forget the names sources had before a rename";
}

fn path(dir: &Path) -> PathBuf {
    dir.join("names.json")
}

/// Every name whose records belong to each of `sources`, its own first: the names its id scope
/// had before, less any name another configured source uses now (blocking).
pub fn aliases(dir: &Path, sources: &[SourceName]) -> Result<Vec<Vec<String>>, JournalError> {
    let known = state_file::load::<NamesFile>(&path(dir))?.unwrap_or_default();
    let claimed: BTreeSet<&str> = sources.iter().map(|s| s.name.as_str()).collect();
    Ok(sources
        .iter()
        .map(|source| {
            let before = known.scopes.get(&source.scope).into_iter().flatten();
            let others = before.filter(|name| !claimed.contains(name.as_str())).cloned();
            std::iter::once(source.name.clone()).chain(others).collect()
        })
        .collect())
}

/// Adds the current names of `sources` to the file, if any is new (blocking).
pub fn remember(dir: &Path, sources: &[SourceName]) -> Result<(), JournalError> {
    let mut known = state_file::load::<NamesFile>(&path(dir))?.unwrap_or_default();
    let mut changed = false;
    for source in sources {
        changed |= known.scopes.entry(source.scope.clone()).or_default().insert(source.name.clone());
    }
    if changed {
        known.version = NamesFile::VERSION;
        state_file::save(&path(dir), &known)?;
    }
    Ok(())
}

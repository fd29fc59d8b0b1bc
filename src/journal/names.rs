//! The names each Nomad source has had in the journal, so a renamed source keeps its place.
//!
//! A source is known by its id scope: it goes into every event id, and it stays when an
//! operator renames the table (`[nomad]` becoming `[[nomad]] name = "east"`). Journal records,
//! though, carry the source's name. So the journal keeps, per id scope, every name its records
//! were written under (`journal/names.json`), and recovery folds the records of all of them
//! into the source's checkpoint: the renamed source resumes where the old name stopped, with
//! the same ids, instead of starting over and journaling Nomad's buffer again.
//!
//! A source without `id_scope` gets one by [`resolve`]: the scope its name had; with a single
//! source, the one scope the journal knows; in a journal from a relay that had no scopes, the
//! name its records were written under (the name was the scope then); otherwise `default` for
//! a single source, its name for several.

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

/// A configured source: its name and `id_scope`, if set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configured {
    /// The `[[nomad]]` table's name.
    pub name: String,
    /// Its `id_scope`, if set.
    pub id_scope: Option<String>,
}

/// The id scope of a single source when nothing else decides.
const DEFAULT_SCOPE: &str = "default";

/// Settles the id scope of each of `sources` (blocking; see the module documentation).
pub fn resolve(dir: &Path, sources: &[Configured]) -> Result<Vec<SourceName>, JournalError> {
    let known = state_file::load::<NamesFile>(&path(dir))?;
    let single = sources.len() == 1;
    // Without names.json: the names an older relay's records carry (the newest segment's,
    // and those of the saved checkpoints), each its own scope.
    // Only a single source without id_scope can take another name's scope from them (several
    // fall back to their own names anyway), so only then is the journal read for its names.
    let legacy: BTreeSet<String> = match &known {
        None if single && sources[0].id_scope.is_none() => legacy_names(dir)?,
        _ => BTreeSet::new(),
    };
    let scopes = known.map(|known| known.scopes).unwrap_or_default();
    Ok(sources
        .iter()
        .map(|source| {
            let by_name =
                || scopes.iter().find(|(_, names)| names.contains(&source.name)).map(|(s, _)| s.clone());
            let only_scope =
                || (single && scopes.len() == 1).then(|| scopes.keys().next().cloned()).flatten();
            let legacy_scope = || {
                if legacy.contains(&source.name) {
                    Some(source.name.clone())
                } else {
                    (single && legacy.len() == 1).then(|| legacy.iter().next().cloned()).flatten()
                }
            };
            let scope = source
                .id_scope
                .clone()
                .or_else(by_name)
                .or_else(only_scope)
                .or_else(legacy_scope)
                .unwrap_or_else(|| if single { DEFAULT_SCOPE.to_owned() } else { source.name.clone() });
            SourceName { name: source.name.clone(), scope }
        })
        .collect())
}

/// The file, or without it what the journal says: every name in it is its own scope.
fn load_or_legacy(dir: &Path) -> Result<NamesFile, JournalError> {
    Ok(match state_file::load::<NamesFile>(&path(dir))? {
        Some(known) => known,
        None => NamesFile {
            version: NamesFile::VERSION,
            scopes: legacy_names(dir)?
                .into_iter()
                .map(|name| (name.clone(), BTreeSet::from([name])))
                .collect(),
        },
    })
}

/// The source names in the newest segment that holds records, and in the saved checkpoints.
fn legacy_names(dir: &Path) -> Result<BTreeSet<String>, JournalError> {
    let mut names: BTreeSet<String> = BTreeSet::new();
    for segment in super::list_segments(dir)?.iter().rev() {
        names.extend(super::scan_segment(segment)?.sources.into_keys());
        if !names.is_empty() {
            break;
        }
    }
    if let Some(saved) = super::checkpoint::load(dir)? {
        names.extend(saved.checkpoints.into_keys());
    }
    Ok(names)
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
    // Without the file, and every scope its own name, each source has only its own name (and
    // the journal need not be read for the names in it).
    if !path(dir).exists() && sources.iter().all(|source| source.name == source.scope) {
        return Ok(sources.iter().map(|source| vec![source.name.clone()]).collect());
    }
    let known = load_or_legacy(dir)?;
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

/// Adds the current names of `sources` to the file, if any is new (blocking). While every
/// source's scope is its own name the records say as much, and no file is written.
pub fn remember(dir: &Path, sources: &[SourceName]) -> Result<(), JournalError> {
    if !path(dir).exists() && sources.iter().all(|source| source.name == source.scope) {
        return Ok(());
    }
    let mut known = load_or_legacy(dir)?;
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

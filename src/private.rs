//! Files and directories only the relay's own user may read: everything under `data_dir`
//! (journal segments, cursors, checkpoints, the lock) is created with mode 0600, and every
//! directory there with 0700, whatever the process umask (the mode is set again after
//! creation, since a umask can only take bits away). Events carry job specifications,
//! variables' metadata and node details; other local users have no business reading them.

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of the files the relay creates under `data_dir`.
pub const FILE_MODE: u32 = 0o600;
/// Mode of the directories it creates there.
pub const DIR_MODE: u32 = 0o700;

/// Creates (or truncates) the file at `path` for writing, with mode `mode` exactly.
pub fn create_file(path: &Path, mode: u32) -> io::Result<File> {
    let file = OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(path)?;
    file.set_permissions(Permissions::from_mode(mode))?;
    Ok(file)
}

/// Opens the file at `path` for appending, creating it with mode `mode` exactly when it is
/// missing; an existing file keeps the mode it has (an operator may have chosen it).
pub fn open_append(path: &Path, mode: u32) -> io::Result<File> {
    match OpenOptions::new().append(true).create_new(true).mode(mode).open(path) {
        Ok(file) => {
            file.set_permissions(Permissions::from_mode(mode))?;
            Ok(file)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => OpenOptions::new().append(true).open(path),
        Err(e) => Err(e),
    }
}

/// Creates the directory `path` (its parent must exist) with mode 0700 exactly.
pub fn create_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new().mode(DIR_MODE).create(path)?;
    fs::set_permissions(path, Permissions::from_mode(DIR_MODE))
}

/// Makes an existing directory owner-only (a `data_dir` made by an older relay, or by hand).
pub fn restrict_dir(path: &Path) -> io::Result<()> {
    fs::set_permissions(path, Permissions::from_mode(DIR_MODE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn owner_only_whatever_was_there() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("sub");
        create_dir(&sub).expect("dir");
        assert_eq!(mode(&sub), 0o700);
        let file = sub.join("f");
        create_file(&file, FILE_MODE).expect("file");
        assert_eq!(mode(&file), 0o600);
        let out = sub.join("out");
        open_append(&out, 0o640).expect("new");
        assert_eq!(mode(&out), 0o640);
        fs::set_permissions(&out, Permissions::from_mode(0o644)).expect("chmod");
        open_append(&out, 0o600).expect("existing");
        assert_eq!(mode(&out), 0o644, "an existing file keeps its mode");
    }
}

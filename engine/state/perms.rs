//! Who may touch the state files: the directory must be private (no group/other write) or a
//! team directory (setgid and group-writable, never other-writable); the database and its
//! `-wal`/`-shm` companions are created 0600 (0660 in a team directory) before `SQLite` opens
//! them, and tightened when an older build left them wider.

use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::StateError;

/// The permission bits a directory's files get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// Only the owner: files 0600.
    Private,
    /// The directory's group (setgid, mode 2770): files 0660, so that the team's accounts can
    /// approve each other's runs from their own accounts.
    Team,
}

impl Sharing {
    /// The mode of the database files.
    pub fn file_mode(self) -> u32 {
        match self {
            Sharing::Private => 0o600,
            Sharing::Team => 0o660,
        }
    }
}

/// Check the state directory's permissions and create or tighten the database files.
///
/// # Errors
/// [`StateError::Insecure`] for a directory others may write to; [`StateError::CreateDir`] when
/// its metadata or the database file cannot be read or created.
pub fn secure(dir: &Path, db: &Path) -> Result<Sharing, StateError> {
    let io = |source| StateError::CreateDir {
        path: dir.to_owned(),
        source,
    };
    let meta = std::fs::metadata(dir).map_err(io)?;
    let mode = meta.mode();
    if mode & 0o002 != 0 {
        return Err(StateError::Insecure {
            path: dir.to_owned(),
            problem: format!(
                "it is writable by every account (mode {:04o}); anyone could rewrite runs, approvals and the audit log\n  help: `chmod 700 {}` (or, for a team directory, `chmod 2770` with its group set to the team)",
                mode & 0o7777,
                dir.display()
            ),
        });
    }
    let sharing = if mode & 0o020 == 0 {
        Sharing::Private
    } else if mode & 0o2000 != 0 {
        Sharing::Team
    } else {
        return Err(StateError::Insecure {
            path: dir.to_owned(),
            problem: format!(
                "it is writable by its group (mode {:04o}) without being marked as a team directory\n  help: `chmod 700 {d}` for a private store, or `chmod 2770 {d}` to share it with the group's accounts on purpose",
                mode & 0o7777,
                d = dir.display()
            ),
        });
    };
    let want = sharing.file_mode();
    // Created with the mode up front (not chmod afterwards): no moment where it is wider.
    // SQLite gives `-wal` and `-shm` the database file's mode.
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(want)
        .open(db)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(StateError::CreateDir {
                path: db.to_owned(),
                source: e,
            });
        }
    }
    let me = crate::identity::os_account().uid;
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        let file = Path::new(&name);
        let Ok(m) = std::fs::symlink_metadata(file) else {
            continue;
        };
        let extra = m.mode() & 0o777 & !want;
        // The umask may have narrowed a team file: its group must be able to write.
        let narrowed = sharing == Sharing::Team && suffix.is_empty() && m.mode() & 0o060 != 0o060;
        if extra == 0 && !(narrowed && m.uid() == me) {
            continue;
        }
        if m.uid() == me {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(want)).map_err(
                |source| StateError::CreateDir {
                    path: file.to_owned(),
                    source,
                },
            )?;
        } else if extra & 0o022 != 0 {
            return Err(StateError::Insecure {
                path: file.to_owned(),
                problem: format!(
                    "it is writable by accounts other than its owner's (mode {:04o}) and belongs to another account\n  help: its owner can run `chmod {want:o} {}`",
                    m.mode() & 0o7777,
                    file.display()
                ),
            });
        }
    }
    Ok(sharing)
}

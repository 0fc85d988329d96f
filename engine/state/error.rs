//! [`StateError`]: everything that can go wrong reading or writing durable state.
//!
//! Messages are lowercase "failed to …" sentences that name the file, run or lock involved, so
//! that the CLI can print them as-is; the underlying `SQLite` / I/O error hangs off `source()`.

use std::path::PathBuf;

use super::LockHolder;

/// A failure of the durable state layer (journal, approvals, locks, logs, audit log).
///
/// Every variant maps to exit code [`crate::exit::STATE`] except where noted; a tampered audit log
/// is *not* an error (it is reported by [`super::VerifyReport`]) because verification succeeded
/// in finding out.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The state directory did not exist and could not be created (permissions, read-only
    /// filesystem, a file in the way).
    #[error("failed to create the state directory {}", path.display())]
    CreateDir {
        /// The directory we tried to create.
        path: PathBuf,
        /// Why the filesystem refused.
        #[source]
        source: std::io::Error,
    },

    /// `SQLite` could not open or configure the database file for a reason other than corruption
    /// (permissions, a locked file past the busy timeout, an unwritable directory).
    #[error("failed to open the state database at {}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// The `SQLite` error.
        #[source]
        source: rusqlite::Error,
    },

    /// The database file exists but is not a valid `SQLite` database, or fails its integrity
    /// check. It is never modified or replaced: the operator decides what to do with it.
    #[error(
        "failed to open the state database at {}: {reason}; it was left untouched — move it \
         aside to start fresh",
        path.display()
    )]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// A short description ("file is not a database", the first `quick_check` finding).
        reason: String,
        /// The `SQLite` error (a `SQLITE_NOTADB` / `SQLITE_CORRUPT` failure).
        #[source]
        source: rusqlite::Error,
    },

    /// The database was written by a newer `runbook` whose schema this build does not know;
    /// refusing avoids misreading or damaging it.
    #[error(
        "failed to open the state database at {}: its schema version is {found} but this \
         runbook only knows up to {supported}; upgrade runbook",
        path.display()
    )]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// `PRAGMA user_version` found in the file.
        found: i64,
        /// The newest schema version this build understands.
        supported: i64,
    },

    /// A query or transaction failed after the database was opened (disk full, I/O error, busy
    /// past the timeout).
    #[error("failed to {action}")]
    Sqlite {
        /// What we were doing, phrased to follow "failed to".
        action: String,
        /// The `SQLite` error.
        #[source]
        source: rusqlite::Error,
    },

    /// A value could not be serialized to JSON for storage.
    #[error("failed to serialize {what} as JSON")]
    Serialize {
        /// What was being serialized.
        what: &'static str,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },

    /// A stored value could not be read back (invalid JSON, an unknown status, a negative
    /// attempt number): the database was edited by hand or by a buggy build.
    #[error("failed to decode {what} from the state database: {detail}")]
    Decode {
        /// What was being decoded.
        what: String,
        /// What was wrong with it.
        detail: String,
    },

    /// A run status string is not one of the known statuses.
    #[error(
        "failed to parse run status {value:?}: expected one of running, succeeded, failed, \
         rolled_back, rollback_incomplete, aborted, cancelled"
    )]
    UnknownStatus {
        /// The string that was given.
        value: String,
    },

    /// A write referred to a run id that is not in the journal.
    #[error("failed to find run {run_id} in the state database")]
    RunNotFound {
        /// The run id that was given.
        run_id: String,
    },

    /// A run with this id already exists; ids must be unique (generate a new one and retry).
    #[error("failed to create run {run_id}: a run with this id already exists")]
    RunExists {
        /// The duplicate id.
        run_id: String,
    },

    /// A run id prefix matches more than one run; the user must type more of it.
    #[error("failed to resolve run id prefix {prefix:?}: it matches {}", matches.join(", "))]
    AmbiguousRun {
        /// The prefix that was given.
        prefix: String,
        /// Some of the ids it matches (at most a handful).
        matches: Vec<String>,
    },

    /// The lock is held by another run; it is released when that run ends, or by
    /// `runbook unlock` (which is audited) if that run died.
    #[error(
        "failed to acquire lock {name:?}: held by run {} ({}@{}, pid {}) since {}",
        holder.run_id, holder.user, holder.host, holder.pid, super::format_utc(*since_ms)
    )]
    LockHeld {
        /// The lock name.
        name: String,
        /// Who holds it (boxed to keep `Result<_, StateError>` small).
        holder: Box<LockHolder>,
        /// When they acquired it (milliseconds since the Unix epoch).
        since_ms: i64,
    },

    /// A run tried to release a lock that another run holds (its lock was broken and taken
    /// over); the lock was left alone.
    #[error(
        "failed to release lock {name:?} for run {run_id}: it is now held by run {} ({}@{}, pid {})",
        holder.run_id, holder.user, holder.host, holder.pid
    )]
    LockNotOwned {
        /// The lock name.
        name: String,
        /// The run that asked to release it.
        run_id: String,
        /// Who holds it instead (boxed to keep `Result<_, StateError>` small).
        holder: Box<LockHolder>,
    },

    /// The state directory or its database is writable by people other than its owner (or its
    /// team, for a group-shared directory): anyone could rewrite runs, approvals and the audit
    /// log, so it is refused rather than used.
    #[error("refusing the state directory {}: {problem}", path.display())]
    Insecure {
        /// The directory or file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        problem: String,
    },

    /// Another process broke or took the lock between the moment this one found its holder
    /// dead and the takeover (compare-and-swap on the holder failed); nothing was changed.
    #[error(
        "failed to take over lock {name:?} from run {} (pid {}): {}",
        dead.run_id,
        dead.pid,
        match current {
            Some(h) => format!(
                "run {} ({}@{}, pid {}) took it over first",
                h.run_id, h.user, h.host, h.pid
            ),
            None => "someone else broke it first and it is free now; retry".to_owned(),
        }
    )]
    LockTakenOver {
        /// The lock name.
        name: String,
        /// The holder this process found dead.
        dead: Box<LockHolder>,
        /// Who holds it now, if anyone.
        current: Option<Box<LockHolder>>,
        /// Since when the current holder holds it (milliseconds since the Unix epoch).
        since_ms: Option<i64>,
    },

    /// A resume read the run's journal, then found it changed once it held the lock: another
    /// process resumed (or ran) it in between. Continuing would act on a stale view.
    #[error(
        "failed to resume run {run_id}: its journal changed while this resume waited for the lock \
         ({seen} events read, {now} now): another process resumed it; see `runbook show {run_id}`"
    )]
    RunChanged {
        /// The run.
        run_id: String,
        /// How many journal events the resume had read.
        seen: usize,
        /// How many there are now.
        now: usize,
    },

    /// The audit key is missing, unreadable, malformed, too widely readable, or kept inside the
    /// state directory.
    #[error("failed to use the audit key {}: {reason}", path.display())]
    AuditKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        reason: String,
    },
}

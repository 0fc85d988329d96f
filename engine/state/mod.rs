//! Durable state: the [`Store`] trait and its data types (runs, journal events, captured logs,
//! approvals, locks, the hash-chained and signed audit log), plus where the state lives
//! ([`StateDir`]).
//!
//! The engine writes a transition here *before* acting on it, so a crash at any point leaves a
//! journal it can resume from, and every consequential action leaves a tamper-evident audit
//! entry. [`SqliteStore`] is the only backend today; the trait keeps the engine independent of it
//! so a shared `PostgreSQL` backend can be added for teams.

mod audit;
mod error;
mod perms;
pub mod signing;
mod sqlite;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use audit::GENESIS_HASH;
pub use error::StateError;
pub use signing::{AuditPublicKey, AuditSigner, Checkpoint, SigningConfig};
pub use sqlite::SqliteStore;

/// Durable storage for runs, their journal, captured output, approvals, locks and the audit log.
///
/// Every write is committed (and fsynced) before the method returns: the engine acts only after
/// the transition is on disk. Implementations must be safe to share between threads and between
/// processes using the same state (a `runbook approve` in another terminal writes while a run
/// waits).
pub trait Store: Send + Sync {
    /// Start a new run in the journal with status [`RunStatus::Running`].
    ///
    /// # Errors
    /// [`StateError::RunExists`] if the id is taken, or a storage failure.
    fn create_run(&self, run: &NewRun) -> Result<RunRecord, StateError>;

    /// Append a journal event, and optionally an audit entry, in one durable transaction.
    /// Returns the event's seq (1, 2, … within the run).
    ///
    /// # Errors
    /// [`StateError::RunNotFound`] if the run does not exist, or a storage failure; nothing is
    /// written in either case.
    fn record(
        &self,
        run_id: &str,
        event: &EventInput,
        audit: Option<&AuditInput>,
    ) -> Result<i64, StateError>;

    /// Mark a run finished with this (terminal) status and audit it, in one transaction.
    ///
    /// # Errors
    /// [`StateError::RunNotFound`] if the run does not exist, or a storage failure.
    fn finish_run(
        &self,
        run_id: &str,
        status: RunStatus,
        audit: &AuditInput,
    ) -> Result<(), StateError>;

    /// Change a run's status without auditing (e.g. back to `Running` on resume, which clears
    /// `finished_at_ms`; the caller audits the resume through [`Store::record`]).
    ///
    /// # Errors
    /// [`StateError::RunNotFound`] if the run does not exist, or a storage failure.
    fn set_status(&self, run_id: &str, status: RunStatus) -> Result<(), StateError>;

    /// A run by full id or by a unique prefix of it (users type the first few characters).
    ///
    /// # Errors
    /// [`StateError::AmbiguousRun`] if the prefix matches several runs, or a storage failure.
    fn run(&self, run_id: &str) -> Result<Option<RunRecord>, StateError>;

    /// The most recent runs, newest first.
    ///
    /// # Errors
    /// A storage or decoding failure.
    fn runs(&self, limit: usize) -> Result<Vec<RunRecord>, StateError>;

    /// A run's journal, in seq order (full run id).
    ///
    /// # Errors
    /// A storage or decoding failure.
    fn events(&self, run_id: &str) -> Result<Vec<EventRecord>, StateError>;

    /// Append captured output of a step attempt. The text must already be masked by the caller;
    /// batch output into chunks, since each call is a durable commit.
    ///
    /// # Errors
    /// [`StateError::RunNotFound`] if the run does not exist, or a storage failure.
    fn append_log(
        &self,
        run_id: &str,
        step: &str,
        attempt: u32,
        stream: &str,
        text: &str,
    ) -> Result<(), StateError>;

    /// Captured output of a run (or of one of its steps), in the order it was appended.
    ///
    /// # Errors
    /// A storage or decoding failure.
    fn logs(&self, run_id: &str, step: Option<&str>) -> Result<Vec<LogRecord>, StateError>;

    /// Record an approval or denial (typically from `runbook approve/deny` in another process)
    /// together with its audit entry.
    ///
    /// # Errors
    /// [`StateError::RunNotFound`] if the run does not exist, or a storage failure.
    fn add_approval(&self, a: &ApprovalInput, audit: &AuditInput) -> Result<(), StateError>;

    /// Decisions recorded for a step of a run, oldest first.
    ///
    /// # Errors
    /// A storage or decoding failure.
    fn approvals(&self, run_id: &str, step: &str) -> Result<Vec<ApprovalRecord>, StateError>;

    /// Take a named lock for a run. Locks do not expire: a dead holder's lock must be broken
    /// with [`Store::break_lock`]. The grant's fencing token is larger than any token previously
    /// granted for this name, so a stale holder can be told apart downstream.
    ///
    /// # Errors
    /// [`StateError::LockHeld`] naming the holder if anyone (including the same run) holds it,
    /// or a storage failure.
    fn acquire_lock(&self, name: &str, holder: &LockHolder) -> Result<LockGrant, StateError>;

    /// Release a lock held by this run. Releasing a lock nobody holds is not an error (the
    /// lock may have been broken).
    ///
    /// # Errors
    /// [`StateError::LockNotOwned`] if another run holds it now, or a storage failure.
    fn release_lock(&self, name: &str, run_id: &str) -> Result<(), StateError>;

    /// Forcibly release a lock, whoever holds it now, and audit it in the same transaction.
    /// Returns who held it. Not for taking over a dead holder's lock: two processes that found
    /// it dead would both break it (the second breaking the first's fresh lock); use
    /// [`Store::take_over_lock`] for that. The audit entry's `detail` gains a `previous_holder` key when it is an
    /// object or null, so the trail says whose lock was broken.
    ///
    /// # Errors
    /// A storage failure.
    fn break_lock(&self, name: &str, audit: &AuditInput) -> Result<Option<LockHolder>, StateError>;

    /// Break a lock only if `dead` still holds it (compare-and-swap on the holder found dead),
    /// and audit it in the same transaction, the entry's `detail` gaining `previous_holder`.
    /// Of several processes that found the same dead holder, exactly one succeeds.
    ///
    /// # Errors
    /// [`StateError::LockTakenOver`] naming the current holder (or saying the lock is free) if
    /// anyone else broke or took it since, or a storage failure; nothing is written then.
    fn break_lock_if_held_by(
        &self,
        name: &str,
        dead: &LockHolder,
        audit: &AuditInput,
    ) -> Result<(), StateError>;

    /// Take over a lock from the holder found dead: [`Store::break_lock_if_held_by`] then
    /// [`Store::acquire_lock`]. Backends override it to do both in one transaction; wrappers
    /// may keep this composition (it is just as exclusive: only one breaker gets past the
    /// first step, and the second refuses anyone who took the free lock in between).
    ///
    /// # Errors
    /// [`StateError::LockTakenOver`] or [`StateError::LockHeld`] naming who has it now, or a
    /// storage failure.
    fn take_over_lock(
        &self,
        name: &str,
        dead: &LockHolder,
        holder: &LockHolder,
        audit: &AuditInput,
    ) -> Result<LockGrant, StateError> {
        self.break_lock_if_held_by(name, dead, audit)?;
        self.acquire_lock(name, holder)
    }

    /// Append a standalone audit entry; returns its seq.
    ///
    /// # Errors
    /// A storage failure, or a damaged audit head.
    fn audit_append(&self, audit: &AuditInput) -> Result<i64, StateError>;

    /// Audit entries in seq order, optionally only one run's and/or only those at or after
    /// `since_ms`.
    ///
    /// # Errors
    /// A storage or decoding failure.
    fn audit_entries(
        &self,
        run_id: Option<&str>,
        since_ms: Option<i64>,
    ) -> Result<Vec<AuditEntry>, StateError>;

    /// Walk the whole audit chain and report the first entry that was modified, removed,
    /// reordered or truncated. Tampering is a report, not an error.
    ///
    /// # Errors
    /// A storage failure only.
    fn audit_verify(&self) -> Result<VerifyReport, StateError>;

    /// The database file, when the store is one another process can open (a step's supervisor
    /// journals there when the engine is gone).
    fn location(&self) -> Option<&Path> {
        None
    }

    /// Queue a journal event (and audit entry) to be committed with the next durable write of
    /// this store (group commit), or by [`Store::flush`]; in order with every other write. For
    /// records nothing acts on before the next durable write: a step's end (the next step's start
    /// is durable before its action), a command about to be followed by its supervisor's record.
    ///
    /// # Errors
    /// As [`Store::record`], for stores that cannot queue and write at once.
    fn record_deferred(
        &self,
        run_id: &str,
        event: &EventInput,
        audit: Option<&AuditInput>,
    ) -> Result<(), StateError> {
        self.record(run_id, event, audit).map(|_| ())
    }

    /// Queue captured output (already masked) to be committed with the next durable write, by
    /// [`Store::flush`], or once enough has queued up.
    ///
    /// # Errors
    /// As [`Store::append_log`].
    fn append_log_deferred(
        &self,
        run_id: &str,
        step: &str,
        attempt: u32,
        stream: &str,
        text: &str,
    ) -> Result<(), StateError> {
        self.append_log(run_id, step, attempt, stream, text)
    }

    /// Commit everything queued by the `*_deferred` methods, durably.
    ///
    /// # Errors
    /// A storage failure; the queued records are then lost and the caller must stop the run.
    fn flush(&self) -> Result<(), StateError> {
        Ok(())
    }
}

/// The outcome of a run, as stored (lowercase) and shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// In progress, or interrupted (crashed) and resumable.
    Running,
    /// Every step succeeded.
    Succeeded,
    /// A step failed and the run stopped.
    Failed,
    /// A step failed and the compensations of completed steps ran.
    RolledBack,
    /// A step failed, the compensations ran and at least one failed: steps were left un-undone.
    RollbackIncomplete,
    /// A guard failed or an approval was denied before the guarded step ran.
    Aborted,
    /// Cancelled by a signal or the whole-run timeout.
    Cancelled,
}

impl RunStatus {
    /// Every status, for help texts and validation.
    pub const ALL: [Self; 7] = [
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::RolledBack,
        Self::RollbackIncomplete,
        Self::Aborted,
        Self::Cancelled,
    ];

    /// The stored and displayed name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::RolledBack => "rolled_back",
            Self::RollbackIncomplete => "rollback_incomplete",
            Self::Aborted => "aborted",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether the run is over (anything but `Running`).
    #[must_use]
    pub fn is_terminal(self) -> bool {
        self != Self::Running
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunStatus {
    type Err = StateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| StateError::UnknownStatus {
                value: s.to_owned(),
            })
    }
}

/// What the engine knows when a run starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewRun {
    /// Unique, time-sortable id (see [`new_run_id`]).
    pub id: String,
    /// The runbook's name.
    pub runbook: String,
    /// The runbook file, as given on the command line (resume re-reads it).
    pub file: String,
    /// Hash of the runbook file, so resume can refuse a changed runbook.
    pub runbook_hash: String,
    /// Resolved params with secrets already removed by the caller.
    pub params: serde_json::Value,
    /// Who started it.
    pub user: String,
    /// Where it runs.
    pub host: String,
    /// The engine's process id.
    pub pid: u32,
    /// The run this one resumes or was started by, if any.
    pub parent_run: Option<String>,
}

/// A run as stored in the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Unique, time-sortable id.
    pub id: String,
    /// The runbook's name.
    pub runbook: String,
    /// The runbook file, as given on the command line.
    pub file: String,
    /// Hash of the runbook file when the run started.
    pub runbook_hash: String,
    /// Resolved params without secrets.
    pub params: serde_json::Value,
    /// Who started it.
    pub user: String,
    /// Where it runs.
    pub host: String,
    /// The engine's process id.
    pub pid: u32,
    /// The run this one resumes or was started by, if any.
    pub parent_run: Option<String>,
    /// Current status.
    pub status: RunStatus,
    /// When it started (milliseconds since the Unix epoch).
    pub started_at_ms: i64,
    /// When it reached a terminal status, if it has.
    pub finished_at_ms: Option<i64>,
}

/// A journal event to append (step started, attempt failed, step finished, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventInput {
    /// The step it concerns, if any (run-level events have none).
    pub step: Option<String>,
    /// What happened, e.g. `step.started`; the engine owns the vocabulary.
    pub kind: String,
    /// The attempt number, for retried steps.
    pub attempt: Option<u32>,
    /// Anything else (outputs, error text), already masked.
    pub data: serde_json::Value,
}

/// A journal event as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Position in the run's journal, from 1.
    pub seq: i64,
    /// When it was recorded (milliseconds since the Unix epoch).
    pub at_ms: i64,
    /// The step it concerns, if any.
    pub step: Option<String>,
    /// What happened.
    pub kind: String,
    /// The attempt number, if any.
    pub attempt: Option<u32>,
    /// Anything else.
    pub data: serde_json::Value,
}

/// A chunk of captured step output, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Global append order (increases across runs).
    pub seq: i64,
    /// When it was appended (milliseconds since the Unix epoch).
    pub at_ms: i64,
    /// The run.
    pub run_id: String,
    /// The step that produced it.
    pub step: String,
    /// Which attempt of the step.
    pub attempt: u32,
    /// `stdout`, `stderr`, or whatever the caller names its streams.
    pub stream: String,
    /// The masked text.
    pub text: String,
}

/// An approval decision to record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalInput {
    /// The run waiting for it.
    pub run_id: String,
    /// The gated step.
    pub step: String,
    /// Who decided.
    pub approver: String,
    /// `true` to approve, `false` to deny.
    pub decision: bool,
    /// How it was given: `tty`, `--yes`, `cli`, `drill`, …
    pub via: String,
    /// Optional justification.
    pub comment: Option<String>,
}

/// An approval decision as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRecord {
    /// The run.
    pub run_id: String,
    /// The gated step.
    pub step: String,
    /// Who decided.
    pub approver: String,
    /// `true` approved, `false` denied.
    pub decision: bool,
    /// How it was given.
    pub via: String,
    /// Optional justification.
    pub comment: Option<String>,
    /// When it was recorded (milliseconds since the Unix epoch).
    pub at_ms: i64,
}

/// Who holds (or wants) a lock; shown to whoever is refused it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    /// The holding run.
    pub run_id: String,
    /// Its user.
    pub user: String,
    /// Its host.
    pub host: String,
    /// Its process id (so an operator can check it is really dead before breaking the lock).
    pub pid: u32,
}

/// A granted lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockGrant {
    /// Fencing token: strictly greater than every token granted before for this lock name, so
    /// downstream systems can reject writes from a holder whose lock was broken.
    pub token: i64,
}

/// An audit entry to append.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditInput {
    /// Who acted.
    pub user: String,
    /// From where.
    pub host: String,
    /// The run involved, if any.
    pub run_id: Option<String>,
    /// The step involved, if any.
    pub step: Option<String>,
    /// What was done, e.g. `step.run`, `approval.grant`, `lock.break`.
    pub action: String,
    /// What it was done to (a host, a service, a lock), if anything.
    pub target: Option<String>,
    /// `ok`, `failed`, `denied`, …
    pub outcome: String,
    /// Anything else, already masked.
    pub detail: serde_json::Value,
}

/// An audit entry as stored, with its place in the hash chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the chain, from 1, without gaps.
    pub seq: i64,
    /// When it was appended (milliseconds since the Unix epoch).
    pub at_ms: i64,
    /// Who acted.
    pub user: String,
    /// From where.
    pub host: String,
    /// The run involved, if any.
    pub run_id: Option<String>,
    /// The step involved, if any.
    pub step: Option<String>,
    /// What was done.
    pub action: String,
    /// What it was done to, if anything.
    pub target: Option<String>,
    /// The outcome.
    pub outcome: String,
    /// Anything else.
    pub detail: serde_json::Value,
    /// Hex SHA-256 of the previous entry ([`GENESIS_HASH`] for the first).
    pub prev_hash: String,
    /// Hex SHA-256 over `prev_hash` and this entry's canonical form.
    pub hash: String,
}

/// The result of walking the audit chain (and checking the approvals bound to it).
///
/// Signatures are not checked here (that needs the public keys): see
/// [`signing::authenticate`], which uses `hashes` and `checkpoints`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// How many entries are stored.
    pub entries: u64,
    /// The first problem found, if any.
    pub first_bad: Option<BadEntry>,
    /// The last entry that verified: its seq and hash (`None` for an empty log).
    pub head: Option<(i64, String)>,
    /// The verified hash of every entry a stored checkpoint (or the caller) names.
    pub hashes: BTreeMap<i64, String>,
    /// The stored checkpoints, oldest first, as found (not yet authenticated).
    pub checkpoints: Vec<Checkpoint>,
    /// How many approval decisions were checked against their audit entries.
    pub approvals: u64,
    /// The first approval decision that its audit entry does not back, if any.
    pub bad_approval: Option<BadApproval>,
}

impl VerifyReport {
    /// Whether the chain is intact and every approval decision is bound to it.
    #[must_use]
    pub fn is_ok(&self) -> bool {
        self.first_bad.is_none() && self.bad_approval.is_none()
    }
}

/// An approval decision (a row the engine counts) that the audit chain does not back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadApproval {
    /// The row's id in the approvals table.
    pub id: i64,
    /// The run it claims to decide for.
    pub run_id: String,
    /// The step it claims to decide.
    pub step: String,
    /// What is wrong, in a sentence.
    pub reason: String,
}

/// Where and why the audit chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadEntry {
    /// The first bad entry; for a removed entry or a truncated tail, the first missing seq.
    pub seq: i64,
    /// What is wrong, in a sentence.
    pub reason: String,
}

/// Where durable state lives.
#[derive(Debug, Clone, Copy)]
pub struct StateDir;

impl StateDir {
    /// The name of the database file inside the state directory.
    pub const DB_FILE: &'static str = "runbook.db";

    /// The state directory: `--state-dir`, else `$RUNBOOK_STATE_DIR`, else
    /// `$XDG_STATE_HOME/runbook`, else `$HOME/.local/state/runbook` (else `.runbook-state` in the
    /// working directory, when not even `HOME` is set). Does not create it.
    #[must_use]
    pub fn resolve(cli: Option<PathBuf>) -> PathBuf {
        Self::resolve_with(cli, |name| std::env::var_os(name))
    }

    /// [`StateDir::resolve`] with an explicit environment, for tests and embedding. Empty
    /// variables count as unset; a relative `XDG_STATE_HOME` is ignored, as the XDG spec says.
    pub fn resolve_with(cli: Option<PathBuf>, env: impl Fn(&str) -> Option<OsString>) -> PathBuf {
        let var = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        if let Some(dir) = cli {
            return dir;
        }
        if let Some(dir) = var("RUNBOOK_STATE_DIR") {
            return dir;
        }
        if let Some(xdg) = var("XDG_STATE_HOME").filter(|p| p.is_absolute()) {
            return xdg.join("runbook");
        }
        if let Some(home) = var("HOME") {
            return home.join(".local").join("state").join("runbook");
        }
        PathBuf::from(".runbook-state")
    }

    /// Create the directory if missing: parents with default permissions, the directory itself
    /// with mode 0700 (it holds params, output and approvals). An existing directory is left as
    /// it is.
    ///
    /// # Errors
    /// [`StateError::CreateDir`] if it cannot be created or is not a directory.
    pub fn ensure(dir: &Path) -> Result<(), StateError> {
        let fail = |source| StateError::CreateDir {
            path: dir.to_owned(),
            source,
        };
        if dir.is_dir() {
            return Ok(());
        }
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(fail)?;
        }
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        match builder.create(dir) {
            Ok(()) => Ok(()),
            // Another process created it between our check and now.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
            Err(e) => Err(fail(e)),
        }
    }

    /// The database file inside a state directory.
    #[must_use]
    pub fn db_path(dir: &Path) -> PathBuf {
        dir.join(Self::DB_FILE)
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it), the unit of every stored
/// timestamp.
#[must_use]
pub fn now_ms() -> i64 {
    crate::clock::now_ms()
}

/// A new run id, `YYYYMMDD-HHMMSS-xxxxxx` (UTC): sorts by start time, readable, and short enough
/// to type a prefix of. The suffix mixes the clock's nanoseconds, the pid and a per-process
/// counter, so ids from one process never repeat and collisions between processes starting in
/// the same second are unlikely (1 in 16M); [`Store::create_run`] rejects a duplicate anyway.
#[must_use]
pub fn new_run_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let seed = u64::from(now.subsec_nanos())
        ^ (u64::from(std::process::id()) << 32)
        ^ count.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let suffix = splitmix64(seed) & 0x00FF_FFFF;
    let (date, time) = civil(secs);
    format!("{date}-{time}-{suffix:06x}")
}

/// A timestamp for messages: `2024-05-01 12:34:56 UTC`.
pub(crate) fn format_utc(ms: i64) -> String {
    let t = crate::clock::rfc3339(ms);
    format!("{} {} UTC", &t[0..10], &t[11..19])
}

/// `("YYYYMMDD", "HHMMSS")` for seconds since the epoch, in UTC.
fn civil(secs: i64) -> (String, String) {
    let t = crate::clock::rfc3339(secs.saturating_mul(1000));
    (
        format!("{}{}{}", &t[0..4], &t[5..7], &t[8..10]),
        format!("{}{}{}", &t[11..13], &t[14..16], &t[17..19]),
    )
}

/// A 64-bit mixer, so nearby seeds give unrelated suffixes.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(1_709_251_199_000), "2024-02-29 23:59:59 UTC");
    }

    #[test]
    fn run_ids_are_sortable_and_distinct() {
        let a = new_run_id();
        let b = new_run_id();
        assert_eq!(a.len(), "YYYYMMDD-HHMMSS-xxxxxx".len());
        assert_ne!(a, b);
        assert!(a[..15] <= b[..15]);
    }

    #[test]
    fn status_round_trips() {
        for s in RunStatus::ALL {
            assert_eq!(s.as_str().parse::<RunStatus>().ok(), Some(s));
            assert_eq!(
                serde_json::to_value(s).ok(),
                Some(serde_json::Value::from(s.as_str()))
            );
        }
        assert!("done".parse::<RunStatus>().is_err());
    }

    #[test]
    fn state_dir_precedence() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        let all = &[
            ("RUNBOOK_STATE_DIR", "/r"),
            ("XDG_STATE_HOME", "/x"),
            ("HOME", "/h"),
        ];
        assert_eq!(
            StateDir::resolve_with(Some("/cli".into()), env(all)),
            PathBuf::from("/cli")
        );
        assert_eq!(StateDir::resolve_with(None, env(all)), PathBuf::from("/r"));
        assert_eq!(
            StateDir::resolve_with(None, env(&[("XDG_STATE_HOME", "/x"), ("HOME", "/h")])),
            PathBuf::from("/x/runbook")
        );
        assert_eq!(
            StateDir::resolve_with(
                None,
                env(&[
                    ("RUNBOOK_STATE_DIR", ""),
                    ("XDG_STATE_HOME", "rel"),
                    ("HOME", "/h")
                ])
            ),
            PathBuf::from("/h/.local/state/runbook")
        );
        assert_eq!(
            StateDir::resolve_with(None, env(&[])),
            PathBuf::from(".runbook-state")
        );
    }
}

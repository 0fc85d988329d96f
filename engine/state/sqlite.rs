//! [`SqliteStore`]: the [`Store`] on a local `SQLite` file (WAL, `synchronous=FULL`), shared safely
//! between the running engine and other `runbook` processes on the same machine; with an audit
//! key, it also signs checkpoints of the audit chain.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{
    Connection, ErrorCode, OptionalExtension, Transaction, TransactionBehavior, params,
};

use super::audit::{self, Canonical, Verifier};
use super::signing::{self, AuditSigner, Checkpoint, SigningConfig};
use super::{
    ApprovalInput, ApprovalRecord, AuditEntry, AuditInput, BadApproval, EventInput, EventRecord,
    LockGrant, LockHolder, LogRecord, NewRun, RunRecord, RunStatus, StateDir, StateError, Store,
    VerifyReport, now_ms,
};

/// The schema version this build writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 2;

/// How long a writer waits for another process's transaction before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS runs (
    id             TEXT PRIMARY KEY NOT NULL,
    runbook        TEXT NOT NULL,
    file           TEXT NOT NULL,
    runbook_hash   TEXT NOT NULL,
    params         TEXT NOT NULL,
    user           TEXT NOT NULL,
    host           TEXT NOT NULL,
    pid            INTEGER NOT NULL,
    parent_run     TEXT,
    status         TEXT NOT NULL,
    started_at_ms  INTEGER NOT NULL,
    finished_at_ms INTEGER
);
CREATE INDEX IF NOT EXISTS runs_by_start ON runs (started_at_ms, id);

CREATE TABLE IF NOT EXISTS events (
    run_id  TEXT NOT NULL REFERENCES runs (id),
    seq     INTEGER NOT NULL,
    at_ms   INTEGER NOT NULL,
    step    TEXT,
    kind    TEXT NOT NULL,
    attempt INTEGER,
    data    TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS logs (
    seq     INTEGER PRIMARY KEY,
    run_id  TEXT NOT NULL REFERENCES runs (id),
    step    TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    stream  TEXT NOT NULL,
    at_ms   INTEGER NOT NULL,
    text    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_by_run ON logs (run_id, step, seq);

CREATE TABLE IF NOT EXISTS approvals (
    id       INTEGER PRIMARY KEY,
    run_id   TEXT NOT NULL REFERENCES runs (id),
    step     TEXT NOT NULL,
    approver TEXT NOT NULL,
    decision INTEGER NOT NULL,
    via      TEXT NOT NULL,
    comment  TEXT,
    at_ms    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS approvals_by_step ON approvals (run_id, step, id);

-- One row per lock name ever taken; the row (and its token) survives release so fencing tokens
-- only grow. A released lock has a NULL holder.
CREATE TABLE IF NOT EXISTS locks (
    name     TEXT PRIMARY KEY NOT NULL,
    token    INTEGER NOT NULL,
    run_id   TEXT,
    user     TEXT,
    host     TEXT,
    pid      INTEGER,
    since_ms INTEGER
);

CREATE TABLE IF NOT EXISTS audit_log (
    seq       INTEGER PRIMARY KEY,
    at_ms     INTEGER NOT NULL,
    user      TEXT NOT NULL,
    host      TEXT NOT NULL,
    run_id    TEXT,
    step      TEXT,
    action    TEXT NOT NULL,
    target    TEXT,
    outcome   TEXT NOT NULL,
    detail    TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_run ON audit_log (run_id, seq);

-- The latest seq and hash, updated with every append: detects truncation of the tail.
CREATE TABLE IF NOT EXISTS audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash TEXT NOT NULL
);
INSERT OR IGNORE INTO audit_head (id, seq, hash) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- Guard rails against accidental edits; they do not stop a determined editor, the chain does.
CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
";

/// Version 2: approvals are bound to their audit entry (seq and hash), and signed checkpoints of
/// the chain are kept.
const SCHEMA_V2: &str = "
ALTER TABLE approvals ADD COLUMN audit_seq INTEGER;
ALTER TABLE approvals ADD COLUMN audit_hash TEXT;

-- Signed statements \"audit entry seq had hash hash\" (see state/signing.rs). Deleting rows
-- only makes the unsigned tail longer, which verification bounds.
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    seq       INTEGER PRIMARY KEY NOT NULL,
    hash      TEXT NOT NULL,
    at_ms     INTEGER NOT NULL,
    every     INTEGER NOT NULL,
    key_id    TEXT NOT NULL,
    signature TEXT NOT NULL
);
";

const RUN_COLUMNS: &str = "id, runbook, file, runbook_hash, params, user, host, pid, parent_run, \
                           status, started_at_ms, finished_at_ms";

const AUDIT_COLUMNS: &str =
    "seq, at_ms, user, host, run_id, step, action, target, outcome, detail, prev_hash, hash";

/// Internal failure inside a transaction body: a raw `SQLite` error (mapped to a
/// [`StateError`] with context by the caller) or an already specific [`StateError`].
enum Fail {
    Db(rusqlite::Error),
    State(StateError),
}

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Self {
        Self::Db(e)
    }
}

impl From<StateError> for Fail {
    fn from(e: StateError) -> Self {
        Self::State(e)
    }
}

/// Whether `SQLite` says the file is damaged or not a database at all.
fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt)
    )
}

/// Whether `SQLite` rejected a row for a missing parent run.
fn is_foreign_key(e: &rusqlite::Error) -> bool {
    e.sqlite_extended_error_code() == Some(rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY)
}

/// A short human reason for a corruption error ("file is not a database").
fn corruption_reason(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::SqliteFailure(_, Some(msg)) => msg.clone(),
        other => other.to_string(),
    }
}

/// The `SQLite` state store. One connection guarded by a mutex: `SQLite` serializes writers anyway,
/// and the mutex makes the store `Sync` for the engine's worker threads. Other processes share
/// the file through WAL and the busy timeout.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Mutex<Connection>,
    path: PathBuf,
    /// The audit key, when checkpoints are signed.
    signer: Option<AuditSigner>,
    /// Whether the "not signing blindly" warning was printed (once per process is enough).
    warned: AtomicBool,
    /// Records queued for the next commit (group commit), in the order they were queued.
    pending: Mutex<Pending>,
}

/// Records waiting for the next commit.
#[derive(Debug, Default)]
struct Pending {
    records: Vec<Queued>,
    /// Bytes of log text queued: past [`FLUSH_BYTES`] the queue is committed at once.
    bytes: usize,
}

/// A record queued for the next commit, with the time it was made.
#[derive(Debug)]
enum Queued {
    Event {
        run_id: String,
        event: Box<EventInput>,
        audit: Option<Box<AuditInput>>,
        at_ms: i64,
    },
    Log {
        run_id: String,
        step: String,
        attempt: u32,
        stream: String,
        text: String,
        at_ms: i64,
    },
}

/// Queued output past which it is committed without waiting for the next durable write: bounds
/// the memory a chatty step costs and what a crash can lose.
const FLUSH_BYTES: usize = 256 * 1024;

impl SqliteStore {
    /// Open (creating if needed) the state database `runbook.db` in `dir`, creating `dir` with
    /// mode 0700 if missing.
    ///
    /// The file is checked (`PRAGMA quick_check`) before anything is written to it, so a damaged
    /// file is reported and left exactly as it was, never "repaired" or replaced.
    ///
    /// # Errors
    /// [`StateError::Corrupt`] for a damaged file, [`StateError::SchemaTooNew`] for a database
    /// from a newer `runbook`, [`StateError::CreateDir`] / [`StateError::Open`] otherwise.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        StateDir::ensure(dir)?;
        let path = StateDir::db_path(dir);
        // Permissions first: a directory others may write to is refused before it is used.
        super::perms::secure(dir, &path)?;
        let conn = Connection::open(&path).map_err(|e| open_error(&path, e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| open_error(&path, e))?;
        check_integrity(&conn).map_err(|e| open_error(&path, e))?;
        let found: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(|e| open_error(&path, e))?;
        if found > SCHEMA_VERSION {
            return Err(StateError::SchemaTooNew {
                path,
                found,
                supported: SCHEMA_VERSION,
            });
        }
        configure(&conn).map_err(|e| open_error(&path, e))?;
        if found < SCHEMA_VERSION {
            migrate(&conn).map_err(|e| open_error(&path, e))?;
        }
        conn.set_prepared_statement_cache_capacity(64);
        tracing::debug!(path = %path.display(), "opened state database");
        Ok(Self {
            conn: Mutex::new(conn),
            path,
            signer: signer_for(dir, &signing::default_config())?,
            warned: AtomicBool::new(false),
            pending: Mutex::new(Pending::default()),
        })
    }

    /// [`SqliteStore::open`] with an explicit signing configuration instead of the process's
    /// (see [`signing::set_default`]).
    ///
    /// # Errors
    /// As [`SqliteStore::open`], and [`StateError::AuditKey`] for an unusable key.
    pub fn open_with(dir: &Path, config: &SigningConfig) -> Result<Self, StateError> {
        let mut store = Self::open(dir)?;
        store.signer = signer_for(dir, config)?;
        Ok(store)
    }

    /// Sign checkpoints with this in-memory key from now on (tests, embedding).
    #[must_use]
    pub fn with_signer(mut self, signer: AuditSigner) -> Self {
        self.signer = Some(signer);
        self
    }

    /// The audit key's signer, if one is configured.
    #[must_use]
    pub fn signer(&self) -> Option<&AuditSigner> {
        self.signer.as_ref()
    }

    /// The database file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock rolled its transaction back on unwind (Transaction's
        // drop), so the connection is still consistent.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Map a raw `SQLite` error to a [`StateError`] with context.
    fn db_error(&self, e: rusqlite::Error, action: impl FnOnce() -> String) -> StateError {
        if is_corruption(&e) {
            StateError::Corrupt {
                path: self.path.clone(),
                reason: corruption_reason(&e),
                source: e,
            }
        } else {
            StateError::Sqlite {
                action: action(),
                source: e,
            }
        }
    }

    fn fail(&self, f: Fail, action: impl FnOnce() -> String) -> StateError {
        match f {
            Fail::Db(e) => self.db_error(e, action),
            Fail::State(e) => e,
        }
    }

    /// Run `body` in an IMMEDIATE transaction (write lock taken up front, so a concurrent writer
    /// in another process waits on the busy timeout instead of failing mid-transaction) and
    /// commit it durably before returning.
    fn write<T>(
        &self,
        action: impl FnOnce() -> String,
        body: impl FnOnce(&Connection) -> Result<T, Fail>,
    ) -> Result<T, StateError> {
        let conn = self.conn();
        let queued = self.take_pending();
        let result = (|| {
            let tx = Transaction::new_unchecked(&conn, TransactionBehavior::Immediate)?;
            // Queued records first: they were made before this one.
            self.write_queued(&tx, &queued)?;
            let out = body(&tx)?;
            tx.commit()?;
            Ok(out)
        })();
        result.map_err(|f| self.fail(f, action))
    }

    fn take_pending(&self) -> Vec<Queued> {
        let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        p.bytes = 0;
        std::mem::take(&mut p.records)
    }

    fn write_queued(&self, conn: &Connection, queued: &[Queued]) -> Result<(), Fail> {
        for q in queued {
            match q {
                Queued::Event {
                    run_id,
                    event,
                    audit,
                    at_ms,
                } => {
                    insert_event(conn, run_id, event, *at_ms)?;
                    if let Some(audit) = audit {
                        self.append(conn, audit, false)?;
                    }
                }
                Queued::Log {
                    run_id,
                    step,
                    attempt,
                    stream,
                    text,
                    at_ms,
                } => insert_log(conn, run_id, step, *attempt, stream, text, *at_ms)?,
            }
        }
        Ok(())
    }

    fn queue(&self, q: Queued, bytes: usize) -> Result<(), StateError> {
        let full = {
            let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            p.records.push(q);
            p.bytes += bytes;
            p.bytes >= FLUSH_BYTES
        };
        if full { Store::flush(self) } else { Ok(()) }
    }

    fn has_pending(&self) -> bool {
        !self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .records
            .is_empty()
    }

    /// Run `body` outside an explicit transaction (single statements are atomic snapshots).
    fn read<T>(
        &self,
        action: impl FnOnce() -> String,
        body: impl FnOnce(&Connection) -> Result<T, Fail>,
    ) -> Result<T, StateError> {
        // A reader of this store sees what it queued.
        if self.has_pending() {
            Store::flush(self)?;
        }
        let conn = self.conn();
        body(&conn).map_err(|f| self.fail(f, action))
    }
}

impl SqliteStore {
    /// Append an audit entry inside the caller's transaction, then sign a checkpoint if one is
    /// due (every `every` entries, and at every run end).
    fn append(&self, conn: &Connection, audit: &AuditInput, run_end: bool) -> Result<i64, Fail> {
        let seq = append_audit(conn, audit)?;
        self.checkpoint_if_due(conn, run_end)?;
        Ok(seq)
    }

    fn warn_once(&self, why: &str) {
        if !self.warned.swap(true, Ordering::SeqCst) {
            eprintln!("warning: not signing the audit log: {why}");
        }
    }

    /// Sign the head if a checkpoint is due. The engine never signs blindly: only entries that
    /// chain from the newest checkpoint it can verify with its own key, and no more than one
    /// interval of them. Otherwise someone who deleted the checkpoints and rewrote the log would
    /// get the rewrite signed at the next run end. Refusing is a warning, not a failure: the run
    /// goes on, and `audit verify --public-key` reports the unsigned tail.
    fn checkpoint_if_due(&self, conn: &Connection, run_end: bool) -> Result<(), Fail> {
        let Some(signer) = &self.signer else {
            return Ok(());
        };
        let (head_seq, head_hash) = read_head(conn)?;
        let every = i64::try_from(signer.every()).unwrap_or(i64::MAX);
        // Most appends are not due: decide that from the newest row alone, and verify
        // signatures only when about to sign (a row past the head is forged: look closer).
        let newest: Option<i64> = conn
            .prepare_cached("SELECT MAX(seq) FROM audit_checkpoints WHERE key_id = ?1")?
            .query_row([signer.key_id()], |r| r.get(0))?;
        if let Some(seq) = newest
            && seq <= head_seq
            && (seq == head_seq || (head_seq - seq < every && !run_end))
        {
            return Ok(());
        }
        if newest.is_none() && head_seq < every && !run_end {
            return Ok(());
        }
        let base = newest_own_checkpoint(conn, signer)?;
        let base_seq = base.as_ref().map_or(0, |c| c.seq);
        let gap = head_seq - base_seq;
        if gap <= 0 || (gap < every && !run_end) {
            return Ok(());
        }
        if gap > every {
            self.warn_once(&format!(
                "{gap} entries since the last checkpoint this key signed (entry #{base_seq}), more \
                 than its interval of {every}: checkpoints were deleted, the key is new, or \
                 writers without the key appended; check with `runbook audit verify \
                 --public-key KEY.pub`, then sign with `runbook audit anchor`"
            ));
            return Ok(());
        }
        let start = match &base {
            Some(c) => audit::unhex(&c.hash).unwrap_or_default(),
            None => [0u8; 32],
        };
        if let Err(why) = segment_chains(conn, base_seq, start, head_seq, &head_hash)? {
            self.warn_once(&format!(
                "the entries after the last checkpoint (entry #{base_seq}) do not chain from it \
                 ({why}); run `runbook audit verify --public-key KEY.pub`"
            ));
            return Ok(());
        }
        insert_checkpoint(conn, &signer.sign(head_seq, &head_hash, now_ms()))?;
        Ok(())
    }

    /// Sign the current head now (for `runbook audit anchor`), whatever the interval, and
    /// return the checkpoint (the existing one if this key already signed the head). The caller
    /// verifies the chain first.
    ///
    /// # Errors
    /// [`StateError::AuditKey`] without a key, or a storage failure.
    pub fn checkpoint_now(&self) -> Result<Checkpoint, StateError> {
        let Some(signer) = &self.signer else {
            return Err(StateError::AuditKey {
                path: PathBuf::from("(none)"),
                reason: "no audit key is configured: give --audit-key FILE or set \
                         RUNBOOK_AUDIT_KEY"
                    .to_owned(),
            });
        };
        self.write(
            || "sign the audit head".to_owned(),
            |conn| {
                let (head_seq, head_hash) = read_head(conn)?;
                if let Some(c) = newest_own_checkpoint(conn, signer)?
                    && c.seq == head_seq
                {
                    return Ok(c);
                }
                let c = signer.sign(head_seq, &head_hash, now_ms());
                insert_checkpoint(conn, &c)?;
                let stored: String = conn
                    .prepare_cached("SELECT signature FROM audit_checkpoints WHERE seq = ?1")?
                    .query_row([head_seq], |r| r.get(0))?;
                // Another row at this seq is evidence (forged, or another key's): never replace
                // it, let `verify --public-key` judge it.
                if stored != c.signature {
                    return Err(Fail::State(StateError::Decode {
                        what: format!("the checkpoint of audit entry {head_seq}"),
                        detail: "a checkpoint this key did not sign is stored there (forged, or \
                                 signed with another key); check with `runbook audit verify \
                                 --public-key`"
                            .to_owned(),
                    }));
                }
                Ok(c)
            },
        )
    }

    /// The newest stored checkpoint whose hash the chain still has at its seq, as
    /// [`Store::audit_verify`] saw them (its signature is not checked: that needs the public key).
    pub fn latest_checkpoint(&self, report: &VerifyReport) -> Option<Checkpoint> {
        report
            .checkpoints
            .iter()
            .rev()
            .find(|c| {
                let at = if c.seq == 0 {
                    Some(audit::GENESIS_HASH)
                } else {
                    report.hashes.get(&c.seq).map(String::as_str)
                };
                at.is_some_and(|h| h.eq_ignore_ascii_case(&c.hash))
            })
            .cloned()
    }

    /// [`Store::audit_verify`], also reporting the verified hash of each entry in `seqs` (for
    /// `--expect-head`).
    ///
    /// # Errors
    /// A storage failure only.
    pub fn audit_verify_at(&self, seqs: &[i64]) -> Result<VerifyReport, StateError> {
        let conn = self.conn();
        let result = (|| {
            // One read transaction: the head, entries, checkpoints and approvals come from the
            // same snapshot even while another process appends.
            let tx = Transaction::new_unchecked(&conn, TransactionBehavior::Deferred)?;
            let head: Option<(i64, Vec<u8>)> = tx
                .prepare_cached("SELECT seq, CAST(hash AS BLOB) FROM audit_head WHERE id = 1")?
                .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            let checkpoints = read_checkpoints(&tx)?;
            let mut wanted: BTreeSet<i64> = checkpoints.iter().map(|c| c.seq).collect();
            wanted.extend(seqs.iter().copied());
            let mut verifier = Verifier::wanting(wanted);
            {
                let mut stmt = tx.prepare_cached(&format!(
                    "SELECT {AUDIT_COLUMNS} FROM audit_log ORDER BY seq"
                ))?;
                let mut rows = stmt.query([])?;
                while let Some(row) = rows.next()? {
                    verify_row(&mut verifier, row)?;
                }
            }
            let mut report =
                verifier.finish(head.as_ref().map(|(seq, hash)| (*seq, hash.as_slice())));
            report.checkpoints = checkpoints;
            let mut bound = BTreeSet::new();
            {
                let mut stmt =
                    tx.prepare_cached(&format!("{BOUND_APPROVAL_QUERY} ORDER BY a.id"))?;
                let mut rows = stmt.query([])?;
                while let Some(row) = rows.next()? {
                    let a = bound_approval(row)?;
                    report.approvals += 1;
                    match a.check() {
                        Ok(()) => {
                            bound.insert(a.id);
                        }
                        Err(reason) if report.bad_approval.is_none() => {
                            report.bad_approval = Some(BadApproval {
                                id: a.id,
                                run_id: a.record.run_id,
                                step: a.record.step,
                                reason,
                            });
                        }
                        Err(_) => {}
                    }
                }
            }
            // The other direction: a decision the chain records must still be in the table (a
            // deleted denial would otherwise let an approval through unnoticed).
            {
                let mut stmt = tx.prepare_cached(
                    "SELECT seq, run_id, step, json_extract(detail, '$.approval.id') FROM \
                     audit_log WHERE json_valid(detail) AND \
                     json_type(detail, '$.approval.id') = 'integer' ORDER BY seq",
                )?;
                let mut rows = stmt.query([])?;
                while let Some(row) = rows.next()? {
                    let seq: i64 = row.get(0)?;
                    let id: i64 = row.get(3)?;
                    if report.bad_approval.is_none() && !bound.contains(&id) {
                        report.bad_approval = Some(BadApproval {
                            id,
                            run_id: row.get::<_, Option<String>>(1)?.unwrap_or_default(),
                            step: row.get::<_, Option<String>>(2)?.unwrap_or_default(),
                            reason: format!(
                                "audit entry #{seq} records this decision, but the approvals \
                                 table no longer holds it: it was deleted or replaced"
                            ),
                        });
                    }
                }
            }
            tx.commit()?;
            Ok(report)
        })();
        result.map_err(|e| self.db_error(e, || "verify the audit log".to_owned()))
    }
}

/// The audit head's seq and hash.
fn read_head(conn: &Connection) -> Result<(i64, [u8; 32]), Fail> {
    let head: Option<(i64, String)> = conn
        .prepare_cached("SELECT seq, hash FROM audit_head WHERE id = 1")?
        .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let Some((seq, hash)) = head else {
        return Err(Fail::State(StateError::Decode {
            what: "the audit head".to_owned(),
            detail: "its row is missing, so the audit log was tampered with; run `runbook audit \
                     verify`"
                .to_owned(),
        }));
    };
    let hash = audit::unhex(&hash).ok_or_else(|| StateError::Decode {
        what: "the audit head".to_owned(),
        detail: format!("{hash:?} is not a SHA-256 hex digest"),
    })?;
    Ok((seq, hash))
}

fn checkpoint_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Checkpoint> {
    Ok(Checkpoint {
        seq: row.get(0)?,
        hash: row.get(1)?,
        at_ms: row.get(2)?,
        every: u64::try_from(row.get::<_, i64>(3)?).unwrap_or(0),
        key_id: row.get(4)?,
        signature: row.get(5)?,
    })
}

/// Every stored checkpoint, oldest first.
fn read_checkpoints(conn: &Connection) -> rusqlite::Result<Vec<Checkpoint>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, hash, at_ms, every, key_id, signature FROM audit_checkpoints ORDER BY seq",
    )?;
    stmt.query_map([], checkpoint_from_row)?.collect()
}

/// The newest checkpoint whose signature this signer's key verifies (forged or foreign rows are
/// passed over, so they cannot make the engine sign from them).
fn newest_own_checkpoint(
    conn: &Connection,
    signer: &AuditSigner,
) -> Result<Option<Checkpoint>, Fail> {
    let public = signer.public_key();
    let mut stmt = conn.prepare_cached(
        "SELECT seq, hash, at_ms, every, key_id, signature FROM audit_checkpoints \
         WHERE key_id = ?1 ORDER BY seq DESC",
    )?;
    let mut rows = stmt.query([signer.key_id()])?;
    while let Some(row) = rows.next()? {
        let c = checkpoint_from_row(row)?;
        if public.verifies(&c) {
            return Ok(Some(c));
        }
    }
    Ok(None)
}

fn insert_checkpoint(conn: &Connection, c: &Checkpoint) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO audit_checkpoints (seq, hash, at_ms, every, key_id, signature) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        c.seq,
        c.hash,
        c.at_ms,
        i64::try_from(c.every).unwrap_or(i64::MAX),
        c.key_id,
        c.signature
    ])?;
    Ok(())
}

/// Whether entries `after + 1 ..= head_seq` chain from hash `start` up to the head's hash.
/// `Ok(Err(why))` when they do not.
fn segment_chains(
    conn: &Connection,
    after: i64,
    start: [u8; 32],
    head_seq: i64,
    head_hash: &[u8; 32],
) -> rusqlite::Result<Result<(), String>> {
    let mut verifier = Verifier::starting_after(after, start);
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE seq > ?1 ORDER BY seq"
    ))?;
    let mut rows = stmt.query([after])?;
    while let Some(row) = rows.next()? {
        verify_row(&mut verifier, row)?;
    }
    let hex = audit::hex(head_hash);
    let report = verifier.finish(Some((head_seq, &hex[..])));
    Ok(match report.first_bad {
        None => Ok(()),
        Some(bad) => Err(format!("entry #{}: {}", bad.seq, bad.reason)),
    })
}

/// `audit` with the lock's previous holder added to its detail (when it is an object or null),
/// so the trail says whose lock was broken.
fn with_previous_holder(audit: &AuditInput, previous: Option<&(LockHolder, i64)>) -> AuditInput {
    let mut audit = audit.clone();
    let previous_json = match previous {
        Some((holder, since_ms)) => serde_json::json!({
            "run_id": holder.run_id,
            "user": holder.user,
            "host": holder.host,
            "pid": holder.pid,
            "since_ms": since_ms,
        }),
        None => serde_json::Value::Null,
    };
    match &mut audit.detail {
        serde_json::Value::Object(map) => {
            map.insert("previous_holder".to_owned(), previous_json);
        }
        detail @ serde_json::Value::Null => {
            *detail = serde_json::json!({ "previous_holder": previous_json });
        }
        _ => {}
    }
    audit
}

/// The lock's holder, if it is still `dead` (with since when); else the
/// [`StateError::LockTakenOver`] to refuse with.
fn still_held_by(conn: &Connection, name: &str, dead: &LockHolder) -> Result<(LockRow, i64), Fail> {
    let row = lock_row(conn, name)?;
    match row {
        Some(LockRow {
            token,
            holder: Some((held, since_ms)),
        }) if held == *dead => Ok((
            LockRow {
                token,
                holder: Some((held, since_ms)),
            },
            since_ms,
        )),
        other => {
            let current = other.and_then(|r| r.holder);
            Err(Fail::State(StateError::LockTakenOver {
                name: name.to_owned(),
                dead: Box::new(dead.clone()),
                since_ms: current.as_ref().map(|(_, since)| *since),
                current: current.map(|(h, _)| Box::new(h)),
            }))
        }
    }
}

fn open_error(path: &Path, e: rusqlite::Error) -> StateError {
    if is_corruption(&e) {
        StateError::Corrupt {
            path: path.to_owned(),
            reason: corruption_reason(&e),
            source: e,
        }
    } else {
        StateError::Open {
            path: path.to_owned(),
            source: e,
        }
    }
}

/// `PRAGMA quick_check`, turned into a `SQLITE_CORRUPT` error when it finds anything. Reads only.
fn check_integrity(conn: &Connection) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare("PRAGMA quick_check(5)")?;
    let findings: Vec<String> = stmt
        .query_map([], |row| row.get::<_, String>(0))?
        .collect::<rusqlite::Result<_>>()?;
    if findings.len() == 1 && findings[0] == "ok" {
        return Ok(());
    }
    let mut reason = String::from("database disk image is malformed (");
    reason.push_str(&findings.join("; "));
    reason.push(')');
    Err(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
        Some(reason),
    ))
}

/// Per-connection settings. WAL lets readers (`runbook status`) run alongside the engine;
/// `synchronous=FULL` fsyncs the WAL at every commit so a committed transition survives power
/// loss, not just a crash.
fn configure(conn: &Connection) -> rusqlite::Result<()> {
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "wal", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(mode, "the state database could not switch to WAL mode");
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// Create or upgrade the schema, in one transaction; re-checks the version inside it so two
/// processes opening a fresh database at once do not both migrate.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version < 1 {
        tx.execute_batch(SCHEMA_V1)?;
    }
    if version < 2 {
        tx.execute_batch(SCHEMA_V2)?;
        bind_legacy_approvals(&tx)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()
}

/// The signer for `dir` under `config`, if a key is configured.
fn signer_for(dir: &Path, config: &SigningConfig) -> Result<Option<AuditSigner>, StateError> {
    config
        .key
        .as_deref()
        .map(|key| AuditSigner::load(key, dir, config.every))
        .transpose()
}

/// What an approval row says, as its audit entry records it (`detail.approval`). The row id is
/// part of it, so a copied row cannot reuse another row's entry.
#[expect(
    clippy::too_many_arguments,
    reason = "one argument per column of the approvals table"
)]
fn approval_binding(
    id: i64,
    run_id: &str,
    step: &str,
    approver: &str,
    decision: bool,
    via: &str,
    comment: Option<&str>,
    at_ms: i64,
) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "run_id": run_id,
        "step": step,
        "approver": approver,
        "decision": decision,
        "via": via,
        "comment": comment,
        "at_ms": at_ms,
    })
}

/// Approvals recorded before schema 2 are bound to one `approvals.bind` audit entry listing
/// them, so from now on every approval row that counts is backed by the chain.
fn bind_legacy_approvals(conn: &Connection) -> rusqlite::Result<()> {
    let mut legacy = Vec::new();
    {
        let mut stmt = conn.prepare(
            "SELECT id, run_id, step, approver, decision, via, comment, at_ms FROM approvals \
             WHERE audit_seq IS NULL ORDER BY id",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let id: i64 = row.get(0)?;
            let run_id: String = row.get(1)?;
            let step: String = row.get(2)?;
            let approver: String = row.get(3)?;
            let comment: Option<String> = row.get(6)?;
            let via: String = row.get(5)?;
            legacy.push((
                id,
                approval_binding(
                    id,
                    &run_id,
                    &step,
                    &approver,
                    row.get(4)?,
                    &via,
                    comment.as_deref(),
                    row.get(7)?,
                ),
            ));
        }
    }
    if legacy.is_empty() {
        return Ok(());
    }
    let audit = AuditInput {
        user: crate::exec::current_user(),
        host: crate::exec::current_host(),
        run_id: None,
        step: None,
        action: "approvals.bind".to_owned(),
        target: None,
        outcome: "bound".to_owned(),
        detail: serde_json::json!({
            "reason": "approvals recorded before they were bound to the audit chain",
            "approvals": legacy.iter().map(|(_, b)| b.clone()).collect::<Vec<_>>(),
        }),
    };
    let seq = match append_audit(conn, &audit) {
        Ok(seq) => seq,
        Err(Fail::Db(e)) => return Err(e),
        // A damaged audit head: leave the rows unbound, `audit verify` reports both.
        Err(Fail::State(_)) => return Ok(()),
    };
    let hash: String = conn.query_row("SELECT hash FROM audit_log WHERE seq = ?1", [seq], |r| {
        r.get(0)
    })?;
    for (id, _) in &legacy {
        conn.execute(
            "UPDATE approvals SET audit_seq = ?1, audit_hash = ?2 WHERE id = ?3",
            params![seq, hash, id],
        )?;
    }
    Ok(())
}

/// An approvals row joined with the audit entry it names, as read for checking.
struct BoundApproval {
    record: ApprovalRecord,
    id: i64,
    audit_seq: Option<i64>,
    audit_hash: Option<String>,
    entry_hash: Option<String>,
    entry_detail: Option<String>,
}

const BOUND_APPROVAL_QUERY: &str = "SELECT a.id, a.run_id, a.step, a.approver, a.decision, \
     a.via, a.comment, a.at_ms, a.audit_seq, a.audit_hash, l.hash, l.detail FROM approvals a \
     LEFT JOIN audit_log l ON l.seq = a.audit_seq";

fn bound_approval(row: &rusqlite::Row<'_>) -> rusqlite::Result<BoundApproval> {
    Ok(BoundApproval {
        id: row.get(0)?,
        record: ApprovalRecord {
            run_id: row.get(1)?,
            step: row.get(2)?,
            approver: row.get(3)?,
            decision: row.get(4)?,
            via: row.get(5)?,
            comment: row.get(6)?,
            at_ms: row.get(7)?,
        },
        audit_seq: row.get(8)?,
        audit_hash: row.get(9)?,
        entry_hash: row.get(10)?,
        entry_detail: row.get(11)?,
    })
}

impl BoundApproval {
    /// `Ok` if the audit entry it names exists, has the hash the row recorded, and records
    /// exactly this decision; else why not.
    fn check(&self) -> Result<(), String> {
        let Some(seq) = self.audit_seq else {
            return Err(
                "it is bound to no audit entry: it was written into the approvals table \
                        directly, not by `runbook approve`"
                    .to_owned(),
            );
        };
        let (Some(entry_hash), Some(detail)) = (&self.entry_hash, &self.entry_detail) else {
            return Err(format!("its audit entry #{seq} does not exist"));
        };
        if !self
            .audit_hash
            .as_deref()
            .is_some_and(|h| h.eq_ignore_ascii_case(entry_hash))
        {
            return Err(format!(
                "its audit entry #{seq} is not the one it was recorded with (hash differs)"
            ));
        }
        let r = &self.record;
        let binding = approval_binding(
            self.id,
            &r.run_id,
            &r.step,
            &r.approver,
            r.decision,
            &r.via,
            r.comment.as_deref(),
            r.at_ms,
        );
        let detail: serde_json::Value = serde_json::from_str(detail).unwrap_or_default();
        let recorded = detail.get("approval") == Some(&binding)
            || detail
                .get("approvals")
                .and_then(serde_json::Value::as_array)
                .is_some_and(|all| all.contains(&binding));
        if recorded {
            Ok(())
        } else {
            Err(format!(
                "it differs from the decision its audit entry #{seq} records: the approvals \
                 table was edited"
            ))
        }
    }
}

/// Serialize a JSON value for storage.
fn json_text(what: &'static str, value: &serde_json::Value) -> Result<String, Fail> {
    serde_json::to_string(value)
        .map_err(|source| Fail::State(StateError::Serialize { what, source }))
}

/// Parse stored JSON text.
fn json_value(what: impl FnOnce() -> String, text: &str) -> Result<serde_json::Value, Fail> {
    serde_json::from_str(text).map_err(|e| {
        Fail::State(StateError::Decode {
            what: what(),
            detail: e.to_string(),
        })
    })
}

/// A stored integer that must fit a `u32` (pid, attempt).
fn to_u32(what: impl FnOnce() -> String, value: i64) -> Result<u32, Fail> {
    u32::try_from(value).map_err(|_| {
        Fail::State(StateError::Decode {
            what: what(),
            detail: format!("{value} is not a valid u32"),
        })
    })
}

fn run_from_row(row: &rusqlite::Row<'_>) -> Result<RunRecord, Fail> {
    let id: String = row.get(0)?;
    let params: String = row.get(4)?;
    let status: String = row.get(9)?;
    Ok(RunRecord {
        params: json_value(|| format!("the params of run {id}"), &params)?,
        status: status.parse().map_err(|_| StateError::Decode {
            what: format!("the status of run {id}"),
            detail: format!("unknown status {status:?}"),
        })?,
        pid: to_u32(|| format!("the pid of run {id}"), row.get(7)?)?,
        runbook: row.get(1)?,
        file: row.get(2)?,
        runbook_hash: row.get(3)?,
        user: row.get(5)?,
        host: row.get(6)?,
        parent_run: row.get(8)?,
        started_at_ms: row.get(10)?,
        finished_at_ms: row.get(11)?,
        id,
    })
}

fn audit_from_row(row: &rusqlite::Row<'_>) -> Result<AuditEntry, Fail> {
    let seq: i64 = row.get(0)?;
    let detail: String = row.get(9)?;
    Ok(AuditEntry {
        seq,
        at_ms: row.get(1)?,
        user: row.get(2)?,
        host: row.get(3)?,
        run_id: row.get(4)?,
        step: row.get(5)?,
        action: row.get(6)?,
        target: row.get(7)?,
        outcome: row.get(8)?,
        detail: json_value(|| format!("the detail of audit entry {seq}"), &detail)?,
        prev_hash: row.get(10)?,
        hash: row.get(11)?,
    })
}

/// Append one audit entry inside the caller's transaction: read the head, chain, insert, move
/// the head. Returns the new seq.
fn append_audit(conn: &Connection, audit: &AuditInput) -> Result<i64, Fail> {
    let (head_seq, prev) = read_head(conn)?;
    let seq = head_seq + 1;
    let at_ms = now_ms();
    let detail = json_text("the audit detail", &audit.detail)?;
    let hash = audit::chain_hash(
        &prev,
        &Canonical {
            seq,
            at_ms,
            user: audit.user.as_bytes(),
            host: audit.host.as_bytes(),
            run_id: audit.run_id.as_deref().map(str::as_bytes),
            step: audit.step.as_deref().map(str::as_bytes),
            action: audit.action.as_bytes(),
            target: audit.target.as_deref().map(str::as_bytes),
            outcome: audit.outcome.as_bytes(),
            detail: detail.as_bytes(),
        },
    );
    let hash = audit::hex_string(&hash);
    conn.prepare_cached(
        "INSERT INTO audit_log (seq, at_ms, user, host, run_id, step, action, target, outcome, \
         detail, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        seq,
        at_ms,
        audit.user,
        audit.host,
        audit.run_id,
        audit.step,
        audit.action,
        audit.target,
        audit.outcome,
        detail,
        audit::hex_string(&prev),
        hash,
    ])?;
    conn.prepare_cached("UPDATE audit_head SET seq = ?1, hash = ?2 WHERE id = 1")?
        .execute(params![seq, hash])?;
    Ok(seq)
}

/// A lock's row: its last granted token, and its holder (with since when) if held.
struct LockRow {
    token: i64,
    holder: Option<(LockHolder, i64)>,
}

/// Read a lock's row, if the lock was ever taken.
fn lock_row(conn: &Connection, name: &str) -> Result<Option<LockRow>, Fail> {
    let row = conn
        .prepare_cached(
            "SELECT token, run_id, user, host, pid, since_ms FROM locks WHERE name = ?1",
        )?
        .query_row([name], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, Option<String>>(1)?,
                row.get::<_, Option<String>>(2)?,
                row.get::<_, Option<String>>(3)?,
                row.get::<_, Option<i64>>(4)?,
                row.get::<_, Option<i64>>(5)?,
            ))
        })
        .optional()?;
    let Some((token, run_id, user, host, pid, since)) = row else {
        return Ok(None);
    };
    let holder = match run_id {
        None => None,
        Some(run_id) => Some((
            LockHolder {
                run_id,
                user: user.unwrap_or_default(),
                host: host.unwrap_or_default(),
                pid: to_u32(
                    || format!("the pid holding lock {name:?}"),
                    pid.unwrap_or(0),
                )?,
            },
            since.unwrap_or(0),
        )),
    };
    Ok(Some(LockRow { token, holder }))
}

/// Fail with [`StateError::RunNotFound`] instead of a bare foreign-key violation.
/// Insert a journal event with the next seq of its run; returns the seq.
fn insert_event(
    conn: &Connection,
    run_id: &str,
    event: &EventInput,
    at_ms: i64,
) -> Result<i64, Fail> {
    let data = json_text("the event data", &event.data)?;
    let seq: i64 = conn
        .prepare_cached("SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE run_id = ?1")?
        .query_row([run_id], |row| row.get(0))?;
    conn.prepare_cached(
        "INSERT INTO events (run_id, seq, at_ms, step, kind, attempt, data) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        run_id,
        seq,
        at_ms,
        event.step,
        event.kind,
        event.attempt,
        data
    ])
    .map_err(run_must_exist(run_id))?;
    Ok(seq)
}

/// Insert a line (or chunk) of captured output.
fn insert_log(
    conn: &Connection,
    run_id: &str,
    step: &str,
    attempt: u32,
    stream: &str,
    text: &str,
    at_ms: i64,
) -> Result<(), Fail> {
    conn.prepare_cached(
        "INSERT INTO logs (run_id, step, attempt, stream, at_ms, text) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![run_id, step, attempt, stream, at_ms, text])
    .map_err(run_must_exist(run_id))?;
    Ok(())
}

fn run_must_exist(run_id: &str) -> impl FnOnce(rusqlite::Error) -> Fail + '_ {
    move |e| {
        if is_foreign_key(&e) {
            Fail::State(StateError::RunNotFound {
                run_id: run_id.to_owned(),
            })
        } else {
            Fail::Db(e)
        }
    }
}

/// Read a text-or-blob column as bytes for hashing; `None` for NULL, `Err` naming the column
/// for numbers (which a runbook build never writes there).
fn column_bytes<'a>(
    row: &'a rusqlite::Row<'_>,
    idx: usize,
    name: &str,
) -> Result<Option<&'a [u8]>, String> {
    match row.get_ref(idx) {
        Ok(ValueRef::Text(bytes) | ValueRef::Blob(bytes)) => Ok(Some(bytes)),
        Ok(ValueRef::Null) => Ok(None),
        Ok(_) => Err(format!("column {name} holds a number instead of text")),
        Err(e) => Err(format!("column {name} cannot be read: {e}")),
    }
}

/// Feed one audit row to the verifier.
fn verify_row(v: &mut Verifier, row: &rusqlite::Row<'_>) -> rusqlite::Result<()> {
    let seq: i64 = row.get(0)?;
    if v.failed() {
        v.skip();
        return Ok(());
    }
    let ValueRef::Integer(at_ms) = row.get_ref(1)? else {
        v.malformed(seq, "column at_ms is not an integer".to_owned());
        return Ok(());
    };
    let required = |idx, name| -> Result<&[u8], String> {
        column_bytes(row, idx, name)?.ok_or_else(|| format!("column {name} is NULL"))
    };
    let fields = (|| {
        Ok::<_, String>((
            Canonical {
                seq,
                at_ms,
                user: required(2, "user")?,
                host: required(3, "host")?,
                run_id: column_bytes(row, 4, "run_id")?,
                step: column_bytes(row, 5, "step")?,
                action: required(6, "action")?,
                target: column_bytes(row, 7, "target")?,
                outcome: required(8, "outcome")?,
                detail: required(9, "detail")?,
            },
            required(10, "prev_hash")?,
            required(11, "hash")?,
        ))
    })();
    match fields {
        Ok((canonical, prev, hash)) => v.entry(&canonical, prev, hash),
        Err(reason) => v.malformed(seq, reason),
    }
    Ok(())
}

impl Drop for SqliteStore {
    /// Queued records are committed when the store goes away (the run ended, or stopped on an
    /// error): only a crash loses them, as it would have lost the write not yet made.
    fn drop(&mut self) {
        if let Err(e) = Store::flush(self) {
            tracing::warn!("failed to commit the last journal records: {e}");
        }
    }
}

impl Store for SqliteStore {
    fn create_run(&self, run: &NewRun) -> Result<RunRecord, StateError> {
        let started_at_ms = now_ms();
        self.write(
            || format!("create run {}", run.id),
            |conn| {
                let params_text = json_text("the run params", &run.params)?;
                let inserted = conn
                    .prepare_cached(
                        "INSERT INTO runs (id, runbook, file, runbook_hash, params, user, host, \
                         pid, parent_run, status, started_at_ms, finished_at_ms) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, NULL) \
                         ON CONFLICT (id) DO NOTHING",
                    )?
                    .execute(params![
                        run.id,
                        run.runbook,
                        run.file,
                        run.runbook_hash,
                        params_text,
                        run.user,
                        run.host,
                        run.pid,
                        run.parent_run,
                        RunStatus::Running.as_str(),
                        started_at_ms,
                    ])?;
                if inserted == 0 {
                    return Err(Fail::State(StateError::RunExists {
                        run_id: run.id.clone(),
                    }));
                }
                Ok(())
            },
        )?;
        Ok(RunRecord {
            id: run.id.clone(),
            runbook: run.runbook.clone(),
            file: run.file.clone(),
            runbook_hash: run.runbook_hash.clone(),
            params: run.params.clone(),
            user: run.user.clone(),
            host: run.host.clone(),
            pid: run.pid,
            parent_run: run.parent_run.clone(),
            status: RunStatus::Running,
            started_at_ms,
            finished_at_ms: None,
        })
    }

    fn record(
        &self,
        run_id: &str,
        event: &EventInput,
        audit: Option<&AuditInput>,
    ) -> Result<i64, StateError> {
        self.write(
            || format!("record a {} event for run {run_id}", event.kind),
            |conn| {
                let seq = insert_event(conn, run_id, event, now_ms())?;
                if let Some(audit) = audit {
                    self.append(conn, audit, false)?;
                }
                Ok(seq)
            },
        )
    }

    fn finish_run(
        &self,
        run_id: &str,
        status: RunStatus,
        audit: &AuditInput,
    ) -> Result<(), StateError> {
        self.write(
            || format!("finish run {run_id} as {status}"),
            |conn| {
                let updated = conn
                    .prepare_cached(
                        "UPDATE runs SET status = ?2, finished_at_ms = ?3 WHERE id = ?1",
                    )?
                    .execute(params![run_id, status.as_str(), now_ms()])?;
                if updated == 0 {
                    return Err(Fail::State(StateError::RunNotFound {
                        run_id: run_id.to_owned(),
                    }));
                }
                self.append(conn, audit, true)?;
                Ok(())
            },
        )
    }

    fn set_status(&self, run_id: &str, status: RunStatus) -> Result<(), StateError> {
        self.write(
            || format!("set the status of run {run_id} to {status}"),
            |conn| {
                let updated = conn
                    .prepare_cached(
                        "UPDATE runs SET status = ?2, finished_at_ms = CASE WHEN ?2 = 'running' \
                         THEN NULL ELSE COALESCE(finished_at_ms, ?3) END WHERE id = ?1",
                    )?
                    .execute(params![run_id, status.as_str(), now_ms()])?;
                if updated == 0 {
                    return Err(Fail::State(StateError::RunNotFound {
                        run_id: run_id.to_owned(),
                    }));
                }
                Ok(())
            },
        )
    }

    fn run(&self, run_id: &str) -> Result<Option<RunRecord>, StateError> {
        if run_id.is_empty() {
            return Ok(None);
        }
        self.read(
            || format!("look up run {run_id}"),
            |conn| {
                let mut exact =
                    conn.prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"))?;
                let mut rows = exact.query([run_id])?;
                if let Some(row) = rows.next()? {
                    return run_from_row(row).map(Some);
                }
                drop(rows);
                // Not an exact id: every id starting with the prefix sorts in [prefix, prefix+MAX).
                let upper = format!("{run_id}\u{10FFFF}");
                let mut by_prefix = conn.prepare_cached(&format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE id >= ?1 AND id < ?2 ORDER BY id LIMIT 6"
                ))?;
                let mut rows = by_prefix.query([run_id, upper.as_str()])?;
                let mut found = Vec::new();
                while let Some(row) = rows.next()? {
                    let record = run_from_row(row)?;
                    if record.id.starts_with(run_id) {
                        found.push(record);
                    }
                }
                if found.len() > 1 {
                    return Err(Fail::State(StateError::AmbiguousRun {
                        prefix: run_id.to_owned(),
                        matches: found.into_iter().map(|r| r.id).collect(),
                    }));
                }
                Ok(found.pop())
            },
        )
    }

    fn runs(&self, limit: usize) -> Result<Vec<RunRecord>, StateError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(
            || "list runs".to_owned(),
            |conn| {
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT {RUN_COLUMNS} FROM runs ORDER BY started_at_ms DESC, id DESC LIMIT ?1"
                ))?;
                let mut rows = stmt.query([limit])?;
                let mut out = Vec::new();
                while let Some(row) = rows.next()? {
                    out.push(run_from_row(row)?);
                }
                Ok(out)
            },
        )
    }

    fn events(&self, run_id: &str) -> Result<Vec<EventRecord>, StateError> {
        self.read(
            || format!("read the journal of run {run_id}"),
            |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT seq, at_ms, step, kind, attempt, data FROM events WHERE run_id = ?1 \
                     ORDER BY seq",
                )?;
                let mut rows = stmt.query([run_id])?;
                let mut out = Vec::new();
                while let Some(row) = rows.next()? {
                    let seq: i64 = row.get(0)?;
                    let data: String = row.get(5)?;
                    let attempt: Option<i64> = row.get(4)?;
                    out.push(EventRecord {
                        seq,
                        at_ms: row.get(1)?,
                        step: row.get(2)?,
                        kind: row.get(3)?,
                        attempt: attempt
                            .map(|a| to_u32(|| format!("the attempt of event {seq}"), a))
                            .transpose()?,
                        data: json_value(
                            || format!("the data of event {seq} of run {run_id}"),
                            &data,
                        )?,
                    });
                }
                Ok(out)
            },
        )
    }

    fn append_log(
        &self,
        run_id: &str,
        step: &str,
        attempt: u32,
        stream: &str,
        text: &str,
    ) -> Result<(), StateError> {
        self.write(
            || format!("store the {stream} of step {step} of run {run_id}"),
            |conn| insert_log(conn, run_id, step, attempt, stream, text, now_ms()),
        )
    }

    fn record_deferred(
        &self,
        run_id: &str,
        event: &EventInput,
        audit: Option<&AuditInput>,
    ) -> Result<(), StateError> {
        self.queue(
            Queued::Event {
                run_id: run_id.to_owned(),
                event: Box::new(event.clone()),
                audit: audit.cloned().map(Box::new),
                at_ms: now_ms(),
            },
            0,
        )
    }

    fn append_log_deferred(
        &self,
        run_id: &str,
        step: &str,
        attempt: u32,
        stream: &str,
        text: &str,
    ) -> Result<(), StateError> {
        self.queue(
            Queued::Log {
                run_id: run_id.to_owned(),
                step: step.to_owned(),
                attempt,
                stream: stream.to_owned(),
                text: text.to_owned(),
                at_ms: now_ms(),
            },
            text.len() + 64,
        )
    }

    fn flush(&self) -> Result<(), StateError> {
        if !self.has_pending() {
            return Ok(());
        }
        self.write(
            || "commit the queued journal records".to_owned(),
            |_| Ok(()),
        )
    }

    fn logs(&self, run_id: &str, step: Option<&str>) -> Result<Vec<LogRecord>, StateError> {
        self.read(
            || format!("read the output of run {run_id}"),
            |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT seq, at_ms, run_id, step, attempt, stream, text FROM logs \
                     WHERE run_id = ?1 AND (?2 IS NULL OR step = ?2) ORDER BY seq",
                )?;
                let mut rows = stmt.query(params![run_id, step])?;
                let mut out = Vec::new();
                while let Some(row) = rows.next()? {
                    let seq: i64 = row.get(0)?;
                    out.push(LogRecord {
                        seq,
                        at_ms: row.get(1)?,
                        run_id: row.get(2)?,
                        step: row.get(3)?,
                        attempt: to_u32(|| format!("the attempt of log {seq}"), row.get(4)?)?,
                        stream: row.get(5)?,
                        text: row.get(6)?,
                    });
                }
                Ok(out)
            },
        )
    }

    fn add_approval(&self, a: &ApprovalInput, audit: &AuditInput) -> Result<(), StateError> {
        self.write(
            || format!("record the approval of step {} of run {}", a.step, a.run_id),
            |conn| {
                let at_ms = now_ms();
                conn.prepare_cached(
                    "INSERT INTO approvals (run_id, step, approver, decision, via, comment, \
                     at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![
                    a.run_id, a.step, a.approver, a.decision, a.via, a.comment, at_ms
                ])
                .map_err(run_must_exist(&a.run_id))?;
                let id = conn.last_insert_rowid();
                // The decision that counts is the one the chain records: the entry carries the
                // whole row, and the row names the entry (seq and hash).
                let binding = approval_binding(
                    id,
                    &a.run_id,
                    &a.step,
                    &a.approver,
                    a.decision,
                    &a.via,
                    a.comment.as_deref(),
                    at_ms,
                );
                let mut audit = audit.clone();
                audit.run_id = Some(a.run_id.clone());
                audit.step = Some(a.step.clone());
                match &mut audit.detail {
                    serde_json::Value::Object(map) => {
                        map.insert("approval".to_owned(), binding);
                    }
                    other => {
                        let given = std::mem::take(other);
                        *other = if given.is_null() {
                            serde_json::json!({ "approval": binding })
                        } else {
                            serde_json::json!({ "given": given, "approval": binding })
                        };
                    }
                }
                let seq = append_audit(conn, &audit)?;
                let hash: String = conn
                    .prepare_cached("SELECT hash FROM audit_log WHERE seq = ?1")?
                    .query_row([seq], |r| r.get(0))?;
                conn.prepare_cached(
                    "UPDATE approvals SET audit_seq = ?1, audit_hash = ?2 WHERE id = ?3",
                )?
                .execute(params![seq, hash, id])?;
                self.checkpoint_if_due(conn, false)?;
                Ok(())
            },
        )
    }

    fn approvals(&self, run_id: &str, step: &str) -> Result<Vec<ApprovalRecord>, StateError> {
        self.read(
            || format!("read the approvals of step {step} of run {run_id}"),
            |conn| {
                let mut stmt = conn.prepare_cached(&format!(
                    "{BOUND_APPROVAL_QUERY} WHERE a.run_id = ?1 AND a.step = ?2 ORDER BY a.id"
                ))?;
                let mut rows = stmt.query([run_id, step])?;
                let mut out = Vec::new();
                while let Some(row) = rows.next()? {
                    let a = bound_approval(row)?;
                    // A row the chain does not back never counts (`audit verify` names it).
                    if a.check().is_ok() {
                        out.push(a.record);
                    }
                }
                Ok(out)
            },
        )
    }

    fn acquire_lock(&self, name: &str, holder: &LockHolder) -> Result<LockGrant, StateError> {
        self.write(
            || format!("acquire lock {name:?}"),
            |conn| {
                let current = lock_row(conn, name)?;
                if let Some(LockRow {
                    holder: Some((held_by, since_ms)),
                    ..
                }) = current
                {
                    return Err(Fail::State(StateError::LockHeld {
                        name: name.to_owned(),
                        holder: Box::new(held_by),
                        since_ms,
                    }));
                }
                let token = current.map_or(0, |row| row.token) + 1;
                conn.prepare_cached(
                    "INSERT INTO locks (name, token, run_id, user, host, pid, since_ms) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                     ON CONFLICT (name) DO UPDATE SET token = excluded.token, \
                     run_id = excluded.run_id, user = excluded.user, host = excluded.host, \
                     pid = excluded.pid, since_ms = excluded.since_ms",
                )?
                .execute(params![
                    name,
                    token,
                    holder.run_id,
                    holder.user,
                    holder.host,
                    holder.pid,
                    now_ms()
                ])?;
                Ok(LockGrant { token })
            },
        )
    }

    fn release_lock(&self, name: &str, run_id: &str) -> Result<(), StateError> {
        self.write(
            || format!("release lock {name:?}"),
            |conn| match lock_row(conn, name)?.and_then(|row| row.holder) {
                Some((holder, _)) if holder.run_id != run_id => {
                    Err(Fail::State(StateError::LockNotOwned {
                        name: name.to_owned(),
                        run_id: run_id.to_owned(),
                        holder: Box::new(holder),
                    }))
                }
                Some(_) => {
                    clear_lock(conn, name)?;
                    Ok(())
                }
                None => Ok(()),
            },
        )
    }

    fn break_lock(&self, name: &str, audit: &AuditInput) -> Result<Option<LockHolder>, StateError> {
        self.write(
            || format!("break lock {name:?}"),
            |conn| {
                let previous = lock_row(conn, name)?.and_then(|row| row.holder);
                if previous.is_some() {
                    clear_lock(conn, name)?;
                }
                self.append(conn, &with_previous_holder(audit, previous.as_ref()), false)?;
                Ok(previous.map(|(holder, _)| holder))
            },
        )
    }

    fn break_lock_if_held_by(
        &self,
        name: &str,
        dead: &LockHolder,
        audit: &AuditInput,
    ) -> Result<(), StateError> {
        self.write(
            || format!("break lock {name:?}"),
            |conn| {
                let (row, since_ms) = still_held_by(conn, name, dead)?;
                // The IMMEDIATE transaction already excludes other writers; the holder in the
                // WHERE clause states the compare-and-swap where it happens.
                let cleared = conn
                    .prepare_cached(
                        "UPDATE locks SET run_id = NULL, user = NULL, host = NULL, pid = NULL, \
                         since_ms = NULL WHERE name = ?1 AND token = ?2 AND run_id = ?3 AND \
                         pid = ?4",
                    )?
                    .execute(params![name, row.token, dead.run_id, dead.pid])?;
                if cleared != 1 {
                    return Err(lost_the_swap(name, dead));
                }
                self.append(
                    conn,
                    &with_previous_holder(audit, Some(&(dead.clone(), since_ms))),
                    false,
                )?;
                Ok(())
            },
        )
    }

    fn take_over_lock(
        &self,
        name: &str,
        dead: &LockHolder,
        holder: &LockHolder,
        audit: &AuditInput,
    ) -> Result<LockGrant, StateError> {
        self.write(
            || format!("take over lock {name:?}"),
            |conn| {
                let (row, since_ms) = still_held_by(conn, name, dead)?;
                let token = row.token + 1;
                let swapped = conn
                    .prepare_cached(
                        "UPDATE locks SET token = ?5, run_id = ?6, user = ?7, host = ?8, \
                         pid = ?9, since_ms = ?10 \
                         WHERE name = ?1 AND token = ?2 AND run_id = ?3 AND pid = ?4",
                    )?
                    .execute(params![
                        name,
                        row.token,
                        dead.run_id,
                        dead.pid,
                        token,
                        holder.run_id,
                        holder.user,
                        holder.host,
                        holder.pid,
                        now_ms()
                    ])?;
                if swapped != 1 {
                    return Err(lost_the_swap(name, dead));
                }
                self.append(
                    conn,
                    &with_previous_holder(audit, Some(&(dead.clone(), since_ms))),
                    false,
                )?;
                Ok(LockGrant { token })
            },
        )
    }

    fn audit_append(&self, audit: &AuditInput) -> Result<i64, StateError> {
        self.write(
            || format!("append the audit entry {}", audit.action),
            |conn| self.append(conn, audit, false),
        )
    }

    fn audit_entries(
        &self,
        run_id: Option<&str>,
        since_ms: Option<i64>,
    ) -> Result<Vec<AuditEntry>, StateError> {
        self.read(
            || "read the audit log".to_owned(),
            |conn| {
                let filter = match (run_id.is_some(), since_ms.is_some()) {
                    // Both parameters appear in every variant (rusqlite checks the count);
                    // the `IS NULL` terms are constant, the rest can use the run index.
                    (false, false) => "WHERE ?1 IS NULL AND ?2 IS NULL",
                    (true, false) => "WHERE run_id = ?1 AND ?2 IS NULL",
                    (false, true) => "WHERE ?1 IS NULL AND at_ms >= ?2",
                    (true, true) => "WHERE run_id = ?1 AND at_ms >= ?2",
                };
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT {AUDIT_COLUMNS} FROM audit_log {filter} ORDER BY seq"
                ))?;
                let mut rows = stmt.query(params![run_id, since_ms])?;
                let mut out = Vec::new();
                while let Some(row) = rows.next()? {
                    out.push(audit_from_row(row)?);
                }
                Ok(out)
            },
        )
    }

    fn location(&self) -> Option<&Path> {
        Some(&self.path)
    }

    fn audit_verify(&self) -> Result<VerifyReport, StateError> {
        self.audit_verify_at(&[])
    }
}

/// Mark a lock released, keeping its row (and token) for fencing.
fn clear_lock(conn: &Connection, name: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE locks SET run_id = NULL, user = NULL, host = NULL, pid = NULL, since_ms = NULL \
         WHERE name = ?1",
    )?
    .execute([name])?;
    Ok(())
}

/// The compare-and-swap on a dead holder matched no row: another process broke or took the lock
/// first, and nothing was changed.
fn lost_the_swap(name: &str, dead: &LockHolder) -> Fail {
    Fail::State(StateError::LockTakenOver {
        name: name.to_owned(),
        dead: Box::new(dead.clone()),
        current: None,
        since_ms: None,
    })
}

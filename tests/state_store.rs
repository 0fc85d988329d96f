//! Integration tests of the durable state layer: the `SQLite` store, locks, approvals across
//! processes, the audit hash chain under tampering, and corrupt database handling.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use runbook::state::{
    ApprovalInput, AuditInput, EventInput, LockHolder, NewRun, RunStatus, SqliteStore, StateDir,
    StateError, Store, new_run_id,
};
use rusqlite::Connection;
use serde_json::json;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "runbook-state-test-{tag}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn db(&self) -> PathBuf {
        self.0.join("runbook.db")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn new_run(id: &str) -> NewRun {
    NewRun {
        id: id.to_owned(),
        runbook: "restart-api".to_owned(),
        file: "runbooks/restart-api.yaml".to_owned(),
        runbook_hash: "abc123".to_owned(),
        params: json!({ "region": "eu-west-1", "replicas": 3 }),
        user: "alice".to_owned(),
        host: "ops-1".to_owned(),
        pid: 4242,
        parent_run: None,
    }
}

fn audit(run_id: Option<&str>, action: &str, n: usize) -> AuditInput {
    AuditInput {
        user: "alice".to_owned(),
        host: "ops-1".to_owned(),
        run_id: run_id.map(str::to_owned),
        step: Some(format!("step-{n}")),
        action: action.to_owned(),
        target: Some("api.example.com".to_owned()),
        outcome: "ok".to_owned(),
        detail: json!({ "n": n, "note": "padding to make pages fill up a little faster" }),
    }
}

fn event(step: &str, kind: &str) -> EventInput {
    EventInput {
        step: Some(step.to_owned()),
        kind: kind.to_owned(),
        attempt: Some(1),
        data: json!({ "k": kind }),
    }
}

fn holder(run_id: &str) -> LockHolder {
    LockHolder {
        run_id: run_id.to_owned(),
        user: "alice".to_owned(),
        host: "ops-1".to_owned(),
        pid: 4242,
    }
}

/// A store in a fresh directory with `n` audit entries (seq 1..=n).
fn store_with_audit(tag: &str, n: usize) -> (TempDir, SqliteStore) {
    let dir = TempDir::new(tag);
    let store = SqliteStore::open(dir.path()).expect("open");
    for i in 1..=n {
        let seq = store
            .audit_append(&audit(Some("r1"), "step.run", i))
            .expect("append");
        assert_eq!(seq, i64::try_from(i).expect("small"));
    }
    (dir, store)
}

/// Open the database behind the store's back, with the append-only guard triggers removed (as
/// an attacker with file access would).
fn tamper(dir: &TempDir) -> Connection {
    let conn = Connection::open(dir.db()).expect("open raw");
    conn.execute_batch(
        "DROP TRIGGER IF EXISTS audit_log_no_update; DROP TRIGGER IF EXISTS audit_log_no_delete;",
    )
    .expect("drop triggers");
    conn
}

fn first_bad(store: &SqliteStore) -> Option<(i64, String)> {
    store
        .audit_verify()
        .expect("verify")
        .first_bad
        .map(|b| (b.seq, b.reason))
}

#[test]
fn create_finish_and_list_runs() {
    let dir = TempDir::new("runs");
    let store = SqliteStore::open(dir.path()).expect("open");
    // The engine holds the store as a trait object, so a PostgreSQL backend can slot in.
    let store: &dyn Store = &store;
    let first = store
        .create_run(&new_run("20240501-120000-aaaaaa"))
        .expect("create");
    assert_eq!(first.status, RunStatus::Running);
    assert_eq!(first.finished_at_ms, None);
    store
        .create_run(&new_run("20240501-120001-bbbbbb"))
        .expect("create second");

    // Exact id, unique prefix, ambiguous prefix, unknown.
    let got = store
        .run("20240501-120000-aaaaaa")
        .expect("run")
        .expect("exists");
    assert_eq!(got, first);
    assert_eq!(
        store
            .run("20240501-120001")
            .expect("run")
            .map(|r| r.id)
            .as_deref(),
        Some("20240501-120001-bbbbbb")
    );
    match store.run("20240501-12") {
        Err(StateError::AmbiguousRun { matches, .. }) => assert_eq!(matches.len(), 2),
        other => panic!("expected AmbiguousRun, got {other:?}"),
    }
    assert!(store.run("2099").expect("run").is_none());

    // Duplicate ids are rejected.
    assert!(matches!(
        store.create_run(&new_run("20240501-120000-aaaaaa")),
        Err(StateError::RunExists { .. })
    ));

    store
        .finish_run(
            &first.id,
            RunStatus::RolledBack,
            &audit(Some(&first.id), "run.finish", 0),
        )
        .expect("finish");
    let finished = store.run(&first.id).expect("run").expect("exists");
    assert_eq!(finished.status, RunStatus::RolledBack);
    assert!(finished.finished_at_ms.is_some());
    assert_eq!(
        finished.params,
        json!({ "region": "eu-west-1", "replicas": 3 })
    );

    // Resume: back to running clears the finish time.
    store
        .set_status(&first.id, RunStatus::Running)
        .expect("set status");
    let resumed = store.run(&first.id).expect("run").expect("exists");
    assert_eq!(resumed.status, RunStatus::Running);
    assert_eq!(resumed.finished_at_ms, None);

    assert!(matches!(
        store.finish_run("nope", RunStatus::Failed, &audit(None, "run.finish", 0)),
        Err(StateError::RunNotFound { .. })
    ));
    assert!(matches!(
        store.set_status("nope", RunStatus::Failed),
        Err(StateError::RunNotFound { .. })
    ));

    let listed: Vec<String> = store
        .runs(10)
        .expect("runs")
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(listed.len(), 2);
    assert_eq!(store.runs(1).expect("runs").len(), 1);
    // The failed finish_run wrote no audit entry: only the successful one is there.
    assert_eq!(store.audit_entries(None, None).expect("audit").len(), 1);
    assert!(store.audit_verify().expect("verify").is_ok());
}

#[test]
fn events_are_journaled_in_order_with_their_audit() {
    let dir = TempDir::new("events");
    let store = SqliteStore::open(dir.path()).expect("open");
    let id = new_run_id();
    store.create_run(&new_run(&id)).expect("create");
    let other = new_run_id();
    store.create_run(&new_run(&other)).expect("create other");

    let kinds = [
        "step.started",
        "step.finished",
        "step.started",
        "step.failed",
    ];
    for (i, kind) in kinds.iter().enumerate() {
        let a = audit(Some(&id), kind, i);
        let seq = store
            .record(&id, &event(&format!("s{i}"), kind), Some(&a))
            .expect("record");
        assert_eq!(seq, i64::try_from(i).expect("small") + 1);
    }
    // Seqs are per run.
    assert_eq!(
        store
            .record(&other, &event("x", "step.started"), None)
            .expect("record"),
        1
    );

    let events = store.events(&id).expect("events");
    assert_eq!(
        events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
        kinds
    );
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_eq!(events[3].step.as_deref(), Some("s3"));
    assert_eq!(events[3].attempt, Some(1));
    assert_eq!(events[3].data, json!({ "k": "step.failed" }));

    // Unknown run: RunNotFound, and neither the event nor its audit entry is written.
    let before = store.audit_entries(None, None).expect("audit").len();
    assert!(matches!(
        store.record(
            "missing",
            &event("x", "step.started"),
            Some(&audit(None, "x", 0))
        ),
        Err(StateError::RunNotFound { .. })
    ));
    assert_eq!(
        store.audit_entries(None, None).expect("audit").len(),
        before
    );

    let for_run = store.audit_entries(Some(&id), None).expect("audit");
    assert_eq!(for_run.len(), kinds.len());
    assert!(
        store
            .audit_entries(Some(&id), Some(i64::MAX))
            .expect("audit")
            .is_empty()
    );
    assert!(store.audit_verify().expect("verify").is_ok());
}

#[test]
fn logs_are_kept_per_step() {
    let dir = TempDir::new("logs");
    let store = SqliteStore::open(dir.path()).expect("open");
    let id = new_run_id();
    store.create_run(&new_run(&id)).expect("create");
    store
        .append_log(&id, "build", 1, "stdout", "compiling\n")
        .expect("log");
    store
        .append_log(&id, "deploy", 1, "stderr", "warning: ***\n")
        .expect("log");
    store
        .append_log(&id, "build", 2, "stdout", "done\n")
        .expect("log");
    let build: Vec<(u32, String)> = store
        .logs(&id, Some("build"))
        .expect("logs")
        .into_iter()
        .map(|l| (l.attempt, l.text))
        .collect();
    assert_eq!(
        build,
        [(1, "compiling\n".to_owned()), (2, "done\n".to_owned())]
    );
    assert_eq!(store.logs(&id, None).expect("logs").len(), 3);
    assert!(matches!(
        store.append_log("missing", "s", 1, "stdout", "x"),
        Err(StateError::RunNotFound { .. })
    ));
}

#[test]
fn approvals_from_another_process_are_seen() {
    let dir = TempDir::new("approvals");
    let engine = SqliteStore::open(dir.path()).expect("open engine");
    let id = new_run_id();
    engine.create_run(&new_run(&id)).expect("create");
    assert!(
        engine
            .approvals(&id, "deploy")
            .expect("approvals")
            .is_empty()
    );

    // `runbook approve` in another terminal: its own connection to the same file.
    let cli = SqliteStore::open(dir.path()).expect("open cli");
    cli.add_approval(
        &ApprovalInput {
            run_id: id.clone(),
            step: "deploy".to_owned(),
            approver: "bob".to_owned(),
            decision: true,
            via: "cli".to_owned(),
            comment: Some("LGTM".to_owned()),
        },
        &audit(Some(&id), "approval.grant", 0),
    )
    .expect("approve");

    let seen = engine.approvals(&id, "deploy").expect("approvals");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].approver, "bob");
    assert!(seen[0].decision);
    assert_eq!(seen[0].via, "cli");
    assert_eq!(seen[0].comment.as_deref(), Some("LGTM"));
    assert!(
        engine
            .approvals(&id, "other")
            .expect("approvals")
            .is_empty()
    );

    // Both processes keep extending one chain.
    engine
        .audit_append(&audit(Some(&id), "step.run", 1))
        .expect("append");
    let entries = cli.audit_entries(Some(&id), None).expect("audit");
    assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
    assert!(cli.audit_verify().expect("verify").is_ok());

    assert!(matches!(
        cli.add_approval(
            &ApprovalInput {
                run_id: "missing".to_owned(),
                step: "deploy".to_owned(),
                approver: "bob".to_owned(),
                decision: false,
                via: "cli".to_owned(),
                comment: None,
            },
            &audit(None, "approval.deny", 0),
        ),
        Err(StateError::RunNotFound { .. })
    ));
}

#[test]
fn locks_exclude_name_the_holder_and_fence() {
    let dir = TempDir::new("locks");
    let a = SqliteStore::open(dir.path()).expect("open a");
    let b = SqliteStore::open(dir.path()).expect("open b");

    let first = a
        .acquire_lock("prod-db", &holder("run-a"))
        .expect("acquire");
    match b.acquire_lock("prod-db", &holder("run-b")) {
        Err(err @ StateError::LockHeld { .. }) => {
            let message = err.to_string();
            assert!(message.contains("run-a"), "{message}");
            assert!(message.contains("alice@ops-1"), "{message}");
            let StateError::LockHeld {
                name,
                holder: held_by,
                since_ms,
            } = err
            else {
                unreachable!()
            };
            assert_eq!(name, "prod-db");
            assert_eq!(*held_by, holder("run-a"));
            assert!(since_ms > 0);
        }
        other => panic!("expected LockHeld, got {other:?}"),
    }
    // Even the same run cannot take it twice.
    assert!(matches!(
        a.acquire_lock("prod-db", &holder("run-a")),
        Err(StateError::LockHeld { .. })
    ));
    // Other names are independent.
    assert_eq!(
        b.acquire_lock("staging-db", &holder("run-b"))
            .expect("other lock")
            .token,
        1
    );

    // Only the holder may release; releasing a free lock is fine.
    assert!(matches!(
        b.release_lock("prod-db", "run-b"),
        Err(StateError::LockNotOwned { .. })
    ));
    a.release_lock("prod-db", "run-a").expect("release");
    a.release_lock("prod-db", "run-a").expect("release again");

    let second = b
        .acquire_lock("prod-db", &holder("run-b"))
        .expect("acquire");
    assert!(second.token > first.token);

    // run-b dies; an operator breaks its lock, which is audited with the previous holder.
    let broken = a
        .break_lock("prod-db", &audit(None, "lock.break", 0))
        .expect("break");
    assert_eq!(broken, Some(holder("run-b")));
    let entry = a
        .audit_entries(None, None)
        .expect("audit")
        .pop()
        .expect("entry");
    assert_eq!(entry.action, "lock.break");
    assert_eq!(entry.detail["previous_holder"]["run_id"], json!("run-b"));
    assert_eq!(
        a.break_lock("prod-db", &audit(None, "lock.break", 1))
            .expect("break free"),
        None
    );

    let third = a
        .acquire_lock("prod-db", &holder("run-c"))
        .expect("acquire");
    assert!(third.token > second.token);
    // The broken holder's late release does not free run-c's lock.
    assert!(matches!(
        b.release_lock("prod-db", "run-b"),
        Err(StateError::LockNotOwned { .. })
    ));
    assert!(a.audit_verify().expect("verify").is_ok());
}

#[test]
fn concurrent_writers_keep_one_chain() {
    let dir = TempDir::new("concurrent");
    let store = SqliteStore::open(dir.path()).expect("open");
    let id = new_run_id();
    store.create_run(&new_run(&id)).expect("create");
    std::thread::scope(|scope| {
        for t in 0..4 {
            let path = dir.path().to_owned();
            let id = id.clone();
            scope.spawn(move || {
                // Separate connections, as separate processes would have.
                let own = SqliteStore::open(&path).expect("open");
                for i in 0..25 {
                    own.record(
                        &id,
                        &event(&format!("t{t}"), "step.started"),
                        Some(&audit(Some(&id), "step.run", i)),
                    )
                    .expect("record");
                }
            });
        }
    });
    let events = store.events(&id).expect("events");
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=100).collect::<Vec<i64>>()
    );
    let report = store.audit_verify().expect("verify");
    assert_eq!(report.entries, 100);
    assert!(report.is_ok(), "{report:?}");
}

#[test]
fn intact_chain_verifies() {
    let (_dir, store) = store_with_audit("intact", 20);
    let report = store.audit_verify().expect("verify");
    assert_eq!(report.entries, 20);
    assert!(report.is_ok(), "{report:?}");
    let entries = store.audit_entries(None, None).expect("audit");
    assert_eq!(
        entries[0].prev_hash,
        "0000000000000000000000000000000000000000000000000000000000000000"
    );
    for pair in entries.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash);
    }

    // An empty log verifies too.
    let empty = TempDir::new("empty");
    let store = SqliteStore::open(empty.path()).expect("open");
    let report = store.audit_verify().expect("verify");
    assert_eq!(report.entries, 0);
    assert!(report.is_ok(), "{report:?}");
}

#[test]
fn audit_log_refuses_casual_edits() {
    let (dir, _store) = store_with_audit("guard", 3);
    let conn = Connection::open(dir.db()).expect("open raw");
    assert!(
        conn.execute("UPDATE audit_log SET outcome = 'ok' WHERE seq = 2", [])
            .is_err()
    );
    assert!(
        conn.execute("DELETE FROM audit_log WHERE seq = 3", [])
            .is_err()
    );
}

#[test]
fn tamper_modified_detail_is_detected() {
    let (dir, store) = store_with_audit("tamper-detail", 10);
    let conn = tamper(&dir);
    let detail: String = conn
        .query_row("SELECT detail FROM audit_log WHERE seq = 6", [], |r| {
            r.get(0)
        })
        .expect("read");
    // Flip one byte: `"n":6` becomes `"n":7`.
    let flipped = detail.replacen('6', "7", 1);
    assert_ne!(flipped, detail);
    conn.execute("UPDATE audit_log SET detail = ?1 WHERE seq = 6", [flipped])
        .expect("tamper");
    let (seq, reason) = first_bad(&store).expect("detected");
    assert_eq!(seq, 6);
    assert!(reason.contains("modified"), "{reason}");
}

#[test]
fn tamper_modified_outcome_is_detected() {
    let (dir, store) = store_with_audit("tamper-outcome", 10);
    tamper(&dir)
        .execute("UPDATE audit_log SET outcome = 'ko' WHERE seq = 3", [])
        .expect("tamper");
    assert_eq!(first_bad(&store).map(|b| b.0), Some(3));
}

#[test]
fn tamper_deleted_entry_is_detected() {
    let (dir, store) = store_with_audit("tamper-delete", 10);
    tamper(&dir)
        .execute("DELETE FROM audit_log WHERE seq = 4", [])
        .expect("tamper");
    let (seq, reason) = first_bad(&store).expect("detected");
    assert_eq!(seq, 4);
    assert!(reason.contains("missing"), "{reason}");

    // Deleting and renumbering the rest to close the gap breaks the chain at the same place.
    let (dir, store) = store_with_audit("tamper-renumber", 10);
    let conn = tamper(&dir);
    conn.execute("DELETE FROM audit_log WHERE seq = 4", [])
        .expect("tamper");
    for seq in 5..=10 {
        conn.execute(
            "UPDATE audit_log SET seq = ?1 WHERE seq = ?2",
            [seq - 1, seq],
        )
        .expect("renumber");
    }
    conn.execute("UPDATE audit_head SET seq = 9", [])
        .expect("head");
    assert_eq!(first_bad(&store).map(|b| b.0), Some(4));

    // Deleting the very first entry.
    let (dir, store) = store_with_audit("tamper-first", 5);
    tamper(&dir)
        .execute("DELETE FROM audit_log WHERE seq = 1", [])
        .expect("tamper");
    assert_eq!(first_bad(&store).map(|b| b.0), Some(1));
}

#[test]
fn tamper_swapped_entries_are_detected() {
    const SWAP_ALL: &str = "
        CREATE TEMP TABLE tmp AS SELECT * FROM audit_log WHERE seq IN (3, 7);
        UPDATE audit_log SET (at_ms, user, host, run_id, step, action, target, outcome, detail,
                              prev_hash, hash) =
            (SELECT at_ms, user, host, run_id, step, action, target, outcome, detail, prev_hash,
                    hash FROM tmp WHERE tmp.seq = 10 - audit_log.seq)
        WHERE seq IN (3, 7);";
    const SWAP_CONTENT: &str = "
        CREATE TEMP TABLE tmp AS SELECT * FROM audit_log WHERE seq IN (3, 7);
        UPDATE audit_log SET (at_ms, user, host, run_id, step, action, target, outcome, detail) =
            (SELECT at_ms, user, host, run_id, step, action, target, outcome, detail
             FROM tmp WHERE tmp.seq = 10 - audit_log.seq)
        WHERE seq IN (3, 7);";
    // Whole rows (hashes included) swapped, i.e. reordered: the link into seq 3 breaks.
    let (dir, store) = store_with_audit("tamper-swap", 10);
    tamper(&dir).execute_batch(SWAP_ALL).expect("tamper");
    let (seq, reason) = first_bad(&store).expect("detected");
    assert_eq!(seq, 3);
    assert!(reason.contains("prev_hash"), "{reason}");

    // Only the contents swapped, hashes left in place: seq 3's hash no longer matches.
    let (dir, store) = store_with_audit("tamper-swap-content", 10);
    tamper(&dir).execute_batch(SWAP_CONTENT).expect("tamper");
    let (seq, reason) = first_bad(&store).expect("detected");
    assert_eq!(seq, 3);
    assert!(reason.contains("hash mismatch"), "{reason}");
}

#[test]
fn tamper_truncated_tail_is_detected() {
    let (dir, store) = store_with_audit("tamper-tail", 10);
    tamper(&dir)
        .execute("DELETE FROM audit_log WHERE seq > 7", [])
        .expect("tamper");
    let (seq, reason) = first_bad(&store).expect("detected");
    assert_eq!(seq, 8);
    assert!(reason.contains("tail"), "{reason}");

    // Truncating everything is caught as well.
    let (dir, store) = store_with_audit("tamper-all", 4);
    tamper(&dir)
        .execute("DELETE FROM audit_log", [])
        .expect("tamper");
    let report = store.audit_verify().expect("verify");
    assert_eq!(report.entries, 0);
    assert_eq!(report.first_bad.map(|b| b.seq), Some(1));

    // Removing the head record is reported rather than silently accepted.
    let (dir, store) = store_with_audit("tamper-head", 4);
    tamper(&dir)
        .execute("DELETE FROM audit_head", [])
        .expect("tamper");
    assert!(!store.audit_verify().expect("verify").is_ok());
}

/// Write a small valid database, close it (checkpointing the WAL into the file), and return the
/// directory.
fn valid_db(tag: &str) -> TempDir {
    let (dir, store) = store_with_audit(tag, 300);
    let id = new_run_id();
    store.create_run(&new_run(&id)).expect("create");
    drop(store);
    assert!(!dir.path().join("runbook.db-wal").exists());
    dir
}

fn assert_corrupt(dir: &TempDir) {
    let before = std::fs::read(dir.db()).expect("read before");
    let err = SqliteStore::open(dir.path()).expect_err("corrupt database must not open");
    let message = err.to_string();
    println!("{message}");
    assert!(
        matches!(err, StateError::Corrupt { .. }),
        "expected Corrupt, got {err:?}"
    );
    assert!(message.contains("left untouched"), "{message}");
    assert!(message.contains("runbook.db"), "{message}");
    let after = std::fs::read(dir.db()).expect("read after");
    assert!(before == after, "the corrupt database file was modified");
}

#[test]
fn garbage_database_is_reported_and_left_alone() {
    let dir = TempDir::new("garbage");
    std::fs::create_dir_all(dir.path()).expect("mkdir");
    let garbage: Vec<u8> = (0..8192u32)
        .map(|i| u8::try_from((i * 7919 + 13) % 251).expect("byte"))
        .collect();
    std::fs::write(dir.db(), &garbage).expect("write garbage");
    assert_corrupt(&dir);
    let err = SqliteStore::open(dir.path()).expect_err("still corrupt");
    assert!(err.to_string().contains("file is not a database"), "{err}");
}

#[test]
fn truncated_database_is_reported_and_left_alone() {
    let dir = valid_db("truncated");
    let bytes = std::fs::read(dir.db()).expect("read");
    assert!(
        bytes.len() > 8192,
        "database too small to truncate usefully"
    );
    std::fs::write(dir.db(), &bytes[..bytes.len() / 2]).expect("truncate");
    assert_corrupt(&dir);
}

#[test]
fn database_from_a_newer_runbook_is_refused() {
    let dir = valid_db("newer");
    Connection::open(dir.db())
        .and_then(|c| c.pragma_update(None, "user_version", 99))
        .expect("bump version");
    assert!(matches!(
        SqliteStore::open(dir.path()),
        Err(StateError::SchemaTooNew { found: 99, .. })
    ));
}

#[test]
fn state_dir_is_created_private() {
    let dir = TempDir::new("mkdir");
    let nested = dir.path().join("a").join("state");
    let store = SqliteStore::open(&nested).expect("open");
    assert_eq!(store.path(), StateDir::db_path(&nested));
    assert!(store.path().exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&nested)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }
    assert_eq!(
        StateDir::resolve(Some(nested.clone())),
        nested,
        "--state-dir wins"
    );
}

/// Timing printout, not an assertion. Run with
/// `cargo test --release --test state_store -- --ignored --nocapture timing`.
#[test]
#[ignore = "timing printout; run explicitly in release"]
fn timing_report() {
    let dir = TempDir::new("timing");
    let store = SqliteStore::open(dir.path()).expect("open");
    let id = new_run_id();
    store.create_run(&new_run(&id)).expect("create");

    let transitions = 2_000u32;
    let start = Instant::now();
    for i in 0..transitions {
        let kind = if i % 2 == 0 {
            "step.started"
        } else {
            "step.finished"
        };
        store
            .record(
                &id,
                &event(&format!("s{}", i / 2), kind),
                Some(&audit(Some(&id), kind, i as usize)),
            )
            .expect("record");
    }
    let per = start.elapsed() / transitions;
    println!(
        "record (event + audit, one durable commit): {per:?} per transition, {:?} per step",
        per * 2
    );

    let extra = 48_000usize;
    let start = Instant::now();
    for i in 0..extra {
        store
            .audit_append(&audit(Some(&id), "step.run", i))
            .expect("append");
    }
    println!(
        "audit_append: {:?} per entry",
        start.elapsed() / u32::try_from(extra).expect("small")
    );

    let start = Instant::now();
    let report = store.audit_verify().expect("verify");
    let elapsed = start.elapsed();
    assert!(report.is_ok());
    #[allow(clippy::cast_precision_loss)]
    let rate = report.entries as f64 / elapsed.as_secs_f64();
    println!(
        "audit_verify: {} entries in {elapsed:?} = {rate:.0} entries/s",
        report.entries
    );

    drop(store);
    let size = std::fs::metadata(dir.db()).map_or(0, |m| m.len());
    let start = Instant::now();
    let _store = SqliteStore::open(dir.path()).expect("reopen");
    println!(
        "open (quick_check) of a {} KiB database: {:?}",
        size / 1024,
        start.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// Issue 14: lock takeover is a compare-and-swap; approvals are bound to the chain; checkpoints
// ---------------------------------------------------------------------------------------------

#[test]
fn a_dead_holders_lock_is_taken_over_by_exactly_one_contender() {
    let dir = TempDir::new("takeover");
    let store = SqliteStore::open(dir.path()).expect("open");
    let dead = holder("run-dead");
    store.acquire_lock("prod-db", &dead).expect("acquire");
    let before = store.audit_verify().expect("verify").entries;

    // Eight processes found the same dead holder and try to take the lock at once.
    let barrier = std::sync::Barrier::new(8);
    let results: Vec<Result<i64, StateError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let path = dir.path().to_owned();
                let dead = dead.clone();
                let barrier = &barrier;
                scope.spawn(move || {
                    let own = SqliteStore::open(&path).expect("open");
                    barrier.wait();
                    own.take_over_lock(
                        "prod-db",
                        &dead,
                        &holder(&format!("run-{i}")),
                        &audit(None, "lock.break", i),
                    )
                    .map(|g| g.token)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let won: Vec<usize> = (0..8).filter(|&i| results[i].is_ok()).collect();
    assert_eq!(won.len(), 1, "{results:?}");
    let winner = format!("run-{}", won[0]);
    assert_eq!(results[won[0]].as_ref().ok(), Some(&2));
    for r in &results {
        if let Err(e) = r {
            let StateError::LockTakenOver {
                name,
                dead: found,
                current,
                ..
            } = e
            else {
                panic!("expected LockTakenOver, got {e:?}");
            };
            assert_eq!(name, "prod-db");
            assert_eq!(**found, dead);
            assert_eq!(
                current.as_ref().map(|h| h.run_id.clone()),
                Some(winner.clone())
            );
            assert!(e.to_string().contains(&winner), "{e}");
        }
    }
    // One audit entry, naming the dead holder; the winner holds the lock.
    let entries = store.audit_entries(None, None).expect("audit");
    assert_eq!(entries.len() as u64, before + 1);
    let entry = entries.last().expect("entry");
    assert_eq!(entry.action, "lock.break");
    assert_eq!(entry.detail["previous_holder"]["run_id"], json!("run-dead"));
    match store.acquire_lock("prod-db", &holder("late")) {
        Err(StateError::LockHeld { holder: h, .. }) => assert_eq!(h.run_id, winner),
        other => panic!("expected LockHeld, got {other:?}"),
    }

    // Breaking on a stale observation is refused too, and changes nothing.
    let stale = store.break_lock_if_held_by("prod-db", &dead, &audit(None, "lock.break", 9));
    assert!(
        matches!(stale, Err(StateError::LockTakenOver { .. })),
        "{stale:?}"
    );
    store
        .break_lock_if_held_by("prod-db", &holder(&winner), &audit(None, "lock.break", 10))
        .expect("break the current holder");
    let free = store.take_over_lock(
        "prod-db",
        &holder(&winner),
        &holder("run-x"),
        &audit(None, "lock.break", 11),
    );
    assert!(
        matches!(&free, Err(StateError::LockTakenOver { current: None, .. })),
        "{free:?}"
    );
    assert!(store.audit_verify().expect("verify").is_ok());
}

fn approval(run_id: &str, approver: &str, decision: bool) -> ApprovalInput {
    ApprovalInput {
        run_id: run_id.to_owned(),
        step: "deploy".to_owned(),
        approver: approver.to_owned(),
        decision,
        via: "cli".to_owned(),
        comment: Some("checked the dashboard".to_owned()),
    }
}

#[test]
fn approvals_the_chain_does_not_back_never_count() {
    let dir = TempDir::new("bound-approvals");
    let store = SqliteStore::open(dir.path()).expect("open");
    let id = new_run_id();
    store.create_run(&new_run(&id)).expect("create");
    store
        .add_approval(
            &approval(&id, "bob", true),
            &audit(Some(&id), "approval", 0),
        )
        .expect("approve");
    let entry = store
        .audit_entries(Some(&id), None)
        .expect("audit")
        .pop()
        .expect("entry");
    assert_eq!(entry.detail["approval"]["approver"], json!("bob"));
    assert_eq!(entry.detail["n"], json!(0), "the caller's detail is kept");

    let raw = tamper(&dir);
    raw.execute(
        "INSERT INTO approvals (run_id, step, approver, decision, via, comment, at_ms) \
         VALUES (?1, 'deploy', 'mallory', 1, 'cli', NULL, 1)",
        [&id],
    )
    .expect("forge");
    let seen = store.approvals(&id, "deploy").expect("approvals");
    assert_eq!(
        seen.iter().map(|a| a.approver.as_str()).collect::<Vec<_>>(),
        ["bob"]
    );
    let report = store.audit_verify().expect("verify");
    assert!(report.first_bad.is_none(), "{report:?}");
    assert!(!report.is_ok());
    let bad = report.bad_approval.expect("the forged row is reported");
    assert_eq!((bad.id, bad.step.as_str()), (2, "deploy"));

    // Bob's decision turned into a denial is not his decision any more.
    raw.execute("DELETE FROM approvals WHERE approver = 'mallory'", [])
        .expect("remove the forgery");
    raw.execute("UPDATE approvals SET decision = 0", [])
        .expect("flip the decision");
    assert!(
        store
            .approvals(&id, "deploy")
            .expect("approvals")
            .is_empty()
    );
    assert!(store.audit_verify().expect("verify").bad_approval.is_some());
}

#[test]
fn approvals_from_before_the_binding_are_bound_on_upgrade() {
    let dir = TempDir::new("legacy-approvals");
    let id = new_run_id();
    {
        let store = SqliteStore::open(dir.path()).expect("open");
        store.create_run(&new_run(&id)).expect("create");
        store
            .add_approval(
                &approval(&id, "bob", true),
                &audit(Some(&id), "approval", 0),
            )
            .expect("approve");
        store
            .add_approval(
                &approval(&id, "carol", false),
                &audit(Some(&id), "approval", 1),
            )
            .expect("deny");
    }
    // Back to schema 1, as a database written by an older runbook.
    let raw = Connection::open(dir.db()).expect("open raw");
    raw.execute_batch(
        "ALTER TABLE approvals DROP COLUMN audit_seq; ALTER TABLE approvals DROP COLUMN \
         audit_hash; DROP TABLE audit_checkpoints; PRAGMA user_version = 1;",
    )
    .expect("downgrade");
    drop(raw);

    let store = SqliteStore::open(dir.path()).expect("upgrade");
    let seen = store.approvals(&id, "deploy").expect("approvals");
    assert_eq!(
        seen.iter()
            .map(|a| (a.approver.as_str(), a.decision))
            .collect::<Vec<_>>(),
        [("bob", true), ("carol", false)]
    );
    let bind = store
        .audit_entries(None, None)
        .expect("audit")
        .pop()
        .expect("entry");
    assert_eq!(bind.action, "approvals.bind");
    assert_eq!(bind.detail["approvals"].as_array().map(Vec::len), Some(2));
    let report = store.audit_verify().expect("verify");
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.approvals, 2);
}

#[test]
fn checkpoints_are_signed_every_n_entries_and_at_run_end() {
    use runbook::state::signing;
    let keys = TempDir::new("checkpoint-keys");
    std::fs::create_dir_all(keys.path()).expect("key dir");
    let generated = signing::generate_key(&keys.path().join("audit.key")).expect("keygen");
    let dir = TempDir::new("checkpoints");
    let signer =
        runbook::state::AuditSigner::load(&generated.private, dir.path(), 5).expect("load the key");
    let store = SqliteStore::open(dir.path())
        .expect("open")
        .with_signer(signer);
    let id = new_run_id();
    store.create_run(&new_run(&id)).expect("create");
    for i in 0..12 {
        store
            .record(
                &id,
                &event("s", "step.started"),
                Some(&audit(Some(&id), "step.run", i)),
            )
            .expect("record");
    }
    store
        .finish_run(
            &id,
            RunStatus::Succeeded,
            &audit(Some(&id), "run.finish", 99),
        )
        .expect("finish");
    let report = store.audit_verify().expect("verify");
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(
        report.checkpoints.iter().map(|c| c.seq).collect::<Vec<_>>(),
        [5, 10, 13]
    );
    let auth = signing::authenticate(&report, std::slice::from_ref(&generated.key));
    assert_eq!(auth.problem, None);
    assert_eq!((auth.valid, auth.unsigned_tail), (3, 0));

    // Another key does not vouch for them.
    let other = signing::generate_key(&keys.path().join("other.key")).expect("keygen");
    let auth = signing::authenticate(&report, std::slice::from_ref(&other.key));
    assert!(
        auth.problem
            .as_deref()
            .is_some_and(|p| p.contains("not one of the given public keys")),
        "{auth:?}"
    );

    // A fake checkpoint row far ahead does not stop the next real one, and is reported.
    let raw = tamper(&dir);
    raw.execute(
        "INSERT INTO audit_checkpoints (seq, hash, at_ms, every, key_id, signature) \
         VALUES (1000, 'x', 0, 5, ?1, 'y')",
        [generated.key.key_id()],
    )
    .expect("fake checkpoint");
    for i in 0..5 {
        store
            .audit_append(&audit(Some(&id), "step.run", 100 + i))
            .expect("append");
    }
    let report = store.audit_verify().expect("verify");
    assert!(report.checkpoints.iter().any(|c| c.seq == 18), "{report:?}");
    let auth = signing::authenticate(&report, std::slice::from_ref(&generated.key));
    assert!(
        auth.problem
            .as_deref()
            .is_some_and(|p| p.contains("invalid signature")),
        "{auth:?}"
    );

    // Signing on demand (`audit anchor`) never replaces a checkpoint it did not make.
    store
        .audit_append(&audit(Some(&id), "step.run", 200))
        .expect("append");
    raw.execute(
        "INSERT INTO audit_checkpoints (seq, hash, at_ms, every, key_id, signature) \
         VALUES (19, 'x', 0, 5, 'mallory', 'y')",
        [],
    )
    .expect("forged checkpoint at the head");
    assert!(store.checkpoint_now().is_err());
    let kept: String = raw
        .query_row(
            "SELECT key_id FROM audit_checkpoints WHERE seq = 19",
            [],
            |r| r.get(0),
        )
        .expect("still there");
    assert_eq!(kept, "mallory");
}

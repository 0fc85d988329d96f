//! Black-box tests of issue 14: an audit log no one can rewrite unnoticed, and exclusive lock
//! takeover.
//!
//! The attacker here can write the state database (as any local user with access to the state
//! directory can) but does not have the audit key. Each attack is done the way such an attacker
//! would: SQL straight into the `SQLite` file, the append-only triggers dropped, the whole hash
//! chain recomputed from the documented canonical form (re-implemented below, independently of
//! the engine's code) and `audit_head` moved along. The hash chain alone cannot catch that; the
//! signed checkpoints, anchors and the approvals' binding to the chain must.
//!
//! The lock races start two real engine processes at the same instant, many times over, and
//! require that exactly one proceeds.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};
use support::{RunOutput, Runbook, TempDir, process_alive};

/// The user every engine and CLI invocation runs as (`$USER`).
const USER: &str = "operator";

/// Longest a background engine may take before the test gives up on it.
const BG_LIMIT: Duration = Duration::from_secs(30);

/// A fixture under `tests/fixtures/durable`.
fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/durable")
        .join(name)
        .to_str()
        .expect("utf-8 fixture path")
        .to_owned()
}

/// `runbook ARGS...` on the state directory `state`, as [`USER`], without an audit key.
fn cli(state: &TempDir, args: &[&str]) -> Runbook {
    Runbook::new(args.iter().map(|a| (*a).to_owned()))
        .env("RUNBOOK_STATE_DIR", &state.str())
        .env("USER", USER)
        // Empty counts as unset; `keyed` sets it again (the later value wins).
        .env("RUNBOOK_AUDIT_KEY", "")
        .env("RUNBOOK_AUDIT_CHECKPOINT_EVERY", "")
}

/// [`cli`] with the audit key configured through `RUNBOOK_AUDIT_KEY`.
fn keyed(state: &TempDir, key: &Key, args: &[&str]) -> Runbook {
    cli(state, args).env("RUNBOOK_AUDIT_KEY", key.private.to_str().expect("utf-8"))
}

#[track_caller]
fn assert_no_panic(out: &RunOutput) {
    assert!(
        !out.stderr.contains("panicked"),
        "the engine panicked\n{}",
        out.dump()
    );
}

/// An audit key made by `runbook audit keygen`, in its own directory (outside any state dir).
struct Key {
    _dir: TempDir,
    private: PathBuf,
    public: PathBuf,
}

impl Key {
    fn public_str(&self) -> &str {
        self.public.to_str().expect("utf-8 path")
    }
}

#[track_caller]
fn keygen(tag: &str) -> Key {
    let dir = TempDir::new(tag);
    let private = dir.join("audit.key");
    let out = Runbook::new([
        "audit".to_owned(),
        "keygen".to_owned(),
        "--out".to_owned(),
        private.to_str().expect("utf-8").to_owned(),
    ])
    .run();
    out.assert_code(0);
    assert!(
        out.stdout.contains("-----BEGIN PUBLIC KEY-----"),
        "{}",
        out.dump()
    );
    let public = dir.join("audit.key.pub");
    assert!(public.is_file(), "no public key written\n{}", out.dump());
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&private)
            .expect("private key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the private key is not private");
    }
    Key {
        _dir: dir,
        private,
        public,
    }
}

/// A copy of `state`'s database (the original stays as it was) with the append-only triggers
/// dropped, as an attacker would, and `tamper` applied.
fn tampered(state: &TempDir, tag: &str, tamper: impl FnOnce(&rusqlite::Connection)) -> TempDir {
    let copy = TempDir::new(tag);
    for suffix in ["", "-wal"] {
        let from = state.join(&format!("runbook.db{suffix}"));
        if from.exists() {
            std::fs::copy(&from, copy.join(&format!("runbook.db{suffix}"))).expect("copy db");
        }
    }
    let conn = rusqlite::Connection::open(copy.join("runbook.db")).expect("open db");
    conn.execute_batch(
        "DROP TRIGGER IF EXISTS audit_log_no_update; DROP TRIGGER IF EXISTS audit_log_no_delete;",
    )
    .expect("drop triggers");
    tamper(&conn);
    drop(conn);
    copy
}

/// One field of the canonical form: absent, or present with its length.
fn field(h: &mut Sha256, value: Option<&str>) {
    match value {
        None => h.update([0u8]),
        Some(text) => {
            h.update([1u8]);
            h.update((text.len() as u64).to_be_bytes());
            h.update(text.as_bytes());
        }
    }
}

fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn from_hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Recompute every entry's `prev_hash` and `hash` from `from_seq` on, as documented in
/// `engine/state/audit.rs`, and move `audit_head` to the last entry: the attack that passes a
/// hash-chain check.
fn rechain(conn: &rusqlite::Connection, from_seq: i64) {
    type Row = (
        i64,
        i64,
        String,
        String,
        Option<String>,
        Option<String>,
        String,
        Option<String>,
        String,
        String,
        String,
    );
    let rows: Vec<Row> = {
        let mut stmt = conn
            .prepare(
                "SELECT seq, at_ms, user, host, run_id, step, action, target, outcome, detail, \
                 hash FROM audit_log ORDER BY seq",
            )
            .expect("prepare");
        stmt.query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
                r.get(9)?,
                r.get(10)?,
            ))
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
    };
    let mut prev = vec![0u8; 32];
    let mut last = (0, to_hex(&prev));
    for (seq, at_ms, user, host, run_id, step, action, target, outcome, detail, hash) in rows {
        if seq < from_seq {
            prev = from_hex(&hash);
            last = (seq, hash);
            continue;
        }
        let mut h = Sha256::new();
        h.update(&prev);
        h.update(b"runbook-audit-v1\0");
        h.update(seq.to_be_bytes());
        h.update(at_ms.to_be_bytes());
        field(&mut h, Some(&user));
        field(&mut h, Some(&host));
        field(&mut h, run_id.as_deref());
        field(&mut h, step.as_deref());
        field(&mut h, Some(&action));
        field(&mut h, target.as_deref());
        field(&mut h, Some(&outcome));
        field(&mut h, Some(&detail));
        let new: Vec<u8> = h.finalize().to_vec();
        conn.execute(
            "UPDATE audit_log SET prev_hash = ?1, hash = ?2 WHERE seq = ?3",
            rusqlite::params![to_hex(&prev), to_hex(&new), seq],
        )
        .expect("rechain entry");
        last = (seq, to_hex(&new));
        prev = new;
    }
    conn.execute(
        "UPDATE audit_head SET seq = ?1, hash = ?2 WHERE id = 1",
        rusqlite::params![last.0, last.1],
    )
    .expect("move the head");
}

/// The number of audit entries.
fn entries(state: &TempDir) -> i64 {
    rusqlite::Connection::open(state.join("runbook.db"))
        .expect("open db")
        .query_row("SELECT COALESCE(MAX(seq), 0) FROM audit_log", [], |r| {
            r.get(0)
        })
        .expect("count entries")
}

/// The seqs of the stored checkpoints.
fn checkpoints(state: &TempDir) -> Vec<i64> {
    let conn = rusqlite::Connection::open(state.join("runbook.db")).expect("open db");
    let mut stmt = conn
        .prepare("SELECT seq FROM audit_checkpoints ORDER BY seq")
        .expect("checkpoints table");
    stmt.query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

/// Change entry `seq`'s outcome, as someone covering their tracks would.
fn falsify_outcome(conn: &rusqlite::Connection, seq: i64) {
    let changed = conn
        .execute(
            "UPDATE audit_log SET outcome = 'succeeded', user = 'someone-else' WHERE seq = ?1",
            [seq],
        )
        .expect("falsify");
    assert_eq!(changed, 1);
}

/// `audit verify ARGS` exits 7 and says `needle`.
#[track_caller]
fn assert_rejected(out: &RunOutput, needle: &str) {
    assert_no_panic(out);
    assert_eq!(out.code, Some(7), "expected exit 7\n{}", out.dump());
    assert!(
        out.stderr.contains(needle),
        "stderr does not say {needle:?}\n{}",
        out.dump()
    );
}

// ---------------------------------------------------------------------------------------------
// 1. Signed checkpoints
// ---------------------------------------------------------------------------------------------

#[test]
fn a_rewritten_and_rehashed_log_passes_the_chain_but_not_the_signature() {
    let key = keygen("rewrite-key");
    let state = TempDir::new("rewrite-state");
    let out_dir = TempDir::new("rewrite-out");
    keyed(
        &state,
        &key,
        &[
            "exec",
            &fixture("retry.yaml"),
            "-p",
            &format!("dir={}", out_dir.str()),
        ],
    )
    .run()
    .assert_code(0);
    let n = entries(&state);
    assert!(n >= 8, "expected a few audit entries, found {n}");
    // A run end signs the head.
    assert_eq!(checkpoints(&state).last(), Some(&n));
    let good = cli(
        &state,
        &["audit", "verify", "--public-key", key.public_str()],
    )
    .run();
    good.assert_code(0);
    assert!(
        good.stdout.contains(&format!("signed up to entry #{n}"))
            && good.stdout.contains("unsigned tail: 0 entries"),
        "{}",
        good.dump()
    );

    // Rewrite entry 3 and recompute the chain and the head.
    let rewritten = tampered(&state, "rewrite-attack", |conn| {
        falsify_outcome(conn, 3);
        rechain(conn, 3);
    });
    // The hash chain alone is fooled (the reproduced case), and says what it cannot prove.
    let fooled = cli(&rewritten, &["audit", "verify"]).run();
    fooled.assert_code(0);
    assert!(
        fooled.stdout.contains("integrity, not authenticity"),
        "{}",
        fooled.dump()
    );
    // The signature is not.
    let caught = cli(
        &rewritten,
        &["audit", "verify", "--public-key", key.public_str()],
    )
    .run();
    assert_rejected(
        &caught,
        &format!("entry #{n} does not match its signed checkpoint"),
    );
    // The engine's own key, configured, catches it as well.
    let caught = keyed(&rewritten, &key, &["audit", "verify"]).run();
    assert_rejected(&caught, "does not match its signed checkpoint");

    // The attacker's next moves: drop the checkpoints, or sign with a key of their own.
    let unsigned = tampered(&rewritten, "rewrite-unsigned", |conn| {
        conn.execute("DELETE FROM audit_checkpoints", [])
            .expect("delete checkpoints");
    });
    let caught = cli(
        &unsigned,
        &["audit", "verify", "--public-key", key.public_str()],
    )
    .run();
    assert_rejected(&caught, "covered by a signed checkpoint");
    let mallory = keygen("rewrite-mallory");
    keyed(&unsigned, &mallory, &["audit", "anchor"])
        .run()
        .assert_code(0);
    let caught = cli(
        &unsigned,
        &["audit", "verify", "--public-key", key.public_str()],
    )
    .run();
    assert_rejected(&caught, "which is not one of the given public keys");
    // A checkpoint row edited to match the rewrite no longer verifies.
    let edited = tampered(&rewritten, "rewrite-edit-checkpoint", |conn| {
        conn.execute(
            "UPDATE audit_checkpoints SET hash = (SELECT hash FROM audit_head) WHERE seq = ?1",
            [n],
        )
        .expect("edit checkpoint");
    });
    let caught = cli(
        &edited,
        &["audit", "verify", "--public-key", key.public_str()],
    )
    .run();
    assert_rejected(&caught, "invalid signature");

    // The original is untouched and authentic.
    cli(
        &state,
        &["audit", "verify", "--public-key", key.public_str()],
    )
    .run()
    .assert_code(0);
}

#[test]
fn truncating_signed_entries_fails_verification() {
    let key = keygen("truncate-key");
    let state = TempDir::new("truncate-state");
    let out_dir = TempDir::new("truncate-out");
    let book = fixture("retry.yaml");
    let dir = format!("dir={}", out_dir.str());
    for _ in 0..2 {
        keyed(&state, &key, &["exec", &book, "-p", &dir])
            .run()
            .assert_code(0);
    }
    let marks = checkpoints(&state);
    let n = entries(&state);
    assert!(marks.len() >= 2, "{marks:?}");
    let first_run_end = marks[0];
    assert!(first_run_end < n - 2);
    // Remove the second run's last entries (keeping a consistent head, so the chain verifies).
    let keep = n - 2;
    let truncated = tampered(&state, "truncate-attack", |conn| {
        conn.execute("DELETE FROM audit_log WHERE seq > ?1", [keep])
            .expect("truncate");
        rechain(conn, keep + 1);
    });
    cli(&truncated, &["audit", "verify"]).run().assert_code(0);
    let caught = cli(
        &truncated,
        &["audit", "verify", "--public-key", key.public_str()],
    )
    .run();
    assert_rejected(
        &caught,
        &format!("the log ends at entry #{keep} but entry #{n} was signed"),
    );
}

#[test]
fn an_anchor_catches_a_rollback_and_a_rewrite() {
    let key = keygen("anchor-key");
    let state = TempDir::new("anchor-state");
    let out_dir = TempDir::new("anchor-out");
    let book = fixture("retry.yaml");
    let dir = format!("dir={}", out_dir.str());
    keyed(&state, &key, &["exec", &book, "-p", &dir])
        .run()
        .assert_code(0);
    let anchored = keyed(&state, &key, &["audit", "anchor"]).run();
    anchored.assert_code(0);
    let line = anchored.stdout.trim().to_owned();
    let anchor: Value = serde_json::from_str(&line).expect("one JSON line");
    let a = anchor["seq"].as_i64().expect("seq");
    assert_eq!(a, entries(&state));
    assert_eq!(anchor["hash"].as_str().map(str::len), Some(64), "{anchor}");
    assert_eq!(
        anchor["signature"].as_str().map(str::len),
        Some(128),
        "{anchor}"
    );
    // Without the key, `anchor` prints the newest stored checkpoint: the same line.
    let again = cli(&state, &["audit", "anchor"]).run();
    again.assert_code(0);
    assert_eq!(again.stdout.trim(), line);

    keyed(&state, &key, &["exec", &book, "-p", &dir])
        .run()
        .assert_code(0);
    let fine = cli(
        &state,
        &[
            "audit",
            "verify",
            "--public-key",
            key.public_str(),
            "--expect-head",
            &line,
        ],
    )
    .run();
    fine.assert_code(0);
    assert!(
        fine.stdout
            .contains(&format!("expected head found: entry #{a}")),
        "{}",
        fine.dump()
    );

    // Rollback: the second run's entries and checkpoints removed, the head moved back. Only the
    // witness's head can tell (its checkpoint is still there and valid).
    let rolled_back = tampered(&state, "anchor-rollback", |conn| {
        conn.execute("DELETE FROM audit_log WHERE seq > ?1", [a - 1])
            .expect("roll back");
        conn.execute("DELETE FROM audit_checkpoints WHERE seq > ?1", [a - 1])
            .expect("drop checkpoints");
        rechain(conn, a);
    });
    cli(&rolled_back, &["audit", "verify"]).run().assert_code(0);
    let caught = cli(&rolled_back, &["audit", "verify", "--expect-head", &line]).run();
    assert_rejected(&caught, &format!("before the expected head #{a}"));

    // Rewrite below the anchor; the SEQ:HASH form of the witness's record is enough.
    let short = format!("{a}:{}", anchor["hash"].as_str().expect("hash"));
    let rewritten = tampered(&state, "anchor-rewrite", |conn| {
        falsify_outcome(conn, 2);
        rechain(conn, 2);
        conn.execute("DELETE FROM audit_checkpoints", [])
            .expect("drop checkpoints");
    });
    cli(&rewritten, &["audit", "verify"]).run().assert_code(0);
    let caught = cli(&rewritten, &["audit", "verify", "--expect-head", &short]).run();
    assert_rejected(
        &caught,
        &format!("entry #{a} no longer has the expected hash"),
    );

    // A witness line whose signature was altered is not trusted.
    let mut forged_anchor = anchor.clone();
    let sig = anchor["signature"].as_str().expect("signature");
    let flipped = if sig.starts_with('0') { "1" } else { "0" };
    forged_anchor["signature"] = Value::String(format!("{flipped}{}", &sig[1..]));
    let caught = cli(
        &state,
        &[
            "audit",
            "verify",
            "--public-key",
            key.public_str(),
            "--expect-head",
            &forged_anchor.to_string(),
        ],
    )
    .run();
    assert_rejected(&caught, "none of the given public keys verifies");

    // Nonsense is a usage error, not a verdict.
    let bad = cli(&state, &["audit", "verify", "--expect-head", "yesterday"]).run();
    assert_no_panic(&bad);
    bad.assert_code(2);
    assert!(bad.stderr.contains("SEQ:HASH"), "{}", bad.dump());
}

#[test]
fn the_engine_does_not_sign_a_rewritten_log_blindly() {
    let key = keygen("blind-key");
    let state = TempDir::new("blind-state");
    let out_dir = TempDir::new("blind-out");
    let book = fixture("retry.yaml");
    let dir = format!("dir={}", out_dir.str());
    // A checkpoint every 3 entries (and at the run end).
    keyed(&state, &key, &["exec", &book, "-p", &dir])
        .env("RUNBOOK_AUDIT_CHECKPOINT_EVERY", "3")
        .run()
        .assert_code(0);
    let marks = checkpoints(&state);
    assert!(marks.len() >= 3, "expected periodic checkpoints: {marks:?}");
    // Rewrite, drop every checkpoint, and let the engine run again with its key.
    let attacked = tampered(&state, "blind-attack", |conn| {
        falsify_outcome(conn, 2);
        rechain(conn, 2);
        conn.execute("DELETE FROM audit_checkpoints", [])
            .expect("drop checkpoints");
    });
    let next = keyed(&attacked, &key, &["exec", &book, "-p", &dir])
        .env("RUNBOOK_AUDIT_CHECKPOINT_EVERY", "3")
        .run();
    next.assert_code(0);
    assert!(
        next.stderr.contains("warning: not signing the audit log"),
        "{}",
        next.dump()
    );
    assert!(checkpoints(&attacked).is_empty());
    let caught = cli(
        &attacked,
        &["audit", "verify", "--public-key", key.public_str()],
    )
    .run();
    assert_rejected(&caught, "covered by a signed checkpoint");
}

#[test]
fn verify_without_a_key_says_it_proves_integrity_not_authenticity() {
    let state = TempDir::new("nokey-state");
    let out_dir = TempDir::new("nokey-out");
    cli(
        &state,
        &[
            "exec",
            &fixture("retry.yaml"),
            "-p",
            &format!("dir={}", out_dir.str()),
        ],
    )
    .run()
    .assert_code(0);
    let out = cli(&state, &["audit", "verify"]).run();
    out.assert_code(0);
    assert!(out.stdout.contains("audit log intact"), "{}", out.dump());
    assert!(
        out.stdout
            .contains("this proves integrity, not authenticity"),
        "{}",
        out.dump()
    );
    // No key, no checkpoint: nothing to anchor, and the help says how to get one.
    let anchor = cli(&state, &["audit", "anchor"]).run();
    assert_no_panic(&anchor);
    anchor.assert_code(6);
    assert!(anchor.stderr.contains("audit keygen"), "{}", anchor.dump());
}

#[test]
fn audit_keys_are_refused_where_others_could_use_them() {
    let state = TempDir::new("keyrules-state");
    let out_dir = TempDir::new("keyrules-out");
    let book = fixture("retry.yaml");
    let dir = format!("dir={}", out_dir.str());
    let key = keygen("keyrules-key");

    // Never overwritten.
    let again = Runbook::new([
        "audit".to_owned(),
        "keygen".to_owned(),
        "--out".to_owned(),
        key.private.to_str().expect("utf-8").to_owned(),
    ])
    .run();
    assert_no_panic(&again);
    again.assert_code(2);
    assert!(again.stderr.contains("already exists"), "{}", again.dump());

    // Not into the state directory.
    let inside = state.join("audit.key");
    let refused = cli(
        &state,
        &["audit", "keygen", "--out", inside.to_str().expect("utf-8")],
    )
    .run();
    assert_no_panic(&refused);
    refused.assert_code(2);
    assert!(
        refused.stderr.contains("state directory"),
        "{}",
        refused.dump()
    );
    assert!(!inside.exists());

    // A key readable by others is refused, naming the fix.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key.private, std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
    }
    let open = keyed(&state, &key, &["exec", &book, "-p", &dir]).run();
    assert_no_panic(&open);
    open.assert_code(6);
    assert!(
        open.stderr.contains("mode is 0644") && open.stderr.contains("chmod 600"),
        "{}",
        open.dump()
    );
    assert!(!out_dir.join("lines").exists(), "a step ran");

    // A key copied into the state directory is refused.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::copy(&key.private, &inside).expect("copy key");
        std::fs::set_permissions(&inside, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let open = cli(&state, &["exec", &book, "-p", &dir])
        .env("RUNBOOK_AUDIT_KEY", inside.to_str().expect("utf-8"))
        .run();
    assert_no_panic(&open);
    open.assert_code(6);
    assert!(
        open.stderr.contains("inside the state directory"),
        "{}",
        open.dump()
    );

    // Not a key at all.
    let garbage = TempDir::new("keyrules-garbage");
    let path = garbage.write("audit.key", "hello\n");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let open = cli(&state, &["runs"])
        .env("RUNBOOK_AUDIT_KEY", path.to_str().expect("utf-8"))
        .run();
    assert_no_panic(&open);
    open.assert_code(6);
    assert!(
        open.stderr.contains("not an Ed25519 private key"),
        "{}",
        open.dump()
    );
    let public = cli(
        &state,
        &[
            "audit",
            "verify",
            "--public-key",
            path.to_str().expect("utf-8"),
        ],
    )
    .run();
    assert_no_panic(&public);
    public.assert_code(2);
    assert!(
        public.stderr.contains("not an Ed25519 public key"),
        "{}",
        public.dump()
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Approvals are bound to the chain
// ---------------------------------------------------------------------------------------------

/// A `runbook` process running in the background, its output collected line by line.
struct Bg {
    child: Child,
    started: Instant,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
}

fn collect_lines(
    stream: impl Read + Send + 'static,
    sink: Arc<Mutex<Vec<String>>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            sink.lock().expect("output lines").push(line);
        }
    })
}

impl Bg {
    fn spawn(state: &TempDir, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_runbook"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("NO_COLOR", "1")
            .env("RUNBOOK_STATE_DIR", state.path())
            .env("USER", USER)
            .env_remove("RUNBOOK_AUDIT_KEY")
            .spawn()
            .expect("spawn runbook");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect_lines(child.stdout.take().expect("stdout"), stdout.clone()),
            collect_lines(child.stderr.take().expect("stderr"), stderr.clone()),
        ];
        Self {
            child,
            started: Instant::now(),
            stdout,
            stderr,
            readers,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn events(&self) -> Vec<Value> {
        self.stdout
            .lock()
            .expect("stdout lines")
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.get("event").is_some())
            .collect()
    }

    fn dump(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout.lock().expect("stdout").join("\n"),
            self.stderr.lock().expect("stderr").join("\n")
        )
    }

    /// Wait for an event of a kind (about a step, if given); fail if the process exits first.
    #[track_caller]
    fn wait_event(&mut self, kind: &str, step: Option<&str>) {
        let deadline = Instant::now() + BG_LIMIT;
        loop {
            let seen = self
                .events()
                .iter()
                .any(|e| e["event"] == kind && step.is_none_or(|s| e["step"] == s));
            if seen {
                return;
            }
            let exited = !matches!(self.child.try_wait(), Ok(None));
            assert!(
                !exited && Instant::now() < deadline,
                "no event {kind} {step:?}\n{}",
                self.dump()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn run_id(&mut self) -> String {
        self.wait_event("run_started", None);
        self.events()
            .iter()
            .find(|e| e["event"] == "run_started")
            .and_then(|e| e["run_id"].as_str())
            .expect("run id")
            .to_owned()
    }

    fn finish(mut self) -> RunOutput {
        let status = loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                break s;
            }
            if self.started.elapsed() > BG_LIMIT {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("runbook did not finish\n{}", self.dump());
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let stdout = self.stdout.lock().expect("stdout").join("\n") + "\n";
        let stderr = self.stderr.lock().expect("stderr").join("\n") + "\n";
        let events = stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.get("event").is_some())
            .collect();
        RunOutput {
            code: status.code(),
            elapsed: self.started.elapsed(),
            events,
            stdout_raw: stdout.clone().into_bytes(),
            stderr_raw: stderr.clone().into_bytes(),
            stdout,
            stderr,
        }
    }

    /// `kill -9` the engine and every process it started, and wait until they are gone.
    fn crash(mut self) {
        let pid = self.pid();
        signal("STOP", &pid.to_string());
        let victims = descendants(pid);
        signal("KILL", &pid.to_string());
        for v in &victims {
            signal("KILL", &v.to_string());
            signal("KILL", &format!("-{v}"));
        }
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(5);
        while victims.iter().any(|&v| process_alive(v)) {
            assert!(Instant::now() < deadline, "survivors: {victims:?}");
            std::thread::sleep(Duration::from_millis(2));
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

/// Send a signal with `kill(1)` (`target` is a pid, or `-PGID` for a process group).
fn signal(sig: &str, target: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), "--", target])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Every descendant of `root`, from the parent links in `/proc/*/stat`.
fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some(parent) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok())
        {
            parent_of.push((pid, parent));
        }
    }
    let mut found = vec![root];
    let mut k = 0;
    while k < found.len() {
        let p = found[k];
        found.extend(
            parent_of
                .iter()
                .filter(|&&(_, pp)| pp == p)
                .map(|&(c, _)| c),
        );
        k += 1;
    }
    found.remove(0);
    found
}

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms fit")
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn approvals_written_into_the_table_never_count_and_fail_verification() {
    let state = TempDir::new("approvals-state");
    let out_dir = TempDir::new("approvals-out");
    let mut bg = Bg::spawn(
        &state,
        &[
            "exec",
            &fixture("gated.yaml"),
            "-p",
            &format!("dir={}", out_dir.str()),
            "--output",
            "json",
        ],
    );
    let run_id = bg.run_id();
    bg.wait_event("approval_waiting", Some("go"));

    // Mallory writes an approval straight into the table the engine polls.
    {
        let conn = rusqlite::Connection::open(state.join("runbook.db")).expect("open db");
        conn.busy_timeout(Duration::from_secs(5)).expect("timeout");
        conn.execute(
            "INSERT INTO approvals (run_id, step, approver, decision, via, comment, at_ms) \
             VALUES (?1, 'go', 'mallory', 1, 'cli', 'lgtm', ?2)",
            rusqlite::params![run_id, now_ms()],
        )
        .expect("forge an approval");
    }
    // The engine polls every 250 ms: well past a few polls it still waits.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        lines_of(&out_dir.join("lines")),
        ["prepare"],
        "{}",
        bg.dump()
    );
    assert!(
        !bg.events()
            .iter()
            .any(|e| e["event"] == "approval" && e["approver"] == "mallory"),
        "the forged approval counted\n{}",
        bg.dump()
    );
    let forged = cli(&state, &["audit", "verify"]).run();
    assert_rejected(&forged, "written into the approvals table directly");
    assert!(forged.stderr.contains("approval #1"), "{}", forged.dump());

    // A real approval goes through.
    cli(&state, &["approve", &run_id, "go", "--as", "alice"])
        .run()
        .assert_code(0);
    let done = bg.finish();
    done.assert_code(0);
    assert_eq!(lines_of(&out_dir.join("lines")), ["prepare", "act"]);

    // Without the forged row, the log verifies; then each edit of the real decision is caught.
    let clean = tampered(&state, "approvals-clean", |conn| {
        conn.execute("DELETE FROM approvals WHERE approver = 'mallory'", [])
            .expect("remove the forgery");
    });
    let ok = cli(&clean, &["audit", "verify"]).run();
    ok.assert_code(0);
    assert!(
        ok.stdout.contains("1 approval decision bound to them"),
        "{}",
        ok.dump()
    );
    let edited = tampered(&clean, "approvals-edited", |conn| {
        conn.execute("UPDATE approvals SET approver = 'mallory'", [])
            .expect("edit the approver");
    });
    assert_rejected(
        &cli(&edited, &["audit", "verify"]).run(),
        "the approvals table was edited",
    );
    let deleted = tampered(&clean, "approvals-deleted", |conn| {
        conn.execute("DELETE FROM approvals", []).expect("delete");
    });
    assert_rejected(
        &cli(&deleted, &["audit", "verify"]).run(),
        "the approvals table no longer holds it",
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Exclusive lock takeover
// ---------------------------------------------------------------------------------------------

/// How many times each race is run.
const TRIALS: usize = 8;

/// A runbook whose one step is idempotent and slow (30 s) until the file `fast` exists in the
/// output directory, then takes a second: a run killed in it is resumed by re-running it.
fn slow_runbook(dir: &TempDir) -> PathBuf {
    dir.write(
        "slow.yaml",
        "runbook: slow\nparams:\n  dir:\n    type: string\nsteps:\n  - id: work\n    \
         idempotent: true\n    run: \"echo $$ >> {{ params.dir }}/starts; if [ -f {{ params.dir \
         }}/fast ]; then sleep 1; else sleep 30; fi\"\n",
    )
}

/// Two processes started at the same instant; their outputs.
fn race(state: &TempDir, a: &[&str], b: &[&str]) -> (RunOutput, u32, RunOutput, u32) {
    let first = Bg::spawn(state, a);
    let second = Bg::spawn(state, b);
    let (p1, p2) = (first.pid(), second.pid());
    (first.finish(), p1, second.finish(), p2)
}

/// Exactly one of two racers exited 0; the other exited 6 naming the winner (pid), or saying
/// another process resumed the run (when the winner had finished already). Returns whether the
/// loser named the winner's pid.
#[track_caller]
fn exactly_one_proceeded(trial: usize, (a, pa, b, pb): &(RunOutput, u32, RunOutput, u32)) -> bool {
    assert_no_panic(a);
    assert_no_panic(b);
    let (winner, loser) = match (a.code, b.code) {
        (Some(0), Some(6)) => (*pa, b),
        (Some(6), Some(0)) => (*pb, a),
        other => panic!(
            "trial {trial}: expected exactly one to proceed (exit 0) and one refused (exit 6), \
             got {other:?}\n{}\n{}",
            a.dump(),
            b.dump()
        ),
    };
    assert!(
        loser.of("resumed").is_empty() && loser.of("step_started").is_empty(),
        "trial {trial}: the refused one acted\n{}",
        loser.dump()
    );
    let named = loser.stderr.contains(&format!("pid {winner}"));
    assert!(
        named || loser.stderr.contains("another process resumed it"),
        "trial {trial}: the refusal does not name the holder (pid {winner})\n{}",
        loser.dump()
    );
    named
}

#[test]
fn two_concurrent_resumes_of_a_crashed_run_never_both_proceed() {
    let book_dir = TempDir::new("resume-race-book");
    let book = slow_runbook(&book_dir);
    let book = book.to_str().expect("utf-8");
    let mut named = 0;
    for trial in 0..TRIALS {
        let state = TempDir::new("resume-race-state");
        let out_dir = TempDir::new("resume-race-out");
        let dir = format!("dir={}", out_dir.str());
        let mut bg = Bg::spawn(&state, &["exec", book, "-p", &dir, "--output", "json"]);
        let run_id = bg.run_id();
        bg.wait_event("command", Some("work"));
        // The step's shell has started (so the crash interrupts it, not its start).
        let deadline = Instant::now() + BG_LIMIT;
        while lines_of(&out_dir.join("starts")).is_empty() {
            assert!(Instant::now() < deadline, "the step never started");
            std::thread::sleep(Duration::from_millis(5));
        }
        bg.crash();
        std::fs::write(out_dir.join("fast"), "").expect("make it fast");
        let resume = ["resume", run_id.as_str(), "--output", "json"];
        let outcome = race(&state, &resume, &resume);
        if exactly_one_proceeded(trial, &outcome) {
            named += 1;
        }
        // One crash, one resume: the step started twice in all, and one resume is journaled.
        assert_eq!(lines_of(&out_dir.join("starts")).len(), 2, "trial {trial}");
        let resumes = cli(&state, &["audit", "export", "--run", &run_id])
            .run()
            .stdout
            .lines()
            .filter(|l| l.contains("\"action\":\"run.resume\""))
            .count();
        assert_eq!(resumes, 1, "trial {trial}");
        let taken = cli(&state, &["audit", "export", "--run", &run_id])
            .run()
            .stdout
            .lines()
            .filter(|l| l.contains("\"action\":\"lock.break\""))
            .count();
        assert_eq!(taken, 1, "trial {trial}: the dead lock is taken over once");
        cli(&state, &["audit", "verify"]).run().assert_code(0);
    }
    // The winner takes a second: most losers meet it still holding the lock.
    assert!(named > 0, "no loser ever named the holder");
}

#[test]
fn two_concurrent_break_locks_never_both_proceed() {
    let book = fixture("locked.yaml");
    let mut by_pid = BTreeMap::new();
    for trial in 0..TRIALS {
        let state = TempDir::new("break-race-state");
        let out_dir = TempDir::new("break-race-out");
        let dir = format!("dir={}", out_dir.str());
        // A run dies holding the lock.
        let mut bg = Bg::spawn(
            &state,
            &[
                "exec", &book, "-p", &dir, "-p", "nap=30", "--output", "json",
            ],
        );
        let dead = bg.run_id();
        bg.wait_event("command", Some("hold"));
        bg.crash();
        let breaker = [
            "exec",
            book.as_str(),
            "-p",
            dir.as_str(),
            "-p",
            "nap=1",
            "--break-lock",
            "--output",
            "json",
        ];
        let outcome = race(&state, &breaker, &breaker);
        *by_pid
            .entry(exactly_one_proceeded(trial, &outcome))
            .or_insert(0) += 1;
        // The dead run's lock was broken once, by the winner.
        let breaks: Vec<Value> = cli(&state, &["audit", "export"])
            .run()
            .stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["action"] == "lock.break")
            .collect();
        assert_eq!(breaks.len(), 1, "trial {trial}: {breaks:?}");
        assert_eq!(
            breaks[0]["detail"]["previous_holder"]["run_id"],
            dead.as_str(),
            "trial {trial}"
        );
        // Tokens: the dead run's, then the winner's only.
        assert_eq!(lines_of(&out_dir.join("tokens")).len(), 2, "trial {trial}");
    }
    assert_eq!(by_pid.get(&true), Some(&TRIALS), "{by_pid:?}");
}

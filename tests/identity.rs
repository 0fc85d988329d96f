//! Who approves from the command line, and who may touch the state: runs and approvals are
//! recorded under operating-system accounts (never `$USER` or a flag); a quorum needs distinct
//! accounts, proven with real throwaway accounts (`useradd`) approving through `runuser` in a
//! team state directory; state files are private, a state directory others may write to is
//! refused, and a secret file others may read is warned about.

mod support;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::TempDir;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/identity")
        .join(name)
}

/// The account running the tests (`id -un`), for what the engine must record.
fn me() -> String {
    let out = Command::new("id").arg("-un").output().expect("id -un");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `runbook ARGS` on `state`, with `$USER`/`$LOGNAME` set to `claimed` (which must not matter).
fn runbook(bin: &Path, state: &Path, claimed: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .env("RUNBOOK_STATE_DIR", state)
        .env("USER", claimed)
        .env("LOGNAME", claimed)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("runbook")
}

/// A background `runbook exec` whose JSON events and log are collected.
struct Bg {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Bg {
    fn exec(bin: &Path, state: &Path, claimed: &str, book: &Path, dir: &TempDir) -> Self {
        let mut child = Command::new(bin)
            .arg("exec")
            .arg(book)
            .args(["-p", &format!("dir={}", dir.str()), "--output", "json"])
            .env("RUNBOOK_STATE_DIR", state)
            .env("USER", claimed)
            .env("LOGNAME", claimed)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("runbook exec");
        support::alertmanager::watchdog(child.id());
        let collect = |r: Box<dyn std::io::Read + Send>, into: Arc<Mutex<Vec<String>>>| {
            std::thread::spawn(move || {
                for l in BufReader::new(r).lines().map_while(Result::ok) {
                    into.lock().expect("lock").push(l);
                }
            });
        };
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        collect(
            Box::new(child.stdout.take().expect("stdout")),
            stdout.clone(),
        );
        collect(
            Box::new(child.stderr.take().expect("stderr")),
            stderr.clone(),
        );
        Self {
            child,
            stdout,
            stderr,
        }
    }

    fn events(&self) -> Vec<Value> {
        self.stdout
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn dump(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.stdout.lock().expect("lock").join("\n"),
            self.stderr.lock().expect("lock").join("\n")
        )
    }

    fn wait_stderr(&self, needle: &str) {
        let started = Instant::now();
        while !self
            .stderr
            .lock()
            .expect("lock")
            .iter()
            .any(|l| l.contains(needle))
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "timed out waiting for {needle:?}\n{}",
                self.dump()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn run_id(&self) -> String {
        self.events()
            .iter()
            .find(|e| e["event"] == "run_started")
            .and_then(|e| e["run_id"].as_str().map(str::to_owned))
            .unwrap_or_else(|| panic!("no run_started\n{}", self.dump()))
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    fn finish(&mut self) -> i32 {
        let started = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                // Let the readers drain.
                std::thread::sleep(Duration::from_millis(100));
                return s.code().unwrap_or(-1);
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the run did not finish\n{}",
                self.dump()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Throwaway accounts in a throwaway group, removed on drop.
struct Accounts {
    group: String,
    users: Vec<String>,
}

impl Accounts {
    /// Create the group and the users (no home, no login shell).
    fn create(tag: &str, users: &[&str]) -> Self {
        let id = std::process::id() % 100_000;
        let group = format!("rbt{tag}{id}");
        let run = |cmd: &mut Command| {
            let out = cmd.output().expect("account tool");
            assert!(out.status.success(), "{cmd:?}: {}", text(&out));
        };
        run(Command::new("groupadd").arg(&group));
        let mut made = Self {
            group: group.clone(),
            users: Vec::new(),
        };
        for u in users {
            let name = format!("rb{u}{id}");
            run(Command::new("useradd")
                .args(["-M", "-N", "-g", &group, "-s", "/usr/sbin/nologin"])
                .arg(&name));
            made.users.push(name);
        }
        made
    }
}

impl Drop for Accounts {
    fn drop(&mut self) {
        for u in &self.users {
            let _ = Command::new("userdel").arg(u).output();
        }
        let _ = Command::new("groupdel").arg(&self.group).output();
    }
}

/// The binary where every account can run it (the build directory may not be traversable).
fn shared_binary(dir: &TempDir) -> PathBuf {
    let to = dir.join("runbook");
    std::fs::copy(env!("CARGO_BIN_EXE_runbook"), &to).expect("copy the binary");
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    to
}

/// `runbook approve RUN STEP [--as NAME]` as the OS account `user` (through `runuser`).
fn approve_as(bin: &Path, state: &Path, user: &str, run: &str, display: Option<&str>) -> Output {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", user, "--"])
        .arg(bin)
        .args(["approve", run, "go"])
        .env("RUNBOOK_STATE_DIR", state)
        // What the account claims to be: ignored.
        .env("USER", "alice")
        .stdin(Stdio::null());
    if let Some(d) = display {
        cmd.args(["--as", d]);
    }
    cmd.output().expect("runuser")
}

const WAITING: &str = "waiting for approval of step `go`";

#[test]
fn a_quorum_needs_distinct_os_accounts_and_user_or_as_change_nothing() {
    // Never a silent pass: without root the test cannot create the accounts it needs.
    assert!(
        is_root(),
        "creating test accounts needs root (CI runs as root; run the suite as root)"
    );
    let accounts = Accounts::create("q", &["c", "d"]);
    let (carol, dave) = (accounts.users[0].clone(), accounts.users[1].clone());
    let tmp = TempDir::new("identity-quorum");
    let bin = shared_binary(&tmp);
    let out = TempDir::new("identity-quorum-out");
    std::fs::set_permissions(out.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    // A team state directory: the group's accounts may approve each other's runs.
    let state = tmp.join("state");
    std::fs::create_dir(&state).expect("mkdir");
    let chgrp = Command::new("chgrp")
        .arg(&accounts.group)
        .arg(&state)
        .output()
        .expect("chgrp");
    assert!(chgrp.status.success(), "{}", text(&chgrp));
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o2770)).expect("chmod");

    // Reproduced: `USER=alice exec`, then `approve --as carol` and `--as dave` from the same
    // account met `min_approvals: 2` with `self_approval: false`.
    let mut bg = Bg::exec(&bin, &state, "alice", &fixture("quorum-no-self.yaml"), &out);
    bg.wait_stderr(WAITING);
    let run = bg.run_id();
    let started = bg
        .events()
        .iter()
        .find(|e| e["event"] == "run_started")
        .map(|e| e["user"].clone());
    assert_eq!(started, Some(Value::String(me())), "{}", bg.dump());
    for who in ["carol", "dave"] {
        let o = runbook(&bin, &state, who, &["approve", &run, "go", "--as", who]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let said = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            said.contains(&format!("as {} (display name {who})", me())),
            "{said}"
        );
    }
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        bg.running(),
        "approvals from the run's own account counted\n{}",
        bg.dump()
    );
    bg.wait_stderr(&format!("approval by {} ignored", me()));
    assert!(out.read("lines").is_none());

    // One other account, even twice and under two display names: still one approver.
    for display in [None, Some("someone-else")] {
        let o = approve_as(&bin, &state, &carol, &run, display);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stdout).contains(&format!("as {carol}")),
            "{}",
            text(&o)
        );
    }
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        bg.running(),
        "one account made a quorum of two\n{}",
        bg.dump()
    );

    // A second account completes the quorum.
    let o = approve_as(&bin, &state, &dave, &run, None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(bg.finish(), 0, "{}", bg.dump());
    let ev = bg.events();
    let result = ev
        .iter()
        .find(|e| e["event"] == "step_succeeded" && e["step"] == "go")
        .map(|e| e["result"]["approvers"].clone());
    let mut want = vec![carol.clone(), dave.clone()];
    want.sort();
    assert_eq!(result, Some(serde_json::json!(want)), "{}", bg.dump());
    assert_eq!(out.read("lines").as_deref(), Some("act\n"));

    // The team's files are shared with the group, never with everyone.
    let m = std::fs::metadata(state.join("runbook.db")).expect("db");
    assert_eq!(m.mode() & 0o777, 0o660, "{:o}", m.mode());

    // Reproduced: approving a step of a finished run succeeded. Now refused, exit 6.
    let o = approve_as(&bin, &state, &carol, &run, None);
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is succeeded"),
        "{}",
        text(&o)
    );
    // And a step that never asked: exit 6, named.
    let o = runbook(&bin, &state, "x", &["deny", &run, "nope"]);
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no step `nope`"),
        "{}",
        text(&o)
    );
    drop(accounts);
}

#[test]
fn state_files_are_private_and_a_state_dir_others_can_write_is_refused() {
    let tmp = TempDir::new("identity-perms");
    let state = tmp.join("state");
    let out = TempDir::new("identity-perms-out");
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_runbook"));
    // A run that waits keeps the database, its -wal and -shm open.
    let bg = Bg::exec(&bin, &state, "x", &fixture("quorum-no-self.yaml"), &out);
    bg.wait_stderr(WAITING);
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.mode() & 0o7777);
    assert_eq!(mode(&state).ok(), Some(0o700));
    for f in ["runbook.db", "runbook.db-wal", "runbook.db-shm"] {
        assert_eq!(mode(&state.join(f)).ok(), Some(0o600), "{f}");
    }
    drop(bg);

    // A database an older build left world-readable is tightened.
    let db = state.join("runbook.db");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let o = runbook(&bin, &state, "x", &["runs"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(mode(&db).ok(), Some(0o600));

    for (m, says) in [
        (0o777, "writable by every account"),
        (0o1777, "writable by every account"),
        (0o770, "writable by its group"),
    ] {
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(m)).expect("chmod");
        let o = runbook(&bin, &state, "x", &["runs"]);
        assert_eq!(o.status.code(), Some(6), "mode {m:o}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("refusing the state directory") && err.contains(says),
            "mode {m:o}: {err}"
        );
        assert!(err.contains("chmod 700"), "{err}");
    }
    // A team directory (setgid, group-writable) is accepted; its database is group-shared.
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o2770)).expect("chmod");
    let o = runbook(&bin, &state, "x", &["runs"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        mode(&db).ok(),
        Some(0o660),
        "a directory made a team directory shares its database with the group"
    );
    let fresh = tmp.join("team");
    std::fs::create_dir(&fresh).expect("mkdir");
    std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o2770)).expect("chmod");
    let o = runbook(&bin, &fresh, "x", &["runs"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(mode(&fresh.join("runbook.db")).ok(), Some(0o660));
}

#[test]
fn a_secret_file_others_can_read_gets_a_warning() {
    let tmp = TempDir::new("identity-secret");
    let secret = tmp.write("token", "s3cret-value\n");
    let book = tmp.write(
        "book.yaml",
        &format!(
            "runbook: file-secret\nsecrets:\n  tok: {{file: {}}}\nsteps:\n  - id: use\n    run: test -n \"{{{{ secrets.tok }}}}\"\n",
            secret.display()
        ),
    );
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_runbook"));
    let state = tmp.join("state");
    for (m, warned) in [(0o644, true), (0o600, false)] {
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(m)).expect("chmod");
        let o = runbook(
            &bin,
            &state,
            "x",
            &["exec", book.to_str().expect("utf-8"), "--output", "plain"],
        );
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            err.contains("is readable by other accounts") && err.contains("chmod 600"),
            warned,
            "mode {m:o}: {err}"
        );
        assert!(!text(&o).contains("s3cret-value"), "{}", text(&o));
    }
}

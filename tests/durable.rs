//! Black-box tests of durable runs: the binary is killed, interrupted, denied, locked out, fed a
//! corrupt or tampered state database, and resumed; it is judged by its exit codes, its JSON
//! events, its journal (`runbook show`), its audit log and the files its steps leave behind.
//!
//! Runbooks live in `tests/fixtures/durable`, except the crash test's, which is generated. Every
//! test uses its own state directory and output directory.
//!
//! Processes left by a killed engine: a shell step runs under a supervisor (`runbook
//! __supervise`, in its own process group) which runs the shell in a process group of its own,
//! so `kill -9` of the engine leaves the step in flight running, and its supervisor journals how
//! it ended. [`Bg::crash`] simulates the loss of the whole machine instead: it first freezes the
//! engine and its descendants (`SIGSTOP`, so nothing can start anything more), kills the engine,
//! then kills each descendant and its process group (the step's shell and everything it
//! started), and waits until all of them are gone. After such a crash, the output files are
//! final, and nothing the killed engine started can write after the resume begins. The tests of
//! section 11 kill the engine alone and let its steps finish.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{RunOutput, Runbook, TempDir, process_alive};

/// The user every engine and CLI invocation runs as (`$USER`), unless a test says otherwise.
const USER: &str = "operator";

/// Longest a background engine may take before the test gives up on it.
const BG_LIMIT: Duration = Duration::from_secs(30);

/// How long to watch a waiting approval to be sure it keeps waiting (the engine polls for
/// approvals every 250 ms).
const STILL_WAITING: Duration = Duration::from_millis(800);

/// A fixture under `tests/fixtures/durable`.
fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/durable")
        .join(name)
        .to_str()
        .expect("utf-8 fixture path")
        .to_owned()
}

/// `runbook ARGS...` on the state directory `state`, as [`USER`].
fn cli(state: &TempDir, args: &[&str]) -> Runbook {
    Runbook::new(args.iter().map(|a| (*a).to_owned()))
        .env("RUNBOOK_STATE_DIR", &state.str())
        .env("USER", USER)
}

/// `-p dir=<dir>`.
fn dir_param(dir: &TempDir) -> String {
    format!("dir={}", dir.str())
}

/// The OS account running the tests: what the engine records as the user and the CLI approver
/// (`$USER` is ignored; tests/identity.rs proves it with several accounts).
fn account() -> String {
    let out = Command::new("id").arg("-un").output().expect("id -un");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// This host's name, as the engine records it.
fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .expect("hostname")
}

/// How many times each line appears in a file (empty when the file does not exist).
fn line_counts(path: &Path) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        *counts.entry(line.to_owned()).or_insert(0) += 1;
    }
    counts
}

/// The lines of a file (none when it does not exist).
fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The run id announced by a `run_started` event.
#[track_caller]
fn run_id_of(out: &RunOutput) -> String {
    out.of("run_started")
        .first()
        .and_then(|e| e["run_id"].as_str())
        .unwrap_or_else(|| panic!("no run_started event\n{}", out.dump()))
        .to_owned()
}

/// The single `resumed` event of a resumed run.
#[track_caller]
fn resumed_event(out: &RunOutput) -> &Value {
    let resumed = out.of("resumed");
    assert_eq!(
        resumed.len(),
        1,
        "expected one resumed event\n{}",
        out.dump()
    );
    resumed[0]
}

/// `(step, decision)` pairs of a `resumed` event.
fn decisions(resumed: &Value) -> BTreeMap<String, String> {
    resumed["decisions"]
        .as_array()
        .map(|ds| {
            ds.iter()
                .map(|d| {
                    (
                        d["step"].as_str().unwrap_or_default().to_owned(),
                        d["decision"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The audit entries of a state directory (optionally of one run), as exported.
#[track_caller]
fn audit_export(state: &TempDir, run: Option<&str>) -> Vec<Value> {
    let mut args = vec!["audit", "export"];
    if let Some(r) = run {
        args.extend(["--run", r]);
    }
    let out = cli(state, &args).run();
    out.assert_code(0);
    out.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad export line {l}: {e}")))
        .collect()
}

/// `runbook audit verify` passes.
#[track_caller]
fn assert_audit_intact(state: &TempDir) {
    let out = cli(state, &["audit", "verify"]).run();
    out.assert_code(0);
    assert!(out.stdout.contains("audit log intact"), "{}", out.dump());
}

/// No engine panicked.
#[track_caller]
fn assert_no_panic(out: &RunOutput) {
    assert!(
        !out.stderr.contains("panicked"),
        "the engine panicked\n{}",
        out.dump()
    );
}

/// Processes whose command line or environment mentions `needle` (a test's own temporary directory).
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|&pid| {
            // Template values reach a step's shell as environment variables, not in its argv.
            ["cmdline", "environ"].iter().any(|f| {
                std::fs::read(format!("/proc/{pid}/{f}"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
            }) && process_alive(pid)
        })
        .collect()
}

/// Wait (up to 5 s) until no live process mentions `needle`; fail naming the survivors.
#[track_caller]
fn assert_no_process_mentions(needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = processes_mentioning(needle);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "processes started for {needle} outlived their run: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
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
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.filter_map(Result::ok) {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            // `pid (comm) state ppid ...`; the command name may contain spaces and parentheses.
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(parent) = parent {
                parent_of.push((pid, parent));
            }
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

/// A `runbook` process running in the background, its output collected line by line.
struct Bg {
    child: Child,
    args: Vec<String>,
    started: Instant,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
}

/// Collect the lines of a stream into `sink` until it closes.
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
    /// Start `runbook ARGS...` on the state directory `state`, as [`USER`] unless `env` sets
    /// `USER`.
    fn spawn(state: &TempDir, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_runbook"));
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("NO_COLOR", "1")
            .env("RUNBOOK_STATE_DIR", state.path())
            .env("USER", USER);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn runbook");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect_lines(child.stdout.take().expect("stdout"), stdout.clone()),
            collect_lines(child.stderr.take().expect("stderr"), stderr.clone()),
        ];
        Self {
            child,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            started: Instant::now(),
            stdout,
            stderr,
            readers,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The JSON events printed so far.
    fn events(&self) -> Vec<Value> {
        self.stdout
            .lock()
            .expect("stdout lines")
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.get("event").is_some())
            .collect()
    }

    fn stderr_text(&self) -> String {
        self.stderr.lock().expect("stderr lines").join("\n")
    }

    fn dump(&self) -> String {
        format!(
            "runbook {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args,
            self.stdout.lock().expect("stdout lines").join("\n"),
            self.stderr_text()
        )
    }

    /// Whether the process is still running.
    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Wait until `cond` holds; fail if the process exits first or [`BG_LIMIT`] passes.
    #[track_caller]
    fn wait_until(&mut self, what: &str, cond: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + BG_LIMIT;
        loop {
            if cond(self) {
                return;
            }
            if !self.running() {
                // It may have printed what we wait for just before exiting.
                std::thread::sleep(Duration::from_millis(50));
                assert!(cond(self), "exited before {what}\n{}", self.dump());
                return;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("gave up waiting for {what}\n{}", self.dump());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Wait for an event of a kind (about a step, if given).
    #[track_caller]
    fn wait_event(&mut self, kind: &str, step: Option<&str>) {
        self.wait_until(&format!("event {kind} {step:?}"), |bg| {
            bg.events()
                .iter()
                .any(|e| e["event"] == kind && step.is_none_or(|s| e["step"] == s))
        });
    }

    /// Wait for stderr to contain `needle`.
    #[track_caller]
    fn wait_stderr(&mut self, needle: &str) {
        self.wait_until(&format!("stderr {needle:?}"), |bg| {
            bg.stderr_text().contains(needle)
        });
    }

    /// The run id, once `run_started` is printed.
    #[track_caller]
    fn run_id(&mut self) -> String {
        self.wait_event("run_started", None);
        self.events()
            .iter()
            .find(|e| e["event"] == "run_started")
            .and_then(|e| e["run_id"].as_str())
            .expect("run id")
            .to_owned()
    }

    /// Wait for the process to exit (killing it after [`BG_LIMIT`]) and collect its output.
    fn finish(mut self) -> RunOutput {
        let status = loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                break s;
            }
            if self.started.elapsed() > BG_LIMIT {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "runbook did not finish within {BG_LIMIT:?}\n{}",
                    self.dump()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let stdout = self.stdout.lock().expect("stdout lines").join("\n") + "\n";
        let stderr = self.stderr.lock().expect("stderr lines").join("\n") + "\n";
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

    /// `kill -9` the engine in the middle of whatever it does, and every process it started
    /// (see the module comment). Returns its output and how many descendants were killed.
    fn crash(self) -> (RunOutput, usize) {
        match self.crash_unless_finished() {
            Crash::Killed(out, victims) => (out, victims),
            Crash::Finished(out) => panic!("the engine was not killed\n{}", out.dump()),
        }
    }

    /// [`Bg::crash`], or [`Crash::Finished`] when the engine exited on its own just before the
    /// kill (a run may finish between "still running?" and the signal).
    fn crash_unless_finished(self) -> Crash {
        let pid = self.pid();
        // Frozen, the engine cannot start another step between the scan and the kill; its
        // steps' supervisors are frozen too (a supervisor told to go may be about to start its
        // shell), until a scan finds nothing new.
        signal("STOP", &pid.to_string());
        let mut victims = descendants(pid);
        loop {
            for v in &victims {
                signal("STOP", &v.to_string());
            }
            let again = descendants(pid);
            if again.iter().all(|v| victims.contains(v)) {
                break;
            }
            victims = again;
        }
        signal("KILL", &pid.to_string());
        for v in &victims {
            // The process first (so it cannot start anything more), then its group: a step's
            // shell leads its own group, which holds everything it started.
            signal("KILL", &v.to_string());
            signal("KILL", &format!("-{v}"));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while victims.iter().any(|&v| process_alive(v)) {
            assert!(
                Instant::now() < deadline,
                "processes of the killed engine survived: {victims:?}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        let out = self.finish();
        if out.code.is_some() {
            return Crash::Finished(out);
        }
        Crash::Killed(out, victims.len())
    }
}

/// How [`Bg::crash_unless_finished`] ended.
enum Crash {
    /// Killed: its output and how many descendants were killed.
    Killed(RunOutput, usize),
    /// It had already exited on its own.
    Finished(RunOutput),
}

/// What `runbook show` says about a run: its status, and which steps started and succeeded.
#[derive(Debug, Default)]
struct Timeline {
    status: String,
    started: BTreeSet<String>,
    succeeded: BTreeSet<String>,
    text: String,
}

impl Timeline {
    /// Steps started and not succeeded: in flight when the engine stopped.
    fn in_flight(&self) -> BTreeSet<String> {
        self.started.difference(&self.succeeded).cloned().collect()
    }
}

/// Read a run's journal through `runbook show`.
#[track_caller]
fn timeline(state: &TempDir, run_id: &str) -> Timeline {
    let out = cli(state, &["show", run_id]).run();
    out.assert_code(0);
    let mut lines = out.stdout.lines();
    // `run ID  RUNBOOK  (STATUS)`
    let head = lines.next().unwrap_or_default();
    let status = head
        .rsplit_once('(')
        .and_then(|(_, s)| s.strip_suffix(')'))
        .unwrap_or_else(|| panic!("unexpected show header {head:?}\n{}", out.dump()))
        .to_owned();
    let mut t = Timeline {
        status,
        text: out.stdout.clone(),
        ..Timeline::default()
    };
    // `TIMESTAMP  STEP  WHAT`
    for line in lines {
        let mut words = line.split_whitespace();
        let (Some(ts), Some(step)) = (words.next(), words.next()) else {
            continue;
        };
        if !(ts.ends_with('Z') && ts.contains('T')) {
            continue;
        }
        let what: Vec<&str> = words.collect();
        match what.as_slice() {
            ["started", "attempt", ..] => {
                t.started.insert(step.to_owned());
            }
            ["✓", "succeeded", ..] => {
                t.succeeded.insert(step.to_owned());
            }
            _ => {}
        }
    }
    t
}

// ---------------------------------------------------------------------------------------------
// 1. Crash at random moments, resume
// ---------------------------------------------------------------------------------------------

/// Steps of the generated crash runbook.
const CRASH_STEPS: usize = 50;

/// Crashes (and resumes) per test run.
const CRASH_TRIALS: usize = 30;

/// How a step of the crash runbook behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavour {
    /// Sleeps, then appends; has a `verify` gate checking its line.
    VerifiedSleepFirst,
    /// Appends, then sleeps (its effect is often there while it is still in flight); gated.
    VerifiedSleepAfter,
    /// Appends at once; no gate.
    Idempotent,
    /// Sleeps, then appends; no gate.
    IdempotentSleepFirst,
}

impl Flavour {
    fn of(step: usize) -> Self {
        match step % 4 {
            0 => Self::VerifiedSleepFirst,
            1 => Self::Idempotent,
            2 => Self::VerifiedSleepAfter,
            _ => Self::IdempotentSleepFirst,
        }
    }

    fn verified(self) -> bool {
        matches!(self, Self::VerifiedSleepFirst | Self::VerifiedSleepAfter)
    }
}

fn step_id(i: usize) -> String {
    format!("s{i:02}")
}

/// The crash runbook: four chains of steps (`s05` needs `s01`, …), four at a time. Every step
/// appends its own id to `lines`.
///
/// Every step is `idempotent: true`, the gated ones included: a gate can only vouch for a step
/// whose effect happened, and a kill may land after a gated step was journaled as started but
/// before its shell appended. Without `idempotent`, such a step (gate failing, effect unknown)
/// rightly needs an operator's `--rerun`/`--skip`. The gates still decide: a gated step whose
/// line is there must be "verified on resume" and never appended twice.
fn crash_runbook(dir: &TempDir) -> PathBuf {
    let mut y = String::from(
        "runbook: crash-resume\nparams:\n  dir:\n    type: string\nmax_parallel: 4\nsteps:\n",
    );
    for i in 1..=CRASH_STEPS {
        let id = step_id(i);
        let nap = format!("sleep 0.0{}", i % 5 + 1);
        let append = format!("echo {id} >> {{{{ params.dir }}}}/lines");
        let _ = writeln!(y, "  - id: {id}\n    idempotent: true");
        if i > 4 {
            let _ = writeln!(y, "    needs: [{}]", step_id(i - 4));
        }
        let run = match Flavour::of(i) {
            Flavour::Idempotent => append,
            Flavour::VerifiedSleepFirst | Flavour::IdempotentSleepFirst => {
                format!("{nap}; {append}")
            }
            Flavour::VerifiedSleepAfter => format!("{append}; {nap}"),
        };
        let _ = writeln!(y, "    run: \"{run}\"");
        if Flavour::of(i).verified() {
            let _ = writeln!(
                y,
                "    verify:\n      - run: grep -qx {id} {{{{ params.dir }}}}/lines"
            );
        }
    }
    dir.write("crash.yaml", &y)
}

/// A small seeded generator (xorshift64), so a failing sequence of kill delays can be replayed
/// with `RUNBOOK_CRASH_SEED`.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Counters over all trials, to show the test exercised what it claims.
#[derive(Debug, Default)]
struct CrashStats {
    crashed: usize,
    finished_before_kill: usize,
    with_steps_in_flight: usize,
    verified_on_resume: usize,
    rerun_on_resume: usize,
    finished_while_down: usize,
    appended_twice: usize,
    step_processes_killed: usize,
}

#[test]
fn kill_9_at_random_moments_then_resume_completes_every_step_once() {
    let started = Instant::now();
    let seed = std::env::var("RUNBOOK_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_2024_D0C5_u64);
    let mut rng = XorShift(seed);
    let book_dir = TempDir::new("crash-book");
    let book = crash_runbook(&book_dir);
    let book = book.to_str().expect("utf-8 path");
    let all: Vec<String> = (1..=CRASH_STEPS).map(step_id).collect();

    // An uninterrupted run: every line once, and how long a run takes (the window for kills).
    let out_dir = TempDir::new("crash-clean");
    let state = TempDir::new("crash-clean-state");
    let clean = cli(
        &state,
        &["exec", book, "-p", &dir_param(&out_dir), "--output", "json"],
    )
    .run();
    clean.assert_code(0);
    let counts = line_counts(&out_dir.join("lines"));
    assert_eq!(
        counts.keys().cloned().collect::<Vec<_>>(),
        all,
        "{}",
        clean.dump()
    );
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    let mut window_ms = clean.finished()["duration_ms"]
        .as_u64()
        .unwrap_or(500)
        .max(50);

    let mut tally = CrashStats::default();
    let mut trial = 0;
    while tally.crashed < CRASH_TRIALS {
        trial += 1;
        assert!(
            trial <= 3 * CRASH_TRIALS,
            "too many runs finished before their kill: {tally:?}"
        );
        let out_dir = TempDir::new("crash-out");
        let state = TempDir::new("crash-state");
        let lines = out_dir.join("lines");
        let mut bg = Bg::spawn(
            &state,
            &["exec", book, "-p", &dir_param(&out_dir), "--output", "json"],
            &[],
        );
        bg.wait_event("run_started", None);
        let delay = rng.below(window_ms);
        let ctx = format!("trial {trial} (seed {seed:#x}, killed {delay} ms after run_started)");
        std::thread::sleep(Duration::from_millis(delay));
        let crashed = if bg.running() {
            bg.crash_unless_finished()
        } else {
            Crash::Finished(bg.finish())
        };
        let (killed, victims) = match crashed {
            Crash::Killed(out, victims) => (out, victims),
            Crash::Finished(out) => {
                // The run beat the kill: nothing to resume, and it must be complete. Later kills
                // come sooner (the clean run may have been slowed by other tests).
                tally.finished_before_kill += 1;
                window_ms = (window_ms * 3 / 4).max(20);
                out.assert_code(0);
                let counts = line_counts(&lines);
                assert!(
                    counts.len() == CRASH_STEPS && counts.values().all(|&n| n == 1),
                    "{ctx}: {counts:?}"
                );
                continue;
            }
        };
        tally.crashed += 1;
        tally.step_processes_killed += victims;
        let run_id = run_id_of(&killed);
        // Everything the engine started is dead: these are the effects the resume inherits.
        let before = line_counts(&lines);
        let journal = timeline(&state, &run_id);
        let in_flight = journal.in_flight();
        let ctx = format!("{ctx}, run {run_id}\n--- journal ---\n{}", journal.text);

        // The journal is written before acting: a step journaled as succeeded has its line, a
        // step never journaled as started has none, and nothing ran twice.
        for id in &all {
            let n = before.get(id).copied().unwrap_or(0);
            if journal.succeeded.contains(id) {
                assert_eq!(n, 1, "{ctx}\nsucceeded step {id} has {n} lines");
            } else if !journal.started.contains(id) {
                assert_eq!(n, 0, "{ctx}\nstep {id} never started but has {n} lines");
            } else {
                assert!(n <= 1, "{ctx}\nin-flight step {id} has {n} lines");
            }
        }
        assert!(
            before.keys().all(|k| all.contains(k)),
            "{ctx}\nunexpected lines: {before:?}"
        );
        if journal.status == "succeeded" {
            // Killed while exiting: the run is complete, and resume says so.
            let out = cli(&state, &["resume", &run_id]).run();
            out.assert_code(6);
            assert_eq!(before.len(), CRASH_STEPS, "{ctx}");
            continue;
        }
        if !in_flight.is_empty() {
            tally.with_steps_in_flight += 1;
        }

        let resumed = cli(&state, &["resume", &run_id, "--output", "json"]).run();
        assert_no_panic(&resumed);
        assert_eq!(
            resumed.code,
            Some(0),
            "{ctx}\nresume failed (every step is gated or idempotent: no decision is needed)\n{}",
            resumed.dump()
        );
        let ctx = format!("{ctx}\n--- resume ---\n{}", resumed.dump());

        // The resume decided about exactly the steps in flight: gated ones whose line is there
        // are done, every other one is re-run.
        let decided = decisions(resumed_event(&resumed));
        assert_eq!(
            decided.keys().cloned().collect::<BTreeSet<_>>(),
            in_flight,
            "{ctx}\ndecisions differ from the steps in flight"
        );
        let mut verified_done = BTreeSet::new();
        for (id, decision) in &decided {
            let i: usize = id[1..].parse().expect("step number");
            let has_line = before.contains_key(id);
            if decision == "finished" {
                // Its shell ended and its supervisor journaled the exit before being killed:
                // a known outcome, the step continues from it.
                assert!(has_line, "{ctx}\n{id} finished without its line");
                verified_done.insert(id.clone());
                tally.finished_while_down += 1;
                continue;
            }
            let expected = if Flavour::of(i).verified() && has_line {
                "done"
            } else {
                "rerun"
            };
            assert_eq!(decision, expected, "{ctx}\ndecision for {id}");
            if decision == "done" {
                verified_done.insert(id.clone());
                tally.verified_on_resume += 1;
            } else {
                tally.rerun_on_resume += 1;
            }
        }

        // Exactly the steps not done yet run again, once each.
        for id in &all {
            let starts = resumed.of_step("step_started", id).len();
            let kept = journal.succeeded.contains(id) || verified_done.contains(id);
            assert_eq!(
                starts,
                usize::from(!kept),
                "{ctx}\nstep {id} started {starts} times on resume"
            );
        }

        // Every line once; a step without a gate that was in flight may have appended before
        // the kill and again on resume.
        let after = line_counts(&lines);
        for id in &all {
            let i: usize = id[1..].parse().expect("step number");
            let n = after.get(id).copied().unwrap_or(0);
            let twice_ok = in_flight.contains(id) && !Flavour::of(i).verified();
            assert!(
                n == 1 || (n == 2 && twice_ok),
                "{ctx}\nstep {id} appended {n} times"
            );
            if n == 2 {
                tally.appended_twice += 1;
            }
        }
        assert_eq!(after.len(), CRASH_STEPS, "{ctx}");
        assert_audit_intact(&state);
        assert_no_process_mentions(&out_dir.str());
    }
    eprintln!(
        "crash test: {tally:?} in {:?} (seed {seed:#x})",
        started.elapsed()
    );
    assert!(
        tally.with_steps_in_flight >= CRASH_TRIALS / 3,
        "too few kills caught a step in flight: {tally:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Tampering with the audit log
// ---------------------------------------------------------------------------------------------

/// A copy of `state`'s database with the append-only triggers dropped (as an attacker would)
/// and `tamper` applied.
fn tampered(state: &TempDir, tag: &str, tamper: impl FnOnce(&rusqlite::Connection)) -> TempDir {
    let copy = TempDir::new(tag);
    for suffix in ["", "-wal"] {
        let from = state.join(&format!("runbook.db{suffix}"));
        if from.exists() {
            std::fs::copy(&from, copy.join(&format!("runbook.db{suffix}"))).expect("copy db");
        }
    }
    let conn = rusqlite::Connection::open(copy.join("runbook.db")).expect("open db");
    conn.execute_batch("DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete;")
        .expect("drop triggers");
    tamper(&conn);
    drop(conn);
    copy
}

/// `audit verify` exits 7 and names entry `seq` as the first bad one.
#[track_caller]
fn assert_tampered_at(state: &TempDir, seq: i64, what: &str) {
    let out = cli(state, &["audit", "verify"]).run();
    assert_no_panic(&out);
    assert_eq!(out.code, Some(7), "{what}: expected exit 7\n{}", out.dump());
    assert!(
        out.stderr.contains(&format!("entry #{seq}:")),
        "{what}: stderr does not name entry #{seq}\n{}",
        out.dump()
    );
}

#[test]
fn audit_verify_names_the_first_modified_removed_reordered_or_truncated_entry() {
    let out_dir = TempDir::new("tamper-out");
    let state = TempDir::new("tamper-state");
    cli(
        &state,
        &["exec", &fixture("retry.yaml"), "-p", &dir_param(&out_dir)],
    )
    .run()
    .assert_code(0);
    assert_audit_intact(&state);
    let n: i64 = rusqlite::Connection::open(state.join("runbook.db"))
        .expect("open db")
        .query_row("SELECT MAX(seq) FROM audit_log", [], |r| r.get(0))
        .expect("count entries");
    assert!(n >= 8, "expected a few audit entries, found {n}");

    // A flipped byte in the middle of entry k's detail.
    let k = n / 2;
    let flipped = tampered(&state, "tamper-flip", |conn| {
        let detail: String = conn
            .query_row("SELECT detail FROM audit_log WHERE seq = ?1", [k], |r| {
                r.get(0)
            })
            .expect("read detail");
        let mut bytes = detail.into_bytes();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x01;
        let detail = String::from_utf8(bytes).expect("still ASCII");
        conn.execute(
            "UPDATE audit_log SET detail = ?1 WHERE seq = ?2",
            rusqlite::params![detail, k],
        )
        .expect("flip a byte");
    });
    assert_tampered_at(&flipped, k, "flipped byte");

    // Entry 3 deleted.
    let deleted = tampered(&state, "tamper-delete", |conn| {
        conn.execute("DELETE FROM audit_log WHERE seq = 3", [])
            .expect("delete");
    });
    assert_tampered_at(&deleted, 3, "deleted entry");

    // Entries 4 and n-2 swapped (each row moved to the other's place in the sequence).
    let j = n - 2;
    let swapped = tampered(&state, "tamper-swap", |conn| {
        conn.execute_batch(&format!(
            "UPDATE audit_log SET seq = -1 WHERE seq = 4;
             UPDATE audit_log SET seq = 4 WHERE seq = {j};
             UPDATE audit_log SET seq = {j} WHERE seq = -1;"
        ))
        .expect("swap");
    });
    assert_tampered_at(&swapped, 4, "swapped entries");

    // The last three entries removed: the first missing one is named.
    let truncated = tampered(&state, "tamper-truncate", |conn| {
        conn.execute("DELETE FROM audit_log WHERE seq > ?1", [n - 3])
            .expect("truncate");
    });
    assert_tampered_at(&truncated, n - 2, "truncated tail");

    // The original was not affected by its copies.
    assert_audit_intact(&state);
}

// ---------------------------------------------------------------------------------------------
// 3. Ctrl-C, then resume
// ---------------------------------------------------------------------------------------------

#[test]
fn ctrl_c_cancels_runs_finally_and_resume_completes() {
    let out_dir = TempDir::new("sigint-out");
    let state = TempDir::new("sigint-state");
    let lines = out_dir.join("lines");
    let book = fixture("interrupt.yaml");
    let mut bg = Bg::spawn(
        &state,
        &[
            "exec",
            &book,
            "-p",
            &dir_param(&out_dir),
            "--output",
            "json",
        ],
        &[],
    );
    // Both slow steps are running, and `slow-verified` has already acted.
    bg.wait_event("command", Some("slow-idempotent"));
    bg.wait_event("command", Some("slow-verified"));
    bg.wait_until("slow-verified acted", |_| {
        lines_of(&lines).contains(&"slow-verified".to_owned())
    });
    signal("INT", &bg.pid().to_string());
    let out = bg.finish();
    assert_no_panic(&out);
    out.assert_code(5);
    assert_eq!(out.finished()["status"], "cancelled", "{}", out.dump());
    assert_eq!(
        lines_of(&out_dir.join("finally")),
        ["cancelled"],
        "{}",
        out.dump()
    );
    assert_eq!(
        lines_of(&lines),
        ["first", "slow-verified"],
        "{}",
        out.dump()
    );
    assert!(!out.touched("after") || out.of_step("step_started", "after").is_empty());
    // The interrupted steps' shells were killed with the run.
    assert_no_process_mentions(&out_dir.str());
    let run_id = run_id_of(&out);

    // From now on the slow steps do not linger.
    out_dir.write("fast", "");
    let resumed = cli(&state, &["resume", &run_id, "--output", "json"]).run();
    assert_no_panic(&resumed);
    resumed.assert_code(0);
    let decided = decisions(resumed_event(&resumed));
    assert_eq!(
        decided,
        BTreeMap::from([
            ("slow-idempotent".to_owned(), "rerun".to_owned()),
            ("slow-verified".to_owned(), "done".to_owned()),
        ]),
        "{}",
        resumed.dump()
    );
    for kept in ["first", "slow-verified"] {
        assert!(
            resumed.of_step("step_started", kept).is_empty(),
            "{kept} ran again\n{}",
            resumed.dump()
        );
    }
    let counts = line_counts(&lines);
    assert_eq!(
        counts,
        BTreeMap::from(
            ["first", "slow-verified", "slow-idempotent", "after"].map(|s| (s.to_owned(), 1))
        ),
        "{}",
        resumed.dump()
    );
    assert_eq!(
        lines_of(&out_dir.join("finally")),
        ["cancelled", "succeeded"],
        "{}",
        resumed.dump()
    );
    assert_eq!(timeline(&state, &run_id).status, "succeeded");
    assert_audit_intact(&state);
}

// ---------------------------------------------------------------------------------------------
// 4. A failed step, fixed by an operator, then resume
// ---------------------------------------------------------------------------------------------

#[test]
fn resume_after_fixing_the_environment_continues_from_the_failed_step() {
    let out_dir = TempDir::new("fixenv-out");
    let state = TempDir::new("fixenv-state");
    let lines = out_dir.join("lines");
    let failed = cli(
        &state,
        &[
            "exec",
            &fixture("fix-env.yaml"),
            "-p",
            &dir_param(&out_dir),
            "--output",
            "json",
        ],
    )
    .run();
    failed.assert_code(1);
    assert_eq!(failed.of_step("step_failed", "needs-config").len(), 1);
    assert_eq!(lines_of(&lines), ["one", "two"]);
    let run_id = run_id_of(&failed);

    out_dir.write("config.txt", "ready\n");
    // `needs-config` acted (its command ran) and is not idempotent: a bare resume does not
    // guess whether it had its effect; the operator, who saw it fail, says to run it again.
    let bare = cli(&state, &["resume", &run_id, "--output", "json"]).run();
    bare.assert_code(6);
    assert!(
        bare.stderr.contains("--rerun needs-config"),
        "{}",
        bare.dump()
    );
    assert_eq!(lines_of(&lines), ["one", "two"]);
    let resumed = cli(
        &state,
        &[
            "resume",
            &run_id,
            "--rerun",
            "needs-config",
            "--output",
            "json",
        ],
    )
    .run();
    resumed.assert_code(0);
    for kept in ["one", "two"] {
        assert!(
            resumed.of_step("step_started", kept).is_empty(),
            "{kept} ran again\n{}",
            resumed.dump()
        );
    }
    assert_eq!(lines_of(&lines), ["one", "two", "needs-config", "last"]);
    assert_eq!(timeline(&state, &run_id).status, "succeeded");
    assert_audit_intact(&state);
}

// ---------------------------------------------------------------------------------------------
// 5. Approvals from another shell
// ---------------------------------------------------------------------------------------------

const WAITING_FOR_GO: &str = "waiting for approval of step `go`";

#[test]
fn a_denied_approval_is_asked_again_on_resume() {
    let out_dir = TempDir::new("deny-out");
    let state = TempDir::new("deny-state");
    let lines = out_dir.join("lines");
    let book = fixture("gated.yaml");
    let mut bg = Bg::spawn(
        &state,
        &[
            "exec",
            &book,
            "-p",
            &dir_param(&out_dir),
            "--output",
            "json",
        ],
        &[],
    );
    bg.wait_stderr(WAITING_FOR_GO);
    let run_id = bg.run_id();
    cli(&state, &["deny", &run_id, "go", "--as", "bob"])
        .run()
        .assert_code(0);
    let denied = bg.finish();
    denied.assert_code(4);
    assert_eq!(lines_of(&lines), ["prepare"], "{}", denied.dump());

    // Resumed, it asks again; bob's earlier denial does not count against the new request.
    let mut bg = Bg::spawn(&state, &["resume", &run_id, "--output", "json"], &[]);
    bg.wait_stderr(WAITING_FOR_GO);
    std::thread::sleep(STILL_WAITING);
    assert!(
        bg.running(),
        "the resumed run did not wait for a new decision\n{}",
        bg.dump()
    );
    cli(&state, &["approve", &run_id, "go", "--as", "alice"])
        .run()
        .assert_code(0);
    let approved = bg.finish();
    assert_no_panic(&approved);
    approved.assert_code(0);
    assert!(
        approved.of_step("step_started", "prepare").is_empty(),
        "{}",
        approved.dump()
    );
    assert_eq!(lines_of(&lines), ["prepare", "act"]);
    let show = timeline(&state, &run_id);
    let me = account();
    assert!(
        show.text.contains(&format!("denied by {me} (cli)")),
        "{}",
        show.text
    );
    assert!(
        show.text.contains(&format!("approved by {me} (cli)")),
        "{}",
        show.text
    );
    assert_audit_intact(&state);
}

/// Display names are not people: `--as alice`, twice, and `--as bob` from one account are one
/// approver. (Two distinct accounts meeting the quorum: tests/identity.rs.)
#[test]
fn a_quorum_of_two_is_not_met_by_one_account_under_several_names() {
    let out_dir = TempDir::new("quorum-out");
    let state = TempDir::new("quorum-state");
    let mut bg = Bg::spawn(
        &state,
        &[
            "exec",
            &fixture("quorum.yaml"),
            "-p",
            &dir_param(&out_dir),
            "--output",
            "json",
        ],
        &[],
    );
    bg.wait_stderr(WAITING_FOR_GO);
    let run_id = bg.run_id();
    for name in ["alice", "alice", "bob"] {
        cli(&state, &["approve", &run_id, "go", "--as", name])
            .run()
            .assert_code(0);
        std::thread::sleep(STILL_WAITING);
        assert!(
            bg.running(),
            "one account under several names met a quorum of two\n{}",
            bg.dump()
        );
    }
    cli(&state, &["deny", &run_id, "go"]).run().assert_code(0);
    let out = bg.finish();
    out.assert_code(4);
    assert!(lines_of(&out_dir.join("lines")).is_empty());
    let show = timeline(&state, &run_id);
    assert!(
        show.text
            .contains(&format!("approved by {} (cli)", account())),
        "{}",
        show.text
    );
    assert!(!show.text.contains("approved by alice"), "{}", show.text);
}

/// A run of `no-self-approval.yaml` started by this account: it approves (by another display
/// name, then plainly), which must not count, then denies. Returns the finished run and its id.
fn approved_by_root_then_alice(state: &TempDir, out_dir: &TempDir) -> (RunOutput, String) {
    let book = fixture("no-self-approval.yaml");
    let dir = dir_param(out_dir);
    // `USER=alice` claims another person: the run is still this account's.
    let mut bg = Bg::spawn(
        state,
        &["exec", &book, "-p", &dir, "--output", "json"],
        &[("USER", "alice")],
    );
    bg.wait_stderr(WAITING_FOR_GO);
    let run_id = bg.run_id();
    let me = account();
    assert_eq!(bg.events()[0]["user"], me.as_str(), "{}", bg.dump());
    cli(state, &["approve", &run_id, "go", "--as", "alice"])
        .run()
        .assert_code(0);
    cli(state, &["approve", &run_id, "go"])
        .env("USER", "carol")
        .run()
        .assert_code(0);
    std::thread::sleep(STILL_WAITING);
    assert!(
        bg.running(),
        "the user who started the run approved it\n{}",
        bg.dump()
    );
    bg.wait_stderr(&format!("approval by {me} ignored"));
    cli(state, &["deny", &run_id, "go"]).run().assert_code(0);
    (bg.finish(), run_id)
}

#[test]
fn self_approval_false_refuses_the_user_who_started_the_run() {
    let out_dir = TempDir::new("self-out");
    let state = TempDir::new("self-state");
    let (out, _) = approved_by_root_then_alice(&state, &out_dir);
    out.assert_code(4);
    assert!(
        out.of_step("step_succeeded", "go").is_empty(),
        "{}",
        out.dump()
    );
    assert!(lines_of(&out_dir.join("lines")).is_empty());

    // --yes approves as the user who starts the run: refused too, nothing acts.
    let out_dir = TempDir::new("self-yes-out");
    let yes = cli(
        &state,
        &[
            "exec",
            &fixture("no-self-approval.yaml"),
            "-p",
            &dir_param(&out_dir),
            "--yes",
            "--output",
            "json",
        ],
    )
    .env("USER", "root")
    .run();
    yes.assert_code(4);
    let aborted = yes.of_step("step_aborted", "go");
    assert!(
        aborted
            .first()
            .and_then(|e| e["reason"].as_str())
            .is_some_and(|r| r.contains("self-approval")),
        "{}",
        yes.dump()
    );
    assert!(lines_of(&out_dir.join("lines")).is_empty());
}

#[test]
fn a_refused_self_approval_is_not_shown_as_an_approval() {
    let out_dir = TempDir::new("self-show-out");
    let state = TempDir::new("self-show-state");
    let (out, run_id) = approved_by_root_then_alice(&state, &out_dir);
    out.assert_code(4);
    let me = account();
    let show = timeline(&state, &run_id);
    assert!(
        !show.text.contains(&format!("approved by {me}")),
        "show lists root, whose approval was refused, as an approver\n{}",
        show.text
    );
    let approvals: Vec<Value> = out
        .of_step("approval", "go")
        .into_iter()
        .filter(|e| e["approver"] == me.as_str() && e["decision"] == "approved")
        .cloned()
        .collect();
    assert!(
        approvals.is_empty(),
        "the refused approval is reported as approved: {approvals:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Locks
// ---------------------------------------------------------------------------------------------

#[test]
fn two_concurrent_runs_of_a_runbook_exclude_each_other() {
    let out_dir = TempDir::new("lock-out");
    let state = TempDir::new("lock-state");
    let book = fixture("locked.yaml");
    let dir = dir_param(&out_dir);
    let args = ["exec", &book, "-p", &dir, "-p", "nap=1", "--output", "json"];
    let a = Bg::spawn(&state, &args, &[]);
    let b = Bg::spawn(&state, &args, &[]);
    let pids = [a.pid(), b.pid()];
    let outs = [a.finish(), b.finish()];
    let codes: Vec<_> = outs.iter().map(|o| o.code).collect();
    let (winner, loser) = match codes.as_slice() {
        [Some(0), Some(6)] => (0, 1),
        [Some(6), Some(0)] => (1, 0),
        _ => panic!(
            "expected one run to succeed and one to exit 6, got {codes:?}\n{}\n{}",
            outs[0].dump(),
            outs[1].dump()
        ),
    };
    let holder = run_id_of(&outs[winner]);
    let refused = &outs[loser];
    assert_no_panic(refused);
    for part in [
        holder.clone(),
        format!("{}@{}", account(), host()),
        format!("pid {}", pids[winner]),
    ] {
        assert!(
            refused.stderr.contains(&part),
            "the refusal does not name the holder ({part})\n{}",
            refused.dump()
        );
    }
    assert!(refused.of("run_started").is_empty(), "{}", refused.dump());
    assert_eq!(
        lines_of(&out_dir.join("tokens")).len(),
        1,
        "only one run ran"
    );
}

#[test]
fn a_dead_holders_lock_is_broken_with_break_lock_and_audited() {
    let out_dir = TempDir::new("breaklock-out");
    let state = TempDir::new("breaklock-state");
    let book = fixture("locked.yaml");
    let dir = dir_param(&out_dir);
    let quick = [
        "exec",
        book.as_str(),
        "-p",
        dir.as_str(),
        "--output",
        "json",
    ];
    cli(&state, &quick).run().assert_code(0);

    // A run dies holding the lock.
    let mut bg = Bg::spawn(
        &state,
        &[
            "exec", &book, "-p", &dir, "-p", "nap=30", "--output", "json",
        ],
        &[],
    );
    bg.wait_event("command", Some("hold"));
    // Alive, it keeps its run: resuming it from another shell is refused.
    let live_run = bg.run_id();
    let live = cli(&state, &["resume", &live_run]).run();
    assert_no_panic(&live);
    live.assert_code(6);
    assert!(
        live.stderr.contains(&format!("pid {}", bg.pid())) && live.stderr.contains("still running"),
        "{}",
        live.dump()
    );
    let (dead, _) = bg.crash();
    let dead_run = run_id_of(&dead);

    let refused = cli(&state, &quick).run();
    assert_no_panic(&refused);
    refused.assert_code(6);
    assert!(
        refused.stderr.contains(&dead_run) && refused.stderr.contains("--break-lock"),
        "{}",
        refused.dump()
    );

    let breaker = cli(&state, &quick).arg("--break-lock").run();
    breaker.assert_code(0);
    let breaker_run = run_id_of(&breaker);
    // Released normally afterwards.
    cli(&state, &quick).run().assert_code(0);

    let breaks: Vec<Value> = audit_export(&state, None)
        .into_iter()
        .filter(|e| e["action"] == "lock.break")
        .collect();
    assert_eq!(breaks.len(), 1, "{breaks:?}");
    assert_eq!(breaks[0]["run_id"], breaker_run.as_str(), "{breaks:?}");
    assert_eq!(breaks[0]["target"], "locked", "{breaks:?}");
    assert_eq!(
        breaks[0]["detail"]["previous_holder"]["run_id"],
        dead_run.as_str(),
        "{breaks:?}"
    );

    // run.lock_token: one per run that got the lock, strictly growing.
    let tokens: Vec<i64> = lines_of(&out_dir.join("tokens"))
        .iter()
        .map(|t| t.parse().expect("a token"))
        .collect();
    assert_eq!(tokens.len(), 4, "{tokens:?}");
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
    assert_audit_intact(&state);
}

// ---------------------------------------------------------------------------------------------
// 7. A corrupt state database
// ---------------------------------------------------------------------------------------------

#[test]
fn a_corrupt_state_database_is_refused_by_every_command_and_left_untouched() {
    // A real database to truncate.
    let out_dir = TempDir::new("corrupt-out");
    let good = TempDir::new("corrupt-good");
    let book = fixture("retry.yaml");
    let dir = dir_param(&out_dir);
    cli(&good, &["exec", &book, "-p", &dir])
        .run()
        .assert_code(0);
    let real = std::fs::read(good.join("runbook.db")).expect("read db");

    let mut rng = XorShift(0x00C0_FFEE);
    let garbage: Vec<u8> = (0..8192).map(|_| rng.next().to_le_bytes()[0]).collect();
    let cases = [
        ("garbage", garbage),
        ("truncated", real[..real.len() / 2].to_vec()),
        ("truncated-header", real[..60].to_vec()),
    ];
    for (name, bytes) in cases {
        let state = TempDir::new(&format!("corrupt-{name}"));
        let db = state.join("runbook.db");
        std::fs::write(&db, &bytes).expect("write db");
        let db_text = db.to_str().expect("utf-8").to_owned();
        let commands: [&[&str]; 9] = [
            &["exec", &book, "-p", &dir],
            &["runs"],
            &["audit", "verify"],
            &["audit", "export"],
            &["show", "20240101"],
            &["logs", "20240101"],
            &["resume", "20240101"],
            &["retry", "20240101", "--from", "a"],
            &["approve", "20240101", "go"],
        ];
        for args in commands {
            let out = cli(&state, args).run();
            assert_no_panic(&out);
            assert_eq!(out.code, Some(6), "{name}: {args:?}\n{}", out.dump());
            assert!(
                out.stderr.contains(&db_text) && out.stderr.contains("state database"),
                "{name}: {args:?}: the error does not say which file is wrong\n{}",
                out.dump()
            );
            assert_eq!(
                std::fs::read(&db).expect("read db"),
                bytes,
                "{name}: {args:?} changed the file"
            );
        }
    }
    // The refused exec ran nothing (the only lines are the good run's).
    assert!(
        line_counts(&out_dir.join("lines"))
            .values()
            .all(|&n| n == 1),
        "a refused exec ran steps"
    );
}

// ---------------------------------------------------------------------------------------------
// 8. A changed runbook, retry --from, logs
// ---------------------------------------------------------------------------------------------

/// A failed run of a copy of `fix-env.yaml` (whose `needs-config` fails), the copy then edited.
fn failed_then_edited(out_dir: &TempDir, state: &TempDir) -> (String, PathBuf) {
    let book = out_dir.write(
        "fix-env.yaml",
        &std::fs::read_to_string(fixture("fix-env.yaml")).expect("read fixture"),
    );
    let failed = cli(
        state,
        &[
            "exec",
            book.to_str().expect("utf-8"),
            "-p",
            &dir_param(out_dir),
            "--output",
            "json",
        ],
    )
    .run();
    failed.assert_code(1);
    let run_id = run_id_of(&failed);
    let mut text = std::fs::read_to_string(&book).expect("read copy");
    text.push_str("# reviewed again after the failure\n");
    std::fs::write(&book, text).expect("edit copy");
    out_dir.write("config.txt", "ready\n");
    (run_id, book)
}

#[test]
fn resume_refuses_a_changed_runbook_unless_allowed() {
    let out_dir = TempDir::new("changed-out");
    let state = TempDir::new("changed-state");
    let (run_id, _) = failed_then_edited(&out_dir, &state);

    let refused = cli(&state, &["resume", &run_id, "--output", "json"]).run();
    assert_no_panic(&refused);
    refused.assert_code(6);
    assert!(
        refused.stderr.contains("changed since the run started")
            && refused.stderr.contains("--allow-changed"),
        "{}",
        refused.dump()
    );
    assert!(refused.events.is_empty(), "{}", refused.dump());
    assert_eq!(lines_of(&out_dir.join("lines")), ["one", "two"]);

    let allowed = cli(
        &state,
        &[
            "resume",
            &run_id,
            "--allow-changed",
            "--rerun",
            "needs-config",
            "--output",
            "json",
        ],
    )
    .run();
    allowed.assert_code(0);
    assert_eq!(
        resumed_event(&allowed)["changed"],
        true,
        "{}",
        allowed.dump()
    );
    assert_eq!(
        lines_of(&out_dir.join("lines")),
        ["one", "two", "needs-config", "last"]
    );
    let resumes: Vec<Value> = audit_export(&state, Some(&run_id))
        .into_iter()
        .filter(|e| e["action"] == "run.resume")
        .collect();
    assert_eq!(resumes.len(), 1, "{resumes:?}");
    assert_audit_intact(&state);
}

#[test]
fn allow_changed_is_recorded_in_the_audit_log() {
    let out_dir = TempDir::new("changed-audit-out");
    let state = TempDir::new("changed-audit-state");
    let (run_id, _) = failed_then_edited(&out_dir, &state);
    cli(
        &state,
        &[
            "resume",
            &run_id,
            "--allow-changed",
            "--rerun",
            "needs-config",
        ],
    )
    .run()
    .assert_code(0);
    let resumes: Vec<Value> = audit_export(&state, Some(&run_id))
        .into_iter()
        .filter(|e| e["action"] == "run.resume")
        .collect();
    assert_eq!(resumes.len(), 1, "{resumes:?}");
    assert_eq!(
        resumes[0]["detail"]["changed"], true,
        "the audit entry of the resume does not say the runbook changed: {resumes:?}"
    );
}

#[test]
fn retry_from_a_step_reruns_it_and_its_downstream_only() {
    let out_dir = TempDir::new("retry-out");
    let state = TempDir::new("retry-state");
    let lines = out_dir.join("lines");
    let first = cli(
        &state,
        &[
            "exec",
            &fixture("retry.yaml"),
            "-p",
            &dir_param(&out_dir),
            "--output",
            "json",
        ],
    )
    .run();
    first.assert_code(0);
    let run_id = run_id_of(&first);

    // A succeeded run has nothing to resume, but can be retried from a step.
    let nothing = cli(&state, &["resume", &run_id]).run();
    nothing.assert_code(6);
    assert!(nothing.stderr.contains("retry"), "{}", nothing.dump());
    cli(&state, &["retry", &run_id, "--from", "nosuch"])
        .run()
        .assert_code(2);

    let retried = cli(
        &state,
        &["retry", &run_id, "--from", "b", "--output", "json"],
    )
    .run();
    retried.assert_code(0);
    let started: BTreeSet<String> = retried
        .of("step_started")
        .iter()
        .filter_map(|e| e["step"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        started,
        BTreeSet::from(["b".to_owned(), "c".to_owned()]),
        "{}",
        retried.dump()
    );
    assert_eq!(
        line_counts(&lines),
        BTreeMap::from([
            ("a".to_owned(), 1),
            ("b".to_owned(), 2),
            ("c".to_owned(), 2),
            ("side".to_owned(), 1),
        ])
    );
    assert_audit_intact(&state);
}

#[test]
fn logs_print_a_steps_captured_output_masked() {
    const SECRET: &str = "s3cr3t-Durable-9f27";
    let out_dir = TempDir::new("logs-out");
    let state = TempDir::new("logs-state");
    let run = cli(
        &state,
        &[
            "exec",
            &fixture("logs.yaml"),
            "-p",
            &dir_param(&out_dir),
            "--output",
            "json",
        ],
    )
    .env("RB_DURABLE_TOKEN", SECRET)
    .run();
    run.assert_code(0);
    let run_id = run_id_of(&run);

    let leak = cli(&state, &["logs", &run_id, "leak"]).run();
    leak.assert_code(0);
    assert!(leak.stdout.contains("token=***"), "{}", leak.dump());
    assert!(leak.stdout.contains("raw=***"), "{}", leak.dump());
    assert!(!leak.stdout.contains("quiet-output"), "{}", leak.dump());

    let all = cli(&state, &["logs", &run_id]).run();
    all.assert_code(0);
    assert!(all.stdout.contains("quiet-output"), "{}", all.dump());
    assert!(all.stdout.contains("token=***"), "{}", all.dump());

    for out in [&run, &leak, &all] {
        assert!(
            !out.stdout.contains(SECRET) && !out.stderr.contains(SECRET),
            "the secret leaked\n{}",
            out.dump()
        );
    }
    let db = std::fs::read(state.join("runbook.db")).expect("read db");
    assert!(
        !db.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
        "the secret is stored in the state database"
    );
}

// ---------------------------------------------------------------------------------------------
// 9. An irreversible step in flight at a crash
// ---------------------------------------------------------------------------------------------

#[test]
fn an_irreversible_step_in_flight_at_a_crash_needs_an_explicit_decision() {
    let out_dir = TempDir::new("irrev-out");
    let state = TempDir::new("irrev-state");
    let lines = out_dir.join("lines");
    let mut bg = Bg::spawn(
        &state,
        &[
            "exec",
            &fixture("irreversible.yaml"),
            "-p",
            &dir_param(&out_dir),
            "--yes",
            "--output",
            "json",
        ],
        &[],
    );
    bg.wait_event("command", Some("cutover"));
    bg.wait_until("cutover acted", |_| !lines_of(&lines).is_empty());
    let (crashed, _) = bg.crash();
    let run_id = run_id_of(&crashed);
    assert_eq!(lines_of(&lines), ["cutover"]);
    assert_eq!(
        timeline(&state, &run_id).in_flight(),
        BTreeSet::from(["cutover".to_owned()])
    );

    let undecided = cli(&state, &["resume", &run_id, "--output", "json"]).run();
    assert_no_panic(&undecided);
    undecided.assert_code(6);
    for needle in ["--rerun cutover", "--skip cutover", "irreversible"] {
        assert!(
            undecided.stderr.contains(needle),
            "the refusal does not say {needle:?}\n{}",
            undecided.dump()
        );
    }
    assert!(
        undecided.of("step_started").is_empty(),
        "{}",
        undecided.dump()
    );
    assert_eq!(lines_of(&lines), ["cutover"]);

    let skipped = cli(
        &state,
        &["resume", &run_id, "--skip", "cutover", "--output", "json"],
    )
    .run();
    skipped.assert_code(0);
    assert!(
        skipped.of_step("step_started", "cutover").is_empty(),
        "{}",
        skipped.dump()
    );
    assert_eq!(lines_of(&lines), ["cutover", "after"]);
    let resumes: Vec<Value> = audit_export(&state, Some(&run_id))
        .into_iter()
        .filter(|e| e["action"] == "run.resume")
        .collect();
    assert_eq!(resumes.len(), 1, "{resumes:?}");
    let decided = &resumes[0]["detail"]["decisions"];
    assert_eq!(decided[0]["step"], "cutover", "{resumes:?}");
    assert_eq!(decided[0]["decision"], "skip", "{resumes:?}");
    assert_audit_intact(&state);
}

/// A crash inside a called runbook: the resume continues the callee where it stopped — its
/// completed steps are not run again — and still asks about its step that was in flight.
#[test]
fn a_crash_inside_a_called_runbook_resumes_inside_it() {
    let out_dir = TempDir::new("call-out");
    let state = TempDir::new("call-state");
    let lines = out_dir.join("lines");
    let mut bg = Bg::spawn(
        &state,
        &[
            "exec",
            &fixture("caller.yaml"),
            "-p",
            &dir_param(&out_dir),
            "--output",
            "json",
        ],
        &[],
    );
    bg.wait_event("command", Some("recover/slow"));
    bg.wait_until("slow acted", |_| lines_of(&lines).len() == 3);
    let (crashed, _) = bg.crash();
    let run_id = run_id_of(&crashed);
    assert_eq!(lines_of(&lines), ["before", "first", "slow"]);

    // `recover/slow` is neither idempotent nor gated: refused up front, nothing runs.
    let undecided = cli(&state, &["resume", &run_id, "--output", "json"]).run();
    assert_no_panic(&undecided);
    undecided.assert_code(6);
    for needle in [
        "--rerun recover/slow",
        "--skip recover/slow",
        "--rerun recover",
    ] {
        assert!(
            undecided.stderr.contains(needle),
            "the refusal does not say {needle:?}\n{}",
            undecided.dump()
        );
    }
    assert!(
        undecided.of("step_started").is_empty(),
        "{}",
        undecided.dump()
    );

    // Skip the slow step (the operator saw it finish): the callee continues with `last`.
    let resumed = cli(
        &state,
        &[
            "resume",
            &run_id,
            "--skip",
            "recover/slow",
            "--output",
            "json",
        ],
    )
    .run();
    resumed.assert_code(0);
    assert_eq!(
        lines_of(&lines),
        ["before", "first", "slow", "last", "after"]
    );
    for kept in ["before", "recover/first", "recover/slow"] {
        assert!(
            resumed.of_step("command", kept).is_empty(),
            "{kept} ran again\n{}",
            resumed.dump()
        );
    }
    let decisions: Vec<BTreeMap<String, String>> =
        resumed.of("resumed").iter().map(|r| decisions(r)).collect();
    assert_eq!(
        decisions,
        [
            BTreeMap::from([("recover".to_owned(), "continue".to_owned())]),
            BTreeMap::from([("recover/slow".to_owned(), "skip".to_owned())]),
        ],
        "{}",
        resumed.dump()
    );
    assert_eq!(timeline(&state, &run_id).status, "succeeded");
    assert_audit_intact(&state);
}

// ---------------------------------------------------------------------------------------------
// 10. Irreversible means irreversible, also when it fails
// ---------------------------------------------------------------------------------------------

/// An irreversible step acted, then its health gate failed: a bare resume must not run it again
/// (it did its effect); once the gate passes, the resume finds it "verified on resume".
#[test]
fn an_irreversible_step_whose_gate_failed_is_not_rerun_by_a_bare_resume() {
    let out_dir = TempDir::new("failed-irrev-out");
    let state = TempDir::new("failed-irrev-state");
    let lines = out_dir.join("lines");
    let first = cli(
        &state,
        &[
            "exec",
            &fixture("failed-irreversible.yaml"),
            "-p",
            &dir_param(&out_dir),
            "--yes",
            "--output",
            "json",
        ],
    )
    .run();
    first.assert_code(1);
    let run_id = run_id_of(&first);
    assert_eq!(lines_of(&lines), ["cutover"], "{}", first.dump());

    let bare = cli(&state, &["resume", &run_id, "--output", "json"]).run();
    assert_no_panic(&bare);
    bare.assert_code(6);
    for needle in [
        "--rerun cutover",
        "--skip cutover",
        "failed after its action started",
        "irreversible",
    ] {
        assert!(
            bare.stderr.contains(needle),
            "the refusal does not say {needle:?}\n{}",
            bare.dump()
        );
    }
    assert!(bare.of("step_started").is_empty(), "{}", bare.dump());
    assert_eq!(lines_of(&lines), ["cutover"]);

    // The cut-over is healthy now: its gate vouches for it; it is not run again.
    std::fs::write(out_dir.join("healthy"), "").expect("healthy");
    let fixed = cli(&state, &["resume", &run_id, "--output", "json"]).run();
    fixed.assert_code(0);
    assert_eq!(
        decisions(resumed_event(&fixed)),
        BTreeMap::from([("cutover".to_owned(), "done".to_owned())]),
        "{}",
        fixed.dump()
    );
    assert!(
        fixed.of_step("step_started", "cutover").is_empty(),
        "{}",
        fixed.dump()
    );
    assert_eq!(lines_of(&lines), ["cutover", "after"]);
    assert_audit_intact(&state);
}

/// A non-idempotent step that acted and then timed out: its effect may have happened, so a
/// bare resume refuses to run it again; `--skip` continues after it.
#[test]
fn a_non_idempotent_step_that_timed_out_after_acting_needs_a_decision() {
    let out_dir = TempDir::new("timeout-out");
    let state = TempDir::new("timeout-state");
    let lines = out_dir.join("lines");
    let first = cli(
        &state,
        &[
            "exec",
            &fixture("timed-out.yaml"),
            "-p",
            &dir_param(&out_dir),
            "--output",
            "json",
        ],
    )
    .run();
    first.assert_code(1);
    assert!(
        first.of_step("step_failed", "load")[0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("timed out"),
        "{}",
        first.dump()
    );
    // The timeout killed the whole tree (the `sleep 10` too).
    assert_no_process_mentions(&out_dir.str());
    let run_id = run_id_of(&first);
    assert_eq!(lines_of(&lines), ["load"]);

    let bare = cli(&state, &["resume", &run_id, "--output", "json"]).run();
    assert_no_panic(&bare);
    bare.assert_code(6);
    for needle in [
        "--rerun load",
        "--skip load",
        "failed after its action started",
        "not idempotent",
    ] {
        assert!(
            bare.stderr.contains(needle),
            "the refusal does not say {needle:?}\n{}",
            bare.dump()
        );
    }
    assert_eq!(lines_of(&lines), ["load"]);

    let skipped = cli(
        &state,
        &["resume", &run_id, "--skip", "load", "--output", "json"],
    )
    .run();
    skipped.assert_code(0);
    assert_eq!(lines_of(&lines), ["load", "after"]);
}

/// The DR failover: DNS was switched (irreversible) and then its health gate failed. The
/// rollback must not uninstall the DR application DNS now points at; an unrelated step is still
/// compensated. The plan says so beforehand.
#[test]
fn rollback_stops_at_an_irreversible_step_that_acted_and_failed() {
    let out_dir = TempDir::new("dr-out");
    let state = TempDir::new("dr-state");
    let lines = out_dir.join("lines");
    let out = cli(
        &state,
        &[
            "exec",
            &fixture("dr-failover.yaml"),
            "-p",
            &dir_param(&out_dir),
            "--yes",
            "--output",
            "json",
        ],
    )
    .run();
    assert_no_panic(&out);
    out.assert_code(3);
    let counts = line_counts(&lines);
    assert_eq!(
        counts,
        BTreeMap::from(
            ["install-dr", "side", "switch-dns", "undo-side"].map(|l| (l.to_owned(), 1))
        ),
        "{}",
        out.dump()
    );
    let rollback = out.of("rollback_started");
    assert_eq!(rollback.len(), 1, "{}", out.dump());
    assert_eq!(rollback[0]["steps"], serde_json::json!(["side"]));
    assert_eq!(
        rollback[0]["not_compensated"],
        serde_json::json!(["install-dr"])
    );

    let plan = cli(
        &state,
        &[
            "plan",
            &fixture("dr-failover.yaml"),
            "-p",
            &dir_param(&out_dir),
        ],
    )
    .run();
    plan.assert_code(0);
    assert!(
        plan.stdout
            .contains("not compensated once switch-dns has started (a point of no return, whatever its outcome)"),
        "{}",
        plan.dump()
    );
}

/// The only approval before a point of no return is guarded by `when:`: refused at compile
/// time, pointing at the guard, saying how to fix it.
#[test]
fn an_approval_guarded_by_when_cannot_gate_an_irreversible_step() {
    let state = TempDir::new("guarded-state");
    let file = fixture("guarded-approval.yaml");
    let out = cli(&state, &["validate", "--message-format", "short", &file]).run();
    assert_no_panic(&out);
    out.assert_code(2);
    let text = format!("{}{}", out.stdout, out.stderr);
    for needle in [
        format!("{file}:9:11:"),
        "irreversible step `cutover` is approved only by `approve`".to_owned(),
        "a `when:` guard can skip".to_owned(),
    ] {
        assert!(text.contains(&needle), "missing {needle:?}\n{}", out.dump());
    }
    let human = cli(&state, &["validate", &file]).run();
    human.assert_code(2);
    assert!(
        human.stderr.contains("remove the `when:` from `approve`"),
        "{}",
        human.dump()
    );
    // Nothing runs either.
    let exec = cli(&state, &["exec", &file, "--yes", "--output", "json"]).run();
    exec.assert_code(2);
    assert!(exec.of("step_started").is_empty(), "{}", exec.dump());

    // Guarded exactly like its approval, the irreversible step runs only when it is approved.
    let dir = TempDir::new("guarded-same");
    let shared = dir.write(
        "shared-guard.yaml",
        &std::fs::read_to_string(&file).expect("fixture").replace(
            "    irreversible: true\n",
            "    irreversible: true\n    when: params.env == \"prod\"\n",
        ),
    );
    let shared = shared.to_str().expect("utf-8");
    cli(&state, &["validate", shared]).run().assert_code(0);
    let staging = cli(&state, &["exec", shared, "--output", "json"]).run();
    staging.assert_code(0);
    assert!(staging.of("command").is_empty(), "{}", staging.dump());
    let prod = cli(
        &state,
        &[
            "exec", shared, "-p", "env=prod", "--yes", "--output", "json",
        ],
    )
    .run();
    prod.assert_code(0);
    assert_eq!(
        prod.of_step("command", "cutover").len(),
        1,
        "{}",
        prod.dump()
    );
}

/// An approval skipped at run time (its upstream failed with `continue_on_failure`) does not
/// let the irreversible step after it run: it is blocked and the run aborts.
#[test]
fn an_irreversible_step_whose_approval_was_skipped_is_blocked() {
    let out_dir = TempDir::new("skipped-approval-out");
    let state = TempDir::new("skipped-approval-state");
    let out = cli(
        &state,
        &[
            "exec",
            &fixture("skipped-approval.yaml"),
            "-p",
            &dir_param(&out_dir),
            "--yes",
            "--output",
            "json",
        ],
    )
    .run();
    assert_no_panic(&out);
    out.assert_code(4);
    assert!(
        lines_of(&out_dir.join("lines")).is_empty(),
        "{}",
        out.dump()
    );
    assert!(
        out.of_step("command", "cutover").is_empty(),
        "{}",
        out.dump()
    );
    let aborted = out.of_step("step_aborted", "cutover");
    assert_eq!(aborted.len(), 1, "{}", out.dump());
    assert!(
        aborted[0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("no approval upstream of it was given — `approve` was skipped"),
        "{}",
        out.dump()
    );
}

// ---------------------------------------------------------------------------------------------
// 11. A step's outcome survives the engine's death
// ---------------------------------------------------------------------------------------------

/// `kill -9` of the engine only (its step's supervisor and shell are left alone), once the
/// `restore` step appended `start`.
fn kill_engine_during_restore(state: &TempDir, out_dir: &TempDir) -> String {
    let lines = out_dir.join("lines");
    let mut bg = Bg::spawn(
        state,
        &[
            "exec",
            &fixture("orphan.yaml"),
            "-p",
            &dir_param(out_dir),
            "--output",
            "json",
        ],
        &[],
    );
    let run_id = bg.run_id();
    bg.wait_until("restore started", |_| lines_of(&lines) == ["start"]);
    signal("KILL", &bg.pid().to_string());
    let killed = bg.finish();
    assert_eq!(killed.code, None, "{}", killed.dump());
    run_id
}

/// The shell of `restore`, still running after its engine was killed.
#[track_caller]
fn assert_restore_still_runs(out_dir: &TempDir) {
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !processes_mentioning(&out_dir.str()).is_empty(),
        "the step's process died with the engine"
    );
}

/// The step's process finished after the engine died: the resume uses its recorded outcome
/// and asks nothing; the step is not run again.
#[test]
fn a_step_that_finished_after_the_engine_died_continues_without_a_question() {
    let out_dir = TempDir::new("orphan-out");
    let state = TempDir::new("orphan-state");
    let lines = out_dir.join("lines");
    let run_id = kill_engine_during_restore(&state, &out_dir);
    assert_restore_still_runs(&out_dir);
    std::fs::write(out_dir.join("release"), "").expect("release");
    assert_no_process_mentions(&out_dir.str());
    assert_eq!(lines_of(&lines), ["start", "end"]);
    assert_eq!(
        timeline(&state, &run_id).in_flight(),
        BTreeSet::from(["restore".to_owned()])
    );

    let resumed = cli(&state, &["resume", &run_id, "--output", "json"]).run();
    assert_no_panic(&resumed);
    resumed.assert_code(0);
    let resumed_ev = resumed_event(&resumed);
    assert_eq!(
        decisions(resumed_ev),
        BTreeMap::from([("restore".to_owned(), "finished".to_owned())]),
        "{}",
        resumed.dump()
    );
    assert!(
        resumed_ev["decisions"][0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("exit 0"),
        "{}",
        resumed.dump()
    );
    assert!(
        resumed.of_step("step_started", "restore").is_empty(),
        "{}",
        resumed.dump()
    );
    // Its recorded output feeds the result, as if the engine had seen it.
    let done = resumed.of_step("step_succeeded", "restore");
    assert_eq!(done.len(), 1, "{}", resumed.dump());
    assert_eq!(done[0]["result"]["exit_code"], 0);
    assert_eq!(lines_of(&lines), ["start", "end", "after"]);
    // The journal names the process: pid, start time, host, boot.
    let events = cli(&state, &["show", &run_id]).run();
    assert!(
        events.stdout.contains("process_started"),
        "{}",
        events.dump()
    );
    assert_audit_intact(&state);
}

/// The step's process still runs when the operator resumes: `--rerun` is refused (never two
/// copies at once), a bare resume waits for it and continues from its outcome.
#[test]
fn a_step_still_running_is_waited_for_and_never_run_twice() {
    let out_dir = TempDir::new("running-out");
    let state = TempDir::new("running-state");
    let lines = out_dir.join("lines");
    let run_id = kill_engine_during_restore(&state, &out_dir);
    assert_restore_still_runs(&out_dir);

    let rerun = cli(
        &state,
        &["resume", &run_id, "--rerun", "restore", "--output", "json"],
    )
    .run();
    assert_no_panic(&rerun);
    rerun.assert_code(6);
    for needle in ["step `restore` still runs", "--kill-running restore"] {
        assert!(
            rerun.stderr.contains(needle),
            "the refusal does not say {needle:?}\n{}",
            rerun.dump()
        );
    }
    assert!(rerun.of("step_started").is_empty(), "{}", rerun.dump());
    assert_eq!(lines_of(&lines), ["start"]);

    let mut waiting = Bg::spawn(&state, &["resume", &run_id, "--output", "json"], &[]);
    waiting.wait_stderr("waiting for it to end");
    std::thread::sleep(Duration::from_millis(300));
    assert!(waiting.running(), "{}", waiting.dump());
    assert_eq!(lines_of(&lines), ["start"]);
    std::fs::write(out_dir.join("release"), "").expect("release");
    let waited = waiting.finish();
    waited.assert_code(0);
    assert_eq!(
        decisions(resumed_event(&waited)),
        BTreeMap::from([("restore".to_owned(), "finished".to_owned())]),
        "{}",
        waited.dump()
    );
    assert_eq!(lines_of(&lines), ["start", "end", "after"]);
    assert_no_process_mentions(&out_dir.str());
}

/// `--kill-running` stops the orphaned step (its whole process group); its effect is then
/// unknown, so it needs a decision like any step in flight.
#[test]
fn kill_running_stops_the_orphan_then_the_step_needs_a_decision() {
    let out_dir = TempDir::new("kill-running-out");
    let state = TempDir::new("kill-running-state");
    let lines = out_dir.join("lines");
    let run_id = kill_engine_during_restore(&state, &out_dir);
    assert_restore_still_runs(&out_dir);

    let killed = cli(
        &state,
        &[
            "resume",
            &run_id,
            "--kill-running",
            "restore",
            "--output",
            "json",
        ],
    )
    .run();
    assert_no_panic(&killed);
    killed.assert_code(6);
    for needle in [
        "killed (--kill-running restore)",
        "--rerun restore",
        "--skip restore",
    ] {
        assert!(
            killed.stderr.contains(needle),
            "the output does not say {needle:?}\n{}",
            killed.dump()
        );
    }
    assert_no_process_mentions(&out_dir.str());
    assert_eq!(lines_of(&lines), ["start"]);

    std::fs::write(out_dir.join("release"), "").expect("release");
    let rerun = cli(
        &state,
        &["resume", &run_id, "--rerun", "restore", "--output", "json"],
    )
    .run();
    rerun.assert_code(0);
    assert_eq!(lines_of(&lines), ["start", "start", "end", "after"]);
}

/// Steps of the orphan-trial chain.
const ORPHAN_STEPS: usize = 50;

/// Kills (and resumes) of the orphan trial.
const ORPHAN_TRIALS: usize = 30;

/// A chain of non-idempotent steps (no gate, no `idempotent`): each appends its id to `effects`
/// and naps — so a kill often lands while a step's process runs, its effect done.
fn orphan_chain(dir: &TempDir) -> PathBuf {
    let mut y = String::from(
        "runbook: orphan-chain\nparams:\n  dir:\n    type: string\nmax_parallel: 1\nsteps:\n",
    );
    for i in 1..=ORPHAN_STEPS {
        let id = step_id(i);
        let _ = writeln!(y, "  - id: {id}");
        if i > 1 {
            let _ = writeln!(y, "    needs: [{}]", step_id(i - 1));
        }
        let _ = writeln!(
            y,
            "    run: \"echo {id} >> {{{{ params.dir }}}}/effects; sleep 0.0{}\"",
            i % 2 + 1
        );
    }
    dir.write("orphan-chain.yaml", &y)
}

/// Counters over the orphan trials, to show the test exercised what it claims.
#[derive(Debug, Default)]
struct OrphanStats {
    killed: usize,
    finished_before_kill: usize,
    with_orphans: usize,
    finished_while_down: usize,
    never_started: usize,
}

/// 30 trials: `kill -9` of the engine alone at a random moment of a 50-step chain of
/// non-idempotent steps; the step processes it started finish on their own; a resume with no
/// flags and no terminal asks nothing, and every effect happens exactly once.
#[test]
fn kill_9_of_the_engine_alone_then_a_bare_resume_does_every_effect_once() {
    let started = Instant::now();
    let seed = std::env::var("RUNBOOK_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x0B5E_55ED_u64);
    let mut rng = XorShift(seed);
    let book_dir = TempDir::new("orphan-book");
    let book = orphan_chain(&book_dir);
    let book = book.to_str().expect("utf-8 path");
    let all: Vec<String> = (1..=ORPHAN_STEPS).map(step_id).collect();

    let mut window_ms: u64 = {
        let out_dir = TempDir::new("orphan-clean");
        let state = TempDir::new("orphan-clean-state");
        let clean = cli(
            &state,
            &["exec", book, "-p", &dir_param(&out_dir), "--output", "json"],
        )
        .run();
        clean.assert_code(0);
        assert_eq!(
            line_counts(&out_dir.join("effects")),
            all.iter().map(|id| (id.clone(), 1)).collect(),
            "{}",
            clean.dump()
        );
        clean.finished()["duration_ms"]
            .as_u64()
            .unwrap_or(1000)
            .max(100)
    };

    let mut tally = OrphanStats::default();
    let mut trial = 0;
    while tally.killed < ORPHAN_TRIALS {
        trial += 1;
        assert!(
            trial <= 3 * ORPHAN_TRIALS,
            "too many runs finished before their kill: {tally:?}"
        );
        let out_dir = TempDir::new("orphan-out");
        let state = TempDir::new("orphan-state");
        let effects = out_dir.join("effects");
        let mut bg = Bg::spawn(
            &state,
            &["exec", book, "-p", &dir_param(&out_dir), "--output", "json"],
            &[],
        );
        let run_id = bg.run_id();
        let delay = rng.below(window_ms);
        let ctx = format!(
            "trial {trial} (seed {seed:#x}, engine killed {delay} ms after run_started), run {run_id}"
        );
        std::thread::sleep(Duration::from_millis(delay));
        // The engine only: what it started is left to finish on its own.
        signal("KILL", &bg.pid().to_string());
        let out = bg.finish();
        if out.code.is_some() {
            tally.finished_before_kill += 1;
            window_ms = (window_ms * 3 / 4).max(50);
            out.assert_code(0);
            continue;
        }
        tally.killed += 1;
        if !processes_mentioning(&out_dir.str()).is_empty() {
            tally.with_orphans += 1;
        }
        // The orphans finish (each step takes a few tens of milliseconds).
        assert_no_process_mentions(&out_dir.str());
        let journal = timeline(&state, &run_id);
        let ctx = format!("{ctx}\n--- journal ---\n{}", journal.text);
        if journal.status == "succeeded" {
            assert_eq!(line_counts(&effects).len(), ORPHAN_STEPS, "{ctx}");
            continue;
        }

        // No flags, no terminal: the resume must not need a decision.
        let resumed = cli(&state, &["resume", &run_id, "--output", "json"]).run();
        assert_no_panic(&resumed);
        assert_eq!(
            resumed.code,
            Some(0),
            "{ctx}\nthe resume asked a question or failed\n{}",
            resumed.dump()
        );
        let ctx = format!("{ctx}\n--- resume ---\n{}", resumed.dump());
        let resumed_ev = resumed_event(&resumed);
        for d in resumed_ev["decisions"].as_array().into_iter().flatten() {
            let reason = d["reason"].as_str().unwrap_or_default();
            match d["decision"].as_str().unwrap_or_default() {
                "finished" => tally.finished_while_down += 1,
                "rerun" if reason.contains("never started") => tally.never_started += 1,
                other => panic!("{ctx}\nunexpected decision {other:?}: {d}"),
            }
        }
        // A step whose process finished is not started again.
        for (step, decision) in decisions(resumed_ev) {
            if decision == "finished" {
                assert!(
                    resumed.of_step("step_started", &step).is_empty(),
                    "{ctx}\n{step} started again"
                );
            }
        }
        let counts = line_counts(&effects);
        assert_eq!(
            counts,
            all.iter().map(|id| (id.clone(), 1)).collect(),
            "{ctx}\nan effect is missing or happened twice"
        );
        assert_audit_intact(&state);
    }
    eprintln!(
        "orphan trial: {tally:?} in {:?} (seed {seed:#x})",
        started.elapsed()
    );
    assert!(
        tally.finished_while_down >= ORPHAN_TRIALS / 3,
        "too few kills left a step process to finish on its own: {tally:?}"
    );
}

//! Black-box tests of what the operator is told (issue 21): statuses that say what happened,
//! judged by exit codes, the closing summary, `runbook show`, the report and `run.status`.
//!
//! Runbooks live in `tests/fixtures/operator`; every test uses its own state and output
//! directories.

mod support;

use std::path::{Path, PathBuf};

use support::{Runbook, TempDir};

/// A fixture under `tests/fixtures/operator`.
fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/operator")
        .join(name)
}

/// Any command against the state directory `state`.
fn cli(state: &TempDir, args: &[&str]) -> Runbook {
    Runbook::new(args.iter().map(|a| (*a).to_owned())).env("RUNBOOK_STATE_DIR", &state.str())
}

/// The run id from the first line of plain output (`… run ID of RUNBOOK started by …`).
#[track_caller]
fn run_id(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| {
            let rest = l.split_once(" run ")?.1;
            let (id, tail) = rest.split_once(' ')?;
            tail.starts_with("of ").then(|| id.to_owned())
        })
        .unwrap_or_else(|| panic!("no run id in:\n{stdout}"))
}

/// A rollback whose compensation failed is not a clean rollback: its own status and exit code,
/// and the step left in effect is named in the summary, `show`, the report and `run.status`.
#[test]
fn a_failed_compensation_makes_the_rollback_incomplete() {
    let dir = TempDir::new("rollback-incomplete");
    let state = TempDir::new("rollback-incomplete-state");
    let file = fixture("rollback-incomplete.yaml");
    let out = cli(&state, &["exec", file.to_str().unwrap_or_default()])
        .param("dir", &dir.str())
        .arg("--output")
        .arg("plain")
        .run();
    out.assert_code(9);
    assert_eq!(
        dir.read("compensations").as_deref(),
        Some("undo-b-failed\nundo-a\n"),
        "{}",
        out.dump()
    );
    // `finally` sees the honest status.
    assert_eq!(
        dir.read("final-status").as_deref(),
        Some("rollback_incomplete\n")
    );
    assert!(
        out.stdout.contains(" run rollback_incomplete in "),
        "{}",
        out.dump()
    );
    assert!(out.stdout.contains("(exit 9)"), "{}", out.dump());
    assert!(
        out.stdout
            .contains("rollback incomplete: left un-undone (compensation failed): b\n"),
        "{}",
        out.dump()
    );
    let id = run_id(&out.stdout);

    let show = cli(&state, &["show", &id]).run();
    show.assert_code(0);
    let head = show.stdout.lines().next().unwrap_or_default();
    assert!(head.ends_with("(rollback_incomplete)"), "{}", show.dump());
    assert!(
        show.stdout
            .contains("not undone: b (compensation failed; still in effect)\n"),
        "{}",
        show.dump()
    );

    let runs = cli(&state, &["runs"]).run();
    runs.assert_code(0);
    assert!(
        runs.stdout.contains("rollback_incomplete"),
        "{}",
        runs.dump()
    );

    let report = cli(&state, &["report", &id, "--format", "md"]).run();
    report.assert_code(0);
    assert!(
        report
            .stdout
            .contains("left un-undone (compensation failed): b"),
        "{}",
        report.dump()
    );
}

/// A rollback whose compensations all worked stays `rolled_back`, exit 3, with no such line.
#[test]
fn a_clean_rollback_is_still_rolled_back() {
    let dir = TempDir::new("rollback-clean");
    let state = TempDir::new("rollback-clean-state");
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/exec/rollback.yaml");
    let out = cli(&state, &["exec", file.to_str().unwrap_or_default()])
        .param("dir", &dir.str())
        .arg("--output")
        .arg("plain")
        .run();
    out.assert_code(3);
    assert_eq!(dir.read("final-status").as_deref(), Some("rolled_back\n"));
    assert!(!out.stdout.contains("un-undone"), "{}", out.dump());
    let show = cli(&state, &["show", &run_id(&out.stdout)]).run();
    assert!(!show.stdout.contains("not undone"), "{}", show.dump());
}

/// `logs RUN STEP` with a step the run never journaled is an error naming the steps that ran,
/// not an empty listing that reads as "the step printed nothing".
#[test]
fn logs_of_an_unknown_step_is_an_error() {
    let dir = TempDir::new("logs-unknown");
    let state = TempDir::new("logs-unknown-state");
    let file = fixture("rollback-incomplete.yaml");
    let out = cli(&state, &["exec", file.to_str().unwrap_or_default()])
        .param("dir", &dir.str())
        .arg("--output")
        .arg("plain")
        .run();
    let id = run_id(&out.stdout);
    let logs = cli(&state, &["logs", &id, "nosuchstep"]).run();
    logs.assert_code(2);
    assert_eq!(
        logs.stderr,
        format!(
            "error: run {id} has no step `nosuchstep` in its journal (steps that ran: a, b, c, \
             b:compensate, a:compensate, report); check the spelling, `runbook show {id}` lists them\n"
        ),
        "{}",
        logs.dump()
    );
    assert!(logs.stdout.is_empty(), "{}", logs.dump());
    cli(&state, &["logs", &id, "b"]).run().assert_code(0);
}

/// A run stopped by its whole-run `timeout:` says so, not merely "cancelled".
#[test]
fn a_whole_run_timeout_says_so() {
    let dir = TempDir::new("run-timeout");
    let state = TempDir::new("run-timeout-state");
    let file = fixture("whole-run-timeout.yaml");
    let out = cli(&state, &["exec", file.to_str().unwrap_or_default()])
        .param("dir", &dir.str())
        .arg("--output")
        .arg("plain")
        .run();
    out.assert_code(5);
    assert!(out.elapsed.as_secs() < 20, "{}", out.dump());
    assert!(
        out.stdout
            .contains(" slow: ⊘ cancelled — the run exceeded its timeout of 1s\n"),
        "{}",
        out.dump()
    );
    assert!(out.stdout.contains(" run cancelled in "), "{}", out.dump());
}

/// A run whose engine was killed is not shown as plainly `running`: `runs` says its process is
/// gone and suggests `resume`, and the lock it left suggests `resume RUN` before `--break-lock`.
#[test]
fn a_run_whose_process_died_is_shown_as_gone() {
    let dir = TempDir::new("process-gone");
    let state = TempDir::new("process-gone-state");
    let file = fixture("long.yaml");
    let mut engine = std::process::Command::new(env!("CARGO_BIN_EXE_runbook"))
        .args([
            "exec",
            file.to_str().unwrap_or_default(),
            "--output",
            "plain",
        ])
        .arg("-p")
        .arg(format!("dir={}", dir.str()))
        .env("RUNBOOK_STATE_DIR", state.str())
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the engine");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while dir.read("started").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the step never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // While the engine lives, the run is plainly running.
    let live = cli(&state, &["runs"]).run();
    live.assert_code(0);
    assert!(!live.stdout.contains("process gone"), "{}", live.dump());
    engine.kill().expect("kill -9 the engine");
    engine.wait().expect("reap the engine");

    let runs = cli(&state, &["runs"]).run();
    runs.assert_code(0);
    let row = runs
        .stdout
        .lines()
        .find(|l| l.contains(" long "))
        .unwrap_or_else(|| panic!("{}", runs.dump()));
    let id = row.split_whitespace().next().unwrap_or_default().to_owned();
    assert!(row.contains(" running (process gone) "), "{}", runs.dump());
    assert!(
        runs.stderr.contains(&format!(
            "hint: the process of run {id} (pid {}) is gone: `runbook resume {id}` continues it \
             where it stopped\n",
            engine.id()
        )),
        "{}",
        runs.dump()
    );

    let again = cli(&state, &["exec", file.to_str().unwrap_or_default()])
        .param("dir", &dir.str())
        .run();
    again.assert_code(6);
    assert!(
        again.stderr.contains(&format!(
            " — that process is gone: `runbook resume {id}` continues that run where it stopped \
             (and takes its lock back); --break-lock takes the lock over for a new run instead \
             (recorded in the audit log)"
        )),
        "{}",
        again.dump()
    );
}

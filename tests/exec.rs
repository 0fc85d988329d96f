//! Black-box tests of `runbook exec`: the binary is run on fixture runbooks (tests/fixtures/exec)
//! or on runbooks generated into a temporary directory, and judged by its exit code, its JSON
//! event stream and the files its steps leave behind.

mod support;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use support::{HealthServer, RunOutput, Runbook, TempDir, fixture, process_alive};

/// Checks every `--output json` run must pass: each stdout line is one event with `ts` and
/// `ts_ms`, the stream starts with `run_started` and ends with `run_finished`, whose exit code
/// is the process's.
#[track_caller]
fn assert_well_formed(out: &RunOutput) {
    assert!(
        !out.stderr.contains("panicked"),
        "the engine panicked\n{}",
        out.dump()
    );
    let lines = out.stdout.lines().count();
    assert_eq!(
        lines,
        out.events.len(),
        "a stdout line is not a JSON event\n{}",
        out.dump()
    );
    for e in &out.events {
        assert!(
            e["ts"].is_string() && e["ts_ms"].is_i64(),
            "event without ts/ts_ms: {e}"
        );
    }
    assert_eq!(
        out.events.first().map(|e| &e["event"]),
        Some(&Value::from("run_started")),
        "{}",
        out.dump()
    );
    let last = out.events.last().expect("events");
    assert_eq!(last["event"], "run_finished", "{}", out.dump());
    assert_eq!(
        last["exit_code"]
            .as_i64()
            .map(|c| i32::try_from(c).unwrap_or(-1)),
        out.code,
        "{}",
        out.dump()
    );
}

/// Attempt numbers of the `step_started` events of a step.
fn attempts_started(out: &RunOutput, step: &str) -> Vec<u64> {
    out.of_step("step_started", step)
        .iter()
        .map(|e| e["attempt"].as_u64().unwrap_or(0))
        .collect()
}

/// `delay_ms` of the `retry` events of a step.
fn retry_delays(out: &RunOutput, step: &str) -> Vec<u64> {
    out.of_step("retry", step)
        .iter()
        .map(|e| e["delay_ms"].as_u64().unwrap_or(0))
        .collect()
}

fn ts_ms(e: &Value) -> i64 {
    e["ts_ms"].as_i64().expect("ts_ms")
}

/// A runbook of `n` independent steps `s01`, `s02`, … all running `command`.
fn independent_steps(dir: &TempDir, n: usize, command: &str, max_parallel: u32) -> PathBuf {
    let mut y = format!("runbook: parallel\nmax_parallel: {max_parallel}\nsteps:\n");
    for i in 1..=n {
        let _ = writeln!(y, "  - id: s{i:02}\n    run: {command}");
    }
    dir.write("parallel.yaml", &y)
}

// ---------------------------------------------------------------------------------------------
// 1. Parallelism
// ---------------------------------------------------------------------------------------------

#[test]
fn twenty_independent_steps_run_at_once() {
    let dir = TempDir::new("parallel");
    let rb = independent_steps(&dir, 20, "sleep 1", 20);
    let out = Runbook::exec(&rb).json().run();
    out.assert_code(0);
    assert_well_formed(&out);
    assert!(
        out.elapsed < Duration::from_secs(3),
        "20 × `sleep 1` with max_parallel 20 took {:?}\n{}",
        out.elapsed,
        out.dump()
    );
    let succeeded = out.of("step_succeeded");
    assert_eq!(out.of("step_started").len(), 20, "{}", out.dump());
    assert_eq!(succeeded.len(), 20, "{}", out.dump());
    // Each step really slept: no step finished early.
    for e in &succeeded {
        assert!(
            e["duration_ms"].as_u64().unwrap_or(0) >= 950,
            "a step finished too soon: {e}"
        );
    }
    let last_start = out
        .events
        .iter()
        .rposition(|e| e["event"] == "step_started")
        .expect("a start");
    let first_success = out
        .events
        .iter()
        .position(|e| e["event"] == "step_succeeded")
        .expect("a success");
    assert!(
        last_start < first_success,
        "a step succeeded before all 20 had started\n{}",
        out.dump()
    );
    assert_eq!(out.max_concurrency(), 20);
}

#[test]
fn max_parallel_one_runs_strictly_in_sequence() {
    let dir = TempDir::new("sequential");
    // The runbook allows 20 at once; the command line overrides it.
    let rb = independent_steps(&dir, 20, "sleep 0.1", 20);
    let out = Runbook::exec(&rb).json().max_parallel(1).run();
    out.assert_code(0);
    assert_well_formed(&out);
    let transitions: Vec<(&str, &str)> = out
        .events
        .iter()
        .filter(|e| e["event"] == "step_started" || e["event"] == "step_succeeded")
        .map(|e| {
            (
                e["event"].as_str().unwrap_or_default(),
                e["step"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = (1..=20)
        .flat_map(|i| {
            [
                ("step_started".to_owned(), format!("s{i:02}")),
                ("step_succeeded".to_owned(), format!("s{i:02}")),
            ]
        })
        .collect();
    let expected: Vec<(&str, &str)> = expected
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(
        transitions,
        expected,
        "steps overlapped or ran out of file order\n{}",
        out.dump()
    );
    assert_eq!(out.max_concurrency(), 1);
    // Each step starts no earlier than the previous one ended.
    let starts = out.of("step_started");
    let ends = out.of("step_succeeded");
    for k in 1..starts.len() {
        assert!(
            ts_ms(starts[k]) >= ts_ms(ends[k - 1]),
            "{} started before {} ended",
            starts[k]["step"],
            ends[k - 1]["step"]
        );
    }
    assert!(
        out.elapsed >= Duration::from_secs(2),
        "20 × `sleep 0.1` in sequence took only {:?}",
        out.elapsed
    );
}

#[test]
fn runbook_max_parallel_caps_concurrency() {
    let dir = TempDir::new("cap");
    let rb = independent_steps(&dir, 8, "sleep 0.3", 4);
    let out = Runbook::exec(&rb).json().run();
    out.assert_code(0);
    assert_well_formed(&out);
    assert_eq!(out.max_concurrency(), 4, "{}", out.dump());
    assert!(
        out.elapsed >= Duration::from_millis(600),
        "8 × 0.3 s at 4 at a time took only {:?}",
        out.elapsed
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Retries
// ---------------------------------------------------------------------------------------------

#[test]
fn flaky_step_succeeds_on_third_attempt_with_exponential_backoff() {
    let dir = TempDir::new("flaky");
    let out = Runbook::exec(fixture("retry-flaky.yaml"))
        .dir(&dir)
        .json()
        .run();
    out.assert_code(0);
    assert_well_formed(&out);
    assert_eq!(
        dir.read("count").as_deref(),
        Some("3\n"),
        "the command ran a different number of times"
    );
    assert_eq!(attempts_started(&out, "flaky"), [1, 2, 3]);
    assert!(
        out.of_step("step_started", "flaky")
            .iter()
            .all(|e| e["attempts"] == 3)
    );
    assert_eq!(
        retry_delays(&out, "flaky"),
        [200, 400],
        "exponential backoff from 200ms without jitter\n{}",
        out.dump()
    );
    let retries = out.of_step("retry", "flaky");
    assert_eq!(
        retries
            .iter()
            .map(|e| e["attempt"].as_u64().unwrap_or(0))
            .collect::<Vec<_>>(),
        [1, 2]
    );
    assert!(
        retries.iter().all(|e| e["error"] == "exit 1"),
        "{}",
        out.dump()
    );
    let ok = out.of_step("step_succeeded", "flaky");
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0]["attempts"], 3);
    // The delays were actually waited.
    let starts = out.of_step("step_started", "flaky");
    assert!(
        ts_ms(starts[1]) - ts_ms(starts[0]) >= 200,
        "second attempt came too soon"
    );
    assert!(
        ts_ms(starts[2]) - ts_ms(starts[1]) >= 400,
        "third attempt came too soon"
    );
}

#[test]
fn flaky_step_fails_when_attempts_run_out() {
    let dir = TempDir::new("flaky-short");
    let out = Runbook::exec(fixture("retry-flaky-short.yaml"))
        .dir(&dir)
        .json()
        .run();
    out.assert_code(1);
    assert_well_formed(&out);
    assert_eq!(dir.read("count").as_deref(), Some("2\n"));
    assert_eq!(attempts_started(&out, "flaky"), [1, 2]);
    assert_eq!(retry_delays(&out, "flaky"), [200]);
    let failed = out.of_step("step_failed", "flaky");
    assert_eq!(failed.len(), 1, "{}", out.dump());
    assert_eq!(failed[0]["attempts"], 2);
    let error = failed[0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("exit 1") && error.contains("after 2 attempts"),
        "error: {error}"
    );
    assert!(out.of_step("step_succeeded", "flaky").is_empty());
    assert_eq!(out.finished()["status"], "failed");
}

#[test]
fn fixed_backoff_keeps_the_delay() {
    let dir = TempDir::new("flaky-fixed");
    let out = Runbook::exec(fixture("retry-flaky-fixed.yaml"))
        .dir(&dir)
        .json()
        .run();
    out.assert_code(0);
    assert_well_formed(&out);
    assert_eq!(retry_delays(&out, "flaky"), [200, 200], "{}", out.dump());
}

// ---------------------------------------------------------------------------------------------
// 3. Timeouts
// ---------------------------------------------------------------------------------------------

/// Wait (briefly) for processes to die; kill and report those still alive.
fn survivors(pids: &[u32]) -> Vec<u32> {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|&p| process_alive(p)).collect();
        if alive.is_empty() || std::time::Instant::now() > deadline {
            for p in &alive {
                // Do not leave `sleep 600`s behind when the assertion below fails.
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &p.to_string()])
                    .status();
            }
            return alive;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn step_timeout_kills_the_whole_process_tree() {
    let dir = TempDir::new("timeout-tree");
    let out = Runbook::exec(fixture("timeout-tree.yaml"))
        .dir(&dir)
        .json()
        .run();
    let pids: Vec<u32> = dir
        .read("pids")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let alive = survivors(&pids);
    out.assert_code(1);
    assert_well_formed(&out);
    assert_eq!(
        pids.len(),
        5,
        "expected the PIDs of 2 shells and 3 sleeps, got {pids:?}"
    );
    assert!(
        alive.is_empty(),
        "processes of the timed-out step survived: {alive:?} (of {pids:?})"
    );
    let failed = out.of_step("step_failed", "tree");
    assert_eq!(failed.len(), 1, "{}", out.dump());
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("timed out after 1s"),
        "{}",
        failed[0]
    );
    assert!(
        out.elapsed < Duration::from_secs(10),
        "the run took {:?}",
        out.elapsed
    );
    assert!(
        dir.read("after-ran").is_none(),
        "the dependant of a timed-out step ran"
    );
    assert_eq!(out.of_step("step_skipped", "after").len(), 1);
}

#[test]
fn run_timeout_cancels_the_run_with_exit_5() {
    let dir = TempDir::new("run-timeout");
    let out = Runbook::exec(fixture("run-timeout.yaml"))
        .dir(&dir)
        .json()
        .run();
    out.assert_code(5);
    assert_well_formed(&out);
    assert!(
        out.elapsed < Duration::from_secs(10),
        "a 1 s run timeout let the run take {:?}",
        out.elapsed
    );
    assert_eq!(out.finished()["status"], "cancelled");
    assert_eq!(
        out.of_step("step_failed", "slow").len(),
        1,
        "{}",
        out.dump()
    );
    assert!(out.of_step("step_succeeded", "slow").is_empty());
    assert!(
        out.of_step("step_started", "never").is_empty(),
        "a step started after the timeout"
    );
    assert!(dir.read("never-ran").is_none());
}

#[test]
fn finally_runs_after_run_timeout() {
    let dir = TempDir::new("run-timeout-finally");
    let out = Runbook::exec(fixture("run-timeout.yaml"))
        .dir(&dir)
        .json()
        .run();
    out.assert_code(5);
    assert_eq!(
        out.of_step("step_succeeded", "cleanup").len(),
        1,
        "`finally` did not run\n{}",
        out.dump()
    );
    assert_eq!(dir.read("finally-ran").as_deref(), Some("cancelled\n"));
}

// ---------------------------------------------------------------------------------------------
// 4. Verification gates
// ---------------------------------------------------------------------------------------------

#[test]
fn verify_gate_polls_until_the_service_is_healthy() {
    let dir = TempDir::new("gate");
    let server = HealthServer::start(Some(Duration::from_secs(2)));
    let out = Runbook::exec(fixture("gate-http.yaml"))
        .dir(&dir)
        .param("url", &server.url)
        .json()
        .run();
    out.assert_code(0);
    assert_well_formed(&out);
    let checks = out.of_step("check", "deploy");
    assert!(checks.iter().all(|c| c["phase"] == "verify"));
    let (last, failing) = checks.split_last().expect("checks");
    assert_eq!(last["passed"], true, "{}", out.dump());
    assert!(
        last["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("HTTP 200"),
        "{last}"
    );
    assert!(
        failing.len() >= 3,
        "expected several failing polls over 2 s at 200 ms, got {}\n{}",
        failing.len(),
        out.dump()
    );
    for c in failing {
        assert_eq!(c["passed"], false);
        assert!(
            c["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("HTTP 503"),
            "{c}"
        );
    }
    let polls: Vec<u64> = checks
        .iter()
        .map(|c| c["poll"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(polls, (1..=polls.len() as u64).collect::<Vec<_>>());
    assert!(server.requests() >= checks.len());
    assert!(
        out.elapsed >= Duration::from_millis(1900),
        "the gate passed before the service was healthy ({:?})",
        out.elapsed
    );
    assert!(out.elapsed < Duration::from_secs(8), "{:?}", out.elapsed);
    // The dependant only ran once the gate passed.
    let gate_passed = out.last_position("check", "deploy").expect("check");
    let announce = out
        .position("step_started", "announce")
        .expect("announce started");
    assert!(gate_passed < announce);
    assert!(dir.read("announced").is_some());
}

#[test]
fn verify_gate_fails_when_the_service_never_recovers() {
    let dir = TempDir::new("gate-short");
    let server = HealthServer::start(None);
    let out = Runbook::exec(fixture("gate-http-short.yaml"))
        .dir(&dir)
        .param("url", &server.url)
        .json()
        .run();
    out.assert_code(1);
    assert_well_formed(&out);
    assert!(
        out.elapsed >= Duration::from_millis(1500) && out.elapsed < Duration::from_secs(6),
        "a 2 s gate failed after {:?}",
        out.elapsed
    );
    let failed = out.of_step("step_failed", "deploy");
    assert_eq!(failed.len(), 1, "{}", out.dump());
    let error = failed[0]["error"].as_str().unwrap_or_default();
    for needle in ["service healthy", "HTTP 503", "still failing after 2s"] {
        assert!(
            error.contains(needle),
            "the error should mention {needle:?}: {error}"
        );
    }
    assert!(out.of_step("check", "deploy").len() >= 3);
    assert!(server.requests() >= 3);
    assert!(
        dir.read("announced").is_none(),
        "the dependant of a failed gate ran"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Guards
// ---------------------------------------------------------------------------------------------

#[test]
fn failed_require_aborts_before_the_action() {
    let dir = TempDir::new("require");
    let out = Runbook::exec(fixture("require-fails.yaml"))
        .dir(&dir)
        .json()
        .run();
    out.assert_code(4);
    assert_well_formed(&out);
    assert!(
        dir.read("first-ran").is_some(),
        "the step before the guard should have run"
    );
    assert!(
        dir.read("guarded-ran").is_none(),
        "the guarded action ran although its precondition failed"
    );
    assert!(dir.read("after-ran").is_none());
    let aborted = out.of_step("step_aborted", "guarded");
    assert_eq!(aborted.len(), 1, "{}", out.dump());
    assert!(
        aborted[0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("lock file present"),
        "{}",
        aborted[0]
    );
    assert!(
        out.of_step("step_started", "guarded").is_empty(),
        "the guarded step was started"
    );
    assert!(out.of_step("step_started", "after").is_empty());
    assert_eq!(out.finished()["status"], "aborted");
    assert_eq!(
        dir.read("finally-ran").as_deref(),
        Some("aborted\n"),
        "`finally` should run and see run.status"
    );
}

#[test]
fn failed_preflight_aborts_before_any_step() {
    let dir = TempDir::new("preflight");
    let out = Runbook::exec(fixture("preflight-fails.yaml"))
        .dir(&dir)
        .json()
        .run();
    out.assert_code(4);
    assert_well_formed(&out);
    assert_eq!(
        out.of_step("step_aborted", "preflight").len(),
        1,
        "{}",
        out.dump()
    );
    assert!(out.of("step_started").is_empty());
    assert!(dir.read("only-ran").is_none());
}

// ---------------------------------------------------------------------------------------------
// 6. Rollback
// ---------------------------------------------------------------------------------------------

fn compensated_steps(out: &RunOutput) -> Vec<&str> {
    out.of("compensated")
        .iter()
        .map(|e| e["step"].as_str().unwrap_or_default())
        .collect()
}

#[test]
fn rollback_compensates_completed_steps_in_reverse_order() {
    let dir = TempDir::new("rollback");
    let out = Runbook::exec(fixture("rollback.yaml"))
        .dir(&dir)
        .json()
        .run();
    out.assert_code(3);
    assert_well_formed(&out);
    assert_eq!(dir.read("done").as_deref(), Some("a\nb\nc\n"));
    assert_eq!(
        dir.read("compensations").as_deref(),
        Some("undo-b\nundo-a\n"),
        "{}",
        out.dump()
    );
    let started = out.of("rollback_started");
    assert_eq!(started.len(), 1);
    assert_eq!(started[0]["steps"], serde_json::json!(["b", "a"]));
    assert_eq!(started[0]["not_compensated"], serde_json::json!([]));
    // The failed step, the skipped one and the one that never ran are not compensated.
    assert_eq!(compensated_steps(&out), ["b", "a"]);
    assert!(out.of("compensated").iter().all(|e| e["ok"] == true));
    assert_eq!(out.of_step("step_skipped", "skipped").len(), 1);
    assert_eq!(out.finished()["status"], "rolled_back");
    assert_eq!(dir.read("final-status").as_deref(), Some("rolled_back\n"));
    // Rollback comes after the failure.
    assert!(
        out.position("step_failed", "c")
            < out
                .events
                .iter()
                .position(|e| e["event"] == "rollback_started")
    );
}

#[test]
fn rollback_does_not_cross_a_completed_point_of_no_return() {
    let dir = TempDir::new("rollback-irreversible");
    let out = Runbook::exec(fixture("rollback-irreversible.yaml"))
        .dir(&dir)
        .yes()
        .max_parallel(1)
        .json()
        .run();
    out.assert_code(3);
    assert_well_formed(&out);
    let approval = out.of_step("approval", "approve");
    assert_eq!(approval.len(), 1, "{}", out.dump());
    assert_eq!(approval[0]["decision"], "approved");
    assert_eq!(approval[0]["via"], "--yes");
    assert_eq!(dir.read("done").as_deref(), Some("a\nside\ncutover\nb\n"));
    // `a` is upstream of the completed irreversible cutover: not compensated. `b` (after it) and
    // `side` (independent of it) are, newest first.
    let started = out.of("rollback_started");
    assert_eq!(started.len(), 1);
    assert_eq!(started[0]["steps"], serde_json::json!(["b", "side"]));
    assert_eq!(started[0]["not_compensated"], serde_json::json!(["a"]));
    assert_eq!(
        dir.read("compensations").as_deref(),
        Some("undo-b\nundo-side\n")
    );
    assert_eq!(compensated_steps(&out), ["b", "side"]);
}

#[test]
fn approval_without_yes_or_terminal_is_denied() {
    // Without a journal there is no other shell to approve from: the approval is refused at once.
    // (With a journal the run waits for `runbook approve`; see tests/durable.rs.)
    let dir = TempDir::new("approval-denied");
    let out = Runbook::exec(fixture("rollback-irreversible.yaml"))
        .dir(&dir)
        .arg("--no-journal")
        .max_parallel(1)
        .json()
        .run();
    out.assert_code(4);
    assert_well_formed(&out);
    assert_eq!(
        out.of_step("step_aborted", "approve").len(),
        1,
        "{}",
        out.dump()
    );
    assert_eq!(
        dir.read("done").as_deref(),
        Some("a\nside\n"),
        "the irreversible step ran without approval"
    );
    assert!(out.of("rollback_started").is_empty());
}

// ---------------------------------------------------------------------------------------------
// 7. Injection
// ---------------------------------------------------------------------------------------------

#[test]
fn interpolated_params_are_data_not_shell() {
    let dir = TempDir::new("injection");
    let v = "$(touch pwned); x";
    let w = "'; touch pwned2; echo `touch pwned3` \"$HOME\" '";
    let out = Runbook::exec(fixture("injection.yaml"))
        .dir(&dir)
        .param("v", v)
        .param("w", w)
        .cwd(dir.path())
        .json()
        .run();
    out.assert_code(0);
    assert_well_formed(&out);
    assert_eq!(dir.read("out.txt"), Some(format!("{v}\n")));
    assert_eq!(dir.read("out-w.txt"), Some(format!("{w}\n")));
    let mut files: Vec<String> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["out-w.txt", "out.txt"],
        "a param value was executed as shell"
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Secret masking
// ---------------------------------------------------------------------------------------------

/// Every string inside a JSON value.
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(o) => o.iter().for_each(|(k, x)| {
            out.push(k.clone());
            strings(x, out);
        }),
        _ => {}
    }
}

#[track_caller]
fn assert_never_shown(out: &RunOutput, secret: &str) {
    let needle = secret.as_bytes();
    for (name, bytes) in [("stdout", &out.stdout_raw), ("stderr", &out.stderr_raw)] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "the secret appears in {name}\n{}",
            out.dump()
        );
    }
    let mut all = Vec::new();
    for e in &out.events {
        strings(e, &mut all);
    }
    assert!(
        !all.iter().any(|s| s.contains(secret)),
        "the secret appears in an event\n{}",
        out.dump()
    );
}

const TOKEN: &str = "s3cr3tTOKENvalue123";
const PASSWORD: &str = "hunter2hunter2";

#[test]
fn secrets_are_masked_in_json_events() {
    let dir = TempDir::new("secrets-json");
    let out = Runbook::exec(fixture("secrets.yaml"))
        .dir(&dir)
        .param("pw", PASSWORD)
        .env("RB_TEST_TOKEN", TOKEN)
        .json()
        .run();
    out.assert_code(1);
    assert_well_formed(&out);
    assert_never_shown(&out, TOKEN);
    assert_never_shown(&out, PASSWORD);
    let line = |step: &str| -> Vec<String> {
        out.of_step("output", step)
            .iter()
            .map(|e| e["line"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(line("echo"), ["token is ***"]);
    assert_eq!(line("printenv"), ["***"]);
    assert_eq!(line("stderr"), ["on stderr *** and ***"]);
    assert_eq!(line("fails"), ["failing with ***"]);
    let cmd = out.of_step("command", "echo");
    assert_eq!(cmd[0]["command"], "echo \"token is ***\"");
    assert_eq!(out.events[0]["params"]["pw"], "***");
    assert!(out.stdout.contains("***"));
}

#[test]
fn secrets_are_masked_in_plain_output() {
    let dir = TempDir::new("secrets-plain");
    let out = Runbook::exec(fixture("secrets.yaml"))
        .dir(&dir)
        .param("pw", PASSWORD)
        .env("RB_TEST_TOKEN", TOKEN)
        .arg("--output")
        .arg("plain")
        .run();
    out.assert_code(1);
    assert_never_shown(&out, TOKEN);
    assert_never_shown(&out, PASSWORD);
    assert!(out.stdout.contains("token is ***"), "{}", out.dump());
    assert!(
        out.stdout.contains("on stderr *** and ***"),
        "{}",
        out.dump()
    );
}

#[test]
fn secret_needing_shell_quotes_is_masked_in_the_command() {
    let dir = TempDir::new("secrets-quoted");
    let rb = dir.write(
        "quoted.yaml",
        "runbook: quoted\nsecrets:\n  tok:\n    env: RB_TEST_TOKEN\nsteps:\n  - id: echo\n    run: echo {{ secrets.tok }}\n",
    );
    let secret = "pa'ss wo\"rd";
    let out = Runbook::exec(&rb).env("RB_TEST_TOKEN", secret).json().run();
    out.assert_code(0);
    assert_never_shown(&out, secret);
    assert_eq!(out.of_step("output", "echo")[0]["line"], "***");
    // The rendered command is `echo 'pa'\''ss wo"rd'`: the secret, trivially recoverable.
    let command = out.of_step("command", "echo")[0]["command"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        !command.contains("ss wo\"rd"),
        "the command event reveals the secret: {command}"
    );
}

// ---------------------------------------------------------------------------------------------
// 9. `when` and `continue_on_failure`
// ---------------------------------------------------------------------------------------------

#[test]
fn false_when_skips_the_step_and_continue_on_failure_keeps_going() {
    let dir = TempDir::new("guards");
    let out = Runbook::exec(fixture("guards.yaml"))
        .dir(&dir)
        .max_parallel(1)
        .json()
        .run();
    out.assert_code(0);
    assert_well_formed(&out);
    let skipped = out.of_step("step_skipped", "maybe");
    assert_eq!(skipped.len(), 1, "{}", out.dump());
    assert_eq!(skipped[0]["reason"], "guard `params.flag` is false");
    assert!(out.of_step("step_started", "maybe").is_empty());
    assert!(dir.read("maybe-ran").is_none());
    // A step skipped by its guard does not hold back its dependants.
    assert!(dir.read("after-maybe-ran").is_some());
    assert_eq!(out.of_step("step_succeeded", "after-maybe").len(), 1);
    // The failed step's dependant is skipped; the independent step still runs, after the failure.
    let failed = out.position("step_failed", "flaky").expect("flaky failed");
    let skipped = out.of_step("step_skipped", "after-flaky");
    assert_eq!(skipped.len(), 1);
    assert!(
        skipped[0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("upstream step `flaky`"),
        "{}",
        skipped[0]
    );
    assert!(dir.read("after-flaky-ran").is_none());
    let independent = out
        .position("step_started", "independent")
        .expect("independent started");
    assert!(failed < independent);
    assert!(dir.read("independent-ran").is_some());
}

#[test]
fn true_when_runs_the_step() {
    let dir = TempDir::new("guards-true");
    let out = Runbook::exec(fixture("guards.yaml"))
        .dir(&dir)
        .param("flag", "true")
        .json()
        .run();
    out.assert_code(0);
    assert!(
        out.of_step("step_skipped", "maybe").is_empty(),
        "{}",
        out.dump()
    );
    assert!(dir.read("maybe-ran").is_some());
}

#[test]
fn without_continue_on_failure_a_failure_stops_the_run() {
    let dir = TempDir::new("guards-strict");
    let out = Runbook::exec(fixture("guards-strict.yaml"))
        .dir(&dir)
        .max_parallel(1)
        .json()
        .run();
    out.assert_code(1);
    assert_well_formed(&out);
    assert_eq!(
        out.of_step("step_skipped", "independent").len(),
        1,
        "{}",
        out.dump()
    );
    assert!(out.of_step("step_started", "independent").is_empty());
    assert!(dir.read("independent-ran").is_none());
}

// ---------------------------------------------------------------------------------------------
// 10. Executing a saved plan
// ---------------------------------------------------------------------------------------------

#[test]
fn exec_plan_runs_the_reviewed_plan_and_refuses_a_changed_runbook() {
    let dir = TempDir::new("plan");
    let source = std::fs::read_to_string(fixture("plan-exec.yaml")).expect("fixture");
    let rb = dir.write("runbook.yaml", &source);
    let plan = dir.join("plan.json");
    let made = Runbook::plan(&rb, &plan).param("x", "1").dir(&dir).run();
    made.assert_code(0);
    assert!(plan.exists());

    let out = Runbook::exec_plan(&plan).yes().json().run();
    out.assert_code(0);
    assert_well_formed(&out);
    assert_eq!(out.events[0]["params"]["x"], 1);
    assert_eq!(dir.read("plan-ran").as_deref(), Some("x=1\n"));

    // Different params than reviewed: refused, nothing runs.
    let out = Runbook::exec_plan(&plan).param("x", "2").yes().json().run();
    out.assert_code(6);
    assert!(out.events.is_empty(), "{}", out.dump());
    assert_eq!(dir.read("plan-ran").as_deref(), Some("x=1\n"));

    // The runbook changed after review: refused, nothing runs.
    std::fs::write(
        &rb,
        source.replace("x={{ params.x }}", "changed={{ params.x }}"),
    )
    .expect("edit runbook");
    std::fs::remove_file(dir.join("plan-ran")).expect("remove marker");
    let out = Runbook::exec_plan(&plan).yes().json().run();
    out.assert_code(6);
    assert!(out.events.is_empty(), "{}", out.dump());
    assert!(
        out.stderr.contains("changed since the plan was made"),
        "{}",
        out.dump()
    );
    assert!(!out.stderr.contains("panicked"));
    assert!(
        dir.read("plan-ran").is_none(),
        "a step of a changed runbook ran"
    );
}

// ---------------------------------------------------------------------------------------------
// 11. Errors before the run: exit 2, nothing runs, no panic
// ---------------------------------------------------------------------------------------------

#[test]
fn undefined_secret_is_a_clear_error_and_nothing_runs() {
    let dir = TempDir::new("missing-secret");
    let out = Runbook::exec(fixture("missing-secret.yaml"))
        .dir(&dir)
        .env_remove("RB_TEST_SURELY_UNSET_TOKEN")
        .json()
        .run();
    out.assert_code(2);
    assert!(out.events.is_empty(), "the run started\n{}", out.dump());
    assert!(!out.stderr.contains("panicked"), "{}", out.dump());
    assert!(
        out.stderr.contains("secret `tok`")
            && out.stderr.contains("RB_TEST_SURELY_UNSET_TOKEN")
            && out.stderr.contains("not set"),
        "unclear error\n{}",
        out.dump()
    );
    assert!(dir.read("use-ran").is_none());
}

#[test]
fn invalid_invocations_exit_2_without_panicking() {
    let dir = TempDir::new("invalid");
    let broken = dir.write(
        "broken.yaml",
        "runbook: broken\nsteps:\n  - id: a\n    run: echo {{ params.nope }}\n    needs: [ghost]\n",
    );
    let cases = [
        Runbook::exec(dir.join("does-not-exist.yaml")),
        Runbook::exec(&broken),
        Runbook::exec(fixture("plan-exec.yaml")).dir(&dir),
        Runbook::exec(fixture("plan-exec.yaml"))
            .dir(&dir)
            .param("x", "not-a-number"),
        Runbook::exec(fixture("plan-exec.yaml"))
            .dir(&dir)
            .param("x", "1")
            .max_parallel(0),
        Runbook::exec_plan(dir.join("no-plan.json")),
    ];
    for case in cases {
        let out = case.json().run();
        out.assert_code(2);
        assert!(out.events.is_empty(), "{}", out.dump());
        assert!(!out.stderr.contains("panicked"), "{}", out.dump());
        assert!(
            out.stderr.contains("error"),
            "no error message\n{}",
            out.dump()
        );
    }
    assert!(dir.read("plan-ran").is_none());
}

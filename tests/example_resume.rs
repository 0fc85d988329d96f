//! The flagship example stays resumable after Ctrl-C (issue 21): SIGINT to the real
//! `runbook exec runbooks/example.yaml` mid-run cancels it (exit 5) without deleting its
//! scratch directory, and `runbook resume RUN --yes` finishes it without asking anything.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Runbook, TempDir};

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("runbooks/example.yaml")
}

/// Run the example, send SIGINT to the engine while `start-app` and `wait-ready` run, and check
/// that it was cancelled without losing its scratch directory. Returns the run id and the
/// directory.
fn interrupt_example(state: &TempDir, tmp: &TempDir) -> (String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_runbook"))
        .args([
            "exec",
            example().to_str().unwrap_or_default(),
            "--yes",
            "--output",
            "json",
        ])
        .env("RUNBOOK_STATE_DIR", state.str())
        .env("TMPDIR", tmp.str())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn runbook");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel::<Value>();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v.clone());
                all.push(v);
            }
        }
        all
    });
    // Wait until `start-app` (its 2 s sleep) and `wait-ready` (its polled gate) both run:
    // mid-run, after `setup` made the scratch directory.
    let deadline = Instant::now() + Duration::from_mins(1);
    let mut running = std::collections::BTreeSet::new();
    let mut dir = String::new();
    while running.len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(e) = rx.recv_timeout(left) else {
            let _ = child.kill();
            panic!("the run never reached start-app and wait-ready together");
        };
        if e["event"] == "step_succeeded" && e["step"] == "setup" {
            e["outputs"]["dir"]
                .as_str()
                .unwrap_or_default()
                .clone_into(&mut dir);
        }
        if e["event"] == "step_started" && (e["step"] == "start-app" || e["step"] == "wait-ready") {
            running.insert(e["step"].as_str().unwrap_or_default().to_owned());
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill(1)");
    assert!(sent.success());
    let status = child.wait().expect("wait for runbook");
    let events = reader.join().expect("reader");
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    let dump = format!(
        "{}\n--- stderr ---\n{stderr}",
        events
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(status.code(), Some(5), "{dump}");
    let finished = events
        .iter()
        .rfind(|e| e["event"] == "run_finished")
        .unwrap_or_else(|| panic!("no run_finished\n{dump}"));
    assert_eq!(finished["status"], "cancelled", "{dump}");
    let run_id = events
        .iter()
        .find(|e| e["event"] == "run_started")
        .and_then(|e| e["run_id"].as_str())
        .unwrap_or_else(|| panic!("no run_started\n{dump}"))
        .to_owned();
    // The finally step ran and kept the directory, saying how to continue.
    assert!(!dir.is_empty(), "{dump}");
    assert!(
        Path::new(&dir).join("current").exists(),
        "the cancelled run deleted its scratch directory {dir}\n{dump}"
    );
    assert!(
        !Path::new(&dir).join("ready").exists(),
        "start-app was not interrupted\n{dump}"
    );
    (run_id, dir)
}

#[test]
fn ctrl_c_keeps_the_example_resumable_and_resume_finishes_it() {
    let state = TempDir::new("example-sigint-state");
    let tmp = TempDir::new("example-sigint-tmp");
    let (run_id, dir) = interrupt_example(&state, &tmp);

    // Resume: no question asked (non-interactive, no --rerun/--skip), the run succeeds in the
    // same directory, and the finally step cleans it up.
    let resumed = Runbook::new(["resume".to_owned(), run_id.clone(), "--yes".to_owned()])
        .env("RUNBOOK_STATE_DIR", &state.str())
        .env("TMPDIR", &tmp.str())
        .json()
        .run();
    resumed.assert_code(0);
    assert_eq!(
        resumed.finished()["status"],
        "succeeded",
        "{}",
        resumed.dump()
    );
    for kept in ["setup", "read-metrics", "read-history", "approve-rollback"] {
        assert!(
            resumed.of_step("step_started", kept).is_empty(),
            "{kept} ran again\n{}",
            resumed.dump()
        );
    }
    for ran in ["start-app", "wait-ready", "smoke-test", "report"] {
        assert_eq!(
            resumed.of_step("step_succeeded", ran).len(),
            1,
            "{ran}\n{}",
            resumed.dump()
        );
    }
    let smoke = &resumed.of_step("step_succeeded", "smoke-test")[0];
    assert_eq!(
        smoke["outputs"]["report"],
        "live release v1, 5xx 0 %",
        "{}",
        resumed.dump()
    );
    assert!(
        !Path::new(&dir).exists(),
        "the finished run left {dir} behind\n{}",
        resumed.dump()
    );
}

/// The report of a run resumed after Ctrl-C: each run of a step has its own span, the time no
/// engine ran is a gap of its own (in no step's duration), steps the resume verified or re-ran
/// are not `unfinished`, and `JUnit` times each run of a step by itself.
#[test]
fn the_report_of_a_resumed_run_shows_each_run_and_the_gap() {
    const GAP_MS: u64 = 4000;
    let state = TempDir::new("example-report-state");
    let tmp = TempDir::new("example-report-tmp");
    let (run_id, _dir) = interrupt_example(&state, &tmp);
    std::thread::sleep(Duration::from_millis(GAP_MS));
    Runbook::new(["resume".to_owned(), run_id.clone(), "--yes".to_owned()])
        .env("RUNBOOK_STATE_DIR", &state.str())
        .env("TMPDIR", &tmp.str())
        .run()
        .assert_code(0);
    let report = |format: &str| {
        let out = Runbook::new(["report", &run_id, "--format", format].map(str::to_owned))
            .env("RUNBOOK_STATE_DIR", &state.str())
            .run();
        out.assert_code(0);
        out.stdout
    };
    let json: Value = serde_json::from_str(&report("json")).expect("JSON report");
    let timeline = json["sections"][0]["timeline"]
        .as_array()
        .expect("timeline")
        .clone();
    let dump = serde_json::to_string_pretty(&timeline).unwrap_or_default();
    let entries = |step: &str| -> Vec<&Value> {
        timeline
            .iter()
            .filter(|e| e["kind"] == "step" && e["step"] == step)
            .collect()
    };
    // Nothing of a succeeded run is left unfinished.
    assert!(
        timeline.iter().all(|e| e["outcome"] != "unfinished"),
        "{dump}"
    );
    // The gap is an entry of its own, at least as long as the pause.
    let gaps: Vec<&Value> = timeline.iter().filter(|e| e["kind"] == "gap").collect();
    assert_eq!(gaps.len(), 1, "{dump}");
    let gap = gaps[0];
    assert!(gap["duration_ms"].as_u64().unwrap_or(0) >= GAP_MS, "{dump}");
    let (gap_start, gap_end) = (
        gap["start_ms"].as_i64().unwrap_or(0),
        gap["end_ms"].as_i64().unwrap_or(0),
    );
    // No step's span covers the gap.
    for e in timeline.iter().filter(|e| e["kind"] == "step") {
        let (start, end) = (
            e["start_ms"].as_i64().unwrap_or(0),
            e["end_ms"].as_i64().unwrap_or(i64::MAX),
        );
        assert!(
            end <= gap_start || start >= gap_end,
            "{} spans the gap\n{dump}",
            e["step"]
        );
    }
    // `start-app` ran twice: interrupted, then its 2nd run succeeded, each with its own span.
    let start_app = entries("start-app");
    assert_eq!(start_app.len(), 2, "{dump}");
    assert_eq!(start_app[0]["outcome"], "interrupted", "{dump}");
    assert_eq!(start_app[1]["outcome"], "succeeded", "{dump}");
    assert_eq!(start_app[1]["rerun"], 1, "{dump}");
    assert!(
        start_app[1]["duration_ms"].as_u64().unwrap_or(0) >= 2000,
        "{dump}"
    );
    // `setup` ran once, before the stop: one entry, short.
    let setup = entries("setup");
    assert_eq!(setup.len(), 1, "{dump}");
    assert!(
        setup[0]["duration_ms"].as_u64().unwrap_or(u64::MAX) < 2000,
        "{dump}"
    );
    // The slowest step is no longer inflated by the gap.
    for b in json["sections"][0]["bottlenecks"]
        .as_array()
        .into_iter()
        .flatten()
    {
        assert!(
            b["share_pct"].as_f64().unwrap_or(100.0) < 60.0,
            "{b}\n{dump}"
        );
    }

    let junit = report("junit");
    let case_time = |name: &str| -> Option<f64> {
        let at = junit.find(&format!("name=\"{name}\" time=\""))?;
        let rest = &junit[at + name.len() + 14..];
        rest[..rest.find('"')?].parse().ok()
    };
    let setup_time = case_time("setup").unwrap_or_else(|| panic!("{junit}"));
    assert!(setup_time < 2.0, "{junit}");
    let again = case_time("start-app (2nd run)").unwrap_or_else(|| panic!("{junit}"));
    // 2 s of sleep, not the 4 s pause on top.
    assert!((2.0..6.0).contains(&again), "{junit}");
    assert!(!junit.contains("no engine running"), "{junit}");
    assert!(!junit.contains("unfinished"), "{junit}");

    let md = report("md");
    assert!(md.contains("`start-app` (2nd run)"), "{md}");
    assert!(md.contains("_no engine running_"), "{md}");
}

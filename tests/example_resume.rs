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

#[test]
fn ctrl_c_keeps_the_example_resumable_and_resume_finishes_it() {
    let state = TempDir::new("example-sigint-state");
    let tmp = TempDir::new("example-sigint-tmp");
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
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut running = std::collections::BTreeSet::new();
    let mut dir = String::new();
    while running.len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(e) = rx.recv_timeout(left) else {
            let _ = child.kill();
            panic!("the run never reached start-app and wait-ready together");
        };
        if e["event"] == "step_succeeded" && e["step"] == "setup" {
            dir = e["outputs"]["dir"].as_str().unwrap_or_default().to_owned();
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

//! What the performance work must not break: batched output is complete, masked and committed
//! before the step's end; capped output keeps its head and tail and says what it dropped; idle
//! output is committed within the flush interval; the YAML node budget is named and can be set.

mod support;

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use runbook::state::{SqliteStore, Store};
use support::{Runbook, TempDir};

/// Exit code of invalid input (`runbook --help` documents it).
const INVALID: i32 = 2;

/// The logs of the only run in `state`, as (stream, text).
fn logs(state: &Path) -> Vec<(String, String)> {
    let store = SqliteStore::open(state).expect("open state");
    let runs = store.runs(10).expect("runs");
    assert_eq!(runs.len(), 1, "{runs:?}");
    store
        .logs(&runs[0].id, None)
        .expect("logs")
        .into_iter()
        .map(|l| (l.stream, l.text))
        .collect()
}

/// The kinds of the journal events of the only run in `state`, in order.
fn kinds(state: &Path) -> Vec<String> {
    let store = SqliteStore::open(state).expect("open state");
    let runs = store.runs(10).expect("runs");
    store
        .events(&runs[0].id)
        .expect("events")
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

#[test]
fn every_line_of_a_chatty_step_is_stored_in_order_when_under_the_limit() {
    let dir = TempDir::new("chatty-all");
    let state = TempDir::new("chatty-all-state");
    let rb = dir.write(
        "talk.yaml",
        "runbook: talk\nsteps:\n  - id: talk\n    run: seq 1 20000; echo oops >&2\n  - id: after\n    needs: [talk]\n    run: echo done\n",
    );
    Runbook::exec(&rb)
        .env("RUNBOOK_STATE_DIR", &state.str())
        .run()
        .assert_code(0);
    let lines = logs(state.path());
    let talk: Vec<&str> = lines
        .iter()
        .filter(|(s, _)| s == "stdout")
        .map(|(_, t)| t.as_str())
        .take(20_000)
        .collect();
    let expected: Vec<String> = (1..=20_000).map(|i| i.to_string()).collect();
    assert_eq!(
        talk,
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert!(lines.contains(&("stderr".to_owned(), "oops".to_owned())));
    assert_eq!(lines.last().map(|(_, t)| t.as_str()), Some("done"));
}

#[test]
fn capped_output_keeps_head_and_tail_and_says_what_was_dropped() {
    let dir = TempDir::new("chatty-cap");
    let state = TempDir::new("chatty-cap-state");
    // 5,000 lines of `line-NNNNN` (11 bytes each with the newline): 55,000 bytes, limit 8 KiB.
    let rb = dir.write(
        "cap.yaml",
        "runbook: cap\nsteps:\n  - id: talk\n    run: for i in $(seq 1 5000); do printf 'line-%05d\\n' $i; done\n",
    );
    Runbook::exec(&rb)
        .env("RUNBOOK_STATE_DIR", &state.str())
        .env("RUNBOOK_OUTPUT_LIMIT", "8KiB")
        .run()
        .assert_code(0);
    let lines = logs(state.path());
    let texts: Vec<&str> = lines.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(texts.first(), Some(&"line-00001"), "the head is kept");
    assert_eq!(texts.last(), Some(&"line-05000"), "the tail is kept");
    assert!(!texts.contains(&"line-02500"), "the middle is dropped");
    let notes: Vec<&&str> = texts.iter().filter(|t| t.contains("dropped")).collect();
    assert_eq!(notes.len(), 1, "{notes:?}");
    let stored: usize = texts
        .iter()
        .filter(|t| t.starts_with("line-"))
        .map(|t| t.len() + 1)
        .sum();
    assert!(stored <= 8 * 1024, "{stored} bytes stored");
    // The note's count is exactly what is missing, and the kept lines are contiguous runs.
    let dropped: usize = 5000 * 11 - stored;
    assert!(
        notes[0].contains(&format!("{dropped} bytes")),
        "{} (expected {dropped} bytes)",
        notes[0]
    );
    assert!(notes[0].contains("RUNBOOK_OUTPUT_LIMIT"), "{}", notes[0]);
    let note_at = texts
        .iter()
        .position(|t| t.contains("dropped"))
        .unwrap_or(0);
    let numbers = |s: &[&str]| -> Vec<u32> {
        s.iter()
            .filter_map(|t| t.strip_prefix("line-")?.parse().ok())
            .collect()
    };
    let head = numbers(&texts[..note_at]);
    let tail = numbers(&texts[note_at + 1..]);
    assert_eq!(
        head,
        (1..=u32::try_from(head.len()).unwrap_or(0)).collect::<Vec<_>>()
    );
    let first_tail = 5001 - u32::try_from(tail.len()).unwrap_or(0);
    assert_eq!(tail, (first_tail..=5000).collect::<Vec<_>>());
}

#[test]
fn a_huge_single_line_is_cut_to_the_limit() {
    let dir = TempDir::new("chatty-line");
    let state = TempDir::new("chatty-line-state");
    let rb = dir.write(
        "line.yaml",
        "runbook: line\nsteps:\n  - id: talk\n    run: head -c 300000 /dev/zero | tr '\\0' x; echo; echo end\n",
    );
    Runbook::exec(&rb)
        .env("RUNBOOK_STATE_DIR", &state.str())
        .env("RUNBOOK_OUTPUT_LIMIT", "16KiB")
        .run()
        .assert_code(0);
    let lines = logs(state.path());
    let total: usize = lines.iter().map(|(_, t)| t.len()).sum();
    assert!(total < 17 * 1024, "{total} bytes stored");
    assert_eq!(lines.last().map(|(_, t)| t.as_str()), Some("end"));
    assert!(
        lines.iter().any(|(_, t)| t.contains("dropped")),
        "{lines:?}"
    );
}

#[test]
fn a_secret_is_masked_in_the_head_the_tail_and_the_note() {
    let dir = TempDir::new("chatty-secret");
    let state = TempDir::new("chatty-secret-state");
    let rb = dir.write(
        "secret.yaml",
        "runbook: secret\nsecrets:\n  token: {env: PERF_TOKEN}\nsteps:\n  - id: talk\n    run: for i in $(seq 1 3000); do echo \"$i $PERF_TOKEN\"; done\n    env: {PERF_TOKEN: \"{{ secrets.token }}\"}\n",
    );
    Runbook::exec(&rb)
        .env("RUNBOOK_STATE_DIR", &state.str())
        .env("PERF_TOKEN", "hunter2-very-secret")
        .env("RUNBOOK_OUTPUT_LIMIT", "4KiB")
        .run()
        .assert_code(0);
    let lines = logs(state.path());
    assert!(lines.len() > 10, "{lines:?}");
    assert!(lines.iter().any(|(_, t)| t.contains("dropped")));
    for (_, t) in &lines {
        assert!(!t.contains("hunter2"), "secret stored: {t}");
    }
    assert!(lines.first().is_some_and(|(_, t)| t.starts_with("1 ")));
    assert!(lines.last().is_some_and(|(_, t)| t.starts_with("3000 ")));
}

#[test]
fn output_is_committed_before_the_steps_end_in_the_journal() {
    let dir = TempDir::new("chatty-order");
    let state = TempDir::new("chatty-order-state");
    let rb = dir.write(
        "order.yaml",
        "runbook: order\nsteps:\n  - id: a\n    run: seq 1 3000\n  - id: b\n    needs: [a]\n    run: echo b\n",
    );
    Runbook::exec(&rb)
        .env("RUNBOOK_STATE_DIR", &state.str())
        .env("RUNBOOK_OUTPUT_LIMIT", "2KiB")
        .run()
        .assert_code(0);
    // Logs and events are separate tables: compare the times they were made. Every line of
    // `a` (tail included) was queued no later than `a`'s end.
    let store = SqliteStore::open(state.path()).expect("open");
    let run = store.runs(1).expect("runs").remove(0);
    let end_a = store
        .events(&run.id)
        .expect("events")
        .into_iter()
        .find(|e| e.step.as_deref() == Some("a") && e.kind == "step_succeeded")
        .expect("a succeeded")
        .at_ms;
    let a_logs = store.logs(&run.id, Some("a")).expect("logs");
    assert!(
        a_logs.iter().any(|l| l.text == "3000"),
        "the tail is stored"
    );
    for l in &a_logs {
        assert!(l.at_ms <= end_a, "{l:?} after the step's end at {end_a}");
    }
    let k = kinds(state.path());
    assert!(k.iter().any(|k| k == "run_finished"), "{k:?}");
}

#[test]
fn idle_output_is_committed_within_the_flush_interval() {
    let dir = TempDir::new("chatty-idle");
    let state = TempDir::new("chatty-idle-state");
    let rb = dir.write(
        "idle.yaml",
        "runbook: idle\nsteps:\n  - id: talk\n    run: echo first-line; sleep 4\n",
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_runbook"))
        .arg("--state-dir")
        .arg(state.path())
        .args(["exec", "--output", "plain"])
        .arg(&rb)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    // Another process (this one) sees the line while the step still runs.
    let started = Instant::now();
    let mut seen = false;
    while started.elapsed() < Duration::from_secs(20) && !seen {
        std::thread::sleep(Duration::from_millis(50));
        if let Ok(store) = SqliteStore::open(state.path())
            && let Ok(runs) = store.runs(1)
            && let Some(r) = runs.first()
        {
            seen = store
                .logs(&r.id, None)
                .is_ok_and(|l| l.iter().any(|l| l.text == "first-line"));
        }
    }
    let still_running = child.try_wait().expect("wait").is_none();
    let status = child.wait().expect("wait");
    assert!(seen, "the line was never committed");
    assert!(
        still_running,
        "the line was only committed at the step's end"
    );
    assert!(status.success());
}

#[test]
fn the_yaml_node_budget_is_named_and_can_be_raised_or_lowered() {
    let dir = TempDir::new("node-budget");
    let mut y = String::from("runbook: many\nsteps:\n");
    for i in 0..40 {
        let _ = write!(y, "  - id: s{i}\n    run: echo {i}\n");
    }
    let rb = dir.write("many.yaml", &y);
    let out = Runbook::new(["validate".to_owned(), rb.display().to_string()])
        .env("RUNBOOK_YAML_MAX_NODES", "50")
        .run();
    out.assert_code(INVALID);
    // The message may be wrapped: compare words.
    let words = out.stderr.replace(['│', '\n'], " ");
    let words = words.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(words.contains("limited to 50 YAML nodes"), "{}", out.dump());
    assert!(
        out.stderr.contains("RUNBOOK_YAML_MAX_NODES"),
        "{}",
        out.dump()
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.dump());
    Runbook::new(["validate".to_owned(), rb.display().to_string()])
        .env("RUNBOOK_YAML_MAX_NODES", "1000")
        .run()
        .assert_code(0);
    let bad = Runbook::new(["validate".to_owned(), rb.display().to_string()])
        .env("RUNBOOK_YAML_MAX_NODES", "lots")
        .run();
    bad.assert_code(INVALID);
    assert!(
        bad.stderr.contains("RUNBOOK_YAML_MAX_NODES=`lots`"),
        "{}",
        bad.dump()
    );
}

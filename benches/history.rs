//! Benchmark: history at scale. A state directory with 100,000 past runs (each a copy of a real
//! journaled run: its events too); the time of `runbook runs`, `show`, `report` and
//! `drill history` against it, process start included (target: each < 100 ms).
//!
//! Run with `just bench` (release build).

use std::process::{Command, Stdio};
use std::time::Instant;

const RUNS: usize = 100_000;

fn time(bin: &str, state: &std::path::Path, args: &[&str]) -> f64 {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            let out = Command::new(bin)
                .arg("--state-dir")
                .arg(state)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
                .expect("spawn");
            assert!(
                out.status.success(),
                "{args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let dir = std::env::temp_dir().join(format!("runbook-history-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let state = dir.join("state");
    let rb = dir.join("five.yaml");
    let mut y = String::from("runbook: five\nsteps:\n");
    for i in 0..5 {
        y.push_str("  - id: s");
        y.push_str(&i.to_string());
        y.push_str("\n    run: echo step\n");
    }
    std::fs::write(&rb, y).expect("write");
    let bin = env!("CARGO_BIN_EXE_runbook");
    let status = Command::new(bin)
        .arg("--state-dir")
        .arg(&state)
        .args(["exec", "--output", "plain"])
        .arg(&rb)
        .stdout(Stdio::null())
        .status()
        .expect("exec");
    assert!(status.success());

    // 100,000 copies of that run, spread over the past year, in one transaction.
    let t = Instant::now();
    let mut db = rusqlite::Connection::open(state.join("runbook.db")).expect("open");
    let real: String = db
        .query_row("SELECT id FROM runs LIMIT 1", [], |r| r.get(0))
        .expect("the run");
    let tx = db.transaction().expect("tx");
    {
        let mut run = tx
            .prepare(
                "INSERT INTO runs (id, runbook, file, runbook_hash, params, user, host, pid, \
                 parent_run, status, started_at_ms, finished_at_ms) \
                 SELECT ?1, runbook, file, runbook_hash, params, user, host, pid, parent_run, \
                 status, started_at_ms - ?2, finished_at_ms - ?2 FROM runs WHERE id = ?3",
            )
            .expect("prepare");
        let mut events = tx
            .prepare(
                "INSERT INTO events (run_id, seq, at_ms, step, kind, attempt, data) \
                 SELECT ?1, seq, at_ms - ?2, step, kind, attempt, data FROM events \
                 WHERE run_id = ?3",
            )
            .expect("prepare");
        for i in 0..RUNS {
            let id = format!("20250101T000000-{i:06x}");
            let back = i64::try_from(RUNS - i).unwrap_or(0) * 300_000;
            run.execute(rusqlite::params![id, back, real])
                .expect("insert run");
            events
                .execute(rusqlite::params![id, back, real])
                .expect("insert events");
        }
    }
    tx.commit().expect("commit");
    drop(db);
    let fill = t.elapsed().as_secs_f64();

    println!(
        "history: {RUNS} past runs in the state directory (filled in {fill:.1} s; best of 3, process start included)"
    );
    for (what, args) in [
        ("runs", vec!["runs"]),
        ("show", vec!["show", real.as_str()]),
        ("report", vec!["report", real.as_str()]),
        ("drill history", vec!["drill", "history"]),
    ] {
        let secs = time(bin, &state, &args);
        println!("  runbook {what:<14} {:>7.1} ms", secs * 1000.0);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

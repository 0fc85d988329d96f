//! Benchmark: a chatty step — one `run` printing 200,000 lines — journaled against
//! `--no-journal` (target: journaled ≤ 3× unjournaled), and what the journal kept.
//!
//! Run with `just bench` (release build).

use std::process::{Command, Stdio};
use std::time::Instant;

const LINES: u32 = 200_000;

fn time(cmd: &mut Command) -> f64 {
    let t = Instant::now();
    let out = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed().as_secs_f64()
}

fn main() {
    let dir = std::env::temp_dir().join(format!("runbook-chatty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("chatty.yaml");
    std::fs::write(
        &path,
        format!(
            "runbook: chatty\nsteps:\n  - id: talk\n    run: seq 1 {LINES}\n    timeout: 10m\n"
        ),
    )
    .expect("write");
    let bin = env!("CARGO_BIN_EXE_runbook");
    let mut off = f64::INFINITY;
    let mut on = f64::INFINITY;
    for k in 0..3 {
        off = off.min(time(
            Command::new(bin)
                .args(["exec", "--output", "plain", "--no-journal"])
                .arg(&path),
        ));
        on = on.min(time(
            Command::new(bin)
                .arg("--state-dir")
                .arg(dir.join(format!("s{k}")))
                .args(["exec", "--output", "plain"])
                .arg(&path),
        ));
    }
    let db = dir.join("s0").join("runbook.db");
    let size = std::fs::metadata(&db).map_or(0, |m| m.len())
        + std::fs::metadata(dir.join("s0").join("runbook.db-wal")).map_or(0, |m| m.len());
    println!("chatty: one step printing {LINES} lines (best of 3)");
    println!("  journal off: {off:.3} s");
    println!("  journal on:  {on:.3} s  (ratio {:.2}x)", on / off);
    #[allow(clippy::cast_precision_loss)]
    let mb = size as f64 / 1e6;
    println!("  state database after the run: {mb:.1} MB");
    let _ = std::fs::remove_dir_all(&dir);
}

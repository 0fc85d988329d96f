//! Benchmark: the cost of durability. A 1,000-step chain of `/bin/true` with the journal on
//! versus `--no-journal`; the time to resume a 1,000-step journal; `audit verify` throughput.
//!
//! Run with `just bench` (release build). The state directory is on the same disk as the
//! system temp directory: its fsync latency bounds the journal's cost.

use std::fmt::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

const N: usize = 1000;

fn run(cmd: &mut Command) -> f64 {
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
    let dir = std::env::temp_dir().join(format!("runbook-durability-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut rb = String::from("runbook: chain\nmax_parallel: 1\nsteps:\n");
    for i in 0..N {
        let _ = writeln!(rb, "  - id: s{i}");
        if i > 0 {
            let _ = writeln!(rb, "    needs: [s{}]", i - 1);
        }
        let _ = writeln!(rb, "    run: /bin/true");
    }
    let path = dir.join("chain.yaml");
    std::fs::write(&path, rb).expect("write");
    let bin = env!("CARGO_BIN_EXE_runbook");
    let state = dir.join("state");

    let mut off = f64::INFINITY;
    let mut on = f64::INFINITY;
    for k in 0..3 {
        off = off.min(run(Command::new(bin)
            .args(["exec", "--output", "plain", "--no-journal"])
            .arg(&path)));
        let s = state.join(format!("run{k}"));
        on = on.min(run(Command::new(bin)
            .arg("--state-dir")
            .arg(&s)
            .args(["exec", "--output", "plain"])
            .arg(&path)));
    }
    #[allow(clippy::cast_precision_loss)]
    let per = |t: f64| t / N as f64 * 1000.0;
    println!("durability: {N}-step chain of /bin/true (best of 3)");
    println!("  journal off: {:.3} s ({:.3} ms/step)", off, per(off));
    println!("  journal on:  {:.3} s ({:.3} ms/step)", on, per(on));
    println!("  cost of durability: {:.3} ms/step", per(on) - per(off));

    // Resume: a run whose journal holds 1,000 completed steps and one left to do.
    let s = state.join("resume");
    let mut rb2 = std::fs::read_to_string(&path).expect("read");
    let _ = writeln!(
        rb2,
        "  - id: last\n    needs: [s{}]\n    run: exit 1",
        N - 1
    );
    let path2 = dir.join("chain-fails.yaml");
    std::fs::write(&path2, &rb2).expect("write");
    let status = Command::new(bin)
        .arg("--state-dir")
        .arg(&s)
        .args(["exec", "--output", "plain"])
        .arg(&path2)
        .stdout(Stdio::null())
        .status()
        .expect("spawn");
    assert_eq!(status.code(), Some(1));
    let listing = Command::new(bin)
        .arg("--state-dir")
        .arg(&s)
        .arg("runs")
        .output()
        .expect("runs");
    let run_id = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_default()
        .to_owned();
    // Make the last step pass, then resume: everything before it is read back, not re-run.
    std::fs::write(&path2, rb2.replace("run: exit 1", "run: /bin/true")).expect("write");
    let t = Instant::now();
    let out = Command::new(bin)
        .arg("--state-dir")
        .arg(&s)
        .args(["resume", &run_id, "--allow-changed", "--output", "plain"])
        .output()
        .expect("resume");
    let resume = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "resume failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("  resume of a {N}-step journal (1 step left): {resume:.3} s");

    // Audit verify throughput over everything written above.
    let mut entries = 0u64;
    let mut secs = 0.0;
    for k in 0..3 {
        let d = state.join(format!("run{k}"));
        let t = Instant::now();
        let out = Command::new(bin)
            .arg("--state-dir")
            .arg(&d)
            .args(["audit", "verify"])
            .output()
            .expect("verify");
        secs += t.elapsed().as_secs_f64();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        entries += text
            .split_whitespace()
            .find_map(|w| w.parse::<u64>().ok())
            .unwrap_or(0);
    }
    #[allow(clippy::cast_precision_loss)]
    let rate = entries as f64 / secs;
    println!(
        "  audit verify: {entries} entries in {secs:.3} s including process start ({rate:.0} entries/s)"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

//! Benchmark: a 1,000-step chain of `true` steps through `runbook exec`, against a plain shell
//! script running the same 1,000 commands. Reports per-step overhead and the ratio.
//!
//! Run with `just bench` (release build).

use std::fmt::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

const N: usize = 1000;

fn time(cmd: &mut Command) -> f64 {
    let t = Instant::now();
    let status = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("spawn");
    assert!(status.success(), "benchmark command failed: {cmd:?}");
    t.elapsed().as_secs_f64()
}

fn best_of(n: usize, mut f: impl FnMut() -> f64) -> f64 {
    (0..n).map(|_| f()).fold(f64::INFINITY, f64::min)
}

fn main() {
    let dir = std::env::temp_dir().join(format!("runbook-chain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut rb = String::from("runbook: chain\nmax_parallel: 1\nsteps:\n");
    let mut script = String::from("set -e\n");
    for i in 0..N {
        let _ = writeln!(rb, "  - id: s{i}");
        if i > 0 {
            let _ = writeln!(rb, "    needs: [s{}]", i - 1);
        }
        let _ = writeln!(rb, "    run: /bin/true");
        // The engine runs each step as `/bin/sh -c CMD`; so does the baseline.
        let _ = writeln!(script, "/bin/sh -c /bin/true");
    }
    let rb_path = dir.join("chain.yaml");
    let sh_path = dir.join("chain.sh");
    std::fs::write(&rb_path, rb).expect("write");
    std::fs::write(&sh_path, script).expect("write");
    let bin = env!("CARGO_BIN_EXE_runbook");

    let shell = best_of(3, || time(Command::new("/bin/sh").arg(&sh_path)));
    let engine = best_of(3, || {
        time(
            Command::new(bin)
                .args(["exec", "--output", "plain"])
                .arg(&rb_path),
        )
    });
    let json = best_of(3, || {
        time(
            Command::new(bin)
                .args(["exec", "--output", "json"])
                .arg(&rb_path),
        )
    });
    #[allow(clippy::cast_precision_loss)]
    let per = |t: f64| t / N as f64 * 1000.0;
    println!("exec_chain: {N} steps of /bin/true (best of 3)");
    println!(
        "  shell script: {:.3} s total, {:.3} ms/step",
        shell,
        per(shell)
    );
    println!(
        "  runbook exec (plain): {:.3} s total, {:.3} ms/step",
        engine,
        per(engine)
    );
    println!(
        "  runbook exec (json):  {:.3} s total, {:.3} ms/step",
        json,
        per(json)
    );
    println!(
        "  engine overhead beyond the spawn: {:.3} ms/step; ratio engine/shell {:.2}x",
        per(engine) - per(shell),
        engine / shell
    );
    let _ = std::fs::remove_dir_all(&dir);
}

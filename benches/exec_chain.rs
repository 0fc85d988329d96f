//! Benchmark: a chain of `/bin/true` steps through `runbook exec`, journal off and on, against
//! a plain shell script running the same commands and GNU make running them as a chain of
//! targets. Reports ms/step and the ratios.
//!
//! Run with `just bench` (release build).

use std::fmt::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

const N: usize = 300;

fn time(cmd: &mut Command) -> f64 {
    let t = Instant::now();
    let out = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "benchmark command failed: {cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed().as_secs_f64()
}

fn best_of(n: usize, mut f: impl FnMut(usize) -> f64) -> f64 {
    (0..n).map(&mut f).fold(f64::INFINITY, f64::min)
}

fn main() {
    let dir = std::env::temp_dir().join(format!("runbook-chain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut rb = String::from("runbook: chain\nmax_parallel: 1\nsteps:\n");
    let mut script = String::from("set -e\n");
    let mut make = String::from(".PHONY: all");
    for i in 0..N {
        let _ = write!(make, " s{i}");
    }
    let _ = writeln!(make, "\nall: s{}", N - 1);
    for i in 0..N {
        let _ = writeln!(rb, "  - id: s{i}");
        if i > 0 {
            let _ = writeln!(rb, "    needs: [s{}]", i - 1);
            let _ = writeln!(make, "s{i}: s{}\n\t/bin/true", i - 1);
        } else {
            let _ = writeln!(make, "s{i}:\n\t/bin/true");
        }
        let _ = writeln!(rb, "    run: /bin/true");
        // The engine runs each step as `/bin/sh -c CMD`; so does the baseline.
        let _ = writeln!(script, "/bin/sh -c /bin/true");
    }
    let rb_path = dir.join("chain.yaml");
    let sh_path = dir.join("chain.sh");
    let mk_path = dir.join("Makefile");
    std::fs::write(&rb_path, rb).expect("write");
    std::fs::write(&sh_path, script).expect("write");
    std::fs::write(&mk_path, make).expect("write");
    let bin = env!("CARGO_BIN_EXE_runbook");

    let shell = best_of(3, |_| time(Command::new("/bin/sh").arg(&sh_path)));
    let gmake = Command::new("make")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        .then(|| {
            best_of(3, |_| {
                time(Command::new("make").args(["-s", "-f"]).arg(&mk_path))
            })
        });
    let off = best_of(3, |_| {
        time(
            Command::new(bin)
                .args(["exec", "--output", "plain", "--no-journal"])
                .arg(&rb_path),
        )
    });
    let on = best_of(3, |k| {
        time(
            Command::new(bin)
                .arg("--state-dir")
                .arg(dir.join(format!("state{k}")))
                .args(["exec", "--output", "plain"])
                .arg(&rb_path),
        )
    });
    #[allow(clippy::cast_precision_loss)]
    let per = |t: f64| t / N as f64 * 1000.0;
    println!("exec_chain: {N} steps of /bin/true (best of 3)");
    println!("  shell script (sh -c per step): {:.3} ms/step", per(shell));
    match gmake {
        Some(m) => println!("  GNU make:                      {:.3} ms/step", per(m)),
        None => println!("  GNU make:                      not installed"),
    }
    println!(
        "  runbook exec, journal off:     {:.3} ms/step  ({:.2}x the shell script{})",
        per(off),
        off / shell,
        gmake.map_or_else(String::new, |m| format!(", {:.2}x make", off / m))
    );
    println!(
        "  runbook exec, journal on:      {:.3} ms/step  ({:.2}x the shell script{})",
        per(on),
        on / shell,
        gmake.map_or_else(String::new, |m| format!(", {:.2}x make", on / m))
    );
    println!(
        "  engine overhead beyond the spawn: {:.3} ms/step; durability: {:.3} ms/step",
        per(off) - per(shell),
        per(on) - per(off)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

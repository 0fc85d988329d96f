//! Benchmark: validate and plan a generated 10,000-step runbook (issue target: < 1 s, < 200 MB).
//!
//! Run with `just bench`. Reports wall time per iteration and the process's peak resident memory.

use std::fmt::Write;
use std::path::Path;
use std::time::Instant;

fn generate(n: usize) -> String {
    let mut s = String::from(
        "runbook: bench-10k\nparams:\n  target: {type: string, default: prod}\n  replicas: {type: int, default: 3}\nsecrets:\n  token: {env: BENCH_TOKEN}\nobjectives: {rto: 30m}\nsteps:\n  - id: approve\n    approve: {message: \"go {{ params.target }}?\"}\n",
    );
    for i in 1..n {
        let _ = writeln!(s, "  - id: s{i}");
        // A ladder: every step needs the previous one, every tenth also one ten back.
        let prev = if i == 1 {
            "approve".to_owned()
        } else {
            format!("s{}", i - 1)
        };
        if i > 10 && i % 10 == 0 {
            let _ = writeln!(s, "    needs: [{prev}, s{}]", i - 10);
        } else {
            let _ = writeln!(s, "    needs: [{prev}]");
        }
        match i % 4 {
            0 => {
                let _ = writeln!(
                    s,
                    "    run: echo {{{{ params.target }}}} {{{{ steps.{prev}.status }}}} --replicas={{{{ params.replicas }}}}"
                );
            }
            1 => {
                let _ = writeln!(
                    s,
                    "    http: {{method: POST, url: \"https://api.example.com/{{{{ params.target }}}}/{i}\", headers: {{Authorization: \"Bearer {{{{ secrets.token }}}}\"}}}}"
                );
            }
            2 => {
                let _ = writeln!(
                    s,
                    "    run: \"true\"\n    verify:\n      - run: test -n {{{{ params.target }}}}\n        within: 30s\n        interval: 1s"
                );
            }
            _ => {
                let _ = writeln!(
                    s,
                    "    when: params.replicas > 1\n    run: echo step {i}\n    retry: {{attempts: 3, delay: 1s}}\n    compensate: {{run: echo undo {i}}}"
                );
            }
        }
    }
    s
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    let text = generate(10_000);
    let dir = std::env::temp_dir().join(format!("runbook-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("bench-10k.yaml");
    std::fs::write(&path, &text).expect("write runbook");
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let compiled = runbook::compile::compile_path(Path::new(&path))
            .unwrap_or_else(|(_, d)| panic!("does not compile: {:?}", d.first()));
        let params = runbook::compile::resolve_params(
            &compiled.runbook,
            &[],
            &std::collections::BTreeMap::default(),
        )
        .expect("params");
        let plan = runbook::plan::build(&compiled, &params).expect("plan");
        let text = runbook::plan::text(&plan);
        std::hint::black_box(text.len());
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    println!(
        "plan_10k: {} bytes of YAML, 10,000 steps: validate+plan min {:.3} s, median {:.3} s; peak RSS {:.1} MB",
        text.len(),
        times[0],
        times[times.len() / 2],
        peak_rss_mb()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

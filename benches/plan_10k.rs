//! Benchmark: validate, then validate and plan, generated runbooks of 5,000, 10,000 and 15,000
//! steps (targets: 10,000 planned in < 0.3 s, 25,000 validated in < 1 s, < 1 GB). The growth
//! factor between sizes shows whether compile time is linear (2.0 then 1.5); this generator writes ~15 YAML nodes a step, so 16,000 steps
//! reach the default node budget (`RUNBOOK_YAML_MAX_NODES`).
//!
//! Run with `just bench`. Reports wall time (best of 3) and the process's peak resident memory.

use std::fmt::Write;
use std::path::Path;
use std::time::Instant;

fn generate(n: usize) -> String {
    let mut s = String::from(
        "runbook: bench\nparams:\n  target: {type: string, default: prod}\n  replicas: {type: int, default: 3}\nsecrets:\n  token: {env: BENCH_TOKEN}\nobjectives: {rto: 30m}\nsteps:\n  - id: approve\n    approve: {message: \"go {{ params.target }}?\"}\n",
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

fn best_of_3(mut f: impl FnMut()) -> f64 {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let dir = std::env::temp_dir().join(format!("runbook-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    println!("plan: generated runbooks (best of 3)");
    let mut previous: Option<(usize, f64, f64)> = None;
    for n in [5_000, 10_000, 15_000] {
        let text = generate(n);
        let path = dir.join(format!("bench-{n}.yaml"));
        std::fs::write(&path, &text).expect("write runbook");
        let validate = best_of_3(|| {
            let compiled = runbook::compile::compile_path(Path::new(&path))
                .unwrap_or_else(|(_, d)| panic!("does not compile: {:?}", d.first()));
            std::hint::black_box(compiled.steps.len());
        });
        let plan = best_of_3(|| {
            let compiled = runbook::compile::compile_path(Path::new(&path))
                .unwrap_or_else(|(_, d)| panic!("does not compile: {:?}", d.first()));
            let params = runbook::compile::resolve_params(
                &compiled.runbook,
                &[],
                &std::collections::BTreeMap::default(),
            )
            .expect("params");
            let plan = runbook::plan::build(&compiled, &params).expect("plan");
            std::hint::black_box(runbook::plan::text(&plan).len());
        });
        let growth = previous.map_or_else(String::new, |(m, v, p)| {
            #[allow(clippy::cast_precision_loss)]
            let size = n as f64 / m as f64;
            format!(
                "; ×{size:.1} steps → validate ×{:.2}, plan ×{:.2}",
                validate / v,
                plan / p
            )
        });
        #[allow(clippy::cast_precision_loss)]
        let mb = text.len() as f64 / 1e6;
        println!(
            "  {n:>6} steps ({mb:>5.1} MB of YAML): validate {validate:.3} s, validate+plan {plan:.3} s{growth}"
        );
        previous = Some((n, validate, plan));
    }
    println!("  peak RSS {:.1} MB", peak_rss_mb());
    let _ = std::fs::remove_dir_all(&dir);
}

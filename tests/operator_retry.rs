//! Black-box tests of `runbook retry RUN --from STEP` on a rolled-back run (issue 21): STEP and
//! its descendants run again in dependency order with upstream results from the journal; a
//! compensated upstream step refuses the retry unless `--with-upstream`; the plan is printed
//! before anything runs.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;
use support::{RunOutput, Runbook, TempDir};

/// The flagship example.
fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("runbooks/example.yaml")
}

/// Any command against the state directory `state`, its scratch directories under `tmp`.
fn cli(state: &TempDir, tmp: &TempDir, args: &[&str]) -> Runbook {
    Runbook::new(args.iter().map(|a| (*a).to_owned()))
        .env("RUNBOOK_STATE_DIR", &state.str())
        .env("TMPDIR", &tmp.str())
}

/// The id of the run an `--output json` invocation started.
#[track_caller]
fn run_id(out: &RunOutput) -> String {
    out.of("run_started")
        .first()
        .and_then(|e| e["run_id"].as_str())
        .unwrap_or_else(|| panic!("no run_started event\n{}", out.dump()))
        .to_owned()
}

/// The example rolled back: its smoke test never passes, the compensations undo `start-app`,
/// `switch-release` and `setup` (the scratch directory is gone).
fn rolled_back(state: &TempDir, tmp: &TempDir) -> String {
    let file = example();
    let out = cli(state, tmp, &["exec", file.to_str().unwrap_or_default()])
        .param("break_smoke_test", "true")
        .yes()
        .json()
        .run();
    out.assert_code(3);
    for step in ["setup", "switch-release", "start-app"] {
        assert!(
            out.of("compensated")
                .iter()
                .any(|e| e["step"] == step && e["ok"] == true),
            "`{step}` was not compensated\n{}",
            out.dump()
        );
    }
    run_id(&out)
}

/// Steps started, in the order they started.
fn started(out: &RunOutput) -> Vec<String> {
    out.of("step_started")
        .iter()
        .filter_map(|e| e["step"].as_str().map(str::to_owned))
        .collect()
}

/// A retry whose upstream step was undone by the rollback is refused before anything runs,
/// naming the step and the way out; the run stays as it was.
#[test]
fn a_compensated_upstream_step_refuses_the_retry() {
    let state = TempDir::new("retry-refused-state");
    let tmp = TempDir::new("retry-refused-tmp");
    let id = rolled_back(&state, &tmp);

    let out = cli(&state, &tmp, &["retry", &id, "--from", "switch-release"])
        .yes()
        .json()
        .run();
    out.assert_code(6);
    assert!(
        out.stderr
            .contains("refusing to retry from `switch-release`")
            && out.stderr.contains("`setup` (undone by the rollback)")
            && out.stderr.contains(&format!(
                "runbook retry {id} --from switch-release --with-upstream"
            )),
        "{}",
        out.dump()
    );
    assert!(started(&out).is_empty(), "{}", out.dump());

    // Every compensated upstream step is named, not only the first.
    let out = cli(&state, &tmp, &["retry", &id, "--from", "smoke-test"])
        .yes()
        .run();
    out.assert_code(6);
    for named in [
        "`setup` (undone by the rollback)",
        "`switch-release` (undone by the rollback)",
        "`start-app` (undone by the rollback)",
    ] {
        assert!(out.stderr.contains(named), "{named}\n{}", out.dump());
    }
    // `wait-ready` has no compensation: its result stands.
    assert!(!out.stderr.contains("`wait-ready`"), "{}", out.dump());

    // A finally step is no place to retry from (command-line error).
    cli(&state, &tmp, &["retry", &id, "--from", "report"])
        .run()
        .assert_code(2);

    let show = cli(&state, &tmp, &["show", &id]).run();
    show.assert_code(0);
    assert!(
        show.stdout
            .lines()
            .next()
            .unwrap_or_default()
            .ends_with("(rolled_back)"),
        "{}",
        show.dump()
    );
}

/// `--with-upstream` re-runs the compensated `setup` first, then what was built on it, then
/// `switch-release` and its descendants, each only after its needs succeeded; a step neither
/// upstream nor downstream (`escalate`) keeps its journaled result; the plan is printed first.
#[test]
fn with_upstream_reruns_the_compensated_steps_first_in_dependency_order() {
    let state = TempDir::new("retry-upstream-state");
    let tmp = TempDir::new("retry-upstream-tmp");
    let id = rolled_back(&state, &tmp);
    // A pause between the rolled-back run and its retry: it must show in no step's time.
    std::thread::sleep(std::time::Duration::from_millis(2500));

    let out = cli(
        &state,
        &tmp,
        &["retry", &id, "--from", "switch-release", "--with-upstream"],
    )
    .param("break_smoke_test", "false")
    .yes()
    .json()
    .run();
    out.assert_code(0);
    assert_eq!(out.finished()["status"], "succeeded", "{}", out.dump());

    let ran: BTreeSet<String> = started(&out).into_iter().collect();
    let expected: BTreeSet<String> = [
        "setup",
        "read-metrics",
        "read-history",
        "save-evidence",
        "confirm-incident",
        "approve-rollback",
        "switch-release",
        "start-app",
        "wait-ready",
        "smoke-test",
        "report",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(ran, expected, "{}", out.dump());

    // Dependency order: every step started after each of its needs succeeded in this retry.
    let needs: &[(&str, &[&str])] = &[
        ("read-metrics", &["setup"]),
        ("read-history", &["setup"]),
        ("save-evidence", &["setup"]),
        ("confirm-incident", &["read-metrics"]),
        (
            "approve-rollback",
            &["confirm-incident", "read-history", "save-evidence"],
        ),
        ("switch-release", &["approve-rollback"]),
        ("start-app", &["switch-release"]),
        ("wait-ready", &["switch-release"]),
        ("smoke-test", &["wait-ready", "start-app"]),
    ];
    for (step, ups) in needs {
        let start = out
            .position("step_started", step)
            .unwrap_or_else(|| panic!("{step} did not start\n{}", out.dump()));
        for up in *ups {
            let done = out
                .position("step_succeeded", up)
                .unwrap_or_else(|| panic!("{up} did not succeed\n{}", out.dump()));
            assert!(
                done < start,
                "{step} started before {up} succeeded\n{}",
                out.dump()
            );
        }
    }

    // The plan came first, in that order, with the reasons.
    let plan_at = |needle: &str| {
        out.stderr
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not in the plan\n{}", out.dump()))
    };
    assert!(
        plan_at("runs again, in this order:")
            < plan_at("1. setup (upstream, undone by the rollback: --with-upstream)"),
        "{}",
        out.dump()
    );
    assert!(
        plan_at("1. setup (") < plan_at(". switch-release (the step asked for)")
            && plan_at(". switch-release (")
                < plan_at(". smoke-test (downstream of `switch-release`)"),
        "{}",
        out.dump()
    );
    assert!(
        !out.stderr.contains(". escalate ("),
        "escalate is neither upstream nor downstream\n{}",
        out.dump()
    );

    // JUnit times each run of `setup` by itself: neither includes the pause.
    let junit = cli(&state, &tmp, &["report", &id, "--format", "junit"]).run();
    junit.assert_code(0);
    let case_time = |name: &str| -> f64 {
        let key = format!("name=\"{name}\" time=\"");
        let at = junit
            .stdout
            .find(&key)
            .unwrap_or_else(|| panic!("no {name}\n{}", junit.stdout));
        let rest = &junit.stdout[at + key.len()..];
        rest[..rest.find('"').unwrap_or(0)]
            .parse()
            .unwrap_or(f64::MAX)
    };
    assert!(case_time("setup") < 2.0, "{}", junit.stdout);
    assert!(case_time("setup (2nd run)") < 2.0, "{}", junit.stdout);
    assert!(case_time("undo setup") < 2.0, "{}", junit.stdout);

    // The finally step saw the honest status of this retry.
    let report: Vec<&Value> = out.of_step("step_succeeded", "report");
    assert_eq!(report.len(), 1, "{}", out.dump());
    let show = cli(&state, &tmp, &["show", &id]).run();
    show.assert_code(0);
    assert!(
        show.stdout
            .lines()
            .next()
            .unwrap_or_default()
            .ends_with("(succeeded)"),
        "{}",
        show.dump()
    );
}

/// Without a rollback, a retry from a middle step re-runs it and its descendants only: the
/// upstream results come from the journal (the scratch directory of the first run).
#[test]
fn a_retry_of_a_succeeded_run_takes_upstream_results_from_the_journal() {
    let state = TempDir::new("retry-ok-state");
    let tmp = TempDir::new("retry-ok-tmp");
    let file = example();
    let first = cli(&state, &tmp, &["exec", file.to_str().unwrap_or_default()])
        .param("keep", "true")
        .yes()
        .json()
        .run();
    first.assert_code(0);
    let id = run_id(&first);
    let dir = first.of_step("step_succeeded", "setup")[0]["outputs"]["dir"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(Path::new(&dir).is_dir(), "{dir}\n{}", first.dump());

    let out = cli(&state, &tmp, &["retry", &id, "--from", "wait-ready"])
        .yes()
        .json()
        .run();
    out.assert_code(0);
    let ran: BTreeSet<String> = started(&out).into_iter().collect();
    assert_eq!(
        ran,
        ["wait-ready", "smoke-test", "report"]
            .into_iter()
            .map(str::to_owned)
            .collect::<BTreeSet<_>>(),
        "{}",
        out.dump()
    );
    assert!(
        out.stderr
            .contains("upstream results taken from the journal: setup,"),
        "{}",
        out.dump()
    );
    // The smoke test ran in the first run's directory (its attempt counter went on).
    assert!(Path::new(&dir).join("smoke_attempts").is_file());
}

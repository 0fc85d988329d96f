//! `runbook check` against `when:` guards: a step the params skip is reported as skipped (its
//! command and its checks are not run), and the summary counts only the checks that ran.

mod support;

use support::{Runbook, TempDir};

/// Two exclusive branches chosen by `strategy`, each with a command that exists only on its
/// branch's machine and a read-only guard that fails unless it is the chosen branch; a step
/// guarded by a run-time value, which `check` cannot decide and so still checks.
const RUNBOOK: &str = r#"runbook: branches
params:
  strategy: {type: enum, values: [helm, image]}
  force: {type: bool, default: false}
steps:
  - id: confirm
    when: not params.force
    run: no-such-confirm-tool-rb --ask
  - id: helm-rollback
    when: params.strategy == "helm"
    require:
      - run: test "{{ params.strategy }}" = helm
    run: no-such-helm-tool-rb rollback
  - id: set-image
    when: params.strategy == "image"
    require:
      - run: test "{{ params.strategy }}" = image
    run: sh -c 'exit 0'
  - id: after
    needs: [helm-rollback, set-image]
    when: steps["set-image"].status == "succeeded"
    run: sh -c 'exit 0'
"#;

/// The findings of `check --json`, as (what, outcome).
fn findings(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            (
                v["what"].as_str().unwrap_or_default().to_owned(),
                v["outcome"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn check(dir: &TempDir, params: &[(&str, &str)], json: bool) -> support::RunOutput {
    let rb = dir.write("branches.yaml", RUNBOOK);
    let mut cmd = Runbook::new(["check".to_owned(), rb.display().to_string()]);
    for (k, v) in params {
        cmd = cmd.param(k, v);
    }
    if json {
        cmd = cmd.arg("--json");
    }
    cmd.run()
}

#[test]
fn steps_the_params_skip_are_reported_skipped_not_failed() {
    let dir = TempDir::new("check-guards-image");
    let out = check(&dir, &[("strategy", "image"), ("force", "true")], true);
    out.assert_code(0);
    let f = findings(&out.stdout);
    for id in ["helm-rollback", "confirm"] {
        assert!(
            f.iter().any(|(w, o)| w == id && o == "skip"),
            "`{id}` is reported skipped by params\n{}",
            out.dump()
        );
        assert!(
            !f.iter().any(|(w, _)| w.starts_with(&format!("{id} "))),
            "nothing of `{id}` was checked\n{}",
            out.dump()
        );
    }
    assert!(
        f.iter()
            .any(|(w, o)| w == "set-image require #1" && o == "ok"),
        "the chosen branch is checked\n{}",
        out.dump()
    );
    assert!(
        f.iter()
            .any(|(w, o)| w == "after command `sh`" && o == "ok"),
        "a guard read at run time is not decided: its step is checked\n{}",
        out.dump()
    );
}

#[test]
fn the_other_branch_is_skipped_and_the_chosen_one_still_fails() {
    let dir = TempDir::new("check-guards-helm");
    let out = check(&dir, &[("strategy", "helm"), ("force", "true")], true);
    // The helm branch's tool is missing: check still fails on what it ran.
    out.assert_code(1);
    let f = findings(&out.stdout);
    assert!(
        f.iter()
            .any(|(w, o)| w == "helm-rollback command `no-such-helm-tool-rb`" && o == "fail"),
        "{}",
        out.dump()
    );
    assert!(
        f.iter().any(|(w, o)| w == "set-image" && o == "skip"),
        "{}",
        out.dump()
    );
    assert!(
        !f.iter().any(|(w, _)| w.starts_with("set-image ")),
        "the image branch's guard is not run with strategy=helm\n{}",
        out.dump()
    );
    // A bool param decides too: with force=false, `confirm` is checked (and its tool is missing).
    let out = check(&dir, &[("strategy", "image")], true);
    out.assert_code(1);
    assert!(
        findings(&out.stdout)
            .iter()
            .any(|(w, o)| w == "confirm command `no-such-confirm-tool-rb`" && o == "fail"),
        "{}",
        out.dump()
    );
}

#[test]
fn the_summary_counts_only_the_checks_that_ran() {
    let dir = TempDir::new("check-guards-count");
    let out = check(&dir, &[("strategy", "image"), ("force", "true")], false);
    out.assert_code(0);
    // Ran: set-image's guard and command, after's command; skipped: confirm, helm-rollback.
    assert!(
        out.stdout.contains("3 checks, 0 failing, 2 skipped"),
        "{}",
        out.dump()
    );
}

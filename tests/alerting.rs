//! `runbooks/alerting/`: the Prometheus alert rules pass `promtool check rules` and their unit
//! tests (the handbook's thresholds, 003 §1), and the triggers file passes `runbook serve
//! --check` and starts app-rollback for every alert of the rules, and for no other.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("runbooks/alerting")
}

fn promtool() -> PathBuf {
    support::tool("promtool", &["/usr/bin/promtool"], "prometheus")
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("run the tool");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The values of `key: VALUE` lines of a YAML file (enough for these two flat lists).
fn values_of(file: &str, key: &str) -> BTreeSet<String> {
    std::fs::read_to_string(dir().join(file))
        .expect("read")
        .lines()
        .filter_map(|l| l.trim().strip_prefix(key))
        .map(|v| v.trim().to_owned())
        .collect()
}

#[test]
fn alerting_rules_pass_promtool_check() {
    let (ok, text) = run(Command::new(promtool())
        .args(["check", "rules"])
        .arg(dir().join("rules.yaml")));
    assert!(ok && text.contains("SUCCESS: 4 rules found"), "{text}");
}

#[test]
fn alerting_rules_fire_at_the_handbook_thresholds_only() {
    // The unit tests pin each threshold and observation period, below-threshold silence and a
    // 5xx-free app that never fires.
    let (ok, text) = run(Command::new(promtool())
        .args(["test", "rules"])
        .arg(dir().join("rules.test.yaml")));
    assert!(ok && text.contains("SUCCESS"), "{text}");
}

#[test]
fn alerting_rule_unit_tests_can_fail() {
    // A copy of the rules with the 5xx threshold loosened to 20 %: the unit tests must notice.
    let tmp = support::TempDir::new("alerting-mutant");
    let rules = std::fs::read_to_string(dir().join("rules.yaml")).expect("rules");
    assert!(rules.contains("> 0.05"));
    tmp.write("rules.yaml", &rules.replacen("> 0.05", "> 0.2", 1));
    let tests = std::fs::read_to_string(dir().join("rules.test.yaml")).expect("tests");
    let file = tmp.write("rules.test.yaml", &tests);
    let (ok, text) = run(Command::new(promtool()).args(["test", "rules"]).arg(file));
    assert!(!ok && text.contains("AppHighErrorRate"), "{text}");
}

#[test]
fn alerting_triggers_pass_serve_check_and_cover_every_alert() {
    let (ok, text) = run(Command::new(env!("CARGO_BIN_EXE_runbook"))
        .args(["serve", "--check", "--triggers"])
        .arg(dir().join("triggers.yaml")));
    assert!(ok && text.contains("ok (4 triggers)"), "{text}");
    let alerts = values_of("rules.yaml", "- alert:");
    let triggered = values_of("triggers.yaml", "alertname:");
    assert_eq!(alerts.len(), 4, "{alerts:?}");
    assert_eq!(alerts, triggered);
}

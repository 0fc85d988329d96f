//! Snapshots of `runbook plan` (text and JSON) for the project's runbooks: a reviewer's view of
//! each procedure. A change to a runbook or to the planner shows up here as a diff to review.

use std::process::Command;

fn plan(file: &str, params: &[&str], format: &str) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_runbook"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["plan", file, "--format", format]);
    for p in params {
        cmd.args(["-p", p]);
    }
    let out = cmd.output().expect("run runbook plan");
    assert!(
        out.status.success(),
        "plan of {file} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 plan")
}

const APP: &str = "runbooks/app-rollback.yaml";
const MIGRATION: &str = "runbooks/migration-restore.yaml";
const DR: &str = "runbooks/dr-failover.yaml";
const MIGRATION_PARAMS: &[&str] = &[
    "backup_file=/var/backups/app/last-good.dump",
    "expected_schema_version=41",
    "min_row_counts=devices=1000,virtual_networks=10",
];
const FAILBACK: &str = "runbooks/dr-failback.yaml";
const FAILBACK_PARAMS: &[&str] = &[
    "zone_id=zone-123",
    "record_id=rec-456",
    "primary_ip=192.0.2.10",
    "dr_cluster_ip=203.0.113.10",
    "primary_health_url=https://primary.example.com/healthz",
];
const DR_PARAMS: &[&str] = &[
    "zone_id=zone-123",
    "record_id=rec-456",
    "dr_cluster_ip=203.0.113.10",
    "dr_health_url=https://dr.example.com/healthz",
];

#[test]
fn app_rollback_plan() {
    insta::assert_snapshot!(
        "app_rollback_rollout_text",
        plan(APP, &["strategy=rollout"], "text")
    );
    insta::assert_snapshot!(
        "app_rollback_helm_json",
        plan(APP, &["strategy=helm"], "json")
    );
}

#[test]
fn migration_restore_plan() {
    insta::assert_snapshot!(
        "migration_restore_text",
        plan(MIGRATION, MIGRATION_PARAMS, "text")
    );
    insta::assert_snapshot!(
        "migration_restore_json",
        plan(MIGRATION, MIGRATION_PARAMS, "json")
    );
}

#[test]
fn dr_failover_plan() {
    insta::assert_snapshot!("dr_failover_text", plan(DR, DR_PARAMS, "text"));
    insta::assert_snapshot!("dr_failover_json", plan(DR, DR_PARAMS, "json"));
    insta::assert_snapshot!("dr_failover_mermaid", plan(DR, DR_PARAMS, "mermaid"));
}

#[test]
fn plans_never_contain_secret_values() {
    // Secrets are resolved only at run time; a plan shows `***` even when they are set.
    for (file, params) in [
        (APP, &["strategy=helm"][..]),
        (MIGRATION, MIGRATION_PARAMS),
        (DR, DR_PARAMS),
    ] {
        let text = plan(file, params, "text");
        assert!(
            text.contains("***"),
            "{file}: the plan shows no masked secret"
        );
    }
}

#[test]
fn dr_failback_plan() {
    insta::assert_snapshot!("dr_failback_text", plan(FAILBACK, FAILBACK_PARAMS, "text"));
}

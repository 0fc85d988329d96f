//! `runbooks/dr-failover.yaml` end to end: two Kubernetes API doubles (the current context is
//! the primary; every step must name the DR context), a real throwaway `PostgreSQL` as the DR
//! database, the Cloudflare DNS API and DNS-over-HTTPS as a real HTTP server on 127.0.0.1, and
//! stand-ins only for the helm CLI (tests/fixtures/k8s/bin/helm) and the smoke-test script.
//!
//! Besides the whole failover: the half-failed DNS switch (the change landed, its check
//! failed) never uninstalls the DR site; the propagation wait follows the old record's TTL;
//! missing non-Helm Secrets and a backup without volume snapshots stop the run before any
//! change.

#[path = "support/dns_web.rs"]
mod dns_web;
mod support;

use std::path::{Path, PathBuf};
use std::time::Instant;

use dns_web::{CF_TOKEN, Services};

use serde_json::{Value, json};
use support::k8s_double::{K8sDouble, now_rfc3339, rfc3339, write_kubeconfig};
use support::pg::{PgCluster, unique_name};
use support::{RunOutput, Runbook, TempDir};

const PRIMARY_TOKEN: &str = "primary-7c1d-secret-token";
const DR_TOKEN: &str = "dr-93fa-secret-token";
const OLD_IP: &str = "192.0.2.10";
const DR_IP: &str = "203.0.113.10";
const NAMESPACE: &str = "edgelink-prod";
const API: &str = "edge-link-production-api-gateway";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/k8s")
        .join(name)
}

fn runbook_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("runbooks/dr-failover.yaml")
}

#[track_caller]
fn succeeded<'a>(out: &'a RunOutput, step: &str) -> &'a Value {
    out.of_step("step_succeeded", step)
        .first()
        .copied()
        .unwrap_or_else(|| panic!("{step} did not succeed\n{}", out.dump()))
}

/// Both clusters, the DR database and the web services of one failover.
struct Site {
    primary: K8sDouble,
    dr: K8sDouble,
    web: Services,
    database: String,
    kubeconfig: PathBuf,
    _tmp: TempDir,
}

impl Site {
    /// The DR cluster with Velero, its storage location, three backups of the schedule (old,
    /// recent with `recent_snapshots` volume snapshots, failed), the non-Helm `ConfigMap` and
    /// Secret; the DR database restored; the public record at `OLD_IP` with TTL `ttl`.
    fn new(tag: &str, ttl: u64, recent_snapshots: u32) -> Self {
        let primary = K8sDouble::start(PRIMARY_TOKEN);
        let dr = K8sDouble::start(DR_TOKEN);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |t| i64::try_from(t.as_secs()).unwrap_or(0));
        for ns in ["velero", NAMESPACE] {
            dr.insert(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
        }
        dr.insert(
            json!({"apiVersion": "velero.io/v1", "kind": "BackupStorageLocation",
            "metadata": {"name": "default", "namespace": "velero"},
            "spec": {"provider": "aws", "objectStorage": {"bucket": "edgelink-backups"}},
            "status": {"phase": "Available", "lastSyncedTime": now_rfc3339()}}),
        );
        for (name, age_s, phase, snapshots) in [
            ("daily-backup-old", 3 * 3600, "Completed", 2),
            ("daily-backup-recent", 300, "Completed", recent_snapshots),
            ("daily-backup-failed", 60, "Failed", 0),
        ] {
            dr.insert(json!({"apiVersion": "velero.io/v1", "kind": "Backup",
                "metadata": {"name": name, "namespace": "velero", "labels": {"velero.io/schedule-name": "daily-backup"}},
                "spec": {"includedNamespaces": [NAMESPACE]},
                "status": {"phase": phase, "completionTimestamp": rfc3339(now - age_s),
                    "csiVolumeSnapshotsAttempted": snapshots, "csiVolumeSnapshotsCompleted": snapshots}}));
        }
        dr.insert(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "edge-link-config", "namespace": NAMESPACE},
            "data": {"LOG_LEVEL": "info"}}));
        dr.insert(
            json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "edge-link-db", "namespace": NAMESPACE},
            "data": {"password": "c2VjcmV0"}}),
        );
        dr.set_restored_pvcs(&["data-postgres-0", "uploads"]);
        // The DR database, restored: the data checks run for real.
        let pg = PgCluster::shared();
        let database = unique_name(&format!("{tag}_dr"));
        pg.create_database(&database, "postgres");
        pg.psql(
            &database,
            "CREATE TABLE devices (id int); CREATE TABLE virtual_networks (id int);
             CREATE TABLE sessions (id int, ended_at timestamptz);
             INSERT INTO devices VALUES (1), (2); INSERT INTO virtual_networks VALUES (1);
             INSERT INTO sessions VALUES (1, NULL);",
        );
        let web = Services::start(OLD_IP, ttl);
        let tmp = TempDir::new(tag);
        // The current context is the primary: every step must name the DR context to reach it.
        let kubeconfig =
            write_kubeconfig(tmp.path(), &[("primary", &primary), ("dr", &dr)], "primary");
        Self {
            primary,
            dr,
            web,
            database,
            kubeconfig,
            _tmp: tmp,
        }
    }

    fn exec(&self) -> Runbook {
        let path = format!(
            "{}:{}",
            fixture("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let url = &self.web.url;
        Runbook::exec(runbook_file())
            .yes()
            .json()
            .env("KUBECONFIG", self.kubeconfig.to_str().expect("utf-8 path"))
            .param("dr_context", "dr")
            .param("zone_id", "zone-123")
            .param("record_id", "rec-456")
            .param("dr_cluster_ip", DR_IP)
            .param("dr_health_url", &format!("{url}/health"))
            .param("cloudflare_api", &format!("{url}/cloudflare"))
            .param("doh_url", &format!("{url}/dns-query"))
            .param("public_url", url)
            .param(
                "smoke_test_script",
                fixture("smoke-test.sh").to_str().expect("utf-8"),
            )
            .param("required_secrets", "edge-link-db")
            .param("required_configmaps", "edge-link-config")
            .env("PATH", &path)
            .env("RUNBOOK_BIN", env!("CARGO_BIN_EXE_runbook"))
            .env("CF_TOKEN", CF_TOKEN)
            .env(
                "DR_PG_DSN",
                &PgCluster::shared().superuser_dsn(&self.database),
            )
            .env("NOTIFY_WEBHOOK_URL", &format!("{url}/notify"))
    }

    fn api_deployment(&self) -> Option<Value> {
        self.dr.get("apps/v1", "Deployment", NAMESPACE, API)
    }

    fn last_notification(&self) -> String {
        self.web
            .web()
            .notifications
            .last()
            .and_then(|n| n["text"].as_str())
            .unwrap_or_default()
            .to_owned()
    }

    /// Nothing was written to either cluster and DNS is untouched.
    #[track_caller]
    fn assert_untouched(&self, out: &RunOutput) {
        assert!(self.dr.writes().is_empty(), "{:#?}", self.dr.writes());
        assert!(self.primary.requests().is_empty());
        assert!(self.web.web().dns_puts.is_empty());
        assert_eq!(self.web.web().record_ip, OLD_IP);
        assert!(
            out.of_step("step_started", "approve-failover").is_empty(),
            "{}",
            out.dump()
        );
    }
}

/// The whole failover, with the propagation wait on: it waits twice the old record's TTL (2 s
/// here), not the new record's 60 s nor a constant.
#[test]
fn dr_failover_end_to_end_against_two_clusters() {
    let site = Site::new("dr_e2e", 2, 2);
    let started = Instant::now();
    let out = site.exec().run();
    eprintln!(
        "dr-failover end to end against the doubles (two clusters, DNS, Postgres; TTL 2 s): {:.1} s",
        started.elapsed().as_secs_f64()
    );
    out.assert_code(0);
    assert_eq!(
        succeeded(&out, "pick-backup")["outputs"]["backup"]["metadata"]["name"],
        "daily-backup-recent"
    );
    let scale = &succeeded(&out, "scale-up")["result"];
    assert_eq!(
        (scale["previous"].as_i64(), scale["replicas"].as_i64()),
        (Some(1), Some(3))
    );
    let wait = succeeded(&out, "dns-propagation");
    assert!(
        wait.to_string().contains("waiting 4s (old TTL 2s)"),
        "{wait}"
    );
    assert!(
        wait["duration_ms"].as_u64().is_some_and(|d| d >= 4000),
        "{wait}"
    );
    for step in [
        "check-backup",
        "dr-config-present",
        "velero-restore",
        "verify-pvcs",
        "helm-install",
        "dr-rollout",
        "dr-pods",
        "dr-health",
        "dr-data-present",
        "dns-switch",
        "smoke-tests",
        "data-consistency",
        "notify",
    ] {
        succeeded(&out, step);
    }
    // Everything happened in the DR cluster; the primary (the current context) was not touched.
    assert!(
        site.primary.requests().is_empty(),
        "{:#?}",
        site.primary.requests()
    );
    assert!(site.dr.requests().iter().all(|r| r.authenticated));
    let restores = site.dr.list("velero.io/v1", "Restore", "velero");
    assert_eq!(restores.len(), 1);
    assert_eq!(restores[0]["spec"]["backupName"], "daily-backup-recent");
    assert_eq!(
        restores[0]["spec"]["includedResources"],
        json!(["persistentvolumeclaims", "persistentvolumes"])
    );
    assert_eq!(restores[0]["status"]["phase"], "Completed");
    assert_eq!(
        site.api_deployment().expect("installed")["spec"]["replicas"],
        3
    );
    let w = site.web.web();
    assert_eq!(w.record_ip, DR_IP);
    assert_eq!(w.dns_puts.len(), 1);
    drop(w);
    let last = site.last_notification();
    assert!(
        last.contains("succeeded") && last.contains(OLD_IP),
        "{last}"
    );
}

/// The DNS change landed (the record points at the DR cluster) but its API call answered 502:
/// the step failed after its action started. The run rolls back, and the point-of-no-return
/// rule holds: nothing upstream of the switch is compensated — the DR install, its replicas and
/// the restored volumes stay, since users may already be on them.
#[test]
fn dr_failover_a_dns_switch_that_landed_but_failed_its_check_uninstalls_nothing() {
    let site = Site::new("dr_halfdns", 60, 2);
    site.web.web().put_lands_then_fails = true;
    let out = site.exec().param("wait_dns_propagation", "false").run();
    out.assert_code(3);
    assert!(
        !out.of_step("step_failed", "dns-switch").is_empty(),
        "{}",
        out.dump()
    );
    assert_eq!(site.web.web().record_ip, DR_IP, "the change did land");
    let rollback = out.of("rollback_started");
    assert_eq!(rollback.len(), 1, "{}", out.dump());
    assert_eq!(rollback[0]["steps"], json!([]), "{}", out.dump());
    let mut kept: Vec<String> = rollback[0]["not_compensated"]
        .as_array()
        .expect("not_compensated")
        .iter()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect();
    kept.sort();
    assert_eq!(kept, ["helm-install", "scale-up", "velero-restore"]);
    for step in ["helm-install", "scale-up", "velero-restore"] {
        assert!(
            out.of_step("compensation_started", step).is_empty()
                && out.of_step("step_compensated", step).is_empty(),
            "{step} was compensated\n{}",
            out.dump()
        );
    }
    // The DR site DNS points at is intact: the API at production capacity, the restore there.
    assert_eq!(
        site.api_deployment()
            .expect("the DR install is still there")["spec"]["replicas"],
        3
    );
    assert_eq!(site.dr.list("velero.io/v1", "Restore", "velero").len(), 1);
    assert!(
        !site.dr.writes().iter().any(|w| w.method == "DELETE"),
        "{:#?}",
        site.dr.writes()
    );
    for step in ["smoke-tests", "data-consistency"] {
        assert!(out.of_step("step_started", step).is_empty(), "{step} ran");
    }
    let last = site.last_notification();
    assert!(
        last.contains("rolled_back") && last.contains(OLD_IP),
        "{last}"
    );
}

/// A Secret the chart does not install is missing from the DR cluster: the run stops before the
/// approval, with the DR cluster and DNS untouched.
#[test]
fn dr_failover_a_missing_non_helm_secret_stops_before_any_change() {
    let site = Site::new("dr_nosecret", 60, 2);
    let out = site
        .exec()
        .param("required_secrets", "edge-link-db, edge-link-jwt")
        .run();
    out.assert_code(4);
    assert!(
        !out.of_step("step_aborted", "dr-config-present").is_empty(),
        "{}",
        out.dump()
    );
    site.assert_untouched(&out);
}

/// The newest backup has no volume snapshots (its volumes went through file-system backup,
/// which a PVC/PV-only restore would bring back empty): refused before any change.
#[test]
fn dr_failover_a_backup_without_volume_snapshots_is_refused() {
    let site = Site::new("dr_fsbackup", 60, 0);
    let out = site.exec().run();
    out.assert_code(4);
    let reason = out
        .of_step("step_aborted", "check-backup")
        .first()
        .and_then(|e| e["reason"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("check-backup was not aborted\n{}", out.dump()));
    assert!(reason.contains("volume snapshots"), "{reason}");
    site.assert_untouched(&out);
}

/// The plan says what Velero restores and what it leaves out, before anyone approves.
#[test]
fn dr_failover_plan_says_what_velero_restores() {
    let out = plan_stdout(&[
        "zone_id=zone-123",
        "record_id=rec-456",
        &format!("dr_cluster_ip={DR_IP}"),
        "dr_health_url=https://dr.example.com/health",
    ]);
    for needle in [
        "Restore the PVCs and PVs with Velero (volume data from snapshots; nothing else)",
        "includedResources",
        "backup holds volume snapshots, all completed",
        "The non-Helm Secrets and ConfigMaps exist in the DR cluster",
        "Wait twice the old record's TTL",
    ] {
        assert!(out.contains(needle), "plan lacks {needle:?}\n{out}");
    }
}

fn plan_stdout(params: &[&str]) -> String {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_runbook"));
    cmd.arg("plan").arg(runbook_file());
    for p in params {
        cmd.args(["-p", p]);
    }
    let out = cmd.output().expect("run runbook plan");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

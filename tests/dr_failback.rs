//! `runbooks/dr-failback.yaml` end to end: the primary and DR clusters as two Kubernetes API
//! doubles, the primary and DR databases as two real `PostgreSQL` databases, the DNS API and
//! DNS-over-HTTPS as a real HTTP server on 127.0.0.1 (`tests/support/dns_web.rs`), a stand-in
//! only for the smoke-test script. Users are on the DR cluster and have written there since the
//! failover; the failback must bring every such row to the primary before DNS moves back.

#[path = "support/dns_web.rs"]
mod dns_web;
mod support;

use std::path::{Path, PathBuf};

use dns_web::{CF_TOKEN, Services};
use serde_json::{Value, json};
use support::k8s_double::{K8sDouble, write_kubeconfig};
use support::pg::{PgCluster, unique_name};
use support::{RunOutput, Runbook, TempDir};

const PRIMARY_TOKEN: &str = "fb-primary-1a2b-token";
const DR_TOKEN: &str = "fb-dr-3c4d-token";
const PRIMARY_IP: &str = "192.0.2.10";
const DR_IP: &str = "203.0.113.10";
const NAMESPACE: &str = "edgelink-prod";
const API: &str = "edge-link-production-api-gateway";
const DR_REPLICAS: i64 = 3;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/k8s")
        .join(name)
}

#[track_caller]
fn succeeded<'a>(out: &'a RunOutput, step: &str) -> &'a Value {
    out.of_step("step_succeeded", step)
        .first()
        .copied()
        .unwrap_or_else(|| panic!("{step} did not succeed\n{}", out.dump()))
}

/// A failed-over site: DNS on the DR cluster, the DR API serving, the primary API at 0, the
/// primary database stale (as it was at the failure), the DR database with the writes since.
struct Site {
    primary: K8sDouble,
    dr: K8sDouble,
    web: Services,
    primary_db: String,
    dr_db: String,
    kubeconfig: PathBuf,
    tmp: TempDir,
}

impl Site {
    fn new(tag: &str) -> Self {
        let primary = K8sDouble::start(PRIMARY_TOKEN);
        let dr = K8sDouble::start(DR_TOKEN);
        let labels = json!({"app.kubernetes.io/instance": "edge-link-production"});
        for (d, replicas) in [(&primary, 0), (&dr, DR_REPLICAS)] {
            d.insert(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}),
            );
            d.deployment_with_history(
                NAMESPACE,
                API,
                &labels,
                "api",
                &["registry.example/api:v7"],
                replicas,
            );
        }
        let pg = PgCluster::shared();
        let primary_db = unique_name(&format!("{tag}_primary"));
        let dr_db = unique_name(&format!("{tag}_dr"));
        let schema = "CREATE TABLE devices (id int PRIMARY KEY, name text NOT NULL);
             CREATE TABLE virtual_networks (id int PRIMARY KEY);";
        for db in [&primary_db, &dr_db] {
            pg.create_database(db, "postgres");
            pg.psql(db, schema);
        }
        pg.psql(
            &primary_db,
            "INSERT INTO devices VALUES (1, 'edge-1'), (2, 'edge-2'); INSERT INTO virtual_networks VALUES (1);",
        );
        pg.psql(
            &dr_db,
            "INSERT INTO devices VALUES (1, 'edge-1'), (2, 'edge-2'), (3, 'written-in-dr'), (4, 'edge-4');
             INSERT INTO virtual_networks VALUES (1), (2);",
        );
        let web = Services::start(DR_IP, 60);
        let tmp = TempDir::new(tag);
        let kubeconfig = write_kubeconfig(tmp.path(), &[("primary", &primary), ("dr", &dr)], "dr");
        std::fs::create_dir_all(tmp.join("forensics")).expect("forensics dir");
        Self {
            primary,
            dr,
            web,
            primary_db,
            dr_db,
            kubeconfig,
            tmp,
        }
    }

    fn exec(&self) -> Runbook {
        let pg = PgCluster::shared();
        let path = format!("{}:{}", fixture("bin").display(), pg.path_env());
        let url = &self.web.url;
        Runbook::exec(Path::new(env!("CARGO_MANIFEST_DIR")).join("runbooks/dr-failback.yaml"))
            .yes()
            .json()
            .env("KUBECONFIG", self.kubeconfig.to_str().expect("utf-8 path"))
            .param("primary_context", "primary")
            .param("dr_context", "dr")
            .param("zone_id", "zone-123")
            .param("record_id", "rec-456")
            .param("primary_ip", PRIMARY_IP)
            .param("dr_cluster_ip", DR_IP)
            .param("primary_health_url", &format!("{url}/health-toggle"))
            .param("cloudflare_api", &format!("{url}/cloudflare"))
            .param("doh_url", &format!("{url}/dns-query"))
            .param("public_url", url)
            .param(
                "smoke_test_script",
                fixture("smoke-test.sh").to_str().expect("utf-8"),
            )
            .param("wait_dns_propagation", "false")
            .param(
                "forensic_dir",
                self.tmp.join("forensics").to_str().expect("utf-8"),
            )
            .env("PATH", &path)
            .env("RUNBOOK_BIN", env!("CARGO_BIN_EXE_runbook"))
            .env("CF_TOKEN", CF_TOKEN)
            .env("DR_PG_DSN", &pg.superuser_dsn(&self.dr_db))
            .env("PRIMARY_PG_DSN", &pg.superuser_dsn(&self.primary_db))
            .env("NOTIFY_WEBHOOK_URL", &format!("{url}/notify"))
    }

    fn devices(db: &str) -> String {
        PgCluster::shared().psql(
            db,
            "SELECT string_agg(id || ':' || name, ',' ORDER BY id) FROM devices",
        )
    }

    fn replicas(d: &K8sDouble) -> Value {
        d.get("apps/v1", "Deployment", NAMESPACE, API)
            .map(|d| d["spec"]["replicas"].clone())
            .unwrap_or_default()
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
}

/// The whole failback: the rows written in DR reach the primary, the primary API serves at
/// production capacity, DNS points back, the DR API is left at 0, the primary's old state kept.
#[test]
fn dr_failback_end_to_end_brings_users_and_their_data_back() {
    let site = Site::new("fb_e2e");
    let dr_rows = Site::devices(&site.dr_db);
    let out = site.exec().run();
    out.assert_code(0);
    assert_eq!(Site::devices(&site.primary_db), dr_rows);
    assert!(dr_rows.contains("3:written-in-dr"), "{dr_rows}");
    assert_eq!(Site::replicas(&site.dr), json!(0));
    assert_eq!(Site::replicas(&site.primary), json!(3));
    let stop = &succeeded(&out, "stop-dr-writers")["result"];
    assert_eq!(stop["previous"], DR_REPLICAS, "{stop}");
    let w = site.web.web();
    assert_eq!(w.record_ip, PRIMARY_IP);
    assert_eq!(w.dns_puts.len(), 1);
    drop(w);
    // The primary database as it was (two devices) is kept in the forensic dump.
    let dump = succeeded(&out, "keep-primary-state")["outputs"]["file"]
        .as_str()
        .expect("the forensic dump's path")
        .to_owned();
    let listed = std::process::Command::new(PgCluster::shared().tool("pg_restore"))
        .args(["--file=-", "--data-only", "--table=devices"])
        .arg(&dump)
        .output()
        .expect("run pg_restore");
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success() && text.contains("edge-2") && !text.contains("written-in-dr"),
        "{text}"
    );
    for step in ["primary-rollout", "primary-health", "smoke-tests", "notify"] {
        succeeded(&out, step);
    }
    let last = site.last_notification();
    assert!(last.contains("succeeded") && last.contains(&dump), "{last}");
}

/// DNS does not point at the DR cluster (no failover happened, or it was already undone):
/// nothing is touched.
#[test]
fn dr_failback_refuses_when_users_are_not_on_the_dr_cluster() {
    let site = Site::new("fb_notdr");
    PRIMARY_IP.clone_into(&mut site.web.web().record_ip);
    let primary_rows = Site::devices(&site.primary_db);
    let out = site.exec().run();
    out.assert_code(4);
    assert!(
        !out.of_step("step_aborted", "check-state").is_empty(),
        "{}",
        out.dump()
    );
    assert!(site.dr.writes().is_empty() && site.primary.writes().is_empty());
    assert_eq!(Site::devices(&site.primary_db), primary_rows);
    assert!(site.web.web().dns_puts.is_empty());
    assert!(out.of_step("step_started", "approve-failback").is_empty());
}

/// The primary cluster refuses the scale-up (RBAC): the run rolls back before the DNS switch —
/// the DR API comes back to the replicas it had and users stay on DR; DNS is untouched.
#[test]
fn dr_failback_a_failure_before_the_switch_puts_the_dr_api_back() {
    let site = Site::new("fb_rollback");
    site.primary.forbid(
        "patch",
        "deployments/scale",
        "system:serviceaccount:ops:runbook",
    );
    let out = site.exec().run();
    out.assert_code(3);
    assert!(
        !out.of_step("step_failed", "scale-primary").is_empty(),
        "{}",
        out.dump()
    );
    assert_eq!(Site::replicas(&site.dr), json!(DR_REPLICAS));
    assert_eq!(Site::replicas(&site.primary), json!(0));
    let w = site.web.web();
    assert_eq!(w.record_ip, DR_IP);
    assert!(w.dns_puts.is_empty());
    drop(w);
    let last = site.last_notification();
    assert!(last.contains("rolled_back"), "{last}");
}

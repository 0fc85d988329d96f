//! `runbooks/migration-restore.yaml` end to end on a real, throwaway `PostgreSQL`
//! (tests/support/pg.rs): schema v1 with data, a backup, a destructive v2 migration (a dropped
//! column that held data), then the runbook — run through, killed right after the DROP and
//! resumed, refused with a backup older than `max_backup_age` (by the archive's own creation
//! time), with each migration tool's version table, and with the backup fetched from S3.
//!
//! The writer Deployment lives in the Kubernetes API double (`tests/support/k8s_double.rs`): the
//! runbook scales it to 0 and back to the replicas it had. The other writers and the
//! application rollback are commands that touch marker files, the health endpoint is a tiny
//! local HTTP server, the chat webhook a local recorder, and `aws` a stand-in script on PATH.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use support::k8s_double::{K8sDouble, write_kubeconfig};
use support::pg::{PgCluster, unique_name, wait_no_process};
use support::{HealthServer, RunOutput, Runbook, TempDir};

const RUNBOOK: &str = "runbooks/migration-restore.yaml";
const V1: &str = "20250101000000";
const V2: &str = "20250201000000";
const DEVICES: usize = 1200;
const NETWORKS: usize = 12;
const K8S_TOKEN: &str = "mr-k8s-5e1f-token";
const NAMESPACE: &str = "edgelink-prod";
const WRITER: &str = "api";
/// Replicas of the writer Deployment before the incident: what it must come back to.
const WRITER_REPLICAS: i64 = 4;

/// The migration tools whose version tables the runbook reads (`migration_tool`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tool {
    GolangMigrate,
    Flyway,
    Liquibase,
    Rails,
    Query,
}

impl Tool {
    fn param(self) -> &'static str {
        match self {
            Self::GolangMigrate => "golang-migrate",
            Self::Flyway => "flyway",
            Self::Liquibase => "liquibase",
            Self::Rails => "rails",
            Self::Query => "query",
        }
    }

    /// The tool's own version table at v1, as the tool leaves it (with history the gate must
    /// see past: an older version, a repeatable migration, an untagged changeset).
    fn v1_sql(self) -> String {
        match self {
            Self::GolangMigrate => format!(
                "CREATE TABLE schema_migrations (version bigint PRIMARY KEY, dirty boolean NOT NULL);
                 INSERT INTO schema_migrations VALUES ({V1}, false);"
            ),
            Self::Flyway => "CREATE TABLE flyway_schema_history (
                   installed_rank int PRIMARY KEY, version varchar(50), description varchar(200) NOT NULL,
                   type varchar(20) NOT NULL, script varchar(1000) NOT NULL, checksum int,
                   installed_by varchar(100) NOT NULL, installed_on timestamp NOT NULL DEFAULT now(),
                   execution_time int NOT NULL, success boolean NOT NULL);
                 INSERT INTO flyway_schema_history VALUES
                   (1, '1', 'create devices', 'SQL', 'V1__create_devices.sql', 11, 'app', now(), 5, true),
                   (2, '1.1', 'networks', 'SQL', 'V1_1__networks.sql', 12, 'app', now(), 5, true),
                   (3, NULL, 'views', 'SQL', 'R__views.sql', 13, 'app', now(), 5, true);"
                .to_owned(),
            Self::Liquibase => "CREATE TABLE databasechangelog (
                   id varchar(255) NOT NULL, author varchar(255) NOT NULL, filename varchar(255) NOT NULL,
                   dateexecuted timestamp NOT NULL, orderexecuted int NOT NULL, exectype varchar(10) NOT NULL,
                   md5sum varchar(35), description varchar(255), comments varchar(255), tag varchar(255),
                   liquibase varchar(20), contexts varchar(255), labels varchar(255), deployment_id varchar(10));
                 INSERT INTO databasechangelog (id, author, filename, dateexecuted, orderexecuted, exectype, tag) VALUES
                   ('1-create-devices', 'app', 'changelog.xml', now() - interval '2 days', 1, 'EXECUTED', NULL),
                   ('2-networks', 'app', 'changelog.xml', now() - interval '1 day', 2, 'EXECUTED', 'v1.0');"
                .to_owned(),
            Self::Rails => "CREATE TABLE schema_migrations (version varchar PRIMARY KEY);
                 CREATE TABLE ar_internal_metadata (key varchar PRIMARY KEY, value varchar);
                 INSERT INTO ar_internal_metadata VALUES ('environment', 'production');
                 INSERT INTO schema_migrations VALUES ('20241201000000'), ('20250101000000');"
                .to_owned(),
            Self::Query => "CREATE TABLE app_schema (version int NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());
                 INSERT INTO app_schema (version) VALUES (6), (7);"
                .to_owned(),
        }
    }

    /// What the irreversible v2 migration records.
    fn v2_sql(self) -> String {
        match self {
            Self::GolangMigrate => format!("UPDATE schema_migrations SET version = {V2};"),
            Self::Flyway => "INSERT INTO flyway_schema_history VALUES
                   (4, '2', 'drop serial', 'SQL', 'V2__drop_serial.sql', 14, 'app', now(), 5, true);"
                .to_owned(),
            Self::Liquibase => "INSERT INTO databasechangelog (id, author, filename, dateexecuted, orderexecuted, exectype)
                   VALUES ('3-drop-serial', 'app', 'changelog.xml', now(), 3, 'EXECUTED');"
                .to_owned(),
            Self::Rails => format!("INSERT INTO schema_migrations VALUES ('{V2}');"),
            Self::Query => "INSERT INTO app_schema (version) VALUES (8);".to_owned(),
        }
    }

    /// The version the backup is at, as `expected_schema_version`.
    fn v1(self) -> &'static str {
        match self {
            Self::GolangMigrate | Self::Rails => V1,
            Self::Flyway => "1.1",
            Self::Liquibase => "v1.0",
            Self::Query => "7",
        }
    }

    /// SQL reading the current version back (the test's own reading, not the runbook's).
    fn current_sql(self) -> &'static str {
        match self {
            Self::GolangMigrate => "SELECT version || ' ' || dirty FROM schema_migrations",
            Self::Flyway => {
                "SELECT version FROM flyway_schema_history WHERE version IS NOT NULL ORDER BY installed_rank DESC LIMIT 1"
            }
            Self::Liquibase => {
                "SELECT coalesce(tag, id) FROM databasechangelog ORDER BY orderexecuted DESC LIMIT 1"
            }
            Self::Rails => "SELECT max(version) FROM schema_migrations",
            Self::Query => "SELECT max(version) FROM app_schema",
        }
    }

    fn current_v1(self) -> String {
        if self == Self::GolangMigrate {
            format!("{V1} false")
        } else {
            self.v1().to_owned()
        }
    }

    fn verify_step(self) -> String {
        format!("verify-schema-{}", self.param())
    }
}

/// Every tool, for the "the others are skipped" checks.
const TOOLS: [Tool; 5] = [
    Tool::GolangMigrate,
    Tool::Flyway,
    Tool::Liquibase,
    Tool::Rails,
    Tool::Query,
];

/// The steps whose action destroys or rebuilds the database.
const DESTRUCTIVE: [&str; 5] = [
    "block-connections",
    "terminate-sessions",
    "drop-database",
    "create-database",
    "restore-backup",
];

/// One production-like database broken by an irreversible migration, with everything a run of
/// the runbook needs around it.
struct Incident {
    cluster: &'static PgCluster,
    role: String,
    password: String,
    database: String,
    dir: TempDir,
    backup: PathBuf,
    forensics: PathBuf,
    health: HealthServer,
    /// `count|md5` of the devices (with their serial numbers) at backup time.
    fingerprint: String,
    tool: Tool,
    /// The cluster the writer Deployment runs in.
    k8s: K8sDouble,
    kubeconfig: PathBuf,
    webhook: Webhook,
    /// Extra params (override the defaults of `params`).
    extra: Vec<(String, String)>,
    /// Directory put first on PATH (stand-ins such as `aws`).
    bin: PathBuf,
}

impl Incident {
    fn new(tag: &str) -> Self {
        Self::with(tag, Tool::GolangMigrate, None)
    }

    /// An incident whose database records its schema with `tool`; `dump_tz` is the time zone
    /// `pg_dump` runs in when it takes the backup (its archive header records wall-clock time).
    fn with(tag: &str, tool: Tool, dump_tz: Option<&str>) -> Self {
        let cluster = PgCluster::shared();
        let role = unique_name(&format!("{tag}_app"));
        let password = format!("App-{}-pw!", std::process::id());
        let database = unique_name(&format!("{tag}_prod"));
        cluster.create_role(&role, &password);
        cluster.create_database(&database, &role);
        let dir = TempDir::new(tag);
        let forensics = dir.join("forensics");
        std::fs::create_dir_all(&forensics).expect("forensics dir");
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).expect("bin dir");
        let k8s = K8sDouble::start(K8S_TOKEN);
        k8s.insert(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}),
        );
        k8s.deployment_with_history(
            NAMESPACE,
            WRITER,
            &json!({"app": WRITER}),
            "api",
            &["registry.example/api:v2"],
            WRITER_REPLICAS,
        );
        let kubeconfig = write_kubeconfig(dir.path(), &[("prod", &k8s)], "prod");
        let mut incident = Self {
            cluster,
            role,
            password,
            backup: dir.join("last_good.dump"),
            database,
            forensics,
            dir,
            health: HealthServer::start(Some(Duration::ZERO)),
            fingerprint: String::new(),
            tool,
            k8s,
            kubeconfig,
            webhook: Webhook::start(),
            extra: Vec::new(),
            bin,
        };
        // Schema v1 (the tool's version table) with data.
        incident.psql(&tool.v1_sql());
        incident.psql(&format!(
            "CREATE TABLE devices (id serial PRIMARY KEY, name text NOT NULL, serial_no text NOT NULL);
             INSERT INTO devices (name, serial_no)
               SELECT 'edge-' || i, 'SN-' || md5(i::text) FROM generate_series(1, {DEVICES}) i;
             CREATE TABLE virtual_networks (id serial PRIMARY KEY, cidr cidr NOT NULL);
             INSERT INTO virtual_networks (cidr)
               SELECT ('10.' || i || '.0.0/16')::cidr FROM generate_series(1, {NETWORKS}) i;"
        ));
        let fingerprint = incident.fingerprint();
        // The last good backup.
        let mut pg_dump = Command::new(cluster.tool("pg_dump"));
        if let Some(tz) = dump_tz {
            pg_dump.env("TZ", tz);
        }
        let out = pg_dump
            .args(["--no-password", "--format=custom", "--file"])
            .arg(&incident.backup)
            .args(["--host", &cluster.host, "--port", &cluster.port.to_string()])
            .args(["--username", &incident.role, "--dbname", &incident.database])
            .env("PGPASSWORD", &incident.password)
            .output()
            .expect("run pg_dump");
        assert!(
            out.status.success(),
            "pg_dump failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The irreversible v2 migration: a column holding data is dropped; the application
        // keeps writing afterwards.
        incident.psql(&format!(
            "ALTER TABLE devices DROP COLUMN serial_no;
             {}
             INSERT INTO devices (name) VALUES ('written-after-the-backup');",
            tool.v2_sql()
        ));
        incident.fingerprint = fingerprint;
        incident
    }

    #[track_caller]
    fn psql(&self, sql: &str) -> String {
        self.cluster
            .try_psql_as(&self.role, &self.password, &self.database, sql)
            .unwrap_or_else(|e| panic!("psql failed: {e}\n{sql}"))
    }

    fn fingerprint(&self) -> String {
        self.psql(
            "SELECT count(*) || '|' || md5(string_agg(id || ':' || name || ':' || serial_no, ',' ORDER BY id)) FROM devices",
        )
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    fn marker(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Environment of every engine process: secrets, PATH with the cluster's tools first, the
    /// state directory.
    fn env(&self) -> Vec<(String, String)> {
        let dsn = |db: &str| self.cluster.dsn(&self.role, &self.password, db);
        vec![
            ("PGPASSWORD".to_owned(), self.password.clone()),
            ("PG_MAINTENANCE_DSN".to_owned(), dsn("postgres")),
            ("PG_DSN".to_owned(), dsn(&self.database)),
            (
                "PATH".to_owned(),
                format!("{}:{}", self.bin.display(), self.cluster.path_env()),
            ),
            (
                "KUBECONFIG".to_owned(),
                self.kubeconfig.display().to_string(),
            ),
            ("NOTIFY_WEBHOOK_URL".to_owned(), self.webhook.url.clone()),
            (
                "RUNBOOK_STATE_DIR".to_owned(),
                self.state_dir().display().to_string(),
            ),
        ]
    }

    fn params(&self, max_backup_age: &str) -> Vec<(String, String)> {
        let touch = |name: &str| format!("touch {}", self.marker(name).display());
        [
            ("pg_host", self.cluster.host.clone()),
            ("pg_port", self.cluster.port.to_string()),
            ("pg_user", self.role.clone()),
            ("database", self.database.clone()),
            ("backup_file", self.backup.display().to_string()),
            ("max_backup_age", max_backup_age.to_owned()),
            ("forensic_dir", self.forensics.display().to_string()),
            ("migration_tool", self.tool.param().to_owned()),
            ("expected_schema_version", self.tool.v1().to_owned()),
            (
                "min_row_counts",
                format!("devices={DEVICES},virtual_networks={NETWORKS}"),
            ),
            (
                "sample_query",
                "SELECT id, name, serial_no FROM devices ORDER BY id LIMIT 1".to_owned(),
            ),
            ("restore_jobs", "2".to_owned()),
            ("namespace", NAMESPACE.to_owned()),
            ("writer_deployment", WRITER.to_owned()),
            ("stop_writers_command", touch("writers-stopped")),
            ("app_rollback_command", touch("app-rolled-back")),
            ("start_writers_command", touch("writers-started")),
            ("health_url", self.health.url.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .filter(|(k, _)| !self.extra.iter().any(|(e, _)| e == k))
        .chain(self.extra.iter().cloned())
        .collect()
    }

    fn set(&mut self, param: &str, value: &str) {
        self.extra.push((param.to_owned(), value.to_owned()));
    }

    fn replicas(&self) -> Value {
        self.k8s
            .get("apps/v1", "Deployment", NAMESPACE, WRITER)
            .map(|d| d["spec"]["replicas"].clone())
            .unwrap_or_default()
    }

    /// Replicas written through the scale subresource, in order.
    fn scales(&self) -> Vec<Value> {
        self.k8s
            .writes()
            .iter()
            .filter(|w| w.path.ends_with("/scale"))
            .map(|w| w.body["spec"]["replicas"].clone())
            .collect()
    }

    fn exec(&self, max_backup_age: &str) -> Runbook {
        let mut rb = Runbook::exec(runbook_path()).yes().json();
        for (k, v) in self.params(max_backup_age) {
            rb = rb.param(&k, &v);
        }
        for (k, v) in self.env() {
            rb = rb.env(&k, &v);
        }
        rb
    }

    fn cli(&self, args: &[&str]) -> RunOutput {
        let mut rb = Runbook::new(args.iter().map(|a| (*a).to_owned()));
        for (k, v) in self.env() {
            rb = rb.env(&k, &v);
        }
        rb.run()
    }

    /// The run's audit entries.
    fn audit(&self, run_id: &str) -> Vec<Value> {
        let out = self.cli(&["audit", "export", "--run", run_id]);
        out.assert_code(0);
        out.stdout
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
            .collect()
    }

    fn forensic_dumps(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.forensics)
            .expect("read forensics dir")
            .flatten()
            .map(|e| e.path())
            .collect()
    }

    /// The database is back at v1: the dropped column and every row of the backup.
    #[track_caller]
    fn assert_restored(&self) {
        assert_eq!(
            self.psql(
                "SELECT count(*) FROM information_schema.columns \
                 WHERE table_name = 'devices' AND column_name = 'serial_no'"
            ),
            "1",
            "the dropped column is not back"
        );
        assert_eq!(
            self.fingerprint(),
            self.fingerprint,
            "devices differ from the backup"
        );
        assert_eq!(self.psql(self.tool.current_sql()), self.tool.current_v1());
        assert_eq!(
            self.psql("SELECT count(*) FROM virtual_networks"),
            NETWORKS.to_string()
        );
        assert_eq!(
            self.cluster.psql(
                "postgres",
                &format!(
                    "SELECT pg_get_userbyid(datdba) || ' ' || datallowconn FROM pg_database WHERE datname = '{}'",
                    self.database
                )
            ),
            format!("{} true", self.role)
        );
    }

    /// The forensic dump of the broken (v2) state exists and reads back.
    #[track_caller]
    fn assert_forensic_dump(&self) {
        let dumps = self.forensic_dumps();
        assert_eq!(dumps.len(), 1, "{dumps:?}");
        let name = dumps[0]
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        assert!(
            name.starts_with(&format!("failed_migration_{}_", self.database))
                && Path::new(name).extension().is_some_and(|e| e == "dump"),
            "{name}"
        );
        let out = Command::new(self.cluster.tool("pg_restore"))
            .args(["--file=-", "--data-only", "--table=devices"])
            .arg(&dumps[0])
            .output()
            .expect("run pg_restore");
        assert!(out.status.success());
        // The broken state: the row written after the backup is in it.
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("written-after-the-backup"),
            "the forensic dump does not hold the broken state"
        );
    }

    /// Each destructive step's action is in the audit log, and the whole chain verifies.
    #[track_caller]
    fn assert_audited(&self, run_id: &str) {
        let audit = self.audit(run_id);
        for step in DESTRUCTIVE {
            let executed: Vec<&Value> = audit
                .iter()
                .filter(|e| e["action"] == "step.execute" && e["step"] == step)
                .collect();
            assert!(
                !executed.is_empty(),
                "no step.execute audit entry for {step}"
            );
            let target = executed[0]["target"].as_str().unwrap_or_default();
            assert!(
                !target.contains(&self.password),
                "the audit log shows the password: {target}"
            );
            assert!(
                audit.iter().any(|e| e["action"] == "step.finish"
                    && e["step"] == step
                    && e["outcome"] == "succeeded"),
                "no successful step.finish audit entry for {step}"
            );
        }
        let drop = audit
            .iter()
            .find(|e| e["action"] == "step.execute" && e["step"] == "drop-database")
            .and_then(|e| e["target"].as_str())
            .unwrap_or_default();
        assert!(
            drop.contains(&format!("DROP DATABASE IF EXISTS \"{}\"", self.database))
                && drop.contains(&format!("{}:***@", self.role)),
            "{drop}"
        );
        let verify = self.cli(&["audit", "verify"]);
        verify.assert_code(0);
    }
}

/// The chat webhook: a real HTTP server on 127.0.0.1 that records the JSON bodies posted to it.
struct Webhook {
    url: String,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Webhook {
    fn start() -> Self {
        use axum::Json;
        use axum::extract::State;
        use std::sync::{Arc, Mutex};
        let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
        let app = axum::Router::new()
            .route(
                "/notify",
                axum::routing::post(
                    |State(b): State<Arc<Mutex<Vec<Value>>>>, Json(body): Json<Value>| async move {
                        b.lock().expect("lock").push(body);
                        "ok"
                    },
                ),
            )
            .with_state(bodies.clone());
        let (base, tx) = crate::support::serve_loopback(app);
        let url = format!("{base}/notify");
        Self {
            url,
            bodies,
            _stop: tx,
        }
    }

    fn texts(&self) -> Vec<String> {
        self.bodies
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|b| b["text"].as_str().map(str::to_owned))
            .collect()
    }
}

fn runbook_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(RUNBOOK)
}

fn run_id(events: &[Value]) -> String {
    events
        .iter()
        .find(|e| e["event"] == "run_started")
        .and_then(|e| e["run_id"].as_str())
        .expect("a run_started event with run_id")
        .to_owned()
}

/// The run's outputs recorded by the `finally` step.
fn objectives(out: &RunOutput) -> serde_json::Map<String, Value> {
    out.of_step("step_succeeded", "record-objectives")
        .first()
        .and_then(|e| e["outputs"].as_object().cloned())
        .unwrap_or_else(|| panic!("record-objectives did not succeed\n{}", out.dump()))
}

#[track_caller]
fn succeeded_step<'a>(out: &'a RunOutput, step: &str) -> &'a Value {
    out.of_step("step_succeeded", step)
        .first()
        .copied()
        .unwrap_or_else(|| panic!("{step} did not succeed\n{}", out.dump()))
}

/// The writer Deployment went to 0 and came back to the replicas it had (the `previous` of the
/// stop), through the scale subresource.
#[track_caller]
fn assert_writers_back(incident: &Incident, out: &RunOutput) {
    assert_eq!(
        incident.scales(),
        vec![json!(0), json!(WRITER_REPLICAS)],
        "{}",
        out.dump()
    );
    assert_eq!(incident.replicas(), json!(WRITER_REPLICAS));
}

fn step_ms(out: &RunOutput, step: &str) -> u64 {
    out.of_step("step_succeeded", step)
        .first()
        .and_then(|e| e["duration_ms"].as_u64())
        .unwrap_or_default()
}

/// The whole procedure: the column and every row back, the writer Deployment scaled to 0 and
/// back to the replicas it had, the team told of the start, the approval and the outcome. The
/// backup file's mtime is two hours old against a `max_backup_age` of 1h: only the archive's
/// own creation time counts, and that is seconds ago.
#[test]
fn migration_restore_restores_the_dropped_column_and_every_row() {
    let incident = Incident::new("restore");
    std::fs::File::options()
        .write(true)
        .open(&incident.backup)
        .and_then(|f| f.set_modified(SystemTime::now() - Duration::from_hours(2)))
        .expect("age the backup file");
    let out = incident.exec("1h").run();
    out.assert_code(0);
    incident.assert_restored();
    incident.assert_forensic_dump();
    for marker in ["writers-stopped", "app-rolled-back", "writers-started"] {
        assert!(incident.marker(marker).exists(), "{marker} was not run");
    }
    assert_writers_back(&incident, &out);
    let texts = incident.webhook.texts();
    assert_eq!(texts.len(), 3, "{texts:?}");
    assert!(
        texts[0].contains("started") && texts[0].contains(&incident.database),
        "{texts:?}"
    );
    assert!(
        texts[1].contains("waits for an approval") && texts[1].contains("failed_migration_"),
        "{texts:?}"
    );
    assert!(
        texts[2].contains("succeeded") && texts[2].contains("RPO achieved"),
        "{texts:?}"
    );
    // The other tools' gates are skipped; golang-migrate's ran.
    succeeded_step(&out, "verify-schema-golang-migrate");
    for tool in &TOOLS[1..] {
        assert!(
            out.of_step("step_succeeded", &tool.verify_step())
                .is_empty(),
            "{tool:?}"
        );
    }
    assert!(
        incident.health.requests() >= 1,
        "the smoke check never asked"
    );
    let run_id = run_id(&out.events);
    incident.assert_audited(&run_id);

    let o = objectives(&out);
    for key in [
        "rpo_seconds",
        "rpo_met",
        "downtime_seconds",
        "rto_met",
        "duration_seconds",
    ] {
        assert!(o.contains_key(key), "no output {key}: {o:?}");
    }
    assert_eq!(o["rpo_met"], true);
    assert_eq!(o["rto_met"], true);
    // Measured from the archive (seconds old), not from the file's two-hour-old mtime.
    assert!(
        o["rpo_seconds"]
            .as_i64()
            .is_some_and(|s| (0..600).contains(&s)),
        "{o:?}"
    );
    eprintln!(
        "migration-restore: run {:?}, pg_restore {} ms, drop {} ms, create {} ms; outputs {}",
        out.elapsed,
        step_ms(&out, "restore-backup"),
        step_ms(&out, "drop-database"),
        step_ms(&out, "create-database"),
        Value::Object(o)
    );
}

#[test]
fn migration_restore_killed_right_after_the_drop_then_resumed_still_ends_restored() {
    let decisions = kill_and_resume("killed", "step_succeeded", "drop-database");
    eprintln!("killed after the drop; resume decisions: {decisions}");
}

/// The engine killed during `pg_restore`: the restore runs on under its supervisor, and the
/// resumed run takes its recorded exit (`finished`, no second `pg_restore`); if the restore was
/// stopped before it ended, the resume re-runs it (`--clean --if-exists`). Either way it ends
/// restored, and never with two restores.
#[test]
fn migration_restore_killed_during_pg_restore_then_resumed_still_ends_restored() {
    let decisions = kill_and_resume("midrestore", "command", "restore-backup");
    let restore: Vec<&Value> = decisions
        .as_array()
        .map(|d| d.iter().filter(|d| d["step"] == "restore-backup").collect())
        .unwrap_or_default();
    assert!(
        restore.len() == 1
            && ["finished", "rerun"].contains(&restore[0]["decision"].as_str().unwrap_or("")),
        "{decisions}"
    );
}

/// Run the runbook, SIGKILL the engine when `event` of `step` appears on its JSON stream,
/// resume the run and check it ends restored. Returns the resume's decisions.
fn kill_and_resume(tag: &str, event: &str, step: &str) -> Value {
    let incident = Incident::new(tag);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_runbook"));
    cmd.arg("exec")
        .arg(runbook_path())
        .args(["--yes", "--output", "json"]);
    for (k, v) in incident.params("1h") {
        cmd.args(["-p", &format!("{k}={v}")]);
    }
    for (k, v) in incident.env() {
        cmd.env(k, v);
    }
    let mut child = cmd
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn runbook");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && tx.send(v).is_err()
            {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut seen = Vec::new();
    loop {
        let remaining = Duration::from_secs(30).saturating_sub(started.elapsed());
        let Ok(e) = rx.recv_timeout(remaining) else {
            let _ = child.kill();
            panic!("no {event} event of {step} within 30s: {seen:#?}");
        };
        let now = e["event"] == event && e["step"] == step;
        seen.push(e);
        if now {
            // SIGKILL: no cancellation, no finally, no journal entry of the end.
            child.kill().expect("kill the engine");
            break;
        }
    }
    let _ = child.wait();
    let run_id = run_id(&seen);
    // What the kill left: the database dropped (or being created again), not restored.
    let has_devices = incident
        .cluster
        .try_psql_as(
            &incident.role,
            &incident.password,
            &incident.database,
            "SELECT to_regclass('devices') IS NOT NULL",
        )
        .is_ok_and(|s| s == "t");
    assert!(
        !has_devices || step == "restore-backup",
        "the database was already restored when the engine was killed"
    );
    // An operator resumes once the killed run's children are gone: an orphaned pg_restore
    // (its own process group), or a CREATE DATABASE still finishing on the server.
    assert!(wait_no_process(
        &incident.backup.display().to_string(),
        Duration::from_secs(20)
    ));
    let creating = Instant::now();
    while incident.cluster.psql(
        "postgres",
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'CREATE DATABASE \"{}\"%'",
            incident.database
        ),
    ) != "0"
    {
        assert!(creating.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(50));
    }

    // `runbook resume`: the journal says the irreversible DROP is done — it is never run again;
    // steps in flight are settled by the runbook itself (create-database's gate, the restore's
    // --clean). Should the engine still ask, decide as an operator who knows the DROP is done.
    let mut args = vec![
        "resume".to_owned(),
        run_id.clone(),
        "--yes".to_owned(),
        "--output".to_owned(),
        "json".to_owned(),
    ];
    let mut resumed = incident.cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
    if resumed.code == Some(6) && resumed.stderr.contains("pass --rerun") {
        for step in DESTRUCTIVE {
            if resumed.stderr.contains(&format!("--rerun {step} ")) {
                let decision = if step == "drop-database" {
                    "--skip"
                } else {
                    "--rerun"
                };
                args.push(decision.to_owned());
                args.push(step.to_owned());
            }
        }
        eprintln!("resume asked for decisions: {}", resumed.stderr.trim());
        resumed = incident.cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }
    resumed.assert_code(0);
    assert!(
        resumed.of_step("step_started", "drop-database").is_empty(),
        "the resumed run dropped the database again\n{}",
        resumed.dump()
    );
    let resumed_event = resumed.of("resumed").first().map_or_else(
        || panic!("no resumed event\n{}", resumed.dump()),
        |e| (*e).clone(),
    );
    assert!(
        resumed_event["done"]
            .as_array()
            .is_some_and(|d| d.iter().any(|s| s == "drop-database")),
        "{resumed_event}"
    );
    incident.assert_restored();
    incident.assert_forensic_dump();
    incident.assert_audited(&run_id);
    let audit = incident.audit(&run_id);
    assert!(audit.iter().any(|e| e["action"] == "run.resume"));
    assert_eq!(
        audit
            .iter()
            .filter(|e| e["action"] == "step.execute" && e["step"] == "drop-database")
            .count(),
        1,
        "DROP DATABASE ran more than once"
    );
    let o = objectives(&resumed);
    assert!(o.contains_key("rpo_seconds") && o.contains_key("duration_seconds"));
    // The resumed run scaled the writers back to what the killed run found, from its journal.
    assert_writers_back(&incident, &resumed);
    resumed_event["decisions"].clone()
}

/// An archive created two hours ago, in a file written a moment ago (as a copy or a download
/// leaves it): the RPO guard reads the archive's header and refuses it. `pg_dump` ran with
/// `TZ=UTC+2`, so the wall-clock time in its header is two hours behind UTC, as an archive made
/// two hours ago by a `pg_dump` in UTC would record.
#[test]
fn migration_restore_a_backup_older_than_max_backup_age_aborts_before_touching_anything() {
    let incident = Incident::with("stale", Tool::GolangMigrate, Some("UTC+2"));
    let mtime_age = std::fs::metadata(&incident.backup)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .expect("backup mtime");
    assert!(mtime_age < Duration::from_mins(5), "{mtime_age:?}");
    let before = incident.psql(
        "SELECT count(*) || '|' || md5(string_agg(id || ':' || name, ',' ORDER BY id)) FROM devices",
    );
    let out = incident.exec("15m").run();
    out.assert_code(4);
    assert_eq!(out.finished()["status"], "aborted");
    let aborted = out
        .of_step("step_aborted", "check-database")
        .first()
        .and_then(|e| e["reason"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("check-database was not aborted\n{}", out.dump()));
    assert!(aborted.contains("max_backup_age"), "{aborted}");
    assert!(
        out.stdout.contains("limit 900s"),
        "the RPO guard did not report the age\n{}",
        out.dump()
    );
    let age: u64 = out
        .stdout
        .split("backup age ")
        .find_map(|r| r.split('s').next().and_then(|n| n.parse().ok()))
        .unwrap_or_else(|| panic!("no backup age reported\n{}", out.dump()));
    assert!((7100..7500).contains(&age), "age {age}s");

    // Untouched: still the broken v2 state, writers never stopped, no dump taken.
    for step in DESTRUCTIVE.iter().chain(&[
        "stop-writers",
        "stop-other-writers",
        "snapshot-broken-state",
    ]) {
        assert!(
            out.of_step("step_started", step).is_empty(),
            "{step} ran\n{}",
            out.dump()
        );
    }
    assert_eq!(
        incident.psql(
            "SELECT count(*) || '|' || md5(string_agg(id || ':' || name, ',' ORDER BY id)) FROM devices"
        ),
        before
    );
    assert_eq!(incident.psql("SELECT version FROM schema_migrations"), V2);
    assert_eq!(
        incident.psql(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'devices' AND column_name = 'serial_no'"
        ),
        "0"
    );
    assert!(!incident.marker("writers-stopped").exists());
    assert!(incident.scales().is_empty(), "the writers were scaled");
    assert_eq!(incident.replicas(), json!(WRITER_REPLICAS));
    assert!(incident.forensic_dumps().is_empty());
    let audit = incident.audit(&run_id(&out.events));
    assert!(
        !audit.iter().any(|e| e["action"] == "step.execute"
            && DESTRUCTIVE.contains(&e["step"].as_str().unwrap_or_default())),
        "a destructive step is in the audit log"
    );
    incident.cli(&["audit", "verify"]).assert_code(0);
}

/// A full run with `tool`'s version table: that tool's gate passes, the others are skipped,
/// the database ends restored and the writers back.
fn restores_with(tool: Tool) {
    let mut incident = Incident::with(
        &format!("tool_{}", tool.param().replace('-', "_")),
        tool,
        None,
    );
    if tool == Tool::Query {
        incident.set(
            "schema_version_query",
            "SELECT max(version) AS version FROM app_schema",
        );
    }
    let out = incident.exec("1h").run();
    out.assert_code(0);
    incident.assert_restored();
    assert_writers_back(&incident, &out);
    succeeded_step(&out, &tool.verify_step());
    for other in TOOLS.iter().filter(|t| **t != tool) {
        assert!(
            out.of_step("step_started", &other.verify_step()).is_empty()
                && out
                    .of_step("step_succeeded", &other.verify_step())
                    .is_empty(),
            "{other:?} ran\n{}",
            out.dump()
        );
    }
}

#[test]
fn migration_restore_schema_version_by_flyway() {
    restores_with(Tool::Flyway);
}

#[test]
fn migration_restore_schema_version_by_liquibase() {
    restores_with(Tool::Liquibase);
}

#[test]
fn migration_restore_schema_version_by_rails() {
    restores_with(Tool::Rails);
}

#[test]
fn migration_restore_schema_version_by_query() {
    restores_with(Tool::Query);
}

/// The backup restored is not at the version asked for (Flyway's history says 1.1, the
/// operator expected 2): the gate fails the run after the restore, before the application is
/// rolled back, and the writers stay stopped for a human to decide.
#[test]
fn migration_restore_a_wrong_schema_version_fails_and_leaves_writers_stopped() {
    let mut incident = Incident::with("wrongver", Tool::Flyway, None);
    incident.set("expected_schema_version", "2");
    let out = incident.exec("1h").run();
    out.assert_code(1);
    assert!(
        !out.of_step("step_failed", "verify-schema-flyway")
            .is_empty(),
        "{}",
        out.dump()
    );
    for step in [
        "roll-back-app",
        "start-writers",
        "start-other-writers",
        "smoke-check",
    ] {
        assert!(
            out.of_step("step_started", step).is_empty(),
            "{step} ran\n{}",
            out.dump()
        );
    }
    assert_eq!(incident.scales(), vec![json!(0)]);
    assert_eq!(incident.replicas(), json!(0));
    assert!(!incident.marker("app-rolled-back").exists());
    let texts = incident.webhook.texts();
    assert!(
        texts
            .last()
            .is_some_and(|t| t.contains("failed") && t.contains("Writers stay stopped")),
        "{texts:?}"
    );
}

/// `migration_tool=query` without its query is refused before anything runs.
#[test]
fn migration_restore_query_tool_without_a_query_is_refused() {
    let mut incident = Incident::with("noquery", Tool::Query, None);
    incident.set("schema_version_query", "");
    let out = incident.exec("1h").run();
    out.assert_code(4);
    assert!(
        out.stdout.contains("schema_version_query") || out.stderr.contains("schema_version_query"),
        "{}",
        out.dump()
    );
    assert!(incident.scales().is_empty());
}

/// `backup_url`: the backup is fetched with `aws s3 cp` (a stand-in on PATH that records its
/// arguments and writes the archive where it is told) before any check reads it.
#[test]
fn migration_restore_fetches_the_backup_from_s3_first() {
    let mut incident = Incident::new("s3fetch");
    let url = "s3://edgelink-backups/postgres/production/latest_good_backup.dump";
    let fetched = incident.dir.join("fetched.dump");
    let args_log = incident.dir.join("aws-args");
    let aws = incident.bin.join("aws");
    std::fs::write(
        &aws,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > {log}\n[ \"$1 $2\" = \"s3 cp\" ] || exit 2\nfor last; do :; done\ncp {src} \"$last\"\n",
            log = args_log.display(),
            src = incident.backup.display()
        ),
    )
    .expect("write aws stand-in");
    std::fs::set_permissions(&aws, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod aws");
    incident.set("backup_url", url);
    incident.set("backup_file", &fetched.display().to_string());
    assert!(!fetched.exists());
    let out = incident.exec("1h").run();
    out.assert_code(0);
    let args = std::fs::read_to_string(&args_log).expect("aws was called");
    assert_eq!(
        args.lines().collect::<Vec<_>>(),
        vec![
            "s3",
            "cp",
            "--only-show-errors",
            url,
            fetched.to_str().expect("utf-8")
        ]
    );
    // Fetched before the checks that read it.
    let fetched_at = out.position("step_succeeded", "fetch-backup");
    let read_at = out.position("step_started", "record-backup");
    assert!(
        matches!((fetched_at, read_at), (Some(f), Some(r)) if f < r),
        "{}",
        out.dump()
    );
    incident.assert_restored();
}

/// A `backup_url` that is not `s3://` is refused before anything runs.
#[test]
fn migration_restore_a_backup_url_that_is_not_s3_is_refused() {
    let mut incident = Incident::new("nots3");
    incident.set("backup_url", "https://example.com/x.dump");
    let out = incident.exec("1h").run();
    out.assert_code(4);
    assert!(out.of_step("step_started", "fetch-backup").is_empty());
    assert!(incident.scales().is_empty());
}

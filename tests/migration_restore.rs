//! `runbooks/migration-restore.yaml` end to end on a real, throwaway `PostgreSQL`
//! (tests/support/pg.rs): schema v1 with data, a backup, a destructive v2 migration (a dropped
//! column that held data), then the runbook — run through, killed right after the DROP and
//! resumed, and refused with a backup older than `max_backup_age`.
//!
//! Writers and the application are stand-ins: the commands touch marker files, and the health
//! endpoint is a tiny local HTTP server.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use support::pg::{PgCluster, unique_name, wait_no_process};
use support::{HealthServer, RunOutput, Runbook, TempDir};

const RUNBOOK: &str = "runbooks/migration-restore.yaml";
const V1: &str = "20250101000000";
const V2: &str = "20250201000000";
const DEVICES: usize = 1200;
const NETWORKS: usize = 12;

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
}

impl Incident {
    fn new(tag: &str) -> Self {
        let cluster = PgCluster::shared();
        let role = unique_name(&format!("{tag}_app"));
        let password = format!("App-{}-pw!", std::process::id());
        let database = unique_name(&format!("{tag}_prod"));
        cluster.create_role(&role, &password);
        cluster.create_database(&database, &role);
        let dir = TempDir::new(tag);
        let forensics = dir.join("forensics");
        std::fs::create_dir_all(&forensics).expect("forensics dir");
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
        };
        // Schema v1 (golang-migrate's version table) with data.
        incident.psql(&format!(
            "CREATE TABLE schema_migrations (version bigint PRIMARY KEY, dirty boolean NOT NULL);
             INSERT INTO schema_migrations VALUES ({V1}, false);
             CREATE TABLE devices (id serial PRIMARY KEY, name text NOT NULL, serial_no text NOT NULL);
             INSERT INTO devices (name, serial_no)
               SELECT 'edge-' || i, 'SN-' || md5(i::text) FROM generate_series(1, {DEVICES}) i;
             CREATE TABLE virtual_networks (id serial PRIMARY KEY, cidr cidr NOT NULL);
             INSERT INTO virtual_networks (cidr)
               SELECT ('10.' || i || '.0.0/16')::cidr FROM generate_series(1, {NETWORKS}) i;"
        ));
        let fingerprint = incident.fingerprint();
        // The last good backup.
        let out = Command::new(cluster.tool("pg_dump"))
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
             UPDATE schema_migrations SET version = {V2};
             INSERT INTO devices (name) VALUES ('written-after-the-backup');"
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
            ("PATH".to_owned(), self.cluster.path_env()),
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
            ("expected_schema_version", V1.to_owned()),
            (
                "min_row_counts",
                format!("devices={DEVICES},virtual_networks={NETWORKS}"),
            ),
            (
                "sample_query",
                "SELECT id, name, serial_no FROM devices ORDER BY id LIMIT 1".to_owned(),
            ),
            ("restore_jobs", "2".to_owned()),
            ("stop_writers_command", touch("writers-stopped")),
            ("app_rollback_command", touch("app-rolled-back")),
            ("start_writers_command", touch("writers-started")),
            ("health_url", self.health.url.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
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
        assert_eq!(
            self.psql("SELECT version || ' ' || dirty FROM schema_migrations"),
            format!("{V1} false")
        );
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

fn step_ms(out: &RunOutput, step: &str) -> u64 {
    out.of_step("step_succeeded", step)
        .first()
        .and_then(|e| e["duration_ms"].as_u64())
        .unwrap_or_default()
}

#[test]
fn restores_the_dropped_column_and_every_row() {
    let incident = Incident::new("restore");
    let out = incident.exec("1h").run();
    out.assert_code(0);
    incident.assert_restored();
    incident.assert_forensic_dump();
    for marker in ["writers-stopped", "app-rolled-back", "writers-started"] {
        assert!(incident.marker(marker).exists(), "{marker} was not run");
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
fn killed_right_after_the_drop_then_resumed_still_ends_restored() {
    let decisions = kill_and_resume("killed", "step_succeeded", "drop-database");
    eprintln!("killed after the drop; resume decisions: {decisions}");
}

/// The engine killed during `pg_restore`: the restore runs on under its supervisor, and the
/// resumed run takes its recorded exit (`finished`, no second `pg_restore`); if the restore was
/// stopped before it ended, the resume re-runs it (`--clean --if-exists`). Either way it ends
/// restored, and never with two restores.
#[test]
fn killed_during_pg_restore_then_resumed_still_ends_restored() {
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
    resumed_event["decisions"].clone()
}

#[test]
fn a_backup_older_than_max_backup_age_aborts_before_touching_anything() {
    let incident = Incident::new("stale");
    let two_hours_ago = SystemTime::now() - Duration::from_hours(2);
    std::fs::File::options()
        .write(true)
        .open(&incident.backup)
        .and_then(|f| f.set_modified(two_hours_ago))
        .expect("age the backup");
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

    // Untouched: still the broken v2 state, writers never stopped, no dump taken.
    for step in DESTRUCTIVE
        .iter()
        .chain(&["stop-writers", "snapshot-broken-state"])
    {
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
    assert!(incident.forensic_dumps().is_empty());
    let audit = incident.audit(&run_id(&out.events));
    assert!(
        !audit.iter().any(|e| e["action"] == "step.execute"
            && DESTRUCTIVE.contains(&e["step"].as_str().unwrap_or_default())),
        "a destructive step is in the audit log"
    );
    incident.cli(&["audit", "verify"]).assert_code(0);
}

//! `runbook drill`: drill files validated with positions, scenarios run end to end through the
//! real binary (a local HTTP service broken and restored, a real throwaway `PostgreSQL` restored
//! from a backup), RTO/RPO recomputed from the journal, invalid drills, resume after `kill -9`,
//! history with the regression warning, `drill due` against a fixed instant, and the `CronJob`
//! checked by the real `kubectl`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use runbook::state::{EventRecord, SqliteStore, Store};
use serde_json::Value;
use support::pg::{PgCluster, unique_name};
use support::{HealthServer, RunOutput, Runbook, TempDir};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn root(rel: &str) -> PathBuf {
    Path::new(ROOT).join(rel)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// `runbook ARGS` with the state in `state`.
fn cli(state: &Path, args: &[&str]) -> RunOutput {
    Runbook::new(args.iter().map(|a| (*a).to_owned()))
        .env("RUNBOOK_STATE_DIR", state.to_str().expect("utf-8"))
        .run()
}

/// The `service-restore` scenario of `drills/local.yaml` (without `db-restore`), unchanged
/// except for its scratch directory, port, recovery delay and objectives, and the runbook path
/// made absolute, written into `dir`.
fn local_drill(dir: &TempDir, name: &str, delay: u32, objectives: &str) -> PathBuf {
    let full = std::fs::read_to_string(root("drills/local.yaml")).expect("read drills/local.yaml");
    let text = full
        .split("\n  - name: db-restore\n")
        .next()
        .expect("the service scenario")
        .to_owned();
    assert_ne!(text, full, "drills/local.yaml has a db-restore scenario");
    let svc = dir.join(&format!("svc-{name}"));
    let port = free_port();
    let replaced = text
        .replace(
            "runbook: ../runbooks/examples/local-service-restore.yaml",
            &format!(
                "runbook: {}",
                root("runbooks/examples/local-service-restore.yaml").display()
            ),
        )
        .replace(
            "      dir: /tmp/runbook-drill-local\n      port: 18765\n",
            &format!(
                "      dir: {}\n      port: {port}\n      delay: {delay}\n",
                svc.display()
            ),
        )
        .replace("objectives: {rto: 1m, rpo: 5m}", objectives);
    assert_ne!(replaced, text);
    assert!(replaced.contains(&format!("port: {port}")), "{replaced}");
    assert!(replaced.contains(objectives));
    dir.write(name, &replaced)
}

fn store(state: &Path) -> SqliteStore {
    SqliteStore::open(state).expect("open the state store")
}

fn events(state: &Path, run_id: &str) -> Vec<EventRecord> {
    store(state).events(run_id).expect("read events")
}

/// The recorded results, via `drill history --json`.
fn history(state: &Path) -> Vec<Value> {
    let out = cli(state, &["drill", "history", "--json"]);
    out.assert_code(0);
    serde_json::from_str::<Vec<Value>>(&out.stdout).expect("history is JSON")
}

/// When the last passing check of `step` was journaled.
fn last_pass(events: &[EventRecord], step: &str) -> i64 {
    events
        .iter()
        .filter(|e| e.kind == "check" && e.step.as_deref() == Some(step))
        .filter(|e| e.data["passed"] == Value::Bool(true))
        .map(|e| e.at_ms)
        .max()
        .unwrap_or_else(|| panic!("no passing check of {step}"))
}

fn succeeded_at(events: &[EventRecord], step: &str) -> i64 {
    events
        .iter()
        .find(|e| e.kind == "step_succeeded" && e.step.as_deref() == Some(step))
        .unwrap_or_else(|| panic!("{step} did not succeed"))
        .at_ms
}

fn run_id_of(out: &RunOutput) -> String {
    out.stdout
        .split("(run ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or_else(|| panic!("no run id in\n{}", out.dump()))
        .to_owned()
}

// ── end to end ──────────────────────────────────────────────────────────────────────────

#[test]
fn local_drill_passes_and_its_rto_is_the_journal_timeline() {
    let dir = TempDir::new("drill-local");
    let state = dir.join("state");
    let reports = dir.join("reports");
    let file = local_drill(&dir, "local.yaml", 0, "objectives: {rto: 1m, rpo: 5m}");
    let out = cli(
        &state,
        &[
            "drill",
            "run",
            file.to_str().expect("utf-8"),
            "--report-dir",
            reports.to_str().expect("utf-8"),
        ],
    );
    out.assert_code(0);
    assert!(
        out.stdout.contains("scenario service-restore  ✅ passed"),
        "{}",
        out.dump()
    );
    let run_id = run_id_of(&out);

    // RTO from the journal: detect gate passed → last acceptance check passed.
    let ev = events(&state, &run_id);
    let detected = last_pass(&ev, "detect");
    let recovered = last_pass(&ev, "accept");
    let rows = history(&state);
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(r["run_id"], run_id.as_str());
    assert_eq!(r["verdict"], "passed");
    assert_eq!(r["clock"], "detected");
    assert_eq!(r["clock_started_at_ms"], detected);
    assert_eq!(r["recovered_at_ms"], recovered);
    assert_eq!(r["rto"]["actual_ms"], recovered - detected);
    assert_eq!(r["rto"]["target_ms"], 60_000);
    assert_eq!(r["rto"]["met"], true);
    // The recovery ran in between, as a sub-DAG of the same run.
    let restored = succeeded_at(&ev, "recover/start-service");
    assert!(detected < restored && restored <= recovered);

    // RPO: the fault (the last inject step done) minus the backup's time, as the backup-time
    // step read it from the restored data.
    let fault = [
        "start-service",
        "backup",
        "write-after-backup",
        "break-service",
    ]
    .iter()
    .map(|s| succeeded_at(&ev, s))
    .max()
    .expect("inject steps");
    let taken = ev
        .iter()
        .find(|e| e.kind == "step_succeeded" && e.step.as_deref() == Some("backup-time"))
        .and_then(|e| e.data["outputs"]["taken_at"].as_f64())
        .expect("backup-time output");
    #[expect(clippy::cast_possible_truncation, reason = "a timestamp in ms")]
    let expected_rpo = fault - (taken * 1000.0).round() as i64;
    assert_eq!(r["rpo"]["actual_ms"], expected_rpo);
    assert!(expected_rpo > 0, "the backup predates the fault");
    assert_eq!(r["rpo"]["met"], true);

    // Approvals answered by the drill file, recorded as such in the journal.
    let approval = ev
        .iter()
        .find(|e| e.kind == "approval")
        .expect("an approval event");
    assert_eq!(
        approval.data["approver"], "drill file drills/local.yaml",
        "{approval:?}"
    );
    assert_eq!(approval.data["via"], "drill", "{approval:?}");
    // The audit log has the result.
    let audit = cli(&state, &["audit", "export", "--run", &run_id]);
    audit.assert_code(0);
    assert!(
        audit.stdout.contains("\"drill.result\""),
        "{}",
        audit.stdout
    );

    // Reports in every format.
    for ext in ["md", "html", "json"] {
        let text = std::fs::read_to_string(reports.join(format!("local.{ext}")))
            .unwrap_or_else(|e| panic!("report local.{ext}: {e}"));
        assert!(text.contains(&run_id), "local.{ext} does not name the run");
    }
    let junit = std::fs::read_to_string(reports.join("local.xml")).expect("junit report");
    assert!(junit.contains("service-restore"), "{junit}");
    // Cleanup stopped the service and removed its directory.
    assert!(!dir.join("svc-local.yaml").exists());
}

#[test]
fn an_objective_set_too_tight_fails_the_drill_with_a_cross() {
    let dir = TempDir::new("drill-tight");
    let state = dir.join("state");
    let reports = dir.join("reports");
    let file = local_drill(&dir, "tight.yaml", 0, "objectives: {rto: 1ms, rpo: 5m}");
    let out = cli(
        &state,
        &[
            "drill",
            "run",
            file.to_str().expect("utf-8"),
            "--report-dir",
            reports.to_str().expect("utf-8"),
            "--approver",
            "alice",
        ],
    );
    out.assert_code(1);
    assert!(out.stdout.contains("❌ failed"), "{}", out.dump());
    assert!(out.stdout.contains("RTO  target 1ms"), "{}", out.dump());
    assert!(
        out.stdout.contains("exceeds the objective 1ms"),
        "{}",
        out.dump()
    );
    let md = std::fs::read_to_string(reports.join("local.md")).expect("markdown report");
    assert!(md.contains("❌"), "{md}");
    let rows = history(&state);
    assert_eq!(rows[0]["verdict"], "failed");
    assert_eq!(rows[0]["rto"]["met"], false);
    // A named participant answered the approval.
    assert_eq!(rows[0]["approvals_by"], "alice");
    let ev = events(&state, rows[0]["run_id"].as_str().expect("run id"));
    let approval = ev.iter().find(|e| e.kind == "approval").expect("approval");
    assert_eq!(approval.data["approver"], "alice");
    assert_eq!(approval.data["via"], "drill");
}

#[test]
fn a_fault_never_detected_is_invalid_and_cleanup_still_runs() {
    let dir = TempDir::new("drill-invalid");
    let state = dir.join("state");
    let d = dir.str();
    let file = dir.write(
        "invalid.yaml",
        &format!(
            "drill: invalid
scenarios:
  - name: nothing-broke
    runbook: {runbook}
    params: {{dir: {d}}}
    inject:
      - id: no-op
        name: an inject that breaks nothing
        run: \"true\"
    detect:
      name: the fault is visible
      run: test -f {d}/broken
      within: 1s
      interval: 200ms
    accept:
      - run: test -f {d}/recovered
    cleanup:
      - id: tidy
        run: touch {d}/cleaned
",
            runbook = root("tests/drills/recover.yaml").display()
        ),
    );
    let out = cli(&state, &["drill", "run", file.to_str().expect("utf-8")]);
    out.assert_code(8);
    assert!(out.stdout.contains("invalid"), "{}", out.dump());
    assert!(
        out.stdout.contains("the injected fault was never detected"),
        "{}",
        out.dump()
    );
    assert!(dir.join("cleaned").exists(), "cleanup did not run");
    assert!(
        !dir.join("recovered").exists(),
        "recovery ran after an undetected fault"
    );
    let rows = history(&state);
    assert_eq!(rows[0]["verdict"], "invalid");
    assert_eq!(rows[0]["rto"]["actual_ms"], Value::Null);
    let ev = events(&state, rows[0]["run_id"].as_str().expect("run id"));
    assert!(
        !ev.iter()
            .any(|e| e.step.as_deref() == Some("recover") && e.kind == "step_started"),
        "recover started"
    );
}

#[test]
fn without_detect_the_clock_starts_when_the_inject_steps_finish() {
    let dir = TempDir::new("drill-injected");
    let state = dir.join("state");
    let d = dir.str();
    let file = dir.write(
        "injected.yaml",
        &format!(
            "drill: injected
scenarios:
  - name: slow-recovery
    runbook: {runbook}
    params: {{dir: {d}, delay: 1}}
    inject:
      - id: first
        run: touch {d}/first
      - id: second
        needs: [first]
        run: touch {d}/second
    accept:
      - name: recovered
        run: test -f {d}/recovered
",
            runbook = root("tests/drills/recover.yaml").display()
        ),
    );
    let out = cli(&state, &["drill", "run", file.to_str().expect("utf-8")]);
    out.assert_code(0);
    let r = &history(&state)[0];
    assert_eq!(r["clock"], "injected");
    let ev = events(&state, r["run_id"].as_str().expect("run id"));
    let injected = succeeded_at(&ev, "second");
    assert_eq!(r["clock_started_at_ms"], injected);
    let rto = last_pass(&ev, "accept") - injected;
    assert_eq!(r["rto"]["actual_ms"], rto);
    // The recovery slept for a second in between; the target is the runbook's (1m).
    assert!(rto >= 1000, "{rto}");
    assert_eq!(r["rto"]["target_ms"], 60_000);
    assert_eq!(r["rpo"]["actual_ms"], Value::Null);
}

// ── PostgreSQL ──────────────────────────────────────────────────────────────────────────

#[test]
fn db_restore_on_a_real_postgres_measures_rpo_from_the_backup_age() {
    const AGE_S: i64 = 120;
    let cluster = PgCluster::shared();
    let role = unique_name("drill_app");
    let password = format!("Drill-{}-pw!", std::process::id());
    let database = unique_name("drill_prod");
    cluster.create_role(&role, &password);
    cluster.create_database(&database, &role);
    let dir = TempDir::new("drill-pg");
    let state = dir.join("state");
    let forensics = dir.join("forensics");
    std::fs::create_dir_all(&forensics).expect("forensics dir");
    let backup = dir.join("last_good.dump");
    let health = HealthServer::start(Some(Duration::ZERO));
    let psql = |sql: &str| {
        cluster
            .try_psql_as(&role, &password, &database, sql)
            .unwrap_or_else(|e| panic!("psql: {e}\n{sql}"))
    };
    psql(
        "CREATE TABLE schema_migrations (version bigint PRIMARY KEY, dirty boolean NOT NULL);
         INSERT INTO schema_migrations VALUES (20250101000000, false);
         CREATE TABLE devices (id serial PRIMARY KEY, name text NOT NULL, serial_no text NOT NULL);
         INSERT INTO devices (name, serial_no)
           SELECT 'edge-' || i, 'SN-' || i FROM generate_series(1, 50) i;",
    );
    let dump = Command::new(cluster.tool("pg_dump"))
        .args(["--no-password", "--format=custom", "--file"])
        .arg(&backup)
        .args(["--host", &cluster.host, "--port", &cluster.port.to_string()])
        .args(["--username", &role, "--dbname", &database])
        .env("PGPASSWORD", &password)
        .output()
        .expect("run pg_dump");
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    // The backup was taken AGE_S seconds ago.
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let taken = i64::try_from(now).expect("secs") - AGE_S;
    let touch = Command::new("touch")
        .arg("-d")
        .arg(format!("@{taken}"))
        .arg(&backup)
        .status()
        .expect("touch");
    assert!(touch.success());

    let marker = |n: &str| format!("touch {}", dir.join(n).display());
    let file = dir.write(
        "db.yaml",
        &format!(
            r#"drill: db
scenarios:
  - name: db-restore
    runbook: {runbook}
    params:
      pg_host: {host}
      pg_port: {port}
      pg_user: {role}
      database: {database}
      backup_file: {backup}
      max_backup_age: 15m
      forensic_dir: {forensics}
      expected_schema_version: "20250101000000"
      min_row_counts: devices=50
      sample_query: SELECT id, name, serial_no FROM devices ORDER BY id LIMIT 1
      restore_jobs: 1
      stop_writers_command: {stop}
      app_rollback_command: {rollback}
      start_writers_command: {start}
      writer_deployment: ""
      health_url: {health}
    secrets:
      pg_dsn: {{env: PG_DSN}}
    objectives: {{rto: 30m, rpo: 15m}}
    inject:
      - id: destructive-migration
        sql:
          dsn: "{{{{ secrets.pg_dsn }}}}"
          query: ALTER TABLE devices DROP COLUMN serial_no
          mutates: true
    detect:
      name: the column is gone
      sql:
        dsn: "{{{{ secrets.pg_dsn }}}}"
        query: SELECT count(*)::int AS n FROM information_schema.columns WHERE table_name = 'devices' AND column_name = 'serial_no'
      assert: result.rows[0].n == 0
    accept:
      - name: the dropped column and its data are back
        sql:
          dsn: "{{{{ secrets.pg_dsn }}}}"
          query: SELECT count(*)::int AS n FROM devices WHERE serial_no IS NOT NULL
        assert: result.rows[0].n == 50
    rpo:
      how: age of the restored backup
      steps:
        - id: backup-time
          run: stat -c %Y {backup}
          mutates: false
      value: steps.backup_time.result.stdout | trim | int
      as: timestamp
"#,
            runbook = root("runbooks/migration-restore.yaml").display(),
            host = cluster.host,
            port = cluster.port,
            backup = backup.display(),
            forensics = forensics.display(),
            stop = marker("writers-stopped"),
            rollback = marker("app-rolled-back"),
            start = marker("writers-started"),
            health = health.url,
        ),
    );
    let dsn = |db: &str| cluster.dsn(&role, &password, db);
    let started = Instant::now();
    let out = Runbook::new(["drill", "run", file.to_str().expect("utf-8")].map(str::to_owned))
        .env("RUNBOOK_STATE_DIR", state.to_str().expect("utf-8"))
        .env("PGPASSWORD", &password)
        .env("PG_MAINTENANCE_DSN", &dsn("postgres"))
        .env("PG_DSN", &dsn(&database))
        .env("NOTIFY_WEBHOOK_URL", &health.url)
        .env("PATH", &cluster.path_env())
        .run();
    let elapsed = started.elapsed();
    out.assert_code(0);
    assert!(out.stdout.contains("✅ passed"), "{}", out.dump());
    assert_eq!(
        psql("SELECT count(*) FROM devices WHERE serial_no IS NOT NULL"),
        "50"
    );
    let rows = history(&state);
    let rpo = rows[0]["rpo"]["actual_ms"]
        .as_i64()
        .expect("an RPO was measured");
    // The fault came after the backup by AGE_S seconds plus the time the drill took to reach
    // it (the backup time has one-second resolution).
    let upper = AGE_S * 1000 + i64::try_from(elapsed.as_millis()).expect("ms") + 1000;
    assert!(
        (AGE_S * 1000 - 1000..=upper).contains(&rpo),
        "RPO {rpo} ms is not the backup's age (~{AGE_S} s)"
    );
    assert_eq!(rows[0]["rpo"]["met"], true);
    assert_eq!(rows[0]["rpo"]["target_ms"], 900_000);
    // The password is in the DSN secrets and PGPASSWORD: never in output, results or audit.
    let audit = cli(&state, &["audit", "export"]);
    for text in [
        &out.stdout,
        &out.stderr,
        &rows[0].to_string(),
        &audit.stdout,
    ] {
        assert!(!text.contains(&password), "the password leaked");
    }
    assert!(out.stdout.contains(":***@"), "the DSN is shown masked");
}

/// The run id printed for `scenario` in a drill summary.
fn run_id_for(out: &RunOutput, scenario: &str) -> String {
    out.stdout
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("scenario {scenario} ")))
        .and_then(|l| l.split("(run ").nth(1))
        .and_then(|s| s.split(',').next())
        .unwrap_or_else(|| panic!("no run of {scenario} in\n{}", out.dump()))
        .to_owned()
}

/// Every file under the per-user directories of generated drill secrets.
fn generated_secret_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.file_name()
            .to_string_lossy()
            .starts_with("runbook-drill-secrets-")
        {
            walk(&e.path(), &mut out);
        }
    }
    out
}

/// The whole `drills/local.yaml` as a new user runs it: both scenarios. `db-restore` restores a
/// throwaway cluster (the server binaries the other `PostgreSQL` tests use; missing fails the
/// test) through `runbooks/migration-restore.yaml`; its RPO is the restored backup's age when
/// the fault hit, and the password the drill generated is nowhere in the output, the
/// reports, the journal or the audit log.
#[test]
fn the_whole_local_drill_restores_a_local_postgres_and_never_shows_its_password() {
    let dir = TempDir::new("drill-localpg");
    let state = dir.join("state");
    let reports = dir.join("reports");
    let spy = dir.join("password-seen-by-the-test");
    let pg_dir = dir.join("pg");
    let (svc_port, pg_port, health_port) = (free_port(), free_port(), free_port());
    let text = std::fs::read_to_string(root("drills/local.yaml")).expect("read drills/local.yaml");
    let replaced = text
        .replace(
            "runbook: ../runbooks/examples/local-service-restore.yaml",
            &format!(
                "runbook: {}",
                root("runbooks/examples/local-service-restore.yaml").display()
            ),
        )
        .replace(
            "runbook: ../runbooks/migration-restore.yaml",
            &format!(
                "runbook: {}",
                root("runbooks/migration-restore.yaml").display()
            ),
        )
        .replace(
            "/tmp/runbook-drill-local",
            &dir.join("svc").display().to_string(),
        )
        .replace("port: 18765", &format!("port: {svc_port}"))
        .replace("/tmp/runbook-drill-pg", &pg_dir.display().to_string())
        .replace("54329", &pg_port.to_string())
        .replace("18766", &health_port.to_string())
        // The test's only way to learn the generated password: the backup step's environment.
        .replace(
            "run: pg_dump --no-password",
            &format!(
                "run: printf %s \"$PGPASSWORD\" > {} && pg_dump --no-password",
                spy.display()
            ),
        );
    assert!(replaced.contains(&format!("127.0.0.1:{pg_port}/shop")));
    assert!(replaced.contains(&spy.display().to_string()));
    let file = dir.write("local.yaml", &replaced);
    let cmd = Runbook::new(
        [
            "drill",
            "run",
            file.to_str().expect("utf-8"),
            "--report-dir",
            reports.to_str().expect("utf-8"),
        ]
        .map(str::to_owned),
    )
    .env("RUNBOOK_STATE_DIR", state.to_str().expect("utf-8"))
    // The server binaries of the version the other PostgreSQL tests use come first.
    .env(
        "PATH",
        &format!(
            "{}:{}",
            support::pg::bin_dir().display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    );
    let started = Instant::now();
    let out = cmd.run();
    let elapsed = started.elapsed();
    eprintln!("the whole local drill took {elapsed:?}");
    out.assert_code(0);
    assert!(
        out.stdout.contains("scenario service-restore  ✅ passed"),
        "{}",
        out.dump()
    );
    assert!(
        out.stdout.contains("scenario db-restore  ✅ passed"),
        "{}",
        out.dump()
    );
    assert!(
        out.stdout.contains("2/2 scenarios passed"),
        "{}",
        out.dump()
    );
    let run_id = run_id_for(&out, "db-restore");
    let ev = events(&state, &run_id);
    let rows = history(&state);
    let r = rows
        .iter()
        .find(|r| r["run_id"] == run_id.as_str())
        .expect("the db-restore result");
    assert_eq!(r["verdict"], "passed");
    assert_eq!(
        r["rto"]["actual_ms"],
        last_pass(&ev, "accept") - last_pass(&ev, "detect")
    );
    // RPO: the fault (the last inject step done) minus the backup's time, read from the
    // restored dump by the rpo step; the backup was taken during the backup step.
    let fault = [
        "start-cluster",
        "create-data",
        "backup",
        "write-after-backup",
        "destructive-migration",
    ]
    .iter()
    .map(|s| succeeded_at(&ev, s))
    .max()
    .expect("inject steps");
    let taken_s = ev
        .iter()
        .find(|e| e.kind == "step_succeeded" && e.step.as_deref() == Some("backup-taken"))
        .and_then(|e| e.data["outputs"]["taken_at"].as_i64())
        .expect("backup-taken output");
    let backup_done = succeeded_at(&ev, "backup");
    assert!(
        taken_s * 1000 <= backup_done && backup_done - taken_s * 1000 < 2000,
        "the restored dump is the drill's backup ({taken_s} s, backup step done at {backup_done} ms)"
    );
    assert_eq!(r["rpo"]["actual_ms"], fault - taken_s * 1000);
    assert_eq!(r["rpo"]["target_ms"], 300_000);
    assert_eq!(r["rpo"]["met"], true);
    // The recovery is the production runbook, restoring the dump, as a sub-DAG of the run.
    let restored = succeeded_at(&ev, "recover/restore-backup");
    assert!(last_pass(&ev, "detect") < restored && restored <= last_pass(&ev, "accept"));
    let accepted: Vec<&Value> = r["accept"].as_array().expect("accept").iter().collect();
    assert_eq!(accepted.len(), 2);
    assert!(accepted.iter().all(|a| a["passed"] == true), "{accepted:?}");

    // The generated password: a fresh random one, shown nowhere.
    let password = std::fs::read_to_string(&spy).expect("the backup step saw the password");
    assert_eq!(password.len(), 36, "{password:?}");
    assert!(password.chars().all(|c| c.is_ascii_hexdigit()));
    let audit = cli(&state, &["audit", "export"]);
    audit.assert_code(0);
    let journal = serde_json::to_string(&ev.iter().map(|e| &e.data).collect::<Vec<_>>())
        .expect("events as JSON");
    let mut texts = vec![
        ("stdout", out.stdout.clone()),
        ("stderr", out.stderr.clone()),
        ("audit", audit.stdout.clone()),
        ("history", serde_json::to_string(&rows).expect("json")),
        ("journal", journal),
    ];
    for ext in ["md", "html", "json", "xml"] {
        let report = std::fs::read_to_string(reports.join(format!("local.{ext}")))
            .unwrap_or_else(|e| panic!("report local.{ext}: {e}"));
        // JUnit names the scenario (its test case), the others the run too.
        let named = if ext == "xml" {
            "db-restore"
        } else {
            run_id.as_str()
        };
        assert!(report.contains(named), "local.{ext} does not name {named}");
        texts.push((ext, report));
    }
    for (what, text) in &texts {
        assert!(!text.contains(&password), "the password leaked into {what}");
    }
    assert!(
        out.stdout.contains(":***@127.0.0.1"),
        "the DSNs are shown masked"
    );
    // Cleanup stopped the cluster and removed its directory; the secret files are gone.
    assert!(!pg_dir.exists(), "cleanup left {}", pg_dir.display());
    for f in generated_secret_files() {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        assert!(
            !text.contains(&password),
            "{} still holds the password",
            f.display()
        );
    }
}

/// tests/drills/requires.yaml with its placeholders filled in, written into `dir`.
fn requires_drill(dir: &TempDir) -> PathBuf {
    let text = std::fs::read_to_string(root("tests/drills/requires.yaml")).expect("fixture");
    dir.write(
        "requires.yaml",
        &text
            .replace("DIR", &dir.path().display().to_string())
            .replace(
                "RECOVER",
                &root("tests/drills/recover.yaml").display().to_string(),
            ),
    )
}

fn run_files(state: &Path) -> Vec<String> {
    store(state)
        .runs(100)
        .expect("runs")
        .into_iter()
        .map(|r| r.file)
        .collect()
}

#[test]
fn a_scenario_whose_requires_fail_is_skipped_and_the_others_run() {
    let dir = TempDir::new("drill-requires");
    let state = dir.join("state");
    let file = requires_drill(&dir);
    let reports = dir.join("reports");
    let out = cli(
        &state,
        &[
            "drill",
            "run",
            file.to_str().expect("utf-8"),
            "--report-dir",
            reports.to_str().expect("utf-8"),
        ],
    );
    out.assert_code(0);
    // The reports say what was not drilled, and why: Markdown, HTML, and a skipped JUnit test.
    let md = std::fs::read_to_string(reports.join("requires.md")).expect("markdown report");
    assert!(
        md.contains("- ➖ `needs-a-missing-tool` — the frobnicator is installed: exit 1"),
        "{md}"
    );
    let html = std::fs::read_to_string(reports.join("requires.html")).expect("html report");
    assert!(
        html.contains("data-skipped=\"needs-a-missing-tool\""),
        "{html}"
    );
    let junit = std::fs::read_to_string(reports.join("requires.xml")).expect("junit report");
    assert!(
        junit.contains("classname=\"requires.needs-a-missing-tool\"")
            && junit.contains("<skipped message=\"the frobnicator is installed: exit 1"),
        "{junit}"
    );
    assert!(
        out.stdout.contains(
            "scenario needs-a-missing-tool  ➖ skipped: the frobnicator is installed: exit 1"
        ),
        "{}",
        out.dump()
    );
    assert!(
        out.stdout.contains("scenario plain  ✅ passed"),
        "{}",
        out.dump()
    );
    assert!(
        out.stdout.contains("1/1 scenarios passed, 1 skipped"),
        "{}",
        out.dump()
    );
    // Nothing of the skipped scenario ran: no inject, no cleanup, no run, no result.
    assert!(!dir.join("injected-by-skipped").exists());
    assert!(!dir.join("cleaned-by-skipped").exists());
    assert!(dir.join("injected-by-plain").exists());
    let files = run_files(&state);
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].ends_with("#scenario=plain"), "{files:?}");
    assert_eq!(history(&state).len(), 1);

    // Asked for by name, it is skipped too; a drill where nothing ran exits 1.
    let only = cli(
        &state,
        &[
            "drill",
            "run",
            file.to_str().expect("utf-8"),
            "--scenario",
            "needs-a-missing-tool",
        ],
    );
    only.assert_code(1);
    assert!(
        only.stdout
            .contains("➖ skipped: the frobnicator is installed: exit 1"),
        "{}",
        only.dump()
    );
    assert!(
        only.stderr
            .contains("error: every scenario of drill requires was skipped"),
        "{}",
        only.dump()
    );
    assert_eq!(run_files(&state).len(), 1, "no run was created");
    assert!(!dir.join("injected-by-skipped").exists());

    // The requirement's own output says what it saw.
    let text = std::fs::read_to_string(&file).expect("read");
    std::fs::write(
        &file,
        text.replace(
            "run: \"false\"",
            "run: echo frobnicator is not on PATH; exit 3",
        ),
    )
    .expect("write");
    let seen = cli(
        &state,
        &[
            "drill",
            "run",
            file.to_str().expect("utf-8"),
            "--scenario",
            "needs-a-missing-tool",
        ],
    );
    seen.assert_code(1);
    assert!(
        seen.stdout.contains(
            "➖ skipped: the frobnicator is installed: exit 3 (frobnicator is not on PATH)"
        ),
        "{}",
        seen.dump()
    );
}

// ── resume ──────────────────────────────────────────────────────────────────────────────

#[test]
fn a_drill_killed_mid_recovery_resumes_and_is_measured() {
    let dir = TempDir::new("drill-resume");
    let state = dir.join("state");
    let file = local_drill(&dir, "resume.yaml", 3, "objectives: {rto: 1m, rpo: 5m}");
    // Kill -9 while the recovery's `wait` step (sleep 3) runs.
    let (mut child, run_id) = start_until_recovering(&state, &file, &dir.join("stdout"));
    child.kill().expect("kill -9");
    let _ = child.wait();
    let before = history(&state);
    assert_eq!(before.len(), 1, "the interrupted run is measured too");
    assert_eq!(before[0]["verdict"], "failed");
    assert!(
        before[0]["reasons"].to_string().contains("did not finish"),
        "{:?}",
        before[0]
    );

    // `recover` (the call of the runbook) was in flight: the recovery runbook continues where it
    // stopped. Its `wait` step, in flight at the kill, either had not started its shell yet
    // (it re-runs) or ran on under its supervisor and finished (its recorded outcome is used);
    // the steps it had finished (the approval, stopping the leftovers) do not run again.
    let out = cli(&state, &["resume", &run_id]);
    out.assert_code(0);
    assert!(out.stdout.contains("✅ passed"), "{}", out.dump());
    assert!(
        out.stdout.contains("recover: continue")
            && (out.stdout.contains("recover/wait: rerun")
                || out.stdout.contains("recover/wait: finished")),
        "{}",
        out.dump()
    );
    for kept in ["recover/approve-restore", "recover/stop-leftovers"] {
        assert!(
            !out.stdout.contains(&format!("{kept}: started")),
            "{kept} ran again\n{}",
            out.dump()
        );
    }
    let rows = history(&state);
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(r["run_id"], run_id.as_str());
    assert_eq!(r["verdict"], "passed");
    let ev = events(&state, &run_id);
    assert!(ev.iter().any(|e| e.kind == "resumed"));
    assert_eq!(
        r["rto"]["actual_ms"],
        last_pass(&ev, "accept") - last_pass(&ev, "detect")
    );
    // Inject steps ran once: the resumed run did not break the service again.
    let inject_runs = ev
        .iter()
        .filter(|e| e.kind == "step_started" && e.step.as_deref() == Some("break-service"))
        .count();
    assert_eq!(inject_runs, 1);
}

/// Start `drill run FILE` in the background (stdout to the file `stdout`) and wait until the
/// recovery's `wait` step runs.
#[expect(
    clippy::zombie_processes,
    reason = "the child is returned to the caller, which waits for it"
)]
fn start_until_recovering(
    state: &Path,
    file: &Path,
    stdout: &Path,
) -> (std::process::Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_runbook"))
        .args(["drill", "run", file.to_str().expect("utf-8")])
        .env("RUNBOOK_STATE_DIR", state)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(stdout).expect("stdout file"))
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn runbook drill run");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the recovery never started");
        }
        std::thread::sleep(Duration::from_millis(50));
        let Ok(s) = SqliteStore::open(state) else {
            continue;
        };
        let Ok(runs) = s.runs(5) else { continue };
        let Some(run) = runs.first() else { continue };
        let ev = s.events(&run.id).unwrap_or_default();
        if ev
            .iter()
            .any(|e| e.kind == "step_started" && e.step.as_deref() == Some("recover/wait"))
        {
            return (child, run.id.clone());
        }
    }
}

#[test]
fn a_cancelled_drill_still_cleans_up_and_exits_5() {
    let dir = TempDir::new("drill-cancel");
    let state = dir.join("state");
    let file = local_drill(&dir, "cancel.yaml", 5, "objectives: {rto: 1m, rpo: 5m}");
    let (mut child, run_id) = start_until_recovering(&state, &file, &dir.join("stdout"));
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(term.success());
    let status = child.wait().expect("wait for the drill");
    let stdout = std::fs::read_to_string(dir.join("stdout")).unwrap_or_default();
    assert_eq!(status.code(), Some(5), "{stdout}");
    assert!(stdout.contains("❌ failed"), "{stdout}");
    // Cleanup (a `finally` step) stopped the service and removed its directory.
    assert!(!dir.join("svc-cancel.yaml").exists(), "cleanup did not run");
    let rows = history(&state);
    assert_eq!(rows[0]["run_id"], run_id.as_str());
    assert_eq!(rows[0]["verdict"], "failed");
    assert!(
        rows[0]["reasons"].to_string().contains("cancelled"),
        "{:?}",
        rows[0]
    );
    let ev = events(&state, &run_id);
    assert!(
        ev.iter()
            .any(|e| e.kind == "step_succeeded" && e.step.as_deref() == Some("stop-service"))
    );
}

// ── history, due ────────────────────────────────────────────────────────────────────────

#[test]
fn history_warns_when_rto_grew_more_than_20_percent_and_due_follows_the_schedule() {
    let dir = TempDir::new("drill-history");
    let state = dir.join("state");
    let mut ids = Vec::new();
    for (i, delay) in [0, 1, 3].into_iter().enumerate() {
        // The same drill file each time, with a slower recovery.
        let file = local_drill(&dir, "weekly.yaml", delay, "objectives: {rto: 1m, rpo: 5m}");
        let out = cli(&state, &["drill", "run", file.to_str().expect("utf-8")]);
        out.assert_code(0);
        ids.push(run_id_of(&out));
        assert_eq!(history(&state).len(), i + 1);
    }
    let rows = history(&state);
    let rto: Vec<i64> = rows
        .iter()
        .map(|r| r["rto"]["actual_ms"].as_i64().expect("rto"))
        .collect();
    assert!(rto[0] < rto[1] && rto[1] < rto[2], "{rto:?}");
    assert_eq!(rows[0]["rto_change_pct"], Value::Null);
    assert_eq!(rows[1]["rto_regression"], true);
    assert_eq!(rows[2]["rto_regression"], true);
    for (row, id) in rows.iter().zip(&ids) {
        assert_eq!(row["run_id"], id.as_str());
    }
    let text = cli(&state, &["drill", "history", "service-restore"]);
    text.assert_code(0);
    let warnings: Vec<&str> = text
        .stdout
        .lines()
        .filter(|l| l.starts_with("warning: scenario service-restore of drill local: RTO grew"))
        .collect();
    assert_eq!(warnings.len(), 2, "{}", text.dump());
    assert!(warnings[1].contains(&ids[2]));
    assert_eq!(
        cli(&state, &["drill", "history", "other"])
            .stdout
            .lines()
            .count(),
        1
    );

    // `drill due`: the schedule is Mondays 09:00 UTC. Just after the last run: not due; a week
    // later: due; in an empty state directory: never run, due.
    let file = dir.join("weekly.yaml");
    let last_started = rows[2]["started_at_ms"].as_i64().expect("started");
    let at = |ms: i64| runbook::clock::rfc3339(ms);
    let due = |state: &Path, ms: i64| -> Value {
        let out = cli(
            state,
            &[
                "drill",
                "due",
                file.to_str().expect("utf-8"),
                "--at",
                &at(ms),
                "--json",
            ],
        );
        out.assert_code(0);
        let v: Value = serde_json::from_str(&out.stdout).expect("due JSON");
        v[0].clone()
    };
    let soon = due(&state, last_started + 1000);
    assert_eq!(soon["due"], false, "{soon}");
    assert_eq!(soon["last_run"], ids[2].as_str());
    let week = due(&state, last_started + 8 * 86_400_000);
    assert_eq!(week["due"], true, "{week}");
    // It became due at the first Monday 09:00 after the last run.
    let scheduled = week["scheduled_at"].as_str().expect("scheduled_at");
    assert!(scheduled.ends_with("T09:00:00.000Z"), "{scheduled}");
    assert_eq!(soon["scheduled_at"], scheduled);
    let empty = dir.join("empty-state");
    let never = due(&empty, last_started);
    assert_eq!(never["due"], true);
    assert_eq!(never["reason"], "never run");
}

// ── validation ──────────────────────────────────────────────────────────────────────────

#[test]
fn broken_drills_have_positioned_diagnostics() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root("tests/drills/broken"))
        .expect("read tests/drills/broken")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 7);
    for f in files {
        let rel = f
            .strip_prefix(ROOT)
            .expect("in the crate")
            .display()
            .to_string();
        let out = Runbook::new(
            ["--message-format", "short", "drill", "validate", &rel].map(str::to_owned),
        )
        .cwd(Path::new(ROOT))
        .run();
        out.assert_code(2);
        let name = f.file_stem().expect("stem").to_string_lossy().into_owned();
        insta::assert_snapshot!(format!("broken_{name}"), out.stderr);
    }
}

#[test]
fn the_shipped_drills_validate() {
    let out = Runbook::new(
        [
            "drill",
            "validate",
            "drills/quarterly.yaml",
            "drills/local.yaml",
        ]
        .map(str::to_owned),
    )
    .cwd(Path::new(ROOT))
    .run();
    out.assert_code(0);
    assert!(
        out.stdout
            .contains("drills/quarterly.yaml: ok (3 scenarios)"),
        "{}",
        out.dump()
    );
    assert!(out.stdout.contains("drills/local.yaml: ok (2 scenarios)"));
}

#[test]
fn unknown_scenario_is_refused_with_a_suggestion() {
    let dir = TempDir::new("drill-unknown");
    let out = cli(
        &dir.join("state"),
        &[
            "drill",
            "run",
            &root("drills/local.yaml").display().to_string(),
            "--scenario",
            "service-restor",
        ],
    );
    out.assert_code(2);
    assert!(
        out.stderr.contains("did you mean `service-restore`?"),
        "{}",
        out.dump()
    );
}

// ── cronjob ─────────────────────────────────────────────────────────────────────────────

/// The real kubectl (Debian's `kubernetes-client`); missing fails the test.
fn kubectl() -> PathBuf {
    support::tool("kubectl", &["/usr/bin/kubectl"], "kubernetes-client")
}

/// Every key of `want` is in `got` with the same value (kubectl drops fields it does not know).
fn assert_subset(want: &Value, got: &Value, path: &str) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, v) in w {
                let gv = g
                    .get(k)
                    .unwrap_or_else(|| panic!("kubectl dropped {path}.{k}"));
                assert_subset(v, gv, &format!("{path}.{k}"));
            }
        }
        (Value::Array(w), Value::Array(g)) => {
            assert_eq!(w.len(), g.len(), "{path}");
            for (i, (a, b)) in w.iter().zip(g).enumerate() {
                assert_subset(a, b, &format!("{path}[{i}]"));
            }
        }
        _ => assert_eq!(want, got, "{path}"),
    }
}

#[test]
fn cronjob_manifest_is_a_valid_batch_v1_cronjob_for_kubectl() {
    let kubectl = kubectl();
    let out = Runbook::new(
        [
            "drill",
            "cronjob",
            "drills/quarterly.yaml",
            "--image",
            "ghcr.io/example/runbook:1.0",
            "--namespace",
            "drills",
        ]
        .map(str::to_owned),
    )
    .cwd(Path::new(ROOT))
    .run();
    out.assert_code(0);
    let docs: Vec<&str> = out.stdout.split("\n---\n").collect();
    // A ConfigMap, then one CronJob per scenario (each has its own month of the quarter).
    assert_eq!(docs.len(), 4, "{}", out.stdout);
    let parse = |y: &str| -> Value { serde_saphyr::from_str(y).expect("manifest is YAML") };
    // kubectl decodes each object into its typed Go struct offline (`--local`): a wrong type
    // fails, an unknown field is dropped — so the output must still hold every field we wrote.
    let typed = |doc: &str, args: &[&str]| -> Value {
        let mut child = Command::new(&kubectl)
            .args(args)
            .args(["--local", "-f", "-", "-o", "json"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kubectl");
        {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(doc.as_bytes())
                .expect("write manifest");
        }
        let o = child.wait_with_output().expect("kubectl");
        assert!(
            o.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout).expect("kubectl JSON")
    };
    let mut pods = Vec::new();
    for (doc, (scenario, schedule)) in docs[1..].iter().zip([
        ("app-rollback", "0 10 25 1,4,7,10 *"),
        ("db-restore", "0 10 15 2,5,8,11 *"),
        ("dr-switch", "0 10 20 3,6,9,12 *"),
    ]) {
        let cron = parse(doc);
        let checked = typed(doc, &["set", "resources", "-c", "drill", "--limits=cpu=1"]);
        assert_subset(&cron, &checked, "CronJob");
        assert_eq!(checked["apiVersion"], "batch/v1");
        assert_eq!(checked["kind"], "CronJob");
        assert_eq!(
            checked["metadata"]["name"],
            format!("runbook-drill-quarterly-{scenario}")
        );
        assert_eq!(checked["metadata"]["namespace"], "drills");
        assert_eq!(checked["spec"]["schedule"], schedule);
        assert_eq!(checked["spec"]["concurrencyPolicy"], "Forbid");
        let pod = checked["spec"]["jobTemplate"]["spec"]["template"]["spec"].clone();
        let c = &pod["containers"][0];
        assert_eq!(c["image"], "ghcr.io/example/runbook:1.0");
        let args: Vec<&str> = c["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            &args[..5],
            [
                "drill",
                "run",
                "drills/quarterly.yaml",
                "--scenario",
                scenario
            ]
        );
        assert!(args.contains(&"--state-dir"));
        pods.push(pod);
    }
    let pod = &pods[0];

    let cm = parse(docs[0]);
    let cm_checked = typed(docs[0], &["label", "checked=yes"]);
    assert_subset(&cm, &cm_checked, "ConfigMap");
    // The ConfigMap holds the drill and every runbook it uses, mounted at their paths.
    let items = pod["volumes"][0]["configMap"]["items"]
        .as_array()
        .expect("items");
    let paths: Vec<&str> = items.iter().filter_map(|i| i["path"].as_str()).collect();
    for p in [
        "drills/quarterly.yaml",
        "runbooks/app-rollback.yaml",
        "runbooks/migration-restore.yaml",
        "runbooks/dr-failover.yaml",
    ] {
        assert!(paths.contains(&p), "{p} missing from {paths:?}");
        let key = items
            .iter()
            .find(|i| i["path"] == p)
            .and_then(|i| i["key"].as_str())
            .expect("key");
        assert_eq!(
            cm_checked["data"][key].as_str(),
            Some(std::fs::read_to_string(root(p)).expect("read").as_str()),
            "{p}"
        );
    }
}

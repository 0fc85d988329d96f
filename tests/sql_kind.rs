//! The `sql` kind against a real, throwaway `PostgreSQL` (tests/support/pg.rs): result shapes,
//! bind parameters, transactions, error reports (masked DSN, SQLSTATE), timeouts and
//! cancellation. Each test runs small runbooks through the binary, in its own database of one
//! cluster shared by the whole file.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::pg::{PgCluster, unique_name};
use support::{RunOutput, Runbook, TempDir};

/// A database of its own, owned by a role of its own, on the shared cluster.
struct Db {
    cluster: &'static PgCluster,
    role: String,
    password: String,
    name: String,
    dir: TempDir,
}

impl Db {
    fn new(tag: &str) -> Self {
        let cluster = PgCluster::shared();
        let role = unique_name(&format!("{tag}_role"));
        let password = format!("Pw-{}-{}", std::process::id(), role.len() * 7919);
        let name = unique_name(tag);
        cluster.create_role(&role, &password);
        cluster.create_database(&name, &role);
        Self {
            cluster,
            role,
            password,
            name,
            dir: TempDir::new(tag),
        }
    }

    fn dsn(&self) -> String {
        self.cluster.dsn(&self.role, &self.password, &self.name)
    }

    /// The DSN as every report must show it.
    fn masked_dsn(&self) -> String {
        self.dsn().replace(&format!(":{}@", self.password), ":***@")
    }

    #[track_caller]
    fn psql(&self, sql: &str) -> String {
        self.cluster
            .try_psql_as(&self.role, &self.password, &self.name, sql)
            .unwrap_or_else(|e| panic!("psql failed: {e}\n{sql}"))
    }

    /// Run a runbook made of `steps` (YAML, indented by two spaces) with the DSN as the secret
    /// `dsn` (`TEST_PG_DSN`).
    fn run(&self, steps: &str) -> RunOutput {
        self.run_with_dsn(steps, &self.dsn())
    }

    fn run_with_dsn(&self, steps: &str, dsn: &str) -> RunOutput {
        let file = self.write_runbook(steps);
        Runbook::exec(&file)
            .json()
            .env("TEST_PG_DSN", dsn)
            .env(
                "RUNBOOK_STATE_DIR",
                &self.dir.join("state").display().to_string(),
            )
            .run()
    }

    fn write_runbook(&self, steps: &str) -> std::path::PathBuf {
        let yaml =
            format!("runbook: sql-kind\nsecrets:\n  dsn: {{env: TEST_PG_DSN}}\nsteps:\n{steps}");
        self.dir.write("runbook.yaml", &yaml)
    }
}

fn succeeded<'a>(out: &'a RunOutput, step: &str) -> &'a Value {
    let e = out
        .of_step("step_succeeded", step)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("step {step} did not succeed\n{}", out.dump()));
    &e["result"]
}

fn failure(out: &RunOutput, step: &str) -> String {
    out.of_step("step_failed", step)
        .into_iter()
        .next()
        .and_then(|e| e["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("step {step} did not fail\n{}", out.dump()))
}

#[test]
fn results_have_rows_row_count_and_affected() {
    let db = Db::new("shapes");
    db.psql(
        "CREATE TYPE mood AS ENUM ('calm', 'tense');
         CREATE TABLE devices (id int PRIMARY KEY, name text NOT NULL, weight float8,
           active bool NOT NULL, price numeric(10,2), seen timestamptz, born date, meta jsonb,
           tags text[], mood mood, doc tsvector)",
    );
    let out = db.run(
        r#"
  - id: insert
    sql:
      dsn: "{{ secrets.dsn }}"
      # Every value goes in as text; the server reads it as the column's type.
      query: >-
        INSERT INTO devices (id, name, weight, active, price, seen, born, meta, tags, mood, doc)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, to_tsvector('simple', $2)),
               ($1 + 1, 'b', NULL, false, NULL, NULL, NULL, NULL, '{}', NULL, NULL),
               ($1 + 2, 'c', 2, true, 0.5, 'infinity', NULL, '[1]', NULL, NULL, NULL)
      params: ["1", "it's a", "1.5", "true", "12345678.90", "2025-11-08 12:04:05.25+01", "2025-01-31", '{"k": [1, null]}', "{x,y}", "tense"]
  - id: update
    needs: [insert]
    sql:
      dsn: "{{ secrets.dsn }}"
      query: UPDATE devices SET weight = coalesce(weight, 0) + 1 WHERE id >= $1
      params: ["2"]
  - id: select
    needs: [update]
    sql:
      dsn: "{{ secrets.dsn }}"
      query: SELECT id, name, weight, active, price, seen, born, meta, tags, mood FROM devices WHERE id = $1 OR id > 2 ORDER BY id
      params: ["1"]
  - id: none
    needs: [update]
    sql:
      dsn: "{{ secrets.dsn }}"
      query: SELECT id FROM devices WHERE name = $1
      params: ["nobody"]
  # A column type without a binary reader (tsvector), no params: read as text, cast-free.
  - id: text-fallback
    needs: [update]
    sql:
      dsn: "{{ secrets.dsn }}"
      query: SELECT id, doc, active FROM devices WHERE id = 1
  # Several statements (no params): the simple protocol, values as text.
  - id: batch
    needs: [update]
    sql:
      dsn: "{{ secrets.dsn }}"
      query: CREATE TEMP TABLE x (a int); INSERT INTO x VALUES (1), (2); SELECT a FROM x ORDER BY a
  - id: check
    needs: [select]
    verify:
      - sql:
          dsn: "{{ secrets.dsn }}"
          query: SELECT count(*) AS n, sum(weight) AS total FROM devices
        assert: result.row_count == 1 and result.rows[0].n == 3 and result.rows[0].total == 5.5
"#,
    );
    out.assert_code(0);

    let insert = succeeded(&out, "insert");
    assert_eq!(insert["affected"], 3, "{insert}");
    assert_eq!(insert["row_count"], 0);
    assert_eq!(insert["rows"], json!([]));
    assert_eq!(succeeded(&out, "update")["affected"], 2);

    let select = succeeded(&out, "select");
    assert_eq!(select["row_count"], 2, "{select}");
    assert_eq!(select["affected"], 2);
    assert_eq!(
        select["columns"],
        json!([
            "id", "name", "weight", "active", "price", "seen", "born", "meta", "tags", "mood"
        ])
    );
    assert_eq!(
        select["rows"][0],
        json!({
            "id": 1, "name": "it's a", "weight": 1.5, "active": true, "price": "12345678.90",
            "seen": "2025-11-08T11:04:05.25Z", "born": "2025-01-31", "meta": {"k": [1, null]},
            "tags": ["x", "y"], "mood": "tense"
        })
    );
    assert_eq!(
        select["rows"][1],
        json!({
            "id": 3, "name": "c", "weight": 3.0, "active": true, "price": "0.50",
            "seen": "infinity", "born": null, "meta": [1], "tags": null, "mood": null
        })
    );

    let none = succeeded(&out, "none");
    assert_eq!(
        (none["row_count"].clone(), none["rows"].clone()),
        (json!(0), json!([]))
    );

    let text = succeeded(&out, "text-fallback");
    assert_eq!(
        text["rows"],
        json!([{"id": 1, "doc": "'a':3 'it':1 's':2", "active": true}]),
        "{text}"
    );

    let batch = succeeded(&out, "batch");
    assert_eq!(batch["rows"], json!([{"a": "1"}, {"a": "2"}]), "{batch}");
    assert_eq!(batch["row_count"], 2);
    // 2 inserted + 2 selected, as the server's command tags count them.
    assert_eq!(batch["affected"], 4);

    assert!(
        out.of_step("step_succeeded", "check").len() == 1,
        "{}",
        out.dump()
    );
}

#[test]
fn unreadable_column_type_with_params_names_the_type() {
    let db = Db::new("unreadable");
    let out = db.run(
        r#"
  - id: q
    sql:
      dsn: "{{ secrets.dsn }}"
      query: SELECT point($1::float8, 2) AS p
      params: ["1"]
"#,
    );
    out.assert_code(1);
    let error = failure(&out, "q");
    assert!(
        error.contains("column `p` has type `point`") && error.contains("p::text"),
        "{error}"
    );
}

#[test]
fn a_failing_statement_in_a_transaction_leaves_nothing_applied() {
    let db = Db::new("tx");
    db.psql(
        "CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL CHECK (balance >= 0));
         INSERT INTO accounts VALUES (1, 100), (2, 0)",
    );
    let out = db.run(
        r#"
  - id: transfer
    sql:
      dsn: "{{ secrets.dsn }}"
      # The second statement violates the CHECK constraint: the first must not stay applied.
      query: >-
        UPDATE accounts SET balance = balance + 500 WHERE id = 2;
        UPDATE accounts SET balance = balance - 500 WHERE id = 1;
        INSERT INTO accounts VALUES (3, 1)
      transaction: true
"#,
    );
    out.assert_code(1);
    let error = failure(&out, "transfer");
    assert!(error.contains("SQLSTATE 23514"), "{error}");
    assert!(error.contains("nothing was applied"), "{error}");
    assert_eq!(
        db.psql("SELECT string_agg(id || '=' || balance, ',' ORDER BY id) FROM accounts"),
        "1=100,2=0"
    );

    // The same with bind parameters (one statement per step, one transaction): a unique
    // violation after a successful statement in the same transaction.
    db.psql("CREATE TABLE audit (id int PRIMARY KEY)");
    let out = db.run(
        r#"
  - id: with-params
    sql:
      dsn: "{{ secrets.dsn }}"
      query: WITH moved AS (UPDATE accounts SET balance = 0 WHERE id = $1 RETURNING id) INSERT INTO audit SELECT 7 FROM moved UNION ALL SELECT 7
      params: ["1"]
      transaction: true
"#,
    );
    out.assert_code(1);
    let error = failure(&out, "with-params");
    assert!(error.contains("SQLSTATE 23505"), "{error}");
    assert_eq!(db.psql("SELECT balance FROM accounts WHERE id = 1"), "100");
    assert_eq!(db.psql("SELECT count(*) FROM audit"), "0");

    // And the transaction commits when every statement succeeds.
    let out = db.run(
        r#"
  - id: ok
    sql:
      dsn: "{{ secrets.dsn }}"
      query: UPDATE accounts SET balance = balance - 40 WHERE id = 1; UPDATE accounts SET balance = balance + 40 WHERE id = 2
      transaction: true
"#,
    );
    out.assert_code(0);
    assert_eq!(succeeded(&out, "ok")["affected"], 2);
    assert_eq!(
        db.psql("SELECT string_agg(id || '=' || balance, ',' ORDER BY id) FROM accounts"),
        "1=60,2=40"
    );
}

#[test]
fn a_bad_password_is_reported_with_the_masked_dsn_and_never_the_password() {
    let db = Db::new("auth");
    let wrong = "Wr0ng-Passw0rd-xyz";
    let bad = db.cluster.dsn(&db.role, wrong, &db.name);
    let shown = db.cluster.dsn(&db.role, "***", &db.name);
    let steps = r#"
  - id: q
    sql:
      dsn: "{{ secrets.dsn }}"
      query: SELECT 1
"#;
    // The DSN as a secret…
    let out = db.run_with_dsn(steps, &bad);
    out.assert_code(1);
    let error = failure(&out, "q");
    assert!(
        error.contains(&format!("failed to connect to {shown}")),
        "{error}"
    );
    assert!(error.contains("SQLSTATE 28P01"), "{error}");
    assert!(error.contains("password authentication failed"), "{error}");
    assert!(
        !out.stdout.contains(wrong) && !out.stderr.contains(wrong),
        "{}",
        out.dump()
    );

    // …and written in the runbook itself (not a secret: masking the DSN is what hides it), in
    // both DSN forms.
    let kv = format!(
        "host={} port={} user={} password={wrong} dbname={}",
        db.cluster.host, db.cluster.port, db.role, db.name
    );
    for (dsn, shown) in [
        (bad.clone(), shown.clone()),
        (
            kv.clone(),
            kv.replace(&format!("password={wrong}"), "password=***"),
        ),
    ] {
        let steps = format!("  - id: q\n    sql:\n      dsn: \"{dsn}\"\n      query: SELECT 1\n");
        let out = db.run(&steps);
        out.assert_code(1);
        let error = failure(&out, "q");
        assert!(
            error.contains(&format!("failed to connect to {shown}")),
            "{error}"
        );
        let commands: Vec<&Value> = out.of("command");
        assert!(commands.is_empty() || !commands.iter().any(|c| c.to_string().contains(wrong)));
        // The plan and the audit log show the file's DSN as written by its author; the run's
        // events (progress, errors) never carry the password.
        let events: String = out
            .events
            .iter()
            .filter(|e| e["event"] != "run_started")
            .map(Value::to_string)
            .collect();
        assert!(!events.contains(wrong), "{events}");
        assert!(!out.stderr.contains(wrong), "{}", out.dump());
    }
}

#[test]
fn connection_refused_is_reported_with_the_masked_dsn() {
    let db = Db::new("refused");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let dsn = format!(
        "postgres://{}:{}@127.0.0.1:{port}/{}",
        db.role, db.password, db.name
    );
    let out = db.run_with_dsn(
        "  - id: q\n    sql:\n      dsn: \"{{ secrets.dsn }}\"\n      query: SELECT 1\n",
        &dsn,
    );
    out.assert_code(1);
    let error = failure(&out, "q");
    assert!(
        error.contains(&format!(
            "failed to connect to postgres://{}:***@127.0.0.1:{port}/{}",
            db.role, db.name
        )) && error.contains("Connection refused"),
        "{error}"
    );
    assert!(!error.contains(&db.password), "{error}");
}

#[test]
fn tls_is_refused_rather_than_silently_dropped() {
    let db = Db::new("tls");
    for mode in ["require", "verify-full"] {
        let dsn = db
            .dsn()
            .replace("sslmode=disable", &format!("sslmode={mode}"));
        let out = db.run_with_dsn(
            "  - id: q\n    sql:\n      dsn: \"{{ secrets.dsn }}\"\n      query: SELECT 1\n",
            &dsn,
        );
        out.assert_code(1);
        let error = failure(&out, "q");
        assert!(
            error.contains(&format!("sslmode={mode} asks for TLS"))
                && error.contains("does not support")
                && error.contains(
                    &db.masked_dsn()
                        .replace("sslmode=disable", &format!("sslmode={mode}"))
                ),
            "{error}"
        );
    }
}

#[test]
fn sql_errors_show_sqlstate_and_the_server_message() {
    let db = Db::new("sqlerr");
    let out = db.run(
        r#"
  - id: missing
    continue_on_failure: true
    sql:
      dsn: "{{ secrets.dsn }}"
      query: SELECT * FROM no_such_table
  - id: division
    continue_on_failure: true
    sql:
      dsn: "{{ secrets.dsn }}"
      query: SELECT 1 / $1::int
      params: ["0"]
  - id: arity
    continue_on_failure: true
    sql:
      dsn: "{{ secrets.dsn }}"
      query: SELECT $1::int + $2::int
      params: ["1"]
"#,
    );
    let missing = failure(&out, "missing");
    assert!(
        missing.starts_with(&format!("query failed on {}: ERROR:", db.masked_dsn()))
            && missing.contains("relation \"no_such_table\" does not exist")
            && missing.contains("SQLSTATE 42P01"),
        "{missing}"
    );
    let division = failure(&out, "division");
    assert!(
        division.contains("division by zero") && division.contains("SQLSTATE 22012"),
        "{division}"
    );
    let arity = failure(&out, "arity");
    assert!(
        arity.contains("2 bind parameters") && arity.contains("gives 1"),
        "{arity}"
    );
    // The rendered query is in the log (and the audit log), its DSN masked.
    let commands: Vec<String> = out
        .of("command")
        .iter()
        .map(|c| c["command"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        commands.contains(&format!("{}: SELECT 1 / $1::int [$1='0']", db.masked_dsn())),
        "{commands:?}"
    );
}

/// Sessions of the role still running `pg_sleep` (other than the one asking).
fn sleepers(db: &Db) -> String {
    db.cluster.psql(
        "postgres",
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = '{}' \
             AND query LIKE 'SELECT pg_sleep%' AND pid <> pg_backend_pid()",
            db.role
        ),
    )
}

fn wait_no_sleepers(db: &Db) -> bool {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        if sleepers(db) == "0" {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn a_timeout_cancels_the_statement_on_the_server() {
    let db = Db::new("timeout");
    db.psql("CREATE TABLE t (a int)");
    let started = Instant::now();
    let out = db.run(
        r#"
  - id: slow
    sql:
      dsn: "{{ secrets.dsn }}"
      query: INSERT INTO t VALUES (1); SELECT pg_sleep(30)
      timeout: 1s
      transaction: true
"#,
    );
    let elapsed = started.elapsed();
    out.assert_code(1);
    assert_eq!(failure(&out, "slow"), "timed out after 1s");
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    assert!(
        out.stdout.contains("cancelled on the server"),
        "{}",
        out.dump()
    );
    assert!(wait_no_sleepers(&db), "pg_sleep still runs on the server");
    assert_eq!(db.psql("SELECT count(*) FROM t"), "0");
}

#[test]
fn cancelling_the_run_cancels_the_statement() {
    let db = Db::new("cancel");
    let file = db.write_runbook(
        r#"
  - id: slow
    sql:
      dsn: "{{ secrets.dsn }}"
      query: SELECT pg_sleep(30)
"#,
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_runbook"))
        .args(["exec", file.to_str().expect("utf-8"), "--output", "json"])
        .env("TEST_PG_DSN", db.dsn())
        .env("RUNBOOK_STATE_DIR", db.dir.join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn runbook");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    // Wait until the statement runs on the server, then SIGTERM the engine.
    let started = Instant::now();
    for line in lines.by_ref() {
        let line = line.expect("read stdout");
        if line.contains("\"event\":\"command\"") || line.contains("\"event\": \"command\"") {
            break;
        }
    }
    while sleepers(&db) == "0" {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "pg_sleep never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let code = child.wait().expect("wait").code();
    assert_eq!(code, Some(5), "{rest:?}");
    assert!(rest.iter().any(|l| l.contains("cancelled")), "{rest:?}");
    assert!(wait_no_sleepers(&db), "pg_sleep still runs on the server");
}

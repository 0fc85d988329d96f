//! `runbook serve` end to end: the real binary serving on 127.0.0.1, fed by a real Alertmanager
//! that a real Prometheus sends alerts to (tests/support/alertmanager.rs), scraping a test app
//! (tests/support/app.rs) whose 5xx share and latency the test breaks; plus authentication,
//! bad payloads, triggers-file diagnostics, approvals over HTTP, graceful shutdown and resume,
//! and a bounded load of webhook posts.
//!
//! The `for:` semantics of `prometheus` checks (a gate fails when one sample of the window
//! breaks the assert) are proven by tests/prometheus.rs
//! (`sustained_check_fails_when_one_sample_breaks_the_threshold`); not repeated here.

mod support;

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use support::TempDir;

const TOKEN: &str = "tok-3f9a1c77e2";

/// Alice's own token (the triggers file keeps its SHA-256): she lists runs and approves.
const ALICE: &str = "alice-7c2d90e1";

/// Lowercase hex SHA-256.
fn sha256_hex(s: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .fold(String::new(), |mut h, b| {
            let _ = write!(h, "{b:02x}");
            h
        })
}

fn alice() -> String {
    format!("Bearer {ALICE}")
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0))
}

/// One HTTP/1.1 request with `Connection: close`: status and body.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(40)))
        .expect("timeout");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        let _ = write!(req, "{k}: {v}\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).expect("write request");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read answer");
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

/// An Alertmanager version-4 payload with one alert per `(alertname, fingerprint, status)`,
/// each also labelled with `extra`.
fn payload(alerts: &[(&str, &str, &str)], extra: &Value, annotations: &Value) -> String {
    let list: Vec<Value> = alerts
        .iter()
        .map(|(name, fp, status)| {
            let mut labels = json!({ "alertname": name });
            if let (Some(l), Some(e)) = (labels.as_object_mut(), extra.as_object()) {
                for (k, v) in e {
                    l.insert(k.clone(), v.clone());
                }
            }
            json!({
                "status": status, "labels": labels, "annotations": annotations,
                "startsAt": "2026-11-25T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus/graph", "fingerprint": fp,
            })
        })
        .collect();
    json!({
        "version": "4", "groupKey": "{}:{alertname=\"x\"}", "status": "firing", "receiver": "runbook",
        "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://am",
        "alerts": list,
    })
    .to_string()
}

/// A `runbook serve` process: its JSON run events (stdout) and log (stderr) are collected.
struct Serve {
    child: Child,
    addr: String,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Serve {
    fn start(triggers: &Path, state: &Path, listen: &str, server_id: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_runbook"))
            .args(["serve", "--triggers"])
            .arg(triggers)
            .args([
                "--listen",
                listen,
                "--server-id",
                server_id,
                "--output",
                "json",
            ])
            .arg("--state-dir")
            .arg(state)
            .env("RUNBOOK_SERVE_TOKEN", TOKEN)
            .env("RUNBOOK_SERVE_HMAC", "hmac-key-1")
            .env_remove("RUNBOOK_PROMETHEUS_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn runbook serve");
        support::alertmanager::watchdog(child.id());
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("stdout");
        let o = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                o.lock().expect("lock").push(line);
            }
        });
        let err = child.stderr.take().expect("stderr");
        let e = stderr.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(rest) = line.split_once("listening on http://").map(|(_, r)| r)
                    && let Some(t) = tx.take()
                {
                    let _ = t.send(
                        rest.split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_owned(),
                    );
                }
                e.lock().expect("lock").push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| {
                panic!(
                    "runbook serve did not start:\n{}",
                    stderr.lock().expect("lock").join("\n")
                )
            });
        Self {
            child,
            addr,
            stdout,
            stderr,
        }
    }

    fn post_alerts(&self, body: &str) -> (u16, Value) {
        let auth = bearer();
        let (code, text) = http(
            &self.addr,
            "POST",
            "/alerts",
            &[("Authorization", &auth)],
            body,
        );
        (
            code,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// `GET` with alice's token (`/healthz` ignores it).
    fn get(&self, path: &str) -> (u16, String) {
        http(&self.addr, "GET", path, &[("Authorization", &alice())], "")
    }

    fn runs(&self) -> Vec<Value> {
        let (code, body) = self.get("/runs");
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).expect("runs json");
        v["runs"].as_array().cloned().unwrap_or_default()
    }

    fn events(&self) -> Vec<Value> {
        self.stdout
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn log(&self) -> String {
        self.stderr.lock().expect("lock").join("\n")
    }

    /// Wait until `f` holds of the run events (panics after `limit`).
    fn wait_events(&self, limit: Duration, what: &str, f: impl Fn(&[Value]) -> bool) {
        let started = Instant::now();
        while !f(&self.events()) {
            assert!(
                started.elapsed() < limit,
                "timed out waiting for {what}\nlog:\n{}\nevents:\n{}",
                self.log(),
                self.stdout.lock().expect("lock").join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then the exit code.
    fn terminate(&mut self, limit: Duration) -> i32 {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let started = Instant::now();
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code().unwrap_or(-1);
            }
            assert!(
                started.elapsed() < limit,
                "runbook serve did not stop within {limit:?} of SIGTERM\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn of<'a>(events: &'a [Value], kind: &str, step: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["event"] == kind && (step.is_empty() || e["step"] == step))
        .collect()
}

/// The value of a counter or gauge sample line `name{labels} value` in an exposition text.
fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.trim().parse().ok()))
        .unwrap_or(0)
}

/// Milliseconds as seconds with one decimal.
fn secs(ms: u64) -> String {
    format!("{}.{}", ms / 1000, (ms % 1000) / 100)
}

/// Check an exposition text with Prometheus's own parser (`promtool check metrics`).
fn promtool_check(text: &str) {
    let promtool = support::tool("promtool", &["/usr/bin/promtool"], "prometheus");
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool");
    // promtool exits 3 for lint warnings (e.g. counters without `_total`), 1 for parse errors.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(0),
        "promtool check metrics: {:?}\n{}{stderr}\n{text}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout)
    );
}

fn free_addr() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .to_string()
}

/// The triggers file of the self-contained tests (fixture runbooks, bearer and HMAC auth).
fn fixture_triggers(dir: &TempDir, extra: &str) -> PathBuf {
    let fixtures = root().join("tests/serve");
    dir.write(
        "triggers.yaml",
        &format!(
            "auth:\n  bearer: {{env: RUNBOOK_SERVE_TOKEN}}\n  hmac: {{secret: {{env: RUNBOOK_SERVE_HMAC}}, header: X-Signature}}\n  approvers:\n    - {{name: alice, token_sha256: {alice}}}\n\
             max_runs: 40\n\
             triggers:\n\
             \x20 - name: hold\n    alertname: Hold\n    runbook: {hold}\n    params:\n      key: \"{{{{ labels.instance }}}}\"\n      dir: \"{dir}\"\n      seconds: \"{{{{ annotations.seconds }}}}\"\n\
             \x20 - name: approve-by-hand\n    alertname: NeedsHuman\n    mode: approve\n    runbook: {approval}\n    params:\n      key: \"{{{{ labels.instance }}}}\"\n      dir: \"{dir}\"\n\
             \x20 - name: approve-auto\n    alertname: Automatic\n    mode: auto\n    runbook: {approval}\n    params:\n      key: \"{{{{ labels.instance }}}}\"\n      dir: \"{dir}\"\n\
             {extra}",
            hold = fixtures.join("hold.yaml").display(),
            approval = fixtures.join("approval.yaml").display(),
            dir = dir.str(),
            alice = sha256_hex(ALICE),
        ),
    )
}

// ---------------------------------------------------------------------------------------------
// The whole loop: fault → Prometheus alert → Alertmanager → serve → app-rollback → recovery.

#[test]
fn alert_starts_one_rollback_that_verifies_recovery() {
    let app = support::app::App::start();
    let serve_addr = free_addr();
    let am =
        support::alertmanager::alertmanager(&format!("http://{serve_addr}/alerts"), TOKEN, "2s");
    let rules = format!(
        "groups:\n  - name: app\n    rules:\n      - alert: HighErrorRate\n        expr: >-\n          (sum(rate(http_requests_total{{job=\"app\",code=~\"5..\"}}[5s])) or vector(0))\n          / sum(rate(http_requests_total{{job=\"app\"}}[5s])) > 0.05\n        for: 10s\n        labels: {{severity: page, service: demo}}\n        annotations: {{app_url: '{}', summary: 5xx above 5 %}}\n",
        app.url
    );
    // Prometheus scrapes /metrics with the webhook's token (`/metrics` is not open).
    let prom = support::alertmanager::prometheus_scraping(
        &[
            ("app", &app.target, None),
            ("runbook", &serve_addr, Some(TOKEN)),
        ],
        &rules,
        &am.addr,
    );
    let dir = TempDir::new("serve-e2e");
    let triggers = dir.write(
        "triggers.yaml",
        &format!(
            "auth:\n  bearer: {{env: RUNBOOK_SERVE_TOKEN}}\n  approvers: [{{name: alice, token_sha256: {}}}]\nmax_runs: 2\ntriggers:\n\
             \x20 - name: high-5xx\n    alertname: HighErrorRate\n    labels: {{service: demo}}\n    labels_match: {{severity: 'page|critical'}}\n\
             \x20   runbook: {}\n    mode: auto\n    rate_limit: {{runs: 3, per: 1h}}\n    params:\n\
             \x20     app_url: '{{{{ annotations.app_url }}}}'\n      prometheus_url: '{}'\n      service: '{{{{ labels.service }}}}'\n",
            sha256_hex(ALICE),
            root().join("runbooks/examples/app-rollback-local.yaml").display(),
            prom.url
        ),
    );
    let state = TempDir::new("serve-e2e-state");
    let serve = Serve::start(&triggers, state.path(), &serve_addr, "e2e");
    let test_started = Instant::now();

    // A healthy baseline in Prometheus first, then the bad release.
    std::thread::sleep(Duration::from_secs(4));
    let fault_ms = now_ms();
    app.break_it(0.3, 0.8);

    serve.wait_events(Duration::from_mins(1), "the run to finish", |ev| {
        !of(ev, "run_finished", "").is_empty()
    });
    let events = serve.events();
    let dump = || serve.stdout.lock().expect("lock").join("\n");
    let started = of(&events, "run_started", "");
    assert_eq!(started.len(), 1, "exactly one run: {}", dump());
    let finished = of(&events, "run_finished", "")[0];
    assert_eq!(
        finished["status"],
        "succeeded",
        "{}\n{}",
        dump(),
        serve.log()
    );
    let received_ms = started[0]["ts_ms"].as_u64().expect("ts_ms");
    let finished_ms = finished["ts_ms"].as_u64().expect("ts_ms");

    // The require saw a really high error rate (every sample of its window above 5 %).
    let require = of(&events, "check", "confirm-incident");
    assert!(require.iter().all(|c| c["passed"] == true), "{}", dump());
    let detail = require[0]["detail"].as_str().unwrap_or_default();
    let min: f64 = detail
        .split("min ")
        .nth(1)
        .and_then(|r| r.split([',', ' ']).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no min in {detail:?}"));
    assert!(min > 0.05, "the require saw min {min}: {detail}");

    // The rollback ran once; the gates failed while the window still held bad samples and
    // passed only once a whole window after the flip was healthy.
    assert_eq!(app.rollbacks(), 1);
    let flip_ms = app.rolled_back_at_ms().expect("rolled back");
    for gate in ["verify-error-rate", "verify-latency"] {
        let polls = of(&events, "check", gate);
        assert_eq!(
            polls.first().map(|c| c["passed"] == true),
            Some(false),
            "{gate}: {}",
            dump()
        );
        let last = polls.last().expect("polls");
        assert_eq!(last["passed"], true, "{gate}: {}", dump());
        let passed_ms = last["ts_ms"].as_u64().expect("ts_ms");
        assert!(
            passed_ms >= flip_ms + 5_000,
            "{gate} passed {} ms after the flip, before a whole healthy 5 s window",
            passed_ms.saturating_sub(flip_ms)
        );
        assert!(
            polls.iter().filter(|c| c["passed"] == true).count() == 1,
            "a gate stops polling when it passes"
        );
    }

    // Alertmanager kept re-sending the firing alert during the run: nothing else started.
    let (_, metrics) = serve.get("/metrics");
    assert!(
        metric(&metrics, "runbook_alerts_total{result=\"duplicate\"}") >= 1,
        "no second firing reached serve during the run:\n{metrics}\n{}",
        serve.log()
    );
    assert_eq!(
        metric(&metrics, "runbook_alerts_total{result=\"started\"}"),
        1,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "runbook_runs_succeeded_total{runbook=\"app-rollback-local\"}"
        ),
        1,
        "{metrics}"
    );
    let runs = serve.runs();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["trigger"], "high-5xx");
    promtool_check(&metrics);

    // Prometheus scraped serve's /metrics and parsed it.
    let started_scrape = Instant::now();
    loop {
        let (code, body) = http(
            &prom.addr,
            "GET",
            "/api/v1/query?query=runbook_runs_succeeded_total",
            &[],
            "",
        );
        if code == 200 && body.contains("app-rollback-local") {
            break;
        }
        assert!(
            started_scrape.elapsed() < Duration::from_secs(10),
            "Prometheus did not scrape runbook serve's metrics: {body}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // Figures (document 001: MTTD 8.7 s, MTTR 23.1 s).
    let step_ms = |id: &str| {
        of(&events, "step_succeeded", id)
            .first()
            .and_then(|e| e["duration_ms"].as_u64())
            .unwrap_or(0)
    };
    let run_ms = finished_ms - received_ms;
    let waiting = step_ms("confirm-incident")
        + step_ms("rollback")
        + step_ms("verify-error-rate").max(step_ms("verify-latency"));
    eprintln!(
        "FIGURES detection (fault -> alert received by serve): {} s  [rule: 5xx share > 5 % for 10 s]",
        secs(received_ms - fault_ms)
    );
    eprintln!(
        "FIGURES recovery (alert received -> recovery verified): {} s  [gates: a healthy 5 s window after the flip]",
        secs(run_ms)
    );
    eprintln!(
        "FIGURES fault -> verified recovery: {} s (document 001: 8.7 s + 23.1 s)",
        secs(finished_ms - fault_ms)
    );
    eprintln!(
        "FIGURES flip -> verified: {} s; steps: confirm {} ms, rollback {} ms, verify-error-rate {} ms, verify-latency {} ms",
        secs(finished_ms - flip_ms),
        step_ms("confirm-incident"),
        step_ms("rollback"),
        step_ms("verify-error-rate"),
        step_ms("verify-latency")
    );
    eprintln!(
        "FIGURES engine share (run wall time outside its steps' actions, queries and poll waits): {} ms of {} ms",
        run_ms.saturating_sub(waiting),
        run_ms
    );
    eprintln!("e2e took {:?}", test_started.elapsed());
}

// ---------------------------------------------------------------------------------------------

#[test]
fn unauthenticated_wrongly_signed_or_malformed_posts_are_refused() {
    let dir = TempDir::new("serve-auth");
    let state = TempDir::new("serve-auth-state");
    let triggers = fixture_triggers(&dir, "");
    let serve = Serve::start(&triggers, state.path(), "127.0.0.1:0", "auth");
    let body = payload(
        &[("Automatic", "fp-auth", "firing")],
        &json!({"instance": "a1"}),
        &json!({}),
    );
    let sig = |key: &[u8], b: &str| format!("sha256={}", hmac_hex(key, b.as_bytes()));
    // A signed request: HMAC over method, path, timestamp, nonce and body (README).
    let nonces = std::sync::atomic::AtomicU32::new(0);
    let signed = |key: &[u8], b: &str| -> Vec<(&'static str, String)> {
        let ts = (now_ms() / 1000).to_string();
        let nonce = format!(
            "test-nonce-{:08}",
            nonces.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let message = format!("POST\n/alerts\n{ts}\n{nonce}\n{b}");
        vec![
            (
                "X-Signature",
                format!("sha256={}", hmac_hex(key, message.as_bytes())),
            ),
            ("X-Runbook-Timestamp", ts),
            ("X-Runbook-Nonce", nonce),
        ]
    };

    // No credentials, a wrong token, a wrong signature, a signature of another body.
    let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("no credentials", vec![]),
        (
            "wrong token",
            vec![("Authorization", "Bearer nope".to_owned())],
        ),
        (
            "token as basic auth",
            vec![("Authorization", format!("Basic {TOKEN}"))],
        ),
        ("wrong key", signed(b"other-key", &body)),
        ("other body", signed(b"hmac-key-1", "{}")),
        (
            "body-only signature (the old scheme)",
            vec![("X-Signature", sig(b"hmac-key-1", &body))],
        ),
    ];
    for (what, headers) in &cases {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (code, text) = http(&serve.addr, "POST", "/alerts", &h, &body);
        assert_eq!(code, 401, "{what}: {text}");
        assert!(text.contains("\"error\""), "{what}: {text}");
    }
    assert!(
        serve.log().contains("refused POST /alerts: 401"),
        "{}",
        serve.log()
    );

    // Authenticated but malformed: 400 with the reason.
    let bad: [(&str, String, &str); 4] = [
        (
            "not json",
            "{\"version\": ".to_owned(),
            "failed to read the webhook body",
        ),
        (
            "version 3",
            body.replacen("\"version\":\"4\"", "\"version\":\"3\"", 1),
            "payload version \"3\" is not supported",
        ),
        (
            "no alerts",
            "{\"version\":\"4\",\"status\":\"firing\"}".to_owned(),
            "missing field `alerts`",
        ),
        (
            "odd status",
            body.replacen(
                "Z\",\"status\":\"firing\"",
                "Z\",\"status\":\"exploding\"",
                1,
            ),
            "has status \"exploding\"",
        ),
    ];
    for (what, b, reason) in &bad {
        let (code, v) = serve.post_alerts(b);
        assert_eq!(code, 400, "{what}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| e.contains(reason)),
            "{what}: {v}"
        );
    }
    // Binary garbage with a valid signature: still 400, never a crash.
    let garbage = "\u{0}\u{1}\u{fffd}garbage";
    let h = signed(b"hmac-key-1", garbage);
    let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, _) = http(&serve.addr, "POST", "/alerts", &h, garbage);
    assert_eq!(code, 400);
    assert!(serve.runs().is_empty(), "a refused request started a run");

    // Resolved alerts and alerts no trigger matches start nothing; a label a param needs is
    // missing: 422 for that alert, nothing started.
    let (code, v) = serve.post_alerts(&payload(
        &[
            ("Automatic", "fp-r", "resolved"),
            ("Unrelated", "fp-u", "firing"),
        ],
        &json!({"instance": "a2"}),
        &json!({}),
    ));
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["alerts"][0]["result"], "resolved", "{v}");
    assert_eq!(v["alerts"][1]["result"], "no_trigger", "{v}");
    let (code, v) = serve.post_alerts(&payload(
        &[("Automatic", "fp-m", "firing")],
        &json!({}),
        &json!({}),
    ));
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["alerts"][0]["result"], "error", "{v}");
    assert_eq!(v["alerts"][0]["status"], 422, "{v}");
    assert!(
        v["alerts"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("failed to render param `key`") && r.contains("undefined")),
        "{v}"
    );
    assert!(serve.runs().is_empty());

    // A correctly signed, valid payload is accepted (HMAC alone suffices).
    let good = payload(
        &[("Automatic", "fp-ok", "firing")],
        &json!({"instance": "a3"}),
        &json!({}),
    );
    let h = signed(b"hmac-key-1", &good);
    let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, text) = http(&serve.addr, "POST", "/alerts", &h, &good);
    assert_eq!(code, 200, "{text}");
    let v: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["alerts"][0]["result"], "started", "{v}");

    // The approval endpoint needs authentication too.
    let run_id = v["alerts"][0]["run_id"]
        .as_str()
        .expect("run id")
        .to_owned();
    let (code, _) = http(
        &serve.addr,
        "POST",
        &format!("/runs/{run_id}/steps/approve/approve"),
        &[],
        "",
    );
    assert_eq!(code, 401);

    let (code, metrics) = serve.get("/metrics");
    assert_eq!(code, 200);
    assert_eq!(
        metric(
            &metrics,
            "runbook_webhook_requests_total{outcome=\"unauthorized\"}"
        ),
        7,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "runbook_webhook_requests_total{outcome=\"bad_request\"}"
        ),
        5,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "runbook_alerts_total{result=\"resolved\"}"),
        1,
        "{metrics}"
    );
    promtool_check(&metrics);
    let (code, health) = serve.get("/healthz");
    assert_eq!((code, health.trim()), (200, "ok"));

    // Neither secret reaches the log, the run output or the metrics.
    let everything = format!(
        "{}\n{}\n{metrics}",
        serve.log(),
        serve.stdout.lock().expect("lock").join("\n")
    );
    assert!(
        !everything.contains(TOKEN) && !everything.contains("hmac-key-1"),
        "{everything}"
    );
}

/// HMAC-SHA256 computed independently of the engine (`openssl`), hex.
fn hmac_hex(key: &[u8], body: &[u8]) -> String {
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-mac", "HMAC", "-macopt"])
        .arg(format!(
            "hexkey:{}",
            key.iter().fold(String::new(), |mut h, b| {
                let _ = write!(h, "{b:02x}");
                h
            })
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl (to sign test bodies independently of the engine)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body)
        .expect("write");
    let out = child.wait_with_output().expect("openssl");
    let text = String::from_utf8_lossy(&out.stdout);
    text.rsplit(' ')
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

// ---------------------------------------------------------------------------------------------

#[test]
fn approve_mode_waits_for_an_approval_given_over_http_and_auto_mode_answers_itself() {
    let dir = TempDir::new("serve-approve");
    let state = TempDir::new("serve-approve-state");
    let triggers = fixture_triggers(&dir, "");
    let serve = Serve::start(&triggers, state.path(), "127.0.0.1:0", "approve");

    let (code, v) = serve.post_alerts(&payload(
        &[("NeedsHuman", "fp-h", "firing")],
        &json!({"instance": "h1"}),
        &json!({}),
    ));
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["alerts"][0]["result"], "started", "{v}");
    let run_id = v["alerts"][0]["run_id"]
        .as_str()
        .expect("run id")
        .to_owned();
    serve.wait_events(Duration::from_secs(20), "the approval to wait", |ev| {
        !of(ev, "approval_waiting", "approve").is_empty()
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(dir.read("acted-h1").is_none(), "acted before the approval");

    let (code, text) = http(
        &serve.addr,
        "POST",
        &format!("/runs/{run_id}/steps/approve/approve"),
        &[("Authorization", &alice())],
        "{\"comment\": \"from #incidents\"}",
    );
    assert_eq!(code, 200, "{text}");
    serve.wait_events(
        Duration::from_secs(20),
        "the approved run to finish",
        |ev| !of(ev, "run_finished", "").is_empty(),
    );
    assert!(dir.read("acted-h1").is_some());
    let ev = serve.events();
    let approval = of(&ev, "approval", "approve");
    assert_eq!(
        approval.last().map(|a| a["approver"].clone()),
        Some(json!("alice")),
        "{ev:?}"
    );

    // `runbook show` reads the same journal.
    let show = Command::new(env!("CARGO_BIN_EXE_runbook"))
        .args(["show", &run_id, "--state-dir"])
        .arg(state.path())
        .output()
        .expect("runbook show");
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(show.status.success() && text.contains("alice"), "{text}");

    // auto: the run answers its own approval, recorded as the trigger.
    let (_, v) = serve.post_alerts(&payload(
        &[("Automatic", "fp-a", "firing")],
        &json!({"instance": "a1"}),
        &json!({}),
    ));
    assert_eq!(v["alerts"][0]["result"], "started", "{v}");
    serve.wait_events(
        Duration::from_secs(20),
        "the automatic run to finish",
        |ev| of(ev, "run_finished", "").len() == 2,
    );
    assert!(dir.read("acted-a1").is_some());
    let ev = serve.events();
    assert!(
        of(&ev, "approval", "approve")
            .iter()
            .any(|a| a["approver"] == "serve (trigger approve-auto)"),
        "{ev:?}"
    );

    // An unknown run: 404.
    let (code, _) = http(
        &serve.addr,
        "POST",
        "/runs/nope/steps/approve/deny",
        &[("Authorization", &alice())],
        "",
    );
    assert_eq!(code, 404);
}

// ---------------------------------------------------------------------------------------------

#[test]
fn rate_limit_and_max_runs_refuse_with_429() {
    let dir = TempDir::new("serve-limits");
    let state = TempDir::new("serve-limits-state");
    let hold = root().join("tests/serve/hold.yaml");
    let triggers = dir.write(
        "triggers.yaml",
        &format!(
            "auth:\n  bearer: {{env: RUNBOOK_SERVE_TOKEN}}\n  approvers: [{{name: alice, token_sha256: {a}}}]\nmax_runs: 2\ntriggers:\n\
             \x20 - name: limited\n    alertname: Limited\n    rate_limit: {{runs: 1, per: 1h}}\n    runbook: {h}\n    params: {{key: '{{{{ labels.instance }}}}', dir: '{d}'}}\n\
             \x20 - name: open\n    alertname: Open\n    runbook: {h}\n    params: {{key: '{{{{ labels.instance }}}}', dir: '{d}'}}\n",
            h = hold.display(),
            d = dir.str(),
            a = sha256_hex(ALICE),
        ),
    );
    let mut serve = Serve::start(&triggers, state.path(), "127.0.0.1:0", "limits");
    let post = |name: &str, fp: &str, inst: &str| {
        serve
            .post_alerts(&payload(
                &[(name, fp, "firing")],
                &json!({"instance": inst}),
                &json!({}),
            ))
            .1
    };
    assert_eq!(
        post("Limited", "l1", "l1")["alerts"][0]["result"],
        "started"
    );
    let v = post("Limited", "l2", "l2");
    assert_eq!(v["alerts"][0]["result"], "rate_limited", "{v}");
    assert_eq!(v["alerts"][0]["status"], 429, "{v}");
    assert_eq!(post("Open", "o1", "o1")["alerts"][0]["result"], "started");
    let v = post("Open", "o2", "o2");
    assert_eq!(v["alerts"][0]["result"], "max_runs", "{v}");
    assert_eq!(v["alerts"][0]["status"], 429, "{v}");
    let (_, metrics) = serve.get("/metrics");
    assert_eq!(
        metric(&metrics, "runbook_alerts_total{result=\"rate_limited\"}"),
        1,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "runbook_alerts_total{result=\"max_runs\"}"),
        1,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "runbook_runs_active"), 2, "{metrics}");
    assert_eq!(
        serve.terminate(Duration::from_secs(30)),
        0,
        "{}",
        serve.log()
    );
}

// ---------------------------------------------------------------------------------------------

#[test]
fn sigterm_cancels_the_run_in_flight_and_a_restart_resumes_it_to_completion() {
    let dir = TempDir::new("serve-restart");
    let state = TempDir::new("serve-restart-state");
    let triggers = fixture_triggers(&dir, "");
    let mut serve = Serve::start(&triggers, state.path(), "127.0.0.1:0", "edge-1");
    let (_, v) = serve.post_alerts(&payload(
        &[("Hold", "fp-hold", "firing")],
        &json!({"instance": "r1"}),
        &json!({"seconds": "3"}),
    ));
    assert_eq!(v["alerts"][0]["result"], "started", "{v}");
    let run_id = v["alerts"][0]["run_id"]
        .as_str()
        .expect("run id")
        .to_owned();
    serve.wait_events(Duration::from_secs(20), "the hold step to start", |ev| {
        !of(ev, "command", "hold").is_empty()
    });
    let stopped = Instant::now();
    assert_eq!(
        serve.terminate(Duration::from_secs(30)),
        0,
        "{}",
        serve.log()
    );
    eprintln!("graceful shutdown took {:?}", stopped.elapsed());
    let ev = serve.events();
    assert_eq!(
        of(&ev, "run_finished", "")[0]["status"],
        "cancelled",
        "{ev:?}"
    );
    assert!(
        serve.log().contains("SIGTERM: no longer accepting"),
        "{}",
        serve.log()
    );
    assert!(dir.read("done-r1").is_none());
    drop(serve);

    let runs = Command::new(env!("CARGO_BIN_EXE_runbook"))
        .args(["runs", "--state-dir"])
        .arg(state.path())
        .output()
        .expect("runbook runs");
    let listing = String::from_utf8_lossy(&runs.stdout);
    assert!(
        listing.contains(&run_id)
            && listing.contains("cancelled")
            && listing.contains("serve:edge-1 (trigger hold)"),
        "{listing}"
    );

    // Another server id does not touch it; the owner resumes it.
    let other = Serve::start(&triggers, state.path(), "127.0.0.1:0", "edge-2");
    std::thread::sleep(Duration::from_millis(500));
    assert!(other.events().is_empty(), "edge-2 resumed edge-1's run");
    drop(other);
    let serve = Serve::start(&triggers, state.path(), "127.0.0.1:0", "edge-1");
    serve.wait_events(Duration::from_secs(30), "the resumed run to finish", |ev| {
        !of(ev, "run_finished", "").is_empty()
    });
    let ev = serve.events();
    assert_eq!(of(&ev, "resumed", "").len(), 1, "{ev:?}");
    assert_eq!(
        of(&ev, "run_finished", "")[0]["status"],
        "succeeded",
        "{ev:?}"
    );
    assert!(dir.read("done-r1").is_some());
    let runs = serve.runs();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["id"], run_id.as_str());
    assert_eq!(runs[0]["status"], "succeeded");
}

// ---------------------------------------------------------------------------------------------

#[test]
fn triggers_file_diagnostics() {
    let dir = root().join("tests/serve");
    let mut all = String::new();
    for name in ["broken/syntax.yaml", "broken/semantic.yaml"] {
        let out = Command::new(env!("CARGO_BIN_EXE_runbook"))
            .args([
                "--message-format",
                "short",
                "serve",
                "--check",
                "--triggers",
                name,
            ])
            .current_dir(&dir)
            .output()
            .expect("runbook serve --check");
        assert_eq!(out.status.code(), Some(2), "{name}");
        let _ = write!(all, "== {name}\n{}", String::from_utf8_lossy(&out.stderr));
    }
    insta::assert_snapshot!("triggers_diagnostics", all);

    // A valid file: ok, exit 0.
    let tmp = TempDir::new("serve-check");
    let triggers = fixture_triggers(&tmp, "");
    let out = Command::new(env!("CARGO_BIN_EXE_runbook"))
        .args(["serve", "--check", "--triggers"])
        .arg(&triggers)
        .output()
        .expect("runbook serve --check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (3 triggers)"));

    // A secret that cannot be resolved: exit 2, named, nothing served.
    let out = Command::new(env!("CARGO_BIN_EXE_runbook"))
        .args(["serve", "--listen", "127.0.0.1:0", "--triggers"])
        .arg(&triggers)
        .arg("--state-dir")
        .arg(tmp.join("state"))
        .env_remove("RUNBOOK_SERVE_TOKEN")
        .output()
        .expect("runbook serve");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("environment variable RUNBOOK_SERVE_TOKEN is not set"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------

#[test]
fn load_2000_posts_in_20_seconds_no_crash_no_duplicate_runs() {
    const POSTS: usize = 2000;
    const ALERTS: usize = 20;
    const THREADS: usize = 4;
    let dir = TempDir::new("serve-load");
    let state = TempDir::new("serve-load-state");
    let triggers = fixture_triggers(&dir, "");
    let mut serve = Serve::start(&triggers, state.path(), "127.0.0.1:0", "load");
    let addr = serve.addr.clone();
    let started = Instant::now();
    let per_thread = POSTS / THREADS;
    // 100 posts a second in all: one every 40 ms per thread.
    let pace = Duration::from_secs(20) / u32::try_from(per_thread).expect("small");
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let auth = bearer();
                let mut results = Vec::with_capacity(per_thread);
                for i in 0..per_thread {
                    let due = started + pace * u32::try_from(i).expect("small");
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let n = (t * per_thread + i) % ALERTS;
                    let body = payload(
                        &[("Hold", &format!("fp-load-{n}"), "firing")],
                        &json!({"instance": format!("load-{n}")}),
                        &json!({"seconds": "120"}),
                    );
                    let sent = Instant::now();
                    let (code, text) =
                        http(&addr, "POST", "/alerts", &[("Authorization", &auth)], &body);
                    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    results.push((
                        sent.elapsed(),
                        code,
                        v["alerts"][0]["result"].as_str().unwrap_or("?").to_owned(),
                    ));
                }
                results
            })
        })
        .collect();
    let mut results = Vec::new();
    for w in workers {
        results.extend(w.join().expect("worker"));
    }
    let took = started.elapsed();
    let mut latencies: Vec<Duration> = results.iter().map(|r| r.0).collect();
    latencies.sort();
    let pct = |p: usize| latencies[(latencies.len() * p).div_ceil(100).saturating_sub(1)];
    eprintln!(
        "FIGURES load: {} posts in {took:?}: p50 {:?}, p99 {:?}, max {:?}",
        results.len(),
        pct(50),
        pct(99),
        latencies[latencies.len() - 1]
    );
    assert_eq!(results.len(), POSTS);
    assert!(results.iter().all(|r| r.1 == 200), "non-200 answers");
    let started_runs = results.iter().filter(|r| r.2 == "started").count();
    let duplicates = results.iter().filter(|r| r.2 == "duplicate").count();
    assert_eq!(started_runs, ALERTS, "one run per distinct alert");
    assert_eq!(duplicates, POSTS - ALERTS);
    let runs = serve.runs();
    assert_eq!(runs.len(), ALERTS, "{runs:?}");
    let (code, _) = serve.get("/healthz");
    assert_eq!(code, 200);
    let stopping = Instant::now();
    assert_eq!(
        serve.terminate(Duration::from_mins(1)),
        0,
        "{}",
        serve.log()
    );
    eprintln!(
        "FIGURES shutdown with {ALERTS} runs in flight: {:?}",
        stopping.elapsed()
    );
    let cancelled = serve
        .events()
        .iter()
        .filter(|e| e["event"] == "run_finished" && e["status"] == "cancelled")
        .count();
    assert_eq!(cancelled, ALERTS, "every run journaled its cancellation");
}

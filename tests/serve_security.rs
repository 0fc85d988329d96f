//! `runbook serve` gives nothing away and approvals come from real identities: the real binary on
//! 127.0.0.1, attacked the way a stranger on the network, a holder of the webhook's credential or
//! a slow client would. Signatures are computed by `openssl` (independently of the engine).

mod support;

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use sha2::Digest as _;
use support::TempDir;

const WEBHOOK: &str = "webhook-7d1e0c";
const HMAC_KEY: &str = "hmac-key-9";
const METRICS: &str = "scrape-44b1";
const ALICE: &str = "alice-tok-2f8e61";
const BOB: &str = "bob-tok-b9a0c3";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn sha256_hex(s: &str) -> String {
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .fold(String::new(), |mut h, b| {
            let _ = write!(h, "{b:02x}");
            h
        })
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// HMAC-SHA256 computed by `openssl`, hex.
fn hmac_hex(key: &str, message: &[u8]) -> String {
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-mac", "HMAC", "-macopt"])
        .arg(format!("key:{key}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl (to sign requests independently of the engine)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(message)
        .expect("write");
    let out = child.wait_with_output().expect("openssl");
    String::from_utf8_lossy(&out.stdout)
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// The headers of a request signed as the README says: HMAC over
/// `METHOD\nPATH\nTIMESTAMP\nNONCE\nBODY`.
fn signed(method: &str, path: &str, body: &str, ts: u64, nonce: &str) -> Vec<(String, String)> {
    let message = format!("{method}\n{path}\n{ts}\n{nonce}\n{body}");
    vec![
        (
            "X-Signature".to_owned(),
            format!("sha256={}", hmac_hex(HMAC_KEY, message.as_bytes())),
        ),
        ("X-Runbook-Timestamp".to_owned(), ts.to_string()),
        ("X-Runbook-Nonce".to_owned(), nonce.to_owned()),
    ]
}

/// One HTTP/1.1 request with `Connection: close`: status and body.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30)))
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
    let _ = s.read_to_string(&mut answer);
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

fn bearer(token: &str) -> Vec<(String, String)> {
    vec![("Authorization".to_owned(), format!("Bearer {token}"))]
}

fn payload(name: &str, fp: &str, instance: &str) -> String {
    json!({
        "version": "4", "groupKey": "{}:{}", "status": "firing", "receiver": "runbook",
        "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://am",
        "alerts": [{
            "status": "firing", "labels": {"alertname": name, "instance": instance},
            "annotations": {}, "startsAt": "2026-11-25T10:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://p", "fingerprint": fp,
        }],
    })
    .to_string()
}

/// A triggers file: webhook bearer + HMAC, a metrics token, alice and bob with their own tokens,
/// and `extra` YAML appended under `auth:` / at the top level.
fn triggers(dir: &TempDir, auth_extra: &str, extra: &str) -> PathBuf {
    let fixtures = root().join("tests/serve");
    dir.write(
        "triggers.yaml",
        &format!(
            "auth:\n  bearer: {{env: RB_WEBHOOK}}\n  hmac: {{secret: {{env: RB_HMAC}}, header: X-Signature}}\n  metrics_token: {{env: RB_METRICS}}\n  approvers:\n    - {{name: alice, token_sha256: {a}}}\n    - {{name: bob, token_sha256: {b}}}\n{auth_extra}\
             max_runs: 40\n{extra}\
             triggers:\n\
             \x20 - name: alice-only\n    alertname: AliceOnly\n    mode: approve\n    runbook: {alice}\n    params:\n      key: \"{{{{ labels.instance }}}}\"\n      dir: \"{d}\"\n\
             \x20 - name: hold\n    alertname: Hold\n    runbook: {hold}\n    params:\n      key: \"{{{{ labels.instance }}}}\"\n      dir: \"{d}\"\n      seconds: \"30\"\n",
            a = sha256_hex(ALICE),
            b = sha256_hex(BOB),
            alice = fixtures.join("alice-only.yaml").display(),
            hold = fixtures.join("hold.yaml").display(),
            d = dir.str(),
        ),
    )
}

/// A `runbook serve` process with its log (stderr) and run events (stdout) collected.
struct Serve {
    child: Child,
    addr: String,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Serve {
    fn start(triggers: &Path, state: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_runbook"))
            .args(["serve", "--listen", "127.0.0.1:0", "--output", "json"])
            .arg("--triggers")
            .arg(triggers)
            .arg("--state-dir")
            .arg(state)
            .env("RB_WEBHOOK", WEBHOOK)
            .env("RB_HMAC", HMAC_KEY)
            .env("RB_METRICS", METRICS)
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
                    let _ = t.send(rest.split_whitespace().next().unwrap_or("").to_owned());
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

    fn log(&self) -> String {
        self.stderr.lock().expect("lock").join("\n")
    }

    fn events(&self) -> Vec<Value> {
        self.stdout
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn wait_events(&self, what: &str, f: impl Fn(&[Value]) -> bool) {
        let started = Instant::now();
        while !f(&self.events()) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "timed out waiting for {what}\n{}\n{:?}",
                self.log(),
                self.events()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn post_alert(&self, body: &str) -> Value {
        let (code, text) = http(&self.addr, "POST", "/alerts", &bearer(WEBHOOK), body);
        assert_eq!(code, 200, "{text}");
        serde_json::from_str(&text).expect("json")
    }

    /// Kilobytes of resident memory (`VmRSS`).
    fn rss_kb(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("status")
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
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

/// Start an `alice-only` run and wait until its approval step waits; its id.
fn waiting_run(serve: &Serve, instance: &str) -> String {
    let before = of(&serve.events(), "approval_waiting", "approve").len();
    let v = serve.post_alert(&payload("AliceOnly", &format!("fp-{instance}"), instance));
    assert_eq!(v["alerts"][0]["result"], "started", "{v}");
    let id = v["alerts"][0]["run_id"]
        .as_str()
        .expect("run id")
        .to_owned();
    serve.wait_events("the approval to wait", |ev| {
        of(ev, "approval_waiting", "approve").len() > before
    });
    id
}

// ---------------------------------------------------------------------------------------------

#[test]
fn only_healthz_is_open_and_each_credential_does_its_own_things() {
    let dir = TempDir::new("sec-scopes");
    let state = TempDir::new("sec-scopes-state");
    let serve = Serve::start(&triggers(&dir, "", ""), state.path());
    let get = |path: &str, h: &[(String, String)]| http(&serve.addr, "GET", path, h, "");

    assert_eq!(get("/healthz", &[]).0, 200);
    for path in ["/runs", "/metrics"] {
        let (code, body) = get(path, &[]);
        assert_eq!(code, 401, "{path} without credentials: {body}");
        assert_eq!(get(path, &bearer("guess")).0, 401, "{path}: a wrong token");
    }
    // The webhook's credential posts alerts (and may be scraped with), never lists runs.
    let (code, body) = get("/runs", &bearer(WEBHOOK));
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("person"), "{body}");
    assert_eq!(get("/metrics", &bearer(WEBHOOK)).0, 200);
    // The metrics token reads metrics only.
    assert_eq!(get("/metrics", &bearer(METRICS)).0, 200);
    assert_eq!(get("/runs", &bearer(METRICS)).0, 403);
    let body = payload("Hold", "fp-m", "m1");
    assert_eq!(
        http(&serve.addr, "POST", "/alerts", &bearer(METRICS), &body).0,
        403
    );
    // A person lists runs and reads metrics, but does not post alerts.
    assert_eq!(get("/runs", &bearer(ALICE)).0, 200);
    assert_eq!(get("/metrics", &bearer(ALICE)).0, 200);
    assert_eq!(
        http(&serve.addr, "POST", "/alerts", &bearer(ALICE), &body).0,
        403
    );
    // Nothing was started by the refused posts.
    let (_, runs) = get("/runs", &bearer(BOB));
    let v: Value = serde_json::from_str(&runs).expect("json");
    assert_eq!(v["runs"].as_array().map(Vec::len), Some(0), "{v}");
    // The tokens never reach the log.
    let log = serve.log();
    for secret in [WEBHOOK, METRICS, ALICE, BOB, HMAC_KEY] {
        assert!(!log.contains(secret), "{log}");
    }
}

#[test]
fn the_approver_is_the_owner_of_the_credential_never_the_body() {
    let dir = TempDir::new("sec-approver");
    let state = TempDir::new("sec-approver-state");
    let serve = Serve::start(&triggers(&dir, "", ""), state.path());
    let id = waiting_run(&serve, "a1");
    let path = format!("/runs/{id}/steps/approve/approve");

    // Reproduced on the old server: the webhook token with `{"as": "alice"}` approved as alice.
    let (code, body) = http(
        &serve.addr,
        "POST",
        &path,
        &bearer(WEBHOOK),
        r#"{"as": "alice"}"#,
    );
    assert_eq!(code, 403, "{body}");
    // Reproduced: the HMAC of an empty body was a credential for every approve/deny endpoint.
    let h = signed("POST", &path, "", now_secs(), "nonce-empty-body-0001");
    assert_eq!(http(&serve.addr, "POST", &path, &h, "").0, 403);
    // Bob cannot pass himself off as alice.
    let (code, body) = http(
        &serve.addr,
        "POST",
        &path,
        &bearer(BOB),
        r#"{"as": "alice"}"#,
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("owner of the credential (bob)"), "{body}");
    // Bob's own approval is recorded as bob's, and bob is not an approver of this step.
    let (code, body) = http(&serve.addr, "POST", &path, &bearer(BOB), "");
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json")["approver"],
        "bob"
    );
    std::thread::sleep(Duration::from_millis(800));
    assert!(dir.read("acted-a1").is_none(), "bob's approval counted");
    // Alice's token approves, as alice.
    let (code, body) = http(
        &serve.addr,
        "POST",
        &path,
        &bearer(ALICE),
        r#"{"comment": "checked the dashboard"}"#,
    );
    assert_eq!(code, 200, "{body}");
    serve.wait_events("the run to finish", |ev| {
        !of(ev, "run_finished", "").is_empty()
    });
    assert!(dir.read("acted-a1").is_some());
    let ev = serve.events();
    let approved: Vec<&Value> = of(&ev, "approval", "approve")
        .into_iter()
        .filter(|e| e["decision"] == "approved")
        .collect();
    assert_eq!(approved.len(), 1, "{ev:?}");
    assert_eq!(approved[0]["approver"], "alice", "{ev:?}");

    // Reproduced: approving a step of a finished run returned 200.
    let (code, body) = http(&serve.addr, "POST", &path, &bearer(ALICE), "");
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("succeeded"), "{body}");
    let (code, _) = http(
        &serve.addr,
        "POST",
        &format!("/runs/{id}/steps/approve/deny"),
        &bearer(ALICE),
        "",
    );
    assert_eq!(code, 409);
    // An unknown step or run: 404.
    let (code, _) = http(
        &serve.addr,
        "POST",
        &format!("/runs/{id}/steps/nope/approve"),
        &bearer(ALICE),
        "",
    );
    assert_eq!(code, 404);
    let (code, _) = http(
        &serve.addr,
        "POST",
        "/runs/nope/steps/approve/approve",
        &bearer(ALICE),
        "",
    );
    assert_eq!(code, 404);

    // A step that runs (not an approval): 409, nothing recorded.
    let v = serve.post_alert(&payload("Hold", "fp-h", "h1"));
    let hold = v["alerts"][0]["run_id"]
        .as_str()
        .expect("run id")
        .to_owned();
    serve.wait_events("the hold step to start", |ev| {
        !of(ev, "command", "hold").is_empty()
    });
    let (code, body) = http(
        &serve.addr,
        "POST",
        &format!("/runs/{hold}/steps/hold/approve"),
        &bearer(ALICE),
        "",
    );
    assert_eq!(code, 409, "{body}");
}

#[test]
fn a_signed_request_is_good_once_for_its_method_and_path() {
    let dir = TempDir::new("sec-replay");
    let state = TempDir::new("sec-replay-state");
    let serve = Serve::start(&triggers(&dir, "", ""), state.path());
    let body = payload("Hold", "fp-r1", "r1");
    let h = signed(
        "POST",
        "/alerts",
        &body,
        now_secs(),
        "replay-test-nonce-0001",
    );
    let (code, text) = http(&serve.addr, "POST", "/alerts", &h, &body);
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("\"started\""), "{text}");

    // The same request again, byte for byte: refused.
    let (code, text) = http(&serve.addr, "POST", "/alerts", &h, &body);
    assert_eq!(code, 401, "{text}");
    assert!(text.contains("replayed"), "{text}");
    // Its signature on another path, or with another nonce or timestamp: refused.
    let (code, _) = http(&serve.addr, "POST", "/alerts?x=1", &h, &body);
    assert_eq!(code, 401);
    let mut other = h.clone();
    other[2].1 = "replay-test-nonce-0002".to_owned();
    assert_eq!(http(&serve.addr, "POST", "/alerts", &other, &body).0, 401);
    // Stale (10 minutes old) or from the future, even when correctly signed.
    for ts in [now_secs() - 600, now_secs() + 600] {
        let h = signed("POST", "/alerts", &body, ts, &format!("stale-nonce-{ts}"));
        let (code, text) = http(&serve.addr, "POST", "/alerts", &h, &body);
        assert_eq!(code, 401, "{text}");
        assert!(text.contains("not fresh"), "{text}");
    }
    // Without a nonce, or the old body-only signature: refused.
    let mut no_nonce = signed(
        "POST",
        "/alerts",
        &body,
        now_secs(),
        "nonce-will-be-dropped",
    );
    no_nonce.pop();
    assert_eq!(
        http(&serve.addr, "POST", "/alerts", &no_nonce, &body).0,
        401
    );
    let old = vec![(
        "X-Signature".to_owned(),
        format!("sha256={}", hmac_hex(HMAC_KEY, body.as_bytes())),
    )];
    assert_eq!(http(&serve.addr, "POST", "/alerts", &old, &body).0, 401);
    // A fresh nonce with a new signature is accepted (a duplicate alert: 409 inside a 200).
    let h = signed(
        "POST",
        "/alerts",
        &body,
        now_secs(),
        "replay-test-nonce-0003",
    );
    let (code, text) = http(&serve.addr, "POST", "/alerts", &h, &body);
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("\"duplicate\""), "{text}");
    // A signed body over the pre-authentication limit is not read: 413.
    let big = "x".repeat(100 * 1024);
    let h = signed(
        "POST",
        "/alerts",
        &big,
        now_secs(),
        "replay-test-nonce-0004",
    );
    assert_eq!(http(&serve.addr, "POST", "/alerts", &h, &big).0, 413);
    assert!(serve.log().contains("replayed nonce"), "{}", serve.log());
}

#[test]
fn a_trusted_proxy_names_people_only_from_its_networks() {
    let dir = TempDir::new("sec-proxy");
    let state = TempDir::new("sec-proxy-state");
    let trusted = Serve::start(
        &triggers(
            &dir,
            "  trusted_proxy: {header: X-Forwarded-User, from: [127.0.0.1/32]}\n",
            "",
        ),
        state.path(),
    );
    let id = waiting_run(&trusted, "p1");
    let as_user = |who: &str| vec![("X-Forwarded-User".to_owned(), who.to_owned())];
    assert_eq!(
        http(&trusted.addr, "GET", "/runs", &as_user("carol"), "").0,
        200
    );
    // The proxy's word is not a webhook credential.
    let body = payload("Hold", "fp-p", "p2");
    assert_eq!(
        http(&trusted.addr, "POST", "/alerts", &as_user("carol"), &body).0,
        403
    );
    // A name that could pass for the engine's own approvers is refused.
    assert_eq!(
        http(
            &trusted.addr,
            "GET",
            "/runs",
            &as_user("serve (trigger x)"),
            ""
        )
        .0,
        401
    );
    let (code, text) = http(
        &trusted.addr,
        "POST",
        &format!("/runs/{id}/steps/approve/approve"),
        &as_user("alice"),
        "",
    );
    assert_eq!(code, 200, "{text}");
    trusted.wait_events("the run to finish", |ev| {
        !of(ev, "run_finished", "").is_empty()
    });
    assert!(dir.read("acted-p1").is_some());
    drop(trusted);

    // The same header from a peer outside `from`: not believed.
    let dir2 = TempDir::new("sec-proxy-2");
    let state2 = TempDir::new("sec-proxy-2-state");
    let strict = Serve::start(
        &triggers(
            &dir2,
            "  trusted_proxy: {header: X-Forwarded-User, from: [10.0.0.0/8]}\n",
            "",
        ),
        state2.path(),
    );
    let (code, text) = http(&strict.addr, "GET", "/runs", &as_user("alice"), "");
    assert_eq!(code, 401, "{text}");
    assert!(
        text.contains("only believed from the trusted proxy"),
        "{text}"
    );
    // Off by default: without `trusted_proxy`, the header is nothing.
    drop(strict);
    let dir3 = TempDir::new("sec-proxy-3");
    let state3 = TempDir::new("sec-proxy-3-state");
    let plain = Serve::start(&triggers(&dir3, "", ""), state3.path());
    assert_eq!(
        http(&plain.addr, "GET", "/runs", &as_user("alice"), "").0,
        401
    );
}

// ---------------------------------------------------------------------------------------------
// Hardening: bodies, slow clients, connection cap.

/// Send a request head announcing `len` body bytes, then try to send them all; the status the
/// server answered, if any (`None`: it closed the connection first).
fn post_big_unauthenticated(addr: &str, len: usize) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(20))).ok()?;
    let head = format!(
        "POST /alerts HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).ok()?;
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0;
    while sent < len {
        if s.write_all(&chunk[..chunk.len().min(len - sent)]).is_err() {
            break;
        }
        sent += chunk.len();
    }
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
}

#[test]
fn a_thousand_unauthenticated_2mb_bodies_do_not_grow_the_server() {
    const POSTS: usize = 1000;
    const THREADS: usize = 100;
    const SIZE: usize = 2_000_000;
    let dir = TempDir::new("sec-rss");
    let state = TempDir::new("sec-rss-state");
    let serve = Serve::start(&triggers(&dir, "", ""), state.path());
    // Warm up (allocator arenas of the worker threads), then measure.
    for _ in 0..20 {
        let _ = post_big_unauthenticated(&serve.addr, 1000);
    }
    let before = serve.rss_kb();
    let peak = Arc::new(Mutex::new(before));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, done, pid) = (peak.clone(), done.clone(), serve.child.id());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    && let Some(kb) = s
                        .lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                {
                    let mut p = peak.lock().expect("lock");
                    *p = (*p).max(kb);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let started = Instant::now();
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let addr = serve.addr.clone();
            std::thread::spawn(move || {
                (0..POSTS / THREADS)
                    .map(|_| post_big_unauthenticated(&addr, SIZE))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let answers: Vec<Option<u16>> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("worker"))
        .collect();
    let took = started.elapsed();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    sampler.join().expect("sampler");
    let peak = *peak.lock().expect("lock");
    let refused = answers.iter().filter(|a| **a == Some(401)).count();
    eprintln!(
        "FIGURES rss: {POSTS} unauthenticated {SIZE}-byte posts in {took:?}: VmRSS {before} kB before, peak {peak} kB (+{} kB); {refused} answered 401, {} closed before an answer",
        peak.saturating_sub(before),
        answers.iter().filter(|a| a.is_none()).count()
    );
    assert!(
        answers.iter().all(|a| a.is_none() || *a == Some(401)),
        "an unauthenticated post got another answer: {answers:?}"
    );
    assert!(refused > 0, "no post was answered 401");
    // Reading those bodies would take 100 × 2 MB at once; the bound is far below.
    assert!(
        peak.saturating_sub(before) < 48 * 1024,
        "the server grew from {before} kB to {peak} kB"
    );
    assert_eq!(http(&serve.addr, "GET", "/healthz", &[], "").0, 200);
}

/// Whether the server closes `s` within `limit` (reading and discarding what it sends); the
/// bytes it sent.
fn closed_within(s: &mut TcpStream, limit: Duration) -> (bool, String) {
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while started.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return (true, String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return (true, String::from_utf8_lossy(&got).into_owned()),
        }
    }
    (false, String::from_utf8_lossy(&got).into_owned())
}

#[test]
fn slow_and_idle_clients_are_cut_off() {
    let dir = TempDir::new("sec-slow");
    let state = TempDir::new("sec-slow-state");
    let serve = Serve::start(
        &triggers(&dir, "", "limits: {header_timeout: 1s, body_timeout: 1s}\n"),
        state.path(),
    );
    let addr = serve.addr.clone();
    let limit = Duration::from_secs(4);

    // Connects and says nothing.
    let mut s = TcpStream::connect(&addr).expect("connect");
    let t = Instant::now();
    let (closed, _) = closed_within(&mut s, limit);
    assert!(closed, "a silent connection stayed open for {limit:?}");
    eprintln!("FIGURES silent connection closed after {:?}", t.elapsed());

    // Trickles its headers, a byte every 200 ms: never a complete head within the timeout.
    let mut s = TcpStream::connect(&addr).expect("connect");
    let t = Instant::now();
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nX-Slow: {}\r\n\r\n",
        "a".repeat(40)
    );
    let mut cut = false;
    for b in head.bytes() {
        if s.write_all(&[b]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        if t.elapsed() > limit {
            break;
        }
    }
    let (closed, answer) = closed_within(&mut s, Duration::from_secs(2));
    assert!(
        cut || closed,
        "a trickled head was still being read after {:?}",
        t.elapsed()
    );
    assert!(
        !answer.contains(" 200 "),
        "the trickled request was served: {answer}"
    );
    assert!(
        t.elapsed() < limit + Duration::from_secs(2),
        "{:?}",
        t.elapsed()
    );
    eprintln!("FIGURES trickled head cut off after {:?}", t.elapsed());

    // Authenticated, then trickles its body: 408 after the body timeout.
    let mut s = TcpStream::connect(&addr).expect("connect");
    let head = format!(
        "POST /alerts HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {WEBHOOK}\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{{"
    );
    s.write_all(head.as_bytes()).expect("head");
    let t = Instant::now();
    let writer = {
        let mut w = s.try_clone().expect("clone");
        std::thread::spawn(move || {
            for _ in 0..30 {
                if w.write_all(b" ").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let (closed, answer) = closed_within(&mut s, limit);
    assert!(
        closed,
        "a trickled body was still being read after {limit:?}: {answer}"
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    eprintln!("FIGURES trickled body answered 408 after {:?}", t.elapsed());
    let _ = writer.join();

    // Kept alive after a request, then idle: closed.
    let mut s = TcpStream::connect(&addr).expect("connect");
    s.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .expect("request");
    let t = Instant::now();
    let (closed, answer) = closed_within(&mut s, limit);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(closed, "an idle kept-alive connection stayed open");
    assert!(
        t.elapsed() >= Duration::from_millis(800),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(http(&addr, "GET", "/healthz", &[], "").0, 200);
}

#[test]
fn over_the_connection_cap_gets_a_clear_refusal() {
    let dir = TempDir::new("sec-cap");
    let state = TempDir::new("sec-cap-state");
    let serve = Serve::start(
        &triggers(&dir, "", "limits: {connections: 3, header_timeout: 20s}\n"),
        state.path(),
    );
    let held: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(&serve.addr).expect("connect"))
        .collect();
    // Let the server accept them.
    std::thread::sleep(Duration::from_millis(300));
    let (code, body) = http(&serve.addr, "GET", "/healthz", &[], "");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("too many connections"), "{body}");
    assert!(body.contains("limits.connections"), "{body}");
    drop(held);
    let started = Instant::now();
    loop {
        let (code, _) = http(&serve.addr, "GET", "/healthz", &[], "");
        if code == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "connections were not freed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, metrics) = http(&serve.addr, "GET", "/metrics", &bearer(METRICS), "");
    assert!(
        metrics.contains("runbook_webhook_requests_total{outcome=\"too_many_connections\"}"),
        "{metrics}"
    );
}

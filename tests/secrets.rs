//! Secrets leave through no channel, in no shape: hostile secret values (quotes, backslashes,
//! tabs, newlines, JSON and HTML specials, a PEM-like multi-line key) are echoed by commands,
//! by a real HTTP server on 127.0.0.1 in response headers and bodies, and passed through
//! `outputs` into later steps; then every way the run can be read back is scanned for the secret
//! and each derived form: every `--output` mode, `logs`, `show`, `report` in every format,
//! `audit export`, `runs`, `runbook check`, the raw bytes of every file in the state
//! directory (the database's `-wal` included, read while a run holds it open), and `/runs` of
//! `runbook serve`.

mod support;

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sha2::Digest as _;

use support::{RunOutput, Runbook, TempDir};

/// Header-safe (no control characters): quotes, backslash, JSON and HTML specials, `%`, `&`.
const HDR: &str = r#"H3ad'er"V\al{"k":[1]}<b>&q=1%2F"#;
/// Tab, newline, quotes, backslash, JSON specials.
const TOK: &str = "T0k'qu\"o\\te\tTAB\nL1NE2{\"j\":\"x\"}</z>";
/// A `secret: true` param with a quote and a backslash.
const PW: &str = r"P4ss'w0rd\x";
/// A PEM-like key read from a file.
const PEM: &str = "-----BEGIN TEST KEY-----\nMIIBVQIBADANBgkqhkiG9w0B\nAQEFAASCAT8wggE7AgEAAkEA\n==\n-----END TEST KEY-----";

/// Percent-encoding of every byte but the unreserved ones (`encodeURIComponent`).
fn pct(s: &str, upper: bool) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else if upper {
                format!("%{b:02X}")
            } else {
                format!("%{b:02x}")
            }
        })
        .collect()
}

/// Percent-encoding as URL parsers apply it to a query: controls, space, `"`, `#`, `<`, `>`, `'`.
fn pct_query(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b <= b' ' || b >= 0x7f || b"\"#<>'".contains(&b) {
                format!("%{b:02X}")
            } else {
                (b as char).to_string()
            }
        })
        .collect()
}

/// Shell single-quoting as the engine does it.
fn shell_quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The secret and every derived form that must never appear.
fn needles() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, s) in [("hdr", HDR), ("tok", TOK), ("pw", PW), ("pem", PEM)] {
        let json = serde_json::to_string(s).unwrap();
        let forms = [
            ("raw", s.to_owned()),
            ("json-escaped", json[1..json.len() - 1].to_owned()),
            ("shell-quoted", shell_quoted(s)),
            ("percent-upper", pct(s, true)),
            ("percent-lower", pct(s, false)),
            ("percent-query", pct_query(s)),
        ];
        for (how, form) in forms {
            out.push((format!("{name} {how}"), form));
        }
        // Each line of a multi-line secret (the short `==` line carries nothing of it).
        if s.contains('\n') {
            for (i, line) in s.lines().enumerate().filter(|(_, l)| l.len() >= 4) {
                out.push((format!("{name} line {}", i + 1), line.to_owned()));
            }
        }
    }
    out
}

/// Assert that none of the needles occurs in `bytes`.
#[track_caller]
fn assert_clean(what: &str, bytes: &[u8]) {
    for (name, needle) in needles() {
        let n = needle.as_bytes();
        if let Some(at) = bytes.windows(n.len()).position(|w| w == n) {
            let from = at.saturating_sub(80);
            let to = (at + n.len() + 80).min(bytes.len());
            panic!(
                "{what} reveals the secret ({name}: {needle:?}) near:\n{}",
                String::from_utf8_lossy(&bytes[from..to])
            );
        }
    }
}

#[track_caller]
fn assert_output_clean(what: &str, out: &RunOutput) {
    assert!(
        !out.stderr.contains("panicked"),
        "{what} panicked\n{}",
        out.dump()
    );
    assert_clean(&format!("{what} stdout"), &out.stdout_raw);
    assert_clean(&format!("{what} stderr"), &out.stderr_raw);
}

/// An HTTP server on 127.0.0.1 that answers every request with the request's `Authorization`
/// header in a response header, and the whole request (line, headers, body) in the body.
fn echo_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind echo server");
    let addr = listener.local_addr().expect("local addr");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            // Read the head, then as much body as Content-Length says.
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&req).into_owned();
                if let Some(head_end) = text.find("\r\n\r\n") {
                    let len = text[..head_end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if req.len() >= head_end + 4 + len {
                        break;
                    }
                }
            }
            let text = String::from_utf8_lossy(&req).into_owned();
            let auth = text
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("authorization")
                        .then(|| v.trim().to_owned())
                })
                .unwrap_or_default();
            let resp = format!(
                "HTTP/1.1 200 OK\r\nX-Echo: {auth}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            );
            let _ = conn.write_all(resp.as_bytes());
        }
    });
    format!("http://127.0.0.1:{}", addr.port())
}

fn runbook(dir: &TempDir, url: &str) -> std::path::PathBuf {
    let pem = dir.write("key.pem", PEM).display().to_string();
    dir.write(
        "leaky.yaml",
        &format!(
            r#"runbook: leaky
description: Every way a step can echo a secret.
params:
  pw:
    type: string
    secret: true
secrets:
  hdr: {{env: RB_HDR}}
  tok: {{env: RB_TOK}}
  pem: {{file: {pem}}}
steps:
  - id: echo
    run: printf '%s\n' {{{{ secrets.tok }}}} {{{{ params.pw }}}} {{{{ secrets.hdr }}}}
  - id: env
    env:
      TOKEN: "{{{{ secrets.tok }}}}"
    run: echo "token=$TOKEN"; printf '%s\n' "$TOKEN" >&2
  - id: pem
    run: cat {pem}; printf '%s\n' {{{{ secrets.pem }}}}
  - id: http
    http:
      method: POST
      url: "{url}/echo?t={{{{ secrets.hdr }}}}&p={{{{ params.pw }}}}"
      headers:
        Authorization: "Bearer {{{{ secrets.hdr }}}}"
      body: "{{{{ secrets.tok }}}} {{{{ params.pw }}}} {{{{ secrets.pem }}}}"
    outputs:
      echoed: result.body
      header: result.headers['x-echo']
      direct: secrets.tok ~ "|" ~ params.pw
  - id: later
    needs: [http, echo, env, pem]
    run: echo {{{{ steps.http.outputs.header }}}} {{{{ steps.http.outputs.direct }}}}
    outputs:
      again: result.stdout
  - id: fails
    needs: [later]
    env:
      TOKEN: "{{{{ secrets.tok }}}}"
    run: echo "failing with $TOKEN {{{{ secrets.hdr }}}}"; exit 3
    assert: result.stdout == "nothing"
"#
        ),
    )
}

fn exec(rb: &Path, state: &TempDir, mode: &str) -> RunOutput {
    Runbook::exec(rb)
        .env("RUNBOOK_STATE_DIR", &state.str())
        .env("RB_HDR", HDR)
        .env("RB_TOK", TOK)
        .param("pw", PW)
        .arg("--output")
        .arg(mode)
        .run()
}

fn cli(state: &TempDir, args: &[&str]) -> RunOutput {
    Runbook::new(args.iter().map(|s| (*s).to_owned()))
        .env("RUNBOOK_STATE_DIR", &state.str())
        .run()
}

/// Every file under `dir`, recursively, with its raw bytes.
fn files(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).expect("read state dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else if let Ok(b) = std::fs::read(&p) {
            out.push((p.display().to_string(), b));
        }
    }
}

#[test]
fn no_secret_leaves_through_any_channel_in_any_shape() {
    let dir = TempDir::new("secrets-all");
    let state = TempDir::new("secrets-state");
    let url = echo_server();
    let rb = runbook(&dir, &url);

    let mut run_ids = Vec::new();
    for mode in ["json", "plain", "tty"] {
        let out = exec(&rb, &state, mode);
        out.assert_code(1);
        assert_output_clean(&format!("exec --output {mode}"), &out);
        if mode == "json" {
            // The run really did echo the secrets: the masks are there, in place of each.
            let later = out.of_step("step_succeeded", "later");
            assert_eq!(later.len(), 1, "{}", out.dump());
            let outputs = &later[0]["outputs"];
            assert!(
                outputs["again"].as_str().unwrap().contains("***"),
                "{outputs}"
            );
            let http = out.of_step("step_succeeded", "http");
            let result = &http[0]["result"];
            assert_eq!(result["status"], 200, "{result}");
            assert!(
                result["headers"]["x-echo"]
                    .as_str()
                    .unwrap()
                    .starts_with("Bearer ***"),
                "{result}"
            );
            let body = result["body"].as_str().unwrap();
            assert!(body.contains("POST /echo?t=***"), "{body}");
            let started = out.of("run_started");
            run_ids.push(started[0]["run_id"].as_str().unwrap().to_owned());
            // Each PEM line printed by `cat` is masked on its own.
            let pem_lines: Vec<&str> = out
                .of_step("output", "pem")
                .iter()
                .filter_map(|e| e["line"].as_str())
                .collect();
            assert!(pem_lines.contains(&"***"), "{pem_lines:?}");
        }
    }
    let run = &run_ids[0];

    for args in [
        vec!["logs", run.as_str()],
        vec!["show", run.as_str()],
        vec!["runs"],
        vec!["audit", "export"],
        vec!["audit", "export", "--run", run.as_str()],
        vec!["report", run.as_str(), "--format", "md"],
        vec!["report", run.as_str(), "--format", "html"],
        vec!["report", run.as_str(), "--format", "json"],
        vec!["report", run.as_str(), "--format", "junit"],
    ] {
        let out = cli(&state, &args);
        out.assert_code(0);
        assert!(!out.stdout.is_empty(), "{args:?} printed nothing");
        assert_output_clean(&args.join(" "), &out);
    }

    let mut all = Vec::new();
    files(state.path(), &mut all);
    assert!(
        all.iter().any(|(_, b)| b.starts_with(b"SQLite format 3")),
        "no database in the state dir: {:?}",
        all.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    for (path, bytes) in &all {
        assert_clean(path, bytes);
    }
}

#[test]
fn check_does_not_print_a_secret_url() {
    let dir = TempDir::new("secrets-check");
    let url = echo_server();
    let secret_url = format!("{url}/hooks/S3cretH00kPath'x");
    let rb = dir.write(
        "notify.yaml",
        "runbook: notify\nsecrets:\n  hook: {env: RB_HOOK}\nsteps:\n  - id: notify\n    http: {method: POST, url: \"{{ secrets.hook }}\", body: done}\n",
    );
    for json in [false, true] {
        let mut cmd = Runbook::new(["check".to_owned(), rb.display().to_string()]);
        if json {
            cmd = cmd.arg("--json");
        }
        let out = cmd.env("RB_HOOK", &secret_url).run();
        out.assert_code(0);
        assert!(
            out.stdout.contains("http target ***"),
            "the finding is there, masked\n{}",
            out.dump()
        );
        for needle in ["S3cretH00kPath", "hooks/S3cret"] {
            assert!(
                !out.stdout.contains(needle) && !out.stderr.contains(needle),
                "check printed the secret URL\n{}",
                out.dump()
            );
        }
    }
}

#[test]
fn a_secret_shorter_than_four_characters_is_refused() {
    let dir = TempDir::new("secrets-short");
    let rb = dir.write(
        "short.yaml",
        &format!("runbook: short\nparams:\n  pw: {{type: string, secret: true}}\nsecrets:\n  tok:\n    env: RB_SHORT\nsteps:\n  - id: a\n    run: echo {{{{ secrets.tok }}}} > /dev/null; touch {}\n", dir.join("ran").display()),
    );
    let marker = dir.join("ran");
    let out = Runbook::exec(&rb)
        .env("RB_SHORT", "ab1")
        .param("pw", "long-enough")
        .run();
    out.assert_code(2);
    assert!(
        out.stderr.contains("secret `tok` is too short")
            && out.stderr.contains("at least 4 characters")
            && out.stderr.contains("short.yaml:6:5"),
        "a clear error naming the secret and where it is declared\n{}",
        out.dump()
    );
    assert!(!out.stderr.contains("ab1"), "{}", out.dump());
    assert!(!marker.exists());

    let out = Runbook::exec(&rb)
        .env("RB_SHORT", "long-enough")
        .param("pw", "xyz")
        .run();
    out.assert_code(2);
    assert!(
        out.stderr.contains("param `pw`") && out.stderr.contains("too short"),
        "{}",
        out.dump()
    );
    assert!(!out.stderr.contains("xyz"), "{}", out.dump());
    // Plan refuses it too: it would render the value nowhere, but the run could not mask it.
    let out = Runbook::new(["plan".to_owned(), rb.display().to_string()])
        .param("pw", "xyz")
        .run();
    out.assert_code(2);
}

/// The runbook of [`a_live_run_leaks_nothing_through_its_wal_or_serve`]: echo every secret, then
/// wait for an approval, so the database and its `-wal` are open while the test reads them.
fn waiting_runbook(dir: &TempDir) -> std::path::PathBuf {
    dir.write(
        "waiting.yaml",
        r#"runbook: leaky-waiting
description: Echo secrets, then wait for a person.
params:
  pw:
    type: string
    secret: true
secrets:
  hdr: {env: RB_HDR}
  tok: {env: RB_TOK}
steps:
  - id: echo
    run: printf '%s\n' {{ secrets.tok }} {{ params.pw }} {{ secrets.hdr }}
    outputs:
      seen: result.stdout
  - id: go
    needs: [echo]
    approve: {message: "go on with {{ steps.echo.outputs.seen }}?"}
  - id: after
    needs: [go]
    run: echo "{{ secrets.tok }}"
"#,
    )
}

fn sha256_hex(s: &str) -> String {
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .fold(String::new(), |mut h, b| {
            let _ = write!(h, "{b:02x}");
            h
        })
}

/// `GET path` with a bearer token; the status and the raw response.
fn get(addr: &str, path: &str, token: &str) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connect to runbook serve");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .expect("write request");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let status = String::from_utf8_lossy(&answer)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

/// While a run waits for approval (its database and `-wal` open), every byte of the state
/// directory, and `/runs` of a `runbook serve` sharing it, are free of every form of the secrets.
#[test]
fn a_live_run_leaks_nothing_through_its_wal_or_serve() {
    let dir = TempDir::new("secrets-live");
    let state = TempDir::new("secrets-live-state");
    let rb = waiting_runbook(&dir);
    let mut exec = Command::new(env!("CARGO_BIN_EXE_runbook"))
        .arg("exec")
        .arg(&rb)
        .args(["-p", &format!("pw={PW}"), "--output", "json"])
        .env("RUNBOOK_STATE_DIR", state.str())
        .env("RB_HDR", HDR)
        .env("RB_TOK", TOK)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn runbook exec");
    support::alertmanager::watchdog(exec.id());
    let (tx, rx) = mpsc::channel();
    let stdout = exec.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen: Vec<Vec<u8>> = Vec::new();
    let mut run_id = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen
        .iter()
        .any(|l| String::from_utf8_lossy(l).contains("\"approval_waiting\""))
    {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("the run never waited for approval: {seen:?}"));
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&line)
            && v["event"] == "run_started"
        {
            run_id = v["run_id"].as_str().unwrap_or_default().to_owned();
        }
        seen.push(line);
    }
    assert!(!run_id.is_empty(), "no run_started event: {seen:?}");

    // The database and its write-ahead log, as they are while the run holds them open.
    let mut all = Vec::new();
    files(state.path(), &mut all);
    let wal = all
        .iter()
        .find(|(p, _)| p.ends_with("-wal"))
        .unwrap_or_else(|| {
            panic!(
                "no -wal file while the run is open: {:?}",
                all.iter().map(|(p, _)| p).collect::<Vec<_>>()
            )
        });
    assert!(!wal.1.is_empty(), "the -wal file is empty");
    for (path, bytes) in &all {
        assert_clean(&format!("{path} (live run)"), bytes);
    }

    // `runbook serve` on the same state directory lists the run without its secrets.
    let trivial = dir.write(
        "trivial.yaml",
        "runbook: trivial\ndescription: nothing\nsteps:\n  - id: a\n    run: 'true'\n",
    );
    let triggers = dir.write(
        "triggers.yaml",
        &format!(
            "auth:\n  bearer: {{env: RB_WEBHOOK}}\n  approvers:\n    - {{name: alice, token_sha256: {}}}\ntriggers:\n  - name: t\n    alertname: T\n    runbook: {}\n",
            sha256_hex("alice-token-77e1"),
            trivial.display()
        ),
    );
    let mut serve = Command::new(env!("CARGO_BIN_EXE_runbook"))
        .args(["serve", "--listen", "127.0.0.1:0", "--triggers"])
        .arg(&triggers)
        .env("RUNBOOK_STATE_DIR", state.str())
        .env("RB_WEBHOOK", "webhook-token-31c9")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn runbook serve");
    support::alertmanager::watchdog(serve.id());
    let (atx, arx) = mpsc::channel();
    let err = serve.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        let mut log = Vec::new();
        for line in BufReader::new(err).split(b'\n').map_while(Result::ok) {
            let text = String::from_utf8_lossy(&line).into_owned();
            if let Some(rest) = text.split_once("listening on http://").map(|(_, r)| r) {
                let _ = atx.send(Ok(rest.split_whitespace().next().unwrap_or("").to_owned()));
            }
            log.push(line);
        }
        let _ = atx.send(Err(log));
    });
    let addr = match arx.recv_timeout(Duration::from_secs(20)) {
        Ok(Ok(addr)) => addr,
        other => panic!("runbook serve did not start: {other:?}"),
    };
    let (status, body) = get(&addr, "/runs", "alice-token-77e1");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(
        String::from_utf8_lossy(&body).contains(&run_id),
        "/runs does not list the run: {}",
        String::from_utf8_lossy(&body)
    );
    assert_clean("serve /runs", &body);
    let _ = serve.kill();
    let _ = serve.wait();
    if let Ok(Err(log)) = arx.recv_timeout(Duration::from_secs(5)) {
        for line in &log {
            assert_clean("serve log", line);
        }
    }

    // Let the run finish; its output and the state stay clean.
    let approved = cli(&state, &["approve", &run_id, "go"]);
    approved.assert_code(0);
    assert_output_clean("approve", &approved);
    let done = exec.wait().expect("wait for exec");
    for line in rx.try_iter() {
        seen.push(line);
    }
    let mut stderr = Vec::new();
    if let Some(mut e) = exec.stderr.take() {
        let _ = e.read_to_end(&mut stderr);
    }
    assert_eq!(done.code(), Some(0), "{}", String::from_utf8_lossy(&stderr));
    for line in &seen {
        assert_clean("exec --output json (live run)", line);
    }
    assert_clean("exec stderr (live run)", &stderr);
    let mut all = Vec::new();
    files(state.path(), &mut all);
    for (path, bytes) in &all {
        assert_clean(&format!("{path} (finished run)"), bytes);
    }
}

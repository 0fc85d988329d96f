//! Template values are data in every context: hostile values delivered by `-p`, by a params
//! file and by an alert label through a real `runbook serve` never execute, in any shell quoting
//! context, and arrive byte-exact; in URLs they cannot add segments or parameters or change the
//! host (a real HTTP server on 127.0.0.1 records what arrives); in SQL they are bound parameters
//! (a real `PostgreSQL`); in `k8s` names they cannot change the request path (the API double).
//! Contexts where no value can be data are compile errors, located at the template.

mod support;

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Runbook, TempDir};

/// The marker every payload tries to create.
const MARKER: &str = "pwned";

/// Hostile values: each would create `dir/pwned` if the shell parsed it as code.
fn payloads(dir: &Path) -> Vec<String> {
    let m = dir.join(MARKER);
    let m = m.to_str().expect("utf-8 path");
    vec![
        format!("$(touch {m})"),
        format!("`touch {m}`"),
        format!("\"; touch {m}; \""),
        format!("'; touch {m}; '"),
        format!("x\ntouch {m}"),
        format!(";touch${{IFS}}{m}"),
        format!("a'b\"c$(touch {m})`touch {m}`\\"),
        "*".to_owned(),
        "-rf /nonexistent *".to_owned(),
        format!("EOF\ntouch {m}\nEOF"),
    ]
}

/// One step per quoting context; each writes what it received to `out-<step>` in `dir`.
/// `expect` maps a value to what that step must write.
const CONTEXTS: &[(&str, &str)] = &[
    ("bare", "printf '%s' {{ params.v }} > out-bare"),
    ("double", "printf '%s' \"{{ params.v }}\" > out-double"),
    (
        "double-mixed",
        "printf '%s' \"<{{ params.v }}>\" > out-double-mixed",
    ),
    (
        "between-single",
        "printf '%s' 'a'{{ params.v }}'b' > out-between-single",
    ),
    (
        "assignment",
        "X={{ params.v }}; printf '%s' \"$X\" > out-assignment",
    ),
    (
        "cmdsubst",
        "x=$(printf '%s.' {{ params.v }}); printf '%s' \"${x%.}\" > out-cmdsubst",
    ),
    (
        "cmdsubst-in-double",
        "x=\"$(printf '%s.' \"{{ params.v }}\")\"; printf '%s' \"${x%.}\" > out-cmdsubst-in-double",
    ),
    (
        "case",
        "case {{ params.v }} in {{ params.v }}) printf match > out-case;; *) printf nomatch > out-case;; esac",
    ),
    (
        "words",
        "for w in {{ params.v }}; do printf '%s|' \"$w\"; done > out-words",
    ),
    ("heredoc", "cat > out-heredoc <<EOF\n{{ params.v }}\nEOF"),
    (
        "heredoc-dash",
        "cat > out-heredoc-dash <<-EOF\n\t{{ params.v }}\n\tEOF",
    ),
    ("env", "printf '%s' \"$V\" > out-env"),
    ("stdin", "cat > out-stdin"),
    (
        "loop",
        "{% for i in [1, 2] %}printf '%s' {{ params.v }} >> out-loop; {% endfor %}",
    ),
];

fn expected(step: &str, v: &str) -> String {
    match step {
        "double-mixed" => format!("<{v}>"),
        "between-single" => format!("a{v}b"),
        "case" => "match".to_owned(),
        "words" => format!("{v}|"),
        "heredoc" | "heredoc-dash" => format!("{v}\n"),
        "loop" => format!("{v}{v}"),
        _ => v.to_owned(),
    }
}

/// The runbook of every context; `dir` is where the steps write.
fn contexts_runbook() -> String {
    let mut rb = String::from(
        "runbook: injection-contexts\nparams:\n  v: {type: string}\n  dir: {type: string}\nsteps:\n",
    );
    for (id, run) in CONTEXTS {
        let _ = write!(rb, "  - id: {id}\n    cwd: \"{{{{ params.dir }}}}\"\n");
        if *id == "env" {
            rb.push_str("    env: {V: \"{{ params.v }}\"}\n");
        }
        if *id == "stdin" {
            rb.push_str("    stdin: \"{{ params.v }}\"\n");
        }
        rb.push_str("    run: |\n");
        for line in run.lines() {
            rb.push_str("      ");
            rb.push_str(line);
            rb.push('\n');
        }
    }
    rb
}

/// Assert that no step executed the payload and each wrote the value byte-exact.
#[track_caller]
fn assert_data(dir: &Path, v: &str, how: &str) {
    assert!(
        !dir.join(MARKER).exists(),
        "{how}: the value {v:?} was executed"
    );
    for (id, _) in CONTEXTS {
        let got = std::fs::read(dir.join(format!("out-{id}")))
            .unwrap_or_else(|e| panic!("{how}: step {id} wrote nothing ({e}) for {v:?}"));
        assert_eq!(
            String::from_utf8_lossy(&got),
            expected(id, v),
            "{how}: step {id} received another value than {v:?}"
        );
    }
}

#[test]
fn hostile_params_are_data_in_every_shell_context_via_p() {
    let tmp = TempDir::new("inject-p");
    let rb = tmp.write("contexts.yaml", &contexts_runbook());
    for (i, v) in payloads(tmp.path()).iter().enumerate() {
        let dir = tmp.join(&format!("p{i}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let out = Runbook::exec(&rb)
            .param("v", v)
            .param("dir", dir.to_str().expect("utf-8"))
            .yes()
            .json()
            .max_parallel(1)
            .run();
        out.assert_code(0);
        assert_data(&dir, v, "-p");
        // The journal shows the value as the command would read it, quoted: never raw syntax.
        let shown = out.of_step("command", "double")[0]["command"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(!shown.contains("\"$(touch"), "{shown}");
    }
}

#[test]
fn hostile_params_are_data_in_every_shell_context_via_params_file() {
    let tmp = TempDir::new("inject-file");
    let rb = tmp.write("contexts.yaml", &contexts_runbook());
    for (i, v) in payloads(tmp.path()).iter().enumerate() {
        let dir = tmp.join(&format!("f{i}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let params = tmp.write(
            &format!("params-{i}.json"),
            &json!({"v": v, "dir": dir.to_str().expect("utf-8")}).to_string(),
        );
        let out = Runbook::exec(&rb)
            .arg("--params-file")
            .arg(params.to_str().expect("utf-8"))
            .yes()
            .json()
            .max_parallel(1)
            .run();
        out.assert_code(0);
        assert_data(&dir, v, "--params-file");
    }
}

#[test]
fn a_value_in_cwd_is_a_directory_name_not_code() {
    let tmp = TempDir::new("inject-cwd");
    let name = format!("$(touch {}); x", tmp.join(MARKER).display()).replace('/', "_");
    let dir = tmp.join(&name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let rb = tmp.write(
        "cwd.yaml",
        "runbook: cwd\nparams:\n  d: {type: string}\nsteps:\n  - id: here\n    cwd: \"{{ params.d }}\"\n    run: pwd > here.txt\n",
    );
    let out = Runbook::exec(&rb)
        .param("d", dir.to_str().expect("utf-8"))
        .yes()
        .run();
    out.assert_code(0);
    assert!(!tmp.join(MARKER).exists());
    assert_eq!(
        std::fs::read_to_string(dir.join("here.txt"))
            .expect("here.txt")
            .trim_end(),
        dir.to_str().expect("utf-8")
    );
}

/// A secret travels in the environment: it is never on the shell's command line.
#[test]
fn a_secret_is_not_on_the_command_line() {
    let tmp = TempDir::new("inject-ps");
    let rb = tmp.write(
        "ps.yaml",
        "runbook: ps\nsecrets:\n  tok: {env: RB_TEST_TOKEN}\nparams:\n  dir: {type: string}\nsteps:\n  - id: look\n    cwd: \"{{ params.dir }}\"\n    run: cat /proc/$$/cmdline > cmdline; echo \"{{ secrets.tok }}\" > /dev/null\n",
    );
    let secret = "s3cr3t-'value\"-$(touch x)";
    let out = Runbook::exec(&rb)
        .env("RB_TEST_TOKEN", secret)
        .param("dir", &tmp.str())
        .yes()
        .json()
        .run();
    out.assert_code(0);
    let cmdline = std::fs::read(tmp.join("cmdline")).expect("cmdline");
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(cmdline.contains("${RB_V1}"), "{cmdline}");
    assert!(
        !cmdline.contains("s3cr3t"),
        "the secret is on the command line: {cmdline}"
    );
    assert!(!out.stdout.contains("s3cr3t"), "{}", out.dump());
    assert!(!tmp.join("x").exists());
}

// ---------------------------------------------------------------------------------------------
// Contexts that cannot carry a value: compile errors at the template.

#[test]
fn unsafe_shell_contexts_are_compile_errors_with_location_and_fix() {
    let tmp = TempDir::new("inject-validate");
    let cases: &[(&str, &str, &str)] = &[
        (
            "single",
            "    run: echo 'deploying {{ params.v }}'\n",
            "single quotes",
        ),
        (
            "backticks",
            "    run: echo `echo {{ params.v }}`\n",
            "backticks",
        ),
        (
            "param-exp",
            "    run: echo ${X:-{{ params.v }}}\n",
            "parameter expansion",
        ),
        (
            "arith",
            "    run: echo $((1 + {{ params.v }}))\n",
            "arithmetic",
        ),
        (
            "quoted-heredoc",
            "    run: |\n      cat <<'EOF'\n      {{ params.v }}\n      EOF\n",
            "quoted here-document",
        ),
        (
            "backslash",
            "    run: echo \\{{ params.v }}\n",
            "right after a `\\`",
        ),
    ];
    for (name, run, what) in cases {
        let text =
            format!("runbook: bad\nparams:\n  v: {{type: string}}\nsteps:\n  - id: s\n{run}");
        let file = tmp.write(&format!("{name}.yaml"), &text);
        let out = Runbook::new([
            "validate".to_owned(),
            file.to_str().expect("utf-8").to_owned(),
        ])
        .run();
        out.assert_code(2);
        let all = format!("{}{}", out.stdout, out.stderr);
        assert!(all.contains(what), "{name}: {all}");
        assert!(all.contains("unsafe-interpolation"), "{name}: {all}");
        // Located at the template's `{{`: line and column of the file.
        let (line, col) = text
            .lines()
            .enumerate()
            .find_map(|(i, l)| l.find("{{ params.v").map(|c| (i + 1, c + 1)))
            .expect("template in the text");
        assert!(
            all.contains(&format!("{name}.yaml:{line}:{col}")),
            "{name}: expected {name}.yaml:{line}:{col} in\n{all}"
        );
    }
    // `| safe` is the explicit opt-out: accepted.
    let ok = tmp.write(
        "safe.yaml",
        "runbook: ok\nparams:\n  v: {type: string}\nsteps:\n  - id: s\n    run: echo '{{ params.v | safe }}' \"{{ params.v }}\"\n",
    );
    Runbook::new([
        "validate".to_owned(),
        ok.to_str().expect("utf-8").to_owned(),
    ])
    .run()
    .assert_code(0);
}

#[test]
fn every_shipped_runbook_still_validates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in ["runbooks", "runbooks/examples", "tests/corpus/valid"] {
        for e in std::fs::read_dir(root.join(dir))
            .expect("read dir")
            .flatten()
        {
            if e.path().extension().is_some_and(|x| x == "yaml") {
                files.push(e.path());
            }
        }
    }
    assert!(files.len() >= 6, "{files:?}");
    for f in files {
        let out =
            Runbook::new(["validate".to_owned(), f.to_str().expect("utf-8").to_owned()]).run();
        assert_eq!(out.code, Some(0), "{}: {}", f.display(), out.dump());
    }
}

// ---------------------------------------------------------------------------------------------
// Alert labels through a real `runbook serve`.

const TOKEN: &str = "inject-tok-5b1e";

struct Serve {
    child: Child,
    addr: String,
    stdout: Arc<Mutex<Vec<String>>>,
}

impl Serve {
    fn start(triggers: &Path, state: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_runbook"))
            .args(["serve", "--triggers"])
            .arg(triggers)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--server-id",
                "inject",
                "--output",
                "json",
            ])
            .arg("--state-dir")
            .arg(state)
            .env("RUNBOOK_SERVE_TOKEN", TOKEN)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn runbook serve");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("stdout");
        let o = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                o.lock().expect("lock").push(line);
            }
        });
        let err = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            let mut log = Vec::new();
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(rest) = line.split_once("listening on http://").map(|(_, r)| r)
                    && let Some(t) = tx.take()
                {
                    let _ = t.send(Ok(rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned()));
                }
                log.push(line);
            }
            if let Some(t) = tx.take() {
                let _ = t.send(Err(log.join("\n")));
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Ok(a)) => a,
            Ok(Err(log)) => panic!("runbook serve did not start:\n{log}"),
            Err(e) => panic!("runbook serve did not start within 20s: {e}"),
        };
        Self {
            child,
            addr,
            stdout,
        }
    }

    fn post(&self, body: &str) -> (u16, String) {
        let mut s = TcpStream::connect(&self.addr).expect("connect serve");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let req = format!(
            "POST /alerts HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        s.write_all(req.as_bytes()).expect("write");
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("read");
        let code = answer
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, answer)
    }

    fn finished(&self) -> usize {
        self.stdout
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["event"] == "run_finished")
            .count()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn hostile_alert_labels_are_data_through_serve() {
    let tmp = TempDir::new("inject-serve");
    let state = TempDir::new("inject-serve-state");
    let rb = tmp.write("contexts.yaml", &contexts_runbook());
    let triggers = tmp.write(
        "triggers.yaml",
        &format!(
            "auth:\n  bearer: {{env: RUNBOOK_SERVE_TOKEN}}\nmax_runs: 40\ntriggers:\n  - name: inject\n    alertname: Inject\n    mode: auto\n    runbook: {}\n    params:\n      v: \"{{{{ labels.v }}}}\"\n      dir: \"{}/{{{{ labels.n }}}}\"\n",
            rb.display(),
            tmp.str()
        ),
    );
    let serve = Serve::start(&triggers, state.path());
    let payloads = payloads(tmp.path());
    for (i, v) in payloads.iter().enumerate() {
        std::fs::create_dir_all(tmp.join(&format!("{i}"))).expect("mkdir");
        let body = json!({
            "version": "4", "groupKey": "{}:{alertname=\"Inject\"}", "status": "firing",
            "receiver": "runbook", "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
            "externalURL": "http://am",
            "alerts": [{
                "status": "firing",
                "labels": {"alertname": "Inject", "v": v, "n": i.to_string()},
                "annotations": {}, "startsAt": "2026-11-25T10:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prometheus/graph",
                "fingerprint": format!("fp-{i}"),
            }],
        })
        .to_string();
        // The previous run's lock is released just after its `run_finished` event: a post in
        // between is answered `duplicate`, so try again for a while.
        let posted = Instant::now();
        loop {
            let (code, answer) = serve.post(&body);
            assert_eq!(code, 200, "{answer}");
            if answer.contains("\"started\"") {
                break;
            }
            assert!(
                answer.contains("\"duplicate\"") && posted.elapsed() < Duration::from_secs(10),
                "{answer}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // One at a time: serve locks a runbook per alert while its run is in progress.
        let started = Instant::now();
        while serve.finished() < i + 1 {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "run {i} did not finish:\n{}",
                serve.stdout.lock().expect("lock").join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for (i, v) in payloads.iter().enumerate() {
        assert_data(&tmp.join(&format!("{i}")), v, "alert label");
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP: a real server on 127.0.0.1 records each request line and headers.

struct Recorder {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                s.lock()
                    .expect("lock")
                    .push(String::from_utf8_lossy(&head).into_owned());
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            }
        });
        Self { port, seen }
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.seen.lock().expect("lock"))
    }
}

/// Percent-decode (the test's own, to compare what arrived with what was sent).
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).expect("ascii");
            out.push(u8::from_str_radix(hex, 16).expect("hex"));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).expect("utf-8")
}

#[test]
fn hostile_url_values_stay_in_their_segment_or_parameter() {
    let server = Recorder::start();
    let tmp = TempDir::new("inject-http");
    let rb = tmp.write(
        "http.yaml",
        "runbook: http\nparams:\n  port: {type: string}\n  v: {type: string}\nsteps:\n  - id: get\n    http:\n      url: \"http://127.0.0.1:{{ params.port }}/api/{{ params.v }}/items?q={{ params.v }}&x=1#{{ params.v }}\"\n      headers: {X-V: \"{{ params.v }}\"}\n",
    );
    let port = server.port.to_string();
    for v in [
        "../admin",
        "a/b",
        "x?y=1&z=2",
        "#frag",
        "%2e%2e",
        "a b+c",
        "é/✓",
        "@evil.example:80",
    ] {
        let out = Runbook::exec(&rb)
            .param("port", &port)
            .param("v", v)
            .yes()
            .json()
            .run();
        out.assert_code(0);
        let seen = server.take();
        assert_eq!(seen.len(), 1, "{v}: {seen:?}");
        let line = seen[0].lines().next().unwrap_or_default();
        let target = line.split(' ').nth(1).expect("request target");
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        assert_eq!(segments.len(), 3, "{v}: {target}");
        assert_eq!(segments[0], "api");
        assert_eq!(decode(segments[1]), v, "{target}");
        assert_eq!(segments[2], "items");
        let pairs: Vec<(&str, &str)> = query
            .split('&')
            .map(|p| p.split_once('=').unwrap_or((p, "")))
            .collect();
        assert_eq!(pairs.len(), 2, "{v}: {target}");
        assert_eq!(pairs[0].0, "q");
        assert_eq!(decode(pairs[0].1), v);
        assert_eq!(pairs[1], ("x", "1"));
        assert!(
            seen[0]
                .to_ascii_lowercase()
                .contains(&format!("host: 127.0.0.1:{port}")),
            "{}",
            seen[0]
        );
    }
    // `..` as a whole segment would remove one: refused before any request.
    for v in ["..", "."] {
        let out = Runbook::exec(&rb)
            .param("port", &port)
            .param("v", v)
            .yes()
            .json()
            .run();
        out.assert_code(1);
        assert!(
            out.stdout.contains("structure of the URL"),
            "{}",
            out.dump()
        );
        assert!(server.take().is_empty(), "{v} reached the server");
    }
    // A port that is not a number, and a header with CR/LF: refused, nothing sent.
    let out = Runbook::exec(&rb)
        .param("port", &format!("{port}@evil.example"))
        .param("v", "a")
        .yes()
        .json()
        .run();
    out.assert_code(1);
    assert!(out.stdout.contains("not a port number"), "{}", out.dump());
    let out = Runbook::exec(&rb)
        .param("port", &port)
        .param("v", "a\r\nX-Injected: 1")
        .yes()
        .json()
        .run();
    out.assert_code(1);
    assert!(out.stdout.contains("line break"), "{}", out.dump());
    assert!(server.take().is_empty(), "a request was sent");
}

#[test]
fn a_url_template_in_the_host_of_a_literal_url_is_a_compile_error() {
    let tmp = TempDir::new("inject-http-host");
    let text = "runbook: host\nparams:\n  h: {type: string}\nsteps:\n  - id: get\n    http: {url: \"https://{{ params.h }}.example.com/x\"}\n";
    let file = tmp.write("host.yaml", text);
    let out = Runbook::new([
        "validate".to_owned(),
        file.to_str().expect("utf-8").to_owned(),
    ])
    .run();
    out.assert_code(2);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(all.contains("scheme or host"), "{all}");
    let col = text
        .lines()
        .nth(5)
        .and_then(|l| l.find("{{"))
        .expect("template")
        + 1;
    assert!(all.contains(&format!("host.yaml:6:{col}")), "{all}");
    // A base template that starts the URL is the base, like a whole-URL template.
    let ok = tmp.write(
        "base.yaml",
        "runbook: base\nparams:\n  b: {type: string}\n  id: {type: string}\nsteps:\n  - id: get\n    http: {url: \"{{ params.b }}/items/{{ params.id }}\"}\n",
    );
    Runbook::new([
        "validate".to_owned(),
        ok.to_str().expect("utf-8").to_owned(),
    ])
    .run()
    .assert_code(0);
}

// ---------------------------------------------------------------------------------------------
// SQL: a real PostgreSQL.

#[test]
fn hostile_sql_values_are_bound_parameters() {
    let pg = support::pg::PgCluster::shared();
    let db = support::pg::unique_name("inject");
    pg.create_role(&db, "pw-inject");
    pg.create_database(&db, &db);
    let dsn = pg.dsn(&db, "pw-inject", &db);
    pg.try_psql_as(&db, "pw-inject", &db, "CREATE TABLE t (v text)")
        .expect("create table");
    let tmp = TempDir::new("inject-sql");
    let rb = tmp.write(
        "sql.yaml",
        "runbook: sql\nparams:\n  dsn: {type: string}\n  v: {type: string}\n  name: {type: string}\nsteps:\n  - id: insert\n    sql:\n      dsn: \"{{ params.dsn }}\"\n      query: INSERT INTO t (v) VALUES ({{ params.v }})\n  - id: named\n    needs: [insert]\n    sql:\n      dsn: \"{{ params.dsn }}\"\n      query: CREATE TABLE {{ params.name | ident }} (x int)\n",
    );
    let v = "'); DROP TABLE t; --";
    let name = "x\"; DROP TABLE t; --";
    let out = Runbook::exec(&rb)
        .param("dsn", &dsn)
        .param("v", v)
        .param("name", name)
        .yes()
        .json()
        .run();
    out.assert_code(0);
    let rows = pg
        .try_psql_as(&db, "pw-inject", &db, "SELECT v FROM t")
        .expect("t still exists");
    assert_eq!(rows.trim(), v);
    let tables = pg
        .try_psql_as(
            &db,
            "pw-inject",
            &db,
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
        )
        .expect("tables");
    assert!(tables.lines().any(|l| l.trim() == "t"), "{tables}");
    assert!(tables.lines().any(|l| l.trim() == name), "{tables}");

    // Inside a quoted literal: a compile error at the template.
    let bad = tmp.write(
        "quoted.yaml",
        "runbook: q\nparams:\n  v: {type: string}\nsteps:\n  - id: s\n    sql: {dsn: x, query: \"SELECT * FROM t WHERE v = '{{ params.v }}'\"}\n",
    );
    let out = Runbook::new([
        "validate".to_owned(),
        bad.to_str().expect("utf-8").to_owned(),
    ])
    .run();
    out.assert_code(2);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(
        all.contains("quoted SQL literal") && all.contains("| ident"),
        "{all}"
    );
    assert!(all.contains("quoted.yaml:6:"), "{all}");

    // A whole query from one template would be bound, not run: refused, `| safe` says it is SQL.
    let whole = tmp.write(
        "whole.yaml",
        "runbook: w\nparams:\n  v: {type: string}\nsteps:\n  - id: s\n    sql: {dsn: x, query: \"{{ params.v }}\"}\n",
    );
    let out = Runbook::new([
        "validate".to_owned(),
        whole.to_str().expect("utf-8").to_owned(),
    ])
    .run();
    out.assert_code(2);
    assert!(
        format!("{}{}", out.stdout, out.stderr).contains("| safe"),
        "{}",
        out.dump()
    );
}

// ---------------------------------------------------------------------------------------------
// k8s: the API double sees no other path.

#[test]
fn hostile_k8s_names_never_reach_a_request_path() {
    use support::k8s_double::{K8sDouble, write_kubeconfig};
    let d = K8sDouble::start("tok-inject");
    d.insert(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}}));
    d.insert(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": "prod"}, "data": {"a": "b"}}));
    let tmp = TempDir::new("inject-k8s");
    let kubeconfig = write_kubeconfig(tmp.path(), &[("primary", &d)], "primary");
    let rb = tmp.write(
        "k8s.yaml",
        "runbook: k8s\nparams:\n  ns: {type: string}\n  name: {type: string}\nsteps:\n  - id: get\n    mutates: false\n    k8s:\n      namespace: \"{{ params.ns }}\"\n      get: {api_version: v1, kind: ConfigMap, name: \"{{ params.name }}\"}\n",
    );
    let run = |ns: &str, name: &str| {
        Runbook::exec(&rb)
            .param("ns", ns)
            .param("name", name)
            .yes()
            .json()
            .env("KUBECONFIG", kubeconfig.to_str().expect("utf-8"))
            .run()
    };
    run("prod", "cfg").assert_code(0);
    let before = d.requests().len();
    for (ns, name) in [
        ("prod", "../../../api/v1/namespaces/kube-system/secrets/x"),
        ("prod", "cfg?watch=true"),
        ("prod", "cfg/status"),
        ("prod", ".."),
        ("prod", "CFG"),
        ("../kube-system", "cfg"),
        ("prod/configmaps/cfg#", "cfg"),
        ("a.b", "cfg"),
    ] {
        let out = run(ns, name);
        out.assert_code(1);
        assert!(
            out.stdout.contains("not a valid Kubernetes name"),
            "{ns} {name}: {}",
            out.dump()
        );
    }
    let after = d.requests();
    assert_eq!(
        after.len(),
        before,
        "requests were made: {:?}",
        &after[before..]
    );
    for r in &after {
        assert!(!r.path.contains(".."), "{r:?}");
    }
}

/// The compiler cannot see every context (a `| safe` fragment may open a quote); the engine
/// checks the rendered command again and refuses it before anything runs.
#[test]
fn a_context_known_only_after_rendering_is_refused_at_run_time() {
    let tmp = TempDir::new("inject-runtime");
    let rb = tmp.write(
        "late.yaml",
        "runbook: late\nparams:\n  q: {type: string}\n  v: {type: string}\n  dir: {type: string}\nsteps:\n  - id: s\n    cwd: \"{{ params.dir }}\"\n    run: echo {{ params.q | safe }}{{ params.v }}' > out.txt\n",
    );
    let v = format!("$(touch {})", tmp.join(MARKER).display());
    let out = Runbook::exec(&rb)
        .param("q", "'")
        .param("v", &v)
        .param("dir", &tmp.str())
        .yes()
        .json()
        .run();
    out.assert_code(1);
    assert!(out.stdout.contains("single quotes"), "{}", out.dump());
    assert!(!tmp.join(MARKER).exists());
    assert!(!tmp.join("out.txt").exists(), "the command ran");
}

// ---------------------------------------------------------------------------------------------
// PromQL: a real Prometheus scraping an app whose series the test controls.

/// A label value as the Prometheus text exposition format writes it.
fn exposition_escape(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// A runbook whose one gate checks `query` (a literal block line) with `assert`.
fn prom_runbook(dir: &TempDir, name: &str, query: &str, assert: &str) -> PathBuf {
    dir.write(
        name,
        &format!(
            "runbook: prom-inject\nparams:\n  v: {{type: string}}\nsteps:\n  - id: gate\n    verify:\n      - prometheus:\n          query: |-\n            {query}\n        assert: {assert}\n"
        ),
    )
}

fn prom_exec(file: &Path, url: &str, v: &str) -> support::RunOutput {
    Runbook::exec(file)
        .json()
        .param("v", v)
        .env("RUNBOOK_PROMETHEUS_URL", url)
        .run()
}

fn gate_detail(out: &support::RunOutput) -> String {
    out.of_step("check", "gate")
        .last()
        .and_then(|e| e["detail"].as_str())
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn hostile_promql_label_values_cannot_change_the_query() {
    let app = support::prom::MetricsApp::start();
    let prom = support::prom::Prometheus::start(&[&app.target]);
    // A series whose label value is itself hostile: escaped, the value must select exactly it.
    let hostile = "\"} or vector(1) # \\ \n' `x";
    app.add(&exposition_escape(hostile), 7.0);
    app.set_rate("200", 10.0);
    let dir = TempDir::new("inject-prom");
    let rate = r#"sum(rate(http_requests_total{job="{{ params.v }}"}[1m]))"#;

    // The control: the gate passes for the real job, so the refusals below are not vacuous.
    let file = dir.write(
        "control.yaml",
        &format!(
            "runbook: prom-inject\nparams:\n  v: {{type: string}}\nsteps:\n  - id: gate\n    verify:\n      - prometheus:\n          query: |-\n            {rate}\n        assert: result.value > 0\n        within: 30s\n        interval: 500ms\n"
        ),
    );
    prom_exec(&file, &prom.url, "app").assert_code(0);

    // Hostile jobs: the value stays one label value; no series has it, so the gate fails on an
    // empty result, never on `vector(1)`.
    let file = prom_runbook(&dir, "rate.yaml", rate, "result.value > 0");
    for v in [
        "\"} or vector(1) #",
        "app\"} or vector(1) #",
        "app\\\"} or vector(1) #",
        "app\\",
        "app\"}\nor vector(1)",
        "app\"} or vector(1) or x{a=\"",
    ] {
        let out = prom_exec(&file, &prom.url, v);
        out.assert_code(1);
        assert!(
            gate_detail(&out).starts_with("query returned no data (on_empty: fail): `"),
            "value {v:?}\n{}",
            out.dump()
        );
    }
    let single = prom_runbook(
        &dir,
        "single.yaml",
        "sum(rate(http_requests_total{job='{{ params.v }}'}[1m]))",
        "result.value > 0",
    );
    prom_exec(&single, &prom.url, "app").assert_code(0);
    let out = prom_exec(&single, &prom.url, "app'} or vector(1) #");
    out.assert_code(1);
    assert!(gate_detail(&out).starts_with("query returned no data (on_empty: fail): `"));

    // The hostile value selects exactly the series labelled with it, in every quoting.
    for (name, query) in [
        (
            "dq.yaml",
            r#"sum(http_requests_total{code="{{ params.v }}"})"#,
        ),
        ("sq.yaml", "sum(http_requests_total{code='{{ params.v }}'})"),
        (
            "re.yaml",
            r#"sum(http_requests_total{code=~"{{ params.v | regex_escape }}"})"#,
        ),
    ] {
        let file = prom_runbook(&dir, name, query, "result.value == 7");
        let out = prom_exec(&file, &prom.url, hostile);
        out.assert_code(0);
        assert!(
            gate_detail(&out).starts_with("value 7"),
            "{name}\n{}",
            out.dump()
        );
    }

    // Regex metacharacters in a value still act as regex; `| regex_escape` makes them literal.
    let re = prom_runbook(
        &dir,
        "re2.yaml",
        r#"sum(rate(http_requests_total{job=~"{{ params.v }}"}[1m]))"#,
        "result.value > 0",
    );
    prom_exec(&re, &prom.url, "a.p").assert_code(0);
    let re = prom_runbook(
        &dir,
        "re3.yaml",
        r#"sum(rate(http_requests_total{job=~"{{ params.v | regex_escape }}"}[1m]))"#,
        "result.value > 0",
    );
    prom_exec(&re, &prom.url, "a.p").assert_code(1);

    // Outside a string only a plain number or duration is data: anything else is refused
    // before the query is sent.
    let bare = prom_runbook(
        &dir,
        "bare.yaml",
        &format!(
            "{} > {{{{ params.v }}}}",
            rate.replace("{{ params.v }}", "app")
        ),
        "result.value > 0",
    );
    prom_exec(&bare, &prom.url, "0").assert_code(0);
    let out = prom_exec(&bare, &prom.url, "0 or vector(1)");
    out.assert_code(1);
    let detail = gate_detail(&out);
    assert!(
        detail.contains("outside a PromQL string and is not a plain number or duration"),
        "{}",
        out.dump()
    );
    assert!(
        !out.of_step("command", "gate")
            .iter()
            .any(|c| c["command"].as_str().is_some_and(|s| s.contains("vector"))),
        "the refused query was sent\n{}",
        out.dump()
    );
    let window = prom_runbook(
        &dir,
        "window.yaml",
        r#"sum(rate(http_requests_total{job="app"}[{{ params.v }}]))"#,
        "result.value > 0",
    );
    prom_exec(&window, &prom.url, "1m").assert_code(0);
    prom_exec(&window, &prom.url, "1m]) or vector(1) or (x[1m").assert_code(1);
}

#[test]
fn a_promql_value_in_a_comment_is_a_compile_error_and_the_url_follows_http_rules() {
    let tmp = TempDir::new("inject-prom-compile");
    let file = prom_runbook(
        &tmp,
        "comment.yaml",
        "up # {{ params.v }}",
        "result.value > 0",
    );
    let out = Runbook::new([
        "validate".to_owned(),
        file.to_str().expect("utf-8").to_owned(),
    ])
    .run();
    out.assert_code(2);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(all.contains("PromQL `#` comment"), "{all}");
    // Line 9 of the file, column of `{{` after the block's 12-space indent.
    assert!(all.contains("comment.yaml:9:18"), "{all}");
    // After an author's `\` the value's own escapes would pair with it: refused too.
    let file = prom_runbook(
        &tmp,
        "bs.yaml",
        r#"up{job="a\{{ params.v }}"}"#,
        "result.value > 0",
    );
    let out = Runbook::new([
        "validate".to_owned(),
        file.to_str().expect("utf-8").to_owned(),
    ])
    .run();
    out.assert_code(2);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(
        all.contains("right after a `\\` in a PromQL string") && all.contains("bs.yaml:9:23"),
        "{all}"
    );
    let host = tmp.write(
        "host.yaml",
        "runbook: host\nparams:\n  v: {type: string}\nsteps:\n  - id: gate\n    verify:\n      - prometheus: {query: up, url: \"http://{{ params.v }}.example.com:9090\"}\n",
    );
    let out = Runbook::new([
        "validate".to_owned(),
        host.to_str().expect("utf-8").to_owned(),
    ])
    .run();
    out.assert_code(2);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(all.contains("scheme or host"), "{all}");
    assert!(all.contains("host.yaml:7:"), "{all}");
}

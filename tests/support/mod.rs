//! Shared helpers for the black-box tests of the `runbook` binary: a builder around the
//! process, unique temporary directories, and queries over the JSON event stream.

#![allow(
    dead_code,
    reason = "each test crate uses a different subset of the helpers"
)]

pub mod alertmanager;
pub mod app;
pub mod k8s_double;
pub mod pg;
pub mod prom;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Longest a single invocation may take before the test gives up and kills it.
const HARD_LIMIT: Duration = Duration::from_secs(30);

/// A tool the test drives for real, found on PATH or at one of its Debian paths.
///
/// A missing tool fails the test, with the package that provides it: a test never passes by
/// skipping what it exists to check (`scripts/test` installs every one of them).
#[track_caller]
pub fn tool(name: &str, debian_paths: &[&str], package: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    on_path
        .or_else(|| debian_paths.iter().map(PathBuf::from).find(|p| p.is_file()))
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed: apt-get install {package} (scripts/test installs it); \
                 this test drives the real tool and is never skipped"
            )
        })
}

/// A fixture under `tests/fixtures/exec`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/exec")
        .join(name)
}

/// A unique directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh, empty directory whose name includes `tag`.
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "runbook-test-{tag}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The directory as a string (for `-p dir=...`).
    pub fn str(&self) -> String {
        self.0.to_str().expect("utf-8 temp path").to_owned()
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Write a file inside the directory and return its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.join(name);
        std::fs::write(&p, contents).expect("write file");
        p
    }

    /// The contents of a file inside the directory, if it exists.
    pub fn read(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.join(name)).ok()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One invocation of the `runbook` binary, built up and then run.
#[derive(Debug)]
pub struct Runbook {
    args: Vec<String>,
    env: Vec<(String, String)>,
    env_remove: Vec<String>,
    cwd: Option<PathBuf>,
}

impl Runbook {
    /// `runbook exec FILE`.
    pub fn exec(file: impl AsRef<Path>) -> Self {
        Self::new(["exec".to_owned(), path_arg(file.as_ref())])
    }

    /// `runbook exec --plan PLAN` (no runbook argument: the plan names it).
    pub fn exec_plan(plan: impl AsRef<Path>) -> Self {
        Self::new([
            "exec".to_owned(),
            "--plan".to_owned(),
            path_arg(plan.as_ref()),
        ])
    }

    /// `runbook plan FILE --out OUT`.
    pub fn plan(file: impl AsRef<Path>, out: impl AsRef<Path>) -> Self {
        Self::new([
            "plan".to_owned(),
            path_arg(file.as_ref()),
            "--out".to_owned(),
            path_arg(out.as_ref()),
        ])
    }

    /// Any command line.
    pub fn new(args: impl IntoIterator<Item = String>) -> Self {
        Self {
            args: args.into_iter().collect(),
            env: Vec::new(),
            env_remove: Vec::new(),
            cwd: None,
        }
    }

    /// `-p name=value`.
    #[must_use]
    pub fn param(mut self, name: &str, value: &str) -> Self {
        self.args.push("-p".to_owned());
        self.args.push(format!("{name}={value}"));
        self
    }

    /// `-p dir=<temp dir>`, the convention of every fixture.
    #[must_use]
    pub fn dir(self, dir: &TempDir) -> Self {
        self.param("dir", &dir.str())
    }

    /// `--yes`.
    #[must_use]
    pub fn yes(self) -> Self {
        self.arg("--yes")
    }

    /// `--output json`.
    #[must_use]
    pub fn json(self) -> Self {
        self.arg("--output").arg("json")
    }

    /// `--max-parallel N`.
    #[must_use]
    pub fn max_parallel(self, n: usize) -> Self {
        self.arg("--max-parallel").arg(&n.to_string())
    }

    /// Any extra argument.
    #[must_use]
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_owned());
        self
    }

    /// An environment variable of the engine's process.
    #[must_use]
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_owned(), v.to_owned()));
        self
    }

    /// Remove an environment variable from the engine's process.
    #[must_use]
    pub fn env_remove(mut self, k: &str) -> Self {
        self.env_remove.push(k.to_owned());
        self
    }

    /// The engine's working directory.
    #[must_use]
    pub fn cwd(mut self, dir: &Path) -> Self {
        self.cwd = Some(dir.to_path_buf());
        self
    }

    /// Run to completion (killed after [`HARD_LIMIT`]) and collect what it printed.
    pub fn run(self) -> RunOutput {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_runbook"));
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("NO_COLOR", "1");
        // Each invocation journals into its own state directory unless the test chose one, so
        // parallel tests never share locks or runs.
        let mut own_state = None;
        if !self.env.iter().any(|(k, _)| k == "RUNBOOK_STATE_DIR") {
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let dir =
                std::env::temp_dir().join(format!("runbook-test-state-{}-{n}", std::process::id()));
            cmd.env("RUNBOOK_STATE_DIR", &dir);
            own_state = Some(dir);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for k in &self.env_remove {
            cmd.env_remove(k);
        }
        if let Some(d) = &self.cwd {
            cmd.current_dir(d);
        }
        let started = Instant::now();
        let mut child = cmd.spawn().expect("spawn runbook");
        let mut out = child.stdout.take().expect("stdout");
        let mut err = child.stderr.take().expect("stderr");
        let out_t = std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = out.read_to_end(&mut b);
            b
        });
        let err_t = std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = err.read_to_end(&mut b);
            b
        });
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait for runbook") {
                break s;
            }
            if started.elapsed() > HARD_LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "runbook {:?} did not finish within {HARD_LIMIT:?}",
                    self.args
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let elapsed = started.elapsed();
        if let Some(dir) = own_state {
            let _ = std::fs::remove_dir_all(dir);
        }
        let stdout_raw = out_t.join().expect("stdout reader");
        let stderr_raw = err_t.join().expect("stderr reader");
        let stdout = String::from_utf8_lossy(&stdout_raw).into_owned();
        let stderr = String::from_utf8_lossy(&stderr_raw).into_owned();
        let events = stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.get("event").is_some())
            .collect();
        RunOutput {
            code: status.code(),
            elapsed,
            events,
            stdout,
            stderr,
            stdout_raw,
            stderr_raw,
        }
    }
}

fn path_arg(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_owned()
}

/// What one invocation did.
#[derive(Debug)]
pub struct RunOutput {
    /// Exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Wall time around the process.
    pub elapsed: Duration,
    /// JSON events (lines of stdout that parse as an object with `event`).
    pub events: Vec<Value>,
    /// Standard output, lossily decoded.
    pub stdout: String,
    /// Standard error, lossily decoded.
    pub stderr: String,
    /// Standard output, raw.
    pub stdout_raw: Vec<u8>,
    /// Standard error, raw.
    pub stderr_raw: Vec<u8>,
}

impl RunOutput {
    /// Assert the exit code, showing the output when it differs.
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "unexpected exit code\n{}",
            self.dump()
        );
        self
    }

    /// Everything printed, for assertion messages.
    pub fn dump(&self) -> String {
        format!(
            "--- stdout ---\n{}--- stderr ---\n{}--- elapsed {:?} ---",
            self.stdout, self.stderr, self.elapsed
        )
    }

    /// Events of one kind, in order.
    pub fn of(&self, kind: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["event"] == kind).collect()
    }

    /// Events of one kind about one step, in order.
    pub fn of_step(&self, kind: &str, step: &str) -> Vec<&Value> {
        self.events
            .iter()
            .filter(|e| e["event"] == kind && e["step"] == step)
            .collect()
    }

    /// Position in the stream of the first event of a kind about a step.
    pub fn position(&self, kind: &str, step: &str) -> Option<usize> {
        self.events
            .iter()
            .position(|e| e["event"] == kind && e["step"] == step)
    }

    /// Position in the stream of the last event of a kind about a step.
    pub fn last_position(&self, kind: &str, step: &str) -> Option<usize> {
        self.events
            .iter()
            .rposition(|e| e["event"] == kind && e["step"] == step)
    }

    /// Whether any event mentions a step (started, skipped, failed, …).
    pub fn touched(&self, step: &str) -> bool {
        self.events.iter().any(|e| e["step"] == step)
    }

    /// The `run_finished` event.
    #[track_caller]
    pub fn finished(&self) -> &Value {
        self.of("run_finished")
            .into_iter()
            .next_back()
            .unwrap_or_else(|| panic!("no run_finished event\n{}", self.dump()))
    }

    /// Most steps running at the same time, judged from started/ended events.
    pub fn max_concurrency(&self) -> usize {
        let mut running = std::collections::BTreeSet::new();
        let mut most = 0;
        for e in &self.events {
            let step = e["step"].as_str().unwrap_or_default().to_owned();
            match e["event"].as_str() {
                Some("step_started") => {
                    running.insert(step);
                    most = most.max(running.len());
                }
                Some("step_succeeded" | "step_failed" | "step_aborted" | "step_skipped") => {
                    running.remove(&step);
                }
                _ => {}
            }
        }
        most
    }
}

/// Whether a process exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    // The state follows the parenthesised command name: `123 (sleep) S ...`.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|s| s != "Z" && s != "X")
    })
}

/// A minimal HTTP/1.1 server on 127.0.0.1 that answers every request with
/// `503 {"status":"starting"}` until `healthy_after` has passed since it started (never, when
/// `None`), then `200 {"status":"healthy"}`. Each connection gets one answer and is closed.
#[derive(Debug)]
pub struct HealthServer {
    /// `http://127.0.0.1:PORT/health`.
    pub url: String,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl HealthServer {
    /// Start serving on a free port, in a background thread that lives as long as the test.
    pub fn start(healthy_after: Option<Duration>) -> Self {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let url = format!(
            "http://{}/health",
            listener.local_addr().expect("local addr")
        );
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = requests.clone();
        let started = Instant::now();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                // Read the request head (up to the blank line); GET requests have no body.
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let healthy = healthy_after.is_some_and(|d| started.elapsed() >= d);
                let (status, body) = if healthy {
                    ("200 OK", r#"{"status":"healthy"}"#)
                } else {
                    ("503 Service Unavailable", r#"{"status":"starting"}"#)
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes());
                let _ = stream.flush();
            }
        });
        Self { url, requests }
    }

    /// Requests answered so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Serve `app` on `127.0.0.1:0` from a thread with its own runtime, until the returned sender
/// is dropped; the base URL (`http://127.0.0.1:PORT`) comes with it.
pub fn serve_loopback(app: axum::Router) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("non-blocking");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
    });
    (url, tx)
}

//! A real Prometheus server for tests, scraping a tiny HTTP "app" whose counters the test
//! controls: `http_requests_total{code="200"}` and `http_requests_total{code="500"}`.
//!
//! The server is Debian's `prometheus` binary (`scripts/test` installs it), started on a free
//! port of 127.0.0.1 with a throwaway TSDB and `scrape_interval: 1s`; it is killed on drop, or
//! by a watchdog process when the test process dies first. Without the binary, [`Prometheus::start`]
//! fails the test (see [`super::tool`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The metrics endpoint the test drives.
#[derive(Debug, Clone)]
pub struct MetricsApp {
    /// `127.0.0.1:PORT`, for a scrape config.
    pub target: String,
    state: Arc<AppState>,
}

#[derive(Debug, Default)]
struct AppState {
    /// Counter values by `code` label.
    counters: Mutex<BTreeMap<String, f64>>,
    /// Increase per second by `code` label, applied by a ticker thread.
    rates: Mutex<BTreeMap<String, f64>>,
    /// How many times `/metrics` was fetched.
    scrapes: AtomicUsize,
}

impl MetricsApp {
    /// Serve `/metrics` on a free port, with both counters at 0 and no traffic.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let target = listener.local_addr().expect("local addr").to_string();
        let state = Arc::new(AppState::default());
        {
            let mut c = state.counters.lock().expect("lock");
            c.insert("200".to_owned(), 0.0);
            c.insert("500".to_owned(), 0.0);
        }
        let s = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || serve(stream, &s));
            }
        });
        let s = state.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(100));
                let rates = s.rates.lock().expect("lock").clone();
                let mut c = s.counters.lock().expect("lock");
                for (code, per_second) in rates {
                    *c.entry(code).or_default() += per_second / 10.0;
                }
            }
        });
        Self { target, state }
    }

    /// Count `n` more requests answered with `code` at once (a burst).
    pub fn add(&self, code: &str, n: f64) {
        *self
            .state
            .counters
            .lock()
            .expect("lock")
            .entry(code.to_owned())
            .or_default() += n;
    }

    /// Count `per_second` requests answered with `code` every second from now on.
    pub fn set_rate(&self, code: &str, per_second: f64) {
        self.state
            .rates
            .lock()
            .expect("lock")
            .insert(code.to_owned(), per_second);
    }

    /// How many times Prometheus scraped the app so far.
    pub fn scrapes(&self) -> usize {
        self.state.scrapes.load(Ordering::SeqCst)
    }

    /// Wait until the app has been scraped `n` times (panics after `limit`).
    pub fn wait_for_scrapes(&self, n: usize, limit: Duration) {
        let started = Instant::now();
        while self.scrapes() < n {
            assert!(
                started.elapsed() < limit,
                "Prometheus scraped the app {} times in {limit:?}, expected {n}",
                self.scrapes()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn serve(mut stream: TcpStream, state: &AppState) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let (status, body) = if head.starts_with("GET /metrics") {
        state.scrapes.fetch_add(1, Ordering::SeqCst);
        let counters = state.counters.lock().expect("lock").clone();
        let mut body = String::from(
            "# HELP http_requests_total Requests answered.\n# TYPE http_requests_total counter\n",
        );
        for (code, v) in counters {
            let _ = writeln!(body, "http_requests_total{{code=\"{code}\"}} {v}");
        }
        ("200 OK", body)
    } else {
        ("404 Not Found", "not found\n".to_owned())
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// A running Prometheus server.
#[derive(Debug)]
pub struct Prometheus {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    child: Child,
    dir: PathBuf,
}

/// The `prometheus` binary (Debian's `prometheus`); missing fails the test.
pub fn binary() -> PathBuf {
    super::tool("prometheus", &["/usr/bin/prometheus"], "prometheus")
}

impl Prometheus {
    /// Start a server scraping `targets` every second.
    pub fn start(targets: &[&str]) -> Self {
        Self::start_labelled(targets, &[])
    }

    /// Start a server scraping `targets` every second, adding `labels` to every scraped series
    /// (as Kubernetes service discovery adds `namespace`).
    pub fn start_labelled(targets: &[&str], labels: &[(&str, &str)]) -> Self {
        let bin = binary();
        let dir = std::env::temp_dir().join(format!(
            "runbook-test-prom-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).expect("create the Prometheus directory");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}: '{v}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: app\n    static_configs:\n      - targets: [{}]\n        labels: {{{}}}\n",
            targets.join(", "),
            labels.join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("write prometheus.yml");
        // A free port can be taken between the probe and the bind: try a few.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("probe a free port")
                .port();
            let log = std::fs::File::create(dir.join("prometheus.log")).expect("create log");
            let child = Command::new(&bin)
                .arg(format!(
                    "--config.file={}",
                    dir.join("prometheus.yml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--log.level=warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn prometheus");
            watchdog(child.id());
            let mut server = Self {
                url: format!("http://127.0.0.1:{port}"),
                child,
                dir: dir.clone(),
            };
            if server.wait_ready(Duration::from_secs(20)) {
                return server;
            }
            let _ = server.child.kill();
            let _ = server.child.wait();
        }
        let log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
        panic!("Prometheus did not become ready\n{log}");
    }

    /// Poll `/-/ready` until it answers 200; false when the process exited or time ran out.
    fn wait_ready(&mut self, limit: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < limit {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return false;
            }
            if get(&self.url, "/-/ready").is_some_and(|(status, _)| status == 200) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Kill `pid` once this test process is gone (a test killed by a timeout never runs `Drop`).
fn watchdog(pid: u32) {
    let me = std::process::id();
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "while kill -0 {me} 2>/dev/null; do sleep 1; done; kill {pid} 2>/dev/null"
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}

/// A plain HTTP/1.0 GET: status and body, `None` when the server cannot be reached.
fn get(base: &str, path: &str) -> Option<(u16, String)> {
    let addr = base.strip_prefix("http://")?;
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let status = answer.split_whitespace().nth(1)?.parse().ok()?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// A port of 127.0.0.1 where nothing listens (bound, then released).
pub fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("probe a free port")
        .port()
}

//! A small HTTP "app" for the `runbook serve` tests: it serves Prometheus metrics of its own
//! (simulated) traffic — `http_requests_total{code}` and an `http_request_duration_seconds`
//! histogram — whose 5xx share and latency the test controls, and `POST /rollback`, which the
//! local app-rollback runbook calls to bring the "previous release" (healthy) back.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};

/// Upper bounds of the latency histogram.
const BUCKETS: [f64; 7] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// Requests the app "answers" per second.
const RPS: f64 = 100.0;

#[derive(Debug, Default)]
struct Traffic {
    /// 5xx share of requests, 0..1.
    error_share: f64,
    /// Latency of every request, in seconds.
    latency: f64,
    ok: f64,
    errors: f64,
    buckets: [f64; BUCKETS.len()],
    count: f64,
    sum: f64,
    /// When `/rollback` was last called (ms since the epoch).
    rolled_back_at_ms: Option<u64>,
    /// How many times `/rollback` was called.
    rollbacks: usize,
}

/// The running app.
#[derive(Debug, Clone)]
pub struct App {
    /// `127.0.0.1:PORT`.
    pub target: String,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    state: Arc<Mutex<Traffic>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl App {
    /// Start a healthy app (no errors, 40 ms latency) on a free port.
    pub fn start() -> Self {
        let state = Arc::new(Mutex::new(Traffic {
            latency: 0.04,
            ..Traffic::default()
        }));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("nonblocking");
        let target = listener.local_addr().expect("local addr").to_string();
        let s = state.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let router = Router::new()
                    .route("/metrics", get(metrics))
                    .route("/rollback", post(rollback))
                    .with_state(s);
                let _ = axum::serve(listener, router).await;
            });
        });
        let s = state.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(100));
                let mut t = s.lock().expect("lock");
                let n = RPS / 10.0;
                let errors = n * t.error_share;
                t.errors += errors;
                t.ok += n - errors;
                let latency = t.latency;
                for (i, le) in BUCKETS.iter().enumerate() {
                    if latency <= *le {
                        t.buckets[i] += n;
                    }
                }
                t.count += n;
                t.sum += n * latency;
            }
        });
        Self {
            url: format!("http://{target}"),
            target,
            state,
        }
    }

    /// A bad release: this share of 5xx and this latency from now on.
    pub fn break_it(&self, error_share: f64, latency: f64) {
        let mut t = self.state.lock().expect("lock");
        t.error_share = error_share;
        t.latency = latency;
    }

    /// When `/rollback` was called, if it was (ms since the epoch).
    pub fn rolled_back_at_ms(&self) -> Option<u64> {
        self.state.lock().expect("lock").rolled_back_at_ms
    }

    /// How many times `/rollback` was called.
    pub fn rollbacks(&self) -> usize {
        self.state.lock().expect("lock").rollbacks
    }
}

async fn metrics(State(s): State<Arc<Mutex<Traffic>>>) -> String {
    let t = s.lock().expect("lock");
    let mut out = String::from(
        "# HELP http_requests_total Requests answered.\n# TYPE http_requests_total counter\n",
    );
    let _ = writeln!(out, "http_requests_total{{code=\"200\"}} {}", t.ok);
    let _ = writeln!(out, "http_requests_total{{code=\"500\"}} {}", t.errors);
    out.push_str("# HELP http_request_duration_seconds Request latency.\n# TYPE http_request_duration_seconds histogram\n");
    for (le, c) in BUCKETS.iter().zip(t.buckets) {
        let _ = writeln!(
            out,
            "http_request_duration_seconds_bucket{{le=\"{le}\"}} {c}"
        );
    }
    let _ = writeln!(
        out,
        "http_request_duration_seconds_bucket{{le=\"+Inf\"}} {}",
        t.count
    );
    let _ = writeln!(out, "http_request_duration_seconds_sum {}", t.sum);
    let _ = writeln!(out, "http_request_duration_seconds_count {}", t.count);
    out
}

async fn rollback(State(s): State<Arc<Mutex<Traffic>>>) -> &'static str {
    let mut t = s.lock().expect("lock");
    t.error_share = 0.0;
    t.latency = 0.04;
    t.rolled_back_at_ms = Some(now_ms());
    t.rollbacks += 1;
    "rolled back\n"
}

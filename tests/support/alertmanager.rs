//! A real Alertmanager (Debian's `prometheus-alertmanager`) routing to a webhook with bearer
//! auth, and a real Prometheus with alert rules that sends to it — the alerting half of the
//! `runbook serve` tests. Both run on free ports of 127.0.0.1 with throwaway directories, are
//! killed on drop, or by a watchdog when the test process dies first. Without the binaries the
//! tests fail, naming the package to install.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("probe a free port")
        .port()
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "runbook-test-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("data")).expect("create a temp dir");
    dir
}

/// Kill `pid` once this test process is gone (a test killed by a timeout never runs `Drop`).
pub fn watchdog(pid: u32) {
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

/// A plain HTTP/1.0 GET; the status, or `None` when nothing answers.
fn status(addr: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    answer.split_whitespace().nth(1)?.parse().ok()
}

/// A server process and its directory.
#[derive(Debug)]
pub struct Server {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    child: Child,
    dir: PathBuf,
    log: PathBuf,
}

impl Server {
    fn spawn(bin: &Path, dir: &Path, args: &dyn Fn(u16) -> Vec<String>, ready: &str) -> Self {
        for _ in 0..5 {
            let port = free_port();
            let log = dir.join("server.log");
            let child = Command::new(bin)
                .args(args(port))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("create log"))
                .spawn()
                .expect("spawn the server");
            watchdog(child.id());
            let mut s = Self {
                url: format!("http://127.0.0.1:{port}"),
                addr: format!("127.0.0.1:{port}"),
                child,
                dir: dir.to_path_buf(),
                log,
            };
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(20) {
                if matches!(s.child.try_wait(), Ok(Some(_))) {
                    break;
                }
                if status(&s.addr, ready) == Some(200) {
                    return s;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
        let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
        panic!("{} did not become ready\n{log}", bin.display());
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Start Alertmanager routing every alert to `webhook` (a full URL) with
/// `Authorization: Bearer <token>`, grouping by alertname with no wait and re-notifying every
/// `repeat` (so a still-firing alert is sent again while its run is in progress).
pub fn alertmanager(webhook: &str, token: &str, repeat: &str) -> Server {
    let bin = super::tool(
        "prometheus-alertmanager",
        &["/usr/bin/prometheus-alertmanager", "/usr/bin/alertmanager"],
        "prometheus-alertmanager",
    );
    let dir = temp_dir("alertmanager");
    let config = format!(
        "route:\n  receiver: runbook\n  group_by: [alertname]\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: {repeat}\n\
         receivers:\n  - name: runbook\n    webhook_configs:\n      - url: '{webhook}'\n        send_resolved: true\n\
         \x20       http_config:\n          authorization:\n            credentials: '{token}'\n"
    );
    std::fs::write(dir.join("alertmanager.yml"), config).expect("write alertmanager.yml");
    let d = dir.clone();
    Server::spawn(
        &bin,
        &dir,
        &move |port| {
            vec![
                format!("--config.file={}", d.join("alertmanager.yml").display()),
                format!("--storage.path={}", d.join("data").display()),
                format!("--web.listen-address=127.0.0.1:{port}"),
                // No gossip: one instance, no port of its own.
                "--cluster.listen-address=".to_owned(),
                "--log.level=warn".to_owned(),
            ]
        },
        "/-/ready",
    )
}

/// Start Prometheus scraping `targets` (`(job, host:port)`) every second, evaluating `rules`
/// (the YAML of a rule file) every second and sending alerts to `alertmanager` (`host:port`)
/// without delay between re-sends.
pub fn prometheus(targets: &[(&str, &str)], rules: &str, alertmanager: &str) -> Server {
    let targets: Vec<(&str, &str, Option<&str>)> =
        targets.iter().map(|(j, t)| (*j, *t, None)).collect();
    prometheus_scraping(&targets, rules, alertmanager)
}

/// [`prometheus`] with a bearer token (`Authorization: Bearer`) per target, where given.
pub fn prometheus_scraping(
    targets: &[(&str, &str, Option<&str>)],
    rules: &str,
    alertmanager: &str,
) -> Server {
    let bin = super::prom::binary();
    let dir = temp_dir("prom-alerting");
    let mut scrape = String::new();
    for (job, target, token) in targets {
        let _ = write!(
            scrape,
            "  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
        );
        if let Some(t) = token {
            let _ = write!(scrape, "    authorization:\n      credentials: '{t}'\n");
        }
    }
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         rule_files: ['{}']\n\
         alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['{alertmanager}']\n\
         scrape_configs:\n{scrape}",
        dir.join("rules.yml").display()
    );
    std::fs::write(dir.join("prometheus.yml"), config).expect("write prometheus.yml");
    std::fs::write(dir.join("rules.yml"), rules).expect("write rules.yml");
    let d = dir.clone();
    Server::spawn(
        &bin,
        &dir,
        &move |port| {
            vec![
                format!("--config.file={}", d.join("prometheus.yml").display()),
                format!("--storage.tsdb.path={}", d.join("data").display()),
                format!("--web.listen-address=127.0.0.1:{port}"),
                "--rules.alert.resend-delay=1s".to_owned(),
                "--log.level=warn".to_owned(),
            ]
        },
        "/-/ready",
    )
}

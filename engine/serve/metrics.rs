//! The counters of `runbook serve` and their Prometheus text exposition (format 0.0.4), written
//! by hand: runs by runbook and outcome, step durations, webhook requests and alert outcomes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// Upper bounds (seconds) of the step duration histogram's buckets.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Debug, Default)]
struct Histogram {
    /// Cumulative counts per bucket of [`BUCKETS`].
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Debug, Default)]
struct Inner {
    started: BTreeMap<String, u64>,
    succeeded: BTreeMap<String, u64>,
    failed: BTreeMap<String, u64>,
    cancelled: BTreeMap<String, u64>,
    webhook: BTreeMap<&'static str, u64>,
    alerts: BTreeMap<&'static str, u64>,
    steps: BTreeMap<String, Histogram>,
    active: u64,
}

/// Every counter the server exposes on `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

/// How a run ended, as the metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Succeeded.
    Succeeded,
    /// Failed, rolled back, aborted, or could not start after it was announced.
    Failed,
    /// Cancelled (shutdown): it will be resumed.
    Cancelled,
}

fn bump<K: Ord>(m: &mut BTreeMap<K, u64>, k: K) {
    *m.entry(k).or_default() += 1;
}

/// A label value escaped for the text format.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A sample value: integers without a fraction, like Prometheus's own exporters.
fn num(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut g = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g)
    }

    /// A run of `runbook` started.
    pub fn run_started(&self, runbook: &str) {
        self.with(|m| {
            bump(&mut m.started, runbook.to_owned());
            m.active += 1;
        });
    }

    /// A run of `runbook` ended.
    pub fn run_ended(&self, runbook: &str, how: Ended) {
        self.with(|m| {
            let map = match how {
                Ended::Succeeded => &mut m.succeeded,
                Ended::Failed => &mut m.failed,
                Ended::Cancelled => &mut m.cancelled,
            };
            bump(map, runbook.to_owned());
            m.active = m.active.saturating_sub(1);
        });
    }

    /// A step of `runbook` took `seconds`.
    pub fn step_duration(&self, runbook: &str, seconds: f64) {
        self.with(|m| {
            let h = m.steps.entry(runbook.to_owned()).or_default();
            for (i, le) in BUCKETS.iter().enumerate() {
                if seconds <= *le {
                    h.counts[i] += 1;
                }
            }
            h.count += 1;
            h.sum += seconds;
        });
    }

    /// A webhook request was answered with this outcome (`accepted`, `unauthorized`, …).
    pub fn webhook(&self, outcome: &'static str) {
        self.with(|m| bump(&mut m.webhook, outcome));
    }

    /// One alert of a webhook was handled with this result (`started`, `duplicate`, …).
    pub fn alert(&self, result: &'static str) {
        self.with(|m| bump(&mut m.alerts, result));
    }

    /// Runs executing now.
    pub fn active(&self) -> u64 {
        self.with(|m| m.active)
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        self.with(|m| {
            let mut s = String::new();
            let counter = |s: &mut String, name: &str, help: &str, label: &str, map: &BTreeMap<String, u64>| {
                let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter");
                for (k, v) in map {
                    let _ = writeln!(s, "{name}{{{label}=\"{}\"}} {v}", esc(k));
                }
            };
            counter(&mut s, "runbook_runs_started_total", "Runs started by runbook serve.", "runbook", &m.started);
            counter(&mut s, "runbook_runs_succeeded_total", "Runs that succeeded.", "runbook", &m.succeeded);
            counter(&mut s, "runbook_runs_failed_total", "Runs that failed, rolled back or were aborted.", "runbook", &m.failed);
            counter(&mut s, "runbook_runs_cancelled_total", "Runs cancelled by a shutdown (resumed at the next start).", "runbook", &m.cancelled);
            let _ = writeln!(s, "# HELP runbook_runs_active Runs executing now.\n# TYPE runbook_runs_active gauge\nrunbook_runs_active {}", m.active);
            let _ = writeln!(s, "# HELP runbook_webhook_requests_total Webhook requests by outcome.\n# TYPE runbook_webhook_requests_total counter");
            for (k, v) in &m.webhook {
                let _ = writeln!(s, "runbook_webhook_requests_total{{outcome=\"{k}\"}} {v}");
            }
            let _ = writeln!(s, "# HELP runbook_alerts_total Alerts received, by what was done with them.\n# TYPE runbook_alerts_total counter");
            for (k, v) in &m.alerts {
                let _ = writeln!(s, "runbook_alerts_total{{result=\"{k}\"}} {v}");
            }
            let name = "runbook_step_duration_seconds";
            let _ = writeln!(s, "# HELP {name} Duration of steps of runs started by serve.\n# TYPE {name} histogram");
            for (rb, h) in &m.steps {
                let rb = esc(rb);
                for (le, c) in BUCKETS.iter().zip(h.counts) {
                    let _ = writeln!(s, "{name}_bucket{{runbook=\"{rb}\",le=\"{le}\"}} {c}");
                }
                let _ = writeln!(s, "{name}_bucket{{runbook=\"{rb}\",le=\"+Inf\"}} {}", h.count);
                let _ = writeln!(s, "{name}_sum{{runbook=\"{rb}\"}} {}", num(h.sum));
                let _ = writeln!(s, "{name}_count{{runbook=\"{rb}\"}} {}", h.count);
            }
            s
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_labels_escaped() {
        let m = Metrics::default();
        m.step_duration("a\"b", 0.2);
        m.step_duration("a\"b", 3.0);
        m.run_started("x");
        m.run_ended("x", Ended::Succeeded);
        let t = m.render();
        assert!(
            t.contains("runbook_step_duration_seconds_bucket{runbook=\"a\\\"b\",le=\"0.25\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("runbook_step_duration_seconds_bucket{runbook=\"a\\\"b\",le=\"5\"} 2"),
            "{t}"
        );
        assert!(
            t.contains("runbook_step_duration_seconds_count{runbook=\"a\\\"b\"} 2"),
            "{t}"
        );
        assert!(
            t.contains("runbook_runs_succeeded_total{runbook=\"x\"} 1"),
            "{t}"
        );
        assert!(t.contains("runbook_runs_active 0"), "{t}");
    }
}

//! Reporters: what the operator sees — progress bars on a terminal, timestamped lines in CI,
//! JSON lines for machines — plus the closing summary table.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{Event, Reporter, Stream};
use crate::clock::rfc3339;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputMode {
    /// Progress bars on a terminal (one line per running step).
    Tty,
    /// Plain timestamped lines (CI, drills, logs).
    Plain,
    /// One JSON event per line on stdout.
    Json,
}

/// The reporter for a mode.
pub fn reporter_for(mode: OutputMode) -> Box<dyn Reporter> {
    match mode {
        OutputMode::Json => Box::new(JsonReporter),
        OutputMode::Plain => Box::new(PlainReporter::default()),
        OutputMode::Tty => Box::new(TtyReporter::new()),
    }
}

/// JSON lines on stdout.
struct JsonReporter;

impl Reporter for JsonReporter {
    fn emit(&self, ts_ms: i64, event: &Event) {
        let mut v = serde_json::to_value(event).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("ts".to_owned(), serde_json::Value::String(rfc3339(ts_ms)));
            o.insert("ts_ms".to_owned(), serde_json::Value::from(ts_ms));
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{v}");
        let _ = out.flush();
    }
}

/// One line of text for an event, without timestamp; `None` for events not worth a line.
#[expect(
    clippy::unnecessary_wraps,
    reason = "events without a line of their own may come"
)]
fn describe(event: &Event) -> Option<String> {
    Some(match event {
        Event::RunStarted {
            run_id,
            runbook,
            user,
            host,
            ..
        } => format!("run {run_id} of {runbook} started by {user}@{host}"),
        Event::StepStarted {
            step,
            attempt,
            attempts,
        } if *attempts > 1 => format!("{step}: started (attempt {attempt}/{attempts})"),
        Event::StepStarted { step, .. } => format!("{step}: started"),
        Event::Command { step, command, .. } => format!("{step}: $ {command}"),
        Event::Output {
            step,
            stream: Stream::Stdout,
            line,
        } => format!("{step} │ {line}"),
        Event::Output {
            step,
            stream: Stream::Stderr,
            line,
        } => format!("{step} ┃ {line}"),
        Event::Check {
            step,
            phase,
            index,
            poll,
            passed,
            detail,
        } => {
            format!(
                "{step}: {phase} #{} poll {poll}: {} — {detail}",
                index + 1,
                if *passed { "pass" } else { "fail" }
            )
        }
        Event::Retry {
            step,
            attempt,
            delay_ms,
            error,
        } => format!(
            "{step}: attempt {attempt} failed ({error}); retrying in {}",
            crate::duration::format(Duration::from_millis(*delay_ms))
        ),
        Event::StepSkipped { step, reason, .. } => format!("{step}: skipped — {reason}"),
        Event::StepSucceeded {
            step,
            duration_ms,
            summary,
            ..
        } => format!(
            "{step}: ✓ succeeded in {} ({summary})",
            crate::duration::format(Duration::from_millis(*duration_ms))
        ),
        Event::StepFailed { step, error, .. } => format!("{step}: ✗ failed — {error}"),
        Event::StepAborted { step, reason } => format!("{step}: ✗ aborted — {reason}"),
        Event::Approval {
            step,
            approver,
            decision,
            via,
        } => format!("{step}: {decision} by {approver} ({via})"),
        Event::ApprovalWaiting {
            step,
            message,
            needed,
            have,
        } => format!("{step}: approval needed ({have}/{needed}): {message}"),
        Event::RollbackStarted {
            steps,
            not_compensated,
        } => {
            let mut s = format!(
                "rollback: compensating {}",
                if steps.is_empty() {
                    "nothing".to_owned()
                } else {
                    steps.join(", ")
                }
            );
            if !not_compensated.is_empty() {
                let _ = write!(
                    s,
                    "; not compensated (before a point of no return): {}",
                    not_compensated.join(", ")
                );
            }
            s
        }
        Event::Compensated { step, ok, detail } => format!(
            "rollback: {step} {} — {detail}",
            if *ok {
                "compensated"
            } else {
                "compensation FAILED"
            }
        ),
        Event::Resumed {
            run_id,
            done,
            decisions,
            changed,
        } => {
            let mut s = format!("run {run_id} resumed: {} step(s) already done", done.len());
            for d in decisions {
                let _ = write!(
                    s,
                    "; {}: {} ({})",
                    d["step"].as_str().unwrap_or("?"),
                    d["decision"].as_str().unwrap_or("?"),
                    d["reason"].as_str().unwrap_or("")
                );
            }
            if *changed {
                s.push_str("; the runbook changed since the run started (--allow-changed)");
            }
            s
        }
        Event::RunFinished {
            status,
            duration_ms,
            exit_code,
        } => format!(
            "run {status} in {} (exit {exit_code})",
            crate::duration::format(Duration::from_millis(*duration_ms))
        ),
    })
}

/// Timestamped lines on stdout, and the summary table at the end.
#[derive(Default)]
struct PlainReporter {
    table: Summary,
}

impl Reporter for PlainReporter {
    fn emit(&self, ts_ms: i64, event: &Event) {
        let event = &event.for_terminal();
        self.table.record(event);
        if let Some(line) = describe(event) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{} {line}", rfc3339(ts_ms));
            if let Event::RunFinished { .. } = event {
                let _ = write!(out, "{}", self.table.render());
            }
            let _ = out.flush();
        }
    }
}

/// The summary status of a step whose compensation failed.
const COMPENSATION_FAILED: &str = "↺ compensation failed";

/// Per-step rows of the closing summary.
#[derive(Default)]
struct Summary {
    rows: Mutex<Vec<(String, String, String)>>,
}

impl Summary {
    fn record(&self, event: &Event) {
        let row = match event {
            Event::StepSucceeded {
                step,
                duration_ms,
                attempts,
                ..
            } => Some((
                step.clone(),
                "✓ succeeded".to_owned(),
                match attempts {
                    // A step without an action (gates only) has no attempts to count.
                    0 => crate::duration::format(Duration::from_millis(*duration_ms)),
                    n => format!(
                        "{} ({n} attempt{})",
                        crate::duration::format(Duration::from_millis(*duration_ms)),
                        if *n == 1 { "" } else { "s" }
                    ),
                },
            )),
            Event::StepFailed {
                step, duration_ms, ..
            } => Some((
                step.clone(),
                "✗ failed".to_owned(),
                crate::duration::format(Duration::from_millis(*duration_ms)),
            )),
            Event::StepAborted { step, .. } => {
                Some((step.clone(), "✗ aborted".to_owned(), String::new()))
            }
            Event::StepSkipped { step, .. } => {
                Some((step.clone(), "- skipped".to_owned(), String::new()))
            }
            Event::Compensated { step, ok, .. } => Some((
                step.clone(),
                if *ok {
                    "↺ compensated".to_owned()
                } else {
                    COMPENSATION_FAILED.to_owned()
                },
                String::new(),
            )),
            _ => None,
        };
        if let (Some(r), Ok(mut rows)) = (row, self.rows.lock()) {
            rows.push(r);
        }
    }

    fn render(&self) -> String {
        let Ok(rows) = self.rows.lock() else {
            return String::new();
        };
        if rows.is_empty() {
            return String::new();
        }
        let w = rows
            .iter()
            .map(|r| r.0.chars().count())
            .max()
            .unwrap_or(4)
            .max(4);
        let mut s = format!("\n  {:<w$}  {:<22}  duration\n", "step", "status");
        for (step, status, d) in rows.iter() {
            let _ = writeln!(s, "  {step:<w$}  {status:<22}  {d}");
        }
        // The operator must know what is still in effect: a failed compensation is not an undo.
        let undone: Vec<&str> = rows
            .iter()
            .filter(|r| r.1 == COMPENSATION_FAILED)
            .map(|r| r.0.as_str())
            .collect();
        if !undone.is_empty() {
            let _ = writeln!(
                s,
                "\n  rollback incomplete: left un-undone (compensation failed): {}",
                undone.join(", ")
            );
        }
        s
    }
}

/// indicatif progress: a spinner line per running step; finished steps collapse to one line.
struct TtyReporter {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
    table: Summary,
}

impl TtyReporter {
    fn new() -> Self {
        Self {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            bars: Mutex::new(HashMap::new()),
            table: Summary::default(),
        }
    }

    fn bar(&self, step: &str) -> ProgressBar {
        let mut bars = match self.bars.lock() {
            Ok(b) => b,
            Err(p) => p.into_inner(),
        };
        bars.entry(step.to_owned())
            .or_insert_with(|| {
                let b = self.multi.add(ProgressBar::new_spinner());
                b.set_style(
                    ProgressStyle::with_template(
                        "{spinner:.cyan} {prefix:.bold} {elapsed:>4} {wide_msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                b.set_prefix(step.to_owned());
                b.enable_steady_tick(Duration::from_millis(120));
                b
            })
            .clone()
    }

    fn finish(&self, step: &str, line: &str) {
        let bar = self.bars.lock().ok().and_then(|mut b| b.remove(step));
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let _ = self.multi.println(line);
    }
}

impl Reporter for TtyReporter {
    fn emit(&self, _ts_ms: i64, event: &Event) {
        let event = &event.for_terminal();
        self.table.record(event);
        match event {
            Event::StepStarted {
                step,
                attempt,
                attempts,
            } => {
                let b = self.bar(step);
                b.set_message(if *attempts > 1 {
                    format!("attempt {attempt}/{attempts}")
                } else {
                    String::new()
                });
            }
            Event::Check {
                step,
                phase,
                index,
                poll,
                passed: false,
                detail,
            } => {
                self.bar(step)
                    .set_message(format!("{phase} #{} (poll {poll}): {detail}", index + 1));
            }
            Event::Retry { step, .. }
            | Event::Output { step, .. }
            | Event::Command { step, .. } => {
                if let Some(line) = describe(event) {
                    let _ = self.multi.println(format!("  {line}"));
                }
                if let Event::Retry {
                    attempt, delay_ms, ..
                } = event
                {
                    self.bar(step).set_message(format!(
                        "attempt {attempt} failed, retrying in {}",
                        crate::duration::format(Duration::from_millis(*delay_ms))
                    ));
                }
            }
            Event::StepSucceeded { step, .. }
            | Event::StepFailed { step, .. }
            | Event::StepAborted { step, .. }
            | Event::StepSkipped { step, .. } => {
                self.finish(step, &describe(event).unwrap_or_default());
            }
            Event::RunFinished { .. } => {
                let _ = self.multi.clear();
                eprintln!("{}", describe(event).unwrap_or_default());
                eprint!("{}", self.table.render());
            }
            other => {
                if let Some(line) = describe(other) {
                    let _ = self.multi.println(line);
                }
            }
        }
    }

    fn suspend(&self, f: &mut dyn FnMut()) {
        self.multi.suspend(f);
    }
}

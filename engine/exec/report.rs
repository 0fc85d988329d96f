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
pub fn reporter_for(mode: OutputMode, info: RunInfo) -> Box<dyn Reporter> {
    match mode {
        OutputMode::Json => Box::new(JsonReporter),
        OutputMode::Plain => Box::new(PlainReporter {
            table: Summary::new(info),
        }),
        OutputMode::Tty => Box::new(TtyReporter::new(info)),
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
        Event::StepFailed {
            step,
            error,
            cancelled: true,
            ..
        } => format!(
            "{step}: ⊘ cancelled — {}",
            error.strip_prefix("cancelled: ").unwrap_or(error)
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
            if let Event::RunFinished { status, .. } = event {
                let _ = write!(out, "{}", self.table.render(status));
            }
            let _ = out.flush();
        }
    }
}

/// The summary status of a step whose compensation failed.
const COMPENSATION_FAILED: &str = "↺ compensation failed";

/// What the closing summary knows of the run beyond its events.
#[derive(Debug, Clone, Default)]
pub struct RunInfo {
    /// Whether the run is journaled (so `report`, `resume` and `retry` can find it).
    pub journaled: bool,
    /// Ids of the steps that change the world: those that completed and were not undone are
    /// named at the end of a run that did not succeed.
    pub mutating: Vec<String>,
    /// Ids of every step of the runbook (main and `finally`): the terminal counts them done.
    pub steps: Vec<String>,
    /// The runbook's recovery time objective, shown against the elapsed time.
    pub rto: Option<Duration>,
}

/// One row of the closing summary.
struct Row {
    step: String,
    status: String,
    duration: String,
    /// Why it failed, was skipped or aborted; who approved it.
    detail: String,
}

#[derive(Default)]
struct Rows {
    run_id: Option<String>,
    list: Vec<Row>,
    /// Approvals given so far, by step, until the step's row is written.
    approvals: HashMap<String, Vec<String>>,
}

/// Per-step rows of the closing summary, and the commands that come next.
#[derive(Default)]
struct Summary {
    info: RunInfo,
    rows: Mutex<Rows>,
}

/// The first line of a reason, for a table cell (the full text is in the journal and the log).
fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or_default();
    if s.lines().nth(1).is_some() {
        format!("{line} …")
    } else {
        line.to_owned()
    }
}

impl Summary {
    fn new(info: RunInfo) -> Self {
        Self {
            info,
            rows: Mutex::default(),
        }
    }

    fn record(&self, event: &Event) {
        let Ok(mut st) = self.rows.lock() else {
            return;
        };
        let ms = |d: &u64| crate::duration::format(Duration::from_millis(*d));
        let row = match event {
            Event::RunStarted { run_id, .. } => {
                st.run_id = Some(run_id.clone());
                None
            }
            Event::Approval {
                step,
                approver,
                decision,
                via,
            } if decision == "approved" => {
                st.approvals
                    .entry(step.clone())
                    .or_default()
                    .push(format!("{approver} ({via})"));
                None
            }
            Event::StepSucceeded {
                step,
                duration_ms,
                attempts,
                ..
            } => Some(Row {
                step: step.clone(),
                status: "✓ succeeded".to_owned(),
                duration: match attempts {
                    // A step without an action (gates only) has no attempts to count.
                    0 => ms(duration_ms),
                    n => format!(
                        "{} ({n} attempt{})",
                        ms(duration_ms),
                        if *n == 1 { "" } else { "s" }
                    ),
                },
                detail: st
                    .approvals
                    .remove(step)
                    .map(|a| format!("approved by {}", a.join(", ")))
                    .unwrap_or_default(),
            }),
            Event::StepFailed {
                step,
                duration_ms,
                attempts,
                error,
                cancelled,
            } => Some(Row {
                step: step.clone(),
                status: if *cancelled {
                    "⊘ cancelled".to_owned()
                } else {
                    "✗ failed".to_owned()
                },
                duration: if *attempts > 1 {
                    format!("{} ({attempts} attempts)", ms(duration_ms))
                } else {
                    ms(duration_ms)
                },
                detail: first_line(if *cancelled {
                    error.strip_prefix("cancelled: ").unwrap_or(error)
                } else {
                    error
                }),
            }),
            Event::StepAborted { step, reason } => Some(Row {
                step: step.clone(),
                status: "✗ aborted".to_owned(),
                duration: String::new(),
                detail: first_line(reason),
            }),
            Event::StepSkipped { step, reason, .. } => Some(Row {
                step: step.clone(),
                status: "- skipped".to_owned(),
                duration: String::new(),
                detail: first_line(reason),
            }),
            Event::Compensated { step, ok, detail } => Some(Row {
                step: step.clone(),
                status: if *ok {
                    "↺ compensated".to_owned()
                } else {
                    COMPENSATION_FAILED.to_owned()
                },
                duration: String::new(),
                detail: if *ok {
                    String::new()
                } else {
                    first_line(detail)
                },
            }),
            _ => None,
        };
        if let Some(r) = row {
            st.list.push(r);
        }
    }

    fn render(&self, status: &str) -> String {
        let Ok(st) = self.rows.lock() else {
            return String::new();
        };
        let rows = &st.list;
        let mut s = String::new();
        if !rows.is_empty() {
            let w = rows
                .iter()
                .map(|r| r.step.chars().count())
                .max()
                .unwrap_or(4)
                .max(4);
            let dw = rows
                .iter()
                .map(|r| r.duration.chars().count())
                .max()
                .unwrap_or(8)
                .max(8);
            let _ = writeln!(
                s,
                "\n  {:<w$}  {:<22}  {:<dw$}  detail",
                "step", "status", "duration"
            );
            for r in rows {
                let line = format!(
                    "  {:<w$}  {:<22}  {:<dw$}  {}",
                    r.step, r.status, r.duration, r.detail
                );
                let _ = writeln!(s, "{}", line.trim_end());
            }
        }
        // The operator must know what is still in effect: a failed compensation is not an undo.
        let undone: Vec<&str> = rows
            .iter()
            .filter(|r| r.status == COMPENSATION_FAILED)
            .map(|r| r.step.as_str())
            .collect();
        if !undone.is_empty() {
            let _ = writeln!(
                s,
                "\n  rollback incomplete: left un-undone (compensation failed): {}",
                undone.join(", ")
            );
        }
        // A run that stopped half-way leaves its completed mutations in place: name them.
        if matches!(status, "failed" | "cancelled" | "aborted") {
            let in_place: Vec<&str> = rows
                .iter()
                .filter(|r| r.status == "✓ succeeded" && self.info.mutating.contains(&r.step))
                .filter(|r| {
                    !rows
                        .iter()
                        .any(|c| c.step == r.step && c.status == "↺ compensated")
                })
                .map(|r| r.step.as_str())
                .collect();
            if !in_place.is_empty() {
                let _ = writeln!(
                    s,
                    "\n  left in place (mutating steps that completed): {}",
                    in_place.join(", ")
                );
            }
        }
        if let (true, Some(run)) = (self.info.journaled, &st.run_id) {
            let mut next: Vec<(String, String)> = vec![(
                format!("runbook report {run}"),
                "the post-incident report".to_owned(),
            )];
            if matches!(status, "failed" | "cancelled" | "aborted") {
                next.push((
                    format!("runbook resume {run}"),
                    "continue where the run stopped".to_owned(),
                ));
            }
            if let Some(failed) = rows.iter().find(|r| r.status == "✗ failed")
                && matches!(status, "failed" | "rolled_back" | "rollback_incomplete")
            {
                next.push((
                    format!("runbook retry {run} --from {}", failed.step),
                    format!("run `{}` and what depends on it again", failed.step),
                ));
            }
            let w = next.iter().map(|n| n.0.chars().count()).max().unwrap_or(0);
            let _ = writeln!(s, "\n  next:");
            for (cmd, what) in next {
                let _ = writeln!(s, "    {cmd:<w$}  {what}");
            }
        }
        s
    }
}

/// The first line of a command, and how many lines it hides (a terminal shows one line per
/// command; the journal, `runbook logs` and `--output plain` keep every line).
fn command_head(command: &str) -> String {
    let mut lines = command.lines();
    let first = lines.next().unwrap_or_default();
    match lines.count() {
        0 => first.to_owned(),
        n => format!(
            "{first} … (+{n} line{}; `--output plain` shows all)",
            if n == 1 { "" } else { "s" }
        ),
    }
}

/// indicatif progress: an overall line (steps done of all, elapsed against the RTO) over one
/// aligned line per running step; finished steps collapse to one line above.
struct TtyReporter {
    multi: MultiProgress,
    overall: ProgressBar,
    bars: Mutex<HashMap<String, ProgressBar>>,
    /// The last command echoed per step: a gate polled every few seconds runs the same command
    /// each time, and echoing it again would bury everything else.
    echoed: Mutex<HashMap<String, String>>,
    done: Mutex<std::collections::HashSet<String>>,
    /// Events that came while a prompt held the terminal (`Some` while it does).
    held: Mutex<Option<Vec<Event>>>,
    table: Summary,
    width: usize,
}

impl TtyReporter {
    fn new(info: RunInfo) -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let total = u64::try_from(info.steps.len()).unwrap_or(u64::MAX);
        let overall = multi.add(ProgressBar::new(total));
        let rto = info.rto;
        let style = ProgressStyle::with_template("{prefix:.bold} {pos}/{len} steps · {rto}")
            .map_or_else(
                |_| ProgressStyle::default_bar(),
                |s| {
                    s.with_key(
                        "rto",
                        move |st: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                            let elapsed = st.elapsed();
                            let shown =
                                crate::duration::format(Duration::from_secs(elapsed.as_secs()));
                            let _ = match rto {
                                Some(r) if elapsed > r => write!(
                                    w,
                                    "{shown} elapsed — OVER the RTO of {}",
                                    crate::duration::format(r)
                                ),
                                Some(r) => {
                                    write!(
                                        w,
                                        "{shown} elapsed of RTO {}",
                                        crate::duration::format(r)
                                    )
                                }
                                None => write!(w, "{shown} elapsed"),
                            };
                        },
                    )
                },
            );
        overall.set_style(style);
        overall.set_prefix("run");
        overall.enable_steady_tick(Duration::from_millis(500));
        let width = info
            .steps
            .iter()
            .map(|s| s.chars().count())
            .max()
            .unwrap_or(4)
            .clamp(4, 40);
        Self {
            multi,
            overall,
            bars: Mutex::new(HashMap::new()),
            echoed: Mutex::new(HashMap::new()),
            done: Mutex::default(),
            held: Mutex::new(None),
            table: Summary::new(info),
            width,
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
                // Columns line up: step ids padded to the longest one of the runbook.
                let template = format!(
                    "{{spinner:.cyan}} {{prefix:<{}.bold}} {{elapsed:>4}}  {{wide_msg}}",
                    self.width
                );
                b.set_style(
                    ProgressStyle::with_template(&template)
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
        if let Ok(mut e) = self.echoed.lock() {
            e.remove(step);
        }
        let counted = self.table.info.steps.iter().any(|s| s == step)
            && self
                .done
                .lock()
                .is_ok_and(|mut d| d.insert(step.to_owned()));
        if counted {
            self.overall.inc(1);
        }
        let _ = self.multi.println(line);
    }
}

impl Reporter for TtyReporter {
    fn emit(&self, _ts_ms: i64, event: &Event) {
        let event = event.for_terminal();
        self.table.record(&event);
        // A prompt holds the terminal: keep the event for after it rather than block the
        // task that emits it (a parallel step, a journal write) until someone answers.
        if let Ok(mut held) = self.held.lock()
            && let Some(events) = held.as_mut()
        {
            events.push(event);
            return;
        }
        self.draw(&event);
    }

    fn suspend(&self, f: &mut dyn FnMut()) {
        if let Ok(mut held) = self.held.lock() {
            held.get_or_insert_with(Vec::new);
        }
        self.multi.suspend(f);
        let events = self.held.lock().ok().and_then(|mut h| h.take());
        for e in events.unwrap_or_default() {
            self.draw(&e);
        }
    }
}

impl TtyReporter {
    fn draw(&self, event: &Event) {
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
            Event::Command { step, command, .. } => {
                let head = command_head(command);
                let fresh = self.echoed.lock().map_or(true, |mut e| {
                    e.insert(step.clone(), head.clone()).as_ref() != Some(&head)
                });
                if fresh {
                    let _ = self.multi.println(format!("  {step}: $ {head}"));
                }
            }
            Event::Retry { step, .. } | Event::Output { step, .. } => {
                if let Some(line) = describe(event) {
                    let _ = self.multi.println(format!("  {line}"));
                }
                if let Event::Retry {
                    attempt, delay_ms, ..
                } = event
                {
                    // The next attempt's command is worth echoing again.
                    if let Ok(mut e) = self.echoed.lock() {
                        e.remove(step);
                    }
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
            Event::RunFinished { status, .. } => {
                self.overall.finish_and_clear();
                let _ = self.multi.clear();
                eprintln!("{}", describe(event).unwrap_or_default());
                eprint!("{}", self.table.render(status));
            }
            other => {
                if let Some(line) = describe(other) {
                    let _ = self.multi.println(line);
                }
            }
        }
    }
}

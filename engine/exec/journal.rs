//! The journal reporter: every event becomes a journal record (and, for consequential ones, an
//! audit entry) before the engine goes on — so a crash always leaves the truth.
//!
//! Records nothing acts on and nobody is shown as decided are grouped into the next durable
//! commit (group commit): a step's start rides with its command, which is durable before the
//! action begins; a record with an audit entry (a step's end, an approval) is durable at once.
//! Output lines are queued too, committed every [`OutputSettings::flush`] or every 256 KiB, and always before the step's end; past [`OutputSettings::limit`] bytes per step
//! attempt only the head and the tail are stored, with a note of what was dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Event, Reporter};
use crate::state::{AuditInput, EventInput, RunStatus as StoredStatus, Store};

/// Environment variable: bytes of output stored per step attempt (`0`: no limit).
pub const OUTPUT_LIMIT_VAR: &str = "RUNBOOK_OUTPUT_LIMIT";
/// Environment variable: milliseconds between commits of queued output.
pub const OUTPUT_FLUSH_VAR: &str = "RUNBOOK_OUTPUT_FLUSH_MS";
/// Default of [`OUTPUT_LIMIT_VAR`]: 4 MiB (2 MiB of head, 2 MiB of tail).
pub const DEFAULT_OUTPUT_LIMIT: usize = 4 * 1024 * 1024;
/// Default of [`OUTPUT_FLUSH_VAR`].
pub const DEFAULT_OUTPUT_FLUSH_MS: u64 = 100;

/// How captured output is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputSettings {
    /// Bytes stored per step attempt, head and tail halves (`None`: everything).
    pub limit: Option<usize>,
    /// How long output (and a step's end) may wait for a commit.
    pub flush: Duration,
}

impl Default for OutputSettings {
    fn default() -> Self {
        Self {
            limit: Some(DEFAULT_OUTPUT_LIMIT),
            flush: Duration::from_millis(DEFAULT_OUTPUT_FLUSH_MS),
        }
    }
}

impl OutputSettings {
    /// The settings from [`OUTPUT_LIMIT_VAR`] and [`OUTPUT_FLUSH_VAR`].
    ///
    /// # Errors
    /// A variable that is set but is not a whole number, in words that name it.
    pub fn from_env() -> Result<Self, String> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// The settings from variables looked up by `var`.
    ///
    /// # Errors
    /// As [`OutputSettings::from_env`].
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let mut s = Self::default();
        if let Some(v) = var(OUTPUT_LIMIT_VAR) {
            let n = parse_size(&v).ok_or_else(|| {
                format!(
                    "{OUTPUT_LIMIT_VAR}=`{v}` is not a size; write bytes, or a number with KiB or MiB (e.g. `8MiB`), or 0 for no limit"
                )
            })?;
            s.limit = (n > 0).then_some(n);
        }
        if let Some(v) = var(OUTPUT_FLUSH_VAR) {
            let ms = v
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|&m| m > 0)
                .ok_or_else(|| {
                    format!(
                        "{OUTPUT_FLUSH_VAR}=`{v}` is not a positive whole number of milliseconds"
                    )
                })?;
            s.flush = Duration::from_millis(ms);
        }
        Ok(s)
    }
}

/// `1048576`, `512KiB`, `8MiB` (also `K`, `KB`, `M`, `MB`, all powers of 1024).
fn parse_size(v: &str) -> Option<usize> {
    let v = v.trim();
    let digits = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (n, unit) = v.split_at(digits);
    let n: usize = n.parse().ok()?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        "g" | "gb" | "gib" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Output of one step attempt past its head: the tail kept so far, and what was dropped.
#[derive(Debug, Default)]
struct Capture {
    /// Bytes the head may still take; once a line does not fit, the head is closed.
    head_left: usize,
    head_closed: bool,
    tail: VecDeque<(&'static str, String)>,
    tail_bytes: usize,
    dropped_bytes: u64,
    dropped_lines: u64,
}

impl Capture {
    fn new(limit: usize) -> Self {
        Self {
            head_left: limit / 2,
            ..Self::default()
        }
    }

    /// Keep `line` in the tail, dropping the oldest lines (or the start of a huge line) past
    /// `room` bytes.
    fn push_tail(&mut self, stream: &'static str, line: &str, room: usize) {
        let mut line = line;
        if line.len() + 1 > room {
            let mut from = line.len() + 1 - room.max(1);
            while !line.is_char_boundary(from) {
                from += 1;
            }
            self.dropped_bytes += from as u64;
            line = &line[from..];
        }
        self.tail_bytes += line.len() + 1;
        self.tail.push_back((stream, line.to_owned()));
        while self.tail_bytes > room {
            let Some((_, old)) = self.tail.pop_front() else {
                break;
            };
            self.tail_bytes -= old.len() + 1;
            self.dropped_bytes += old.len() as u64 + 1;
            self.dropped_lines += 1;
        }
    }
}

/// Writes events to the store, then passes them on to the display reporter.
pub struct JournalReporter {
    store: Arc<dyn Store>,
    run_id: String,
    user: String,
    host: String,
    display: Box<dyn Reporter>,
    failed: Arc<AtomicBool>,
    /// The `step_started` of a step whose action has not been rendered yet: it is committed
    /// with the `command` that follows, or on its own before any other event of the step.
    started: Mutex<Vec<(String, EventInput)>>,
    settings: OutputSettings,
    /// Output past the head of each step attempt that printed more than the limit.
    captures: Mutex<HashMap<String, Capture>>,
    /// Tells the flusher thread to stop.
    stop: Arc<AtomicBool>,
}

impl Drop for JournalReporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.end_all_captures();
        if let Err(e) = self.store.flush() {
            self.fail(&e.to_string());
        }
    }
}

impl JournalReporter {
    /// A reporter journaling run `run_id` into `store`.
    pub fn new(
        store: Arc<dyn Store>,
        run_id: String,
        user: String,
        host: String,
        display: Box<dyn Reporter>,
    ) -> Self {
        let settings = OutputSettings::from_env().unwrap_or_else(|e| {
            eprintln!("warning: {e}; the defaults are used");
            OutputSettings::default()
        });
        Self::with_settings(store, run_id, user, host, display, settings)
    }

    /// [`JournalReporter::new`] with explicit output settings.
    pub fn with_settings(
        store: Arc<dyn Store>,
        run_id: String,
        user: String,
        host: String,
        display: Box<dyn Reporter>,
        settings: OutputSettings,
    ) -> Self {
        let failed = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        // Queued records wait at most `flush` for a commit, even when the run is idle (a step
        // that prints a line then sleeps, an approval being waited for).
        let (s, f, st) = (Arc::downgrade(&store), failed.clone(), stop.clone());
        let every = settings.flush;
        let _ = std::thread::Builder::new()
            .name("journal-flush".to_owned())
            .spawn(move || {
                while !st.load(Ordering::SeqCst) {
                    std::thread::sleep(every);
                    let Some(store) = s.upgrade() else { return };
                    if let Err(e) = store.flush()
                        && !f.swap(true, Ordering::SeqCst)
                    {
                        eprintln!(
                            "error: failed to write the journal: {e}; the run stops (nothing further is started)"
                        );
                    }
                }
            });
        Self {
            store,
            run_id,
            user,
            host,
            display,
            failed,
            started: Mutex::new(Vec::new()),
            settings,
            captures: Mutex::new(HashMap::new()),
            stop,
        }
    }

    fn audit(
        &self,
        step: Option<&str>,
        action: &str,
        target: Option<String>,
        outcome: &str,
        detail: serde_json::Value,
    ) -> AuditInput {
        AuditInput {
            user: self.user.clone(),
            host: self.host.clone(),
            run_id: Some(self.run_id.clone()),
            step: step.map(str::to_owned),
            action: action.to_owned(),
            target,
            outcome: outcome.to_owned(),
            detail,
        }
    }

    fn write(&self, event: &EventInput, audit: Option<&AuditInput>) {
        if let Err(e) = self.store.record(&self.run_id, event, audit) {
            self.fail(&e.to_string());
        }
    }

    /// Queue `event` for the next durable commit.
    fn defer(&self, event: &EventInput, audit: Option<&AuditInput>) {
        if let Err(e) = self.store.record_deferred(&self.run_id, event, audit) {
            self.fail(&e.to_string());
        }
    }

    fn log(&self, step: &str, stream: &str, line: &str) {
        if let Err(e) = self
            .store
            .append_log_deferred(&self.run_id, step, 0, stream, line)
        {
            self.fail(&e.to_string());
        }
    }

    /// Store a line of output: in the head while it has room, else in the tail kept in memory
    /// until the attempt ends.
    fn output(&self, step: &str, stream: &'static str, line: &str) {
        let Some(limit) = self.settings.limit else {
            self.log(step, stream, line);
            return;
        };
        let Ok(mut caps) = self.captures.lock() else {
            return;
        };
        let c = caps
            .entry(step.to_owned())
            .or_insert_with(|| Capture::new(limit));
        if !c.head_closed && line.len() < c.head_left {
            c.head_left -= line.len() + 1;
            drop(caps);
            self.log(step, stream, line);
            return;
        }
        c.head_closed = true;
        c.push_tail(stream, line, limit - limit / 2);
    }

    /// The attempt of `step` ended (or another of its events came): store its tail, after a
    /// note of what was dropped, so the output is complete in the journal before the event.
    fn end_capture(&self, step: &str) {
        let c = match self.captures.lock() {
            Ok(mut caps) => caps.remove(step),
            Err(_) => None,
        };
        if let Some(c) = c {
            self.write_tail(step, &c);
        }
    }

    fn end_all_captures(&self) {
        let all: Vec<(String, Capture)> = match self.captures.lock() {
            Ok(mut caps) => caps.drain().collect(),
            Err(_) => Vec::new(),
        };
        for (step, c) in all {
            self.write_tail(step.as_str(), &c);
        }
    }

    fn write_tail(&self, step: &str, c: &Capture) {
        if c.dropped_bytes > 0 {
            let stream = c.tail.front().map_or("stdout", |(s, _)| *s);
            let limit = self.settings.limit.unwrap_or(0);
            self.log(
                step,
                stream,
                &format!(
                    "[runbook: {} bytes of output ({} whole lines) dropped here: only the first {} and the last {} bytes of a step's output are stored ({OUTPUT_LIMIT_VAR})]",
                    c.dropped_bytes,
                    c.dropped_lines,
                    limit / 2,
                    limit - limit / 2
                ),
            );
        }
        for (stream, line) in &c.tail {
            self.log(step, stream, line);
        }
    }

    fn fail(&self, why: &str) {
        if !self.failed.swap(true, Ordering::SeqCst) {
            eprintln!(
                "error: failed to write the journal: {why}; the run stops (nothing further is started)"
            );
        }
    }

    fn take_started(&self, step: &str) -> Option<EventInput> {
        let mut s = self.started.lock().ok()?;
        // Events of a called runbook's steps (`caller/child`) also show that `caller` started.
        let pos = s.iter().position(|(id, _)| {
            id == step
                || step
                    .strip_prefix(id.as_str())
                    .is_some_and(|r| r.starts_with('/'))
        })?;
        Some(s.remove(pos).1)
    }

    fn journal(&self, ev: &Event) {
        let data = serde_json::to_value(ev).unwrap_or_default();
        let kind = data
            .get("event")
            .and_then(|k| k.as_str())
            .unwrap_or("event")
            .to_owned();
        let step = ev.step().map(str::to_owned);
        let attempt = data
            .get("attempt")
            .and_then(serde_json::Value::as_u64)
            .and_then(|a| u32::try_from(a).ok());
        let input = EventInput {
            step: step.clone(),
            kind,
            attempt,
            data: data.clone(),
        };
        match ev {
            Event::Output { step, stream, line } => {
                let stream = match stream {
                    super::Stream::Stdout => "stdout",
                    super::Stream::Stderr => "stderr",
                };
                self.output(step, stream, line);
            }
            Event::StepStarted { step, .. } => {
                if let Ok(mut s) = self.started.lock() {
                    s.push((step.clone(), input));
                }
            }
            Event::Command { step, command, .. } => {
                self.end_capture(step);
                // The action starts right after this: its start and the audit entry are durable
                // first, in one commit with everything queued before (the previous step's end).
                // Even for a supervised shell: the supervisor is another process, and its commit
                // does not carry this process's queue — a kill -9 now would lose the end of an
                // irreversible step that really finished.
                let write = |event: &EventInput, audit: &AuditInput| {
                    self.write(event, Some(audit));
                };
                if let Some(started) = self.take_started(step) {
                    let mut merged = started;
                    merged.data["command"] = serde_json::Value::String(command.clone());
                    let audit = self.audit(
                        Some(step),
                        "step.execute",
                        Some(command.clone()),
                        "started",
                        serde_json::json!({ "attempt": attempt }),
                    );
                    write(&merged, &audit);
                } else {
                    let audit = self.audit(
                        Some(step),
                        "step.execute",
                        Some(command.clone()),
                        "started",
                        serde_json::json!({ "attempt": attempt }),
                    );
                    write(&input, &audit);
                }
            }
            Event::RunStarted {
                runbook, params, ..
            } => {
                let audit = self.audit(
                    None,
                    "run.start",
                    Some(runbook.clone()),
                    "started",
                    serde_json::json!({ "params": params }),
                );
                self.write(&input, Some(&audit));
            }
            Event::RunFinished { status, .. } => {
                self.end_all_captures();
                let audit = self.audit(None, "run.finish", None, status, data.clone());
                self.write(&input, None);
                let stored = match status.as_str() {
                    "succeeded" => StoredStatus::Succeeded,
                    "rolled_back" => StoredStatus::RolledBack,
                    "rollback_incomplete" => StoredStatus::RollbackIncomplete,
                    "aborted" => StoredStatus::Aborted,
                    "cancelled" => StoredStatus::Cancelled,
                    _ => StoredStatus::Failed,
                };
                if let Err(e) = self.store.finish_run(&self.run_id, stored, &audit) {
                    self.fail(&e.to_string());
                }
            }
            _ => {
                if let Some(s) = &step {
                    self.end_capture(s);
                    if let Some(started) = self.take_started(s) {
                        self.defer(&started, None);
                    }
                }
                let audit = match ev {
                    Event::StepSucceeded { step, summary, .. } => Some(self.audit(
                        Some(step),
                        "step.finish",
                        None,
                        "succeeded",
                        serde_json::json!({ "summary": summary }),
                    )),
                    Event::StepFailed { step, error, .. } => Some(self.audit(
                        Some(step),
                        "step.finish",
                        None,
                        "failed",
                        serde_json::json!({ "error": error }),
                    )),
                    Event::StepAborted { step, reason } => Some(self.audit(
                        Some(step),
                        "step.abort",
                        None,
                        "aborted",
                        serde_json::json!({ "reason": reason }),
                    )),
                    Event::Approval {
                        step,
                        approver,
                        decision,
                        via,
                    } if via != "cli" || decision == "refused" => Some(self.audit(
                        Some(step),
                        "approval",
                        Some(approver.clone()),
                        decision,
                        serde_json::json!({ "via": via }),
                    )),
                    Event::Compensated { step, ok, detail } => Some(self.audit(
                        Some(step),
                        "step.compensate",
                        None,
                        if *ok { "succeeded" } else { "failed" },
                        serde_json::json!({ "detail": detail }),
                    )),
                    Event::RollbackStarted {
                        steps,
                        not_compensated,
                    } => Some(self.audit(
                        None,
                        "run.rollback",
                        None,
                        "started",
                        serde_json::json!({ "steps": steps, "not_compensated": not_compensated }),
                    )),
                    Event::Resumed {
                        decisions, changed, ..
                    } => Some(self.audit(
                        None,
                        "run.resume",
                        None,
                        "resumed",
                        serde_json::json!({ "decisions": decisions, "changed": changed }),
                    )),
                    _ => None,
                };
                // A record with an audit entry (a step's end, an approval, a rollback) is
                // durable before anyone is shown it: a kill -9 right after the operator saw
                // "DROP DATABASE succeeded" must not leave an irreversible step in flight.
                // The rest rides with the next durable write.
                match audit {
                    Some(audit) => self.write(&input, Some(&audit)),
                    None => self.defer(&input, None),
                }
            }
        }
    }
}

impl Reporter for JournalReporter {
    fn emit(&self, ts_ms: i64, event: &Event) {
        if !self.failed.load(Ordering::SeqCst) {
            self.journal(event);
        }
        self.display.emit(ts_ms, event);
    }

    fn suspend(&self, f: &mut dyn FnMut()) {
        self.display.suspend(f);
    }

    fn healthy(&self) -> bool {
        !self.failed.load(Ordering::SeqCst)
    }
}

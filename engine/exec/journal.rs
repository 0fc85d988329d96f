//! The journal reporter: every event becomes a durable journal record (and, for consequential
//! ones, an audit entry) before the engine goes on — so a crash always leaves the truth.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::{Event, Reporter};
use crate::state::{AuditInput, EventInput, RunStatus as StoredStatus, Store};

/// Writes events to the store, then passes them on to the display reporter.
pub struct JournalReporter {
    store: Arc<dyn Store>,
    run_id: String,
    user: String,
    host: String,
    display: Box<dyn Reporter>,
    failed: AtomicBool,
    /// The `step_started` of a step whose action has not been rendered yet: it is committed
    /// with the `command` that follows (one fsync instead of two), or on its own before any
    /// other event of the step.
    started: Mutex<Vec<(String, EventInput)>>,
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
        Self {
            store,
            run_id,
            user,
            host,
            display,
            failed: AtomicBool::new(false),
            started: Mutex::new(Vec::new()),
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
                if let Err(e) = self.store.append_log(&self.run_id, step, 0, stream, line) {
                    self.fail(&e.to_string());
                }
            }
            Event::StepStarted { step, .. } => {
                if let Ok(mut s) = self.started.lock() {
                    s.push((step.clone(), input));
                }
            }
            Event::Command { step, command, .. } => {
                // The action starts right after this: commit its start and the audit entry now.
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
                    self.write(&merged, Some(&audit));
                } else {
                    let audit = self.audit(
                        Some(step),
                        "step.execute",
                        Some(command.clone()),
                        "started",
                        serde_json::json!({ "attempt": attempt }),
                    );
                    self.write(&input, Some(&audit));
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
                if let Some(s) = &step
                    && let Some(started) = self.take_started(s)
                {
                    self.write(&started, None);
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
                self.write(&input, audit.as_ref());
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

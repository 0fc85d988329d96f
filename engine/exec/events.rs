//! Events: every transition of a run, emitted once and consumed by reporters (and the journal).

use serde::Serialize;

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// A transition of a run. All text in it is already masked.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The run began.
    RunStarted {
        /// Run id.
        run_id: String,
        /// Runbook name.
        runbook: String,
        /// Params (secret params masked).
        params: serde_json::Value,
        /// Who started it.
        user: String,
        /// Where.
        host: String,
    },
    /// A step began (or a new attempt of it).
    StepStarted {
        /// Step id.
        step: String,
        /// Attempt number, from 1.
        attempt: u32,
        /// Attempts allowed.
        attempts: u32,
    },
    /// The rendered command or request of an attempt.
    Command {
        /// Step id.
        step: String,
        /// Attempt.
        attempt: u32,
        /// What was run.
        command: String,
    },
    /// A line of output.
    Output {
        /// Step id.
        step: String,
        /// Which stream.
        stream: super::Stream,
        /// The line.
        line: String,
    },
    /// One evaluation of a check.
    Check {
        /// Step id (`preflight` for runbook-level checks).
        step: String,
        /// `require`, `verify` or `preflight`.
        phase: String,
        /// Index of the check in its list.
        index: usize,
        /// Poll number, from 1.
        poll: u32,
        /// Whether it passed.
        passed: bool,
        /// What was seen.
        detail: String,
    },
    /// An attempt failed and another will follow.
    Retry {
        /// Step id.
        step: String,
        /// The attempt that failed.
        attempt: u32,
        /// Delay before the next one.
        delay_ms: u64,
        /// Why it failed.
        error: String,
    },
    /// A step did not run.
    StepSkipped {
        /// Step id.
        step: String,
        /// Why.
        reason: String,
        /// Whether its own guard skipped it (a resumed run keeps such skips).
        by_guard: bool,
    },
    /// A step succeeded (action done, gates passed).
    StepSucceeded {
        /// Step id.
        step: String,
        /// Wall time.
        duration_ms: u64,
        /// Attempts used.
        attempts: u32,
        /// One-line result.
        summary: String,
        /// `result` (masked), kept so a resumed run can feed later templates.
        result: serde_json::Value,
        /// `outputs`.
        outputs: serde_json::Map<String, serde_json::Value>,
    },
    /// A step failed.
    StepFailed {
        /// Step id.
        step: String,
        /// Wall time.
        duration_ms: u64,
        /// Attempts used.
        attempts: u32,
        /// Why.
        error: String,
        /// Stopped by the run's cancellation (Ctrl-C, SIGTERM, whole-run timeout) rather than
        /// by a fault of its own: shown as `cancelled`, and `runbook resume` runs it again.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        cancelled: bool,
    },
    /// A guard failed or an approval was denied: the step never ran, the run aborts.
    StepAborted {
        /// Step id.
        step: String,
        /// Why.
        reason: String,
    },
    /// An approval was given or refused.
    Approval {
        /// Step id.
        step: String,
        /// Who.
        approver: String,
        /// `approved` or `denied`.
        decision: String,
        /// How: `tty`, `--yes`, `cli`.
        via: String,
    },
    /// An approval step waits for approvers.
    ApprovalWaiting {
        /// Step id.
        step: String,
        /// The rendered message.
        message: String,
        /// Approvals needed.
        needed: u32,
        /// Approvals so far.
        have: u32,
    },
    /// Rollback began.
    RollbackStarted {
        /// Steps to compensate, in order.
        steps: Vec<String>,
        /// Completed steps not compensated because a point of no return followed them.
        not_compensated: Vec<String>,
    },
    /// A compensation ended.
    Compensated {
        /// Step id.
        step: String,
        /// Whether it worked.
        ok: bool,
        /// What happened.
        detail: String,
    },
    /// A stopped run continues: what was done is kept, decisions about in-flight steps recorded.
    Resumed {
        /// Run id.
        run_id: String,
        /// Steps already done (kept, not re-run).
        done: Vec<String>,
        /// What happens to each step that was in flight, and why.
        decisions: Vec<serde_json::Value>,
        /// Whether the runbook changed since the run started (`--allow-changed`).
        changed: bool,
    },
    /// The run ended.
    RunFinished {
        /// Final status.
        status: String,
        /// Wall time.
        duration_ms: u64,
        /// Exit code of the process.
        exit_code: u8,
    },
}

impl Event {
    /// The step the event is about, if any.
    pub fn step(&self) -> Option<&str> {
        match self {
            Event::StepStarted { step, .. }
            | Event::Command { step, .. }
            | Event::Output { step, .. }
            | Event::Check { step, .. }
            | Event::Retry { step, .. }
            | Event::StepSkipped { step, .. }
            | Event::StepSucceeded { step, .. }
            | Event::StepFailed { step, .. }
            | Event::StepAborted { step, .. }
            | Event::Approval { step, .. }
            | Event::ApprovalWaiting { step, .. }
            | Event::Compensated { step, .. } => Some(step),
            _ => None,
        }
    }
}

/// Consumes events: a terminal UI, plain lines, JSON lines, the journal.
pub trait Reporter: Send + Sync {
    /// Handle one event (`ts_ms` is when it happened).
    fn emit(&self, ts_ms: i64, event: &Event);
    /// Whether the reporter still works; a journal that cannot write stops the run.
    fn healthy(&self) -> bool {
        true
    }
    /// Run `f` with the terminal free for a prompt (progress bars hidden).
    fn suspend(&self, f: &mut dyn FnMut()) {
        f();
    }
}

impl Event {
    /// The event with every string it carries — step ids, messages, commands, output lines,
    /// and every string and key of its structured values (`params`, `result`, `outputs`,
    /// resume decisions) — passed through the masker.
    ///
    /// [`super::Shared::emit`] applies this to every event before any reporter sees it, so
    /// display, `--output json`, the journal and the audit log all receive masked values, and
    /// a field added here later cannot be forgotten: the match below names every field.
    #[must_use]
    pub fn masked(&self, m: &crate::mask::Masker) -> Event {
        if m.is_empty() {
            return self.clone();
        }
        self.map_text(&|t| m.mask(t), &|v| m.mask_value(v))
    }

    /// The event with every control character of its text made visible, for a terminal: a
    /// step id, param or output line cannot set the window title or move the cursor.
    #[must_use]
    pub fn for_terminal(&self) -> Event {
        self.map_text(&crate::terminal::escape, &crate::terminal::escape_value)
    }

    /// The event with `text` applied to every string field and `value` to every structured
    /// one. The match names every field, so a field added later cannot be forgotten.
    fn map_text(
        &self,
        text: &dyn Fn(&str) -> String,
        value: &dyn Fn(&serde_json::Value) -> serde_json::Value,
    ) -> Event {
        let s = |v: &String| text(v);
        let list = |v: &Vec<String>| v.iter().map(|x| text(x)).collect::<Vec<_>>();
        match self {
            Event::RunStarted {
                run_id,
                runbook,
                params,
                user,
                host,
            } => Event::RunStarted {
                run_id: s(run_id),
                runbook: s(runbook),
                params: value(params),
                user: s(user),
                host: s(host),
            },
            Event::StepStarted {
                step,
                attempt,
                attempts,
            } => Event::StepStarted {
                step: s(step),
                attempt: *attempt,
                attempts: *attempts,
            },
            Event::Command {
                step,
                attempt,
                command,
            } => Event::Command {
                step: s(step),
                attempt: *attempt,
                command: s(command),
            },
            Event::Output { step, stream, line } => Event::Output {
                step: s(step),
                stream: *stream,
                line: s(line),
            },
            Event::Check {
                step,
                phase,
                index,
                poll,
                passed,
                detail,
            } => Event::Check {
                step: s(step),
                phase: s(phase),
                index: *index,
                poll: *poll,
                passed: *passed,
                detail: s(detail),
            },
            Event::Retry {
                step,
                attempt,
                delay_ms,
                error,
            } => Event::Retry {
                step: s(step),
                attempt: *attempt,
                delay_ms: *delay_ms,
                error: s(error),
            },
            Event::StepSkipped {
                step,
                reason,
                by_guard,
            } => Event::StepSkipped {
                step: s(step),
                reason: s(reason),
                by_guard: *by_guard,
            },
            Event::StepSucceeded {
                step,
                duration_ms,
                attempts,
                summary,
                result,
                outputs,
            } => Event::StepSucceeded {
                step: s(step),
                duration_ms: *duration_ms,
                attempts: *attempts,
                summary: s(summary),
                result: value(result),
                outputs: outputs.iter().map(|(k, v)| (text(k), value(v))).collect(),
            },
            Event::StepFailed {
                step,
                duration_ms,
                attempts,
                error,
                cancelled,
            } => Event::StepFailed {
                step: s(step),
                duration_ms: *duration_ms,
                attempts: *attempts,
                error: s(error),
                cancelled: *cancelled,
            },
            Event::StepAborted { step, reason } => Event::StepAborted {
                step: s(step),
                reason: s(reason),
            },
            Event::Approval {
                step,
                approver,
                decision,
                via,
            } => Event::Approval {
                step: s(step),
                approver: s(approver),
                decision: decision.clone(),
                via: via.clone(),
            },
            Event::ApprovalWaiting {
                step,
                message,
                needed,
                have,
            } => Event::ApprovalWaiting {
                step: s(step),
                message: s(message),
                needed: *needed,
                have: *have,
            },
            Event::RollbackStarted {
                steps,
                not_compensated,
            } => Event::RollbackStarted {
                steps: list(steps),
                not_compensated: list(not_compensated),
            },
            Event::Compensated { step, ok, detail } => Event::Compensated {
                step: s(step),
                ok: *ok,
                detail: s(detail),
            },
            Event::Resumed {
                run_id,
                done,
                decisions,
                changed,
            } => Event::Resumed {
                run_id: s(run_id),
                done: list(done),
                decisions: decisions.iter().map(value).collect(),
                changed: *changed,
            },
            Event::RunFinished {
                status,
                duration_ms,
                exit_code,
            } => Event::RunFinished {
                status: status.clone(),
                duration_ms: *duration_ms,
                exit_code: *exit_code,
            },
        }
    }
}

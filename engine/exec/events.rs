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

//! Resuming a stopped run: read its journal, keep what is done, and decide — safely, and on the
//! record — what happens to the steps that were in flight when it stopped.

use std::collections::{BTreeMap, BTreeSet};

use super::step::{StepEnd, StepStatus};
use crate::compile::Compiled;
use crate::state::EventRecord;

/// What the operator decided for an in-flight step (`--rerun STEP` / `--skip STEP` or the TTY).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Run it again.
    Rerun,
    /// Consider it done without running it.
    Skip,
}

/// How a resumed run continues.
#[derive(Debug, Clone, Default)]
pub struct ResumeFrom {
    /// The journal of the run so far.
    pub events: Vec<EventRecord>,
    /// Explicit decisions, by step id.
    pub decisions: BTreeMap<String, Decision>,
    /// `retry --from STEP`: this step and everything downstream run again.
    pub from_step: Option<String>,
    /// The runbook changed since the run started and the operator allowed it.
    pub changed: bool,
}

/// The state of each main step according to the journal.
#[derive(Debug, Default)]
pub(super) struct Journaled {
    /// Steps done: succeeded, or skipped by their own guard.
    pub done: BTreeMap<usize, StepEnd>,
    /// Steps whose action had started and not ended (or was killed by a cancellation).
    pub in_flight: BTreeSet<usize>,
}

/// Read a run's journal: the steps of `c` as the run names them, `prefix/id` for a runbook called
/// by the step `prefix` (empty for the run's own runbook).
pub(super) fn read(c: &Compiled, events: &[EventRecord], prefix: &str) -> Journaled {
    let mut j = Journaled::default();
    let mut started_ms: BTreeMap<usize, i64> = BTreeMap::new();
    for e in events {
        let Some(named) = e.step.as_deref() else {
            continue;
        };
        let step = if prefix.is_empty() {
            named
        } else {
            match named
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_prefix('/'))
            {
                Some(local) => local,
                None => continue,
            }
        };
        let Some(&i) = c.index_by_id.get(step).filter(|&&i| i < c.main_count) else {
            continue;
        };
        if c.steps[i].id != step {
            continue;
        }
        let d = &e.data;
        match e.kind.as_str() {
            "step_started" | "command" | "retry" | "approval_waiting" | "approval" => {
                started_ms.entry(i).or_insert(e.at_ms);
                j.done.remove(&i);
                j.in_flight.insert(i);
            }
            "check" if d["phase"] == "verify" => {
                j.in_flight.insert(i);
            }
            "step_succeeded" => {
                j.in_flight.remove(&i);
                let outputs = d["outputs"].as_object().cloned().unwrap_or_default();
                j.done.insert(
                    i,
                    StepEnd {
                        status: StepStatus::Succeeded,
                        result: d["result"].clone(),
                        outputs,
                        attempts: d["attempts"]
                            .as_u64()
                            .and_then(|a| u32::try_from(a).ok())
                            .unwrap_or(1),
                        started_ms: started_ms.get(&i).copied().unwrap_or(e.at_ms),
                        finished_ms: e.at_ms,
                    },
                );
            }
            "step_skipped" => {
                j.in_flight.remove(&i);
                if d["by_guard"] == true {
                    j.done.insert(
                        i,
                        StepEnd::skipped(d["reason"].as_str().unwrap_or("guard false").to_owned()),
                    );
                } else {
                    j.done.remove(&i);
                }
            }
            "step_failed" => {
                j.done.remove(&i);
                // Killed by a cancellation while acting: its effect is unknown, as at a crash.
                if d["error"] == "cancelled" {
                    j.in_flight.insert(i);
                } else {
                    j.in_flight.remove(&i);
                }
            }
            "step_aborted" => {
                j.done.remove(&i);
                j.in_flight.remove(&i);
            }
            "compensated" if d["ok"] == true => {
                // Undone by a rollback: it has to run again.
                j.done.remove(&i);
            }
            _ => {}
        }
    }
    j
}

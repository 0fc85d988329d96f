//! Resuming a stopped run: read its journal, keep what is done, and decide — safely, and on the
//! record — what happens to the steps that were in flight when it stopped.

use std::collections::{BTreeMap, BTreeSet};

use super::step::{StepEnd, StepStatus};
use super::supervise::ProcessId;
use crate::compile::Compiled;
use crate::state::EventRecord;

/// What the operator decided for an in-flight step (`--rerun STEP` / `--skip STEP` /
/// `--kill-running STEP`, or the TTY).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Run it again.
    Rerun,
    /// Consider it done without running it.
    Skip,
    /// Kill its still-running process, then decide as for any step in flight.
    Kill,
    /// Kill its still-running process, then run it again.
    KillThenRerun,
    /// Kill its still-running process, then consider it done.
    KillThenSkip,
}

impl Decision {
    /// `--kill-running` added to an earlier decision (or none) about the same step.
    pub fn kill_then(earlier: Option<Decision>) -> Decision {
        match earlier {
            Some(Decision::Rerun | Decision::KillThenRerun) => Decision::KillThenRerun,
            Some(Decision::Skip | Decision::KillThenSkip) => Decision::KillThenSkip,
            _ => Decision::Kill,
        }
    }

    /// Whether the operator asked to kill a still-running process of the step.
    pub fn kills(self) -> bool {
        matches!(
            self,
            Decision::Kill | Decision::KillThenRerun | Decision::KillThenSkip
        )
    }

    /// The decision about the step itself, once no process of it runs.
    pub fn then(self) -> Option<Decision> {
        match self {
            Decision::Rerun | Decision::KillThenRerun => Some(Decision::Rerun),
            Decision::Skip | Decision::KillThenSkip => Some(Decision::Skip),
            Decision::Kill => None,
        }
    }
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
    /// `retry --with-upstream`: upstream steps whose journaled results no longer hold (undone by
    /// a rollback, failed, never run) run again first, with what depends on them.
    pub with_upstream: bool,
    /// The runbook changed since the run started and the operator allowed it.
    pub changed: bool,
}

/// The state of each main step according to the journal.
#[derive(Debug, Default)]
pub(super) struct Journaled {
    /// Steps done: succeeded, or skipped by their own guard.
    pub done: BTreeMap<usize, StepEnd>,
    /// Steps whose action had started and not ended (or was killed by a cancellation), and
    /// non-idempotent steps whose action started and then failed: their effect is unknown.
    pub in_flight: BTreeSet<usize>,
    /// The in-flight steps that failed (rather than stopped) after their action started.
    pub failed_after_acting: BTreeSet<usize>,
    /// What the journal says about the process of each in-flight step's last attempt.
    pub process: BTreeMap<usize, ProcessTrace>,
}

/// The journal's record of the process of a step's last attempt.
#[derive(Debug, Clone, Default)]
pub(super) struct ProcessTrace {
    /// The attempt.
    pub attempt: u32,
    /// The attempt's action was journaled as starting (`command`).
    pub commanded: bool,
    /// The step's action is a shell run under a supervisor.
    pub supervised: bool,
    /// The supervisor, once journaled (the shell cannot start before).
    pub supervisor: Option<ProcessId>,
    /// The shell, once journaled.
    pub shell: Option<ProcessId>,
    /// The exit record (exit code, signal, output tails), if the shell ended.
    pub exited: Option<serde_json::Value>,
    /// The attempt failed and a retry was due when the run stopped.
    pub retry_due: bool,
}

/// Read a run's journal: the steps of `c` as the run names them, `prefix/id` for a runbook called
/// by the step `prefix` (empty for the run's own runbook).
pub(super) fn read(c: &Compiled, events: &[EventRecord], prefix: &str) -> Journaled {
    let mut j = Journaled::default();
    let mut started_ms: BTreeMap<usize, i64> = BTreeMap::new();
    // Only a journal that says so tells "never started" from "no record": a run journaled
    // before steps were supervised has no supervisor records at all.
    let supervised = events.iter().any(|e| e.kind == super::supervise::MARK);
    let is_shell = |i: usize| supervised && c.step(i).run.is_some();
    // Steps whose action started (sticky: a later attempt that fails early does not undo it).
    let mut acted: BTreeSet<usize> = BTreeSet::new();
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
        let attempt = d["attempt"]
            .as_u64()
            .and_then(|a| u32::try_from(a).ok())
            .unwrap_or(0);
        match e.kind.as_str() {
            "step_started" | "command" | "retry" | "approval_waiting" | "approval" => {
                started_ms.entry(i).or_insert(e.at_ms);
                j.done.remove(&i);
                j.in_flight.insert(i);
                // An action's command is journaled with its `step_started`; a `command` on its
                // own is a check's (a gate re-checked on resume, a precondition): it does not
                // start an attempt of the action.
                if e.kind == "command" {
                    continue;
                }
                j.failed_after_acting.remove(&i);
                let commanded = d["command"].is_string();
                if e.kind == "step_started" {
                    j.process.insert(
                        i,
                        ProcessTrace {
                            attempt,
                            supervised: is_shell(i),
                            ..ProcessTrace::default()
                        },
                    );
                }
                let trace = j.process.entry(i).or_default();
                if commanded {
                    acted.insert(i);
                    trace.commanded = true;
                    trace.supervised = is_shell(i);
                    trace.attempt = trace.attempt.max(attempt);
                }
                if e.kind == "retry" {
                    trace.retry_due = true;
                }
            }
            "check" if d["phase"] == "verify" => {
                j.in_flight.insert(i);
            }
            super::supervise::STARTED => {
                let trace = j.process.entry(i).or_default();
                trace.attempt = attempt;
                trace.supervisor = serde_json::from_value(d["supervisor"].clone()).ok();
            }
            super::supervise::RUNNING => {
                let trace = j.process.entry(i).or_default();
                trace.shell = serde_json::from_value(d["process"].clone()).ok();
            }
            super::supervise::EXITED => {
                let trace = j.process.entry(i).or_default();
                if trace.attempt == attempt && trace.exited.is_none() {
                    trace.exited = Some(d.clone());
                }
            }
            "step_succeeded" => {
                j.in_flight.remove(&i);
                j.process.remove(&i);
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
                j.process.remove(&i);
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
                // The engine ended the attempt: its process trace no longer decides anything.
                j.process.remove(&i);
                // Killed by a cancellation while acting: its effect is unknown, as at a crash.
                // A non-idempotent step whose action started and then failed (an error, a
                // timeout, a gate or an assert that failed after it acted) may have had its
                // effect too: a resume treats it like a step in flight, never as simply failed.
                // (`cancelled`, or `cancelled: <why>` since the error names the reason.)
                let error = d["error"].as_str().unwrap_or_default();
                if error == "cancelled" || error.starts_with("cancelled: ") {
                    j.in_flight.insert(i);
                } else if acted.contains(&i) && !c.steps[i].idempotent {
                    j.in_flight.insert(i);
                    j.failed_after_acting.insert(i);
                } else {
                    j.in_flight.remove(&i);
                }
            }
            "step_aborted" => {
                j.done.remove(&i);
                j.in_flight.remove(&i);
                j.process.remove(&i);
            }
            "compensated" if d["ok"] == true => {
                // Undone by a rollback: it has to run again.
                j.done.remove(&i);
                acted.remove(&i);
            }
            _ => {}
        }
    }
    j.process.retain(|i, _| j.in_flight.contains(i));
    j
}

/// What became of the process of an in-flight step's last attempt.
#[derive(Debug)]
pub(super) enum Settled {
    /// It ended: the journal has its exit record (exit code, signal, output tails).
    Exited(serde_json::Value),
    /// It never started (the reason, for the record): running the step is safe.
    NeverStarted(String),
    /// Nothing of it runs and its outcome is unknown (`killed`: by this resume, on request).
    Unknown {
        /// Killed on the operator's request (`--kill-running`).
        killed: bool,
    },
    /// It still runs and the operator's decision needs it gone: refused (the message says why).
    Running(String),
    /// The resume was cancelled while it waited.
    Interrupted(String),
}

/// Whether the journal alone settles a step in flight without asking anyone: its process
/// ended with a recorded outcome, never started, is still running (it is waited for), or a
/// retry was due.
pub(super) fn settles_alone(trace: &ProcessTrace) -> bool {
    if trace.retry_due || trace.exited.is_some() {
        return true;
    }
    if !(trace.supervised && trace.commanded) {
        return false;
    }
    match &trace.supervisor {
        None => true,
        Some(s) => s.is_alive() || trace.shell.as_ref().is_some_and(ProcessId::is_alive),
    }
}

/// The exit record of `step`'s attempt `attempt`, if the journal has one now.
fn exit_record(shared: &super::Shared, step: &str, attempt: u32) -> Option<serde_json::Value> {
    let store = shared.store.as_ref()?;
    let events = store.events(&shared.run_id).ok()?;
    events
        .into_iter()
        .find(|e| {
            e.kind == super::supervise::EXITED
                && e.step.as_deref() == Some(step)
                && e.attempt == Some(attempt)
        })
        .map(|e| e.data)
}

/// Say something on the terminal while the resume waits (progress bars hidden).
fn say(shared: &super::Shared, text: &str) {
    let line = format!("{text}\n");
    shared.reporter.suspend(&mut || {
        use std::io::Write;
        let mut err = std::io::stderr();
        let _ = err.write_all(line.as_bytes());
        let _ = err.flush();
    });
}

/// Find out what became of the process of the in-flight step `id`: its recorded outcome, or
/// wait while it still runs (never start a second copy), or kill it when the operator asked.
pub(super) async fn settle(
    shared: &super::Shared,
    id: &str,
    trace: &ProcessTrace,
    decision: Option<Decision>,
) -> Settled {
    let attempt = trace.attempt;
    let ended = |rec: serde_json::Value| {
        if rec["started"] == false {
            Settled::NeverStarted(format!(
                "its command never started ({})",
                rec["error"]
                    .as_str()
                    .unwrap_or("the shell could not be started")
            ))
        } else {
            Settled::Exited(rec)
        }
    };
    if let Some(rec) = &trace.exited {
        return ended(rec.clone());
    }
    if !(trace.supervised && trace.commanded) {
        return Settled::Unknown { killed: false };
    }
    let Some(supervisor) = &trace.supervisor else {
        // The supervisor is journaled before it may start the shell: without that record the
        // command never ran.
        return Settled::NeverStarted(
            "its command never started (the engine stopped before launching it)".to_owned(),
        );
    };
    let shell = |trace_shell: Option<&ProcessId>| -> Option<ProcessId> {
        trace_shell
            .filter(|p| p.is_alive())
            .cloned()
            .or_else(|| supervisor.group_leading_children().into_iter().next())
    };
    let started = std::time::Instant::now();
    let mut announced = false;
    let mut last_note = started;
    loop {
        let sup_alive = supervisor.is_alive();
        let running = shell(trace.shell.as_ref());
        if !sup_alive && running.is_none() {
            // Gone. The supervisor journals the exit before it ends: read it.
            return match exit_record(shared, id, attempt) {
                Some(rec) => ended(rec),
                None => Settled::Unknown { killed: false },
            };
        }
        let pid_text = running
            .as_ref()
            .map_or_else(|| "its shell".to_owned(), |p| format!("pid {}", p.pid));
        if decision.is_some_and(Decision::kills) {
            if let Some(p) = &running {
                super::supervise::kill_group(p.pid);
            }
            // The supervisor journals the killed shell's exit, then ends.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while supervisor.is_alive() && std::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            if supervisor.is_alive() {
                super::supervise::kill_pid(supervisor.pid);
            }
            say(
                shared,
                &format!(
                    "step `{id}`: its process ({pid_text}) still ran; killed (--kill-running {id})"
                ),
            );
            return Settled::Unknown { killed: true };
        }
        if decision.is_some() {
            return Settled::Running(format!(
                "step `{id}` still runs ({pid_text}, supervisor pid {}, started by the stopped engine): it is never run twice at once — resume without --rerun/--skip {id} waits for it and uses its outcome, or pass --kill-running {id} to stop it first",
                supervisor.pid
            ));
        }
        if shared.is_cancelled() {
            return Settled::Interrupted(format!(
                "step `{id}` still runs ({pid_text}); the resume was interrupted while waiting for it — resume again to wait, or pass --kill-running {id}"
            ));
        }
        if !announced {
            announced = true;
            say(
                shared,
                &format!(
                    "step `{id}`: its process ({pid_text}) still runs since the engine stopped; waiting for it to end (--kill-running {id} stops it)"
                ),
            );
        } else if last_note.elapsed() >= std::time::Duration::from_secs(10) {
            last_note = std::time::Instant::now();
            say(
                shared,
                &format!(
                    "step `{id}`: still waiting for its process ({pid_text}), {} so far",
                    crate::duration::format(std::time::Duration::from_secs(
                        started.elapsed().as_secs()
                    ))
                ),
            );
        }
        let mut cancel = shared.cancelled();
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
            () = cancel.wait() => {}
        }
    }
}

/// What a step's journal says about it, for the plan of a retry.
fn journal_state(c: &Compiled, events: &[EventRecord]) -> BTreeMap<usize, &'static str> {
    let mut state = BTreeMap::new();
    for e in events {
        let Some(&i) = e
            .step
            .as_deref()
            .and_then(|s| c.index_by_id.get(s))
            .filter(|&&i| i < c.main_count)
        else {
            continue;
        };
        let what = match e.kind.as_str() {
            "step_started" => "in flight",
            "step_succeeded" => "succeeded",
            "step_skipped" => "skipped",
            "step_failed" => "failed",
            "step_aborted" => "aborted",
            "compensated" if e.data["ok"] == true => "undone by the rollback",
            _ => continue,
        };
        state.insert(i, what);
    }
    state
}

/// Why `retry RUN --from STEP` cannot run as asked.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    /// The step is a `finally` step: those run at the end of every run anyway.
    #[error(
        "`{0}` is a finally step: finally steps run at the end of every retry anyway\n  help: retry --from a main step"
    )]
    FinallyStep(String),
    /// Upstream steps of the retried ones no longer hold their journaled results.
    #[error(
        "refusing to retry from `{from}`: {} upstream of it no longer {} a result to build on: {}\n  help: `runbook retry {run} --from {from} --with-upstream` re-runs {} first (then what depends on {}), in dependency order; or retry --from an earlier step",
        if .missing.len() == 1 { "a step" } else { "steps" },
        if .missing.len() == 1 { "has" } else { "have" },
        .missing.iter().map(|(s, why)| format!("`{s}` ({why})")).collect::<Vec<_>>().join(", "),
        if .missing.len() == 1 { "it" } else { "them" },
        if .missing.len() == 1 { "it" } else { "them" },
    )]
    Upstream {
        /// The run.
        run: String,
        /// The step asked for.
        from: String,
        /// The upstream steps and what the journal says of them (`undone by the rollback`…).
        missing: Vec<(String, String)>,
    },
}

/// What `retry RUN --from STEP` runs, decided from the journal before anything runs.
#[derive(Debug, Clone, Default)]
pub struct RetryPlan {
    /// The steps that run again, in dependency order, each with why.
    pub rerun: Vec<(String, String)>,
    /// Upstream steps whose journaled results are used as they are.
    pub kept: Vec<String>,
    /// Steps neither upstream nor downstream of STEP that did not succeed: left as the journal
    /// has them (not run), with what it says.
    pub left: Vec<(String, String)>,
    /// Indexes of `rerun`.
    rerun_idx: BTreeSet<usize>,
    /// Indexes of `left`.
    left_idx: BTreeSet<usize>,
}

impl RetryPlan {
    /// The plan as the operator reads it before the retry starts.
    pub fn describe(&self, run: &str, from: &str) -> String {
        use std::fmt::Write as _;
        let mut s = format!("retry of run {run} from `{from}`:\n  runs again, in this order:\n");
        for (k, (id, why)) in self.rerun.iter().enumerate() {
            let _ = writeln!(s, "    {}. {id} ({why})", k + 1);
        }
        if !self.kept.is_empty() {
            let _ = writeln!(
                s,
                "  upstream results taken from the journal: {}",
                self.kept.join(", ")
            );
        }
        if !self.left.is_empty() {
            let _ = writeln!(
                s,
                "  not run (neither upstream nor downstream of `{from}`): {}",
                self.left
                    .iter()
                    .map(|(id, why)| format!("{id} ({why})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        s
    }
}

/// Decide what `retry RUN --from STEP` runs: STEP and its descendants, in dependency order, with
/// upstream results taken from the journal. An upstream step whose result no longer holds
/// (undone by a rollback, failed, never run) refuses the retry, unless `with_upstream`: then it
/// runs again first, and so does every upstream step that depends on it (its journaled result
/// was built on the old one).
///
/// # Errors
/// A `finally` step, or upstream steps without a result and no `with_upstream`.
pub fn retry_plan(
    c: &Compiled,
    events: &[EventRecord],
    run: &str,
    from: &str,
    with_upstream: bool,
) -> Result<RetryPlan, RetryError> {
    let Some(&s) = c.index_by_id.get(from) else {
        return Ok(RetryPlan::default());
    };
    if s >= c.main_count {
        return Err(RetryError::FinallyStep(from.to_owned()));
    }
    let journaled = read(c, events, "");
    let state = journal_state(c, events);
    let said = |i: usize| state.get(&i).copied().unwrap_or("never ran").to_owned();
    let targets: BTreeSet<usize> = std::iter::once(s).chain(c.downstream(s)).collect();
    let upstream: BTreeSet<usize> = targets
        .iter()
        .flat_map(|&t| c.upstream(t))
        .filter(|i| !targets.contains(i))
        .collect();
    let missing: Vec<usize> = c
        .order
        .iter()
        .copied()
        .filter(|i| upstream.contains(i) && !journaled.done.contains_key(i))
        .collect();
    if !missing.is_empty() && !with_upstream {
        return Err(RetryError::Upstream {
            run: run.to_owned(),
            from: from.to_owned(),
            missing: missing
                .iter()
                .map(|&i| (c.steps[i].id.clone(), said(i)))
                .collect(),
        });
    }
    let mut why: BTreeMap<usize, String> = BTreeMap::new();
    why.insert(s, "the step asked for".to_owned());
    for &m in &missing {
        why.insert(m, format!("upstream, {}: --with-upstream", said(m)));
    }
    for &m in &missing {
        for d in c.downstream(m) {
            if upstream.contains(&d) {
                why.entry(d).or_insert_with(|| {
                    format!("upstream, depends on the re-run `{}`", c.steps[m].id)
                });
            }
        }
    }
    for &t in &targets {
        why.entry(t)
            .or_insert_with(|| format!("downstream of `{from}`"));
    }
    let mut plan = RetryPlan::default();
    for &i in &c.order {
        if let Some(w) = why.remove(&i) {
            plan.rerun.push((c.steps[i].id.clone(), w));
            plan.rerun_idx.insert(i);
        } else if upstream.contains(&i) {
            plan.kept.push(c.steps[i].id.clone());
        } else if !journaled.done.contains_key(&i) && !journaled.in_flight.contains(&i) {
            plan.left.push((c.steps[i].id.clone(), said(i)));
            plan.left_idx.insert(i);
        }
    }
    Ok(plan)
}

/// Apply a retry's plan to what a resumed run keeps: the re-run steps are no longer done, and
/// the steps left out are kept out (recorded as not run, never scheduled).
pub(super) fn apply_retry(plan: &RetryPlan, from: &str, journaled: &mut Journaled) {
    for i in &plan.rerun_idx {
        journaled.done.remove(i);
        journaled.in_flight.remove(i);
    }
    for &i in &plan.left_idx {
        journaled.done.insert(
            i,
            StepEnd::skipped(format!("not part of `retry --from {from}`")),
        );
    }
}

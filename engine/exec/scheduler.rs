//! The scheduler: start every step whose needs are met, up to `max_parallel`; stop scheduling
//! on failure; roll back; run `finally`; decide the run's status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use minijinja::Value;
use tokio::task::JoinSet;

use super::context::{ActionCtx, Shared, TemplateState};
use super::step::{Recovered, StepEnd, StepStatus, compensate, poll_check, run_step};
use super::{ActionError, ActionResult, Event, RunStatus};
use crate::compile::{CheckTiming, Compiled, ParamValues, template_key};
use crate::model::OnFailure;

/// Run a compiled runbook: preflight, the DAG, rollback when asked, `finally`.
///
/// `prefix` names the steps of a called sub-runbook (`caller/step`).
pub(super) async fn run(
    shared: Arc<Shared>,
    c: Arc<Compiled>,
    params: ParamValues,
    prefix: Vec<String>,
    prior: BTreeMap<usize, StepEnd>,
    mut recovered: BTreeMap<usize, Recovered>,
) -> RunStatus {
    let started = Instant::now();
    let top = prefix.is_empty();
    let mut state = TemplateState::new(&shared, &c, &params);
    if top && !shared.is_resumed() {
        shared.emit(&Event::RunStarted {
            run_id: shared.run_id.clone(),
            runbook: c.runbook.runbook.value.clone(),
            params: serde_json::to_value(crate::plan::shown_params(&c, &params))
                .unwrap_or_default(),
            user: shared.user.clone(),
            host: shared.host.clone(),
        });
        super::supervise::mark_journal(&shared);
    }
    let name = |i: usize| {
        if prefix.is_empty() {
            c.steps[i].id.clone()
        } else {
            format!("{}/{}", prefix.join("/"), c.steps[i].id)
        }
    };

    // Whole-run deadline.
    let deadline_task = c.timeout.map(|t| {
        let s = shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(t).await;
            s.cancel(&format!(
                "the run exceeded its timeout of {}",
                crate::duration::format(t)
            ));
        })
    });

    let mut status = preflight(&shared, &c, &state, &prefix).await;
    // Steps a resumed run already did: their results feed templates; rollback still undoes them.
    let mut completion_order: Vec<usize> = c
        .order
        .iter()
        .copied()
        .filter(|i| {
            prior
                .get(i)
                .is_some_and(|e| e.status == StepStatus::Succeeded)
        })
        .collect();
    for (i, end) in &prior {
        expose(&mut state, &c, *i, end);
    }
    let mut ends: BTreeMap<usize, StepEnd> = prior;
    if status.is_none() {
        let main: Vec<usize> = c.order.clone();
        status = dag(
            &shared,
            &c,
            &main,
            &mut state,
            &mut ends,
            &mut completion_order,
            &mut recovered,
            &name,
        )
        .await;
    }
    let mut status = status.unwrap_or(RunStatus::Succeeded);
    if shared.is_cancelled() && status != RunStatus::Aborted {
        status = RunStatus::Cancelled;
    }
    if status == RunStatus::Failed
        && c.runbook.on_failure == OnFailure::Rollback
        && !shared.is_cancelled()
    {
        let undone = rollback(&shared, &c, &state, &completion_order, &ends, &name).await;
        status = if undone {
            RunStatus::RolledBack
        } else {
            RunStatus::RollbackIncomplete
        };
    }

    // `finally` runs whatever happened, even after cancellation.
    if c.steps.len() > c.main_count {
        state
            .run
            .insert("status".to_owned(), Value::from(status.as_str()));
        let finally_order: Vec<usize> = c.finally_levels.iter().flatten().copied().collect();
        let finally_shared = if shared.is_cancelled() {
            detached(&shared)
        } else {
            shared.clone()
        };
        let _ = dag(
            &finally_shared,
            &c,
            &finally_order,
            &mut state,
            &mut ends,
            &mut completion_order,
            &mut BTreeMap::new(),
            &name,
        )
        .await;
    }
    if let Some(t) = deadline_task {
        t.abort();
    }
    if top {
        shared.emit(&Event::RunFinished {
            status: status.as_str().to_owned(),
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            exit_code: status.exit_code(),
        });
    }
    status
}

/// The run, re-armed for `finally` steps after a cancellation: they must still run (with their
/// own timeouts), and a second Ctrl-C still stops them. The status was decided before.
fn detached(shared: &Arc<Shared>) -> Arc<Shared> {
    shared.rearm();
    shared.clone()
}

async fn preflight(
    shared: &Arc<Shared>,
    c: &Arc<Compiled>,
    state: &TemplateState,
    prefix: &[String],
) -> Option<RunStatus> {
    let name = if prefix.is_empty() {
        "preflight".to_owned()
    } else {
        format!("{}/preflight", prefix.join("/"))
    };
    for (i, check) in c.runbook.preflight.iter().enumerate() {
        let timing = CheckTiming {
            within: check
                .within
                .as_ref()
                .and_then(|w| crate::duration::parse(&w.value.0).ok()),
            interval: check
                .interval
                .as_ref()
                .and_then(|w| crate::duration::parse(&w.value.0).ok())
                .unwrap_or(crate::compile::DEFAULT_INTERVAL),
            timeout: check
                .timeout
                .as_ref()
                .and_then(|w| crate::duration::parse(&w.value.0).ok())
                .unwrap_or(crate::compile::DEFAULT_CHECK_TIMEOUT),
        };
        let ctx = ActionCtx {
            shared: shared.clone(),
            step: Arc::from(name.as_str()),
            attempt: 0,
            timeout: timing.timeout,
            renderer: state.renderer(),
            compiled: c.clone(),
        };
        if let Err(why) = poll_check(&ctx, check, &timing, "preflight", i).await {
            if shared.is_cancelled() {
                return Some(RunStatus::Cancelled);
            }
            shared.emit(&Event::StepAborted {
                step: name.clone(),
                reason: format!("preflight check #{} failed: {why}", i + 1),
            });
            return Some(RunStatus::Aborted);
        }
    }
    None
}

/// Run one section of steps (main or finally) as a DAG. Returns the status when the section
/// did not succeed.
#[expect(
    clippy::too_many_arguments,
    reason = "the run's state the section reads and updates"
)]
async fn dag(
    shared: &Arc<Shared>,
    c: &Arc<Compiled>,
    section: &[usize],
    state: &mut TemplateState,
    ends: &mut BTreeMap<usize, StepEnd>,
    completion_order: &mut Vec<usize>,
    recovered: &mut BTreeMap<usize, Recovered>,
    name: &impl Fn(usize) -> String,
) -> Option<RunStatus> {
    let max_parallel = shared.options.max_parallel.unwrap_or(c.max_parallel).max(1);
    let mut pending: Vec<usize> = section
        .iter()
        .copied()
        .filter(|i| !ends.contains_key(i))
        .collect();
    let mut running: JoinSet<(usize, StepEnd)> = JoinSet::new();
    let mut stop = false;
    let mut outcome: Option<RunStatus> = None;
    loop {
        if !stop && !shared.is_cancelled() {
            let mut k = 0;
            while k < pending.len() && running.len() < max_parallel {
                let i = pending[k];
                let needs = &c.steps[i].needs;
                if !needs
                    .iter()
                    .all(|n| ends.contains_key(n) || !section.contains(n))
                {
                    k += 1;
                    continue;
                }
                pending.remove(k);
                // A need that failed (with continue_on_failure) or was cancelled skips its dependants.
                if let Some(bad) = needs.iter().find(|n| {
                    ends.get(n).is_some_and(|e| {
                        !matches!(e.status, StepStatus::Succeeded | StepStatus::Skipped(_))
                    })
                }) {
                    let reason = format!("upstream step `{}` did not succeed", c.steps[*bad].id);
                    skip(shared, state, ends, c, i, &name(i), reason);
                    k = 0;
                    continue;
                }
                if let Some(reason) = missing_approval(c, ends, i, state) {
                    shared.emit(&Event::StepAborted {
                        step: name(i),
                        reason: reason.clone(),
                    });
                    let mut end = StepEnd::skipped(String::new());
                    end.status = StepStatus::Aborted(reason);
                    expose(state, c, i, &end);
                    ends.insert(i, end);
                    stop = true;
                    outcome = Some(RunStatus::Aborted);
                    break;
                }
                let renderer = state.renderer();
                let s = shared.clone();
                let cc = c.clone();
                let id = name(i);
                let from_journal = recovered.remove(&i);
                running.spawn(
                    async move { (i, run_step(s, cc, i, renderer, id, from_journal).await) },
                );
            }
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let (i, end) = match joined {
            Ok(x) => x,
            Err(e) => {
                // A panicking step task is a bug; treat it as a failure, never lose the run.
                tracing::error!("step task failed: {e}");
                stop = true;
                outcome.get_or_insert(RunStatus::Failed);
                continue;
            }
        };
        expose(state, c, i, &end);
        match &end.status {
            StepStatus::Succeeded | StepStatus::Skipped(_) => {}
            StepStatus::Failed(_) if c.step(i).continue_on_failure => {}
            StepStatus::Failed(_) => {
                stop = true;
                outcome.get_or_insert(RunStatus::Failed);
            }
            StepStatus::Aborted(_) => {
                stop = true;
                outcome = Some(RunStatus::Aborted);
            }
            StepStatus::Cancelled => {
                stop = true;
                outcome.get_or_insert(RunStatus::Cancelled);
            }
        }
        if end.status == StepStatus::Succeeded {
            completion_order.push(i);
        }
        ends.insert(i, end);
    }
    for i in pending {
        let reason = if shared.is_cancelled() {
            "the run was cancelled".to_owned()
        } else {
            "the run stopped before it".to_owned()
        };
        skip(shared, state, ends, c, i, &name(i), reason);
    }
    if shared.is_cancelled() {
        return Some(if outcome == Some(RunStatus::Aborted) {
            RunStatus::Aborted
        } else {
            RunStatus::Cancelled
        });
    }
    outcome
}

/// Why an irreversible step must not start: none of the approvals upstream of it was given
/// (each was skipped — e.g. after an upstream failure let the run go on). The compiler already
/// refuses approvals guarded by `when:` as an irreversible step's only approval; this holds the
/// line for every other way an approval can be skipped.
fn missing_approval(
    c: &Compiled,
    ends: &BTreeMap<usize, StepEnd>,
    i: usize,
    state: &TemplateState,
) -> Option<String> {
    if !c.steps[i].irreversible || c.runbook.unattended || i >= c.main_count {
        return None;
    }
    // Its own guard false: it is skipped anyway (an approval guarded like it was skipped too).
    if let Some(w) = &c.step(i).when
        && state.renderer().eval(&w.value).is_ok_and(|v| !v.is_true())
    {
        return None;
    }
    let approvals: Vec<usize> = c
        .upstream(i)
        .into_iter()
        .filter(|&u| c.step(u).approve.is_some())
        .collect();
    if approvals.is_empty()
        || approvals.iter().any(|u| {
            ends.get(u)
                .is_some_and(|e| e.status == StepStatus::Succeeded)
        })
    {
        return None;
    }
    let why: Vec<String> = approvals
        .iter()
        .map(|&u| match ends.get(&u).map(|e| &e.status) {
            Some(StepStatus::Skipped(r)) => format!("`{}` was skipped ({r})", c.steps[u].id),
            _ => format!("`{}` was not given", c.steps[u].id),
        })
        .collect();
    Some(format!(
        "irreversible step blocked: no approval upstream of it was given — {}",
        why.join("; ")
    ))
}

/// Record that a step will not run (not by its own guard: a resumed run runs it).
fn skip(
    shared: &Shared,
    state: &mut TemplateState,
    ends: &mut BTreeMap<usize, StepEnd>,
    c: &Compiled,
    i: usize,
    name: &str,
    reason: String,
) {
    shared.emit(&Event::StepSkipped {
        step: name.to_owned(),
        reason: reason.clone(),
        by_guard: false,
    });
    let end = StepEnd::skipped(reason);
    expose(state, c, i, &end);
    ends.insert(i, end);
}

/// Make a finished (or skipped) step visible to later templates as `steps.<id>`.
fn expose(state: &mut TemplateState, c: &Compiled, i: usize, end: &StepEnd) {
    let key = template_key(&c.steps[i].id);
    let value = end.template_value();
    if key != c.steps[i].id {
        state.steps.insert(c.steps[i].id.clone(), value.clone());
    }
    state.steps.insert(key, value);
}

/// Compensate completed steps in reverse completion order (which respects dependencies), except
/// those followed by a point of no return: an irreversible step whose action started, whatever
/// its outcome (a failed gate after the cut-over does not undo the cut-over).
async fn rollback(
    shared: &Arc<Shared>,
    c: &Arc<Compiled>,
    state: &TemplateState,
    completion_order: &[usize],
    ends: &BTreeMap<usize, StepEnd>,
    name: &impl Fn(usize) -> String,
) -> bool {
    let completed_irreversible: Vec<usize> = ends
        .iter()
        .filter(|(i, e)| {
            c.steps[**i].irreversible && (e.status == StepStatus::Succeeded || e.attempts > 0)
        })
        .map(|(i, _)| *i)
        .collect();
    let mut todo = Vec::new();
    let mut not = Vec::new();
    for &i in completion_order.iter().rev() {
        if i >= c.main_count || c.step(i).compensate.is_none() {
            continue;
        }
        let before_no_return = completed_irreversible
            .iter()
            .any(|&irr| c.downstream(i).contains(&irr));
        if before_no_return {
            not.push(i);
        } else {
            todo.push(i);
        }
    }
    shared.emit(&Event::RollbackStarted {
        steps: todo.iter().map(|&i| name(i)).collect(),
        not_compensated: not.iter().map(|&i| name(i)).collect(),
    });
    let mut all_ok = true;
    for i in todo {
        let r = compensate(shared.clone(), c.clone(), i, state.renderer()).await;
        let (ok, detail) = match r {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        all_ok &= ok;
        shared.emit(&Event::Compensated {
            step: name(i),
            ok,
            detail: shared.mask(&detail),
        });
    }
    all_ok
}

/// Perform a `call` step: compile the called runbook and run it as a sub-DAG.
///
/// # Errors
/// When it does not compile, its params are invalid, or it does not succeed.
pub async fn call(
    ctx: &ActionCtx,
    runbook: &str,
    params: Vec<(String, String)>,
) -> Result<ActionResult, ActionError> {
    let path = super::resolve_relative(&ctx.compiled.path, runbook);
    let depth = ctx.step.matches('/').count();
    if depth >= 8 {
        return Err(ActionError::Failed(format!(
            "failed to call {}: calls nest deeper than 8 levels",
            path.display()
        )));
    }
    let compiled = crate::compile::compile_path(&path).map_err(|(file, diags)| {
        let first = diags.first().map(|d| d.short(&file)).unwrap_or_default();
        ActionError::Failed(format!("failed to compile {}: {first}", path.display()))
    })?;
    let values = crate::compile::resolve_params(&compiled.runbook, &params, &BTreeMap::new())
        .map_err(|diags| {
            ActionError::Failed(format!(
                "invalid params for {}: {}",
                path.display(),
                diags
                    .iter()
                    .map(|d| d.message.clone())
                    .collect::<Vec<_>>()
                    .join("; ")
            ))
        })?;
    let compiled = Arc::new(compiled);
    // A resumed run whose call was in flight: the called runbook continues where it stopped.
    let (prior, recovered) = match ctx.shared.take_continuation(&ctx.step) {
        Some(from) => Box::pin(continue_call(
            &ctx.shared,
            &compiled,
            &values,
            &from,
            &ctx.step,
        ))
        .await
        .map_err(|undecided| {
            ActionError::Failed(format!(
                "failed to continue {}: {}",
                path.display(),
                undecided.join("; ")
            ))
        })?,
        None => (BTreeMap::new(), BTreeMap::new()),
    };
    let prefix = vec![ctx.step.to_string()];
    let status = Box::pin(run(
        ctx.shared.clone(),
        compiled,
        values,
        prefix,
        prior,
        recovered,
    ))
    .await;
    let value = serde_json::json!({ "status": status.as_str(), "runbook": runbook });
    match status {
        RunStatus::Succeeded => Ok(ActionResult {
            value,
            ok: true,
            summary: format!("{runbook} succeeded"),
            exit_code: None,
            http_status: None,
        }),
        RunStatus::Cancelled => Err(ActionError::Cancelled),
        RunStatus::Aborted => Err(ActionError::Denied(format!("{runbook} was aborted"))),
        other => Ok(ActionResult {
            value,
            ok: false,
            summary: format!("{runbook} {}", other.as_str()),
            exit_code: None,
            http_status: None,
        }),
    }
}

/// What a resumed run starts from: the steps it keeps, and the attempts whose process finished
/// while no engine was there (their steps continue from the recorded result).
pub(super) type Prior = (BTreeMap<usize, StepEnd>, BTreeMap<usize, Recovered>);

/// Decide, before anything runs again, what a resumed run keeps, re-runs or skips.
///
/// Completed steps are kept. For a step in flight, the journal of its process decides first:
/// a shell that ended while the engine was down has a known outcome (the step continues from
/// it: assert, retries, gates — no question asked); one that never started is run; one that
/// still runs is waited for (or killed on request), never started a second time. Otherwise —
/// its effect unknown, including a non-idempotent step that failed after it acted — it is
/// checked with its `verify` gates, once and read-only: if they pass it is done ("verified on
/// resume"). Otherwise it is re-run if it is idempotent, or as the operator decides
/// (`--rerun`/`--skip`, or on the terminal); an irreversible step is never re-run without that
/// explicit decision. A `call` step in flight continues its runbook where it stopped (its own
/// steps are decided the same way, by their full names `call/step`), unless the operator says
/// `--rerun` (start it again) or `--skip`.
///
/// # Errors
/// In-flight steps nobody decided about, or still running when the operator's decision
/// needs them gone.
pub(super) async fn prepare_resume(
    shared: &Arc<Shared>,
    c: &Arc<Compiled>,
    params: &ParamValues,
    from: &super::ResumeFrom,
) -> Result<Prior, super::ExecError> {
    shared.mark_resumed();
    let mut journaled = super::resume::read(c, &from.events, "");
    if let Some(step) = &from.from_step {
        // The command line refused an impossible retry before the lock; this refuses it for
        // every other caller (a drill's retry) the same way.
        let plan =
            super::resume::retry_plan(c, &from.events, &shared.run_id, step, from.with_upstream)
                .map_err(|e| super::ExecError::NeedsDecision(vec![e.to_string()]))?;
        super::resume::apply_retry(&plan, step, &mut journaled);
    }
    let from = Arc::new(from.clone());
    let (done, recovered, decisions) = decide_in_flight(shared, c, params, &from, "", journaled)
        .await
        .map_err(super::ExecError::NeedsDecision)?;
    shared.emit(&Event::Resumed {
        run_id: shared.run_id.clone(),
        done: done.keys().map(|&i| c.steps[i].id.clone()).collect(),
        decisions,
        changed: from.changed,
    });
    Ok((done, recovered))
}

/// The steps of a called runbook that a resumed run keeps, when its `call` step continues.
///
/// # Errors
/// In-flight steps of the called runbook nobody decided about.
async fn continue_call(
    shared: &Arc<Shared>,
    c: &Arc<Compiled>,
    params: &ParamValues,
    from: &Arc<super::ResumeFrom>,
    prefix: &str,
) -> Result<Prior, Vec<String>> {
    let journaled = super::resume::read(c, &from.events, prefix);
    let (done, recovered, decisions) =
        decide_in_flight(shared, c, params, from, prefix, journaled).await?;
    if !decisions.is_empty() {
        shared.emit(&Event::Resumed {
            run_id: shared.run_id.clone(),
            done: done
                .keys()
                .map(|&i| format!("{prefix}/{}", c.steps[i].id))
                .collect(),
            decisions,
            changed: from.changed,
        });
    }
    Ok((done, recovered))
}

/// Why a step in flight needs an operator's decision.
fn needs_decision(c: &Compiled, i: usize, failed: bool, gated: bool) -> String {
    let what = if failed {
        "failed after its action started"
    } else {
        "was in flight when the run stopped"
    };
    let why = if c.steps[i].irreversible {
        "is irreversible: it is never re-run without an explicit decision"
    } else if gated {
        "is not idempotent (its effect is unknown), and it has no verify gate that passes"
    } else {
        "is not idempotent (its effect is unknown), and it has no verify gate"
    };
    format!("{what} and {why}")
}

/// Decide each in-flight step of `c` (named `prefix/id` inside a called runbook).
async fn decide_in_flight(
    shared: &Arc<Shared>,
    c: &Arc<Compiled>,
    params: &ParamValues,
    from: &Arc<super::ResumeFrom>,
    prefix: &str,
    journaled: super::resume::Journaled,
) -> Result<
    (
        BTreeMap<usize, StepEnd>,
        BTreeMap<usize, Recovered>,
        Vec<serde_json::Value>,
    ),
    Vec<String>,
> {
    use super::Decision;
    use super::resume::Settled;
    let full = |i: usize| {
        if prefix.is_empty() {
            c.steps[i].id.clone()
        } else {
            format!("{prefix}/{}", c.steps[i].id)
        }
    };
    let mut done = journaled.done;
    let mut state = TemplateState::new(shared, c, params);
    for (i, end) in &done {
        expose(&mut state, c, *i, end);
    }
    let mut recovered = BTreeMap::new();
    let mut decisions = Vec::new();
    let mut undecided = Vec::new();
    for i in journaled.in_flight {
        let id = full(i);
        let step = c.step(i);
        let given = from.decisions.get(&id).copied();
        let failed = journaled.failed_after_acting.contains(&i);
        // 0. Its process: a recorded outcome, never started, still running.
        if let Some(trace) = journaled.process.get(&i) {
            if trace.retry_due && given.is_none() {
                decisions.push(serde_json::json!({ "step": id, "decision": "rerun", "reason": format!("attempt {} failed and a retry was due when the run stopped", trace.attempt) }));
                continue;
            }
            match super::resume::settle(shared, &id, trace, given).await {
                Settled::Exited(rec) if given.and_then(Decision::then).is_none() => {
                    let result = super::supervise::recovered_result(&rec);
                    decisions.push(serde_json::json!({ "step": id, "decision": "finished", "reason": format!("its process ended while the engine was down ({}): the step continues from its recorded result", result.summary.trim_end_matches(" (ended while the engine was down)")) }));
                    recovered.insert(
                        i,
                        Recovered {
                            attempt: trace.attempt.max(1),
                            result,
                        },
                    );
                    continue;
                }
                Settled::NeverStarted(why) if given.and_then(Decision::then).is_none() => {
                    decisions.push(
                        serde_json::json!({ "step": id, "decision": "rerun", "reason": why }),
                    );
                    continue;
                }
                Settled::Unknown { killed: true } => {
                    decisions.push(serde_json::json!({ "step": id, "decision": "killed", "reason": "its process still ran; killed on the operator's request (--kill-running)" }));
                }
                Settled::Running(why) | Settled::Interrupted(why) => {
                    undecided.push(why);
                    continue;
                }
                Settled::Exited(_) | Settled::NeverStarted(_) | Settled::Unknown { .. } => {}
            }
        }
        let explicit = given.and_then(Decision::then);
        // 1. Verification gates, once, read-only.
        if explicit.is_none() && !step.verify.is_empty() {
            let ctx = ActionCtx {
                shared: shared.clone(),
                step: Arc::from(id.as_str()),
                attempt: 0,
                timeout: crate::compile::DEFAULT_CHECK_TIMEOUT,
                renderer: state.renderer().with("result", Value::from(())),
                compiled: c.clone(),
            };
            let mut all = true;
            for (k, (check, timing)) in step.verify.iter().zip(&c.steps[i].verify).enumerate() {
                let once = CheckTiming {
                    within: None,
                    interval: timing.interval,
                    timeout: timing.timeout,
                };
                if poll_check(&ctx, check, &once, "verify", k).await.is_err() {
                    all = false;
                    break;
                }
            }
            if all {
                decisions.push(serde_json::json!({ "step": id, "decision": "done", "reason": "verified on resume: its gates pass" }));
                let mut end = StepEnd::skipped(String::new());
                end.status = StepStatus::Succeeded;
                done.insert(i, end);
                continue;
            }
        }
        // 2. A call continues its runbook: its own steps are decided when it starts again.
        if explicit.is_none()
            && let Some(call) = &step.call
        {
            let children = undecided_children(c, &call.value.runbook.value, &id, from);
            if !children.is_empty() {
                undecided.extend(children);
                continue;
            }
            shared.continue_call(&id, from.clone());
            decisions.push(serde_json::json!({ "step": id, "decision": "continue", "reason": "a call: its runbook continues where it stopped" }));
            continue;
        }
        let decision = match explicit {
            Some(d) => Some((d, "decided by the operator")),
            None if c.steps[i].idempotent => Some((Decision::Rerun, "idempotent: safe to repeat")),
            None if shared.options.interactive => {
                ask_in_flight(shared, &id, c.steps[i].irreversible, failed)
                    .await
                    .map(|d| (d, "decided on the terminal"))
            }
            None => None,
        };
        match decision {
            Some((Decision::Skip, why)) => {
                decisions
                    .push(serde_json::json!({ "step": id, "decision": "skip", "reason": why }));
                let mut end = StepEnd::skipped("skipped on resume by the operator".to_owned());
                end.status = StepStatus::Succeeded;
                done.insert(i, end);
            }
            Some((_, why)) => decisions
                .push(serde_json::json!({ "step": id, "decision": "rerun", "reason": why })),
            None => undecided.push(format!(
                "step `{id}` {} — pass --rerun {id} or --skip {id}",
                needs_decision(c, i, failed, !step.verify.is_empty())
            )),
        }
    }
    if undecided.is_empty() {
        Ok((done, recovered, decisions))
    } else {
        Err(undecided)
    }
}

/// The steps of the runbook called by the in-flight step `name` that were in flight too and
/// need an operator's decision, so that a resume is refused before anything runs again (steps
/// with `verify` gates are decided by them when the call continues, steps whose process the
/// journal settles by it).
fn undecided_children(
    c: &Compiled,
    runbook: &str,
    name: &str,
    from: &super::ResumeFrom,
) -> Vec<String> {
    let path = super::resolve_relative(&c.path, runbook);
    let Ok(callee) = crate::compile::compile_path(&path) else {
        // It no longer compiles: the call fails when it starts, with the compiler's message.
        return Vec::new();
    };
    let journaled = super::resume::read(&callee, &from.events, name);
    journaled
        .in_flight
        .iter()
        .filter_map(|&j| {
            let id = format!("{name}/{}", callee.steps[j].id);
            let step = callee.step(j);
            let decided = from.decisions.contains_key(&id)
                || callee.steps[j].idempotent
                || !step.verify.is_empty()
                || step.call.is_some()
                || journaled.process.get(&j).is_some_and(super::resume::settles_alone);
            (!decided).then(|| format!(
                "step `{id}` {} — pass --rerun {id} or --skip {id} (or --rerun {name} to start its runbook again)",
                needs_decision(&callee, j, journaled.failed_after_acting.contains(&j), false)
            ))
        })
        .collect()
}

async fn ask_in_flight(
    shared: &Arc<Shared>,
    id: &str,
    irreversible: bool,
    failed: bool,
) -> Option<super::Decision> {
    let s = shared.clone();
    let prompt = format!(
        "\n┃ step `{id}` {}; its effect is unknown{}.\n┃ [r]e-run it, [s]kip it (treat as done), or [a]bort the resume? ",
        if failed {
            "failed after its action started"
        } else {
            "was in flight when the run stopped"
        },
        if irreversible {
            " and it is IRREVERSIBLE"
        } else {
            ""
        }
    );
    let answer = tokio::task::spawn_blocking(move || {
        let mut answer = String::new();
        s.reporter.suspend(&mut || {
            use std::io::{BufRead, Write};
            let mut err = std::io::stderr();
            let _ = err.write_all(prompt.as_bytes());
            let _ = err.flush();
            if let Ok(f) = std::fs::File::open("/dev/tty") {
                let _ = std::io::BufReader::new(f).read_line(&mut answer);
            }
        });
        answer
    })
    .await
    .ok()?;
    match answer.trim() {
        "r" | "rerun" | "re-run" => Some(super::Decision::Rerun),
        "s" | "skip" => Some(super::Decision::Skip),
        _ => None,
    }
}

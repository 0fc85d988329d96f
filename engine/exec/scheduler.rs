//! The scheduler: start every step whose needs are met, up to `max_parallel`; stop scheduling
//! on failure; roll back; run `finally`; decide the run's status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use minijinja::Value;
use tokio::task::JoinSet;

use super::context::{ActionCtx, Shared, TemplateState};
use super::step::{StepEnd, StepStatus, compensate, poll_check, run_step};
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
        rollback(&shared, &c, &state, &completion_order, &name).await;
        status = RunStatus::RolledBack;
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
async fn dag(
    shared: &Arc<Shared>,
    c: &Arc<Compiled>,
    section: &[usize],
    state: &mut TemplateState,
    ends: &mut BTreeMap<usize, StepEnd>,
    completion_order: &mut Vec<usize>,
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
                let renderer = state.renderer();
                let s = shared.clone();
                let cc = c.clone();
                let id = name(i);
                running.spawn(async move { (i, run_step(s, cc, i, renderer, id).await) });
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
/// those followed by a completed point of no return.
async fn rollback(
    shared: &Arc<Shared>,
    c: &Arc<Compiled>,
    state: &TemplateState,
    completion_order: &[usize],
    name: &impl Fn(usize) -> String,
) {
    let completed_irreversible: Vec<usize> = completion_order
        .iter()
        .copied()
        .filter(|&i| c.steps[i].irreversible)
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
    for i in todo {
        let r = compensate(shared.clone(), c.clone(), i, state.renderer()).await;
        let (ok, detail) = match r {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        shared.emit(&Event::Compensated {
            step: name(i),
            ok,
            detail: shared.mask(&detail),
        });
    }
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
    let prior = match ctx.shared.take_continuation(&ctx.step) {
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
        None => BTreeMap::new(),
    };
    let prefix = vec![ctx.step.to_string()];
    let status = Box::pin(run(ctx.shared.clone(), compiled, values, prefix, prior)).await;
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

/// Decide, before anything runs again, what a resumed run keeps, re-runs or skips.
///
/// Completed steps are kept. A step that was in flight is first checked with its `verify`
/// gates, once and read-only: if they pass it is done ("verified on resume"). Otherwise it is
/// re-run if it is idempotent, or as the operator decides (`--rerun`/`--skip`, or on the
/// terminal); an irreversible step is never re-run without that explicit decision. A `call`
/// step in flight continues its runbook where it stopped (its own steps are decided the same
/// way, by their full names `call/step`), unless the operator says `--rerun` (start it again)
/// or `--skip`.
///
/// # Errors
/// In-flight steps nobody decided about.
pub(super) async fn prepare_resume(
    shared: &Arc<Shared>,
    c: &Arc<Compiled>,
    params: &ParamValues,
    from: &super::ResumeFrom,
) -> Result<BTreeMap<usize, StepEnd>, super::ExecError> {
    shared.mark_resumed();
    let journaled = super::resume::read(c, &from.events, "");
    let mut done = journaled.done;
    let mut in_flight = journaled.in_flight;
    if let Some(step) = &from.from_step
        && let Some(&i) = c.index_by_id.get(step)
    {
        for d in std::iter::once(i).chain(c.downstream(i)) {
            done.remove(&d);
            in_flight.remove(&d);
        }
    }
    let from = Arc::new(from.clone());
    let (done, decisions) = decide_in_flight(shared, c, params, &from, "", done, in_flight)
        .await
        .map_err(super::ExecError::NeedsDecision)?;
    shared.emit(&Event::Resumed {
        run_id: shared.run_id.clone(),
        done: done.keys().map(|&i| c.steps[i].id.clone()).collect(),
        decisions,
        changed: from.changed,
    });
    Ok(done)
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
) -> Result<BTreeMap<usize, StepEnd>, Vec<String>> {
    let journaled = super::resume::read(c, &from.events, prefix);
    let (done, decisions) = decide_in_flight(
        shared,
        c,
        params,
        from,
        prefix,
        journaled.done,
        journaled.in_flight,
    )
    .await?;
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
    Ok(done)
}

/// Decide each in-flight step of `c` (named `prefix/id` inside a called runbook).
async fn decide_in_flight(
    shared: &Arc<Shared>,
    c: &Arc<Compiled>,
    params: &ParamValues,
    from: &Arc<super::ResumeFrom>,
    prefix: &str,
    mut done: BTreeMap<usize, StepEnd>,
    in_flight: std::collections::BTreeSet<usize>,
) -> Result<(BTreeMap<usize, StepEnd>, Vec<serde_json::Value>), Vec<String>> {
    use super::Decision;
    let full = |i: usize| {
        if prefix.is_empty() {
            c.steps[i].id.clone()
        } else {
            format!("{prefix}/{}", c.steps[i].id)
        }
    };
    let mut state = TemplateState::new(shared, c, params);
    for (i, end) in &done {
        expose(&mut state, c, *i, end);
    }
    let mut decisions = Vec::new();
    let mut undecided = Vec::new();
    for i in in_flight {
        let id = full(i);
        let step = c.step(i);
        let explicit = from.decisions.get(&id).copied();
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
                ask_in_flight(shared, &id, c.steps[i].irreversible)
                    .await
                    .map(|d| (d, "decided on the terminal"))
            }
            None => None,
        };
        match decision {
            Some((Decision::Rerun, why)) => decisions.push(serde_json::json!({ "step": id, "decision": "rerun", "reason": why })),
            Some((Decision::Skip, why)) => {
                decisions.push(serde_json::json!({ "step": id, "decision": "skip", "reason": why }));
                let mut end = StepEnd::skipped("skipped on resume by the operator".to_owned());
                end.status = StepStatus::Succeeded;
                done.insert(i, end);
            }
            None => undecided.push(format!(
                "step `{id}` was in flight when the run stopped and {} — pass --rerun {id} or --skip {id}",
                if c.steps[i].irreversible { "is irreversible: it is never re-run without an explicit decision" } else { "is not idempotent (its effect is unknown), and it has no verify gate that passes" }
            )),
        }
    }
    if undecided.is_empty() {
        Ok((done, decisions))
    } else {
        Err(undecided)
    }
}

/// The steps of the runbook called by the in-flight step `name` that were in flight too and
/// need an operator's decision, so that a resume is refused before anything runs again (steps
/// with `verify` gates are decided by them when the call continues).
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
        .into_iter()
        .filter_map(|j| {
            let id = format!("{name}/{}", callee.steps[j].id);
            let step = callee.step(j);
            let decided = from.decisions.contains_key(&id)
                || callee.steps[j].idempotent
                || !step.verify.is_empty()
                || step.call.is_some();
            (!decided).then(|| format!(
                "step `{id}` was in flight when the run stopped and {} — pass --rerun {id} or --skip {id} (or --rerun {name} to start its runbook again)",
                if callee.steps[j].irreversible { "is irreversible: it is never re-run without an explicit decision" } else { "is not idempotent (its effect is unknown), and it has no verify gate" }
            ))
        })
        .collect()
}

async fn ask_in_flight(
    shared: &Arc<Shared>,
    id: &str,
    irreversible: bool,
) -> Option<super::Decision> {
    let s = shared.clone();
    let prompt = format!(
        "\n┃ step `{id}` was in flight when the run stopped; its effect is unknown{}.\n┃ [r]e-run it, [s]kip it (treat as done), or [a]bort the resume? ",
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

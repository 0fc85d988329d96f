//! One step, start to finish: guard, preconditions, attempts with retry, assert, gates, outputs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use minijinja::Value;

use super::context::{ActionCtx, Shared};
use super::{ActionError, ActionResult, Event};
use crate::compile::{CheckTiming, Compiled, CompiledStep, RetryPolicy};
use crate::kinds::{self, Action};
use crate::model::{Check, Step};
use crate::template::Renderer;

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum StepStatus {
    /// Action done and gates passed.
    Succeeded,
    /// Guard false, or an upstream step failed.
    Skipped(String),
    /// The action or a gate failed.
    Failed(String),
    /// A `require` failed or an approval was denied: the run aborts.
    Aborted(String),
    /// Cancelled while running.
    Cancelled,
}

/// What a finished step leaves for templates and the summary.
#[derive(Debug, Clone)]
pub(super) struct StepEnd {
    pub status: StepStatus,
    pub result: serde_json::Value,
    pub outputs: serde_json::Map<String, serde_json::Value>,
    pub attempts: u32,
    pub started_ms: i64,
    pub finished_ms: i64,
}

impl StepEnd {
    pub fn skipped(reason: String) -> Self {
        let now = crate::clock::now_ms();
        Self {
            status: StepStatus::Skipped(reason),
            result: serde_json::Value::Null,
            outputs: serde_json::Map::new(),
            attempts: 0,
            started_ms: now,
            finished_ms: now,
        }
    }

    /// `steps.<id>` as templates see it.
    pub fn template_value(&self) -> Value {
        let status = match &self.status {
            StepStatus::Succeeded => "succeeded",
            StepStatus::Skipped(_) => "skipped",
            StepStatus::Failed(_) => "failed",
            StepStatus::Aborted(_) => "aborted",
            StepStatus::Cancelled => "cancelled",
        };
        Value::from(minijinja::value::Serde(serde_json::json!({
            "status": status,
            "result": self.result,
            "outputs": self.outputs,
            "attempts": self.attempts,
            "started_at": crate::clock::rfc3339(self.started_ms),
            "finished_at": crate::clock::rfc3339(self.finished_ms),
            "duration_ms": self.finished_ms - self.started_ms,
        })))
    }
}

/// The outcome of an attempt whose process finished while the engine was down, recorded by
/// its supervisor: a resumed run continues the step from it instead of acting again.
#[derive(Debug, Clone)]
pub(super) struct Recovered {
    /// The attempt that ran.
    pub attempt: u32,
    /// Its result, rebuilt from the exit record (exit code, output tails).
    pub result: ActionResult,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Run one step to its end.
pub(super) async fn run_step(
    shared: Arc<Shared>,
    c: Arc<Compiled>,
    index: usize,
    renderer: Renderer<'static>,
    id: String,
    recovered: Option<Recovered>,
) -> StepEnd {
    let step = c.step(index);
    let cs = &c.steps[index];
    let started = Instant::now();
    let started_ms = crate::clock::now_ms();
    let end = |status: StepStatus, result: serde_json::Value, outputs, attempts| StepEnd {
        status,
        result,
        outputs,
        attempts,
        started_ms,
        finished_ms: crate::clock::now_ms(),
    };

    // A recovered attempt acted already: its guard and preconditions held then (they may
    // not now that it acted), so they are not evaluated again.
    if let Some(w) = step.when.as_ref().filter(|_| recovered.is_none()) {
        match renderer.eval(&w.value) {
            Ok(v) if v.is_true() => {}
            Ok(_) => {
                let reason = format!("guard `{}` is false", w.value);
                shared.emit(&Event::StepSkipped {
                    step: id.clone(),
                    reason: reason.clone(),
                    by_guard: true,
                });
                return StepEnd::skipped(reason);
            }
            Err(e) => {
                let error = shared.mask(&format!(
                    "failed to evaluate guard `{}`: {}",
                    w.value,
                    crate::template::describe(&e.source)
                ));
                shared.emit(&Event::StepFailed {
                    step: id.clone(),
                    duration_ms: 0,
                    attempts: 0,
                    error: error.clone(),
                    cancelled: false,
                });
                return end(
                    StepStatus::Failed(error),
                    serde_json::Value::Null,
                    serde_json::Map::new(),
                    0,
                );
            }
        }
    }

    let ctx_for = |attempt: u32, timeout: Duration, r: Renderer<'static>| ActionCtx {
        shared: shared.clone(),
        step: Arc::from(id.as_str()),
        attempt,
        timeout,
        renderer: r,
        compiled: c.clone(),
    };

    let require = if recovered.is_some() {
        &[][..]
    } else {
        &step.require[..]
    };
    for (i, (check, timing)) in require.iter().zip(&cs.require).enumerate() {
        if let Err(why) = poll_check(
            &ctx_for(0, timing.timeout, renderer.clone()),
            check,
            timing,
            "require",
            i,
        )
        .await
        {
            if shared.is_cancelled() {
                return end(
                    StepStatus::Cancelled,
                    serde_json::Value::Null,
                    serde_json::Map::new(),
                    0,
                );
            }
            let reason = format!("precondition {} failed: {why}", check_label(check, i));
            shared.emit(&Event::StepAborted {
                step: id.clone(),
                reason: reason.clone(),
            });
            return end(
                StepStatus::Aborted(reason),
                serde_json::Value::Null,
                serde_json::Map::new(),
                0,
            );
        }
    }

    let actions = kinds::step_actions(step);
    let mut result = serde_json::Value::Null;
    let mut summary = "gates passed".to_owned();
    let mut attempts = 0;
    if let Some(action) = actions.first() {
        match attempt_loop(
            &shared, &ctx_for, &renderer, step, cs, action, &id, recovered,
        )
        .await
        {
            Ok((r, n)) => {
                summary = r.summary.clone();
                result = r.value;
                attempts = n;
            }
            Err((status, r, n)) => {
                let duration_ms = ms(started.elapsed());
                match &status {
                    StepStatus::Aborted(reason) => shared.emit(&Event::StepAborted {
                        step: id.clone(),
                        reason: reason.clone(),
                    }),
                    StepStatus::Failed(error) => shared.emit(&Event::StepFailed {
                        step: id.clone(),
                        duration_ms,
                        attempts: n,
                        error: error.clone(),
                        cancelled: false,
                    }),
                    StepStatus::Cancelled => shared.emit(&Event::StepFailed {
                        step: id.clone(),
                        duration_ms,
                        attempts: n,
                        error: shared.cancelled_error(),
                        cancelled: true,
                    }),
                    _ => {}
                }
                return end(status, r, serde_json::Map::new(), n);
            }
        }
    } else {
        shared.emit(&Event::StepStarted {
            step: id.clone(),
            attempt: 1,
            attempts: 1,
        });
    }

    // Gates and outputs see the step's own result.
    let with_self = renderer.with_result(&result);
    for (i, (check, timing)) in step.verify.iter().zip(&cs.verify).enumerate() {
        if let Err(why) = poll_check(
            &ctx_for(attempts, timing.timeout, with_self.clone()),
            check,
            timing,
            "verify",
            i,
        )
        .await
        {
            let status = if shared.is_cancelled() {
                StepStatus::Cancelled
            } else {
                StepStatus::Failed(format!(
                    "verification {} failed: {why}",
                    check_label(check, i)
                ))
            };
            let error = match &status {
                StepStatus::Failed(e) => e.clone(),
                _ => shared.cancelled_error(),
            };
            shared.emit(&Event::StepFailed {
                step: id.clone(),
                duration_ms: ms(started.elapsed()),
                attempts,
                cancelled: matches!(status, StepStatus::Cancelled),
                error,
            });
            return end(status, result, serde_json::Map::new(), attempts);
        }
    }

    let mut outputs = serde_json::Map::new();
    for (name, expr) in &step.outputs {
        match with_self.eval(&expr.value) {
            Ok(v) => {
                outputs.insert(
                    name.clone(),
                    serde_json::to_value(&v).unwrap_or(serde_json::Value::Null),
                );
            }
            Err(e) => {
                let error = shared.mask(&format!(
                    "failed to evaluate output `{name}`: {}",
                    crate::template::describe(&e.source)
                ));
                shared.emit(&Event::StepFailed {
                    step: id.clone(),
                    duration_ms: ms(started.elapsed()),
                    attempts,
                    error: error.clone(),
                    cancelled: false,
                });
                return end(StepStatus::Failed(error), result, outputs, attempts);
            }
        }
    }
    shared.emit(&Event::StepSucceeded {
        step: id.clone(),
        duration_ms: ms(started.elapsed()),
        attempts,
        summary,
        result: result.clone(),
        outputs: outputs.clone(),
    });
    end(StepStatus::Succeeded, result, outputs, attempts)
}

fn check_label(check: &Check, i: usize) -> String {
    match &check.name {
        Some(n) => format!("`{n}`"),
        None => format!("#{}", i + 1),
    }
}

type Failure = (StepStatus, serde_json::Value, u32);

/// Attempts of the action, with the retry policy. Returns the successful result and the
/// number of attempts, or the final status. A `recovered` attempt is not performed again: its
/// recorded result is judged like a fresh one (assert, retry rules).
#[expect(
    clippy::too_many_arguments,
    reason = "the pieces of one step the attempts need"
)]
async fn attempt_loop(
    shared: &Arc<Shared>,
    ctx_for: &impl Fn(u32, Duration, Renderer<'static>) -> ActionCtx,
    renderer: &Renderer<'static>,
    step: &Step,
    cs: &CompiledStep,
    action: &Action<'_>,
    id: &str,
    recovered: Option<Recovered>,
) -> Result<(ActionResult, u32), Failure> {
    let policy = &cs.retry;
    let attempts = if matches!(action, Action::Approve(_)) {
        1
    } else {
        policy.attempts
    };
    let mut last = serde_json::Value::Null;
    let first = recovered
        .as_ref()
        .map_or(1, |r| r.attempt.clamp(1, attempts));
    let mut recovered = recovered;
    // A step's own shell runs under a supervisor that outlives the engine and journals its exit.
    let db = shared
        .store
        .as_ref()
        .and_then(|s| s.location())
        .map(std::path::Path::to_path_buf);
    for attempt in first..=attempts {
        let outcome = if let Some(r) = recovered.take() {
            Ok(r.result)
        } else {
            shared.emit(&Event::StepStarted {
                step: id.to_owned(),
                attempt,
                attempts,
            });
            let ctx = ctx_for(attempt, cs.timeout, renderer.clone());
            match (action, &db) {
                (Action::Run(_), Some(db)) => {
                    super::supervise::scope(db.clone(), action.perform(&ctx)).await
                }
                _ => action.perform(&ctx).await,
            }
        };
        let (error, retryable) = match outcome {
            Ok(r) => {
                let ok = match &step.assert {
                    Some(a) => match renderer.with_result(&r.value).eval(&a.value) {
                        Ok(v) => Ok(v.is_true()),
                        Err(e) => Err(format!(
                            "failed to evaluate assert `{}`: {}",
                            a.value,
                            crate::template::describe(&e.source)
                        )),
                    },
                    None => Ok(r.ok),
                };
                match ok {
                    Ok(true) => return Ok((r, attempt)),
                    Ok(false) => {
                        let why = match &step.assert {
                            Some(a) => format!("{}; assert `{}` is false", r.summary, a.value),
                            None => r.summary.clone(),
                        };
                        let retry = retryable(policy, renderer, &r);
                        last = r.value;
                        (why, retry)
                    }
                    Err(why) => {
                        last = r.value;
                        (why, false)
                    }
                }
            }
            Err(ActionError::Cancelled) => return Err((StepStatus::Cancelled, last, attempt)),
            Err(ActionError::Denied(why)) => return Err((StepStatus::Aborted(why), last, attempt)),
            Err(e @ ActionError::Unsupported(_)) => {
                return Err((StepStatus::Failed(e.to_string()), last, attempt));
            }
            Err(e @ ActionError::TimedOut(_)) => {
                let retry = policy.on_exit_codes.is_empty()
                    && policy.on_http_statuses.is_empty()
                    && policy.on_expr.is_none();
                (e.to_string(), retry)
            }
            Err(ActionError::Failed(why)) => {
                let retry = policy.on_exit_codes.is_empty()
                    && policy.on_http_statuses.is_empty()
                    && policy.on_expr.is_none();
                (why, retry)
            }
        };
        let error = shared.mask(&error);
        if attempt == attempts || !retryable || cs.irreversible {
            let error = if attempts > 1 && attempt == attempts {
                format!("{error} (after {attempt} attempts)")
            } else {
                error
            };
            return Err((StepStatus::Failed(error), last, attempt));
        }
        let delay = jittered(policy, attempt + 1);
        shared.emit(&Event::Retry {
            step: id.to_owned(),
            attempt,
            delay_ms: ms(delay),
            error,
        });
        let mut cancel = shared.cancelled();
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = cancel.wait() => return Err((StepStatus::Cancelled, last, attempt)),
        }
    }
    Err((
        StepStatus::Failed("no attempt was made".to_owned()),
        last,
        0,
    ))
}

/// Whether a failed result is worth another attempt under `retry.on`.
fn retryable(policy: &RetryPolicy, renderer: &Renderer<'static>, r: &ActionResult) -> bool {
    let filtered = !policy.on_exit_codes.is_empty()
        || !policy.on_http_statuses.is_empty()
        || policy.on_expr.is_some();
    if !filtered {
        return true;
    }
    if let Some(code) = r.exit_code
        && policy.on_exit_codes.contains(&code)
    {
        return true;
    }
    if let Some(status) = r.http_status
        && policy.on_http_statuses.contains(&status)
    {
        return true;
    }
    if let Some(expr) = &policy.on_expr
        && let Ok(v) = renderer.with_result(&r.value).eval(expr)
    {
        return v.is_true();
    }
    false
}

/// The delay before attempt `next`, with ±20 % jitter when enabled.
fn jittered(policy: &RetryPolicy, next: u32) -> Duration {
    let base = policy.delay_before(next);
    if !policy.jitter || base.is_zero() {
        return base;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    // A cheap, well-spread value in [0, 1): good enough to de-synchronise retries.
    let unit = f64::from(nanos.wrapping_mul(2_654_435_761) % 1_000_000) / 1_000_000.0;
    base.mul_f64(0.8 + 0.4 * unit)
}

/// Evaluate a check until it passes, or `within` runs out (once when there is no `within`).
///
/// # Errors
/// The last failure seen.
pub(super) async fn poll_check(
    ctx: &ActionCtx,
    check: &Check,
    timing: &CheckTiming,
    phase: &str,
    index: usize,
) -> Result<(), String> {
    let Some(action) = kinds::check_actions(check).into_iter().next() else {
        return Err("the check has no kind".to_owned());
    };
    let deadline = timing.within.map(|w| Instant::now() + w);
    let mut poll = 0;
    loop {
        poll += 1;
        let (passed, detail) = evaluate(ctx, check, &action).await;
        ctx.shared.emit(&Event::Check {
            step: ctx.step.to_string(),
            phase: phase.to_owned(),
            index,
            poll,
            passed,
            detail: ctx.mask(&detail),
        });
        if passed {
            return Ok(());
        }
        let now = Instant::now();
        match deadline {
            Some(d) if now + timing.interval < d => {}
            Some(_) => {
                let within = timing
                    .within
                    .map(crate::duration::format)
                    .unwrap_or_default();
                return Err(ctx.mask(&format!(
                    "{detail} (still failing after {within}, {poll} polls)"
                )));
            }
            None => return Err(ctx.mask(&detail)),
        }
        let mut cancel = ctx.cancelled();
        tokio::select! {
            () = tokio::time::sleep(timing.interval) => {}
            () = cancel.wait() => return Err("cancelled".to_owned()),
        }
    }
}

async fn evaluate(ctx: &ActionCtx, check: &Check, action: &Action<'_>) -> (bool, String) {
    match action.perform(ctx).await {
        Ok(r) => match &check.assert {
            Some(a) => match ctx.renderer.with_result(&r.value).eval(&a.value) {
                Ok(v) if v.is_true() => (true, format!("{}; {} holds", r.summary, a.value)),
                Ok(_) => (
                    false,
                    format!("{}; assert `{}` is false", r.summary, a.value),
                ),
                Err(e) => (
                    false,
                    format!(
                        "failed to evaluate assert `{}`: {}",
                        a.value,
                        crate::template::describe(&e.source)
                    ),
                ),
            },
            None => (r.ok, r.summary),
        },
        Err(e) => (false, e.to_string()),
    }
}

/// Run a step's compensation once.
pub(super) async fn compensate(
    shared: Arc<Shared>,
    c: Arc<Compiled>,
    index: usize,
    renderer: Renderer<'static>,
) -> Result<String, String> {
    let step = c.step(index);
    let Some(comp) = &step.compensate else {
        return Ok("nothing to compensate".to_owned());
    };
    let Some(action) = kinds::compensation_actions(&comp.value).into_iter().next() else {
        return Err("the compensation has no action".to_owned());
    };
    let timeout = comp
        .value
        .timeout
        .as_ref()
        .and_then(|t| crate::duration::parse(&t.value.0).ok())
        .unwrap_or(c.steps[index].timeout);
    let ctx = ActionCtx {
        shared: shared.clone(),
        step: Arc::from(format!("{}:compensate", step.id.value).as_str()),
        attempt: 1,
        timeout,
        renderer,
        compiled: c.clone(),
    };
    match action.perform(&ctx).await {
        Ok(r) if r.ok => Ok(r.summary),
        Ok(r) => Err(r.summary),
        Err(e) => Err(e.to_string()),
    }
}

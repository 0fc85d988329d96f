//! Plan phase: the dry run a reviewer reads — every action rendered with secrets masked, guards
//! decided where params alone decide them, levels of parallelism, and the worst case against RTO.

mod graphviz;
mod text;

use std::collections::BTreeMap;
use std::time::Duration;

use minijinja::Value;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::compile::{CheckTiming, Compiled, ParamValues, RetryPolicy, hex};
use crate::diagnostic::Diagnostic;
use crate::duration;
use crate::kinds::{self, Action};
use crate::model::{Check, Step};
use crate::template::{Placeholder, Renderer, expression_references};

pub use graphviz::{dot, mermaid};
pub use text::text;

/// Version of the plan JSON format; bumped when a field changes meaning.
pub const PLAN_FORMAT: u32 = 1;

/// Why a saved plan file cannot be executed.
#[derive(Debug, thiserror::Error)]
pub enum PlanFileError {
    /// Not JSON, or JSON of another shape (the message says where: line and column).
    #[error("not a plan: {0}")]
    Json(#[from] serde_json::Error),
    /// A plan of another format version.
    #[error(
        "plan format {found} is not supported (this version of runbook reads format {})",
        PLAN_FORMAT
    )]
    Format {
        /// The `format` the file declares.
        found: u32,
    },
    /// A hash that is not 64 hexadecimal digits: the file was edited or corrupted.
    #[error("`{field}` is not a SHA-256 hex digest: the file was edited or is corrupt")]
    Hash {
        /// `runbook_hash` or `plan_hash`.
        field: &'static str,
    },
    /// No runbook file named.
    #[error("`file` is empty: the plan does not name its runbook")]
    NoFile,
}

/// Read a plan saved by `runbook plan --out`, checking what `exec --plan` relies on.
///
/// # Errors
/// When the text is not a plan of this format, or its hashes or file are malformed.
pub fn read(text: &str) -> Result<Plan, PlanFileError> {
    let plan: Plan = serde_json::from_str(text)?;
    if plan.format != PLAN_FORMAT {
        return Err(PlanFileError::Format { found: plan.format });
    }
    let is_digest = |h: &str| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit());
    if !is_digest(&plan.runbook_hash) {
        return Err(PlanFileError::Hash {
            field: "runbook_hash",
        });
    }
    if !is_digest(&plan.plan_hash) {
        return Err(PlanFileError::Hash { field: "plan_hash" });
    }
    if plan.file.trim().is_empty() || plan.file.contains('\0') {
        return Err(PlanFileError::NoFile);
    }
    Ok(plan)
}

/// A rendered action line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Line {
    /// What the value is (`run`, `http`, `header Authorization`…).
    pub label: String,
    /// The rendered value (secrets as `***`, run-time values as `⟨steps.x.result⟩`).
    pub value: String,
}

/// Whether a guarded step will run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The guard depends only on params and is true.
    Runs,
    /// The guard depends only on params and is false.
    Skipped,
    /// The guard reads run-time values.
    AtRunTime,
    /// The guard reads a param that was not given (an incomplete plan).
    Undecided,
}

/// A `when` guard and what the plan can say about it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Guard {
    /// The expression.
    pub when: String,
    /// The decision.
    pub decision: Decision,
}

/// A planned check.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedCheck {
    /// Its name, if given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The kind (`run`, `http`…).
    pub kind: String,
    /// The rendered check.
    pub lines: Vec<Line>,
    /// The pass condition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assert: Option<String>,
    /// Polling window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub within: Option<String>,
    /// Polling interval (when polled).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
}

/// A planned retry policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedRetry {
    /// Total attempts.
    pub attempts: u32,
    /// First delay.
    pub delay: String,
    /// `fixed` or `exponential`.
    pub backoff: String,
    /// Longest delay.
    pub max_delay: String,
}

/// A step as the plan shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedStep {
    /// Step id.
    pub id: String,
    /// Human name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Level (1-based): steps of one level may run in parallel.
    pub level: usize,
    /// Direct dependencies.
    pub needs: Vec<String>,
    /// Action kind, `None` for a pure gate.
    pub kind: Option<String>,
    /// The rendered action.
    pub action: Vec<Line>,
    /// The `when` guard.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guard: Option<Guard>,
    /// Preconditions.
    pub require: Vec<PlannedCheck>,
    /// Custom success condition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assert: Option<String>,
    /// Verification gates.
    pub verify: Vec<PlannedCheck>,
    /// Limit per attempt.
    pub timeout: String,
    /// Retry policy.
    pub retry: PlannedRetry,
    /// Whether it changes the world.
    pub mutates: bool,
    /// Whether it is a point of no return.
    pub irreversible: bool,
    /// Whether a resumed run may repeat it.
    pub idempotent: bool,
    /// Keep going when it fails.
    pub continue_on_failure: bool,
    /// The undo action.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compensate: Option<Vec<Line>>,
    /// Why the compensation may not run even on rollback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compensation_note: Option<String>,
    /// Longest time the step can take.
    pub worst_case: String,
    /// The same, in milliseconds.
    pub worst_case_ms: u64,
}

impl PlannedStep {
    /// Whether the params already decide that the step's guard is false: it will not run, so
    /// it takes no time and is off the critical path.
    pub fn skipped_by_params(&self) -> bool {
        self.guard
            .as_ref()
            .is_some_and(|g| g.decision == Decision::Skipped)
    }
}

/// Totals and warnings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// Main steps.
    pub steps: usize,
    /// `finally` steps.
    pub finally_steps: usize,
    /// Steps that change the world.
    pub mutating: usize,
    /// Points of no return, by id.
    pub irreversible: Vec<String>,
    /// Approval steps.
    pub approvals: usize,
    /// Steps the params already skip.
    pub skipped_by_params: Vec<String>,
    /// Largest level.
    pub max_parallel_level: usize,
    /// Steps running at once at most.
    pub max_parallel: usize,
    /// The chain of steps with the longest worst case.
    pub critical_path: Vec<String>,
    /// Its worst-case duration (main steps and `finally`).
    pub worst_case: String,
    /// The same, in milliseconds.
    pub worst_case_ms: u64,
    /// What a reviewer should look at.
    pub warnings: Vec<String>,
}

/// A complete plan, also the format of `plan --out` files that `exec --plan` executes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// [`PLAN_FORMAT`].
    pub format: u32,
    /// Runbook name.
    pub runbook: String,
    /// Its description.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The file, as given.
    pub file: String,
    /// SHA-256 of the file.
    pub runbook_hash: String,
    /// Resolved params (secret params masked).
    pub params: BTreeMap<String, serde_json::Value>,
    /// SHA-256 of the runbook hash and the real params: what `exec --plan` compares.
    pub plan_hash: String,
    /// RTO.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rto: Option<String>,
    /// RPO.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpo: Option<String>,
    /// `stop` or `rollback`.
    pub on_failure: String,
    /// Checks run before any step.
    pub preflight: Vec<PlannedCheck>,
    /// Main steps, by level, ids.
    pub levels: Vec<Vec<String>>,
    /// Main steps in execution order.
    pub steps: Vec<PlannedStep>,
    /// `finally` steps.
    pub finally: Vec<PlannedStep>,
    /// Totals.
    pub summary: Summary,
    /// Required params that were not given: the plan shows `⟨params.name⟩` in their place, so a
    /// reviewer can read it early, but it cannot be executed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_params: Vec<String>,
}

impl Plan {
    /// Whether params are missing (the plan is for reading only).
    pub fn is_incomplete(&self) -> bool {
        !self.missing_params.is_empty()
    }
}

/// Params as they may be shown and stored: values of `secret: true` params replaced by `***`.
pub fn shown_params(c: &Compiled, params: &ParamValues) -> BTreeMap<String, serde_json::Value> {
    let secret = secret_params(c);
    params
        .iter()
        .map(|(k, v)| {
            let v = if secret.contains(&k.as_str()) {
                serde_json::Value::String("***".into())
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect()
}

/// The hash that binds a plan to a runbook and its params.
pub fn plan_hash(runbook_hash: &str, params: &ParamValues) -> String {
    let mut h = Sha256::new();
    h.update(runbook_hash.as_bytes());
    h.update(b"\0");
    h.update(serde_json::to_string(params).unwrap_or_default().as_bytes());
    hex(&h.finalize())
}

fn secret_params(c: &Compiled) -> Vec<&str> {
    c.runbook
        .params
        .iter()
        .filter(|(_, p)| p.value.secret)
        .map(|(k, _)| k.as_str())
        .collect()
}

/// The template context of a plan: params known, everything else a placeholder (a missing
/// param too, shown as `⟨params.name⟩`).
fn plan_context(c: &Compiled, params: &ParamValues, missing: &[String]) -> Value {
    let secret = secret_params(c);
    let mut params: BTreeMap<&str, Value> = params
        .iter()
        .map(|(k, v)| {
            let v = if secret.contains(&k.as_str()) {
                Placeholder::value(format!("params.{k}"), true)
            } else {
                Value::from(minijinja::value::Serde(v))
            };
            (k.as_str(), v)
        })
        .collect();
    for m in missing {
        params.insert(
            m.as_str(),
            Placeholder::value(format!("params.{m}"), secret.contains(&m.as_str())),
        );
    }
    minijinja::context! {
        params => params,
        secrets => Placeholder::value("secrets", true),
        steps => Placeholder::value("steps", false),
        run => Placeholder::value("run", false),
        env => Placeholder::value("env", false),
    }
}

/// Build the plan of a compiled runbook with resolved params.
///
/// # Errors
/// Templates that fail to render with these params (e.g. a filter applied to a wrong type).
pub fn build(c: &Compiled, params: &ParamValues) -> Result<Plan, Vec<Diagnostic>> {
    build_incomplete(c, params, &[])
}

/// Build the plan of a runbook some of whose required params are not known yet: each `missing`
/// param renders as the placeholder `⟨params.name⟩`, guards that read one stay undecided, and
/// the plan is marked incomplete (for review only: `exec --plan` never gets one).
///
/// # Errors
/// Templates that fail to render with these params.
pub fn build_incomplete(
    c: &Compiled,
    params: &ParamValues,
    missing: &[String],
) -> Result<Plan, Vec<Diagnostic>> {
    let renderer = Renderer::new(plan_context(c, params, missing));
    let mut diags = Vec::new();
    let mut steps = Vec::new();
    for (d, level) in c.levels.iter().enumerate() {
        for &i in level {
            if let Some(s) = plan_step(c, i, d + 1, &renderer, missing, &mut diags) {
                steps.push(s);
            }
        }
    }
    let mut finally = Vec::new();
    for (d, level) in c.finally_levels.iter().enumerate() {
        for &i in level {
            if let Some(s) = plan_step(c, i, d + 1, &renderer, missing, &mut diags) {
                finally.push(s);
            }
        }
    }
    let preflight = c
        .runbook
        .preflight
        .iter()
        .filter_map(|ch| {
            plan_check(
                ch,
                &CheckTiming {
                    within: None,
                    interval: crate::compile::DEFAULT_INTERVAL,
                    timeout: crate::compile::DEFAULT_CHECK_TIMEOUT,
                },
                &renderer,
                &mut diags,
            )
        })
        .collect();
    if !diags.is_empty() {
        return Err(diags);
    }
    let summary = summarize(c, &steps, &finally);
    Ok(Plan {
        format: PLAN_FORMAT,
        runbook: c.runbook.runbook.value.clone(),
        description: c.runbook.description.clone(),
        file: c.file.name.clone(),
        runbook_hash: c.hash.clone(),
        params: shown_params(c, params),
        plan_hash: plan_hash(&c.hash, params),
        rto: c.rto.map(duration::format),
        rpo: c.rpo.map(duration::format),
        on_failure: match c.runbook.on_failure {
            crate::model::OnFailure::Stop => "stop".into(),
            crate::model::OnFailure::Rollback => "rollback".into(),
        },
        preflight,
        levels: c
            .levels
            .iter()
            .map(|l| l.iter().map(|&i| c.steps[i].id.clone()).collect())
            .collect(),
        steps,
        finally,
        summary,
        missing_params: missing.to_vec(),
    })
}

fn lines(v: Vec<(String, String)>) -> Vec<Line> {
    v.into_iter()
        .map(|(label, value)| Line { label, value })
        .collect()
}

fn render_diag(step: &Step, what: &str, e: &crate::template::RenderError) -> Diagnostic {
    Diagnostic::new(
        "render",
        format!(
            "failed to render {what} of step `{}`: {}",
            step.id.value,
            crate::template::describe(&e.source)
        ),
        step.id.span,
    )
    .with_help("check the params given and the filters used")
}

fn plan_action(
    action: &Action<'_>,
    r: &Renderer<'_>,
) -> Result<Vec<Line>, crate::template::RenderError> {
    action.kind().describe(r).map(lines)
}

fn plan_check(
    ch: &Check,
    t: &CheckTiming,
    r: &Renderer<'_>,
    diags: &mut Vec<Diagnostic>,
) -> Option<PlannedCheck> {
    let action = kinds::check_actions(ch).into_iter().next()?;
    match plan_action(&action, r) {
        Ok(l) => Some(PlannedCheck {
            name: ch.name.clone(),
            kind: action.name().to_owned(),
            lines: l,
            assert: ch.assert.as_ref().map(|a| a.value.clone()),
            within: t.within.map(duration::format),
            interval: t.within.map(|_| duration::format(t.interval)),
        }),
        Err(e) => {
            diags.push(Diagnostic::new(
                "render",
                format!(
                    "failed to render a check: {}",
                    crate::template::describe(&e.source)
                ),
                action.span(),
            ));
            None
        }
    }
}

fn plan_retry(r: &RetryPolicy) -> PlannedRetry {
    PlannedRetry {
        attempts: r.attempts,
        delay: duration::format(r.delay),
        backoff: match r.backoff {
            crate::model::Backoff::Fixed => "fixed".into(),
            crate::model::Backoff::Exponential => "exponential".into(),
        },
        max_delay: duration::format(r.max_delay),
    }
}

fn decide(when: &str, r: &Renderer<'_>, missing: &[String]) -> Decision {
    let Ok(refs) = expression_references(when) else {
        return Decision::AtRunTime;
    };
    if !refs.paths.iter().all(|p| p.starts_with("params")) {
        return Decision::AtRunTime;
    }
    // A placeholder is truthy: evaluating the guard would decide on a value nobody gave.
    if refs.paths.iter().any(|p| {
        (p == "params" && !missing.is_empty())
            || missing.iter().any(|m| {
                p.strip_prefix("params.")
                    .is_some_and(|rest| rest == m || rest.starts_with(&format!("{m}.")))
            })
    }) {
        return Decision::Undecided;
    }
    match r.eval(when) {
        Ok(v) if v.is_true() => Decision::Runs,
        Ok(_) => Decision::Skipped,
        Err(_) => Decision::AtRunTime,
    }
}

#[expect(
    clippy::many_single_char_names,
    reason = "c, i, r follow the compiler's conventions"
)]
fn plan_step(
    c: &Compiled,
    i: usize,
    level: usize,
    r: &Renderer<'_>,
    missing: &[String],
    diags: &mut Vec<Diagnostic>,
) -> Option<PlannedStep> {
    let step = c.step(i);
    let cs = &c.steps[i];
    let action = kinds::step_actions(step).into_iter().next();
    let rendered = match &action {
        Some(a) => match plan_action(a, r) {
            Ok(l) => l,
            Err(e) => {
                diags.push(render_diag(step, "the action", &e));
                return None;
            }
        },
        None => Vec::new(),
    };
    let require = step
        .require
        .iter()
        .zip(&cs.require)
        .filter_map(|(ch, t)| plan_check(ch, t, r, diags))
        .collect();
    let verify = step
        .verify
        .iter()
        .zip(&cs.verify)
        .filter_map(|(ch, t)| plan_check(ch, t, r, diags))
        .collect();
    let compensate = match &step.compensate {
        Some(comp) => match kinds::compensation_actions(&comp.value)
            .first()
            .map(|a| plan_action(a, r))
        {
            Some(Ok(l)) => Some(l),
            Some(Err(e)) => {
                diags.push(render_diag(step, "the compensation", &e));
                None
            }
            None => None,
        },
        None => None,
    };
    let compensation_note = if compensate.is_some() && i < c.main_count {
        let later_irreversible: Vec<&str> = c
            .downstream(i)
            .into_iter()
            .filter(|&d| c.steps[d].irreversible)
            .map(|d| c.steps[d].id.as_str())
            .collect();
        if later_irreversible.is_empty() {
            None
        } else {
            Some(format!(
                "not compensated once {} has started (a point of no return, whatever its outcome)",
                later_irreversible.join(", ")
            ))
        }
    } else {
        None
    };
    Some(PlannedStep {
        id: cs.id.clone(),
        name: step.name.clone(),
        level,
        needs: cs.needs.iter().map(|&n| c.steps[n].id.clone()).collect(),
        kind: action.as_ref().map(|a| a.name().to_owned()),
        action: rendered,
        guard: step.when.as_ref().map(|w| Guard {
            when: w.value.clone(),
            decision: decide(&w.value, r, missing),
        }),
        require,
        assert: step.assert.as_ref().map(|a| a.value.clone()),
        verify,
        timeout: duration::format(cs.timeout),
        retry: plan_retry(&cs.retry),
        mutates: cs.mutates,
        irreversible: cs.irreversible,
        idempotent: cs.idempotent,
        continue_on_failure: step.continue_on_failure,
        compensate,
        compensation_note,
        worst_case: duration::format(cs.worst_case()),
        worst_case_ms: u64::try_from(cs.worst_case().as_millis()).unwrap_or(u64::MAX),
    })
}

/// The chain of steps with the longest worst case, and that worst case, counting a step the
/// params skip as taking no time and leaving it out of the chain: it will not run.
fn critical_path(c: &Compiled, steps: &[PlannedStep]) -> (Vec<String>, Duration) {
    let index: BTreeMap<&str, usize> = steps
        .iter()
        .enumerate()
        .map(|(n, s)| (s.id.as_str(), n))
        .collect();
    let weight = |s: &PlannedStep| {
        if s.skipped_by_params() {
            Duration::ZERO
        } else {
            c.index_by_id
                .get(&s.id)
                .map_or(Duration::ZERO, |&i| c.steps[i].worst_case())
        }
    };
    // Steps come level by level: every need is before its dependant.
    let mut finish = vec![Duration::ZERO; steps.len()];
    let mut prev: Vec<Option<usize>> = vec![None; steps.len()];
    for (n, s) in steps.iter().enumerate() {
        let (best, from) = s
            .needs
            .iter()
            // Of equally long chains, the first need declared (as the compiler's order did).
            .rev()
            .filter_map(|d| index.get(d.as_str()))
            .map(|&p| (finish[p], Some(p)))
            .max_by_key(|(d, _)| *d)
            .unwrap_or((Duration::ZERO, None));
        finish[n] = best.saturating_add(weight(s));
        prev[n] = from;
    }
    let Some(end) = (0..steps.len()).max_by_key(|&n| (finish[n], std::cmp::Reverse(n))) else {
        return (Vec::new(), Duration::ZERO);
    };
    let mut path = vec![end];
    let mut at = end;
    while let Some(p) = prev[at] {
        path.push(p);
        at = p;
    }
    path.reverse();
    let ids = path
        .into_iter()
        .filter(|&n| !steps[n].skipped_by_params())
        .map(|n| steps[n].id.clone())
        .collect();
    (ids, finish[end])
}

fn summarize(c: &Compiled, steps: &[PlannedStep], finally: &[PlannedStep]) -> Summary {
    let (path, main_worst) = critical_path(c, steps);
    let finally_worst: Duration = c
        .finally_levels
        .iter()
        .map(|l| {
            l.iter()
                .filter(|&&i| {
                    !finally
                        .iter()
                        .any(|f| f.id == c.steps[i].id && f.skipped_by_params())
                })
                .map(|&i| c.steps[i].worst_case())
                .max()
                .unwrap_or_default()
        })
        .fold(Duration::ZERO, Duration::saturating_add);
    // Compile refused runbooks whose sums overflow; saturate anyway rather than panic.
    let worst = main_worst.saturating_add(finally_worst);
    let mut warnings = Vec::new();
    if let Some(rto) = c.rto
        && worst > rto
    {
        warnings.push(format!(
                "worst case {} exceeds the RTO of {}: tighten timeouts/retries on the critical path or revisit the objective",
                duration::format(worst),
                duration::format(rto)
            ));
    }
    if let Some(t) = c.timeout
        && worst > t
    {
        warnings.push(format!(
                "worst case {} exceeds the run timeout of {}: the run may be cancelled before it can finish",
                duration::format(worst),
                duration::format(t)
            ));
    }
    let irreversible: Vec<String> = steps
        .iter()
        .filter(|s| s.irreversible)
        .map(|s| s.id.clone())
        .collect();
    if c.runbook.unattended && !irreversible.is_empty() {
        warnings.push(format!(
            "unattended runbook with irreversible steps ({}): nobody approves them",
            irreversible.join(", ")
        ));
    }
    for s in steps.iter().filter(|s| {
        s.mutates
            && s.kind.is_some()
            && s.compensate.is_none()
            && c.runbook.on_failure == crate::model::OnFailure::Rollback
            && !s.irreversible
    }) {
        warnings.push(format!(
            "mutating step `{}` has no `compensate`: a rollback cannot undo it",
            s.id
        ));
    }
    Summary {
        steps: steps.len(),
        finally_steps: finally.len(),
        mutating: steps.iter().chain(finally).filter(|s| s.mutates).count(),
        irreversible,
        approvals: steps
            .iter()
            .filter(|s| s.kind.as_deref() == Some("approve"))
            .count(),
        skipped_by_params: steps
            .iter()
            .filter(|s| s.skipped_by_params())
            .map(|s| s.id.clone())
            .collect(),
        max_parallel_level: c.levels.iter().map(Vec::len).max().unwrap_or(0),
        max_parallel: c.max_parallel,
        critical_path: path,
        worst_case: duration::format(worst),
        worst_case_ms: u64::try_from(worst.as_millis()).unwrap_or(u64::MAX),
        warnings,
    }
}

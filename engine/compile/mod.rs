//! Compile phase: validate a parsed runbook, resolve references and build the step DAG.
//!
//! Every check here collects diagnostics instead of stopping, so one `validate` shows every
//! mistake. The output, [`Compiled`], is what `plan` renders and `exec` runs.

mod graph;
mod params;
mod refs;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use petgraph::graph::DiGraph;
use sha2::{Digest, Sha256};

use crate::diagnostic::{Diagnostic, SourceFile, did_you_mean};
use crate::duration::{self, DURATION_HELP};
use crate::kinds::{self, Action};
use crate::model::{Backoff, Check, DurationText, ParamType, Retry, Runbook, Span, Spanned, Step};

pub use params::{ParamValues, parse_assignment as resolve_params_assignment, resolve_params};
pub use refs::template_key;

/// Default per-step timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_mins(10);
/// Default timeout of one check evaluation.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// Default pause between polls of a gate.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Default number of steps running at once.
pub const DEFAULT_MAX_PARALLEL: usize = 8;

/// A retry policy with every default applied.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Total attempts (≥ 1).
    pub attempts: u32,
    /// Delay before the second attempt.
    pub delay: Duration,
    /// Delay growth.
    pub backoff: Backoff,
    /// Upper bound of a delay.
    pub max_delay: Duration,
    /// Randomise delays by ±20 %.
    pub jitter: bool,
    /// Retry only these exit codes (empty: any).
    pub on_exit_codes: Vec<i32>,
    /// Retry only these HTTP statuses (empty: any).
    pub on_http_statuses: Vec<u16>,
    /// Retry only when this expression over `result` is true.
    pub on_expr: Option<String>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 1,
            delay: Duration::from_secs(1),
            backoff: Backoff::Exponential,
            max_delay: Duration::from_mins(1),
            jitter: true,
            on_exit_codes: Vec::new(),
            on_http_statuses: Vec::new(),
            on_expr: None,
        }
    }
}

impl RetryPolicy {
    /// Delay before attempt `next` (2 for the first retry), without jitter.
    pub fn delay_before(&self, next: u32) -> Duration {
        let base = match self.backoff {
            Backoff::Fixed => self.delay,
            Backoff::Exponential => {
                let factor = 2u32.saturating_pow(next.saturating_sub(2));
                self.delay.saturating_mul(factor)
            }
        };
        base.min(self.max_delay)
    }

    /// Sum of all delays if every attempt fails (no jitter); `None` when it overflows.
    ///
    /// Delays stop growing once they reach `max_delay` (or the factor saturates), so the sum
    /// is computed in a few dozen steps however many attempts are allowed.
    pub fn checked_total_delay(&self) -> Option<Duration> {
        let mut total = Duration::ZERO;
        let mut previous = None;
        let mut n = 2;
        while n <= self.attempts {
            let d = self.delay_before(n);
            if self.backoff == Backoff::Fixed || d >= self.max_delay || previous == Some(d) {
                // Every later delay is `d`.
                return total.checked_add(d.checked_mul(self.attempts - n + 1)?);
            }
            total = total.checked_add(d)?;
            previous = Some(d);
            n += 1;
        }
        Some(total)
    }

    /// Sum of all delays if every attempt fails (no jitter), saturating.
    pub fn total_delay(&self) -> Duration {
        self.checked_total_delay().unwrap_or(Duration::MAX)
    }
}

/// Timing of one check.
#[derive(Debug, Clone)]
pub struct CheckTiming {
    /// Poll until this much time has passed (`None`: evaluate once).
    pub within: Option<Duration>,
    /// Pause between polls.
    pub interval: Duration,
    /// Limit of one evaluation.
    pub timeout: Duration,
}

impl CheckTiming {
    /// Longest time the check can take.
    pub fn worst_case(&self) -> Duration {
        self.within
            .map_or(self.timeout, |w| w.saturating_add(self.timeout))
    }
}

/// A step with everything resolved.
#[derive(Debug, Clone)]
pub struct CompiledStep {
    /// Position in [`Compiled::steps`]; also its node in the graph for main steps.
    pub index: usize,
    /// The id as written.
    pub id: String,
    /// Whether it is a `finally` step.
    pub is_finally: bool,
    /// Direct dependencies (indices).
    pub needs: Vec<usize>,
    /// Limit of one attempt.
    pub timeout: Duration,
    /// Retry policy (1 attempt for irreversible steps).
    pub retry: RetryPolicy,
    /// Point of no return.
    pub irreversible: bool,
    /// Changes the world.
    pub mutates: bool,
    /// Safe to repeat.
    pub idempotent: bool,
    /// Timing of each `require` check.
    pub require: Vec<CheckTiming>,
    /// Timing of each `verify` gate.
    pub verify: Vec<CheckTiming>,
    /// Fixed duration of a `sleep` action.
    pub sleep: Option<Duration>,
    /// Whether the step has an action (a pure gate has none).
    pub has_action: bool,
}

impl CompiledStep {
    /// Longest time the step can take: guards, every attempt and delay, then the gates.
    /// Saturates at `Duration::MAX`; compile refuses a runbook where it would (see
    /// [`CompiledStep::checked_worst_case`]).
    pub fn worst_case(&self) -> Duration {
        self.checked_worst_case().unwrap_or(Duration::MAX)
    }

    /// Longest time the step can take, `None` when the sum overflows.
    pub fn checked_worst_case(&self) -> Option<Duration> {
        let mut total = Duration::ZERO;
        for c in self.require.iter().chain(&self.verify) {
            total = total.checked_add(c.within.unwrap_or_default().checked_add(c.timeout)?)?;
        }
        let action = match self.sleep {
            Some(d) => d,
            None if !self.has_action => Duration::ZERO,
            None => self
                .timeout
                .checked_mul(self.retry.attempts)?
                .checked_add(self.retry.checked_total_delay()?)?,
        };
        total.checked_add(action)
    }
}

/// A validated runbook, ready to plan or execute.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The file it came from.
    pub file: SourceFile,
    /// Its path on disk (for `call` resolution and hashing).
    pub path: PathBuf,
    /// SHA-256 of the file's bytes, hex.
    pub hash: String,
    /// The parsed runbook.
    pub runbook: Runbook,
    /// Main steps then `finally` steps, in file order.
    pub steps: Vec<CompiledStep>,
    /// Number of main steps (indices below are main, at or above are `finally`).
    pub main_count: usize,
    /// Dependencies of the main steps: an edge runs from a step to each of its dependants.
    pub graph: DiGraph<usize, ()>,
    /// Dependencies among `finally` steps.
    pub finally_graph: DiGraph<usize, ()>,
    /// Main steps in a topological order that keeps file order where it can.
    pub order: Vec<usize>,
    /// Main steps grouped by depth: every step of a level can run in parallel.
    pub levels: Vec<Vec<usize>>,
    /// `finally` steps by depth.
    pub finally_levels: Vec<Vec<usize>>,
    /// Each step's level (0-based index into `levels` or `finally_levels`); all 0 when the
    /// graph has a cycle or an unknown `needs`.
    pub depth: Vec<usize>,
    /// Whole-run deadline.
    pub timeout: Option<Duration>,
    /// Steps running at once.
    pub max_parallel: usize,
    /// Recovery time objective.
    pub rto: Option<Duration>,
    /// Recovery point objective.
    pub rpo: Option<Duration>,
    /// Step ids → index (ids as written and with `-` as `_`).
    pub index_by_id: HashMap<String, usize>,
}

impl Compiled {
    /// The model step at an index (main or finally).
    pub fn step(&self, index: usize) -> &Step {
        if index < self.main_count {
            &self.runbook.steps[index]
        } else {
            &self.runbook.finally[index - self.main_count]
        }
    }

    /// Main steps upstream of `index` (transitively), excluding itself.
    pub fn upstream(&self, index: usize) -> Vec<usize> {
        graph::ancestors(&self.graph, index)
    }

    /// Main steps downstream of `index` (transitively), excluding itself.
    pub fn downstream(&self, index: usize) -> Vec<usize> {
        graph::descendants(&self.graph, index)
    }

    /// The longest chain of main steps by worst-case duration, and that duration.
    pub fn critical_path(&self) -> (Vec<usize>, Duration) {
        graph::critical_path(&self.graph, &self.order, |i| self.steps[i].worst_case())
    }
}

/// Read and compile a runbook file.
///
/// # Errors
/// Every problem found, as diagnostics; an unreadable file is one diagnostic without a span.
pub fn compile_path(path: &Path) -> Result<Compiled, (SourceFile, Vec<Diagnostic>)> {
    let name = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            let file = SourceFile::new(name, "");
            let d = Diagnostic::global(
                "unreadable",
                format!("failed to read {}: {e}", path.display()),
            )
            .with_help("check the path and its permissions");
            return Err((file, vec![d]));
        }
    };
    let file = SourceFile::new(name, text);
    compile(file.clone(), path).map_err(|d| (file, d))
}

/// Compile a runbook's text.
///
/// # Errors
/// Every problem found, as diagnostics.
pub fn compile(file: SourceFile, path: &Path) -> Result<Compiled, Vec<Diagnostic>> {
    let runbook = match crate::parse::parse(&file) {
        Ok(r) => r,
        Err(mut diags) => {
            // Unknown keys alone: compile the rest, so every problem of the file is reported.
            let (rest, hidden) = crate::parse::without_unknown_keys(&file);
            diags.extend(hidden);
            let mut seen = std::collections::HashSet::new();
            diags.retain(|d| seen.insert((d.span.map(|s| (s.line, s.column)), d.message.clone())));
            diags.sort_by_key(|d| d.span.map(|s| (s.line, s.column)));
            if let Some(text) = rest
                && let Err(more) = compile(SourceFile::new(file.name.clone(), text), path)
            {
                diags.extend(more);
            }
            return Err(diags);
        }
    };
    let mut diags = Vec::new();
    let hash = hex(&Sha256::digest(file.text.as_bytes()));

    let text = &*file.text;
    check_header(&runbook, text, &mut diags);
    let mut index_by_id: HashMap<String, usize> = HashMap::new();
    let main_count = runbook.steps.len();
    let all: Vec<&Step> = runbook.steps.iter().chain(runbook.finally.iter()).collect();
    for (i, step) in all.iter().enumerate() {
        check_id(step, i, &all, &mut index_by_id, &mut diags);
    }

    let (graph, main_needs, unresolved) =
        graph::build(&all[..main_count], 0, &index_by_id, &mut diags, false);
    let (finally_graph, finally_needs, unresolved_finally) = graph::build(
        &all[main_count..],
        main_count,
        &index_by_id,
        &mut diags,
        true,
    );
    let unresolved = unresolved || unresolved_finally;
    let order = graph::order(&graph, &all[..main_count], &mut diags);
    let finally_order = graph::order(&finally_graph, &all[main_count..], &mut diags);

    let defaults = Defaults::resolve(&runbook, text, &mut diags);
    let mut steps = Vec::with_capacity(all.len());
    for (i, step) in all.iter().enumerate() {
        steps.push(compile_step(
            i,
            step,
            i >= main_count,
            &defaults,
            text,
            &mut diags,
        ));
    }
    for (step, needs) in steps
        .iter_mut()
        .zip(main_needs.into_iter().chain(finally_needs))
    {
        step.needs = needs;
    }

    let levels = order
        .as_ref()
        .map(|o| graph::levels(&graph, o))
        .unwrap_or_default();
    let finally_levels = finally_order
        .as_ref()
        .map(|o| graph::levels(&finally_graph, o))
        .unwrap_or_default();
    let order = order.unwrap_or_default();
    let mut depth = vec![0; steps.len()];
    for (d, level) in levels.iter().chain(&finally_levels).enumerate() {
        let d = if d < levels.len() {
            d
        } else {
            d - levels.len()
        };
        for &i in level {
            depth[i] = d;
        }
    }

    let compiled = Compiled {
        file,
        path: path.to_path_buf(),
        hash,
        runbook,
        steps,
        main_count,
        graph,
        finally_graph,
        order,
        levels,
        finally_levels,
        depth,
        timeout: defaults.run_timeout,
        max_parallel: defaults.max_parallel,
        rto: defaults.rto,
        rpo: defaults.rpo,
        index_by_id,
    };

    // Whether a step is upstream of another needs the whole graph: with unknown `needs` or a
    // cycle, templates are still checked, but not for reading steps that may not have run.
    let graph_ok = !unresolved && diags.iter().all(|d| d.code != "cycle");
    refs::check(&compiled, graph_ok, &mut diags);
    check_worst_case(&compiled, &mut diags);
    if graph_ok {
        check_irreversible(&compiled, &mut diags);
    }
    if diags.is_empty() {
        Ok(compiled)
    } else {
        diags.sort_by_key(|d| d.span.map(|s| (s.line, s.column)));
        Err(diags)
    }
}

/// Refuse a runbook whose worst case cannot be computed: every plan sums it, and the sum of
/// timeouts × attempts and delays over all steps must not overflow.
fn check_worst_case(c: &Compiled, diags: &mut Vec<Diagnostic>) {
    let mut total = Some(Duration::ZERO);
    for (i, cs) in c.steps.iter().enumerate() {
        let Some(w) = cs.checked_worst_case() else {
            diags.push(
                Diagnostic::new(
                    "duration-overflow",
                    format!(
                        "the worst case of step `{}` (timeout × attempts, retry delays and gates) is too long to compute",
                        cs.id
                    ),
                    c.step(i).id.span,
                )
                .with_help("lower its timeout, `retry.attempts` or retry delays"),
            );
            return;
        };
        total = total.and_then(|t| t.checked_add(w));
    }
    if total.is_none() {
        diags.push(
            Diagnostic::new(
                "duration-overflow",
                "the worst case of the runbook (all steps' timeouts × attempts and delays) is too long to compute",
                c.runbook.runbook.span,
            )
            .with_help("lower timeouts, `retry.attempts` or retry delays"),
        );
    }
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Parse a spanned duration, reporting a diagnostic when it is malformed.
pub(crate) fn duration_of(
    text: Option<&Spanned<DurationText>>,
    what: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<Duration> {
    let t = text?;
    match duration::parse(&t.value.0) {
        Ok(d) => Some(d),
        Err(e) => {
            diags.push(
                Diagnostic::new("bad-duration", format!("invalid {what}: {e}"), t.span)
                    .with_help(DURATION_HELP),
            );
            None
        }
    }
}

struct Defaults {
    timeout: Duration,
    retry: RetryPolicy,
    run_timeout: Option<Duration>,
    max_parallel: usize,
    rto: Option<Duration>,
    rpo: Option<Duration>,
}

impl Defaults {
    fn resolve(rb: &Runbook, text: &str, diags: &mut Vec<Diagnostic>) -> Self {
        let timeout = duration_of(rb.defaults.timeout.as_ref(), "default timeout", diags)
            .unwrap_or(DEFAULT_TIMEOUT);
        let retry = match &rb.defaults.retry {
            Some(r) => retry_policy(r, &RetryPolicy::default(), text, diags),
            None => RetryPolicy::default(),
        };
        let max_parallel = match &rb.max_parallel {
            Some(m) if m.value == 0 => {
                diags.push(
                    Diagnostic::new("bad-value", "`max_parallel` must be at least 1", m.span)
                        .with_help("use 1 to run steps one at a time"),
                );
                1
            }
            Some(m) => m.value as usize,
            None => DEFAULT_MAX_PARALLEL,
        };
        Self {
            timeout,
            retry,
            run_timeout: duration_of(rb.timeout.as_ref(), "run timeout", diags),
            max_parallel,
            rto: duration_of(rb.objectives.rto.as_ref(), "RTO", diags),
            rpo: duration_of(rb.objectives.rpo.as_ref(), "RPO", diags),
        }
    }
}

fn retry_policy(
    r: &Spanned<Retry>,
    base: &RetryPolicy,
    text: &str,
    diags: &mut Vec<Diagnostic>,
) -> RetryPolicy {
    let mut p = base.clone();
    if let Some(a) = r.attempts {
        if a == 0 {
            diags.push(
                Diagnostic::new(
                    "bad-value",
                    "`retry.attempts` must be at least 1",
                    value_span(text, r.span, "attempts"),
                )
                .with_help("attempts counts the first try: 1 means no retry"),
            );
        }
        p.attempts = a.max(1);
    }
    if let Some(d) = duration_of(r.delay.as_ref(), "retry delay", diags) {
        p.delay = d;
    }
    if let Some(d) = duration_of(r.max_delay.as_ref(), "retry max_delay", diags) {
        p.max_delay = d;
    }
    if let Some(b) = r.backoff {
        p.backoff = b;
    }
    if let Some(j) = r.jitter {
        p.jitter = j;
    }
    if let Some(on) = &r.on {
        p.on_exit_codes.clone_from(&on.exit_codes);
        p.on_http_statuses.clone_from(&on.http_statuses);
        p.on_expr = on.expr.as_ref().map(|e| e.value.clone());
    }
    p
}

fn check_header(rb: &Runbook, text: &str, diags: &mut Vec<Diagnostic>) {
    if rb.runbook.value.trim().is_empty() {
        diags.push(
            Diagnostic::new("bad-value", "the runbook name is empty", rb.runbook.span)
                .with_help("name the runbook, e.g. `runbook: dr-failover`"),
        );
    }
    if rb.steps.is_empty() {
        diags.push(
            Diagnostic::new("no-steps", "the runbook has no steps", rb.runbook.span)
                .with_help("add a `steps:` list with at least one step"),
        );
    }
    for (name, p) in &rb.params {
        if !is_identifier(name) {
            diags.push(
                Diagnostic::new("bad-name", format!("param name `{name}` is not an identifier"), p.span)
                    .with_help("use letters, digits and `_`, starting with a letter, so templates can say `params.NAME`"),
            );
        }
        params::check_declaration(name, p, diags);
    }
    for (name, s) in &rb.secrets {
        if !is_identifier(name) {
            diags.push(
                Diagnostic::new(
                    "bad-name",
                    format!("secret name `{name}` is not an identifier"),
                    s.span,
                )
                .with_help("use letters, digits and `_`, starting with a letter"),
            );
        }
    }
    let preflight = crate::parse::top_level_key(text, "preflight").unwrap_or(rb.runbook.span);
    for check in &rb.preflight {
        check_check(check, (preflight, "in this `preflight`"), text, diags);
    }
}

/// Whether `s` can be written after a dot in a template.
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_id(
    step: &Step,
    i: usize,
    all: &[&Step],
    index_by_id: &mut HashMap<String, usize>,
    diags: &mut Vec<Diagnostic>,
) {
    let id = &step.id;
    let valid = !id.value.is_empty()
        && id
            .value
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic())
        && id
            .value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        diags.push(
            Diagnostic::new(
                "bad-id",
                format!("step id `{}` is not valid", id.value),
                id.span,
            )
            .with_help("start with a letter; use letters, digits, `-` and `_`"),
        );
        return;
    }
    let key = template_key(&id.value);
    if let Some(&prev) = index_by_id.get(&id.value).or_else(|| index_by_id.get(&key)) {
        let what = if all[prev].id.value == id.value {
            format!("duplicate step id `{}`", id.value)
        } else {
            format!(
                "step id `{}` clashes with `{}` (templates see both as `steps.{key}`)",
                id.value, all[prev].id.value
            )
        };
        diags.push(
            Diagnostic::new("duplicate-id", what, id.span)
                .with_label("defined again here")
                .with_related(all[prev].id.span, "first defined here")
                .with_help("give every step (including `finally` steps) a unique id"),
        );
        return;
    }
    index_by_id.insert(id.value.clone(), i);
    if key != id.value {
        index_by_id.insert(key, i);
    }
}

fn compile_step(
    index: usize,
    step: &Step,
    is_finally: bool,
    defaults: &Defaults,
    text: &str,
    diags: &mut Vec<Diagnostic>,
) -> CompiledStep {
    let actions = kinds::step_actions(step);
    if actions.len() > 1 {
        let names: Vec<&str> = actions.iter().map(Action::name).collect();
        diags.push(
            Diagnostic::new(
                "two-actions",
                format!(
                    "step `{}` has {} actions ({}); a step has at most one",
                    step.id.value,
                    actions.len(),
                    names.join(", ")
                ),
                action_span(text, &actions[1]),
            )
            .with_label("second action")
            .with_related(action_span(text, &actions[0]), "first action")
            .with_help("split it into two steps, the second with `needs: [<first>]`"),
        );
    }
    if actions.is_empty() && step.verify.is_empty() && step.require.is_empty() {
        diags.push(
            Diagnostic::new("no-action", format!("step `{}` does nothing", step.id.value), step.id.span)
                .with_help("give it one action (run, http, k8s, sql, sleep, approve, call) or make it a gate with `verify:`/`require:` checks"),
        );
    }
    if let Some(Action::K8s(k)) = actions.first() {
        check_k8s_ops(k, text, diags);
    }
    for c in step.require.iter().chain(step.verify.iter()) {
        check_check(c, (step.id.span, "in this step"), text, diags);
    }
    if let Some(c) = &step.compensate {
        let acts = kinds::compensation_actions(&c.value);
        if acts.len() != 1 {
            diags.push(
                Diagnostic::new(
                    "bad-compensation",
                    format!(
                        "`compensate` of step `{}` must have exactly one action, it has {}",
                        step.id.value,
                        acts.len()
                    ),
                    key_span(text, c.span),
                )
                .with_help("write one of: run, http, k8s, sql"),
            );
        }
        let _ = duration_of(c.value.timeout.as_ref(), "compensation timeout", diags);
    }

    let timeout = duration_of(step.timeout.as_ref(), "timeout", diags).unwrap_or(defaults.timeout);
    let mut retry = match &step.retry {
        Some(r) => retry_policy(r, &defaults.retry, text, diags),
        None => defaults.retry.clone(),
    };
    let irreversible = step.irreversible.as_ref().is_some_and(|b| b.value);
    if irreversible {
        if let (Some(r), Some(irr)) = (&step.retry, &step.irreversible)
            && r.attempts.is_some_and(|a| a > 1)
        {
            diags.push(
                    Diagnostic::new("irreversible-retry", format!("step `{}` is irreversible but asks for retries", step.id.value), value_span(text, r.span, "attempts"))
                        .with_related(irr.span, "marked irreversible here")
                        .with_help("an irreversible step is never retried automatically; remove `retry` (resume can re-run it on an explicit decision)"),
                );
        }
        retry.attempts = 1;
    }
    let kind_mutates = actions.first().is_some_and(|a| a.kind().mutates());
    let kind_idempotent = actions.first().is_none_or(|a| a.kind().idempotent());
    let mutates = step.mutates.unwrap_or(kind_mutates) || irreversible;
    let idempotent = !irreversible
        && step.idempotent.unwrap_or(
            kind_idempotent
                && !(step.mutates == Some(true) && step.idempotent.is_none() && step.run.is_some()),
        );
    let sleep = match actions.first() {
        Some(Action::Sleep(s)) => duration_of(Some(s.duration), "sleep duration", diags),
        _ => None,
    };
    let timing = |c: &Check, diags: &mut Vec<Diagnostic>| CheckTiming {
        within: duration_of(c.within.as_ref(), "within", diags),
        interval: duration_of(c.interval.as_ref(), "interval", diags).unwrap_or(DEFAULT_INTERVAL),
        timeout: duration_of(c.timeout.as_ref(), "check timeout", diags)
            .unwrap_or(DEFAULT_CHECK_TIMEOUT),
    };
    let require = step.require.iter().map(|c| timing(c, diags)).collect();
    let verify = step.verify.iter().map(|c| timing(c, diags)).collect();
    CompiledStep {
        index,
        id: step.id.value.clone(),
        is_finally,
        needs: Vec::new(),
        timeout,
        retry,
        irreversible,
        mutates,
        idempotent,
        require,
        verify,
        sleep,
        has_action: !actions.is_empty(),
    }
}

/// Check one check. `fallback` is where to point, and what to say there, when the check itself
/// has no field with a position (e.g. a check with only a `name`).
fn check_check(c: &Check, fallback: (Span, &str), text: &str, diags: &mut Vec<Diagnostic>) {
    let acts = kinds::check_actions(c);
    let where_ = c
        .run
        .as_ref()
        .map(|r| r.span)
        .or(c.assert.as_ref().map(|a| a.span))
        .or(c.within.as_ref().map(|w| w.span))
        .or(acts.first().map(Action::span));
    if acts.len() > 1 {
        let names: Vec<&str> = acts.iter().map(Action::name).collect();
        diags.push(
            Diagnostic::new(
                "two-actions",
                format!(
                    "a check has {} kinds ({}); it must have exactly one",
                    acts.len(),
                    names.join(", ")
                ),
                action_span(text, &acts[1]),
            )
            .with_label("second kind")
            .with_related(action_span(text, &acts[0]), "first kind")
            .with_help("split it into two checks"),
        );
    } else if acts.is_empty() {
        let d = match where_ {
            Some(at) => Diagnostic::new("no-action", "a check has no kind", at),
            None => Diagnostic::new("no-action", "a check has no kind", fallback.0)
                .with_label(fallback.1),
        };
        diags.push(d.with_help("give it one of: run, http, sql, k8s, prometheus, expr"));
    }
    if let Some(Action::K8s(k)) = acts.first() {
        check_k8s_ops(k, text, diags);
        if !k.value.is_read() {
            diags.push(
                Diagnostic::new(
                    "mutating-check",
                    "a check must only read, but this `k8s` check changes the cluster",
                    key_span(text, k.span),
                )
                .with_help(
                    "use `get`, `list` or `rollout_status` in checks; make changes in a step",
                ),
            );
        }
    }
    if let Some(Action::Sql(s)) = acts.first()
        && s.value.mutates.unwrap_or(false)
    {
        diags.push(
            Diagnostic::new(
                "mutating-check",
                "a check must only read, but this `sql` check says `mutates: true`",
                value_span(text, s.span, "mutates"),
            )
            .with_help("move the statement to a step"),
        );
    }
    if c.interval.is_some()
        && c.within.is_none()
        && let Some(i) = &c.interval
    {
        diags.push(
            Diagnostic::new(
                "interval-without-within",
                "`interval` has no effect without `within`",
                i.span,
            )
            .with_help("add `within: <duration>` to poll the check until it passes"),
        );
    }
}

fn check_k8s_ops(k: &Spanned<kinds::k8s::K8sSpec>, text: &str, diags: &mut Vec<Diagnostic>) {
    let ops = k.value.operations();
    if ops.len() != 1 {
        diags.push(
            Diagnostic::new(
                "k8s-operation",
                if ops.is_empty() {
                    "`k8s` names no operation".to_owned()
                } else {
                    format!("`k8s` names {} operations ({}); it must name exactly one", ops.len(), ops.join(", "))
                },
                key_span(text, k.span),
            )
            .with_help("one of: rollout_undo, scale, set_image, restart, patch, apply, delete, get, list, rollout_status"),
        );
    }
}

fn check_irreversible(c: &Compiled, diags: &mut Vec<Diagnostic>) {
    if c.runbook.unattended {
        return;
    }
    for i in 0..c.main_count {
        let step = c.step(i);
        let Some(irr) = step.irreversible.as_ref().filter(|b| b.value) else {
            continue;
        };
        let approvals: Vec<usize> = c
            .upstream(i)
            .into_iter()
            .filter(|&u| c.step(u).approve.is_some())
            .collect();
        if let Some(d) = graph::guarded_approvals(c, i, &approvals, irr.span) {
            diags.push(d);
        }
        if approvals.is_empty() {
            diags.push(
                Diagnostic::new("unapproved-irreversible", format!("irreversible step `{}` has no approval upstream", step.id.value), irr.span)
                    .with_label("point of no return")
                    .with_help("add an `approve` step and list it (directly or transitively) in this step's `needs`, or set `unattended: true` on the runbook if it must run without a human"),
            );
        }
    }
    for i in c.main_count..c.steps.len() {
        if let Some(irr) = c.step(i).irreversible.as_ref().filter(|b| b.value) {
            diags.push(
                Diagnostic::new("irreversible-finally", "a `finally` step cannot be irreversible", irr.span)
                    .with_help("finally steps run without approval whatever happened; move the step into `steps`"),
            );
        }
    }
}

/// Where the key of a value is written (`http:` for the mapping under it), else the value.
fn key_span(text: &str, value: Span) -> Span {
    value
        .offset
        .and_then(|o| crate::parse::key_of_value(text, o))
        .unwrap_or(value)
}

/// Where an action's key is written: `http:` rather than the first key of the mapping under it.
fn action_span(text: &str, action: &Action<'_>) -> Span {
    key_span(text, action.span())
}

/// Where the value of `key` is written in the mapping at `mapping`, else the mapping.
fn value_span(text: &str, mapping: Span, key: &str) -> Span {
    mapping
        .offset
        .and_then(|o| crate::parse::value_in_mapping(text, o, key))
        .unwrap_or(mapping)
}

/// Parameter declarations for plan output, by name.
pub fn param_types(rb: &Runbook) -> BTreeMap<&str, ParamType> {
    rb.params
        .iter()
        .map(|(k, v)| (k.as_str(), v.value.ty.value))
        .collect()
}

/// Name suggestion for an unknown step id.
pub(crate) fn suggest_step(word: &str, index_by_id: &HashMap<String, usize>) -> Option<String> {
    did_you_mean(word, index_by_id.keys().map(String::as_str)).map(str::to_owned)
}

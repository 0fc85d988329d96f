//! The runbook format as Rust types: what `serde-saphyr` reads and what `schemars` publishes.
//!
//! These types are the *parse* phase's output. They keep every position the compiler may need to
//! point at, and hold strings (durations, templates, expressions) unvalidated: the compiler checks
//! them all in one pass so that an author sees every mistake at once.

mod spanned;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use spanned::{Span, Spanned};

use crate::kinds::{
    approve::ApproveSpec, call::CallSpec, http::HttpSpec, k8s::K8sSpec, prometheus::PrometheusSpec,
    sql::SqlSpec,
};

/// A duration such as `90s`, `5m`, `1h30m` or `250ms`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(transparent)]
pub struct DurationText(pub String);

impl JsonSchema for DurationText {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^([0-9]+(ms|s|m|h|d))+$",
            "description": "A duration: a sequence of <number><unit> with units ms, s, m, h, d, e.g. `90s`, `5m`, `1h30m`."
        })
    }
}

/// A whole runbook file. `S` is the step type; the parser instantiates it with a placeholder to
/// check the header on its own when a step is broken, so that all errors surface in one pass.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, bound(deserialize = "S: Deserialize<'de>"))]
#[schemars(
    title = "runbook",
    description = "A runbook: an operational procedure that `runbook` compiles, plans and executes."
)]
pub struct Runbook<S = Step> {
    /// The runbook's name (used in run listings, locks and audit entries).
    pub runbook: Spanned<String>,
    /// What this procedure is for and when to use it.
    #[serde(default)]
    pub description: Option<String>,
    /// Typed inputs, given with `-p name=value` or `--params-file`.
    #[serde(default)]
    pub params: BTreeMap<String, Spanned<Param>>,
    /// Values resolved at run time and masked in every output.
    #[serde(default)]
    pub secrets: BTreeMap<String, Spanned<SecretSource>>,
    /// Defaults applied to every step that does not say otherwise.
    #[serde(default)]
    pub defaults: Defaults,
    /// Recovery objectives; the plan warns when the worst case exceeds the RTO.
    #[serde(default)]
    pub objectives: Objectives,
    /// How many steps may run at once (default 8).
    #[serde(default)]
    pub max_parallel: Option<Spanned<u32>>,
    /// Deadline for the whole run.
    #[serde(default)]
    pub timeout: Option<Spanned<DurationText>>,
    /// What to do when a step fails: `stop` (default) or `rollback` (run compensations).
    #[serde(default)]
    pub on_failure: OnFailure,
    /// Allow irreversible steps without an `approve` step upstream (e.g. automated triggers).
    #[serde(default)]
    pub unattended: bool,
    /// Name of the lock held while the run executes (a template; default: the runbook name).
    #[serde(default)]
    pub lock: Option<Spanned<String>>,
    /// Default Prometheus server for `prometheus` checks.
    #[serde(default)]
    pub prometheus: Option<Spanned<String>>,
    /// Checks that must pass before any step runs.
    #[serde(default)]
    pub preflight: Vec<Check>,
    /// The procedure.
    pub steps: Vec<S>,
    /// Steps that always run at the end, whatever happened; they see `run.status`.
    #[serde(default)]
    pub finally: Vec<S>,
}

/// A typed input.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Param {
    /// The value's type.
    #[serde(rename = "type")]
    pub ty: Spanned<ParamType>,
    /// Value used when none is given; without one, the param is required.
    #[serde(default)]
    pub default: Option<Spanned<serde_json::Value>>,
    /// What the param means, shown in plans and errors.
    #[serde(default)]
    pub description: Option<String>,
    /// Allowed values of an `enum` param.
    #[serde(default)]
    pub values: Option<Spanned<Vec<String>>>,
    /// Treat the value as a secret: masked in every output.
    #[serde(default)]
    pub secret: bool,
}

/// The type of a param.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    /// Any text.
    String,
    /// A whole number.
    Int,
    /// `true` or `false`.
    Bool,
    /// A duration such as `15m`.
    Duration,
    /// One of `values`.
    Enum,
}

/// Where a secret comes from at run time.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum SecretSource {
    /// An environment variable of the engine's process.
    Env(String),
    /// A file whose contents (trailing newline removed) are the secret.
    File(String),
}

/// Runbook-wide defaults.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// Default per-step timeout (default 10m).
    #[serde(default)]
    pub timeout: Option<Spanned<DurationText>>,
    /// Default retry policy (default: one attempt).
    #[serde(default)]
    pub retry: Option<Spanned<Retry>>,
}

/// Recovery objectives of the procedure.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Objectives {
    /// Recovery time objective: the longest acceptable time to recover.
    #[serde(default)]
    pub rto: Option<Spanned<DurationText>>,
    /// Recovery point objective: the most data loss acceptable, as a time window.
    #[serde(default)]
    pub rpo: Option<Spanned<DurationText>>,
}

/// What the engine does when a step fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Stop scheduling new steps; running ones finish; `finally` runs.
    #[default]
    Stop,
    /// Stop, then run the `compensate` action of every completed step in reverse order.
    Rollback,
}

/// A retry policy.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Total attempts, including the first (default 1).
    #[serde(default)]
    pub attempts: Option<u32>,
    /// Delay before the second attempt (default 1s).
    #[serde(default)]
    pub delay: Option<Spanned<DurationText>>,
    /// How the delay grows: `fixed` or `exponential` (default).
    #[serde(default)]
    pub backoff: Option<Backoff>,
    /// Upper bound of the delay (default 1m).
    #[serde(default)]
    pub max_delay: Option<Spanned<DurationText>>,
    /// Randomise each delay by up to ±20 % so retries from many runs do not align (default true).
    #[serde(default)]
    pub jitter: Option<bool>,
    /// Retry only failures matching this; without it, every failure is retried.
    #[serde(default)]
    pub on: Option<RetryOn>,
}

/// Delay growth between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Backoff {
    /// The same delay every time.
    Fixed,
    /// The delay doubles each attempt, up to `max_delay`.
    Exponential,
}

/// Which failures are transient.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryOn {
    /// Exit codes of a `run` action worth retrying.
    #[serde(default)]
    pub exit_codes: Vec<i32>,
    /// HTTP statuses worth retrying (e.g. 429, 503).
    #[serde(default)]
    pub http_statuses: Vec<u16>,
    /// An expression over `result` that is true when the failure is transient.
    #[serde(default)]
    pub expr: Option<Spanned<String>>,
}

/// One step of the procedure: at most one action, guards before it, gates after it.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Unique id, referenced by `needs` and templates (`steps.<id>`).
    pub id: Spanned<String>,
    /// Human-readable name.
    #[serde(default)]
    pub name: Option<String>,
    /// Steps that must finish (or be skipped) before this one starts.
    #[serde(default)]
    pub needs: Vec<Spanned<String>>,
    /// Guard: an expression; when false the step is skipped and its dependants proceed.
    #[serde(default)]
    pub when: Option<Spanned<String>>,
    /// Guard: checks that must pass before the action; a failure aborts the run.
    #[serde(default)]
    pub require: Vec<Check>,

    /// Action: a shell command (`/bin/sh -c`); interpolated values are shell-quoted.
    #[serde(default)]
    pub run: Option<Spanned<String>>,
    /// Action: an HTTP request.
    #[serde(default)]
    pub http: Option<Spanned<HttpSpec>>,
    /// Action: a Kubernetes operation.
    #[serde(default)]
    pub k8s: Option<Spanned<K8sSpec>>,
    /// Action: SQL statements against `PostgreSQL`.
    #[serde(default)]
    pub sql: Option<Spanned<SqlSpec>>,
    /// Action: wait this long.
    #[serde(default)]
    pub sleep: Option<Spanned<DurationText>>,
    /// Action: a human approval gate.
    #[serde(default)]
    pub approve: Option<Spanned<ApproveSpec>>,
    /// Action: run another runbook as a sub-procedure.
    #[serde(default)]
    pub call: Option<Spanned<CallSpec>>,

    /// Environment variables for `run` (values are templates, not shell-quoted).
    #[serde(default)]
    pub env: BTreeMap<String, Spanned<String>>,
    /// Working directory for `run`.
    #[serde(default)]
    pub cwd: Option<Spanned<String>>,
    /// Text fed to the command's standard input.
    #[serde(default)]
    pub stdin: Option<Spanned<String>>,

    /// Success condition over `result`; replaces the kind's default (exit 0, HTTP 2xx).
    #[serde(default)]
    pub assert: Option<Spanned<String>>,
    /// Verification gates, polled after the action until they pass or time out.
    #[serde(default)]
    pub verify: Vec<Check>,
    /// Limit for one attempt of the action.
    #[serde(default)]
    pub timeout: Option<Spanned<DurationText>>,
    /// Retry policy; replaces `defaults.retry`.
    #[serde(default)]
    pub retry: Option<Spanned<Retry>>,
    /// A point of no return: never retried automatically, needs an approval upstream.
    #[serde(default)]
    pub irreversible: Option<Spanned<bool>>,
    /// Safe to repeat: a resumed run may re-run it when it was in flight at a crash.
    #[serde(default)]
    pub idempotent: Option<bool>,
    /// Whether the action changes anything (default: by kind; `run` is assumed to mutate).
    #[serde(default)]
    pub mutates: Option<bool>,
    /// Keep going when this step fails; its dependants are skipped.
    #[serde(default)]
    pub continue_on_failure: bool,
    /// How to undo the action when the run rolls back.
    #[serde(default)]
    pub compensate: Option<Spanned<Compensation>>,
    /// Named expressions over `result`, exposed as `steps.<id>.outputs.<name>`.
    #[serde(default)]
    pub outputs: BTreeMap<String, Spanned<String>>,
}

/// The undo action of a step.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Compensation {
    /// A shell command.
    #[serde(default)]
    pub run: Option<Spanned<String>>,
    /// An HTTP request.
    #[serde(default)]
    pub http: Option<Spanned<HttpSpec>>,
    /// A Kubernetes operation.
    #[serde(default)]
    pub k8s: Option<Spanned<K8sSpec>>,
    /// SQL statements.
    #[serde(default)]
    pub sql: Option<Spanned<SqlSpec>>,
    /// Environment for `run`.
    #[serde(default)]
    pub env: BTreeMap<String, Spanned<String>>,
    /// Limit for the compensation.
    #[serde(default)]
    pub timeout: Option<Spanned<DurationText>>,
}

/// A read-only check: a guard (`require`, `preflight`) or a verification gate (`verify`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Check {
    /// What the check proves, shown in plans and progress.
    #[serde(default)]
    pub name: Option<String>,
    /// A shell command that must not change anything.
    #[serde(default)]
    pub run: Option<Spanned<String>>,
    /// An HTTP request (GET by default).
    #[serde(default)]
    pub http: Option<Spanned<HttpSpec>>,
    /// A SQL query.
    #[serde(default)]
    pub sql: Option<Spanned<SqlSpec>>,
    /// A Kubernetes read (`get`, `list`, `rollout_status`).
    #[serde(default)]
    pub k8s: Option<Spanned<K8sSpec>>,
    /// A `PromQL` query.
    #[serde(default)]
    pub prometheus: Option<Spanned<PrometheusSpec>>,
    /// An expression over params and upstream results; passes when true.
    #[serde(default)]
    pub expr: Option<Spanned<String>>,
    /// Environment for `run`.
    #[serde(default)]
    pub env: BTreeMap<String, Spanned<String>>,
    /// Pass condition over `result`; default: the kind's success (exit 0, HTTP 2xx, true).
    #[serde(default)]
    pub assert: Option<Spanned<String>>,
    /// Keep polling until the check passes or this much time has passed.
    #[serde(default)]
    pub within: Option<Spanned<DurationText>>,
    /// Pause between polls (default 5s).
    #[serde(default)]
    pub interval: Option<Spanned<DurationText>>,
    /// Limit for one evaluation (default 30s).
    #[serde(default)]
    pub timeout: Option<Spanned<DurationText>>,
}

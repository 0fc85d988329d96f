//! The drill file format as Rust types: what `serde-saphyr` reads and `schemas/drill.schema.json`
//! publishes. Inject, cleanup and RPO steps and the detect/accept checks are literally the
//! runbook format ([`Step`], [`Check`]), so a drill reads like the runbooks it exercises.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::model::{Check, Objectives, SecretSource, Spanned, Step};

/// A drill file: scenarios that break something on purpose, recover with a runbook, and measure.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "drill",
    description = "A disaster-recovery drill: scenarios that inject a fault, recover with a runbook and measure RTO/RPO against objectives (`runbook drill run`)."
)]
pub struct Drill {
    /// The drill's name (history and reports group scenarios by it).
    pub drill: Spanned<String>,
    /// What the drill exercises and why.
    #[serde(default)]
    pub description: Option<String>,
    /// When the drill is due: a 5-field cron expression in UTC (`minute hour day month weekday`),
    /// e.g. `0 10 1 1,4,7,10 *` for quarterly. `runbook drill due` and `drill cronjob` read it.
    #[serde(default)]
    pub schedule: Option<Spanned<String>>,
    /// How approval steps are answered during the drill (never on a terminal).
    #[serde(default)]
    pub approvals: Approvals,
    /// The scenarios, run in order.
    pub scenarios: Vec<Spanned<Scenario>>,
}

/// How approval steps of the exercised runbooks are answered: a drill never prompts.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Approvals {
    /// The name recorded as approver (default: `drill file <path>`); `--approver NAME` on the
    /// command line (a named participant) takes precedence.
    #[serde(default)]
    pub by: Option<Spanned<String>>,
}

/// One scenario: inject a fault, see it, recover with a runbook, accept, measure, clean up.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Unique name within the drill (`--scenario`, history).
    pub name: Spanned<String>,
    /// What the scenario proves.
    #[serde(default)]
    pub description: Option<String>,
    /// When this scenario is due, if not on the drill's `schedule` (e.g. each scenario in its own
    /// month of the quarter); same 5-field cron syntax, UTC.
    #[serde(default)]
    pub schedule: Option<Spanned<String>>,
    /// The runbook that recovers, relative to the drill file.
    pub runbook: Spanned<String>,
    /// Params of the runbook (e.g. pointing at staging or the DR target).
    #[serde(default)]
    pub params: BTreeMap<String, Spanned<serde_json::Value>>,
    /// Secrets the inject, detect, accept, rpo and cleanup steps use (`{{ secrets.x }}`),
    /// resolved at run time and masked like a runbook's.
    #[serde(default)]
    pub secrets: BTreeMap<String, Spanned<SecretSource>>,
    /// Targets; each defaults to the runbook's own `objectives`.
    #[serde(default)]
    pub objectives: Objectives,
    /// Steps (runbook format) that set up the failure, before anything else.
    #[serde(default)]
    pub inject: Vec<Spanned<Step>>,
    /// A gate that must see the failure (poll with `within`); the RTO clock starts when it
    /// passes. If it never does, the scenario is `invalid` and only cleanup runs.
    #[serde(default)]
    pub detect: Option<Spanned<Check>>,
    /// Acceptance checks after recovery (smoke tests, error rate, consistency SQL); the RTO
    /// clock stops when the last one passes.
    #[serde(default)]
    pub accept: Vec<Spanned<Check>>,
    /// How data loss is measured.
    #[serde(default)]
    pub rpo: Option<Spanned<RpoSpec>>,
    /// Steps (runbook format) that always run at the end, whatever happened.
    #[serde(default)]
    pub cleanup: Vec<Spanned<Step>>,
}

/// How a scenario measures its recovery point: an expression evaluated after the acceptance
/// checks, over the results and `outputs` of the scenario's steps (`steps.<id>`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RpoSpec {
    /// Steps (runbook format) that read what the measurement needs, e.g. the newest row after
    /// recovery or the restored backup's timestamp; they run after the acceptance checks.
    #[serde(default)]
    pub steps: Vec<Spanned<Step>>,
    /// An expression: a timestamp (`as: timestamp`; Unix seconds or milliseconds, or RFC 3339
    /// text) or a duration (`as: duration`; seconds, or text such as `90s`).
    pub value: Spanned<String>,
    /// What `value` yields.
    #[serde(rename = "as")]
    pub unit: Spanned<RpoUnit>,
    /// With `as: timestamp`: an expression for the reference instant the loss is measured up to
    /// (e.g. the last write before the fault); default: when the inject steps finished.
    #[serde(default)]
    pub since: Option<Spanned<String>>,
    /// How the measurement reads in reports, e.g. `age of the restored backup`.
    #[serde(default)]
    pub how: Option<String>,
}

/// What an RPO expression yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RpoUnit {
    /// A point in time: RPO = `since` − value.
    Timestamp,
    /// The data loss window itself.
    Duration,
}

//! The measured outcome of one drill scenario: what reports render and `drill history` compares.

use serde::{Deserialize, Serialize};

/// What one scenario of a drill measured, and whether it met its objectives.
///
/// Computed from the scenario run's journal (timestamps of the engine's own events), so a
/// report made later, or after `runbook resume`, gives the same figures as the drill itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioResult {
    /// The drill's name (`drill:` in the drill file).
    pub drill: String,
    /// The drill file, as given on the command line.
    pub drill_file: String,
    /// The scenario's name.
    pub scenario: String,
    /// The runbook file the scenario exercises.
    pub runbook: String,
    /// The run that executed the scenario (inject, detect, runbook, accept, cleanup).
    pub run_id: String,
    /// When the scenario's run started (ms since the Unix epoch).
    pub started_at_ms: i64,
    /// When it finished, if it has.
    pub finished_at_ms: Option<i64>,
    /// What started the RTO clock.
    pub clock: ClockStart,
    /// When the RTO clock started: the fault detected (or, without `detect`, injected).
    pub clock_started_at_ms: Option<i64>,
    /// When the last acceptance check passed: the service is recovered.
    pub recovered_at_ms: Option<i64>,
    /// Recovery time: target, actual (`recovered_at_ms - clock_started_at_ms`), met.
    pub rto: Objective,
    /// Recovery point: target, actual (as the scenario's `rpo` measures it), met.
    pub rpo: Objective,
    /// The acceptance checks, in order.
    pub accept: Vec<AcceptResult>,
    /// Passed, failed, or invalid (the fault was never seen, so nothing was proven).
    pub verdict: Verdict,
    /// Why the verdict is not `passed`, one reason per line, for humans.
    pub reasons: Vec<String>,
    /// How approvals were answered (e.g. `drill file drills/local.yaml`, or a participant).
    pub approvals_by: String,
}

/// What started the RTO clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockStart {
    /// The `detect` gate saw the fault.
    Detected,
    /// The scenario has no `detect`: the clock started when the inject steps finished.
    Injected,
}

/// One objective (RTO or RPO): its target, what was measured, and whether it was met.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Objective {
    /// The target, in milliseconds (`None`: no objective set).
    pub target_ms: Option<u64>,
    /// What was measured, in milliseconds (`None`: not measured, e.g. the run failed first).
    pub actual_ms: Option<u64>,
    /// `actual <= target`; `None` when either is missing.
    pub met: Option<bool>,
    /// How the actual value was measured, for the report (e.g. `age of the restored backup`).
    pub how: String,
}

/// The outcome of one acceptance check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptResult {
    /// The check's name (or its kind and target when unnamed).
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// What it saw (masked).
    pub detail: String,
    /// When it passed or finally failed.
    pub at_ms: Option<i64>,
}

/// A scenario's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Recovered, every acceptance check passed, every objective met.
    Passed,
    /// The fault was real but recovery failed, an acceptance check failed or an objective was
    /// missed.
    Failed,
    /// The injected fault was never detected: the drill proved nothing.
    Invalid,
}

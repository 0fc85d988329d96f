//! Post-incident and drill reports: the model built from a run's journal, approvals and audit
//! log ([`run_report`], [`drill_report`]), and its renderings ([`render`]) as Markdown, a
//! self-contained HTML page with a Gantt timeline, JSON and `JUnit` XML.
//!
//! The headings follow the source handbook's post-incident template (basic facts, trigger,
//! steps with timestamps, RTO/RPO target vs actual), plus who approved what, the bottlenecks and
//! the critical path. Everything shown comes from the journal, where secrets are already masked.

mod build;
mod escape;
mod html;
mod junit;
mod markdown;
pub mod timeline;

use serde::Serialize;

pub use build::{drill_report, run_report};
pub use escape::{html_escape, xml_escape};
pub use timeline::{EntryKind, Outcome, TimelineEntry};

use crate::drill::{AcceptResult, Verdict};
use crate::state::{RunStatus, StateError};

/// Why a report could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// No run has this id (or unique prefix) in the state store.
    #[error("failed to find run {run_id}")]
    RunNotFound {
        /// The id as given.
        run_id: String,
    },
    /// The state store could not be read.
    #[error("failed to read run {run_id} from the state store")]
    State {
        /// The run being reported.
        run_id: String,
        /// What the store said (boxed: it is large and rare).
        #[source]
        source: Box<StateError>,
    },
}

/// The formats a report renders to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    /// Markdown, for a terminal, a wiki or a GitHub issue.
    #[value(name = "md", alias = "markdown")]
    Markdown,
    /// One self-contained HTML page with a Gantt timeline (inline SVG, no external resources).
    Html,
    /// The report model as JSON, for machines.
    Json,
    /// `JUnit` XML, so a CI system shows drill results (or a run's steps) as tests.
    Junit,
}

impl ReportFormat {
    /// The usual file extension of the format.
    #[must_use]
    pub fn extension(self) -> &'static str {
        match self {
            Self::Markdown => "md",
            Self::Html => "html",
            Self::Json => "json",
            Self::Junit => "xml",
        }
    }
}

/// Whether the report is about an incident run or a drill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportKind {
    /// A real run of a runbook (`runbook report RUN_ID`).
    Incident,
    /// The scenarios of a drill.
    Drill,
}

/// A whole report: one section per run (one for an incident, one per scenario for a drill).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Incident or drill.
    pub kind: ReportKind,
    /// The heading.
    pub title: String,
    /// The drill, for a drill report (or the report of one scenario's run).
    pub drill: Option<DrillFacts>,
    /// One section per run.
    pub sections: Vec<Section>,
}

impl Report {
    /// Whether everything reported went well: every run succeeded (or every scenario passed)
    /// and no objective was missed.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.sections.iter().all(|s| s.passed)
    }
}

/// The drill a report belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DrillFacts {
    /// The drill's name.
    pub name: String,
    /// The drill file.
    pub file: String,
    /// Scenarios reported.
    pub scenarios: usize,
    /// Of which passed.
    pub passed: usize,
    /// Of which invalid (the fault was never detected).
    pub invalid: usize,
    /// Scenarios that did not run because their `requires` failed here (not counted above).
    pub skipped: Vec<SkippedScenario>,
}

/// A drill scenario that did not run: what it needed and did not find.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkippedScenario {
    /// The scenario.
    pub scenario: String,
    /// The failed `requires` check and what it saw.
    pub reason: String,
}

/// The report of one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Section {
    /// The runbook's name, or the scenario's for a drill.
    pub name: String,
    /// Basic facts: who, where, when, how long, with which params.
    pub facts: Facts,
    /// How the run started, one line each.
    pub trigger: Vec<String>,
    /// The steps, in order of start.
    pub timeline: Vec<TimelineEntry>,
    /// RTO and RPO, target against actual.
    pub objectives: Vec<ObjectiveRow>,
    /// A drill's acceptance checks.
    pub accept: Vec<AcceptResult>,
    /// Every approval decision.
    pub approvals: Vec<ApprovalRow>,
    /// The slowest steps.
    pub bottlenecks: Vec<Bottleneck>,
    /// The chain of steps that decided the end time, first first.
    pub critical_path: Vec<String>,
    /// The drill's verdict for this scenario.
    pub verdict: Option<Verdict>,
    /// When the RTO clock started: the fault detected (drill) or the run started (incident).
    pub clock_started_at_ms: Option<i64>,
    /// Whether this run went well (succeeded, or the scenario passed, and no objective missed).
    pub passed: bool,
    /// Why it did not, and caveats about the figures (one line each).
    pub notes: Vec<String>,
}

/// Basic facts of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Facts {
    /// The runbook's name.
    pub runbook: String,
    /// The runbook file as given when the run started.
    pub file: String,
    /// The run id.
    pub run_id: String,
    /// The run's status.
    pub status: RunStatus,
    /// Who started it.
    pub user: String,
    /// Where it ran.
    pub host: String,
    /// When it started (ms since the Unix epoch).
    pub started_at_ms: i64,
    /// When it ended, if it has.
    pub finished_at_ms: Option<i64>,
    /// How long it took, if it ended.
    pub duration_ms: Option<u64>,
    /// Params as journaled (secret params already `***`).
    pub params: serde_json::Value,
    /// The run this one continues, if any.
    pub parent_run: Option<String>,
    /// The drill's name, for a drill.
    pub drill: Option<String>,
    /// The scenario's name, for a drill.
    pub scenario: Option<String>,
}

/// One objective: target against actual.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObjectiveRow {
    /// `RTO` or `RPO`.
    pub name: String,
    /// The target, if one is known.
    pub target_ms: Option<u64>,
    /// What was measured, if anything.
    pub actual_ms: Option<u64>,
    /// `actual <= target`, when both are known.
    pub met: Option<bool>,
    /// How the actual value was measured, or why it is missing.
    pub how: String,
}

/// One approval decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApprovalRow {
    /// The gated step.
    pub step: String,
    /// Who decided.
    pub approver: String,
    /// `true` approved, `false` denied.
    pub approved: bool,
    /// How: `tty`, `--yes`, `cli`, `drill` (answered by a drill), `serve` (a trigger in auto mode), …
    pub via: String,
    /// The justification given, if any.
    pub comment: Option<String>,
    /// When (ms since the Unix epoch).
    pub at_ms: i64,
    /// The audit log entry that records it, when there is one.
    pub audit_seq: Option<i64>,
}

/// A slow step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bottleneck {
    /// The step.
    pub step: String,
    /// Its duration.
    pub duration_ms: u64,
    /// Its share of the run's duration, in percent.
    pub share_pct: f64,
    /// Of which waiting (approvals, back-off, gate polling).
    pub waiting_ms: u64,
}

/// Render a report in a format.
#[must_use]
pub fn render(report: &Report, format: ReportFormat) -> String {
    // Reports are printed to terminals as often as they are opened elsewhere: step ids, params
    // and output in them must not drive the terminal.
    match format {
        ReportFormat::Markdown => crate::terminal::escape(&markdown::render(report)),
        ReportFormat::Html => crate::terminal::escape(&html::render(report)),
        ReportFormat::Json => {
            let mut s = serde_json::to_string_pretty(report).unwrap_or_default();
            s.push('\n');
            crate::terminal::escape_json(&s)
        }
        ReportFormat::Junit => crate::terminal::escape(&junit::render(report)),
    }
}

/// `1.25s`, `3m05s`, `250ms`: durations as a reader wants them.
#[must_use]
pub fn fmt_duration(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    if ms < 60_000 {
        let tenths = ms / 100;
        return format!("{}.{}s", tenths / 10, tenths % 10);
    }
    let secs = ms / 1000;
    if secs < 3600 {
        return format!("{}m{:02}s", secs / 60, secs % 60);
    }
    format!("{}h{:02}m{:02}s", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// A scenario's verdict as shown.
fn verdict_str(v: Verdict) -> &'static str {
    match v {
        Verdict::Passed => "passed",
        Verdict::Failed => "failed",
        Verdict::Invalid => "invalid (the fault was never detected)",
    }
}

/// ✅ / ❌ / ➖ for a met flag.
fn mark(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "✅",
        Some(false) => "❌",
        None => "➖",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(fmt_duration(250), "250ms");
        assert_eq!(fmt_duration(1250), "1.2s");
        assert_eq!(fmt_duration(185_000), "3m05s");
        assert_eq!(fmt_duration(3_723_000), "1h02m03s");
    }
}

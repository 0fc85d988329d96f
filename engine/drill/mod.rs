//! Disaster-recovery drills: drill files, running their scenarios, and what they measured.
//!
//! A scenario is composed into one synthetic runbook ([`compose`]) executed by the ordinary
//! engine, so it is journaled, audited and resumable like any run; its result is measured from
//! the journal ([`measure`]) and recorded as a `drill.result` event on the run.

pub mod compose;
pub mod cron;
pub mod cronjob;
pub mod due;
pub mod history;
pub mod measure;
pub mod model;
pub mod result;

pub use result::{AcceptResult, ClockStart, Objective, ScenarioResult, Verdict};

use crate::state::{AuditInput, EventInput, StateError, Store};

/// The journal event kind that records a scenario's measured result.
pub const RESULT_EVENT: &str = "drill.result";

/// Why drill results could not be read or recorded.
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    /// The state store failed.
    #[error("failed to read drill results from the state store")]
    State(#[source] Box<StateError>),
    /// A recorded result could not be decoded (written by an incompatible version).
    #[error("failed to decode the drill result recorded on run {run_id}")]
    Decode {
        /// The run.
        run_id: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A scenario run has no recorded result and its drill file cannot be read to measure it.
    #[error("failed to measure run {run_id}: drill file {file} is unusable ({why})")]
    DrillFile {
        /// The run.
        run_id: String,
        /// The drill file.
        file: String,
        /// The first problem found.
        why: String,
    },
    /// Recording a result failed.
    #[error("failed to record the result of run {run_id}")]
    Record {
        /// The run.
        run_id: String,
        /// Why.
        #[source]
        source: Box<StateError>,
    },
}

/// The measured result of a run, or `None` when the run is not a drill scenario.
///
/// The result recorded when the scenario finished is used unless the run was resumed since;
/// otherwise (interrupted or resumed runs) it is measured again from the journal, with the
/// objectives of the drill file.
///
/// # Errors
/// The store failed, or the result can neither be read nor measured.
pub fn scenario_result(
    store: &dyn Store,
    run_id: &str,
) -> Result<Option<ScenarioResult>, DrillError> {
    let Some(run) = store
        .run(run_id)
        .map_err(|e| DrillError::State(Box::new(e)))?
    else {
        return Ok(None);
    };
    let Some((drill_file, scenario)) = compose::scenario_ref(&run.file) else {
        return Ok(None);
    };
    let events = store
        .events(&run.id)
        .map_err(|e| DrillError::State(Box::new(e)))?;
    let recorded = events
        .iter()
        .rposition(|e| e.kind == RESULT_EVENT)
        .filter(|&i| events[i..].iter().all(|e| e.kind != "resumed"));
    if let Some(i) = recorded {
        return serde_json::from_value(events[i].data.clone())
            .map(Some)
            .map_err(|source| DrillError::Decode {
                run_id: run.id.clone(),
                source,
            });
    }
    let fail = |why: String| DrillError::DrillFile {
        run_id: run.id.clone(),
        file: drill_file.to_owned(),
        why,
    };
    let loaded = compose::load(std::path::Path::new(drill_file))
        .map_err(|(f, d)| fail(d.first().map(|d| d.short(&f)).unwrap_or_default()))?;
    let index = compose::scenario_index(&loaded, scenario)
        .ok_or_else(|| fail(format!("it has no scenario `{scenario}` any more")))?;
    let approver = approver_of(&events);
    let composed = compose::compose(&loaded, index, approver.as_deref())
        .map_err(|d| fail(d.first().map(|d| d.short(&loaded.file)).unwrap_or_default()))?;
    Ok(Some(measure::measure(&composed.meta, &run, &events)))
}

/// Who answered approvals in a run, as recorded (for results measured again later).
fn approver_of(events: &[crate::state::EventRecord]) -> Option<String> {
    events
        .iter()
        .find(|e| e.kind == "approval")
        .and_then(|e| e.data.get("approver"))
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
}

/// Every recorded scenario result, oldest first; only those of drill `drill` when given.
///
/// # Errors
/// The store failed or a result cannot be read.
pub fn drill_results(
    store: &dyn Store,
    drill: Option<&str>,
) -> Result<Vec<ScenarioResult>, DrillError> {
    let runs = store
        .runs(usize::MAX >> 1)
        .map_err(|e| DrillError::State(Box::new(e)))?;
    let mut out = Vec::new();
    for run in runs.iter().rev() {
        let Some((_, _)) = compose::scenario_ref(&run.file) else {
            continue;
        };
        // Unmeasurable runs (drill file gone, never recorded) are left out of the history.
        let Ok(Some(r)) = scenario_result(store, &run.id) else {
            continue;
        };
        if drill.is_none_or(|d| d == r.drill) {
            out.push(r);
        }
    }
    out.sort_by_key(|r| r.started_at_ms);
    Ok(out)
}

/// Record a scenario's measured result on its run (journal and audit log).
///
/// # Errors
/// The store refused the write.
pub fn record_result(store: &dyn Store, result: &ScenarioResult) -> Result<(), DrillError> {
    let verdict = match result.verdict {
        Verdict::Passed => "passed",
        Verdict::Failed => "failed",
        Verdict::Invalid => "invalid",
    };
    let audit = AuditInput {
        user: crate::exec::current_user(),
        host: crate::exec::current_host(),
        run_id: Some(result.run_id.clone()),
        step: None,
        action: RESULT_EVENT.to_owned(),
        target: Some(format!("{}#{}", result.drill, result.scenario)),
        outcome: verdict.to_owned(),
        detail: serde_json::json!({
            "rto_ms": result.rto.actual_ms,
            "rpo_ms": result.rpo.actual_ms,
            "reasons": result.reasons,
        }),
    };
    let event = EventInput {
        step: None,
        kind: RESULT_EVENT.to_owned(),
        attempt: None,
        data: serde_json::to_value(result).unwrap_or_default(),
    };
    store
        .record(&result.run_id, &event, Some(&audit))
        .map(|_| ())
        .map_err(|source| DrillError::Record {
            run_id: result.run_id.clone(),
            source: Box::new(source),
        })
}

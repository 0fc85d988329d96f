//! Building a [`Report`] from the state store: the run, its journal, approvals and audit log,
//! and (for a drill) the scenario's measured result.

use std::collections::HashSet;
use std::path::Path;

use super::timeline::{self, Dag, EntryKind};
use super::{
    ApprovalRow, Bottleneck, DrillFacts, Facts, ObjectiveRow, Report, ReportError, ReportKind,
    Section,
};
use crate::drill::{ScenarioResult, Verdict};
use crate::state::{EventRecord, RunRecord, RunStatus, Store};

/// How many slow steps a report names.
const BOTTLENECKS: usize = 3;

/// The report of one run: an incident run, or (with `drill`) the run of one drill scenario.
///
/// # Errors
/// [`ReportError::RunNotFound`] for an unknown id, [`ReportError::State`] when the store fails.
pub fn run_report(
    store: &dyn Store,
    run_id: &str,
    drill: Option<&ScenarioResult>,
) -> Result<Report, ReportError> {
    let run = find(store, run_id)?;
    let section = section(store, &run, drill)?;
    let (kind, title, facts) = match drill {
        Some(d) => (
            ReportKind::Drill,
            format!("Drill report: {} / {}", d.drill, d.scenario),
            Some(drill_facts(
                &d.drill,
                &d.drill_file,
                std::slice::from_ref(d),
            )),
        ),
        None => (
            ReportKind::Incident,
            format!("Run report: {} ({})", run.runbook, day(run.started_at_ms)),
            None,
        ),
    };
    Ok(Report {
        kind,
        title,
        drill: facts,
        sections: vec![section],
    })
}

/// The report of a drill: one section per scenario, each with its run's timeline.
///
/// # Errors
/// [`ReportError::RunNotFound`] when a scenario's run is not in the store,
/// [`ReportError::State`] when the store fails.
pub fn drill_report(
    store: &dyn Store,
    drill: &str,
    results: &[ScenarioResult],
    skipped: &[(String, String)],
) -> Result<Report, ReportError> {
    let mut sections = Vec::with_capacity(results.len());
    for r in results {
        let run = find(store, &r.run_id)?;
        sections.push(section(store, &run, Some(r))?);
    }
    let file = results
        .first()
        .map(|r| r.drill_file.clone())
        .unwrap_or_default();
    let when = results
        .iter()
        .map(|r| r.started_at_ms)
        .min()
        .map(|ms| format!(" ({})", day(ms)))
        .unwrap_or_default();
    Ok(Report {
        kind: ReportKind::Drill,
        title: format!("Drill report: {drill}{when}"),
        drill: Some(DrillFacts {
            skipped: skipped
                .iter()
                .map(|(scenario, reason)| super::SkippedScenario {
                    scenario: scenario.clone(),
                    reason: reason.clone(),
                })
                .collect(),
            ..drill_facts(drill, &file, results)
        }),
        sections,
    })
}

fn day(ms: i64) -> String {
    crate::clock::rfc3339(ms).chars().take(10).collect()
}

fn drill_facts(name: &str, file: &str, results: &[ScenarioResult]) -> DrillFacts {
    DrillFacts {
        name: name.to_owned(),
        file: file.to_owned(),
        scenarios: results.len(),
        passed: results
            .iter()
            .filter(|r| r.verdict == Verdict::Passed)
            .count(),
        invalid: results
            .iter()
            .filter(|r| r.verdict == Verdict::Invalid)
            .count(),
        skipped: Vec::new(),
    }
}

fn find(store: &dyn Store, run_id: &str) -> Result<RunRecord, ReportError> {
    store
        .run(run_id)
        .map_err(|source| ReportError::State {
            run_id: run_id.to_owned(),
            source: Box::new(source),
        })?
        .ok_or_else(|| ReportError::RunNotFound {
            run_id: run_id.to_owned(),
        })
}

fn state_err(run: &RunRecord) -> impl Fn(crate::state::StateError) -> ReportError + '_ {
    move |source| ReportError::State {
        run_id: run.id.clone(),
        source: Box::new(source),
    }
}

/// The runbook as it was run, when its file still exists unchanged.
enum Source {
    Compiled(Box<crate::compile::Compiled>),
    Missing(String),
}

fn source(run: &RunRecord, events: &[EventRecord]) -> Source {
    if let Some((drill_file, scenario)) = crate::drill::compose::scenario_ref(&run.file) {
        return drill_source(run, events, drill_file, scenario);
    }
    let path = Path::new(&run.file);
    if !path.exists() {
        return Source::Missing(format!(
            "the runbook file {} is gone: objectives and dependencies are unknown",
            run.file
        ));
    }
    match crate::compile::compile_path(path) {
        Ok(c) if c.hash == run.runbook_hash => Source::Compiled(Box::new(c)),
        Ok(_) => Source::Missing(format!(
            "{} changed since the run: its objectives and dependencies are not used",
            run.file
        )),
        Err(_) => Source::Missing(format!(
            "{} no longer compiles: objectives and dependencies are unknown",
            run.file
        )),
    }
}

/// A drill scenario's run: the synthetic runbook composed from the drill file, as it was run.
fn drill_source(
    run: &RunRecord,
    events: &[EventRecord],
    drill_file: &str,
    scenario: &str,
) -> Source {
    let unknown = |why: &str| {
        Source::Missing(format!(
            "scenario `{scenario}` of {drill_file} {why}: the timeline order stands in for its dependencies"
        ))
    };
    let Ok(loaded) = crate::drill::compose::load(Path::new(drill_file)) else {
        return unknown("cannot be read any more");
    };
    let Some(index) = crate::drill::compose::scenario_index(&loaded, scenario) else {
        return unknown("is gone");
    };
    // Approvals in a drill are recorded under the participant who answered them.
    let approver = events
        .iter()
        .find(|e| e.kind == "approval")
        .and_then(|e| e.data.get("approver"))
        .and_then(serde_json::Value::as_str);
    match crate::drill::compose::compose(&loaded, index, approver) {
        Ok(c) if c.compiled.hash == run.runbook_hash => Source::Compiled(Box::new(c.compiled)),
        Ok(_) => unknown("changed since the run"),
        Err(_) => unknown("no longer composes"),
    }
}

fn dag(c: &crate::compile::Compiled) -> Dag {
    let mut d = Dag::default();
    for s in &c.steps {
        let needs = s.needs.iter().map(|&i| c.steps[i].id.clone()).collect();
        d.needs.insert(s.id.clone(), needs);
        if !s.is_finally {
            d.main.insert(s.id.clone());
        }
    }
    d
}

fn section(
    store: &dyn Store,
    run: &RunRecord,
    drill: Option<&ScenarioResult>,
) -> Result<Section, ReportError> {
    let events = store.events(&run.id).map_err(state_err(run))?;
    let mut notes = Vec::new();
    let compiled = match source(run, &events) {
        Source::Compiled(c) => Some(c),
        Source::Missing(why) => {
            notes.push(why);
            None
        }
    };
    let mut entries = timeline::build(&events);
    let dag = compiled.as_deref().map(dag);
    let critical_path = timeline::mark_critical_path(&mut entries, dag.as_ref());
    let duration_ms = run
        .finished_at_ms
        .map(|f| u64::try_from(f - run.started_at_ms).unwrap_or(0));
    let objectives = match drill {
        Some(d) => vec![
            objective("RTO", &d.rto, "recovery measured by the drill"),
            objective("RPO", &d.rpo, "not measured by this scenario"),
        ],
        None => incident_objectives(compiled.as_deref(), duration_ms),
    };
    let approvals = approvals(store, run, &events)?;
    let bottlenecks = bottlenecks(&entries, duration_ms);
    let trigger = trigger(run, &events, drill);
    let objectives_met = objectives.iter().all(|o| o.met != Some(false));
    let passed = match drill {
        Some(d) => d.verdict == Verdict::Passed,
        None => run.status == RunStatus::Succeeded && objectives_met,
    };
    if let Some(d) = drill {
        notes.extend(d.reasons.iter().cloned());
    } else {
        if run.status != RunStatus::Succeeded {
            notes.push(format!("the run ended {}", run.status));
            let undone: Vec<&str> = entries
                .iter()
                .filter(|e| e.outcome == timeline::Outcome::CompensationFailed)
                .map(|e| e.step.as_str())
                .collect();
            if !undone.is_empty() {
                notes.push(format!(
                    "left un-undone (compensation failed): {}",
                    undone.join(", ")
                ));
            }
        }
        for o in objectives.iter().filter(|o| o.met == Some(false)) {
            notes.push(format!("{} objective missed", o.name));
        }
    }
    Ok(Section {
        name: drill.map_or_else(|| run.runbook.clone(), |d| d.scenario.clone()),
        facts: Facts {
            runbook: run.runbook.clone(),
            file: run.file.clone(),
            run_id: run.id.clone(),
            status: run.status,
            user: run.user.clone(),
            host: run.host.clone(),
            started_at_ms: run.started_at_ms,
            finished_at_ms: run.finished_at_ms,
            duration_ms,
            params: run.params.clone(),
            parent_run: run.parent_run.clone(),
            drill: drill.map(|d| d.drill.clone()),
            scenario: drill.map(|d| d.scenario.clone()),
        },
        trigger,
        timeline: entries,
        objectives,
        accept: drill.map(|d| d.accept.clone()).unwrap_or_default(),
        approvals,
        bottlenecks,
        critical_path,
        verdict: drill.map(|d| d.verdict),
        clock_started_at_ms: match drill {
            Some(d) => d.clock_started_at_ms,
            None => Some(run.started_at_ms),
        },
        passed,
        notes,
    })
}

fn objective(name: &str, o: &crate::drill::Objective, missing: &str) -> ObjectiveRow {
    let how = if o.how.is_empty() {
        missing.to_owned()
    } else {
        o.how.clone()
    };
    ObjectiveRow {
        name: name.to_owned(),
        target_ms: o.target_ms,
        actual_ms: o.actual_ms,
        met: o.met,
        how,
    }
}

fn incident_objectives(
    compiled: Option<&crate::compile::Compiled>,
    duration_ms: Option<u64>,
) -> Vec<ObjectiveRow> {
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let (rto, rpo, known) = match compiled {
        Some(c) => (c.rto.map(ms), c.rpo.map(ms), true),
        None => (None, None, false),
    };
    let rto_how = match (known, rto) {
        (false, _) => "the run's duration; target unknown (runbook not available as run)",
        (true, None) => "the run's duration; the runbook sets no `objectives.rto`",
        (true, Some(_)) => "the run's duration, start to end",
    };
    vec![
        ObjectiveRow {
            name: "RTO".to_owned(),
            target_ms: rto,
            actual_ms: duration_ms,
            met: rto.zip(duration_ms).map(|(t, a)| a <= t),
            how: rto_how.to_owned(),
        },
        ObjectiveRow {
            name: "RPO".to_owned(),
            target_ms: rpo,
            actual_ms: None,
            met: None,
            how: "not measured: an incident run does not know how much data was lost".to_owned(),
        },
    ]
}

fn trigger(run: &RunRecord, events: &[EventRecord], drill: Option<&ScenarioResult>) -> Vec<String> {
    let mut lines = vec![format!(
        "started by {}@{} at {} running {}",
        run.user,
        run.host,
        crate::clock::rfc3339(run.started_at_ms),
        run.file
    )];
    if let Some(obj) = run.params.as_object()
        && !obj.is_empty()
    {
        let params: Vec<String> = obj
            .iter()
            .map(|(k, v)| format!("{k}={}", scalar(v)))
            .collect();
        lines.push(format!("params: {}", params.join(", ")));
    }
    if let Some(p) = &run.parent_run {
        lines.push(format!("continues run {p}"));
    }
    for e in events.iter().filter(|e| e.kind == "resumed") {
        lines.push(format!("resumed at {}", crate::clock::rfc3339(e.at_ms)));
    }
    if let Some(d) = drill {
        lines.push(format!(
            "drill {} ({}), scenario {} exercising {}",
            d.drill, d.drill_file, d.scenario, d.runbook
        ));
        let clock = match (d.clock, d.clock_started_at_ms) {
            (crate::drill::ClockStart::Detected, Some(at)) => format!(
                "the injected fault was detected at {}: the RTO clock started then",
                crate::clock::rfc3339(at)
            ),
            (crate::drill::ClockStart::Injected, Some(at)) => format!(
                "the fault was injected (no `detect`): the RTO clock started at {}",
                crate::clock::rfc3339(at)
            ),
            (_, None) => {
                "the injected fault was never detected: the RTO clock never started".to_owned()
            }
        };
        lines.push(clock);
        if let Some(at) = d.recovered_at_ms {
            lines.push(format!(
                "recovered (last acceptance check passed) at {}",
                crate::clock::rfc3339(at)
            ));
        }
        lines.push(format!("approvals answered by {}", d.approvals_by));
    }
    lines
}

/// A param value as written on a command line.
pub(super) fn scalar(v: &serde_json::Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

fn approvals(
    store: &dyn Store,
    run: &RunRecord,
    events: &[EventRecord],
) -> Result<Vec<ApprovalRow>, ReportError> {
    let mut rows: Vec<ApprovalRow> = Vec::new();
    let mut steps: Vec<String> = Vec::new();
    for e in events {
        let Some(step) = &e.step else { continue };
        if (e.kind == "approval_waiting" || e.kind == "approval") && !steps.contains(step) {
            steps.push(step.clone());
        }
        if e.kind == "approval" {
            let d = &e.data;
            let via = d["via"].as_str().unwrap_or_default().to_owned();
            rows.push(ApprovalRow {
                step: step.clone(),
                approver: d["approver"].as_str().unwrap_or_default().to_owned(),
                approved: d["decision"].as_str() == Some("approved"),
                via,
                comment: None,
                at_ms: e.at_ms,
                audit_seq: None,
            });
        }
    }
    let same = |r: &ApprovalRow, step: &str, who: &str, approved: bool, via: &str| {
        r.step == step && r.approver == who && r.approved == approved && r.via == via
    };
    for step in &steps {
        for a in store.approvals(&run.id, step).map_err(state_err(run))? {
            match rows
                .iter_mut()
                .find(|r| same(r, &a.step, &a.approver, a.decision, &a.via))
            {
                Some(r) => {
                    if r.comment.is_none() {
                        r.comment.clone_from(&a.comment);
                    }
                }
                None => rows.push(ApprovalRow {
                    step: a.step.clone(),
                    approver: a.approver.clone(),
                    approved: a.decision,
                    via: a.via.clone(),
                    comment: a.comment.clone(),
                    at_ms: a.at_ms,
                    audit_seq: None,
                }),
            }
        }
    }
    let audit = store
        .audit_entries(Some(&run.id), None)
        .map_err(state_err(run))?;
    let mut used: HashSet<i64> = HashSet::new();
    for entry in audit.iter().filter(|a| a.action == "approval") {
        let step = entry.step.clone().unwrap_or_default();
        let who = entry.target.clone().unwrap_or_else(|| entry.user.clone());
        let approved = entry.outcome == "approved";
        let via = entry.detail["via"].as_str().unwrap_or_default().to_owned();
        match rows
            .iter_mut()
            .find(|r| r.audit_seq.is_none() && same(r, &step, &who, approved, &via))
        {
            Some(r) => r.audit_seq = Some(entry.seq),
            None if used.insert(entry.seq) => rows.push(ApprovalRow {
                step,
                approver: who,
                approved,
                via,
                comment: entry.detail["comment"].as_str().map(str::to_owned),
                at_ms: entry.at_ms,
                audit_seq: Some(entry.seq),
            }),
            None => {}
        }
    }
    rows.sort_by_key(|r| r.at_ms);
    Ok(rows)
}

fn bottlenecks(entries: &[timeline::TimelineEntry], total: Option<u64>) -> Vec<Bottleneck> {
    let mut steps: Vec<&timeline::TimelineEntry> = entries
        .iter()
        .filter(|e| {
            e.parent.is_none()
                && !matches!(e.kind, EntryKind::Checks | EntryKind::Gap)
                && e.duration_ms > 0
        })
        .collect();
    steps.sort_by(|a, b| b.duration_ms.cmp(&a.duration_ms).then(a.step.cmp(&b.step)));
    let total = total
        .filter(|&t| t > 0)
        .unwrap_or_else(|| steps.iter().map(|e| e.duration_ms).sum::<u64>().max(1));
    let mut seen: HashSet<&str> = HashSet::new();
    steps
        .into_iter()
        .filter(|e| seen.insert(e.step.as_str()))
        .take(BOTTLENECKS)
        .map(|e| {
            #[expect(
                clippy::cast_precision_loss,
                reason = "a percentage for humans; durations are far below 2^52 ms"
            )]
            let share = e.duration_ms as f64 * 100.0 / total as f64;
            Bottleneck {
                step: match e.kind {
                    EntryKind::Compensation => format!("{} (compensation)", e.step),
                    _ => e.label(),
                },
                duration_ms: e.duration_ms,
                share_pct: (share * 10.0).round() / 10.0,
                waiting_ms: e.waiting_ms(),
            }
        })
        .collect()
}

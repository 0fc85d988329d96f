//! Which scenarios are due: never run, or a scheduled time (the scenario's cron `schedule`, else
//! the drill's) has passed since their last run.

use serde::Serialize;

use super::ScenarioResult;
use super::compose::LoadedDrill;
use super::cron::{CronError, Schedule};

/// Whether one scenario is due, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DueRow {
    /// The drill's name.
    pub drill: String,
    /// The drill file.
    pub file: String,
    /// The scenario.
    pub scenario: String,
    /// The scenario's schedule (its own, else the drill's), as written.
    pub schedule: Option<String>,
    /// Whether it is due now.
    pub due: bool,
    /// Why: never run, a scheduled time passed since the last run, next due at, no schedule.
    pub reason: String,
    /// The scenario's last run (at or before the instant asked about).
    pub last_run: Option<String>,
    /// When that run started (RFC 3339).
    pub last_started_at: Option<String>,
    /// The scheduled time it is due since, or will next be due at (RFC 3339).
    pub scheduled_at: Option<String>,
}

/// The scenarios of `drill` as of `now_ms`, given every recorded result.
///
/// # Errors
/// A schedule does not parse (validation reports it with its position).
pub fn due(
    drill: &LoadedDrill,
    results: &[ScenarioResult],
    now_ms: i64,
) -> Result<Vec<DueRow>, CronError> {
    let name = &drill.drill.drill.value;
    let mut rows = Vec::new();
    for s in &drill.drill.scenarios {
        let scenario = &s.value.name.value;
        let schedule = super::compose::schedule_of(&drill.drill, &s.value)
            .map(|s| Schedule::parse(&s.value).map(|p| (s.value.clone(), p)))
            .transpose()?;
        // Runs after the instant asked about do not count.
        let last = results
            .iter()
            .filter(|r| &r.drill == name && &r.scenario == scenario)
            .filter(|r| r.started_at_ms <= now_ms)
            .max_by_key(|r| r.started_at_ms);
        let (due, reason, scheduled) = match (last, &schedule) {
            (None, _) => (true, "never run".to_owned(), None),
            (Some(_), None) => (false, "no schedule".to_owned(), None),
            (Some(r), Some((_, p))) => match p.next_after(r.started_at_ms) {
                Some(n) if n <= now_ms => (
                    true,
                    format!(
                        "scheduled at {} and not run since",
                        crate::clock::rfc3339(n)
                    ),
                    Some(n),
                ),
                Some(n) => (
                    false,
                    format!("next due at {}", crate::clock::rfc3339(n)),
                    Some(n),
                ),
                None => (false, "the schedule never matches".to_owned(), None),
            },
        };
        rows.push(DueRow {
            drill: name.clone(),
            file: drill.path.display().to_string(),
            scenario: scenario.clone(),
            schedule: schedule.as_ref().map(|(t, _)| t.clone()),
            due,
            reason,
            last_run: last.map(|r| r.run_id.clone()),
            last_started_at: last.map(|r| crate::clock::rfc3339(r.started_at_ms)),
            scheduled_at: scheduled.map(crate::clock::rfc3339),
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostic::SourceFile;
    use crate::drill::{ClockStart, Objective, Verdict};

    fn drill(schedule: &str) -> LoadedDrill {
        let text = format!(
            "drill: q\n{schedule}scenarios:\n  - {{name: a, runbook: r.yaml}}\n  - {{name: b, runbook: r.yaml}}\n"
        );
        super::super::compose::from_source(
            SourceFile::new("q.yaml", text),
            std::path::Path::new("q.yaml"),
        )
        .map_err(|(_, d)| d)
        .unwrap()
    }

    fn ran(scenario: &str, at: &str) -> ScenarioResult {
        let none = Objective {
            target_ms: None,
            actual_ms: None,
            met: None,
            how: String::new(),
        };
        ScenarioResult {
            drill: "q".to_owned(),
            drill_file: "q.yaml".to_owned(),
            scenario: scenario.to_owned(),
            runbook: "r.yaml".to_owned(),
            run_id: format!("run-{scenario}-{at}"),
            started_at_ms: crate::drill::measure::instant_ms(&serde_json::json!(at)).unwrap(),
            finished_at_ms: None,
            clock: ClockStart::Injected,
            clock_started_at_ms: None,
            recovered_at_ms: None,
            rto: none.clone(),
            rpo: none,
            accept: Vec::new(),
            verdict: Verdict::Passed,
            reasons: Vec::new(),
            approvals_by: String::new(),
        }
    }

    fn at(t: &str) -> i64 {
        crate::drill::measure::instant_ms(&serde_json::json!(t)).unwrap()
    }

    #[test]
    fn due_when_never_run_or_a_scheduled_time_passed_since_the_last_run() {
        // Quarterly: the 15th of Jan/Apr/Jul/Oct at 10:00 UTC.
        let d = drill("schedule: \"0 10 15 1,4,7,10 *\"\n");
        let results = [
            ran("a", "2026-10-15T10:20:00Z"),
            ran("a", "2027-02-01T00:00:00Z"), // after `now`: ignored
        ];
        let rows = due(&d, &results, at("2026-12-31T00:00:00Z")).unwrap();
        assert_eq!(rows.len(), 2);
        assert!(!rows[0].due);
        assert_eq!(rows[0].reason, "next due at 2027-01-15T10:00:00.000Z");
        assert_eq!(
            rows[0].last_run.as_deref(),
            Some("run-a-2026-10-15T10:20:00Z")
        );
        assert!(rows[1].due);
        assert_eq!(rows[1].reason, "never run");

        let rows = due(&d, &results[..1], at("2027-01-15T10:00:00Z")).unwrap();
        assert!(rows[0].due);
        assert_eq!(
            rows[0].reason,
            "scheduled at 2027-01-15T10:00:00.000Z and not run since"
        );
        // One minute before the scheduled time: not yet.
        let rows = due(&d, &results[..1], at("2027-01-15T09:59:00Z")).unwrap();
        assert!(!rows[0].due);
    }

    #[test]
    fn a_scenario_schedule_overrides_the_drill_schedule() {
        let text = "drill: q\nschedule: \"0 10 15 1,4,7,10 *\"\nscenarios:\n  - {name: a, runbook: r.yaml}\n  - {name: b, runbook: r.yaml, schedule: \"0 10 15 2,5,8,11 *\"}\n";
        let d = super::super::compose::from_source(
            SourceFile::new("q.yaml", text),
            std::path::Path::new("q.yaml"),
        )
        .map_err(|(_, d)| d)
        .unwrap();
        let results = [
            ran("a", "2026-10-20T00:00:00Z"),
            ran("b", "2026-10-20T00:00:00Z"),
        ];
        let rows = due(&d, &results, at("2026-11-20T00:00:00Z")).unwrap();
        assert!(!rows[0].due, "a is next due in January");
        assert!(rows[1].due, "b was due on November 15th");
        assert_eq!(rows[1].schedule.as_deref(), Some("0 10 15 2,5,8,11 *"));
    }

    #[test]
    fn without_a_schedule_only_never_run_scenarios_are_due() {
        let d = drill("");
        let rows = due(
            &d,
            &[ran("a", "2020-01-01T00:00:00Z")],
            at("2030-01-01T00:00:00Z"),
        )
        .unwrap();
        assert!(!rows[0].due);
        assert_eq!(rows[0].reason, "no schedule");
        assert!(rows[1].due);
    }
}

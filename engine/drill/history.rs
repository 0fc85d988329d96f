//! The history of a drill's scenarios: each recorded result with how its RTO changed since the
//! previous drill of the same scenario, and the regressions worth a warning (> 20 %).

use std::collections::BTreeMap;

use serde::Serialize;

use super::ScenarioResult;
use super::measure::fmt_ms;

/// RTO growth above this (in percent) since the previous drill of a scenario is a regression.
pub const REGRESSION_PCT: f64 = 20.0;

/// A recorded result and how its RTO changed since the previous drill of the same scenario.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryRow {
    /// The result as recorded.
    #[serde(flatten)]
    pub result: ScenarioResult,
    /// RTO change since the previous measured drill of the scenario, in percent.
    pub rto_change_pct: Option<f64>,
    /// Whether the RTO grew more than [`REGRESSION_PCT`].
    pub rto_regression: bool,
    /// The warning line for a regression.
    pub warning: Option<String>,
}

/// Change in percent from `prev` to `cur` (`None` when `prev` is 0).
#[expect(
    clippy::cast_precision_loss,
    reason = "durations in ms are far below 2^52"
)]
pub fn growth_pct(prev: u64, cur: u64) -> Option<f64> {
    (prev > 0).then(|| (cur as f64 - prev as f64) * 100.0 / prev as f64)
}

/// The rows of `results` (oldest first), each compared with the previous measured drill of the
/// same drill and scenario.
pub fn history(results: Vec<ScenarioResult>) -> Vec<HistoryRow> {
    let mut last: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut rows = Vec::with_capacity(results.len());
    for r in results {
        let key = (r.drill.clone(), r.scenario.clone());
        let prev = last.get(&key).copied();
        let change = match (prev, r.rto.actual_ms) {
            (Some(p), Some(c)) => growth_pct(p, c),
            _ => None,
        };
        let regression = change.is_some_and(|c| c > REGRESSION_PCT);
        let warning = regression.then(|| {
            format!(
                "warning: scenario {} of drill {}: RTO grew {:.0} % since the previous drill ({} → {}, run {})",
                r.scenario,
                r.drill,
                change.unwrap_or_default(),
                fmt_ms(prev),
                fmt_ms(r.rto.actual_ms),
                r.run_id
            )
        });
        if let Some(c) = r.rto.actual_ms {
            last.insert(key, c);
        }
        rows.push(HistoryRow {
            result: r,
            rto_change_pct: change,
            rto_regression: regression,
            warning,
        });
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drill::{ClockStart, Objective, Verdict};

    fn result(scenario: &str, run: &str, rto_ms: Option<u64>) -> ScenarioResult {
        ScenarioResult {
            drill: "d".to_owned(),
            drill_file: "d.yaml".to_owned(),
            scenario: scenario.to_owned(),
            runbook: "r.yaml".to_owned(),
            run_id: run.to_owned(),
            started_at_ms: 0,
            finished_at_ms: None,
            clock: ClockStart::Detected,
            clock_started_at_ms: None,
            recovered_at_ms: None,
            rto: Objective {
                target_ms: None,
                actual_ms: rto_ms,
                met: None,
                how: String::new(),
            },
            rpo: Objective {
                target_ms: None,
                actual_ms: None,
                met: None,
                how: String::new(),
            },
            accept: Vec::new(),
            verdict: Verdict::Passed,
            reasons: Vec::new(),
            approvals_by: String::new(),
        }
    }

    #[test]
    fn regressions_compare_with_the_previous_measured_drill_of_the_same_scenario() {
        let rows = history(vec![
            result("a", "1", Some(100_000)),
            result("b", "2", Some(10_000)),
            result("a", "3", Some(120_000)), // +20 %: not more than 20 %
            result("a", "4", None),          // not measured: skipped in comparisons
            result("a", "5", Some(150_000)), // +25 % over run 3
            result("b", "6", Some(9_000)),   // faster
        ]);
        let flags: Vec<bool> = rows.iter().map(|r| r.rto_regression).collect();
        assert_eq!(flags, [false, false, false, false, true, false]);
        assert_eq!(rows[0].rto_change_pct, None);
        assert_eq!(rows[2].rto_change_pct, Some(20.0));
        assert_eq!(rows[4].rto_change_pct, Some(25.0));
        assert_eq!(rows[5].rto_change_pct, Some(-10.0));
        assert_eq!(
            rows[4].warning.as_deref(),
            Some(
                "warning: scenario a of drill d: RTO grew 25 % since the previous drill (2m → 2m30s, run 5)"
            )
        );
    }
}

//! The `JUnit` XML report, so a CI system shows a drill's scenarios (or a run's steps) natively:
//! a drill gives one testcase per scenario, objective and acceptance check; an incident run one
//! per step and objective.

use std::fmt::Write as _;

use super::escape::{truncate, xml_escape as esc};
use super::timeline::{EntryKind, Outcome};
use super::{ObjectiveRow, Report, ReportKind, Section, fmt_duration};
use crate::drill::Verdict;

/// One `<testcase>`.
struct Case {
    classname: String,
    name: String,
    time_ms: u64,
    result: CaseResult,
}

enum CaseResult {
    Passed,
    Failed { message: String, detail: String },
    Skipped(String),
}

/// Render the report as `JUnit` XML.
pub fn render(report: &Report) -> String {
    let suite_name = match (&report.drill, report.kind) {
        (Some(d), _) => format!("drill {}", d.name),
        (None, ReportKind::Incident | ReportKind::Drill) => report.sections.first().map_or_else(
            || "runbook".to_owned(),
            |s| format!("runbook {}", s.facts.runbook),
        ),
    };
    let mut cases = Vec::new();
    for s in &report.sections {
        match report.kind {
            ReportKind::Drill => drill_cases(s, &mut cases),
            ReportKind::Incident => run_cases(s, &mut cases),
        }
    }
    // Scenarios that could not run here show as skipped tests, with the reason.
    for s in report.drill.iter().flat_map(|d| &d.skipped) {
        cases.push(Case {
            classname: format!(
                "{}.{}",
                report.drill.as_ref().map_or("drill", |d| d.name.as_str()),
                s.scenario
            ),
            name: "scenario".to_owned(),
            time_ms: 0,
            result: CaseResult::Skipped(s.reason.clone()),
        });
    }
    let failures = cases
        .iter()
        .filter(|c| matches!(c.result, CaseResult::Failed { .. }))
        .count();
    let skipped = cases
        .iter()
        .filter(|c| matches!(c.result, CaseResult::Skipped(_)))
        .count();
    let total_ms: u64 = report
        .sections
        .iter()
        .filter_map(|s| s.facts.duration_ms)
        .sum();
    let stamp = report
        .sections
        .iter()
        .map(|s| s.facts.started_at_ms)
        .min()
        .map(crate::clock::rfc3339)
        .unwrap_or_default();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"{}\">",
        esc(&report.title),
        cases.len(),
        secs(total_ms)
    );
    let _ = writeln!(
        out,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"{}\" timestamp=\"{}\">",
        esc(&suite_name),
        cases.len(),
        secs(total_ms),
        esc(stamp
            .trim_end_matches('Z')
            .split('.')
            .next()
            .unwrap_or_default())
    );
    for c in &cases {
        let open = format!(
            "    <testcase classname=\"{}\" name=\"{}\" time=\"{}\"",
            esc(&c.classname),
            esc(&c.name),
            secs(c.time_ms)
        );
        match &c.result {
            CaseResult::Passed => {
                let _ = writeln!(out, "{open}/>");
            }
            CaseResult::Failed { message, detail } => {
                let _ = writeln!(
                    out,
                    "{open}>\n      <failure message=\"{}\" type=\"failure\">{}</failure>\n    </testcase>",
                    esc(message),
                    esc(detail)
                );
            }
            CaseResult::Skipped(why) => {
                let _ = writeln!(
                    out,
                    "{open}>\n      <skipped message=\"{}\"/>\n    </testcase>",
                    esc(why)
                );
            }
        }
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

fn secs(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

fn objective_case(classname: &str, prefix: &str, o: &ObjectiveRow) -> Case {
    let result = match o.met {
        Some(true) => CaseResult::Passed,
        Some(false) => CaseResult::Failed {
            message: format!(
                "{} objective missed: {} against a target of {}",
                o.name,
                o.actual_ms.map_or_else(|| "-".to_owned(), fmt_duration),
                o.target_ms.map_or_else(|| "-".to_owned(), fmt_duration)
            ),
            detail: o.how.clone(),
        },
        None => CaseResult::Skipped(format!(
            "{}: target {}, actual {} ({})",
            o.name,
            o.target_ms
                .map_or_else(|| "not set".to_owned(), fmt_duration),
            o.actual_ms
                .map_or_else(|| "not measured".to_owned(), fmt_duration),
            o.how
        )),
    };
    Case {
        classname: classname.to_owned(),
        name: format!("{prefix}{} objective", o.name),
        time_ms: o.actual_ms.unwrap_or(0),
        result,
    }
}

fn drill_cases(s: &Section, cases: &mut Vec<Case>) {
    let class = format!("{}.{}", s.facts.drill.as_deref().unwrap_or("drill"), s.name);
    let result = match s.verdict {
        Some(Verdict::Passed) => CaseResult::Passed,
        Some(v) => CaseResult::Failed {
            message: format!(
                "scenario {}: {}",
                s.name,
                if v == Verdict::Invalid {
                    "invalid, the injected fault was never detected"
                } else {
                    "failed"
                }
            ),
            detail: s.notes.join("\n"),
        },
        None if s.passed => CaseResult::Passed,
        None => CaseResult::Failed {
            message: format!("scenario {} failed", s.name),
            detail: s.notes.join("\n"),
        },
    };
    cases.push(Case {
        classname: class.clone(),
        name: format!("scenario {}", s.name),
        time_ms: s.facts.duration_ms.unwrap_or(0),
        result,
    });
    for o in &s.objectives {
        cases.push(objective_case(&class, "", o));
    }
    for a in &s.accept {
        cases.push(Case {
            classname: class.clone(),
            name: format!("accept {}", a.name),
            time_ms: 0,
            result: if a.passed {
                CaseResult::Passed
            } else {
                CaseResult::Failed {
                    message: format!("acceptance check {} failed", a.name),
                    detail: truncate(&a.detail, 2000),
                }
            },
        });
    }
}

fn run_cases(s: &Section, cases: &mut Vec<Case>) {
    let class = s.facts.runbook.clone();
    // The time no engine ran is no test case; each run of a step is one, with its own span.
    for e in s.timeline.iter().filter(|e| e.kind != EntryKind::Gap) {
        let name = e.label();
        let result = match e.outcome {
            Outcome::Succeeded | Outcome::Passed | Outcome::Compensated => CaseResult::Passed,
            Outcome::Skipped => CaseResult::Skipped(e.detail.clone()),
            Outcome::Interrupted => CaseResult::Skipped(format!("interrupted: {}", e.detail)),
            o => CaseResult::Failed {
                message: format!("{name}: {}", o.as_str()),
                detail: truncate(&e.detail, 2000),
            },
        };
        cases.push(Case {
            classname: class.clone(),
            name,
            time_ms: e.duration_ms,
            result,
        });
    }
    for o in &s.objectives {
        cases.push(objective_case(&class, "", o));
    }
}

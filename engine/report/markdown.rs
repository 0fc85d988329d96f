//! The Markdown report: the handbook's post-incident template, readable in a terminal and on
//! GitHub.

use std::fmt::Write as _;

use super::escape::{md_cell, truncate};
use super::timeline::{EntryKind, Outcome, TimelineEntry};
use super::{Report, ReportKind, Section, fmt_duration, mark, verdict_str};

/// Longest step detail shown in the timeline table.
const DETAIL: usize = 100;

/// Render the report as Markdown.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# {}\n", md_cell(&report.title));
    let nested = report.kind == ReportKind::Drill;
    if let Some(d) = &report.drill {
        let overall = if report.passed() { "✅" } else { "❌" };
        let _ = writeln!(
            out,
            "{overall} **{}** of {} scenario(s) passed{} — drill `{}` ({})\n",
            d.passed,
            d.scenarios,
            if d.invalid > 0 {
                format!(", {} invalid", d.invalid)
            } else {
                String::new()
            },
            md_cell(&d.name),
            md_cell(&d.file)
        );
        if !d.skipped.is_empty() {
            out.push_str("Skipped here (their `requires` failed):\n\n");
            for s in &d.skipped {
                let _ = writeln!(
                    out,
                    "- ➖ `{}` — {}",
                    md_cell(&s.scenario),
                    md_cell(&s.reason)
                );
            }
            out.push('\n');
        }
        if report.sections.len() > 1 {
            out.push_str(
                "| Scenario | Verdict | RTO target | RTO actual | RPO target | RPO actual |\n",
            );
            out.push_str("|---|---|---|---|---|---|\n");
            for s in &report.sections {
                let obj = |name: &str| s.objectives.iter().find(|o| o.name == name);
                let (rto, rpo) = (obj("RTO"), obj("RPO"));
                let _ = writeln!(
                    out,
                    "| {} | {} {} | {} | {} {} | {} | {} {} |",
                    md_cell(&s.name),
                    if s.passed { "✅" } else { "❌" },
                    s.verdict.map_or("-", verdict_str),
                    target(rto.and_then(|o| o.target_ms)),
                    actual(rto.and_then(|o| o.actual_ms)),
                    mark(rto.and_then(|o| o.met)),
                    target(rpo.and_then(|o| o.target_ms)),
                    actual(rpo.and_then(|o| o.actual_ms)),
                    mark(rpo.and_then(|o| o.met)),
                );
            }
            out.push('\n');
        }
    }
    if report.sections.is_empty() {
        out.push_str("_No scenario ran._\n");
    }
    for s in &report.sections {
        section(&mut out, s, nested);
    }
    out
}

fn target(ms: Option<u64>) -> String {
    ms.map_or_else(|| "not set".to_owned(), fmt_duration)
}

fn actual(ms: Option<u64>) -> String {
    ms.map_or_else(|| "not measured".to_owned(), fmt_duration)
}

fn time(ms: i64) -> String {
    crate::clock::rfc3339(ms)
        .get(11..23)
        .unwrap_or_default()
        .to_owned()
}

fn section(out: &mut String, s: &Section, nested: bool) {
    let h = if nested { "###" } else { "##" };
    if nested {
        let _ = writeln!(
            out,
            "## Scenario `{}` {}\n",
            md_cell(&s.name),
            if s.passed { "✅" } else { "❌" }
        );
    }
    let f = &s.facts;
    let _ = writeln!(out, "{h} Basic facts\n");
    out.push_str("| | |\n|---|---|\n");
    let _ = writeln!(
        out,
        "| Runbook | {} (`{}`) |",
        md_cell(&f.runbook),
        md_cell(&f.file)
    );
    if let (Some(d), Some(sc)) = (&f.drill, &f.scenario) {
        let _ = writeln!(out, "| Drill | {} / {} |", md_cell(d), md_cell(sc));
    }
    let _ = writeln!(out, "| Run | `{}` |", md_cell(&f.run_id));
    let _ = writeln!(
        out,
        "| Status | {} {} |",
        if f.status == crate::state::RunStatus::Succeeded {
            "✅"
        } else {
            "❌"
        },
        f.status
    );
    if let Some(v) = s.verdict {
        let _ = writeln!(out, "| Verdict | {} |", verdict_str(v));
    }
    let _ = writeln!(
        out,
        "| Started by | {}@{} |",
        md_cell(&f.user),
        md_cell(&f.host)
    );
    let _ = writeln!(
        out,
        "| Started | {} |",
        crate::clock::rfc3339(f.started_at_ms)
    );
    let _ = writeln!(
        out,
        "| Ended | {} |",
        f.finished_at_ms
            .map_or_else(|| "not finished".to_owned(), crate::clock::rfc3339)
    );
    let _ = writeln!(
        out,
        "| Duration | {} |",
        f.duration_ms.map_or_else(|| "-".to_owned(), fmt_duration)
    );
    let params = f
        .params
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| format!("{k}={}", super::build::scalar(v)))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "| Params | {} |\n",
        if params.is_empty() {
            "none".to_owned()
        } else {
            md_cell(&params)
        }
    );

    let _ = writeln!(out, "{h} Trigger\n");
    for line in &s.trigger {
        let _ = writeln!(out, "- {}", md_cell(line));
    }
    out.push('\n');

    let _ = writeln!(out, "{h} Timeline\n");
    timeline(out, s);

    let _ = writeln!(out, "{h} RTO/RPO\n");
    out.push_str("| Objective | Target | Actual | Met | How |\n|---|---|---|---|---|\n");
    for o in &s.objectives {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            o.name,
            target(o.target_ms),
            actual(o.actual_ms),
            mark(o.met),
            md_cell(&o.how)
        );
    }
    out.push('\n');

    if !s.accept.is_empty() {
        let _ = writeln!(out, "{h} Acceptance checks\n");
        out.push_str("| Check | Passed | At | Detail |\n|---|---|---|---|\n");
        for a in &s.accept {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                md_cell(&a.name),
                if a.passed { "✅" } else { "❌" },
                a.at_ms.map_or_else(|| "-".to_owned(), time),
                md_cell(&truncate(&a.detail, DETAIL))
            );
        }
        out.push('\n');
    }

    let _ = writeln!(out, "{h} Approvals\n");
    if s.approvals.is_empty() {
        out.push_str("No approval was asked for.\n\n");
    } else {
        out.push_str(
            "| Step | Who | Decision | Via | At | Audit entry |\n|---|---|---|---|---|---|\n",
        );
        for a in &s.approvals {
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} | {} | {} |",
                md_cell(&a.step),
                md_cell(&a.approver),
                if a.approved {
                    "✅ approved"
                } else {
                    "❌ denied"
                },
                md_cell(&a.via),
                time(a.at_ms),
                a.audit_seq
                    .map_or_else(|| "-".to_owned(), |n| format!("#{n}"))
            );
        }
        out.push('\n');
    }

    let _ = writeln!(out, "{h} Bottlenecks\n");
    if s.bottlenecks.is_empty() {
        out.push_str("No step took measurable time.\n");
    }
    for (i, b) in s.bottlenecks.iter().enumerate() {
        let waiting = if b.waiting_ms > 0 {
            format!(", of which {} waiting", fmt_duration(b.waiting_ms))
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{}. `{}` — {} ({:.1} % of the run{waiting})",
            i + 1,
            md_cell(&b.step),
            fmt_duration(b.duration_ms),
            b.share_pct
        );
    }
    if !s.critical_path.is_empty() {
        let path: Vec<String> = s
            .critical_path
            .iter()
            .map(|p| format!("`{}`", md_cell(p)))
            .collect();
        let _ = writeln!(out, "\nCritical path: {}", path.join(" → "));
    }
    out.push('\n');

    if !s.notes.is_empty() {
        let _ = writeln!(out, "{h} Notes\n");
        for n in &s.notes {
            let _ = writeln!(out, "- {}", md_cell(n));
        }
        out.push('\n');
    }

    let _ = writeln!(
        out,
        "{h} Root cause analysis\n\n_To be written at the review._\n"
    );
    let _ = writeln!(out, "{h} Improvements\n");
    for o in s.objectives.iter().filter(|o| o.met == Some(false)) {
        let _ = writeln!(out, "- [ ] Bring the {} back under its objective", o.name);
    }
    if let Some(b) = s.bottlenecks.first() {
        let _ = writeln!(
            out,
            "- [ ] Shorten `{}` ({:.1} % of the run)",
            md_cell(&b.step),
            b.share_pct
        );
    }
    out.push_str("- [ ] Update the runbook with what was learned\n\n");
    let _ = writeln!(
        out,
        "{h} Lessons learned\n\n_To be written at the review._\n"
    );
}

fn timeline(out: &mut String, s: &Section) {
    if s.timeline.is_empty() {
        out.push_str("The journal holds no step.\n\n");
        return;
    }
    let origin = s.facts.started_at_ms;
    out.push_str(
        "| Step | Start (UTC) | End | Duration | Attempts | Waiting | Outcome | Detail |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|\n");
    for e in &s.timeline {
        let _ = writeln!(
            out,
            "| {} | {} (+{}) | {} | {} | {} | {} | {} {} | {} |",
            step_label(e),
            time(e.start_ms),
            fmt_duration(u64::try_from(e.start_ms - origin).unwrap_or(0)),
            e.end_ms.map_or_else(|| "-".to_owned(), time),
            fmt_duration(e.duration_ms),
            if e.attempts == 0 {
                "-".to_owned()
            } else {
                e.attempts.to_string()
            },
            waiting(e),
            outcome_mark(e.outcome),
            e.outcome.as_str(),
            md_cell(&detail(e))
        );
    }
    out.push_str("\n★ = on the critical path\n\n");
}

fn outcome_mark(o: Outcome) -> &'static str {
    match o {
        Outcome::Skipped => "➖",
        Outcome::Interrupted => "⏸",
        o if o.is_ok() => "✅",
        _ => "❌",
    }
}

fn step_label(e: &TimelineEntry) -> String {
    let star = if e.critical { " ★" } else { "" };
    let depth = e.step.matches('/').count();
    let indent = "↳ ".repeat(depth.min(3));
    match e.kind {
        EntryKind::Compensation => format!("undo `{}`{star}", md_cell(&e.step)),
        EntryKind::Checks => format!("`{}` checks{star}", md_cell(&e.step)),
        EntryKind::Step => format!(
            "{indent}`{}`{}{star}",
            md_cell(&e.step),
            md_cell(&e.rerun_suffix())
        ),
        EntryKind::Gap => "_no engine running_".to_owned(),
    }
}

fn waiting(e: &TimelineEntry) -> String {
    let mut parts = Vec::new();
    if e.approval {
        parts.push(format!("approval {}", fmt_duration(e.approval_wait_ms)));
    }
    if e.retry_wait_ms > 0 {
        parts.push(format!("back-off {}", fmt_duration(e.retry_wait_ms)));
    }
    if e.gate_wait_ms > 0 {
        parts.push(format!("gates {}", fmt_duration(e.gate_wait_ms)));
    }
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(", ")
    }
}

/// The entry's detail and its checks' polls, on one line.
pub(super) fn detail(e: &TimelineEntry) -> String {
    let mut parts = Vec::new();
    if !e.detail.is_empty() {
        parts.push(truncate(&e.detail, DETAIL));
    }
    for p in &e.polls {
        parts.push(format!(
            "{} #{}: {} poll{}, {}",
            p.phase,
            p.index,
            p.polls,
            if p.polls == 1 { "" } else { "s" },
            if p.passed { "passed" } else { "failed" }
        ));
    }
    parts.join("; ")
}

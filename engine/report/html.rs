//! The HTML report: one self-contained page (inline CSS, inline SVG, no script, no external
//! resource) with a Gantt-style timeline per run, the critical path highlighted.

use std::fmt::Write as _;

use super::escape::{html_escape as esc, truncate};
use super::timeline::{EntryKind, Outcome, TimelineEntry};
use super::{Report, Section, fmt_duration, verdict_str};

/// Width of the step-label column of the Gantt chart, in SVG units.
const LABEL_W: f64 = 240.0;
/// Width of the time axis.
const CHART_W: f64 = 900.0;
/// Height of one bar's row.
const ROW_H: f64 = 22.0;
/// Space above the first row (objective label) and below the last (axis).
const TOP: f64 = 24.0;
const BOTTOM: f64 = 36.0;
/// Beyond this multiple of the run's span, the RTO line is drawn at the edge, marked off scale.
const RTO_SCALE_LIMIT: i64 = 3;

const CSS: &str = r"
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem;color:#1f2328;max-width:1250px}
h1{font-size:1.6rem}h2{border-bottom:1px solid #d0d7de;padding-bottom:.3rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0 1rem}td,th{border:1px solid #d0d7de;padding:.25rem .5rem;text-align:left;vertical-align:top;font-size:.9rem}
th{background:#f6f8fa}code{font-family:ui-monospace,monospace;font-size:.85rem}
.ok{color:#1a7f37}.bad{color:#cf222e}.muted{color:#656d76}
svg.gantt{display:block;margin:.5rem 0 1rem;background:#fff;border:1px solid #d0d7de}
svg .bar.succeeded,svg .bar.passed{fill:#2da44e}svg .bar.failed,svg .bar.aborted,svg .bar.unfinished,svg .bar.compensation-failed{fill:#cf222e}
svg .bar.skipped{fill:#afb8c1}svg .bar.compensated{fill:#bf8700}
svg .bar.critical{stroke:#0b3d91;stroke-width:2}svg .label{font-size:12px;font-family:ui-monospace,monospace}
svg .label.critical{font-weight:bold;fill:#0b3d91}svg .axis{stroke:#57606a}svg .tick{font-size:11px;fill:#57606a}
svg .grid{stroke:#eaeef2}svg .rto{stroke:#8250df;stroke-width:2;stroke-dasharray:6 4}svg .rto-label{font-size:11px;fill:#8250df}svg .clock{stroke:#8250df;stroke-width:1}
.badge{display:inline-block;padding:.05rem .45rem;border-radius:.6rem;font-size:.8rem;font-weight:600;color:#fff}.badge.ok{background:#1a7f37}.badge.bad{background:#cf222e}.badge.na{background:#6e7781}
.legend span{display:inline-block;margin-right:1rem;font-size:.85rem}.legend i{display:inline-block;width:14px;height:10px;margin-right:.3rem;vertical-align:middle}
";

/// Render the report as one HTML page.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
        esc(&report.title),
        esc(&report.title)
    );
    if let Some(d) = &report.drill {
        let _ = writeln!(
            out,
            "<p class=\"{}\"><strong>{} of {} scenario(s) passed</strong>{} — drill <code>{}</code> ({})</p>",
            if report.passed() { "ok" } else { "bad" },
            d.passed,
            d.scenarios,
            if d.invalid > 0 {
                format!(", {} invalid", d.invalid)
            } else {
                String::new()
            },
            esc(&d.name),
            esc(&d.file)
        );
        if !d.skipped.is_empty() {
            out.push_str("<p>Skipped here (their <code>requires</code> failed):</p>\n<ul class=\"skipped\">\n");
            for s in &d.skipped {
                let _ = writeln!(
                    out,
                    "<li data-skipped=\"{}\"><code>{}</code> — {}</li>",
                    esc(&s.scenario),
                    esc(&s.scenario),
                    esc(&s.reason)
                );
            }
            out.push_str("</ul>\n");
        }
    }
    if report.sections.is_empty() {
        out.push_str("<p>No scenario ran.</p>\n");
    }
    for (i, s) in report.sections.iter().enumerate() {
        section(&mut out, s, i);
    }
    out.push_str("</body>\n</html>\n");
    out
}

fn ok_class(ok: bool) -> &'static str {
    if ok { "ok" } else { "bad" }
}

/// A coloured word instead of an emoji: headless browsers and many fonts lack emoji glyphs.
fn badge(ok: Option<bool>, yes: &str, no: &str, unknown: &str) -> String {
    match ok {
        Some(true) => format!("<span class=\"badge ok\">{yes}</span>"),
        Some(false) => format!("<span class=\"badge bad\">{no}</span>"),
        None => format!("<span class=\"badge na\">{unknown}</span>"),
    }
}

fn section(out: &mut String, s: &Section, n: usize) {
    let f = &s.facts;
    let _ = writeln!(
        out,
        "<section id=\"run-{n}\" data-run=\"{}\">\n<h2>{} {}</h2>",
        esc(&f.run_id),
        esc(&s.name),
        badge(Some(s.passed), "passed", "failed", "")
    );
    out.push_str("<h3>Basic facts</h3>\n<table>\n");
    let mut row = |k: &str, v: String| {
        let _ = writeln!(out, "<tr><th>{k}</th><td>{v}</td></tr>");
    };
    row(
        "Runbook",
        format!("{} (<code>{}</code>)", esc(&f.runbook), esc(&f.file)),
    );
    if let (Some(d), Some(sc)) = (&f.drill, &f.scenario) {
        row("Drill", format!("{} / {}", esc(d), esc(sc)));
    }
    row("Run", format!("<code>{}</code>", esc(&f.run_id)));
    row("Status", esc(f.status.as_str()));
    if let Some(v) = s.verdict {
        row("Verdict", esc(verdict_str(v)));
    }
    row("Started by", format!("{}@{}", esc(&f.user), esc(&f.host)));
    row("Started", crate::clock::rfc3339(f.started_at_ms));
    row(
        "Ended",
        f.finished_at_ms
            .map_or_else(|| "not finished".to_owned(), crate::clock::rfc3339),
    );
    row(
        "Duration",
        f.duration_ms.map_or_else(|| "-".to_owned(), fmt_duration),
    );
    let params = f
        .params
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| format!("<code>{}={}</code>", esc(k), esc(&super::build::scalar(v))))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    row(
        "Params",
        if params.is_empty() {
            "none".to_owned()
        } else {
            params
        },
    );
    out.push_str("</table>\n<h3>Trigger</h3>\n<ul>\n");
    for line in &s.trigger {
        let _ = writeln!(out, "<li>{}</li>", esc(line));
    }
    out.push_str("</ul>\n<h3>Timeline</h3>\n");
    gantt(out, s, n);
    legend(out);
    timeline_table(out, s);

    out.push_str("<h3>RTO/RPO</h3>\n<table>\n<tr><th>Objective</th><th>Target</th><th>Actual</th><th>Met</th><th>How</th></tr>\n");
    for o in &s.objectives {
        let _ = writeln!(
            out,
            "<tr class=\"objective\" data-objective=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&o.name),
            esc(&o.name),
            o.target_ms
                .map_or_else(|| "not set".to_owned(), fmt_duration),
            o.actual_ms
                .map_or_else(|| "not measured".to_owned(), fmt_duration),
            badge(o.met, "met", "missed", "unknown"),
            esc(&o.how)
        );
    }
    out.push_str("</table>\n");
    if !s.accept.is_empty() {
        out.push_str("<h3>Acceptance checks</h3>\n<table>\n<tr><th>Check</th><th>Passed</th><th>Detail</th></tr>\n");
        for a in &s.accept {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&a.name),
                badge(Some(a.passed), "passed", "failed", ""),
                esc(&truncate(&a.detail, 300))
            );
        }
        out.push_str("</table>\n");
    }
    out.push_str("<h3>Approvals</h3>\n");
    if s.approvals.is_empty() {
        out.push_str("<p>No approval was asked for.</p>\n");
    } else {
        out.push_str("<table>\n<tr><th>Step</th><th>Who</th><th>Decision</th><th>Via</th><th>At</th><th>Audit entry</th></tr>\n");
        for a in &s.approvals {
            let _ = writeln!(
                out,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&a.step),
                esc(&a.approver),
                badge(Some(a.approved), "approved", "denied", ""),
                esc(&a.via),
                crate::clock::rfc3339(a.at_ms),
                a.audit_seq
                    .map_or_else(|| "-".to_owned(), |n| format!("#{n}"))
            );
        }
        out.push_str("</table>\n");
    }
    out.push_str("<h3>Bottlenecks</h3>\n<ol>\n");
    for b in &s.bottlenecks {
        let _ = writeln!(
            out,
            "<li><code>{}</code> — {} ({:.1} % of the run{})</li>",
            esc(&b.step),
            fmt_duration(b.duration_ms),
            b.share_pct,
            if b.waiting_ms > 0 {
                format!(", of which {} waiting", fmt_duration(b.waiting_ms))
            } else {
                String::new()
            }
        );
    }
    out.push_str("</ol>\n");
    if !s.critical_path.is_empty() {
        let path: Vec<String> = s
            .critical_path
            .iter()
            .map(|p| format!("<code>{}</code>", esc(p)))
            .collect();
        let _ = writeln!(out, "<p>Critical path: {}</p>", path.join(" → "));
    }
    if !s.notes.is_empty() {
        out.push_str("<h3>Notes</h3>\n<ul>\n");
        for note in &s.notes {
            let _ = writeln!(out, "<li>{}</li>", esc(note));
        }
        out.push_str("</ul>\n");
    }
    out.push_str("</section>\n");
}

/// `HH:MM:SS.mmm` (UTC): the day is in the basic facts.
fn time(ms: i64) -> String {
    crate::clock::rfc3339(ms)
        .get(11..23)
        .unwrap_or_default()
        .to_owned()
}

fn bar_class(e: &TimelineEntry) -> String {
    let outcome = match e.outcome {
        Outcome::CompensationFailed => "compensation-failed",
        o => o.as_str(),
    };
    let mut c = format!("bar {outcome}");
    if e.critical {
        c.push_str(" critical");
    }
    c
}

/// The RTO target and its label, when the run has one.
fn rto_mark(s: &Section) -> Option<(i64, String)> {
    let target = s.objectives.iter().find(|o| o.name == "RTO")?.target_ms?;
    Some((
        i64::try_from(target).ok()?,
        format!("RTO {}", fmt_duration(target)),
    ))
}

#[expect(
    clippy::cast_precision_loss,
    reason = "pixel positions from millisecond offsets far below 2^52"
)]
fn gantt(out: &mut String, s: &Section, n: usize) {
    let entries = &s.timeline;
    if entries.is_empty() {
        out.push_str("<p>The journal holds no step.</p>\n");
        return;
    }
    let origin = entries
        .iter()
        .map(|e| e.start_ms)
        .min()
        .unwrap_or(s.facts.started_at_ms)
        .min(s.facts.started_at_ms);
    let clock_start = s.clock_started_at_ms.unwrap_or(origin);
    let last = entries
        .iter()
        .map(|e| e.end_ms.unwrap_or(e.start_ms))
        .chain(s.facts.finished_at_ms)
        .max()
        .unwrap_or(origin);
    let span = (last - origin).max(1);
    let rto = rto_mark(s).map(|(target, text)| (clock_start + target - origin, text));
    let axis = match &rto {
        Some((at, _)) if *at > span && *at <= span * RTO_SCALE_LIMIT => *at,
        _ => span,
    };
    let x = |ms: i64| LABEL_W + (ms as f64 / axis as f64) * CHART_W;
    let height = TOP + ROW_H * entries.len() as f64 + BOTTOM;
    let width = LABEL_W + CHART_W + 40.0;
    let _ = writeln!(
        out,
        "<svg class=\"gantt\" id=\"gantt-{n}\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"timeline of the steps\">"
    );
    let axis_y = TOP + ROW_H * entries.len() as f64 + 4.0;
    for t in 0..=5 {
        let ms = axis * t / 5;
        let tx = x(ms);
        let _ = writeln!(
            out,
            "<line class=\"grid\" x1=\"{tx:.1}\" y1=\"{TOP}\" x2=\"{tx:.1}\" y2=\"{axis_y:.1}\"/><text class=\"tick\" x=\"{tx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">+{}</text>",
            axis_y + 16.0,
            fmt_duration(u64::try_from(ms).unwrap_or(0))
        );
    }
    let _ = writeln!(
        out,
        "<line class=\"axis\" x1=\"{LABEL_W}\" y1=\"{axis_y:.1}\" x2=\"{:.1}\" y2=\"{axis_y:.1}\"/>",
        LABEL_W + CHART_W
    );
    for (i, e) in entries.iter().enumerate() {
        let y = TOP + ROW_H * i as f64;
        let start = e.start_ms - origin;
        let end = e.end_ms.unwrap_or(last) - origin;
        let bx = x(start);
        let bw = (x(end) - bx).max(5.0);
        let critical = if e.critical { " critical" } else { "" };
        let step = esc(&e.step);
        let _ = writeln!(
            out,
            "<text class=\"label{critical}\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LABEL_W - 8.0,
            y + ROW_H * 0.65,
            esc(&truncate(&e.label(), 32))
        );
        let _ = writeln!(
            out,
            "<rect id=\"bar-{n}-{i}\" class=\"{}\" data-step=\"{step}\" data-kind=\"{}\" data-critical=\"{}\" x=\"{bx:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{:.1}\" rx=\"3\"><title>{} — {} ({}){}</title></rect>",
            bar_class(e),
            match e.kind {
                EntryKind::Step => "step",
                EntryKind::Compensation => "compensation",
                EntryKind::Checks => "checks",
                EntryKind::Gap => "gap",
            },
            e.critical,
            y + 3.0,
            ROW_H - 6.0,
            esc(&e.label()),
            esc(e.outcome.as_str()),
            fmt_duration(e.duration_ms),
            if e.detail.is_empty() {
                String::new()
            } else {
                format!(": {}", esc(&truncate(&e.detail, 200)))
            }
        );
    }
    // A drill's RTO clock starts when the fault is detected, not when the run starts.
    if clock_start > origin {
        let cx = x(clock_start - origin);
        let _ = writeln!(
            out,
            "<line class=\"clock\" x1=\"{cx:.1}\" y1=\"{:.1}\" x2=\"{cx:.1}\" y2=\"{axis_y:.1}\"/><text class=\"rto-label\" x=\"{:.1}\" y=\"{:.1}\">RTO clock starts</text>",
            TOP - 14.0,
            cx + 4.0,
            TOP - 4.0
        );
    }
    if let Some((at, text)) = rto {
        let (lx, text) = if at <= axis {
            (x(at), text)
        } else {
            (
                LABEL_W + CHART_W + 16.0,
                format!("{text} (off the scale) →"),
            )
        };
        let _ = writeln!(
            out,
            "<line class=\"rto\" id=\"rto-{n}\" x1=\"{lx:.1}\" y1=\"{:.1}\" x2=\"{lx:.1}\" y2=\"{axis_y:.1}\"/><text class=\"rto-label\" x=\"{lx:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            TOP - 14.0,
            TOP - 4.0,
            esc(&text)
        );
    }
    out.push_str("</svg>\n");
}

fn legend(out: &mut String) {
    out.push_str(concat!(
        "<p class=\"legend\">",
        "<span><i style=\"background:#2da44e\"></i>succeeded</span>",
        "<span><i style=\"background:#cf222e\"></i>failed / aborted</span>",
        "<span><i style=\"background:#afb8c1\"></i>skipped</span>",
        "<span><i style=\"background:#bf8700\"></i>compensated</span>",
        "<span><i style=\"background:#fff;outline:3px solid #0b3d91\"></i>critical path</span>",
        "<span><i style=\"border-top:2px dashed #8250df;height:0\"></i>RTO objective</span>",
        "</p>\n"
    ));
}

fn timeline_table(out: &mut String, s: &Section) {
    out.push_str("<table class=\"timeline\">\n<tr><th>Step</th><th>Start (UTC)</th><th>End</th><th>Duration</th><th>Attempts</th><th>Waiting</th><th>Outcome</th><th>Detail</th></tr>\n");
    for e in &s.timeline {
        let _ = writeln!(
            out,
            "<tr data-step=\"{}\"><td><code>{}</code>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td></tr>",
            esc(&e.step),
            esc(&e.label()),
            if e.critical { " ★" } else { "" },
            time(e.start_ms),
            e.end_ms.map_or_else(|| "-".to_owned(), time),
            fmt_duration(e.duration_ms),
            if e.attempts == 0 {
                "-".to_owned()
            } else {
                e.attempts.to_string()
            },
            fmt_duration(e.waiting_ms()),
            match e.outcome {
                Outcome::Skipped => "muted",
                o => ok_class(o.is_ok()),
            },
            esc(e.outcome.as_str()),
            esc(&super::markdown::detail(e))
        );
    }
    out.push_str("</table>\n");
}

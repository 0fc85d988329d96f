//! The plan as a graph: Mermaid (for Markdown reviews) and Graphviz DOT, drawn alike — each
//! step with its name, kind, guard, gates, retries and compensation; steps the params skip
//! greyed and dashed; the critical path in bold; `finally` hung below the last steps; a legend.

use std::fmt::Write;

use super::{Decision, Plan, PlannedStep};

/// Longest guard expression drawn in full; longer ones end with `…` (the text plan has it all).
const GUARD_WIDTH: usize = 48;

/// The lines a node shows, unescaped.
fn node_lines(s: &PlannedStep) -> Vec<String> {
    let mut lines = vec![s.id.clone()];
    if let Some(n) = &s.name {
        lines.push(n.clone());
    }
    let kind = s.kind.as_deref().unwrap_or("gate");
    let effect = if s.irreversible {
        "IRREVERSIBLE"
    } else if s.mutates {
        "mutates"
    } else {
        "read-only"
    };
    lines.push(format!("{kind} · {effect}"));
    if let Some(g) = &s.guard {
        let when: String = if g.when.chars().count() > GUARD_WIDTH {
            g.when.chars().take(GUARD_WIDTH - 1).chain(['…']).collect()
        } else {
            g.when.clone()
        };
        let decided = match g.decision {
            Decision::Runs => "runs",
            Decision::Skipped => "SKIPPED by params",
            Decision::AtRunTime => "at run time",
            Decision::Undecided => "undecided: param missing",
        };
        lines.push(format!("when {when} → {decided}"));
    }
    let mut gates = Vec::new();
    if !s.require.is_empty() {
        gates.push(format!("require ×{}", s.require.len()));
    }
    if !s.verify.is_empty() {
        gates.push(format!("verify ×{}", s.verify.len()));
    }
    if !gates.is_empty() {
        lines.push(format!("gates: {}", gates.join(", ")));
    }
    if s.retry.attempts > 1 {
        lines.push(format!(
            "retry: {} attempts, {}",
            s.retry.attempts, s.retry.backoff
        ));
    }
    if let Some(c) = &s.compensate {
        let how = c.first().map_or("action", |l| l.label.as_str());
        lines.push(format!("↺ compensate: {how}"));
    }
    lines
}

/// The edges of the plan (from, to), `finally` edges last, and whether each is on the
/// critical path.
struct Edges<'a> {
    needs: Vec<(&'a str, &'a str, bool)>,
    finally: Vec<(&'a str, &'a str)>,
}

fn edges(p: &Plan) -> Edges<'_> {
    let path = &p.summary.critical_path;
    let on_path = |a: &str, b: &str| {
        path.windows(2)
            .any(|w| w[0].as_str() == a && w[1].as_str() == b)
    };
    let mut needs = Vec::new();
    for s in p.steps.iter().chain(&p.finally) {
        for n in &s.needs {
            needs.push((n.as_str(), s.id.as_str(), on_path(n, &s.id)));
        }
    }
    // `finally` starts when the main steps are over: hang its first steps below the last ones.
    let mut finally = Vec::new();
    let last: Vec<&str> = p
        .steps
        .iter()
        .filter(|s| !p.steps.iter().any(|t| t.needs.contains(&s.id)))
        .map(|s| s.id.as_str())
        .collect();
    for f in p.finally.iter().filter(|f| f.needs.is_empty()) {
        for l in &last {
            finally.push((*l, f.id.as_str()));
        }
    }
    Edges { needs, finally }
}

fn skipped(p: &Plan, id: &str) -> bool {
    p.steps
        .iter()
        .chain(&p.finally)
        .any(|s| s.id == id && s.skipped_by_params())
}

/// A Mermaid node id: step ids may be Mermaid keywords (`end`), hence the prefix.
fn mermaid_id(id: &str) -> String {
    format!("s_{}", id.replace('-', "_"))
}

/// Text inside a quoted Mermaid label: entity codes for what Mermaid would read as markup.
fn mermaid_text(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => o.push_str("#quot;"),
            '<' => o.push_str("#lt;"),
            '>' => o.push_str("#gt;"),
            '&' => o.push_str("#amp;"),
            '#' => o.push_str("#35;"),
            c => o.push(c),
        }
    }
    o
}

/// Render the DAG as a Mermaid flowchart.
pub fn mermaid(p: &Plan) -> String {
    let mut o = String::from("flowchart TD\n");
    if p.is_incomplete() {
        let _ = writeln!(
            o,
            "  %% INCOMPLETE: missing params {} (placeholders ⟨params.…⟩)",
            p.missing_params.join(", ")
        );
        let _ = writeln!(
            o,
            "  _incomplete[/\"INCOMPLETE — missing params: {}\"/]",
            mermaid_text(&p.missing_params.join(", "))
        );
    }
    for s in p.steps.iter().chain(&p.finally) {
        let label = node_lines(s)
            .iter()
            .map(|l| mermaid_text(l))
            .collect::<Vec<_>>()
            .join("<br/>");
        let shape = if s.kind.as_deref() == Some("approve") {
            format!("{{{{\"{label}\"}}}}")
        } else {
            format!("[\"{label}\"]")
        };
        let _ = writeln!(o, "  {}{shape}", mermaid_id(&s.id));
    }
    let e = edges(p);
    let mut bold = Vec::new();
    for (n, (from, to, critical)) in e.needs.iter().enumerate() {
        let arrow = if skipped(p, from) || skipped(p, to) {
            "-.->"
        } else {
            "-->"
        };
        let _ = writeln!(o, "  {} {arrow} {}", mermaid_id(from), mermaid_id(to));
        if *critical {
            bold.push(n);
        }
    }
    for (from, to) in &e.finally {
        let _ = writeln!(o, "  {} -.->|finally| {}", mermaid_id(from), mermaid_id(to));
    }
    let _ = writeln!(
        o,
        "  classDef irreversible fill:#fdd,stroke:#c00,stroke-width:3px"
    );
    let _ = writeln!(o, "  classDef mutates fill:#ffe,stroke:#aa0");
    let _ = writeln!(
        o,
        "  classDef skipped fill:#eee,stroke:#999,color:#999,stroke-dasharray:5 5"
    );
    let _ = writeln!(o, "  classDef legend fill:#fff,stroke:#ccc,font-size:11px");
    for s in p.steps.iter().chain(&p.finally) {
        if s.skipped_by_params() {
            let _ = writeln!(o, "  class {} skipped", mermaid_id(&s.id));
        } else if s.irreversible {
            let _ = writeln!(o, "  class {} irreversible", mermaid_id(&s.id));
        } else if s.mutates {
            let _ = writeln!(o, "  class {} mutates", mermaid_id(&s.id));
        }
    }
    if !bold.is_empty() {
        let list: Vec<String> = bold.iter().map(usize::to_string).collect();
        let _ = writeln!(o, "  linkStyle {} stroke-width:3px", list.join(","));
    }
    o.push_str(
        "  subgraph _legend [\"legend\"]\n\
         \x20   _legend_ro[\"read-only\"]\n\
         \x20   _legend_mut[\"mutates\"]\n\
         \x20   _legend_irr[\"IRREVERSIBLE\"]\n\
         \x20   _legend_appr{{\"approval\"}}\n\
         \x20   _legend_skip[\"skipped by params\"]\n\
         \x20   _legend_crit[\"thick arrow: critical path\"]\n\
         \x20   _legend_fin[\"dashed arrow: finally (always runs)\"]\n\
         \x20 end\n\
         \x20 class _legend_ro,_legend_appr,_legend_crit,_legend_fin legend\n\
         \x20 class _legend_mut mutates\n\
         \x20 class _legend_irr irreversible\n\
         \x20 class _legend_skip skipped\n",
    );
    crate::terminal::escape(&o)
}

/// Text inside a double-quoted DOT string (a label or an id).
fn dot_text(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Render the DAG as Graphviz DOT.
pub fn dot(p: &Plan) -> String {
    let mut o = format!(
        "digraph \"{}\" {{\n  rankdir=TB;\n  node [shape=box, fontname=\"sans-serif\"];\n",
        dot_text(&p.runbook)
    );
    if p.is_incomplete() {
        let _ = writeln!(
            o,
            "  label=\"INCOMPLETE — missing params: {} (placeholders ⟨params.…⟩)\";\n  labelloc=t;\n  fontcolor=red;",
            dot_text(&p.missing_params.join(", "))
        );
    }
    let node = |o: &mut String, s: &PlannedStep, indent: &str| {
        let label = node_lines(s)
            .iter()
            .map(|l| dot_text(l))
            .collect::<Vec<_>>()
            .join("\\n");
        let style = if s.skipped_by_params() {
            ", style=dashed, color=grey60, fontcolor=grey60"
        } else if s.irreversible {
            ", color=red, penwidth=3, style=filled, fillcolor=\"#ffdddd\""
        } else if s.mutates {
            ", style=filled, fillcolor=\"#ffffee\""
        } else {
            ""
        };
        let shape = if s.kind.as_deref() == Some("approve") {
            ", shape=hexagon"
        } else {
            ""
        };
        let _ = writeln!(
            o,
            "{indent}\"{}\" [label=\"{label}\"{shape}{style}];",
            dot_text(&s.id)
        );
    };
    for s in &p.steps {
        node(&mut o, s, "  ");
    }
    if !p.finally.is_empty() {
        o.push_str(
            "  subgraph cluster_finally {\n    label=\"finally (always runs, sees run.status)\";\n    style=dashed;\n",
        );
        for s in &p.finally {
            node(&mut o, s, "    ");
        }
        o.push_str("  }\n");
    }
    let e = edges(p);
    for (from, to, critical) in &e.needs {
        let mut attrs = Vec::new();
        if skipped(p, from) || skipped(p, to) {
            attrs.push("style=dashed, color=grey60");
        }
        if *critical {
            attrs.push("penwidth=3");
        }
        let attrs = if attrs.is_empty() {
            String::new()
        } else {
            format!(" [{}]", attrs.join(", "))
        };
        let _ = writeln!(
            o,
            "  \"{}\" -> \"{}\"{attrs};",
            dot_text(from),
            dot_text(to)
        );
    }
    for (from, to) in &e.finally {
        let _ = writeln!(
            o,
            "  \"{}\" -> \"{}\" [style=dashed, label=\"finally\"];",
            dot_text(from),
            dot_text(to)
        );
    }
    o.push_str(
        "  subgraph cluster_legend {\n\
         \x20   label=\"legend\";\n\
         \x20   fontsize=10;\n\
         \x20   color=grey80;\n\
         \x20   node [fontsize=10];\n\
         \x20   \"_legend_ro\" [label=\"read-only\"];\n\
         \x20   \"_legend_mut\" [label=\"mutates\", style=filled, fillcolor=\"#ffffee\"];\n\
         \x20   \"_legend_irr\" [label=\"IRREVERSIBLE\", color=red, penwidth=3, style=filled, fillcolor=\"#ffdddd\"];\n\
         \x20   \"_legend_appr\" [label=\"approval\", shape=hexagon];\n\
         \x20   \"_legend_skip\" [label=\"skipped by params\", style=dashed, color=grey60, fontcolor=grey60];\n\
         \x20   \"_legend_crit\" [label=\"thick arrow: critical path\", shape=plaintext];\n\
         \x20   \"_legend_fin\" [label=\"dashed arrow: finally (always runs)\", shape=plaintext];\n\
         \x20 }\n",
    );
    o.push_str("}\n");
    crate::terminal::escape(&o)
}

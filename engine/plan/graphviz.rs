//! The plan as a graph: Mermaid (for Markdown reviews) and Graphviz DOT.

use std::fmt::Write;

use super::Plan;

fn node_id(id: &str) -> String {
    id.replace('-', "_")
}

fn label(s: &super::PlannedStep) -> String {
    let kind = s.kind.as_deref().unwrap_or("gate");
    format!("{}<br/>{kind}", s.id)
}

/// Render the DAG as a Mermaid flowchart.
pub fn mermaid(p: &Plan) -> String {
    let mut o = String::from("flowchart TD\n");
    for s in p.steps.iter().chain(&p.finally) {
        let shape = if s.kind.as_deref() == Some("approve") {
            format!("{{{{\"{}\"}}}}", label(s))
        } else {
            format!("[\"{}\"]", label(s))
        };
        let _ = writeln!(o, "  {}{shape}", node_id(&s.id));
    }
    for s in p.steps.iter().chain(&p.finally) {
        for n in &s.needs {
            let _ = writeln!(o, "  {} --> {}", node_id(n), node_id(&s.id));
        }
    }
    if !p.finally.is_empty() {
        let last: Vec<&str> = p
            .steps
            .iter()
            .filter(|s| !p.steps.iter().any(|t| t.needs.contains(&s.id)))
            .map(|s| s.id.as_str())
            .collect();
        for f in p.finally.iter().filter(|f| f.needs.is_empty()) {
            for l in &last {
                let _ = writeln!(o, "  {} -.->|finally| {}", node_id(l), node_id(&f.id));
            }
        }
    }
    let _ = writeln!(
        o,
        "  classDef irreversible fill:#fdd,stroke:#c00,stroke-width:3px"
    );
    let _ = writeln!(o, "  classDef mutates fill:#ffe,stroke:#aa0");
    for s in p.steps.iter().chain(&p.finally) {
        if s.irreversible {
            let _ = writeln!(o, "  class {} irreversible", node_id(&s.id));
        } else if s.mutates {
            let _ = writeln!(o, "  class {} mutates", node_id(&s.id));
        }
    }
    crate::terminal::escape(&o)
}

/// Render the DAG as Graphviz DOT.
pub fn dot(p: &Plan) -> String {
    let mut o = format!(
        "digraph \"{}\" {{\n  rankdir=TB;\n  node [shape=box, fontname=\"sans-serif\"];\n",
        p.runbook
    );
    for s in p.steps.iter().chain(&p.finally) {
        let kind = s.kind.as_deref().unwrap_or("gate");
        let style = if s.irreversible {
            ", color=red, penwidth=3, style=filled, fillcolor=\"#ffdddd\""
        } else if s.mutates {
            ", style=filled, fillcolor=\"#ffffee\""
        } else {
            ""
        };
        let shape = if kind == "approve" {
            ", shape=hexagon"
        } else {
            ""
        };
        let _ = writeln!(
            o,
            "  \"{}\" [label=\"{}\\n{kind}\"{shape}{style}];",
            s.id, s.id
        );
    }
    for s in p.steps.iter().chain(&p.finally) {
        for n in &s.needs {
            let _ = writeln!(o, "  \"{n}\" -> \"{}\";", s.id);
        }
    }
    o.push_str("}\n");
    crate::terminal::escape(&o)
}

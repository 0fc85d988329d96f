//! The plan as a reviewer reads it in a terminal or a change request.

use std::fmt::Write;

use super::{Decision, Line, Plan, PlannedCheck, PlannedStep};

/// Render a plan as text.
pub fn text(p: &Plan) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "PLAN {}", p.runbook);
    if p.is_incomplete() {
        let _ = writeln!(
            o,
            "INCOMPLETE — missing params: {} (shown as ⟨params.…⟩; for review only, not executable)",
            p.missing_params.join(", ")
        );
    }
    if let Some(d) = &p.description {
        let _ = writeln!(o, "  {}", d.trim());
    }
    let _ = writeln!(
        o,
        "file:       {} (sha256 {})",
        p.file,
        p.runbook_hash.chars().take(12).collect::<String>()
    );
    if !p.params.is_empty() {
        let params: Vec<String> = p
            .params
            .iter()
            .map(|(k, v)| format!("{k}={}", scalar(v)))
            .collect();
        let _ = writeln!(o, "params:     {}", params.join(", "));
    }
    let objectives = match (&p.rto, &p.rpo) {
        (None, None) => "none".to_owned(),
        (rto, rpo) => [
            rto.as_ref().map(|r| format!("RTO {r}")),
            rpo.as_ref().map(|r| format!("RPO {r}")),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", "),
    };
    let _ = writeln!(o, "objectives: {objectives}");
    let _ = writeln!(
        o,
        "on failure: {}",
        if p.on_failure == "rollback" {
            "roll back (compensate completed steps in reverse order)"
        } else {
            "stop"
        }
    );
    if !p.preflight.is_empty() {
        let _ = writeln!(o, "\nPreflight (before any step)");
        for c in &p.preflight {
            check(&mut o, c, "  ");
        }
    }
    let mut level = 0;
    for s in &p.steps {
        if s.level != level {
            level = s.level;
            let n = p.levels.get(level - 1).map_or(1, Vec::len);
            let par = if n > 1 {
                format!(" — {n} steps in parallel")
            } else {
                String::new()
            };
            let _ = writeln!(o, "\nLevel {level}{par}");
        }
        step(&mut o, s);
    }
    if !p.finally.is_empty() {
        let _ = writeln!(o, "\nFinally (always runs, sees run.status)");
        for s in &p.finally {
            step(&mut o, s);
        }
    }
    let sm = &p.summary;
    let _ = writeln!(o, "\nSummary");
    let _ = writeln!(
        o,
        "  steps:          {} (+{} finally), {} mutating, {} irreversible, {} approvals",
        sm.steps,
        sm.finally_steps,
        sm.mutating,
        sm.irreversible.len(),
        sm.approvals
    );
    if !sm.irreversible.is_empty() {
        let _ = writeln!(o, "  no return:      {}", sm.irreversible.join(", "));
    }
    if !sm.skipped_by_params.is_empty() {
        let _ = writeln!(
            o,
            "  skipped:        {} (guards false for these params)",
            sm.skipped_by_params.join(", ")
        );
    }
    let _ = writeln!(
        o,
        "  parallelism:    up to {} at once (widest level {})",
        sm.max_parallel, sm.max_parallel_level
    );
    let _ = writeln!(o, "  critical path:  {}", sm.critical_path.join(" → "));
    let _ = writeln!(
        o,
        "  worst case:     {}{}",
        sm.worst_case,
        p.rto
            .as_ref()
            .map(|r| format!(" (RTO {r})"))
            .unwrap_or_default()
    );
    for w in &sm.warnings {
        let _ = writeln!(o, "  ⚠ {w}");
    }
    // Step ids, params and commands come from the runbook: inert on a terminal.
    crate::terminal::escape(&o)
}

fn scalar(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn step(o: &mut String, s: &PlannedStep) {
    let mut tags = Vec::new();
    if let Some(k) = &s.kind {
        tags.push(k.clone());
    } else {
        tags.push("gate".to_owned());
    }
    if s.irreversible {
        tags.push("IRREVERSIBLE — point of no return".to_owned());
    } else if s.mutates {
        tags.push("mutates".to_owned());
    } else {
        tags.push("read-only".to_owned());
    }
    if s.continue_on_failure {
        tags.push("continue on failure".to_owned());
    }
    let marker = if s.irreversible {
        "◆"
    } else if s.mutates {
        "●"
    } else {
        "○"
    };
    let name = s
        .name
        .as_ref()
        .map(|n| format!(" — {n}"))
        .unwrap_or_default();
    let _ = writeln!(o, "  {marker} {}{name}  [{}]", s.id, tags.join(", "));
    if !s.needs.is_empty() {
        let _ = writeln!(o, "      needs:    {}", s.needs.join(", "));
    }
    if let Some(g) = &s.guard {
        let d = match g.decision {
            Decision::Runs => "runs (decided by params)",
            Decision::Skipped => "SKIPPED (decided by params)",
            Decision::AtRunTime => "decided at run time",
            Decision::Undecided => "undecided (reads a missing param)",
        };
        let _ = writeln!(o, "      when:     {} → {d}", g.when);
    }
    if !s.require.is_empty() {
        let _ = writeln!(o, "      require:");
        for c in &s.require {
            check(o, c, "        ");
        }
    }
    action_lines(o, &s.action, "      ");
    if let Some(a) = &s.assert {
        let _ = writeln!(o, "      succeeds when: {a}");
    }
    let retry = if s.retry.attempts > 1 {
        format!(
            "{} attempts, {} backoff from {} (max {})",
            s.retry.attempts, s.retry.backoff, s.retry.delay, s.retry.max_delay
        )
    } else if s.irreversible {
        "never retried (irreversible)".to_owned()
    } else {
        "no retry".to_owned()
    };
    let _ = writeln!(o, "      timeout:  {} · {retry}", s.timeout);
    if !s.verify.is_empty() {
        let _ = writeln!(o, "      verify:");
        for c in &s.verify {
            check(o, c, "        ");
        }
    }
    if let Some(c) = &s.compensate {
        let _ = writeln!(o, "      compensate:");
        action_lines(o, c, "        ");
        if let Some(n) = &s.compensation_note {
            let _ = writeln!(o, "        ({n})");
        }
    }
    let _ = writeln!(o, "      worst case: {}", s.worst_case);
}

fn action_lines(o: &mut String, lines: &[Line], indent: &str) {
    for l in lines {
        let mut first = true;
        for part in l.value.lines() {
            if first {
                let _ = writeln!(o, "{indent}{:<9} {part}", format!("{}:", l.label));
                first = false;
            } else {
                let _ = writeln!(o, "{indent}{:<9} {part}", "");
            }
        }
        if first {
            let _ = writeln!(o, "{indent}{}:", l.label);
        }
    }
}

fn check(o: &mut String, c: &PlannedCheck, indent: &str) {
    let name = c.name.as_ref().map(|n| format!(" {n}")).unwrap_or_default();
    let _ = writeln!(o, "{indent}-{name}");
    let inner = format!("{indent}  ");
    action_lines(o, &c.lines, &inner);
    if let Some(a) = &c.assert {
        let _ = writeln!(o, "{inner}assert:   {a}");
    }
    if let (Some(w), Some(i)) = (&c.within, &c.interval) {
        let _ = writeln!(o, "{inner}polled:   every {i} for up to {w}");
    }
}

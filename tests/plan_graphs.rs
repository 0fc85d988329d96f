//! Black-box tests of the plan graphs (`runbook plan --format dot|mermaid`, issue 21): steps
//! the params skip are drawn apart and leave the critical path and the worst case; `finally`,
//! names, guards, gates, retries and compensations are drawn; a legend; a plan with missing
//! params is still drawn (marked incomplete, never written as an executable plan); `--out`
//! says where it wrote.

mod support;

use serde_json::Value;
use support::{Runbook, TempDir};

/// Two branches after `start`: the slow one (two hours) is skipped when `mode` is `fast`.
const BRANCHES: &str = r#"runbook: branches
description: a slow branch the params can skip
objectives:
  rto: 10m
on_failure: rollback
params:
  mode:
    type: enum
    values: [fast, slow]
    default: fast
  target:
    type: string
    description: the host to switch
steps:
  - id: start
    name: Look at the system
    run: "true"
    timeout: 10s
  - id: slow-path
    needs: [start]
    when: "params.mode == 'slow'"
    run: "true"
    timeout: 1h
    compensate:
      run: "true"
  - id: slow-after
    needs: [slow-path]
    when: "params.mode == 'slow'"
    run: "true"
    timeout: 1h
    compensate:
      run: "true"
  - id: fast-path
    name: Switch over
    needs: [start]
    run: echo switch {{ params.target }}
    timeout: 1m
    retry:
      attempts: 3
      delay: 1s
    verify:
      - run: "true"
    compensate:
      run: echo switch back {{ params.target }}
  - id: end
    needs: [slow-after, fast-path]
    when: "params.target != 'none'"
    run: "true"
    timeout: 10s
    compensate:
      run: "true"
finally:
  - id: cleanup
    run: "true"
    timeout: 5s
"#;

fn plan(file: &std::path::Path, format: &str, params: &[(&str, &str)]) -> support::RunOutput {
    let mut rb = Runbook::new([
        "plan".to_owned(),
        file.display().to_string(),
        "--format".to_owned(),
        format.to_owned(),
    ]);
    for (k, v) in params {
        rb = rb.param(k, v);
    }
    rb.run()
}

/// The worst case of one planned step, by id.
fn worst(plan: &Value, id: &str) -> u64 {
    plan["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(plan["finally"].as_array().into_iter().flatten())
        .find(|s| s["id"] == id)
        .and_then(|s| s["worst_case_ms"].as_u64())
        .unwrap_or_else(|| panic!("no step {id} in {plan}"))
}

#[test]
fn skipped_steps_leave_the_critical_path_and_the_worst_case() {
    let dir = TempDir::new("graphs-skip");
    let file = dir.write("branches.yaml", BRANCHES);
    let out = plan(&file, "json", &[("target", "db1")]);
    out.assert_code(0);
    let p: Value = serde_json::from_str(&out.stdout).expect("plan JSON");
    let path: Vec<&str> = p["summary"]["critical_path"]
        .as_array()
        .expect("critical path")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(path, ["start", "fast-path", "end"], "{}", out.stdout);
    let expected =
        worst(&p, "start") + worst(&p, "fast-path") + worst(&p, "end") + worst(&p, "cleanup");
    assert_eq!(
        p["summary"]["worst_case_ms"].as_u64(),
        Some(expected),
        "the skipped two hours are not counted\n{}",
        out.stdout
    );
    // Under the RTO now: no warning about exceeding it.
    assert!(!out.stdout.contains("exceeds the RTO"), "{}", out.stdout);
    // With the slow branch on, it is the critical path again.
    let slow = plan(&file, "json", &[("target", "db1"), ("mode", "slow")]);
    slow.assert_code(0);
    let p: Value = serde_json::from_str(&slow.stdout).expect("plan JSON");
    assert_eq!(
        p["summary"]["critical_path"],
        serde_json::json!(["start", "slow-path", "slow-after", "end"])
    );
    let text = plan(&file, "text", &[("target", "db1")]);
    assert!(
        text.stdout
            .contains("critical path:  start → fast-path → end\n"),
        "{}",
        text.dump()
    );
}

#[test]
fn dot_draws_skipped_steps_finally_details_and_a_legend() {
    let dir = TempDir::new("graphs-dot");
    let file = dir.write("branches.yaml", BRANCHES);
    let out = plan(&file, "dot", &[("target", "db1")]);
    out.assert_code(0);
    let dot = &out.stdout;
    let node = |id: &str| {
        dot.lines()
            .find(|l| l.trim_start().starts_with(&format!("\"{id}\" [")))
            .unwrap_or_else(|| panic!("no node {id}\n{dot}"))
            .to_owned()
    };
    for skipped in ["slow-path", "slow-after"] {
        let n = node(skipped);
        assert!(n.contains("style=dashed"), "{n}");
        assert!(n.contains("grey"), "{n}");
        assert!(n.contains("SKIPPED by params"), "{n}");
    }
    let fast = node("fast-path");
    for part in [
        "Switch over",
        "run · mutates",
        "gates: verify ×1",
        "retry: 3 attempts",
        "↺ compensate: run",
    ] {
        assert!(fast.contains(part), "`{part}` missing from {fast}");
    }
    assert!(!fast.contains("dashed"), "{fast}");
    assert!(node("end").contains(r"when params.target != 'none' → runs"));
    // `finally` as in Mermaid: in its own box, hung below the last main step.
    assert!(dot.contains("subgraph cluster_finally {"), "{dot}");
    assert!(
        dot.contains("\"end\" -> \"cleanup\" [style=dashed, label=\"finally\"];"),
        "{dot}"
    );
    // Edges into skipped steps are dashed; the critical path is drawn thick.
    assert!(
        dot.contains("\"start\" -> \"slow-path\" [style=dashed, color=grey60];"),
        "{dot}"
    );
    assert!(
        dot.contains("\"start\" -> \"fast-path\" [penwidth=3];"),
        "{dot}"
    );
    assert!(dot.contains("subgraph cluster_legend {"), "{dot}");
    assert!(dot.contains("skipped by params"), "{dot}");
    insta::assert_snapshot!("branches_dot", dot);
}

#[test]
fn mermaid_draws_skipped_steps_details_and_a_legend() {
    let dir = TempDir::new("graphs-mermaid");
    let file = dir.write("branches.yaml", BRANCHES);
    let out = plan(&file, "mermaid", &[("target", "db1")]);
    out.assert_code(0);
    let m = &out.stdout;
    assert!(m.contains("  class s_slow_path skipped\n"), "{m}");
    assert!(m.contains("  class s_slow_after skipped\n"), "{m}");
    assert!(m.contains("  s_start -.-> s_slow_path\n"), "{m}");
    assert!(m.contains("  s_end -.->|finally| s_cleanup\n"), "{m}");
    assert!(m.contains("Switch over"), "{m}");
    // Quotes and comparison operators of guards are entity codes, not broken markup.
    assert!(m.contains("when params.target != 'none' → runs"), "{m}");
    assert!(m.contains("subgraph _legend [\"legend\"]"), "{m}");
    insta::assert_snapshot!("branches_mermaid", m);
}

#[test]
fn labels_cannot_break_out_of_dot_or_mermaid() {
    let dir = TempDir::new("graphs-quote");
    let file = dir.write(
        "quote.yaml",
        r#"runbook: 'say "hi" \ there'
steps:
  - id: a
    name: 'a "quoted" <b>name</b> \ here'
    run: "true"
"#,
    );
    let dot = plan(&file, "dot", &[]);
    dot.assert_code(0);
    assert!(
        dot.stdout
            .starts_with("digraph \"say \\\"hi\\\" \\\\ there\" {\n"),
        "{}",
        dot.stdout
    );
    assert!(
        dot.stdout.contains(r#"a \"quoted\" <b>name</b> \\ here"#),
        "{}",
        dot.stdout
    );
    let m = plan(&file, "mermaid", &[]);
    m.assert_code(0);
    assert!(
        m.stdout
            .contains("a #quot;quoted#quot; #lt;b#gt;name#lt;/b#gt; \\ here"),
        "{}",
        m.stdout
    );
}

#[test]
fn a_plan_with_missing_params_is_drawn_incomplete_and_never_written() {
    let dir = TempDir::new("graphs-missing");
    let file = dir.write("branches.yaml", BRANCHES);
    let out_file = dir.join("plan.json");
    let out = Runbook::new([
        "plan".to_owned(),
        file.display().to_string(),
        "--format".to_owned(),
        "dot".to_owned(),
        "--out".to_owned(),
        out_file.display().to_string(),
    ])
    .run();
    // Still an error for scripts (a param is missing), but the reviewer gets the graph.
    out.assert_code(2);
    assert!(
        out.stdout.starts_with("digraph \"branches\" {"),
        "{}",
        out.dump()
    );
    assert!(
        out.stdout.contains("INCOMPLETE — missing params: target"),
        "{}",
        out.dump()
    );
    // The guard that reads the missing param is not decided (a placeholder is not a value).
    assert!(
        out.stdout
            .contains("when params.target != 'none' → undecided: param missing"),
        "{}",
        out.dump()
    );
    assert!(
        out.stderr.contains("missing required param `target`"),
        "{}",
        out.dump()
    );
    assert!(
        out.stderr.contains("not writing") && out.stderr.contains("incomplete"),
        "{}",
        out.dump()
    );
    assert!(
        !out_file.exists(),
        "an incomplete plan must never be executable"
    );

    let text = plan(&file, "text", &[]);
    text.assert_code(2);
    assert!(
        text.stdout.contains("echo switch ⟨params.target⟩"),
        "{}",
        text.dump()
    );
    assert!(text.stdout.contains("INCOMPLETE"), "{}", text.dump());
    let json = plan(&file, "json", &[]);
    let p: Value = serde_json::from_str(&json.stdout).expect("plan JSON");
    assert_eq!(p["missing_params"], serde_json::json!(["target"]));

    // Any other problem with the params is refused as before: nothing drawn.
    let bad = plan(&file, "dot", &[("mode", "medium")]);
    bad.assert_code(2);
    assert!(bad.stdout.is_empty(), "{}", bad.dump());
}

#[test]
fn out_says_where_it_wrote() {
    let dir = TempDir::new("graphs-out");
    let file = dir.write("branches.yaml", BRANCHES);
    let out_file = dir.join("reviewed.json");
    let out = Runbook::plan(&file, &out_file).param("target", "db1").run();
    out.assert_code(0);
    assert!(out_file.exists());
    let shown = out_file.display().to_string();
    assert!(
        out.stderr.contains(&format!(
            "plan written to {shown} — execute exactly this plan with `runbook exec --plan {shown}`"
        )),
        "{}",
        out.dump()
    );
}

//! `--message-format short` on problems with the params given (`-p`): every line carries the
//! `file:line:col` of the param it is about, like the diagnostics of the runbook itself.

mod support;

use support::{Runbook, TempDir};

const RUNBOOK: &str = "runbook: params-short
params:
  env:
    type: enum
    values: [staging, production]
  replicas:
    type: int
  region:
    type: string
steps:
  - id: deploy
    run: echo {{ params.env }} {{ params.replicas }} {{ params.region }}
";

#[test]
fn every_param_diagnostic_has_a_position_in_short_format() {
    let dir = TempDir::new("params-short");
    let rb = dir.write("params.yaml", RUNBOOK);
    let name = rb.display().to_string();
    let out = Runbook::new([
        "--message-format".to_owned(),
        "short".to_owned(),
        "plan".to_owned(),
        name.clone(),
    ])
    .param("env", "prod")
    .param("replicas", "three")
    .param("regoin", "eu")
    .run();
    out.assert_code(2);
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with(&name))
        .collect();
    // A bad enum value, a bad int, an unknown param, missing required ones (the two with bad
    // values count as missing too).
    assert_eq!(lines.len(), 6, "{}", out.dump());
    // Each is placed at its param's declaration (the unknown one at the first declared param).
    for (want, line) in [
        ("invalid value for param `env`", 4),
        ("invalid value for param `replicas`", 7),
        ("unknown param `regoin`", 4),
        ("missing required param `region`", 9),
    ] {
        let found = lines
            .iter()
            .find(|l| l.contains(want))
            .unwrap_or_else(|| panic!("no `{want}`\n{}", out.dump()));
        assert!(
            found.starts_with(&format!("{name}:{line}:5: ")),
            "`{want}` is placed at its param's declaration ({line}:5): {found}\n{}",
            out.dump()
        );
    }
}

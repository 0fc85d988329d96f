//! No panic, no hang, no exhaustion on any input: each input that once panicked, hung or
//! aborted gets a clear error with its documented exit code, in bounded time; terminal control
//! characters from runbooks and command output never reach the terminal raw.

mod support;

use std::fmt::Write as _;
use std::time::Duration;

use support::{RunOutput, Runbook, TempDir};

/// Exit code of invalid input (`runbook --help` documents it).
const INVALID: i32 = 2;

/// The process ended on its own with `code`, in time, printed no panic, and said `says`.
#[track_caller]
fn assert_clear_error(out: &RunOutput, code: i32, says: &[&str], within: Duration) {
    out.assert_code(code);
    assert!(
        !out.stderr.contains("panicked") && !out.stdout.contains("panicked"),
        "panicked\n{}",
        out.dump()
    );
    assert!(
        !out.stderr.contains("BudgetBreach") && !out.stderr.contains(" { "),
        "a debug struct instead of a message\n{}",
        out.dump()
    );
    for s in says {
        assert!(
            out.stderr.contains(s),
            "the error does not say {s:?}\n{}",
            out.dump()
        );
    }
    assert!(
        out.elapsed < within,
        "took {:?} (limit {within:?})\n{}",
        out.elapsed,
        out.dump()
    );
}

fn plan(dir: &TempDir, name: &str, yaml: &str) -> RunOutput {
    let rb = dir.write(name, yaml);
    // One line per problem: messages are not wrapped.
    Runbook::new(["plan".to_owned(), rb.display().to_string()])
        .arg("--message-format")
        .arg("short")
        .run()
}

#[test]
fn a_huge_timeout_with_retries_is_a_located_error_in_plan() {
    let dir = TempDir::new("hostile-duration");
    let out = plan(
        &dir,
        "huge.yaml",
        "runbook: huge\nsteps:\n  - id: a\n    run: 'true'\n    timeout: 18446744073709551615ms\n    retry: {attempts: 5, delay: 18446744073709551615ms}\n",
    );
    assert_clear_error(
        &out,
        INVALID,
        &["huge.yaml:5:14", "too long", "3650d"],
        Duration::from_secs(10),
    );
}

#[test]
fn worst_cases_that_overflow_when_summed_are_refused() {
    let dir = TempDir::new("hostile-worst");
    let steps = (0..20).fold(String::new(), |mut s, i| {
        let _ = write!(
            s,
            "  - id: s{i}\n    run: 'true'\n    timeout: 3650d\n    retry: {{attempts: 4294967295, delay: 3650d, max_delay: 3650d}}\n"
        );
        s
    });
    let yaml = format!("runbook: sum\nsteps:\n{steps}");
    let out = plan(&dir, "sum.yaml", &yaml);
    assert_clear_error(
        &out,
        INVALID,
        &["sum.yaml:1:", "worst case", "too long to compute"],
        Duration::from_secs(10),
    );
    // Many attempts alone are fine, and planned quickly (the sum of delays is not a loop).
    let out = plan(
        &dir,
        "many.yaml",
        "runbook: many\nsteps:\n  - id: a\n    run: 'true'\n    timeout: 1s\n    retry: {attempts: 4294967295, delay: 1s, max_delay: 1m}\n",
    );
    out.assert_code(0);
    assert!(out.elapsed < Duration::from_secs(10), "{}", out.dump());
}

#[test]
fn template_loops_and_string_multiplication_run_out_of_fuel() {
    let dir = TempDir::new("hostile-fuel");
    for (name, template) in [
        ("mult.yaml", "{{ 'x' * 99999999 }}"),
        (
            "loops.yaml",
            "{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}",
        ),
        (
            "concat.yaml",
            "{% set s = namespace(v='xxxxxxxxxxxxxxxx') %}{% for i in range(60) %}{% set s.v = s.v ~ s.v %}{% endfor %}{{ s.v }}",
        ),
    ] {
        let out = plan(
            &dir,
            name,
            &format!("runbook: fuel\nsteps:\n  - id: a\n    run: echo \"{template}\"\n"),
        );
        assert!(
            out.code == Some(0) || out.code == Some(INVALID),
            "{}",
            out.dump()
        );
        assert!(!out.stderr.contains("panicked"), "{}", out.dump());
        assert!(
            out.elapsed < Duration::from_secs(15),
            "{name}: {:?}\n{}",
            out.elapsed,
            out.dump()
        );
        assert!(
            out.stdout.len() + out.stderr.len() < 1 << 20,
            "{name}: printed {} bytes",
            out.stdout.len() + out.stderr.len()
        );
        // At run time too: the step fails with a clear error instead of hanging.
        let rb = dir.join(name);
        let out = Runbook::exec(&rb).json().run();
        assert!(!out.stderr.contains("panicked"), "{}", out.dump());
        assert!(out.elapsed < Duration::from_secs(15), "{}", out.dump());
        assert!(
            out.code == Some(1) || out.code == Some(INVALID),
            "{}",
            out.dump()
        );
        assert!(
            (out.stdout + &out.stderr).contains("fuel"),
            "{name}: the error names the budget that ran out"
        );
    }
}

#[test]
fn call_fan_out_stops_at_the_run_step_budget() {
    let dir = TempDir::new("hostile-fanout");
    let steps = (0..100).fold(String::new(), |mut s, i| {
        let _ = write!(s, "  - id: c{i}\n    call: {{runbook: fan.yaml}}\n");
        s
    });
    let yaml = format!("runbook: fan\nsteps:\n{steps}");
    let rb = dir.write("fan.yaml", &yaml);
    // Without a journal: this is about the budget, not about fsync speed.
    let out = Runbook::exec(&rb).json().arg("--no-journal").run();
    out.assert_code(1);
    assert!(!out.stderr.contains("panicked"), "{}", out.dump());
    assert!(
        out.stdout.contains("limited to 10000 steps"),
        "the failing call names the budget\n{}",
        out.dump()
    );
    let started = out.of("step_started").len();
    assert!(started <= 10_000, "{started} steps started");
    assert!(out.elapsed < Duration::from_secs(20), "{:?}", out.elapsed);
}

#[test]
fn drill_due_at_with_non_ascii_or_huge_times_is_an_error() {
    let dir = TempDir::new("hostile-due");
    let drill = dir.write(
        "d.yaml",
        "drill: d\nschedule: \"0 10 1 * *\"\nscenarios:\n  - {name: a, runbook: r.yaml}\n",
    );
    dir.write("r.yaml", "runbook: r\nsteps:\n  - id: a\n    run: 'true'\n");
    for at in [
        "2027-01-02T00:00:00+1é1",
        "2027-01-02T00:00:00+ééé",
        "２０２７-01-02T00:00:00Z",
        "2027-01-02T00:00:00.ééé",
        "1e300",
        "-1e300",
        "99999999999999999999",
        "\u{1b}]0;title\u{7}",
    ] {
        let out = Runbook::new([
            "drill".to_owned(),
            "due".to_owned(),
            drill.display().to_string(),
            format!("--at={at}"),
        ])
        .run();
        assert_clear_error(&out, INVALID, &["--at"], Duration::from_secs(10));
        assert!(!out.stderr.contains('\u{1b}'), "{}", out.dump());
    }
}

#[test]
fn crafted_plan_files_are_errors() {
    let dir = TempDir::new("hostile-plan");
    let rb = dir.write("r.yaml", "runbook: r\nsteps:\n  - id: a\n    run: 'true'\n");
    let good = dir.join("good.json");
    Runbook::plan(&rb, &good).run().assert_code(0);
    let text = std::fs::read_to_string(&good).expect("plan written");
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("plan is json");
    let mut crafted = vec![
        ("garbage", "\u{0}\u{1}not json at all é".to_owned()),
        ("empty", String::new()),
        ("wrong shape", "{\"format\": 1}".to_owned()),
        ("array", "[1, 2, 3]".to_owned()),
        ("deep", "[".repeat(100_000)),
    ];
    v["runbook_hash"] = serde_json::json!("ééééééééééééééééé");
    crafted.push(("non-ascii hash", v.to_string()));
    v["runbook_hash"] = serde_json::json!("");
    crafted.push(("empty hash", v.to_string()));
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["format"] = serde_json::json!(99);
    crafted.push(("future format", v.to_string()));
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["file"] = serde_json::json!("");
    crafted.push(("no file", v.to_string()));
    for (what, body) in crafted {
        let p = dir.write("crafted.json", &body);
        let out = Runbook::exec_plan(&p).run();
        assert_clear_error(
            &out,
            INVALID,
            &["failed to read the plan"],
            Duration::from_secs(10),
        );
        assert!(out.stderr.contains("help:"), "{what}\n{}", out.dump());
    }
}

#[test]
fn audit_export_since_out_of_range_is_an_error() {
    let state = TempDir::new("hostile-since");
    for since in [
        "999999999999999-01-01",
        "-999999999999999-01-01",
        "2027-13-01",
        "2027-01-99",
        "1é-01-01",
    ] {
        let out = Runbook::new([
            "audit".to_owned(),
            "export".to_owned(),
            format!("--since={since}"),
        ])
        .env("RUNBOOK_STATE_DIR", &state.str())
        .run();
        assert_clear_error(&out, INVALID, &["--since"], Duration::from_secs(10));
    }
    // The largest millisecond value is a valid (empty) query, not an overflow.
    let out = Runbook::new([
        "audit".to_owned(),
        "export".to_owned(),
        "--since".to_owned(),
        i64::MAX.to_string(),
    ])
    .env("RUNBOOK_STATE_DIR", &state.str())
    .run();
    out.assert_code(0);
    assert!(!out.stderr.contains("panicked"), "{}", out.dump());
}

#[test]
fn yaml_limits_are_named_in_plain_words() {
    let dir = TempDir::new("hostile-yaml");
    let many = format!(
        "runbook: big\nsteps:\n  - id: a\n    run: 'true'\n    env: {{{}}}\n",
        (0..130_000)
            .map(|i| format!("k{i}: v"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let out = plan(&dir, "big.yaml", &many);
    assert_clear_error(
        &out,
        INVALID,
        &["limited to 250000 YAML nodes"],
        Duration::from_secs(20),
    );
    let deep = format!(
        "runbook: deep\nsteps:\n  - id: a\n    run: 'true'\n    env: {}{}\n",
        "{a: ".repeat(200),
        "}".repeat(200)
    );
    let out = plan(&dir, "deep.yaml", &deep);
    out.assert_code(INVALID);
    assert!(!out.stderr.contains("panicked"), "{}", out.dump());
    assert!(
        out.stderr.contains("levels of nesting") || out.stderr.contains("nest"),
        "{}",
        out.dump()
    );
}

#[test]
fn terminal_control_characters_are_made_visible() {
    let dir = TempDir::new("hostile-tty");
    // A window-title escape in the runbook name, a param, a step id and the command's output.
    let rb = dir.write(
        "tty.yaml",
        "runbook: \"t\\e]0;NAME\\a\"\nparams:\n  p: {type: string, default: \"\\e]0;PARAM\\a\"}\nsteps:\n  - id: s\n    run: printf '\\033]0;OUTPUT\\007\\233\\n'; echo {{ params.p }}\n",
    );
    let state = TempDir::new("hostile-tty-state");
    for mode in ["plain", "tty"] {
        let out = Runbook::exec(&rb)
            .env("RUNBOOK_STATE_DIR", &state.str())
            .arg("--output")
            .arg(mode)
            .run();
        assert!(!out.stderr.contains("panicked"), "{}", out.dump());
        for (name, bytes) in [("stdout", &out.stdout_raw), ("stderr", &out.stderr_raw)] {
            assert!(
                !bytes.contains(&0x1b) && !bytes.contains(&0x07),
                "{mode}: a raw control character reached {name}\n{}",
                out.dump()
            );
            assert!(
                !String::from_utf8_lossy(bytes).contains('\u{9b}'),
                "{mode}: a raw C1 control reached {name}"
            );
        }
        // Without a terminal the progress lines are hidden; plain mode shows them all.
        if mode == "plain" {
            assert!(
                out.stdout.contains(r"\u{1b}]0;OUTPUT\u{7}"),
                "the output is shown, escaped\n{}",
                out.dump()
            );
            assert!(out.stdout.contains(r"t\u{1b}]0;NAME"), "{}", out.dump());
        }
    }
    // What was journaled is shown escaped too.
    let runs = Runbook::new(["runs".to_owned()])
        .env("RUNBOOK_STATE_DIR", &state.str())
        .run();
    runs.assert_code(0);
    assert!(!runs.stdout_raw.contains(&0x1b), "{}", runs.dump());
    let id = runs
        .stdout
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .expect("a run is listed")
        .to_owned();
    for cmd in ["logs", "show"] {
        let out = Runbook::new([cmd.to_owned(), id.clone()])
            .env("RUNBOOK_STATE_DIR", &state.str())
            .run();
        out.assert_code(0);
        assert!(
            !out.stdout_raw.contains(&0x1b) && !out.stdout_raw.contains(&0x07),
            "{cmd}: a raw control character\n{}",
            out.dump()
        );
        let shown = if cmd == "logs" {
            r"\u{1b}]0;OUTPUT"
        } else {
            r"t\u{1b}]0;NAME"
        };
        assert!(out.stdout.contains(shown), "{cmd}\n{}", out.dump());
    }
    let out = Runbook::new(["plan".to_owned(), rb.display().to_string()]).run();
    out.assert_code(0);
    assert!(!out.stdout_raw.contains(&0x1b), "{}", out.dump());
    assert!(out.stdout.contains(r"\u{1b}]0;PARAM"), "{}", out.dump());
}

//! Fuzzing the parsers: arbitrary bytes and mutated real files fed to the runbook parser and
//! compiler (and the planner, when a mutant still compiles), the drill parser and its cron
//! schedules, the triggers parser, and the `exec --plan` file reader. None may panic, and each
//! input must be handled in bounded time.
//!
//! The normal suite runs a few hundred cases per target (seconds); `just fuzz` runs them for as
//! long as `PROPTEST_CASES` asks (see the README for what was run, and for how long).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::Config;

/// Cases per target when `PROPTEST_CASES` is not set: small enough for the normal suite.
const DEFAULT_CASES: u32 = 150;
/// Longest one input may take (parse, compile, plan): a hang is a failure.
const PER_INPUT: Duration = Duration::from_secs(5);

fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    Config {
        cases,
        ..Config::default()
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn seed(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).expect("read seed file")
}

/// One edit of a text: insert, delete or replace a run of characters at a position.
#[derive(Debug, Clone)]
enum Edit {
    Insert(usize, String),
    Delete(usize, usize),
    Replace(usize, usize, String),
}

/// Text fragments that reach deep into the parsers and templates.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        Just("{{ ".to_owned()),
        Just(" }}".to_owned()),
        Just(
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"
                .to_owned()
        ),
        Just("{{ 'x' * 99999999 }}".to_owned()),
        Just("18446744073709551615ms".to_owned()),
        Just("3650d".to_owned()),
        Just("\n  - id: z\n    run: true\n".to_owned()),
        Just("&a [*a, *a]".to_owned()),
        Just("[[[[[[[[[[[[[[[[[[[[".to_owned()),
        Just("\u{1b}]0;t\u{7}".to_owned()),
        Just("é".to_owned()),
        Just("attempts: 4294967295".to_owned()),
        Just("\t".to_owned()),
        Just(": ".to_owned()),
        Just("- ".to_owned()),
        "[ -~]{0,12}",
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), fragment()).prop_map(|(at, s)| Edit::Insert(at, s)),
        (any::<usize>(), 0usize..40).prop_map(|(at, n)| Edit::Delete(at, n)),
        (any::<usize>(), 0usize..20, fragment()).prop_map(|(at, n, s)| Edit::Replace(at, n, s)),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for e in edits {
        let len = chars.len();
        match e {
            Edit::Insert(at, s) => {
                let at = at % (len + 1);
                chars.splice(at..at, s.chars());
            }
            Edit::Delete(at, n) => {
                let at = at % (len + 1);
                let end = (at + n).min(len);
                chars.drain(at..end);
            }
            Edit::Replace(at, n, s) => {
                let at = at % (len + 1);
                let end = (at + n).min(len);
                chars.splice(at..end, s.chars());
            }
        }
    }
    chars.into_iter().collect()
}

/// Arbitrary input: raw bytes (decoded lossily, as a file read would fail otherwise), or a real
/// file with a few edits.
fn input(seeds: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        (
            proptest::sample::select(seeds),
            proptest::collection::vec(edit(), 1..6)
        )
            .prop_map(|(path, edits)| apply(&seed(path), &edits)),
    ]
}

#[track_caller]
fn bounded(what: &str, text: &str, f: impl FnOnce()) {
    let start = Instant::now();
    f();
    let took = start.elapsed();
    assert!(
        took < PER_INPUT,
        "{what} took {took:?} on this input:\n{text:?}"
    );
}

/// Parse, compile and (when it compiles with default params) plan a runbook.
fn runbook_pipeline(text: &str) {
    let dir = root().join("runbooks");
    let file = runbook::diagnostic::SourceFile::new("fuzz.yaml", text);
    if let Ok(c) = runbook::compile::compile(file, &dir.join("fuzz.yaml"))
        && let Ok(params) =
            runbook::compile::resolve_params(&c.runbook, &[], &std::collections::BTreeMap::new())
        && let Ok(plan) = runbook::plan::build(&c, &params)
    {
        let _ = runbook::plan::text(&plan);
        let _ = runbook::plan::mermaid(&plan);
        let _ = runbook::plan::dot(&plan);
        let json = serde_json::to_string(&plan).unwrap_or_default();
        let _ = runbook::plan::read(&json);
    }
}

const RUNBOOK_SEEDS: &[&str] = &[
    "runbooks/example.yaml",
    "runbooks/dr-failover.yaml",
    "runbooks/app-rollback.yaml",
    "runbooks/migration-restore.yaml",
];
const DRILL_SEEDS: &[&str] = &["drills/quarterly.yaml", "tests/drills/recover.yaml"];
const TRIGGER_SEEDS: &[&str] = &["tests/serve/approval.yaml", "tests/serve/hold.yaml"];

proptest! {
    #![proptest_config(config())]

    #[test]
    fn runbook_parser_and_compiler_never_panic(text in input(RUNBOOK_SEEDS)) {
        bounded("compile + plan", &text, || runbook_pipeline(&text));
    }

    #[test]
    fn drill_parser_never_panics(text in input(DRILL_SEEDS)) {
        bounded("drill parse", &text, || {
            let path = root().join("drills/fuzz.yaml");
            let file = runbook::diagnostic::SourceFile::new("fuzz.yaml", text.as_str());
            if let Ok(loaded) = runbook::drill::compose::from_source(file, &path) {
                for s in &loaded.drill.scenarios {
                    if let Some(sched) = runbook::drill::compose::schedule_of(&loaded.drill, &s.value)
                        && let Ok(p) = runbook::drill::cron::Schedule::parse(&sched.value)
                    {
                        let _ = p.next_after(0);
                        let _ = p.next_after(253_402_300_799_999);
                    }
                }
                let _ = runbook::drill::compose::validate(&loaded);
            }
        });
    }

    #[test]
    fn cron_schedules_never_panic(text in prop_oneof![
        any::<String>(),
        "[0-9*/,a-z -]{0,40}",
    ], at in any::<i64>()) {
        bounded("cron", &text, || {
            if let Ok(s) = runbook::drill::cron::Schedule::parse(&text) {
                // Instants a drill can ask about (years 0 to 9999).
                let at = at.rem_euclid(253_402_300_799_999);
                let _ = s.next_after(at);
            }
        });
    }

    #[test]
    fn triggers_parser_never_panics(text in input(TRIGGER_SEEDS)) {
        bounded("triggers load", &text, || {
            // `load` reads a file and resolves runbooks relative to it: write next to the seeds.
            let path = std::env::temp_dir().join(format!(
                "runbook-fuzz-triggers-{}-{:?}.yaml",
                std::process::id(),
                std::thread::current().id()
            ));
            std::fs::write(&path, &text).expect("write triggers");
            let _ = runbook::serve::triggers::load(&path);
            let _ = std::fs::remove_file(&path);
        });
    }

    #[test]
    fn plan_file_reader_never_panics(text in prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        (proptest::collection::vec(edit(), 1..6)).prop_map(|edits| apply(&plan_seed(), &edits)),
    ]) {
        bounded("plan read", &text, || {
            let _ = runbook::plan::read(&text);
        });
    }
}

/// A real saved plan to mutate.
fn plan_seed() -> String {
    static PLAN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PLAN.get_or_init(|| {
        let path = root().join("runbooks/example.yaml");
        let c = runbook::compile::compile_path(&path).expect("example compiles");
        let params =
            runbook::compile::resolve_params(&c.runbook, &[], &std::collections::BTreeMap::new())
                .expect("example has defaults");
        let plan = runbook::plan::build(&c, &params).expect("example plans");
        serde_json::to_string_pretty(&plan).expect("plan json")
    })
    .clone()
}

#[test]
fn the_plan_seed_is_read_back() {
    assert!(runbook::plan::read(&plan_seed()).is_ok());
}

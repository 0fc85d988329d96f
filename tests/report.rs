//! `runbook report`: post-incident and drill reports built from real runs of the binary.
//!
//! Markdown reports are snapshotted (times, ids and durations filtered); the HTML report is
//! opened in headless Chromium, screenshotted and its DOM checked; `JUnit` XML is parsed by
//! Python's XML parser; every format is checked for secrets.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::{RunOutput, Runbook, TempDir};

const INCIDENT: &str = "tests/report/incident.yaml";
const SECRET_TOKEN: &str = "tok-SUPERSECRET-4242";
const SECRET_KEY: &str = "key-HUSH-9191";

/// The OS account running the tests: the engine records approvals under it (`--approver` and
/// `--as` are display names next to it).
fn account() -> String {
    let out = Command::new("id").arg("-un").output().expect("id -un");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A state directory shared by the runs and the reports of one test.
struct Env {
    state: TempDir,
    scratch: TempDir,
}

impl Env {
    fn new(tag: &str) -> Self {
        Self {
            state: TempDir::new(&format!("report-state-{tag}")),
            scratch: TempDir::new(&format!("report-dir-{tag}")),
        }
    }

    fn cmd(&self, r: Runbook) -> Runbook {
        r.env("RUNBOOK_STATE_DIR", &self.state.str())
            .env("USER", "oncall")
            .env("REPORT_API_KEY", SECRET_KEY)
            .cwd(root())
    }

    /// Run the incident fixture; returns its run id.
    fn exec(&self, extra: &[(&str, &str)], code: i32) -> String {
        let mut r = Runbook::exec(INCIDENT)
            .dir(&self.scratch)
            .param("token", SECRET_TOKEN)
            .yes()
            .arg("--approver")
            .arg("alice")
            .json();
        for (k, v) in extra {
            r = r.param(k, v);
        }
        let out = self.cmd(r).run();
        out.assert_code(code);
        out.of("run_started")[0]["run_id"]
            .as_str()
            .expect("run id")
            .to_owned()
    }

    fn report(&self, run_id: &str, format: &str) -> RunOutput {
        self.cmd(Runbook::new([
            "report".to_owned(),
            run_id.to_owned(),
            "--format".to_owned(),
            format.to_owned(),
        ]))
        .run()
    }

    fn report_ok(&self, run_id: &str, format: &str) -> String {
        let out = self.report(run_id, format);
        out.assert_code(0);
        out.stdout
    }

    fn json(&self, run_id: &str) -> Value {
        serde_json::from_str(&self.report_ok(run_id, "json")).expect("JSON report")
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// Filters that make a report stable: times, run ids, durations, shares and temp paths.
fn stable(md: &str, env: &Env) -> String {
    let mut s = md.replace(&env.scratch.str(), "[DIR]");
    let host = hostname();
    if !host.is_empty() {
        s = s.replace(&format!("@{host}"), "@[HOST]");
    }
    let rules: &[(&str, &str)] = &[
        (r"\d{8}-\d{6}-[0-9a-f]{6}", "[RUN_ID]"),
        (r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z", "[TIME]"),
        (r"\b\d{2}:\d{2}:\d{2}\.\d{3}\b", "[HH:MM:SS]"),
        (r"\(\d{4}-\d{2}-\d{2}\)", "([DATE])"),
        (r"\b\d+(\.\d)?(ms|s)\b", "[DUR]"),
        (r"\b\d+\.\d %", "[PCT] %"),
    ];
    for (re, with) in rules {
        s = regex::Regex::new(re)
            .expect("filter regex")
            .replace_all(&s, *with)
            .into_owned();
    }
    s
}

/// Parallel branches start in the same instant, in either order: show them in file order.
fn file_order(md: &str, first: &str, second: &str) -> String {
    let mut lines: Vec<&str> = md.lines().collect();
    let row = |id: &str| format!("| `{id}`");
    let a = lines.iter().position(|l| l.starts_with(&row(first)));
    let b = lines.iter().position(|l| l.starts_with(&row(second)));
    if let (Some(a), Some(b)) = (a, b)
        && b < a
    {
        lines.swap(a, b);
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

fn steps_of(report: &Value) -> Vec<String> {
    report["sections"][0]["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .map(|e| {
            let step = e["step"].as_str().expect("step");
            if e["kind"] == "compensation" {
                format!("undo {step}")
            } else {
                step.to_owned()
            }
        })
        .collect()
}

fn entry<'a>(report: &'a Value, step: &str, kind: &str) -> &'a Value {
    report["sections"][0]["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .find(|e| e["step"] == step && e["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} entry for {step}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().expect("string").to_owned())
        .collect()
}

#[test]
fn incident_report_of_a_successful_run() {
    let env = Env::new("ok");
    let id = env.exec(&[], 0);
    let report = env.json(&id);
    let section = &report["sections"][0];

    // Every step of the run, in order of start (the two branches after `approve` in either order).
    let mut steps = steps_of(&report);
    steps.sort();
    assert_eq!(
        steps,
        [
            "approve",
            "finish",
            "flaky",
            "gate",
            "notify",
            "prepare",
            "slow-branch"
        ]
    );
    // The retry, its back-off and the gate's polls are measured from the journal.
    let flaky = entry(&report, "flaky", "step");
    assert_eq!(flaky["attempts"], 2);
    assert!(
        flaky["retry_wait_ms"].as_u64().expect("wait") >= 75,
        "100ms ± 20 % jitter"
    );
    let gate = entry(&report, "gate", "step");
    assert_eq!(gate["polls"][0]["polls"], 2);
    assert!(gate["gate_wait_ms"].as_u64().expect("wait") >= 250);
    // The critical path follows `needs`: the slow branch, not the retried one, set the end.
    assert_eq!(
        strings(&section["critical_path"]),
        ["prepare", "approve", "slow-branch", "finish", "notify"]
    );
    assert_eq!(entry(&report, "flaky", "step")["critical"], false);
    assert_eq!(section["bottlenecks"][0]["step"], "slow-branch");
    // RTO actual is the run's duration, against the runbook's objective.
    let facts = &section["facts"];
    let duration = facts["finished_at_ms"].as_i64().expect("end")
        - facts["started_at_ms"].as_i64().expect("start");
    let rto = &section["objectives"][0];
    assert_eq!(rto["name"], "RTO");
    assert_eq!(rto["actual_ms"].as_i64(), Some(duration));
    assert_eq!(rto["target_ms"], 600_000);
    assert_eq!(rto["met"], true);
    assert_eq!(section["objectives"][1]["met"], Value::Null);
    // The approval, with who, how and its audit entry.
    let approval = &section["approvals"][0];
    assert_eq!(approval["approver"], account().as_str());
    assert_eq!(approval["via"], "--yes (as alice)");
    assert!(approval["audit_seq"].as_i64().is_some());
    assert_eq!(section["passed"], true);

    let md = env.report_ok(&id, "md");
    insta::assert_snapshot!(
        "incident_succeeded_md",
        stable(&file_order(&md, "flaky", "slow-branch"), &env)
    );
}

#[test]
fn incident_report_of_a_rolled_back_run() {
    let env = Env::new("rollback");
    let id = env.exec(&[("fail", "true")], 3);
    let report = env.json(&id);
    let section = &report["sections"][0];
    assert_eq!(section["facts"]["status"], "rolled_back");
    assert_eq!(section["passed"], false);
    assert_eq!(entry(&report, "finish", "step")["outcome"], "failed");
    // The compensation is a bar of its own, timed from its command to its end.
    let undo = entry(&report, "flaky", "compensation");
    assert_eq!(undo["outcome"], "compensated");
    assert!(undo["end_ms"].as_i64() >= undo["start_ms"].as_i64());
    assert!(
        !steps_of(&report).iter().any(|s| s.contains(":compensate")),
        "the compensation's pseudo-step is folded into its bar: {:?}",
        steps_of(&report)
    );
    assert_eq!(
        strings(&section["critical_path"]),
        [
            "prepare",
            "approve",
            "slow-branch",
            "finish",
            "undo flaky",
            "notify"
        ]
    );

    let md = env.report_ok(&id, "md");
    assert!(md.contains("❌ failed"), "{md}");
    insta::assert_snapshot!(
        "incident_rolled_back_md",
        stable(&file_order(&md, "flaky", "slow-branch"), &env)
    );
}

#[test]
fn report_by_unique_prefix_and_into_a_file() {
    let env = Env::new("prefix");
    let id = env.exec(&[], 0);
    let out_file = env.scratch.join("report.html");
    let out = env
        .cmd(Runbook::new([
            "report".to_owned(),
            id[..18].to_owned(),
            "--format".to_owned(),
            "html".to_owned(),
            "--out".to_owned(),
            out_file.to_str().expect("utf-8").to_owned(),
        ]))
        .run();
    out.assert_code(0);
    assert!(out.stdout.is_empty(), "the report went to the file");
    let html = std::fs::read_to_string(&out_file).expect("report written");
    assert!(html.contains(&id), "the prefix resolved to the run");
    // `markdown` is an alias of `md`.
    assert_eq!(env.report_ok(&id, "markdown"), env.report_ok(&id, "md"));
}

#[test]
fn secrets_reach_no_report_format() {
    let env = Env::new("secrets");
    let id = env.exec(&[("fail", "true")], 3);
    for format in ["md", "html", "json", "junit"] {
        let text = env.report_ok(&id, format);
        assert!(
            !text.contains(SECRET_TOKEN),
            "{format} leaks the secret param"
        );
        assert!(!text.contains(SECRET_KEY), "{format} leaks the secret");
        assert!(
            text.contains("token=***") || text.contains("\"token\": \"***\"") || format == "junit",
            "{format} shows the secret param masked"
        );
    }
}

/// A real PNG: signature, IHDR size, and its decoded pixels (Python's zlib, PNG filters undone)
/// must show the Gantt bars' colours.
const PNG_CHECK: &str = r"
import sys, zlib, struct
data = open(sys.argv[1], 'rb').read()
assert data[:8] == b'\x89PNG\r\n\x1a\n', 'not a PNG'
pos, idat, ihdr = 8, b'', None
while pos < len(data):
    n, kind = struct.unpack('>I4s', data[pos:pos+8])
    body = data[pos+8:pos+8+n]
    if kind == b'IHDR': ihdr = struct.unpack('>IIBBBBB', body)
    if kind == b'IDAT': idat += body
    pos += 12 + n
w, h, depth, ctype = ihdr[:4]
assert depth == 8 and ctype in (2, 6), ihdr
bpp = 3 if ctype == 2 else 4
raw = zlib.decompress(idat)
stride = w * bpp
prev = bytearray(stride)
colours = {}
i = 0
for y in range(h):
    f = raw[i]; line = bytearray(raw[i+1:i+1+stride]); i += 1 + stride
    for x in range(stride):
        a = line[x-bpp] if x >= bpp else 0
        b = prev[x]
        c = prev[x-bpp] if x >= bpp else 0
        if f == 1: line[x] = (line[x] + a) & 255
        elif f == 2: line[x] = (line[x] + b) & 255
        elif f == 3: line[x] = (line[x] + (a + b) // 2) & 255
        elif f == 4:
            p = a + b - c; pa, pb, pc = abs(p-a), abs(p-b), abs(p-c)
            line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    for x in range(0, stride, bpp * 2):
        px = bytes(line[x:x+3]); colours[px] = colours.get(px, 0) + 1
    prev = line
print(w, h, len(colours), colours.get(bytes.fromhex('2da44e'), 0), colours.get(bytes.fromhex('0b3d91'), 0))
";

fn chromium(args: &[&str], user_data: &TempDir) -> std::process::Output {
    let bin = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("Debian's chromium is required for this test (scripts/test installs it)");
    Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", user_data.str()))
        .args(args)
        .output()
        .expect("run chromium")
}

#[test]
fn html_report_renders_in_chromium() {
    let env = Env::new("html");
    let hostile = r#"<script>alert(1)</script>&"'"#;
    let id = env.exec(&[("fail", "true"), ("note", hostile)], 3);
    let report = env.json(&id);
    let html_path: PathBuf = env.scratch.join("report.html");
    let out = env
        .cmd(Runbook::new([
            "report".to_owned(),
            id.clone(),
            "--format".to_owned(),
            "html".to_owned(),
            "--out".to_owned(),
            html_path.to_str().expect("utf-8").to_owned(),
        ]))
        .run();
    out.assert_code(0);
    let html = std::fs::read_to_string(&html_path).expect("html");
    // Self-contained: no script, no external resource.
    assert!(!html.contains("<script"), "hostile text must be escaped");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;&amp;&quot;&#39;"));
    assert!(
        html.contains("&lt;]]&gt;&amp;|&#39;"),
        "the failed assert's text is escaped"
    );
    for external in ["src=", "href=", "url(", "@import", "<link"] {
        assert!(!html.contains(external), "external resource `{external}`");
    }

    let url = format!("file://{}", html_path.display());
    let profile = TempDir::new("chromium-profile");
    let dom = chromium(&["--dump-dom", &url], &profile);
    assert!(
        dom.status.success(),
        "chromium --dump-dom failed: {}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    assert!(
        !dom.contains("<script"),
        "no script element came out of the page"
    );
    // One bar per timeline entry, found by its data-step; critical ones marked.
    let bars = regex::Regex::new(r#"<rect id="bar-0-\d+" class="([^"]+)" data-step="([^"]+)" data-kind="([^"]+)" data-critical="(true|false)""#)
        .expect("regex");
    let found: Vec<(String, String, String, bool)> = bars
        .captures_iter(&dom)
        .map(|c| {
            (
                c[1].to_owned(),
                c[2].to_owned(),
                c[3].to_owned(),
                &c[4] == "true",
            )
        })
        .collect();
    let timeline = report["sections"][0]["timeline"]
        .as_array()
        .expect("timeline");
    assert_eq!(found.len(), timeline.len(), "a bar per step: {found:?}");
    for e in timeline {
        let kind = e["kind"].as_str().expect("kind");
        let bar = found
            .iter()
            .find(|b| b.1 == e["step"].as_str().expect("step") && b.2 == kind)
            .unwrap_or_else(|| panic!("no bar for {e}"));
        assert_eq!(bar.3, e["critical"] == true, "critical flag of {}", bar.1);
        assert_eq!(
            bar.0.contains("critical"),
            bar.3,
            "critical class of {}",
            bar.1
        );
    }
    let critical: Vec<&str> = found.iter().filter(|b| b.3).map(|b| b.1.as_str()).collect();
    assert_eq!(
        critical,
        [
            "prepare",
            "approve",
            "slow-branch",
            "finish",
            "flaky",
            "notify"
        ]
    );
    assert!(dom.contains("class=\"rto\""), "the RTO objective is drawn");

    let shot = env.scratch.join("shot.png");
    let profile = TempDir::new("chromium-profile");
    let run = chromium(
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1400,1000",
            &url,
        ],
        &profile,
    );
    assert!(
        run.status.success(),
        "chromium --screenshot failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let py = Command::new("python3")
        .args(["-c", PNG_CHECK, shot.to_str().expect("utf-8")])
        .output()
        .expect("python3");
    assert!(
        py.status.success(),
        "PNG check failed: {}",
        String::from_utf8_lossy(&py.stderr)
    );
    let figures: Vec<u64> = String::from_utf8_lossy(&py.stdout)
        .split_whitespace()
        .map(|n| n.parse().expect("number"))
        .collect();
    assert_eq!(&figures[..2], [1400, 1000], "screenshot size");
    assert!(
        figures[2] > 20,
        "a real page has many colours, got {}",
        figures[2]
    );
    assert!(
        figures[3] > 100,
        "the green bars of succeeded steps are visible"
    );
    assert!(figures[4] > 50, "the critical path's outline is visible");
}

/// Parse `JUnit` XML with Python's parser and count testcases, failures and skips.
fn junit_counts(xml: &str, dir: &TempDir) -> (usize, usize, usize, String) {
    let path = dir.write("junit.xml", xml);
    let script = r"
import sys, xml.dom.minidom as m
d = m.parse(sys.argv[1])
suites = d.getElementsByTagName('testsuite')
assert len(suites) == 1
s = suites[0]
cases = s.getElementsByTagName('testcase')
fails = s.getElementsByTagName('failure')
skips = s.getElementsByTagName('skipped')
assert int(s.getAttribute('tests')) == len(cases)
assert int(s.getAttribute('failures')) == len(fails)
assert int(s.getAttribute('skipped')) == len(skips)
for c in cases: float(c.getAttribute('time'))
print(len(cases), len(fails), len(skips), s.getAttribute('name'))
";
    let out = Command::new("python3")
        .args(["-c", script, path.to_str().expect("utf-8")])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "JUnit XML is not well-formed: {}\n{xml}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut it = text.trim().splitn(4, ' ');
    let mut n = || it.next().expect("field").to_owned();
    let (a, b, c) = (n(), n(), n());
    (
        a.parse().expect("n"),
        b.parse().expect("n"),
        c.parse().expect("n"),
        n(),
    )
}

#[test]
fn junit_of_a_run_is_well_formed() {
    let env = Env::new("junit");
    let ok = env.exec(&[("note", "<&>\"]]>")], 0);
    let (cases, failures, skipped, name) = junit_counts(&env.report_ok(&ok, "junit"), &env.scratch);
    // Seven steps plus the RTO and RPO objectives; RPO is not measured: skipped.
    assert_eq!((cases, failures, skipped), (9, 0, 1));
    assert_eq!(name, "runbook report-incident");

    let failed = env.exec(&[("fail", "true")], 3);
    let (cases, failures, skipped, _) =
        junit_counts(&env.report_ok(&failed, "junit"), &env.scratch);
    // Seven steps, the compensation of `flaky`, two objectives; `finish` failed.
    assert_eq!((cases, failures, skipped), (10, 1, 1));
}

#[test]
fn unknown_run_is_a_state_error() {
    let env = Env::new("unknown");
    let out = env.report("20991231-000000-abcdef", "md");
    out.assert_code(6);
    assert!(
        out.stderr
            .contains("failed to find run 20991231-000000-abcdef"),
        "{}",
        out.dump()
    );
    assert!(
        out.stderr.contains("runbook runs"),
        "says how to list runs: {}",
        out.dump()
    );
    assert!(!out.stderr.contains("panicked"));

    // A prefix matching two runs is ambiguous, not a guess.
    env.exec(&[], 0);
    env.exec(&[], 0);
    let out = env.report("20", "md");
    out.assert_code(6);
    assert!(
        out.stderr.contains("matches"),
        "names the candidates: {}",
        out.dump()
    );
}

#[test]
fn unwritable_out_is_a_clear_error() {
    let env = Env::new("unwritable");
    let id = env.exec(&[], 0);
    for target in [
        env.scratch.join("no/such/dir/report.md"),
        env.scratch.path().to_path_buf(),
    ] {
        let out = env
            .cmd(Runbook::new([
                "report".to_owned(),
                id.clone(),
                "--out".to_owned(),
                target.to_str().expect("utf-8").to_owned(),
            ]))
            .run();
        out.assert_code(2);
        assert!(
            out.stderr.contains("failed to write the report to") && out.stderr.contains("help:"),
            "{}",
            out.dump()
        );
    }
}

#[test]
fn bad_format_is_rejected() {
    let env = Env::new("format");
    let out = env.report("x", "pdf");
    out.assert_code(2);
    assert!(
        out.stderr.contains("md"),
        "lists the formats: {}",
        out.dump()
    );
}

/// Run the tests' drill (three scenarios: passed, RTO missed, fault never detected) in a
/// scratch directory; returns the drill file and the state directory.
fn run_drill(env: &Env) -> (PathBuf, PathBuf) {
    let fixture = |name: &str| root().join("tests/report").join(name);
    let text = std::fs::read_to_string(fixture("drill.yaml"))
        .expect("drill fixture")
        .replace("@DIR@", &env.scratch.str());
    let drill = env.scratch.write("drill.yaml", &text);
    std::fs::copy(fixture("restore.yaml"), env.scratch.join("restore.yaml")).expect("copy");
    let out = env
        .cmd(Runbook::new([
            "drill".to_owned(),
            "run".to_owned(),
            drill.to_str().expect("utf-8").to_owned(),
        ]))
        .run();
    assert_ne!(
        out.code,
        Some(0),
        "a missed objective fails the drill\n{}",
        out.dump()
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.dump());
    (drill, env.state.path().to_path_buf())
}

#[test]
fn drill_report_with_passed_failed_and_invalid_scenarios() {
    use runbook::report::{ReportFormat, drill_report, render};
    let env = Env::new("drill");
    let (_, state) = run_drill(&env);
    let store = runbook::state::SqliteStore::open(&state).expect("state store");
    let results = runbook::drill::drill_results(&store, Some("report-drill")).expect("results");
    let names: Vec<&str> = results.iter().map(|r| r.scenario.as_str()).collect();
    assert_eq!(names, ["fast-restore", "slow-restore", "harmless-inject"]);
    let report = drill_report(&store, "report-drill", &results, &[]).expect("report");
    assert!(!report.passed());
    let passed: Vec<bool> = report.sections.iter().map(|s| s.passed).collect();
    assert_eq!(passed, [true, false, false]);
    // Each scenario's timeline is its run's, including the called runbook's steps.
    let fast = &report.sections[0];
    for step in [
        "break",
        "detect",
        "recover",
        "recover/approve",
        "recover/restore",
        "accept",
    ] {
        assert!(
            fast.timeline.iter().any(|e| e.step == step),
            "{step} missing from {:?}",
            fast.timeline.iter().map(|e| &e.step).collect::<Vec<_>>()
        );
    }
    // The RTO shown is the drill's measurement: detection to the last acceptance check.
    let rto = &fast.objectives[0];
    let r = &results[0];
    assert_eq!(
        rto.actual_ms,
        r.recovered_at_ms
            .zip(r.clock_started_at_ms)
            .and_then(|(end, start)| u64::try_from(end - start).ok())
    );
    assert_eq!(report.sections[1].objectives[0].met, Some(false));

    let md = render(&report, ReportFormat::Markdown);
    assert!(
        md.contains("| RTO | 100ms | ") && md.contains("| ❌ |"),
        "{md}"
    );
    // Steps of a few milliseconds rank in any order: the ranking is checked on the model.
    for s in &report.sections {
        let d: Vec<u64> = s.bottlenecks.iter().map(|b| b.duration_ms).collect();
        assert!(d.windows(2).all(|w| w[0] >= w[1]), "slowest first: {d:?}");
    }
    let md = regex::Regex::new(r"(?m)^(\d)\. `[^`]+`|Shorten `[^`]+`")
        .expect("regex")
        .replace_all(&stable(&md, &env), "[BOTTLENECK]")
        .into_owned();
    // How often a failing `detect` polled within its window depends on the machine's load.
    let md = regex::Regex::new(r"\b\d+ polls\b")
        .expect("regex")
        .replace_all(&md, "[N] polls")
        .into_owned();
    insta::assert_snapshot!("drill_three_scenarios_md", md);

    // JUnit: per scenario a testcase, one per objective and one per acceptance check.
    let (cases, failures, skipped, name) =
        junit_counts(&render(&report, ReportFormat::Junit), &env.scratch);
    assert_eq!(name, "drill report-drill");
    // fast: 1 + 2 + 1 (RPO skipped); slow: 1 + 2 + 1 (scenario and RTO fail, RPO skipped);
    // harmless: 1 + 2 + 1 (scenario and its never-run acceptance check fail, RTO/RPO skipped).
    assert_eq!((cases, failures, skipped), (12, 4, 4));
}

#[test]
fn report_of_a_drill_scenario_run_shows_the_drill() {
    let env = Env::new("drill-cli");
    let (_, state) = run_drill(&env);
    let store = runbook::state::SqliteStore::open(&state).expect("state store");
    let results = runbook::drill::drill_results(&store, Some("report-drill")).expect("results");
    let slow = results
        .iter()
        .find(|r| r.scenario == "slow-restore")
        .expect("slow scenario");
    let report = env.json(&slow.run_id);
    assert_eq!(report["kind"], "drill");
    let section = &report["sections"][0];
    assert_eq!(section["verdict"], "failed");
    assert_eq!(section["objectives"][0]["target_ms"], 100);
    assert_eq!(section["objectives"][0]["met"], false);
    let md = env.report_ok(&slow.run_id, "md");
    assert!(
        md.contains("Drill report: report-drill / slow-restore"),
        "{md}"
    );
    assert!(md.contains("the injected fault was detected at"), "{md}");
}

#[test]
fn approvals_given_from_another_shell_are_reported_with_their_audit_entry() {
    use std::io::{BufRead, BufReader};
    let env = Env::new("approve-cli");
    let mut child = Command::new(env!("CARGO_BIN_EXE_runbook"))
        .current_dir(root())
        .env("RUNBOOK_STATE_DIR", env.state.str())
        .env("USER", "oncall")
        .env("REPORT_API_KEY", SECRET_KEY)
        .env("NO_COLOR", "1")
        .args(["exec", INCIDENT, "--output", "json", "-p"])
        .arg(format!("dir={}", env.scratch.str()))
        .args(["-p", &format!("token={SECRET_TOKEN}")])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn runbook exec");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut run_id = String::new();
    for line in lines.by_ref() {
        let v: Value = serde_json::from_str(&line.expect("line")).unwrap_or(Value::Null);
        if v["event"] == "run_started" {
            run_id = v["run_id"].as_str().expect("run id").to_owned();
        }
        if v["event"] == "approval_waiting" {
            break;
        }
    }
    assert!(!run_id.is_empty(), "the run started and waits for approval");
    env.cmd(Runbook::new(
        [
            "approve",
            &run_id,
            "approve",
            "--as",
            "bob",
            "--comment",
            "checked the dashboards",
        ]
        .map(str::to_owned),
    ))
    .run()
    .assert_code(0);
    let drained: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0), "{drained:?}");

    let report = env.json(&run_id);
    let approvals = report["sections"][0]["approvals"]
        .as_array()
        .expect("approvals");
    assert_eq!(
        approvals.len(),
        1,
        "one decision, not one per record: {approvals:?}"
    );
    let a = &approvals[0];
    assert_eq!(a["approver"], account().as_str());
    assert_eq!(a["via"], "cli");
    assert_eq!(a["comment"], "checked the dashboards");
    assert!(a["audit_seq"].as_i64().is_some(), "{a}");
    // The wait for bob is the approval step's waiting time.
    let waited = entry(&report, "approve", "step")["approval_wait_ms"]
        .as_u64()
        .expect("wait");
    assert!(waited > 0, "waiting for another shell takes time");
}

#[test]
fn a_changed_or_deleted_runbook_leaves_the_objective_unknown() {
    let env = Env::new("changed");
    let copy = env.scratch.join("incident.yaml");
    std::fs::copy(root().join(INCIDENT), &copy).expect("copy the runbook");
    let out = env
        .cmd(
            Runbook::exec(&copy)
                .param("dir", &env.scratch.join("work").display().to_string())
                .param("token", SECRET_TOKEN)
                .yes()
                .json(),
        )
        .run();
    out.assert_code(0);
    let id = out.of("run_started")[0]["run_id"]
        .as_str()
        .expect("run id")
        .to_owned();
    let rto = |report: &Value| report["sections"][0]["objectives"][0].clone();
    assert_eq!(
        rto(&env.json(&id))["target_ms"],
        600_000,
        "unchanged: known"
    );

    let text = std::fs::read_to_string(&copy).expect("read");
    std::fs::write(&copy, text.replace("rto: 10m", "rto: 1s")).expect("edit");
    let report = env.json(&id);
    assert_eq!(
        rto(&report)["target_ms"],
        Value::Null,
        "a target the run never had"
    );
    assert_eq!(rto(&report)["met"], Value::Null);
    let notes = strings(&report["sections"][0]["notes"]);
    assert!(
        notes.iter().any(|n| n.contains("changed since the run")),
        "{notes:?}"
    );
    // Without its DAG, the critical path still comes from the timeline.
    assert!(
        !report["sections"][0]["critical_path"]
            .as_array()
            .expect("path")
            .is_empty()
    );

    std::fs::remove_file(&copy).expect("delete");
    let report = env.json(&id);
    assert_eq!(rto(&report)["target_ms"], Value::Null);
    let notes = strings(&report["sections"][0]["notes"]);
    assert!(notes.iter().any(|n| n.contains("is gone")), "{notes:?}");
}

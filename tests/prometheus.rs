//! The `prometheus` check kind against a real Prometheus server (Debian's `prometheus` binary,
//! see tests/support/prom.rs) that scrapes a tiny app whose request counters the test drives.
//!
//! Each test generates a small runbook with one gate step and runs `runbook exec --output json`.
//! Without the binary the tests fail, naming the package to install.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use support::prom::{MetricsApp, Prometheus, closed_port};
use support::{RunOutput, Runbook, TempDir};

/// A runbook with `header` lines (e.g. `prometheus: …`) and one gate step whose only `verify`
/// check is `check` (YAML lines of a sequence item, without the leading `- `).
fn runbook(dir: &TempDir, header: &str, check: &str) -> PathBuf {
    let mut item = String::new();
    for (i, line) in check.lines().enumerate() {
        item.push_str(if i == 0 { "      - " } else { "        " });
        item.push_str(line);
        item.push('\n');
    }
    dir.write(
        "prom.yaml",
        &format!("runbook: prom-test\n{header}steps:\n  - id: gate\n    verify:\n{item}"),
    )
}

/// Run a runbook, with no `RUNBOOK_PROMETHEUS_URL` unless `env_url` gives one.
fn exec(file: &PathBuf, env_url: Option<&str>) -> RunOutput {
    let rb = Runbook::exec(file).json();
    match env_url {
        Some(u) => rb.env("RUNBOOK_PROMETHEUS_URL", u),
        None => rb.env_remove("RUNBOOK_PROMETHEUS_URL"),
    }
    .run()
}

/// The detail of the gate's last check evaluation.
#[track_caller]
fn last_detail(out: &RunOutput) -> String {
    out.of_step("check", "gate")
        .last()
        .unwrap_or_else(|| panic!("no check event\n{}", out.dump()))["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Prometheus scraping a fresh app.
fn setup() -> (MetricsApp, Prometheus) {
    let app = MetricsApp::start();
    let prom = Prometheus::start(&[&app.target]);
    (app, prom)
}

#[test]
fn instant_query_reads_the_value_of_one_series_and_of_a_scalar() {
    let (app, prom) = setup();
    app.add("200", 42.0);
    app.add("500", 7.0);
    let dir = TempDir::new("prom-instant");
    // The server comes from the runbook-level `prometheus:` (a template).
    let file = runbook(
        &dir,
        "params:\n  prom: {type: string}\nprometheus: \"{{ params.prom }}\"\n",
        "prometheus: {query: 'http_requests_total{code=\"200\"}'}\n\
         assert: result.value == 42 and result.result_type == \"vector\" and not result.empty\n\
         within: 20s\ninterval: 250ms",
    );
    let out = Runbook::exec(&file)
        .json()
        .param("prom", &prom.url)
        .env_remove("RUNBOOK_PROMETHEUS_URL")
        .run();
    out.assert_code(0);
    let detail = last_detail(&out);
    assert!(detail.starts_with("value 42;"), "{detail}\n{}", out.dump());
    // The query was URL-encoded: the command names it as sent.
    let command = out.of_step("command", "gate");
    assert!(
        command.iter().any(|c| c["command"].as_str().is_some_and(
            |s| s.contains("/api/v1/query?query=http_requests_total%7Bcode%3D%22200%22%7D")
        )),
        "{}",
        out.dump()
    );

    let file = runbook(
        &dir,
        "",
        &format!(
            "prometheus: {{query: 'scalar(sum(http_requests_total))', url: '{}'}}\n\
             assert: result.value == 49 and result.result_type == \"scalar\"\n\
             within: 20s\ninterval: 250ms",
            prom.url
        ),
    );
    let out = exec(&file, None);
    out.assert_code(0);
    assert!(last_detail(&out).starts_with("value 49;"), "{}", out.dump());
}

#[test]
fn vector_query_lists_every_series_with_its_labels() {
    let (app, prom) = setup();
    app.add("200", 42.0);
    app.add("500", 7.0);
    let dir = TempDir::new("prom-vector");
    // The server comes from the check's own `url:`.
    let file = runbook(
        &dir,
        "",
        &format!(
            "prometheus: {{query: 'http_requests_total', url: '{}/'}}\n\
             assert: >-\n  result.series | length == 2\n  \
             and (result.series | map(attribute=\"labels.code\") | sort | list) == [\"200\", \"500\"]\n  \
             and (result.series | map(attribute=\"labels.job\") | unique | list) == [\"app\"]\n  \
             and result.min == 7 and result.max == 42 and result.value is undefined\n\
             within: 20s\ninterval: 250ms",
            prom.url
        ),
    );
    let out = exec(&file, None);
    out.assert_code(0);
    let detail = last_detail(&out);
    assert!(
        detail.starts_with("2 series: min 7, max 42;"),
        "{detail}\n{}",
        out.dump()
    );
}

#[test]
fn empty_result_follows_on_empty() {
    let (app, prom) = setup();
    // Data exists, just not for this selector.
    app.wait_for_scrapes(2, Duration::from_secs(20));
    let dir = TempDir::new("prom-empty");
    let query = "http_requests_total{code=\"404\"}";
    // The server comes from RUNBOOK_PROMETHEUS_URL.
    let env = Some(prom.url.as_str());

    // fail (the default): no assert can turn it into a pass.
    let file = runbook(
        &dir,
        "",
        &format!("prometheus: {{query: '{query}'}}\nassert: result.value < 1"),
    );
    let out = exec(&file, env);
    out.assert_code(1);
    assert_eq!(
        last_detail(&out),
        format!("query returned no data (on_empty: fail): `{query}`"),
        "{}",
        out.dump()
    );

    // pass: the kind's verdict, without an assert.
    let file = runbook(
        &dir,
        "",
        &format!("prometheus: {{query: '{query}', on_empty: pass}}"),
    );
    let out = exec(&file, env);
    out.assert_code(0);
    assert_eq!(
        last_detail(&out),
        "query returned no data (on_empty: pass)",
        "{}",
        out.dump()
    );

    // zero: the value is 0, and asserts see it.
    let file = runbook(
        &dir,
        "",
        &format!(
            "prometheus: {{query: '{query}', on_empty: zero}}\n\
             assert: result.value == 0 and result.max == 0 and result.empty"
        ),
    );
    let out = exec(&file, env);
    out.assert_code(0);
    assert!(
        last_detail(&out).starts_with("query returned no data; value 0 (on_empty: zero);"),
        "{}",
        out.dump()
    );
}

#[test]
fn promql_error_shows_prometheus_message() {
    let (_app, prom) = setup();
    let dir = TempDir::new("prom-syntax");
    let file = runbook(
        &dir,
        "",
        "prometheus: {query: 'sum(rate(http_requests_total[1m])'}\nassert: result.value < 1",
    );
    let out = exec(&file, Some(&prom.url));
    out.assert_code(1);
    let detail = last_detail(&out);
    assert!(
        detail.starts_with(&format!(
            "Prometheus at {} rejected the query `sum(rate(http_requests_total[1m])` (HTTP 400): bad_data: ",
            prom.url
        )),
        "{detail}"
    );
    // Prometheus's own words.
    assert!(detail.contains("parse error"), "{detail}");
}

#[test]
fn unreachable_server_is_a_check_failure_naming_the_url() {
    let url = format!("http://127.0.0.1:{}", closed_port());
    let dir = TempDir::new("prom-unreachable");
    let file = runbook(
        &dir,
        "",
        &format!(
            "prometheus: {{query: 'up', url: '{url}'}}\nassert: result.value == 1\n\
             within: 1s\ninterval: 200ms"
        ),
    );
    let out = exec(&file, None);
    out.assert_code(1);
    let checks = out.of_step("check", "gate");
    // Polled like any failing gate.
    assert!(checks.len() >= 2, "{}", out.dump());
    let detail = last_detail(&out);
    assert!(
        detail.starts_with(&format!(
            "failed to query Prometheus at {url}: could not connect"
        )),
        "{detail}"
    );
    let failed = out.of_step("step_failed", "gate");
    assert!(
        failed
            .iter()
            .any(|e| e.to_string().contains(&url) && e.to_string().contains("still failing")),
        "{}",
        out.dump()
    );
}

#[test]
fn no_server_configured_is_a_clear_error() {
    let dir = TempDir::new("prom-noserver");
    let file = runbook(&dir, "", "prometheus: {query: 'up'}");
    let out = exec(&file, None);
    out.assert_code(1);
    assert_eq!(
        last_detail(&out),
        "no Prometheus server for this check: give it `url:`, set the runbook's `prometheus:`, \
         or set RUNBOOK_PROMETHEUS_URL"
    );
}

/// The error ratio over the last 3 s, as an SLO check would read it.
const ERROR_RATIO: &str =
    "sum(rate(http_requests_total{code=\"500\"}[3s])) / sum(rate(http_requests_total[3s]))";

#[test]
fn sustained_check_fails_when_one_sample_breaks_the_threshold() {
    let (app, prom) = setup();
    app.set_rate("200", 100.0);
    app.wait_for_scrapes(4, Duration::from_secs(20));
    // One burst of errors, then none: by the time the check runs, the ratio is back to 0.
    app.add("500", 200.0);
    let burst = app.scrapes();
    app.wait_for_scrapes(burst + 6, Duration::from_secs(20));
    let dir = TempDir::new("prom-sustained-fail");

    // At this instant, everything looks fine…
    let file = runbook(
        &dir,
        "",
        &format!("prometheus: {{query: '{ERROR_RATIO}'}}\nassert: result.value < 0.05"),
    );
    let out = exec(&file, Some(&prom.url));
    out.assert_code(0);

    // …but not over the last 10 s.
    let started = Instant::now();
    let file = runbook(
        &dir,
        "",
        &format!(
            "prometheus: {{query: '{ERROR_RATIO}', for: 10s}}\n\
             assert: result.max < 0.05"
        ),
    );
    let out = exec(&file, Some(&prom.url));
    eprintln!("sustained check took {:?}", started.elapsed());
    out.assert_code(1);
    let detail = last_detail(&out);
    assert!(
        detail.contains(" samples over 10s: min 0, max ")
            && detail.ends_with("; assert `result.max < 0.05` is false"),
        "{detail}\n{}",
        out.dump()
    );
    let command = out.of_step("command", "gate");
    assert!(
        command[0]["command"]
            .as_str()
            .is_some_and(|c| c.contains("/api/v1/query_range?") && c.contains("&step=1000ms")),
        "{}",
        out.dump()
    );
}

#[test]
fn sustained_check_passes_when_every_sample_is_fine() {
    let (app, prom) = setup();
    // About 1 % errors, steadily.
    app.set_rate("200", 100.0);
    app.set_rate("500", 1.0);
    // More than the window's worth of data.
    app.wait_for_scrapes(13, Duration::from_secs(30));
    let dir = TempDir::new("prom-sustained-pass");
    let file = runbook(
        &dir,
        "",
        &format!(
            "prometheus: {{query: '{ERROR_RATIO}', for: 10s}}\n\
             assert: result.max < 0.05 and result.min > 0 and result.samples >= 8\n\
             within: 10s\ninterval: 500ms"
        ),
    );
    let out = exec(&file, Some(&prom.url));
    out.assert_code(0);
    let detail = last_detail(&out);
    assert!(
        detail.contains(" samples over 10s: min 0.0"),
        "{detail}\n{}",
        out.dump()
    );
}

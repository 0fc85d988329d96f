//! `runbook drill run|validate|history|due|cronjob`: running drill files, their measured
//! history, what is due by schedule, and a Kubernetes `CronJob` that runs them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::cli::Output;
use crate::diagnostic::did_you_mean;
use crate::diagnostic::error_chain as chain;
use crate::drill::compose::{self, ComposedScenario, LoadedDrill};
use crate::drill::measure::fmt_ms;
use crate::drill::{ScenarioResult, Verdict};
use crate::exit;
use crate::report::ReportFormat;
use crate::state::Store;

/// The `drill` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum DrillCommand {
    /// Run a drill's scenarios: inject → detect → the runbook → accept → cleanup, measured.
    /// Exit 0 only when every scenario met every objective and acceptance check.
    Run {
        /// The drill file.
        file: PathBuf,
        /// Run only this scenario (repeatable; default: all, in order).
        #[arg(long, value_name = "NAME")]
        scenario: Vec<String>,
        /// The participant recorded as approving the runbooks' approval steps (default: the
        /// drill file's `approvals.by`, else `drill file <FILE>`).
        #[arg(long, value_name = "NAME")]
        approver: Option<String>,
        /// Write the drill report here as Markdown, HTML, JSON and `JUnit` XML.
        #[arg(long, value_name = "DIR")]
        report_dir: Option<PathBuf>,
        /// Progress output of the steps (default: plain lines); the summary follows it.
        #[arg(long, value_enum)]
        output: Option<crate::exec::OutputMode>,
    },
    /// Check drill files: every problem with its position, scenarios compiled against their
    /// runbooks.
    Validate {
        /// Drill files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Every past drill scenario from the state store, RTO/RPO over time, with a warning when a
    /// scenario's RTO grew more than 20 % since its previous drill.
    History {
        /// Only this scenario.
        scenario: Option<String>,
        /// Only this drill (by its `drill:` name).
        #[arg(long, value_name = "NAME")]
        drill: Option<String>,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Which scenarios are due by their `schedule` (the scenario's, else the drill's) and the
    /// history (never run → due).
    Due {
        /// Drill files (default: `drills/*.yaml`).
        files: Vec<PathBuf>,
        /// Evaluate as of this instant (RFC 3339, e.g. `2027-01-02T00:00:00Z`; default: now).
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of drill files (`schemas/drill.schema.json`).
    Schema,
    /// Print a Kubernetes `ConfigMap` (the drill and its runbooks) and a `batch/v1` `CronJob` per
    /// schedule that runs the drill's scenarios on it.
    Cronjob {
        /// The drill file (must have a `schedule`).
        file: PathBuf,
        /// The container image with the `runbook` binary and the tools the runbooks call.
        #[arg(long, value_name = "IMAGE")]
        image: String,
        /// The namespace of both objects.
        #[arg(long, value_name = "NS", default_value = "default")]
        namespace: String,
        /// The `PersistentVolumeClaim` holding the state directory (history, audit, reports).
        #[arg(long, value_name = "NAME", default_value = "runbook-state")]
        state_claim: String,
    },
}

/// Run a `drill` subcommand.
pub fn run(out: Output, state_dir: Option<PathBuf>, cmd: DrillCommand) -> u8 {
    match cmd {
        DrillCommand::Run {
            file,
            scenario,
            approver,
            report_dir,
            output,
        } => run_cmd(
            out,
            state_dir,
            &RunOpts {
                file,
                scenarios: scenario,
                approver,
                report_dir,
                output: output.unwrap_or(crate::exec::OutputMode::Plain),
            },
        ),
        DrillCommand::Validate { files } => validate(out, &files),
        DrillCommand::Schema => {
            out!("{}", crate::schema::drill_schema());
            exit::SUCCESS
        }
        DrillCommand::History {
            scenario,
            drill,
            json,
        } => history(state_dir, scenario.as_deref(), drill.as_deref(), json),
        DrillCommand::Due { files, at, json } => due(out, state_dir, files, at.as_deref(), json),
        DrillCommand::Cronjob {
            file,
            image,
            namespace,
            state_claim,
        } => cronjob(out, &file, &image, &namespace, &state_claim),
    }
}

struct RunOpts {
    file: PathBuf,
    scenarios: Vec<String>,
    approver: Option<String>,
    report_dir: Option<PathBuf>,
    output: crate::exec::OutputMode,
}

fn load_checked(out: Output, file: &Path) -> Result<LoadedDrill, u8> {
    let loaded = compose::load(file).map_err(|(f, d)| {
        out.diagnostics(&f, &d);
        exit::INVALID
    })?;
    let diags = compose::validate(&loaded);
    if diags.is_empty() {
        Ok(loaded)
    } else {
        out.diagnostics(&loaded.file, &diags);
        Err(exit::INVALID)
    }
}

fn validate(out: Output, files: &[PathBuf]) -> u8 {
    let mut code = exit::SUCCESS;
    for f in files {
        match load_checked(out, f) {
            Ok(l) => outln!(
                "{}: ok ({} scenario{})",
                f.display(),
                l.drill.scenarios.len(),
                if l.drill.scenarios.len() == 1 {
                    ""
                } else {
                    "s"
                }
            ),
            Err(c) => code = c,
        }
    }
    code
}

fn run_cmd(out: Output, state_dir: Option<PathBuf>, o: &RunOpts) -> u8 {
    let loaded = match load_checked(out, &o.file) {
        Ok(l) => l,
        Err(c) => return c,
    };
    let mut selected = Vec::new();
    for name in &o.scenarios {
        let Some(i) = compose::scenario_index(&loaded, name) else {
            let names = loaded
                .drill
                .scenarios
                .iter()
                .map(|s| s.value.name.value.as_str());
            let help = did_you_mean(name, names.clone()).map_or_else(
                || format!("its scenarios: {}", names.collect::<Vec<_>>().join(", ")),
                |s| format!("did you mean `{s}`?"),
            );
            eprintln!(
                "error: drill {} has no scenario `{name}`\n  help: {help}",
                o.file.display()
            );
            return exit::INVALID;
        };
        selected.push(i);
    }
    if selected.is_empty() {
        selected = (0..loaded.drill.scenarios.len()).collect();
    }
    let mut composed = Vec::new();
    for &i in &selected {
        match compose::compose(&loaded, i, o.approver.as_deref()) {
            Ok(c) => composed.push(c),
            Err(d) => {
                out.diagnostics(&loaded.file, &d);
                return exit::INVALID;
            }
        }
    }
    let store = match crate::cli_state::open_store(state_dir) {
        Ok(s) => s,
        Err(c) => return c,
    };
    let mut results = Vec::new();
    let mut skipped = Vec::new();
    let mut cancelled = false;
    for c in &composed {
        eprintln!(
            "── drill {} · scenario {} · runbook {}",
            c.meta.drill, c.meta.scenario, c.meta.runbook
        );
        match unmet_requirement(c) {
            Ok(None) => {}
            Ok(Some(why)) => {
                eprintln!("➖ skipped: {why}");
                skipped.push((c.meta.scenario.clone(), why));
                continue;
            }
            Err(why) => {
                eprintln!(
                    "error: failed to evaluate the `requires` of scenario {}: {why}",
                    c.meta.scenario
                );
                return exit::INTERNAL;
            }
        }
        let written = match write_generated(c) {
            Ok(w) => w,
            Err(why) => {
                eprintln!(
                    "error: {why}\n  help: the drill keeps generated secrets under {}; make it writable",
                    std::env::temp_dir().display()
                );
                return exit::STATE;
            }
        };
        let ran = run_scenario(&store, c, o.output);
        // An interrupted run (the process killed) keeps them for `runbook resume`.
        if written {
            remove_generated(c);
        }
        match ran {
            Ok((r, status)) => {
                results.push(r);
                // Ctrl-C or SIGTERM stops the drill, not just the scenario.
                if status == crate::exec::RunStatus::Cancelled {
                    cancelled = true;
                    break;
                }
            }
            Err(code) => return code,
        }
    }
    let code = finish(
        &store,
        &loaded.drill.drill.value,
        &results,
        &skipped,
        o.report_dir.as_deref(),
    );
    if cancelled {
        exit::CANCELLED
    } else if results.is_empty() && !skipped.is_empty() {
        // Nothing was exercised: a scheduled drill must not look green.
        eprintln!(
            "error: every scenario of drill {} was skipped: nothing was drilled\n  help: provide what their `requires` checks look for, or run another scenario",
            loaded.drill.drill.value
        );
        exit::STEP_FAILED
    } else {
        code
    }
}

/// The first `requires` check of the scenario that fails, as `<check name>: <what it saw>`;
/// `None` when they all pass (or there are none). Nothing is recorded: no run exists yet.
fn unmet_requirement(c: &ComposedScenario) -> Result<Option<String>, String> {
    let Some(req) = &c.requires else {
        return Ok(None);
    };
    let findings = crate::exec::check(&req.compiled, &req.params)?;
    let preflight = findings
        .iter()
        .filter(|f| f.what.starts_with("preflight #"));
    for (name, f) in req.names.iter().zip(preflight) {
        if f.outcome != "ok" {
            let saw = f.detail.trim().replace('\n', " ");
            return Ok(Some(format!("{name}: {saw}")));
        }
    }
    Ok(None)
}

/// Write the scenario's generated secrets (one fresh random password for all of them).
/// Whether anything was written.
fn write_generated(c: &ComposedScenario) -> Result<bool, String> {
    use std::io::{Read, Write};
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    if c.generated.is_empty() {
        return Ok(false);
    }
    let mut raw = [0u8; 18];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .map_err(|e| format!("failed to read /dev/urandom for a generated secret: {e}"))?;
    // URL-safe and shell-safe: it ends up inside DSNs and command environments.
    let password: String = raw
        .iter()
        .flat_map(|b| [b >> 4, b & 0xf])
        .filter_map(|n| char::from_digit(u32::from(n), 16))
        .collect();
    for g in &c.generated {
        let Some(dir) = g.path.parent() else {
            return Err(format!(
                "failed to place generated secret {}",
                g.path.display()
            ));
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
            .map_err(|e| format!("failed to create {}: {e}", dir.display()))?;
        let _ = std::fs::remove_file(&g.path);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&g.path)
            .and_then(|mut f| f.write_all(g.text.replace("{password}", &password).as_bytes()))
            .map_err(|e| format!("failed to write generated secret {}: {e}", g.path.display()))?;
    }
    Ok(true)
}

/// Remove the scenario's generated secrets once its run finished.
fn remove_generated(c: &ComposedScenario) {
    for g in &c.generated {
        let _ = std::fs::remove_file(&g.path);
    }
    // The scenario's, the drill's and the user's directories, each once empty.
    if let Some(first) = c.generated.first() {
        for dir in first.path.ancestors().skip(1).take(3) {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Execute one composed scenario and record its measured result.
fn run_scenario(
    store: &Arc<dyn Store>,
    c: &ComposedScenario,
    output: crate::exec::OutputMode,
) -> Result<(ScenarioResult, crate::exec::RunStatus), u8> {
    let options = crate::exec::Options {
        max_parallel: None,
        // A drill never prompts: approvals are answered by the drill file or the participant.
        yes: true,
        yes_via: Some("drill".to_owned()),
        approver: Some(c.meta.approvals_by.clone()),
        interactive: false,
        output,
    };
    let launch = crate::exec::Launch {
        compiled: &c.compiled,
        params: &c.params,
        options: &options,
        store: Some(store.clone()),
        resume: None,
        break_lock: false,
        cancel: None,
    };
    let outcome = crate::exec::execute(&launch).map_err(|e| {
        eprintln!("error: {e}");
        e.exit_code()
    })?;
    measure_and_record(store.as_ref(), &c.meta, &outcome.run_id).map(|r| (r, outcome.status))
}

fn measure_and_record(
    store: &dyn Store,
    meta: &compose::ScenarioMeta,
    run_id: &str,
) -> Result<ScenarioResult, u8> {
    let run = store.run(run_id).ok().flatten();
    let events = store.events(run_id);
    let (Some(run), Ok(events)) = (run, events) else {
        eprintln!("error: failed to read run {run_id} back from the state store");
        return Err(exit::STATE);
    };
    let result = crate::drill::measure::measure(meta, &run, &events);
    if let Err(e) = crate::drill::record_result(store, &result) {
        eprintln!("error: {}", chain(&e));
        return Err(exit::STATE);
    }
    Ok(result)
}

/// Summary, reports, exit code.
fn finish(
    store: &Arc<dyn Store>,
    drill: &str,
    results: &[ScenarioResult],
    skipped: &[(String, String)],
    report_dir: Option<&Path>,
) -> u8 {
    print_summary(drill, results, skipped);
    let mut code = exit_code(results);
    if let Some(dir) = report_dir
        && let Err(why) = write_reports(store.as_ref(), drill, results, skipped, dir)
    {
        eprintln!("error: {why}\n  help: give --report-dir a writable directory");
        if code == exit::SUCCESS {
            code = exit::INVALID;
        }
    }
    code
}

/// 0 when every scenario passed; 1 when one failed; 8 when none failed but one proved nothing.
pub fn exit_code(results: &[ScenarioResult]) -> u8 {
    if results.iter().any(|r| r.verdict == Verdict::Failed) {
        exit::STEP_FAILED
    } else if results.iter().any(|r| r.verdict == Verdict::Invalid) {
        exit::DRILL_INVALID
    } else {
        exit::SUCCESS
    }
}

fn mark(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "✅",
        Some(false) => "❌",
        None => "–",
    }
}

fn verdict_str(v: Verdict) -> &'static str {
    match v {
        Verdict::Passed => "✅ passed",
        Verdict::Failed => "❌ failed",
        Verdict::Invalid => "⚠️ invalid",
    }
}

fn print_summary(drill: &str, results: &[ScenarioResult], skipped: &[(String, String)]) {
    outln!("drill {drill}");
    for (scenario, why) in skipped {
        outln!("  scenario {scenario}  ➖ skipped: {why}");
    }
    for r in results {
        outln!(
            "  scenario {}  {}  (run {}, runbook {})",
            r.scenario,
            verdict_str(r.verdict),
            r.run_id,
            r.runbook
        );
        for (name, o) in [("RTO", &r.rto), ("RPO", &r.rpo)] {
            outln!(
                "    {name}  target {:<8} actual {:<8} {}  {}",
                fmt_ms(o.target_ms),
                fmt_ms(o.actual_ms),
                mark(o.met),
                o.how
            );
        }
        for a in &r.accept {
            outln!(
                "    accept {} {}  {}",
                if a.passed { "✅" } else { "❌" },
                a.name,
                a.detail
            );
        }
        outln!("    approvals by {}", r.approvals_by);
        for why in &r.reasons {
            outln!("    ✗ {why}");
        }
    }
    let passed = results
        .iter()
        .filter(|r| r.verdict == Verdict::Passed)
        .count();
    if skipped.is_empty() {
        outln!("{passed}/{} scenarios passed", results.len());
    } else {
        outln!(
            "{passed}/{} scenarios passed, {} skipped",
            results.len(),
            skipped.len()
        );
    }
}

fn write_reports(
    store: &dyn Store,
    drill: &str,
    results: &[ScenarioResult],
    skipped: &[(String, String)],
    dir: &Path,
) -> Result<(), String> {
    let report = crate::report::drill_report(store, drill, results, skipped)
        .map_err(|e| format!("failed to build the drill report: {}", chain(&e)))?;
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("failed to create report directory {}: {e}", dir.display()))?;
    let stem: String = drill
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    for format in [
        ReportFormat::Markdown,
        ReportFormat::Html,
        ReportFormat::Json,
        ReportFormat::Junit,
    ] {
        let path = dir.join(format!("{stem}.{}", format.extension()));
        std::fs::write(&path, crate::report::render(&report, format))
            .map_err(|e| format!("failed to write {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// `runbook resume` of a drill scenario's run: the same composed runbook, rebuilt from the
/// drill file, then the result measured again and recorded.
#[expect(
    clippy::too_many_arguments,
    reason = "the arguments of `runbook resume`, passed through"
)]
pub(crate) fn resume(
    out: Output,
    store: &Arc<dyn Store>,
    record: crate::state::RunRecord,
    decisions: BTreeMap<String, crate::exec::Decision>,
    from_step: Option<String>,
    allow_changed: bool,
    run: &crate::cli::RunArgs,
    events: Vec<crate::state::EventRecord>,
) -> u8 {
    let Some((drill_file, scenario)) = compose::scenario_ref(&record.file) else {
        return exit::INTERNAL;
    };
    let loaded = match load_checked(out, Path::new(drill_file)) {
        Ok(l) => l,
        Err(c) => return c,
    };
    let Some(index) = compose::scenario_index(&loaded, scenario) else {
        eprintln!("error: drill file {drill_file} has no scenario `{scenario}` any more");
        return exit::STATE;
    };
    let approver = run.approver.clone().or_else(|| {
        events
            .iter()
            .find(|e| e.kind == "approval")
            .and_then(|e| e.data.get("approver"))
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
    });
    let composed = match compose::compose(&loaded, index, approver.as_deref()) {
        Ok(c) => c,
        Err(d) => {
            out.diagnostics(&loaded.file, &d);
            return exit::INVALID;
        }
    };
    let changed = composed.compiled.hash != record.runbook_hash;
    if changed && !allow_changed {
        eprintln!(
            "error: refusing to resume run {}: scenario `{scenario}` of {drill_file} changed since the run started\n  help: review the change; `--allow-changed` resumes anyway and records that in the audit log",
            record.id
        );
        return exit::STATE;
    }
    if let Some(step) = &from_step
        && !composed.compiled.index_by_id.contains_key(step)
    {
        eprintln!("error: scenario `{scenario}` has no step `{step}`");
        return exit::INVALID;
    }
    for step in decisions.keys() {
        if !crate::exec::names_a_step(&composed.compiled, &events, step) {
            eprintln!("error: scenario `{scenario}` has no step `{step}`");
            return exit::INVALID;
        }
    }
    let run_id = record.id.clone();
    let from = crate::exec::ResumeFrom {
        events,
        decisions,
        from_step,
        with_upstream: false,
        changed,
    };
    let options = crate::exec::Options {
        max_parallel: run.max_parallel,
        yes: true,
        yes_via: Some("drill".to_owned()),
        approver: Some(composed.meta.approvals_by.clone()),
        interactive: false,
        output: run.output.unwrap_or(crate::exec::OutputMode::Plain),
    };
    let launch = crate::exec::Launch {
        compiled: &composed.compiled,
        params: &composed.params,
        options: &options,
        store: Some(store.clone()),
        resume: Some((record, from)),
        break_lock: run.break_lock,
        cancel: None,
    };
    let executed = crate::exec::execute(&launch);
    // The generated secrets the interrupted run kept are no longer needed once it ended
    // (kept when it could not start, e.g. its lock is held: it can be resumed again).
    if executed.is_ok() {
        remove_generated(&composed);
    }
    if let Err(e) = executed {
        eprintln!("error: {e}");
        return e.exit_code();
    }
    match measure_and_record(store.as_ref(), &composed.meta, &run_id) {
        Ok(r) => {
            print_summary(&r.drill, std::slice::from_ref(&r), &[]);
            exit_code(std::slice::from_ref(&r))
        }
        Err(c) => c,
    }
}

// ── history ─────────────────────────────────────────────────────────────────────────────

fn history(
    state_dir: Option<PathBuf>,
    scenario: Option<&str>,
    drill: Option<&str>,
    json: bool,
) -> u8 {
    let store = match crate::cli_state::open_store(state_dir) {
        Ok(s) => s,
        Err(c) => return c,
    };
    let results = match crate::drill::drill_results(store.as_ref(), drill) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            return exit::STATE;
        }
    };
    let rows = crate::drill::history::history(
        results
            .into_iter()
            .filter(|r| scenario.is_none_or(|s| s == r.scenario))
            .collect(),
    );
    let warnings: Vec<&str> = rows.iter().filter_map(|r| r.warning.as_deref()).collect();
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
        for w in &warnings {
            eprintln!("{w}");
        }
        return exit::SUCCESS;
    }
    if rows.is_empty() {
        outln!("no drill has been recorded in this state directory");
        return exit::SUCCESS;
    }
    outln!(
        "{:<24} {:<16} {:<20} {:<24} {:<11} {:>9} {:>9} {:>8} {:>9} {:>9}",
        "started",
        "drill",
        "scenario",
        "run",
        "verdict",
        "RTO",
        "target",
        "change",
        "RPO",
        "target"
    );
    for row in &rows {
        let r = &row.result;
        outln!(
            "{:<24} {:<16} {:<20} {:<24} {:<11} {:>9} {:>9} {:>8} {:>9} {:>9}",
            crate::clock::rfc3339(r.started_at_ms),
            r.drill,
            r.scenario,
            r.run_id,
            verdict_str(r.verdict),
            fmt_ms(r.rto.actual_ms),
            fmt_ms(r.rto.target_ms),
            row.rto_change_pct
                .map_or_else(|| "-".to_owned(), |c| format!("{c:+.0} %")),
            fmt_ms(r.rpo.actual_ms),
            fmt_ms(r.rpo.target_ms)
        );
    }
    for w in &warnings {
        outln!("{w}");
    }
    exit::SUCCESS
}

// ── due ─────────────────────────────────────────────────────────────────────────────────

fn due(
    out: Output,
    state_dir: Option<PathBuf>,
    mut files: Vec<PathBuf>,
    at: Option<&str>,
    json: bool,
) -> u8 {
    let now = match at {
        None => crate::clock::now_ms(),
        Some(t) => {
            // Years 0 to 9999 only: schedules are searched day by day from that instant.
            let Some(ms) =
                crate::drill::measure::instant_ms(&serde_json::Value::String(t.to_owned()))
                    .filter(|ms| (-62_167_219_200_000..=253_402_300_799_999).contains(ms))
            else {
                eprintln!(
                    "error: --at `{}` is not a time between the years 0 and 9999\n  help: write RFC 3339, e.g. `2027-01-02T00:00:00Z`",
                    crate::terminal::escape(t)
                );
                return exit::INVALID;
            };
            ms
        }
    };
    if files.is_empty() {
        let mut found: Vec<PathBuf> = std::fs::read_dir("drills")
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                    .collect()
            })
            .unwrap_or_default();
        found.sort();
        if found.is_empty() {
            eprintln!(
                "error: no drill files given and none in drills/\n  help: `runbook drill due FILE...`"
            );
            return exit::INVALID;
        }
        files = found;
    }
    let mut loaded = Vec::new();
    for f in &files {
        match compose::load(f) {
            Ok(l) => loaded.push(l),
            Err((file, d)) => {
                out.diagnostics(&file, &d);
                return exit::INVALID;
            }
        }
    }
    let store = match crate::cli_state::open_store(state_dir) {
        Ok(s) => s,
        Err(c) => return c,
    };
    let results = match crate::drill::drill_results(store.as_ref(), None) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            return exit::STATE;
        }
    };
    let mut rows = Vec::new();
    for l in &loaded {
        match crate::drill::due::due(l, &results, now) {
            Ok(mut r) => rows.append(&mut r),
            Err(e) => {
                let span = l
                    .drill
                    .schedule
                    .as_ref()
                    .map(|s| s.span)
                    .unwrap_or_default();
                let d = crate::diagnostic::Diagnostic::new(
                    "bad-schedule",
                    format!("invalid schedule: {e}"),
                    span,
                );
                out.diagnostics(&l.file, &[d]);
                return exit::INVALID;
            }
        }
    }
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
    } else {
        outln!("as of {}", crate::clock::rfc3339(now));
        for r in &rows {
            outln!(
                "{:<8} {:<16} {:<20} {:<20} last {:<24} {}",
                if r.due { "DUE" } else { "ok" },
                r.drill,
                r.scenario,
                r.schedule.as_deref().unwrap_or("(no schedule)"),
                r.last_started_at.as_deref().unwrap_or("never"),
                r.reason
            );
        }
    }
    exit::SUCCESS
}

// ── cronjob ─────────────────────────────────────────────────────────────────────────────

fn cronjob(out: Output, file: &Path, image: &str, namespace: &str, claim: &str) -> u8 {
    let loaded = match load_checked(out, file) {
        Ok(l) => l,
        Err(c) => return c,
    };
    let options = crate::drill::cronjob::CronjobOptions {
        image,
        namespace,
        state_claim: claim,
    };
    match crate::drill::cronjob::manifest(&loaded, &options) {
        Ok(y) => {
            out!("{y}");
            exit::SUCCESS
        }
        Err(crate::drill::cronjob::CronjobError::NoSchedule) => {
            let d = crate::diagnostic::Diagnostic::new(
                "no-schedule",
                "the drill has no `schedule`: a CronJob needs one",
                loaded.drill.drill.span,
            )
            .with_help("add e.g. `schedule: \"0 10 1 1,4,7,10 *\"` (quarterly, UTC)");
            out.diagnostics(&loaded.file, &[d]);
            exit::INVALID
        }
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            exit::INVALID
        }
    }
}

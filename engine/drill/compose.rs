//! Loading a drill file and composing each scenario into one synthetic runbook (inject → detect →
//! recover → accept → rpo, cleanup as `finally`) that the ordinary engine compiles and executes.
//!
//! The synthetic runbook's text is assembled from the drill file's own text: every inject,
//! cleanup and RPO step and every check is copied verbatim, only re-indented, and a line map
//! sends each diagnostic of the composed runbook back to its line and column in the drill file.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_saphyr::granit_parser::{Event, Parser};

use super::model::{Drill, DrillSecret, RpoUnit, Scenario};
use crate::compile::{Compiled, ParamValues};

use crate::diagnostic::{Diagnostic, SourceFile, did_you_mean};
use crate::model::{Span, Spanned};

/// What marks a run's `file` as a drill scenario: `<drill file>#scenario=<name>`.
pub const SCENARIO_MARKER: &str = "#scenario=";

/// Step ids the composed runbook uses itself; inject, cleanup and RPO steps may not take them.
pub const RESERVED_IDS: [&str; 4] = ["detect", "recover", "accept", "rpo"];

/// A drill file, parsed and checked.
#[derive(Debug, Clone)]
pub struct LoadedDrill {
    /// The file's text (diagnostics point into it).
    pub file: SourceFile,
    /// Its path as given.
    pub path: PathBuf,
    /// The parsed drill.
    pub drill: Drill,
}

/// What measuring a scenario's run needs to know about the scenario.
#[derive(Debug, Clone)]
pub struct ScenarioMeta {
    /// The drill's name.
    pub drill: String,
    /// The drill file as given.
    pub drill_file: String,
    /// The scenario's name.
    pub scenario: String,
    /// The runbook file, as written in the drill.
    pub runbook: String,
    /// Ids of the inject steps.
    pub inject: Vec<String>,
    /// Whether a `detect` gate starts the clock.
    pub has_detect: bool,
    /// Names of the acceptance checks, in order.
    pub accept: Vec<String>,
    /// RTO target (the scenario's, else the runbook's).
    pub rto: Option<Duration>,
    /// RPO target (the scenario's, else the runbook's).
    pub rpo: Option<Duration>,
    /// How the RPO is measured, if it is.
    pub rpo_unit: Option<RpoUnit>,
    /// The RPO measurement's description.
    pub rpo_how: String,
    /// Who answers approvals (drill file or participant).
    pub approvals_by: String,
}

/// A scenario ready to execute: the composed runbook and what measuring it needs.
#[derive(Debug, Clone)]
pub struct ComposedScenario {
    /// The scenario's `requires` checks as a runbook of preflight checks (`runbook check`
    /// evaluates them without a run), if it has any.
    pub requires: Option<Requires>,
    /// Secrets the drill writes before the scenario runs (`generated:`).
    pub generated: Vec<GeneratedSecret>,
    /// The synthetic runbook (its `path` is the run's `file`: `<drill>#scenario=<name>`).
    pub compiled: Compiled,
    /// Its params (none: the scenario's params go to the `recover` call).
    pub params: ParamValues,
    /// For measurement.
    pub meta: ScenarioMeta,
}

/// A scenario's `requires` checks, compiled as the preflight of a runbook with the scenario's
/// params and one inert step, so they are evaluated exactly like `runbook check` does.
#[derive(Debug, Clone)]
pub struct Requires {
    /// The runbook holding the checks as `preflight`.
    pub compiled: Compiled,
    /// Its params (the scenario's).
    pub params: ParamValues,
    /// The checks' names, in order (for `➖ skipped: <name>: ...`).
    pub names: Vec<String>,
}

/// A secret of the scenario the drill makes itself: `text` with `{password}` replaced, written
/// to `path` (which the composed runbook reads as a `file:` secret).
#[derive(Debug, Clone)]
pub struct GeneratedSecret {
    /// Where the value is written (mode 0600, in a directory of mode 0700).
    pub path: PathBuf,
    /// The text, with `{password}` placeholders.
    pub text: String,
}

/// Where a scenario's generated secrets live while it runs: a fixed path per user, drill file
/// and scenario, so that the composed runbook (and its hash, which `runbook resume` compares) is
/// the same every time it is composed, and two drill files never share one.
pub fn generated_dir(drill_path: &Path, drill: &str, scenario: &str) -> PathBuf {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let where_from = std::fs::canonicalize(drill_path)
        .unwrap_or_else(|_| drill_path.to_path_buf())
        .display()
        .to_string();
    std::env::temp_dir()
        .join(format!(
            "runbook-drill-secrets-{}",
            clean(&crate::exec::current_user())
        ))
        .join(format!("{}-{:016x}", clean(drill), fnv1a(&where_from)))
        .join(clean(scenario))
}

/// FNV-1a, 64 bits: a stable short name for a path (not a security measure).
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A scenario's schedule: its own, else the drill's.
pub fn schedule_of<'a>(drill: &'a Drill, scenario: &'a Scenario) -> Option<&'a Spanned<String>> {
    scenario.schedule.as_ref().or(drill.schedule.as_ref())
}

/// Split a run's `file` into the drill file and the scenario name, if it is a drill scenario.
pub fn scenario_ref(file: &str) -> Option<(&str, &str)> {
    file.rsplit_once(SCENARIO_MARKER)
}

/// The run `file` recorded for a scenario of a drill file.
pub fn file_ref(drill_path: &Path, scenario: &str) -> String {
    format!("{}{SCENARIO_MARKER}{scenario}", drill_path.display())
}

/// Read and parse a drill file, and check everything that does not need the runbooks.
///
/// # Errors
/// The file (possibly empty when unreadable) and every problem found.
pub fn load(path: &Path) -> Result<LoadedDrill, (SourceFile, Vec<Diagnostic>)> {
    let name = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            let d = Diagnostic::global(
                "unreadable",
                format!("failed to read drill file {}: {e}", path.display()),
            )
            .with_help("check the path and its permissions");
            return Err((SourceFile::new(name, ""), vec![d]));
        }
    };
    from_source(SourceFile::new(name, text), path)
}

/// Parse a drill file already read (`path` is where its runbooks are resolved from).
///
/// # Errors
/// The file and its first structural problem.
pub fn from_source(
    file: SourceFile,
    path: &Path,
) -> Result<LoadedDrill, (SourceFile, Vec<Diagnostic>)> {
    let drill = crate::parse::parse_as::<Drill>(&file, &file.text).map_err(|d| {
        let d = if d.code == "empty-file" {
            Diagnostic {
                help: Some(
                    "a drill needs `drill: <name>` and a `scenarios:` list with at least one scenario"
                        .to_owned(),
                ),
                ..d
            }
        } else {
            d
        };
        (file.clone(), vec![d])
    })?;
    Ok(LoadedDrill {
        file,
        path: path.to_path_buf(),
        drill,
    })
}

/// Every problem of a loaded drill: header, schedule, scenario names, and each scenario
/// composed and compiled against its runbook.
pub fn validate(loaded: &LoadedDrill) -> Vec<Diagnostic> {
    let mut diags = check_header(loaded);
    for i in 0..loaded.drill.scenarios.len() {
        if let Err(mut d) = compose(loaded, i, None) {
            diags.append(&mut d);
        }
    }
    diags.sort_by_key(|d| d.span.map(|s| (s.line, s.column)));
    diags
}

fn check_header(loaded: &LoadedDrill) -> Vec<Diagnostic> {
    let d = &loaded.drill;
    let mut diags = Vec::new();
    if d.drill.value.trim().is_empty() {
        diags.push(
            Diagnostic::new("bad-value", "the drill name is empty", d.drill.span)
                .with_help("name the drill, e.g. `drill: quarterly`"),
        );
    }
    let schedules = d
        .schedule
        .iter()
        .chain(d.scenarios.iter().filter_map(|s| s.value.schedule.as_ref()));
    for s in schedules {
        let Err(e) = super::cron::Schedule::parse(&s.value) else {
            continue;
        };
        diags.push(
            Diagnostic::new(
                "bad-schedule",
                format!("invalid schedule `{}`: {e}", s.value),
                s.span,
            )
            .with_help(
                "write 5 cron fields in UTC: minute hour day-of-month month day-of-week, e.g. `0 10 1 1,4,7,10 *` (quarterly)",
            ),
        );
    }
    if d.scenarios.is_empty() {
        diags.push(
            Diagnostic::new("no-scenarios", "the drill has no scenarios", d.drill.span)
                .with_help("add a `scenarios:` list with at least one scenario"),
        );
    }
    let mut seen: HashMap<&str, Span> = HashMap::new();
    for s in &d.scenarios {
        let name = &s.value.name;
        if name.value.trim().is_empty() || name.value.contains(['#', '/']) {
            diags.push(
                Diagnostic::new(
                    "bad-name",
                    format!("scenario name `{}` is not valid", name.value),
                    name.span,
                )
                .with_help("use a non-empty name without `#` or `/`, e.g. `db-restore`"),
            );
        }
        if let Some(first) = seen.get(name.value.as_str()) {
            diags.push(
                Diagnostic::new(
                    "duplicate-scenario",
                    format!("scenario `{}` is defined twice", name.value),
                    name.span,
                )
                .with_related(*first, "first defined here")
                .with_help("give each scenario a unique name: history and `--scenario` use it"),
            );
        } else {
            seen.insert(&name.value, name.span);
        }
    }
    diags
}

/// Compose scenario `index` into its synthetic runbook and compile it.
///
/// `approver` is the `--approver` participant, if any (it is recorded as who approved).
///
/// # Errors
/// Every problem of the scenario, pointing into the drill file.
pub fn compose(
    loaded: &LoadedDrill,
    index: usize,
    approver: Option<&str>,
) -> Result<ComposedScenario, Vec<Diagnostic>> {
    let text = &*loaded.file.text;
    let sc = &loaded.drill.scenarios[index].value;
    let mut diags = Vec::new();

    // The runbook and its params.
    let rb_path = crate::exec::resolve_relative(&loaded.path, &sc.runbook.value);
    let runbook = match crate::compile::compile_path(&rb_path) {
        Ok(c) => Some(c),
        Err((file, rd)) => {
            let first = rd.first().map(|d| d.short(&file)).unwrap_or_default();
            let (code, msg, help) = if rb_path.exists() {
                (
                    "invalid-runbook",
                    format!("runbook {} is invalid: {first}", rb_path.display()),
                    "`runbook validate` on it shows every problem".to_owned(),
                )
            } else {
                (
                    "unknown-runbook",
                    format!("runbook file {} does not exist", rb_path.display()),
                    "the path is relative to the drill file".to_owned(),
                )
            };
            diags.push(Diagnostic::new(code, msg, sc.runbook.span).with_help(help));
            None
        }
    };
    let call_params: Vec<(String, String)> = sc
        .params
        .iter()
        .map(|(k, v)| {
            let s = match &v.value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), s)
        })
        .collect();
    if let Some(rb) = &runbook {
        check_params(sc, rb, &call_params, &mut diags);
    }
    let target = |own: &Option<Spanned<crate::model::DurationText>>,
                  fallback: Option<Duration>,
                  diags: &mut Vec<Diagnostic>| match own {
        Some(t) => match crate::duration::parse(&t.value.0) {
            Ok(d) => Some(d),
            Err(e) => {
                diags.push(
                    Diagnostic::new("bad-duration", format!("invalid duration: {e}"), t.span)
                        .with_help("write e.g. `90s`, `15m`, `1h30m`"),
                );
                None
            }
        },
        None => fallback,
    };
    let rto = target(
        &sc.objectives.rto,
        runbook.as_ref().and_then(|r| r.rto),
        &mut diags,
    );
    let rpo = target(
        &sc.objectives.rpo,
        runbook.as_ref().and_then(|r| r.rpo),
        &mut diags,
    );
    check_ids(sc, &mut diags);

    // The composed runbook.
    let file_ref = file_ref(&loaded.path, &sc.name.value);
    let mut out = Composer::new(sc.name.span);
    let q = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
    out.line(&format!(
        "runbook: {}",
        q(&format!("{}/{}", loaded.drill.drill.value, sc.name.value))
    ));
    out.line(&format!(
        "lock: {}",
        q(&format!(
            "drill/{}/{}",
            loaded.drill.drill.value, sc.name.value
        ))
    ));
    out.line("unattended: true");
    // The scenario's params are the composed runbook's too, so inject, detect, accept, rpo and
    // cleanup can say `{{ params.x }}` like the runbook does.
    write_params(&mut out, sc);
    // The recovery runbook's secrets are resolved with the scenario's when the run starts (a
    // called runbook reads the run's secrets), so a drill whose recovery could not read them
    // fails before anything is broken.
    let mut secrets: BTreeMap<&str, (String, Option<u64>)> = BTreeMap::new();
    if let Some(rb) = &runbook {
        for (k, v) in &rb.runbook.secrets {
            let src = match &v.value {
                crate::model::SecretSource::Env(e) => format!("{{env: {}}}", q(e)),
                crate::model::SecretSource::File(f) => format!("{{file: {}}}", q(f)),
            };
            secrets.insert(k, (src, None));
        }
    }
    let mut generated = Vec::new();
    for (k, v) in &sc.secrets {
        let src = match &v.value {
            DrillSecret::Env(e) => format!("{{env: {}}}", q(e)),
            DrillSecret::File(f) => format!("{{file: {}}}", q(f)),
            DrillSecret::Generated(text) => {
                let path =
                    generated_dir(&loaded.path, &loaded.drill.drill.value, &sc.name.value).join(k);
                let src = format!("{{file: {}}}", q(&path.display().to_string()));
                generated.push(GeneratedSecret {
                    path,
                    text: text.clone(),
                });
                src
            }
        };
        secrets.insert(k, (src, Some(v.span.line)));
    }
    if !secrets.is_empty() {
        out.line("secrets:");
        for (k, (src, line)) in secrets {
            out.push(&format!("  {}: {src}", q(k)), line.map(|l| (l, 0)));
        }
    }
    out.line("steps:");
    let inject_ids: Vec<String> = sc.inject.iter().map(|s| s.value.id.value.clone()).collect();
    let ids_list = |ids: &[String]| {
        format!(
            "[{}]",
            ids.iter().map(|i| q(i)).collect::<Vec<_>>().join(", ")
        )
    };
    for s in &sc.inject {
        out.node(text, s.span, 2, None);
    }
    let mut before_recover = inject_ids.clone();
    if let Some(d) = &sc.detect {
        out.line("  - id: detect");
        out.line("    name: the injected fault is detected");
        out.line(&format!("    needs: {}", ids_list(&inject_ids)));
        out.line("    verify:");
        out.node(text, d.span, 6, None);
        before_recover = vec!["detect".to_owned()];
    }
    out.line("  - id: recover");
    out.line(&format!("    name: recover with {}", q(&sc.runbook.value)));
    out.line(&format!("    needs: {}", ids_list(&before_recover)));
    out.line("    call:");
    out.line(&format!("      runbook: {}", q(&sc.runbook.value)));
    out.line("      params:");
    for (k, v) in &call_params {
        out.line(&format!("        {}: {}", q(k), q(v)));
    }
    if call_params.is_empty() {
        out.line("        {}");
    }
    let mut last = "recover".to_owned();
    if !sc.accept.is_empty() {
        out.line("  - id: accept");
        out.line("    name: acceptance checks");
        out.line("    needs: [recover]");
        out.line("    verify:");
        for c in &sc.accept {
            out.node(text, c.span, 6, None);
        }
        "accept".clone_into(&mut last);
    }
    let mut rpo_unit = None;
    let mut rpo_how = String::new();
    if let Some(r) = &sc.rpo {
        let r = &r.value;
        let mut needs = vec![last.clone()];
        for s in &r.steps {
            let own = s.value.needs.is_empty();
            out.node(text, s.span, 2, own.then_some(last.as_str()));
            needs.push(s.value.id.value.clone());
        }
        out.line("  - id: rpo");
        out.line("    name: measure the recovery point");
        out.line(&format!("    needs: {}", ids_list(&needs)));
        out.line("    verify:");
        out.line("      - name: the RPO measurement yields a value");
        out.mapped_value("        expr: ", &r.value);
        out.line("    outputs:");
        out.mapped_value("      value: ", &r.value);
        if let Some(since) = &r.since {
            out.mapped_value("      since: ", since);
        }
        rpo_unit = Some(r.unit.value);
        rpo_how = r.how.clone().unwrap_or_else(|| match r.unit.value {
            RpoUnit::Timestamp => format!("fault time minus `{}`", r.value.value),
            RpoUnit::Duration => format!("`{}`", r.value.value),
        });
    }
    if !sc.cleanup.is_empty() {
        out.line("finally:");
        for s in &sc.cleanup {
            out.node(text, s.span, 2, None);
        }
    }
    let synthetic = SourceFile::new(file_ref.clone(), out.text.clone());
    let compiled = match crate::compile::compile(synthetic, Path::new(&file_ref)) {
        Ok(c) => Some(c),
        Err(ds) => {
            for mut d in ds {
                // The composed `rpo` step checks and outputs the scenario's `rpo.value`/`since`:
                // name them as the author wrote them.
                for (from, to) in [
                    ("step `rpo` (expr)", "`rpo.value`"),
                    ("step `rpo` (outputs.value)", "`rpo.value`"),
                    ("step `rpo` (outputs.since)", "`rpo.since`"),
                ] {
                    d.message = d.message.replace(from, to);
                }
                diags.push(out.map(d, &loaded.file));
            }
            None
        }
    };
    let requires = compose_requires(loaded, sc, &mut diags);
    let approvals_by = approver.map_or_else(
        || {
            loaded.drill.approvals.by.as_ref().map_or_else(
                || format!("drill file {}", loaded.path.display()),
                |b| b.value.clone(),
            )
        },
        str::to_owned,
    );
    match compiled {
        Some(compiled) if diags.is_empty() => Ok(ComposedScenario {
            requires,
            generated,
            params: crate::compile::resolve_params(&compiled.runbook, &[], &BTreeMap::new())
                .unwrap_or_default(),
            compiled,
            meta: ScenarioMeta {
                drill: loaded.drill.drill.value.clone(),
                drill_file: loaded.path.display().to_string(),
                scenario: sc.name.value.clone(),
                runbook: sc.runbook.value.clone(),
                inject: inject_ids,
                has_detect: sc.detect.is_some(),
                accept: sc
                    .accept
                    .iter()
                    .enumerate()
                    .map(|(i, c)| check_name(&c.value, i))
                    .collect(),
                rto,
                rpo,
                rpo_unit,
                rpo_how,
                approvals_by,
            },
        }),
        _ => {
            // Keep one of each (the runbook's problems may repeat per scenario).
            let mut seen = std::collections::HashSet::new();
            diags.retain(|d| seen.insert((d.span.map(|s| (s.line, s.column)), d.message.clone())));
            Err(diags)
        }
    }
}

/// The scenario's params as the params of a composed runbook (`{{ params.x }}`).
fn write_params(out: &mut Composer, sc: &Scenario) {
    if sc.params.is_empty() {
        return;
    }
    let q = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
    out.line("params:");
    for (k, v) in &sc.params {
        let ty = match &v.value {
            serde_json::Value::Bool(_) => "bool",
            serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => "int",
            _ => "string",
        };
        let default = match &v.value {
            serde_json::Value::String(_) | serde_json::Value::Bool(_) => v.value.to_string(),
            serde_json::Value::Number(_) if ty == "int" => v.value.to_string(),
            other => q(&other.to_string()),
        };
        out.push(
            &format!("  {}: {{type: {ty}, default: {default}}}", q(k)),
            Some((v.span.line, 0)),
        );
    }
}

/// The `requires` checks as the preflight of a runbook of their own (no secrets: they are
/// evaluated before anything, a scenario whose secrets are missing is an error, not a skip).
fn compose_requires(
    loaded: &LoadedDrill,
    sc: &Scenario,
    diags: &mut Vec<Diagnostic>,
) -> Option<Requires> {
    if sc.requires.is_empty() {
        return None;
    }
    let q = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
    let file_ref = format!("{}#requires", file_ref(&loaded.path, &sc.name.value));
    let mut out = Composer::new(sc.name.span);
    out.line(&format!(
        "runbook: {}",
        q(&format!(
            "{}/{}/requires",
            loaded.drill.drill.value, sc.name.value
        ))
    ));
    write_params(&mut out, sc);
    out.line("preflight:");
    for c in &sc.requires {
        out.node(&loaded.file.text, c.span, 2, None);
    }
    out.line("steps:");
    out.line("  - id: requires");
    out.line("    name: the scenario's requirements hold");
    out.line("    verify:");
    out.line("      - expr: \"true\"");
    let synthetic = SourceFile::new(file_ref.clone(), out.text.clone());
    match crate::compile::compile(synthetic, Path::new(&file_ref)) {
        Ok(compiled) => Some(Requires {
            params: crate::compile::resolve_params(&compiled.runbook, &[], &BTreeMap::new())
                .unwrap_or_default(),
            compiled,
            names: sc
                .requires
                .iter()
                .enumerate()
                .map(|(i, c)| check_name(&c.value, i))
                .collect(),
        }),
        Err(ds) => {
            for mut d in ds {
                d.message = d.message.replace("preflight", "requires");
                if d.message.contains("`secrets.") {
                    d.help = Some(
                        "`requires` checks run before the scenario's secrets are resolved: they read params only"
                            .to_owned(),
                    );
                }
                diags.push(out.map(d, &loaded.file));
            }
            None
        }
    }
}

/// A check's name for reports: its `name`, else its kind and what it reads.
pub fn check_name(c: &crate::model::Check, i: usize) -> String {
    if let Some(n) = &c.name {
        return n.clone();
    }
    let what = if let Some(r) = &c.run {
        format!("run: {}", r.value)
    } else if c.http.is_some() {
        "http".to_owned()
    } else if c.sql.is_some() {
        "sql".to_owned()
    } else if c.k8s.is_some() {
        "k8s".to_owned()
    } else if c.prometheus.is_some() {
        "prometheus".to_owned()
    } else if let Some(e) = &c.expr {
        format!("expr: {}", e.value)
    } else {
        "check".to_owned()
    };
    format!("#{} {what}", i + 1)
}

fn check_params(
    sc: &Scenario,
    rb: &Compiled,
    values: &[(String, String)],
    diags: &mut Vec<Diagnostic>,
) {
    for (name, v) in &sc.params {
        if !rb.runbook.params.contains_key(name) {
            let mut d = Diagnostic::new(
                "unknown-param",
                format!("runbook {} has no param `{name}`", sc.runbook.value),
                v.span,
            );
            d = match did_you_mean(name, rb.runbook.params.keys().map(String::as_str)) {
                Some(s) => d.with_help(format!("did you mean `{s}`?")),
                None if rb.runbook.params.is_empty() => {
                    d.with_help("this runbook declares no params")
                }
                None => d.with_help(format!(
                    "declared params: {}",
                    rb.runbook
                        .params
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            };
            diags.push(d);
        }
    }
    let known: Vec<(String, String)> = values
        .iter()
        .filter(|(k, _)| rb.runbook.params.contains_key(k))
        .cloned()
        .collect();
    if let Err(ds) = crate::compile::resolve_params(&rb.runbook, &known, &BTreeMap::new()) {
        for d in ds {
            let span = sc
                .params
                .iter()
                .find(|(k, _)| d.message.contains(&format!("`{k}`")))
                .map_or(sc.name.span, |(_, v)| v.span);
            let message = d.message.replace(" (from -p)", "");
            let help = if d.code == "missing-param" || message.contains("missing") {
                Some(format!(
                    "add it under this scenario's `params:` ({} requires it)",
                    sc.runbook.value
                ))
            } else {
                d.help.clone()
            };
            diags.push(Diagnostic {
                code: d.code,
                message: format!("{message} (runbook {})", sc.runbook.value),
                span: Some(span),
                label: None,
                help,
                related: Vec::new(),
            });
        }
    }
}

fn check_ids(sc: &Scenario, diags: &mut Vec<Diagnostic>) {
    let rpo_steps = sc.rpo.iter().flat_map(|r| r.value.steps.iter());
    for s in sc.inject.iter().chain(&sc.cleanup).chain(rpo_steps) {
        let id = &s.value.id;
        if RESERVED_IDS.contains(&id.value.as_str()) {
            diags.push(
                Diagnostic::new(
                    "reserved-id",
                    format!("step id `{}` is used by the drill itself", id.value),
                    id.span,
                )
                .with_help(format!(
                    "rename the step: {} are the composed scenario's own steps",
                    RESERVED_IDS.join(", ")
                )),
            );
        }
    }
}

/// The composed text and, for each of its lines, where it came from in the drill file.
struct Composer {
    text: String,
    /// Per line of `text`: the drill file's line and the column shift, or `None` (generated).
    lines: Vec<Option<(u64, i64)>>,
    /// Where generated lines point (the scenario's name).
    fallback: Span,
}

impl Composer {
    fn new(fallback: Span) -> Self {
        Self {
            text: String::new(),
            lines: Vec::new(),
            fallback,
        }
    }

    fn line(&mut self, l: &str) {
        self.push(l, None);
    }

    fn push(&mut self, l: &str, origin: Option<(u64, i64)>) {
        self.text.push_str(l);
        self.text.push('\n');
        self.lines.push(origin);
    }

    /// `prefix` then an expression from the drill file, as a quoted YAML string.
    fn mapped_value(&mut self, prefix: &str, v: &Spanned<String>) {
        let quoted = serde_json::Value::String(v.value.clone()).to_string();
        let col = i64::try_from(v.span.column).unwrap_or(1);
        let here = i64::try_from(prefix.chars().count()).unwrap_or(0) + 1;
        self.push(
            &format!("{prefix}{quoted}"),
            Some((v.span.line, col - here)),
        );
    }

    /// Copy the YAML node written at `span` (a list item or a block mapping value) as an item
    /// of a list indented by `dash` spaces; `needs` adds `needs: [<it>]` to a step.
    fn node(&mut self, text: &str, span: Span, dash: usize, needs: Option<&str>) {
        let Some(offset) = span.offset.filter(|o| *o < text.len()) else {
            return;
        };
        let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
        let prefix = &text[line_start..offset];
        let body_col = prefix.chars().count();
        let trimmed = prefix.trim_start();
        let pad = " ".repeat(dash);
        let block = if trimmed.is_empty() {
            Some(body_col)
        } else if trimmed.starts_with('-') && trimmed[1..].trim().is_empty() {
            Some(prefix.len() - trimmed.len())
        } else {
            None
        };
        let first_line = span.line;
        let Some(stop_indent) = block else {
            // A flow node (`{...}`): copied onto one line.
            let end = flow_end(text, offset).unwrap_or(text.len());
            let flat: String = text[offset..end]
                .chars()
                .map(|c| if c == '\n' { ' ' } else { c })
                .collect();
            let (head, body) = match needs {
                Some(n) if flat.starts_with('{') => {
                    (format!("{pad}- {{needs: [{n}], "), flat[1..].to_owned())
                }
                _ => (format!("{pad}- "), flat),
            };
            let shift = i64::try_from(body_col).unwrap_or(0)
                - i64::try_from(head.chars().count()).unwrap_or(0)
                + i64::from(needs.is_some() && head.ends_with(", "));
            self.push(&format!("{head}{body}"), Some((first_line, shift)));
            return;
        };
        // A block node: its first line, then every line indented deeper than the item's dash
        // (or, for a mapping value, at least as deep as its first key).
        let is_item = !trimmed.is_empty();
        let rest = &text[line_start..];
        let mut lines: Vec<&str> = Vec::new();
        for (i, l) in rest.split('\n').enumerate() {
            if i > 0 {
                let indent = l.len() - l.trim_start_matches(' ').len();
                let inside = if is_item {
                    indent > stop_indent
                } else {
                    indent >= stop_indent
                };
                // A comment less indented than the node does not end it (it is dropped).
                let comment = l.trim_start().starts_with('#');
                if !inside && comment {
                    lines.push("");
                    continue;
                }
                if !inside && !l.trim().is_empty() {
                    break;
                }
            }
            lines.push(l);
        }
        while lines.last().is_some_and(|l| l.trim().is_empty()) {
            lines.pop();
        }
        let shift = i64::try_from(body_col).unwrap_or(0) - i64::try_from(dash + 2).unwrap_or(0);
        if let Some(n) = needs {
            self.push(&format!("{pad}- needs: [{n}]"), Some((first_line, 0)));
        }
        for (i, l) in lines.iter().enumerate() {
            let body: String = if i == 0 || l.chars().take(body_col).all(|c| c == ' ') {
                l.chars().skip(body_col).collect()
            } else {
                l.trim_start().to_owned()
            };
            let lead = if i == 0 && needs.is_none() {
                format!("{pad}- ")
            } else {
                format!("{pad}  ")
            };
            self.push(
                &format!("{lead}{body}"),
                Some((first_line + i as u64, shift)),
            );
        }
    }

    /// A diagnostic about the composed text, moved to the drill file.
    fn map(&self, mut d: Diagnostic, drill: &SourceFile) -> Diagnostic {
        let place = |s: Span| -> Span {
            let origin = usize::try_from(s.line)
                .ok()
                .and_then(|l| l.checked_sub(1))
                .and_then(|l| self.lines.get(l).copied().flatten());
            match origin {
                Some((line, shift)) => {
                    let column = u64::try_from(
                        i64::try_from(s.column)
                            .unwrap_or(1)
                            .saturating_add(shift)
                            .max(1),
                    )
                    .unwrap_or(1);
                    Span {
                        line,
                        column,
                        offset: drill.offset_of(line, column),
                    }
                }
                None => self.fallback,
            }
        };
        d.span = Some(d.span.filter(|s| s.line > 0).map_or(self.fallback, place));
        d.related = d.related.into_iter().map(|(s, n)| (place(s), n)).collect();
        d
    }
}

/// The byte just past the flow collection starting at `offset`.
fn flow_end(text: &str, offset: usize) -> Option<usize> {
    let mut depth = 0usize;
    for ev in Parser::new_from_str(text) {
        let Ok((event, span)) = ev else { return None };
        let start = span.start.byte_offset().unwrap_or(0);
        match event {
            Event::MappingStart(..) | Event::SequenceStart(..) if depth > 0 || start == offset => {
                depth += 1;
            }
            Event::MappingEnd | Event::SequenceEnd if depth > 0 => {
                depth -= 1;
                if depth == 0 {
                    return span.end.byte_offset();
                }
            }
            _ => {}
        }
    }
    None
}

/// A scenario's position in the drill by name.
pub fn scenario_index(loaded: &LoadedDrill, name: &str) -> Option<usize> {
    loaded
        .drill
        .scenarios
        .iter()
        .position(|s| s.value.name.value == name)
}

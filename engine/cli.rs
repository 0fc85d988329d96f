//! The command line: argument parsing and dispatch. Each command returns an exit code.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

use crate::compile::{self, Compiled, ParamValues};
use crate::diagnostic::{self, Diagnostic, SourceFile};
use crate::exit;
use crate::plan;

/// Declarative runbooks for the people who get paged.
#[derive(Debug, Parser)]
#[command(name = "runbook", version, about, after_long_help = exit::TABLE, after_help = exit::TABLE)]
pub struct Cli {
    /// Diagnostics format: `human` (source snippets) or `short` (<file:line:col>: message).
    #[arg(long, global = true, value_enum, default_value_t = MessageFormat::Human)]
    pub message_format: MessageFormat,
    /// Where runs, journals, locks and the audit log live (default: `$RUNBOOK_STATE_DIR`, else
    /// `$XDG_STATE_HOME/runbook`, else `~/.local/state/runbook`).
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The audit signing key (from `runbook audit keygen`; default: `$RUNBOOK_AUDIT_KEY`), kept
    /// outside the state directory with mode 0600: checkpoints of the audit log are signed with it.
    #[arg(long, global = true, value_name = "FILE")]
    pub audit_key: Option<PathBuf>,
    /// With an audit key: sign a checkpoint every N audit entries, and at every run end
    /// (default: `$RUNBOOK_AUDIT_CHECKPOINT_EVERY`, else 100).
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub audit_checkpoint_every: Option<u64>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by `exec`, `resume` and `retry`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Run at most this many steps at once (overrides the runbook's `max_parallel`).
    #[arg(long, value_name = "N")]
    pub max_parallel: Option<usize>,
    /// Pre-approve every approval step (recorded as approved via --yes).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// A display name recorded with `--yes` pre-approvals of this process, next to the
    /// operating-system account that gives them (the account is who approves).
    #[arg(long, value_name = "NAME")]
    pub approver: Option<String>,
    /// Progress output (default: tty on a terminal, plain otherwise).
    #[arg(long, value_enum)]
    pub output: Option<crate::exec::OutputMode>,
    /// Take over the lock of a run whose process is dead on this host (recorded in the audit log).
    #[arg(long)]
    pub break_lock: bool,
}

/// Who approves or denies from the command line.
#[derive(Debug, Clone, clap::Args)]
pub struct ApprovalArgs {
    /// The run.
    pub run_id: String,
    /// The approval step.
    pub step: String,
    /// A display name recorded next to your operating-system account (which is who decides:
    /// a quorum counts accounts, and `self_approval: false` compares them).
    #[arg(long = "as", value_name = "NAME")]
    pub approver: Option<String>,
    /// A note kept with the decision.
    #[arg(long)]
    pub comment: Option<String>,
}

/// `runbook audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the whole hash chain and the approvals bound to it; with --public-key, also every
    /// signed checkpoint; name the first bad entry (exit 7 on tampering).
    Verify {
        /// The audit public key (`KEY.pub` from `audit keygen`): proves the log was not
        /// rewritten by anyone without the private key (repeat for rotated keys).
        #[arg(long = "public-key", value_name = "FILE")]
        public_key: Vec<PathBuf>,
        /// A head recorded by a witness (a line of `audit anchor`, or SEQ:HASH): fail unless
        /// the log still contains it (catches rollback and truncation).
        #[arg(long, value_name = "HEAD")]
        expect_head: Option<String>,
    },
    /// Generate an audit signing key: FILE (private, mode 0600) and FILE.pub (public).
    Keygen {
        /// Where to write the private key (outside the state directory).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Print the latest signed head of the audit log as one JSON line for an external witness
    /// (with an audit key, the current head is signed first).
    Anchor,
    /// Print audit entries as JSON lines (for a SIEM).
    Export {
        /// Only this run.
        #[arg(long, value_name = "RUN_ID")]
        run: Option<String>,
        /// Only entries at or after this time (ms since the epoch, or `YYYY-MM-DD`).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
    },
}

/// How diagnostics are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MessageFormat {
    /// rustc-style, with source snippets and help.
    Human,
    /// One line per problem: `file:line:col: message`.
    Short,
}

/// Plan output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanFormat {
    /// For humans.
    Text,
    /// The machine-readable plan (also what `--out` writes).
    Json,
    /// A Mermaid flowchart.
    Mermaid,
    /// A Graphviz digraph.
    Dot,
}

/// Params given on the command line.
#[derive(Debug, Clone, clap::Args)]
pub struct ParamArgs {
    /// A param value, `NAME=VALUE` (repeatable).
    #[arg(short = 'p', long = "param", value_name = "NAME=VALUE", value_parser = compile_params_parse)]
    pub params: Vec<(String, String)>,
    /// A YAML or JSON file of param values (a mapping); `-p` wins over it.
    #[arg(long, value_name = "FILE")]
    pub params_file: Option<PathBuf>,
}

fn compile_params_parse(s: &str) -> Result<(String, String), String> {
    crate::compile::resolve_params_assignment(s)
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check runbook files and report every problem with its position.
    Validate {
        /// Runbook files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Show what a run would do, without doing any of it.
    Plan {
        /// The runbook.
        file: PathBuf,
        /// Params.
        #[command(flatten)]
        params: ParamArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
        format: PlanFormat,
        /// Also write the machine-readable plan here, for `runbook exec --plan`.
        #[arg(long, value_name = "PLAN")]
        out: Option<PathBuf>,
    },
    /// Run a runbook: guards, actions, gates, approvals, rollback, `finally`.
    Exec {
        /// The runbook (optional with `--plan`, which names it).
        #[arg(required_unless_present = "plan")]
        file: Option<PathBuf>,
        /// Params.
        #[command(flatten)]
        params: ParamArgs,
        /// Execute a plan saved by `runbook plan --out`; refuses if the runbook or params changed.
        #[arg(long, value_name = "PLAN")]
        plan: Option<PathBuf>,
        /// Run options.
        #[command(flatten)]
        run: RunArgs,
        /// Do not journal: no resume, no audit entries (for benchmarks and throwaway runs).
        #[arg(long)]
        no_journal: bool,
    },
    /// Would this runbook work right now? Secrets, preflight, read-only guards, commands on
    /// PATH, HTTP targets — without any action. Exit 1 when something would fail.
    Check {
        /// The runbook.
        file: PathBuf,
        /// Params.
        #[command(flatten)]
        params: ParamArgs,
        /// Print findings as JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Continue a run that crashed, was cancelled or failed, exactly where it stopped.
    Resume {
        /// The run (or a unique prefix of its id).
        run_id: String,
        /// Re-run this step although it was in flight when the run stopped (repeatable).
        #[arg(long, value_name = "STEP")]
        rerun: Vec<String>,
        /// Treat this in-flight step as done without running it (repeatable).
        #[arg(long, value_name = "STEP")]
        skip: Vec<String>,
        /// Kill the still-running process of this in-flight step (its supervisor outlived the
        /// engine), then decide about it as about any step in flight (repeatable).
        #[arg(long, value_name = "STEP")]
        kill_running: Vec<String>,
        /// Resume although the runbook file changed since the run started (recorded).
        #[arg(long)]
        allow_changed: bool,
        /// Secret params again (they are never stored).
        #[command(flatten)]
        params: ParamArgs,
        /// Run options.
        #[command(flatten)]
        run: RunArgs,
    },
    /// Re-run a step of a finished run, and everything downstream of it.
    Retry {
        /// The run.
        run_id: String,
        /// The step to start again from: it and its descendants run again, in dependency
        /// order, with upstream results taken from the journal.
        #[arg(long, value_name = "STEP")]
        from: String,
        /// Also re-run, first, the upstream steps whose results no longer hold (undone by a
        /// rollback, failed or never run), and the upstream steps that depend on them.
        #[arg(long)]
        with_upstream: bool,
        /// Resume although the runbook file changed since the run started (recorded).
        #[arg(long)]
        allow_changed: bool,
        /// Secret params again (they are never stored).
        #[command(flatten)]
        params: ParamArgs,
        /// Run options.
        #[command(flatten)]
        run: RunArgs,
    },
    /// List runs, newest first.
    Runs {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// The timeline of a run: steps, attempts, durations, gate results, approvals.
    Show {
        /// The run.
        run_id: String,
    },
    /// Captured output of a run (masked), optionally of one step.
    Logs {
        /// The run.
        run_id: String,
        /// Only this step.
        step: Option<String>,
    },
    /// Approve a waiting approval step from another shell.
    Approve(ApprovalArgs),
    /// Deny a waiting approval step from another shell.
    Deny(ApprovalArgs),
    /// The tamper-evident audit log.
    Audit {
        /// What to do.
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The post-incident report of a run (a drill scenario's run: with what the drill measured).
    Report {
        /// The run (a unique prefix is enough).
        run_id: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = crate::report::ReportFormat::Markdown)]
        format: crate::report::ReportFormat,
        /// Write the report to this file instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Print the JSON Schema of runbook files.
    Schema,
    /// Serve Alertmanager webhooks: firing alerts start the runbooks of a triggers file.
    Serve(crate::cli_serve::ServeArgs),
    /// Disaster-recovery drills: run, validate, history, due, cronjob.
    Drill {
        /// What to do.
        #[command(subcommand)]
        command: crate::cli_drill::DrillCommand,
    },
    /// Internal: run a step's shell under a supervisor that outlives the engine (started by
    /// the engine itself, never by hand).
    #[command(name = "__supervise", hide = true)]
    Supervise {
        /// The state database to journal the outcome into when the engine is gone.
        #[arg(long, value_name = "FILE")]
        db: PathBuf,
        /// The run.
        #[arg(long)]
        run: String,
        /// The step, as journaled.
        #[arg(long)]
        step: String,
        /// The attempt.
        #[arg(long)]
        attempt: u32,
        /// Working directory of the shell.
        #[arg(long, value_name = "DIR")]
        cwd: Option<PathBuf>,
        /// The program and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
}

/// Parse the command line and run the command.
pub fn main() -> u8 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                exit::INVALID
            } else {
                exit::SUCCESS
            };
        }
    };
    run(cli)
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> u8 {
    match signing_config(&cli) {
        Ok(config) => crate::state::signing::set_default(config),
        Err(why) => {
            eprintln!("error: {why}");
            return exit::INVALID;
        }
    }
    let out = Output {
        format: cli.message_format,
        color: std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    match cli.command {
        Command::Supervise {
            db,
            run,
            step,
            attempt,
            cwd,
            command,
        } => crate::exec::supervise::main(&crate::exec::supervise::SuperviseArgs {
            db,
            run,
            step,
            attempt,
            cwd,
            command,
        }),
        Command::Validate { files } => validate(out, &files),
        Command::Plan {
            file,
            params,
            format,
            out: plan_out,
        } => plan_cmd(out, &file, &params, format, plan_out.as_deref()),
        Command::Exec {
            file,
            params,
            plan,
            run,
            no_journal,
        } => {
            let journal = if no_journal {
                Journal::Off
            } else {
                Journal::At(cli.state_dir.clone())
            };
            exec_cmd(
                out,
                file.as_deref(),
                &params,
                plan.as_deref(),
                &run,
                journal,
            )
        }
        Command::Resume {
            run_id,
            rerun,
            skip,
            kill_running,
            allow_changed,
            params,
            run,
        } => {
            let mut decisions = std::collections::BTreeMap::new();
            for s in rerun {
                decisions.insert(s, crate::exec::Decision::Rerun);
            }
            for s in skip {
                decisions.insert(s, crate::exec::Decision::Skip);
            }
            for s in kill_running {
                let d = decisions.get(&s).copied();
                decisions.insert(s, crate::exec::Decision::kill_then(d));
            }
            crate::cli_state::resume(
                out,
                cli.state_dir.clone(),
                &run_id,
                decisions,
                None,
                allow_changed,
                &params,
                &run,
            )
        }
        Command::Retry {
            run_id,
            from,
            with_upstream,
            allow_changed,
            params,
            run,
        } => crate::cli_state::resume(
            out,
            cli.state_dir.clone(),
            &run_id,
            std::collections::BTreeMap::new(),
            Some(crate::cli_state::RetryFrom {
                step: from,
                with_upstream,
            }),
            allow_changed,
            &params,
            &run,
        ),
        Command::Check { file, params, json } => check_cmd(out, &file, &params, json),
        Command::Runs { limit } => crate::cli_state::runs(cli.state_dir.clone(), limit),
        Command::Show { run_id } => crate::cli_state::show(cli.state_dir.clone(), &run_id),
        Command::Logs { run_id, step } => {
            crate::cli_state::logs(cli.state_dir.clone(), &run_id, step.as_deref())
        }
        Command::Approve(a) => crate::cli_state::decide(cli.state_dir.clone(), &a, true),
        Command::Deny(a) => crate::cli_state::decide(cli.state_dir.clone(), &a, false),
        Command::Audit { command } => crate::cli_state::audit(cli.state_dir.clone(), &command),
        Command::Report {
            run_id,
            format,
            out,
        } => crate::cli_report::report(cli.state_dir.clone(), &run_id, format, out.as_deref()),
        Command::Schema => {
            out!("{}", crate::schema::runbook_schema());
            exit::SUCCESS
        }
        Command::Serve(args) => crate::cli_serve::serve(out, cli.state_dir.clone(), &args),
        Command::Drill { command } => crate::cli_drill::run(out, cli.state_dir.clone(), command),
    }
}

/// The audit key and checkpoint interval: the flags, else the environment (read here rather than
/// by clap so that an empty variable counts as unset, like `RUNBOOK_STATE_DIR`).
fn signing_config(cli: &Cli) -> Result<crate::state::SigningConfig, String> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    let key = cli
        .audit_key
        .clone()
        .or_else(|| var("RUNBOOK_AUDIT_KEY").map(PathBuf::from));
    let every = match (cli.audit_checkpoint_every, var("RUNBOOK_AUDIT_CHECKPOINT_EVERY")) {
        (Some(n), _) => n,
        (None, Some(v)) => v
            .to_str()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .filter(|n| *n >= 1)
            .ok_or_else(|| {
                format!(
                    "RUNBOOK_AUDIT_CHECKPOINT_EVERY={} is not a whole number of entries (1 or more)",
                    v.to_string_lossy()
                )
            })?,
        (None, None) => crate::state::signing::DEFAULT_CHECKPOINT_EVERY,
    };
    Ok(crate::state::SigningConfig { key, every })
}

/// Where and how diagnostics go.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// Diagnostic style.
    pub format: MessageFormat,
    /// Whether to use colour.
    pub color: bool,
}

impl Output {
    /// Print diagnostics about a file to stderr.
    pub fn diagnostics(self, file: &SourceFile, diags: &[Diagnostic]) {
        let mut err = std::io::stderr().lock();
        match self.format {
            MessageFormat::Short => {
                for d in diags {
                    let _ = writeln!(err, "{}", d.short(file));
                    if let Some(h) = &d.help {
                        let _ = writeln!(err, "  help: {h}");
                    }
                }
            }
            MessageFormat::Human => {
                let _ = write!(err, "{}", diagnostic::render(file, diags, self.color));
            }
        }
        let n = diags.len();
        let _ = writeln!(
            err,
            "error: {} has {n} problem{}",
            file.name,
            if n == 1 { "" } else { "s" }
        );
    }
}

fn validate(out: Output, files: &[PathBuf]) -> u8 {
    let mut code = exit::SUCCESS;
    for f in files {
        match compile::compile_path(f) {
            Ok(c) => outln!("{}: ok ({} steps)", f.display(), c.steps.len()),
            Err((file, diags)) => {
                out.diagnostics(&file, &diags);
                code = exit::INVALID;
            }
        }
    }
    code
}

/// Compile a runbook and resolve its params, printing diagnostics on failure.
///
/// # Errors
/// The exit code to return.
pub fn load(out: Output, path: &Path, args: &ParamArgs) -> Result<(Compiled, ParamValues), u8> {
    let compiled = compile::compile_path(path).map_err(|(file, diags)| {
        out.diagnostics(&file, &diags);
        exit::INVALID
    })?;
    let file_values = match &args.params_file {
        Some(p) => read_params_file(out, p)?,
        None => BTreeMap::new(),
    };
    let values = compile::resolve_params(&compiled.runbook, &args.params, &file_values).map_err(
        |diags| {
            out.diagnostics(&compiled.file, &diags);
            exit::INVALID
        },
    )?;
    Ok((compiled, values))
}

fn read_params_file(out: Output, p: &Path) -> Result<BTreeMap<String, serde_json::Value>, u8> {
    let name = p.display().to_string();
    let text = std::fs::read_to_string(p).map_err(|e| {
        out.diagnostics(
            &SourceFile::new(name.clone(), ""),
            &[Diagnostic::global(
                "unreadable",
                format!("failed to read params file: {e}"),
            )],
        );
        exit::INVALID
    })?;
    let file = SourceFile::new(name, text.clone());
    crate::parse::parse_as::<BTreeMap<String, serde_json::Value>>(&file, &text).map_err(|d| {
        out.diagnostics(
            &file,
            &[d.with_help("a params file is a mapping of param names to values")],
        );
        exit::INVALID
    })
}

/// The runbook and its params for `plan`: like [`load`], except that required params nobody
/// gave are returned as missing instead of refused, so the plan can be drawn with placeholders
/// (the diagnostics are printed all the same). Any other problem with the params refuses.
fn load_for_plan(
    out: Output,
    path: &Path,
    args: &ParamArgs,
) -> Result<(Compiled, ParamValues, Vec<String>), u8> {
    let compiled = compile::compile_path(path).map_err(|(file, diags)| {
        out.diagnostics(&file, &diags);
        exit::INVALID
    })?;
    let file_values = match &args.params_file {
        Some(p) => read_params_file(out, p)?,
        None => BTreeMap::new(),
    };
    match compile::resolve_params(&compiled.runbook, &args.params, &file_values) {
        Ok(values) => Ok((compiled, values, Vec::new())),
        Err(diags) if diags.iter().all(|d| d.code == "missing-param") => {
            out.diagnostics(&compiled.file, &diags);
            let given = |name: &str| {
                args.params.iter().any(|(k, _)| k == name) || file_values.contains_key(name)
            };
            let missing: Vec<String> = compiled
                .runbook
                .params
                .iter()
                .filter(|(name, p)| p.value.default.is_none() && !given(name))
                .map(|(name, _)| name.clone())
                .collect();
            // Resolve the others as if the missing ones were not declared.
            let mut known = compiled.runbook.clone();
            known.params.retain(|name, _| !missing.contains(name));
            let values =
                compile::resolve_params(&known, &args.params, &file_values).map_err(|diags| {
                    out.diagnostics(&compiled.file, &diags);
                    exit::INVALID
                })?;
            Ok((compiled, values, missing))
        }
        Err(diags) => {
            out.diagnostics(&compiled.file, &diags);
            Err(exit::INVALID)
        }
    }
}

fn plan_cmd(
    out: Output,
    path: &Path,
    args: &ParamArgs,
    format: PlanFormat,
    plan_out: Option<&Path>,
) -> u8 {
    let (compiled, values, missing) = match load_for_plan(out, path, args) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let p = match plan::build_incomplete(&compiled, &values, &missing) {
        Ok(p) => p,
        Err(diags) => {
            out.diagnostics(&compiled.file, &diags);
            return exit::INVALID;
        }
    };
    let json = serde_json::to_string_pretty(&p).unwrap_or_default() + "\n";
    if let Some(o) = plan_out {
        if p.is_incomplete() {
            // An executable plan binds every param: one with placeholders must never be run.
            eprintln!(
                "error: not writing {}: the plan is incomplete (missing params: {}), and `exec --plan` runs complete plans only\n  help: pass {} and plan again",
                o.display(),
                missing.join(", "),
                missing
                    .iter()
                    .map(|m| format!("-p {m}=<value>"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        } else if let Err(e) = std::fs::write(o, &json) {
            eprintln!("error: failed to write the plan to {}: {e}", o.display());
            return exit::INVALID;
        } else {
            eprintln!(
                "plan written to {} — execute exactly this plan with `runbook exec --plan {}`",
                o.display(),
                o.display()
            );
        }
    }
    let text = match format {
        PlanFormat::Text => plan::text(&p),
        PlanFormat::Json => json,
        PlanFormat::Mermaid => plan::mermaid(&p),
        PlanFormat::Dot => plan::dot(&p),
    };
    out!("{text}");
    if p.is_incomplete() {
        eprintln!(
            "note: plan drawn with placeholders for the missing params ({}): incomplete, for review only",
            missing.join(", ")
        );
        return exit::INVALID;
    }
    exit::SUCCESS
}

/// Whether (and where) a run is journaled.
enum Journal {
    /// In the state directory (`None`: the default one).
    At(Option<PathBuf>),
    /// Not at all (`--no-journal`).
    Off,
}

fn exec_cmd(
    out: Output,
    file: Option<&Path>,
    args: &ParamArgs,
    plan_file: Option<&Path>,
    run: &RunArgs,
    journal: Journal,
) -> u8 {
    let (compiled, values) = if let Some(pf) = plan_file {
        match load_plan(out, pf, file, args) {
            Ok(x) => x,
            Err(code) => return code,
        }
    } else {
        let Some(file) = file else {
            return exit::INVALID;
        };
        match load(out, file, args) {
            Ok(x) => x,
            Err(code) => return code,
        }
    };
    let store = match journal {
        Journal::At(dir) => match crate::cli_state::open_store(dir) {
            Ok(s) => Some(s),
            Err(code) => return code,
        },
        Journal::Off => None,
    };
    launch(&compiled, &values, run, store, None)
}

/// Start (or continue) a run and map its outcome to an exit code.
pub(crate) fn launch(
    compiled: &Compiled,
    values: &ParamValues,
    run: &RunArgs,
    store: Option<std::sync::Arc<dyn crate::state::Store>>,
    resume: Option<(crate::state::RunRecord, crate::exec::ResumeFrom)>,
) -> u8 {
    let unsupported = crate::exec::unsupported_steps(compiled);
    if !unsupported.is_empty() {
        eprintln!(
            "error: failed to start: this version of runbook cannot execute {}\n  help: `plan` and `validate` support every kind; this build cannot execute these",
            unsupported.join(", ")
        );
        return exit::INVALID;
    }
    if run.max_parallel == Some(0) {
        eprintln!("error: --max-parallel must be at least 1");
        return exit::INVALID;
    }
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    let output = run.output.unwrap_or(if std::io::stderr().is_terminal() {
        crate::exec::OutputMode::Tty
    } else {
        crate::exec::OutputMode::Plain
    });
    let options = crate::exec::Options {
        max_parallel: run.max_parallel,
        yes: run.yes,
        // The approver is the OS account; `--approver` is only a label next to it.
        yes_via: run.approver.as_ref().map(|d| format!("--yes (as {d})")),
        approver: None,
        interactive,
        output,
    };
    let launch = crate::exec::Launch {
        compiled,
        params: values,
        options: &options,
        store,
        resume,
        break_lock: run.break_lock,
        cancel: None,
    };
    match crate::exec::execute(&launch) {
        Ok(outcome) => outcome.status.exit_code(),
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

/// Load a saved plan and check that it still describes the runbook and params it was made for.
fn load_plan(
    out: Output,
    plan_file: &Path,
    file: Option<&Path>,
    args: &ParamArgs,
) -> Result<(Compiled, ParamValues), u8> {
    let text = std::fs::read_to_string(plan_file).map_err(|e| {
        eprintln!(
            "error: failed to read the plan {}: {e}",
            plan_file.display()
        );
        exit::INVALID
    })?;
    let saved = plan::read(&text).map_err(|e| {
        eprintln!("error: failed to read the plan {}: {e}\n  help: make one with `runbook plan FILE --out PLAN`", plan_file.display());
        exit::INVALID
    })?;
    let path = file.map_or_else(|| PathBuf::from(&saved.file), Path::to_path_buf);
    // Params come from the plan; secret params (shown as ***) must be given again with -p.
    let mut cli: Vec<(String, String)> = saved
        .params
        .iter()
        .filter(|(_, v)| v.as_str() != Some("***"))
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_str().map_or_else(|| v.to_string(), str::to_owned),
            )
        })
        .collect();
    cli.extend(args.params.iter().cloned());
    let merged = ParamArgs {
        params: cli,
        params_file: args.params_file.clone(),
    };
    let (compiled, values) = load(out, &path, &merged)?;
    if compiled.hash != saved.runbook_hash {
        eprintln!(
            "error: refusing to execute the plan: {} changed since the plan was made (sha256 {} then, {} now)\n  help: review a new plan: `runbook plan {} --out {}`",
            path.display(),
            &saved.runbook_hash[..12.min(saved.runbook_hash.len())],
            &compiled.hash[..12],
            path.display(),
            plan_file.display()
        );
        return Err(exit::STATE);
    }
    if plan::plan_hash(&compiled.hash, &values) != saved.plan_hash {
        eprintln!(
            "error: refusing to execute the plan: the params differ from those the plan was made with\n  help: pass exactly the plan's params (secret params again with -p), or make a new plan"
        );
        return Err(exit::STATE);
    }
    Ok((compiled, values))
}

fn check_cmd(out: Output, file: &Path, args: &ParamArgs, json: bool) -> u8 {
    let (compiled, values) = match load(out, file, args) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let findings = match crate::exec::check(&compiled, &values) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::INTERNAL;
        }
    };
    let failed = findings.iter().filter(|f| f.outcome == "fail").count();
    for f in &findings {
        if json {
            outln!("{}", serde_json::to_string(f).unwrap_or_default());
        } else {
            let mark = match f.outcome {
                "ok" => "✓",
                "fail" => "✗",
                _ => "-",
            };
            outln!("{mark} {:<40} {}", f.what, f.detail);
        }
    }
    if !json {
        // Only what ran counts as a check: a skipped one proves nothing either way.
        let skipped = findings.iter().filter(|f| f.outcome == "skip").count();
        outln!(
            "\n{}: {} checks, {failed} failing, {skipped} skipped",
            file.display(),
            findings.len() - skipped
        );
    }
    if failed == 0 {
        exit::SUCCESS
    } else {
        exit::STEP_FAILED
    }
}

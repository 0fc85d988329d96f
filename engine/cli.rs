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
    /// The command.
    #[command(subcommand)]
    pub command: Command,
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
        /// Run at most this many steps at once (overrides the runbook's `max_parallel`).
        #[arg(long, value_name = "N")]
        max_parallel: Option<usize>,
        /// Pre-approve every approval step (recorded as approved via --yes).
        #[arg(long, short = 'y')]
        yes: bool,
        /// Name recorded for approvals given by this process (default: the OS user).
        #[arg(long, value_name = "NAME")]
        approver: Option<String>,
        /// Progress output (default: tty on a terminal, plain otherwise).
        #[arg(long, value_enum)]
        output: Option<crate::exec::OutputMode>,
    },
    /// Print the JSON Schema of runbook files.
    Schema,
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
    let out = Output {
        format: cli.message_format,
        color: std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    match cli.command {
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
            max_parallel,
            yes,
            approver,
            output,
        } => exec_cmd(
            out,
            file.as_deref(),
            &params,
            plan.as_deref(),
            max_parallel,
            yes,
            approver,
            output,
        ),
        Command::Schema => {
            print!("{}", crate::schema::runbook_schema());
            exit::SUCCESS
        }
    }
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
            Ok(c) => println!("{}: ok ({} steps)", f.display(), c.steps.len()),
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

fn plan_cmd(
    out: Output,
    path: &Path,
    args: &ParamArgs,
    format: PlanFormat,
    plan_out: Option<&Path>,
) -> u8 {
    let (compiled, values) = match load(out, path, args) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let p = match plan::build(&compiled, &values) {
        Ok(p) => p,
        Err(diags) => {
            out.diagnostics(&compiled.file, &diags);
            return exit::INVALID;
        }
    };
    let json = serde_json::to_string_pretty(&p).unwrap_or_default() + "\n";
    if let Some(o) = plan_out
        && let Err(e) = std::fs::write(o, &json)
    {
        eprintln!("error: failed to write the plan to {}: {e}", o.display());
        return exit::INVALID;
    }
    let text = match format {
        PlanFormat::Text => plan::text(&p),
        PlanFormat::Json => json,
        PlanFormat::Mermaid => plan::mermaid(&p),
        PlanFormat::Dot => plan::dot(&p),
    };
    print!("{text}");
    exit::SUCCESS
}

#[expect(
    clippy::too_many_arguments,
    reason = "one argument per command-line option"
)]
fn exec_cmd(
    out: Output,
    file: Option<&Path>,
    args: &ParamArgs,
    plan_file: Option<&Path>,
    max_parallel: Option<usize>,
    yes: bool,
    approver: Option<String>,
    output: Option<crate::exec::OutputMode>,
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
    let unsupported = crate::exec::unsupported_steps(&compiled);
    if !unsupported.is_empty() {
        eprintln!(
            "error: failed to start: this version of runbook cannot execute {}\n  help: `plan` and `validate` support every kind; execution of k8s, sql and prometheus arrives in later versions",
            unsupported.join(", ")
        );
        return exit::INVALID;
    }
    if max_parallel == Some(0) {
        eprintln!("error: --max-parallel must be at least 1");
        return exit::INVALID;
    }
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    let output = output.unwrap_or(if std::io::stderr().is_terminal() {
        crate::exec::OutputMode::Tty
    } else {
        crate::exec::OutputMode::Plain
    });
    let options = crate::exec::Options {
        max_parallel,
        yes,
        approver,
        interactive,
        output,
    };
    match crate::exec::execute(&compiled, &values, &options) {
        Ok(outcome) => outcome.status.exit_code(),
        Err(e) => {
            eprintln!("error: {e}");
            exit::INVALID
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
    let saved: plan::Plan = serde_json::from_str(&text).map_err(|e| {
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

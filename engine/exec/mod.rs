//! Exec phase: run the compiled DAG on tokio — guards, actions with retries and timeouts,
//! verification gates, approvals, rollback and `finally` — reporting every transition as an event.

pub mod approval;
mod context;
mod events;
mod report;
mod scheduler;
mod step;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::compile::{Compiled, ParamValues};

pub use context::{ActionCtx, CancelWait, Shared};
pub use events::{Event, Reporter, Stream};
pub use report::{OutputMode, reporter_for};
pub use scheduler::call;

/// What one performance of an action produced.
#[derive(Debug, Clone)]
pub struct ActionResult {
    /// `result` as templates and asserts see it (secrets masked).
    pub value: serde_json::Value,
    /// The kind's own verdict (exit 0, HTTP 2xx, expression true).
    pub ok: bool,
    /// One line for progress output: `exit 0`, `HTTP 503`.
    pub summary: String,
    /// Exit code of a `run` action (for `retry.on.exit_codes`).
    pub exit_code: Option<i32>,
    /// Status of an `http` action (for `retry.on.http_statuses`).
    pub http_status: Option<u16>,
}

/// Why an action produced no result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ActionError {
    /// The run was cancelled while the action ran; its process group was killed.
    #[error("cancelled")]
    Cancelled,
    /// The attempt exceeded its timeout; its process group was killed.
    #[error("timed out after {}", crate::duration::format(*.0))]
    TimedOut(Duration),
    /// The action could not be performed (message already masked).
    #[error("{0}")]
    Failed(String),
    /// An approval was denied, or nobody approved in time (aborts the run).
    #[error("{0}")]
    Denied(String),
    /// This build cannot perform the kind yet.
    #[error("the `{0}` kind cannot be executed by this version of runbook")]
    Unsupported(&'static str),
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Every step succeeded or was skipped by its guard.
    Succeeded,
    /// A step failed; no rollback.
    Failed,
    /// A step failed; compensations ran.
    RolledBack,
    /// A guard failed or an approval was denied.
    Aborted,
    /// Ctrl-C, SIGTERM or the whole-run timeout.
    Cancelled,
}

impl RunStatus {
    /// The name templates see as `run.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::RolledBack => "rolled_back",
            RunStatus::Aborted => "aborted",
            RunStatus::Cancelled => "cancelled",
        }
    }

    /// The documented exit code.
    pub fn exit_code(self) -> u8 {
        match self {
            RunStatus::Succeeded => crate::exit::SUCCESS,
            RunStatus::Failed => crate::exit::STEP_FAILED,
            RunStatus::RolledBack => crate::exit::ROLLED_BACK,
            RunStatus::Aborted => crate::exit::ABORTED,
            RunStatus::Cancelled => crate::exit::CANCELLED,
        }
    }
}

/// Operator choices for one execution.
#[derive(Debug, Clone)]
pub struct Options {
    /// Override of the runbook's `max_parallel`.
    pub max_parallel: Option<usize>,
    /// Pre-approve every approval step (recorded as such).
    pub yes: bool,
    /// Who approves (default: the OS user).
    pub approver: Option<String>,
    /// Whether a human can be asked on this terminal.
    pub interactive: bool,
    /// How progress is shown.
    pub output: OutputMode,
}

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Run id.
    pub run_id: String,
    /// Final status.
    pub status: RunStatus,
}

/// Secrets resolved from their sources.
///
/// # Errors
/// The first secret that cannot be read, with its name and source (never its value).
pub fn resolve_secrets(c: &Compiled) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (name, src) in &c.runbook.secrets {
        let v = match &src.value {
            crate::model::SecretSource::Env(var) => std::env::var(var).map_err(|_| {
                format!("failed to resolve secret `{name}`: environment variable {var} is not set")
            })?,
            crate::model::SecretSource::File(path) => std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
                .map_err(|e| {
                    format!("failed to resolve secret `{name}`: cannot read {path}: {e}")
                })?,
        };
        out.push((name.clone(), v));
    }
    Ok(out)
}

/// The steps this build cannot execute (k8s, sql, prometheus arrive in later versions).
pub fn unsupported_steps(c: &Compiled) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..c.steps.len() {
        let step = c.step(i);
        let mut actions = crate::kinds::step_actions(step);
        for ch in step.require.iter().chain(&step.verify) {
            actions.extend(crate::kinds::check_actions(ch));
        }
        if let Some(comp) = &step.compensate {
            actions.extend(crate::kinds::compensation_actions(&comp.value));
        }
        for a in actions {
            if !a.supported() {
                out.push(format!("{} ({})", step.id.value, a.name()));
            }
        }
    }
    for ch in &c.runbook.preflight {
        for a in crate::kinds::check_actions(ch) {
            if !a.supported() {
                out.push(format!("preflight ({})", a.name()));
            }
        }
    }
    out
}

/// Run a compiled runbook to completion on a new tokio runtime.
///
/// # Errors
/// When the runtime cannot start or a secret cannot be resolved (nothing ran).
pub fn execute(c: &Compiled, params: &ParamValues, options: &Options) -> Result<Outcome, String> {
    let secrets = resolve_secrets(c)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("failed to start the async runtime: {e}"))?;
    let run_id = new_run_id();
    let reporter = reporter_for(options.output);
    let shared = Shared::new(
        run_id.clone(),
        c,
        params,
        &secrets,
        options.clone(),
        reporter,
    )?;
    let status = rt.block_on(async {
        let s = shared.clone();
        let signals = tokio::spawn(async move { context::cancel_on_signals(s).await });
        let status = scheduler::run(
            shared.clone(),
            Arc::new(c.clone()),
            params.clone(),
            Vec::new(),
        )
        .await;
        signals.abort();
        status
    });
    Ok(Outcome { run_id, status })
}

/// A time-sortable, unique-enough run id: `20261125-170405-3f9a`.
pub fn new_run_id() -> String {
    let ms = crate::clock::now_ms();
    let stamp = crate::clock::rfc3339(ms);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mix = (u64::from(nanos) ^ (u64::from(std::process::id()) << 16))
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    format!(
        "{}{}{}-{}{}{}-{:04x}",
        &stamp[0..4],
        &stamp[5..7],
        &stamp[8..10],
        &stamp[11..13],
        &stamp[14..16],
        &stamp[17..19],
        (mix >> 48) & 0xffff
    )
}

/// The user running the engine: `$USER`, else the passwd entry of the process's uid.
pub fn current_user() -> String {
    use std::os::unix::fs::MetadataExt;
    if let Ok(u) = std::env::var("USER").or_else(|_| std::env::var("LOGNAME"))
        && !u.is_empty()
    {
        return u;
    }
    let Ok(uid) = std::fs::metadata("/proc/self").map(|m| m.uid()) else {
        return "unknown".to_owned();
    };
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| {
            p.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_owned())
            })
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// This host's name.
pub fn current_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned())
}

/// Where a called runbook is, relative to the caller.
pub(crate) fn resolve_relative(base: &std::path::Path, rel: &str) -> PathBuf {
    let p = PathBuf::from(rel);
    if p.is_absolute() {
        p
    } else {
        base.parent().unwrap_or(std::path::Path::new(".")).join(p)
    }
}

//! Exec phase: run the compiled DAG on tokio — guards, actions with retries and timeouts,
//! verification gates, approvals, rollback and `finally` — reporting every transition as an event.

pub mod approval;
mod check;
mod context;
mod events;
mod journal;
mod report;
mod resume;
mod scheduler;
mod step;
pub mod supervise;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::compile::{Compiled, ParamValues};

pub use check::{Finding, check};
pub use context::{ActionCtx, CancelWait, Shared};
pub use events::{Event, Reporter, Stream};
pub use report::{OutputMode, RunInfo, reporter_for};
pub use resume::{Decision, ResumeFrom, RetryError, RetryPlan, retry_plan};
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
    /// A step failed; compensations ran, and all of them worked.
    RolledBack,
    /// A step failed; compensations ran, and at least one failed: its step is still in effect.
    RollbackIncomplete,
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
            RunStatus::RollbackIncomplete => "rollback_incomplete",
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
            RunStatus::RollbackIncomplete => crate::exit::ROLLBACK_INCOMPLETE,
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
    /// How `yes` pre-approvals are recorded in the journal and audit log (default `--yes`):
    /// `drill` when a drill file answers, `serve` for a trigger in auto mode.
    pub yes_via: Option<String>,
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
                .inspect(|_| crate::serve::auth::warn_if_readable(path))
                .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
                .map_err(|e| {
                    format!("failed to resolve secret `{name}`: cannot read {path}: {e}")
                })?,
        };
        crate::mask::check_secret(name, &v).map_err(|e| {
            format!(
                "{}:{}:{}: {e}",
                c.path.display(),
                src.span.line,
                src.span.column
            )
        })?;
        out.push((name.clone(), v));
    }
    Ok(out)
}

/// The steps this build cannot execute (a kind whose `Perform::executable` says no): `exec`
/// refuses such a runbook before anything runs rather than failing halfway.
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

/// Why a run could not start (or continue); nothing was done.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// A secret could not be resolved.
    #[error("{0}")]
    Secret(String),
    /// The async runtime or HTTP client could not start.
    #[error("{0}")]
    Setup(String),
    /// The state store failed.
    #[error("failed to use the state store: {0}")]
    State(#[from] crate::state::StateError),
    /// Another run holds the lock.
    #[error("failed to acquire lock `{name}`: held by run {} ({}@{}, pid {}) since {}{}", .holder.run_id, .holder.user, .holder.host, .holder.pid, crate::clock::rfc3339(*.since_ms), lock_hint(&.holder.run_id, *.holder_dead))]
    LockHeld {
        /// Lock name.
        name: String,
        /// Who holds it.
        holder: Box<crate::state::LockHolder>,
        /// Since when.
        since_ms: i64,
        /// Whether the holder process is gone (so `--break-lock` is allowed).
        holder_dead: bool,
    },
    /// Steps were in flight when the run stopped and nobody decided what to do with them.
    #[error("failed to resume: {}", .0.join("; "))]
    NeedsDecision(Vec<String>),
}

impl ExecError {
    /// The documented exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            ExecError::Secret(_) => crate::exit::INVALID,
            ExecError::Setup(_) => crate::exit::INTERNAL,
            ExecError::State(_) | ExecError::LockHeld { .. } | ExecError::NeedsDecision(_) => {
                crate::exit::STATE
            }
        }
    }
}

/// Everything a run needs to start.
pub struct Launch<'a> {
    /// The runbook.
    pub compiled: &'a Compiled,
    /// Its params.
    pub params: &'a ParamValues,
    /// Operator options.
    pub options: &'a Options,
    /// The journal; `None` runs without durability (no resume, no audit).
    pub store: Option<Arc<dyn crate::state::Store>>,
    /// Continue an existing run instead of starting one.
    pub resume: Option<(crate::state::RunRecord, ResumeFrom)>,
    /// Break a lock whose holder process is dead on this host.
    pub break_lock: bool,
    /// Cancel from elsewhere in this process (`runbook serve` stopping) instead of on SIGINT and
    /// SIGTERM; `None`: the run listens to the signals itself, as a command-line run should.
    pub cancel: Option<CancelHandle>,
}

/// Cancels a run from another thread of the same process.
///
/// A server runs many runs in one process: each must stop on the server's shutdown, including
/// a run that is only starting when the signal arrives. A handle cancelled before its run
/// starts cancels the run as soon as it does, so there is no window in which a run misses it.
#[derive(Debug, Clone)]
pub struct CancelHandle(Arc<tokio::sync::watch::Sender<Option<String>>>);

impl Default for CancelHandle {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::watch::channel(None).0))
    }
}

impl CancelHandle {
    /// Cancel the run (like Ctrl-C: running steps stop, `finally` runs); `reason` is journaled.
    pub fn cancel(&self, reason: &str) {
        self.0.send_replace(Some(reason.to_owned()));
    }

    /// Whether [`CancelHandle::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.borrow().is_some()
    }

    /// Wait for a cancellation and pass it on to the run.
    async fn forward(self, shared: Arc<Shared>) {
        let mut rx = self.0.subscribe();
        loop {
            let reason = rx.borrow_and_update().clone();
            if let Some(reason) = reason {
                shared.cancel(&reason);
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Run a compiled runbook to completion on a new tokio runtime.
///
/// # Errors
/// When the run cannot start (secrets, lock, state, undecided in-flight steps); nothing ran.
pub fn execute(launch: &Launch<'_>) -> Result<Outcome, ExecError> {
    let c = launch.compiled;
    let secrets = resolve_secrets(c).map_err(ExecError::Secret)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| ExecError::Setup(format!("failed to start the async runtime: {e}")))?;
    let run_id = launch
        .resume
        .as_ref()
        .map_or_else(crate::state::new_run_id, |(r, _)| r.id.clone());
    let user = current_user();
    let host = current_host();
    let display = reporter_for(
        launch.options.output,
        RunInfo {
            journaled: launch.store.is_some(),
            mutating: c
                .steps
                .iter()
                .filter(|s| s.mutates)
                .map(|s| s.id.clone())
                .collect(),
            steps: c.steps.iter().map(|s| s.id.clone()).collect(),
            rto: c.rto,
        },
    );
    let shown_params =
        serde_json::to_value(crate::plan::shown_params(c, launch.params)).unwrap_or_default();

    // Lock and run record come first: if either fails, nothing has happened.
    let mut lock = None;
    let reporter: Box<dyn Reporter> = match &launch.store {
        Some(store) => {
            let name = lock_name(c, launch.params);
            let holder = crate::state::LockHolder {
                run_id: run_id.clone(),
                user: user.clone(),
                host: host.clone(),
                pid: std::process::id(),
            };
            let grant = acquire(
                store.as_ref(),
                &name,
                &holder,
                launch.break_lock,
                &user,
                &host,
            )?;
            lock = Some((name, grant.token));
            // Holding the lock, a resume checks that nobody continued the run since it read the
            // journal (another resume that finished and released the lock in between).
            if let Some((_, from)) = &launch.resume {
                let seen = from.events.len();
                let changed = match store.events(&run_id) {
                    Ok(now) if now.len() == seen => None,
                    Ok(now) => Some(crate::state::StateError::RunChanged {
                        run_id: run_id.clone(),
                        seen,
                        now: now.len(),
                    }),
                    Err(e) => Some(e),
                };
                if let Some(e) = changed {
                    if let Some((name, _)) = &lock {
                        let _ = store.release_lock(name, &run_id);
                    }
                    return Err(e.into());
                }
            }
            let created = if launch.resume.is_none() {
                store
                    .create_run(&crate::state::NewRun {
                        id: run_id.clone(),
                        runbook: c.runbook.runbook.value.clone(),
                        file: c.path.display().to_string(),
                        runbook_hash: c.hash.clone(),
                        params: shown_params.clone(),
                        user: user.clone(),
                        host: host.clone(),
                        pid: std::process::id(),
                        parent_run: None,
                    })
                    .map(|_| ())
            } else {
                store.set_status(&run_id, crate::state::RunStatus::Running)
            };
            if let Err(e) = created {
                if let Some((name, _)) = &lock {
                    let _ = store.release_lock(name, &run_id);
                }
                return Err(e.into());
            }
            Box::new(journal::JournalReporter::new(
                store.clone(),
                run_id.clone(),
                user.clone(),
                host.clone(),
                display,
            ))
        }
        None => display,
    };
    let shared = Shared::new(
        run_id.clone(),
        c,
        launch.params,
        &secrets,
        launch.options.clone(),
        reporter,
        launch.store.clone(),
    )
    .map_err(ExecError::Setup)?;
    if let Some((_, token)) = &lock {
        shared.set_lock_token(*token);
    }
    let compiled = Arc::new(c.clone());
    let result = rt.block_on(async {
        let s = shared.clone();
        let signals = match launch.cancel.clone() {
            Some(handle) => tokio::spawn(handle.forward(s)),
            None => tokio::spawn(async move { context::cancel_on_signals(s).await }),
        };
        let (prior, recovered) = match &launch.resume {
            Some((_, from)) => {
                match scheduler::prepare_resume(&shared, &compiled, launch.params, from).await {
                    Ok(p) => p,
                    Err(e) => {
                        signals.abort();
                        return Err(e);
                    }
                }
            }
            None => Default::default(),
        };
        let status = scheduler::run(
            shared.clone(),
            compiled.clone(),
            launch.params.clone(),
            Vec::new(),
            prior,
            recovered,
        )
        .await;
        signals.abort();
        Ok(status)
    });
    if let (Some(store), Some((name, _))) = (&launch.store, &lock) {
        let _ = store.release_lock(name, &run_id);
    }
    let status = result?;
    Ok(Outcome { run_id, status })
}

/// Whether `name` (of `--rerun`/`--skip`) is a step of the runbook, or a step of a runbook one
/// of its `call` steps ran in this run (`call/step`, as the journal names it).
pub fn names_a_step(c: &Compiled, events: &[crate::state::EventRecord], name: &str) -> bool {
    c.index_by_id.contains_key(name)
        || (name.contains('/') && events.iter().any(|e| e.step.as_deref() == Some(name)))
}

/// The lock a run holds: the runbook's `lock` template rendered with its params, else its name.
pub fn lock_name(c: &Compiled, params: &ParamValues) -> String {
    let name = c.runbook.runbook.value.clone();
    let Some(t) = &c.runbook.lock else {
        return name;
    };
    let r = crate::template::Renderer::new(
        minijinja::context! { params => minijinja::Value::from(minijinja::value::Serde(params)) },
    );
    r.render(&t.value, crate::template::Escape::None)
        .unwrap_or(name)
}

fn acquire(
    store: &dyn crate::state::Store,
    name: &str,
    holder: &crate::state::LockHolder,
    break_lock: bool,
    user: &str,
    host: &str,
) -> Result<crate::state::LockGrant, ExecError> {
    match store.acquire_lock(name, holder) {
        Ok(g) => Ok(g),
        Err(crate::state::StateError::LockHeld {
            holder: held,
            since_ms,
            ..
        }) => {
            let dead = held.host == holder.host && !pid_alive(held.pid);
            // A resumed run takes back the lock its own crashed process left behind.
            let own = held.run_id == holder.run_id;
            if (break_lock || own) && dead {
                let audit = crate::state::AuditInput {
                    user: user.to_owned(),
                    host: host.to_owned(),
                    run_id: Some(holder.run_id.clone()),
                    step: None,
                    action: "lock.break".to_owned(),
                    target: Some(name.to_owned()),
                    outcome: "broken".to_owned(),
                    detail: serde_json::json!({ "previous_holder": held }),
                };
                // Compare-and-swap on the holder found dead: of two resumes (or breakers) that
                // saw it, only one takes the lock; the other is refused naming the winner.
                return match store.take_over_lock(name, &held, holder, &audit) {
                    Ok(g) => Ok(g),
                    Err(crate::state::StateError::LockTakenOver {
                        current: Some(now),
                        since_ms: Some(since_ms),
                        ..
                    }) => Err(ExecError::LockHeld {
                        name: name.to_owned(),
                        holder_dead: now.host == holder.host && !pid_alive(now.pid),
                        holder: now,
                        since_ms,
                    }),
                    Err(e) => Err(ExecError::State(e)),
                };
            }
            Err(ExecError::LockHeld {
                name: name.to_owned(),
                holder: held,
                since_ms,
                holder_dead: dead,
            })
        }
        Err(e) => Err(ExecError::State(e)),
    }
}

/// What the operator can do about a held lock: a dead holder's run is best resumed (it keeps
/// its journal, its done steps and its lock); breaking the lock starts over beside it.
fn lock_hint(run_id: &str, holder_dead: bool) -> String {
    if holder_dead {
        format!(
            " — that process is gone: `runbook resume {run_id}` continues that run where it \
             stopped (and takes its lock back); --break-lock takes the lock over for a new run \
             instead (recorded in the audit log)"
        )
    } else {
        " — it is still running".to_owned()
    }
}

/// Whether a process exists on this host (a zombie counts as dead: it will never release).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses, which may itself contain spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_none_or(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// The user running the engine: the operating-system account of the process (never `$USER`,
/// which anyone can set: runs, approvals and audit entries name real accounts).
pub fn current_user() -> String {
    crate::identity::os_account().name.clone()
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

//! What every task of a run shares (masker, reporter, cancellation, HTTP client) and what an
//! action sees of it ([`ActionCtx`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use minijinja::Value;
use tokio::sync::watch;

use super::{Event, Options, Reporter, Stream};
use crate::compile::{Compiled, ParamValues};
use crate::mask::Masker;
use crate::template::Renderer;

/// Run-wide state shared by every task.
pub struct Shared {
    /// Run id.
    pub run_id: String,
    /// Who started the run.
    pub user: String,
    /// Where.
    pub host: String,
    /// When (ms since epoch).
    pub started_at_ms: i64,
    /// Masks every secret value in every output; grows when a called runbook brings secrets of
    /// its own.
    masker: std::sync::RwLock<Masker>,
    /// Steps this run may still start, `call`ed runbooks included (see [`Shared::reserve_steps`]).
    step_budget: std::sync::atomic::AtomicUsize,
    /// Secret values by name, for templates.
    pub secrets: BTreeMap<String, String>,
    /// Where events go.
    pub reporter: Box<dyn Reporter>,
    /// Operator options.
    pub options: Options,
    /// One HTTP client (connection reuse) for the run.
    pub http: reqwest::Client,
    cancel_tx: watch::Sender<bool>,
    /// Why the run was cancelled, once it was.
    pub cancel_reason: Mutex<Option<String>>,
    /// The journal, when the run is durable (approvals from other shells arrive through it).
    pub store: Option<Arc<dyn crate::state::Store>>,
    /// Fencing token of the run's lock (`run.lock_token`).
    lock_token: std::sync::atomic::AtomicI64,
    /// Whether this process continues an earlier run.
    resumed: std::sync::atomic::AtomicBool,
    /// `call` steps in flight when the run stopped, by name: their runbook continues where it
    /// stopped instead of starting again (consumed by the first attempt).
    continuations: Mutex<BTreeMap<String, Arc<super::ResumeFrom>>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("run_id", &self.run_id)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Set up a run.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(
        run_id: String,
        c: &Compiled,
        params: &ParamValues,
        secrets: &[(String, String)],
        options: Options,
        reporter: Box<dyn Reporter>,
        store: Option<Arc<dyn crate::state::Store>>,
    ) -> Result<Arc<Self>, String> {
        // The masker derives the quoted, escaped, encoded and per-line forms itself.
        let mut secret_values: Vec<String> = secrets.iter().map(|(_, v)| v.clone()).collect();
        secret_values.extend(secret_param_values(c, params));
        let http = reqwest::Client::builder()
            .user_agent(concat!("runbook/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("failed to set up the HTTP client: {e}"))?;
        let (cancel_tx, _) = watch::channel(false);
        Ok(Arc::new(Self {
            run_id,
            user: super::current_user(),
            host: super::current_host(),
            started_at_ms: crate::clock::now_ms(),
            masker: std::sync::RwLock::new(Masker::new(secret_values)),
            step_budget: std::sync::atomic::AtomicUsize::new(
                STEP_BUDGET.saturating_sub(c.steps.len()),
            ),
            secrets: secrets.iter().cloned().collect(),
            reporter,
            options,
            http,
            cancel_tx,
            cancel_reason: Mutex::new(None),
            store,
            lock_token: std::sync::atomic::AtomicI64::new(0),
            resumed: std::sync::atomic::AtomicBool::new(false),
            continuations: Mutex::new(BTreeMap::new()),
        }))
    }

    /// Record the fencing token of the lock this run holds.
    pub fn set_lock_token(&self, token: i64) {
        self.lock_token
            .store(token, std::sync::atomic::Ordering::SeqCst);
    }

    /// The fencing token of the lock this run holds (0 without a journal).
    pub fn lock_token(&self) -> i64 {
        self.lock_token.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Mark the run as resumed (no second `run_started`).
    pub fn mark_resumed(&self) {
        self.resumed
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Let the `call` step `step` continue its runbook from the journal when it starts.
    pub(super) fn continue_call(&self, step: &str, from: Arc<super::ResumeFrom>) {
        if let Ok(mut c) = self.continuations.lock() {
            c.insert(step.to_owned(), from);
        }
    }

    /// The journal a `call` step continues from, once.
    pub(super) fn take_continuation(&self, step: &str) -> Option<Arc<super::ResumeFrom>> {
        self.continuations.lock().ok()?.remove(step)
    }

    /// Whether this process continues an earlier run.
    pub fn is_resumed(&self) -> bool {
        self.resumed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Emit an event now, masked: this is the one door every event leaves the run through
    /// (display, `--output json`, journal, audit log).
    pub fn emit(&self, event: &Event) {
        let masked = match self.masker.read() {
            Ok(m) => event.masked(&m),
            // A poisoned lock means a panic elsewhere: emit nothing rather than risk a leak.
            Err(_) => return,
        };
        self.reporter.emit(crate::clock::now_ms(), &masked);
        if !self.reporter.healthy() {
            self.cancel("the journal could not be written");
        }
    }

    /// What a step stopped by the cancellation reports: `cancelled: <why>` (the whole-run
    /// timeout, a signal, a stopping server), so the operator is not left guessing.
    pub fn cancelled_error(&self) -> String {
        match self.cancel_reason.lock().ok().and_then(|r| r.clone()) {
            Some(why) => format!("cancelled: {why}"),
            None => "cancelled".to_owned(),
        }
    }

    /// Cancel the run: running actions are killed, nothing new starts, `finally` still runs.
    pub fn cancel(&self, reason: &str) {
        if let Ok(mut r) = self.cancel_reason.lock() {
            r.get_or_insert_with(|| reason.to_owned());
        }
        // `send_replace` stores the value even when nobody is subscribed yet.
        self.cancel_tx.send_replace(true);
    }

    /// Clear the cancellation latch so `finally` steps can run after a cancellation; a new
    /// signal cancels them in turn.
    pub fn rearm(&self) {
        self.cancel_tx.send_replace(false);
    }

    /// Whether the run was cancelled.
    pub fn is_cancelled(&self) -> bool {
        *self.cancel_tx.borrow()
    }

    /// A future-maker that completes when the run is cancelled.
    pub fn cancelled(&self) -> CancelWait {
        CancelWait(self.cancel_tx.subscribe())
    }

    /// Mask secrets in text.
    pub fn mask(&self, s: &str) -> String {
        match self.masker.read() {
            Ok(m) => m.mask(s),
            Err(_) => "***".to_owned(),
        }
    }

    /// Mask secrets in every string and key of a value.
    pub fn mask_value(&self, v: &serde_json::Value) -> serde_json::Value {
        match self.masker.read() {
            Ok(m) => m.mask_value(v),
            Err(_) => serde_json::Value::String("***".to_owned()),
        }
    }

    /// Every form the masker replaces (handed to a step's supervisor, which masks what it
    /// journals after the engine is gone).
    pub fn masked_forms(&self) -> Vec<String> {
        match self.masker.read() {
            Ok(m) => m.values().map(str::to_owned).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Mask, from now on, a secret value learnt while the run goes (the `secret: true` params
    /// of a called runbook).
    pub fn learn_secret(&self, value: &str) {
        if let Ok(mut m) = self.masker.write() {
            m.add(value);
        }
    }

    /// Reserve `n` more steps for a `call` (each call also costs one for itself): a run starts
    /// at most [`STEP_BUDGET`] steps in all, so calls fanning out into calls cannot multiply
    /// without bound.
    ///
    /// # Errors
    /// When the budget is spent; nothing is reserved then.
    pub fn reserve_steps(&self, n: usize) -> Result<(), String> {
        use std::sync::atomic::Ordering;
        self.step_budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(n))
            .map(|_| ())
            .map_err(|left| {
                format!(
                    "a run is limited to {STEP_BUDGET} steps in all, `call`ed runbooks included; this call needs {n} more and only {left} remain (split the procedure into separate runs, or call fewer runbooks)"
                )
            })
    }
}

/// Most steps one run starts, its own and those of every runbook it `call`s, however nested.
pub const STEP_BUDGET: usize = 10_000;

/// The values of the params declared `secret: true`.
pub fn secret_param_values(c: &Compiled, params: &ParamValues) -> Vec<String> {
    c.runbook
        .params
        .iter()
        .filter(|(_, p)| p.value.secret)
        .filter_map(|(name, _)| match params.get(name) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Null) | None => None,
            Some(other) => Some(other.to_string()),
        })
        .collect()
}

/// Waits for cancellation.
pub struct CancelWait(watch::Receiver<bool>);

impl CancelWait {
    /// Complete when the run is cancelled (never, otherwise).
    pub async fn wait(&mut self) {
        if self.0.wait_for(|c| *c).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Cancel the run on Ctrl-C or SIGTERM (every time: a second signal stops `finally` too).
pub(super) async fn cancel_on_signals(shared: Arc<Shared>) {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        return;
    };
    let Ok(mut int) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
    else {
        return;
    };
    loop {
        let reason = tokio::select! {
            _ = int.recv() => "interrupted (Ctrl-C)",
            _ = term.recv() => "terminated (SIGTERM)",
        };
        // Said at once: killing running steps and running `finally` can take a while.
        if !shared.is_cancelled() {
            shared.reporter.suspend(&mut || {
                eprintln!("cancelling… ({reason}): stopping running steps, then `finally`");
            });
        }
        shared.cancel(reason);
    }
}

/// What an action sees while it runs: its step, attempt, limit, and the template context.
#[derive(Clone)]
pub struct ActionCtx {
    pub(super) shared: Arc<Shared>,
    pub(super) step: Arc<str>,
    pub(super) attempt: u32,
    pub(super) timeout: Duration,
    pub(super) renderer: Renderer<'static>,
    /// For `call`: the caller's compiled runbook.
    pub(super) compiled: Arc<Compiled>,
}

impl std::fmt::Debug for ActionCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActionCtx")
            .field("step", &self.step)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl ActionCtx {
    /// The template renderer for this attempt.
    pub fn renderer(&self) -> Renderer<'static> {
        self.renderer.clone()
    }
    /// The limit of this attempt.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
    /// Mask secrets.
    pub fn mask(&self, s: &str) -> String {
        self.shared.mask(s)
    }
    /// Stream a line of output (masked).
    pub fn output(&self, stream: Stream, line: &str) {
        self.shared.emit(&Event::Output {
            step: self.step.to_string(),
            stream,
            line: self.mask(line),
        });
    }
    /// Record the rendered command or request (masked).
    pub fn note_command(&self, command: &str) {
        self.shared.emit(&Event::Command {
            step: self.step.to_string(),
            attempt: self.attempt,
            command: self.mask(command),
        });
    }
    /// The run's HTTP client.
    pub fn http(&self) -> &reqwest::Client {
        &self.shared.http
    }
    /// Completes on cancellation.
    pub fn cancelled(&self) -> CancelWait {
        self.shared.cancelled()
    }
    /// The step id.
    pub fn step(&self) -> &str {
        &self.step
    }
    /// The run.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
    /// The compiled runbook this action belongs to (runbook-level defaults such as `prometheus`).
    pub fn runbook(&self) -> &Compiled {
        &self.compiled
    }
}

/// Everything templates of a run can read, updated as steps finish.
#[derive(Debug, Clone)]
pub(super) struct TemplateState {
    pub params: Value,
    pub secrets: Value,
    pub env: Value,
    pub run: BTreeMap<String, Value>,
    pub steps: BTreeMap<String, Value>,
}

impl TemplateState {
    pub fn new(shared: &Shared, c: &Compiled, params: &ParamValues) -> Self {
        let mut run = BTreeMap::new();
        run.insert("id".to_owned(), Value::from(shared.run_id.clone()));
        run.insert(
            "runbook".to_owned(),
            Value::from(c.runbook.runbook.value.clone()),
        );
        run.insert(
            "started_at".to_owned(),
            Value::from(crate::clock::rfc3339(shared.started_at_ms)),
        );
        run.insert("status".to_owned(), Value::from("running"));
        run.insert("user".to_owned(), Value::from(shared.user.clone()));
        run.insert("host".to_owned(), Value::from(shared.host.clone()));
        run.insert("lock_token".to_owned(), Value::from(shared.lock_token()));
        run.insert(
            "dir".to_owned(),
            Value::from(
                c.path
                    .parent()
                    .map_or_else(|| ".".to_owned(), |p| p.display().to_string()),
            ),
        );
        let env: BTreeMap<String, String> = std::env::vars().collect();
        Self {
            params: Value::from(minijinja::value::Serde(params)),
            secrets: Value::from(minijinja::value::Serde(&shared.secrets)),
            env: Value::from(minijinja::value::Serde(env)),
            run,
            steps: BTreeMap::new(),
        }
    }

    pub fn renderer(&self) -> Renderer<'static> {
        Renderer::new(minijinja::context! {
            params => self.params.clone(),
            secrets => self.secrets.clone(),
            env => self.env.clone(),
            run => Value::from(self.run.clone()),
            steps => Value::from(self.steps.clone()),
        })
    }
}

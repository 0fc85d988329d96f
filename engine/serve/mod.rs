//! `runbook serve`: an HTTP server (axum) that receives Alertmanager webhooks and starts the
//! runbooks its triggers file names, in-process and journaled like `runbook exec`; it exposes
//! `/healthz` (open), `/metrics`, `/runs` and approval endpoints (authenticated before any body
//! is read), shuts down gracefully on SIGTERM and resumes the runs it owned when it starts again.

pub mod auth;
pub mod hmac;
pub mod listen;
pub mod metrics;
pub mod runner;
pub mod triggers;
pub mod webhook;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::sync::oneshot;

use self::auth::{Authenticator, HeaderVerdict, Principal, Refusal, Scope};
use self::metrics::{Ended, Metrics};
use self::runner::{Start, Tracked};
use self::triggers::{Mode, Triggers};
use self::webhook::AlertOutcome;
use crate::diagnostic::error_chain as chain;
use crate::exec::OutputMode;
use crate::state::{RunRecord, Store};

/// How long a webhook waits for the engine to create (or refuse) a run before answering.
const START_WAIT: Duration = Duration::from_secs(30);

/// How long a shutdown waits for cancelled runs to journal their end.
const DRAIN_WAIT: Duration = Duration::from_mins(1);

/// Largest body of an authenticated request (Alertmanager batches alerts in one post).
const MAX_BODY: usize = 2 * 1024 * 1024;

/// Largest body read before it is authenticated: only a signed request's, which the signature
/// needs; a bearer token is checked before a byte of the body is read.
const PRE_AUTH_BODY: usize = 64 * 1024;

/// How the server is run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Names this server in the runs it owns (`serve:<id> (trigger …)`), so that a restart
    /// resumes exactly those.
    pub server_id: String,
    /// Progress output of runs (stdout): plain lines or JSON events.
    pub output: OutputMode,
}

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// An authentication secret cannot be resolved.
    #[error("failed to resolve the webhook authentication")]
    Auth(#[source] auth::AuthError),
    /// The listen address cannot be bound.
    #[error("failed to listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The async runtime could not start, or the server failed while running.
    #[error("failed to run the HTTP server")]
    Io(#[source] std::io::Error),
}

impl ServeError {
    /// The documented exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            ServeError::Auth(_) | ServeError::Bind { .. } => crate::exit::INVALID,
            ServeError::Io(_) => crate::exit::INTERNAL,
        }
    }
}

/// Which alerts have a run, and how many runs execute.
#[derive(Debug, Default)]
struct Slots {
    /// Alert fingerprint → its run's id (`None` while the run is being created).
    by_alert: HashMap<String, Option<String>>,
    /// Runs executing (including resumed ones, which have no alert).
    running: usize,
    /// Start times per trigger within its rate-limit window.
    recent: HashMap<String, VecDeque<Instant>>,
}

/// Everything the handlers share.
struct App {
    triggers: Triggers,
    auth: Authenticator,
    metrics: Arc<Metrics>,
    store: Arc<dyn Store>,
    config: Config,
    slots: Mutex<Slots>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    stopping: AtomicBool,
    /// Cancels every run of this server at shutdown (also one that is only starting).
    cancel: crate::exec::CancelHandle,
}

impl App {
    fn slots(&self) -> MutexGuard<'_, Slots> {
        match self.slots.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

/// A run to start or continue.
struct Job {
    trigger: String,
    mode: Mode,
    runbook: PathBuf,
    params: Vec<(String, String)>,
    alert: Option<String>,
    resume: Option<RunRecord>,
}

/// A line on the server log (stderr).
fn log(msg: &str) {
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "{} serve: {msg}",
        crate::clock::rfc3339(crate::clock::now_ms())
    );
}

/// Run the server until SIGTERM/SIGINT; then stop accepting, let the cancelled runs journal
/// their state, and return.
///
/// # Errors
/// When it cannot start (secrets, address, runtime).
pub fn serve(triggers: Triggers, config: Config, store: Arc<dyn Store>) -> Result<(), ServeError> {
    let auth = Authenticator::new(&triggers.auth).map_err(ServeError::Auth)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(ServeError::Io)?;
    let app = Arc::new(App {
        triggers,
        auth,
        metrics: Arc::new(Metrics::default()),
        store,
        config,
        slots: Mutex::new(Slots::default()),
        threads: Mutex::new(Vec::new()),
        stopping: AtomicBool::new(false),
        cancel: crate::exec::CancelHandle::default(),
    });
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(app.config.listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: app.config.listen,
                source,
            })?;
        let local = listener.local_addr().map_err(ServeError::Io)?;
        // Register the signal handlers before saying we listen: a SIGTERM right after is ours.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(ServeError::Io)?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .map_err(ServeError::Io)?;
        log(&format!(
            "listening on http://{local} ({} trigger(s), max_runs {}, server id {})",
            app.triggers.triggers.len(),
            app.triggers.max_runs,
            app.config.server_id
        ));
        resume_owned(&app).await;
        let router: Router = Router::new()
            .route("/alerts", post(alerts))
            .route("/healthz", get(healthz))
            .route("/metrics", get(metrics_text))
            .route("/runs", get(runs))
            .route("/runs/{id}/steps/{step}/approve", post(approve))
            .route("/runs/{id}/steps/{step}/deny", post(deny))
            .with_state(app.clone());
        let stop = app.clone();
        let shutdown = async move {
            let which = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            stop.stopping.store(true, Ordering::SeqCst);
            stop.cancel.cancel(&format!("the server is stopping ({which})"));
            log(&format!(
                "{which}: no longer accepting; cancelling {} run(s) in flight (they are journaled and resumed at the next start)",
                stop.slots().running
            ));
        };
        let counted = app.metrics.clone();
        listen::run(listener, router, app.triggers.limits, shutdown, move |peer| {
            counted.webhook("too_many_connections");
            log(&format!("refused a connection from {peer}: 503 too many connections"));
        })
        .await;
        Ok::<(), ServeError>(())
    })?;
    // Every run was cancelled through the server's handle; wait for each to journal its end.
    let threads = std::mem::take(&mut *match app.threads.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    });
    let deadline = Instant::now() + DRAIN_WAIT;
    for t in threads {
        while !t.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if t.is_finished() {
            let _ = t.join();
        } else {
            log(
                "a run did not stop in time; it stays `running` in the journal and is resumed at the next start",
            );
        }
    }
    log("stopped");
    Ok(())
}

/// Continue the runs this server owned that a shutdown or a crash stopped.
async fn resume_owned(app: &Arc<App>) {
    let runs = match app.store.runs(10_000) {
        Ok(r) => r,
        Err(e) => {
            log(&format!("failed to list runs to resume: {e}"));
            return;
        }
    };
    let host = crate::exec::current_host();
    for (record, trigger) in runner::to_resume(runs, &app.config.server_id, &host) {
        // A trigger removed since: its runs wait for a human at any approval.
        let mode = app
            .triggers
            .triggers
            .iter()
            .find(|t| t.name == trigger)
            .map_or(Mode::Approve, |t| t.mode);
        log(&format!(
            "resuming run {} ({}, trigger {trigger}, was {})",
            record.id, record.runbook, record.status
        ));
        app.slots().running += 1;
        let job = Job {
            trigger,
            mode,
            runbook: PathBuf::from(&record.file),
            params: runner::record_params(&record),
            alert: None,
            resume: Some(record),
        };
        match launch(app, job).await {
            Start::Started(id) => log(&format!("run {id} resumed")),
            Start::Busy(by) => log(&format!("failed to resume: its lock is held by run {by}")),
            Start::Failed(why) => log(&format!("failed to resume: {why}")),
        }
    }
}

/// Start a job on its own thread and wait until the engine created (or refused) the run.
async fn launch(app: &Arc<App>, job: Job) -> Start {
    let (tx, rx) = oneshot::channel();
    let a = app.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("run-{}", job.trigger))
        .spawn(move || run_thread(&a, &job, tx));
    match spawned {
        Ok(handle) => {
            let mut t = match app.threads.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            t.retain(|h| !h.is_finished());
            t.push(handle);
        }
        Err(e) => {
            app.slots().running -= 1;
            return Start::Failed(format!("failed to start a thread for the run: {e}"));
        }
    }
    match tokio::time::timeout(START_WAIT, rx).await {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => Start::Failed("the run ended before it started".to_owned()),
        Err(_) => Start::Failed(format!(
            "the engine did not create the run within {}",
            crate::duration::format(START_WAIT)
        )),
    }
}

/// The body of a run's thread: compile, resolve params, execute (blocking), account.
fn run_thread(app: &Arc<App>, job: &Job, tell: oneshot::Sender<Start>) {
    let outcome = run_job(app, job, tell);
    let mut s = app.slots();
    s.running = s.running.saturating_sub(1);
    if let Some(fp) = &job.alert {
        s.by_alert.remove(fp);
    }
    drop(s);
    if let Some((runbook, run_id, how)) = outcome {
        app.metrics.run_ended(&runbook, how);
        if let Ok(events) = app.store.events(&run_id) {
            for d in runner::step_durations(&events) {
                app.metrics.step_duration(&runbook, d);
            }
        }
    }
}

fn run_job(
    app: &Arc<App>,
    job: &Job,
    tell: oneshot::Sender<Start>,
) -> Option<(String, String, Ended)> {
    let fail = |tell: oneshot::Sender<Start>, why: String| {
        log(&format!("trigger {}: {why}", job.trigger));
        let _ = tell.send(Start::Failed(why));
        None
    };
    let compiled = match crate::compile::compile_path(&job.runbook) {
        Ok(c) => c,
        Err((file, diags)) => {
            let first = diags.first().map(|d| d.short(&file)).unwrap_or_default();
            return fail(
                tell,
                format!("runbook {} is not valid: {first}", job.runbook.display()),
            );
        }
    };
    let values = match crate::compile::resolve_params(
        &compiled.runbook,
        &job.params,
        &std::collections::BTreeMap::new(),
    ) {
        Ok(v) => v,
        Err(diags) => {
            let why: Vec<String> = diags.iter().map(|d| d.message.clone()).collect();
            return fail(tell, format!("invalid params: {}", why.join("; ")));
        }
    };
    let unsupported = crate::exec::unsupported_steps(&compiled);
    if !unsupported.is_empty() {
        return fail(
            tell,
            format!("this build cannot execute {}", unsupported.join(", ")),
        );
    }
    let resume = match &job.resume {
        Some(record) => {
            if compiled.hash != record.runbook_hash {
                return fail(
                    tell,
                    format!(
                        "refusing to resume run {}: {} changed since it started; resume it by hand (`runbook resume {} --allow-changed`)",
                        record.id, record.file, record.id
                    ),
                );
            }
            match app.store.events(&record.id) {
                Ok(events) => Some((
                    record.clone(),
                    crate::exec::ResumeFrom {
                        events,
                        ..crate::exec::ResumeFrom::default()
                    },
                )),
                Err(e) => return fail(tell, format!("failed to read the journal: {e}")),
            }
        }
        None => None,
    };
    let runbook = compiled.runbook.runbook.value.clone();
    let metrics = app.metrics.clone();
    let name = runbook.clone();
    let tracked = Arc::new(Tracked::new(
        app.store.clone(),
        runner::owner(&app.config.server_id, &job.trigger),
        job.alert.as_ref().map(|fp| format!("serve-alert/{fp}")),
        tell,
        Box::new(move |_: &str| {
            metrics.run_started(&name);
        }),
    ));
    let options = crate::exec::Options {
        max_parallel: None,
        yes: job.mode == Mode::Auto,
        yes_via: Some("serve".to_owned()),
        approver: Some(format!("serve (trigger {})", job.trigger)),
        interactive: false,
        output: app.config.output,
    };
    let launch = crate::exec::Launch {
        compiled: &compiled,
        params: &values,
        options: &options,
        store: Some(tracked.clone()),
        resume,
        break_lock: false,
        cancel: Some(app.cancel.clone()),
    };
    match crate::exec::execute(&launch) {
        Ok(outcome) => {
            let how = match outcome.status {
                crate::exec::RunStatus::Succeeded => Ended::Succeeded,
                crate::exec::RunStatus::Cancelled => Ended::Cancelled,
                _ => Ended::Failed,
            };
            log(&format!(
                "run {} ({runbook}, trigger {}) {}",
                outcome.run_id,
                job.trigger,
                outcome.status.as_str()
            ));
            Some((runbook, outcome.run_id, how))
        }
        Err(crate::exec::ExecError::LockHeld { name, holder, .. }) => {
            log(&format!(
                "trigger {}: not started: lock `{name}` is held by run {}",
                job.trigger, holder.run_id
            ));
            tracked.tell(Start::Busy(holder.run_id.clone()));
            None
        }
        Err(e) => {
            let why = e.to_string();
            log(&format!("trigger {}: {why}", job.trigger));
            tracked.tell(Start::Failed(why));
            tracked.run_id().map(|id| (runbook, id, Ended::Failed))
        }
    }
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string() + "\n",
    )
        .into_response()
}

/// A refusal's answer (logged, counted); the connection is closed after it, so a body nobody
/// read is never drained.
fn refuse(app: &App, what: &str, r: &Refusal) -> Response {
    app.metrics.webhook(r.outcome());
    log(&format!("refused {what}: {} {}", r.status(), r.reason()));
    let mut resp = json_response(
        StatusCode::from_u16(r.status()).unwrap_or(StatusCode::UNAUTHORIZED),
        &json!({ "error": r.reason() }),
    );
    resp.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    if r.status() == 401 {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    resp
}

/// An error answer that also closes the connection (the body may be half read).
fn closing(status: StatusCode, why: &str) -> Response {
    let mut resp = json_response(status, &json!({ "error": why }));
    resp.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    resp
}

/// Read a body of at most `limit` bytes within `timeout`.
async fn read_body(
    body: Body,
    limit: usize,
    timeout: Duration,
    what: &str,
) -> Result<Bytes, Response> {
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => {
            // `to_bytes` fails for a body over the limit or a broken connection.
            let inner = e.into_inner();
            if inner.is::<http_body_util::LengthLimitError>() {
                log(&format!(
                    "refused {what}: 413 the body is larger than {limit} bytes"
                ));
                Err(closing(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!(
                        "the body is larger than {limit} bytes, the most this request may send"
                    ),
                ))
            } else {
                Err(closing(
                    StatusCode::BAD_REQUEST,
                    &format!("failed to read the body: {inner}"),
                ))
            }
        }
        Err(_) => {
            log(&format!(
                "refused {what}: 408 the body did not arrive within {}",
                crate::duration::format(timeout)
            ));
            Err(closing(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "the body did not arrive within {} (`limits.body_timeout`)",
                    crate::duration::format(timeout)
                ),
            ))
        }
    }
}

/// Authenticate a request for `scope` by its headers, and only then read its body: in full for
/// a token, at most [`PRE_AUTH_BODY`] for a signed request (whose signature covers it).
async fn admit(app: &App, req: Request, scope: Scope) -> Result<(Principal, Bytes), Response> {
    let (parts, body) = req.into_parts();
    let what = format!("{} {}", parts.method, parts.uri.path());
    let peer = parts.extensions.get::<listen::Peer>().map(|p| p.0.ip());
    let timeout = app.triggers.limits.body_timeout;
    match app.auth.check_headers(&parts.headers, peer, scope) {
        HeaderVerdict::Ok(p) => Ok((p, read_body(body, MAX_BODY, timeout, &what).await?)),
        HeaderVerdict::Signed(signed) => {
            let body = read_body(body, PRE_AUTH_BODY, timeout, &what).await?;
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            match app
                .auth
                .verify_signed(parts.method.as_str(), path, &signed, &body)
            {
                Ok(p) => Ok((p, body)),
                Err(r) => Err(refuse(app, &what, &r)),
            }
        }
        HeaderVerdict::Refused(r) => Err(refuse(app, &what, &r)),
    }
}

async fn alerts(State(app): State<Arc<App>>, req: Request) -> Response {
    let body = match admit(&app, req, Scope::Alerts).await {
        Ok((_, body)) => body,
        Err(r) => return r,
    };
    if app.stopping.load(Ordering::SeqCst) {
        app.metrics.webhook("unavailable");
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "error": "shutting down: send the alert again later" }),
        );
    }
    let payload = match webhook::parse(&body) {
        Ok(p) => p,
        Err(e) => {
            app.metrics.webhook("bad_request");
            let reason = chain(&e);
            log(&format!("refused POST /alerts: 400 {reason}"));
            return json_response(StatusCode::BAD_REQUEST, &json!({ "error": reason }));
        }
    };
    app.metrics.webhook("accepted");
    let mut outcomes = Vec::new();
    for (index, alert) in payload.alerts.iter().enumerate() {
        let o = handle_alert(&app, &payload, index, alert).await;
        app.metrics.alert(o.result);
        if o.result != "resolved" && o.result != "no_trigger" {
            log(&format!(
                "alert {} ({}): {}{}{}",
                o.alertname,
                o.fingerprint,
                o.result,
                o.run_id
                    .as_ref()
                    .map_or_else(String::new, |r| format!(" run {r}")),
                o.reason
                    .as_ref()
                    .map_or_else(String::new, |r| format!(": {r}"))
            ));
        }
        outcomes.push(o);
    }
    json_response(StatusCode::OK, &json!({ "alerts": outcomes }))
}

async fn handle_alert(
    app: &Arc<App>,
    payload: &webhook::Payload,
    index: usize,
    alert: &webhook::Alert,
) -> AlertOutcome {
    if alert.status == "resolved" {
        return AlertOutcome::new(index, alert, "resolved", 200);
    }
    let Some(trigger) = app
        .triggers
        .triggers
        .iter()
        .find(|t| t.matches(&alert.labels))
    else {
        return AlertOutcome::new(index, alert, "no_trigger", 200);
    };
    let fp = alert.identity();
    let mut out = AlertOutcome::new(index, alert, "started", 201);
    out.trigger = Some(trigger.name.clone());
    let params = match webhook::render_params(&trigger.params, webhook::context(payload, alert)) {
        Ok(p) => p,
        Err(why) => {
            out.result = "error";
            out.status = 422;
            out.reason = Some(why);
            return out;
        }
    };
    {
        let mut s = app.slots();
        if let Some(run) = s.by_alert.get(&fp) {
            out.result = "duplicate";
            out.status = 409;
            out.run_id.clone_from(run);
            out.reason = Some("this alert already has a run in progress".to_owned());
            return out;
        }
        if s.running >= app.triggers.max_runs as usize {
            out.result = "max_runs";
            out.status = 429;
            out.reason = Some(format!(
                "{} runs are in progress, the most `max_runs` allows",
                s.running
            ));
            return out;
        }
        if let Some((runs, per)) = trigger.rate_limit {
            let now = Instant::now();
            let q = s.recent.entry(trigger.name.clone()).or_default();
            while q.front().is_some_and(|t| now.duration_since(*t) >= per) {
                q.pop_front();
            }
            if q.len() >= runs as usize {
                out.result = "rate_limited";
                out.status = 429;
                out.reason = Some(format!(
                    "trigger `{}` started {} run(s) in the last {}, its rate limit",
                    trigger.name,
                    q.len(),
                    crate::duration::format(per)
                ));
                return out;
            }
            q.push_back(now);
        }
        s.by_alert.insert(fp.clone(), None);
        s.running += 1;
    }
    let job = Job {
        trigger: trigger.name.clone(),
        mode: trigger.mode,
        runbook: trigger.runbook.clone(),
        params,
        alert: Some(fp.clone()),
        resume: None,
    };
    match launch(app, job).await {
        Start::Started(id) => {
            if let Some(slot) = app.slots().by_alert.get_mut(&fp) {
                *slot = Some(id.clone());
            }
            out.run_id = Some(id);
        }
        Start::Busy(by) => {
            out.result = "duplicate";
            out.status = 409;
            out.run_id = Some(by);
            out.reason = Some(
                "the run's lock is held: a run for this alert or target is in progress".to_owned(),
            );
            unreserve(app, &trigger.name);
        }
        Start::Failed(why) => {
            out.result = "error";
            out.status = 500;
            out.reason = Some(why);
            unreserve(app, &trigger.name);
        }
    }
    out
}

/// A start that did not happen does not count against the rate limit.
fn unreserve(app: &App, trigger: &str) {
    if let Some(q) = app.slots().recent.get_mut(trigger) {
        q.pop_back();
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics_text(State(app): State<Arc<App>>, req: Request) -> Response {
    if let Err(r) = admit(&app, req, Scope::Metrics).await {
        return r;
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

#[derive(Debug, serde::Deserialize)]
struct RunsQuery {
    limit: Option<usize>,
}

async fn runs(State(app): State<Arc<App>>, Query(q): Query<RunsQuery>, req: Request) -> Response {
    if let Err(r) = admit(&app, req, Scope::People).await {
        return r;
    }
    let limit = q.limit.unwrap_or(50).min(1000);
    let a = app.clone();
    let listed = tokio::task::spawn_blocking(move || a.store.runs(limit)).await;
    match listed {
        Ok(Ok(runs)) => {
            let list: Vec<serde_json::Value> = runs
                .iter()
                .map(|r| {
                    json!({
                        "id": r.id,
                        "runbook": r.runbook,
                        "status": r.status.as_str(),
                        "user": r.user,
                        "trigger": runner::owned_by(&r.user, &app.config.server_id),
                        "started_at": crate::clock::rfc3339(r.started_at_ms),
                        "finished_at": r.finished_at_ms.map(crate::clock::rfc3339),
                        "params": r.params,
                    })
                })
                .collect();
            json_response(StatusCode::OK, &json!({ "runs": list }))
        }
        Ok(Err(e)) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({ "error": format!("failed to list runs: {e}") }),
        ),
        Err(e) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({ "error": format!("failed to list runs: {e}") }),
        ),
    }
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    /// Refused when present: the approver is the credential's owner, never what a body says.
    #[serde(default, rename = "as")]
    approver: Option<String>,
    /// A note kept with the decision.
    #[serde(default)]
    comment: Option<String>,
}

async fn approve(
    State(app): State<Arc<App>>,
    UrlPath((id, step)): UrlPath<(String, String)>,
    req: Request,
) -> Response {
    decide(app, id, step, req, true).await
}

async fn deny(
    State(app): State<Arc<App>>,
    UrlPath((id, step)): UrlPath<(String, String)>,
    req: Request,
) -> Response {
    decide(app, id, step, req, false).await
}

/// Record an approval or denial by the person the credential belongs to, for a step that waits
/// for one now (404 for an unknown run or step, 409 for anything not waiting).
async fn decide(app: Arc<App>, id: String, step: String, req: Request, approve: bool) -> Response {
    let what = format!(
        "POST /runs/{id}/steps/{step}/{}",
        if approve { "approve" } else { "deny" }
    );
    let peer = req
        .extensions()
        .get::<listen::Peer>()
        .map(|p| p.0.ip().to_string());
    let (who, body) = match admit(&app, req, Scope::People).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Principal::Person {
        name,
        via: credential,
    } = who
    else {
        // `admit` lets only people through for this scope.
        return json_response(
            StatusCode::FORBIDDEN,
            &json!({ "error": "only a person may decide" }),
        );
    };
    let d: DecisionBody = if body.iter().all(u8::is_ascii_whitespace) {
        DecisionBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(d) => d,
            Err(e) => {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    &json!({ "error": format!("failed to read the decision: {e} (expected {{\"comment\": TEXT}})") }),
                );
            }
        }
    };
    if let Some(claimed) = &d.approver {
        log(&format!(
            "refused {what}: 400 the body names `{claimed}` as the approver; the credential is {name}'s"
        ));
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({ "error": format!("`as` is not accepted: the approver is the owner of the credential ({name}); each person approves with their own token") }),
        );
    }
    let result = tokio::task::spawn_blocking(move || {
        let r = match app.store.run(&id) {
            Ok(Some(r)) => r,
            Ok(None) => return Err((StatusCode::NOT_FOUND, format!("failed to find run {id}"))),
            Err(e) => return Err((StatusCode::BAD_REQUEST, e.to_string())),
        };
        if let Err(e) = crate::exec::approval::check_waiting(app.store.as_ref(), &r, &step) {
            use crate::exec::approval::NotWaiting;
            let code = match &e {
                NotWaiting::UnknownStep { .. } => StatusCode::NOT_FOUND,
                NotWaiting::State { .. } => StatusCode::INTERNAL_SERVER_ERROR,
                NotWaiting::Finished { .. } | NotWaiting::NotNow { .. } => StatusCode::CONFLICT,
            };
            return Err((code, chain(&e)));
        }
        let decision = if approve { "approved" } else { "denied" };
        let input = crate::state::ApprovalInput {
            run_id: r.id.clone(),
            step: step.clone(),
            approver: name.clone(),
            decision: approve,
            via: "serve".to_owned(),
            comment: d.comment.clone(),
        };
        let audit = crate::state::AuditInput {
            user: name.clone(),
            host: crate::exec::current_host(),
            run_id: Some(r.id.clone()),
            step: Some(step.clone()),
            action: "approval".to_owned(),
            target: Some(name.clone()),
            outcome: decision.to_owned(),
            detail: json!({ "via": "serve", "credential": credential, "peer": peer, "comment": d.comment }),
        };
        app.store
            .add_approval(&input, &audit)
            .map(|()| json!({ "run_id": r.id, "step": step, "decision": decision, "approver": name }))
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
    })
    .await;
    match result {
        Ok(Ok(v)) => {
            log(&format!("{what}: {} by {}", v["decision"], v["approver"]));
            json_response(StatusCode::OK, &v)
        }
        Ok(Err((code, why))) => {
            log(&format!("refused {what}: {} {why}", code.as_u16()));
            json_response(code, &json!({ "error": why }))
        }
        Err(e) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({ "error": e.to_string() }),
        ),
    }
}

//! Step processes that outlive the engine: the hidden `runbook __supervise` process that runs a
//! shell step, forwards its output and journals how it ended when the engine is gone, the
//! engine's side of that conversation, and how a resumed run tells a live step process from a
//! recycled pid.
//!
//! The engine starts the supervisor in its own process group and journals its pid, start time,
//! host and boot *before* telling it to start the step's shell: a step without that record never
//! ran. The supervisor runs the shell in a process group of its own, forwards each output line to
//! the engine, keeps a bounded tail, and reports the exit. The engine journals the exit and
//! acknowledges it; a supervisor whose engine died (no acknowledgement, end of file on its
//! stdin) journals the exit itself, with the tail masked. A resumed run therefore finds, for every
//! supervised step in flight, either its outcome, a process still running (same pid *and* start
//! time), or proof that the process is gone without one.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ActionCtx, ActionError, Stream};

/// Journal kind: the supervisor of a step attempt was started (it has not run anything yet).
pub const STARTED: &str = "process_started";
/// Journal kind: the step's shell runs (its pid and process group).
pub const RUNNING: &str = "process_running";
/// Journal kind: the step's shell ended (exit status and the tail of its output).
pub const EXITED: &str = "process_exited";

/// Journal kind, once per run: this run's shell steps are supervised (their supervisor is
/// journaled before their shell may start), so a step journaled as starting without a
/// supervisor record never ran. A journal written before supervision has no such record.
pub const MARK: &str = "steps_supervised";

/// Bytes of each stream's tail kept in the journal's exit record.
pub const TAIL_LIMIT: usize = 64 * 1024;

/// Bytes of each stream kept in `result` while the engine is alive.
const CAPTURE_LIMIT: usize = 1 << 20;

tokio::task_local! {
    /// Set around the `perform` of a step's shell action: that shell runs supervised.
    static SUPERVISED: Supervised;
}

/// What a supervised action needs to know besides its [`ActionCtx`].
#[derive(Debug, Clone)]
pub struct Supervised {
    /// The state database the supervisor journals into when the engine is gone.
    pub db: PathBuf,
}

/// Run `fut` (a step action's `perform`) so that a shell it starts is supervised.
pub(super) async fn scope<F: std::future::Future>(db: PathBuf, fut: F) -> F::Output {
    SUPERVISED.scope(Supervised { db }, fut).await
}

/// The supervision of the action being performed on this task, if any.
pub fn current() -> Option<Supervised> {
    SUPERVISED.try_with(Clone::clone).ok()
}

/// A process, identified so that a recycled pid is not mistaken for it: pid, start time in
/// clock ticks after boot (`/proc/PID/stat` field 22), host and boot id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    /// Process id.
    pub pid: u32,
    /// Start time, clock ticks after boot.
    pub start_ticks: u64,
    /// Host name.
    pub host: String,
    /// `/proc/sys/kernel/random/boot_id`: pids and start times restart at each boot.
    pub boot_id: String,
}

/// `(state, ppid, pgrp, start_ticks)` of a process, from `/proc/PID/stat`.
fn stat(pid: u32) -> Option<(char, u32, u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain anything.
    let (_, rest) = text.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let state = f.first()?.chars().next()?;
    let parent = f.get(1)?.parse().ok()?;
    let group = f.get(2)?.parse().ok()?;
    let start = f.get(19)?.parse().ok()?;
    Some((state, parent, group, start))
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

impl ProcessId {
    /// The live process `pid` on this host, if it exists (a zombie does not count).
    pub fn of(pid: u32) -> Option<Self> {
        let (state, _, _, start_ticks) = stat(pid)?;
        if matches!(state, 'Z' | 'X') {
            return None;
        }
        Some(Self {
            pid,
            start_ticks,
            host: super::current_host(),
            boot_id: boot_id(),
        })
    }

    /// Whether this very process still runs: same host, same boot, same pid and same start
    /// time (so a pid recycled by another process does not count), not a zombie.
    pub fn is_alive(&self) -> bool {
        if self.host != super::current_host() || self.boot_id != boot_id() {
            return false;
        }
        stat(self.pid).is_some_and(|(state, _, _, start)| {
            start == self.start_ticks && !matches!(state, 'Z' | 'X')
        })
    }

    /// Whether this process lives on another host (nothing can be checked from here).
    pub fn elsewhere(&self) -> bool {
        self.host != super::current_host()
    }

    /// The live children of this process that lead their own process group (the step's shell
    /// under a supervisor).
    pub fn group_leading_children(&self) -> Vec<ProcessId> {
        if !self.is_alive() {
            return Vec::new();
        }
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
            .filter(|&pid| {
                stat(pid).is_some_and(|(_, ppid, pgrp, _)| ppid == self.pid && pgrp == pid)
            })
            .filter_map(ProcessId::of)
            .collect()
    }
}

/// Send SIGKILL to a process group (the shell and everything it started).
pub fn kill_group(pgid: u32) {
    if pgid == 0 {
        return;
    }
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Send SIGKILL to one process.
pub fn kill_pid(pid: u32) {
    if pid == 0 {
        return;
    }
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// The first message from the engine: go ahead (secrets to mask, the step's stdin). Its absence
/// (end of file first) means the engine died before journaling the supervisor: nothing runs.
#[derive(Debug, Serialize, Deserialize)]
struct Go {
    secrets: Vec<String>,
    stdin: Option<String>,
}

/// What the shell produced, as the engine sees it.
#[derive(Debug, Default)]
pub struct Finished {
    /// Exit code (`-1` when a signal ended it).
    pub exit_code: i32,
    /// Captured standard output (up to 1 MiB).
    pub stdout: String,
    /// Captured standard error (up to 1 MiB).
    pub stderr: String,
    /// Whether a stream was cut.
    pub truncated: bool,
}

/// Keep the last `TAIL_LIMIT` bytes of a stream (cut at a character boundary).
#[derive(Debug, Default)]
struct Tail {
    text: String,
    cut: bool,
}

impl Tail {
    fn push(&mut self, s: &str) {
        self.text.push_str(s);
        if self.text.len() > TAIL_LIMIT {
            let mut from = self.text.len() - TAIL_LIMIT;
            while !self.text.is_char_boundary(from) {
                from += 1;
            }
            self.text.drain(..from);
            self.cut = true;
        }
    }
}

/// The exit record's data (masked).
fn exit_record(
    attempt: u32,
    exit_code: i32,
    signal: i32,
    stdout: &Tail,
    stderr: &Tail,
    by: &str,
) -> serde_json::Value {
    serde_json::json!({
        "attempt": attempt,
        "started": true,
        "exit_code": exit_code,
        "signal": signal,
        "stdout_tail": stdout.text,
        "stderr_tail": stderr.text,
        "truncated": stdout.cut || stderr.cut,
        "ended_at_ms": crate::clock::now_ms(),
        "recorded_by": by,
    })
}

// ---------------------------------------------------------------------------------------------
// The supervisor process
// ---------------------------------------------------------------------------------------------

/// Arguments of `runbook __supervise`.
#[derive(Debug, Clone)]
pub struct SuperviseArgs {
    /// State database to journal into when the engine is gone.
    pub db: PathBuf,
    /// Run id.
    pub run: String,
    /// Step name as journaled.
    pub step: String,
    /// Attempt number.
    pub attempt: u32,
    /// Working directory of the shell.
    pub cwd: Option<PathBuf>,
    /// Program and arguments (`/bin/sh -c COMMAND`).
    pub command: Vec<std::ffi::OsString>,
}

/// One line to the engine: a tag byte, a space, the payload, a newline.
fn send(out: &Mutex<Option<std::io::Stdout>>, tag: u8, payload: &[u8]) {
    let Ok(mut guard) = out.lock() else {
        return;
    };
    let Some(w) = guard.as_mut() else {
        return;
    };
    let mut line = Vec::with_capacity(payload.len() + 3);
    line.push(tag);
    line.push(b' ');
    line.extend_from_slice(payload);
    line.push(b'\n');
    // SIGPIPE is ignored (Rust's default): a dead engine is a write error, not our death.
    if w.write_all(&line).and_then(|()| w.flush()).is_err() {
        *guard = None;
    }
}

/// Forward one stream of the shell to the engine line by line, keeping its tail.
fn forward(
    reader: impl Read,
    tags: (u8, u8),
    out: &Mutex<Option<std::io::Stdout>>,
    tail: &Mutex<Tail>,
) {
    let mut r = BufReader::new(reader);
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if let Ok(mut t) = tail.lock() {
                    t.push(&String::from_utf8_lossy(&line));
                }
                if line.last() == Some(&b'\n') {
                    line.pop();
                    send(out, tags.0, &line);
                } else {
                    send(out, tags.1, &line);
                }
            }
        }
    }
}

/// What the engine says on the supervisor's stdin after `go`.
enum Control {
    /// Kill the shell's process group (timeout, cancellation).
    Kill,
    /// The exit is journaled; the supervisor may end.
    Ack,
    /// End of file: the engine is gone.
    Gone,
}

/// `runbook __supervise`: run the step's shell, outlive the engine, journal the outcome.
/// Returns the exit code of the supervisor itself (0 unless it could not do its job).
pub fn main(args: &SuperviseArgs) -> u8 {
    let out = Arc::new(Mutex::new(Some(std::io::stdout())));
    let mut input = BufReader::new(std::io::stdin());
    let mut first = String::new();
    let go: Go = match input.read_line(&mut first) {
        Ok(n) if n > 0 => match serde_json::from_str(&first) {
            Ok(g) => g,
            Err(_) => return 2,
        },
        // The engine died before telling us to start: the step never started. Say so, in
        // case it had journaled this supervisor already (else a resume could not tell).
        _ => {
            let data = serde_json::json!({
                "attempt": args.attempt,
                "started": false,
                "error": "the engine stopped before the command was started",
                "recorded_by": "supervisor",
            });
            journal_exit(args, &data);
            return 0;
        }
    };
    let masker = crate::mask::Masker::new(go.secrets.clone());
    let Some((program, rest)) = args.command.split_first() else {
        return 2;
    };
    let mut cmd = std::process::Command::new(program);
    cmd.args(rest)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .stdin(if go.stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        });
    // Own process group: a timeout, Ctrl-C or `--kill-running` kills the whole tree.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    if let Some(dir) = &args.cwd {
        cmd.current_dir(dir);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("failed to start {}: {e}", program.to_string_lossy());
            send(&out, b'f', msg.as_bytes());
            let data = serde_json::json!({
                "attempt": args.attempt,
                "started": false,
                "error": masker.mask(&msg),
                "recorded_by": "supervisor",
            });
            // The engine journals this when it is alive; otherwise we do.
            if matches!(control(&mut input), Control::Gone) {
                journal_exit(args, &data);
            }
            return 0;
        }
    };
    let pgid = child.id();
    let ticks = ProcessId::of(pgid).map_or(0, |p| p.start_ticks);
    send(&out, b'p', format!("{pgid} {ticks}").as_bytes());

    if let (Some(mut w), Some(data)) = (child.stdin.take(), go.stdin) {
        std::thread::spawn(move || {
            let _ = w.write_all(data.as_bytes());
        });
    }
    let out_tail = Arc::new(Mutex::new(Tail::default()));
    let err_tail = Arc::new(Mutex::new(Tail::default()));
    let mut readers = Vec::new();
    if let Some(s) = child.stdout.take() {
        let (o, t) = (out.clone(), out_tail.clone());
        readers.push(std::thread::spawn(move || forward(s, (b'o', b'O'), &o, &t)));
    }
    if let Some(s) = child.stderr.take() {
        let (o, t) = (out.clone(), err_tail.clone());
        readers.push(std::thread::spawn(move || forward(s, (b'e', b'E'), &o, &t)));
    }
    // Control messages: `kill` at any time; `ack` (or end of file) after the exit report.
    let (ack_tx, ack_rx) = std::sync::mpsc::channel::<bool>();
    std::thread::spawn(move || {
        loop {
            match control(&mut input) {
                Control::Kill => kill_group(pgid),
                Control::Ack => {
                    let _ = ack_tx.send(true);
                    return;
                }
                Control::Gone => {
                    let _ = ack_tx.send(false);
                    return;
                }
            }
        }
    });

    let status = child.wait();
    // The output ends when every process holding the pipes has exited; background children
    // the shell left behind would hold them open forever: kill the group if it has not ended
    // shortly after the shell (a step that must leave a service running detaches it).
    let deadline = std::time::Instant::now() + Duration::from_millis(200);
    while readers.iter().any(|r| !r.is_finished()) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    if readers.iter().any(|r| !r.is_finished()) {
        kill_group(pgid);
    }
    for r in readers {
        let _ = r.join();
    }
    let (code, signal) = match &status {
        Ok(s) => (
            s.code().unwrap_or(-1),
            std::os::unix::process::ExitStatusExt::signal(s).unwrap_or(0),
        ),
        Err(_) => (-1, 0),
    };
    send(&out, b'x', format!("{code} {signal}").as_bytes());
    let acked = ack_rx.recv().unwrap_or(false);
    if !acked {
        let mask_tail = |t: &Mutex<Tail>| {
            let t = t
                .lock()
                .map(|t| (t.text.clone(), t.cut))
                .unwrap_or_default();
            Tail {
                text: masker.mask(&t.0),
                cut: t.1,
            }
        };
        let data = exit_record(
            args.attempt,
            code,
            signal,
            &mask_tail(&out_tail),
            &mask_tail(&err_tail),
            "supervisor",
        );
        journal_exit(args, &data);
    }
    0
}

fn control(input: &mut impl BufRead) -> Control {
    let mut line = String::new();
    match input.read_line(&mut line) {
        Ok(0) | Err(_) => Control::Gone,
        Ok(_) => match line.trim() {
            "kill" => Control::Kill,
            "ack" => Control::Ack,
            // Anything else is a protocol error: treat the engine as gone.
            _ => Control::Gone,
        },
    }
}

/// Journal the exit into the state database (the engine is gone). Retries a few times: a
/// resumed engine may hold the write lock briefly.
fn journal_exit(args: &SuperviseArgs, data: &serde_json::Value) {
    let dir = args.db.parent().unwrap_or(Path::new("."));
    for _ in 0..20 {
        if let Ok(store) = crate::state::SqliteStore::open(dir) {
            let event = crate::state::EventInput {
                step: Some(args.step.clone()),
                kind: EXITED.to_owned(),
                attempt: Some(args.attempt),
                data: data.clone(),
            };
            if crate::state::Store::record(&store, &args.run, &event, None).is_ok() {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

// ---------------------------------------------------------------------------------------------
// The engine's side
// ---------------------------------------------------------------------------------------------

/// Record that this run's shell steps are supervised (see [`MARK`]), when they are.
pub(super) fn mark_journal(shared: &super::Shared) {
    let Some(store) = &shared.store else {
        return;
    };
    if store.location().is_none() {
        return;
    }
    let event = crate::state::EventInput {
        step: None,
        kind: MARK.to_owned(),
        attempt: None,
        data: serde_json::json!({ "version": 1 }),
    };
    if let Err(e) = store.record(&shared.run_id, &event, None) {
        tracing::warn!("failed to journal that steps are supervised: {e}");
    }
}

/// Journal a record about the step's process (not an event the reporters show).
fn journal(ctx: &ActionCtx, kind: &str, data: serde_json::Value) -> Result<(), String> {
    let Some(store) = &ctx.shared.store else {
        return Ok(());
    };
    store
        .record(
            &ctx.shared.run_id,
            &crate::state::EventInput {
                step: Some(ctx.step.to_string()),
                kind: kind.to_owned(),
                attempt: Some(ctx.attempt),
                data,
            },
            None,
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Run `/bin/sh -c command` under a supervisor until it exits, the timeout passes or the run
/// is cancelled.
///
/// # Errors
/// The supervisor or shell could not start, the journal could not be written, the timeout
/// passed or the run was cancelled (the process group is killed in both cases).
pub async fn run(
    ctx: &ActionCtx,
    sup: &Supervised,
    command: &str,
    env: Vec<(String, String)>,
    cwd: Option<String>,
    stdin: Option<String>,
    timeout: Duration,
) -> Result<Finished, ActionError> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

    let mut cmd = tokio::process::Command::new("/proc/self/exe");
    cmd.arg("__supervise")
        .arg("--db")
        .arg(&sup.db)
        .args(["--run", &ctx.shared.run_id, "--step", &ctx.step])
        .args(["--attempt", &ctx.attempt.to_string()]);
    if let Some(dir) = &cwd {
        cmd.arg("--cwd").arg(dir);
    }
    cmd.args(["--", "/bin/sh", "-c", command])
        .envs(env)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        // Its own group: Ctrl-C on the terminal reaches the engine, not the supervisor, and
        // the engine's death leaves it running.
        .process_group(0)
        .kill_on_drop(false);
    let mut child = cmd
        .spawn()
        .map_err(|e| ActionError::Failed(format!("failed to start the step's supervisor: {e}")))?;
    let sup_pid = child.id().unwrap_or(0);
    let (Some(mut to_sup), Some(from_sup)) = (child.stdin.take(), child.stdout.take()) else {
        kill_pid(sup_pid);
        return Err(ActionError::Failed(
            "failed to talk to the step's supervisor".to_owned(),
        ));
    };
    let Some(ident) = ProcessId::of(sup_pid) else {
        return Err(ActionError::Failed(
            "the step's supervisor died at start".to_owned(),
        ));
    };
    // Durable before the shell may start: a step without this record never ran.
    if let Err(e) = journal(
        ctx,
        STARTED,
        serde_json::json!({ "attempt": ctx.attempt, "supervisor": ident }),
    ) {
        kill_pid(sup_pid);
        let _ = child.wait().await;
        return Err(ActionError::Failed(format!(
            "failed to journal the step's process (it did not start): {e}"
        )));
    }
    let go = Go {
        secrets: ctx.shared.masked_forms(),
        stdin,
    };
    let mut line = serde_json::to_vec(&go).unwrap_or_default();
    line.push(b'\n');
    if let Err(e) = to_sup.write_all(&line).await {
        kill_pid(sup_pid);
        return Err(ActionError::Failed(format!(
            "failed to start the step's supervisor: {e}"
        )));
    }

    let mut reader = tokio::io::BufReader::new(from_sup);
    let mut stdout = String::new();
    let mut stderr = String::new();
    let mut truncated = false;
    let mut pgid = 0u32;
    let mut cancel = ctx.cancelled();
    let sleep = tokio::time::sleep(timeout);
    tokio::pin!(sleep);
    let mut stopping: Option<ActionError> = None;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let read = tokio::select! {
            r = reader.read_until(b'\n', &mut buf) => r,
            () = &mut sleep => {
                if stopping.is_some() {
                    // The supervisor did not report within 2 s of the kill: stop waiting.
                    kill_pid(sup_pid);
                    kill_group(pgid);
                    break;
                }
                stopping = Some(ActionError::TimedOut(timeout));
                let _ = to_sup.write_all(b"kill\n").await;
                kill_group(pgid);
                sleep.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(2));
                continue;
            }
            () = cancel.wait(), if stopping.is_none() => {
                stopping = Some(ActionError::Cancelled);
                let _ = to_sup.write_all(b"kill\n").await;
                kill_group(pgid);
                sleep.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(2));
                continue;
            }
        };
        let n = read.unwrap_or(0);
        if n == 0 {
            break;
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        let (tag, payload) = match buf.split_first() {
            Some((t, rest)) => (*t, rest.strip_prefix(b" ").unwrap_or(rest)),
            None => continue,
        };
        let text = String::from_utf8_lossy(payload);
        match tag {
            b'o' | b'O' | b'e' | b'E' => {
                let (stream, sink) = if matches!(tag, b'o' | b'O') {
                    (Stream::Stdout, &mut stdout)
                } else {
                    (Stream::Stderr, &mut stderr)
                };
                ctx.output(stream, text.trim_end_matches('\r'));
                let add = if tag.is_ascii_lowercase() {
                    format!("{text}\n")
                } else {
                    text.into_owned()
                };
                if sink.len() + add.len() <= CAPTURE_LIMIT {
                    sink.push_str(&add);
                } else {
                    truncated = true;
                }
            }
            b'p' => {
                let mut f = text.split_whitespace();
                pgid = f.next().and_then(|p| p.parse().ok()).unwrap_or(0);
                let ticks: u64 = f.next().and_then(|t| t.parse().ok()).unwrap_or(0);
                if stopping.is_some() {
                    kill_group(pgid);
                }
                let shell = ProcessId {
                    pid: pgid,
                    start_ticks: ticks,
                    host: ident.host.clone(),
                    boot_id: ident.boot_id.clone(),
                };
                // Not blocking the shell: it runs already. A failure here only loses the
                // ability to find an orphaned shell whose supervisor was killed too.
                let _ = journal(
                    ctx,
                    RUNNING,
                    serde_json::json!({ "attempt": ctx.attempt, "process": shell, "pgid": pgid }),
                );
            }
            b'f' => {
                let data = serde_json::json!({
                    "attempt": ctx.attempt,
                    "started": false,
                    "error": ctx.mask(&text),
                    "recorded_by": "engine",
                });
                let _ = journal(ctx, EXITED, data);
                let _ = to_sup.write_all(b"ack\n").await;
                let _ = child.wait().await;
                return Err(ActionError::Failed(text.into_owned()));
            }
            b'x' => {
                let mut f = text.split_whitespace();
                let code: i32 = f.next().and_then(|c| c.parse().ok()).unwrap_or(-1);
                let signal: i32 = f.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                let tail = |s: &str| {
                    let mut t = Tail::default();
                    t.push(s);
                    t.cut |= truncated;
                    t
                };
                let data = exit_record(
                    ctx.attempt,
                    code,
                    signal,
                    &tail(&ctx.mask(&stdout)),
                    &tail(&ctx.mask(&stderr)),
                    "engine",
                );
                // Acknowledge only once the exit is durable; without the acknowledgement the
                // supervisor journals it itself.
                if journal(ctx, EXITED, data).is_ok() {
                    let _ = to_sup.write_all(b"ack\n").await;
                }
                drop(to_sup);
                let _ = child.wait().await;
                if let Some(e) = stopping {
                    return Err(e);
                }
                return Ok(Finished {
                    exit_code: code,
                    stdout,
                    stderr,
                    truncated,
                });
            }
            _ => {}
        }
    }
    // The supervisor ended without reporting an exit: it was killed.
    let _ = child.wait().await;
    if let Some(e) = stopping {
        return Err(e);
    }
    kill_group(pgid);
    Err(ActionError::Failed(
        "the step's supervisor died before its command ended (its process group was killed)"
            .to_owned(),
    ))
}

/// The result of a shell that ended while the engine was down, rebuilt from its exit record
/// (already masked): `stdout`/`stderr` are the recorded tails.
pub(super) fn recovered_result(rec: &serde_json::Value) -> super::ActionResult {
    let stdout = rec["stdout_tail"].as_str().unwrap_or_default();
    let stderr = rec["stderr_tail"].as_str().unwrap_or_default();
    let code = rec["exit_code"]
        .as_i64()
        .and_then(|c| i32::try_from(c).ok())
        .unwrap_or(-1);
    let mut value = serde_json::json!({
        "stdout": stdout,
        "stderr": stderr,
        "exit_code": code,
        "truncated": rec["truncated"] == true,
    });
    if let Ok(j) = serde_json::from_str::<serde_json::Value>(stdout.trim()) {
        value["json"] = j;
    }
    let ok = code == 0;
    super::ActionResult {
        value,
        ok,
        summary: if ok {
            "exit 0 (ended while the engine was down)".to_owned()
        } else {
            format!("exit {code} (ended while the engine was down)")
        },
        exit_code: Some(code),
        http_status: None,
    }
}

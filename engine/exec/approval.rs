//! Human approval gates: a prompt on the terminal, `--yes`, or approvals given from another
//! shell; quorums of distinct approvers; refusal of self-approval.

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::Duration;

use super::{ActionCtx, ActionError, ActionResult, Event};
use crate::kinds::approve::ApproveSpec;

/// One approval decision.
#[derive(Debug, Clone)]
struct Decision {
    approver: String,
    approved: bool,
    via: String,
}

/// Ask for approval of a step and wait for the decision.
///
/// # Errors
/// `Denied` when someone denies, or nobody approves before the step's timeout.
pub async fn request(
    ctx: &ActionCtx,
    spec: &ApproveSpec,
    message: &str,
) -> Result<ActionResult, ActionError> {
    let shared = ctx.shared();
    let opts = &shared.options;
    let approver = opts.approver.clone().unwrap_or_else(|| shared.user.clone());
    let mut decisions: Vec<Decision> = Vec::new();
    // Approvals already read (and emitted) from the journal while the terminal prompt waited.
    let mut approvers_from_store: Vec<String> = Vec::new();
    let allowed = |who: &str| -> Result<(), String> {
        if !spec.self_approval && who == shared.user {
            return Err(format!(
                "`{who}` started this run and this step refuses self-approval"
            ));
        }
        if !spec.approvers.is_empty() && !spec.approvers.iter().any(|a| a == who) {
            return Err(format!(
                "`{who}` is not among the approvers of this step ({})",
                spec.approvers.join(", ")
            ));
        }
        Ok(())
    };
    let needed = spec.min_approvals.max(1);
    shared.emit(&Event::ApprovalWaiting {
        step: ctx.step().to_owned(),
        message: message.to_owned(),
        needed,
        have: 0,
    });

    if opts.yes {
        allowed(&approver)
            .map_err(|why| ActionError::Denied(format!("--yes cannot approve: {why}")))?;
        decisions.push(Decision {
            approver: approver.clone(),
            approved: true,
            via: opts.yes_via.clone().unwrap_or_else(|| "--yes".to_owned()),
        });
    } else if opts.interactive {
        allowed(&approver).map_err(|why| {
            ActionError::Denied(format!("cannot approve on this terminal: {why}"))
        })?;
        let prompt = prompt(ctx, message, &approver);
        // Journaled: an answer here or `runbook approve` from another shell, whichever comes
        // first, as the prompt says.
        let answer = if let Some(store) = shared.store.clone() {
            let mut from_store = Vec::new();
            let mut held = Vec::new();
            let answered = tokio::select! {
                a = ask(ctx, &prompt) => Some(a),
                r = wait_for_store(ctx, store.as_ref(), &allowed, needed, &mut from_store, Some(&mut held)) => {
                    r.map(|()| None).transpose()
                }
            };
            // The prompt is gone (or going): the decisions read meanwhile can be shown.
            for e in &held {
                shared.emit(e);
            }
            let answered = answered.transpose()?;
            if answered.is_none() {
                eprintln!("\napproved from another shell by {}", from_store.join(", "));
            }
            approvers_from_store = from_store;
            answered
        } else {
            Some(ask(ctx, &prompt).await?)
        };
        if let Some(answer) = answer {
            decisions.push(Decision {
                approver: approver.clone(),
                approved: is_yes(&answer),
                via: "tty".to_owned(),
            });
        }
    }
    for d in &decisions {
        shared.emit(&Event::Approval {
            step: ctx.step().to_owned(),
            approver: d.approver.clone(),
            decision: if d.approved {
                "approved".to_owned()
            } else {
                "denied".to_owned()
            },
            via: d.via.clone(),
        });
    }
    if let Some(d) = decisions.iter().find(|d| !d.approved) {
        return Err(ActionError::Denied(format!(
            "approval denied by {} ({})",
            d.approver, d.via
        )));
    }
    let mut approvers: Vec<String> = decisions.iter().map(|d| d.approver.clone()).collect();
    approvers.extend(approvers_from_store);
    approvers.sort();
    approvers.dedup();
    if u32::try_from(approvers.len()).unwrap_or(u32::MAX) < needed {
        let Some(store) = shared.store.clone() else {
            return Err(ActionError::Denied(if opts.interactive || opts.yes {
                format!(
                    "step needs {needed} distinct approvers and has {}; further approvals come through the journal, which this run does not keep (--no-journal)",
                    approvers.len()
                )
            } else {
                "no terminal to ask for approval: pass --yes to pre-approve, or run on a terminal"
                    .to_owned()
            }));
        };
        wait_for_store(ctx, store.as_ref(), &allowed, needed, &mut approvers, None).await?;
    }
    Ok(ActionResult {
        value: serde_json::json!({ "approved": true, "approvers": approvers }),
        ok: true,
        summary: format!("approved by {}", approvers.join(", ")),
        exit_code: None,
        http_status: None,
    })
}

fn is_yes(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

/// The prompt: what is asked, what approving lets happen next, how long it waits, and how to
/// answer from elsewhere.
fn prompt(ctx: &ActionCtx, message: &str, approver: &str) -> String {
    use std::fmt::Write as _;
    let shared = ctx.shared();
    let c = &ctx.compiled;
    let mut o = format!(
        "\n┃ approval needed for step `{}`\n┃ {message}\n",
        ctx.step()
    );
    if let Some(&i) = c.index_by_id.get(ctx.step()) {
        let mut next: Vec<usize> = c
            .downstream(i)
            .into_iter()
            .filter(|&d| c.steps[d].mutates)
            .collect();
        next.sort_unstable();
        let shown: Vec<String> = next
            .iter()
            .take(6)
            .map(|&d| {
                let s = &c.steps[d];
                if s.irreversible {
                    format!("{} (IRREVERSIBLE)", s.id)
                } else {
                    s.id.clone()
                }
            })
            .collect();
        if shown.is_empty() {
            o.push_str("┃ no mutating step waits for this approval\n");
        } else {
            let more = next.len() - shown.len();
            let _ = writeln!(
                o,
                "┃ approving lets these mutating steps run: {}{}",
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            );
        }
    }
    let _ = writeln!(
        o,
        "┃ waits {} for an answer; no answer denies",
        crate::duration::format(ctx.timeout())
    );
    if shared.store.is_some() {
        let _ = writeln!(
            o,
            "┃ or from another shell: runbook approve {} {}   (or runbook deny …)",
            shared.run_id,
            ctx.step()
        );
    }
    let _ = write!(o, "┃ approve as {approver}? [y/N] ");
    crate::terminal::escape(&o)
}

/// Lines typed on the controlling terminal, read by one thread for the whole process.
///
/// A read of the terminal cannot be interrupted; a prompt abandoned (timeout, cancellation, an
/// approval from another shell) must not leave a reader behind that would swallow the answer to
/// the next prompt. One reader feeds a channel; each prompt takes the lines typed after it.
fn tty_lines() -> &'static Mutex<mpsc::Receiver<String>> {
    static LINES: OnceLock<Mutex<mpsc::Receiver<String>>> = OnceLock::new();
    LINES.get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut input: Box<dyn BufRead> = match std::fs::File::open("/dev/tty") {
                Ok(f) => Box::new(std::io::BufReader::new(f)),
                Err(_) => Box::new(std::io::BufReader::new(std::io::stdin())),
            };
            loop {
                let mut line = String::new();
                match input.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if tx.send(line).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Mutex::new(rx)
    })
}

/// Ask on the controlling terminal, with progress bars suspended; cancellable.
async fn ask(ctx: &ActionCtx, prompt: &str) -> Result<String, ActionError> {
    /// Sets the flag when the ask is abandoned, so that the prompt gives the terminal back.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let shared = ctx.shared().clone();
    let prompt = prompt.to_owned();
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_drop = StopOnDrop(stop.clone());
    let task = tokio::task::spawn_blocking(move || {
        let mut answer = None;
        shared.reporter.suspend(&mut || {
            let mut err = std::io::stderr();
            let _ = err.write_all(prompt.as_bytes());
            let _ = err.flush();
            let Ok(lines) = tty_lines().lock() else {
                return;
            };
            // Typed before the question was shown: not an answer to it.
            while lines.try_recv().is_ok() {}
            while !stop.load(Ordering::SeqCst) {
                match lines.recv_timeout(Duration::from_millis(100)) {
                    Ok(line) => {
                        answer = Some(line);
                        return;
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    // End of input: no answer, which denies.
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        answer = Some(String::new());
                        return;
                    }
                }
            }
        });
        answer
    });
    let mut cancel = ctx.cancelled();
    tokio::select! {
        r = task => match r {
            Ok(Some(a)) => Ok(a),
            Ok(None) => Err(ActionError::Failed("failed to read the answer: the prompt was abandoned".to_owned())),
            Err(e) => Err(ActionError::Failed(format!("failed to read the answer: {e}"))),
        },
        () = tokio::time::sleep(ctx.timeout()) => Err(ActionError::Denied(format!("nobody answered within {}", crate::duration::format(ctx.timeout())))),
        () = cancel.wait() => Err(ActionError::Cancelled),
    }
}

/// Wait for approvals given from other shells (`runbook approve RUN STEP`) until the quorum is
/// met, someone denies, or the step's timeout passes. Only decisions made after the request
/// count: a denial from an earlier attempt does not deny a re-request.
async fn wait_for_store(
    ctx: &ActionCtx,
    store: &dyn crate::state::Store,
    allowed: &(dyn Fn(&str) -> Result<(), String> + Sync),
    needed: u32,
    approvers: &mut Vec<String>,
    mut held: Option<&mut Vec<Event>>,
) -> Result<(), ActionError> {
    let shared = ctx.shared();
    let since = crate::clock::now_ms();
    let deadline = tokio::time::Instant::now() + ctx.timeout();
    let mut seen = 0usize;
    // While a prompt holds the terminal, the reporter is suspended: emitting would wait for the
    // prompt, which waits for this. Such events are handed back to be emitted after it.
    if held.is_none() {
        eprintln!(
            "waiting for approval of step `{}` ({}/{needed}): run `runbook approve {} {}` (or `runbook deny …`) from another shell",
            ctx.step(),
            approvers.len(),
            shared.run_id,
            ctx.step()
        );
    }
    loop {
        let records = store
            .approvals(&shared.run_id, ctx.step())
            .map_err(|e| ActionError::Failed(format!("failed to read approvals: {e}")))?;
        let fresh: Vec<_> = records.into_iter().filter(|r| r.at_ms >= since).collect();
        for r in fresh.iter().skip(seen) {
            // Anyone may deny (a stop button must always work); approvals must be allowed.
            let verdict = if r.decision {
                allowed(&r.approver).map(|()| true)
            } else {
                Ok(false)
            };
            let decision = match &verdict {
                Ok(true) => "approved",
                Ok(false) => "denied",
                Err(_) => "refused",
            };
            let event = Event::Approval {
                step: ctx.step().to_owned(),
                approver: r.approver.clone(),
                decision: decision.to_owned(),
                via: r.via.clone(),
            };
            match held.as_deref_mut() {
                Some(events) => events.push(event),
                None => shared.emit(&event),
            }
            match verdict {
                Ok(false) => {
                    return Err(ActionError::Denied(format!(
                        "approval denied by {} ({})",
                        r.approver, r.via
                    )));
                }
                Ok(true) => {
                    if !approvers.contains(&r.approver) {
                        approvers.push(r.approver.clone());
                    }
                }
                Err(why) => eprintln!("approval by {} ignored: {why}", r.approver),
            }
        }
        seen = fresh.len();
        if u32::try_from(approvers.len()).unwrap_or(u32::MAX) >= needed {
            return Ok(());
        }
        let mut cancel = ctx.cancelled();
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
            () = tokio::time::sleep_until(deadline) => {
                return Err(ActionError::Denied(format!("nobody approved within {} ({} of {needed} approvals)", crate::duration::format(ctx.timeout()), approvers.len())));
            }
            () = cancel.wait() => return Err(ActionError::Cancelled),
        }
    }
}

/// Why a decision cannot be recorded for a step now.
#[derive(Debug, thiserror::Error)]
pub enum NotWaiting {
    /// The run is over: nothing of it waits any more.
    #[error(
        "run {run} is {status}: only a step of a running run that waits for approval can be decided"
    )]
    Finished {
        /// The run.
        run: String,
        /// Its final status.
        status: &'static str,
    },
    /// The run's journal never mentions the step.
    #[error("run {run} has no step `{step}` that asked for approval")]
    UnknownStep {
        /// The run.
        run: String,
        /// The step named.
        step: String,
    },
    /// The step exists but is not waiting for approval now.
    #[error("step `{step}` of run {run} is not waiting for approval: {why}")]
    NotNow {
        /// The run.
        run: String,
        /// The step.
        step: String,
        /// What it is doing instead.
        why: String,
    },
    /// The journal cannot be read.
    #[error("failed to read the journal of run {run}")]
    State {
        /// The run.
        run: String,
        /// Why (boxed: the error is large and rare).
        #[source]
        source: Box<crate::state::StateError>,
    },
}

/// Check that `step` of `run` waits for approval right now: the run is running and the step's
/// last journal entries since it asked are approvals. A decision for anything else is refused,
/// so that an approval cannot be banked for later or attached to a finished run.
///
/// # Errors
/// What the step is instead.
pub fn check_waiting(
    store: &dyn crate::state::Store,
    run: &crate::state::RunRecord,
    step: &str,
) -> Result<(), NotWaiting> {
    let events = store.events(&run.id).map_err(|source| NotWaiting::State {
        run: run.id.clone(),
        source: Box::new(source),
    })?;
    let of_step: Vec<&crate::state::EventRecord> = events
        .iter()
        .filter(|e| e.step.as_deref() == Some(step))
        .collect();
    if of_step.is_empty() {
        return Err(NotWaiting::UnknownStep {
            run: run.id.clone(),
            step: step.to_owned(),
        });
    }
    if run.status.is_terminal() {
        return Err(NotWaiting::Finished {
            run: run.id.clone(),
            status: run.status.as_str(),
        });
    }
    let Some(asked) = of_step.iter().rposition(|e| e.kind == "approval_waiting") else {
        return Err(NotWaiting::NotNow {
            run: run.id.clone(),
            step: step.to_owned(),
            why: "it is not an approval step, or has not asked yet".to_owned(),
        });
    };
    if let Some(after) = of_step[asked + 1..].iter().find(|e| e.kind != "approval") {
        return Err(NotWaiting::NotNow {
            run: run.id.clone(),
            step: step.to_owned(),
            why: format!("it moved on (`{}`)", after.kind),
        });
    }
    Ok(())
}

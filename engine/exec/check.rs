//! `runbook check`: would this runbook work right now? Everything that can be checked without
//! acting — secrets, preflight, read-only guards, commands on PATH, HTTP targets — for a cron job
//! that catches a rotted DR runbook months before the drill.

use std::sync::Arc;
use std::time::Duration;

use super::context::{ActionCtx, Shared, TemplateState};
use super::step::poll_check;
use super::{Event, Options, OutputMode, Reporter};
use crate::compile::{CheckTiming, Compiled, ParamValues};
use crate::kinds::{self, Action};
use crate::template::Escape;

/// One finding.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Finding {
    /// What was checked.
    pub what: String,
    /// `ok`, `fail` or `skip`.
    pub outcome: &'static str,
    /// Details.
    pub detail: String,
}

/// A reporter that keeps only the last output line of a preflight check (masked like every
/// output), so a failing one says what it saw: `check` prints its own findings.
struct Quiet(Arc<std::sync::Mutex<Option<String>>>);
impl Reporter for Quiet {
    fn emit(&self, _: i64, event: &Event) {
        if let Event::Output { step, line, .. } = event
            && step == "preflight"
            && !line.trim().is_empty()
            && let Ok(mut last) = self.0.lock()
        {
            *last = Some(line.trim().to_owned());
        }
    }
}

/// Shell words that are not programs on PATH.
const BUILTINS: &[&str] = &[
    "echo", "test", "[", "cd", "true", "false", "printf", "exit", "set", "export", "read", "if",
    "for", "while", "case", "until", "eval", "exec", ":", ".", "source", "unset", "trap", "wait",
    "shift", "return", "local", "{", "(", "!",
];

fn on_path(cmd: &str) -> bool {
    if cmd.contains('/') {
        return std::path::Path::new(cmd).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

/// The program a command line starts with (after `VAR=value` assignments).
fn program(command: &str) -> Option<String> {
    command
        .split_whitespace()
        .find(|w| !w.contains('=') || w.starts_with('='))
        .map(|w| w.trim_matches(|c| c == '\'' || c == '"').to_owned())
}

/// Run every read-only check.
///
/// # Errors
/// When the async runtime cannot start.
pub fn check(c: &Compiled, params: &ParamValues) -> Result<Vec<Finding>, String> {
    let mut findings = Vec::new();
    let secrets = match super::resolve_secrets(c) {
        Ok(s) => {
            for (name, _) in &s {
                findings.push(Finding {
                    what: format!("secret {name}"),
                    outcome: "ok",
                    detail: "resolvable".to_owned(),
                });
            }
            s
        }
        Err(e) => {
            findings.push(Finding {
                what: "secrets".to_owned(),
                outcome: "fail",
                detail: e,
            });
            Vec::new()
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("failed to start the async runtime: {e}"))?;
    let last_line = Arc::new(std::sync::Mutex::new(None));
    let options = Options {
        max_parallel: None,
        yes: false,
        yes_via: None,
        approver: None,
        interactive: false,
        output: OutputMode::Plain,
    };
    let shared = Shared::new(
        "check".to_owned(),
        c,
        params,
        &secrets,
        options,
        Box::new(Quiet(last_line.clone())),
        None,
    )?;
    let compiled = Arc::new(c.clone());
    rt.block_on(async {
        let state = TemplateState::new(&shared, c, params);
        let renderer = state.renderer();
        let ctx = |step: &str, timeout: Duration| ActionCtx {
            shared: shared.clone(),
            step: Arc::from(step),
            attempt: 0,
            timeout,
            renderer: renderer.clone(),
            compiled: compiled.clone(),
        };
        let once = |t: &CheckTiming| CheckTiming {
            within: None,
            interval: t.interval,
            timeout: t.timeout,
        };
        for (i, check) in c.runbook.preflight.iter().enumerate() {
            let t = CheckTiming {
                within: None,
                interval: crate::compile::DEFAULT_INTERVAL,
                timeout: crate::compile::DEFAULT_CHECK_TIMEOUT,
            };
            let what = format!(
                "preflight #{}{}",
                i + 1,
                check
                    .name
                    .as_ref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            );
            if let Ok(mut last) = last_line.lock() {
                *last = None;
            }
            let mut finding = run_check(&ctx("preflight", t.timeout), check, &t, &what).await;
            if finding.outcome == "fail"
                && let Some(line) = last_line.lock().ok().and_then(|mut l| l.take())
            {
                finding.detail = format!("{} ({line})", finding.detail);
            }
            findings.push(finding);
        }
        for i in 0..c.steps.len() {
            let step = c.step(i);
            let cs = &c.steps[i];
            // A step the params skip never runs: failing its checks or its command would fail a
            // runbook that works (app-rollback with strategy=helm has no image to set).
            if let Some(w) = &step.when
                && decided_false(&w.value, &renderer)
            {
                findings.push(Finding {
                    what: cs.id.clone(),
                    outcome: "skip",
                    detail: format!("skipped by params: `when: {}` is false", w.value),
                });
                continue;
            }
            for (k, (check, t)) in step.require.iter().zip(&cs.require).enumerate() {
                let what = format!("{} require #{}", cs.id, k + 1);
                if reads_run_time(check) {
                    findings.push(Finding {
                        what,
                        outcome: "skip",
                        detail: "reads results of earlier steps: decided at run time".to_owned(),
                    });
                    continue;
                }
                findings.push(run_check(&ctx(&cs.id, t.timeout), check, &once(t), &what).await);
            }
            for action in kinds::step_actions(step) {
                match action {
                    Action::Run(r) => match renderer.render(&r.command.value, Escape::Shell) {
                        Ok(cmd) => {
                            if let Some(p) = program(&cmd) {
                                if BUILTINS.contains(&p.as_str()) {
                                    continue;
                                }
                                let ok = on_path(&p);
                                findings.push(Finding {
                                    what: format!("{} command `{p}`", cs.id),
                                    outcome: if ok { "ok" } else { "fail" },
                                    detail: if ok {
                                        "found".to_owned()
                                    } else {
                                        "not found on PATH".to_owned()
                                    },
                                });
                            }
                        }
                        Err(_) => findings.push(Finding {
                            what: format!("{} command", cs.id),
                            outcome: "skip",
                            detail: "reads run-time values".to_owned(),
                        }),
                    },
                    Action::Http(h) => match renderer.render(&h.value.url.value, Escape::None) {
                        Ok(url) => findings.push(reachable(&cs.id, &url).await),
                        Err(_) => findings.push(Finding {
                            what: format!("{} http target", cs.id),
                            outcome: "skip",
                            detail: "reads run-time values".to_owned(),
                        }),
                    },
                    _ => {}
                }
            }
        }
    });
    // Findings name URLs and commands rendered with secrets in them: they leave masked, like
    // every event of a run.
    // They are printed to a terminal too: step ids and output lines cannot drive it.
    for f in &mut findings {
        f.what = crate::terminal::escape(&shared.mask(&f.what));
        f.detail = crate::terminal::escape(&shared.mask(&f.detail));
    }
    Ok(findings)
}

/// Whether a `when:` guard that reads only params is false for these params (a guard reading
/// run-time values, or one that fails to evaluate, is not decided here: its step is checked).
fn decided_false(when: &str, r: &crate::template::Renderer<'_>) -> bool {
    let Ok(refs) = crate::template::expression_references(when) else {
        return false;
    };
    refs.paths
        .iter()
        .all(|p| p == "params" || p.starts_with("params."))
        && r.eval(when).is_ok_and(|v| !v.is_true())
}

fn reads_run_time(check: &crate::model::Check) -> bool {
    kinds::check_actions(check).iter().any(|a| {
        a.kind()
            .templates()
            .iter()
            .any(|t| t.text.contains("steps."))
            || matches!(a, Action::Expr(e) if e.expr.value.contains("steps."))
    })
}

async fn run_check(
    ctx: &ActionCtx,
    check: &crate::model::Check,
    t: &CheckTiming,
    what: &str,
) -> Finding {
    match poll_check(ctx, check, t, "check", 0).await {
        Ok(()) => Finding {
            what: what.to_owned(),
            outcome: "ok",
            detail: "passes".to_owned(),
        },
        Err(e) => Finding {
            what: what.to_owned(),
            outcome: "fail",
            detail: e,
        },
    }
}

/// Whether a TCP connection to the URL's host and port opens (no request is sent: the step may
/// mutate).
async fn reachable(step: &str, url: &str) -> Finding {
    let what = format!("{step} http target {}", crate::mask::mask_dsn(url));
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return Finding {
            what,
            outcome: "fail",
            detail: "not a valid URL".to_owned(),
        };
    };
    let Some(host) = parsed.host_str() else {
        return Finding {
            what,
            outcome: "fail",
            detail: "the URL has no host".to_owned(),
        };
    };
    let port = parsed.port_or_known_default().unwrap_or(443);
    match tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect((host, port)),
    )
    .await
    {
        Ok(Ok(_)) => Finding {
            what,
            outcome: "ok",
            detail: format!("{host}:{port} accepts connections"),
        },
        Ok(Err(e)) => Finding {
            what,
            outcome: "fail",
            detail: format!("cannot connect to {host}:{port}: {e}"),
        },
        Err(_) => Finding {
            what,
            outcome: "fail",
            detail: format!("no answer from {host}:{port} within 5s"),
        },
    }
}

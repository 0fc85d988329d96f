//! `run`: a shell command, the universal action and check.
//!
//! Template values in the command never become shell code: each travels as an environment
//! variable (`RB_V1`, `RB_V2`…) that the script references (`"${RB_V1}"`), so the shell expands
//! it as data in any quoting context; places where no reference works (single quotes, quoted
//! here-documents, backticks…) are refused by the compiler. `env:`, `cwd` and `stdin` values are
//! never parsed by a shell.

use std::collections::BTreeMap;

use super::{DescriptionLine, Kind, TemplateField};
use crate::model::Spanned;
use crate::template::{Escape, RenderError, Renderer};

/// A shell command with its environment, as written on a step, check or compensation.
#[derive(Debug, Clone, Copy)]
pub struct RunAction<'a> {
    /// The command line, run by `/bin/sh -c`.
    pub command: &'a Spanned<String>,
    /// Extra environment variables.
    pub env: &'a BTreeMap<String, Spanned<String>>,
    /// Working directory.
    pub cwd: Option<&'a Spanned<String>>,
    /// Standard input.
    pub stdin: Option<&'a Spanned<String>>,
}

impl Kind for RunAction<'_> {
    fn name(&self) -> &'static str {
        "run"
    }

    fn templates(&self) -> Vec<TemplateField<'_>> {
        let mut out = vec![TemplateField::new("run", self.command, Escape::Shell)];
        for (k, v) in self.env {
            out.push(TemplateField::new(format!("env.{k}"), v, Escape::None));
        }
        if let Some(cwd) = self.cwd {
            out.push(TemplateField::new("cwd", cwd, Escape::None));
        }
        if let Some(stdin) = self.stdin {
            out.push(TemplateField::new("stdin", stdin, Escape::None));
        }
        out
    }

    fn mutates(&self) -> bool {
        // A shell command can do anything; authors mark read-only ones with `mutates: false`.
        true
    }

    fn describe(&self, r: &Renderer<'_>) -> Result<Vec<DescriptionLine>, RenderError> {
        let mut out = vec![(
            "run".to_owned(),
            r.render(&self.command.value, Escape::Shell)?,
        )];
        for (k, v) in self.env {
            out.push((format!("env {k}"), r.render(&v.value, Escape::None)?));
        }
        if let Some(cwd) = self.cwd {
            out.push(("cwd".to_owned(), r.render(&cwd.value, Escape::None)?));
        }
        if let Some(stdin) = self.stdin {
            out.push(("stdin".to_owned(), r.render(&stdin.value, Escape::None)?));
        }
        Ok(out)
    }
}

mod process {
    //! Spawning the shell through duct, streaming its output, and killing its process group.

    use std::io::{BufRead, BufReader, Read};
    use std::os::unix::process::CommandExt;
    use std::time::Duration;

    use crate::exec::{ActionCtx, ActionError, Stream};

    /// Bytes of each stream kept in `result` (the rest is streamed to the log only).
    pub const CAPTURE_LIMIT: usize = 1 << 20;

    /// What the process did.
    pub struct Finished {
        pub exit_code: i32,
        pub stdout: String,
        pub stderr: String,
        pub truncated: bool,
    }

    fn pump(reader: impl Read, stream: Stream, ctx: &ActionCtx) -> (String, bool) {
        let mut captured = String::new();
        let mut truncated = false;
        let mut r = BufReader::new(reader);
        let mut line = Vec::new();
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    ctx.output(stream, text.trim_end_matches(['\n', '\r']));
                    if captured.len() + text.len() <= CAPTURE_LIMIT {
                        captured.push_str(&text);
                    } else {
                        truncated = true;
                    }
                }
            }
        }
        (captured, truncated)
    }

    /// Kill every process of the group (the shell and all it spawned).
    fn kill_group(pgid: u32) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }

    /// Run `/bin/sh -c command` until it exits, the timeout passes or the run is cancelled.
    pub async fn run(
        ctx: &ActionCtx,
        command: &str,
        env: Vec<(String, String)>,
        cwd: Option<String>,
        stdin: Option<String>,
        timeout: Duration,
    ) -> Result<Finished, ActionError> {
        // A step's own action runs under a supervisor that outlives the engine (checks and
        // compensations, read-only or undone anyway, run directly).
        if let Some(sup) = crate::exec::supervise::current() {
            let f =
                crate::exec::supervise::run(ctx, &sup, command, env, cwd, stdin, timeout).await?;
            return Ok(Finished {
                exit_code: f.exit_code,
                stdout: f.stdout,
                stderr: f.stderr,
                truncated: f.truncated,
            });
        }
        let (out_r, out_w) = std::io::pipe()
            .map_err(|e| ActionError::Failed(format!("failed to create a pipe: {e}")))?;
        let (err_r, err_w) = std::io::pipe()
            .map_err(|e| ActionError::Failed(format!("failed to create a pipe: {e}")))?;
        let mut expr = duct::cmd("/bin/sh", ["-c", command])
            .stdout_file(out_w)
            .stderr_file(err_w)
            .unchecked()
            .before_spawn(|c| {
                // Own process group: a timeout or Ctrl-C kills the whole tree, no orphans.
                c.process_group(0);
                Ok(())
            });
        for (k, v) in env {
            expr = expr.env(k, v);
        }
        if let Some(dir) = cwd {
            expr = expr.dir(dir);
        }
        expr = match stdin {
            Some(s) => expr.stdin_bytes(s),
            None => expr.stdin_null(),
        };
        let handle = expr
            .start()
            .map_err(|e| ActionError::Failed(format!("failed to start /bin/sh: {e}")))?;
        // The parent's copies of the pipes' write ends live in `expr`: drop them so the
        // readers see end-of-file when the children exit.
        drop(expr);
        let handle = std::sync::Arc::new(handle);
        let pgid = handle.pids().first().copied().unwrap_or(0);

        let out_ctx = ctx.clone();
        let err_ctx = ctx.clone();
        let out_task = tokio::task::spawn_blocking(move || pump(out_r, Stream::Stdout, &out_ctx));
        let err_task = tokio::task::spawn_blocking(move || pump(err_r, Stream::Stderr, &err_ctx));
        let waiter = handle.clone();
        let wait_task = tokio::task::spawn_blocking(move || {
            waiter.wait().map(|o| o.status.code().unwrap_or(-1))
        });

        let mut cancel = ctx.cancelled();
        let outcome = tokio::select! {
            r = wait_task => Ok(r),
            () = tokio::time::sleep(timeout) => Err(ActionError::TimedOut(timeout)),
            () = cancel.wait() => Err(ActionError::Cancelled),
        };
        let code = match outcome {
            Ok(Ok(Ok(code))) => code,
            Ok(Ok(Err(e))) => {
                return Err(ActionError::Failed(format!(
                    "failed to wait for the command: {e}"
                )));
            }
            Ok(Err(e)) => {
                return Err(ActionError::Failed(format!(
                    "failed to wait for the command: {e}"
                )));
            }
            Err(e) => {
                if pgid != 0 {
                    kill_group(pgid);
                }
                let _ = handle.kill();
                // Let the readers drain what was written before the kill.
                let _ = tokio::time::timeout(Duration::from_secs(2), out_task).await;
                let _ = tokio::time::timeout(Duration::from_secs(2), err_task).await;
                return Err(e);
            }
        };
        // The shell exited. Its output ends when every process holding the pipes has exited;
        // background children it left behind would hold them open forever: if the output has
        // not ended shortly after the shell, kill the group (a step that must leave a service
        // running detaches it with `setsid` and redirects its output).
        let mut out_task = out_task;
        let mut err_task = err_task;
        let drained = tokio::time::timeout(Duration::from_millis(200), async {
            let o = (&mut out_task).await;
            let e = (&mut err_task).await;
            (o, e)
        })
        .await;
        let ((stdout, t1), (stderr, t2)) = if let Ok((o, e)) = drained {
            (o.unwrap_or_default(), e.unwrap_or_default())
        } else {
            if pgid != 0 {
                kill_group(pgid);
            }
            (
                out_task.await.unwrap_or_default(),
                err_task.await.unwrap_or_default(),
            )
        };
        Ok(Finished {
            exit_code: code,
            stdout,
            stderr,
            truncated: t1 || t2,
        })
    }
}

impl super::Perform for RunAction<'_> {
    fn perform<'a>(&'a self, ctx: &'a crate::exec::ActionCtx) -> super::PerformFuture<'a> {
        Box::pin(async move {
            use crate::exec::{ActionError, ActionResult};
            let r = ctx.renderer();
            let render = |t: &str, e| {
                r.render(t, e)
                    .map_err(|err| ActionError::Failed(err.to_string()))
            };
            // Values reach the shell as environment variables the script references: the shell
            // never parses them, whatever quotes they sit in. What is shown is the equivalent
            // command with the (masked) values written in.
            let command = r
                .shell(&self.command.value, &|v| ctx.mask(v))
                .map_err(|err| ActionError::Failed(ctx.mask(&err.to_string())))?;
            let mut env = Vec::new();
            for (k, v) in self.env {
                env.push((k.clone(), render(&v.value, Escape::None)?));
            }
            // After the author's `env:`, so a reference always reads the value it was made for.
            env.extend(command.env);
            let cwd = self
                .cwd
                .map(|c| render(&c.value, Escape::None))
                .transpose()?;
            let stdin = self
                .stdin
                .map(|s| render(&s.value, Escape::None))
                .transpose()?;
            ctx.note_command(&command.display);
            let f = process::run(ctx, &command.script, env, cwd, stdin, ctx.timeout()).await?;
            let json = serde_json::from_str::<serde_json::Value>(f.stdout.trim()).ok();
            let mut value = serde_json::json!({
                "stdout": ctx.mask(&f.stdout),
                "stderr": ctx.mask(&f.stderr),
                "exit_code": f.exit_code,
                "truncated": f.truncated,
            });
            if let Some(j) = json {
                value["json"] = j;
            }
            let ok = f.exit_code == 0;
            Ok(ActionResult {
                value,
                ok,
                summary: if ok {
                    "exit 0".to_owned()
                } else {
                    format!("exit {}", f.exit_code)
                },
                exit_code: Some(f.exit_code),
                http_status: None,
            })
        })
    }
}

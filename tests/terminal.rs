//! What the operator sees on a terminal (issue 21), driven through a real pseudo-terminal: the
//! engine runs inside a detached `tmux` session (its stdin and stderr are a tty, so progress
//! bars draw and approvals prompt), and the screen is read with `tmux capture-pane`. The closing
//! summary is also snapshotted from the plain (CI) output.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Runbook, TempDir};

/// A detached tmux server of its own (its own socket), killed on drop.
struct Tmux {
    bin: PathBuf,
    socket: String,
    conf: PathBuf,
}

impl Tmux {
    /// Run `command` (a shell command line) in a new 200×60 session; when it ends the pane
    /// shows `[exit N]` and stays open.
    fn start(tag: &str, command: &str) -> Self {
        let tmux = support::tool("tmux", &["/usr/bin/tmux"], "tmux");
        let socket = format!("runbook-test-{tag}-{}", std::process::id());
        // A long history (the whole run must be readable after it scrolled), and the pane kept
        // when its command ends.
        let conf = std::env::temp_dir().join(format!("{socket}.conf"));
        std::fs::write(
            &conf,
            "set -g history-limit 10000\nset -g remain-on-exit on\n",
        )
        .expect("write tmux.conf");
        // The shell catches Ctrl-C (so it survives to print the exit code); the engine, which
        // it starts, gets the default disposition back.
        let script = format!("trap : INT; {command}; echo \"[exit $?]\"; sleep 600");
        let status = Command::new(&tmux)
            .args(["-L", &socket, "-f"])
            .arg(&conf)
            .args(["new-session", "-d", "-s", "t", "-x", "200", "-y", "60"])
            .args(["sh", "-c", &script])
            .env_remove("TMUX")
            .status()
            .expect("start tmux");
        assert!(status.success(), "tmux new-session failed");
        Self {
            bin: tmux,
            socket,
            conf,
        }
    }

    /// The pane as shown, with its scroll-back.
    fn screen(&self) -> String {
        let out = Command::new(&self.bin)
            .args(["-L", &self.socket, "capture-pane", "-p", "-S", "-"])
            .args(["-t", "t"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Wait until the screen contains `needle`; its content then.
    #[track_caller]
    fn wait_for(&self, needle: &str, limit: Duration) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if s.contains(needle) {
                return s;
            }
            assert!(
                start.elapsed() < limit,
                "`{needle}` never appeared on the terminal within {limit:?}; it shows:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Type keys (tmux key names: `C-c`, `Enter`).
    fn keys(&self, keys: &[&str]) {
        let status = Command::new(&self.bin)
            .args(["-L", &self.socket, "send-keys", "-t", "t"])
            .args(keys)
            .status()
            .expect("tmux send-keys");
        assert!(status.success());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new(&self.bin)
            .args(["-L", &self.socket, "kill-server"])
            .status();
        let _ = std::fs::remove_file(&self.conf);
    }
}

/// The command line of the engine for a shell inside tmux (test paths hold no quotes).
fn engine(state: &TempDir, args: &[&str]) -> String {
    let mut line = format!(
        "env NO_COLOR=1 RUNBOOK_STATE_DIR='{}' '{}'",
        state.str(),
        env!("CARGO_BIN_EXE_runbook")
    );
    for a in args {
        line.push_str(" '");
        line.push_str(a);
        line.push('\'');
    }
    line
}

/// The run id in `runbook approve RUN STEP` or `runbook resume RUN` on a screen.
fn run_id_after(screen: &str, prefix: &str) -> String {
    let at = screen
        .find(prefix)
        .unwrap_or_else(|| panic!("no `{prefix}` in:\n{screen}"));
    screen[at + prefix.len()..]
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

const GATED: &str = r"runbook: gated
params:
  dir:
    type: string
steps:
  - id: look
    run: 'true'
    mutates: false
  - id: go-ahead
    needs: [look]
    timeout: 7m
    approve:
      message: Switch traffic to the standby?
  - id: switch
    needs: [go-ahead]
    irreversible: true
    run: touch {{ params.dir }}/switched
  - id: announce
    needs: [switch]
    run: touch {{ params.dir }}/announced
  - id: note
    needs: [look]
    mutates: false
    run: 'true'
";

/// The prompt says how long it waits, which mutating steps it lets run, and how to approve
/// from elsewhere — and that alternative works while the prompt waits.
#[test]
fn the_approval_prompt_names_timeout_next_mutations_and_the_approve_command() {
    let dir = TempDir::new("term-approve");
    let state = TempDir::new("term-approve-state");
    let file = dir.write("gated.yaml", GATED);
    let file = file.to_str().expect("utf-8 path");
    let t = Tmux::start(
        "approve",
        &engine(&state, &["exec", file, "-p", &format!("dir={}", dir.str())]),
    );
    let screen = t.wait_for("? [y/N]", Duration::from_secs(20));
    assert!(
        screen.contains("┃ approval needed for step `go-ahead`"),
        "{screen}"
    );
    assert!(
        screen.contains("┃ Switch traffic to the standby?"),
        "{screen}"
    );
    assert!(
        screen.contains(
            "┃ approving lets these mutating steps run: switch (IRREVERSIBLE), announce\n"
        ),
        "{screen}"
    );
    assert!(
        screen.contains("┃ waits 7m for an answer; no answer denies"),
        "{screen}"
    );
    let run = run_id_after(&screen, "┃ or from another shell: runbook approve ");
    assert!(
        screen.contains(&format!("runbook approve {run} go-ahead")),
        "{screen}"
    );
    assert!(
        dir.read("switched").is_none(),
        "nothing runs before the approval"
    );

    // The alternative the prompt offers: approve from another shell, type nothing here.
    let approve = Runbook::new(["approve".to_owned(), run.clone(), "go-ahead".to_owned()])
        .env("RUNBOOK_STATE_DIR", &state.str())
        .run();
    approve.assert_code(0);
    let end = t.wait_for("[exit ", Duration::from_secs(20));
    assert!(end.contains("[exit 0]"), "{end}");
    assert!(end.contains("approved from another shell by "), "{end}");
    assert!(dir.read("switched").is_some(), "{end}");
    assert!(dir.read("announced").is_some(), "{end}");
    // The summary says who approved.
    let row = end
        .lines()
        .find(|l| l.trim_start().starts_with("go-ahead ") && l.contains("✓ succeeded"))
        .unwrap_or_else(|| panic!("no summary row for go-ahead:\n{end}"));
    assert!(
        row.contains("approved by ") && row.contains("(cli)"),
        "{row}"
    );
}

/// Typed on the terminal: the answer counts (a denial aborts, exit 4, and says who denied).
#[test]
fn an_answer_typed_at_the_prompt_decides() {
    let dir = TempDir::new("term-deny");
    let state = TempDir::new("term-deny-state");
    let file = dir.write("gated.yaml", GATED);
    let file = file.to_str().expect("utf-8 path");
    let t = Tmux::start(
        "deny",
        &engine(&state, &["exec", file, "-p", &format!("dir={}", dir.str())]),
    );
    t.wait_for("? [y/N]", Duration::from_secs(20));
    t.keys(&["n", "Enter"]);
    let end = t.wait_for("[exit ", Duration::from_secs(20));
    assert!(end.contains("[exit 4]"), "{end}");
    assert!(dir.read("switched").is_none(), "{end}");
    let row = end
        .lines()
        .find(|l| l.trim_start().starts_with("go-ahead ") && l.contains("aborted"))
        .unwrap_or_else(|| panic!("no summary row for go-ahead:\n{end}"));
    assert!(row.contains("denied"), "{row}");
}

const SLOW: &str = r"runbook: slow
objectives:
  rto: 10m
params:
  dir:
    type: string
steps:
  - id: prepare
    run: touch {{ params.dir }}/prepared
  - id: a-step-with-a-long-name
    needs: [prepare]
    mutates: false
    run: |
      echo first line of a long script
      echo second line
      echo third line
      sleep 30
  - id: b
    needs: [prepare]
    mutates: false
    run: sleep 30
  - id: gate
    needs: [prepare]
    mutates: false
    run: 'true'
    verify:
      - run: test -e {{ params.dir }}/never
        within: 30s
        interval: 200ms
  - id: after
    needs: [a-step-with-a-long-name, b, gate]
    run: touch {{ params.dir }}/after
";

/// Progress: an overall line (steps done of all, elapsed against the RTO), one aligned line per
/// running step, a multi-line command by its first line, a polled gate's command echoed once.
#[test]
fn progress_shows_overall_count_aligned_steps_and_quiet_commands() {
    let dir = TempDir::new("term-progress");
    let state = TempDir::new("term-progress-state");
    let file = dir.write("slow.yaml", SLOW);
    let file = file.to_str().expect("utf-8 path");
    let t = Tmux::start(
        "progress",
        &engine(&state, &["exec", file, "-p", &format!("dir={}", dir.str())]),
    );
    let screen = t.wait_for("1/5 steps", Duration::from_secs(20));
    // Let the gate poll several times.
    std::thread::sleep(Duration::from_secs(2));
    let screen = {
        let s = t.screen();
        if s.contains("1/5 steps") { s } else { screen }
    };
    assert!(screen.contains("elapsed of RTO 10m"), "{screen}");
    // One line per running step, the elapsed column aligned.
    let cols: Vec<usize> = ["a-step-with-a-long-name", "b", "gate"]
        .iter()
        .map(|id| {
            let line = screen
                .lines()
                .rev()
                .find(|l| l.split_whitespace().nth(1) == Some(id) && !l.contains(": $"))
                .unwrap_or_else(|| panic!("no progress line for {id}:\n{screen}"));
            let after_id = line.find(id).expect("id") + id.len();
            after_id + line[after_id..].len() - line[after_id..].trim_start().len()
        })
        .collect();
    assert!(
        cols.windows(2).all(|w| w[0] == w[1]),
        "columns not aligned ({cols:?}):\n{screen}"
    );
    // The script shows its first line only.
    assert!(
        screen.contains("a-step-with-a-long-name: $ echo first line of a long script … (+3 lines"),
        "{screen}"
    );
    assert!(!screen.contains("$ echo second line"), "{screen}");
    // Polled every 200ms, the gate's command is echoed once.
    let echoes = screen.matches("gate: $ test -e").count();
    assert_eq!(echoes, 1, "{screen}");
    t.keys(&["C-c"]);
    t.wait_for("[exit ", Duration::from_secs(20));
}

/// Ctrl-C: "cancelling…" at once, the stopped steps are `cancelled` (not failed), and the end
/// names the mutations left in place and the `runbook resume RUN` command.
#[test]
fn ctrl_c_cancels_and_says_what_is_left_and_how_to_resume() {
    let dir = TempDir::new("term-cancel");
    let state = TempDir::new("term-cancel-state");
    let file = dir.write("slow.yaml", SLOW);
    let file = file.to_str().expect("utf-8 path");
    let t = Tmux::start(
        "cancel",
        &engine(&state, &["exec", file, "-p", &format!("dir={}", dir.str())]),
    );
    t.wait_for("1/5 steps", Duration::from_secs(20));
    assert!(dir.read("prepared").is_some());
    t.keys(&["C-c"]);
    let end = t.wait_for("[exit ", Duration::from_secs(20));
    assert!(end.contains("[exit 5]"), "{end}");
    assert!(end.contains("cancelling… (interrupted (Ctrl-C))"), "{end}");
    for step in ["a-step-with-a-long-name", "b"] {
        let row = end
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{step} ")) && l.contains("cancelled"))
            .unwrap_or_else(|| panic!("no cancelled summary row for {step}:\n{end}"));
        assert!(!row.contains("failed"), "{row}");
    }
    assert!(
        end.contains("left in place (mutating steps that completed): prepare\n"),
        "{end}"
    );
    let run = run_id_after(&end, "runbook resume ");
    assert!(run.len() >= 8, "{end}");
    assert!(dir.read("after").is_none(), "{end}");
}

const MIXED: &str = r"runbook: mixed
params:
  dir:
    type: string
  optional:
    type: bool
    default: false
steps:
  - id: look
    run: 'true'
    mutates: false
  - id: optional-step
    needs: [look]
    when: params.optional
    run: 'true'
  - id: ok-go
    needs: [look]
    approve:
      message: go?
  - id: change
    needs: [ok-go]
    run: touch {{ params.dir }}/changed
  - id: broken
    needs: [change]
    run: echo 'disk full' >&2; exit 3
";

/// The closing summary: the failure reason per step, who approved, why a step was skipped, the
/// mutations left in place and the next commands (snapshot of the plain output, times and run
/// ids filtered).
#[test]
fn the_final_summary_explains_each_step_and_names_the_next_commands() {
    let dir = TempDir::new("summary");
    let state = TempDir::new("summary-state");
    let file = dir.write("mixed.yaml", MIXED);
    let out = Runbook::exec(&file)
        .dir(&dir)
        .yes()
        .arg("--output")
        .arg("plain")
        .env("RUNBOOK_STATE_DIR", &state.str())
        .run();
    out.assert_code(1);
    let at = out
        .stdout
        .find(" run failed in ")
        .unwrap_or_else(|| panic!("{}", out.dump()));
    let tail = &out.stdout[at..];
    let user = runbook_user(&out.stdout);
    let mut settings = insta::Settings::clone_current();
    settings.add_filter(r"\d+(\.\d+)?(ms|s)\b", "[time]");
    settings.add_filter(r"\b\d{8}-\d{6}-[0-9a-f]{6}\b", "[run]");
    settings.add_filter(&regex_escape(&user), "[user]");
    // Durations of different widths move the columns: compare the words, not the padding.
    settings.add_filter(" {2,}", "  ");
    settings.bind(|| insta::assert_snapshot!("summary_failed", tail));
    let run = run_id_after(&out.stdout, "runbook resume ");
    assert!(
        tail.contains(&format!("runbook retry {run} --from broken")),
        "{tail}"
    );
    assert!(tail.contains(&format!("runbook report {run}")), "{tail}");
    // Without a journal there is nothing to report, resume or retry: no such advice.
    let bare = Runbook::exec(&file)
        .dir(&dir)
        .yes()
        .arg("--no-journal")
        .arg("--output")
        .arg("plain")
        .run();
    bare.assert_code(1);
    assert!(!bare.stdout.contains("runbook resume"), "{}", bare.dump());
}

/// The user a plain output names (`… started by USER@HOST`).
fn runbook_user(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.split_once(" started by ").map(|(_, r)| r.to_owned()))
        .and_then(|r| r.split('@').next().map(str::to_owned))
        .unwrap_or_else(|| panic!("no user in:\n{stdout}"))
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_string()
            } else {
                format!("\\{c}")
            }
        })
        .collect()
}

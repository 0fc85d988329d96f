//! The commands that read or change durable state: resume, retry, runs, show, logs, approve,
//! deny, audit. Each returns a documented exit code.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::cli::{ApprovalArgs, AuditCommand, Output, ParamArgs, RunArgs};
use crate::diagnostic::error_chain as chain;
use crate::exec::{Decision, ResumeFrom};
use crate::exit;
use crate::state::{SqliteStore, StateDir, Store};

/// Open the state store, printing a clear error (and returning the exit code) when it cannot be.
///
/// # Errors
/// The exit code to return.
pub fn open_store(dir: Option<PathBuf>) -> Result<Arc<dyn Store>, u8> {
    let dir = StateDir::resolve(dir);
    match SqliteStore::open(&dir) {
        Ok(s) => Ok(Arc::new(s)),
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            Err(exit::STATE)
        }
    }
}

/// The run `run_id` names (a unique prefix is enough), or the exit code after saying why not.
pub(crate) fn find_run(store: &dyn Store, run_id: &str) -> Result<crate::state::RunRecord, u8> {
    match store.run(run_id) {
        Ok(Some(r)) => Ok(r),
        Ok(None) => {
            eprintln!(
                "error: failed to find run {run_id}\n  help: `runbook runs` lists the runs in this state directory (see --state-dir)"
            );
            Err(exit::STATE)
        }
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            Err(exit::STATE)
        }
    }
}

/// `runbook retry RUN --from STEP [--with-upstream]`.
#[derive(Debug, Clone)]
pub struct RetryFrom {
    /// The step to start again from.
    pub step: String,
    /// Re-run first the upstream steps whose results no longer hold.
    pub with_upstream: bool,
}

/// `runbook resume` and `runbook retry --from`.
#[expect(
    clippy::too_many_arguments,
    reason = "one argument per command-line option"
)]
pub fn resume(
    out: Output,
    dir: Option<PathBuf>,
    run_id: &str,
    decisions: BTreeMap<String, Decision>,
    retry: Option<RetryFrom>,
    allow_changed: bool,
    params: &ParamArgs,
    run: &RunArgs,
) -> u8 {
    let store = match open_store(dir) {
        Ok(s) => s,
        Err(c) => return c,
    };
    let record = match find_run(store.as_ref(), run_id) {
        Ok(r) => r,
        Err(c) => return c,
    };
    let with_upstream = retry.as_ref().is_some_and(|r| r.with_upstream);
    let from_step = retry.map(|r| r.step);
    if record.status == crate::state::RunStatus::Succeeded && from_step.is_none() {
        eprintln!(
            "error: run {} succeeded: there is nothing to resume\n  help: `runbook retry {} --from STEP` runs a step and its dependants again",
            record.id, record.id
        );
        return exit::STATE;
    }
    // A drill scenario's run is the scenario composed again from its drill file.
    if crate::drill::compose::scenario_ref(&record.file).is_some() {
        let events = match store.events(&record.id) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("error: {}", chain(&e));
                return exit::STATE;
            }
        };
        return crate::cli_drill::resume(
            out,
            &store,
            record,
            decisions,
            from_step,
            allow_changed,
            run,
            events,
        );
    }
    // Params come from the run; secret params were never stored and are given again with -p.
    let mut cli: Vec<(String, String)> = record
        .params
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(_, v)| v.as_str() != Some("***"))
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    cli.extend(params.params.iter().cloned());
    let merged = ParamArgs {
        params: cli,
        params_file: params.params_file.clone(),
    };
    let (compiled, values) =
        match crate::cli::load(out, std::path::Path::new(&record.file), &merged) {
            Ok(x) => x,
            Err(c) => return c,
        };
    let changed = compiled.hash != record.runbook_hash;
    if changed && !allow_changed {
        eprintln!(
            "error: refusing to resume run {}: {} changed since the run started (sha256 {} then, {} now)\n  help: review the change; `--allow-changed` resumes anyway and records that in the audit log",
            record.id,
            record.file,
            &record.runbook_hash[..12.min(record.runbook_hash.len())],
            &compiled.hash[..12]
        );
        return exit::STATE;
    }
    if let Some(step) = &from_step
        && !compiled.index_by_id.contains_key(step)
    {
        eprintln!("error: run {} has no step `{step}`", record.id);
        return exit::INVALID;
    }
    let events = match store.events(&record.id) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            return exit::STATE;
        }
    };
    for step in decisions.keys() {
        if !crate::exec::names_a_step(&compiled, &events, step) {
            eprintln!(
                "error: --rerun/--skip names `{step}`, which is not a step of {} (nor a step of a runbook it called in this run)",
                record.file
            );
            return exit::INVALID;
        }
    }
    if let Some(step) = &from_step {
        match crate::exec::retry_plan(&compiled, &events, &record.id, step, with_upstream) {
            Ok(plan) => eprint!("{}", plan.describe(&record.id, step)),
            Err(e) => {
                eprintln!("error: {e}");
                return match e {
                    crate::exec::RetryError::FinallyStep(_) => exit::INVALID,
                    crate::exec::RetryError::Upstream { .. } => exit::STATE,
                };
            }
        }
    }
    let from = ResumeFrom {
        events,
        decisions,
        from_step,
        with_upstream,
        changed,
    };
    crate::cli::launch(&compiled, &values, run, Some(store), Some((record, from)))
}

fn fmt_ms(ms: i64) -> String {
    crate::duration::format(Duration::from_millis(u64::try_from(ms.max(0)).unwrap_or(0)))
}

/// `runbook runs`.
pub fn runs(dir: Option<PathBuf>, limit: usize) -> u8 {
    let store = match open_store(dir) {
        Ok(s) => s,
        Err(c) => return c,
    };
    let runs = match store.runs(limit) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            return exit::STATE;
        }
    };
    outln!(
        "{:<22} {:<24} {:<12} {:<24} {:>9}  user",
        "run",
        "runbook",
        "status",
        "started",
        "duration"
    );
    let host = crate::exec::current_host();
    let mut gone = Vec::new();
    for r in runs {
        let duration = r
            .finished_at_ms
            .map_or_else(|| "-".to_owned(), |f| fmt_ms(f - r.started_at_ms));
        // A crashed engine never wrote its end: `running` would send the operator waiting. Only a
        // process of this host can be checked.
        let status = if r.status == crate::state::RunStatus::Running
            && r.host == host
            && !crate::exec::pid_alive(r.pid)
        {
            gone.push((r.id.clone(), r.pid));
            "running (process gone)"
        } else {
            r.status.as_str()
        };
        outln!(
            "{:<22} {:<24} {:<12} {:<24} {:>9}  {}@{}",
            r.id,
            crate::terminal::escape(&r.runbook),
            status,
            crate::clock::rfc3339(r.started_at_ms),
            duration,
            r.user,
            r.host
        );
    }
    for (id, pid) in gone {
        eprintln!(
            "hint: the process of run {id} (pid {pid}) is gone: `runbook resume {id}` continues \
             it where it stopped"
        );
    }
    exit::SUCCESS
}

/// `runbook show`.
pub fn show(dir: Option<PathBuf>, run_id: &str) -> u8 {
    let store = match open_store(dir) {
        Ok(s) => s,
        Err(c) => return c,
    };
    let r = match find_run(store.as_ref(), run_id) {
        Ok(r) => r,
        Err(c) => return c,
    };
    let events = match store.events(&r.id) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            return exit::STATE;
        }
    };
    outln!(
        "run {}  {}  ({})",
        r.id,
        crate::terminal::escape(&r.runbook),
        r.status.as_str()
    );
    outln!(
        "file:    {} (sha256 {})",
        r.file,
        &r.runbook_hash[..12.min(r.runbook_hash.len())]
    );
    outln!("by:      {}@{} (pid {})", r.user, r.host, r.pid);
    outln!("started: {}", crate::clock::rfc3339(r.started_at_ms));
    if let Some(f) = r.finished_at_ms {
        outln!(
            "ended:   {} ({})",
            crate::clock::rfc3339(f),
            fmt_ms(f - r.started_at_ms)
        );
    }
    outln!(
        "params:  {}",
        crate::terminal::escape_json(&r.params.to_string())
    );
    let undone: Vec<&str> = events
        .iter()
        .filter(|e| e.kind == "compensated" && e.data["ok"] != true)
        .filter_map(|e| e.step.as_deref())
        .collect();
    if !undone.is_empty() {
        outln!(
            "not undone: {} (compensation failed; still in effect)",
            crate::terminal::escape(&undone.join(", "))
        );
    }
    outln!();
    for e in &events {
        let d = &e.data;
        let step = e.step.as_deref().unwrap_or("-");
        let line = match e.kind.as_str() {
            "step_started" => match d["command"].as_str() {
                Some(c) => format!("started attempt {} — $ {c}", d["attempt"]),
                None => format!("started attempt {}", d["attempt"]),
            },
            "command" => format!("$ {}", d["command"].as_str().unwrap_or("")),
            "check" => format!(
                "{} #{} poll {}: {} — {}",
                d["phase"].as_str().unwrap_or(""),
                d["index"].as_u64().unwrap_or(0) + 1,
                d["poll"],
                if d["passed"] == true { "pass" } else { "fail" },
                d["detail"].as_str().unwrap_or("")
            ),
            "retry" => format!(
                "attempt {} failed ({}); retry in {}ms",
                d["attempt"],
                d["error"].as_str().unwrap_or(""),
                d["delay_ms"]
            ),
            "step_succeeded" => format!(
                "✓ succeeded in {}ms after {} attempt(s): {}",
                d["duration_ms"],
                d["attempts"],
                d["summary"].as_str().unwrap_or("")
            ),
            "step_failed" => format!("✗ failed: {}", d["error"].as_str().unwrap_or("")),
            "step_aborted" => format!("✗ aborted: {}", d["reason"].as_str().unwrap_or("")),
            "step_skipped" => format!("skipped: {}", d["reason"].as_str().unwrap_or("")),
            "approval" => format!(
                "{} by {} ({})",
                d["decision"].as_str().unwrap_or(""),
                d["approver"].as_str().unwrap_or(""),
                d["via"].as_str().unwrap_or("")
            ),
            "approval_waiting" => format!(
                "waiting for approval: {}",
                d["message"].as_str().unwrap_or("")
            ),
            "compensated" => format!(
                "compensation {}: {}",
                if d["ok"] == true { "ok" } else { "FAILED" },
                d["detail"].as_str().unwrap_or("")
            ),
            "rollback_started" => format!("rollback of {}", d["steps"]),
            "resumed" => format!("resumed; decisions {}", d["decisions"]),
            "run_started" => "run started".to_owned(),
            "run_finished" => format!(
                "run {} (exit {})",
                d["status"].as_str().unwrap_or(""),
                d["exit_code"]
            ),
            other => other.to_owned(),
        };
        let (step, line) = (
            crate::terminal::escape(step),
            crate::terminal::escape(&line),
        );
        outln!("{}  {step:<20} {line}", crate::clock::rfc3339(e.at_ms));
    }
    exit::SUCCESS
}

/// `runbook logs`.
pub fn logs(dir: Option<PathBuf>, run_id: &str, step: Option<&str>) -> u8 {
    let store = match open_store(dir) {
        Ok(s) => s,
        Err(c) => return c,
    };
    let r = match find_run(store.as_ref(), run_id) {
        Ok(r) => r,
        Err(c) => return c,
    };
    // A misspelt step would print nothing, which reads as "the step printed nothing".
    if let Some(wanted) = step {
        let events = match store.events(&r.id) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("error: {}", chain(&e));
                return exit::STATE;
            }
        };
        let mut steps: Vec<&str> = Vec::new();
        for s in events.iter().filter_map(|e| e.step.as_deref()) {
            if !steps.contains(&s) {
                steps.push(s);
            }
        }
        if !steps.contains(&wanted) {
            eprintln!(
                "error: run {} has no step `{}` in its journal (steps that ran: {}); \
                 check the spelling, `runbook show {}` lists them",
                r.id,
                crate::terminal::escape(wanted),
                crate::terminal::escape(&steps.join(", ")),
                r.id
            );
            return exit::INVALID;
        }
    }
    match store.logs(&r.id, step) {
        Ok(lines) => {
            for l in lines {
                let mark = if l.stream == "stderr" { "┃" } else { "│" };
                let esc = crate::terminal::escape;
                outln!("{} {mark} {}", esc(&l.step), esc(&l.text));
            }
            exit::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            exit::STATE
        }
    }
}

/// `runbook approve` / `runbook deny`: the decision is recorded under the operating-system
/// account running this command (never `$USER`); `--as` only adds a display name next to it.
pub fn decide(dir: Option<PathBuf>, a: &ApprovalArgs, approve: bool) -> u8 {
    let store = match open_store(dir) {
        Ok(s) => s,
        Err(c) => return c,
    };
    let r = match find_run(store.as_ref(), &a.run_id) {
        Ok(r) => r,
        Err(c) => return c,
    };
    if let Err(e) = crate::exec::approval::check_waiting(store.as_ref(), &r, &a.step) {
        eprintln!(
            "error: {}\n  help: `runbook show {}` shows what the run is doing",
            chain(&e),
            r.id
        );
        return exit::STATE;
    }
    let approver = crate::exec::current_user();
    let host = crate::exec::current_host();
    // A display name equal to the account adds nothing.
    let display = a.approver.clone().filter(|d| *d != approver);
    let decision = if approve { "approved" } else { "denied" };
    let input = crate::state::ApprovalInput {
        run_id: r.id.clone(),
        step: a.step.clone(),
        approver: approver.clone(),
        decision: approve,
        via: "cli".to_owned(),
        comment: a.comment.clone(),
    };
    let audit = crate::state::AuditInput {
        user: approver.clone(),
        host,
        run_id: Some(r.id.clone()),
        step: Some(a.step.clone()),
        action: "approval".to_owned(),
        target: Some(approver.clone()),
        outcome: decision.to_owned(),
        detail: serde_json::json!({ "via": "cli", "comment": a.comment, "display_name": display }),
    };
    match store.add_approval(&input, &audit) {
        Ok(()) => {
            let shown = display
                .as_ref()
                .map_or_else(String::new, |d| format!(" (display name {d})"));
            outln!(
                "{decision} step `{}` of run {} as {approver}{shown}",
                a.step,
                r.id
            );
            exit::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            exit::STATE
        }
    }
}

/// `runbook audit verify|export|keygen|anchor`.
pub fn audit(dir: Option<PathBuf>, cmd: &AuditCommand) -> u8 {
    if let AuditCommand::Keygen { out } = cmd {
        return keygen(dir, out);
    }
    let store = match SqliteStore::open(&StateDir::resolve(dir)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            return exit::STATE;
        }
    };
    match cmd {
        AuditCommand::Verify {
            public_key,
            expect_head,
        } => verify(&store, public_key, expect_head.as_deref()),
        AuditCommand::Anchor => anchor(&store),
        AuditCommand::Keygen { .. } => exit::INTERNAL,
        AuditCommand::Export { run, since } => {
            let since_ms = match since.as_deref().map(parse_since).transpose() {
                Ok(s) => s,
                Err(why) => {
                    eprintln!("error: {why}");
                    return exit::INVALID;
                }
            };
            match store.audit_entries(run.as_deref(), since_ms) {
                Ok(entries) => {
                    for e in entries {
                        outln!("{}", serde_json::to_string(&e).unwrap_or_default());
                    }
                    exit::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {}", chain(&e));
                    exit::STATE
                }
            }
        }
    }
}

/// `runbook audit keygen --out FILE`.
fn keygen(dir: Option<PathBuf>, out: &std::path::Path) -> u8 {
    let state = StateDir::resolve(dir);
    // The key must not sit with the log it protects (the store refuses such a key anyway).
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| std::path::Path::new("."));
    if let (Ok(p), Ok(s)) = (parent.canonicalize(), state.canonicalize())
        && p.starts_with(&s)
    {
        eprintln!(
            "error: refusing to write the audit key into the state directory {}: whoever can rewrite the log could then also sign it\n  help: choose a directory only the engine's user can read, e.g. --out /etc/runbook/audit.key",
            s.display()
        );
        return exit::INVALID;
    }
    match crate::state::signing::generate_key(out) {
        Ok(k) => {
            out!("{}", k.key.to_pem());
            eprintln!(
                "wrote the private audit key {} (mode 0600) and its public key {} (key id {})",
                k.private.display(),
                k.public.display(),
                k.key.key_id()
            );
            eprintln!(
                "  next: export RUNBOOK_AUDIT_KEY={} for the engine; `runbook audit anchor` signs the current head; `runbook audit verify --public-key {}` checks it",
                k.private.display(),
                k.public.display()
            );
            exit::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            exit::INVALID
        }
    }
}

/// Report a chain that failed verification (exit 7).
fn chain_failed(report: &crate::state::VerifyReport) -> Option<u8> {
    if let Some(bad) = &report.first_bad {
        eprintln!(
            "error: audit log verification failed at entry #{}: {}",
            bad.seq, bad.reason
        );
        eprintln!(
            "  {} entries checked; entries from #{} on cannot be trusted",
            report.entries, bad.seq
        );
        return Some(exit::TAMPERED);
    }
    if let Some(bad) = &report.bad_approval {
        eprintln!(
            "error: audit log verification failed at approval #{} (run {}, step `{}`): {}",
            bad.id, bad.run_id, bad.step, bad.reason
        );
        eprintln!(
            "  such a decision never counts: the engine only accepts approvals backed by their audit entry"
        );
        return Some(exit::TAMPERED);
    }
    None
}

/// `runbook audit verify [--public-key F]... [--expect-head H]`.
fn verify(store: &SqliteStore, public_keys: &[PathBuf], expect_head: Option<&str>) -> u8 {
    use crate::state::signing;
    let expected = match expect_head
        .map(str::parse::<signing::ExpectedHead>)
        .transpose()
    {
        Ok(e) => e,
        Err(why) => {
            eprintln!("error: {why}");
            return exit::INVALID;
        }
    };
    let mut keys = Vec::new();
    for path in public_keys {
        match crate::state::AuditPublicKey::load(path) {
            Ok(k) => keys.push(k),
            Err(e) => {
                eprintln!("error: {}", chain(&e));
                return exit::INVALID;
            }
        }
    }
    // The engine's own key, when configured, vouches as well as its public half.
    let own_key = keys.is_empty() && store.signer().is_some();
    if let (true, Some(signer)) = (own_key, store.signer()) {
        keys.push(signer.public_key());
    }
    let seqs: Vec<i64> = expected.iter().map(|e| e.seq).collect();
    let report = match store.audit_verify_at(&seqs) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            return exit::STATE;
        }
    };
    if let Some(code) = chain_failed(&report) {
        return code;
    }
    let authenticity = (!keys.is_empty()).then(|| signing::authenticate(&report, &keys));
    if let Some(problem) = authenticity.as_ref().and_then(|a| a.problem.as_deref()) {
        eprintln!("error: audit log authentication failed: {problem}");
        eprintln!(
            "  {} entries checked; the hash chain is consistent, but it is not the log that was signed",
            report.entries
        );
        return exit::TAMPERED;
    }
    if let Some(expected) = &expected
        && let Err(why) = signing::check_expected_head(&report, expected, &keys)
    {
        eprintln!("error: audit log verification failed against the expected head: {why}");
        return exit::TAMPERED;
    }
    outln!(
        "audit log intact: {} entries verified, {} approval decision{} bound to them",
        report.entries,
        report.approvals,
        if report.approvals == 1 { "" } else { "s" }
    );
    if let Some(a) = &authenticity {
        let ids: Vec<&str> = keys
            .iter()
            .map(crate::state::AuditPublicKey::key_id)
            .collect();
        if let Some(last) = &a.last {
            outln!(
                "authentic: signed up to entry #{} ({} valid checkpoint{}, key {}{}); unsigned tail: {} entr{}",
                last.seq,
                a.valid,
                if a.valid == 1 { "" } else { "s" },
                ids.join(", "),
                if own_key {
                    ", the configured audit key"
                } else {
                    ""
                },
                a.unsigned_tail,
                if a.unsigned_tail == 1 { "y" } else { "ies" }
            );
        } else {
            outln!("authentic: the log is empty");
        }
        if a.unsigned_tail > 0 {
            outln!(
                "note: the unsigned tail is signed at the next run end (or `runbook audit anchor`); until then only an anchor (--expect-head) protects it"
            );
        }
    } else {
        outln!(
            "note: this proves integrity, not authenticity: anyone who can write the state database can rewrite entries and recompute the whole chain; pass --public-key (see `runbook audit keygen`) to prove the log is the one that was signed"
        );
        if !report.checkpoints.is_empty() {
            outln!(
                "note: {} signed checkpoint{} stored, not checked without --public-key",
                report.checkpoints.len(),
                if report.checkpoints.len() == 1 {
                    " is"
                } else {
                    "s are"
                }
            );
        }
    }
    if let Some(e) = &expected {
        outln!(
            "expected head found: entry #{} has hash {}",
            e.seq,
            &e.hash[..16.min(e.hash.len())]
        );
    }
    exit::SUCCESS
}

/// `runbook audit anchor`.
fn anchor(store: &SqliteStore) -> u8 {
    let report = match store.audit_verify() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            return exit::STATE;
        }
    };
    // Never anchor (or sign) a log that does not verify: the witness would vouch for tampering.
    if let Some(code) = chain_failed(&report) {
        eprintln!("  refusing to anchor a log that does not verify");
        return code;
    }
    let checkpoint = if store.signer().is_some() {
        match store.checkpoint_now() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {}", chain(&e));
                return exit::STATE;
            }
        }
    } else {
        let Some(c) = store.latest_checkpoint(&report) else {
            eprintln!(
                "error: the audit log has no signed checkpoint yet\n  help: configure an audit key (--audit-key FILE or RUNBOOK_AUDIT_KEY; `runbook audit keygen` makes one) and run `runbook audit anchor` again"
            );
            return exit::STATE;
        };
        c
    };
    outln!("{}", serde_json::to_string(&checkpoint).unwrap_or_default());
    eprintln!(
        "signed head: entry #{} of {} (signed {}); keep this line off this machine and check it later with `runbook audit verify --expect-head '<line>'`",
        checkpoint.seq,
        report.entries,
        crate::clock::rfc3339(checkpoint.at_ms)
    );
    exit::SUCCESS
}

/// `--since`: milliseconds since the epoch, or a UTC date `YYYY-MM-DD`.
fn parse_since(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let parts: Vec<&str> = s.split('-').collect();
    if let [y, m, d] = parts.as_slice()
        && let (Ok(y), Ok(m), Ok(d)) = (y.parse::<i64>(), m.parse::<u32>(), d.parse::<u32>())
        && (0..=9999).contains(&y)
        && (1..=12).contains(&m)
        && (1..=31).contains(&d)
    {
        return Ok(crate::clock::days_from_civil(y, m, d) * 86_400_000);
    }
    Err(format!(
        "--since {s:?} is neither milliseconds since the epoch nor a date YYYY-MM-DD"
    ))
}

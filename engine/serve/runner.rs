//! Runs started by `runbook serve`: each executes on its own OS thread through
//! [`crate::exec::execute`] (which builds and blocks on its own runtime), journaled in the state
//! store; a [`Tracked`] store tells the webhook handler the run's id (or whose lock stopped it)
//! as soon as the engine knows it, and holds the per-alert lock that makes duplicates visible.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::state::{
    ApprovalInput, ApprovalRecord, AuditEntry, AuditInput, EventInput, EventRecord, LockGrant,
    LockHolder, LogRecord, NewRun, RunRecord, RunStatus, StateError, Store, VerifyReport,
};

/// What the handler learns about a run it asked for.
#[derive(Debug)]
pub enum Start {
    /// The run exists in the journal under this id.
    Started(String),
    /// Another run holds the alert's or the runbook's lock (that run's id).
    Busy(String),
    /// The run could not start (secrets, state, invalid params).
    Failed(String),
}

/// The record's `user` of runs this server starts: `serve:<server id> (trigger <name>)`, which
/// is how a restarted server finds the runs it owned.
pub fn owner(server_id: &str, trigger: &str) -> String {
    format!("serve:{server_id} (trigger {trigger})")
}

/// The trigger named in an owner string of this server, if it is one.
pub fn owned_by<'a>(user: &'a str, server_id: &str) -> Option<&'a str> {
    user.strip_prefix("serve:")?
        .strip_prefix(server_id)?
        .strip_prefix(" (trigger ")?
        .strip_suffix(')')
}

/// A [`Store`] that reports the run's creation, takes an extra per-alert lock together with the
/// run's own lock, and records the run as owned by this server. Everything else is delegated.
pub struct Tracked {
    inner: Arc<dyn Store>,
    owner: String,
    alert_lock: Option<String>,
    tell: Mutex<Option<oneshot::Sender<Start>>>,
    /// The first lock the engine takes is the run's own; child runs (`call`) take others.
    first_lock: Mutex<Option<String>>,
    /// Called once the run exists (metrics).
    on_started: Box<dyn Fn(&str) + Send + Sync>,
    /// The run's id once it exists in the journal.
    created: Mutex<Option<String>>,
}

impl Tracked {
    /// Wrap `inner` for one run.
    pub fn new(
        inner: Arc<dyn Store>,
        owner: String,
        alert_lock: Option<String>,
        tell: oneshot::Sender<Start>,
        on_started: Box<dyn Fn(&str) + Send + Sync>,
    ) -> Self {
        Self {
            inner,
            owner,
            alert_lock,
            tell: Mutex::new(Some(tell)),
            first_lock: Mutex::new(None),
            on_started,
            created: Mutex::new(None),
        }
    }

    /// Say what happened, once; true when this was the first word.
    pub fn tell(&self, what: Start) -> bool {
        let mut t = match self.tell.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let Some(tx) = t.take() else {
            return false;
        };
        if let Start::Started(id) = &what {
            match self.created.lock() {
                Ok(mut g) => *g = Some(id.clone()),
                Err(p) => *p.into_inner() = Some(id.clone()),
            }
            (self.on_started)(id);
        }
        let _ = tx.send(what);
        true
    }

    /// The run's id, once it was created (or resumed) in the journal.
    pub fn run_id(&self) -> Option<String> {
        match self.created.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

impl Store for Tracked {
    fn create_run(&self, run: &NewRun) -> Result<RunRecord, StateError> {
        let top = run.parent_run.is_none();
        let mut run = run.clone();
        if top {
            run.user.clone_from(&self.owner);
        }
        let r = self.inner.create_run(&run);
        if top && let Ok(rec) = &r {
            self.tell(Start::Started(rec.id.clone()));
        }
        r
    }
    fn record(
        &self,
        run_id: &str,
        event: &EventInput,
        audit: Option<&AuditInput>,
    ) -> Result<i64, StateError> {
        self.inner.record(run_id, event, audit)
    }
    fn finish_run(
        &self,
        run_id: &str,
        status: RunStatus,
        audit: &AuditInput,
    ) -> Result<(), StateError> {
        self.inner.finish_run(run_id, status, audit)
    }
    fn set_status(&self, run_id: &str, status: RunStatus) -> Result<(), StateError> {
        let r = self.inner.set_status(run_id, status);
        if status == RunStatus::Running && r.is_ok() {
            // A resumed run: it exists already.
            self.tell(Start::Started(run_id.to_owned()));
        }
        r
    }
    fn run(&self, run_id: &str) -> Result<Option<RunRecord>, StateError> {
        self.inner.run(run_id)
    }
    fn runs(&self, limit: usize) -> Result<Vec<RunRecord>, StateError> {
        self.inner.runs(limit)
    }
    fn events(&self, run_id: &str) -> Result<Vec<EventRecord>, StateError> {
        self.inner.events(run_id)
    }
    fn append_log(
        &self,
        run_id: &str,
        step: &str,
        attempt: u32,
        stream: &str,
        text: &str,
    ) -> Result<(), StateError> {
        self.inner.append_log(run_id, step, attempt, stream, text)
    }
    fn logs(&self, run_id: &str, step: Option<&str>) -> Result<Vec<LogRecord>, StateError> {
        self.inner.logs(run_id, step)
    }
    fn add_approval(&self, a: &ApprovalInput, audit: &AuditInput) -> Result<(), StateError> {
        self.inner.add_approval(a, audit)
    }
    fn approvals(&self, run_id: &str, step: &str) -> Result<Vec<ApprovalRecord>, StateError> {
        self.inner.approvals(run_id, step)
    }
    fn acquire_lock(&self, name: &str, holder: &LockHolder) -> Result<LockGrant, StateError> {
        let first = {
            let mut f = match self.first_lock.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            match f.as_ref() {
                None => {
                    *f = Some(name.to_owned());
                    true
                }
                Some(n) => n == name,
            }
        };
        if first && let Some(alert) = &self.alert_lock {
            self.inner.acquire_lock(alert, holder)?;
            return match self.inner.acquire_lock(name, holder) {
                Ok(g) => Ok(g),
                Err(e) => {
                    let _ = self.inner.release_lock(alert, &holder.run_id);
                    Err(e)
                }
            };
        }
        self.inner.acquire_lock(name, holder)
    }
    fn release_lock(&self, name: &str, run_id: &str) -> Result<(), StateError> {
        let first = self
            .first_lock
            .lock()
            .is_ok_and(|f| f.as_deref() == Some(name));
        if first && let Some(alert) = &self.alert_lock {
            let _ = self.inner.release_lock(alert, run_id);
        }
        self.inner.release_lock(name, run_id)
    }
    fn break_lock(&self, name: &str, audit: &AuditInput) -> Result<Option<LockHolder>, StateError> {
        self.inner.break_lock(name, audit)
    }
    // `take_over_lock` keeps the trait's composition, so the takeover goes through
    // `acquire_lock` above (and takes the alert lock too).
    fn break_lock_if_held_by(
        &self,
        name: &str,
        dead: &LockHolder,
        audit: &AuditInput,
    ) -> Result<(), StateError> {
        self.inner.break_lock_if_held_by(name, dead, audit)
    }
    fn audit_append(&self, audit: &AuditInput) -> Result<i64, StateError> {
        self.inner.audit_append(audit)
    }
    fn audit_entries(
        &self,
        run_id: Option<&str>,
        since_ms: Option<i64>,
    ) -> Result<Vec<AuditEntry>, StateError> {
        self.inner.audit_entries(run_id, since_ms)
    }
    fn audit_verify(&self) -> Result<VerifyReport, StateError> {
        self.inner.audit_verify()
    }
}

/// Step durations (seconds) of a finished run, from its journal.
pub fn step_durations(events: &[EventRecord]) -> Vec<f64> {
    events
        .iter()
        .filter(|e| e.kind == "step_succeeded" || e.kind == "step_failed")
        .filter_map(|e| {
            e.data
                .get("duration_ms")
                .and_then(serde_json::Value::as_u64)
        })
        .map(|ms| Duration::from_millis(ms).as_secs_f64())
        .collect()
}

/// Params of a run as the record keeps them, for a resume (secret ones are `***` and cannot be
/// resumed without the operator).
pub fn record_params(r: &RunRecord) -> Vec<(String, String)> {
    r.params
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
        .unwrap_or_default()
}

/// The runs this server owns that a shutdown (cancelled) or a crash (running, process gone)
/// stopped on this host, oldest first, each with the name of its trigger.
pub fn to_resume(runs: Vec<RunRecord>, server_id: &str, host: &str) -> Vec<(RunRecord, String)> {
    let mut out: BTreeMap<String, (RunRecord, String)> = BTreeMap::new();
    for r in runs {
        let Some(trigger) = owned_by(&r.user, server_id).map(str::to_owned) else {
            continue;
        };
        let stopped = r.status == RunStatus::Cancelled
            || (r.status == RunStatus::Running && !crate::exec::pid_alive(r.pid));
        if r.host == host && r.parent_run.is_none() && stopped {
            out.insert(r.id.clone(), (r, trigger));
        }
    }
    out.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_round_trips() {
        let o = owner("edge-1", "high-5xx");
        assert_eq!(owned_by(&o, "edge-1"), Some("high-5xx"));
        assert_eq!(owned_by(&o, "edge-2"), None);
        assert_eq!(owned_by("alice", "edge-1"), None);
    }

    fn record(id: &str, user: &str, status: RunStatus, pid: u32) -> RunRecord {
        RunRecord {
            id: id.to_owned(),
            runbook: "hold".to_owned(),
            file: "hold.yaml".to_owned(),
            runbook_hash: String::new(),
            params: serde_json::json!({ "key": "k", "token": "***", "n": 3 }),
            user: user.to_owned(),
            host: "h".to_owned(),
            pid,
            parent_run: None,
            status,
            started_at_ms: 0,
            finished_at_ms: None,
        }
    }

    #[test]
    fn resumes_only_its_own_stopped_runs() {
        let mine = owner("edge-1", "t");
        let gone = u32::MAX - 7;
        let runs = vec![
            record("3", &mine, RunStatus::Cancelled, std::process::id()),
            record("1", &mine, RunStatus::Running, gone),
            record("2", &mine, RunStatus::Running, std::process::id()),
            record("4", &mine, RunStatus::Failed, gone),
            record("5", &owner("edge-2", "t"), RunStatus::Cancelled, gone),
            record("6", "alice", RunStatus::Cancelled, gone),
        ];
        let picked: Vec<String> = to_resume(runs, "edge-1", "h")
            .into_iter()
            .map(|(r, t)| format!("{}:{t}", r.id))
            .collect();
        assert_eq!(picked, ["1:t", "3:t"]);
        assert!(
            to_resume(
                vec![record("1", &mine, RunStatus::Cancelled, gone)],
                "edge-1",
                "other"
            )
            .is_empty()
        );
    }

    #[test]
    fn record_params_leave_out_masked_secrets() {
        let mut p = record_params(&record("1", "u", RunStatus::Cancelled, 1));
        p.sort();
        assert_eq!(
            p,
            [
                ("key".to_owned(), "k".to_owned()),
                ("n".to_owned(), "3".to_owned())
            ]
        );
    }
}

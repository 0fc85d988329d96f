//! The timeline of a run rebuilt from its journal: one entry per step (and per compensation,
//! and for runbook-level checks), with start, end, attempts, waits and outcome, plus the
//! critical path — the chain of steps that decided when the run ended.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::state::EventRecord;

/// What a timeline entry stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A step of the runbook (or of a runbook it called: `caller/child`).
    Step,
    /// The compensation of a step during a rollback.
    Compensation,
    /// Runbook-level checks (`preflight`) that are not a step.
    Checks,
    /// The time no engine ran the run: from its last record before a stop (crash, Ctrl-C, a
    /// finished run retried) to its resume.
    Gap,
}

/// How an entry ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The step did its work and its gates passed.
    Succeeded,
    /// The step failed.
    Failed,
    /// A guard (`when`) or an earlier failure skipped it.
    Skipped,
    /// A `require` failed or an approval was denied: the step never acted.
    Aborted,
    /// Every check passed (runbook-level checks).
    Passed,
    /// The compensation worked.
    Compensated,
    /// The compensation failed: the step's effect is still in place.
    CompensationFailed,
    /// The journal has no end for it (the run crashed or is still running).
    Unfinished,
    /// The run stopped while it ran (crash, Ctrl-C) and a resume went on from there: its span
    /// ends at its last record before the stop.
    Interrupted,
}

impl Outcome {
    /// Whether the outcome is a success for the reader (✅), or neutral (skipped).
    #[must_use]
    pub fn is_ok(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Passed | Self::Compensated | Self::Skipped | Self::Interrupted
        )
    }

    /// The displayed name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Aborted => "aborted",
            Self::Passed => "passed",
            Self::Compensated => "compensated",
            Self::CompensationFailed => "compensation failed",
            Self::Unfinished => "unfinished",
            Self::Interrupted => "interrupted",
        }
    }
}

/// The polls of one check of a step, summarised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Polls {
    /// `require`, `verify` or `preflight`.
    pub phase: String,
    /// The check's position in its list, from 1.
    pub index: u64,
    /// How many times it was evaluated.
    pub polls: u32,
    /// Whether its last evaluation passed.
    pub passed: bool,
    /// What the last evaluation saw (masked by the engine).
    pub detail: String,
}

/// One bar of the timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimelineEntry {
    /// The step id (`caller/child` for a called runbook's step, the step id for a compensation).
    pub step: String,
    /// Step, compensation or runbook-level checks.
    pub kind: EntryKind,
    /// The calling step, for a step of a called runbook.
    pub parent: Option<String>,
    /// When it started (ms since the Unix epoch).
    pub start_ms: i64,
    /// When it ended, if the journal says.
    pub end_ms: Option<i64>,
    /// `end - start` (0 when unfinished).
    pub duration_ms: u64,
    /// Attempts of the action.
    pub attempts: u32,
    /// Time spent in retry back-off between attempts.
    pub retry_wait_ms: u64,
    /// Whether the step asked for an approval.
    pub approval: bool,
    /// Time spent waiting for approvers.
    pub approval_wait_ms: u64,
    /// Time spent polling gates (`require`/`verify`) after their first evaluation.
    pub gate_wait_ms: u64,
    /// The checks evaluated, with their number of polls.
    pub polls: Vec<Polls>,
    /// How it ended.
    pub outcome: Outcome,
    /// The one-line summary, error or skip reason (masked by the engine).
    pub detail: String,
    /// Whether it is on the critical path.
    pub critical: bool,
    /// How many earlier entries of the same step the timeline has (a step run again by a
    /// resume or a retry gets an entry per run, each with its own span).
    pub rerun: u32,
    /// Journal position of its first event (orders entries that share a millisecond).
    #[serde(skip)]
    pub(crate) start_seq: i64,
    /// Journal position of its end event.
    #[serde(skip)]
    pub(crate) end_seq: Option<i64>,
}

impl TimelineEntry {
    fn new(step: &str, kind: EntryKind, at_ms: i64, seq: i64) -> Self {
        let parent = step.rsplit_once('/').map(|(p, _)| p.to_owned());
        Self {
            step: step.to_owned(),
            kind,
            parent,
            start_ms: at_ms,
            end_ms: None,
            duration_ms: 0,
            attempts: 0,
            retry_wait_ms: 0,
            approval: false,
            approval_wait_ms: 0,
            gate_wait_ms: 0,
            polls: Vec::new(),
            outcome: Outcome::Unfinished,
            detail: String::new(),
            critical: false,
            rerun: 0,
            start_seq: seq,
            end_seq: None,
        }
    }

    /// The entry as named in a report: `undo <step>` for a compensation, `<step> (2nd run)` for
    /// a step's second run (after a resume or a retry).
    #[must_use]
    pub fn label(&self) -> String {
        match self.kind {
            EntryKind::Compensation => format!("undo {}", self.step),
            EntryKind::Checks => format!("{} checks", self.step),
            EntryKind::Step => format!("{}{}", self.step, self.rerun_suffix()),
            EntryKind::Gap => "no engine running".to_owned(),
        }
    }

    /// ` (2nd run)`, ` (3rd run)`… for a step's later runs; empty for its first.
    #[must_use]
    pub fn rerun_suffix(&self) -> String {
        let n = self.rerun + 1;
        let th = match (n % 10, n % 100) {
            (_, 11..=13) => "th",
            (1, _) => "st",
            (2, _) => "nd",
            (3, _) => "rd",
            _ => "th",
        };
        if self.rerun == 0 {
            String::new()
        } else {
            format!(" ({n}{th} run)")
        }
    }

    /// Total time spent waiting (approvals, back-off, gate polling).
    #[must_use]
    pub fn waiting_ms(&self) -> u64 {
        self.retry_wait_ms + self.approval_wait_ms + self.gate_wait_ms
    }

    fn finish(&mut self, at_ms: i64, seq: i64, outcome: Outcome, detail: String) {
        self.end_ms = Some(at_ms);
        self.end_seq = Some(seq);
        self.outcome = outcome;
        self.detail = detail;
    }
}

/// The dependencies of the runbook's steps, when the runbook could be compiled as it was run.
#[derive(Debug, Clone, Default)]
pub struct Dag {
    /// Step id → ids of the steps it `needs`.
    pub needs: HashMap<String, Vec<String>>,
    /// Ids of the main (not `finally`) steps: a main step without needs starts the chain.
    pub main: HashSet<String>,
}

fn text(v: &serde_json::Value, key: &str) -> String {
    v.get(key)
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn uint(v: &serde_json::Value, key: &str) -> u64 {
    v.get(key).and_then(serde_json::Value::as_u64).unwrap_or(0)
}

/// The suffix of the pseudo-step under which a step's compensation runs its action.
const COMPENSATE: &str = ":compensate";

/// Per-check first and last poll, to measure polling time.
type PollSpan = BTreeMap<(String, u64), (i64, i64)>;

/// Rebuild the timeline of a run from its journal, in order of start.
#[must_use]
pub fn build(events: &[EventRecord]) -> Vec<TimelineEntry> {
    let mut entries: Vec<TimelineEntry> = Vec::new();
    let mut by_step: HashMap<String, usize> = HashMap::new();
    let mut spans: HashMap<usize, PollSpan> = HashMap::new();
    let mut approval_since: HashMap<usize, i64> = HashMap::new();
    let mut rollback_cursor: Option<i64> = None;
    let mut compensating: HashMap<String, i64> = HashMap::new();
    // The last record of each entry, to end what a stop interrupted.
    let mut last_of: HashMap<usize, (i64, i64)> = HashMap::new();
    // How many entries each step has had: a resume starts new ones.
    let mut runs: HashMap<String, u32> = HashMap::new();
    let (splits, prelude) = sessions(events);

    for (k, e) in events.iter().enumerate() {
        let d = &e.data;
        if prelude.contains(&k) {
            continue;
        }
        match e.kind.as_str() {
            "resumed" => {
                let interrupted = resumed(&mut entries, &mut by_step, &last_of, e);
                let (stopped, restarted) = splits.get(&k).copied().unwrap_or((e.at_ms, e.at_ms));
                if stopped < restarted {
                    let mut gap = TimelineEntry::new("", EntryKind::Gap, stopped, e.seq);
                    gap.parent = None;
                    gap.finish(
                        restarted,
                        e.seq,
                        Outcome::Interrupted,
                        format!(
                            "the run stopped{}; a resume (or retry) went on from there",
                            if interrupted.is_empty() {
                                String::new()
                            } else {
                                format!(" while {} ran", interrupted.join(", "))
                            }
                        ),
                    );
                    entries.push(gap);
                }
            }
            "rollback_started" => rollback_cursor = Some(e.at_ms),
            "compensated" => {
                let step = text(d, "step");
                let start = compensating
                    .remove(&step)
                    .or(rollback_cursor)
                    .unwrap_or(e.at_ms);
                let mut entry = TimelineEntry::new(&step, EntryKind::Compensation, start, e.seq);
                entry.parent = None;
                let ok = d.get("ok").and_then(serde_json::Value::as_bool) == Some(true);
                let outcome = if ok {
                    Outcome::Compensated
                } else {
                    Outcome::CompensationFailed
                };
                entry.finish(e.at_ms, e.seq, outcome, text(d, "detail"));
                entries.push(entry);
                rollback_cursor = Some(e.at_ms);
            }
            _ => {
                let Some(step) = e.step.as_deref() else {
                    continue;
                };
                // The compensation's own command: it starts the compensation of the step.
                if let Some(undone) = step.strip_suffix(COMPENSATE) {
                    compensating.entry(undone.to_owned()).or_insert(e.at_ms);
                    continue;
                }
                let idx = *by_step.entry(step.to_owned()).or_insert_with(|| {
                    let kind = if step == "preflight" && e.kind == "check" {
                        EntryKind::Checks
                    } else {
                        EntryKind::Step
                    };
                    let mut entry = TimelineEntry::new(step, kind, e.at_ms, e.seq);
                    let n = runs.entry(step.to_owned()).or_insert(0);
                    entry.rerun = *n;
                    *n += 1;
                    entries.push(entry);
                    entries.len() - 1
                });
                last_of.insert(idx, (e.at_ms, e.seq));
                apply(&mut entries[idx], e, &mut spans, &mut approval_since, idx);
            }
        }
    }
    for (idx, span) in spans {
        entries[idx].gate_wait_ms = span
            .values()
            .map(|(first, last)| u64::try_from(last - first).unwrap_or(0))
            .sum();
    }
    for entry in &mut entries {
        if entry.kind == EntryKind::Checks {
            // Checks have no end event: they end with their last poll.
            let passed = entry.polls.iter().all(|p| p.passed);
            entry.outcome = if passed {
                Outcome::Passed
            } else {
                Outcome::Failed
            };
        }
        if let Some(end) = entry.end_ms {
            entry.duration_ms = u64::try_from(end - entry.start_ms).unwrap_or(0);
        }
    }
    entries.sort_by_key(|e| (e.start_ms, e.start_seq));
    entries
}

/// Where each resume starts, by the index of its `resumed` record: when the stopped run's last
/// record was written and when the resume's first one was (the gap in between), and the
/// resume's own checks before its `resumed` record (the in-flight steps' `verify` gates, read
/// once), which belong to no run of a step.
///
/// Those checks are the `command`/`check` records right before `resumed`; the stop is the
/// longest silence among them (after a Ctrl-C, the `run_finished` record ends the walk).
fn sessions(events: &[EventRecord]) -> (HashMap<usize, (i64, i64)>, HashSet<usize>) {
    let mut splits = HashMap::new();
    let mut prelude = HashSet::new();
    for (r, e) in events.iter().enumerate() {
        if e.kind != "resumed" || r == 0 {
            continue;
        }
        let mut first = r;
        while first > 1 && matches!(events[first - 1].kind.as_str(), "command" | "check") {
            first -= 1;
        }
        // The split is the longest silence between consecutive records in events[first-1..=r].
        let split = (first..=r)
            .max_by_key(|&k| (events[k].at_ms - events[k - 1].at_ms, k))
            .unwrap_or(r);
        splits.insert(r, (events[split - 1].at_ms, events[split].at_ms));
        prelude.extend(split..r);
    }
    (splits, prelude)
}

/// A resume: what the stop interrupted ends at its last record (`interrupted`, or as the resume
/// decided: verified or skipped), and every step's later records start a new entry. Returns the
/// steps it interrupted.
fn resumed(
    entries: &mut [TimelineEntry],
    by_step: &mut HashMap<String, usize>,
    last_of: &HashMap<usize, (i64, i64)>,
    e: &EventRecord,
) -> Vec<String> {
    let mut interrupted = Vec::new();
    let open: HashMap<String, usize> = std::mem::take(by_step);
    for &idx in open.values() {
        let entry = &mut entries[idx];
        if entry.kind != EntryKind::Step {
            continue;
        }
        // Killed by a cancellation: interrupted, not failed (a resume takes it up again).
        let cancelled = entry.outcome == Outcome::Failed
            && (entry.detail == "cancelled" || entry.detail.starts_with("cancelled: "));
        if cancelled {
            entry.outcome = Outcome::Interrupted;
            interrupted.push(entry.step.clone());
        } else if entry.end_ms.is_none() {
            let (at, seq) = last_of
                .get(&idx)
                .copied()
                .unwrap_or((entry.start_ms, entry.start_seq));
            entry.finish(
                at,
                seq,
                Outcome::Interrupted,
                "the run stopped while it ran".to_owned(),
            );
            interrupted.push(entry.step.clone());
        }
    }
    interrupted.sort();
    let decisions = e
        .data
        .get("decisions")
        .and_then(serde_json::Value::as_array)
        .cloned()
        .unwrap_or_default();
    for d in decisions {
        let Some(&idx) = open.get(&text(&d, "step")) else {
            continue;
        };
        let entry = &mut entries[idx];
        if entry.outcome != Outcome::Interrupted {
            continue;
        }
        match text(&d, "decision").as_str() {
            "done" => {
                entry.outcome = Outcome::Succeeded;
                entry.detail = text(&d, "reason");
            }
            "skip" => {
                entry.outcome = Outcome::Skipped;
                entry.detail = text(&d, "reason");
            }
            _ => {}
        }
    }
    interrupted
}

fn apply(
    entry: &mut TimelineEntry,
    e: &EventRecord,
    spans: &mut HashMap<usize, PollSpan>,
    approval_since: &mut HashMap<usize, i64>,
    idx: usize,
) {
    let d = &e.data;
    let attempt = u32::try_from(uint(d, "attempt")).unwrap_or(0);
    match e.kind.as_str() {
        "step_started" | "command" => entry.attempts = entry.attempts.max(attempt.max(1)),
        "retry" => entry.retry_wait_ms += uint(d, "delay_ms"),
        "check" => {
            let phase = text(d, "phase");
            let index = uint(d, "index") + 1;
            let passed = d.get("passed").and_then(serde_json::Value::as_bool) == Some(true);
            let span = spans
                .entry(idx)
                .or_default()
                .entry((phase.clone(), index))
                .or_insert((e.at_ms, e.at_ms));
            span.1 = e.at_ms;
            match entry
                .polls
                .iter_mut()
                .find(|p| p.phase == phase && p.index == index)
            {
                Some(p) => {
                    p.polls += 1;
                    p.passed = passed;
                    p.detail = text(d, "detail");
                }
                None => entry.polls.push(Polls {
                    phase,
                    index,
                    polls: 1,
                    passed,
                    detail: text(d, "detail"),
                }),
            }
            if entry.kind == EntryKind::Checks {
                entry.end_ms = Some(e.at_ms);
                entry.end_seq = Some(e.seq);
            }
        }
        "approval_waiting" => {
            entry.approval = true;
            approval_since.entry(idx).or_insert(e.at_ms);
        }
        "approval" => {
            if let Some(since) = approval_since.remove(&idx) {
                entry.approval_wait_ms += u64::try_from(e.at_ms - since).unwrap_or(0);
            }
        }
        "step_succeeded" | "step_failed" | "step_aborted" | "step_skipped" => {
            if let Some(since) = approval_since.remove(&idx) {
                entry.approval_wait_ms += u64::try_from(e.at_ms - since).unwrap_or(0);
            }
            // The engine measures the step from before its first journaled event (guards).
            let measured = i64::try_from(uint(d, "duration_ms")).unwrap_or(0);
            entry.start_ms = entry.start_ms.min(e.at_ms - measured);
            let attempts = u32::try_from(uint(d, "attempts")).unwrap_or(0);
            entry.attempts = entry.attempts.max(attempts);
            let (outcome, detail) = match e.kind.as_str() {
                "step_succeeded" => (Outcome::Succeeded, text(d, "summary")),
                "step_failed" => (Outcome::Failed, text(d, "error")),
                "step_aborted" => (Outcome::Aborted, text(d, "reason")),
                _ => (Outcome::Skipped, text(d, "reason")),
            };
            entry.finish(e.at_ms, e.seq, outcome, detail);
        }
        _ => {}
    }
}

/// Mark the critical path: from the entry that finished last, walk back to the dependency
/// (through `needs` when the DAG is known, else the entry that finished last before it
/// started) that finished last, until a step with no predecessor. Steps of a called runbook
/// on the path get the same treatment inside their caller. Returns the path, first step first.
pub fn mark_critical_path(entries: &mut [TimelineEntry], dag: Option<&Dag>) -> Vec<String> {
    let top: Vec<usize> = (0..entries.len())
        .filter(|&i| {
            entries[i].kind != EntryKind::Gap
                && (entries[i].parent.is_none() || entries[i].kind == EntryKind::Compensation)
        })
        .collect();
    let mut path = chain(entries, &top, dag);
    // Expand the steps of called runbooks inside each critical caller.
    let mut expanded = Vec::new();
    for &i in &path {
        expanded.push(i);
        let children: Vec<usize> = (0..entries.len())
            .filter(|&c| {
                entries[c].kind == EntryKind::Step
                    && entries[c].parent.as_deref() == Some(entries[i].step.as_str())
            })
            .collect();
        if !children.is_empty() && entries[i].kind == EntryKind::Step {
            expanded.extend(chain(entries, &children, None));
        }
    }
    path = expanded;
    for &i in &path {
        entries[i].critical = true;
    }
    path.iter().map(|&i| entries[i].label()).collect()
}

/// The critical chain among `pool` (indices into `entries`), first first.
fn chain(entries: &[TimelineEntry], pool: &[usize], dag: Option<&Dag>) -> Vec<usize> {
    let end_of = |i: usize| entries[i].end_seq;
    // A step skipped after a failure "ends" last but decided nothing: start from work done.
    let last = |skipped: bool| {
        pool.iter()
            .copied()
            .filter(|&i| end_of(i).is_some() && (skipped || entries[i].outcome != Outcome::Skipped))
            .max_by_key(|&i| end_of(i))
    };
    let Some(mut cur) = last(false).or_else(|| last(true)) else {
        return Vec::new();
    };
    let mut path = vec![cur];
    let mut seen: HashSet<usize> = HashSet::from([cur]);
    loop {
        let e = &entries[cur];
        let known = dag.filter(|_| e.kind == EntryKind::Step).and_then(|d| {
            d.needs
                .get(&e.step)
                .map(|needs| (needs, d.main.contains(&e.step)))
        });
        let candidates: Vec<usize> = match known {
            Some((needs, _)) if !needs.is_empty() => pool
                .iter()
                .copied()
                .filter(|&i| entries[i].kind == EntryKind::Step && needs.contains(&entries[i].step))
                .collect(),
            Some((_, true)) => Vec::new(),
            _ => pool
                .iter()
                .copied()
                .filter(|&i| end_of(i).is_some_and(|s| s < e.start_seq))
                .collect(),
        };
        let Some(prev) = candidates
            .into_iter()
            .filter(|&i| end_of(i).is_some() && !seen.contains(&i))
            .max_by_key(|&i| end_of(i))
        else {
            break;
        };
        seen.insert(prev);
        path.push(prev);
        cur = prev;
    }
    path.reverse();
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A journal: (`at_ms`, step, kind, data) in seq order.
    fn journal(rows: &[(i64, Option<&str>, &str, serde_json::Value)]) -> Vec<EventRecord> {
        rows.iter()
            .enumerate()
            .map(|(i, (at, step, kind, data))| EventRecord {
                seq: i64::try_from(i).unwrap() + 1,
                at_ms: *at,
                step: step.map(str::to_owned),
                kind: (*kind).to_owned(),
                attempt: None,
                data: data.clone(),
            })
            .collect()
    }

    fn ok(step: &str, ms: u64) -> serde_json::Value {
        json!({"step": step, "duration_ms": ms, "attempts": 1, "summary": "exit 0"})
    }

    /// a → (b slow, c fast) → d, with b and c started together.
    fn diamond() -> Vec<EventRecord> {
        journal(&[
            (0, Some("a"), "step_started", json!({"attempt": 1})),
            (10, Some("a"), "step_succeeded", ok("a", 10)),
            (11, Some("c"), "step_started", json!({"attempt": 1})),
            (11, Some("b"), "step_started", json!({"attempt": 1})),
            (20, Some("c"), "retry", json!({"delay_ms": 5})),
            (26, Some("c"), "step_started", json!({"attempt": 2})),
            (30, Some("c"), "step_succeeded", ok("c", 19)),
            (111, Some("b"), "step_succeeded", ok("b", 100)),
            (112, Some("d"), "step_started", json!({"attempt": 1})),
            (120, Some("d"), "step_succeeded", ok("d", 8)),
        ])
    }

    #[test]
    fn entries_measure_attempts_and_waits() {
        let entries = build(&diamond());
        let c = entries.iter().find(|e| e.step == "c").unwrap();
        assert_eq!((c.attempts, c.retry_wait_ms), (2, 5));
        assert_eq!((c.start_ms, c.end_ms, c.duration_ms), (11, Some(30), 19));
        assert_eq!(c.outcome, Outcome::Succeeded);
    }

    #[test]
    fn critical_path_follows_needs_to_the_last_finished_dependency() {
        let dag = Dag {
            needs: HashMap::from([
                ("a".to_owned(), vec![]),
                ("b".to_owned(), vec!["a".to_owned()]),
                ("c".to_owned(), vec!["a".to_owned()]),
                ("d".to_owned(), vec!["b".to_owned(), "c".to_owned()]),
            ]),
            main: ["a", "b", "c", "d"].map(str::to_owned).into(),
        };
        let mut entries = build(&diamond());
        assert_eq!(
            mark_critical_path(&mut entries, Some(&dag)),
            ["a", "b", "d"]
        );
        assert!(!entries.iter().find(|e| e.step == "c").unwrap().critical);
        // Without the DAG, the timeline order gives the same chain here.
        let mut entries = build(&diamond());
        assert_eq!(mark_critical_path(&mut entries, None), ["a", "b", "d"]);
    }

    #[test]
    fn the_dag_beats_the_timeline_when_they_disagree() {
        // `d` needs only `c`, but started late (no free slot) after the unrelated `b` ended.
        let dag = Dag {
            needs: HashMap::from([
                ("a".to_owned(), vec![]),
                ("b".to_owned(), vec!["a".to_owned()]),
                ("c".to_owned(), vec!["a".to_owned()]),
                ("d".to_owned(), vec!["c".to_owned()]),
            ]),
            main: ["a", "b", "c", "d"].map(str::to_owned).into(),
        };
        let mut entries = build(&diamond());
        assert_eq!(
            mark_critical_path(&mut entries, Some(&dag)),
            ["a", "c", "d"]
        );
        let mut entries = build(&diamond());
        assert_eq!(mark_critical_path(&mut entries, None), ["a", "b", "d"]);
    }

    #[test]
    fn compensations_are_folded_into_one_bar_each() {
        let events = journal(&[
            (0, Some("x"), "step_succeeded", ok("x", 5)),
            (
                6,
                Some("y"),
                "step_failed",
                json!({"duration_ms": 1, "error": "exit 1"}),
            ),
            (7, None, "rollback_started", json!({"steps": ["x"]})),
            (
                8,
                Some("x:compensate"),
                "command",
                json!({"command": "undo"}),
            ),
            (
                15,
                Some("x"),
                "compensated",
                json!({"step": "x", "ok": true, "detail": "exit 0"}),
            ),
        ]);
        let mut entries = build(&events);
        let labels: Vec<String> = entries.iter().map(TimelineEntry::label).collect();
        assert_eq!(labels, ["x", "y", "undo x"]);
        let undo = &entries[2];
        assert_eq!((undo.start_ms, undo.duration_ms), (8, 7));
        assert_eq!(undo.outcome, Outcome::Compensated);
        assert_eq!(mark_critical_path(&mut entries, None), ["x", "y", "undo x"]);
    }

    #[test]
    fn skipped_steps_do_not_start_the_critical_path() {
        let events = journal(&[
            (
                0,
                Some("a"),
                "step_failed",
                json!({"duration_ms": 3, "error": "boom"}),
            ),
            (
                4,
                Some("b"),
                "step_skipped",
                json!({"reason": "the run stopped before it"}),
            ),
        ]);
        let mut entries = build(&events);
        assert_eq!(mark_critical_path(&mut entries, None), ["a"]);
        assert_eq!(entries[1].outcome, Outcome::Skipped);
    }

    #[test]
    fn approval_wait_and_gate_polls() {
        let events = journal(&[
            (0, Some("ok"), "approval_waiting", json!({"needed": 1})),
            (
                500,
                Some("ok"),
                "approval",
                json!({"approver": "bob", "decision": "approved"}),
            ),
            (501, Some("ok"), "step_succeeded", ok("ok", 501)),
            (
                502,
                Some("g"),
                "check",
                json!({"phase": "verify", "index": 0, "passed": false}),
            ),
            (
                802,
                Some("g"),
                "check",
                json!({"phase": "verify", "index": 0, "passed": true}),
            ),
            (803, Some("g"), "step_succeeded", ok("g", 301)),
        ]);
        let entries = build(&events);
        assert!(entries[0].approval);
        assert_eq!(entries[0].approval_wait_ms, 500);
        assert_eq!(entries[1].gate_wait_ms, 300);
        assert_eq!(entries[1].polls[0].polls, 2);
        assert!(entries[1].polls[0].passed);
    }
}

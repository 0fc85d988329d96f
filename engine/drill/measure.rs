//! Measuring a scenario from its run's journal: when the fault was detected, when the last
//! acceptance check passed, the RPO the scenario's expression yielded, and the verdict.

use std::time::Duration;

use super::compose::ScenarioMeta;
use super::model::RpoUnit;
use super::result::{AcceptResult, ClockStart, Objective, ScenarioResult, Verdict};
use crate::state::{EventRecord, RunRecord, RunStatus};

/// The measured result of a scenario's run, from its journal events.
pub fn measure(meta: &ScenarioMeta, run: &RunRecord, events: &[EventRecord]) -> ScenarioResult {
    let succeeded = |step: &str| {
        events
            .iter()
            .rev()
            .find(|e| e.kind == "step_succeeded" && e.step.as_deref() == Some(step))
    };
    let failure = |step: &str| {
        events
            .iter()
            .rev()
            .find(|e| {
                matches!(e.kind.as_str(), "step_failed" | "step_aborted")
                    && e.step.as_deref() == Some(step)
            })
            .map(|e| {
                e.data
                    .get("error")
                    .or_else(|| e.data.get("reason"))
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("failed")
                    .to_owned()
            })
    };
    let mut reasons = Vec::new();

    // The fault: injected, then (optionally) detected.
    let injected_ms = if meta.inject.is_empty() {
        Some(run.started_at_ms)
    } else {
        let ends: Option<Vec<i64>> = meta
            .inject
            .iter()
            .map(|id| succeeded(id).map(|e| e.at_ms))
            .collect();
        ends.and_then(|v| v.into_iter().max())
    };
    if injected_ms.is_none() {
        for id in &meta.inject {
            if let Some(why) = failure(id) {
                reasons.push(format!("inject step `{id}` failed: {why}"));
            }
        }
    }
    let (clock, clock_started_at_ms) = if meta.has_detect {
        let passed = events
            .iter()
            .filter(|e| e.kind == "check" && e.step.as_deref() == Some("detect"))
            .filter(|e| e.data.get("passed").and_then(serde_json::Value::as_bool) == Some(true))
            .map(|e| e.at_ms)
            // The clock starts when the fault was first seen (a resumed run may look again).
            .next()
            .filter(|_| succeeded("detect").is_some());
        if passed.is_none() && injected_ms.is_some() {
            reasons.push(match failure("detect") {
                Some(why) => format!("the injected fault was never detected: {why}"),
                None => "the injected fault was never detected".to_owned(),
            });
        }
        (ClockStart::Detected, passed)
    } else {
        (ClockStart::Injected, injected_ms)
    };

    // Recovery and acceptance.
    if clock_started_at_ms.is_some()
        && succeeded("recover").is_none()
        && let Some(why) = failure("recover")
    {
        reasons.push(format!("recovery with {} failed: {why}", meta.runbook));
    }
    let accept: Vec<AcceptResult> = meta
        .accept
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let last = events.iter().rev().find(|e| {
                e.kind == "check"
                    && e.step.as_deref() == Some("accept")
                    && e.data.get("index").and_then(serde_json::Value::as_u64)
                        == u64::try_from(i).ok()
            });
            match last {
                Some(e) => AcceptResult {
                    name: name.clone(),
                    passed: e.data.get("passed").and_then(serde_json::Value::as_bool) == Some(true),
                    detail: e
                        .data
                        .get("detail")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    at_ms: Some(e.at_ms),
                },
                None => AcceptResult {
                    name: name.clone(),
                    passed: false,
                    detail: "not run".to_owned(),
                    at_ms: None,
                },
            }
        })
        .collect();
    for a in accept.iter().filter(|a| !a.passed && a.at_ms.is_some()) {
        reasons.push(format!(
            "acceptance check `{}` failed: {}",
            a.name, a.detail
        ));
    }
    let recovered_at_ms = if meta.accept.is_empty() {
        succeeded("recover").map(|e| e.at_ms)
    } else if succeeded("accept").is_some() {
        accept.iter().filter_map(|a| a.at_ms).max()
    } else {
        None
    };

    let rto_actual = match (clock_started_at_ms, recovered_at_ms) {
        (Some(s), Some(r)) => u64::try_from(r - s).ok(),
        _ => None,
    };
    let rto = objective(
        meta.rto,
        rto_actual,
        match clock {
            ClockStart::Detected => "fault detected → last acceptance check passed",
            ClockStart::Injected => "fault injected → last acceptance check passed",
        },
    );

    // Recovery point.
    let measured_rpo = meta.rpo_unit.and_then(|unit| {
        let outputs = succeeded("rpo")?.data.get("outputs")?.clone();
        match rpo_ms(unit, &outputs, injected_ms) {
            Ok(v) => Some(v),
            Err(why) => {
                reasons.push(format!("failed to measure the RPO: {why}"));
                None
            }
        }
    });
    if meta.rpo_unit.is_some()
        && measured_rpo.is_none()
        && recovered_at_ms.is_some()
        && let Some(why) = failure("rpo")
    {
        reasons.push(format!("failed to measure the RPO: {why}"));
    }
    let rpo = objective(
        meta.rpo,
        measured_rpo,
        if meta.rpo_unit.is_some() {
            &meta.rpo_how
        } else {
            "not measured (the scenario has no `rpo`)"
        },
    );
    if rto.met == Some(false) {
        reasons.push(format!(
            "RTO {} exceeds the objective {}",
            fmt_ms(rto.actual_ms),
            fmt_ms(rto.target_ms)
        ));
    }
    if rpo.met == Some(false) {
        reasons.push(format!(
            "RPO {} exceeds the objective {}",
            fmt_ms(rpo.actual_ms),
            fmt_ms(rpo.target_ms)
        ));
    }
    if rto.target_ms.is_some() && rto.actual_ms.is_none() && clock_started_at_ms.is_some() {
        reasons.push("the service was not recovered: no RTO measured".to_owned());
    }
    if rpo.target_ms.is_some()
        && rpo.actual_ms.is_none()
        && meta.rpo_unit.is_some()
        && clock_started_at_ms.is_some()
    {
        reasons.push("no RPO measured".to_owned());
    }
    match run.status {
        RunStatus::Succeeded => {}
        RunStatus::Running => reasons.push(format!(
            "the run did not finish: `runbook resume {}` continues it",
            run.id
        )),
        other => {
            let failed_cleanup: Vec<String> = events
                .iter()
                .filter(|e| e.kind == "step_failed")
                .filter_map(|e| e.step.clone())
                .filter(|s| !is_known(meta, s))
                .collect();
            if reasons.is_empty() {
                reasons.push(if failed_cleanup.is_empty() {
                    format!("the run {}", other.as_str())
                } else {
                    format!(
                        "the run {}: {} failed",
                        other.as_str(),
                        failed_cleanup.join(", ")
                    )
                });
            }
        }
    }
    reasons.dedup();
    let verdict = if clock_started_at_ms.is_none() && run.status.is_terminal() {
        Verdict::Invalid
    } else if reasons.is_empty() && recovered_at_ms.is_some() {
        Verdict::Passed
    } else {
        Verdict::Failed
    };
    ScenarioResult {
        drill: meta.drill.clone(),
        drill_file: meta.drill_file.clone(),
        scenario: meta.scenario.clone(),
        runbook: meta.runbook.clone(),
        run_id: run.id.clone(),
        started_at_ms: run.started_at_ms,
        finished_at_ms: run.finished_at_ms,
        clock,
        clock_started_at_ms,
        recovered_at_ms,
        rto,
        rpo,
        accept,
        verdict,
        reasons,
        approvals_by: meta.approvals_by.clone(),
    }
}

fn is_known(meta: &ScenarioMeta, step: &str) -> bool {
    meta.inject.iter().any(|s| s == step)
        || ["detect", "recover", "accept", "rpo"].contains(&step)
        || step.starts_with("recover/")
}

fn objective(target: Option<Duration>, actual_ms: Option<u64>, how: &str) -> Objective {
    let target_ms = target.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Objective {
        target_ms,
        actual_ms,
        met: match (target_ms, actual_ms) {
            (Some(t), Some(a)) => Some(a <= t),
            _ => None,
        },
        how: how.to_owned(),
    }
}

/// `1m 30s`-style text of milliseconds, `-` when missing.
pub fn fmt_ms(ms: Option<u64>) -> String {
    ms.map_or_else(
        || "-".to_owned(),
        |m| crate::duration::format(Duration::from_millis(m)),
    )
}

/// The RPO in milliseconds from the `rpo` step's outputs.
///
/// # Errors
/// What the value was and why it is not a timestamp or a duration.
pub fn rpo_ms(
    unit: RpoUnit,
    outputs: &serde_json::Value,
    injected_ms: Option<i64>,
) -> Result<u64, String> {
    let value = outputs.get("value").unwrap_or(&serde_json::Value::Null);
    match unit {
        RpoUnit::Duration => duration_ms(value)
            .ok_or_else(|| format!("`{value}` is not a duration (seconds, or text like `90s`)")),
        RpoUnit::Timestamp => {
            let at = instant_ms(value).ok_or_else(|| {
                format!("`{value}` is not a timestamp (Unix seconds or milliseconds, or RFC 3339)")
            })?;
            let since = match outputs.get("since") {
                Some(s) => instant_ms(s).ok_or_else(|| {
                    format!("`since` `{s}` is not a timestamp (Unix seconds or milliseconds, or RFC 3339)")
                })?,
                None => injected_ms.ok_or("the fault was never injected")?,
            };
            Ok(u64::try_from(since - at).unwrap_or(0))
        }
    }
}

fn duration_ms(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::Number(n) => n.as_f64().filter(|f| *f >= 0.0).map(secs_to_ms),
        serde_json::Value::String(s) => {
            let s = s.trim();
            s.parse::<f64>()
                .ok()
                .filter(|f| *f >= 0.0)
                .map(secs_to_ms)
                .or_else(|| {
                    crate::duration::parse(s)
                        .ok()
                        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                })
        }
        _ => None,
    }
}

#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "non-negative seconds, rounded to whole milliseconds"
)]
fn secs_to_ms(f: f64) -> u64 {
    (f * 1000.0).round() as u64
}

/// A timestamp as milliseconds since the epoch: a number (seconds, or milliseconds when above
/// 10^11) or text: a number, or `YYYY-MM-DD[T ]HH:MM:SS[.fff][Z|±HH[:MM]]` (no zone: UTC).
pub fn instant_ms(v: &serde_json::Value) -> Option<i64> {
    #[expect(
        clippy::cast_possible_truncation,
        reason = "timestamps are far inside i64 milliseconds"
    )]
    let from_num = |f: f64| -> i64 {
        if f.abs() > 1e11 {
            f.round() as i64
        } else {
            (f * 1000.0).round() as i64
        }
    };
    match v {
        serde_json::Value::Number(n) => n.as_f64().map(from_num),
        serde_json::Value::String(s) => {
            let s = s.trim();
            s.parse::<f64>()
                .ok()
                .map(from_num)
                .or_else(|| parse_datetime(s))
        }
        _ => None,
    }
}

#[expect(
    clippy::many_single_char_names,
    reason = "the date and time fields, named as in the format"
)]
fn parse_datetime(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut millis = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits: String = frac.chars().take_while(char::is_ascii_digit).collect();
        rest = &frac[digits.len()..];
        let ms: String = digits.chars().chain("000".chars()).take(3).collect();
        millis = ms.parse().ok()?;
    }
    let offset_min = match rest {
        "" | "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let t = rest[1..].replace(':', "");
            let (hh, mm) = match t.len() {
                2 => (t.parse::<i64>().ok()?, 0),
                // `get`: the offset may hold multi-byte characters (`+1é1`).
                4 => (
                    t.get(..2)?.parse::<i64>().ok()?,
                    t.get(2..)?.parse::<i64>().ok()?,
                ),
                _ => return None,
            };
            sign * (hh * 60 + mm)
        }
    };
    let days = crate::clock::days_from_civil(y, u32::try_from(mo).ok()?, u32::try_from(d).ok()?);
    Some(((days * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60) * 1000) + millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_timestamps_in_the_usual_shapes() {
        let j = |s: &str| serde_json::Value::String(s.to_owned());
        assert_eq!(instant_ms(&j("1970-01-01T00:00:01Z")), Some(1000));
        assert_eq!(
            instant_ms(&j("2026-11-25 17:04:05.123+00")),
            Some(1_795_626_245_123)
        );
        assert_eq!(
            instant_ms(&j("2026-11-25T18:04:05.123+01:00")),
            Some(1_795_626_245_123)
        );
        assert_eq!(
            instant_ms(&serde_json::json!(1_795_626_245)),
            Some(1_795_626_245_000)
        );
        assert_eq!(
            instant_ms(&serde_json::json!(1_795_626_245_123_i64)),
            Some(1_795_626_245_123)
        );
        assert_eq!(instant_ms(&j("yesterday")), None);
    }

    #[test]
    fn rpo_from_a_timestamp_is_the_time_before_the_fault() {
        let out = serde_json::json!({"value": 100});
        assert_eq!(rpo_ms(RpoUnit::Timestamp, &out, Some(160_000)), Ok(60_000));
        let out = serde_json::json!({"value": "90s"});
        assert_eq!(rpo_ms(RpoUnit::Duration, &out, None), Ok(90_000));
        let out = serde_json::json!({"value": "soon"});
        assert!(rpo_ms(RpoUnit::Duration, &out, None).is_err());
    }
}

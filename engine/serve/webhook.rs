//! Alertmanager's webhook payload (version 4) and what `runbook serve` does with each alert in
//! it: resolved → nothing; firing → the first matching trigger's runbook, unless the same alert
//! already has a run, the trigger's rate limit or the global `max_runs` says no.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The webhook body Alertmanager POSTs (`version: "4"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Payload {
    /// Payload format version; only "4" is understood.
    pub version: String,
    /// Alertmanager's key of the alert group.
    #[serde(default)]
    pub group_key: String,
    /// `firing` or `resolved` (for the group).
    pub status: String,
    /// The receiver that routed here.
    #[serde(default)]
    pub receiver: String,
    /// Labels the group is formed by.
    #[serde(default)]
    pub group_labels: BTreeMap<String, String>,
    /// Labels every alert of the group shares.
    #[serde(default)]
    pub common_labels: BTreeMap<String, String>,
    /// Annotations every alert of the group shares.
    #[serde(default)]
    pub common_annotations: BTreeMap<String, String>,
    /// Link back to Alertmanager.
    #[serde(default, rename = "externalURL")]
    pub external_url: String,
    /// The alerts.
    pub alerts: Vec<Alert>,
}

/// One alert of a payload.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// `firing` or `resolved`.
    pub status: String,
    /// Its labels (`alertname` among them).
    pub labels: BTreeMap<String, String>,
    /// Its annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// When it started firing (RFC 3339).
    #[serde(default)]
    pub starts_at: String,
    /// When it was resolved (RFC 3339; zero time while firing).
    #[serde(default)]
    pub ends_at: String,
    /// The rule's link in Prometheus.
    #[serde(default, rename = "generatorURL")]
    pub generator_url: String,
    /// Alertmanager's identity of the alert (a hash of its labels).
    #[serde(default)]
    pub fingerprint: String,
}

/// Why a body is refused with 400.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// Not JSON of the webhook's shape.
    #[error("failed to read the webhook body: {0}")]
    Json(#[source] serde_json::Error),
    /// Another payload version.
    #[error(
        "failed to accept the webhook: payload version {0:?} is not supported (Alertmanager sends \"4\")"
    )]
    Version(String),
    /// An alert status other than firing/resolved.
    #[error(
        "failed to accept the webhook: alert #{index} has status {status:?} (expected \"firing\" or \"resolved\")"
    )]
    Status {
        /// Index of the alert in `alerts`.
        index: usize,
        /// What it said.
        status: String,
    },
    /// An alert without `alertname`.
    #[error("failed to accept the webhook: alert #{0} has no `alertname` label")]
    NoAlertname(usize),
}

/// Parse and check a webhook body.
///
/// # Errors
/// Why the body is not a version-4 Alertmanager payload.
pub fn parse(body: &[u8]) -> Result<Payload, PayloadError> {
    let p: Payload = serde_json::from_slice(body).map_err(PayloadError::Json)?;
    if p.version != "4" {
        return Err(PayloadError::Version(p.version));
    }
    for (index, a) in p.alerts.iter().enumerate() {
        if a.status != "firing" && a.status != "resolved" {
            return Err(PayloadError::Status {
                index,
                status: a.status.clone(),
            });
        }
        if !a.labels.contains_key("alertname") {
            return Err(PayloadError::NoAlertname(index));
        }
    }
    Ok(p)
}

impl Alert {
    /// The alert's fingerprint, or (when a sender leaves it out) a SHA-256 of its sorted labels.
    pub fn identity(&self) -> String {
        if !self.fingerprint.is_empty() {
            return self.fingerprint.clone();
        }
        let mut text = String::new();
        for (k, v) in &self.labels {
            text.push_str(k);
            text.push('\u{1}');
            text.push_str(v);
            text.push('\u{2}');
        }
        super::hmac::hex(&sha2::Digest::finalize(sha2::Digest::chain_update(
            <sha2::Sha256 as sha2::Digest>::new(),
            text.as_bytes(),
        )))[..16]
            .to_owned()
    }
}

/// What happened to one alert, in the response.
#[derive(Debug, Clone, Serialize)]
pub struct AlertOutcome {
    /// Index in the payload's `alerts`.
    pub index: usize,
    /// Its `alertname`.
    pub alertname: String,
    /// Its fingerprint.
    pub fingerprint: String,
    /// `started`, `duplicate`, `rate_limited`, `max_runs`, `no_trigger`, `resolved`, `error`.
    pub result: &'static str,
    /// An HTTP-like status for this alert: 201 started, 200 nothing to do, 409 duplicate,
    /// 422 bad params, 429 limited, 500/503 the server could not start it.
    pub status: u16,
    /// The trigger that matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// The run started (or the one already handling this alert).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Why, when nothing started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl AlertOutcome {
    /// An outcome with no trigger, run or reason yet.
    pub fn new(index: usize, alert: &Alert, result: &'static str, status: u16) -> Self {
        Self {
            index,
            alertname: alert.labels.get("alertname").cloned().unwrap_or_default(),
            fingerprint: alert.identity(),
            result,
            status,
            trigger: None,
            run_id: None,
            reason: None,
        }
    }
}

/// The template context of a trigger's params for one alert.
pub fn context(p: &Payload, a: &Alert) -> minijinja::Value {
    use minijinja::Value;
    minijinja::context! {
        labels => Value::from(minijinja::value::Serde(&a.labels)),
        annotations => Value::from(minijinja::value::Serde(&a.annotations)),
        alert => minijinja::context! {
            status => a.status.clone(),
            fingerprint => a.identity(),
            starts_at => a.starts_at.clone(),
            ends_at => a.ends_at.clone(),
            generator_url => a.generator_url.clone(),
        },
        group => minijinja::context! {
            key => p.group_key.clone(),
            labels => Value::from(minijinja::value::Serde(&p.group_labels)),
            common_labels => Value::from(minijinja::value::Serde(&p.common_labels)),
            common_annotations => Value::from(minijinja::value::Serde(&p.common_annotations)),
            receiver => p.receiver.clone(),
            external_url => p.external_url.clone(),
        },
    }
}

/// Render a trigger's params for an alert.
///
/// # Errors
/// The first param whose template fails (a missing label, say), with minijinja's reason.
pub fn render_params(
    templates: &[(String, String)],
    ctx: minijinja::Value,
) -> Result<Vec<(String, String)>, String> {
    let r = crate::template::Renderer::new(ctx);
    templates
        .iter()
        .map(|(k, t)| {
            r.render(t, crate::template::Escape::None)
                .map(|v| (k.clone(), v))
                .map_err(|e| {
                    format!(
                        "failed to render param `{k}`: {}",
                        crate::template::describe(&e.source)
                    )
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = r#"{"version":"4","groupKey":"{}:{alertname=\"HighErrorRate\"}","status":"firing","receiver":"runbook",
        "groupLabels":{"alertname":"HighErrorRate"},"commonLabels":{},"commonAnnotations":{},"externalURL":"http://am",
        "alerts":[{"status":"firing","labels":{"alertname":"HighErrorRate","service":"demo"},"annotations":{"summary":"5xx"},
        "startsAt":"2026-11-25T10:00:00Z","endsAt":"0001-01-01T00:00:00Z","generatorURL":"http://prom","fingerprint":"abc"}]}"#;

    #[test]
    fn parses_version_4_and_refuses_others() {
        let p = parse(BODY.as_bytes()).unwrap();
        assert_eq!(p.alerts[0].identity(), "abc");
        let v3 = BODY.replacen("\"4\"", "\"3\"", 1);
        assert!(matches!(parse(v3.as_bytes()), Err(PayloadError::Version(v)) if v == "3"));
        assert!(matches!(parse(b"{"), Err(PayloadError::Json(_))));
        let odd = BODY.replacen(
            "\"status\":\"firing\",\"labels\"",
            "\"status\":\"burning\",\"labels\"",
            1,
        );
        assert!(matches!(
            parse(odd.as_bytes()),
            Err(PayloadError::Status { index: 0, .. })
        ));
    }

    #[test]
    fn params_render_from_labels_and_a_missing_label_is_an_error() {
        let p = parse(BODY.as_bytes()).unwrap();
        let ctx = context(&p, &p.alerts[0]);
        let ok = render_params(
            &[(
                "service".into(),
                "{{ labels.service }}-{{ annotations.summary }}".into(),
            )],
            ctx.clone(),
        )
        .unwrap();
        assert_eq!(ok, vec![("service".to_owned(), "demo-5xx".to_owned())]);
        let err =
            render_params(&[("ns".into(), "{{ labels.namespace }}".into())], ctx).unwrap_err();
        assert!(err.starts_with("failed to render param `ns`"), "{err}");
    }

    #[test]
    fn identity_without_fingerprint_hashes_labels() {
        let mut p = parse(BODY.as_bytes()).unwrap();
        p.alerts[0].fingerprint.clear();
        let a = p.alerts[0].identity();
        assert_eq!(a.len(), 16);
        p.alerts[0].labels.insert("x".into(), "y".into());
        assert_ne!(a, p.alerts[0].identity());
    }
}

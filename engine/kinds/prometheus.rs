//! `prometheus`: a `PromQL` check, instant or sustained over a window.

use schemars::JsonSchema;
use serde::Deserialize;

use super::{DescriptionLine, Kind, TemplateField};
use crate::model::{DurationText, Spanned};
use crate::template::{Escape, RenderError, Renderer};

/// A `PromQL` query.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrometheusSpec {
    /// The query (a template).
    pub query: Spanned<String>,
    /// Server URL; default: the runbook's `prometheus`, else `RUNBOOK_PROMETHEUS_URL`.
    #[serde(default)]
    pub url: Option<Spanned<String>>,
    /// Sustained: the assert must hold for every sample over this window.
    #[serde(default, rename = "for")]
    pub sustained: Option<Spanned<DurationText>>,
    /// What an empty result means.
    #[serde(default)]
    pub on_empty: OnEmpty,
}

/// Meaning of a query that returns no series.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnEmpty {
    /// The check fails (default): no data is not good news.
    #[default]
    Fail,
    /// The check passes.
    Pass,
    /// The value is taken as 0.
    Zero,
}

impl Kind for PrometheusSpec {
    fn name(&self) -> &'static str {
        "prometheus"
    }
    fn templates(&self) -> Vec<TemplateField<'_>> {
        let mut out = vec![TemplateField::new(
            "prometheus.query",
            &self.query,
            Escape::None,
        )];
        if let Some(url) = &self.url {
            out.push(TemplateField::new("prometheus.url", url, Escape::None));
        }
        out
    }
    fn mutates(&self) -> bool {
        false
    }
    fn describe(&self, r: &Renderer<'_>) -> Result<Vec<DescriptionLine>, RenderError> {
        let mut out = vec![(
            "promql".to_owned(),
            r.render(&self.query.value, Escape::None)?,
        )];
        if let Some(w) = &self.sustained {
            out.push(("sustained for".to_owned(), w.value.0.clone()));
        }
        if let Some(url) = &self.url {
            out.push(("server".to_owned(), r.render(&url.value, Escape::None)?));
        }
        Ok(out)
    }
}

impl super::Perform for PrometheusSpec {
    fn perform<'a>(&'a self, _ctx: &'a crate::exec::ActionCtx) -> super::PerformFuture<'a> {
        Box::pin(async move { Err(crate::exec::ActionError::Unsupported("prometheus")) })
    }
    fn executable(&self) -> bool {
        // Validated and planned today; executed from a later version (see README).
        false
    }
}

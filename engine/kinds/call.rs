//! `call`: run another runbook file as a sub-procedure with its own params.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

use super::{DescriptionLine, Kind, TemplateField};
use crate::model::Spanned;
use crate::template::{Escape, RenderError, Renderer};

/// A sub-runbook invocation.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CallSpec {
    /// Path of the runbook, relative to this file.
    pub runbook: Spanned<String>,
    /// Its params (values are templates).
    #[serde(default)]
    pub params: BTreeMap<String, Spanned<String>>,
}

impl Kind for CallSpec {
    fn name(&self) -> &'static str {
        "call"
    }
    fn templates(&self) -> Vec<TemplateField<'_>> {
        self.params
            .iter()
            .map(|(k, v)| TemplateField::new(format!("call.params.{k}"), v, Escape::None))
            .collect()
    }
    fn mutates(&self) -> bool {
        true
    }
    fn describe(&self, r: &Renderer<'_>) -> Result<Vec<DescriptionLine>, RenderError> {
        let mut out = vec![("call".to_owned(), self.runbook.value.clone())];
        for (k, v) in &self.params {
            out.push((format!("param {k}"), r.render(&v.value, Escape::None)?));
        }
        Ok(out)
    }
}

impl super::Perform for CallSpec {
    fn perform<'a>(&'a self, ctx: &'a crate::exec::ActionCtx) -> super::PerformFuture<'a> {
        Box::pin(async move {
            use crate::exec::ActionError;
            let r = ctx.renderer();
            let mut params = Vec::new();
            for (k, v) in &self.params {
                params.push((
                    k.clone(),
                    r.render(&v.value, Escape::None)
                        .map_err(|e| ActionError::Failed(ctx.mask(&e.to_string())))?,
                ));
            }
            // Before anything of the called runbook runs: its `secret: true` params are masked
            // from now on, and its steps count against the run's step budget.
            let path = crate::exec::resolve_relative(&ctx.runbook().path, &self.runbook.value);
            // A spent budget fails at once, before the called runbook is even read.
            ctx.shared().reserve_steps(1).map_err(|e| {
                ActionError::Failed(format!("failed to call {}: {e}", path.display()))
            })?;
            if let Ok(child) = crate::compile::compile_path(&path) {
                for (name, p) in &child.runbook.params {
                    if p.value.secret
                        && let Some((_, v)) = params.iter().find(|(k, _)| k == name)
                    {
                        crate::mask::check_secret(name, v).map_err(|e| {
                            ActionError::Failed(format!("failed to call {}: {e}", path.display()))
                        })?;
                        ctx.shared().learn_secret(v);
                    }
                }
                ctx.shared().reserve_steps(child.steps.len()).map_err(|e| {
                    ActionError::Failed(format!("failed to call {}: {e}", path.display()))
                })?;
            }
            crate::exec::call(ctx, &self.runbook.value, params).await
        })
    }
}

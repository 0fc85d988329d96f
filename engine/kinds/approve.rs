//! `approve`: a human gate, optionally a quorum of distinct approvers.

use schemars::JsonSchema;
use serde::Deserialize;

use super::{DescriptionLine, Kind, TemplateField};
use crate::model::Spanned;
use crate::template::{Escape, RenderError, Renderer};

/// An approval request.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveSpec {
    /// What the approver is asked (a template).
    pub message: Spanned<String>,
    /// Distinct approvers needed (default 1).
    #[serde(default = "one")]
    pub min_approvals: u32,
    /// Whether the user who started the run may approve it (default true).
    #[serde(default = "yes")]
    pub self_approval: bool,
    /// Only these users may approve (default: anyone).
    #[serde(default)]
    pub approvers: Vec<String>,
}

fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}

impl Kind for ApproveSpec {
    fn name(&self) -> &'static str {
        "approve"
    }
    fn templates(&self) -> Vec<TemplateField<'_>> {
        vec![TemplateField::new(
            "approve.message",
            &self.message,
            Escape::None,
        )]
    }
    fn mutates(&self) -> bool {
        false
    }
    fn idempotent(&self) -> bool {
        // Asking again is always safe.
        true
    }
    fn describe(&self, r: &Renderer<'_>) -> Result<Vec<DescriptionLine>, RenderError> {
        let mut out = vec![(
            "approve".to_owned(),
            r.render(&self.message.value, Escape::None)?,
        )];
        if self.min_approvals > 1 {
            out.push((
                "quorum".to_owned(),
                format!("{} distinct approvers", self.min_approvals),
            ));
        }
        if !self.self_approval {
            out.push((
                "self-approval".to_owned(),
                "refused (the user who started the run cannot approve)".to_owned(),
            ));
        }
        if !self.approvers.is_empty() {
            out.push(("approvers".to_owned(), self.approvers.join(", ")));
        }
        Ok(out)
    }
}

impl super::Perform for ApproveSpec {
    fn perform<'a>(&'a self, ctx: &'a crate::exec::ActionCtx) -> super::PerformFuture<'a> {
        Box::pin(async move {
            use crate::exec::ActionError;
            let message = ctx
                .renderer()
                .render(&self.message.value, Escape::None)
                .map_err(|e| ActionError::Failed(e.to_string()))?;
            crate::exec::approval::request(ctx, self, &ctx.mask(&message)).await
        })
    }
}

//! `expr`: a check that is an expression over params and upstream results.

use super::{DescriptionLine, Kind, TemplateField};
use crate::model::Spanned;
use crate::template::{RenderError, Renderer};

/// An expression check; it passes when the expression is true.
#[derive(Debug, Clone, Copy)]
pub struct ExprAction<'a> {
    /// The expression (minijinja syntax).
    pub expr: &'a Spanned<String>,
}

impl Kind for ExprAction<'_> {
    fn name(&self) -> &'static str {
        "expr"
    }
    fn templates(&self) -> Vec<TemplateField<'_>> {
        // Checked by the compiler as an expression, not as a template.
        Vec::new()
    }
    fn mutates(&self) -> bool {
        false
    }
    fn describe(&self, _: &Renderer<'_>) -> Result<Vec<DescriptionLine>, RenderError> {
        Ok(vec![("expr".to_owned(), self.expr.value.clone())])
    }
}

impl super::Perform for ExprAction<'_> {
    fn perform<'a>(&'a self, ctx: &'a crate::exec::ActionCtx) -> super::PerformFuture<'a> {
        Box::pin(async move {
            use crate::exec::{ActionError, ActionResult};
            let v = ctx
                .renderer()
                .eval(&self.expr.value)
                .map_err(|e| ActionError::Failed(e.to_string()))?;
            let ok = v.is_true();
            Ok(ActionResult {
                value: serde_json::to_value(&v).unwrap_or(serde_json::Value::Null),
                ok,
                summary: format!("{} is {ok}", self.expr.value),
                exit_code: None,
                http_status: None,
            })
        })
    }
}

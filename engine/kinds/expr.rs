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

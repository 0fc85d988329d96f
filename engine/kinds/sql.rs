//! `sql`: statements against `PostgreSQL`, as an action (DDL/DML) or a check (a query + assert).

use schemars::JsonSchema;
use serde::Deserialize;

use super::{DescriptionLine, Kind, TemplateField};
use crate::model::{DurationText, Spanned};
use crate::template::{Escape, RenderError, Renderer};

/// SQL to run.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlSpec {
    /// Connection string (usually `{{ secrets.pg_dsn }}`); masked in every output.
    pub dsn: Spanned<String>,
    /// The statement(s). Values belong in `params` (`$1`, `$2`…), never interpolated.
    pub query: Spanned<String>,
    /// Bind parameters (templates), passed as text.
    #[serde(default)]
    pub params: Vec<Spanned<String>>,
    /// Limit for the statement (default 30s).
    #[serde(default)]
    pub timeout: Option<Spanned<DurationText>>,
    /// Run inside one transaction: a failure leaves nothing half-applied.
    #[serde(default)]
    pub transaction: bool,
    /// Whether the statement changes anything (default: guessed from its first keyword).
    #[serde(default)]
    pub mutates: Option<bool>,
}

/// Keywords of statements that only read.
const READ_ONLY: &[&str] = &["select", "show", "explain", "with", "values", "table"];

impl Kind for SqlSpec {
    fn name(&self) -> &'static str {
        "sql"
    }

    fn templates(&self) -> Vec<TemplateField<'_>> {
        let mut out = vec![
            TemplateField::new("sql.dsn", &self.dsn, Escape::None),
            TemplateField::new("sql.query", &self.query, Escape::None),
        ];
        for (i, p) in self.params.iter().enumerate() {
            out.push(TemplateField::new(
                format!("sql.params[{i}]"),
                p,
                Escape::None,
            ));
        }
        out
    }

    fn mutates(&self) -> bool {
        self.mutates.unwrap_or_else(|| {
            let first = self
                .query
                .value
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_lowercase();
            !READ_ONLY.contains(&first.as_str())
        })
    }

    fn describe(&self, r: &Renderer<'_>) -> Result<Vec<DescriptionLine>, RenderError> {
        let mut out = vec![
            (
                "sql".to_owned(),
                crate::mask::mask_dsn(&r.render(&self.dsn.value, Escape::None)?),
            ),
            (
                "query".to_owned(),
                r.render(&self.query.value, Escape::None)?,
            ),
        ];
        for (i, p) in self.params.iter().enumerate() {
            out.push((format!("${}", i + 1), r.render(&p.value, Escape::None)?));
        }
        if self.transaction {
            out.push(("transaction".to_owned(), "yes".to_owned()));
        }
        Ok(out)
    }
}

impl super::Perform for SqlSpec {
    fn perform<'a>(&'a self, _ctx: &'a crate::exec::ActionCtx) -> super::PerformFuture<'a> {
        Box::pin(async move { Err(crate::exec::ActionError::Unsupported("sql")) })
    }
    fn executable(&self) -> bool {
        // Validated and planned today; executed from a later version (see README).
        false
    }
}

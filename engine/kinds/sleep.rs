//! `sleep`: wait a duration, cancellably (e.g. let DNS TTLs expire).

use super::{DescriptionLine, Kind, TemplateField};
use crate::model::{DurationText, Spanned};
use crate::template::{RenderError, Renderer};

/// A pause of a fixed duration.
#[derive(Debug, Clone, Copy)]
pub struct SleepAction<'a> {
    /// How long.
    pub duration: &'a Spanned<DurationText>,
}

impl Kind for SleepAction<'_> {
    fn name(&self) -> &'static str {
        "sleep"
    }
    fn templates(&self) -> Vec<TemplateField<'_>> {
        Vec::new()
    }
    fn mutates(&self) -> bool {
        false
    }
    fn describe(&self, _: &Renderer<'_>) -> Result<Vec<DescriptionLine>, RenderError> {
        Ok(vec![("sleep".to_owned(), self.duration.value.0.clone())])
    }
}

impl super::Perform for SleepAction<'_> {
    fn perform<'a>(&'a self, ctx: &'a crate::exec::ActionCtx) -> super::PerformFuture<'a> {
        Box::pin(async move {
            use crate::exec::{ActionError, ActionResult};
            let d = crate::duration::parse(&self.duration.value.0)
                .map_err(|e| ActionError::Failed(e.to_string()))?;
            let mut cancel = ctx.cancelled();
            tokio::select! {
                () = tokio::time::sleep(d) => {}
                () = cancel.wait() => return Err(ActionError::Cancelled),
            }
            Ok(ActionResult {
                value: serde_json::json!({"slept_ms": u64::try_from(d.as_millis()).unwrap_or(u64::MAX)}),
                ok: true,
                summary: format!("slept {}", crate::duration::format(d)),
                exit_code: None,
                http_status: None,
            })
        })
    }
}

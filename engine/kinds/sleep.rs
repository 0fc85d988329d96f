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

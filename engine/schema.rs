//! JSON Schemas generated from the format's Rust types (checked in under `schemas/`).

use crate::model::Runbook;

/// The runbook JSON Schema, pretty-printed with a trailing newline.
///
/// # Panics
/// Never in practice: a generated schema always serializes.
pub fn runbook_schema() -> String {
    let schema = schemars::schema_for!(Runbook);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

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

/// The triggers file JSON Schema (`runbook serve --triggers`), pretty-printed with a trailing
/// newline.
pub fn triggers_schema() -> String {
    let schema = schemars::schema_for!(crate::serve::triggers::TriggersFile);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

/// The drill file JSON Schema (`schemas/drill.schema.json`), pretty-printed with a trailing
/// newline.
pub fn drill_schema() -> String {
    let schema = schemars::schema_for!(crate::drill::model::Drill);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

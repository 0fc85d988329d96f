//! Params: checking their declarations, and turning `-p k=v` / `--params-file` into typed values.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::diagnostic::{Diagnostic, did_you_mean};
use crate::duration;
use crate::model::{Param, ParamType, Runbook, Spanned};

/// Resolved param values, by name, typed as declared (durations stay strings like `15m`).
pub type ParamValues = BTreeMap<String, Value>;

pub(super) fn check_declaration(name: &str, p: &Spanned<Param>, diags: &mut Vec<Diagnostic>) {
    let ty = p.value.ty.value;
    match (&p.value.values, ty) {
        (None, ParamType::Enum) => diags.push(
            Diagnostic::new(
                "enum-without-values",
                format!("enum param `{name}` lists no `values`"),
                p.value.ty.span,
            )
            .with_help("add `values: [a, b, …]`"),
        ),
        (Some(v), t) if t != ParamType::Enum => diags.push(
            Diagnostic::new(
                "values-without-enum",
                format!("param `{name}` has `values` but is not an enum"),
                v.span,
            )
            .with_help("use `type: enum`, or remove `values`"),
        ),
        (Some(v), _) if v.value.is_empty() => diags.push(
            Diagnostic::new(
                "enum-without-values",
                format!("enum param `{name}` has an empty `values` list"),
                v.span,
            )
            .with_help("list the allowed values"),
        ),
        _ => {}
    }
    // An enum without values has been reported above; every default would be "not one of: ".
    let no_values =
        ty == ParamType::Enum && p.value.values.as_ref().is_none_or(|v| v.value.is_empty());
    if let Some(default) = p.value.default.as_ref().filter(|_| !no_values)
        && let Err(why) = coerce_json(&p.value, &default.value)
    {
        let mut d = Diagnostic::new(
            "bad-default",
            format!("default of param `{name}` is invalid: {why}"),
            default.span,
        );
        d = match suggestion(&p.value, &default.value) {
            Some(s) => d.with_help(format!("did you mean `{s}`?")),
            None => d.with_help(type_help(&p.value)),
        };
        diags.push(d);
    }
}

fn suggestion(p: &Param, v: &Value) -> Option<String> {
    let values = p.values.as_ref()?;
    let s = v.as_str()?;
    did_you_mean(s, values.value.iter().map(String::as_str)).map(str::to_owned)
}

fn type_help(p: &Param) -> String {
    match p.ty.value {
        ParamType::String => "give a string".to_owned(),
        ParamType::Int => "give a whole number, e.g. `3`".to_owned(),
        ParamType::Bool => "give `true` or `false`".to_owned(),
        ParamType::Duration => duration::DURATION_HELP.to_owned(),
        ParamType::Enum => match &p.values {
            Some(v) => format!("use one of: {}", v.value.join(", ")),
            None => "declare `values` first".to_owned(),
        },
    }
}

/// Check a YAML/JSON value against a declaration; returns the canonical value.
fn coerce_json(p: &Param, v: &Value) -> Result<Value, String> {
    match (p.ty.value, v) {
        (ParamType::String, Value::String(_)) | (ParamType::Bool, Value::Bool(_)) => Ok(v.clone()),
        (ParamType::String, Value::Number(n)) => Ok(Value::String(n.to_string())),
        (ParamType::String, Value::Bool(b)) => Ok(Value::String(b.to_string())),
        (ParamType::Int, Value::Number(n)) if n.is_i64() => Ok(v.clone()),
        (_, Value::String(s)) => coerce_str(p, s),
        (ty, other) => Err(format!(
            "expected {}, found {}",
            type_name(ty),
            json_kind(other)
        )),
    }
}

/// Convert a command-line string to the declared type.
fn coerce_str(p: &Param, s: &str) -> Result<Value, String> {
    match p.ty.value {
        ParamType::String => Ok(Value::String(s.to_owned())),
        ParamType::Int => s
            .trim()
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| format!("`{s}` is not a whole number")),
        ParamType::Bool => match s.trim() {
            "true" | "yes" | "1" => Ok(Value::Bool(true)),
            "false" | "no" | "0" => Ok(Value::Bool(false)),
            _ => Err(format!("`{s}` is not true or false")),
        },
        ParamType::Duration => duration::parse(s)
            .map(|_| Value::String(s.trim().to_owned()))
            .map_err(|e| e.to_string()),
        ParamType::Enum => {
            let values = p
                .values
                .as_ref()
                .map(|v| v.value.as_slice())
                .unwrap_or_default();
            if values.iter().any(|v| v == s) {
                Ok(Value::String(s.to_owned()))
            } else {
                Err(format!("`{s}` is not one of: {}", values.join(", ")))
            }
        }
    }
}

fn type_name(t: ParamType) -> &'static str {
    match t {
        ParamType::String => "a string",
        ParamType::Int => "a whole number",
        ParamType::Bool => "true or false",
        ParamType::Duration => "a duration",
        ParamType::Enum => "one of the enum's values",
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Resolve the values of every param from the command line and a params file.
///
/// Command-line values win over file values, which win over defaults.
///
/// # Errors
/// Unknown params (with a suggestion), values of the wrong type, and missing required params.
pub fn resolve_params(
    rb: &Runbook,
    cli: &[(String, String)],
    file: &BTreeMap<String, Value>,
) -> Result<ParamValues, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let mut out = ParamValues::new();
    let unknown = |name: &str, origin: &str| {
        let mut d = Diagnostic::global(
            "unknown-param",
            format!("unknown param `{name}` ({origin})"),
        );
        // Placed where the params are declared: that is where the valid names are read.
        if let Some(first) = rb
            .params
            .values()
            .map(|p| p.span)
            .min_by_key(|s| (s.line, s.column))
        {
            d = d.with_related(first, "params are declared here");
        }
        d = match did_you_mean(name, rb.params.keys().map(String::as_str)) {
            Some(s) => d.with_help(format!("did you mean `{s}`?")),
            None if rb.params.is_empty() => d.with_help("this runbook declares no params"),
            None => d.with_help(format!(
                "declared params: {}",
                rb.params.keys().cloned().collect::<Vec<_>>().join(", ")
            )),
        };
        d
    };
    for (name, v) in file {
        let Some(p) = rb.params.get(name) else {
            diags.push(unknown(name, "from the params file"));
            continue;
        };
        match coerce_json(&p.value, v) {
            Ok(v) => {
                out.insert(name.clone(), v);
            }
            Err(why) => diags.push(
                Diagnostic::global(
                    "bad-param",
                    format!("invalid value for param `{name}` in the params file: {why}"),
                )
                .with_related(p.span, "declared here")
                .with_help(type_help(&p.value)),
            ),
        }
    }
    for (name, v) in cli {
        let Some(p) = rb.params.get(name) else {
            diags.push(unknown(name, "from -p"));
            continue;
        };
        match coerce_str(&p.value, v) {
            Ok(v) => {
                out.insert(name.clone(), v);
            }
            Err(why) => diags.push(
                Diagnostic::global(
                    "bad-param",
                    format!("invalid value for param `{name}`: {why}"),
                )
                .with_related(p.span, "declared here")
                .with_help(type_help(&p.value)),
            ),
        }
    }
    for (name, p) in &rb.params {
        if out.contains_key(name) {
            continue;
        }
        if let Some(d) = &p.value.default {
            if let Ok(v) = coerce_json(&p.value, &d.value) {
                out.insert(name.clone(), v);
            }
        } else {
            let what = p
                .value
                .description
                .as_deref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default();
            diags.push(
                Diagnostic::global(
                    "missing-param",
                    format!("missing required param `{name}`{what}"),
                )
                .with_related(p.span, "declared here without a default")
                .with_help(format!("pass it with `-p {name}=<value>`")),
            );
        }
    }
    // A secret too short to be masked would leak in every output: refuse it now, before
    // anything is planned or run.
    for (name, p) in &rb.params {
        if !p.value.secret {
            continue;
        }
        let text = match out.get(name) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => continue,
            Some(other) => other.to_string(),
        };
        if let Err(e) = crate::mask::check_secret(name, &text) {
            diags.push(
                Diagnostic::global(
                    "secret-too-short",
                    format!("invalid value for param `{name}`: {e}"),
                )
                .with_related(p.span, "declared `secret: true` here")
                .with_help(format!(
                    "pass a value of at least {} characters with `-p {name}=…`",
                    crate::mask::MIN_SECRET_LEN
                )),
            );
        }
    }
    if diags.is_empty() {
        Ok(out)
    } else {
        Err(diags)
    }
}

/// Parse `k=v` from the command line.
///
/// # Errors
/// When there is no `=`.
pub fn parse_assignment(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("expected NAME=VALUE, got `{s}`")),
    }
}

//! Parse phase: YAML text → [`Runbook`] with positions, or every structural error found.
//!
//! serde stops at the first error. To report more than one, a failed parse is retried piecewise:
//! the header alone (steps ignored), then each step in isolation, with the rest of the file blanked
//! out so that lines, columns and byte offsets stay exactly those of the original file.

use serde_saphyr::granit_parser::{self, Event, Parser};
use serde::de::IgnoredAny;

use crate::diagnostic::{Diagnostic, SourceFile, did_you_mean};
use crate::model::{Runbook, Span, Step};

/// Parse a runbook file.
///
/// # Errors
/// Every structural problem found (YAML syntax, unknown or missing keys, wrong types), each
/// with its position and a fix.
pub fn parse(file: &SourceFile) -> Result<Runbook, Vec<Diagnostic>> {
    parse_as::<Runbook>(file, &file.text).map_err(|first| recover(file, first))
}

/// Parse any YAML document type with the project's options and diagnostics.
///
/// # Errors
/// The first structural problem.
pub fn parse_as<T: serde::de::DeserializeOwned>(
    file: &SourceFile,
    text: &str,
) -> Result<T, Diagnostic> {
    serde_saphyr::from_str::<T>(text).map_err(|e| convert(file, &e))
}

/// After a failed parse, look for the other errors too.
fn recover(file: &SourceFile, first: Diagnostic) -> Vec<Diagnostic> {
    let mut diags = vec![first];
    if diags[0].code == "yaml-syntax" {
        return diags;
    }
    if let Err(d) = parse_as::<Runbook<IgnoredAny>>(file, &file.text) {
        diags.push(d);
    }
    for (start, end) in step_ranges(&file.text) {
        let isolated = isolate(&file.text, start, end);
        if let Err(d) = parse_as::<Step>(file, &isolated) {
            diags.push(d);
        }
    }
    // The first error is usually found again piecewise; keep one of each.
    let mut seen = std::collections::HashSet::new();
    diags.retain(|d| seen.insert((d.span.map(|s| (s.line, s.column)), d.message.clone())));
    diags.sort_by_key(|d| d.span.map(|s| (s.line, s.column)));
    diags
}

/// Byte ranges of the items of the top-level `steps` and `finally` sequences.
fn step_ranges(text: &str) -> Vec<(usize, usize)> {
    let mut ranges = Vec::new();
    let mut depth = 0usize;
    // Whether the next event at depth 1 is a key, and whether the current key is steps/finally.
    let mut expect_key = true;
    let mut in_steps = false;
    let mut item_start: Option<usize> = None;
    let char_to_byte = |span_marker: granit_parser::Marker| {
        span_marker.byte_offset().unwrap_or_else(|| {
            text.char_indices()
                .nth(span_marker.index())
                .map_or(text.len(), |(b, _)| b)
        })
    };
    for ev in Parser::new_from_str(text) {
        let Ok((event, span)) = ev else { break };
        match event {
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                if depth == 2 && in_steps {
                    item_start = Some(char_to_byte(span.start));
                }
                depth += 1;
            }
            Event::MappingEnd | Event::SequenceEnd => {
                depth = depth.saturating_sub(1);
                if depth == 2 && in_steps {
                    if let Some(s) = item_start.take() {
                        ranges.push((s, char_to_byte(span.end)));
                    }
                }
                if depth == 1 {
                    // A value at depth 1 finished: next is a key.
                    in_steps = false;
                    expect_key = true;
                }
            }
            Event::Scalar(value, ..) => {
                if depth == 1 {
                    if expect_key {
                        in_steps = value == "steps" || value == "finally";
                        expect_key = false;
                    } else {
                        in_steps = false;
                        expect_key = true;
                    }
                } else if depth == 2 && in_steps {
                    // A scalar step (e.g. `- foo`): isolate it too, it gets a type error.
                    let s = char_to_byte(span.start);
                    ranges.push((s, char_to_byte(span.end).max(s + 1)));
                }
            }
            Event::Alias(..) => {
                if depth == 1 && !expect_key {
                    expect_key = true;
                }
            }
            _ => {}
        }
    }
    ranges
}

/// The text with everything outside `start..end` blanked (newlines kept; other bytes become
/// spaces), so positions in the isolated document are positions in the file.
fn isolate(text: &str, start: usize, end: usize) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, c) in text.char_indices() {
        if (start..end).contains(&i) || c == '\n' {
            out.push(c);
        } else {
            for _ in 0..c.len_utf8() {
                out.push(' ');
            }
        }
    }
    out
}

/// A serde-saphyr error as a diagnostic, with a fix where the problem is a common one.
fn convert(file: &SourceFile, err: &serde_saphyr::Error) -> Diagnostic {
    let span = err.location().map(|loc| Span {
        line: loc.line(),
        column: loc.column(),
        offset: loc
            .span()
            .byte_offset()
            .and_then(|o| usize::try_from(o).ok()),
    });
    let raw = err.without_snippet().to_string();
    let (code, message, help) = classify(&clean_message(&raw));
    let span = span.map(|mut s| {
        if s.offset.is_none() {
            s.offset = file.offset_of(s.line, s.column);
        }
        s
    });
    Diagnostic {
        code,
        message,
        span,
        label: None,
        help,
        related: Vec::new(),
    }
}

/// The message without the location suffix serde-saphyr appends (we show our own).
fn clean_message(raw: &str) -> String {
    let first = raw.lines().next().unwrap_or(raw).trim();
    let first = match first.rfind(" at line ") {
        Some(i) => &first[..i],
        None => first,
    };
    let mut m = first.trim().to_owned();
    if let Some(rest) = m.strip_prefix("error: ") {
        m = rest.to_owned();
    }
    m
}

/// The candidates serde lists after "expected one of" / "expected".
fn expected_list(message: &str) -> Vec<&str> {
    let Some(rest) = message.split("expected").nth(1) else { return Vec::new() };
    let rest = rest.trim_start().trim_start_matches("one of").trim();
    rest.split(',')
        .map(|w| w.trim().trim_matches('`').trim())
        .filter(|w| !w.is_empty() && !w.contains(' '))
        .collect()
}

/// Recognise the common serde errors, restate them plainly and say how to fix them.
fn classify(message: &str) -> (&'static str, String, Option<String>) {
    if let Some(field) = between(message, "unknown field `", "`") {
        let expected = expected_list(message);
        let help = match did_you_mean(field, expected.iter().copied()) {
            Some(s) => format!("did you mean `{s}`?"),
            None if !expected.is_empty() => format!("valid keys here: {}", expected.join(", ")),
            None => "remove it".to_owned(),
        };
        return ("unknown-key", format!("unknown key `{field}`"), Some(help));
    }
    if let Some(field) = between(message, "missing field `", "`") {
        return ("missing-key", format!("missing required key `{field}`"), Some(format!("add `{field}:`")));
    }
    if let Some(variant) = between(message, "unknown variant `", "`") {
        let expected = expected_list(message);
        let help = match did_you_mean(variant, expected.iter().copied()) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!("use one of: {}", expected.join(", ")),
        };
        return ("unknown-value", format!("unknown value `{variant}`"), Some(help));
    }
    if message.contains("invalid type") {
        return ("wrong-type", message.to_owned(), None);
    }
    if message.contains("duplicate") {
        return ("duplicate-key", message.to_owned(), Some("each key may appear once in a mapping".to_owned()));
    }
    ("yaml-syntax", message.to_owned(), None)
}

fn between<'a>(s: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = s.find(open)? + open.len();
    let len = s[start..].find(close)?;
    Some(&s[start..start + len])
}

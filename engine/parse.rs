//! Parse phase: YAML text → [`Runbook`] with positions, or every structural error found.
//!
//! serde stops at the first error. To report more than one, a failed parse is retried piecewise:
//! the header alone (steps ignored), then each step in isolation, with the rest of the file blanked
//! out so that lines, columns and byte offsets stay exactly those of the original file.

use serde::de::IgnoredAny;
use serde_saphyr::granit_parser::{self, Event, Parser, StructureStyle};

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
#[allow(
    clippy::result_large_err,
    reason = "a diagnostic is the error of every phase"
)]
pub fn parse_as<T: serde::de::DeserializeOwned>(
    file: &SourceFile,
    text: &str,
) -> Result<T, Diagnostic> {
    let limits = yaml_limits().map_err(|message| Diagnostic {
        code: "bad-setting",
        message,
        span: None,
        label: None,
        help: Some(format!(
            "set {MAX_NODES_VAR} to a whole number of YAML nodes (default {DEFAULT_MAX_NODES}), or unset it"
        )),
        related: Vec::new(),
    })?;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(limits);
    serde_saphyr::from_str_with_options::<T>(text, options).map_err(|e| convert(file, text, &e))
}

/// The environment variable that raises (or lowers) the YAML node budget of every file read.
pub const MAX_NODES_VAR: &str = "RUNBOOK_YAML_MAX_NODES";

/// YAML nodes (mappings, lists and values) a file may hold unless [`MAX_NODES_VAR`] says
/// otherwise: about 27,000 steps of a few keys each. The budget bounds the memory and time a
/// hostile or generated file can cost before anything is checked.
pub const DEFAULT_MAX_NODES: usize = 250_000;

/// The parser's budget: its defaults, with the node budget (and the event budget, which grows
/// with it: a node is one or two events) from [`MAX_NODES_VAR`].
fn yaml_limits() -> Result<serde_saphyr::budget::Budget, String> {
    let mut b = serde_saphyr::budget::Budget::default();
    let nodes = match std::env::var(MAX_NODES_VAR) {
        Ok(v) => match v.trim().replace('_', "").parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                return Err(format!(
                    "{MAX_NODES_VAR}=`{v}` is not a positive whole number"
                ));
            }
        },
        Err(_) => DEFAULT_MAX_NODES,
    };
    b.max_nodes = nodes;
    b.max_events = b.max_events.max(nodes.saturating_mul(4));
    Ok(b)
}

/// The text with every unknown key's entry blanked (positions kept), when unknown keys written in
/// block style are the only structural problems: the compiler then looks for the others, so one
/// typo does not hide the rest of the file's problems.
///
/// Also returns the problems met on the way, which include those a step's first unknown key hid
/// from [`parse`] (a second unknown key, a wrong type further down the same step).
pub fn without_unknown_keys(file: &SourceFile) -> (Option<String>, Vec<Diagnostic>) {
    let mut text = file.text.to_string();
    let mut found = Vec::new();
    // Each pass removes one key; a file cannot hold more unknown keys than lines.
    for _ in 0..=text.lines().count() {
        let Err(d) = parse_as::<Runbook>(file, &text) else {
            return (Some(text), found);
        };
        let next = (d.code == "unknown-key")
            .then_some(d.span)
            .flatten()
            .and_then(|span| {
                span.offset
                    .or_else(|| file.offset_of(span.line, span.column))
            })
            .and_then(|at| blank_entry(&text, at));
        found.push(d);
        match next {
            Some(t) => text = t,
            None => break,
        }
    }
    (None, found)
}

/// Blank the block-style mapping entry whose key starts at `at`: the rest of its line and the
/// lines below indented deeper than the key. `None` when the key does not start its line (after
/// an optional `- `), e.g. inside a flow mapping, where blanking would break the syntax.
fn blank_entry(text: &str, at: usize) -> Option<String> {
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let before = &text[line_start..at];
    if !before
        .trim_start()
        .trim_start_matches('-')
        .trim_start()
        .is_empty()
    {
        return None;
    }
    let column = before.chars().count();
    let mut end = text[at..].find('\n').map_or(text.len(), |i| at + i);
    while end < text.len() {
        let next_start = end + 1;
        let next_end = text[next_start..]
            .find('\n')
            .map_or(text.len(), |i| next_start + i);
        let line = &text[next_start..next_end];
        let indent = line.chars().take_while(|c| *c == ' ').count();
        let trimmed = line.trim();
        if !trimmed.is_empty() && !trimmed.starts_with('#') && indent <= column {
            break;
        }
        end = next_end;
    }
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..at]);
    out.extend(text[at..end].chars().map(|c| {
        if c == '\n' {
            "\n".to_owned()
        } else {
            " ".repeat(c.len_utf8())
        }
    }));
    out.push_str(&text[end..]);
    Some(out)
}

/// After a failed parse, look for the other errors too.
fn recover(file: &SourceFile, first: Diagnostic) -> Vec<Diagnostic> {
    let mut diags = vec![first];
    if diags[0].code == "yaml-syntax" || diags[0].code == "yaml-limit" {
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
    let char_to_byte = |m: granit_parser::Marker| byte_of(text, m);
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
                if depth == 2
                    && in_steps
                    && let Some(s) = item_start.take()
                {
                    ranges.push((s, char_to_byte(span.end)));
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
            Event::Alias(..) if depth == 1 && !expect_key => {
                expect_key = true;
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
fn convert(file: &SourceFile, text: &str, err: &serde_saphyr::Error) -> Diagnostic {
    let span = err.location().map(|loc| Span {
        line: loc.line(),
        column: loc.column(),
        offset: loc
            .span()
            .byte_offset()
            .and_then(|o| usize::try_from(o).ok()),
    });
    // Line and column follow from the byte offset when there is one (serde-saphyr's column can
    // be off after a multi-byte character in a multi-line plain scalar).
    let span = span.map(|s| match s.offset {
        Some(o) if o <= text.len() && text.is_char_boundary(o) => span_at(text, o),
        _ => Span {
            offset: file.offset_of(s.line, s.column),
            ..s
        },
    });
    let raw = err.without_snippet().to_string();
    let (code, message, help) = budget(innermost(err))
        .or_else(|| typed(text, span, innermost(err)))
        .unwrap_or_else(|| classify(&clean_message(&raw)));
    let mut d = Diagnostic {
        code,
        message,
        span,
        label: None,
        help,
        related: Vec::new(),
    };
    relocate(text, &mut d);
    // `text` may be the file with parts blanked out: same byte offsets, but a blanked multi-byte
    // character is several spaces, so columns are counted in the file itself.
    if let Some(o) = d.span.and_then(|s| s.offset)
        && file.text.is_char_boundary(o)
    {
        d.span = Some(span_at(&file.text, o));
    }
    d
}

/// The error itself, without the wrappers that add snippets or alias locations.
fn innermost(mut err: &serde_saphyr::Error) -> &serde_saphyr::Error {
    while let serde_saphyr::Error::WithSnippet { error, .. }
    | serde_saphyr::Error::AliasError { error, .. } = err
    {
        err = error;
    }
    err
}

/// A YAML resource limit that was hit, in plain words with the limit named (the parser's own
/// error is a debug dump of its counters).
fn budget(err: &serde_saphyr::Error) -> Option<(&'static str, String, Option<String>)> {
    use serde_saphyr::budget::BudgetBreach as B;
    let serde_saphyr::Error::Budget { breach, .. } = err else {
        return None;
    };
    let Ok(limits) = yaml_limits() else {
        return None;
    };
    let what = match breach {
        B::Nodes { .. } => format!(
            "{} YAML nodes (the node budget, {MAX_NODES_VAR})",
            limits.max_nodes
        ),
        B::Events { .. } => format!("{} YAML parser events", limits.max_events),
        B::Depth { .. } => format!("{} levels of nesting", limits.max_depth),
        B::Aliases { .. } => format!("{} aliases (`*name`)", limits.max_aliases),
        B::Anchors { .. } => format!("{} anchors (`&name`)", limits.max_anchors),
        B::AliasAnchorRatio { .. } => format!(
            "{} aliases per anchor (alias expansion multiplies the document)",
            limits.alias_anchor_ratio_multiplier
        ),
        B::Documents { .. } => format!("{} YAML documents", limits.max_documents),
        B::ScalarBytes { .. } => format!(
            "{} MiB of text in values",
            limits.max_total_scalar_bytes / (1024 * 1024)
        ),
        B::MergeKeys { .. } => format!("{} merge keys (`<<`)", limits.max_merge_keys),
        B::InputBytes { .. } => format!(
            "{} MiB",
            limits.max_reader_input_bytes.unwrap_or(0) / (1024 * 1024)
        ),
        _ => "the YAML parser's resource limits".to_owned(),
    };
    Some((
        "yaml-limit",
        format!("the file is too large or too deeply nested: runbooks (and drill and trigger files) are limited to {what}"),
        Some(match breach {
            B::Nodes { .. } | B::Events { .. } => format!("split the procedure into runbooks that `call` each other, or raise the budget with {MAX_NODES_VAR}=<nodes> (a step is about 9 nodes)"),
            _ => "split the procedure into runbooks that `call` each other, or remove the repetition (anchors and aliases count once per use)".to_owned(),
        }),
    ))
}

/// Type mismatches, restated in the runbook's terms (serde-saphyr words them as parser events).
fn typed(
    text: &str,
    span: Option<Span>,
    err: &serde_saphyr::Error,
) -> Option<(&'static str, String, Option<String>)> {
    use serde_saphyr::Error as E;
    let found = span
        .and_then(|s| s.offset)
        .and_then(|o| node_at(text, o))
        .map(|f| format!(", found {f}"))
        .unwrap_or_default();
    let (what, help) = match err {
        E::Unexpected { expected, .. } => match *expected {
            "sequence start" => (
                "a list",
                Some(
                    "write a list as `[a, b]` or as one `- item` per line; a single item is still a list: `[a]`",
                ),
            ),
            "mapping start" => ("a mapping", Some("write `key: value` pairs here")),
            "string scalar" | "scalar" => (
                "a single value",
                Some("quote text that contains `[`, `{`, `: ` or ` #`, e.g. `\"a: b\"`"),
            ),
            _ => return None,
        },
        E::InvalidScalar { ty, .. } => match *ty {
            "boolean" => ("`true` or `false`", None),
            "floating point" | "f32" | "f64" => ("a number", None),
            t if t.starts_with('u') => ("a whole number (0 or more)", None),
            t if t.starts_with('i') => ("a whole number", None),
            _ => return None,
        },
        E::InvalidBooleanStrict { .. } => ("`true` or `false`", None),
        E::Eof { .. }
            if text
                .lines()
                .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) =>
        {
            return Some((
                "empty-file",
                "the file is empty".to_owned(),
                Some("a runbook needs at least `runbook: <name>` and a `steps:` list".to_owned()),
            ));
        }
        _ => return None,
    };
    Some((
        "wrong-type",
        format!("expected {what}{found}"),
        help.map(str::to_owned),
    ))
}

/// How the YAML node starting at `offset` looks, e.g. "a list" or "`three`".
fn node_at(text: &str, offset: usize) -> Option<String> {
    for ev in Parser::new_from_str(text) {
        let Ok((event, span)) = ev else { return None };
        let start = byte_of(text, span.start);
        if start < offset {
            continue;
        }
        if start > offset {
            return None;
        }
        match event {
            Event::Scalar(v, ..) => {
                let v: String = v.chars().take(40).collect();
                return Some(format!("`{v}`"));
            }
            Event::SequenceStart(..) => return Some("a list".to_owned()),
            Event::MappingStart(..) => return Some("a mapping".to_owned()),
            _ => {}
        }
    }
    None
}

/// Move a diagnostic to where the mistake is when the parser noticed it somewhere else.
fn relocate(text: &str, d: &mut Diagnostic) {
    let Some(at) = d.span.and_then(|s| s.offset) else {
        return;
    };
    match d.code {
        // serde notices a missing key at the end of the mapping: point at the mapping instead.
        "missing-key" => {
            if let Some(start) = enclosing_mapping(text, at) {
                d.span = Some(span_at(text, start));
                if let Some(key) = between(&d.message, "`", "`") {
                    d.label = Some(format!("this mapping has no `{key}`"));
                }
            }
        }
        "yaml-syntax" if d.message.contains("tab") => {
            if let Some(tab) = indentation_tab(text, at) {
                d.span = Some(span_at(text, tab));
                "tab character in indentation".clone_into(&mut d.message);
                d.help =
                    Some("YAML indents with spaces only; replace the tab with spaces".to_owned());
            }
        }
        "yaml-syntax" => {
            let at_opener = d
                .message
                .strip_prefix("unclosed bracket '")
                .and_then(|rest| rest.chars().next())
                .map(|c| (at, c));
            if let Some((open, c)) = at_opener.or_else(|| unclosed_flow(text, at)) {
                let (close, alternative) = if c == '[' {
                    (']', "write the list as one `- item` per line")
                } else {
                    ('}', "write the mapping as `key: value` lines")
                };
                d.span = Some(span_at(text, open));
                d.message = format!("unclosed `{c}`");
                d.label = Some("opened here, never closed".to_owned());
                d.help = Some(format!("close it with `{close}`, or {alternative}"));
            }
        }
        _ => {}
    }
}

/// Byte offset of the first key of the innermost mapping that contains `at`.
fn enclosing_mapping(text: &str, at: usize) -> Option<usize> {
    let mut stack: Vec<Option<usize>> = Vec::new();
    for ev in Parser::new_from_str(text) {
        let Ok((event, span)) = ev else { break };
        let start = byte_of(text, span.start);
        if start >= at {
            break;
        }
        match event {
            Event::MappingStart(..) => stack.push(Some(start)),
            Event::SequenceStart(..) => stack.push(None),
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
            }
            _ => {}
        }
    }
    stack.into_iter().rev().flatten().next()
}

/// The first tab in the indentation of the line of `at` or of one of the next two lines.
fn indentation_tab(text: &str, at: usize) -> Option<usize> {
    let line_start = text[..at.min(text.len())].rfind('\n').map_or(0, |i| i + 1);
    let mut offset = line_start;
    for line in text[line_start..].split_inclusive('\n').take(3) {
        let indent = line.len() - line.trim_start_matches([' ', '\t']).len();
        if let Some(i) = line[..indent].find('\t') {
            return Some(offset + i);
        }
        offset += line.len();
    }
    None
}

/// When the parser failed inside a `[…]` or `{…}` opened on an earlier line, where it was opened.
fn unclosed_flow(text: &str, at: usize) -> Option<(usize, char)> {
    let mut stack: Vec<(StructureStyle, usize)> = Vec::new();
    for ev in Parser::new_from_str(text) {
        match ev {
            Ok((Event::SequenceStart(style, ..) | Event::MappingStart(style, ..), span)) => {
                stack.push((style, byte_of(text, span.start)));
            }
            Ok((Event::SequenceEnd | Event::MappingEnd, _)) => {
                stack.pop();
            }
            Ok(_) => {}
            Err(e) => {
                let failed = byte_of(text, *e.marker()).min(at);
                let line_of = |o: usize| text[..o.min(text.len())].matches('\n').count();
                return stack
                    .iter()
                    .rev()
                    .take_while(|(style, _)| *style == StructureStyle::Flow)
                    .filter_map(|&(_, o)| Some((o, text[o..].chars().next()?)))
                    .find(|&(_, c)| c == '[' || c == '{')
                    .filter(|&(o, _)| line_of(o) < line_of(failed));
            }
        }
    }
    None
}

/// Byte offset of a parser marker in `text`.
fn byte_of(text: &str, m: granit_parser::Marker) -> usize {
    m.byte_offset().unwrap_or_else(|| {
        text.char_indices()
            .nth(m.index())
            .map_or(text.len(), |(b, _)| b)
    })
}

/// The position of a byte offset.
fn span_at(text: &str, offset: usize) -> Span {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Span {
        line: before.matches('\n').count() as u64 + 1,
        column: before[line_start..].chars().count() as u64 + 1,
        offset: Some(offset),
    }
}

/// Where the key is written whose value starts at `value_offset` (e.g. `http:` for the mapping
/// under it), so a diagnostic about a whole value can point at its name.
pub(crate) fn key_of_value(text: &str, value_offset: usize) -> Option<Span> {
    // Per open collection: `Some((expecting a key, last key))` for mappings, `None` for lists.
    let mut stack: Vec<Option<(bool, Option<usize>)>> = Vec::new();
    for ev in Parser::new_from_str(text) {
        let Ok((event, span)) = ev else { return None };
        let start = byte_of(text, span.start);
        let is_node = matches!(
            event,
            Event::Scalar(..)
                | Event::SequenceStart(..)
                | Event::MappingStart(..)
                | Event::Alias(..)
        );
        if is_node && let Some(Some((expect_key, last_key))) = stack.last_mut() {
            if *expect_key {
                *last_key = Some(start);
            } else if start == value_offset {
                return last_key.map(|k| span_at(text, k));
            }
            *expect_key = !*expect_key;
        }
        match event {
            Event::MappingStart(..) => stack.push(Some((true, None))),
            Event::SequenceStart(..) => stack.push(None),
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
            }
            _ => {}
        }
    }
    None
}

/// Where the value of `key` is written in the mapping that starts at `mapping_offset`.
pub(crate) fn value_in_mapping(text: &str, mapping_offset: usize, key: &str) -> Option<Span> {
    // Depth below the mapping (0: not inside it yet), and whether a key of it comes next.
    let mut depth = 0usize;
    let mut expect_key = true;
    let mut found_key = false;
    for ev in Parser::new_from_str(text) {
        let Ok((event, span)) = ev else { return None };
        let start = byte_of(text, span.start);
        if depth == 0 {
            if matches!(event, Event::MappingStart(..)) && start == mapping_offset {
                depth = 1;
            }
            continue;
        }
        let is_node = matches!(
            event,
            Event::Scalar(..)
                | Event::SequenceStart(..)
                | Event::MappingStart(..)
                | Event::Alias(..)
        );
        if depth == 1 && is_node {
            if found_key {
                return Some(span_at(text, start));
            }
            if expect_key {
                found_key = matches!(&event, Event::Scalar(k, ..) if k == key);
            }
            expect_key = !expect_key;
        }
        match event {
            Event::MappingStart(..) | Event::SequenceStart(..) => depth += 1,
            Event::MappingEnd | Event::SequenceEnd => {
                depth -= 1;
                if depth == 0 {
                    return None;
                }
            }
            _ => {}
        }
    }
    None
}

/// Where `key` is written in the document's top-level mapping.
pub(crate) fn top_level_key(text: &str, key: &str) -> Option<Span> {
    let mut depth = 0usize;
    let mut expect_key = true;
    for ev in Parser::new_from_str(text) {
        let Ok((event, span)) = ev else { return None };
        let is_node = matches!(
            event,
            Event::Scalar(..)
                | Event::SequenceStart(..)
                | Event::MappingStart(..)
                | Event::Alias(..)
        );
        if depth == 1 && is_node {
            if expect_key && matches!(&event, Event::Scalar(k, ..) if k == key) {
                return Some(span_at(text, byte_of(text, span.start)));
            }
            expect_key = !expect_key;
        }
        match event {
            Event::MappingStart(..) | Event::SequenceStart(..) => depth += 1,
            Event::MappingEnd | Event::SequenceEnd => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
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
    let Some(rest) = message.split("expected").nth(1) else {
        return Vec::new();
    };
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
        return (
            "missing-key",
            format!("missing required key `{field}`"),
            Some(format!("add `{field}:`")),
        );
    }
    if let Some(variant) = between(message, "unknown variant `", "`") {
        let expected = expected_list(message);
        let help = match did_you_mean(variant, expected.iter().copied()) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!("use one of: {}", expected.join(", ")),
        };
        return (
            "unknown-value",
            format!("unknown value `{variant}`"),
            Some(help),
        );
    }
    if message.contains("invalid type") {
        return ("wrong-type", message.to_owned(), None);
    }
    if message.contains("duplicate") {
        return (
            "duplicate-key",
            message.to_owned(),
            Some("each key may appear once in a mapping".to_owned()),
        );
    }
    let help = [
        "did not find expected '-' indicator",
        "did not find expected key",
        "mapping values are not allowed in this context",
    ]
    .iter()
    .any(|m| message.contains(m))
    .then(|| "check the indentation of this line: the keys of one mapping start in the same column, and list items start with `- `".to_owned());
    ("yaml-syntax", message.to_owned(), help)
}

fn between<'a>(s: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = s.find(open)? + open.len();
    let len = s[start..].find(close)?;
    Some(&s[start..start + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_entry_is_blanked_with_its_block_and_positions_kept() {
        let text =
            "runbook: t\nsteps:\n  - timout:\n      x: 1\n    # note\n    id: a\n    run: echo\n";
        let at = text.find("timout").unwrap();
        let out = blank_entry(text, at).unwrap();
        assert_eq!(out.len(), text.len());
        assert_eq!(out.lines().count(), text.lines().count());
        assert!(!out.contains("timout") && !out.contains("x: 1"));
        assert!(out.contains("    id: a\n    run: echo\n"));
        let file = SourceFile::new("t.yaml", text);
        let (rest, found) = without_unknown_keys(&file);
        assert!(rest.is_some(), "{found:?}");
        assert_eq!(found.len(), 1);
    }

    #[test]
    fn a_key_inside_a_flow_mapping_is_left_alone() {
        let text = "runbook: t\nsteps: [{id: a, run: echo, timout: 5m}]\n";
        assert_eq!(blank_entry(text, text.find("timout").unwrap()), None);
        let (rest, found) = without_unknown_keys(&SourceFile::new("t.yaml", text));
        assert_eq!(rest, None);
        assert_eq!(found.len(), 1);
    }
}

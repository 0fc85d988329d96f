//! Reference checks: every template parses, every variable it reads exists where it is read, and
//! every value lands where it stays data.
//!
//! A step may read the results of steps upstream of it (through `needs`, transitively) — never of
//! a step that may not have run yet. A value may not sit where its target cannot carry it as data
//! (single quotes in a shell command, the host of a URL, a quoted SQL literal). Mistakes are
//! reported at the template, with the fix.

use crate::diagnostic::{Diagnostic, SourceFile, did_you_mean};
use crate::kinds::{self, TemplateField};
use crate::model::{Check, Span};
use crate::template::{Escape, expression_references, shell_problems, template_references};

use super::{Compiled, graph};

/// How a step id is written after `steps.` in a template (`-` is not valid there).
pub fn template_key(id: &str) -> String {
    id.replace('-', "_")
}

/// Fields of `steps.<id>` that exist at run time.
pub const STEP_FIELDS: &[&str] = &[
    "result",
    "outputs",
    "status",
    "started_at",
    "finished_at",
    "duration_ms",
    "attempts",
];
/// Fields of `run`.
pub const RUN_FIELDS: &[&str] = &[
    "id",
    "runbook",
    "started_at",
    "status",
    "user",
    "host",
    "lock_token",
    "dir",
];

/// Where a template is, which decides what it may read.
#[derive(Clone, Copy)]
struct Scope {
    /// The step it belongs to (`None`: runbook level, e.g. preflight, lock).
    step: Option<usize>,
    /// Whether `result` is bound (asserts, outputs, retry conditions).
    result: bool,
    /// Whether the step may read its own results (compensations).
    own: bool,
    /// Whether `steps` may be read at all.
    steps: bool,
    /// Whether the DAG is whole (no unknown `needs`, no cycle), so "is upstream" can be decided.
    graph: bool,
}

/// Check every template and expression. With a broken DAG (`graph` false), whether a step is
/// upstream of another is not checked; everything else is.
pub(super) fn check(c: &Compiled, graph: bool, diags: &mut Vec<Diagnostic>) {
    let rb = &c.runbook;
    let header = Scope {
        step: None,
        result: false,
        own: false,
        steps: false,
        graph,
    };
    if let Some(lock) = &rb.lock {
        template(c, header, "lock", &lock.value, lock.span, diags);
    }
    if let Some(p) = &rb.prometheus {
        template(c, header, "prometheus", &p.value, p.span, diags);
    }
    for check in &rb.preflight {
        check_refs(c, header, check, diags);
    }
    for i in 0..c.steps.len() {
        let step = c.step(i);
        let s = Scope {
            step: Some(i),
            result: false,
            own: false,
            steps: true,
            graph,
        };
        let with_result = Scope { result: true, ..s };
        if let Some(w) = &step.when {
            expression(c, s, "when", &w.value, w.span, diags);
        }
        for check in &step.require {
            check_refs(c, s, check, diags);
        }
        for action in kinds::step_actions(step) {
            fields(c, s, &action.kind().templates(), diags);
        }
        if let Some(a) = &step.assert {
            expression(c, with_result, "assert", &a.value, a.span, diags);
        }
        // Gates run after the action: they may read its `result` (and `steps.<self>`).
        let gate = Scope {
            result: true,
            own: true,
            ..s
        };
        for check in &step.verify {
            check_refs(c, gate, check, diags);
        }
        if let Some(comp) = &step.compensate {
            let own = Scope { own: true, ..s };
            for action in kinds::compensation_actions(&comp.value) {
                fields(c, own, &action.kind().templates(), diags);
            }
        }
        for (name, o) in &step.outputs {
            expression(
                c,
                with_result,
                &format!("outputs.{name}"),
                &o.value,
                o.span,
                diags,
            );
        }
        if let Some(on_expr) = step
            .retry
            .as_ref()
            .and_then(|r| r.value.on.as_ref())
            .and_then(|o| o.expr.as_ref())
        {
            expression(
                c,
                with_result,
                "retry.on.expr",
                &on_expr.value,
                on_expr.span,
                diags,
            );
        }
    }
}

fn check_refs(c: &Compiled, scope: Scope, check: &Check, diags: &mut Vec<Diagnostic>) {
    for action in kinds::check_actions(check) {
        fields(c, scope, &action.kind().templates(), diags);
        if let kinds::Action::Expr(e) = action {
            expression(c, scope, "expr", &e.expr.value, e.expr.span, diags);
        }
    }
    if let Some(a) = &check.assert {
        expression(
            c,
            Scope {
                result: true,
                ..scope
            },
            "assert",
            &a.value,
            a.span,
            diags,
        );
    }
}

fn fields(c: &Compiled, scope: Scope, fields: &[TemplateField<'_>], diags: &mut Vec<Diagnostic>) {
    for f in fields {
        template(c, scope, &f.field, f.text, f.span, diags);
        if template_references(f.text).is_ok() {
            placement(c, scope, f, diags);
        }
    }
}

/// Values interpolated where their target would parse them: each at its `{{`, with the fix.
fn placement(c: &Compiled, scope: Scope, f: &TemplateField<'_>, diags: &mut Vec<Diagnostic>) {
    let problems: Vec<(usize, String, String)> = match f.escape {
        Escape::Shell => shell_problems(f.text)
            .into_iter()
            .map(|(at, u)| {
                (
                    at,
                    format!("puts a template value {}", u.what()),
                    u.fix().to_owned(),
                )
            })
            .collect(),
        Escape::Url => kinds::http::url_problems(f.text),
        Escape::Sql => kinds::sql::query_problems(f.text),
        Escape::Promql => kinds::prometheus::query_problems(f.text),
        Escape::None => return,
    };
    for (offset, what, fix) in problems {
        let at = offset_span(&c.file, f.text, f.span, offset);
        let message = match scope.step {
            Some(i) => format!("step `{}` ({}) {what}", c.steps[i].id, f.field),
            None => format!("`{}` {what}", f.field),
        };
        diags.push(Diagnostic::new("unsafe-interpolation", message, at).with_help(fix));
    }
}

/// Where byte `offset` of a template's text is in the file: exact for scalars written verbatim
/// on one line and for literal block scalars (`|`), else the scalar's start.
fn offset_span(file: &SourceFile, text: &str, span: Span, offset: usize) -> Span {
    if let Some(base) = verbatim_start(file, text, span) {
        return span_at(file, base + offset);
    }
    block_offset(file, text, span, offset).map_or(span, |o| span_at(file, o))
}

/// The file offset of byte `offset` of a literal block scalar's text (`run: |`), whose span
/// is either its `|` indicator or its first content line.
fn block_offset(file: &SourceFile, text: &str, span: Span, offset: usize) -> Option<usize> {
    let start = span.offset?;
    let src = file.text.get(start..)?;
    let first_line = text.split('\n').next().unwrap_or_default();
    let (mut pos, indent) = if src.starts_with('|') {
        let pos = start + src.find('\n')? + 1;
        // Indentation of the block: that of its first non-blank line.
        let indent = file.text[pos..]
            .split('\n')
            .find(|l| !l.trim().is_empty())
            .map(|l| l.len() - l.trim_start_matches(' ').len())?;
        (pos, indent)
    } else if !first_line.is_empty() && src.starts_with(first_line) {
        let line_start = file.text[..start].rfind('\n').map_or(0, |i| i + 1);
        (line_start, start - line_start)
    } else {
        return None;
    };
    let line_index = text.get(..offset)?.matches('\n').count();
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_text = text[line_start..].split('\n').next().unwrap_or_default();
    for _ in 0..line_index {
        pos += file.text[pos..].find('\n')? + 1;
    }
    let content = pos + indent;
    file.text
        .get(content..)?
        .starts_with(line_text)
        .then_some(content + (offset - line_start))
}

fn template(
    c: &Compiled,
    scope: Scope,
    field: &str,
    text: &str,
    span: Span,
    diags: &mut Vec<Diagnostic>,
) {
    match template_references(text) {
        Ok(refs) => {
            for path in refs.paths {
                // The exact position costs a scan of the file: only for a path that is wrong.
                if let Some(mut d) = check_path(c, scope, field, &path, span) {
                    d.span = Some(path_span(&c.file, text, span, &path));
                    diags.push(d);
                }
            }
        }
        Err(e) => diags.push(syntax_error(&c.file, field, text, span, &e, "template")),
    }
}

fn expression(
    c: &Compiled,
    scope: Scope,
    field: &str,
    text: &str,
    span: Span,
    diags: &mut Vec<Diagnostic>,
) {
    match expression_references(text) {
        Ok(refs) => {
            for path in refs.paths {
                // The exact position costs a scan of the file: only for a path that is wrong.
                if let Some(mut d) = check_path(c, scope, field, &path, span) {
                    d.span = Some(path_span(&c.file, text, span, &path));
                    diags.push(d);
                }
            }
        }
        Err(e) => diags.push(syntax_error(&c.file, field, text, span, &e, "expression")),
    }
}

/// Byte offset in the file of the first character of `text`, when the scalar at `span` is
/// written verbatim (plain, or quoted without escapes, on one line).
fn verbatim_start(file: &SourceFile, text: &str, span: Span) -> Option<usize> {
    let off = span.offset?;
    let src = file.text.get(off..)?;
    if src.starts_with(text) {
        Some(off)
    } else if src.starts_with(['"', '\'']) && src.get(1..).is_some_and(|s| s.starts_with(text)) {
        Some(off + 1)
    } else {
        None
    }
}

/// The position of a byte offset of the file.
fn span_at(file: &SourceFile, offset: usize) -> Span {
    let (line, column) = file.line_col(offset);
    Span {
        line,
        column,
        offset: Some(offset),
    }
}

/// Where a variable (`params.x`, `steps.a.result`) is read in a template or expression, when it
/// is written out as such; else the whole scalar.
fn path_span(file: &SourceFile, text: &str, span: Span, path: &str) -> Span {
    let Some(base) = verbatim_start(file, text, span) else {
        return span;
    };
    let word = |c: char| c.is_alphanumeric() || c == '_' || c == '.';
    text.match_indices(path)
        .map(|(i, _)| i)
        .find(|&i| !text[..i].ends_with(word) && !text[i + path.len()..].starts_with(word))
        .map_or(span, |i| span_at(file, base + i))
}

/// A parse error inside a template, pointed at the exact character when the scalar is written
/// verbatim in the file (plain or quoted on one line), else at the scalar.
fn syntax_error(
    file: &SourceFile,
    field: &str,
    text: &str,
    span: Span,
    e: &minijinja::Error,
    what: &str,
) -> Diagnostic {
    let mut at = span;
    if let (Some(base), Some(range)) = (verbatim_start(file, text, span), e.range()) {
        at = span_at(file, base + range.start.min(text.len()));
    }
    Diagnostic::new(
        "template-syntax",
        format!("failed to parse {what} in `{field}`: {}", crate::template::describe(e)),
        at,
    )
    .with_help(if what == "template" {
        "templates use minijinja syntax: `{{ params.name }}`; a literal `{{` is written `{{ '{{' }}`"
    } else {
        "expressions use minijinja syntax, e.g. `result.status == 200 and params.force`"
    })
}

fn check_path(
    c: &Compiled,
    scope: Scope,
    field: &str,
    path: &str,
    span: Span,
) -> Option<Diagnostic> {
    let mut parts = path.split('.');
    let root = parts.next().unwrap_or_default();
    let second = parts.next();
    let third = parts.next();
    let rb = &c.runbook;
    let in_step = |what: &str| match scope.step {
        Some(i) => format!("step `{}` ({field}) {what}", c.steps[i].id),
        None => format!("`{field}` {what}"),
    };
    match root {
        "params" => {
            let name = second?;
            if rb.params.contains_key(name) {
                return None;
            }
            let d = Diagnostic::new("undeclared-param", in_step(&format!("reads `params.{name}`, which is not declared")), span);
            Some(match did_you_mean(name, rb.params.keys().map(String::as_str)) {
                Some(s) => d.with_help(format!("did you mean `params.{s}`?")),
                None => d.with_help(format!("declare it under `params:`, e.g. `{name}: {{type: string}}`")),
            })
        }
        "secrets" => {
            let name = second?;
            if rb.secrets.contains_key(name) {
                return None;
            }
            let d = Diagnostic::new("undeclared-secret", in_step(&format!("reads `secrets.{name}`, which is not declared")), span);
            Some(match did_you_mean(name, rb.secrets.keys().map(String::as_str)) {
                Some(s) => d.with_help(format!("did you mean `secrets.{s}`?")),
                None => d.with_help(format!("declare it under `secrets:`, e.g. `{name}: {{env: {}}}`", name.to_uppercase())),
            })
        }
        "steps" => {
            if !scope.steps {
                return Some(
                    Diagnostic::new("steps-in-header", format!("`{field}` reads `{path}`, but it is evaluated before any step runs"), span)
                        .with_help("runbook-level templates (preflight, lock) can read params, secrets, run and env"),
                );
            }
            let id = second?;
            let Some(&target) = c.index_by_id.get(id) else {
                let d = Diagnostic::new("unknown-step", in_step(&format!("reads `steps.{id}`, which is not a step")), span);
                let keys: Vec<String> = c.steps.iter().map(|s| template_key(&s.id)).collect();
                return Some(match did_you_mean(id, keys.iter().map(String::as_str)) {
                    Some(s) => d.with_help(format!("did you mean `steps.{s}`?")),
                    None => d.with_help("name a step upstream of this one; in templates a step id's `-` is written `_`"),
                });
            };
            if let Some(f) = third
                && !STEP_FIELDS.contains(&f) {
                    let d = Diagnostic::new("unknown-field", in_step(&format!("reads `steps.{id}.{f}`; steps have no `{f}`")), span);
                    return Some(match did_you_mean(f, STEP_FIELDS.iter().copied()) {
                        Some(s) => d.with_help(format!("did you mean `steps.{id}.{s}`?")),
                        None => d.with_help(format!("a step has: {}", STEP_FIELDS.join(", "))),
                    });
                }
            let me = scope.step.filter(|_| scope.graph)?;
            if reachable(c, target, me) || (scope.own && target == me) {
                return None;
            }
            let target_id = &c.steps[target].id;
            let (msg, help) = if target == me {
                (
                    in_step(&format!("reads its own results (`steps.{id}`) before it has run")),
                    "a step's own result is `result`, and only in `assert`, `outputs` and `retry.on.expr`".to_owned(),
                )
            } else if target >= c.main_count && me < c.main_count {
                (
                    in_step(&format!("reads `steps.{id}`, a `finally` step, which runs after it")),
                    format!("`finally` steps run after every main step; read `steps.{id}` from another `finally` step, or make `{target_id}` a main step"),
                )
            } else {
                (
                    in_step(&format!("reads `steps.{id}`, but `{target_id}` is not upstream of it")),
                    format!("add `{target_id}` to this step's `needs` (directly or through a step that needs it), so its result exists when this step runs"),
                )
            };
            Some(Diagnostic::new("not-upstream", msg, span).with_help(help))
        }
        "run" => {
            let f = second?;
            if RUN_FIELDS.contains(&f) {
                return None;
            }
            let d = Diagnostic::new("unknown-field", format!("`{field}` reads `run.{f}`; a run has no `{f}`"), span);
            Some(match did_you_mean(f, RUN_FIELDS.iter().copied()) {
                Some(s) => d.with_help(format!("did you mean `run.{s}`?")),
                None => d.with_help(format!("a run has: {}", RUN_FIELDS.join(", "))),
            })
        }
        "env" => None,
        "result" if scope.result => None,
        "result" => Some(
            Diagnostic::new("result-outside-assert", format!("`{field}` reads `result`, which only exists in `assert`, `outputs` and `retry.on`"), span)
                .with_help("read another step's result as `steps.<id>.result`"),
        ),
        other => {
            let mut roots = vec!["params", "secrets", "steps", "run", "env"];
            if scope.result {
                roots.push("result");
            }
            let d = Diagnostic::new("unknown-variable", format!("`{field}` reads `{other}`, which is not defined"), span);
            Some(match did_you_mean(other, roots.iter().copied()) {
                Some(s) => d.with_help(format!("did you mean `{s}`?")),
                None => d.with_help(format!("templates can read: {}", roots.join(", "))),
            })
        }
    }
}

/// Whether `target`'s results exist when `me` runs.
fn reachable(c: &Compiled, target: usize, me: usize) -> bool {
    let main = c.main_count;
    match (target < main, me < main) {
        (true, true) => graph::is_upstream_by_depth(&c.graph, target, me, |k| c.depth[k]),
        // Every main step has ended before `finally` starts.
        (true, false) => true,
        (false, true) => false,
        (false, false) => {
            graph::is_upstream_by_depth(&c.finally_graph, target - main, me - main, |k| {
                c.depth[main + k]
            })
        }
    }
}

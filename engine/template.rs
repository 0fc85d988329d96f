//! Templates and expressions: one minijinja environment with strict undefined; values are data.
//!
//! A value interpolated into a target that parses text (a shell command, a URL, an SQL query)
//! never becomes part of that text's syntax. Rendering for such a target records each value as a
//! *hole* ([`Holes`]); the target then decides how the value travels: an environment variable
//! referenced from the script (`run:`), a percent-encoded URL component (`http.url`), a bound
//! `$n` parameter (`sql.query`). `{{ x | safe }}` opts out for trusted fragments: its text is
//! inserted raw. At plan time, values that only exist at run time (upstream results, secrets)
//! are placeholders that render as themselves, so a reviewer sees exactly what is fixed and what
//! not.

pub mod shell;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, OnceLock};

use minijinja::value::{Object, Value};
use minijinja::{Environment, ErrorKind, UndefinedBehavior};

/// How values interpolated into a template travel to their target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// A `run:` command: each value becomes an environment variable the script references.
    Shell,
    /// A URL: values are percent-encoded path segments or query components.
    Url,
    /// An SQL query: values become bound `$n` parameters.
    Sql,
    /// A `PromQL` query: values in string literals are escaped for them, values outside must
    /// be plain numbers or durations.
    Promql,
    /// Interpolated as-is (messages, env values, bodies: never parsed by a shell).
    None,
}

/// A template could not be rendered (syntax error, undefined value, failing filter, a value in
/// a place where it cannot be data).
#[derive(Debug, thiserror::Error)]
#[error("failed to render template: {}", describe(.source))]
pub struct RenderError {
    /// What minijinja reported.
    #[source]
    pub source: minijinja::Error,
}

impl RenderError {
    /// An error of this engine's own (not minijinja's) about a rendered template.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            source: minijinja::Error::new(ErrorKind::InvalidOperation, message.into()),
        }
    }
}

/// The human part of a minijinja error, without its internal template name.
pub fn describe(err: &minijinja::Error) -> String {
    match err.detail() {
        Some(d) => format!("{}: {d}", err.kind()),
        None => err.kind().to_string(),
    }
}

/// Quote a string for a POSIX shell; plain words stay as they are for readability.
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_@%+=:,./-".contains(&b));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Quote an SQL identifier: `"…"` with inner `"` doubled (the `ident` filter).
pub fn sql_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `text` with every RE2 metacharacter backslash-escaped, so that a regex (a `PromQL` `=~`
/// matcher) matches it literally (the `regex_escape` filter). Still a value: where it lands,
/// it is escaped for its string as any other.
pub fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if r"\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Marks where a hole is in rendered text: `OPEN index CLOSE` (private-use characters).
const OPEN: char = '\u{E000}';
const CLOSE: char = '\u{E001}';

/// One value interpolated into a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoleValue {
    /// The value as text.
    pub text: String,
    /// Whether it is a plan-time placeholder (`⟨steps.x.result⟩`, `***`): shown as itself.
    pub placeholder: bool,
}

/// A rendered template whose values are kept apart from its text.
#[derive(Debug, Clone)]
pub struct Holes {
    pieces: Vec<Piece>,
    /// The values, in the order they appear.
    pub values: Vec<HoleValue>,
}

/// A part of a rendered template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// The author's text (and `| safe` values).
    Text(String),
    /// The value with this index in [`Holes::values`].
    Hole(usize),
}

impl Holes {
    /// Text and holes in order.
    pub fn pieces(&self) -> &[Piece] {
        &self.pieces
    }

    /// The text with every value substituted as it is (for targets that take values verbatim).
    pub fn plain(&self) -> String {
        self.join(|_, v| v.text.clone())
    }

    /// The text with each value replaced by what `f` makes of it.
    pub fn join(&self, mut f: impl FnMut(usize, &HoleValue) -> String) -> String {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Hole(i) => out.push_str(&f(*i, &self.values[*i])),
            }
        }
        out
    }

    fn parse(text: &str, values: Vec<HoleValue>) -> Result<Self, RenderError> {
        let mut pieces = Vec::new();
        let mut rest = text;
        let mut next = 0;
        while let Some(open) = rest.find(OPEN) {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + OPEN.len_utf8()..];
            let index = after
                .find(CLOSE)
                .and_then(|close| Some((after[..close].parse::<usize>().ok()?, close)));
            match index {
                Some((i, close)) if i == next => {
                    pieces.push(Piece::Hole(i));
                    next += 1;
                    rest = &after[close + CLOSE.len_utf8()..];
                }
                _ => return Err(reserved()),
            }
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        if next != values.len() || text.contains(CLOSE) && next == 0 {
            return Err(reserved());
        }
        Ok(Self { pieces, values })
    }
}

fn reserved() -> RenderError {
    RenderError::invalid("the template contains the reserved characters U+E000/U+E001; remove them")
}

thread_local! {
    /// The values of the template being rendered with holes on this thread (rendering is
    /// synchronous, so one slot per thread suffices).
    static COLLECT: RefCell<Option<Vec<HoleValue>>> = const { RefCell::new(None) };
}

/// The process-wide template environment.
pub fn environment() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // Every render and evaluation runs on a budget: one fuel per instruction, and one per
        // 64 bytes of data made or written, so a loop or `"x" * 10**9` fails with an error
        // instead of hanging or exhausting memory: 1,000,000 fuel is about 1s and 64 MiB of
        // output at most.
        env.set_fuel(Some(1_000_000));
        env.set_formatter(|out, state, value| {
            // Shells and YAML-minded tools expect `true`/`false`, not Python's `True`/`False`.
            if value.kind() == minijinja::value::ValueKind::Bool {
                return out
                    .write_str(if value.is_true() { "true" } else { "false" })
                    .map_err(minijinja::Error::from);
            }
            if !value.is_safe() {
                let placeholder = value.downcast_object_ref::<Placeholder>().is_some();
                let index = COLLECT.with_borrow_mut(|c| {
                    c.as_mut().map(|values| {
                        values.push(HoleValue {
                            text: value.to_string(),
                            placeholder,
                        });
                        values.len() - 1
                    })
                });
                if let Some(i) = index {
                    return write!(out, "{OPEN}{i}{CLOSE}").map_err(minijinja::Error::from);
                }
            }
            minijinja::escape_formatter(out, state, value)
        });
        // Values are always data now; `shell` is kept so older runbooks still compile.
        env.add_filter("shell", |v: Value| v);
        env.add_filter("regex_escape", |v: Value| regex_escape(&v.to_string()));
        env.add_filter("ident", |v: Value| {
            Value::from_safe_string(sql_ident(&v.to_string()))
        });
        env
    })
}

/// Renders templates against one context (params, secrets, steps, run, env).
#[derive(Clone)]
pub struct Renderer<'a> {
    env: &'a Environment<'static>,
    ctx: Value,
}

impl fmt::Debug for Renderer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Renderer").finish_non_exhaustive()
    }
}

impl Renderer<'static> {
    /// A renderer over the given context.
    pub fn new(ctx: Value) -> Self {
        Self {
            env: environment(),
            ctx,
        }
    }
}

/// A `run:` command ready to execute: the script references its values, which travel in the
/// environment of the shell, never in the script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellCommand {
    /// What `/bin/sh -c` runs: the author's text with `"${RB_V1}"`-style references.
    pub script: String,
    /// The referenced variables and their values.
    pub env: Vec<(String, String)>,
    /// The equivalent command with the values written in, quoted for its context: what plans,
    /// journals and the audit log show (never executed).
    pub display: String,
}

/// The environment variable carrying a command's value number `index` (0-based).
pub fn value_var(index: usize) -> String {
    format!("RB_V{}", index + 1)
}

/// `text` escaped for the inside of `"…"` (or an unquoted here-document body, when `dq` is
/// false and `"` needs no escape).
fn escape_double(text: &str, dq: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '\\' | '$' | '`') || (dq && c == '"') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl Renderer<'_> {
    /// Render `text`. `Escape::None` substitutes values as they are; `Escape::Shell` gives the
    /// display form of a command ([`ShellCommand::display`]); `Escape::Url` and `Escape::Sql`
    /// substitute values as they are (their kinds encode or bind them with [`Self::holes`]).
    ///
    /// # Errors
    /// Syntax errors, references to undefined values, and (`Escape::Shell`) values in a place of
    /// the command where they cannot be data.
    pub fn render(&self, text: &str, escape: Escape) -> Result<String, RenderError> {
        if !text.contains("{{") && !text.contains("{%") {
            return Ok(text.to_owned());
        }
        match escape {
            Escape::Shell => Ok(self.shell(text, &|v| v.to_owned())?.display),
            Escape::Url | Escape::Sql | Escape::Promql => Ok(self.holes(text)?.plain()),
            Escape::None => self
                .env
                .render_str(text, &self.ctx)
                .map_err(|source| RenderError { source }),
        }
    }

    /// Render `text`, keeping every interpolated value (except `| safe` ones) apart.
    ///
    /// # Errors
    /// Syntax errors and references to undefined values.
    pub fn holes(&self, text: &str) -> Result<Holes, RenderError> {
        if !text.contains("{{") && !text.contains("{%") {
            return Holes::parse(text, Vec::new());
        }
        let previous = COLLECT.with_borrow_mut(|c| c.replace(Vec::new()));
        let rendered = self.env.render_str(text, &self.ctx);
        let values = COLLECT.with_borrow_mut(|c| std::mem::replace(c, previous));
        let rendered = rendered.map_err(|source| RenderError { source })?;
        Holes::parse(&rendered, values.unwrap_or_default())
    }

    /// Render a `run:` command: its script, the environment carrying its values, and its display
    /// form, in which each value has gone through `mask` (secret masking) before quoting.
    ///
    /// # Errors
    /// Syntax errors, references to undefined values, and values in a place of the command where
    /// they cannot be data (inside single quotes, backticks…).
    pub fn shell(
        &self,
        text: &str,
        mask: &dyn Fn(&str) -> String,
    ) -> Result<ShellCommand, RenderError> {
        let holes = self.holes(text)?;
        let mut toks = Vec::new();
        for p in holes.pieces() {
            match p {
                Piece::Text(t) => toks.extend(t.chars().map(shell::Tok::Char)),
                Piece::Hole(_) => toks.push(shell::Tok::Hole),
            }
        }
        let contexts = shell::contexts(&toks)
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                c.map_err(|u| {
                    RenderError::invalid(format!(
                        "value {} of the command ({}) is {}: {}",
                        i + 1,
                        mask(&holes.values[i].text),
                        u.what(),
                        u.fix()
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let script = holes.join(|i, _| match contexts[i] {
            shell::Context::Bare => format!("\"${{{}}}\"", value_var(i)),
            shell::Context::DoubleQuoted | shell::Context::HeredocBody => {
                format!("${{{}}}", value_var(i))
            }
        });
        let display = holes.join(|i, v| {
            if v.placeholder {
                return v.text.clone();
            }
            let shown = mask(&v.text);
            match contexts[i] {
                shell::Context::Bare => shell_quote(&shown),
                shell::Context::DoubleQuoted => escape_double(&shown, true),
                shell::Context::HeredocBody => escape_double(&shown, false),
            }
        });
        let env = holes
            .values
            .iter()
            .enumerate()
            .map(|(i, v)| (value_var(i), v.text.clone()))
            .collect();
        Ok(ShellCommand {
            script,
            env,
            display,
        })
    }

    /// Evaluate an expression (a guard, an assert, an output).
    ///
    /// # Errors
    /// Syntax errors and references to undefined values.
    pub fn eval(&self, expr: &str) -> Result<Value, RenderError> {
        self.env
            .compile_expression(expr)
            .and_then(|e| e.eval(&self.ctx))
            .map_err(|source| RenderError { source })
    }

    /// The same renderer with one more root variable bound (`result` in asserts and outputs).
    #[must_use]
    pub fn with(&self, name: &str, value: Value) -> Self {
        Self {
            env: self.env,
            ctx: minijinja::context! { ..Value::from(std::collections::BTreeMap::from([(name.to_owned(), value)])), ..self.ctx.clone() },
        }
    }

    /// The same renderer with `result` bound to an action's result (asserts, gates, outputs).
    #[must_use]
    pub fn with_result(&self, result: &serde_json::Value) -> Self {
        self.with("result", Value::from(minijinja::value::Serde(result)))
    }

    /// The context.
    pub fn context(&self) -> &Value {
        &self.ctx
    }
}

/// What a template or expression refers to, as dotted paths (`params.backup`, `steps.stop.result`).
#[derive(Debug, Default)]
pub struct References {
    /// Dotted paths of undeclared variables.
    pub paths: BTreeSet<String>,
}

/// Parse a template and list the variables it reads.
///
/// # Errors
/// When the template does not parse; the error carries minijinja's byte range.
pub fn template_references(text: &str) -> Result<References, minijinja::Error> {
    if !text.contains("{{") && !text.contains("{%") {
        return Ok(References::default());
    }
    let tmpl = environment().template_from_str(text)?;
    Ok(References {
        paths: tmpl.undeclared_variables(true).into_iter().collect(),
    })
}

/// Parse an expression and list the variables it reads.
///
/// # Errors
/// When the expression does not parse.
pub fn expression_references(text: &str) -> Result<References, minijinja::Error> {
    let expr = environment().compile_expression(text)?;
    Ok(References {
        paths: expr.undeclared_variables(true).into_iter().collect(),
    })
}

/// A value known only at run time. Renders as `⟨path⟩`, or as `***` for secrets.
#[derive(Debug)]
pub struct Placeholder {
    path: String,
    secret: bool,
}

impl Placeholder {
    /// A placeholder for `path`.
    pub fn value(path: impl Into<String>, secret: bool) -> Value {
        Value::from_object(Placeholder {
            path: path.into(),
            secret,
        })
    }
}

impl Object for Placeholder {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        Some(Placeholder::value(
            format!("{}.{key}", self.path),
            self.secret,
        ))
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.secret {
            f.write_str("***")
        } else {
            write!(f, "⟨{}⟩", self.path)
        }
    }
}

/// A part of a template's source, for checks that need to know where values land before any
/// value exists (the compiler's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourcePart {
    /// Literal text.
    Text(String),
    /// A `{{ … }}` interpolation: its byte offset in the source and its expression.
    Expr {
        /// Byte offset of its `{{`.
        offset: usize,
        /// The expression, without delimiters and whitespace-control marks.
        expr: String,
    },
}

impl SourcePart {
    /// Whether this is an interpolation whose last filter is `name` (`{{ x | safe }}`).
    pub fn filtered_by(&self, name: &str) -> bool {
        match self {
            SourcePart::Text(_) => false,
            SourcePart::Expr { expr, .. } => expr
                .rsplit_once('|')
                .is_some_and(|(_, last)| last.trim() == name),
        }
    }
}

/// Where a `{{`/`{%`/`{#` tag opened at `start` ends (after its closing mark), skipping string
/// literals inside it.
fn tag_end(text: &str, start: usize, close: &str) -> usize {
    let bytes = text.as_bytes();
    let mut i = start + 2;
    let mut quote: Option<u8> = None;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(_) if b == b'\\' => i += 1,
            Some(q) if b == q => quote = None,
            None if close != "#}" && (b == b'\'' || b == b'"') => quote = Some(b),
            None if text[i..].starts_with(close) => return i + close.len(),
            _ => {}
        }
        i += 1;
    }
    text.len()
}

/// Split a template's source into literal text and interpolations; statements (`{% … %}`) and
/// comments are dropped (their bodies stay, in source order), `{% raw %}` bodies are text.
pub fn source_parts(text: &str) -> Vec<SourcePart> {
    let mut out = Vec::new();
    let mut literal = String::new();
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        let Some(open) = rest.find('{') else {
            literal.push_str(rest);
            break;
        };
        literal.push_str(&rest[..open]);
        let at = i + open;
        let tail = &text[at..];
        if tail.starts_with("{{") {
            let end = tag_end(text, at, "}}");
            let inner = text[at + 2..end.saturating_sub(2).max(at + 2)].trim();
            let expr = inner
                .trim_start_matches(['-', '+'])
                .trim_end_matches(['-', '+'])
                .trim()
                .to_owned();
            if !literal.is_empty() {
                out.push(SourcePart::Text(std::mem::take(&mut literal)));
            }
            out.push(SourcePart::Expr { offset: at, expr });
            i = end;
        } else if tail.starts_with("{%") {
            let end = tag_end(text, at, "%}");
            let inner = text[at + 2..end.saturating_sub(2).max(at + 2)]
                .trim_matches(['-', '+', ' ', '\t', '\n']);
            i = end;
            if inner == "raw" {
                let body_end = text[i..].find("{%").map_or(text.len(), |j| i + j);
                literal.push_str(&text[i..body_end]);
                i = tag_end(text, body_end, "%}");
            }
        } else if tail.starts_with("{#") {
            i = tag_end(text, at, "#}");
        } else {
            literal.push('{');
            i = at + 1;
        }
    }
    if !literal.is_empty() {
        out.push(SourcePart::Text(literal));
    }
    out
}

/// Interpolations of a `run:` command that land where a value cannot be data: the byte offset
/// of each one's `{{` and why. `| safe` interpolations are the author's shell text and are not
/// checked.
pub fn shell_problems(text: &str) -> Vec<(usize, shell::Unsafe)> {
    let parts = source_parts(text);
    let mut toks = Vec::new();
    let mut offsets = Vec::new();
    for p in &parts {
        match p {
            SourcePart::Text(t) => toks.extend(t.chars().map(shell::Tok::Char)),
            SourcePart::Expr { .. } if p.filtered_by("safe") => toks.push(shell::Tok::Char('x')),
            SourcePart::Expr { offset, .. } => {
                toks.push(shell::Tok::Hole);
                offsets.push(*offset);
            }
        }
    }
    shell::contexts(&toks)
        .into_iter()
        .zip(offsets)
        .filter_map(|(c, off)| c.err().map(|u| (off, u)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(x: &str) -> Renderer<'static> {
        Renderer::new(minijinja::context! { params => minijinja::context! { x => x, n => 3 } })
    }

    #[test]
    fn quotes_only_what_needs_it() {
        assert_eq!(shell_quote("backup-2024.01"), "backup-2024.01");
        assert_eq!(shell_quote("$(touch pwned); x"), "'$(touch pwned); x'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn run_values_travel_in_the_environment() {
        let r = ctx("a b; rm -rf /");
        let c = r
            .shell(
                "echo {{ params.x }} \"at {{ params.x }}\" {{ params.n }}",
                &|v| v.to_owned(),
            )
            .unwrap();
        assert_eq!(c.script, r#"echo "${RB_V1}" "at ${RB_V2}" "${RB_V3}""#);
        assert_eq!(
            c.env,
            vec![
                ("RB_V1".to_owned(), "a b; rm -rf /".to_owned()),
                ("RB_V2".to_owned(), "a b; rm -rf /".to_owned()),
                ("RB_V3".to_owned(), "3".to_owned()),
            ]
        );
        assert_eq!(c.display, r#"echo 'a b; rm -rf /' "at a b; rm -rf /" 3"#);
        let safe = r
            .shell("echo {{ params.x | safe }}", &|v| v.to_owned())
            .unwrap();
        assert_eq!(safe.script, "echo a b; rm -rf /");
        assert!(safe.env.is_empty());
        assert_eq!(
            r.render("{{ params.x }}", Escape::None).unwrap(),
            "a b; rm -rf /"
        );
    }

    #[test]
    fn display_escapes_for_the_context_and_masks() {
        let r = ctx("$(x) `y` \"z\" \\");
        let c = r
            .shell("echo \"v={{ params.x }}\"", &|v| v.replace('y', "*"))
            .unwrap();
        assert_eq!(c.display, r#"echo "v=\$(x) \`*\` \"z\" \\""#);
        assert_eq!(c.env[0].1, "$(x) `y` \"z\" \\");
    }

    #[test]
    fn values_in_single_quotes_are_refused() {
        let e = ctx("v")
            .shell("echo '{{ params.x }}'", &|v| v.to_owned())
            .unwrap_err();
        assert!(e.to_string().contains("single quotes"), "{e}");
        assert_eq!(
            shell_problems("echo '{{ params.x }}' {{ params.x | safe }} '{{ params.x|safe }}'"),
            vec![(6, shell::Unsafe::SingleQuotes)]
        );
    }

    #[test]
    fn loops_make_one_variable_per_value() {
        let r = Renderer::new(
            minijinja::context! { params => minijinja::context! { hs => vec!["a;b", "c"] } },
        );
        let c = r
            .shell("{% for h in params.hs %}ping {{ h }}; {% endfor %}", &|v| {
                v.to_owned()
            })
            .unwrap();
        assert_eq!(c.script, r#"ping "${RB_V1}"; ping "${RB_V2}"; "#);
        assert_eq!(c.env.len(), 2);
    }

    #[test]
    fn reserved_characters_are_refused() {
        let r = ctx("v");
        assert!(r.holes("a \u{E000}0\u{E001} {{ params.x }}").is_err());
    }

    #[test]
    fn source_parts_skip_statements_and_strings() {
        let parts = source_parts(
            "a {{ \"}}\" }} {% if x %}b{% endif %}{# c #}{% raw %}{{ d }}{% endraw %}",
        );
        assert_eq!(
            parts,
            vec![
                SourcePart::Text("a ".into()),
                SourcePart::Expr {
                    offset: 2,
                    expr: "\"}}\"".into()
                },
                SourcePart::Text(" b{{ d }}".into()),
            ]
        );
    }

    #[test]
    fn undefined_is_an_error() {
        let r = Renderer::new(minijinja::context! { params => minijinja::context! {} });
        assert!(r.render("{{ params.nope }}", Escape::None).is_err());
    }

    #[test]
    fn an_undefined_value_is_named() {
        let r = Renderer::new(minijinja::context! { params => minijinja::context! { a => 1 } });
        for escape in [Escape::None, Escape::Shell, Escape::Url] {
            let e = r
                .render("echo {{ params.a }} {{ params.nope }} x", escape)
                .expect_err("undefined");
            assert_eq!(
                e.to_string(),
                "failed to render template: undefined value: `params.nope` is undefined",
                "{escape:?}"
            );
        }
        // A map without the key (an alert's labels in `runbook serve`) and an expression.
        let r = Renderer::new(minijinja::context! {
            alert => minijinja::context! { labels => std::collections::BTreeMap::from([("service", "api")]) }
        });
        let e = r
            .render("{{ alert.labels.namespace }}", Escape::None)
            .expect_err("undefined");
        assert!(e.to_string().contains("`alert.labels.namespace`"), "{e}");
        let e = r.eval("alert.labels.zone == 'a'").expect_err("undefined");
        assert!(e.to_string().contains("alert.labels.zone"), "{e}");
    }

    #[test]
    fn placeholders_render_their_path() {
        let r = Renderer::new(
            minijinja::context! { steps => Placeholder::value("steps", false), secrets => Placeholder::value("secrets", true) },
        );
        assert_eq!(
            r.render(
                "kubectl scale --replicas={{ steps.stop.result.previous }} {{ secrets.token }}",
                Escape::Shell
            )
            .unwrap(),
            "kubectl scale --replicas=⟨steps.stop.result.previous⟩ ***"
        );
    }

    #[test]
    fn references_are_dotted_paths() {
        let refs = template_references("x {{ params.a }} {{ steps.s.result.b }}").unwrap();
        assert!(refs.paths.contains("params.a"), "{:?}", refs.paths);
        assert!(
            refs.paths.iter().any(|p| p.starts_with("steps.s")),
            "{:?}",
            refs.paths
        );
    }
}

//! Templates and expressions: one minijinja environment with strict undefined and shell quoting.
//!
//! Values interpolated into `run:` commands are shell-quoted by default, the way HTML templates
//! escape by default: `{{ params.x }}` can never inject a command. `{{ x | safe }}` opts out for
//! trusted fragments. At plan time, values that only exist at run time (upstream results, secrets)
//! are placeholders that render as themselves, so a reviewer sees exactly what is fixed and what not.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, OnceLock};

use minijinja::value::{Object, Value};
use minijinja::{AutoEscape, Environment, UndefinedBehavior};

/// How values interpolated into a template are escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// POSIX shell single-quoting (for `run:` commands).
    Shell,
    /// Interpolated as-is (URLs, messages, env values: never parsed by a shell).
    None,
}

/// A template could not be rendered (syntax error, undefined value, failing filter).
#[derive(Debug, thiserror::Error)]
#[error("failed to render template: {}", describe(.source))]
pub struct RenderError {
    /// What minijinja reported.
    #[source]
    pub source: minijinja::Error,
}

/// The human part of a minijinja error, without its internal template name.
pub fn describe(err: &minijinja::Error) -> String {
    match err.detail() {
        Some(d) => format!("{}: {d}", err.kind()),
        None => err.kind().to_string(),
    }
}

const SHELL_TEMPLATE: &str = "run.sh";
const TEXT_TEMPLATE: &str = "text";

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
        env.set_auto_escape_callback(|name| {
            if name == SHELL_TEMPLATE {
                AutoEscape::Custom("shell".into())
            } else {
                AutoEscape::None
            }
        });
        env.set_formatter(|out, state, value| {
            // Shells and YAML-minded tools expect `true`/`false`, not Python's `True`/`False`.
            if value.kind() == minijinja::value::ValueKind::Bool {
                return out
                    .write_str(if value.is_true() { "true" } else { "false" })
                    .map_err(minijinja::Error::from);
            }
            if matches!(state.auto_escape(), AutoEscape::Custom(_)) {
                if value.is_safe() || value.downcast_object_ref::<Placeholder>().is_some() {
                    write!(out, "{value}").map_err(minijinja::Error::from)?;
                } else {
                    let text = value.to_string();
                    out.write_str(&shell_quote(&text))
                        .map_err(minijinja::Error::from)?;
                }
                Ok(())
            } else {
                minijinja::escape_formatter(out, state, value)
            }
        });
        env.add_filter("shell", |v: Value| shell_quote(&v.to_string()));
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

impl Renderer<'_> {
    /// Render `text`, escaping interpolated values as `escape` says.
    ///
    /// # Errors
    /// Syntax errors and references to undefined values.
    pub fn render(&self, text: &str, escape: Escape) -> Result<String, RenderError> {
        if !text.contains("{{") && !text.contains("{%") {
            return Ok(text.to_owned());
        }
        let name = match escape {
            Escape::Shell => SHELL_TEMPLATE,
            Escape::None => TEXT_TEMPLATE,
        };
        self.env
            .render_named_str(name, text, &self.ctx)
            .map_err(|source| RenderError { source })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_only_what_needs_it() {
        assert_eq!(shell_quote("backup-2024.01"), "backup-2024.01");
        assert_eq!(shell_quote("$(touch pwned); x"), "'$(touch pwned); x'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn run_templates_quote_values_and_safe_opts_out() {
        let r = Renderer::new(
            minijinja::context! { params => minijinja::context! { x => "a b; rm -rf /" } },
        );
        assert_eq!(
            r.render("echo {{ params.x }}", Escape::Shell).unwrap(),
            "echo 'a b; rm -rf /'"
        );
        assert_eq!(
            r.render("echo {{ params.x | safe }}", Escape::Shell)
                .unwrap(),
            "echo a b; rm -rf /"
        );
        assert_eq!(
            r.render("{{ params.x }}", Escape::None).unwrap(),
            "a b; rm -rf /"
        );
    }

    #[test]
    fn undefined_is_an_error() {
        let r = Renderer::new(minijinja::context! { params => minijinja::context! {} });
        assert!(r.render("{{ params.nope }}", Escape::None).is_err());
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

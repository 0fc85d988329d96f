//! Step and check kinds: one file per kind, each behind the [`Kind`] trait.
//!
//! A kind owns its YAML spec (and so its part of the JSON Schema), the templates inside it, whether
//! it changes the world, how the plan shows it, and how the executor performs it.

pub mod approve;
pub mod call;
pub mod expr;
pub mod http;
pub mod k8s;
pub mod prometheus;
pub mod run;
pub mod sleep;
pub mod sql;

use crate::model::{Check, Compensation, Span, Spanned, Step};
use crate::template::{Escape, RenderError, Renderer};

/// A template-bearing field of a spec, so the compiler can check it and the plan can render it.
#[derive(Debug, Clone)]
pub struct TemplateField<'a> {
    /// Field path shown in errors, e.g. `http.url`.
    pub field: String,
    /// The template text.
    pub text: &'a str,
    /// Where the text was written.
    pub span: Span,
    /// How interpolated values are escaped.
    pub escape: Escape,
}

impl<'a> TemplateField<'a> {
    /// A field whose text was read from the file.
    pub fn new(field: impl Into<String>, text: &'a Spanned<String>, escape: Escape) -> Self {
        Self {
            field: field.into(),
            text: &text.value,
            span: text.span,
            escape,
        }
    }
}

/// One line of a plan's description of an action: a label and its rendered value.
pub type DescriptionLine = (String, String);

/// What every kind provides to the compiler and the planner.
pub trait Kind {
    /// The key that selects this kind in YAML.
    fn name(&self) -> &'static str;
    /// Every template in the spec, with how its values are escaped.
    fn templates(&self) -> Vec<TemplateField<'_>>;
    /// Whether performing it changes the world (a plan flags mutating steps).
    fn mutates(&self) -> bool;
    /// Whether repeating it is harmless, so a resumed run may re-run it when it was in flight.
    fn idempotent(&self) -> bool {
        !self.mutates()
    }
    /// The rendered action as a reviewer reads it.
    ///
    /// # Errors
    /// When a template cannot be rendered with the plan's context.
    fn describe(&self, renderer: &Renderer<'_>) -> Result<Vec<DescriptionLine>, RenderError>;
}

/// The action of a step, or of a check, or of a compensation: exactly one kind.
#[derive(Debug, Clone, Copy)]
pub enum Action<'a> {
    /// A shell command.
    Run(run::RunAction<'a>),
    /// An HTTP request.
    Http(&'a Spanned<http::HttpSpec>),
    /// A Kubernetes operation.
    K8s(&'a Spanned<k8s::K8sSpec>),
    /// SQL.
    Sql(&'a Spanned<sql::SqlSpec>),
    /// A pause.
    Sleep(sleep::SleepAction<'a>),
    /// A human approval.
    Approve(&'a Spanned<approve::ApproveSpec>),
    /// A sub-runbook.
    Call(&'a Spanned<call::CallSpec>),
    /// A `PromQL` query (checks only).
    Prometheus(&'a Spanned<prometheus::PrometheusSpec>),
    /// An expression (checks only).
    Expr(expr::ExprAction<'a>),
}

impl Action<'_> {
    /// The kind behind the action.
    pub fn kind(&self) -> &dyn Kind {
        match self {
            Action::Run(a) => a,
            Action::Http(a) => &a.value,
            Action::K8s(a) => &a.value,
            Action::Sql(a) => &a.value,
            Action::Sleep(a) => a,
            Action::Approve(a) => &a.value,
            Action::Call(a) => &a.value,
            Action::Prometheus(a) => &a.value,
            Action::Expr(a) => a,
        }
    }

    /// Where the action's key was written.
    pub fn span(&self) -> Span {
        match self {
            Action::Run(a) => a.command.span,
            Action::Http(a) => a.span,
            Action::K8s(a) => a.span,
            Action::Sql(a) => a.span,
            Action::Sleep(a) => a.duration.span,
            Action::Approve(a) => a.span,
            Action::Call(a) => a.span,
            Action::Prometheus(a) => a.span,
            Action::Expr(a) => a.expr.span,
        }
    }

    /// The action's key in YAML.
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }
}

/// The actions written on a step; the compiler requires at most one.
pub fn step_actions(step: &Step) -> Vec<Action<'_>> {
    let mut out = Vec::new();
    if let Some(command) = &step.run {
        out.push(Action::Run(run::RunAction {
            command,
            env: &step.env,
            cwd: step.cwd.as_ref(),
            stdin: step.stdin.as_ref(),
        }));
    }
    if let Some(a) = &step.http {
        out.push(Action::Http(a));
    }
    if let Some(a) = &step.k8s {
        out.push(Action::K8s(a));
    }
    if let Some(a) = &step.sql {
        out.push(Action::Sql(a));
    }
    if let Some(duration) = &step.sleep {
        out.push(Action::Sleep(sleep::SleepAction { duration }));
    }
    if let Some(a) = &step.approve {
        out.push(Action::Approve(a));
    }
    if let Some(a) = &step.call {
        out.push(Action::Call(a));
    }
    out
}

/// The kinds written on a check; the compiler requires exactly one.
pub fn check_actions(check: &Check) -> Vec<Action<'_>> {
    let mut out = Vec::new();
    if let Some(command) = &check.run {
        out.push(Action::Run(run::RunAction {
            command,
            env: &check.env,
            cwd: None,
            stdin: None,
        }));
    }
    if let Some(a) = &check.http {
        out.push(Action::Http(a));
    }
    if let Some(a) = &check.sql {
        out.push(Action::Sql(a));
    }
    if let Some(a) = &check.k8s {
        out.push(Action::K8s(a));
    }
    if let Some(a) = &check.prometheus {
        out.push(Action::Prometheus(a));
    }
    if let Some(e) = &check.expr {
        out.push(Action::Expr(expr::ExprAction { expr: e }));
    }
    out
}

/// The actions written on a compensation; the compiler requires exactly one.
pub fn compensation_actions(c: &Compensation) -> Vec<Action<'_>> {
    let mut out = Vec::new();
    if let Some(command) = &c.run {
        out.push(Action::Run(run::RunAction {
            command,
            env: &c.env,
            cwd: None,
            stdin: None,
        }));
    }
    if let Some(a) = &c.http {
        out.push(Action::Http(a));
    }
    if let Some(a) = &c.k8s {
        out.push(Action::K8s(a));
    }
    if let Some(a) = &c.sql {
        out.push(Action::Sql(a));
    }
    out
}

/// A boxed future returned by [`Perform::perform`] (the executor spawns it on tokio).
pub type PerformFuture<'a> = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<crate::exec::ActionResult, crate::exec::ActionError>,
            > + Send
            + 'a,
    >,
>;

/// How a kind performs its action (or its check) at run time.
pub trait Perform {
    /// Do it once: render templates with `ctx`, act, and describe what happened in `result`.
    fn perform<'a>(&'a self, ctx: &'a crate::exec::ActionCtx) -> PerformFuture<'a>;
    /// Whether this build can perform it (`exec` refuses a runbook before anything runs if not).
    fn executable(&self) -> bool {
        true
    }
}

impl Action<'_> {
    /// Perform the action once.
    ///
    /// # Errors
    /// The kind's failure (timeout, cancellation, a request that could not be sent…).
    pub async fn perform(
        &self,
        ctx: &crate::exec::ActionCtx,
    ) -> Result<crate::exec::ActionResult, crate::exec::ActionError> {
        match self {
            Action::Run(a) => a.perform(ctx).await,
            Action::Http(a) => a.value.perform(ctx).await,
            Action::Sleep(a) => a.perform(ctx).await,
            Action::Approve(a) => a.value.perform(ctx).await,
            Action::Call(a) => a.value.perform(ctx).await,
            Action::Expr(a) => a.perform(ctx).await,
            Action::K8s(a) => a.value.perform(ctx).await,
            Action::Sql(a) => a.value.perform(ctx).await,
            Action::Prometheus(a) => a.value.perform(ctx).await,
        }
    }

    /// Whether this build can perform the action.
    pub fn supported(&self) -> bool {
        match self {
            Action::Run(a) => a.executable(),
            Action::Http(a) => a.value.executable(),
            Action::K8s(a) => a.value.executable(),
            Action::Sql(a) => a.value.executable(),
            Action::Sleep(a) => a.executable(),
            Action::Approve(a) => a.value.executable(),
            Action::Call(a) => a.value.executable(),
            Action::Prometheus(a) => a.value.executable(),
            Action::Expr(a) => a.executable(),
        }
    }
}

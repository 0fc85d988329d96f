//! `k8s`: Kubernetes operations and reads (rollout undo, scale, patch, apply, status gates).

use schemars::JsonSchema;
use serde::Deserialize;

use super::{DescriptionLine, Kind, TemplateField};
use crate::model::Spanned;
use crate::template::{Escape, RenderError, Renderer};

/// A Kubernetes operation or read, against one context and namespace.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct K8sSpec {
    /// Kubeconfig context (default: the current one). Switch clusters here, never in kubeconfig.
    #[serde(default)]
    pub context: Option<Spanned<String>>,
    /// Namespace (default: the context's, else `default`).
    #[serde(default)]
    pub namespace: Option<Spanned<String>>,
    /// Roll a Deployment back to its previous (or a given) revision.
    #[serde(default)]
    pub rollout_undo: Option<RolloutUndo>,
    /// Set replicas through the scale subresource.
    #[serde(default)]
    pub scale: Option<Scale>,
    /// Change one container's image.
    #[serde(default)]
    pub set_image: Option<SetImage>,
    /// Restart a Deployment's pods (the `restartedAt` annotation).
    #[serde(default)]
    pub restart: Option<Restart>,
    /// Patch any resource, CRDs included.
    #[serde(default)]
    pub patch: Option<Patch>,
    /// Server-side apply a manifest (field manager `runbook`).
    #[serde(default)]
    pub apply: Option<Apply>,
    /// Delete a resource.
    #[serde(default)]
    pub delete: Option<ObjectRef>,
    /// Read: one object into `result.object`.
    #[serde(default)]
    pub get: Option<ObjectRef>,
    /// Read: objects matching a selector into `result.items`.
    #[serde(default)]
    pub list: Option<List>,
    /// Read: whether a Deployment's rollout is complete, as `kubectl rollout status` decides.
    #[serde(default)]
    pub rollout_status: Option<Restart>,
}

/// `rollout_undo` arguments.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutUndo {
    /// Deployment name.
    pub deployment: Spanned<String>,
    /// Revision to go back to (default: the previous one).
    #[serde(default)]
    pub to_revision: Option<Spanned<String>>,
}

/// Workload kinds that can be scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ScaleKind {
    /// apps/v1 Deployment
    Deployment,
    /// apps/v1 `StatefulSet`
    Statefulset,
}

/// `scale` arguments.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Scale {
    /// Workload kind.
    pub kind: ScaleKind,
    /// Workload name.
    pub name: Spanned<String>,
    /// Desired replicas (a template, e.g. `{{ steps.stop.result.previous }}`).
    pub replicas: Spanned<String>,
}

/// `set_image` arguments.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetImage {
    /// Deployment name.
    pub deployment: Spanned<String>,
    /// Container name.
    pub container: Spanned<String>,
    /// New image reference.
    pub image: Spanned<String>,
}

/// A Deployment by name.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Restart {
    /// Deployment name.
    pub deployment: Spanned<String>,
}

/// Patch strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PatchType {
    /// JSON merge patch (RFC 7386).
    Merge,
    /// JSON patch (RFC 6902).
    Json,
    /// Kubernetes strategic merge patch.
    Strategic,
}

/// `patch` arguments.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Patch {
    /// e.g. `v1`, `apps/v1`, `argoproj.io/v1alpha1`.
    pub api_version: Spanned<String>,
    /// e.g. `Service`, `Rollout`.
    pub kind: Spanned<String>,
    /// Object name.
    pub name: Spanned<String>,
    /// Patch strategy (default merge).
    #[serde(default, rename = "type")]
    pub patch_type: Option<PatchType>,
    /// The patch body; string values are templates.
    pub patch: Spanned<serde_json::Value>,
}

/// `apply` arguments.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Apply {
    /// The object to apply; string values are templates.
    pub manifest: Spanned<serde_json::Value>,
}

/// An object by API version, kind and name.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ObjectRef {
    /// e.g. `velero.io/v1`.
    pub api_version: Spanned<String>,
    /// e.g. `Restore`.
    pub kind: Spanned<String>,
    /// Object name.
    pub name: Spanned<String>,
}

/// `list` arguments.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct List {
    /// e.g. `v1`.
    pub api_version: Spanned<String>,
    /// e.g. `Pod`.
    pub kind: Spanned<String>,
    /// e.g. `app=checkout`.
    #[serde(default)]
    pub label_selector: Option<Spanned<String>>,
}

impl K8sSpec {
    /// The operations written, by name; the compiler requires exactly one.
    pub fn operations(&self) -> Vec<&'static str> {
        let mut ops = Vec::new();
        let present = [
            ("rollout_undo", self.rollout_undo.is_some()),
            ("scale", self.scale.is_some()),
            ("set_image", self.set_image.is_some()),
            ("restart", self.restart.is_some()),
            ("patch", self.patch.is_some()),
            ("apply", self.apply.is_some()),
            ("delete", self.delete.is_some()),
            ("get", self.get.is_some()),
            ("list", self.list.is_some()),
            ("rollout_status", self.rollout_status.is_some()),
        ];
        for (name, yes) in present {
            if yes {
                ops.push(name);
            }
        }
        ops
    }

    /// Whether the operation only reads.
    pub fn is_read(&self) -> bool {
        self.get.is_some() || self.list.is_some() || self.rollout_status.is_some()
    }
}

fn object_fields<'a>(prefix: &str, o: &'a ObjectRef, out: &mut Vec<TemplateField<'a>>) {
    out.push(TemplateField::new(
        format!("{prefix}.api_version"),
        &o.api_version,
        Escape::None,
    ));
    out.push(TemplateField::new(
        format!("{prefix}.kind"),
        &o.kind,
        Escape::None,
    ));
    out.push(TemplateField::new(
        format!("{prefix}.name"),
        &o.name,
        Escape::None,
    ));
}

fn json_fields<'a>(
    prefix: &str,
    v: &'a Spanned<serde_json::Value>,
    out: &mut Vec<TemplateField<'a>>,
) {
    let mut strings = Vec::new();
    super::http::json_strings(prefix, &v.value, &mut strings);
    out.extend(strings.into_iter().map(|(field, text)| TemplateField {
        field,
        text,
        span: v.span,
        escape: Escape::None,
    }));
}

impl Kind for K8sSpec {
    fn name(&self) -> &'static str {
        "k8s"
    }

    fn templates(&self) -> Vec<TemplateField<'_>> {
        let mut out = Vec::new();
        let t = |f: &str, s| TemplateField::new(format!("k8s.{f}"), s, Escape::None);
        if let Some(c) = &self.context {
            out.push(t("context", c));
        }
        if let Some(n) = &self.namespace {
            out.push(t("namespace", n));
        }
        if let Some(u) = &self.rollout_undo {
            out.push(t("rollout_undo.deployment", &u.deployment));
            if let Some(r) = &u.to_revision {
                out.push(t("rollout_undo.to_revision", r));
            }
        }
        if let Some(s) = &self.scale {
            out.push(t("scale.name", &s.name));
            out.push(t("scale.replicas", &s.replicas));
        }
        if let Some(s) = &self.set_image {
            out.push(t("set_image.deployment", &s.deployment));
            out.push(t("set_image.container", &s.container));
            out.push(t("set_image.image", &s.image));
        }
        if let Some(r) = &self.restart {
            out.push(t("restart.deployment", &r.deployment));
        }
        if let Some(r) = &self.rollout_status {
            out.push(t("rollout_status.deployment", &r.deployment));
        }
        if let Some(p) = &self.patch {
            out.push(t("patch.api_version", &p.api_version));
            out.push(t("patch.kind", &p.kind));
            out.push(t("patch.name", &p.name));
            json_fields("k8s.patch.patch", &p.patch, &mut out);
        }
        if let Some(a) = &self.apply {
            json_fields("k8s.apply.manifest", &a.manifest, &mut out);
        }
        if let Some(o) = &self.delete {
            object_fields("k8s.delete", o, &mut out);
        }
        if let Some(o) = &self.get {
            object_fields("k8s.get", o, &mut out);
        }
        if let Some(l) = &self.list {
            out.push(t("list.api_version", &l.api_version));
            out.push(t("list.kind", &l.kind));
            if let Some(s) = &l.label_selector {
                out.push(t("list.label_selector", s));
            }
        }
        out
    }

    fn mutates(&self) -> bool {
        !self.is_read()
    }

    fn idempotent(&self) -> bool {
        // Scale, set_image, patch (merge/strategic), apply and delete converge on a state;
        // rollout_undo and restart do not (each one moves the revision again).
        self.is_read() || (self.rollout_undo.is_none() && self.restart.is_none())
    }

    fn describe(&self, r: &Renderer<'_>) -> Result<Vec<DescriptionLine>, RenderError> {
        let s = |x: &Spanned<String>| r.render(&x.value, Escape::None);
        let context = match &self.context {
            Some(c) => s(c)?,
            None => "(current context)".to_owned(),
        };
        let namespace = match &self.namespace {
            Some(n) => s(n)?,
            None => "(context default)".to_owned(),
        };
        let mut out = vec![(
            "k8s".to_owned(),
            format!("context {context}, namespace {namespace}"),
        )];
        if let Some(u) = &self.rollout_undo {
            let to = match &u.to_revision {
                Some(rev) => format!("revision {}", s(rev)?),
                None => "the previous revision".to_owned(),
            };
            out.push((
                "rollout undo".to_owned(),
                format!("deployment/{} to {to}", s(&u.deployment)?),
            ));
        }
        if let Some(sc) = &self.scale {
            let kind = match sc.kind {
                ScaleKind::Deployment => "deployment",
                ScaleKind::Statefulset => "statefulset",
            };
            out.push((
                "scale".to_owned(),
                format!("{kind}/{} to {} replicas", s(&sc.name)?, s(&sc.replicas)?),
            ));
        }
        if let Some(si) = &self.set_image {
            out.push((
                "set image".to_owned(),
                format!(
                    "deployment/{} container {} to {}",
                    s(&si.deployment)?,
                    s(&si.container)?,
                    s(&si.image)?
                ),
            ));
        }
        if let Some(rs) = &self.restart {
            out.push((
                "restart".to_owned(),
                format!("deployment/{}", s(&rs.deployment)?),
            ));
        }
        if let Some(rs) = &self.rollout_status {
            out.push((
                "rollout status".to_owned(),
                format!("deployment/{}", s(&rs.deployment)?),
            ));
        }
        if let Some(p) = &self.patch {
            let ty = match p.patch_type.unwrap_or(PatchType::Merge) {
                PatchType::Merge => "merge",
                PatchType::Json => "json",
                PatchType::Strategic => "strategic",
            };
            out.push((
                format!("patch ({ty})"),
                format!("{} {}/{}", s(&p.api_version)?, s(&p.kind)?, s(&p.name)?),
            ));
            out.push((
                "body".to_owned(),
                super::http::render_json(r, &p.patch.value)?.to_string(),
            ));
        }
        if let Some(a) = &self.apply {
            out.push((
                "apply (server-side)".to_owned(),
                super::http::render_json(r, &a.manifest.value)?.to_string(),
            ));
        }
        for (label, o) in [("delete", &self.delete), ("get", &self.get)] {
            if let Some(o) = o {
                out.push((
                    label.to_owned(),
                    format!("{} {}/{}", s(&o.api_version)?, s(&o.kind)?, s(&o.name)?),
                ));
            }
        }
        if let Some(l) = &self.list {
            let sel = match &l.label_selector {
                Some(x) => format!(" -l {}", s(x)?),
                None => String::new(),
            };
            out.push((
                "list".to_owned(),
                format!("{} {}{sel}", s(&l.api_version)?, s(&l.kind)?),
            ));
        }
        Ok(out)
    }
}

impl super::Perform for K8sSpec {
    fn perform<'a>(&'a self, _ctx: &'a crate::exec::ActionCtx) -> super::PerformFuture<'a> {
        Box::pin(async move { Err(crate::exec::ActionError::Unsupported("k8s")) })
    }
    fn executable(&self) -> bool {
        // Validated and planned today; executed from a later version (see README).
        false
    }
}

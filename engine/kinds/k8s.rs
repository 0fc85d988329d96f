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

/// Whether `s` is a DNS-1123 label: at most 63 of `a-z`, `0-9`, `-`, alphanumeric at both ends.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether `s` is a DNS-1123 subdomain: at most 253 characters, labels joined by `.`.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Check a rendered object name before it reaches a request path: names and namespaces are
/// DNS-1123 (what the API server accepts), so a value with `/`, `..` or `?` can never change
/// which URL is requested.
///
/// # Errors
/// The name is not a DNS-1123 subdomain (or label, for namespaces).
pub(crate) fn check_name(field: &str, value: &str, namespace: bool) -> Result<(), String> {
    let ok = if namespace {
        is_dns_label(value)
    } else {
        is_dns_subdomain(value)
    };
    if ok {
        return Ok(());
    }
    let (what, shape) = if namespace {
        ("DNS-1123 label", "at most 63 characters")
    } else {
        (
            "DNS-1123 subdomain",
            "at most 253 characters, dot-separated labels",
        )
    };
    Err(format!(
        "{field} `{value}` is not a valid Kubernetes name: it must be a {what} ({shape} of lowercase letters, digits and `-`, starting and ending with a letter or digit)"
    ))
}

/// Check a rendered `apiVersion` (`v1`, `apps/v1`) and `kind` before they select an API path.
///
/// # Errors
/// Characters no API group, version or kind has.
pub(crate) fn check_type(api_version: &str, kind: &str) -> Result<(), String> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    if !(group.is_empty() || is_dns_subdomain(group)) || !is_dns_label(version) {
        return Err(format!(
            "apiVersion `{api_version}` is not an API group and version (`v1`, `apps/v1`)"
        ));
    }
    if kind.is_empty() || !kind.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(format!(
            "kind `{kind}` is not a Kubernetes kind (letters and digits)"
        ));
    }
    Ok(())
}

impl super::Perform for K8sSpec {
    fn perform<'a>(&'a self, ctx: &'a crate::exec::ActionCtx) -> super::PerformFuture<'a> {
        Box::pin(async move {
            use crate::exec::ActionError;
            let op = live::Op::render(self, &ctx.renderer())?;
            let context = match &self.context {
                Some(c) => Some(
                    ctx.renderer()
                        .render(&c.value, Escape::None)
                        .map_err(|e| ActionError::Failed(e.to_string()))?,
                ),
                None => None,
            };
            let namespace = match &self.namespace {
                Some(n) => {
                    let ns = ctx
                        .renderer()
                        .render(&n.value, Escape::None)
                        .map_err(|e| ActionError::Failed(e.to_string()))?;
                    check_name("k8s.namespace", &ns, true)
                        .map_err(|e| ActionError::Failed(ctx.mask(&e)))?;
                    Some(ns)
                }
                None => None,
            };
            let timeout = ctx.timeout();
            let mut cancel = ctx.cancelled();
            let outcome = tokio::select! {
                r = live::perform(ctx, context.as_deref(), namespace, op) => r,
                () = tokio::time::sleep(timeout) => Err(ActionError::TimedOut(timeout)),
                () = cancel.wait() => Err(ActionError::Cancelled),
            };
            // Server messages can quote names and values that came from secrets.
            outcome.map_err(|e| match e {
                ActionError::Failed(m) => ActionError::Failed(ctx.mask(&m)),
                other => other,
            })
        })
    }
}

/// Performing `k8s` operations through kube-rs: configuration as `kube::Config::infer` finds it
/// (KUBECONFIG, `~/.kube/config`, in-cluster), one client per context and run, API discovery for
/// any kind (CRDs included), and the operations kubectl performs for `rollout undo`, `scale`,
/// `set image`, `rollout restart` and `rollout status`.
mod live {
    use std::collections::{BTreeMap, HashMap};
    use std::fmt::Write as _;
    use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

    use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
    use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
    use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};
    use kube::core::GroupVersionKind;
    use kube::discovery::{ApiCapabilities, ApiResource, Scope};
    use serde_json::{Value, json};

    use super::{K8sSpec, PatchType, ScaleKind};
    use crate::exec::{ActionCtx, ActionError, ActionResult, Shared};
    use crate::template::{Escape, Renderer};

    /// Field manager of every write (server-side apply requires one; the others record it).
    const FIELD_MANAGER: &str = "runbook";
    /// Annotation carrying a Deployment's (and its `ReplicaSets`') revision.
    const REVISION: &str = "deployment.kubernetes.io/revision";
    /// Label the Deployment controller adds to each `ReplicaSet`'s pod template.
    const HASH_LABEL: &str = "pod-template-hash";
    /// Annotations `kubectl rollout undo` keeps from the Deployment instead of taking the
    /// `ReplicaSet`'s (kubectl's `annotationsToSkip`).
    const UNDO_KEEP_ANNOTATIONS: [&str; 6] = [
        "kubectl.kubernetes.io/last-applied-configuration",
        REVISION,
        "deployment.kubernetes.io/revision-history",
        "deployment.kubernetes.io/desired-replicas",
        "deployment.kubernetes.io/max-replicas",
        "deprecated.deployment.rollback.to",
    ];

    fn failed(msg: impl Into<String>) -> ActionError {
        ActionError::Failed(msg.into())
    }

    /// An object named by API version, kind and name (templates rendered).
    #[derive(Debug, Clone)]
    pub struct Obj {
        api_version: String,
        kind: String,
        name: String,
    }

    impl Obj {
        fn show(&self) -> String {
            format!("{} {}/{}", self.api_version, self.kind, self.name)
        }
    }

    /// The operation, its templates rendered.
    #[derive(Debug, Clone)]
    pub enum Op {
        RolloutUndo {
            deployment: String,
            to_revision: Option<i64>,
        },
        Scale {
            kind: ScaleKind,
            name: String,
            replicas: i32,
        },
        SetImage {
            deployment: String,
            container: String,
            image: String,
        },
        Restart {
            deployment: String,
        },
        Patch {
            obj: Obj,
            patch_type: PatchType,
            body: Value,
        },
        Apply {
            manifest: Value,
        },
        Delete(Obj),
        Get(Obj),
        List {
            api_version: String,
            kind: String,
            selector: Option<String>,
        },
        RolloutStatus {
            deployment: String,
        },
    }

    impl Op {
        /// Render the one operation the spec names.
        pub fn render(spec: &K8sSpec, renderer: &Renderer<'_>) -> Result<Self, ActionError> {
            // Names, kinds and images never carry surrounding blanks (a folded YAML scalar may).
            let s = |x: &crate::model::Spanned<String>| {
                renderer
                    .render(&x.value, Escape::None)
                    .map(|t| t.trim().to_owned())
                    .map_err(|e| failed(e.to_string()))
            };
            let json_of = |x: &crate::model::Spanned<Value>| {
                super::super::http::render_json(renderer, &x.value)
                    .map_err(|e| failed(e.to_string()))
            };
            // A name reaches the request path: it must be a DNS-1123 name, whatever rendered it.
            let name = |field: &str, x: &crate::model::Spanned<String>| {
                let v = s(x)?;
                super::check_name(field, &v, false).map_err(failed)?;
                Ok::<_, ActionError>(v)
            };
            let obj = |o: &super::ObjectRef| -> Result<Obj, ActionError> {
                let obj = Obj {
                    api_version: s(&o.api_version)?,
                    kind: s(&o.kind)?,
                    name: name("name", &o.name)?,
                };
                super::check_type(&obj.api_version, &obj.kind).map_err(failed)?;
                Ok(obj)
            };
            if let Some(u) = &spec.rollout_undo {
                let to_revision = match &u.to_revision {
                    Some(written) => {
                        let text = s(written)?;
                        let revision: i64 = text.trim().parse().map_err(|_| {
                            failed(format!(
                                "rollout_undo.to_revision must be a revision number, not `{text}`"
                            ))
                        })?;
                        if revision < 0 {
                            return Err(failed(format!(
                                "rollout_undo.to_revision must not be negative (got {revision})"
                            )));
                        }
                        (revision > 0).then_some(revision)
                    }
                    None => None,
                };
                return Ok(Op::RolloutUndo {
                    deployment: name("rollout_undo.deployment", &u.deployment)?,
                    to_revision,
                });
            }
            if let Some(sc) = &spec.scale {
                let text = s(&sc.replicas)?;
                let replicas: i32 =
                    text.trim()
                        .parse()
                        .ok()
                        .filter(|n| *n >= 0)
                        .ok_or_else(|| {
                            failed(format!(
                                "scale.replicas must be a replica count (0 or more), not `{text}`"
                            ))
                        })?;
                return Ok(Op::Scale {
                    kind: sc.kind,
                    name: name("scale.name", &sc.name)?,
                    replicas,
                });
            }
            if let Some(si) = &spec.set_image {
                return Ok(Op::SetImage {
                    deployment: name("set_image.deployment", &si.deployment)?,
                    container: s(&si.container)?,
                    image: s(&si.image)?,
                });
            }
            if let Some(rs) = &spec.restart {
                return Ok(Op::Restart {
                    deployment: name("restart.deployment", &rs.deployment)?,
                });
            }
            if let Some(p) = &spec.patch {
                let obj = Obj {
                    api_version: s(&p.api_version)?,
                    kind: s(&p.kind)?,
                    name: name("patch.name", &p.name)?,
                };
                super::check_type(&obj.api_version, &obj.kind).map_err(failed)?;
                return Ok(Op::Patch {
                    obj,
                    patch_type: p.patch_type.unwrap_or(PatchType::Merge),
                    body: json_of(&p.patch)?,
                });
            }
            if let Some(a) = &spec.apply {
                let manifest = json_of(&a.manifest)?;
                for (pointer, field, ns) in [
                    ("/metadata/name", "apply manifest metadata.name", false),
                    (
                        "/metadata/namespace",
                        "apply manifest metadata.namespace",
                        true,
                    ),
                ] {
                    if let Some(v) = manifest.pointer(pointer).and_then(Value::as_str) {
                        super::check_name(field, v, ns).map_err(failed)?;
                    }
                }
                if let (Some(av), Some(k)) = (
                    manifest.pointer("/apiVersion").and_then(Value::as_str),
                    manifest.pointer("/kind").and_then(Value::as_str),
                ) {
                    super::check_type(av, k).map_err(failed)?;
                }
                return Ok(Op::Apply { manifest });
            }
            if let Some(o) = &spec.delete {
                return Ok(Op::Delete(obj(o)?));
            }
            if let Some(o) = &spec.get {
                return Ok(Op::Get(obj(o)?));
            }
            if let Some(l) = &spec.list {
                let (api_version, kind) = (s(&l.api_version)?, s(&l.kind)?);
                super::check_type(&api_version, &kind).map_err(failed)?;
                return Ok(Op::List {
                    api_version,
                    kind,
                    selector: l.label_selector.as_ref().map(s).transpose()?,
                });
            }
            if let Some(rs) = &spec.rollout_status {
                return Ok(Op::RolloutStatus {
                    deployment: name("rollout_status.deployment", &rs.deployment)?,
                });
            }
            Err(failed("`k8s` names no operation"))
        }

        /// What is done, as the command line of the attempt shows it.
        fn describe(&self) -> String {
            match self {
                Op::RolloutUndo {
                    deployment,
                    to_revision,
                } => match to_revision {
                    Some(n) => format!("rollout undo deployment/{deployment} to revision {n}"),
                    None => {
                        format!("rollout undo deployment/{deployment} to the previous revision")
                    }
                },
                Op::Scale {
                    kind,
                    name,
                    replicas,
                } => format!("scale {}/{name} to {replicas}", scale_kind(*kind)),
                Op::SetImage {
                    deployment,
                    container,
                    image,
                } => format!("set image deployment/{deployment} {container}={image}"),
                Op::Restart { deployment } => format!("rollout restart deployment/{deployment}"),
                Op::Patch {
                    obj, patch_type, ..
                } => format!("patch ({}) {}", patch_name(*patch_type), obj.show()),
                Op::Apply { manifest } => format!(
                    "apply (server-side) {} {}/{}",
                    str_at(manifest, "/apiVersion"),
                    str_at(manifest, "/kind"),
                    str_at(manifest, "/metadata/name")
                ),
                Op::Delete(o) => format!("delete {}", o.show()),
                Op::Get(o) => format!("get {}", o.show()),
                Op::List {
                    api_version,
                    kind,
                    selector,
                } => match selector {
                    Some(sel) => format!("list {api_version} {kind} -l {sel}"),
                    None => format!("list {api_version} {kind}"),
                },
                Op::RolloutStatus { deployment } => {
                    format!("rollout status deployment/{deployment}")
                }
            }
        }
    }

    fn scale_kind(k: ScaleKind) -> &'static str {
        match k {
            ScaleKind::Deployment => "deployment",
            ScaleKind::Statefulset => "statefulset",
        }
    }

    fn patch_name(p: PatchType) -> &'static str {
        match p {
            PatchType::Merge => "merge",
            PatchType::Json => "json",
            PatchType::Strategic => "strategic",
        }
    }

    fn str_at<'v>(v: &'v Value, pointer: &str) -> &'v str {
        v.pointer(pointer).and_then(Value::as_str).unwrap_or("?")
    }

    // -----------------------------------------------------------------------------------------
    // Clients

    /// A client for one context, for one run, with the kinds discovered through it.
    struct Conn {
        run: Weak<Shared>,
        client: kube::Client,
        /// The context's name (or `in-cluster`), for messages.
        context: String,
        /// The API server's URL, for messages.
        server: String,
        kinds: Mutex<HashMap<String, (ApiResource, ApiCapabilities)>>,
    }

    type Cache = Mutex<HashMap<(usize, Option<String>), Arc<Conn>>>;

    /// One client per (run, context). A client belongs to the tokio runtime it was made on, so it
    /// is never shared across runs (each `exec` builds its own runtime).
    fn cache() -> &'static Cache {
        static CACHE: OnceLock<Cache> = OnceLock::new();
        CACHE.get_or_init(|| Mutex::new(HashMap::new()))
    }

    async fn connect(ctx: &ActionCtx, context: Option<&str>) -> Result<Arc<Conn>, ActionError> {
        let shared = ctx.shared();
        let key = (Arc::as_ptr(shared) as usize, context.map(str::to_owned));
        {
            let mut map = cache().lock().unwrap_or_else(PoisonError::into_inner);
            map.retain(|_, c| c.run.strong_count() > 0);
            if let Some(c) = map.get(&key)
                && c.run.upgrade().is_some_and(|s| Arc::ptr_eq(&s, shared))
            {
                return Ok(c.clone());
            }
        }
        let (config, label) = load_config(context)
            .await
            .map_err(|e| failed(ctx.mask(&e)))?;
        let server = config.cluster_url.to_string();
        let client = kube::Client::try_from(config).map_err(|e| {
            failed(ctx.mask(&format!(
                "failed to set up a Kubernetes client for context {label}: {}",
                chain(&e)
            )))
        })?;
        let conn = Arc::new(Conn {
            run: Arc::downgrade(shared),
            client,
            context: label,
            server: server.trim_end_matches('/').to_owned(),
            kinds: Mutex::new(HashMap::new()),
        });
        cache()
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, conn.clone());
        Ok(conn)
    }

    /// Where kubeconfig is read from, for messages.
    fn kubeconfig_source() -> String {
        match std::env::var_os("KUBECONFIG") {
            Some(v) if !v.is_empty() => format!("KUBECONFIG={}", v.to_string_lossy()),
            _ => "~/.kube/config".to_owned(),
        }
    }

    /// The configuration of a named context, or the one `kube::Config::infer` finds.
    async fn load_config(context: Option<&str>) -> Result<(kube::Config, String), String> {
        if let Some(name) = context {
            let options = KubeConfigOptions {
                context: Some(name.to_owned()),
                ..KubeConfigOptions::default()
            };
            return match kube::Config::from_kubeconfig(&options).await {
                Ok(mut config) => {
                    // As `Config::infer` does.
                    config.apply_debug_overrides();
                    Ok((config, name.to_owned()))
                }
                Err(e) => Err(context_error(name, &e)),
            };
        }
        let config = kube::Config::infer().await.map_err(|e| {
            format!(
                "failed to find a Kubernetes configuration (kubeconfig from {}, else in-cluster): {}",
                kubeconfig_source(),
                chain(&e)
            )
        })?;
        let label = Kubeconfig::read()
            .ok()
            .and_then(|k| k.current_context)
            .unwrap_or_else(|| "in-cluster".to_owned());
        Ok((config, label))
    }

    fn context_error(name: &str, e: &KubeconfigError) -> String {
        match Kubeconfig::read() {
            Ok(k) if !k.contexts.iter().any(|c| c.name == name) => {
                let names: Vec<&str> = k.contexts.iter().map(|c| c.name.as_str()).collect();
                format!(
                    "unknown kubeconfig context `{name}` (kubeconfig from {}); the contexts that exist: {}",
                    kubeconfig_source(),
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(", ")
                    }
                )
            }
            _ => format!(
                "failed to load kubeconfig context `{name}` (kubeconfig from {}): {}",
                kubeconfig_source(),
                chain(e)
            ),
        }
    }

    use crate::diagnostic::error_chain as chain;

    /// What the operation was and where, for error messages.
    struct Place<'a> {
        what: &'a str,
        conn: &'a Conn,
        namespace: &'a str,
    }

    impl Place<'_> {
        fn at(&self) -> String {
            format!(
                "context {}, namespace {}",
                self.conn.context, self.namespace
            )
        }

        /// A kube error as a clear message (never credentials: kube's errors carry none).
        fn error(&self, e: &kube::Error) -> ActionError {
            let what = self.what;
            let at = self.at();
            let msg = match e {
                kube::Error::Api(s) => match s.code {
                    401 => format!(
                        "unauthorized (401): the API server of context {} rejected the credentials of the kubeconfig user ({}); log in again or refresh the token — {what}",
                        self.conn.context, s.message
                    ),
                    403 => forbidden(&s.message, what, &at),
                    404 => format!("not found (404): {} — {what} ({at})", s.message),
                    409 => format!(
                        "conflict (409): {} — {what} ({at}); a retry reads the object again",
                        s.message
                    ),
                    code => {
                        let reason = if s.reason.is_empty() {
                            String::new()
                        } else {
                            format!(" {}", s.reason)
                        };
                        format!("HTTP {code}{reason}: {} — {what} ({at})", s.message)
                    }
                },
                kube::Error::HyperError(_) | kube::Error::Service(_) => {
                    let why = chain(e);
                    let why = why
                        .strip_prefix("ServiceError: ")
                        .or_else(|| why.strip_prefix("HyperError: "))
                        .unwrap_or(&why);
                    format!(
                        "cannot reach the API server of context {} at {}: {why} — {what}",
                        self.conn.context, self.conn.server
                    )
                }
                kube::Error::Discovery(d) => format!("{} — {what} ({at})", chain(d)),
                other => format!("{what} failed ({at}): {}", chain(other)),
            };
            failed(msg)
        }
    }

    /// A 403 with the verb, resource and user the server named in its Status message.
    fn forbidden(message: &str, what: &str, at: &str) -> String {
        let between = |text: &str, start: &str| -> Option<String> {
            let i = text.find(start)? + start.len();
            let rest = &text[i..];
            Some(rest[..rest.find('"')?].to_owned())
        };
        let user = between(message, "User \"");
        let verb = message
            .find(" cannot ")
            .and_then(|i| message[i + 8..].split_whitespace().next())
            .map(str::to_owned);
        let resource = between(message, "resource \"");
        match (user, verb, resource) {
            (Some(user), Some(verb), Some(resource)) => {
                let mut scope = String::new();
                if let Some(g) = between(message, "in API group \"") {
                    let _ = write!(
                        scope,
                        " in API group \"{g}\"{}",
                        if g.is_empty() { " (core)" } else { "" }
                    );
                }
                if let Some(ns) = between(message, "in the namespace \"") {
                    let _ = write!(scope, " in namespace \"{ns}\"");
                }
                format!(
                    "forbidden (403): user \"{user}\" may not `{verb}` resource \"{resource}\"{scope} — {what} ({at}); grant that verb to that user (Role/ClusterRole) or use another context. The server said: {message}"
                )
            }
            _ => format!("forbidden (403): {message} — {what} ({at})"),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Operations

    /// Perform the operation against the cluster of `context`.
    pub async fn perform(
        ctx: &ActionCtx,
        context: Option<&str>,
        namespace: Option<String>,
        op: Op,
    ) -> Result<ActionResult, ActionError> {
        let described = op.describe();
        let conn = match connect(ctx, context).await {
            Ok(c) => c,
            Err(e) => {
                let ctx_label = context.unwrap_or("(current context)");
                ctx.note_command(&format!(
                    "{described} (context {ctx_label}, namespace {})",
                    namespace.as_deref().unwrap_or("(context default)")
                ));
                return Err(e);
            }
        };
        let ns = namespace.unwrap_or_else(|| conn.client.default_namespace().to_owned());
        ctx.note_command(&format!(
            "{described} (context {}, namespace {ns})",
            conn.context
        ));
        let place = Place {
            what: &described,
            conn: &conn,
            namespace: &ns,
        };
        let (value, ok, summary) = match op {
            Op::RolloutUndo {
                deployment,
                to_revision,
            } => rollout_undo(&place, &deployment, to_revision).await?,
            Op::Scale {
                kind,
                name,
                replicas,
            } => scale(&place, kind, &name, replicas).await?,
            Op::SetImage {
                deployment,
                container,
                image,
            } => set_image(&place, &deployment, &container, &image).await?,
            Op::Restart { deployment } => restart(&place, &deployment).await?,
            Op::RolloutStatus { deployment } => rollout_status(&place, &deployment).await?,
            Op::Get(o) => {
                let api = dynamic_api(&place, &o.api_version, &o.kind).await?;
                let obj = api.get(&o.name).await.map_err(|e| place.error(&e))?;
                let v = object_value(&obj, &o.api_version, &o.kind);
                let summary = format!("got {}", o.show());
                (json!({ "object": v }), true, summary)
            }
            Op::List {
                api_version,
                kind,
                selector,
            } => {
                let api = dynamic_api(&place, &api_version, &kind).await?;
                let mut lp = ListParams::default();
                if let Some(sel) = &selector {
                    lp = lp.labels(sel);
                }
                let list = api.list(&lp).await.map_err(|e| place.error(&e))?;
                let items: Vec<Value> = list
                    .items
                    .iter()
                    .map(|o| object_value(o, &api_version, &kind))
                    .collect();
                let count = items.len();
                (
                    json!({ "items": items, "count": count }),
                    true,
                    format!("{count} {kind} object(s)"),
                )
            }
            Op::Patch {
                obj,
                patch_type,
                body,
            } => {
                let api = dynamic_api(&place, &obj.api_version, &obj.kind).await?;
                let pp = PatchParams {
                    field_manager: Some(FIELD_MANAGER.to_owned()),
                    ..PatchParams::default()
                };
                let result = match patch_type {
                    PatchType::Merge => api.patch(&obj.name, &pp, &Patch::Merge(&body)).await,
                    PatchType::Strategic => {
                        api.patch(&obj.name, &pp, &Patch::Strategic(&body)).await
                    }
                    PatchType::Json => {
                        let ops = serde_json::from_value(body.clone()).map_err(|e| {
                            failed(format!(
                                "a json patch is a list of RFC 6902 operations ({{op, path, value}}): {e}"
                            ))
                        })?;
                        api.patch(&obj.name, &pp, &Patch::<()>::Json(ops)).await
                    }
                };
                let patched = result.map_err(|e| place.error(&e))?;
                let v = object_value(&patched, &obj.api_version, &obj.kind);
                (
                    json!({ "object": v }),
                    true,
                    format!("patched {}", obj.show()),
                )
            }
            Op::Apply { manifest } => apply(&place, manifest).await?,
            Op::Delete(o) => {
                let api = dynamic_api(&place, &o.api_version, &o.kind).await?;
                let deleted = api
                    .delete(&o.name, &DeleteParams::default())
                    .await
                    .map_err(|e| place.error(&e))?;
                let object = deleted
                    .left()
                    .map(|obj| object_value(&obj, &o.api_version, &o.kind));
                (
                    json!({
                        "deleted": {"api_version": o.api_version, "kind": o.kind, "name": o.name},
                        "object": object,
                    }),
                    true,
                    format!("deleted {}", o.show()),
                )
            }
        };
        Ok(ActionResult {
            value: mask_value(ctx, value),
            ok,
            summary: ctx.mask(&summary),
            exit_code: None,
            http_status: None,
        })
    }

    /// Secrets masked in every string of a result.
    fn mask_value(ctx: &ActionCtx, v: Value) -> Value {
        match v {
            Value::String(s) => Value::String(ctx.mask(&s)),
            Value::Array(items) => {
                Value::Array(items.into_iter().map(|x| mask_value(ctx, x)).collect())
            }
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(k, x)| (k, mask_value(ctx, x)))
                    .collect(),
            ),
            other => other,
        }
    }

    /// `apps/v1` → (`apps`, `v1`); `v1` → (the empty core group, `v1`).
    fn split_api_version(api_version: &str) -> (&str, &str) {
        api_version.split_once('/').unwrap_or(("", api_version))
    }

    /// An object as JSON, as `kubectl get -o json` shows it: with apiVersion and kind (list
    /// items lack them on the wire) and without `managedFields`.
    fn object_value(obj: &DynamicObject, api_version: &str, kind: &str) -> Value {
        let mut v = serde_json::to_value(obj).unwrap_or(Value::Null);
        if let Some(m) = v.as_object_mut() {
            m.entry("apiVersion")
                .or_insert_with(|| Value::String(api_version.to_owned()));
            m.entry("kind")
                .or_insert_with(|| Value::String(kind.to_owned()));
            if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.remove("managedFields");
            }
        }
        v
    }

    /// Find a kind through discovery (cached per client).
    async fn discover(
        place: &Place<'_>,
        api_version: &str,
        kind: &str,
    ) -> Result<(ApiResource, ApiCapabilities), ActionError> {
        let key = format!("{api_version}/{kind}");
        if let Some(found) = place
            .conn
            .kinds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Ok(found.clone());
        }
        let (group, version) = split_api_version(api_version);
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let found = kube::discovery::pinned_kind(&place.conn.client, &gvk)
            .await
            .map_err(|e| match &e {
                kube::Error::Api(s) if s.code == 404 => failed(format!(
                    "the API server of context {} does not serve {api_version} (is the API group or its CRD installed?) — {}",
                    place.conn.context, place.what
                )),
                kube::Error::Discovery(kube::error::DiscoveryError::MissingKind(_)) => {
                    failed(format!(
                        "{api_version} has no kind {kind} on the API server of context {} (check the kind's spelling and version, or install its CRD) — {}",
                        place.conn.context, place.what
                    ))
                }
                _ => place.error(&e),
            })?;
        place
            .conn
            .kinds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, found.clone());
        Ok(found)
    }

    async fn dynamic_api(
        place: &Place<'_>,
        api_version: &str,
        kind: &str,
    ) -> Result<Api<DynamicObject>, ActionError> {
        let (ar, caps) = discover(place, api_version, kind).await?;
        Ok(match caps.scope {
            Scope::Cluster => Api::all_with(place.conn.client.clone(), &ar),
            Scope::Namespaced => {
                Api::namespaced_with(place.conn.client.clone(), place.namespace, &ar)
            }
        })
    }

    fn deployments(place: &Place<'_>) -> Api<Deployment> {
        Api::namespaced(place.conn.client.clone(), place.namespace)
    }

    fn write_params() -> PatchParams {
        PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        }
    }

    fn revision(meta: &ObjectMeta) -> Option<i64> {
        meta.annotations
            .as_ref()?
            .get(REVISION)?
            .trim()
            .parse()
            .ok()
    }

    /// A label selector in the string form the API takes (`a=b,c in (d,e),!f`).
    fn selector_string(sel: &LabelSelector) -> String {
        let mut parts: Vec<String> = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            parts.push(format!("{k}={v}"));
        }
        for e in sel.match_expressions.iter().flatten() {
            let values = e.values.clone().unwrap_or_default().join(",");
            parts.push(match e.operator.as_str() {
                "In" => format!("{} in ({values})", e.key),
                "NotIn" => format!("{} notin ({values})", e.key),
                "Exists" => e.key.clone(),
                _ => format!("!{}", e.key),
            });
        }
        parts.join(",")
    }

    /// Container name → image of a pod template, as JSON.
    fn images(template: Option<&k8s_openapi::api::core::v1::PodTemplateSpec>) -> Value {
        let mut out = serde_json::Map::new();
        if let Some(spec) = template.and_then(|t| t.spec.as_ref()) {
            for c in &spec.containers {
                out.insert(
                    c.name.clone(),
                    Value::String(c.image.clone().unwrap_or_default()),
                );
            }
        }
        Value::Object(out)
    }

    /// Drop nulls and empty objects, so that two encodings of one template compare equal.
    fn prune(v: &Value) -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.iter()
                    .filter_map(|(k, x)| {
                        let x = prune(x);
                        let empty =
                            x.is_null() || x.as_object().is_some_and(serde_json::Map::is_empty);
                        (!empty).then(|| (k.clone(), x))
                    })
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.iter().map(prune).collect()),
            other => other.clone(),
        }
    }

    fn without_hash(template: &Value) -> Value {
        let mut t = template.clone();
        if let Some(labels) = t
            .pointer_mut("/metadata/labels")
            .and_then(Value::as_object_mut)
        {
            labels.remove(HASH_LABEL);
        }
        t
    }

    /// `kubectl rollout undo`: the Deployment's pod template back to a `ReplicaSet`'s.
    async fn rollout_undo(
        place: &Place<'_>,
        name: &str,
        to_revision: Option<i64>,
    ) -> Result<(Value, bool, String), ActionError> {
        let api = deployments(place);
        let d = api.get(name).await.map_err(|e| place.error(&e))?;
        let spec = &d.spec;
        if spec.paused == Some(true) {
            return Err(failed(format!(
                "deployment/{name} is paused: resume it first (`kubectl rollout resume deployment/{name}`) and try again ({})",
                place.at()
            )));
        }
        let uid = d.metadata.uid.clone().unwrap_or_default();
        let rs_api: Api<ReplicaSet> = Api::namespaced(place.conn.client.clone(), place.namespace);
        let selector = selector_string(&spec.selector);
        let list = rs_api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| place.error(&e))?;
        // The ReplicaSets this Deployment controls, by revision (as kubectl's GetAllReplicaSets).
        let mut history: Vec<(i64, &ReplicaSet)> = list
            .items
            .iter()
            .filter(|rs| {
                rs.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.controller == Some(true) && !uid.is_empty() && o.uid == uid)
            })
            .filter_map(|rs| revision(&rs.metadata).map(|r| (r, rs)))
            .collect();
        history.sort_by_key(|(r, _)| *r);
        let existing = if history.is_empty() {
            "none".to_owned()
        } else {
            history
                .iter()
                .map(|(r, _)| r.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let from_revision = revision(&d.metadata).or_else(|| history.last().map(|(r, _)| *r));
        let (to, rs) = if let Some(n) = to_revision {
            *history.iter().find(|(r, _)| *r == n).ok_or_else(|| {
                failed(format!(
                    "revision {n} of deployment/{name} not found; the revisions that exist: {existing} ({})",
                    place.at()
                ))
            })?
        } else {
            // kubectl's choice: the second highest revision of the Deployment's ReplicaSets.
            if history.len() < 2 {
                return Err(failed(format!(
                    "no rollout history to go back to for deployment/{name}: the revisions that exist: {existing} ({})",
                    place.at()
                )));
            }
            history[history.len() - 2]
        };
        let rs_template = rs.spec.template.as_ref().ok_or_else(|| {
            failed(format!(
                "revision {to} of deployment/{name} has no pod template"
            ))
        })?;
        let images_before = images(Some(&spec.template));
        let target = without_hash(&serde_json::to_value(rs_template).unwrap_or(Value::Null));
        let current = without_hash(&serde_json::to_value(&spec.template).unwrap_or(Value::Null));
        if prune(&target) == prune(&current) {
            // kubectl: "skipped rollback (current template already matches revision N)".
            let value = json!({
                "deployment": name,
                "from_revision": from_revision,
                "to_revision": to,
                "images_before": images_before,
                "images_after": images_before,
                "skipped": true,
            });
            return Ok((
                value,
                true,
                format!("skipped: the template of deployment/{name} already matches revision {to}"),
            ));
        }
        let mut annotations = BTreeMap::new();
        let current_annotations = d.metadata.annotations.clone().unwrap_or_default();
        for k in UNDO_KEEP_ANNOTATIONS {
            if let Some(v) = current_annotations.get(k) {
                annotations.insert(k.to_owned(), v.clone());
            }
        }
        for (k, v) in rs.metadata.annotations.iter().flatten() {
            if !UNDO_KEEP_ANNOTATIONS.contains(&k.as_str()) {
                annotations.insert(k.clone(), v.clone());
            }
        }
        // The patch kubectl sends (a JSON patch replacing the template and the annotations).
        let ops = serde_json::from_value(json!([
            {"op": "replace", "path": "/spec/template", "value": target},
            {"op": "replace", "path": "/metadata/annotations", "value": annotations},
        ]))
        .map_err(|e| failed(format!("failed to build the rollback patch: {e}")))?;
        let patched = api
            .patch(name, &write_params(), &Patch::<()>::Json(ops))
            .await
            .map_err(|e| place.error(&e))?;
        let images_after = images(Some(&patched.spec.template));
        let from = from_revision.map_or_else(|| "?".to_owned(), |r| r.to_string());
        Ok((
            json!({
                "deployment": name,
                "from_revision": from_revision,
                "to_revision": to,
                "images_before": images_before,
                "images_after": images_after,
                "skipped": false,
            }),
            true,
            format!("rolled deployment/{name} back from revision {from} to revision {to}"),
        ))
    }

    /// Replicas through the scale subresource, conditional on the object read (a concurrent
    /// change answers 409, which a retry reads again).
    async fn scale(
        place: &Place<'_>,
        kind: ScaleKind,
        name: &str,
        replicas: i32,
    ) -> Result<(Value, bool, String), ActionError> {
        let ar = match kind {
            ScaleKind::Deployment => ApiResource::erase::<Deployment>(&()),
            ScaleKind::Statefulset => ApiResource::erase::<StatefulSet>(&()),
        };
        let api: Api<DynamicObject> =
            Api::namespaced_with(place.conn.client.clone(), place.namespace, &ar);
        let current = api.get(name).await.map_err(|e| place.error(&e))?;
        let previous = current
            .data
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let mut body = json!({"spec": {"replicas": replicas}});
        if let Some(rv) = &current.metadata.resource_version {
            body["metadata"] = json!({"resourceVersion": rv});
        }
        let scaled = api
            .patch_scale(name, &write_params(), &Patch::Merge(&body))
            .await
            .map_err(|e| place.error(&e))?;
        let now = scaled
            .spec
            .and_then(|s| s.replicas)
            .map_or(i64::from(replicas), i64::from);
        let k = scale_kind(kind);
        Ok((
            json!({"kind": k, "name": name, "previous": previous, "replicas": now}),
            true,
            format!("scaled {k}/{name} from {previous} to {now} replicas"),
        ))
    }

    /// `kubectl set image`: one container's image, by a strategic merge patch keyed on its name.
    async fn set_image(
        place: &Place<'_>,
        name: &str,
        container: &str,
        image: &str,
    ) -> Result<(Value, bool, String), ActionError> {
        let api = deployments(place);
        let d = api.get(name).await.map_err(|e| place.error(&e))?;
        let pod = d.spec.template.spec.as_ref();
        let containers = pod.map(|p| p.containers.as_slice()).unwrap_or_default();
        let init = pod
            .and_then(|p| p.init_containers.as_deref())
            .unwrap_or_default();
        let (field, previous) = if let Some(c) = containers.iter().find(|c| c.name == container) {
            ("containers", c.image.clone())
        } else if let Some(c) = init.iter().find(|c| c.name == container) {
            ("initContainers", c.image.clone())
        } else {
            let names: Vec<&str> = containers
                .iter()
                .chain(init)
                .map(|c| c.name.as_str())
                .collect();
            return Err(failed(format!(
                "deployment/{name} has no container `{container}`; its containers: {} ({})",
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                },
                place.at()
            )));
        };
        let body =
            json!({"spec": {"template": {"spec": {field: [{"name": container, "image": image}]}}}});
        api.patch(name, &write_params(), &Patch::Strategic(&body))
            .await
            .map_err(|e| place.error(&e))?;
        Ok((
            json!({"deployment": name, "container": container, "previous": previous, "image": image}),
            true,
            format!(
                "set image of {container} in deployment/{name} from {} to {image}",
                previous.as_deref().unwrap_or("(none)")
            ),
        ))
    }

    /// `kubectl rollout restart`: the `restartedAt` annotation on the pod template.
    async fn restart(place: &Place<'_>, name: &str) -> Result<(Value, bool, String), ActionError> {
        let api = deployments(place);
        let d = api.get(name).await.map_err(|e| place.error(&e))?;
        if d.spec.paused == Some(true) {
            return Err(failed(format!(
                "deployment/{name} is paused: resume it first (`kubectl rollout resume deployment/{name}`) and try again ({})",
                place.at()
            )));
        }
        let at = crate::clock::rfc3339(crate::clock::now_ms());
        let body = json!({"spec": {"template": {"metadata": {"annotations": {
            "kubectl.kubernetes.io/restartedAt": at
        }}}}});
        api.patch(name, &write_params(), &Patch::Strategic(&body))
            .await
            .map_err(|e| place.error(&e))?;
        Ok((
            json!({"deployment": name, "restarted_at": at}),
            true,
            format!("restarted deployment/{name}"),
        ))
    }

    /// `kubectl rollout status`, one look: complete when the controller has observed the latest
    /// spec, every replica is updated, no old replica is left and every updated one is available.
    async fn rollout_status(
        place: &Place<'_>,
        name: &str,
    ) -> Result<(Value, bool, String), ActionError> {
        let d = deployments(place)
            .get(name)
            .await
            .map_err(|e| place.error(&e))?;
        let generation = d.metadata.generation.unwrap_or(0);
        let status = d.status.clone().unwrap_or_default();
        let observed = status.observed_generation.unwrap_or(0);
        let desired = d.spec.replicas.unwrap_or(1);
        let total = status.replicas.unwrap_or(0);
        let updated = status.updated_replicas.unwrap_or(0);
        let ready = status.ready_replicas.unwrap_or(0);
        let available = status.available_replicas.unwrap_or(0);
        let timed_out = status.conditions.iter().flatten().any(|c| {
            c.type_.as_deref() == Some("Progressing")
                && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        });
        // The messages are kubectl's.
        let (complete, reason) = if generation > observed {
            (
                false,
                "Waiting for deployment spec update to be observed...".to_owned(),
            )
        } else if timed_out {
            (
                false,
                format!("deployment \"{name}\" exceeded its progress deadline"),
            )
        } else if updated < desired {
            (
                false,
                format!(
                    "Waiting for deployment \"{name}\" rollout to finish: {updated} out of {desired} new replicas have been updated..."
                ),
            )
        } else if total > updated {
            (
                false,
                format!(
                    "Waiting for deployment \"{name}\" rollout to finish: {} old replicas are pending termination...",
                    total - updated
                ),
            )
        } else if available < updated {
            (
                false,
                format!(
                    "Waiting for deployment \"{name}\" rollout to finish: {available} of {updated} updated replicas are available..."
                ),
            )
        } else {
            (
                true,
                format!("deployment \"{name}\" successfully rolled out"),
            )
        };
        Ok((
            json!({
                "deployment": name,
                "complete": complete,
                "reason": reason,
                "generation": generation,
                "observed_generation": observed,
                "desired_replicas": desired,
                "replicas": total,
                "updated_replicas": updated,
                "ready_replicas": ready,
                "available_replicas": available,
                "revision": revision(&d.metadata),
            }),
            complete,
            reason,
        ))
    }

    /// Server-side apply of one manifest, field manager `runbook`.
    async fn apply(
        place: &Place<'_>,
        manifest: Value,
    ) -> Result<(Value, bool, String), ActionError> {
        let field = |p: &str| {
            manifest
                .pointer(p)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| {
                    failed(format!(
                        "apply: the manifest has no {} (it needs apiVersion, kind and metadata.name)",
                        p.trim_start_matches('/').replace('/', ".")
                    ))
                })
        };
        let api_version = field("/apiVersion")?;
        let kind = field("/kind")?;
        let name = field("/metadata/name")?;
        let (ar, caps) = discover(place, &api_version, &kind).await?;
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Cluster => Api::all_with(place.conn.client.clone(), &ar),
            Scope::Namespaced => {
                let ns = match manifest
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                {
                    Some(ns) if ns != place.namespace => {
                        return Err(failed(format!(
                            "apply: the manifest's namespace `{ns}` differs from the step's namespace `{}`; drop one of them",
                            place.namespace
                        )));
                    }
                    _ => place.namespace,
                };
                Api::namespaced_with(place.conn.client.clone(), ns, &ar)
            }
        };
        let applied = api
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER),
                &Patch::Apply(&manifest),
            )
            .await
            .map_err(|e| place.error(&e))?;
        let v = object_value(&applied, &api_version, &kind);
        Ok((
            json!({"object": v}),
            true,
            format!("applied {api_version} {kind}/{name}"),
        ))
    }
}

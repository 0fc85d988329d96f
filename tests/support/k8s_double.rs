//! A Kubernetes API server double for the tests of the `k8s` kind.
//!
//! No real Kubernetes API server can run here (no cluster, no container runtime, no kind or k3s,
//! no etcd), so this is an axum server on `127.0.0.1:0` that speaks the real API over plain HTTP
//! with bearer-token auth: the real paths, verbs, content types and JSON shapes, enough for
//! kube-rs and for the real `kubectl` (the tests in `tests/k8s.rs` run `kubectl rollout undo`,
//! `kubectl scale` and `kubectl get -o json` against it and compare with what `runbook` does).
//!
//! What it serves:
//! - discovery: `/api`, `/api/v1`, `/apis`, `/apis/{group}/{version}` (legacy, non-aggregated
//!   documents; kubectl falls back to them), `/version`; core v1 (Namespace, Pod, Service,
//!   `PersistentVolumeClaim`, `ConfigMap`), `apps/v1` (Deployment, `ReplicaSet`, `StatefulSet`, with
//!   their `scale` and `status` subresources), `autoscaling/v1`, and three CRD groups:
//!   `networking.istio.io/v1beta1` `VirtualService`, `argoproj.io/v1alpha1` Rollout and `velero.io/v1`
//!   Backup, Restore, `BackupStorageLocation`;
//! - GET (object, list with `labelSelector`), POST, PUT, PATCH (JSON patch, merge patch, strategic
//!   merge patch, server-side apply with `fieldManager`), DELETE, and the scale subresource
//!   (GET/PUT/PATCH), with `resourceVersion` preconditions answered by 409;
//! - a Deployment controller: a template change gives a new (or revives an old) `ReplicaSet`
//!   with the next `deployment.kubernetes.io/revision`, owned through `ownerReferences`; after
//!   [`K8sDouble::set_rollout_delay`] the status converges (observedGeneration, updated, ready,
//!   available replicas) and the pods are replaced — or, for a Deployment marked
//!   [`K8sDouble::never_healthy`], the new pods stay in `CrashLoopBackOff`;
//! - a Velero stand-in: a created Restore becomes `Completed` after a delay and creates the
//!   restored, `Bound` `PersistentVolumeClaims` labelled `velero.io/restore-name`;
//! - injectable failures: 403 with the RBAC Status message
//!   ([`K8sDouble::forbid`]), 409 on the first N writes ([`K8sDouble::conflict_first_writes`]),
//!   404 for what does not exist, 401 for a wrong token.
//!
//! Approximations (documented here because a real server differs):
//! - strategic merge patch is a JSON merge patch, except that lists with a known merge key
//!   (`containers`, `initContainers`, `volumes`, `env`, `volumeMounts`, … by `name`; `ports` by
//!   `containerPort`/`port`) are merged item by item; `$patch`/`$setElementOrder` directives are
//!   ignored; CRDs answer 415 as a real server does;
//! - server-side apply creates the object or merges the applied configuration into it, and records
//!   a `managedFields` entry for the manager; there is no field ownership, hence no apply conflict,
//!   and fields dropped from a later apply are not removed;
//! - no admission, validation or defaulting beyond a few Deployment fields; no watch; no
//!   aggregated discovery; timestamps of seeded objects are fixed; pods are not scheduled, they
//!   are created Running (or crash-looping) when a rollout converges;
//! - a DELETE removes the object and, at once, everything it owns (background cascading).

#![allow(
    dead_code,
    reason = "each test crate uses a different subset of the double"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// Annotation carrying a Deployment's and its `ReplicaSets`' revision.
pub const REVISION: &str = "deployment.kubernetes.io/revision";
const HASH_LABEL: &str = "pod-template-hash";
/// Deployment annotations the controller does not copy onto `ReplicaSets`.
const NOT_COPIED: [&str; 5] = [
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    "deployment.kubernetes.io/revision-history",
    "deployment.kubernetes.io/desired-replicas",
    "deployment.kubernetes.io/max-replicas",
];
/// Creation time of everything the double makes (deterministic, so two doubles seeded alike
/// serve identical objects).
const CREATED: &str = "2025-01-01T00:00:00Z";

/// One resource the double serves.
#[derive(Debug)]
struct Res {
    gv: &'static str,
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    subresources: &'static [&'static str],
}

const fn res(
    gv: &'static str,
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    subresources: &'static [&'static str],
) -> Res {
    Res {
        gv,
        plural,
        singular,
        kind,
        namespaced,
        short,
        subresources,
    }
}

const RESOURCES: &[Res] = &[
    res(
        "v1",
        "namespaces",
        "namespace",
        "Namespace",
        false,
        &["ns"],
        &["status"],
    ),
    res("v1", "pods", "pod", "Pod", true, &["po"], &["status"]),
    res(
        "v1",
        "services",
        "service",
        "Service",
        true,
        &["svc"],
        &["status"],
    ),
    res(
        "v1",
        "persistentvolumeclaims",
        "persistentvolumeclaim",
        "PersistentVolumeClaim",
        true,
        &["pvc"],
        &["status"],
    ),
    res(
        "v1",
        "configmaps",
        "configmap",
        "ConfigMap",
        true,
        &["cm"],
        &[],
    ),
    res(
        "apps/v1",
        "deployments",
        "deployment",
        "Deployment",
        true,
        &["deploy"],
        &["scale", "status"],
    ),
    res(
        "apps/v1",
        "replicasets",
        "replicaset",
        "ReplicaSet",
        true,
        &["rs"],
        &["scale", "status"],
    ),
    res(
        "apps/v1",
        "statefulsets",
        "statefulset",
        "StatefulSet",
        true,
        &["sts"],
        &["scale", "status"],
    ),
    res(
        "autoscaling/v1",
        "horizontalpodautoscalers",
        "horizontalpodautoscaler",
        "HorizontalPodAutoscaler",
        true,
        &["hpa"],
        &["status"],
    ),
    res(
        "networking.istio.io/v1beta1",
        "virtualservices",
        "virtualservice",
        "VirtualService",
        true,
        &["vs"],
        &["status"],
    ),
    res(
        "argoproj.io/v1alpha1",
        "rollouts",
        "rollout",
        "Rollout",
        true,
        &["ro"],
        &["scale", "status"],
    ),
    res(
        "velero.io/v1",
        "backups",
        "backup",
        "Backup",
        true,
        &[],
        &[],
    ),
    res(
        "velero.io/v1",
        "restores",
        "restore",
        "Restore",
        true,
        &[],
        &[],
    ),
    res(
        "velero.io/v1",
        "backupstoragelocations",
        "backupstoragelocation",
        "BackupStorageLocation",
        true,
        &["bsl"],
        &[],
    ),
    // seed-b: core v1 Secret (dr-failover checks the non-Helm Secrets of the DR cluster).
    res("v1", "secrets", "secret", "Secret", true, &[], &[]),
];

impl Res {
    fn group(&self) -> &'static str {
        self.gv.split_once('/').map_or("", |(g, _)| g)
    }
    /// `deployments.apps`, `services`: how Status messages name the resource.
    fn qualified(&self) -> String {
        if self.group().is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group())
        }
    }
    /// Custom resources (no strategic merge patch, items keep apiVersion/kind in lists).
    fn is_crd(&self) -> bool {
        !matches!(self.group(), "" | "apps" | "autoscaling")
    }
}

fn find_res(gv: &str, plural: &str) -> Option<&'static Res> {
    RESOURCES.iter().find(|r| r.gv == gv && r.plural == plural)
}

fn find_kind(api_version: &str, kind: &str) -> Option<&'static Res> {
    RESOURCES
        .iter()
        .find(|r| r.gv == api_version && r.kind == kind)
}

/// (group/version, plural, namespace or "", name).
type Key = (String, String, String, String);

fn key_of(r: &Res, ns: &str, name: &str) -> Key {
    (
        r.gv.to_owned(),
        r.plural.to_owned(),
        if r.namespaced {
            ns.to_owned()
        } else {
            String::new()
        },
        name.to_owned(),
    )
}

/// A request the double answered.
#[derive(Debug, Clone)]
pub struct Logged {
    /// `GET`, `PATCH`, …
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// The raw query.
    pub query: String,
    /// Content-Type of the request.
    pub content_type: String,
    /// The request body, parsed when it is JSON.
    pub body: Value,
    /// Status code answered.
    pub status: u16,
    /// Whether it carried the double's bearer token.
    pub authenticated: bool,
}

#[derive(Debug, Clone)]
struct Forbid {
    verb: String,
    resource: String,
    user: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Pending {
    Rollout(String, String),
    Restore(String, String),
}

#[derive(Debug)]
struct State {
    token: String,
    anonymous: bool,
    objects: BTreeMap<Key, Value>,
    rv: u64,
    uids: u64,
    log: Vec<Logged>,
    forbidden: Vec<Forbid>,
    conflicts_left: u32,
    rollout_delay: Duration,
    restore_delay: Duration,
    never_healthy: BTreeSet<(String, String)>,
    pending: BTreeMap<Pending, Instant>,
    restored_pvcs: Vec<String>,
}

/// A running double; stops when dropped.
#[derive(Debug)]
pub struct K8sDouble {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The bearer token it accepts.
    pub token: String,
    state: Arc<Mutex<State>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for K8sDouble {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl K8sDouble {
    /// Serve on a free port of 127.0.0.1, accepting `Authorization: Bearer {token}`.
    pub fn start(token: &str) -> Self {
        let state = Arc::new(Mutex::new(State {
            token: token.to_owned(),
            anonymous: false,
            objects: BTreeMap::new(),
            rv: 1000,
            uids: 0,
            log: Vec::new(),
            forbidden: Vec::new(),
            conflicts_left: 0,
            rollout_delay: Duration::ZERO,
            restore_delay: Duration::ZERO,
            never_healthy: BTreeSet::new(),
            pending: BTreeMap::new(),
            restored_pvcs: vec!["data-postgres-0".to_owned()],
        }));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime of the Kubernetes double");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = rx.await;
                    })
                    .await;
            });
        });
        let double = Self {
            url,
            token: token.to_owned(),
            state,
            shutdown: Some(tx),
        };
        double.insert(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}),
        );
        double
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Also answer requests that carry no credentials at all (a wrong token is still refused).
    ///
    /// For kubectl only: it never sends a kubeconfig user's credentials over plain HTTP
    /// (clientcmd loads them for TLS transports only), and this double has no TLS.
    pub fn allow_anonymous(&self) {
        self.lock().anonymous = true;
    }

    /// How long a Deployment takes to converge after a change (default: at once).
    pub fn set_rollout_delay(&self, d: Duration) {
        self.lock().rollout_delay = d;
    }

    /// How long a Velero Restore takes to complete (default: at once).
    pub fn set_restore_delay(&self, d: Duration) {
        self.lock().restore_delay = d;
    }

    /// Names of the PVCs a Velero Restore brings back.
    pub fn set_restored_pvcs(&self, names: &[&str]) {
        self.lock().restored_pvcs = names.iter().map(|s| (*s).to_owned()).collect();
    }

    /// From now on, this Deployment's new pods crash-loop: its rollout never completes.
    pub fn never_healthy(&self, namespace: &str, deployment: &str) {
        self.lock()
            .never_healthy
            .insert((namespace.to_owned(), deployment.to_owned()));
    }

    /// Answer 403, as RBAC does, when `user` tries `verb` on `resource` (`deployments/scale`).
    pub fn forbid(&self, verb: &str, resource: &str, user: &str) {
        self.lock().forbidden.push(Forbid {
            verb: verb.to_owned(),
            resource: resource.to_owned(),
            user: user.to_owned(),
        });
    }

    /// Answer 409 Conflict to the next `n` writes (POST, PUT, PATCH, DELETE).
    pub fn conflict_first_writes(&self, n: u32) {
        self.lock().conflicts_left = n;
    }

    /// Every request answered so far.
    pub fn requests(&self) -> Vec<Logged> {
        self.lock().log.clone()
    }

    /// The writes answered so far (not GETs).
    pub fn writes(&self) -> Vec<Logged> {
        self.requests()
            .into_iter()
            .filter(|r| r.method != "GET")
            .collect()
    }

    /// An object as stored, by API version, kind, namespace (ignored for cluster kinds) and name.
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let r = find_kind(api_version, kind)?;
        let mut st = self.lock();
        tick(&mut st);
        st.objects.get(&key_of(r, namespace, name)).cloned()
    }

    /// Every object of a kind in a namespace.
    pub fn list(&self, api_version: &str, kind: &str, namespace: &str) -> Vec<Value> {
        let Some(r) = find_kind(api_version, kind) else {
            return Vec::new();
        };
        let mut st = self.lock();
        tick(&mut st);
        st.objects
            .iter()
            .filter(|((gv, p, ns, _), _)| {
                gv == r.gv && p == r.plural && (!r.namespaced || ns == namespace)
            })
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Create an object (as a POST would, controllers included); panics when it cannot.
    pub fn insert(&self, obj: Value) -> Value {
        let mut st = self.lock();
        let api_version = obj["apiVersion"].as_str().unwrap_or_default().to_owned();
        let kind = obj["kind"].as_str().unwrap_or_default().to_owned();
        let r = find_kind(&api_version, &kind)
            .unwrap_or_else(|| panic!("the double does not serve {api_version} {kind}"));
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned();
        match create(&mut st, r, &ns, obj) {
            Ok(v) => {
                tick(&mut st);
                v
            }
            Err(e) => panic!("insert failed: {e:?}"),
        }
    }

    /// Change an object with a merge patch (controllers included), e.g. to roll a new image out.
    pub fn merge(&self, api_version: &str, kind: &str, namespace: &str, name: &str, patch: &Value) {
        let r = find_kind(api_version, kind).expect("known kind");
        let mut st = self.lock();
        let key = key_of(r, namespace, name);
        let mut obj = st.objects.get(&key).cloned().expect("object exists");
        merge_patch(&mut obj, patch);
        update(&mut st, r, &key, obj).expect("update");
        tick(&mut st);
    }

    /// Converge every pending rollout and restore now, whatever the delays.
    pub fn settle(&self) {
        let mut st = self.lock();
        let due: Vec<Pending> = st.pending.keys().cloned().collect();
        for p in due {
            st.pending.insert(p, Instant::now());
        }
        tick(&mut st);
    }

    /// A Deployment with one revision per image, the last one live, as `kubectl apply` of each
    /// image in turn would leave it: `ReplicaSets` revision 1..n owned by the Deployment, the
    /// old ones scaled to 0, `replicas` pods of the live one running.
    pub fn deployment_with_history(
        &self,
        namespace: &str,
        name: &str,
        labels: &Value,
        container: &str,
        images: &[&str],
        replicas: i64,
    ) {
        let template = |image: &str| {
            json!({
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [{
                        "name": container,
                        "image": image,
                        "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                        "resources": {"limits": {"memory": "256Mi"}, "requests": {"cpu": "100m"}},
                        "terminationMessagePath": "/dev/termination-log",
                        "terminationMessagePolicy": "File",
                        "imagePullPolicy": "IfNotPresent",
                    }],
                    "restartPolicy": "Always",
                    "terminationGracePeriodSeconds": 30,
                    "dnsPolicy": "ClusterFirst",
                    "schedulerName": "default-scheduler",
                    "securityContext": {},
                },
            })
        };
        self.insert(json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": labels,
                "annotations": {"team": "platform"},
            },
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "template": template(images[0]),
            },
        }));
        for image in &images[1..] {
            self.merge(
                "apps/v1",
                "Deployment",
                namespace,
                name,
                &json!({"spec": {"template": template(image)}}),
            );
        }
        self.settle();
    }
}

/// A kubeconfig with one context per double (`server: http://127.0.0.1:PORT`, token auth),
/// written to `dir/kubeconfig`.
pub fn write_kubeconfig(dir: &Path, contexts: &[(&str, &K8sDouble)], current: &str) -> PathBuf {
    use std::fmt::Write as _;
    let mut y = String::from("apiVersion: v1\nkind: Config\nclusters:\n");
    for (name, d) in contexts {
        let _ = writeln!(
            y,
            "- name: {name}-cluster\n  cluster:\n    server: {}",
            d.url
        );
    }
    y.push_str("contexts:\n");
    for (name, _) in contexts {
        let _ = writeln!(
            y,
            "- name: {name}\n  context:\n    cluster: {name}-cluster\n    user: {name}-user"
        );
    }
    y.push_str("users:\n");
    for (name, d) in contexts {
        let _ = writeln!(y, "- name: {name}-user\n  user:\n    token: {}", d.token);
    }
    let _ = writeln!(y, "current-context: {current}");
    let path = dir.join("kubeconfig");
    std::fs::write(&path, y).expect("write kubeconfig");
    path
}

/// Seconds since the epoch as RFC 3339 UTC (`2025-01-01T00:00:00Z`).
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Now as RFC 3339 UTC.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
    rfc3339(secs)
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// A failed request, as a Kubernetes `Status`.
#[derive(Debug)]
struct Failure {
    code: u16,
    reason: &'static str,
    message: String,
    details: Value,
}

impl Failure {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: Value::Null,
        }
    }
    fn not_found(r: &Res, name: &str) -> Self {
        Self {
            code: 404,
            reason: "NotFound",
            message: format!("{} \"{name}\" not found", r.qualified()),
            details: json!({"name": name, "group": r.group(), "kind": r.plural}),
        }
    }
    fn conflict(r: &Res, name: &str) -> Self {
        Self {
            code: 409,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                r.qualified()
            ),
            details: json!({"name": name, "group": r.group(), "kind": r.plural}),
        }
    }
    fn invalid(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message)
    }
    fn body(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if !self.details.is_null() {
            v["details"] = self.details.clone();
        }
        v
    }
}

fn json_response(code: u16, body: &Value) -> Response {
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (bytes[i], decoded) {
            (_, Some(b)) => {
                out.push(b);
                i += 3;
                continue;
            }
            (b'+', None) => out.push(b' '),
            (b, None) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_params(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

async fn handle(
    AxState(state): AxState<Arc<Mutex<State>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut st = state.lock().unwrap_or_else(PoisonError::into_inner);
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body_value = serde_json::from_slice::<Value>(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    let credentials = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let authenticated = credentials.as_deref() == Some(format!("Bearer {}", st.token).as_str());
    let (code, out) = if authenticated || (credentials.is_none() && st.anonymous) {
        tick(&mut st);
        let q = query_params(uri.query().unwrap_or(""));
        match serve(&mut st, &method, uri.path(), &q, &content_type, &body_value) {
            Ok((code, v)) => (code, v),
            Err(f) => (f.code, f.body()),
        }
    } else {
        let f = Failure::new(401, "Unauthorized", "Unauthorized");
        (401, f.body())
    };
    st.log.push(Logged {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().unwrap_or("").to_owned(),
        content_type,
        body: if body.is_empty() {
            Value::Null
        } else {
            body_value
        },
        status: code,
        authenticated,
    });
    json_response(code, &out)
}

fn discovery_api(st: &State) -> Value {
    let _ = st;
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}],
    })
}

fn groups() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for r in RESOURCES {
        if r.gv.contains('/') && !out.contains(&r.gv) {
            out.push(r.gv);
        }
    }
    out
}

fn discovery_apis() -> Value {
    let groups: Vec<Value> = groups()
        .into_iter()
        .map(|gv| {
            let (g, v) = gv.split_once('/').unwrap_or(("", gv));
            json!({
                "name": g,
                "versions": [{"groupVersion": gv, "version": v}],
                "preferredVersion": {"groupVersion": gv, "version": v},
            })
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resource_list(gv: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for r in RESOURCES.iter().filter(|r| r.gv == gv) {
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
        });
        if !r.short.is_empty() {
            entry["shortNames"] = json!(r.short);
        }
        if !r.is_crd() && r.plural != "namespaces" {
            entry["categories"] = json!(["all"]);
        }
        resources.push(entry);
        for sub in r.subresources {
            let mut s = json!({
                "name": format!("{}/{sub}", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            });
            if *sub == "scale" {
                s["group"] = json!("autoscaling");
                s["version"] = json!("v1");
                s["kind"] = json!("Scale");
            }
            resources.push(s);
        }
    }
    if resources.is_empty() {
        return None;
    }
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources,
    }))
}

fn not_found_path() -> Failure {
    Failure {
        code: 404,
        reason: "NotFound",
        message: "the server could not find the requested resource".to_owned(),
        details: json!({"causes": [{"reason": "UnexpectedServerResponse", "message": "404 page not found"}]}),
    }
}

type Answer = Result<(u16, Value), Failure>;

fn serve(
    st: &mut State,
    method: &Method,
    path: &str,
    q: &BTreeMap<String, String>,
    content_type: &str,
    body: &Value,
) -> Answer {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (gv, rest): (String, &[&str]) = match segs.as_slice() {
        ["api"] => return Ok((200, discovery_api(st))),
        ["apis"] => return Ok((200, discovery_apis())),
        ["version"] => {
            return Ok((
                200,
                json!({"major": "1", "minor": "32", "gitVersion": "v1.32.0", "platform": "linux/amd64"}),
            ));
        }
        ["api", "v1"] => {
            return resource_list("v1")
                .map(|v| (200, v))
                .ok_or_else(not_found_path);
        }
        ["apis", g, v] => {
            return resource_list(&format!("{g}/{v}"))
                .map(|v| (200, v))
                .ok_or_else(not_found_path);
        }
        ["api", "v1", rest @ ..] => ("v1".to_owned(), rest),
        ["apis", g, v, rest @ ..] => (format!("{g}/{v}"), rest),
        _ => return Err(not_found_path()),
    };
    let (ns, plural, name, sub) = match rest {
        ["namespaces", ns, plural, tail @ ..] => (
            Some((*ns).to_owned()),
            *plural,
            tail.first().copied(),
            tail.get(1).copied(),
        ),
        [plural, tail @ ..] => (None, *plural, tail.first().copied(), tail.get(1).copied()),
        [] => return Err(not_found_path()),
    };
    let r = find_res(&gv, plural).ok_or_else(not_found_path)?;
    if r.namespaced && ns.is_none() && (name.is_some() || method != Method::GET) {
        return Err(not_found_path());
    }
    if let Some(s) = sub
        && !r.subresources.contains(&s)
    {
        return Err(not_found_path());
    }
    let ns = ns.unwrap_or_default();
    let verb = match (method.as_str(), name) {
        ("GET", Some(_)) => "get",
        ("GET", None) if q.get("watch").is_some_and(|w| w == "true" || w == "1") => "watch",
        ("GET", None) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", Some(_)) => "delete",
        ("DELETE", None) => "deletecollection",
        _ => {
            return Err(Failure::new(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            ));
        }
    };
    let resource = match sub {
        Some(s) => format!("{}/{s}", r.plural),
        None => r.plural.to_owned(),
    };
    if let Some(f) = st
        .forbidden
        .iter()
        .find(|f| f.verb == verb && f.resource == resource)
    {
        let subject = match name {
            Some(n) => format!("{} \"{n}\"", r.qualified()),
            None => r.qualified(),
        };
        let scope = if r.namespaced && !ns.is_empty() {
            format!("in the namespace \"{ns}\"")
        } else {
            "at the cluster scope".to_owned()
        };
        return Err(Failure {
            code: 403,
            reason: "Forbidden",
            message: format!(
                "{subject} is forbidden: User \"{}\" cannot {verb} resource \"{resource}\" in API group \"{}\" {scope}",
                f.user,
                r.group()
            ),
            details: json!({"name": name.unwrap_or(""), "group": r.group(), "kind": r.plural}),
        });
    }
    let writes = !matches!(verb, "get" | "list" | "watch");
    if writes && st.conflicts_left > 0 {
        st.conflicts_left -= 1;
        return Err(Failure::conflict(r, name.unwrap_or("")));
    }
    match (verb, name, sub) {
        ("list", None, None) => Ok((
            200,
            list(st, r, &ns, q.get("labelSelector").map(String::as_str))?,
        )),
        ("watch", ..) => Err(Failure::new(
            405,
            "MethodNotAllowed",
            "watch is not served by this double",
        )),
        ("get", Some(n), None | Some("status")) => st
            .objects
            .get(&key_of(r, &ns, n))
            .cloned()
            .map(|v| (200, v))
            .ok_or_else(|| Failure::not_found(r, n)),
        ("get", Some(n), Some("scale")) => {
            let obj = st
                .objects
                .get(&key_of(r, &ns, n))
                .ok_or_else(|| Failure::not_found(r, n))?;
            Ok((200, scale_of(obj)))
        }
        ("create", None, None) => {
            let mut obj = body.clone();
            if !obj.is_object() {
                return Err(Failure::new(
                    400,
                    "BadRequest",
                    "the body of the request is not a JSON object",
                ));
            }
            obj["apiVersion"] = json!(r.gv);
            obj["kind"] = json!(r.kind);
            create(st, r, &ns, obj).map(|v| (201, v))
        }
        ("update", Some(n), None | Some("status")) => {
            let key = key_of(r, &ns, n);
            let current = st
                .objects
                .get(&key)
                .cloned()
                .ok_or_else(|| Failure::not_found(r, n))?;
            precondition(r, n, &current, body)?;
            let mut obj = body.clone();
            obj["apiVersion"] = json!(r.gv);
            obj["kind"] = json!(r.kind);
            update(st, r, &key, obj).map(|v| (200, v))
        }
        ("update", Some(n), Some("scale")) => {
            let key = key_of(r, &ns, n);
            let current = st
                .objects
                .get(&key)
                .cloned()
                .ok_or_else(|| Failure::not_found(r, n))?;
            precondition(r, n, &current, body)?;
            let replicas = body.pointer("/spec/replicas").cloned().unwrap_or(json!(0));
            let mut obj = current;
            obj["spec"]["replicas"] = replicas;
            let v = update(st, r, &key, obj)?;
            Ok((200, scale_of(&v)))
        }
        ("patch", Some(n), sub) => patch(st, r, &ns, n, sub, q, content_type, body),
        ("delete", Some(n), None) => {
            let key = key_of(r, &ns, n);
            let obj = st
                .objects
                .remove(&key)
                .ok_or_else(|| Failure::not_found(r, n))?;
            let uid = obj["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            cascade(st, &uid);
            Ok((
                200,
                json!({
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": {"name": n, "group": r.group(), "kind": r.plural, "uid": uid},
                }),
            ))
        }
        _ => Err(Failure::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )),
    }
}

/// A `resourceVersion` in the request that is not the object's answers 409.
fn precondition(r: &Res, name: &str, current: &Value, body: &Value) -> Result<(), Failure> {
    match body
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
    {
        Some(rv)
            if !rv.is_empty()
                && Some(rv)
                    != current
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str) =>
        {
            Err(Failure::conflict(r, name))
        }
        _ => Ok(()),
    }
}

/// Remove everything owned (transitively) by `uid`.
fn cascade(st: &mut State, uid: &str) {
    if uid.is_empty() {
        return;
    }
    let owned: Vec<(Key, String)> = st
        .objects
        .iter()
        .filter(|(_, v)| {
            v["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|refs| refs.iter().any(|o| o["uid"] == uid))
        })
        .map(|(k, v)| {
            (
                k.clone(),
                v["metadata"]["uid"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    for (k, child) in owned {
        st.objects.remove(&k);
        cascade(st, &child);
    }
}

fn list(st: &State, r: &Res, ns: &str, selector: Option<&str>) -> Result<Value, Failure> {
    let reqs = match selector {
        Some(s) if !s.trim().is_empty() => parse_selector(s).map_err(|e| {
            Failure::new(
                400,
                "BadRequest",
                format!("unable to parse requirement: {e}"),
            )
        })?,
        _ => Vec::new(),
    };
    let items: Vec<Value> = st
        .objects
        .iter()
        .filter(|((gv, p, n, _), _)| {
            gv == r.gv && p == r.plural && (ns.is_empty() || !r.namespaced || n == ns)
        })
        .filter(|(_, v)| {
            let labels = v["metadata"]["labels"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            reqs.iter().all(|req| req.matches(&labels))
        })
        .map(|(_, v)| {
            let mut item = v.clone();
            if !r.is_crd()
                && let Some(m) = item.as_object_mut()
            {
                // Built-in lists carry apiVersion/kind on the list only.
                m.remove("apiVersion");
                m.remove("kind");
            }
            item
        })
        .collect();
    Ok(json!({
        "kind": format!("{}List", r.kind),
        "apiVersion": r.gv,
        "metadata": {"resourceVersion": st.rv.to_string()},
        "items": items,
    }))
}

/// One requirement of a label selector.
#[derive(Debug)]
enum Req {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

impl Req {
    fn matches(&self, labels: &Map<String, Value>) -> bool {
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        match self {
            Req::Eq(k, v) => get(k) == Some(v.as_str()),
            Req::NotEq(k, v) => get(k) != Some(v.as_str()),
            Req::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Req::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
            Req::Exists(k) => get(k).is_some(),
            Req::NotExists(k) => get(k).is_none(),
        }
    }
}

fn parse_selector(s: &str) -> Result<Vec<Req>, String> {
    let mut parts = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => {
                depth += 1;
                cur.push(c);
            }
            ')' => {
                depth -= 1;
                cur.push(c);
            }
            ',' if depth == 0 => parts.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    parts.push(cur);
    let values = |t: &str| -> Result<Vec<String>, String> {
        let inner = t
            .trim()
            .strip_prefix('(')
            .and_then(|x| x.strip_suffix(')'))
            .ok_or_else(|| format!("expected a (list) in `{t}`"))?;
        Ok(inner.split(',').map(|v| v.trim().to_owned()).collect())
    };
    parts
        .iter()
        .map(|p| {
            let p = p.trim();
            if let Some((k, v)) = p.split_once("!=") {
                Ok(Req::NotEq(k.trim().to_owned(), v.trim().to_owned()))
            } else if let Some((k, v)) = p.split_once("==") {
                Ok(Req::Eq(k.trim().to_owned(), v.trim().to_owned()))
            } else if let Some((k, v)) = p.split_once('=') {
                Ok(Req::Eq(k.trim().to_owned(), v.trim().to_owned()))
            } else if let Some((k, v)) = p.split_once(" notin ") {
                Ok(Req::NotIn(k.trim().to_owned(), values(v)?))
            } else if let Some((k, v)) = p.split_once(" in ") {
                Ok(Req::In(k.trim().to_owned(), values(v)?))
            } else if let Some(k) = p.strip_prefix('!') {
                Ok(Req::NotExists(k.trim().to_owned()))
            } else if !p.is_empty() && !p.contains(' ') {
                Ok(Req::Exists(p.to_owned()))
            } else {
                Err(format!("`{p}`"))
            }
        })
        .collect()
}

/// The autoscaling/v1 Scale of a workload.
fn scale_of(obj: &Value) -> Value {
    let meta = &obj["metadata"];
    let selector = obj
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"],
            "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(0))},
        "status": {
            "replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
            "selector": selector,
        },
    })
}

#[allow(clippy::too_many_arguments, reason = "one request, spelled out")]
fn patch(
    st: &mut State,
    r: &Res,
    ns: &str,
    name: &str,
    sub: Option<&str>,
    q: &BTreeMap<String, String>,
    content_type: &str,
    body: &Value,
) -> Answer {
    let key = key_of(r, ns, name);
    let media = content_type.split(';').next().unwrap_or("").trim();
    if media == "application/apply-patch+yaml" {
        let Some(manager) = q.get("fieldManager").filter(|m| !m.is_empty()) else {
            return Err(Failure::invalid(
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
            ));
        };
        if !body.is_object() {
            return Err(Failure::new(
                400,
                "BadRequest",
                "the apply patch is not a JSON (YAML) object",
            ));
        }
        let mut applied = body.clone();
        if let Some(m) = applied.as_object_mut() {
            m.remove("status");
        }
        let entry = json!({
            "manager": manager,
            "operation": "Apply",
            "apiVersion": r.gv,
            "time": now_rfc3339(),
            "fieldsType": "FieldsV1",
            "fieldsV1": {},
        });
        let with_manager = |obj: &mut Value| {
            let fields = obj["metadata"]["managedFields"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let mut fields: Vec<Value> = fields
                .into_iter()
                .filter(|f| f["manager"] != json!(manager) || f["operation"] != "Apply")
                .collect();
            fields.push(entry.clone());
            obj["metadata"]["managedFields"] = Value::Array(fields);
        };
        return match st.objects.get(&key).cloned() {
            None => {
                with_manager(&mut applied);
                applied["metadata"]["name"] = json!(name);
                create(st, r, ns, applied).map(|v| (201, v))
            }
            Some(mut current) => {
                precondition(r, name, &current, body)?;
                merge_patch(&mut current, &applied);
                with_manager(&mut current);
                update(st, r, &key, current).map(|v| (200, v))
            }
        };
    }
    let current = st
        .objects
        .get(&key)
        .cloned()
        .ok_or_else(|| Failure::not_found(r, name))?;
    let mut target = if sub == Some("scale") {
        scale_of(&current)
    } else {
        current.clone()
    };
    let before_rv = target["metadata"]["resourceVersion"].clone();
    match media {
        "application/json-patch+json" => json_patch(&mut target, body).map_err(Failure::invalid)?,
        "application/merge-patch+json" => merge_patch(&mut target, body),
        "application/strategic-merge-patch+json" => {
            if r.is_crd() {
                return Err(Failure::new(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                ));
            }
            strategic_merge(&mut target, body, "");
        }
        _ => {
            return Err(Failure::new(
                415,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got `{content_type}`)"
                ),
            ));
        }
    }
    if target["metadata"]["resourceVersion"] != before_rv {
        return Err(Failure::conflict(r, name));
    }
    if sub == Some("scale") {
        let mut obj = current;
        obj["spec"]["replicas"] = target
            .pointer("/spec/replicas")
            .cloned()
            .unwrap_or(json!(0));
        let v = update(st, r, &key, obj)?;
        return Ok((200, scale_of(&v)));
    }
    update(st, r, &key, target).map(|v| (200, v))
}

// ---------------------------------------------------------------------------------------------
// Patches

fn merge_patch(target: &mut Value, patch: &Value) {
    if let Value::Object(p) = patch {
        if !target.is_object() {
            *target = json!({});
        }
        if let Value::Object(t) = target {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
    } else {
        *target = patch.clone();
    }
}

fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "volumeMounts"
        | "imagePullSecrets"
        | "volumeDevices" => Some("name"),
        "ports" if items.iter().any(|i| i.get("containerPort").is_some()) => Some("containerPort"),
        "ports" => Some("port"),
        _ => None,
    }
}

/// Strategic merge patch, approximated (see the module documentation).
fn strategic_merge(target: &mut Value, patch: &Value, field: &str) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if k.starts_with('$') {
                        continue;
                    }
                    if v.is_null() {
                        t.remove(k);
                        continue;
                    }
                    let slot = t.entry(k.clone()).or_insert(Value::Null);
                    strategic_merge(slot, v, k);
                }
            }
        }
        Value::Array(items) => {
            let key = merge_key(field, items);
            match (key, target.as_array_mut()) {
                (Some(key), Some(existing)) => {
                    for item in items {
                        let id = item.get(key);
                        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                        let pos =
                            id.and_then(|id| existing.iter().position(|e| e.get(key) == Some(id)));
                        match (pos, delete) {
                            (Some(i), true) => {
                                existing.remove(i);
                            }
                            (Some(i), false) => strategic_merge(&mut existing[i], item, ""),
                            (None, false) => existing.push(item.clone()),
                            (None, true) => {}
                        }
                    }
                }
                _ => *target = patch.clone(),
            }
        }
        other => *target = other.clone(),
    }
}

fn pointer_tokens(path: &str) -> Result<Vec<String>, String> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| format!("invalid JSON pointer `{path}`"))?;
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn pointer_of(tokens: &[String]) -> String {
    let mut out = String::new();
    for t in tokens {
        out.push('/');
        out.push_str(&t.replace('~', "~0").replace('/', "~1"));
    }
    out
}

fn json_add(doc: &mut Value, tokens: &[String], value: Value) -> Result<(), String> {
    let Some((last, parent)) = tokens.split_last() else {
        *doc = value;
        return Ok(());
    };
    let p = doc.pointer_mut(&pointer_of(parent)).ok_or_else(|| {
        format!(
            "add operation does not apply: doc is missing path: \"{}\"",
            pointer_of(parent)
        )
    })?;
    match p {
        Value::Object(m) => {
            m.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(a) => {
            if last == "-" {
                a.push(value);
                return Ok(());
            }
            let i: usize = last
                .parse()
                .map_err(|_| format!("invalid array index `{last}`"))?;
            if i > a.len() {
                return Err(format!(
                    "add operation does not apply: index {i} out of bounds"
                ));
            }
            a.insert(i, value);
            Ok(())
        }
        _ => Err("add operation does not apply: parent is not a container".to_owned()),
    }
}

fn json_remove(doc: &mut Value, tokens: &[String]) -> Result<Value, String> {
    let (last, parent) = tokens
        .split_last()
        .ok_or_else(|| "remove operation does not apply to the root".to_owned())?;
    let missing = || {
        format!(
            "remove operation does not apply: doc is missing path: \"{}\"",
            pointer_of(tokens)
        )
    };
    let p = doc.pointer_mut(&pointer_of(parent)).ok_or_else(missing)?;
    match p {
        Value::Object(m) => m.remove(last).ok_or_else(missing),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| missing())?;
            if i < a.len() {
                Ok(a.remove(i))
            } else {
                Err(missing())
            }
        }
        _ => Err(missing()),
    }
}

/// RFC 6902 JSON patch.
fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops
        .as_array()
        .ok_or_else(|| "a JSON patch must be a list of operations".to_owned())?;
    let mut work = doc.clone();
    for op in ops {
        let kind = op["op"].as_str().unwrap_or_default();
        let path = pointer_tokens(op["path"].as_str().unwrap_or_default())?;
        let ptr = pointer_of(&path);
        match kind {
            "add" => json_add(&mut work, &path, op["value"].clone())?,
            "remove" => {
                json_remove(&mut work, &path)?;
            }
            "replace" => {
                let slot = work.pointer_mut(&ptr).ok_or_else(|| {
                    format!(
                        "replace operation does not apply: doc is missing key: {ptr}: missing value"
                    )
                })?;
                *slot = op["value"].clone();
            }
            "move" => {
                let from = pointer_tokens(op["from"].as_str().unwrap_or_default())?;
                let v = json_remove(&mut work, &from)?;
                json_add(&mut work, &path, v)?;
            }
            "copy" => {
                let from = pointer_of(&pointer_tokens(op["from"].as_str().unwrap_or_default())?);
                let v = work.pointer(&from).cloned().ok_or_else(|| {
                    format!("copy operation does not apply: doc is missing from path: {from}")
                })?;
                json_add(&mut work, &path, v)?;
            }
            "test" => {
                let is = work.pointer(&ptr).cloned().unwrap_or(Value::Null);
                if is != op["value"] {
                    return Err(format!(
                        "testing value {ptr} failed: test operation does not apply: is: {is}, expected: {}",
                        op["value"]
                    ));
                }
            }
            other => {
                return Err(format!(
                    "unexpected kind of JSON patch operation: `{other}`"
                ));
            }
        }
    }
    *doc = work;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Storage and controllers

fn prune(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter_map(|(k, x)| {
                    let x = prune(x);
                    let empty = x.is_null() || x.as_object().is_some_and(Map::is_empty);
                    (!empty).then(|| (k.clone(), x))
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(prune).collect()),
        other => other.clone(),
    }
}

fn without_hash(template: &Value) -> Value {
    let mut t = template.clone();
    if let Some(l) = t
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        l.remove(HASH_LABEL);
    }
    prune(&t)
}

/// FNV-1a of a value's canonical JSON, spelled with the alphabet Kubernetes uses for hashes.
fn hash(v: &Value, len: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in v.to_string().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut out = String::new();
    for _ in 0..len {
        out.push(ALPHABET[usize::try_from(h % 27).unwrap_or(0)] as char);
        h /= 27;
    }
    out
}

fn next_rv(st: &mut State) -> String {
    st.rv += 1;
    st.rv.to_string()
}

fn next_uid(st: &mut State) -> String {
    st.uids += 1;
    format!("6f1c0d2e-0000-4000-8000-{:012}", st.uids)
}

fn create(st: &mut State, r: &Res, ns: &str, mut obj: Value) -> Result<Value, Failure> {
    let name = match obj["metadata"]["name"].as_str() {
        Some(n) if !n.is_empty() => n.to_owned(),
        _ => match obj["metadata"]["generateName"].as_str() {
            Some(prefix) => format!("{prefix}{}", hash(&json!(st.uids + 1), 5)),
            None => {
                return Err(Failure::invalid(format!(
                    "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                    r.kind
                )));
            }
        },
    };
    let key = key_of(r, ns, &name);
    if st.objects.contains_key(&key) {
        return Err(Failure {
            code: 409,
            reason: "AlreadyExists",
            message: format!("{} \"{name}\" already exists", r.qualified()),
            details: json!({"name": name, "group": r.group(), "kind": r.plural}),
        });
    }
    if r.namespaced
        && !st.objects.contains_key(&(
            "v1".to_owned(),
            "namespaces".to_owned(),
            String::new(),
            ns.to_owned(),
        ))
    {
        return Err(Failure {
            code: 404,
            reason: "NotFound",
            message: format!("namespaces \"{ns}\" not found"),
            details: json!({"name": ns, "kind": "namespaces"}),
        });
    }
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    obj["apiVersion"] = json!(r.gv);
    obj["kind"] = json!(r.kind);
    let uid = next_uid(st);
    let rv = next_rv(st);
    let meta = &mut obj["metadata"];
    meta["name"] = json!(name);
    if r.namespaced {
        meta["namespace"] = json!(ns);
    } else if let Some(m) = meta.as_object_mut() {
        m.remove("namespace");
    }
    meta["uid"] = json!(uid);
    meta["resourceVersion"] = json!(rv);
    meta["creationTimestamp"] = json!(CREATED);
    if obj.get("spec").is_some() {
        obj["metadata"]["generation"] = json!(1);
    }
    if r.kind == "Deployment" {
        let spec = &mut obj["spec"];
        for (k, v) in [
            ("replicas", json!(1)),
            ("revisionHistoryLimit", json!(10)),
            ("progressDeadlineSeconds", json!(600)),
            (
                "strategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}),
            ),
        ] {
            if spec.get(k).is_none() {
                spec[k] = v;
            }
        }
    }
    if r.kind == "Namespace" {
        obj["status"] = json!({"phase": "Active"});
    }
    st.objects.insert(key.clone(), obj);
    controllers(st, r, &key, None);
    Ok(st.objects[&key].clone())
}

fn update(st: &mut State, r: &Res, key: &Key, mut obj: Value) -> Result<Value, Failure> {
    let old = st
        .objects
        .get(key)
        .cloned()
        .ok_or_else(|| Failure::not_found(r, &key.3))?;
    // What the client cannot change.
    for f in ["name", "namespace", "uid", "creationTimestamp"] {
        obj["metadata"][f] = old["metadata"][f].clone();
    }
    if let Some(m) = obj["metadata"].as_object_mut()
        && old["metadata"]["namespace"].is_null()
    {
        m.remove("namespace");
    }
    let gen_old = old["metadata"]["generation"].as_i64().unwrap_or(0);
    if obj.get("spec").is_some() {
        let changed = prune(&obj["spec"]) != prune(&old["spec"]);
        obj["metadata"]["generation"] = json!(if changed { gen_old + 1 } else { gen_old.max(1) });
    }
    if obj.get("status").is_none() && old.get("status").is_some() {
        obj["status"] = old["status"].clone();
    }
    obj["metadata"]["resourceVersion"] = json!(next_rv(st));
    st.objects.insert(key.clone(), obj);
    controllers(st, r, key, Some(&old));
    Ok(st.objects[key].clone())
}

/// What the controllers of a real cluster would do after a write.
fn controllers(st: &mut State, r: &Res, key: &Key, old: Option<&Value>) {
    match (r.gv, r.kind) {
        ("apps/v1", "Deployment") => deployment_changed(st, key, old),
        ("apps/v1", "StatefulSet") => {
            let n = st.objects[key]
                .pointer("/spec/replicas")
                .cloned()
                .unwrap_or(json!(1));
            let generation = st.objects[key]["metadata"]["generation"].clone();
            let obj = st.objects.get_mut(key).expect("just stored");
            obj["status"] = json!({
                "observedGeneration": generation, "replicas": n, "readyReplicas": n,
                "currentReplicas": n, "updatedReplicas": n, "availableReplicas": n,
            });
        }
        ("velero.io/v1", "Restore") if old.is_none() => {
            let at = Instant::now() + st.restore_delay;
            let obj = st.objects.get_mut(key).expect("just stored");
            obj["status"] = json!({"phase": "InProgress", "startTimestamp": now_rfc3339()});
            st.pending
                .insert(Pending::Restore(key.2.clone(), key.3.clone()), at);
        }
        _ => {}
    }
}

fn owned_by<'a>(st: &'a State, plural: &str, ns: &str, uid: &str) -> Vec<(Key, &'a Value)> {
    st.objects
        .iter()
        .filter(|((_, p, n, _), v)| {
            p == plural
                && n == ns
                && v["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| {
                        refs.iter()
                            .any(|o| o["uid"] == uid && o["controller"] == true)
                    })
        })
        .map(|(k, v)| (k.clone(), v))
        .collect()
}

fn rev_of(v: &Value) -> i64 {
    v["metadata"]["annotations"][REVISION]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The Deployment controller's reaction to a change: the `ReplicaSet` of the template (new, or an
/// old one revived with the next revision), the Deployment's revision, and a rollout to converge.
fn deployment_changed(st: &mut State, key: &Key, old: Option<&Value>) {
    let d = st.objects[key].clone();
    let ns = key.2.clone();
    let name = key.3.clone();
    let uid = d["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
    let template = d["spec"]["template"].clone();
    let spec_changed = old.is_none_or(|o| prune(&o["spec"]) != prune(&d["spec"]));
    if !spec_changed {
        return;
    }
    let owned: Vec<(Key, Value)> = owned_by(st, "replicasets", &ns, &uid)
        .into_iter()
        .map(|(k, v)| (k, v.clone()))
        .collect();
    let max_rev = owned.iter().map(|(_, v)| rev_of(v)).max().unwrap_or(0);
    let wanted = without_hash(&template);
    let matching = owned
        .iter()
        .find(|(_, v)| without_hash(&v["spec"]["template"]) == wanted)
        .cloned();
    let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1);
    let rs_name = if let Some((rs_key, rs)) = matching {
        let rev = rev_of(&rs);
        if rev < max_rev {
            let new_rev = max_rev + 1;
            let rv = next_rv(st);
            let obj = st.objects.get_mut(&rs_key).expect("owned rs");
            let history =
                obj["metadata"]["annotations"]["deployment.kubernetes.io/revision-history"]
                    .as_str()
                    .map_or_else(|| rev.to_string(), |h| format!("{h},{rev}"));
            obj["metadata"]["annotations"][REVISION] = json!(new_rev.to_string());
            obj["metadata"]["annotations"]["deployment.kubernetes.io/revision-history"] =
                json!(history);
            obj["metadata"]["resourceVersion"] = json!(rv);
        }
        rs_key.3
    } else {
        let pod_hash = hash(&wanted, 10);
        let rs_name = format!("{name}-{pod_hash}");
        let mut labels = template["metadata"]["labels"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        labels.insert(HASH_LABEL.to_owned(), json!(pod_hash));
        let mut rs_template = template.clone();
        rs_template["metadata"]["labels"] = Value::Object(labels.clone());
        let mut selector = d["spec"]["selector"].clone();
        selector["matchLabels"][HASH_LABEL] = json!(pod_hash);
        let mut annotations: Map<String, Value> = d["metadata"]["annotations"]
            .as_object()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| !NOT_COPIED.contains(&k.as_str()))
            .collect();
        annotations.insert(REVISION.to_owned(), json!((max_rev + 1).to_string()));
        annotations.insert(
            "deployment.kubernetes.io/desired-replicas".to_owned(),
            json!(replicas.to_string()),
        );
        annotations.insert(
            "deployment.kubernetes.io/max-replicas".to_owned(),
            json!((replicas + 1).to_string()),
        );
        let rs = json!({
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": rs_name,
                "namespace": ns,
                "labels": labels,
                "annotations": annotations,
                "ownerReferences": [{
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": name,
                    "uid": uid,
                    "controller": true,
                    "blockOwnerDeletion": true,
                }],
            },
            "spec": {"replicas": 0, "selector": selector, "template": rs_template},
        });
        let r = find_res("apps/v1", "replicasets").expect("replicasets");
        let _ = create(st, r, &ns, rs);
        rs_name
    };
    let rs_rev = rev_of(
        &st.objects[&key_of(
            find_res("apps/v1", "replicasets").expect("rs"),
            &ns,
            &rs_name,
        )],
    );
    let rv = next_rv(st);
    let obj = st.objects.get_mut(key).expect("deployment");
    if !obj["metadata"]["annotations"].is_object() {
        obj["metadata"]["annotations"] = json!({});
    }
    obj["metadata"]["annotations"][REVISION] = json!(rs_rev.to_string());
    obj["metadata"]["resourceVersion"] = json!(rv);
    if obj.get("status").is_none() {
        obj["status"] = json!({});
    }
    let at = Instant::now() + st.rollout_delay;
    st.pending.insert(Pending::Rollout(ns, name), at);
}

/// Converge what is due.
fn tick(st: &mut State) {
    let now = Instant::now();
    let due: Vec<Pending> = st
        .pending
        .iter()
        .filter(|(_, at)| **at <= now)
        .map(|(p, _)| p.clone())
        .collect();
    for p in due {
        st.pending.remove(&p);
        match p {
            Pending::Rollout(ns, name) => converge_rollout(st, &ns, &name),
            Pending::Restore(ns, name) => complete_restore(st, &ns, &name),
        }
    }
}

fn converge_rollout(st: &mut State, ns: &str, name: &str) {
    let dkey = key_of(
        find_res("apps/v1", "deployments").expect("deployments"),
        ns,
        name,
    );
    let Some(d) = st.objects.get(&dkey).cloned() else {
        return;
    };
    let uid = d["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
    let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1);
    let healthy = !st.never_healthy.contains(&(ns.to_owned(), name.to_owned()));
    let wanted = without_hash(&d["spec"]["template"]);
    let sets: Vec<(Key, Value)> = owned_by(st, "replicasets", ns, &uid)
        .into_iter()
        .map(|(k, v)| (k, v.clone()))
        .collect();
    // Old pods go away.
    for (_, rs) in &sets {
        let rs_uid = rs["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let pods: Vec<Key> = owned_by(st, "pods", ns, &rs_uid)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        for k in pods {
            st.objects.remove(&k);
        }
    }
    let pod_res = find_res("v1", "pods").expect("pods");
    for (rs_key, rs) in sets {
        let active = without_hash(&rs["spec"]["template"]) == wanted;
        let n = if active { replicas } else { 0 };
        let rv = next_rv(st);
        let generation = rs["metadata"]["generation"].clone();
        if let Some(obj) = st.objects.get_mut(&rs_key) {
            obj["spec"]["replicas"] = json!(n);
            let ready = if healthy { n } else { 0 };
            obj["status"] = json!({
                "replicas": n, "fullyLabeledReplicas": n, "readyReplicas": ready,
                "availableReplicas": ready, "observedGeneration": generation,
            });
            obj["metadata"]["resourceVersion"] = json!(rv);
        }
        if !active {
            continue;
        }
        let rs_name = rs_key.3.clone();
        let rs_uid = rs["metadata"]["uid"].clone();
        let template = &rs["spec"]["template"];
        for i in 0..n {
            let pod_name = format!("{rs_name}-{}", hash(&json!([rs_name, i]), 5));
            let containers = template["spec"]["containers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let statuses: Vec<Value> = containers
                .iter()
                .map(|c| {
                    if healthy {
                        json!({"name": c["name"], "image": c["image"], "ready": true, "started": true,
                               "restartCount": 0, "state": {"running": {"startedAt": now_rfc3339()}}})
                    } else {
                        json!({"name": c["name"], "image": c["image"], "ready": false, "started": false,
                               "restartCount": 5, "state": {"waiting": {"reason": "CrashLoopBackOff",
                               "message": "back-off 2m40s restarting failed container"}}})
                    }
                })
                .collect();
            let pod = json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": pod_name,
                    "namespace": ns,
                    "labels": template["metadata"]["labels"],
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs_name,
                                         "uid": rs_uid, "controller": true, "blockOwnerDeletion": true}],
                },
                "spec": template["spec"],
                "status": {
                    "phase": "Running",
                    "conditions": [{"type": "Ready", "status": if healthy { "True" } else { "False" }}],
                    "containerStatuses": statuses,
                },
            });
            let _ = create(st, pod_res, ns, pod);
        }
    }
    let generation = d["metadata"]["generation"].clone();
    let status = if healthy {
        json!({
            "observedGeneration": generation, "replicas": replicas, "updatedReplicas": replicas,
            "readyReplicas": replicas, "availableReplicas": replicas,
            "conditions": [
                {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                 "message": "Deployment has minimum availability."},
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
                 "message": format!("ReplicaSet \"{name}\" has successfully progressed.")},
            ],
        })
    } else {
        json!({
            "observedGeneration": generation, "replicas": replicas, "updatedReplicas": replicas,
            "readyReplicas": 0, "availableReplicas": 0, "unavailableReplicas": replicas,
            "conditions": [
                {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable",
                 "message": "Deployment does not have minimum availability."},
                {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated",
                 "message": format!("ReplicaSet \"{name}\" is progressing.")},
            ],
        })
    };
    let rv = next_rv(st);
    if let Some(obj) = st.objects.get_mut(&dkey) {
        obj["status"] = status;
        obj["metadata"]["resourceVersion"] = json!(rv);
    }
}

fn complete_restore(st: &mut State, ns: &str, name: &str) {
    let key = key_of(
        find_res("velero.io/v1", "restores").expect("restores"),
        ns,
        name,
    );
    let Some(restore) = st.objects.get(&key).cloned() else {
        return;
    };
    let backup = restore["spec"]["backupName"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let namespaces: Vec<String> = restore["spec"]["includedNamespaces"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let pvc_res = find_res("v1", "persistentvolumeclaims").expect("pvcs");
    let names = st.restored_pvcs.clone();
    for target in &namespaces {
        let ns_key = (
            "v1".to_owned(),
            "namespaces".to_owned(),
            String::new(),
            target.clone(),
        );
        if !st.objects.contains_key(&ns_key) {
            let nsr = find_res("v1", "namespaces").expect("namespaces");
            let _ = create(
                st,
                nsr,
                "",
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": target}}),
            );
        }
        for pvc in &names {
            let volume = format!("pvc-{}", hash(&json!([target, pvc, name]), 10));
            let _ = create(
                st,
                pvc_res,
                target,
                json!({
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "metadata": {
                        "name": pvc,
                        "labels": {"velero.io/restore-name": name, "velero.io/backup-name": backup},
                    },
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}},
                             "volumeName": volume, "storageClassName": "standard"},
                    "status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"], "capacity": {"storage": "10Gi"}},
                }),
            );
        }
    }
    let rv = next_rv(st);
    if let Some(obj) = st.objects.get_mut(&key) {
        let started = obj["status"]["startTimestamp"].clone();
        obj["status"] = json!({
            "phase": "Completed",
            "startTimestamp": started,
            "completionTimestamp": now_rfc3339(),
            "progress": {"itemsRestored": names.len() * namespaces.len(), "totalItems": names.len() * namespaces.len()},
        });
        obj["metadata"]["resourceVersion"] = json!(rv);
    }
}

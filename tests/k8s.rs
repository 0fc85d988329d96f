//! The `k8s` kind against the Kubernetes API server double (`tests/support/k8s_double.rs`): each
//! operation, its failures, and the double cross-checked with the real `kubectl` (the shipped
//! runbooks have their own tests: `tests/app_rollback.rs`, `tests/dr_failover.rs`).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::k8s_double::{K8sDouble, write_kubeconfig};
use support::{RunOutput, Runbook, TempDir};

const PRIMARY_TOKEN: &str = "primary-7c1d-secret-token";
const DR_TOKEN: &str = "dr-93fa-secret-token";
const IMAGES: [&str; 3] = [
    "registry.example/web:v1",
    "registry.example/web:v2",
    "registry.example/web:v3",
];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/k8s")
        .join(name)
}

/// A double holding namespace `prod` with Deployment `web` at its third revision (images v1, v2,
/// v3), its Service, an Istio `VirtualService` split 90/10, and namespace `velero`.
fn seeded(token: &str) -> K8sDouble {
    let d = K8sDouble::start(token);
    for ns in ["prod", "velero"] {
        d.insert(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
    }
    d.deployment_with_history(
        "prod",
        "web",
        &json!({"app": "web", "tier": "frontend"}),
        "app",
        &IMAGES,
        2,
    );
    d.insert(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "prod"},
        "spec": {"selector": {"app": "web", "color": "green"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }));
    d.insert(json!({
        "apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
        "metadata": {"name": "web", "namespace": "prod"},
        "spec": {"hosts": ["web"], "http": [{"route": [
            {"destination": {"host": "web", "subset": "stable"}, "weight": 90},
            {"destination": {"host": "web", "subset": "canary"}, "weight": 10},
        ]}]},
    }));
    d
}

/// `runbook exec FILE --yes --output json` with `KUBECONFIG`.
fn exec(file: &Path, kubeconfig: &Path) -> Runbook {
    Runbook::exec(file)
        .yes()
        .json()
        .env("KUBECONFIG", kubeconfig.to_str().expect("utf-8 path"))
}

fn succeeded<'a>(out: &'a RunOutput, step: &str) -> &'a Value {
    out.of_step("step_succeeded", step)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("step {step} did not succeed\n{}", out.dump()))
}

fn failed_error(out: &RunOutput, step: &str) -> String {
    out.of_step("step_failed", step)
        .into_iter()
        .next()
        .and_then(|e| e["error"].as_str())
        .unwrap_or_else(|| panic!("step {step} did not fail\n{}", out.dump()))
        .to_owned()
}

/// Drop nulls and empty objects: Go and Rust encode the same template differently.
fn prune(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter_map(|(k, x)| {
                    let x = prune(x);
                    let empty = x.is_null() || x.as_object().is_some_and(serde_json::Map::is_empty);
                    (!empty).then(|| (k.clone(), x))
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(prune).collect()),
        other => other.clone(),
    }
}

fn deployment(d: &K8sDouble) -> Value {
    d.get("apps/v1", "Deployment", "prod", "web")
        .expect("deployment web")
}

fn image_of(d: &Value) -> String {
    d.pointer("/spec/template/spec/containers/0/image")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

// ---------------------------------------------------------------------------------------------
// kubectl

/// The real kubectl (Debian's `kubernetes-client`); missing fails the test.
fn kubectl() -> PathBuf {
    support::tool("kubectl", &["/usr/bin/kubectl"], "kubernetes-client")
}

struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
    cache: PathBuf,
}

impl Kubectl {
    fn run(&self, context: &str, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(&self.bin)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--context")
            .arg(context)
            .arg("--cache-dir")
            .arg(&self.cache)
            .arg("--request-timeout=10s")
            .args(args)
            .env_remove("KUBECONFIG")
            .output()
            .expect("run kubectl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    #[track_caller]
    fn ok(&self, context: &str, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.run(context, args);
        assert!(
            ok,
            "kubectl {args:?} failed against the double:\n{stdout}\n{stderr}"
        );
        stdout
    }
}

#[test]
fn kubectl_get_sees_what_the_double_serves() {
    let bin = kubectl();
    let d = seeded(PRIMARY_TOKEN);
    d.allow_anonymous();
    let tmp = TempDir::new("k8s-kubectl-get");
    let kubeconfig = write_kubeconfig(tmp.path(), &[("primary", &d)], "primary");
    let k = Kubectl {
        bin,
        kubeconfig,
        cache: tmp.join("cache"),
    };
    let out = k.ok(
        "primary",
        &["-n", "prod", "get", "deployment", "web", "-o", "json"],
    );
    let v: Value = serde_json::from_str(&out).expect("kubectl -o json");
    assert_eq!(image_of(&v), IMAGES[2]);
}

/// Two identical doubles (the kubectl one also answers kubectl's credential-less requests),
/// a kubeconfig with context `kubectl` → the first and `runbook` → the second.
fn twins(tag: &str) -> (K8sDouble, K8sDouble, TempDir, PathBuf) {
    let a = seeded(PRIMARY_TOKEN);
    a.allow_anonymous();
    let b = seeded(DR_TOKEN);
    let tmp = TempDir::new(tag);
    let kubeconfig = write_kubeconfig(tmp.path(), &[("kubectl", &a), ("runbook", &b)], "kubectl");
    (a, b, tmp, kubeconfig)
}

/// The one write a command made, as (method, path, content type, pruned body).
fn the_write(d: &K8sDouble) -> (String, String, String, Value) {
    let writes = d.writes();
    assert_eq!(writes.len(), 1, "expected exactly one write: {writes:#?}");
    let w = &writes[0];
    (
        w.method.clone(),
        w.path.clone(),
        w.content_type.split(';').next().unwrap_or("").to_owned(),
        prune(&w.body),
    )
}

#[test]
fn rollout_undo_does_what_kubectl_rollout_undo_does() {
    let bin = kubectl();
    for to_revision in [None, Some(1)] {
        let (a, b, tmp, kubeconfig) = twins("k8s-undo-kubectl");
        let k = Kubectl {
            bin: bin.clone(),
            kubeconfig: kubeconfig.clone(),
            cache: tmp.join("cache"),
        };
        let mut args = vec!["-n", "prod", "rollout", "undo", "deployment/web"];
        let flag = to_revision.map(|r| format!("--to-revision={r}"));
        if let Some(f) = &flag {
            args.push(f);
        }
        let said = k.ok("kubectl", &args);
        assert!(said.contains("rolled back"), "kubectl said: {said}");

        let mut rb = exec(&fixture("undo.yaml"), &kubeconfig).param("context", "runbook");
        if let Some(r) = to_revision {
            rb = rb.param("to_revision", &r.to_string());
        }
        let out = rb.run();
        out.assert_code(0);
        let result = &succeeded(&out, "undo")["result"];
        let want = to_revision.unwrap_or(2);
        assert_eq!(result["from_revision"], 3, "{result}");
        assert_eq!(result["to_revision"], want, "{result}");
        assert_eq!(result["images_before"]["app"], IMAGES[2]);
        assert_eq!(
            result["images_after"]["app"],
            IMAGES[usize::try_from(want - 1).expect("revision")]
        );
        assert!(
            b.requests().iter().all(|r| r.authenticated),
            "runbook must send the kubeconfig user's token"
        );

        // The same request (a JSON patch of the template and annotations, as kubectl builds it)…
        assert_eq!(
            the_write(&a),
            the_write(&b),
            "kubectl's and runbook's rollback patches differ"
        );
        // …and the same Deployment and ReplicaSets afterwards (revision 4 revives the target).
        a.settle();
        b.settle();
        let (da, db) = (deployment(&a), deployment(&b));
        assert_eq!(prune(&da["spec"]), prune(&db["spec"]));
        assert_eq!(da["metadata"]["annotations"], db["metadata"]["annotations"]);
        assert_eq!(
            da["metadata"]["annotations"][support::k8s_double::REVISION],
            "4"
        );
        let revisions = |d: &K8sDouble| {
            let mut v: Vec<(String, String)> = d
                .list("apps/v1", "ReplicaSet", "prod")
                .iter()
                .map(|rs| {
                    (
                        rs["metadata"]["annotations"][support::k8s_double::REVISION]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                        image_of(rs),
                    )
                })
                .collect();
            v.sort();
            v
        };
        assert_eq!(revisions(&a), revisions(&b));
        // kubectl reads the rolled-back Deployment from the runbook's double as it reads its own.
        let seen_a: Value = serde_json::from_str(&k.ok(
            "kubectl",
            &["-n", "prod", "get", "deployment", "web", "-o", "json"],
        ))
        .expect("json");
        b.allow_anonymous();
        let seen_b: Value = serde_json::from_str(&k.ok(
            "runbook",
            &["-n", "prod", "get", "deployment", "web", "-o", "json"],
        ))
        .expect("json");
        assert_eq!(prune(&seen_a["spec"]), prune(&seen_b["spec"]));
        assert_eq!(image_of(&seen_b), image_of(&seen_a));
    }
}

#[test]
fn scale_does_what_kubectl_scale_does() {
    let bin = kubectl();
    let (a, b, tmp, kubeconfig) = twins("k8s-scale-kubectl");
    let k = Kubectl {
        bin,
        kubeconfig: kubeconfig.clone(),
        cache: tmp.join("cache"),
    };
    let said = k.ok(
        "kubectl",
        &["-n", "prod", "scale", "deployment/web", "--replicas=5"],
    );
    assert!(said.contains("scaled"), "kubectl said: {said}");
    let out = exec(&fixture("scale.yaml"), &kubeconfig)
        .param("context", "runbook")
        .param("replicas", "5")
        .run();
    out.assert_code(0);
    let result = &succeeded(&out, "scale")["result"];
    assert_eq!(result["previous"], 2, "{result}");
    assert_eq!(result["replicas"], 5, "{result}");
    // Both through the scale subresource: runbook with a merge patch carrying the
    // resourceVersion it read as a precondition, kubectl with the same merge patch (kubectl
    // before 1.15 read the Scale and PUT it back: accepted too).
    let (ma, pa, ca, ba) = the_write(&a);
    let (mb, pb, cb, bb) = the_write(&b);
    assert_eq!(pa, pb);
    assert_eq!(
        (mb.as_str(), cb.as_str()),
        ("PATCH", "application/merge-patch+json")
    );
    assert!(
        (ma.as_str(), ca.as_str()) == ("PATCH", "application/merge-patch+json") || ma == "PUT",
        "kubectl wrote {ma} {ca}"
    );
    assert_eq!(pb, "/apis/apps/v1/namespaces/prod/deployments/web/scale");
    assert_eq!(ba["spec"], bb["spec"]);
    assert!(bb["metadata"]["resourceVersion"].is_string(), "{bb}");
    b.allow_anonymous();
    for ctx in ["kubectl", "runbook"] {
        let seen: Value = serde_json::from_str(&k.ok(
            ctx,
            &["-n", "prod", "get", "deployment", "web", "-o", "json"],
        ))
        .expect("json");
        assert_eq!(seen["spec"]["replicas"], 5, "{ctx}: {seen}");
    }
}

#[test]
fn get_returns_the_object_kubectl_get_prints() {
    let bin = kubectl();
    let (a, _b, tmp, kubeconfig) = twins("k8s-get-kubectl");
    let k = Kubectl {
        bin,
        kubeconfig: kubeconfig.clone(),
        cache: tmp.join("cache"),
    };
    for (api_version, kind, name, ns) in [
        ("apps/v1", "Deployment", "web", "prod"),
        (
            "networking.istio.io/v1beta1",
            "VirtualService",
            "web",
            "prod",
        ),
        ("v1", "Namespace", "velero", "prod"),
    ] {
        let resource = match kind {
            "VirtualService" => "virtualservices.networking.istio.io".to_owned(),
            other => other.to_lowercase(),
        };
        let printed: Value = serde_json::from_str(
            &k.ok("kubectl", &["-n", ns, "get", &resource, name, "-o", "json"]),
        )
        .expect("kubectl json");
        let out = exec(&fixture("get.yaml"), &kubeconfig)
            .param("context", "kubectl")
            .param("namespace", ns)
            .param("api_version", api_version)
            .param("kind", kind)
            .param("name", name)
            .run();
        out.assert_code(0);
        assert_eq!(
            succeeded(&out, "get")["result"]["object"],
            printed,
            "runbook's result.object differs from `kubectl get -o json` for {kind}/{name}"
        );
    }
    drop(a);
}

// ---------------------------------------------------------------------------------------------
// Each operation and its failures

#[test]
fn every_operation_against_the_current_context() {
    let d = seeded(PRIMARY_TOKEN);
    // Slow enough that the rollout gate sees the rollout in progress first, even on a busy machine.
    d.set_rollout_delay(Duration::from_secs(1));
    d.insert(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": "prod"},
        "spec": {"replicas": 1, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                 "template": {"metadata": {"labels": {"app": "db"}},
                              "spec": {"containers": [{"name": "postgres", "image": "postgres:16"}]}}},
    }));
    let tmp = TempDir::new("k8s-ops");
    let kubeconfig = write_kubeconfig(tmp.path(), &[("primary", &d)], "primary");
    let out = exec(&fixture("ops.yaml"), &kubeconfig).run();
    out.assert_code(0);
    // The restart annotation is on the pod template; the strategic patch kept the container.
    let dep = deployment(&d);
    assert!(
        dep["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
            .is_string(),
        "{dep}"
    );
    assert_eq!(image_of(&dep), "registry.example/web:v4");
    // The operation and where it ran, for the journal.
    let commands: Vec<String> = out
        .of("command")
        .iter()
        .filter_map(|e| e["command"].as_str().map(str::to_owned))
        .collect();
    assert!(
        commands.contains(&"set image deployment/web app=registry.example/web:v4 (context primary, namespace prod)".to_owned()),
        "{commands:#?}"
    );
    // Server-side apply with field manager `runbook`, and the ConfigMap deleted afterwards.
    let applies: Vec<_> = d
        .writes()
        .into_iter()
        .filter(|w| w.content_type.starts_with("application/apply-patch+yaml"))
        .collect();
    assert_eq!(applies.len(), 2, "{applies:#?}");
    assert!(
        applies
            .iter()
            .all(|w| w.query.contains("fieldManager=runbook"))
    );
    let restore = d
        .get("velero.io/v1", "Restore", "velero", "r1")
        .expect("restore applied");
    assert_eq!(
        restore["metadata"]["managedFields"][0]["manager"],
        "runbook"
    );
    assert!(d.get("v1", "ConfigMap", "prod", "runbook-flags").is_none());
    assert_eq!(
        d.get("apps/v1", "StatefulSet", "prod", "db").expect("sts")["spec"]["replicas"],
        2
    );
    // A rollout gate that polled until the double's Deployment converged.
    let polls = out
        .of_step("check", "rollout")
        .iter()
        .filter(|c| c["passed"] == false)
        .count();
    assert!(polls >= 1, "the rollout converged at once?\n{}", out.dump());
    // No credential in anything printed.
    assert!(!out.stdout.contains(PRIMARY_TOKEN) && !out.stderr.contains(PRIMARY_TOKEN));
}

#[test]
fn undo_to_a_revision_that_does_not_exist_lists_those_that_do() {
    let d = seeded(PRIMARY_TOKEN);
    let tmp = TempDir::new("k8s-undo-missing");
    let kubeconfig = write_kubeconfig(tmp.path(), &[("primary", &d)], "primary");
    let out = exec(&fixture("undo.yaml"), &kubeconfig)
        .param("context", "primary")
        .param("to_revision", "7")
        .run();
    out.assert_code(1);
    let error = failed_error(&out, "undo");
    assert!(
        error.contains("revision 7 of deployment/web not found")
            && error.contains("the revisions that exist: 1, 2, 3"),
        "{error}"
    );
    assert!(d.writes().is_empty(), "nothing may change");
}

#[test]
fn forbidden_scale_names_the_verb_the_resource_and_the_user() {
    let d = seeded(DR_TOKEN);
    let user = "system:serviceaccount:ops:runbook";
    d.forbid("patch", "deployments/scale", user);
    let tmp = TempDir::new("k8s-403");
    let kubeconfig = write_kubeconfig(tmp.path(), &[("dr", &d)], "dr");
    let out = exec(&fixture("scale.yaml"), &kubeconfig)
        .param("context", "dr")
        .run();
    out.assert_code(1);
    let error = failed_error(&out, "scale");
    assert!(error.contains("forbidden (403)"), "{error}");
    assert!(error.contains(&format!("user \"{user}\"")), "{error}");
    assert!(
        error.contains("`patch`") && error.contains("\"deployments/scale\""),
        "{error}"
    );
    assert!(
        error.contains("namespace \"prod\"") && error.contains("context dr"),
        "{error}"
    );
    assert!(!out.stdout.contains(DR_TOKEN) && !out.stderr.contains(DR_TOKEN));
}

#[test]
fn a_conflict_on_the_first_attempt_succeeds_on_retry() {
    let d = seeded(DR_TOKEN);
    d.conflict_first_writes(1);
    let tmp = TempDir::new("k8s-409");
    let kubeconfig = write_kubeconfig(tmp.path(), &[("dr", &d)], "dr");
    let out = exec(&fixture("scale.yaml"), &kubeconfig)
        .param("context", "dr")
        .param("replicas", "4")
        .run();
    out.assert_code(0);
    let retries = out.of_step("retry", "scale");
    assert_eq!(retries.len(), 1, "{}", out.dump());
    let why = retries[0]["error"].as_str().unwrap_or_default();
    assert!(
        why.contains("conflict (409)") && why.contains("the object has been modified"),
        "{why}"
    );
    assert_eq!(succeeded(&out, "scale")["attempts"], 2);
    assert_eq!(deployment(&d)["spec"]["replicas"], 4);
}

#[test]
fn a_rollout_that_never_becomes_healthy_fails_within_its_window() {
    let d = seeded(PRIMARY_TOKEN);
    d.never_healthy("prod", "web");
    let tmp = TempDir::new("k8s-never");
    let kubeconfig = write_kubeconfig(tmp.path(), &[("primary", &d)], "primary");
    let started = Instant::now();
    let out = exec(&fixture("gate-never.yaml"), &kubeconfig)
        .param("context", "primary")
        .param("image", "registry.example/web:v4-broken")
        .run();
    let took = started.elapsed();
    out.assert_code(1);
    let error = failed_error(&out, "set-image");
    assert!(
        error.contains("0 of 2 updated replicas are available")
            && error.contains("still failing after 2s"),
        "{error}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(!out.touched("after") || out.of_step("step_started", "after").is_empty());
}

#[test]
fn failures_are_clear_and_never_leak_the_token() {
    let d = seeded(PRIMARY_TOKEN);
    let tmp = TempDir::new("k8s-errors");
    // A context whose server is not listening, one with a wrong token.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_url = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let kubeconfig = write_kubeconfig(tmp.path(), &[("primary", &d)], "primary");
    let extra = format!(
        "{}\n# appended: two more contexts\n",
        std::fs::read_to_string(&kubeconfig).expect("read")
    );
    let extra = extra
        .replace(
            "contexts:\n",
            "contexts:\n- name: down\n  context:\n    cluster: down-cluster\n    user: primary-user\n- name: stale\n  context:\n    cluster: primary-cluster\n    user: stale-user\n",
        )
        .replace(
            "clusters:\n",
            &format!("clusters:\n- name: down-cluster\n  cluster:\n    server: {dead_url}\n"),
        )
        .replace("users:\n", "users:\n- name: stale-user\n  user:\n    token: expired-token-0000\n");
    std::fs::write(&kubeconfig, extra).expect("write kubeconfig");
    let run = |context: &str, extra: &[(&str, &str)]| {
        let mut rb = exec(&fixture("errors.yaml"), &kubeconfig).param("context", context);
        for (k, v) in extra {
            rb = rb.param(k, v);
        }
        let out = rb.run();
        out.assert_code(1);
        assert!(!out.stdout.contains(PRIMARY_TOKEN) && !out.stderr.contains(PRIMARY_TOKEN));
        assert!(!out.stdout.contains("expired-token-0000"));
        failed_error(&out, "read")
    };
    let e = run("nope", &[]);
    assert!(
        e.contains("unknown kubeconfig context `nope`")
            && e.contains("the contexts that exist: down, stale, primary"),
        "{e}"
    );
    let e = run("down", &[]);
    assert!(
        e.contains("cannot reach the API server of context down at") && e.contains(&dead_url),
        "{e}"
    );
    let e = run("stale", &[]);
    assert!(e.contains("unauthorized (401)"), "{e}");
    let e = run("primary", &[("name", "nope")]);
    assert!(
        e.contains("not found (404)") && e.contains("deployments.apps \"nope\" not found"),
        "{e}"
    );
    let e = run(
        "primary",
        &[
            ("api_version", "argoproj.io/v1alpha1"),
            ("kind", "AnalysisRun"),
        ],
    );
    assert!(
        e.contains("argoproj.io/v1alpha1 has no kind AnalysisRun"),
        "{e}"
    );
    let e = run(
        "primary",
        &[("api_version", "example.com/v1"), ("kind", "Widget")],
    );
    assert!(e.contains("does not serve example.com/v1"), "{e}");
}

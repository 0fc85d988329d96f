//! The triggers file of `runbook serve`: which firing alert starts which runbook, with which
//! params, how callers authenticate, and the limits — its model, its JSON Schema and its checks
//! (every problem with `file:line:col`, like a runbook).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::diagnostic::{Diagnostic, SourceFile, did_you_mean};
use crate::model::{DurationText, SecretSource, Span, Spanned};

/// Default for `max_runs`.
pub const DEFAULT_MAX_RUNS: u32 = 4;

/// The header carrying an HMAC signature when `auth.hmac.header` does not name one.
pub const DEFAULT_SIGNATURE_HEADER: &str = "x-runbook-signature";

/// Root variables a param template may read.
const TEMPLATE_ROOTS: [&str; 4] = ["labels", "annotations", "alert", "group"];

/// A whole triggers file.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "triggers",
    description = "Triggers of `runbook serve`: Alertmanager alerts that start runbooks."
)]
pub struct TriggersFile {
    /// How webhook callers (Alertmanager, a chat button) prove who they are. Required: an
    /// endpoint that starts runbooks is never open.
    pub auth: Spanned<AuthConfig>,
    /// Most runs executing at once, over every trigger (default 4); more are refused (429).
    #[serde(default)]
    pub max_runs: Option<Spanned<u32>>,
    /// Connection and request limits of the HTTP server (defaults suit a LAN webhook).
    #[serde(default)]
    pub limits: Option<Spanned<Limits>>,
    /// The triggers; every firing alert is matched against each, in order, and starts the runbook
    /// of the first that matches.
    pub triggers: Vec<Spanned<Trigger>>,
}

/// Authentication of requests. The webhook credential (`bearer` and/or `hmac`) may only
/// `POST /alerts` (and read `/metrics`, for the bearer token); people (`approvers`, or a
/// `trusted_proxy`) list runs and approve or deny; `metrics_token` only reads `/metrics`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The webhook's `Authorization: Bearer <token>` (Alertmanager's
    /// `http_config.authorization.credentials`): starts runs, never approves.
    #[serde(default)]
    pub bearer: Option<Spanned<SecretSource>>,
    /// The webhook's signed requests: an HMAC-SHA256 over method, path, timestamp, nonce and
    /// body (see the README); starts runs, never approves.
    #[serde(default)]
    pub hmac: Option<Spanned<HmacConfig>>,
    /// A token that may only read `/metrics` (a Prometheus scrape's `authorization`).
    #[serde(default)]
    pub metrics_token: Option<Spanned<SecretSource>>,
    /// People who may list runs and approve or deny steps, each with their own bearer token,
    /// stored as its SHA-256: the approver recorded is the token's owner.
    #[serde(default)]
    pub approvers: Vec<Spanned<PersonToken>>,
    /// An authenticating reverse proxy whose identity header names the person (off by
    /// default): only requests from `from` are believed.
    #[serde(default)]
    pub trusted_proxy: Option<Spanned<TrustedProxy>>,
}

/// A person's token, hashed at rest.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PersonToken {
    /// Who: recorded as the approver and matched against a step's `approvers:` (use the
    /// person's account name, so that CLI and HTTP approvals count as one person).
    pub name: Spanned<String>,
    /// Lowercase hex SHA-256 of the token (`printf %s "$TOKEN" | sha256sum`).
    pub token_sha256: Spanned<String>,
}

/// A reverse proxy that authenticates people and passes their name in a header.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrustedProxy {
    /// The header carrying the authenticated name, e.g. `X-Forwarded-User`.
    pub header: Spanned<String>,
    /// Networks the proxy connects from (`127.0.0.1/32`, `10.1.2.0/24`); the header of any
    /// other peer is ignored.
    pub from: Vec<Spanned<String>>,
}

/// Limits of the HTTP server.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Most open connections (default 256); more are answered 503 and closed.
    #[serde(default)]
    pub connections: Option<Spanned<u32>>,
    /// Longest wait for a request's headers, including between requests of a kept-alive
    /// connection (default `10s`): a silent or trickling client is disconnected.
    #[serde(default)]
    pub header_timeout: Option<Spanned<DurationText>>,
    /// Longest time to receive an authenticated request's body (default `30s`): 408 after.
    #[serde(default)]
    pub body_timeout: Option<Spanned<DurationText>>,
}

/// [`Limits`] with defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadyLimits {
    /// Most open connections.
    pub connections: u32,
    /// Header (and idle) timeout.
    pub header_timeout: Duration,
    /// Body timeout.
    pub body_timeout: Duration,
}

impl Default for ReadyLimits {
    fn default() -> Self {
        Self {
            connections: 256,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
        }
    }
}

/// HMAC signature settings.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HmacConfig {
    /// The shared key.
    pub secret: SecretSource,
    /// The header carrying `sha256=<hex>` (default `X-Runbook-Signature`); the timestamp and
    /// nonce travel in `X-Runbook-Timestamp` and `X-Runbook-Nonce`.
    #[serde(default)]
    pub header: Option<String>,
}

/// Whether a started run may answer its approval steps itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The run answers its approval steps as `serve (trigger <name>)` (like `--yes`), unless
    /// the step restricts its approvers; then it is denied and the run aborts.
    #[default]
    Auto,
    /// The run starts and waits at its first approval step for a human (`runbook approve`, or
    /// `POST /runs/{id}/steps/{step}/approve`).
    Approve,
}

impl Mode {
    /// The name in responses and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Approve => "approve",
        }
    }
}

/// How many runs a trigger may start in a sliding window.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Runs allowed in the window (at least 1).
    pub runs: Spanned<u32>,
    /// The window, e.g. `1h`.
    pub per: Spanned<DurationText>,
}

/// One alert → runbook mapping.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    /// Unique name, shown in responses, metrics, logs and recorded as the approver in `auto` mode.
    pub name: Spanned<String>,
    /// The alert's `alertname` label, exactly.
    pub alertname: Spanned<String>,
    /// Labels the alert must have with exactly these values.
    #[serde(default)]
    pub labels: BTreeMap<String, Spanned<String>>,
    /// Labels whose value must match these regular expressions (whole value, like
    /// Alertmanager's `=~`).
    #[serde(default)]
    pub labels_match: BTreeMap<String, Spanned<String>>,
    /// The runbook to start, relative to this file.
    pub runbook: Spanned<String>,
    /// Params of the run: minijinja templates over `labels`, `annotations`, `alert`
    /// (`status`, `fingerprint`, `starts_at`, `generator_url`) and `group` (`labels`,
    /// `external_url`, `receiver`). A missing label is an error, never an empty string.
    #[serde(default)]
    pub params: BTreeMap<String, Spanned<String>>,
    /// `auto` (default) or `approve`.
    #[serde(default)]
    pub mode: Mode,
    /// At most `runs` runs per `per` window; more alerts are refused (429).
    #[serde(default)]
    pub rate_limit: Option<Spanned<RateLimit>>,
}

/// A checked trigger, ready to match alerts.
#[derive(Debug, Clone)]
pub struct Ready {
    /// Its name.
    pub name: String,
    /// `alertname` to match.
    pub alertname: String,
    /// Exact label matchers.
    pub labels: Vec<(String, String)>,
    /// Regex label matchers (anchored).
    pub labels_match: Vec<(String, regex::Regex)>,
    /// The runbook, resolved against the triggers file.
    pub runbook: PathBuf,
    /// Param templates.
    pub params: Vec<(String, String)>,
    /// Approval mode.
    pub mode: Mode,
    /// `(runs, window)`.
    pub rate_limit: Option<(u32, Duration)>,
}

impl Ready {
    /// Whether an alert with these labels is one this trigger handles.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        labels.get("alertname").map(String::as_str) == Some(self.alertname.as_str())
            && self
                .labels
                .iter()
                .all(|(k, v)| labels.get(k).is_some_and(|x| x == v))
            && self
                .labels_match
                .iter()
                .all(|(k, re)| re.is_match(labels.get(k).map_or("", String::as_str)))
    }
}

/// A checked triggers file.
#[derive(Debug, Clone)]
pub struct Triggers {
    /// The file, for messages.
    pub path: PathBuf,
    /// Authentication settings (secrets not resolved yet).
    pub auth: AuthConfig,
    /// Concurrency limit.
    pub max_runs: u32,
    /// HTTP limits.
    pub limits: ReadyLimits,
    /// The triggers, in file order.
    pub triggers: Vec<Ready>,
}

/// Read and check a triggers file: structure, matchers, templates, and that each runbook
/// compiles and gets every param it requires.
///
/// # Errors
/// The file and every problem found in it.
pub fn load(path: &Path) -> Result<Triggers, (SourceFile, Vec<Diagnostic>)> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        (
            SourceFile::new(name.clone(), ""),
            vec![Diagnostic::global(
                "unreadable",
                format!("failed to read the triggers file {name}: {e}"),
            )],
        )
    })?;
    let file = SourceFile::new(name, text.clone());
    let parsed: TriggersFile = match crate::parse::parse_as(&file, &text) {
        Ok(p) => p,
        Err(d) => return Err((file, vec![d])),
    };
    let mut diags = Vec::new();
    let triggers = check(path, &parsed, &mut diags);
    check_people(&parsed.auth.value, &mut diags);
    let limits = check_limits(parsed.limits.as_ref(), &mut diags);
    if diags.is_empty() {
        Ok(Triggers {
            path: path.to_path_buf(),
            auth: parsed.auth.value.clone(),
            max_runs: parsed.max_runs.map_or(DEFAULT_MAX_RUNS, |m| m.value),
            limits,
            triggers,
        })
    } else {
        diags.sort_by_key(|d| d.span.map(|s| (s.line, s.column)));
        Err((file, diags))
    }
}

/// Person tokens are 64 hex digits and name distinct people; the proxy's header and networks
/// parse.
fn check_people(auth: &AuthConfig, diags: &mut Vec<Diagnostic>) {
    let mut seen: BTreeMap<&str, Span> = BTreeMap::new();
    let mut digests: BTreeMap<String, Span> = BTreeMap::new();
    for p in &auth.approvers {
        let p = &p.value;
        let name = p.name.value.as_str();
        if !valid_person(name) {
            diags.push(
                Diagnostic::new(
                    "bad-approver-name",
                    format!("approver name {name:?} is not a usable name"),
                    p.name.span,
                )
                .with_help("use the person's account name: letters, digits, `.`, `_`, `-`, `@` (at most 64)"),
            );
        }
        if let Some(first) = seen.get(name) {
            diags.push(
                Diagnostic::new(
                    "duplicate-approver",
                    format!("approver `{name}` is listed twice"),
                    p.name.span,
                )
                .with_related(*first, "first listed here")
                .with_help("give each person one entry; to rotate a token, replace its digest"),
            );
        } else {
            seen.insert(name, p.name.span);
        }
        let hex = &p.token_sha256.value;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            diags.push(
                Diagnostic::new(
                    "bad-token-digest",
                    format!("`token_sha256` of `{name}` is not a SHA-256 digest (64 hex digits)"),
                    p.token_sha256.span,
                )
                .with_help("store the digest, never the token: `printf %s \"$TOKEN\" | sha256sum`"),
            );
        } else if let Some(first) = digests.get(&hex.to_ascii_lowercase()) {
            diags.push(
                Diagnostic::new(
                    "shared-token",
                    format!("`{name}` has the same token as another approver"),
                    p.token_sha256.span,
                )
                .with_related(*first, "the same digest")
                .with_help(
                    "each person needs their own token: a shared one cannot say who approved",
                ),
            );
        } else {
            digests.insert(hex.to_ascii_lowercase(), p.token_sha256.span);
        }
    }
    if let Some(proxy) = &auth.trusted_proxy {
        let proxy = &proxy.value;
        if axum::http::HeaderName::from_bytes(proxy.header.value.as_bytes()).is_err() {
            diags.push(
                Diagnostic::new(
                    "bad-header",
                    format!("`{}` is not a valid header name", proxy.header.value),
                    proxy.header.span,
                )
                .with_help("e.g. `X-Forwarded-User`"),
            );
        }
        if proxy.from.is_empty() {
            diags.push(
                Diagnostic::new(
                    "proxy-from-empty",
                    "`trusted_proxy.from` is empty: no proxy would be believed",
                    proxy.header.span,
                )
                .with_help("list the proxy's address, e.g. `from: [127.0.0.1/32]`"),
            );
        }
        for net in &proxy.from {
            if parse_net(&net.value).is_none() {
                diags.push(
                    Diagnostic::new(
                        "bad-network",
                        format!("`{}` is not a network", net.value),
                        net.span,
                    )
                    .with_help("an address with its prefix length: `127.0.0.1/32`, `10.0.0.0/8`, `::1/128`"),
                );
            }
        }
    }
}

/// Whether a person's name can be recorded and compared safely (no spaces, controls or
/// look-alikes of the engine's own approvers such as `serve (trigger …)`).
pub fn valid_person(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
}

/// A network `addr/prefix`, or a bare address (a single host).
pub fn parse_net(s: &str) -> Option<ipnet::IpNet> {
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

fn check_limits(l: Option<&Spanned<Limits>>, diags: &mut Vec<Diagnostic>) -> ReadyLimits {
    let mut out = ReadyLimits::default();
    let Some(l) = l else {
        return out;
    };
    let l = &l.value;
    if let Some(c) = &l.connections {
        if c.value == 0 {
            diags.push(
                Diagnostic::new(
                    "connections-zero",
                    "`limits.connections` is 0: no request could be served",
                    c.span,
                )
                .with_help("give at least 1 (the default is 256)"),
            );
        }
        out.connections = c.value;
    }
    let mut duration = |d: &Option<Spanned<DurationText>>, what: &str, into: &mut Duration| {
        if let Some(d) = d {
            match crate::duration::parse(&d.value.0) {
                Ok(v) if !v.is_zero() => *into = v,
                Ok(_) => diags.push(
                    Diagnostic::new("timeout-zero", format!("`limits.{what}` is zero"), d.span)
                        .with_help("a duration such as `10s`"),
                ),
                Err(e) => diags.push(
                    Diagnostic::new("bad-duration", format!("`limits.{what}`: {e}"), d.span)
                        .with_help("a duration such as `10s` or `1m`"),
                ),
            }
        }
    };
    duration(&l.header_timeout, "header_timeout", &mut out.header_timeout);
    duration(&l.body_timeout, "body_timeout", &mut out.body_timeout);
    out
}

fn check(path: &Path, f: &TriggersFile, diags: &mut Vec<Diagnostic>) -> Vec<Ready> {
    let auth = &f.auth.value;
    if auth.bearer.is_none() && auth.hmac.is_none() {
        diags.push(
            Diagnostic::new(
                "auth-missing",
                "`auth` names no method: requests could not be authenticated",
                f.auth.span,
            )
            .with_help("add `bearer: {env: VAR}` (a token) or `hmac: {secret: {env: VAR}}` (a signature), or both"),
        );
    }
    if let Some(m) = &f.max_runs
        && m.value == 0
    {
        diags.push(
            Diagnostic::new(
                "max-runs-zero",
                "`max_runs` is 0: no run could ever start",
                m.span,
            )
            .with_help("give at least 1 (the default is 4)"),
        );
    }
    if f.triggers.is_empty() {
        diags.push(
            Diagnostic::global(
                "no-triggers",
                "the file has no triggers: no alert would start anything",
            )
            .with_help("add an item to `triggers:` with `name`, `alertname` and `runbook`"),
        );
    }
    let mut seen: BTreeMap<&str, Span> = BTreeMap::new();
    let mut out = Vec::new();
    for t in &f.triggers {
        let t = &t.value;
        if let Some(first) = seen.get(t.name.value.as_str()) {
            diags.push(
                Diagnostic::new(
                    "duplicate-trigger",
                    format!("trigger name `{}` is used twice", t.name.value),
                    t.name.span,
                )
                .with_related(*first, "first used here")
                .with_help("give each trigger a unique name: it labels metrics and approvals"),
            );
        } else {
            seen.insert(&t.name.value, t.name.span);
        }
        if let Some(r) = check_trigger(path, t, diags) {
            out.push(r);
        }
    }
    out
}

fn check_trigger(path: &Path, t: &Trigger, diags: &mut Vec<Diagnostic>) -> Option<Ready> {
    let before = diags.len();
    let mut labels_match = Vec::new();
    for (k, re) in &t.labels_match {
        match regex::Regex::new(&format!("^(?:{})$", re.value)) {
            Ok(r) => labels_match.push((k.clone(), r)),
            Err(e) => diags.push(
                Diagnostic::new(
                    "bad-regex",
                    format!(
                        "label matcher `{k}` is not a valid regular expression: {}",
                        first_line(&e.to_string())
                    ),
                    re.span,
                )
                .with_help("use Rust/RE2 regex syntax; the value must match the whole label"),
            ),
        }
    }
    let rate_limit = t.rate_limit.as_ref().and_then(|rl| {
        let rl = &rl.value;
        if rl.runs.value == 0 {
            diags.push(
                Diagnostic::new(
                    "rate-limit-zero",
                    "`rate_limit.runs` is 0: the trigger could never start a run",
                    rl.runs.span,
                )
                .with_help("give at least 1, or remove the trigger"),
            );
        }
        match crate::duration::parse(&rl.per.value.0) {
            Ok(d) if !d.is_zero() => Some((rl.runs.value, d)),
            Ok(_) => {
                diags.push(
                    Diagnostic::new("rate-limit-zero", "`rate_limit.per` is zero", rl.per.span)
                        .with_help("a window such as `1h`"),
                );
                None
            }
            Err(e) => {
                diags.push(
                    Diagnostic::new(
                        "bad-duration",
                        format!("`rate_limit.per`: {e}"),
                        rl.per.span,
                    )
                    .with_help("a duration such as `30m`, `1h` or `1h30m`"),
                );
                None
            }
        }
    });
    for (name, tpl) in &t.params {
        check_template(name, tpl, diags);
    }
    let runbook = crate::exec::resolve_relative(path, &t.runbook.value);
    match crate::compile::compile_path(&runbook) {
        Ok(c) => {
            let declared: Vec<&str> = c.runbook.params.keys().map(String::as_str).collect();
            for (name, tpl) in &t.params {
                if !c.runbook.params.contains_key(name) {
                    let mut d = Diagnostic::new(
                        "unknown-param",
                        format!("`{name}` is not a param of {}", runbook.display()),
                        tpl.span,
                    );
                    d = match did_you_mean(name, declared.iter().copied()) {
                        Some(s) => d.with_help(format!("did you mean `{s}`?")),
                        None => d.with_help(format!("its params are: {}", declared.join(", "))),
                    };
                    diags.push(d);
                }
            }
            let missing: BTreeSet<&str> = c
                .runbook
                .params
                .iter()
                .filter(|(k, p)| p.value.default.is_none() && !t.params.contains_key(*k))
                .map(|(k, _)| k.as_str())
                .collect();
            if !missing.is_empty() {
                diags.push(
                    Diagnostic::new(
                        "missing-param",
                        format!(
                            "{} requires {}, which this trigger does not give",
                            runbook.display(),
                            missing
                                .iter()
                                .map(|m| format!("`{m}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        t.runbook.span,
                    )
                    .with_help(
                        "add them under `params:`, e.g. `service: \"{{ labels.service }}\"`",
                    ),
                );
            }
        }
        Err((file, inner)) => {
            let message = match inner.first() {
                Some(d) if d.code == "unreadable" => {
                    format!(
                        "runbook {} cannot be used: {}",
                        runbook.display(),
                        d.message
                    )
                }
                first => format!(
                    "runbook {} is not valid ({} problem{}){}",
                    runbook.display(),
                    inner.len(),
                    if inner.len() == 1 { "" } else { "s" },
                    first.map_or_else(String::new, |d| format!(": {}", d.short(&file)))
                ),
            };
            diags.push(
                Diagnostic::new(
                    "bad-runbook",
                    message,
                    t.runbook.span,
                )
                .with_help(format!(
                    "the path is relative to the triggers file; `runbook validate {}` shows every problem",
                    runbook.display()
                )),
            );
        }
    }
    (diags.len() == before).then(|| Ready {
        name: t.name.value.clone(),
        alertname: t.alertname.value.clone(),
        labels: t
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.value.clone()))
            .collect(),
        labels_match,
        runbook,
        params: t
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.value.clone()))
            .collect(),
        mode: t.mode,
        rate_limit,
    })
}

/// A param template must parse and read only what an alert provides.
fn check_template(name: &str, tpl: &Spanned<String>, diags: &mut Vec<Diagnostic>) {
    match crate::template::template_references(&tpl.value) {
        Ok(refs) => {
            for p in &refs.paths {
                let root = p.split('.').next().unwrap_or(p);
                if !TEMPLATE_ROOTS.contains(&root) {
                    let mut d = Diagnostic::new(
                        "unknown-variable",
                        format!("param `{name}` reads `{p}`, which an alert does not provide"),
                        tpl.span,
                    );
                    d = match did_you_mean(root, TEMPLATE_ROOTS) {
                        Some(s) => d.with_help(format!("did you mean `{s}`?")),
                        None => d.with_help(
                            "templates see `labels`, `annotations`, `alert` (status, fingerprint, starts_at, generator_url) and `group` (labels, receiver, external_url)",
                        ),
                    };
                    diags.push(d);
                }
            }
        }
        Err(e) => diags.push(
            Diagnostic::new(
                "template-syntax",
                format!(
                    "param `{name}` is not a valid template: {}",
                    crate::template::describe(&e)
                ),
                tpl.span,
            )
            .with_help("templates are minijinja: `{{ labels.service }}`"),
        ),
    }
}

fn first_line(s: &str) -> String {
    s.lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or(s)
        .trim()
        .trim_start_matches("error: ")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(labels: &[(&str, &str)], re: &[(&str, &str)]) -> Ready {
        Ready {
            name: "t".into(),
            alertname: "HighErrorRate".into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            labels_match: re
                .iter()
                .map(|(k, v)| {
                    (
                        (*k).to_owned(),
                        regex::Regex::new(&format!("^(?:{v})$")).unwrap(),
                    )
                })
                .collect(),
            runbook: PathBuf::new(),
            params: Vec::new(),
            mode: Mode::Auto,
            rate_limit: None,
        }
    }

    fn alert(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn matchers_need_alertname_equal_labels_and_whole_regex_matches() {
        let t = ready(&[("service", "demo")], &[("env", "prod|staging")]);
        assert!(t.matches(&alert(&[
            ("alertname", "HighErrorRate"),
            ("service", "demo"),
            ("env", "prod")
        ])));
        assert!(!t.matches(&alert(&[
            ("alertname", "Other"),
            ("service", "demo"),
            ("env", "prod")
        ])));
        assert!(!t.matches(&alert(&[
            ("alertname", "HighErrorRate"),
            ("service", "demo2"),
            ("env", "prod")
        ])));
        // Anchored: `production` does not match `prod|staging`.
        assert!(!t.matches(&alert(&[
            ("alertname", "HighErrorRate"),
            ("service", "demo"),
            ("env", "production")
        ])));
        assert!(!t.matches(&alert(&[("alertname", "HighErrorRate"), ("env", "prod")])));
    }
}

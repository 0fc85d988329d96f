//! Who may call `runbook serve`, and as whom: the webhook's credential (a bearer token, or a
//! signed request that cannot be replayed) may only post alerts; people (their own tokens,
//! stored as SHA-256 digests, or a trusted proxy's identity header) list runs and decide
//! approvals; a metrics token only reads `/metrics`. Headers are checked before any body is read;
//! tokens are compared in constant time; secrets are resolved once and never logged.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use axum::http::{HeaderMap, HeaderName, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::triggers::{AuthConfig, DEFAULT_SIGNATURE_HEADER};
use crate::model::SecretSource;

/// The header carrying a signed request's time (seconds since the Unix epoch).
pub const TIMESTAMP_HEADER: &str = "x-runbook-timestamp";

/// The header carrying a signed request's nonce (16 to 128 of `A-Z a-z 0-9 - _`).
pub const NONCE_HEADER: &str = "x-runbook-nonce";

/// How far a signed request's timestamp may be from the server's clock.
pub const SKEW_SECS: u64 = 300;

/// Most nonces remembered at once (each for the skew window); past it, signed requests are
/// refused with 503 until old ones expire, never forgotten early.
const MAX_NONCES: usize = 100_000;

/// Why the authentication settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A secret's environment variable is not set (or is empty).
    #[error("failed to resolve the {what} secret: environment variable {var} is not set or empty")]
    Env {
        /// `bearer`, `hmac` or `metrics_token`.
        what: &'static str,
        /// The variable.
        var: String,
    },
    /// A secret's file cannot be read (or is empty).
    #[error("failed to resolve the {what} secret from {path}")]
    File {
        /// `bearer`, `hmac` or `metrics_token`.
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `POST /alerts`: start runs.
    Alerts,
    /// `GET /metrics`.
    Metrics,
    /// `GET /runs`, approve and deny: a person's business.
    People,
}

/// Who an authenticated request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The webhook's bearer token.
    Webhook,
    /// A correctly signed, fresh, never-seen request.
    Signed,
    /// The metrics token.
    Metrics,
    /// A person: their token's owner, or the name a trusted proxy vouched for.
    Person {
        /// Their name, recorded as the approver.
        name: String,
        /// `token` or `proxy`.
        via: &'static str,
    },
}

impl Principal {
    /// How the log names it.
    pub fn describe(&self) -> String {
        match self {
            Principal::Webhook => "the webhook token".to_owned(),
            Principal::Signed => "a signed request".to_owned(),
            Principal::Metrics => "the metrics token".to_owned(),
            Principal::Person { name, via } => format!("{name} ({via})"),
        }
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No credentials at all.
    Missing,
    /// A bearer token that is nobody's.
    BadToken,
    /// A signature that does not match what it must cover.
    BadSignature,
    /// A signed request without a usable timestamp, or one outside ±5 minutes (or from before
    /// the server started).
    Stale(String),
    /// A signed request without a usable nonce.
    BadNonce,
    /// A signed request seen before.
    Replay,
    /// An identity header from a peer that is not the trusted proxy (or with an unusable name).
    UntrustedIdentity(String),
    /// A valid credential that may not do this (403).
    Forbidden(&'static str),
    /// Too many signed requests in the window to remember their nonces (503).
    Busy,
}

impl Refusal {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Forbidden(_) => 403,
            Refusal::Busy => 503,
            _ => 401,
        }
    }

    /// Why, for the response body and the log (never the secret).
    pub fn reason(&self) -> String {
        match self {
            Refusal::Missing => "no credentials: send `Authorization: Bearer <token>` or a signed request".to_owned(),
            Refusal::BadToken => "the bearer token is not valid".to_owned(),
            Refusal::BadSignature => "the request's HMAC-SHA256 signature does not match (it covers method, path, timestamp, nonce and body)".to_owned(),
            Refusal::Stale(why) => format!("the signed request is not fresh: {why}"),
            Refusal::BadNonce => format!("a signed request needs a `{NONCE_HEADER}` header of 16 to 128 letters, digits, `-` or `_`, new for each request"),
            Refusal::Replay => "the signed request was already received (replayed nonce)".to_owned(),
            Refusal::UntrustedIdentity(why) => why.clone(),
            Refusal::Forbidden(why) => (*why).to_owned(),
            Refusal::Busy => "too many signed requests in the last 5 minutes: try again later".to_owned(),
        }
    }

    /// The metrics outcome label.
    pub fn outcome(&self) -> &'static str {
        match self {
            Refusal::Forbidden(_) => "forbidden",
            Refusal::Busy => "unavailable",
            _ => "unauthorized",
        }
    }
}

/// What the headers say about a request.
#[derive(Debug)]
pub enum HeaderVerdict {
    /// Authenticated by its headers: its body may be read in full.
    Ok(Principal),
    /// A signed request: read at most a small body, then [`Authenticator::verify_signed`].
    Signed(SignedParts),
    /// Refused before any body is read.
    Refused(Refusal),
}

/// The signature, timestamp and nonce of a signed request, checked for form and freshness.
#[derive(Debug)]
pub struct SignedParts {
    tag: Vec<u8>,
    timestamp: String,
    secs: u64,
    nonce: String,
}

/// Resolved authentication: what a request must carry.
pub struct Authenticator {
    bearer: Option<[u8; 32]>,
    metrics: Option<[u8; 32]>,
    hmac: Option<(Vec<u8>, HeaderName)>,
    people: Vec<(String, [u8; 32])>,
    proxy: Option<(HeaderName, Vec<ipnet::IpNet>)>,
    /// Signed requests older than this (seconds) are refused: nonces seen before a restart are
    /// not remembered, so their requests must not be accepted again.
    started_secs: u64,
    nonces: Mutex<HashMap<String, u64>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("bearer", &self.bearer.map(|_| "***"))
            .field("metrics", &self.metrics.map(|_| "***"))
            .field("hmac_header", &self.hmac.as_ref().map(|(_, h)| h))
            .field(
                "people",
                &self.people.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Warn when a secret file can be read by other accounts (it still works: refusing would take
/// the server down over a mode bit, but the operator must know).
pub fn warn_if_readable(path: &str) {
    use std::os::unix::fs::MetadataExt;
    if let Ok(m) = std::fs::metadata(path)
        && m.mode() & 0o044 != 0
    {
        eprintln!(
            "warning: secret file {path} is readable by other accounts (mode {:04o})\n  help: `chmod 600 {path}`",
            m.mode() & 0o7777
        );
    }
}

fn resolve(what: &'static str, src: &SecretSource) -> Result<Vec<u8>, AuthError> {
    match src {
        SecretSource::Env(var) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(v.into_bytes()),
            _ => Err(AuthError::Env {
                what,
                var: var.clone(),
            }),
        },
        SecretSource::File(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| AuthError::File {
                what,
                path: path.clone(),
                source,
            })?;
            warn_if_readable(path);
            let v = text.trim_end_matches(['\n', '\r']);
            if v.is_empty() {
                return Err(AuthError::File {
                    what,
                    path: path.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "the file is empty",
                    ),
                });
            }
            Ok(v.as_bytes().to_vec())
        }
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

fn now_secs() -> u64 {
    u64::try_from(crate::clock::now_ms() / 1000).unwrap_or(0)
}

impl Authenticator {
    /// Resolve the secrets of the configuration (the triggers file was checked: digests are hex,
    /// networks parse).
    ///
    /// # Errors
    /// A secret that cannot be read.
    pub fn new(cfg: &AuthConfig) -> Result<Self, AuthError> {
        let bearer = cfg
            .bearer
            .as_ref()
            .map(|b| resolve("bearer", &b.value).map(|t| digest(&t)))
            .transpose()?;
        let metrics = cfg
            .metrics_token
            .as_ref()
            .map(|b| resolve("metrics_token", &b.value).map(|t| digest(&t)))
            .transpose()?;
        let hmac = cfg
            .hmac
            .as_ref()
            .map(|h| {
                resolve("hmac", &h.value.secret).map(|k| {
                    let name = h
                        .value
                        .header
                        .clone()
                        .unwrap_or_else(|| DEFAULT_SIGNATURE_HEADER.to_owned());
                    (
                        k,
                        HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                            .unwrap_or(HeaderName::from_static(DEFAULT_SIGNATURE_HEADER)),
                    )
                })
            })
            .transpose()?;
        let people = cfg
            .approvers
            .iter()
            .filter_map(|p| {
                let d = super::hmac::unhex(&p.value.token_sha256.value)?;
                Some((p.value.name.value.clone(), <[u8; 32]>::try_from(d).ok()?))
            })
            .collect();
        let proxy = cfg.trusted_proxy.as_ref().and_then(|p| {
            let h = HeaderName::from_bytes(p.value.header.value.as_bytes()).ok()?;
            let nets = p
                .value
                .from
                .iter()
                .filter_map(|n| super::triggers::parse_net(&n.value))
                .collect();
            Some((h, nets))
        });
        Ok(Self {
            bearer,
            metrics,
            hmac,
            people,
            proxy,
            started_secs: now_secs(),
            nonces: Mutex::new(HashMap::new()),
        })
    }

    /// Judge a request by its headers alone (nothing of its body is read before this says so).
    pub fn check_headers(
        &self,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
        scope: Scope,
    ) -> HeaderVerdict {
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let given = value.as_bytes();
            let Some(token) = given
                .strip_prefix(b"Bearer ")
                .or_else(|| given.strip_prefix(b"bearer "))
            else {
                return HeaderVerdict::Refused(Refusal::BadToken);
            };
            return match self.bearer_owner(token) {
                Some(p) => match permitted(&p, scope) {
                    Ok(()) => HeaderVerdict::Ok(p),
                    Err(why) => HeaderVerdict::Refused(Refusal::Forbidden(why)),
                },
                None => HeaderVerdict::Refused(Refusal::BadToken),
            };
        }
        if let Some((name, nets)) = &self.proxy
            && let Some(value) = headers.get(name)
        {
            if !peer.is_some_and(|ip| nets.iter().any(|n| n.contains(&ip))) {
                return HeaderVerdict::Refused(Refusal::UntrustedIdentity(format!(
                    "`{name}` is only believed from the trusted proxy, not from {}",
                    peer.map_or_else(|| "an unknown peer".to_owned(), |p| p.to_string())
                )));
            }
            let who = value.to_str().unwrap_or_default().trim();
            if !super::triggers::valid_person(who) {
                return HeaderVerdict::Refused(Refusal::UntrustedIdentity(format!(
                    "`{name}` does not hold a usable name (letters, digits, `.`, `_`, `-`, `@`)"
                )));
            }
            let p = Principal::Person {
                name: who.to_owned(),
                via: "proxy",
            };
            return match permitted(&p, scope) {
                Ok(()) => HeaderVerdict::Ok(p),
                Err(why) => HeaderVerdict::Refused(Refusal::Forbidden(why)),
            };
        }
        if let Some((_, sig_header)) = &self.hmac
            && let Some(value) = headers.get(sig_header)
        {
            if let Err(why) = permitted(&Principal::Signed, scope) {
                return HeaderVerdict::Refused(Refusal::Forbidden(why));
            }
            return match signed_parts(headers, value.as_bytes(), self.started_secs) {
                Ok(parts) => HeaderVerdict::Signed(parts),
                Err(r) => HeaderVerdict::Refused(r),
            };
        }
        HeaderVerdict::Refused(Refusal::Missing)
    }

    /// Whose bearer token this is: every digest is compared, in constant time each.
    fn bearer_owner(&self, token: &[u8]) -> Option<Principal> {
        let d = digest(token);
        let mut found = None;
        if self.bearer.is_some_and(|b| bool::from(b.ct_eq(&d))) {
            found = Some(Principal::Webhook);
        }
        if self.metrics.is_some_and(|m| bool::from(m.ct_eq(&d))) {
            found = Some(Principal::Metrics);
        }
        for (name, p) in &self.people {
            if bool::from(p.ct_eq(&d)) {
                found = Some(Principal::Person {
                    name: name.clone(),
                    via: "token",
                });
            }
        }
        found
    }

    /// Verify a signed request against its body (at most the pre-authentication limit) and
    /// remember its nonce; a nonce seen within the window is a replay.
    ///
    /// # Errors
    /// The refusal.
    pub fn verify_signed(
        &self,
        method: &str,
        path: &str,
        parts: &SignedParts,
        body: &[u8],
    ) -> Result<Principal, Refusal> {
        let Some((key, _)) = &self.hmac else {
            return Err(Refusal::Missing);
        };
        let message =
            super::hmac::signed_message(method, path, &parts.timestamp, &parts.nonce, body);
        if !super::hmac::verify(key, &message, &parts.tag) {
            return Err(Refusal::BadSignature);
        }
        let now = now_secs();
        let mut seen = match self.nonces.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if seen.len() >= MAX_NONCES / 2 {
            // A nonce is needed only while its timestamp is acceptable.
            seen.retain(|_, ts| ts.saturating_add(SKEW_SECS) >= now);
        }
        if seen.contains_key(&parts.nonce) {
            return Err(Refusal::Replay);
        }
        if seen.len() >= MAX_NONCES {
            return Err(Refusal::Busy);
        }
        seen.insert(parts.nonce.clone(), parts.secs);
        Ok(Principal::Signed)
    }
}

/// What each credential may do: the webhook posts alerts (and its bearer token reads metrics);
/// people list runs, decide approvals and read metrics; the metrics token reads metrics only.
fn permitted(p: &Principal, scope: Scope) -> Result<(), &'static str> {
    match (p, scope) {
        (Principal::Webhook, Scope::Alerts | Scope::Metrics)
        | (Principal::Signed, Scope::Alerts)
        | (Principal::Metrics, Scope::Metrics)
        | (Principal::Person { .. }, Scope::People | Scope::Metrics) => Ok(()),
        (Principal::Webhook | Principal::Signed, _) => Err(
            "the webhook's credential may only post alerts: listing runs and approving need a person's credential (`auth.approvers` or `auth.trusted_proxy`)",
        ),
        (Principal::Metrics, _) => Err("the metrics token may only read /metrics"),
        (Principal::Person { .. }, _) => Err(
            "a person's credential does not post alerts: that is the webhook's (`auth.bearer` or `auth.hmac`)",
        ),
    }
}

/// The signature, timestamp and nonce headers of a signed request, checked for form and
/// freshness (before its body is read).
fn signed_parts(
    headers: &HeaderMap,
    signature: &[u8],
    started_secs: u64,
) -> Result<SignedParts, Refusal> {
    let tag = std::str::from_utf8(signature)
        .ok()
        .and_then(|s| s.trim().strip_prefix("sha256="))
        .and_then(super::hmac::unhex)
        .filter(|t| t.len() == 32)
        .ok_or(Refusal::BadSignature)?;
    let timestamp = headers
        .get(TIMESTAMP_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .ok_or_else(|| {
            Refusal::Stale(format!(
                "no `{TIMESTAMP_HEADER}` header (seconds since the Unix epoch)"
            ))
        })?
        .to_owned();
    let secs: u64 = timestamp.parse().map_err(|_| {
        Refusal::Stale(format!(
            "`{TIMESTAMP_HEADER}` is not seconds since the Unix epoch"
        ))
    })?;
    let now = now_secs();
    if secs.abs_diff(now) > SKEW_SECS {
        return Err(Refusal::Stale(format!(
            "its timestamp is {}s from the server's clock (at most {SKEW_SECS}s)",
            secs.abs_diff(now)
        )));
    }
    if secs < started_secs {
        return Err(Refusal::Stale(
            "it was signed before this server started; sign it again".to_owned(),
        ));
    }
    let nonce = headers
        .get(NONCE_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|n| {
            (16..=128).contains(&n.len())
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .ok_or(Refusal::BadNonce)?
        .to_owned();
    Ok(SignedParts {
        tag,
        timestamp,
        secs,
        nonce,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn auth() -> Authenticator {
        Authenticator {
            bearer: Some(digest(b"s3cret")),
            metrics: Some(digest(b"scrape")),
            hmac: Some((
                b"key".to_vec(),
                HeaderName::from_static(DEFAULT_SIGNATURE_HEADER),
            )),
            people: vec![("alice".to_owned(), digest(b"alice-token"))],
            proxy: None,
            started_secs: 0,
            nonces: Mutex::new(HashMap::new()),
        }
    }

    fn bearer(t: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
        );
        h
    }

    fn ok(v: &HeaderVerdict) -> Option<&Principal> {
        match v {
            HeaderVerdict::Ok(p) => Some(p),
            _ => None,
        }
    }

    #[test]
    fn each_credential_may_do_its_own_things_only() {
        let a = auth();
        let s = |t: &str, scope| a.check_headers(&bearer(t), None, scope);
        assert_eq!(ok(&s("s3cret", Scope::Alerts)), Some(&Principal::Webhook));
        assert_eq!(ok(&s("s3cret", Scope::Metrics)), Some(&Principal::Webhook));
        assert!(matches!(
            s("s3cret", Scope::People),
            HeaderVerdict::Refused(Refusal::Forbidden(_))
        ));
        assert!(matches!(
            s("scrape", Scope::People),
            HeaderVerdict::Refused(Refusal::Forbidden(_))
        ));
        assert_eq!(ok(&s("scrape", Scope::Metrics)), Some(&Principal::Metrics));
        assert_eq!(
            ok(&s("alice-token", Scope::People)),
            Some(&Principal::Person {
                name: "alice".into(),
                via: "token"
            })
        );
        assert!(matches!(
            s("alice-token", Scope::Alerts),
            HeaderVerdict::Refused(Refusal::Forbidden(_))
        ));
        assert!(matches!(
            s("nobody", Scope::People),
            HeaderVerdict::Refused(Refusal::BadToken)
        ));
        assert!(matches!(
            a.check_headers(&HeaderMap::new(), None, Scope::Alerts),
            HeaderVerdict::Refused(Refusal::Missing)
        ));
    }

    #[test]
    fn debug_never_shows_a_secret() {
        let text = format!("{:?}", auth());
        assert!(
            !text.contains("s3cret") && !text.contains("key\""),
            "{text}"
        );
    }
}

//! Who may call `runbook serve`: a bearer token or an HMAC-SHA256 signature of the body, both
//! compared in constant time; secrets are resolved once at start and never logged.

use sha2::{Digest, Sha256};

use super::hmac::{constant_time_eq, hex, hmac_sha256};
use super::triggers::{AuthConfig, DEFAULT_SIGNATURE_HEADER};
use crate::model::SecretSource;

/// Why the authentication settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A secret's environment variable is not set (or is empty).
    #[error("failed to resolve the {what} secret: environment variable {var} is not set or empty")]
    Env {
        /// `bearer` or `hmac`.
        what: &'static str,
        /// The variable.
        var: String,
    },
    /// A secret's file cannot be read (or is empty).
    #[error("failed to resolve the {what} secret from {path}")]
    File {
        /// `bearer` or `hmac`.
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Resolved authentication: what a request must carry.
#[derive(Clone)]
pub struct Authenticator {
    bearer: Option<Vec<u8>>,
    hmac: Option<(Vec<u8>, String)>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("bearer", &self.bearer.as_ref().map(|_| "***"))
            .field("hmac_header", &self.hmac.as_ref().map(|(_, h)| h))
            .finish()
    }
}

/// The verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A valid token or signature.
    Ok,
    /// No credentials at all.
    Missing,
    /// A token that is not the right one.
    BadToken,
    /// A signature that does not match the body.
    BadSignature,
}

impl Verdict {
    /// Why a request was refused, for its 401 body and the log (never the secret).
    pub fn reason(self) -> &'static str {
        match self {
            Verdict::Ok => "authenticated",
            Verdict::Missing => {
                "no credentials: send `Authorization: Bearer <token>` or a signature header"
            }
            Verdict::BadToken => "the bearer token is not valid",
            Verdict::BadSignature => "the body's HMAC-SHA256 signature does not match",
        }
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

impl Authenticator {
    /// Resolve the secrets of the configuration.
    ///
    /// # Errors
    /// A secret that cannot be read.
    pub fn new(cfg: &AuthConfig) -> Result<Self, AuthError> {
        let bearer = cfg
            .bearer
            .as_ref()
            .map(|b| resolve("bearer", &b.value))
            .transpose()?;
        let hmac = cfg
            .hmac
            .as_ref()
            .map(|h| {
                resolve("hmac", &h.value.secret).map(|k| {
                    (
                        k,
                        h.value
                            .header
                            .clone()
                            .unwrap_or_else(|| DEFAULT_SIGNATURE_HEADER.to_owned())
                            .to_ascii_lowercase(),
                    )
                })
            })
            .transpose()?;
        Ok(Self { bearer, hmac })
    }

    /// Check a request's `Authorization` header and signature header against its raw body.
    pub fn verify(&self, headers: &axum::http::HeaderMap, body: &[u8]) -> Verdict {
        let mut verdict = Verdict::Missing;
        if let (Some(token), Some(value)) =
            (&self.bearer, headers.get(axum::http::header::AUTHORIZATION))
        {
            let given = value.as_bytes();
            let presented = given
                .strip_prefix(b"Bearer ")
                .or_else(|| given.strip_prefix(b"bearer "))
                .unwrap_or(b"");
            // Compared as digests: equal lengths, so the time says nothing about the token's
            // length either.
            if constant_time_eq(&Sha256::digest(presented), &Sha256::digest(token)) {
                return Verdict::Ok;
            }
            verdict = Verdict::BadToken;
        }
        if let Some((key, header)) = &self.hmac
            && let Some(value) = headers.get(header.as_str())
        {
            let expected = format!("sha256={}", hex(&hmac_sha256(key, body)));
            let given = value.as_bytes();
            // Hex is case-insensitive; compare the lowercase form.
            let given: Vec<u8> = given.iter().map(u8::to_ascii_lowercase).collect();
            if constant_time_eq(&given, expected.as_bytes()) {
                return Verdict::Ok;
            }
            verdict = Verdict::BadSignature;
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    fn auth() -> Authenticator {
        Authenticator {
            bearer: Some(b"s3cret".to_vec()),
            hmac: Some((b"key".to_vec(), DEFAULT_SIGNATURE_HEADER.to_owned())),
        }
    }

    #[test]
    fn bearer_and_signature() {
        let a = auth();
        let mut h = HeaderMap::new();
        assert_eq!(a.verify(&h, b"{}"), Verdict::Missing);
        h.insert("authorization", HeaderValue::from_static("Bearer s3cret"));
        assert_eq!(a.verify(&h, b"{}"), Verdict::Ok);
        h.insert("authorization", HeaderValue::from_static("Bearer s3cre"));
        assert_eq!(a.verify(&h, b"{}"), Verdict::BadToken);
        let mut h = HeaderMap::new();
        let sig = format!("sha256={}", hex(&hmac_sha256(b"key", b"{}")));
        h.insert(
            DEFAULT_SIGNATURE_HEADER,
            HeaderValue::from_str(&sig).unwrap(),
        );
        assert_eq!(a.verify(&h, b"{}"), Verdict::Ok);
        assert_eq!(a.verify(&h, b"{ }"), Verdict::BadSignature);
    }

    #[test]
    fn debug_never_shows_the_token() {
        assert!(!format!("{:?}", auth()).contains("s3cret"));
    }
}

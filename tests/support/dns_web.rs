//! The web services the DR runbooks talk to besides Kubernetes and `PostgreSQL`, as one real
//! HTTP server on 127.0.0.1: health endpoints, the chat webhook, the Cloudflare DNS records API
//! and DNS-over-HTTPS (JSON). Shared by `tests/dr_failover.rs` and `tests/dr_failback.rs` through
//! `#[path]`.
#![allow(
    dead_code,
    reason = "each test binary that includes this module uses a different part of it"
)]

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

/// The Cloudflare API token the server accepts.
pub const CF_TOKEN: &str = "cf-token-4d2b";

/// The health endpoint, the chat webhook, the Cloudflare DNS API and DNS-over-HTTPS: one axum
/// server on 127.0.0.1.
pub struct Services {
    pub url: String,
    state: Arc<Mutex<Web>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

#[derive(Debug, Default)]
pub struct Web {
    pub record_ip: String,
    pub record_ttl: u64,
    /// The PUT changes the record, then answers 502 (a proxy that timed out after the origin
    /// applied the change): a DNS switch that landed but whose check failed.
    pub put_lands_then_fails: bool,
    /// What `/health-toggle` answers: 200 healthy, else 503.
    pub toggle_unhealthy: bool,
    pub notifications: Vec<Value>,
    pub dns_puts: Vec<Value>,
}

impl Services {
    /// Serve on a free port; the record starts at `record_ip` with `ttl`.
    pub fn start(record_ip: &str, ttl: u64) -> Self {
        use axum::Json;
        use axum::extract::State;
        use axum::http::{HeaderMap, StatusCode};
        use axum::routing::{get, post};

        type St = State<Arc<Mutex<Web>>>;
        let state = Arc::new(Mutex::new(Web {
            record_ip: record_ip.to_owned(),
            record_ttl: ttl,
            ..Web::default()
        }));
        let record = |ip: &str, ttl: u64| {
            json!({"success": true, "errors": [], "result": {
                "id": "rec-456", "type": "A", "name": "api.edgelink.com", "content": ip, "ttl": ttl, "proxied": false}})
        };
        let authorized = |h: &HeaderMap| {
            h.get("authorization").and_then(|v| v.to_str().ok())
                == Some(&format!("Bearer {CF_TOKEN}"))
        };
        let app = axum::Router::new()
            .route("/health", get(|| async { Json(json!({"status": "healthy"})) }))
            .route(
                "/health-toggle",
                get(|State(s): St| async move {
                    if s.lock().expect("lock").toggle_unhealthy {
                        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "unhealthy"})))
                    } else {
                        (StatusCode::OK, Json(json!({"status": "healthy"})))
                    }
                }),
            )
            .route(
                "/notify",
                post(|State(s): St, Json(body): Json<Value>| async move {
                    s.lock().expect("lock").notifications.push(body);
                    "ok"
                }),
            )
            .route(
                "/cloudflare/zones/{zone}/dns_records/{record}",
                get(move |State(s): St, h: HeaderMap| async move {
                    if !authorized(&h) {
                        return (StatusCode::FORBIDDEN, Json(json!({"success": false})));
                    }
                    let w = s.lock().expect("lock");
                    (StatusCode::OK, Json(record(&w.record_ip, w.record_ttl)))
                })
                .put(move |State(s): St, h: HeaderMap, Json(body): Json<Value>| async move {
                    if !authorized(&h) {
                        return (StatusCode::FORBIDDEN, Json(json!({"success": false})));
                    }
                    let mut w = s.lock().expect("lock");
                    body["content"].as_str().unwrap_or_default().clone_into(&mut w.record_ip);
                    w.record_ttl = body["ttl"].as_u64().unwrap_or(1);
                    w.dns_puts.push(body);
                    if w.put_lands_then_fails {
                        return (
                            StatusCode::BAD_GATEWAY,
                            Json(json!({"success": false, "errors": [{"message": "upstream timed out"}]})),
                        );
                    }
                    (StatusCode::OK, Json(record(&w.record_ip, w.record_ttl)))
                }),
            )
            .route(
                "/dns-query",
                get(|State(s): St| async move {
                    let w = s.lock().expect("lock");
                    Json(json!({"Status": 0, "Answer": [{"name": "api.edgelink.com.", "type": 1, "TTL": w.record_ttl, "data": w.record_ip}]}))
                }),
            )
            .with_state(state.clone());
        let (url, tx) = crate::support::serve_loopback(app);
        Self {
            url,
            state,
            _stop: tx,
        }
    }

    /// The recorded state (and the switches).
    pub fn web(&self) -> std::sync::MutexGuard<'_, Web> {
        self.state.lock().expect("lock")
    }
}

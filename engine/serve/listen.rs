//! The accept loop of `runbook serve` (hyper's HTTP/1 server under the axum router): a cap on
//! open connections, answered 503 past it; a header-read timeout that also closes a connection
//! idle between requests; the peer's address handed to the handlers (for `trusted_proxy`); and
//! a graceful stop that lets requests in progress finish.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceExt as _;

use super::triggers::ReadyLimits;

/// The peer of a request's connection (a request extension).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// How long connections get to finish their requests once the server stops.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// Serve `router` on `listener` until `stop` completes; then stop accepting, finish the
/// requests in progress (at most [`STOP_WAIT`]) and return.
///
/// `refused` is told of each connection turned away by the cap.
pub async fn run(
    listener: TcpListener,
    router: Router,
    limits: ReadyLimits,
    stop: impl Future<Output = ()>,
    refused: impl Fn(SocketAddr) + Send + Sync + 'static,
) {
    let permits = Arc::new(Semaphore::new(limits.connections as usize));
    let (stopping_tx, stopping_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = &mut stop => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning; the
                // connections in flight free some.
                super::log(&format!("failed to accept a connection: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while tasks.try_join_next().is_some() {}
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refused(peer);
            tokio::spawn(refuse(stream, limits.connections));
            continue;
        };
        let router = router.clone();
        let mut stopping = stopping_rx.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(Peer(peer));
                router.clone().oneshot(req)
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stopping.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    let _ = stopping_tx.send(true);
    let _ = tokio::time::timeout(STOP_WAIT, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
}

/// Turn a connection away: a 503 that says why, then close (reading a little of what the client
/// sent first, so that closing does not reset the connection before the answer arrives).
async fn refuse(mut stream: TcpStream, cap: u32) {
    let body = format!(
        "{{\"error\":\"too many connections: the server keeps at most {cap} open (`limits.connections`); try again shortly\"}}\n"
    );
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\nretry-after: 1\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut buf = [0u8; 4096];
        // The request head usually arrived with the connection; take what is there.
        let _ = tokio::time::timeout(Duration::from_millis(50), stream.read(&mut buf)).await;
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
        let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await;
    })
    .await;
}

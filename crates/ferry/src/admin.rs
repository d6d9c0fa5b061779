//! The read-only admin HTTP endpoint of `ferry run` (spec: `proto/admin-api.md`):
//! `GET /status`, `/healthz`, `/readyz`, `/metrics`. Nothing here changes state; commands
//! that do (cutover, backup now) go over the unix control socket, never over TCP.

use crate::metrics::Metrics;
use crate::status::RunStatus;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;

#[derive(Clone)]
pub struct AdminState {
    pub status: Arc<RunStatus>,
    pub metrics: Arc<Metrics>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn status(State(s): State<AdminState>) -> Response {
    Json(s.status.report()).into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<AdminState>) -> Response {
    let r = s.status.report();
    if r.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let why: Vec<String> = r
            .sources
            .iter()
            .map(|s| format!("{}: {:?}", s.source, s.state))
            .collect();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", why.join(", ")),
        )
            .into_response()
    }
}

async fn metrics(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    // OpenMetrics for a scraper that asks for it (Prometheus does), the Prometheus text
    // format for any other client.
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, body) = s.metrics.encode_for(accept);
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Binds the admin address and serves until the process ends. Returns the bound address
/// (the port may have been 0).
pub async fn serve(addr: &str, state: AdminState) -> anyhow::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "binding the admin endpoint to {addr}: {e} (choose another with --admin-addr)"
        )
    })?;
    let local = listener.local_addr()?;
    let app = router(state);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "admin endpoint stopped");
        }
    });
    Ok(local)
}

/// A minimal HTTP/1.1 GET for `ferry status` and tests (no client library needed for
/// talking to our own loopback endpoint). Returns status code and body.
pub fn http_get(
    addr: &str,
    path: &str,
    accept: Option<&str>,
) -> std::io::Result<(u16, String, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response from {addr}")))?;
    let content_type = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("content-type: ")
                .or_else(|| l.strip_prefix("Content-Type: "))
        })
        .unwrap_or("")
        .to_string();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((code, content_type, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{SourceState, SourceStatus};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn endpoints_answer() {
        let status = Arc::new(RunStatus::new());
        status.insert(SourceStatus::new("app", "sqlite", "/x/app.db"));
        let metrics = Arc::new(Metrics::new());
        metrics.register_source("app", false);
        let addr = serve(
            "127.0.0.1:0",
            AdminState {
                status: status.clone(),
                metrics,
            },
        )
        .await
        .unwrap()
        .to_string();
        let a = addr.clone();
        let (code, _, body) = tokio::task::spawn_blocking(move || http_get(&a, "/readyz", None))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(code, 503, "{body}");
        status.update("app", |s| s.state = SourceState::Streaming);
        let a = addr.clone();
        let (code, _, _) = tokio::task::spawn_blocking(move || http_get(&a, "/readyz", None))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(code, 200);
        let a = addr.clone();
        let (code, _, body) = tokio::task::spawn_blocking(move || http_get(&a, "/status", None))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(code, 200);
        let report: crate::status::StatusReport = serde_json::from_str(&body).unwrap();
        assert_eq!(report.sources[0].source, "app");
        let a = addr.clone();
        let (code, ctype, body) = tokio::task::spawn_blocking(move || {
            http_get(
                &a,
                "/metrics",
                Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
            )
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(code, 200);
        assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
        assert!(
            body.contains("ferry_replication_lag_seconds{source=\"app\"} 0"),
            "{body}"
        );
        assert!(body.trim_end().ends_with("# EOF"));
        // A client that does not ask for OpenMetrics (curl, an older scraper) gets the
        // Prometheus text format.
        let a = addr.clone();
        let (code, ctype, body) =
            tokio::task::spawn_blocking(move || http_get(&a, "/metrics", None))
                .await
                .unwrap()
                .unwrap();
        assert_eq!(code, 200);
        assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
        assert!(!body.contains("# EOF"), "{body}");
        assert!(body.contains("# TYPE ferry_build_info gauge\n"), "{body}");
    }
}

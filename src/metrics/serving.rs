//! The metrics listener: `GET /metrics` on TCP, answered with the registry in the Prometheus
//! text format.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::accept::Limits;

/// Scrapes served at once: Prometheus needs one. A scraper must send its request within 10 s,
/// and a connection carries one scrape.
const LIMITS: Limits = Limits {
    name: "metrics",
    max_connections: 16,
    header_read_timeout: Duration::from_secs(10),
    keep_alive: false,
    // The loop is never told to stop (see `serve`).
    drain: Duration::ZERO,
};

/// Bind the metrics listener (before the daemon starts serving, so a taken port is an error
/// at start-up, not a silent absence).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

type Body = Full<Bytes>;

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("Content-Type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    respond(status, "text/plain; charset=utf-8", body)
}

async fn answer(registry: Arc<Registry>, req: Request<Incoming>) -> Response<Body> {
    if req.uri().path() != "/metrics" {
        return text(
            StatusCode::NOT_FOUND,
            "not found: bai-s3 serves its metrics at /metrics\n".into(),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} /metrics: use GET\n", req.method()),
        );
        r.headers_mut().insert(
            "Allow",
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return r;
    }
    // Taking the sample may read /proc (blocking file I/O): off the async workers.
    let encoded = tokio::task::spawn_blocking(move || {
        let mut body = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut body, &registry).map(|()| body)
    })
    .await;
    match encoded {
        Ok(Ok(body)) => respond(
            StatusCode::OK,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            body,
        ),
        _ => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the metrics could not be encoded\n".into(),
        ),
    }
}

/// Serve `GET /metrics` on `listener` until the task is dropped. Few connections at once, no
/// keep-alive and a read deadline, so an idle or slow client cannot hold the endpoint.
pub async fn serve(listener: TcpListener, registry: Registry) {
    let registry = Arc::new(registry);
    let handler = move |req| answer(Arc::clone(&registry), req);
    // Never asked to stop: the task ends with the daemon.
    crate::accept::serve(listener, LIMITS, handler, std::future::pending()).await;
}

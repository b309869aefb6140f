//! The gateway: the box's LAN-facing front door (`0.0.0.0:8080` by default), which carries
//! service traffic by host name and path to service replicas.
//!
//! Today it owns the listener and the error answers only: with no route table yet, every
//! request is told, as JSON, that no route matches. Proxying, the route table, load balancing,
//! holding requests while a replica gets ready, and draining arrive with the next piece of
//! work. Architecture invariant: the gateway knows nothing about jobs, processes or the store;
//! it will be handed route-table snapshots.

use std::convert::Infallible;
use std::future::Future;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let host = request
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = serde_json::json!({
        "code": "no_route",
        "message": format!("no route matches {host}{}", request.uri().path()),
    });
    let response = Response::builder()
        .status(StatusCode::NOT_FOUND)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a static response builds");
    Ok(response)
}

/// Serves the gateway on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, shutdown: impl Future<Output = ()> + Send) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut shutdown => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "gateway could not accept a connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let connection = http1::Builder::new()
                .header_read_timeout(std::time::Duration::from_secs(10))
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service_fn(answer));
            if let Err(error) = connection.await {
                tracing::debug!(%error, "gateway connection ended with an error");
            }
        });
    }
}

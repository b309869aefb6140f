//! The control API: REST and server-sent events over HTTP, bound to loopback by default, and
//! the OpenAPI document that describes it. The CLI and the dashboard use nothing else.
//!
//! This crate translates between HTTP and the orchestrator's [`orchestrator::Handle`]: it
//! reads the published view, the store (history of runs and events) and the GPU readings, and
//! forwards actions as commands; it reads the gateway's traffic report for `/v1/gateway` and
//! `/metrics`. It decides nothing itself and never touches processes. Every
//! error is JSON with a stable `code` and a `message`: 4xx for the caller's mistakes, 5xx for
//! ours (details of a 5xx go to the log, not to the client).

mod convert;
mod error;
mod models;
mod routes;
mod traffic;

use std::future::Future;
use std::sync::Arc;

use api_types::ServerInfo;

pub use error::ApiFailure;
pub use routes::{openapi_json, router, ApiDoc};

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub orchestrator: orchestrator::Handle,
    pub gpus: Arc<gpu::Gpus>,
    pub gateway: Arc<gateway::Gateway>,
    pub info: Arc<ServerInfo>,
    /// The `[video]` table, for the video service (`GET /v1/config/video`).
    pub video: Arc<domain::VideoConfig>,
}

/// Serves the control API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

//! The gateway's traffic as `GET /v1/gateway` reports it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The gateway's traffic since Flowers started, per route.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GatewayReport {
    /// Requests waiting for a ready replica now.
    pub held_requests: u64,
    /// Client connections open now, upgraded ones (WebSockets) included.
    pub open_connections: u64,
    /// Access log lines dropped because the writer could not keep up (0 with the access log
    /// off).
    pub access_log_dropped: u64,
    /// Every route seen since start, sorted by service, host and prefix; counters are kept
    /// across changes of the route table and for routes that left it.
    pub routes: Vec<GatewayRouteInfo>,
    /// Requests that matched no route, or were refused before a route was looked up.
    pub unrouted: TrafficInfo,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GatewayRouteInfo {
    pub service: String,
    /// The host the route is for; absent: any host.
    pub host: Option<String>,
    pub path_prefix: String,
    /// Whether the route is in the current table.
    pub active: bool,
    pub traffic: TrafficInfo,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TrafficInfo {
    pub in_flight: u64,
    /// Every answer, the gateway's own included.
    pub requests: u64,
    /// Answers by status class.
    pub responses: StatusClasses,
    /// The gateway's own answers (not a replica's) by error code: `no_route`,
    /// `no_ready_replica`, `unauthorized`, `upstream_failed`, …
    pub errors: BTreeMap<String, u64>,
    /// Request body bytes sent on to replicas (for a WebSocket, bytes from the client).
    pub bytes_in: u64,
    /// Response body bytes sent to clients (for a WebSocket, bytes to the client).
    pub bytes_out: u64,
    pub latency: LatencyInfo,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StatusClasses {
    /// Switched protocols: WebSockets and other upgrades.
    #[serde(rename = "1xx")]
    pub status_1xx: u64,
    #[serde(rename = "2xx")]
    pub status_2xx: u64,
    #[serde(rename = "3xx")]
    pub status_3xx: u64,
    #[serde(rename = "4xx")]
    pub status_4xx: u64,
    #[serde(rename = "5xx")]
    pub status_5xx: u64,
}

/// Time from a request's arrival to the end of its response body (for a WebSocket, to its
/// close), as a cumulative histogram with quantiles estimated from it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LatencyInfo {
    pub count: u64,
    pub sum_seconds: f64,
    /// Absent before the first request.
    pub p50_seconds: Option<f64>,
    pub p90_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
    /// Fixed, log-spaced upper bounds (1 ms to 250 s, then +Inf), cumulative as Prometheus'
    /// `le` buckets are.
    pub buckets: Vec<LatencyBucket>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LatencyBucket {
    /// Upper bound in seconds; absent for the last bucket (+Inf).
    pub le_seconds: Option<f64>,
    /// Requests that took at most `le_seconds`.
    pub count: u64,
}

//! The gateway's traffic: `GET /v1/gateway` (JSON) and `GET /metrics` (Prometheus text).

use std::fmt::Write as _;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;

use api_types::{
    GatewayReport, GatewayRouteInfo, LatencyBucket, LatencyInfo, StatusClasses, TrafficInfo,
};

use crate::AppState;

#[utoipa::path(get, path = "/v1/gateway",
    description = "The gateway's traffic since Flowers started, per route: answers by status class, \
                   the gateway's own errors by code, requests in flight, bytes, and a latency histogram \
                   with p50/p90/p99 estimated from it.",
    responses((status = 200, body = GatewayReport)))]
pub(crate) async fn report(State(state): State<AppState>) -> Json<GatewayReport> {
    Json(wire(&state.gateway.report()))
}

#[utoipa::path(get, path = "/metrics",
    description = "The gateway's counters in the Prometheus text exposition format (version 0.0.4).",
    responses((status = 200, content_type = "text/plain", body = String)))]
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        prometheus(&state.gateway.report()),
    )
        .into_response()
}

fn wire(report: &gateway::GatewayReport) -> GatewayReport {
    GatewayReport {
        held_requests: report.held_requests as u64,
        open_connections: report.open_connections as u64,
        access_log_dropped: report.access_log_dropped,
        routes: report
            .routes
            .iter()
            .map(|route| GatewayRouteInfo {
                service: route.service.clone(),
                host: route.host.clone(),
                path_prefix: route.path_prefix.clone(),
                active: route.active,
                traffic: traffic(&route.traffic),
            })
            .collect(),
        unrouted: traffic(&report.unrouted),
    }
}

fn traffic(traffic: &gateway::TrafficReport) -> TrafficInfo {
    let [status_1xx, status_2xx, status_3xx, status_4xx, status_5xx] = traffic.status_classes;
    let latency = &traffic.latency;
    let seconds = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
    TrafficInfo {
        in_flight: traffic.in_flight,
        requests: traffic.requests,
        responses: StatusClasses {
            status_1xx,
            status_2xx,
            status_3xx,
            status_4xx,
            status_5xx,
        },
        errors: traffic.errors.clone(),
        bytes_in: traffic.bytes_in,
        bytes_out: traffic.bytes_out,
        latency: LatencyInfo {
            count: latency.count,
            sum_seconds: latency.sum.as_secs_f64(),
            p50_seconds: seconds(latency.p50),
            p90_seconds: seconds(latency.p90),
            p99_seconds: seconds(latency.p99),
            buckets: latency
                .buckets
                .iter()
                .map(|(bound, count)| LatencyBucket {
                    le_seconds: seconds(*bound),
                    count: *count,
                })
                .collect(),
        },
    }
}

/// Reads one number of a route's traffic.
type PerRoute = fn(&gateway::TrafficReport) -> u64;

/// A label value as the exposition format wants it: backslash, quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn prometheus(report: &gateway::GatewayReport) -> String {
    // Requests no route took are labelled with empty service, host and prefix.
    let unrouted = gateway::RouteReport {
        service: String::new(),
        host: None,
        path_prefix: String::new(),
        active: true,
        traffic: report.unrouted.clone(),
    };
    let routes: Vec<(String, &gateway::TrafficReport)> = report
        .routes
        .iter()
        .chain(std::iter::once(&unrouted))
        .map(|route| {
            let labels = format!(
                "service=\"{}\",host=\"{}\",prefix=\"{}\"",
                escape(&route.service),
                escape(route.host.as_deref().unwrap_or("")),
                escape(&route.path_prefix)
            );
            (labels, &route.traffic)
        })
        .collect();

    let mut out = String::new();
    let name = family(
        &mut out,
        "flowers_gateway_requests_total",
        "counter",
        "Answers sent by the gateway, by route and status class.",
    );
    for (labels, traffic) in &routes {
        for (index, count) in traffic.status_classes.iter().enumerate() {
            let class = index + 1;
            let _ = writeln!(out, "{name}{{{labels},class=\"{class}xx\"}} {count}");
        }
    }

    let name = family(
        &mut out,
        "flowers_gateway_errors_total",
        "counter",
        "The gateway's own answers (not a replica's), by route and error code.",
    );
    for (labels, traffic) in &routes {
        for (code, count) in &traffic.errors {
            let code = escape(code);
            let _ = writeln!(out, "{name}{{{labels},code=\"{code}\"}} {count}");
        }
    }

    let per_route: [(&str, &str, &str, PerRoute); 3] = [
        (
            "flowers_gateway_in_flight",
            "gauge",
            "Requests (and upgraded connections) in flight, by route.",
            |t| t.in_flight,
        ),
        (
            "flowers_gateway_request_bytes_total",
            "counter",
            "Request body bytes sent on to replicas, by route.",
            |t| t.bytes_in,
        ),
        (
            "flowers_gateway_response_bytes_total",
            "counter",
            "Response body bytes sent to clients, by route.",
            |t| t.bytes_out,
        ),
    ];
    for (metric, kind, help, value) in per_route {
        let name = family(&mut out, metric, kind, help);
        for (labels, traffic) in &routes {
            let _ = writeln!(out, "{name}{{{labels}}} {}", value(traffic));
        }
    }

    let name = family(
        &mut out,
        "flowers_gateway_request_duration_seconds",
        "histogram",
        "Time from a request's arrival to the end of its response, by route.",
    );
    for (labels, traffic) in &routes {
        let latency = &traffic.latency;
        for (bound, count) in &latency.buckets {
            let le = bound.map_or("+Inf".to_string(), |b| b.as_secs_f64().to_string());
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {count}");
        }
        let sum = latency.sum.as_secs_f64();
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", latency.count);
    }

    let totals: [(&str, &str, &str, u64); 3] = [
        (
            "flowers_gateway_held_requests",
            "gauge",
            "Requests waiting for a ready replica.",
            report.held_requests as u64,
        ),
        (
            "flowers_gateway_open_connections",
            "gauge",
            "Client connections open, upgraded ones included.",
            report.open_connections as u64,
        ),
        (
            "flowers_gateway_access_log_dropped_total",
            "counter",
            "Access log lines dropped because the writer could not keep up.",
            report.access_log_dropped,
        ),
    ];
    for (metric, kind, help, value) in totals {
        let name = family(&mut out, metric, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }
    out
}

/// Writes a metric family's HELP and TYPE lines; returns its name for the samples.
fn family<'n>(out: &mut String, name: &'n str, kind: &str, help: &str) -> &'n str {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> gateway::GatewayReport {
        let mut traffic = gateway::TrafficReport {
            in_flight: 1,
            requests: 3,
            status_classes: [0, 2, 0, 0, 1],
            bytes_in: 10,
            bytes_out: 20,
            ..Default::default()
        };
        traffic.errors.insert("no_ready_replica".into(), 1);
        traffic.latency = gateway::LatencyReport {
            buckets: vec![
                (Some(Duration::from_millis(1)), 1),
                (Some(Duration::from_micros(2500)), 3),
                (None, 3),
            ],
            count: 3,
            sum: Duration::from_millis(5),
            p50: Some(Duration::from_micros(1750)),
            p90: None,
            p99: None,
        };
        gateway::GatewayReport {
            routes: vec![gateway::RouteReport {
                service: "chat".into(),
                host: Some("chat.lan".into()),
                path_prefix: "/\"v1\"".into(),
                active: true,
                traffic,
            }],
            unrouted: gateway::TrafficReport::default(),
            held_requests: 2,
            open_connections: 4,
            access_log_dropped: 5,
        }
    }

    #[test]
    fn the_wire_form_says_the_same() {
        let wire = wire(&report());
        let traffic = &wire.routes[0].traffic;
        assert_eq!(traffic.responses.status_2xx, 2);
        assert_eq!(traffic.responses.status_5xx, 1);
        assert_eq!(traffic.errors["no_ready_replica"], 1);
        assert_eq!(traffic.latency.p50_seconds, Some(0.00175));
        assert_eq!(traffic.latency.buckets[1].le_seconds, Some(0.0025));
        assert_eq!(traffic.latency.buckets[2].le_seconds, None);
        let json = serde_json::to_value(&wire).unwrap();
        assert_eq!(json["routes"][0]["traffic"]["responses"]["2xx"], 2);
        assert_eq!((wire.held_requests, wire.open_connections), (2, 4));
    }

    #[test]
    fn prometheus_text_has_every_family_once_and_escaped_labels() {
        let text = prometheus(&report());
        let labels = r#"service="chat",host="chat.lan",prefix="/\"v1\"""#;
        for line in [
            format!("flowers_gateway_requests_total{{{labels},class=\"2xx\"}} 2"),
            format!("flowers_gateway_errors_total{{{labels},code=\"no_ready_replica\"}} 1"),
            format!("flowers_gateway_in_flight{{{labels}}} 1"),
            format!("flowers_gateway_request_bytes_total{{{labels}}} 10"),
            format!("flowers_gateway_response_bytes_total{{{labels}}} 20"),
            format!("flowers_gateway_request_duration_seconds_bucket{{{labels},le=\"0.0025\"}} 3"),
            format!("flowers_gateway_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} 3"),
            format!("flowers_gateway_request_duration_seconds_sum{{{labels}}} 0.005"),
            format!("flowers_gateway_request_duration_seconds_count{{{labels}}} 3"),
            r#"flowers_gateway_requests_total{service="",host="",prefix="",class="4xx"} 0"#
                .to_string(),
            "flowers_gateway_held_requests 2".to_string(),
            "flowers_gateway_open_connections 4".to_string(),
            "flowers_gateway_access_log_dropped_total 5".to_string(),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        let types = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        assert_eq!(types, 9);
        assert!(text.ends_with('\n'));
    }
}

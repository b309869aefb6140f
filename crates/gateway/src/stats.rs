//! Per-route traffic counters and latency histograms. Requests touch only atomics; the
//! registry's mutex is taken on route-table swaps and reports. Counters are keyed by service,
//! host and path prefix, so that they survive every swap that keeps the route.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::Route;

/// Upper bounds of the latency buckets, in microseconds: 1-2.5-5 per decade from 1 ms to
/// 250 s, as Prometheus' defaults do, plus an unbounded last bucket. Model answers span
/// milliseconds (a health check) to minutes (a long generation), hence the range.
pub const LATENCY_BOUNDS_MICROS: [u64; 18] = [
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    u64::MAX,
];

/// The traffic of one route (or of requests that matched none).
#[derive(Debug, Default)]
pub(crate) struct Traffic {
    in_flight: AtomicU64,
    /// Answers by status class: 1xx … 5xx.
    classes: [AtomicU64; 5],
    /// The gateway's own answers (no replica's), by error code.
    errors: Mutex<BTreeMap<&'static str, u64>>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    buckets: [AtomicU64; LATENCY_BOUNDS_MICROS.len()],
    latency_sum_micros: AtomicU64,
}

/// Counts one request in flight on a route until dropped.
#[derive(Debug)]
pub(crate) struct Counted(Arc<Traffic>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Counted {
    pub fn traffic(&self) -> &Traffic {
        &self.0
    }
}

impl Traffic {
    pub fn begin(self: &Arc<Self>) -> Counted {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Counted(self.clone())
    }

    /// Records one finished request: its status, the gateway's error code if it answered
    /// itself, the body bytes each way and how long it took.
    pub fn record(
        &self,
        status: u16,
        error: Option<&'static str>,
        bytes_in: u64,
        bytes_out: u64,
        took: Duration,
    ) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.classes[class].fetch_add(1, Ordering::Relaxed);
        if let Some(code) = error {
            let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
            *errors.entry(code).or_default() += 1;
        }
        self.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_MICROS
            .iter()
            .position(|bound| micros <= *bound)
            .unwrap_or(LATENCY_BOUNDS_MICROS.len() - 1);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn report(&self) -> TrafficReport {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let classes: Vec<u64> = self.classes.iter().map(load).collect();
        let mut cumulative = 0;
        let buckets: Vec<(Option<Duration>, u64)> = LATENCY_BOUNDS_MICROS
            .iter()
            .zip(&self.buckets)
            .map(|(bound, count)| {
                cumulative += load(count);
                let bound = (*bound != u64::MAX).then(|| Duration::from_micros(*bound));
                (bound, cumulative)
            })
            .collect();
        let quantile = |q| quantile(&buckets, q);
        TrafficReport {
            in_flight: load(&self.in_flight),
            requests: classes.iter().sum(),
            status_classes: [classes[0], classes[1], classes[2], classes[3], classes[4]],
            errors: self
                .errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(code, count)| (code.to_string(), *count))
                .collect(),
            bytes_in: load(&self.bytes_in),
            bytes_out: load(&self.bytes_out),
            latency: LatencyReport {
                p50: quantile(0.5),
                p90: quantile(0.9),
                p99: quantile(0.99),
                count: cumulative,
                sum: Duration::from_micros(load(&self.latency_sum_micros)),
                buckets,
            },
        }
    }
}

/// Estimates the `q` quantile from cumulative buckets the way Prometheus'
/// `histogram_quantile` does: find the bucket holding the rank, then interpolate linearly
/// inside it. A rank in the unbounded bucket reads as the largest finite bound.
pub(crate) fn quantile(buckets: &[(Option<Duration>, u64)], q: f64) -> Option<Duration> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut lower_bound = Duration::ZERO;
    let mut below = 0u64;
    for (bound, cumulative) in buckets {
        if *cumulative as f64 >= rank && *cumulative > below {
            let Some(upper) = bound else {
                return Some(lower_bound);
            };
            let inside = (rank - below as f64) / (*cumulative - below) as f64;
            let width = upper.saturating_sub(lower_bound).as_micros() as f64;
            let offset = (width * inside.clamp(0.0, 1.0)).round() as u64;
            return Some(lower_bound + Duration::from_micros(offset));
        }
        if let Some(upper) = bound {
            lower_bound = *upper;
        }
        below = *cumulative;
    }
    Some(lower_bound)
}

/// What a route, or the requests that matched none, have seen since Flowers started.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrafficReport {
    pub in_flight: u64,
    /// Every answer, the gateway's own included.
    pub requests: u64,
    /// Answers by status class: `[1xx, 2xx, 3xx, 4xx, 5xx]`.
    pub status_classes: [u64; 5],
    /// The gateway's own answers (no replica's) by error code, such as `no_ready_replica`.
    pub errors: BTreeMap<String, u64>,
    /// Request body bytes sent on to replicas (and, for upgraded connections, bytes from the
    /// client).
    pub bytes_in: u64,
    /// Response body bytes sent to clients.
    pub bytes_out: u64,
    pub latency: LatencyReport,
}

/// A latency histogram, from a request's arrival to the end of its response body (for an
/// upgraded connection, to its close).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LatencyReport {
    /// Cumulative counts by upper bound; `None` is the unbounded last bucket (`le="+Inf"`).
    pub buckets: Vec<(Option<Duration>, u64)>,
    pub count: u64,
    pub sum: Duration,
    /// Estimated from the buckets; `None` before the first request.
    pub p50: Option<Duration>,
    pub p90: Option<Duration>,
    pub p99: Option<Duration>,
}

/// One route's traffic.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteReport {
    pub service: String,
    pub host: Option<String>,
    pub path_prefix: String,
    /// Whether the route is in the current table (counters of a removed route are kept).
    pub active: bool,
    pub traffic: TrafficReport,
}

/// Everything [`crate::Gateway::report`] says.
#[derive(Clone, Debug, PartialEq)]
pub struct GatewayReport {
    pub routes: Vec<RouteReport>,
    /// Requests that matched no route, or were refused before one was looked up.
    pub unrouted: TrafficReport,
    pub held_requests: usize,
    pub open_connections: usize,
    /// Access log lines dropped because the writer could not keep up.
    pub access_log_dropped: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct RouteKey {
    service: String,
    host: Option<String>,
    path_prefix: String,
}

impl RouteKey {
    fn of(route: &Route) -> RouteKey {
        RouteKey {
            service: route.service.clone(),
            host: route.host.clone(),
            path_prefix: route.path_prefix.clone(),
        }
    }
}

/// Every route's traffic ever seen, and the routes of the current table.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    routes: Mutex<Routes>,
    pub unrouted: Arc<Traffic>,
}

#[derive(Debug, Default)]
struct Routes {
    known: HashMap<RouteKey, Arc<Traffic>>,
    active: Vec<RouteKey>,
}

impl Registry {
    /// The counters of each route of a new table, in order, reusing those of known routes.
    pub fn for_table(&self, routes: &[Route]) -> Vec<Arc<Traffic>> {
        let mut guard = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let Routes { known, active } = &mut *guard;
        active.clear();
        routes
            .iter()
            .map(|route| {
                let key = RouteKey::of(route);
                active.push(key.clone());
                known.entry(key).or_default().clone()
            })
            .collect()
    }

    /// Every route ever routed, sorted by service, host and prefix.
    pub fn report(&self) -> Vec<RouteReport> {
        let guard = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let Routes { known, active } = &*guard;
        let mut keys: Vec<&RouteKey> = known.keys().collect();
        keys.sort();
        keys.into_iter()
            .map(|key| RouteReport {
                service: key.service.clone(),
                host: key.host.clone(),
                path_prefix: key.path_prefix.clone(),
                active: active.contains(key),
                traffic: known[key].report(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn statuses_errors_bytes_and_latency_are_counted() {
        let traffic = Arc::new(Traffic::default());
        let counted = traffic.begin();
        assert_eq!(traffic.report().in_flight, 1);
        traffic.record(200, None, 10, 100, millis(3));
        traffic.record(101, None, 1, 2, millis(3));
        traffic.record(503, Some("no_ready_replica"), 0, 50, millis(30));
        traffic.record(503, Some("no_ready_replica"), 0, 50, millis(30));
        traffic.record(404, None, 0, 9, Duration::from_secs(1000));
        drop(counted);
        let report = traffic.report();
        assert_eq!(report.in_flight, 0);
        assert_eq!(report.requests, 5);
        assert_eq!(report.status_classes, [1, 1, 0, 1, 2]);
        assert_eq!(report.errors["no_ready_replica"], 2);
        assert_eq!((report.bytes_in, report.bytes_out), (11, 211));
        let latency = &report.latency;
        assert_eq!(latency.count, 5);
        assert_eq!(latency.buckets.len(), LATENCY_BOUNDS_MICROS.len());
        assert_eq!(
            latency.buckets[1],
            (Some(Duration::from_micros(2500)), 0),
            "2.5 ms bound"
        );
        assert_eq!(latency.buckets[2], (Some(millis(5)), 2), "cumulative");
        assert_eq!(latency.buckets.last().unwrap(), &(None, 5));
        assert_eq!(latency.sum, millis(3 + 3 + 30 + 30 + 1_000_000));
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket_of_their_rank() {
        let buckets = vec![
            (Some(millis(10)), 50),
            (Some(millis(20)), 90),
            (Some(millis(40)), 100),
            (None, 100),
        ];
        assert_eq!(quantile(&buckets, 0.5), Some(millis(10)));
        assert_eq!(quantile(&buckets, 0.25), Some(millis(5)));
        assert_eq!(quantile(&buckets, 0.7), Some(millis(15)));
        assert_eq!(quantile(&buckets, 0.95), Some(millis(30)));
        assert_eq!(quantile(&buckets, 1.0), Some(millis(40)));
    }

    #[test]
    fn quantiles_of_nothing_and_of_the_unbounded_bucket() {
        assert_eq!(quantile(&[(Some(millis(1)), 0), (None, 0)], 0.5), None);
        assert_eq!(quantile(&[], 0.5), None);
        let slow = vec![(Some(millis(1)), 1), (Some(millis(2)), 1), (None, 10)];
        assert_eq!(
            quantile(&slow, 0.99),
            Some(millis(2)),
            "beyond the last bound reads as it"
        );
    }

    #[test]
    fn counters_are_kept_across_tables_by_service_host_and_prefix() {
        let registry = Registry::default();
        let route = |service: &str, prefix: &str| Route {
            service: service.into(),
            host: None,
            path_prefix: prefix.into(),
            replicas: vec![],
            hold: Duration::ZERO,
            max_body: 1,
            api_keys: vec![],
        };
        let first = registry.for_table(&[route("a", "/"), route("b", "/b")]);
        first[0].record(200, None, 0, 0, millis(1));
        let second = registry.for_table(&[route("a", "/")]);
        assert!(Arc::ptr_eq(&first[0], &second[0]));
        let report = registry.report();
        assert_eq!(report.len(), 2);
        assert_eq!((report[0].service.as_str(), report[0].active), ("a", true));
        assert_eq!(report[0].traffic.requests, 1);
        assert_eq!((report[1].service.as_str(), report[1].active), ("b", false));
    }
}

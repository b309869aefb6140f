//! Load balancing by least outstanding requests, with per-replica in-flight counters and kept
//! connections that outlive route-table swaps (a replica leaving the table still drains its
//! requests, and keeps no idle connections from then on).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::pool::{Connections, Limits};
use crate::stats::Traffic;
use crate::{Replica, Route, RouteTable};

/// One replica as the request path sees it: its address, its shared in-flight counter and its
/// kept connections.
#[derive(Debug)]
pub(crate) struct LiveReplica {
    pub run: Arc<str>,
    pub addr: SocketAddr,
    outstanding: Arc<AtomicUsize>,
    pub connections: Arc<Connections>,
}

/// A route with live replicas, its traffic counters and a round-robin cursor for breaking
/// ties.
#[derive(Debug)]
pub(crate) struct LiveRoute {
    pub route: Route,
    /// The route's service, shared with the requests it takes.
    pub service: Arc<str>,
    pub replicas: Vec<LiveReplica>,
    pub traffic: Arc<Traffic>,
    cursor: AtomicUsize,
}

/// A route-table snapshot ready for the request path: built once per `update`, read lock-free.
#[derive(Debug, Default)]
pub(crate) struct LiveTable {
    pub routes: Vec<LiveRoute>,
    /// Routes only, in the same order, for the pure matcher.
    pub plain: Vec<Route>,
}

/// What one run keeps across table swaps.
#[derive(Debug)]
struct RunEntry {
    outstanding: Arc<AtomicUsize>,
    connections: Arc<Connections>,
}

/// Counts requests in flight and keeps idle connections per run id. The mutex is taken on
/// table updates, reports and idle sweeps only; requests touch just what they were handed.
#[derive(Debug)]
pub(crate) struct Counters {
    limits: Limits,
    by_run: Mutex<HashMap<String, RunEntry>>,
}

impl Counters {
    pub fn new(limits: Limits) -> Counters {
        Counters {
            limits,
            by_run: Mutex::default(),
        }
    }

    /// Builds the live form of `table`, reusing the counters and connections of runs already
    /// known, dropping the idle connections of runs that left the table, and forgetting those
    /// runs once they have no request in flight. `traffic` holds each route's counters, in the
    /// table's order.
    pub fn live_table(&self, table: RouteTable, traffic: Vec<Arc<Traffic>>) -> LiveTable {
        let mut by_run = self.by_run.lock().unwrap_or_else(|p| p.into_inner());
        let mut wanted = std::collections::HashSet::new();
        let mut routes = Vec::with_capacity(table.routes.len());
        for (route, traffic) in table.routes.iter().zip(traffic) {
            let replicas = route
                .replicas
                .iter()
                .map(|Replica { run, addr }| {
                    let entry = by_run.entry(run.clone()).or_insert_with(|| RunEntry {
                        outstanding: Arc::default(),
                        connections: Arc::new(Connections::new(self.limits)),
                    });
                    if wanted.insert(run.clone()) {
                        entry.connections.activate();
                    }
                    LiveReplica {
                        run: Arc::from(run.as_str()),
                        addr: *addr,
                        outstanding: entry.outstanding.clone(),
                        connections: entry.connections.clone(),
                    }
                })
                .collect();
            routes.push(LiveRoute {
                route: route.clone(),
                service: Arc::from(route.service.as_str()),
                replicas,
                traffic,
                cursor: AtomicUsize::new(0),
            });
        }
        for (run, entry) in by_run.iter() {
            if !wanted.contains(run) {
                entry.connections.retire();
            }
        }
        by_run.retain(|run, entry| {
            wanted.contains(run) || entry.outstanding.load(Ordering::Relaxed) > 0
        });
        LiveTable {
            routes,
            plain: table.routes,
        }
    }

    pub fn snapshot(&self) -> HashMap<String, usize> {
        let by_run = self.by_run.lock().unwrap_or_else(|p| p.into_inner());
        by_run
            .iter()
            .map(|(run, entry)| (run.clone(), entry.outstanding.load(Ordering::Relaxed)))
            .collect()
    }

    /// Closes every replica's idle connections older than the idle timeout.
    pub fn expire_idle(&self, now: std::time::Instant) {
        let by_run = self.by_run.lock().unwrap_or_else(|p| p.into_inner());
        for entry in by_run.values() {
            entry.connections.expire(now);
        }
    }
}

/// Counts one request against a replica for as long as it lives (until the response body
/// is finished or dropped).
#[derive(Debug)]
pub(crate) struct InFlight {
    outstanding: Arc<AtomicUsize>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Picks the replica with the fewest requests outstanding, skipping addresses already tried;
/// ties go round robin so that an idle route spreads its traffic.
pub(crate) fn pick<'a>(
    route: &'a LiveRoute,
    tried: &[SocketAddr],
) -> Option<(&'a LiveReplica, InFlight)> {
    let count = route.replicas.len();
    if count == 0 {
        return None;
    }
    let start = route.cursor.fetch_add(1, Ordering::Relaxed) % count;
    let mut best: Option<(&LiveReplica, usize)> = None;
    for offset in 0..count {
        let replica = &route.replicas[(start + offset) % count];
        if tried.contains(&replica.addr) {
            continue;
        }
        let load = replica.outstanding.load(Ordering::Relaxed);
        if best.is_none_or(|(_, best_load)| load < best_load) {
            best = Some((replica, load));
        }
    }
    best.map(|(replica, _)| {
        replica.outstanding.fetch_add(1, Ordering::Relaxed);
        let guard = InFlight {
            outstanding: replica.outstanding.clone(),
        };
        (replica, guard)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn table(runs: &[&str]) -> RouteTable {
        RouteTable {
            routes: vec![Route {
                service: "chat".into(),
                host: None,
                path_prefix: "/".into(),
                replicas: runs
                    .iter()
                    .enumerate()
                    .map(|(i, run)| Replica {
                        run: run.to_string(),
                        addr: SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)),
                    })
                    .collect(),
                hold: Duration::from_secs(1),
                max_body: 1 << 20,
                api_keys: vec![],
            }],
        }
    }

    fn counters() -> Counters {
        Counters::new(Limits {
            max_idle: 4,
            idle_timeout: Duration::from_secs(1),
            shards: 1,
        })
    }

    fn live_of(counters: &Counters, runs: &[&str]) -> LiveTable {
        counters.live_table(table(runs), vec![Arc::default()])
    }

    #[test]
    fn least_outstanding_replica_is_chosen() {
        let counters = counters();
        let live = live_of(&counters, &["a", "b", "c"]);
        let route = &live.routes[0];
        let (first, _g1) = pick(route, &[]).unwrap();
        let (second, _g2) = pick(route, &[]).unwrap();
        let (third, _g3) = pick(route, &[]).unwrap();
        let mut runs = vec![&*first.run, &*second.run, &*third.run];
        runs.sort();
        assert_eq!(runs, ["a", "b", "c"], "each busy replica is avoided");
        let snapshot = counters.snapshot();
        assert_eq!(snapshot.values().sum::<usize>(), 3);
    }

    #[test]
    fn finished_requests_free_their_replica() {
        let counters = counters();
        let live = live_of(&counters, &["a", "b"]);
        let route = &live.routes[0];
        let (busy, _held) = pick(route, &[]).unwrap();
        let busy = busy.run.to_string();
        for _ in 0..10 {
            let (replica, guard) = pick(route, &[]).unwrap();
            assert_ne!(*replica.run, *busy);
            drop(guard);
        }
        assert_eq!(counters.snapshot()[&busy], 1);
    }

    #[test]
    fn idle_replicas_are_used_in_turn() {
        let counters = counters();
        let live = live_of(&counters, &["a", "b"]);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..4 {
            seen.insert(pick(&live.routes[0], &[]).unwrap().0.run.clone());
        }
        assert_eq!(seen.len(), 2);
    }

    #[test]
    fn tried_addresses_are_skipped() {
        let counters = counters();
        let live = live_of(&counters, &["a", "b"]);
        let route = &live.routes[0];
        let a = route.replicas[0].addr;
        for _ in 0..4 {
            assert_eq!(&*pick(route, &[a]).unwrap().0.run, "b");
        }
        assert!(pick(route, &[a, route.replicas[1].addr]).is_none());
    }

    #[test]
    fn counters_survive_updates_while_requests_drain() {
        let counters = counters();
        let live = live_of(&counters, &["a"]);
        let (_, guard) = pick(&live.routes[0], &[]).unwrap();
        let _next = live_of(&counters, &["b"]);
        assert_eq!(
            counters.snapshot().get("a"),
            Some(&1),
            "draining run stays visible"
        );
        drop(guard);
        let _after = live_of(&counters, &["b"]);
        assert_eq!(
            counters.snapshot().get("a"),
            None,
            "idle run that left is forgotten"
        );
        assert_eq!(counters.snapshot().get("b"), Some(&0));
    }
}

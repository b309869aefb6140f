//! The gateway: the box's LAN-facing reverse proxy (`0.0.0.0:8080` by default). It owns the
//! listener, the route table (host + longest path prefix → a service's ready replicas), load
//! balancing by least outstanding requests, kept upstream connections per replica, holding
//! requests while no replica is ready, retrying requests that never reached a replica, API
//! keys on routes, protocol upgrades (WebSocket) as tunnels, per-route counters and latency
//! histograms ([`Gateway::report`]), access log records, and the JSON error answers. It never
//! knows about jobs, processes, the store or the orchestrator: the binary hands it route-table
//! snapshots through [`Gateway::update`]. It never writes files either: access log records
//! leave through a bounded channel ([`AccessLog`]) whose other end the binary writes to disk.
//!
//! Thread per core, as nginx does it: [`Gateway::serve`] accepts connections on the caller's
//! runtime and hands each to the least busy of its worker threads ([`Settings::worker_threads`],
//! one per core by default), each running a single-threaded tokio runtime. A worker serves its
//! client connections and the upstream connections their requests open, and takes kept
//! upstream connections from a shard of the pool of its own, so the two halves of a request
//! wake each other on one thread, without the cross-thread wake-ups (futexes) and task
//! stealing of a shared multi-threaded runtime. The route table, the counters, the hold queue
//! and the access log's channel are shared by all workers.
//!
//! The server side is hyper's `http1` connection per accepted socket, which gives the header
//! read timeout and the header buffer bound directly. The client side is hand-rolled
//! `hyper::client::conn::http1` with a pool of its own (`pool.rs`): each replica keeps a few
//! idle connections for later requests, and the gateway still knows whether a request reached
//! a replica (not sent: the body is still ours and any method can go to another connection or
//! replica; sent: only bodiless idempotent requests may be sent again), which a general-purpose
//! pooled client hides. Requests go out with `try_send_request`, so a kept connection that the
//! replica closed while it sat idle hands the request back unsent.
//!
//! Not done yet: HTTP/2 and upstream response timeouts (model answers may stream for
//! minutes).

mod access;
mod auth;
mod balance;
mod error;
mod exchange;
mod hold;
mod pool;
mod proxy;
mod route;
mod stats;
mod upgrade;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

pub use access::{AccessLog, AccessLogReader, AccessRecord};
pub use auth::key_digest;
pub use error::{Error, Side};
pub use route::{normalize_host, prefix_matches};
pub use stats::{GatewayReport, LatencyReport, RouteReport, TrafficReport, LATENCY_BOUNDS_MICROS};

/// One ready replica of a service.
#[derive(Clone, Debug, PartialEq)]
pub struct Replica {
    /// The Run id, for logs and for [`Gateway::in_flight`].
    pub run: String,
    pub addr: SocketAddr,
}

/// Where a service's traffic goes.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    pub service: String,
    /// Lowercase host name without port; `None` matches any host.
    pub host: Option<String>,
    /// Starts with "/"; "/" matches everything. Matched on segment boundaries and forwarded
    /// unchanged (no prefix stripping).
    pub path_prefix: String,
    /// Ready replicas only.
    pub replicas: Vec<Replica>,
    /// How long a request waits for a ready replica before a 503.
    pub hold: Duration,
    /// The largest request body accepted, in bytes (413 beyond).
    pub max_body: u64,
    /// SHA-256 digests of the keys accepted as `Authorization: Bearer KEY` (see
    /// [`key_digest`]); empty: no key needed. A consumed Authorization header is not
    /// forwarded.
    pub api_keys: Vec<[u8; 32]>,
}

/// A complete snapshot of the routes; each [`Gateway::update`] replaces the previous one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouteTable {
    pub routes: Vec<Route>,
}

/// Limits of the listener.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Request line plus headers larger than this are answered 431.
    pub max_header_bytes: usize,
    /// A client that has not sent its whole header by then is disconnected.
    pub header_read_timeout: Duration,
    /// Connections beyond this many are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Requests waiting for a ready replica, across all routes; beyond this, 503 at once.
    pub max_held_requests: usize,
    /// Where each finished request's record goes; `None`: no access log.
    pub access_log: Option<AccessLog>,
    /// Idle upstream connections kept per replica for later requests, shared out evenly among
    /// the worker threads (each reuses only those it opened); 0: a new connection for every
    /// request.
    pub upstream_idle_per_replica: usize,
    /// An upstream connection idle this long is closed rather than reused. It has to stay
    /// under the keep-alive timeout of the servers replicas run, so that a replica does not
    /// close a connection just as a request goes out on it (see the default).
    pub upstream_idle_timeout: Duration,
    /// Threads that serve client connections, each with a single-threaded runtime of its own;
    /// 0: one per core.
    pub worker_threads: usize,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            max_header_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_held_requests: 1024,
            access_log: None,
            // Enough for every request a replica has in flight under heavy load to find a
            // connection; a burst beyond it is served by new connections that are then closed.
            upstream_idle_per_replica: 128,
            // Under the shortest keep-alive timeout common among the servers a model replica
            // runs: gunicorn 2 s; uvicorn, hypercorn, Node.js and llama.cpp's server 5 s. A busy
            // replica reuses its connections within milliseconds, so this costs one new
            // connection after a second of silence and nothing under load.
            upstream_idle_timeout: Duration::from_secs(1),
            worker_threads: 0,
        }
    }
}

/// The reverse proxy. Share it as `Arc<Gateway>`: requests read the table without locking.
#[derive(Debug)]
pub struct Gateway {
    settings: Settings,
    table: ArcSwap<balance::LiveTable>,
    counters: balance::Counters,
    /// How upstream connections are opened (their read buffer).
    client: hyper::client::conn::http1::Builder,
    holds: hold::Holds,
    stats: stats::Registry,
    open_connections: Arc<AtomicUsize>,
    /// How many worker threads [`Gateway::serve`] starts.
    workers: usize,
}

impl Gateway {
    pub fn new(settings: Settings) -> Arc<Gateway> {
        let holds = hold::Holds::new(settings.max_held_requests);
        let workers = match settings.worker_threads {
            0 => std::thread::available_parallelism().map_or(1, |cores| cores.get()),
            threads => threads,
        };
        let limits = pool::Limits {
            max_idle: settings.upstream_idle_per_replica,
            idle_timeout: settings.upstream_idle_timeout,
            shards: workers,
        };
        Arc::new(Gateway {
            settings,
            table: ArcSwap::from_pointee(balance::LiveTable::default()),
            counters: balance::Counters::new(limits),
            client: proxy::upstream_client(),
            holds,
            stats: stats::Registry::default(),
            open_connections: Arc::default(),
            workers,
        })
    }

    /// Swaps the route table atomically (readers never lock) and wakes requests held for a
    /// replica.
    pub fn update(&self, table: RouteTable) {
        let traffic = self.stats.for_table(&table.routes);
        let live = self.counters.live_table(table, traffic);
        self.table.store(Arc::new(live));
        self.holds.wake_all();
    }

    /// Requests waiting for a ready replica now.
    pub fn held(&self) -> usize {
        self.holds.count()
    }

    /// Requests in flight per replica (run id → count), for draining. A run that left the
    /// table stays listed while it still has requests.
    pub fn in_flight(&self) -> HashMap<String, usize> {
        self.counters.snapshot()
    }

    /// Every route's traffic since start (routes that left the table included), the requests
    /// no route took, and the state of the listener and the access log.
    pub fn report(&self) -> GatewayReport {
        GatewayReport {
            routes: self.stats.report(),
            unrouted: self.stats.unrouted.report(),
            held_requests: self.held(),
            open_connections: self.open_connections.load(Ordering::Relaxed),
            access_log_dropped: self
                .settings
                .access_log
                .as_ref()
                .map_or(0, AccessLog::dropped),
        }
    }

    /// Serves until `shutdown` resolves; open connections are then asked to finish their
    /// current request and close. Connections are accepted here and served on the worker
    /// threads (see the crate's documentation), which run until their last connection (or
    /// tunnel) has ended.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) {
        tokio::pin!(shutdown);
        let sweeper = tokio::spawn(sweep_idle_connections(Arc::downgrade(&self)));
        let permits = Arc::new(tokio::sync::Semaphore::new(self.settings.max_connections));
        let (stop_connections, connections_stopped) = tokio::sync::watch::channel(false);
        let mut workers = Vec::with_capacity(self.workers);
        for index in 0..self.workers {
            match Worker::start(index, self.clone(), connections_stopped.clone()) {
                Ok(worker) => workers.push(worker),
                Err(error) => {
                    // Serving on the caller's runtime is slower, not wrong.
                    tracing::error!(%error, "the gateway could not start a worker thread");
                    break;
                }
            }
        }
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = &mut shutdown => break,
            };
            let (stream, client) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "gateway could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                // Refusing by closing keeps established connections served; queueing would
                // only let the excess pile up unseen.
                tracing::warn!(%client, limit = self.settings.max_connections,
                    "gateway refused a connection: too many open");
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            // The least busy worker, counting the tunnels it runs too.
            let worker = workers.iter().min_by_key(|worker| worker.load.open());
            let hold = ConnectionHold {
                _permit: permit,
                _open: OpenConnection::new(&self.open_connections),
                _worker: worker.map(|worker| worker.load.enter()),
            };
            let Some(worker) = worker else {
                tokio::spawn(serve_connection(
                    self.clone(),
                    stream,
                    client,
                    hold,
                    connections_stopped.clone(),
                ));
                continue;
            };
            match stream.into_std() {
                Ok(stream) => worker.hand_over(stream, client, hold),
                Err(error) => {
                    tracing::warn!(%client, %error, "gateway could not hand a connection to a worker")
                }
            }
        }
        let _ = stop_connections.send(true);
        sweeper.abort();
    }
}

/// Serves one client connection until it closes, or until `stopped` says so (then after its
/// current request).
async fn serve_connection(
    gateway: Arc<Gateway>,
    stream: TcpStream,
    client: SocketAddr,
    hold: ConnectionHold,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let slot: ConnectionSlot = Arc::new(std::sync::Mutex::new(Some(hold)));
    let settings = &gateway.settings;
    let connection_slot = slot.clone();
    let peer = Arc::new(proxy::Peer::new(client));
    let service_gateway = gateway.clone();
    let service = service_fn(move |request| {
        proxy::handle(
            service_gateway.clone(),
            peer.clone(),
            request,
            connection_slot.clone(),
        )
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(proxy::header_buffer_bytes(settings.max_header_bytes))
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        // The guard `wait_for` returns is not Send: drop it inside.
        () = async { drop(stopped.wait_for(|stop| *stop).await) } => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%client, %error, "gateway connection ended with an error");
    }
}

/// A thread with a single-threaded runtime that serves the client connections handed to it,
/// and the upstream connections their requests open.
struct Worker {
    connections: tokio::sync::mpsc::UnboundedSender<Handed>,
    load: Arc<WorkerLoad>,
}

/// An accepted connection on its way to a worker.
struct Handed {
    stream: std::net::TcpStream,
    client: SocketAddr,
    hold: ConnectionHold,
}

impl Worker {
    fn start(
        index: usize,
        gateway: Arc<Gateway>,
        stopped: tokio::sync::watch::Receiver<bool>,
    ) -> std::io::Result<Worker> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (connections, mut handed) = tokio::sync::mpsc::unbounded_channel::<Handed>();
        let load = Arc::new(WorkerLoad::default());
        let worker_load = load.clone();
        std::thread::Builder::new()
            .name(format!("gateway-{index}"))
            .spawn(move || {
                pool::set_shard(index);
                runtime.block_on(async move {
                    while let Some(Handed {
                        stream,
                        client,
                        hold,
                    }) = handed.recv().await
                    {
                        match TcpStream::from_std(stream) {
                            Ok(stream) => drop(tokio::spawn(serve_connection(
                                gateway.clone(),
                                stream,
                                client,
                                hold,
                                stopped.clone(),
                            ))),
                            Err(error) => tracing::warn!(%client, %error,
                                "a gateway worker could not take a connection"),
                        }
                    }
                    // The gateway stopped serving: what is open finishes first.
                    drop(gateway);
                    worker_load.wait_empty().await;
                });
            })?;
        Ok(Worker { connections, load })
    }

    fn hand_over(&self, stream: std::net::TcpStream, client: SocketAddr, hold: ConnectionHold) {
        let handed = Handed {
            stream,
            client,
            hold,
        };
        if self.connections.send(handed).is_err() {
            tracing::warn!(%client, "a gateway worker is gone; connection closed");
        }
    }
}

/// The connections and tunnels a worker serves.
#[derive(Default)]
struct WorkerLoad {
    open: AtomicUsize,
    emptied: tokio::sync::Notify,
}

impl WorkerLoad {
    fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn enter(self: &Arc<Self>) -> WorkerShare {
        self.open.fetch_add(1, Ordering::Relaxed);
        WorkerShare(self.clone())
    }

    async fn wait_empty(&self) {
        loop {
            let emptied = self.emptied.notified();
            if self.open.load(Ordering::Acquire) == 0 {
                return;
            }
            emptied.await;
        }
    }
}

/// One connection or tunnel on a worker, until dropped.
struct WorkerShare(Arc<WorkerLoad>);

impl Drop for WorkerShare {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.emptied.notify_one();
        }
    }
}

/// Closes idle upstream connections once they are too old to reuse, so that a replica is not
/// left holding them after traffic stops (a Python server may spend a thread on each).
async fn sweep_idle_connections(gateway: std::sync::Weak<Gateway>) {
    let period = match gateway.upgrade() {
        Some(gateway) if gateway.settings.upstream_idle_per_replica > 0 => {
            gateway.settings.upstream_idle_timeout
        }
        _ => return,
    };
    let mut ticks = tokio::time::interval(period.max(Duration::from_millis(100)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(gateway) = gateway.upgrade() else {
            return;
        };
        gateway.counters.expire_idle(std::time::Instant::now());
    }
}

/// What an accepted connection holds while it is open: its place under `max_connections` and
/// in the open count. When the connection is upgraded, hyper hands its socket over and the
/// tunnel takes this over, so that a WebSocket counts as long as it lasts.
pub(crate) struct ConnectionHold {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _open: OpenConnection,
    /// Keeps the worker serving it running; `None` on the caller's runtime.
    _worker: Option<WorkerShare>,
}

/// Shared by a connection's task and its requests; emptied by a tunnel that takes it over.
pub(crate) type ConnectionSlot = Arc<std::sync::Mutex<Option<ConnectionHold>>>;

/// Counts one open client connection until dropped.
struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    fn new(count: &Arc<AtomicUsize>) -> OpenConnection {
        count.fetch_add(1, Ordering::Relaxed);
        OpenConnection(count.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

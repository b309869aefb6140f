//! Kept upstream connections: each replica has a small stack of idle HTTP/1.1 connections that
//! later requests reuse, newest first, instead of opening one per request.
//!
//! Reuse must not cost the gateway what a connection per request gave it: knowing whether a
//! request reached a replica. So requests go out with `try_send_request`: a kept connection
//! that turns out closed before the request was written (the replica closed it while it sat
//! idle) hands the request back, body and all, and it goes to another connection exactly as if
//! it had never been sent ([`Outcome::NotSent`] once no connection of the replica takes it).
//! Only an error after the request was written is a failure at the replica
//! ([`Outcome::Failed`]).
//!
//! A connection goes back on the stack only once its response was read to the end without an
//! error ([`Lease::give_back`]); a response cut short, a failed one and an upgraded (WebSocket)
//! connection are never reused. A replica that leaves the route table (drained, stopped, gone)
//! has its idle connections dropped and takes no more back. Idle connections older than the
//! idle timeout are dropped when found, and by [`Connections::expire`], which the gateway runs
//! on a timer. Upstream sockets acknowledge what they receive at once (`QuickAck`): a replica
//! that answers in pieces without `TCP_NODELAY` would otherwise wait 40 ms per answer on a
//! kept connection.

use std::cell::Cell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::proxy::Body;

/// One upstream connection's sending half; the connection itself runs on a task of its own.
pub(crate) type Sender = http1::SendRequest<Body>;

/// A replica that does not accept a connection by then counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How many connections a replica keeps, and for how long.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Idle connections kept per replica, shared out among the shards; 0 turns reuse off.
    pub max_idle: usize,
    /// An idle connection older than this is closed instead of reused.
    pub idle_timeout: Duration,
    /// One per thread that serves requests (see [`set_shard`]); at least 1.
    pub shards: usize,
}

thread_local! {
    /// The shard of idle connections that requests on this thread take from and give back to.
    static SHARD: Cell<usize> = const { Cell::new(0) };
}

/// Makes the current thread use shard `index` of every replica's idle connections. A kept
/// connection's own task runs on the runtime that opened it: a request that reused a
/// connection opened by another thread would hand its request to that thread and be woken
/// from it, two cross-thread wake-ups per request, which a shard per thread avoids.
pub(crate) fn set_shard(index: usize) {
    SHARD.with(|shard| shard.set(index));
}

/// One replica's idle connections, one stack per shard. Shared by the route tables that list
/// the replica and by the requests that lease a connection from it.
#[derive(Debug)]
pub(crate) struct Connections {
    /// Idle connections kept per shard.
    max_idle: usize,
    idle_timeout: Duration,
    shards: Box<[Mutex<Idle>]>,
}

#[derive(Debug, Default)]
struct Idle {
    /// Oldest first; reuse takes from the back so that the connections in use stay few and
    /// warm, and the ones left over age out at the front.
    stack: VecDeque<(Sender, Instant)>,
    /// The replica left the route table: nothing is kept for it.
    retired: bool,
}

impl Connections {
    pub fn new(limits: Limits) -> Connections {
        let shards = limits.shards.max(1);
        Connections {
            max_idle: limits.max_idle.div_ceil(shards),
            idle_timeout: limits.idle_timeout,
            shards: (0..shards).map(|_| Mutex::default()).collect(),
        }
    }

    /// The current thread's shard.
    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.lock_shard(SHARD.with(Cell::get))
    }

    fn lock_shard(&self, index: usize) -> std::sync::MutexGuard<'_, Idle> {
        lock(&self.shards[index % self.shards.len()])
    }

    /// The replica is in the route table: connections may be kept again.
    pub fn activate(&self) {
        for shard in &self.shards {
            lock(shard).retired = false;
        }
    }

    /// The replica left the route table: its idle connections are closed now, and the
    /// connections of requests still in flight are closed when those end.
    pub fn retire(&self) {
        for shard in &self.shards {
            let dropped = {
                let mut idle = lock(shard);
                idle.retired = true;
                std::mem::take(&mut idle.stack)
            };
            drop(dropped);
        }
    }

    /// Closes the idle connections that have waited `idle_timeout` or more by `now`.
    pub fn expire(&self, now: Instant) {
        for shard in &self.shards {
            expire(&mut lock(shard).stack, now, self.idle_timeout);
        }
    }

    /// Idle connections kept now.
    #[cfg(test)]
    pub fn idle_count(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| lock(shard).stack.len())
            .sum()
    }

    /// The newest idle connection that is ready for a request. Connections found closed (the
    /// replica closed them) or too old are dropped on the way; one still finishing its last
    /// exchange stays for later.
    fn take(&self, now: Instant) -> Option<Sender> {
        let mut idle = self.lock();
        expire(&mut idle.stack, now, self.idle_timeout);
        let mut busy = Vec::new();
        let mut found = None;
        while let Some((mut sender, since)) = idle.stack.pop_back() {
            match ready_now(&mut sender) {
                Poll::Ready(Ok(())) => {
                    found = Some(sender);
                    break;
                }
                Poll::Ready(Err(_)) => {}
                Poll::Pending => busy.push((sender, since)),
            }
        }
        idle.stack.extend(busy.into_iter().rev());
        found
    }

    /// As `put_in`, into the current thread's shard.
    #[cfg(test)]
    fn put(&self, sender: Sender, now: Instant) {
        self.put_in(SHARD.with(Cell::get), sender, now);
    }

    /// Keeps `sender` for reuse in shard `index`, unless the replica is retired or the
    /// connection closed; a full stack makes room by closing its oldest connection.
    fn put_in(&self, index: usize, sender: Sender, now: Instant) {
        if self.max_idle == 0 || sender.is_closed() {
            return;
        }
        let mut idle = self.lock_shard(index);
        if idle.retired {
            return;
        }
        if idle.stack.len() >= self.max_idle {
            idle.stack.pop_front();
        }
        idle.stack.push_back((sender, now));
    }
}

fn lock(shard: &Mutex<Idle>) -> std::sync::MutexGuard<'_, Idle> {
    shard.lock().unwrap_or_else(|p| p.into_inner())
}

fn expire(stack: &mut VecDeque<(Sender, Instant)>, now: Instant, timeout: Duration) {
    while stack
        .front()
        .is_some_and(|(_, since)| now.saturating_duration_since(*since) >= timeout)
    {
        stack.pop_front();
    }
}

/// Whether the connection can take a request now, without waiting: `Ready(Err)` once it is
/// closed, `Pending` while it is still busy with the previous exchange.
fn ready_now(sender: &mut Sender) -> Poll<hyper::Result<()>> {
    sender.poll_ready(&mut Context::from_waker(Waker::noop()))
}

/// A connection lent to one request. Dropped, it closes the connection; only
/// [`Lease::give_back`] keeps it.
pub(crate) struct Lease {
    sender: Sender,
    connections: Arc<Connections>,
    /// The shard it came from, which the thread running the connection's task takes from.
    shard: usize,
}

impl Lease {
    /// Returns the connection to its replica's idle stack. Call it only when the response was
    /// read to its end without an error.
    pub fn give_back(self) {
        self.connections
            .put_in(self.shard, self.sender, Instant::now());
    }
}

/// What became of a request handed to a replica.
pub(crate) enum Outcome {
    /// The replica answered on `lease`'s connection.
    Answered {
        response: Response<Incoming>,
        lease: Lease,
    },
    /// Nothing of the request reached the replica (no connection could be opened, or every
    /// connection closed before writing it): here it is back, to go elsewhere.
    NotSent {
        request: Request<Body>,
        detail: String,
    },
    /// The request, or part of it, was written and then the exchange failed. `reused` tells
    /// whether the connection was a kept one, which a replica may close just as a request goes
    /// out.
    Failed { error: hyper::Error, reused: bool },
}

/// Sends `request` to the replica at `addr`: on its newest idle connection that takes it (when
/// `reuse`), else on a new one.
pub(crate) async fn send(
    connections: &Arc<Connections>,
    addr: SocketAddr,
    client: &http1::Builder,
    mut request: Request<Body>,
    reuse: bool,
) -> Outcome {
    if reuse {
        while let Some(sender) = connections.take(Instant::now()) {
            match exchange(sender, request, connections, true).await {
                Outcome::NotSent {
                    request: back,
                    detail,
                } => {
                    tracing::debug!(%addr, %detail, "a kept connection had closed; trying another");
                    request = back;
                }
                answered_or_failed => return answered_or_failed,
            }
        }
    }
    match connect(addr, client).await {
        Ok(sender) => exchange(sender, request, connections, false).await,
        Err(detail) => Outcome::NotSent { request, detail },
    }
}

async fn exchange(
    mut sender: Sender,
    request: Request<Body>,
    connections: &Arc<Connections>,
    reused: bool,
) -> Outcome {
    match sender.try_send_request(request).await {
        Ok(response) => Outcome::Answered {
            response,
            lease: Lease {
                sender,
                connections: connections.clone(),
                shard: SHARD.with(Cell::get),
            },
        },
        Err(mut error) => match error.take_message() {
            Some(request) => Outcome::NotSent {
                request,
                detail: error.into_error().to_string(),
            },
            None => Outcome::Failed {
                error: error.into_error(),
                reused,
            },
        },
    }
}

async fn connect(addr: SocketAddr, client: &http1::Builder) -> Result<Sender, String> {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return Err(error.to_string()),
        Err(_) => return Err(format!("no connection within {CONNECT_TIMEOUT:?}")),
    };
    let _ = stream.set_nodelay(true);
    let (sender, connection) = client
        .handshake(TokioIo::new(QuickAck(stream)))
        .await
        .map_err(|error| error.to_string())?;
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%addr, %error, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// An upstream socket that acknowledges what it receives at once (`TCP_QUICKACK`, Linux).
///
/// A replica that writes a response in pieces without `TCP_NODELAY` (Python's `http.server`
/// sends the header and the body in two writes) holds each piece back until the one before is
/// acknowledged (Nagle). On a kept connection Linux delays that acknowledgement, by 40 ms,
/// hoping to send it along with the next request: every response would then take 40 ms more.
/// A new connection starts out acknowledging at once, which is why one connection per request
/// never showed it. Quick-ack mode does not last, so it is asked for whenever the socket has
/// something to read; when an acknowledgement is pending, asking sends it.
struct QuickAck(TcpStream);

impl AsyncRead for QuickAck {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.0.poll_read_ready(cx))?;
        #[cfg(target_os = "linux")]
        let _ = self.0.set_quickack(true);
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for QuickAck {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    use tokio::io::{AsyncReadExt, DuplexStream};
    use tokio::net::TcpListener;

    const PATIENCE: Duration = Duration::from_secs(20);

    fn limits(max_idle: usize) -> Limits {
        Limits {
            max_idle,
            idle_timeout: Duration::from_secs(1),
            shards: 1,
        }
    }

    /// A connection ready for a request, and the replica's end of it.
    async fn connection() -> (Sender, DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let (mut sender, connection) = http1::handshake(TokioIo::new(ours)).await.unwrap();
        tokio::spawn(connection);
        sender.ready().await.unwrap();
        (sender, theirs)
    }

    /// Waits until the other end of `theirs` is closed, reading (and dropping) what comes.
    async fn closed(theirs: &mut DuplexStream) {
        let mut buffer = [0u8; 1024];
        loop {
            match tokio::time::timeout(PATIENCE, theirs.read(&mut buffer)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) => continue,
                Err(_) => panic!("the connection is still open after {PATIENCE:?}"),
            }
        }
    }

    fn post(body: &'static str) -> Request<Body> {
        Request::post("/")
            .header("host", "replica")
            .body(
                Full::new(Bytes::from(body))
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .unwrap()
    }

    /// A replica on loopback that answers every request with its body.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(|request: Request<Incoming>| async move {
                            let body = request.into_body().collect().await?.to_bytes();
                            Ok::<_, hyper::Error>(Response::new(Full::new(body)))
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn reading_a_kept_connection_acknowledges_at_once() {
        use tokio::io::AsyncWriteExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ours = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut theirs, _) = listener.accept().await.unwrap();
        let mut ours = QuickAck(ours);
        let mut buffer = [0u8; 4];
        // Requests sent right after answers, as on a busy kept connection: Linux then delays
        // its acknowledgements to send them with the next request.
        for _ in 0..4 {
            ours.0.write_all(b"ping").await.unwrap();
            theirs.read_exact(&mut buffer).await.unwrap();
            theirs.write_all(b"pong").await.unwrap();
            ours.0.read_exact(&mut buffer).await.unwrap();
        }
        ours.0.write_all(b"ping").await.unwrap();
        theirs.read_exact(&mut buffer).await.unwrap();
        assert!(!ours.0.quickack().unwrap(), "acknowledgements are delayed");
        theirs.write_all(b"pong").await.unwrap();
        ours.read_exact(&mut buffer).await.unwrap();
        assert!(ours.0.quickack().unwrap(), "reading acknowledged at once");
    }

    #[tokio::test]
    async fn idle_connections_expire_after_the_timeout() {
        let connections = Connections::new(limits(4));
        let start = Instant::now();
        let (older, mut older_end) = connection().await;
        let (newer, _newer_end) = connection().await;
        connections.put(older, start);
        connections.put(newer, start + Duration::from_millis(500));
        connections.expire(start + Duration::from_millis(999));
        assert_eq!(connections.idle_count(), 2);
        connections.expire(start + Duration::from_secs(1));
        assert_eq!(connections.idle_count(), 1);
        closed(&mut older_end).await;
        assert!(connections
            .take(start + Duration::from_millis(1500))
            .is_none());
        assert_eq!(connections.idle_count(), 0);
    }

    #[tokio::test]
    async fn a_full_replica_closes_its_oldest_idle_connection() {
        let connections = Connections::new(limits(2));
        let now = Instant::now();
        let (first, mut first_end) = connection().await;
        connections.put(first, now);
        for _ in 0..2 {
            let (sender, _end) = connection().await;
            connections.put(sender, now);
        }
        assert_eq!(connections.idle_count(), 2);
        closed(&mut first_end).await;
    }

    #[tokio::test]
    async fn the_newest_connection_is_reused_first() {
        let connections = Connections::new(limits(4));
        let now = Instant::now();
        let (older, _older_end) = connection().await;
        let (newer, mut newer_end) = connection().await;
        connections.put(older, now);
        connections.put(newer, now);
        drop(connections.take(now).expect("a ready connection"));
        closed(&mut newer_end).await;
        assert_eq!(connections.idle_count(), 1);
    }

    #[tokio::test]
    async fn a_retired_replica_keeps_no_connection_until_it_is_active_again() {
        let connections = Connections::new(limits(4));
        let now = Instant::now();
        let (kept, mut kept_end) = connection().await;
        connections.put(kept, now);
        connections.retire();
        assert_eq!(connections.idle_count(), 0);
        closed(&mut kept_end).await;
        let (refused, mut refused_end) = connection().await;
        connections.put(refused, now);
        assert_eq!(connections.idle_count(), 0);
        closed(&mut refused_end).await;
        connections.activate();
        let (sender, _end) = connection().await;
        connections.put(sender, now);
        assert_eq!(connections.idle_count(), 1);
    }

    #[tokio::test]
    async fn nothing_is_kept_when_reuse_is_off() {
        let connections = Connections::new(limits(0));
        let (sender, mut end) = connection().await;
        connections.put(sender, Instant::now());
        assert_eq!(connections.idle_count(), 0);
        closed(&mut end).await;
    }

    #[tokio::test]
    async fn a_kept_connection_found_closed_as_the_request_goes_out_gives_the_request_back() {
        let addr = echo().await;
        let connections = Arc::new(Connections::new(limits(4)));
        let (sender, theirs) = connection().await;
        // The replica closes the idle connection; the gateway has not noticed yet (its task has
        // not run since), so the connection still looks ready when it is taken.
        drop(theirs);
        assert!(!sender.is_closed());
        connections.put(sender, Instant::now());
        let sent = send(
            &connections,
            addr,
            &http1::Builder::new(),
            post("precious"),
            true,
        )
        .await;
        let Outcome::Answered { response, lease } = sent else {
            panic!("the request did not go out on a new connection");
        };
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "precious");
        lease.give_back();
        assert_eq!(connections.idle_count(), 1, "the new connection is kept");
    }

    #[tokio::test]
    async fn a_kept_connection_that_fails_after_the_request_was_written_is_a_failure() {
        let connections = Arc::new(Connections::new(limits(4)));
        let (sender, mut theirs) = connection().await;
        connections.put(sender, Instant::now());
        // The replica reads the request, then goes away without answering.
        let replica = tokio::spawn(async move {
            let mut buffer = [0u8; 1024];
            let n = theirs.read(&mut buffer).await.unwrap();
            assert!(n > 0);
        });
        let unreachable = SocketAddr::from(([127, 0, 0, 1], 1));
        let sent = send(
            &connections,
            unreachable,
            &http1::Builder::new(),
            post("x"),
            true,
        )
        .await;
        assert!(matches!(sent, Outcome::Failed { reused: true, .. }));
        replica.await.unwrap();
    }

    #[tokio::test]
    async fn a_refused_connection_gives_the_request_back() {
        let unused = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = unused.local_addr().unwrap();
        drop(unused);
        let connections = Arc::new(Connections::new(limits(4)));
        let sent = send(&connections, addr, &http1::Builder::new(), post("x"), true).await;
        let Outcome::NotSent { request, .. } = sent else {
            panic!("a refused connection must give the request back");
        };
        let body = request.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "x", "the body is still whole");
    }
}

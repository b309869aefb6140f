//! One request from arrival to the end of its answer: what the access log and the route's
//! counters are told once the response body is done (or dropped: the client went away), or
//! once an upgraded connection closes.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use hyper::body::{Bytes, Frame, Incoming, SizeHint};
use hyper::Request;

use crate::access::{AccessLog, AccessRecord};
use crate::proxy::{Answer, Body, BoxError};
use crate::stats::{Counted, Traffic};
use crate::Gateway;

/// Finishes on drop: records the request in its route's counters (or the unrouted ones) and
/// hands its access log record to the writer.
pub(crate) struct Exchange {
    started: Instant,
    client: SocketAddr,
    /// What only the access log needs; `None` without one.
    logged: Option<Logged>,
    unrouted: Arc<Traffic>,
    access_log: Option<AccessLog>,
    route: Option<(Arc<str>, Counted)>,
    pub run: Option<Arc<str>>,
    pub status: u16,
    pub error: Option<&'static str>,
    /// Shared with the request body on its way to the replica, which counts into it; made
    /// only for a request that has a body (or becomes a tunnel).
    bytes_in: Option<Arc<AtomicU64>>,
    pub bytes_out: u64,
}

/// The request as the access log tells it, taken when it arrives.
struct Logged {
    arrived: SystemTime,
    method: String,
    host: String,
    path: String,
}

impl Exchange {
    /// Starts the clock on `request`, which arrived from `client` naming `host`.
    pub fn new(
        gateway: &Gateway,
        client: SocketAddr,
        request: &Request<Incoming>,
        host: &str,
    ) -> Exchange {
        let access_log = gateway.settings.access_log.clone();
        let logged = access_log.as_ref().map(|_| Logged {
            arrived: SystemTime::now(),
            method: request.method().to_string(),
            host: host.to_string(),
            path: request.uri().path().to_string(),
        });
        Exchange {
            started: Instant::now(),
            client,
            logged,
            unrouted: gateway.stats.unrouted.clone(),
            access_log,
            route: None,
            run: None,
            status: 0,
            error: None,
            bytes_in: None,
            bytes_out: 0,
        }
    }

    /// The counter of request body bytes sent on to the replica.
    pub fn bytes_in(&mut self) -> &Arc<AtomicU64> {
        self.bytes_in.get_or_insert_with(Arc::default)
    }

    /// The request matched `service`'s route: it counts there, in flight from now on.
    pub fn route(&mut self, service: &Arc<str>, traffic: &Arc<Traffic>) {
        if self.route.is_none() {
            self.route = Some((service.clone(), traffic.begin()));
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let took = self.started.elapsed();
        let bytes_in = self
            .bytes_in
            .as_ref()
            .map_or(0, |bytes| bytes.load(Ordering::Relaxed));
        let traffic = match &self.route {
            Some((_, counted)) => counted.traffic(),
            None => &self.unrouted,
        };
        traffic.record(self.status, self.error, bytes_in, self.bytes_out, took);
        if let (Some(log), Some(logged)) = (&self.access_log, self.logged.take()) {
            log.record(AccessRecord {
                time: logged.arrived,
                client: self.client,
                method: logged.method,
                host: logged.host,
                path: logged.path,
                status: self.status,
                bytes_out: self.bytes_out,
                duration: took,
                service: self.route.as_ref().map(|(service, _)| service.clone()),
                run: self.run.take(),
                error: self.error,
            });
        }
    }
}

/// A response body that counts what it sends and finishes its exchange when done or dropped.
pub(crate) struct Tracked {
    inner: Answer,
    exchange: Option<Exchange>,
}

impl Tracked {
    pub fn new(inner: Answer, exchange: Exchange) -> Tracked {
        Tracked {
            inner,
            exchange: Some(exchange),
        }
    }

    /// A body whose exchange finishes elsewhere (an upgrade's, when its tunnel closes).
    pub fn untracked(inner: Answer) -> Tracked {
        Tracked {
            inner,
            exchange: None,
        }
    }
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(exchange)) = (frame.data_ref(), self.exchange.as_mut()) {
                    exchange.bytes_out += data.len() as u64;
                }
            }
            // The end: finish now rather than whenever hyper drops the body.
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => drop(self.exchange.take()),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Counts request body bytes into `counter` as they pass.
pub(crate) fn count_into(body: Body, counter: Arc<AtomicU64>) -> Body {
    use http_body_util::BodyExt;
    body.map_frame(move |frame| {
        if let Some(data) = frame.data_ref() {
            counter.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        frame
    })
    .boxed_unsync()
}

//! Forwarding one request: limits, route lookup, API keys, holding, replica choice with
//! retries, and header rewriting in both directions. Bodies stream through untouched; an
//! upgrade the replica accepts becomes a tunnel (see `upgrade`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body as _, Bytes, Incoming};
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONNECTION, TE, TRAILER, TRANSFER_ENCODING,
    UPGRADE,
};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};

use crate::auth::{self, Refusal};
use crate::balance::{self, InFlight, LiveRoute, LiveTable};
use crate::exchange::{self, Exchange, Tracked};
use crate::hold::HeldSlot;
use crate::pool;
use crate::route;
use crate::upgrade::{self, Tunnel};
use crate::{ConnectionSlot, Error, Gateway};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A request body on its way to a replica, or one of the gateway's own answers.
pub(crate) type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Every body the gateway sends to a client. An enum rather than another [`Body`]: the two
/// kinds nearly every answer is get to the client without a boxed body each.
pub(crate) enum Answer {
    /// A replica's body, streamed as it comes.
    Replica(ReplicaBody),
    /// A small answer read whole from a replica.
    Whole(Full<Bytes>),
    /// The gateway's own answers, and an upgrade's empty one.
    Other(Body),
}

impl hyper::body::Body for Answer {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        // Every variant is Unpin.
        match self.get_mut() {
            Answer::Replica(body) => std::pin::Pin::new(body).poll_frame(cx),
            Answer::Whole(body) => std::pin::Pin::new(body)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            Answer::Other(body) => std::pin::Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Answer::Replica(body) => body.is_end_stream(),
            Answer::Whole(body) => body.is_end_stream(),
            Answer::Other(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Answer::Replica(body) => body.size_hint(),
            Answer::Whole(body) => body.size_hint(),
            Answer::Other(body) => body.size_hint(),
        }
    }
}

/// Hyper's read buffer while it parses a header. It is twice the header limit so that a
/// header a little over the limit still parses and gets our JSON 431; a much larger one hits
/// hyper's own (bodiless) 431. Hyper refuses buffers under 8 KiB.
pub(crate) fn header_buffer_bytes(max_header_bytes: usize) -> usize {
    max_header_bytes.saturating_mul(2).max(8192)
}

/// What forwarding gave: a response to stream back, or a replica's 101 and the tunnel to
/// run once the client has it too.
pub(crate) enum Forwarded {
    Response(Response<Answer>),
    Upgraded {
        response: Response<Body>,
        tunnel: Tunnel,
    },
}

/// The client at the other end of a connection, with what every request of it forwards
/// worked out once per connection.
#[derive(Debug)]
pub(crate) struct Peer {
    pub addr: SocketAddr,
    /// The client's IP address as an `X-Forwarded-For` entry.
    ip: HeaderValue,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Peer {
        let ip = HeaderValue::from_str(&addr.ip().to_string())
            .expect("an IP address is a valid header value");
        Peer { addr, ip }
    }
}

pub(crate) async fn handle(
    gateway: Arc<Gateway>,
    peer: Arc<Peer>,
    request: Request<Incoming>,
    connection: ConnectionSlot,
) -> Result<Response<Tracked>, Infallible> {
    let client = peer.addr;
    let raw_host = request_host(&request);
    let host_text = raw_host.as_ref().and_then(|host| host.to_str().ok());
    let mut exchange = Exchange::new(&gateway, client, &request, host_text.unwrap_or(""));
    let method = request.method().clone();
    let uri = request.uri().clone();
    match forward(&gateway, &peer, request, raw_host, &mut exchange).await {
        Ok(Forwarded::Response(response)) => {
            exchange.status = response.status().as_u16();
            Ok(response.map(|body| Tracked::new(body, exchange)))
        }
        Ok(Forwarded::Upgraded { response, tunnel }) => {
            exchange.status = response.status().as_u16();
            let hold = connection.lock().unwrap_or_else(|p| p.into_inner()).take();
            tokio::spawn(tunnel.run(exchange, hold));
            Ok(response.map(|body| Tracked::untracked(Answer::Other(body))))
        }
        Err(error) => {
            tracing::info!(%client, %method, %uri, code = error.code(), side = ?error.side(),
                %error, "gateway answered with an error");
            exchange.status = error.status().as_u16();
            exchange.error = Some(error.code());
            let response = error.into_response();
            Ok(response.map(|body| Tracked::new(Answer::Other(body), exchange)))
        }
    }
}

/// The host a request names: the Host header, else the authority of an absolute URI. A
/// header value rather than a string: it is forwarded as `X-Forwarded-Host` as it came, which
/// shares its bytes instead of copying them.
pub(crate) fn request_host(request: &Request<Incoming>) -> Option<HeaderValue> {
    request
        .headers()
        .get(hyper::header::HOST)
        .filter(|host| host.to_str().is_ok())
        .cloned()
        .or_else(|| {
            let authority = request.uri().authority()?;
            HeaderValue::from_str(authority.as_str()).ok()
        })
}

/// Request line plus header lines, as the client sent them (give or take whitespace).
fn header_bytes(request: &Request<Incoming>) -> usize {
    let line = request.method().as_str().len() + target_bytes(request.uri()) + 12;
    let fields: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    line + fields
}

/// The length of a request target as sent: `/path?query`, or `scheme://authority/path?query`.
fn target_bytes(uri: &Uri) -> usize {
    let path_and_query = uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    match uri.authority() {
        Some(authority) => {
            uri.scheme_str().map_or(0, |scheme| scheme.len() + 3)
                + authority.as_str().len()
                + path_and_query
        }
        None => path_and_query.max(1),
    }
}

/// The protocol a request asks to switch to, when it asks properly (`Connection: upgrade` and
/// `Upgrade: …`). An h2c upgrade is only an offer a proxy may ignore: dropped as hop-by-hop
/// headers, the request goes on as HTTP/1.1.
fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    let protocol = headers.get(UPGRADE)?;
    let h2c = protocol
        .to_str()
        .is_ok_and(|p| p.trim().eq_ignore_ascii_case("h2c"));
    (asks && !h2c).then(|| protocol.clone())
}

async fn forward(
    gateway: &Gateway,
    peer: &Peer,
    mut request: Request<Incoming>,
    raw_host: Option<HeaderValue>,
    exchange: &mut Exchange,
) -> Result<Forwarded, Error> {
    let size = header_bytes(&request);
    if size > gateway.settings.max_header_bytes {
        return Err(Error::HeadersTooLarge {
            size,
            limit: gateway.settings.max_header_bytes,
        });
    }
    let upgrade = upgrade_protocol(request.headers());
    let mut client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut request));
    let raw_host = raw_host.filter(|host| !host.is_empty());
    let host = route::normalized_host(
        raw_host
            .as_ref()
            .map_or("", |host| host.to_str().unwrap_or_default()),
    );
    let uri = request.uri().clone();
    let path = uri.path();
    // Keys and a declared length over the limit are checked before anything waits or connects.
    let mut consumed_authorization = false;
    {
        let table = gateway.table.load();
        if let Some(index) = route::find(&table.plain, &host, path) {
            let live = &table.routes[index];
            let route = &live.route;
            exchange.route(&live.service, &live.traffic);
            if !route.api_keys.is_empty() {
                auth::check(request.headers(), &route.api_keys).map_err(|refusal| {
                    Error::Unauthorized {
                        service: route.service.clone(),
                        missing: refusal == Refusal::Missing,
                    }
                })?;
                consumed_authorization = true;
            }
            if let Some(size) = content_length(&request).filter(|size| *size > route.max_body) {
                return Err(Error::BodyTooLarge {
                    service: route.service.clone(),
                    size,
                    limit: route.max_body,
                });
            }
        }
    }
    let mut hold = Hold::default();
    let (mut table, mut index) = wait_for_replica(gateway, &host, path, &[], &mut hold).await?;

    let (parts, body) = request.into_parts();
    // Only a bodiless idempotent request can be sent twice: the body of any other request
    // has been streamed into the first replica and is gone.
    let replayable = body.is_end_stream() && is_idempotent(&parts.method);
    let mut body = (!replayable).then(|| {
        exchange::count_into(
            body.map_err(BoxError::from).boxed_unsync(),
            exchange.bytes_in().clone(),
        )
    });
    let mut headers = parts.headers;
    forwarding_headers(&mut headers, &peer.ip, raw_host.as_ref());
    if consumed_authorization {
        // The key was for the gateway; the replica has no use for it and should not see it.
        headers.remove(AUTHORIZATION);
    }
    if let Some(protocol) = &upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, protocol.clone());
    }
    // Origin form (`/path?query`), as the client sent it unless it sent the absolute form.
    let target = match uri.authority() {
        None if uri.path_and_query().is_some() => uri.clone(),
        _ => uri
            .path_and_query()
            .cloned()
            .map_or_else(|| Uri::from_static("/"), Uri::from),
    };
    // A replayable request keeps its headers for a second try; any other request is built
    // once (when it comes back unsent, it comes back whole).
    let mut headers = Some(headers);
    let mut build = |body: Body| {
        let mut upstream = Request::new(body);
        *upstream.method_mut() = parts.method.clone();
        *upstream.uri_mut() = target.clone();
        *upstream.version_mut() = Version::HTTP_11;
        *upstream.headers_mut() = if replayable {
            headers.clone().unwrap_or_default()
        } else {
            headers.take().unwrap_or_default()
        };
        upstream
    };

    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut unreachable: Vec<String> = Vec::new();
    let mut replayed = false;
    // A request that no replica took yet (every connection refused or closed before it was
    // written) goes out again as it is, body included.
    let mut unsent: Option<Request<Body>> = None;
    // Set once a request failed on a kept connection: it goes out again on a new one.
    let mut reuse = true;
    loop {
        let route = &table.routes[index];
        let Some((replica, in_flight)) = balance::pick(route, &tried) else {
            // Every replica in the table failed before the request reached it (a replica was
            // killed and the table does not know yet): wait, within the route's hold, for the
            // table to bring one not tried yet, such as the replacement.
            let service = route.route.service.clone();
            match wait_for_replica(gateway, &host, path, &tried, &mut hold).await {
                Ok((newer, newer_index)) => {
                    (table, index) = (newer, newer_index);
                    continue;
                }
                Err(Error::NoReadyReplica { .. }) => {
                    return Err(Error::UpstreamUnreachable {
                        service,
                        detail: unreachable.join("; "),
                    })
                }
                Err(other) => return Err(other),
            }
        };
        tried.push(replica.addr);
        let outgoing = match (unsent.take(), body.take()) {
            (Some(request), _) => request,
            // A body without a declared length is cut off at the limit: the replica sees the
            // request fail rather than an endless upload.
            (None, Some(body)) => build(
                http_body_util::Limited::new(body, route.route.max_body as usize).boxed_unsync(),
            ),
            // A replayable request, or (unreachable) a request whose body went out already.
            (None, None) => build(Empty::new().map_err(|never| match never {}).boxed_unsync()),
        };
        let sent = pool::send(
            &replica.connections,
            replica.addr,
            &gateway.client,
            outgoing,
            reuse,
        )
        .await;
        match sent {
            pool::Outcome::Answered { response, lease } => {
                exchange.run = Some(replica.run.clone());
                if response.status() != StatusCode::SWITCHING_PROTOCOLS {
                    // A connection that carried an upgrade offer is not reused, whatever the
                    // answer: it is nobody's plain HTTP/1.1 connection any more.
                    let lease = upgrade.is_none().then_some(lease);
                    let whole = replayable
                        && declared_length(response.headers())
                            .is_some_and(|length| length <= WHOLE_ANSWER_BYTES);
                    let answer = downstream_response(response, in_flight, lease);
                    if !whole {
                        return Ok(Forwarded::Response(answer));
                    }
                    // A small answer to a request that may be sent again is read whole before
                    // any of it reaches the client: a replica killed mid-answer then costs a
                    // replay on another replica, not an answer cut off.
                    let (parts, body) = answer.into_parts();
                    match read_whole(body).await {
                        Ok(whole) => {
                            let body = Answer::Whole(Full::new(whole));
                            return Ok(Forwarded::Response(Response::from_parts(parts, body)));
                        }
                        Err(error) => {
                            let failure = Error::UpstreamFailed {
                                service: route.route.service.clone(),
                                run: replica.run.to_string(),
                                detail: format!("the answer was cut off: {error}"),
                            };
                            if !replayed {
                                tracing::warn!(%failure, "replaying an idempotent request on another replica");
                                replayed = true;
                                continue;
                            }
                            return Err(failure);
                        }
                    }
                }
                let Some(client_side) = client_upgrade.take() else {
                    return Err(Error::UpstreamFailed {
                        service: route.route.service.clone(),
                        run: replica.run.to_string(),
                        detail: "answered 101 Switching Protocols to a request that asked for \
                                 no upgrade"
                            .to_string(),
                    });
                };
                return Ok(upgrade::switch(response, client_side, in_flight));
            }
            pool::Outcome::NotSent { request, detail } => {
                tracing::warn!(service = %route.route.service, run = %replica.run,
                    addr = %replica.addr, %detail, "replica unreachable, trying another");
                unreachable.push(format!("{} at {}: {detail}", replica.run, replica.addr));
                unsent = Some(request);
                continue;
            }
            pool::Outcome::Failed { error, reused } => {
                let failure = Error::UpstreamFailed {
                    service: route.route.service.clone(),
                    run: replica.run.to_string(),
                    detail: error.to_string(),
                };
                if replayable && reused && reuse {
                    // Most likely the replica closed the kept connection as the request went
                    // out, so the replica may take it again, on a new connection. This try
                    // is not the one replay: a replica that was killed fails the new
                    // connection too (it can accept one while it dies), and then the replay
                    // goes elsewhere.
                    tracing::info!(%failure, "sending an idempotent request again on a new connection");
                    tried.pop();
                    reuse = false;
                    continue;
                }
                if replayable && !replayed {
                    tracing::warn!(%failure, "replaying an idempotent request on another replica");
                    replayed = true;
                    reuse = false;
                    continue;
                }
                return Err(failure);
            }
        }
    }
}

/// A body's bytes, read to its end. An answer of one piece, as small answers nearly always
/// come, is kept as it is: no copy, no list of pieces.
async fn read_whole(body: Answer) -> Result<Bytes, BoxError> {
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut rest: Option<Vec<u8>> = None;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue; // trailers: a replica's small answer has none worth keeping
        };
        match (&mut first, &mut rest) {
            (None, _) => first = Some(data),
            (Some(first), None) => {
                let mut joined = Vec::with_capacity(first.len() + data.len());
                joined.extend_from_slice(first);
                joined.extend_from_slice(&data);
                rest = Some(joined);
            }
            (Some(_), Some(joined)) => joined.extend_from_slice(&data),
        }
    }
    Ok(match (first, rest) {
        (_, Some(joined)) => Bytes::from(joined),
        (Some(first), None) => first,
        (None, None) => Bytes::new(),
    })
}

fn content_length(request: &Request<Incoming>) -> Option<u64> {
    request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

/// A request's place in the hold queue and its deadline, kept across waits so that one request
/// never waits longer than its route's hold in all.
#[derive(Default)]
struct Hold {
    slot: Option<HeldSlot>,
    deadline: Option<tokio::time::Instant>,
}

/// Finds the route and waits, within its hold and the hold queue's bound, until it has a
/// ready replica other than those in `excluded`. Every table update wakes the wait to look
/// again.
async fn wait_for_replica(
    gateway: &Gateway,
    host: &str,
    path: &str,
    excluded: &[SocketAddr],
    hold: &mut Hold,
) -> Result<(Arc<LiveTable>, usize), Error> {
    loop {
        let updated = gateway.holds.updated.notified();
        tokio::pin!(updated);
        // Registered before reading the table, so an update in between is not missed.
        updated.as_mut().enable();
        let table = gateway.table.load_full();
        let Some(index) = route::find(&table.plain, host, path) else {
            return Err(Error::NoRoute {
                host: host.to_string(),
                path: path.to_string(),
            });
        };
        let live: &LiveRoute = &table.routes[index];
        if live.replicas.iter().any(|r| !excluded.contains(&r.addr)) {
            return Ok((table, index));
        }
        if hold.slot.is_none() {
            hold.slot = Some(
                gateway
                    .holds
                    .try_enter()
                    .ok_or_else(|| Error::HoldQueueFull {
                        service: live.route.service.clone(),
                        limit: gateway.holds.limit(),
                    })?,
            );
        }
        let deadline = *hold
            .deadline
            .get_or_insert_with(|| tokio::time::Instant::now() + live.route.hold);
        if tokio::time::timeout_at(deadline, updated).await.is_err() {
            return Err(Error::NoReadyReplica {
                service: live.route.service.clone(),
                hold: live.route.hold,
            });
        }
    }
}

/// How upstream connections are opened. The read buffer is hyper's adaptive one (8 KiB,
/// doubling while reads fill it, up to about 400 KiB): on a 1 MiB chunked stream, exact sizes
/// of 16 KiB (worse), 64, 128 and 256 KiB and a 1 MiB ceiling did not beat it beyond the noise
/// of the benchmark (docs/benchmarks.md). A kept connection keeps its grown buffer, which was
/// the cost of a new connection per stream.
/// Answers up to this size to bodiless idempotent requests are read whole from the replica
/// before they are sent on, so that one cut off can be replayed elsewhere.
const WHOLE_ANSWER_BYTES: u64 = 64 * 1024;

/// The `Content-Length` of a response, if it declares a valid one.
fn declared_length(headers: &hyper::HeaderMap) -> Option<u64> {
    headers
        .get(hyper::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

pub(crate) fn upstream_client() -> hyper::client::conn::http1::Builder {
    hyper::client::conn::http1::Builder::new()
}

/// The replica's response with hop-by-hop headers removed; the in-flight count lasts until
/// its body is finished or dropped, and the connection is kept only if the body was read to
/// its end.
fn downstream_response(
    response: Response<Incoming>,
    in_flight: InFlight,
    lease: Option<pool::Lease>,
) -> Response<Answer> {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let body = ReplicaBody {
        inner: body,
        lease,
        ended: false,
        failed: false,
        _in_flight: in_flight,
    };
    Response::from_parts(parts, Answer::Replica(body))
}

/// A replica's response body on its way to the client. When it is dropped, its connection goes
/// back to the replica's idle connections if the body ended cleanly, and is closed otherwise
/// (the client went away first, or the replica failed mid-body).
pub(crate) struct ReplicaBody {
    inner: Incoming,
    lease: Option<pool::Lease>,
    ended: bool,
    failed: bool,
    _in_flight: InFlight,
}

impl hyper::body::Body for ReplicaBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(None) => self.ended = true,
            std::task::Poll::Ready(Some(Err(_))) => self.failed = true,
            _ => {}
        }
        polled.map(|frame| frame.map(|frame| frame.map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ReplicaBody {
    fn drop(&mut self) {
        // A body with a length is done once it has it all; hyper then stops polling it.
        let complete = self.ended || self.inner.is_end_stream();
        if let Some(lease) = self.lease.take() {
            if complete && !self.failed {
                lease.give_back();
            }
        }
    }
}

/// Headers that describe one connection, not the message (RFC 9110 7.6.1).
const HOP_BY_HOP: [HeaderName; 6] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    let is_proxy = |name: &HeaderName| name.as_str().starts_with("proxy-");
    if headers.keys().any(is_proxy) {
        let proxy: Vec<HeaderName> = headers.keys().filter(|n| is_proxy(n)).cloned().collect();
        for name in proxy {
            headers.remove(name);
        }
    }
}

/// Turns the client's headers into what the replica should see: hop-by-hop ones gone, the
/// client's address (`client_ip`) appended to `X-Forwarded-For`, and the original host and
/// scheme recorded.
pub(crate) fn forwarding_headers(
    headers: &mut HeaderMap,
    client_ip: &HeaderValue,
    host: Option<&HeaderValue>,
) {
    strip_hop_by_hop(headers);
    // Collecting nothing allocates nothing: most requests come without an X-Forwarded-For.
    let earlier: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect();
    let forwarded_for = if earlier.is_empty() {
        Some(client_ip.clone())
    } else {
        let ip = client_ip.to_str().unwrap_or_default();
        HeaderValue::from_str(&format!("{}, {ip}", earlier.join(", "))).ok()
    };
    if let Some(value) = forwarded_for {
        headers.insert(X_FORWARDED_FOR, value);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    if let Some(value) = host {
        headers.insert(X_FORWARDED_HOST, value.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("proxy-authorization", HeaderValue::from_static("basic x"));
        headers.insert("te", HeaderValue::from_static("trailers"));
        headers.insert("trailer", HeaderValue::from_static("x-sum"));
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        headers.insert("upgrade", HeaderValue::from_static("h2c"));
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut headers);
        let left: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["content-type"]);
    }

    #[test]
    fn forwarded_headers_are_set_and_appended() {
        let peer = Peer::new("10.0.0.7:5555".parse().unwrap());
        let mut headers = HeaderMap::new();
        headers.append("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        headers.append("x-forwarded-for", HeaderValue::from_static("5.6.7.8"));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let host = HeaderValue::from_static("Chat.lan:8080");
        forwarding_headers(&mut headers, &peer.ip, Some(&host));
        assert_eq!(headers["x-forwarded-for"], "1.2.3.4, 5.6.7.8, 10.0.0.7");
        assert_eq!(headers.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-host"], "Chat.lan:8080");

        let mut headers = HeaderMap::new();
        forwarding_headers(&mut headers, &peer.ip, None);
        assert_eq!(headers["x-forwarded-for"], "10.0.0.7");
        assert!(headers.get("x-forwarded-host").is_none());
    }

    #[test]
    fn request_targets_count_as_sent() {
        let bytes = |target: &str| target_bytes(&target.parse().unwrap());
        for target in ["/", "/path?q=1", "http://chat.lan:8080/path?q=1", "*"] {
            assert_eq!(bytes(target), target.len(), "{target}");
        }
    }

    #[test]
    fn header_buffer_is_never_under_hypers_minimum() {
        assert_eq!(header_buffer_bytes(100), 8192);
        assert_eq!(header_buffer_bytes(64 * 1024), 128 * 1024);
    }
}

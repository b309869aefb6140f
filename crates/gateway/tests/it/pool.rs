//! Kept upstream connections: reuse, and the cases where a connection must not be reused.
//! The replica here numbers its connections and says which one served each request, and
//! reports each connection it saw closed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::StreamExt as _;
use gateway::{RouteTable, Settings};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};

use crate::{expect_error, http, json, poll_until, route, start_gateway, PATIENCE};

/// A replica that numbers its connections from 1.
struct Numbered {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// The number of each connection as it closes, whichever side closed it.
    closed: mpsc::UnboundedReceiver<usize>,
    /// Closes every open connection of the replica, as a server's keep-alive timeout would.
    close_all: Arc<Notify>,
    /// Lets `/slow` answers finish.
    release: Arc<Notify>,
}

impl Numbered {
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Waits until the replica saw connection `number` close.
    async fn wait_closed(&mut self, number: usize) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match tokio::time::timeout_at(deadline, self.closed.recv()).await {
                Ok(Some(closed)) if closed == number => return,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the replica stopped"),
                Err(_) => panic!("connection {number} still open after {PATIENCE:?}"),
            }
        }
    }
}

/// Answers `{"connection": N, "body": …}`, except `/stream` (a first chunk, then nothing
/// until the connection goes) and `/slow` (a first chunk, then the rest once released).
async fn numbered() -> Numbered {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let (closed_tx, closed) = mpsc::unbounded_channel();
    let close_all = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let replica = Numbered {
        addr,
        accepted: accepted.clone(),
        closed,
        close_all: close_all.clone(),
        release: release.clone(),
    };
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let number = accepted.fetch_add(1, Ordering::SeqCst) + 1;
            let (closed_tx, close_all, release) =
                (closed_tx.clone(), close_all.clone(), release.clone());
            // Registered before the connection is served, so a close_all never misses it.
            let close = close_all.notified_owned();
            // `/flaky` on a connection that served before closes it instead of answering.
            let close_this = Arc::new(Notify::new());
            let served = Arc::new(AtomicUsize::new(0));
            tokio::spawn(async move {
                let closer = close_this.clone();
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let release = release.clone();
                    let again = served.fetch_add(1, Ordering::SeqCst) > 0;
                    let flaky = again && request.uri().path() == "/flaky";
                    let closer = closer.clone();
                    async move {
                        if flaky {
                            closer.notify_one();
                            std::future::pending::<()>().await;
                        }
                        Ok::<_, Infallible>(answer(number, request, release).await)
                    }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = connection => {}
                    _ = close => {}
                    _ = close_this.notified() => {}
                }
                let _ = closed_tx.send(number);
            });
        }
    });
    replica
}

type AnswerBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn answer(
    number: usize,
    request: Request<Incoming>,
    release: Arc<Notify>,
) -> Response<AnswerBody> {
    let path = request.uri().path().to_string();
    let first = move || Ok::<_, Infallible>(Frame::data(Bytes::from(format!("{number}:first;"))));
    match path.as_str() {
        "/stream" => {
            let chunks =
                futures::stream::once(async move { first() }).chain(futures::stream::pending());
            Response::new(BodyExt::boxed(StreamBody::new(chunks)))
        }
        "/slow" => {
            let chunks = futures::stream::once(async move { first() }).chain(
                futures::stream::once(async move {
                    release.notified().await;
                    Ok(Frame::data(Bytes::from("second")))
                }),
            );
            Response::new(BodyExt::boxed(StreamBody::new(chunks)))
        }
        _ => {
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let seen = serde_json::json!({
                "connection": number,
                "path": path,
                "body": String::from_utf8_lossy(&body),
            });
            Response::new(Full::new(Bytes::from(seen.to_string())).boxed())
        }
    }
}

#[tokio::test]
async fn sequential_requests_share_one_upstream_connection() {
    let (gateway, url) = start_gateway(Settings::default()).await;
    let replica = numbered().await;
    gateway.update(RouteTable {
        routes: vec![route("a", None, "/", &[("a-1", replica.addr)])],
    });
    let client = http();
    for i in 0..10 {
        let (status, seen) = json(client.get(format!("{url}/g{i}")).send().await.unwrap()).await;
        assert_eq!(
            (status, seen["connection"].as_u64()),
            (200, Some(1)),
            "{seen}"
        );
        let response = client
            .post(format!("{url}/p{i}"))
            .body(format!("body{i}"))
            .send()
            .await
            .unwrap();
        let (status, seen) = json(response).await;
        assert_eq!(
            (status, seen["connection"].as_u64()),
            (200, Some(1)),
            "{seen}"
        );
        assert_eq!(seen["body"], format!("body{i}"));
    }
    assert_eq!(replica.accepted(), 1);
}

#[tokio::test]
async fn a_connection_the_replica_closed_while_idle_is_not_used() {
    let (gateway, url) = start_gateway(Settings::default()).await;
    let mut replica = numbered().await;
    gateway.update(RouteTable {
        routes: vec![route("a", None, "/", &[("a-1", replica.addr)])],
    });
    let client = http();
    // Each round opens two connections: one for the GET, one for the POST.
    for kept in [1, 3, 5] {
        let (status, seen) = json(client.get(format!("{url}/x")).send().await.unwrap()).await;
        assert_eq!((status, seen["connection"].as_u64()), (200, Some(kept)));
        // The replica closes the kept connection, as its keep-alive timeout would.
        replica.close_all.notify_waiters();
        replica.wait_closed(kept as usize).await;
        // A POST is never replayed: it succeeds only if it was never written to the closed
        // connection.
        let response = client
            .post(format!("{url}/p"))
            .body("precious")
            .send()
            .await
            .unwrap();
        let (status, seen) = json(response).await;
        assert_eq!((status, seen["body"].as_str()), (200, Some("precious")));
        assert_eq!(seen["connection"].as_u64(), Some(kept + 1));
        replica.close_all.notify_waiters();
        replica.wait_closed(kept as usize + 1).await;
    }
}

#[tokio::test]
async fn a_get_that_fails_on_a_kept_connection_goes_again_on_a_new_one_and_a_post_does_not() {
    let (gateway, url) = start_gateway(Settings::default()).await;
    let mut replica = numbered().await;
    gateway.update(RouteTable {
        routes: vec![route("a", None, "/", &[("a-1", replica.addr)])],
    });
    let client = http();
    let (status, seen) = json(client.get(format!("{url}/flaky")).send().await.unwrap()).await;
    assert_eq!((status, seen["connection"].as_u64()), (200, Some(1)));
    // The kept connection is closed under the next request, as a replica's keep-alive timeout
    // might just as the request goes out. The only replica gets it again on a new connection.
    let (status, seen) = json(client.get(format!("{url}/flaky")).send().await.unwrap()).await;
    assert_eq!((status, seen["connection"].as_u64()), (200, Some(2)));
    replica.wait_closed(1).await;
    // A POST may have been acted on: it is not sent twice.
    let response = client
        .post(format!("{url}/flaky"))
        .body("once")
        .send()
        .await
        .unwrap();
    expect_error(response, 502, "upstream_failed").await;
    assert_eq!(replica.accepted(), 2);
}

#[tokio::test]
async fn a_replica_that_leaves_the_table_has_its_connections_closed() {
    let (gateway, url) = start_gateway(Settings::default()).await;
    let mut replica = numbered().await;
    let other = crate::echo("other").await;
    gateway.update(RouteTable {
        routes: vec![route("a", None, "/", &[("a-1", replica.addr)])],
    });
    let client = http();
    // Connection 1 carries a request still in flight; connection 2 is then idle.
    let mut slow = client.get(format!("{url}/slow")).send().await.unwrap();
    let first = slow.chunk().await.unwrap().unwrap();
    assert_eq!(first, "1:first;");
    let (status, seen) = json(client.get(format!("{url}/x")).send().await.unwrap()).await;
    assert_eq!((status, seen["connection"].as_u64()), (200, Some(2)));

    // The replica is drained: it leaves the table, and its idle connection is closed at once.
    gateway.update(RouteTable {
        routes: vec![route("a", None, "/", &[("other-1", other)])],
    });
    replica.wait_closed(2).await;
    assert_eq!(gateway.in_flight()["a-1"], 1);

    // The request in flight finishes, and its connection is closed rather than kept.
    replica.release.notify_waiters();
    let mut rest = Vec::new();
    while let Some(chunk) = slow.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, b"second");
    replica.wait_closed(1).await;
    poll_until(|| gateway.in_flight()["a-1"] == 0).await;
    assert_eq!(replica.accepted(), 2);
}

#[tokio::test]
async fn a_response_the_client_left_unread_does_not_leave_its_connection_for_reuse() {
    let (gateway, url) = start_gateway(Settings::default()).await;
    let mut replica = numbered().await;
    gateway.update(RouteTable {
        routes: vec![route("a", None, "/", &[("a-1", replica.addr)])],
    });
    // A raw client, to know exactly when it goes away: after the first chunk of a body that
    // never ends.
    let mut client = TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .unwrap();
    client
        .write_all(b"GET /stream HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buffer = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("1:first;") {
        let n = tokio::time::timeout(PATIENCE, client.read(&mut buffer))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buffer[..n]);
    }
    drop(client);

    // The gateway drops the half-read response and closes its connection to the replica.
    replica.wait_closed(1).await;
    poll_until(|| gateway.in_flight()["a-1"] == 0).await;
    let (status, seen) = json(http().get(format!("{url}/x")).send().await.unwrap()).await;
    assert_eq!((status, seen["connection"].as_u64()), (200, Some(2)));
}

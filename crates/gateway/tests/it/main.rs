//! The gateway against real hyper upstreams on loopback, with reqwest and raw sockets as
//! clients. Waits poll a condition with a deadline; nothing asserts speed.

mod pool;
mod websocket;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::{AccessLog, Gateway, Replica, Route, RouteTable, Settings};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PATIENCE: Duration = Duration::from_secs(20);

pub(crate) async fn start_gateway(settings: Settings) -> (Arc<Gateway>, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gateway = Gateway::new(settings);
    tokio::spawn(gateway.clone().serve(listener, std::future::pending()));
    (gateway, format!("http://{addr}"))
}

pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// An upstream that answers with JSON describing what it received.
pub(crate) async fn echo(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request: Request<Incoming>| async move {
                        let header = |n: &str| {
                            request
                                .headers()
                                .get(n)
                                .map(|v| v.to_str().unwrap().to_string())
                        };
                        let seen = serde_json::json!({
                            "name": name,
                            "path": request.uri().to_string(),
                            "x_forwarded_for": header("x-forwarded-for"),
                            "x_forwarded_proto": header("x-forwarded-proto"),
                            "x_forwarded_host": header("x-forwarded-host"),
                            "x_secret": header("x-secret"),
                            "host": header("host"),
                            "authorization": header("authorization"),
                            "upgrade": header("upgrade"),
                            "connection": header("connection"),
                        });
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        let mut seen = seen;
                        seen["body"] = String::from_utf8_lossy(&body).into_owned().into();
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(seen.to_string()))))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// An upstream that streams "first", then waits for `release` before "second".
async fn streaming(name: &'static str, release: tokio::sync::watch::Receiver<bool>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let release = release.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_request: Request<Incoming>| {
                    let release = release.clone();
                    async move {
                        let (sender, receiver) =
                            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
                        tokio::spawn(async move {
                            let _ = sender
                                .send(Ok(Frame::data(Bytes::from(format!("{name}:first;")))))
                                .await;
                            let mut release = release;
                            let _ = release.wait_for(|go| *go).await;
                            let _ = sender.send(Ok(Frame::data(Bytes::from("second")))).await;
                        });
                        let body = StreamBody::new(tokio_stream_from(receiver));
                        Ok::<_, Infallible>(Response::new(body))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn tokio_stream_from<T: Send + 'static>(
    mut receiver: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

/// An address where nothing listens: connecting is refused.
async fn dead() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// An upstream that reads a request and closes the connection without a byte of answer. It
/// reads first so that the request surely reached it: a connection closed before the request
/// was written gives the request back to the gateway, which may then send it anywhere.
async fn resetting() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                let _ = stream.read(&mut buffer).await;
            });
        }
    });
    addr
}

pub(crate) fn route(
    service: &str,
    host: Option<&str>,
    prefix: &str,
    replicas: &[(&str, SocketAddr)],
) -> Route {
    Route {
        service: service.to_string(),
        host: host.map(str::to_string),
        path_prefix: prefix.to_string(),
        replicas: replicas
            .iter()
            .map(|(run, addr)| Replica {
                run: run.to_string(),
                addr: *addr,
            })
            .collect(),
        hold: Duration::from_secs(5),
        max_body: 1 << 20,
        api_keys: vec![],
    }
}

pub(crate) async fn json(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let value: serde_json::Value = response.json().await.unwrap();
    if status >= 400 {
        assert_eq!(content_type.as_deref(), Some("application/json"));
    }
    (status, value)
}

/// Checks that `response` is the gateway's JSON error with `status` and `code`; its message.
async fn expect_error(response: reqwest::Response, status: u16, code: &str) -> String {
    let (got, error) = json(response).await;
    assert_eq!(
        (got, error["code"].as_str()),
        (status, Some(code)),
        "{error}"
    );
    error["message"].as_str().unwrap_or_default().to_string()
}

pub(crate) async fn poll_until(mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "condition not met within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn routes_by_host_and_longest_prefix_and_forwards_the_path_unchanged() {
    let (gateway, url) = start_gateway(Settings::default()).await;
    let any = echo("any").await;
    let chat = echo("chat").await;
    gateway.update(RouteTable {
        routes: vec![
            route("any", None, "/", &[("any-1", any)]),
            route("chat", Some("chat.lan"), "/web", &[("chat-1", chat)]),
        ],
    });
    let client = http();
    let ask = |host: &'static str, path: &'static str| {
        client
            .get(format!("{url}{path}"))
            .header("host", host)
            .send()
    };
    let (status, seen) = json(ask("Chat.LAN:8080", "/web/x?q=1").await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(seen["name"], "chat");
    assert_eq!(seen["path"], "/web/x?q=1", "no prefix stripping");
    assert_eq!(seen["x_forwarded_for"], "127.0.0.1");
    assert_eq!(seen["x_forwarded_proto"], "http");
    assert_eq!(seen["x_forwarded_host"], "Chat.LAN:8080");
    assert_eq!(
        json(ask("chat.lan", "/webx").await.unwrap()).await.1["name"],
        "any"
    );
    assert_eq!(
        json(ask("other.lan", "/web").await.unwrap()).await.1["name"],
        "any"
    );

    gateway.update(RouteTable {
        routes: vec![route("chat", Some("chat.lan"), "/", &[("chat-1", chat)])],
    });
    let (status, error) = json(ask("other.lan:8080", "/p").await.unwrap()).await;
    assert_eq!(status, 404);
    assert_eq!(error["code"], "no_route");
    assert_eq!(error["message"], "no route matches other.lan/p");
}

#[tokio::test]
async fn hop_by_hop_headers_do_not_reach_the_replica() {
    let (gateway, url) = start_gateway(Settings::default()).await;
    let addr = echo("a").await;
    gateway.update(RouteTable {
        routes: vec![route("a", None, "/", &[("a-1", addr)])],
    });
    let response = http()
        .post(format!("{url}/x"))
        .header("connection", "x-secret")
        .header("x-secret", "1")
        .header("x-forwarded-for", "192.0.2.1")
        .body("payload")
        .send()
        .await
        .unwrap();
    let (status, seen) = json(response).await;
    assert_eq!(status, 200);
    assert_eq!(seen["x_secret"], serde_json::Value::Null);
    assert_eq!(seen["x_forwarded_for"], "192.0.2.1, 127.0.0.1");
    assert_eq!(seen["body"], "payload");
}

#[tokio::test]
async fn responses_stream_chunk_by_chunk_and_load_goes_to_the_least_busy_replica() {
    let (gateway, url) = start_gateway(Settings::default()).await;
    let (release, released) = tokio::sync::watch::channel(false);
    let a = streaming("a", released.clone()).await;
    let b = streaming("b", released).await;
    gateway.update(RouteTable {
        routes: vec![route("s", None, "/", &[("a-1", a), ("b-1", b)])],
    });
    let client = http();

    let mut first = client.get(format!("{url}/sse")).send().await.unwrap();
    let chunk = first
        .chunk()
        .await
        .unwrap()
        .expect("first chunk before the release");
    let first_name = String::from_utf8_lossy(&chunk)
        .split(':')
        .next()
        .unwrap()
        .to_string();
    let busy = if first_name == "a" { "a-1" } else { "b-1" };
    assert_eq!(gateway.in_flight()[busy], 1);

    // The busy replica still has a request open, so the next one goes to the other one.
    for _ in 0..3 {
        let mut second = client.get(format!("{url}/sse")).send().await.unwrap();
        let chunk = second.chunk().await.unwrap().unwrap();
        assert!(
            !String::from_utf8_lossy(&chunk).starts_with(&first_name),
            "went to the busy replica"
        );
        drop(second);
        // The gateway serves connections on threads of its own: it may see this client go
        // away only after the next request arrives, and then both replicas look as busy.
        poll_until(|| gateway.in_flight().values().sum::<usize>() == 1).await;
    }

    release.send(true).unwrap();
    let mut rest = Vec::new();
    while let Some(chunk) = first.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, b"second");
    drop(first);
    poll_until(|| gateway.in_flight().values().all(|count| *count == 0)).await;
}

#[tokio::test]
async fn request_bodies_stream_to_the_replica() {
    let (gateway, url) = start_gateway(Settings::default()).await;
    let addr = echo("a").await;
    gateway.update(RouteTable {
        routes: vec![route("a", None, "/", &[("a-1", addr)])],
    });
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        vec![Ok(Bytes::from("one,")), Ok(Bytes::from("two"))];
    let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    let response = http()
        .post(format!("{url}/up"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(json(response).await.1["body"], "one,two");
}

#[tokio::test]
async fn held_request_is_sent_when_an_update_brings_a_replica() {
    let settings = Settings {
        max_held_requests: 1,
        ..Settings::default()
    };
    let (gateway, url) = start_gateway(settings).await;
    let mut empty = route("chat", None, "/", &[]);
    empty.hold = Duration::from_secs(60);
    gateway.update(RouteTable {
        routes: vec![empty.clone()],
    });
    let client = http();
    let held = tokio::spawn(client.get(format!("{url}/held")).send());
    // The gateway serves connections on threads of its own, so the probe below could otherwise
    // arrive first and be the one held.
    poll_until(|| gateway.held() == 1).await;

    // With room for one held request, a second is refused at once exactly while the first waits.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, error) = json(client.get(format!("{url}/probe")).send().await.unwrap()).await;
        assert_eq!(status, 503);
        if error["code"] == "hold_queue_full" {
            break;
        }
        assert_eq!(error["code"], "no_ready_replica");
        assert!(Instant::now() < deadline);
    }

    let addr = echo("late").await;
    gateway.update(RouteTable {
        routes: vec![route("chat", None, "/", &[("late-1", addr)])],
    });
    let (status, seen) = json(held.await.unwrap().unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(seen["path"], "/held");
}

#[tokio::test]
async fn held_request_times_out_with_503_after_the_hold() {
    let (gateway, url) = start_gateway(Settings::default()).await;
    let mut empty = route("chat", None, "/", &[]);
    empty.hold = Duration::from_millis(300);
    gateway.update(RouteTable {
        routes: vec![empty],
    });
    let started = Instant::now();
    let response = http().get(format!("{url}/x")).send().await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "answered before the hold ended"
    );
    assert!(response.headers().get("retry-after").is_some());
    let (status, error) = json(response).await;
    assert_eq!(status, 503);
    assert_eq!(error["code"], "no_ready_replica");
    assert!(error["message"].as_str().unwrap().contains("chat"));
}

#[tokio::test]
async fn unreachable_replica_is_skipped_for_every_method() {
    let (gateway, url) = start_gateway(Settings::default()).await;
    let live = echo("live").await;
    let dead = dead().await;
    gateway.update(RouteTable {
        routes: vec![route(
            "chat",
            None,
            "/",
            &[("dead-1", dead), ("live-1", live)],
        )],
    });
    let client = http();
    for i in 0..10 {
        let (status, seen) = json(client.get(format!("{url}/g{i}")).send().await.unwrap()).await;
        assert_eq!((status, seen["name"].as_str()), (200, Some("live")));
        let response = client
            .post(format!("{url}/p{i}"))
            .body(format!("body{i}"))
            .send()
            .await
            .unwrap();
        let (status, seen) = json(response).await;
        assert_eq!(
            (status, seen["body"].as_str()),
            (200, Some(format!("body{i}").as_str()))
        );
    }

    gateway.update(RouteTable {
        routes: vec![route("chat", None, "/", &[("dead-1", dead)])],
    });
    let (status, error) = json(client.get(format!("{url}/x")).send().await.unwrap()).await;
    assert_eq!(status, 502);
    assert_eq!(error["code"], "upstream_unreachable");
    assert!(error["message"].as_str().unwrap().contains("chat"));
}

#[tokio::test]
async fn idempotent_requests_are_replayed_after_a_reset_and_posts_are_not() {
    let (gateway, url) = start_gateway(Settings::default()).await;
    let live = echo("live").await;
    let reset = resetting().await;
    gateway.update(RouteTable {
        routes: vec![route(
            "chat",
            None,
            "/",
            &[("reset-1", reset), ("live-1", live)],
        )],
    });
    let client = http();
    let mut post_failures = 0;
    for i in 0..10 {
        let (status, _) = json(client.get(format!("{url}/g{i}")).send().await.unwrap()).await;
        assert_eq!(status, 200);
        let (status, body) = json(
            client
                .post(format!("{url}/p{i}"))
                .body("x")
                .send()
                .await
                .unwrap(),
        )
        .await;
        if status != 200 {
            assert_eq!(
                (status, body["code"].as_str()),
                (502, Some("upstream_failed"))
            );
            post_failures += 1;
        }
    }
    assert!(
        post_failures > 0,
        "a POST to the resetting replica must not be replayed"
    );
}

/// A replica that answers every request with `Content-Length: length`, then only "hello"
/// before it closes the connection (a process killed mid-answer).
async fn cutting_replica(length: u64) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buffer = [0u8; 4096];
            let _ = stream.read(&mut buffer).await;
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\nhello");
            let _ = stream.write_all(head.as_bytes()).await;
            drop(stream);
        }
    });
    addr
}

#[tokio::test]
async fn a_small_answer_cut_off_is_replayed_on_another_replica() {
    let (gateway, url) = start_gateway(Settings::default()).await;
    let cut = cutting_replica(100).await;
    let fine = echo("fine").await;
    gateway.update(RouteTable {
        routes: vec![route("web", None, "/", &[("cut-1", cut), ("fine-1", fine)])],
    });
    let client = http();
    // Whichever replica a request goes to first, the client gets a whole answer.
    for i in 0..6 {
        let (status, seen) = json(client.get(format!("{url}/g{i}")).send().await.unwrap()).await;
        assert_eq!((status, seen["name"].as_str()), (200, Some("fine")));
    }
    poll_until(|| gateway.in_flight().values().all(|count| *count == 0)).await;
}

#[tokio::test]
async fn upstream_closing_mid_response_cuts_the_client() {
    // Larger than what the gateway reads whole before answering: it streams, so it is cut.
    let addr = cutting_replica(1 << 20).await;
    let (gateway, url) = start_gateway(Settings::default()).await;
    let fine = echo("fine").await;
    gateway.update(RouteTable {
        routes: vec![
            route("cut", None, "/", &[("cut-1", addr)]),
            route("fine", None, "/fine", &[("fine-1", fine)]),
        ],
    });
    let client = http();
    for _ in 0..3 {
        let response = client.get(format!("{url}/x")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            response.bytes().await.is_err(),
            "a cut response must not look complete"
        );
        let (status, seen) = json(client.get(format!("{url}/fine")).send().await.unwrap()).await;
        assert_eq!((status, seen["name"].as_str()), (200, Some("fine")));
    }
    poll_until(|| gateway.in_flight().values().all(|count| *count == 0)).await;
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let settings = Settings {
        max_header_bytes: 4096,
        ..Settings::default()
    };
    let (_gateway, url) = start_gateway(settings).await;
    let client = http();
    let response = client
        .get(format!("{url}/"))
        .header("x-big", "a".repeat(5000))
        .send()
        .await
        .unwrap();
    let (status, error) = json(response).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (431, Some("headers_too_large"))
    );
    // Far beyond the limit, hyper refuses while reading; still a 431.
    let response = client
        .get(format!("{url}/"))
        .header("x-big", "a".repeat(100_000))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 431);
}

pub(crate) async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout(PATIENCE, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return all,
            Ok(Ok(n)) => all.extend_from_slice(&buffer[..n]),
            Err(_) => panic!("connection still open after {PATIENCE:?}"),
        }
    }
}

#[tokio::test]
async fn malformed_requests_get_400_and_others_are_still_served() {
    let (gateway, url) = start_gateway(Settings::default()).await;
    gateway.update(RouteTable {
        routes: vec![route("a", None, "/", &[("a-1", echo("a").await)])],
    });
    let malformed: [&[u8]; 5] = [
        b"NOT A REQUEST\x01\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: h\r\nno colon here\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: h\r\nContent-Length: ten\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
    ];
    for request in malformed {
        let mut stream = TcpStream::connect(url.trim_start_matches("http://"))
            .await
            .unwrap();
        stream.write_all(request).await.unwrap();
        let answer = read_to_close(&mut stream).await;
        assert!(
            answer.starts_with(b"HTTP/1.1 400"),
            "{:?} got {}",
            String::from_utf8_lossy(request),
            String::from_utf8_lossy(&answer)
        );
    }
    let (status, _) = json(http().get(format!("{url}/ok")).send().await.unwrap()).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn slow_header_is_disconnected_while_others_are_served() {
    let settings = Settings {
        header_read_timeout: Duration::from_millis(500),
        ..Settings::default()
    };
    let (_gateway, url) = start_gateway(settings).await;
    let mut slow = TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .unwrap();
    slow.write_all(b"GET /half HT").await.unwrap();
    let (status, error) = json(http().get(format!("{url}/other")).send().await.unwrap()).await;
    assert_eq!((status, error["code"].as_str()), (404, Some("no_route")));
    read_to_close(&mut slow).await;

    // A client that keeps sending a byte now and then never finishes its header either: the
    // timeout is for the whole header, not for silence.
    let trickle = TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .unwrap();
    let (mut reader, mut writer) = trickle.into_split();
    let trickling = tokio::spawn(async move {
        writer.write_all(b"GET /slow HTTP/1.1\r\n").await.unwrap();
        let mut sent = 0;
        while writer.write_all(b"x").await.is_ok() {
            sent += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sent
    });
    let mut buffer = [0u8; 1024];
    loop {
        match tokio::time::timeout(PATIENCE, reader.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the trickling client was not disconnected"),
        }
    }
    let (status, _) = json(http().get(format!("{url}/other")).send().await.unwrap()).await;
    assert_eq!(status, 404, "others are still served");
    let sent = trickling.await.unwrap();
    assert!(sent > 0);
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_and_others_keep_working() {
    let settings = Settings {
        max_connections: 2,
        ..Settings::default()
    };
    let (_gateway, url) = start_gateway(settings).await;
    let addr = url.trim_start_matches("http://").to_string();
    let request = b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n";
    let mut established = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        read_response_head(&mut stream).await;
        established.push(stream);
    }
    let mut extra = TcpStream::connect(&addr).await.unwrap();
    let _ = extra.write_all(request).await;
    let answer = read_to_close(&mut extra).await;
    assert!(answer.is_empty(), "the extra connection was served");
    for stream in &mut established {
        stream.write_all(request).await.unwrap();
        read_response_head(stream).await;
    }
}

/// Reads one whole 404 answer (the JSON body has a Content-Length) from a kept-alive stream.
async fn read_response_head(stream: &mut TcpStream) {
    let mut all = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = Instant::now() + PATIENCE;
    while !(all.starts_with(b"HTTP/1.1 404") && all.ends_with(b"}")) {
        assert!(Instant::now() < deadline);
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut buffer))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&all)
        );
        all.extend_from_slice(&buffer[..n]);
    }
}

#[tokio::test]
async fn a_request_whose_replicas_all_refuse_waits_for_a_new_one() {
    let (gateway, url) = start_gateway(Settings::default()).await;
    let dead = dead().await;
    // The table still lists a replica that was just killed; its replacement is not there yet.
    gateway.update(RouteTable {
        routes: vec![route("chat", None, "/", &[("dead-1", dead)])],
    });
    let waiting = tokio::spawn({
        let client = http();
        let url = url.clone();
        async move { client.get(format!("{url}/x")).send().await.unwrap() }
    });
    // Once the request has found the dead replica and is held, the replacement arrives.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while gateway.held() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the request was never held"
        );
        tokio::task::yield_now().await;
    }
    let live = echo("live").await;
    gateway.update(RouteTable {
        routes: vec![route("chat", None, "/", &[("live-2", live)])],
    });
    let (status, seen) = json(waiting.await.unwrap()).await;
    assert_eq!((status, seen["name"].as_str()), (200, Some("live")));
}

#[tokio::test]
async fn a_declared_body_over_the_routes_limit_gets_413_before_any_replica_is_asked() {
    let (gateway, url) = start_gateway(Settings::default()).await;
    let mut limited = route("small", None, "/", &[("dead-1", dead().await)]);
    limited.max_body = 16;
    gateway.update(RouteTable {
        routes: vec![limited],
    });
    let response = http()
        .post(format!("{url}/up"))
        .body("x".repeat(17))
        .send()
        .await
        .unwrap();
    assert_eq!(
        expect_error(response, 413, "body_too_large").await,
        "the request body is 17 bytes, over service small's limit of 16 bytes"
    );
}

fn keyed(mut route: Route, keys: &[&str]) -> Route {
    route.api_keys = keys.iter().map(|key| gateway::key_digest(key)).collect();
    route
}

#[tokio::test]
async fn a_route_with_api_keys_needs_one_and_does_not_pass_it_on() {
    let (gateway, url) = start_gateway(Settings::default()).await;
    let secret = echo("secret").await;
    let open = echo("open").await;
    gateway.update(RouteTable {
        routes: vec![
            keyed(
                route("secret", None, "/secret", &[("secret-1", secret)]),
                &["key-one", "key-two"],
            ),
            route("open", None, "/", &[("open-1", open)]),
        ],
    });
    let client = http();
    let ask = |authorization: Option<&str>| {
        let mut request = client.get(format!("{url}/secret/x"));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        request.send()
    };

    let missing = ask(None).await.unwrap();
    assert_eq!(missing.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        expect_error(missing, 401, "unauthorized").await,
        "service secret needs an API key: send `Authorization: Bearer KEY`"
    );
    for wrong in ["Bearer key-three", "Basic a2V5LW9uZQ==", "key-one"] {
        let response = ask(Some(wrong)).await.unwrap();
        assert_eq!(response.headers()["www-authenticate"], "Bearer", "{wrong}");
        expect_error(response, 401, "unauthorized").await;
    }

    for right in ["Bearer key-one", "bearer key-two"] {
        let (status, seen) = json(ask(Some(right)).await.unwrap()).await;
        assert_eq!((status, seen["name"].as_str()), (200, Some("secret")));
        assert_eq!(
            seen["authorization"],
            serde_json::Value::Null,
            "key forwarded"
        );
    }
    // A route without keys passes the header on: it is the replica's own business.
    let (status, seen) = json(
        client
            .get(format!("{url}/other"))
            .header("authorization", "Bearer theirs")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, seen["name"].as_str()), (200, Some("open")));
    assert_eq!(seen["authorization"], "Bearer theirs");

    let report = gateway.report();
    let secret = report
        .routes
        .iter()
        .find(|r| r.service == "secret")
        .unwrap();
    assert_eq!(secret.traffic.errors["unauthorized"], 4);
    assert_eq!(secret.traffic.status_classes[1], 2);
}

#[tokio::test]
async fn routes_count_answers_bytes_and_latency_across_table_swaps() {
    let (gateway, url) = start_gateway(Settings::default()).await;
    let a = echo("a").await;
    let mut empty = route("b", None, "/b", &[]);
    empty.hold = Duration::ZERO;
    gateway.update(RouteTable {
        routes: vec![route("a", None, "/a", &[("a-1", a)]), empty.clone()],
    });
    let client = http();
    let mut body_bytes = 0;
    for i in 0..5 {
        let response = client
            .post(format!("{url}/a/{i}"))
            .body("12345")
            .send()
            .await
            .unwrap();
        body_bytes += response.bytes().await.unwrap().len() as u64;
    }
    let (status, _) = json(client.get(format!("{url}/b")).send().await.unwrap()).await;
    assert_eq!(status, 503);
    let (status, _) = json(client.get(format!("{url}/nowhere")).send().await.unwrap()).await;
    assert_eq!(status, 404);

    // The same routes in a new table (a replica more) keep their counters.
    gateway.update(RouteTable {
        routes: vec![route("a", None, "/a", &[("a-1", a), ("a-2", a)]), empty],
    });
    poll_until(|| {
        let report = gateway.report();
        report.routes.iter().all(|r| r.traffic.in_flight == 0)
            && report
                .routes
                .iter()
                .map(|r| r.traffic.requests)
                .sum::<u64>()
                == 6
    })
    .await;
    let report = gateway.report();
    assert_eq!(report.routes.len(), 2);
    let a = &report.routes[0].traffic;
    assert_eq!(report.routes[0].service, "a");
    assert!(report.routes[0].active);
    assert_eq!(a.requests, 5);
    assert_eq!(a.status_classes, [0, 5, 0, 0, 0]);
    assert!(a.errors.is_empty());
    assert_eq!(a.bytes_in, 25);
    assert_eq!(a.bytes_out, body_bytes);
    assert_eq!(a.latency.count, 5);
    assert_eq!(a.latency.buckets.last().unwrap().1, 5);
    let (p50, p99) = (a.latency.p50.unwrap(), a.latency.p99.unwrap());
    assert!(p50 <= p99);
    let b = &report.routes[1].traffic;
    assert_eq!(b.status_classes, [0, 0, 0, 0, 1]);
    assert_eq!(b.errors["no_ready_replica"], 1);
    assert_eq!(report.unrouted.errors["no_route"], 1);
    assert_eq!(report.unrouted.status_classes[3], 1);
}

#[tokio::test]
async fn every_request_leaves_an_access_log_record_and_a_full_log_drops_and_counts() {
    let (access_log, mut records) = AccessLog::channel(64);
    let settings = Settings {
        access_log: Some(access_log),
        ..Settings::default()
    };
    let (gateway, url) = start_gateway(settings).await;
    gateway.update(RouteTable {
        routes: vec![route("a", None, "/a", &[("a-1", echo("a").await)])],
    });
    let client = http();
    let body = client
        .get(format!("{url}/a/x?secret=1"))
        .header("host", "Web.LAN")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let record = tokio::time::timeout(PATIENCE, records.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.method, "GET");
    assert_eq!(record.host, "Web.LAN");
    assert_eq!(record.path, "/a/x", "the query string stays out of the log");
    assert_eq!(record.status, 200);
    assert_eq!(record.bytes_out, body.len() as u64);
    assert_eq!(record.service.as_deref(), Some("a"));
    assert_eq!(record.run.as_deref(), Some("a-1"));
    assert_eq!(record.error, None);
    assert!(record.client.ip().is_loopback());

    client.get(format!("{url}/none")).send().await.unwrap();
    let record = tokio::time::timeout(PATIENCE, records.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((record.status, record.error), (404, Some("no_route")));
    assert_eq!((record.service, record.run), (None, None));

    // Nobody reads the channel any more: requests still get answers, records are counted.
    let (small, _unread) = AccessLog::channel(1);
    let settings = Settings {
        access_log: Some(small),
        ..Settings::default()
    };
    let (gateway, url) = start_gateway(settings).await;
    for _ in 0..3 {
        let response = client.get(format!("{url}/none")).send().await.unwrap();
        assert_eq!(response.status(), 404);
        response.bytes().await.unwrap();
    }
    poll_until(|| gateway.report().access_log_dropped == 2).await;
}

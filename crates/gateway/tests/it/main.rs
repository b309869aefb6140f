//! The gateway against real hyper upstreams on loopback, with reqwest and raw sockets as
//! clients. Waits poll a condition with a deadline; nothing asserts speed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::{Gateway, Replica, Route, RouteTable, Settings};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PATIENCE: Duration = Duration::from_secs(20);

async fn start_gateway(settings: Settings) -> (Arc<Gateway>, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gateway = Gateway::new(settings);
    tokio::spawn(gateway.clone().serve(listener, std::future::pending()));
    (gateway, format!("http://{addr}"))
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// An upstream that answers with JSON describing what it received.
async fn echo(name: &'static str) -> SocketAddr {
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

/// An upstream that accepts connections and closes them without a byte.
async fn resetting() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            drop(stream);
        }
    });
    addr
}

fn route(
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
    }
}

async fn json(response: reqwest::Response) -> (u16, serde_json::Value) {
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

async fn poll_until(mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "condition not met within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
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

#[tokio::test]
async fn upstream_closing_mid_response_cuts_the_client() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buffer = [0u8; 4096];
            let _ = stream.read(&mut buffer).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello")
                .await;
            drop(stream);
        }
    });
    let (gateway, url) = start_gateway(Settings::default()).await;
    gateway.update(RouteTable {
        routes: vec![route("cut", None, "/", &[("cut-1", addr)])],
    });
    let response = http().get(format!("{url}/x")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.bytes().await.is_err(),
        "a cut response must not look complete"
    );
}

#[tokio::test]
async fn websocket_upgrade_is_answered_501() {
    let (gateway, url) = start_gateway(Settings::default()).await;
    gateway.update(RouteTable {
        routes: vec![route("a", None, "/", &[("a-1", echo("a").await)])],
    });
    let response = http()
        .get(format!("{url}/ws"))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .send()
        .await
        .unwrap();
    let (status, error) = json(response).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (501, Some("upgrade_unsupported"))
    );
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

async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
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
async fn malformed_request_gets_400() {
    let (_gateway, url) = start_gateway(Settings::default()).await;
    let mut stream = TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .unwrap();
    stream
        .write_all(b"NOT A REQUEST\x01\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut stream).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
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

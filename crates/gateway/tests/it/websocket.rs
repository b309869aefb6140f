//! WebSocket through the gateway: a real handshake and frames (RFC 6455) over raw TCP on both
//! sides, an echo replica written here, and the tunnel's life as a request in flight.

use std::net::SocketAddr;

use base64::Engine;
use gateway::{RouteTable, Settings};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::{echo, http, json, poll_until, route, start_gateway, PATIENCE};

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// The example key of RFC 6455 1.3 and the answer it must get.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;

fn accept_for(key: &str) -> String {
    let digest = Sha1::digest(format!("{key}{GUID}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// One frame; clients mask theirs, servers do not.
fn frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(mask_bit | 126);
            out.extend((n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend((n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend(key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend(payload),
    }
    out
}

/// The next frame's opcode and (unmasked) payload; `None` at the end of the stream.
async fn read_frame(stream: &mut (impl AsyncRead + Unpin)) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await.ok()?;
    let opcode = head[0] & 0x0f;
    let masked = head[1] & 0x80 != 0;
    let length = match head[1] & 0x7f {
        126 => {
            let mut bytes = [0u8; 2];
            stream.read_exact(&mut bytes).await.ok()?;
            u64::from(u16::from_be_bytes(bytes))
        }
        127 => {
            let mut bytes = [0u8; 8];
            stream.read_exact(&mut bytes).await.ok()?;
            u64::from_be_bytes(bytes)
        }
        n => u64::from(n),
    };
    let mut key = [0u8; 4];
    if masked {
        stream.read_exact(&mut key).await.ok()?;
    }
    let mut payload = vec![0u8; length as usize];
    stream.read_exact(&mut payload).await.ok()?;
    if masked {
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte ^= key[i % 4];
        }
    }
    Some((opcode, payload))
}

/// Reads an HTTP head up to the blank line, byte by byte so that no frame byte is taken.
async fn read_head(stream: &mut (impl AsyncRead + Unpin)) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = tokio::time::timeout(PATIENCE, stream.read_u8())
            .await
            .expect("a head in time")
            .expect("the head before the connection closed");
        head.push(byte);
    }
    String::from_utf8(head).unwrap()
}

fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// A WebSocket echo replica: answers the handshake, echoes text frames with the request path
/// in front (to show which request it got), answers a close with a close and hangs up.
async fn websocket_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let head = read_head(&mut stream).await;
                let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                let upgrade = header(&head, "upgrade").unwrap_or("");
                let Some(key) = header(&head, "sec-websocket-key")
                    .filter(|_| upgrade.eq_ignore_ascii_case("websocket"))
                else {
                    let _ = stream
                        .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    return;
                };
                let answer = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                    accept_for(key)
                );
                stream.write_all(answer.as_bytes()).await.unwrap();
                while let Some((opcode, payload)) = read_frame(&mut stream).await {
                    if opcode == CLOSE {
                        let _ = stream.write_all(&frame(CLOSE, &payload, None)).await;
                        return;
                    }
                    let mut echoed = format!("{path}:").into_bytes();
                    echoed.extend(payload);
                    if stream
                        .write_all(&frame(opcode, &echoed, None))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Opens a WebSocket through the gateway and returns the stream and the 101 head.
async fn open(gateway_url: &str, path: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(gateway_url.trim_start_matches("http://"))
        .await
        .unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: chat.lan\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut stream).await;
    (stream, head)
}

#[test]
fn the_test_handshake_matches_the_rfc_example() {
    assert_eq!(accept_for(KEY), ACCEPT);
}

#[tokio::test]
async fn a_websocket_passes_through_and_counts_as_in_flight_while_open() {
    let (gateway, url) = start_gateway(Settings::default()).await;
    let replica = websocket_echo().await;
    gateway.update(RouteTable {
        routes: vec![route("chat", None, "/", &[("chat-1", replica)])],
    });
    let (mut stream, head) = open(&url, "/ws?room=1").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(header(&head, "sec-websocket-accept"), Some(ACCEPT));
    assert!(header(&head, "upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")));
    assert!(header(&head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("upgrade")));

    for (i, message) in ["hello", &"long ".repeat(100), "last"].iter().enumerate() {
        let mask = [1, 2, 3, i as u8];
        stream
            .write_all(&frame(TEXT, message.as_bytes(), Some(mask)))
            .await
            .unwrap();
        let (opcode, payload) = tokio::time::timeout(PATIENCE, read_frame(&mut stream))
            .await
            .unwrap()
            .expect("an echo");
        assert_eq!(opcode, TEXT);
        assert_eq!(
            String::from_utf8(payload).unwrap(),
            format!("/ws?room=1:{message}")
        );
    }
    // An open WebSocket is a request in flight on its replica: draining waits for it.
    assert_eq!(gateway.in_flight()["chat-1"], 1);
    assert_eq!(gateway.report().routes[0].traffic.in_flight, 1);

    stream
        .write_all(&frame(CLOSE, &[0x03, 0xe8], Some([9, 9, 9, 9])))
        .await
        .unwrap();
    let (opcode, payload) = read_frame(&mut stream).await.expect("a close answer");
    assert_eq!((opcode, payload), (CLOSE, vec![0x03, 0xe8]));
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest))
        .await
        .expect("the gateway closes the client side after the replica hung up")
        .unwrap();
    assert!(rest.is_empty());
    drop(stream);

    poll_until(|| gateway.in_flight().get("chat-1") == Some(&0)).await;
    poll_until(|| gateway.report().routes[0].traffic.requests == 1).await;
    let traffic = gateway.report().routes[0].traffic.clone();
    assert_eq!(traffic.status_classes[0], 1, "one 101");
    assert_eq!(traffic.in_flight, 0);
    assert!(traffic.bytes_out > 0 && traffic.bytes_in > 0);
}

#[tokio::test]
async fn a_replica_that_goes_away_closes_the_websocket_and_the_gateway_serves_on() {
    let (gateway, url) = start_gateway(Settings::default()).await;
    // A replica that accepts the upgrade and hangs up right after the first message.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let replica = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let head = read_head(&mut stream).await;
        let answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            accept_for(header(&head, "sec-websocket-key").unwrap())
        );
        stream.write_all(answer.as_bytes()).await.unwrap();
        read_frame(&mut stream).await;
    });
    let plain = echo("plain").await;
    gateway.update(RouteTable {
        routes: vec![
            route("chat", None, "/", &[("chat-1", replica)]),
            route("plain", None, "/plain", &[("plain-1", plain)]),
        ],
    });
    let (mut stream, head) = open(&url, "/ws").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream
        .write_all(&frame(TEXT, b"bye", Some([1, 1, 1, 1])))
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the client side was left open");
    poll_until(|| gateway.in_flight().get("chat-1") == Some(&0)).await;
    let (status, _) = json(http().get(format!("{url}/plain")).send().await.unwrap()).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn an_upgrade_the_replica_declines_is_answered_as_the_replica_answered() {
    let (gateway, url) = start_gateway(Settings::default()).await;
    gateway.update(RouteTable {
        routes: vec![route("a", None, "/", &[("a-1", echo("a").await)])],
    });
    // The plain HTTP replica sees the upgrade headers (they are kept for an upgrade) and
    // answers 200 as it would to anything.
    let response = http()
        .get(format!("{url}/ws"))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .send()
        .await
        .unwrap();
    let (status, seen) = json(response).await;
    assert_eq!(status, 200);
    assert_eq!(seen["upgrade"], "websocket");
    assert_eq!(seen["connection"], "upgrade");

    // An h2c offer is dropped: the replica gets plain HTTP/1.1.
    let response = http()
        .get(format!("{url}/h2c"))
        .header("connection", "upgrade, http2-settings")
        .header("upgrade", "h2c")
        .header("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA")
        .send()
        .await
        .unwrap();
    let (status, seen) = json(response).await;
    assert_eq!(status, 200);
    assert_eq!(seen["upgrade"], serde_json::Value::Null);
    assert_eq!(seen["connection"], serde_json::Value::Null);
}

//! Protocol upgrades (WebSocket and any other HTTP/1.1 `Upgrade`): once the replica answers
//! 101, the client gets the 101 too and the two connections become one tunnel, bytes copied
//! both ways. The tunnel ends when the replica closes (or fails), or when the client fails;
//! a client that only closes its sending side still gets what the replica sends until the
//! replica closes too. The tunnel holds the replica's in-flight count for its whole life, so
//! that draining a replica waits for its open WebSockets (up to the drain timeout, after
//! which the replica is stopped and the tunnel closes with it).

use std::sync::atomic::{AtomicU64, Ordering};

use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, UPGRADE};
use hyper::upgrade::OnUpgrade;
use hyper::Response;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::balance::InFlight;
use crate::exchange::Exchange;
use crate::proxy::{strip_hop_by_hop, Forwarded};
use crate::ConnectionHold;

/// Both halves of an upgraded exchange, waiting for hyper to hand over the connections.
pub(crate) struct Tunnel {
    client: OnUpgrade,
    upstream: OnUpgrade,
    in_flight: InFlight,
}

/// The client's copy of the replica's 101, with the upgrade's own hop-by-hop headers put back
/// (they are the point of this answer), and the tunnel to run once it is sent.
pub(crate) fn switch(
    mut response: Response<Incoming>,
    client: OnUpgrade,
    in_flight: InFlight,
) -> Forwarded {
    let upstream = hyper::upgrade::on(&mut response);
    let (mut parts, _) = response.into_parts();
    let protocol = parts.headers.get(UPGRADE).cloned();
    strip_hop_by_hop(&mut parts.headers);
    parts
        .headers
        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(protocol) = protocol {
        parts.headers.insert(UPGRADE, protocol);
    }
    let body = Empty::new().map_err(|never| match never {}).boxed_unsync();
    Forwarded::Upgraded {
        response: Response::from_parts(parts, body),
        tunnel: Tunnel {
            client,
            upstream,
            in_flight,
        },
    }
}

impl Tunnel {
    /// Copies bytes both ways until the tunnel ends (see the module's comment); the exchange
    /// (access log, counters) finishes when this returns, and the client connection's hold is
    /// given back.
    pub async fn run(self, mut exchange: Exchange, connection: Option<ConnectionHold>) {
        let Tunnel {
            client,
            upstream,
            in_flight,
        } = self;
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(both) => both,
            Err(error) => {
                tracing::debug!(%error, "an upgrade did not complete");
                return;
            }
        };
        let (mut client_read, mut client_write) = tokio::io::split(TokioIo::new(client));
        let (mut upstream_read, mut upstream_write) = tokio::io::split(TokioIo::new(upstream));
        let from_upstream = AtomicU64::new(0);
        let to_client = pump(&mut upstream_read, &mut client_write, &from_upstream);
        let from_client = exchange.bytes_in().clone();
        let to_upstream = pump(&mut client_read, &mut upstream_write, &from_client);
        tokio::pin!(to_client, to_upstream);
        tokio::select! {
            ended = &mut to_client => {
                if let Err(error) = ended {
                    tracing::debug!(%error, "an upgraded connection ended on the replica's side");
                }
            }
            ended = &mut to_upstream => match ended {
                // The client is done sending; what the replica still says goes on to it.
                Ok(()) => {
                    if let Err(error) = to_client.await {
                        tracing::debug!(%error, "an upgraded connection ended with an error");
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, "an upgraded connection ended on the client's side");
                }
            },
        }
        exchange.bytes_out += from_upstream.load(Ordering::Relaxed);
        drop(in_flight);
        drop(connection);
    }
}

/// Copies `from` into `to`, counting bytes, until `from` ends; then ends `to`'s sending side.
async fn pump(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    counted: &AtomicU64,
) -> std::io::Result<()> {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = from.read(&mut buffer).await?;
        if read == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buffer[..read]).await?;
        to.flush().await?;
        counted.fetch_add(read as u64, Ordering::Relaxed);
    }
}

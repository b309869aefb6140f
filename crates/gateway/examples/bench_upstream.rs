//! The upstream of `scripts/bench-gateway`: a small HTTP/1.1 server that the Flowers gateway
//! and nginx both proxy to, so that the benchmark compares the proxies and not the server
//! behind them. It is hyper on a multi-threaded tokio runtime with keep-alive, and it answers
//! from static buffers so that it is never the bottleneck.
//!
//! It listens on `127.0.0.1:$FLOWERS_PORT` (the port Flowers gives a replica), or on the port
//! given as its first argument, and answers:
//!
//! - `GET /small`: 100 bytes of text with a `Content-Length`;
//! - `GET /stream`: 1 MiB as 16 chunks of 64 KiB with `Transfer-Encoding: chunked` (no
//!   length is declared, so a proxy has to relay the chunks as they come);
//! - `GET /healthz`: `ok`, for Flowers' readiness probe;
//! - anything else: 404.
//!
//! Run it with `cargo run --release -p gateway --example bench_upstream -- PORT`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const SMALL: &[u8; 100] =
    b"flowers gateway benchmark: a small response of exactly one hundred bytes, for requests/s...........\n";
const CHUNK_BYTES: usize = 64 * 1024;
const STREAM_CHUNKS: usize = 16;
static CHUNK: [u8; CHUNK_BYTES] = [b'x'; CHUNK_BYTES];

/// A response body of static chunks; it declares no length, so hyper sends it chunked.
struct Chunks {
    left: usize,
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        self.left -= 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK)))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        // An exact hint would make hyper send a Content-Length instead of chunks.
        SizeHint::default()
    }
}

/// One body type for every answer: either a whole static buffer or the chunked stream.
enum Answer {
    Whole(Option<Bytes>),
    Stream(Chunks),
}

impl Body for Answer {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Answer::Whole(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Answer::Stream(chunks) => Pin::new(chunks).poll_frame(context),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Answer::Whole(bytes) => bytes.is_none(),
            Answer::Stream(chunks) => chunks.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Answer::Whole(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Answer::Stream(chunks) => chunks.size_hint(),
        }
    }
}

async fn answer(request: Request<Incoming>) -> Result<Response<Answer>, Infallible> {
    let (status, body) = match request.uri().path() {
        "/small" => (
            StatusCode::OK,
            Answer::Whole(Some(Bytes::from_static(SMALL))),
        ),
        "/stream" => (
            StatusCode::OK,
            Answer::Stream(Chunks {
                left: STREAM_CHUNKS,
            }),
        ),
        "/healthz" => (
            StatusCode::OK,
            Answer::Whole(Some(Bytes::from_static(b"ok"))),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            Answer::Whole(Some(Bytes::from_static(b"not found\n"))),
        ),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    Ok(response)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = match std::env::args().nth(1) {
        Some(port) => port.parse()?,
        None => std::env::var("FLOWERS_PORT")
            .map_err(|_| "give a port as the first argument or in FLOWERS_PORT")?
            .parse()?,
    };
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    println!("bench upstream listening on 127.0.0.1:{port}");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors under a benchmark's load: wait instead of spinning.
                eprintln!("bench upstream could not accept: {error}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            // Errors are clients going away mid-response (wrk stopping): not worth a line each.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
        });
    }
}

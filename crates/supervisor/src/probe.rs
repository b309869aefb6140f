//! Readiness probes and ports for Runs that answer HTTP.

use std::collections::HashSet;
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::OnceLock;
use std::time::Duration;

/// GET `http://127.0.0.1:{port}{path}`. Ok for any 2xx or 3xx answer (redirects are not
/// followed); otherwise a short human reason: "connection refused", "HTTP 500",
/// "timed out after 1s".
pub async fn probe_http(port: u16, path: &str, timeout: Duration) -> Result<(), String> {
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let url = format!("http://127.0.0.1:{port}{path}");
    let response = probe_client()
        .get(&url)
        .timeout(timeout)
        .send()
        .await
        .map_err(|error| describe(&error, timeout))?;
    let status = response.status();
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(format!("HTTP {}", status.as_u16()))
    }
}

fn probe_client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // Each probe opens its own connection: a replica that restarted on the same port
            // must not be judged through a stale pooled connection.
            .pool_max_idle_per_host(0)
            .no_proxy()
            .build()
            .unwrap_or_else(|_| reqwest::Client::new())
    })
}

fn describe(error: &reqwest::Error, timeout: Duration) -> String {
    if error.is_timeout() {
        return format!("timed out after {}", human_duration(timeout));
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if let Some(io_error) = cause.downcast_ref::<io::Error>() {
            return match io_error.kind() {
                io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
                io::ErrorKind::ConnectionReset => "connection reset".to_string(),
                io::ErrorKind::TimedOut => {
                    format!("timed out after {}", human_duration(timeout))
                }
                _ => io_error.to_string(),
            };
        }
        source = cause.source();
    }
    if error.is_connect() {
        "connection failed".to_string()
    } else if error.is_body() || error.is_decode() || error.is_request() {
        "bad HTTP answer".to_string()
    } else {
        error.to_string()
    }
}

fn human_duration(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

/// A free TCP port on 127.0.0.1 that is not in `taken` (bind port 0, read it, close).
pub fn pick_free_port(taken: &HashSet<u16>) -> io::Result<u16> {
    const ATTEMPTS: usize = 64;
    for _ in 0..ATTEMPTS {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        if !taken.contains(&port) {
            return Ok(port);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!(
            "no free port on 127.0.0.1 outside the {} taken ones after {ATTEMPTS} tries",
            taken.len()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn picks_a_port_outside_the_taken_set() {
        let first = pick_free_port(&HashSet::new()).unwrap();
        let second = pick_free_port(&HashSet::from([first])).unwrap();
        assert_ne!(first, second);
    }

    #[test]
    fn durations_read_like_the_config() {
        assert_eq!(human_duration(Duration::from_secs(1)), "1s");
        assert_eq!(human_duration(Duration::from_millis(250)), "250ms");
    }

    /// Serves one canned answer per connection, forever.
    async fn canned_server(answer: &'static [u8]) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request).await;
                let _ = stream.write_all(answer).await;
            }
        });
        port
    }

    #[tokio::test]
    async fn classifies_answers_and_failures() {
        let ok = canned_server(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
        assert_eq!(
            probe_http(ok, "/healthz", Duration::from_secs(2)).await,
            Ok(())
        );
        let moved =
            canned_server(b"HTTP/1.1 302 Found\r\nlocation: /x\r\ncontent-length: 0\r\n\r\n").await;
        assert_eq!(probe_http(moved, "/", Duration::from_secs(2)).await, Ok(()));
        let broken =
            canned_server(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n").await;
        assert_eq!(
            probe_http(broken, "healthz", Duration::from_secs(2)).await,
            Err("HTTP 500".to_string())
        );
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accepted by the kernel's backlog, never answered.
        let result = probe_http(port, "/", Duration::from_millis(300)).await;
        assert_eq!(result, Err("timed out after 300ms".to_string()));
        drop(listener);
    }

    #[tokio::test]
    async fn a_closed_port_is_refused() {
        let port = pick_free_port(&HashSet::new()).unwrap();
        assert_eq!(
            probe_http(port, "/", Duration::from_secs(1)).await,
            Err("connection refused".to_string())
        );
    }
}

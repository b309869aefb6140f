//! The control API's client, used by the CLI (and by anything in Rust that drives Flowers).
//!
//! It owns the HTTP details of talking to a running Flowers: URLs, JSON decoding, turning the
//! API's `{code, message}` errors into [`ClientError::Api`], and reading server-sent events and
//! streamed logs. It never formats output for people and never reaches into Flowers' data
//! directory: everything goes through the control API.

pub mod sse;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{Stream, StreamExt, TryStreamExt};
use serde::de::DeserializeOwned;

pub use api_types::*;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach Flowers at {url}: {reason}; is `flowers up` running (or is --api/FLOWERS_API set right)?")]
    Unreachable { url: String, reason: String },
    #[error("{message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected answer from {url}: {reason}")]
    Protocol { url: String, reason: String },
}

#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    /// `base`: the control API's URL, e.g. `http://127.0.0.1:7070`.
    pub fn new(base: &str) -> Client {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .expect("an HTTP client without TLS builds");
        Client {
            base: base.trim_end_matches('/').to_string(),
            http,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn status(&self) -> Result<ServerInfo, ClientError> {
        self.get("/v1/status").await
    }
    pub async fn devices(&self) -> Result<DevicesResponse, ClientError> {
        self.get("/v1/devices").await
    }
    pub async fn gateway(&self) -> Result<GatewayReport, ClientError> {
        self.get("/v1/gateway").await
    }
    pub async fn services(&self) -> Result<Vec<ServiceInfo>, ClientError> {
        self.get("/v1/services").await
    }
    pub async fn service(&self, name: &str) -> Result<ServiceInfo, ClientError> {
        self.get(&format!("/v1/services/{}", encode(name))).await
    }
    pub async fn jobs(&self) -> Result<Vec<JobInfo>, ClientError> {
        self.get("/v1/jobs").await
    }
    pub async fn job(&self, name: &str) -> Result<JobInfo, ClientError> {
        self.get(&format!("/v1/jobs/{}", encode(name))).await
    }
    pub async fn runs(
        &self,
        owner: Option<&str>,
        active: bool,
        limit: u32,
    ) -> Result<Vec<RunInfo>, ClientError> {
        let mut path = format!("/v1/runs?limit={limit}&active={active}");
        if let Some(owner) = owner {
            path.push_str(&format!("&owner={}", encode(owner)));
        }
        self.get(&path).await
    }
    pub async fn run(&self, id: &str) -> Result<RunInfo, ClientError> {
        self.get(&format!("/v1/runs/{}", encode(id))).await
    }
    pub async fn start_job(&self, name: &str) -> Result<ActionResponse, ClientError> {
        self.post(&format!("/v1/jobs/{}/runs", encode(name))).await
    }
    pub async fn stop_run(&self, id: &str) -> Result<ActionResponse, ClientError> {
        self.post(&format!("/v1/runs/{}/stop", encode(id))).await
    }
    /// Reports a Run's progress (what the Python SDK's `flowers.report()` sends).
    pub async fn report_progress(
        &self,
        id: &str,
        progress: &ReportProgress,
    ) -> Result<ActionResponse, ClientError> {
        let url = format!("{}/v1/runs/{}/progress", self.base, encode(id));
        let response = self.send(self.http.post(&url).json(progress), &url).await?;
        decode(response, &url).await
    }
    /// Adds (or replaces) a service at run time from the JSON form of its `[services.NAME]`
    /// table.
    pub async fn put_service(
        &self,
        name: &str,
        spec: &serde_json::Value,
    ) -> Result<ActionResponse, ClientError> {
        self.put(&format!("/v1/services/{}", encode(name)), spec)
            .await
    }
    /// Adds (or replaces) a job at run time from the JSON form of its `[jobs.NAME]` table.
    pub async fn put_job(
        &self,
        name: &str,
        spec: &serde_json::Value,
    ) -> Result<ActionResponse, ClientError> {
        self.put(&format!("/v1/jobs/{}", encode(name)), spec).await
    }
    /// Removes a service added at run time (its replicas are drained first).
    pub async fn remove_service(&self, name: &str) -> Result<ActionResponse, ClientError> {
        self.delete(&format!("/v1/services/{}", encode(name))).await
    }
    /// Removes a job added at run time (its Run is stopped gracefully).
    pub async fn remove_job(&self, name: &str) -> Result<ActionResponse, ClientError> {
        self.delete(&format!("/v1/jobs/{}", encode(name))).await
    }
    pub async fn reset_service(&self, name: &str) -> Result<ActionResponse, ClientError> {
        self.post(&format!("/v1/services/{}/reset", encode(name)))
            .await
    }
    pub async fn reset_job(&self, name: &str) -> Result<ActionResponse, ClientError> {
        self.post(&format!("/v1/jobs/{}/reset", encode(name))).await
    }
    pub async fn models(&self) -> Result<Vec<ModelInfo>, ClientError> {
        self.get("/v1/models").await
    }
    pub async fn model(&self, name: &str) -> Result<ModelDetail, ClientError> {
        self.get(&format!("/v1/models/{}", encode(name))).await
    }
    /// Registers a version of `model` from `path` (absolute, on the machine Flowers runs on);
    /// `run` is the registering job's `FLOWERS_RUN_ID`, `None` for an import. No time limit:
    /// Flowers copies the files before it answers, and a big model on a slow disk takes time.
    pub async fn register_version(
        &self,
        model: &str,
        path: &str,
        metrics: &BTreeMap<String, f64>,
        run: Option<&str>,
    ) -> Result<RegisteredInfo, ClientError> {
        let body = RegisterVersion {
            path: path.to_string(),
            metrics: metrics.clone(),
            run: run.map(str::to_string),
        };
        let url = format!("{}/v1/models/{}/versions", self.base, encode(model));
        let response = self.send(self.http.post(&url).json(&body), &url).await?;
        decode(response, &url).await
    }
    pub async fn promote(&self, model: &str, version: u32) -> Result<ActionResponse, ClientError> {
        let url = format!("{}/v1/models/{}/promote", self.base, encode(model));
        let request = self
            .http
            .post(&url)
            .json(&PromoteRequest { version })
            .timeout(Duration::from_secs(60));
        let response = self.send(request, &url).await?;
        decode(response, &url).await
    }
    pub async fn rollback(&self, model: &str) -> Result<ActionResponse, ClientError> {
        self.post(&format!("/v1/models/{}/rollback", encode(model)))
            .await
    }
    pub async fn events(
        &self,
        after: Option<i64>,
        owner: Option<&str>,
        limit: u32,
    ) -> Result<Vec<EventInfo>, ClientError> {
        self.get(&events_path(after, owner, limit)).await
    }

    /// The backlog (newest `limit`, or everything after `after`), then events as they happen.
    pub async fn follow_events(
        &self,
        after: Option<i64>,
        owner: Option<&str>,
        limit: u32,
    ) -> Result<impl Stream<Item = Result<EventInfo, ClientError>>, ClientError> {
        let path = format!("{}&follow=true", events_path(after, owner, limit));
        let url = format!("{}{path}", self.base);
        let response = self.send(self.http.get(&url), &url).await?;
        let bytes = Box::pin(
            response
                .bytes_stream()
                .map_err(|e| std::io::Error::other(e.to_string())),
        );
        Ok(sse::events(bytes).map(move |frame| {
            let frame = frame.map_err(|e| ClientError::Protocol {
                url: url.clone(),
                reason: e.to_string(),
            })?;
            serde_json::from_str::<EventInfo>(&frame.data).map_err(|e| ClientError::Protocol {
                url: url.clone(),
                reason: format!("bad event: {e}"),
            })
        }))
    }

    /// A Run's log: the last `tail` lines, and with `follow` everything written after, until
    /// the Run ends.
    pub async fn logs(
        &self,
        id: &str,
        tail: usize,
        follow: bool,
    ) -> Result<impl Stream<Item = Result<Vec<u8>, ClientError>>, ClientError> {
        let url = format!(
            "{}/v1/runs/{}/logs?tail={tail}&follow={follow}",
            self.base,
            encode(id)
        );
        let response = self.send(self.http.get(&url), &url).await?;
        Ok(response.bytes_stream().map(move |chunk| {
            chunk
                .map(|bytes| bytes.to_vec())
                .map_err(|e| ClientError::Protocol {
                    url: url.clone(),
                    reason: e.to_string(),
                })
        }))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let response = self
            .send(self.http.get(&url).timeout(Duration::from_secs(30)), &url)
            .await?;
        decode(response, &url).await
    }

    async fn post<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let response = self
            .send(self.http.post(&url).timeout(Duration::from_secs(60)), &url)
            .await?;
        decode(response, &url).await
    }

    async fn put<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let request = self
            .http
            .put(&url)
            .json(body)
            .timeout(Duration::from_secs(60));
        let response = self.send(request, &url).await?;
        decode(response, &url).await
    }

    async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let request = self.http.delete(&url).timeout(Duration::from_secs(60));
        let response = self.send(request, &url).await?;
        decode(response, &url).await
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<reqwest::Response, ClientError> {
        let response = request.send().await.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            reason: describe(&e),
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        match serde_json::from_str::<ApiError>(&body) {
            Ok(error) => Err(ClientError::Api {
                status,
                code: error.code,
                message: error.message,
            }),
            Err(_) => Err(ClientError::Protocol {
                url: url.to_string(),
                reason: format!(
                    "HTTP {status}: {}",
                    body.chars().take(200).collect::<String>()
                ),
            }),
        }
    }
}

fn events_path(after: Option<i64>, owner: Option<&str>, limit: u32) -> String {
    let mut path = format!("/v1/events?limit={limit}");
    if let Some(after) = after {
        path.push_str(&format!("&after={after}"));
    }
    if let Some(owner) = owner {
        path.push_str(&format!("&owner={}", encode(owner)));
    }
    path
}

async fn decode<T: DeserializeOwned>(
    response: reqwest::Response,
    url: &str,
) -> Result<T, ClientError> {
    let body = response.bytes().await.map_err(|e| ClientError::Protocol {
        url: url.to_string(),
        reason: e.to_string(),
    })?;
    serde_json::from_slice(&body).map_err(|e| ClientError::Protocol {
        url: url.to_string(),
        reason: format!("bad JSON: {e}"),
    })
}

/// The innermost cause is what people need: "Connection refused (os error 111)".
fn describe(error: &reqwest::Error) -> String {
    let mut source: Option<&dyn std::error::Error> = Some(error);
    let mut last = error.to_string();
    while let Some(cause) = source {
        last = cause.to_string();
        source = cause.source();
    }
    if error.is_timeout() {
        "timed out".to_string()
    } else {
        last
    }
}

/// Percent-encodes a path segment or query value.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_path_segments() {
        assert_eq!(encode("web-1"), "web-1");
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }

    #[tokio::test]
    async fn a_closed_port_says_flowers_is_not_running() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let error = Client::new(&format!("http://127.0.0.1:{port}"))
            .status()
            .await
            .unwrap_err();
        let text = error.to_string();
        assert!(text.contains("cannot reach Flowers"), "{text}");
        assert!(text.contains("refused"), "{text}");
    }
}

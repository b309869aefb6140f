//! The client of the chat engine: OpenAI-compatible `POST {base}/v1/chat/completions`, whole
//! or streamed (server-sent events, parsed here). Requests and answers stay JSON values, so
//! fields this crate does not know (sampling options, usage, the engine's own extras) pass
//! through untouched.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use serde_json::Value;

use crate::{Error, Result};

/// A stream of `chat.completion.chunk` objects, ending at the engine's `[DONE]`.
pub type ChatStream = Pin<Box<dyn Stream<Item = Result<Value>> + Send>>;

#[derive(Debug, Clone)]
pub struct OpenAiChat {
    /// Without the `/v1/...` path, e.g. `http://127.0.0.1:8080`.
    pub base_url: String,
    /// The chat model asked for (the RAG route's own `model` field names a collection).
    pub model: String,
    pub client: reqwest::Client,
}

impl OpenAiChat {
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> OpenAiChat {
        OpenAiChat {
            base_url: base_url.into(),
            model: model.into(),
            client: reqwest::Client::new(),
        }
    }

    fn url(&self) -> String {
        format!(
            "{}/v1/chat/completions",
            self.base_url.trim_end_matches('/')
        )
    }

    async fn send(&self, mut body: Value, stream: bool) -> Result<reqwest::Response> {
        let url = self.url();
        body["model"] = Value::String(self.model.clone());
        body["stream"] = Value::Bool(stream);
        let response = self
            .client
            .post(&url)
            .json(&body)
            .send()
            .await
            .map_err(|error| Error::Chat(format!("cannot reach {url}: {error}")))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        // The engine's own `{code, message}` (or OpenAI's `{error: {message}}`) when it has one.
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| {
                v.get("message")
                    .or_else(|| v.pointer("/error/message"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .unwrap_or_else(|| text.chars().take(500).collect());
        if status.is_client_error() {
            Err(Error::ChatRejected {
                status: status.as_u16(),
                message,
            })
        } else {
            Err(Error::Chat(format!("{url} answered {status}: {message}")))
        }
    }

    /// One whole `chat.completion`.
    pub async fn complete(&self, body: Value) -> Result<Value> {
        let url = self.url();
        let response = self.send(body, false).await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|error| Error::Chat(format!("{url}: reading the answer: {error}")))?;
        serde_json::from_slice(&bytes)
            .map_err(|error| Error::Chat(format!("{url}: not a chat completion: {error}")))
    }

    /// The answer as it is generated. Errors before the first chunk (unreachable, refused)
    /// come from this call; later ones are items of the stream.
    pub async fn stream(&self, body: Value) -> Result<ChatStream> {
        let url = self.url();
        let response = self.send(body, true).await?;
        let bytes = response.bytes_stream();
        let events = futures::stream::unfold(
            (bytes, SseBuffer::default(), false),
            move |(mut bytes, mut buffer, mut finished)| {
                let url = url.clone();
                async move {
                    loop {
                        if finished {
                            return None;
                        }
                        match buffer.next_event() {
                            Some(SseEvent::Done) => return None,
                            Some(SseEvent::Data(data)) => {
                                let item = serde_json::from_str::<Value>(&data).map_err(|error| {
                                    Error::Chat(format!(
                                        "{url}: a stream event is not JSON: {error}"
                                    ))
                                });
                                return Some((item, (bytes, buffer, finished)));
                            }
                            None => {}
                        }
                        match bytes.next().await {
                            Some(Ok(chunk)) => buffer.push(&chunk),
                            Some(Err(error)) => {
                                finished = true;
                                let item = Err(Error::Chat(format!(
                                    "{url}: the stream broke off: {error}"
                                )));
                                return Some((item, (bytes, buffer, finished)));
                            }
                            None => {
                                // The engine closed without [DONE]: whatever it sent is all.
                                return None;
                            }
                        }
                    }
                }
            },
        );
        Ok(Box::pin(events))
    }
}

#[derive(Debug, PartialEq, Eq)]
enum SseEvent {
    Data(String),
    Done,
}

/// Server-sent events from arbitrary byte chunks: events end at a blank line; only `data:`
/// lines matter here (several are joined by newlines, as the SSE specification says).
#[derive(Default)]
struct SseBuffer {
    pending: Vec<u8>,
}

impl SseBuffer {
    fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            let text_end = find_blank_line(&self.pending)?;
            let (end, skip) = text_end;
            let raw: Vec<u8> = self.pending.drain(..end + skip).take(end).collect();
            let raw = String::from_utf8_lossy(&raw);
            let data: Vec<&str> = raw
                .lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if data.is_empty() {
                // A comment or keep-alive.
                continue;
            }
            let data = data.join("\n");
            if data.trim() == "[DONE]" {
                return Some(SseEvent::Done);
            }
            return Some(SseEvent::Data(data));
        }
    }
}

/// Where the first blank line (`\n\n` or `\r\n\r\n`) starts, and its length.
fn find_blank_line(bytes: &[u8]) -> Option<(usize, usize)> {
    let lf = bytes.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_are_parsed_across_arbitrary_chunk_boundaries() {
        let stream =
            b": keep-alive\n\ndata: {\"a\":1}\n\ndata: {\"b\":\r\ndata: 2}\r\n\r\ndata: [DONE]\n\n";
        for split in 1..stream.len() {
            let mut buffer = SseBuffer::default();
            let mut events = Vec::new();
            for piece in stream.chunks(split) {
                buffer.push(piece);
                while let Some(event) = buffer.next_event() {
                    events.push(event);
                }
            }
            assert_eq!(
                events,
                vec![
                    SseEvent::Data("{\"a\":1}".into()),
                    SseEvent::Data("{\"b\":\n2}".into()),
                    SseEvent::Done
                ],
                "split {split}"
            );
        }
    }
}

//! Webhooks: each stored event matching a `[[video.webhooks]]` entry has a row in the
//! `deliveries` outbox, written in the event's own transaction
//! ([`VideoDb::insert_event_with_deliveries`]). One tokio task sends what is due: a POST of
//! the event's JSON (as `GET /v1/events/{id}` shows it) with `x-flowers-event-id` and
//! `x-flowers-event-kind`. A 2xx answer is delivered; 408, 429, 5xx, timeouts and connection
//! errors are tried again, after 1 s doubling to 5 min, until 24 h after the event; any other
//! answer is a permanent refusal, recorded as failed. Rows still pending when the service
//! stops are sent by the next one: at least once, across restarts, and in no promised order
//! (tries run side by side, and a retried event goes after newer ones).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use domain::WebhookSpec;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::db::{Attempt, DbError, Delivery, VideoDb};
use crate::deliver::backoff;

/// The sender's timings.
#[derive(Debug, Clone)]
pub struct SenderOptions {
    /// A request that has no answer this long is a failed try (and retried).
    pub timeout: Duration,
    /// The wait after the first failed try, doubled after each further one.
    pub backoff_first: Duration,
    pub backoff_max: Duration,
    /// A delivery still failing this long after its event is given up.
    pub give_up_after: Duration,
    /// Tries made at once, to different or the same webhooks.
    pub batch: usize,
}

impl Default for SenderOptions {
    fn default() -> Self {
        SenderOptions {
            timeout: Duration::from_secs(10),
            backoff_first: Duration::from_secs(1),
            backoff_max: Duration::from_secs(5 * 60),
            give_up_after: Duration::from_secs(24 * 3600),
            batch: 32,
        }
    }
}

/// The most an idle sender sleeps before it looks at the outbox again (it is woken when an
/// event is stored, so this only bounds a missed wake-up).
const IDLE_WAIT: Duration = Duration::from_secs(60);

/// The URLs an event of `kind` on `stream` goes to, each once, in the file's order.
pub fn targets(webhooks: &[WebhookSpec], stream: &str, kind: &str) -> Vec<String> {
    let mut urls: Vec<String> = Vec::new();
    for hook in webhooks.iter().filter(|hook| hook.wants(stream, kind)) {
        if !urls.contains(&hook.url) {
            urls.push(hook.url.clone());
        }
    }
    urls
}

/// Whether an answer is final: `None` for a 2xx (delivered), `Some(true)` for one worth
/// another try (408, 429, 5xx), `Some(false)` for a permanent refusal.
pub fn retryable(status: u16) -> Option<bool> {
    match status {
        200..=299 => None,
        408 | 429 | 500..=599 => Some(true),
        _ => Some(false),
    }
}

/// What to record after a failed try of `delivery` at `now_ms`: another try after the
/// backoff, or failed when that would be later than `give_up_after` from the first.
pub fn after_failure(
    delivery: &Delivery,
    error: String,
    retry: bool,
    now_ms: i64,
    options: &SenderOptions,
) -> Attempt {
    let tries = delivery.attempts.saturating_add(1);
    if !retry {
        return Attempt::Failed { error };
    }
    let wait = backoff(options.backoff_first, options.backoff_max, tries);
    let next_ms = now_ms.saturating_add(wait.as_millis() as i64);
    let deadline = delivery
        .created_ms
        .saturating_add(options.give_up_after.as_millis() as i64);
    if next_ms > deadline {
        return Attempt::Failed {
            error: format!(
                "gave up after {tries} tries over {}; the last: {error}",
                humantime::format_duration(options.give_up_after)
            ),
        };
    }
    Attempt::Retry { next_ms, error }
}

/// Starts the sender on the current tokio runtime. It sends what is due (including what an
/// earlier run left pending), then sleeps until the next row is due or `wake` is notified;
/// it ends when `stopping` turns true.
pub fn spawn(
    db: Arc<Mutex<VideoDb>>,
    webhooks: Arc<Vec<WebhookSpec>>,
    options: SenderOptions,
    wake: Arc<Notify>,
    mut stopping: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let client = reqwest::Client::builder()
        .timeout(options.timeout)
        .build()
        .expect("a client with no TLS builds");
    let sender = Arc::new(Sender {
        db,
        webhooks,
        options,
        client,
    });
    tokio::spawn(async move {
        loop {
            if *stopping.borrow() {
                return;
            }
            let now_ms = domain::now_ms();
            let batch = sender.options.batch.max(1);
            let found = sender
                .with_db(move |db| Ok((db.due_deliveries(now_ms, batch)?, db.next_delivery_ms()?)))
                .await;
            let (due, next_ms) = match found {
                Ok(found) => found,
                Err(error) => {
                    tracing::error!("webhooks: cannot read the outbox: {error}");
                    (Vec::new(), Some(now_ms + IDLE_WAIT.as_millis() as i64))
                }
            };
            if due.is_empty() {
                let wait = next_ms.map_or(IDLE_WAIT, |next| {
                    Duration::from_millis(next.saturating_sub(now_ms).max(0) as u64).min(IDLE_WAIT)
                });
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = wake.notified() => {}
                    // An error: the service is gone.
                    changed = stopping.changed() => if changed.is_err() { return },
                }
                continue;
            }
            let tries = due.into_iter().map(|delivery| {
                let sender = Arc::clone(&sender);
                async move { sender.try_once(delivery).await }
            });
            let recorded = futures::future::join_all(tries).await;
            if !recorded.contains(&true) {
                // The database refuses: the same rows are still due, so do not spin on them.
                tokio::select! {
                    _ = tokio::time::sleep(sender.options.backoff_first) => {}
                    changed = stopping.changed() => if changed.is_err() { return },
                }
            }
        }
    })
}

struct Sender {
    db: Arc<Mutex<VideoDb>>,
    webhooks: Arc<Vec<WebhookSpec>>,
    options: SenderOptions,
    client: reqwest::Client,
}

impl Sender {
    async fn with_db<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut VideoDb) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, DbError> {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || {
            let mut db = db.lock().unwrap_or_else(|p| p.into_inner());
            work(&mut db)
        })
        .await
        .unwrap_or_else(|error| Err(DbError::Corrupt(format!("the database task died: {error}"))))
    }

    /// One POST of one delivery, and what came of it recorded; false when the database
    /// would not say or record it.
    async fn try_once(&self, delivery: Delivery) -> bool {
        let event_id = delivery.event;
        let event = self.with_db(move |db| db.event(event_id)).await;
        let outcome = match event {
            Ok(Some(event)) => self.post(&delivery, &event).await,
            Ok(None) => Err(("the event is gone".to_string(), false)),
            Err(error) => {
                tracing::error!("webhooks: cannot read event {event_id}: {error}");
                return false;
            }
        };
        let attempt = match outcome {
            Ok(()) => Attempt::Delivered,
            Err((error, retry)) => {
                after_failure(&delivery, error, retry, domain::now_ms(), &self.options)
            }
        };
        match &attempt {
            Attempt::Failed { error } => tracing::warn!(
                "webhook {}: event {event_id} not delivered: {error}",
                delivery.url
            ),
            Attempt::Retry { error, .. } if delivery.attempts == 0 => tracing::info!(
                "webhook {}: event {event_id}: {error}; trying again",
                delivery.url
            ),
            _ => {}
        }
        let id = delivery.id;
        match self
            .with_db(move |db| db.record_attempt(id, &attempt))
            .await
        {
            Ok(()) => true,
            Err(error) => {
                tracing::error!("webhooks: cannot record delivery {id}: {error}");
                false
            }
        }
    }

    /// `Err((why, worth another try))` unless the webhook answered 2xx.
    async fn post(
        &self,
        delivery: &Delivery,
        event: &crate::db::Event,
    ) -> Result<(), (String, bool)> {
        let Some(hook) = self.webhooks.iter().find(|hook| hook.url == delivery.url) else {
            return Err((
                "no [[video.webhooks]] has this URL any more".to_string(),
                false,
            ));
        };
        let headers = headers(hook, event).map_err(|error| (error, false))?;
        let body = serde_json::to_vec(event).expect("an event serializes");
        let response = self
            .client
            .post(&delivery.url)
            .headers(headers)
            .body(body)
            .send()
            .await;
        match response {
            Ok(response) => {
                let status = response.status();
                match retryable(status.as_u16()) {
                    None => Ok(()),
                    Some(retry) => Err((format!("answered {status}"), retry)),
                }
            }
            Err(error) if error.is_timeout() => Err((
                format!(
                    "no answer within {}",
                    humantime::format_duration(self.options.timeout)
                ),
                true,
            )),
            Err(error) if error.is_builder() => Err((format!("{error}"), false)),
            Err(error) => Err((error_chain(&error), true)),
        }
    }
}

/// The request's headers: the webhook's own, then Flowers's.
fn headers(hook: &WebhookSpec, event: &crate::db::Event) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    for (name, value) in &hook.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("the header name {name:?} is not valid"))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("the value of the header {name} is not valid"))?;
        headers.insert(name, value);
    }
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert("x-flowers-event-id", HeaderValue::from(event.id));
    headers.insert(
        "x-flowers-event-kind",
        HeaderValue::from_static(event.kind.as_str()),
    );
    Ok(headers)
}

/// A reqwest error with its causes ("error sending request: … connection refused").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

//! MQTT: every stored event is published as JSON to `PREFIX/STREAM/events` at QoS 1, and a
//! stream's state to `PREFIX/STREAM/status` ("online" or "offline", retained). The service's
//! own state is `PREFIX/status`: "online" (retained) on every connection, "offline" as the
//! last will the broker publishes when the connection dies, and before a clean stop.
//!
//! Best effort: the pipeline pushes on a bounded queue that drops its oldest message when
//! full (and counts it), so a broker that is down never makes a stream wait. rumqttc's
//! `EventLoop::poll` reconnects at once after an error (bytebeamio/rumqtt #918), so the loop
//! here waits between attempts, 1 s doubling to 30 s.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use domain::MqttSpec;
use rumqttc::{AsyncClient, Event as MqttEvent, Incoming, LastWill, MqttOptions, Outgoing, QoS};
use serde::Serialize;
use tokio::sync::{watch, Notify};

use crate::db::{Event, EventKind};
use crate::deliver::backoff;

/// The publisher's limits and timings.
#[derive(Debug, Clone)]
pub struct PublisherOptions {
    /// Messages waiting for the broker; beyond it the oldest is dropped.
    pub queue: usize,
    /// The wait after a failed connection, doubled after each further one.
    pub backoff_first: Duration,
    pub backoff_max: Duration,
    pub keep_alive: Duration,
    /// How long a stopping service waits to say "offline" and disconnect cleanly.
    pub stop_wait: Duration,
}

impl Default for PublisherOptions {
    fn default() -> Self {
        PublisherOptions {
            queue: 1024,
            backoff_first: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            keep_alive: Duration::from_secs(30),
            stop_wait: Duration::from_secs(2),
        }
    }
}

/// The connection as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MqttStatus {
    /// `HOST:PORT`.
    pub broker: String,
    pub connected: bool,
    /// Messages waiting in the queue.
    pub queued: usize,
    /// Messages handed to the connection so far.
    pub published: u64,
    /// Messages dropped because the queue was full.
    pub dropped: u64,
    /// Why the last connection failed, if it did.
    pub last_error: Option<String>,
}

/// One message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

/// Pushes events towards the broker; cheap to clone, never blocks.
#[derive(Clone)]
pub struct Publisher {
    shared: Arc<Shared>,
}

struct Shared {
    prefix: String,
    broker: String,
    capacity: usize,
    queue: Mutex<VecDeque<Message>>,
    ready: Notify,
    dropped: AtomicU64,
    published: AtomicU64,
    connection: Mutex<(bool, Option<String>)>,
    /// Each stream's last status message, published again at every connection: a broker that
    /// restarted without persistence has lost its retained messages.
    statuses: Mutex<std::collections::BTreeMap<String, Message>>,
    /// Ends (the sender is dropped) when the connection task has stopped.
    stopped: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    stop_wait: Duration,
}

impl Publisher {
    /// A publisher whose queue nothing drains yet; [`Publisher::start`] drains it.
    pub fn new(spec: &MqttSpec, options: &PublisherOptions) -> Publisher {
        Publisher {
            shared: Arc::new(Shared {
                prefix: spec.prefix.trim_end_matches('/').to_string(),
                broker: format!("{}:{}", spec.host, spec.port),
                capacity: options.queue.max(1),
                queue: Mutex::new(VecDeque::new()),
                ready: Notify::new(),
                dropped: AtomicU64::new(0),
                published: AtomicU64::new(0),
                connection: Mutex::new((false, None)),
                statuses: Mutex::new(Default::default()),
                stopped: Mutex::new(None),
                stop_wait: options.stop_wait,
            }),
        }
    }

    /// Connects to the broker of `spec` on the current tokio runtime and publishes until
    /// `stopping` turns true.
    pub fn start(
        spec: &MqttSpec,
        options: PublisherOptions,
        stopping: watch::Receiver<bool>,
    ) -> Publisher {
        let publisher = Publisher::new(spec, &options);
        let mut mqtt = MqttOptions::new(spec.client_id.clone(), spec.host.clone(), spec.port);
        mqtt.set_keep_alive(options.keep_alive);
        mqtt.set_last_will(LastWill::new(
            publisher.topic(None, "status"),
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
        if let Some(username) = &spec.username {
            mqtt.set_credentials(username.clone(), spec.password.clone().unwrap_or_default());
        }
        let (client, eventloop) = AsyncClient::new(mqtt, 64);
        let (done, stopped) = std::sync::mpsc::channel();
        *publisher.lock_stopped() = Some(stopped);
        let shared = Arc::clone(&publisher.shared);
        tokio::spawn(async move {
            let _done = done;
            run(shared, client, eventloop, options, stopping).await;
        });
        publisher
    }

    fn topic(&self, stream: Option<&str>, leaf: &str) -> String {
        match stream {
            Some(stream) => format!("{}/{stream}/{leaf}", self.shared.prefix),
            None => format!("{}/{leaf}", self.shared.prefix),
        }
    }

    /// Queues `event` for `PREFIX/STREAM/events`, and a stream's going online or offline
    /// for its retained `PREFIX/STREAM/status` too.
    pub fn event(&self, event: &Event) {
        self.push(Message {
            topic: self.topic(Some(&event.stream), "events"),
            payload: serde_json::to_vec(event).expect("an event serializes"),
            retain: false,
        });
        let state = match event.kind {
            EventKind::StreamOnline => "online",
            EventKind::StreamOffline => "offline",
            _ => return,
        };
        let message = Message {
            topic: self.topic(Some(&event.stream), "status"),
            payload: state.as_bytes().to_vec(),
            retain: true,
        };
        self.shared
            .statuses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(message.topic.clone(), message.clone());
        self.push(message);
    }

    /// Queues a message, dropping the oldest when the queue is full.
    pub fn push(&self, message: Message) {
        {
            let mut queue = self.lock_queue();
            while queue.len() >= self.shared.capacity {
                queue.pop_front();
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
            queue.push_back(message);
        }
        self.shared.ready.notify_one();
    }

    /// The messages waiting, oldest first (for tests and the status).
    pub fn queued(&self) -> Vec<Message> {
        self.lock_queue().iter().cloned().collect()
    }

    pub fn status(&self) -> MqttStatus {
        let (connected, last_error) = self
            .shared
            .connection
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        MqttStatus {
            broker: self.shared.broker.clone(),
            connected,
            queued: self.lock_queue().len(),
            published: self.shared.published.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            last_error,
        }
    }

    /// Waits (a bounded time) for a stopping publisher to say "offline" and disconnect.
    pub fn wait_stopped(&self) {
        let stopped = self.lock_stopped().take();
        if let Some(stopped) = stopped {
            let _ = stopped.recv_timeout(self.shared.stop_wait);
        }
    }

    fn lock_queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Message>> {
        self.shared.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_stopped(&self) -> std::sync::MutexGuard<'_, Option<std::sync::mpsc::Receiver<()>>> {
        self.shared
            .stopped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

impl Shared {
    fn set_connection(&self, connected: bool, error: Option<String>) {
        let mut connection = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        connection.0 = connected;
        if error.is_some() {
            connection.1 = error;
        }
    }

    fn pop(&self) -> Option<Message> {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
    }
}

/// The connection: one task polls rumqttc's event loop (connecting, waiting after errors),
/// another hands the queue to the client. The client's own channel is bounded, so while the
/// broker is away the second waits and the queue drops its oldest.
async fn run(
    shared: Arc<Shared>,
    client: AsyncClient,
    mut eventloop: rumqttc::EventLoop,
    options: PublisherOptions,
    mut stopping: watch::Receiver<bool>,
) {
    let status = format!("{}/status", shared.prefix);
    let drain = {
        let shared = Arc::clone(&shared);
        let client = client.clone();
        let mut stopping = stopping.clone();
        tokio::spawn(async move {
            loop {
                if *stopping.borrow() {
                    return;
                }
                let Some(message) = shared.pop() else {
                    tokio::select! {
                        _ = shared.ready.notified() => {}
                        // An error: the service is gone.
                        changed = stopping.changed() => if changed.is_err() { return },
                    }
                    continue;
                };
                let sent = tokio::select! {
                    sent = client.publish(
                        message.topic,
                        QoS::AtLeastOnce,
                        message.retain,
                        message.payload,
                    ) => sent,
                    _ = stopping.changed() => return,
                };
                if sent.is_ok() {
                    shared.published.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let mut failures = 0u32;
    loop {
        let polled = tokio::select! {
            polled = eventloop.poll() => polled,
            _ = stopping.changed() => break,
        };
        match polled {
            Ok(MqttEvent::Incoming(Incoming::ConnAck(_))) => {
                failures = 0;
                shared.set_connection(true, None);
                tracing::info!("mqtt: connected to {}", shared.broker);
                // Ahead of whatever waits, and not through the client's channel, which may be
                // full of what queued while the broker was away.
                let online = Message {
                    topic: status.clone(),
                    payload: b"online".to_vec(),
                    retain: true,
                };
                let statuses: Vec<Message> = shared
                    .statuses
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .cloned()
                    .collect();
                let mut queue = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
                for message in statuses.into_iter().rev() {
                    queue.push_front(message);
                }
                queue.push_front(online);
                drop(queue);
                shared.ready.notify_one();
            }
            Ok(_) => {}
            Err(error) => {
                failures = failures.saturating_add(1);
                let wait = backoff(options.backoff_first, options.backoff_max, failures);
                if failures == 1 {
                    tracing::warn!("mqtt: {}: {error}", shared.broker);
                }
                shared.set_connection(false, Some(error.to_string()));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stopping.changed() => break,
                }
            }
        }
    }
    drain.abort();
    // A clean stop: what is still queued, then "offline" (a clean disconnect sends no will).
    let connected = shared
        .connection
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .0;
    if connected {
        while let Some(message) = shared.pop() {
            let _ = client.try_publish(
                message.topic,
                QoS::AtLeastOnce,
                message.retain,
                message.payload,
            );
        }
        let _ = client.try_publish(status, QoS::AtLeastOnce, true, "offline");
        let _ = client.try_disconnect();
        let flushed = tokio::time::timeout(options.stop_wait, async {
            loop {
                match eventloop.poll().await {
                    Ok(MqttEvent::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        if flushed.is_err() {
            tracing::warn!(
                "mqtt: {} did not take the last messages in time",
                shared.broker
            );
        }
    }
    shared.set_connection(false, None);
}

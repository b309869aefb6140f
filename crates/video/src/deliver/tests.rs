//! Deliveries with real processes: Debian's mosquitto as the broker and mosquitto_sub as an
//! independent subscriber (scripts/setup installs both), a webhook receiver on loopback, and
//! a service analysing the crossing clip, whose two line crossings are the events delivered.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use domain::{LineSpec, MqttSpec, Name, StreamSpec, VideoConfig, WebhookSpec};

use crate::db::{Attempt, DeliveryState, EventKind, EventQuery, NewEvent, Retention, VideoDb};
use crate::deliver::mqtt::Message;
use crate::deliver::webhook::{after_failure, retryable, targets};
use crate::deliver::{backoff, DeliveryOptions, Publisher, PublisherOptions, SenderOptions};
use crate::live::LiveOptions;
use crate::service::{ServiceError, ServiceOptions, VideoService};

/// Every wait in these tests ends by then, so that a failure fails instead of hanging.
const DEADLINE: Duration = Duration::from_secs(90);

const T0: i64 = 1_760_000_000_000;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child killed when dropped, so that a failing test leaves nothing behind.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Debian's mosquitto on a free loopback port (with no config it listens on loopback only,
/// anonymous), once it accepts connections.
fn broker() -> (Running, u16) {
    let port = free_port();
    (broker_on(port), port)
}

/// mosquitto on `port`, once it accepts connections (no persistence: a restart forgets
/// retained messages).
fn broker_on(port: u16) -> Running {
    let child = Command::new("/usr/sbin/mosquitto")
        .args(["-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto runs (scripts/setup installs it)");
    let running = Running(child);
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < DEADLINE, "mosquitto never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    running
}

/// `mosquitto_sub -v` on `flowers/#`: the lines it printed ("TOPIC PAYLOAD").
struct Subscriber {
    _child: Running,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Subscriber {
    /// Subscribes, and returns once a probe published after it is seen, so nothing
    /// published later can be missed.
    fn start(port: u16) -> Subscriber {
        let mut child = Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-t",
                "flowers/#",
                "-v",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub runs (scripts/setup installs mosquitto-clients)");
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let subscriber = Subscriber {
            _child: Running(child),
            lines,
        };
        let start = Instant::now();
        while !subscriber.has(|line| line == "flowers/probe ready") {
            assert!(start.elapsed() < DEADLINE, "mosquitto_sub never subscribed");
            let published = Command::new("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                .args(["-t", "flowers/probe", "-m", "ready"])
                .status()
                .expect("mosquitto_pub runs");
            assert!(published.success());
            std::thread::sleep(Duration::from_millis(100));
        }
        subscriber
    }

    fn has(&self, wanted: impl Fn(&str) -> bool) -> bool {
        self.lines.lock().unwrap().iter().any(|line| wanted(line))
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

/// One request the webhook receiver got.
#[derive(Debug, Clone)]
struct Received {
    id: i64,
    kind: String,
    content_type: String,
    authorization: String,
    body: serde_json::Value,
}

/// What the receiver answers the `nth` try (from 1) of an event.
type Answer = dyn Fn(i64, usize) -> StatusCode + Send + Sync;

#[derive(Clone)]
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
    answer: Arc<Mutex<Arc<Answer>>>,
}

impl Receiver {
    /// Serves `POST /hook` on a free loopback port; returns the receiver and its URL.
    async fn start(
        answer: impl Fn(i64, usize) -> StatusCode + Send + Sync + 'static,
    ) -> (Receiver, String) {
        let receiver = Receiver {
            got: Arc::default(),
            answer: Arc::new(Mutex::new(Arc::new(answer))),
        };
        let router = Router::new()
            .route("/hook", post(take))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        (receiver, url)
    }

    fn answer(&self, answer: impl Fn(i64, usize) -> StatusCode + Send + Sync + 'static) {
        *self.answer.lock().unwrap() = Arc::new(answer);
    }

    fn got(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    fn tries_of(&self, id: i64) -> usize {
        self.got().iter().filter(|r| r.id == id).count()
    }
}

async fn take(State(receiver): State<Receiver>, headers: HeaderMap, body: String) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    let received = Received {
        id: header("x-flowers-event-id").parse().unwrap_or(-1),
        kind: header("x-flowers-event-kind"),
        content_type: header("content-type"),
        authorization: header("authorization"),
        body: serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    };
    let id = received.id;
    let nth = {
        let mut got = receiver.got.lock().unwrap();
        got.push(received);
        got.iter().filter(|r| r.id == id).count()
    };
    let answer = Arc::clone(&receiver.answer.lock().unwrap());
    answer(id, nth)
}

/// `[video]` with the crossing clip as the stream `file` and its counting line `gate`.
fn crossing_config(dir: &Path) -> VideoConfig {
    let mut stream = StreamSpec::new(crate::test_clips::crossing(dir));
    stream.lines.insert(
        Name::new("gate").unwrap(),
        LineSpec {
            from: [0.515625, 1.0],
            to: [0.515625, 0.0],
        },
    );
    let mut config = VideoConfig::default();
    config.streams.insert(Name::new("file").unwrap(), stream);
    config
}

/// A webhook of `url` for line crossings only, with an Authorization header.
fn crossings_hook(url: &str) -> WebhookSpec {
    let mut hook = WebhookSpec::new(url);
    hook.kinds = vec!["line_crossed".to_string()];
    hook.headers = BTreeMap::from([("Authorization".to_string(), "Bearer t0ken".to_string())]);
    hook
}

/// Retries at once, so that the tests need not wait for the real backoff.
fn quick() -> DeliveryOptions {
    DeliveryOptions {
        webhooks: SenderOptions {
            timeout: Duration::from_secs(5),
            backoff_first: Duration::from_millis(50),
            backoff_max: Duration::from_millis(200),
            ..SenderOptions::default()
        },
        mqtt: PublisherOptions {
            backoff_first: Duration::from_millis(100),
            backoff_max: Duration::from_millis(500),
            ..PublisherOptions::default()
        },
    }
}

/// Starts a service on a blocking thread of the test's runtime, as the binary does.
async fn start(dir: &Path, config: VideoConfig, delivery: DeliveryOptions) -> Arc<VideoService> {
    let options = ServiceOptions {
        data_dir: dir.join("data"),
        config,
        live: LiveOptions::default(),
    };
    tokio::task::spawn_blocking(move || VideoService::start_with(options, delivery))
        .await
        .unwrap()
        .unwrap()
}

async fn stop(service: Arc<VideoService>) {
    tokio::task::spawn_blocking(move || service.shutdown())
        .await
        .unwrap();
}

/// Waits until `done` holds, failing the test at the deadline with `what`.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < DEADLINE, "gave up waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn crossings(service: &VideoService) -> Vec<crate::db::Event> {
    service
        .db()
        .events(&EventQuery {
            kind: Some(EventKind::LineCrossed),
            limit: 100,
            ..EventQuery::default()
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn mqtt_subscribers_get_each_line_crossing_and_the_states_online_then_offline() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, port) = broker();
    let subscriber = Subscriber::start(port);
    let mut config = crossing_config(dir.path());
    config.mqtt = Some(MqttSpec::new("127.0.0.1", port));
    let service = start(dir.path(), config, quick()).await;

    let crossed = |line: &str| {
        line.starts_with("flowers/video/file/events ") && line.contains("\"line_crossed\"")
    };
    until("two line crossings published", || {
        subscriber.lines().iter().filter(|l| crossed(l)).count() == 2
    })
    .await;
    let published: Vec<serde_json::Value> = subscriber
        .lines()
        .iter()
        .filter(|l| crossed(l))
        .map(|l| serde_json::from_str(l.split_once(' ').unwrap().1).unwrap())
        .collect();
    let stored: Vec<serde_json::Value> = crossings(&service)
        .iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .collect();
    // The API's JSON, event for event, but for the snapshot: an event is published when it
    // happens, and its object's picture is taken when the object ends, which the API then
    // shows.
    let without_snapshot = |events: Vec<serde_json::Value>| -> Vec<serde_json::Value> {
        events
            .into_iter()
            .map(|mut e| {
                e.as_object_mut().unwrap().remove("snapshot");
                e
            })
            .collect()
    };
    assert_eq!(without_snapshot(published), without_snapshot(stored));
    assert!(
        subscriber.has(|l| l == "flowers/video/status online"),
        "{:#?}",
        subscriber.lines()
    );
    assert!(subscriber.has(|l| l == "flowers/video/file/status online"));
    let status = service.deliveries().unwrap().mqtt.unwrap();
    assert!(status.connected, "{status:?}");
    assert_eq!(
        (status.broker.as_str(), status.dropped),
        (format!("127.0.0.1:{port}").as_str(), 0)
    );

    stop(service).await;
    until("offline published at a clean stop", || {
        subscriber.has(|l| l == "flowers/video/status offline")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_statuses_are_published_again_to_a_broker_that_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, port) = broker();
    let mut config = crossing_config(dir.path());
    config.mqtt = Some(MqttSpec::new("127.0.0.1", port));
    let service = start(dir.path(), config, quick()).await;
    let first = Subscriber::start(port);
    until("the file's status, retained", || {
        first.has(|l| l == "flowers/video/file/status online")
    })
    .await;
    // The broker restarts with nothing retained; the service reconnects and says again what
    // it said, so a client subscribing now learns each stream's state.
    drop(first);
    drop(broker);
    let _broker = broker_on(port);
    until("the service to reconnect", || {
        service.deliveries().unwrap().mqtt.unwrap().connected
    })
    .await;
    let second = Subscriber::start(port);
    until("the file's status again", || {
        second.has(|l| l == "flowers/video/file/status online")
    })
    .await;
    assert!(second.has(|l| l == "flowers/video/status online"));
    stop(service).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_answering_503_twice_gets_a_third_try_with_the_same_event() {
    let dir = tempfile::tempdir().unwrap();
    let (receiver, url) = Receiver::start(|_, nth| {
        if nth < 3 {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        }
    })
    .await;
    let mut config = crossing_config(dir.path());
    config.webhooks.push(crossings_hook(&url));
    let service = start(dir.path(), config, quick()).await;

    until("both crossings delivered", || {
        let counts = service.deliveries().unwrap().webhooks;
        counts.delivered == 2 && crossings(&service).len() == 2
    })
    .await;
    let counts = service.deliveries().unwrap().webhooks;
    assert_eq!((counts.pending, counts.failed), (0, 0));
    for event in crossings(&service) {
        assert_eq!(receiver.tries_of(event.id), 3, "{:#?}", receiver.got());
        let json = serde_json::to_value(&event).unwrap();
        for got in receiver.got().iter().filter(|r| r.id == event.id) {
            assert_eq!(got.kind, "line_crossed");
            assert_eq!(got.content_type, "application/json");
            assert_eq!(got.authorization, "Bearer t0ken");
            // The event as the API shows it when sent: the object's snapshot appears once
            // the object has ended.
            let mut body = got.body.clone();
            if body["snapshot"].is_null() {
                body["snapshot"] = json["snapshot"].clone();
            }
            assert_eq!(body, json);
        }
        let [delivery] = &service.db().deliveries_of(event.id).unwrap()[..] else {
            panic!("one delivery per webhook");
        };
        assert_eq!(
            (delivery.state, delivery.attempts),
            (DeliveryState::Delivered, 3)
        );
        assert_eq!(delivery.url, url);
        assert_eq!(
            delivery.last_error.as_deref(),
            Some("answered 503 Service Unavailable")
        );
    }
    // Only the kinds asked for: no object or stream events were sent.
    assert!(receiver.got().iter().all(|r| r.kind == "line_crossed"));
    stop(service).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pending_delivery_resumes_after_a_restart_on_the_same_data() {
    let dir = tempfile::tempdir().unwrap();
    let (receiver, url) = Receiver::start(|_, _| StatusCode::BAD_GATEWAY).await;
    let mut config = crossing_config(dir.path());
    config.webhooks.push(crossings_hook(&url));
    // The real backoff: stopped right after the first failure, nothing is tried twice here.
    let service = start(dir.path(), config.clone(), DeliveryOptions::default()).await;
    until("a first failed try", || !receiver.got().is_empty()).await;
    let first = receiver.got()[0].id;
    until("the failure recorded", || {
        service.db().deliveries_of(first).unwrap()[0].attempts >= 1
    })
    .await;
    stop(service).await;
    let before = receiver.got().len();
    let pending: Vec<i64> = {
        let db = VideoDb::open(&dir.path().join("data")).unwrap();
        db.due_deliveries(i64::MAX / 2, 100)
            .unwrap()
            .iter()
            .map(|d| d.event)
            .collect()
    };
    assert!(pending.contains(&first), "{pending:?}");

    receiver.answer(|_, _| StatusCode::NO_CONTENT);
    config.streams.clear();
    let service = start(dir.path(), config, quick()).await;
    until("every pending delivery sent by the new service", || {
        let counts = service.deliveries().unwrap().webhooks;
        counts.pending == 0 && counts.delivered as usize == pending.len()
    })
    .await;
    let resumed: Vec<i64> = receiver.got()[before..].iter().map(|r| r.id).collect();
    for id in &pending {
        assert!(resumed.contains(id), "{id} not resent: {resumed:?}");
        let delivery = &service.db().deliveries_of(*id).unwrap()[0];
        assert_eq!(delivery.state, DeliveryState::Delivered);
        assert!(delivery.attempts >= 2, "{delivery:?}");
    }
    stop(service).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_400_is_recorded_as_failed_and_not_tried_again() {
    let dir = tempfile::tempdir().unwrap();
    let (receiver, url) = Receiver::start(|_, _| StatusCode::BAD_REQUEST).await;
    let mut config = crossing_config(dir.path());
    config.webhooks.push(crossings_hook(&url));
    let service = start(dir.path(), config, quick()).await;
    until("both crossings failed", || {
        service.deliveries().unwrap().webhooks.failed == 2
    })
    .await;
    for event in crossings(&service) {
        assert_eq!(receiver.tries_of(event.id), 1);
        let delivery = &service.db().deliveries_of(event.id).unwrap()[0];
        assert_eq!(
            (delivery.state, delivery.attempts),
            (DeliveryState::Failed, 1)
        );
        assert_eq!(
            delivery.last_error.as_deref(),
            Some("answered 400 Bad Request")
        );
    }

    // The API shows them.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let router = crate::http::router(Arc::clone(&service), "/video");
    tokio::spawn(async move { axum::serve(listener, router).await });
    let view: serde_json::Value = reqwest::get(format!("http://{address}/video/v1/deliveries"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        view["webhooks"],
        serde_json::json!({"pending": 0, "delivered": 0, "failed": 2})
    );
    assert_eq!(view["failed"][0]["last_error"], "answered 400 Bad Request");
    assert_eq!(view["failed"][0]["url"], url.as_str());
    assert_eq!(view["mqtt"], serde_json::Value::Null);
    stop(service).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_broker_and_webhook_do_not_stop_events_being_stored() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = crossing_config(dir.path());
    config.mqtt = Some(MqttSpec::new("127.0.0.1", free_port()));
    config.webhooks.push(crossings_hook(&format!(
        "http://127.0.0.1:{}/hook",
        free_port()
    )));
    let service = start(dir.path(), config, quick()).await;
    until("both crossings stored", || crossings(&service).len() == 2).await;
    until("a failed try of each recorded", || {
        crossings(&service).iter().all(|event| {
            let delivery = &service.db().deliveries_of(event.id).unwrap()[0];
            delivery.attempts >= 1 && delivery.state == DeliveryState::Pending
        })
    })
    .await;
    let first = crossings(&service)[0].id;
    let delivery = service.db().deliveries_of(first).unwrap().remove(0);
    let error = delivery.last_error.unwrap();
    assert!(error.contains("onnect"), "{error}");
    let status = service.deliveries().unwrap().mqtt.unwrap();
    assert!(!status.connected);
    assert!(status.last_error.is_some(), "{status:?}");
    stop(service).await;
}

#[test]
fn a_service_with_deliveries_needs_a_runtime_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = VideoConfig::default();
    config
        .webhooks
        .push(WebhookSpec::new("http://127.0.0.1:9/hook"));
    let error = VideoService::start(ServiceOptions {
        data_dir: dir.path().to_path_buf(),
        config,
        live: LiveOptions::default(),
    })
    .err()
    .unwrap();
    assert!(matches!(error, ServiceError::NoRuntime));
    assert!(error.to_string().contains("tokio runtime"), "{error}");
}

#[test]
fn event_kinds_are_the_ones_the_config_checks() {
    let names: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(names, domain::VIDEO_EVENT_KINDS);
}

#[test]
fn the_outbox_is_written_with_its_event_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = VideoDb::open(dir.path()).unwrap();
    let urls = ["http://a/hook".to_string(), "http://b/hook".to_string()];
    // An object event naming no stored object is refused: no delivery is left behind.
    let mut orphan = NewEvent::new(T0, "front", EventKind::ObjectStarted);
    orphan.object = Some(999);
    assert!(db.insert_event_with_deliveries(&orphan, &urls, T0).is_err());
    assert_eq!(db.delivery_counts().unwrap(), Default::default());
    assert_eq!(db.next_delivery_ms().unwrap(), None);

    let event = db
        .insert_event_with_deliveries(
            &NewEvent::new(T0, "front", EventKind::StreamOnline),
            &urls,
            T0 + 5,
        )
        .unwrap();
    let rows = db.deliveries_of(event.id).unwrap();
    assert_eq!(
        rows.iter().map(|d| d.url.as_str()).collect::<Vec<_>>(),
        urls
    );
    assert!(rows
        .iter()
        .all(|d| d.state == DeliveryState::Pending && d.attempts == 0 && d.next_ms == T0 + 5));
    assert!(db.due_deliveries(T0 + 4, 10).unwrap().is_empty());
    assert_eq!(db.due_deliveries(T0 + 5, 1).unwrap(), rows[..1]);
    assert_eq!(db.next_delivery_ms().unwrap(), Some(T0 + 5));
    // A time that cannot be stored is refused, with what it is.
    let error = db
        .insert_event_with_deliveries(
            &NewEvent::new(T0, "front", EventKind::StreamOnline),
            &urls,
            -1,
        )
        .unwrap_err();
    assert!(error.to_string().contains("delivery time"), "{error}");
}

#[test]
fn attempts_move_a_delivery_on_and_only_a_pending_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = VideoDb::open(dir.path()).unwrap();
    let urls = ["http://a/hook".to_string(), "http://b/hook".to_string()];
    let event = db
        .insert_event_with_deliveries(
            &NewEvent::new(T0, "front", EventKind::StreamOffline),
            &urls,
            T0,
        )
        .unwrap();
    let [a, b] = &db.deliveries_of(event.id).unwrap()[..] else {
        panic!("two deliveries");
    };
    let retry = Attempt::Retry {
        next_ms: T0 + 1000,
        error: "answered 503 Service Unavailable".to_string(),
    };
    db.record_attempt(a.id, &retry).unwrap();
    db.record_attempt(
        b.id,
        &Attempt::Failed {
            error: "answered 404 Not Found".to_string(),
        },
    )
    .unwrap();
    let [a, b] = &db.deliveries_of(event.id).unwrap()[..] else {
        panic!("two deliveries");
    };
    assert_eq!(
        (a.state, a.attempts, a.next_ms),
        (DeliveryState::Pending, 1, T0 + 1000)
    );
    assert_eq!(b.state, DeliveryState::Failed);
    assert_eq!(db.due_deliveries(T0 + 999, 10).unwrap(), []);
    db.record_attempt(a.id, &Attempt::Delivered).unwrap();
    let a = &db.deliveries_of(event.id).unwrap()[0];
    assert_eq!((a.state, a.attempts), (DeliveryState::Delivered, 2));
    // The last error stays, for people.
    assert_eq!(
        a.last_error.as_deref(),
        Some("answered 503 Service Unavailable")
    );
    let counts = db.delivery_counts().unwrap();
    assert_eq!((counts.pending, counts.delivered, counts.failed), (0, 1, 1));
    assert_eq!(db.failed_deliveries(10).unwrap()[0].id, b.id);
    let error = db.record_attempt(a.id, &Attempt::Delivered).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("no pending delivery {} in the video database", a.id)
    );
}

#[test]
fn retention_removes_the_deliveries_of_the_events_it_removes() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = VideoDb::open(dir.path()).unwrap();
    let urls = ["http://a/hook".to_string()];
    let old = db
        .insert_event_with_deliveries(
            &NewEvent::new(T0, "front", EventKind::StreamOnline),
            &urls,
            T0,
        )
        .unwrap();
    let object = db.start_object("front", "person", None, T0).unwrap();
    let mut started = NewEvent::new(T0, "front", EventKind::ObjectStarted);
    started.object = Some(object);
    let started = db
        .insert_event_with_deliveries(&started, &urls, T0)
        .unwrap();
    db.end_object(object, T0 + 10, 0.9, [0.0, 0.0, 1.0, 1.0], None)
        .unwrap();
    let young = db
        .insert_event_with_deliveries(
            &NewEvent::new(T0 + 100_000, "front", EventKind::StreamOffline),
            &urls,
            T0 + 100_000,
        )
        .unwrap();
    let report = db
        .sweep(
            &Retention {
                max_age_ms: Some(50_000),
                max_bytes: None,
            },
            T0 + 100_000,
        )
        .unwrap();
    assert_eq!((report.events, report.deliveries), (2, 2));
    assert!(db.deliveries_of(old.id).unwrap().is_empty());
    assert!(db.deliveries_of(started.id).unwrap().is_empty());
    assert_eq!(db.deliveries_of(young.id).unwrap().len(), 1);
}

#[test]
fn objects_a_crash_left_open_end_with_deliveries_of_their_events() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = VideoDb::open(dir.path()).unwrap();
    db.start_object("front", "person", None, T0).unwrap();
    db.start_object("back", "person", None, T0).unwrap();
    let hooks = |stream: &str| {
        if stream == "front" {
            vec!["http://a/hook".to_string()]
        } else {
            Vec::new()
        }
    };
    let ended = db
        .close_open_objects_with_deliveries(T0 + 10, &hooks)
        .unwrap();
    let front = ended.iter().find(|e| e.stream == "front").unwrap();
    let back = ended.iter().find(|e| e.stream == "back").unwrap();
    assert_eq!(db.deliveries_of(front.id).unwrap()[0].url, "http://a/hook");
    assert!(db.deliveries_of(back.id).unwrap().is_empty());
}

#[test]
fn backoff_doubles_from_its_first_wait_up_to_its_most() {
    let (first, most) = (Duration::from_secs(1), Duration::from_secs(300));
    let waits: Vec<u64> = (1..=10)
        .map(|n| backoff(first, most, n).as_secs())
        .collect();
    assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]);
    assert_eq!(backoff(first, most, u32::MAX), most);
    assert_eq!(backoff(first, most, 0), first);
}

#[test]
fn answers_are_delivered_retried_or_refused_by_status() {
    assert_eq!(retryable(200), None);
    assert_eq!(retryable(204), None);
    for status in [408, 429, 500, 502, 503, 504] {
        assert_eq!(retryable(status), Some(true), "{status}");
    }
    for status in [301, 400, 401, 403, 404, 410, 422] {
        assert_eq!(retryable(status), Some(false), "{status}");
    }
}

#[test]
fn a_failing_delivery_is_retried_until_a_day_after_its_event_then_given_up() {
    let options = SenderOptions::default();
    let mut delivery = crate::db::Delivery {
        id: 1,
        event: 1,
        url: "http://a/hook".to_string(),
        attempts: 0,
        created_ms: T0,
        next_ms: T0,
        state: DeliveryState::Pending,
        last_error: None,
    };
    assert_eq!(
        after_failure(&delivery, "answered 503".into(), true, T0, &options),
        Attempt::Retry {
            next_ms: T0 + 1000,
            error: "answered 503".into()
        }
    );
    delivery.attempts = 3;
    assert_eq!(
        after_failure(&delivery, "e".into(), true, T0 + 7000, &options),
        Attempt::Retry {
            next_ms: T0 + 7000 + 8000,
            error: "e".into()
        }
    );
    assert_eq!(
        after_failure(&delivery, "answered 404".into(), false, T0, &options),
        Attempt::Failed {
            error: "answered 404".into()
        }
    );
    delivery.attempts = 300;
    let day = 24 * 3600 * 1000;
    assert_eq!(
        after_failure(
            &delivery,
            "timed out".into(),
            true,
            T0 + day - 1000,
            &options
        ),
        Attempt::Failed {
            error: "gave up after 301 tries over 1day; the last: timed out".into()
        }
    );
}

#[test]
fn events_go_to_each_matching_webhook_url_once() {
    let mut lines = WebhookSpec::new("http://a/hook");
    lines.kinds = vec!["line_crossed".to_string()];
    let mut back = WebhookSpec::new("http://b/hook");
    back.streams = vec!["back".to_string()];
    let all = WebhookSpec::new("http://a/hook");
    let hooks = [lines, back, all];
    assert_eq!(targets(&hooks, "front", "line_crossed"), ["http://a/hook"]);
    assert_eq!(
        targets(&hooks, "back", "loitered"),
        ["http://b/hook", "http://a/hook"]
    );
    assert!(targets(&[], "back", "loitered").is_empty());
}

#[test]
fn the_mqtt_queue_drops_its_oldest_when_full_and_counts_them() {
    let spec = MqttSpec::new("127.0.0.1", 1883);
    let options = PublisherOptions {
        queue: 3,
        ..PublisherOptions::default()
    };
    let publisher = Publisher::new(&spec, &options);
    for n in 0..5u8 {
        publisher.push(Message {
            topic: "t".to_string(),
            payload: vec![n],
            retain: false,
        });
    }
    let payloads: Vec<u8> = publisher.queued().iter().map(|m| m.payload[0]).collect();
    assert_eq!(payloads, [2, 3, 4]);
    let status = publisher.status();
    assert_eq!(
        (status.queued, status.dropped, status.connected),
        (3, 2, false)
    );
}

#[test]
fn a_stream_going_online_is_an_event_and_its_retained_status() {
    let mut spec = MqttSpec::new("127.0.0.1", 1883);
    spec.prefix = "site/cams".to_string();
    let publisher = Publisher::new(&spec, &PublisherOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let mut db = VideoDb::open(dir.path()).unwrap();
    let online = db
        .insert_event(&NewEvent::new(T0, "front", EventKind::StreamOnline))
        .unwrap();
    let object = db.start_object("front", "person", None, T0).unwrap();
    let mut started = NewEvent::new(T0, "front", EventKind::ObjectStarted);
    started.object = Some(object);
    let started = db.insert_event(&started).unwrap();
    publisher.event(&online);
    publisher.event(&started);
    let queued: Vec<(String, bool)> = publisher
        .queued()
        .into_iter()
        .map(|m| (m.topic, m.retain))
        .collect();
    assert_eq!(
        queued,
        [
            ("site/cams/front/events".to_string(), false),
            ("site/cams/front/status".to_string(), true),
            ("site/cams/front/events".to_string(), false),
        ]
    );
    assert_eq!(publisher.queued()[1].payload, b"online");
    let json: serde_json::Value = serde_json::from_slice(&publisher.queued()[0].payload).unwrap();
    assert_eq!(json, serde_json::to_value(&online).unwrap());
}

#[test]
fn a_connection_that_dies_leaves_the_last_will_offline() {
    let (_broker, port) = broker();
    let subscriber = Subscriber::start(port);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (_stopping, stopping) = tokio::sync::watch::channel(false);
    let spec = MqttSpec::new("127.0.0.1", port);
    let publisher = runtime.block_on(async { Publisher::start(&spec, quick().mqtt, stopping) });
    let start = Instant::now();
    while !subscriber.has(|l| l == "flowers/video/status online") {
        assert!(
            start.elapsed() < DEADLINE,
            "never online: {:?}",
            publisher.status()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The runtime goes with the connection, which is closed without a DISCONNECT: the broker
    // publishes the will.
    drop(runtime);
    while !subscriber.has(|l| l == "flowers/video/status offline") {
        assert!(
            start.elapsed() < DEADLINE,
            "no will: {:#?}",
            subscriber.lines()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

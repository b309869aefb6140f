//! The video service's HTTP API, every route under a configurable prefix (the gateway routes
//! `/video` to this service without stripping it). Errors are the project's `{code, message}`
//! JSON with a 4xx status for the caller's mistakes.
//!
//! (`/healthz` is the binary's, as for every engine.)
//! - `GET  /v1/streams`, `GET|PUT|DELETE /v1/streams/{name}` (PUT takes the keys of a
//!   `[video.streams.NAME]` table as JSON; streams declared in the file answer 409)
//! - `GET  /v1/events?since=&until=&stream=&kind=&class=&zone=&after=&limit=&follow=`
//!   (times in ms since the epoch, `until` exclusive; the newest `limit` events, oldest first,
//!   unless `after` or `since` says where to start; `follow=true`: then server-sent events as
//!   they happen, resumable with `Last-Event-ID`)
//! - `GET  /v1/events/{id}`, `GET /v1/objects/{id}`, `GET /v1/objects/{id}/snapshot.jpg`
//! - `GET  /v1/deliveries`: webhook deliveries pending, delivered and failed (the latest
//!   failures with why), and the MQTT connection's state

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use crate::db::{Event, EventKind, EventQuery};
use crate::service::{ServiceError, VideoService};

/// The most events one request returns.
pub const MAX_EVENTS: usize = 1000;
const DEFAULT_EVENTS: usize = 100;

/// A failed request: its status, a stable code and a message for people.
#[derive(Debug)]
pub struct Failure {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Failure {
    pub(crate) fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> Failure {
        Failure {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn bad(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub(crate) fn internal(error: impl std::fmt::Display) -> Failure {
        Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            error.to_string(),
        )
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"code": self.code, "message": self.message})),
        )
            .into_response()
    }
}

impl From<ServiceError> for Failure {
    fn from(error: ServiceError) -> Failure {
        match error {
            ServiceError::Declared(_) => {
                Failure::new(StatusCode::CONFLICT, "declared_in_file", error.to_string())
            }
            ServiceError::NotFound(_) => {
                Failure::new(StatusCode::NOT_FOUND, "not_found", error.to_string())
            }
            ServiceError::Db(error) => Failure::internal(error),
            ServiceError::NoRuntime => Failure::internal(error),
        }
    }
}

type Service = Arc<VideoService>;

/// The router, every route under `prefix` (e.g. `/video`; empty for none).
pub fn router(service: Service, prefix: &str) -> Router {
    let p = prefix.trim_end_matches('/');
    Router::new()
        .route(&format!("{p}/v1/streams"), get(list_streams))
        .route(
            &format!("{p}/v1/streams/{{name}}"),
            get(get_stream).put(put_stream).delete(delete_stream),
        )
        .route(&format!("{p}/v1/events"), get(events))
        .route(&format!("{p}/v1/events/{{id}}"), get(get_event))
        .route(&format!("{p}/v1/objects/{{id}}"), get(get_object))
        .route(&format!("{p}/v1/deliveries"), get(deliveries))
        .route(
            &format!("{p}/v1/objects/{{id}}/snapshot.jpg"),
            get(object_snapshot),
        )
        .merge(crate::archive::http::routes(p))
        .with_state(service)
}

async fn deliveries(State(service): State<Service>) -> Result<Response, Failure> {
    let view = tokio::task::spawn_blocking(move || service.deliveries())
        .await
        .map_err(Failure::internal)??;
    Ok(Json(view).into_response())
}

async fn list_streams(State(service): State<Service>) -> Response {
    Json(json!({"streams": service.streams(), "detector": service.detector()})).into_response()
}

async fn get_stream(
    State(service): State<Service>,
    Path(name): Path<String>,
) -> Result<Response, Failure> {
    let view = service
        .stream(&name)
        .ok_or_else(|| Failure::from(ServiceError::NotFound(name)))?;
    Ok(Json(view).into_response())
}

async fn put_stream(
    State(service): State<Service>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    let body = body.map_err(|rejection| Failure::bad(rejection.body_text()))?;
    let json: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|error| Failure::bad(format!("the body is not JSON: {error}")))?;
    let spec = config::video_stream_from_json(&name, &json).map_err(|error| {
        let problems: Vec<String> = error.problems.iter().map(ToString::to_string).collect();
        Failure::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_stream",
            problems.join("; "),
        )
    })?;
    let created = tokio::task::spawn_blocking({
        let service = Arc::clone(&service);
        let name = name.clone();
        move || service.put_stream(&name, spec)
    })
    .await
    .map_err(Failure::internal)??;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let view = service.stream(&name);
    Ok((status, Json(view)).into_response())
}

async fn delete_stream(
    State(service): State<Service>,
    Path(name): Path<String>,
) -> Result<Response, Failure> {
    tokio::task::spawn_blocking(move || service.remove_stream(&name))
        .await
        .map_err(Failure::internal)??;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `/v1/events`' query, every value checked by hand for a clear message.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsParams {
    since: Option<String>,
    until: Option<String>,
    stream: Option<String>,
    kind: Option<String>,
    class: Option<String>,
    zone: Option<String>,
    after: Option<String>,
    limit: Option<String>,
    follow: Option<String>,
}

fn integer(name: &str, value: &Option<String>) -> Result<Option<i64>, Failure> {
    value
        .as_deref()
        .map(|text| {
            text.trim().parse::<i64>().map_err(|_| {
                Failure::bad(format!(
                    "{name}: expected an integer (milliseconds since the epoch for times, an \
                     event id for after), got {text:?}"
                ))
            })
        })
        .transpose()
}

impl EventsParams {
    fn query(&self, last_event_id: Option<i64>) -> Result<(EventQuery, bool), Failure> {
        let limit = match integer("limit", &self.limit)? {
            None => DEFAULT_EVENTS,
            Some(n) if (1..=MAX_EVENTS as i64).contains(&n) => n as usize,
            Some(n) => {
                return Err(Failure::bad(format!(
                    "limit: expected 1..={MAX_EVENTS}, got {n}"
                )))
            }
        };
        let kind = self
            .kind
            .as_deref()
            .map(|k| k.parse::<EventKind>())
            .transpose()
            .map_err(|error| Failure::bad(format!("kind: {error}")))?;
        let follow = match self.follow.as_deref() {
            None | Some("false") | Some("0") => false,
            Some("true") | Some("1") | Some("") => true,
            Some(other) => {
                return Err(Failure::bad(format!(
                    "follow: expected true or false, got {other:?}"
                )))
            }
        };
        let query = EventQuery {
            since_ms: integer("since", &self.since)?,
            until_ms: integer("until", &self.until)?,
            stream: self.stream.clone(),
            kind,
            class: self.class.clone(),
            zone: self.zone.clone(),
            after_id: last_event_id.or(integer("after", &self.after)?),
            limit,
            newest: false,
        };
        // Without a point to resume from, a listing shows the latest events.
        let query = EventQuery {
            newest: query.after_id.is_none() && query.since_ms.is_none(),
            ..query
        };
        Ok((query, follow))
    }
}

fn matches(query: &EventQuery, event: &Event) -> bool {
    query.since_ms.is_none_or(|t| event.time_ms >= t)
        && query.until_ms.is_none_or(|t| event.time_ms < t)
        && query.stream.as_ref().is_none_or(|s| *s == event.stream)
        && query.kind.is_none_or(|k| k == event.kind)
        && query
            .class
            .as_ref()
            .is_none_or(|c| event.class.as_ref() == Some(c))
        && query
            .zone
            .as_ref()
            .is_none_or(|z| event.zone.as_ref() == Some(z))
}

async fn events(
    State(service): State<Service>,
    headers: HeaderMap,
    params: Result<Query<EventsParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Failure> {
    let Query(params) = params.map_err(|rejection| Failure::bad(rejection.body_text()))?;
    let last_event_id = match headers.get("last-event-id") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<i64>().ok())
                .ok_or_else(|| Failure::bad("Last-Event-ID: expected an event id"))?,
        ),
    };
    let (query, follow) = params.query(last_event_id)?;
    // Subscribe before reading the store, so that nothing stored in between is missed.
    let receiver = follow.then(|| service.subscribe());
    let stored = {
        let service = Arc::clone(&service);
        let query = query.clone();
        tokio::task::spawn_blocking(move || service.db().events(&query))
            .await
            .map_err(Failure::internal)?
            .map_err(Failure::internal)?
    };
    let Some(mut receiver) = receiver else {
        return Ok(Json(json!({"events": stored})).into_response());
    };
    let mut last = stored.last().map(|e| e.id).or(query.after_id).unwrap_or(0);
    let mut closing = service.closing();
    let (sender, events) = tokio::sync::mpsc::channel::<SseEvent>(64);
    tokio::spawn(async move {
        for event in stored {
            if sender.send(sse(&event)).await.is_err() {
                return;
            }
        }
        loop {
            let received = tokio::select! {
                received = receiver.recv() => received,
                _ = closing.wait_for(|closing| *closing) => return,
            };
            match received {
                Ok(event) => {
                    if event.id <= last || !matches(&query, &event) {
                        continue;
                    }
                    last = event.id;
                    if sender.send(sse(&event)).await.is_err() {
                        return;
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    // Too far behind: say so and end; the client resumes from the store.
                    let _ = sender
                        .send(SseEvent::default().event("lagged").data(format!(
                            "{missed} events were missed; reconnect with Last-Event-ID {last}"
                        )))
                        .await;
                    return;
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(events).map(Ok::<_, Infallible>);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

fn sse(event: &Event) -> SseEvent {
    SseEvent::default()
        .id(event.id.to_string())
        .event(event.kind.as_str())
        .json_data(event)
        .expect("an event serializes")
}

fn parse_id(text: &str) -> Result<i64, Failure> {
    text.parse::<i64>()
        .map_err(|_| Failure::bad(format!("expected a numeric id, got {text:?}")))
}

async fn get_event(
    State(service): State<Service>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let id = parse_id(&id)?;
    let event = tokio::task::spawn_blocking(move || service.db().event(id))
        .await
        .map_err(Failure::internal)?
        .map_err(Failure::internal)?
        .ok_or_else(|| {
            Failure::new(StatusCode::NOT_FOUND, "not_found", format!("no event {id}"))
        })?;
    Ok(Json(event).into_response())
}

async fn get_object(
    State(service): State<Service>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let id = parse_id(&id)?;
    let object = tokio::task::spawn_blocking(move || service.db().object(id))
        .await
        .map_err(Failure::internal)?
        .map_err(Failure::internal)?
        .ok_or_else(|| {
            Failure::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no object {id}"),
            )
        })?;
    Ok(Json(object).into_response())
}

async fn object_snapshot(
    State(service): State<Service>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let id = parse_id(&id)?;
    let bytes = tokio::task::spawn_blocking(move || {
        let db = service.db();
        let object = db.object(id).map_err(Failure::internal)?.ok_or_else(|| {
            Failure::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no object {id}"),
            )
        })?;
        let relative = object.snapshot.ok_or_else(|| {
            Failure::new(
                StatusCode::NOT_FOUND,
                "no_snapshot",
                format!("object {id} has no snapshot (yet: it is taken when the object ends)"),
            )
        })?;
        std::fs::read(db.snapshot_path(&relative)).map_err(|error| {
            Failure::new(
                StatusCode::NOT_FOUND,
                "no_snapshot",
                format!("object {id}'s snapshot is gone: {error}"),
            )
        })
    })
    .await
    .map_err(Failure::internal)??;
    Ok(([(header::CONTENT_TYPE, "image/jpeg")], bytes).into_response())
}

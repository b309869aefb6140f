use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::wrappers::ReceiverStream;
use utoipa::{IntoParams, OpenApi};

use api_types::{
    ActionResponse, AllocationInfo, ApiError, DeviceInfo, DevicesResponse, EventInfo,
    GpuProcessInfo, JobInfo, ModelDetail, ModelInfo, ProgressInfo, PromoteInfo, PromoteRequest,
    PromotionInfo, RegisterVersion, RegisteredInfo, ReportProgress, ResourcesInfo, RunInfo,
    ServerInfo, ServiceInfo, Telemetry, VersionInfo,
};
use api_types::{
    GatewayReport, GatewayRouteInfo, LatencyBucket, LatencyInfo, StatusClasses, TrafficInfo,
};
use domain::{DeviceKind, OwnerKind, RunId};
use store::{EventFilter, RunFilter, RunRecord, Store};

use crate::error::ApiFailure;
use crate::{convert, models, AppState};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Flowers control API",
        description = "Devices, services, jobs, runs, events and logs of one Flowers server. \
                       Bound to loopback by default. Errors are JSON `{code, message}`: \
                       4xx for the caller's mistakes, 5xx for Flowers' own."
    ),
    paths(
        status,
        video_config,
        devices,
        list_services,
        get_service,
        put_service,
        remove_service,
        reset_service,
        list_jobs,
        get_job,
        put_job,
        remove_job,
        start_job,
        reset_job,
        models::list_models,
        models::get_model,
        models::register_version,
        models::promote,
        models::rollback,
        list_runs,
        get_run,
        stop_run,
        report_progress,
        run_logs,
        events,
        openapi,
        crate::traffic::report,
        crate::traffic::metrics
    ),
    components(schemas(
        ApiError,
        ServerInfo,
        DevicesResponse,
        DeviceInfo,
        Telemetry,
        GpuProcessInfo,
        AllocationInfo,
        ResourcesInfo,
        ServiceInfo,
        JobInfo,
        ModelInfo,
        PromoteInfo,
        ModelDetail,
        VersionInfo,
        PromotionInfo,
        RegisterVersion,
        RegisteredInfo,
        PromoteRequest,
        RunInfo,
        ProgressInfo,
        ReportProgress,
        EventInfo,
        ActionResponse,
        GatewayReport,
        GatewayRouteInfo,
        TrafficInfo,
        StatusClasses,
        LatencyInfo,
        LatencyBucket
    ))
)]
pub struct ApiDoc;

/// The OpenAPI document, pretty-printed; the copy checked into `docs/openapi.json` must match.
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/config/video", get(video_config))
        .route("/v1/devices", get(devices))
        .route("/v1/services", get(list_services))
        .route(
            "/v1/services/{name}",
            get(get_service).put(put_service).delete(remove_service),
        )
        .route("/v1/services/{name}/reset", post(reset_service))
        .route("/v1/jobs", get(list_jobs))
        .route(
            "/v1/jobs/{name}",
            get(get_job).put(put_job).delete(remove_job),
        )
        .route("/v1/jobs/{name}/runs", post(start_job))
        .route("/v1/jobs/{name}/reset", post(reset_job))
        .route("/v1/models", get(models::list_models))
        .route("/v1/models/{name}", get(models::get_model))
        .route("/v1/models/{name}/versions", post(models::register_version))
        .route("/v1/models/{name}/promote", post(models::promote))
        .route("/v1/models/{name}/rollback", post(models::rollback))
        .route("/v1/runs", get(list_runs))
        .route("/v1/runs/{id}", get(get_run))
        .route("/v1/runs/{id}/stop", post(stop_run))
        .route("/v1/runs/{id}/progress", post(report_progress))
        .route("/v1/runs/{id}/logs", get(run_logs))
        .route("/v1/events", get(events))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/gateway", get(crate::traffic::report))
        .route("/metrics", get(crate::traffic::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found(method: Method, uri: Uri) -> ApiFailure {
    ApiFailure::not_found(format!("no such endpoint: {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiFailure {
    ApiFailure {
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: "method_not_allowed",
        message: format!("{} does not accept {method}", uri.path()),
    }
}

// Listed in its own document too: every route the router serves is described here.
#[utoipa::path(get, path = "/v1/openapi.json",
    responses((status = 200, description = "This OpenAPI document", content_type = "application/json", body = Object)))]
async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}

fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiFailure> {
    query.map(|Query(value)| value).map_err(|rejection| {
        ApiFailure::bad_request(format!("bad query string: {}", rejection.body_text()))
    })
}

/// Runs a store query off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    store: &Store,
    work: impl FnOnce(&Store) -> Result<T, store::StoreError> + Send + 'static,
) -> Result<T, ApiFailure> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || work(&store))
        .await
        .map_err(ApiFailure::internal)?
        .map_err(ApiFailure::from)
}

#[utoipa::path(get, path = "/v1/status", responses((status = 200, body = ServerInfo)))]
async fn status(State(state): State<AppState>) -> Json<ServerInfo> {
    Json((*state.info).clone())
}

/// The `[video]` table as the video service reads it at start: streams with their zones, lines
/// and masks (coordinates in [0, 1] of the frame), motion settings and retention. The file's
/// values are checked when Flowers starts; this is the result, every default filled in.
#[utoipa::path(get, path = "/v1/config/video", responses((status = 200, body = Object)))]
async fn video_config(State(state): State<AppState>) -> Json<domain::VideoConfig> {
    Json((*state.video).clone())
}

#[utoipa::path(get, path = "/v1/devices", responses((status = 200, body = DevicesResponse)))]
async fn devices(State(state): State<AppState>) -> Result<Json<DevicesResponse>, ApiFailure> {
    let view = state.orchestrator.view();
    let gpus = state.gpus.clone();
    // NVML calls block; keep them off the async threads.
    let readings = tokio::task::spawn_blocking(move || gpus.telemetry())
        .await
        .map_err(ApiFailure::internal)?;
    let source = match state.gpus.status() {
        gpu::GpuStatus::Nvml { .. } => "nvml",
        gpu::GpuStatus::Fake { .. } => "fake",
        gpu::GpuStatus::Unavailable { .. } => "none",
    };
    let devices = view
        .devices
        .iter()
        .map(|device| {
            let on_it: Vec<&RunRecord> = view
                .runs
                .iter()
                .filter(|r| r.device.as_ref() == Some(&device.id))
                .collect();
            let allocated_vram_bytes = device.memory_total.map(|total| {
                on_it
                    .iter()
                    .map(|r| r.vram_reserved.map_or(total.bytes(), |v| v.bytes()))
                    .sum::<u64>()
                    .min(total.bytes())
            });
            let usage = view.device_usage.devices.get(&device.id);
            let reading = readings.iter().find(|(id, _)| id == &device.id);
            let (telemetry, telemetry_error) = match (device.kind, reading) {
                (DeviceKind::Cpu, _) => (None, None),
                (DeviceKind::Gpu, Some((_, Ok(reading)))) => {
                    (Some(convert::telemetry(reading, &view.runs)), None)
                }
                (DeviceKind::Gpu, Some((_, Err(error)))) => (None, Some(error.clone())),
                (DeviceKind::Gpu, None) => (None, Some("no reading from NVML".to_string())),
            };
            DeviceInfo {
                id: device.id.to_string(),
                kind: convert::kind(device.kind),
                index: device.index,
                name: device.name.clone(),
                uuid: device.uuid.clone(),
                memory_total_bytes: device.memory_total.map(|m| m.bytes()),
                telemetry,
                telemetry_error,
                allocations: on_it
                    .iter()
                    .map(|r| AllocationInfo {
                        run: r.id.to_string(),
                        owner: r.owner.name.to_string(),
                        vram_bytes: r.vram_reserved.map(|v| v.bytes()),
                        vram_used_bytes: usage
                            .map(|u| u.runs.get(&r.id).copied().unwrap_or_default().bytes()),
                    })
                    .collect(),
                allocated_vram_bytes,
                foreign_vram_bytes: usage.map(|u| u.foreign.bytes()),
            }
        })
        .collect();
    Ok(Json(DevicesResponse {
        gpu_source: source.to_string(),
        gpu_status: view.gpu_status.clone(),
        devices,
    }))
}

#[utoipa::path(get, path = "/v1/services", responses((status = 200, body = [ServiceInfo])))]
async fn list_services(State(state): State<AppState>) -> Json<Vec<ServiceInfo>> {
    let view = state.orchestrator.view();
    Json(
        view.services
            .iter()
            .map(|s| convert::service(s, &view.runs))
            .collect(),
    )
}

#[utoipa::path(get, path = "/v1/services/{name}",
    params(("name" = String, Path, description = "Service name")),
    responses((status = 200, body = ServiceInfo), (status = 404, body = ApiError)))]
async fn get_service(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ServiceInfo>, ApiFailure> {
    let view = state.orchestrator.view();
    view.services
        .iter()
        .find(|s| s.spec.name.as_str() == name)
        .map(|s| Json(convert::service(s, &view.runs)))
        .ok_or_else(|| ApiFailure::not_found(format!("no service is named {name:?}")))
}

/// The JSON form of a `[services.NAME]` or `[jobs.NAME]` table, checked like the file.
fn run_time_spec(body: Result<Bytes, BytesRejection>) -> Result<serde_json::Value, ApiFailure> {
    models::json_body(body, r#"{"command": ["python3", "/abs/app.py"]}"#)
}

fn config_problems(error: config::ConfigError) -> ApiFailure {
    ApiFailure::bad_request(error.to_string())
}

#[utoipa::path(put, path = "/v1/services/{name}",
    description = "Adds a service at run time, or replaces the spec of one added earlier (its replicas are \
                   then replaced blue/green). The body is a JSON object with the keys of a `[services.NAME]` \
                   table of flowers.toml (`workdir` absolute). It is kept across restarts. A name the \
                   configuration file declares, or a job's, is a conflict.",
    params(("name" = String, Path, description = "Service name")),
    request_body(content = Object, description = "The keys of a `[services.NAME]` table, as JSON"),
    responses((status = 200, body = ActionResponse), (status = 400, body = ApiError), (status = 409, body = ApiError)))]
async fn put_service(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ActionResponse>, ApiFailure> {
    let spec = config::service_from_json(&name, &run_time_spec(body)?).map_err(config_problems)?;
    let routed = !spec.routes.is_empty();
    let message = state.orchestrator.put_service(spec).await?;
    // Answer once the gateway routes it: a request sent right after the answer is held for a
    // replica, not refused as unrouted.
    gateway_settled(&state, &name, routed).await;
    Ok(Json(ActionResponse { message, run: None }))
}

/// Waits (briefly) until the gateway's table has (or no longer has) the service's routes; the
/// table follows the orchestrator's published view a moment after a change.
async fn gateway_settled(state: &AppState, service: &str, routed: bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        let active = state
            .gateway
            .report()
            .routes
            .iter()
            .any(|route| route.service == service && route.active);
        if active == routed {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[utoipa::path(delete, path = "/v1/services/{name}",
    description = "Removes a service added at run time: its routes stop taking new requests at once, and its \
                   replicas are stopped once their requests in flight have finished.",
    params(("name" = String, Path, description = "Service name")),
    responses((status = 202, body = ActionResponse), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn remove_service(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<ActionResponse>), ApiFailure> {
    remove(state, name, OwnerKind::Service).await
}

async fn remove(
    state: AppState,
    name: String,
    kind: OwnerKind,
) -> Result<(StatusCode, Json<ActionResponse>), ApiFailure> {
    let view = state.orchestrator.view();
    let (what, other) = match kind {
        OwnerKind::Service => (
            "service",
            view.jobs.iter().any(|j| j.spec.name.as_str() == name),
        ),
        OwnerKind::Job => (
            "job",
            view.services.iter().any(|s| s.spec.name.as_str() == name),
        ),
    };
    if other {
        return Err(ApiFailure::not_found(format!(
            "no {what} is named {name:?} (there is one of the other kind)"
        )));
    }
    let message = state.orchestrator.remove(&name).await?;
    // Answer once the gateway no longer routes it: a request sent after the answer is
    // unrouted, not sent to a replica being drained.
    if kind == OwnerKind::Service {
        gateway_settled(&state, &name, false).await;
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(ActionResponse { message, run: None }),
    ))
}

#[utoipa::path(post, path = "/v1/services/{name}/reset",
    description = "Clears a crash loop and the failure count so Flowers starts the service again.",
    params(("name" = String, Path, description = "Service name")),
    responses((status = 200, body = ActionResponse), (status = 404, body = ApiError)))]
async fn reset_service(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ActionResponse>, ApiFailure> {
    if !state
        .orchestrator
        .view()
        .services
        .iter()
        .any(|s| s.spec.name.as_str() == name)
    {
        return Err(ApiFailure::not_found(format!(
            "no service is named {name:?}"
        )));
    }
    let message = state.orchestrator.reset(&name).await?;
    Ok(Json(ActionResponse { message, run: None }))
}

#[utoipa::path(get, path = "/v1/jobs", responses((status = 200, body = [JobInfo])))]
async fn list_jobs(State(state): State<AppState>) -> Json<Vec<JobInfo>> {
    Json(
        state
            .orchestrator
            .view()
            .jobs
            .iter()
            .map(convert::job)
            .collect(),
    )
}

#[utoipa::path(put, path = "/v1/jobs/{name}",
    description = "Adds a job at run time, or replaces the spec of one added earlier that is not running. The body \
                   is a JSON object with the keys of a `[jobs.NAME]` table of flowers.toml (`workdir` absolute); \
                   with `autostart` it starts at once. It is kept across restarts.",
    params(("name" = String, Path, description = "Job name")),
    request_body(content = Object, description = "The keys of a `[jobs.NAME]` table, as JSON"),
    responses((status = 200, body = ActionResponse), (status = 400, body = ApiError), (status = 409, body = ApiError)))]
async fn put_job(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ActionResponse>, ApiFailure> {
    let spec = config::job_from_json(&name, &run_time_spec(body)?).map_err(config_problems)?;
    let message = state.orchestrator.put_job(spec).await?;
    Ok(Json(ActionResponse { message, run: None }))
}

#[utoipa::path(delete, path = "/v1/jobs/{name}",
    description = "Removes a job added at run time; its Run, if any, is stopped gracefully (SIGTERM, then its \
                   grace period to checkpoint).",
    params(("name" = String, Path, description = "Job name")),
    responses((status = 202, body = ActionResponse), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn remove_job(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<ActionResponse>), ApiFailure> {
    remove(state, name, OwnerKind::Job).await
}

#[utoipa::path(get, path = "/v1/jobs/{name}",
    params(("name" = String, Path, description = "Job name")),
    responses((status = 200, body = JobInfo), (status = 404, body = ApiError)))]
async fn get_job(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<JobInfo>, ApiFailure> {
    state
        .orchestrator
        .view()
        .jobs
        .iter()
        .find(|j| j.spec.name.as_str() == name)
        .map(|j| Json(convert::job(j)))
        .ok_or_else(|| ApiFailure::not_found(format!("no job is named {name:?}")))
}

#[utoipa::path(post, path = "/v1/jobs/{name}/runs",
    description = "Starts a Run of the job, or queues it with the reason it cannot be placed yet.",
    params(("name" = String, Path, description = "Job name")),
    responses((status = 202, body = ActionResponse), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn start_job(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<ActionResponse>), ApiFailure> {
    let (message, run) = match state.orchestrator.start_job(&name).await? {
        orchestrator::JobStarted::Run(run) => (
            format!("job {name} started as run {run}"),
            Some(run.to_string()),
        ),
        orchestrator::JobStarted::Waiting(reason) => {
            (format!("job {name} is waiting: {reason}"), None)
        }
    };
    Ok((StatusCode::ACCEPTED, Json(ActionResponse { message, run })))
}

#[utoipa::path(post, path = "/v1/jobs/{name}/reset",
    description = "Clears a failed job's state and failure count.",
    params(("name" = String, Path, description = "Job name")),
    responses((status = 200, body = ActionResponse), (status = 404, body = ApiError)))]
async fn reset_job(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ActionResponse>, ApiFailure> {
    if !state
        .orchestrator
        .view()
        .jobs
        .iter()
        .any(|j| j.spec.name.as_str() == name)
    {
        return Err(ApiFailure::not_found(format!("no job is named {name:?}")));
    }
    let message = state.orchestrator.reset(&name).await?;
    Ok(Json(ActionResponse { message, run: None }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct RunsQuery {
    /// Only Runs of this service or job.
    owner: Option<String>,
    /// Only Runs that have not ended.
    active: Option<bool>,
    /// At most this many, newest first (default 100, at most 10000).
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/v1/runs", params(RunsQuery),
    responses((status = 200, body = [RunInfo]), (status = 400, body = ApiError)))]
async fn list_runs(
    State(state): State<AppState>,
    raw: Result<Query<RunsQuery>, QueryRejection>,
) -> Result<Json<Vec<RunInfo>>, ApiFailure> {
    let q = query(raw)?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 10_000 {
        return Err(ApiFailure::bad_request(format!(
            "limit: expected 1..=10000, got {limit}"
        )));
    }
    let filter = RunFilter {
        owner: q.owner,
        active_only: q.active.unwrap_or(false),
        limit: Some(limit),
    };
    let runs = blocking(state.orchestrator.store(), move |s| s.runs(&filter)).await?;
    Ok(Json(runs.iter().map(convert::run).collect()))
}

async fn find_run(state: &AppState, id: &str) -> Result<RunRecord, ApiFailure> {
    // The live copy is fresher than the store for a Run still going.
    if let Some(record) = state
        .orchestrator
        .view()
        .runs
        .iter()
        .find(|r| r.id.as_str() == id)
    {
        return Ok(record.clone());
    }
    let run_id = RunId(id.to_string());
    blocking(state.orchestrator.store(), move |s| s.run(&run_id))
        .await?
        .ok_or_else(|| ApiFailure::not_found(format!("no run is named {id:?}")))
}

#[utoipa::path(get, path = "/v1/runs/{id}",
    params(("id" = String, Path, description = "Run id, e.g. web-12")),
    responses((status = 200, body = RunInfo), (status = 404, body = ApiError)))]
async fn get_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RunInfo>, ApiFailure> {
    Ok(Json(convert::run(&find_run(&state, &id).await?)))
}

#[utoipa::path(post, path = "/v1/runs/{id}/stop",
    description = "Stops a Run gracefully (SIGTERM to its process group, SIGKILL after the grace period). \
                   A service replica is replaced; a job is not restarted.",
    params(("id" = String, Path, description = "Run id")),
    responses((status = 202, body = ActionResponse), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn stop_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<ActionResponse>), ApiFailure> {
    let message = state.orchestrator.stop_run(&RunId(id.clone())).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(ActionResponse {
            message,
            run: Some(id),
        }),
    ))
}

#[utoipa::path(post, path = "/v1/runs/{id}/progress",
    description = "A Run reports how far it has come (steps, total, metrics); the report replaces the one before \
                   and shows in `flowers ps` and on the Run. Only a Run that has not ended may report.",
    params(("id" = String, Path, description = "Run id")),
    request_body = ReportProgress,
    responses((status = 200, body = ActionResponse), (status = 400, body = ApiError),
              (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn report_progress(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ActionResponse>, ApiFailure> {
    let report: ReportProgress = crate::models::json_body(
        body,
        r#"{"step": 3, "total": 10, "metrics": {"loss": 0.4}}"#,
    )?;
    let progress = domain::Progress {
        step: report.step,
        total: report.total,
        metrics: report.metrics,
        updated_ms: 0,
    };
    state
        .orchestrator
        .report_progress(&RunId(id.clone()), progress)
        .await?;
    Ok(Json(ActionResponse {
        message: format!("progress of {id} recorded"),
        run: Some(id),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    /// Start with the last this many lines (default 200; 0 for none).
    tail: Option<usize>,
    /// Keep the response open and send new output as it is written, until the Run ends.
    follow: Option<bool>,
}

#[utoipa::path(get, path = "/v1/runs/{id}/logs", params(("id" = String, Path, description = "Run id"), LogsQuery),
    description = "The Run's combined stdout and stderr as text/plain; with follow=true the response streams.",
    responses((status = 200, content_type = "text/plain", body = String), (status = 404, body = ApiError),
        (status = 410, description = "The Run's logs were removed by retention ([logs] keep_runs)", body = ApiError)))]
async fn run_logs(
    State(state): State<AppState>,
    Path(id): Path<String>,
    raw: Result<Query<LogsQuery>, QueryRejection>,
) -> Result<Response, ApiFailure> {
    let q = query(raw)?;
    let record = find_run(&state, &id).await?;
    let dir = record.run_dir.clone();
    if record.ended_ms.is_some() && !dir.exists() {
        return Err(ApiFailure {
            status: StatusCode::GONE,
            code: "gone",
            message: format!(
                "the logs of run {id} were removed: only the newest Runs of each service or job \
                 keep their logs ([logs] keep_runs)"
            ),
        });
    }
    let lines = q.tail.unwrap_or(200);
    let follow = q.follow.unwrap_or(false);
    let read = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || {
            if follow {
                // One position for both, so that nothing written in between is lost.
                supervisor::logs::tail_and_follow(dir, lines).map(|(head, rest)| (head, Some(rest)))
            } else {
                supervisor::logs::tail(&dir, lines).map(|head| (head, None))
            }
        })
        .await
        .map_err(ApiFailure::internal)?
    };
    let (head, rest) = match read {
        Ok(read) => read,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => (String::new(), None),
        Err(error) => return Err(ApiFailure::internal(error)),
    };
    let text_plain = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    if !follow {
        return Ok((text_plain, head).into_response());
    }
    let first = futures::stream::once(async move { Ok::<_, std::io::Error>(head.into_bytes()) });
    let rest = match rest {
        Some(rest) => rest.boxed(),
        None => supervisor::logs::follow(dir, false).boxed(),
    };
    let body = Body::from_stream(first.chain(rest));
    Ok((text_plain, body).into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    /// Only events with a larger id (resume point; `Last-Event-ID` does the same).
    after: Option<i64>,
    /// Only events about this service or job.
    owner: Option<String>,
    /// Only events about this Run.
    run: Option<String>,
    /// At most this many (default 100, at most 10000). Without `after`, the newest ones.
    limit: Option<u32>,
    /// Stream as server-sent events (also chosen by `Accept: text/event-stream`).
    follow: Option<bool>,
}

#[utoipa::path(get, path = "/v1/events", params(EventsQuery),
    description = "Events in id order. As server-sent events (follow=true or Accept: text/event-stream) \
                   the backlog comes first, then new events as they happen; each SSE `id` is the event id.",
    responses((status = 200, body = [EventInfo]), (status = 400, body = ApiError)))]
async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    raw: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiFailure> {
    let q = query(raw)?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 10_000 {
        return Err(ApiFailure::bad_request(format!(
            "limit: expected 1..=10000, got {limit}"
        )));
    }
    let last_event_id = match headers.get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<i64>().ok())
                .ok_or_else(|| {
                    ApiFailure::bad_request("Last-Event-ID: expected an event id (an integer)")
                })?,
        ),
        None => None,
    };
    let after = q.after.or(last_event_id);
    let wants_stream = q.follow.unwrap_or(false)
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/event-stream"));
    let filter = EventFilter {
        after_id: after,
        owner: q.owner.clone(),
        run: q.run.clone(),
        limit: Some(limit),
        newest: after.is_none(),
    };
    if !wants_stream {
        let events = blocking(state.orchestrator.store(), move |s| s.events(&filter)).await?;
        return Ok(Json(events.iter().map(convert::event).collect::<Vec<_>>()).into_response());
    }

    // Subscribe before reading the backlog so nothing falls between the two.
    let mut live = state.orchestrator.subscribe_events();
    let backlog = blocking(state.orchestrator.store(), move |s| s.events(&filter)).await?;
    let (sender, receiver) = tokio::sync::mpsc::channel::<domain::Event>(256);
    let store = state.orchestrator.store().clone();
    let (owner, run) = (q.owner, q.run);
    tokio::spawn(async move {
        let matches = |event: &domain::Event| {
            owner
                .as_ref()
                .is_none_or(|o| event.owner.as_ref() == Some(o))
                && run.as_ref().is_none_or(|r| event.run.as_ref() == Some(r))
        };
        let mut last_sent = after.unwrap_or(0);
        for event in backlog {
            last_sent = event.id;
            if sender.send(event).await.is_err() {
                return;
            }
        }
        loop {
            let next = match live.recv().await {
                Ok(event) => vec![event],
                Err(RecvError::Lagged(_)) => {
                    // Too slow for the broadcast: catch up from the store instead.
                    let filter = EventFilter {
                        after_id: Some(last_sent),
                        limit: Some(10_000),
                        ..EventFilter::default()
                    };
                    let store = store.clone();
                    match tokio::task::spawn_blocking(move || store.events(&filter)).await {
                        Ok(Ok(events)) => events,
                        _ => return,
                    }
                }
                Err(RecvError::Closed) => return,
            };
            for event in next {
                if event.id <= last_sent {
                    continue;
                }
                last_sent = event.id;
                if matches(&event) && sender.send(event).await.is_err() {
                    return;
                }
            }
        }
    });
    let stream = ReceiverStream::new(receiver).map(|event| {
        let info = convert::event(&event);
        Ok::<_, Infallible>(
            SseEvent::default()
                .id(info.id.to_string())
                .event(info.kind.clone())
                .json_data(&info)
                .unwrap_or_default(),
        )
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

//! The archives' routes, under the service's prefix:
//! - `POST /v1/analyses` `{"paths": [...], "settings": {...}, "new": false}`: walks the paths
//!   (absolute, on the service's machine), fingerprints the files and records them, resuming
//!   the analysis with the same settings that shares files with them unless `new`; 201 for a
//!   new analysis, 200 for one resumed, with what was skipped and why.
//! - `GET /v1/analyses`, `GET /v1/analyses/{id}[?files=true]`: how far each has come;
//!   `DELETE /v1/analyses/{id}`: it, its results and pictures (409 while a Run works on it).
//! - `GET /v1/analyses/{id}/report?format=json|csv`: a row per object, rule event and failed
//!   file.
//! - `GET /v1/analyses/objects/{id}/snapshot.jpg`.
//! - For the job's Runs: `POST /v1/analyses/claim {"run"}` (the next file, or 204),
//!   `POST /v1/analyses/files/{id}/progress {"run", "frames", "frames_total"}`,
//!   `POST /v1/analyses/files/{id}/release {"run", "reason"}` and
//!   `POST /v1/analyses/files/{id}/result` (a [`FileResult`]); 409 when the file is not the
//!   Run's.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use super::store::{FileResult, REPORT_COLUMNS};
use crate::db::DbError;
use crate::http::Failure;
use crate::service::VideoService;

/// The largest file result accepted (its snapshots travel in it, base64).
pub const MAX_RESULT_BYTES: usize = 1 << 30;

type Service = Arc<VideoService>;

/// The routes, each under `p` (the prefix without a trailing slash).
pub fn routes(p: &str) -> Router<Service> {
    Router::new()
        .route(
            &format!("{p}/v1/analyses"),
            get(list_analyses).post(add_analysis),
        )
        .route(&format!("{p}/v1/analyses/claim"), post(claim))
        .route(
            &format!("{p}/v1/analyses/{{id}}"),
            get(get_analysis).delete(delete_analysis),
        )
        .route(&format!("{p}/v1/analyses/{{id}}/report"), {
            let prefix = p.to_string();
            get(move |service, id, params| report(service, id, params, prefix))
        })
        .route(
            &format!("{p}/v1/analyses/objects/{{id}}/snapshot.jpg"),
            get(snapshot),
        )
        .route(
            &format!("{p}/v1/analyses/files/{{id}}/progress"),
            post(progress),
        )
        .route(
            &format!("{p}/v1/analyses/files/{{id}}/release"),
            post(release),
        )
        .route(
            &format!("{p}/v1/analyses/files/{{id}}/result"),
            post(result).layer(DefaultBodyLimit::max(MAX_RESULT_BYTES)),
        )
}

fn db_failure(error: DbError) -> Failure {
    match error {
        DbError::NotFound { .. } => {
            Failure::new(StatusCode::NOT_FOUND, "not_found", error.to_string())
        }
        DbError::Conflict(_) => {
            Failure::new(StatusCode::CONFLICT, "not_claimed", error.to_string())
        }
        DbError::Invalid { .. } => Failure::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_result",
            error.to_string(),
        ),
        error => Failure::internal(error),
    }
}

fn parse_body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    example: &str,
) -> Result<T, Failure> {
    let body = body.map_err(|rejection| Failure::bad(rejection.body_text()))?;
    serde_json::from_slice(&body)
        .map_err(|error| Failure::bad(format!("the body: {error}; expected e.g. {example}")))
}

fn parse_id(text: &str) -> Result<i64, Failure> {
    text.parse::<i64>()
        .map_err(|_| Failure::bad(format!("expected a numeric id, got {text:?}")))
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Failure> + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(Failure::internal)?
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAnalysis {
    paths: Vec<String>,
    #[serde(default)]
    settings: serde_json::Map<String, serde_json::Value>,
    /// Start a new analysis even if one with these settings has these files.
    #[serde(default)]
    new: bool,
}

async fn add_analysis(
    State(service): State<Service>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    let request: NewAnalysis = parse_body(
        body,
        r#"{"paths": ["/media/usb0/recordings"], "settings": {"fps": 5, "lines": {"door": {"from": [0.5, 0], "to": [0.5, 1]}}}}"#,
    )?;
    if request.paths.is_empty() {
        return Err(Failure::bad("paths: give at least one file or folder"));
    }
    if request.settings.contains_key("url") {
        return Err(Failure::bad(
            "settings.url: an analysis takes its files from paths, not a url",
        ));
    }
    if let Some(relative) = request.paths.iter().find(|p| !p.starts_with('/')) {
        return Err(Failure::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_paths",
            super::WalkError::Relative(relative.clone()).to_string(),
        ));
    }
    let mut settings = request.settings.clone();
    settings.insert("url".to_string(), json!(request.paths[0]));
    let mut spec = config::video_stream_from_json("analysis", &serde_json::Value::Object(settings))
        .map_err(|error| {
            let problems: Vec<String> = error
                .problems
                .iter()
                .map(|p| {
                    p.to_string()
                        .replacen("request body: ", "settings.", 1)
                        .replace("`url`, ", "")
                })
                .collect();
            Failure::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_settings",
                problems.join("; "),
            )
        })?;
    spec.url = String::new();
    // The service's `[video.motion]` goes with the settings: the job finds motion as the
    // streams do, and an analysis made with other motion settings is another analysis.
    let mut settings = serde_json::to_value(&spec).expect("a stream serialises");
    settings["motion"] = serde_json::to_value(service.motion()).expect("motion serialises");
    let canonical = settings.to_string();
    let paths: Vec<PathBuf> = request.paths.iter().map(PathBuf::from).collect();
    let roots = request.paths.clone();
    let (view, resumed, skipped) = blocking(move || {
        // Reading the drive takes a while for many files: the store is not locked meanwhile.
        let walk = super::walk(&paths).map_err(|error| {
            Failure::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad_paths",
                error.to_string(),
            )
        })?;
        let (view, resumed) = service
            .db()
            .add_analysis(
                &canonical,
                &roots,
                &walk.files,
                request.new,
                domain::now_ms(),
            )
            .map_err(db_failure)?;
        Ok((view, resumed, walk.skipped))
    })
    .await?;
    let status = if resumed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(json!({"analysis": view, "resumed": resumed, "skipped": skipped})),
    )
        .into_response())
}

async fn list_analyses(State(service): State<Service>) -> Result<Response, Failure> {
    let views =
        blocking(move || service.db().analyses(domain::now_ms()).map_err(db_failure)).await?;
    Ok(Json(json!({"analyses": views})).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnalysisParams {
    files: Option<bool>,
}

async fn get_analysis(
    State(service): State<Service>,
    Path(id): Path<String>,
    params: Result<Query<AnalysisParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Failure> {
    let id = parse_id(&id)?;
    let Query(params) = params.map_err(|rejection| Failure::bad(rejection.body_text()))?;
    let answer = blocking(move || {
        let db = service.db();
        let now = domain::now_ms();
        let view = db
            .analysis(id, now)
            .map_err(db_failure)?
            .ok_or_else(|| not_found(id))?;
        let mut answer = json!({"analysis": view});
        if params.files.unwrap_or(false) {
            answer["files"] = json!(db.analysis_files(id, now).map_err(db_failure)?);
        }
        Ok(answer)
    })
    .await?;
    Ok(Json(answer).into_response())
}

async fn delete_analysis(
    State(service): State<Service>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let id = parse_id(&id)?;
    blocking(move || {
        service
            .db()
            .delete_analysis(id, domain::now_ms())
            .map_err(db_failure)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn not_found(id: i64) -> Failure {
    Failure::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no analysis {id}"),
    )
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportParams {
    format: Option<String>,
}

async fn report(
    State(service): State<Service>,
    Path(id): Path<String>,
    params: Result<Query<ReportParams>, axum::extract::rejection::QueryRejection>,
    prefix: String,
) -> Result<Response, Failure> {
    let id = parse_id(&id)?;
    let Query(params) = params.map_err(|rejection| Failure::bad(rejection.body_text()))?;
    let csv = match params.format.as_deref().unwrap_or("json") {
        "json" => false,
        "csv" => true,
        other => {
            return Err(Failure::bad(format!(
                "format: expected json or csv, got {other:?}"
            )))
        }
    };
    let (view, files, rows) = blocking(move || {
        let db = service.db();
        let now = domain::now_ms();
        let view = db
            .analysis(id, now)
            .map_err(db_failure)?
            .ok_or_else(|| not_found(id))?;
        let files = db.analysis_files(id, now).map_err(db_failure)?;
        let rows = db
            .report(id, |object| {
                format!("{prefix}/v1/analyses/objects/{object}/snapshot.jpg")
            })
            .map_err(db_failure)?;
        Ok((view, files, rows))
    })
    .await?;
    if csv {
        let mut text = REPORT_COLUMNS.join(",");
        text.push_str("\r\n");
        for row in &rows {
            text.push_str(&row.csv());
            text.push_str("\r\n");
        }
        return Ok((
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"analysis-{id}.csv\""),
                ),
            ],
            text,
        )
            .into_response());
    }
    Ok(Json(json!({"analysis": view, "files": files, "rows": rows})).into_response())
}

async fn snapshot(
    State(service): State<Service>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let id = parse_id(&id)?;
    let bytes = blocking(move || {
        let db = service.db();
        let relative = db
            .archive_object_snapshot(id)
            .map_err(db_failure)?
            .ok_or_else(|| {
                Failure::new(
                    StatusCode::NOT_FOUND,
                    "no_snapshot",
                    format!("archive object {id} has no snapshot"),
                )
            })?;
        std::fs::read(db.archive_snapshot_path(&relative)).map_err(|error| {
            Failure::new(
                StatusCode::NOT_FOUND,
                "no_snapshot",
                format!("archive object {id}'s snapshot is gone: {error}"),
            )
        })
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "image/jpeg")], bytes).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunBody {
    run: String,
}

async fn claim(
    State(service): State<Service>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    let RunBody { run } = parse_body(body, r#"{"run": "RUN_ID"}"#)?;
    let claim = blocking(move || {
        service
            .db()
            .claim_file(&run, domain::now_ms())
            .map_err(db_failure)
    })
    .await?;
    Ok(match claim {
        Some(claim) => Json(claim).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProgressBody {
    run: String,
    frames: u64,
    #[serde(default)]
    frames_total: Option<u64>,
}

async fn progress(
    State(service): State<Service>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    let id = parse_id(&id)?;
    let body: ProgressBody = parse_body(body, r#"{"run": "RUN_ID", "frames": 120}"#)?;
    blocking(move || {
        service
            .db()
            .file_progress(
                id,
                &body.run,
                body.frames,
                body.frames_total,
                domain::now_ms(),
            )
            .map_err(db_failure)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseBody {
    run: String,
    #[serde(default)]
    reason: Option<String>,
}

async fn release(
    State(service): State<Service>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    let id = parse_id(&id)?;
    let body: ReleaseBody = parse_body(body, r#"{"run": "RUN_ID", "reason": "source gone"}"#)?;
    blocking(move || {
        service
            .db()
            .release_file(id, &body.run, body.reason.as_deref(), domain::now_ms())
            .map_err(db_failure)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn result(
    State(service): State<Service>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    let id = parse_id(&id)?;
    let result: FileResult = parse_body(
        body,
        r#"{"run": "RUN_ID", "frames": 250, "objects": [], "events": []}"#,
    )?;
    let file = blocking(move || {
        // Decoded before the store is locked.
        let snapshots = super::work::decode_snapshots(&result).map_err(|message| {
            Failure::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_result", message)
        })?;
        service
            .db()
            .finish_file(id, &result, &snapshots, domain::now_ms())
            .map_err(db_failure)
    })
    .await?;
    Ok(Json(file).into_response())
}

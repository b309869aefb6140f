//! Models, their versions and promotions: read from the published view and the store, changed
//! only through the orchestrator's handle (which copies a registered version's files, applies
//! the model's promotion policy and retention, and moves its services to the promoted one).

use std::path::PathBuf;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::de::DeserializeOwned;

use api_types::{
    ActionResponse, ApiError, ModelDetail, ModelInfo, PromoteRequest, RegisterVersion,
    RegisteredInfo,
};
use domain::RunId;
use orchestrator::{ModelView, Registration};

use crate::error::ApiFailure;
use crate::routes::blocking;
use crate::{convert, AppState};

fn find_model(state: &AppState, name: &str) -> Result<ModelView, ApiFailure> {
    state
        .orchestrator
        .view()
        .models
        .iter()
        .find(|m| m.spec.name.as_str() == name)
        .cloned()
        .ok_or_else(|| ApiFailure::not_found(format!("no model is named {name:?}")))
}

/// A JSON body, strictly: what is wrong is said with where it is (`metrics.loss: invalid
/// type: string "low", expected f64 at line 1 column 40`). Any content type is accepted, so a
/// `curl -d` without a header works too.
pub(crate) fn json_body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    example: &str,
) -> Result<T, ApiFailure> {
    let bytes = body.map_err(|rejection| ApiFailure {
        status: rejection.status(),
        code: if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            "too_large"
        } else {
            "bad_request"
        },
        message: format!("request body: {}", rejection.body_text()),
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiFailure::bad_request(format!(
            "request body: expected JSON like {example}, got nothing"
        )));
    }
    let bad =
        |error: &dyn std::fmt::Display| ApiFailure::bad_request(format!("request body: {error}"));
    let mut json = serde_json::Deserializer::from_slice(&bytes);
    let value = serde_path_to_error::deserialize(&mut json).map_err(|e| bad(&e))?;
    json.end().map_err(|e| bad(&e))?;
    Ok(value)
}

#[utoipa::path(get, path = "/v1/models",
    description = "Every model: declared in `[models.NAME]`, named by a service or job, or imported.",
    responses((status = 200, body = [ModelInfo])))]
pub(crate) async fn list_models(
    State(state): State<AppState>,
) -> Result<Json<Vec<ModelInfo>>, ApiFailure> {
    let view = state.orchestrator.view();
    let names: Vec<String> = view
        .models
        .iter()
        .map(|m| m.spec.name.to_string())
        .collect();
    let versions: Vec<Vec<store::VersionRecord>> =
        blocking(state.orchestrator.store(), move |store| {
            names.iter().map(|name| store.versions(name)).collect()
        })
        .await?;
    Ok(Json(
        view.models
            .iter()
            .zip(&versions)
            .map(|(model, versions)| convert::model(model, versions))
            .collect::<Vec<ModelInfo>>(),
    ))
}

#[utoipa::path(get, path = "/v1/models/{name}",
    params(("name" = String, Path, description = "Model name")),
    responses((status = 200, body = ModelDetail), (status = 404, body = ApiError)))]
pub(crate) async fn get_model(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ModelDetail>, ApiFailure> {
    let model = find_model(&state, &name)?;
    let (versions, promotions) = blocking(state.orchestrator.store(), move |store| {
        Ok((store.versions(&name)?, store.promotions(&name, 50)?))
    })
    .await?;
    Ok(Json(ModelDetail {
        model: convert::model(&model, &versions),
        versions: versions
            .iter()
            .map(|v| {
                let dir = state.orchestrator.version_dir(v.model.as_str(), v.version);
                convert::version(v, &dir)
            })
            .collect(),
        promotions: promotions.iter().map(convert::promotion).collect(),
    }))
}

#[utoipa::path(post, path = "/v1/models/{name}/versions", request_body = RegisterVersion,
    description = "Registers a new version from files on this machine (a job's checkpoint, or an \
                   import): they are copied under the data directory with a manifest, then the \
                   model's promotion policy and retention apply. A model not known yet is created \
                   with manual promotion. A crash while copying leaves no version behind.",
    params(("name" = String, Path, description = "Model name")),
    responses((status = 201, body = RegisteredInfo),
        (status = 400, description = "Bad JSON, a bad path or files, a non-finite metric, a bad model name", body = ApiError),
        (status = 404, description = "No such run", body = ApiError),
        (status = 409, description = "The run has ended", body = ApiError)))]
pub(crate) async fn register_version(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<RegisteredInfo>), ApiFailure> {
    let request: RegisterVersion = json_body(body, r#"{"path": "/absolute/path"}"#)?;
    if request.path.is_empty() {
        return Err(ApiFailure::bad_request(
            "path: expected the absolute path of a file or directory on this machine, got \"\"",
        ));
    }
    let registered = state
        .orchestrator
        .register_version(Registration {
            model: name,
            path: PathBuf::from(request.path),
            metrics: request.metrics,
            run: request.run.map(RunId),
        })
        .await?;
    let record = &registered.version;
    let dir = state
        .orchestrator
        .version_dir(record.model.as_str(), record.version);
    Ok((
        StatusCode::CREATED,
        Json(RegisteredInfo {
            version: convert::version(record, &dir),
            promoted: registered.promoted,
            note: registered.note,
        }),
    ))
}

#[utoipa::path(post, path = "/v1/models/{name}/promote", request_body = PromoteRequest,
    description = "Makes a version the promoted one; the services that follow the model move to it \
                   blue/green (a replica of it beside each old one, which is drained once it is ready). \
                   Promoting a failed version tries it again.",
    params(("name" = String, Path, description = "Model name")),
    responses((status = 200, body = ActionResponse),
        (status = 400, description = "Bad JSON, or a deleted version", body = ApiError),
        (status = 404, description = "No such model or version", body = ApiError)))]
pub(crate) async fn promote(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ActionResponse>, ApiFailure> {
    let request: PromoteRequest = json_body(body, r#"{"version": 3}"#)?;
    let message = state.orchestrator.promote(&name, request.version).await?;
    Ok(Json(ActionResponse { message, run: None }))
}

#[utoipa::path(post, path = "/v1/models/{name}/rollback",
    description = "Promotes again the version that was promoted before the current one.",
    params(("name" = String, Path, description = "Model name")),
    responses((status = 200, body = ActionResponse),
        (status = 400, description = "Nothing to roll back to, or its files were deleted", body = ApiError),
        (status = 404, description = "No such model", body = ApiError)))]
pub(crate) async fn rollback(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ActionResponse>, ApiFailure> {
    let message = state.orchestrator.rollback(&name).await?;
    Ok(Json(ActionResponse { message, run: None }))
}

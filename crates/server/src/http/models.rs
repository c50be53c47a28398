//! `/api/v2/models/*` (models.md §2–3): model records for every signed-in user; installing,
//! changing and removing models for administrators; the cover image for anyone.
//!
//! Route precedence (§ notes 11): the literal segments (`/i/bulk_delete`, `/install/huggingface`,
//! `/missing`, …) are separate routes, which axum always prefers over `{key}` and `{id}`.

use crate::http::body::{Body, Fields, FromBody};
use crate::http::error::{ApiError, ValidationIssue};
use crate::http::extract::{AdminUser, CurrentUser};
use crate::http::query::{QueryFields, RawQuery};
use crate::http::workflows::{image_response, missing_part, read_multipart};
use crate::service::models::{self as service, install, record, ListQuery};
use crate::service::AdminProof;
use crate::state::AppState;
use atelier_store::ModelOrder;
use axum::extract::{DefaultBodyLimit, Multipart, Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{any, get, post, put};
use axum::{Json, Router};
use serde_json::{json, Map, Value};

pub fn routes(max_upload: usize) -> Router<AppState> {
    const P: &str = "/api/v2/models";
    Router::new()
        .route(&format!("{P}/"), get(list))
        .route(P, any(crate::http::boards::redirect_to_slash))
        .route(&format!("{P}/missing"), get(missing))
        .route(&format!("{P}/get_by_attrs"), get(get_by_attrs))
        .route(&format!("{P}/get_by_hash"), get(get_by_hash))
        .route(&format!("{P}/i/bulk_delete"), post(bulk_delete))
        .route(&format!("{P}/i/bulk_reidentify"), post(bulk_reidentify))
        .route(
            &format!("{P}/i/{{key}}"),
            get(get_model).patch(update).delete(delete),
        )
        .route(&format!("{P}/i/{{key}}/reidentify"), post(reidentify))
        .route(
            &format!("{P}/i/{{key}}/image"),
            get(image)
                .patch(set_image)
                .delete(delete_image)
                .layer(DefaultBodyLimit::max(max_upload)),
        )
        .route(&format!("{P}/scan_folder"), get(scan_folder))
        .route(
            &format!("{P}/install"),
            post(install).get(list_jobs).delete(prune_jobs),
        )
        .route(
            &format!("{P}/install/huggingface"),
            get(install_huggingface),
        )
        .route(
            &format!("{P}/install/{{id}}"),
            get(get_job).delete(cancel_job),
        )
        .route(&format!("{P}/install/{{id}}/pause"), post(pause_job))
        .route(&format!("{P}/install/{{id}}/resume"), post(resume_job))
        .route(
            &format!("{P}/install/{{id}}/restart_failed"),
            post(restart_failed),
        )
        .route(
            &format!("{P}/install/{{id}}/restart_file"),
            post(restart_file),
        )
        .route(&format!("{P}/convert/{{key}}"), put(convert))
        .route(&format!("{P}/starter_models"), get(starter_models))
        .route(&format!("{P}/stats"), get(stats))
        .route(&format!("{P}/empty_model_cache"), post(empty_model_cache))
        .route(
            &format!("{P}/sync/orphaned"),
            get(list_orphans).delete(delete_orphans),
        )
}

fn models_json(state: &AppState, records: Vec<record::Record>) -> Json<Value> {
    let models: Vec<Value> = records
        .into_iter()
        .map(|r| service::present(state, r))
        .collect();
    Json(json!({ "models": models }))
}

const ORDERS: &[&str] = &[
    "default",
    "type",
    "base",
    "name",
    "format",
    "size",
    "created_at",
    "updated_at",
    "path",
];

fn order_of(name: &str) -> ModelOrder {
    match name {
        "default" => ModelOrder::Default,
        "type" => ModelOrder::Type,
        "base" => ModelOrder::Base,
        "format" => ModelOrder::Format,
        "size" => ModelOrder::Size,
        "created_at" => ModelOrder::CreatedAt,
        "updated_at" => ModelOrder::UpdatedAt,
        "path" => ModelOrder::Path,
        _ => ModelOrder::Name,
    }
}

/// Model records, filtered and sorted (`ModelsList`).
#[utoipa::path(get, path = "/api/v2/models/", tag = "models",
    params(("base_models" = Option<Vec<String>>, Query), ("model_type" = Option<String>, Query),
        ("model_name" = Option<String>, Query), ("model_format" = Option<String>, Query),
        ("order_by" = Option<String>, Query), ("direction" = Option<String>, Query)),
    responses((status = 200, body = Object), (status = 401), (status = 422)))]
pub async fn list(
    State(state): State<AppState>,
    _user: CurrentUser,
    raw: RawQuery,
) -> Result<Json<Value>, ApiError> {
    let mut q = QueryFields::new(&raw);
    let bases = q.optional_enum_list("base_models", record::BASES);
    let model_type = q.optional_enum("model_type", record::TYPES);
    let format = q.optional_enum("model_format", record::FORMATS);
    let name = q.optional_str("model_name", None);
    let order = q.optional_enum("order_by", ORDERS);
    let direction = q.optional_enum("direction", &["ASC", "DESC"]);
    q.finish()?;
    let query = ListQuery {
        bases: bases.flatten().unwrap_or_default(),
        model_type: model_type.flatten(),
        name: name.flatten(),
        format: format.flatten(),
        order: order_of(order.flatten().as_deref().unwrap_or("name")),
        descending: direction.flatten().as_deref() == Some("DESC"),
    };
    let records = service::list(&state, &query).await?;
    Ok(models_json(&state, records))
}

/// Records whose files are gone.
#[utoipa::path(get, path = "/api/v2/models/missing", tag = "models",
    responses((status = 200, body = Object), (status = 401)))]
pub async fn missing(
    State(state): State<AppState>,
    _user: CurrentUser,
) -> Result<Json<Value>, ApiError> {
    let records = service::missing(&state).await?;
    Ok(models_json(&state, records))
}

/// The first record with this name, type and base.
#[utoipa::path(get, path = "/api/v2/models/get_by_attrs", tag = "models",
    params(("name" = String, Query), ("type" = String, Query), ("base" = String, Query)),
    responses((status = 200, body = Object), (status = 401), (status = 404), (status = 422)))]
pub async fn get_by_attrs(
    State(state): State<AppState>,
    _user: CurrentUser,
    raw: RawQuery,
) -> Result<Json<Value>, ApiError> {
    let mut q = QueryFields::new(&raw);
    let name = q.required_str("name", None);
    let kind = q.required_str("type", None);
    let base = q.required_str("base", None);
    q.finish()?;
    let (Some(name), Some(kind), Some(base)) = (name, kind, base) else {
        return Err(ApiError::internal("validated query lost a field"));
    };
    let record = service::get_by_attrs(&state, &name, &kind, &base).await?;
    Ok(Json(service::present(&state, record)))
}

/// The first record with this hash.
#[utoipa::path(get, path = "/api/v2/models/get_by_hash", tag = "models",
    params(("hash" = String, Query)),
    responses((status = 200, body = Object), (status = 401), (status = 404), (status = 422)))]
pub async fn get_by_hash(
    State(state): State<AppState>,
    _user: CurrentUser,
    raw: RawQuery,
) -> Result<Json<Value>, ApiError> {
    let mut q = QueryFields::new(&raw);
    let hash = q.required_str("hash", None);
    q.finish()?;
    let hash = hash.unwrap_or_default();
    let record = service::get_by_hash(&state, &hash).await?;
    Ok(Json(service::present(&state, record)))
}

/// One record.
#[utoipa::path(get, path = "/api/v2/models/i/{key}", tag = "models",
    params(("key" = String, Path)),
    responses((status = 200, body = Object), (status = 401), (status = 404)))]
pub async fn get_model(
    State(state): State<AppState>,
    _user: CurrentUser,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = service::get(&state, &key).await?;
    Ok(Json(service::present(&state, record)))
}

/// A `ModelRecordChanges` body: any JSON object (unknown fields are ignored).
pub struct Changes(pub Map<String, Value>);

impl FromBody for Changes {
    fn from_fields(fields: &mut Fields<'_>) -> Option<Self> {
        fields.whole().as_object().cloned().map(Changes)
    }
}

/// `{"keys": [...]}`.
pub struct Keys(pub Vec<String>);

impl FromBody for Keys {
    fn from_fields(fields: &mut Fields<'_>) -> Option<Self> {
        fields.required_str_list("keys", 10_000, 1_000).map(Keys)
    }
}

/// Changes a record (administrators).
#[utoipa::path(patch, path = "/api/v2/models/i/{key}", tag = "models",
    params(("key" = String, Path)), request_body = Object,
    responses((status = 200, body = Object), (status = 401), (status = 403), (status = 404), (status = 409), (status = 422)))]
pub async fn update(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(key): Path<String>,
    Body(Changes(changes)): Body<Changes>,
) -> Result<Json<Value>, ApiError> {
    let record = service::update(&state, &AdminProof::from_admin(&admin), &key, &changes).await?;
    Ok(Json(service::present(&state, record)))
}

/// Unregisters a model, deleting its files when they are inside the models directory.
#[utoipa::path(delete, path = "/api/v2/models/i/{key}", tag = "models",
    params(("key" = String, Path)),
    responses((status = 204), (status = 401), (status = 403), (status = 404), (status = 409)))]
pub async fn delete(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(key): Path<String>,
) -> Result<StatusCode, ApiError> {
    service::delete(&state, &AdminProof::from_admin(&admin), &key).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Re-probes a model's files.
#[utoipa::path(post, path = "/api/v2/models/i/{key}/reidentify", tag = "models",
    params(("key" = String, Path)),
    responses((status = 200, body = Object), (status = 400), (status = 401), (status = 403), (status = 404), (status = 409)))]
pub async fn reidentify(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = service::reidentify(&state, &AdminProof::from_admin(&admin), &key).await?;
    Ok(Json(service::present(&state, record)))
}

/// Converts a single-file checkpoint to a diffusers folder; the converted model gets a new key.
#[utoipa::path(put, path = "/api/v2/models/convert/{key}", tag = "models",
    params(("key" = String, Path)),
    responses((status = 200, body = Object), (status = 400), (status = 401), (status = 403), (status = 409), (status = 424), (status = 500)))]
pub async fn convert(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = service::convert::convert(&state, &AdminProof::from_admin(&admin), &key).await?;
    Ok(Json(service::present(&state, record)))
}

fn failures(failed: Vec<(String, String)>) -> Vec<Value> {
    failed
        .into_iter()
        .map(|(key, error)| json!({"key": key, "error": error}))
        .collect()
}

/// Deletes several models; per-key failures are reported, not raised.
#[utoipa::path(post, path = "/api/v2/models/i/bulk_delete", tag = "models", request_body = Object,
    responses((status = 200, body = Object), (status = 401), (status = 403), (status = 422)))]
pub async fn bulk_delete(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Body(Keys(keys)): Body<Keys>,
) -> Json<Value> {
    let (deleted, failed) =
        service::bulk_delete(&state, &AdminProof::from_admin(&admin), &keys).await;
    Json(json!({"deleted": deleted, "failed": failures(failed)}))
}

/// Re-probes several models.
#[utoipa::path(post, path = "/api/v2/models/i/bulk_reidentify", tag = "models", request_body = Object,
    responses((status = 200, body = Object), (status = 401), (status = 403), (status = 422)))]
pub async fn bulk_reidentify(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Body(Keys(keys)): Body<Keys>,
) -> Json<Value> {
    let (succeeded, failed) =
        service::bulk_reidentify(&state, &AdminProof::from_admin(&admin), &keys).await;
    Json(json!({"succeeded": succeeded, "failed": failures(failed)}))
}

/// A model's cover image (public, like the reference).
#[utoipa::path(get, path = "/api/v2/models/i/{key}/image", tag = "models",
    params(("key" = String, Path)),
    responses((status = 200, content_type = "image/png"), (status = 404)))]
pub async fn image(
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    let bytes = service::image_bytes(&state, &key).await?;
    Ok(image_response(bytes, &key))
}

/// Sets a model's cover image (multipart `image`).
#[utoipa::path(patch, path = "/api/v2/models/i/{key}/image", tag = "models",
    params(("key" = String, Path)),
    responses((status = 200, body = Option<String>), (status = 401), (status = 403), (status = 404), (status = 409), (status = 415), (status = 422)))]
pub async fn set_image(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(key): Path<String>,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Json<Value>, ApiError> {
    let parts = read_multipart(multipart).await?;
    let Some(part) = parts.into_iter().find(|p| p.name == "image") else {
        return Err(missing_part("image"));
    };
    if !part
        .content_type
        .as_deref()
        .is_some_and(|ct| ct.to_ascii_lowercase().starts_with("image/"))
    {
        return Err(ApiError::UnsupportedMediaType("Not an image".to_owned()));
    }
    service::set_image(&state, &AdminProof::from_admin(&admin), &key, part.bytes).await?;
    Ok(Json(Value::Null))
}

/// Removes a model's cover image.
#[utoipa::path(delete, path = "/api/v2/models/i/{key}/image", tag = "models",
    params(("key" = String, Path)),
    responses((status = 204), (status = 401), (status = 403), (status = 404), (status = 409)))]
pub async fn delete_image(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(key): Path<String>,
) -> Result<StatusCode, ApiError> {
    service::delete_image(&state, &AdminProof::from_admin(&admin), &key).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Model files and folders below a server path.
#[utoipa::path(get, path = "/api/v2/models/scan_folder", tag = "models",
    params(("scan_path" = String, Query)),
    responses((status = 200, body = Object), (status = 400), (status = 401), (status = 403), (status = 500)))]
pub async fn scan_folder(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    raw: RawQuery,
) -> Result<Json<Value>, ApiError> {
    let mut q = QueryFields::new(&raw);
    let path = q.required_str("scan_path", None);
    q.finish()?;
    let path = path.unwrap_or_default();
    let found = service::scan_folder(&state, &AdminProof::from_admin(&admin), &path).await?;
    Ok(Json(Value::Array(
        found
            .into_iter()
            .map(|(path, is_installed)| json!({"path": path, "is_installed": is_installed}))
            .collect(),
    )))
}

/// Starts an install job (201 at once; progress arrives as admin socket events).
#[utoipa::path(post, path = "/api/v2/models/install", tag = "models",
    params(("source" = String, Query), ("inplace" = Option<bool>, Query), ("access_token" = Option<String>, Query)),
    request_body = Object,
    responses((status = 201, body = Object), (status = 401), (status = 403), (status = 409), (status = 415), (status = 422)))]
pub async fn install(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    raw: RawQuery,
    Body(Changes(changes)): Body<Changes>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let mut q = QueryFields::new(&raw);
    let source = q.required_str("source", None);
    let inplace = q.bool_or("inplace", false);
    let token = q.optional_str("access_token", None);
    q.finish()?;
    let job = install::start(
        &state,
        &AdminProof::from_admin(&admin),
        &source.unwrap_or_default(),
        inplace.unwrap_or(false),
        token.flatten(),
        changes,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(job.to_json())))
}

/// Hugging Face installs from a link (an HTML page, as in the reference).
#[utoipa::path(get, path = "/api/v2/models/install/huggingface", tag = "models",
    params(("source" = String, Query)),
    responses((status = 400, content_type = "text/html")))]
pub async fn install_huggingface(_admin: AdminUser) -> Response {
    let page = "<html><body><h1>Not supported</h1><p>This server cannot install from Hugging Face yet. Download the files and install them by path or URL.</p></body></html>";
    (StatusCode::BAD_REQUEST, Html(page)).into_response()
}

/// Every install job.
#[utoipa::path(get, path = "/api/v2/models/install", tag = "models",
    responses((status = 200, body = Object), (status = 401), (status = 403)))]
pub async fn list_jobs(State(state): State<AppState>, _admin: AdminUser) -> Json<Value> {
    Json(Value::Array(
        state
            .models
            .jobs
            .list()
            .iter()
            .map(|j| j.to_json())
            .collect(),
    ))
}

/// Drops finished jobs.
#[utoipa::path(delete, path = "/api/v2/models/install", tag = "models",
    responses((status = 204), (status = 401), (status = 403)))]
pub async fn prune_jobs(State(state): State<AppState>, _admin: AdminUser) -> StatusCode {
    state.models.jobs.prune();
    StatusCode::NO_CONTENT
}

/// `{id}` as FastAPI parses an int path parameter.
fn job_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::Validation(vec![ValidationIssue {
            kind: "int_parsing",
            loc: vec![json!("path"), json!("id")],
            msg: "Input should be a valid integer, unable to parse string as an integer".to_owned(),
            input: json!(raw),
            ctx: None,
        }])
    })
}

/// One install job.
#[utoipa::path(get, path = "/api/v2/models/install/{id}", tag = "models",
    params(("id" = i64, Path)),
    responses((status = 200, body = Object), (status = 401), (status = 403), (status = 404)))]
pub async fn get_job(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = job_id(&id)?;
    let slot = state
        .models
        .jobs
        .find(id)
        .ok_or_else(|| ApiError::NotFound(format!("No job with id {id} known")))?;
    Ok(Json(slot.snapshot().to_json()))
}

/// Cancels an install job (201 `null`; 415 for an unknown id, as in the reference).
#[utoipa::path(delete, path = "/api/v2/models/install/{id}", tag = "models",
    params(("id" = i64, Path)),
    responses((status = 201, body = Option<String>), (status = 401), (status = 403), (status = 415)))]
pub async fn cancel_job(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    install::cancel(&state, &AdminProof::from_admin(&admin), job_id(&id)?)?;
    Ok((StatusCode::CREATED, Json(Value::Null)))
}

type JobAction = fn(&AppState, &AdminProof, i64) -> Result<install::Job, ApiError>;

fn job_action(
    state: &AppState,
    admin: &AdminUser,
    id: &str,
    action: JobAction,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let job = action(state, &AdminProof::from_admin(&admin.0), job_id(id)?)?;
    Ok((StatusCode::CREATED, Json(job.to_json())))
}

/// Pauses a remote install.
#[utoipa::path(post, path = "/api/v2/models/install/{id}/pause", tag = "models",
    params(("id" = i64, Path)),
    responses((status = 201, body = Object), (status = 401), (status = 403), (status = 415)))]
pub async fn pause_job(
    State(state): State<AppState>,
    admin: AdminUser,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    job_action(&state, &admin, &id, install::pause)
}

/// Resumes a paused install.
#[utoipa::path(post, path = "/api/v2/models/install/{id}/resume", tag = "models",
    params(("id" = i64, Path)),
    responses((status = 201, body = Object), (status = 401), (status = 403), (status = 415)))]
pub async fn resume_job(
    State(state): State<AppState>,
    admin: AdminUser,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    job_action(&state, &admin, &id, install::resume)
}

/// Runs a failed or cancelled remote install again.
#[utoipa::path(post, path = "/api/v2/models/install/{id}/restart_failed", tag = "models",
    params(("id" = i64, Path)),
    responses((status = 201, body = Object), (status = 401), (status = 403), (status = 415)))]
pub async fn restart_failed(
    State(state): State<AppState>,
    admin: AdminUser,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    job_action(&state, &admin, &id, install::restart_failed)
}

/// Restarts one file of a remote install (single-file jobs: the whole job).
#[utoipa::path(post, path = "/api/v2/models/install/{id}/restart_file", tag = "models",
    params(("id" = i64, Path)), request_body = String,
    responses((status = 201, body = Object), (status = 401), (status = 403), (status = 415)))]
pub async fn restart_file(
    State(state): State<AppState>,
    admin: AdminUser,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    job_action(&state, &admin, &id, install::restart_failed)
}

/// The starter catalogue (empty: this server ships none yet).
#[utoipa::path(get, path = "/api/v2/models/starter_models", tag = "models",
    responses((status = 200, body = Object), (status = 401), (status = 403)))]
pub async fn starter_models(_admin: AdminUser) -> Json<Value> {
    Json(json!({"starter_models": [], "starter_bundles": {}}))
}

/// Model cache statistics (`null`: no model has been loaded by this process).
#[utoipa::path(get, path = "/api/v2/models/stats", tag = "models",
    responses((status = 200, body = Option<String>), (status = 401), (status = 403)))]
pub async fn stats(_admin: AdminUser) -> Json<Value> {
    Json(Value::Null)
}

/// Drops unlocked cached models.
#[utoipa::path(post, path = "/api/v2/models/empty_model_cache", tag = "models",
    responses((status = 200, body = Option<String>), (status = 401), (status = 403)))]
pub async fn empty_model_cache(_admin: AdminUser) -> Json<Value> {
    Json(Value::Null)
}

/// Folders of the models directory holding weights that no record points at.
#[utoipa::path(get, path = "/api/v2/models/sync/orphaned", tag = "models",
    responses((status = 200, body = Object), (status = 401), (status = 403)))]
pub async fn list_orphans(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
) -> Result<Json<Value>, ApiError> {
    let orphans = service::orphans(&state, &AdminProof::from_admin(&admin)).await?;
    Ok(Json(Value::Array(
        orphans
            .into_iter()
            .map(|o| json!({"path": o.path, "absolute_path": o.absolute_path, "files": o.files, "size_bytes": o.size_bytes}))
            .collect(),
    )))
}

/// `{"paths": [...]}`.
pub struct Paths(pub Vec<String>);

impl FromBody for Paths {
    fn from_fields(fields: &mut Fields<'_>) -> Option<Self> {
        fields.required_str_list("paths", 10_000, 4_096).map(Paths)
    }
}

/// Deletes orphaned folders (only ones the orphan scan reports).
#[utoipa::path(delete, path = "/api/v2/models/sync/orphaned", tag = "models", request_body = Object,
    responses((status = 200, body = Object), (status = 401), (status = 403), (status = 422)))]
pub async fn delete_orphans(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Body(Paths(paths)): Body<Paths>,
) -> Result<Json<Value>, ApiError> {
    let (deleted, errors) =
        service::delete_orphans(&state, &AdminProof::from_admin(&admin), &paths).await?;
    let errors: Map<String, Value> = errors.into_iter().map(|(p, e)| (p, json!(e))).collect();
    Ok(Json(json!({"deleted": deleted, "errors": errors})))
}

//! `/api/v1/style_presets/*` (workflows-and-state.md §3): prompt templates, their preview
//! images, and CSV/JSON import and CSV export for administrators.
//!
//! Create and update take multipart bodies: a `data` field holding the preset as a JSON
//! string, plus an optional `image` file. Bad `data` is a 400 `Invalid preset data` (not a
//! 422), as in the reference.

use crate::http::error::ApiError;
use crate::http::extract::{AdminUser, CurrentUser, MediaUser};
use crate::http::workflows::{image_response, missing_part, read_multipart, Part};
use crate::service::style_presets::{self as service, ImportFormat, PreviewUpload};
use crate::service::AdminProof;
use crate::state::AppState;
use atelier_domain::library::PresetType;
use atelier_store::{NewStylePreset, StylePresetRecord};
use axum::extract::{DefaultBodyLimit, Multipart, Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

pub fn routes(max_upload: usize) -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/style_presets/",
            get(list)
                .post(create)
                .layer(DefaultBodyLimit::max(max_upload)),
        )
        .route(
            "/api/v1/style_presets",
            any(crate::http::boards::redirect_to_slash),
        )
        .route(
            "/api/v1/style_presets/i/{style_preset_id}",
            get(get_preset)
                .patch(update)
                .delete(delete)
                .layer(DefaultBodyLimit::max(max_upload)),
        )
        .route(
            "/api/v1/style_presets/i/{style_preset_id}/image",
            get(image),
        )
        .route("/api/v1/style_presets/export", get(export))
        .route(
            "/api/v1/style_presets/import",
            post(import).layer(DefaultBodyLimit::max(max_upload)),
        )
}

/// `PresetData`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PresetData {
    pub positive_prompt: String,
    pub negative_prompt: String,
}

/// `StylePresetRecordWithImage`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StylePresetRecordWithImage {
    pub id: String,
    pub name: String,
    pub preset_data: PresetData,
    #[serde(rename = "type")]
    pub kind: String,
    pub is_public: bool,
    pub user_id: String,
    pub image: Option<String>,
}

async fn dto(state: &AppState, p: StylePresetRecord) -> StylePresetRecordWithImage {
    let image = service::image_url(state, &p.id).await;
    StylePresetRecordWithImage {
        id: p.id,
        name: p.name,
        preset_data: PresetData {
            positive_prompt: p.positive_prompt,
            negative_prompt: p.negative_prompt,
        },
        kind: p.kind.as_str().to_owned(),
        is_public: p.is_public,
        user_id: p.user_id.to_string(),
        image,
    }
}

/// Parses the `data` field: `{name, positive_prompt, negative_prompt, type, is_public?}`.
fn parse_data(text: &str) -> Option<NewStylePreset> {
    let value: Value = serde_json::from_str(text).ok()?;
    let map = value.as_object()?;
    let text = |k: &str| map.get(k).and_then(Value::as_str).map(str::to_owned);
    let is_public = match map.get("is_public") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return None,
    };
    Some(NewStylePreset {
        name: text("name")?,
        positive_prompt: text("positive_prompt")?,
        negative_prompt: text("negative_prompt")?,
        kind: PresetType::parse(map.get("type")?.as_str()?)?,
        is_public,
    })
}

/// The `data` and optional `image` parts of a create or update.
async fn form(
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<(NewStylePreset, Option<PreviewUpload>), ApiError> {
    let parts = read_multipart(multipart).await?;
    let mut data = None;
    let mut image = None;
    for Part {
        name,
        content_type,
        bytes,
    } in parts
    {
        match name.as_str() {
            "data" => data = Some(String::from_utf8_lossy(&bytes).into_owned()),
            "image" => {
                image = Some(PreviewUpload {
                    bytes,
                    content_type,
                })
            }
            _ => {}
        }
    }
    let Some(data) = data else {
        return Err(missing_part("data"));
    };
    let data = parse_data(&data).ok_or_else(|| ApiError::bad_request("Invalid preset data"))?;
    Ok((data, image))
}

/// The presets the caller may read, ordered by lower-cased name.
#[utoipa::path(get, path = "/api/v1/style_presets/", tag = "style_presets",
    responses((status = 200, body = Vec<StylePresetRecordWithImage>), (status = 401)))]
pub async fn list(
    State(state): State<AppState>,
    user: CurrentUser,
) -> Result<Json<Vec<StylePresetRecordWithImage>>, ApiError> {
    let presets = service::list(&state, &user.identity).await?;
    let mut out = Vec::with_capacity(presets.len());
    for p in presets {
        out.push(dto(&state, p).await);
    }
    Ok(Json(out))
}

/// Creates a preset owned by the caller (multipart `data` + optional `image`).
#[utoipa::path(post, path = "/api/v1/style_presets/", tag = "style_presets",
    responses((status = 200, body = StylePresetRecordWithImage), (status = 400), (status = 401), (status = 403), (status = 415), (status = 422)))]
pub async fn create(
    State(state): State<AppState>,
    user: CurrentUser,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Json<StylePresetRecordWithImage>, ApiError> {
    let (data, image) = form(multipart).await?;
    let record = service::create(&state, &user.identity, &data, image.as_ref()).await?;
    Ok(Json(dto(&state, record).await))
}

/// One preset.
#[utoipa::path(get, path = "/api/v1/style_presets/i/{style_preset_id}", tag = "style_presets",
    params(("style_preset_id" = String, Path)),
    responses((status = 200, body = StylePresetRecordWithImage), (status = 401), (status = 403), (status = 404)))]
pub async fn get_preset(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> Result<Json<StylePresetRecordWithImage>, ApiError> {
    let record = service::readable(&state, &user.identity, &id).await?;
    Ok(Json(dto(&state, record).await))
}

/// Replaces a preset: name, prompts and `is_public` from `data`; no `image` part deletes the
/// preview.
#[utoipa::path(patch, path = "/api/v1/style_presets/i/{style_preset_id}", tag = "style_presets",
    params(("style_preset_id" = String, Path)),
    responses((status = 200, body = StylePresetRecordWithImage), (status = 400), (status = 401), (status = 403), (status = 404), (status = 415), (status = 422)))]
pub async fn update(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Json<StylePresetRecordWithImage>, ApiError> {
    let (data, image) = form(multipart).await?;
    let record = service::update(&state, &user.identity, &id, &data, image.as_ref()).await?;
    Ok(Json(dto(&state, record).await))
}

/// Deletes a preset and its preview.
#[utoipa::path(delete, path = "/api/v1/style_presets/i/{style_preset_id}", tag = "style_presets",
    params(("style_preset_id" = String, Path)),
    responses((status = 200, body = Option<String>), (status = 401), (status = 403), (status = 404)))]
pub async fn delete(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    service::delete(&state, &user.identity, &id).await?;
    Ok(Json(Value::Null))
}

/// A preset's preview image (Bearer token, or the media cookie as a safe extension).
#[utoipa::path(get, path = "/api/v1/style_presets/i/{style_preset_id}/image", tag = "style_presets",
    params(("style_preset_id" = String, Path)),
    responses((status = 200, content_type = "image/png"), (status = 401), (status = 403), (status = 404)))]
pub async fn image(
    State(state): State<AppState>,
    MediaUser(me): MediaUser,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let bytes = service::image_bytes(&state, &me, &id).await?;
    Ok(image_response(bytes, &id))
}

/// Every user preset as CSV (administrators).
#[utoipa::path(get, path = "/api/v1/style_presets/export", tag = "style_presets",
    responses((status = 200, content_type = "text/csv"), (status = 401), (status = 403)))]
pub async fn export(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
) -> Result<Response, ApiError> {
    let csv = service::export_csv(&state, &AdminProof::from_admin(&admin)).await?;
    let mut response = (StatusCode::OK, csv).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=prompt_templates.csv"),
    );
    Ok(response)
}

/// Imports presets from a CSV or JSON file (multipart `file`; administrators).
#[utoipa::path(post, path = "/api/v1/style_presets/import", tag = "style_presets",
    responses((status = 200, body = Option<String>), (status = 400), (status = 401), (status = 403), (status = 415), (status = 422)))]
pub async fn import(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Json<Value>, ApiError> {
    let parts = read_multipart(multipart).await?;
    let Some(file) = parts.into_iter().find(|p| p.name == "file") else {
        return Err(missing_part("file"));
    };
    let essence = file
        .content_type
        .as_deref()
        .and_then(|ct| ct.split(';').next())
        .map(|ct| ct.trim().to_ascii_lowercase());
    let format = match essence.as_deref() {
        Some("text/csv") => ImportFormat::Csv,
        Some("application/json") => ImportFormat::Json,
        _ => return Err(ApiError::UnsupportedMediaType(String::new())),
    };
    service::import(&state, &AdminProof::from_admin(&admin), format, &file.bytes).await?;
    Ok(Json(Value::Null))
}

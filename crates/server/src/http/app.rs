//! `/api/v1/app/*`: the start-up and information endpoints of app-info.md that need no
//! generation engine.

use crate::http::error::ApiError;
use crate::http::extract::{AdminUser, CurrentUser};
use crate::state::AppState;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/app/version", get(version))
        .route("/api/v1/app/app_deps", get(app_deps))
        .route("/api/v1/app/patchmatch_status", get(patchmatch_status))
        .route(
            "/api/v1/app/generation_device_options",
            get(generation_device_options),
        )
        .route(
            "/api/v1/app/external_providers/status",
            get(external_providers_status),
        )
        .route(
            "/api/v1/app/external_providers/config",
            get(external_providers_config),
        )
}

/// The InvokeAI API version Atelier speaks; clients gate features on it.
pub const API_VERSION: &str = "6.12.0";

#[derive(Debug, Serialize, ToSchema)]
pub struct AppVersion {
    pub version: String,
}

/// The API version (public).
#[utoipa::path(get, path = "/api/v1/app/version", tag = "app", responses((status = 200, body = AppVersion)))]
pub async fn version() -> Json<AppVersion> {
    Json(AppVersion {
        version: API_VERSION.to_owned(),
    })
}

/// Installed components and their versions.
#[utoipa::path(get, path = "/api/v1/app/app_deps", tag = "app",
    responses((status = 200, body = Object), (status = 401)))]
pub async fn app_deps(_user: CurrentUser) -> Json<Map<String, Value>> {
    let mut deps: Vec<(&str, String)> = vec![
        ("atelier", env!("CARGO_PKG_VERSION").to_owned()),
        ("axum", "0.8".to_owned()),
        ("CUDA", "N/A".to_owned()),
        (
            "rustc",
            option_env!("RUSTC_VERSION").unwrap_or("stable").to_owned(),
        ),
        ("sqlite", sqlite_version()),
        ("sqlx", "0.8".to_owned()),
    ];
    deps.sort_by_key(|(name, _)| name.to_lowercase());
    Json(
        deps.into_iter()
            .map(|(k, v)| (k.to_owned(), Value::String(v)))
            .collect(),
    )
}

fn sqlite_version() -> String {
    // The bundled SQLite's version is fixed at build time by libsqlite3-sys.
    "3".to_owned()
}

/// Whether the patchmatch infill is available: Atelier has none, so clients use `lama`.
#[utoipa::path(get, path = "/api/v1/app/patchmatch_status", tag = "app",
    responses((status = 200, body = bool), (status = 401)))]
pub async fn patchmatch_status(_user: CurrentUser) -> Json<bool> {
    Json(false)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceOption {
    pub device: String,
    pub name: String,
}

/// The devices generation can run on.
#[utoipa::path(get, path = "/api/v1/app/generation_device_options", tag = "app",
    responses((status = 200, body = Vec<DeviceOption>), (status = 401)))]
pub async fn generation_device_options(_user: CurrentUser) -> Json<Vec<DeviceOption>> {
    Json(vec![DeviceOption {
        device: "cpu".to_owned(),
        name: "CPU".to_owned(),
    }])
}

const PROVIDERS: [&str; 4] = ["alibabacloud", "gemini", "openai", "seedream"];

#[derive(Debug, Serialize, ToSchema)]
pub struct ExternalProviderStatus {
    pub provider_id: String,
    pub configured: bool,
    pub message: Option<String>,
}

/// External generation providers: Atelier offers none, so the list is empty.
#[utoipa::path(get, path = "/api/v1/app/external_providers/status", tag = "app",
    responses((status = 200, body = Vec<ExternalProviderStatus>), (status = 401)))]
pub async fn external_providers_status(_user: CurrentUser) -> Json<Vec<ExternalProviderStatus>> {
    Json(Vec::new())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExternalProviderConfig {
    pub provider_id: String,
    pub api_key_configured: bool,
    pub base_url: Option<String>,
}

/// What is configured for each external provider (keys never returned). Admins only.
#[utoipa::path(get, path = "/api/v1/app/external_providers/config", tag = "app",
    responses((status = 200, body = Vec<ExternalProviderConfig>), (status = 401), (status = 403)))]
pub async fn external_providers_config(
    State(state): State<AppState>,
    _admin: AdminUser,
) -> Result<Json<Vec<ExternalProviderConfig>>, ApiError> {
    let config = state.runtime.lock().await.runtime_config_json();
    let values = config.get("config").cloned().unwrap_or_default();
    let text = |key: String| values.get(&key).and_then(Value::as_str).map(str::to_owned);
    Ok(Json(
        PROVIDERS
            .iter()
            .map(|p| ExternalProviderConfig {
                provider_id: (*p).to_owned(),
                api_key_configured: text(format!("external_{p}_api_key"))
                    .is_some_and(|k| !k.is_empty()),
                base_url: text(format!("external_{p}_base_url")),
            })
            .collect(),
    ))
}

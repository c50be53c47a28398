//! Runtime-writable settings: `PATCH /api/v1/app/runtime_config` and `/api/v1/app/logging`
//! (admins; app-info.md §2–3).
//!
//! Only three keys can change at run time: `image_subfolder_strategy` (new images),
//! `max_queue_history` (pruning at the next start) and `generation_devices` (next start). They
//! are persisted into the config file and reflected at once in `GET /runtime_config`.

use crate::http::body::{Body, Fields, FromBody, ParsedBody};
use crate::http::error::{ApiError, ValidationIssue};
use crate::http::extract::AdminUser;
use crate::state::AppState;
use axum::extract::{Request, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/app/runtime_config",
            get(get_runtime_config).patch(patch_runtime_config),
        )
        .route("/api/v1/app/logging", get(get_logging).post(set_logging))
}

const STRATEGIES: [&str; 4] = ["flat", "date", "type", "hash"];

/// The validated PATCH body: each field is `Some` only when present.
#[derive(Debug, Default)]
pub struct RuntimeConfigUpdate {
    image_subfolder_strategy: Option<Value>,
    max_queue_history: Option<Value>,
    generation_devices: Option<Value>,
}

fn valid_device(device: &str) -> bool {
    let (kind, index) = match device.split_once(':') {
        Some((kind, index)) => (kind, Some(index)),
        None => (device, None),
    };
    match (kind, index) {
        ("cpu" | "mps", None) => true,
        ("cuda" | "xpu", None) => true,
        ("cuda" | "xpu", Some(i)) => !i.is_empty() && i.chars().all(|c| c.is_ascii_digit()),
        _ => false,
    }
}

impl FromBody for RuntimeConfigUpdate {
    fn from_fields(f: &mut Fields<'_>) -> Option<Self> {
        let mut update = Self::default();
        let whole = f.whole().clone();
        for key in ["image_subfolder_strategy", "generation_devices"] {
            if f.raw(key) == Some(&Value::Null) {
                f.push_issue(
                    "value_error",
                    vec![json!("body")],
                    &format!("Value error, {key} may not be null"),
                    whole.clone(),
                    Some(json!({"error": {}})),
                );
            }
        }
        match f.raw("image_subfolder_strategy").cloned() {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if STRATEGIES.contains(&s.as_str()) => {
                update.image_subfolder_strategy = Some(Value::String(s));
            }
            Some(other) => f.push_issue(
                "literal_error",
                vec![json!("body"), json!("image_subfolder_strategy")],
                "Input should be 'flat', 'date', 'type' or 'hash'",
                other,
                Some(json!({"expected": "'flat', 'date', 'type' or 'hash'"})),
            ),
        }
        match f.raw("max_queue_history").cloned() {
            None => {}
            Some(Value::Null) => update.max_queue_history = Some(Value::Null),
            Some(Value::Number(n)) if n.as_i64().is_some_and(|v| v >= 0) => {
                update.max_queue_history = Some(Value::Number(n));
            }
            Some(Value::Number(n)) if n.is_i64() => f.push_issue(
                "greater_than_equal",
                vec![json!("body"), json!("max_queue_history")],
                "Input should be greater than or equal to 0",
                Value::Number(n),
                Some(json!({"ge": 0})),
            ),
            Some(other) => f.push_issue(
                "int_type",
                vec![json!("body"), json!("max_queue_history")],
                "Input should be a valid integer",
                other,
                None,
            ),
        }
        match f.raw("generation_devices").cloned() {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s == "auto" => {
                update.generation_devices = Some(Value::String(s))
            }
            Some(Value::Array(items)) => {
                let loc = vec![json!("body"), json!("generation_devices")];
                if items.is_empty() {
                    f.push_issue(
                        "value_error",
                        loc,
                        "Value error, generation_devices cannot be an empty list. Use 'auto' or a list of devices.",
                        Value::Array(items),
                        Some(json!({"error": {}})),
                    );
                } else if let Some(bad) =
                    items.iter().find(|d| !d.as_str().is_some_and(valid_device))
                {
                    let shown = bad.as_str().map_or_else(|| bad.to_string(), str::to_owned);
                    f.push_issue(
                        "value_error",
                        loc,
                        &format!(
                            "Value error, Invalid generation device '{shown}'. Valid values are 'auto', 'cpu', 'mps', 'cuda', 'cuda:N', 'xpu', or 'xpu:N'."
                        ),
                        Value::Array(items),
                        Some(json!({"error": {}})),
                    );
                } else {
                    update.generation_devices = Some(Value::Array(items));
                }
            }
            Some(other) => {
                f.push_issue(
                    "literal_error",
                    vec![
                        json!("body"),
                        json!("generation_devices"),
                        json!("literal['auto']"),
                    ],
                    "Input should be 'auto'",
                    other.clone(),
                    Some(json!({"expected": "'auto'"})),
                );
                f.push_issue(
                    "list_type",
                    vec![
                        json!("body"),
                        json!("generation_devices"),
                        json!("list[str]"),
                    ],
                    "Input should be a valid list",
                    other,
                    None,
                );
            }
        }
        Some(update)
    }
}

/// The effective configuration with secrets masked. Admins only.
#[utoipa::path(get, path = "/api/v1/app/runtime_config", tag = "app",
    responses((status = 200, body = Object), (status = 401), (status = 403)))]
pub async fn get_runtime_config(State(state): State<AppState>, _admin: AdminUser) -> Json<Value> {
    Json(state.runtime.lock().await.runtime_config_json())
}

/// Changes the runtime-writable settings and persists them into `invokeai.yaml`. Admins only.
#[utoipa::path(patch, path = "/api/v1/app/runtime_config", tag = "app",
    responses((status = 200, body = Object), (status = 401), (status = 403), (status = 422)))]
pub async fn patch_runtime_config(
    State(state): State<AppState>,
    _admin: AdminUser,
    Body(update): Body<RuntimeConfigUpdate>,
) -> Result<Json<Value>, ApiError> {
    if let Some(Value::Array(devices)) = &update.generation_devices {
        // The CPU, or a GPU this build (`cuda` feature) and machine have.
        if let Some(missing) = devices
            .iter()
            .filter_map(Value::as_str)
            .find(|d| crate::service::compute::resolve(d, "auto").is_err())
        {
            return Err(ApiError::Validation422Detail(format!(
                "Generation device '{missing}' is not available on this machine"
            )));
        }
    }
    let updates: Vec<(&str, Value)> = [
        ("image_subfolder_strategy", update.image_subfolder_strategy),
        ("max_queue_history", update.max_queue_history),
        ("generation_devices", update.generation_devices),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v)))
    .collect();
    let mut config = state.runtime.lock().await;
    if !updates.is_empty() {
        config
            .persist_values(&updates)
            .map_err(ApiError::internal)?;
    }
    Ok(Json(config.runtime_config_json()))
}

/// Python logging levels, as the reference's `LogLevel` enum.
const LEVELS: [u8; 6] = [0, 10, 20, 30, 40, 50];

/// The current log level as a bare integer. Admins only.
#[utoipa::path(get, path = "/api/v1/app/logging", tag = "app",
    responses((status = 200, body = u8), (status = 401), (status = 403)))]
pub async fn get_logging(State(state): State<AppState>, _admin: AdminUser) -> Json<u8> {
    Json(state.log.level())
}

/// Sets the log level from a bare integer body (0, 10, 20, 30, 40 or 50). Admins only.
#[utoipa::path(post, path = "/api/v1/app/logging", tag = "app", request_body = u8,
    responses((status = 200, body = u8), (status = 401), (status = 403), (status = 422)))]
pub async fn set_logging(
    State(state): State<AppState>,
    _admin: AdminUser,
    request: Request,
) -> Result<Json<u8>, ApiError> {
    let parsed = request
        .extensions()
        .get::<ParsedBody>()
        .cloned()
        .unwrap_or(ParsedBody::Empty);
    let value = match parsed {
        ParsedBody::Empty | ParsedBody::Json(Value::Null) => {
            return Err(ApiError::Validation(vec![ValidationIssue {
                kind: "missing",
                loc: vec![json!("body")],
                msg: "Field required".to_owned(),
                input: Value::Null,
                ctx: None,
            }]))
        }
        ParsedBody::Json(v) => v,
        ParsedBody::Text(t) => Value::String(t),
    };
    let level = value
        .as_u64()
        .and_then(|v| u8::try_from(v).ok())
        .filter(|v| LEVELS.contains(v))
        .ok_or_else(|| {
            ApiError::Validation(vec![ValidationIssue {
                kind: "enum",
                loc: vec![json!("body")],
                msg: "Input should be 0, 10, 20, 30, 40 or 50".to_owned(),
                input: value.clone(),
                ctx: Some(json!({"expected": "0, 10, 20, 30, 40 or 50"})),
            }])
        })?;
    state.log.set_level(level);
    Ok(Json(level))
}

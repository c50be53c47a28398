//! `/api/v1/client_state/{queue_id}/*` (workflows-and-state.md §2): per-user UI state. The
//! owner is always the caller (`system` in single-user mode); no route can address another
//! user's state, administrators included. `queue_id` is accepted and ignored.

use crate::http::body::ParsedBody;
use crate::http::error::{ApiError, ValidationIssue};
use crate::http::extract::CurrentUser;
use crate::http::query::{QueryFields, RawQuery};
use crate::state::AppState;
use axum::extract::{Path, Request, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/client_state/{queue_id}/get_by_key",
            get(get_by_key),
        )
        .route(
            "/api/v1/client_state/{queue_id}/set_by_key",
            post(set_by_key),
        )
        .route(
            "/api/v1/client_state/{queue_id}/get_keys_by_prefix",
            get(get_keys_by_prefix),
        )
        .route(
            "/api/v1/client_state/{queue_id}/delete_by_key",
            post(delete_by_key),
        )
        .route("/api/v1/client_state/{queue_id}/delete", post(delete_all))
}

fn required(query: &RawQuery, name: &str) -> Result<String, ApiError> {
    let mut q = QueryFields::new(query);
    let value = q.required_str(name, None);
    q.finish()?;
    value.ok_or_else(|| ApiError::internal("query validation inconsistency"))
}

/// One stored value (a JSON string), or `null`.
#[utoipa::path(get, path = "/api/v1/client_state/{queue_id}/get_by_key", tag = "client_state",
    params(("queue_id" = String, Path), ("key" = String, Query)),
    responses((status = 200, body = Option<String>), (status = 401), (status = 422)))]
pub async fn get_by_key(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(_queue_id): Path<String>,
    query: RawQuery,
) -> Result<Json<Option<String>>, ApiError> {
    let key = required(&query, "key")?;
    let value = state
        .store
        .get_client_state(&user.identity.user_id, &key)
        .await
        .map_err(|_| ApiError::failed("Error getting client state"))?;
    Ok(Json(value))
}

/// Stores a value: the raw text of a non-JSON body, or a JSON string literal.
#[utoipa::path(post, path = "/api/v1/client_state/{queue_id}/set_by_key", tag = "client_state",
    params(("queue_id" = String, Path), ("key" = String, Query)), request_body = String,
    responses((status = 200, body = String), (status = 401), (status = 422)))]
pub async fn set_by_key(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(_queue_id): Path<String>,
    query: RawQuery,
    request: Request,
) -> Result<Json<String>, ApiError> {
    let mut q = QueryFields::new(&query);
    let key = q.required_str("key", None);
    let parsed = request
        .extensions()
        .get::<ParsedBody>()
        .cloned()
        .unwrap_or(ParsedBody::Empty);
    let body_issue = |kind: &'static str, msg: &str, input: Value| ValidationIssue {
        kind,
        loc: vec![json!("body")],
        msg: msg.to_owned(),
        input,
        ctx: None,
    };
    let value = match parsed {
        ParsedBody::Text(text) => Ok(text),
        ParsedBody::Json(Value::String(text)) => Ok(text),
        ParsedBody::Empty | ParsedBody::Json(Value::Null) => {
            Err(body_issue("missing", "Field required", Value::Null))
        }
        ParsedBody::Json(other) => Err(body_issue(
            "string_type",
            "Input should be a valid string",
            other,
        )),
    };
    let mut issues = match q.finish() {
        Ok(()) => Vec::new(),
        Err(ApiError::Validation(issues)) => issues,
        Err(other) => return Err(other),
    };
    if let Err(issue) = &value {
        issues.push(issue.clone());
    }
    if !issues.is_empty() {
        return Err(ApiError::Validation(issues));
    }
    let (Some(key), Ok(value)) = (key, value) else {
        return Err(ApiError::internal("body validation inconsistency"));
    };
    state
        .store
        .set_client_state(&user.identity.user_id, &key, &value)
        .await
        .map_err(|_| ApiError::failed("Error setting client state"))?;
    Ok(Json(value))
}

/// The caller's keys starting with `prefix`, most recently updated first.
#[utoipa::path(get, path = "/api/v1/client_state/{queue_id}/get_keys_by_prefix", tag = "client_state",
    params(("queue_id" = String, Path), ("prefix" = String, Query)),
    responses((status = 200, body = Vec<String>), (status = 401), (status = 422)))]
pub async fn get_keys_by_prefix(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(_queue_id): Path<String>,
    query: RawQuery,
) -> Result<Json<Vec<String>>, ApiError> {
    let prefix = required(&query, "prefix")?;
    let keys = state
        .store
        .client_state_keys(&user.identity.user_id, &prefix)
        .await
        .map_err(|_| ApiError::failed("Error getting client state keys"))?;
    Ok(Json(keys))
}

/// Deletes one of the caller's keys (absent keys are fine).
#[utoipa::path(post, path = "/api/v1/client_state/{queue_id}/delete_by_key", tag = "client_state",
    params(("queue_id" = String, Path), ("key" = String, Query)),
    responses((status = 200, body = Option<String>), (status = 401), (status = 422)))]
pub async fn delete_by_key(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(_queue_id): Path<String>,
    query: RawQuery,
) -> Result<Json<Value>, ApiError> {
    let key = required(&query, "key")?;
    state
        .store
        .delete_client_state(&user.identity.user_id, Some(&key))
        .await
        .map_err(|_| ApiError::failed("Error deleting client state key"))?;
    Ok(Json(Value::Null))
}

/// Deletes all of the caller's client state.
#[utoipa::path(post, path = "/api/v1/client_state/{queue_id}/delete", tag = "client_state",
    params(("queue_id" = String, Path)), responses((status = 200, body = Option<String>), (status = 401)))]
pub async fn delete_all(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(_queue_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state
        .store
        .delete_client_state(&user.identity.user_id, None)
        .await
        .map_err(|_| ApiError::failed("Error deleting client state"))?;
    Ok(Json(Value::Null))
}

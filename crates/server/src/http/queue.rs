//! `/api/v1/queue/{queue_id}/*` (queue-and-events.md §3). Items are enqueued and can be read,
//! counted, cancelled, pruned and cleared; the worker that runs them is not built yet.

use crate::http::body::{Body, Fields, FromBody};
use crate::http::error::ApiError;
use crate::http::extract::{AdminUser, CurrentUser};
use crate::http::query::{QueryFields, RawQuery};
use crate::service::queue::{self as service, EnqueueRequest};
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::{json, Value};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/queue/{queue_id}/enqueue_batch",
            post(enqueue_batch),
        )
        .route("/api/v1/queue/{queue_id}/list_all", get(list_all))
        .route("/api/v1/queue/{queue_id}/item_ids", get(item_ids))
        .route("/api/v1/queue/{queue_id}/status", get(status))
        .route("/api/v1/queue/{queue_id}/current", get(current))
        .route("/api/v1/queue/{queue_id}/next", get(next))
        .route(
            "/api/v1/queue/{queue_id}/b/{batch_id}/status",
            get(batch_status),
        )
        .route(
            "/api/v1/queue/{queue_id}/counts_by_destination",
            get(counts_by_destination),
        )
        .route("/api/v1/queue/{queue_id}/i/{item_id}", get(get_item))
        .route("/api/v1/queue/{queue_id}/i/{item_id}/cancel", put(cancel))
        .route("/api/v1/queue/{queue_id}/processor/pause", put(pause))
        .route("/api/v1/queue/{queue_id}/processor/resume", put(resume))
        .route("/api/v1/queue/{queue_id}/prune", put(prune))
        .route("/api/v1/queue/{queue_id}/clear", put(clear))
}

/// `{"batch": Batch, "prepend": bool = false}`.
pub struct EnqueueBody(EnqueueRequest);

impl FromBody for EnqueueBody {
    fn from_fields(f: &mut Fields<'_>) -> Option<Self> {
        let prepend = f.bool_or("prepend", false);
        let Some(batch) = f.raw("batch").cloned() else {
            f.push_issue(
                "missing",
                vec![json!("body"), json!("batch")],
                "Field required",
                f.whole().clone(),
                None,
            );
            return None;
        };
        match service::validate_batch(&batch, prepend.unwrap_or(false)) {
            Ok(req) => prepend.map(|_| EnqueueBody(req)),
            Err(ApiError::Validation(issues)) => {
                for i in issues {
                    f.push_issue(i.kind, i.loc, &i.msg, i.input, i.ctx);
                }
                None
            }
            Err(_) => None,
        }
    }
}

/// Enqueues a batch: one item per session it expands to, up to the queue's capacity.
#[utoipa::path(post, path = "/api/v1/queue/{queue_id}/enqueue_batch", tag = "queue", params(("queue_id" = String, Path)),
    responses((status = 200, body = Object), (status = 401), (status = 422)))]
pub async fn enqueue_batch(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(queue_id): Path<String>,
    Body(EnqueueBody(req)): Body<EnqueueBody>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        service::enqueue(&state, &user.identity, &queue_id, req).await?,
    ))
}

/// Every item of the queue, other users' redacted.
#[utoipa::path(get, path = "/api/v1/queue/{queue_id}/list_all", tag = "queue", params(("queue_id" = String, Path)),
    responses((status = 200, body = Object), (status = 401)))]
pub async fn list_all(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(queue_id): Path<String>,
    query: RawQuery,
) -> Result<Json<Vec<Value>>, ApiError> {
    let mut q = QueryFields::new(&query);
    let destination = q.optional_str("destination", None);
    q.finish()?;
    let scope = atelier_store::QueueScope {
        queue_id: Some(queue_id),
        destination: destination.flatten(),
        ..Default::default()
    };
    let rows = state
        .store
        .list_queue(&scope)
        .await
        .map_err(|_| ApiError::failed("Unexpected error while listing all queue items"))?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        out.push(service::visible(&state, &user.identity, row).await);
    }
    Ok(Json(out))
}

/// Ids of every item, by creation time.
#[utoipa::path(get, path = "/api/v1/queue/{queue_id}/item_ids", tag = "queue", params(("queue_id" = String, Path)),
    responses((status = 200, body = Object), (status = 401)))]
pub async fn item_ids(
    State(state): State<AppState>,
    _user: CurrentUser,
    Path(queue_id): Path<String>,
    query: RawQuery,
) -> Result<Json<Value>, ApiError> {
    let mut q = QueryFields::new(&query);
    let dir = q.optional_enum("order_dir", &["ASC", "DESC"]);
    q.finish()?;
    let scope = atelier_store::QueueScope {
        queue_id: Some(queue_id),
        ..Default::default()
    };
    let mut ids: Vec<i64> = state
        .store
        .list_queue(&scope)
        .await?
        .iter()
        .map(|r| r.item_id)
        .collect();
    ids.sort_unstable();
    if dir.flatten().as_deref() != Some("ASC") {
        ids.reverse();
    }
    Ok(Json(json!({"item_ids": ids, "total_count": ids.len()})))
}

/// Queue counts and the processor's state.
#[utoipa::path(get, path = "/api/v1/queue/{queue_id}/status", tag = "queue", params(("queue_id" = String, Path)),
    responses((status = 200, body = Object), (status = 401)))]
pub async fn status(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(queue_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let me = &user.identity;
    let queue = service::queue_status(&state, &me.user_id, me.is_admin(), &queue_id).await?;
    Ok(Json(
        json!({"queue": queue, "processor": state.processor.status()}),
    ))
}

/// The item being run, or `null`.
#[utoipa::path(get, path = "/api/v1/queue/{queue_id}/current", tag = "queue", params(("queue_id" = String, Path)),
    responses((status = 200, body = Object), (status = 401)))]
pub async fn current(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(queue_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match state.store.current_queue_item(&queue_id).await? {
        Some(row) => Ok(Json(service::visible(&state, &user.identity, &row).await)),
        None => Ok(Json(Value::Null)),
    }
}

/// The first pending item in FIFO order, or `null`.
#[utoipa::path(get, path = "/api/v1/queue/{queue_id}/next", tag = "queue", params(("queue_id" = String, Path)),
    responses((status = 200, body = Object), (status = 401)))]
pub async fn next(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(queue_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let scope = atelier_store::QueueScope {
        queue_id: Some(queue_id),
        ..Default::default()
    };
    let rows = state.store.list_queue(&scope).await?;
    match rows
        .iter()
        .find(|r| r.status == atelier_domain::queue::QueueItemStatus::Pending)
    {
        Some(row) => Ok(Json(service::visible(&state, &user.identity, row).await)),
        None => Ok(Json(Value::Null)),
    }
}

/// A batch's counts (a non-admin counts only their own rows).
#[utoipa::path(get, path = "/api/v1/queue/{queue_id}/b/{batch_id}/status", tag = "queue",
    params(("queue_id" = String, Path), ("batch_id" = String, Path)), responses((status = 200, body = Object), (status = 401)))]
pub async fn batch_status(
    State(state): State<AppState>,
    user: CurrentUser,
    Path((queue_id, batch_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let me = &user.identity;
    let owner = (!me.is_admin()).then_some(&me.user_id);
    Ok(Json(
        service::batch_status(&state, &queue_id, &batch_id, owner).await?,
    ))
}

/// Counts for one destination (the caller's own rows unless admin).
#[utoipa::path(get, path = "/api/v1/queue/{queue_id}/counts_by_destination", tag = "queue", params(("queue_id" = String, Path)),
    responses((status = 200, body = Object), (status = 401), (status = 422)))]
pub async fn counts_by_destination(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(queue_id): Path<String>,
    query: RawQuery,
) -> Result<Json<Value>, ApiError> {
    let mut q = QueryFields::new(&query);
    let destination = q.required_str("destination", None);
    q.finish()?;
    let destination = destination.unwrap_or_default();
    let mut scope = service::scope_for(&user.identity, &queue_id);
    scope.destination = Some(destination.clone());
    let counts =
        state.store.queue_counts(&scope).await.map_err(|_| {
            ApiError::failed("Unexpected error while fetching counts by destination")
        })?;
    Ok(Json(
        json!({"queue_id": queue_id, "destination": destination, "pending": counts.pending,
        "in_progress": counts.in_progress, "waiting": counts.waiting, "completed": counts.completed,
        "failed": counts.failed, "canceled": counts.canceled, "total": counts.total()}),
    ))
}

fn parse_item_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::Validation(vec![crate::http::error::ValidationIssue {
            kind: "int_parsing",
            loc: vec![json!("path"), json!("item_id")],
            msg: "Input should be a valid integer, unable to parse string as an integer".to_owned(),
            input: json!(raw),
            ctx: None,
        }])
    })
}

/// One item (other users' redacted); keys whose value is null are left out.
#[utoipa::path(get, path = "/api/v1/queue/{queue_id}/i/{item_id}", tag = "queue",
    params(("queue_id" = String, Path), ("item_id" = i64, Path)), responses((status = 200, body = Object), (status = 401), (status = 404), (status = 422)))]
pub async fn get_item(
    State(state): State<AppState>,
    user: CurrentUser,
    Path((queue_id, item_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let item_id = parse_item_id(&item_id)?;
    let row = service::get(&state, &queue_id, item_id).await?;
    let mut item = service::visible(&state, &user.identity, &row).await;
    if let Value::Object(map) = &mut item {
        map.retain(|_, v| !v.is_null());
    }
    Ok(Json(item))
}

/// Cancels an item (its owner or an admin).
#[utoipa::path(put, path = "/api/v1/queue/{queue_id}/i/{item_id}/cancel", tag = "queue",
    params(("queue_id" = String, Path), ("item_id" = i64, Path)), responses((status = 200, body = Object), (status = 401), (status = 403), (status = 404)))]
pub async fn cancel(
    State(state): State<AppState>,
    user: CurrentUser,
    Path((queue_id, item_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let item_id = parse_item_id(&item_id)?;
    Ok(Json(
        service::cancel(&state, &user.identity, &queue_id, item_id).await?,
    ))
}

/// Stops starting new items (the running one finishes). Admins only.
#[utoipa::path(put, path = "/api/v1/queue/{queue_id}/processor/pause", tag = "queue", params(("queue_id" = String, Path)),
    responses((status = 200, body = Object), (status = 401), (status = 403)))]
pub async fn pause(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(_queue_id): Path<String>,
) -> Json<Value> {
    state.processor.set_paused(true);
    Json(state.processor.status())
}

/// Starts items again. Admins only.
#[utoipa::path(put, path = "/api/v1/queue/{queue_id}/processor/resume", tag = "queue", params(("queue_id" = String, Path)),
    responses((status = 200, body = Object), (status = 401), (status = 403)))]
pub async fn resume(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(_queue_id): Path<String>,
) -> Json<Value> {
    state.processor.set_paused(false);
    Json(state.processor.status())
}

/// Deletes finished items (the caller's own unless admin).
#[utoipa::path(put, path = "/api/v1/queue/{queue_id}/prune", tag = "queue", params(("queue_id" = String, Path)),
    responses((status = 200, body = Object), (status = 401)))]
pub async fn prune(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(queue_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let deleted = state
        .store
        .prune_queue(&service::scope_for(&user.identity, &queue_id))
        .await
        .map_err(|_| ApiError::failed("Unexpected error while pruning queue"))?;
    Ok(Json(json!({"deleted": deleted})))
}

/// Deletes every item (the caller's own unless admin), cancelling running ones first.
#[utoipa::path(put, path = "/api/v1/queue/{queue_id}/clear", tag = "queue", params(("queue_id" = String, Path)),
    responses((status = 200, body = Object), (status = 401)))]
pub async fn clear(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(queue_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let deleted = service::clear(&state, &user.identity, &queue_id).await?;
    Ok(Json(json!({"deleted": deleted})))
}

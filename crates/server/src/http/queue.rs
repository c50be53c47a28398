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
        .route(
            "/api/v1/queue/{queue_id}/i/{item_id}",
            get(get_item).delete(delete_item),
        )
        .route("/api/v1/queue/{queue_id}/i/{item_id}/cancel", put(cancel))
        .route("/api/v1/queue/{queue_id}/processor/pause", put(pause))
        .route("/api/v1/queue/{queue_id}/processor/resume", put(resume))
        .route("/api/v1/queue/{queue_id}/prune", put(prune))
        .route("/api/v1/queue/{queue_id}/clear", put(clear))
        .route("/api/v1/queue/{queue_id}/items_by_ids", post(items_by_ids))
        .route(
            "/api/v1/queue/{queue_id}/item_summaries_by_ids",
            post(item_summaries_by_ids),
        )
        .route(
            "/api/v1/queue/{queue_id}/cancel_by_batch_ids",
            put(cancel_by_batch_ids),
        )
        .route(
            "/api/v1/queue/{queue_id}/cancel_by_destination",
            put(cancel_by_destination),
        )
        .route(
            "/api/v1/queue/{queue_id}/cancel_all_except_current",
            put(cancel_all_except_current),
        )
        .route(
            "/api/v1/queue/{queue_id}/delete_all_except_current",
            put(delete_all_except_current),
        )
        .route(
            "/api/v1/queue/{queue_id}/retry_items_by_id",
            put(retry_items_by_id),
        )
        .route(
            "/api/v1/queue/{queue_id}/d/{destination}",
            axum::routing::delete(delete_by_destination),
        )
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

/// `{"item_ids": [int]}` (at most 1000).
pub struct ItemIdsBody(Vec<i64>);

fn int_list(f: &mut Fields<'_>, value: Option<Value>, loc: Vec<Value>) -> Option<Vec<i64>> {
    match value {
        Some(Value::Array(items)) if items.len() <= 1000 => {
            let ids: Option<Vec<i64>> = items.iter().map(Value::as_i64).collect();
            if ids.is_none() {
                f.push_issue(
                    "int_type",
                    loc,
                    "Input should be a list of valid integers",
                    Value::Array(items),
                    None,
                );
            }
            ids
        }
        Some(Value::Array(items)) => {
            let n = items.len();
            f.push_issue(
                "too_long",
                loc,
                &format!("List should have at most 1000 items after validation, not {n}"),
                Value::Array(items),
                Some(json!({"field_type": "List", "max_length": 1000, "actual_length": n})),
            );
            None
        }
        Some(other) => {
            f.push_issue(
                "list_type",
                loc,
                "Input should be a valid list",
                other,
                None,
            );
            None
        }
        None => {
            let whole = f.whole().clone();
            f.push_issue("missing", loc, "Field required", whole, None);
            None
        }
    }
}

impl FromBody for ItemIdsBody {
    fn from_fields(f: &mut Fields<'_>) -> Option<Self> {
        let value = f.raw("item_ids").cloned();
        int_list(f, value, vec![json!("body"), json!("item_ids")]).map(ItemIdsBody)
    }
}

/// `{"batch_ids": [str]}`.
pub struct BatchIdsBody(Vec<String>);

impl FromBody for BatchIdsBody {
    fn from_fields(f: &mut Fields<'_>) -> Option<Self> {
        f.required_str_list("batch_ids", 10_000, 255)
            .map(BatchIdsBody)
    }
}

async fn visible_rows(
    state: &AppState,
    user: &CurrentUser,
    queue_id: &str,
    ids: &[i64],
) -> Result<Vec<Value>, ApiError> {
    let rows = state.store.queue_items_by_ids(queue_id, ids).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        out.push(service::visible(state, &user.identity, row).await);
    }
    Ok(out)
}

/// Items by id, in request order (others' redacted; unknown ids skipped).
#[utoipa::path(post, path = "/api/v1/queue/{queue_id}/items_by_ids", tag = "queue", params(("queue_id" = String, Path)),
    responses((status = 200, body = Object), (status = 401), (status = 422)))]
pub async fn items_by_ids(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(queue_id): Path<String>,
    Body(ItemIdsBody(ids)): Body<ItemIdsBody>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let items = visible_rows(&state, &user, &queue_id, &ids)
        .await
        .map_err(|_| ApiError::failed("Failed to get queue items"))?;
    Ok(Json(items))
}

/// Item summaries by id, in request order.
#[utoipa::path(post, path = "/api/v1/queue/{queue_id}/item_summaries_by_ids", tag = "queue", params(("queue_id" = String, Path)),
    responses((status = 200, body = Object), (status = 401), (status = 422)))]
pub async fn item_summaries_by_ids(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(queue_id): Path<String>,
    Body(ItemIdsBody(ids)): Body<ItemIdsBody>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let items = visible_rows(&state, &user, &queue_id, &ids)
        .await
        .map_err(|_| ApiError::failed("Failed to get queue item summaries"))?;
    Ok(Json(items.iter().map(service::summary).collect()))
}

/// Cancels the caller's (any, for admins) unfinished items of these batches.
#[utoipa::path(put, path = "/api/v1/queue/{queue_id}/cancel_by_batch_ids", tag = "queue", params(("queue_id" = String, Path)),
    responses((status = 200, body = Object), (status = 401), (status = 422)))]
pub async fn cancel_by_batch_ids(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(queue_id): Path<String>,
    Body(BatchIdsBody(ids)): Body<BatchIdsBody>,
) -> Result<Json<Value>, ApiError> {
    let n = service::cancel_matching(&state, &user.identity, &queue_id, Some(&ids), None).await?;
    Ok(Json(json!({"canceled": n})))
}

/// Cancels the caller's (any, for admins) unfinished items with this destination.
#[utoipa::path(put, path = "/api/v1/queue/{queue_id}/cancel_by_destination", tag = "queue", params(("queue_id" = String, Path)),
    responses((status = 200, body = Object), (status = 401), (status = 422)))]
pub async fn cancel_by_destination(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(queue_id): Path<String>,
    query: RawQuery,
) -> Result<Json<Value>, ApiError> {
    let mut q = QueryFields::new(&query);
    let destination = q.required_str("destination", None);
    q.finish()?;
    let n = service::cancel_matching(&state, &user.identity, &queue_id, None, destination).await?;
    Ok(Json(json!({"canceled": n})))
}

/// Cancels every waiting item in scope; running ones continue.
#[utoipa::path(put, path = "/api/v1/queue/{queue_id}/cancel_all_except_current", tag = "queue", params(("queue_id" = String, Path)),
    responses((status = 200, body = Object), (status = 401)))]
pub async fn cancel_all_except_current(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(queue_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let n = service::cancel_all_except_current(&state, &user.identity, &queue_id).await?;
    Ok(Json(json!({"canceled": n})))
}

/// Deletes every waiting item in scope; running ones continue.
#[utoipa::path(put, path = "/api/v1/queue/{queue_id}/delete_all_except_current", tag = "queue", params(("queue_id" = String, Path)),
    responses((status = 200, body = Object), (status = 401)))]
pub async fn delete_all_except_current(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(queue_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let n = service::delete_all_except_current(&state, &user.identity, &queue_id).await?;
    Ok(Json(json!({"deleted": n})))
}

/// Runs failed or canceled items again (body: a bare JSON array of ids).
#[utoipa::path(put, path = "/api/v1/queue/{queue_id}/retry_items_by_id", tag = "queue", params(("queue_id" = String, Path)),
    responses((status = 200, body = Object), (status = 401), (status = 403), (status = 404), (status = 422)))]
pub async fn retry_items_by_id(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(queue_id): Path<String>,
    request: axum::extract::Request,
) -> Result<Json<Value>, ApiError> {
    let parsed = request
        .extensions()
        .get::<crate::http::body::ParsedBody>()
        .cloned();
    let ids: Vec<i64> = match parsed {
        Some(crate::http::body::ParsedBody::Json(Value::Array(items)))
            if items.iter().all(Value::is_i64) =>
        {
            items.iter().filter_map(Value::as_i64).collect()
        }
        Some(crate::http::body::ParsedBody::Json(Value::Null))
        | Some(crate::http::body::ParsedBody::Empty)
        | None => {
            return Err(ApiError::Validation(vec![
                crate::http::error::ValidationIssue {
                    kind: "missing",
                    loc: vec![json!("body")],
                    msg: "Field required".to_owned(),
                    input: Value::Null,
                    ctx: None,
                },
            ]))
        }
        Some(other) => {
            let input = match other {
                crate::http::body::ParsedBody::Json(v) => v,
                crate::http::body::ParsedBody::Text(t) => Value::String(t),
                crate::http::body::ParsedBody::Empty => Value::Null,
            };
            return Err(ApiError::Validation(vec![
                crate::http::error::ValidationIssue {
                    kind: "list_type",
                    loc: vec![json!("body")],
                    msg: "Input should be a valid list of integers".to_owned(),
                    input,
                    ctx: None,
                },
            ]));
        }
    };
    let retried = service::retry(&state, &user.identity, &queue_id, &ids).await?;
    Ok(Json(
        json!({"queue_id": queue_id, "retried_item_ids": retried}),
    ))
}

/// Deletes an item (its owner or an admin), cancelling it first if it is still live.
#[utoipa::path(delete, path = "/api/v1/queue/{queue_id}/i/{item_id}", tag = "queue",
    params(("queue_id" = String, Path), ("item_id" = i64, Path)), responses((status = 200, body = Option<String>), (status = 401), (status = 403), (status = 404)))]
pub async fn delete_item(
    State(state): State<AppState>,
    user: CurrentUser,
    Path((queue_id, item_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let item_id = parse_item_id(&item_id)?;
    service::delete_item(&state, &user.identity, &queue_id, item_id).await?;
    Ok(Json(Value::Null))
}

/// Deletes every item in scope with this destination, cancelling running ones first.
#[utoipa::path(delete, path = "/api/v1/queue/{queue_id}/d/{destination}", tag = "queue",
    params(("queue_id" = String, Path), ("destination" = String, Path)), responses((status = 200, body = Object), (status = 401)))]
pub async fn delete_by_destination(
    State(state): State<AppState>,
    user: CurrentUser,
    Path((queue_id, destination)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let n = service::delete_by_destination(&state, &user.identity, &queue_id, &destination).await?;
    Ok(Json(json!({"deleted": n})))
}

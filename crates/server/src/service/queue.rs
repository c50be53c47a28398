//! The session queue's use cases (queue-and-events.md §2–5): enqueueing batches, reading items
//! with redaction for other users, status counts, cancelling, pruning, clearing, and the
//! processor's pause switch. Running items is the worker's (`service::worker`).

use crate::events::Event;
use crate::http::error::{ApiError, ValidationIssue};
use crate::state::AppState;
use atelier_domain::queue::{self, BatchDatum, QueueItemStatus};
use atelier_domain::Identity;
use atelier_store::{NewBatch, NewQueueItem, QueueRow, QueueScope, StatusCounts};
use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The processor's switches and the item it is running. Not persisted: a server always starts
/// resumed.
#[derive(Debug, Default)]
pub struct ProcessorState {
    paused: AtomicBool,
    processing: AtomicBool,
    /// Wakes the worker early: enqueue, resume, cancel of the running item.
    wake: tokio::sync::Notify,
    current: std::sync::Mutex<Option<Running>>,
}

/// The item the worker is running: its id, owner and cancel flag.
#[derive(Debug, Clone)]
pub struct Running {
    pub item_id: i64,
    pub user_id: atelier_domain::UserId,
    pub cancel: Arc<AtomicBool>,
}

impl ProcessorState {
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
        if !paused {
            self.wake.notify_one();
        }
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    pub fn status(&self) -> Value {
        json!({"is_started": !self.paused.load(Ordering::SeqCst), "is_processing": self.processing.load(Ordering::SeqCst)})
    }

    /// Wakes the worker (new work, or a state it waits on changed).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Waits for [`Self::wake`] or `timeout`, whichever comes first.
    pub async fn wait(&self, timeout: std::time::Duration) {
        let _ = tokio::time::timeout(timeout, self.wake.notified()).await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Running>> {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records the item the worker starts (with a fresh flag, so a stale cancel cannot
    /// reach it), or clears it.
    pub fn set_running(&self, running: Option<Running>) {
        self.processing.store(running.is_some(), Ordering::SeqCst);
        *self.lock() = running;
    }

    pub fn running(&self) -> Option<Running> {
        self.lock().clone()
    }

    /// Signals the worker to stop `item_id` if it is the running item. Call after the row
    /// was written (the worker trusts the row, §6.3).
    pub fn signal_cancel(&self, item_id: i64) {
        if let Some(running) = self.lock().as_ref().filter(|r| r.item_id == item_id) {
            running.cancel.store(true, Ordering::SeqCst);
        }
        self.wake.notify_one();
    }
}

/// A validated `{batch, prepend}` body.
pub struct EnqueueRequest {
    pub batch: Value,
    pub graph: Value,
    pub data: Option<Vec<Vec<BatchDatum>>>,
    pub runs: u64,
    pub prepend: bool,
}

fn issue(loc: &[&str], kind: &'static str, msg: &str, input: Value) -> ValidationIssue {
    let mut full = vec![json!("body"), json!("batch")];
    full.extend(loc.iter().map(|l| json!(l)));
    ValidationIssue {
        kind,
        loc: full,
        msg: msg.to_owned(),
        input,
        ctx: None,
    }
}

/// Checks a `Batch` object (§2.1) as far as it can be without the node library.
pub fn validate_batch(batch: &Value, prepend: bool) -> Result<EnqueueRequest, ApiError> {
    let Value::Object(map) = batch else {
        return Err(ApiError::Validation(vec![issue(
            &[],
            "model_attributes_type",
            "Input should be a valid dictionary or object to extract fields from",
            batch.clone(),
        )]));
    };
    let mut issues = Vec::new();
    let graph = match map.get("graph") {
        Some(g @ Value::Object(gm))
            if gm.get("nodes").is_none_or(Value::is_object)
                && gm.get("edges").is_none_or(Value::is_array) =>
        {
            g.clone()
        }
        Some(other) => {
            issues.push(issue(&["graph"], "model_type", "Input should be a valid graph: an object with a `nodes` object and an `edges` array", other.clone()));
            Value::Null
        }
        None => {
            issues.push(issue(
                &["graph"],
                "missing",
                "Field required",
                batch.clone(),
            ));
            Value::Null
        }
    };
    let runs = match map.get("runs") {
        None => 1,
        Some(Value::Number(n)) if n.as_u64().is_some_and(|r| r >= 1) => n.as_u64().unwrap_or(1),
        Some(other) => {
            issues.push(issue(
                &["runs"],
                "greater_than_equal",
                "Input should be greater than or equal to 1",
                other.clone(),
            ));
            1
        }
    };
    for key in ["batch_id", "origin", "destination"] {
        if let Some(v) = map.get(key).filter(|v| !v.is_null() && !v.is_string()) {
            issues.push(issue(
                &[key],
                "string_type",
                "Input should be a valid string",
                v.clone(),
            ));
        }
    }
    let data = match map.get("data") {
        None | Some(Value::Null) => None,
        Some(value) => match serde_json::from_value::<Vec<Vec<BatchDatum>>>(value.clone()) {
            Ok(d) => Some(d),
            Err(e) => {
                issues.push(issue(
                    &["data"],
                    "list_type",
                    &format!("Input should be a list of lists of batch data: {e}"),
                    value.clone(),
                ));
                None
            }
        },
    };
    if let Some(data) = &data {
        if let Err(e) = queue::validate_batch_data(data) {
            issues.push(issue(
                &["data"],
                "value_error",
                &format!("Value error, {e}"),
                map.get("data").cloned().unwrap_or(Value::Null),
            ));
        } else if let Some(nodes) = graph.get("nodes").and_then(Value::as_object) {
            for datum in data.iter().flatten() {
                if !nodes.contains_key(&datum.node_path) {
                    issues.push(issue(
                        &["data"],
                        "value_error",
                        &format!("Value error, Node {} not found in graph", datum.node_path),
                        json!(datum.node_path),
                    ));
                }
            }
        }
    }
    if !issues.is_empty() {
        return Err(ApiError::Validation(issues));
    }
    // The graph itself (generation.md §4): node schemas, edges, cycles, types.
    let parsed = atelier_graph::validate_graph(&graph).map_err(|graph_issues| {
        ApiError::Validation(
            graph_issues
                .into_iter()
                .map(|gi| {
                    let mut loc = vec![json!("body"), json!("batch"), json!("graph")];
                    loc.extend(gi.loc);
                    ValidationIssue {
                        kind: gi.kind,
                        loc,
                        msg: gi.msg,
                        input: gi.input,
                        ctx: None,
                    }
                })
                .collect(),
        )
    })?;
    // A scheduler this server does not implement yet is refused now, not at run time (§10.6).
    for (id, node) in &parsed.nodes {
        if node["type"] == "denoise_latents" {
            let name = node["scheduler"].as_str().unwrap_or_default();
            if !atelier_engine::schedulers::is_implemented(name) {
                issues.push(ValidationIssue {
                    kind: "value_error",
                    loc: [
                        "body",
                        "batch",
                        "graph",
                        "nodes",
                        id,
                        "denoise_latents",
                        "scheduler",
                    ]
                    .iter()
                    .map(|s| json!(s))
                    .collect(),
                    msg: format!("Value error, scheduler '{name}' is not supported by this server"),
                    input: json!(name),
                    ctx: None,
                });
            }
        }
    }
    // Substituted fields must exist on their nodes, and every value must suit its field
    // (a deviation: the reference checks values only when the item runs).
    if let Some(data) = &data {
        for datum in data.iter().flatten() {
            let spec = parsed.spec(&datum.node_path);
            let known = ["id", "type", "is_intermediate", "use_cache"]
                .contains(&datum.field_name.as_str())
                || spec.is_some_and(|s| s.input(&datum.field_name).is_some());
            if !known {
                issues.push(issue(
                    &["data"],
                    "value_error",
                    &format!(
                        "Value error, Field {} not found in node {}",
                        datum.field_name, datum.node_path
                    ),
                    json!(datum.field_name),
                ));
                continue;
            }
            if let Some(input) = spec.and_then(|s| s.input(&datum.field_name)) {
                for (i, item) in datum.items.iter().enumerate() {
                    if let Err(e) = input.check(item) {
                        issues.push(issue(
                            &["data"],
                            "value_error",
                            &format!(
                                "Value error, Item {i} for {}.{} is invalid: {}",
                                datum.node_path, datum.field_name, e.msg
                            ),
                            item.clone(),
                        ));
                        break;
                    }
                }
            }
        }
    }
    if !issues.is_empty() {
        return Err(ApiError::Validation(issues));
    }
    Ok(EnqueueRequest {
        batch: batch.clone(),
        graph: parsed.to_json(),
        data,
        runs,
        prepend,
    })
}

/// A new session for `graph`, nothing executed yet.
fn new_session(id: &str, graph: &Value) -> Value {
    json!({
        "id": id,
        "graph": graph,
        "execution_graph": {"id": uuid::Uuid::new_v4().to_string(), "nodes": {}, "edges": []},
        "executed": [],
        "executed_history": [],
        "results": {},
        "errors": {},
        "prepared_source_mapping": {},
        "source_prepared_mapping": {},
    })
}

/// `POST /queue/{queue_id}/enqueue_batch`.
pub async fn enqueue(
    state: &AppState,
    me: &Identity,
    queue_id: &str,
    req: EnqueueRequest,
) -> Result<Value, ApiError> {
    let mut batch = req.batch;
    let batch_id = batch
        .get("batch_id")
        .and_then(Value::as_str)
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    batch["batch_id"] = json!(batch_id);
    let text = |k: &str| batch.get(k).and_then(Value::as_str).map(str::to_owned);
    let requested = queue::session_count(req.data.as_deref(), req.runs);
    let max = state.config.max_queue_size();
    let expanded = queue::expand_batch(
        req.data.as_deref(),
        req.runs,
        u64::try_from(max).unwrap_or(0),
    );
    let items: Vec<NewQueueItem> = expanded
        .into_iter()
        .map(|values| {
            let mut graph = req.graph.clone();
            for v in &values {
                let checked = graph["nodes"][&v.node_path]["type"]
                    .as_str()
                    .and_then(atelier_graph::find)
                    .and_then(|spec| spec.input(&v.field_name))
                    .and_then(|input| input.check(&v.value).ok())
                    .unwrap_or_else(|| v.value.clone());
                graph["nodes"][&v.node_path][&v.field_name] = checked;
            }
            let session_id = uuid::Uuid::new_v4().to_string();
            NewQueueItem {
                session: new_session(&session_id, &graph).to_string(),
                session_id,
                field_values: Some(serde_json::to_string(&values).unwrap_or_else(|_| "[]".into())),
            }
        })
        .collect();
    let new = NewBatch {
        queue_id: queue_id.to_owned(),
        batch_id: batch_id.clone(),
        origin: text("origin"),
        destination: text("destination"),
        user_id: me.user_id.clone(),
        workflow: batch
            .get("workflow")
            .filter(|w| !w.is_null())
            .map(Value::to_string),
        prepend: req.prepend,
    };
    let out = state
        .store
        .enqueue(&new, &items, max)
        .await
        .map_err(|_| ApiError::failed("Unexpected error while enqueuing batch"))?;
    let item_ids = state.store.batch_item_ids(&batch_id).await?;
    let enqueued = out.item_ids.len();
    let full = json!({"queue_id": queue_id, "batch_id": batch_id, "enqueued": enqueued, "requested": requested,
        "priority": out.priority, "origin": new.origin, "user_id": me.user_id.as_str()});
    let mut companion = full.clone();
    companion["user_id"] = json!("redacted");
    companion["batch_id"] = json!("redacted");
    companion["origin"] = Value::Null;
    state.events.publish(Event::Queue {
        name: "batch_enqueued",
        queue_id: queue_id.to_owned(),
        owner: me.user_id.to_string(),
        payload: full,
        companion: Some(companion),
    });
    state.processor.wake();
    Ok(
        json!({"queue_id": queue_id, "enqueued": enqueued, "requested": requested, "batch": batch,
        "priority": out.priority, "item_ids": item_ids}),
    )
}

fn parse(text: Option<&str>) -> Value {
    text.and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or(Value::Null)
}

/// The full `SessionQueueItem` of a row, with the owner's name and email joined in.
pub async fn item_json(state: &AppState, row: &QueueRow) -> Value {
    let owner = state.store.get_user(&row.user_id).await.ok().flatten();
    json!({
        "item_id": row.item_id,
        "queue_id": row.queue_id,
        "status": row.status.as_str(),
        "status_sequence": row.status_sequence,
        "priority": row.priority,
        "batch_id": row.batch_id,
        "session_id": row.session_id,
        "origin": row.origin,
        "destination": row.destination,
        "user_id": row.user_id.as_str(),
        "user_display_name": owner.as_ref().and_then(|u| u.display_name.clone()),
        "user_email": owner.as_ref().map(|u| u.email.clone()),
        "field_values": parse(row.field_values.as_deref()),
        "error_type": row.error_type,
        "error_message": row.error_message,
        "error_traceback": row.error_traceback,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "started_at": row.started_at,
        "completed_at": row.completed_at,
        "retried_from_item_id": row.retried_from_item_id,
        "device": row.device,
        "workflow_call_id": null,
        "parent_item_id": null,
        "parent_session_id": null,
        "root_item_id": null,
        "workflow_call_depth": null,
        "session": parse(Some(&row.session)),
        "workflow": parse(row.workflow.as_deref()),
    })
}

/// Redaction for callers who are neither the owner nor an admin (§4.1), on a copy.
pub fn redact(mut item: Value) -> Value {
    let Value::Object(map) = &mut item else {
        return item;
    };
    let set = |map: &mut Map<String, Value>, key: &str, value: Value| {
        if map.contains_key(key) {
            map.insert(key.to_owned(), value);
        }
    };
    for key in ["user_id", "batch_id", "session_id"] {
        set(map, key, json!("redacted"));
    }
    for key in [
        "user_display_name",
        "user_email",
        "origin",
        "destination",
        "field_values",
        "retried_from_item_id",
        "workflow_call_id",
        "parent_item_id",
        "parent_session_id",
        "root_item_id",
        "workflow_call_depth",
        "workflow",
        "error_type",
        "error_message",
        "error_traceback",
    ] {
        set(map, key, Value::Null);
    }
    set(map, "priority", json!(0));
    set(
        map,
        "session",
        new_session(
            "redacted",
            &json!({"id": "redacted", "nodes": {}, "edges": []}),
        ),
    );
    item
}

/// A row as `me` may see it.
pub async fn visible(state: &AppState, me: &Identity, row: &QueueRow) -> Value {
    let item = item_json(state, row).await;
    if me.owns_or_admin(&row.user_id) {
        item
    } else {
        redact(item)
    }
}

fn not_found(item_id: i64, queue_id: &str) -> ApiError {
    ApiError::not_found(&format!(
        "Queue item with id {item_id} not found in queue {queue_id}"
    ))
}

pub async fn get(state: &AppState, queue_id: &str, item_id: i64) -> Result<QueueRow, ApiError> {
    state
        .store
        .get_queue_item(item_id)
        .await?
        .filter(|r| r.queue_id == queue_id)
        .ok_or_else(|| not_found(item_id, queue_id))
}

fn counts_json(c: &StatusCounts) -> Map<String, Value> {
    let mut m = Map::new();
    for (k, v) in [
        ("pending", c.pending),
        ("in_progress", c.in_progress),
        ("waiting", c.waiting),
        ("completed", c.completed),
        ("failed", c.failed),
        ("canceled", c.canceled),
        ("total", c.total()),
    ] {
        m.insert(k.into(), json!(v));
    }
    m
}

/// `SessionQueueStatus` as `viewer` sees it (§4.3).
pub async fn queue_status(
    state: &AppState,
    viewer: &atelier_domain::UserId,
    viewer_is_admin: bool,
    queue_id: &str,
) -> Result<Value, ApiError> {
    let all = state
        .store
        .queue_counts(&QueueScope {
            queue_id: Some(queue_id.to_owned()),
            ..QueueScope::default()
        })
        .await?;
    let mine = state
        .store
        .queue_counts(&QueueScope {
            queue_id: Some(queue_id.to_owned()),
            user_id: Some(viewer.clone()),
            ..QueueScope::default()
        })
        .await?;
    let current = state.store.current_queue_item(queue_id).await?;
    let shown = current.filter(|c| viewer_is_admin || &c.user_id == viewer);
    let mut m = counts_json(&all);
    m.insert("queue_id".into(), json!(queue_id));
    m.insert("item_id".into(), json!(shown.as_ref().map(|c| c.item_id)));
    m.insert(
        "batch_id".into(),
        json!(shown.as_ref().map(|c| c.batch_id.clone())),
    );
    m.insert(
        "session_id".into(),
        json!(shown.as_ref().map(|c| c.session_id.clone())),
    );
    m.insert("user_pending".into(), json!(mine.pending));
    m.insert("user_in_progress".into(), json!(mine.in_progress));
    Ok(Value::Object(m))
}

/// `BatchStatus`, counting only `owner`'s rows when given.
pub async fn batch_status(
    state: &AppState,
    queue_id: &str,
    batch_id: &str,
    owner: Option<&atelier_domain::UserId>,
) -> Result<Value, ApiError> {
    let scope = QueueScope {
        queue_id: Some(queue_id.to_owned()),
        batch_id: Some(batch_id.to_owned()),
        user_id: owner.cloned(),
        ..QueueScope::default()
    };
    let counts = state.store.queue_counts(&scope).await?;
    let first = state.store.list_queue(&scope).await?.into_iter().next();
    let mut m = counts_json(&counts);
    m.insert("queue_id".into(), json!(queue_id));
    m.insert("batch_id".into(), json!(batch_id));
    m.insert(
        "origin".into(),
        json!(first.as_ref().and_then(|r| r.origin.clone())),
    );
    m.insert(
        "destination".into(),
        json!(first.as_ref().and_then(|r| r.destination.clone())),
    );
    Ok(Value::Object(m))
}

/// Publishes `queue_item_status_changed` for a row, with its owner-centred statuses.
pub async fn publish_status(state: &AppState, row: &QueueRow) -> Result<(), ApiError> {
    if row.status.is_terminal() {
        state.processor.signal_cancel(row.item_id);
    }
    let batch_status = batch_status(state, &row.queue_id, &row.batch_id, None).await?;
    let queue_status = queue_status(state, &row.user_id, false, &row.queue_id).await?;
    let full = json!({
        "queue_id": row.queue_id, "item_id": row.item_id, "batch_id": row.batch_id, "origin": row.origin,
        "destination": row.destination, "user_id": row.user_id.as_str(), "session_id": row.session_id,
        "status": row.status.as_str(), "status_sequence": row.status_sequence, "error_type": row.error_type,
        "error_message": row.error_message, "error_traceback": row.error_traceback, "created_at": row.created_at,
        "updated_at": row.updated_at, "started_at": row.started_at, "completed_at": row.completed_at,
        "batch_status": batch_status, "queue_status": queue_status,
    });
    let mut companion = full.clone();
    for k in ["user_id", "batch_id", "session_id"] {
        companion[k] = json!("redacted");
    }
    for k in [
        "origin",
        "destination",
        "error_type",
        "error_message",
        "error_traceback",
    ] {
        companion[k] = Value::Null;
    }
    companion["batch_status"]["batch_id"] = json!("redacted");
    companion["batch_status"]["origin"] = Value::Null;
    companion["batch_status"]["destination"] = Value::Null;
    for k in [
        "item_id",
        "session_id",
        "batch_id",
        "user_pending",
        "user_in_progress",
    ] {
        companion["queue_status"][k] = Value::Null;
    }
    state.events.publish(Event::Queue {
        name: "queue_item_status_changed",
        queue_id: row.queue_id.clone(),
        owner: row.user_id.to_string(),
        payload: full,
        companion: Some(companion),
    });
    Ok(())
}

/// `PUT /queue/{queue_id}/i/{item_id}/cancel`: the owner or an admin; a terminal item is
/// returned unchanged.
pub async fn cancel(
    state: &AppState,
    me: &Identity,
    queue_id: &str,
    item_id: i64,
) -> Result<Value, ApiError> {
    let row = get(state, queue_id, item_id).await?;
    if !me.owns_or_admin(&row.user_id) {
        return Err(ApiError::forbidden(
            "You do not have permission to cancel this queue item",
        ));
    }
    if row.status.is_terminal() {
        return Ok(item_json(state, &row).await);
    }
    match state
        .store
        .set_queue_status(item_id, QueueItemStatus::Canceled, None)
        .await?
    {
        Some(updated) => {
            publish_status(state, &updated).await?;
            Ok(item_json(state, &updated).await)
        }
        // Lost a race with another terminal write: report what is stored now.
        None => Ok(item_json(state, &get(state, queue_id, item_id).await?).await),
    }
}

/// The scope of a bulk operation: everything for admins, own rows otherwise.
pub fn scope_for(me: &Identity, queue_id: &str) -> QueueScope {
    QueueScope {
        queue_id: Some(queue_id.to_owned()),
        user_id: (!me.is_admin()).then(|| me.user_id.clone()),
        ..QueueScope::default()
    }
}

/// `PUT /queue/{queue_id}/clear`: cancels running items in scope, deletes every row in scope,
/// announces `queue_cleared`.
pub async fn clear(state: &AppState, me: &Identity, queue_id: &str) -> Result<u64, ApiError> {
    let scope = scope_for(me, queue_id);
    for row in state.store.list_queue(&scope).await? {
        if row.status == QueueItemStatus::InProgress {
            if let Some(updated) = state
                .store
                .set_queue_status(row.item_id, QueueItemStatus::Canceled, None)
                .await?
            {
                publish_status(state, &updated).await?;
            }
        }
    }
    let deleted = state
        .store
        .clear_queue(&scope)
        .await
        .map_err(|_| ApiError::failed("Unexpected error while clearing queue"))?;
    let scoped = scope.user_id.as_ref().map(|u| u.to_string());
    match scoped {
        None => state.events.publish(Event::Queue {
            name: "queue_cleared",
            queue_id: queue_id.to_owned(),
            owner: String::new(),
            payload: json!({"queue_id": queue_id, "user_id": null}),
            companion: None,
        }),
        Some(owner) => state.events.publish(Event::Queue {
            name: "queue_cleared",
            queue_id: queue_id.to_owned(),
            payload: json!({"queue_id": queue_id, "user_id": owner}),
            companion: Some(json!({"queue_id": queue_id, "user_id": "redacted"})),
            owner,
        }),
    }
    Ok(deleted)
}

/// Groups `(item_id, user_id)` pairs by owner.
fn by_user(pairs: &[(i64, String)]) -> std::collections::BTreeMap<String, Vec<i64>> {
    let mut map: std::collections::BTreeMap<String, Vec<i64>> = std::collections::BTreeMap::new();
    for (id, user) in pairs {
        map.entry(user.clone()).or_default().push(*id);
    }
    map
}

fn publish_canceled(state: &AppState, queue_id: &str, pairs: &[(i64, String)]) {
    if pairs.is_empty() {
        return;
    }
    state.events.publish(Event::QueueItemsByUser {
        name: "queue_items_canceled",
        verb: "canceled",
        queue_id: queue_id.to_owned(),
        by_user: by_user(pairs),
    });
}

/// Cancels one running row (guarded) and announces it; `true` if it changed.
async fn cancel_running(state: &AppState, row: &QueueRow) -> Result<bool, ApiError> {
    match state
        .store
        .set_queue_status(row.item_id, QueueItemStatus::Canceled, None)
        .await?
    {
        Some(updated) => {
            publish_status(state, &updated).await?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// `PUT /cancel_by_batch_ids` and `PUT /cancel_by_destination`: pending and waiting rows in
/// one statement (one grouped event), running rows one by one (status events).
pub async fn cancel_matching(
    state: &AppState,
    me: &Identity,
    queue_id: &str,
    batch_ids: Option<&[String]>,
    destination: Option<String>,
) -> Result<usize, ApiError> {
    let mut scope = scope_for(me, queue_id);
    scope.destination = destination;
    let pending = state.store.cancel_pending(&scope, batch_ids).await?;
    publish_canceled(state, queue_id, &pending);
    let mut canceled = pending.len();
    for row in state.store.list_queue(&scope).await? {
        let in_batch = batch_ids.is_none_or(|ids| ids.contains(&row.batch_id));
        if row.status == QueueItemStatus::InProgress
            && in_batch
            && cancel_running(state, &row).await?
        {
            canceled += 1;
        }
    }
    Ok(canceled)
}

/// `PUT /cancel_all_except_current`: the caller's (everyone's, for admins) pending and waiting
/// rows; running ones are left alone.
pub async fn cancel_all_except_current(
    state: &AppState,
    me: &Identity,
    queue_id: &str,
) -> Result<usize, ApiError> {
    let pending = state
        .store
        .cancel_pending(&scope_for(me, queue_id), None)
        .await?;
    publish_canceled(state, queue_id, &pending);
    Ok(pending.len())
}

/// `PUT /delete_all_except_current`: deletes the same selection.
pub async fn delete_all_except_current(
    state: &AppState,
    me: &Identity,
    queue_id: &str,
) -> Result<u64, ApiError> {
    let rows = state.store.list_queue(&scope_for(me, queue_id)).await?;
    let doomed: Vec<(i64, String)> = rows
        .iter()
        .filter(|r| {
            matches!(
                r.status,
                QueueItemStatus::Pending | QueueItemStatus::Waiting
            )
        })
        .map(|r| (r.item_id, r.user_id.to_string()))
        .collect();
    let ids: Vec<i64> = doomed.iter().map(|(id, _)| *id).collect();
    let deleted = state.store.delete_queue_items(&ids).await?;
    publish_canceled(state, queue_id, &doomed);
    Ok(deleted)
}

/// `DELETE /i/{item_id}`: the owner or an admin; a live item is canceled first.
pub async fn delete_item(
    state: &AppState,
    me: &Identity,
    queue_id: &str,
    item_id: i64,
) -> Result<(), ApiError> {
    let row = get(state, queue_id, item_id).await?;
    if !me.owns_or_admin(&row.user_id) {
        return Err(ApiError::forbidden(
            "You do not have permission to delete this queue item",
        ));
    }
    if !row.status.is_terminal() {
        cancel_running(state, &row).await?;
    }
    state
        .store
        .delete_queue_items(&[item_id])
        .await
        .map_err(|_| ApiError::failed("Unexpected error while deleting queue item"))?;
    Ok(())
}

/// `DELETE /d/{destination}`: cancels running matches one by one, then deletes every row in
/// scope with that destination.
pub async fn delete_by_destination(
    state: &AppState,
    me: &Identity,
    queue_id: &str,
    destination: &str,
) -> Result<u64, ApiError> {
    let mut scope = scope_for(me, queue_id);
    scope.destination = Some(destination.to_owned());
    let rows = state.store.list_queue(&scope).await?;
    let mut individually = Vec::new();
    for row in &rows {
        if row.status == QueueItemStatus::InProgress && cancel_running(state, row).await? {
            individually.push(row.item_id);
        }
    }
    let ids: Vec<i64> = rows.iter().map(|r| r.item_id).collect();
    let deleted = state.store.delete_queue_items(&ids).await?;
    let announced: Vec<(i64, String)> = rows
        .iter()
        .filter(|r| !individually.contains(&r.item_id))
        .map(|r| (r.item_id, r.user_id.to_string()))
        .collect();
    publish_canceled(state, queue_id, &announced);
    Ok(deleted)
}

/// `PUT /retry_items_by_id`: every id is authorized first (one refusal rejects the request);
/// failed and canceled items run again as new rows of the same owner (§5.4).
pub async fn retry(
    state: &AppState,
    me: &Identity,
    queue_id: &str,
    ids: &[i64],
) -> Result<Vec<i64>, ApiError> {
    let mut roots = Vec::new();
    for id in ids {
        let Some(row) = state.store.get_queue_item(*id).await? else {
            continue;
        };
        if row.queue_id != queue_id {
            return Err(not_found(*id, queue_id));
        }
        if !me.owns_or_admin(&row.user_id) {
            return Err(ApiError::forbidden(&format!(
                "You do not have permission to retry queue item {id}"
            )));
        }
        if matches!(
            row.status,
            QueueItemStatus::Failed | QueueItemStatus::Canceled
        ) && !roots.iter().any(|r: &QueueRow| r.item_id == row.item_id)
        {
            roots.push(row);
        }
    }
    let room = state.config.max_queue_size() - state.store.pending_count().await?;
    if room <= 0 {
        return Ok(Vec::new());
    }
    let mut retried = Vec::new();
    let mut pairs = Vec::new();
    for root in roots.into_iter().take(usize::try_from(room).unwrap_or(0)) {
        let graph = serde_json::from_str::<Value>(&root.session)
            .ok()
            .and_then(|s| s.get("graph").cloned())
            .unwrap_or(Value::Null);
        let session_id = uuid::Uuid::new_v4().to_string();
        let session = new_session(&session_id, &graph).to_string();
        state
            .store
            .retry_queue_item(&root, &session_id, &session)
            .await
            .map_err(|_| ApiError::failed("Unexpected error while retrying queue items"))?;
        pairs.push((root.item_id, root.user_id.to_string()));
        retried.push(root.item_id);
    }
    if !pairs.is_empty() {
        state.events.publish(Event::QueueItemsByUser {
            name: "queue_items_retried",
            verb: "retried",
            queue_id: queue_id.to_owned(),
            by_user: by_user(&pairs),
        });
        state.processor.wake();
    }
    Ok(retried)
}

/// The `SessionQueueItemSummary` of an item (already redacted as needed).
pub fn summary(item: &Value) -> Value {
    let keys = [
        "item_id",
        "created_at",
        "status",
        "device",
        "started_at",
        "completed_at",
        "origin",
        "destination",
        "batch_id",
        "user_id",
        "user_display_name",
        "user_email",
        "field_values",
        "parent_item_id",
    ];
    Value::Object(
        keys.iter()
            .map(|k| {
                (
                    (*k).to_owned(),
                    item.get(*k).cloned().unwrap_or(Value::Null),
                )
            })
            .collect(),
    )
}

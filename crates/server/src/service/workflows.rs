//! Workflow library use cases (workflows-and-state.md §1): create, read, update, delete,
//! sharing, `opened_at`, thumbnails, listings with tag and category counts, and the start-up
//! synchronisation of the bundled default workflows.
//!
//! Existence is checked before access, so an unknown id is 404 for everyone; access goes
//! through the domain predicates (`can_read_workflow` / `can_write_workflow`). Default
//! workflows are never created, changed or deleted through these functions (400), only by
//! [`sync_defaults`]. Thumbnails live at `<workflow_thumbnails_dir>/<workflow_id>.webp`; a
//! path is only ever built from an id that exists in the database.

use crate::events::Event;
use crate::http::error::ApiError;
use crate::media;
use crate::state::AppState;
use atelier_domain::library::{
    self, can_read_workflow, can_write_workflow, WorkflowAccess, WorkflowCategory,
};
use atelier_domain::Identity;
use atelier_store::{format_db_time, WorkflowOrder, WorkflowQuery, WorkflowRecord};
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The bundled default workflows. InvokeAI ships 26 of its own; Atelier ships a small set of
/// its own authoring instead of copying InvokeAI's files (the contract only fixes how they are
/// synchronised, not their content). Ids are stable `default_<uuid>` values.
const DEFAULT_WORKFLOWS: &str = include_str!("../../assets/default_workflows.json");

/// `WorkflowCallCompatibility` (§1.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compatibility {
    pub is_callable: bool,
    pub reason: &'static str,
    pub message: Option<String>,
}

/// Whether a node is a `workflow_return` invocation.
fn is_workflow_return(node: &Value) -> bool {
    node.get("type").and_then(Value::as_str) == Some("invocation")
        && node
            .get("data")
            .and_then(|d| d.get("type"))
            .and_then(Value::as_str)
            == Some("workflow_return")
}

/// How many `workflow_return` invocation nodes a document has.
pub fn workflow_return_count(doc: &Value) -> usize {
    doc.get("nodes")
        .and_then(Value::as_array)
        .map_or(0, |nodes| {
            nodes.iter().filter(|n| is_workflow_return(n)).count()
        })
}

/// The minimum rule set of §1.3. Atelier has no engine dry-build yet, so a workflow with
/// exactly one `workflow_return` node is reported callable.
pub fn compatibility(doc: &Value) -> Compatibility {
    match workflow_return_count(doc) {
        0 => Compatibility {
            is_callable: false,
            reason: "missing_workflow_return",
            message: Some("The workflow must contain exactly one workflow_return node.".to_owned()),
        },
        1 => Compatibility {
            is_callable: true,
            reason: "ok",
            message: None,
        },
        _ => Compatibility {
            is_callable: false,
            reason: "multiple_workflow_return",
            message: Some(
                "The workflow must not contain more than one workflow_return node.".to_owned(),
            ),
        },
    }
}

/// The parsed document of a row (an unreadable one reads as `{}`: it lists, but never
/// validates as callable).
pub fn document(record: &WorkflowRecord) -> Value {
    serde_json::from_str(&record.workflow).unwrap_or_else(|_| Value::Object(Default::default()))
}

fn category(record: &WorkflowRecord) -> WorkflowCategory {
    WorkflowCategory::parse(&record.category).unwrap_or(WorkflowCategory::User)
}

fn access(record: &WorkflowRecord) -> WorkflowAccess<'_> {
    WorkflowAccess {
        owner: &record.user_id,
        category: category(record),
        is_public: record.is_public,
    }
}

/// Loads a workflow or answers 404 `Workflow not found`.
pub async fn find(state: &AppState, id: &str) -> Result<WorkflowRecord, ApiError> {
    state
        .store
        .get_workflow(id)
        .await?
        .ok_or_else(|| ApiError::not_found("Workflow not found"))
}

/// Loads a workflow the caller may read (WfRead).
pub async fn readable(
    state: &AppState,
    me: &Identity,
    id: &str,
) -> Result<WorkflowRecord, ApiError> {
    let record = find(state, id).await?;
    if !can_read_workflow(me, access(&record)) {
        return Err(ApiError::forbidden(
            "Not authorized to access this workflow",
        ));
    }
    Ok(record)
}

/// Loads a workflow the caller may change (WfWrite), refusing with `refusal`.
async fn writable(
    state: &AppState,
    me: &Identity,
    id: &str,
    refusal: &str,
) -> Result<WorkflowRecord, ApiError> {
    let record = find(state, id).await?;
    if !can_write_workflow(me, access(&record)) {
        return Err(ApiError::forbidden(refusal));
    }
    Ok(record)
}

fn declared_category(doc: &Value) -> Option<&str> {
    doc.get("meta")
        .and_then(|m| m.get("category"))
        .and_then(Value::as_str)
}

/// Creates a workflow owned by the caller: shared in single-user mode (so it surfaces as
/// shared after a switch to multi-user), private in multi-user mode. `doc` is a validated
/// `WorkflowWithoutID`; the server assigns the id.
pub async fn create(
    state: &AppState,
    me: &Identity,
    mut doc: Value,
) -> Result<WorkflowRecord, ApiError> {
    if declared_category(&doc) == Some(WorkflowCategory::Default.as_str()) {
        return Err(ApiError::bad_request(
            "Default workflows cannot be created via this method",
        ));
    }
    let id = uuid::Uuid::new_v4().to_string();
    if let Some(map) = doc.as_object_mut() {
        map.insert("id".to_owned(), Value::String(id.clone()));
    }
    let record = state
        .store
        .insert_workflow(&id, &doc.to_string(), &me.user_id, !state.multiuser())
        .await?;
    state.events.publish(Event::WorkflowCreated {
        workflow_id: record.workflow_id.clone(),
        user_id: record.user_id.to_string(),
        is_public: record.is_public,
    });
    Ok(record)
}

/// Publishes `workflow_updated` (or the revocation) for a change from `before` to `after`.
fn publish_update(state: &AppState, before: &WorkflowRecord, after: &WorkflowRecord) {
    state.events.publish(Event::WorkflowUpdated {
        workflow_id: after.workflow_id.clone(),
        user_id: after.user_id.to_string(),
        old_is_public: before.is_public,
        new_is_public: after.is_public,
    });
}

/// Replaces the whole document of the workflow named by the body's `id` (the path id is
/// ignored, as in the reference).
pub async fn update(
    state: &AppState,
    me: &Identity,
    doc: Value,
) -> Result<WorkflowRecord, ApiError> {
    let id = doc
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let record = writable(state, me, &id, "Not authorized to update this workflow").await?;
    if category(&record) == WorkflowCategory::Default
        || declared_category(&doc) == Some(WorkflowCategory::Default.as_str())
    {
        return Err(ApiError::bad_request(
            "Default workflows cannot be updated via this method",
        ));
    }
    let updated = state
        .store
        .update_workflow(&id, &doc.to_string(), None)
        .await?
        .ok_or_else(|| ApiError::not_found("Workflow not found"))?;
    publish_update(state, &record, &updated);
    Ok(updated)
}

/// Deletes a user workflow and its thumbnail file.
pub async fn delete(state: &AppState, me: &Identity, id: &str) -> Result<(), ApiError> {
    let record = writable(state, me, id, "Not authorized to delete this workflow").await?;
    if category(&record) == WorkflowCategory::Default {
        return Err(ApiError::bad_request(
            "Default workflows cannot be deleted via this method",
        ));
    }
    remove_file_if_present(&thumbnail_path(state, &record.workflow_id)).await?;
    state.store.delete_workflow(id).await?;
    state.events.publish(Event::WorkflowDeleted {
        workflow_id: record.workflow_id.clone(),
        user_id: record.user_id.to_string(),
        is_public: record.is_public,
    });
    Ok(())
}

/// Shares or unshares a workflow, adding or removing its `shared` tag. Default rows are
/// returned unchanged (only administrators get this far with one).
pub async fn set_public(
    state: &AppState,
    me: &Identity,
    id: &str,
    is_public: bool,
) -> Result<WorkflowRecord, ApiError> {
    let record = writable(state, me, id, "Not authorized to update this workflow").await?;
    if category(&record) == WorkflowCategory::Default {
        return Ok(record);
    }
    let mut doc = document(&record);
    if let Some(map) = doc.as_object_mut() {
        let tags = map.get("tags").and_then(Value::as_str).unwrap_or_default();
        let tags = library::retag_for_sharing(tags, is_public);
        map.insert("tags".to_owned(), Value::String(tags));
    }
    let updated = state
        .store
        .update_workflow(id, &doc.to_string(), Some(is_public))
        .await?
        .ok_or_else(|| ApiError::not_found("Workflow not found"))?;
    publish_update(state, &record, &updated);
    Ok(updated)
}

/// Records that the workflow was opened (one global value per workflow).
pub async fn mark_opened(
    state: &AppState,
    me: &Identity,
    id: &str,
    now: DateTime<Utc>,
) -> Result<(), ApiError> {
    writable(state, me, id, "Not authorized to update this workflow").await?;
    state
        .store
        .set_workflow_opened(id, &format_db_time(now))
        .await?;
    Ok(())
}

fn thumbnail_path(state: &AppState, id: &str) -> PathBuf {
    state
        .config
        .workflow_thumbnails_dir()
        .join(format!("{id}.webp"))
}

async fn remove_file_if_present(path: &std::path::Path) -> Result<bool, ApiError> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(ApiError::internal(format!(
            "cannot remove {}: {err}",
            path.display()
        ))),
    }
}

/// `api/v1/workflows/i/<id>/thumbnail?<random-uuid>` when a thumbnail file exists.
pub async fn thumbnail_url(state: &AppState, id: &str) -> Option<String> {
    let exists = tokio::fs::try_exists(thumbnail_path(state, id))
        .await
        .unwrap_or(false);
    exists.then(|| format!("api/v1/workflows/i/{id}/thumbnail?{}", uuid::Uuid::new_v4()))
}

/// Stores a new thumbnail: any decodable image, as a WebP within 256×256.
pub async fn set_thumbnail(
    state: &AppState,
    me: &Identity,
    id: &str,
    bytes: &[u8],
    content_type: Option<&str>,
) -> Result<(), ApiError> {
    let record = writable(state, me, id, "Not authorized to update this workflow").await?;
    let webp = encode_preview(bytes, content_type)?;
    let path = thumbnail_path(state, &record.workflow_id);
    write_file(&path, &webp)
        .await
        .map_err(|_| ApiError::failed("Workflow thumbnail file cannot be saved"))
}

/// Checks that an uploaded part is an image and turns it into a WebP preview (shared by
/// workflow thumbnails and style preset images).
pub fn encode_preview(bytes: &[u8], content_type: Option<&str>) -> Result<Vec<u8>, ApiError> {
    let is_image = content_type.is_some_and(|ct| ct.to_ascii_lowercase().starts_with("image/"));
    if !is_image {
        return Err(ApiError::UnsupportedMediaType("Not an image".to_owned()));
    }
    let image = media::decode(bytes)
        .map_err(|_| ApiError::UnsupportedMediaType("Failed to read image".to_owned()))?;
    media::thumbnail(&image).map_err(ApiError::internal)
}

/// Writes `bytes` to `path` through a temporary file, creating the directory.
pub async fn write_file(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4()));
    tokio::fs::write(&tmp, bytes).await?;
    if let Err(err) = tokio::fs::rename(&tmp, path).await {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(err);
    }
    Ok(())
}

/// Removes the thumbnail; a workflow without one is 404 `Not Found`.
pub async fn delete_thumbnail(state: &AppState, me: &Identity, id: &str) -> Result<(), ApiError> {
    let record = writable(state, me, id, "Not authorized to update this workflow").await?;
    if remove_file_if_present(&thumbnail_path(state, &record.workflow_id)).await? {
        Ok(())
    } else {
        Err(ApiError::not_found("Not Found"))
    }
}

/// The thumbnail bytes, for anyone (no authentication); 404 `Not Found` for an unknown
/// workflow and for one without a thumbnail.
pub async fn thumbnail_bytes(state: &AppState, id: &str) -> Result<Vec<u8>, ApiError> {
    let record = state
        .store
        .get_workflow(id)
        .await?
        .ok_or_else(|| ApiError::not_found("Not Found"))?;
    match tokio::fs::read(thumbnail_path(state, &record.workflow_id)).await {
        Ok(bytes) => Ok(bytes),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            Err(ApiError::not_found("Not Found"))
        }
        Err(err) => Err(ApiError::internal(err)),
    }
}

/// The filters shared by the listing, `/tags` and the count endpoints.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    pub categories: Option<Vec<WorkflowCategory>>,
    pub tags: Option<Vec<String>>,
    pub query: Option<String>,
    pub has_been_opened: Option<bool>,
    pub is_public: Option<bool>,
}

impl Filters {
    /// The store query, with the ownership scope of §1.6 applied for `me`.
    fn to_query(&self, me: &Identity) -> WorkflowQuery {
        let scoped =
            library::workflow_listing_scoped(me, self.categories.as_deref(), self.is_public);
        WorkflowQuery {
            categories: self
                .categories
                .as_ref()
                .map(|c| c.iter().map(|c| c.as_str().to_owned()).collect()),
            tags: self.tags.clone(),
            query: self.query.clone(),
            has_been_opened: self.has_been_opened,
            is_public: self.is_public,
            scope_to: scoped.then(|| me.user_id.clone()),
        }
    }
}

/// A listing request (§1.6).
#[derive(Debug, Clone)]
pub struct ListRequest {
    pub filters: Filters,
    pub page: i64,
    pub per_page: Option<i64>,
    pub order: WorkflowOrder,
    pub descending: bool,
    pub callable: Option<bool>,
}

/// One page of a listing.
#[derive(Debug)]
pub struct Page {
    pub page: i64,
    pub pages: i64,
    pub per_page: i64,
    pub total: i64,
    pub items: Vec<WorkflowRecord>,
}

pub async fn list(state: &AppState, me: &Identity, req: &ListRequest) -> Result<Page, ApiError> {
    let query = req.filters.to_query(me);
    let mut rows = state
        .store
        .list_workflows(&query, req.order, req.descending)
        .await?;
    if let Some(callable) = req.callable {
        rows.retain(|r| compatibility(&document(r)).is_callable == callable);
    }
    let total = i64::try_from(rows.len()).unwrap_or(i64::MAX);
    let Some(per_page) = req.per_page else {
        return Ok(Page {
            page: req.page,
            pages: 1,
            per_page: total,
            total,
            items: rows,
        });
    };
    let start = usize::try_from(req.page.saturating_mul(per_page)).unwrap_or(usize::MAX);
    let take = usize::try_from(per_page).unwrap_or(usize::MAX);
    let items: Vec<WorkflowRecord> = rows.into_iter().skip(start).take(take).collect();
    Ok(Page {
        page: req.page,
        pages: (total + per_page - 1) / per_page,
        per_page,
        total,
        items,
    })
}

/// Distinct tags of the matching rows, trimmed and sorted.
pub async fn tags(
    state: &AppState,
    me: &Identity,
    filters: &Filters,
) -> Result<Vec<String>, ApiError> {
    let strings = state
        .store
        .workflow_tag_strings(&filters.to_query(me))
        .await?;
    let mut tags: Vec<String> = strings
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    tags.sort();
    tags.dedup();
    Ok(tags)
}

/// One count per requested tag, with the other filters applied.
pub async fn counts_by_tag(
    state: &AppState,
    me: &Identity,
    filters: &Filters,
    tags: &[String],
) -> Result<BTreeMap<String, i64>, ApiError> {
    let mut out = BTreeMap::new();
    for tag in tags {
        let one = Filters {
            tags: Some(vec![tag.clone()]),
            ..filters.clone()
        };
        let count = state.store.count_workflows(&one.to_query(me)).await?;
        out.insert(tag.clone(), count);
    }
    Ok(out)
}

/// One count per requested category; the ownership scope is decided on the whole list.
pub async fn counts_by_category(
    state: &AppState,
    me: &Identity,
    filters: &Filters,
    categories: &[WorkflowCategory],
) -> Result<BTreeMap<String, i64>, ApiError> {
    let scope = filters.to_query(me).scope_to;
    let mut out = BTreeMap::new();
    for category in categories {
        let mut query = filters.to_query(me);
        query.categories = Some(vec![category.as_str().to_owned()]);
        query.scope_to = scope.clone();
        let count = state.store.count_workflows(&query).await?;
        out.insert(category.as_str().to_owned(), count);
    }
    Ok(out)
}

/// Why the bundled defaults could not be synchronised.
#[derive(Debug, thiserror::Error)]
pub enum DefaultsError {
    #[error("bundled default workflow #{0} is not a valid document: {1}")]
    Invalid(usize, String),
    #[error(transparent)]
    Store(#[from] atelier_store::StoreError),
}

/// The bundled defaults as `(id, document)` pairs, each checked for a `default_` id and the
/// `default` category.
pub fn bundled_defaults() -> Result<Vec<(String, String)>, DefaultsError> {
    let list: Vec<Value> = serde_json::from_str(DEFAULT_WORKFLOWS)
        .map_err(|e| DefaultsError::Invalid(0, e.to_string()))?;
    list.iter()
        .enumerate()
        .map(|(i, doc)| {
            let id = doc.get("id").and_then(Value::as_str).unwrap_or_default();
            if !id.starts_with("default_") {
                return Err(DefaultsError::Invalid(
                    i,
                    "id must start with default_".into(),
                ));
            }
            if declared_category(doc) != Some("default") {
                return Err(DefaultsError::Invalid(
                    i,
                    "meta.category must be default".into(),
                ));
            }
            Ok((id.to_owned(), doc.to_string()))
        })
        .collect()
}

/// Start-up: makes the default-category rows match the bundled set.
pub async fn sync_defaults(state: &AppState) -> Result<(), DefaultsError> {
    let defaults = bundled_defaults()?;
    let (inserted, updated, deleted) = state.store.sync_default_workflows(&defaults).await?;
    if inserted + updated + deleted > 0 {
        tracing::info!(inserted, updated, deleted, "default workflows synchronised");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bundled_defaults_are_valid_and_unique() {
        let defaults = bundled_defaults().unwrap();
        let mut ids: Vec<&str> = defaults.iter().map(|(id, _)| id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), defaults.len());
        assert_eq!(defaults.len(), 3);
    }

    #[test]
    fn compatibility_counts_workflow_returns() {
        let ret = json!({"type": "invocation", "data": {"type": "workflow_return"}});
        let other = json!({"type": "invocation", "data": {"type": "add"}});
        assert_eq!(
            compatibility(&json!({"nodes": [other]})).reason,
            "missing_workflow_return"
        );
        assert_eq!(compatibility(&json!({"nodes": [ret.clone()]})).reason, "ok");
        assert_eq!(
            compatibility(&json!({"nodes": [ret.clone(), ret]})).reason,
            "multiple_workflow_return"
        );
    }
}

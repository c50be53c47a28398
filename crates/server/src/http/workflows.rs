//! `/api/v1/workflows/*` (workflows-and-state.md §1): the workflow library, its listings,
//! tag and category counts, sharing, `opened_at` and thumbnails. Every route takes the
//! default guard except the thumbnail download, which needs no authentication in any mode.
//!
//! Workflow documents are validated here into the pydantic shape the reference stores
//! (`Workflow` / `WorkflowWithoutID`): unknown top-level keys are dropped, `form` and
//! `meta.category` get their defaults, and every failing field is reported at once.

use crate::http::body::{Body, Fields, FromBody};
use crate::http::error::{ApiError, ValidationIssue};
use crate::http::extract::CurrentUser;
use crate::http::query::{QueryFields, RawQuery};
use crate::service::workflows::{self as service, Filters, ListRequest};
use crate::state::AppState;
use atelier_domain::library::{is_semver, WorkflowCategory};
use atelier_store::{WorkflowOrder, WorkflowRecord};
use axum::extract::{DefaultBodyLimit, Multipart, Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, patch, put};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use utoipa::ToSchema;

pub fn routes(max_upload: usize) -> Router<AppState> {
    Router::new()
        .route("/api/v1/workflows/", get(list).post(create))
        .route(
            "/api/v1/workflows",
            any(crate::http::boards::redirect_to_slash),
        )
        .route(
            "/api/v1/workflows/i/{workflow_id}",
            get(get_workflow).patch(update).delete(delete),
        )
        .route(
            "/api/v1/workflows/i/{workflow_id}/is_public",
            patch(set_public),
        )
        .route(
            "/api/v1/workflows/i/{workflow_id}/opened_at",
            put(opened_at),
        )
        .route(
            "/api/v1/workflows/i/{workflow_id}/thumbnail",
            get(get_thumbnail)
                .put(set_thumbnail)
                .delete(delete_thumbnail)
                .layer(DefaultBodyLimit::max(max_upload)),
        )
        .route("/api/v1/workflows/tags", get(tags))
        .route("/api/v1/workflows/counts_by_tag", get(counts_by_tag))
        .route(
            "/api/v1/workflows/counts_by_category",
            get(counts_by_category),
        )
}

/// `WorkflowCallCompatibility`.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowCallCompatibility {
    pub is_callable: bool,
    pub reason: String,
    pub message: Option<String>,
}

impl From<service::Compatibility> for WorkflowCallCompatibility {
    fn from(c: service::Compatibility) -> Self {
        Self {
            is_callable: c.is_callable,
            reason: c.reason.to_owned(),
            message: c.message,
        }
    }
}

/// `WorkflowRecordDTO`.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowRecordDTO {
    pub workflow_id: String,
    pub name: String,
    pub created_at: String,
    pub updated_at: String,
    pub opened_at: Option<String>,
    pub user_id: String,
    pub is_public: bool,
    #[schema(value_type = Object)]
    pub workflow: Value,
}

impl From<WorkflowRecord> for WorkflowRecordDTO {
    fn from(r: WorkflowRecord) -> Self {
        let workflow = service::document(&r);
        Self {
            workflow_id: r.workflow_id,
            name: r.name,
            created_at: r.created_at,
            updated_at: r.updated_at,
            opened_at: r.opened_at,
            user_id: r.user_id.to_string(),
            is_public: r.is_public,
            workflow,
        }
    }
}

/// `WorkflowRecordWithThumbnailDTO`.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowRecordWithThumbnailDTO {
    #[serde(flatten)]
    pub record: WorkflowRecordDTO,
    pub thumbnail_url: Option<String>,
    pub call_saved_workflow_compatibility: Option<WorkflowCallCompatibility>,
}

/// `WorkflowRecordListItemWithThumbnailDTO`.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowRecordListItemWithThumbnailDTO {
    pub workflow_id: String,
    pub name: String,
    pub created_at: String,
    pub updated_at: String,
    pub opened_at: Option<String>,
    pub user_id: String,
    pub is_public: bool,
    pub description: String,
    pub category: String,
    pub tags: String,
    pub thumbnail_url: Option<String>,
    pub call_saved_workflow_compatibility: Option<WorkflowCallCompatibility>,
}

/// `PaginatedResults[WorkflowRecordListItemWithThumbnailDTO]`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PaginatedWorkflows {
    pub page: i64,
    pub pages: i64,
    pub per_page: i64,
    pub total: i64,
    pub items: Vec<WorkflowRecordListItemWithThumbnailDTO>,
}

/// Records one issue: kind, location, message, input, context.
type Push<'a> = dyn FnMut(&'static str, Vec<Value>, &str, Value, Option<Value>) + 'a;

fn loc(prefix: &[Value], tail: &[Value]) -> Vec<Value> {
    prefix.iter().chain(tail).cloned().collect()
}

/// Validates a workflow document at `prefix` (e.g. `["body", "workflow"]`). `with_id`: the
/// `Workflow` model (update), which requires a string `id`; without it (`WorkflowWithoutID`)
/// any `id` is dropped. Returns the normalised document, or `None` after recording issues.
fn validate_workflow(
    push: &mut Push<'_>,
    prefix: &[Value],
    value: &Value,
    with_id: bool,
) -> Option<Value> {
    let class = if with_id {
        "Workflow"
    } else {
        "WorkflowWithoutID"
    };
    let Value::Object(map) = value else {
        push(
            "model_type",
            prefix.to_vec(),
            &format!("Input should be a valid dictionary or instance of {class}"),
            value.clone(),
            Some(json!({"class_name": class})),
        );
        return None;
    };
    let mut ok = true;
    let mut out = Map::new();
    let string = |key: &str,
                  from: &Map<String, Value>,
                  at: &[Value],
                  push: &mut Push<'_>|
     -> Option<String> {
        match from.get(key) {
            Some(Value::String(s)) => Some(s.clone()),
            None => {
                push(
                    "missing",
                    loc(at, &[json!(key)]),
                    "Field required",
                    Value::Object(from.clone()),
                    None,
                );
                None
            }
            Some(other) => {
                push(
                    "string_type",
                    loc(at, &[json!(key)]),
                    "Input should be a valid string",
                    other.clone(),
                    None,
                );
                None
            }
        }
    };
    for key in [
        "name",
        "author",
        "description",
        "version",
        "contact",
        "tags",
        "notes",
    ] {
        match string(key, map, prefix, push) {
            Some(s) => {
                out.insert(key.to_owned(), Value::String(s));
            }
            None => ok = false,
        }
    }
    // exposedFields: list[ExposedField]
    match map.get("exposedFields") {
        Some(Value::Array(items)) => {
            let mut fields = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let at = loc(prefix, &[json!("exposedFields"), json!(i)]);
                let Value::Object(f) = item else {
                    push(
                        "model_type",
                        at,
                        "Input should be a valid dictionary or instance of ExposedField",
                        item.clone(),
                        Some(json!({"class_name": "ExposedField"})),
                    );
                    ok = false;
                    continue;
                };
                let node_id = string("nodeId", f, &at, push);
                let field_name = string("fieldName", f, &at, push);
                match (node_id, field_name) {
                    (Some(n), Some(f)) => fields.push(json!({"nodeId": n, "fieldName": f})),
                    _ => ok = false,
                }
            }
            out.insert("exposedFields".to_owned(), Value::Array(fields));
        }
        other => {
            ok = false;
            list_issue(push, prefix, "exposedFields", other, map);
        }
    }
    // meta: WorkflowMeta
    match map.get("meta") {
        Some(Value::Object(meta)) => {
            let at = loc(prefix, &[json!("meta")]);
            let version = string("version", meta, &at, push);
            if let Some(v) = &version {
                if !is_semver(v) {
                    push(
                        "value_error",
                        loc(&at, &[json!("version")]),
                        &format!("Value error, Invalid workflow meta version: {v}"),
                        json!(v),
                        Some(json!({"error": {}})),
                    );
                    ok = false;
                }
            } else {
                ok = false;
            }
            let category = match meta.get("category") {
                None => Some(WorkflowCategory::User),
                Some(Value::String(s)) if WorkflowCategory::parse(s).is_some() => {
                    WorkflowCategory::parse(s)
                }
                Some(other) => {
                    push(
                        "enum",
                        loc(&at, &[json!("category")]),
                        "Input should be 'user' or 'default'",
                        other.clone(),
                        Some(json!({"expected": "'user' or 'default'"})),
                    );
                    None
                }
            };
            match (version, category) {
                (Some(v), Some(c)) => {
                    out.insert(
                        "meta".to_owned(),
                        json!({"version": v, "category": c.as_str()}),
                    );
                }
                _ => ok = false,
            }
        }
        None => {
            push(
                "missing",
                loc(prefix, &[json!("meta")]),
                "Field required",
                value.clone(),
                None,
            );
            ok = false;
        }
        Some(other) => {
            push(
                "model_type",
                loc(prefix, &[json!("meta")]),
                "Input should be a valid dictionary or instance of WorkflowMeta",
                other.clone(),
                Some(json!({"class_name": "WorkflowMeta"})),
            );
            ok = false;
        }
    }
    // nodes / edges: list[dict[str, JsonValue]]
    for key in ["nodes", "edges"] {
        match map.get(key) {
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    if !item.is_object() {
                        push(
                            "dict_type",
                            loc(prefix, &[json!(key), json!(i)]),
                            "Input should be a valid dictionary",
                            item.clone(),
                            None,
                        );
                        ok = false;
                    }
                }
                out.insert(key.to_owned(), Value::Array(items.clone()));
            }
            other => {
                ok = false;
                list_issue(push, prefix, key, other, map);
            }
        }
    }
    // form: dict | None = None
    match map.get("form") {
        None | Some(Value::Null) => {
            out.insert("form".to_owned(), Value::Null);
        }
        Some(form @ Value::Object(_)) => {
            out.insert("form".to_owned(), form.clone());
        }
        Some(other) => {
            push(
                "dict_type",
                loc(prefix, &[json!("form")]),
                "Input should be a valid dictionary",
                other.clone(),
                None,
            );
            ok = false;
        }
    }
    if with_id {
        match string("id", map, prefix, push) {
            Some(id) => {
                out.insert("id".to_owned(), Value::String(id));
            }
            None => ok = false,
        }
    }
    let doc = Value::Object(out);
    if ok && service::workflow_return_count(&doc) > 1 {
        push(
            "value_error",
            prefix.to_vec(),
            "Value error, The workflow must not contain more than one workflow_return node.",
            value.clone(),
            Some(json!({"error": {}})),
        );
        ok = false;
    }
    ok.then_some(doc)
}

fn list_issue(
    push: &mut Push<'_>,
    prefix: &[Value],
    key: &str,
    found: Option<&Value>,
    parent: &Map<String, Value>,
) {
    match found {
        None => push(
            "missing",
            loc(prefix, &[json!(key)]),
            "Field required",
            Value::Object(parent.clone()),
            None,
        ),
        Some(other) => push(
            "list_type",
            loc(prefix, &[json!(key)]),
            "Input should be a valid list",
            other.clone(),
            None,
        ),
    }
}

/// `{"workflow": WorkflowWithoutID}` (`ID = false`) or `{"workflow": Workflow}` (`ID = true`).
pub struct WorkflowBody<const ID: bool>(Value);

impl<const ID: bool> FromBody for WorkflowBody<ID> {
    fn from_fields(f: &mut Fields<'_>) -> Option<Self> {
        let prefix = [json!("body"), json!("workflow")];
        let Some(raw) = f.raw("workflow").cloned() else {
            let whole = f.whole().clone();
            f.push_issue("missing", prefix.to_vec(), "Field required", whole, None);
            return None;
        };
        let mut push =
            |kind: &'static str, loc: Vec<Value>, msg: &str, input: Value, ctx: Option<Value>| {
                f.push_issue(kind, loc, msg, input, ctx)
            };
        validate_workflow(&mut push, &prefix, &raw, ID).map(WorkflowBody)
    }
}

/// `{"is_public": bool}`.
pub struct IsPublicBody(bool);

impl FromBody for IsPublicBody {
    fn from_fields(f: &mut Fields<'_>) -> Option<Self> {
        match f.raw("is_public").cloned() {
            None => {
                let whole = f.whole().clone();
                f.push_issue(
                    "missing",
                    vec![json!("body"), json!("is_public")],
                    "Field required",
                    whole,
                    None,
                );
                None
            }
            Some(Value::Null) => {
                f.push_issue(
                    "bool_type",
                    vec![json!("body"), json!("is_public")],
                    "Input should be a valid boolean",
                    Value::Null,
                    None,
                );
                None
            }
            Some(_) => f.optional_bool("is_public").flatten().map(IsPublicBody),
        }
    }
}

/// Builds the record DTO with its thumbnail and compatibility.
async fn with_thumbnail(
    state: &AppState,
    record: WorkflowRecord,
) -> WorkflowRecordWithThumbnailDTO {
    let thumbnail_url = service::thumbnail_url(state, &record.workflow_id).await;
    let compat = service::compatibility(&service::document(&record));
    WorkflowRecordWithThumbnailDTO {
        record: record.into(),
        thumbnail_url,
        call_saved_workflow_compatibility: Some(compat.into()),
    }
}

/// Creates a workflow owned by the caller (200, not 201, as in the reference).
#[utoipa::path(post, path = "/api/v1/workflows/", tag = "workflows",
    responses((status = 200, body = WorkflowRecordDTO), (status = 400), (status = 401), (status = 422)))]
pub async fn create(
    State(state): State<AppState>,
    user: CurrentUser,
    Body(WorkflowBody(doc)): Body<WorkflowBody<false>>,
) -> Result<Json<WorkflowRecordDTO>, ApiError> {
    let record = service::create(&state, &user.identity, doc).await?;
    Ok(Json(record.into()))
}

/// One workflow, with its thumbnail URL and call compatibility. Does not touch `opened_at`.
#[utoipa::path(get, path = "/api/v1/workflows/i/{workflow_id}", tag = "workflows",
    params(("workflow_id" = String, Path)),
    responses((status = 200, body = WorkflowRecordWithThumbnailDTO), (status = 401), (status = 403), (status = 404)))]
pub async fn get_workflow(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> Result<Json<WorkflowRecordWithThumbnailDTO>, ApiError> {
    let record = service::readable(&state, &user.identity, &id).await?;
    Ok(Json(with_thumbnail(&state, record).await))
}

/// Replaces a workflow document. The target is the body's `workflow.id`; the path id is
/// ignored (as in the reference).
#[utoipa::path(patch, path = "/api/v1/workflows/i/{workflow_id}", tag = "workflows",
    params(("workflow_id" = String, Path)),
    responses((status = 200, body = WorkflowRecordDTO), (status = 400), (status = 401), (status = 403), (status = 404), (status = 422)))]
pub async fn update(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(_id): Path<String>,
    Body(WorkflowBody(doc)): Body<WorkflowBody<true>>,
) -> Result<Json<WorkflowRecordDTO>, ApiError> {
    let record = service::update(&state, &user.identity, doc).await?;
    Ok(Json(record.into()))
}

/// Deletes a workflow and its thumbnail.
#[utoipa::path(delete, path = "/api/v1/workflows/i/{workflow_id}", tag = "workflows",
    params(("workflow_id" = String, Path)),
    responses((status = 200, body = Option<String>), (status = 400), (status = 401), (status = 403), (status = 404)))]
pub async fn delete(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    service::delete(&state, &user.identity, &id).await?;
    Ok(Json(Value::Null))
}

/// Shares or unshares a workflow (and adds or removes its `shared` tag).
#[utoipa::path(patch, path = "/api/v1/workflows/i/{workflow_id}/is_public", tag = "workflows",
    params(("workflow_id" = String, Path)),
    responses((status = 200, body = WorkflowRecordDTO), (status = 401), (status = 403), (status = 404), (status = 422)))]
pub async fn set_public(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
    Body(IsPublicBody(is_public)): Body<IsPublicBody>,
) -> Result<Json<WorkflowRecordDTO>, ApiError> {
    let record = service::set_public(&state, &user.identity, &id, is_public).await?;
    Ok(Json(record.into()))
}

/// Marks a workflow as opened now.
#[utoipa::path(put, path = "/api/v1/workflows/i/{workflow_id}/opened_at", tag = "workflows",
    params(("workflow_id" = String, Path)),
    responses((status = 200, body = Option<String>), (status = 401), (status = 403), (status = 404)))]
pub async fn opened_at(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    service::mark_opened(&state, &user.identity, &id, chrono::Utc::now()).await?;
    Ok(Json(Value::Null))
}

/// Uploads a thumbnail (multipart `image`), stored as a WebP within 256×256.
#[utoipa::path(put, path = "/api/v1/workflows/i/{workflow_id}/thumbnail", tag = "workflows",
    params(("workflow_id" = String, Path)),
    responses((status = 200, body = Option<String>), (status = 401), (status = 403), (status = 404), (status = 415), (status = 422)))]
pub async fn set_thumbnail(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Json<Value>, ApiError> {
    let parts = read_multipart(multipart).await?;
    let Some(image) = parts.into_iter().find(|p| p.name == "image") else {
        return Err(missing_part("image"));
    };
    service::set_thumbnail(
        &state,
        &user.identity,
        &id,
        &image.bytes,
        image.content_type.as_deref(),
    )
    .await?;
    Ok(Json(Value::Null))
}

/// Deletes a workflow's thumbnail (404 `Not Found` when it has none).
#[utoipa::path(delete, path = "/api/v1/workflows/i/{workflow_id}/thumbnail", tag = "workflows",
    params(("workflow_id" = String, Path)),
    responses((status = 200, body = Option<String>), (status = 401), (status = 403), (status = 404)))]
pub async fn delete_thumbnail(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    service::delete_thumbnail(&state, &user.identity, &id).await?;
    Ok(Json(Value::Null))
}

/// A workflow's thumbnail, for anyone: no authentication in any mode. Served as `image/png`
/// (the bytes are WebP), as the reference does.
#[utoipa::path(get, path = "/api/v1/workflows/i/{workflow_id}/thumbnail", tag = "workflows",
    params(("workflow_id" = String, Path)),
    responses((status = 200, content_type = "image/png"), (status = 404)))]
pub async fn get_thumbnail(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let bytes = service::thumbnail_bytes(&state, &id).await?;
    Ok(image_response(bytes, &id))
}

/// Image bytes with the headers of the reference's workflow and preset image routes.
pub fn image_response(bytes: Vec<u8>, id: &str) -> Response {
    let mut response = (StatusCode::OK, bytes).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=31536000"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("inline; filename=\"{id}.png\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    response
}

/// One part of a multipart body.
pub struct Part {
    pub name: String,
    pub content_type: Option<String>,
    pub bytes: Vec<u8>,
}

/// Reads every part of a multipart body. A body that is not multipart reads as no parts (the
/// required-part check then answers 422); a stream that breaks off is 413 over the size limit,
/// else 422.
pub async fn read_multipart(
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Vec<Part>, ApiError> {
    let Ok(mut multipart) = multipart else {
        return Ok(Vec::new());
    };
    let mut parts = Vec::new();
    loop {
        match multipart.next_field().await {
            Ok(Some(field)) => {
                let name = field.name().unwrap_or_default().to_owned();
                let content_type = field.content_type().map(str::to_owned);
                let bytes = field.bytes().await.map_err(multipart_error)?.to_vec();
                parts.push(Part {
                    name,
                    content_type,
                    bytes,
                });
            }
            Ok(None) => return Ok(parts),
            Err(err) => return Err(multipart_error(err)),
        }
    }
}

fn multipart_error(err: axum::extract::multipart::MultipartError) -> ApiError {
    if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge
    } else {
        ApiError::Validation(vec![ValidationIssue {
            kind: "value_error",
            loc: vec![json!("body")],
            msg: format!("Malformed multipart body: {}", err.body_text()),
            input: Value::Null,
            ctx: None,
        }])
    }
}

/// 422 for a missing form part.
pub fn missing_part(name: &str) -> ApiError {
    ApiError::Validation(vec![ValidationIssue {
        kind: "missing",
        loc: vec![json!("body"), json!(name)],
        msg: "Field required".to_owned(),
        input: Value::Null,
        ctx: None,
    }])
}

const ORDER_BY: [&str; 5] = ["created_at", "updated_at", "opened_at", "name", "is_public"];

fn categories_of(list: Option<Vec<String>>) -> Option<Vec<WorkflowCategory>> {
    list.map(|l| {
        l.iter()
            .filter_map(|c| WorkflowCategory::parse(c))
            .collect()
    })
}

/// Reads the filters common to the listing and count routes.
fn filters(q: &mut QueryFields<'_>, categories_required: bool) -> Option<Filters> {
    let categories = q.optional_enum_list("categories", &WorkflowCategory::NAMES);
    let missing = categories_required && matches!(categories, Some(None));
    if missing {
        q.issue(
            "missing",
            vec![json!("query"), json!("categories")],
            "Field required",
            Value::Null,
            None,
        );
    }
    let has_been_opened = q.optional_bool("has_been_opened");
    let is_public = q.optional_bool("is_public");
    if missing {
        return None;
    }
    Some(Filters {
        categories: categories_of(categories?),
        tags: None,
        query: None,
        has_been_opened: has_been_opened?,
        is_public: is_public?,
    })
}

/// All values of a repeated parameter (`tags=a&tags=b`).
fn repeated(query: &RawQuery, name: &str) -> Option<Vec<String>> {
    let values: Vec<String> = query
        .0
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .collect();
    (!values.is_empty()).then_some(values)
}

/// Lists workflows (§1.6): filters, ownership scope, ordering and paging.
#[utoipa::path(get, path = "/api/v1/workflows/", tag = "workflows",
    params(("page" = Option<i64>, Query), ("per_page" = Option<i64>, Query), ("order_by" = Option<String>, Query),
           ("direction" = Option<String>, Query), ("categories" = Option<Vec<String>>, Query),
           ("tags" = Option<Vec<String>>, Query), ("query" = Option<String>, Query),
           ("has_been_opened" = Option<bool>, Query), ("is_public" = Option<bool>, Query),
           ("callable" = Option<bool>, Query)),
    responses((status = 200, body = PaginatedWorkflows), (status = 401), (status = 422)))]
pub async fn list(
    State(state): State<AppState>,
    user: CurrentUser,
    query: RawQuery,
) -> Result<Json<PaginatedWorkflows>, ApiError> {
    let mut q = QueryFields::new(&query);
    let page = q.optional_int("page", Some(0), None);
    let per_page = q.optional_int("per_page", Some(1), None);
    let order_by = q.optional_enum("order_by", &ORDER_BY);
    let direction = q.optional_enum("direction", &["ASC", "DESC"]);
    let base = filters(&mut q, false);
    let text = q.optional_str("query", None);
    let callable = q.optional_bool("callable");
    q.finish()?;
    let (
        Some(page),
        Some(per_page),
        Some(order_by),
        Some(direction),
        Some(base),
        Some(text),
        Some(callable),
    ) = (page, per_page, order_by, direction, base, text, callable)
    else {
        return Err(ApiError::internal("query validation inconsistency"));
    };
    let order = match order_by.as_deref() {
        Some("created_at") => WorkflowOrder::CreatedAt,
        Some("updated_at") => WorkflowOrder::UpdatedAt,
        Some("opened_at") => WorkflowOrder::OpenedAt,
        Some("is_public") => WorkflowOrder::IsPublic,
        _ => WorkflowOrder::Name,
    };
    let req = ListRequest {
        filters: Filters {
            tags: repeated(&query, "tags"),
            query: text,
            ..base
        },
        page: page.unwrap_or(0),
        per_page,
        order,
        descending: direction.as_deref() == Some("DESC"),
        callable,
    };
    let out = service::list(&state, &user.identity, &req).await?;
    let mut items = Vec::with_capacity(out.items.len());
    for r in out.items {
        let thumbnail_url = service::thumbnail_url(&state, &r.workflow_id).await;
        let compat = service::compatibility(&service::document(&r));
        items.push(WorkflowRecordListItemWithThumbnailDTO {
            workflow_id: r.workflow_id,
            name: r.name,
            created_at: r.created_at,
            updated_at: r.updated_at,
            opened_at: r.opened_at,
            user_id: r.user_id.to_string(),
            is_public: r.is_public,
            description: r.description,
            category: r.category,
            tags: r.tags,
            thumbnail_url,
            call_saved_workflow_compatibility: Some(compat.into()),
        });
    }
    Ok(Json(PaginatedWorkflows {
        page: out.page,
        pages: out.pages,
        per_page: out.per_page,
        total: out.total,
        items,
    }))
}

/// Distinct tags of the workflows the caller can list.
#[utoipa::path(get, path = "/api/v1/workflows/tags", tag = "workflows",
    params(("categories" = Option<Vec<String>>, Query), ("is_public" = Option<bool>, Query)),
    responses((status = 200, body = Vec<String>), (status = 401), (status = 422)))]
pub async fn tags(
    State(state): State<AppState>,
    user: CurrentUser,
    query: RawQuery,
) -> Result<Json<Vec<String>>, ApiError> {
    let mut q = QueryFields::new(&query);
    let categories = q.optional_enum_list("categories", &WorkflowCategory::NAMES);
    let is_public = q.optional_bool("is_public");
    q.finish()?;
    let f = Filters {
        categories: categories_of(categories.flatten()),
        is_public: is_public.flatten(),
        ..Filters::default()
    };
    Ok(Json(service::tags(&state, &user.identity, &f).await?))
}

/// Counts per requested tag.
#[utoipa::path(get, path = "/api/v1/workflows/counts_by_tag", tag = "workflows",
    params(("tags" = Vec<String>, Query), ("categories" = Option<Vec<String>>, Query),
           ("has_been_opened" = Option<bool>, Query), ("is_public" = Option<bool>, Query)),
    responses((status = 200, body = BTreeMap<String, i64>), (status = 401), (status = 422)))]
pub async fn counts_by_tag(
    State(state): State<AppState>,
    user: CurrentUser,
    query: RawQuery,
) -> Result<Json<BTreeMap<String, i64>>, ApiError> {
    let mut q = QueryFields::new(&query);
    let tags = repeated(&query, "tags");
    if tags.is_none() {
        q.issue(
            "missing",
            vec![json!("query"), json!("tags")],
            "Field required",
            Value::Null,
            None,
        );
    }
    let f = filters(&mut q, false);
    q.finish()?;
    let (Some(tags), Some(f)) = (tags, f) else {
        return Err(ApiError::internal("query validation inconsistency"));
    };
    Ok(Json(
        service::counts_by_tag(&state, &user.identity, &f, &tags).await?,
    ))
}

/// Counts per requested category.
#[utoipa::path(get, path = "/api/v1/workflows/counts_by_category", tag = "workflows",
    params(("categories" = Vec<String>, Query), ("has_been_opened" = Option<bool>, Query), ("is_public" = Option<bool>, Query)),
    responses((status = 200, body = BTreeMap<String, i64>), (status = 401), (status = 422)))]
pub async fn counts_by_category(
    State(state): State<AppState>,
    user: CurrentUser,
    query: RawQuery,
) -> Result<Json<BTreeMap<String, i64>>, ApiError> {
    let mut q = QueryFields::new(&query);
    let f = filters(&mut q, true);
    q.finish()?;
    let Some(f) = f else {
        return Err(ApiError::internal("query validation inconsistency"));
    };
    let categories = f.categories.clone().unwrap_or_default();
    Ok(Json(
        service::counts_by_category(&state, &user.identity, &f, &categories).await?,
    ))
}

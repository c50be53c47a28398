//! `/api/v1/images/*` and `/api/v1/board_images/*` (boards-images.md §6–7).

use crate::http::boards::{redirect_to_slash, CATEGORY_NAMES};
use crate::http::body::{Body, Fields, FromBody};
use crate::http::error::{ApiError, ValidationIssue};
use crate::http::extract::{CurrentUser, MediaUser};
use crate::http::query::{QueryFields, RawQuery};
use crate::service::images::{self as service, BatchOutcome, Upload};
use crate::state::AppState;
use atelier_domain::content::{ImageCategory, ResourceOrigin};
use atelier_store::{BoardFilter, ImageChanges, ImageQuery, ImageRecord};
use axum::extract::{DefaultBodyLimit, Multipart, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

pub fn routes(max_upload: usize) -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/images/upload",
            post(upload).layer(DefaultBodyLimit::max(max_upload)),
        )
        .route("/api/v1/images/", get(list).post(create_blank))
        .route("/api/v1/images", any(redirect_to_slash))
        .route("/api/v1/images/names", get(names))
        .route("/api/v1/images/images_by_names", post(images_by_names))
        .route("/api/v1/images/delete", post(delete_batch))
        .route(
            "/api/v1/images/uncategorized",
            axum::routing::delete(delete_uncategorized),
        )
        .route("/api/v1/images/star", post(star))
        .route("/api/v1/images/unstar", post(unstar))
        .route(
            "/api/v1/images/intermediates",
            get(count_intermediates).delete(clear_intermediates),
        )
        .route("/api/v1/images/download", post(download))
        .route("/api/v1/images/download/{item_name}", get(get_download))
        .route(
            "/api/v1/images/i/{image_name}",
            get(get_image).patch(update_image).delete(delete_image),
        )
        .route("/api/v1/images/i/{image_name}/metadata", get(metadata))
        .route("/api/v1/images/i/{image_name}/workflow", get(workflow))
        .route("/api/v1/images/i/{image_name}/full", get(full))
        .route("/api/v1/images/i/{image_name}/thumbnail", get(thumbnail))
        .route("/api/v1/images/i/{image_name}/urls", get(urls))
        .route(
            "/api/v1/board_images/",
            post(add_to_board).delete(remove_from_board),
        )
        .route("/api/v1/board_images", any(redirect_to_slash))
        .route("/api/v1/board_images/batch", post(add_batch_to_board))
        .route(
            "/api/v1/board_images/batch/delete",
            post(remove_batch_from_board),
        )
}

// ---- wire types -------------------------------------------------------------------------

/// An image as the API returns it. Ownership is never exposed.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImageDTO {
    pub image_name: String,
    pub image_url: String,
    pub thumbnail_url: String,
    pub image_origin: String,
    pub image_category: String,
    pub width: i64,
    pub height: i64,
    pub created_at: String,
    pub updated_at: String,
    pub deleted_at: Option<String>,
    pub is_intermediate: bool,
    pub session_id: Option<String>,
    pub node_id: Option<String>,
    pub starred: bool,
    pub has_workflow: bool,
    pub image_subfolder: String,
    pub board_id: Option<String>,
}

pub fn image_url(name: &str) -> String {
    format!("api/v1/images/i/{name}/full")
}

pub fn thumbnail_url(name: &str) -> String {
    format!("api/v1/images/i/{name}/thumbnail")
}

impl From<ImageRecord> for ImageDTO {
    fn from(i: ImageRecord) -> Self {
        Self {
            image_url: image_url(&i.image_name),
            thumbnail_url: thumbnail_url(&i.image_name),
            image_name: i.image_name,
            image_origin: i.image_origin.as_str().to_owned(),
            image_category: i.image_category.as_str().to_owned(),
            width: i.width,
            height: i.height,
            created_at: i.created_at,
            updated_at: i.updated_at,
            deleted_at: None,
            is_intermediate: i.is_intermediate,
            session_id: i.session_id,
            node_id: i.node_id,
            starred: i.starred,
            has_workflow: i.has_workflow,
            image_subfolder: i.image_subfolder,
            board_id: i.board_id,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OffsetPaginatedImages {
    pub limit: i64,
    pub offset: i64,
    pub total: i64,
    pub items: Vec<ImageDTO>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImageUrlsDTO {
    pub image_name: String,
    pub image_url: String,
    pub thumbnail_url: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImageNamesResult {
    pub image_names: Vec<String>,
    pub starred_count: i64,
    pub total_count: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowAndGraphResponse {
    pub workflow: Option<String>,
    pub graph: Option<String>,
}

fn batch_json(out: BatchOutcome, done_key: &str) -> Json<Value> {
    Json(json!({
        "affected_boards": out.affected_boards.into_iter().collect::<Vec<_>>(),
        done_key: out.done,
        "failed_images": out.failed,
    }))
}

// ---- bodies -----------------------------------------------------------------------------

const MAX_NAMES: usize = 1000;
const MAX_NAME_LEN: usize = 255;

/// `{image_names: [...]}`.
pub struct ImageNamesBody(Vec<String>);

impl FromBody for ImageNamesBody {
    fn from_fields(f: &mut Fields<'_>) -> Option<Self> {
        f.required_str_list("image_names", MAX_NAMES, MAX_NAME_LEN)
            .map(ImageNamesBody)
    }
}

/// `{board_id, image_name}`.
pub struct AddToBoardBody {
    board_id: String,
    image_name: String,
}

impl FromBody for AddToBoardBody {
    fn from_fields(f: &mut Fields<'_>) -> Option<Self> {
        let board_id = f.required_str("board_id");
        let image_name = f.required_str("image_name");
        Some(Self {
            board_id: board_id?,
            image_name: image_name?,
        })
    }
}

/// `{image_name}`.
pub struct ImageNameBody(String);

impl FromBody for ImageNameBody {
    fn from_fields(f: &mut Fields<'_>) -> Option<Self> {
        f.required_str("image_name").map(ImageNameBody)
    }
}

/// `{board_id, image_names}`.
pub struct AddBatchBody {
    board_id: String,
    image_names: Vec<String>,
}

impl FromBody for AddBatchBody {
    fn from_fields(f: &mut Fields<'_>) -> Option<Self> {
        let board_id = f.required_str("board_id");
        let image_names = f.required_str_list("image_names", MAX_NAMES, MAX_NAME_LEN);
        Some(Self {
            board_id: board_id?,
            image_names: image_names?,
        })
    }
}

/// `ImageRecordChanges`: all optional; strict types; unknown keys ignored.
pub struct ImageChangesBody(ImageChanges);

impl FromBody for ImageChangesBody {
    fn from_fields(f: &mut Fields<'_>) -> Option<Self> {
        let category = match f.raw("image_category").cloned() {
            None | Some(Value::Null) => Some(None),
            Some(Value::String(s)) if ImageCategory::parse(&s).is_some() => {
                Some(ImageCategory::parse(&s))
            }
            Some(other) => {
                let expected = crate::http::query::enum_expected(&CATEGORY_NAMES);
                f.push_issue(
                    "enum",
                    vec![json!("body"), json!("image_category")],
                    &format!("Input should be {expected}"),
                    other,
                    Some(json!({"expected": expected})),
                );
                None
            }
        };
        let session_id = f.optional_str("session_id");
        let is_intermediate = f.strict_optional_bool("is_intermediate");
        let starred = f.strict_optional_bool("starred");
        Some(ImageChangesBody(ImageChanges {
            image_category: category?,
            session_id: session_id?,
            is_intermediate: is_intermediate?,
            starred: starred?,
        }))
    }
}

/// `{image_names?, board_id?}` for bulk downloads.
pub struct DownloadBody {
    image_names: Option<Vec<String>>,
    board_id: Option<String>,
}

impl FromBody for DownloadBody {
    fn from_fields(f: &mut Fields<'_>) -> Option<Self> {
        let image_names = match f.raw("image_names") {
            None | Some(Value::Null) => Some(None),
            Some(_) => f
                .required_str_list("image_names", MAX_NAMES, MAX_NAME_LEN)
                .map(Some),
        };
        let board_id = f.optional_str("board_id");
        Some(Self {
            image_names: image_names?,
            board_id: board_id?,
        })
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImagesDownloaded {
    pub response: Option<String>,
    pub bulk_download_item_name: Option<String>,
}

// ---- handlers ---------------------------------------------------------------------------

fn query_issue(kind: &'static str, loc: Vec<Value>, msg: &str) -> ValidationIssue {
    ValidationIssue {
        kind,
        loc,
        msg: msg.to_owned(),
        input: Value::Null,
        ctx: None,
    }
}

/// Uploads an image (multipart `file`, optional `metadata` and `resize_to`).
#[utoipa::path(post, path = "/api/v1/images/upload", tag = "images",
    params(("image_category" = String, Query), ("is_intermediate" = bool, Query), ("board_id" = Option<String>, Query),
           ("session_id" = Option<String>, Query), ("crop_visible" = Option<bool>, Query)),
    responses((status = 201, body = ImageDTO), (status = 400), (status = 401), (status = 403), (status = 404),
              (status = 413), (status = 415), (status = 422)))]
pub async fn upload(
    State(state): State<AppState>,
    user: CurrentUser,
    query: RawQuery,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Response, ApiError> {
    let mut q = QueryFields::new(&query);
    let category = q.optional_enum("image_category", &CATEGORY_NAMES);
    let category_missing = matches!(category, Some(None));
    let is_intermediate = q.required_bool("is_intermediate");
    let board_id = q.optional_str("board_id", None);
    let session_id = q.optional_str("session_id", None);
    let crop_visible = q.bool_or("crop_visible", false);
    let mut issues = match q.finish() {
        Ok(()) => Vec::new(),
        Err(ApiError::Validation(issues)) => issues,
        Err(other) => return Err(other),
    };
    if category_missing {
        issues.insert(
            0,
            query_issue(
                "missing",
                vec![json!("query"), json!("image_category")],
                "Field required",
            ),
        );
    }
    let (mut file, mut content_type, mut metadata, mut resize_to) = (None, None, None, None);
    if let Ok(mut multipart) = multipart {
        loop {
            match multipart.next_field().await {
                Ok(Some(field)) => {
                    let name = field.name().unwrap_or_default().to_owned();
                    match name.as_str() {
                        "file" => {
                            content_type = field.content_type().map(str::to_owned);
                            file = Some(field.bytes().await.map_err(multipart_error)?.to_vec());
                        }
                        "metadata" => metadata = Some(field.text().await.map_err(multipart_error)?),
                        "resize_to" => {
                            resize_to = Some(field.text().await.map_err(multipart_error)?)
                        }
                        _ => {}
                    }
                }
                Ok(None) => break,
                Err(err) => return Err(multipart_error(err)),
            }
        }
    }
    if file.is_none() {
        issues.push(query_issue(
            "missing",
            vec![json!("body"), json!("file")],
            "Field required",
        ));
    }
    if !issues.is_empty() {
        return Err(ApiError::Validation(issues));
    }
    let upload = Upload {
        bytes: file.unwrap_or_default(),
        content_type,
        category: category
            .flatten()
            .and_then(|c| ImageCategory::parse(&c))
            .unwrap_or(ImageCategory::General),
        is_intermediate: is_intermediate.unwrap_or(false),
        board_id: board_id.flatten(),
        session_id: session_id.flatten(),
        crop_visible: crop_visible.unwrap_or(false),
        metadata_field: metadata,
        resize_to,
    };
    let record = service::upload(&state, &user.identity, upload).await?;
    let location = image_url(&record.image_name);
    let mut response = (StatusCode::CREATED, Json(ImageDTO::from(record))).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// A multipart stream that breaks off: over the size limit is 413, anything else 422.
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

/// Creating a blank image this way is not supported (as in the reference).
pub async fn create_blank(_user: CurrentUser) -> Response {
    (
        StatusCode::NOT_IMPLEMENTED,
        Json(json!({"detail": "Not implemented"})),
    )
        .into_response()
}

/// The §7.2 filters as requested.
pub struct ImageFilters {
    pub(crate) origin: Option<ResourceOrigin>,
    pub(crate) categories: Option<Vec<ImageCategory>>,
    pub(crate) is_intermediate: Option<bool>,
    pub(crate) board_id: Option<String>,
    pub(crate) descending: bool,
    pub(crate) starred_first: bool,
    pub(crate) search_term: Option<String>,
    pub(crate) created_date: Option<String>,
}

/// Reads the §7.2 filters (`origin_key` names the origin parameter).
pub(crate) fn image_filters(q: &mut QueryFields<'_>, origin_key: &str) -> Option<ImageFilters> {
    let origin = q.optional_enum(origin_key, &["internal", "external"]);
    let categories = q.optional_enum_list("categories", &CATEGORY_NAMES);
    let is_intermediate = q.optional_bool("is_intermediate");
    let board_id = q.optional_str("board_id", None);
    let order_dir = q.optional_enum("order_dir", &["ASC", "DESC"]);
    let starred_first = q.bool_or("starred_first", true);
    let search_term = q.optional_str("search_term", None);
    Some(ImageFilters {
        origin: origin?.as_deref().and_then(ResourceOrigin::parse),
        categories: categories?.map(|list| {
            list.iter()
                .filter_map(|c| ImageCategory::parse(c))
                .collect()
        }),
        is_intermediate: is_intermediate?,
        board_id: board_id?,
        descending: order_dir?.as_deref() != Some("ASC"),
        starred_first: starred_first?,
        search_term: search_term?,
        created_date: None,
    })
}

/// Builds the row scope: non-admins see their own images unless a (readable) board is named.
pub(crate) async fn image_query(
    state: &AppState,
    user: &CurrentUser,
    f: ImageFilters,
) -> Result<ImageQuery, ApiError> {
    let me = &user.identity;
    let own = (!me.is_admin()).then(|| me.user_id.clone());
    let (board, owner) = match f.board_id.as_deref() {
        None => (BoardFilter::Any, own),
        Some("none") => (BoardFilter::Uncategorized, own),
        Some(id) => {
            if !me.is_admin() {
                crate::service::boards::readable(state, me, id).await?;
            }
            (BoardFilter::Board(id.to_owned()), None)
        }
    };
    Ok(ImageQuery {
        owner,
        board,
        origin: f.origin,
        categories: f.categories,
        is_intermediate: f.is_intermediate,
        descending: f.descending,
        starred_first: f.starred_first,
        search_term: f.search_term,
        created_date: f.created_date,
    })
}

/// One page of images for the §7.2 filters plus `offset` (≥ 0, default 0) and `limit`
/// (0–1000, default 10): the rows, the true total, and the offset and limit used.
pub(crate) async fn image_page(
    state: &AppState,
    user: &CurrentUser,
    query: &RawQuery,
    origin_key: &str,
) -> Result<(Vec<ImageRecord>, i64, i64, i64), ApiError> {
    let mut q = QueryFields::new(query);
    let filters = image_filters(&mut q, origin_key);
    let offset = q.optional_int("offset", Some(0), None);
    let limit = q.optional_int("limit", Some(0), Some(1000));
    q.finish()?;
    let (Some(filters), Some(offset), Some(limit)) = (filters, offset, limit) else {
        return Err(ApiError::internal("query validation inconsistency"));
    };
    let (offset, limit) = (offset.unwrap_or(0), limit.unwrap_or(10));
    let image_query = image_query(state, user, filters).await?;
    let (rows, total) = state.store.list_images(&image_query, offset, limit).await?;
    Ok((rows, total, offset, limit))
}

/// Lists images, newest first, starred first by default.
#[utoipa::path(get, path = "/api/v1/images/", tag = "images",
    params(("image_origin" = Option<String>, Query), ("categories" = Option<Vec<String>>, Query), ("is_intermediate" = Option<bool>, Query),
           ("board_id" = Option<String>, Query), ("offset" = Option<i64>, Query), ("limit" = Option<i64>, Query),
           ("order_dir" = Option<String>, Query), ("starred_first" = Option<bool>, Query), ("search_term" = Option<String>, Query)),
    responses((status = 200, body = OffsetPaginatedImages), (status = 401), (status = 403), (status = 404), (status = 422)))]
pub async fn list(
    State(state): State<AppState>,
    user: CurrentUser,
    query: RawQuery,
) -> Result<Json<OffsetPaginatedImages>, ApiError> {
    let (items, total, offset, limit) = image_page(&state, &user, &query, "image_origin").await?;
    Ok(Json(OffsetPaginatedImages {
        limit,
        offset,
        total,
        items: items.into_iter().map(ImageDTO::from).collect(),
    }))
}

/// Every matching image name in listing order (drives virtualised galleries).
#[utoipa::path(get, path = "/api/v1/images/names", tag = "images",
    responses((status = 200, body = ImageNamesResult), (status = 401), (status = 403), (status = 404), (status = 422)))]
pub async fn names(
    State(state): State<AppState>,
    user: CurrentUser,
    query: RawQuery,
) -> Result<Json<ImageNamesResult>, ApiError> {
    let mut q = QueryFields::new(&query);
    let filters = image_filters(&mut q, "image_origin");
    q.finish()?;
    let Some(filters) = filters else {
        return Err(ApiError::internal("query validation inconsistency"));
    };
    let starred_first = filters.starred_first;
    let query = image_query(&state, &user, filters).await?;
    let (image_names, starred) = state
        .store
        .image_names(&query)
        .await
        .map_err(|_| ApiError::failed("Failed to get image names"))?;
    let total_count = i64::try_from(image_names.len()).unwrap_or(i64::MAX);
    Ok(Json(ImageNamesResult {
        image_names,
        starred_count: if starred_first { starred } else { 0 },
        total_count,
    }))
}

/// Image records by name, in request order; unreadable and unknown names are left out.
#[utoipa::path(post, path = "/api/v1/images/images_by_names", tag = "images",
    responses((status = 200, body = Vec<ImageDTO>), (status = 401), (status = 422)))]
pub async fn images_by_names(
    State(state): State<AppState>,
    user: CurrentUser,
    Body(ImageNamesBody(names)): Body<ImageNamesBody>,
) -> Result<Json<Vec<ImageDTO>>, ApiError> {
    let records = service::by_names(&state, &user.identity, &names).await?;
    Ok(Json(records.into_iter().map(ImageDTO::from).collect()))
}

/// One image's record.
#[utoipa::path(get, path = "/api/v1/images/i/{image_name}", tag = "images", params(("image_name" = String, Path)),
    responses((status = 200, body = ImageDTO), (status = 401), (status = 403), (status = 404)))]
pub async fn get_image(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(name): Path<String>,
) -> Result<Json<ImageDTO>, ApiError> {
    Ok(Json(ImageDTO::from(
        service::readable(&state, &user.identity, &name).await?,
    )))
}

/// Changes category, session, intermediate flag or star.
#[utoipa::path(patch, path = "/api/v1/images/i/{image_name}", tag = "images", params(("image_name" = String, Path)),
    responses((status = 200, body = ImageDTO), (status = 400), (status = 401), (status = 403), (status = 422)))]
pub async fn update_image(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(name): Path<String>,
    Body(ImageChangesBody(changes)): Body<ImageChangesBody>,
) -> Result<Json<ImageDTO>, ApiError> {
    Ok(Json(ImageDTO::from(
        service::update(&state, &user.identity, &name, &changes).await?,
    )))
}

/// Deletes one image and its files.
#[utoipa::path(delete, path = "/api/v1/images/i/{image_name}", tag = "images", params(("image_name" = String, Path)),
    responses((status = 200, body = Object), (status = 401), (status = 403), (status = 404)))]
pub async fn delete_image(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(batch_json(
        service::delete_one(&state, &user.identity, &name).await?,
        "deleted_images",
    ))
}

/// The generation metadata embedded in the image (`null` when none).
#[utoipa::path(get, path = "/api/v1/images/i/{image_name}/metadata", tag = "images", params(("image_name" = String, Path)),
    responses((status = 200, body = Object), (status = 401), (status = 403), (status = 404)))]
pub async fn metadata(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let image = service::readable(&state, &user.identity, &name).await?;
    let value = image
        .metadata
        .as_deref()
        .and_then(|m| serde_json::from_str(m).ok())
        .unwrap_or(Value::Null);
    Ok(Json(value))
}

/// The workflow and graph embedded in the PNG, as raw JSON text.
#[utoipa::path(get, path = "/api/v1/images/i/{image_name}/workflow", tag = "images", params(("image_name" = String, Path)),
    responses((status = 200, body = WorkflowAndGraphResponse), (status = 401), (status = 403), (status = 404)))]
pub async fn workflow(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(name): Path<String>,
) -> Result<Json<WorkflowAndGraphResponse>, ApiError> {
    let image = service::readable(&state, &user.identity, &name).await?;
    let text = service::embedded_text(&state, &image).await?;
    Ok(Json(WorkflowAndGraphResponse {
        workflow: text.workflow,
        graph: text.graph,
    }))
}

/// The image's URLs.
#[utoipa::path(get, path = "/api/v1/images/i/{image_name}/urls", tag = "images", params(("image_name" = String, Path)),
    responses((status = 200, body = ImageUrlsDTO), (status = 401), (status = 403), (status = 404)))]
pub async fn urls(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(name): Path<String>,
) -> Result<Json<ImageUrlsDTO>, ApiError> {
    let image = service::readable(&state, &user.identity, &name).await?;
    Ok(Json(ImageUrlsDTO {
        image_url: image_url(&image.image_name),
        thumbnail_url: thumbnail_url(&image.image_name),
        image_name: image.image_name,
    }))
}

/// Serves media bytes with the contract's cache headers, plus an ETag (images never change
/// once written, so the name identifies the bytes) and `If-None-Match` revalidation.
fn media_response(
    state: &AppState,
    etag: String,
    content_type: &'static str,
    filename: Option<&str>,
    bytes: Option<Vec<u8>>,
) -> Response {
    let cache = if state.multiuser() {
        "private, no-store"
    } else {
        "max-age=31536000"
    };
    let not_modified = bytes.is_none();
    let mut response = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (StatusCode::OK, bytes.unwrap_or_default()).into_response()
    };
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if !not_modified {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if let Some(name) = filename {
            if let Ok(v) = HeaderValue::from_str(&format!("inline; filename=\"{name}\"")) {
                h.insert(header::CONTENT_DISPOSITION, v);
            }
        }
    }
    response
}

/// The full-size PNG (Bearer token or media cookie).
#[utoipa::path(get, path = "/api/v1/images/i/{image_name}/full", tag = "images", params(("image_name" = String, Path)),
    responses((status = 200, content_type = "image/png"), (status = 304), (status = 401), (status = 403), (status = 404)))]
pub async fn full(
    State(state): State<AppState>,
    MediaUser(me): MediaUser,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let image = service::readable(&state, &me, &name).await?;
    let etag = format!("\"{}\"", image.image_name);
    let bytes = if media_is_fresh(&headers, &etag) {
        None
    } else {
        Some(service::read_full(&state, &image).await?)
    };
    Ok(media_response(
        &state,
        etag,
        "image/png",
        Some(&image.image_name),
        bytes,
    ))
}

fn media_is_fresh(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
}

/// The WebP thumbnail (Bearer token or media cookie).
#[utoipa::path(get, path = "/api/v1/images/i/{image_name}/thumbnail", tag = "images", params(("image_name" = String, Path)),
    responses((status = 200, content_type = "image/webp"), (status = 304), (status = 401), (status = 403), (status = 404)))]
pub async fn thumbnail(
    State(state): State<AppState>,
    MediaUser(me): MediaUser,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let image = service::readable(&state, &me, &name).await?;
    let etag = format!("\"{}-thumbnail\"", image.image_name);
    let bytes = if media_is_fresh(&headers, &etag) {
        None
    } else {
        Some(service::read_thumbnail(&state, &image).await?)
    };
    Ok(media_response(&state, etag, "image/webp", None, bytes))
}

/// Deletes the named images the caller may change; others are skipped.
#[utoipa::path(post, path = "/api/v1/images/delete", tag = "images", responses((status = 200, body = Object), (status = 401), (status = 422)))]
pub async fn delete_batch(
    State(state): State<AppState>,
    user: CurrentUser,
    Body(ImageNamesBody(names)): Body<ImageNamesBody>,
) -> Result<Json<Value>, ApiError> {
    let out = service::delete_batch(&state, &user.identity, &names)
        .await
        .map_err(|_| ApiError::failed("Failed to delete images"))?;
    Ok(batch_json(out, "deleted_images"))
}

/// Deletes uncategorized images (every user's, for admins).
#[utoipa::path(delete, path = "/api/v1/images/uncategorized", tag = "images", responses((status = 200, body = Object), (status = 401)))]
pub async fn delete_uncategorized(
    State(state): State<AppState>,
    user: CurrentUser,
) -> Result<Json<Value>, ApiError> {
    let out = service::delete_uncategorized(&state, &user.identity)
        .await
        .map_err(|_| ApiError::failed("Failed to delete images"))?;
    Ok(batch_json(out, "deleted_images"))
}

/// Stars the named images the caller may change.
#[utoipa::path(post, path = "/api/v1/images/star", tag = "images", responses((status = 200, body = Object), (status = 401), (status = 422)))]
pub async fn star(
    State(state): State<AppState>,
    user: CurrentUser,
    Body(ImageNamesBody(names)): Body<ImageNamesBody>,
) -> Result<Json<Value>, ApiError> {
    let out = service::set_starred(&state, &user.identity, &names, true)
        .await
        .map_err(|_| ApiError::failed("Failed to star images"))?;
    Ok(batch_json(out, "starred_images"))
}

/// Unstars the named images the caller may change.
#[utoipa::path(post, path = "/api/v1/images/unstar", tag = "images", responses((status = 200, body = Object), (status = 401), (status = 422)))]
pub async fn unstar(
    State(state): State<AppState>,
    user: CurrentUser,
    Body(ImageNamesBody(names)): Body<ImageNamesBody>,
) -> Result<Json<Value>, ApiError> {
    let out = service::set_starred(&state, &user.identity, &names, false)
        .await
        .map_err(|_| ApiError::failed("Failed to unstar images"))?;
    Ok(batch_json(out, "unstarred_images"))
}

/// Number of intermediate images (the caller's own unless admin).
#[utoipa::path(get, path = "/api/v1/images/intermediates", tag = "images", responses((status = 200, body = i64), (status = 401)))]
pub async fn count_intermediates(
    State(state): State<AppState>,
    user: CurrentUser,
) -> Result<Json<i64>, ApiError> {
    Ok(Json(
        service::count_intermediates(&state, &user.identity).await?,
    ))
}

/// Deletes every intermediate image. Admins only.
#[utoipa::path(delete, path = "/api/v1/images/intermediates", tag = "images", responses((status = 200, body = i64), (status = 401), (status = 403)))]
pub async fn clear_intermediates(
    State(state): State<AppState>,
    user: CurrentUser,
) -> Result<Json<i64>, ApiError> {
    Ok(Json(
        service::clear_intermediates(&state, &user.identity).await?,
    ))
}

/// Puts an image on a board.
#[utoipa::path(post, path = "/api/v1/board_images/", tag = "boards", responses((status = 201, body = Object), (status = 401), (status = 403), (status = 404), (status = 422)))]
pub async fn add_to_board(
    State(state): State<AppState>,
    user: CurrentUser,
    Body(body): Body<AddToBoardBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let out =
        service::add_to_board(&state, &user.identity, &body.board_id, &body.image_name).await?;
    Ok((StatusCode::CREATED, batch_json(out, "added_images")))
}

/// Takes an image off its board.
#[utoipa::path(delete, path = "/api/v1/board_images/", tag = "boards", responses((status = 201, body = Object), (status = 401), (status = 403), (status = 422)))]
pub async fn remove_from_board(
    State(state): State<AppState>,
    user: CurrentUser,
    Body(ImageNameBody(name)): Body<ImageNameBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let out = service::remove_from_board(&state, &user.identity, &name).await?;
    Ok((StatusCode::CREATED, batch_json(out, "removed_images")))
}

/// Puts several images on a board; images the caller may not move are skipped.
#[utoipa::path(post, path = "/api/v1/board_images/batch", tag = "boards", responses((status = 201, body = Object), (status = 401), (status = 403), (status = 404), (status = 422)))]
pub async fn add_batch_to_board(
    State(state): State<AppState>,
    user: CurrentUser,
    Body(body): Body<AddBatchBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let out =
        service::add_batch_to_board(&state, &user.identity, &body.board_id, &body.image_names)
            .await?;
    Ok((StatusCode::CREATED, batch_json(out, "added_images")))
}

/// Takes several images off their boards; images on boards the caller may not change are skipped.
#[utoipa::path(post, path = "/api/v1/board_images/batch/delete", tag = "boards", responses((status = 201, body = Object), (status = 401), (status = 422)))]
pub async fn remove_batch_from_board(
    State(state): State<AppState>,
    user: CurrentUser,
    Body(ImageNamesBody(names)): Body<ImageNamesBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let out = service::remove_batch_from_board(&state, &user.identity, &names)
        .await
        .map_err(|_| ApiError::failed("Failed to remove images from board"))?;
    Ok((StatusCode::CREATED, batch_json(out, "removed_images")))
}

/// Starts building a zip of the named images and/or a board's images.
#[utoipa::path(post, path = "/api/v1/images/download", tag = "images",
    responses((status = 202, body = ImagesDownloaded), (status = 400), (status = 401), (status = 403), (status = 404), (status = 422)))]
pub async fn download(
    State(state): State<AppState>,
    user: CurrentUser,
    Body(body): Body<DownloadBody>,
) -> Result<(StatusCode, Json<ImagesDownloaded>), ApiError> {
    let name =
        crate::service::downloads::start(&state, &user.identity, body.image_names, body.board_id)
            .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(ImagesDownloaded {
            response: None,
            bulk_download_item_name: Some(name),
        }),
    ))
}

/// The finished zip, once (the initiator or an admin).
#[utoipa::path(get, path = "/api/v1/images/download/{item_name}", tag = "images", params(("item_name" = String, Path)),
    responses((status = 200, content_type = "application/zip"), (status = 401), (status = 403), (status = 404)))]
pub async fn get_download(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(item_name): Path<String>,
) -> Result<Response, ApiError> {
    let bytes = crate::service::downloads::take(&state, &user.identity, &item_name).await?;
    let mut response = (StatusCode::OK, bytes).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/zip"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=31536000"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{item_name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

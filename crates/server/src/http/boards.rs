//! `/api/v1/boards/*` (boards-images.md §5).

use crate::http::body::{Body, Fields, FromBody};
use crate::http::error::ApiError;
use crate::http::extract::CurrentUser;
use crate::http::query::{QueryFields, RawQuery};
use crate::service::boards::{self as service, ListRequest};
use crate::state::AppState;
use atelier_domain::content::{BoardVisibility, ImageCategory};
use atelier_store::{BoardChanges, BoardRecord};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/boards/", get(list).post(create))
        .route("/api/v1/boards", any(redirect_to_slash))
        .route(
            "/api/v1/boards/{board_id}",
            get(get_board).patch(update).delete(delete),
        )
        .route("/api/v1/boards/{board_id}/image_names", get(image_names))
}

/// Collection paths are canonical with a trailing slash; the bare form is a 307 to it.
pub async fn redirect_to_slash(uri: Uri) -> Response {
    let target = match uri.query() {
        Some(q) => format!("{}/?{q}", uri.path()),
        None => format!("{}/", uri.path()),
    };
    (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, target)]).into_response()
}

const MAX_NAME: usize = 300;

/// A board as the API returns it.
#[derive(Debug, Serialize, ToSchema)]
pub struct BoardDTO {
    pub board_id: String,
    pub board_name: String,
    pub user_id: String,
    pub created_at: String,
    pub updated_at: String,
    pub deleted_at: Option<String>,
    pub cover_image_name: Option<String>,
    pub cover_video_name: Option<String>,
    pub archived: bool,
    pub board_visibility: String,
    pub image_count: i64,
    pub asset_count: i64,
    pub video_count: i64,
    /// Only in listings requested by an administrator.
    pub owner_username: Option<String>,
}

impl BoardDTO {
    fn from_record(b: BoardRecord, with_owner: bool) -> Self {
        Self {
            board_id: b.board_id,
            board_name: b.board_name,
            user_id: b.user_id.to_string(),
            created_at: b.created_at,
            updated_at: b.updated_at,
            deleted_at: None,
            cover_image_name: b.cover_image_name,
            cover_video_name: None,
            archived: b.archived,
            board_visibility: b.visibility.as_str().to_owned(),
            image_count: b.image_count,
            asset_count: b.asset_count,
            video_count: 0,
            owner_username: if with_owner { b.owner_name } else { None },
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OffsetPaginatedBoards {
    pub limit: i64,
    pub offset: i64,
    pub total: i64,
    pub items: Vec<BoardDTO>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeleteBoardResult {
    pub board_id: String,
    pub deleted_board_images: Vec<String>,
    pub deleted_images: Vec<String>,
    pub deleted_board_videos: Vec<String>,
    pub deleted_videos: Vec<String>,
    pub failed_images: Vec<String>,
    pub failed_videos: Vec<String>,
}

/// Creates a board owned by the caller.
#[utoipa::path(post, path = "/api/v1/boards/", tag = "boards",
    params(("board_name" = String, Query, description = "at most 300 characters")),
    responses((status = 201, body = BoardDTO), (status = 401), (status = 422)))]
pub async fn create(
    State(state): State<AppState>,
    user: CurrentUser,
    query: RawQuery,
) -> Result<(StatusCode, Json<BoardDTO>), ApiError> {
    let mut q = QueryFields::new(&query);
    let name = q.required_str("board_name", Some(MAX_NAME));
    q.finish()?;
    let name = name.unwrap_or_default();
    let board = service::create(&state, &user.identity, &name).await?;
    Ok((
        StatusCode::CREATED,
        Json(BoardDTO::from_record(board, false)),
    ))
}

/// Boards the caller can see: all of them with `all=true`, else a page.
#[utoipa::path(get, path = "/api/v1/boards/", tag = "boards",
    params(("order_by" = Option<String>, Query), ("direction" = Option<String>, Query), ("all" = Option<bool>, Query),
           ("offset" = Option<i64>, Query), ("limit" = Option<i64>, Query), ("include_archived" = Option<bool>, Query)),
    responses((status = 200, body = OffsetPaginatedBoards), (status = 400), (status = 401), (status = 422)))]
pub async fn list(
    State(state): State<AppState>,
    user: CurrentUser,
    query: RawQuery,
) -> Result<Response, ApiError> {
    let mut q = QueryFields::new(&query);
    let order_by = q.optional_enum("order_by", &["created_at", "board_name"]);
    let direction = q.optional_enum("direction", &["ASC", "DESC"]);
    let all = q.optional_bool("all");
    let offset = q.optional_int("offset", None, None);
    let limit = q.optional_int("limit", None, None);
    let include_archived = q.bool_or("include_archived", false);
    q.finish()?;
    let (order_by, direction, all, offset, limit, include_archived) = (
        order_by.flatten(),
        direction.flatten(),
        all.flatten(),
        offset.flatten(),
        limit.flatten(),
        include_archived.unwrap_or(false),
    );
    let all = all == Some(true);
    let page = match (all, offset, limit) {
        (true, _, _) => None,
        (false, Some(o), Some(l)) => Some((o, l)),
        // Neither paging nor `all`: the first hundred, so InvokeAI's own API-guide examples work.
        (false, None, None) => Some((0, 100)),
        _ => {
            return Err(ApiError::bad_request(
                "Invalid request: Must provide either 'all' or both 'offset' and 'limit'",
            ))
        }
    };
    let req = ListRequest {
        order_by_name: order_by.as_deref() == Some("board_name"),
        descending: direction.as_deref() != Some("ASC"),
        all,
        page,
        include_archived,
    };
    let (boards, total) = service::list(&state, &user.identity, &req).await?;
    let admin = user.identity.is_admin();
    let items: Vec<BoardDTO> = boards
        .into_iter()
        .map(|b| BoardDTO::from_record(b, admin))
        .collect();
    Ok(match page {
        None => Json(items).into_response(),
        Some((offset, limit)) => Json(OffsetPaginatedBoards {
            limit,
            offset,
            total,
            items,
        })
        .into_response(),
    })
}

/// One board.
#[utoipa::path(get, path = "/api/v1/boards/{board_id}", tag = "boards", params(("board_id" = String, Path)),
    responses((status = 200, body = BoardDTO), (status = 401), (status = 403), (status = 404)))]
pub async fn get_board(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(board_id): Path<String>,
) -> Result<Json<BoardDTO>, ApiError> {
    let board = service::readable(&state, &user.identity, &board_id).await?;
    Ok(Json(BoardDTO::from_record(board, false)))
}

/// `BoardChanges`: every field optional, unknown fields refused.
pub struct BoardChangesBody(BoardChanges);

impl FromBody for BoardChangesBody {
    fn from_fields(f: &mut Fields<'_>) -> Option<Self> {
        const KNOWN: [&str; 4] = [
            "board_name",
            "cover_image_name",
            "archived",
            "board_visibility",
        ];
        let extra: Vec<(String, Value)> = f
            .whole()
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| !KNOWN.contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let board_name = f.optional_str("board_name");
        if let Some(Some(name)) = &board_name {
            if name.chars().count() > MAX_NAME {
                f.push_issue(
                    "string_too_long",
                    vec![json!("body"), json!("board_name")],
                    "String should have at most 300 characters",
                    json!(name),
                    Some(json!({"max_length": MAX_NAME})),
                );
            }
        }
        let cover = f.optional_str("cover_image_name");
        let archived = f.optional_bool("archived");
        let visibility = match f.raw("board_visibility").cloned() {
            None | Some(Value::Null) => Some(None),
            Some(Value::String(s)) if BoardVisibility::parse(&s).is_some() => {
                Some(BoardVisibility::parse(&s))
            }
            Some(other) => {
                f.push_issue(
                    "enum",
                    vec![json!("body"), json!("board_visibility")],
                    "Input should be 'private', 'shared' or 'public'",
                    other,
                    Some(json!({"expected": "'private', 'shared' or 'public'"})),
                );
                None
            }
        };
        for (key, value) in extra {
            f.push_issue(
                "extra_forbidden",
                vec![json!("body"), json!(key)],
                "Extra inputs are not permitted",
                value,
                None,
            );
        }
        Some(BoardChangesBody(BoardChanges {
            board_name: board_name?,
            cover_image_name: cover?,
            archived: archived?,
            visibility: visibility?,
        }))
    }
}

/// Renames, archives, changes the visibility of, or sets the cover of a board. Owner or admin.
#[utoipa::path(patch, path = "/api/v1/boards/{board_id}", tag = "boards", params(("board_id" = String, Path)),
    responses((status = 201, body = BoardDTO), (status = 401), (status = 403), (status = 404), (status = 422)))]
pub async fn update(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(board_id): Path<String>,
    Body(BoardChangesBody(changes)): Body<BoardChangesBody>,
) -> Result<(StatusCode, Json<BoardDTO>), ApiError> {
    let board = service::update(&state, &user.identity, &board_id, &changes).await?;
    Ok((
        StatusCode::CREATED,
        Json(BoardDTO::from_record(board, false)),
    ))
}

/// Deletes a board, keeping its images (uncategorized) unless `include_images=true`.
#[utoipa::path(delete, path = "/api/v1/boards/{board_id}", tag = "boards",
    params(("board_id" = String, Path), ("include_images" = Option<bool>, Query)),
    responses((status = 200, body = DeleteBoardResult), (status = 401), (status = 403), (status = 404)))]
pub async fn delete(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(board_id): Path<String>,
    query: RawQuery,
) -> Result<Json<DeleteBoardResult>, ApiError> {
    let mut q = QueryFields::new(&query);
    let include_images = q.bool_or("include_images", false);
    q.finish()?;
    let out = service::delete(
        &state,
        &user.identity,
        &board_id,
        include_images.unwrap_or(false),
    )
    .await?;
    Ok(Json(DeleteBoardResult {
        board_id: out.board_id,
        deleted_board_images: out.deleted_board_images,
        deleted_images: out.deleted_images,
        deleted_board_videos: Vec::new(),
        deleted_videos: Vec::new(),
        failed_images: out.failed_images,
        failed_videos: Vec::new(),
    }))
}

pub const CATEGORY_NAMES: [&str; 5] = ["general", "mask", "control", "user", "other"];

/// Names of the images on a board (`none`: uncategorized).
#[utoipa::path(get, path = "/api/v1/boards/{board_id}/image_names", tag = "boards",
    params(("board_id" = String, Path), ("categories" = Option<Vec<String>>, Query), ("is_intermediate" = Option<bool>, Query)),
    responses((status = 200, body = Vec<String>), (status = 401), (status = 403), (status = 404)))]
pub async fn image_names(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(board_id): Path<String>,
    query: RawQuery,
) -> Result<Json<Vec<String>>, ApiError> {
    let mut q = QueryFields::new(&query);
    let categories = q.optional_enum_list("categories", &CATEGORY_NAMES);
    let is_intermediate = q.optional_bool("is_intermediate");
    q.finish()?;
    let categories: Option<Vec<ImageCategory>> = categories.flatten().map(|list| {
        list.iter()
            .filter_map(|c| ImageCategory::parse(c))
            .collect()
    });
    let names = service::image_names(
        &state,
        &user.identity,
        &board_id,
        categories.as_deref(),
        is_intermediate.flatten(),
    )
    .await?;
    Ok(Json(names))
}

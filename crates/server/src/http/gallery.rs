//! `/api/v1/gallery/*` and `/api/v1/virtual_boards/*` (boards-images.md §8). Atelier has no
//! videos, so gallery items are images and the video fields are empty.

use crate::http::error::ApiError;
use crate::http::extract::CurrentUser;
use crate::http::images::{image_filters, image_query, image_url, thumbnail_url, ImageNamesResult};
use crate::http::query::{QueryFields, RawQuery};
use crate::state::AppState;
use atelier_store::{ImageQuery, ImageRecord};
use axum::extract::{Path, State};
use axum::routing::{any, get};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/gallery/items/", get(items))
        .route(
            "/api/v1/gallery/items",
            any(crate::http::boards::redirect_to_slash),
        )
        .route("/api/v1/gallery/item_names", get(item_names))
        .route("/api/v1/gallery/items/names", get(item_names_deprecated))
        .route("/api/v1/virtual_boards/by_date", get(by_date))
        .route(
            "/api/v1/virtual_boards/by_date/{date}/image_names",
            get(date_image_names),
        )
        .route(
            "/api/v1/virtual_boards/by_date/{date}/item_names",
            get(date_item_names),
        )
}

/// A gallery entry (an image; videos would carry `duration` and `fps`).
#[derive(Debug, Serialize, ToSchema)]
pub struct GalleryItem {
    pub kind: String,
    pub name: String,
    pub full_url: String,
    pub thumbnail_url: String,
    pub width: i64,
    pub height: i64,
    pub category: String,
    pub starred: bool,
    pub is_intermediate: bool,
    pub board_id: Option<String>,
    pub created_at: String,
    pub duration: Option<f64>,
    pub fps: Option<f64>,
}

impl From<ImageRecord> for GalleryItem {
    fn from(i: ImageRecord) -> Self {
        Self {
            kind: "image".to_owned(),
            full_url: image_url(&i.image_name),
            thumbnail_url: thumbnail_url(&i.image_name),
            name: i.image_name,
            width: i.width,
            height: i.height,
            category: i.image_category.as_str().to_owned(),
            starred: i.starred,
            is_intermediate: i.is_intermediate,
            board_id: i.board_id,
            created_at: i.created_at,
            duration: None,
            fps: None,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OffsetPaginatedGalleryItems {
    pub limit: i64,
    pub offset: i64,
    pub total: i64,
    pub items: Vec<GalleryItem>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GalleryItemNames {
    pub item_names: Vec<String>,
    pub starred_count: i64,
    pub total_count: i64,
}

/// A page of gallery items (§7.2 filters, `origin` for the origin).
#[utoipa::path(get, path = "/api/v1/gallery/items/", tag = "images",
    responses((status = 200, body = OffsetPaginatedGalleryItems), (status = 401), (status = 403), (status = 404), (status = 422)))]
pub async fn items(
    State(state): State<AppState>,
    user: CurrentUser,
    query: RawQuery,
) -> Result<Json<OffsetPaginatedGalleryItems>, ApiError> {
    let (records, total, offset, limit) =
        crate::http::images::image_page(&state, &user, &query, "origin").await?;
    Ok(Json(OffsetPaginatedGalleryItems {
        limit,
        offset,
        total,
        items: records.into_iter().map(GalleryItem::from).collect(),
    }))
}

/// Names and starred count for a filtered query, as the name endpoints report them.
async fn names_for(
    state: &AppState,
    query: &ImageQuery,
    failure: &str,
) -> Result<(Vec<String>, i64, i64), ApiError> {
    let (names, starred) = state
        .store
        .image_names(query)
        .await
        .map_err(|_| ApiError::internal(failure))?;
    let starred = if query.starred_first { starred } else { 0 };
    let total = i64::try_from(names.len()).unwrap_or(i64::MAX);
    Ok((names, starred, total))
}

fn valid_date(date: &str) -> bool {
    chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").is_ok()
}

/// Every matching item name, optionally for one creation date.
#[utoipa::path(get, path = "/api/v1/gallery/item_names", tag = "images",
    responses((status = 200, body = GalleryItemNames), (status = 401), (status = 403), (status = 404), (status = 422)))]
pub async fn item_names(
    State(state): State<AppState>,
    user: CurrentUser,
    query: RawQuery,
) -> Result<Json<GalleryItemNames>, ApiError> {
    let mut q = QueryFields::new(&query);
    let filters = image_filters(&mut q, "origin");
    let created_date = q.optional_str("created_date", None);
    if let Some(Some(date)) = &created_date {
        if !valid_date(date) {
            q.issue(
                "value_error",
                vec![json!("query"), json!("created_date")],
                "Value error, created_date must be YYYY-MM-DD",
                json!(date),
                Some(json!({"error": {}})),
            );
        }
    }
    q.finish()?;
    let Some(mut filters) = filters else {
        return Err(ApiError::internal("query validation inconsistency"));
    };
    filters.created_date = created_date.flatten();
    let query = image_query(&state, &user, filters).await?;
    let (item_names, starred_count, total_count) =
        names_for(&state, &query, "Failed to get gallery item names").await?;
    Ok(Json(GalleryItemNames {
        item_names,
        starred_count,
        total_count,
    }))
}

fn kinded(names: Vec<String>) -> Vec<Value> {
    names
        .into_iter()
        .map(|n| json!({"kind": "image", "name": n}))
        .collect()
}

/// Deprecated form of `item_names`: `{items: [{kind, name}], …}`.
#[utoipa::path(get, path = "/api/v1/gallery/items/names", tag = "images",
    responses((status = 200, body = Object), (status = 401), (status = 403), (status = 404), (status = 422)))]
pub async fn item_names_deprecated(
    State(state): State<AppState>,
    user: CurrentUser,
    query: RawQuery,
) -> Result<Json<Value>, ApiError> {
    let mut q = QueryFields::new(&query);
    let filters = image_filters(&mut q, "origin");
    q.finish()?;
    let Some(filters) = filters else {
        return Err(ApiError::internal("query validation inconsistency"));
    };
    let query = image_query(&state, &user, filters).await?;
    let (names, starred_count, total_count) =
        names_for(&state, &query, "Failed to get gallery item names").await?;
    Ok(Json(
        json!({"items": kinded(names), "starred_count": starred_count, "total_count": total_count}),
    ))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VirtualSubBoardDTO {
    pub virtual_board_id: String,
    pub board_name: String,
    pub date: String,
    pub image_count: i64,
    pub asset_count: i64,
    pub video_count: i64,
    pub cover_image_name: Option<String>,
    pub cover_video_name: Option<String>,
}

/// One virtual board per UTC day with images, newest first; users see only their own images.
#[utoipa::path(get, path = "/api/v1/virtual_boards/by_date", tag = "boards",
    responses((status = 200, body = Vec<VirtualSubBoardDTO>), (status = 401)))]
pub async fn by_date(
    State(state): State<AppState>,
    user: CurrentUser,
) -> Result<Json<Vec<VirtualSubBoardDTO>>, ApiError> {
    let me = &user.identity;
    let owner = (!me.is_admin()).then_some(&me.user_id);
    let days = state
        .store
        .images_by_day(owner)
        .await
        .map_err(|_| ApiError::failed("Failed to get virtual boards by date"))?;
    Ok(Json(
        days.into_iter()
            .map(|d| VirtualSubBoardDTO {
                virtual_board_id: format!("by_date:{}", d.date),
                board_name: d.date.clone(),
                date: d.date,
                image_count: d.image_count,
                asset_count: d.asset_count,
                video_count: 0,
                cover_image_name: d.cover_image_name,
                cover_video_name: None,
            })
            .collect(),
    ))
}

/// The caller's (everyone's, for admins) non-intermediate images of one day.
async fn day_query(
    user: &CurrentUser,
    date: String,
    query: &RawQuery,
) -> Result<ImageQuery, ApiError> {
    let mut q = QueryFields::new(query);
    let starred_first = q.bool_or("starred_first", true);
    let order_dir = q.optional_enum("order_dir", &["ASC", "DESC"]);
    let categories = q.optional_enum_list("categories", &crate::http::boards::CATEGORY_NAMES);
    let search_term = q.optional_str("search_term", None);
    q.finish()?;
    let me = &user.identity;
    Ok(ImageQuery {
        owner: (!me.is_admin()).then(|| me.user_id.clone()),
        board: atelier_store::BoardFilter::Any,
        origin: None,
        categories: categories.flatten().map(|l| {
            l.iter()
                .filter_map(|c| atelier_domain::content::ImageCategory::parse(c))
                .collect()
        }),
        is_intermediate: Some(false),
        descending: order_dir.flatten().as_deref() != Some("ASC"),
        starred_first: starred_first.unwrap_or(true),
        search_term: search_term.flatten(),
        created_date: Some(date),
    })
}

/// Deprecated: image names of one day.
#[utoipa::path(get, path = "/api/v1/virtual_boards/by_date/{date}/image_names", tag = "boards", params(("date" = String, Path)),
    responses((status = 200, body = ImageNamesResult), (status = 401), (status = 422)))]
pub async fn date_image_names(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(date): Path<String>,
    query: RawQuery,
) -> Result<Json<ImageNamesResult>, ApiError> {
    let query = day_query(&user, date, &query).await?;
    let (image_names, starred_count, total_count) =
        names_for(&state, &query, "Failed to get image names for date").await?;
    Ok(Json(ImageNamesResult {
        image_names,
        starred_count,
        total_count,
    }))
}

/// Deprecated: item names of one day.
#[utoipa::path(get, path = "/api/v1/virtual_boards/by_date/{date}/item_names", tag = "boards", params(("date" = String, Path)),
    responses((status = 200, body = Object), (status = 401), (status = 422)))]
pub async fn date_item_names(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(date): Path<String>,
    query: RawQuery,
) -> Result<Json<Value>, ApiError> {
    let query = day_query(&user, date, &query).await?;
    let (names, starred_count, total_count) =
        names_for(&state, &query, "Failed to get gallery item names for date").await?;
    Ok(Json(
        json!({"items": kinded(names), "starred_count": starred_count, "total_count": total_count}),
    ))
}

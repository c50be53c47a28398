//! Board use cases (boards-images.md §5): create, list, get, change, delete, and the names of
//! a board's images. Access goes through the domain predicates; existence is checked first
//! so a missing board is 404 for everyone.

use crate::http::error::ApiError;
use crate::state::AppState;
use atelier_domain::content::{self, BoardAccess, BoardVisibility, ImageCategory};
use atelier_domain::Identity;
use atelier_store::{BoardChanges, BoardOrder, BoardQuery, BoardRecord, BoardScope};

/// The sentinel board id for "no board" in parameters.
pub const UNCATEGORIZED: &str = "none";

fn access(board: &BoardRecord) -> BoardAccess<'_> {
    BoardAccess {
        owner: &board.user_id,
        visibility: board.visibility,
    }
}

/// Loads a board or answers 404 `Board not found`.
pub async fn find(state: &AppState, id: &str) -> Result<BoardRecord, ApiError> {
    state
        .store
        .get_board(id)
        .await?
        .ok_or_else(|| ApiError::not_found("Board not found"))
}

/// Loads a board the caller may read (BoardRead).
pub async fn readable(state: &AppState, me: &Identity, id: &str) -> Result<BoardRecord, ApiError> {
    let board = find(state, id).await?;
    if !content::can_read_board(me, access(&board)) {
        return Err(ApiError::forbidden("Not authorized to access this board"));
    }
    Ok(board)
}

/// Loads a board the caller may add images to or remove images from (BoardWrite).
pub async fn writable(
    state: &AppState,
    me: &Identity,
    id: &str,
    refusal: &str,
) -> Result<BoardRecord, ApiError> {
    let board = find(state, id).await?;
    if !content::can_write_board(me, access(&board)) {
        return Err(ApiError::forbidden(refusal));
    }
    Ok(board)
}

async fn administrable(
    state: &AppState,
    me: &Identity,
    id: &str,
    refusal: &str,
) -> Result<BoardRecord, ApiError> {
    let board = find(state, id).await?;
    if !content::can_administer_board(me, access(&board)) {
        return Err(ApiError::forbidden(refusal));
    }
    Ok(board)
}

pub async fn create(state: &AppState, me: &Identity, name: &str) -> Result<BoardRecord, ApiError> {
    state
        .store
        .insert_board(&me.user_id, name)
        .await
        .map_err(|_| ApiError::failed("Failed to create board"))
}

/// How a listing was asked for.
pub struct ListRequest {
    pub order_by_name: bool,
    pub descending: bool,
    pub all: bool,
    pub page: Option<(i64, i64)>,
    pub include_archived: bool,
}

pub async fn list(
    state: &AppState,
    me: &Identity,
    req: &ListRequest,
) -> Result<(Vec<BoardRecord>, i64), ApiError> {
    let scope = if me.is_admin() {
        BoardScope::All
    } else {
        BoardScope::VisibleTo(me.user_id.clone())
    };
    let query = BoardQuery {
        scope,
        include_archived: req.include_archived,
        // `all=true` orders names case-insensitively; the paged listing compares bytes.
        order: if req.order_by_name {
            BoardOrder::Name { nocase: req.all }
        } else {
            BoardOrder::CreatedAt
        },
        descending: req.descending,
        page: if req.all { None } else { req.page },
    };
    Ok(state.store.list_boards(&query).await?)
}

pub async fn update(
    state: &AppState,
    me: &Identity,
    id: &str,
    changes: &BoardChanges,
) -> Result<BoardRecord, ApiError> {
    administrable(state, me, id, "Not authorized to update this board").await?;
    state
        .store
        .update_board(id, changes)
        .await
        .map_err(|_| ApiError::failed("Failed to update board"))
}

/// What deleting a board did.
#[derive(Debug, Default)]
pub struct DeletedBoard {
    pub board_id: String,
    pub deleted_board_images: Vec<String>,
    pub deleted_images: Vec<String>,
    pub failed_images: Vec<String>,
}

/// Deletes a board. Without `include_images` its images become uncategorized; with it, the
/// images are deleted too: all of them for an admin, only the caller's own for an owner.
pub async fn delete(
    state: &AppState,
    me: &Identity,
    id: &str,
    include_images: bool,
) -> Result<DeletedBoard, ApiError> {
    administrable(state, me, id, "Not authorized to delete this board").await?;
    let mut result = DeletedBoard {
        board_id: id.to_owned(),
        ..DeletedBoard::default()
    };
    if include_images {
        let owner = (!me.is_admin()).then_some(&me.user_id);
        let names = state
            .store
            .board_image_names(Some(id), owner, None, None)
            .await?;
        let outcome = crate::service::images::delete_many(state, &names).await?;
        result.deleted_images = outcome.deleted;
        result.failed_images = outcome.failed;
        state
            .store
            .delete_board(id)
            .await
            .map_err(|_| ApiError::failed("Failed to delete board"))?;
    } else {
        result.deleted_board_images = state
            .store
            .delete_board(id)
            .await
            .map_err(|_| ApiError::failed("Failed to delete board"))?;
    }
    Ok(result)
}

/// Names of the images on a board, or (`none`) of uncategorized images: the caller's own
/// for non-admins, everyone's for admins.
pub async fn image_names(
    state: &AppState,
    me: &Identity,
    board_id: &str,
    categories: Option<&[ImageCategory]>,
    is_intermediate: Option<bool>,
) -> Result<Vec<String>, ApiError> {
    if board_id == UNCATEGORIZED {
        let owner = (!me.is_admin()).then_some(&me.user_id);
        return Ok(state
            .store
            .board_image_names(None, owner, categories, is_intermediate)
            .await?);
    }
    readable(state, me, board_id).await?;
    Ok(state
        .store
        .board_image_names(Some(board_id), None, categories, is_intermediate)
        .await?)
}

/// The visibility a stored board would get from a PATCH value.
pub fn parse_visibility(value: &str) -> Option<BoardVisibility> {
    BoardVisibility::parse(value)
}

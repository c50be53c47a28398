//! The `images` aggregate: records and their board membership.

use crate::{Result, Store, StoreError};
use atelier_domain::content::{BoardVisibility, ImageCategory, ResourceOrigin};
use atelier_domain::UserId;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

/// An image record with its current board (and that board's owner and visibility, which the
/// access predicates need).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    pub image_name: String,
    pub image_origin: ResourceOrigin,
    pub image_category: ImageCategory,
    pub width: i64,
    pub height: i64,
    pub session_id: Option<String>,
    pub node_id: Option<String>,
    pub metadata: Option<String>,
    pub is_intermediate: bool,
    pub starred: bool,
    pub has_workflow: bool,
    pub created_at: String,
    pub updated_at: String,
    pub user_id: UserId,
    pub image_subfolder: String,
    pub board_id: Option<String>,
    pub board_owner: Option<UserId>,
    pub board_visibility: Option<BoardVisibility>,
}

/// A new image's record; the file is already in place when this is inserted.
#[derive(Debug, Clone)]
pub struct NewImage {
    pub image_name: String,
    pub image_origin: ResourceOrigin,
    pub image_category: ImageCategory,
    pub width: i64,
    pub height: i64,
    pub session_id: Option<String>,
    pub node_id: Option<String>,
    pub metadata: Option<String>,
    pub is_intermediate: bool,
    pub has_workflow: bool,
    pub user_id: UserId,
    pub image_subfolder: String,
    pub board_id: Option<String>,
}

const IMAGE_SELECT: &str =
    "SELECT i.image_name, i.image_origin, i.image_category, i.width, i.height,
        i.session_id, i.node_id, i.metadata, i.is_intermediate, i.starred, i.has_workflow,
        i.created_at, i.updated_at, i.user_id, i.image_subfolder,
        bi.board_id, b.user_id AS board_owner, b.board_visibility
    FROM images i
    LEFT JOIN board_images bi ON bi.image_name = i.image_name
    LEFT JOIN boards b ON b.board_id = bi.board_id";

fn image_from_row(row: &SqliteRow) -> Result<ImageRecord> {
    let origin: String = row.try_get("image_origin")?;
    let category: String = row.try_get("image_category")?;
    let board_owner: Option<String> = row.try_get("board_owner")?;
    let visibility: Option<String> = row.try_get("board_visibility")?;
    Ok(ImageRecord {
        image_name: row.try_get("image_name")?,
        image_origin: ResourceOrigin::parse(&origin)
            .ok_or_else(|| StoreError::Corrupt(format!("image origin {origin:?}")))?,
        image_category: ImageCategory::parse(&category)
            .ok_or_else(|| StoreError::Corrupt(format!("image category {category:?}")))?,
        width: row.try_get("width")?,
        height: row.try_get("height")?,
        session_id: row.try_get("session_id")?,
        node_id: row.try_get("node_id")?,
        metadata: row.try_get("metadata")?,
        is_intermediate: row.try_get("is_intermediate")?,
        starred: row.try_get("starred")?,
        has_workflow: row.try_get("has_workflow")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        user_id: UserId::new(row.try_get::<String, _>("user_id")?),
        image_subfolder: row.try_get("image_subfolder")?,
        board_id: row.try_get("board_id")?,
        board_owner: board_owner.map(UserId::new),
        board_visibility: visibility.as_deref().map(BoardVisibility::from_stored),
    })
}

impl Store {
    /// Inserts an image record, and its board membership when `board_id` is set, in one
    /// transaction: the image is either fully registered or absent.
    pub async fn insert_image(&self, new: &NewImage) -> Result<ImageRecord> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO images (image_name, image_origin, image_category, width, height,
                session_id, node_id, metadata, is_intermediate, has_workflow, user_id, image_subfolder)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(&new.image_name)
        .bind(new.image_origin.as_str())
        .bind(new.image_category.as_str())
        .bind(new.width)
        .bind(new.height)
        .bind(&new.session_id)
        .bind(&new.node_id)
        .bind(&new.metadata)
        .bind(new.is_intermediate)
        .bind(new.has_workflow)
        .bind(new.user_id.as_str())
        .bind(&new.image_subfolder)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from_write)?;
        if let Some(board_id) = &new.board_id {
            sqlx::query("INSERT INTO board_images (image_name, board_id) VALUES ($1, $2)")
                .bind(&new.image_name)
                .bind(board_id)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from_write)?;
        }
        tx.commit().await?;
        self.get_image(&new.image_name)
            .await?
            .ok_or(StoreError::NotFound)
    }

    pub async fn get_image(&self, name: &str) -> Result<Option<ImageRecord>> {
        let row = sqlx::query(&format!("{IMAGE_SELECT} WHERE i.image_name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(image_from_row).transpose()
    }

    /// Deletes an image record (membership cascades) and returns it, so its files can be
    /// removed afterwards. `None` when there was no such image.
    pub async fn delete_image(&self, name: &str) -> Result<Option<ImageRecord>> {
        let Some(record) = self.get_image(name).await? else {
            return Ok(None);
        };
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("DELETE FROM images WHERE image_name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((done.rows_affected() > 0).then_some(record))
    }
}

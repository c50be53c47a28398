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
        i.board_id, b.user_id AS board_owner, b.board_visibility
    FROM images i
    LEFT JOIN boards b ON b.board_id = i.board_id";

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
                session_id, node_id, metadata, is_intermediate, has_workflow, user_id, image_subfolder,
                board_id, board_added_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
                CASE WHEN $13 IS NULL THEN NULL ELSE STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW') END)",
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
        .bind(&new.board_id)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from_write)?;
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

/// Which board an image listing covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoardFilter {
    /// Any board or none.
    Any,
    /// Images on no board.
    Uncategorized,
    Board(String),
}

/// Filters shared by image listings and name lists (boards-images.md §7.2).
#[derive(Debug, Clone)]
pub struct ImageQuery {
    /// Only this owner's images (non-admin scoping); `None` for everyone's.
    pub owner: Option<UserId>,
    pub board: BoardFilter,
    pub origin: Option<ResourceOrigin>,
    pub categories: Option<Vec<ImageCategory>>,
    pub is_intermediate: Option<bool>,
    pub descending: bool,
    pub starred_first: bool,
    pub search_term: Option<String>,
    /// Only images created on this UTC date (`YYYY-MM-DD`).
    pub created_date: Option<String>,
}

/// One day of a user's (or everyone's) non-intermediate images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayGroup {
    pub date: String,
    pub image_count: i64,
    pub asset_count: i64,
    pub cover_image_name: Option<String>,
}

/// Changes to an image record; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ImageChanges {
    pub image_category: Option<ImageCategory>,
    pub session_id: Option<String>,
    pub is_intermediate: Option<bool>,
    pub starred: Option<bool>,
}

/// A value bound to a dynamically built query.
enum Arg {
    Text(String),
    Bool(bool),
}

/// A WHERE clause under construction: conditions and their numbered arguments.
#[derive(Default)]
struct Where {
    conds: Vec<String>,
    args: Vec<Arg>,
}

impl Where {
    /// Adds `cond`, each `?` in it standing for `arg` (bound once, as `$n`).
    fn arg(&mut self, cond: &str, arg: Arg) {
        self.args.push(arg);
        let n = self.args.len();
        self.conds.push(cond.replace('?', &format!("${n}")));
    }
}

impl ImageQuery {
    /// The WHERE clause with only the active conditions (so SQLite can use the listing
    /// indexes; `x IS NULL OR …` patterns defeat them) and its arguments, numbered from `$1`.
    fn filter(&self) -> (String, Vec<Arg>) {
        let mut w = Where::default();
        if let Some(owner) = &self.owner {
            w.arg("i.user_id = ?", Arg::Text(owner.as_str().to_owned()));
        }
        match &self.board {
            BoardFilter::Any => {}
            BoardFilter::Uncategorized => w.conds.push("i.board_id IS NULL".to_owned()),
            BoardFilter::Board(id) => w.arg("i.board_id = ?", Arg::Text(id.clone())),
        }
        if let Some(origin) = self.origin {
            w.arg("i.image_origin = ?", Arg::Text(origin.as_str().to_owned()));
        }
        if let Some(flag) = self.is_intermediate {
            w.arg("i.is_intermediate = ?", Arg::Bool(flag));
        }
        if let Some(term) = &self.search_term {
            w.arg(
                "(i.metadata LIKE ? OR i.created_at LIKE ?)",
                Arg::Text(format!("%{term}%")),
            );
        }
        if let Some(date) = &self.created_date {
            w.arg("SUBSTR(i.created_at, 1, 10) = ?", Arg::Text(date.clone()));
        }
        if let Some(categories) = &self.categories {
            if categories.is_empty() {
                w.conds.push("1 = 0".to_owned());
            } else {
                let list = categories
                    .iter()
                    .map(|c| format!("'{}'", c.as_str()))
                    .collect::<Vec<_>>()
                    .join(", ");
                w.conds.push(format!("i.image_category IN ({list})"));
            }
        }
        let sql = if w.conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", w.conds.join(" AND "))
        };
        (sql, w.args)
    }

    fn order(&self) -> String {
        // The name breaks ties so pages never overlap (the gallery's order; harmless elsewhere).
        let dir = if self.descending { "DESC" } else { "ASC" };
        if self.starred_first {
            format!("ORDER BY i.starred DESC, i.created_at {dir}, i.image_name {dir}")
        } else {
            format!("ORDER BY i.created_at {dir}, i.image_name {dir}")
        }
    }
}

fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    args: &'q [Arg],
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    for arg in args {
        q = match arg {
            Arg::Text(t) => q.bind(t.as_str()),
            Arg::Bool(b) => q.bind(*b),
        };
    }
    q
}

impl Store {
    /// A page of images and the number matching in all.
    pub async fn list_images(
        &self,
        query: &ImageQuery,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<ImageRecord>, i64)> {
        let (filter, args) = query.filter();
        let count_sql = format!("SELECT COUNT(*) FROM images i {filter}");
        let total: i64 = bind_all(sqlx::query(&count_sql), &args)
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        let n = args.len();
        let sql = format!(
            "{IMAGE_SELECT} {filter} {} LIMIT ${} OFFSET ${}",
            query.order(),
            n + 1,
            n + 2
        );
        let rows = bind_all(sqlx::query(&sql), &args)
            .bind(limit)
            .bind(offset)
            .fetch_all(&self.pool)
            .await?;
        let images = rows
            .iter()
            .map(image_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok((images, total))
    }

    /// Every matching name in listing order, and how many of them are starred.
    pub async fn image_names(&self, query: &ImageQuery) -> Result<(Vec<String>, i64)> {
        let (filter, args) = query.filter();
        let sql = format!(
            "SELECT i.image_name, i.starred FROM images i {filter} {}",
            query.order()
        );
        let rows = bind_all(sqlx::query(&sql), &args)
            .fetch_all(&self.pool)
            .await?;
        let mut names = Vec::with_capacity(rows.len());
        let mut starred = 0;
        for row in &rows {
            names.push(row.try_get::<String, _>(0)?);
            if row.try_get::<bool, _>(1)? {
                starred += 1;
            }
        }
        Ok((names, starred))
    }

    /// Records for `names`, in no particular order; unknown names are left out.
    pub async fn images_by_names(&self, names: &[String]) -> Result<Vec<ImageRecord>> {
        let mut out = Vec::with_capacity(names.len());
        for chunk in names.chunks(500) {
            let placeholders = (1..=chunk.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!("{IMAGE_SELECT} WHERE i.image_name IN ({placeholders})");
            let mut q = sqlx::query(&sql);
            for name in chunk {
                q = q.bind(name);
            }
            for row in q.fetch_all(&self.pool).await? {
                out.push(image_from_row(&row)?);
            }
        }
        Ok(out)
    }

    /// Applies `changes`; [`StoreError::NotFound`] for an unknown image.
    pub async fn update_image(&self, name: &str, changes: &ImageChanges) -> Result<ImageRecord> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE images SET
                image_category = COALESCE($2, image_category),
                session_id = COALESCE($3, session_id),
                is_intermediate = COALESCE($4, is_intermediate),
                starred = COALESCE($5, starred)
             WHERE image_name = $1",
        )
        .bind(name)
        .bind(changes.image_category.map(ImageCategory::as_str))
        .bind(&changes.session_id)
        .bind(changes.is_intermediate)
        .bind(changes.starred)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        tx.commit().await?;
        self.get_image(name).await?.ok_or(StoreError::NotFound)
    }

    /// Puts an image on a board (moving it off any other). Returns its previous board.
    pub async fn add_image_to_board(&self, name: &str, board_id: &str) -> Result<Option<String>> {
        let mut tx = self.begin_write().await?;
        let previous: Option<Option<String>> =
            sqlx::query("SELECT board_id FROM images WHERE image_name = $1")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get(0))
                .transpose()?;
        let Some(previous) = previous else {
            return Err(StoreError::NotFound);
        };
        sqlx::query(
            "UPDATE images SET board_id = $2, board_added_at = STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW')
             WHERE image_name = $1",
        )
        .bind(name)
        .bind(board_id)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from_write)?;
        tx.commit().await?;
        Ok(previous)
    }

    /// Takes an image off its board. Returns the board it was on.
    pub async fn remove_image_from_board(&self, name: &str) -> Result<Option<String>> {
        let mut tx = self.begin_write().await?;
        let previous: Option<String> =
            sqlx::query("SELECT board_id FROM images WHERE image_name = $1")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get::<Option<String>, _>(0))
                .transpose()?
                .flatten();
        sqlx::query(
            "UPDATE images SET board_id = NULL, board_added_at = NULL WHERE image_name = $1",
        )
        .bind(name)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(previous)
    }

    /// Non-intermediate images grouped by UTC creation date, newest date first (virtual boards).
    pub async fn images_by_day(&self, owner: Option<&UserId>) -> Result<Vec<DayGroup>> {
        let assets = ImageCategory::ASSETS
            .iter()
            .map(|c| format!("'{}'", c.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT d.day,
                (SELECT COUNT(*) FROM images i WHERE SUBSTR(i.created_at, 1, 10) = d.day
                   AND i.is_intermediate = FALSE AND i.image_category = 'general'
                   AND ($1 IS NULL OR i.user_id = $1)) AS image_count,
                (SELECT COUNT(*) FROM images i WHERE SUBSTR(i.created_at, 1, 10) = d.day
                   AND i.is_intermediate = FALSE AND i.image_category IN ({assets})
                   AND ($1 IS NULL OR i.user_id = $1)) AS asset_count,
                (SELECT i.image_name FROM images i WHERE SUBSTR(i.created_at, 1, 10) = d.day
                   AND i.is_intermediate = FALSE AND ($1 IS NULL OR i.user_id = $1)
                   ORDER BY i.created_at DESC, i.image_name DESC LIMIT 1) AS cover
             FROM (SELECT DISTINCT SUBSTR(created_at, 1, 10) AS day FROM images
                   WHERE is_intermediate = FALSE AND ($1 IS NULL OR user_id = $1)) d
             ORDER BY d.day DESC"
        );
        let rows = sqlx::query(&sql)
            .bind(owner.map(UserId::as_str))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(DayGroup {
                    date: r.try_get("day")?,
                    image_count: r.try_get("image_count")?,
                    asset_count: r.try_get("asset_count")?,
                    cover_image_name: r.try_get("cover")?,
                })
            })
            .collect()
    }

    /// Every image name (for the start-up sweep of orphan files).
    pub async fn all_image_names(&self) -> Result<std::collections::HashSet<String>> {
        let rows = sqlx::query("SELECT image_name FROM images")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>(0)?))
            .collect()
    }

    /// Names of intermediate images (of `owner` only, when given).
    pub async fn intermediate_names(&self, owner: Option<&UserId>) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT image_name FROM images WHERE is_intermediate = TRUE AND ($1 IS NULL OR user_id = $1)")
            .bind(owner.map(UserId::as_str))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>(0)?))
            .collect()
    }
}

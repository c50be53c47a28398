//! The `boards` aggregate: records, their computed counts and cover, listings scoped to a
//! caller, and deletion. Access decisions are made by services from the domain predicates;
//! this module only applies the listing scope the service asks for.

use crate::{Result, Store, StoreError};
use atelier_domain::content::{BoardVisibility, ImageCategory};
use atelier_domain::UserId;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};

/// A board as read back, with what the DTO computes from membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoardRecord {
    pub board_id: String,
    pub board_name: String,
    pub user_id: UserId,
    pub created_at: String,
    pub updated_at: String,
    pub archived: bool,
    pub visibility: BoardVisibility,
    pub image_count: i64,
    pub asset_count: i64,
    pub cover_image_name: Option<String>,
    /// The owner's display name, else email; `None` when the owner row is gone.
    pub owner_name: Option<String>,
}

/// Which boards a listing may return.
#[derive(Debug, Clone)]
pub enum BoardScope {
    /// Administrators and single-user mode: every board.
    All,
    /// A user: own boards, shared/public boards, and boards shared with them explicitly.
    VisibleTo(UserId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoardOrder {
    CreatedAt,
    /// Case-insensitive when `nocase`.
    Name {
        nocase: bool,
    },
}

#[derive(Debug, Clone)]
pub struct BoardQuery {
    pub scope: BoardScope,
    pub include_archived: bool,
    pub order: BoardOrder,
    pub descending: bool,
    /// `(offset, limit)`; `None` lists everything.
    pub page: Option<(i64, i64)>,
}

/// Changes to a board; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct BoardChanges {
    pub board_name: Option<String>,
    pub cover_image_name: Option<String>,
    pub archived: Option<bool>,
    pub visibility: Option<BoardVisibility>,
}

/// The image categories counted as "assets", as SQL text.
fn asset_list() -> String {
    ImageCategory::ASSETS
        .iter()
        .map(|c| format!("'{}'", c.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn board_select() -> String {
    format!(
        "SELECT b.board_id, b.board_name, b.user_id, b.created_at, b.updated_at, b.archived,
            b.board_visibility,
            (SELECT COUNT(*) FROM images i
              WHERE i.board_id = b.board_id AND i.is_intermediate = FALSE
                AND i.image_category = 'general') AS image_count,
            (SELECT COUNT(*) FROM images i
              WHERE i.board_id = b.board_id AND i.is_intermediate = FALSE
                AND i.image_category IN ({assets})) AS asset_count,
            (SELECT i.image_name FROM images i
              WHERE i.board_id = b.board_id AND i.is_intermediate = FALSE
              ORDER BY i.starred DESC, i.created_at DESC, i.image_name DESC LIMIT 1) AS cover,
            COALESCE(u.display_name, u.email) AS owner_name
         FROM boards b LEFT JOIN users u ON u.user_id = b.user_id",
        assets = asset_list()
    )
}

fn board_from_row(row: &SqliteRow) -> Result<BoardRecord> {
    let visibility: String = row.try_get("board_visibility")?;
    Ok(BoardRecord {
        board_id: row.try_get("board_id")?,
        board_name: row.try_get("board_name")?,
        user_id: UserId::new(row.try_get::<String, _>("user_id")?),
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        archived: row.try_get("archived")?,
        visibility: BoardVisibility::from_stored(&visibility),
        image_count: row.try_get("image_count")?,
        asset_count: row.try_get("asset_count")?,
        cover_image_name: row.try_get("cover")?,
        owner_name: row.try_get("owner_name")?,
    })
}

async fn fetch_board(conn: &mut SqliteConnection, id: &str) -> Result<Option<BoardRecord>> {
    let row = sqlx::query(&format!("{} WHERE b.board_id = $1", board_select()))
        .bind(id)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(board_from_row).transpose()
}

impl Store {
    pub async fn insert_board(&self, owner: &UserId, name: &str) -> Result<BoardRecord> {
        let id = uuid::Uuid::new_v4().to_string();
        let mut tx = self.begin_write().await?;
        sqlx::query("INSERT INTO boards (board_id, board_name, user_id) VALUES ($1, $2, $3)")
            .bind(&id)
            .bind(name)
            .bind(owner.as_str())
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from_write)?;
        let board = fetch_board(&mut tx, &id)
            .await?
            .ok_or(StoreError::NotFound)?;
        tx.commit().await?;
        Ok(board)
    }

    pub async fn get_board(&self, id: &str) -> Result<Option<BoardRecord>> {
        let mut conn = self.pool.acquire().await?;
        fetch_board(&mut conn, id).await
    }

    /// Applies `changes`; [`StoreError::NotFound`] when the board is gone.
    pub async fn update_board(&self, id: &str, changes: &BoardChanges) -> Result<BoardRecord> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE boards SET
                board_name = COALESCE($2, board_name),
                cover_image_name = COALESCE($3, cover_image_name),
                archived = COALESCE($4, archived),
                board_visibility = COALESCE($5, board_visibility),
                is_public = CASE WHEN $5 IS NULL THEN is_public ELSE ($5 = 'public') END
             WHERE board_id = $1",
        )
        .bind(id)
        .bind(&changes.board_name)
        .bind(&changes.cover_image_name)
        .bind(changes.archived)
        .bind(changes.visibility.map(BoardVisibility::as_str))
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from_write)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        let board = fetch_board(&mut tx, id)
            .await?
            .ok_or(StoreError::NotFound)?;
        tx.commit().await?;
        Ok(board)
    }

    /// Lists boards for a caller; returns the page and the number of matching boards.
    pub async fn list_boards(&self, query: &BoardQuery) -> Result<(Vec<BoardRecord>, i64)> {
        let mut filter = String::from("WHERE 1 = 1");
        if !query.include_archived {
            filter.push_str(" AND b.archived = FALSE");
        }
        let user = match &query.scope {
            BoardScope::All => None,
            BoardScope::VisibleTo(user) => {
                filter.push_str(
                    " AND (b.user_id = $1 OR b.board_visibility IN ('shared', 'public')
                       OR EXISTS (SELECT 1 FROM shared_boards s
                                  WHERE s.board_id = b.board_id AND s.user_id = $1))",
                );
                Some(user.as_str().to_owned())
            }
        };
        let direction = if query.descending { "DESC" } else { "ASC" };
        let order = match query.order {
            BoardOrder::CreatedAt => format!("b.created_at {direction}"),
            BoardOrder::Name { nocase: true } => format!("b.board_name COLLATE NOCASE {direction}"),
            BoardOrder::Name { nocase: false } => format!("b.board_name {direction}"),
        };
        // `$1` is always bound (to NULL when unused) so the placeholders line up.
        let total: i64 = sqlx::query(&format!("SELECT COUNT(*) FROM boards b {filter}"))
            .bind(&user)
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        let paging = match query.page {
            Some(_) => " LIMIT $2 OFFSET $3",
            None => "",
        };
        let sql = format!("{} {filter} ORDER BY {order}{paging}", board_select());
        let mut q = sqlx::query(&sql).bind(&user);
        if let Some((offset, limit)) = query.page {
            q = q.bind(limit).bind(offset);
        }
        let rows = q.fetch_all(&self.pool).await?;
        let boards = rows
            .iter()
            .map(board_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok((boards, total))
    }

    /// Names of the images on a board (`None`: uncategorized), optionally only `owner`'s,
    /// filtered by categories and intermediate flag. Unordered.
    pub async fn board_image_names(
        &self,
        board_id: Option<&str>,
        owner: Option<&UserId>,
        categories: Option<&[ImageCategory]>,
        is_intermediate: Option<bool>,
    ) -> Result<Vec<String>> {
        let mut sql = String::from(
            "SELECT i.image_name FROM images i
             WHERE (($1 IS NULL AND i.board_id IS NULL) OR i.board_id = $1)
               AND ($2 IS NULL OR i.user_id = $2)
               AND ($3 IS NULL OR i.is_intermediate = $3)",
        );
        if let Some(categories) = categories {
            let list = categories
                .iter()
                .map(|c| format!("'{}'", c.as_str()))
                .collect::<Vec<_>>()
                .join(", ");
            sql.push_str(&format!(" AND i.image_category IN ({list})"));
        }
        let rows = sqlx::query(&sql)
            .bind(board_id)
            .bind(owner.map(UserId::as_str))
            .bind(is_intermediate)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>(0)?))
            .collect()
    }

    /// Deletes a board; its images become uncategorized. Returns the names that were on it.
    pub async fn delete_board(&self, id: &str) -> Result<Vec<String>> {
        let mut tx = self.begin_write().await?;
        let names: Vec<String> = sqlx::query("SELECT image_name FROM images WHERE board_id = $1")
            .bind(id)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<std::result::Result<_, _>>()?;
        let done = sqlx::query("DELETE FROM boards WHERE board_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        tx.commit().await?;
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::migrated_store;

    #[tokio::test]
    async fn create_update_list_and_delete() {
        let (store, _dir) = migrated_store().await;
        let alice = UserId::new("alice");
        let bob = UserId::new("bob");
        let a = store.insert_board(&alice, "Zebra").await.unwrap();
        assert_eq!(
            (a.image_count, a.asset_count, a.visibility),
            (0, 0, BoardVisibility::Private)
        );
        let b = store.insert_board(&bob, "apple").await.unwrap();
        store
            .update_board(
                &b.board_id,
                &BoardChanges {
                    visibility: Some(BoardVisibility::Shared),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        store.insert_board(&bob, "bob private").await.unwrap();

        let query = |scope, order| BoardQuery {
            scope,
            include_archived: false,
            order,
            descending: false,
            page: None,
        };
        let (visible, total) = store
            .list_boards(&query(
                BoardScope::VisibleTo(alice.clone()),
                BoardOrder::Name { nocase: true },
            ))
            .await
            .unwrap();
        assert_eq!(total, 2);
        assert_eq!(
            visible
                .iter()
                .map(|b| b.board_name.as_str())
                .collect::<Vec<_>>(),
            ["apple", "Zebra"]
        );
        let (binary, _) = store
            .list_boards(&query(
                BoardScope::VisibleTo(alice.clone()),
                BoardOrder::Name { nocase: false },
            ))
            .await
            .unwrap();
        assert_eq!(binary[0].board_name, "Zebra");
        let (all, total) = store
            .list_boards(&query(BoardScope::All, BoardOrder::CreatedAt))
            .await
            .unwrap();
        assert_eq!((all.len(), total), (3, 3));

        let mut paged = query(BoardScope::All, BoardOrder::CreatedAt);
        paged.page = Some((1, 1));
        let (page, total) = store.list_boards(&paged).await.unwrap();
        assert_eq!((page.len(), total), (1, 3));

        store
            .update_board(
                &a.board_id,
                &BoardChanges {
                    archived: Some(true),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let (visible, _) = store
            .list_boards(&query(
                BoardScope::VisibleTo(alice.clone()),
                BoardOrder::CreatedAt,
            ))
            .await
            .unwrap();
        assert_eq!(visible.len(), 1);

        assert!(store.delete_board(&a.board_id).await.unwrap().is_empty());
        assert!(matches!(
            store.delete_board(&a.board_id).await,
            Err(StoreError::NotFound)
        ));
        assert!(store.get_board(&a.board_id).await.unwrap().is_none());
    }
}

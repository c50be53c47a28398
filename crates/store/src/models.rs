//! Model records (models.md §1.7): one row per installed model, the record itself stored as
//! JSON text in `config`, with filter and sort columns generated from it. The store neither
//! validates nor interprets the document beyond those columns; the server's model service
//! owns its shape. Invariants kept here: keys and paths are unique, and a clash on either is
//! reported as its own error variant (checked under the write lock, never by reading the
//! database's message).

use crate::{Result, Store, StoreError};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

/// A stored record: its key, the JSON text and the row times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRow {
    pub key: String,
    pub config: String,
    pub created_at: String,
    pub updated_at: String,
}

/// Which records to list. Every present field must match exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelFilter {
    pub base: Option<String>,
    pub model_type: Option<String>,
    pub name: Option<String>,
    pub format: Option<String>,
    pub hash: Option<String>,
}

/// The `order_by` values of `GET /api/v2/models/` (models.md §2.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ModelOrder {
    /// type, base, name, format.
    Default,
    Type,
    Base,
    #[default]
    Name,
    Format,
    Size,
    CreatedAt,
    UpdatedAt,
    Path,
}

impl ModelOrder {
    fn columns(self) -> &'static [&'static str] {
        match self {
            Self::Default => &["type", "base", "LOWER(name)", "format"],
            Self::Type => &["type"],
            Self::Base => &["base"],
            Self::Name => &["LOWER(name)"],
            Self::Format => &["format"],
            Self::Size => &["file_size"],
            Self::CreatedAt => &["created_at"],
            Self::UpdatedAt => &["updated_at"],
            Self::Path => &["path"],
        }
    }
}

const SELECT: &str = "SELECT id, config, created_at, updated_at FROM models";

fn from_row(r: &SqliteRow) -> Result<ModelRow> {
    Ok(ModelRow {
        key: r.try_get("id")?,
        config: r.try_get("config")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

/// The `path` the document carries (the unique column is generated from it).
fn path_of(config: &str) -> Result<String> {
    let value: serde_json::Value = serde_json::from_str(config)
        .map_err(|e| StoreError::Corrupt(format!("model config: {e}")))?;
    value
        .get("path")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| StoreError::Corrupt("model config without a path".to_owned()))
}

async fn path_owner(conn: &mut sqlx::SqliteConnection, path: &str) -> Result<Option<String>> {
    let row = sqlx::query("SELECT id FROM models WHERE path = $1")
        .bind(path)
        .fetch_optional(conn)
        .await?;
    Ok(row.map(|r| r.try_get("id")).transpose()?)
}

impl Store {
    /// Adds a record. Fails with [`StoreError::ModelKeyTaken`] or
    /// [`StoreError::ModelPathTaken`] when another record has the key or the path.
    pub async fn insert_model(&self, key: &str, config: &str) -> Result<()> {
        let path = path_of(config)?;
        let mut tx = self.begin_write().await?;
        let taken = sqlx::query("SELECT 1 FROM models WHERE id = $1")
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
        if taken.is_some() {
            return Err(StoreError::ModelKeyTaken(key.to_owned()));
        }
        if path_owner(&mut tx, &path).await?.is_some() {
            return Err(StoreError::ModelPathTaken(path));
        }
        sqlx::query("INSERT INTO models (id, config) VALUES ($1, $2)")
            .bind(key)
            .bind(config)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from_write)?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn get_model(&self, key: &str) -> Result<Option<ModelRow>> {
        let row = sqlx::query(&format!("{SELECT} WHERE id = $1"))
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// The record whose `path` is exactly `path`.
    pub async fn find_model_by_path(&self, path: &str) -> Result<Option<ModelRow>> {
        let row = sqlx::query(&format!("{SELECT} WHERE path = $1"))
            .bind(path)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Records matching `filter`, sorted by `order` (ties broken by key, so pages are stable).
    pub async fn list_models(
        &self,
        filter: &ModelFilter,
        order: ModelOrder,
        descending: bool,
    ) -> Result<Vec<ModelRow>> {
        let direction = if descending { "DESC" } else { "ASC" };
        let order_by: Vec<String> = order
            .columns()
            .iter()
            .map(|c| format!("{c} {direction}"))
            .collect();
        let sql = format!(
            "{SELECT} WHERE ($1 IS NULL OR base = $1) AND ($2 IS NULL OR type = $2)
               AND ($3 IS NULL OR name = $3) AND ($4 IS NULL OR format = $4)
               AND ($5 IS NULL OR hash = $5)
             ORDER BY {}, id",
            order_by.join(", ")
        );
        let rows = sqlx::query(&sql)
            .bind(filter.base.as_deref())
            .bind(filter.model_type.as_deref())
            .bind(filter.name.as_deref())
            .bind(filter.format.as_deref())
            .bind(filter.hash.as_deref())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// Replaces a record's document. `Ok(false)` when no record has `key`; a path another
    /// record holds is [`StoreError::ModelPathTaken`].
    pub async fn update_model(&self, key: &str, config: &str) -> Result<bool> {
        let path = path_of(config)?;
        let mut tx = self.begin_write().await?;
        if let Some(owner) = path_owner(&mut tx, &path).await? {
            if owner != key {
                return Err(StoreError::ModelPathTaken(path));
            }
        }
        let done = sqlx::query("UPDATE models SET config = $2 WHERE id = $1")
            .bind(key)
            .bind(config)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from_write)?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    /// Removes a record; `Ok(false)` when there was none.
    pub async fn delete_model(&self, key: &str) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("DELETE FROM models WHERE id = $1")
            .bind(key)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(name: &str, path: &str, base: &str) -> String {
        json!({"key": name, "hash": format!("blake3:{name}"), "path": path, "file_size": 3,
               "name": name, "description": null, "source": path, "source_type": "path",
               "source_api_response": null, "type": "main", "format": "checkpoint", "base": base,
               "trigger_phrases": null})
        .to_string()
    }

    #[tokio::test]
    async fn insert_list_update_delete() {
        let (store, _dir) = crate::test_support::migrated_store().await;
        store
            .insert_model("a", &doc("beta", "a/x.safetensors", "sd-1"))
            .await
            .expect("a");
        store
            .insert_model("b", &doc("Alpha", "b/y.safetensors", "sdxl"))
            .await
            .expect("b");
        match store
            .insert_model("c", &doc("dup", "a/x.safetensors", "sd-1"))
            .await
        {
            Err(StoreError::ModelPathTaken(p)) => assert_eq!(p, "a/x.safetensors"),
            other => panic!("expected a path clash, got {other:?}"),
        }
        match store
            .insert_model("a", &doc("dup", "c/z.safetensors", "sd-1"))
            .await
        {
            Err(StoreError::ModelKeyTaken(_)) => {}
            other => panic!("expected a key clash, got {other:?}"),
        }
        let names = |rows: Vec<ModelRow>| rows.into_iter().map(|r| r.key).collect::<Vec<_>>();
        let all = store
            .list_models(&ModelFilter::default(), ModelOrder::Name, false)
            .await
            .expect("list");
        assert_eq!(names(all), ["b", "a"], "names sort case-insensitively");
        let sdxl = ModelFilter {
            base: Some("sdxl".into()),
            ..Default::default()
        };
        let only = store
            .list_models(&sdxl, ModelOrder::Name, true)
            .await
            .expect("list");
        assert_eq!(names(only), ["b"]);
        let by_hash = ModelFilter {
            hash: Some("blake3:beta".into()),
            ..Default::default()
        };
        assert_eq!(
            names(
                store
                    .list_models(&by_hash, ModelOrder::Default, false)
                    .await
                    .expect("list")
            ),
            ["a"]
        );
        assert!(store
            .update_model("a", &doc("beta2", "a/x.safetensors", "sd-1"))
            .await
            .expect("update"));
        assert!(matches!(
            store
                .update_model("a", &doc("beta2", "b/y.safetensors", "sd-1"))
                .await,
            Err(StoreError::ModelPathTaken(_))
        ));
        assert!(!store
            .update_model("zz", &doc("n", "q", "sd-1"))
            .await
            .expect("update"));
        assert!(store
            .find_model_by_path("a/x.safetensors")
            .await
            .expect("find")
            .is_some());
        assert!(store.delete_model("a").await.expect("delete"));
        assert!(!store.delete_model("a").await.expect("delete"));
        assert!(store.get_model("a").await.expect("get").is_none());
    }
}

//! Per-user client state: opaque UI preferences keyed by name. Every function takes the owner;
//! there is deliberately no way to address state across owners.

use crate::{Result, Store};
use atelier_domain::UserId;
use sqlx::Row;

impl Store {
    pub async fn get_client_state(&self, owner: &UserId, key: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT value FROM client_state WHERE user_id = $1 AND key = $2")
            .bind(owner.as_str())
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    pub async fn set_client_state(&self, owner: &UserId, key: &str, value: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO client_state (user_id, key, value) VALUES ($1, $2, $3)
             ON CONFLICT (user_id, key) DO UPDATE SET value = excluded.value",
        )
        .bind(owner.as_str())
        .bind(key)
        .bind(value)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Keys starting with `prefix` (matched literally), most recently updated first.
    pub async fn client_state_keys(&self, owner: &UserId, prefix: &str) -> Result<Vec<String>> {
        let escaped: String = prefix
            .chars()
            .flat_map(|c| match c {
                '%' | '_' | '\\' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        let rows = sqlx::query(
            "SELECT key FROM client_state WHERE user_id = $1 AND key LIKE $2 ESCAPE '\\'
             ORDER BY updated_at DESC, rowid DESC",
        )
        .bind(owner.as_str())
        .bind(format!("{escaped}%"))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>(0)?))
            .collect()
    }

    /// Deletes one key (`Some`) or every key (`None`) of `owner`.
    pub async fn delete_client_state(&self, owner: &UserId, key: Option<&str>) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM client_state WHERE user_id = $1 AND ($2 IS NULL OR key = $2)")
            .bind(owner.as_str())
            .bind(key)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::test_support::migrated_store;
    use atelier_domain::UserId;

    #[tokio::test]
    async fn prefixes_are_literal_and_owners_are_separate() {
        let (store, _dir) = migrated_store().await;
        let system = UserId::new("system");
        for key in ["a_b", "axb", "a%c"] {
            store.set_client_state(&system, key, "v").await.unwrap();
        }
        assert_eq!(
            store.client_state_keys(&system, "a_").await.unwrap(),
            ["a_b"]
        );
        assert_eq!(
            store.client_state_keys(&system, "a%").await.unwrap(),
            ["a%c"]
        );
        assert_eq!(store.client_state_keys(&system, "").await.unwrap().len(), 3);
        store.set_client_state(&system, "axb", "w").await.unwrap();
        assert_eq!(
            store
                .get_client_state(&system, "axb")
                .await
                .unwrap()
                .as_deref(),
            Some("w")
        );
        store
            .delete_client_state(&system, Some("axb"))
            .await
            .unwrap();
        assert_eq!(store.get_client_state(&system, "axb").await.unwrap(), None);
        store.delete_client_state(&system, None).await.unwrap();
        assert!(store
            .client_state_keys(&system, "")
            .await
            .unwrap()
            .is_empty());
    }
}

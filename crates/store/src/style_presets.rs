//! Style presets (workflows-and-state.md §3.1): prompt templates owned by a user, or bundled
//! `default` ones that are recreated at every start-up. `preset_data` is stored as the JSON
//! text `{positive_prompt, negative_prompt}`.

use crate::{Result, Store, StoreError};
use atelier_domain::library::PresetType;
use atelier_domain::UserId;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StylePresetRecord {
    pub id: String,
    pub name: String,
    pub positive_prompt: String,
    pub negative_prompt: String,
    pub kind: PresetType,
    pub user_id: UserId,
    pub is_public: bool,
}

/// A preset to insert or the new values of one (the id is chosen by the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewStylePreset {
    pub name: String,
    pub positive_prompt: String,
    pub negative_prompt: String,
    pub kind: PresetType,
    pub is_public: bool,
}

const SELECT: &str = "SELECT id, name, preset_data, type, user_id, is_public FROM style_presets";

fn preset_data(positive: &str, negative: &str) -> String {
    serde_json::json!({"positive_prompt": positive, "negative_prompt": negative}).to_string()
}

fn from_row(r: &SqliteRow) -> Result<StylePresetRecord> {
    let data: String = r.try_get("preset_data")?;
    let value: serde_json::Value = serde_json::from_str(&data)
        .map_err(|e| StoreError::Corrupt(format!("style preset data: {e}")))?;
    let text = |key: &str| {
        value
            .get(key)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    Ok(StylePresetRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        positive_prompt: text("positive_prompt"),
        negative_prompt: text("negative_prompt"),
        kind: PresetType::from_stored(&r.try_get::<String, _>("type")?),
        user_id: UserId::new(r.try_get::<String, _>("user_id")?),
        is_public: r.try_get("is_public")?,
    })
}

async fn insert(
    conn: &mut sqlx::SqliteConnection,
    id: &str,
    owner: &UserId,
    preset: &NewStylePreset,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO style_presets (id, name, preset_data, type, user_id, is_public)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(&preset.name)
    .bind(preset_data(
        &preset.positive_prompt,
        &preset.negative_prompt,
    ))
    .bind(preset.kind.as_str())
    .bind(owner.as_str())
    .bind(preset.is_public)
    .execute(conn)
    .await
    .map_err(StoreError::from_write)?;
    Ok(())
}

impl Store {
    pub async fn insert_style_preset(
        &self,
        owner: &UserId,
        preset: &NewStylePreset,
    ) -> Result<StylePresetRecord> {
        let id = uuid::Uuid::new_v4().to_string();
        let mut tx = self.begin_write().await?;
        insert(&mut tx, &id, owner, preset).await?;
        tx.commit().await?;
        self.get_style_preset(&id)
            .await?
            .ok_or(StoreError::NotFound)
    }

    /// Inserts several presets in one transaction (an import: all or nothing).
    pub async fn insert_style_presets(
        &self,
        owner: &UserId,
        presets: &[NewStylePreset],
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        for preset in presets {
            insert(&mut tx, &uuid::Uuid::new_v4().to_string(), owner, preset).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn get_style_preset(&self, id: &str) -> Result<Option<StylePresetRecord>> {
        let row = sqlx::query(&format!("{SELECT} WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Presets ordered by lower-cased name. `visible_to`: only default, public and that
    /// user's own presets; `None` lists all. `kind` restricts to one type.
    pub async fn list_style_presets(
        &self,
        visible_to: Option<&UserId>,
        kind: Option<PresetType>,
    ) -> Result<Vec<StylePresetRecord>> {
        let sql = format!(
            "{SELECT} WHERE ($1 IS NULL OR type = 'default' OR is_public = TRUE OR user_id = $1)
               AND ($2 IS NULL OR type = $2)
             ORDER BY LOWER(name)"
        );
        let rows = sqlx::query(&sql)
            .bind(visible_to.map(UserId::as_str))
            .bind(kind.map(PresetType::as_str))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// Overwrites name, prompts and sharing flag (the type never changes).
    pub async fn update_style_preset(
        &self,
        id: &str,
        preset: &NewStylePreset,
    ) -> Result<Option<StylePresetRecord>> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE style_presets SET name = $2, preset_data = $3, is_public = $4 WHERE id = $1",
        )
        .bind(id)
        .bind(&preset.name)
        .bind(preset_data(
            &preset.positive_prompt,
            &preset.negative_prompt,
        ))
        .bind(preset.is_public)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.get_style_preset(id).await
    }

    pub async fn delete_style_preset(&self, id: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM style_presets WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes every `default` preset and inserts `defaults` with fresh ids, owned by
    /// `system` and private, in one transaction.
    pub async fn replace_default_style_presets(&self, defaults: &[NewStylePreset]) -> Result<()> {
        let system = UserId::new(atelier_domain::SYSTEM_USER_ID);
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM style_presets WHERE type = 'default'")
            .execute(&mut *tx)
            .await?;
        for preset in defaults {
            insert(&mut tx, &uuid::Uuid::new_v4().to_string(), &system, preset).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::NewStylePreset;
    use crate::test_support::migrated_store;
    use atelier_domain::library::PresetType;
    use atelier_domain::UserId;

    fn preset(name: &str, kind: PresetType, is_public: bool) -> NewStylePreset {
        NewStylePreset {
            name: name.to_owned(),
            positive_prompt: "p {prompt}".to_owned(),
            negative_prompt: String::new(),
            kind,
            is_public,
        }
    }

    #[tokio::test]
    async fn visibility_order_and_default_replacement() {
        let (store, _dir) = migrated_store().await;
        let alice = UserId::new("alice");
        let bob = UserId::new("bob");
        store
            .insert_style_preset(&alice, &preset("b private", PresetType::User, false))
            .await
            .unwrap();
        store
            .insert_style_preset(&bob, &preset("A public", PresetType::User, true))
            .await
            .unwrap();
        store
            .insert_style_preset(&bob, &preset("c hidden", PresetType::User, false))
            .await
            .unwrap();
        store
            .replace_default_style_presets(&[preset("Default", PresetType::Default, false)])
            .await
            .unwrap();
        let first = store
            .list_style_presets(None, Some(PresetType::Default))
            .await
            .unwrap();
        store
            .replace_default_style_presets(&[preset("Default", PresetType::Default, false)])
            .await
            .unwrap();
        let second = store
            .list_style_presets(None, Some(PresetType::Default))
            .await
            .unwrap();
        assert_eq!(second.len(), 1);
        assert_ne!(first[0].id, second[0].id, "fresh ids at every replacement");
        let names: Vec<String> = store
            .list_style_presets(Some(&alice), None)
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, ["A public", "b private", "Default"]);
        assert_eq!(store.list_style_presets(None, None).await.unwrap().len(), 4);
        assert_eq!(second[0].positive_prompt, "p {prompt}");
    }
}

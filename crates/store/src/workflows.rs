//! The workflow library (workflows-and-state.md §1.1). The document is stored as JSON text;
//! `category`, `name`, `description` and `tags` are generated columns read from it, so the
//! document is the single source of truth. Only `user`-category rows are ever changed through
//! [`Store::update_workflow`]; default rows change only through
//! [`Store::sync_default_workflows`].

use crate::{Result, Store, StoreError};
use atelier_domain::UserId;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowRecord {
    pub workflow_id: String,
    pub workflow: String,
    pub created_at: String,
    pub updated_at: String,
    pub opened_at: Option<String>,
    pub category: String,
    pub name: String,
    pub description: String,
    pub tags: String,
    pub user_id: UserId,
    pub is_public: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkflowOrder {
    CreatedAt,
    UpdatedAt,
    OpenedAt,
    Name,
    IsPublic,
}

/// Filters of the workflow listing (workflows-and-state.md §1.6), AND-ed.
#[derive(Debug, Clone, Default)]
pub struct WorkflowQuery {
    /// Category IN list.
    pub categories: Option<Vec<String>>,
    /// Any of these is a substring of the tags (case-insensitive for ASCII).
    pub tags: Option<Vec<String>>,
    /// A substring of the name, description or tags.
    pub query: Option<String>,
    pub has_been_opened: Option<bool>,
    pub is_public: Option<bool>,
    /// Restrict to rows owned by this user or of the `default` category.
    pub scope_to: Option<UserId>,
}

const SELECT: &str = "SELECT workflow_id, workflow, created_at, updated_at, opened_at,
    COALESCE(category, 'user') AS category, COALESCE(name, '') AS name,
    COALESCE(description, '') AS description, COALESCE(tags, '') AS tags, user_id, is_public
    FROM workflow_library";

fn from_row(r: &SqliteRow) -> Result<WorkflowRecord> {
    Ok(WorkflowRecord {
        workflow_id: r.try_get("workflow_id")?,
        workflow: r.try_get("workflow")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        opened_at: r.try_get("opened_at")?,
        category: r.try_get("category")?,
        name: r.try_get("name")?,
        description: r.try_get("description")?,
        tags: r.try_get("tags")?,
        user_id: UserId::new(r.try_get::<String, _>("user_id")?),
        is_public: r.try_get("is_public")?,
    })
}

impl WorkflowQuery {
    /// The WHERE clause (empty when nothing filters) and its bound values, in order.
    fn filter(&self) -> (String, Vec<String>) {
        let mut conds: Vec<String> = Vec::new();
        let mut args: Vec<String> = Vec::new();
        let arg = |value: String, args: &mut Vec<String>| {
            args.push(value);
            format!("${}", args.len())
        };
        if let Some(categories) = &self.categories {
            let list: Vec<String> = categories
                .iter()
                .map(|c| arg(c.clone(), &mut args))
                .collect();
            conds.push(if list.is_empty() {
                "1 = 0".to_owned()
            } else {
                format!("COALESCE(category, 'user') IN ({})", list.join(", "))
            });
        }
        if let Some(tags) = &self.tags {
            let parts: Vec<String> = tags
                .iter()
                .map(|t| format!("tags LIKE {}", arg(format!("%{}%", t.trim()), &mut args)))
                .collect();
            if !parts.is_empty() {
                conds.push(format!("({})", parts.join(" OR ")));
            }
        }
        if let Some(q) = self
            .query
            .as_deref()
            .map(str::trim)
            .filter(|q| !q.is_empty())
        {
            let p = arg(format!("%{q}%"), &mut args);
            conds.push(format!(
                "(name LIKE {p} OR description LIKE {p} OR tags LIKE {p})"
            ));
        }
        match self.has_been_opened {
            Some(true) => conds.push("opened_at IS NOT NULL".to_owned()),
            Some(false) => conds.push("opened_at IS NULL".to_owned()),
            None => {}
        }
        match self.is_public {
            Some(true) => conds.push("is_public = TRUE".to_owned()),
            Some(false) => conds.push("is_public = FALSE".to_owned()),
            None => {}
        }
        if let Some(owner) = &self.scope_to {
            let p = arg(owner.as_str().to_owned(), &mut args);
            conds.push(format!("(user_id = {p} OR category = 'default')"));
        }
        let sql = if conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conds.join(" AND "))
        };
        (sql, args)
    }
}

impl Store {
    pub async fn insert_workflow(
        &self,
        id: &str,
        document: &str,
        owner: &UserId,
        is_public: bool,
    ) -> Result<WorkflowRecord> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO workflow_library (workflow_id, workflow, user_id, is_public)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(document)
        .bind(owner.as_str())
        .bind(is_public)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from_write)?;
        let row = sqlx::query(&format!("{SELECT} WHERE workflow_id = $1"))
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let record = from_row(&row)?;
        tx.commit().await?;
        Ok(record)
    }

    pub async fn get_workflow(&self, id: &str) -> Result<Option<WorkflowRecord>> {
        let row = sqlx::query(&format!("{SELECT} WHERE workflow_id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Replaces the document (and, when given, the sharing flag) of a `user`-category row;
    /// rows of the `default` category are left as they are. Returns the row as it now is.
    pub async fn update_workflow(
        &self,
        id: &str,
        document: &str,
        is_public: Option<bool>,
    ) -> Result<Option<WorkflowRecord>> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE workflow_library SET workflow = $2, is_public = COALESCE($3, is_public)
             WHERE workflow_id = $1 AND COALESCE(category, 'user') = 'user'",
        )
        .bind(id)
        .bind(document)
        .bind(is_public)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(&format!("{SELECT} WHERE workflow_id = $1"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let record = row.as_ref().map(from_row).transpose()?;
        tx.commit().await?;
        Ok(record)
    }

    /// Sets the (single, global) `opened_at` of a workflow.
    pub async fn set_workflow_opened(&self, id: &str, at: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE workflow_library SET opened_at = $2 WHERE workflow_id = $1")
            .bind(id)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn delete_workflow(&self, id: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM workflow_library WHERE workflow_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every matching row in the requested order (binary collation, no tie-breaker; paging
    /// is the caller's, since the `callable` filter needs every row first).
    pub async fn list_workflows(
        &self,
        query: &WorkflowQuery,
        order: WorkflowOrder,
        descending: bool,
    ) -> Result<Vec<WorkflowRecord>> {
        let (filter, args) = query.filter();
        let column = match order {
            WorkflowOrder::CreatedAt => "created_at",
            WorkflowOrder::UpdatedAt => "updated_at",
            WorkflowOrder::OpenedAt => "opened_at",
            WorkflowOrder::Name => "name",
            WorkflowOrder::IsPublic => "is_public",
        };
        let dir = if descending { "DESC" } else { "ASC" };
        let sql = format!("{SELECT} {filter} ORDER BY {column} {dir}");
        let mut q = sqlx::query(&sql);
        for a in &args {
            q = q.bind(a.as_str());
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter().map(from_row).collect()
    }

    /// How many rows match.
    pub async fn count_workflows(&self, query: &WorkflowQuery) -> Result<i64> {
        let (filter, args) = query.filter();
        let sql = format!("SELECT COUNT(*) FROM workflow_library {filter}");
        let mut q = sqlx::query_scalar::<_, i64>(&sql);
        for a in &args {
            q = q.bind(a.as_str());
        }
        Ok(q.fetch_one(&self.pool).await?)
    }

    /// The raw tag strings of matching rows with non-empty tags.
    pub async fn workflow_tag_strings(&self, query: &WorkflowQuery) -> Result<Vec<String>> {
        let (filter, args) = query.filter();
        let extra = if filter.is_empty() { "WHERE" } else { " AND" };
        let sql = format!(
            "SELECT DISTINCT tags FROM workflow_library {filter}{extra} tags IS NOT NULL AND tags <> ''"
        );
        let mut q = sqlx::query_scalar::<_, String>(&sql);
        for a in &args {
            q = q.bind(a.as_str());
        }
        Ok(q.fetch_all(&self.pool).await?)
    }

    /// Makes the `default`-category rows exactly `defaults` (`(id, document)` pairs): missing
    /// ones are inserted (owner and sharing flag take the column defaults), changed ones
    /// overwritten, stale ones deleted. Returns `(inserted, updated, deleted)`.
    pub async fn sync_default_workflows(
        &self,
        defaults: &[(String, String)],
    ) -> Result<(usize, usize, usize)> {
        let mut tx = self.begin_write().await?;
        let existing: Vec<(String, String)> = sqlx::query(
            "SELECT workflow_id, workflow FROM workflow_library WHERE category = 'default'",
        )
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_>>()?;
        let (mut inserted, mut updated, mut deleted) = (0, 0, 0);
        for (id, _) in &existing {
            if !defaults.iter().any(|(d, _)| d == id) {
                sqlx::query("DELETE FROM workflow_library WHERE workflow_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                deleted += 1;
            }
        }
        for (id, doc) in defaults {
            match existing.iter().find(|(e, _)| e == id) {
                Some((_, current)) if current == doc => {}
                found => {
                    sqlx::query(
                        "INSERT INTO workflow_library (workflow_id, workflow) VALUES ($1, $2)
                         ON CONFLICT (workflow_id) DO UPDATE SET workflow = excluded.workflow",
                    )
                    .bind(id)
                    .bind(doc)
                    .execute(&mut *tx)
                    .await?;
                    if found.is_some() {
                        updated += 1;
                    } else {
                        inserted += 1;
                    }
                }
            }
        }
        tx.commit().await?;
        Ok((inserted, updated, deleted))
    }
}

#[cfg(test)]
mod tests {
    use crate::test_support::migrated_store;
    use crate::{WorkflowOrder, WorkflowQuery};
    use atelier_domain::UserId;

    fn doc(name: &str, category: &str, tags: &str) -> String {
        serde_json::json!({"name": name, "description": "", "tags": tags,
            "meta": {"version": "3.0.0", "category": category}})
        .to_string()
    }

    #[tokio::test]
    async fn generated_columns_scope_and_sync() {
        let (store, _dir) = migrated_store().await;
        let alice = UserId::new("alice");
        let bob = UserId::new("bob");
        store
            .insert_workflow("a", &doc("A", "user", "x, y"), &alice, false)
            .await
            .unwrap();
        store
            .insert_workflow("b", &doc("B", "user", ""), &bob, true)
            .await
            .unwrap();
        let defaults = vec![("default_1".to_owned(), doc("D", "default", "z"))];
        assert_eq!(
            store.sync_default_workflows(&defaults).await.unwrap(),
            (1, 0, 0)
        );
        assert_eq!(
            store.sync_default_workflows(&defaults).await.unwrap(),
            (0, 0, 0)
        );
        let scoped = WorkflowQuery {
            scope_to: Some(alice.clone()),
            ..WorkflowQuery::default()
        };
        let names: Vec<String> = store
            .list_workflows(&scoped, WorkflowOrder::Name, false)
            .await
            .unwrap()
            .into_iter()
            .map(|w| w.name)
            .collect();
        assert_eq!(names, ["A", "D"]);
        assert_eq!(store.count_workflows(&scoped).await.unwrap(), 2);
        let tags = store
            .workflow_tag_strings(&WorkflowQuery::default())
            .await
            .unwrap();
        assert_eq!(tags.len(), 2);
        // A default row is not changed by a document update.
        let after = store
            .update_workflow("default_1", &doc("Changed", "user", ""), Some(true))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((after.name.as_str(), after.is_public), ("D", false));
        assert_eq!(store.sync_default_workflows(&[]).await.unwrap(), (0, 0, 1));
        assert!(store.get_workflow("default_1").await.unwrap().is_none());
    }
}

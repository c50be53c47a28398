//! The session queue table (queue-and-events.md §1, §6.1): inserting a batch's items within
//! the queue's capacity, the guarded status transition, the atomic claim (FIFO or round-robin)
//! and the start-up reset.
//!
//! Invariants: a terminal row never changes again (the guard and the write are one statement);
//! a claim is one write-locked transaction, so two workers never take the same row; the
//! round-robin pick reads only pending rows and one index probe per waiting user, so its cost
//! follows the number of users with pending work, not the size of the history.

use crate::{Result, Store, StoreError};
use atelier_domain::queue::QueueItemStatus;
use atelier_domain::UserId;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

/// A queue row as stored (JSON members as text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRow {
    pub item_id: i64,
    pub queue_id: String,
    pub session_id: String,
    pub batch_id: String,
    pub status: QueueItemStatus,
    pub status_sequence: i64,
    pub priority: i64,
    pub origin: Option<String>,
    pub destination: Option<String>,
    pub user_id: UserId,
    pub field_values: Option<String>,
    pub session: String,
    pub workflow: Option<String>,
    pub error_type: Option<String>,
    pub error_message: Option<String>,
    pub error_traceback: Option<String>,
    pub retried_from_item_id: Option<i64>,
    pub device: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
}

/// One item of a batch to insert.
#[derive(Debug, Clone)]
pub struct NewQueueItem {
    pub session_id: String,
    pub field_values: Option<String>,
    pub session: String,
}

/// The batch-level values every item of an enqueue shares.
#[derive(Debug, Clone)]
pub struct NewBatch {
    pub queue_id: String,
    pub batch_id: String,
    pub origin: Option<String>,
    pub destination: Option<String>,
    pub user_id: UserId,
    pub workflow: Option<String>,
    pub prepend: bool,
}

/// What an enqueue inserted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    pub item_ids: Vec<i64>,
    pub priority: i64,
}

/// How the next item is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DequeueMode {
    /// Highest priority, then oldest.
    Fifo,
    /// Users in turn: the user served least recently goes first (§6.1).
    RoundRobin,
}

impl DequeueMode {
    /// The `SELECT` that picks the item to claim (public so that benchmarks can
    /// `EXPLAIN QUERY PLAN` exactly what [`Store::dequeue`] runs).
    pub fn pick_sql(self) -> &'static str {
        match self {
            Self::Fifo => {
                "SELECT item_id FROM session_queue WHERE status = 'pending'
                 ORDER BY priority DESC, item_id ASC LIMIT 1"
            }
            Self::RoundRobin => {
                "WITH firsts AS (
                    SELECT user_id, item_id FROM (
                        SELECT user_id, item_id,
                            ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY priority DESC, item_id ASC) AS rn
                        FROM session_queue WHERE status = 'pending'
                    ) WHERE rn = 1
                 )
                 SELECT f.item_id FROM firsts f
                 ORDER BY COALESCE((SELECT MAX(s.started_at) FROM session_queue s WHERE s.user_id = f.user_id),
                                   '1970-01-01') ASC,
                          f.item_id ASC
                 LIMIT 1"
            }
        }
    }
}

const COLUMNS: &str = "item_id, queue_id, session_id, batch_id, status, status_sequence, priority,
    origin, destination, user_id, field_values, session, workflow, error_type, error_message,
    error_traceback, retried_from_item_id, device, created_at, updated_at, started_at, completed_at";

fn from_row(r: &SqliteRow) -> Result<QueueRow> {
    let status: String = r.try_get("status")?;
    Ok(QueueRow {
        item_id: r.try_get("item_id")?,
        queue_id: r.try_get("queue_id")?,
        session_id: r.try_get("session_id")?,
        batch_id: r.try_get("batch_id")?,
        status: QueueItemStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("queue status {status:?}")))?,
        status_sequence: r.try_get("status_sequence")?,
        priority: r.try_get("priority")?,
        origin: r.try_get("origin")?,
        destination: r.try_get("destination")?,
        user_id: UserId::new(r.try_get::<String, _>("user_id")?),
        field_values: r.try_get("field_values")?,
        session: r.try_get("session")?,
        workflow: r.try_get("workflow")?,
        error_type: r.try_get("error_type")?,
        error_message: r.try_get("error_message")?,
        error_traceback: r.try_get("error_traceback")?,
        retried_from_item_id: r.try_get("retried_from_item_id")?,
        device: r.try_get("device")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        started_at: r.try_get("started_at")?,
        completed_at: r.try_get("completed_at")?,
    })
}

impl Store {
    /// Inserts a batch's items in order, as many as the queue's free capacity allows
    /// (`max_pending` minus the pending rows now); the rest are dropped (§2.3).
    pub async fn enqueue(
        &self,
        batch: &NewBatch,
        items: &[NewQueueItem],
        max_pending: i64,
    ) -> Result<Enqueued> {
        let mut tx = self.begin_write().await?;
        let pending: i64 =
            sqlx::query("SELECT COUNT(*) FROM session_queue WHERE status = 'pending'")
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
        let priority: i64 = if batch.prepend {
            let top: Option<i64> = sqlx::query(
                "SELECT MAX(priority) FROM session_queue WHERE status = 'pending' AND queue_id = $1",
            )
            .bind(&batch.queue_id)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
            top.unwrap_or(0) + 1
        } else {
            0
        };
        let room = usize::try_from((max_pending - pending).max(0)).unwrap_or(0);
        let mut item_ids = Vec::new();
        for item in items.iter().take(room) {
            let id: i64 = sqlx::query(
                "INSERT INTO session_queue (queue_id, session_id, batch_id, priority, origin, destination,
                    user_id, field_values, session, workflow)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING item_id",
            )
            .bind(&batch.queue_id)
            .bind(&item.session_id)
            .bind(&batch.batch_id)
            .bind(priority)
            .bind(&batch.origin)
            .bind(&batch.destination)
            .bind(batch.user_id.as_str())
            .bind(&item.field_values)
            .bind(&item.session)
            .bind(&batch.workflow)
            .fetch_one(&mut *tx)
            .await
            .map_err(StoreError::from_write)?
            .try_get(0)?;
            item_ids.push(id);
        }
        tx.commit().await?;
        Ok(Enqueued { item_ids, priority })
    }

    pub async fn get_queue_item(&self, item_id: i64) -> Result<Option<QueueRow>> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM session_queue WHERE item_id = $1"
        ))
        .bind(item_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Moves an item to `status` unless it is already terminal; bumps `status_sequence`.
    /// Returns the row after the write, or `None` when nothing changed (missing or terminal).
    pub async fn set_queue_status(
        &self,
        item_id: i64,
        status: QueueItemStatus,
        error: Option<(&str, &str, &str)>,
    ) -> Result<Option<QueueRow>> {
        let mut tx = self.begin_write().await?;
        let (etype, emessage, etrace) = match error {
            Some((t, m, tr)) => (Some(t), Some(m), Some(tr)),
            None => (None, None, None),
        };
        let done = sqlx::query(
            "UPDATE session_queue SET status = $2, status_sequence = status_sequence + 1,
                error_type = COALESCE($3, error_type), error_message = COALESCE($4, error_message),
                error_traceback = COALESCE($5, error_traceback)
             WHERE item_id = $1 AND status NOT IN ('completed', 'failed', 'canceled')",
        )
        .bind(item_id)
        .bind(status.as_str())
        .bind(etype)
        .bind(emessage)
        .bind(etrace)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        self.get_queue_item(item_id).await
    }

    /// Claims the next pending item for `worker` on `device`, atomically.
    pub async fn dequeue(
        &self,
        mode: DequeueMode,
        worker: &str,
        device: &str,
    ) -> Result<Option<QueueRow>> {
        let mut tx = self.begin_write().await?;
        let pick = mode.pick_sql();
        let Some(row) = sqlx::query(pick).fetch_optional(&mut *tx).await? else {
            return Ok(None);
        };
        let item_id: i64 = row.try_get(0)?;
        sqlx::query(
            "UPDATE session_queue SET status = 'in_progress', status_sequence = status_sequence + 1,
                device = $2, worker_id = $3, heartbeat_at = STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW')
             WHERE item_id = $1 AND status = 'pending'",
        )
        .bind(item_id)
        .bind(device)
        .bind(worker)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.get_queue_item(item_id).await
    }

    /// At start-up: items a crash left running are failed with an explanation, and waiting
    /// ones canceled (no events: nobody is connected yet). Returns how many changed.
    pub async fn fail_interrupted_items(&self) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let failed = sqlx::query(
            "UPDATE session_queue SET status = 'failed', status_sequence = status_sequence + 1,
                error_type = 'ServerInterruptedError',
                error_message = 'The server stopped while this item was running. Retry it to run it again.',
                error_traceback = 'ServerInterruptedError: the server stopped while this item was running'
             WHERE status = 'in_progress'",
        )
        .execute(&mut *tx)
        .await?;
        let canceled = sqlx::query(
            "UPDATE session_queue SET status = 'canceled', status_sequence = status_sequence + 1
             WHERE status = 'waiting'",
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(failed.rows_affected() + canceled.rows_affected())
    }

    /// Stores the session JSON of a running item (after every node). A row deleted meanwhile
    /// is not an error.
    pub async fn set_queue_session(&self, item_id: i64, session: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE session_queue SET session = $2 WHERE item_id = $1")
            .bind(item_id)
            .bind(session)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Items per status; every status is always present.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusCounts {
    pub pending: i64,
    pub in_progress: i64,
    pub waiting: i64,
    pub completed: i64,
    pub failed: i64,
    pub canceled: i64,
}

impl StatusCounts {
    pub fn total(&self) -> i64 {
        self.pending
            + self.in_progress
            + self.waiting
            + self.completed
            + self.failed
            + self.canceled
    }

    fn add(&mut self, status: &str, n: i64) {
        match status {
            "pending" => self.pending += n,
            "in_progress" => self.in_progress += n,
            "waiting" => self.waiting += n,
            "completed" => self.completed += n,
            "failed" => self.failed += n,
            "canceled" => self.canceled += n,
            _ => {}
        }
    }
}

/// Which rows a count or bulk operation covers. `None` fields match everything.
#[derive(Debug, Clone, Default)]
pub struct QueueScope {
    pub queue_id: Option<String>,
    pub user_id: Option<UserId>,
    pub batch_id: Option<String>,
    pub destination: Option<String>,
}

impl QueueScope {
    fn clause(&self) -> (String, Vec<String>) {
        let mut conds = Vec::new();
        let mut args = Vec::new();
        let mut push = |col: &str, value: &str, conds: &mut Vec<String>| {
            args.push(value.to_owned());
            conds.push(format!("{col} = ${}", args.len()));
        };
        if let Some(q) = &self.queue_id {
            push("queue_id", q, &mut conds);
        }
        if let Some(u) = &self.user_id {
            push("user_id", u.as_str(), &mut conds);
        }
        if let Some(b) = &self.batch_id {
            push("batch_id", b, &mut conds);
        }
        if let Some(d) = &self.destination {
            push("destination", d, &mut conds);
        }
        let sql = if conds.is_empty() {
            "WHERE 1 = 1".to_owned()
        } else {
            format!("WHERE {}", conds.join(" AND "))
        };
        (sql, args)
    }
}

impl Store {
    /// Counts per status in `scope`.
    pub async fn queue_counts(&self, scope: &QueueScope) -> Result<StatusCounts> {
        let (clause, args) = scope.clause();
        let sql = format!("SELECT status, COUNT(*) FROM session_queue {clause} GROUP BY status");
        let mut q = sqlx::query(&sql);
        for a in &args {
            q = q.bind(a.as_str());
        }
        let mut counts = StatusCounts::default();
        for row in q.fetch_all(&self.pool).await? {
            counts.add(&row.try_get::<String, _>(0)?, row.try_get(1)?);
        }
        Ok(counts)
    }

    /// Rows of `scope` in queue order (priority, then age).
    pub async fn list_queue(&self, scope: &QueueScope) -> Result<Vec<QueueRow>> {
        let (clause, args) = scope.clause();
        let sql = format!(
            "SELECT {COLUMNS} FROM session_queue {clause} ORDER BY priority DESC, item_id ASC"
        );
        let mut q = sqlx::query(&sql);
        for a in &args {
            q = q.bind(a.as_str());
        }
        q.fetch_all(&self.pool)
            .await?
            .iter()
            .map(from_row)
            .collect()
    }

    /// Ids of a batch's items, newest first.
    pub async fn batch_item_ids(&self, batch_id: &str) -> Result<Vec<i64>> {
        let rows = sqlx::query(
            "SELECT item_id FROM session_queue WHERE batch_id = $1 ORDER BY item_id DESC",
        )
        .bind(batch_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    /// Some in-progress item of the queue.
    pub async fn current_queue_item(&self, queue_id: &str) -> Result<Option<QueueRow>> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM session_queue WHERE queue_id = $1 AND status = 'in_progress' ORDER BY item_id LIMIT 1"
        ))
        .bind(queue_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Deletes the terminal rows of `scope`; returns how many.
    pub async fn prune_queue(&self, scope: &QueueScope) -> Result<u64> {
        let (clause, args) = scope.clause();
        let sql = format!(
            "DELETE FROM session_queue {clause} AND status IN ('completed', 'failed', 'canceled')"
        );
        let mut tx = self.begin_write().await?;
        let mut q = sqlx::query(&sql);
        for a in &args {
            q = q.bind(a.as_str());
        }
        let done = q.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    /// Deletes every row of `scope`, whatever its status; returns how many.
    pub async fn clear_queue(&self, scope: &QueueScope) -> Result<u64> {
        let (clause, args) = scope.clause();
        let sql = format!("DELETE FROM session_queue {clause}");
        let mut tx = self.begin_write().await?;
        let mut q = sqlx::query(&sql);
        for a in &args {
            q = q.bind(a.as_str());
        }
        let done = q.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }
}

impl Store {
    /// Rows for `ids` in request order; unknown ids (or rows of another queue) are skipped.
    pub async fn queue_items_by_ids(&self, queue_id: &str, ids: &[i64]) -> Result<Vec<QueueRow>> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(row) = self
                .get_queue_item(*id)
                .await?
                .filter(|r| r.queue_id == queue_id)
            {
                out.push(row);
            }
        }
        Ok(out)
    }

    /// Cancels, in one statement, the pending and waiting rows of `scope` (optionally only
    /// those of `batch_ids`). Returns `(item_id, user_id)` of each.
    pub async fn cancel_pending(
        &self,
        scope: &QueueScope,
        batch_ids: Option<&[String]>,
    ) -> Result<Vec<(i64, String)>> {
        let (clause, mut args) = scope.clause();
        let mut sql = format!(
            "UPDATE session_queue SET status = 'canceled', status_sequence = status_sequence + 1
             {clause} AND status IN ('pending', 'waiting')"
        );
        if let Some(batch_ids) = batch_ids {
            if batch_ids.is_empty() {
                return Ok(Vec::new());
            }
            let start = args.len();
            let marks: Vec<String> = (0..batch_ids.len())
                .map(|i| format!("${}", start + i + 1))
                .collect();
            sql.push_str(&format!(" AND batch_id IN ({})", marks.join(", ")));
            args.extend(batch_ids.iter().cloned());
        }
        sql.push_str(" RETURNING item_id, user_id");
        let mut tx = self.begin_write().await?;
        let mut q = sqlx::query(&sql);
        for a in &args {
            q = q.bind(a.as_str());
        }
        let rows = q.fetch_all(&mut *tx).await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// Deletes the rows with these ids.
    pub async fn delete_queue_items(&self, ids: &[i64]) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let mut n = 0;
        for id in ids {
            n += sqlx::query("DELETE FROM session_queue WHERE item_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(n)
    }

    /// A new pending row running `root`'s original graph again, for the same owner.
    pub async fn retry_queue_item(
        &self,
        root: &QueueRow,
        session_id: &str,
        session: &str,
    ) -> Result<i64> {
        let mut tx = self.begin_write().await?;
        let id: i64 = sqlx::query(
            "INSERT INTO session_queue (queue_id, session_id, batch_id, priority, origin, destination,
                user_id, field_values, session, workflow, retried_from_item_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING item_id",
        )
        .bind(&root.queue_id)
        .bind(session_id)
        .bind(&root.batch_id)
        .bind(root.priority)
        .bind(&root.origin)
        .bind(&root.destination)
        .bind(root.user_id.as_str())
        .bind(&root.field_values)
        .bind(session)
        .bind(&root.workflow)
        .bind(root.retried_from_item_id.unwrap_or(root.item_id))
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        tx.commit().await?;
        Ok(id)
    }

    /// Keeps only the `keep` most recent finished rows (§5.5); pending and running rows are
    /// never pruned. Returns how many were deleted.
    pub async fn prune_history(&self, keep: i64) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "DELETE FROM session_queue WHERE status IN ('completed', 'failed', 'canceled')
               AND item_id NOT IN (
                 SELECT item_id FROM session_queue
                 WHERE status IN ('completed', 'failed', 'canceled')
                 ORDER BY COALESCE(completed_at, updated_at, created_at) DESC, item_id DESC
                 LIMIT $1)",
        )
        .bind(keep)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    /// How many rows are pending (for the capacity of retries).
    pub async fn pending_count(&self) -> Result<i64> {
        Ok(
            sqlx::query("SELECT COUNT(*) FROM session_queue WHERE status = 'pending'")
                .fetch_one(&self.pool)
                .await?
                .try_get(0)?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::migrated_store;

    async fn add(store: &Store, user: &str, n: usize, prepend: bool) -> Vec<i64> {
        let batch = NewBatch {
            queue_id: "default".into(),
            batch_id: uuid::Uuid::new_v4().to_string(),
            origin: None,
            destination: None,
            user_id: UserId::new(user),
            workflow: None,
            prepend,
        };
        let items: Vec<NewQueueItem> = (0..n)
            .map(|_| NewQueueItem {
                session_id: uuid::Uuid::new_v4().to_string(),
                field_values: Some("[]".into()),
                session: "{}".into(),
            })
            .collect();
        store
            .enqueue(&batch, &items, 10_000)
            .await
            .unwrap()
            .item_ids
    }

    /// Claims everything, finishing each claimed item first; returns the owners in order.
    async fn drain(store: &Store, mode: DequeueMode) -> Vec<String> {
        let mut order = Vec::new();
        while let Some(item) = store.dequeue(mode, "w", "cpu").await.unwrap() {
            assert_eq!(item.status, QueueItemStatus::InProgress);
            assert_eq!(item.status_sequence, 1);
            order.push(item.user_id.to_string());
            store
                .set_queue_status(item.item_id, QueueItemStatus::Completed, None)
                .await
                .unwrap()
                .unwrap();
            // started_at has millisecond precision: keep claims apart.
            tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        }
        order
    }

    #[tokio::test]
    async fn round_robin_follows_the_contract_example() {
        let (store, _dir) = migrated_store().await;
        for (user, n) in [("A", 2), ("B", 1), ("C", 2), ("A", 1)] {
            add(&store, user, n, false).await;
        }
        assert_eq!(
            drain(&store, DequeueMode::RoundRobin).await,
            ["A", "B", "C", "A", "C", "A"]
        );
    }

    #[tokio::test]
    async fn round_robin_and_fifo_orders_of_the_issue() {
        let (store, _dir) = migrated_store().await;
        add(&store, "A", 3, false).await;
        add(&store, "B", 1, false).await;
        assert_eq!(
            drain(&store, DequeueMode::RoundRobin).await,
            ["A", "B", "A", "A"]
        );
        let (store, _dir) = migrated_store().await;
        add(&store, "A", 3, false).await;
        add(&store, "B", 1, false).await;
        assert_eq!(drain(&store, DequeueMode::Fifo).await, ["A", "A", "A", "B"]);
    }

    #[tokio::test]
    async fn prepend_capacity_and_the_terminal_guard() {
        let (store, _dir) = migrated_store().await;
        let first = add(&store, "A", 2, false).await;
        let prepended = add(&store, "A", 1, true).await;
        let item = store.get_queue_item(prepended[0]).await.unwrap().unwrap();
        assert_eq!(item.priority, 1);
        let next = store
            .dequeue(DequeueMode::Fifo, "w", "cpu")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(next.item_id, prepended[0], "prepended work runs first");
        // Capacity: 2 pending, limit 3 → one of three inserted.
        let batch = NewBatch {
            queue_id: "default".into(),
            batch_id: "b".into(),
            origin: None,
            destination: None,
            user_id: UserId::new("A"),
            workflow: None,
            prepend: false,
        };
        let items: Vec<NewQueueItem> = (0..3)
            .map(|i| NewQueueItem {
                session_id: format!("s{i}"),
                field_values: None,
                session: "{}".into(),
            })
            .collect();
        assert_eq!(
            store
                .enqueue(&batch, &items, 3)
                .await
                .unwrap()
                .item_ids
                .len(),
            1
        );
        // Terminal rows never change again.
        let canceled = store
            .set_queue_status(first[0], QueueItemStatus::Canceled, None)
            .await
            .unwrap()
            .unwrap();
        assert!(canceled.completed_at.is_some());
        assert!(store
            .set_queue_status(first[0], QueueItemStatus::Pending, None)
            .await
            .unwrap()
            .is_none());
        assert!(store
            .set_queue_status(first[0], QueueItemStatus::Canceled, None)
            .await
            .unwrap()
            .is_none());
        // Start-up recovery fails the running one, saying why.
        assert_eq!(store.fail_interrupted_items().await.unwrap(), 1);
        let item = store.get_queue_item(next.item_id).await.unwrap().unwrap();
        assert_eq!(item.status, QueueItemStatus::Failed);
        assert_eq!(item.error_type.as_deref(), Some("ServerInterruptedError"));
        // History pruning keeps the newest finished rows and never touches pending ones.
        let pending_before = store.pending_count().await.unwrap();
        assert_eq!(store.prune_history(1).await.unwrap(), 1);
        assert!(
            store.get_queue_item(next.item_id).await.unwrap().is_some(),
            "the newest finished row stays"
        );
        assert!(store.get_queue_item(first[0]).await.unwrap().is_none());
        assert_eq!(store.pending_count().await.unwrap(), pending_before);
        assert_eq!(store.prune_history(0).await.unwrap(), 1);
    }
}

-- The session queue (queue-and-events.md §1.3). One row per session to run; `session`,
-- `field_values` and `workflow` are JSON text. `status_sequence` counts status writes.
-- Times are UTC text with milliseconds, as elsewhere.

CREATE TABLE session_queue (
    item_id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue_id TEXT NOT NULL,
    session_id TEXT NOT NULL UNIQUE,
    batch_id TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    status_sequence INTEGER NOT NULL DEFAULT 0,
    priority INTEGER NOT NULL DEFAULT 0,
    origin TEXT,
    destination TEXT,
    user_id TEXT NOT NULL DEFAULT 'system',
    field_values TEXT,
    session TEXT NOT NULL,
    workflow TEXT,
    error_type TEXT,
    error_message TEXT,
    error_traceback TEXT,
    retried_from_item_id INTEGER,
    device TEXT,
    worker_id TEXT,
    heartbeat_at TEXT,
    workflow_call_id TEXT,
    parent_item_id INTEGER,
    parent_session_id TEXT,
    root_item_id INTEGER,
    workflow_call_depth INTEGER,
    created_at TEXT NOT NULL DEFAULT (STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW')),
    updated_at TEXT NOT NULL DEFAULT (STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW')),
    started_at TEXT,
    completed_at TEXT
);
CREATE INDEX idx_session_queue_dequeue ON session_queue(status, user_id, priority DESC, item_id);
CREATE INDEX idx_session_queue_user_started ON session_queue(user_id, started_at);
CREATE INDEX idx_session_queue_batch ON session_queue(batch_id);
CREATE INDEX idx_session_queue_user ON session_queue(user_id);
CREATE INDEX idx_session_queue_parent ON session_queue(parent_item_id);
CREATE INDEX idx_session_queue_root ON session_queue(root_item_id);
CREATE INDEX idx_session_queue_call ON session_queue(workflow_call_id);
CREATE INDEX idx_session_queue_destination ON session_queue(destination);

-- Timestamps follow the status, whoever writes it.
CREATE TRIGGER tg_session_queue_updated
AFTER UPDATE ON session_queue FOR EACH ROW
BEGIN
    UPDATE session_queue SET
        updated_at = STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW'),
        started_at = CASE WHEN new.status = 'in_progress' AND old.status <> 'in_progress'
            THEN STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW') ELSE new.started_at END,
        completed_at = CASE WHEN new.status IN ('completed', 'failed', 'canceled')
            AND old.status NOT IN ('completed', 'failed', 'canceled')
            THEN STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW') ELSE new.completed_at END
    WHERE item_id = new.item_id;
END;

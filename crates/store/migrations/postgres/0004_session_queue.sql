-- The session queue; PostgreSQL variant of sqlite/0004_session_queue.sql.

CREATE TABLE session_queue (
    item_id BIGSERIAL PRIMARY KEY,
    queue_id TEXT NOT NULL,
    session_id TEXT NOT NULL UNIQUE,
    batch_id TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    status_sequence BIGINT NOT NULL DEFAULT 0,
    priority BIGINT NOT NULL DEFAULT 0,
    origin TEXT,
    destination TEXT,
    user_id TEXT NOT NULL DEFAULT 'system',
    field_values TEXT,
    session TEXT NOT NULL,
    workflow TEXT,
    error_type TEXT,
    error_message TEXT,
    error_traceback TEXT,
    retried_from_item_id BIGINT,
    device TEXT,
    worker_id TEXT,
    heartbeat_at TEXT,
    workflow_call_id TEXT,
    parent_item_id BIGINT,
    parent_session_id TEXT,
    root_item_id BIGINT,
    workflow_call_depth BIGINT,
    created_at TEXT NOT NULL DEFAULT (TO_CHAR(NOW() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS')),
    updated_at TEXT NOT NULL DEFAULT (TO_CHAR(NOW() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS')),
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

CREATE FUNCTION atelier_session_queue_times() RETURNS TRIGGER AS $$
DECLARE
    now_text TEXT := TO_CHAR(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS');
BEGIN
    NEW.updated_at := now_text;
    IF NEW.status = 'in_progress' AND OLD.status <> 'in_progress' THEN
        NEW.started_at := now_text;
    END IF;
    IF NEW.status IN ('completed', 'failed', 'canceled')
        AND OLD.status NOT IN ('completed', 'failed', 'canceled') THEN
        NEW.completed_at := now_text;
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER tg_session_queue_updated BEFORE UPDATE ON session_queue
FOR EACH ROW EXECUTE FUNCTION atelier_session_queue_times();

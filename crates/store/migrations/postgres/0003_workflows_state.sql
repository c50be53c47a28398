-- Workflow library, per-user client state and style presets; PostgreSQL variant of
-- sqlite/0003_workflows_state.sql (the document columns are generated from the JSON text).

CREATE TABLE workflow_library (
    workflow_id TEXT NOT NULL PRIMARY KEY,
    workflow TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (TO_CHAR(NOW() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS')),
    updated_at TEXT NOT NULL DEFAULT (TO_CHAR(NOW() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS')),
    opened_at TEXT,
    category TEXT GENERATED ALWAYS AS ((workflow::jsonb -> 'meta') ->> 'category') STORED,
    name TEXT GENERATED ALWAYS AS (workflow::jsonb ->> 'name') STORED,
    description TEXT GENERATED ALWAYS AS (workflow::jsonb ->> 'description') STORED,
    tags TEXT GENERATED ALWAYS AS (workflow::jsonb ->> 'tags') STORED,
    user_id TEXT NOT NULL DEFAULT 'system',
    is_public BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX idx_workflow_library_created_at ON workflow_library(created_at);
CREATE INDEX idx_workflow_library_updated_at ON workflow_library(updated_at);
CREATE INDEX idx_workflow_library_opened_at ON workflow_library(opened_at);
CREATE INDEX idx_workflow_library_category ON workflow_library(category);
CREATE INDEX idx_workflow_library_name ON workflow_library(name);
CREATE INDEX idx_workflow_library_description ON workflow_library(description);
CREATE INDEX idx_workflow_library_user_id ON workflow_library(user_id);
CREATE INDEX idx_workflow_library_is_public ON workflow_library(is_public);
CREATE TRIGGER tg_workflow_library_updated_at BEFORE UPDATE ON workflow_library
FOR EACH ROW EXECUTE FUNCTION atelier_touch_updated_at();

CREATE TABLE client_state (
    user_id TEXT NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (TO_CHAR(NOW() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS')),
    updated_at TEXT NOT NULL DEFAULT (TO_CHAR(NOW() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS')),
    PRIMARY KEY (user_id, key)
);
CREATE TRIGGER tg_client_state_updated_at BEFORE UPDATE ON client_state
FOR EACH ROW EXECUTE FUNCTION atelier_touch_updated_at();

CREATE TABLE style_presets (
    id TEXT NOT NULL PRIMARY KEY,
    name TEXT NOT NULL,
    preset_data TEXT NOT NULL,
    type TEXT NOT NULL DEFAULT 'user',
    created_at TEXT NOT NULL DEFAULT (TO_CHAR(NOW() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS')),
    updated_at TEXT NOT NULL DEFAULT (TO_CHAR(NOW() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS')),
    user_id TEXT NOT NULL DEFAULT 'system',
    is_public BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX idx_style_presets_name ON style_presets(name);
CREATE INDEX idx_style_presets_user_id ON style_presets(user_id);
CREATE INDEX idx_style_presets_is_public ON style_presets(is_public);
CREATE TRIGGER tg_style_presets_updated_at BEFORE UPDATE ON style_presets
FOR EACH ROW EXECUTE FUNCTION atelier_touch_updated_at();

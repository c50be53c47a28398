-- Workflow library, per-user client state and style presets (workflows-and-state.md).
-- Owners are plain ids (no foreign key) for workflows and presets, as for boards and images;
-- client state belongs to a user row and goes with it.

CREATE TABLE workflow_library (
    workflow_id TEXT NOT NULL PRIMARY KEY,
    workflow TEXT NOT NULL,
    created_at DATETIME NOT NULL DEFAULT (STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW')),
    updated_at DATETIME NOT NULL DEFAULT (STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW')),
    opened_at DATETIME,
    category TEXT GENERATED ALWAYS AS (json_extract(workflow, '$.meta.category')) VIRTUAL,
    name TEXT GENERATED ALWAYS AS (json_extract(workflow, '$.name')) VIRTUAL,
    description TEXT GENERATED ALWAYS AS (json_extract(workflow, '$.description')) VIRTUAL,
    tags TEXT GENERATED ALWAYS AS (json_extract(workflow, '$.tags')) VIRTUAL,
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

CREATE TRIGGER tg_workflow_library_updated_at
AFTER UPDATE ON workflow_library FOR EACH ROW
BEGIN
    UPDATE workflow_library SET updated_at = STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW')
    WHERE workflow_id = old.workflow_id;
END;

CREATE TABLE client_state (
    user_id TEXT NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    created_at DATETIME NOT NULL DEFAULT (STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW')),
    updated_at DATETIME NOT NULL DEFAULT (STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW')),
    PRIMARY KEY (user_id, key)
);

CREATE TRIGGER tg_client_state_updated_at
AFTER UPDATE ON client_state FOR EACH ROW
BEGIN
    UPDATE client_state SET updated_at = STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW')
    WHERE user_id = old.user_id AND key = old.key;
END;

CREATE TABLE style_presets (
    id TEXT NOT NULL PRIMARY KEY,
    name TEXT NOT NULL,
    preset_data TEXT NOT NULL,
    type TEXT NOT NULL DEFAULT 'user',
    created_at DATETIME NOT NULL DEFAULT (STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW')),
    updated_at DATETIME NOT NULL DEFAULT (STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW')),
    user_id TEXT NOT NULL DEFAULT 'system',
    is_public BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX idx_style_presets_name ON style_presets(name);
CREATE INDEX idx_style_presets_user_id ON style_presets(user_id);
CREATE INDEX idx_style_presets_is_public ON style_presets(is_public);

CREATE TRIGGER tg_style_presets_updated_at
AFTER UPDATE ON style_presets FOR EACH ROW
BEGIN
    UPDATE style_presets SET updated_at = STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW')
    WHERE id = old.id;
END;

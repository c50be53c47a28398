-- Model records (models.md §1.7). The JSON document is the record; the other columns are
-- generated from it so lists can filter and sort without parsing every row. `path` is unique:
-- two records never point at the same file or folder.

CREATE TABLE models (
    id TEXT NOT NULL PRIMARY KEY,
    config TEXT NOT NULL,
    created_at DATETIME NOT NULL DEFAULT (STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW')),
    updated_at DATETIME NOT NULL DEFAULT (STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW')),
    hash TEXT GENERATED ALWAYS AS (json_extract(config, '$.hash')) VIRTUAL,
    base TEXT GENERATED ALWAYS AS (json_extract(config, '$.base')) VIRTUAL NOT NULL,
    type TEXT GENERATED ALWAYS AS (json_extract(config, '$.type')) VIRTUAL NOT NULL,
    path TEXT GENERATED ALWAYS AS (json_extract(config, '$.path')) VIRTUAL NOT NULL,
    format TEXT GENERATED ALWAYS AS (json_extract(config, '$.format')) VIRTUAL NOT NULL,
    name TEXT GENERATED ALWAYS AS (json_extract(config, '$.name')) VIRTUAL NOT NULL,
    description TEXT GENERATED ALWAYS AS (json_extract(config, '$.description')) VIRTUAL,
    source TEXT GENERATED ALWAYS AS (json_extract(config, '$.source')) VIRTUAL NOT NULL,
    source_type TEXT GENERATED ALWAYS AS (json_extract(config, '$.source_type')) VIRTUAL NOT NULL,
    source_api_response TEXT GENERATED ALWAYS AS (json_extract(config, '$.source_api_response')) VIRTUAL,
    trigger_phrases TEXT GENERATED ALWAYS AS (json_extract(config, '$.trigger_phrases')) VIRTUAL,
    file_size INTEGER GENERATED ALWAYS AS (json_extract(config, '$.file_size')) VIRTUAL NOT NULL,
    UNIQUE (path)
);
CREATE INDEX idx_models_base ON models(base);
CREATE INDEX idx_models_type ON models(type);
CREATE INDEX idx_models_name ON models(name);
CREATE INDEX idx_models_hash ON models(hash);

CREATE TRIGGER tg_models_updated_at
AFTER UPDATE ON models FOR EACH ROW
BEGIN
    UPDATE models SET updated_at = STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW')
    WHERE id = old.id;
END;

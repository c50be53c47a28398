-- Model records; PostgreSQL variant of sqlite/0005_models.sql (the derived columns are
-- generated from the JSON text and stored). `updated_at` is set by the store on update.

CREATE TABLE models (
    id TEXT NOT NULL PRIMARY KEY,
    config TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (TO_CHAR(NOW() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS')),
    updated_at TEXT NOT NULL DEFAULT (TO_CHAR(NOW() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS')),
    hash TEXT GENERATED ALWAYS AS (config::jsonb ->> 'hash') STORED,
    base TEXT GENERATED ALWAYS AS (config::jsonb ->> 'base') STORED NOT NULL,
    type TEXT GENERATED ALWAYS AS (config::jsonb ->> 'type') STORED NOT NULL,
    path TEXT GENERATED ALWAYS AS (config::jsonb ->> 'path') STORED NOT NULL,
    format TEXT GENERATED ALWAYS AS (config::jsonb ->> 'format') STORED NOT NULL,
    name TEXT GENERATED ALWAYS AS (config::jsonb ->> 'name') STORED NOT NULL,
    description TEXT GENERATED ALWAYS AS (config::jsonb ->> 'description') STORED,
    source TEXT GENERATED ALWAYS AS (config::jsonb ->> 'source') STORED NOT NULL,
    source_type TEXT GENERATED ALWAYS AS (config::jsonb ->> 'source_type') STORED NOT NULL,
    source_api_response TEXT GENERATED ALWAYS AS (config::jsonb ->> 'source_api_response') STORED,
    trigger_phrases TEXT GENERATED ALWAYS AS (config::jsonb ->> 'trigger_phrases') STORED,
    file_size BIGINT GENERATED ALWAYS AS ((config::jsonb ->> 'file_size')::BIGINT) STORED NOT NULL,
    UNIQUE (path)
);
CREATE INDEX idx_models_base ON models(base);
CREATE INDEX idx_models_type ON models(type);
CREATE INDEX idx_models_name ON models(name);
CREATE INDEX idx_models_hash ON models(hash);

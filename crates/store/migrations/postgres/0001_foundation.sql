-- Foundation, PostgreSQL variant of migrations/sqlite/0001_foundation.sql (same tables and
-- columns; times are stored as text in the same formats so both backends read alike).

CREATE TABLE users (
    user_id TEXT NOT NULL PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    display_name TEXT,
    password_hash TEXT NOT NULL,
    is_admin BOOLEAN NOT NULL DEFAULT FALSE,
    is_active BOOLEAN NOT NULL DEFAULT TRUE,
    created_at TEXT NOT NULL DEFAULT (TO_CHAR(NOW() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS')),
    updated_at TEXT NOT NULL DEFAULT (TO_CHAR(NOW() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS')),
    last_login_at TEXT,
    token_epoch BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX idx_users_email ON users(email);
CREATE INDEX idx_users_is_admin ON users(is_admin);
CREATE INDEX idx_users_is_active ON users(is_active);
CREATE INDEX idx_users_created_at ON users(created_at);

CREATE FUNCTION atelier_touch_updated_at() RETURNS TRIGGER AS $$
BEGIN
    NEW.updated_at := TO_CHAR(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS');
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER tg_users_updated_at BEFORE UPDATE ON users
FOR EACH ROW EXECUTE FUNCTION atelier_touch_updated_at();

CREATE TABLE app_settings (
    key TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (TO_CHAR(NOW() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS')),
    updated_at TEXT NOT NULL DEFAULT (TO_CHAR(NOW() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS'))
);
CREATE TRIGGER tg_app_settings_updated_at BEFORE UPDATE ON app_settings
FOR EACH ROW EXECUTE FUNCTION atelier_touch_updated_at();

CREATE TABLE user_sessions (
    session_id TEXT NOT NULL PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    token_hash TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (TO_CHAR(NOW() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS')),
    updated_at TEXT NOT NULL DEFAULT (TO_CHAR(NOW() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS')),
    last_activity_at TEXT NOT NULL DEFAULT (TO_CHAR(NOW() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS'))
);

CREATE TABLE user_invitations (
    invitation_id TEXT NOT NULL PRIMARY KEY,
    email TEXT NOT NULL,
    invited_by TEXT NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    invitation_code TEXT NOT NULL UNIQUE,
    is_admin BOOLEAN NOT NULL DEFAULT FALSE,
    expires_at TEXT NOT NULL,
    used_at TEXT,
    created_at TEXT NOT NULL DEFAULT (TO_CHAR(NOW() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS')),
    updated_at TEXT NOT NULL DEFAULT (TO_CHAR(NOW() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS'))
);

INSERT INTO users (user_id, email, display_name, password_hash, is_admin, is_active)
VALUES ('system', 'system@system.invokeai', 'System', '', FALSE, TRUE);

CREATE TABLE audit_log (
    id BIGSERIAL PRIMARY KEY,
    created_at TEXT NOT NULL,
    action TEXT NOT NULL,
    actor_user_id TEXT,
    actor_email TEXT,
    subject_user_id TEXT,
    subject_email TEXT,
    client TEXT,
    detail TEXT
);
CREATE INDEX idx_audit_log_action ON audit_log(action);

CREATE TABLE login_failures (
    id BIGSERIAL PRIMARY KEY,
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (TO_CHAR(NOW() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS')),
    updated_at TEXT NOT NULL DEFAULT (TO_CHAR(NOW() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS'))
);
CREATE INDEX idx_login_failures_key ON login_failures(scope, key, at_ms);

-- The JWT signing secret: 64 lowercase hex characters from two v4 UUIDs' strong randomness.
INSERT INTO app_settings (key, value)
VALUES ('jwt_secret', ENCODE(SHA256((gen_random_uuid()::text || gen_random_uuid()::text)::bytea), 'hex'));

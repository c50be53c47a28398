-- Foundation: users, app settings (JWT secret), the internal `system` user, the tables the
-- reference keeps but does not use, the audit log and login-throttling counters.
-- The `users` and `app_settings` names, columns and defaults follow InvokeAI's schema so
-- that its documented sqlite3 recipes work on this file too.

CREATE TABLE users (
    user_id TEXT NOT NULL PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    display_name TEXT,
    password_hash TEXT NOT NULL,
    is_admin BOOLEAN NOT NULL DEFAULT FALSE,
    is_active BOOLEAN NOT NULL DEFAULT TRUE,
    created_at DATETIME NOT NULL DEFAULT (STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW')),
    updated_at DATETIME NOT NULL DEFAULT (STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW')),
    last_login_at DATETIME,
    token_epoch INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX idx_users_email ON users(email);
CREATE INDEX idx_users_is_admin ON users(is_admin);
CREATE INDEX idx_users_is_active ON users(is_active);
CREATE INDEX idx_users_created_at ON users(created_at);

CREATE TRIGGER tg_users_updated_at
AFTER UPDATE ON users FOR EACH ROW
BEGIN
    UPDATE users SET updated_at = STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW')
    WHERE user_id = old.user_id;
END;

CREATE TABLE app_settings (
    key TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL,
    created_at DATETIME NOT NULL DEFAULT (STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW')),
    updated_at DATETIME NOT NULL DEFAULT (STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW'))
);

CREATE TRIGGER tg_app_settings_updated_at
AFTER UPDATE ON app_settings FOR EACH ROW
BEGIN
    UPDATE app_settings SET updated_at = STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW')
    WHERE key = old.key;
END;

CREATE TABLE user_sessions (
    session_id TEXT NOT NULL PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    token_hash TEXT NOT NULL,
    expires_at DATETIME NOT NULL,
    created_at DATETIME NOT NULL DEFAULT (STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW')),
    updated_at DATETIME NOT NULL DEFAULT (STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW')),
    last_activity_at DATETIME NOT NULL DEFAULT (STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW'))
);

CREATE TABLE user_invitations (
    invitation_id TEXT NOT NULL PRIMARY KEY,
    email TEXT NOT NULL,
    invited_by TEXT NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    invitation_code TEXT NOT NULL UNIQUE,
    is_admin BOOLEAN NOT NULL DEFAULT FALSE,
    expires_at DATETIME NOT NULL,
    used_at DATETIME,
    created_at DATETIME NOT NULL DEFAULT (STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW')),
    updated_at DATETIME NOT NULL DEFAULT (STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW'))
);

-- The internal owner of everything created before multi-user mode (auth.md §9.8).
INSERT INTO users (user_id, email, display_name, password_hash, is_admin, is_active)
VALUES ('system', 'system@system.invokeai', 'System', '', FALSE, TRUE);

-- Atelier's audit log (an extension; the reference has none).
CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
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

-- Failed logins inside the throttling window, per account and per client address.
-- `scope` is 'account' or 'client'; `at_ms` is Unix milliseconds.
CREATE TABLE login_failures (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    created_at TEXT NOT NULL DEFAULT (STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW')),
    updated_at TEXT NOT NULL DEFAULT (STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW'))
);
CREATE INDEX idx_login_failures_key ON login_failures(scope, key, at_ms);

-- The JWT signing secret: 32 random bytes as 64 lowercase hex characters (auth.md §9.2).
INSERT INTO app_settings (key, value) VALUES ('jwt_secret', LOWER(HEX(RANDOMBLOB(32))));

-- Boards and images; PostgreSQL variant of sqlite/0002_boards_images.sql.

CREATE TABLE images (
    image_name TEXT NOT NULL PRIMARY KEY,
    image_origin TEXT NOT NULL,
    image_category TEXT NOT NULL,
    width BIGINT NOT NULL,
    height BIGINT NOT NULL,
    session_id TEXT,
    node_id TEXT,
    metadata TEXT,
    is_intermediate BOOLEAN NOT NULL DEFAULT FALSE,
    starred BOOLEAN NOT NULL DEFAULT FALSE,
    has_workflow BOOLEAN NOT NULL DEFAULT FALSE,
    created_at TEXT NOT NULL DEFAULT (TO_CHAR(NOW() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS')),
    updated_at TEXT NOT NULL DEFAULT (TO_CHAR(NOW() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS')),
    deleted_at TEXT,
    user_id TEXT NOT NULL DEFAULT 'system',
    image_subfolder TEXT NOT NULL DEFAULT '',
    -- The board the image is on (at most one); NULL is "Uncategorized". Kept on the image
    -- rather than in a membership table so board counts and covers are index range scans.
    board_id TEXT,
    board_added_at TEXT
);
CREATE INDEX idx_images_user_listing ON images(user_id, starred, created_at, image_name);
CREATE INDEX idx_images_user_created ON images(user_id, created_at, image_name);
CREATE INDEX idx_images_listing ON images(starred, created_at, image_name);
CREATE INDEX idx_images_board_counts ON images(board_id, is_intermediate, image_category);
CREATE INDEX idx_images_board_cover ON images(board_id, is_intermediate, starred, created_at, image_name);
CREATE INDEX idx_images_created_at ON images(created_at, image_name);
CREATE INDEX idx_images_category ON images(image_category);
CREATE INDEX idx_images_intermediate ON images(is_intermediate);
CREATE INDEX idx_images_starred ON images(starred);
CREATE TRIGGER tg_images_updated_at BEFORE UPDATE ON images
FOR EACH ROW EXECUTE FUNCTION atelier_touch_updated_at();

CREATE TABLE boards (
    board_id TEXT NOT NULL PRIMARY KEY,
    board_name TEXT NOT NULL,
    cover_image_name TEXT REFERENCES images(image_name) ON DELETE SET NULL,
    created_at TEXT NOT NULL DEFAULT (TO_CHAR(NOW() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS')),
    updated_at TEXT NOT NULL DEFAULT (TO_CHAR(NOW() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS')),
    deleted_at TEXT,
    archived BOOLEAN NOT NULL DEFAULT FALSE,
    user_id TEXT NOT NULL DEFAULT 'system',
    is_public BOOLEAN NOT NULL DEFAULT FALSE,
    board_visibility TEXT NOT NULL DEFAULT 'private'
);
CREATE INDEX idx_boards_user_id ON boards(user_id);
CREATE INDEX idx_boards_created_at ON boards(created_at);
CREATE INDEX idx_boards_visibility ON boards(board_visibility);

CREATE FUNCTION atelier_touch_updated_at_seconds() RETURNS TRIGGER AS $$
BEGIN
    NEW.updated_at := TO_CHAR(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS');
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER tg_boards_updated_at BEFORE UPDATE ON boards
FOR EACH ROW EXECUTE FUNCTION atelier_touch_updated_at_seconds();

ALTER TABLE images ADD CONSTRAINT images_board_id_fkey
    FOREIGN KEY (board_id) REFERENCES boards(board_id) ON DELETE SET NULL;

CREATE TABLE shared_boards (
    board_id TEXT NOT NULL REFERENCES boards(board_id) ON DELETE CASCADE,
    user_id TEXT NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    can_edit BOOLEAN NOT NULL DEFAULT FALSE,
    shared_at TEXT NOT NULL DEFAULT (TO_CHAR(NOW() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS')),
    PRIMARY KEY (board_id, user_id)
);

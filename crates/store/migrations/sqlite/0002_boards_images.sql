-- Boards and images (boards-images.md §2); an image's board is its `board_id` column. Owners are plain ids with no
-- foreign key to `users`: content survives the deletion of its owner.

CREATE TABLE boards (
    board_id TEXT NOT NULL PRIMARY KEY,
    board_name TEXT NOT NULL,
    cover_image_name TEXT REFERENCES images(image_name) ON DELETE SET NULL,
    created_at DATETIME NOT NULL DEFAULT (STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW')),
    updated_at DATETIME NOT NULL DEFAULT (STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW')),
    deleted_at DATETIME,
    archived BOOLEAN NOT NULL DEFAULT FALSE,
    user_id TEXT NOT NULL DEFAULT 'system',
    is_public BOOLEAN NOT NULL DEFAULT FALSE,
    board_visibility TEXT NOT NULL DEFAULT 'private'
);
CREATE INDEX idx_boards_user_id ON boards(user_id);
CREATE INDEX idx_boards_created_at ON boards(created_at);
CREATE INDEX idx_boards_visibility ON boards(board_visibility);

-- The reference's trigger writes CURRENT_TIMESTAMP here: second precision, kept for parity.
CREATE TRIGGER tg_boards_updated_at
AFTER UPDATE ON boards FOR EACH ROW
BEGIN
    UPDATE boards SET updated_at = CURRENT_TIMESTAMP WHERE board_id = old.board_id;
END;

CREATE TABLE images (
    image_name TEXT NOT NULL PRIMARY KEY,
    image_origin TEXT NOT NULL,
    image_category TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    session_id TEXT,
    node_id TEXT,
    metadata TEXT,
    is_intermediate BOOLEAN NOT NULL DEFAULT FALSE,
    starred BOOLEAN NOT NULL DEFAULT FALSE,
    has_workflow BOOLEAN NOT NULL DEFAULT FALSE,
    created_at DATETIME NOT NULL DEFAULT (STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW')),
    updated_at DATETIME NOT NULL DEFAULT (STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW')),
    deleted_at DATETIME,
    user_id TEXT NOT NULL DEFAULT 'system',
    image_subfolder TEXT NOT NULL DEFAULT '',
    -- The board the image is on (at most one); NULL is "Uncategorized". Kept on the image
    -- rather than in a membership table so board counts and covers are index range scans.
    board_id TEXT REFERENCES boards(board_id) ON DELETE SET NULL,
    board_added_at DATETIME
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

CREATE TRIGGER tg_images_updated_at
AFTER UPDATE ON images FOR EACH ROW
BEGIN
    UPDATE images SET updated_at = STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW')
    WHERE image_name = old.image_name;
END;

-- Reserved by the reference; only affects board listings.
CREATE TABLE shared_boards (
    board_id TEXT NOT NULL REFERENCES boards(board_id) ON DELETE CASCADE,
    user_id TEXT NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    can_edit BOOLEAN NOT NULL DEFAULT FALSE,
    shared_at DATETIME NOT NULL DEFAULT (STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW')),
    PRIMARY KEY (board_id, user_id)
);

//! Image use cases (boards-images.md §6–7). Files live under
//! `<outputs_dir>/images/[<subfolder>/]<name>.png` with WebP thumbnails under
//! `images/thumbnails/`.
//!
//! Crash safety: an image is either fully present (file, thumbnail and row) or absent. Files
//! are written under temporary names and renamed into place, then the row is committed in one
//! transaction; if the row fails the files are removed. Deleting removes the row first and then
//! the files, so a crash in between leaves only a stray file, which start-up sweeps away.

use crate::http::error::ApiError;
use crate::media::{self, PngText};
use crate::state::AppState;
use atelier_domain::content::{self, BoardAccess, ImageAccess, ImageCategory, ResourceOrigin};
use atelier_domain::Identity;
use atelier_store::{ImageChanges, ImageRecord, NewImage, StoreError};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The id used for "no board" in `affected_boards`.
pub const NO_BOARD: &str = "none";

pub fn access(image: &ImageRecord) -> ImageAccess<'_> {
    ImageAccess {
        owner: &image.user_id,
        board: match (&image.board_owner, image.board_visibility) {
            (Some(owner), Some(visibility)) => Some(BoardAccess { owner, visibility }),
            _ => None,
        },
    }
}

fn board_key(image: &ImageRecord) -> String {
    image
        .board_id
        .clone()
        .unwrap_or_else(|| NO_BOARD.to_owned())
}

/// Whether `name` is a bare file name (no separators, no traversal).
pub fn safe_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['/', '\\']) && name != "." && name != ".."
}

fn safe_subfolder(sub: &str) -> bool {
    sub.is_empty()
        || (!sub.contains('\\')
            && !sub.starts_with('/')
            && sub.split('/').all(|s| !s.is_empty() && s != ".."))
}

/// Where an image's full file and thumbnail live.
pub fn image_paths(state: &AppState, name: &str, subfolder: &str) -> (PathBuf, PathBuf) {
    let images = state.config.outputs_dir().join("images");
    let stem = name.strip_suffix(".png").unwrap_or(name);
    let mut full = images.clone();
    let mut thumb = images.join("thumbnails");
    if !subfolder.is_empty() && safe_subfolder(subfolder) {
        full.push(subfolder);
        thumb.push(subfolder);
    }
    (full.join(name), thumb.join(format!("{stem}.webp")))
}

/// Loads an image the caller may read (ImageRead). A non-admin asking for a missing image
/// gets 404 `Image not found`; an admin gets the route's own 404 `Not Found`.
pub async fn readable(
    state: &AppState,
    me: &Identity,
    name: &str,
) -> Result<ImageRecord, ApiError> {
    let found = if safe_name(name) {
        state.store.get_image(name).await?
    } else {
        None
    };
    match found {
        None if me.is_admin() => Err(ApiError::not_found("Not Found")),
        None => Err(ApiError::not_found("Image not found")),
        Some(image) if content::can_read_image(me, access(&image)) => Ok(image),
        Some(_) => Err(ApiError::forbidden("Not authorized to access this image")),
    }
}

/// ImageWrite for one image: non-admins get 403 also for unknown names. `Ok(None)` is an
/// admin asking for a missing image (the route decides what that means).
async fn writable(
    state: &AppState,
    me: &Identity,
    name: &str,
) -> Result<Option<ImageRecord>, ApiError> {
    let found = if safe_name(name) {
        state.store.get_image(name).await?
    } else {
        None
    };
    match found {
        Some(image) if content::can_write_image(me, access(&image)) => Ok(Some(image)),
        None if me.is_admin() => Ok(None),
        _ => Err(ApiError::forbidden("Not authorized to modify this image")),
    }
}

/// What the upload endpoint received.
pub struct Upload {
    pub bytes: Vec<u8>,
    pub content_type: Option<String>,
    pub category: ImageCategory,
    pub is_intermediate: bool,
    pub board_id: Option<String>,
    pub session_id: Option<String>,
    pub crop_visible: bool,
    pub metadata_field: Option<String>,
    pub resize_to: Option<String>,
}

/// `POST /images/upload`, with the contract's order of checks.
pub async fn upload(
    state: &AppState,
    me: &Identity,
    upload: Upload,
) -> Result<ImageRecord, ApiError> {
    if let Some(board_id) = &upload.board_id {
        crate::service::boards::writable(
            state,
            me,
            board_id,
            "Not authorized to upload to this board",
        )
        .await?;
    }
    if !upload
        .content_type
        .as_deref()
        .is_some_and(|t| t.starts_with("image"))
    {
        return Err(ApiError::UnsupportedMediaType("Not an image".to_owned()));
    }
    let resize = match &upload.resize_to {
        Some(text) => Some(
            media::parse_resize_to(text)
                .ok_or_else(|| ApiError::bad_request("Invalid resize_to format or size"))?,
        ),
        None => None,
    };
    let compress = state
        .config
        .get("pil_compress_level")
        .and_then(|v| v.as_i64())
        .unwrap_or(1);
    let bytes = upload.bytes;
    let (crop, metadata_field) = (upload.crop_visible, upload.metadata_field);
    // Decoding and encoding are CPU work: off the async runtime.
    let prepared = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        let mut image = media::decode(&bytes)
            .map_err(|_| ApiError::UnsupportedMediaType("Failed to read image".to_owned()))?;
        if crop {
            image = media::crop_visible(image);
        }
        if let Some((w, h)) = resize {
            image = media::resize_exact(&image, w, h);
        }
        let mut text = media::read_png_text(&bytes);
        if let Some(field) = metadata_field {
            text.metadata = Some(field);
        }
        let text = media::sanitize(text);
        let png = media::encode_png(&image, &text, compress).map_err(ApiError::internal)?;
        let thumb = media::thumbnail(&image).map_err(ApiError::internal)?;
        Ok((image.width(), image.height(), text, png, thumb))
    })
    .await
    .map_err(ApiError::internal)??;
    let (width, height, text, png, thumb) = prepared;
    let new = NewImage {
        image_name: format!("{}.png", uuid::Uuid::new_v4()),
        image_origin: ResourceOrigin::External,
        image_category: upload.category,
        width: i64::from(width),
        height: i64::from(height),
        session_id: upload.session_id,
        node_id: None,
        has_workflow: text.has_workflow(),
        metadata: text.metadata.clone(),
        is_intermediate: upload.is_intermediate,
        user_id: me.user_id.clone(),
        image_subfolder: String::new(),
        board_id: upload.board_id,
    };
    save(state, new, &png, &thumb).await.map_err(|e| {
        tracing::error!(error = %e.detail(), "upload failed");
        ApiError::failed("Failed to create image")
    })
}

/// The subfolder for a new image under the configured strategy.
async fn subfolder_for(
    state: &AppState,
    name: &str,
    category: ImageCategory,
    intermediate: bool,
) -> String {
    let strategy = state
        .runtime
        .lock()
        .await
        .image_subfolder_strategy()
        .to_owned();
    match strategy.as_str() {
        "date" => chrono::Local::now().format("%Y/%m/%d").to_string(),
        "type" if intermediate => "intermediate".to_owned(),
        "type" => category.as_str().to_owned(),
        "hash" => name.chars().take(2).collect(),
        _ => String::new(),
    }
}

async fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    let tmp = path.with_extension(format!("{}.tmp", uuid::Uuid::new_v4().simple()));
    tokio::fs::write(&tmp, bytes).await?;
    if let Err(err) = tokio::fs::rename(&tmp, path).await {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(err);
    }
    Ok(())
}

/// Writes the files, then commits the row (and board membership); undoes the files if the
/// row cannot be written.
pub async fn save(
    state: &AppState,
    mut new: NewImage,
    png: &[u8],
    thumb: &[u8],
) -> Result<ImageRecord, ApiError> {
    new.image_subfolder = subfolder_for(
        state,
        &new.image_name,
        new.image_category,
        new.is_intermediate,
    )
    .await;
    let (full, thumb_path) = image_paths(state, &new.image_name, &new.image_subfolder);
    write_atomically(&full, png)
        .await
        .map_err(ApiError::internal)?;
    if let Err(err) = write_atomically(&thumb_path, thumb).await {
        let _ = tokio::fs::remove_file(&full).await;
        return Err(ApiError::internal(err));
    }
    match state.store.insert_image(&new).await {
        Ok(record) => Ok(record),
        Err(err) => {
            let _ = tokio::fs::remove_file(&full).await;
            let _ = tokio::fs::remove_file(&thumb_path).await;
            Err(ApiError::internal(err))
        }
    }
}

/// The full PNG's bytes, for media and for reading embedded documents.
pub async fn read_full(state: &AppState, image: &ImageRecord) -> Result<Vec<u8>, ApiError> {
    let (full, _) = image_paths(state, &image.image_name, &image.image_subfolder);
    tokio::fs::read(&full)
        .await
        .map_err(|_| ApiError::not_found("Not Found"))
}

pub async fn read_thumbnail(state: &AppState, image: &ImageRecord) -> Result<Vec<u8>, ApiError> {
    let (_, thumb) = image_paths(state, &image.image_name, &image.image_subfolder);
    tokio::fs::read(&thumb)
        .await
        .map_err(|_| ApiError::not_found("Not Found"))
}

/// The workflow and graph embedded in the PNG.
pub async fn embedded_text(state: &AppState, image: &ImageRecord) -> Result<PngText, ApiError> {
    let bytes = read_full(state, image).await?;
    tokio::task::spawn_blocking(move || media::read_png_text(&bytes))
        .await
        .map_err(ApiError::internal)
}

/// `PATCH /images/i/{name}`.
pub async fn update(
    state: &AppState,
    me: &Identity,
    name: &str,
    changes: &ImageChanges,
) -> Result<ImageRecord, ApiError> {
    let failed = || ApiError::bad_request("Failed to update image");
    writable(state, me, name).await?.ok_or_else(failed)?;
    state
        .store
        .update_image(name, changes)
        .await
        .map_err(|_| failed())
}

/// What a batch operation did.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    pub done: Vec<String>,
    pub affected_boards: BTreeSet<String>,
    pub failed: Vec<String>,
}

/// Removes the files of a deleted record.
async fn remove_files(state: &AppState, record: &ImageRecord) {
    let (full, thumb) = image_paths(state, &record.image_name, &record.image_subfolder);
    for path in [full, thumb] {
        if let Err(err) = tokio::fs::remove_file(&path).await {
            if err.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %err, "could not remove an image file");
            }
        }
    }
}

/// `DELETE /images/i/{name}`.
pub async fn delete_one(
    state: &AppState,
    me: &Identity,
    name: &str,
) -> Result<BatchOutcome, ApiError> {
    if writable(state, me, name).await?.is_none() {
        return Err(ApiError::not_found("Image not found"));
    }
    match state.store.delete_image(name).await {
        Ok(Some(record)) => {
            remove_files(state, &record).await;
            let mut out = BatchOutcome::default();
            out.affected_boards.insert(board_key(&record));
            out.done.push(record.image_name);
            Ok(out)
        }
        Ok(None) => Err(ApiError::not_found("Image not found")),
        Err(_) => Err(ApiError::failed("Failed to delete image")),
    }
}

/// De-duplicates names keeping the first occurrence.
pub fn dedup(names: &[String]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    names
        .iter()
        .filter(|n| seen.insert(n.as_str()))
        .cloned()
        .collect()
}

/// Deletes the named images the caller may write; others and unknown names are skipped.
pub async fn delete_batch(
    state: &AppState,
    me: &Identity,
    names: &[String],
) -> Result<BatchOutcome, ApiError> {
    let mut out = BatchOutcome::default();
    for name in dedup(names) {
        let Ok(Some(record)) = state.store.get_image(&name).await else {
            continue;
        };
        if !content::can_write_image(me, access(&record)) {
            continue;
        }
        match state.store.delete_image(&name).await {
            Ok(Some(record)) => {
                remove_files(state, &record).await;
                out.affected_boards.insert(board_key(&record));
                out.done.push(name);
            }
            Ok(None) => {}
            Err(_) => out.failed.push(name),
        }
    }
    Ok(out)
}

/// Deletes images by name without access checks (callers checked already): board deletion.
pub async fn delete_many(state: &AppState, names: &[String]) -> Result<Deleted, ApiError> {
    let mut out = Deleted::default();
    for name in names {
        match state.store.delete_image(name).await {
            Ok(Some(record)) => {
                remove_files(state, &record).await;
                out.deleted.push(record.image_name);
            }
            Ok(None) => {}
            Err(_) => out.failed.push(name.clone()),
        }
    }
    Ok(out)
}

#[derive(Debug, Default)]
pub struct Deleted {
    pub deleted: Vec<String>,
    pub failed: Vec<String>,
}

/// Stars or unstars the named images the caller may write.
pub async fn set_starred(
    state: &AppState,
    me: &Identity,
    names: &[String],
    starred: bool,
) -> Result<BatchOutcome, ApiError> {
    let mut out = BatchOutcome::default();
    let changes = ImageChanges {
        starred: Some(starred),
        ..ImageChanges::default()
    };
    for name in dedup(names) {
        let Ok(Some(record)) = state.store.get_image(&name).await else {
            continue;
        };
        if !content::can_write_image(me, access(&record)) {
            continue;
        }
        match state.store.update_image(&name, &changes).await {
            Ok(record) => {
                out.affected_boards.insert(board_key(&record));
                out.done.push(name);
            }
            Err(StoreError::NotFound) => {}
            Err(_) => out.failed.push(name),
        }
    }
    Ok(out)
}

/// Deletes every uncategorized image (all users') that the caller may write.
pub async fn delete_uncategorized(
    state: &AppState,
    me: &Identity,
) -> Result<BatchOutcome, ApiError> {
    let names = state
        .store
        .board_image_names(None, None, None, None)
        .await?;
    delete_batch(state, me, &names).await
}

/// Number of intermediate images: the caller's own unless admin.
pub async fn count_intermediates(state: &AppState, me: &Identity) -> Result<i64, ApiError> {
    let owner = (!me.is_admin()).then_some(&me.user_id);
    let names = state
        .store
        .intermediate_names(owner)
        .await
        .map_err(|_| ApiError::failed("Failed to get intermediates"))?;
    Ok(i64::try_from(names.len()).unwrap_or(i64::MAX))
}

/// Deletes every user's intermediate images (admins only); returns how many.
pub async fn clear_intermediates(state: &AppState, me: &Identity) -> Result<i64, ApiError> {
    if !me.is_admin() {
        return Err(ApiError::forbidden(
            "Only admins can clear all intermediates",
        ));
    }
    let names = state
        .store
        .intermediate_names(None)
        .await
        .map_err(|_| ApiError::failed("Failed to clear intermediates"))?;
    let out = delete_many(state, &names).await?;
    Ok(i64::try_from(out.deleted.len()).unwrap_or(i64::MAX))
}

/// Records for `names` in request order, leaving out unknown and unreadable ones.
pub async fn by_names(
    state: &AppState,
    me: &Identity,
    names: &[String],
) -> Result<Vec<ImageRecord>, ApiError> {
    let records = state
        .store
        .images_by_names(names)
        .await
        .map_err(|_| ApiError::failed("Failed to get image DTOs"))?;
    let mut by_name: std::collections::HashMap<&str, &ImageRecord> =
        records.iter().map(|r| (r.image_name.as_str(), r)).collect();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        if let Some(record) = by_name.remove(name.as_str()) {
            if content::can_read_image(me, access(record)) {
                out.push(record.clone());
            }
        }
    }
    Ok(out)
}

/// `POST /board_images/`: BoardWrite on the target, then ImageMove on the image.
pub async fn add_to_board(
    state: &AppState,
    me: &Identity,
    board_id: &str,
    name: &str,
) -> Result<BatchOutcome, ApiError> {
    crate::service::boards::writable(state, me, board_id, "Not authorized to modify this board")
        .await?;
    let image = if safe_name(name) {
        state.store.get_image(name).await?
    } else {
        None
    };
    let movable = image
        .as_ref()
        .is_some_and(|i| content::can_move_image(me, access(i)));
    if !(movable || (me.is_admin() && image.is_none())) {
        return Err(ApiError::forbidden("Not authorized to move this image"));
    }
    let previous = state
        .store
        .add_image_to_board(name, board_id)
        .await
        .map_err(|_| ApiError::failed("Failed to add image to board"))?;
    let mut out = BatchOutcome::default();
    out.affected_boards.insert(board_id.to_owned());
    out.affected_boards
        .insert(previous.unwrap_or_else(|| NO_BOARD.to_owned()));
    out.done.push(name.to_owned());
    Ok(out)
}

/// `DELETE /board_images/`: BoardWrite on the image's current board.
pub async fn remove_from_board(
    state: &AppState,
    me: &Identity,
    name: &str,
) -> Result<BatchOutcome, ApiError> {
    let image = if safe_name(name) {
        state.store.get_image(name).await?
    } else {
        None
    };
    let Some(image) = image else {
        return Err(ApiError::failed("Failed to remove image from board"));
    };
    let mut out = BatchOutcome::default();
    if let Some(board_id) = &image.board_id {
        crate::service::boards::writable(
            state,
            me,
            board_id,
            "Not authorized to modify this board",
        )
        .await?;
        state
            .store
            .remove_image_from_board(name)
            .await
            .map_err(|_| ApiError::failed("Failed to remove image from board"))?;
        out.affected_boards.insert(board_id.clone());
    }
    out.affected_boards.insert(NO_BOARD.to_owned());
    out.done.push(name.to_owned());
    Ok(out)
}

/// `POST /board_images/batch`: the target board must be writable; names the caller may not
/// move, and unknown names, are skipped.
pub async fn add_batch_to_board(
    state: &AppState,
    me: &Identity,
    board_id: &str,
    names: &[String],
) -> Result<BatchOutcome, ApiError> {
    crate::service::boards::writable(state, me, board_id, "Not authorized to modify this board")
        .await?;
    let mut out = BatchOutcome::default();
    for name in dedup(names) {
        let Ok(Some(image)) = state.store.get_image(&name).await else {
            continue;
        };
        if !content::can_move_image(me, access(&image)) {
            continue;
        }
        match state.store.add_image_to_board(&name, board_id).await {
            Ok(previous) => {
                out.affected_boards.insert(board_id.to_owned());
                out.affected_boards
                    .insert(previous.unwrap_or_else(|| NO_BOARD.to_owned()));
                out.done.push(name);
            }
            Err(_) => out.failed.push(name),
        }
    }
    Ok(out)
}

/// `POST /board_images/batch/delete`: per image, BoardWrite on its current board.
pub async fn remove_batch_from_board(
    state: &AppState,
    me: &Identity,
    names: &[String],
) -> Result<BatchOutcome, ApiError> {
    let mut out = BatchOutcome::default();
    for name in dedup(names) {
        let Ok(Some(image)) = state.store.get_image(&name).await else {
            continue;
        };
        let Some(board_id) = image.board_id.clone() else {
            out.affected_boards.insert(NO_BOARD.to_owned());
            out.done.push(name);
            continue;
        };
        let board = BoardAccess {
            owner: image.board_owner.as_ref().unwrap_or(&image.user_id),
            visibility: image.board_visibility.unwrap_or_default(),
        };
        if !content::can_write_board(me, board) {
            continue;
        }
        match state.store.remove_image_from_board(&name).await {
            Ok(_) => {
                out.affected_boards.insert(board_id);
                out.affected_boards.insert(NO_BOARD.to_owned());
                out.done.push(name);
            }
            Err(_) => out.failed.push(name),
        }
    }
    Ok(out)
}

/// Removes files that no record points to (a crash between writing files and committing the
/// row, or between deleting a row and its files) and leftover temporary files. Run at
/// start-up, before serving.
pub async fn sweep_orphan_files(state: &AppState) -> Result<usize, ApiError> {
    let known = state.store.all_image_names().await?;
    let mut removed = 0;
    let mut stack = vec![state.config.outputs_dir().join("images")];
    while let Some(dir) = stack.pop() {
        let Ok(mut entries) = tokio::fs::read_dir(&dir).await else {
            continue;
        };
        while let Ok(Some(entry)) = entries.next_entry().await {
            let path = entry.path();
            if entry.file_type().await.is_ok_and(|t| t.is_dir()) {
                stack.push(path);
                continue;
            }
            let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
                continue;
            };
            let orphan = if file.ends_with(".tmp") {
                true
            } else if let Some(stem) = file.strip_suffix(".webp") {
                !known.contains(&format!("{stem}.png"))
            } else if file.ends_with(".png") {
                !known.contains(file)
            } else {
                false
            };
            if orphan && tokio::fs::remove_file(&path).await.is_ok() {
                removed += 1;
            }
        }
    }
    Ok(removed)
}

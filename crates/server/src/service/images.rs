//! Image use cases. Files live under `<outputs_dir>/images/[<subfolder>/]<name>` with WebP
//! thumbnails under `images/thumbnails/`. Deleting removes the record first and then the
//! files: a crash in between leaves only a harmless stray file, never a record without its file.

use crate::http::error::ApiError;
use crate::state::AppState;
use std::path::PathBuf;

/// Where an image's full file and thumbnail live.
pub fn image_paths(state: &AppState, name: &str, subfolder: &str) -> (PathBuf, PathBuf) {
    let images = state.config.outputs_dir().join("images");
    let stem = name.strip_suffix(".png").unwrap_or(name);
    let mut full = images.clone();
    let mut thumb = images.join("thumbnails");
    if !subfolder.is_empty() {
        full.push(subfolder);
        thumb.push(subfolder);
    }
    (full.join(name), thumb.join(format!("{stem}.webp")))
}

/// What a batch deletion did.
#[derive(Debug, Default)]
pub struct Deleted {
    pub deleted: Vec<String>,
    /// `(name, board id or "none")` of each deleted image, for `affected_boards`.
    pub boards: Vec<String>,
    pub failed: Vec<String>,
}

/// Deletes images by name (records first, then files). Unknown names are skipped.
pub async fn delete_many(state: &AppState, names: &[String]) -> Result<Deleted, ApiError> {
    let mut out = Deleted::default();
    for name in names {
        match state.store.delete_image(name).await {
            Ok(Some(record)) => {
                let (full, thumb) = image_paths(state, &record.image_name, &record.image_subfolder);
                for path in [full, thumb] {
                    if let Err(err) = tokio::fs::remove_file(&path).await {
                        if err.kind() != std::io::ErrorKind::NotFound {
                            tracing::warn!(path = %path.display(), error = %err, "could not remove an image file");
                        }
                    }
                }
                out.boards
                    .push(record.board_id.unwrap_or_else(|| "none".to_owned()));
                out.deleted.push(record.image_name);
            }
            Ok(None) => {}
            Err(err) => {
                tracing::error!(image = %name, error = %err, "could not delete an image");
                out.failed.push(name.clone());
            }
        }
    }
    Ok(out)
}

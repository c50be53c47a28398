//! Bulk downloads (boards-images.md §7.3): a zip of images, built in the background, served
//! once to the user who asked for it (or an admin), then deleted. Zips live under
//! `<outputs_dir>/bulk_downloads/`; the registry is in memory, so zips left from a previous
//! run are removed at start-up.

use crate::events::{BulkStage, Event};
use crate::http::error::ApiError;
use crate::service::images::{read_full, readable};
use crate::state::AppState;
use atelier_domain::{Identity, UserId};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// One download: who may fetch it and whether it is ready.
#[derive(Debug, Clone)]
pub struct BulkDownload {
    pub owner: UserId,
    pub path: PathBuf,
    pub ready: bool,
}

pub type Registry = Arc<Mutex<HashMap<String, BulkDownload>>>;

pub fn downloads_dir(state: &AppState) -> PathBuf {
    state.config.outputs_dir().join("bulk_downloads")
}

/// Removes zips from an earlier run (nobody can fetch them any more).
pub async fn clear_stale(state: &AppState) {
    let _ = tokio::fs::remove_dir_all(downloads_dir(state)).await;
}

/// Keeps letters, digits, `-` and `_` of a board name for the zip's file name.
fn sanitise(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}

/// `POST /images/download`: checks access now, builds the zip in the background, and returns
/// the item's file name.
pub async fn start(
    state: &AppState,
    me: &Identity,
    image_names: Option<Vec<String>>,
    board_id: Option<String>,
) -> Result<String, ApiError> {
    let names = image_names.unwrap_or_default();
    if names.is_empty() && board_id.is_none() {
        return Err(ApiError::bad_request("No images or board id specified."));
    }
    let mut prefix = String::new();
    let mut members = Vec::new();
    if let Some(board_id) = &board_id {
        if board_id == "none" {
            if !me.is_admin() {
                return Err(ApiError::not_found("Board not found"));
            }
            prefix = "Uncategorized_".to_owned();
            members = state
                .store
                .board_image_names(None, None, None, None)
                .await?;
        } else {
            let board = if me.is_admin() {
                state.store.get_board(board_id).await?
            } else {
                Some(crate::service::boards::readable(state, me, board_id).await?)
            };
            if let Some(board) = board {
                prefix = format!("{}_", sanitise(&board.board_name));
                members = state
                    .store
                    .board_image_names(Some(board_id), None, None, None)
                    .await?;
            }
        }
    }
    for name in &names {
        readable(state, me, name).await?;
    }
    members.extend(names);
    let item_id = format!("{prefix}{}", uuid::Uuid::new_v4());
    let item_name = format!("{item_id}.zip");
    let path = downloads_dir(state).join(&item_name);
    if let Ok(mut registry) = state.downloads.lock() {
        registry.insert(
            item_name.clone(),
            BulkDownload {
                owner: me.user_id.clone(),
                path: path.clone(),
                ready: false,
            },
        );
    }
    let task_state = state.clone();
    let task_name = item_name.clone();
    let owner = me.user_id.to_string();
    let event = move |stage: BulkStage, error: Option<String>| Event::BulkDownload {
        stage,
        // The reference uses one id for the download and its item.
        bulk_download_id: item_id.clone(),
        item_id: item_id.clone(),
        item_name: task_name.clone(),
        user_id: owner.clone(),
        error,
    };
    state.events.publish(event(BulkStage::Started, None));
    let task_name = item_name.clone();
    tokio::spawn(async move {
        match build(&task_state, &members, &path).await {
            Ok(()) => {
                if let Ok(mut registry) = task_state.downloads.lock() {
                    if let Some(entry) = registry.get_mut(&task_name) {
                        entry.ready = true;
                    }
                }
                task_state.events.publish(event(BulkStage::Complete, None));
            }
            Err(err) => {
                tracing::error!(item = %task_name, error = %err.detail(), "bulk download failed");
                if let Ok(mut registry) = task_state.downloads.lock() {
                    registry.remove(&task_name);
                }
                task_state
                    .events
                    .publish(event(BulkStage::Error, Some(err.detail())));
            }
        }
    });
    Ok(item_name)
}

async fn build(state: &AppState, names: &[String], path: &std::path::Path) -> Result<(), ApiError> {
    let mut entries = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for name in names {
        if !seen.insert(name.clone()) {
            continue;
        }
        let Some(record) = state.store.get_image(name).await? else {
            continue;
        };
        let bytes = read_full(state, &record).await?;
        entries.push((
            format!("{}/{}", record.image_category.as_str(), record.image_name),
            bytes,
        ));
    }
    let zip = tokio::task::spawn_blocking(move || {
        let mut writer = crate::zip::ZipWriter::new(Vec::new());
        for (name, bytes) in &entries {
            writer.add(name, bytes)?;
        }
        writer.finish()
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(ApiError::internal)?;
    }
    let tmp = path.with_extension("zip.tmp");
    tokio::fs::write(&tmp, zip)
        .await
        .map_err(ApiError::internal)?;
    tokio::fs::rename(&tmp, path)
        .await
        .map_err(ApiError::internal)?;
    Ok(())
}

/// `GET /images/download/{name}`: the zip's bytes, once; the file is deleted after.
pub async fn take(state: &AppState, me: &Identity, item_name: &str) -> Result<Vec<u8>, ApiError> {
    let entry = state
        .downloads
        .lock()
        .ok()
        .and_then(|r| r.get(item_name).cloned())
        .filter(|e| e.ready)
        .ok_or_else(|| ApiError::not_found("Not Found"))?;
    if !me.owns_or_admin(&entry.owner) {
        return Err(ApiError::forbidden(
            "Not authorized to access this download",
        ));
    }
    let bytes = tokio::fs::read(&entry.path)
        .await
        .map_err(|_| ApiError::not_found("Not Found"))?;
    if let Ok(mut registry) = state.downloads.lock() {
        registry.remove(item_name);
    }
    let _ = tokio::fs::remove_file(&entry.path).await;
    Ok(bytes)
}

//! `PUT /api/v2/models/convert/{key}` (models.md §2.2): a single-file checkpoint becomes a
//! diffusers folder under a new key.
//!
//! One conversion runs at a time server-wide (a second gets 409 at once rather than a request
//! that waits minutes), and it claims the model's key for its whole run, so a delete or update
//! of the same model is refused instead of pulling the file away mid-way. The new key is claimed
//! before its record exists, so no other request can act on it before the swap is done.
//!
//! Steps: write the diffusers folder in `<models>/.convert_tmp/` (the orphan scan and the start-up
//! scan skip it), register it, moved into `<models>/<new key>/`, with the checkpoint's name,
//! description, hash and source; move the cover image to the new key; remove the old record and,
//! when they are inside the models directory, its files.

use super::{
    cover_path, get, models_dir, record::Record, register, remove_files, resolve, ModelsState,
    Placement,
};
use crate::http::error::ApiError;
use crate::service::AdminProof;
use crate::state::AppState;
use atelier_engine::pipeline::CheckpointConfig;
use serde_json::{json, Map, Value};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// The scratch folder conversions write into (one of the reserved folders of the models dir).
pub const SCRATCH_DIR: &str = ".convert_tmp";

/// The bases whose checkpoints InvokeAI converts.
const CONVERTIBLE_BASES: &[&str] = &["sd-1", "sd-2", "sdxl", "sdxl-refiner"];

/// The server-wide "a conversion is running" flag.
#[derive(Debug, Default)]
pub struct ConversionFlag(AtomicBool);

/// Holds the conversion flag; clears it when dropped.
pub struct ConversionGuard<'a>(&'a ConversionFlag);

impl Drop for ConversionGuard<'_> {
    fn drop(&mut self) {
        self.0 .0.store(false, Ordering::Release);
    }
}

impl ConversionFlag {
    /// Starts a conversion, or 409 if one is running.
    pub fn start(&self) -> Result<ConversionGuard<'_>, ApiError> {
        self.0
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .map_err(|_| {
                ApiError::Conflict(
                    "Another model conversion is already in progress. Wait for it to finish and try again."
                        .to_owned(),
                )
            })?;
        Ok(ConversionGuard(self))
    }
}

/// What the checkpoint does not record, from its record: as generation loads checkpoints
/// ([`crate::service::generation::checkpoint_config`]), so the converted model runs the same.
fn checkpoint_config(key: &str, record: &Record) -> Result<CheckpointConfig, ApiError> {
    let base = record.get("base").and_then(Value::as_str).unwrap_or("");
    if !CONVERTIBLE_BASES.contains(&base) {
        let reason = format!("converting single-file {base} checkpoints is not supported yet");
        return Err(ApiError::failed(&format!(
            "Unable to convert model {key}: {reason}"
        )));
    }
    Ok(crate::service::generation::checkpoint_config(
        &Value::Object(record.clone()),
    ))
}

fn text<'a>(record: &'a Record, field: &str) -> &'a str {
    record
        .get(field)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Whether `record` is a main checkpoint model of a base InvokeAI converts.
fn is_convertible(record: &Record) -> bool {
    text(record, "type") == "main"
        && text(record, "format") == "checkpoint"
        && CONVERTIBLE_BASES.contains(&text(record, "base"))
}

fn remove_scratch(dir: &Path) {
    if let Err(err) = std::fs::remove_dir_all(dir) {
        if err.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), error = %err, "cannot remove a conversion scratch folder");
        }
    }
}

/// Converts checkpoint `key` to diffusers; returns the new record.
pub async fn convert(state: &AppState, _admin: &AdminProof, key: &str) -> Result<Record, ApiError> {
    let models_state: &ModelsState = &state.models;
    let _running = models_state.conversion.start()?;
    let _claim = models_state.claim(key)?;
    let current = match get(state, key).await {
        Ok(record) => record,
        Err(ApiError::NotFound(message)) => return Err(ApiError::FailedDependency(message)),
        Err(other) => return Err(other),
    };
    if !is_convertible(&current) {
        return Err(ApiError::bad_request(format!(
            "The model with key {key} is not a main SD 1/2/XL checkpoint model."
        )));
    }
    let config = checkpoint_config(key, &current)?;
    let models = models_dir(state);
    let old_path = text(&current, "path").to_owned();
    let file = resolve(&models, &old_path);
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| key.to_owned());
    let scratch = models
        .join(SCRATCH_DIR)
        .join(uuid::Uuid::new_v4().to_string());
    let out = scratch.join(&stem);

    // Claimed before its record exists, so nothing can act on the new model mid-swap.
    let new_key = uuid::Uuid::new_v4().to_string();
    let _new_claim = models_state.claim(&new_key)?;

    let (from, to, dir) = (file.clone(), out.clone(), scratch.clone());
    let written = tokio::task::spawn_blocking(move || {
        let result = atelier_engine::convert::checkpoint_to_diffusers(&from, &config, &to);
        if result.is_err() {
            remove_scratch(&dir);
        }
        result
    })
    .await
    .map_err(ApiError::internal)?;
    if let Err(err) = written {
        tracing::error!(key, error = %err, "model conversion failed");
        return Err(ApiError::failed(&format!(
            "Unable to convert model {key}: {err}"
        )));
    }

    let mut changes = Map::new();
    changes.insert("key".into(), json!(new_key));
    for field in ["name", "description", "hash", "source"] {
        if let Some(v) = current.get(field) {
            changes.insert(field.to_owned(), v.clone());
        }
    }
    let registered = register(
        state,
        &out,
        Placement::Move,
        &changes,
        text(&current, "source"),
        text(&current, "source_type"),
    )
    .await;
    let dir = scratch.clone();
    let _ = tokio::task::spawn_blocking(move || remove_scratch(&dir)).await;
    let record = registered.map_err(|failure| {
        tracing::error!(key, error = %failure.message, "the converted model could not be installed");
        ApiError::Conflict(failure.message)
    })?;

    // The cover image follows the model; then the checkpoint goes.
    let (old_cover, new_cover) = (cover_path(state, key), cover_path(state, &new_key));
    if !state.store.delete_model(key).await? {
        tracing::warn!(key, "the converted checkpoint's record was already gone");
    }
    let removed = tokio::task::spawn_blocking(move || {
        if old_cover.is_file() {
            if let Err(err) = std::fs::rename(&old_cover, &new_cover) {
                tracing::warn!(error = %err, "cannot move the cover image to the converted model");
                let _ = std::fs::remove_file(&old_cover);
            }
        }
        remove_files(&models, &old_path)
    })
    .await
    .map_err(ApiError::internal)?;
    if let Err(err) = removed {
        tracing::warn!(key, error = %err, "checkpoint unregistered but its file could not be removed");
    }
    tracing::info!(key, new_key = %new_key, "converted a checkpoint to diffusers");
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_conversion_at_a_time() {
        let flag = ConversionFlag::default();
        let first = flag.start().expect("first");
        let second = flag.start().err().expect("second refused");
        assert_eq!(second.status(), axum::http::StatusCode::CONFLICT);
        assert_eq!(
            second.detail(),
            "Another model conversion is already in progress. Wait for it to finish and try again."
        );
        drop(first);
        assert!(flag.start().is_ok());
    }

    #[test]
    fn only_main_checkpoints_of_the_sd_bases_convert() {
        let record = |t: &str, f: &str, b: &str| -> Record {
            json!({"type": t, "format": f, "base": b})
                .as_object()
                .cloned()
                .unwrap_or_default()
        };
        assert!(is_convertible(&record("main", "checkpoint", "sd-1")));
        assert!(is_convertible(&record(
            "main",
            "checkpoint",
            "sdxl-refiner"
        )));
        assert!(!is_convertible(&record("main", "diffusers", "sd-1")));
        assert!(!is_convertible(&record("lora", "lycoris", "sd-1")));
        assert!(!is_convertible(&record("main", "checkpoint", "flux")));
        let refiner =
            checkpoint_config("k", &record("main", "checkpoint", "sdxl-refiner")).expect("refiner");
        assert_eq!(
            refiner.family,
            atelier_engine::ldm::CheckpointFamily::SdxlRefiner
        );
        let other = checkpoint_config("k", &record("main", "checkpoint", "flux")).err();
        assert!(other.is_some_and(|e| e.detail().contains("not supported yet")));
        let sdxl = checkpoint_config("k", &record("main", "checkpoint", "sdxl")).expect("sdxl");
        assert_eq!(sdxl.family, atelier_engine::ldm::CheckpointFamily::Sdxl);
        let mut v = record("main", "checkpoint", "sd-2");
        v.insert("prediction_type".into(), json!("v_prediction"));
        let config = checkpoint_config("k", &v).expect("sd-2");
        assert_eq!(
            config.scheduler.prediction_type,
            atelier_engine::schedulers::PredictionType::VPrediction
        );
    }
}

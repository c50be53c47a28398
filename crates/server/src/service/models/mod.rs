//! The model manager (models.md): model records, identification, installation and start-up
//! scanning. No weights are loaded here; the engine does that from the records.
//!
//! Invariants kept here:
//! - every stored record is normalised and valid for its kind (`record::normalize`), and
//!   rows that stop validating are skipped with a warning, never fatal;
//! - a record's `path` is relative to the models directory when the model lives inside it, and
//!   only such files are ever deleted;
//! - update, reidentify, delete, image changes and conversion claim the model key, so two
//!   concurrent operations on one model never interleave (the second gets 409); one conversion
//!   runs at a time.

pub mod convert;
pub mod download;
pub mod guard;
pub mod hash;
pub mod install;
pub mod probe;
pub mod record;

use crate::http::error::ApiError;
use crate::service::AdminProof;
use crate::state::AppState;
use atelier_store::{ModelFilter, ModelOrder, ModelRow};
use record::Record;
use serde_json::{json, Map, Value};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Folders of the models directory that never hold user models.
const RESERVED_DIRS: &[&str] = &[
    "core",
    ".convert_cache",
    ".download_cache",
    ".convert_tmp",
    "model_images",
];
const README: &str = "This folder is managed by Atelier (InvokeAI-compatible model manager).\n\
Do not add, move or delete files here by hand: install and remove models through the web UI,\n\
the API or `atelier model add|del`, so the database stays in step with the files.\n";

/// The model manager's in-memory state: install jobs and the keys being worked on.
#[derive(Debug, Default)]
pub struct ModelsState {
    pub jobs: install::InstallJobs,
    busy: Mutex<HashSet<String>>,
    /// Set while a conversion runs (models.md §2.2: one at a time, server-wide).
    pub conversion: convert::ConversionFlag,
}

/// A claim on one model key, released when dropped.
pub struct KeyClaim<'a> {
    owner: &'a ModelsState,
    key: String,
}

impl Drop for KeyClaim<'_> {
    fn drop(&mut self) {
        if let Ok(mut busy) = self.owner.busy.lock() {
            busy.remove(&self.key);
        }
    }
}

impl ModelsState {
    /// Claims `key` for one operation, or 409 if another holds it.
    pub fn claim(&self, key: &str) -> Result<KeyClaim<'_>, ApiError> {
        let busy_table = || {
            ApiError::Conflict(
                "Another model operation is already in progress. Wait for it to finish and try again."
                    .to_owned(),
            )
        };
        let mut busy = self.busy.try_lock().map_err(|_| busy_table())?;
        if !busy.insert(key.to_owned()) {
            return Err(ApiError::Conflict(format!(
                "Another operation on model {key} is already in progress. Wait for it to finish and try again."
            )));
        }
        Ok(KeyClaim {
            owner: self,
            key: key.to_owned(),
        })
    }
}

/// Why an install or identification failed: an exception-style class name and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub class: &'static str,
    pub message: String,
}

impl Failure {
    fn new(class: &'static str, message: impl Into<String>) -> Self {
        Self {
            class,
            message: message.into(),
        }
    }
}

impl From<probe::ProbeError> for Failure {
    fn from(err: probe::ProbeError) -> Self {
        Self::new(err.class_name(), err.to_string())
    }
}

pub fn models_dir(state: &AppState) -> PathBuf {
    state.config.models_dir()
}

/// Where a record's `path` points on disk.
pub fn resolve(models: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        models.join(p)
    }
}

fn cover_path(state: &AppState, key: &str) -> PathBuf {
    models_dir(state)
        .join("model_images")
        .join(format!("{key}.png"))
}

/// The record as clients see it: every field, plus `cover_image` computed now.
pub fn present(state: &AppState, mut record: Record) -> Value {
    let key = record
        .get("key")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let cover = cover_path(state, &key)
        .is_file()
        .then(|| format!("api/v2/models/i/{key}/image?{}", uuid::Uuid::new_v4()));
    // Keep the documented field order: cover_image follows the source fields.
    let mut out = Map::new();
    let mut placed = false;
    for (field, value) in std::mem::take(&mut record) {
        let is_type = field == "type";
        if is_type && !placed {
            out.insert("cover_image".to_owned(), json!(cover));
            placed = true;
        }
        out.insert(field, value);
    }
    if !placed {
        out.insert("cover_image".to_owned(), json!(cover));
    }
    Value::Object(out)
}

fn parse_row(row: &ModelRow) -> Option<Record> {
    let parsed = serde_json::from_str::<Value>(&row.config)
        .map_err(|e| e.to_string())
        .and_then(|v| match v {
            Value::Object(m) => record::normalize(&m),
            _ => Err("not an object".to_owned()),
        });
    match parsed {
        Ok(r) => Some(r),
        Err(err) => {
            tracing::warn!(key = %row.key, error = %err, "skipping a model record that no longer validates");
            None
        }
    }
}

fn not_found() -> ApiError {
    ApiError::not_found("model not found")
}

/// What `GET /api/v2/models/` asks for.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub bases: Vec<String>,
    pub model_type: Option<String>,
    pub name: Option<String>,
    pub format: Option<String>,
    pub order: ModelOrder,
    pub descending: bool,
}

/// Records matching the query; several bases give one sorted block per base, in the order
/// asked (models.md §2.1).
pub async fn list(state: &AppState, query: &ListQuery) -> Result<Vec<Record>, ApiError> {
    let bases: Vec<Option<String>> = if query.bases.is_empty() {
        vec![None]
    } else {
        query.bases.iter().cloned().map(Some).collect()
    };
    let mut out = Vec::new();
    for base in bases {
        let filter = ModelFilter {
            base,
            model_type: query.model_type.clone(),
            name: query.name.clone(),
            format: query.format.clone(),
            hash: None,
        };
        let rows = state
            .store
            .list_models(&filter, query.order, query.descending)
            .await?;
        out.extend(rows.iter().filter_map(parse_row));
    }
    Ok(out)
}

async fn all_records(state: &AppState) -> Result<Vec<Record>, ApiError> {
    list(state, &ListQuery::default()).await
}

/// Records whose file or folder is gone (external models excluded).
pub async fn missing(state: &AppState) -> Result<Vec<Record>, ApiError> {
    let models = models_dir(state);
    Ok(all_records(state)
        .await?
        .into_iter()
        .filter(|r| {
            r.get("source_type").and_then(Value::as_str) != Some("external")
                && r.get("format").and_then(Value::as_str) != Some("external_api")
        })
        .filter(|r| {
            let path = r.get("path").and_then(Value::as_str).unwrap_or_default();
            !resolve(&models, path).exists()
        })
        .collect())
}

pub async fn get(state: &AppState, key: &str) -> Result<Record, ApiError> {
    let row = state.store.get_model(key).await?.ok_or_else(not_found)?;
    parse_row(&row).ok_or_else(not_found)
}

pub async fn get_by_attrs(
    state: &AppState,
    name: &str,
    model_type: &str,
    base: &str,
) -> Result<Record, ApiError> {
    let filter = ModelFilter {
        base: Some(base.to_owned()),
        model_type: Some(model_type.to_owned()),
        name: Some(name.to_owned()),
        ..Default::default()
    };
    let rows = state
        .store
        .list_models(&filter, ModelOrder::CreatedAt, false)
        .await?;
    rows.iter()
        .find_map(parse_row)
        .ok_or_else(|| ApiError::not_found("No model found with these attributes"))
}

pub async fn get_by_hash(state: &AppState, hash: &str) -> Result<Record, ApiError> {
    let filter = ModelFilter {
        hash: Some(hash.to_owned()),
        ..Default::default()
    };
    let rows = state
        .store
        .list_models(&filter, ModelOrder::CreatedAt, false)
        .await?;
    rows.iter()
        .find_map(parse_row)
        .ok_or_else(|| ApiError::not_found("No model found with this hash"))
}

/// `PATCH /i/{key}`: merges `changes` and re-validates (409 with the reason on failure).
pub async fn update(
    state: &AppState,
    _admin: &AdminProof,
    key: &str,
    changes: &Map<String, Value>,
) -> Result<Record, ApiError> {
    let _claim = state.models.claim(key)?;
    let current = get(state, key).await?;
    let updated = record::apply_changes(&current, changes).map_err(ApiError::Conflict)?;
    let text = Value::Object(updated.clone()).to_string();
    if !state.store.update_model(key, &text).await? {
        return Err(not_found());
    }
    Ok(updated)
}

/// Removes a model's files when they live inside the models directory: the key folder, or
/// the single file and then its folder if that is left empty.
fn remove_files(models: &Path, path: &str) -> std::io::Result<()> {
    let target = resolve(models, path);
    let (Ok(models), Ok(target)) = (models.canonicalize(), target.canonicalize()) else {
        return Ok(()); // Gone already, or no models dir: nothing of ours to remove.
    };
    if !target.starts_with(&models) || target == models {
        return Ok(());
    }
    if target.is_dir() {
        std::fs::remove_dir_all(&target)?;
    } else {
        std::fs::remove_file(&target)?;
        if let Some(parent) = target.parent().filter(|p| *p != models) {
            // Only if empty; a non-empty folder holds something else.
            let _ = std::fs::remove_dir(parent);
        }
    }
    Ok(())
}

/// `DELETE /i/{key}`: unregisters the model, deleting its files if they are ours.
pub async fn delete(state: &AppState, _admin: &AdminProof, key: &str) -> Result<(), ApiError> {
    let _claim = state.models.claim(key)?;
    let current = get(state, key).await?;
    let path = current
        .get("path")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if !state.store.delete_model(key).await? {
        return Err(not_found());
    }
    let models = models_dir(state);
    let cover = cover_path(state, key);
    let removed = tokio::task::spawn_blocking(move || {
        let _ = std::fs::remove_file(cover);
        remove_files(&models, &path)
    })
    .await
    .map_err(ApiError::internal)?;
    if let Err(err) = removed {
        tracing::warn!(key, error = %err, "model unregistered but its files could not all be removed");
    }
    Ok(())
}

/// The message a per-key bulk failure reports.
fn failure_text(err: &ApiError) -> String {
    err.detail()
}

/// `POST /i/bulk_delete`.
pub async fn bulk_delete(
    state: &AppState,
    admin: &AdminProof,
    keys: &[String],
) -> (Vec<String>, Vec<(String, String)>) {
    let mut deleted = Vec::new();
    let mut failed = Vec::new();
    for key in keys {
        match delete(state, admin, key).await {
            Ok(()) => deleted.push(key.clone()),
            Err(err) => failed.push((key.clone(), failure_text(&err))),
        }
    }
    (deleted, failed)
}

/// Probes, hashes and sizes `path` off the async threads.
async fn identify(state: &AppState, path: PathBuf) -> Result<(Record, String, u64), Failure> {
    let algorithm = state
        .config
        .get("hashing_algorithm")
        .and_then(Value::as_str)
        .unwrap_or("blake3_single")
        .to_owned();
    tokio::task::spawn_blocking(move || {
        let probed = probe::probe(&path)?;
        let io = |e: std::io::Error| Failure::new("OSError", format!("{}: {e}", path.display()));
        let hash = hash::hash_model(&path, &algorithm).map_err(io)?;
        let size = hash::size_of(&path).map_err(io)?;
        Ok((probed, hash, size))
    })
    .await
    .map_err(|e| Failure::new("RuntimeError", e.to_string()))?
}

/// `POST /i/{key}/reidentify`: re-probes the files, keeping identity and user-set fields.
pub async fn reidentify(
    state: &AppState,
    _admin: &AdminProof,
    key: &str,
) -> Result<Record, ApiError> {
    let _claim = state.models.claim(key)?;
    let current = get(state, key).await?;
    let path = current
        .get("path")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let (probed, hash, size) = identify(state, resolve(&models_dir(state), &path))
        .await
        .map_err(|_| ApiError::bad_request("Unable to identify model format"))?;
    let mut fresh = current.clone();
    // Drop the old kind's fields; keep identity and what the user set.
    const KEEP: &[&str] = &[
        "key",
        "path",
        "name",
        "description",
        "trigger_phrases",
        "source",
        "source_type",
        "source_api_response",
        "source_url",
    ];
    fresh.retain(|k, _| KEEP.contains(&k.as_str()));
    for (k, v) in probed {
        if !(k == "trigger_phrases" && fresh.contains_key(&k)) {
            fresh.insert(k, v);
        }
    }
    fresh.insert("hash".to_owned(), json!(hash));
    fresh.insert("file_size".to_owned(), json!(size));
    let fresh = record::normalize(&fresh).map_err(ApiError::Conflict)?;
    state
        .store
        .update_model(key, &Value::Object(fresh.clone()).to_string())
        .await?;
    Ok(fresh)
}

/// `POST /i/bulk_reidentify`.
pub async fn bulk_reidentify(
    state: &AppState,
    admin: &AdminProof,
    keys: &[String],
) -> (Vec<String>, Vec<(String, String)>) {
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for key in keys {
        match reidentify(state, admin, key).await {
            Ok(_) => ok.push(key.clone()),
            Err(err) => failed.push((key.clone(), failure_text(&err))),
        }
    }
    (ok, failed)
}

/// `PATCH /i/{key}/image`: stores the cover image as a PNG of at most 256×256.
pub async fn set_image(
    state: &AppState,
    _admin: &AdminProof,
    key: &str,
    bytes: Vec<u8>,
) -> Result<(), ApiError> {
    let _claim = state.models.claim(key)?;
    get(state, key).await?;
    let dest = cover_path(state, key);
    tokio::task::spawn_blocking(move || {
        let image = crate::media::decode(&bytes)
            .map_err(|_| ApiError::UnsupportedMediaType("Failed to read image".to_owned()))?;
        let image = image.thumbnail(256, 256);
        let png = crate::media::encode_png(&image, &crate::media::PngText::default(), 6)
            .map_err(ApiError::internal)?;
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(ApiError::internal)?;
        }
        std::fs::write(&dest, png).map_err(ApiError::internal)
    })
    .await
    .map_err(ApiError::internal)?
}

/// `DELETE /i/{key}/image`.
pub async fn delete_image(
    state: &AppState,
    _admin: &AdminProof,
    key: &str,
) -> Result<(), ApiError> {
    let _claim = state.models.claim(key)?;
    get(state, key).await?;
    match std::fs::remove_file(cover_path(state, key)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ApiError::not_found("Not Found")),
        Err(e) => Err(ApiError::internal(e)),
    }
}

/// `GET /i/{key}/image` (public): the stored PNG.
pub async fn image_bytes(state: &AppState, key: &str) -> Result<Vec<u8>, ApiError> {
    if key.contains(['/', '\\']) || key.starts_with('.') {
        return Err(ApiError::not_found("Not Found"));
    }
    tokio::fs::read(cover_path(state, key))
        .await
        .map_err(|_| ApiError::not_found("Not Found"))
}

/// Whether `path` looks like a model: a weights file, or a folder with a diffusers config.
fn is_model_folder(dir: &Path) -> bool {
    [
        "model_index.json",
        "config.json",
        "pytorch_lora_weights.safetensors",
    ]
    .iter()
    .any(|f| dir.join(f).is_file())
}

fn is_weights_file(path: &Path) -> bool {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|e| probe::WEIGHT_EXTENSIONS.contains(&e.as_str()))
}

/// Every model file or folder below `root` (not following symlinked folders), skipping the
/// reserved folders of `models`.
pub fn find_models(root: &Path, models: &Path) -> std::io::Result<Vec<PathBuf>> {
    let reserved: Vec<PathBuf> = RESERVED_DIRS.iter().map(|d| models.join(d)).collect();
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)?.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                if reserved.contains(&path) || name.starts_with("tmpinstall_") {
                    continue;
                }
                if is_model_folder(&path) {
                    found.push(path);
                } else {
                    stack.push(path);
                }
            } else if is_weights_file(&path) {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// The absolute, canonical paths every record points at.
async fn installed_paths(state: &AppState) -> Result<HashSet<PathBuf>, ApiError> {
    let models = models_dir(state);
    Ok(all_records(state)
        .await?
        .iter()
        .filter_map(|r| r.get("path").and_then(Value::as_str))
        .filter_map(|p| resolve(&models, p).canonicalize().ok())
        .collect())
}

/// `GET /scan_folder`: model files and folders below `scan_path`, each flagged installed or
/// not. Missing and non-folder paths get one message so the route is no existence oracle.
pub async fn scan_folder(
    state: &AppState,
    _admin: &AdminProof,
    scan_path: &str,
) -> Result<Vec<(String, bool)>, ApiError> {
    let root = PathBuf::from(scan_path);
    if !root.is_dir() {
        return Err(ApiError::bad_request(format!(
            "The search path '{scan_path}' could not be scanned"
        )));
    }
    let installed = installed_paths(state).await?;
    let models = models_dir(state);
    let found = tokio::task::spawn_blocking(move || find_models(&root, &models))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| {
            tracing::error!(error = %e, "scan failed");
            ApiError::failed(&format!("An error occurred while scanning '{scan_path}'"))
        })?;
    Ok(found
        .into_iter()
        .map(|p| {
            let is_installed = p.canonicalize().is_ok_and(|c| installed.contains(&c));
            (p.display().to_string(), is_installed)
        })
        .collect())
}

/// Where an install puts the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Register the file or folder where it is.
    InPlace,
    /// Move it into `<models>/<key>/`.
    Move,
}

/// The record `path` for a model at `absolute`: relative when inside the models directory.
fn record_path(models: &Path, absolute: &Path) -> String {
    let models = models
        .canonicalize()
        .unwrap_or_else(|_| models.to_path_buf());
    match absolute.strip_prefix(&models) {
        Ok(rel) if !rel.as_os_str().is_empty() => rel.to_string_lossy().into_owned(),
        _ => absolute.to_string_lossy().into_owned(),
    }
}

fn move_path(from: &Path, to: &Path) -> std::io::Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if std::fs::rename(from, to).is_ok() {
        return Ok(());
    }
    // Across file systems: copy, then remove the original.
    copy_recursive(from, to)?;
    if from.is_dir() {
        std::fs::remove_dir_all(from)
    } else {
        std::fs::remove_file(from)
    }
}

fn copy_recursive(from: &Path, to: &Path) -> std::io::Result<()> {
    if from.is_dir() {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_recursive(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(())
    } else {
        std::fs::copy(from, to).map(|_| ())
    }
}

/// Install overrides that replace probed values when non-empty (models.md §1.6).
const OVERRIDES: &[&str] = &["key", "name", "hash", "description", "file_size", "source"];
/// Overrides that pin the identification.
const PINS: &[&str] = &["type", "format", "base", "variant", "prediction_type"];

/// Identifies the model at `path`, places it and adds its record. Shared by install jobs, the
/// start-up scan and `atelier model add`.
pub async fn register(
    state: &AppState,
    path: &Path,
    placement: Placement,
    changes: &Map<String, Value>,
    source: &str,
    source_type: &str,
) -> Result<Record, Failure> {
    let (probed, hash, size) = identify(state, path.to_path_buf()).await?;
    let models = models_dir(state);
    let key = changes
        .get("key")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let name = path
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| key.clone());
    let name = if path.is_dir() {
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or(name)
    } else {
        name
    };
    let mut rec = Record::new();
    rec.insert("key".into(), json!(key));
    rec.insert("hash".into(), json!(hash));
    rec.insert("file_size".into(), json!(size));
    rec.insert("name".into(), json!(name));
    rec.insert("description".into(), Value::Null);
    rec.insert("source".into(), json!(source));
    rec.insert("source_type".into(), json!(source_type));
    rec.extend(probed);
    for field in OVERRIDES.iter().chain(PINS) {
        match changes.get(*field) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.is_empty() => {}
            Some(v) => {
                rec.insert((*field).to_owned(), v.clone());
            }
        }
    }
    for field in [
        "trigger_phrases",
        "default_settings",
        "source_url",
        "source_api_response",
        "cpu_only",
        "config_path",
    ] {
        if let Some(v) = changes.get(field).filter(|v| !v.is_null()) {
            rec.insert(field.to_owned(), v.clone());
        }
    }
    let (placed, moved_from) = match placement {
        Placement::InPlace => {
            let absolute = path
                .canonicalize()
                .map_err(|e| Failure::new("OSError", e.to_string()))?;
            (record_path(&models, &absolute), None)
        }
        Placement::Move => {
            let file_name = path
                .file_name()
                .map(|n| n.to_os_string())
                .unwrap_or_default();
            let dest = if path.is_dir() {
                models.join(&key)
            } else {
                models.join(&key).join(&file_name)
            };
            let (from, to) = (path.to_path_buf(), dest.clone());
            tokio::task::spawn_blocking(move || move_path(&from, &to))
                .await
                .map_err(|e| Failure::new("RuntimeError", e.to_string()))?
                .map_err(|e| {
                    Failure::new("OSError", format!("cannot move the model into place: {e}"))
                })?;
            let rel = if path.is_dir() || dest.is_dir() {
                key.clone()
            } else {
                format!("{key}/{}", file_name.to_string_lossy())
            };
            (rel, Some(dest))
        }
    };
    rec.insert("path".into(), json!(placed));
    let outcome = match record::normalize(&rec) {
        Ok(rec) => state
            .store
            .insert_model(&key, &Value::Object(rec.clone()).to_string())
            .await
            .map(|()| rec)
            .map_err(|e| match e {
                atelier_store::StoreError::ModelPathTaken(_)
                | atelier_store::StoreError::ModelKeyTaken(_) => {
                    Failure::new("DuplicateModelException", e.to_string())
                }
                other => Failure::new("DatabaseError", other.to_string()),
            }),
        Err(msg) => Err(Failure::new("InvalidModelConfigException", msg)),
    };
    if outcome.is_err() {
        // Put a moved model back where it came from.
        if let Some(dest) = moved_from {
            let back = path.to_path_buf();
            let _ = tokio::task::spawn_blocking(move || {
                let r = move_path(&dest, &back);
                if let Some(parent) = dest.parent() {
                    let _ = std::fs::remove_dir(parent);
                }
                r
            })
            .await;
        }
    }
    outcome
}

/// Start-up (models.md §7): stale temp folders, the optional scan, missing files, README.
pub async fn start_up(state: &AppState) {
    let models = models_dir(state);
    if let Err(err) = std::fs::create_dir_all(&models) {
        tracing::warn!(dir = %models.display(), error = %err, "cannot create the models directory");
        return;
    }
    install::remove_stale_temp_dirs(&models);
    // No conversion runs yet: anything in its scratch folder was left by an interrupted one.
    let scratch = models.join(convert::SCRATCH_DIR);
    if scratch.is_dir() {
        if let Err(err) = std::fs::remove_dir_all(&scratch) {
            tracing::warn!(dir = %scratch.display(), error = %err, "cannot remove the conversion scratch folder");
        }
    }
    let legacy = state.config.root().join("configs").join("models.yaml");
    if legacy.is_file() {
        tracing::warn!(
            path = %legacy.display(),
            "a legacy models.yaml exists; Atelier does not import it — install those models again"
        );
    }
    if state
        .config
        .get("scan_models_on_startup")
        .and_then(Value::as_bool)
        == Some(true)
    {
        scan_models_dir(state, &models).await;
    }
    match missing(state).await {
        Ok(gone) => {
            for r in gone {
                let key = r.get("key").and_then(Value::as_str).unwrap_or_default();
                let path = r.get("path").and_then(Value::as_str).unwrap_or_default();
                tracing::warn!(key, path, "model files are missing");
            }
        }
        Err(err) => tracing::warn!(error = %err.detail(), "cannot check for missing models"),
    }
    if let Err(err) = std::fs::write(models.join("README.txt"), README) {
        tracing::warn!(error = %err, "cannot write the models README");
    }
    let policy = download::DownloadPolicy::from_config(&state.config);
    if policy.proxy.is_some() && !policy.allow_private {
        tracing::warn!(
            "download_proxy is set: model downloads go through it, and the proxy must enforce the private-address policy itself (its DNS cannot be checked here)"
        );
    }
}

async fn scan_models_dir(state: &AppState, models: &Path) {
    let installed = match installed_paths(state).await {
        Ok(set) => set,
        Err(err) => {
            tracing::warn!(error = %err.detail(), "cannot scan the models directory");
            return;
        }
    };
    let found = match find_models(models, models) {
        Ok(found) => found,
        Err(err) => {
            tracing::warn!(error = %err, "cannot scan the models directory");
            return;
        }
    };
    for path in found {
        if path.canonicalize().is_ok_and(|c| installed.contains(&c)) {
            continue;
        }
        let source = path.display().to_string();
        match register(
            state,
            &path,
            Placement::InPlace,
            &Map::new(),
            &source,
            "path",
        )
        .await
        {
            Ok(r) => {
                let key = r.get("key").and_then(Value::as_str).unwrap_or_default();
                tracing::info!(path = %source, key, "registered a model found in the models directory");
            }
            Err(f) => {
                tracing::warn!(path = %source, error = %f.message, "skipping a file that is not a recognised model")
            }
        }
    }
}

/// A folder of the models directory with weights but no record (`GET /sync/orphaned`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    pub path: String,
    pub absolute_path: String,
    pub files: Vec<String>,
    pub size_bytes: u64,
}

/// Top-level folders of the models directory that hold weight files no record points into.
pub async fn orphans(state: &AppState, _admin: &AdminProof) -> Result<Vec<Orphan>, ApiError> {
    let models = models_dir(state);
    let installed: Vec<PathBuf> = installed_paths(state).await?.into_iter().collect();
    tokio::task::spawn_blocking(move || {
        let Ok(models) = models.canonicalize() else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut entries: Vec<_> = std::fs::read_dir(&models)
            .map_err(ApiError::internal)?
            .flatten()
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            let dir = entry.path();
            if !dir.is_dir()
                || RESERVED_DIRS.contains(&name.as_str())
                || name.starts_with("tmpinstall_")
            {
                continue;
            }
            if installed.iter().any(|p| p.starts_with(&dir)) {
                continue;
            }
            let files = hash::weight_files(&dir).unwrap_or_default();
            if files.is_empty() {
                continue;
            }
            out.push(Orphan {
                path: name,
                absolute_path: dir.display().to_string(),
                files: files
                    .iter()
                    .filter_map(|f| f.strip_prefix(&dir).ok())
                    .map(|f| f.display().to_string())
                    .collect(),
                size_bytes: hash::size_of(&dir).unwrap_or(0),
            });
        }
        Ok(out)
    })
    .await
    .map_err(ApiError::internal)?
}

/// `DELETE /sync/orphaned`: removes the listed folders, but only ones the orphan scan reports.
pub async fn delete_orphans(
    state: &AppState,
    admin: &AdminProof,
    paths: &[String],
) -> Result<(Vec<String>, Vec<(String, String)>), ApiError> {
    let current = orphans(state, admin).await?;
    let mut deleted = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let Some(orphan) = current
            .iter()
            .find(|o| &o.path == path || &o.absolute_path == path)
        else {
            errors.push((path.clone(), "Not an orphaned model folder".to_owned()));
            continue;
        };
        match tokio::fs::remove_dir_all(&orphan.absolute_path).await {
            Ok(()) => deleted.push(path.clone()),
            Err(e) => errors.push((path.clone(), e.to_string())),
        }
    }
    Ok((deleted, errors))
}

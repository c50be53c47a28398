//! Install jobs (models.md §3): what `POST /api/v2/models/install` starts, tracked in memory
//! (ids count from 0 per process, as in InvokeAI) and reported through admin-only socket
//! events (§6).
//!
//! Lifecycle: local `waiting → running → completed`; remote `waiting → downloading →
//! downloads_done → running → completed`; a cancel leads to `cancelled` (temp folder
//! removed), a pause of a remote job to `paused`, and any failure to `error` with the
//! exception-style class name in `error_reason`. Terminal jobs stay listed until pruned.

use super::download::{self, DownloadError, DownloadPolicy, Progress};
use super::{register, Failure, Placement};
use crate::events::Event;
use crate::http::error::ApiError;
use crate::service::AdminProof;
use crate::state::AppState;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Marker file of an install's temp folder (the reference's resume data); without one, or
/// with a terminal status in it, a temp folder is stale at start-up.
const MARKER: &str = ".invokeai_install.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Waiting,
    Downloading,
    DownloadsDone,
    Running,
    Paused,
    Completed,
    Error,
    Cancelled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Downloading => "downloading",
            Self::DownloadsDone => "downloads_done",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::Error => "error",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Error | Self::Cancelled)
    }
}

/// Where a job installs from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobSource {
    Local {
        path: String,
        inplace: bool,
    },
    Url {
        url: String,
        access_token: Option<String>,
    },
}

impl JobSource {
    pub fn to_json(&self) -> Value {
        match self {
            Self::Local { path, inplace } => {
                json!({"type": "local", "path": path, "inplace": inplace})
            }
            Self::Url { url, access_token } => {
                json!({"type": "url", "url": url, "access_token": access_token})
            }
        }
    }

    /// The source string a record keeps.
    pub fn as_source(&self) -> &str {
        match self {
            Self::Local { path, .. } => path,
            Self::Url { url, .. } => url,
        }
    }
}

/// One file of a remote install.
#[derive(Debug, Clone, Default)]
struct Part {
    source: String,
    dest: String,
    download_path: Option<String>,
    status: &'static str,
    bytes: u64,
    total_bytes: u64,
    error_type: Option<String>,
    error: Option<String>,
    started: Option<String>,
    ended: Option<String>,
    final_url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Job {
    pub id: i64,
    pub status: JobStatus,
    pub error_reason: Option<String>,
    pub error: Option<String>,
    pub config_in: Map<String, Value>,
    pub config_out: Option<Value>,
    pub inplace: bool,
    pub source: JobSource,
    pub local_path: String,
    pub bytes: u64,
    pub total_bytes: u64,
    parts: Vec<Part>,
}

impl Job {
    /// The `ModelInstallJob` wire shape.
    pub fn to_json(&self) -> Value {
        let parts: Vec<Value> = self
            .parts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                json!({"id": i, "dest": p.dest, "download_path": p.download_path, "status": p.status,
                    "bytes": p.bytes, "total_bytes": p.total_bytes, "error_type": p.error_type,
                    "error": p.error, "source": p.source, "access_token": null, "priority": 10,
                    "job_started": p.started, "job_ended": p.ended, "content_type": null,
                    "canonical_url": null, "etag": null, "last_modified": null, "final_url": p.final_url,
                    "expected_total_bytes": null, "resume_required": false, "resume_message": null,
                    "resume_from_scratch": false})
            })
            .collect();
        json!({
            "id": self.id, "status": self.status.as_str(), "error_reason": self.error_reason,
            "config_in": self.config_in, "config_out": self.config_out, "inplace": self.inplace,
            "source": self.source.to_json(), "local_path": self.local_path, "bytes": self.bytes,
            "total_bytes": self.total_bytes, "source_metadata": null, "download_parts": parts,
            "error": self.error, "error_traceback": null,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Cancel,
    Pause,
}

/// A job and the switch that stops its work.
#[derive(Debug)]
pub struct JobSlot {
    job: Mutex<Job>,
    stop: Mutex<Option<Stop>>,
    signal: watch::Sender<bool>,
}

impl JobSlot {
    fn job(&self) -> MutexGuard<'_, Job> {
        // A poisoned lock only means a panic elsewhere mid-update; the data is still usable.
        self.job.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn snapshot(&self) -> Job {
        self.job().clone()
    }

    fn request_stop(&self, stop: Stop) {
        *self.stop.lock().unwrap_or_else(|e| e.into_inner()) = Some(stop);
        self.signal.send_replace(true);
    }

    fn take_stop(&self) -> Option<Stop> {
        self.stop.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Every job of this process.
#[derive(Debug, Default)]
pub struct InstallJobs {
    next: AtomicI64,
    slots: Mutex<Vec<Arc<JobSlot>>>,
}

impl InstallJobs {
    fn slots(&self) -> MutexGuard<'_, Vec<Arc<JobSlot>>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn list(&self) -> Vec<Job> {
        self.slots().iter().map(|s| s.snapshot()).collect()
    }

    pub fn find(&self, id: i64) -> Option<Arc<JobSlot>> {
        self.slots().iter().find(|s| s.job().id == id).cloned()
    }

    fn add(&self, source: JobSource, inplace: bool, config_in: Map<String, Value>) -> Arc<JobSlot> {
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        let local_path = match &source {
            JobSource::Local { path, .. } => path.clone(),
            JobSource::Url { .. } => String::new(),
        };
        let slot = Arc::new(JobSlot {
            job: Mutex::new(Job {
                id,
                status: JobStatus::Waiting,
                error_reason: None,
                error: None,
                config_in,
                config_out: None,
                inplace,
                source,
                local_path,
                bytes: 0,
                total_bytes: 0,
                parts: Vec::new(),
            }),
            stop: Mutex::new(None),
            signal: watch::channel(false).0,
        });
        self.slots().push(slot.clone());
        slot
    }

    /// A job for `source` that has not finished yet.
    fn live_for(&self, source: &JobSource) -> Option<Arc<JobSlot>> {
        self.slots()
            .iter()
            .find(|s| {
                let job = s.job();
                job.source.as_source() == source.as_source() && !job.status.is_terminal()
            })
            .cloned()
    }

    /// Drops every terminal job.
    pub fn prune(&self) {
        self.slots().retain(|s| !s.job().status.is_terminal());
    }
}

fn admin_event(state: &AppState, name: &'static str, payload: Value) {
    state.events.publish(Event::Admin { name, payload });
}

fn now_text() -> String {
    chrono::Utc::now().to_rfc3339()
}

/// What a source string names (models.md §3.1), or the 409 that refuses it.
pub fn classify(
    source: &str,
    inplace: bool,
    access_token: Option<String>,
) -> Result<JobSource, ApiError> {
    if source.starts_with("external://") {
        return Err(ApiError::Conflict(format!(
            "External model providers are not supported by this server: '{source}'"
        )));
    }
    let path = Path::new(source);
    if !source.is_empty() && path.exists() {
        let absolute = path
            .canonicalize()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| source.to_owned());
        return Ok(JobSource::Local {
            path: absolute,
            inplace,
        });
    }
    let lower = source.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Ok(JobSource::Url {
            url: source.to_owned(),
            access_token,
        });
    }
    if is_hf_repo_id(source) {
        return Err(ApiError::Conflict(format!(
            "Hugging Face repositories cannot be installed by this server yet; download the files and install them by path or URL: '{source}'"
        )));
    }
    Err(ApiError::Conflict(format!(
        "Unsupported model source: '{source}'"
    )))
}

fn is_hf_repo_id(source: &str) -> bool {
    let repo = source.split(':').next().unwrap_or_default();
    let mut parts = repo.split('/');
    let ok = |s: Option<&str>| {
        s.is_some_and(|s| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

/// `POST /install`: starts (or finds) a job and returns it at once.
pub async fn start(
    state: &AppState,
    _admin: &AdminProof,
    source: &str,
    inplace: bool,
    access_token: Option<String>,
    config_in: Map<String, Value>,
) -> Result<Job, ApiError> {
    let source = classify(source, inplace, access_token)?;
    if let Some(existing) = state.models.jobs.live_for(&source) {
        return Ok(existing.snapshot());
    }
    let slot = state.models.jobs.add(source, inplace, config_in);
    let job = slot.snapshot();
    tokio::spawn(run(state.clone(), slot));
    Ok(job)
}

fn unknown_job(id: i64) -> ApiError {
    ApiError::UnsupportedMediaType(format!("No job with id {id} known"))
}

/// `DELETE /install/{id}`.
pub fn cancel(state: &AppState, _admin: &AdminProof, id: i64) -> Result<(), ApiError> {
    let slot = state.models.jobs.find(id).ok_or_else(|| unknown_job(id))?;
    let status = slot.job().status;
    if status == JobStatus::Paused {
        // Nothing is running: finish the cancel here.
        finish_cancel(state, &slot);
    } else if !status.is_terminal() {
        slot.request_stop(Stop::Cancel);
    }
    Ok(())
}

/// `POST /install/{id}/pause`: stops a remote download, keeping the job resumable.
pub fn pause(state: &AppState, _admin: &AdminProof, id: i64) -> Result<Job, ApiError> {
    let slot = state.models.jobs.find(id).ok_or_else(|| unknown_job(id))?;
    let (status, remote) = {
        let job = slot.job();
        (job.status, matches!(job.source, JobSource::Url { .. }))
    };
    if remote && matches!(status, JobStatus::Waiting | JobStatus::Downloading) {
        slot.request_stop(Stop::Pause);
    }
    Ok(slot.snapshot())
}

/// `POST /install/{id}/resume`: restarts a paused download.
pub fn resume(state: &AppState, _admin: &AdminProof, id: i64) -> Result<Job, ApiError> {
    let slot = state.models.jobs.find(id).ok_or_else(|| unknown_job(id))?;
    if slot.job().status == JobStatus::Paused {
        restart(state, &slot);
    }
    Ok(slot.snapshot())
}

/// `POST /install/{id}/restart_failed`: runs a failed or cancelled remote job again.
pub fn restart_failed(state: &AppState, _admin: &AdminProof, id: i64) -> Result<Job, ApiError> {
    let slot = state.models.jobs.find(id).ok_or_else(|| unknown_job(id))?;
    let (status, remote) = {
        let job = slot.job();
        (job.status, matches!(job.source, JobSource::Url { .. }))
    };
    if remote && matches!(status, JobStatus::Error | JobStatus::Cancelled) {
        restart(state, &slot);
    }
    Ok(slot.snapshot())
}

fn restart(state: &AppState, slot: &Arc<JobSlot>) {
    slot.take_stop();
    slot.signal.send_replace(false);
    {
        let mut job = slot.job();
        // The previous attempt's partial download is not reused (see docs/compatibility.md).
        let old_temp = PathBuf::from(&job.local_path);
        if old_temp
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("tmpinstall_"))
        {
            let _ = std::fs::remove_dir_all(old_temp);
        }
        job.status = JobStatus::Waiting;
        job.error = None;
        job.error_reason = None;
        job.bytes = 0;
    }
    tokio::spawn(run(state.clone(), slot.clone()));
}

fn finish_cancel(state: &AppState, slot: &Arc<JobSlot>) {
    let (id, source, local) = {
        let mut job = slot.job();
        job.status = JobStatus::Cancelled;
        for p in &mut job.parts {
            if p.status != "completed" {
                p.status = "cancelled";
            }
        }
        (job.id, job.source.clone(), job.local_path.clone())
    };
    if let JobSource::Url { url, .. } = &source {
        if !local.is_empty() {
            let _ = std::fs::remove_dir_all(&local);
        }
        admin_event(state, "download_cancelled", json!({"source": url}));
    }
    admin_event(
        state,
        "model_install_cancelled",
        json!({"id": id, "source": source.to_json()}),
    );
}

fn fail(state: &AppState, slot: &Arc<JobSlot>, failure: &Failure) {
    let (id, source) = {
        let mut job = slot.job();
        job.status = JobStatus::Error;
        job.error_reason = Some(failure.class.to_owned());
        job.error = Some(failure.message.clone());
        (job.id, job.source.to_json())
    };
    tracing::warn!(job = id, error = %failure.message, "model install failed");
    admin_event(
        state,
        "model_install_error",
        json!({"id": id, "source": source, "error_type": failure.class, "error": failure.message}),
    );
}

async fn run(state: AppState, slot: Arc<JobSlot>) {
    let source = slot.job().source.clone();
    let (path, placement, temp) = match &source {
        JobSource::Local { path, inplace } => {
            let placement = if *inplace {
                Placement::InPlace
            } else {
                Placement::Move
            };
            (PathBuf::from(path), placement, None)
        }
        JobSource::Url { url, access_token } => {
            match fetch(&state, &slot, url, access_token.as_deref()).await {
                Some((file, temp)) => (file, Placement::Move, Some(temp)),
                None => return,
            }
        }
    };
    if slot.take_stop() == Some(Stop::Cancel) {
        finish_cancel(&state, &slot);
        return;
    }
    let (id, config_in) = {
        let mut job = slot.job();
        job.status = JobStatus::Running;
        (job.id, job.config_in.clone())
    };
    admin_event(
        &state,
        "model_install_started",
        json!({"id": id, "source": source.to_json()}),
    );
    let source_type = match source {
        JobSource::Local { .. } => "path",
        JobSource::Url { .. } => "url",
    };
    let outcome = register(
        &state,
        &path,
        placement,
        &config_in,
        source.as_source(),
        source_type,
    )
    .await;
    if let Some(temp) = temp {
        let _ = tokio::fs::remove_dir_all(temp).await;
    }
    match outcome {
        Ok(record) => {
            let config = super::present(&state, record.clone());
            let key = record.get("key").cloned().unwrap_or(Value::Null);
            let total = record.get("file_size").cloned().unwrap_or(Value::Null);
            {
                let mut job = slot.job();
                job.status = JobStatus::Completed;
                job.config_out = Some(config.clone());
                if let Some(size) = total.as_u64() {
                    job.total_bytes = job.total_bytes.max(size);
                    job.bytes = job.total_bytes;
                }
            }
            admin_event(
                &state,
                "model_install_complete",
                json!({"id": id, "source": source.to_json(), "key": key, "total_bytes": total, "config": config}),
            );
        }
        Err(failure) => fail(&state, &slot, &failure),
    }
}

/// Downloads a URL job's file into a fresh `tmpinstall_*` folder. `None` when the job ended
/// here (error, cancel or pause; already reported).
async fn fetch(
    state: &AppState,
    slot: &Arc<JobSlot>,
    url: &str,
    access_token: Option<&str>,
) -> Option<(PathBuf, PathBuf)> {
    let temp =
        super::models_dir(state).join(format!("tmpinstall_{}", uuid::Uuid::new_v4().simple()));
    let id = {
        let mut job = slot.job();
        job.status = JobStatus::Downloading;
        job.local_path = temp.display().to_string();
        job.parts = vec![Part {
            source: url.to_owned(),
            dest: temp.display().to_string(),
            status: "running",
            started: Some(now_text()),
            ..Default::default()
        }];
        job.id
    };
    let source_json = slot.job().source.to_json();
    admin_event(
        state,
        "download_started",
        json!({"source": url, "download_path": temp.display().to_string()}),
    );
    let policy = DownloadPolicy::from_config(&state.config);
    let mut cancel = slot.signal.subscribe();
    let events = state.events.clone();
    let progress_slot = slot.clone();
    let (url_owned, temp_text) = (url.to_owned(), temp.display().to_string());
    let mut last_emit: Option<Instant> = None;
    let mut on_progress = move |p: Progress| {
        {
            let mut job = progress_slot.job();
            job.bytes = p.bytes;
            job.total_bytes = p.total.unwrap_or(p.bytes);
            if let Some(part) = job.parts.first_mut() {
                part.bytes = p.bytes;
                part.total_bytes = p.total.unwrap_or(0);
            }
        }
        let done = p.total == Some(p.bytes);
        if last_emit.is_some_and(|t| t.elapsed() < Duration::from_millis(250)) && !done {
            return;
        }
        last_emit = Some(Instant::now());
        let total = p.total.unwrap_or(0);
        events.publish(Event::Admin {
            name: "download_progress",
            payload: json!({"source": url_owned, "download_path": temp_text,
                "current_bytes": p.bytes, "total_bytes": total}),
        });
        events.publish(Event::Admin {
            name: "model_install_download_progress",
            payload: json!({"id": id, "source": progress_slot.job().source.to_json(),
                "local_path": temp_text, "bytes": p.bytes, "total_bytes": total,
                "parts": [{"url": url_owned, "local_path": temp_text, "bytes": p.bytes, "total_bytes": total}]}),
        });
    };
    let result = download::download(
        &policy,
        url,
        access_token,
        &temp,
        &mut on_progress,
        &mut cancel,
    )
    .await;
    match result {
        Ok(done) => {
            let path_text = done.path.display().to_string();
            {
                let mut job = slot.job();
                job.status = JobStatus::DownloadsDone;
                job.bytes = done.bytes;
                job.total_bytes = done.bytes;
                if let Some(part) = job.parts.first_mut() {
                    part.status = "completed";
                    part.download_path = Some(path_text.clone());
                    part.bytes = done.bytes;
                    part.total_bytes = done.bytes;
                    part.ended = Some(now_text());
                    part.final_url = Some(done.final_url.clone());
                }
            }
            admin_event(
                state,
                "download_complete",
                json!({"source": url, "download_path": path_text, "total_bytes": done.bytes}),
            );
            admin_event(
                state,
                "model_install_downloads_complete",
                json!({"id": id, "source": source_json}),
            );
            Some((done.path, temp))
        }
        Err(err) if err.is_cancelled() => {
            match slot.take_stop() {
                Some(Stop::Pause) => {
                    let mut job = slot.job();
                    job.status = JobStatus::Paused;
                    if let Some(part) = job.parts.first_mut() {
                        part.status = "paused";
                    }
                }
                _ => finish_cancel(state, slot),
            }
            None
        }
        Err(err) => {
            let _ = tokio::fs::remove_dir_all(&temp).await;
            download_failed(state, slot, url, &err);
            None
        }
    }
}

fn download_failed(state: &AppState, slot: &Arc<JobSlot>, url: &str, err: &DownloadError) {
    {
        let mut job = slot.job();
        if let Some(part) = job.parts.first_mut() {
            part.status = "error";
            part.error_type = Some(err.kind.to_owned());
            part.error = Some(err.message.clone());
            part.ended = Some(now_text());
        }
    }
    admin_event(
        state,
        "download_error",
        json!({"source": url, "error_type": err.kind, "error": err.message}),
    );
    fail(state, slot, &Failure::new(err.kind, err.message.clone()));
}

/// Start-up step 1: removes `tmpinstall_*` folders without a marker or with a terminal one.
pub fn remove_stale_temp_dirs(models: &Path) {
    let Ok(entries) = std::fs::read_dir(models) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("tmpinstall_") || !entry.path().is_dir() {
            continue;
        }
        let marker = std::fs::read_to_string(entry.path().join(MARKER))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok());
        let live = marker
            .as_ref()
            .and_then(|m| m.get("status"))
            .and_then(Value::as_str)
            .is_some_and(|s| !matches!(s, "completed" | "error" | "cancelled"));
        if live {
            tracing::warn!(dir = %entry.path().display(), "an unfinished install cannot be resumed by this server; leaving its files");
            continue;
        }
        if let Err(err) = std::fs::remove_dir_all(entry.path()) {
            tracing::warn!(dir = %entry.path().display(), error = %err, "cannot remove a stale install folder");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_classified_in_order() {
        let dir = tempfile::tempdir().expect("dir");
        let here = dir.path().display().to_string();
        assert!(matches!(
            classify(&here, true, None),
            Ok(JobSource::Local { inplace: true, .. })
        ));
        assert!(matches!(
            classify("https://example.com/m.safetensors", false, None),
            Ok(JobSource::Url { .. })
        ));
        let err = classify("not a source", false, None).expect_err("unsupported");
        assert_eq!(err.detail(), "Unsupported model source: 'not a source'");
        assert!(classify("owner/repo::vae", false, None).is_err());
        assert!(is_hf_repo_id("stabilityai/sdxl-turbo:fp16"));
        assert!(!is_hf_repo_id("/abs/path"));
    }

    #[test]
    fn stale_temp_dirs_are_removed() {
        let dir = tempfile::tempdir().expect("dir");
        let stale = dir.path().join("tmpinstall_a");
        let live = dir.path().join("tmpinstall_b");
        let done = dir.path().join("tmpinstall_c");
        for d in [&stale, &live, &done] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(live.join(MARKER), r#"{"status": "paused"}"#).expect("write");
        std::fs::write(done.join(MARKER), r#"{"status": "completed"}"#).expect("write");
        remove_stale_temp_dirs(dir.path());
        assert!(!stale.exists() && live.exists() && !done.exists());
    }
}

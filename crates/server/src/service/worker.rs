//! The queue worker (queue-and-events.md §6, generation.md §5).
//!
//! An async task claims items, keeps the session, writes rows and publishes events. Nodes run
//! on one dedicated executor thread ("atelier-worker"), one at a time; the thread talks to the
//! async side through channels: a job in, a reply out, and calls back for what a node needs
//! from the server (loading and saving images, progress). CPU work (node bodies, PNG encoding)
//! stays on the thread; database and file writes stay on the runtime. A panic inside a node is
//! caught on the thread and fails the item. When the task ends, the job channel closes and the
//! thread exits after its current node.

use crate::events::Event;
use crate::http::error::ApiError;
use crate::media::{self, PngText};
use crate::service::compute::{self, Compute};
use crate::service::generation;
use crate::service::queue::{publish_status, Running};
use crate::state::AppState;
use atelier_domain::content::{self, ImageCategory, ResourceOrigin};
use atelier_domain::queue::QueueItemStatus;
use atelier_domain::{Identity, UserId};
use atelier_graph::{Context, ImageRef, Inputs, NodeError, NodeSpec, SaveRequest, Session};
use atelier_store::{DequeueMode, NewImage, QueueRow};
use image::DynamicImage;
use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The device name recorded on claimed rows.
const DEVICE: &str = "cpu";
/// How long the worker sleeps when idle before looking again (§6.1).
const IDLE_POLL: Duration = Duration::from_secs(1);
/// The least time between two writes of a running session.
const PERSIST_EVERY: Duration = Duration::from_millis(200);

/// What the executor thread asks of the async side while a node runs.
enum Call {
    Load {
        image_name: String,
        reply: oneshot::Sender<Result<Vec<u8>, NodeError>>,
    },
    Save {
        request: SaveRequest,
        width: u32,
        height: u32,
        png: Vec<u8>,
        thumbnail: Vec<u8>,
        has_workflow: bool,
        metadata: Option<String>,
        reply: oneshot::Sender<Result<ImageRef, NodeError>>,
    },
    Progress {
        message: String,
        percentage: Option<f64>,
        image: Option<Value>,
    },
    ModelExists {
        key: String,
        reply: oneshot::Sender<Result<bool, NodeError>>,
    },
    ModelRecord {
        key: String,
        reply: oneshot::Sender<Result<Option<Value>, NodeError>>,
    },
    FindModels {
        name: String,
        base: String,
        model_type: String,
        reply: oneshot::Sender<Result<Vec<Value>, NodeError>>,
    },
    ModelLoad {
        complete: bool,
        record: Value,
        submodel: Option<String>,
    },
}

/// One node for the executor thread.
struct Job {
    tensors: crate::service::tensors::TensorStore,
    models_dir: std::path::PathBuf,
    spec: &'static NodeSpec,
    inputs: Inputs,
    cancel: Arc<AtomicBool>,
    /// Embedded in saved PNGs.
    workflow: Option<String>,
    graph: String,
    compress_level: i64,
    calls: mpsc::UnboundedSender<Call>,
    reply: oneshot::Sender<Result<Map<String, Value>, NodeError>>,
}

/// The executor thread's side of [`Context`].
struct ThreadContext<'a> {
    cache: &'a mut generation::ModelCache,
    models_dir: std::path::PathBuf,
    tensors: crate::service::tensors::TensorStore,
    cancel: Arc<AtomicBool>,
    workflow: Option<String>,
    graph: String,
    compress_level: i64,
    calls: mpsc::UnboundedSender<Call>,
}

fn lost() -> NodeError {
    NodeError::new("RuntimeError", "The server is shutting down")
}

/// The runtime's side, as the generation adapter sees it.
struct ThreadHost<'b> {
    calls: &'b mpsc::UnboundedSender<Call>,
    models_dir: &'b std::path::Path,
}

impl generation::Host for ThreadHost<'_> {
    fn model_record(&mut self, key: &str) -> Result<Option<Value>, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.calls
            .send(Call::ModelRecord {
                key: key.to_owned(),
                reply,
            })
            .map_err(|_| lost())?;
        rx.blocking_recv().map_err(|_| lost())?
    }

    fn find_models(
        &mut self,
        name: &str,
        base: &str,
        model_type: &str,
    ) -> Result<Vec<Value>, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.calls
            .send(Call::FindModels {
                name: name.to_owned(),
                base: base.to_owned(),
                model_type: model_type.to_owned(),
                reply,
            })
            .map_err(|_| lost())?;
        rx.blocking_recv().map_err(|_| lost())?
    }

    fn models_dir(&self) -> &std::path::Path {
        self.models_dir
    }

    fn model_load(&mut self, complete: bool, record: &Value, submodel: Option<&str>) {
        let _ = self.calls.send(Call::ModelLoad {
            complete,
            record: record.clone(),
            submodel: submodel.map(str::to_owned),
        });
    }

    fn progress(&mut self, message: &str, percentage: Option<f64>, image: Option<Value>) {
        let _ = self.calls.send(Call::Progress {
            message: message.to_owned(),
            percentage,
            image,
        });
    }
}

impl ThreadContext<'_> {
    /// Splits the context into the model cache, the host and the tensor store.
    fn parts(
        &mut self,
    ) -> (
        &mut generation::ModelCache,
        ThreadHost<'_>,
        &crate::service::tensors::TensorStore,
    ) {
        (
            &mut *self.cache,
            ThreadHost {
                calls: &self.calls,
                models_dir: &self.models_dir,
            },
            &self.tensors,
        )
    }
}

impl Context for ThreadContext<'_> {
    fn load_image(&mut self, image_name: &str) -> Result<DynamicImage, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.calls
            .send(Call::Load {
                image_name: image_name.to_owned(),
                reply,
            })
            .map_err(|_| lost())?;
        let bytes = rx.blocking_recv().map_err(|_| lost())??;
        media::decode(&bytes)
            .map_err(|_| NodeError::value(format!("Image {image_name} could not be decoded")))
    }

    fn save_image(
        &mut self,
        image: &DynamicImage,
        request: SaveRequest,
    ) -> Result<ImageRef, NodeError> {
        let metadata = request.metadata.as_ref().map(Value::to_string);
        let text = PngText {
            metadata: metadata.clone(),
            workflow: self.workflow.clone(),
            graph: Some(self.graph.clone()),
        };
        let encode_error = |e: media::MediaError| NodeError::new("OSError", e.to_string());
        let png = media::encode_png(image, &text, self.compress_level).map_err(encode_error)?;
        let thumbnail = media::thumbnail(image).map_err(encode_error)?;
        let (reply, rx) = oneshot::channel();
        self.calls
            .send(Call::Save {
                request,
                width: image.width(),
                height: image.height(),
                png,
                thumbnail,
                has_workflow: text.has_workflow(),
                metadata,
                reply,
            })
            .map_err(|_| lost())?;
        rx.blocking_recv().map_err(|_| lost())?
    }

    fn is_canceled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    fn progress(&mut self, message: &str, percentage: Option<f64>) {
        let _ = self.calls.send(Call::Progress {
            message: message.to_owned(),
            percentage,
            image: None,
        });
    }

    fn app_version(&self) -> String {
        crate::http::app::API_VERSION.to_owned()
    }

    fn make_noise(&mut self, seed: u32, width: u32, height: u32) -> Result<String, NodeError> {
        use crate::service::tensors::{Latents, Stored};
        let shape = atelier_engine::noise::sd_latent_shape(width, height)
            .map_err(|e| NodeError::value(e.to_string()))?;
        let data = atelier_engine::noise::sd_latent_noise(seed, width, height)
            .map_err(|e| NodeError::value(e.to_string()))?;
        Ok(self.tensors.put(
            "noise",
            Stored::Latents(Arc::new(Latents {
                shape: shape.to_vec(),
                data,
            })),
        ))
    }

    fn latents_size(&mut self, name: &str) -> Result<Option<(u32, u32)>, NodeError> {
        Ok(self
            .tensors
            .latents(name)
            .and_then(|l| match l.shape.as_slice() {
                [_, _, h, w] => Some((
                    u32::try_from(*w * 8).unwrap_or(0),
                    u32::try_from(*h * 8).unwrap_or(0),
                )),
                _ => None,
            }))
    }

    fn encode_prompt(&mut self, request: &Value) -> Result<String, NodeError> {
        let (cache, mut host, tensors) = self.parts();
        generation::encode_prompt(cache, &mut host, tensors, request)
    }

    fn denoise(&mut self, request: &Value) -> Result<(String, u32, u32), NodeError> {
        let cancel = self.cancel.clone();
        let (cache, mut host, tensors) = self.parts();
        generation::denoise(cache, &mut host, tensors, request, &cancel)
    }

    fn decode_latents(&mut self, request: &Value) -> Result<DynamicImage, NodeError> {
        let (cache, mut host, tensors) = self.parts();
        generation::decode(cache, &mut host, tensors, request)
    }

    fn encode_image(
        &mut self,
        image: &DynamicImage,
        request: &Value,
    ) -> Result<(String, u32, u32), NodeError> {
        let (cache, mut host, tensors) = self.parts();
        generation::encode(cache, &mut host, tensors, image, request)
    }

    fn model_exists(&mut self, key: &str) -> Result<bool, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.calls
            .send(Call::ModelExists {
                key: key.to_owned(),
                reply,
            })
            .map_err(|_| lost())?;
        rx.blocking_recv().map_err(|_| lost())?
    }
}

/// The executor thread: runs jobs until the channel closes.
fn executor(
    jobs: std::sync::mpsc::Receiver<Job>,
    ram_gb: Option<f64>,
    compute: Result<Compute, String>,
) {
    let mut cache = generation::ModelCache::new(ram_gb, compute);
    while let Ok(job) = jobs.recv() {
        let mut ctx = ThreadContext {
            cache: &mut cache,
            models_dir: job.models_dir,
            tensors: job.tensors,
            cancel: job.cancel,
            workflow: job.workflow,
            graph: job.graph,
            compress_level: job.compress_level,
            calls: job.calls,
        };
        let (spec, inputs) = (job.spec, job.inputs);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            (spec.run)(&inputs, &mut ctx)
        }))
        .unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "the node panicked".to_owned());
            Err(NodeError::new("PanicException", message))
        });
        let _ = job.reply.send(outcome);
    }
}

/// The running worker: dropping the task's handle does not stop it; [`WorkerHandle::stop`]
/// does.
pub struct WorkerHandle {
    task: tokio::task::JoinHandle<()>,
}

impl WorkerHandle {
    /// Stops the worker task and waits until it is gone, so none of its database work is
    /// still in flight when the caller closes the store.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Starts the worker task and its executor thread.
pub fn spawn(state: AppState) -> WorkerHandle {
    let (jobs_tx, jobs_rx) = std::sync::mpsc::channel::<Job>();
    // InvokeAI 6's key, then its deprecated predecessor (which older roots still carry).
    let ram_gb = ["max_cache_ram_gb", "ram"]
        .iter()
        .find_map(|key| state.config.get(key).and_then(Value::as_f64));
    let compute = compute::resolve(
        state
            .config
            .get("device")
            .and_then(Value::as_str)
            .unwrap_or("auto"),
        state
            .config
            .get("precision")
            .and_then(Value::as_str)
            .unwrap_or("auto"),
    );
    match &compute {
        Ok(compute) => tracing::info!("generation runs on {}", compute.describe()),
        Err(reason) => tracing::error!("generation cannot run: {reason}"),
    }
    if let Err(err) = std::thread::Builder::new()
        .name("atelier-worker".into())
        .spawn(move || executor(jobs_rx, ram_gb, compute))
    {
        tracing::error!(error = %err, "could not start the worker thread; the queue will not run");
    }
    let task = tokio::spawn(async move {
        let worker = Worker {
            state,
            jobs: jobs_tx,
        };
        worker.run().await;
    });
    WorkerHandle { task }
}

struct Worker {
    state: AppState,
    jobs: std::sync::mpsc::Sender<Job>,
}

/// How the item ended, as far as the loop is concerned.
enum Outcome {
    Done,
    Stopped,
}

impl Worker {
    async fn run(self) {
        let worker_id = format!("worker-{}", uuid::Uuid::new_v4().simple());
        loop {
            let processor = &self.state.processor;
            if processor.is_paused() {
                processor.wait(IDLE_POLL).await;
                continue;
            }
            let mode = if self.state.multiuser()
                && self.state.config.session_queue_mode() == "round_robin"
            {
                DequeueMode::RoundRobin
            } else {
                DequeueMode::Fifo
            };
            let row = match self.state.store.dequeue(mode, &worker_id, DEVICE).await {
                Ok(Some(row)) => row,
                Ok(None) => {
                    processor.wait(IDLE_POLL).await;
                    continue;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "could not dequeue");
                    processor.wait(IDLE_POLL).await;
                    continue;
                }
            };
            let cancel = Arc::new(AtomicBool::new(false));
            processor.set_running(Some(Running {
                item_id: row.item_id,
                user_id: row.user_id.clone(),
                cancel: cancel.clone(),
            }));
            let item_id = row.item_id;
            if let Err(err) = self.run_item(row, cancel).await {
                tracing::error!(item_id, error = %err.detail(), "the processor failed an item");
                self.fail(item_id, "ProcessorError", &err.detail(), None)
                    .await;
            }
            processor.set_running(None);
            self.prune_history().await;
        }
    }

    async fn prune_history(&self) {
        if let Some(keep) = self
            .state
            .config
            .get("max_queue_history")
            .and_then(Value::as_i64)
        {
            if let Err(err) = self.state.store.prune_history(keep).await {
                tracing::warn!(error = %err, "could not prune the queue history");
            }
        }
    }

    /// Whether the owner may still run work: exists and is active (multi-user only).
    /// Lookup errors are retried 3 times; `lenient` lets a failing lookup pass.
    async fn owner_allowed(&self, user_id: &UserId, lenient: bool) -> bool {
        if !self.state.multiuser() {
            return true;
        }
        for attempt in 0..4 {
            match self.state.store.get_user(user_id).await {
                Ok(user) => return user.is_some_and(|u| u.is_active),
                Err(err) if attempt < 3 => {
                    tracing::warn!(error = %err, "owner lookup failed; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(_) => return lenient,
            }
        }
        lenient
    }

    async fn owner_identity(&self, user_id: &UserId) -> Identity {
        if !self.state.multiuser() {
            return Identity::system_admin();
        }
        match self.state.store.get_user(user_id).await {
            Ok(Some(user)) => Identity::from_row(&user, false),
            _ => Identity {
                user_id: user_id.clone(),
                email: String::new(),
                is_admin: false,
                remember_me: false,
                token_epoch: 0,
            },
        }
    }

    async fn set_status(
        &self,
        item_id: i64,
        status: QueueItemStatus,
        error: Option<(&str, &str, &str)>,
    ) -> Option<QueueRow> {
        match self
            .state
            .store
            .set_queue_status(item_id, status, error)
            .await
        {
            Ok(Some(row)) => {
                if let Err(err) = publish_status(&self.state, &row).await {
                    tracing::warn!(error = %err.detail(), "could not announce a status change");
                }
                Some(row)
            }
            Ok(None) => None,
            Err(err) => {
                tracing::error!(item_id, error = %err, "could not record a status change");
                None
            }
        }
    }

    async fn fail(&self, item_id: i64, error_type: &str, message: &str, traceback: Option<&str>) {
        let traceback = traceback
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{error_type}: {message}"));
        self.set_status(
            item_id,
            QueueItemStatus::Failed,
            Some((error_type, message, &traceback)),
        )
        .await;
    }

    async fn is_terminal(&self, item_id: i64) -> bool {
        match self.state.store.get_queue_item(item_id).await {
            Ok(Some(row)) => row.status.is_terminal(),
            Ok(None) => true,
            Err(_) => false,
        }
    }

    async fn run_item(&self, row: QueueRow, cancel: Arc<AtomicBool>) -> Result<(), ApiError> {
        publish_status(&self.state, &row).await?;
        // Re-read: a cancel may have raced the claim.
        if self.is_terminal(row.item_id).await {
            return Ok(());
        }
        if !self.owner_allowed(&row.user_id, false).await {
            self.set_status(row.item_id, QueueItemStatus::Canceled, None)
                .await;
            return Ok(());
        }
        let stored: Value = serde_json::from_str(&row.session).unwrap_or(Value::Null);
        let graph = match atelier_graph::validate_graph(&stored["graph"]) {
            Ok(graph) => graph,
            Err(issues) => {
                let message = issues
                    .first()
                    .map(|i| i.msg.clone())
                    .unwrap_or_else(|| "Invalid graph".to_owned());
                self.fail(row.item_id, "InvalidGraphError", &message, None)
                    .await;
                return Ok(());
            }
        };
        let session_id = stored["id"].as_str().unwrap_or(&row.session_id).to_owned();
        let mut session = Session::new(&session_id, graph);
        let graph_text = session.graph().to_json().to_string();
        let outcome = self
            .run_nodes(&row, &mut session, &graph_text, &cancel)
            .await;
        self.persist(&row, &session).await;
        if matches!(outcome, Outcome::Stopped) || !session.is_complete() {
            return Ok(());
        }
        if self.is_terminal(row.item_id).await {
            return Ok(());
        }
        // The owner is checked once more after the last node; a failing lookup lets the
        // finished result stand (§6.4).
        if !self.owner_allowed(&row.user_id, true).await {
            self.set_status(row.item_id, QueueItemStatus::Canceled, None)
                .await;
            return Ok(());
        }
        self.set_status(row.item_id, QueueItemStatus::Completed, None)
            .await;
        Ok(())
    }

    async fn persist(&self, row: &QueueRow, session: &Session) {
        if let Err(err) = self
            .state
            .store
            .set_queue_session(row.item_id, &session.to_json().to_string())
            .await
        {
            tracing::warn!(item_id = row.item_id, error = %err, "could not store the session");
        }
    }

    /// The invocation base of an event payload (§7.4 `INV`).
    fn invocation_payload(row: &QueueRow, session_id: &str, node: &Value, source: &str) -> Value {
        json!({
            "queue_id": row.queue_id, "item_id": row.item_id, "batch_id": row.batch_id,
            "origin": row.origin, "destination": row.destination, "user_id": row.user_id.as_str(),
            "session_id": session_id, "invocation": node, "invocation_source_id": source,
        })
    }

    fn publish(&self, name: &'static str, row: &QueueRow, payload: Value) {
        self.state.events.publish(Event::Queue {
            name,
            queue_id: row.queue_id.clone(),
            owner: row.user_id.to_string(),
            payload,
            companion: None,
        });
    }

    async fn run_nodes(
        &self,
        row: &QueueRow,
        session: &mut Session,
        graph_text: &str,
        cancel: &Arc<AtomicBool>,
    ) -> Outcome {
        let session_id = row.session_id.clone();
        let compress_level = self
            .state
            .config
            .get("pil_compress_level")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let owner = self.owner_identity(&row.user_id).await;
        let mut last_persist: Option<std::time::Instant> = None;
        loop {
            if cancel.load(Ordering::SeqCst) && self.is_terminal(row.item_id).await {
                return Outcome::Stopped;
            }
            if !self.owner_allowed(&row.user_id, false).await {
                self.set_status(row.item_id, QueueItemStatus::Canceled, None)
                    .await;
                return Outcome::Stopped;
            }
            let Some(prepared) = session.next_node() else {
                return Outcome::Done;
            };
            let base =
                Self::invocation_payload(row, &session_id, &prepared.node, &prepared.source_id);
            let traceback = |e: &NodeError| {
                format!(
                    "Traceback (most recent call last):\n  node \"{}\" ({}), execution id {}\n{}: {}\n",
                    prepared.source_id, prepared.spec.type_name, prepared.exec_id, e.error_type, e.message
                )
            };
            let outcome = match prepared.inputs {
                Err(e) => Err(e),
                Ok(inputs) => {
                    self.publish("invocation_started", row, base.clone());
                    self.execute(
                        row,
                        &owner,
                        &base,
                        prepared.spec,
                        inputs,
                        cancel,
                        graph_text,
                        compress_level,
                    )
                    .await
                }
            };
            match outcome {
                Ok(output) => {
                    session.complete(&prepared.exec_id, output);
                    // Results accumulate on the row for pollers; with many small nodes the
                    // writes are spaced out (the final state is always written).
                    if last_persist.is_none_or(|t| t.elapsed() >= PERSIST_EVERY) {
                        self.persist(row, session).await;
                        last_persist = Some(std::time::Instant::now());
                    }
                    let mut payload = base;
                    payload["result"] = session
                        .result_of_exec(&prepared.exec_id)
                        .cloned()
                        .unwrap_or(Value::Null);
                    self.publish("invocation_complete", row, payload);
                }
                Err(e) if e.is_canceled() => {
                    // The row was written before the signal; make sure it says canceled.
                    self.set_status(row.item_id, QueueItemStatus::Canceled, None)
                        .await;
                    return Outcome::Stopped;
                }
                Err(e) => {
                    session.fail(&prepared.exec_id, &e);
                    self.persist(row, session).await;
                    let tb = traceback(&e);
                    self.fail(row.item_id, &e.error_type, &e.message, Some(&tb))
                        .await;
                    let mut payload = base;
                    payload["error_type"] = json!(e.error_type);
                    payload["error_message"] = json!(e.message);
                    payload["error_traceback"] = json!(tb);
                    self.publish("invocation_error", row, payload);
                    return Outcome::Stopped;
                }
            }
        }
    }

    /// Hands one node to the executor thread and serves its calls until it answers.
    #[allow(clippy::too_many_arguments)]
    async fn execute(
        &self,
        row: &QueueRow,
        owner: &Identity,
        base: &Value,
        spec: &'static NodeSpec,
        inputs: Inputs,
        cancel: &Arc<AtomicBool>,
        graph_text: &str,
        compress_level: i64,
    ) -> Result<Map<String, Value>, NodeError> {
        let (calls_tx, mut calls) = mpsc::unbounded_channel();
        let (reply, mut answer) = oneshot::channel();
        let job = Job {
            tensors: self.state.tensors.clone(),
            models_dir: self.state.config.models_dir(),
            spec,
            inputs,
            cancel: cancel.clone(),
            workflow: row.workflow.clone(),
            graph: graph_text.to_owned(),
            compress_level,
            calls: calls_tx,
            reply,
        };
        if self.jobs.send(job).is_err() {
            return Err(NodeError::new(
                "RuntimeError",
                "The worker thread is not running",
            ));
        }
        loop {
            tokio::select! {
                // Calls first: progress sent just before the answer is still delivered, in order.
                biased;
                Some(call) = calls.recv() => self.serve(call, row, owner, base).await,
                outcome = &mut answer => {
                    while let Ok(call) = calls.try_recv() {
                        self.serve(call, row, owner, base).await;
                    }
                    return outcome.unwrap_or_else(|_| Err(NodeError::new("RuntimeError", "The worker thread stopped")));
                }
            }
        }
    }

    async fn serve(&self, call: Call, row: &QueueRow, owner: &Identity, base: &Value) {
        match call {
            Call::Load { image_name, reply } => {
                let _ = reply.send(self.load(owner, &image_name).await);
            }
            Call::Save {
                request,
                width,
                height,
                png,
                thumbnail,
                has_workflow,
                metadata,
                reply,
            } => {
                let new = NewImage {
                    image_name: format!("{}.png", uuid::Uuid::new_v4()),
                    image_origin: ResourceOrigin::Internal,
                    image_category: ImageCategory::General,
                    width: i64::from(width),
                    height: i64::from(height),
                    session_id: Some(row.session_id.clone()),
                    node_id: Some(request.node_id.clone()),
                    metadata,
                    is_intermediate: request.is_intermediate,
                    has_workflow,
                    user_id: row.user_id.clone(),
                    image_subfolder: String::new(),
                    board_id: request.board_id.clone(),
                };
                let _ = reply.send(self.save(owner, new, &png, &thumbnail).await);
            }
            Call::ModelRecord { key, reply } => {
                let found = match self.state.store.get_model(&key).await {
                    Ok(row) => Ok(row.and_then(|r| serde_json::from_str(&r.config).ok())),
                    Err(e) => Err(NodeError::new("RuntimeError", e.to_string())),
                };
                let _ = reply.send(found);
            }
            Call::FindModels {
                name,
                base,
                model_type,
                reply,
            } => {
                let filter = atelier_store::ModelFilter {
                    name: Some(name),
                    base: Some(base),
                    model_type: Some(model_type),
                    ..Default::default()
                };
                let found = match self
                    .state
                    .store
                    .list_models(&filter, atelier_store::ModelOrder::Name, false)
                    .await
                {
                    Ok(rows) => Ok(rows
                        .iter()
                        .filter_map(|r| serde_json::from_str(&r.config).ok())
                        .collect()),
                    Err(e) => Err(NodeError::new("RuntimeError", e.to_string())),
                };
                let _ = reply.send(found);
            }
            Call::ModelLoad {
                complete,
                record,
                submodel,
            } => {
                self.state.events.publish(Event::ToOwner {
                    name: if complete {
                        "model_load_complete"
                    } else {
                        "model_load_started"
                    },
                    owner: row.user_id.to_string(),
                    payload: json!({"config": record, "submodel_type": submodel,
                        "user_id": row.user_id.as_str()}),
                });
            }
            Call::ModelExists { key, reply } => {
                let found = self
                    .state
                    .store
                    .get_model(&key)
                    .await
                    .map(|m| m.is_some())
                    .map_err(|e| NodeError::new("RuntimeError", e.to_string()));
                let _ = reply.send(found);
            }
            Call::Progress {
                message,
                percentage,
                image,
            } => {
                let mut payload = base.clone();
                payload["message"] = json!(message);
                payload["percentage"] = json!(percentage);
                payload["image"] = image.unwrap_or(Value::Null);
                payload["device"] = Value::Null;
                self.state.events.publish(Event::ToOwner {
                    name: "invocation_progress",
                    owner: row.user_id.to_string(),
                    payload,
                });
            }
        }
    }

    async fn load(&self, owner: &Identity, image_name: &str) -> Result<Vec<u8>, NodeError> {
        let not_found = || {
            NodeError::new(
                "ImageFileNotFoundException",
                format!("Image {image_name} not found"),
            )
        };
        if !crate::service::images::safe_name(image_name) {
            return Err(not_found());
        }
        let record = match self.state.store.get_image(image_name).await {
            Ok(Some(record)) => record,
            Ok(None) => return Err(not_found()),
            Err(err) => return Err(NodeError::new("RuntimeError", err.to_string())),
        };
        if !content::can_read_image(owner, crate::service::images::access(&record)) {
            return Err(NodeError::new(
                "PermissionError",
                format!("Not authorized to access image {image_name}"),
            ));
        }
        crate::service::images::read_full(&self.state, &record)
            .await
            .map_err(|_| not_found())
    }

    async fn save(
        &self,
        owner: &Identity,
        new: NewImage,
        png: &[u8],
        thumbnail: &[u8],
    ) -> Result<ImageRef, NodeError> {
        if self.state.multiuser() && !self.owner_allowed(&owner.user_id, false).await {
            return Err(NodeError::new(
                "PermissionError",
                "The queue item's owner is no longer active",
            ));
        }
        if let Some(board_id) = &new.board_id {
            if let Err(err) = crate::service::boards::writable(
                &self.state,
                owner,
                board_id,
                "Not authorized to save images to this board",
            )
            .await
            {
                return Err(NodeError::new(
                    if matches!(err, ApiError::NotFound(_)) {
                        "ValueError"
                    } else {
                        "PermissionError"
                    },
                    format!("{} ({board_id})", err.detail()),
                ));
            }
        }
        let (width, height) = (new.width, new.height);
        let record = crate::service::images::save(&self.state, new, png, thumbnail)
            .await
            .map_err(|e| NodeError::new("OSError", e.detail()))?;
        Ok(ImageRef {
            image_name: record.image_name,
            width: u32::try_from(width).unwrap_or(0),
            height: u32::try_from(height).unwrap_or(0),
        })
    }
}

/// A user lost access (deactivated or deleted): their running item is canceled now (§6.4).
/// Called after admin changes in-process and by the periodic sweep.
pub async fn recheck_running(state: &AppState) {
    let Some(running) = state.processor.running() else {
        return;
    };
    if !state.multiuser() {
        return;
    }
    let allowed = match state.store.get_user(&running.user_id).await {
        Ok(user) => user.is_some_and(|u| u.is_active),
        Err(_) => return,
    };
    if !allowed {
        if let Ok(Some(row)) = state
            .store
            .set_queue_status(running.item_id, QueueItemStatus::Canceled, None)
            .await
        {
            let _ = publish_status(state, &row).await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::panic, clippy::expect_used)]
mod tests {
    use super::*;
    use atelier_graph::Output;

    fn spec(run: atelier_graph::RunFn) -> &'static NodeSpec {
        Box::leak(Box::new(NodeSpec {
            type_name: "test",
            title: "Test",
            version: "1.0.0",
            category: "",
            tags: &[],
            description: "",
            inputs: Vec::new(),
            output: Output {
                type_name: "test_output",
                fields: Vec::new(),
            },
            use_cache: false,
            keeps_extra_keys: false,
            run,
        }))
    }

    type Answer = oneshot::Receiver<Result<Map<String, Value>, NodeError>>;

    fn job(spec: &'static NodeSpec) -> (Job, Answer) {
        let (calls, _rx) = mpsc::unbounded_channel();
        let (reply, answer) = oneshot::channel();
        let job = Job {
            tensors: Default::default(),
            models_dir: std::path::PathBuf::new(),
            spec,
            inputs: Inputs {
                id: "n".into(),
                is_intermediate: false,
                values: Map::new(),
            },
            cancel: Arc::new(AtomicBool::new(false)),
            workflow: None,
            graph: "{}".into(),
            compress_level: 1,
            calls,
            reply,
        };
        (job, answer)
    }

    #[test]
    fn a_panicking_node_fails_its_job_and_the_thread_carries_on() {
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || executor(rx, None, Ok(Compute::cpu())));
        let (bad, answer) = job(spec(|_, _| panic!("boom")));
        tx.send(bad).expect("send");
        let err = answer
            .blocking_recv()
            .expect("answered")
            .expect_err("fails");
        assert_eq!(err.error_type, "PanicException");
        assert_eq!(err.message, "boom");
        let (good, answer) = job(spec(|_, _| {
            let mut out = Map::new();
            out.insert("value".into(), json!(1));
            Ok(out)
        }));
        tx.send(good).expect("send");
        assert_eq!(
            answer.blocking_recv().expect("answered").expect("runs")["value"],
            1
        );
        drop(tx);
        thread
            .join()
            .expect("the thread ends when the channel closes");
    }
}

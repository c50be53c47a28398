//! Atelier's server library: configuration, the HTTP API, services, and the admin commands.
//! `main.rs` only parses arguments and calls into [`cli`].

pub mod cli;
pub mod config;
pub mod events;
pub mod http;
pub mod logging;
pub mod media;
pub mod passwords;
pub mod service;
pub mod socket;
pub mod state;
pub mod token;
pub mod zip;

use crate::config::Config;
use crate::passwords::Hasher;
use crate::state::AppState;
use crate::token::TokenSigner;
use atelier_store::{Store, StoreError, JWT_SECRET_KEY};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error("the JWT secret is missing from app_settings (key 'jwt_secret'); restore it or set a new one")]
    MissingSecret,
    #[error("cannot create {path}: {source}")]
    Dirs {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot install the default workflows and style presets: {0}")]
    Defaults(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

/// Opens and migrates the store the configuration names.
pub async fn open_store(config: &Config) -> Result<Store, StartError> {
    let store = if config.use_memory_db() {
        Store::open_in_memory().await?
    } else {
        let dir = config.db_dir();
        std::fs::create_dir_all(&dir).map_err(|source| StartError::Dirs {
            path: dir.display().to_string(),
            source,
        })?;
        Store::open_sqlite(&config.database_path()).await?
    };
    let report = store.migrate().await?;
    if report.from_version != report.to_version {
        tracing::info!(
            from = report.from_version,
            to = report.to_version,
            "database migrated"
        );
    }
    Ok(store)
}

/// Builds the shared state: store, token signer (secret read once, at start-up) and hasher.
pub async fn build_state(config: Config) -> Result<AppState, StartError> {
    let store = open_store(&config).await?;
    let secret = store
        .get_setting(JWT_SECRET_KEY)
        .await?
        .ok_or(StartError::MissingSecret)?;
    let log = logging::LogControl::detached(logging::level_number(config.log_level()));
    let multiuser = config.multiuser();
    let (layer, io) = socketioxide::SocketIo::builder()
        .req_path("/ws/socket.io")
        .build_layer();
    let state = AppState {
        runtime: Arc::new(tokio::sync::Mutex::new(config.clone())),
        config: Arc::new(config),
        store,
        signer: Arc::new(TokenSigner::new(&secret)),
        hasher: Hasher::default(),
        log,
        downloads: Default::default(),
        events: Arc::new(events::SocketBus::new(io.clone(), multiuser)),
        sockets: io.clone(),
        socket_layer: state::SocketLayer(layer),
        processor: Default::default(),
        tensors: Default::default(),
        models: Default::default(),
    };
    socket::register(&io, state.clone());
    // Start-up recovery: work a crash interrupted cannot resume (queue-and-events.md §1.4).
    match state.store.fail_interrupted_items().await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            failed = n,
            "failed queue items interrupted by the last shutdown"
        ),
        Err(err) => tracing::warn!(error = %err, "could not reset interrupted queue items"),
    }
    prune_queue_at_start_up(&state).await;
    service::downloads::clear_stale(&state).await;
    // Start-up recovery: files a crash left without a record.
    match service::images::sweep_orphan_files(&state).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            removed = n,
            "removed image files left behind by an interrupted write"
        ),
        Err(err) => tracing::warn!(error = %err.detail(), "could not sweep orphan image files"),
    }
    // Model manager start-up (models.md §7): stale temp folders, optional scan, README.
    service::models::start_up(&state).await;
    // The bundled defaults are synchronised at every start (workflows-and-state.md §1.4, §3.2).
    service::workflows::sync_defaults(&state)
        .await
        .map_err(|e| StartError::Defaults(e.to_string()))?;
    service::style_presets::replace_defaults(&state)
        .await
        .map_err(|e| StartError::Defaults(e.to_string()))?;
    Ok(state)
}

/// `clear_queue_on_startup` and `max_queue_history` (queue-and-events.md §5.5), after the
/// interrupted items were reset.
async fn prune_queue_at_start_up(state: &AppState) {
    use serde_json::Value;
    let config = &state.config;
    let outcome = if config
        .get("clear_queue_on_startup")
        .and_then(Value::as_bool)
        == Some(true)
    {
        let scope = atelier_store::QueueScope {
            queue_id: Some("default".to_owned()),
            ..Default::default()
        };
        state.store.clear_queue(&scope).await
    } else if let Some(keep) = config.get("max_queue_history").and_then(Value::as_i64) {
        state.store.prune_history(keep).await
    } else {
        return;
    };
    match outcome {
        Ok(0) => {}
        Ok(n) => tracing::info!(deleted = n, "pruned the queue history"),
        Err(err) => tracing::warn!(error = %err, "could not prune the queue history"),
    }
}

/// Binds `host:port`. When the port is taken, tries the next ones (as the reference does) and
/// warns; port 0 asks the OS for any free port.
pub async fn bind(host: &str, port: u16) -> Result<TcpListener, StartError> {
    const TRIES: u16 = 100;
    let mut last_err = None;
    for offset in 0..TRIES {
        let Some(candidate) = port.checked_add(offset) else {
            break;
        };
        match TcpListener::bind((host, candidate)).await {
            Ok(listener) => {
                if offset > 0 {
                    tracing::warn!(
                        requested = port,
                        bound = candidate,
                        "port {port} is in use; using port {candidate} instead"
                    );
                }
                return Ok(listener);
            }
            Err(err) if err.kind() == std::io::ErrorKind::AddrInUse && port != 0 => {
                last_err = Some(err)
            }
            Err(source) => {
                return Err(StartError::Bind {
                    addr: format!("{host}:{candidate}"),
                    source,
                })
            }
        }
    }
    Err(StartError::Bind {
        addr: format!("{host}:{port}"),
        source: last_err.unwrap_or_else(|| std::io::Error::other("no free port")),
    })
}

/// A server running on a background task.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub state: AppState,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl RunningServer {
    /// Stops accepting connections, finishes in-flight requests and closes the database.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match (&mut self.task).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::error!(error = %err, "server task failed"),
            Err(err) => tracing::error!(error = %err, "server task panicked"),
        }
        self.state.store.close().await;
    }

    /// Waits until the server stops by itself (it only does on error).
    pub async fn wait(self) -> std::io::Result<()> {
        match self.task.await {
            Ok(result) => result,
            Err(err) => Err(std::io::Error::other(err)),
        }
    }
}

/// Serves the API on `listener` until [`RunningServer::shutdown`].
pub fn start(state: AppState, listener: TcpListener) -> Result<RunningServer, StartError> {
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: "listener".to_owned(),
        source,
    })?;
    let (tx, rx) = oneshot::channel::<()>();
    let app = http::app(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let sweep_state = state.clone();
    let sweep = tokio::spawn(async move {
        let mut tick = tokio::time::interval(socket::SWEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            socket::sweep(&sweep_state).await;
            service::worker::recheck_running(&sweep_state).await;
        }
    });
    let worker = service::worker::spawn(state.clone());
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
        sweep.abort();
        let _ = sweep.await;
        worker.stop().await;
        served
    });
    Ok(RunningServer {
        addr,
        state,
        shutdown: Some(tx),
        task,
    })
}

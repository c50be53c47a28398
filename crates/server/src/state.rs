//! `AppState`: what every handler and service reaches the rest of the server through.

use crate::config::Config;
use crate::logging::LogControl;
use crate::passwords::Hasher;
use crate::token::TokenSigner;
use atelier_store::Store;
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Store,
    pub signer: Arc<TokenSigner>,
    pub hasher: Hasher,
    /// The settings that may change at run time (`PATCH /app/runtime_config`); `config` is the
    /// start-up snapshot, which is what everything else reads.
    pub runtime: Arc<tokio::sync::Mutex<Config>>,
    pub log: LogControl,
    /// Bulk downloads being built or waiting to be fetched.
    pub downloads: crate::service::downloads::Registry,
    /// Where services publish events (after their writes commit).
    pub events: Arc<dyn crate::events::EventBus>,
    /// The socket.io server, for re-authorizing open connections.
    pub sockets: socketioxide::SocketIo,
    /// The queue processor's switches.
    pub processor: Arc<crate::service::queue::ProcessorState>,
    /// Latents and conditioning passed between generation nodes by name.
    pub tensors: crate::service::tensors::TensorStore,
    /// The model manager's install jobs and per-model claims.
    pub models: Arc<crate::service::models::ModelsState>,
    /// The socket.io service, mounted by the HTTP router.
    pub socket_layer: SocketLayer,
}

/// The socket.io layer (a newtype only so `AppState` can be `Debug`).
#[derive(Clone)]
pub struct SocketLayer(pub socketioxide::layer::SocketIoLayer);

impl std::fmt::Debug for SocketLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SocketLayer")
    }
}

impl AppState {
    pub fn multiuser(&self) -> bool {
        self.config.multiuser()
    }
}

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
}

impl AppState {
    pub fn multiuser(&self) -> bool {
        self.config.multiuser()
    }
}

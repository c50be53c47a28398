//! `AppState`: what every handler and service reaches the rest of the server through.

use crate::config::Config;
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
}

impl AppState {
    pub fn multiuser(&self) -> bool {
        self.config.multiuser()
    }
}

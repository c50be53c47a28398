//! What a running node may ask of the server: images in and out, progress, cancellation.

use image::DynamicImage;
use serde_json::Value;

/// A node's failure: the error class clients see (`error_type`) and a message safe to show.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeError {
    pub error_type: String,
    pub message: String,
}

impl NodeError {
    pub fn new(error_type: &str, message: impl Into<String>) -> Self {
        Self {
            error_type: error_type.to_owned(),
            message: message.into(),
        }
    }

    /// A bad input value (`ValueError` in the reference).
    pub fn value(message: impl Into<String>) -> Self {
        Self::new("ValueError", message)
    }

    /// Work stopped because the item was canceled.
    pub fn canceled() -> Self {
        Self::new("CanceledException", "The queue item was canceled")
    }

    pub fn is_canceled(&self) -> bool {
        self.error_type == "CanceledException"
    }
}

impl std::fmt::Display for NodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.error_type, self.message)
    }
}

/// How a node wants its image stored (generation.md §6).
#[derive(Debug, Clone, PartialEq)]
pub struct SaveRequest {
    /// The execution node id.
    pub node_id: String,
    pub board_id: Option<String>,
    /// The `metadata` input, embedded as `invokeai_metadata`.
    pub metadata: Option<Value>,
    pub is_intermediate: bool,
}

/// A stored image, as `ImageField` plus its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub image_name: String,
    pub width: u32,
    pub height: u32,
}

/// The server side of a running node. Calls may block (they cross to the async runtime).
pub trait Context {
    /// Loads an image the queue item's owner may read.
    fn load_image(&mut self, image_name: &str) -> Result<DynamicImage, NodeError>;
    /// Stores an image for the queue item's owner.
    fn save_image(
        &mut self,
        image: &DynamicImage,
        request: SaveRequest,
    ) -> Result<ImageRef, NodeError>;
    /// Whether the item was canceled; long nodes check it and return [`NodeError::canceled`].
    fn is_canceled(&self) -> bool;
    /// Reports progress of a long node (`invocation_progress`).
    fn progress(&mut self, message: &str, percentage: Option<f64>);
    /// The server's version string (`core_metadata` adds it as `app_version`).
    fn app_version(&self) -> String;
    /// Whether a model with this key is installed (model loaders check it). A context without
    /// a model manager knows no models.
    fn model_exists(&mut self, key: &str) -> Result<bool, NodeError> {
        let _ = key;
        Ok(false)
    }

    /// The size in pixels of stored latents, or `None` when no latents have that name.
    fn latents_size(&mut self, name: &str) -> Result<Option<(u32, u32)>, NodeError> {
        let _ = name;
        Ok(None)
    }

    // Generation (generation.md §8.3–8.6). Requests are the node's checked inputs as JSON;
    // tensors stay on the server and are returned by name. A context without an engine
    // refuses them.

    /// SD noise for `seed` at `width`×`height` pixels; returns its `latents_name`.
    fn make_noise(&mut self, seed: u32, width: u32, height: u32) -> Result<String, NodeError> {
        let _ = (seed, width, height);
        Err(no_engine())
    }
    /// Encodes a `compel` / `sdxl_compel_prompt` request; returns its `conditioning_name`.
    fn encode_prompt(&mut self, request: &Value) -> Result<String, NodeError> {
        let _ = request;
        Err(no_engine())
    }
    /// Runs `denoise_latents`; returns the latents' name and their size in pixels.
    fn denoise(&mut self, request: &Value) -> Result<(String, u32, u32), NodeError> {
        let _ = request;
        Err(no_engine())
    }
    /// Decodes latents with a VAE (`l2i`).
    fn decode_latents(&mut self, request: &Value) -> Result<DynamicImage, NodeError> {
        let _ = request;
        Err(no_engine())
    }
    /// Encodes an image with a VAE (`i2l`); returns the latents' name and size in pixels.
    fn encode_image(
        &mut self,
        image: &DynamicImage,
        request: &Value,
    ) -> Result<(String, u32, u32), NodeError> {
        let _ = (image, request);
        Err(no_engine())
    }
}

fn no_engine() -> NodeError {
    NodeError::new(
        "NotImplementedError",
        "This server has no Stable Diffusion engine for this node",
    )
}

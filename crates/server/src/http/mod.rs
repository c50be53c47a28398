//! The HTTP surface: routes, the middleware stack and the OpenAPI document.
//!
//! Request flow, outermost first: CORS (every response, errors included) → `base_url` prefix
//! removal (so proxies that keep or strip the prefix both work) → sliding token refresh →
//! JSON body parsing → routing → guards → handlers.

pub mod app;
pub mod audit;
pub mod auth;
pub mod boards;
pub mod body;
pub mod client;
pub mod client_state;
pub mod content;
pub mod cors;
pub mod error;
pub mod extract;
pub mod gallery;
pub mod generate;
pub mod images;
pub mod models;
pub mod openapi;
pub mod query;
pub mod queue;
pub mod refresh;
pub mod settings;
pub mod style_presets;
pub mod ui;
pub mod workflows;

use crate::state::AppState;
use axum::extract::{Request, State};
use axum::http::Uri;
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use error::ApiError;

/// The whole application, ready to serve.
pub fn app(state: AppState) -> Router {
    let api = Router::new()
        .merge(auth::routes())
        .merge(audit::routes())
        .merge(app::routes())
        .merge(settings::routes())
        .merge(boards::routes())
        .merge(gallery::routes())
        .merge(content::routes())
        .merge(client_state::routes())
        .merge(queue::routes())
        .merge(generate::routes())
        .merge(workflows::routes(
            usize::try_from(state.config.max_upload_bytes()).unwrap_or(usize::MAX),
        ))
        .merge(style_presets::routes(
            usize::try_from(state.config.max_upload_bytes()).unwrap_or(usize::MAX),
        ))
        .merge(images::routes(
            usize::try_from(state.config.max_upload_bytes()).unwrap_or(usize::MAX),
        ))
        .merge(models::routes(
            usize::try_from(state.config.max_upload_bytes()).unwrap_or(usize::MAX),
        ))
        .merge(openapi::routes())
        .merge(ui::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(from_fn_with_state(state.clone(), body::parse_json_body))
        .with_state(state.clone());
    // An outer router whose layers run before routing, so the prefix removal takes effect.
    Router::new()
        .fallback_service(api)
        .layer(state.socket_layer.0.clone())
        .layer(from_fn_with_state(state.clone(), refresh::sliding_refresh))
        .layer(from_fn_with_state(state.clone(), strip_base_url))
        .layer(from_fn_with_state(state, cors::cors))
}

/// Unknown paths: JSON 404 under `/api/` and `/ws/`, the web UI's entry page elsewhere.
async fn not_found(State(state): State<AppState>, uri: Uri) -> Response {
    let path = uri.path();
    if path.starts_with("/api/") || path.starts_with("/ws/") || path == "/api" || path == "/ws" {
        ApiError::not_found("Not Found").into_response()
    } else {
        ui::index_page(state.config.base_url())
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed("Method Not Allowed".to_owned())
}

/// Removes the configured `base_url` prefix from request paths that carry it.
async fn strip_base_url(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    if let Some(base) = state.config.base_url() {
        let path = request.uri().path();
        let rest = path.strip_prefix(base);
        if let Some(rest) = rest.filter(|r| r.is_empty() || r.starts_with('/')) {
            let rest = if rest.is_empty() { "/" } else { rest };
            let new = match request.uri().query() {
                Some(q) => format!("{rest}?{q}"),
                None => rest.to_owned(),
            };
            if let Ok(uri) = new.parse::<Uri>() {
                *request.uri_mut() = uri;
            }
        }
    }
    next.run(request).await
}

//! The OpenAPI 3 document, generated from the handlers' annotations, served at
//! `/openapi.json` with Swagger UI at `/docs` (assets embedded in the binary: nothing is
//! fetched at build or run time).

use crate::http::{
    app, audit, auth, boards, client_state, content, gallery, generate, images, models, queue,
    settings, style_presets, workflows,
};
use crate::state::AppState;
use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

#[derive(OpenApi)]
#[openapi(
    info(title = "Atelier", description = "A multi-user image-generation server speaking InvokeAI's API."),
    paths(
        auth::status, auth::setup, auth::login, auth::logout, auth::media_cookie,
        auth::get_me, auth::patch_me, auth::generate,
        auth::list_users, auth::create_user, auth::get_user, auth::update_user, auth::delete_user,
        audit::list,
        app::version, app::app_deps, app::patchmatch_status, app::generation_device_options,
        settings::get_runtime_config, settings::patch_runtime_config, settings::get_logging, settings::set_logging,
        app::external_providers_status, app::external_providers_config,
        boards::create, boards::list, boards::get_board, boards::update, boards::delete, boards::image_names,
        images::upload, images::list, images::names, images::images_by_names, images::get_image, images::update_image,
        images::delete_image, images::metadata, images::workflow, images::urls, images::full, images::thumbnail,
        images::delete_batch, images::delete_uncategorized, images::star, images::unstar,
        images::count_intermediates, images::clear_intermediates, images::download, images::get_download,
        images::add_to_board, images::remove_from_board, images::add_batch_to_board, images::remove_batch_from_board,
        gallery::items, gallery::item_names, gallery::item_names_deprecated, gallery::by_date,
        gallery::date_image_names, gallery::date_item_names,
        content::reassign,
        generate::generate,
        queue::enqueue_batch, queue::list_all, queue::item_ids, queue::status, queue::current, queue::next,
        queue::batch_status, queue::counts_by_destination, queue::get_item, queue::cancel, queue::pause,
        queue::resume, queue::prune, queue::clear, queue::items_by_ids, queue::item_summaries_by_ids,
        queue::cancel_by_batch_ids, queue::cancel_by_destination, queue::cancel_all_except_current,
        queue::delete_all_except_current, queue::retry_items_by_id, queue::delete_item, queue::delete_by_destination,
        client_state::get_by_key, client_state::set_by_key, client_state::get_keys_by_prefix,
        client_state::delete_by_key, client_state::delete_all,
        workflows::list, workflows::create, workflows::get_workflow, workflows::update, workflows::delete,
        workflows::set_public, workflows::opened_at, workflows::set_thumbnail, workflows::delete_thumbnail,
        workflows::get_thumbnail, workflows::tags, workflows::counts_by_tag, workflows::counts_by_category,
        style_presets::list, style_presets::create, style_presets::get_preset, style_presets::update,
        style_presets::delete, style_presets::image, style_presets::export, style_presets::import,
        models::list, models::missing, models::get_by_attrs, models::get_by_hash, models::get_model,
        models::update, models::delete, models::reidentify, models::convert, models::bulk_delete, models::bulk_reidentify,
        models::image, models::set_image, models::delete_image, models::scan_folder, models::install,
        models::install_huggingface, models::list_jobs, models::prune_jobs, models::get_job,
        models::cancel_job, models::pause_job, models::resume_job, models::restart_failed,
        models::restart_file, models::starter_models, models::stats, models::empty_model_cache,
        models::list_orphans, models::delete_orphans,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "Setup, login and the signed-in user"),
        (name = "users", description = "User administration (admins only)"),
        (name = "app", description = "Server information"),
        (name = "boards", description = "Boards and their visibility"),
        (name = "images", description = "Images, their files and metadata"),
        (name = "content", description = "Moving content between owners (admins)"),
        (name = "queue", description = "The session queue"),
        (name = "generate", description = "One-call generation (Atelier's extension)"),
        (name = "client_state", description = "Per-user UI state"),
        (name = "workflows", description = "The workflow library, sharing and thumbnails"),
        (name = "style_presets", description = "Prompt templates"),
        (name = "models", description = "The model manager: records, installs and downloads"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The document: the handlers' paths plus the node catalogue's schemas (the workflow editor
/// builds its node templates from `components.schemas`).
pub fn document() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(serde_json::Value::as_object_mut)
    {
        schemas.extend(atelier_graph::openapi::schemas());
    }
    doc
}

pub fn routes() -> Router<AppState> {
    Router::from(SwaggerUi::new("/docs").external_url_unchecked("/openapi.json", document()))
}

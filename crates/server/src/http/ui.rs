//! The web UI: the entry page at `/` (and at every unknown non-API path, so client routes and
//! bookmarks load the app) and its static files at `/ui/…`, all embedded in the binary.
//!
//! The UI is plain ES modules and hand-written CSS under `assets/ui/` (README, "Web UI"): no
//! build step, nothing fetched at run time. The entry page gets a `<base href>` naming the
//! configured `base_url`, so the relative URLs of the scripts and of every API call work behind
//! a sub-path proxy and from deep paths alike.

use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// `(path under /ui/, bytes)`. Every file under `assets/ui/` must be listed (a unit test checks).
macro_rules! ui_files {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_bytes!(concat!("../../assets/ui/", $path)) as &[u8])),*]
    };
}

const FILES: &[(&str, &[u8])] = ui_files![
    "app.css",
    "app.js",
    "api.js",
    "dom.js",
    "icons.js",
    "session.js",
    "socket.js",
    "views/audit.js",
    "views/gallery.js",
    "views/generate.js",
    "views/login.js",
    "views/models.js",
    "views/profile.js",
    "views/queue.js",
    "views/setup.js",
    "views/users.js",
    "views/workflows.js",
    "favicon.svg",
];

const INDEX_HTML: &str = include_str!("../../assets/ui/index.html");

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/ui/{*path}", get(asset))
}

/// The entry page, with `<base href>` set to the public root of the server.
pub async fn index(State(state): State<AppState>) -> Response {
    index_page(state.config.base_url())
}

pub fn index_page(base_url: Option<&str>) -> Response {
    (
        [(header::CACHE_CONTROL, "no-cache")],
        Html(render_index(base_url)),
    )
        .into_response()
}

fn render_index(base_url: Option<&str>) -> String {
    let base = format!("{}/", base_url.unwrap_or(""));
    INDEX_HTML.replace("{{BASE_HREF}}", &html_attr(&base))
}

async fn asset(Path(path): Path<String>) -> Response {
    match FILES.iter().find(|(p, _)| *p == path) {
        Some((p, bytes)) => (
            [
                (header::CONTENT_TYPE, content_type(p)),
                // Assets change with the binary; revalidation is cheap on a LAN and avoids
                // stale modules after an upgrade.
                (header::CACHE_CONTROL, "no-cache"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            *bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "Not Found").into_response(),
    }
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("html") => "text/html; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn html_attr(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn walk(dir: &PathBuf, prefix: &str, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("assets/ui is readable") {
            let entry = entry.expect("directory entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = format!("{prefix}{name}");
            if entry.path().is_dir() {
                walk(&entry.path(), &format!("{rel}/"), out);
            } else if rel != "index.html" {
                out.push(rel);
            }
        }
    }

    #[test]
    fn every_asset_file_is_embedded() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/ui");
        let mut on_disk = Vec::new();
        walk(&dir, "", &mut on_disk);
        on_disk.sort();
        let mut listed: Vec<String> = FILES.iter().map(|(p, _)| (*p).to_owned()).collect();
        listed.sort();
        assert_eq!(on_disk, listed, "update FILES in http/ui.rs");
    }

    #[test]
    fn content_types_follow_the_extension() {
        assert_eq!(content_type("views/a.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("app.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("favicon.svg"), "image/svg+xml");
    }

    #[test]
    fn the_base_href_names_the_public_root() {
        assert!(render_index(None).contains(r#"<base href="/">"#));
        assert!(render_index(Some("/invoke")).contains(r#"<base href="/invoke/">"#));
        assert_eq!(html_attr("/a\"b/"), "/a&quot;b/");
    }

    #[test]
    fn the_entry_page_loads_only_embedded_files() {
        let page = render_index(None);
        for url in ["ui/app.js", "ui/app.css", "ui/favicon.svg"] {
            assert!(page.contains(url), "{url}");
            let path = url.trim_start_matches("ui/");
            assert!(FILES.iter().any(|(p, _)| *p == path), "{path} is embedded");
        }
        assert!(
            !page.contains("http://") && !page.contains("https://"),
            "no external URL"
        );
    }
}

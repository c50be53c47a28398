//! `/api/v1/app/*` information endpoints, the fallbacks for unknown paths and methods, and the
//! OpenAPI document with its Swagger UI (app-info.md, README decision 6).

use crate::common::*;
use reqwest::Method;
use serde_json::{json, Value};

const MASK: &str = "**********";

/// A multi-user server with its admin and one ordinary user; returns `(server, admin, user)`.
async fn server_with_users(builder: Builder) -> (TestServer, String, String) {
    let s = builder.multiuser(true).start().await;
    let admin = s.setup_admin().await;
    let (_, user) = s.user_with_token(&admin, "u@example.com").await;
    (s, admin, user)
}

#[tokio::test]
async fn version_is_public() {
    let s = TestServer::multiuser().await;
    let r = s.get("/api/v1/app/version", None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let version = r.body["version"].as_str().expect("version string");
    assert_eq!(r.body.as_object().unwrap().len(), 1, "{}", r.text);
    let core = version.split('-').next().unwrap();
    let parts: Vec<&str> = core.split('.').collect();
    assert_eq!(parts.len(), 3, "{version}");
    assert!(parts.iter().all(|p| p.parse::<u32>().is_ok()), "{version}");
    // Also with a bad token: nothing is checked.
    assert_eq!(
        s.get("/api/v1/app/version", Some("garbage")).await.status,
        200
    );
}

#[tokio::test]
async fn user_endpoints_need_a_signed_in_user() {
    let (s, _admin, user) = server_with_users(TestServer::builder()).await;
    for path in [
        "/api/v1/app/app_deps",
        "/api/v1/app/patchmatch_status",
        "/api/v1/app/generation_device_options",
        "/api/v1/app/external_providers/status",
    ] {
        let r = s.get(path, None).await;
        r.assert_detail(401, "Authentication required");
        assert!(r.header("www-authenticate").is_none(), "{path}");
        s.get(path, Some("garbage"))
            .await
            .assert_detail(401, "Invalid or expired token");
        assert_eq!(s.get(path, Some(&user)).await.status, 200, "{path}");
    }

    let r = s.get("/api/v1/app/patchmatch_status", Some(&user)).await;
    assert_eq!((r.text.as_str(), &r.body), ("false", &json!(false)));
    let r = s
        .get("/api/v1/app/generation_device_options", Some(&user))
        .await;
    assert_eq!(r.body, json!([{"device": "cpu", "name": "CPU"}]));
    let r = s
        .get("/api/v1/app/external_providers/status", Some(&user))
        .await;
    assert_eq!(r.body, json!([]));

    let r = s.get("/api/v1/app/app_deps", Some(&user)).await;
    let deps = r.body.as_object().expect("object");
    assert!(
        deps.values().all(Value::is_string),
        "versions are strings: {}",
        r.text
    );
    assert!(deps.contains_key("CUDA"), "{}", r.text);
    let keys: Vec<String> = deps.keys().map(|k| k.to_lowercase()).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "keys sorted case-insensitively: {}", r.text);
    // The raw text keeps that order too (not just the parsed map).
    let positions: Vec<usize> = deps
        .keys()
        .map(|k| r.text.find(&format!("\"{k}\"")).unwrap())
        .collect();
    let mut by_text = deps.keys().zip(positions).collect::<Vec<_>>();
    by_text.sort_by_key(|(_, p)| *p);
    let text_order: Vec<String> = by_text.iter().map(|(k, _)| k.to_lowercase()).collect();
    assert_eq!(text_order, sorted, "{}", r.text);
}

#[tokio::test]
async fn single_user_mode_serves_everything_anonymously() {
    let s = TestServer::single_user().await;
    for path in [
        "/api/v1/app/version",
        "/api/v1/app/app_deps",
        "/api/v1/app/patchmatch_status",
        "/api/v1/app/generation_device_options",
        "/api/v1/app/runtime_config",
        "/api/v1/app/external_providers/config",
    ] {
        let r = s.get(path, None).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text);
    }
}

#[tokio::test]
async fn runtime_config_is_for_admins_and_masks_secrets() {
    let builder = TestServer::builder()
        .set("external_openai_api_key", json!("sk-secret-openai"))
        .set("external_gemini_base_url", json!("https://gemini.example"))
        .set(
            "remote_api_tokens",
            json!([{"url_regex": "civitai.com", "token": "civitai-secret"},
                   {"url_regex": "huggingface.co", "token": "hf-secret"}]),
        )
        .set("download_proxy", json!("http://user:pw@proxy.example:3128"));
    let (s, admin, user) = server_with_users(builder).await;

    for path in [
        "/api/v1/app/runtime_config",
        "/api/v1/app/external_providers/config",
    ] {
        s.get(path, None)
            .await
            .assert_detail(401, "Authentication required");
        s.get(path, Some(&user))
            .await
            .assert_detail(403, "Admin privileges required");
    }

    let r = s.get("/api/v1/app/runtime_config", Some(&admin)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let body = r.body.as_object().unwrap();
    let mut keys: Vec<&str> = body.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["config", "set_fields"]);
    let set_fields: Vec<&str> = r.body["set_fields"]
        .as_array()
        .expect("set_fields list")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for key in [
        "multiuser",
        "external_openai_api_key",
        "remote_api_tokens",
        "download_proxy",
    ] {
        assert!(set_fields.contains(&key), "{key} in {set_fields:?}");
    }
    assert!(!set_fields.contains(&"port"), "{set_fields:?}");
    let config = &r.body["config"];
    assert_eq!(config["multiuser"], true);
    assert_eq!(config["max_queue_size"], 10_000);
    assert_eq!(config["session_queue_mode"], "round_robin");
    assert_eq!(config["external_openai_api_key"], MASK);
    assert_eq!(config["external_gemini_api_key"], Value::Null);
    assert_eq!(config["external_gemini_base_url"], "https://gemini.example");
    assert_eq!(
        config["remote_api_tokens"],
        json!([{"url_regex": "civitai.com", "token": MASK},
               {"url_regex": "huggingface.co", "token": MASK}])
    );
    assert_eq!(config["download_proxy"], MASK);
    for secret in ["sk-secret-openai", "civitai-secret", "hf-secret", "user:pw"] {
        assert!(!r.text.contains(secret), "{secret} leaked: {}", r.text);
    }
    // The in-memory values are untouched.
    assert_eq!(
        s.state().config.get("download_proxy"),
        Some(&json!("http://user:pw@proxy.example:3128"))
    );

    let r = s
        .get("/api/v1/app/external_providers/config", Some(&admin))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.body,
        json!([
            {"provider_id": "alibabacloud", "api_key_configured": false, "base_url": null},
            {"provider_id": "gemini", "api_key_configured": false, "base_url": "https://gemini.example"},
            {"provider_id": "openai", "api_key_configured": true, "base_url": null},
            {"provider_id": "seedream", "api_key_configured": false, "base_url": null},
        ])
    );
    assert!(!r.text.contains("sk-secret-openai"));
}

#[tokio::test]
async fn a_proxy_without_credentials_is_not_masked() {
    let builder = TestServer::builder().set("download_proxy", json!("http://proxy.example:3128"));
    let (s, admin, _) = server_with_users(builder).await;
    let r = s.get("/api/v1/app/runtime_config", Some(&admin)).await;
    assert_eq!(
        r.body["config"]["download_proxy"],
        "http://proxy.example:3128"
    );
    assert_eq!(r.body["config"]["remote_api_tokens"], Value::Null);
    assert_eq!(r.body["config"]["external_openai_api_key"], Value::Null);
}

#[tokio::test]
async fn unknown_api_and_ws_paths_are_json_404s() {
    let s = TestServer::multiuser().await;
    for path in [
        "/api/v1/nope",
        "/api/v1/app/nope",
        "/api/v9/auth/login",
        "/api",
        "/api/",
        "/ws/nope",
        "/ws",
        "/api/v1/auth/users/x/extra",
    ] {
        let r = s.get(path, None).await;
        r.assert_detail(404, "Not Found");
        assert!(
            r.header("content-type")
                .unwrap()
                .starts_with("application/json"),
            "{path}"
        );
        let r = s.post(path, None, &json!({})).await;
        r.assert_detail(404, "Not Found");
    }
}

#[tokio::test]
async fn a_wrong_method_is_a_json_405() {
    let s = TestServer::multiuser().await;
    for (method, path, allowed) in [
        (Method::GET, "/api/v1/auth/login", "POST"),
        (Method::DELETE, "/api/v1/auth/status", "GET"),
        (Method::PUT, "/api/v1/auth/me", "PATCH"),
        (Method::POST, "/api/v1/app/version", "GET"),
        (Method::DELETE, "/api/v1/auth/users", "POST"),
        (Method::OPTIONS, "/api/v1/auth/me", "GET"),
    ] {
        let r = s.send(method.clone(), path, None, None, &[]).await;
        r.assert_detail(405, "Method Not Allowed");
        let allow: Vec<&str> = r
            .header("allow")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .collect();
        assert!(allow.contains(&allowed), "{method} {path}: {allow:?}");
        assert!(
            !allow.contains(&method.as_str()),
            "{method} {path}: {allow:?}"
        );
    }
}

#[tokio::test]
async fn other_unknown_paths_serve_the_web_page() {
    let s = TestServer::multiuser().await;
    for path in ["/", "/gallery", "/some/deep/client/route", "/apix", "/wsx"] {
        let r = s.get(path, None).await;
        assert_eq!(r.status, 200, "{path}");
        assert!(
            r.header("content-type").unwrap().starts_with("text/html"),
            "{path}"
        );
        assert!(
            r.text.to_lowercase().contains("<html"),
            "{path}: {}",
            r.text
        );
    }
}

#[tokio::test]
async fn the_openapi_document_is_public_and_lists_the_auth_api() {
    let s = TestServer::multiuser().await;
    let r = s.get("/openapi.json", None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    assert!(
        r.body["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        r.body["openapi"]
    );
    let paths = r.body["paths"].as_object().expect("paths");
    for (path, method) in [
        ("/api/v1/auth/status", "get"),
        ("/api/v1/auth/setup", "post"),
        ("/api/v1/auth/login", "post"),
        ("/api/v1/auth/logout", "post"),
        ("/api/v1/auth/media-cookie", "post"),
        ("/api/v1/auth/me", "get"),
        ("/api/v1/auth/me", "patch"),
        ("/api/v1/auth/generate-password", "get"),
        ("/api/v1/auth/users", "get"),
        ("/api/v1/auth/users", "post"),
        ("/api/v1/auth/users/{user_id}", "delete"),
        ("/api/v1/auth/audit", "get"),
        ("/api/v1/app/version", "get"),
        ("/api/v1/app/runtime_config", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing"
        );
    }
    assert!(r.body["components"]["schemas"]["UserDTO"].is_object());
    // The node catalogue: one schema per invocation, its output, and the graph's node union.
    let schemas = &r.body["components"]["schemas"];
    let resize = &schemas["ImgResizeInvocation"];
    assert_eq!(resize["class"], "invocation");
    assert_eq!(resize["properties"]["type"]["default"], "img_resize");
    assert_eq!(resize["properties"]["resample_mode"]["default"], "bicubic");
    assert_eq!(resize["output"]["$ref"], "#/components/schemas/ImageOutput");
    assert_eq!(schemas["ImageOutput"]["class"], "output");
    assert_eq!(
        schemas["Graph"]["properties"]["nodes"]["additionalProperties"]["discriminator"]["mapping"]
            ["core_metadata"],
        "#/components/schemas/CoreMetadataInvocation"
    );
    // Public in single-user mode too, and with garbage credentials.
    let s = TestServer::single_user().await;
    assert_eq!(s.get("/openapi.json", Some("garbage")).await.status, 200);
}

#[tokio::test]
async fn swagger_ui_is_served_from_embedded_assets() {
    let s = TestServer::multiuser().await;
    let r = s.get("/docs", None).await;
    match r.status {
        301 | 302 | 303 | 307 | 308 => {
            let location = r.header("location").unwrap();
            assert!(location.ends_with("/docs/"), "{location}");
        }
        200 => assert!(r.text.contains("swagger"), "{}", r.text),
        other => panic!("/docs answered {other}: {}", r.text),
    }
    let r = s.get("/docs/", None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(r.text.contains("swagger-ui"), "{}", r.text);
    // The UI's script and its initializer come from the binary and point at our document.
    let r = s.get("/docs/swagger-ui-bundle.js", None).await;
    assert_eq!(r.status, 200);
    assert!(r.text.len() > 10_000);
    let r = s.get("/docs/swagger-initializer.js", None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("/openapi.json"), "{}", r.text);
}

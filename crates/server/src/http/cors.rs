//! CORS exactly as config.md §7 describes, applied to every response including errors.
//! Written by hand because the contract's details (echoing the origin when credentials are on,
//! the `Disallowed CORS …` preflight refusals, `*` replaced by the origin when a `Cookie` is
//! sent) differ from what generic CORS layers do.

use crate::state::AppState;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

const ALL_METHODS: &str = "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT";
const SAFELISTED_HEADERS: [&str; 4] = [
    "Accept",
    "Accept-Language",
    "Content-Language",
    "Content-Type",
];

pub async fn cors(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(origin) = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_owned)
    else {
        return next.run(request).await;
    };
    // Socket.IO accepts any origin regardless of these settings.
    if request.uri().path().ends_with("/ws/socket.io")
        || request.uri().path().contains("/ws/socket.io/")
    {
        return next.run(request).await;
    }
    let config = &state.config;
    let credentials = config.allow_credentials();
    let origins = config.allow_origins();
    let any_origin = origins.iter().any(|o| o == "*");
    let origin_ok = any_origin || origins.contains(&origin);

    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        return preflight_response(&state, request.headers(), &origin, origin_ok, any_origin);
    }

    let has_cookie = request.headers().contains_key(header::COOKIE);
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("X-Refreshed-Token"),
    );
    if credentials {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if any_origin && !has_cookie {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
    } else if origin_ok {
        if let Ok(value) = HeaderValue::from_str(&origin) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        }
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}

fn preflight_response(
    state: &AppState,
    request: &HeaderMap,
    origin: &str,
    origin_ok: bool,
    any_origin: bool,
) -> Response {
    let config = &state.config;
    let credentials = config.allow_credentials();
    let methods = config.allow_methods();
    let all_methods = methods.iter().any(|m| m == "*");
    let all_headers = config.allow_headers().iter().any(|h| h == "*");
    let requested_method = request
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let requested_headers = request
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let allowed_headers: Vec<String> = config
        .allow_headers()
        .iter()
        .cloned()
        .chain(SAFELISTED_HEADERS.iter().map(|h| (*h).to_owned()))
        .collect();

    let mut failures = Vec::new();
    if !origin_ok {
        failures.push("origin");
    }
    // `"*"` stands for the seven standard methods (like Starlette), not for any method.
    let method_ok = if all_methods {
        ALL_METHODS
            .split(", ")
            .any(|m| m.eq_ignore_ascii_case(requested_method))
    } else {
        methods
            .iter()
            .any(|m| m.eq_ignore_ascii_case(requested_method))
    };
    if !method_ok {
        failures.push("method");
    }
    if !all_headers {
        let ok = requested_headers
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .all(|h| allowed_headers.iter().any(|a| a.eq_ignore_ascii_case(h)));
        if !ok {
            failures.push("headers");
        }
    }

    let mut headers = HeaderMap::new();
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    let methods_value = if all_methods {
        ALL_METHODS.to_owned()
    } else {
        methods.join(", ")
    };
    if let Ok(v) = HeaderValue::from_str(&methods_value) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    let headers_value = if all_headers {
        requested_headers.clone()
    } else {
        allowed_headers.join(", ")
    };
    if !headers_value.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&headers_value) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
    }
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    if credentials {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if !failures.is_empty() {
        let text = format!("Disallowed CORS {}", failures.join(", "));
        return (StatusCode::BAD_REQUEST, headers, text).into_response();
    }
    // Echoed because credentials are on; `*` only without credentials and with "*" listed.
    let allow_origin = if any_origin && !credentials {
        "*"
    } else {
        origin
    };
    if let Ok(v) = HeaderValue::from_str(allow_origin) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    (StatusCode::OK, headers, "OK").into_response()
}

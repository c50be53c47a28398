//! JSON request bodies, validated the way the reference (FastAPI + pydantic) reports them.
//!
//! Two steps, because the contract orders them around the auth guard (auth.md §4):
//! 1. [`parse_json_body`], a middleware, reads the body under the size limit and parses it.
//!    Unparseable JSON is answered 422 `json_invalid` before any guard runs; JSON nested too
//!    deeply is 400 `There was an error parsing the body`; an oversized body is 413.
//! 2. The [`Body`] extractor, which runs after the route's guard, checks the parsed value
//!    against the route's schema and reports every failing field at once, pydantic-style.
//!
//! Like FastAPI (0.14x, `strict_content_type`), a body is parsed as JSON only with an
//! `application/json` or `application/*+json` content type; any other body, including one
//! without a content type, reaches validation as a string and fails the "object" check.

use crate::http::error::{ApiError, ValidationIssue};
use crate::state::AppState;
use atelier_domain::email::normalize_email;
use axum::body::{Body as AxumBody, Bytes};
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

/// Deeper JSON is refused with 400 rather than risking the parser's stack.
const MAX_JSON_DEPTH: usize = 128;

/// The body as the middleware left it for the extractor.
#[derive(Clone, Debug)]
pub enum ParsedBody {
    Empty,
    Json(Value),
    /// A body sent with a non-JSON content type, kept as text.
    Text(String),
}

/// Middleware: parse JSON bodies of mutating requests once, before routing and guards.
pub async fn parse_json_body(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if !matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) {
        return next.run(request).await;
    }
    // FastAPI parses only explicit JSON content types; a body without one is plain text.
    let is_json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_json_content_type);
    let is_multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/"));
    if is_multipart {
        // Uploads have their own extractor and limit.
        return next.run(request).await;
    }
    let limit = usize::try_from(state.config.max_request_body_bytes()).unwrap_or(usize::MAX);
    let (mut parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => bytes,
        Err(_) => return ApiError::PayloadTooLarge.into_response(),
    };
    let parsed = if bytes.is_empty() {
        ParsedBody::Empty
    } else if is_json {
        match parse_json(&bytes) {
            Ok(value) => ParsedBody::Json(value),
            Err(err) => return err.into_response(),
        }
    } else {
        ParsedBody::Text(String::from_utf8_lossy(&bytes).into_owned())
    };
    parts.extensions.insert(parsed);
    next.run(Request::from_parts(parts, AxumBody::from(bytes)))
        .await
}

fn is_json_content_type(value: &str) -> bool {
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.split_once('/') {
        Some(("application", sub)) => sub == "json" || sub.ends_with("+json"),
        _ => false,
    }
}

/// Parses `bytes` as JSON, with the reference's error shapes.
pub fn parse_json(bytes: &Bytes) -> Result<Value, ApiError> {
    let unparseable = || ApiError::bad_request("There was an error parsing the body");
    // Python decodes the bytes first (a UTF-8 BOM is allowed); bad UTF-8 is a 400, not a 422.
    let text = std::str::from_utf8(bytes).map_err(|_| unparseable())?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if nesting_depth(text.as_bytes()) > MAX_JSON_DEPTH {
        return Err(unparseable());
    }
    serde_json::from_str(text).map_err(|err| json_invalid(text.as_bytes(), &err))
}

/// The deepest nesting of arrays and objects, ignoring brackets inside strings.
fn nesting_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// A 422 `json_invalid` issue whose location is the character offset of the error, as
/// Python's `json` module reports it, and whose `ctx.error` names the problem in its words.
fn json_invalid(bytes: &[u8], err: &serde_json::Error) -> ApiError {
    let text = String::from_utf8_lossy(bytes);
    let eof = err.classify() == serde_json::error::Category::Eof;
    // serde_json's column is 1-based on the offending character, or on the last character
    // read when input ended early; Python's offset is 0-based on the offending character.
    let line_start: usize = text
        .split_inclusive('\n')
        .take(err.line().saturating_sub(1))
        .map(|l| l.chars().count())
        .sum();
    let column = if eof {
        err.column()
    } else {
        err.column().saturating_sub(1)
    };
    let message = err.to_string();
    // Python points an unterminated string's error at the string's opening quote.
    let offset = match unterminated_string_start(&text) {
        Some(start) if message.contains("while parsing a string") => start,
        _ => line_start + column,
    };
    let trailing_comma_in_object =
        message.starts_with("trailing comma") && text.chars().nth(offset) == Some('}');
    let reason = if message.starts_with("key must be a string") || trailing_comma_in_object {
        "Expecting property name enclosed in double quotes"
    } else if message.starts_with("expected `:`") {
        "Expecting ':' delimiter"
    } else if message.starts_with("expected `,` or")
        || message.contains("while parsing a list")
        || message.contains("while parsing an object")
    {
        "Expecting ',' delimiter"
    } else if message.starts_with("trailing characters") {
        "Extra data"
    } else if message.contains("while parsing a string") {
        "Unterminated string starting at"
    } else if message.starts_with("control character") {
        "Invalid control character at"
    } else if message.starts_with("invalid escape") || message.starts_with("invalid unicode") {
        "Invalid \\escape"
    } else {
        "Expecting value"
    };
    ApiError::Validation(vec![ValidationIssue {
        kind: "json_invalid",
        loc: vec![json!("body"), json!(offset)],
        msg: "JSON decode error".to_owned(),
        input: json!({}),
        ctx: Some(json!({ "error": reason })),
    }])
}

/// Character offset of the opening quote of a string that never closes, if any.
fn unterminated_string_start(text: &str) -> Option<usize> {
    let (mut start, mut escaped) = (None, false);
    for (i, c) in text.chars().enumerate() {
        match (start, escaped, c) {
            (Some(_), true, _) => escaped = false,
            (Some(_), false, '\\') => escaped = true,
            (Some(_), false, '"') => start = None,
            (None, _, '"') => start = Some(i),
            _ => {}
        }
    }
    start
}

/// A request body type: builds itself from the parsed JSON, reporting every bad field.
pub trait FromBody: Sized {
    fn from_fields(fields: &mut Fields<'_>) -> Option<Self>;
}

/// A validated body. Extract it last, after the guard.
pub struct Body<T>(pub T);

impl<T: FromBody> FromRequest<AppState> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &AppState) -> Result<Self, Self::Rejection> {
        let parsed = request
            .extensions()
            .get::<ParsedBody>()
            .cloned()
            .unwrap_or(ParsedBody::Empty);
        validate_body(&parsed).map(Body)
    }
}

/// Validates an already-parsed body against `T`.
pub fn validate_body<T: FromBody>(parsed: &ParsedBody) -> Result<T, ApiError> {
    let value = match parsed {
        ParsedBody::Empty => {
            return Err(ApiError::Validation(vec![ValidationIssue {
                kind: "missing",
                loc: vec![json!("body")],
                msg: "Field required".to_owned(),
                input: Value::Null,
                ctx: None,
            }]))
        }
        // A JSON `null` body counts as no body at all.
        ParsedBody::Json(Value::Null) => return validate_body::<T>(&ParsedBody::Empty),
        ParsedBody::Json(value) => value.clone(),
        ParsedBody::Text(text) => Value::String(text.clone()),
    };
    let Value::Object(map) = &value else {
        return Err(ApiError::Validation(vec![ValidationIssue {
            kind: "model_attributes_type",
            loc: vec![json!("body")],
            msg: "Input should be a valid dictionary or object to extract fields from".to_owned(),
            input: value.clone(),
            ctx: None,
        }]));
    };
    let mut fields = Fields {
        map,
        whole: &value,
        issues: Vec::new(),
    };
    let built = T::from_fields(&mut fields);
    match built {
        Some(body) if fields.issues.is_empty() => Ok(body),
        _ => Err(ApiError::Validation(fields.issues)),
    }
}

/// Field access that records pydantic-shaped issues instead of failing at the first one.
pub struct Fields<'a> {
    map: &'a Map<String, Value>,
    whole: &'a Value,
    issues: Vec<ValidationIssue>,
}

impl Fields<'_> {
    /// The raw value of `field`, if present (for types without a helper below).
    pub fn raw(&self, field: &str) -> Option<&Value> {
        self.map.get(field)
    }

    /// The whole body.
    pub fn whole(&self) -> &Value {
        self.whole
    }

    /// Records an issue at an explicit location (e.g. `["body"]` for model-level checks).
    pub fn push_issue(
        &mut self,
        kind: &'static str,
        loc: Vec<Value>,
        msg: &str,
        input: Value,
        ctx: Option<Value>,
    ) {
        self.issues.push(ValidationIssue {
            kind,
            loc,
            msg: msg.to_owned(),
            input,
            ctx,
        });
    }

    fn issue(
        &mut self,
        kind: &'static str,
        field: &str,
        msg: &str,
        input: Value,
        ctx: Option<Value>,
    ) {
        self.issues.push(ValidationIssue {
            kind,
            loc: vec![json!("body"), json!(field)],
            msg: msg.to_owned(),
            input,
            ctx,
        });
    }

    fn missing(&mut self, field: &str) {
        let whole = self.whole.clone();
        self.issue("missing", field, "Field required", whole, None);
    }

    fn string_value(&mut self, field: &str, value: &Value) -> Option<String> {
        match value {
            Value::String(s) => Some(s.clone()),
            other => {
                self.issue(
                    "string_type",
                    field,
                    "Input should be a valid string",
                    other.clone(),
                    None,
                );
                None
            }
        }
    }

    /// A required `str`.
    pub fn required_str(&mut self, field: &str) -> Option<String> {
        match self.map.get(field) {
            None => {
                self.missing(field);
                None
            }
            Some(v) => self.string_value(field, v),
        }
    }

    /// A `str | None = None`: absent and `null` both give `None`.
    pub fn optional_str(&mut self, field: &str) -> Option<Option<String>> {
        match self.map.get(field) {
            None | Some(Value::Null) => Some(None),
            Some(v) => self.string_value(field, v).map(Some),
        }
    }

    /// A `bool = default`, accepting what pydantic's lax mode accepts.
    pub fn bool_or(&mut self, field: &str, default: bool) -> Option<bool> {
        match self.map.get(field) {
            None => Some(default),
            Some(v) => self.bool_value(field, v),
        }
    }

    /// A `bool | None = None`.
    pub fn optional_bool(&mut self, field: &str) -> Option<Option<bool>> {
        match self.map.get(field) {
            None | Some(Value::Null) => Some(None),
            Some(v) => self.bool_value(field, v).map(Some),
        }
    }

    fn bool_value(&mut self, field: &str, value: &Value) -> Option<bool> {
        match lax_bool(value) {
            Ok(b) => Some(b),
            Err(kind) => {
                let msg = if kind == "bool_parsing" {
                    "Input should be a valid boolean, unable to interpret input"
                } else {
                    "Input should be a valid boolean"
                };
                self.issue(kind, field, msg, value.clone(), None);
                None
            }
        }
    }

    /// A required email, validated and normalised (auth.md §9.6).
    pub fn required_email(&mut self, field: &str) -> Option<String> {
        let raw = self.required_str(field)?;
        match normalize_email(&raw) {
            Ok(email) => Some(email),
            Err(err) => {
                // Raised as a custom pydantic error: no "Value error, " prefix and no ctx.
                self.issue(
                    "value_error",
                    field,
                    &err.to_string(),
                    Value::String(raw),
                    None,
                );
                None
            }
        }
    }
}

/// pydantic's lax boolean: JSON booleans, 0/1, and the usual words (case-insensitive).
fn lax_bool(value: &Value) -> Result<bool, &'static str> {
    match value {
        Value::Bool(b) => Ok(*b),
        // Integers other than 0/1 "cannot be interpreted"; other floats are the wrong type.
        Value::Number(n) if n.is_i64() || n.is_u64() => match n.as_i64() {
            Some(0) => Ok(false),
            Some(1) => Ok(true),
            _ => Err("bool_parsing"),
        },
        Value::Number(n) => match n.as_f64() {
            Some(0.0) => Ok(false),
            Some(1.0) => Ok(true),
            _ => Err("bool_type"),
        },
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "0" | "off" | "f" | "false" | "n" | "no" => Ok(false),
            "1" | "on" | "t" | "true" | "y" | "yes" => Ok(true),
            _ => Err("bool_parsing"),
        },
        _ => Err("bool_type"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Login {
        email: String,
        password: String,
        remember_me: bool,
    }

    impl FromBody for Login {
        fn from_fields(f: &mut Fields<'_>) -> Option<Self> {
            let email = f.required_email("email");
            let password = f.required_str("password");
            let remember_me = f.bool_or("remember_me", false);
            Some(Self {
                email: email?,
                password: password?,
                remember_me: remember_me?,
            })
        }
    }

    fn issues(parsed: ParsedBody) -> Value {
        match validate_body::<Login>(&parsed) {
            Err(ApiError::Validation(issues)) => json!(issues),
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn reports_every_bad_field() {
        let got = issues(ParsedBody::Json(json!({"email": 1, "password": 2})));
        assert_eq!(got.as_array().expect("list").len(), 2);
        assert_eq!(got[0]["loc"], json!(["body", "email"]));
        assert_eq!(got[0]["type"], "string_type");
        assert_eq!(got[1]["input"], 2);
    }

    #[test]
    fn missing_body_array_body_and_text_body() {
        assert_eq!(
            issues(ParsedBody::Empty),
            json!([{"type": "missing", "loc": ["body"], "msg": "Field required", "input": null}])
        );
        assert_eq!(
            issues(ParsedBody::Json(json!([])))[0]["type"],
            "model_attributes_type"
        );
        assert_eq!(issues(ParsedBody::Text("x".into()))[0]["input"], "x");
    }

    #[test]
    fn lax_booleans_and_emails() {
        let ok = validate_body::<Login>(&ParsedBody::Json(
            json!({"email": "A@Example.COM", "password": "p", "remember_me": "yes"}),
        ))
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(ok.remember_me);
        assert_eq!(ok.email, "A@example.com");
        assert_eq!(ok.password, "p");
        let bad = issues(ParsedBody::Json(
            json!({"email": "nope", "password": "p", "remember_me": "maybe"}),
        ));
        assert_eq!(
            bad[0],
            json!({"type": "value_error", "loc": ["body", "email"],
                   "msg": "Invalid email address: An email address must have an @-sign.", "input": "nope"})
        );
        assert_eq!(bad[1]["type"], "bool_parsing");
        let bad = issues(ParsedBody::Json(
            json!({"email": "a@x.com", "password": "p", "remember_me": 2}),
        ));
        assert_eq!(bad[0]["type"], "bool_parsing");
        let bad = issues(ParsedBody::Json(
            json!({"email": "a@x.com", "password": "p", "remember_me": 0.5}),
        ));
        assert_eq!(bad[0]["type"], "bool_type");
        assert_eq!(issues(ParsedBody::Json(Value::Null))[0]["type"], "missing");
    }

    #[test]
    fn json_errors_have_python_offsets() {
        let err = parse_json(&Bytes::from_static(b"{\"email\":")).unwrap_err();
        let ApiError::Validation(issues) = err else {
            panic!()
        };
        assert_eq!(issues[0].loc, vec![json!("body"), json!(9)]);
        let err = parse_json(&Bytes::from_static(b"{bad}")).unwrap_err();
        let ApiError::Validation(issues) = err else {
            panic!()
        };
        assert_eq!(issues[0].loc, vec![json!("body"), json!(1)]);
        assert_eq!(
            issues[0].ctx,
            Some(json!({"error": "Expecting property name enclosed in double quotes"}))
        );
        let deep = Bytes::from(vec![b'['; 200_000]);
        assert_eq!(parse_json(&deep).unwrap_err().status(), 400);
        let bad_utf8 = Bytes::from_static(b"{\"email\":\"\xff\"}");
        assert_eq!(parse_json(&bad_utf8).unwrap_err().status(), 400);
        let multi_line =
            Bytes::from_static(b"{\n  \"email\": \"a@example.com\",\n  \"password\": x\n}");
        let ApiError::Validation(issues) = parse_json(&multi_line).unwrap_err() else {
            panic!()
        };
        assert_eq!(issues[0].loc, vec![json!("body"), json!(44)]);
        for (text, offset, reason) in [
            (
                &b"{\"email\":\"a@example.com\",}"[..],
                25,
                "Expecting property name enclosed in double quotes",
            ),
            (
                &b"{\"email\":\"a@ex"[..],
                9,
                "Unterminated string starting at",
            ),
            (&b"hello"[..], 0, "Expecting value"),
        ] {
            let ApiError::Validation(issues) =
                parse_json(&Bytes::copy_from_slice(text)).unwrap_err()
            else {
                panic!()
            };
            assert_eq!(
                issues[0].loc[1],
                json!(offset),
                "{}",
                String::from_utf8_lossy(text)
            );
            assert_eq!(issues[0].ctx, Some(json!({"error": reason})));
        }
    }
}

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
    serde_json::from_str(text).map_err(|err| json_invalid(text, &err))
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
fn json_invalid(text: &str, err: &serde_json::Error) -> ApiError {
    // Python accepts a few things serde_json refuses (NaN, 1e400, lone surrogates); those
    // are reported where serde_json stopped.
    let (offset, reason) =
        python_json_error(text).unwrap_or_else(|| (serde_offset(text, err), "Expecting value"));
    ApiError::Validation(vec![ValidationIssue {
        kind: "json_invalid",
        loc: vec![json!("body"), json!(offset)],
        msg: "JSON decode error".to_owned(),
        input: json!({}),
        ctx: Some(json!({ "error": reason })),
    }])
}

/// The character offset of a serde_json error (its column counts bytes).
fn serde_offset(text: &str, err: &serde_json::Error) -> usize {
    let line_start: usize = text
        .split_inclusive('\n')
        .take(err.line().saturating_sub(1))
        .map(str::len)
        .sum();
    let mut byte = (line_start + err.column().saturating_sub(1)).min(text.len());
    while !text.is_char_boundary(byte) {
        byte -= 1;
    }
    text[..byte].chars().count()
}

/// Where and why Python's `json.loads` (CPython's C scanner, 3.11) rejects `text`: the
/// character offset and message of its `JSONDecodeError`, or `None` if Python accepts it.
fn python_json_error(text: &str) -> Option<(usize, &'static str)> {
    let chars: Vec<char> = text.chars().collect();
    let scan = PyScan { s: &chars };
    match scan.value(scan.ws(0)) {
        Err(err) => Some(err),
        Ok(end) => {
            let end = scan.ws(end);
            (end != chars.len()).then_some((end, "Extra data"))
        }
    }
}

/// A position after a parsed value, or Python's error offset and message.
type Scanned = Result<usize, (usize, &'static str)>;

/// A transcription of CPython's `_json.c` scanner, kept only for its error reporting.
/// Nesting is bounded by [`MAX_JSON_DEPTH`] before this runs, so recursion is shallow.
struct PyScan<'a> {
    s: &'a [char],
}

impl PyScan<'_> {
    fn at(&self, i: usize) -> Option<char> {
        self.s.get(i).copied()
    }

    fn ws(&self, mut i: usize) -> usize {
        while matches!(self.at(i), Some(' ' | '\t' | '\n' | '\r')) {
            i += 1;
        }
        i
    }

    fn starts_with(&self, i: usize, word: &str) -> bool {
        word.chars()
            .enumerate()
            .all(|(k, c)| self.at(i + k) == Some(c))
    }

    fn value(&self, i: usize) -> Scanned {
        const EXPECTING_VALUE: &str = "Expecting value";
        match self.at(i) {
            None => Err((i, EXPECTING_VALUE)),
            Some('"') => self.string(i + 1),
            Some('{') => self.object(i + 1),
            Some('[') => self.array(i + 1),
            Some('n') if self.starts_with(i, "null") => Ok(i + 4),
            Some('t') if self.starts_with(i, "true") => Ok(i + 4),
            Some('f') if self.starts_with(i, "false") => Ok(i + 5),
            Some('N') if self.starts_with(i, "NaN") => Ok(i + 3),
            Some('I') if self.starts_with(i, "Infinity") => Ok(i + 8),
            Some('-') if self.starts_with(i, "-Infinity") => Ok(i + 9),
            _ => self.number(i).ok_or((i, EXPECTING_VALUE)),
        }
    }

    fn number(&self, start: usize) -> Option<usize> {
        let digit = |i: usize| self.at(i).is_some_and(|c| c.is_ascii_digit());
        let mut i = start;
        if self.at(i) == Some('-') {
            i += 1;
        }
        match self.at(i) {
            Some('1'..='9') => {
                i += 1;
                while digit(i) {
                    i += 1;
                }
            }
            Some('0') => i += 1,
            _ => return None,
        }
        if self.at(i) == Some('.') && digit(i + 1) {
            i += 2;
            while digit(i) {
                i += 1;
            }
        }
        if matches!(self.at(i), Some('e' | 'E')) {
            let mut j = i + 1;
            if matches!(self.at(j), Some('+' | '-')) {
                j += 1;
            }
            let digits = j;
            while digit(j) {
                j += 1;
            }
            if j > digits {
                i = j;
            }
        }
        Some(i)
    }

    /// A string whose opening quote is at `start - 1`.
    fn string(&self, start: usize) -> Scanned {
        const BAD_U: &str = "Invalid \\uXXXX escape";
        let unterminated = (start - 1, "Unterminated string starting at");
        let hex4 = |from: usize| {
            (from..from + 4).try_fold(0u32, |acc, k| Some(acc * 16 + self.at(k)?.to_digit(16)?))
        };
        let mut i = start;
        loop {
            let c = loop {
                match self.at(i) {
                    None => return Err(unterminated),
                    Some(c @ ('"' | '\\')) => break c,
                    Some(c) if u32::from(c) <= 0x1f => {
                        return Err((i, "Invalid control character at"))
                    }
                    Some(_) => i += 1,
                }
            };
            i += 1;
            if c == '"' {
                return Ok(i);
            }
            match self.at(i) {
                None => return Err(unterminated),
                Some('"' | '\\' | '/' | 'b' | 'f' | 'n' | 'r' | 't') => i += 1,
                Some('u') => {
                    if i + 5 >= self.s.len() {
                        return Err((i, BAD_U));
                    }
                    let high = hex4(i + 1).ok_or((i, BAD_U))?;
                    i += 5;
                    let pair = self.at(i) == Some('\\') && self.at(i + 1) == Some('u');
                    if (0xD800..0xDC00).contains(&high) && i + 6 < self.s.len() && pair {
                        match hex4(i + 2) {
                            None => return Err((i + 1, BAD_U)),
                            Some(low) if (0xDC00..0xE000).contains(&low) => i += 6,
                            Some(_) => {}
                        }
                    }
                }
                Some(_) => return Err((i - 1, "Invalid \\escape")),
            }
        }
    }

    /// An object whose `{` is at `start - 1`.
    fn object(&self, start: usize) -> Scanned {
        let mut i = self.ws(start);
        if self.at(i) == Some('}') {
            return Ok(i + 1);
        }
        loop {
            if self.at(i) != Some('"') {
                return Err((i, "Expecting property name enclosed in double quotes"));
            }
            i = self.ws(self.string(i + 1)?);
            if self.at(i) != Some(':') {
                return Err((i, "Expecting ':' delimiter"));
            }
            i = self.ws(self.value(self.ws(i + 1))?);
            match self.at(i) {
                Some('}') => return Ok(i + 1),
                Some(',') => i = self.ws(i + 1),
                _ => return Err((i, "Expecting ',' delimiter")),
            }
        }
    }

    /// An array whose `[` is at `start - 1`.
    fn array(&self, start: usize) -> Scanned {
        let mut i = self.ws(start);
        if self.at(i) == Some(']') {
            return Ok(i + 1);
        }
        loop {
            i = self.ws(self.value(i)?);
            match self.at(i) {
                Some(']') => return Ok(i + 1),
                Some(',') => i = self.ws(i + 1),
                _ => return Err((i, "Expecting ',' delimiter")),
            }
        }
    }
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

    /// A required `list[str]` of at most `max_items` entries of at most `max_len` characters.
    pub fn required_str_list(
        &mut self,
        field: &str,
        max_items: usize,
        max_len: usize,
    ) -> Option<Vec<String>> {
        let Some(value) = self.map.get(field).cloned() else {
            self.missing(field);
            return None;
        };
        let Value::Array(items) = &value else {
            self.issue(
                "list_type",
                field,
                "Input should be a valid list",
                value.clone(),
                None,
            );
            return None;
        };
        if items.len() > max_items {
            let msg = format!(
                "List should have at most {max_items} items after validation, not {}",
                items.len()
            );
            let ctx = json!({"field_type": "List", "max_length": max_items, "actual_length": items.len()});
            self.issue("too_long", field, &msg, value.clone(), Some(ctx));
            return None;
        }
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let loc = vec![json!("body"), json!(field), json!(i)];
            match item {
                Value::String(s) if s.chars().count() <= max_len => out.push(s.clone()),
                Value::String(s) => {
                    ok = false;
                    self.push_issue(
                        "string_too_long",
                        loc,
                        &format!("String should have at most {max_len} characters"),
                        json!(s),
                        Some(json!({"max_length": max_len})),
                    );
                }
                other => {
                    ok = false;
                    self.push_issue(
                        "string_type",
                        loc,
                        "Input should be a valid string",
                        other.clone(),
                        None,
                    );
                }
            }
        }
        ok.then_some(out)
    }

    /// A strict `bool | None`: only JSON booleans.
    pub fn strict_optional_bool(&mut self, field: &str) -> Option<Option<bool>> {
        match self.map.get(field).cloned() {
            None | Some(Value::Null) => Some(None),
            Some(Value::Bool(b)) => Some(Some(b)),
            Some(other) => {
                self.issue(
                    "bool_type",
                    field,
                    "Input should be a valid boolean",
                    other,
                    None,
                );
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

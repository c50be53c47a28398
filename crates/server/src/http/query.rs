//! Query-string parameters validated the way the reference (FastAPI + pydantic) reports them:
//! every bad parameter at once, each `{type, loc: ["query", name], msg, input[, ctx]}`.
//! Repeated keys make lists (`categories=general&categories=user`).

use crate::http::error::{ApiError, ValidationIssue};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde_json::{json, Value};
use std::convert::Infallible;

/// The raw pairs of a request's query string.
#[derive(Debug, Clone, Default)]
pub struct RawQuery(pub Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for RawQuery {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        let query = parts.uri.query().unwrap_or_default();
        Ok(RawQuery(
            form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        ))
    }
}

/// Reads parameters out of a [`RawQuery`], collecting issues.
pub struct QueryFields<'a> {
    raw: &'a RawQuery,
    issues: Vec<ValidationIssue>,
}

impl<'a> QueryFields<'a> {
    pub fn new(raw: &'a RawQuery) -> Self {
        Self {
            raw,
            issues: Vec::new(),
        }
    }

    /// The last value given for `name` (FastAPI takes the last of repeated scalars).
    fn last(&self, name: &str) -> Option<&'a str> {
        self.raw
            .0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<&'a str> {
        self.raw
            .0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn issue(
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

    fn at(name: &str) -> Vec<Value> {
        vec![json!("query"), json!(name)]
    }

    /// A required string of at most `max_len` characters.
    pub fn required_str(&mut self, name: &str, max_len: Option<usize>) -> Option<String> {
        let Some(value) = self.last(name) else {
            self.issue(
                "missing",
                Self::at(name),
                "Field required",
                Value::Null,
                None,
            );
            return None;
        };
        self.check_len(name, value, max_len)
    }

    pub fn optional_str(&mut self, name: &str, max_len: Option<usize>) -> Option<Option<String>> {
        match self.last(name) {
            None => Some(None),
            Some(v) => self.check_len(name, v, max_len).map(Some),
        }
    }

    fn check_len(&mut self, name: &str, value: &str, max_len: Option<usize>) -> Option<String> {
        if let Some(max) = max_len {
            if value.chars().count() > max {
                self.issue(
                    "string_too_long",
                    Self::at(name),
                    &format!("String should have at most {max} characters"),
                    json!(value),
                    Some(json!({ "max_length": max })),
                );
                return None;
            }
        }
        Some(value.to_owned())
    }

    /// A `bool | None`: pydantic's lax parsing of the usual words.
    pub fn optional_bool(&mut self, name: &str) -> Option<Option<bool>> {
        let Some(value) = self.last(name) else {
            return Some(None);
        };
        match value.to_ascii_lowercase().as_str() {
            "0" | "off" | "f" | "false" | "n" | "no" => Some(Some(false)),
            "1" | "on" | "t" | "true" | "y" | "yes" => Some(Some(true)),
            _ => {
                self.issue(
                    "bool_parsing",
                    Self::at(name),
                    "Input should be a valid boolean, unable to interpret input",
                    json!(value),
                    None,
                );
                None
            }
        }
    }

    pub fn bool_or(&mut self, name: &str, default: bool) -> Option<bool> {
        self.optional_bool(name).map(|v| v.unwrap_or(default))
    }

    /// A required bool.
    pub fn required_bool(&mut self, name: &str) -> Option<bool> {
        if self.last(name).is_none() {
            self.issue(
                "missing",
                Self::at(name),
                "Field required",
                Value::Null,
                None,
            );
            return None;
        }
        self.optional_bool(name).flatten()
    }

    /// An `int | None` within `[min, max]`.
    pub fn optional_int(
        &mut self,
        name: &str,
        min: Option<i64>,
        max: Option<i64>,
    ) -> Option<Option<i64>> {
        let Some(value) = self.last(name) else {
            return Some(None);
        };
        let Ok(number) = value.trim().parse::<i64>() else {
            self.issue(
                "int_parsing",
                Self::at(name),
                "Input should be a valid integer, unable to parse string as an integer",
                json!(value),
                None,
            );
            return None;
        };
        if let Some(min) = min.filter(|m| number < *m) {
            self.issue(
                "greater_than_equal",
                Self::at(name),
                &format!("Input should be greater than or equal to {min}"),
                json!(value),
                Some(json!({ "ge": min })),
            );
            return None;
        }
        if let Some(max) = max.filter(|m| number > *m) {
            self.issue(
                "less_than_equal",
                Self::at(name),
                &format!("Input should be less than or equal to {max}"),
                json!(value),
                Some(json!({ "le": max })),
            );
            return None;
        }
        Some(Some(number))
    }

    /// One of `allowed` (an enum), or `None` when absent.
    pub fn optional_enum(&mut self, name: &str, allowed: &[&str]) -> Option<Option<String>> {
        let Some(value) = self.last(name) else {
            return Some(None);
        };
        self.enum_value(name, Self::at(name), value, allowed)
            .map(Some)
    }

    fn enum_value(
        &mut self,
        name: &str,
        loc: Vec<Value>,
        value: &str,
        allowed: &[&str],
    ) -> Option<String> {
        let _ = name;
        if allowed.contains(&value) {
            return Some(value.to_owned());
        }
        let expected = enum_expected(allowed);
        self.issue(
            "enum",
            loc,
            &format!("Input should be {expected}"),
            json!(value),
            Some(json!({ "expected": expected })),
        );
        None
    }

    /// A repeated enum parameter (`list[Enum] | None`).
    pub fn optional_enum_list(
        &mut self,
        name: &str,
        allowed: &[&str],
    ) -> Option<Option<Vec<String>>> {
        let values = self.all(name);
        if values.is_empty() {
            return Some(None);
        }
        let mut out = Vec::with_capacity(values.len());
        let mut ok = true;
        for (i, value) in values.into_iter().enumerate() {
            let loc = vec![json!("query"), json!(name), json!(i)];
            match self.enum_value(name, loc, value, allowed) {
                Some(v) => out.push(v),
                None => ok = false,
            }
        }
        ok.then_some(Some(out))
    }

    /// A repeated string parameter (`list[str] | None`).
    pub fn optional_str_list(&mut self, name: &str) -> Option<Vec<String>> {
        let values = self.all(name);
        (!values.is_empty()).then(|| values.into_iter().map(str::to_owned).collect())
    }

    /// A required repeated parameter: missing is a 422 `missing`.
    pub fn required_list_present(&mut self, name: &str) -> bool {
        if self.all(name).is_empty() {
            self.issue(
                "missing",
                Self::at(name),
                "Field required",
                Value::Null,
                None,
            );
            false
        } else {
            true
        }
    }

    /// Ends validation: the collected issues as one 422, if any.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.issues.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self.issues))
        }
    }
}

/// pydantic's wording of an enum's members: `'a', 'b' or 'c'`.
pub fn enum_expected(allowed: &[&str]) -> String {
    let quoted: Vec<String> = allowed.iter().map(|a| format!("'{a}'")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        Some((last, _)) => last.clone(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(pairs: &[(&str, &str)]) -> RawQuery {
        RawQuery(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn collects_every_issue() {
        let q = raw(&[
            ("offset", "-1"),
            ("limit", "x"),
            ("all", "maybe"),
            ("categories", "general"),
            ("categories", "bad"),
        ]);
        let mut f = QueryFields::new(&q);
        assert_eq!(f.optional_int("offset", Some(0), None), None);
        assert_eq!(f.optional_int("limit", Some(0), Some(1000)), None);
        assert_eq!(f.optional_bool("all"), None);
        assert_eq!(
            f.optional_enum_list("categories", &["general", "user"]),
            None
        );
        assert_eq!(f.required_str("board_name", None), None);
        let Err(ApiError::Validation(issues)) = f.finish() else {
            panic!()
        };
        let kinds: Vec<_> = issues.iter().map(|i| i.kind).collect();
        assert_eq!(
            kinds,
            [
                "greater_than_equal",
                "int_parsing",
                "bool_parsing",
                "enum",
                "missing"
            ]
        );
        assert_eq!(
            issues[3].loc,
            vec![json!("query"), json!("categories"), json!(1)]
        );
        assert_eq!(issues[3].msg, "Input should be 'general' or 'user'");
    }

    #[test]
    fn accepts_good_values() {
        let q = raw(&[("board_name", "x"), ("all", "true"), ("limit", "5")]);
        let mut f = QueryFields::new(&q);
        assert_eq!(
            f.required_str("board_name", Some(300)),
            Some("x".to_owned())
        );
        assert_eq!(f.optional_bool("all"), Some(Some(true)));
        assert_eq!(f.optional_int("limit", Some(0), None), Some(Some(5)));
        assert!(f.finish().is_ok());
    }
}

//! Node specifications: each invocation type's input fields (type, kind, default,
//! constraints), output type and fields, and the function that runs it.

use crate::context::{Context, ImageRef, NodeError, SaveRequest};
use crate::field::{FieldError, Ty};
use image::DynamicImage;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// How an input may be given (generation.md §2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// Only over an edge.
    Connection,
    /// Only in the node's JSON.
    Direct,
    /// Either.
    Any,
}

impl InputKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connection => "connection",
            Self::Direct => "direct",
            Self::Any => "any",
        }
    }
}

/// One input field.
#[derive(Debug, Clone)]
pub struct Input {
    pub name: &'static str,
    pub ty: Ty,
    pub kind: InputKind,
    /// `None`: required (no default). `Some(Value::Null)`: optional.
    pub default: Option<Value>,
    pub description: &'static str,
    pub ge: Option<Value>,
    pub gt: Option<Value>,
    pub le: Option<Value>,
    pub lt: Option<Value>,
    pub multiple_of: Option<i64>,
    pub min_length: Option<usize>,
    /// A transformation applied before any check (the reference's "before" validators, e.g.
    /// the noise seed taken modulo 2^32).
    pub before: Option<fn(&Value) -> Value>,
}

impl Input {
    /// A required input of `kind` any.
    pub fn new(name: &'static str, ty: Ty) -> Self {
        Self {
            name,
            ty,
            kind: InputKind::Any,
            default: None,
            description: "",
            ge: None,
            gt: None,
            le: None,
            lt: None,
            multiple_of: None,
            min_length: None,
            before: None,
        }
    }

    pub fn default(mut self, value: Value) -> Self {
        self.default = Some(value);
        self
    }

    /// Optional, defaulting to null.
    pub fn optional(self) -> Self {
        self.default(Value::Null)
    }

    pub fn conn(mut self) -> Self {
        self.kind = InputKind::Connection;
        self
    }

    pub fn direct(mut self) -> Self {
        self.kind = InputKind::Direct;
        self
    }

    pub fn desc(mut self, text: &'static str) -> Self {
        self.description = text;
        self
    }

    pub fn ge(mut self, bound: Value) -> Self {
        self.ge = Some(bound);
        self
    }

    pub fn gt(mut self, bound: Value) -> Self {
        self.gt = Some(bound);
        self
    }

    pub fn le(mut self, bound: Value) -> Self {
        self.le = Some(bound);
        self
    }

    pub fn lt(mut self, bound: Value) -> Self {
        self.lt = Some(bound);
        self
    }

    pub fn multiple_of(mut self, step: i64) -> Self {
        self.multiple_of = Some(step);
        self
    }

    pub fn min_length(mut self, len: usize) -> Self {
        self.min_length = Some(len);
        self
    }

    pub fn required(&self) -> bool {
        self.default.is_none()
    }

    /// Checks a value (type, then constraints); null is accepted for optional inputs.
    pub fn check(&self, value: &Value) -> Result<Value, FieldError> {
        if value.is_null() && (self.default.as_ref().is_some_and(Value::is_null) || self.required())
        {
            return Ok(Value::Null);
        }
        let transformed = self.before.map(|f| f(value));
        let value = transformed.as_ref().unwrap_or(value);
        let value = crate::field::check_value(&self.ty, value)?;
        let fail = |kind: &'static str, msg: String| FieldError {
            kind,
            msg,
            loc: Vec::new(),
        };
        let number = value.as_f64();
        if let Some(n) = number {
            if let Some(b) = &self.ge {
                if n < b.as_f64().unwrap_or(f64::MIN) {
                    return Err(fail(
                        "greater_than_equal",
                        format!("Input should be greater than or equal to {b}"),
                    ));
                }
            }
            if let Some(b) = &self.gt {
                if n <= b.as_f64().unwrap_or(f64::MIN) {
                    return Err(fail(
                        "greater_than",
                        format!("Input should be greater than {b}"),
                    ));
                }
            }
            if let Some(b) = &self.le {
                if n > b.as_f64().unwrap_or(f64::MAX) {
                    return Err(fail(
                        "less_than_equal",
                        format!("Input should be less than or equal to {b}"),
                    ));
                }
            }
            if let Some(b) = &self.lt {
                if n >= b.as_f64().unwrap_or(f64::MAX) {
                    return Err(fail("less_than", format!("Input should be less than {b}")));
                }
            }
            if let (Some(step), Some(i)) = (self.multiple_of, value.as_i64()) {
                if step != 0 && i % step != 0 {
                    return Err(fail(
                        "multiple_of",
                        format!("Input should be a multiple of {step}"),
                    ));
                }
            }
        }
        if let (Some(min), Some(items)) = (self.min_length, value.as_array()) {
            if items.len() < min {
                return Err(fail(
                    "too_short",
                    format!(
                        "List should have at least {min} item{} after validation, not {}",
                        if min == 1 { "" } else { "s" },
                        items.len()
                    ),
                ));
            }
        }
        Ok(value)
    }

    /// The JSON Schema of this field (for the OpenAPI document).
    pub fn schema(&self) -> Value {
        let mut schema = self.ty.schema();
        if let Value::Object(map) = &mut schema {
            if let Some(d) = &self.default {
                map.insert("default".into(), d.clone());
            }
            if !self.description.is_empty() {
                map.insert("description".into(), json!(self.description));
            }
            for (key, bound) in [
                ("minimum", &self.ge),
                ("exclusiveMinimum", &self.gt),
                ("maximum", &self.le),
                ("exclusiveMaximum", &self.lt),
            ] {
                if let Some(b) = bound {
                    map.insert(key.into(), b.clone());
                }
            }
            if let Some(step) = self.multiple_of {
                map.insert("multipleOf".into(), json!(step));
            }
            map.insert("input".into(), json!(self.kind.as_str()));
        }
        schema
    }
}

/// The output object of a node type.
#[derive(Debug, Clone)]
pub struct Output {
    /// The output's `type`, e.g. `integer_output`.
    pub type_name: &'static str,
    pub fields: Vec<(&'static str, Ty)>,
}

/// Runs a node: the checked inputs in, the output's fields out (the engine adds `type`).
pub type RunFn = fn(&Inputs, &mut dyn Context) -> Result<Map<String, Value>, NodeError>;

/// One invocation type.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub type_name: &'static str,
    pub title: &'static str,
    pub version: &'static str,
    pub category: &'static str,
    pub tags: &'static [&'static str],
    pub description: &'static str,
    pub inputs: Vec<Input>,
    pub output: Output,
    /// The default of the node's `use_cache` field.
    pub use_cache: bool,
    /// Unknown keys are kept (`core_metadata`) instead of dropped.
    pub keeps_extra_keys: bool,
    pub run: RunFn,
}

impl NodeSpec {
    pub fn input(&self, name: &str) -> Option<&Input> {
        self.inputs.iter().find(|i| i.name == name)
    }

    pub fn output_field(&self, name: &str) -> Option<&Ty> {
        self.output
            .fields
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| t)
    }
}

/// Every node type, by name.
pub fn catalogue() -> &'static BTreeMap<&'static str, NodeSpec> {
    static CATALOGUE: OnceLock<BTreeMap<&'static str, NodeSpec>> = OnceLock::new();
    CATALOGUE.get_or_init(|| {
        crate::nodes::all()
            .into_iter()
            .map(|spec| (spec.type_name, spec))
            .collect()
    })
}

pub fn find(type_name: &str) -> Option<&'static NodeSpec> {
    catalogue().get(type_name)
}

/// A node's input values, checked and with defaults applied, as the run function sees them.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The execution node id.
    pub id: String,
    pub is_intermediate: bool,
    pub values: Map<String, Value>,
}

impl Inputs {
    pub fn get(&self, name: &str) -> &Value {
        self.values.get(name).unwrap_or(&Value::Null)
    }

    fn missing(name: &str) -> NodeError {
        NodeError::value(format!("Field {name} has no value"))
    }

    pub fn int(&self, name: &str) -> Result<i64, NodeError> {
        self.get(name).as_i64().ok_or_else(|| Self::missing(name))
    }

    pub fn float(&self, name: &str) -> Result<f64, NodeError> {
        self.get(name).as_f64().ok_or_else(|| Self::missing(name))
    }

    pub fn str(&self, name: &str) -> Result<&str, NodeError> {
        self.get(name).as_str().ok_or_else(|| Self::missing(name))
    }

    pub fn bool(&self, name: &str) -> Result<bool, NodeError> {
        self.get(name).as_bool().ok_or_else(|| Self::missing(name))
    }

    pub fn opt_int(&self, name: &str) -> Option<i64> {
        self.get(name).as_i64()
    }

    pub fn opt_float(&self, name: &str) -> Option<f64> {
        self.get(name).as_f64()
    }

    pub fn opt_str(&self, name: &str) -> Option<&str> {
        self.get(name).as_str()
    }

    pub fn list(&self, name: &str) -> Result<&Vec<Value>, NodeError> {
        self.get(name).as_array().ok_or_else(|| Self::missing(name))
    }

    /// The `image_name` of an `ImageField` input.
    pub fn image_name(&self, name: &str) -> Result<&str, NodeError> {
        self.get(name)
            .get("image_name")
            .and_then(Value::as_str)
            .ok_or_else(|| Self::missing(name))
    }

    /// Loads the image of an `ImageField` input.
    pub fn image(&self, name: &str, ctx: &mut dyn Context) -> Result<DynamicImage, NodeError> {
        let image_name = self.image_name(name)?.to_owned();
        ctx.load_image(&image_name)
    }

    /// Saves `image` with this node's `board`, `metadata` and `is_intermediate`, and returns
    /// the `image_output` fields.
    pub fn save_image(
        &self,
        image: &DynamicImage,
        ctx: &mut dyn Context,
    ) -> Result<Map<String, Value>, NodeError> {
        let request = SaveRequest {
            node_id: self.id.clone(),
            board_id: self
                .get("board")
                .get("board_id")
                .and_then(Value::as_str)
                .map(str::to_owned),
            metadata: Some(self.get("metadata").clone()).filter(|m| m.is_object()),
            is_intermediate: self.is_intermediate,
        };
        let saved = ctx.save_image(image, request)?;
        Ok(image_output(&saved))
    }
}

/// The fields of an `image_output`.
pub fn image_output(image: &ImageRef) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("image".into(), json!({"image_name": image.image_name}));
    out.insert("width".into(), json!(image.width));
    out.insert("height".into(), json!(image.height));
    out
}

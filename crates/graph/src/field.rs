//! Field types: what a node input or output carries, how a JSON value is checked against it
//! (with pydantic's lax coercions and messages, which clients see in 422 bodies), and which
//! output may feed which input (generation.md §4 rule 5).

use serde_json::{json, Value};

/// The type of one input or output field.
#[derive(Debug, Clone, PartialEq)]
pub enum Ty {
    Any,
    Int,
    Float,
    Str,
    Bool,
    /// A string restricted to these values.
    Enum(&'static [&'static str]),
    /// A structured value named after InvokeAI's class (`ImageField`, `BoardField`,
    /// `ColorField`, `MetadataField`, `LatentsField`, `UNetField`, ...).
    Named(&'static str),
    List(Box<Ty>),
    /// Either of these (e.g. `ConditioningField | list[ConditioningField]`).
    Union(Vec<Ty>),
}

impl Ty {
    pub fn list(inner: Ty) -> Ty {
        Ty::List(Box::new(inner))
    }

    /// `T | list[T]`, the polymorphic inputs.
    pub fn one_or_list(inner: Ty) -> Ty {
        Ty::Union(vec![inner.clone(), Ty::list(inner)])
    }

    pub fn is_list(&self) -> bool {
        match self {
            Ty::List(_) => true,
            Ty::Union(members) => members.iter().any(Ty::is_list),
            _ => false,
        }
    }

    /// The element type of a list (or of the list member of a union).
    pub fn element(&self) -> Option<&Ty> {
        match self {
            Ty::List(inner) => Some(inner),
            Ty::Union(members) => members.iter().find_map(Ty::element),
            _ => None,
        }
    }

    /// A readable name, as the node catalogue documents it.
    pub fn name(&self) -> String {
        match self {
            Ty::Any => "Any".into(),
            Ty::Int => "int".into(),
            Ty::Float => "float".into(),
            Ty::Str => "str".into(),
            Ty::Bool => "bool".into(),
            Ty::Enum(values) => values
                .iter()
                .map(|v| format!("\"{v}\""))
                .collect::<Vec<_>>()
                .join(" | "),
            Ty::Named(name) => (*name).into(),
            Ty::List(inner) => format!("list[{}]", inner.name()),
            Ty::Union(members) => members.iter().map(Ty::name).collect::<Vec<_>>().join(" | "),
        }
    }

    /// The JSON Schema of a value of this type (for the OpenAPI document).
    pub fn schema(&self) -> Value {
        match self {
            Ty::Any => json!({}),
            Ty::Int => json!({"type": "integer"}),
            Ty::Float => json!({"type": "number"}),
            Ty::Str => json!({"type": "string"}),
            Ty::Bool => json!({"type": "boolean"}),
            Ty::Enum(values) => json!({"type": "string", "enum": values}),
            Ty::Named(name) => json!({"$ref": format!("#/components/schemas/{name}")}),
            Ty::List(inner) => json!({"type": "array", "items": inner.schema()}),
            Ty::Union(members) => {
                json!({"anyOf": members.iter().map(Ty::schema).collect::<Vec<_>>()})
            }
        }
    }
}

/// Whether an output of type `from` may feed an input of type `to`.
pub fn compatible(from: &Ty, to: &Ty) -> bool {
    if from == to || *from == Ty::Any || *to == Ty::Any {
        return true;
    }
    match (from, to) {
        (Ty::Int, Ty::Float) | (Ty::Int | Ty::Float, Ty::Str) => true,
        // A plain string may feed a restricted one; the value is checked when the node runs.
        (Ty::Str, Ty::Enum(_)) | (Ty::Enum(_), Ty::Str) => true,
        (Ty::List(a), Ty::List(b)) => compatible(a, b),
        (_, Ty::Union(members)) if !matches!(from, Ty::Union(_)) => {
            members.iter().any(|m| m == from || compatible(from, m))
        }
        (Ty::Union(members), _) if !matches!(to, Ty::Union(_)) => members.contains(to),
        (Ty::Union(a), Ty::Union(b)) => a.iter().all(|m| b.contains(m)),
        _ => false,
    }
}

/// One failed check, in pydantic's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub kind: &'static str,
    pub msg: String,
    /// Path below the field (list indexes, object keys).
    pub loc: Vec<Value>,
}

fn err(kind: &'static str, msg: impl Into<String>) -> FieldError {
    FieldError {
        kind,
        msg: msg.into(),
        loc: Vec::new(),
    }
}

/// The required string members of the structured types; other named types accept any object.
fn named_keys(name: &str) -> &'static [&'static str] {
    match name {
        "ImageField" => &["image_name"],
        "BoardField" => &["board_id"],
        "LatentsField" => &["latents_name"],
        "ConditioningField" => &["conditioning_name"],
        "TensorField" => &["tensor_name"],
        "DenoiseMaskField" => &["mask_name"],
        "ModelIdentifierField" => &["key", "hash", "name", "base", "type"],
        "LoRAField" => &[],
        _ => &[],
    }
}

/// Checks `value` against `ty`, returning the coerced value (pydantic's lax mode: integral
/// floats and numeric strings become ints, numbers become strings where a string is expected).
pub fn check_value(ty: &Ty, value: &Value) -> Result<Value, FieldError> {
    match ty {
        Ty::Any => Ok(value.clone()),
        Ty::Int => check_int(value),
        Ty::Float => match value {
            Value::Number(n) => Ok(json!(n.as_f64().unwrap_or(0.0))),
            Value::String(s) => s.trim().parse::<f64>().map(|f| json!(f)).map_err(|_| {
                err(
                    "float_parsing",
                    "Input should be a valid number, unable to parse string as a number",
                )
            }),
            Value::Bool(b) => Ok(json!(if *b { 1.0 } else { 0.0 })),
            _ => Err(err("float_type", "Input should be a valid number")),
        },
        Ty::Str => match value {
            Value::String(_) => Ok(value.clone()),
            Value::Number(n) => Ok(json!(n.to_string())),
            _ => Err(err("string_type", "Input should be a valid string")),
        },
        Ty::Bool => check_bool(value),
        Ty::Enum(values) => match value.as_str() {
            Some(s) if values.contains(&s) => Ok(value.clone()),
            _ => Err(err("literal_error", literal_message(values))),
        },
        Ty::Named("ColorField") => check_color(value),
        Ty::Named(name) => match value {
            Value::Object(map) => {
                for key in named_keys(name) {
                    match map.get(*key) {
                        Some(Value::String(_)) => {}
                        Some(_) => {
                            let mut e = err("string_type", "Input should be a valid string");
                            e.loc.push(json!(key));
                            return Err(e);
                        }
                        None => {
                            let mut e = err("missing", "Field required");
                            e.loc.push(json!(key));
                            return Err(e);
                        }
                    }
                }
                Ok(value.clone())
            }
            _ => Err(err(
                "model_type",
                format!("Input should be a valid dictionary or instance of {name}"),
            )),
        },
        Ty::List(inner) => match value {
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match check_value(inner, item) {
                        Ok(v) => out.push(v),
                        Err(mut e) => {
                            e.loc.insert(0, json!(i));
                            return Err(e);
                        }
                    }
                }
                Ok(Value::Array(out))
            }
            _ => Err(err("list_type", "Input should be a valid list")),
        },
        Ty::Union(members) => {
            let mut first = None;
            for member in members {
                match check_value(member, value) {
                    Ok(v) => return Ok(v),
                    Err(e) => {
                        first.get_or_insert(e);
                    }
                }
            }
            Err(first.unwrap_or_else(|| err("union_tag_invalid", "Input does not match")))
        }
    }
}

fn check_int(value: &Value) -> Result<Value, FieldError> {
    match value {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                return Ok(json!(i));
            }
            match n.as_f64() {
                Some(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => Ok(json!(f as i64)),
                Some(f) if f.is_finite() && f.fract() != 0.0 => Err(err(
                    "int_from_float",
                    "Input should be a valid integer, got a number with a fractional part",
                )),
                _ => Err(err("int_type", "Input should be a valid integer")),
            }
        }
        Value::String(s) => s.trim().parse::<i64>().map(|i| json!(i)).map_err(|_| {
            err(
                "int_parsing",
                "Input should be a valid integer, unable to parse string as an integer",
            )
        }),
        Value::Bool(b) => Ok(json!(i64::from(*b))),
        _ => Err(err("int_type", "Input should be a valid integer")),
    }
}

fn check_bool(value: &Value) -> Result<Value, FieldError> {
    let parsing = || {
        err(
            "bool_parsing",
            "Input should be a valid boolean, unable to interpret input",
        )
    };
    match value {
        Value::Bool(_) => Ok(value.clone()),
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.abs() < f64::EPSILON => Ok(json!(false)),
            Some(f) if (f - 1.0).abs() < f64::EPSILON => Ok(json!(true)),
            _ => Err(parsing()),
        },
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "t" | "yes" | "y" | "on" | "1" => Ok(json!(true)),
            "false" | "f" | "no" | "n" | "off" | "0" => Ok(json!(false)),
            _ => Err(parsing()),
        },
        _ => Err(err("bool_type", "Input should be a valid boolean")),
    }
}

fn check_color(value: &Value) -> Result<Value, FieldError> {
    let Value::Object(map) = value else {
        return Err(err(
            "model_type",
            "Input should be a valid dictionary or instance of ColorField",
        ));
    };
    let mut out = serde_json::Map::new();
    for key in ["r", "g", "b", "a"] {
        let Some(v) = map.get(key) else {
            let mut e = err("missing", "Field required");
            e.loc.push(json!(key));
            return Err(e);
        };
        let checked = check_int(v).and_then(|c| match c.as_i64() {
            Some(i) if i < 0 => Err(err(
                "greater_than_equal",
                "Input should be greater than or equal to 0",
            )),
            Some(i) if i > 255 => Err(err(
                "less_than_equal",
                "Input should be less than or equal to 255",
            )),
            _ => Ok(c),
        });
        match checked {
            Ok(c) => {
                out.insert(key.to_owned(), c);
            }
            Err(mut e) => {
                e.loc.insert(0, json!(key));
                return Err(e);
            }
        }
    }
    Ok(Value::Object(out))
}

/// pydantic's literal message: `Input should be 'a', 'b' or 'c'`.
pub fn literal_message(values: &[&str]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("'{v}'")).collect();
    match quoted.split_last() {
        None => "Input should be one of no values".into(),
        Some((last, [])) => format!("Input should be {last}"),
        Some((last, rest)) => format!("Input should be {} or {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lax_coercions_follow_pydantic() {
        assert_eq!(check_value(&Ty::Int, &json!(3.0)), Ok(json!(3)));
        assert_eq!(check_value(&Ty::Int, &json!("12")), Ok(json!(12)));
        assert_eq!(
            check_value(&Ty::Int, &json!(1.5)).map_err(|e| e.kind),
            Err("int_from_float")
        );
        assert_eq!(check_value(&Ty::Str, &json!(5)), Ok(json!("5")));
        assert_eq!(check_value(&Ty::Bool, &json!("yes")), Ok(json!(true)));
        assert_eq!(
            check_value(&Ty::Enum(&["a", "b", "c"]), &json!("d")).map_err(|e| e.msg),
            Err("Input should be 'a', 'b' or 'c'".to_owned())
        );
        let color = check_value(
            &Ty::Named("ColorField"),
            &json!({"r": 1, "g": 2, "b": 300, "a": 4}),
        );
        assert_eq!(color.map_err(|e| e.loc), Err(vec![json!("b")]));
    }

    #[test]
    fn connection_rules() {
        assert!(compatible(&Ty::Int, &Ty::Float));
        assert!(compatible(&Ty::Float, &Ty::Str));
        assert!(!compatible(&Ty::Float, &Ty::Int));
        assert!(!compatible(&Ty::Str, &Ty::Int));
        assert!(compatible(&Ty::list(Ty::Int), &Ty::list(Ty::Float)));
        let cond = Ty::Named("ConditioningField");
        assert!(compatible(&cond, &Ty::one_or_list(cond.clone())));
        assert!(compatible(&Ty::list(cond.clone()), &Ty::one_or_list(cond)));
        assert!(!compatible(&Ty::Named("ImageField"), &Ty::Int));
    }
}

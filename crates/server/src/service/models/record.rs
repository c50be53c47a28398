//! The shape of a model record (models.md §1): the enumerations, which fields each kind
//! carries, the default settings objects, and merging `ModelRecordChanges` into a record.
//!
//! A record is kept as a JSON object rather than one Rust type per kind so that kinds this
//! server does not know (other families written by InvokeAI or a later Atelier) round-trip
//! untouched. Known kinds are normalised: every field of the kind is present (nulls included)
//! and fields of other kinds are dropped, then validated. `cover_image` is never stored; it is
//! computed per response.

use serde_json::{json, Map, Value};

pub type Record = Map<String, Value>;

pub const BASES: &[&str] = &[
    "any",
    "sd-1",
    "sd-2",
    "sd-3",
    "sdxl",
    "sdxl-refiner",
    "flux",
    "flux2",
    "cogview4",
    "z-image",
    "ernie-image",
    "ideogram-4",
    "external",
    "qwen-image",
    "anima",
    "krea-2",
    "wan",
    "unknown",
];

pub const TYPES: &[&str] = &[
    "main",
    "vae",
    "lora",
    "control_lora",
    "controlnet",
    "embedding",
    "ip_adapter",
    "clip_vision",
    "clip_embed",
    "t2i_adapter",
    "t5_encoder",
    "spandrel_image_to_image",
    "siglip",
    "flux_redux",
    "llava_onevision",
    "text_llm",
    "external_image_generator",
    "unknown",
];

pub const FORMATS: &[&str] = &[
    "diffusers",
    "checkpoint",
    "lycoris",
    "omi",
    "embedding_file",
    "embedding_folder",
    "invokeai",
    "t5_encoder",
    "bnb_quantized_int8b",
    "bnb_quantized_nf4b",
    "gguf_quantized",
    "external_api",
    "api",
    "unknown",
];

pub const SOURCE_TYPES: &[&str] = &["path", "url", "hf_repo_id", "external"];
pub const VARIANTS: &[&str] = &["normal", "inpaint", "depth"];
pub const PREDICTION_TYPES: &[&str] = &["epsilon", "v_prediction", "sample"];
pub const REPO_VARIANTS: &[&str] = &["", "fp16", "fp32", "onnx", "openvino", "flax"];
const SD_BASES: &[&str] = &["sd-1", "sd-2", "sdxl", "sdxl-refiner"];

/// Fields every record carries, in the order they are written.
const COMMON: &[&str] = &[
    "key",
    "hash",
    "path",
    "file_size",
    "name",
    "description",
    "source",
    "source_type",
    "source_api_response",
    "source_url",
];

/// The fields of `ModelRecordChanges` (§1.6); anything else in a PATCH body is ignored.
pub const CHANGE_FIELDS: &[&str] = &[
    "source",
    "source_type",
    "source_api_response",
    "source_url",
    "name",
    "path",
    "description",
    "base",
    "type",
    "key",
    "hash",
    "file_size",
    "format",
    "trigger_phrases",
    "default_settings",
    "cpu_only",
    "variant",
    "prediction_type",
    "upcast_attention",
    "config_path",
    "repo_variant",
    "provider_id",
    "provider_model_id",
    "capabilities",
];

/// The kind-specific fields of the kinds this server knows, or `None` for others.
fn kind_fields(kind: &str, format: &str, base: &str) -> Option<&'static [&'static str]> {
    let sd = SD_BASES.contains(&base);
    match (kind, format) {
        ("main", "checkpoint") if sd => Some(&[
            "trigger_phrases",
            "default_settings",
            "config_path",
            "prediction_type",
            "variant",
        ]),
        ("main", "diffusers") if sd => Some(&[
            "trigger_phrases",
            "default_settings",
            "repo_variant",
            "prediction_type",
            "variant",
        ]),
        ("vae", "checkpoint") => Some(&["config_path", "cpu_only"]),
        ("vae", "diffusers") => Some(&["repo_variant", "cpu_only"]),
        ("lora", "lycoris" | "diffusers" | "omi") => Some(&["trigger_phrases", "default_settings"]),
        // InvokeAI's `TI_File_*_Config` / `TI_Folder_*_Config`: the common fields only.
        ("embedding", "embedding_file" | "embedding_folder")
            if matches!(base, "sd-1" | "sd-2" | "sdxl") =>
        {
            Some(&[])
        }
        _ => None,
    }
}

fn str_of<'a>(record: &'a Record, field: &str) -> &'a str {
    record
        .get(field)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Fills in the kind's fields (nulls and defaults), drops fields of other kinds, and checks
/// every value. The error is the message clients see.
pub fn normalize(record: &Record) -> Result<Record, String> {
    let kind = str_of(record, "type").to_owned();
    let format = str_of(record, "format").to_owned();
    let base = str_of(record, "base").to_owned();
    for (field, value) in [("type", &kind), ("format", &format), ("base", &base)] {
        if value.is_empty() {
            return Err(format!("Model field '{field}' is required"));
        }
    }
    if !BASES.contains(&base.as_str()) {
        return Err(format!("Invalid base '{base}'"));
    }
    let mut out = Record::new();
    for field in COMMON {
        out.insert(
            (*field).to_owned(),
            record.get(*field).cloned().unwrap_or(Value::Null),
        );
    }
    out.insert("type".to_owned(), json!(kind));
    match kind_fields(&kind, &format, &base) {
        Some(fields) => {
            for field in fields {
                let value = record.get(*field).cloned().unwrap_or(Value::Null);
                let value = match (*field, value) {
                    ("repo_variant", Value::Null) => json!(""),
                    ("prediction_type", Value::Null) => json!("epsilon"),
                    ("variant", Value::Null) => json!("normal"),
                    (_, v) => v,
                };
                out.insert((*field).to_owned(), value);
            }
        }
        None => {
            // Unknown kinds keep every field they came with.
            for (field, value) in record {
                if !out.contains_key(field) && field != "cover_image" {
                    out.insert(field.clone(), value.clone());
                }
            }
        }
    }
    out.insert("format".to_owned(), json!(format));
    out.insert("base".to_owned(), json!(base));
    validate(&mut out)?;
    Ok(out)
}

fn validate(r: &mut Record) -> Result<(), String> {
    for field in ["key", "hash", "path", "name", "source"] {
        match r.get(field) {
            Some(Value::String(s)) if !s.is_empty() => {}
            _ => return Err(format!("Model field '{field}' must be a non-empty string")),
        }
    }
    if r.get("file_size").and_then(Value::as_u64).is_none() {
        return Err("Model field 'file_size' must be a non-negative integer".to_owned());
    }
    for field in ["description", "source_api_response"] {
        if !matches!(r.get(field), Some(Value::Null | Value::String(_))) {
            return Err(format!("Model field '{field}' must be a string or null"));
        }
    }
    let source_type = str_of(r, "source_type");
    if !SOURCE_TYPES.contains(&source_type) {
        return Err(format!("Invalid source_type '{source_type}'"));
    }
    match r.get("source_url") {
        Some(Value::Null) | None => {}
        Some(Value::String(url)) => {
            let lower = url.to_ascii_lowercase();
            if !(lower.starts_with("http://") || lower.starts_with("https://"))
                || reqwest::Url::parse(url).is_err()
            {
                return Err(format!(
                    "Invalid source_url '{url}': only http and https URLs are allowed"
                ));
            }
        }
        Some(_) => return Err("Model field 'source_url' must be a string or null".to_owned()),
    }
    let base = str_of(r, "base").to_owned();
    if let Some(variant) = r.get("variant").and_then(Value::as_str) {
        if !VARIANTS.contains(&variant) || (variant == "depth" && base != "sd-2") {
            return Err(format!("Invalid variant '{variant}' for base '{base}'"));
        }
    }
    enum_field(r, "prediction_type", PREDICTION_TYPES)?;
    enum_field(r, "repo_variant", REPO_VARIANTS)?;
    if let Some(value) = r.get("cpu_only") {
        if !matches!(value, Value::Null | Value::Bool(_)) {
            return Err("Model field 'cpu_only' must be a boolean or null".to_owned());
        }
    }
    if let Some(value) = r.get("config_path") {
        if !matches!(value, Value::Null | Value::String(_)) {
            return Err("Model field 'config_path' must be a string or null".to_owned());
        }
    }
    if let Some(phrases) = r.get("trigger_phrases").cloned() {
        let phrases = match phrases {
            Value::Null => Value::Null,
            Value::Array(items) => {
                let mut set: Vec<Value> = Vec::new();
                for item in items {
                    if !item.is_string() {
                        return Err("trigger_phrases must be a list of strings".to_owned());
                    }
                    if !set.contains(&item) {
                        set.push(item);
                    }
                }
                Value::Array(set)
            }
            _ => return Err("trigger_phrases must be a list of strings".to_owned()),
        };
        r.insert("trigger_phrases".to_owned(), phrases);
    }
    if let Some(settings) = r.get("default_settings").cloned() {
        let kind = str_of(r, "type");
        let settings = match (kind, settings) {
            (_, Value::Null) => Value::Null,
            ("main", Value::Object(map)) => main_settings(&map)?,
            ("lora", Value::Object(map)) => lora_settings(&map)?,
            ("main" | "lora", _) => {
                return Err("default_settings must be an object or null".to_owned())
            }
            // Other kinds have their own settings shapes; keep them as they are.
            (_, other) => other,
        };
        r.insert("default_settings".to_owned(), settings);
    }
    Ok(())
}

fn enum_field(r: &Record, field: &str, allowed: &[&str]) -> Result<(), String> {
    match r.get(field) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(s)) if allowed.contains(&s.as_str()) => Ok(()),
        Some(other) => Err(format!("Invalid {field} {other}")),
    }
}

const MAIN_SETTINGS: &[&str] = &[
    "vae",
    "vae_precision",
    "scheduler",
    "steps",
    "cfg_scale",
    "cfg_rescale_multiplier",
    "width",
    "height",
    "guidance",
    "cpu_only",
    "fp8_storage",
];

/// The pre-filled `MainModelDefaultSettings` of a freshly installed SD model (§1.3).
pub fn main_defaults(base: &str) -> Value {
    let size = match base {
        "sd-1" => 512,
        "sd-2" => 768,
        "sdxl" => 1024,
        _ => return Value::Null,
    };
    let mut map = Map::new();
    for field in MAIN_SETTINGS {
        map.insert((*field).to_owned(), Value::Null);
    }
    map.insert("width".to_owned(), json!(size));
    map.insert("height".to_owned(), json!(size));
    Value::Object(map)
}

/// The all-null `LoraModelDefaultSettings` an installed LoRA gets.
pub fn lora_defaults() -> Value {
    json!({"weight": null, "weight_min": null, "weight_max": null})
}

fn main_settings(map: &Map<String, Value>) -> Result<Value, String> {
    if let Some(extra) = map.keys().find(|k| !MAIN_SETTINGS.contains(&k.as_str())) {
        return Err(format!("default_settings: unknown field '{extra}'"));
    }
    let num = |k: &str| map.get(k).and_then(Value::as_f64);
    let present = |k: &str| map.get(k).is_some_and(|v| !v.is_null());
    let bad = |k: &str, rule: &str| Err(format!("default_settings.{k} must be {rule}"));
    for k in ["vae", "scheduler"] {
        if present(k) && !map[k].is_string() {
            return bad(k, "a string");
        }
    }
    if present("vae_precision") && !matches!(map["vae_precision"].as_str(), Some("fp16" | "fp32")) {
        return bad("vae_precision", "'fp16' or 'fp32'");
    }
    if present("steps") && map["steps"].as_i64().is_none_or(|v| v <= 0) {
        return bad("steps", "an integer greater than 0");
    }
    for k in ["cfg_scale", "guidance"] {
        if present(k) && !num(k).is_some_and(|v| v >= 1.0) {
            return bad(k, "a number of at least 1");
        }
    }
    if present("cfg_rescale_multiplier")
        && !num("cfg_rescale_multiplier").is_some_and(|v| (0.0..1.0).contains(&v))
    {
        return bad("cfg_rescale_multiplier", "at least 0 and less than 1");
    }
    for k in ["width", "height"] {
        if present(k) && !map[k].as_i64().is_some_and(|v| v >= 64 && v % 8 == 0) {
            return bad(k, "a multiple of 8 of at least 64");
        }
    }
    for k in ["cpu_only", "fp8_storage"] {
        if present(k) && !map[k].is_boolean() {
            return bad(k, "a boolean");
        }
    }
    let mut out = Map::new();
    for field in MAIN_SETTINGS {
        out.insert(
            (*field).to_owned(),
            map.get(*field).cloned().unwrap_or(Value::Null),
        );
    }
    Ok(Value::Object(out))
}

fn lora_settings(map: &Map<String, Value>) -> Result<Value, String> {
    const FIELDS: &[&str] = &["weight", "weight_min", "weight_max"];
    if let Some(extra) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(format!("default_settings: unknown field '{extra}'"));
    }
    let mut values = [None; 3];
    for (slot, field) in values.iter_mut().zip(FIELDS) {
        match map.get(*field) {
            None | Some(Value::Null) => {}
            Some(v) => {
                *slot = Some(
                    v.as_f64()
                        .ok_or_else(|| format!("default_settings.{field} must be a number"))?,
                )
            }
        }
    }
    let [weight, min, max] = values;
    let (lo, hi) = (min.unwrap_or(-1.0), max.unwrap_or(2.0));
    if lo >= hi {
        return Err("default_settings.weight_min must be less than weight_max".to_owned());
    }
    if let Some(w) = weight {
        if w < lo || w > hi {
            return Err(format!(
                "default_settings.weight must lie between {lo} and {hi}"
            ));
        }
    }
    Ok(json!({"weight": weight, "weight_min": min, "weight_max": max}))
}

/// Merges `changes` (a `ModelRecordChanges` object; nulls ignored) into `record` and
/// re-normalises the result.
pub fn apply_changes(record: &Record, changes: &Map<String, Value>) -> Result<Record, String> {
    let mut merged = record.clone();
    for (field, value) in changes {
        if value.is_null() || !CHANGE_FIELDS.contains(&field.as_str()) {
            continue;
        }
        if field == "key" && value.as_str() != record.get("key").and_then(Value::as_str) {
            return Err("The key of an installed model cannot be changed".to_owned());
        }
        merged.insert(field.clone(), value.clone());
    }
    normalize(&merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd1() -> Record {
        json!({"key": "k", "hash": "blake3:00", "path": "k/m.safetensors", "file_size": 10,
               "name": "m", "source": "/x/m.safetensors", "source_type": "path",
               "type": "main", "format": "checkpoint", "base": "sd-1",
               "default_settings": main_defaults("sd-1")})
        .as_object()
        .cloned()
        .unwrap_or_default()
    }

    #[test]
    fn normalize_fills_every_field_of_the_kind() {
        let r = normalize(&sd1()).expect("valid");
        let keys: Vec<&str> = r.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "key",
                "hash",
                "path",
                "file_size",
                "name",
                "description",
                "source",
                "source_type",
                "source_api_response",
                "source_url",
                "type",
                "trigger_phrases",
                "default_settings",
                "config_path",
                "prediction_type",
                "variant",
                "format",
                "base"
            ]
        );
        assert_eq!(r["variant"], "normal");
        assert_eq!(r["default_settings"]["width"], 512);
    }

    #[test]
    fn changes_are_merged_and_checked() {
        let r = normalize(&sd1()).expect("valid");
        let changes = |v: Value| v.as_object().cloned().unwrap_or_default();
        let renamed = apply_changes(&r, &changes(json!({"name": "new", "description": null})))
            .expect("rename");
        assert_eq!(renamed["name"], "new");
        assert!(apply_changes(&r, &changes(json!({"variant": "depth"}))).is_err());
        assert!(apply_changes(&r, &changes(json!({"base": "sd-2", "variant": "depth"}))).is_ok());
        assert!(apply_changes(&r, &changes(json!({"source_url": "ftp://x"}))).is_err());
        assert!(apply_changes(&r, &changes(json!({"default_settings": {"width": 100}}))).is_err());
        assert!(apply_changes(&r, &changes(json!({"default_settings": {"nope": 1}}))).is_err());
        let lora = apply_changes(
            &r,
            &changes(
                json!({"type": "lora", "format": "lycoris", "default_settings": {"weight": 0.5}}),
            ),
        )
        .expect("lora");
        assert!(lora.get("variant").is_none());
        assert_eq!(lora["default_settings"]["weight"], 0.5);
        assert!(apply_changes(
            &lora,
            &changes(json!({"default_settings": {"weight": 3.0}}))
        )
        .is_err());
    }

    #[test]
    fn embeddings_carry_the_common_fields_only() {
        let mut r = sd1();
        r.insert("type".into(), json!("embedding"));
        r.insert("format".into(), json!("embedding_folder"));
        let n = normalize(&r).expect("valid");
        let keys: Vec<&str> = n.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "key",
                "hash",
                "path",
                "file_size",
                "name",
                "description",
                "source",
                "source_type",
                "source_api_response",
                "source_url",
                "type",
                "format",
                "base"
            ]
        );
    }

    #[test]
    fn unknown_kinds_round_trip() {
        let mut r = sd1();
        r.insert("type".into(), json!("t5_encoder"));
        r.insert("format".into(), json!("t5_encoder"));
        r.insert("base".into(), json!("any"));
        r.insert("something".into(), json!({"a": 1}));
        let n = normalize(&r).expect("valid");
        assert_eq!(n["something"], json!({"a": 1}));
    }
}

//! Server configuration: the root directory, `invokeai.yaml`, `api_keys.yaml`, `INVOKEAI_*`
//! environment variables and command-line overrides (spec `config.md`).
//!
//! Every key lives in one static table ([`KEYS`]): its name, its type and constraints, its
//! default and whether Atelier acts on it. Parsing the file, parsing the environment,
//! validation, the runtime-config JSON, the file writer and the example file all read that
//! table, so accepting a new key means adding one row.
//!
//! Invariants kept by this module:
//! - precedence is flags > env > `api_keys.yaml` (only `external_*`) > `invokeai.yaml` > defaults;
//! - every value in a [`Config`] has passed validation for its key, so the typed accessors never
//!   see a value of the wrong shape;
//! - a key InvokeAI knows but Atelier does not act on yields exactly one warning; a key nobody
//!   knows (in the file) is a startup error naming it; unknown `INVOKEAI_*` variables are ignored,
//!   as pydantic-settings does;
//! - environment-derived values are never written into the config file;
//! - secrets (provider API keys, download tokens, credentials in URLs) never appear in `Debug`
//!   output or in [`Config::runtime_config_json`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// The schema version written into (and required of) `invokeai.yaml`.
pub const CONFIG_SCHEMA_VERSION: &str = "4.0.3";
/// Name of the config file inside the root unless `--config` says otherwise.
pub const CONFIG_FILE_NAME: &str = "invokeai.yaml";
/// Name of the provider-key file inside the root.
pub const API_KEYS_FILE_NAME: &str = "api_keys.yaml";
/// Atelier's own database file name, never InvokeAI's `invokeai.db` (spec README, decision 2).
pub const DATABASE_FILE_NAME: &str = "atelier.db";

const MASK: &str = "**********";
const HEADER_META: &str = "# Internal metadata - do not edit:\n";
const HEADER_USER: &str =
    "# Put user settings here - see https://invoke.ai/configuration/invokeai-yaml/:\n";
const HEADER_EXAMPLE: &str = "# This is an example file with default and example settings.\n\
# You should not copy this whole file into your config.\n\
# Only add the settings you need to change to your config file.\n\n";

/// First path segments owned by real routes; a `base_url` starting with one would shadow them.
const RESERVED_BASE_URL_SEGMENTS: &[&str] = &[
    "api",
    "ws",
    "static",
    "docs",
    "redoc",
    "openapi.json",
    "locales",
    "assets",
    "ui",
];

const LOG_LEVELS: &[&str] = &["debug", "info", "warning", "error", "critical"];
const SUBFOLDER_STRATEGIES: &[&str] = &["flat", "date", "type", "hash"];
const PRECISIONS: &[&str] = &["auto", "float16", "bfloat16", "float32"];
const ATTENTION_TYPES: &[&str] = &["auto", "normal", "xformers", "sliced", "torch-sdp"];
const HASHING_ALGORITHMS: &[&str] = &[
    "blake3_multi",
    "blake3_single",
    "random",
    "md5",
    "sha1",
    "sha224",
    "sha256",
    "sha384",
    "sha512",
    "blake2b",
    "blake2s",
    "sha3_224",
    "sha3_256",
    "sha3_384",
    "sha3_512",
    "shake_128",
    "shake_256",
];

/// What `main.rs` passes in from the command line.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// `--root`.
    pub root: Option<PathBuf>,
    /// `--config`; a relative path is resolved against the root, not the working directory.
    pub config: Option<PathBuf>,
    /// `--host` (Atelier convenience, not in InvokeAI): beats env and file.
    pub host: Option<String>,
    /// `--port` (Atelier convenience, not in InvokeAI): beats env and file. `0` asks the OS for a
    /// free port, which integration tests rely on.
    pub port: Option<u16>,
}

/// Why the configuration could not be loaded. Every message names the file, variable or key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file is unreadable, malformed, has an unknown key or a bad value, or a schema
    /// migration failed (the original was restored from the backup).
    #[error("Failed to load config file {}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    /// `api_keys.yaml` is malformed.
    #[error("Failed to load api keys file {}: {reason}", path.display())]
    ApiKeysFile { path: PathBuf, reason: String },
    /// An `INVOKEAI_*` environment variable holds a value its key does not accept.
    #[error("Invalid value for {var}: {reason}")]
    Env { var: String, reason: String },
    /// A value set through a flag or [`Config::set_value`] is not accepted by its key.
    #[error("Invalid value for config key '{key}': {reason}")]
    Value { key: String, reason: String },
    /// [`Config::set_value`] named a key that does not exist.
    #[error("Unknown config key '{0}'")]
    UnknownKey(String),
    /// The root directory could not be determined.
    #[error("Cannot determine the root directory: {0}")]
    Root(String),
    /// A file or directory operation failed.
    #[error("Failed to {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ConfigError {
    let path = path.to_path_buf();
    move |source| ConfigError::Io {
        action,
        path,
        source,
    }
}

// ---------------------------------------------------------------------------------------------
// Key table
// ---------------------------------------------------------------------------------------------

/// The type and constraints of a key.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Bool,
    Int {
        min: Option<i64>,
        max: Option<i64>,
        nullable: bool,
    },
    /// `min` is `(bound, exclusive)`.
    Float {
        min: Option<(f64, bool)>,
        nullable: bool,
    },
    Str {
        nullable: bool,
    },
    /// A path as a string; relative values resolve against the root (or the working directory
    /// for `ssl_*`), which the accessor using it decides.
    Path {
        nullable: bool,
    },
    Enum(&'static [&'static str]),
    StrList {
        nullable: bool,
    },
    /// `null` or a list of `{url_regex, token}`.
    RemoteTokens,
    /// `auto|cpu|mps|cuda[:N]|xpu[:N]`.
    Device,
    /// `auto` or a non-empty list of device strings.
    GenerationDevices,
    /// `auto|balanced|max` or an integer 1–8.
    SliceSize,
    /// Normalised sub-path or null (spec §5.1).
    BaseUrl,
    /// 1–65535 from file and env; 0 (ephemeral) also through flags and `set_value`.
    Port,
}

/// A key's default, in a form that can live in a `static`.
#[derive(Clone, Copy, Debug)]
enum DefaultValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'static str),
    List(&'static [&'static str]),
}

impl DefaultValue {
    fn to_value(self) -> Value {
        match self {
            DefaultValue::Null => Value::Null,
            DefaultValue::Bool(b) => Value::Bool(b),
            DefaultValue::Int(i) => Value::from(i),
            DefaultValue::Float(f) => Value::from(f),
            DefaultValue::Str(s) => Value::from(s),
            DefaultValue::List(items) => {
                Value::Array(items.iter().map(|s| Value::from(*s)).collect())
            }
        }
    }
}

/// Whether Atelier acts on a key. `Unused` keys are accepted with one warning each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Use {
    Used,
    Unused,
}

#[derive(Debug)]
struct KeyDef {
    name: &'static str,
    kind: Kind,
    default: DefaultValue,
    usage: Use,
}

const fn key(name: &'static str, kind: Kind, default: DefaultValue, usage: Use) -> KeyDef {
    KeyDef {
        name,
        kind,
        default,
        usage,
    }
}

const BOOL: Kind = Kind::Bool;
const STR: Kind = Kind::Str { nullable: false };
const OPT_STR: Kind = Kind::Str { nullable: true };
const PATH: Kind = Kind::Path { nullable: false };
const OPT_PATH: Kind = Kind::Path { nullable: true };
const LIST: Kind = Kind::StrList { nullable: false };
const OPT_LIST: Kind = Kind::StrList { nullable: true };
const SCHEMA: Kind = Kind::Enum(&[CONFIG_SCHEMA_VERSION]);
/// A count that may be null: `max_queue_history`.
const OPT_COUNT: Kind = Kind::Int {
    min: Some(0),
    max: None,
    nullable: true,
};
const fn int(min: Option<i64>, max: Option<i64>) -> Kind {
    Kind::Int {
        min,
        max,
        nullable: false,
    }
}
const fn float(min: Option<(f64, bool)>, nullable: bool) -> Kind {
    Kind::Float { min, nullable }
}

use DefaultValue as D;
use Use::{Unused, Used};

/// Every key of spec §5 (InvokeAI's `InvokeAIAppConfig` fields, in its order), plus Atelier's
/// own keys at the end. The order is the order of the example file and of written files.
#[rustfmt::skip]
static KEYS: &[KeyDef] = &[
    // Internal.
    key("schema_version", SCHEMA, D::Str(CONFIG_SCHEMA_VERSION), Used),
    key("legacy_models_yaml_path", OPT_PATH, D::Null, Unused),
    // Web.
    key("host", STR, D::Str("127.0.0.1"), Used),
    key("port", Kind::Port, D::Int(9090), Used),
    key("allow_origins", LIST, D::List(&[]), Used),
    key("allow_credentials", BOOL, D::Bool(true), Used),
    key("allow_methods", LIST, D::List(&["*"]), Used),
    key("allow_headers", LIST, D::List(&["*"]), Used),
    key("ssl_certfile", OPT_PATH, D::Null, Unused),
    key("ssl_keyfile", OPT_PATH, D::Null, Unused),
    key("base_url", Kind::BaseUrl, D::Null, Used),
    key("forwarded_allow_ips", STR, D::Str("127.0.0.1"), Used),
    key("http_compression_level", int(Some(0), Some(9)), D::Int(9), Unused),
    // Misc features.
    key("log_tokenization", BOOL, D::Bool(false), Unused),
    key("patchmatch", BOOL, D::Bool(true), Used),
    // Paths.
    key("models_dir", PATH, D::Str("models"), Used),
    key("convert_cache_dir", PATH, D::Str("models/.convert_cache"), Unused),
    key("download_cache_dir", PATH, D::Str("models/.download_cache"), Unused),
    key("legacy_conf_dir", PATH, D::Str("configs"), Unused),
    key("db_dir", PATH, D::Str("databases"), Used),
    key("outputs_dir", PATH, D::Str("outputs"), Used),
    key("image_subfolder_strategy", Kind::Enum(SUBFOLDER_STRATEGIES), D::Str("flat"), Used),
    key("custom_nodes_dir", PATH, D::Str("nodes"), Unused),
    key("style_presets_dir", PATH, D::Str("style_presets"), Used),
    key("workflow_thumbnails_dir", PATH, D::Str("workflow_thumbnails"), Used),
    // Logging.
    key("log_handlers", LIST, D::List(&["console"]), Used),
    key("log_format", Kind::Enum(&["plain", "color", "syslog", "legacy"]), D::Str("color"), Used),
    key("log_level", Kind::Enum(LOG_LEVELS), D::Str("info"), Used),
    key("log_sql", BOOL, D::Bool(false), Unused),
    key("log_level_network", Kind::Enum(LOG_LEVELS), D::Str("warning"), Used),
    // Development.
    key("use_memory_db", BOOL, D::Bool(false), Used),
    key("dev_reload", BOOL, D::Bool(false), Unused),
    key("profile_graphs", BOOL, D::Bool(false), Unused),
    key("profile_prefix", OPT_STR, D::Null, Unused),
    key("profiles_dir", PATH, D::Str("profiles"), Unused),
    // Model cache.
    key("max_cache_ram_gb", float(Some((0.0, true)), true), D::Null, Used),
    key("max_cache_vram_gb", float(Some((0.0, false)), true), D::Null, Unused),
    key("log_memory_usage", BOOL, D::Bool(false), Unused),
    key("model_cache_keep_alive_min", float(Some((0.0, false)), false), D::Float(0.0), Unused),
    key("device_working_mem_gb", float(None, false), D::Float(3.0), Unused),
    key("enable_partial_loading", BOOL, D::Bool(true), Unused),
    key("smart_partial_loading", BOOL, D::Bool(false), Unused),
    key("keep_ram_copy_of_weights", BOOL, D::Bool(true), Unused),
    key("ram", float(Some((0.0, true)), true), D::Null, Used),
    key("vram", float(Some((0.0, false)), true), D::Null, Unused),
    key("lazy_offload", BOOL, D::Bool(true), Unused),
    key("pytorch_cuda_alloc_conf", OPT_STR, D::Null, Unused),
    // Device.
    key("device", Kind::Device, D::Str("auto"), Used),
    key("generation_devices", Kind::GenerationDevices, D::Str("auto"), Unused),
    key("offload_text_encoders_to_idle_gpus", BOOL, D::Bool(true), Unused),
    key("precision", Kind::Enum(PRECISIONS), D::Str("auto"), Used),
    // Generation.
    key("sequential_guidance", BOOL, D::Bool(false), Unused),
    key("wan_memory_optimization", BOOL, D::Bool(false), Unused),
    key("pid_memory_optimization", BOOL, D::Bool(false), Unused),
    key("attention_type", Kind::Enum(ATTENTION_TYPES), D::Str("auto"), Unused),
    key("attention_slice_size", Kind::SliceSize, D::Str("auto"), Unused),
    key("force_tiled_decode", BOOL, D::Bool(false), Unused),
    key("pil_compress_level", int(None, None), D::Int(1), Unused),
    key("max_queue_size", int(Some(1), None), D::Int(10000), Used),
    key("session_queue_mode", Kind::Enum(&["FIFO", "round_robin"]), D::Str("round_robin"), Used),
    key("clear_queue_on_startup", BOOL, D::Bool(false), Unused),
    key("max_queue_history", OPT_COUNT, D::Null, Unused),
    // Nodes.
    key("allow_nodes", OPT_LIST, D::Null, Unused),
    key("deny_nodes", OPT_LIST, D::Null, Unused),
    key("node_cache_size", int(None, None), D::Int(512), Used),
    // Model install and downloads.
    key("hashing_algorithm", Kind::Enum(HASHING_ALGORITHMS), D::Str("blake3_single"), Used),
    key("remote_api_tokens", Kind::RemoteTokens, D::Null, Unused),
    key("allow_private_download_urls", BOOL, D::Bool(false), Used),
    key("download_proxy", OPT_STR, D::Null, Used),
    key("scan_models_on_startup", BOOL, D::Bool(false), Used),
    key("unsafe_disable_picklescan", BOOL, D::Bool(false), Unused),
    key("allow_unknown_models", BOOL, D::Bool(true), Unused),
    // Multi-user.
    key("multiuser", BOOL, D::Bool(false), Used),
    key("strict_password_checking", BOOL, D::Bool(false), Used),
    // External providers (also read from api_keys.yaml).
    key("external_alibabacloud_api_key", OPT_STR, D::Null, Unused),
    key("external_alibabacloud_base_url", OPT_STR, D::Null, Unused),
    key("external_gemini_api_key", OPT_STR, D::Null, Unused),
    key("external_openai_api_key", OPT_STR, D::Null, Unused),
    key("external_gemini_base_url", OPT_STR, D::Null, Unused),
    key("external_openai_base_url", OPT_STR, D::Null, Unused),
    key("external_seedream_api_key", OPT_STR, D::Null, Unused),
    key("external_seedream_base_url", OPT_STR, D::Null, Unused),
    // Atelier extensions (not in InvokeAI; additive, spec README decision 4).
    // Where the database lives: `sqlite://...` or `postgres://...`; null means
    // `<db_dir>/atelier.db`. Only its type is checked here; the store parses it.
    key("database_url", OPT_STR, D::Null, Used),
    // Login throttling: failed attempts allowed per account / per client address within the
    // window before further attempts are refused. 0 disables that limit.
    key("login_throttle_account_max", int(Some(0), Some(u32::MAX as i64)), D::Int(10), Used),
    key("login_throttle_client_max", int(Some(0), Some(u32::MAX as i64)), D::Int(50), Used),
    key("login_throttle_window_s", int(Some(1), Some(u32::MAX as i64)), D::Int(900), Used),
    // Largest accepted request body for JSON endpoints (uploads have their own limits).
    key("max_request_body_bytes", int(Some(1024), None), D::Int(1_048_576), Used),
    // Largest accepted image upload, in bytes (the whole multipart body).
    key("max_upload_bytes", int(Some(1024), None), D::Int(52_428_800), Used),
];

/// Provider keys that `api_keys.yaml` may hold (spec §5.8).
const EXTERNAL_PROVIDER_KEYS: &[&str] = &[
    "external_alibabacloud_api_key",
    "external_alibabacloud_base_url",
    "external_gemini_api_key",
    "external_gemini_base_url",
    "external_openai_api_key",
    "external_openai_base_url",
    "external_seedream_api_key",
    "external_seedream_base_url",
];

fn key_def(name: &str) -> Option<&'static KeyDef> {
    KEYS.iter().find(|k| k.name == name)
}

// ---------------------------------------------------------------------------------------------
// Value validation
// ---------------------------------------------------------------------------------------------

/// Where a value comes from; only flags and `set_value` may bind the ephemeral port 0.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    FileOrEnv,
    Override,
}

fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("'{s}'"),
        other => other.to_string(),
    }
}

fn parse_bool_text(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" | "t" | "y" => Some(true),
        "false" | "0" | "no" | "off" | "f" | "n" => Some(false),
        _ => None,
    }
}

fn as_integer(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                // Exact: the value is integral and well inside i64's range.
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    }
}

fn as_float(v: &Value) -> Option<f64> {
    let f = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }?;
    f.is_finite().then_some(f)
}

fn check_int(i: i64, min: Option<i64>, max: Option<i64>) -> Result<Value, String> {
    if let Some(min) = min {
        if i < min {
            return Err(format!("must be at least {min} (got {i})"));
        }
    }
    if let Some(max) = max {
        if i > max {
            return Err(format!("must be at most {max} (got {i})"));
        }
    }
    Ok(Value::from(i))
}

fn is_device(s: &str, allow_auto: bool) -> bool {
    match s {
        "auto" => allow_auto,
        "cpu" | "mps" | "cuda" | "xpu" => true,
        _ => ["cuda:", "xpu:"].iter().any(|prefix| {
            s.strip_prefix(prefix)
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        }),
    }
}

/// Normalises `base_url` as InvokeAI does: trim whitespace, then slashes; empty means unset;
/// otherwise `/<value>`, unless its first segment belongs to a real route.
fn normalize_base_url(raw: &str) -> Result<Option<String>, String> {
    let trimmed = raw.trim().trim_matches('/');
    if trimmed.is_empty() {
        return Ok(None);
    }
    let first = trimmed.split('/').next().unwrap_or(trimmed);
    if RESERVED_BASE_URL_SEGMENTS.contains(&first) {
        return Err(format!(
            "base_url must not start with reserved path segment '/{first}'"
        ));
    }
    Ok(Some(format!("/{trimmed}")))
}

/// A structural check of a regular expression (balanced groups and classes, quantifiers that
/// follow something, no dangling escape). The server has no regex engine at load time; the
/// downloader compiles the pattern when it uses it.
fn check_regex(pattern: &str) -> Result<(), String> {
    let mut depth = 0usize;
    let mut in_class = false;
    let mut can_repeat = false;
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if chars.next().is_none() {
                return Err("bad escape (end of pattern)".into());
            }
            can_repeat = true;
            continue;
        }
        if in_class {
            if c == ']' {
                in_class = false;
                can_repeat = true;
            }
            continue;
        }
        match c {
            '[' => {
                in_class = true;
                // A leading `]` (or `^]`) is a literal member of the class.
                if chars.peek() == Some(&'^') {
                    chars.next();
                }
                if chars.peek() == Some(&']') {
                    chars.next();
                }
            }
            '(' => {
                depth += 1;
                can_repeat = false;
                if chars.peek() == Some(&'?') {
                    chars.next();
                }
            }
            ')' => {
                if depth == 0 {
                    return Err("unbalanced parenthesis".into());
                }
                depth -= 1;
                can_repeat = true;
            }
            '*' | '+' | '?' => {
                if !can_repeat {
                    return Err("nothing to repeat".into());
                }
                // Lazy/possessive suffixes (`*?`, `++`) are fine; a third quantifier is not.
                if matches!(chars.peek(), Some('?') | Some('+')) {
                    chars.next();
                }
                can_repeat = false;
            }
            '|' => can_repeat = false,
            '^' | '$' => can_repeat = false,
            _ => can_repeat = true,
        }
    }
    if in_class {
        return Err("unterminated character set".into());
    }
    if depth != 0 {
        return Err("missing ), unterminated subpattern".into());
    }
    Ok(())
}

fn validate_string_list(v: &Value) -> Result<Value, String> {
    match v {
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(s) => out.push(Value::from(s.as_str())),
                    other => {
                        return Err(format!(
                            "item {i} must be a string (got {})",
                            describe(other)
                        ))
                    }
                }
            }
            Ok(Value::Array(out))
        }
        other => Err(format!(
            "expected a list of strings (got {})",
            describe(other)
        )),
    }
}

/// Checks `v` against the key's type and constraints and returns the normalised value
/// (integers for int keys, floats for float keys, the normalised `base_url`, ...).
fn validate(def: &KeyDef, v: &Value, origin: Origin) -> Result<Value, String> {
    let expected = |what: &str| format!("expected {what} (got {})", describe(v));
    match def.kind {
        Kind::Bool => match v {
            Value::Bool(b) => Ok(Value::Bool(*b)),
            Value::Number(_) => match as_integer(v) {
                Some(0) => Ok(Value::Bool(false)),
                Some(1) => Ok(Value::Bool(true)),
                _ => Err(expected("a boolean")),
            },
            Value::String(s) => parse_bool_text(s)
                .map(Value::Bool)
                .ok_or_else(|| expected("a boolean")),
            _ => Err(expected("a boolean")),
        },
        Kind::Int { min, max, nullable } => {
            if v.is_null() && nullable {
                return Ok(Value::Null);
            }
            let i = as_integer(v).ok_or_else(|| expected("an integer"))?;
            check_int(i, min, max)
        }
        Kind::Port => {
            let i = as_integer(v).ok_or_else(|| expected("an integer"))?;
            let min = if origin == Origin::Override { 0 } else { 1 };
            check_int(i, Some(min), Some(65535))
        }
        Kind::Float { min, nullable } => {
            if v.is_null() && nullable {
                return Ok(Value::Null);
            }
            let f = as_float(v).ok_or_else(|| expected("a number"))?;
            match min {
                Some((bound, true)) if f <= bound => {
                    Err(format!("must be greater than {bound} (got {f})"))
                }
                Some((bound, false)) if f < bound => {
                    Err(format!("must be at least {bound} (got {f})"))
                }
                _ => Ok(Value::from(f)),
            }
        }
        Kind::Str { nullable } | Kind::Path { nullable } => match v {
            Value::String(s) => Ok(Value::from(s.as_str())),
            Value::Null if nullable => Ok(Value::Null),
            _ => Err(expected("a string")),
        },
        Kind::Enum(choices) => match v {
            Value::String(s) if choices.contains(&s.as_str()) => Ok(Value::from(s.as_str())),
            _ => Err(format!(
                "expected one of {} (got {})",
                choices
                    .iter()
                    .map(|c| format!("'{c}'"))
                    .collect::<Vec<_>>()
                    .join(", "),
                describe(v)
            )),
        },
        Kind::StrList { nullable } => {
            if v.is_null() && nullable {
                return Ok(Value::Null);
            }
            validate_string_list(v)
        }
        Kind::RemoteTokens => validate_remote_tokens(v),
        Kind::Device => match v {
            Value::String(s) if is_device(s, true) => Ok(Value::from(s.as_str())),
            _ => Err(expected("'auto', 'cpu', 'mps', 'cuda[:N]' or 'xpu[:N]'")),
        },
        Kind::GenerationDevices => match v {
            Value::String(s) if s == "auto" => Ok(Value::from("auto")),
            Value::Array(items) if !items.is_empty() => {
                for item in items {
                    match item {
                        Value::String(s) if is_device(s, false) => {}
                        other => {
                            return Err(format!(
                            "invalid device {} (expected 'cpu', 'mps', 'cuda[:N]' or 'xpu[:N]')",
                            describe(other)
                        ))
                        }
                    }
                }
                Ok(v.clone())
            }
            _ => Err(expected("'auto' or a non-empty list of devices")),
        },
        Kind::SliceSize => match v {
            Value::String(s) if matches!(s.as_str(), "auto" | "balanced" | "max") => {
                Ok(Value::from(s.as_str()))
            }
            _ => match as_integer(v) {
                Some(i) if (1..=8).contains(&i) && !v.is_boolean() => Ok(Value::from(i)),
                _ => Err(expected(
                    "'auto', 'balanced', 'max' or an integer from 1 to 8",
                )),
            },
        },
        Kind::BaseUrl => match v {
            Value::Null => Ok(Value::Null),
            Value::String(s) => Ok(normalize_base_url(s)?.map_or(Value::Null, Value::from)),
            _ => Err(expected("a string")),
        },
    }
}

fn validate_remote_tokens(v: &Value) -> Result<Value, String> {
    let items = match v {
        Value::Null => return Ok(Value::Null),
        Value::Array(items) => items,
        other => {
            return Err(format!(
                "expected a list of {{url_regex, token}} objects (got {})",
                describe(other)
            ))
        }
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::Object(obj) = item else {
            return Err(format!(
                "item {i} must be an object with url_regex and token"
            ));
        };
        let field = |name: &str| match obj.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(format!(
                "item {i}: {name} must be a string (got {})",
                describe(other)
            )),
            None => Err(format!("item {i}: {name} is required")),
        };
        let url_regex = field("url_regex")?;
        let token = field("token")?;
        check_regex(&url_regex).map_err(|e| format!("item {i}: invalid regex: {e}"))?;
        let mut entry = Map::new();
        entry.insert("url_regex".into(), Value::from(url_regex));
        entry.insert("token".into(), Value::from(token));
        out.push(Value::Object(entry));
    }
    Ok(Value::Array(out))
}

/// Turns an environment variable's text into a JSON value of the key's shape: scalars are
/// plain text, lists and objects are JSON (pydantic-settings' rule).
fn env_value(def: &KeyDef, raw: &str) -> Result<Value, String> {
    match def.kind {
        Kind::Bool => parse_bool_text(raw)
            .map(Value::Bool)
            .ok_or_else(|| format!("expected a boolean (got '{raw}')")),
        Kind::StrList { .. } | Kind::RemoteTokens => serde_json::from_str(raw)
            .map_err(|e| format!("expected a JSON list (got '{raw}': {e})")),
        Kind::GenerationDevices if raw.trim() == "auto" => Ok(Value::from("auto")),
        Kind::GenerationDevices => serde_json::from_str(raw)
            .map_err(|e| format!("expected 'auto' or a JSON list (got '{raw}': {e})")),
        _ => Ok(Value::from(raw)),
    }
}

// ---------------------------------------------------------------------------------------------
// Root directory and paths
// ---------------------------------------------------------------------------------------------

fn env_get<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter()
        .rev()
        .find(|(k, v)| k == name && !v.is_empty())
        .map(|(_, v)| v.as_str())
}

fn home_dir(env: &[(String, String)]) -> Result<PathBuf, ConfigError> {
    env_get(env, "HOME")
        .or_else(|| env_get(env, "USERPROFILE"))
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .or_else(|| std::env::var_os("USERPROFILE"))
                .filter(|h| !h.is_empty())
                .map(PathBuf::from)
        })
        .ok_or_else(|| {
            ConfigError::Root("no home directory; set INVOKEAI_ROOT or pass --root".into())
        })
}

fn expand_tilde(p: &Path, env: &[(String, String)]) -> Result<PathBuf, ConfigError> {
    let mut components = p.components();
    match components.next() {
        Some(std::path::Component::Normal(first)) if first == "~" => {
            Ok(home_dir(env)?.join(components.as_path()))
        }
        _ => Ok(p.to_path_buf()),
    }
}

/// Makes `p` absolute against the working directory and resolves symlinks when it exists.
fn absolutize(p: &Path) -> Result<PathBuf, ConfigError> {
    let abs = std::path::absolute(p).map_err(io_error("make absolute", p))?;
    Ok(fs::canonicalize(&abs).unwrap_or(abs))
}

fn resolve_against(root: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        root.join(p)
    }
}

// ---------------------------------------------------------------------------------------------
// The config file
// ---------------------------------------------------------------------------------------------

/// Validated `(key, value)` pairs read from a config file, in file order.
type FileValues = Vec<(&'static str, Value)>;

fn file_error(path: &Path, reason: impl Into<String>) -> ConfigError {
    ConfigError::File {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Parses YAML text into a string-keyed JSON mapping.
fn parse_yaml_mapping(text: &str) -> Result<Map<String, Value>, String> {
    let yaml: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    let serde_yaml::Value::Mapping(mapping) = yaml else {
        return Err("the file is not a YAML mapping".into());
    };
    let mut out = Map::new();
    for (k, v) in mapping {
        let serde_yaml::Value::String(k) = k else {
            return Err(format!("keys must be strings (got {k:?})"));
        };
        let v = serde_json::to_value(&v).map_err(|e| format!("value of '{k}': {e}"))?;
        out.insert(k, v);
    }
    Ok(out)
}

/// v3 layout (`InvokeAI:` with category sub-mappings) → 4.0.0.
fn migrate_v3(doc: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    let categories = doc.get("InvokeAI").and_then(Value::as_object);
    for category in categories.into_iter().flat_map(|c| c.values()) {
        let Some(category) = category.as_object() else {
            continue;
        };
        for (k, v) in category {
            match k.as_str() {
                "outdir" => {
                    out.insert("outputs_dir".into(), v.clone());
                }
                "max_cache_size" if !category.contains_key("ram") => {
                    out.insert("ram".into(), v.clone());
                }
                "max_vram_cache_size" if !category.contains_key("vram") => {
                    out.insert("vram".into(), v.clone());
                }
                "precision" if v.as_str() == Some("autocast") => {
                    out.insert("precision".into(), Value::from("auto"));
                }
                "conf_path" => {
                    out.insert("legacy_models_yaml_path".into(), v.clone());
                }
                "legacy_conf_dir" => {
                    // The v3 default pointed at the `stable-diffusion` sub-folder; v4 wants its
                    // parent, and the old default is simply dropped.
                    let Some(s) = v.as_str() else {
                        out.insert(k.clone(), v.clone());
                        continue;
                    };
                    if s == "configs/stable-diffusion" || s == "configs\\stable-diffusion" {
                        continue;
                    }
                    let p = Path::new(s);
                    let migrated = match (p.file_name(), p.parent()) {
                        (Some(name), Some(parent)) if name == "stable-diffusion" => {
                            parent.to_string_lossy().into_owned()
                        }
                        _ => s.to_string(),
                    };
                    out.insert(k.clone(), Value::from(migrated));
                }
                "schema_version" => {}
                _ if key_def(k).is_some() => {
                    out.insert(k.clone(), v.clone());
                }
                // Unknown v3 keys are dropped, as the reference does.
                _ => {}
            }
        }
    }
    out.insert("schema_version".into(), Value::from("4.0.0"));
    out
}

/// Applies the schema migrations in order; returns whether anything changed.
fn migrate(doc: &mut Map<String, Value>) -> bool {
    let mut migrated = false;
    if doc.contains_key("InvokeAI") {
        *doc = migrate_v3(doc);
        migrated = true;
    }
    if doc.get("schema_version").and_then(Value::as_str) == Some("4.0.0") {
        if doc.get("precision").and_then(Value::as_str) == Some("autocast") {
            doc.insert("precision".into(), Value::from("auto"));
        }
        doc.insert("schema_version".into(), Value::from("4.0.1"));
        migrated = true;
    }
    if doc.get("schema_version").and_then(Value::as_str) == Some("4.0.1") {
        doc.remove("convert_cache");
        doc.insert("schema_version".into(), Value::from("4.0.2"));
        migrated = true;
    }
    if doc.get("schema_version").and_then(Value::as_str) == Some("4.0.2") {
        doc.insert("schema_version".into(), Value::from(CONFIG_SCHEMA_VERSION));
        migrated = true;
    }
    migrated
}

/// Validates a (migrated) document: the schema version, then every key.
fn validate_document(doc: &Map<String, Value>) -> Result<FileValues, String> {
    match doc.get("schema_version") {
        // Optional for Atelier (spec README, decision 3): a file without it is read as the
        // current schema. The reference refuses such a file with a bare KeyError.
        None => {}
        Some(Value::String(v)) if v == CONFIG_SCHEMA_VERSION => {}
        Some(other) => {
            return Err(format!(
                "Invalid schema version, expected {CONFIG_SCHEMA_VERSION}: {}",
                describe(other)
            ))
        }
    }
    let mut values = Vec::with_capacity(doc.len());
    for (k, v) in doc {
        let def = key_def(k).ok_or_else(|| format!("unknown key '{k}'"))?;
        if def.name == "schema_version" {
            continue;
        }
        let v = validate(def, v, Origin::FileOrEnv)
            .map_err(|e| format!("invalid value for '{k}': {e}"))?;
        values.push((def.name, v));
    }
    Ok(values)
}

fn backup_path(config_path: &Path) -> PathBuf {
    let stem = config_path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    config_path.with_file_name(format!("{stem}.yaml.bak"))
}

fn example_path(config_path: &Path) -> PathBuf {
    config_path.with_extension("example.yaml")
}

/// Reads, migrates (with a backup) and validates the config file.
fn load_file(path: &Path) -> Result<FileValues, ConfigError> {
    let text = fs::read_to_string(path).map_err(|e| file_error(path, e.to_string()))?;
    let mut doc = parse_yaml_mapping(&text).map_err(|e| file_error(path, e))?;
    if migrate(&mut doc) {
        let backup = backup_path(path);
        fs::copy(path, &backup).map_err(io_error("back up config file to", &backup))?;
        let written = validate_document(&doc).and_then(|values| {
            let text = render_config_file(&values)?;
            fs::write(path, text).map_err(|e| e.to_string())?;
            Ok(values)
        });
        return match written {
            Ok(values) => {
                tracing::info!(
                    "migrated config file {} to schema {CONFIG_SCHEMA_VERSION} (backup at {})",
                    path.display(),
                    backup.display()
                );
                Ok(values)
            }
            Err(reason) => {
                // Leave the user's file as it was before we touched it.
                fs::copy(&backup, path).map_err(io_error("restore config file from", &backup))?;
                Err(file_error(path, reason))
            }
        };
    }
    validate_document(&doc).map_err(|e| file_error(path, e))
}

/// Dumps `(key, value)` pairs as a YAML mapping in the given order (serde_json's `Map` may be
/// sorted, depending on crate features elsewhere in the build).
fn to_yaml(entries: Vec<(&'static str, Value)>) -> Result<String, String> {
    let mut mapping = serde_yaml::Mapping::new();
    for (k, v) in entries {
        mapping.insert(serde_yaml::Value::from(k), yaml_value(&v)?);
    }
    serde_yaml::to_string(&mapping).map_err(|e| e.to_string())
}

/// JSON → YAML, writing `remote_api_tokens` entries as `url_regex` then `token`, like the
/// reference, whatever order the JSON map iterates in.
fn yaml_value(v: &Value) -> Result<serde_yaml::Value, String> {
    match v {
        Value::Array(items) => items
            .iter()
            .map(yaml_value)
            .collect::<Result<Vec<_>, _>>()
            .map(serde_yaml::Value::Sequence),
        Value::Object(obj) => {
            let mut keys: Vec<&String> = obj.keys().collect();
            keys.sort_by_key(|k| k.as_str() != "url_regex");
            let mut mapping = serde_yaml::Mapping::new();
            for k in keys {
                if let Some(item) = obj.get(k) {
                    mapping.insert(serde_yaml::Value::from(k.as_str()), yaml_value(item)?);
                }
            }
            Ok(serde_yaml::Value::Mapping(mapping))
        }
        scalar => serde_yaml::to_value(scalar).map_err(|e| e.to_string()),
    }
}

fn meta_block() -> String {
    format!("{HEADER_META}schema_version: {CONFIG_SCHEMA_VERSION}\n\n{HEADER_USER}")
}

/// The text of a config file: the two comment lines, `schema_version`, then the given keys
/// that differ from their default, in table order (spec §3.2).
fn render_config_file(values: &[(&'static str, Value)]) -> Result<String, String> {
    let mut entries = Vec::new();
    for def in KEYS {
        if def.name == "schema_version" {
            continue;
        }
        if let Some((_, v)) = values.iter().rev().find(|(k, _)| *k == def.name) {
            if *v != def.default.to_value() {
                entries.push((def.name, v.clone()));
            }
        }
    }
    let mut text = meta_block();
    if !entries.is_empty() {
        text.push_str(&to_yaml(entries)?);
    }
    Ok(text)
}

/// The example file: every non-null default plus sample `remote_api_tokens`.
fn render_example_file() -> Result<String, String> {
    let mut entries = Vec::new();
    for def in KEYS {
        if matches!(def.name, "schema_version" | "legacy_models_yaml_path") {
            continue;
        }
        let v = if def.name == "remote_api_tokens" {
            serde_json::json!([
                {"url_regex": "cool-models.com", "token": "my_secret_token"},
                {"url_regex": "nifty-models.com", "token": "some_other_token"},
            ])
        } else {
            def.default.to_value()
        };
        if !v.is_null() {
            entries.push((def.name, v));
        }
    }
    Ok(format!(
        "{HEADER_EXAMPLE}{}{}",
        meta_block(),
        to_yaml(entries)?
    ))
}

fn write_file(path: &Path, text: &str) -> Result<(), ConfigError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io_error("create directory", parent))?;
    }
    fs::write(path, text).map_err(io_error("write", path))
}

/// Reads `api_keys.yaml`: a flat mapping of `external_*` keys to strings; blanks are ignored.
fn load_api_keys(path: &Path) -> Result<Vec<(&'static str, Value)>, ConfigError> {
    let err = |reason: String| ConfigError::ApiKeysFile {
        path: path.to_path_buf(),
        reason,
    };
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(err(e.to_string())),
    };
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| err(e.to_string()))?;
    let mapping = match yaml {
        serde_yaml::Value::Null => return Ok(Vec::new()),
        serde_yaml::Value::Mapping(m) => m,
        _ => return Err(err("expected a mapping".into())),
    };
    let mut out = Vec::new();
    for name in EXTERNAL_PROVIDER_KEYS {
        match mapping.get(*name) {
            None | Some(serde_yaml::Value::Null) => {}
            Some(serde_yaml::Value::String(s)) => {
                let s = s.trim();
                if !s.is_empty() {
                    out.push((*name, Value::from(s)));
                }
            }
            Some(_) => return Err(err(format!("value for '{name}' must be a string"))),
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

/// The effective configuration. Built once at startup and handed to components through
/// `AppState`; never a global.
#[derive(Clone)]
pub struct Config {
    root: PathBuf,
    config_path: PathBuf,
    /// Every key of [`KEYS`] with its effective, validated value.
    values: BTreeMap<&'static str, Value>,
    /// Keys explicitly set by the file (when different from the default), `api_keys.yaml`, the
    /// environment, flags or `set_value`.
    set_fields: BTreeSet<&'static str>,
    // Typed copies of the list keys, so accessors can hand out slices.
    allow_origins: Vec<String>,
    allow_methods: Vec<String>,
    allow_headers: Vec<String>,
}

/// Parsed `INVOKEAI_*` variables: key → (variable name as given, value).
type EnvValues = BTreeMap<&'static str, (String, Value)>;

fn parse_env(env: &[(String, String)]) -> Result<EnvValues, ConfigError> {
    let mut out = EnvValues::new();
    for (name, raw) in env {
        let lower = name.to_ascii_lowercase();
        let Some(key) = lower.strip_prefix("invokeai_") else {
            continue;
        };
        if raw.is_empty() {
            continue;
        }
        // Unknown names (INVOKEAI_ROOT among them) are not keys and are ignored, as
        // pydantic-settings does; the schema version only ever comes from the file.
        let Some(def) = key_def(key).filter(|d| d.name != "schema_version") else {
            continue;
        };
        let value = env_value(def, raw)
            .and_then(|v| validate(def, &v, Origin::FileOrEnv))
            .map_err(|reason| ConfigError::Env {
                var: name.clone(),
                reason,
            })?;
        out.insert(def.name, (name.clone(), value));
    }
    Ok(out)
}

fn unused_warning(name: &str) -> String {
    format!("config key '{name}' is accepted but not used by Atelier yet")
}

impl Config {
    fn with_defaults(root: PathBuf, config_path: PathBuf) -> Config {
        let mut config = Config {
            root,
            config_path,
            values: KEYS
                .iter()
                .map(|k| (k.name, k.default.to_value()))
                .collect(),
            set_fields: BTreeSet::new(),
            allow_origins: Vec::new(),
            allow_methods: Vec::new(),
            allow_headers: Vec::new(),
        };
        config.sync_lists();
        config
    }

    fn sync_lists(&mut self) {
        let list = |values: &BTreeMap<&'static str, Value>, k: &str| -> Vec<String> {
            values
                .get(k)
                .and_then(Value::as_array)
                .map(|items| {
                    items
                        .iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        self.allow_origins = list(&self.values, "allow_origins");
        self.allow_methods = list(&self.values, "allow_methods");
        self.allow_headers = list(&self.values, "allow_headers");
    }

    fn put(&mut self, name: &'static str, value: Value) {
        self.values.insert(name, value);
        self.set_fields.insert(name);
    }

    /// Loads the configuration as the server starts (spec `config.md` §1–§4, §6).
    ///
    /// Resolves and creates the root, creates `invokeai.yaml` when missing, migrates old
    /// schema versions (leaving `invokeai.yaml.bak`), layers defaults < file < `api_keys.yaml`
    /// < env < flags, validates everything, regenerates `<stem>.example.yaml` and creates the
    /// database and outputs directories. Returns the config plus one warning per key that
    /// InvokeAI knows but Atelier ignores, for the caller to log.
    pub fn load(
        opts: &LoadOptions,
        env: &[(String, String)],
    ) -> Result<(Config, Vec<String>), ConfigError> {
        let root = Self::resolve_root(opts.root.as_deref(), env)?;
        fs::create_dir_all(&root).map_err(io_error("create root directory", &root))?;
        let root = fs::canonicalize(&root).unwrap_or(root);
        let config_path = match &opts.config {
            // `join` keeps an absolute `p` as is.
            Some(p) => absolutize(&root.join(p))?,
            None => root.join(CONFIG_FILE_NAME),
        };

        let env_values = parse_env(env)?;

        let example = example_path(&config_path);
        let example_text = render_example_file().map_err(|e| file_error(&example, e))?;
        write_file(&example, &example_text)?;

        let file_values = if config_path.exists() {
            load_file(&config_path)?
        } else {
            write_file(&config_path, &meta_block())?;
            Vec::new()
        };
        let api_keys = load_api_keys(&root.join(API_KEYS_FILE_NAME))?;

        let mut config = Config::with_defaults(root, config_path);
        let mut seen: BTreeSet<&'static str> = BTreeSet::new();
        for (name, value) in &file_values {
            seen.insert(name);
            // The environment wins; a file value equal to the default does not count as set
            // (InvokeAI merges only differing values).
            if !env_values.contains_key(name) && config.values.get(name) != Some(value) {
                config.put(name, value.clone());
            }
        }
        for (name, value) in api_keys {
            seen.insert(name);
            if !env_values.contains_key(name) && config.values.get(name) != Some(&value) {
                config.put(name, value);
            }
        }
        for (name, (_, value)) in env_values {
            seen.insert(name);
            config.put(name, value);
        }
        if let Some(host) = &opts.host {
            config.set_value("host", Value::from(host.as_str()))?;
        }
        if let Some(port) = opts.port {
            config.set_value("port", Value::from(port))?;
        }
        config.sync_lists();

        let mut warnings: Vec<String> = KEYS
            .iter()
            .filter(|d| d.usage == Unused && seen.contains(d.name))
            .map(|d| unused_warning(d.name))
            .collect();
        if let Some(handlers) = config.values.get("log_handlers").and_then(Value::as_array) {
            for handler in handlers.iter().filter_map(Value::as_str) {
                if handler != "console" {
                    warnings.push(format!(
                        "log handler '{handler}' is not supported by Atelier yet; logging to the console"
                    ));
                }
            }
        }

        for dir in [config.db_dir(), config.outputs_dir()] {
            fs::create_dir_all(&dir).map_err(io_error("create directory", &dir))?;
        }
        Ok((config, warnings))
    }

    /// A complete configuration for tests rooted at `dir`: defaults, single-user, bound to
    /// `127.0.0.1:0`. Touches no files.
    pub fn for_test(dir: &Path) -> Config {
        let mut config = Config::with_defaults(dir.to_path_buf(), dir.join(CONFIG_FILE_NAME));
        config.values.insert("host", Value::from("127.0.0.1"));
        config.values.insert("port", Value::from(0));
        config
    }

    /// Root resolution alone (spec §2), for the admin commands: `--root`, non-empty
    /// `INVOKEAI_ROOT`, the parent of `VIRTUAL_ENV`, then `~/invokeai`. `~` is expanded, the
    /// result made absolute against the working directory, and symlinks resolved when it
    /// exists.
    pub fn resolve_root(
        cli_root: Option<&Path>,
        env: &[(String, String)],
    ) -> Result<PathBuf, ConfigError> {
        let chosen = if let Some(p) = cli_root {
            expand_tilde(p, env)?
        } else if let Some(r) = env_get(env, "INVOKEAI_ROOT") {
            expand_tilde(Path::new(r), env)?
        } else if let Some(venv) = env_get(env, "VIRTUAL_ENV") {
            let venv = absolutize(&expand_tilde(Path::new(venv), env)?)?;
            venv.parent().map(Path::to_path_buf).unwrap_or(venv)
        } else {
            home_dir(env)?.join("invokeai")
        };
        absolutize(&chosen)
    }

    /// The root directory (absolute).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The config file (absolute).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    fn str_value(&self, key: &str) -> Option<&str> {
        self.values.get(key).and_then(Value::as_str)
    }

    fn bool_value(&self, key: &str) -> bool {
        self.values
            .get(key)
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    fn int_value(&self, key: &str) -> i64 {
        self.values.get(key).and_then(Value::as_i64).unwrap_or(0)
    }

    fn path_value(&self, key: &str) -> PathBuf {
        resolve_against(&self.root, self.str_value(key).unwrap_or_default())
    }

    /// The effective value of any key (for keys without a typed accessor).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.values.get(key)
    }

    /// Whether the key was explicitly set by the file, `api_keys.yaml`, env, flags or a setter.
    pub fn is_set(&self, key: &str) -> bool {
        self.set_fields.contains(key)
    }

    pub fn host(&self) -> &str {
        self.str_value("host").unwrap_or("127.0.0.1")
    }

    pub fn port(&self) -> u16 {
        u16::try_from(self.int_value("port")).unwrap_or(9090)
    }

    pub fn multiuser(&self) -> bool {
        self.bool_value("multiuser")
    }

    pub fn strict_password_checking(&self) -> bool {
        self.bool_value("strict_password_checking")
    }

    /// `db_dir` resolved against the root.
    pub fn db_dir(&self) -> PathBuf {
        self.path_value("db_dir")
    }

    /// Atelier's own database file, `<db_dir>/atelier.db` (never InvokeAI's `invokeai.db`).
    pub fn database_path(&self) -> PathBuf {
        self.db_dir().join(DATABASE_FILE_NAME)
    }

    pub fn use_memory_db(&self) -> bool {
        self.bool_value("use_memory_db")
    }

    /// `outputs_dir` resolved against the root.
    pub fn outputs_dir(&self) -> PathBuf {
        self.path_value("outputs_dir")
    }

    /// `workflow_thumbnails_dir` resolved against the root.
    pub fn workflow_thumbnails_dir(&self) -> PathBuf {
        self.path_value("workflow_thumbnails_dir")
    }

    /// `style_presets_dir` resolved against the root.
    pub fn style_presets_dir(&self) -> PathBuf {
        self.path_value("style_presets_dir")
    }

    /// `models_dir` resolved against the root.
    pub fn models_dir(&self) -> PathBuf {
        self.path_value("models_dir")
    }

    /// The normalised public sub-path (`/invoke`), or `None` when serving at the domain root.
    pub fn base_url(&self) -> Option<&str> {
        self.str_value("base_url")
    }

    pub fn forwarded_allow_ips(&self) -> &str {
        self.str_value("forwarded_allow_ips").unwrap_or("127.0.0.1")
    }

    pub fn allow_origins(&self) -> &[String] {
        &self.allow_origins
    }

    pub fn allow_credentials(&self) -> bool {
        self.bool_value("allow_credentials")
    }

    pub fn allow_methods(&self) -> &[String] {
        &self.allow_methods
    }

    pub fn allow_headers(&self) -> &[String] {
        &self.allow_headers
    }

    /// `debug|info|warning|error|critical`.
    pub fn log_level(&self) -> &str {
        self.str_value("log_level").unwrap_or("info")
    }

    /// `debug|info|warning|error|critical`.
    pub fn log_level_network(&self) -> &str {
        self.str_value("log_level_network").unwrap_or("warning")
    }

    /// `plain|color|syslog|legacy`.
    pub fn log_format(&self) -> &str {
        self.str_value("log_format").unwrap_or("color")
    }

    pub fn patchmatch(&self) -> bool {
        self.bool_value("patchmatch")
    }

    pub fn node_cache_size(&self) -> i64 {
        self.int_value("node_cache_size")
    }

    pub fn max_queue_size(&self) -> i64 {
        self.int_value("max_queue_size")
    }

    /// `FIFO` or `round_robin`.
    pub fn session_queue_mode(&self) -> &str {
        self.str_value("session_queue_mode")
            .unwrap_or("round_robin")
    }

    /// Atelier extension: database URL (`sqlite://...` or `postgres://...`); `None` means the
    /// SQLite file at [`Config::database_path`].
    pub fn database_url(&self) -> Option<&str> {
        self.str_value("database_url")
    }

    /// Atelier extension: failed logins per account per window (0 disables).
    pub fn login_throttle_account_max(&self) -> u32 {
        u32::try_from(self.int_value("login_throttle_account_max")).unwrap_or(10)
    }

    /// Atelier extension: failed logins per client address per window (0 disables).
    pub fn login_throttle_client_max(&self) -> u32 {
        u32::try_from(self.int_value("login_throttle_client_max")).unwrap_or(50)
    }

    /// Atelier extension: the login-throttle window in seconds (at least 1).
    pub fn login_throttle_window_s(&self) -> u32 {
        u32::try_from(self.int_value("login_throttle_window_s")).unwrap_or(900)
    }

    /// Atelier extension: the largest accepted request body in bytes (at least 1024).
    pub fn max_upload_bytes(&self) -> u64 {
        u64::try_from(self.int_value("max_upload_bytes")).unwrap_or(52_428_800)
    }

    /// `flat`, `date`, `type` or `hash` (config.md §5.3).
    pub fn image_subfolder_strategy(&self) -> &str {
        self.get("image_subfolder_strategy")
            .and_then(Value::as_str)
            .unwrap_or("flat")
    }

    pub fn max_request_body_bytes(&self) -> u64 {
        u64::try_from(self.int_value("max_request_body_bytes")).unwrap_or(1_048_576)
    }

    pub fn set_multiuser(&mut self, v: bool) {
        self.put("multiuser", Value::Bool(v));
    }

    pub fn set_strict_password_checking(&mut self, v: bool) {
        self.put("strict_password_checking", Value::Bool(v));
    }

    /// Sets one key after validating it like a file or env value (except that `port` may be 0)
    /// and marks it as explicitly set.
    pub fn set_value(&mut self, key: &str, value: Value) -> Result<(), ConfigError> {
        let def = key_def(key).ok_or_else(|| ConfigError::UnknownKey(key.to_string()))?;
        let value =
            validate(def, &value, Origin::Override).map_err(|reason| ConfigError::Value {
                key: key.to_string(),
                reason,
            })?;
        self.put(def.name, value);
        self.sync_lists();
        Ok(())
    }

    /// Applies `updates` to this config and persists them into the config file: the file is
    /// re-read (and migrated if needed), merged and rewritten per spec §3.2, so environment
    /// values never reach it. Used by `PATCH /api/v1/app/runtime_config`.
    pub fn persist_values(&mut self, updates: &[(&str, Value)]) -> Result<(), ConfigError> {
        let mut validated = Vec::with_capacity(updates.len());
        for (key, value) in updates {
            let def = key_def(key).ok_or_else(|| ConfigError::UnknownKey(key.to_string()))?;
            let value =
                validate(def, value, Origin::FileOrEnv).map_err(|reason| ConfigError::Value {
                    key: key.to_string(),
                    reason,
                })?;
            validated.push((def.name, value));
        }
        let mut file_values = if self.config_path.exists() {
            load_file(&self.config_path)?
        } else {
            Vec::new()
        };
        file_values.extend(validated.iter().cloned());
        let text =
            render_config_file(&file_values).map_err(|e| file_error(&self.config_path, e))?;
        write_file(&self.config_path, &text)?;
        for (name, value) in validated {
            self.put(name, value);
        }
        self.sync_lists();
        Ok(())
    }

    /// Every value with secrets replaced by `**********` (spec §3.4), paths as given.
    fn masked_values(&self) -> Map<String, Value> {
        let mut out = Map::new();
        for (name, value) in &self.values {
            let mut value = value.clone();
            let is_api_key = name.starts_with("external_") && name.ends_with("_api_key");
            match (*name, &mut value) {
                (_, Value::String(s)) if is_api_key && !s.is_empty() => {
                    value = Value::from(MASK);
                }
                ("remote_api_tokens", Value::Array(items)) => {
                    for item in items.iter_mut().filter_map(Value::as_object_mut) {
                        item.insert("token".into(), Value::from(MASK));
                    }
                }
                // `database_url` is an Atelier key: a URL with credentials is masked like
                // `download_proxy`.
                ("download_proxy" | "database_url", Value::String(s)) if s.contains('@') => {
                    value = Value::from(MASK);
                }
                _ => {}
            }
            out.insert((*name).to_string(), value);
        }
        out
    }

    /// The body of `GET /api/v1/app/runtime_config`:
    /// `{"set_fields": [sorted keys explicitly set], "config": {every key: value}}`, secrets
    /// masked.
    pub fn runtime_config_json(&self) -> Value {
        serde_json::json!({
            "set_fields": self.set_fields.iter().collect::<Vec<_>>(),
            "config": Value::Object(self.masked_values()),
        })
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("root", &self.root)
            .field("config_path", &self.config_path)
            .field("set_fields", &self.set_fields)
            .field("values", &self.masked_values())
            .finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn opts(root: &Path) -> LoadOptions {
        LoadOptions {
            root: Some(root.to_path_buf()),
            ..LoadOptions::default()
        }
    }

    fn write(root: &Path, text: &str) {
        fs::write(root.join(CONFIG_FILE_NAME), text).unwrap();
    }

    fn load_err(root: &Path, env_pairs: &[(&str, &str)]) -> String {
        Config::load(&opts(root), &env(env_pairs))
            .unwrap_err()
            .to_string()
    }

    const CREATED: &str = "# Internal metadata - do not edit:\nschema_version: 4.0.3\n\n\
# Put user settings here - see https://invoke.ai/configuration/invokeai-yaml/:\n";

    #[test]
    fn table_has_unique_names_and_valid_defaults() {
        let mut names = BTreeSet::new();
        for def in KEYS {
            assert!(names.insert(def.name), "duplicate key {}", def.name);
            let d = def.default.to_value();
            assert_eq!(
                validate(def, &d, Origin::Override).unwrap(),
                d,
                "{}",
                def.name
            );
        }
        for k in EXTERNAL_PROVIDER_KEYS {
            assert!(key_def(k).is_some());
        }
    }

    #[test]
    fn root_resolution_order() {
        let cwd = std::env::current_dir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let d = fs::canonicalize(dir.path()).unwrap();
        let cli = d.join("cli");
        let e = env(&[
            ("INVOKEAI_ROOT", d.join("envroot").to_str().unwrap()),
            ("VIRTUAL_ENV", d.join("proj/.venv").to_str().unwrap()),
            ("HOME", d.join("home").to_str().unwrap()),
        ]);
        assert_eq!(Config::resolve_root(Some(&cli), &e).unwrap(), cli);
        assert_eq!(Config::resolve_root(None, &e).unwrap(), d.join("envroot"));
        let e2 = env(&[
            ("INVOKEAI_ROOT", ""),
            ("VIRTUAL_ENV", d.join("proj/.venv").to_str().unwrap()),
            ("HOME", d.join("home").to_str().unwrap()),
        ]);
        assert_eq!(Config::resolve_root(None, &e2).unwrap(), d.join("proj"));
        let e3 = env(&[("HOME", d.join("home").to_str().unwrap())]);
        assert_eq!(
            Config::resolve_root(None, &e3).unwrap(),
            d.join("home/invokeai")
        );
        assert_eq!(
            Config::resolve_root(Some(Path::new("~/x")), &e3).unwrap(),
            d.join("home/x")
        );
        assert_eq!(
            Config::resolve_root(Some(Path::new("rel")), &e3).unwrap(),
            cwd.join("rel")
        );
        // Symlinks are resolved when the path exists.
        #[cfg(unix)]
        {
            fs::create_dir_all(d.join("real")).unwrap();
            std::os::unix::fs::symlink(d.join("real"), d.join("link")).unwrap();
            assert_eq!(
                Config::resolve_root(Some(&d.join("link")), &e3).unwrap(),
                d.join("real")
            );
        }
    }

    #[test]
    fn creates_file_example_and_dirs_when_missing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let (config, warnings) = Config::load(&opts(&root), &[]).unwrap();
        assert!(warnings.is_empty());
        let text = fs::read_to_string(root.join("invokeai.yaml")).unwrap();
        assert_eq!(text, CREATED);
        assert!(config.db_dir().is_dir());
        assert!(config.outputs_dir().is_dir());
        assert_eq!(
            config.database_path(),
            fs::canonicalize(&root)
                .unwrap()
                .join("databases/atelier.db")
        );
        assert_eq!(config.port(), 9090);
        assert_eq!(config.host(), "127.0.0.1");
        assert_eq!(config.allow_methods(), ["*".to_string()]);
        assert!(config.allow_origins().is_empty());
        assert_eq!(config.runtime_config_json()["set_fields"], json!([]));

        let example = fs::read_to_string(root.join("invokeai.example.yaml")).unwrap();
        assert!(example.starts_with("# This is an example file"));
        assert!(example.contains("schema_version: 4.0.3\n"));
        assert!(example.contains("\nport: 9090\n"));
        assert!(example.contains(
            "remote_api_tokens:\n- url_regex: cool-models.com\n  token: my_secret_token\n"
        ));
        assert!(example.contains("login_throttle_window_s: 900\n"));
        assert!(!example.contains("base_url"));

        // A second start reads the created file back without warnings or changes.
        let (_, warnings) = Config::load(&opts(&root), &[]).unwrap();
        assert!(warnings.is_empty());
        assert_eq!(
            fs::read_to_string(root.join("invokeai.yaml")).unwrap(),
            CREATED
        );
    }

    #[test]
    fn precedence_flags_env_file_defaults() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "schema_version: 4.0.3\nhost: 0.0.0.0\nport: 9100\nlog_level: debug\nmultiuser: true\n",
        );
        let e = env(&[("INVOKEAI_PORT", "9200"), ("INVOKEAI_LOG_LEVEL", "error")]);
        let (config, _) = Config::load(&opts(dir.path()), &e).unwrap();
        assert_eq!(config.host(), "0.0.0.0");
        assert_eq!(config.port(), 9200);
        assert_eq!(config.log_level(), "error");
        assert!(config.multiuser());
        assert_eq!(config.log_level_network(), "warning");

        let mut o = opts(dir.path());
        o.host = Some("10.0.0.1".into());
        o.port = Some(0);
        let (config, _) = Config::load(&o, &e).unwrap();
        assert_eq!(config.host(), "10.0.0.1");
        assert_eq!(config.port(), 0);
        assert_eq!(
            config.runtime_config_json()["set_fields"],
            json!(["host", "log_level", "multiuser", "port"])
        );
    }

    #[test]
    fn env_names_case_insensitive_and_empty_ignored() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "schema_version: 4.0.3\nport: 9100\n");
        let e = env(&[
            ("invokeai_multiuser", "YES"),
            ("Invokeai_Strict_Password_Checking", "on"),
            ("INVOKEAI_PORT", ""),
            ("INVOKEAI_ROOT", ""),
            ("INVOKEAI_NOT_A_KEY", "whatever"),
        ]);
        let (config, warnings) = Config::load(&opts(dir.path()), &e).unwrap();
        assert!(config.multiuser());
        assert!(config.strict_password_checking());
        assert_eq!(config.port(), 9100);
        assert!(warnings.is_empty());
    }

    #[test]
    fn env_lists_are_json() {
        let dir = tempfile::tempdir().unwrap();
        let e = env(&[
            (
                "INVOKEAI_ALLOW_ORIGINS",
                r#"["https://a.example","https://b.example"]"#,
            ),
            ("INVOKEAI_GENERATION_DEVICES", "auto"),
        ]);
        let (config, _) = Config::load(&opts(dir.path()), &e).unwrap();
        assert_eq!(
            config.allow_origins(),
            [
                "https://a.example".to_string(),
                "https://b.example".to_string()
            ]
        );

        let err = load_err(
            dir.path(),
            &[("INVOKEAI_ALLOW_ORIGINS", "https://a.example")],
        );
        assert!(
            err.starts_with("Invalid value for INVOKEAI_ALLOW_ORIGINS: expected a JSON list"),
            "{err}"
        );
        let err = load_err(dir.path(), &[("INVOKEAI_PORT", "abc")]);
        assert_eq!(
            err,
            "Invalid value for INVOKEAI_PORT: expected an integer (got 'abc')"
        );
        let err = load_err(dir.path(), &[("invokeai_multiuser", "maybe")]);
        assert_eq!(
            err,
            "Invalid value for invokeai_multiuser: expected a boolean (got 'maybe')"
        );
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "schema_version: 4.0.3\nfoo: 1\n");
        let path = fs::canonicalize(dir.path()).unwrap().join("invokeai.yaml");
        assert_eq!(
            load_err(dir.path(), &[]),
            format!(
                "Failed to load config file {}: unknown key 'foo'",
                path.display()
            )
        );
        write(dir.path(), "schema_version: 4.0.3\nroot: /somewhere\n");
        assert!(load_err(dir.path(), &[]).ends_with("unknown key 'root'"));
    }

    #[test]
    fn known_unused_key_warns_once() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "schema_version: 4.0.3\ndevice: cuda:1\nprecision: float16\nattention_type: sliced\n",
        );
        let e = env(&[
            ("INVOKEAI_DEVICE", "cpu"),
            ("INVOKEAI_FORCE_TILED_DECODE", "true"),
        ]);
        let (config, warnings) = Config::load(&opts(dir.path()), &e).unwrap();
        // `device` and `precision` are used (service/compute.rs); the others only warn.
        assert_eq!(
            warnings,
            vec![
                "config key 'attention_type' is accepted but not used by Atelier yet".to_string(),
                "config key 'force_tiled_decode' is accepted but not used by Atelier yet"
                    .to_string(),
            ]
        );
        assert_eq!(config.get("device"), Some(&json!("cpu")));
        assert_eq!(config.get("precision"), Some(&json!("float16")));
    }

    #[test]
    fn bad_values_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("log_level: verbose", "invalid value for 'log_level': expected one of 'debug', 'info', 'warning', 'error', 'critical' (got 'verbose')"),
            ("port: 70000", "invalid value for 'port': must be at most 65535 (got 70000)"),
            ("port: 0", "invalid value for 'port': must be at least 1 (got 0)"),
            ("max_queue_size: 0", "invalid value for 'max_queue_size': must be at least 1 (got 0)"),
            ("http_compression_level: 10", "invalid value for 'http_compression_level': must be at most 9 (got 10)"),
            ("max_cache_ram_gb: 0", "invalid value for 'max_cache_ram_gb': must be greater than 0 (got 0)"),
            ("host: 5", "invalid value for 'host': expected a string (got 5)"),
            ("allow_origins: https://a", "invalid value for 'allow_origins': expected a list of strings (got 'https://a')"),
            ("device: gpu", "invalid value for 'device'"),
            ("login_throttle_window_s: 0", "invalid value for 'login_throttle_window_s': must be at least 1 (got 0)"),
            ("max_request_body_bytes: 10", "invalid value for 'max_request_body_bytes': must be at least 1024 (got 10)"),
            ("remote_api_tokens: [{url_regex: '(', token: x}]", "invalid value for 'remote_api_tokens': item 0: invalid regex"),
        ];
        for (line, want) in cases {
            write(dir.path(), &format!("schema_version: 4.0.3\n{line}\n"));
            let err = load_err(dir.path(), &[]);
            assert!(err.contains(want), "{line}: {err}");
        }
        write(dir.path(), "- a\n- b\n");
        assert!(load_err(dir.path(), &[]).ends_with("the file is not a YAML mapping"));
    }

    #[test]
    fn lax_scalars_in_file_are_accepted() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "schema_version: 4.0.3\nport: '9101'\nmultiuser: 'yes'\nattention_slice_size: 4\n\
             device_working_mem_gb: 4\nmax_queue_history: 0\ngeneration_devices: [cuda:0, cuda:1]\n",
        );
        let (config, _) = Config::load(&opts(dir.path()), &[]).unwrap();
        assert_eq!(config.port(), 9101);
        assert!(config.multiuser());
        assert_eq!(config.get("device_working_mem_gb"), Some(&json!(4.0)));
        assert_eq!(config.get("max_queue_history"), Some(&json!(0)));
    }

    #[test]
    fn schema_version_is_optional_but_checked() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "host: 0.0.0.0\n");
        let opts = LoadOptions {
            root: Some(dir.path().to_path_buf()),
            ..LoadOptions::default()
        };
        let (config, _) = Config::load(&opts, &[]).unwrap();
        assert_eq!(config.host(), "0.0.0.0");
        write(dir.path(), "schema_version: 5.0.0\n");
        assert!(
            load_err(dir.path(), &[]).ends_with("Invalid schema version, expected 4.0.3: '5.0.0'")
        );
    }

    #[test]
    fn migrates_4_0_2_with_backup() {
        let dir = tempfile::tempdir().unwrap();
        let original = "schema_version: 4.0.2\nhost: 0.0.0.0\nport: 9090\nmultiuser: true\n";
        write(dir.path(), original);
        let (config, _) = Config::load(&opts(dir.path()), &[]).unwrap();
        assert!(config.multiuser());
        assert_eq!(
            fs::read_to_string(dir.path().join("invokeai.yaml.bak")).unwrap(),
            original
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("invokeai.yaml")).unwrap(),
            format!("{CREATED}host: 0.0.0.0\nmultiuser: true\n")
        );
    }

    #[test]
    fn migrates_4_0_1_dropping_convert_cache_and_4_0_0_autocast() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "schema_version: 4.0.0\nprecision: autocast\nconvert_cache: 10\n",
        );
        let (config, _) = Config::load(&opts(dir.path()), &[]).unwrap();
        assert_eq!(config.get("precision"), Some(&json!("auto")));
        assert_eq!(
            fs::read_to_string(dir.path().join("invokeai.yaml")).unwrap(),
            CREATED
        );
    }

    #[test]
    fn migrates_v3_layout() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "InvokeAI:\n  Web Server:\n    host: 0.0.0.0\n    port: 9191\n  Paths:\n    outdir: /data/out\n    \
             conf_path: configs/models.yaml\n    legacy_conf_dir: configs/stable-diffusion\n  \
             Memory/Performance:\n    max_cache_size: 6.0\n    max_vram_cache_size: 0.5\n    precision: autocast\n    \
             xformers_enabled: true\n",
        );
        let (config, warnings) = Config::load(&opts(dir.path()), &[]).unwrap();
        assert_eq!(config.host(), "0.0.0.0");
        assert_eq!(config.port(), 9191);
        assert_eq!(config.outputs_dir(), PathBuf::from("/data/out"));
        assert_eq!(config.get("ram"), Some(&json!(6.0)));
        assert_eq!(config.get("vram"), Some(&json!(0.5)));
        assert_eq!(config.get("precision"), Some(&json!("auto")));
        assert_eq!(
            config.get("legacy_models_yaml_path"),
            Some(&json!("configs/models.yaml"))
        );
        assert!(dir.path().join("invokeai.yaml.bak").exists());
        let text = fs::read_to_string(dir.path().join("invokeai.yaml")).unwrap();
        assert!(text.starts_with(CREATED));
        assert!(text.contains("outputs_dir: /data/out\n"));
        assert!(!text.contains("xformers"));
        assert!(!text.contains("legacy_conf_dir"));
        // `ram` is read (the model cache budget when `max_cache_ram_gb` is unset), so it does not warn.
        assert!(!warnings.contains(&unused_warning("ram")), "{warnings:?}");
        // The rewritten file loads cleanly and unchanged.
        let (again, _) = Config::load(&opts(dir.path()), &[]).unwrap();
        assert_eq!(again.port(), 9191);
        assert_eq!(
            fs::read_to_string(dir.path().join("invokeai.yaml")).unwrap(),
            text
        );
    }

    #[test]
    fn failed_migration_restores_original() {
        let dir = tempfile::tempdir().unwrap();
        let original = "schema_version: 4.0.2\nbogus: 1\n";
        write(dir.path(), original);
        assert!(load_err(dir.path(), &[]).ends_with("unknown key 'bogus'"));
        assert_eq!(
            fs::read_to_string(dir.path().join("invokeai.yaml")).unwrap(),
            original
        );
    }

    #[test]
    fn base_url_normalisation_and_reserved_segments() {
        assert_eq!(normalize_base_url(" /invoke/ "), Ok(Some("/invoke".into())));
        assert_eq!(normalize_base_url("a/b"), Ok(Some("/a/b".into())));
        assert_eq!(normalize_base_url("/"), Ok(None));
        assert_eq!(normalize_base_url("  "), Ok(None));
        assert_eq!(
            normalize_base_url("/api/x"),
            Err("base_url must not start with reserved path segment '/api'".into())
        );
        assert_eq!(normalize_base_url("apiary"), Ok(Some("/apiary".into())));

        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "schema_version: 4.0.3\nbase_url: invoke/\n");
        let (config, _) = Config::load(&opts(dir.path()), &[]).unwrap();
        assert_eq!(config.base_url(), Some("/invoke"));
        let err = load_err(dir.path(), &[("INVOKEAI_BASE_URL", "/ws")]);
        assert_eq!(
            err,
            "Invalid value for INVOKEAI_BASE_URL: base_url must not start with reserved path segment '/ws'"
        );
        let mut config = Config::for_test(dir.path());
        assert!(config.set_value("base_url", json!("/")).is_ok());
        assert_eq!(config.base_url(), None);
    }

    #[test]
    fn runtime_config_masks_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::for_test(dir.path());
        config
            .set_value("external_openai_api_key", json!("sk-secret"))
            .unwrap();
        config
            .set_value("external_gemini_api_key", json!(""))
            .unwrap();
        config
            .set_value(
                "remote_api_tokens",
                json!([{"url_regex": "civitai\\.com", "token": "tok"}]),
            )
            .unwrap();
        config
            .set_value("download_proxy", json!("http://user:pw@proxy:3128"))
            .unwrap();
        let rc = config.runtime_config_json();
        assert_eq!(rc["config"]["external_openai_api_key"], json!(MASK));
        assert_eq!(rc["config"]["external_gemini_api_key"], json!(""));
        assert_eq!(rc["config"]["external_seedream_api_key"], Value::Null);
        assert_eq!(
            rc["config"]["remote_api_tokens"],
            json!([{"url_regex": "civitai\\.com", "token": MASK}])
        );
        assert_eq!(rc["config"]["download_proxy"], json!(MASK));
        assert_eq!(rc["config"]["db_dir"], json!("databases"));
        assert_eq!(rc["config"]["port"], json!(0));
        assert_eq!(
            rc["set_fields"],
            json!([
                "download_proxy",
                "external_gemini_api_key",
                "external_openai_api_key",
                "remote_api_tokens"
            ])
        );
        let debug = format!("{config:?}");
        assert!(!debug.contains("sk-secret") && !debug.contains("tok\""));

        config
            .set_value("download_proxy", json!("http://proxy:3128"))
            .unwrap();
        assert_eq!(
            config.runtime_config_json()["config"]["download_proxy"],
            json!("http://proxy:3128")
        );
    }

    #[test]
    fn relative_config_resolves_against_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        fs::create_dir_all(root.join("conf")).unwrap();
        fs::write(
            root.join("conf/custom.yaml"),
            "schema_version: 4.0.3\nport: 9300\n",
        )
        .unwrap();
        let o = LoadOptions {
            root: Some(root.clone()),
            config: Some(PathBuf::from("conf/custom.yaml")),
            ..LoadOptions::default()
        };
        let (config, _) = Config::load(&o, &[]).unwrap();
        assert_eq!(config.config_path(), root.join("conf/custom.yaml"));
        assert_eq!(config.port(), 9300);
        assert!(root.join("conf/custom.example.yaml").exists());
        assert!(!root.join("invokeai.yaml").exists());
    }

    #[test]
    fn api_keys_file_beats_config_file_but_not_env() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "schema_version: 4.0.3\nexternal_openai_api_key: from-file\nexternal_gemini_api_key: from-file\n",
        );
        fs::write(
            dir.path().join(API_KEYS_FILE_NAME),
            "external_openai_api_key: ' from-keys '\nexternal_gemini_api_key: from-keys\nexternal_seedream_api_key: '  '\n",
        )
        .unwrap();
        let e = env(&[("INVOKEAI_EXTERNAL_GEMINI_API_KEY", "from-env")]);
        let (config, _) = Config::load(&opts(dir.path()), &e).unwrap();
        assert_eq!(
            config.get("external_openai_api_key"),
            Some(&json!("from-keys"))
        );
        assert_eq!(
            config.get("external_gemini_api_key"),
            Some(&json!("from-env"))
        );
        assert_eq!(config.get("external_seedream_api_key"), Some(&Value::Null));
    }

    #[test]
    fn set_value_validates_and_allows_port_zero() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::for_test(dir.path());
        assert_eq!(config.port(), 0);
        config.set_value("port", json!(8080)).unwrap();
        assert_eq!(config.port(), 8080);
        config.set_value("port", json!(0)).unwrap();
        assert_eq!(
            config.set_value("log_level", json!("loud")).unwrap_err().to_string(),
            "Invalid value for config key 'log_level': expected one of 'debug', 'info', 'warning', 'error', 'critical' (got 'loud')"
        );
        assert_eq!(
            config.set_value("nope", json!(1)).unwrap_err().to_string(),
            "Unknown config key 'nope'"
        );
        config
            .set_value("allow_origins", json!(["https://x.example"]))
            .unwrap();
        assert_eq!(config.allow_origins(), ["https://x.example".to_string()]);
        config.set_multiuser(true);
        assert!(config.multiuser() && config.is_set("multiuser"));
        assert_eq!(config.login_throttle_account_max(), 10);
        assert_eq!(config.login_throttle_client_max(), 50);
        assert_eq!(config.login_throttle_window_s(), 900);
        assert_eq!(config.max_request_body_bytes(), 1_048_576);
        assert_eq!(config.database_url(), None);
        assert_eq!(config.session_queue_mode(), "round_robin");
        assert_eq!(config.max_queue_size(), 10000);
        assert_eq!(config.node_cache_size(), 512);
        assert!(config.patchmatch());
        assert!(!fs::exists(dir.path().join("invokeai.yaml")).unwrap());
    }

    #[test]
    fn persist_values_rewrites_file_without_env_values() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "schema_version: 4.0.3\nhost: 0.0.0.0\n");
        let e = env(&[("INVOKEAI_MULTIUSER", "true")]);
        let (mut config, _) = Config::load(&opts(dir.path()), &e).unwrap();
        config
            .persist_values(&[
                ("max_queue_history", json!(5)),
                ("image_subfolder_strategy", json!("date")),
            ])
            .unwrap();
        assert_eq!(config.get("max_queue_history"), Some(&json!(5)));
        assert_eq!(
            fs::read_to_string(dir.path().join("invokeai.yaml")).unwrap(),
            format!(
                "{CREATED}host: 0.0.0.0\nimage_subfolder_strategy: date\nmax_queue_history: 5\n"
            )
        );
    }

    #[test]
    fn regex_check() {
        for ok in [
            "civitai.com",
            "^https://(www\\.)?hf\\.co/.*$",
            "[a-z]+?",
            "[]]",
            "a|b",
            "(?i)x",
        ] {
            assert!(check_regex(ok).is_ok(), "{ok}");
        }
        for bad in ["(", ")", "[a-z", "*a", "a\\", "a**"] {
            assert!(check_regex(bad).is_err(), "{bad}");
        }
    }
}

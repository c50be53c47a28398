//! Style preset use cases (workflows-and-state.md §3): list, create, read, update, delete,
//! preview images, CSV/JSON import and CSV export, and the start-up replacement of the bundled
//! default presets.
//!
//! Access goes through the domain predicates (`can_read_preset` / `check_preset_write`);
//! existence is checked first. Preview images live at `<style_presets_dir>/images/<id>.webp`,
//! built only from ids read back from the database.

use crate::http::error::ApiError;
use crate::service::workflows::{encode_preview, write_file};
use crate::service::AdminProof;
use crate::state::AppState;
use atelier_domain::library::{
    can_read_preset, check_preset_write, PresetAccess, PresetRefusal, PresetType,
};
use atelier_domain::Identity;
use atelier_store::{NewStylePreset, StylePresetRecord};
use serde_json::Value;
use std::path::PathBuf;

/// The bundled default presets. InvokeAI ships 18 with preview PNGs; Atelier ships a few of
/// its own authoring (no previews) instead of copying InvokeAI's files.
const DEFAULT_PRESETS: &str = include_str!("../../assets/default_style_presets.json");

/// An uploaded preview: the part's bytes and declared content type.
pub struct PreviewUpload {
    pub bytes: Vec<u8>,
    pub content_type: Option<String>,
}

fn access(p: &StylePresetRecord) -> PresetAccess<'_> {
    PresetAccess {
        owner: &p.user_id,
        kind: p.kind,
        is_public: p.is_public,
    }
}

fn image_path(state: &AppState, id: &str) -> PathBuf {
    state
        .config
        .style_presets_dir()
        .join("images")
        .join(format!("{id}.webp"))
}

/// `api/v1/style_presets/i/<id>/image?<random-uuid>` when a preview file exists.
pub async fn image_url(state: &AppState, id: &str) -> Option<String> {
    let exists = tokio::fs::try_exists(image_path(state, id))
        .await
        .unwrap_or(false);
    exists.then(|| format!("api/v1/style_presets/i/{id}/image?{}", uuid::Uuid::new_v4()))
}

async fn find(state: &AppState, id: &str) -> Result<StylePresetRecord, ApiError> {
    state
        .store
        .get_style_preset(id)
        .await?
        .ok_or_else(|| ApiError::not_found("Style preset not found"))
}

/// Loads a preset the caller may read (PresetRead).
pub async fn readable(
    state: &AppState,
    me: &Identity,
    id: &str,
) -> Result<StylePresetRecord, ApiError> {
    let preset = find(state, id).await?;
    if !can_read_preset(me, access(&preset)) {
        return Err(ApiError::forbidden(
            "Not authorized to access this style preset",
        ));
    }
    Ok(preset)
}

async fn writable(
    state: &AppState,
    me: &Identity,
    id: &str,
) -> Result<StylePresetRecord, ApiError> {
    let preset = find(state, id).await?;
    match check_preset_write(me, access(&preset)) {
        Ok(()) => Ok(preset),
        Err(PresetRefusal::DefaultPreset) => Err(ApiError::forbidden(
            "Default style presets cannot be modified",
        )),
        Err(PresetRefusal::NotOwner) => Err(ApiError::forbidden(
            "Not authorized to modify this style preset",
        )),
    }
}

/// The presets the caller may read, ordered by lower-cased name (all of them for admins).
pub async fn list(state: &AppState, me: &Identity) -> Result<Vec<StylePresetRecord>, ApiError> {
    let scope = (!me.is_admin()).then_some(&me.user_id);
    Ok(state.store.list_style_presets(scope, None).await?)
}

async fn store_preview(state: &AppState, id: &str, webp: Option<Vec<u8>>) -> Result<(), ApiError> {
    let path = image_path(state, id);
    match webp {
        Some(bytes) => write_file(&path, &bytes)
            .await
            .map_err(|e| ApiError::internal(format!("cannot save style preset image: {e}"))),
        None => match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ApiError::internal(e)),
        },
    }
}

fn preview(image: Option<&PreviewUpload>) -> Result<Option<Vec<u8>>, ApiError> {
    image
        .map(|i| encode_preview(&i.bytes, i.content_type.as_deref()))
        .transpose()
}

/// Creates a preset owned by the caller; `default` presets are administrators' only.
pub async fn create(
    state: &AppState,
    me: &Identity,
    data: &NewStylePreset,
    image: Option<&PreviewUpload>,
) -> Result<StylePresetRecord, ApiError> {
    if data.kind == PresetType::Default && !me.is_admin() {
        return Err(ApiError::forbidden(
            "Only admins can create default presets",
        ));
    }
    let webp = preview(image)?;
    let record = state.store.insert_style_preset(&me.user_id, data).await?;
    if webp.is_some() {
        // As in the reference, the record stays when its preview cannot be written.
        store_preview(state, &record.id, webp).await?;
    }
    Ok(record)
}

/// Replaces name, prompts and sharing flag; no image part deletes the preview.
pub async fn update(
    state: &AppState,
    me: &Identity,
    id: &str,
    data: &NewStylePreset,
    image: Option<&PreviewUpload>,
) -> Result<StylePresetRecord, ApiError> {
    writable(state, me, id).await?;
    let webp = preview(image)?;
    let record = state
        .store
        .update_style_preset(id, data)
        .await?
        .ok_or_else(|| ApiError::not_found("Style preset not found"))?;
    store_preview(state, id, webp).await?;
    Ok(record)
}

pub async fn delete(state: &AppState, me: &Identity, id: &str) -> Result<(), ApiError> {
    writable(state, me, id).await?;
    store_preview(state, id, None).await?;
    state.store.delete_style_preset(id).await?;
    Ok(())
}

/// The preview bytes; a preset without one is a 500, as the contract specifies.
pub async fn image_bytes(state: &AppState, me: &Identity, id: &str) -> Result<Vec<u8>, ApiError> {
    let preset = readable(state, me, id).await?;
    tokio::fs::read(image_path(state, &preset.id))
        .await
        .map_err(|e| ApiError::internal(format!("style preset {id} has no image: {e}")))
}

/// Every user preset of every user as CSV (`name,prompt,negative_prompt`).
pub async fn export_csv(state: &AppState, _admin: &AdminProof) -> Result<String, ApiError> {
    let presets = state
        .store
        .list_style_presets(None, Some(PresetType::User))
        .await?;
    let mut out = String::from("name,prompt,negative_prompt\r\n");
    for p in presets {
        let row = [&p.name, &p.positive_prompt, &p.negative_prompt]
            .map(|f| csv_field(f))
            .join(",");
        out.push_str(&row);
        out.push_str("\r\n");
    }
    Ok(out)
}

/// A CSV field quoted only when needed (Python's `csv.QUOTE_MINIMAL`).
fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

/// What kind of file an import is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportFormat {
    Csv,
    Json,
}

const CSV_ERROR: &str = "Invalid CSV format: must include columns 'name', 'prompt', and 'negative_prompt' and name cannot be blank";
const JSON_ERROR: &str = "Invalid JSON format: must be a list of objects with keys 'name', 'prompt', and 'negative_prompt' and name cannot be blank";

/// Imports presets as private `user` presets of the importing admin: all or nothing.
pub async fn import(
    state: &AppState,
    admin: &AdminProof,
    format: ImportFormat,
    bytes: &[u8],
) -> Result<usize, ApiError> {
    let presets = match format {
        ImportFormat::Csv => {
            parse_csv_import(bytes).ok_or_else(|| ApiError::bad_request(CSV_ERROR))?
        }
        ImportFormat::Json => {
            parse_json_import(bytes).ok_or_else(|| ApiError::bad_request(JSON_ERROR))?
        }
    };
    let owner = admin
        .caller()
        .map(|c| c.user_id.clone())
        .ok_or_else(|| ApiError::internal("import without a calling administrator"))?;
    state.store.insert_style_presets(&owner, &presets).await?;
    Ok(presets.len())
}

/// A validated import row from `(column, value)` pairs; `None` for unknown columns or a blank
/// name. `prompt` and `positive_prompt` are the same column.
fn import_row(pairs: &[(&str, &str)]) -> Option<NewStylePreset> {
    let (mut name, mut positive, mut negative) = (None, String::new(), String::new());
    for (key, value) in pairs {
        let value = value.trim().to_owned();
        match *key {
            "name" => name = Some(value),
            "prompt" | "positive_prompt" => positive = value,
            "negative_prompt" => negative = value,
            _ => return None,
        }
    }
    let name = name.filter(|n| !n.is_empty())?;
    Some(NewStylePreset {
        name,
        positive_prompt: positive,
        negative_prompt: negative,
        kind: PresetType::User,
        is_public: false,
    })
}

fn parse_csv_import(bytes: &[u8]) -> Option<Vec<NewStylePreset>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records = parse_csv(text)?.into_iter();
    let header: Vec<String> = records
        .next()?
        .into_iter()
        .map(|h| h.trim().to_owned())
        .collect();
    if !header.iter().any(|h| h == "name") {
        return None;
    }
    records
        .filter(|r| !(r.len() == 1 && r[0].trim().is_empty()))
        .map(|record| {
            if record.len() > header.len() {
                return None;
            }
            let pairs: Vec<(&str, &str)> = header
                .iter()
                .zip(record.iter())
                .map(|(h, v)| (h.as_str(), v.as_str()))
                .collect();
            // Unknown columns are refused even when a row leaves them empty.
            if header.iter().any(|h| {
                !matches!(
                    h.as_str(),
                    "name" | "prompt" | "positive_prompt" | "negative_prompt"
                )
            }) {
                return None;
            }
            import_row(&pairs)
        })
        .collect()
}

/// RFC 4180 records: quoted fields may hold commas, quotes (`""`) and line breaks. `None` for
/// an unterminated quote.
fn parse_csv(text: &str) -> Option<Vec<Vec<String>>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut in_quotes = false;
    let mut any = false;
    while let Some(c) = chars.next() {
        any = true;
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => in_quotes = false,
                c => field.push(c),
            }
            continue;
        }
        match c {
            '"' => in_quotes = true,
            ',' => record.push(std::mem::take(&mut field)),
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' | '\r' => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
                any = false;
            }
            c => field.push(c),
        }
    }
    if in_quotes {
        return None;
    }
    if any {
        record.push(field);
        records.push(record);
    }
    Some(records)
}

fn parse_json_import(bytes: &[u8]) -> Option<Vec<NewStylePreset>> {
    let value: Value = serde_json::from_slice(bytes).ok()?;
    value
        .as_array()?
        .iter()
        .map(|item| {
            let map = item.as_object()?;
            let pairs: Vec<(&str, &str)> = map
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Some((k.as_str(), s.as_str())),
                    Value::Null => Some((k.as_str(), "")),
                    _ => None,
                })
                .collect::<Option<_>>()?;
            import_row(&pairs)
        })
        .collect()
}

/// Start-up: replaces every `default` preset with the bundled list (fresh ids each time).
pub async fn replace_defaults(state: &AppState) -> Result<(), ApiError> {
    let presets = bundled_defaults().map_err(ApiError::internal)?;
    state.store.replace_default_style_presets(&presets).await?;
    Ok(())
}

fn bundled_defaults() -> Result<Vec<NewStylePreset>, String> {
    let value: Value = serde_json::from_str(DEFAULT_PRESETS).map_err(|e| e.to_string())?;
    let list = value.as_array().ok_or("not a list")?;
    list.iter()
        .map(|p| {
            let text = |k: &str| {
                p.get(k)
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| format!("default preset without {k}"))
            };
            Ok(NewStylePreset {
                name: text("name")?,
                positive_prompt: text("positive_prompt")?,
                negative_prompt: text("negative_prompt")?,
                kind: PresetType::Default,
                is_public: false,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_round_trips_quotes_commas_and_newlines() {
        let text =
            "name,prompt,negative_prompt\r\n\"a, b\",\"say \"\"hi\"\"\",\"x\ny\"\r\nplain,p,\r\n";
        let rows = parse_csv(text).unwrap();
        assert_eq!(rows[1], ["a, b", "say \"hi\"", "x\ny"]);
        assert_eq!(rows[2], ["plain", "p", ""]);
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert!(parse_csv("\"open").is_none());
    }

    #[test]
    fn imports_validate_columns_and_names() {
        let ok = parse_csv_import(b"name,positive_prompt\n  A  , p \n").unwrap();
        assert_eq!(
            (ok[0].name.as_str(), ok[0].positive_prompt.as_str()),
            ("A", "p")
        );
        assert!(parse_csv_import(b"name,prompt,extra\nA,p,x\n").is_none());
        assert!(parse_csv_import(b"prompt\np\n").is_none());
        assert!(parse_csv_import(b"name,prompt\n ,p\n").is_none());
        let ok = parse_json_import(br#"[{"name": "J", "prompt": "p"}]"#).unwrap();
        assert_eq!(ok[0].negative_prompt, "");
        assert!(parse_json_import(br#"[{"name": "J", "other": "p"}]"#).is_none());
        assert!(parse_json_import(br#"{"name": "J"}"#).is_none());
        assert!(parse_json_import(br#"[{"prompt": "p"}]"#).is_none());
        assert_eq!(bundled_defaults().unwrap().len(), 6);
    }
}

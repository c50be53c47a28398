//! Image files: decoding uploads, the `invokeai_*` PNG text chunks, PNG and WebP thumbnail
//! encoding, and the crop/resize operations of the upload endpoint (boards-images.md §2.5–2.6,
//! §7.1). Pure functions over bytes: no paths, no database.

use image::{DynamicImage, GenericImageView, ImageFormat};
use serde_json::Value;
use std::io::Cursor;

pub const METADATA_KEY: &str = "invokeai_metadata";
pub const WORKFLOW_KEY: &str = "invokeai_workflow";
pub const GRAPH_KEY: &str = "invokeai_graph";

/// Thumbnails fit within this square, keeping the aspect ratio, never enlarged.
pub const THUMBNAIL_SIZE: u32 = 256;

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("Failed to read image")]
    Decode,
    #[error("failed to encode image: {0}")]
    Encode(String),
}

/// The three text chunks Atelier keeps; everything else in a source PNG is dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PngText {
    pub metadata: Option<String>,
    pub workflow: Option<String>,
    pub graph: Option<String>,
}

impl PngText {
    pub fn has_workflow(&self) -> bool {
        self.workflow.is_some() || self.graph.is_some()
    }
}

/// Decodes an uploaded image of any supported format.
pub fn decode(bytes: &[u8]) -> Result<DynamicImage, MediaError> {
    image::load_from_memory(bytes).map_err(|_| MediaError::Decode)
}

/// Reads the `invokeai_*` chunks from PNG bytes (tEXt, zTXt or iTXt); empty for other formats.
pub fn read_png_text(bytes: &[u8]) -> PngText {
    let mut out = PngText::default();
    if image::guess_format(bytes).ok() != Some(ImageFormat::Png) {
        return out;
    }
    let Ok(mut reader) = png::Decoder::new(Cursor::new(bytes)).read_info() else {
        return out;
    };
    // Text chunks may follow the image data: read to the end before looking.
    if let Some(size) = reader.output_buffer_size() {
        let mut buf = vec![0; size];
        if reader.next_frame(&mut buf).is_ok() {
            let _ = reader.finish();
        }
    }
    let info = reader.info();
    let mut entries: Vec<(String, String)> = Vec::new();
    for chunk in &info.uncompressed_latin1_text {
        entries.push((chunk.keyword.clone(), chunk.text.clone()));
    }
    for chunk in &info.compressed_latin1_text {
        if let Ok(text) = chunk.get_text() {
            entries.push((chunk.keyword.clone(), text));
        }
    }
    for chunk in &info.utf8_text {
        if let Ok(text) = chunk.get_text() {
            entries.push((chunk.keyword.clone(), text));
        }
    }
    for (key, text) in entries {
        match key.as_str() {
            METADATA_KEY => out.metadata = Some(text),
            WORKFLOW_KEY => out.workflow = Some(text),
            GRAPH_KEY => out.graph = Some(text),
            _ => {}
        }
    }
    out
}

/// Metadata is kept only when it is a JSON object.
pub fn valid_metadata(text: &str) -> bool {
    matches!(serde_json::from_str::<Value>(text), Ok(Value::Object(_)))
}

/// A graph is kept only when it is an object with a `nodes` object and an `edges` array.
pub fn valid_graph(text: &str) -> bool {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => {
            m.get("nodes").is_some_and(Value::is_object)
                && m.get("edges").is_some_and(Value::is_array)
        }
        _ => false,
    }
}

/// A workflow document needs its required members (workflows-and-state.md §1.2).
pub fn valid_workflow(text: &str) -> bool {
    let Ok(Value::Object(m)) = serde_json::from_str::<Value>(text) else {
        return false;
    };
    let strings = [
        "name",
        "author",
        "description",
        "version",
        "contact",
        "tags",
        "notes",
    ];
    strings
        .iter()
        .all(|k| m.get(*k).is_some_and(Value::is_string))
        && m.get("nodes").is_some_and(Value::is_array)
        && m.get("edges").is_some_and(Value::is_array)
        && m.get("exposedFields").is_some_and(Value::is_array)
        && m.get("meta").is_some_and(Value::is_object)
}

/// Keeps only valid values.
pub fn sanitize(text: PngText) -> PngText {
    PngText {
        metadata: text.metadata.filter(|t| valid_metadata(t)),
        workflow: text.workflow.filter(|t| valid_workflow(t)),
        graph: text.graph.filter(|t| valid_graph(t)),
    }
}

fn latin1(text: &str) -> bool {
    text.chars().all(|c| (c as u32) < 256)
}

/// Encodes `image` as PNG (8 bits per channel) carrying only the given text chunks: `tEXt` when
/// Latin-1 encodable, else `iTXt`. `compress_level` follows PIL's 0–9 scale.
pub fn encode_png(
    image: &DynamicImage,
    text: &PngText,
    compress_level: i64,
) -> Result<Vec<u8>, MediaError> {
    let (width, height) = image.dimensions();
    let (color, data) = if image.color().has_alpha() {
        (png::ColorType::Rgba, image.to_rgba8().into_raw())
    } else {
        (png::ColorType::Rgb, image.to_rgb8().into_raw())
    };
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(color);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(match compress_level {
            i64::MIN..=0 => png::Compression::NoCompression,
            1..=3 => png::Compression::Fast,
            4..=6 => png::Compression::Balanced,
            _ => png::Compression::High,
        });
        for (key, value) in [
            (METADATA_KEY, &text.metadata),
            (WORKFLOW_KEY, &text.workflow),
            (GRAPH_KEY, &text.graph),
        ] {
            if let Some(value) = value {
                let added = if latin1(value) {
                    encoder.add_text_chunk(key.to_owned(), value.clone())
                } else {
                    encoder.add_itxt_chunk(key.to_owned(), value.clone())
                };
                added.map_err(|e| MediaError::Encode(e.to_string()))?;
            }
        }
        let mut writer = encoder
            .write_header()
            .map_err(|e| MediaError::Encode(e.to_string()))?;
        writer
            .write_image_data(&data)
            .map_err(|e| MediaError::Encode(e.to_string()))?;
        writer
            .finish()
            .map_err(|e| MediaError::Encode(e.to_string()))?;
    }
    Ok(out)
}

/// The WebP thumbnail: fits within 256×256, RGBA when the source has transparency, else RGB.
pub fn thumbnail(image: &DynamicImage) -> Result<Vec<u8>, MediaError> {
    let (w, h) = image.dimensions();
    let small = if w > THUMBNAIL_SIZE || h > THUMBNAIL_SIZE {
        image.thumbnail(THUMBNAIL_SIZE, THUMBNAIL_SIZE)
    } else {
        image.clone()
    };
    let small = if has_transparency(&small) {
        DynamicImage::ImageRgba8(small.to_rgba8())
    } else {
        DynamicImage::ImageRgb8(small.to_rgb8())
    };
    let mut out = Cursor::new(Vec::new());
    small
        .write_to(&mut out, ImageFormat::WebP)
        .map_err(|e| MediaError::Encode(e.to_string()))?;
    Ok(out.into_inner())
}

fn has_transparency(image: &DynamicImage) -> bool {
    image.color().has_alpha() && image.to_rgba8().pixels().any(|p| p.0[3] < 255)
}

/// Crops to the bounding box of pixels that are not fully transparent (`crop_visible`).
pub fn crop_visible(image: DynamicImage) -> DynamicImage {
    if !image.color().has_alpha() {
        return image;
    }
    let rgba = image.to_rgba8();
    let (mut min_x, mut min_y, mut max_x, mut max_y) = (u32::MAX, u32::MAX, 0, 0);
    for (x, y, p) in rgba.enumerate_pixels() {
        if p.0[3] > 0 {
            min_x = min_x.min(x);
            min_y = min_y.min(y);
            max_x = max_x.max(x);
            max_y = max_y.max(y);
        }
    }
    if min_x == u32::MAX {
        return image; // fully transparent: nothing visible to crop to
    }
    image.crop_imm(min_x, min_y, max_x - min_x + 1, max_y - min_y + 1)
}

/// Parses `resize_to` (`{"width": W, "height": H}`, both > 0, W·H ≤ 4096²).
pub fn parse_resize_to(text: &str) -> Option<(u32, u32)> {
    let value: Value = serde_json::from_str(text).ok()?;
    let w = u32::try_from(value.get("width")?.as_u64()?).ok()?;
    let h = u32::try_from(value.get("height")?.as_u64()?).ok()?;
    (w > 0 && h > 0 && u64::from(w) * u64::from(h) <= 4096 * 4096).then_some((w, h))
}

/// Resizes to exactly `w`×`h` as RGBA.
pub fn resize_exact(image: &DynamicImage, w: u32, h: u32) -> DynamicImage {
    DynamicImage::ImageRgba8(
        image
            .resize_exact(w, h, image::imageops::FilterType::Lanczos3)
            .to_rgba8(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgba, RgbaImage};

    fn sample(w: u32, h: u32, alpha: u8) -> DynamicImage {
        DynamicImage::ImageRgba8(RgbaImage::from_pixel(w, h, Rgba([10, 20, 30, alpha])))
    }

    #[test]
    fn png_text_round_trips_latin1_and_unicode() {
        let text = PngText {
            metadata: Some(r#"{"prompt":"a café"}"#.into()),
            workflow: None,
            graph: Some(r#"{"nodes":{},"edges":[],"label":"日本"}"#.into()),
        };
        let bytes = encode_png(&sample(4, 3, 255), &text, 1).unwrap();
        assert_eq!(read_png_text(&bytes), text);
        let decoded = decode(&bytes).unwrap();
        assert_eq!(decoded.dimensions(), (4, 3));
    }

    #[test]
    fn thumbnails_fit_and_keep_alpha_only_when_needed() {
        let thumb = decode(&thumbnail(&sample(1024, 512, 255)).unwrap()).unwrap();
        assert_eq!(thumb.dimensions(), (256, 128));
        assert!(!thumb.color().has_alpha());
        let small = decode(&thumbnail(&sample(10, 20, 100)).unwrap()).unwrap();
        assert_eq!(small.dimensions(), (10, 20));
        assert!(small.color().has_alpha());
    }

    #[test]
    fn crop_and_resize() {
        let mut img = RgbaImage::from_pixel(10, 10, Rgba([0, 0, 0, 0]));
        img.put_pixel(2, 3, Rgba([1, 1, 1, 255]));
        img.put_pixel(5, 7, Rgba([1, 1, 1, 255]));
        assert_eq!(
            crop_visible(DynamicImage::ImageRgba8(img)).dimensions(),
            (4, 5)
        );
        assert_eq!(
            parse_resize_to(r#"{"width": 8, "height": 2}"#),
            Some((8, 2))
        );
        assert_eq!(parse_resize_to(r#"{"width": 0, "height": 2}"#), None);
        assert_eq!(parse_resize_to(r#"{"width": 5000, "height": 5000}"#), None);
        assert_eq!(parse_resize_to("[8, 2]"), None);
        assert_eq!(resize_exact(&sample(3, 3, 255), 8, 2).dimensions(), (8, 2));
    }

    #[test]
    fn validation_of_embedded_documents() {
        assert!(valid_metadata("{}") && !valid_metadata("[]") && !valid_metadata("nope"));
        assert!(
            valid_graph(r#"{"nodes":{},"edges":[]}"#) && !valid_graph(r#"{"nodes":[],"edges":[]}"#)
        );
        assert!(!valid_workflow(r#"{"name":"x"}"#));
    }
}

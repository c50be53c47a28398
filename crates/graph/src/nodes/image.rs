//! Image nodes: creation, geometry, filters, channels and saving (generation.md §8.7).

use super::{board_and_metadata, image_output_fields, node};
use crate::field::Ty;
use crate::spec::{Input, NodeSpec};
use crate::NodeError;
use image::{DynamicImage, Rgba, RgbaImage};
use serde_json::json;

const RESAMPLE: &[&str] = &[
    "nearest", "box", "bilinear", "hamming", "bicubic", "lanczos",
];

fn with_board(mut inputs: Vec<Input>) -> Vec<Input> {
    let mut v = board_and_metadata();
    v.append(&mut inputs);
    v
}

fn filter(mode: &str) -> image::imageops::FilterType {
    use image::imageops::FilterType;
    match mode {
        "nearest" => FilterType::Nearest,
        "bilinear" | "box" | "hamming" => FilterType::Triangle,
        "lanczos" => FilterType::Lanczos3,
        _ => FilterType::CatmullRom,
    }
}

fn dimension(value: i64, name: &str) -> Result<u32, NodeError> {
    u32::try_from(value)
        .ok()
        .filter(|v| *v > 0 && *v <= 16384)
        .ok_or_else(|| NodeError::value(format!("{name} must be between 1 and 16384")))
}

pub fn specs() -> Vec<NodeSpec> {
    let image = || Input::new("image", Ty::Named("ImageField")).desc("The image to process");
    let mut save = node(
        "save_image",
        "Save Image",
        "1.2.2",
        "image",
        with_board(vec![image().desc("The image to save")]),
        "image_output",
        image_output_fields(),
        |i, ctx| {
            let img = i.image("image", ctx)?;
            i.save_image(&img, ctx)
        },
    );
    save.use_cache = false;
    vec![
        node(
            "blank_image",
            "Blank Image",
            "1.2.2",
            "image",
            with_board(vec![
                Input::new("width", Ty::Int)
                    .default(json!(512))
                    .desc("The width of the image"),
                Input::new("height", Ty::Int)
                    .default(json!(512))
                    .desc("The height of the image"),
                Input::new("mode", Ty::Enum(&["RGB", "RGBA"]))
                    .default(json!("RGB"))
                    .desc("The mode of the image"),
                Input::new("color", Ty::Named("ColorField"))
                    .default(json!({"r": 0, "g": 0, "b": 0, "a": 255}))
                    .desc("The color of the image"),
            ]),
            "image_output",
            image_output_fields(),
            |i, ctx| {
                let w = dimension(i.int("width")?, "width")?;
                let h = dimension(i.int("height")?, "height")?;
                let c = i.get("color");
                let channel =
                    |k: &str| c.get(k).and_then(|v| v.as_u64()).unwrap_or(0).min(255) as u8;
                let px = Rgba([channel("r"), channel("g"), channel("b"), channel("a")]);
                let buf = RgbaImage::from_pixel(w, h, px);
                let img = if i.str("mode")? == "RGBA" {
                    DynamicImage::ImageRgba8(buf)
                } else {
                    DynamicImage::ImageRgba8(buf).to_rgb8().into()
                };
                i.save_image(&img, ctx)
            },
        ),
        node(
            "img_resize",
            "Resize Image",
            "1.2.2",
            "image",
            with_board(vec![
                image().desc("The image to resize"),
                Input::new("width", Ty::Int)
                    .default(json!(512))
                    .gt(json!(0))
                    .desc("The width to resize to (px)"),
                Input::new("height", Ty::Int)
                    .default(json!(512))
                    .gt(json!(0))
                    .desc("The height to resize to (px)"),
                Input::new("resample_mode", Ty::Enum(RESAMPLE))
                    .default(json!("bicubic"))
                    .desc("The resampling mode"),
            ]),
            "image_output",
            image_output_fields(),
            |i, ctx| {
                let img = i.image("image", ctx)?;
                let w = dimension(i.int("width")?, "width")?;
                let h = dimension(i.int("height")?, "height")?;
                let out = img.resize_exact(w, h, filter(i.str("resample_mode")?));
                i.save_image(&out, ctx)
            },
        ),
        save,
    ]
}

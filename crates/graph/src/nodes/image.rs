//! Image nodes: creation, geometry, compositing, filters, channels and saving
//! (generation.md §8.7), after InvokeAI's `invocations/image.py`.
//!
//! Differences from the reference (Pillow) worth knowing:
//! - Images reach nodes as the server stored them (8-bit RGB or RGBA PNGs), so an "L"
//!   result read back is RGB with equal channels. Nodes that need a mode Pillow would refuse
//!   are lenient instead: `img_chan` gives 255 for the alpha of an opaque image, `img_mul`
//!   multiplies an RGB and an RGBA image as RGBA.
//! - `img_conv`: PNG cannot hold CMYK, YCbCr, LAB, HSV or float pixels (the reference fails
//!   when it saves them), so those modes are rendered back to RGB after the conversion, keeping
//!   its quantisation. `I` and `F` give the 8-bit luminance (Pillow would store `I` as 16-bit).
//! - LAB uses the CIE formulas with a D50 white (the littlecms profiles Pillow uses) and
//!   YCbCr the JPEG formulas in floating point; results can differ from Pillow by a unit.
//! - Blurs follow Pillow's box-blur construction (Gaussian = three box passes with Pillow's
//!   radius formula) in floating point, without its rounding between passes.
//! - `img_resize`/`img_scale`: `box` and `hamming` use the bilinear filter (the `image` crate
//!   has neither); alpha is not premultiplied while resampling.
//! - `img_noise` draws from SplitMix64, not numpy's MT19937: the same seed gives the same
//!   noise here, but not the reference's. Out-of-range Gaussian samples wrap modulo 256 as
//!   the reference's float-to-uint8 cast does on x86.
//! - `img_ilerp` with `max` < `min` clamps to 0 where numpy's cast is undefined.
//! - Masks are saved like any image (there is no image category in a save request).
//! - `img_watermark`, `decode_watermark` and `img_nsfw` need models and are not offered;
//!   the canvas and mask-morphology nodes (`canvas_paste_back`, `mask_edge`,
//!   `expand_mask_with_fade`, ...) and the Oklab/Oklch variants are not implemented yet.

mod px;

use super::{board_and_metadata, image_output_fields, node};
use crate::context::Context;
use crate::field::Ty;
use crate::spec::{image_output, Input, Inputs, NodeSpec, RunFn};
use crate::{ImageRef, NodeError};
use image::imageops::FilterType;
use image::{DynamicImage, GrayImage, Luma, Rgba, RgbaImage};
use px::{Blur, Space};
use serde_json::{json, Map, Value};

type Out = Result<Map<String, Value>, NodeError>;

const RESAMPLE: &[&str] = &[
    "nearest", "box", "bilinear", "hamming", "bicubic", "lanczos",
];

const MODES: &[&str] = &["L", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "F"];

const COLOR_CHANNELS: &[&str] = &[
    "Red (RGBA)",
    "Green (RGBA)",
    "Blue (RGBA)",
    "Alpha (RGBA)",
    "Cyan (CMYK)",
    "Magenta (CMYK)",
    "Yellow (CMYK)",
    "Black (CMYK)",
    "Hue (HSV)",
    "Saturation (HSV)",
    "Value (HSV)",
    "Luminosity (LAB)",
    "A (LAB)",
    "B (LAB)",
    "Y (YCbCr)",
    "Cb (YCbCr)",
    "Cr (YCbCr)",
];

const CHANNEL_TAGS: &[&str] = &[
    "image",
    "offset",
    "red",
    "green",
    "blue",
    "alpha",
    "cyan",
    "magenta",
    "yellow",
    "black",
    "hue",
    "saturation",
    "luminosity",
    "value",
];

const MULTIPLY_TAGS: &[&str] = &[
    "image",
    "invert",
    "scale",
    "multiply",
    "red",
    "green",
    "blue",
    "alpha",
    "cyan",
    "magenta",
    "yellow",
    "black",
    "hue",
    "saturation",
    "luminosity",
    "value",
];

/// The largest side a node may produce.
const MAX_SIDE: i64 = 16384;

/// The largest `seed` of `img_noise` (numpy's uint32 maximum).
const SEED_MAX: i64 = 4_294_967_295;

fn with_board(mut inputs: Vec<Input>) -> Vec<Input> {
    let mut v = board_and_metadata();
    v.append(&mut inputs);
    v
}

/// An image node of `category` with board and metadata inputs and an `image_output`.
#[allow(clippy::too_many_arguments)]
fn image_node(
    type_name: &'static str,
    title: &'static str,
    version: &'static str,
    category: &'static str,
    tags: &'static [&'static str],
    description: &'static str,
    inputs: Vec<Input>,
    run: RunFn,
) -> NodeSpec {
    let mut spec = node(
        type_name,
        title,
        version,
        category,
        with_board(inputs),
        "image_output",
        image_output_fields(),
        run,
    );
    spec.tags = tags;
    spec.description = description;
    spec
}

fn image_in(name: &'static str, desc: &'static str) -> Input {
    Input::new(name, Ty::Named("ImageField")).desc(desc)
}

fn int_in(name: &'static str, default: i64, desc: &'static str) -> Input {
    Input::new(name, Ty::Int).default(json!(default)).desc(desc)
}

fn filter(mode: &str) -> FilterType {
    match mode {
        "nearest" => FilterType::Nearest,
        "bilinear" | "box" | "hamming" => FilterType::Triangle,
        "lanczos" => FilterType::Lanczos3,
        _ => FilterType::CatmullRom,
    }
}

fn dimension(value: i64, name: &str) -> Result<u32, NodeError> {
    if (1..=MAX_SIDE).contains(&value) {
        Ok(value as u32)
    } else {
        Err(NodeError::value(format!(
            "{name} must be between 1 and {MAX_SIDE}, got {value}"
        )))
    }
}

/// Whether an optional image input was given.
fn has(i: &Inputs, name: &str) -> bool {
    !i.get(name).is_null()
}

fn rgba(i: &Inputs, name: &str, ctx: &mut dyn Context) -> Result<RgbaImage, NodeError> {
    Ok(i.image(name, ctx)?.to_rgba8())
}

fn gray(i: &Inputs, name: &str, ctx: &mut dyn Context) -> Result<GrayImage, NodeError> {
    Ok(px::to_l(&i.image(name, ctx)?))
}

fn save(i: &Inputs, img: impl Into<DynamicImage>, ctx: &mut dyn Context) -> Out {
    i.save_image(&img.into(), ctx)
}

fn invert(mut img: GrayImage) -> GrayImage {
    for p in img.pixels_mut() {
        p.0[0] = 255 - p.0[0];
    }
    img
}

/// A `BoundingBoxField` input as (x_min, y_min, x_max, y_max).
fn bounding_box(value: &Value) -> Result<(i64, i64, i64, i64), NodeError> {
    let coord = |k: &str| {
        value
            .get(k)
            .and_then(Value::as_i64)
            .ok_or_else(|| NodeError::value(format!("bounding_box.{k} must be an integer")))
    };
    let (x_min, y_min, x_max, y_max) = (
        coord("x_min")?,
        coord("y_min")?,
        coord("x_max")?,
        coord("y_max")?,
    );
    if x_min > x_max {
        return Err(NodeError::value(format!(
            "x_min ({x_min}) is greater than x_max ({x_max})."
        )));
    }
    if y_min > y_max {
        return Err(NodeError::value(format!(
            "y_min ({y_min}) is greater than y_max ({y_max})."
        )));
    }
    Ok((x_min, y_min, x_max, y_max))
}

fn channel_space(name: &str) -> Result<(Space, usize), NodeError> {
    let index = COLOR_CHANNELS
        .iter()
        .position(|c| *c == name)
        .ok_or_else(|| NodeError::value(format!("Unknown channel {name}")))?;
    Ok(match index {
        0..=3 => (Space::Rgba, index),
        4..=7 => (Space::Cmyk, index - 4),
        8..=10 => (Space::Hsv, index - 8),
        11..=13 => (Space::Lab, index - 11),
        _ => (Space::YCbCr, index - 14),
    })
}

pub fn specs() -> Vec<NodeSpec> {
    let mut specs = vec![
        image_node(
            "blank_image",
            "Blank Image",
            "1.2.2",
            "image",
            &["image"],
            "Makes an image of one colour",
            vec![
                int_in("width", 512, "The width of the image"),
                int_in("height", 512, "The height of the image"),
                Input::new("mode", Ty::Enum(&["RGB", "RGBA"]))
                    .default(json!("RGB"))
                    .desc("The mode of the image"),
                Input::new("color", Ty::Named("ColorField"))
                    .default(json!({"r": 0, "g": 0, "b": 0, "a": 255}))
                    .desc("The color of the image"),
            ],
            blank_image,
        ),
        image_node(
            "img_crop",
            "Crop Image",
            "1.2.2",
            "image",
            &["image", "crop"],
            "Cuts a rectangle out of an image; parts of the rectangle outside the image are transparent",
            vec![
                image_in("image", "The image to crop"),
                int_in("x", 0, "The left x coordinate of the crop rectangle"),
                int_in("y", 0, "The top y coordinate of the crop rectangle"),
                int_in("width", 512, "The width of the crop rectangle").gt(json!(0)),
                int_in("height", 512, "The height of the crop rectangle").gt(json!(0)),
            ],
            img_crop,
        ),
        image_node(
            "img_paste",
            "Paste Image",
            "1.2.2",
            "image",
            &["image", "paste"],
            "Pastes one image onto another, optionally through a mask",
            vec![
                image_in("base_image", "The base image"),
                image_in("image", "The image to paste"),
                image_in("mask", "The mask to use when pasting").optional(),
                int_in("x", 0, "The left x coordinate at which to paste the image"),
                int_in("y", 0, "The top y coordinate at which to paste the image"),
                Input::new("crop", Ty::Bool)
                    .default(json!(false))
                    .desc("Crop to base image dimensions"),
            ],
            img_paste,
        ),
        image_node(
            "tomask",
            "Mask from Alpha",
            "1.2.2",
            "mask",
            &["image", "mask"],
            "Takes an image's alpha channel as a mask",
            vec![
                image_in("image", "The image to create the mask from"),
                Input::new("invert", Ty::Bool)
                    .default(json!(false))
                    .desc("Whether or not to invert the mask"),
            ],
            tomask,
        ),
        image_node(
            "img_mul",
            "Multiply Images",
            "1.2.2",
            "image",
            &["image", "multiply"],
            "Multiplies two images channel by channel (PIL's ImageChops.multiply)",
            vec![
                image_in("image1", "The first image to multiply"),
                image_in("image2", "The second image to multiply"),
            ],
            img_mul,
        ),
        image_node(
            "img_chan",
            "Extract Image Channel",
            "1.2.2",
            "image",
            &["image", "channel"],
            "Takes one channel of an image as a grayscale image",
            vec![
                image_in("image", "The image to get the channel from"),
                Input::new("channel", Ty::Enum(&["A", "R", "G", "B"]))
                    .default(json!("A"))
                    .desc("The channel to get"),
            ],
            img_chan,
        ),
        image_node(
            "img_conv",
            "Convert Image Mode",
            "1.2.2",
            "image",
            &["image", "convert"],
            "Converts an image to another colour mode",
            vec![
                image_in("image", "The image to convert"),
                Input::new("mode", Ty::Enum(MODES))
                    .default(json!("L"))
                    .desc("The mode to convert to"),
            ],
            img_conv,
        ),
        image_node(
            "img_blur",
            "Blur Image",
            "1.2.2",
            "image",
            &["image", "blur"],
            "Blurs an image",
            vec![
                image_in("image", "The image to blur"),
                Input::new("radius", Ty::Float)
                    .default(json!(8.0))
                    .ge(json!(0))
                    .desc("The blur radius"),
                Input::new("blur_type", Ty::Enum(&["gaussian", "box"]))
                    .default(json!("gaussian"))
                    .desc("The type of blur"),
            ],
            img_blur,
        ),
        image_node(
            "unsharp_mask",
            "Unsharp Mask",
            "1.2.2",
            "image",
            &["image", "unsharp_mask"],
            "Sharpens an image with an unsharp mask",
            vec![
                image_in("image", "The image to use"),
                Input::new("radius", Ty::Float)
                    .default(json!(2))
                    .gt(json!(0))
                    .desc("Unsharp mask radius"),
                Input::new("strength", Ty::Float)
                    .default(json!(50))
                    .ge(json!(0))
                    .desc("Unsharp mask strength"),
            ],
            unsharp_mask,
        ),
        image_node(
            "img_resize",
            "Resize Image",
            "1.2.2",
            "image",
            &["image", "resize"],
            "Resizes an image to the given size",
            vec![
                image_in("image", "The image to resize"),
                int_in("width", 512, "The width to resize to (px)").gt(json!(0)),
                int_in("height", 512, "The height to resize to (px)").gt(json!(0)),
                Input::new("resample_mode", Ty::Enum(RESAMPLE))
                    .default(json!("bicubic"))
                    .desc("The resampling mode"),
            ],
            img_resize,
        ),
        image_node(
            "img_scale",
            "Scale Image",
            "1.2.2",
            "image",
            &["image", "scale"],
            "Scales an image by a factor",
            vec![
                image_in("image", "The image to scale"),
                Input::new("scale_factor", Ty::Float)
                    .default(json!(2.0))
                    .gt(json!(0))
                    .desc("The factor by which to scale the image"),
                Input::new("resample_mode", Ty::Enum(RESAMPLE))
                    .default(json!("bicubic"))
                    .desc("The resampling mode"),
            ],
            img_scale,
        ),
        image_node(
            "img_lerp",
            "Lerp Image",
            "1.2.2",
            "image",
            &["image", "lerp"],
            "Maps every sample from 0..255 linearly onto min..max",
            vec![
                image_in("image", "The image to lerp"),
                int_in("min", 0, "The minimum output value")
                    .ge(json!(0))
                    .le(json!(255)),
                int_in("max", 255, "The maximum output value")
                    .ge(json!(0))
                    .le(json!(255)),
            ],
            img_lerp,
        ),
        image_node(
            "img_ilerp",
            "Inverse Lerp Image",
            "1.2.2",
            "image",
            &["image", "ilerp"],
            "Maps every sample from min..max linearly onto 0..255, clamping outside",
            vec![
                image_in("image", "The image to lerp"),
                int_in("min", 0, "The minimum input value")
                    .ge(json!(0))
                    .le(json!(255)),
                int_in("max", 255, "The maximum input value")
                    .ge(json!(0))
                    .le(json!(255)),
            ],
            img_ilerp,
        ),
        image_node(
            "mask_combine",
            "Combine Masks",
            "1.2.2",
            "mask",
            &["image", "mask", "multiply"],
            "Multiplies two masks together",
            vec![
                image_in("mask1", "The first mask to combine"),
                image_in("mask2", "The second image to combine"),
            ],
            mask_combine,
        ),
        image_node(
            "color_correct",
            "Color Correct",
            "2.0.0",
            "image",
            &["image", "color"],
            "Matches the colour histogram of an image to a reference image, optionally only \
             where a mask is black",
            vec![
                image_in("base_image", "The image to color-correct"),
                image_in("color_reference", "Reference image for color-correction"),
                image_in("mask", "Optional mask to limit color correction area").optional(),
                Input::new(
                    "colorspace",
                    Ty::Enum(&["RGB", "YCbCr", "YCbCr-Chroma", "YCbCr-Luma"]),
                )
                .default(json!("RGB"))
                .desc("Colorspace in which to apply histogram matching"),
            ],
            color_correct,
        ),
        image_node(
            "img_hue_adjust",
            "Adjust Image Hue",
            "1.2.2",
            "image",
            &["image", "hue"],
            "Rotates the hue of an image",
            vec![
                image_in("image", "The image to adjust"),
                int_in("hue", 0, "The degrees by which to rotate the hue, 0-360"),
            ],
            img_hue_adjust,
        ),
        image_node(
            "img_channel_offset",
            "Offset Image Channel",
            "1.2.3",
            "image",
            CHANNEL_TAGS,
            "Adds a value to one channel of an image in a chosen colour space",
            vec![
                image_in("image", "The image to adjust"),
                Input::new("channel", Ty::Enum(COLOR_CHANNELS)).desc("Which channel to adjust"),
                int_in("offset", 0, "The amount to adjust the channel by")
                    .ge(json!(-255))
                    .le(json!(255)),
            ],
            img_channel_offset,
        ),
        image_node(
            "img_channel_multiply",
            "Multiply Image Channel",
            "1.2.3",
            "image",
            MULTIPLY_TAGS,
            "Scales one channel of an image in a chosen colour space",
            vec![
                image_in("image", "The image to adjust"),
                Input::new("channel", Ty::Enum(COLOR_CHANNELS)).desc("Which channel to adjust"),
                Input::new("scale", Ty::Float)
                    .default(json!(1.0))
                    .ge(json!(0.0))
                    .desc("The amount to scale the channel by."),
                Input::new("invert_channel", Ty::Bool)
                    .default(json!(false))
                    .desc("Invert the channel after scaling"),
            ],
            img_channel_multiply,
        ),
        image_node(
            "mask_from_id",
            "Mask from Segmented Image",
            "1.0.1",
            "mask",
            &["image", "mask", "id"],
            "Makes a mask of the pixels close to one colour of an ID map",
            vec![
                image_in("image", "The image to create the mask from"),
                Input::new("color", Ty::Named("ColorField")).desc("ID color to mask"),
                int_in("threshold", 100, "Threshold for color detection"),
                Input::new("invert", Ty::Bool)
                    .default(json!(false))
                    .desc("Whether or not to invert the mask"),
            ],
            mask_from_id,
        ),
        image_node(
            "apply_mask_to_image",
            "Apply Mask to Image",
            "1.0.0",
            "mask",
            &["image", "mask", "blend"],
            "Uses a mask as an image's alpha channel",
            vec![
                image_in("image", "The image from which to extract the masked region"),
                image_in(
                    "mask",
                    "The mask defining the region (black=keep, white=discard)",
                ),
                Input::new("invert_mask", Ty::Bool)
                    .default(json!(false))
                    .desc("Whether to invert the mask before applying it"),
            ],
            apply_mask_to_image,
        ),
        image_node(
            "img_noise",
            "Add Image Noise",
            "1.1.0",
            "image",
            &["image", "noise"],
            "Adds seeded noise to an image, optionally only where a mask is black",
            vec![
                image_in("image", "The image to add noise to"),
                image_in(
                    "mask",
                    "Optional mask determining where to apply noise (black=noise, white=no noise)",
                )
                .optional(),
                int_in("seed", 0, "Seed for random number generation")
                    .ge(json!(0))
                    .le(json!(SEED_MAX)),
                Input::new("noise_type", Ty::Enum(&["gaussian", "salt_and_pepper"]))
                    .default(json!("gaussian"))
                    .desc("The type of noise to add"),
                Input::new("amount", Ty::Float)
                    .default(json!(0.1))
                    .ge(json!(0))
                    .le(json!(1))
                    .desc("The amount of noise to add"),
                Input::new("noise_color", Ty::Bool)
                    .default(json!(true))
                    .desc("Whether to add colored noise"),
                int_in("size", 1, "The size of the noise points").ge(json!(1)),
            ],
            img_noise,
        ),
        image_node(
            "crop_image_to_bounding_box",
            "Crop Image to Bounding Box",
            "1.0.0",
            "image",
            &["image", "crop"],
            "Crops an image to a bounding box, or without one to its non-transparent pixels",
            vec![
                image_in("image", "The image to crop"),
                Input::new("bounding_box", Ty::Named("BoundingBoxField"))
                    .optional()
                    .desc("The bounding box to crop the image to"),
            ],
            crop_to_bounding_box,
        ),
        image_node(
            "paste_image_into_bounding_box",
            "Paste Image into Bounding Box",
            "1.0.0",
            "image",
            &["image", "crop"],
            "Pastes an image, through its own alpha, into a bounding box of the same size on another image",
            vec![
                image_in("source_image", "The image to paste"),
                image_in("target_image", "The image to paste into"),
                Input::new("bounding_box", Ty::Named("BoundingBoxField"))
                    .desc("The bounding box to paste the image into"),
            ],
            paste_into_bounding_box,
        ),
        image_node(
            "save_image",
            "Save Image",
            "1.2.2",
            "image",
            &["primitives", "image"],
            "Stores a copy of an image",
            vec![image_in("image", "The image to process")],
            |i, ctx| {
                let img = i.image("image", ctx)?;
                i.save_image(&img, ctx)
            },
        ),
    ];
    if let Some(save) = specs.iter_mut().find(|s| s.type_name == "save_image") {
        save.use_cache = false;
    }

    let mut pad = node(
        "img_pad_crop",
        "Center Pad or Crop Image",
        "1.0.0",
        "image",
        vec![
            image_in("image", "The image to crop"),
            int_in("left", 0, "Number of pixels to pad/crop from the left (negative values crop inwards, positive values pad outwards)"),
            int_in("right", 0, "Number of pixels to pad/crop from the right (negative values crop inwards, positive values pad outwards)"),
            int_in("top", 0, "Number of pixels to pad/crop from the top (negative values crop inwards, positive values pad outwards)"),
            int_in("bottom", 0, "Number of pixels to pad/crop from the bottom (negative values crop inwards, positive values pad outwards)"),
        ],
        "image_output",
        image_output_fields(),
        img_pad_crop,
    );
    pad.tags = &["image", "pad", "crop"];
    pad.description = "Pads (positive values) or crops (negative values) each side of an image";
    specs.push(pad);

    let mut show = node(
        "show_image",
        "Show Image",
        "1.0.1",
        "image",
        vec![image_in("image", "The image to show")],
        "image_output",
        image_output_fields(),
        show_image,
    );
    show.tags = &["image"];
    show.description = "Passes an image on unchanged (the server has no display to show it on)";
    specs.push(show);
    specs
}

fn blank_image(i: &Inputs, ctx: &mut dyn Context) -> Out {
    let w = dimension(i.int("width")?, "width")?;
    let h = dimension(i.int("height")?, "height")?;
    let c = i.get("color");
    let channel = |k: &str| c.get(k).and_then(Value::as_u64).unwrap_or(0).min(255) as u8;
    let buf = RgbaImage::from_pixel(
        w,
        h,
        Rgba([channel("r"), channel("g"), channel("b"), channel("a")]),
    );
    if i.str("mode")? == "RGBA" {
        save(i, buf, ctx)
    } else {
        save(i, DynamicImage::ImageRgba8(buf).to_rgb8(), ctx)
    }
}

fn img_crop(i: &Inputs, ctx: &mut dyn Context) -> Out {
    let img = rgba(i, "image", ctx)?;
    let w = dimension(i.int("width")?, "width")?;
    let h = dimension(i.int("height")?, "height")?;
    let out = px::crop_fill(&img, i.int("x")?, i.int("y")?, w, h);
    save(i, out, ctx)
}

fn img_pad_crop(i: &Inputs, ctx: &mut dyn Context) -> Out {
    let img = rgba(i, "image", ctx)?;
    let (left, top) = (i.int("left")?, i.int("top")?);
    let w = i64::from(img.width())
        .saturating_add(left)
        .saturating_add(i.int("right")?);
    let h = i64::from(img.height())
        .saturating_add(top)
        .saturating_add(i.int("bottom")?);
    let mut out = RgbaImage::new(
        dimension(w, "The padded width")?,
        dimension(h, "The padded height")?,
    );
    px::copy_into(&mut out, &img, left, top);
    save(i, out, ctx)
}

fn img_paste(i: &Inputs, ctx: &mut dyn Context) -> Out {
    let base = rgba(i, "base_image", ctx)?;
    let img = rgba(i, "image", ctx)?;
    let mask = if has(i, "mask") {
        let m = invert(gray(i, "mask", ctx)?);
        if m.dimensions() != img.dimensions() {
            return Err(NodeError::value(format!(
                "The mask ({}x{}) must be the size of the image ({}x{})",
                m.width(),
                m.height(),
                img.width(),
                img.height()
            )));
        }
        Some(m)
    } else {
        None
    };
    let (x, y) = (i.int("x")?, i.int("y")?);
    let (bw, bh) = (i64::from(base.width()), i64::from(base.height()));
    let (min_x, min_y) = (x.min(0), y.min(0));
    let max_x = bw.max(i64::from(img.width()).saturating_add(x));
    let max_y = bh.max(i64::from(img.height()).saturating_add(y));
    let w = dimension(max_x.saturating_sub(min_x), "The pasted width")?;
    let h = dimension(max_y.saturating_sub(min_y), "The pasted height")?;
    let (shift_x, shift_y) = (min_x.saturating_neg(), min_y.saturating_neg());
    let mut canvas = RgbaImage::new(w, h);
    px::copy_into(&mut canvas, &base, shift_x, shift_y);
    let (ox, oy) = (x.max(0), y.max(0));
    let layer = match mask {
        Some(m) => RgbaImage::from_fn(img.width(), img.height(), |sx, sy| {
            let mv = m.get_pixel(sx, sy).0[0];
            Rgba(img.get_pixel(sx, sy).0.map(|c| px::blend255(0, c, mv)))
        }),
        None => img,
    };
    let x0 = ox.min(i64::from(w));
    let y0 = oy.min(i64::from(h));
    let x1 = ox
        .saturating_add(i64::from(layer.width()))
        .min(i64::from(w));
    let y1 = oy
        .saturating_add(i64::from(layer.height()))
        .min(i64::from(h));
    for dy in y0..y1 {
        for dx in x0..x1 {
            let src = layer.get_pixel((dx - ox) as u32, (dy - oy) as u32).0;
            let dst = canvas.get_pixel(dx as u32, dy as u32).0;
            canvas.put_pixel(dx as u32, dy as u32, Rgba(px::over(dst, src)));
        }
    }
    if i.bool("crop")? {
        canvas = px::crop_fill(&canvas, shift_x, shift_y, base.width(), base.height());
    }
    save(i, canvas, ctx)
}

fn tomask(i: &Inputs, ctx: &mut dyn Context) -> Out {
    let img = i.image("image", ctx)?;
    // Pillow takes the last band: alpha, or blue for RGB, or the gray itself.
    let mask = match &img {
        DynamicImage::ImageLuma8(g) => g.clone(),
        other if other.color().has_alpha() => {
            let rgba = other.to_rgba8();
            GrayImage::from_fn(rgba.width(), rgba.height(), |x, y| {
                Luma([rgba.get_pixel(x, y).0[3]])
            })
        }
        other => {
            let rgb = other.to_rgb8();
            GrayImage::from_fn(rgb.width(), rgb.height(), |x, y| {
                Luma([rgb.get_pixel(x, y).0[2]])
            })
        }
    };
    let mask = if i.bool("invert")? {
        invert(mask)
    } else {
        mask
    };
    save(i, mask, ctx)
}

fn img_mul(i: &Inputs, ctx: &mut dyn Context) -> Out {
    let a = i.image("image1", ctx)?;
    let b = i.image("image2", ctx)?;
    let w = a.width().min(b.width());
    let h = a.height().min(b.height());
    let mul = |x: u8, y: u8| (u32::from(x) * u32::from(y) / 255) as u8;
    let out: DynamicImage = match (&a, &b) {
        (DynamicImage::ImageLuma8(a), DynamicImage::ImageLuma8(b)) => {
            GrayImage::from_fn(w, h, |x, y| {
                Luma([mul(a.get_pixel(x, y).0[0], b.get_pixel(x, y).0[0])])
            })
            .into()
        }
        _ if a.color().has_alpha() || b.color().has_alpha() => {
            let (a, b) = (a.to_rgba8(), b.to_rgba8());
            RgbaImage::from_fn(w, h, |x, y| {
                let (p, q) = (a.get_pixel(x, y).0, b.get_pixel(x, y).0);
                Rgba([
                    mul(p[0], q[0]),
                    mul(p[1], q[1]),
                    mul(p[2], q[2]),
                    mul(p[3], q[3]),
                ])
            })
            .into()
        }
        _ => {
            let (a, b) = (a.to_rgb8(), b.to_rgb8());
            image::RgbImage::from_fn(w, h, |x, y| {
                let (p, q) = (a.get_pixel(x, y).0, b.get_pixel(x, y).0);
                image::Rgb([mul(p[0], q[0]), mul(p[1], q[1]), mul(p[2], q[2])])
            })
            .into()
        }
    };
    if w == 0 || h == 0 {
        return Err(NodeError::value("The images do not overlap"));
    }
    save(i, out, ctx)
}

fn img_chan(i: &Inputs, ctx: &mut dyn Context) -> Out {
    let img = rgba(i, "image", ctx)?;
    let index = match i.str("channel")? {
        "R" => 0,
        "G" => 1,
        "B" => 2,
        _ => 3,
    };
    let out = GrayImage::from_fn(img.width(), img.height(), |x, y| {
        Luma([img.get_pixel(x, y).0[index]])
    });
    save(i, out, ctx)
}

/// Converts through `space` and back to RGB (the modes a PNG cannot hold).
fn through(img: &RgbaImage, space: Space) -> image::RgbImage {
    image::RgbImage::from_fn(img.width(), img.height(), |x, y| {
        let p = img.get_pixel(x, y).0;
        image::Rgb(px::decode(space, px::encode(space, p)))
    })
}

fn img_conv(i: &Inputs, ctx: &mut dyn Context) -> Out {
    let img = i.image("image", ctx)?;
    let out: DynamicImage = match i.str("mode")? {
        "L" | "I" => px::to_l(&img).into(),
        "F" => {
            let rgb = img.to_rgb8();
            GrayImage::from_fn(rgb.width(), rgb.height(), |x, y| {
                let [r, g, b] = rgb.get_pixel(x, y).0;
                let l = (u32::from(r) * 299 + u32::from(g) * 587 + u32::from(b) * 114) as f64;
                Luma([(l / 1000.0).round().min(255.0) as u8])
            })
            .into()
        }
        "RGB" => img.to_rgb8().into(),
        "RGBA" => img.to_rgba8().into(),
        "CMYK" => through(&img.to_rgba8(), Space::Cmyk).into(),
        "YCbCr" => through(&img.to_rgba8(), Space::YCbCr).into(),
        "LAB" => through(&img.to_rgba8(), Space::Lab).into(),
        "HSV" => through(&img.to_rgba8(), Space::Hsv).into(),
        other => return Err(NodeError::value(format!("Unknown mode {other}"))),
    };
    save(i, out, ctx)
}

fn img_blur(i: &Inputs, ctx: &mut dyn Context) -> Out {
    let img = rgba(i, "image", ctx)?;
    let radius = i.float("radius")?;
    if !radius.is_finite() || radius < 0.0 {
        return Err(NodeError::value("radius must be a finite number >= 0"));
    }
    let kind = if i.str("blur_type")? == "box" {
        Blur::Box
    } else {
        Blur::Gaussian
    };
    save(i, px::blur_rgba(&img, radius, kind), ctx)
}

fn unsharp_mask(i: &Inputs, ctx: &mut dyn Context) -> Out {
    let img = i.image("image", ctx)?;
    let radius = i.float("radius")?;
    let strength = i.float("strength")? / 100.0;
    if !radius.is_finite() || radius <= 0.0 || !strength.is_finite() || strength < 0.0 {
        return Err(NodeError::value(
            "radius must be a finite number > 0 and strength a finite number >= 0",
        ));
    }
    let rgb = img.to_rgb8();
    let blurred = px::gaussian_rgb(&rgb, radius);
    let mut sharp = rgb.clone();
    for (p, b) in sharp.pixels_mut().zip(blurred.pixels()) {
        for (c, bc) in p.0.iter_mut().zip(b.0) {
            let v = f64::from(*c) / 255.0;
            let bv = f64::from(bc) / 255.0;
            *c = ((v + (v - bv) * strength).clamp(0.0, 1.0) * 255.0) as u8;
        }
    }
    let out: DynamicImage = match &img {
        DynamicImage::ImageLuma8(_) => px::to_l(&sharp.into()).into(),
        other if other.color().has_alpha() => {
            let alpha = other.to_rgba8();
            RgbaImage::from_fn(sharp.width(), sharp.height(), |x, y| {
                let [r, g, b] = sharp.get_pixel(x, y).0;
                Rgba([r, g, b, alpha.get_pixel(x, y).0[3]])
            })
            .into()
        }
        _ => sharp.into(),
    };
    save(i, out, ctx)
}

fn img_resize(i: &Inputs, ctx: &mut dyn Context) -> Out {
    let img = i.image("image", ctx)?;
    let w = dimension(i.int("width")?, "width")?;
    let h = dimension(i.int("height")?, "height")?;
    let out = img.resize_exact(w, h, filter(i.str("resample_mode")?));
    save(i, out, ctx)
}

fn img_scale(i: &Inputs, ctx: &mut dyn Context) -> Out {
    let img = i.image("image", ctx)?;
    let factor = i.float("scale_factor")?;
    if !factor.is_finite() || factor <= 0.0 {
        return Err(NodeError::value("scale_factor must be a finite number > 0"));
    }
    let side = |v: u32| (f64::from(v) * factor).min(1e12) as i64;
    let w = dimension(side(img.width()), "The scaled width")?;
    let h = dimension(side(img.height()), "The scaled height")?;
    let out = img.resize_exact(w, h, filter(i.str("resample_mode")?));
    save(i, out, ctx)
}

fn img_lerp(i: &Inputs, ctx: &mut dyn Context) -> Out {
    let img = i.image("image", ctx)?;
    let (min, max) = (i.int("min")? as f32, i.int("max")? as f32);
    let out = px::map_samples(img, |v| {
        (f32::from(v) / 255.0 * (max - min) + min).clamp(0.0, 255.0) as u8
    });
    save(i, out, ctx)
}

fn img_ilerp(i: &Inputs, ctx: &mut dyn Context) -> Out {
    let img = i.image("image", ctx)?;
    let (min, max) = (i.int("min")? as f32, i.int("max")? as f32);
    let out = px::map_samples(img, |v| {
        let above = (f32::from(v) - min).max(0.0);
        if max == min {
            // numpy: x/0 is inf (clamped to 1) and 0/0 is nan (cast to 0).
            return if above > 0.0 { 255 } else { 0 };
        }
        ((above / (max - min)).min(1.0) * 255.0).clamp(0.0, 255.0) as u8
    });
    save(i, out, ctx)
}

fn mask_combine(i: &Inputs, ctx: &mut dyn Context) -> Out {
    let a = gray(i, "mask1", ctx)?;
    let b = gray(i, "mask2", ctx)?;
    let (w, h) = (a.width().min(b.width()), a.height().min(b.height()));
    if w == 0 || h == 0 {
        return Err(NodeError::value("The masks do not overlap"));
    }
    let out = GrayImage::from_fn(w, h, |x, y| {
        let v = u32::from(a.get_pixel(x, y).0[0]) * u32::from(b.get_pixel(x, y).0[0]) / 255;
        Luma([v as u8])
    });
    save(i, out, ctx)
}

/// numpy's `interp(x, xp, fp)` for increasing `xp`.
fn interp(x: f64, xp: &[f64], fp: &[f64]) -> f64 {
    let (Some(&x0), Some(&xl), Some(&f0), Some(&fl)) =
        (xp.first(), xp.last(), fp.first(), fp.last())
    else {
        return 0.0;
    };
    if x < x0 {
        return f0;
    }
    if x >= xl {
        return fl;
    }
    let j = xp.partition_point(|v| *v <= x).saturating_sub(1);
    match (xp.get(j), xp.get(j + 1), fp.get(j), fp.get(j + 1)) {
        (Some(&a), Some(&b), Some(&fa), Some(&fb)) if a != x && b != a => {
            fa + (fb - fa) * (x - a) / (b - a)
        }
        (_, _, Some(&fa), _) => fa,
        _ => fl,
    }
}

/// A lookup table taking `source`'s histogram onto `reference`'s.
fn match_histogram(source: &[u8], reference: &[u8]) -> [u8; 256] {
    let cdf = |data: &[u8]| {
        let mut hist = [0f64; 256];
        for v in data {
            hist[usize::from(*v)] += 1.0;
        }
        let mut acc = 0.0;
        for h in hist.iter_mut() {
            acc += *h;
            *h = acc;
        }
        if acc > 0.0 {
            for h in hist.iter_mut() {
                *h /= acc;
            }
        }
        hist
    };
    let (src, refc) = (cdf(source), cdf(reference));
    let levels: Vec<f64> = (0..256).map(f64::from).collect();
    let mut table = [0u8; 256];
    for (t, s) in table.iter_mut().zip(src) {
        *t = interp(s, &refc, &levels).clamp(0.0, 255.0) as u8;
    }
    table
}

fn color_correct(i: &Inputs, ctx: &mut dyn Context) -> Out {
    let base = rgba(i, "base_image", ctx)?;
    let reference = rgba(i, "color_reference", ctx)?;
    let colorspace = i.str("colorspace")?;
    let (space, channels): (Space, &[usize]) = match colorspace {
        "RGB" => (Space::Rgba, &[0, 1, 2]),
        "YCbCr" => (Space::YCbCr, &[0, 1, 2]),
        "YCbCr-Chroma" => (Space::YCbCr, &[1, 2]),
        _ => (Space::YCbCr, &[0]),
    };
    let enc = |img: &RgbaImage| -> Vec<[u8; 4]> {
        img.pixels().map(|p| px::encode(space, p.0)).collect()
    };
    let mut work = enc(&base);
    let refs = enc(&reference);
    for &c in channels {
        let src: Vec<u8> = work.iter().map(|p| p[c]).collect();
        let rv: Vec<u8> = refs.iter().map(|p| p[c]).collect();
        let table = match_histogram(&src, &rv);
        for p in work.iter_mut() {
            p[c] = table[usize::from(p[c])];
        }
    }
    let mask = if has(i, "mask") {
        let m = gray(i, "mask", ctx)?;
        if m.dimensions() != base.dimensions() {
            return Err(NodeError::value("Mask size must match base image size."));
        }
        Some(m)
    } else {
        None
    };
    let (w, h) = base.dimensions();
    let mut out = RgbaImage::new(w, h);
    for ((o, b), p) in out.pixels_mut().zip(base.pixels()).zip(&work) {
        let [r, g, bl] = px::decode(space, *p);
        *o = Rgba([r, g, bl, b.0[3]]);
    }
    if let Some(m) = mask {
        // White keeps the original.
        for ((o, b), mv) in out.pixels_mut().zip(base.pixels()).zip(m.pixels()) {
            for c in 0..3 {
                o.0[c] = px::blend255(o.0[c], b.0[c], mv.0[0]);
            }
        }
    }
    save(i, out, ctx)
}

fn img_hue_adjust(i: &Inputs, ctx: &mut dyn Context) -> Out {
    let img = i.image("image", ctx)?.to_rgb8();
    let shift = (256 * i.int("hue")?.rem_euclid(360) / 360) as u16;
    // As in the reference, the result is opaque RGBA.
    let out = RgbaImage::from_fn(img.width(), img.height(), |x, y| {
        let [r, g, b] = img.get_pixel(x, y).0;
        let [h, s, v] = px::rgb_to_hsv(r, g, b);
        let h = ((u16::from(h) + shift) % 256) as u8;
        let [r, g, b] = px::hsv_to_rgb(h, s, v);
        Rgba([r, g, b, 255])
    });
    save(i, out, ctx)
}

/// Rewrites one channel of `channel`'s colour space with `f`, then returns to RGBA keeping the
/// original alpha unless the alpha channel itself was changed.
fn adjust_channel(
    img: &RgbaImage,
    channel: &str,
    f: impl Fn(u8) -> u8,
) -> Result<RgbaImage, NodeError> {
    let (space, index) = channel_space(channel)?;
    Ok(RgbaImage::from_fn(img.width(), img.height(), |x, y| {
        let p = img.get_pixel(x, y).0;
        let mut e = px::encode(space, p);
        if let Some(v) = e.get_mut(index) {
            *v = f(*v);
        }
        let [r, g, b] = px::decode(space, e);
        let a = if space == Space::Rgba { e[3] } else { p[3] };
        Rgba([r, g, b, a])
    }))
}

fn img_channel_offset(i: &Inputs, ctx: &mut dyn Context) -> Out {
    let img = rgba(i, "image", ctx)?;
    let channel = i.str("channel")?;
    let offset = i.int("offset")?;
    let hue = channel == "Hue (HSV)";
    let out = adjust_channel(&img, channel, |v| {
        let v = i64::from(v).saturating_add(offset);
        if hue {
            v.rem_euclid(256) as u8
        } else {
            v.clamp(0, 255) as u8
        }
    })?;
    save(i, out, ctx)
}

fn img_channel_multiply(i: &Inputs, ctx: &mut dyn Context) -> Out {
    let img = rgba(i, "image", ctx)?;
    let scale = i.float("scale")?;
    let inv = i.bool("invert_channel")?;
    let out = adjust_channel(&img, i.str("channel")?, |v| {
        let s = (f64::from(v) * scale).clamp(0.0, 255.0);
        (if inv { 255.0 - s } else { s }) as u8
    })?;
    save(i, out, ctx)
}

fn mask_from_id(i: &Inputs, ctx: &mut dyn Context) -> Out {
    let img = rgba(i, "image", ctx)?;
    let c = i.get("color");
    let channel = |k: &str| c.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let color = [channel("r"), channel("g"), channel("b"), channel("a")];
    let threshold = i.int("threshold")? as f64;
    let inv = i.bool("invert")?;
    let out = GrayImage::from_fn(img.width(), img.height(), |x, y| {
        let p = img.get_pixel(x, y).0;
        let d2: f64 = p
            .iter()
            .zip(color)
            .map(|(v, c)| (f64::from(*v) - c).powi(2))
            .sum();
        let hit = d2.sqrt() < threshold;
        Luma([if hit != inv { 255 } else { 0 }])
    });
    save(i, out, ctx)
}

fn apply_mask_to_image(i: &Inputs, ctx: &mut dyn Context) -> Out {
    let mut img = rgba(i, "image", ctx)?;
    let mut mask = gray(i, "mask", ctx)?;
    if i.bool("invert_mask")? {
        mask = invert(mask);
    }
    if mask.dimensions() != img.dimensions() {
        return Err(NodeError::value(format!(
            "The mask ({}x{}) must be the size of the image ({}x{})",
            mask.width(),
            mask.height(),
            img.width(),
            img.height()
        )));
    }
    for (p, m) in img.pixels_mut().zip(mask.pixels()) {
        p.0[3] = m.0[0];
    }
    save(i, img, ctx)
}

fn img_noise(i: &Inputs, ctx: &mut dyn Context) -> Out {
    let img = rgba(i, "image", ctx)?;
    let (w, h) = img.dimensions();
    let size = i.int("size")?;
    let amount = i.float("amount")?.clamp(0.0, 1.0);
    let color = i.bool("noise_color")?;
    let gaussian = i.str("noise_type")? == "gaussian";
    let seed = i.int("seed")?;
    let size = u32::try_from(size)
        .ok()
        .filter(|s| *s >= 1 && *s <= w.min(h))
        .ok_or_else(|| {
            NodeError::value(format!(
                "size must be between 1 and the image's shorter side ({})",
                w.min(h)
            ))
        })?;
    let (nw, nh) = (w / size, h / size);
    let mut rng = px::SplitMix(seed as u64);
    let mut sample = || -> u8 {
        if gaussian {
            // The reference casts the float noise to uint8, which wraps.
            ((rng.normal() * 255.0) as i64).rem_euclid(256) as u8
        } else if rng.unit() < amount {
            255
        } else {
            0
        }
    };
    let mut grid = Vec::with_capacity((nw * nh) as usize);
    for _ in 0..nw * nh {
        let v = sample();
        grid.push(if color {
            [v, sample(), sample()]
        } else {
            [v; 3]
        });
    }
    let mask = if has(i, "mask") {
        let m = gray(i, "mask", ctx)?;
        let m = if m.dimensions() != (w, h) {
            image::imageops::resize(&m, w, h, FilterType::Lanczos3)
        } else {
            m
        };
        Some(invert(m))
    } else {
        None
    };
    let out = RgbaImage::from_fn(w, h, |x, y| {
        let gx = ((2 * u64::from(x) + 1) * u64::from(nw) / (2 * u64::from(w))) as usize;
        let gy = ((2 * u64::from(y) + 1) * u64::from(nh) / (2 * u64::from(h))) as usize;
        let n = grid.get(gy * nw as usize + gx).copied().unwrap_or([0; 3]);
        let p = img.get_pixel(x, y).0;
        let mut o = p;
        for c in 0..3 {
            let a = f64::from(p[c]);
            let noisy = (a + amount * (f64::from(n[c]) - a)).clamp(0.0, 255.0) as u8;
            o[c] = match &mask {
                Some(m) => px::blend255(p[c], noisy, m.get_pixel(x, y).0[0]),
                None => noisy,
            };
        }
        Rgba(o)
    });
    save(i, out, ctx)
}

/// Pillow's `getbbox()`: the box of non-zero alpha, or of non-zero pixels without alpha.
fn content_box(img: &DynamicImage) -> Option<(u32, u32, u32, u32)> {
    let alpha = img.color().has_alpha();
    let rgba = img.to_rgba8();
    let mut found: Option<(u32, u32, u32, u32)> = None;
    for (x, y, p) in rgba.enumerate_pixels() {
        let on = if alpha {
            p.0[3] != 0
        } else {
            p.0[..3].iter().any(|v| *v != 0)
        };
        if on {
            found = Some(match found {
                None => (x, y, x + 1, y + 1),
                Some((a, b, c, d)) => (a.min(x), b.min(y), c.max(x + 1), d.max(y + 1)),
            });
        }
    }
    found
}

fn crop_to_bounding_box(i: &Inputs, ctx: &mut dyn Context) -> Out {
    let img = i.image("image", ctx)?;
    let (x0, y0, x1, y1) = if has(i, "bounding_box") {
        bounding_box(i.get("bounding_box"))?
    } else {
        match content_box(&img) {
            Some((a, b, c, d)) => (a.into(), b.into(), c.into(), d.into()),
            None => (0, 0, img.width().into(), img.height().into()),
        }
    };
    let w = dimension(x1.saturating_sub(x0), "The bounding box width")?;
    let h = dimension(y1.saturating_sub(y0), "The bounding box height")?;
    save(i, px::crop_dyn(&img, x0, y0, w, h), ctx)
}

fn paste_into_bounding_box(i: &Inputs, ctx: &mut dyn Context) -> Out {
    let src = rgba(i, "source_image", ctx)?;
    let mut target = rgba(i, "target_image", ctx)?;
    let (x0, y0, x1, y1) = bounding_box(i.get("bounding_box"))?;
    let (bw, bh) = (x1.saturating_sub(x0), y1.saturating_sub(y0));
    if (bw, bh) != (i64::from(src.width()), i64::from(src.height())) {
        return Err(NodeError::value(format!(
            "The source image ({}x{}) must be the size of the bounding box ({bw}x{bh})",
            src.width(),
            src.height(),
        )));
    }
    let (tw, th) = (i64::from(target.width()), i64::from(target.height()));
    for dy in y0.max(0)..y1.min(th) {
        for dx in x0.max(0)..x1.min(tw) {
            let s = src.get_pixel((dx - x0) as u32, (dy - y0) as u32).0;
            let t = target.get_pixel_mut(dx as u32, dy as u32);
            // Pillow's paste with the source as its own mask blends all four channels.
            for c in 0..4 {
                t.0[c] = px::blend255(t.0[c], s[c], s[3]);
            }
        }
    }
    save(i, target, ctx)
}

fn show_image(i: &Inputs, ctx: &mut dyn Context) -> Out {
    let name = i.image_name("image")?.to_owned();
    let img = ctx.load_image(&name)?;
    Ok(image_output(&ImageRef {
        image_name: name,
        width: img.width(),
        height: img.height(),
    }))
}

//! Runs the image nodes on small generated images and checks their pixels and save requests.

mod common;
use common::*;

use atelier_graph::NodeError;
use image::{DynamicImage, GrayImage, Luma, Rgb, RgbImage, Rgba, RgbaImage};
use serde_json::{json, Value};

fn result(session: &Value, source: &str) -> Value {
    let id = session["source_prepared_mapping"][source][0]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    session["results"][id].clone()
}

fn field(name: &str) -> Value {
    json!({"image_name": name})
}

fn put(ctx: &mut Memory, name: &str, img: impl Into<DynamicImage>) {
    ctx.images.insert(name.to_owned(), img.into());
}

/// Runs one node (`fields` plus type and id) and returns its output and stored image.
fn node(ctx: &mut Memory, ty: &str, fields: Value) -> Result<(Value, DynamicImage), NodeError> {
    let mut n = fields;
    n["id"] = json!("n");
    n["type"] = json!(ty);
    let session = run(json!({"nodes": {"n": n}, "edges": []}), ctx)?;
    let out = result(&session, "n");
    let name = out["image"]["image_name"].as_str().unwrap_or_default();
    let img = ctx
        .images
        .get(name)
        .cloned()
        .ok_or_else(|| NodeError::value("output image not stored"))?;
    Ok((out, img))
}

fn px(img: &DynamicImage, x: u32, y: u32) -> [u8; 4] {
    img.to_rgba8().get_pixel(x, y).0
}

fn gray_px(img: &DynamicImage, x: u32, y: u32) -> u8 {
    assert!(
        matches!(img, DynamicImage::ImageLuma8(_)),
        "expected a grayscale image, got {:?}",
        img.color()
    );
    img.to_luma8().get_pixel(x, y).0[0]
}

/// 4×4 RGBA where pixel (x, y) is (10x, 10y, 7, 255).
fn ramp() -> RgbaImage {
    RgbaImage::from_fn(4, 4, |x, y| Rgba([10 * x as u8, 10 * y as u8, 7, 255]))
}

#[test]
fn blank_image_fills_colour_and_mode() {
    let mut ctx = Memory::default();
    let (out, img) = node(
        &mut ctx,
        "blank_image",
        json!({"width": 3, "height": 2, "color": {"r": 1, "g": 2, "b": 3, "a": 4}}),
    )
    .unwrap();
    assert_eq!(
        (out["width"].clone(), out["height"].clone()),
        (json!(3), json!(2))
    );
    assert!(matches!(img, DynamicImage::ImageRgb8(_)));
    assert_eq!(px(&img, 2, 1), [1, 2, 3, 255]);
    let (_, img) = node(
        &mut ctx,
        "blank_image",
        json!({"width": 1, "height": 1, "mode": "RGBA", "color": {"r": 1, "g": 2, "b": 3, "a": 4}}),
    )
    .unwrap();
    assert_eq!(px(&img, 0, 0), [1, 2, 3, 4]);
    let err = node(&mut ctx, "blank_image", json!({"width": 20000})).unwrap_err();
    assert_eq!(err.error_type, "ValueError");
    assert!(node(&mut ctx, "blank_image", json!({"height": -3})).is_err());
}

#[test]
fn crop_copies_a_window_and_leaves_outside_transparent() {
    let mut ctx = Memory::default();
    put(&mut ctx, "a", ramp());
    let (out, img) = node(
        &mut ctx,
        "img_crop",
        json!({"image": field("a"), "x": 1, "y": 2, "width": 2, "height": 2}),
    )
    .unwrap();
    assert_eq!(out["width"], json!(2));
    assert_eq!(px(&img, 0, 0), [10, 20, 7, 255]);
    assert_eq!(px(&img, 1, 1), [20, 30, 7, 255]);
    let (_, img) = node(
        &mut ctx,
        "img_crop",
        json!({"image": field("a"), "x": -1, "y": 3, "width": 3, "height": 3}),
    )
    .unwrap();
    assert_eq!(px(&img, 0, 0), [0, 0, 0, 0]);
    assert_eq!(px(&img, 1, 0), [0, 30, 7, 255]);
    assert_eq!(px(&img, 1, 1), [0, 0, 0, 0]);
    // width must be > 0 (a validation error, not a panic).
    assert!(node(
        &mut ctx,
        "img_crop",
        json!({"image": field("a"), "width": 0})
    )
    .is_err());
}

#[test]
fn pad_crop_grows_and_shrinks_sides() {
    let mut ctx = Memory::default();
    put(&mut ctx, "a", ramp());
    let (_, img) = node(
        &mut ctx,
        "img_pad_crop",
        json!({"image": field("a"), "left": 1, "top": 2, "right": -2, "bottom": 0}),
    )
    .unwrap();
    assert_eq!((img.width(), img.height()), (3, 6));
    assert_eq!(px(&img, 0, 0), [0, 0, 0, 0]);
    assert_eq!(px(&img, 1, 2), [0, 0, 7, 255]);
    assert_eq!(px(&img, 2, 5), [10, 30, 7, 255]);
    assert!(node(
        &mut ctx,
        "img_pad_crop",
        json!({"image": field("a"), "left": -4})
    )
    .is_err());
}

#[test]
fn paste_places_image_grows_canvas_and_honours_mask() {
    let mut ctx = Memory::default();
    put(
        &mut ctx,
        "base",
        RgbImage::from_pixel(4, 4, Rgb([255, 0, 0])),
    );
    put(
        &mut ctx,
        "top",
        RgbImage::from_pixel(2, 2, Rgb([0, 0, 255])),
    );
    let (_, img) = node(
        &mut ctx,
        "img_paste",
        json!({"base_image": field("base"), "image": field("top"), "x": 1, "y": 2}),
    )
    .unwrap();
    assert_eq!((img.width(), img.height()), (4, 4));
    assert_eq!(px(&img, 0, 0), [255, 0, 0, 255]);
    assert_eq!(px(&img, 1, 2), [0, 0, 255, 255]);
    assert_eq!(px(&img, 2, 3), [0, 0, 255, 255]);
    assert_eq!(px(&img, 3, 3), [255, 0, 0, 255]);

    // Off the top-left corner: the canvas grows, the base moves.
    let (_, img) = node(
        &mut ctx,
        "img_paste",
        json!({"base_image": field("base"), "image": field("top"), "x": -1, "y": -1}),
    )
    .unwrap();
    assert_eq!((img.width(), img.height()), (5, 5));
    assert_eq!(px(&img, 0, 0), [0, 0, 255, 255]);
    assert_eq!(px(&img, 4, 0), [0, 0, 0, 0]);
    assert_eq!(px(&img, 4, 1), [255, 0, 0, 255]);
    assert_eq!(px(&img, 4, 4), [255, 0, 0, 255]);
    assert_eq!(px(&img, 0, 4), [0, 0, 0, 0]);
    let (_, img) = node(
        &mut ctx,
        "img_paste",
        json!({"base_image": field("base"), "image": field("top"), "x": -1, "y": -1, "crop": true}),
    )
    .unwrap();
    assert_eq!((img.width(), img.height()), (4, 4));
    assert_eq!(px(&img, 0, 0), [0, 0, 255, 255]);
    assert_eq!(px(&img, 1, 1), [255, 0, 0, 255]);

    // Mask: black pastes, white keeps the base.
    put(
        &mut ctx,
        "mask",
        GrayImage::from_fn(2, 2, |x, _| Luma([if x == 0 { 0 } else { 255 }])),
    );
    let (_, img) = node(
        &mut ctx,
        "img_paste",
        json!({"base_image": field("base"), "image": field("top"), "mask": field("mask")}),
    )
    .unwrap();
    assert_eq!(px(&img, 0, 0), [0, 0, 255, 255]);
    assert_eq!(px(&img, 1, 0), [255, 0, 0, 255]);
    put(&mut ctx, "bigmask", GrayImage::new(3, 3));
    let err = node(
        &mut ctx,
        "img_paste",
        json!({"base_image": field("base"), "image": field("top"), "mask": field("bigmask")}),
    )
    .unwrap_err();
    assert_eq!(err.error_type, "ValueError");
}

#[test]
fn paste_composites_translucent_pixels() {
    let mut ctx = Memory::default();
    put(
        &mut ctx,
        "base",
        RgbaImage::from_pixel(1, 1, Rgba([0, 0, 0, 255])),
    );
    put(
        &mut ctx,
        "top",
        RgbaImage::from_pixel(1, 1, Rgba([255, 255, 255, 128])),
    );
    let (_, img) = node(
        &mut ctx,
        "img_paste",
        json!({"base_image": field("base"), "image": field("top")}),
    )
    .unwrap();
    // Pillow's alpha_composite gives 128 here.
    assert_eq!(px(&img, 0, 0), [128, 128, 128, 255]);
}

#[test]
fn tomask_takes_alpha_and_inverts() {
    let mut ctx = Memory::default();
    put(
        &mut ctx,
        "a",
        RgbaImage::from_pixel(2, 2, Rgba([1, 2, 3, 100])),
    );
    let (_, img) = node(&mut ctx, "tomask", json!({"image": field("a")})).unwrap();
    assert_eq!(gray_px(&img, 1, 1), 100);
    let (_, img) = node(
        &mut ctx,
        "tomask",
        json!({"image": field("a"), "invert": true}),
    )
    .unwrap();
    assert_eq!(gray_px(&img, 0, 0), 155);
}

#[test]
fn multiply_images() {
    let mut ctx = Memory::default();
    put(
        &mut ctx,
        "a",
        RgbImage::from_pixel(3, 2, Rgb([200, 255, 0])),
    );
    put(
        &mut ctx,
        "b",
        RgbImage::from_pixel(2, 3, Rgb([100, 255, 9])),
    );
    let (_, img) = node(
        &mut ctx,
        "img_mul",
        json!({"image1": field("a"), "image2": field("b")}),
    )
    .unwrap();
    assert_eq!((img.width(), img.height()), (2, 2));
    assert_eq!(px(&img, 1, 1), [78, 255, 0, 255]);
}

#[test]
fn channel_extraction() {
    let mut ctx = Memory::default();
    put(
        &mut ctx,
        "a",
        RgbaImage::from_pixel(2, 1, Rgba([10, 20, 30, 40])),
    );
    for (ch, v) in [("R", 10), ("G", 20), ("B", 30), ("A", 40)] {
        let (_, img) = node(
            &mut ctx,
            "img_chan",
            json!({"image": field("a"), "channel": ch}),
        )
        .unwrap();
        assert_eq!(gray_px(&img, 1, 0), v, "channel {ch}");
    }
    put(&mut ctx, "rgb", RgbImage::from_pixel(1, 1, Rgb([1, 2, 3])));
    let (_, img) = node(&mut ctx, "img_chan", json!({"image": field("rgb")})).unwrap();
    assert_eq!(gray_px(&img, 0, 0), 255);
}

#[test]
fn convert_modes() {
    let mut ctx = Memory::default();
    put(
        &mut ctx,
        "a",
        RgbaImage::from_fn(3, 1, |x, _| match x {
            0 => Rgba([255, 0, 0, 255]),
            1 => Rgba([0, 255, 0, 100]),
            _ => Rgba([10, 200, 30, 255]),
        }),
    );
    let (_, img) = node(&mut ctx, "img_conv", json!({"image": field("a")})).unwrap();
    // PIL: L = R*299/1000 + G*587/1000 + B*114/1000.
    assert_eq!(gray_px(&img, 0, 0), 76);
    assert_eq!(gray_px(&img, 1, 0), 150);
    assert_eq!(gray_px(&img, 2, 0), 124);
    let (_, img) = node(
        &mut ctx,
        "img_conv",
        json!({"image": field("a"), "mode": "RGB"}),
    )
    .unwrap();
    assert!(matches!(img, DynamicImage::ImageRgb8(_)));
    assert_eq!(px(&img, 1, 0), [0, 255, 0, 255]);
    let (_, img) = node(
        &mut ctx,
        "img_conv",
        json!({"image": field("a"), "mode": "RGBA"}),
    )
    .unwrap();
    assert_eq!(px(&img, 1, 0), [0, 255, 0, 100]);
    for mode in ["CMYK", "HSV", "YCbCr", "LAB"] {
        let (_, img) = node(
            &mut ctx,
            "img_conv",
            json!({"image": field("a"), "mode": mode}),
        )
        .unwrap();
        let p = px(&img, 0, 0);
        assert!(p[0] >= 250 && p[1] <= 5 && p[2] <= 5, "{mode}: {p:?}");
        let p = px(&img, 2, 0);
        assert!(
            p[0].abs_diff(10) <= 3 && p[1].abs_diff(200) <= 3 && p[2].abs_diff(30) <= 3,
            "{mode}: {p:?}"
        );
    }
    let (_, img) = node(
        &mut ctx,
        "img_conv",
        json!({"image": field("a"), "mode": "F"}),
    )
    .unwrap();
    assert_eq!(gray_px(&img, 2, 0), 124);
    assert!(node(
        &mut ctx,
        "img_conv",
        json!({"image": field("a"), "mode": "P"})
    )
    .is_err());
}

fn dot(size: u32) -> RgbaImage {
    let c = size / 2;
    RgbaImage::from_fn(size, size, |x, y| {
        if (x, y) == (c, c) {
            Rgba([255, 255, 255, 255])
        } else {
            Rgba([0, 0, 0, 255])
        }
    })
}

#[test]
fn blur_spreads_a_white_pixel() {
    let mut ctx = Memory::default();
    put(&mut ctx, "dot", dot(9));
    let (_, img) = node(
        &mut ctx,
        "img_blur",
        json!({"image": field("dot"), "radius": 1.0, "blur_type": "box"}),
    )
    .unwrap();
    // A 3×3 box: 255 / 9.
    assert_eq!(px(&img, 4, 4)[0], 28);
    assert_eq!(px(&img, 3, 3)[0], 28);
    assert_eq!(px(&img, 2, 4)[0], 0);
    let (_, img) = node(
        &mut ctx,
        "img_blur",
        json!({"image": field("dot"), "radius": 1.0}),
    )
    .unwrap();
    let (c, n, far) = (px(&img, 4, 4)[0], px(&img, 5, 4)[0], px(&img, 0, 0)[0]);
    assert!(c < 255 && n > 0 && n < c && far == 0, "{c} {n} {far}");
    let (_, img) = node(
        &mut ctx,
        "img_blur",
        json!({"image": field("dot"), "radius": 0}),
    )
    .unwrap();
    // The reference divides by alpha + 1e-6 and truncates, so white comes back as 254.
    assert_eq!(px(&img, 4, 4), [254, 254, 254, 255]);
    assert_eq!(px(&img, 3, 4), [0, 0, 0, 255]);
    // A huge radius averages without hanging.
    let (_, img) = node(
        &mut ctx,
        "img_blur",
        json!({"image": field("dot"), "radius": 1e12}),
    )
    .unwrap();
    assert_eq!(px(&img, 0, 0)[3], 255);
    assert!(node(
        &mut ctx,
        "img_blur",
        json!({"image": field("dot"), "radius": -1})
    )
    .is_err());
}

#[test]
fn blur_does_not_darken_next_to_transparency() {
    let mut ctx = Memory::default();
    put(
        &mut ctx,
        "half",
        RgbaImage::from_fn(8, 1, |x, _| {
            if x < 4 {
                Rgba([255, 0, 0, 255])
            } else {
                Rgba([0, 0, 0, 0])
            }
        }),
    );
    let (_, img) = node(
        &mut ctx,
        "img_blur",
        json!({"image": field("half"), "radius": 1.0, "blur_type": "box"}),
    )
    .unwrap();
    let p = px(&img, 4, 0);
    assert_eq!(p[3], 85);
    assert!(p[0] >= 254 && p[1] == 0, "{p:?}");
}

#[test]
fn unsharp_mask_raises_edge_contrast() {
    let mut ctx = Memory::default();
    put(
        &mut ctx,
        "step",
        RgbImage::from_fn(
            10,
            3,
            |x, _| if x < 5 { Rgb([100; 3]) } else { Rgb([150; 3]) },
        ),
    );
    let (_, img) = node(
        &mut ctx,
        "unsharp_mask",
        json!({"image": field("step"), "radius": 1, "strength": 100}),
    )
    .unwrap();
    assert!(matches!(img, DynamicImage::ImageRgb8(_)));
    assert!(px(&img, 5, 1)[0] > 150, "{:?}", px(&img, 5, 1));
    assert!(px(&img, 4, 1)[0] < 100, "{:?}", px(&img, 4, 1));
    assert_eq!(px(&img, 0, 1)[0], 100);
    put(
        &mut ctx,
        "t",
        RgbaImage::from_pixel(4, 4, Rgba([9, 9, 9, 77])),
    );
    let (_, img) = node(&mut ctx, "unsharp_mask", json!({"image": field("t")})).unwrap();
    assert_eq!(px(&img, 2, 2), [9, 9, 9, 77]);
}

#[test]
fn resize_and_scale() {
    let mut ctx = Memory::default();
    put(&mut ctx, "a", ramp());
    let (out, img) = node(
        &mut ctx,
        "img_resize",
        json!({"image": field("a"), "width": 8, "height": 2, "resample_mode": "nearest"}),
    )
    .unwrap();
    assert_eq!(
        (out["width"].clone(), out["height"].clone()),
        (json!(8), json!(2))
    );
    assert_eq!(px(&img, 7, 1)[0], 30);
    let (_, img) = node(
        &mut ctx,
        "img_scale",
        json!({"image": field("a"), "scale_factor": 1.5}),
    )
    .unwrap();
    assert_eq!((img.width(), img.height()), (6, 6));
    let (_, img) = node(
        &mut ctx,
        "img_scale",
        json!({"image": field("a"), "scale_factor": 0.5, "resample_mode": "lanczos"}),
    )
    .unwrap();
    assert_eq!((img.width(), img.height()), (2, 2));
    let err = node(
        &mut ctx,
        "img_scale",
        json!({"image": field("a"), "scale_factor": 0.1}),
    )
    .unwrap_err();
    assert_eq!(err.error_type, "ValueError");
    assert!(node(
        &mut ctx,
        "img_scale",
        json!({"image": field("a"), "scale_factor": 1e9})
    )
    .is_err());
}

#[test]
fn lerp_and_inverse_lerp() {
    let mut ctx = Memory::default();
    put(
        &mut ctx,
        "a",
        RgbImage::from_fn(3, 1, |x, _| Rgb([[0, 128, 255][x as usize]; 3])),
    );
    let (_, img) = node(
        &mut ctx,
        "img_lerp",
        json!({"image": field("a"), "min": 100, "max": 200}),
    )
    .unwrap();
    assert!(matches!(img, DynamicImage::ImageRgb8(_)));
    assert_eq!(
        [px(&img, 0, 0)[0], px(&img, 1, 0)[0], px(&img, 2, 0)[0]],
        [100, 150, 200]
    );
    put(
        &mut ctx,
        "b",
        RgbImage::from_fn(3, 1, |x, _| Rgb([[50, 150, 250][x as usize]; 3])),
    );
    let (_, img) = node(
        &mut ctx,
        "img_ilerp",
        json!({"image": field("b"), "min": 100, "max": 200}),
    )
    .unwrap();
    assert_eq!(
        [px(&img, 0, 0)[0], px(&img, 1, 0)[0], px(&img, 2, 0)[0]],
        [0, 127, 255]
    );
    let (_, img) = node(
        &mut ctx,
        "img_ilerp",
        json!({"image": field("b"), "min": 150, "max": 150}),
    )
    .unwrap();
    assert_eq!(
        [px(&img, 0, 0)[0], px(&img, 1, 0)[0], px(&img, 2, 0)[0]],
        [0, 0, 255]
    );
    assert!(node(
        &mut ctx,
        "img_lerp",
        json!({"image": field("a"), "max": 256})
    )
    .is_err());
}

#[test]
fn channel_offset_and_multiply() {
    let mut ctx = Memory::default();
    put(
        &mut ctx,
        "a",
        RgbaImage::from_pixel(1, 1, Rgba([100, 200, 250, 60])),
    );
    let run = |ctx: &mut Memory, ty: &str, extra: Value| {
        let mut f = extra;
        f["image"] = field("a");
        px(&node(ctx, ty, f).unwrap().1, 0, 0)
    };
    assert_eq!(
        run(
            &mut ctx,
            "img_channel_offset",
            json!({"channel": "Red (RGBA)", "offset": 50})
        ),
        [150, 200, 250, 60]
    );
    assert_eq!(
        run(
            &mut ctx,
            "img_channel_offset",
            json!({"channel": "Blue (RGBA)", "offset": 50})
        ),
        [100, 200, 255, 60]
    );
    assert_eq!(
        run(
            &mut ctx,
            "img_channel_offset",
            json!({"channel": "Alpha (RGBA)", "offset": -10})
        ),
        [100, 200, 250, 50]
    );
    // CMYK cyan is 255 - red: +55 cyan takes red from 100 to 45.
    assert_eq!(
        run(
            &mut ctx,
            "img_channel_offset",
            json!({"channel": "Cyan (CMYK)", "offset": 55})
        ),
        [45, 200, 250, 60]
    );
    assert_eq!(
        run(
            &mut ctx,
            "img_channel_multiply",
            json!({"channel": "Green (RGBA)", "scale": 0.5})
        ),
        [100, 100, 250, 60]
    );
    assert_eq!(
        run(
            &mut ctx,
            "img_channel_multiply",
            json!({"channel": "Green (RGBA)", "scale": 0.5, "invert_channel": true})
        ),
        [100, 155, 250, 60]
    );
    // Value (HSV) scaled to 0 is black; alpha kept.
    assert_eq!(
        run(
            &mut ctx,
            "img_channel_multiply",
            json!({"channel": "Value (HSV)", "scale": 0})
        ),
        [0, 0, 0, 60]
    );
    // channel is required.
    assert!(node(&mut ctx, "img_channel_offset", json!({"image": field("a")})).is_err());
}

#[test]
fn hue_adjust_rotates_red_to_green() {
    let mut ctx = Memory::default();
    put(
        &mut ctx,
        "a",
        RgbaImage::from_pixel(1, 1, Rgba([255, 0, 0, 10])),
    );
    let (_, img) = node(
        &mut ctx,
        "img_hue_adjust",
        json!({"image": field("a"), "hue": 120}),
    )
    .unwrap();
    assert_eq!(px(&img, 0, 0), [0, 255, 0, 255]);
    let (_, img) = node(
        &mut ctx,
        "img_hue_adjust",
        json!({"image": field("a"), "hue": -240}),
    )
    .unwrap();
    assert_eq!(px(&img, 0, 0), [0, 255, 0, 255]);
    let (_, img) = node(
        &mut ctx,
        "img_hue_adjust",
        json!({"image": field("a"), "hue": 360}),
    )
    .unwrap();
    assert_eq!(px(&img, 0, 0), [255, 0, 0, 255]);
}

#[test]
fn noise_is_seeded_masked_and_keeps_alpha() {
    let mut ctx = Memory::default();
    put(
        &mut ctx,
        "a",
        RgbaImage::from_pixel(16, 16, Rgba([128, 128, 128, 200])),
    );
    let noisy = |ctx: &mut Memory, extra: Value| {
        let mut f = extra;
        f["image"] = field("a");
        node(ctx, "img_noise", f).unwrap().1.to_rgba8()
    };
    let one = noisy(&mut ctx, json!({"seed": 1, "amount": 0.5}));
    let again = noisy(&mut ctx, json!({"seed": 1, "amount": 0.5}));
    let other = noisy(&mut ctx, json!({"seed": 2, "amount": 0.5}));
    assert_eq!(one, again);
    assert_ne!(one, other);
    assert!(one.pixels().all(|p| p.0[3] == 200));
    assert!(one.pixels().any(|p| p.0[0] != 128));
    let none = noisy(&mut ctx, json!({"seed": 1, "amount": 0}));
    assert!(none.pixels().all(|p| p.0 == [128, 128, 128, 200]));
    // Salt and pepper at full amount: every channel is 0 or 255.
    let sp = noisy(
        &mut ctx,
        json!({"noise_type": "salt_and_pepper", "amount": 1.0, "noise_color": false}),
    );
    assert!(sp
        .pixels()
        .all(|p| (p.0[0] == 0 || p.0[0] == 255) && p.0[0] == p.0[1]));
    assert!(sp.pixels().any(|p| p.0[0] == 255));
    // Size 4: blocks of 4×4 share one value.
    let big = noisy(&mut ctx, json!({"amount": 1.0, "size": 4}));
    assert_eq!(big.get_pixel(0, 0), big.get_pixel(3, 3));
    // White mask: no noise.
    put(
        &mut ctx,
        "white",
        GrayImage::from_pixel(16, 16, Luma([255])),
    );
    let masked = noisy(&mut ctx, json!({"amount": 1.0, "mask": field("white")}));
    assert!(masked.pixels().all(|p| p.0 == [128, 128, 128, 200]));
    let err = node(
        &mut ctx,
        "img_noise",
        json!({"image": field("a"), "size": 17}),
    )
    .unwrap_err();
    assert_eq!(err.error_type, "ValueError");
}

#[test]
fn crop_and_paste_with_bounding_boxes() {
    let mut ctx = Memory::default();
    put(&mut ctx, "a", ramp());
    let (_, img) = node(
        &mut ctx,
        "crop_image_to_bounding_box",
        json!({"image": field("a"), "bounding_box": {"x_min": 1, "y_min": 1, "x_max": 3, "y_max": 4}}),
    )
    .unwrap();
    assert_eq!((img.width(), img.height()), (2, 3));
    assert_eq!(px(&img, 1, 2), [20, 30, 7, 255]);
    // Without a box: the non-transparent pixels.
    put(
        &mut ctx,
        "sprite",
        RgbaImage::from_fn(6, 6, |x, y| {
            if (2..4).contains(&x) && y == 3 {
                Rgba([9, 9, 9, 255])
            } else {
                Rgba([0, 0, 0, 0])
            }
        }),
    );
    let (_, img) = node(
        &mut ctx,
        "crop_image_to_bounding_box",
        json!({"image": field("sprite")}),
    )
    .unwrap();
    assert_eq!((img.width(), img.height()), (2, 1));
    let err = node(
        &mut ctx,
        "crop_image_to_bounding_box",
        json!({"image": field("a"), "bounding_box": {"x_min": 3, "y_min": 0, "x_max": 1, "y_max": 2}}),
    )
    .unwrap_err();
    assert!(err.message.contains("x_min (3) is greater than x_max (1)"));

    put(
        &mut ctx,
        "patch",
        RgbaImage::from_fn(2, 2, |x, _| Rgba([1, 2, 3, if x == 0 { 255 } else { 0 }])),
    );
    let (_, img) = node(
        &mut ctx,
        "paste_image_into_bounding_box",
        json!({"source_image": field("patch"), "target_image": field("a"),
               "bounding_box": {"x_min": 2, "y_min": 2, "x_max": 4, "y_max": 4}}),
    )
    .unwrap();
    assert_eq!((img.width(), img.height()), (4, 4));
    assert_eq!(px(&img, 2, 2), [1, 2, 3, 255]);
    assert_eq!(px(&img, 3, 3), [30, 30, 7, 255]);
    assert_eq!(px(&img, 1, 1), [10, 10, 7, 255]);
    let err = node(
        &mut ctx,
        "paste_image_into_bounding_box",
        json!({"source_image": field("patch"), "target_image": field("a"),
               "bounding_box": {"x_min": 0, "y_min": 0, "x_max": 3, "y_max": 3}}),
    )
    .unwrap_err();
    assert_eq!(err.error_type, "ValueError");
}

#[test]
fn mask_nodes() {
    let mut ctx = Memory::default();
    put(&mut ctx, "m1", GrayImage::from_pixel(2, 2, Luma([200])));
    put(
        &mut ctx,
        "m2",
        RgbImage::from_pixel(2, 2, Rgb([100, 100, 100])),
    );
    let (_, img) = node(
        &mut ctx,
        "mask_combine",
        json!({"mask1": field("m1"), "mask2": field("m2")}),
    )
    .unwrap();
    assert_eq!(gray_px(&img, 1, 1), 78);

    put(
        &mut ctx,
        "ids",
        RgbaImage::from_fn(2, 1, |x, _| {
            if x == 0 {
                Rgba([250, 0, 0, 255])
            } else {
                Rgba([0, 0, 250, 255])
            }
        }),
    );
    let (_, img) = node(
        &mut ctx,
        "mask_from_id",
        json!({"image": field("ids"), "color": {"r": 255, "g": 0, "b": 0, "a": 255}}),
    )
    .unwrap();
    assert_eq!((gray_px(&img, 0, 0), gray_px(&img, 1, 0)), (255, 0));
    let (_, img) = node(
        &mut ctx,
        "mask_from_id",
        json!({"image": field("ids"), "color": {"r": 255, "g": 0, "b": 0, "a": 255}, "invert": true}),
    )
    .unwrap();
    assert_eq!((gray_px(&img, 0, 0), gray_px(&img, 1, 0)), (0, 255));

    // The mask must be the image's size.
    let err = node(
        &mut ctx,
        "apply_mask_to_image",
        json!({"image": field("ids"), "mask": field("m1"), "invert_mask": true}),
    )
    .unwrap_err();
    assert_eq!(err.error_type, "ValueError");
    put(
        &mut ctx,
        "m3",
        GrayImage::from_fn(2, 1, |x, _| Luma([if x == 0 { 30 } else { 255 }])),
    );
    let (_, img) = node(
        &mut ctx,
        "apply_mask_to_image",
        json!({"image": field("ids"), "mask": field("m3")}),
    )
    .unwrap();
    assert_eq!(px(&img, 0, 0), [250, 0, 0, 30]);
    let (_, img) = node(
        &mut ctx,
        "apply_mask_to_image",
        json!({"image": field("ids"), "mask": field("m3"), "invert_mask": true}),
    )
    .unwrap();
    assert_eq!(px(&img, 1, 0), [0, 0, 250, 0]);
}

#[test]
fn color_correct_matches_histograms() {
    let mut ctx = Memory::default();
    let two = |lo: u8, hi: u8| {
        RgbaImage::from_fn(2, 1, move |x, _| {
            Rgba([if x == 0 { lo } else { hi }, 0, 0, 77])
        })
    };
    put(&mut ctx, "base", two(50, 100));
    put(&mut ctx, "ref", two(150, 200));
    let (_, img) = node(
        &mut ctx,
        "color_correct",
        json!({"base_image": field("base"), "color_reference": field("ref")}),
    )
    .unwrap();
    // numpy.interp over the CDFs: 50 -> 199, 100 -> 255 (the last CDF step); alpha kept.
    assert_eq!(px(&img, 0, 0), [199, 255, 255, 77]);
    assert_eq!(px(&img, 1, 0)[0], 255);
    put(&mut ctx, "keep", GrayImage::from_pixel(2, 1, Luma([255])));
    let (_, img) = node(
        &mut ctx,
        "color_correct",
        json!({"base_image": field("base"), "color_reference": field("ref"), "mask": field("keep")}),
    )
    .unwrap();
    assert_eq!(px(&img, 0, 0), [50, 0, 0, 77]);
    let (_, img) = node(
        &mut ctx,
        "color_correct",
        json!({"base_image": field("base"), "color_reference": field("ref"), "colorspace": "YCbCr-Luma"}),
    )
    .unwrap();
    assert!(px(&img, 0, 0)[0] > 50);
}

#[test]
fn show_image_passes_through_without_saving() {
    let mut ctx = Memory::default();
    put(&mut ctx, "a", ramp());
    let session = run(
        json!({"nodes": {"s": {"id": "s", "type": "show_image", "image": field("a")}}, "edges": []}),
        &mut ctx,
    )
    .unwrap();
    let out = result(&session, "s");
    assert_eq!(out["image"], field("a"));
    assert_eq!(out["width"], json!(4));
    assert!(ctx.saved.is_empty());
}

#[test]
fn every_image_node_saves_with_board_metadata_and_intermediate_flag() {
    let cases: Vec<(&str, Value)> = vec![
        ("blank_image", json!({"width": 2, "height": 2})),
        (
            "img_crop",
            json!({"image": field("a"), "width": 2, "height": 2}),
        ),
        (
            "img_paste",
            json!({"base_image": field("a"), "image": field("a")}),
        ),
        ("tomask", json!({"image": field("a")})),
        (
            "img_mul",
            json!({"image1": field("a"), "image2": field("a")}),
        ),
        ("img_chan", json!({"image": field("a")})),
        ("img_conv", json!({"image": field("a")})),
        ("img_blur", json!({"image": field("a")})),
        ("unsharp_mask", json!({"image": field("a")})),
        (
            "img_resize",
            json!({"image": field("a"), "width": 2, "height": 2}),
        ),
        ("img_scale", json!({"image": field("a")})),
        ("img_lerp", json!({"image": field("a")})),
        ("img_ilerp", json!({"image": field("a")})),
        (
            "mask_combine",
            json!({"mask1": field("a"), "mask2": field("a")}),
        ),
        (
            "color_correct",
            json!({"base_image": field("a"), "color_reference": field("a")}),
        ),
        ("img_hue_adjust", json!({"image": field("a")})),
        (
            "img_channel_offset",
            json!({"image": field("a"), "channel": "Hue (HSV)"}),
        ),
        (
            "img_channel_multiply",
            json!({"image": field("a"), "channel": "B (LAB)"}),
        ),
        (
            "mask_from_id",
            json!({"image": field("a"), "color": {"r": 0, "g": 0, "b": 0, "a": 0}}),
        ),
        (
            "apply_mask_to_image",
            json!({"image": field("a"), "mask": field("a")}),
        ),
        ("img_noise", json!({"image": field("a")})),
        ("crop_image_to_bounding_box", json!({"image": field("a")})),
        (
            "paste_image_into_bounding_box",
            json!({"source_image": field("a"), "target_image": field("a"),
                   "bounding_box": {"x_min": 0, "y_min": 0, "x_max": 4, "y_max": 4}}),
        ),
        ("save_image", json!({"image": field("a")})),
    ];
    for (ty, fields) in cases {
        let mut ctx = Memory::default();
        put(&mut ctx, "a", ramp());
        let mut n = fields;
        n["id"] = json!("n");
        n["type"] = json!(ty);
        n["board"] = json!({"board_id": "b1"});
        n["is_intermediate"] = json!(true);
        let graph = json!({"nodes": {
            "meta": {"id": "meta", "type": "core_metadata", "seed": 5},
            "n": n,
        }, "edges": [edge("meta", "metadata", "n", "metadata")]});
        let session = run(graph, &mut ctx).unwrap_or_else(|e| panic!("{ty}: {e}"));
        let out = result(&session, "n");
        assert_eq!(out["type"], json!("image_output"), "{ty}");
        assert_eq!(ctx.saved.len(), 1, "{ty}");
        let saved = &ctx.saved[0];
        assert_eq!(saved.board_id.as_deref(), Some("b1"), "{ty}");
        assert!(saved.is_intermediate, "{ty}");
        let meta = saved.metadata.clone().unwrap_or_default();
        assert_eq!(meta["seed"], json!(5), "{ty}");
        let name = out["image"]["image_name"].as_str().unwrap_or_default();
        let img = &ctx.images[name];
        assert_eq!(out["width"], json!(img.width()), "{ty}");
        assert_eq!(out["height"], json!(img.height()), "{ty}");
    }
}

#[test]
fn pad_crop_has_no_board_and_saves_plainly() {
    let mut ctx = Memory::default();
    put(&mut ctx, "a", ramp());
    node(
        &mut ctx,
        "img_pad_crop",
        json!({"image": field("a"), "left": 1}),
    )
    .unwrap();
    assert_eq!(ctx.saved[0].board_id, None);
    assert!(!ctx.saved[0].is_intermediate);
    let bad = json!({"nodes": {"n": {"id": "n", "type": "img_pad_crop", "image": field("a"), "board": {"board_id": "x"}}}, "edges": []});
    // The reference has no board field on this node: the value is dropped or refused, never used.
    if run(bad, &mut ctx).is_ok() {
        assert_eq!(ctx.saved.last().and_then(|s| s.board_id.clone()), None);
    }
}

#[test]
fn extreme_coordinates_fail_cleanly() {
    let mut ctx = Memory::default();
    put(&mut ctx, "a", ramp());
    let (min, max) = (i64::MIN, i64::MAX);
    // Far-away crops are empty (transparent), not a panic.
    let (_, img) = node(
        &mut ctx,
        "img_crop",
        json!({"image": field("a"), "x": min, "y": max, "width": 2, "height": 2}),
    )
    .unwrap();
    assert_eq!(px(&img, 0, 0), [0, 0, 0, 0]);
    for fields in [
        json!({"base_image": field("a"), "image": field("a"), "x": min, "y": 0}),
        json!({"base_image": field("a"), "image": field("a"), "x": max, "y": max}),
    ] {
        let err = node(&mut ctx, "img_paste", fields).unwrap_err();
        assert_eq!(err.error_type, "ValueError");
    }
    let err = node(
        &mut ctx,
        "img_pad_crop",
        json!({"image": field("a"), "left": max, "right": max}),
    )
    .unwrap_err();
    assert_eq!(err.error_type, "ValueError");
    let err = node(
        &mut ctx,
        "crop_image_to_bounding_box",
        json!({"image": field("a"), "bounding_box": {"x_min": min, "y_min": 0, "x_max": max, "y_max": 1}}),
    )
    .unwrap_err();
    assert_eq!(err.error_type, "ValueError");
    let err = node(
        &mut ctx,
        "paste_image_into_bounding_box",
        json!({"source_image": field("a"), "target_image": field("a"),
               "bounding_box": {"x_min": min, "y_min": min, "x_max": max, "y_max": max}}),
    )
    .unwrap_err();
    assert_eq!(err.error_type, "ValueError");
    // A box off the target pastes nothing.
    let (_, img) = node(
        &mut ctx,
        "paste_image_into_bounding_box",
        json!({"source_image": field("a"), "target_image": field("a"),
               "bounding_box": {"x_min": 100, "y_min": -100, "x_max": 104, "y_max": -96}}),
    )
    .unwrap();
    assert_eq!(img.to_rgba8(), ramp());
    let err = node(
        &mut ctx,
        "crop_image_to_bounding_box",
        json!({"image": field("a"), "bounding_box": {"x_min": 0, "y_min": 0}}),
    )
    .unwrap_err();
    assert_eq!(err.error_type, "ValueError");
}

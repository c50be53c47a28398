//! Pixel arithmetic behind the image nodes. Integer steps follow Pillow's C code (luma,
//! CMYK, HSV, compositing, masked paste) so results match the reference byte for byte where
//! the reference is integer maths; blurs run in floating point without Pillow's per-pass
//! 8-bit rounding; LAB and YCbCr use the textbook formulas (see the module note in
//! `image.rs`).

use image::{DynamicImage, GrayImage, ImageBuffer, Luma, Pixel, Rgb, RgbImage, Rgba, RgbaImage};

/// Pillow's `L` conversion (ITU-R 601-2 luma, fixed point with rounding).
pub fn luma_of(r: u8, g: u8, b: u8) -> u8 {
    ((u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000) >> 16) as u8
}

/// `image.convert("L")`: alpha is ignored.
pub fn to_l(img: &DynamicImage) -> GrayImage {
    if let DynamicImage::ImageLuma8(g) = img {
        return g.clone();
    }
    let rgb = img.to_rgb8();
    GrayImage::from_fn(rgb.width(), rgb.height(), |x, y| {
        let [r, g, b] = rgb.get_pixel(x, y).0;
        Luma([luma_of(r, g, b)])
    })
}

/// Pillow's rounded division by 255 of a product (`MULDIV255`).
pub fn muldiv255(a: u32, b: u32) -> u32 {
    let t = a * b + 128;
    ((t >> 8) + t) >> 8
}

/// Pillow's rounded blend `(a * (255 - m) + b * m) / 255` (`BLEND`).
pub fn blend255(a: u8, b: u8, m: u8) -> u8 {
    let t = u32::from(a) * (255 - u32::from(m)) + u32::from(b) * u32::from(m) + 128;
    (((t >> 8) + t) >> 8).min(255) as u8
}

/// The colour spaces of the channel nodes (PIL modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    Rgba,
    Cmyk,
    Hsv,
    Lab,
    YCbCr,
}

fn clip8(v: f64) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

/// An RGBA pixel in `space`; the fourth channel is K for CMYK and the alpha otherwise.
pub fn encode(space: Space, p: [u8; 4]) -> [u8; 4] {
    let [r, g, b, a] = p;
    match space {
        Space::Rgba => p,
        Space::Cmyk => [255 - r, 255 - g, 255 - b, 0],
        Space::Hsv => {
            let [h, s, v] = rgb_to_hsv(r, g, b);
            [h, s, v, a]
        }
        Space::Lab => {
            let [l, aa, bb] = rgb_to_lab(r, g, b);
            [l, aa, bb, a]
        }
        Space::YCbCr => {
            let (rf, gf, bf) = (f64::from(r), f64::from(g), f64::from(b));
            [
                clip8(0.299 * rf + 0.587 * gf + 0.114 * bf),
                clip8(-0.168_736 * rf - 0.331_264 * gf + 0.5 * bf + 128.0),
                clip8(0.5 * rf - 0.418_688 * gf - 0.081_312 * bf + 128.0),
                a,
            ]
        }
    }
}

/// A pixel of `space` back to RGB.
pub fn decode(space: Space, p: [u8; 4]) -> [u8; 3] {
    match space {
        Space::Rgba => [p[0], p[1], p[2]],
        Space::Cmyk => {
            let nk = 255 - u32::from(p[3]);
            let c = |v: u8| nk.saturating_sub(muldiv255(u32::from(v), nk)).min(255) as u8;
            [c(p[0]), c(p[1]), c(p[2])]
        }
        Space::Hsv => hsv_to_rgb(p[0], p[1], p[2]),
        Space::Lab => lab_to_rgb(p[0], p[1], p[2]),
        Space::YCbCr => {
            let y = f64::from(p[0]);
            let cb = f64::from(p[1]) - 128.0;
            let cr = f64::from(p[2]) - 128.0;
            [
                clip8(y + 1.402 * cr),
                clip8(y - 0.344_136 * cb - 0.714_136 * cr),
                clip8(y + 1.772 * cb),
            ]
        }
    }
}

/// Pillow's `rgb2hsv_row` (hue and saturation truncated to 0..255).
pub fn rgb_to_hsv(r: u8, g: u8, b: u8) -> [u8; 3] {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    if maxc == minc {
        return [0, 0, maxc];
    }
    let cr = f32::from(maxc - minc);
    let s = cr / f32::from(maxc);
    let rc = f32::from(maxc - r) / cr;
    let gc = f32::from(maxc - g) / cr;
    let bc = f32::from(maxc - b) / cr;
    let h = if r == maxc {
        bc - gc
    } else if g == maxc {
        2.0 + rc - bc
    } else {
        4.0 + gc - rc
    };
    // Pillow computes in double but keeps `h` in a float.
    let h = ((f64::from(h) / 6.0 + 1.0) % 1.0) as f32;
    let trunc = |v: f64| (v as i64).clamp(0, 255) as u8;
    [
        trunc(f64::from(h) * 255.0),
        trunc(f64::from(s) * 255.0),
        maxc,
    ]
}

/// Pillow's `hsv2rgb`.
pub fn hsv_to_rgb(h: u8, s: u8, v: u8) -> [u8; 3] {
    if s == 0 {
        return [v, v, v];
    }
    let hf = f32::from(h) * 6.0 / 255.0;
    let i = hf.floor();
    let f = hf - i;
    let fs = f32::from(s) / 255.0;
    let vf = f32::from(v);
    let c = |x: f32| x.round().clamp(0.0, 255.0) as u8;
    let p = c(vf * (1.0 - fs));
    let q = c(vf * (1.0 - fs * f));
    let t = c(vf * (1.0 - fs * (1.0 - f)));
    match (i as i64).rem_euclid(6) {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

fn srgb_to_linear(c: u8) -> f64 {
    let c = f64::from(c) / 255.0;
    if c <= 0.040_45 {
        c / 12.92
    } else {
        ((c + 0.055) / 1.055).powf(2.4)
    }
}

fn linear_to_srgb(c: f64) -> u8 {
    let c = c.clamp(0.0, 1.0);
    let v = if c <= 0.003_130_8 {
        c * 12.92
    } else {
        1.055 * c.powf(1.0 / 2.4) - 0.055
    };
    clip8(v * 255.0)
}

const D50: [f64; 3] = [0.9642, 1.0, 0.8249];

fn lab_f(t: f64) -> f64 {
    if t > 216.0 / 24389.0 {
        t.cbrt()
    } else {
        (24389.0 / 27.0 * t + 16.0) / 116.0
    }
}

fn lab_f_inv(t: f64) -> f64 {
    if t.powi(3) > 216.0 / 24389.0 {
        t.powi(3)
    } else {
        (116.0 * t - 16.0) * 27.0 / 24389.0
    }
}

/// sRGB to 8-bit CIE LAB (D50 white, as littlecms' built-in profiles give Pillow):
/// L* scaled to 0..255, a* and b* offset by 128.
pub fn rgb_to_lab(r: u8, g: u8, b: u8) -> [u8; 3] {
    let (r, g, b) = (srgb_to_linear(r), srgb_to_linear(g), srgb_to_linear(b));
    let x = 0.436_074_7 * r + 0.385_064_9 * g + 0.143_080_4 * b;
    let y = 0.222_504_5 * r + 0.716_878_6 * g + 0.060_616_9 * b;
    let z = 0.013_932_2 * r + 0.097_104_5 * g + 0.714_173_3 * b;
    let (fx, fy, fz) = (lab_f(x / D50[0]), lab_f(y / D50[1]), lab_f(z / D50[2]));
    let l = 116.0 * fy - 16.0;
    [
        clip8(l * 255.0 / 100.0),
        clip8(500.0 * (fx - fy) + 128.0),
        clip8(200.0 * (fy - fz) + 128.0),
    ]
}

/// The inverse of [`rgb_to_lab`].
pub fn lab_to_rgb(l: u8, a: u8, b: u8) -> [u8; 3] {
    let l = f64::from(l) * 100.0 / 255.0;
    let fy = (l + 16.0) / 116.0;
    let fx = fy + (f64::from(a) - 128.0) / 500.0;
    let fz = fy - (f64::from(b) - 128.0) / 200.0;
    let (x, y, z) = (
        lab_f_inv(fx) * D50[0],
        lab_f_inv(fy) * D50[1],
        lab_f_inv(fz) * D50[2],
    );
    let r = 3.133_856_1 * x - 1.616_866_7 * y - 0.490_614_6 * z;
    let g = -0.978_768_4 * x + 1.916_141_5 * y + 0.033_454_0 * z;
    let bl = 0.071_945_3 * x - 0.228_991_4 * y + 1.405_242_7 * z;
    [linear_to_srgb(r), linear_to_srgb(g), linear_to_srgb(bl)]
}

/// Copies `src` onto `dst` with its top-left corner at (`x`, `y`), clipped to `dst`.
pub fn copy_into<P: Pixel<Subpixel = u8>>(
    dst: &mut ImageBuffer<P, Vec<u8>>,
    src: &ImageBuffer<P, Vec<u8>>,
    x: i64,
    y: i64,
) {
    let x0 = x.max(0);
    let y0 = y.max(0);
    let x1 = x
        .saturating_add(i64::from(src.width()))
        .min(i64::from(dst.width()));
    let y1 = y
        .saturating_add(i64::from(src.height()))
        .min(i64::from(dst.height()));
    for dy in y0..y1 {
        for dx in x0..x1 {
            let p = *src.get_pixel((dx - x) as u32, (dy - y) as u32);
            dst.put_pixel(dx as u32, dy as u32, p);
        }
    }
}

/// A `w`×`h` window of `img` at (`x`, `y`); what lies outside the image is zero.
pub fn crop_fill<P: Pixel<Subpixel = u8>>(
    img: &ImageBuffer<P, Vec<u8>>,
    x: i64,
    y: i64,
    w: u32,
    h: u32,
) -> ImageBuffer<P, Vec<u8>> {
    let mut out = ImageBuffer::new(w, h);
    copy_into(&mut out, img, x.saturating_neg(), y.saturating_neg());
    out
}

/// [`crop_fill`] keeping the image's 8-bit layout (other layouts become RGBA).
pub fn crop_dyn(img: &DynamicImage, x: i64, y: i64, w: u32, h: u32) -> DynamicImage {
    match img {
        DynamicImage::ImageLuma8(i) => crop_fill(i, x, y, w, h).into(),
        DynamicImage::ImageLumaA8(i) => crop_fill(i, x, y, w, h).into(),
        DynamicImage::ImageRgb8(i) => crop_fill(i, x, y, w, h).into(),
        other => crop_fill(&other.to_rgba8(), x, y, w, h).into(),
    }
}

/// Applies `f` to every 8-bit sample (alpha included), keeping the image's layout; other
/// layouts become RGB or RGBA first.
pub fn map_samples(img: DynamicImage, f: impl Fn(u8) -> u8) -> DynamicImage {
    let mut img = match img {
        i @ (DynamicImage::ImageLuma8(_)
        | DynamicImage::ImageLumaA8(_)
        | DynamicImage::ImageRgb8(_)
        | DynamicImage::ImageRgba8(_)) => i,
        other if other.color().has_alpha() => other.to_rgba8().into(),
        other => other.to_rgb8().into(),
    };
    let bytes: &mut [u8] = match &mut img {
        DynamicImage::ImageLuma8(i) => i,
        DynamicImage::ImageLumaA8(i) => i,
        DynamicImage::ImageRgb8(i) => i,
        DynamicImage::ImageRgba8(i) => i,
        _ => &mut [],
    };
    for b in bytes.iter_mut() {
        *b = f(*b);
    }
    img
}

/// Pillow's `Image.alpha_composite(dst, src)` for one pixel (its fixed-point arithmetic).
pub fn over(dst: [u8; 4], src: [u8; 4]) -> [u8; 4] {
    if src[3] == 0 {
        return dst;
    }
    const PRECISION: u64 = 7;
    let shift = |a: u64| ((a >> 8) + a) >> 8;
    let sa = u64::from(src[3]);
    let blend = u64::from(dst[3]) * (255 - sa);
    let outa255 = sa * 255 + blend;
    let coef1 = sa * 255 * 255 * (1 << PRECISION) / outa255;
    let coef2 = 255 * (1 << PRECISION) - coef1;
    let c = |i: usize| {
        let t = u64::from(src[i]) * coef1 + u64::from(dst[i]) * coef2;
        (shift(t + (0x80 << PRECISION)) >> PRECISION).min(255) as u8
    };
    [c(0), c(1), c(2), shift(outa255 + 0x80).min(255) as u8]
}

/// Pillow's box-blur radius for a Gaussian of standard deviation `sigma` made of `passes`
/// box passes (Gwosdek et al., as in `BoxBlur.c`).
pub fn gaussian_box_radius(sigma: f64, passes: u32) -> f64 {
    let sigma2 = sigma * sigma / f64::from(passes);
    let big_l = (12.0 * sigma2 + 1.0).sqrt();
    let l = ((big_l - 1.0) / 2.0).floor();
    let a =
        (2.0 * l + 1.0) * (l * (l + 1.0) - 3.0 * sigma2) / (6.0 * (sigma2 - (l + 1.0) * (l + 1.0)));
    l + a
}

/// Radii above this act like an infinite one on any image the nodes accept.
const MAX_RADIUS: f64 = 1.0e6;

/// One line of Pillow's box blur: a window of `2r+1` samples (the outermost two weighted by
/// the fractional part of `r`), edges extended.
fn blur_line(line: &[f32], out: &mut [f32], r: f64) {
    let n = line.len();
    let (Some(&first), Some(&last)) = (line.first(), line.last()) else {
        return;
    };
    let (first, last) = (f64::from(first), f64::from(last));
    let r = r.clamp(0.0, MAX_RADIUS);
    let ri = r.floor();
    let frac = r - ri;
    let ri = ri as i64;
    let n_i = n as i64;
    let mut prefix = Vec::with_capacity(n + 1);
    let mut acc = 0.0f64;
    prefix.push(0.0);
    for v in line {
        acc += f64::from(*v);
        prefix.push(acc);
    }
    let at = |k: i64| f64::from(line[k.clamp(0, n_i - 1) as usize]);
    // Sum of the edge-extended samples a..=b.
    let sum = |a: i64, b: i64| {
        let mut s = 0.0;
        if a < 0 {
            s += first * (b.min(-1) - a + 1) as f64;
        }
        if b > n_i - 1 {
            s += last * (b - a.max(n_i) + 1) as f64;
        }
        let (lo, hi) = (a.max(0), b.min(n_i - 1));
        if lo <= hi {
            s += prefix[hi as usize + 1] - prefix[lo as usize];
        }
        s
    };
    let div = 2.0 * r + 1.0;
    for (x, o) in out.iter_mut().enumerate() {
        let x = x as i64;
        let mut s = sum(x - ri, x + ri);
        if frac > 0.0 {
            s += frac * (at(x - ri - 1) + at(x + ri + 1));
        }
        *o = (s / div) as f32;
    }
}

/// Box-blurs one `w`×`h` plane `passes` times in each direction.
pub fn box_blur_plane(plane: &mut [f32], w: usize, h: usize, r: f64, passes: u32) {
    if r <= 0.0 || w == 0 || h == 0 || plane.len() != w * h {
        return;
    }
    let mut out = vec![0.0f32; w.max(h)];
    let mut col = vec![0.0f32; h];
    for _ in 0..passes {
        for row in plane.chunks_exact_mut(w) {
            blur_line(row, &mut out[..w], r);
            row.copy_from_slice(&out[..w]);
        }
    }
    for x in 0..w {
        for (y, c) in col.iter_mut().enumerate() {
            *c = plane[y * w + x];
        }
        for _ in 0..passes {
            blur_line(&col, &mut out[..h], r);
            col.copy_from_slice(&out[..h]);
        }
        for (y, c) in col.iter().enumerate() {
            plane[y * w + x] = *c;
        }
    }
}

/// The blur kinds of `img_blur`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blur {
    /// Pillow's `GaussianBlur(radius)`: three box passes approximating that sigma.
    Gaussian,
    /// Pillow's `BoxBlur(radius)`: one box pass.
    Box,
}

/// Blurs float planes in place.
pub fn blur_planes(planes: &mut [Vec<f32>], w: u32, h: u32, radius: f64, kind: Blur) {
    let (r, passes) = match kind {
        Blur::Gaussian => (gaussian_box_radius(radius, 3), 3),
        Blur::Box => (radius, 1),
    };
    for plane in planes {
        box_blur_plane(plane, w as usize, h as usize, r, passes);
    }
}

/// `image.filter(GaussianBlur(radius))` of an RGB image, rounded back to 8 bits.
pub fn gaussian_rgb(img: &RgbImage, radius: f64) -> RgbImage {
    let (w, h) = img.dimensions();
    let mut planes: Vec<Vec<f32>> = (0..3)
        .map(|c| img.pixels().map(|p| f32::from(p.0[c])).collect())
        .collect();
    blur_planes(&mut planes, w, h, radius, Blur::Gaussian);
    let mut out = RgbImage::new(w, h);
    for (i, p) in out.pixels_mut().enumerate() {
        let get = |c: usize| {
            planes
                .get(c)
                .and_then(|pl| pl.get(i))
                .map_or(0, |v| clip8(f64::from(*v)))
        };
        *p = Rgb([get(0), get(1), get(2)]);
    }
    out
}

/// `img_blur`: premultiplies by alpha, blurs all four channels, divides the alpha back out.
pub fn blur_rgba(img: &RgbaImage, radius: f64, kind: Blur) -> RgbaImage {
    let (w, h) = img.dimensions();
    let mut planes: Vec<Vec<f32>> = (0..4)
        .map(|_| Vec::with_capacity((w * h) as usize))
        .collect();
    for p in img.pixels() {
        let [r, g, b, a] = p.0;
        let pre = |c: u8| (u32::from(c) * u32::from(a) / 255) as f32;
        for (plane, v) in planes
            .iter_mut()
            .zip([pre(r), pre(g), pre(b), f32::from(a)])
        {
            plane.push(v);
        }
    }
    blur_planes(&mut planes, w, h, radius, kind);
    let mut out = RgbaImage::new(w, h);
    for (i, p) in out.pixels_mut().enumerate() {
        let get = |c: usize| {
            planes
                .get(c)
                .and_then(|pl| pl.get(i))
                .map_or(0.0, |v| f64::from(*v))
        };
        let a = clip8(get(3));
        let af = f64::from(a) / 255.0 + 1e-6;
        let un = |c: usize| (get(c) / af).clamp(0.0, 255.0) as u8;
        *p = Rgba([un(0), un(1), un(2), a]);
    }
    out
}

/// A small deterministic generator (SplitMix64) for the noise node.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit();
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_follow_pillow() {
        assert_eq!(luma_of(255, 0, 0), 76);
        assert_eq!(luma_of(255, 255, 255), 255);
        assert_eq!(rgb_to_hsv(255, 0, 0), [0, 255, 255]);
        assert_eq!(rgb_to_hsv(0, 0, 255), [170, 255, 255]);
        assert_eq!(hsv_to_rgb(170, 255, 255), [0, 0, 255]);
        assert_eq!(encode(Space::Cmyk, [10, 20, 30, 40]), [245, 235, 225, 0]);
        assert_eq!(decode(Space::Cmyk, [245, 235, 225, 0]), [10, 20, 30]);
        assert_eq!(decode(Space::Cmyk, [0, 0, 0, 255]), [0, 0, 0]);
        assert_eq!(encode(Space::YCbCr, [255, 255, 255, 9]), [255, 128, 128, 9]);
        // sRGB red is about L*=54.3, a*=80.8, b*=69.9 under D50.
        let [l, a, b] = rgb_to_lab(255, 0, 0);
        assert!(
            l.abs_diff(138) <= 1 && a.abs_diff(209) <= 1 && b.abs_diff(198) <= 1,
            "{l} {a} {b}"
        );
        assert_eq!(rgb_to_lab(255, 255, 255), [255, 128, 128]);
        for p in [[0, 0, 0], [255, 255, 255], [12, 200, 99], [255, 0, 0]] {
            let [l, a, b] = rgb_to_lab(p[0], p[1], p[2]);
            let back = lab_to_rgb(l, a, b);
            for (x, y) in back.iter().zip(p) {
                // 8-bit a*/b* steps are coarse for dark channels of saturated colours.
                assert!(x.abs_diff(y) <= 6, "{p:?} -> {back:?}");
            }
        }
    }

    #[test]
    fn compositing_and_blur_helpers() {
        assert_eq!(
            over([0, 0, 0, 255], [255, 255, 255, 128]),
            [128, 128, 128, 255]
        );
        assert_eq!(over([1, 2, 3, 4], [9, 9, 9, 0]), [1, 2, 3, 4]);
        assert_eq!(blend255(0, 255, 255), 255);
        assert_eq!(blend255(100, 200, 0), 100);
        assert_eq!(gaussian_box_radius(0.0, 3), 0.0);
        let mut line = vec![0.0f32, 0.0, 9.0, 0.0, 0.0];
        box_blur_plane(&mut line, 5, 1, 1.0, 1);
        assert_eq!(line, vec![0.0, 3.0, 3.0, 3.0, 0.0]);
        // Fractional radius: edge samples weighted by 0.5, window 2r+1 = 4.
        let mut line = vec![0.0f32, 0.0, 8.0, 0.0, 0.0];
        box_blur_plane(&mut line, 5, 1, 1.5, 1);
        assert_eq!(line, vec![1.0, 2.0, 2.0, 2.0, 1.0]);
    }
}

//! Pixel work between decode and encode: the SIMD resample of the planned crop
//! (`fast_image_resize`, alpha premultiplied during filtering so transparent pixels do not bleed
//! their colour into the edges), EXIF orientation of the now small image, the `contain` and `pad`
//! padding, and flattening onto the request's background.

use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::metadata::Orientation;
use image::{DynamicImage, GrayImage, ImageBuffer, Luma, Pixel, Rgb, RgbImage, imageops};

use super::KernelError;
use super::geometry::{PixelRect, Plan};

/// Lanczos3 rather than CatmullRom or bilinear: after shrink-on-load the resample covers only a
/// 1–2× reduction, so the wider kernel touches few extra pixels (its cost grows with the kernel
/// width times the ratio), while it keeps the most detail of the three. It is also libvips'
/// default, which keeps the speed comparison like for like.
const ALGORITHM: ResizeAlg = ResizeAlg::Convolution(FilterType::Lanczos3);

/// Resamples `crop` of `src` to `size`; a no-op when nothing changes. `crop` was made for
/// `src`'s size ([`PixelRect::within`]), so it always lies inside it.
pub fn resample(
    src: DynamicImage,
    crop: PixelRect,
    size: (u32, u32),
) -> Result<DynamicImage, KernelError> {
    let bounds = (src.width(), src.height());
    if crop.is_whole(bounds) && size == bounds {
        return Ok(src);
    }
    let mut dst = DynamicImage::new(size.0, size.1, src.color());
    let options = ResizeOptions::new().resize_alg(ALGORITHM).crop(
        f64::from(crop.x()),
        f64::from(crop.y()),
        f64::from(crop.width()),
        f64::from(crop.height()),
    );
    Resizer::new()
        .resize(&src, &mut dst, &options)
        .map_err(KernelError::Resample)?;
    Ok(dst)
}

/// Rotates/flips into display orientation.
pub fn orient(mut image: DynamicImage, orientation: Orientation) -> DynamicImage {
    image.apply_orientation(orientation);
    image
}

/// What padding and transparency become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backdrop {
    /// Pad with transparency (the image gains an alpha channel); the image's alpha is kept.
    Transparent,
    /// Pad with opaque white; the image's alpha is left for the encoder (JPEG flattens it onto
    /// white).
    PadWhite,
    /// Flatten the image onto this sRGB colour and pad with it: the result is opaque.
    Flatten([u8; 3]),
}

/// The oriented, resampled image made into the plan's canvas over `backdrop`.
pub fn finish(image: DynamicImage, plan: &Plan, backdrop: Backdrop) -> DynamicImage {
    match backdrop {
        Backdrop::Transparent => pad(image, plan.canvas, plan.offset, None),
        Backdrop::PadWhite => pad(image, plan.canvas, plan.offset, Some([u8::MAX; 3])),
        Backdrop::Flatten(colour) => pad(
            flatten(image, colour),
            plan.canvas,
            plan.offset,
            Some(colour),
        ),
    }
}

/// Places `image` at `offset` on a `canvas`-sized background: transparent when `colour` is
/// `None` (the image gains an alpha channel if it has none), otherwise that opaque sRGB colour
/// (a gray image becomes RGB for a colour that is not a gray).
fn pad(
    image: DynamicImage,
    canvas: (u32, u32),
    offset: (u32, u32),
    colour: Option<[u8; 3]>,
) -> DynamicImage {
    if canvas == (image.width(), image.height()) {
        return image;
    }
    let image = match colour {
        None => with_alpha(image),
        Some(c) if !is_gray(c) => with_colour(image),
        Some(_) => image,
    };
    // `DynamicImage::new` is zero-filled: transparent black for alpha layouts.
    let mut out = DynamicImage::new(canvas.0, canvas.1, image.color());
    if let Some(colour) = colour {
        fill(&mut out, colour);
    }
    let (x, y) = (i64::from(offset.0), i64::from(offset.1));
    match (&mut out, &image) {
        (DynamicImage::ImageLuma8(o), DynamicImage::ImageLuma8(i)) => imageops::replace(o, i, x, y),
        (DynamicImage::ImageLumaA8(o), DynamicImage::ImageLumaA8(i)) => {
            imageops::replace(o, i, x, y)
        }
        (DynamicImage::ImageRgb8(o), DynamicImage::ImageRgb8(i)) => imageops::replace(o, i, x, y),
        (DynamicImage::ImageRgba8(o), DynamicImage::ImageRgba8(i)) => imageops::replace(o, i, x, y),
        (DynamicImage::ImageLuma16(o), DynamicImage::ImageLuma16(i)) => {
            imageops::replace(o, i, x, y)
        }
        (DynamicImage::ImageLumaA16(o), DynamicImage::ImageLumaA16(i)) => {
            imageops::replace(o, i, x, y)
        }
        (DynamicImage::ImageRgb16(o), DynamicImage::ImageRgb16(i)) => imageops::replace(o, i, x, y),
        (DynamicImage::ImageRgba16(o), DynamicImage::ImageRgba16(i)) => {
            imageops::replace(o, i, x, y)
        }
        // Float layouts never come out of our decoders; the generic path is correct, just slower.
        (o, i) => imageops::replace(o, i, x, y),
    }
    out
}

/// Composites an image with alpha onto the opaque sRGB `colour` (an opaque image is returned as
/// it is), on straight 8- or 16-bit values as the JPEG encoder flattens onto white:
/// `out = c·a + colour·(1 − a)`, rounded. Gray stays gray over a gray colour.
pub fn flatten(image: DynamicImage, colour: [u8; 3]) -> DynamicImage {
    if !image.color().has_alpha() {
        return image;
    }
    let blend8 = |c: u8, a: u8, bg: u8| -> u8 {
        let (c, a, bg) = (u32::from(c), u32::from(a), u32::from(bg));
        ((c * a + bg * (255 - a) + 127) / 255) as u8
    };
    let blend16 = |c: u16, a: u16, bg: u8| -> u16 {
        let (c, a, bg) = (u64::from(c), u64::from(a), u64::from(bg) * 257);
        ((c * a + bg * (65_535 - a) + 32_767) / 65_535) as u16
    };
    let [r, g, b] = colour;
    match image {
        DynamicImage::ImageLumaA8(la) if is_gray(colour) => {
            let mut out = GrayImage::new(la.width(), la.height());
            for (o, p) in out.pixels_mut().zip(la.pixels()) {
                o.0 = [blend8(p.0[0], p.0[1], r)];
            }
            DynamicImage::ImageLuma8(out)
        }
        DynamicImage::ImageLumaA16(la) if is_gray(colour) => {
            let mut out = ImageBuffer::<Luma<u16>, Vec<u16>>::new(la.width(), la.height());
            for (o, p) in out.pixels_mut().zip(la.pixels()) {
                o.0 = [blend16(p.0[0], p.0[1], r)];
            }
            DynamicImage::ImageLuma16(out)
        }
        DynamicImage::ImageLumaA16(_) | DynamicImage::ImageRgba16(_) => {
            let rgba = image.to_rgba16();
            let mut out = ImageBuffer::<Rgb<u16>, Vec<u16>>::new(rgba.width(), rgba.height());
            for (o, p) in out.pixels_mut().zip(rgba.pixels()) {
                let [pr, pg, pb, a] = p.0;
                o.0 = [blend16(pr, a, r), blend16(pg, a, g), blend16(pb, a, b)];
            }
            DynamicImage::ImageRgb16(out)
        }
        _ => {
            let rgba = image.to_rgba8();
            let mut out = RgbImage::new(rgba.width(), rgba.height());
            for (o, p) in out.pixels_mut().zip(rgba.pixels()) {
                let [pr, pg, pb, a] = p.0;
                o.0 = [blend8(pr, a, r), blend8(pg, a, g), blend8(pb, a, b)];
            }
            DynamicImage::ImageRgb8(out)
        }
    }
}

fn is_gray([r, g, b]: [u8; 3]) -> bool {
    r == g && g == b
}

/// The same image in RGB (with its alpha, if any), keeping the bit depth: gray layouts only
/// change.
fn with_colour(image: DynamicImage) -> DynamicImage {
    match image {
        DynamicImage::ImageLuma8(_) => DynamicImage::ImageRgb8(image.to_rgb8()),
        DynamicImage::ImageLumaA8(_) => DynamicImage::ImageRgba8(image.to_rgba8()),
        DynamicImage::ImageLuma16(_) => DynamicImage::ImageRgb16(image.to_rgb16()),
        DynamicImage::ImageLumaA16(_) => DynamicImage::ImageRgba16(image.to_rgba16()),
        other => other,
    }
}

/// The same image with an alpha channel (opaque where there was none), keeping the bit depth.
fn with_alpha(image: DynamicImage) -> DynamicImage {
    match image {
        DynamicImage::ImageLuma8(_) => DynamicImage::ImageLumaA8(image.to_luma_alpha8()),
        DynamicImage::ImageRgb8(_) => DynamicImage::ImageRgba8(image.to_rgba8()),
        DynamicImage::ImageLuma16(_) => DynamicImage::ImageLumaA16(image.to_luma_alpha16()),
        DynamicImage::ImageRgb16(_) => DynamicImage::ImageRgba16(image.to_rgba16()),
        DynamicImage::ImageRgb32F(_) => DynamicImage::ImageRgba32F(image.to_rgba32f()),
        other => other,
    }
}

/// Every pixel the opaque sRGB `colour` (its red channel in gray layouts, which get gray
/// colours only), in every layout.
fn fill(image: &mut DynamicImage, [r, g, b]: [u8; 3]) {
    let wide = |c: u8| u16::from(c) * 257;
    let float = |c: u8| f32::from(c) / 255.0;
    match image {
        DynamicImage::ImageLuma8(i) => i.fill(r),
        DynamicImage::ImageLumaA8(i) => fill_pixels(i, [r, u8::MAX]),
        DynamicImage::ImageRgb8(i) => fill_pixels(i, [r, g, b]),
        DynamicImage::ImageRgba8(i) => fill_pixels(i, [r, g, b, u8::MAX]),
        DynamicImage::ImageLuma16(i) => i.fill(wide(r)),
        DynamicImage::ImageLumaA16(i) => fill_pixels(i, [wide(r), u16::MAX]),
        DynamicImage::ImageRgb16(i) => fill_pixels(i, [wide(r), wide(g), wide(b)]),
        DynamicImage::ImageRgba16(i) => fill_pixels(i, [wide(r), wide(g), wide(b), u16::MAX]),
        DynamicImage::ImageRgb32F(i) => fill_pixels(i, [float(r), float(g), float(b)]),
        DynamicImage::ImageRgba32F(i) => fill_pixels(i, [float(r), float(g), float(b), 1.0]),
        _ => {}
    }
}

/// Every pixel of `image` set to `value`, one channel array.
fn fill_pixels<P: Pixel, const N: usize>(
    image: &mut ImageBuffer<P, Vec<P::Subpixel>>,
    value: [P::Subpixel; N],
) {
    for pixel in image.chunks_exact_mut(N) {
        pixel.copy_from_slice(&value);
    }
}

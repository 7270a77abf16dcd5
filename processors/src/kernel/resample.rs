//! Pixel work between decode and encode: the SIMD resample of the planned crop
//! (`fast_image_resize`, alpha premultiplied during filtering so transparent pixels do not bleed
//! their colour into the edges), EXIF orientation of the now small image, and the `contain` pad.

use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::metadata::Orientation;
use image::{DynamicImage, imageops};

use super::KernelError;
use super::geometry::PixelRect;

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

/// Places `image` at `offset` on a `canvas`-sized background: transparent when `transparent`
/// (the image gains an alpha channel if it has none), otherwise opaque white.
pub fn pad(
    image: DynamicImage,
    canvas: (u32, u32),
    offset: (u32, u32),
    transparent: bool,
) -> DynamicImage {
    if canvas == (image.width(), image.height()) {
        return image;
    }
    let image = if transparent {
        with_alpha(image)
    } else {
        image
    };
    // `DynamicImage::new` is zero-filled: transparent black for alpha layouts.
    let mut out = DynamicImage::new(canvas.0, canvas.1, image.color());
    if !transparent {
        fill_white(&mut out);
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

/// Every channel at its maximum: opaque white in every layout.
fn fill_white(image: &mut DynamicImage) {
    match image {
        DynamicImage::ImageLuma8(b) => b.fill(u8::MAX),
        DynamicImage::ImageLumaA8(b) => b.fill(u8::MAX),
        DynamicImage::ImageRgb8(b) => b.fill(u8::MAX),
        DynamicImage::ImageRgba8(b) => b.fill(u8::MAX),
        DynamicImage::ImageLuma16(b) => b.fill(u16::MAX),
        DynamicImage::ImageLumaA16(b) => b.fill(u16::MAX),
        DynamicImage::ImageRgb16(b) => b.fill(u16::MAX),
        DynamicImage::ImageRgba16(b) => b.fill(u16::MAX),
        DynamicImage::ImageRgb32F(b) => b.fill(1.0),
        DynamicImage::ImageRgba32F(b) => b.fill(1.0),
        _ => {}
    }
}

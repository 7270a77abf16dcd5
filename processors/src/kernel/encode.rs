//! Encoding the output. JPEG through libjpeg-turbo (SIMD colour conversion and DCT, 4:2:0 like
//! every mainstream thumbnailer); PNG through `image` with its fast deflate setting, since
//! thumbnails are re-fetched far less often than they are made; WebP through `image`, which writes
//! lossless WebP only. Nothing from the input's metadata is carried over: the outputs are built
//! from pixels alone.

use std::io::Cursor;

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::codecs::webp::WebPEncoder;
use image::{DynamicImage, GrayImage, RgbImage};
use schemas::events::ImageFormat;
use turbojpeg::{Compressor, PixelFormat, Subsamp};

use super::KernelError;

/// Encodes `image` as `format`. `quality` (1–100, validated) applies to JPEG only.
pub fn encode(
    image: DynamicImage,
    format: ImageFormat,
    quality: u8,
) -> Result<Vec<u8>, KernelError> {
    let failed = |e: Box<dyn std::error::Error + Send + Sync>| KernelError::Encode {
        format: format.name(),
        source: e,
    };
    match format {
        ImageFormat::Jpeg => jpeg(image, quality).map_err(|e| failed(e.into())),
        ImageFormat::Png => {
            let mut out = Vec::new();
            let encoder =
                PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive);
            image
                .write_with_encoder(encoder)
                .map_err(|e| failed(e.into()))?;
            Ok(out)
        }
        ImageFormat::Webp => {
            let mut out = Vec::new();
            let encoder = WebPEncoder::new_lossless(Cursor::new(&mut out));
            to_8bit(image)
                .write_with_encoder(encoder)
                .map_err(|e| failed(e.into()))?;
            Ok(out)
        }
        // Refused during parameter validation; kept total rather than panicking.
        ImageFormat::Gif | ImageFormat::Avif => Err(failed(
            format!("{} output is not supported", format.name()).into(),
        )),
    }
}

fn jpeg(image: DynamicImage, quality: u8) -> Result<Vec<u8>, turbojpeg::Error> {
    let mut compressor = Compressor::new()?;
    compressor.set_quality(i32::from(quality))?;
    let (pixels, width, height, format, subsamp) = match flatten_for_jpeg(image) {
        Opaque::Gray(g) => {
            let (w, h) = g.dimensions();
            (g.into_raw(), w, h, PixelFormat::GRAY, Subsamp::Gray)
        }
        Opaque::Rgb(c) => {
            let (w, h) = c.dimensions();
            (c.into_raw(), w, h, PixelFormat::RGB, Subsamp::Sub2x2)
        }
    };
    compressor.set_subsamp(subsamp)?;
    let image = turbojpeg::Image {
        pixels: pixels.as_slice(),
        width: width as usize,
        pitch: width as usize * format.size(),
        height: height as usize,
        format,
    };
    compressor.compress_to_vec(image)
}

/// 8-bit opaque pixels, gray kept gray.
enum Opaque {
    Gray(GrayImage),
    Rgb(RgbImage),
}

/// JPEG has no alpha: composite onto white. Done on straight (non-premultiplied) 8-bit values:
/// `out = c·a + 255·(1 − a)`, rounded.
fn flatten_for_jpeg(image: DynamicImage) -> Opaque {
    let blend = |c: u8, a: u8| -> u8 {
        let (c, a) = (u32::from(c), u32::from(a));
        ((c * a + 255 * (255 - a) + 127) / 255) as u8
    };
    match image {
        DynamicImage::ImageLuma8(g) => Opaque::Gray(g),
        DynamicImage::ImageRgb8(c) => Opaque::Rgb(c),
        DynamicImage::ImageLuma16(_) => Opaque::Gray(image.to_luma8()),
        DynamicImage::ImageLumaA8(_) | DynamicImage::ImageLumaA16(_) => {
            let la = image.to_luma_alpha8();
            let mut out = GrayImage::new(la.width(), la.height());
            for (o, p) in out.pixels_mut().zip(la.pixels()) {
                o.0 = [blend(p.0[0], p.0[1])];
            }
            Opaque::Gray(out)
        }
        DynamicImage::ImageRgb16(_) | DynamicImage::ImageRgb32F(_) => Opaque::Rgb(image.to_rgb8()),
        _ => {
            let rgba = image.to_rgba8();
            let mut out = RgbImage::new(rgba.width(), rgba.height());
            for (o, p) in out.pixels_mut().zip(rgba.pixels()) {
                let [r, g, b, a] = p.0;
                o.0 = [blend(r, a), blend(g, a), blend(b, a)];
            }
            Opaque::Rgb(out)
        }
    }
}

/// WebP in `image` takes 8-bit layouts only.
fn to_8bit(image: DynamicImage) -> DynamicImage {
    match image {
        DynamicImage::ImageLuma16(_) => DynamicImage::ImageLuma8(image.to_luma8()),
        DynamicImage::ImageLumaA16(_) => DynamicImage::ImageLumaA8(image.to_luma_alpha8()),
        DynamicImage::ImageRgb16(_) | DynamicImage::ImageRgb32F(_) => {
            DynamicImage::ImageRgb8(image.to_rgb8())
        }
        DynamicImage::ImageRgba16(_) | DynamicImage::ImageRgba32F(_) => {
            DynamicImage::ImageRgba8(image.to_rgba8())
        }
        other => other,
    }
}

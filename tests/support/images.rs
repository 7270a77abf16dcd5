//! Test images made on the fly: small, varied inputs for the pipeline tests (the benchmark uses
//! real photographs; these only need to be valid, or precisely invalid).
#![allow(dead_code, clippy::unwrap_used)]

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};

/// A noisy RGB picture, so encoders cannot compress it to nothing.
pub fn rgb(width: u32, height: u32) -> DynamicImage {
    let mut seed = 0x2545_F491_u32;
    DynamicImage::ImageRgb8(RgbImage::from_fn(width, height, |x, y| {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let noise = (seed & 0x1F) as u8;
        Rgb([
            (x % 256) as u8 ^ noise,
            (y % 256) as u8,
            ((x + y) % 256) as u8 ^ noise,
        ])
    }))
}

/// A picture with a transparent half.
pub fn rgba(width: u32, height: u32) -> DynamicImage {
    DynamicImage::ImageRgba8(RgbaImage::from_fn(width, height, |x, _| {
        Rgba([200, 30, 30, if x < width / 2 { 0 } else { 255 }])
    }))
}

/// Encodes `image` as `format`.
pub fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    match format {
        ImageFormat::Jpeg => image.to_rgb8().write_to(&mut out, format).unwrap(),
        _ => image.write_to(&mut out, format).unwrap(),
    }
    out.into_inner()
}

/// A JPEG photo-like test image.
pub fn jpeg(width: u32, height: u32) -> Vec<u8> {
    encode(&rgb(width, height), ImageFormat::Jpeg)
}

/// A valid PNG header claiming `width`×`height` with a tiny body: a decompression bomb's shape.
/// A server that allocated before checking would need width×height×4 bytes.
pub fn png_bomb(width: u32, height: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]); // 8-bit RGBA, deflate, no filter, no interlace
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(
        &mut png,
        b"IDAT",
        &[0x78, 0x9C, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut png, b"IEND", &[]);
    png
}

fn chunk(png: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    png.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    png.extend_from_slice(kind);
    png.extend_from_slice(data);
    png.extend_from_slice(&crc.finalize().to_be_bytes());
}

/// Decodes a response body, checking its format.
pub fn decode(bytes: &[u8], format: ImageFormat) -> DynamicImage {
    image::load_from_memory_with_format(bytes, format).unwrap()
}

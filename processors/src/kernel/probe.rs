//! Format sniffing and header-only inspection. Everything here reads a few hundred bytes at most
//! and allocates nothing proportional to the image, so the pixel limit is enforced before any
//! decoder sizes a buffer from attacker-controlled dimensions.

use std::io::Cursor;

use image::ImageDecoder;
use image::codecs::webp::WebPDecoder;
use image::metadata::Orientation;
use schemas::events::ImageFormat;

use super::KernelError;

/// What the header says about an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Format, from the magic bytes.
    pub format: ImageFormat,
    /// Stored width in pixels (before EXIF orientation).
    pub width: u32,
    /// Stored height in pixels (before EXIF orientation).
    pub height: u32,
}

/// Identifies the format by its magic bytes; the client's Content-Type is never trusted.
pub fn sniff(input: &[u8]) -> Option<ImageFormat> {
    ImageFormat::sniff(input)
}

/// Sniffs the format and reads the stored dimensions from the header alone.
pub fn probe(input: &[u8]) -> Result<Header, KernelError> {
    let format = sniff(input).ok_or(KernelError::UnsupportedMediaType)?;
    let (width, height) = match format {
        ImageFormat::Jpeg => jpeg_size(input),
        ImageFormat::Png => png_size(input),
        ImageFormat::Gif => gif_size(input),
        ImageFormat::Webp => webp_size(input),
        ImageFormat::Avif => None,
    }
    .ok_or_else(|| KernelError::undecodable(format, "unreadable header"))?;
    if width == 0 || height == 0 {
        return Err(KernelError::undecodable(format, "zero-sized image"));
    }
    Ok(Header {
        format,
        width,
        height,
    })
}

/// Walks the JPEG marker segments up to the first scan, calling `visit` with each marker and its
/// payload. Stops early when `visit` returns `Some`.
pub(super) fn jpeg_segments<'a, T>(
    input: &'a [u8],
    mut visit: impl FnMut(u8, &'a [u8]) -> Option<T>,
) -> Option<T> {
    let mut at = 2; // after SOI
    loop {
        // Markers may be preceded by any number of 0xFF fill bytes.
        while input.get(at) == Some(&0xFF) && input.get(at + 1) == Some(&0xFF) {
            at += 1;
        }
        if input.get(at) != Some(&0xFF) {
            return None;
        }
        let marker = *input.get(at + 1)?;
        at += 2;
        match marker {
            // Standalone markers carry no length.
            0x01 | 0xD0..=0xD7 => continue,
            // Start of scan / end of image: the header is over.
            0xDA | 0xD9 => return None,
            _ => {}
        }
        let len = usize::from(u16::from_be_bytes([*input.get(at)?, *input.get(at + 1)?]));
        let payload = input.get(at + 2..at + len.max(2))?;
        if let Some(found) = visit(marker, payload) {
            return Some(found);
        }
        at += len.max(2);
    }
}

/// Width and height from the JPEG frame header (any SOFn).
fn jpeg_size(input: &[u8]) -> Option<(u32, u32)> {
    jpeg_segments(input, |marker, p| match marker {
        0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
            let h = u16::from_be_bytes([*p.get(1)?, *p.get(2)?]);
            let w = u16::from_be_bytes([*p.get(3)?, *p.get(4)?]);
            Some((u32::from(w), u32::from(h)))
        }
        _ => None,
    })
}

/// The EXIF orientation of a JPEG (APP1 `Exif\0\0` segment), if it has one.
pub fn jpeg_orientation(input: &[u8]) -> Orientation {
    jpeg_segments(input, |marker, p| match (marker, p) {
        (0xE1, [b'E', b'x', b'i', b'f', 0, 0, tiff @ ..]) => Orientation::from_exif_chunk(tiff),
        _ => None,
    })
    .unwrap_or(Orientation::NoTransforms)
}

/// Width and height from IHDR, which the PNG spec requires to be the first chunk.
fn png_size(input: &[u8]) -> Option<(u32, u32)> {
    let ihdr = input.get(8..24)?;
    if &ihdr[4..8] != b"IHDR" {
        return None;
    }
    let w = u32::from_be_bytes(ihdr[8..12].try_into().ok()?);
    let h = u32::from_be_bytes(ihdr[12..16].try_into().ok()?);
    Some((w, h))
}

/// The logical screen size, which bounds the first frame as the GIF decoder composes it.
fn gif_size(input: &[u8]) -> Option<(u32, u32)> {
    let w = u16::from_le_bytes([*input.get(6)?, *input.get(7)?]);
    let h = u16::from_le_bytes([*input.get(8)?, *input.get(9)?]);
    Some((u32::from(w), u32::from(h)))
}

/// Canvas size from the VP8/VP8L/VP8X header; the WebP decoder reads only the chunk headers here.
fn webp_size(input: &[u8]) -> Option<(u32, u32)> {
    WebPDecoder::new(Cursor::new(input))
        .ok()
        .map(|d| d.dimensions())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_by_magic_bytes_only() {
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0]), Some(ImageFormat::Jpeg));
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n...."), Some(ImageFormat::Png));
        assert_eq!(sniff(b"GIF89a.."), Some(ImageFormat::Gif));
        assert_eq!(sniff(b"GIF87a.."), Some(ImageFormat::Gif));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some(ImageFormat::Webp));
        assert_eq!(sniff(b"RIFF\0\0\0\0WAVEfmt "), None);
        assert_eq!(sniff(b"<svg xmlns="), None);
        assert_eq!(sniff(b""), None);
    }

    #[test]
    fn jpeg_without_exif_is_upright() {
        assert_eq!(
            jpeg_orientation(&[0xFF, 0xD8, 0xFF, 0xD9]),
            Orientation::NoTransforms
        );
    }
}

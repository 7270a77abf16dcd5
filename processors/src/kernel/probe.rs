//! Format sniffing and header-only inspection. Everything here reads a few hundred bytes at most
//! (HEIC and AVIF: the container's boxes, parsed by libheif in [`heif`]) and
//! allocates nothing proportional to the image, so the pixel limit is enforced before any
//! decoder sizes a buffer from attacker-controlled dimensions.

use std::io::Cursor;

use image::ImageDecoder;
use image::codecs::webp::WebPDecoder;
use image::metadata::Orientation;
use schemas::events::ImageFormat;

use super::{KernelError, heif};

/// What the header says about an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Format, from the magic bytes.
    pub format: ImageFormat,
    /// Stored width in pixels (before EXIF orientation).
    pub width: u32,
    /// Stored height in pixels (before EXIF orientation).
    pub height: u32,
    /// Frames the container declares: GIF image descriptors or WebP `ANMF` chunks; 1 for stills.
    /// Counted by walking the block structure, so a crafted file cannot make counting expensive.
    pub frames: u32,
    /// Loop count of an animation (0: forever), from GIF's NETSCAPE2.0 block or WebP's `ANIM`;
    /// `None` when the file has none (a GIF then plays once).
    pub loops: Option<u16>,
}

/// Identifies the format by its magic bytes; the client's Content-Type is never trusted.
pub fn sniff(input: &[u8]) -> Option<ImageFormat> {
    ImageFormat::sniff(input)
}

/// Sniffs the format and reads the stored dimensions, frame count and loop count from the
/// headers alone (HEIC and AVIF: the primary image's, as displayed, libheif applying its
/// transforms while decoding). A well-known format this service does not read (TIFF, BMP, JPEG
/// XL) is [`KernelError::UnsupportedFormat`], anything else unknown
/// [`KernelError::UnsupportedMediaType`].
pub fn probe(input: &[u8]) -> Result<Header, KernelError> {
    let format = sniff(input).ok_or_else(|| match ImageFormat::sniff_unsupported(input) {
        Some(seen) => KernelError::UnsupportedFormat(seen),
        None => KernelError::UnsupportedMediaType,
    })?;
    let (width, height) = match format {
        ImageFormat::Jpeg => jpeg_size(input),
        ImageFormat::Png => png_size(input),
        ImageFormat::Gif => gif_size(input),
        ImageFormat::Webp => webp_size(input),
        ImageFormat::Avif | ImageFormat::Heic => Some(heif::size(input, format)?),
    }
    .ok_or_else(|| {
        if format == ImageFormat::Jpeg && jpeg_header_cut(input) {
            KernelError::Truncated {
                detail: "the file ends inside the JPEG header".into(),
            }
        } else {
            KernelError::undecodable(format, "unreadable header")
        }
    })?;
    let ((width, height), frames, loops) = match format {
        ImageFormat::Gif => {
            let walk = gif_frames(input);
            // The screen grows to take in the first frame, as libvips and browsers draw it.
            let (right, bottom) = walk.first_extent.unwrap_or_default();
            (
                (width.max(right), height.max(bottom)),
                walk.frames,
                walk.loops,
            )
        }
        ImageFormat::Webp => {
            let (frames, loops) = webp_frames(input);
            ((width, height), frames, loops)
        }
        _ => ((width, height), 1, None),
    };
    if width == 0 || height == 0 {
        return Err(KernelError::undecodable(format, "zero-sized image"));
    }
    Ok(Header {
        format,
        width,
        height,
        frames,
        loops,
    })
}

/// What walking a GIF's blocks tells.
struct GifWalk {
    /// Image descriptors (at least 1).
    frames: u32,
    /// The NETSCAPE2.0 loop count.
    loops: Option<u16>,
    /// Right and bottom edge (left + width, top + height) of the first frame.
    first_extent: Option<(u32, u32)>,
}

/// Counts a GIF's frames, reads its loop count and the first frame's extent by walking the block
/// structure: every data sub-block (LZW data, extension payloads) is jumped over by its length
/// byte, nothing is decompressed or allocated. A truncated or corrupt file stops the walk; the
/// frames counted so far are all the decoder could produce anyway.
fn gif_frames(input: &[u8]) -> GifWalk {
    let (mut frames, mut loops, mut first_extent) = (0u32, None, None);
    let le = |at: usize| -> Option<u32> {
        Some(u32::from(u16::from_le_bytes([
            *input.get(at)?,
            *input.get(at + 1)?,
        ])))
    };
    let colour_table = |flags: u8| {
        if flags & 0x80 != 0 {
            3usize << ((flags & 7) + 1)
        } else {
            0
        }
    };
    let Some(&screen_flags) = input.get(10) else {
        return GifWalk {
            frames: 1,
            loops: None,
            first_extent: None,
        };
    };
    // Signature (6), logical screen descriptor (7), optional global colour table.
    let mut at = 13 + colour_table(screen_flags);
    loop {
        match input.get(at) {
            // Image descriptor: separator, x, y, w, h (2 bytes each), flags; then an optional
            // local colour table, the LZW minimum code size and the data sub-blocks.
            Some(0x2C) => {
                if frames == 0
                    && let (Some(x), Some(y), Some(w), Some(h)) =
                        (le(at + 1), le(at + 3), le(at + 5), le(at + 7))
                {
                    first_extent = Some((x + w, y + h));
                }
                frames = frames.saturating_add(1);
                let Some(&flags) = input.get(at + 9) else {
                    break;
                };
                match skip_sub_blocks(input, at + 10 + colour_table(flags) + 1) {
                    Some(next) => at = next,
                    None => break,
                }
            }
            // Extension: introducer, label, sub-blocks. The application extension
            // "NETSCAPE2.0" carries the loop count in its first data sub-block.
            Some(0x21) => {
                let label = input.get(at + 1).copied();
                at += 2;
                if label == Some(0xFF)
                    && input.get(at..at + 12) == Some(b"\x0bNETSCAPE2.0".as_slice())
                    && let Some([3, 1, lo, hi]) = input.get(at + 12..at + 16)
                {
                    loops = Some(u16::from_le_bytes([*lo, *hi]));
                }
                match skip_sub_blocks(input, at) {
                    Some(next) => at = next,
                    None => break,
                }
            }
            // Trailer, end of data, or something that is not a block: the walk is over.
            _ => break,
        }
    }
    GifWalk {
        frames: frames.max(1),
        loops,
        first_extent,
    }
}

/// The offset just after the zero-length block that ends a chain of GIF data sub-blocks.
fn skip_sub_blocks(input: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = usize::from(*input.get(at)?);
        at += 1 + len;
        if len == 0 {
            return Some(at);
        }
    }
}

/// Counts the `ANMF` chunks of a WebP and reads the loop count of its `ANIM` chunk, walking the
/// RIFF chunk headers only.
fn webp_frames(input: &[u8]) -> (u32, Option<u16>) {
    let (mut frames, mut loops) = (0u32, None);
    let mut at = 12; // "RIFF", size, "WEBP"
    while let Some(chunk) = input.get(at..at + 8) {
        let size = u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]) as usize;
        match &chunk[..4] {
            b"ANMF" => frames = frames.saturating_add(1),
            b"ANIM" => {
                if let (Some(&lo), Some(&hi)) = (input.get(at + 12), input.get(at + 13)) {
                    loops = Some(u16::from_le_bytes([lo, hi]));
                }
            }
            _ => {}
        }
        // Chunks are padded to an even size.
        at = at
            .saturating_add(8)
            .saturating_add(size)
            .saturating_add(size & 1);
    }
    (frames.max(1), loops)
}

/// Where a JPEG marker was found: the offset of its 0xFF, the offset just after its code, and
/// the code; `None` past the end of the data. Finds the marker as libjpeg's `next_marker` does, so
/// that every file libjpeg reads is read here too: bytes that are not 0xFF before a marker are
/// skipped (stray bytes that cameras and editors leave between segments; libjpeg only warns), any
/// number of 0xFF fill bytes may precede the code, and a stuffed 0xFF 0x00 is no marker.
fn next_marker(input: &[u8], mut at: usize) -> Option<(usize, usize, u8)> {
    loop {
        at += input.get(at..)?.iter().position(|&b| b == 0xFF)?;
        while input.get(at + 1) == Some(&0xFF) {
            at += 1;
        }
        let code = *input.get(at + 1)?;
        if code != 0 {
            return Some((at, at + 2, code));
        }
        at += 2;
    }
}

/// `input` without the stray bytes libjpeg skips (with a warning) between the segments before
/// the first scan; borrowed when there are none, which is nearly always. libjpeg-turbo's header
/// reader fails on that warning, although the decoder would read the file, as libvips does.
pub fn jpeg_without_stray_header_bytes(input: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let mut spans = Vec::new();
    let mut at = 2; // after SOI
    let mut stray = false;
    while let Some((start, after, code)) = next_marker(input, at) {
        stray |= start != at;
        match code {
            // Standalone markers carry no length.
            0x01 | 0xD0..=0xD7 => {
                spans.push(start..after);
                at = after;
            }
            // The first scan (or the end): everything from here on is kept as it is.
            0xDA | 0xD9 => {
                spans.push(start..input.len());
                break;
            }
            _ => {
                let Some(len) = input.get(after..after + 2) else {
                    break;
                };
                let end = (after + usize::from(u16::from_be_bytes([len[0], len[1]])).max(2))
                    .min(input.len());
                spans.push(start..end);
                at = end;
            }
        }
    }
    if !stray {
        return std::borrow::Cow::Borrowed(input);
    }
    let mut repaired = Vec::with_capacity(input.len());
    repaired.extend_from_slice(&input[..2]);
    for span in spans {
        repaired.extend_from_slice(&input[span]);
    }
    std::borrow::Cow::Owned(repaired)
}

/// Walks the JPEG marker segments up to the first scan, calling `visit` with each marker and its
/// payload. Stops early when `visit` returns `Some`. Markers are found as [`next_marker`] does.
pub(super) fn jpeg_segments<'a, T>(
    input: &'a [u8],
    mut visit: impl FnMut(u8, &'a [u8]) -> Option<T>,
) -> Option<T> {
    let mut at = 2; // after SOI
    loop {
        let (_, after, marker) = next_marker(input, at)?;
        at = after;
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

/// Whether the JPEG frame header (SOFn) declares four components: CMYK, or YCCK which libjpeg
/// turns into CMYK.
pub fn jpeg_is_cmyk(input: &[u8]) -> bool {
    jpeg_segments(input, |marker, p| match marker {
        0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => Some(p.get(5) == Some(&4)),
        _ => None,
    })
    .unwrap_or(false)
}

/// Whether a JPEG whose frame header could not be read ends before any scan (the file was cut
/// inside its headers, rather than carrying broken ones).
fn jpeg_header_cut(input: &[u8]) -> bool {
    !input.windows(2).any(|w| w == [0xFF, 0xDA])
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

/// The logical screen size as declared (see [`probe`] for how the first frame grows it).
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

//! Animated WebP input, composed frame by frame as the WebP container specification says and
//! libwebp's `WebPAnimDecoder` (which libvips and browsers follow) does: each `ANMF` frame's
//! bitstream is decoded on its own as a still, by `image` (image-webp, the decoder of still WebP
//! inputs), and drawn onto an RGBA canvas at its offset, either blended over it (non-premultiplied
//! alpha) or replacing it; a frame marked "dispose to background" has its rectangle cleared before
//! the next frame is drawn. As in libwebp and browsers, the canvas starts transparent and disposal
//! clears to transparent: the `ANIM` background colour is only a hint in the specification.
//!
//! Why not a ready-made compositor: `image`'s own animated WebP decoder (image-webp 0.2) clears a
//! disposed frame only when a background colour is set, which it never is, so every earlier
//! position of a moving object stays on the canvas (and it clears by a 3-byte stride for frames
//! without alpha); the `webp` crate's `AnimDecoder` (0.3) decodes every frame into memory before
//! returning the first, and on a frame libwebp cannot decode it loops forever, since libwebp does
//! not advance past a failed frame. Untrusted input must not be able to hang a worker.
//!
//! Memory stays what the header checks allow: one canvas of the header's size (held to
//! `max_pixels` by the caller), the copy of it handed out per frame, and one decoded frame, which
//! must lie inside the canvas by its `ANMF` header before its bitstream is decoded.

use std::io::Cursor;

use image::codecs::webp::WebPDecoder;
use image::{DynamicImage, ImageDecoder, Rgba, RgbaImage};
use schemas::events::ImageFormat;

use super::KernelError;

/// What disposal leaves (and what the canvas starts as).
const TRANSPARENT: Rgba<u8> = Rgba([0, 0, 0, 0]);

/// One composed frame: the whole canvas, and how long it is shown.
pub struct Composed {
    /// The canvas after drawing the frame.
    pub canvas: RgbaImage,
    /// Display time in milliseconds, from the `ANMF` header.
    pub duration_ms: u32,
}

/// The frames of an animated WebP, composed one at a time, in file order.
pub struct WebpAnimation<'a> {
    chunks: Chunks<'a>,
    /// The canvas size from the header.
    size: (u32, u32),
    /// Allocated when the first frame is drawn, so that nothing is allocated for a request the
    /// caller refuses after opening the animation.
    canvas: Option<RgbaImage>,
    /// The previous frame's rectangle when it was marked "dispose to background".
    to_clear: Option<Rect>,
    limits: image::Limits,
}

/// A frame's rectangle on the canvas.
#[derive(Debug, Clone, Copy)]
struct Rect {
    x: u32,
    y: u32,
    width: u32,
    height: u32,
}

impl<'a> WebpAnimation<'a> {
    /// The animation in `input`, whose canvas the header gave as `width`×`height` (already held to
    /// the pixel limit); `limits` caps what decoding one frame may allocate.
    pub fn new(input: &'a [u8], width: u32, height: u32, limits: image::Limits) -> Self {
        // RIFF header: "RIFF", the size of what follows, "WEBP"; bytes past that size are not
        // part of the file.
        let riff_end = input
            .get(4..8)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize)
            .map_or(input.len(), |size| size.saturating_add(8).min(input.len()));
        Self {
            chunks: Chunks {
                bytes: input.get(..riff_end).unwrap_or(input),
                at: 12,
            },
            size: (width, height),
            canvas: None,
            to_clear: None,
            limits,
        }
    }

    /// Decodes the frame in `anmf` (an `ANMF` chunk's payload) and draws it.
    fn compose(&mut self, anmf: &[u8]) -> Result<Composed, KernelError> {
        // Header: x / 2, y / 2, width − 1, height − 1, duration (24 bits each), flags.
        let Some((header, data)) = anmf.split_first_chunk::<16>() else {
            return Err(undecodable("an ANMF chunk is shorter than its header"));
        };
        let u24 = |at: usize| u32::from_le_bytes([header[at], header[at + 1], header[at + 2], 0]);
        let rect = Rect {
            x: u24(0) * 2,
            y: u24(3) * 2,
            width: u24(6) + 1,
            height: u24(9) + 1,
        };
        let duration_ms = u24(12);
        let blend = header[15] & 0b10 == 0;
        let dispose = header[15] & 0b01 != 0;
        let (width, height) = self.size;
        if rect.x + rect.width > width || rect.y + rect.height > height {
            return Err(undecodable("a frame lies outside the canvas"));
        }
        let frame = decode_frame(data, rect, self.limits.clone())?;

        // Zero-filled: transparent.
        let canvas = self
            .canvas
            .get_or_insert_with(|| RgbaImage::new(width, height));
        if let Some(previous) = self.to_clear.take() {
            fill(canvas, previous, TRANSPARENT);
        }
        draw(canvas, &frame, rect, blend);
        self.to_clear = dispose.then_some(rect);
        Ok(Composed {
            canvas: canvas.clone(),
            duration_ms,
        })
    }
}

impl Iterator for WebpAnimation<'_> {
    type Item = Result<Composed, KernelError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.chunks.next()? {
                Ok((fourcc, anmf)) if &fourcc == b"ANMF" => return Some(self.compose(anmf)),
                Ok(_) => {}
                Err(e) => return Some(Err(undecodable(e))),
            }
        }
    }
}

/// Decodes one frame's data (an optional `ALPH` chunk, then a `VP8 ` or `VP8L` bitstream, then
/// chunks to ignore) by wrapping it in a still WebP of its own.
fn decode_frame(data: &[u8], rect: Rect, limits: image::Limits) -> Result<RgbaImage, KernelError> {
    let mut alpha = None;
    let mut bitstream = None;
    for chunk in (Chunks { bytes: data, at: 0 }) {
        let (fourcc, payload) = chunk.map_err(undecodable)?;
        match &fourcc {
            b"ALPH" => alpha = Some(payload),
            b"VP8 " | b"VP8L" => {
                bitstream = Some((fourcc, payload));
                break;
            }
            // Unknown chunks in frame data are to be ignored (container specification).
            _ => {}
        }
    }
    let Some((fourcc, payload)) = bitstream else {
        return Err(undecodable("an ANMF chunk has no VP8 or VP8L bitstream"));
    };

    let mut body = b"WEBP".to_vec();
    // `ALPH` belongs to lossy bitstreams only (VP8L carries its own alpha), and needs the
    // extended format: a VP8X header with the alpha flag.
    if let (b"VP8 ", Some(alpha)) = (&fourcc, alpha) {
        let mut vp8x = vec![0x10, 0, 0, 0];
        vp8x.extend_from_slice(&(rect.width - 1).to_le_bytes()[..3]);
        vp8x.extend_from_slice(&(rect.height - 1).to_le_bytes()[..3]);
        push_chunk(&mut body, b"VP8X", &vp8x);
        push_chunk(&mut body, b"ALPH", alpha);
    }
    push_chunk(&mut body, &fourcc, payload);
    let mut still = b"RIFF".to_vec();
    let size = u32::try_from(body.len())
        .map_err(|_| undecodable("a frame is larger than a WebP file can be"))?;
    still.extend_from_slice(&size.to_le_bytes());
    still.extend_from_slice(&body);

    let image_error = |e: image::ImageError| KernelError::undecodable(ImageFormat::Webp, e);
    let mut decoder = WebPDecoder::new(Cursor::new(still.as_slice())).map_err(image_error)?;
    decoder.set_limits(limits).map_err(image_error)?;
    if decoder.dimensions() != (rect.width, rect.height) {
        return Err(undecodable(
            "a frame's bitstream is not the size its ANMF header says",
        ));
    }
    Ok(DynamicImage::from_decoder(decoder)
        .map_err(image_error)?
        .into_rgba8())
}

/// Draws `frame` onto `canvas` at `rect` (which lies inside it): blended over what is there when
/// `blend`, else replacing it, transparent pixels included.
fn draw(canvas: &mut RgbaImage, frame: &RgbaImage, rect: Rect, blend: bool) {
    let rows = canvas.rows_mut().skip(rect.y as usize);
    for (canvas_row, frame_row) in rows.zip(frame.rows()) {
        for (dst, src) in canvas_row.skip(rect.x as usize).zip(frame_row) {
            *dst = if blend { over(*src, *dst) } else { *src };
        }
    }
}

/// Fills `rect` of `canvas` with `colour`.
fn fill(canvas: &mut RgbaImage, rect: Rect, colour: Rgba<u8>) {
    let rows = canvas
        .rows_mut()
        .skip(rect.y as usize)
        .take(rect.height as usize);
    for row in rows {
        for pixel in row.skip(rect.x as usize).take(rect.width as usize) {
            *pixel = colour;
        }
    }
}

/// `src` over `dst` on straight (non-premultiplied) alpha, the WebP specification's formula:
/// `a = αs + αd·(1 − αs)`, `c = (cs·αs + cd·αd·(1 − αs)) / a`, rounded.
fn over(src: Rgba<u8>, dst: Rgba<u8>) -> Rgba<u8> {
    let src_alpha = u32::from(src[3]);
    match src_alpha {
        255 => return src,
        0 => return dst,
        _ => {}
    }
    // Weights scaled by 255: the source's and what shows of the destination.
    let src_weight = src_alpha * 255;
    let dst_weight = u32::from(dst[3]) * (255 - src_alpha);
    let total = src_weight + dst_weight;
    let channel = |i: usize| {
        let sum = u32::from(src[i]) * src_weight + u32::from(dst[i]) * dst_weight;
        ((sum + total / 2) / total) as u8
    };
    Rgba([
        channel(0),
        channel(1),
        channel(2),
        ((total + 127) / 255) as u8,
    ])
}

/// RIFF chunks from `at` on, as FourCC and payload. A chunk whose payload runs past the end is an
/// error (the file is truncated); fewer than 8 bytes left end the walk.
struct Chunks<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Iterator for Chunks<'a> {
    type Item = Result<([u8; 4], &'a [u8]), &'static str>;

    fn next(&mut self) -> Option<Self::Item> {
        let header = self.bytes.get(self.at..self.at.checked_add(8)?)?;
        let fourcc = [header[0], header[1], header[2], header[3]];
        let size = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        let start = self.at + 8;
        let Some(payload) = start
            .checked_add(size)
            .and_then(|end| self.bytes.get(start..end))
        else {
            self.at = self.bytes.len();
            return Some(Err("a chunk runs past the end of the file"));
        };
        // Chunks are padded to an even size.
        self.at = start + size + (size & 1);
        Some(Ok((fourcc, payload)))
    }
}

/// Appends a RIFF chunk, padded to an even size.
fn push_chunk(out: &mut Vec<u8>, fourcc: &[u8; 4], payload: &[u8]) {
    out.extend_from_slice(fourcc);
    // Every payload is a slice of a chunk whose size was read as a u32, so it fits one.
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    if payload.len() % 2 == 1 {
        out.push(0);
    }
}

fn undecodable(reason: &'static str) -> KernelError {
    KernelError::undecodable(ImageFormat::Webp, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_follows_the_specification() {
        let px = |c: [u8; 4]| Rgba(c);
        assert_eq!(
            over(px([0, 0, 255, 128]), px([255, 255, 255, 255])),
            px([127, 127, 255, 255])
        );
        assert_eq!(
            over(px([10, 20, 30, 0]), px([1, 2, 3, 4])),
            px([1, 2, 3, 4])
        );
        assert_eq!(
            over(px([10, 20, 30, 255]), px([1, 2, 3, 4])),
            px([10, 20, 30, 255])
        );
        // Over transparency the colour is the source's, whatever the destination's colour.
        assert_eq!(
            over(px([200, 100, 50, 60]), px([9, 9, 9, 0])),
            px([200, 100, 50, 60])
        );
    }

    #[test]
    fn truncated_chunks_are_errors() {
        let mut chunks = Chunks {
            bytes: b"ANMF\x10\0\0\0short",
            at: 0,
        };
        assert!(matches!(chunks.next(), Some(Err(_))));
        assert!(chunks.next().is_none());
    }
}

//! GIF input, composed frame by frame onto its screen as browsers and libvips draw it. The screen
//! is the logical screen of the header, grown to take in the first frame when that frame reaches
//! past it (Firefox, libnsgif and so libvips do this for GIFs whose writers set the screen too
//! small; see [`probe`](super::probe)'s size). Every frame is drawn at its offset, clipped to the
//! screen, its transparent pixels leaving the screen as it was; then its disposal runs: "restore
//! to background" clears its rectangle to transparent (as browsers do: the background colour is a
//! hint), "restore to previous" puts back the screen as it was before the frame.
//!
//! Why not `image`'s GIF decoder: it composes onto the logical screen as declared, so a first
//! frame placed partly outside comes out cut where libvips and browsers show all of it.
//!
//! libnsgif also treats a few screen sizes as "the size of the editor's window" (640×480,
//! 800×600 and others) and replaces them with the first frame's size; browsers do not, so neither
//! does this: a GIF of that screen size keeps it.
//!
//! Memory: one screen of the header's size (held to `max_pixels` by the caller), the copy handed
//! out per frame, the saved screen of a "restore to previous" frame, and one decoded frame, whose
//! buffer the decoder's memory limit caps.

use std::io::Cursor;
use std::num::NonZeroU64;

use gif::{ColorOutput, DecodeOptions, DisposalMethod, MemoryLimit};
use image::{Rgba, RgbaImage};
use schemas::events::ImageFormat;

use super::KernelError;
use super::webp_anim::Composed;

/// What disposal leaves (and what the screen starts as).
const TRANSPARENT: Rgba<u8> = Rgba([0, 0, 0, 0]);

/// Bytes per pixel of a decoded frame (RGBA).
const FRAME_BYTES_PER_PIXEL: u64 = 4;

/// What the previous frame's disposal does before the next frame is drawn.
enum Disposal {
    None,
    /// Clear this rectangle (x, y, width, height; inside the screen) to transparent.
    Clear((u32, u32, u32, u32)),
    /// Put back the screen as it was before the previous frame.
    Restore(RgbaImage),
}

/// The frames of a GIF, composed one at a time, in file order.
pub struct GifAnimation<'a> {
    decoder: gif::Decoder<Cursor<&'a [u8]>>,
    /// The screen size from the header.
    size: (u32, u32),
    /// Allocated when the first frame is drawn.
    screen: Option<RgbaImage>,
    disposal: Disposal,
    /// Set after a decoding error, so the iterator ends there.
    failed: bool,
}

impl<'a> GifAnimation<'a> {
    /// The GIF in `input`, whose screen the header gave as `width`×`height` (already held to the
    /// pixel limit); one decoded frame may take at most `max_frame_pixels` pixels.
    pub fn new(
        input: &'a [u8],
        width: u32,
        height: u32,
        max_frame_pixels: u64,
    ) -> Result<Self, KernelError> {
        let mut options = DecodeOptions::new();
        options.set_color_output(ColorOutput::RGBA);
        let limit = max_frame_pixels.saturating_mul(FRAME_BYTES_PER_PIXEL);
        options.set_memory_limit(
            NonZeroU64::new(limit).map_or(MemoryLimit::Unlimited, MemoryLimit::Bytes),
        );
        let decoder = options
            .read_info(Cursor::new(input))
            .map_err(|e| KernelError::undecodable(ImageFormat::Gif, e))?;
        Ok(Self {
            decoder,
            size: (width, height),
            screen: None,
            disposal: Disposal::None,
            failed: false,
        })
    }

    /// The embedded ICC profile (an `ICCRGBG1012` application extension), if it comes before the
    /// first frame.
    pub fn icc_profile(&self) -> Option<Vec<u8>> {
        self.decoder.icc_profile().map(<[u8]>::to_vec)
    }

    /// Draws the next frame; `None` after the last.
    fn draw_next(&mut self) -> Result<Option<Composed>, KernelError> {
        let undecodable = |e| KernelError::undecodable(ImageFormat::Gif, e);
        let Some(frame) = self.decoder.read_next_frame().map_err(undecodable)? else {
            return Ok(None);
        };
        let (left, top) = (u32::from(frame.left), u32::from(frame.top));
        let (fw, fh) = (u32::from(frame.width), u32::from(frame.height));
        let (dispose, delay_cs) = (frame.dispose, frame.delay);
        let (sw, sh) = self.size;
        let screen = self
            .screen
            .get_or_insert_with(|| RgbaImage::from_pixel(sw, sh, TRANSPARENT));
        match std::mem::replace(&mut self.disposal, Disposal::None) {
            Disposal::None => {}
            Disposal::Clear((x, y, w, h)) => {
                for yy in y..y + h {
                    for xx in x..x + w {
                        screen.put_pixel(xx, yy, TRANSPARENT);
                    }
                }
            }
            Disposal::Restore(saved) => *screen = saved,
        }
        if dispose == DisposalMethod::Previous {
            self.disposal = Disposal::Restore(screen.clone());
        }
        // The part of the frame on the screen.
        let w = fw.min(sw.saturating_sub(left));
        let h = fh.min(sh.saturating_sub(top));
        let pixels: &[u8] = &frame.buffer;
        for y in 0..h {
            let row = (y * fw) as usize * 4;
            for x in 0..w {
                let at = row + x as usize * 4;
                let Some(p) = pixels.get(at..at + 4) else {
                    continue;
                };
                if p[3] != 0 {
                    screen.put_pixel(left + x, top + y, Rgba([p[0], p[1], p[2], p[3]]));
                }
            }
        }
        if dispose == DisposalMethod::Background && w > 0 && h > 0 {
            self.disposal = Disposal::Clear((left, top, w, h));
        }
        Ok(Some(Composed {
            canvas: screen.clone(),
            duration_ms: u32::from(delay_cs) * 10,
        }))
    }
}

impl Iterator for GifAnimation<'_> {
    type Item = Result<Composed, KernelError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.draw_next() {
            Ok(composed) => composed.map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::web_tests::gif_on_screen;
    use super::*;

    fn frames(input: &[u8], size: (u32, u32)) -> Vec<RgbaImage> {
        GifAnimation::new(input, size.0, size.1, 1 << 20)
            .expect("open")
            .map(|f| f.expect("frame").canvas)
            .collect()
    }

    const RED: [u8; 3] = [255, 0, 0];
    const BLUE: [u8; 3] = [0, 0, 255];

    #[test]
    fn frames_land_at_their_offsets_and_are_clipped_to_the_screen() {
        let input = gif_on_screen(
            (20, 10),
            &[
                (4, 2, 8, 6, RED, DisposalMethod::Keep),
                (15, 5, 10, 10, BLUE, DisposalMethod::Keep),
            ],
        );
        let f = frames(&input, (20, 10));
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].dimensions(), (20, 10));
        assert_eq!(f[0].get_pixel(0, 0).0, [0, 0, 0, 0]);
        assert_eq!(f[0].get_pixel(4, 2).0, [255, 0, 0, 255]);
        assert_eq!(f[0].get_pixel(11, 7).0, [255, 0, 0, 255]);
        assert_eq!(f[0].get_pixel(12, 8).0, [0, 0, 0, 0]);
        // Kept: the red stays under the blue, which is cut at the screen's edge.
        assert_eq!(f[1].get_pixel(5, 3).0, [255, 0, 0, 255]);
        assert_eq!(f[1].get_pixel(19, 9).0, [0, 0, 255, 255]);
    }

    #[test]
    fn disposal_clears_or_restores() {
        let input = gif_on_screen(
            (8, 8),
            &[
                (0, 0, 8, 8, RED, DisposalMethod::Keep),
                (2, 2, 2, 2, BLUE, DisposalMethod::Background),
                (4, 4, 2, 2, BLUE, DisposalMethod::Previous),
                (0, 0, 1, 1, BLUE, DisposalMethod::Keep),
            ],
        );
        let f = frames(&input, (8, 8));
        assert_eq!(f[1].get_pixel(2, 2).0, [0, 0, 255, 255]);
        // Frame 2's rectangle was cleared to transparent before frame 3.
        assert_eq!(f[2].get_pixel(2, 2).0, [0, 0, 0, 0]);
        assert_eq!(f[2].get_pixel(4, 4).0, [0, 0, 255, 255]);
        // Frame 3 restored what was before it.
        assert_eq!(f[3].get_pixel(4, 4).0, [255, 0, 0, 255]);
        assert_eq!(f[3].get_pixel(2, 2).0, [0, 0, 0, 0]);
    }
}

//! Animated GIF and WebP, resized frame by frame into an animated GIF or WebP. Each frame is
//! composed onto the full canvas (GIF by [`gif_anim`](super::gif_anim), WebP by
//! [`webp_anim`](super::webp_anim)); every composed frame is
//! resampled with the one plan made for the canvas (a smart crop placed on the first frame), so
//! the output frames line up exactly,
//! converted from the input's embedded ICC profile to sRGB as a still is (after the resample, with
//! one transform looked up for the whole animation), and handed to the encoder before the next
//! frame is decoded. Frame delays and the loop count are kept.
//!
//! Memory: the GIF path holds one input canvas, one output frame and the output file. The WebP
//! path also holds every output frame until libwebp's animation encoder assembles them (the `webp`
//! crate takes all frames at once), which is why `max_animation_pixels` bounds the output's
//! frames × canvas as well as the input's.

use std::io::Cursor;
use std::time::{Duration, Instant};

use image::codecs::webp::WebPDecoder;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, RgbaImage};
use schemas::events::{Gravity, ImageFormat};

use super::colour::ToSrgb;
use super::encode::{GifStream, Settings};
use super::geometry::PixelRect;
use super::gif_anim::GifAnimation;
use super::probe::Header;
use super::webp_anim::WebpAnimation;
use super::{
    BoxError, KernelError, Limits, Request, Resized, check_encode_cost, check_output, finished,
    geometry, resample,
};

/// Bytes per pixel of the RGBA canvas the animation decoders compose onto, used to turn the pixel
/// limit into an allocation limit for `image`'s decoders.
const CANVAS_BYTES_PER_PIXEL: u64 = 4;

/// Resizes every frame of the animation `input` (whose `header` passed the animation limits) into
/// an animation of `output_format` (GIF or WebP).
///
/// Errors: [`KernelError::Undecodable`] for a frame that does not decode,
/// [`KernelError::TooManyFrames`] if the decoder yields more frames than the header declared and
/// the limit allows, [`KernelError::BadParameters`] when the planned output is over
/// `max_output_side` or its frames × canvas over `max_animation_pixels`, and
/// [`KernelError::Encode`] when the encoder fails.
pub fn resize(
    input: &[u8],
    header: &Header,
    request: &Request,
    output_format: ImageFormat,
    limits: &Limits,
    started: Instant,
) -> Result<Resized, KernelError> {
    let undecodable = |e: image::ImageError| KernelError::undecodable(header.format, e);
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_alloc = Some(limits.max_pixels.saturating_mul(CANVAS_BYTES_PER_PIXEL * 2));
    // A profile that cannot be read is no reason to refuse the pixels, as for a still.
    let readable = |profile: image::ImageResult<Option<Vec<u8>>>| {
        profile.unwrap_or_else(|e| {
            tracing::debug!(error = %e, "Ignoring an unreadable ICC profile");
            None
        })
    };
    let (frames, orientation, profile) = match header.format {
        ImageFormat::Gif => {
            let frames = GifAnimation::new(input, header.width, header.height, limits.max_pixels)?;
            let profile = frames.icc_profile();
            (
                InputFrames::Gif(Box::new(frames)),
                Orientation::NoTransforms,
                profile,
            )
        }
        ImageFormat::Webp => {
            // Read for its metadata only; the frames are composed by `webp_anim`.
            let mut decoder = WebPDecoder::new(Cursor::new(input)).map_err(undecodable)?;
            decoder
                .set_limits(decoder_limits.clone())
                .map_err(undecodable)?;
            let orientation = decoder.orientation().map_err(undecodable)?;
            let profile = readable(decoder.icc_profile());
            let frames = WebpAnimation::new(input, header.width, header.height, decoder_limits);
            (InputFrames::Webp(frames), orientation, profile)
        }
        other => {
            return Err(KernelError::undecodable(other, "not an animation format"));
        }
    };
    let to_srgb = ToSrgb::rgba8(profile.as_deref());

    let stored = (header.width, header.height);
    let upright = geometry::upright_size(stored, orientation);
    let plan = geometry::plan(upright, &request.target);
    check_output(&plan, limits)?;
    let output_pixels = u64::from(header.frames)
        .saturating_mul(u64::from(plan.canvas.0))
        .saturating_mul(u64::from(plan.canvas.1));
    if output_pixels > limits.max_animation_pixels {
        return Err(KernelError::BadParameters(format!(
            "the animated output would be {} frames of {}x{}, over the limit of {} pixels over \
             all frames; ask for a smaller size or frames=first",
            header.frames, plan.canvas.0, plan.canvas.1, limits.max_animation_pixels
        )));
    }
    check_encode_cost(output_format, &request.encoding, output_pixels, limits)?;
    let mut crop = geometry::rect_to_stored(plan.crop, orientation, stored);
    let size = geometry::upright_size(plan.size, orientation);

    let encode_failed = |source: BoxError| KernelError::Encode {
        format: output_format.name(),
        source,
    };
    let mut sink = match output_format {
        ImageFormat::Gif => Sink::Gif(
            GifStream::new(plan.canvas.0, plan.canvas.1, header.loops).map_err(encode_failed)?,
        ),
        _ => Sink::Webp(WebpFrames {
            width: plan.canvas.0,
            height: plan.canvas.1,
            frames: Vec::new(),
            elapsed_ms: 0,
        }),
    };

    // Decode, resize and encode time over all frames.
    let (mut decode, mut resize, mut encode) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut count = 0u32;
    let mut at = Instant::now();
    decode += at - started;
    for frame in frames {
        let (canvas, delay_ms) = frame?;
        count += 1;
        if count > limits.max_frames {
            return Err(KernelError::TooManyFrames {
                format: header.format.name(),
                frames: count,
                limit: limits.max_frames,
            });
        }
        let canvas = DynamicImage::ImageRgba8(canvas);
        let decoded_at = Instant::now();

        // The decoder composes onto the stored canvas; the crop is in its pixels, snapped and
        // clamped to them like a still's.
        let bounds = (canvas.width(), canvas.height());
        let scale = (
            f64::from(bounds.0) / f64::from(stored.0),
            f64::from(bounds.1) / f64::from(stored.1),
        );
        if count == 1 && request.target.gravity == Gravity::Smart {
            // One crop for every frame, so the output frames line up: the first frame's.
            crop = super::smart_crop(crop, &canvas, scale, stored);
        }
        let frame_crop = PixelRect::within(crop, scale, bounds);
        let mut image = resample::resample(canvas, frame_crop, size)?;
        // Colour: as for a still, on the resampled pixels and before padding.
        to_srgb.apply(&mut image);
        let image = resample::orient(image, orientation);
        let image = resample::finish(
            image,
            &plan,
            super::backdrop(request.background, output_format),
        );
        let resized_at = Instant::now();

        sink.push(image.into_rgba8().into_raw(), delay_ms)
            .map_err(encode_failed)?;
        let encoded_at = Instant::now();
        decode += decoded_at - at;
        resize += resized_at - decoded_at;
        encode += encoded_at - resized_at;
        at = Instant::now();
    }
    let finish_started = Instant::now();
    let bytes = sink
        .finish(&request.encoding, header.loops)
        .map_err(encode_failed)?;
    encode += finish_started.elapsed();
    let timings = [decode, resize, encode];
    finished(
        bytes,
        output_format,
        plan.canvas,
        header,
        upright,
        timings,
        limits,
    )
}

/// Where composed frames come from.
enum InputFrames<'a> {
    /// Boxed: the GIF decoder's state is several times the WebP walker's.
    Gif(Box<GifAnimation<'a>>),
    Webp(WebpAnimation<'a>),
}

impl Iterator for InputFrames<'_> {
    /// The whole canvas and its display time in milliseconds.
    type Item = Result<(RgbaImage, u32), KernelError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Self::Gif(frames) => Some(frames.next()?.map(|f| (f.canvas, f.duration_ms))),
            Self::Webp(frames) => Some(frames.next()?.map(|f| (f.canvas, f.duration_ms))),
        }
    }
}

/// Where resized frames go.
enum Sink {
    Gif(GifStream),
    Webp(WebpFrames),
}

impl Sink {
    /// Takes one full-canvas RGBA frame shown for `delay_ms`.
    fn push(&mut self, rgba: Vec<u8>, delay_ms: u32) -> Result<(), BoxError> {
        match self {
            // GIF counts in centiseconds.
            Self::Gif(gif) => gif.push(
                rgba,
                u16::try_from(delay_ms.div_ceil(10)).unwrap_or(u16::MAX),
            ),
            Self::Webp(webp) => {
                webp.frames.push((rgba, webp.elapsed_ms));
                webp.elapsed_ms = webp.elapsed_ms.saturating_add(delay_ms);
                Ok(())
            }
        }
    }

    /// The encoded animation.
    fn finish(self, settings: &Settings, loops: Option<u16>) -> Result<Vec<u8>, BoxError> {
        match self {
            Self::Gif(gif) => gif.finish(),
            Self::Webp(webp) => webp.encode(settings, loops),
        }
    }
}

/// Output frames waiting for libwebp's animation encoder, each with its start time in ms.
struct WebpFrames {
    width: u32,
    height: u32,
    frames: Vec<(Vec<u8>, u32)>,
    elapsed_ms: u32,
}

impl WebpFrames {
    /// Lossy (or, with `settings.lossless`, lossless) animated WebP. A GIF without a loop count
    /// plays once, so `None` becomes WebP's loop count 1.
    fn encode(self, settings: &Settings, loops: Option<u16>) -> Result<Vec<u8>, BoxError> {
        let mut config = settings.webp_config()?;
        if settings.lossless {
            config.lossless = 1;
        }
        let mut encoder = webp::AnimEncoder::new(self.width, self.height, &config);
        encoder.set_loop_count(i32::from(loops.unwrap_or(1)));
        for (rgba, start_ms) in &self.frames {
            let timestamp = i32::try_from(*start_ms).unwrap_or(i32::MAX);
            encoder.add_frame(webp::AnimFrame::from_rgba(
                rgba,
                self.width,
                self.height,
                timestamp,
            ));
        }
        let encoded = encoder
            .try_encode()
            .map_err(|e| format!("libwebp animation: {e:?}"))?;
        let mut bytes = encoded.to_vec();
        set_last_duration(&mut bytes, self.elapsed_ms);
        Ok(bytes)
    }
}

/// libwebp learns a frame's duration from the next frame's timestamp, and the `webp` crate never
/// tells it when the last frame ends (it gets the average duration). This rewrites the last
/// `ANMF` chunk's 24-bit duration so that all durations add up to `total_ms` again.
pub(super) fn set_last_duration(webp: &mut [u8], total_ms: u32) {
    let mut at = 12; // "RIFF", size, "WEBP"
    let mut durations = Vec::new();
    while let Some(chunk) = webp.get(at..at + 8) {
        let size = u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]) as usize;
        if &chunk[..4] == b"ANMF" {
            // Payload: x, y, width − 1, height − 1, duration (24 bits each), flags.
            if let Some(d) = webp.get(at + 20..at + 23) {
                durations.push((at + 20, u32::from_le_bytes([d[0], d[1], d[2], 0])));
            }
        }
        at = at
            .saturating_add(8)
            .saturating_add(size)
            .saturating_add(size & 1);
    }
    if let Some(((last, _), earlier)) = durations.split_last() {
        let earlier: u32 = earlier.iter().map(|(_, d)| d).sum();
        let duration = total_ms.saturating_sub(earlier).min(0x00FF_FFFF);
        if let Some(field) = webp.get_mut(*last..*last + 3) {
            field.copy_from_slice(&duration.to_le_bytes()[..3]);
        }
    }
}

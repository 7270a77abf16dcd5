//! The resize kernel: bytes in, resized image bytes out. Pure, synchronous and single-threaded;
//! the resizer runs many calls in parallel on its CPU pool, never one call on many threads.
//!
//! The pipeline, by module:
//! 1. [`probe`] sniffs the format by magic bytes and reads the size from the header alone, so the
//!    size and pixel limits are enforced before anything is allocated from the image's claims;
//! 2. [`geometry`] turns fit, gravity and the no-enlargement rule into a crop, a resampled size
//!    and a canvas, in the upright (EXIF-oriented) frame, and maps the crop onto stored pixels;
//! 3. [`decode`] decodes, JPEG with DCT shrink-on-load to the smallest size that still leaves the
//!    resampler a real reduction to do;
//! 4. [`resample`] filters the crop down to size on SIMD, [`colour`] converts the small result
//!    from its embedded ICC profile to sRGB, then it is oriented and padded;
//! 5. [`encode`] writes JPEG, PNG or WebP from pixels only, so no input metadata survives.
//!
//! Every failure is permanent: the same input and parameters fail the same way on any machine,
//! so the caller answers it (and dead-letters it) rather than retrying.

mod colour;
mod decode;
mod encode;
mod geometry;
mod probe;
mod resample;

#[cfg(test)]
mod tests;

use std::time::Instant;

use schemas::events::{Fit, ImageFormat, ResizeParams, StageTimings};

use geometry::{Rect, Target};

/// Boxed source error, for failures whose library types differ by format.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Quality used when the request names none (JPEG).
pub const DEFAULT_QUALITY: u8 = 80;

/// The smallest ratio between the (shrunk-on-load) decoded JPEG and the output. 1.0 lets the DCT
/// do every power-of-two step it can and leaves the resampler a reduction of 1–2×, as libvips does;
/// libjpeg-turbo's scaled IDCT is itself a proper low-pass (it drops the high-frequency
/// coefficients), so this costs no visible sharpness and halves or quarters the decode work.
const JPEG_SHRINK_HEADROOM: f64 = 1.0;

/// What the kernel accepts. Enforced before any pixel buffer is allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest encoded input, in bytes.
    pub max_input_bytes: usize,
    /// Largest input, in pixels (width × height from the header).
    pub max_pixels: u64,
    /// Largest output width or height, in pixels; also bounds the requested box.
    pub max_output_side: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_input_bytes: 8 * 1024 * 1024,
            max_pixels: 50_000_000,
            max_output_side: 8192,
        }
    }
}

/// A resized image and what it was made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resized {
    /// Encoded format.
    pub format: ImageFormat,
    /// Output width in pixels.
    pub width: u32,
    /// Output height in pixels.
    pub height: u32,
    /// Encoded bytes.
    pub bytes: Vec<u8>,
    /// Input format, from the magic bytes.
    pub input_format: ImageFormat,
    /// Input width as displayed (after EXIF orientation).
    pub input_width: u32,
    /// Input height as displayed (after EXIF orientation).
    pub input_height: u32,
    /// Decode, resize and encode durations; `queue_us` is the caller's to fill.
    pub timings: StageTimings,
}

/// Why a resize failed. Every variant is permanent (see the module docs); [`status`](Self::status)
/// and [`code`](Self::code) are the stable client-facing mapping. The `Display` text of 4xx
/// variants is safe to show clients; 5xx variants say only which stage failed, and their `source`
/// is for the log.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The parameters are invalid on their own or for this image.
    #[error("bad parameters: {0}")]
    BadParameters(String),
    /// The encoded input is over `max_input_bytes`.
    #[error("input is {size} bytes, over the limit of {limit}")]
    PayloadTooLarge { size: usize, limit: usize },
    /// Not JPEG, PNG, WebP or GIF by magic bytes.
    #[error("input is not a JPEG, PNG, WebP or GIF image")]
    UnsupportedMediaType,
    /// The header claims more pixels than `max_pixels`.
    #[error("{format} image is {width}x{height}, over the limit of {limit} pixels")]
    TooManyPixels {
        format: &'static str,
        width: u32,
        height: u32,
        limit: u64,
    },
    /// Decoding failed: truncated, corrupt, or a header that cannot be read.
    #[error("could not decode the {format} image: {source}")]
    Undecodable {
        format: &'static str,
        #[source]
        source: BoxError,
    },
    /// The resampler refused its input (a bug: the plan guarantees valid sizes).
    #[error("resampling failed")]
    Resample(#[source] fast_image_resize::ResizeError),
    /// The encoder failed (a bug or resource exhaustion).
    #[error("encoding {format} failed")]
    Encode {
        format: &'static str,
        #[source]
        source: BoxError,
    },
}

impl KernelError {
    /// HTTP status for the client.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadParameters(_) => 400,
            Self::PayloadTooLarge { .. } => 413,
            Self::UnsupportedMediaType => 415,
            Self::TooManyPixels { .. } | Self::Undecodable { .. } => 422,
            Self::Resample(_) | Self::Encode { .. } => 500,
        }
    }

    /// Stable machine-readable code (also the `outcome` of usage records).
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadParameters(_) => "bad_parameters",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::TooManyPixels { .. } => "too_many_pixels",
            Self::Undecodable { .. } => "undecodable_image",
            Self::Resample(_) | Self::Encode { .. } => "internal_error",
        }
    }

    /// Always false: the kernel is deterministic, so a retry fails the same way.
    pub fn is_retryable(&self) -> bool {
        false
    }

    fn undecodable(format: ImageFormat, source: impl Into<BoxError>) -> Self {
        Self::Undecodable {
            format: format.name(),
            source: source.into(),
        }
    }
}

/// Decodes `input`, resizes it as `params` say and encodes the result.
///
/// Output format: `params.format`, else the input's (GIF becomes PNG). JPEG, PNG and WebP
/// (lossless) can be written; asking for GIF or AVIF is a 400 `bad_parameters`, because the
/// input is fine and only the request names something this service does not produce.
pub fn resize(
    input: &[u8],
    params: &ResizeParams,
    limits: &Limits,
) -> Result<Resized, KernelError> {
    let started = Instant::now();
    let request = validate(params, limits)?;
    if input.len() > limits.max_input_bytes {
        return Err(KernelError::PayloadTooLarge {
            size: input.len(),
            limit: limits.max_input_bytes,
        });
    }
    let header = probe::probe(input)?;
    if u64::from(header.width) * u64::from(header.height) > limits.max_pixels {
        return Err(KernelError::TooManyPixels {
            format: header.format.name(),
            width: header.width,
            height: header.height,
            limit: limits.max_pixels,
        });
    }
    let output_format = request.format.unwrap_or(match header.format {
        ImageFormat::Gif => ImageFormat::Png,
        other => other,
    });

    let source = decode::Source::open(input, &header, limits.max_pixels)?;
    let orientation = source.orientation();
    let stored = (header.width, header.height);
    let upright = geometry::upright_size(stored, orientation);
    let plan = geometry::plan(upright, &request.target);
    if plan.canvas.0 > limits.max_output_side || plan.canvas.1 > limits.max_output_side {
        return Err(KernelError::BadParameters(format!(
            "the output would be {}x{}, over the limit of {} per side",
            plan.canvas.0, plan.canvas.1, limits.max_output_side
        )));
    }
    // Resample in the stored frame and rotate only the small result.
    let crop = geometry::rect_to_stored(plan.crop, orientation, stored);
    let size = geometry::upright_size(plan.size, orientation);
    let shrink = geometry::jpeg_shrink((crop.w, crop.h), size, JPEG_SHRINK_HEADROOM);
    let decoded = source.decode(shrink, limits.max_pixels)?;
    let decoded_at = Instant::now();

    // The decoder may have shrunk the image (by a rounded-up factor); scale the crop to match.
    let (sx, sy) = (
        f64::from(decoded.image.width()) / f64::from(stored.0),
        f64::from(decoded.image.height()) / f64::from(stored.1),
    );
    let crop = Rect {
        x: crop.x * sx,
        y: crop.y * sy,
        w: crop.w * sx,
        h: crop.h * sy,
    };
    let mut image = resample::resample(decoded.image, crop, size)?;
    // Colour: converted on the small image, before padding adds pure white or transparency.
    colour::to_srgb(&mut image, decoded.profile.as_deref());
    let image = resample::orient(image, decoded.orientation);
    let transparent = output_format != ImageFormat::Jpeg;
    let image = resample::pad(image, plan.canvas, plan.offset, transparent);
    let resized_at = Instant::now();

    let (width, height) = (image.width(), image.height());
    let bytes = encode::encode(image, output_format, request.quality)?;
    let encoded_at = Instant::now();

    Ok(Resized {
        format: output_format,
        width,
        height,
        bytes,
        input_format: header.format,
        input_width: upright.0,
        input_height: upright.1,
        timings: StageTimings {
            queue_us: 0,
            decode_us: micros(decoded_at - started),
            resize_us: micros(resized_at - decoded_at),
            encode_us: micros(encoded_at - resized_at),
        },
    })
}

fn micros(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Parameters after validation.
struct Request {
    target: Target,
    format: Option<ImageFormat>,
    quality: u8,
}

/// Checks the parameters alone (before looking at the image) and reports every problem at once.
fn validate(params: &ResizeParams, limits: &Limits) -> Result<Request, KernelError> {
    let mut problems = Vec::new();
    let mut side = |name: &str, value: Option<i32>| -> Option<u32> {
        let v = value?;
        match u32::try_from(v) {
            Ok(v) if (1..=limits.max_output_side).contains(&v) => Some(v),
            _ => {
                problems.push(format!(
                    "{name} must be 1–{}, got {v}",
                    limits.max_output_side
                ));
                None
            }
        }
    };
    let width = side("width", params.width);
    let height = side("height", params.height);
    let needs_both = matches!(params.fit, Fit::Cover | Fit::Contain | Fit::Fill);
    if needs_both && (params.width.is_none() || params.height.is_none()) {
        problems.push(format!("fit {:?} needs both width and height", params.fit).to_lowercase());
    }
    let quality = match params.quality {
        None => DEFAULT_QUALITY,
        Some(q) => match u8::try_from(q) {
            Ok(q) if (1..=100).contains(&q) => q,
            _ => {
                problems.push(format!("quality must be 1–100, got {q}"));
                DEFAULT_QUALITY
            }
        },
    };
    if let Some(f @ (ImageFormat::Gif | ImageFormat::Avif)) = params.format {
        problems.push(format!(
            "{} output is not supported (jpeg, png, webp are)",
            f.name()
        ));
    }
    if !problems.is_empty() {
        return Err(KernelError::BadParameters(problems.join("; ")));
    }
    Ok(Request {
        target: Target {
            width,
            height,
            fit: params.fit,
            gravity: params.gravity,
            enlarge: params.enlarge,
        },
        format: params.format,
        quality,
    })
}

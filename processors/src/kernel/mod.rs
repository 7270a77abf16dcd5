//! The resize kernel: bytes in, resized image bytes out. Pure, synchronous and single-threaded;
//! the resizer runs many calls in parallel on its CPU pool, never one call on many threads.
//!
//! The pipeline, by module:
//! 1. [`probe`] sniffs the format by magic bytes and reads the size from the header alone, so the
//!    size and pixel limits are enforced before anything is allocated from the image's claims;
//! 2. [`geometry`] turns fit, gravity (a focus point included) and the no-enlargement rule into a
//!    crop, a resampled size and a canvas, in the upright (EXIF-oriented) frame, and maps the crop
//!    onto stored pixels; a smart crop is then placed on the decoded pixels by [`attention`];
//! 3. [`decode`] decodes, JPEG with DCT shrink-on-load to the smallest size that still leaves the
//!    resampler a real reduction to do, HEIC and AVIF through libheif in [`heif`];
//! 4. [`resample`] filters the crop down to size on SIMD, [`colour`] converts the small result
//!    from its embedded ICC profile to sRGB, then it is oriented, padded and, when the request
//!    names a background, flattened onto it;
//! 5. [`encode`] writes JPEG, PNG, WebP (lossy or lossless), AVIF or GIF from pixels only, so no
//!    input metadata survives.
//!
//! Animated GIF and WebP inputs take the same steps frame by frame in [`animation`], with one plan
//! for every frame, when the request keeps every frame and the output can be animated; animated
//! WebP frames are composed per the WebP container specification in [`webp_anim`], GIF frames on
//! their screen as browsers draw them in [`gif_anim`].
//!
//! Every failure is permanent: the same input and parameters fail the same way on any machine,
//! so the caller answers it (and dead-letters it) rather than retrying.

mod animation;
mod attention;
mod colour;
mod decode;
mod encode;
mod geometry;
mod gif_anim;
mod heif;
mod probe;
mod resample;
mod webp_anim;

#[cfg(test)]
mod format_tests;
#[cfg(test)]
mod heif_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod web_tests;

use std::time::{Duration, Instant};

use schemas::events::{AutoFormat, Fit, Frames, Gravity, ImageFormat, ResizeParams, StageTimings};

use geometry::{PixelRect, Target};

/// Boxed source error, for failures whose library types differ by format.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Quality used when the request names none (JPEG, lossy WebP, AVIF).
pub const DEFAULT_QUALITY: u8 = 80;

/// Largest `effort`: 0 is the fastest encode, 9 the smallest output (the scale libvips and sharp
/// use for AVIF; WebP's 0–6 `method` is the same scale capped at 6).
pub const MAX_EFFORT: u8 = 9;

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
    /// Largest output, in pixels (canvas width × height), checked from the plan before any pixel
    /// buffer is allocated: a 1×1 input may not ask for a 67-megapixel canvas.
    pub max_output_pixels: u64,
    /// Largest encoded output, in bytes: what one reply record can carry. Over it, the request
    /// fails at once with `output_too_large` instead of failing to produce.
    pub max_output_bytes: usize,
    /// Most frames an animation may have to be resized as one (counted from the header).
    pub max_frames: u32,
    /// Most pixels over all frames of an animation: frames × canvas, both from the header, for
    /// the input (every frame is composed onto the full canvas and resampled), and frames × output
    /// canvas for the output, whose frames the WebP animation encoder holds until it assembles.
    pub max_animation_pixels: u64,
    /// Longest one encode may take on one core by the kernel's cost model
    /// ([`encode::encode_ns_per_pixel`]); checked from the plan, before decoding. AVIF (and lossy
    /// WebP at the highest efforts) cost up to 14 µs per output pixel: unbounded, a 4096×4096
    /// AVIF takes 20 s, longer than any client waits, and holds a worker all that time.
    pub max_encode_time: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_input_bytes: 8 * 1024 * 1024,
            max_pixels: 50_000_000,
            max_output_side: 8192,
            // 4096 × 4096: an RGBA canvas of 64 MiB. Larger outputs of photos rarely fit a reply
            // record anyway (`max_output_bytes`).
            max_output_pixels: 16_777_216,
            max_output_bytes: 8 * 1024 * 1024,
            max_frames: 500,
            max_animation_pixels: 50_000_000,
            // Well inside the api's default 10 s deadline, with room to queue behind other work.
            max_encode_time: Duration::from_secs(4),
        }
    }
}

impl Limits {
    /// Rules between the limits; one message per broken rule, named as in `[resizer]`.
    pub fn validate(&self, errors: &mut Vec<String>) {
        if self.max_pixels == 0 || self.max_input_bytes == 0 {
            errors.push("resizer.max_pixels and resizer.max_input_bytes must be positive".into());
        }
        if self.max_output_side == 0 || self.max_output_pixels == 0 {
            errors.push(
                "resizer.max_output_side and resizer.max_output_pixels must be positive".into(),
            );
        }
        if self.max_output_pixels > self.max_pixels {
            errors.push(format!(
                "resizer.max_output_pixels ({}) must not exceed resizer.max_pixels ({})",
                self.max_output_pixels, self.max_pixels
            ));
        }
        if self.max_frames == 0 || self.max_animation_pixels == 0 {
            errors.push(
                "resizer.max_frames and resizer.max_animation_pixels must be positive".into(),
            );
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
    /// Not JPEG, PNG, WebP, GIF, AVIF or HEIC by magic bytes.
    #[error("input is not a JPEG, PNG, WebP, GIF, AVIF or HEIC image")]
    UnsupportedMediaType,
    /// A well-known image format this service does not read, named from its magic bytes
    /// (`"TIFF"`, `"BMP"`, `"JPEG XL"`).
    #[error("input is a {0} image; only JPEG, PNG, WebP, GIF, AVIF and HEIC are read")]
    UnsupportedFormat(&'static str),
    /// The animation has more frames than `max_frames` (counted from the header).
    #[error("{format} animation has {frames} frames, over the limit of {limit}")]
    TooManyFrames {
        format: &'static str,
        frames: u32,
        limit: u32,
    },
    /// The animation's frames × canvas is over `max_animation_pixels` (from the header).
    #[error(
        "{format} animation is {frames} frames of {width}x{height}, over the limit of {limit} \
         pixels over all frames"
    )]
    AnimationTooLarge {
        format: &'static str,
        frames: u32,
        width: u32,
        height: u32,
        limit: u64,
    },
    /// The header claims more pixels than `max_pixels`.
    #[error("{format} image is {width}x{height}, over the limit of {limit} pixels")]
    TooManyPixels {
        format: &'static str,
        width: u32,
        height: u32,
        limit: u64,
    },
    /// The planned output canvas is over `max_output_pixels`.
    #[error("the output would be {width}x{height}, over the limit of {limit} pixels")]
    TooManyOutputPixels { width: u32, height: u32, limit: u64 },
    /// Encoding this many pixels in this format at this effort would take longer than
    /// `max_encode_time` (the kernel's cost model).
    #[error(
        "{format} output at effort {effort} is limited to {limit} pixels (the output would be \
         {pixels}); ask for a smaller size, a lower effort or another format"
    )]
    EncodeTooCostly {
        format: &'static str,
        effort: u8,
        pixels: u64,
        limit: u64,
    },
    /// The encoded output is over `max_output_bytes`, more than one reply can carry.
    #[error(
        "the encoded {format} output is {size} bytes, over the limit of {limit}; ask for a smaller size, a lower quality or another format"
    )]
    OutputTooLarge {
        format: &'static str,
        size: usize,
        limit: usize,
    },
    /// The JPEG ends before its last scan is complete (a truncated upload).
    #[error("the JPEG image is truncated: it ends before all of its pixels ({detail})")]
    Truncated { detail: String },
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
    /// Every code [`code`](Self::code) can return, for documentation and its tests.
    pub const CODES: &'static [&'static str] = &[
        "bad_parameters",
        "payload_too_large",
        "unsupported_media_type",
        "too_many_pixels",
        "too_many_output_pixels",
        "too_many_frames",
        "output_too_large",
        "truncated_image",
        "undecodable_image",
        "internal_error",
    ];

    /// HTTP status for the client.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadParameters(_) => 400,
            Self::PayloadTooLarge { .. } => 413,
            Self::UnsupportedMediaType | Self::UnsupportedFormat(_) => 415,
            Self::TooManyPixels { .. }
            | Self::TooManyOutputPixels { .. }
            | Self::EncodeTooCostly { .. }
            | Self::OutputTooLarge { .. }
            | Self::Truncated { .. }
            | Self::TooManyFrames { .. }
            | Self::AnimationTooLarge { .. }
            | Self::Undecodable { .. } => 422,
            Self::Resample(_) | Self::Encode { .. } => 500,
        }
    }

    /// Stable machine-readable code (also the `outcome` of usage records).
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadParameters(_) => "bad_parameters",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UnsupportedMediaType | Self::UnsupportedFormat(_) => "unsupported_media_type",
            Self::TooManyPixels { .. } | Self::AnimationTooLarge { .. } => "too_many_pixels",
            Self::TooManyOutputPixels { .. } | Self::EncodeTooCostly { .. } => {
                "too_many_output_pixels"
            }
            Self::OutputTooLarge { .. } => "output_too_large",
            Self::Truncated { .. } => "truncated_image",
            Self::TooManyFrames { .. } => "too_many_frames",
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
/// Output format: `params.format`; else, with `params.auto_format` (what the client's `Accept`
/// allows), AVIF for a still whose encode the cost model puts within its budget, else WebP;
/// else the input's (a still GIF becomes PNG, HEIC becomes JPEG). JPEG, PNG, WebP (lossy, or lossless with
/// `params.lossless`), AVIF and GIF can be written.
///
/// Gravity `FocusPoint` centres a crop on `params.focus_point`; `Smart` centres it on the most
/// interesting point of the decoded image ([`attention`]); both as far as the edges allow.
///
/// An animated GIF or WebP with `params.frames` = all and GIF or WebP output (the default for
/// them) is resized frame by frame into an animation, once the header's frame count and frames ×
/// canvas have passed `limits` (else 422 `too_many_frames` / `too_many_pixels`, before anything
/// is decoded). Any other request on an animation makes a still of its first frame.
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
    let animated = header.frames > 1 && request.frames == Frames::All;
    if animated {
        // AVIF is never negotiated for an animation, so no plan is needed to choose.
        let output_format = output_format(&request, header.format, true, 0);
        check_lossless(&request, output_format)?;
        if matches!(output_format, ImageFormat::Gif | ImageFormat::Webp) {
            check_animation(&header, limits)?;
            return animation::resize(input, &header, &request, output_format, limits, started);
        }
    }

    let source = decode::Source::open(input, &header, limits.max_pixels)?;
    let orientation = source.orientation();
    let stored = (header.width, header.height);
    let upright = geometry::upright_size(stored, orientation);
    let plan = geometry::plan(upright, &request.target);
    check_output(&plan, limits)?;
    let (width, height) = plan.canvas;
    let output_format = output_format(
        &request,
        header.format,
        false,
        u64::from(width) * u64::from(height),
    );
    check_lossless(&request, output_format)?;
    check_encode_cost(
        output_format,
        &request.encoding,
        u64::from(width) * u64::from(height),
        limits,
    )?;
    // Resample in the stored frame and rotate only the small result.
    let crop = geometry::rect_to_stored(plan.crop, orientation, stored);
    let size = geometry::upright_size(plan.size, orientation);
    let shrink = geometry::jpeg_shrink((crop.w, crop.h), size, JPEG_SHRINK_HEADROOM);
    let decoded = source.decode(shrink, limits.max_pixels)?;
    let decoded_at = Instant::now();

    // The decoder may have shrunk the image (libjpeg rounds each side up); scale the crop to
    // match and snap it to whole decoded pixels inside the decoded image.
    let bounds = (decoded.image.width(), decoded.image.height());
    let scale = (
        f64::from(bounds.0) / f64::from(stored.0),
        f64::from(bounds.1) / f64::from(stored.1),
    );
    let crop = match request.target.gravity {
        Gravity::Smart => smart_crop(crop, &decoded.image, scale, stored),
        _ => crop,
    };
    let crop = PixelRect::within(crop, scale, bounds);
    let mut image = resample::resample(decoded.image, crop, size)?;
    // Colour: converted on the small image, before padding adds pure white or transparency.
    colour::to_srgb(&mut image, decoded.profile.as_deref());
    let image = resample::orient(image, decoded.orientation);
    let image = resample::finish(image, &plan, backdrop(request.background, output_format));
    let resized_at = Instant::now();

    let (width, height) = (image.width(), image.height());
    let bytes = encode::encode(image, output_format, &request.encoding)?;
    let encoded_at = Instant::now();
    let timings = [
        decoded_at - started,
        resized_at - decoded_at,
        encoded_at - resized_at,
    ];
    finished(
        bytes,
        output_format,
        (width, height),
        &header,
        upright,
        timings,
        limits,
    )
}

/// The output format: the request's; else, with `auto_format`, AVIF when accepted, the output
/// is a still (`animated`: an animation is being kept), not lossless, and the cost model puts the
/// encode of `pixels` within the AVIF budget, else WebP when accepted; else the input's (a still
/// GIF becomes PNG; HEIC, which imgpipe does not write and browsers cannot show, becomes JPEG).
fn output_format(
    request: &Request,
    input: ImageFormat,
    animated: bool,
    pixels: u64,
) -> ImageFormat {
    if let Some(format) = request.format {
        return format;
    }
    if let Some(auto) = request.auto_format {
        if auto.avif
            && !animated
            && !request.encoding.lossless
            && avif_within_budget(&auto, &request.encoding, pixels)
        {
            return ImageFormat::Avif;
        }
        if auto.webp {
            return ImageFormat::Webp;
        }
    }
    match input {
        ImageFormat::Gif if animated => ImageFormat::Gif,
        ImageFormat::Gif => ImageFormat::Png,
        ImageFormat::Heic => ImageFormat::Jpeg,
        other => other,
    }
}

/// Whether encoding `pixels` as AVIF with `settings` fits `auto.avif_budget_ms` of one core by
/// the cost model ([`encode::encode_ns_per_pixel`]); a budget of 0 or less never does.
fn avif_within_budget(auto: &AutoFormat, settings: &encode::Settings, pixels: u64) -> bool {
    let Ok(budget_ms) = u64::try_from(auto.avif_budget_ms) else {
        return false;
    };
    let cost_ns = encode::encode_ns_per_pixel(ImageFormat::Avif, settings).saturating_mul(pixels);
    budget_ms > 0 && cost_ns <= budget_ms.saturating_mul(1_000_000)
}

/// Refuses `lossless` for an output format that has no lossless mode.
fn check_lossless(request: &Request, format: ImageFormat) -> Result<(), KernelError> {
    if request.encoding.lossless && !matches!(format, ImageFormat::Webp | ImageFormat::Png) {
        return Err(KernelError::BadParameters(format!(
            "lossless=true needs webp or png output, and the output would be {}",
            format.name()
        )));
    }
    Ok(())
}

/// `crop` (in stored pixels of an image of `stored` size) moved to centre on the most interesting
/// point of `image`, the decoded pixels (`scale`: decoded ÷ stored pixels per axis), as far as the
/// edges allow. The stored frame differs from the upright one by a rotation or flip only, which
/// moves the point and the crop alike, so placing it here is placing it upright.
fn smart_crop(
    crop: geometry::Rect,
    image: &image::DynamicImage,
    scale: (f64, f64),
    stored: (u32, u32),
) -> geometry::Rect {
    let (x, y) = attention::focus(image, (crop.w * scale.0, crop.h * scale.1));
    geometry::centred_on(
        crop,
        (x / scale.0, y / scale.1),
        (f64::from(stored.0), f64::from(stored.1)),
    )
}

/// The kernel's answer: `bytes` of `format` at `size`, made from the image of `header` (`upright`
/// once oriented), in the given decode, resize and encode times; refused if it does not fit one
/// reply record.
fn finished(
    bytes: Vec<u8>,
    format: ImageFormat,
    size: (u32, u32),
    header: &probe::Header,
    upright: (u32, u32),
    [decode, resize, encode]: [Duration; 3],
    limits: &Limits,
) -> Result<Resized, KernelError> {
    check_encoded(&bytes, format, limits)?;
    Ok(Resized {
        format,
        width: size.0,
        height: size.1,
        bytes,
        input_format: header.format,
        input_width: upright.0,
        input_height: upright.1,
        timings: StageTimings {
            queue_us: 0,
            decode_us: micros(decode),
            resize_us: micros(resize),
            encode_us: micros(encode),
            fetch_us: 0,
        },
    })
}

/// The output limits of a plan, checked before decoding: the canvas is the largest buffer the
/// plan allocates (`size` ≤ canvas), so nothing is allocated for an output that is refused.
fn check_output(plan: &geometry::Plan, limits: &Limits) -> Result<(), KernelError> {
    let (width, height) = plan.canvas;
    if width > limits.max_output_side || height > limits.max_output_side {
        return Err(KernelError::BadParameters(format!(
            "the output would be {width}x{height}, over the limit of {} per side",
            limits.max_output_side
        )));
    }
    if u64::from(width) * u64::from(height) > limits.max_output_pixels {
        return Err(KernelError::TooManyOutputPixels {
            width,
            height,
            limit: limits.max_output_pixels,
        });
    }
    Ok(())
}

/// Refuses an output whose encode would take longer than `max_encode_time` by the cost model
/// (`pixels`: the canvas, times the frames of an animation).
fn check_encode_cost(
    format: ImageFormat,
    settings: &encode::Settings,
    pixels: u64,
    limits: &Limits,
) -> Result<(), KernelError> {
    let ns_per_pixel = encode::encode_ns_per_pixel(format, settings);
    if ns_per_pixel == 0 {
        return Ok(());
    }
    let budget_ns = u64::try_from(limits.max_encode_time.as_nanos()).unwrap_or(u64::MAX);
    let limit = budget_ns / ns_per_pixel;
    if pixels > limit {
        return Err(KernelError::EncodeTooCostly {
            format: format.name(),
            effort: settings.effort.unwrap_or(match format {
                ImageFormat::Avif => encode::DEFAULT_AVIF_EFFORT,
                _ => encode::DEFAULT_WEBP_EFFORT,
            }),
            pixels,
            limit,
        });
    }
    Ok(())
}

/// Refuses an encoded output bigger than one reply record.
fn check_encoded(bytes: &[u8], format: ImageFormat, limits: &Limits) -> Result<(), KernelError> {
    if bytes.len() > limits.max_output_bytes {
        return Err(KernelError::OutputTooLarge {
            format: format.name(),
            size: bytes.len(),
            limit: limits.max_output_bytes,
        });
    }
    Ok(())
}

/// The animation limits, from the header alone: nothing has been decoded yet.
fn check_animation(header: &probe::Header, limits: &Limits) -> Result<(), KernelError> {
    if header.frames > limits.max_frames {
        return Err(KernelError::TooManyFrames {
            format: header.format.name(),
            frames: header.frames,
            limit: limits.max_frames,
        });
    }
    let pixels = u64::from(header.frames)
        .saturating_mul(u64::from(header.width))
        .saturating_mul(u64::from(header.height));
    if pixels > limits.max_animation_pixels {
        return Err(KernelError::AnimationTooLarge {
            format: header.format.name(),
            frames: header.frames,
            width: header.width,
            height: header.height,
            limit: limits.max_animation_pixels,
        });
    }
    Ok(())
}

/// What padding and transparency become: the request's background (the output is flattened
/// onto it, in every format, as imgproxy does), else transparent where the format has alpha and
/// white for JPEG (whose encoder flattens onto white).
fn backdrop(background: Option<[u8; 3]>, format: ImageFormat) -> resample::Backdrop {
    match background {
        Some(colour) => resample::Backdrop::Flatten(colour),
        None if format == ImageFormat::Jpeg => resample::Backdrop::PadWhite,
        None => resample::Backdrop::Transparent,
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Parameters after validation.
struct Request {
    target: Target,
    format: Option<ImageFormat>,
    encoding: encode::Settings,
    frames: Frames,
    /// sRGB colour to flatten onto and pad with; `None`: transparent padding where the format
    /// has alpha, white for JPEG.
    background: Option<[u8; 3]>,
    /// What `Accept` allows when `format` is `None`.
    auto_format: Option<AutoFormat>,
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
    let effort = match params.effort {
        None => None,
        Some(e) => match u8::try_from(e) {
            Ok(e) if e <= MAX_EFFORT => Some(e),
            _ => {
                problems.push(format!("effort must be 0–{MAX_EFFORT}, got {e}"));
                None
            }
        },
    };
    let background = params.background.and_then(|c| {
        let channel = |v: i32| u8::try_from(v).ok();
        match (channel(c.r), channel(c.g), channel(c.b)) {
            (Some(r), Some(g), Some(b)) => Some([r, g, b]),
            _ => {
                problems.push(format!(
                    "background channels must be 0–255, got {}, {}, {}",
                    c.r, c.g, c.b
                ));
                None
            }
        }
    });
    // The point is kept only with its gravity (another gravity ignores it).
    let focus_point = match (params.gravity, params.focus_point) {
        (Gravity::FocusPoint, Some(p))
            if p.x.is_finite()
                && p.y.is_finite()
                && (0.0..=1.0).contains(&p.x)
                && (0.0..=1.0).contains(&p.y) =>
        {
            Some(p)
        }
        (Gravity::FocusPoint, Some(p)) => {
            problems.push(format!(
                "the focus point must be 0–1 on each axis, got {}, {}",
                p.x, p.y
            ));
            None
        }
        (Gravity::FocusPoint, None) => {
            problems.push("gravity focus_point needs a focus point".into());
            None
        }
        _ => None,
    };
    if let Some(format) = params.format.filter(|f| !f.is_output()) {
        problems.push(format!(
            "{} is read but not written; ask for jpeg, png, webp, gif or avif",
            format.name()
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
            focus_point,
            enlarge: params.enlarge,
        },
        format: params.format,
        encoding: encode::Settings {
            quality,
            lossless: params.lossless,
            effort,
        },
        frames: params.frames,
        background,
        auto_format: params.auto_format,
    })
}

//! Decoding to pixels. JPEG goes through libjpeg-turbo with DCT shrink-on-load (the decoder
//! produces a 1/2, 1/4 or 1/8 size image for almost the cost of the entropy decoding alone), CMYK
//! and YCCK JPEGs included: they decode to CMYK, which [`colour`] turns into sRGB straight away.
//! GIF is drawn on its screen by [`gif_anim`](super::gif_anim), HEIC and AVIF are decoded by
//! libheif in [`heif`]; every other format goes through `image`. The embedded ICC profile of RGB and gray images is
//! handed on with the pixels, for conversion once they are small.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, GrayImage, ImageDecoder, ImageReader, RgbImage};
use schemas::events::ImageFormat;
use turbojpeg::{Colorspace, Decompressor, PixelFormat, ScalingFactor};

use super::KernelError;
use super::colour;
use super::gif_anim::GifAnimation;
use super::heif;
use super::probe::{self, Header};

/// Progressive scans allowed per JPEG. Real encoders use about ten; a crafted file with thousands
/// of tiny scans costs quadratic CPU (libjpeg-turbo's own advice is to cap it).
const MAX_JPEG_SCANS: u32 = 500;

/// Bytes per pixel of the widest layout `image` may decode to (RGBA, 16 bits per channel), used to
/// turn the pixel limit into an allocation limit for `image`'s decoders.
const MAX_BYTES_PER_PIXEL: u64 = 8;

/// An image whose orientation is known and whose pixels may still be waiting to be decoded: JPEG
/// pixels are decoded only once the plan has chosen the shrink-on-load factor.
pub enum Source<'a> {
    /// A JPEG libjpeg-turbo can decode, not yet decoded.
    Jpeg {
        input: &'a [u8],
        orientation: Orientation,
        /// CMYK or YCCK: decoded as CMYK and converted to sRGB before anything else.
        cmyk: bool,
    },
    /// Already decoded by `image` (stored orientation, full size).
    Decoded {
        image: DynamicImage,
        orientation: Orientation,
        profile: Option<Vec<u8>>,
    },
}

/// Decoded pixels in stored orientation, possibly shrunk on load.
pub struct Decoded {
    /// The pixels.
    pub image: DynamicImage,
    /// The EXIF orientation still to apply.
    pub orientation: Orientation,
    /// The embedded ICC profile the pixels are still in, for [`colour::to_srgb`]; `None` when
    /// there is none or the pixels are sRGB already (CMYK is converted during decoding).
    pub profile: Option<Vec<u8>>,
}

impl<'a> Source<'a> {
    /// Reads orientation cheaply for JPEG, or decodes other formats outright.
    pub fn open(input: &'a [u8], header: &Header, max_pixels: u64) -> Result<Self, KernelError> {
        if header.format == ImageFormat::Jpeg {
            // From our own header walk, not libjpeg-turbo's header reader: that one fails on the
            // harmless warnings (stray bytes between segments) the decoder later tolerates.
            let orientation = probe::jpeg_orientation(input);
            let cmyk = probe::jpeg_is_cmyk(input);
            return Ok(Self::Jpeg {
                input,
                orientation,
                cmyk,
            });
        }
        let input = match header.format {
            ImageFormat::Png => with_trailer(input, &IEND),
            _ => std::borrow::Cow::Borrowed(input),
        };
        let (image, orientation, profile) = match header.format {
            ImageFormat::Gif => first_gif_frame(&input, header, max_pixels)?,
            // Upright already: libheif applies the HEIF transforms (see `heif`).
            ImageFormat::Avif | ImageFormat::Heic => {
                let (image, profile) = heif::decode(&input, header.format, max_pixels)?;
                (image, Orientation::NoTransforms, profile)
            }
            _ => decode_with_image(&input, header.format, max_pixels)?,
        };
        Ok(Self::Decoded {
            image,
            orientation,
            profile,
        })
    }

    /// The EXIF orientation.
    pub fn orientation(&self) -> Orientation {
        match self {
            Self::Jpeg { orientation, .. } | Self::Decoded { orientation, .. } => *orientation,
        }
    }

    /// Decodes the pixels, JPEG at `1/shrink` scale (`shrink` ∈ {1, 2, 4, 8}); other sources are
    /// already full size and ignore it. The result's size tells the caller the scale achieved.
    pub fn decode(self, shrink: u32, max_pixels: u64) -> Result<Decoded, KernelError> {
        match self {
            Self::Decoded {
                image,
                orientation,
                profile,
            } => Ok(Decoded {
                image,
                orientation,
                profile,
            }),
            Self::Jpeg {
                input,
                orientation,
                cmyk,
            } => {
                let profile = colour::jpeg_icc_profile(input);
                let image = decode_jpeg(input, shrink, max_pixels, cmyk, profile.as_deref())
                    .map_err(jpeg_error)?;
                Ok(Decoded {
                    image,
                    orientation,
                    profile: if cmyk { None } else { profile },
                })
            }
        }
    }
}

/// libjpeg-turbo decode at `1/shrink` scale to 8-bit RGB (or gray for gray JPEGs). `cmyk` JPEGs
/// decode to CMYK and leave here as sRGB, converted with `profile` (see [`colour::cmyk_to_srgb`]).
fn decode_jpeg(
    input: &[u8],
    shrink: u32,
    max_pixels: u64,
    cmyk: bool,
    profile: Option<&[u8]>,
) -> Result<DynamicImage, turbojpeg::Error> {
    let input = probe::jpeg_without_stray_header_bytes(input);
    let input = with_trailer(&input, &EOI);
    let input = input.as_ref();
    let mut decompressor = Decompressor::new()?;
    decompressor.set_scan_limit(MAX_JPEG_SCANS)?;
    let header = decompressor.read_header(input)?;
    // The probe already checked the frame header; this re-checks what libjpeg-turbo itself will
    // allocate for, in case a malformed file carries two frame headers that disagree.
    if (header.width as u64).saturating_mul(header.height as u64) > max_pixels {
        return Err(turbojpeg::Error::TurboJpegError(
            "image dimensions changed after probe".into(),
        ));
    }
    let factor = if header.is_lossless || shrink <= 1 {
        ScalingFactor::ONE
    } else {
        ScalingFactor::new(1, shrink as usize)
    };
    decompressor.set_scaling_factor(factor)?;
    let scaled = header.scaled(factor);
    let (format, channels) = match header.colorspace {
        Colorspace::Gray => (PixelFormat::GRAY, 1),
        _ if cmyk => (PixelFormat::CMYK, 4),
        _ => (PixelFormat::RGB, 3),
    };
    // Zeroed allocation comes straight from the OS for large buffers; no extra pass over memory.
    let mut pixels = vec![0u8; scaled.width * scaled.height * channels];
    let image = turbojpeg::Image {
        pixels: pixels.as_mut_slice(),
        width: scaled.width,
        pitch: scaled.width * channels,
        height: scaled.height,
        format,
    };
    match decompressor.decompress(input, image) {
        Err(e) if !is_harmless_warning(&e) => return Err(e),
        _ => {}
    }
    let (w, h) = (scaled.width as u32, scaled.height as u32);
    if channels == 4 {
        let inverted = colour::jpeg_has_adobe_marker(input);
        return colour::cmyk_to_srgb(&pixels, w, h, inverted, profile)
            .map(DynamicImage::ImageRgb8)
            .ok_or_else(|| turbojpeg::Error::TurboJpegError("CMYK to sRGB failed".into()));
    }
    let image = if channels == 1 {
        GrayImage::from_raw(w, h, pixels).map(DynamicImage::ImageLuma8)
    } else {
        RgbImage::from_raw(w, h, pixels).map(DynamicImage::ImageRgb8)
    };
    image.ok_or(turbojpeg::Error::OutOfBounds)
}

/// The JPEG end-of-image marker.
///
/// libjpeg warns "Premature end of JPEG file" both when only the EOI marker is missing (every
/// scan complete: browsers and libvips show such files) and when the file stops mid-scan (the
/// rest of the picture is invented grey). With the marker supplied (see [`with_trailer`]), the
/// first case decodes without any warning, while a scan cut short still hits the marker while it
/// needs data and warns "premature end of data segment", which [`jpeg_error`] refuses as
/// truncated. Bytes after a real EOI (common trailing junk) are never read, so appending is
/// harmless there too.
const EOI: [u8; 2] = [0xFF, 0xD9];

/// The PNG end chunk (`IEND`, empty, with its CRC). The PNG decoder refuses a file whose image
/// data is complete but whose end chunk is missing (libvips and browsers show it); image data cut
/// short still fails, as the decoder runs out of it before any `IEND`.
const IEND: [u8; 12] = [0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82];

/// `input`, with `trailer` (a format's end marker) appended when it does not end with it; a copy
/// only then.
fn with_trailer<'a>(input: &'a [u8], trailer: &[u8]) -> std::borrow::Cow<'a, [u8]> {
    if input.ends_with(trailer) {
        std::borrow::Cow::Borrowed(input)
    } else {
        std::borrow::Cow::Owned([input, trailer].concat())
    }
}

/// libjpeg-turbo reports warnings as failures after decoding the whole image. A warning means
/// lost data (a truncated or corrupt scan decodes with invented pixels, which we refuse) unless
/// it is one of these, which lose nothing: stray bytes before a marker (many cameras and editors
/// write them), and header oddities libjpeg works around (an unknown JFIF revision or Adobe
/// transform code). The library exposes only the message text, so that is what is matched.
/// Only the first warning of a decode is reported, so a harmless one can hide a later one; the
/// end-marker repair above makes the commonest harmless case (no EOI) warning-free instead.
fn is_harmless_warning(e: &turbojpeg::Error) -> bool {
    const HARMLESS: [&str; 3] = [
        "extraneous bytes before marker",
        "unknown JFIF revision number",
        "Unknown Adobe color transform code",
    ];
    matches!(e, turbojpeg::Error::TurboJpegError(msg) if HARMLESS.iter().any(|h| msg.contains(h)))
}

/// Sorts a libjpeg-turbo failure: data that ends before the last scan is complete (or before the
/// first begins) is `truncated_image`; anything else the decoder refused is `undecodable_image`.
fn jpeg_error(e: turbojpeg::Error) -> KernelError {
    match &e {
        turbojpeg::Error::TurboJpegError(msg)
            if msg.contains("premature end of data segment")
                || msg.contains("Premature end of JPEG file")
                // Headers and then nothing: the end marker we supply comes before any scan.
                || msg.contains("missing SOS marker") =>
        {
            KernelError::Truncated {
                detail: msg.clone(),
            }
        }
        _ => KernelError::undecodable(ImageFormat::Jpeg, e),
    }
}

/// The first frame of a GIF, drawn on its screen (the header's size) as browsers show it before
/// the animation moves on ([`GifAnimation`]), with the embedded ICC profile if any.
fn first_gif_frame(
    input: &[u8],
    header: &Header,
    max_pixels: u64,
) -> Result<(DynamicImage, Orientation, Option<Vec<u8>>), KernelError> {
    let mut frames = GifAnimation::new(input, header.width, header.height, max_pixels)?;
    let profile = frames.icc_profile();
    let first = frames
        .next()
        .ok_or_else(|| KernelError::undecodable(ImageFormat::Gif, "the GIF has no image"))??;
    Ok((
        DynamicImage::ImageRgba8(first.canvas),
        Orientation::NoTransforms,
        profile,
    ))
}

/// Full decode with `image` (first frame only for animated WebP), with its allocation
/// capped to what the pixel limit allows; also returns the embedded ICC profile (PNG `iCCP`,
/// WebP `ICCP`), if any can be read.
fn decode_with_image(
    input: &[u8],
    format: ImageFormat,
    max_pixels: u64,
) -> Result<(DynamicImage, Orientation, Option<Vec<u8>>), KernelError> {
    let image_format = match format {
        ImageFormat::Jpeg => image::ImageFormat::Jpeg,
        ImageFormat::Png => image::ImageFormat::Png,
        ImageFormat::Webp => image::ImageFormat::WebP,
        ImageFormat::Gif => image::ImageFormat::Gif,
        ImageFormat::Avif | ImageFormat::Heic => return Err(KernelError::UnsupportedMediaType),
    };
    let undecodable = |e| KernelError::undecodable(format, e);
    let mut reader = ImageReader::with_format(Cursor::new(input), image_format);
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(MAX_BYTES_PER_PIXEL));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(undecodable)?;
    let orientation = decoder.orientation().map_err(undecodable)?;
    // A profile that cannot be read (a corrupt iCCP stream) is no reason to refuse the pixels.
    let profile = decoder.icc_profile().unwrap_or_else(|e| {
        tracing::debug!(error = %e, "Ignoring an unreadable ICC profile");
        None
    });
    let image = DynamicImage::from_decoder(decoder).map_err(undecodable)?;
    Ok((image, orientation, profile))
}

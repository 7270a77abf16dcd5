//! HEIC and AVIF input, through the system's libheif (HEVC decoded by libde265, AV1 by dav1d).
//!
//! The size comes from the container alone: libheif parses the boxes of the `meta` box and
//! reports the primary image's size from its `ispe`, `clap` and `irot` properties, without
//! decoding anything, so [`probe`](super::probe) checks the pixel limit before a codec is started.
//! [`decode`] checks the coded size (`ispe`, before any crop) against the limit again, then asks
//! libheif for 8-bit interleaved RGB or RGBA: a 10- or 12-bit image is converted by libheif.
//! The limit rests on what the container says: libheif 1.15 does not compare the codec stream's
//! own picture size with `ispe` before the codec allocates (libheif's own cap is 32768 per side).
//!
//! Orientation: libheif applies the `clap`, `irot` and `imir` transforms while decoding, so the
//! pixels and the header's size are upright and the kernel orients nothing more. An EXIF
//! orientation inside a HEIF is not applied on top: HEIF writers (Apple's among them) keep the
//! camera's EXIF tag beside the `irot` that already carries it, and the HEIF specification makes
//! the transformative properties the only authority, as browsers and libvips read it.
//!
//! Threads: the decode runs on the calling thread. libheif decodes the tiles of a grid image
//! (phones write 512×512 tiles) on up to four threads of its own by default; this is set to none,
//! so the tiles are decoded one after another here, as every other decoder of the kernel works.
//! libde265 hands each picture to one worker thread while this thread waits for it. dav1d picks
//! its own thread count, which libheif 1.15 does not expose, so an AVIF decode may briefly use
//! more than one core.

use std::sync::OnceLock;

use image::{DynamicImage, RgbImage, RgbaImage};
use libheif_rs::{
    ColorProfile, ColorSpace, HeifContext, HeifError, ImageHandle, LibHeif, RgbChroma,
    color_profile_types,
};
use schemas::events::ImageFormat;

use super::KernelError;

/// libheif, initialised once for the process (its plugin registry is global; initialising and
/// releasing it around every decode would load and unload the codecs each time).
fn libheif() -> &'static LibHeif {
    static LIBHEIF: OnceLock<LibHeif> = OnceLock::new();
    LIBHEIF.get_or_init(LibHeif::new)
}

/// The primary image's size as displayed (after `clap` crop and `irot` rotation), from the
/// container's boxes; nothing is decoded.
pub fn size(input: &[u8], format: ImageFormat) -> Result<(u32, u32), KernelError> {
    with_primary(input, format, |handle| {
        Ok((handle.width(), handle.height()))
    })
}

/// Decodes the primary image of a HEIC or AVIF file to 8-bit RGB (RGBA when it has alpha),
/// upright, at the size [`size`] reported; also returns its ICC profile, if it has one, for
/// [`colour::to_srgb`](super::colour::to_srgb).
///
/// Errors: [`KernelError::TooManyPixels`] when the coded image (before any crop) is over
/// `max_pixels`; [`KernelError::Undecodable`] for anything libheif or its codecs refuse
/// (truncated or corrupt data, an unsupported codec).
pub fn decode(
    input: &[u8],
    format: ImageFormat,
    max_pixels: u64,
) -> Result<(DynamicImage, Option<Vec<u8>>), KernelError> {
    with_primary(input, format, |handle| {
        // What the codec allocates for: the coded size, which a `clap` may crop much further.
        // The `ispe` box is mandatory; without it (libheif says -1) there is no size to check
        // before decoding, so the file is refused rather than decoded unchecked.
        let (Ok(width), Ok(height)) = (
            u32::try_from(handle.ispe_width()),
            u32::try_from(handle.ispe_height()),
        ) else {
            return Err(KernelError::Undecodable {
                format: format.name(),
                source: "the image has no ispe (image spatial extents) property".into(),
            });
        };
        let coded = (width, height);
        if u64::from(coded.0) * u64::from(coded.1) > max_pixels {
            return Err(KernelError::TooManyPixels {
                format: format.name(),
                width: coded.0,
                height: coded.1,
                limit: max_pixels,
            });
        }
        let alpha = handle.has_alpha_channel();
        let chroma = if alpha {
            RgbChroma::Rgba
        } else {
            RgbChroma::Rgb
        };
        // No decoding options: libheif-rs 0.19.2 frees them before libheif reads them (its
        // `decode` drops the `DecodingOptions` inside the closure that takes their pointer), so
        // libheif would read freed memory, and does (it skipped `irot`). The defaults are what
        // is wanted anyway: transformations applied; interleaved RGB is 8-bit, so libheif
        // converts a 10- or 12-bit image to it.
        let image = libheif()
            .decode(handle, ColorSpace::Rgb(chroma), None)
            .map_err(|e| undecodable(format, e))?;
        let channels: usize = if alpha { 4 } else { 3 };
        let planes = image.planes();
        let plane = planes
            .interleaved
            .filter(|p| usize::from(p.storage_bits_per_pixel) == 8 * channels)
            .ok_or_else(|| KernelError::undecodable(format, "libheif gave no 8-bit RGB plane"))?;
        let (width, height) = (plane.width, plane.height);
        if (width, height) != (handle.width(), handle.height()) {
            return Err(KernelError::undecodable(
                format,
                format!(
                    "the decoded image is {width}x{height}, the header says {}x{}",
                    handle.width(),
                    handle.height()
                ),
            ));
        }
        let row = width as usize * channels;
        let mut pixels = Vec::with_capacity(row * height as usize);
        for y in 0..height as usize {
            let start = y * plane.stride;
            let line = plane.data.get(start..start + row).ok_or_else(|| {
                KernelError::undecodable(format, "libheif's plane is shorter than its size")
            })?;
            pixels.extend_from_slice(line);
        }
        let image = if alpha {
            RgbaImage::from_raw(width, height, pixels).map(DynamicImage::ImageRgba8)
        } else {
            RgbImage::from_raw(width, height, pixels).map(DynamicImage::ImageRgb8)
        }
        .ok_or_else(|| KernelError::undecodable(format, "pixel buffer of the wrong size"))?;
        Ok((image, icc_profile(handle)))
    })
}

/// Opens `input` and calls `f` with its primary image. The context reads `input` in place, so it
/// never outlives this call.
fn with_primary<T>(
    input: &[u8],
    format: ImageFormat,
    f: impl FnOnce(&ImageHandle) -> Result<T, KernelError>,
) -> Result<T, KernelError> {
    libheif();
    let mut context = HeifContext::read_from_bytes(input).map_err(|e| undecodable(format, e))?;
    // 0: grid tiles are decoded on the calling thread (see the module docs).
    context.set_max_decoding_threads(0);
    let handle = context
        .primary_image_handle()
        .map_err(|e| undecodable(format, e))?;
    f(&handle)
}

/// The embedded ICC profile (`colr` of type `prof` or `rICC`); `None` for none or an `nclx`
/// colour description, which libheif has used for the YCbCr to RGB conversion already.
fn icc_profile(handle: &ImageHandle) -> Option<Vec<u8>> {
    let profile = handle.color_profile_raw()?;
    let kind = profile.profile_type();
    (kind == color_profile_types::PROF || kind == color_profile_types::R_ICC)
        .then_some(profile.data)
}

fn undecodable(format: ImageFormat, e: HeifError) -> KernelError {
    KernelError::undecodable(format, e)
}

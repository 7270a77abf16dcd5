//! Colour management: pixels described by an embedded ICC profile become sRGB, so that Adobe RGB,
//! Display P3 and CMYK inputs keep their colours once the profile is dropped on output.
//!
//! The engine is LittleCMS (the `lcms2` crate), the engine libvips uses, with the same transform
//! libvips' thumbnailer makes: relative colorimetric intent, *without* black point compensation
//! (vipsthumbnail 8.14 does not ask for it: with an embedded press profile its rich black stays at
//! sRGB 37, where compensation would make it 3; matrix RGB profiles such as Display P3 and Adobe
//! RGB have a zero black point, so for them the two are the same). RGB
//! and gray images are converted *after* the resample, on output-sized pixels (averaging happens
//! in the input's own encoding, as vipsthumbnail does by default); CMYK must be RGB before the
//! resampler and the encoders see it, so it is converted right after decoding (see
//! [`cmyk_to_srgb`]). CMYK goes through LittleCMS end to end, as libvips' `icc_transform` does;
//! vipsthumbnail's own CMYK path instead finishes from Lab with libvips' D65 maths and gives
//! cyans and blues up to 25 steps more saturated.
//!
//! Profiles come from untrusted input. A profile that does not parse, does not match the pixels
//! (an RGB profile on a gray image, a device link, …) or cannot build a transform is ignored: the
//! image is taken as sRGB, and the reason is logged at debug level. Transforms are cached per
//! profile (by SHA-256 of its bytes) and pixel layout in a small bounded cache shared by every
//! thread, so a profile costs one parse and one transform build per process until it is evicted;
//! a profile that is sRGB already is recognised once and then costs only its hash.

use std::sync::{Arc, LazyLock};

use image::{DynamicImage, RgbImage};
use lcms2::{
    CIExyY, ColorSpaceSignature, DisallowCache, Flags, GlobalContext, Intent, PixelFormat, Profile,
    ProfileClassSignature, ToneCurve, Transform,
};
use moka::sync::Cache;
use sha2::{Digest, Sha256};

use super::probe;

/// Transforms kept at once. A phone fleet embeds a handful of distinct profiles (Display P3,
/// sRGB variants, Adobe RGB); the bound only matters against inputs that each carry a new one.
/// A CMYK transform holds a 4-D table of up to a few hundred kB, so this caps the cache at a few
/// MB.
const CACHE_CAPACITY: u64 = 32;

/// The CMYK profile assumed for CMYK JPEGs without a (usable) profile: libvips' own built-in
/// `cmyk` profile ("Chemical proof", by Graeme W. Gill, released into the public domain), trimmed
/// to the tags a CMYK → PCS transform reads (header, `desc`, `cprt`, `wtpt`, `bkpt` and the one
/// `A2B0` table its `A2B1`/`A2B2` share), 54 kB instead of 940 kB. The same fallback as libvips,
/// so untagged CMYK looks as it does there; a real press profile rather than the naive
/// `255·(1−C)(1−K)` formula, which makes every print file look garish.
static FALLBACK_CMYK: &[u8] = include_bytes!("cmyk-fallback.icc");

/// Largest difference (in 8-bit steps) between a profile's transform and no transform at which
/// the profile counts as sRGB and the pixels are left alone. One step covers the rounding
/// differences between sRGB profiles from different vendors.
const SRGB_TOLERANCE: u8 = 1;

type LcmsTransform = Transform<u8, u8, GlobalContext, DisallowCache>;

/// What to do for one profile and layout.
enum Conversion {
    /// Leave the pixels as they are: the profile is sRGB already, or unusable.
    Keep,
    /// Convert with LittleCMS, from the key's layout to its sRGB counterpart.
    Convert(LcmsTransform),
}

/// Pixel layouts a conversion is built for. 16-bit layouts are native-endian `u16`, as `image`
/// stores them; alpha (the last channel) is never transformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Layout {
    Gray8,
    GrayA8,
    Gray16,
    GrayA16,
    Rgb8,
    Rgba8,
    Rgb16,
    Rgba16,
    /// CMYK as stored in the file (0 = no ink).
    Cmyk8,
    /// Adobe's inverted CMYK (255 = no ink), as Photoshop writes it.
    InvertedCmyk8,
}

impl Layout {
    fn of(image: &DynamicImage) -> Option<Self> {
        Some(match image {
            DynamicImage::ImageLuma8(_) => Self::Gray8,
            DynamicImage::ImageLumaA8(_) => Self::GrayA8,
            DynamicImage::ImageLuma16(_) => Self::Gray16,
            DynamicImage::ImageLumaA16(_) => Self::GrayA16,
            DynamicImage::ImageRgb8(_) => Self::Rgb8,
            DynamicImage::ImageRgba8(_) => Self::Rgba8,
            DynamicImage::ImageRgb16(_) => Self::Rgb16,
            DynamicImage::ImageRgba16(_) => Self::Rgba16,
            // Float layouts never come out of our decoders.
            _ => return None,
        })
    }

    /// Input and output formats for LittleCMS.
    fn formats(self) -> (PixelFormat, PixelFormat) {
        let same = |f| (f, f);
        match self {
            Self::Gray8 => same(PixelFormat::GRAY_8),
            Self::GrayA8 => same(PixelFormat::GRAYA_8),
            Self::Gray16 => same(PixelFormat::GRAY_16),
            Self::GrayA16 => same(PixelFormat::GRAYA_16),
            Self::Rgb8 => same(PixelFormat::RGB_8),
            Self::Rgba8 => same(PixelFormat::RGBA_8),
            Self::Rgb16 => same(PixelFormat::RGB_16),
            Self::Rgba16 => same(PixelFormat::RGBA_16),
            Self::Cmyk8 => (PixelFormat::CMYK_8, PixelFormat::RGB_8),
            Self::InvertedCmyk8 => (PixelFormat::CMYK_8_REV, PixelFormat::RGB_8),
        }
    }

    /// The colour space a profile must describe to apply to this layout.
    fn colour_space(self) -> ColorSpaceSignature {
        match self {
            Self::Gray8 | Self::GrayA8 | Self::Gray16 | Self::GrayA16 => {
                ColorSpaceSignature::GrayData
            }
            Self::Rgb8 | Self::Rgba8 | Self::Rgb16 | Self::Rgba16 => ColorSpaceSignature::RgbData,
            Self::Cmyk8 | Self::InvertedCmyk8 => ColorSpaceSignature::CmykData,
        }
    }
}

/// Cache key: which profile, for which layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    profile: [u8; 32],
    layout: Layout,
}

static CONVERSIONS: LazyLock<Cache<Key, Arc<Conversion>>> =
    LazyLock::new(|| Cache::new(CACHE_CAPACITY));

/// Converts `image` (straight alpha, any 8- or 16-bit gray or RGB layout) to sRGB in place, as
/// `profile` (the input's embedded ICC bytes) describes it. Gray stays gray: a gray profile is
/// converted to gray with the sRGB tone curve, as libvips does. No profile, an sRGB profile or an
/// unusable one leave the pixels as they are. Never fails.
pub fn to_srgb(image: &mut DynamicImage, profile: Option<&[u8]>) {
    if let Some(layout) = Layout::of(image) {
        ToSrgb::new(profile, layout).apply(image);
    }
}

/// The conversion of one embedded profile to sRGB for one pixel layout, looked up (and, on first
/// use, built) once, then applied to any number of images: every frame of an animation, with
/// one lookup for the whole animation rather than a hash of the profile per frame.
pub struct ToSrgb {
    layout: Layout,
    /// `None` when there is nothing to do: no profile, an sRGB one or an unusable one.
    transform: Option<Arc<Conversion>>,
}

impl ToSrgb {
    /// For 8-bit RGBA images (composed animation frames) in `profile`.
    pub fn rgba8(profile: Option<&[u8]>) -> Self {
        Self::new(profile, Layout::Rgba8)
    }

    fn new(profile: Option<&[u8]>, layout: Layout) -> Self {
        let transform = profile
            .map(|p| conversion(p, layout))
            .filter(|c| matches!(c.as_ref(), Conversion::Convert(_)));
        Self { layout, transform }
    }

    /// Converts `image` in place, as [`to_srgb`] does. An image of another layout than this
    /// conversion was made for is left as it is.
    pub fn apply(&self, image: &mut DynamicImage) {
        let Some(Conversion::Convert(transform)) = self.transform.as_deref() else {
            return;
        };
        if Layout::of(image) != Some(self.layout) {
            return;
        }
        match image {
            DynamicImage::ImageLuma8(b) => transform.transform_in_place(b),
            DynamicImage::ImageLumaA8(b) => transform.transform_in_place(b),
            DynamicImage::ImageRgb8(b) => transform.transform_in_place(b),
            DynamicImage::ImageRgba8(b) => transform.transform_in_place(b),
            DynamicImage::ImageLuma16(b) => {
                transform.transform_in_place(bytemuck::cast_slice_mut::<u16, u8>(b))
            }
            DynamicImage::ImageLumaA16(b) => {
                transform.transform_in_place(bytemuck::cast_slice_mut::<u16, u8>(b))
            }
            DynamicImage::ImageRgb16(b) => {
                transform.transform_in_place(bytemuck::cast_slice_mut::<u16, u8>(b))
            }
            DynamicImage::ImageRgba16(b) => {
                transform.transform_in_place(bytemuck::cast_slice_mut::<u16, u8>(b))
            }
            _ => {}
        }
    }
}

/// Converts `width`×`height` CMYK pixels (4 bytes each, as libjpeg-turbo decodes them) to 8-bit
/// sRGB. `inverted`: the values are Adobe-style (255 = no ink), which is what a JPEG with an
/// Adobe APP14 marker holds, as libjpeg and libvips assume. Without a usable CMYK profile, the
/// built-in fallback (see [`FALLBACK_CMYK`]) is used. `None` only if `cmyk` is not
/// `width × height × 4` bytes long or no transform can be built at all.
pub fn cmyk_to_srgb(
    cmyk: &[u8],
    width: u32,
    height: u32,
    inverted: bool,
    profile: Option<&[u8]>,
) -> Option<RgbImage> {
    let pixels = usize::try_from(u64::from(width) * u64::from(height)).ok()?;
    if cmyk.len() != pixels.checked_mul(4)? {
        return None;
    }
    let layout = if inverted {
        Layout::InvertedCmyk8
    } else {
        Layout::Cmyk8
    };
    let embedded = profile.map(|p| conversion(p, layout));
    let conversion = match embedded {
        Some(c) if matches!(*c, Conversion::Convert(_)) => c,
        _ => conversion(FALLBACK_CMYK, layout),
    };
    let Conversion::Convert(transform) = conversion.as_ref() else {
        return None;
    };
    let mut rgb = vec![0u8; pixels * 3];
    transform.transform_pixels(cmyk, &mut rgb);
    RgbImage::from_raw(width, height, rgb)
}

/// The ICC profile of a JPEG: its APP2 `ICC_PROFILE` chunks, joined in sequence-number order.
/// Missing, duplicated or inconsistently counted chunks make the profile unusable (`None`), as
/// in libjpeg's `jpeg_read_icc_profile`.
pub fn jpeg_icc_profile(input: &[u8]) -> Option<Vec<u8>> {
    const SIGNATURE: &[u8] = b"ICC_PROFILE\0";
    let mut chunks: Vec<(u8, u8, &[u8])> = Vec::new();
    probe::jpeg_segments(input, |marker, payload| {
        if marker == 0xE2
            && let Some(rest) = payload.strip_prefix(SIGNATURE)
            && let [seq, count, data @ ..] = rest
        {
            chunks.push((*seq, *count, data));
        }
        None::<()>
    });
    if chunks.is_empty() {
        return None;
    }
    chunks.sort_by_key(|&(seq, ..)| seq);
    let count = chunks[0].1;
    let complete = usize::from(count) == chunks.len()
        && chunks
            .iter()
            .enumerate()
            .all(|(i, &(seq, n, _))| n == count && usize::from(seq) == i + 1);
    if !complete {
        tracing::debug!(
            chunks = chunks.len(),
            "Ignoring a JPEG ICC profile with missing or inconsistent chunks"
        );
        return None;
    }
    Some(
        chunks
            .iter()
            .flat_map(|&(.., data)| data)
            .copied()
            .collect(),
    )
}

/// Whether a JPEG has an Adobe APP14 marker, which says its CMYK is stored inverted.
pub fn jpeg_has_adobe_marker(input: &[u8]) -> bool {
    probe::jpeg_segments(input, |marker, payload| {
        (marker == 0xEE && payload.len() >= 12 && payload.starts_with(b"Adobe")).then_some(())
    })
    .is_some()
}

/// The cached conversion for `profile` and `layout`, built on first use.
fn conversion(profile: &[u8], layout: Layout) -> Arc<Conversion> {
    let key = Key {
        profile: Sha256::digest(profile).into(),
        layout,
    };
    CONVERSIONS.get_with(key, || {
        Arc::new(build(profile, layout).unwrap_or_else(|reason| {
            tracing::debug!(
                ?layout,
                bytes = profile.len(),
                reason,
                "Ignoring an unusable ICC profile"
            );
            Conversion::Keep
        }))
    })
}

/// Parses the profile and builds its transform to sRGB (or to gray with the sRGB curve).
fn build(bytes: &[u8], layout: Layout) -> Result<Conversion, String> {
    let profile = Profile::new_icc(bytes).map_err(|e| format!("does not parse: {e}"))?;
    let space = profile.color_space();
    if space != layout.colour_space() {
        return Err(format!(
            "describes {space:?}, not {:?}",
            layout.colour_space()
        ));
    }
    let class = profile.device_class();
    if !matches!(
        class,
        ProfileClassSignature::InputClass
            | ProfileClassSignature::DisplayClass
            | ProfileClassSignature::OutputClass
            | ProfileClassSignature::ColorSpaceClass
    ) {
        return Err(format!("is a {class:?} profile, not an image's"));
    }
    let target = match space {
        ColorSpaceSignature::GrayData => srgb_gray()?,
        _ => Profile::new_srgb(),
    };
    let new = |(input, output): (PixelFormat, PixelFormat)| {
        LcmsTransform::new_flags_context(
            GlobalContext::new(),
            &profile,
            input,
            &target,
            output,
            Intent::RelativeColorimetric,
            // NO_CACHE: no per-transform pixel cache, which makes the transform `Sync`, so one
            // cached transform serves every thread at once.
            Flags::NO_CACHE,
        )
        .map_err(|e| format!("no transform: {e}"))
    };
    if layout.colour_space() != ColorSpaceSignature::CmykData
        && is_srgb(&new(probe_formats(space))?)
    {
        return Ok(Conversion::Keep);
    }
    Ok(Conversion::Convert(new(layout.formats())?))
}

/// Gray with the sRGB tone curve (libvips' "sGrey"): what a gray image is converted to.
fn srgb_gray() -> Result<Profile, String> {
    let curve =
        ToneCurve::new_parametric(4, &[2.4, 1.0 / 1.055, 0.055 / 1.055, 1.0 / 12.92, 0.04045])
            .map_err(|e| format!("sRGB curve: {e}"))?;
    let d65 = CIExyY {
        x: 0.3127,
        y: 0.3290,
        Y: 1.0,
    };
    Profile::new_gray(&d65, &curve).map_err(|e| format!("gray profile: {e}"))
}

/// 8-bit formats of the same colour space, for [`is_srgb`].
fn probe_formats(space: ColorSpaceSignature) -> (PixelFormat, PixelFormat) {
    match space {
        ColorSpaceSignature::GrayData => (PixelFormat::GRAY_8, PixelFormat::GRAY_8),
        _ => (PixelFormat::RGB_8, PixelFormat::RGB_8),
    }
}

/// Whether an 8-bit RGB → RGB (or gray → gray) transform changes nothing beyond rounding, probed on
/// a 16-step grid that includes the extremes.
fn is_srgb(transform: &LcmsTransform) -> bool {
    let samples: Vec<u8> = if transform.input_pixel_format() == PixelFormat::GRAY_8 {
        (0..=255u8).collect()
    } else {
        let mut grid = Vec::with_capacity(16 * 16 * 16 * 3);
        for r in (0..=255u8).step_by(17) {
            for g in (0..=255u8).step_by(17) {
                for b in (0..=255u8).step_by(17) {
                    grid.extend_from_slice(&[r, g, b]);
                }
            }
        }
        grid
    };
    let mut out = vec![0u8; samples.len()];
    transform.transform_pixels(&samples, &mut out);
    samples
        .iter()
        .zip(&out)
        .all(|(a, b)| a.abs_diff(*b) <= SRGB_TOLERANCE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_profiles_are_ignored() {
        let mut image =
            DynamicImage::ImageRgb8(RgbImage::from_pixel(2, 2, image::Rgb([10, 20, 30])));
        for garbage in [
            &b""[..],
            b"not a profile",
            &[0u8; 200],
            &FALLBACK_CMYK[..300],
        ] {
            to_srgb(&mut image, Some(garbage));
        }
        // A CMYK profile on RGB pixels does not apply either.
        to_srgb(&mut image, Some(FALLBACK_CMYK));
        assert_eq!(image.to_rgb8().get_pixel(0, 0).0, [10, 20, 30]);
    }

    #[test]
    fn srgb_is_recognised_and_kept() {
        let srgb = Profile::new_srgb().icc().expect("sRGB serialises");
        assert!(matches!(*conversion(&srgb, Layout::Rgb8), Conversion::Keep));
        let gray = srgb_gray().and_then(|p| p.icc().map_err(|e| e.to_string()));
        let gray = gray.expect("gray serialises");
        assert!(matches!(
            *conversion(&gray, Layout::Gray8),
            Conversion::Keep
        ));
    }

    #[test]
    fn jpeg_icc_chunks_are_joined_in_sequence_order() {
        let app2 = |seq: u8, count: u8, data: &[u8]| {
            let mut s = vec![0xFF, 0xE2];
            s.extend_from_slice(&u16::try_from(16 + data.len()).expect("short").to_be_bytes());
            s.extend_from_slice(b"ICC_PROFILE\0");
            s.extend_from_slice(&[seq, count]);
            s.extend_from_slice(data);
            s
        };
        let jpeg = |segments: &[Vec<u8>]| {
            let mut j = vec![0xFF, 0xD8];
            segments.iter().for_each(|s| j.extend_from_slice(s));
            j.extend_from_slice(&[0xFF, 0xDA, 0, 2]);
            j
        };
        let ok = jpeg(&[app2(2, 2, b"world"), app2(1, 2, b"hello ")]);
        assert_eq!(jpeg_icc_profile(&ok).as_deref(), Some(&b"hello world"[..]));
        let missing = jpeg(&[app2(2, 2, b"world")]);
        assert_eq!(jpeg_icc_profile(&missing), None);
        let twice = jpeg(&[app2(1, 2, b"a"), app2(1, 2, b"b")]);
        assert_eq!(jpeg_icc_profile(&twice), None);
        assert_eq!(jpeg_icc_profile(&jpeg(&[])), None);
    }

    #[test]
    fn fallback_cmyk_profile_loads() {
        let white = cmyk_to_srgb(&[0, 0, 0, 0], 1, 1, false, None).expect("converts");
        assert_eq!(white.get_pixel(0, 0).0, [255, 255, 255]);
        // Inverted storage: 255 means no ink.
        let white = cmyk_to_srgb(&[255; 4], 1, 1, true, None).expect("converts");
        assert_eq!(white.get_pixel(0, 0).0, [255, 255, 255]);
        assert!(cmyk_to_srgb(&[0; 3], 1, 1, false, None).is_none());
    }
}

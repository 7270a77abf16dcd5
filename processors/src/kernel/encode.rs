//! Encoding the output. JPEG through libjpeg-turbo (SIMD colour conversion and DCT, 4:2:0 like
//! every mainstream thumbnailer); PNG through `image` with its fast deflate setting, since
//! thumbnails are re-fetched far less often than they are made; lossy WebP through libwebp (the
//! `webp` crate), lossless WebP through `image` as before; AVIF through rav1e (`ravif`, 8-bit
//! 4:4:4); GIF through the `gif` crate's NeuQuant quantiser, with alpha thresholded at half.
//! Every encoder runs on the calling thread: libwebp's `thread_level` stays 0 and ravif is built
//! without its threading feature.
//! Nothing from the input's metadata is carried over: the outputs are built from pixels alone.

use std::io::Cursor;

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::codecs::webp::WebPEncoder;
use image::{DynamicImage, GrayImage, RgbImage};
use schemas::events::ImageFormat;
use turbojpeg::{Compressor, PixelFormat, Subsamp};

use super::{BoxError, KernelError};

/// WebP effort when the request names none: `method` 4, libwebp's, libvips' and sharp's default.
pub const DEFAULT_WEBP_EFFORT: u8 = 4;

/// AVIF effort when the request names none: rav1e speed 8. Measured on one core over 21 photos
/// fitted in 512×512 (benches/formats_vs_libvips.sh), a call at effort 2 took 0.18–0.19 s
/// against 0.23–0.34 s at effort 4, for about 1.5 % more bytes at the same quality; CPU time is
/// what the resizer pool runs out of.
pub const DEFAULT_AVIF_EFFORT: u8 = 2;

/// libwebp's largest `method`; higher efforts are capped to it.
const WEBP_MAX_METHOD: u8 = 6;

/// NeuQuant sampling for GIF palettes, 1 (best) – 30 (fastest). 10 is the `gif` crate's own
/// choice for a balance: a 512-px frame quantises in a few milliseconds.
const GIF_QUANTISER_SPEED: i32 = 10;

/// The least alpha a pixel needs to stay visible in GIF output: libvips' threshold, half-way.
const GIF_ALPHA_THRESHOLD: u8 = 128;

/// How to encode, after validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// 1–100: JPEG, lossy WebP and AVIF quality.
    pub quality: u8,
    /// WebP: lossless (the `image` encoder, as before lossy WebP existed) instead of lossy.
    pub lossless: bool,
    /// 0 (fastest) – 9 (smallest) for lossy WebP and AVIF; `None` for [`DEFAULT_WEBP_EFFORT`]
    /// or [`DEFAULT_AVIF_EFFORT`].
    pub effort: Option<u8>,
}

impl Settings {
    /// libwebp `method` (0–6): the effort, capped.
    pub fn webp_method(&self) -> i32 {
        i32::from(
            self.effort
                .unwrap_or(DEFAULT_WEBP_EFFORT)
                .min(WEBP_MAX_METHOD),
        )
    }

    /// rav1e speed (1 slowest – 10 fastest): `10 − effort`, as libvips maps its AVIF effort.
    pub fn avif_speed(&self) -> u8 {
        10 - self.effort.unwrap_or(DEFAULT_AVIF_EFFORT).min(9)
    }

    /// A libwebp configuration for lossy frames: quality, method, one thread.
    pub fn webp_config(&self) -> Result<webp::WebPConfig, BoxError> {
        let mut config =
            webp::WebPConfig::new().map_err(|()| BoxError::from("libwebp version mismatch"))?;
        config.lossless = 0;
        config.quality = f32::from(self.quality);
        config.method = self.webp_method();
        // One call, one thread: the pool runs many calls side by side.
        config.thread_level = 0;
        config.alpha_compression = 1;
        Ok(config)
    }
}

/// What encoding one output pixel costs, in nanoseconds of one core, for the encoders slow enough
/// to need a bound (AVIF at every effort, lossy WebP at methods 5–6); 0 for the rest, which the
/// output pixel limit alone keeps within a second or two. Measured with the `kernel_files`
/// example on a noisy 4096×4096 photo resized to 1–16 Mpx, on one core of a 2-core VM (AVIF:
/// 0.27 µs/px at effort 0, 1.0–1.2 at 2–4, 2.3 at 6, 13.5 at 9; WebP: 0.15 at the default method
/// 4, 0.47 at method 6), rounded up.
pub fn encode_ns_per_pixel(format: ImageFormat, settings: &Settings) -> u64 {
    match format {
        ImageFormat::Avif => match settings.effort.unwrap_or(DEFAULT_AVIF_EFFORT) {
            0 => 300,
            1 => 700,
            2..=4 => 1_200,
            5 => 1_700,
            6 => 2_400,
            7 => 4_500,
            8 => 8_000,
            _ => 14_000,
        },
        ImageFormat::Webp if !settings.lossless => match settings.webp_method() {
            0..=4 => 0,
            5 => 300,
            _ => 500,
        },
        _ => 0,
    }
}

/// Encodes `image` as `format` with `settings` (validated: quality 1–100, effort 0–9).
///
/// Errors: [`KernelError::Encode`] when the encoder fails (a bug or resource exhaustion).
pub fn encode(
    image: DynamicImage,
    format: ImageFormat,
    settings: &Settings,
) -> Result<Vec<u8>, KernelError> {
    let result: Result<Vec<u8>, BoxError> = match format {
        ImageFormat::Jpeg => jpeg(image, settings.quality).map_err(Into::into),
        ImageFormat::Png => {
            let mut out = Vec::new();
            let encoder =
                PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive);
            image
                .write_with_encoder(encoder)
                .map(|()| out)
                .map_err(Into::into)
        }
        ImageFormat::Webp if settings.lossless => {
            let mut out = Vec::new();
            let encoder = WebPEncoder::new_lossless(Cursor::new(&mut out));
            to_8bit(image)
                .write_with_encoder(encoder)
                .map(|()| out)
                .map_err(Into::into)
        }
        ImageFormat::Webp => webp_lossy(&image, settings),
        ImageFormat::Avif => avif(&image, settings),
        // Refused with the parameters (`validate`); never reached.
        ImageFormat::Heic => {
            return Err(KernelError::BadParameters(
                "heic is read but not written".into(),
            ));
        }
        ImageFormat::Gif => {
            let rgba = image.into_rgba8();
            let (w, h) = rgba.dimensions();
            GifStream::new(w, h, None).and_then(|mut gif| {
                gif.push(rgba.into_raw(), 0)?;
                gif.finish()
            })
        }
    };
    result.map_err(|source| KernelError::Encode {
        format: format.name(),
        source,
    })
}

/// Lossy WebP through libwebp, with an alpha plane only when the image has one.
fn webp_lossy(image: &DynamicImage, settings: &Settings) -> Result<Vec<u8>, BoxError> {
    let config = settings.webp_config()?;
    let (w, h) = (image.width(), image.height());
    let (pixels, layout) = if image.color().has_alpha() {
        (image.to_rgba8().into_raw(), webp::PixelLayout::Rgba)
    } else {
        (image.to_rgb8().into_raw(), webp::PixelLayout::Rgb)
    };
    let encoded = webp::Encoder::new(&pixels, layout, w, h)
        .encode_advanced(&config)
        .map_err(|e| format!("libwebp: {e:?}"))?;
    Ok(encoded.to_vec())
}

/// AVIF through rav1e: 8-bit, quality and speed from `settings`, on the calling thread. An alpha
/// plane is written only when some pixel is not opaque (ravif checks).
fn avif(image: &DynamicImage, settings: &Settings) -> Result<Vec<u8>, BoxError> {
    let encoder = ravif::Encoder::new()
        .with_quality(f32::from(settings.quality))
        .with_alpha_quality(f32::from(settings.quality))
        .with_speed(settings.avif_speed())
        .with_bit_depth(ravif::BitDepth::Eight)
        .with_num_threads(Some(1));
    let (w, h) = (image.width() as usize, image.height() as usize);
    let encoded = if image.color().has_alpha() {
        let pixels: Vec<ravif::RGBA8> = image
            .to_rgba8()
            .pixels()
            .map(|p| ravif::RGBA8::new(p[0], p[1], p[2], p[3]))
            .collect();
        encoder.encode_rgba(ravif::Img::new(pixels.as_slice(), w, h))?
    } else {
        let pixels: Vec<ravif::RGB8> = image
            .to_rgb8()
            .pixels()
            .map(|p| ravif::RGB8::new(p[0], p[1], p[2]))
            .collect();
        encoder.encode_rgb(ravif::Img::new(pixels.as_slice(), w, h))?
    };
    Ok(encoded.avif_file)
}

/// A GIF written frame by frame: each frame gets its own NeuQuant palette and is written out
/// before the next is accepted, so memory stays at one frame plus the output.
pub struct GifStream {
    encoder: gif::Encoder<Vec<u8>>,
    width: u16,
    height: u16,
}

impl GifStream {
    /// A `width`×`height` GIF (each side ≤ 65535); `loops` writes a NETSCAPE2.0 loop count
    /// (0: forever), `None` none (the GIF plays once).
    pub fn new(width: u32, height: u32, loops: Option<u16>) -> Result<Self, BoxError> {
        let (width, height) = (u16::try_from(width)?, u16::try_from(height)?);
        let mut encoder = gif::Encoder::new(Vec::new(), width, height, &[])?;
        if let Some(loops) = loops {
            encoder.set_repeat(match loops {
                0 => gif::Repeat::Infinite,
                n => gif::Repeat::Finite(n),
            })?;
        }
        Ok(Self {
            encoder,
            width,
            height,
        })
    }

    /// Quantises and writes one full-canvas RGBA frame shown for `delay_cs` centiseconds.
    /// Every frame covers the whole canvas and is cleared after display, so transparency in one
    /// frame never shows the previous frame through it.
    ///
    /// GIF has one transparent palette entry and no partial alpha: alpha below
    /// [`GIF_ALPHA_THRESHOLD`] becomes transparent, the rest opaque with its colour kept, as
    /// libvips writes GIF. (The `gif` crate alone would make every pixel with any alpha opaque,
    /// turning soft shadows and anti-aliased edges into solid fringes.)
    pub fn push(&mut self, mut rgba: Vec<u8>, delay_cs: u16) -> Result<(), BoxError> {
        let expected = usize::from(self.width) * usize::from(self.height) * 4;
        if rgba.len() != expected {
            return Err(format!("frame is {} bytes, expected {expected}", rgba.len()).into());
        }
        for pixel in rgba.chunks_exact_mut(4) {
            pixel[3] = if pixel[3] < GIF_ALPHA_THRESHOLD {
                0
            } else {
                u8::MAX
            };
        }
        let mut frame =
            gif::Frame::from_rgba_speed(self.width, self.height, &mut rgba, GIF_QUANTISER_SPEED);
        frame.delay = delay_cs;
        frame.dispose = gif::DisposalMethod::Background;
        self.encoder.write_frame(&frame)?;
        Ok(())
    }

    /// Writes the trailer and returns the file.
    pub fn finish(self) -> Result<Vec<u8>, BoxError> {
        Ok(self.encoder.into_inner()?)
    }
}

fn jpeg(image: DynamicImage, quality: u8) -> Result<Vec<u8>, turbojpeg::Error> {
    let mut compressor = Compressor::new()?;
    compressor.set_quality(i32::from(quality))?;
    let (pixels, width, height, format, subsamp) = match flatten_for_jpeg(image) {
        Opaque::Gray(g) => {
            let (w, h) = g.dimensions();
            (g.into_raw(), w, h, PixelFormat::GRAY, Subsamp::Gray)
        }
        Opaque::Rgb(c) => {
            let (w, h) = c.dimensions();
            (c.into_raw(), w, h, PixelFormat::RGB, Subsamp::Sub2x2)
        }
    };
    compressor.set_subsamp(subsamp)?;
    let image = turbojpeg::Image {
        pixels: pixels.as_slice(),
        width: width as usize,
        pitch: width as usize * format.size(),
        height: height as usize,
        format,
    };
    compressor.compress_to_vec(image)
}

/// 8-bit opaque pixels, gray kept gray.
enum Opaque {
    Gray(GrayImage),
    Rgb(RgbImage),
}

/// JPEG has no alpha: composite onto white. Done on straight (non-premultiplied) 8-bit values:
/// `out = c·a + 255·(1 − a)`, rounded.
fn flatten_for_jpeg(image: DynamicImage) -> Opaque {
    let blend = |c: u8, a: u8| -> u8 {
        let (c, a) = (u32::from(c), u32::from(a));
        ((c * a + 255 * (255 - a) + 127) / 255) as u8
    };
    match image {
        DynamicImage::ImageLuma8(g) => Opaque::Gray(g),
        DynamicImage::ImageRgb8(c) => Opaque::Rgb(c),
        DynamicImage::ImageLuma16(_) => Opaque::Gray(image.to_luma8()),
        DynamicImage::ImageLumaA8(_) | DynamicImage::ImageLumaA16(_) => {
            let la = image.to_luma_alpha8();
            let mut out = GrayImage::new(la.width(), la.height());
            for (o, p) in out.pixels_mut().zip(la.pixels()) {
                o.0 = [blend(p.0[0], p.0[1])];
            }
            Opaque::Gray(out)
        }
        DynamicImage::ImageRgb16(_) | DynamicImage::ImageRgb32F(_) => Opaque::Rgb(image.to_rgb8()),
        _ => {
            let rgba = image.to_rgba8();
            let mut out = RgbImage::new(rgba.width(), rgba.height());
            for (o, p) in out.pixels_mut().zip(rgba.pixels()) {
                let [r, g, b, a] = p.0;
                o.0 = [blend(r, a), blend(g, a), blend(b, a)];
            }
            Opaque::Rgb(out)
        }
    }
}

/// WebP in `image` takes 8-bit layouts only.
fn to_8bit(image: DynamicImage) -> DynamicImage {
    match image {
        DynamicImage::ImageLuma16(_) => DynamicImage::ImageLuma8(image.to_luma8()),
        DynamicImage::ImageLumaA16(_) => DynamicImage::ImageLumaA8(image.to_luma_alpha8()),
        DynamicImage::ImageRgb16(_) | DynamicImage::ImageRgb32F(_) => {
            DynamicImage::ImageRgb8(image.to_rgb8())
        }
        DynamicImage::ImageRgba16(_) | DynamicImage::ImageRgba32F(_) => {
            DynamicImage::ImageRgba8(image.to_rgba8())
        }
        other => other,
    }
}

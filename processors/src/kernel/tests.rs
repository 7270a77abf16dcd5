//! End-to-end kernel tests on real encoded inputs, generated here with the same encoders users'
//! tools use (libjpeg-turbo, `image`): every input variant, every error code, EXIF orientation,
//! alpha handling and the exact output size of every fit mode.

// Test set-up failing is a test failure; panicking with the reason is the point.
#![allow(clippy::expect_used)]

use image::{DynamicImage, GenericImageView, Rgb, RgbImage, Rgba, RgbaImage};
use schemas::events::{Fit, Gravity, ImageFormat, ResizeParams};
use turbojpeg::{Compressor, PixelFormat, Subsamp};

use super::*;

pub(super) use crate::icc_fixtures as icc;

// ---------- inputs ----------

/// A smooth RGB test card (gradients, so JPEG artefacts stay small).
fn card(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, 128])
    })
}

/// Left half `left`, right half `right`.
fn halves(w: u32, h: u32, left: [u8; 3], right: [u8; 3]) -> RgbImage {
    RgbImage::from_fn(w, h, |x, _| Rgb(if x < w / 2 { left } else { right }))
}

fn turbo_jpeg(pixels: &[u8], w: u32, h: u32, format: PixelFormat, progressive: bool) -> Vec<u8> {
    let mut c = Compressor::new().expect("compressor");
    c.set_quality(90).expect("quality");
    c.set_progressive(progressive).expect("progressive");
    c.set_subsamp(if format == PixelFormat::GRAY {
        Subsamp::Gray
    } else {
        Subsamp::Sub2x2
    })
    .expect("subsamp");
    let image = turbojpeg::Image {
        pixels,
        width: w as usize,
        pitch: w as usize * format.size(),
        height: h as usize,
        format,
    };
    c.compress_to_vec(image).expect("jpeg encodes")
}

fn jpeg(img: &RgbImage) -> Vec<u8> {
    turbo_jpeg(
        img.as_raw(),
        img.width(),
        img.height(),
        PixelFormat::RGB,
        false,
    )
}

/// Inserts an APP1 Exif segment carrying only an orientation tag right after SOI.
pub(super) fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = Vec::new();
    tiff.extend_from_slice(b"MM\0\x2a\0\0\0\x08"); // big-endian TIFF, IFD0 at offset 8
    tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
    tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_be_bytes()); // count
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]); // value padding
    tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&u16::try_from(app1.len() + 2).expect("short").to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

fn encode_with(img: &DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("test image encodes");
    out.into_inner()
}

fn png(img: &DynamicImage) -> Vec<u8> {
    encode_with(img, image::ImageFormat::Png)
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&u32::try_from(data.len()).expect("short").to_be_bytes());
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

/// A well-formed PNG header claiming `w`×`h` RGB, followed by a token IDAT: what a decompression
/// bomb looks like before its (highly compressible) pixel data.
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, adaptive, no interlace
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9C, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    png_chunk(&mut out, b"IEND", &[]);
    out
}

// ---------- helpers ----------

fn params(width: Option<i32>, height: Option<i32>, fit: Fit) -> ResizeParams {
    ResizeParams {
        width,
        height,
        fit,
        ..ResizeParams::default()
    }
}

pub(super) fn run(input: &[u8], p: &ResizeParams) -> Resized {
    resize(input, p, &Limits::default()).expect("resize succeeds")
}

pub(super) fn fail(input: &[u8], p: &ResizeParams, limits: &Limits) -> KernelError {
    match resize(input, p, limits) {
        Ok(r) => panic!(
            "expected an error, got {}x{} {:?}",
            r.width, r.height, r.format
        ),
        Err(e) => e,
    }
}

/// Decodes an output and checks it says what `Resized` says.
fn decoded(r: &Resized) -> DynamicImage {
    let img = image::load_from_memory(&r.bytes).expect("output decodes");
    assert_eq!(
        (img.width(), img.height()),
        (r.width, r.height),
        "reported size is the real size"
    );
    let sniffed = probe::sniff(&r.bytes);
    assert_eq!(
        sniffed,
        Some(r.format),
        "reported format is the real format"
    );
    img
}

fn near(a: [u8; 4], b: [u8; 4], tolerance: u8) -> bool {
    a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= tolerance)
}

const RED: [u8; 3] = [255, 0, 0];
const BLUE: [u8; 3] = [0, 0, 255];

// ---------- inputs of every kind ----------

#[test]
fn baseline_jpeg_shrinks_on_load_to_the_exact_size() {
    let r = run(
        &jpeg(&card(2400, 1600)),
        &params(Some(512), Some(512), Fit::Inside),
    );
    assert_eq!((r.format, r.width, r.height), (ImageFormat::Jpeg, 512, 341));
    assert_eq!(
        (r.input_format, r.input_width, r.input_height),
        (ImageFormat::Jpeg, 2400, 1600)
    );
    let img = decoded(&r);
    // Colours survive the DCT shrink and the resample (gradient: red rises left to right).
    let [r0, ..] = img.get_pixel(10, 170).0;
    let [r1, ..] = img.get_pixel(500, 170).0;
    assert!(r0 < 20 && r1 > 235, "gradient kept: {r0} → {r1}");
}

#[test]
fn progressive_jpeg_decodes() {
    let img = card(640, 480);
    let input = turbo_jpeg(img.as_raw(), 640, 480, PixelFormat::RGB, true);
    let r = run(&input, &params(Some(320), None, Fit::Inside));
    assert_eq!((r.width, r.height), (320, 240));
    decoded(&r);
}

#[test]
fn gray_jpeg_stays_gray() {
    let gray: Vec<u8> = (0..200 * 100).map(|i| (i % 200) as u8).collect();
    let input = turbo_jpeg(&gray, 200, 100, PixelFormat::GRAY, false);
    let r = run(&input, &params(Some(100), None, Fit::Inside));
    assert_eq!((r.width, r.height), (100, 50));
    assert_eq!(decoded(&r).color(), image::ColorType::L8);
}

#[test]
fn cmyk_jpeg_decodes_with_shrink_on_load() {
    // CMYK as libjpeg-turbo writes it (YCCK with an Adobe marker); every pixel the same ink mix.
    let cmyk: Vec<u8> = [0u8, 200, 200, 0].repeat(64 * 48);
    let input = turbo_jpeg(&cmyk, 64, 48, PixelFormat::CMYK, false);
    let header = turbojpeg::read_header(&input).expect("header");
    assert!(matches!(
        header.colorspace,
        turbojpeg::Colorspace::YCCK | turbojpeg::Colorspace::CMYK
    ));
    let r = run(&input, &params(Some(32), None, Fit::Inside));
    assert_eq!((r.format, r.width, r.height), (ImageFormat::Jpeg, 32, 24));
    decoded(&r);
}

#[test]
fn png_variants_decode_and_keep_their_layout() {
    let rgb = DynamicImage::ImageRgb8(card(300, 200));
    let cases = [
        (rgb.clone(), image::ColorType::Rgb8),
        (
            DynamicImage::ImageRgb16(rgb.to_rgb16()),
            image::ColorType::Rgb16,
        ),
        (
            DynamicImage::ImageLuma8(rgb.to_luma8()),
            image::ColorType::L8,
        ),
        (
            DynamicImage::ImageLuma16(rgb.to_luma16()),
            image::ColorType::L16,
        ),
        (
            DynamicImage::ImageLumaA8(rgb.to_luma_alpha8()),
            image::ColorType::La8,
        ),
        (
            DynamicImage::ImageRgba8(rgb.to_rgba8()),
            image::ColorType::Rgba8,
        ),
        (
            DynamicImage::ImageRgba16(rgb.to_rgba16()),
            image::ColorType::Rgba16,
        ),
    ];
    for (img, color) in cases {
        let r = run(&png(&img), &params(Some(150), None, Fit::Inside));
        assert_eq!(
            (r.format, r.width, r.height),
            (ImageFormat::Png, 150, 100),
            "{color:?}"
        );
        assert_eq!(decoded(&r).color(), color);
    }
}

#[test]
fn gif_first_frame_becomes_png() {
    let frame =
        DynamicImage::ImageRgba8(DynamicImage::ImageRgb8(halves(80, 40, RED, BLUE)).to_rgba8());
    let input = encode_with(&frame, image::ImageFormat::Gif);
    let r = run(&input, &params(Some(40), None, Fit::Inside));
    assert_eq!(
        (r.format, r.input_format, r.width, r.height),
        (ImageFormat::Png, ImageFormat::Gif, 40, 20)
    );
    let out = decoded(&r);
    assert!(near(out.get_pixel(2, 10).0, [255, 0, 0, 255], 8));
    assert!(near(out.get_pixel(37, 10).0, [0, 0, 255, 255], 8));
}

#[test]
fn webp_decodes_and_encodes() {
    let input = encode_with(
        &DynamicImage::ImageRgba8(RgbaImage::from_pixel(64, 64, Rgba([9, 99, 199, 255]))),
        image::ImageFormat::WebP,
    );
    let r = run(&input, &params(Some(32), Some(16), Fit::Cover));
    assert_eq!((r.format, r.width, r.height), (ImageFormat::Webp, 32, 16));
    assert!(near(decoded(&r).get_pixel(16, 8).0, [9, 99, 199, 255], 1));
}

#[test]
fn output_format_can_be_chosen() {
    let input = jpeg(&card(200, 100));
    for format in [ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::Webp] {
        let p = ResizeParams {
            format: Some(format),
            ..params(Some(50), None, Fit::Inside)
        };
        let r = run(&input, &p);
        assert_eq!((r.format, r.width, r.height), (format, 50, 25));
        decoded(&r);
    }
}

#[test]
fn quality_changes_the_jpeg() {
    let input = jpeg(&card(800, 600));
    let small = run(
        &input,
        &ResizeParams {
            quality: Some(20),
            ..params(Some(400), None, Fit::Inside)
        },
    );
    let large = run(
        &input,
        &ResizeParams {
            quality: Some(100),
            ..params(Some(400), None, Fit::Inside)
        },
    );
    assert!(small.bytes.len() < large.bytes.len());
}

// ---------- fit modes ----------

#[test]
fn every_fit_mode_produces_its_exact_size() {
    let input = jpeg(&card(1200, 800));
    let cases = [
        (params(Some(512), Some(512), Fit::Inside), (512, 341)),
        (params(Some(300), None, Fit::Inside), (300, 200)),
        (params(None, Some(100), Fit::Inside), (150, 100)),
        (params(Some(300), Some(300), Fit::Cover), (300, 300)),
        (params(Some(300), Some(300), Fit::Contain), (300, 300)),
        (params(Some(100), Some(300), Fit::Fill), (100, 300)),
        // No enlargement: the box shrinks to the input's scale, keeping the mode's aspect rule.
        (params(Some(2400), Some(2400), Fit::Inside), (1200, 800)),
        (params(Some(2400), Some(2400), Fit::Cover), (800, 800)),
        (params(Some(2400), Some(2400), Fit::Contain), (1200, 1200)),
        (params(Some(2400), Some(400), Fit::Fill), (1200, 200)),
        (
            ResizeParams {
                enlarge: true,
                ..params(Some(2400), None, Fit::Inside)
            },
            (2400, 1600),
        ),
    ];
    for (p, size) in cases {
        let r = run(&input, &p);
        assert_eq!((r.width, r.height), size, "{p:?}");
        decoded(&r);
    }
}

#[test]
fn cover_crops_by_gravity() {
    let input = jpeg(&halves(400, 200, RED, BLUE));
    let west = run(
        &input,
        &ResizeParams {
            gravity: Gravity::West,
            ..params(Some(50), Some(50), Fit::Cover)
        },
    );
    let east = run(
        &input,
        &ResizeParams {
            gravity: Gravity::East,
            ..params(Some(50), Some(50), Fit::Cover)
        },
    );
    assert!(near(
        decoded(&west).get_pixel(25, 25).0,
        [255, 0, 0, 255],
        40
    ));
    assert!(near(
        decoded(&east).get_pixel(25, 25).0,
        [0, 0, 255, 255],
        40
    ));
}

#[test]
fn contain_pads_transparent_for_png_and_white_for_jpeg() {
    let source = DynamicImage::ImageRgb8(RgbImage::from_pixel(200, 100, Rgb(BLUE)));
    let p = params(Some(100), Some(100), Fit::Contain);
    let out = decoded(&run(&png(&source), &p));
    assert_eq!(out.get_pixel(50, 5).0, [0, 0, 0, 0], "pad is transparent");
    assert_eq!(
        out.get_pixel(50, 50).0,
        [0, 0, 255, 255],
        "image is centred"
    );
    let out = decoded(&run(&jpeg(source.as_rgb8().expect("rgb")), &p));
    assert!(
        near(out.get_pixel(50, 5).0, [255, 255, 255, 255], 3),
        "pad is white"
    );
    assert!(near(out.get_pixel(50, 50).0, [0, 0, 255, 255], 8));
}

#[test]
fn cover_clip_auto_and_pad_produce_their_exact_sizes() {
    let input = jpeg(&card(300, 200));
    let cases = [
        // Clipped to the source on the axis where it is smaller, cropped on the other.
        (Fit::CoverClip, (400, 100), (300, 100)),
        (Fit::CoverClip, (150, 150), (150, 150)),
        // Same orientation: cover_clip; the other: inside.
        (Fit::Auto, (120, 40), (120, 40)),
        (Fit::Auto, (100, 200), (100, 67)),
        // The whole box, the source at its own size.
        (Fit::Pad, (400, 400), (400, 400)),
        (Fit::Pad, (100, 100), (100, 100)),
    ];
    for (fit, (w, h), size) in cases {
        let r = run(&input, &params(Some(w), Some(h), fit));
        assert_eq!((r.width, r.height), size, "{fit:?} {w}x{h}");
        decoded(&r);
    }
    let r = run(&input, &params(Some(500), None, Fit::Pad));
    assert_eq!(
        (r.width, r.height),
        (500, 200),
        "one side: padded on it only"
    );
    for fit in [Fit::CoverClip, Fit::Auto] {
        let r = run(&input, &params(None, Some(100), fit));
        assert_eq!(
            (r.width, r.height),
            (150, 100),
            "{fit:?}: one side is inside"
        );
    }
}

#[test]
fn pad_places_the_unenlarged_source_on_the_whole_box_by_gravity() {
    let source = DynamicImage::ImageRgb8(RgbImage::from_pixel(40, 20, Rgb(BLUE)));
    for (gravity, inside, outside) in [
        (Gravity::Centre, (50, 50), (5, 5)),
        (Gravity::NorthWest, (5, 5), (50, 50)),
        (Gravity::SouthEast, (95, 95), (50, 50)),
    ] {
        let p = ResizeParams {
            gravity,
            ..params(Some(100), Some(100), Fit::Pad)
        };
        let out = decoded(&run(&png(&source), &p));
        assert_eq!((out.width(), out.height()), (100, 100));
        assert_eq!(
            out.get_pixel(inside.0, inside.1).0,
            [0, 0, 255, 255],
            "{gravity:?}"
        );
        assert_eq!(
            out.get_pixel(outside.0, outside.1).0,
            [0, 0, 0, 0],
            "{gravity:?}"
        );
    }
}

#[test]
fn auto_decides_on_the_upright_source() {
    // Stored 60×40 (a landscape), displayed 40×60 (a portrait) with EXIF 6.
    let stored = jpeg(&halves(60, 40, RED, BLUE));
    let rotated = with_exif_orientation(&stored, 6);
    let cases = [
        // Portrait box: the upright portrait is covered, the stored landscape fitted.
        ((20, 30), (20, 30), (20, 13)),
        // Landscape box: the other way round.
        ((30, 20), (13, 20), (30, 20)),
    ];
    for ((w, h), upright, landscape) in cases {
        let r = run(&rotated, &params(Some(w), Some(h), Fit::Auto));
        assert_eq!((r.width, r.height), upright, "EXIF 6, box {w}x{h}");
        let r = run(&stored, &params(Some(w), Some(h), Fit::Auto));
        assert_eq!((r.width, r.height), landscape, "no EXIF, box {w}x{h}");
    }
}

// ---------- background ----------

const GREEN: [u8; 3] = [0, 160, 0];

fn on(background: [u8; 3], p: ResizeParams) -> ResizeParams {
    let [r, g, b] = background.map(i32::from);
    ResizeParams {
        background: Some(schemas::events::Rgb { r, g, b }),
        ..p
    }
}

/// Left half fully transparent (and red underneath, which must never show), right half opaque
/// blue.
fn half_transparent(w: u32, h: u32) -> Vec<u8> {
    png(&DynamicImage::ImageRgba8(RgbaImage::from_fn(
        w,
        h,
        |x, _| {
            Rgba(if x < w / 2 {
                [255, 0, 0, 0]
            } else {
                [0, 0, 255, 255]
            })
        },
    )))
}

/// Every still output format, with the tolerance of its lossy encoding.
const STILL_FORMATS: [(ImageFormat, u8); 4] = [
    (ImageFormat::Png, 0),
    (ImageFormat::Jpeg, 8),
    (ImageFormat::Webp, 12),
    (ImageFormat::Gif, 24),
];

#[test]
fn background_colours_the_padding_in_every_format() {
    let source = DynamicImage::ImageRgb8(RgbImage::from_pixel(200, 100, Rgb(BLUE)));
    for fit in [Fit::Contain, Fit::Pad] {
        for (format, tolerance) in STILL_FORMATS {
            let p = on(
                GREEN,
                ResizeParams {
                    format: Some(format),
                    ..params(Some(100), Some(100), fit)
                },
            );
            let out = decoded(&run(&png(&source), &p));
            let [r, g, b] = GREEN;
            assert!(
                near(out.get_pixel(50, 5).0, [r, g, b, 255], tolerance),
                "{fit:?} {format:?}: pad {:?}",
                out.get_pixel(50, 5)
            );
            assert!(
                near(out.get_pixel(50, 50).0, [0, 0, 255, 255], tolerance),
                "{fit:?} {format:?}: image {:?}",
                out.get_pixel(50, 50)
            );
        }
    }
}

#[test]
fn background_flattens_transparency_in_every_format() {
    for (format, tolerance) in STILL_FORMATS {
        let p = on(
            GREEN,
            ResizeParams {
                format: Some(format),
                ..params(Some(100), None, Fit::Inside)
            },
        );
        let out = decoded(&run(&half_transparent(200, 100), &p));
        let [r, g, b] = GREEN;
        assert!(
            near(out.get_pixel(10, 25).0, [r, g, b, 255], tolerance),
            "{format:?}: transparent → background, got {:?}",
            out.get_pixel(10, 25)
        );
        assert!(
            near(out.get_pixel(90, 25).0, [0, 0, 255, 255], tolerance),
            "{format:?}: opaque stays"
        );
        if format != ImageFormat::Gif {
            assert!(
                !out.color().has_alpha(),
                "{format:?}: flattened, no alpha left"
            );
        }
    }
    // Half-transparent blue over the background: blended on straight values.
    let input = png(&DynamicImage::ImageRgba8(RgbaImage::from_pixel(
        8,
        8,
        Rgba([0, 0, 255, 128]),
    )));
    let p = on(
        [200, 100, 0],
        ResizeParams {
            format: Some(ImageFormat::Png),
            ..params(Some(8), None, Fit::Inside)
        },
    );
    assert_eq!(
        decoded(&run(&input, &p)).get_pixel(4, 4).0,
        [100, 50, 128, 255]
    );
}

#[test]
fn without_a_background_nothing_changes_and_white_is_what_jpeg_always_had() {
    let input = half_transparent(200, 100);
    let jpeg_out = |background: Option<[u8; 3]>| {
        let p = ResizeParams {
            format: Some(ImageFormat::Jpeg),
            ..params(Some(100), Some(100), Fit::Contain)
        };
        run(&input, &background.map_or(p.clone(), |c| on(c, p))).bytes
    };
    assert_eq!(jpeg_out(None), jpeg_out(Some([255; 3])));
    let out = decoded(&run(&input, &params(Some(100), Some(100), Fit::Pad)));
    assert_eq!(
        out.get_pixel(50, 5).0,
        [0, 0, 0, 0],
        "pad stays transparent"
    );
    assert_eq!(out.get_pixel(10, 50).0[3], 0, "alpha is kept");
}

#[test]
fn gray_stays_gray_on_a_gray_background_and_becomes_rgb_on_a_colour() {
    let gray = DynamicImage::ImageLumaA8(image::GrayAlphaImage::from_fn(40, 20, |x, _| {
        image::LumaA(if x < 20 { [0, 0] } else { [50, 255] })
    }));
    let cases = [
        ([90, 90, 90], image::ColorType::L8, [90, 90, 90, 255]),
        (GREEN, image::ColorType::Rgb8, [0, 160, 0, 255]),
    ];
    for (background, color, pad) in cases {
        let p = on(
            background,
            ResizeParams {
                format: Some(ImageFormat::Png),
                ..params(Some(40), Some(40), Fit::Pad)
            },
        );
        let out = decoded(&run(&png(&gray), &p));
        assert_eq!(out.color(), color, "{background:?}");
        assert_eq!(out.get_pixel(20, 2).0, pad, "{background:?}: padding");
        assert_eq!(out.get_pixel(5, 20).0, pad, "{background:?}: flattened");
        assert_eq!(out.get_pixel(30, 20).0, [50, 50, 50, 255], "{background:?}");
    }
    // An opaque gray image padded with a colour.
    let opaque = DynamicImage::ImageLuma8(image::GrayImage::from_pixel(40, 20, image::Luma([50])));
    let out = decoded(&run(
        &png(&opaque),
        &on(GREEN, params(Some(40), Some(40), Fit::Pad)),
    ));
    assert_eq!(out.color(), image::ColorType::Rgb8);
    assert_eq!(out.get_pixel(20, 2).0, [0, 160, 0, 255]);
}

#[test]
fn sixteen_bit_images_flatten_at_sixteen_bits() {
    let img = DynamicImage::ImageRgba16(image::ImageBuffer::from_pixel(
        8,
        8,
        Rgba([0u16, 0, 65_535, 32_768]),
    ));
    let p = on(
        [255, 0, 0],
        ResizeParams {
            format: Some(ImageFormat::Png),
            ..params(Some(8), None, Fit::Inside)
        },
    );
    let out = decoded(&run(&png(&img), &p));
    assert_eq!(out.color(), image::ColorType::Rgb16);
    let px = out.to_rgb16().get_pixel(4, 4).0;
    assert_eq!(px, [32_767, 0, 32_768]);
}

// ---------- orientation and alpha ----------

#[test]
fn exif_orientation_is_applied_before_fitting() {
    // Stored 60×40, red left / blue right. EXIF 6 (rotate 90° clockwise) displays it as 40×60 with
    // red on top, so a fit and a cover crop must both work on the upright image.
    let input = with_exif_orientation(&jpeg(&halves(60, 40, RED, BLUE)), 6);
    let r = run(&input, &params(Some(20), Some(30), Fit::Inside));
    assert_eq!(
        (r.input_width, r.input_height, r.width, r.height),
        (40, 60, 20, 30)
    );
    let out = decoded(&r);
    assert!(
        near(out.get_pixel(10, 3).0, [255, 0, 0, 255], 40),
        "top is red"
    );
    assert!(
        near(out.get_pixel(10, 27).0, [0, 0, 255, 255], 40),
        "bottom is blue"
    );

    for (gravity, colour) in [
        (Gravity::North, [255, 0, 0, 255]),
        (Gravity::South, [0, 0, 255, 255]),
    ] {
        let r = run(
            &input,
            &ResizeParams {
                gravity,
                ..params(Some(40), Some(20), Fit::Cover)
            },
        );
        assert_eq!((r.width, r.height), (40, 20));
        assert!(
            near(decoded(&r).get_pixel(20, 10).0, colour, 40),
            "{gravity:?}"
        );
    }
    // No metadata survives re-encoding, so viewers will not rotate the output a second time.
    assert_eq!(
        probe::jpeg_orientation(&r.bytes),
        image::metadata::Orientation::NoTransforms
    );
}

#[test]
fn every_exif_orientation_puts_the_stored_top_left_where_it_belongs() {
    // Stored 160×80: a red 80×40 block at the top-left, the rest blue.
    let stored = RgbImage::from_fn(160, 80, |x, y| {
        Rgb(if x < 80 && y < 40 { RED } else { BLUE })
    });
    let base = jpeg(&stored);
    // Where the red block ends up in the displayed image (as fractions), per EXIF value.
    let cases = [
        (1, (0.25, 0.25)),
        (2, (0.75, 0.25)),
        (3, (0.75, 0.75)),
        (4, (0.25, 0.75)),
        (5, (0.25, 0.25)),
        (6, (0.75, 0.25)),
        (7, (0.75, 0.75)),
        (8, (0.25, 0.75)),
    ];
    for (exif, (fx, fy)) in cases {
        let r = run(
            &with_exif_orientation(&base, exif),
            &params(Some(40), None, Fit::Inside),
        );
        let expected = if exif >= 5 { (40, 80) } else { (40, 20) };
        assert_eq!((r.width, r.height), expected, "exif {exif}");
        let out = decoded(&r);
        let (x, y) = (
            (fx * f64::from(r.width)) as u32,
            (fy * f64::from(r.height)) as u32,
        );
        assert!(
            near(out.get_pixel(x, y).0, [255, 0, 0, 255], 40),
            "exif {exif}: {:?}",
            out.get_pixel(x, y)
        );
    }
}

#[test]
fn alpha_is_premultiplied_when_resampling_and_flattened_onto_white_for_jpeg() {
    // Left half fully transparent *green*, right half opaque red. Without premultiplied
    // resampling the invisible green bleeds into the edge; flattening must turn the left white.
    let img = RgbaImage::from_fn(200, 100, |x, _| {
        Rgba(if x < 100 {
            [0, 255, 0, 0]
        } else {
            [255, 0, 0, 255]
        })
    });
    let input = png(&DynamicImage::ImageRgba8(img));
    let p = ResizeParams {
        format: Some(ImageFormat::Jpeg),
        ..params(Some(50), None, Fit::Inside)
    };
    let out = decoded(&run(&input, &p));
    assert!(
        near(out.get_pixel(5, 12).0, [255, 255, 255, 255], 3),
        "transparent → white"
    );
    assert!(
        near(out.get_pixel(45, 12).0, [255, 0, 0, 255], 8),
        "opaque red stays red"
    );
    for x in 20..30 {
        let [_, g, b, _] = out.get_pixel(x, 12).0;
        assert!(g.abs_diff(b) <= 6, "no green fringe at x={x}: g={g} b={b}");
    }
    // Same input to PNG keeps the transparency, and the edge pixels are red, not green.
    let png_out = decoded(&run(&input, &params(Some(50), None, Fit::Inside)));
    assert_eq!(png_out.get_pixel(5, 12).0[3], 0);
    let [r, g, _, a] = png_out.get_pixel(25, 12).0;
    assert!(
        a > 0 && r > 200 && g < 30,
        "edge keeps its real colour: {:?}",
        png_out.get_pixel(25, 12)
    );
}

// ---------- colour management ----------

/// What LittleCMS makes of `rgb` in `profile` (relative colorimetric), in sRGB.
fn lcms_srgb(profile: &[u8], rgb: [u8; 3]) -> [u8; 3] {
    let input = lcms2::Profile::new_icc(profile).expect("profile parses");
    let t = lcms2::Transform::new_flags(
        &input,
        lcms2::PixelFormat::RGB_8,
        &lcms2::Profile::new_srgb(),
        lcms2::PixelFormat::RGB_8,
        lcms2::Intent::RelativeColorimetric,
        lcms2::Flags::default(),
    )
    .expect("transform");
    let mut out = [[0u8; 3]];
    t.transform_pixels(&[rgb], &mut out);
    out[0]
}

#[test]
fn embedded_profiles_are_converted_to_srgb_in_every_format() {
    const GREEN: [u8; 3] = [20, 200, 60];
    let solid = RgbImage::from_pixel(120, 80, Rgb(GREEN));
    for (name, profile) in [("adobe", icc::adobe_rgb()), ("p3", icc::display_p3())] {
        let want = lcms_srgb(&profile, GREEN);
        let moved = want.iter().zip(GREEN).map(|(w, g)| w.abs_diff(g)).max();
        assert!(moved > Some(10), "{name}: the test colour moves: {want:?}");
        let rgb = DynamicImage::ImageRgb8(solid.clone());
        let inputs = [
            ("jpeg", icc::jpeg_with_icc(&jpeg(&solid), &profile)),
            ("png", icc::png_with_icc(&rgb, &profile)),
            (
                "png16",
                icc::png_with_icc(&DynamicImage::ImageRgb16(rgb.to_rgb16()), &profile),
            ),
            ("webp", icc::webp_with_icc(&rgb, &profile)),
        ];
        for (format, input) in inputs {
            let p = ResizeParams {
                format: Some(ImageFormat::Png),
                ..params(Some(60), None, Fit::Inside)
            };
            let [r, g, b, _] = decoded(&run(&input, &p)).get_pixel(30, 20).0;
            // JPEG stores a flat colour a step or two off (YCbCr rounding), which the
            // conversion may stretch: compare with the conversion of what it stores.
            let stored = image::load_from_memory(&input).expect("input decodes");
            let [sr, sg, sb, _] = stored.get_pixel(60, 40).0;
            let want = lcms_srgb(&profile, [sr, sg, sb]);
            let want4 = [want[0], want[1], want[2], 255];
            assert!(
                near([r, g, b, 255], want4, 2),
                "{name} {format}: {:?}, want {want:?}",
                [r, g, b]
            );
        }
    }
}

#[test]
fn alpha_is_kept_and_not_converted() {
    let img = RgbaImage::from_fn(100, 50, |x, _| Rgba([20, 200, 60, (x * 2) as u8]));
    let input = icc::png_with_icc(&DynamicImage::ImageRgba8(img), &icc::adobe_rgb());
    let out = decoded(&run(&input, &params(Some(100), None, Fit::Inside)));
    assert_eq!(out.color(), image::ColorType::Rgba8);
    for x in [10, 50, 90] {
        let [r, g, b, a] = out.get_pixel(x, 25).0;
        assert_eq!(a, (x * 2) as u8, "alpha untouched at x={x}");
        let want = lcms_srgb(&icc::adobe_rgb(), [20, 200, 60]);
        assert!(near([r, g, b, 0], [want[0], want[1], want[2], 0], 1));
    }
}

#[test]
fn gray_with_a_gray_profile_stays_gray_with_srgb_tones() {
    let gray: Vec<u8> = vec![30; 64 * 32];
    let input = icc::jpeg_with_icc(
        &turbo_jpeg(&gray, 64, 32, PixelFormat::GRAY, false),
        &icc::gray_gamma22(),
    );
    let out = decoded(&run(&input, &params(Some(32), None, Fit::Inside)));
    assert_eq!(out.color(), image::ColorType::L8);
    // Gamma 2.2 and the sRGB curve part in the shadows: 30 is 0.90% luminance in gamma 2.2,
    // which the sRGB curve writes as 24.
    let v = out.get_pixel(16, 8).0[0];
    assert!(
        (22..=26).contains(&v),
        "converted dark gray {v}, want 24 ± 2"
    );
}

#[test]
fn srgb_and_broken_profiles_leave_pixels_alone() {
    let solid = RgbImage::from_pixel(40, 40, Rgb([20, 200, 60]));
    let rgb = DynamicImage::ImageRgb8(solid);
    let plain = decoded(&run(&png(&rgb), &params(Some(20), None, Fit::Inside)));
    for profile in [icc::srgb(), b"garbage".to_vec(), vec![0; 600]] {
        let input = icc::png_with_icc(&rgb, &profile);
        let out = decoded(&run(&input, &params(Some(20), None, Fit::Inside)));
        assert_eq!(out.get_pixel(10, 10), plain.get_pixel(10, 10));
    }
}

// ---------- errors ----------

#[test]
fn random_bytes_are_unsupported_media() {
    let noise: Vec<u8> = (0u32..4096)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let e = fail(
        &noise,
        &params(Some(10), None, Fit::Inside),
        &Limits::default(),
    );
    assert_eq!((e.status(), e.code()), (415, "unsupported_media_type"));
    let e = fail(
        b"",
        &params(Some(10), None, Fit::Inside),
        &Limits::default(),
    );
    assert_eq!(e.code(), "unsupported_media_type");
}

#[test]
fn truncated_and_corrupt_images_are_refused() {
    let p = params(Some(100), None, Fit::Inside);
    let full = jpeg(&card(400, 300));
    let e = fail(&full[..full.len() / 2], &p, &Limits::default());
    assert_eq!((e.status(), e.code()), (422, "truncated_image"), "{e}");
    // Headers and no scan: cut before the pixels, too.
    let e = fail(&full[..200], &p, &Limits::default());
    assert_eq!((e.status(), e.code()), (422, "truncated_image"), "{e}");
    let inputs = [
        ("truncated png", {
            let png = png(&DynamicImage::ImageRgb8(card(400, 300)));
            png[..png.len() / 2].to_vec()
        }),
        ("png without IHDR", b"\x89PNG\r\n\x1a\nnothing".to_vec()),
        ("gif header only", b"GIF89a\x10\x00\x10\x00".to_vec()),
        ("webp header only", b"RIFF\x10\0\0\0WEBPVP8 ".to_vec()),
    ];
    for (what, input) in inputs {
        let e = fail(&input, &p, &Limits::default());
        assert_eq!(
            (e.status(), e.code()),
            (422, "undecodable_image"),
            "{what}: {e}"
        );
    }
}

#[test]
fn huge_png_header_is_refused_before_decoding() {
    let input = png_claiming(20_000, 20_000);
    assert!(input.len() < 100);
    let started = Instant::now();
    let e = fail(
        &input,
        &params(Some(100), None, Fit::Inside),
        &Limits::default(),
    );
    assert_eq!((e.status(), e.code()), (422, "too_many_pixels"), "{e}");
    assert!(e.to_string().contains("20000x20000"));
    // Allocating and zeroing 1.2 GB would take far longer than this.
    assert!(started.elapsed() < Duration::from_millis(50));
}

#[test]
fn oversized_input_is_refused_before_sniffing() {
    let limits = Limits {
        max_input_bytes: 100,
        ..Limits::default()
    };
    let e = fail(
        &jpeg(&card(64, 64)),
        &params(Some(10), None, Fit::Inside),
        &limits,
    );
    assert_eq!((e.status(), e.code()), (413, "payload_too_large"));
}

#[test]
fn bad_parameters_are_refused() {
    let input = jpeg(&card(128, 64));
    let cases = [
        params(Some(0), None, Fit::Inside),
        params(Some(-5), Some(10), Fit::Inside),
        params(Some(8193), None, Fit::Inside),
        params(None, Some(9000), Fit::Inside),
        params(Some(100), None, Fit::Cover),
        params(None, Some(100), Fit::Contain),
        params(Some(100), None, Fit::Fill),
        ResizeParams {
            background: Some(schemas::events::Rgb { r: 0, g: 256, b: 0 }),
            ..params(Some(10), None, Fit::Inside)
        },
        ResizeParams {
            background: Some(schemas::events::Rgb { r: -1, g: 0, b: 0 }),
            ..params(Some(10), None, Fit::Inside)
        },
        ResizeParams {
            quality: Some(0),
            ..params(Some(10), None, Fit::Inside)
        },
        ResizeParams {
            quality: Some(101),
            ..params(Some(10), None, Fit::Inside)
        },
        ResizeParams {
            effort: Some(10),
            ..params(Some(10), None, Fit::Inside)
        },
        ResizeParams {
            lossless: true,
            ..params(Some(10), None, Fit::Inside)
        },
        // Valid alone, but enlarging this image that far would exceed the output side limit.
        ResizeParams {
            enlarge: true,
            ..params(None, Some(8000), Fit::Inside)
        },
    ];
    for p in cases {
        let e = fail(
            &input,
            &p,
            &Limits {
                max_output_side: 8192,
                ..Limits::default()
            },
        );
        assert_eq!(
            (e.status(), e.code()),
            (400, "bad_parameters"),
            "{p:?}: {e}"
        );
    }
    // All problems are reported at once.
    let e = fail(
        &input,
        &ResizeParams {
            quality: Some(0),
            ..params(Some(0), None, Fit::Cover)
        },
        &Limits::default(),
    );
    let msg = e.to_string();
    assert!(
        msg.contains("width") && msg.contains("quality") && msg.contains("cover"),
        "{msg}"
    );
}

#[test]
fn inside_without_a_box_reencodes_at_the_same_size() {
    let r = run(&jpeg(&card(120, 80)), &params(None, None, Fit::Inside));
    assert_eq!((r.width, r.height), (120, 80));
}

#[test]
fn timings_are_filled_except_queue() {
    let r = run(
        &jpeg(&card(1200, 800)),
        &params(Some(256), None, Fit::Inside),
    );
    assert_eq!(r.timings.queue_us, 0);
    assert!(r.timings.decode_us > 0 && r.timings.encode_us > 0);
}

// ---------- no internal error on any decodable image ----------

/// Real JPEGs (colour and gray, baseline and progressive) over a dense run of odd sizes, resized
/// to boxes that make libjpeg shrink on load by 1/2, 1/4 and 1/8 (and not at all), in every fit
/// mode: a decodable image never yields a 5xx. (Before integer crops, about one size in ten
/// failed with `resampling failed`.)
#[test]
fn odd_jpeg_sizes_never_fail_internally() {
    let mut checked = 0;
    for w in (97..=161).step_by(2) {
        for h in [17, 33, 50, 99, 126] {
            let rgb = card(w, h);
            let gray = DynamicImage::ImageRgb8(rgb.clone()).to_luma8();
            let inputs = [
                turbo_jpeg(rgb.as_raw(), w, h, PixelFormat::RGB, false),
                turbo_jpeg(gray.as_raw(), w, h, PixelFormat::GRAY, w % 4 == 1),
            ];
            for input in &inputs {
                // Ratios of 1, ~2, ~4, ~8 and more on the long side.
                for side in [w, w / 2 + 1, w / 3, w / 5, w / 9, 7, 1] {
                    for fit in [Fit::Inside, Fit::Cover, Fit::Contain, Fit::Fill] {
                        for format in [ImageFormat::Jpeg, ImageFormat::Png] {
                            let side = i32::try_from(side.max(1)).expect("small");
                            let p = ResizeParams {
                                format: Some(format),
                                gravity: Gravity::SouthEast,
                                ..params(Some(side), Some((side * 2 / 3).max(1)), fit)
                            };
                            match resize(input, &p, &Limits::default()) {
                                Ok(r) => assert!(r.width >= 1 && r.height >= 1),
                                Err(e) => panic!("{w}x{h} -> {p:?}: {} {e}", e.status()),
                            }
                            checked += 1;
                        }
                    }
                }
            }
        }
    }
    assert!(checked > 10_000, "{checked}");
}

// ---------- lenient JPEG decoding ----------

/// The JPEG with its final end-of-image marker removed.
fn without_eoi(jpeg: &[u8]) -> Vec<u8> {
    assert_eq!(&jpeg[jpeg.len() - 2..], &[0xFF, 0xD9]);
    jpeg[..jpeg.len() - 2].to_vec()
}

/// Offset of the first scan's entropy-coded data (after the SOS segment).
fn first_scan_data(jpeg: &[u8]) -> usize {
    let sos = jpeg
        .windows(2)
        .position(|m| m == [0xFF, 0xDA])
        .expect("has a scan");
    sos + 2 + usize::from(u16::from_be_bytes([jpeg[sos + 2], jpeg[sos + 3]]))
}

#[test]
fn jpegs_that_lose_no_pixels_decode_like_the_intact_file() {
    for progressive in [false, true] {
        let img = card(192, 128);
        let intact = turbo_jpeg(img.as_raw(), 192, 128, PixelFormat::RGB, progressive);
        let p = params(Some(96), None, Fit::Inside);
        let expected = run(&intact, &p);
        let mut stray_before_eoi = without_eoi(&intact);
        stray_before_eoi.extend_from_slice(&[0x00, 0x17, 0x2A, 0xFF, 0xD9]);
        let mut trailing_junk = intact.clone();
        trailing_junk.extend_from_slice(b"\0\0\0junk after the image");
        let mut zero_padded_no_eoi = without_eoi(&intact);
        zero_padded_no_eoi.extend_from_slice(&[0; 64]);
        let cases = [
            ("no end-of-image marker", without_eoi(&intact)),
            ("stray bytes before the end marker", stray_before_eoi),
            ("junk after the end marker", trailing_junk),
            ("zero padding and no end marker", zero_padded_no_eoi),
        ];
        for (what, input) in cases {
            let got = resize(&input, &p, &Limits::default())
                .unwrap_or_else(|e| panic!("{what} (progressive={progressive}): {e}"));
            assert_eq!(
                (got.width, got.height, &got.bytes),
                (expected.width, expected.height, &expected.bytes),
                "{what} (progressive={progressive}) decodes to the same picture"
            );
        }
    }
}

/// Offsets of every marker from the one after SOI up to and including the first scan's.
fn header_marker_offsets(jpeg: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut at = 2;
    while jpeg[at] == 0xFF {
        offsets.push(at);
        if jpeg[at + 1] == 0xDA {
            break;
        }
        at += 2 + usize::from(u16::from_be_bytes([jpeg[at + 2], jpeg[at + 3]]));
    }
    offsets
}

#[test]
fn stray_bytes_before_any_header_marker_decode_like_the_intact_file() {
    let img = card(97, 65);
    let cmyk: Vec<u8> = img
        .pixels()
        .flat_map(|p| [255 - p[0], 255 - p[1], 255 - p[2], 0])
        .collect();
    let files = [
        (
            "baseline",
            turbo_jpeg(img.as_raw(), 97, 65, PixelFormat::RGB, false),
        ),
        (
            "progressive",
            turbo_jpeg(img.as_raw(), 97, 65, PixelFormat::RGB, true),
        ),
        ("cmyk", turbo_jpeg(&cmyk, 97, 65, PixelFormat::CMYK, false)),
    ];
    let p = params(Some(40), None, Fit::Inside);
    for (kind, intact) in files {
        let expected = run(&intact, &p);
        let offsets = header_marker_offsets(&intact);
        assert!(offsets.len() >= 4, "{kind}: {offsets:?}");
        for at in offsets {
            for stray in [&[0x00][..], &[0x12, 0x00, 0x7F], &[0x55; 16]] {
                let mut input = intact[..at].to_vec();
                input.extend_from_slice(stray);
                input.extend_from_slice(&intact[at..]);
                let what = format!("{kind}: {} stray bytes before offset {at}", stray.len());
                assert_eq!(probe::sniff(&input), Some(ImageFormat::Jpeg), "{what}");
                let got = resize(&input, &p, &Limits::default())
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_eq!(
                    (got.width, got.height, &got.bytes),
                    (expected.width, expected.height, &expected.bytes),
                    "{what}: decodes to the same picture"
                );
            }
        }
    }
}

#[test]
fn a_png_without_its_end_chunk_decodes_and_a_cut_one_does_not() {
    for img in [
        DynamicImage::ImageRgb8(card(97, 65)),
        DynamicImage::ImageRgba8(DynamicImage::ImageRgb8(card(33, 17)).to_rgba8()),
    ] {
        let intact = png(&img);
        assert!(intact.ends_with(b"IEND\xAE\x42\x60\x82"));
        let p = params(Some(16), None, Fit::Inside);
        let expected = run(&intact, &p);
        let got = resize(&intact[..intact.len() - 12], &p, &Limits::default())
            .unwrap_or_else(|e| panic!("{}x{}: {e}", img.width(), img.height()));
        assert_eq!(got.bytes, expected.bytes);
        let e = fail(&intact[..intact.len() * 2 / 3], &p, &Limits::default());
        assert_eq!(e.status(), 422, "{e}");
    }
}

#[test]
fn a_jpeg_cut_inside_its_headers_is_truncated() {
    let intact = jpeg(&card(64, 48));
    let sos = header_marker_offsets(&intact).pop().expect("a scan");
    for cut in [2, 3, 20, sos / 2, sos] {
        let error = fail(
            &intact[..cut],
            &params(Some(8), None, Fit::Inside),
            &Limits::default(),
        );
        assert_eq!(error.code(), "truncated_image", "cut at {cut}: {error}");
    }
}

#[test]
fn jpegs_cut_mid_scan_are_refused_as_truncated() {
    for progressive in [false, true] {
        let img = card(192, 128);
        let intact = turbo_jpeg(img.as_raw(), 192, 128, PixelFormat::RGB, progressive);
        let start = first_scan_data(&intact);
        // Baseline: cut inside the only scan. Progressive: cut inside the first (DC) scan, whose
        // loss leaves whole blocks without any data.
        let first_scan_end = intact[start..]
            .windows(2)
            .position(|m| m[0] == 0xFF && m[1] != 0x00 && !(0xD0..=0xD7).contains(&m[1]))
            .map_or(intact.len(), |at| start + at);
        for fraction in [0.1, 0.5, 0.9] {
            let cut = start + ((first_scan_end - start) as f64 * fraction) as usize;
            let e = fail(
                &intact[..cut],
                &params(Some(96), None, Fit::Inside),
                &Limits::default(),
            );
            assert_eq!(
                (e.status(), e.code()),
                (422, "truncated_image"),
                "progressive={progressive} cut at {cut} of {}: {e}",
                intact.len()
            );
        }
    }
}

// ---------- output limits ----------

#[test]
fn slow_encodes_are_bounded_by_the_cost_model_before_decoding() {
    let tiny = png(&DynamicImage::ImageRgb8(card(1, 1)));
    let ask = |side: i32, format: ImageFormat, effort: Option<i32>| ResizeParams {
        enlarge: true,
        format: Some(format),
        effort,
        ..params(Some(side), Some(side), Fit::Fill)
    };
    // A 4096×4096 AVIF would take ~20 s; refused at once, naming the format and its limit.
    let started = Instant::now();
    let e = fail(
        &tiny,
        &ask(4096, ImageFormat::Avif, None),
        &Limits::default(),
    );
    assert!(started.elapsed() < Duration::from_millis(50));
    assert_eq!(
        (e.status(), e.code()),
        (422, "too_many_output_pixels"),
        "{e}"
    );
    assert!(e.to_string().contains("avif output at effort 2"), "{e}");
    // The slowest effort is bounded far lower; the fastest far higher.
    let e = fail(
        &tiny,
        &ask(1024, ImageFormat::Avif, Some(9)),
        &Limits::default(),
    );
    assert_eq!(e.code(), "too_many_output_pixels", "{e}");
    let limit_at = |format: ImageFormat, effort: Option<u8>| {
        let settings = encode::Settings {
            quality: 80,
            lossless: false,
            effort,
        };
        let budget = Limits::default().max_encode_time.as_nanos() as u64;
        budget / encode::encode_ns_per_pixel(format, &settings).max(1)
    };
    assert!((256 * 256..600 * 600).contains(&limit_at(ImageFormat::Avif, Some(9))));
    assert!(limit_at(ImageFormat::Avif, None) >= 1920 * 1080);
    assert!(limit_at(ImageFormat::Avif, Some(0)) >= 3840 * 2160);
    let e = fail(
        &tiny,
        &ask(4096, ImageFormat::Webp, Some(9)),
        &Limits::default(),
    );
    assert_eq!(e.code(), "too_many_output_pixels", "{e}");
    // Fast encoders are bounded by the output pixel limit alone.
    for format in [ImageFormat::Jpeg, ImageFormat::Png] {
        assert_eq!(
            encode::encode_ns_per_pixel(
                format,
                &encode::Settings {
                    quality: 80,
                    lossless: false,
                    effort: Some(9)
                }
            ),
            0
        );
    }
    // Within the budget it encodes.
    let r = resize(
        &tiny,
        &ask(64, ImageFormat::Avif, Some(9)),
        &Limits::default(),
    )
    .expect("a small slow encode");
    assert_eq!((r.width, r.height), (64, 64));
}

#[test]
fn output_pixels_are_bounded_before_allocating() {
    let tiny = png(&DynamicImage::ImageRgb8(card(1, 1)));
    assert!(tiny.len() < 100);
    let p = ResizeParams {
        enlarge: true,
        ..params(Some(8192), Some(8192), Fit::Fill)
    };
    let started = Instant::now();
    let e = fail(&tiny, &p, &Limits::default());
    assert_eq!(
        (e.status(), e.code()),
        (422, "too_many_output_pixels"),
        "{e}"
    );
    assert!(e.to_string().contains("8192x8192"), "{e}");
    assert!(started.elapsed() < Duration::from_millis(50));
    // `contain` pads to the box: the canvas counts (4500×4500 > 16.7 Mpx), not the resampled
    // image (4500×2250 would fit).
    let p = ResizeParams {
        enlarge: true,
        ..params(Some(4500), Some(4500), Fit::Contain)
    };
    let e = fail(&jpeg(&card(64, 32)), &p, &Limits::default());
    assert_eq!(e.code(), "too_many_output_pixels", "{e}");
    // At the limit it is fine.
    let limits = Limits {
        max_output_pixels: 64 * 32,
        ..Limits::default()
    };
    let r = resize(
        &tiny,
        &ResizeParams {
            enlarge: true,
            ..params(Some(64), Some(32), Fit::Fill)
        },
        &limits,
    )
    .expect("at the limit");
    assert_eq!((r.width, r.height), (64, 32));
}

#[test]
fn an_encoded_output_over_the_reply_limit_is_output_too_large() {
    // Noise does not compress: a 256×256 PNG of it is ~190 KiB.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let noise = RgbImage::from_fn(256, 256, |_, _| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let [a, b, c, ..] = state.to_le_bytes();
        Rgb([a, b, c])
    });
    let input = png(&DynamicImage::ImageRgb8(noise));
    let p = ResizeParams {
        format: Some(ImageFormat::Png),
        ..params(Some(256), None, Fit::Inside)
    };
    let limits = Limits {
        max_output_bytes: 100_000,
        ..Limits::default()
    };
    let e = fail(&input, &p, &limits);
    assert_eq!((e.status(), e.code()), (422, "output_too_large"), "{e}");
    assert!(e.to_string().contains("over the limit of 100000"), "{e}");
    // A smaller output of the same image fits.
    let small = resize(&input, &params(Some(64), None, Fit::Inside), &limits).expect("fits");
    assert!(small.bytes.len() <= 100_000);
}

#[test]
fn every_error_has_a_listed_code_and_a_client_status() {
    let examples = [
        KernelError::BadParameters("x".into()),
        KernelError::PayloadTooLarge { size: 2, limit: 1 },
        KernelError::UnsupportedMediaType,
        KernelError::UnsupportedFormat("TIFF"),
        KernelError::TooManyFrames {
            format: "GIF",
            frames: 2,
            limit: 1,
        },
        KernelError::AnimationTooLarge {
            format: "GIF",
            frames: 2,
            width: 1,
            height: 1,
            limit: 1,
        },
        KernelError::TooManyPixels {
            format: "PNG",
            width: 2,
            height: 2,
            limit: 1,
        },
        KernelError::TooManyOutputPixels {
            width: 2,
            height: 2,
            limit: 1,
        },
        KernelError::OutputTooLarge {
            format: "PNG",
            size: 2,
            limit: 1,
        },
        KernelError::Truncated {
            detail: "cut".into(),
        },
        KernelError::undecodable(ImageFormat::Png, "bad"),
        KernelError::Encode {
            format: "PNG",
            source: "bad".into(),
        },
    ];
    let mut seen = std::collections::BTreeSet::new();
    for e in &examples {
        assert!(
            KernelError::CODES.contains(&e.code()),
            "{} not listed",
            e.code()
        );
        assert!(matches!(e.status(), 400..=599), "{e}");
        assert_eq!(e.status() >= 500, e.code() == "internal_error", "{e}");
        seen.insert(e.code());
    }
    assert_eq!(
        seen.len(),
        KernelError::CODES.len(),
        "every listed code is produced"
    );
}

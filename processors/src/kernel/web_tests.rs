//! Kernel tests for what web pages ask of it: focus-point and smart crops end to end (EXIF
//! orientation and animations included, the same input always cropped the same way), the output
//! format chosen from what `Accept` allows (every branch, the AVIF budget included), and GIFs
//! drawn on their screen as browsers and libvips draw them.

// Test set-up failing is a test failure; panicking with the reason is the point.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::Cursor;

use gif::DisposalMethod;
use image::{AnimationDecoder, Rgb, RgbImage};
use schemas::events::{AutoFormat, Fit, FocusPoint, Frames, Gravity, ImageFormat, ResizeParams};

use super::tests::{fail, run, with_exif_orientation};
use super::*;

// ---------- inputs ----------

fn png(img: &RgbImage) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("png encodes");
    out.into_inner()
}

const RED: [u8; 3] = [255, 0, 0];
const BLUE: [u8; 3] = [0, 0, 255];
const GREY: [u8; 3] = [128, 128, 128];

/// Red left half, blue right half.
fn halves(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, _| Rgb(if x < w / 2 { RED } else { BLUE }))
}

/// Flat grey, with a black-and-white checkerboard of 30-pixel squares in the rectangle
/// (x, y, w, h): the one detailed part of the picture. (A finer pattern would average to grey on
/// the 32 × 32 grid smart crop scores, as it does in libvips.)
fn detail_at(size: (u32, u32), rect: (u32, u32, u32, u32)) -> RgbImage {
    RgbImage::from_fn(size.0, size.1, |x, y| {
        let inside =
            (rect.0..rect.0 + rect.2).contains(&x) && (rect.1..rect.1 + rect.3).contains(&y);
        Rgb(match inside {
            true if ((x - rect.0) / 30 + (y - rect.1) / 30).is_multiple_of(2) => [0, 0, 0],
            true => [255, 255, 255],
            false => GREY,
        })
    })
}

/// A GIF of screen `screen` with `frames` of one colour each: (left, top, width, height, RGB,
/// disposal), each shown for 70 ms.
#[allow(clippy::type_complexity)]
pub(super) fn gif_on_screen(
    screen: (u16, u16),
    frames: &[(u16, u16, u16, u16, [u8; 3], DisposalMethod)],
) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = gif::Encoder::new(&mut out, screen.0, screen.1, &[]).expect("encoder");
        encoder.set_repeat(gif::Repeat::Infinite).expect("repeat");
        for &(left, top, w, h, [r, g, b], dispose) in frames {
            let mut rgba: Vec<u8> = std::iter::repeat_n([r, g, b, 255], usize::from(w * h))
                .flatten()
                .collect();
            let mut frame = gif::Frame::from_rgba_speed(w, h, &mut rgba, 30);
            (frame.left, frame.top, frame.dispose, frame.delay) = (left, top, dispose, 7);
            encoder.write_frame(&frame).expect("frame");
        }
    }
    out
}

// ---------- helpers ----------

fn cover(width: i32, height: i32, gravity: Gravity) -> ResizeParams {
    ResizeParams {
        width: Some(width),
        height: Some(height),
        fit: Fit::Cover,
        gravity,
        format: Some(ImageFormat::Png),
        ..ResizeParams::default()
    }
}

fn focus(width: i32, height: i32, x: f64, y: f64) -> ResizeParams {
    ResizeParams {
        focus_point: Some(FocusPoint { x, y }),
        ..cover(width, height, Gravity::FocusPoint)
    }
}

fn pixels(r: &Resized) -> RgbImage {
    let img = image::load_from_memory(&r.bytes).expect("output decodes");
    assert_eq!((img.width(), img.height()), (r.width, r.height));
    img.to_rgb8()
}

/// How far the output's pixels are, on average, from flat grey: near 0 for a crop of the plain
/// part, large where it holds the checkerboard.
fn detail(img: &RgbImage) -> f64 {
    let total: u64 = img
        .pixels()
        .map(|p| p.0.iter().map(|&c| u64::from(c.abs_diff(128))).sum::<u64>())
        .sum();
    total as f64 / (img.width() * img.height() * 3) as f64
}

// ---------- focus point ----------

#[test]
fn focus_point_keeps_its_side_of_the_image() {
    // 400×200 to a 100×100 cover: a 200×200 crop, free to move along x.
    let input = png(&halves(400, 200));
    for (x, colour) in [(0.1, RED), (0.0, RED), (0.9, BLUE), (1.0, BLUE)] {
        let out = pixels(&run(&input, &focus(100, 100, x, 0.5)));
        assert_eq!(out.dimensions(), (100, 100));
        // Away from the crop's edge, where the filter reaches over to the other half.
        for px in [(10, 0), (50, 50), (90, 99)] {
            let p = out.get_pixel(px.0, px.1).0;
            assert!(
                p.iter().zip(colour).all(|(a, b)| a.abs_diff(b) < 8),
                "x {x} at {px:?}: {p:?}"
            );
        }
    }
    // Centred on the middle, the crop straddles both halves, as `centre` does.
    let middle = run(&input, &focus(100, 100, 0.5, 0.5));
    assert_eq!(
        middle.bytes,
        run(&input, &cover(100, 100, Gravity::Centre)).bytes
    );
}

#[test]
fn focus_point_is_a_point_of_the_upright_image() {
    // Stored 200×400 with its left half red; EXIF 6 (rotate 90° clockwise) shows it 400×200
    // with red on top. The point (0.5, 0.1) is near the top of the upright image: red.
    let stored = RgbImage::from_fn(200, 400, |x, _| Rgb(if x < 100 { RED } else { BLUE }));
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
        .encode_image(&stored)
        .expect("jpeg");
    let exif_input = with_exif_orientation(&jpeg, 6);
    for (y, colour) in [(0.1, RED), (0.9, BLUE)] {
        let out = pixels(&run(&exif_input, &focus(100, 20, 0.5, y)));
        assert_eq!(out.dimensions(), (100, 20));
        let p = out.get_pixel(50, 10).0;
        assert!(
            p.iter().zip(colour).all(|(a, b)| a.abs_diff(b) < 40),
            "y {y}: {p:?}"
        );
    }
}

#[test]
fn focus_gravity_needs_a_point_in_range() {
    let input = png(&halves(40, 20));
    for (p, needle) in [
        (
            ResizeParams {
                focus_point: None,
                ..focus(10, 10, 0.0, 0.0)
            },
            "needs a focus point",
        ),
        (focus(10, 10, 1.5, 0.0), "0–1"),
        (focus(10, 10, 0.5, f64::NAN), "0–1"),
    ] {
        let e = fail(&input, &p, &Limits::default());
        assert_eq!((e.status(), e.code()), (400, "bad_parameters"), "{e}");
        assert!(e.to_string().contains(needle), "{e}");
    }
    // Padding modes place focus point and smart gravity as the centre.
    for gravity in [Gravity::FocusPoint, Gravity::Smart] {
        let p = ResizeParams {
            fit: Fit::Pad,
            ..focus(30, 30, 0.0, 0.0)
        };
        let p = ResizeParams { gravity, ..p };
        let centred = ResizeParams {
            gravity: Gravity::Centre,
            focus_point: None,
            ..p
        };
        assert_eq!(run(&input, &p).bytes, run(&input, &centred).bytes);
    }
}

// ---------- smart crop ----------

#[test]
fn smart_crop_keeps_the_detailed_corner() {
    // 600×300 to 100×100: a 300×300 crop. The detail sits bottom right, 90 px from the edges.
    let input = png(&detail_at((600, 300), (470, 170, 90, 90)));
    let smart = run(&input, &cover(100, 100, Gravity::Smart));
    let centre = run(&input, &cover(100, 100, Gravity::Centre));
    // All of the detail, not a sliver: its 90×90 (30×30 at the crop's 1/3 scale) is in the crop.
    let whole = 127.5 * (30.0 * 30.0) / (100.0 * 100.0);
    let found = detail(&pixels(&smart));
    assert!(
        found > 0.9 * whole,
        "smart crop has the detail: {found} of {whole}"
    );
    assert!(detail(&pixels(&centre)) < 1.0, "the centre crop misses it");
    // Deterministic: the same input gives the same bytes.
    assert_eq!(
        smart.bytes,
        run(&input, &cover(100, 100, Gravity::Smart)).bytes
    );
    // The same on the other side, and on a portrait crop along y.
    let left = png(&detail_at((600, 300), (10, 20, 90, 90)));
    assert!(detail(&pixels(&run(&left, &cover(100, 100, Gravity::Smart)))) > 0.9 * whole);
    let tall = png(&detail_at((300, 600), (100, 500, 90, 90)));
    assert!(detail(&pixels(&run(&tall, &cover(100, 100, Gravity::Smart)))) > 0.9 * whole);
}

#[test]
fn smart_crop_finds_skin_on_a_plain_background() {
    // A smooth skin-toned face-sized patch near the left edge of a dark blue backdrop.
    let img = RgbImage::from_fn(800, 400, |x, y| {
        let dx = f64::from(x) - 120.0;
        let dy = f64::from(y) - 200.0;
        Rgb(
            if dx * dx / 90.0f64.powi(2) + dy * dy / 120.0f64.powi(2) < 1.0 {
                [224, 172, 138]
            } else {
                [20, 30, 60]
            },
        )
    });
    let out = pixels(&run(&png(&img), &cover(200, 200, Gravity::Smart)));
    // The crop (400×400 of 800×400) starts at the left edge: the face is in its left third.
    let p = out.get_pixel(60, 100).0;
    assert!(p[0] > 180 && p[2] < 170, "skin in the crop: {p:?}");
}

#[test]
fn smart_crop_follows_exif_orientation_and_works_on_animations() {
    // Stored 300×600 with the detail at the bottom; EXIF 8 (rotate 90° counter-clockwise) shows
    // it 600×300 with the detail on the right.
    let stored = detail_at((300, 600), (110, 470, 90, 90));
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
        .encode_image(&stored)
        .expect("jpeg");
    let input = with_exif_orientation(&jpeg, 8);
    let out = run(&input, &cover(100, 100, Gravity::Smart));
    // JPEG blurs the squares' edges a little.
    assert!(detail(&pixels(&out)) > 0.8 * 127.5 * (30.0 * 30.0) / (100.0 * 100.0));

    // An animation: one crop for all frames, placed on the first.
    let frames = gif_on_screen(
        (60, 30),
        &[
            (0, 0, 60, 30, GREY, DisposalMethod::Keep),
            (50, 20, 10, 10, RED, DisposalMethod::Keep),
            (0, 0, 10, 10, BLUE, DisposalMethod::Keep),
        ],
    );
    let p = ResizeParams {
        format: None,
        ..cover(20, 20, Gravity::Smart)
    };
    let out = run(&frames, &p);
    assert_eq!(
        (out.format, out.width, out.height),
        (ImageFormat::Gif, 20, 20)
    );
}

// ---------- format from Accept ----------

fn auto(avif: bool, webp: bool, avif_budget_ms: i32) -> Option<AutoFormat> {
    Some(AutoFormat {
        avif,
        webp,
        avif_budget_ms,
    })
}

fn negotiated(width: i32, auto_format: Option<AutoFormat>) -> ResizeParams {
    ResizeParams {
        width: Some(width),
        auto_format,
        ..ResizeParams::default()
    }
}

#[test]
fn format_from_accept_prefers_avif_then_webp_then_the_input_format() {
    let input = png(&halves(600, 600));
    let format = |width: i32, a: Option<AutoFormat>| run(&input, &negotiated(width, a)).format;
    // 64×64 at the default effort is ~5 ms by the cost model.
    assert_eq!(format(64, auto(true, true, 500)), ImageFormat::Avif);
    assert_eq!(format(64, auto(true, false, 500)), ImageFormat::Avif);
    assert_eq!(format(64, auto(false, true, 500)), ImageFormat::Webp);
    assert_eq!(format(64, auto(false, false, 500)), ImageFormat::Png);
    assert_eq!(format(64, None), ImageFormat::Png);
    // 512×512 at 1.2 µs per pixel is ~315 ms: over a 100 ms budget, WebP instead; without WebP,
    // the input's format. A budget of 0 never allows AVIF.
    assert_eq!(format(512, auto(true, true, 100)), ImageFormat::Webp);
    assert_eq!(format(512, auto(true, false, 100)), ImageFormat::Png);
    assert_eq!(format(512, auto(true, true, 400)), ImageFormat::Avif);
    assert_eq!(format(16, auto(true, true, 0)), ImageFormat::Webp);
    // A slower effort counts: 64×64 at effort 9 is ~57 ms.
    let slow = ResizeParams {
        effort: Some(9),
        ..negotiated(64, auto(true, true, 50))
    };
    assert_eq!(run(&input, &slow).format, ImageFormat::Webp);
    // A named format wins.
    let named = ResizeParams {
        format: Some(ImageFormat::Jpeg),
        ..negotiated(64, auto(true, true, 500))
    };
    assert_eq!(run(&input, &named).format, ImageFormat::Jpeg);
    // Lossless has no AVIF: WebP, lossless.
    let lossless = ResizeParams {
        lossless: true,
        ..negotiated(64, auto(true, true, 500))
    };
    assert_eq!(run(&input, &lossless).format, ImageFormat::Webp);
    // Without a match, the input's rule: a still GIF becomes PNG.
    let gif = gif_on_screen((20, 10), &[(0, 0, 20, 10, RED, DisposalMethod::Keep)]);
    assert_eq!(
        run(&gif, &negotiated(10, auto(false, false, 500))).format,
        ImageFormat::Png
    );
}

#[test]
fn format_from_accept_keeps_animations_animated() {
    let input = gif_on_screen(
        (40, 20),
        &[
            (0, 0, 40, 20, RED, DisposalMethod::Keep),
            (0, 0, 20, 20, BLUE, DisposalMethod::Keep),
        ],
    );
    let animated = |a| run(&input, &negotiated(20, a));
    // Every frame kept: never AVIF; animated WebP when accepted, else GIF.
    let r = animated(auto(true, true, 500));
    assert_eq!(r.format, ImageFormat::Webp);
    let frames = image::codecs::webp::WebPDecoder::new(Cursor::new(&r.bytes))
        .expect("webp")
        .into_frames()
        .collect_frames()
        .expect("frames");
    assert_eq!(frames.len(), 2);
    assert_eq!(animated(auto(true, false, 500)).format, ImageFormat::Gif);
    // The first frame only is a still: AVIF may be chosen.
    let first = ResizeParams {
        frames: Frames::First,
        ..negotiated(20, auto(true, true, 500))
    };
    assert_eq!(run(&input, &first).format, ImageFormat::Avif);
}

// ---------- GIF screen ----------

/// Each frame's size, and the colour at `at`, of a GIF output.
fn gif_frames(bytes: &[u8], at: (u32, u32)) -> Vec<((u32, u32), [u8; 4])> {
    image::codecs::gif::GifDecoder::new(Cursor::new(bytes))
        .expect("gif")
        .into_frames()
        .collect_frames()
        .expect("frames")
        .iter()
        .map(|f| (f.buffer().dimensions(), f.buffer().get_pixel(at.0, at.1).0))
        .collect()
}

#[test]
fn gifs_come_out_at_the_size_of_their_screen() {
    let same = |format| ResizeParams {
        format,
        ..ResizeParams::default()
    };
    // A frame smaller than the screen, inside it: the screen's size, the frame at its offset.
    let small = gif_on_screen((20, 10), &[(4, 2, 8, 6, RED, DisposalMethod::Keep)]);
    let r = run(&small, &same(None));
    assert_eq!((r.format, r.width, r.height), (ImageFormat::Png, 20, 10));
    let out = image::load_from_memory(&r.bytes).unwrap().to_rgba8();
    assert_eq!(
        out.get_pixel(0, 0).0[3],
        0,
        "outside the frame: transparent"
    );
    assert_eq!(out.get_pixel(5, 3).0, [255, 0, 0, 255]);

    // A first frame reaching past the screen grows it (as libvips and browsers do); a later one
    // is clipped to it.
    let past = gif_on_screen(
        (20, 10),
        &[
            (15, 5, 10, 10, BLUE, DisposalMethod::Keep),
            (20, 10, 30, 30, RED, DisposalMethod::Keep),
        ],
    );
    let header = probe::probe(&past).unwrap();
    assert_eq!((header.width, header.height, header.frames), (25, 15, 2));
    let r = run(&past, &same(Some(ImageFormat::Png)));
    assert_eq!((r.width, r.height), (25, 15));
    let out = image::load_from_memory(&r.bytes).unwrap().to_rgba8();
    assert_eq!(out.get_pixel(24, 14).0, [0, 0, 255, 255]);
    let r = run(&past, &same(None));
    assert_eq!((r.format, r.width, r.height), (ImageFormat::Gif, 25, 15));
    assert_eq!(
        gif_frames(&r.bytes, (24, 14)),
        vec![((25, 15), [0, 0, 255, 255]), ((25, 15), [255, 0, 0, 255])]
    );
}

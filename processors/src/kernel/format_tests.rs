//! Kernel tests for the output formats and animation: lossy and lossless WebP, AVIF, GIF (and
//! its alpha threshold), animated GIF and WebP in and out (frame count, order, delays, loop count,
//! size, WebP disposal and blending, embedded ICC profiles), the frame and pixel limits refused
//! from crafted headers before decoding, and the formats refused by name (HEIC and AVIF input:
//! `heif_tests`).

// Test set-up failing is a test failure; panicking with the reason is the point.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::Cursor;

use image::codecs::gif::GifDecoder;
use image::codecs::webp::WebPDecoder;
use image::{AnimationDecoder, DynamicImage, Rgb, RgbImage, RgbaImage};
use schemas::events::{Fit, Frames, ImageFormat, ResizeParams};

use super::*;

// ---------- inputs ----------

/// A photo-like test card: gradients with deterministic per-pixel noise, which lossless coding
/// cannot squeeze and lossy coding can.
fn photo(w: u32, h: u32) -> RgbImage {
    let mut state = 0x2545_F491_u32;
    RgbImage::from_fn(w, h, |x, y| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (state % 24) as u8;
        Rgb([
            ((x * 230 / w) as u8).saturating_add(n),
            ((y * 230 / h) as u8).saturating_add(n),
            (((x + y) * 115 / (w + h)) as u8).saturating_add(n),
        ])
    })
}

fn png(img: &DynamicImage) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("png encodes");
    out.into_inner()
}

const GREY: [u8; 3] = [128, 128, 128];
const COLOURS: [[u8; 3]; 3] = [[255, 0, 0], [0, 200, 0], [0, 0, 255]];

/// Frame `i`: its colour on the left half, grey on the right.
fn frame_rgba(w: u32, h: u32, colour: [u8; 3]) -> Vec<u8> {
    RgbaImage::from_fn(w, h, |x, _| {
        let [r, g, b] = if x < w / 2 { colour } else { GREY };
        image::Rgba([r, g, b, 255])
    })
    .into_raw()
}

/// An animated GIF with one frame per colour, shown for `delays_cs`.
fn animated_gif(w: u16, h: u16, delays_cs: &[u16], repeat: gif::Repeat) -> Vec<u8> {
    let frames: Vec<RgbaImage> = COLOURS
        .iter()
        .map(|c| {
            RgbaImage::from_raw(
                u32::from(w),
                u32::from(h),
                frame_rgba(u32::from(w), u32::from(h), *c),
            )
            .unwrap()
        })
        .collect();
    animated_gif_of(&frames, delays_cs, repeat)
}

/// An animated GIF of `frames` (all the same size), shown for `delays_cs`.
fn animated_gif_of(frames: &[RgbaImage], delays_cs: &[u16], repeat: gif::Repeat) -> Vec<u8> {
    let (w, h) = frames[0].dimensions();
    let (w, h) = (u16::try_from(w).unwrap(), u16::try_from(h).unwrap());
    let mut out = Vec::new();
    {
        let mut encoder = gif::Encoder::new(&mut out, w, h, &[]).expect("gif encoder");
        encoder.set_repeat(repeat).expect("repeat");
        for (pixels, &delay) in frames.iter().zip(delays_cs) {
            let mut px = pixels.as_raw().clone();
            let mut frame = gif::Frame::from_rgba_speed(w, h, &mut px, 10);
            frame.delay = delay;
            encoder.write_frame(&frame).expect("frame");
        }
    }
    out
}

/// One frame of [`webp_anmf`]: its pixels at `(x, y)` (even) on the canvas, shown for
/// `duration_ms`, then cleared to transparent if `dispose`; drawn over the canvas if `blend`,
/// else replacing it.
struct Anmf {
    x: u32,
    y: u32,
    pixels: RgbaImage,
    duration_ms: u32,
    dispose: bool,
    blend: bool,
}

/// An animated WebP assembled chunk by chunk (VP8X, optional ICCP, ANIM, one ANMF per frame with
/// a lossless bitstream from libwebp), so each frame's rectangle, disposal and blending are
/// exactly as given; libwebp's own animation encoder chooses them itself.
fn webp_anmf(w: u32, h: u32, frames: &[Anmf], icc: Option<&[u8]>) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, fourcc: &[u8; 4], payload: &[u8]) {
        out.extend_from_slice(fourcc);
        out.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_le_bytes());
        out.extend_from_slice(payload);
        if payload.len() % 2 == 1 {
            out.push(0);
        }
    }
    let u24 = |v: u32| v.to_le_bytes()[..3].to_vec();
    let mut body = b"WEBP".to_vec();
    // Flags: ICC (0x20), alpha (0x10), animation (0x02).
    let flags = 0x12 | if icc.is_some() { 0x20 } else { 0 };
    chunk(
        &mut body,
        b"VP8X",
        &[vec![flags, 0, 0, 0], u24(w - 1), u24(h - 1)].concat(),
    );
    if let Some(profile) = icc {
        chunk(&mut body, b"ICCP", profile);
    }
    chunk(&mut body, b"ANIM", &[0, 0, 0, 0, 0, 0]); // transparent background, loop forever
    for f in frames {
        let (fw, fh) = f.pixels.dimensions();
        let still = webp::Encoder::from_rgba(f.pixels.as_raw(), fw, fh).encode_lossless();
        assert_eq!(&still[12..16], b"VP8L", "a simple lossless WebP");
        let flags = u8::from(!f.blend) << 1 | u8::from(f.dispose);
        let mut payload = [u24(f.x / 2), u24(f.y / 2), u24(fw - 1), u24(fh - 1)].concat();
        payload.extend_from_slice(&u24(f.duration_ms));
        payload.push(flags);
        payload.extend_from_slice(&still[12..]);
        chunk(&mut body, b"ANMF", &payload);
    }
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&u32::try_from(body.len()).unwrap().to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Every frame of an animated WebP as libwebp's `WebPAnimDecoder` composes it: the reference.
fn libwebp_frames(webp: &[u8]) -> Vec<RgbaImage> {
    let anim = webp::AnimDecoder::new(webp)
        .decode()
        .expect("libwebp decodes");
    anim.into_iter()
        .map(|f| RgbaImage::from_raw(f.width(), f.height(), f.get_image().to_vec()).unwrap())
        .collect()
}

/// An animated lossless WebP with one frame per colour, shown for `delays_ms`, looping `loops`.
fn animated_webp(w: u32, h: u32, delays_ms: &[u32], loops: i32) -> Vec<u8> {
    let mut config = webp::WebPConfig::new().expect("config");
    config.lossless = 1;
    let frames: Vec<Vec<u8>> = COLOURS.iter().map(|c| frame_rgba(w, h, *c)).collect();
    let mut encoder = webp::AnimEncoder::new(w, h, &config);
    encoder.set_loop_count(loops);
    let mut start = 0;
    for (px, &delay) in frames.iter().zip(delays_ms) {
        encoder.add_frame(webp::AnimFrame::from_rgba(px, w, h, start));
        start += i32::try_from(delay).expect("small");
    }
    let mut bytes = encoder.try_encode().expect("webp animation").to_vec();
    animation::set_last_duration(&mut bytes, u32::try_from(start).expect("small"));
    bytes
}

// ---------- helpers ----------

fn params(width: i32, format: Option<ImageFormat>) -> ResizeParams {
    ResizeParams {
        width: Some(width),
        format,
        ..ResizeParams::default()
    }
}

use super::tests::{fail, run};

/// Each decoded frame's size, delay in ms and the colour at its left-quarter centre.
fn frames_of(r: &Resized) -> Vec<((u32, u32), u32, [u8; 4])> {
    let frames = match r.format {
        ImageFormat::Gif => GifDecoder::new(Cursor::new(&r.bytes))
            .expect("gif")
            .into_frames()
            .collect_frames(),
        ImageFormat::Webp => WebPDecoder::new(Cursor::new(&r.bytes))
            .expect("webp")
            .into_frames()
            .collect_frames(),
        other => panic!("{other:?} is no animation"),
    }
    .expect("output frames decode");
    frames
        .into_iter()
        .map(|f| {
            let (n, d) = f.delay().numer_denom_ms();
            let buffer = f.into_buffer();
            let pixel = buffer.get_pixel(buffer.width() / 4, buffer.height() / 2).0;
            (buffer.dimensions(), n / d, pixel)
        })
        .collect()
}

fn near(a: [u8; 4], b: [u8; 3], tolerance: u8) -> bool {
    a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= tolerance)
}

/// Width and height from an AVIF's `ispe` (image spatial extents) property.
fn avif_size(bytes: &[u8]) -> (u32, u32) {
    let at = bytes
        .windows(4)
        .position(|w| w == b"ispe")
        .expect("an ispe box");
    let field = |o: usize| u32::from_be_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
    (field(at + 8), field(at + 12))
}

// ---------- WebP ----------

#[test]
fn lossy_webp_is_lossy_and_much_smaller_than_lossless() {
    let input = png(&DynamicImage::ImageRgb8(photo(800, 600)));
    let lossy = run(&input, &params(512, Some(ImageFormat::Webp)));
    let lossless = run(
        &input,
        &ResizeParams {
            lossless: true,
            ..params(512, Some(ImageFormat::Webp))
        },
    );
    assert_eq!(&lossy.bytes[12..16], b"VP8 ", "lossy bitstream");
    assert_eq!(&lossless.bytes[12..16], b"VP8L", "lossless bitstream");
    for r in [&lossy, &lossless] {
        let img = image::load_from_memory(&r.bytes).expect("decodes");
        assert_eq!(
            (img.width(), img.height(), r.width, r.height),
            (512, 384, 512, 384)
        );
    }
    assert!(
        lossy.bytes.len() * 4 < lossless.bytes.len(),
        "lossy {} bytes vs lossless {}",
        lossy.bytes.len(),
        lossless.bytes.len()
    );
}

#[test]
fn webp_quality_and_effort_change_the_bytes() {
    let input = png(&DynamicImage::ImageRgb8(photo(600, 400)));
    let at = |quality: i32, effort: Option<i32>| {
        run(
            &input,
            &ResizeParams {
                quality: Some(quality),
                effort,
                ..params(300, Some(ImageFormat::Webp))
            },
        )
        .bytes
        .len()
    };
    assert!(at(30, None) < at(90, None), "lower quality, fewer bytes");
    assert_ne!(at(80, Some(0)), at(80, Some(6)), "effort reaches libwebp");
}

#[test]
fn lossy_webp_keeps_alpha() {
    let mut rgba = RgbaImage::from_pixel(200, 100, image::Rgba([255, 0, 0, 255]));
    for x in 100..200 {
        for y in 0..100 {
            rgba.put_pixel(x, y, image::Rgba([0, 0, 0, 0]));
        }
    }
    let r = run(
        &png(&DynamicImage::ImageRgba8(rgba)),
        &params(100, Some(ImageFormat::Webp)),
    );
    let img = image::load_from_memory(&r.bytes)
        .expect("decodes")
        .to_rgba8();
    assert!(img.get_pixel(10, 25).0[3] > 250 && img.get_pixel(90, 25).0[3] < 5);
}

// ---------- AVIF and GIF stills ----------

#[test]
fn avif_output_is_an_avif_of_the_planned_size() {
    let input = png(&DynamicImage::ImageRgb8(photo(640, 480)));
    let r = run(
        &input,
        &ResizeParams {
            quality: Some(60),
            ..params(320, Some(ImageFormat::Avif))
        },
    );
    assert_eq!((r.format, r.width, r.height), (ImageFormat::Avif, 320, 240));
    assert_eq!(&r.bytes[4..12], b"ftypavif", "an AVIF file");
    assert_eq!(avif_size(&r.bytes), (320, 240));
    assert_eq!(ImageFormat::sniff(&r.bytes), Some(ImageFormat::Avif));
    let smaller = run(
        &input,
        &ResizeParams {
            quality: Some(30),
            ..params(320, Some(ImageFormat::Avif))
        },
    );
    assert!(smaller.bytes.len() < r.bytes.len(), "quality reaches rav1e");
}

#[test]
fn a_still_can_be_written_as_gif() {
    let input = png(&DynamicImage::ImageRgb8(photo(300, 200)));
    let r = run(&input, &params(150, Some(ImageFormat::Gif)));
    let img = image::load_from_memory(&r.bytes).expect("decodes");
    assert_eq!(
        (r.format, img.width(), img.height()),
        (ImageFormat::Gif, 150, 100)
    );
}

// ---------- animation ----------

#[test]
fn animated_gif_becomes_an_animated_gif_with_its_delays_and_loop_count() {
    let input = animated_gif(200, 100, &[10, 20, 30], gif::Repeat::Finite(3));
    let r = run(&input, &params(100, None));
    assert_eq!((r.format, r.width, r.height), (ImageFormat::Gif, 100, 50));
    let frames = frames_of(&r);
    assert_eq!(frames.len(), 3);
    for ((size, delay, pixel), (colour, want_ms)) in
        frames.iter().zip(COLOURS.iter().zip([100, 200, 300]))
    {
        assert_eq!((*size, *delay), ((100, 50), want_ms));
        assert!(near(*pixel, *colour, 40), "{pixel:?} vs {colour:?}");
    }
    let header = probe::probe(&r.bytes).expect("probe");
    assert_eq!((header.frames, header.loops), (3, Some(3)));
}

#[test]
fn animated_gif_can_become_animated_webp() {
    let input = animated_gif(200, 100, &[10, 20, 30], gif::Repeat::Infinite);
    let r = run(&input, &params(100, Some(ImageFormat::Webp)));
    assert_eq!((r.format, r.width, r.height), (ImageFormat::Webp, 100, 50));
    let frames = frames_of(&r);
    let delays: Vec<u32> = frames.iter().map(|f| f.1).collect();
    assert_eq!(
        delays,
        [100, 200, 300],
        "every delay kept, the last one too"
    );
    for ((_, _, pixel), colour) in frames.iter().zip(COLOURS) {
        assert!(near(*pixel, colour, 40), "{pixel:?} vs {colour:?}");
    }
    let header = probe::probe(&r.bytes).expect("probe");
    assert_eq!((header.frames, header.loops), (3, Some(0)), "loops forever");
}

#[test]
fn animated_webp_becomes_an_animated_webp_or_gif() {
    let input = animated_webp(240, 120, &[100, 250, 400], 2);
    let r = run(&input, &params(120, None));
    assert_eq!((r.format, r.width, r.height), (ImageFormat::Webp, 120, 60));
    assert!(r.bytes.windows(4).any(|w| w == b"VP8 "), "lossy frames");
    let frames = frames_of(&r);
    assert_eq!(
        frames.iter().map(|f| f.1).collect::<Vec<_>>(),
        [100, 250, 400]
    );
    assert!(frames.iter().all(|f| f.0 == (120, 60)));
    assert_eq!(probe::probe(&r.bytes).expect("probe").loops, Some(2));

    let r = run(&input, &params(120, Some(ImageFormat::Gif)));
    let frames = frames_of(&r);
    assert_eq!(
        frames.iter().map(|f| f.1).collect::<Vec<_>>(),
        [100, 250, 400]
    );
    for ((_, _, pixel), colour) in frames.iter().zip(COLOURS) {
        assert!(near(*pixel, colour, 40), "{pixel:?} vs {colour:?}");
    }
}

#[test]
fn frames_first_and_still_formats_give_the_first_frame() {
    let gif = animated_gif(200, 100, &[10, 20, 30], gif::Repeat::Infinite);
    let webp = animated_webp(200, 100, &[100, 100, 100], 0);
    let first = |input: &[u8], p: ResizeParams| {
        let r = run(input, &p);
        let img = image::load_from_memory(&r.bytes)
            .expect("decodes")
            .to_rgba8();
        (r.format, img.dimensions(), img.get_pixel(25, 25).0)
    };
    let first_frames = ResizeParams {
        frames: Frames::First,
        ..params(100, None)
    };
    for (input, still_format) in [(&gif, ImageFormat::Png), (&webp, ImageFormat::Webp)] {
        let (format, size, pixel) = first(input, first_frames.clone());
        assert_eq!((format, size), (still_format, (100, 50)));
        assert!(near(pixel, COLOURS[0], 40), "{pixel:?}");
        let (format, _, pixel) = first(input, params(100, Some(ImageFormat::Jpeg)));
        assert_eq!(format, ImageFormat::Jpeg);
        assert!(near(pixel, COLOURS[0], 40), "{pixel:?}");
    }
    let still = run(&webp, &first_frames);
    assert!(
        !still.bytes.windows(4).any(|w| w == b"ANMF"),
        "a still WebP"
    );
}

/// A GIF whose header claims `frames` frames of 1×1 on a `w`×`h` screen. The LZW data is a
/// placeholder: the limits must refuse the file before anything is decoded.
fn gif_claiming(w: u16, h: u16, frames: usize) -> Vec<u8> {
    let mut out = b"GIF89a".to_vec();
    out.extend_from_slice(&w.to_le_bytes());
    out.extend_from_slice(&h.to_le_bytes());
    out.extend_from_slice(&[0, 0, 0]); // no global colour table
    out.extend_from_slice(&[0x21, 0xFF, 0x0B]);
    out.extend_from_slice(b"NETSCAPE2.0");
    out.extend_from_slice(&[3, 1, 0, 0, 0]);
    for _ in 0..frames {
        out.extend_from_slice(&[0x2C, 0, 0, 0, 0, 1, 0, 1, 0, 0]); // 1×1 at 0,0
        out.extend_from_slice(&[2, 3, 0xAA, 0xBB, 0xCC, 0]); // code size, one sub-block, end
    }
    out.push(0x3B);
    out
}

#[test]
fn gif_frame_count_and_loops_come_from_the_header() {
    let header = probe::probe(&gif_claiming(10, 10, 7)).expect("probe");
    assert_eq!((header.frames, header.loops), (7, Some(0)));
    let header = probe::probe(&animated_gif(20, 10, &[1, 1, 1], gif::Repeat::Finite(5))).unwrap();
    assert_eq!((header.frames, header.loops), (3, Some(5)));
}

#[test]
fn too_many_frames_is_refused_before_decoding() {
    let e = fail(
        &gif_claiming(10, 10, 501),
        &params(5, None),
        &Limits::default(),
    );
    assert_eq!((e.status(), e.code()), (422, "too_many_frames"));
    assert!(e.to_string().contains("501 frames"), "{e}");

    // A real animated WebP whose ANMF chunks are repeated past the limit.
    let mut webp = animated_webp(20, 10, &[100, 100, 100], 0);
    let first_anmf = webp.windows(4).position(|w| w == b"ANMF").expect("anmf");
    let frames = webp[first_anmf..].to_vec();
    for _ in 0..200 {
        webp.extend_from_slice(&frames);
    }
    let riff_size = u32::try_from(webp.len() - 8).expect("small");
    webp[4..8].copy_from_slice(&riff_size.to_le_bytes());
    let e = fail(&webp, &params(5, None), &Limits::default());
    assert_eq!((e.status(), e.code()), (422, "too_many_frames"));
    assert!(e.to_string().contains("603 frames"), "{e}");
}

#[test]
fn too_many_pixels_over_all_frames_is_refused_before_decoding() {
    // 60 frames of 1000×1000 = 60 Mpx over all frames, each frame well under max_pixels.
    let e = fail(
        &gif_claiming(1000, 1000, 60),
        &params(5, None),
        &Limits::default(),
    );
    assert_eq!((e.status(), e.code()), (422, "too_many_pixels"));
    assert!(e.to_string().contains("over all frames"), "{e}");
    // The limits come from the configuration.
    let limits = Limits {
        max_frames: 5,
        ..Limits::default()
    };
    let input = animated_gif(20, 10, &[1, 1, 1], gif::Repeat::Infinite);
    assert_eq!(run(&input, &params(10, None)).format, ImageFormat::Gif);
    let limits = Limits {
        max_animation_pixels: 599,
        ..limits
    };
    assert_eq!(
        fail(&input, &params(10, None), &limits).code(),
        "too_many_pixels"
    );
    // A still of the first frame decodes one frame only: the animation limits do not apply.
    let still = ResizeParams {
        frames: Frames::First,
        ..params(10, None)
    };
    assert!(resize(&input, &still, &limits).is_ok());
}

#[test]
fn an_enlarged_animation_is_bounded_on_the_output_side_too() {
    let input = animated_gif(200, 100, &[1, 1, 1], gif::Repeat::Infinite);
    let limits = Limits {
        max_animation_pixels: 100_000,
        ..Limits::default()
    };
    let p = ResizeParams {
        enlarge: true,
        ..params(400, None)
    };
    let e = fail(&input, &p, &limits);
    assert_eq!(e.code(), "bad_parameters");
    assert!(e.to_string().contains("frames=first"), "{e}");
}

#[test]
fn animation_frames_are_padded_transparent_or_with_the_background() {
    // 200×100 frames on a 200×200 box: padded above and below.
    let gif = animated_gif(200, 100, &[10, 10, 10], gif::Repeat::Infinite);
    let webp = animated_webp(200, 100, &[100, 100, 100], 0);
    for (input, format) in [(gif, ImageFormat::Gif), (webp, ImageFormat::Webp)] {
        for (background, pad) in [
            (None, [0, 0, 0, 0]),
            (
                Some(schemas::events::Rgb {
                    r: 20,
                    g: 40,
                    b: 220,
                }),
                [20, 40, 220, 255],
            ),
        ] {
            let p = ResizeParams {
                height: Some(200),
                fit: Fit::Pad,
                background,
                ..params(200, Some(format))
            };
            let r = run(&input, &p);
            assert_eq!((r.format, r.width, r.height), (format, 200, 200));
            // WebP as libwebp (and browsers) compose it: `image` paints the canvas with the
            // ANIM background colour, which the specification makes only a hint.
            let frames = match format {
                ImageFormat::Gif => GifDecoder::new(Cursor::new(&r.bytes))
                    .expect("gif")
                    .into_frames()
                    .collect_frames()
                    .expect("frames decode")
                    .into_iter()
                    .map(image::Frame::into_buffer)
                    .collect(),
                _ => libwebp_frames(&r.bytes),
            };
            assert_eq!(frames.len(), 3);
            for (buffer, colour) in frames.iter().zip(COLOURS) {
                let got = buffer.get_pixel(50, 10).0;
                // Transparent: whatever colour is under alpha 0.
                let close = if pad[3] == 0 {
                    got[3] == 0
                } else {
                    got.iter().zip(pad).all(|(a, b)| a.abs_diff(b) <= 24)
                };
                assert!(close, "{format:?} {background:?}: pad {got:?}");
                let got = buffer.get_pixel(50, 100).0;
                assert!(near(got, colour, 40), "{format:?}: image {got:?}");
            }
        }
    }
}

const SQUARE: [u8; 4] = [230, 30, 40, 255];
const CLEAR: [u8; 4] = [0, 0, 0, 0];

/// `w`×`h` of one colour.
fn solid(w: u32, h: u32, colour: [u8; 4]) -> RgbaImage {
    RgbaImage::from_pixel(w, h, image::Rgba(colour))
}

/// Only the columns `xs` of rows 8–15 are the square; everything else is transparent.
fn assert_only_square(frame: &RgbaImage, xs: std::ops::Range<u32>, name: &str) {
    for (x, y, p) in frame.enumerate_pixels() {
        let want = if xs.contains(&x) && (8..16).contains(&y) {
            SQUARE
        } else {
            CLEAR
        };
        let got = if p.0[3] == 0 { CLEAR } else { p.0 };
        assert_eq!(got, want, "{name}: pixel {x},{y}");
    }
}

#[test]
fn animated_webp_frames_are_disposed_to_background_and_replaced_without_blending() {
    // An 8×8 square moving right on a transparent 32×24 canvas, each frame drawn only where it
    // changes, as img2webp and libwebp's animation encoder write them.
    let frames = [
        // Disposed after display: cleared before frame 1.
        Anmf {
            x: 0,
            y: 8,
            pixels: solid(8, 8, SQUARE),
            duration_ms: 50,
            dispose: true,
            blend: false,
        },
        // Kept after display.
        Anmf {
            x: 8,
            y: 8,
            pixels: solid(8, 8, SQUARE),
            duration_ms: 50,
            dispose: false,
            blend: true,
        },
        // Not blended: its transparent left half erases the square under it.
        Anmf {
            x: 8,
            y: 8,
            pixels: RgbaImage::from_fn(16, 8, |x, _| {
                image::Rgba(if x < 8 { CLEAR } else { SQUARE })
            }),
            duration_ms: 50,
            dispose: true,
            blend: false,
        },
        Anmf {
            x: 24,
            y: 8,
            pixels: solid(8, 8, SQUARE),
            duration_ms: 50,
            dispose: false,
            blend: true,
        },
    ];
    let input = webp_anmf(32, 24, &frames, None);
    let squares = [0..8, 8..16, 16..24, 24..32];
    for (i, (frame, xs)) in libwebp_frames(&input)
        .iter()
        .zip(squares.clone())
        .enumerate()
    {
        assert_only_square(frame, xs, &format!("libwebp's reading of input frame {i}"));
    }

    let lossless = ResizeParams {
        lossless: true,
        ..params(32, Some(ImageFormat::Webp))
    };
    let r = run(&input, &lossless);
    let out = libwebp_frames(&r.bytes);
    assert_eq!(out.len(), 4);
    for (i, (frame, xs)) in out.iter().zip(squares.clone()).enumerate() {
        assert_only_square(frame, xs, &format!("webp frame {i}"));
    }

    let r = run(&input, &params(32, Some(ImageFormat::Gif)));
    let out = GifDecoder::new(Cursor::new(&r.bytes))
        .expect("gif")
        .into_frames()
        .collect_frames()
        .expect("gif frames");
    assert_eq!(out.len(), 4);
    for (i, (frame, xs)) in out.iter().zip(squares).enumerate() {
        assert_only_square(frame.buffer(), xs, &format!("gif frame {i}"));
    }
}

#[test]
fn animated_webp_frames_are_composed_as_libwebp_composes_them() {
    // Two squares crossing on a transparent canvas, one half-transparent: libwebp's animation
    // encoder picks each frame's rectangle, disposal and blending itself.
    let (w, h) = (48, 32);
    let frames: Vec<RgbaImage> = (0..6)
        .map(|i| {
            RgbaImage::from_fn(w, h, |x, y| {
                if (i * 6..i * 6 + 10).contains(&x) && (4..14).contains(&y) {
                    image::Rgba(SQUARE)
                } else if (38 - i * 6..48 - i * 6).contains(&x) && (16..28).contains(&y) {
                    image::Rgba([20, 90, 200, 150])
                } else {
                    image::Rgba(CLEAR)
                }
            })
        })
        .collect();
    for lossless in [true, false] {
        let mut config = webp::WebPConfig::new().expect("config");
        config.lossless = i32::from(lossless);
        config.quality = 90.0;
        let mut encoder = webp::AnimEncoder::new(w, h, &config);
        for (i, f) in frames.iter().enumerate() {
            let start = i32::try_from(i * 80).unwrap();
            encoder.add_frame(webp::AnimFrame::from_rgba(f.as_raw(), w, h, start));
        }
        let input = encoder.try_encode().expect("webp animation").to_vec();
        let want = libwebp_frames(&input);
        let p = ResizeParams {
            lossless: true,
            ..params(i32::try_from(w).unwrap(), Some(ImageFormat::Webp))
        };
        let got = libwebp_frames(&run(&input, &p).bytes);
        assert_eq!(got.len(), want.len());
        for (i, (g, want)) in got.iter().zip(&want).enumerate() {
            for (x, y, p) in g.enumerate_pixels() {
                let q = want.get_pixel(x, y).0;
                let same = if q[3] == 0 {
                    p.0[3] == 0
                } else {
                    near(p.0, [q[0], q[1], q[2]], 1) && p.0[3].abs_diff(q[3]) <= 1
                };
                assert!(
                    same,
                    "lossless={lossless} frame {i} at {x},{y}: {p:?} vs {q:?}"
                );
            }
        }
    }
}

/// The colours the animation tests for ICC profiles use: far enough inside Adobe RGB and
/// Display P3 that converting them moves every one by more than 10 steps.
const ICC_COLOURS: [[u8; 3]; 3] = [[20, 200, 60], [200, 60, 20], [30, 60, 230]];

/// Frame `i` of the ICC tests: its colour on the left, a gradient on the right.
fn icc_frame(w: u32, h: u32, colour: [u8; 3]) -> RgbaImage {
    RgbaImage::from_fn(w, h, |x, y| {
        let [r, g, b] = if x < w / 2 {
            colour
        } else {
            [(x * 255 / w) as u8, (y * 255 / h) as u8, 128]
        };
        image::Rgba([r, g, b, 255])
    })
}

#[test]
fn animation_frames_are_converted_from_their_icc_profile_like_a_still() {
    use super::tests::icc;
    let (w, h) = (64, 48);
    let frames: Vec<RgbaImage> = ICC_COLOURS.iter().map(|c| icc_frame(w, h, *c)).collect();
    let resized = ResizeParams {
        lossless: true,
        ..params(32, Some(ImageFormat::Webp))
    };
    for (name, profile) in [("adobe", icc::adobe_rgb()), ("p3", icc::display_p3())] {
        let anmf: Vec<Anmf> = frames
            .iter()
            .map(|f| Anmf {
                x: 0,
                y: 0,
                pixels: f.clone(),
                duration_ms: 100,
                dispose: false,
                blend: false,
            })
            .collect();
        let webp = webp_anmf(w, h, &anmf, Some(&profile));
        let gif = icc::gif_with_icc(
            &animated_gif_of(&frames, &[10, 10, 10], gif::Repeat::Infinite),
            &profile,
        );
        for (format, input) in [("webp", webp), ("gif", gif)] {
            // What the input stores (the GIF's frames are quantised), frame by frame.
            let stored: Vec<RgbaImage> = if format == "gif" {
                GifDecoder::new(Cursor::new(&input))
                    .expect("gif")
                    .into_frames()
                    .map(|f| f.expect("gif frame").into_buffer())
                    .collect()
            } else {
                libwebp_frames(&input)
            };
            let out = libwebp_frames(&run(&input, &resized).bytes);
            assert_eq!(out.len(), frames.len(), "{name} {format}");
            for (i, (got, frame)) in out.iter().zip(&stored).enumerate() {
                // The still path on the same frame with the same profile.
                let still = icc::png_with_icc(&DynamicImage::ImageRgba8(frame.clone()), &profile);
                let want = image::load_from_memory(&run(&still, &resized).bytes)
                    .expect("still decodes")
                    .to_rgba8();
                for (x, y, p) in got.enumerate_pixels() {
                    let q = want.get_pixel(x, y).0;
                    assert!(
                        near(p.0, [q[0], q[1], q[2]], 2),
                        "{name} {format} frame {i} at {x},{y}: {:?}, the still gives {q:?}",
                        p.0
                    );
                }
                let [r, g, b, _] = got.get_pixel(w / 8, h / 4).0;
                let moved = [r, g, b]
                    .iter()
                    .zip(ICC_COLOURS[i])
                    .map(|(a, b)| a.abs_diff(b))
                    .max();
                assert!(
                    moved > Some(10),
                    "{name} {format} frame {i}: {:?}",
                    [r, g, b]
                );
            }
        }
    }
}

/// 256×2 of `colour` with alpha rising from 0 at the left to 255 at the right, one step a column.
fn alpha_ramp(colour: [u8; 3]) -> RgbaImage {
    RgbaImage::from_fn(256, 2, |x, _| {
        let [r, g, b] = colour;
        image::Rgba([r, g, b, x as u8])
    })
}

fn assert_thresholded(frame: &RgbaImage, colour: [u8; 3], name: &str) {
    for (x, _, p) in frame.enumerate_pixels() {
        if x < 128 {
            assert_eq!(p.0[3], 0, "{name}: alpha {x} becomes transparent");
        } else {
            assert_eq!(p.0[3], 255, "{name}: alpha {x} becomes opaque");
            assert!(
                near(p.0, colour, 0),
                "{name}: alpha {x} keeps its colour: {p:?}"
            );
        }
    }
}

#[test]
fn gif_output_makes_alpha_under_128_transparent_and_the_rest_opaque() {
    const COLOUR: [u8; 3] = [40, 160, 220];
    let ramp = alpha_ramp(COLOUR);
    let still = run(
        &png(&DynamicImage::ImageRgba8(ramp.clone())),
        &params(256, Some(ImageFormat::Gif)),
    );
    let decoded = image::load_from_memory(&still.bytes)
        .expect("gif decodes")
        .to_rgba8();
    assert_thresholded(&decoded, COLOUR, "still");

    let frame = |duration_ms| Anmf {
        x: 0,
        y: 0,
        pixels: ramp.clone(),
        duration_ms,
        dispose: true,
        blend: false,
    };
    let animation = webp_anmf(256, 2, &[frame(100), frame(200)], None);
    let r = run(&animation, &params(256, Some(ImageFormat::Gif)));
    let frames = GifDecoder::new(Cursor::new(&r.bytes))
        .expect("gif")
        .into_frames()
        .collect_frames()
        .expect("gif frames");
    assert_eq!(frames.len(), 2);
    for (i, f) in frames.iter().enumerate() {
        assert_thresholded(f.buffer(), COLOUR, &format!("animated frame {i}"));
    }
}

// ---------- refusals ----------

#[test]
fn tiff_bmp_and_jpeg_xl_are_refused_by_name() {
    let mut bmp = b"BM".to_vec();
    bmp.extend_from_slice(&[0x3A, 0, 0, 0, 0, 0, 0, 0, 0x36, 0, 0, 0, 0x28, 0]);
    let tiff = b"II*\0\x08\0\0\0\0\0".to_vec();
    let jxl = b"\xff\x0a\xfa\x7f".to_vec();
    for (input, name) in [(bmp, "BMP"), (tiff, "TIFF"), (jxl, "JPEG XL")] {
        let e = fail(&input, &params(10, None), &Limits::default());
        assert_eq!(
            (e.status(), e.code()),
            (415, "unsupported_media_type"),
            "{name}"
        );
        assert!(e.to_string().contains(name), "{name}: {e}");
    }
}

#[test]
fn bad_format_parameters_are_400() {
    let input = png(&DynamicImage::ImageRgb8(photo(64, 64)));
    for (p, needle) in [
        (
            ResizeParams {
                lossless: true,
                ..params(32, Some(ImageFormat::Jpeg))
            },
            "lossless",
        ),
        (
            ResizeParams {
                effort: Some(10),
                ..params(32, Some(ImageFormat::Avif))
            },
            "effort",
        ),
        (
            ResizeParams {
                effort: Some(-1),
                ..params(32, Some(ImageFormat::Webp))
            },
            "effort",
        ),
    ] {
        let e = fail(&input, &p, &Limits::default());
        assert_eq!(e.status(), 400);
        assert!(e.to_string().contains(needle), "{e}");
    }
    // Lossless applies to the input's format when none is named: a JPEG stays JPEG.
    let jpeg = {
        let mut out = Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(photo(64, 64))
            .write_to(&mut out, image::ImageFormat::Jpeg)
            .expect("jpeg");
        out.into_inner()
    };
    let p = ResizeParams {
        lossless: true,
        ..params(32, None)
    };
    assert_eq!(fail(&jpeg, &p, &Limits::default()).status(), 400);
    let fit = ResizeParams {
        fit: Fit::Inside,
        lossless: true,
        ..params(32, None)
    };
    assert_eq!(
        run(&input, &fit).format,
        ImageFormat::Png,
        "png is lossless anyway"
    );
}

//! Kernel tests for HEIC and AVIF input (the committed fixtures in `fixtures/`, made with
//! heif-enc): size and colours of every kind, the output format chosen for them, orientation from
//! `irot` and never from EXIF, ICC profiles, 10-bit and alpha, and the refusals: a truncated file,
//! and the pixel limit checked from the header before anything is decoded.

// Test set-up failing is a test failure; panicking with the reason is the point.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use image::{DynamicImage, GenericImageView, Rgba};
use schemas::events::{ImageFormat, ResizeParams};

use super::tests::{fail, run};
use super::*;

const QUADRANTS_HEIC: &[u8] = include_bytes!("fixtures/quadrants.heic");
const QUADRANTS_AVIF: &[u8] = include_bytes!("fixtures/quadrants.avif");
const QUADRANTS_AVIF_10BIT: &[u8] = include_bytes!("fixtures/quadrants-10bit.avif");
const ALPHA_AVIF: &[u8] = include_bytes!("fixtures/alpha.avif");
const ADOBERGB_HEIC: &[u8] = include_bytes!("fixtures/adobergb.heic");
const ROTATED_HEIC: &[u8] = include_bytes!("fixtures/rotated.heic");
const EXIF6_HEIC: &[u8] = include_bytes!("fixtures/exif6.heic");

const RED: [u8; 3] = [220, 30, 30];
const GREEN: [u8; 3] = [30, 200, 60];
const BLUE: [u8; 3] = [40, 60, 210];
const WHITE: [u8; 3] = [240, 240, 240];

fn params(width: i32, format: Option<ImageFormat>) -> ResizeParams {
    ResizeParams {
        width: Some(width),
        format,
        ..ResizeParams::default()
    }
}

fn decoded(r: &Resized) -> DynamicImage {
    let image = image::load_from_memory(&r.bytes).expect("the output decodes");
    assert_eq!(image.dimensions(), (r.width, r.height));
    image
}

/// The colour at (`x`, `y`) is `expected`, each channel within `tolerance`.
fn assert_near(image: &DynamicImage, (x, y): (u32, u32), expected: [u8; 3], tolerance: u8) {
    let Rgba([r, g, b, _]) = image.get_pixel(x, y);
    let close = [r, g, b]
        .iter()
        .zip(expected)
        .all(|(&got, want)| got.abs_diff(want) <= tolerance);
    assert!(
        close,
        "({x}, {y}) is {:?}, expected {expected:?} ± {tolerance}",
        [r, g, b]
    );
}

/// The quadrant centres of a 64×48 picture resized to `w`×`h`.
fn assert_quadrants(image: &DynamicImage, tolerance: u8) {
    let (w, h) = image.dimensions();
    let at = |fx: u32, fy: u32| (w * fx / 4, h * fy / 4);
    assert_near(image, at(1, 1), RED, tolerance);
    assert_near(image, at(3, 1), GREEN, tolerance);
    assert_near(image, at(1, 3), BLUE, tolerance);
    assert_near(image, at(3, 3), WHITE, tolerance);
}

#[test]
fn heic_and_avif_are_sniffed_and_sized_from_their_headers() {
    for (input, format) in [
        (QUADRANTS_HEIC, ImageFormat::Heic),
        (QUADRANTS_AVIF, ImageFormat::Avif),
        (QUADRANTS_AVIF_10BIT, ImageFormat::Avif),
    ] {
        let header = probe::probe(input).expect("the header reads");
        assert_eq!(
            (header.format, header.width, header.height, header.frames),
            (format, 64, 48, 1)
        );
    }
}

#[test]
fn heic_is_resized_into_jpeg_unless_a_format_is_named() {
    let r = run(QUADRANTS_HEIC, &params(32, None));
    assert_eq!((r.format, r.width, r.height), (ImageFormat::Jpeg, 32, 24));
    assert_eq!(
        (r.input_format, r.input_width, r.input_height),
        (ImageFormat::Heic, 64, 48)
    );
    assert_quadrants(&decoded(&r), 12);

    let r = run(QUADRANTS_HEIC, &params(32, Some(ImageFormat::Png)));
    assert_eq!((r.format, r.width, r.height), (ImageFormat::Png, 32, 24));
    assert_quadrants(&decoded(&r), 8);
}

#[test]
fn avif_stays_avif_and_8_and_10_bit_decode_alike() {
    for input in [QUADRANTS_AVIF, QUADRANTS_AVIF_10BIT] {
        let r = run(input, &params(32, None));
        assert_eq!((r.format, r.width, r.height), (ImageFormat::Avif, 32, 24));
        assert_eq!(r.input_format, ImageFormat::Avif);
        let r = run(input, &params(32, Some(ImageFormat::Png)));
        assert_quadrants(&decoded(&r), 10);
    }
}

#[test]
fn avif_alpha_is_kept() {
    let r = run(ALPHA_AVIF, &params(32, Some(ImageFormat::Png)));
    let image = decoded(&r);
    assert_eq!(image.get_pixel(4, 8)[3], 0, "the left half is transparent");
    assert_eq!(image.get_pixel(28, 8)[3], 255, "the right half is opaque");
    assert_near(&image, (28, 8), BLUE, 10);
}

#[test]
fn heic_is_shown_as_its_irot_says_and_its_exif_orientation_is_not_applied_again() {
    // Stored 64×32, red left; `irot` turns it a quarter clockwise: 32×64, red on top.
    let r = run(ROTATED_HEIC, &params(16, Some(ImageFormat::Png)));
    assert_eq!(
        (r.width, r.height, r.input_width, r.input_height),
        (16, 32, 32, 64)
    );
    let image = decoded(&r);
    assert_near(&image, (8, 6), RED, 10);
    assert_near(&image, (8, 26), BLUE, 10);

    // EXIF says "rotate a quarter" but no `irot` does: shown as stored, as browsers show it.
    let r = run(EXIF6_HEIC, &params(32, Some(ImageFormat::Png)));
    assert_eq!((r.width, r.height), (32, 16));
    let image = decoded(&r);
    assert_near(&image, (6, 8), RED, 10);
    assert_near(&image, (26, 8), BLUE, 10);
}

#[test]
fn an_embedded_icc_profile_is_converted_to_srgb() {
    let tagged = decoded(&run(ADOBERGB_HEIC, &params(32, Some(ImageFormat::Png))));
    // The same pixels untagged, converted here with the same profile: what the kernel must do.
    let mut expected = decoded(&run(QUADRANTS_HEIC, &params(32, Some(ImageFormat::Png))));
    let (_, profile) = heif::decode(ADOBERGB_HEIC, ImageFormat::Heic, u64::MAX).expect("decodes");
    let profile = profile.expect("the HEIC carries its ICC profile");
    colour::to_srgb(&mut expected, Some(&profile));
    let green = |image: &DynamicImage| image.get_pixel(24, 6);
    let untagged = decoded(&run(QUADRANTS_HEIC, &params(32, Some(ImageFormat::Png))));
    assert!(
        green(&untagged)[1].abs_diff(green(&tagged)[1]) > 8
            || green(&untagged)[0].abs_diff(green(&tagged)[0]) > 8,
        "Adobe RGB green is converted: {:?} untagged, {:?} tagged",
        green(&untagged),
        green(&tagged)
    );
    let Rgba(want) = green(&expected);
    assert_near(&tagged, (24, 6), [want[0], want[1], want[2]], 2);
}

#[test]
fn truncated_or_corrupt_heif_is_undecodable_not_a_panic() {
    for input in [QUADRANTS_HEIC, QUADRANTS_AVIF] {
        for cut in [input.len() - 40, input.len() / 2, 40, 20] {
            let e = fail(&input[..cut], &params(32, None), &Limits::default());
            assert_eq!(
                (e.status(), e.code()),
                (422, "undecodable_image"),
                "cut at {cut}: {e}"
            );
        }
    }
    // Brands and nothing else.
    let mut heic = 24u32.to_be_bytes().to_vec();
    heic.extend_from_slice(b"ftypheic\0\0\0\0mif1heic\0\0\0\0meta");
    let e = fail(&heic, &params(10, None), &Limits::default());
    assert_eq!((e.status(), e.code()), (422, "undecodable_image"), "{e}");
    // Image data replaced by noise: the codec fails, the container is fine.
    let mut noisy = QUADRANTS_HEIC.to_vec();
    let data = noisy.len() - 200;
    for (i, byte) in noisy[data..].iter_mut().enumerate() {
        *byte = (i as u8).wrapping_mul(151).wrapping_add(7);
    }
    if let Err(e) = resize(&noisy, &params(32, None), &Limits::default()) {
        assert_eq!(e.status(), 422, "{e}");
    }
}

#[test]
fn the_pixel_limit_is_checked_from_the_header_before_decoding() {
    let limits = Limits {
        max_pixels: 1_000,
        max_output_pixels: 1_000,
        ..Limits::default()
    };
    // The HEVC decoder configuration emptied (no parameter sets: the pictures cannot be
    // decoded), the boxes intact: `too_many_pixels` can then only come from the header.
    let mut blanked = QUADRANTS_HEIC.to_vec();
    let hvcc = blanked
        .windows(4)
        .position(|w| w == b"hvcC")
        .expect("an hvcC box");
    // Box type, 22 bytes of configuration, then the number of NAL unit arrays.
    blanked[hvcc + 4 + 22] = 0;
    let e = fail(&blanked, &params(16, None), &Limits::default());
    assert_eq!((e.status(), e.code()), (422, "undecodable_image"), "{e}");
    for input in [QUADRANTS_HEIC, &blanked, QUADRANTS_AVIF] {
        let e = fail(input, &params(16, None), &limits);
        assert_eq!((e.status(), e.code()), (422, "too_many_pixels"), "{e}");
        assert!(e.to_string().contains("64x48"), "{e}");
    }
}

#[test]
fn heic_is_never_an_output() {
    let e = fail(
        QUADRANTS_HEIC,
        &params(32, Some(ImageFormat::Heic)),
        &Limits::default(),
    );
    assert_eq!((e.status(), e.code()), (400, "bad_parameters"));
    assert!(
        e.to_string().contains("heic is read but not written"),
        "{e}"
    );
}

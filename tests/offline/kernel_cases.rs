//! Inputs found by trying imgpipe as a new user would (`tests/cases/kernel/`, with the right
//! answers in its README). Each file stands for a whole kind of input, which the kernel's own
//! tests cover in general; these keep the original reports answered.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

use image::GenericImageView;
use processors::kernel::{self, Limits};
use schemas::events::{ImageFormat, ResizeParams};

fn case(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/cases/kernel/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn width(w: i32) -> ResizeParams {
    ResizeParams {
        width: Some(w),
        ..ResizeParams::default()
    }
}

/// 1500×735 used to land its shrink-on-load crop one step past the decoded edge: a 500.
#[test]
fn round_1500x735_resizes_to_300x147() {
    let out = kernel::resize(&case("round-1500x735.jpg"), &width(300), &Limits::default())
        .unwrap_or_else(|e| panic!("{} {}: {e}", e.status(), e.code()));
    assert_eq!(
        (out.format, out.width, out.height),
        (ImageFormat::Jpeg, 300, 147)
    );
    let decoded = image::load_from_memory(&out.bytes).unwrap();
    assert_eq!(decoded.dimensions(), (300, 147));
}

/// Every scan complete, only the end-of-image marker missing: shown as decoded, like libvips and
/// browsers do, and identical to the same file with its marker restored.
#[test]
fn jpeg_missing_eoi_resizes_to_96x64_as_decoded() {
    let input = case("jpeg-missing-eoi.jpg");
    assert_ne!(
        &input[input.len() - 2..],
        &[0xFF, 0xD9],
        "the case lacks its EOI"
    );
    let out = kernel::resize(&input, &width(96), &Limits::default())
        .unwrap_or_else(|e| panic!("{} {}: {e}", e.status(), e.code()));
    assert_eq!((out.width, out.height), (96, 64));

    let mut restored = input.clone();
    restored.extend_from_slice(&[0xFF, 0xD9]);
    let reference = kernel::resize(&restored, &width(96), &Limits::default()).unwrap();
    assert_eq!(
        out.bytes, reference.bytes,
        "the same picture as the repaired file"
    );

    // The picture is the real one down to its last rows, not a grey fill: four quadrants, red,
    // green / blue, white.
    let decoded = image::load_from_memory(&out.bytes).unwrap().to_rgb8();
    let [r, g, b] = decoded.get_pixel(24, 16).0;
    assert!(r > 180 && g < 80 && b < 80, "top left is red: {r},{g},{b}");
    let [r, g, b] = decoded.get_pixel(24, 60).0;
    assert!(
        b > 180 && r < 80 && g < 80,
        "bottom left is blue: {r},{g},{b}"
    );
    let [r, g, b] = decoded.get_pixel(72, 62).0;
    assert!(
        r > 200 && g > 200 && b > 200,
        "bottom right is white: {r},{g},{b}"
    );

    // Cut inside the scan instead, the same file is refused as truncated.
    let cut = &input[..input.len() * 2 / 3];
    let e = kernel::resize(cut, &width(96), &Limits::default()).unwrap_err();
    assert_eq!((e.status(), e.code()), (422, "truncated_image"), "{e}");
}

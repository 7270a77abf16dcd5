//! ICC profiles made on the fly (Adobe RGB (1998), Display P3, a gray gamma 2.2) and the ways
//! images carry them: JPEG APP2 `ICC_PROFILE` chunks, PNG `iCCP`, WebP `ICCP`, GIF `ICCRGBG1`. Built with
//! LittleCMS from primaries, white point and tone curves, so no profile file is committed.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Cursor;

use image::codecs::png::PngEncoder;
use image::codecs::webp::WebPEncoder;
use image::{DynamicImage, ImageEncoder};
use lcms2::{CIExyY, CIExyYTRIPLE, Profile, ToneCurve};

const D65: CIExyY = CIExyY {
    x: 0.3127,
    y: 0.3290,
    Y: 1.0,
};

fn xy(x: f64, y: f64) -> CIExyY {
    CIExyY { x, y, Y: 1.0 }
}

fn rgb_profile(primaries: [(f64, f64); 3], curve: &ToneCurve) -> Vec<u8> {
    let [r, g, b] = primaries;
    let primaries = CIExyYTRIPLE {
        Red: xy(r.0, r.1),
        Green: xy(g.0, g.1),
        Blue: xy(b.0, b.1),
    };
    Profile::new_rgb(&D65, &primaries, &[curve, curve, curve])
        .expect("RGB profile builds")
        .icc()
        .expect("profile serialises")
}

/// The sRGB tone curve as ICC parametric curve type 4.
fn srgb_curve() -> ToneCurve {
    ToneCurve::new_parametric(4, &[2.4, 1.0 / 1.055, 0.055 / 1.055, 1.0 / 12.92, 0.04045])
        .expect("sRGB curve")
}

/// Adobe RGB (1998): D65, gamma 563/256.
pub fn adobe_rgb() -> Vec<u8> {
    rgb_profile(
        [(0.64, 0.33), (0.21, 0.71), (0.15, 0.06)],
        &ToneCurve::new(563.0 / 256.0),
    )
}

/// Display P3: DCI-P3 primaries, D65, the sRGB tone curve (what phones embed).
pub fn display_p3() -> Vec<u8> {
    rgb_profile(
        [(0.680, 0.320), (0.265, 0.690), (0.150, 0.060)],
        &srgb_curve(),
    )
}

/// sRGB built the same way (matrix/shaper), which a converter should recognise as a no-op.
pub fn srgb() -> Vec<u8> {
    rgb_profile([(0.64, 0.33), (0.30, 0.60), (0.15, 0.06)], &srgb_curve())
}

/// A gray profile with a plain 2.2 gamma (darker mid-tones than sRGB's curve).
pub fn gray_gamma22() -> Vec<u8> {
    Profile::new_gray(&D65, &ToneCurve::new(2.2))
        .expect("gray profile builds")
        .icc()
        .expect("profile serialises")
}

/// Inserts `profile` as APP2 `ICC_PROFILE` chunks (split at 65 519 bytes, numbered from 1) right
/// after SOI, as libjpeg's `jpeg_write_icc_profile` lays them out.
pub fn jpeg_with_icc(jpeg: &[u8], profile: &[u8]) -> Vec<u8> {
    const MAX_CHUNK: usize = 65_519;
    let chunks: Vec<&[u8]> = profile.chunks(MAX_CHUNK).collect();
    let mut out = jpeg[..2].to_vec();
    for (i, chunk) in chunks.iter().enumerate() {
        out.extend_from_slice(&[0xFF, 0xE2]);
        let len = u16::try_from(2 + 14 + chunk.len()).unwrap();
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(b"ICC_PROFILE\0");
        out.push(u8::try_from(i + 1).unwrap());
        out.push(u8::try_from(chunks.len()).unwrap());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// PNG with an `iCCP` chunk; keeps the image's layout (8 or 16 bit, alpha or not).
pub fn png_with_icc(img: &DynamicImage, profile: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = PngEncoder::new(&mut out);
    encoder
        .set_icc_profile(profile.to_vec())
        .expect("PNG carries ICC");
    img.write_with_encoder(encoder).expect("PNG encodes");
    out
}

/// Lossless WebP with an `ICCP` chunk (8-bit RGB or RGBA).
pub fn webp_with_icc(img: &DynamicImage, profile: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = WebPEncoder::new_lossless(Cursor::new(&mut out));
    encoder
        .set_icc_profile(profile.to_vec())
        .expect("WebP carries ICC");
    img.write_with_encoder(encoder).expect("WebP encodes");
    out
}

/// Inserts `profile` as an `ICCRGBG1` application extension (in data sub-blocks of at most 255
/// bytes) right after the header and global colour table, where decoders read it.
pub fn gif_with_icc(gif: &[u8], profile: &[u8]) -> Vec<u8> {
    let flags = gif[10];
    let colour_table = if flags & 0x80 != 0 {
        3usize << ((flags & 7) + 1)
    } else {
        0
    };
    let at = 13 + colour_table;
    let mut out = gif[..at].to_vec();
    out.extend_from_slice(&[0x21, 0xFF, 0x0B]);
    out.extend_from_slice(b"ICCRGBG1012");
    for block in profile.chunks(255) {
        out.push(u8::try_from(block.len()).unwrap());
        out.extend_from_slice(block);
    }
    out.push(0);
    out.extend_from_slice(&gif[at..]);
    out
}

//! Smart crop: where the most interesting part of an image is, found as libvips'
//! `vips_smartcrop` with `VIPS_INTERESTING_ATTENTION` finds it (imgproxy's `g:sm`). The image is
//! reduced to a 32 × 32 grid (each axis on its own, so the grid is the crop's precision), and each
//! cell scores the sum of three features of its XYZ colour:
//!
//! - edges: a 4-neighbour Laplacian on luminance (Y), times 5, made positive;
//! - skin: how near the cell's chromaticity is to a skin tone (100 on it, falling with distance);
//! - saturation: CIELAB a* (red–green), which libvips uses as its saturation measure;
//!
//! skin and saturation only where the cell is not dark (Y > 5 of 100). The sum is blurred with a
//! Gaussian whose width follows the crop's size on the grid (how large an area a crop takes in),
//! and the crop is centred on the highest cell, then clamped to the image.
//!
//! Deterministic: pure arithmetic on the pixels, no randomness, and ties broken by raster order.
//! Two choices differ from libvips on purpose: the peak is mapped back to the centre of its cell
//! rather than its top-left corner (half a cell, 1/64 of a side), and a map without any peak (a
//! flat image) keeps the centre rather than libvips' top-left corner.

use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::DynamicImage;

/// Cells per side of the grid the features are scored on (libvips' 32).
const GRID: u32 = 32;

/// Below this luminance (Y of XYZ, 0–100) a cell is dark: neither skin nor saturated.
const DARK_Y: f64 = 5.0;

/// Chromaticity direction of skin (normalised XYZ), from smartcrop.js via libvips.
const SKIN: [f64; 3] = [0.78, 0.57, 0.44];

/// D65 white in XYZ (Y = 100), libvips' reference white for Lab.
const WHITE: [f64; 3] = [95.047, 100.0, 108.883];

/// The most interesting point of `image`, in its pixels (x, y), for a crop of `crop` of its
/// pixels (width, height); the crop's size sets how wide an area is weighed around each point.
pub fn focus(image: &DynamicImage, crop: (f64, f64)) -> (f64, f64) {
    let (width, height) = (f64::from(image.width()), f64::from(image.height()));
    let centre = (width / 2.0, height / 2.0);
    let Some(grid) = reduce(image) else {
        return centre;
    };
    let score = blur(&scores(&grid), sigma(crop, (width, height)));
    let (mut best, mut lowest, mut at) = (f64::NEG_INFINITY, f64::INFINITY, 0);
    for (i, &s) in score.iter().enumerate() {
        // Strictly greater: the first peak in raster order wins a tie.
        if s > best {
            (best, at) = (s, i);
        }
        lowest = lowest.min(s);
    }
    if best - lowest <= 1e-9 {
        return centre;
    }
    let n = GRID as usize;
    let cell = ((at % n) as f64 + 0.5, (at / n) as f64 + 0.5);
    (
        cell.0 * width / f64::from(GRID),
        cell.1 * height / f64::from(GRID),
    )
}

/// The Gaussian's sigma, in cells: the crop's diagonal on the grid over 10, at least 1.
fn sigma(crop: (f64, f64), size: (f64, f64)) -> f64 {
    let on_grid = (
        crop.0 * f64::from(GRID) / size.0,
        crop.1 * f64::from(GRID) / size.1,
    );
    (on_grid.0.hypot(on_grid.1) / 10.0).max(1.0)
}

/// `image` averaged down (or, when smaller, sampled up) to the grid, as 8-bit sRGB; `None` if the
/// resampler refuses it (it does not for the layouts the decoders produce).
fn reduce(image: &DynamicImage) -> Option<image::RgbImage> {
    let mut small = DynamicImage::new(GRID, GRID, image.color());
    // A box filter over each cell's footprint: the cell's mean colour, as libvips' shrink gives.
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Box));
    Resizer::new().resize(image, &mut small, &options).ok()?;
    Some(small.to_rgb8())
}

/// Edges + skin + saturation per cell, row by row.
fn scores(grid: &image::RgbImage) -> Vec<f64> {
    let n = GRID as usize;
    let xyz: Vec<[f64; 3]> = grid.pixels().map(|p| xyz(p.0)).collect();
    let y_at = |x: usize, y: usize| xyz[y * n + x][1];
    let mut out = vec![0.0; n * n];
    for y in 0..n {
        for x in 0..n {
            // Edges extended by copying, as libvips' convolution does.
            let (left, right) = (x.saturating_sub(1), (x + 1).min(n - 1));
            let (up, down) = (y.saturating_sub(1), (y + 1).min(n - 1));
            let laplacian =
                4.0 * y_at(x, y) - y_at(left, y) - y_at(right, y) - y_at(x, up) - y_at(x, down);
            let edges = (5.0 * laplacian).abs();
            let [cx, cy, cz] = xyz[y * n + x];
            let (skin, saturation) = if cy > DARK_Y {
                let norm = (cx * cx + cy * cy + cz * cz).sqrt();
                let distance = (cx / norm - SKIN[0])
                    .hypot(cy / norm - SKIN[1])
                    .hypot(cz / norm - SKIN[2]);
                (100.0 - 100.0 * distance, lab_a([cx, cy, cz]))
            } else {
                (0.0, 0.0)
            };
            out[y * n + x] = edges + skin + saturation;
        }
    }
    out
}

/// 8-bit sRGB to CIE XYZ (D65, Y 0–100).
fn xyz([r, g, b]: [u8; 3]) -> [f64; 3] {
    let linear = |c: u8| {
        let c = f64::from(c) / 255.0;
        if c <= 0.04045 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    };
    let (r, g, b) = (linear(r), linear(g), linear(b));
    [
        100.0 * (0.4124 * r + 0.3576 * g + 0.1805 * b),
        100.0 * (0.2126 * r + 0.7152 * g + 0.0722 * b),
        100.0 * (0.0193 * r + 0.1192 * g + 0.9505 * b),
    ]
}

/// CIELAB a* of an XYZ colour (D65 white).
fn lab_a([x, y, _]: [f64; 3]) -> f64 {
    let f = |t: f64| {
        if t > 216.0 / 24_389.0 {
            t.cbrt()
        } else {
            (24_389.0 / 27.0 * t + 16.0) / 116.0
        }
    };
    500.0 * (f(x / WHITE[0]) - f(y / WHITE[1]))
}

/// A separable Gaussian blur of the grid, edges extended by copying. The kernel reaches as far
/// as libvips' (`min_ampl` 0.2: up to where the curve falls below a fifth of its peak).
fn blur(grid: &[f64], sigma: f64) -> Vec<f64> {
    let n = GRID as usize;
    let radius = (sigma * (-2.0 * 0.2f64.ln()).sqrt()).ceil() as usize;
    let weights: Vec<f64> = (0..=radius)
        .map(|d| (-((d * d) as f64) / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f64 = weights[0] + 2.0 * weights[1..].iter().sum::<f64>();
    let pass = |src: &[f64], horizontal: bool| -> Vec<f64> {
        let at = |x: usize, y: usize| {
            if horizontal {
                src[y * n + x]
            } else {
                src[x * n + y]
            }
        };
        let mut out = vec![0.0; n * n];
        for y in 0..n {
            for x in 0..n {
                let mut sum = weights[0] * at(x, y);
                for (d, w) in weights.iter().enumerate().skip(1) {
                    let before = x.saturating_sub(d);
                    let after = (x + d).min(n - 1);
                    sum += w * (at(before, y) + at(after, y));
                }
                let i = if horizontal { y * n + x } else { x * n + y };
                out[i] = sum / total;
            }
        }
        out
    };
    pass(&pass(grid, true), false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage};

    /// A flat grey image with `patch` filled into the rectangle (x, y, w, h).
    fn with_patch(
        size: (u32, u32),
        rect: (u32, u32, u32, u32),
        patch: impl Fn(u32, u32) -> [u8; 3],
    ) -> DynamicImage {
        let mut img = RgbImage::from_pixel(size.0, size.1, Rgb([128, 128, 128]));
        for y in rect.1..rect.1 + rect.3 {
            for x in rect.0..rect.0 + rect.2 {
                img.put_pixel(x, y, Rgb(patch(x, y)));
            }
        }
        DynamicImage::ImageRgb8(img)
    }

    fn checkerboard(x: u32, y: u32) -> [u8; 3] {
        if (x / 3 + y / 3).is_multiple_of(2) {
            [0, 0, 0]
        } else {
            [255, 255, 255]
        }
    }

    #[test]
    fn finds_detail_in_a_corner() {
        let img = with_patch((400, 300), (300, 210, 80, 70), checkerboard);
        let (x, y) = focus(&img, (150.0, 150.0));
        assert!(
            (300.0..=380.0).contains(&x) && (210.0..=280.0).contains(&y),
            "{x},{y}"
        );
    }

    #[test]
    fn finds_skin_tones() {
        // A smooth skin-coloured patch (no edges inside) top left, on grey.
        let img = with_patch((320, 320), (20, 30, 70, 90), |_, _| [224, 172, 138]);
        let (x, y) = focus(&img, (100.0, 100.0));
        assert!(
            (20.0..=90.0).contains(&x) && (30.0..=120.0).contains(&y),
            "{x},{y}"
        );
    }

    #[test]
    fn a_flat_image_keeps_the_centre() {
        let img = with_patch((200, 100), (0, 0, 0, 0), |_, _| [0, 0, 0]);
        assert_eq!(focus(&img, (50.0, 50.0)), (100.0, 50.0));
    }

    #[test]
    fn images_smaller_than_the_grid_and_every_layout_work() {
        let img = with_patch((9, 5), (6, 3, 3, 2), |_, _| [255, 0, 0]);
        let (x, y) = focus(&img, (4.0, 4.0));
        assert!(x > 4.5 && y > 2.5, "{x},{y}");
        for layout in [
            DynamicImage::ImageLuma8(img.to_luma8()),
            DynamicImage::ImageRgba8(img.to_rgba8()),
            DynamicImage::ImageRgb16(img.to_rgb16()),
        ] {
            let (x, y) = focus(&layout, (4.0, 4.0));
            assert!(x.is_finite() && y.is_finite());
        }
    }
}

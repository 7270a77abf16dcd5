//! Pure size maths: how a fit mode, gravity and the no-enlargement rule turn a source size and a
//! target box into a crop of the source, a resampled size and an output canvas; how a plan made
//! for the upright (EXIF-oriented) image maps back onto the stored pixels; and which JPEG
//! shrink-on-load factor a plan allows. No pixels are touched here.

use image::metadata::Orientation;
use schemas::events::{Fit, FocusPoint, Gravity};

/// What the caller asked for, already validated (sides are ≥ 1, both present where the fit mode
/// needs them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Box width; `None` follows the aspect ratio.
    pub width: Option<u32>,
    /// Box height; `None` follows the aspect ratio.
    pub height: Option<u32>,
    /// Fit mode.
    pub fit: Fit,
    /// Crop anchor for `cover` and `cover_clip`, placement anchor for `contain` and `pad`.
    /// `Smart` crops are planned centred and moved once the pixels are known
    /// ([`centred_on`] with the point [`attention::focus`](super::attention::focus) finds).
    pub gravity: Gravity,
    /// The point `FocusPoint` gravity keeps, as fractions of the upright source; present exactly
    /// when the gravity is `FocusPoint`.
    pub focus_point: Option<FocusPoint>,
    /// Whether the output may be larger than the source.
    pub enlarge: bool,
}

/// A rectangle in source pixels. Fractional so that a crop keeps the exact aspect ratio of its box
/// (the resampler accepts sub-pixel crops).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rect {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

/// A rectangle of whole pixels that lies inside the image it was made for: `x + w <= width`,
/// `y + h <= height`, `w, h >= 1`. The only constructor, [`PixelRect::within`], clamps, so a crop
/// handed to the resampler can never reach past the decoded edge, whatever the rounding of the
/// plan or of a shrink-on-load factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelRect {
    x: u32,
    y: u32,
    w: u32,
    h: u32,
}

impl PixelRect {
    /// Snaps `rect` (in source pixels), scaled by `scale` (decoded ÷ source pixels per axis), to
    /// whole pixels of an image of `bounds` (both ≥ 1) and clamps it inside.
    ///
    /// Edges are rounded to the nearest pixel edge independently, so the error is at most half a
    /// pixel at each edge: after shrink-on-load the decoded crop is still at least the output
    /// size, so that is at most about one output pixel over the whole crop.
    pub fn within(rect: Rect, scale: (f64, f64), bounds: (u32, u32)) -> Self {
        let axis = |start: f64, len: f64, scale: f64, bound: u32| -> (u32, u32) {
            // `as` saturates (and maps NaN to 0), so every value lands in 0..=bound.
            let snap = |v: f64| ((v * scale).round().max(0.0) as u32).min(bound);
            let lo = snap(start).min(bound - 1);
            let hi = snap(start + len).max(lo + 1);
            (lo, hi - lo)
        };
        let (x, w) = axis(rect.x, rect.w, scale.0, bounds.0.max(1));
        let (y, h) = axis(rect.y, rect.h, scale.1, bounds.1.max(1));
        Self { x, y, w, h }
    }

    /// Whether this is all of an image of `bounds`.
    pub fn is_whole(&self, bounds: (u32, u32)) -> bool {
        (self.x, self.y, self.w, self.h) == (0, 0, bounds.0, bounds.1)
    }

    /// Left edge, in pixels.
    pub fn x(&self) -> u32 {
        self.x
    }

    /// Top edge, in pixels.
    pub fn y(&self) -> u32 {
        self.y
    }

    /// Width, in pixels (≥ 1).
    pub fn width(&self) -> u32 {
        self.w
    }

    /// Height, in pixels (≥ 1).
    pub fn height(&self) -> u32 {
        self.h
    }
}

/// How one image is produced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    /// Part of the source that is resampled.
    pub crop: Rect,
    /// Size the crop is resampled to.
    pub size: (u32, u32),
    /// Size of the output; larger than `size` only for `contain` and `pad`, which pad.
    pub canvas: (u32, u32),
    /// Top-left corner of the resampled image on the canvas.
    pub offset: (u32, u32),
}

/// Where gravity anchors a crop or a padded image: 0 = left/top, 0.5 = centre, 1 = right/bottom.
/// Smart and focus-point gravities place as the centre: a crop made with them is moved
/// afterwards, and they mean nothing for padding.
pub fn anchor(gravity: Gravity) -> (f64, f64) {
    match gravity {
        Gravity::Centre | Gravity::Smart | Gravity::FocusPoint => (0.5, 0.5),
        Gravity::North => (0.5, 0.0),
        Gravity::South => (0.5, 1.0),
        Gravity::East => (1.0, 0.5),
        Gravity::West => (0.0, 0.5),
        Gravity::NorthEast => (1.0, 0.0),
        Gravity::NorthWest => (0.0, 0.0),
        Gravity::SouthEast => (1.0, 1.0),
        Gravity::SouthWest => (0.0, 1.0),
    }
}

/// Rounds a positive length to whole pixels, never below one.
fn px(v: f64) -> u32 {
    // `as` saturates; callers bound the result against the output limit afterwards.
    (v.round() as u32).max(1)
}

/// Plans the resize of a `src` (width, height) image, both ≥ 1, in the upright frame.
///
/// Without `enlarge`, a box that would need upscaling is shrunk by the same factor first: the
/// output keeps the box's aspect ratio (cover, contain, fill) or the source's (inside) and the
/// source is never scaled up along either axis. `cover_clip` and `pad` instead keep the source's
/// scale and clip the box to it (`cover_clip`) or pad to the whole box (`pad`), as imgproxy's
/// `fill` and `fit` with `extend` do; `auto` is `cover_clip` or `inside` by orientation.
pub fn plan(src: (u32, u32), target: &Target) -> Plan {
    let (sw, sh) = (f64::from(src.0), f64::from(src.1));
    if target.fit == Fit::Pad {
        // Before the one-side rule below: `pad` pads the side it is given.
        return pad(sw, sh, target);
    }
    let whole = Rect {
        x: 0.0,
        y: 0.0,
        w: sw,
        h: sh,
    };
    let (gx, gy) = anchor(target.gravity);
    let plain = |size: (u32, u32)| Plan {
        crop: whole,
        size,
        canvas: size,
        offset: (0, 0),
    };

    let (bw, bh) = match (target.width, target.height) {
        (Some(w), Some(h)) => (f64::from(w), f64::from(h)),
        // One side given: every mode degrades to `inside` on that side (the box is unbounded on
        // the other, so there is nothing to crop, pad or stretch).
        (Some(w), None) => return plain(inside(sw, sh, f64::from(w) / sw, target.enlarge)),
        (None, Some(h)) => return plain(inside(sw, sh, f64::from(h) / sh, target.enlarge)),
        (None, None) => return plain(src),
    };

    match target.fit {
        Fit::Inside => plain(inside(sw, sh, (bw / sw).min(bh / sh), target.enlarge)),
        Fit::Fill => {
            let k = (bw / sw).max(bh / sh);
            if !target.enlarge && k > 1.0 {
                plain((px(bw / k), px(bh / k)))
            } else {
                plain((px(bw), px(bh)))
            }
        }
        Fit::Cover => {
            let (bw, bh) = shrink_box(bw, bh, (bw / sw).max(bh / sh), target.enlarge);
            let scale = (f64::from(bw) / sw).max(f64::from(bh) / sh);
            let cw = (f64::from(bw) / scale).min(sw);
            let ch = (f64::from(bh) / scale).min(sh);
            Plan {
                crop: crop_at(sw, sh, cw, ch, target),
                size: (bw, bh),
                canvas: (bw, bh),
                offset: (0, 0),
            }
        }
        Fit::Contain => {
            let (bw, bh) = shrink_box(bw, bh, (bw / sw).min(bh / sh), target.enlarge);
            let scale = (f64::from(bw) / sw).min(f64::from(bh) / sh);
            let scale = if target.enlarge {
                scale
            } else {
                scale.min(1.0)
            };
            let size = (px(sw * scale).min(bw), px(sh * scale).min(bh));
            Plan {
                crop: whole,
                size,
                canvas: (bw, bh),
                offset: (
                    (f64::from(bw - size.0) * gx).round() as u32,
                    (f64::from(bh - size.1) * gy).round() as u32,
                ),
            }
        }
        Fit::CoverClip => {
            let scale = (bw / sw).max(bh / sh);
            let scale = if target.enlarge {
                scale
            } else {
                scale.min(1.0)
            };
            // The box, clipped on each axis to the scaled source.
            let size = (px(bw).min(px(sw * scale)), px(bh).min(px(sh * scale)));
            let cw = (f64::from(size.0) / scale).min(sw);
            let ch = (f64::from(size.1) / scale).min(sh);
            Plan {
                crop: crop_at(sw, sh, cw, ch, target),
                size,
                canvas: size,
                offset: (0, 0),
            }
        }
        Fit::Auto => {
            // imgproxy decides on the signs of width − height: a square counts as a landscape.
            let fit = if (sw >= sh) == (bw >= bh) {
                Fit::CoverClip
            } else {
                Fit::Inside
            };
            plan(src, &Target { fit, ..*target })
        }
        Fit::Pad => pad(sw, sh, target),
    }
}

/// A `cw` × `ch` crop of a `sw` × `sh` source (the crop no larger), placed by the target's
/// gravity: at its anchor, or centred on its focus point as far as the edges allow.
fn crop_at(sw: f64, sh: f64, cw: f64, ch: f64, target: &Target) -> Rect {
    let crop = Rect {
        x: 0.0,
        y: 0.0,
        w: cw,
        h: ch,
    };
    match (target.gravity, target.focus_point) {
        (Gravity::FocusPoint, Some(p)) => centred_on(crop, (p.x * sw, p.y * sh), (sw, sh)),
        (gravity, _) => {
            let (gx, gy) = anchor(gravity);
            Rect {
                x: (sw - cw) * gx,
                y: (sh - ch) * gy,
                ..crop
            }
        }
    }
}

/// `rect` moved so that `point` is as near its centre as an image of `bounds` allows: centred
/// on it, then clamped inside (`rect` is no larger than `bounds`).
pub fn centred_on(rect: Rect, point: (f64, f64), bounds: (f64, f64)) -> Rect {
    let axis = |p: f64, len: f64, bound: f64| (p - len / 2.0).min(bound - len).max(0.0);
    Rect {
        x: axis(point.0, rect.w, bounds.0),
        y: axis(point.1, rect.h, bounds.1),
        ..rect
    }
}

/// `pad`: the source fitted inside the box (never enlarged without `enlarge`), on a canvas of
/// the box's given sides (the fitted size on a side not given), placed by gravity.
fn pad(sw: f64, sh: f64, target: &Target) -> Plan {
    let scale = match (target.width, target.height) {
        (Some(w), Some(h)) => (f64::from(w) / sw).min(f64::from(h) / sh),
        (Some(w), None) => f64::from(w) / sw,
        (None, Some(h)) => f64::from(h) / sh,
        (None, None) => 1.0,
    };
    let (w, h) = inside(sw, sh, scale, target.enlarge);
    // Fitted inside the box, so never larger than a given side, whatever the rounding.
    let size = (
        target.width.map_or(w, |bw| w.min(bw)),
        target.height.map_or(h, |bh| h.min(bh)),
    );
    let canvas = (
        target.width.unwrap_or(size.0),
        target.height.unwrap_or(size.1),
    );
    let (gx, gy) = anchor(target.gravity);
    Plan {
        crop: Rect {
            x: 0.0,
            y: 0.0,
            w: sw,
            h: sh,
        },
        size,
        canvas,
        offset: (
            (f64::from(canvas.0 - size.0) * gx).round() as u32,
            (f64::from(canvas.1 - size.1) * gy).round() as u32,
        ),
    }
}

/// Source scaled by `scale` (capped at 1 without `enlarge`).
fn inside(sw: f64, sh: f64, scale: f64, enlarge: bool) -> (u32, u32) {
    let scale = if enlarge { scale } else { scale.min(1.0) };
    (px(sw * scale), px(sh * scale))
}

/// The box, divided by the mode's scale factor `k` when that would enlarge and enlarging is off.
fn shrink_box(bw: f64, bh: f64, k: f64, enlarge: bool) -> (u32, u32) {
    if !enlarge && k > 1.0 {
        (px(bw / k), px(bh / k))
    } else {
        (px(bw), px(bh))
    }
}

/// Whether the orientation swaps width and height.
pub fn swaps_axes(orientation: Orientation) -> bool {
    matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

/// Size as displayed, given the stored (width, height).
pub fn upright_size(stored: (u32, u32), orientation: Orientation) -> (u32, u32) {
    if swaps_axes(orientation) {
        (stored.1, stored.0)
    } else {
        stored
    }
}

/// Maps a rectangle of the upright image back onto the stored image of size `stored`, so the
/// crop and resample can run on stored pixels and only the small output is rotated afterwards.
pub fn rect_to_stored(rect: Rect, orientation: Orientation, stored: (u32, u32)) -> Rect {
    let (w, h) = (f64::from(stored.0), f64::from(stored.1));
    // Continuous coordinates: upright point (u, v) → stored point; a rectangle maps to the
    // rectangle spanned by its mapped corners.
    let map = |u: f64, v: f64| -> (f64, f64) {
        match orientation {
            Orientation::NoTransforms => (u, v),
            Orientation::FlipHorizontal => (w - u, v),
            Orientation::FlipVertical => (u, h - v),
            Orientation::Rotate180 => (w - u, h - v),
            Orientation::Rotate90 => (v, h - u),
            Orientation::Rotate270 => (w - v, u),
            Orientation::Rotate90FlipH => (v, u),
            Orientation::Rotate270FlipH => (w - v, h - u),
        }
    };
    let (ax, ay) = map(rect.x, rect.y);
    let (bx, by) = map(rect.x + rect.w, rect.y + rect.h);
    Rect {
        x: ax.min(bx),
        y: ay.min(by),
        w: (ax - bx).abs(),
        h: (ay - by).abs(),
    }
}

/// The JPEG DCT shrink-on-load denominator (1, 2, 4 or 8) for a crop of `crop` stored pixels
/// resampled to `size`: the largest reduction that leaves at least `headroom` times the output
/// size on both axes, so the final resample always downsizes by ≥ `headroom`.
pub fn jpeg_shrink(crop: (f64, f64), size: (u32, u32), headroom: f64) -> u32 {
    let ratio = (crop.0 / f64::from(size.0)).min(crop.1 / f64::from(size.1));
    [8, 4, 2]
        .into_iter()
        .find(|&d| ratio / f64::from(d) >= headroom)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FITS: [Fit; 7] = [
        Fit::Inside,
        Fit::Cover,
        Fit::Contain,
        Fit::Fill,
        Fit::CoverClip,
        Fit::Auto,
        Fit::Pad,
    ];

    fn target(width: Option<u32>, height: Option<u32>, fit: Fit) -> Target {
        Target {
            width,
            height,
            fit,
            gravity: Gravity::Centre,
            focus_point: None,
            enlarge: false,
        }
    }

    #[test]
    fn inside_fits_the_box_and_keeps_aspect() {
        let p = plan((2400, 1600), &target(Some(512), Some(512), Fit::Inside));
        assert_eq!(
            (p.size, p.canvas, p.offset),
            ((512, 341), (512, 341), (0, 0))
        );
        assert_eq!(
            p.crop,
            Rect {
                x: 0.0,
                y: 0.0,
                w: 2400.0,
                h: 1600.0
            }
        );
        let p = plan((1600, 2400), &target(Some(512), Some(512), Fit::Inside));
        assert_eq!(p.size, (341, 512));
    }

    #[test]
    fn one_side_keeps_aspect_in_every_mode() {
        for fit in FITS {
            assert_eq!(
                plan((2000, 1000), &target(Some(500), None, fit)).size,
                (500, 250)
            );
            assert_eq!(
                plan((2000, 1000), &target(None, Some(100), fit)).size,
                (200, 100)
            );
        }
    }

    #[test]
    fn no_side_keeps_the_source_size() {
        assert_eq!(
            plan((640, 480), &target(None, None, Fit::Inside)).size,
            (640, 480)
        );
    }

    #[test]
    fn inside_does_not_enlarge_unless_asked() {
        let t = target(Some(1000), Some(1000), Fit::Inside);
        assert_eq!(plan((400, 300), &t).size, (400, 300));
        assert_eq!(
            plan((400, 300), &Target { enlarge: true, ..t }).size,
            (1000, 750)
        );
        assert_eq!(
            plan((400, 300), &target(Some(800), None, Fit::Inside)).size,
            (400, 300)
        );
        let t = Target {
            enlarge: true,
            ..target(Some(800), None, Fit::Inside)
        };
        assert_eq!(plan((400, 300), &t).size, (800, 600));
    }

    #[test]
    fn cover_fills_the_box_and_crops_by_gravity() {
        let cases = [
            (Gravity::Centre, 250.0, 0.0),
            (Gravity::North, 250.0, 0.0),
            (Gravity::South, 250.0, 0.0),
            (Gravity::East, 500.0, 0.0),
            (Gravity::West, 0.0, 0.0),
            (Gravity::NorthEast, 500.0, 0.0),
            (Gravity::NorthWest, 0.0, 0.0),
            (Gravity::SouthEast, 500.0, 0.0),
            (Gravity::SouthWest, 0.0, 0.0),
        ];
        for (gravity, x, y) in cases {
            let t = Target {
                gravity,
                ..target(Some(100), Some(100), Fit::Cover)
            };
            let p = plan((1500, 1000), &t);
            assert_eq!((p.size, p.canvas), ((100, 100), (100, 100)), "{gravity:?}");
            assert_eq!(
                p.crop,
                Rect {
                    x,
                    y,
                    w: 1000.0,
                    h: 1000.0
                },
                "{gravity:?}"
            );
        }
        // Tall source: gravity moves the crop vertically.
        let cases = [
            (Gravity::Centre, 250.0),
            (Gravity::North, 0.0),
            (Gravity::South, 500.0),
            (Gravity::East, 250.0),
            (Gravity::West, 250.0),
            (Gravity::NorthEast, 0.0),
            (Gravity::NorthWest, 0.0),
            (Gravity::SouthEast, 500.0),
            (Gravity::SouthWest, 500.0),
        ];
        for (gravity, y) in cases {
            let t = Target {
                gravity,
                ..target(Some(200), Some(100), Fit::Cover)
            };
            let p = plan((1000, 1000), &t);
            assert_eq!(p.size, (200, 100));
            assert_eq!(
                p.crop,
                Rect {
                    x: 0.0,
                    y,
                    w: 1000.0,
                    h: 500.0
                },
                "{gravity:?}"
            );
        }
    }

    #[test]
    fn cover_without_enlarge_keeps_the_box_aspect_at_source_scale() {
        let p = plan((400, 300), &target(Some(800), Some(800), Fit::Cover));
        assert_eq!(p.size, (300, 300));
        assert_eq!(
            p.crop,
            Rect {
                x: 50.0,
                y: 0.0,
                w: 300.0,
                h: 300.0
            }
        );
        let t = Target {
            enlarge: true,
            ..target(Some(800), Some(800), Fit::Cover)
        };
        let p = plan((400, 300), &t);
        assert_eq!(p.size, (800, 800));
        assert_eq!(
            p.crop,
            Rect {
                x: 50.0,
                y: 0.0,
                w: 300.0,
                h: 300.0
            }
        );
    }

    #[test]
    fn contain_pads_to_the_box_by_gravity() {
        let cases = [
            (Gravity::Centre, (0, 25)),
            (Gravity::North, (0, 0)),
            (Gravity::South, (0, 50)),
            (Gravity::East, (0, 25)),
            (Gravity::West, (0, 25)),
            (Gravity::SouthEast, (0, 50)),
        ];
        for (gravity, offset) in cases {
            let t = Target {
                gravity,
                ..target(Some(100), Some(100), Fit::Contain)
            };
            let p = plan((1000, 500), &t);
            assert_eq!(
                (p.size, p.canvas, p.offset),
                ((100, 50), (100, 100), offset),
                "{gravity:?}"
            );
        }
        let t = Target {
            gravity: Gravity::East,
            ..target(Some(100), Some(100), Fit::Contain)
        };
        assert_eq!(plan((500, 1000), &t).offset, (50, 0));
    }

    #[test]
    fn contain_without_enlarge_pads_at_source_scale() {
        let p = plan((400, 300), &target(Some(800), Some(800), Fit::Contain));
        assert_eq!(
            (p.size, p.canvas, p.offset),
            ((400, 300), (400, 400), (0, 50))
        );
        let t = Target {
            enlarge: true,
            ..target(Some(800), Some(800), Fit::Contain)
        };
        let p = plan((400, 300), &t);
        assert_eq!(
            (p.size, p.canvas, p.offset),
            ((800, 600), (800, 800), (0, 100))
        );
    }

    #[test]
    fn fill_stretches_and_never_enlarges_an_axis_unless_asked() {
        let p = plan((1000, 1000), &target(Some(300), Some(100), Fit::Fill));
        assert_eq!((p.size, p.canvas), ((300, 100), (300, 100)));
        assert_eq!(
            plan((400, 300), &target(Some(800), Some(200), Fit::Fill)).size,
            (400, 100)
        );
        let t = Target {
            enlarge: true,
            ..target(Some(800), Some(200), Fit::Fill)
        };
        assert_eq!(plan((400, 300), &t).size, (800, 200));
    }

    fn whole(w: f64, h: f64) -> Rect {
        Rect {
            x: 0.0,
            y: 0.0,
            w,
            h,
        }
    }

    #[test]
    fn cover_clip_is_cover_for_a_larger_source() {
        for gravity in [Gravity::Centre, Gravity::East, Gravity::SouthWest] {
            for (src, bw, bh) in [((1500, 1000), 100, 100), ((1000, 1000), 200, 100)] {
                let t = Target {
                    gravity,
                    ..target(Some(bw), Some(bh), Fit::CoverClip)
                };
                let cover = Target {
                    fit: Fit::Cover,
                    ..t
                };
                assert_eq!(plan(src, &t), plan(src, &cover), "{src:?} {gravity:?}");
                assert_eq!(plan(src, &t).size, (bw, bh));
            }
        }
    }

    #[test]
    fn cover_clip_without_enlarge_clips_the_box_to_the_source() {
        // Smaller on both axes: the source as it is.
        let p = plan((400, 300), &target(Some(800), Some(800), Fit::CoverClip));
        assert_eq!(
            (p.size, p.canvas, p.crop),
            ((400, 300), (400, 300), whole(400.0, 300.0))
        );
        // Smaller on one axis only: that axis is kept, the other cropped to the box by gravity,
        // at the source's scale; the output does not have the box's aspect ratio.
        for (gravity, x) in [
            (Gravity::Centre, 250.0),
            (Gravity::West, 0.0),
            (Gravity::NorthEast, 500.0),
        ] {
            let t = Target {
                gravity,
                ..target(Some(500), Some(500), Fit::CoverClip)
            };
            let p = plan((1000, 300), &t);
            assert_eq!((p.size, p.canvas), ((500, 300), (500, 300)), "{gravity:?}");
            assert_eq!(
                p.crop,
                Rect {
                    x,
                    y: 0.0,
                    w: 500.0,
                    h: 300.0
                },
                "{gravity:?}"
            );
        }
        // `cover` keeps the box's aspect ratio instead (imgproxy's `fill-down`).
        assert_eq!(
            plan((1000, 300), &target(Some(500), Some(500), Fit::Cover)).size,
            (300, 300)
        );
    }

    #[test]
    fn cover_clip_with_enlarge_is_cover() {
        for src in [(400, 300), (1000, 300), (50, 2000), (3000, 2000)] {
            for (bw, bh) in [(800, 800), (500, 500), (100, 700)] {
                let t = Target {
                    enlarge: true,
                    ..target(Some(bw), Some(bh), Fit::CoverClip)
                };
                let cover = Target {
                    fit: Fit::Cover,
                    ..t
                };
                assert_eq!(plan(src, &t), plan(src, &cover), "{src:?} {bw}x{bh}");
                assert_eq!(plan(src, &t).size, (bw, bh));
            }
        }
    }

    #[test]
    fn auto_covers_the_same_orientation_and_fits_the_other() {
        let cases = [
            // Landscape source and box: cover_clip.
            ((1500, 1000), (200, 100), (200, 100)),
            // Landscape source, portrait box: inside.
            ((1500, 1000), (100, 200), (100, 67)),
            // Portrait source and box: cover_clip.
            ((1000, 1500), (100, 200), (100, 200)),
            // Portrait source, square box (a landscape): inside.
            ((1000, 1500), (100, 100), (67, 100)),
            // A square source counts as a landscape.
            ((1000, 1000), (200, 100), (200, 100)),
            ((1000, 1000), (100, 200), (100, 100)),
            // Smaller than the box without enlarge: clipped, never padded nor enlarged.
            ((300, 200), (400, 100), (300, 100)),
            ((150, 100), (300, 200), (150, 100)),
        ];
        for (src, (bw, bh), size) in cases {
            let p = plan(src, &target(Some(bw), Some(bh), Fit::Auto));
            assert_eq!((p.size, p.canvas), (size, size), "{src:?} {bw}x{bh}");
            let fit = if (src.0 >= src.1) == (bw >= bh) {
                Fit::CoverClip
            } else {
                Fit::Inside
            };
            assert_eq!(p, plan(src, &target(Some(bw), Some(bh), fit)), "{src:?}");
        }
        let t = Target {
            enlarge: true,
            ..target(Some(300), Some(200), Fit::Auto)
        };
        assert_eq!(plan((150, 100), &t).size, (300, 200));
        assert_eq!(plan((100, 150), &t).size, (133, 200));
    }

    #[test]
    fn pad_pads_to_the_whole_box_by_gravity() {
        // A larger source: as `contain`.
        for gravity in [Gravity::Centre, Gravity::North, Gravity::SouthEast] {
            let t = Target {
                gravity,
                ..target(Some(100), Some(100), Fit::Pad)
            };
            let contain = Target {
                fit: Fit::Contain,
                ..t
            };
            assert_eq!(
                plan((1000, 500), &t),
                plan((1000, 500), &contain),
                "{gravity:?}"
            );
        }
        // A smaller source without enlarge keeps its size on the whole box.
        let cases = [
            (Gravity::Centre, (200, 250)),
            (Gravity::NorthWest, (0, 0)),
            (Gravity::SouthEast, (400, 500)),
            (Gravity::East, (400, 250)),
            (Gravity::North, (200, 0)),
        ];
        for (gravity, offset) in cases {
            let t = Target {
                gravity,
                ..target(Some(800), Some(800), Fit::Pad)
            };
            let p = plan((400, 300), &t);
            assert_eq!(
                (p.crop, p.size, p.canvas, p.offset),
                (whole(400.0, 300.0), (400, 300), (800, 800), offset),
                "{gravity:?}"
            );
        }
        // `contain` pads to the box's aspect ratio at the source's scale instead.
        assert_eq!(
            plan((400, 300), &target(Some(800), Some(800), Fit::Contain)).canvas,
            (400, 400)
        );
        // With enlarge: as `contain`.
        let t = Target {
            enlarge: true,
            ..target(Some(800), Some(800), Fit::Pad)
        };
        let p = plan((400, 300), &t);
        assert_eq!(
            (p.size, p.canvas, p.offset),
            ((800, 600), (800, 800), (0, 100))
        );
    }

    #[test]
    fn pad_with_one_side_pads_that_side_only() {
        let p = plan((400, 300), &target(Some(800), None, Fit::Pad));
        assert_eq!(
            (p.size, p.canvas, p.offset),
            ((400, 300), (800, 300), (200, 0))
        );
        let t = Target {
            gravity: Gravity::South,
            ..target(None, Some(500), Fit::Pad)
        };
        let p = plan((400, 300), &t);
        assert_eq!(
            (p.size, p.canvas, p.offset),
            ((400, 300), (400, 500), (0, 200))
        );
        // Nothing to pad once the side is reached.
        let p = plan((2000, 1000), &target(Some(500), None, Fit::Pad));
        assert_eq!(
            (p.size, p.canvas, p.offset),
            ((500, 250), (500, 250), (0, 0))
        );
        let t = Target {
            enlarge: true,
            ..target(Some(800), None, Fit::Pad)
        };
        assert_eq!(plan((400, 300), &t).canvas, (800, 600));
        assert_eq!(
            plan((400, 300), &target(None, None, Fit::Pad)).canvas,
            (400, 300)
        );
    }

    #[test]
    fn tiny_results_are_at_least_one_pixel() {
        assert_eq!(
            plan((10000, 10), &target(Some(100), Some(100), Fit::Inside)).size,
            (100, 1)
        );
    }

    #[test]
    fn upright_rects_map_back_onto_stored_pixels() {
        // Stored 40×30; the upright crop is the top-left 10×5 corner of the displayed image.
        let r = Rect {
            x: 0.0,
            y: 0.0,
            w: 10.0,
            h: 5.0,
        };
        let stored = (40, 30);
        let cases = [
            (Orientation::NoTransforms, (0.0, 0.0, 10.0, 5.0)),
            (Orientation::FlipHorizontal, (30.0, 0.0, 10.0, 5.0)),
            (Orientation::FlipVertical, (0.0, 25.0, 10.0, 5.0)),
            (Orientation::Rotate180, (30.0, 25.0, 10.0, 5.0)),
            // Rotate90 (EXIF 6): displayed top-left comes from the stored bottom-left.
            (Orientation::Rotate90, (0.0, 20.0, 5.0, 10.0)),
            (Orientation::Rotate270, (35.0, 0.0, 5.0, 10.0)),
            (Orientation::Rotate90FlipH, (0.0, 0.0, 5.0, 10.0)),
            (Orientation::Rotate270FlipH, (35.0, 20.0, 5.0, 10.0)),
        ];
        for (o, (x, y, w, h)) in cases {
            assert_eq!(rect_to_stored(r, o, stored), Rect { x, y, w, h }, "{o:?}");
            assert_eq!(swaps_axes(o), w < h, "{o:?}");
        }
        assert_eq!(upright_size((40, 30), Orientation::Rotate90), (30, 40));
    }

    const ORIENTATIONS: [Orientation; 8] = [
        Orientation::NoTransforms,
        Orientation::FlipHorizontal,
        Orientation::FlipVertical,
        Orientation::Rotate180,
        Orientation::Rotate90,
        Orientation::Rotate270,
        Orientation::Rotate90FlipH,
        Orientation::Rotate270FlipH,
    ];

    /// The decoded size libjpeg produces at `1/denom` scale: each side rounded up.
    fn scaled(side: u32, denom: u32) -> u32 {
        side.div_ceil(denom)
    }

    /// Exhaustive over small sizes: every source size × box × fit × enlarge × orientation ×
    /// shrink-on-load factor gives a crop inside the decoded image, at least one pixel, and within
    /// one decoded pixel of the exact (fractional) crop on every edge.
    #[test]
    fn every_crop_lies_inside_the_decoded_image() {
        let sides = (1..=40).chain([63, 64, 65, 127, 255, 511, 735, 1500]);
        let sources: Vec<(u32, u32)> = sides
            .clone()
            .flat_map(|w| [1, 2, 3, 7, 8, 9, 31, 735].map(move |h| (w, h)))
            .collect();
        let boxes = [1, 2, 3, 5, 7, 13, 33, 300];
        let mut checked = 0u64;
        for &stored in &sources {
            for orientation in ORIENTATIONS {
                let upright = upright_size(stored, orientation);
                for &bw in &boxes {
                    for &bh in &boxes {
                        for fit in FITS {
                            for enlarge in [false, true] {
                                let t = Target {
                                    enlarge,
                                    ..target(Some(bw), Some(bh), fit)
                                };
                                let p = plan(upright, &t);
                                assert!(
                                    p.offset.0 + p.size.0 <= p.canvas.0
                                        && p.offset.1 + p.size.1 <= p.canvas.1,
                                    "{stored:?} {orientation:?} box {bw}x{bh} {fit:?}: {p:?}"
                                );
                                let crop = rect_to_stored(p.crop, orientation, stored);
                                for denom in [1, 2, 4, 8] {
                                    let bounds = (scaled(stored.0, denom), scaled(stored.1, denom));
                                    let scale = (
                                        f64::from(bounds.0) / f64::from(stored.0),
                                        f64::from(bounds.1) / f64::from(stored.1),
                                    );
                                    let r = PixelRect::within(crop, scale, bounds);
                                    let case = || {
                                        format!(
                                            "{stored:?} {orientation:?} box {bw}x{bh} {fit:?} \
                                         enlarge={enlarge} 1/{denom}: {crop:?} -> {r:?}"
                                        )
                                    };
                                    assert!(r.width() >= 1 && r.height() >= 1, "{}", case());
                                    assert!(r.x() + r.width() <= bounds.0, "{}", case());
                                    assert!(r.y() + r.height() <= bounds.1, "{}", case());
                                    let edges = [
                                        (f64::from(r.x()), crop.x * scale.0),
                                        (f64::from(r.x() + r.width()), (crop.x + crop.w) * scale.0),
                                        (f64::from(r.y()), crop.y * scale.1),
                                        (
                                            f64::from(r.y() + r.height()),
                                            (crop.y + crop.h) * scale.1,
                                        ),
                                    ];
                                    for (got, exact) in edges {
                                        assert!((got - exact).abs() <= 1.0, "{}", case());
                                    }
                                    checked += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(checked > 1_000_000, "{checked} cases");
    }

    #[test]
    fn pixel_rects_clamp_whatever_they_are_given() {
        let bounds = (10, 5);
        let cases = [
            // Past the right and bottom edges by a rounding step.
            (
                Rect {
                    x: 0.0,
                    y: 0.0,
                    w: 10.000_000_1,
                    h: 5.4,
                },
                (0, 0, 10, 5),
            ),
            // Entirely outside: the last pixel.
            (
                Rect {
                    x: 50.0,
                    y: 50.0,
                    w: 3.0,
                    h: 3.0,
                },
                (9, 4, 1, 1),
            ),
            // Negative, empty and NaN.
            (
                Rect {
                    x: -3.0,
                    y: f64::NAN,
                    w: 0.0,
                    h: f64::NAN,
                },
                (0, 0, 1, 1),
            ),
        ];
        for (rect, (x, y, w, h)) in cases {
            let r = PixelRect::within(rect, (1.0, 1.0), bounds);
            assert_eq!(
                (r.x(), r.y(), r.width(), r.height()),
                (x, y, w, h),
                "{rect:?}"
            );
        }
        assert!(
            PixelRect::within(
                Rect {
                    x: 0.0,
                    y: 0.0,
                    w: 10.0,
                    h: 5.0
                },
                (1.0, 1.0),
                bounds
            )
            .is_whole(bounds)
        );
    }

    #[test]
    fn jpeg_shrink_keeps_headroom() {
        assert_eq!(jpeg_shrink((2400.0, 1600.0), (512, 341), 1.0), 4);
        assert_eq!(jpeg_shrink((2400.0, 1600.0), (512, 341), 2.0), 2);
        assert_eq!(jpeg_shrink((1200.0, 800.0), (512, 341), 1.0), 2);
        assert_eq!(jpeg_shrink((800.0, 600.0), (512, 384), 1.0), 1);
        assert_eq!(jpeg_shrink((8000.0, 8000.0), (100, 100), 2.0), 8);
        assert_eq!(jpeg_shrink((100.0, 100.0), (400, 400), 1.0), 1);
    }

    fn focused(width: u32, height: u32, fit: Fit, x: f64, y: f64) -> Target {
        Target {
            gravity: Gravity::FocusPoint,
            focus_point: Some(FocusPoint { x, y }),
            ..target(Some(width), Some(height), fit)
        }
    }

    #[test]
    fn focus_point_centres_the_crop_as_far_as_the_edges_allow() {
        // 1000×500 to a 200×200 cover: a 500×500 crop, free to move along x only.
        for (fit, x, y, expected_x) in [
            (Fit::Cover, 0.5, 0.5, 250.0),
            (Fit::Cover, 0.6, 0.9, 350.0),
            (Fit::Cover, 0.9, 0.1, 500.0),
            (Fit::Cover, 0.1, 0.5, 0.0),
            (Fit::CoverClip, 0.3, 0.0, 50.0),
            (Fit::Cover, 1.0, 1.0, 500.0),
            (Fit::Cover, 0.0, 0.0, 0.0),
        ] {
            let p = plan((1000, 500), &focused(200, 200, fit, x, y));
            let expected = Rect {
                x: expected_x,
                y: 0.0,
                w: 500.0,
                h: 500.0,
            };
            assert_eq!((p.crop, p.size), (expected, (200, 200)), "{fit:?} {x},{y}");
        }
        // Portrait crop of a portrait source, free along y: 600×1200 to 300×300.
        let p = plan((600, 1200), &focused(300, 300, Fit::Cover, 0.5, 0.75));
        assert_eq!(
            p.crop,
            Rect {
                x: 0.0,
                y: 600.0,
                w: 600.0,
                h: 600.0
            }
        );
        // `auto` crops (as `cover_clip`) when the orientations agree: 750×500 of 1000×500.
        let p = plan((1000, 500), &focused(300, 200, Fit::Auto, 0.7, 0.5));
        assert_eq!((p.crop.x, p.crop.w, p.size), (250.0, 750.0, (300, 200)));
        let p = plan((1000, 500), &focused(300, 200, Fit::Auto, 0.4, 0.5));
        assert_eq!(p.crop.x, 25.0);
    }

    #[test]
    fn smart_and_focus_point_place_padding_as_the_centre() {
        for gravity in [Gravity::Smart, Gravity::FocusPoint] {
            for fit in [Fit::Contain, Fit::Pad] {
                let t = Target {
                    gravity,
                    focus_point: (gravity == Gravity::FocusPoint)
                        .then_some(FocusPoint { x: 0.0, y: 1.0 }),
                    ..target(Some(200), Some(200), fit)
                };
                let centre = plan((1000, 500), &target(Some(200), Some(200), fit));
                assert_eq!(plan((1000, 500), &t), centre, "{gravity:?} {fit:?}");
            }
        }
        // Smart crops are planned centred; the kernel moves them once it has the pixels.
        let t = Target {
            gravity: Gravity::Smart,
            ..target(Some(200), Some(200), Fit::Cover)
        };
        assert_eq!(
            plan((1000, 500), &t).crop,
            plan((1000, 500), &target(Some(200), Some(200), Fit::Cover)).crop
        );
    }

    #[test]
    fn centred_on_clamps_inside() {
        let r = Rect {
            x: 7.0,
            y: 7.0,
            w: 40.0,
            h: 10.0,
        };
        let at = |p| {
            let c = centred_on(r, p, (100.0, 10.0));
            (c.x, c.y, c.w, c.h)
        };
        assert_eq!(at((50.0, 5.0)), (30.0, 0.0, 40.0, 10.0));
        assert_eq!(at((-5.0, 99.0)), (0.0, 0.0, 40.0, 10.0));
        assert_eq!(at((95.0, 0.0)), (60.0, 0.0, 40.0, 10.0));
    }
}

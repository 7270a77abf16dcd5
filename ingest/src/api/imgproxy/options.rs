//! Processing options: imgproxy's names, short names, argument counts and empty-argument rules
//! for the options imgpipe supports, then the mapping onto the contract's [`ResizeParams`]. Every
//! other option name is refused by name: an option silently skipped would return an image the
//! URL did not ask for.
//!
//! As in imgproxy, options apply left to right and a later one overrides an earlier one
//! (`rs:fit:300:300/w:200` asks for 200 × 300), and the source's extension overrides `format`.

use schemas::events::{Fit, FocusPoint, Frames, Gravity, ImageFormat, ResizeParams, Rgb};

use super::UrlError;
use super::path::RawOption;
use crate::api::params::{self, MAX_SIDE};

/// Largest `dpr`.
pub const MAX_DPR: f64 = 8.0;

/// imgproxy's processing options (v3 and v4) that imgpipe does not implement, both spellings:
/// refused with a message that says so rather than "unknown".
const NOT_SUPPORTED: &[&[&str]] = &[
    &["min-width", "mw"],
    &["min-height", "mh"],
    &["zoom", "z"],
    &["extend_aspect_ratio", "extend_ar", "exar"],
    &["crop", "c"],
    &["trim", "t"],
    &["padding", "pd"],
    &["auto_rotate", "ar"],
    &["rotate", "rot"],
    &["flip", "fl"],
    &["blur", "bl"],
    &["sharpen", "sh"],
    &["pixelate", "pix"],
    &["watermark", "wm"],
    &["strip_metadata", "sm"],
    &["keep_copyright", "kcr"],
    &["strip_color_profile", "scp"],
    &["preserve_hdr", "ph"],
    &["enforce_thumbnail", "eth"],
    &["format_quality", "fq"],
    &["max_bytes", "mb"],
    &["skip_processing", "skp"],
    &["raw"],
    &["filename", "fn"],
    &["return_attachment", "att"],
    &["preset", "pr"],
    &["max_src_resolution", "msr"],
    &["max_src_file_size", "msfs"],
    &["max_animation_frames", "maf"],
    &["max_animation_frame_resolution", "mafr"],
    &["max_result_dimension", "mrd"],
];

/// Formats imgproxy names that imgpipe does not write (HEIC, which it reads, has its own message).
const OTHER_FORMATS: &[&str] = &["jxl", "ico", "svg", "heic", "bmp", "tiff", "pdf", "mp4"];

/// imgproxy's resizing types (`resizing_type`, `rt`, first argument of `resize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResizingType {
    /// Inside the box, keeping the aspect ratio.
    #[default]
    Fit,
    /// Fill the box, keeping the aspect ratio, cropping by gravity.
    Fill,
    /// As `fill`, but never larger than the source: the box shrinks, keeping its aspect ratio.
    FillDown,
    /// Exactly the box, aspect ratio not kept.
    Force,
    /// `fill` when source and box have the same orientation, else `fit`.
    Auto,
}

/// The contract's fit for imgproxy's resizing type with both sides given: `fit` → `Inside`
/// (`Pad` with `extend`), `fill` → `CoverClip`, `fill-down` → `Cover`, `force` → `Fill`,
/// `auto` → `Auto`. imgproxy's `extend` pads only what `fit` leaves of the box; with the
/// others it does nothing when enlarging (they fill the box already) and, without enlarging,
/// pads a source smaller than the box in a way no fit of ours reproduces: a 400 naming `extend`
/// rather than a different image.
pub fn fit_for(resizing_type: ResizingType, extend: bool, enlarge: bool) -> Result<Fit, UrlError> {
    let fit = match resizing_type {
        ResizingType::Fit if extend => return Ok(Fit::Pad),
        ResizingType::Fit => Fit::Inside,
        ResizingType::Fill => Fit::CoverClip,
        ResizingType::FillDown => Fit::Cover,
        ResizingType::Force => Fit::Fill,
        ResizingType::Auto => Fit::Auto,
    };
    if extend && !(enlarge && resizing_type != ResizingType::Auto) {
        return Err(UrlError::unsupported_option(
            "extend",
            "`extend` works with resizing type `fit` (with `fill`, `fill-down` and `force` only \
             together with `enlarge`, where it changes nothing)",
        ));
    }
    Ok(fit)
}

/// The options of one URL, with imgproxy's defaults, before mapping.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Options {
    pub resizing_type: ResizingType,
    /// 0: not given (imgproxy's "keep the aspect ratio from the other side").
    pub width: i32,
    pub height: i32,
    pub enlarge: bool,
    pub extend: bool,
    pub extend_gravity: Gravity,
    pub gravity: Gravity,
    /// The point of `fp` gravity; `None` with any other gravity.
    pub focus_point: Option<FocusPoint>,
    pub dpr: f64,
    pub quality: Option<i32>,
    pub format: Option<ImageFormat>,
    pub background: Option<Rgb>,
    pub cachebuster: Option<String>,
    pub expires: Option<i64>,
    pub effort: Option<i32>,
    pub lossless: bool,
    pub frames: Frames,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            resizing_type: ResizingType::Fit,
            width: 0,
            height: 0,
            enlarge: false,
            extend: false,
            extend_gravity: Gravity::Centre,
            gravity: Gravity::Centre,
            focus_point: None,
            dpr: 1.0,
            quality: None,
            format: None,
            background: None,
            cachebuster: None,
            expires: None,
            effort: None,
            lossless: false,
            frames: Frames::All,
        }
    }
}

impl Options {
    /// Applies one option; errors name it as written.
    pub fn apply(&mut self, option: &RawOption<'_>) -> Result<(), UrlError> {
        let (name, args) = (option.name, option.args.as_slice());
        let one = || one_arg(name, args);
        match name {
            "resize" | "rs" => self.resize(name, args)?,
            "size" | "s" => self.size(name, args)?,
            "resizing_type" | "rt" => self.resizing_type = resizing_type(name, one()?)?,
            "width" | "w" => self.width = dimension(name, "width", one()?)?,
            "height" | "h" => self.height = dimension(name, "height", one()?)?,
            "dpr" => self.dpr = dpr(name, one()?)?,
            "enlarge" | "el" => self.enlarge = boolean(name, one()?)?,
            "extend" | "ex" => self.extend(name, args)?,
            "gravity" | "g" => (self.gravity, self.focus_point) = gravity(name, args)?,
            "quality" | "q" => self.quality = quality(name, one()?)?,
            "format" | "f" | "ext" => self.format = Some(format(name, one()?)?),
            "background" | "bg" => self.background = background(name, args)?,
            "cachebuster" | "cb" => {
                self.cachebuster = Some(one()?).filter(|c| !c.is_empty()).map(str::to_owned);
            }
            "expires" | "exp" => self.expires = Some(expires(name, one()?)?),
            "imgpipe_effort" => {
                self.effort = Some(params::effort(one()?).map_err(|m| bad(name, m))?);
            }
            "imgpipe_lossless" => self.lossless = boolean(name, one()?)?,
            "imgpipe_frames" => {
                self.frames = params::frames(one()?).map_err(|m| bad(name, m))?;
            }
            other if NOT_SUPPORTED.iter().any(|names| names.contains(&other)) => {
                return Err(UrlError::unsupported_option(
                    other,
                    format!("imgproxy's option `{other}` is not supported by imgpipe"),
                ));
            }
            other => {
                return Err(UrlError::unsupported_option(
                    other,
                    format!("unknown processing option `{other}`"),
                ));
            }
        }
        Ok(())
    }

    /// The source's extension (`@ext`, `.ext`): the output format, overriding `format`.
    pub fn apply_extension(&mut self, extension: &str) -> Result<(), UrlError> {
        self.format = Some(format("extension", extension)?);
        Ok(())
    }

    /// `resize:%type:%width:%height:%enlarge:%extend…`: empty arguments leave their value as is.
    fn resize(&mut self, name: &str, args: &[&str]) -> Result<(), UrlError> {
        max_args(name, args, 8)?;
        if !args[0].is_empty() {
            self.resizing_type = resizing_type(name, args[0])?;
        }
        if args.len() > 1 {
            self.size(name, &args[1..])?;
        }
        Ok(())
    }

    /// `size:%width:%height:%enlarge:%extend:%gravity…`: empty arguments leave their value as is.
    fn size(&mut self, name: &str, args: &[&str]) -> Result<(), UrlError> {
        max_args(name, args, 7)?;
        let given = |i: usize| args.get(i).copied().filter(|a| !a.is_empty());
        if let Some(width) = given(0) {
            self.width = dimension(name, "width", width)?;
        }
        if let Some(height) = given(1) {
            self.height = dimension(name, "height", height)?;
        }
        if let Some(enlarge) = given(2) {
            self.enlarge = boolean(name, enlarge)?;
        }
        if given(3).is_some() {
            self.extend(name, &args[3..])?;
        }
        Ok(())
    }

    /// `extend:%extend:%gravity:%x_offset:%y_offset`.
    fn extend(&mut self, name: &str, args: &[&str]) -> Result<(), UrlError> {
        max_args(name, args, 4)?;
        self.extend = boolean(name, args[0])?;
        if args.len() > 1 {
            self.extend_gravity = extend_gravity(name, &args[1..])?;
        }
        Ok(())
    }

    /// The contract's parameters: `dpr` applied to the sides, the fit chosen, the rules of the
    /// contract checked. Gravity is the crop gravity, or the extend gravity when the image is
    /// padded.
    pub fn to_params(&self) -> Result<ResizeParams, UrlError> {
        let width = scaled("width", self.width, self.dpr)?;
        let height = scaled("height", self.height, self.dpr)?;
        let fit = match (width, height) {
            (None, None) => Fit::Inside,
            (Some(_), Some(_)) => fit_for(self.resizing_type, self.extend, self.enlarge)?,
            // One side: imgproxy keeps the aspect ratio from it whatever the type, which is our
            // `Inside` on that side; `extend` pads that side alone (`Pad`). `force` keeps the
            // source's length on the missing side, which no fit of ours does.
            _ if self.resizing_type == ResizingType::Force => {
                return Err(UrlError::unsupported_option(
                    "resizing_type",
                    "`force` needs both width and height",
                ));
            }
            _ => match fit_for(self.resizing_type, self.extend, self.enlarge)? {
                Fit::Pad => Fit::Pad,
                _ => Fit::Inside,
            },
        };
        if self.lossless && !params::lossless_allowed(self.format) {
            return Err(bad(
                "imgpipe_lossless",
                "`imgpipe_lossless` needs format webp or png",
            ));
        }
        let (gravity, focus_point) = if fit == Fit::Pad {
            (self.extend_gravity, None)
        } else {
            (self.gravity, self.focus_point)
        };
        Ok(ResizeParams {
            width,
            height,
            fit,
            gravity,
            focus_point,
            format: self.format,
            quality: self.quality,
            enlarge: self.enlarge,
            lossless: self.lossless,
            effort: self.effort,
            frames: self.frames,
            background: self.background,
            // Negotiated from `Accept` by the route, which knows the request's headers.
            auto_format: None,
        })
    }
}

fn bad(option: &str, message: impl Into<String>) -> UrlError {
    UrlError::bad_option(option, message)
}

fn max_args(name: &str, args: &[&str], max: usize) -> Result<(), UrlError> {
    if args.len() > max {
        return Err(bad(
            name,
            format!("`{name}` takes at most {max} arguments, got {}", args.len()),
        ));
    }
    Ok(())
}

fn one_arg<'a>(name: &str, args: &[&'a str]) -> Result<&'a str, UrlError> {
    match args {
        [one] => Ok(one),
        _ => Err(bad(
            name,
            format!("`{name}` takes one argument, got {}", args.len()),
        )),
    }
}

fn resizing_type(name: &str, value: &str) -> Result<ResizingType, UrlError> {
    Ok(match value {
        "fit" => ResizingType::Fit,
        "fill" => ResizingType::Fill,
        "fill-down" => ResizingType::FillDown,
        "force" => ResizingType::Force,
        "auto" => ResizingType::Auto,
        _ => {
            return Err(bad(
                name,
                format!(
                    "the resizing type must be fit, fill, fill-down, force or auto, got `{value}`"
                ),
            ));
        }
    })
}

/// A side: 0 means "not given", as in imgproxy; otherwise the contract's 1 to [`MAX_SIDE`].
fn dimension(name: &str, side: &str, value: &str) -> Result<i32, UrlError> {
    match value.parse::<i32>() {
        Ok(0) => Ok(0),
        _ => params::side(side, value).map_err(|m| bad(name, format!("{m} (or 0 for none)"))),
    }
}

fn dpr(name: &str, value: &str) -> Result<f64, UrlError> {
    match value.parse::<f64>() {
        Ok(d) if d > 0.0 && d <= MAX_DPR => Ok(d),
        _ => Err(bad(
            name,
            format!("`dpr` must be a number above 0 and at most {MAX_DPR}, got `{value}`"),
        )),
    }
}

/// Go's `strconv.ParseBool` spellings (imgproxy's); empty is false, as imgproxy reads it.
/// imgproxy reads any other value as false with a warning; imgpipe refuses it.
fn boolean(name: &str, value: &str) -> Result<bool, UrlError> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "" | "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(bad(
            name,
            format!("`{name}` takes a boolean (1, t, true, 0, f, false), got `{value}`"),
        )),
    }
}

/// `gravity:%type:%x_offset:%y_offset`: the nine positions (without offsets), `sm` (smart: the
/// crop libvips' `attention` chooses; no arguments) or `fp:%x:%y` (a focus point, each a fraction
/// 0–1 of the source), with the point for `fp`.
fn gravity(name: &str, args: &[&str]) -> Result<(Gravity, Option<FocusPoint>), UrlError> {
    match args[0] {
        "sm" if args.len() > 1 => Err(bad(
            name,
            format!(
                "smart gravity `sm` takes no arguments, got {}",
                args.len() - 1
            ),
        )),
        "sm" => Ok((Gravity::Smart, None)),
        "fp" => match args[1..] {
            [x, y] => Ok((
                Gravity::FocusPoint,
                Some(FocusPoint {
                    x: focus_coordinate(name, "x", x)?,
                    y: focus_coordinate(name, "y", y)?,
                }),
            )),
            _ => Err(bad(
                name,
                format!(
                    "focus-point gravity takes `fp:%x:%y`, got {} arguments after `fp`",
                    args.len() - 1
                ),
            )),
        },
        _ => position(name, args).map(|g| (g, None)),
    }
}

/// One coordinate of `fp`: a finite fraction 0–1 (imgproxy's range).
fn focus_coordinate(name: &str, axis: &str, value: &str) -> Result<f64, UrlError> {
    match value.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(bad(
            name,
            format!("the focus point's {axis} must be a number from 0 to 1, got `{value}`"),
        )),
    }
}

/// The gravity of `extend` (`extend:%extend:%gravity…`): the nine positions only. imgproxy
/// refuses `sm` there; it takes `fp`, but imgpipe pads around one of the nine positions only.
fn extend_gravity(name: &str, args: &[&str]) -> Result<Gravity, UrlError> {
    match args[0] {
        "sm" => Err(bad(
            name,
            "smart gravity `sm` crops; `extend` takes one of the nine positions",
        )),
        "fp" => Err(UrlError::unsupported_option(
            name,
            "focus-point gravity `fp` is not supported for `extend`; use one of the nine \
             positions",
        )),
        _ => position(name, args),
    }
}

/// One of the nine positions, then optional offsets, which must be 0.
fn position(name: &str, args: &[&str]) -> Result<Gravity, UrlError> {
    max_args(name, args, 3)?;
    let kind = match args[0] {
        "ce" => Gravity::Centre,
        "no" => Gravity::North,
        "so" => Gravity::South,
        "ea" => Gravity::East,
        "we" => Gravity::West,
        "noea" => Gravity::NorthEast,
        "nowe" => Gravity::NorthWest,
        "soea" => Gravity::SouthEast,
        "sowe" => Gravity::SouthWest,
        other => {
            return Err(bad(
                name,
                format!(
                    "gravity must be ce, no, so, ea, we, noea, nowe, soea, sowe, sm or fp:x:y, \
                     got `{other}`"
                ),
            ));
        }
    };
    for offset in &args[1..] {
        match offset.parse::<f64>() {
            _ if offset.is_empty() => {}
            Ok(0.0) => {}
            Ok(_) => {
                return Err(UrlError::unsupported_option(
                    name,
                    format!("gravity offsets are not supported, got `{offset}`"),
                ));
            }
            Err(_) => {
                return Err(bad(
                    name,
                    format!("a gravity offset must be a number, got `{offset}`"),
                ));
            }
        }
    }
    Ok(kind)
}

/// 0 is imgproxy's "the default quality"; otherwise the contract's 1–100.
fn quality(name: &str, value: &str) -> Result<Option<i32>, UrlError> {
    match value.parse::<i32>() {
        Ok(0) => Ok(None),
        _ => params::quality(value)
            .map(Some)
            .map_err(|m| bad(name, format!("{m} (or 0 for the default)"))),
    }
}

fn format(name: &str, value: &str) -> Result<ImageFormat, UrlError> {
    params::format(value).map_err(|message| {
        if matches!(value, "heic" | "heif") {
            UrlError::unsupported_option(
                name,
                format!(
                    "imgpipe reads HEIC but does not write `{value}` (browsers cannot show it); \
                     formats are jpg (jpeg), png, webp, gif and avif"
                ),
            )
        } else if OTHER_FORMATS.contains(&value) {
            UrlError::unsupported_option(
                name,
                format!(
                    "imgpipe does not write `{value}`; formats are jpg (jpeg), png, webp, gif \
                     and avif"
                ),
            )
        } else {
            bad(name, message)
        }
    })
}

/// `background:%hex` (3 or 6 digits), `background:%r:%g:%b` (0–255 each), or `background:`
/// (none).
fn background(name: &str, args: &[&str]) -> Result<Option<Rgb>, UrlError> {
    let rgb = match args {
        [""] => return Ok(None),
        [hex] => from_hex(hex),
        [r, g, b] => channel(r)
            .zip(channel(g))
            .zip(channel(b))
            .map(|((r, g), b)| Rgb { r, g, b }),
        _ => None,
    };
    rgb.map(Some).ok_or_else(|| {
        bad(
            name,
            format!(
                "the background must be R:G:B (0–255 each) or a hex colour (fff or ffffff), got \
                 `{}`",
                args.join(":")
            ),
        )
    })
}

fn channel(value: &str) -> Option<i32> {
    let all_digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    all_digits
        .then(|| value.parse::<u8>().ok())
        .flatten()
        .map(i32::from)
}

fn from_hex(hex: &str) -> Option<Rgb> {
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let digit = |i: usize, len: usize| i32::from_str_radix(&hex[i..i + len], 16).ok();
    match hex.len() {
        // `fa0` is `ffaa00`.
        3 => Some(Rgb {
            r: digit(0, 1)? * 17,
            g: digit(1, 1)? * 17,
            b: digit(2, 1)? * 17,
        }),
        6 => Some(Rgb {
            r: digit(0, 2)?,
            g: digit(2, 2)?,
            b: digit(4, 2)?,
        }),
        _ => None,
    }
}

fn expires(name: &str, value: &str) -> Result<i64, UrlError> {
    value.parse::<i64>().map_err(|_| {
        bad(
            name,
            format!("`{name}` must be a unix time in seconds, got `{value}`"),
        )
    })
}

/// A side multiplied by `dpr` and rounded (half away from zero, as imgproxy); the product must
/// still be a valid side. `None` for a side not given.
fn scaled(side: &str, value: i32, dpr: f64) -> Result<Option<i32>, UrlError> {
    if value == 0 {
        return Ok(None);
    }
    let product = (f64::from(value) * dpr).round();
    if product > f64::from(MAX_SIDE) {
        return Err(bad(
            "dpr",
            format!(
                "{side} {value} × dpr {dpr} is {product}, over the largest side, {MAX_SIDE}; \
                 ask for a smaller {side} or dpr"
            ),
        ));
    }
    if product < 1.0 {
        return Err(bad(
            "dpr",
            format!("{side} {value} × dpr {dpr} rounds to 0 pixels"),
        ));
    }
    // In 1..=MAX_SIDE, so exact.
    Ok(Some(product as i32))
}

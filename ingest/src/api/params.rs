//! Parsing and validating `POST /v1/resize` query parameters into the contract's
//! [`ResizeParams`]. Everything a client can get wrong about parameters is caught here, before
//! anything is produced, with a message that names the parameter.

use schemas::events::{Fit, FocusPoint, Frames, Gravity, ImageFormat, ResizeParams};

/// Largest width or height a client may ask for.
pub const MAX_SIDE: i32 = 8192;

/// Largest `effort` (0 is the fastest encode, 9 the smallest output).
pub const MAX_EFFORT: i32 = 9;

/// Parses a raw query string (`application/x-www-form-urlencoded`: names and values are
/// percent-decoded, `+` is a space). Unknown parameters are an error: a typo (`widht=`) silently
/// ignored would return an image the client did not ask for; so is a repeated one, whose meaning
/// would depend on which copy won.
pub fn parse(query: Option<&str>) -> Result<ResizeParams, String> {
    let mut params = ResizeParams::default();
    let mut seen = std::collections::HashSet::new();
    let (mut focus_x, mut focus_y) = (None, None);
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let key = key.to_ascii_lowercase();
        if !seen.insert(key.clone()) {
            return Err(format!("`{key}` is given more than once"));
        }
        match key.as_str() {
            "width" => params.width = Some(side("width", &value)?),
            "height" => params.height = Some(side("height", &value)?),
            "fit" => params.fit = fit(&value)?,
            "gravity" => params.gravity = gravity(&value)?,
            "format" => params.format = Some(format(&value)?),
            "quality" => params.quality = Some(quality(&value)?),
            "enlarge" => params.enlarge = boolean("enlarge", &value)?,
            "lossless" => params.lossless = boolean("lossless", &value)?,
            "effort" => params.effort = Some(effort(&value)?),
            "frames" => params.frames = frames(&value)?,
            "focus_x" => focus_x = Some(focus_coordinate("focus_x", &value)?),
            "focus_y" => focus_y = Some(focus_coordinate("focus_y", &value)?),
            other => return Err(format!("unknown parameter `{other}`")),
        }
    }
    params.focus_point = match (params.gravity, focus_x, focus_y) {
        (Gravity::FocusPoint, Some(x), Some(y)) => Some(FocusPoint { x, y }),
        (Gravity::FocusPoint, _, _) => {
            return Err("`gravity=focus_point` needs both `focus_x` and `focus_y`".into());
        }
        (_, None, None) => None,
        _ => return Err("`focus_x` and `focus_y` need `gravity=focus_point`".into()),
    };
    if params.width.is_none() && params.height.is_none() {
        return Err("give `width`, `height` or both".into());
    }
    let needs_both = matches!(params.fit, Fit::Cover | Fit::Contain | Fit::Fill);
    if needs_both && (params.width.is_none() || params.height.is_none()) {
        return Err("`fit=cover`, `contain` and `fill` need both `width` and `height`".into());
    }
    // Checked here only when the format is named; with the input's format kept, the resizer
    // checks again once it has sniffed the input.
    if params.lossless && !lossless_allowed(params.format) {
        return Err("`lossless=true` needs `format=webp` or `png`".into());
    }
    Ok(params)
}

/// Whether lossless output can be asked of `format` (`None`: the input's, checked by the resizer
/// once it has sniffed the input).
pub(crate) fn lossless_allowed(format: Option<ImageFormat>) -> bool {
    !matches!(
        format,
        Some(ImageFormat::Jpeg | ImageFormat::Gif | ImageFormat::Avif)
    )
}

pub(crate) fn side(name: &str, value: &str) -> Result<i32, String> {
    match value.parse::<i32>() {
        Ok(n) if (1..=MAX_SIDE).contains(&n) => Ok(n),
        _ => Err(format!(
            "`{name}` must be a whole number from 1 to {MAX_SIDE}, got `{value}`"
        )),
    }
}

pub(crate) fn quality(value: &str) -> Result<i32, String> {
    match value.parse::<i32>() {
        Ok(n) if (1..=100).contains(&n) => Ok(n),
        _ => Err(format!(
            "`quality` must be a whole number from 1 to 100, got `{value}`"
        )),
    }
}

pub(crate) fn effort(value: &str) -> Result<i32, String> {
    match value.parse::<i32>() {
        Ok(n) if (0..=MAX_EFFORT).contains(&n) => Ok(n),
        _ => Err(format!(
            "`effort` must be a whole number from 0 to {MAX_EFFORT}, got `{value}`"
        )),
    }
}

pub(crate) fn frames(value: &str) -> Result<Frames, String> {
    match value {
        "all" => Ok(Frames::All),
        "first" => Ok(Frames::First),
        _ => Err(format!("`frames` must be all or first, got `{value}`")),
    }
}

fn boolean(name: &str, value: &str) -> Result<bool, String> {
    match value {
        "true" | "1" | "" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(format!("`{name}` must be true or false, got `{value}`")),
    }
}

fn fit(value: &str) -> Result<Fit, String> {
    match value {
        "inside" => Ok(Fit::Inside),
        "cover" => Ok(Fit::Cover),
        "contain" => Ok(Fit::Contain),
        "fill" => Ok(Fit::Fill),
        "cover_clip" => Ok(Fit::CoverClip),
        "auto" => Ok(Fit::Auto),
        "pad" => Ok(Fit::Pad),
        _ => Err(format!(
            "`fit` must be inside, cover, contain, fill, cover_clip, auto or pad, got `{value}`"
        )),
    }
}

fn gravity(value: &str) -> Result<Gravity, String> {
    Ok(match value {
        "centre" | "center" => Gravity::Centre,
        "north" => Gravity::North,
        "south" => Gravity::South,
        "east" => Gravity::East,
        "west" => Gravity::West,
        "northeast" | "north_east" => Gravity::NorthEast,
        "northwest" | "north_west" => Gravity::NorthWest,
        "southeast" | "south_east" => Gravity::SouthEast,
        "southwest" | "south_west" => Gravity::SouthWest,
        "smart" => Gravity::Smart,
        "focus_point" => Gravity::FocusPoint,
        _ => {
            return Err(format!(
                "`gravity` must be centre, north, south, east, west, northeast, northwest, \
                 southeast, southwest, smart or focus_point, got `{value}`"
            ));
        }
    })
}

/// `focus_x` or `focus_y`: a fraction 0–1 of the upright source's width or height.
fn focus_coordinate(name: &str, value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "`{name}` must be a number from 0 to 1, got `{value}`"
        )),
    }
}

pub(crate) fn format(value: &str) -> Result<ImageFormat, String> {
    match value {
        "jpeg" | "jpg" => Ok(ImageFormat::Jpeg),
        "png" => Ok(ImageFormat::Png),
        "webp" => Ok(ImageFormat::Webp),
        "gif" => Ok(ImageFormat::Gif),
        "avif" => Ok(ImageFormat::Avif),
        "heic" | "heif" => Err(format!(
            "`format={value}` is not an output: imgpipe reads HEIC but does not write it \
             (browsers cannot show it); ask for jpeg, png, webp, gif or avif, or name none \
             (HEIC input then becomes jpeg)"
        )),
        _ => Err(format!(
            "`format` must be jpeg, png, webp, gif or avif, got `{value}`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_parameter() {
        let p = parse(Some(
            "width=300&height=200&fit=cover&gravity=southwest&format=webp&quality=70&enlarge=true",
        ))
        .expect("valid");
        assert_eq!(p.width, Some(300));
        assert_eq!(p.height, Some(200));
        assert_eq!(p.fit, Fit::Cover);
        assert_eq!(p.gravity, Gravity::SouthWest);
        assert_eq!(p.format, Some(ImageFormat::Webp));
        assert_eq!(p.quality, Some(70));
        assert!(p.enlarge);
        assert_eq!((p.lossless, p.effort, p.frames), (false, None, Frames::All));
    }

    #[test]
    fn parses_the_format_parameters() {
        let p = parse(Some(
            "width=64&format=webp&lossless=true&effort=0&frames=first",
        ))
        .expect("valid");
        assert_eq!(
            (p.format, p.lossless, p.effort, p.frames),
            (Some(ImageFormat::Webp), true, Some(0), Frames::First)
        );
        let p = parse(Some("width=64&format=avif&effort=9&quality=50")).expect("valid");
        assert_eq!(
            (p.format, p.effort, p.quality),
            (Some(ImageFormat::Avif), Some(9), Some(50))
        );
        let p = parse(Some("width=64&format=gif&frames=all")).expect("valid");
        assert_eq!((p.format, p.frames), (Some(ImageFormat::Gif), Frames::All));
        // Without a format, lossless waits for the resizer to know the input's format.
        assert!(parse(Some("width=64&lossless=1")).expect("valid").lossless);
    }

    #[test]
    fn parses_smart_and_focus_point_gravities() {
        let p = parse(Some("width=300&height=200&fit=cover&gravity=smart")).expect("valid");
        assert_eq!((p.gravity, p.focus_point), (Gravity::Smart, None));
        let p = parse(Some(
            "width=300&height=200&fit=cover&gravity=focus_point&focus_x=0.25&focus_y=1",
        ))
        .expect("valid");
        assert_eq!(
            (p.gravity, p.focus_point),
            (Gravity::FocusPoint, Some(FocusPoint { x: 0.25, y: 1.0 }))
        );
        for (query, needle) in [
            ("width=9&gravity=focus_point&focus_x=0.5", "both"),
            ("width=9&gravity=focus_point", "both"),
            ("width=9&focus_x=0.5&focus_y=0.5", "gravity=focus_point"),
            ("width=9&gravity=smart&focus_y=0.5", "gravity=focus_point"),
            (
                "width=9&gravity=focus_point&focus_x=1.5&focus_y=0",
                "focus_x",
            ),
            (
                "width=9&gravity=focus_point&focus_x=0&focus_y=NaN",
                "focus_y",
            ),
            (
                "width=9&gravity=focus_point&focus_x=-0.1&focus_y=0",
                "focus_x",
            ),
        ] {
            let error = parse(Some(query)).expect_err(query);
            assert!(error.contains(needle), "{query}: {error}");
        }
    }

    #[test]
    fn one_side_is_enough_for_inside() {
        let p = parse(Some("width=512")).expect("valid");
        assert_eq!((p.width, p.height, p.fit), (Some(512), None, Fit::Inside));
    }

    #[test]
    fn parses_the_imgproxy_fit_modes_with_one_side_or_both() {
        for (value, fit) in [
            ("cover_clip", Fit::CoverClip),
            ("auto", Fit::Auto),
            ("pad", Fit::Pad),
        ] {
            let p = parse(Some(&format!("width=300&height=200&fit={value}"))).expect(value);
            assert_eq!((p.width, p.height, p.fit), (Some(300), Some(200), fit));
            let p = parse(Some(&format!("height=200&fit={value}"))).expect(value);
            assert_eq!((p.width, p.height, p.fit), (None, Some(200), fit));
        }
    }

    #[test]
    fn bad_values_name_the_parameter() {
        for (query, needle) in [
            ("", "width"),
            ("width=0", "width"),
            ("width=abc", "width"),
            ("width=9000", "width"),
            ("width=10&quality=0", "quality"),
            ("width=10&fit=squash", "fit"),
            ("width=10&height=10&gravity=up", "gravity"),
            ("width=10&format=bmp", "format"),
            ("width=10&format=heic", "format"),
            ("width=10&effort=10", "effort"),
            ("width=10&effort=-1", "effort"),
            ("width=10&effort=fast", "effort"),
            ("width=10&frames=2", "frames"),
            ("width=10&lossless=yes", "lossless"),
            ("width=10&format=jpeg&lossless=true", "lossless"),
            ("width=10&format=avif&lossless=true", "lossless"),
            ("width=10&enlarge=maybe", "enlarge"),
            ("widht=10", "widht"),
            ("width=10&fit=cover", "both"),
            ("width=10&height=10&fit=fill-down", "fit"),
            ("width=10&width=20", "more than once"),
            ("width=10&WIDTH=20", "more than once"),
        ] {
            let error = parse(Some(query)).expect_err(query);
            assert!(error.contains(needle), "{query}: {error}");
        }
    }

    #[test]
    fn values_are_percent_decoded() {
        let p = parse(Some("width=%35%31%32&fit%3Dx=1")).expect_err("unknown key after decoding");
        assert!(p.contains("fit=x"), "{p}");
        let p = parse(Some("width=%35%31%32&height=512&fit=%63over")).expect("valid");
        assert_eq!(
            (p.width, p.height, p.fit),
            (Some(512), Some(512), Fit::Cover)
        );
    }
}

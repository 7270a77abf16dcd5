//! Parsing and validating `POST /v1/resize` query parameters into the contract's
//! [`ResizeParams`]. Everything a client can get wrong about parameters is caught here, before
//! anything is produced, with a message that names the parameter.

use schemas::events::{Fit, Gravity, ImageFormat, ResizeParams};

/// Largest width or height a client may ask for.
pub const MAX_SIDE: i32 = 8192;

/// Parses a raw query string. Unknown parameters are an error: a typo (`widht=`) silently
/// ignored would return an image the client did not ask for.
pub fn parse(query: Option<&str>) -> Result<ResizeParams, String> {
    let mut params = ResizeParams::default();
    for (key, value) in form_pairs(query.unwrap_or_default()) {
        match key.as_str() {
            "width" => params.width = Some(side("width", &value)?),
            "height" => params.height = Some(side("height", &value)?),
            "fit" => params.fit = fit(&value)?,
            "gravity" => params.gravity = gravity(&value)?,
            "format" => params.format = Some(format(&value)?),
            "quality" => params.quality = Some(quality(&value)?),
            "enlarge" => params.enlarge = boolean("enlarge", &value)?,
            other => return Err(format!("unknown parameter `{other}`")),
        }
    }
    if params.width.is_none() && params.height.is_none() {
        return Err("give `width`, `height` or both".into());
    }
    if params.fit != Fit::Inside && (params.width.is_none() || params.height.is_none()) {
        return Err("`fit=cover`, `contain` and `fill` need both `width` and `height`".into());
    }
    Ok(params)
}

fn form_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key.to_ascii_lowercase(), value.to_owned())
        })
        .collect()
}

fn side(name: &str, value: &str) -> Result<i32, String> {
    match value.parse::<i32>() {
        Ok(n) if (1..=MAX_SIDE).contains(&n) => Ok(n),
        _ => Err(format!(
            "`{name}` must be a whole number from 1 to {MAX_SIDE}, got `{value}`"
        )),
    }
}

fn quality(value: &str) -> Result<i32, String> {
    match value.parse::<i32>() {
        Ok(n) if (1..=100).contains(&n) => Ok(n),
        _ => Err(format!(
            "`quality` must be a whole number from 1 to 100, got `{value}`"
        )),
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
        _ => Err(format!(
            "`fit` must be inside, cover, contain or fill, got `{value}`"
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
        _ => {
            return Err(format!(
                "`gravity` must be centre, north, south, east, west, northeast, northwest, \
                 southeast or southwest, got `{value}`"
            ));
        }
    })
}

fn format(value: &str) -> Result<ImageFormat, String> {
    match value {
        "jpeg" | "jpg" => Ok(ImageFormat::Jpeg),
        "png" => Ok(ImageFormat::Png),
        "webp" => Ok(ImageFormat::Webp),
        _ => Err(format!("`format` must be jpeg, png or webp, got `{value}`")),
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
    }

    #[test]
    fn one_side_is_enough_for_inside() {
        let p = parse(Some("width=512")).expect("valid");
        assert_eq!((p.width, p.height, p.fit), (Some(512), None, Fit::Inside));
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
            ("width=10&enlarge=maybe", "enlarge"),
            ("widht=10", "widht"),
            ("width=10&fit=cover", "both"),
        ] {
            let error = parse(Some(query)).expect_err(query);
            assert!(error.contains(needle), "{query}: {error}");
        }
    }
}

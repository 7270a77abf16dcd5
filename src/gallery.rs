//! `imgpipe gallery`: a static HTML page that shows photos through signed GET URLs, as a web
//! page would use imgpipe: `srcset` with 1× and 2× candidates, `fit` and `fill` with centre,
//! smart (`g:sm`) and focal-point (`g:fp`) gravity, the format negotiated from the browser's
//! `Accept` (no format in the URL) and, for contrast, one explicit `f:jpg`.
//!
//! The demo writes it for a person to look at; the browser test (`tests/stack/gallery_browser.rs`)
//! writes it with the same [`Gallery`] and opens it in headless Chromium, so the test checks
//! exactly what the demo shows. Every `<img>` states what it must turn out as, in `data-`
//! attributes: `data-natural-1x` and `data-natural-2x` (pixel size of each candidate, `WxH`) and
//! `data-format` (`negotiated`: AVIF or WebP for a browser that accepts them; or `jpeg`). The
//! expected sizes follow the kernel's rounding (a side is the nearest whole pixel, at least 1,
//! never enlarged), computed from each photo's size on disk.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Options of `imgpipe gallery`.
#[derive(Debug, Clone, clap::Args)]
pub struct GalleryArgs {
    /// Base URL of the api, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub api_url: String,
    /// A signing key as the identity admin API answers its creation: JSON with `key_id`, and
    /// `key` and `salt` in hex.
    #[arg(long)]
    pub signing_key: PathBuf,
    /// The URL the photos are served under (one of the tenant's `allowed_sources`), e.g.
    /// http://127.0.0.1:8070/.
    #[arg(long)]
    pub source_base: String,
    /// The folder the origin serves, read for the photos' sizes.
    #[arg(long)]
    pub photos: PathBuf,
    /// A photo of that folder to show (repeatable); default: the first three `.jpg` by name.
    #[arg(long = "photo")]
    pub photo: Vec<String>,
    /// Where to write the page.
    #[arg(long)]
    pub out: PathBuf,
}

/// Why no page was written.
#[derive(Debug, thiserror::Error)]
pub enum GalleryError {
    #[error("reading the signing key {path}: {reason}")]
    SigningKey { path: PathBuf, reason: String },
    #[error("listing the photos in {path}: {source}")]
    ListPhotos {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no .jpg photos in {0}")]
    NoPhotos(PathBuf),
    #[error("reading the size of {path}: {source}")]
    PhotoSize {
        path: PathBuf,
        source: image::ImageError,
    },
    #[error(
        "{name} is {width}x{height}: every box's 2x candidate needs a photo of at least \
         {min_width}x{min_height}"
    )]
    PhotoTooSmall {
        name: String,
        width: u32,
        height: u32,
        min_width: u32,
        min_height: u32,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A signing key of a tenant: its id and the raw bytes of its key and salt.
#[derive(Debug, Clone)]
pub struct SigningKey {
    pub key_id: String,
    pub key: Vec<u8>,
    pub salt: Vec<u8>,
}

impl SigningKey {
    /// Reads the identity admin API's answer to `POST /admin/v1/tenants/{id}/signing-keys`.
    pub fn from_admin_answer(json: &str) -> Result<Self, String> {
        let value: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let field = |name: &str| {
            value[name]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("no string field `{name}`"))
        };
        let bytes = |name: &str| {
            field(name).and_then(|hex| hex::decode(hex).map_err(|e| format!("{name}: {e}")))
        };
        Ok(Self {
            key_id: field("key_id")?,
            key: bytes("key")?,
            salt: bytes("salt")?,
        })
    }
}

/// A photo the origin serves, with its size in pixels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Photo {
    /// File name under the origin's base URL.
    pub name: String,
    pub width: u32,
    pub height: u32,
}

impl Photo {
    /// Reads the size of `dir/name` from its header.
    pub fn read(dir: &Path, name: &str) -> Result<Self, GalleryError> {
        let path = dir.join(name);
        let (width, height) = image::image_dimensions(&path)
            .map_err(|source| GalleryError::PhotoSize { path, source })?;
        Ok(Self {
            name: name.to_owned(),
            width,
            height,
        })
    }
}

/// How a variant resizes (imgproxy's `resizing_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resizing {
    /// Inside the box, keeping the ratio.
    Fit,
    /// Covers the box, the overflow cropped by gravity.
    Fill,
}

/// The format a picture must arrive in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedFormat {
    /// No format in the URL: chosen from `Accept` (AVIF or WebP for browsers that accept them).
    Negotiated,
    /// `f:jpg` in the URL.
    Jpeg,
}

impl ExpectedFormat {
    /// The value of the `data-format` attribute.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Negotiated => "negotiated",
            Self::Jpeg => "jpeg",
        }
    }
}

/// One way of showing each photo.
struct Variant {
    /// `data-variant`: short and stable, for the test's messages.
    id: &'static str,
    caption: &'static str,
    resizing: Resizing,
    /// The box at 1× (CSS pixels).
    width: u32,
    height: u32,
    /// Options after `rs:…`, e.g. `/g:sm`.
    extra: &'static str,
    format: ExpectedFormat,
}

const VARIANTS: [Variant; 5] = [
    Variant {
        id: "fit",
        caption: "fit inside 320×240, format from Accept",
        resizing: Resizing::Fit,
        width: 320,
        height: 240,
        extra: "",
        format: ExpectedFormat::Negotiated,
    },
    Variant {
        id: "fill-centre",
        caption: "fill 240×240, centre",
        resizing: Resizing::Fill,
        width: 240,
        height: 240,
        extra: "",
        format: ExpectedFormat::Negotiated,
    },
    Variant {
        id: "fill-smart",
        caption: "fill 240×240, smart crop (g:sm)",
        resizing: Resizing::Fill,
        width: 240,
        height: 240,
        extra: "/g:sm",
        format: ExpectedFormat::Negotiated,
    },
    Variant {
        id: "fill-focal-point",
        caption: "fill 240×240, focal point at 70 %, 55 % (g:fp)",
        resizing: Resizing::Fill,
        width: 240,
        height: 240,
        extra: "/g:fp:0.7:0.55",
        format: ExpectedFormat::Negotiated,
    },
    Variant {
        id: "fit-jpeg",
        caption: "fit inside 320×240, always JPEG (f:jpg)",
        resizing: Resizing::Fit,
        width: 320,
        height: 240,
        extra: "",
        format: ExpectedFormat::Jpeg,
    },
];

/// One `<img>` of the page.
#[derive(Debug, Clone)]
pub struct Picture {
    pub photo: String,
    pub variant: &'static str,
    pub caption: &'static str,
    /// The options of the 1× URL, as shown under the picture.
    pub options: String,
    pub src_1x: String,
    pub src_2x: String,
    /// Pixel size of the 1× candidate, which is also the picture's CSS size.
    pub natural_1x: (u32, u32),
    /// Pixel size of the 2× candidate.
    pub natural_2x: (u32, u32),
    pub format: ExpectedFormat,
}

/// Signed URLs for photos at one origin, answered by one api.
#[derive(Debug, Clone)]
pub struct Gallery {
    /// The api's base URL, without a trailing `/`.
    pub api_url: String,
    pub signing_key: SigningKey,
    /// The URL the photos' names are appended to.
    pub source_base: String,
}

impl Gallery {
    /// Every picture of the page: each photo in every variant.
    pub fn pictures(&self, photos: &[Photo]) -> Result<Vec<Picture>, GalleryError> {
        let (min_width, min_height) = VARIANTS.iter().fold((0, 0), |(w, h), v| {
            (w.max(2 * v.width), h.max(2 * v.height))
        });
        let mut pictures = Vec::new();
        for photo in photos {
            // A smaller photo is never enlarged, so its 2x candidate would not be twice the 1x.
            if photo.width < min_width || photo.height < min_height {
                return Err(GalleryError::PhotoTooSmall {
                    name: photo.name.clone(),
                    width: photo.width,
                    height: photo.height,
                    min_width,
                    min_height,
                });
            }
            for variant in &VARIANTS {
                let resize = match variant.resizing {
                    Resizing::Fit => "fit",
                    Resizing::Fill => "fill",
                };
                let format = match variant.format {
                    ExpectedFormat::Negotiated => "",
                    ExpectedFormat::Jpeg => "/f:jpg",
                };
                let options = format!(
                    "rs:{resize}:{}:{}{}{format}",
                    variant.width, variant.height, variant.extra
                );
                let options_2x = format!(
                    "rs:{resize}:{}:{}{}/dpr:2{format}",
                    variant.width, variant.height, variant.extra
                );
                pictures.push(Picture {
                    photo: photo.name.clone(),
                    variant: variant.id,
                    caption: variant.caption,
                    src_1x: self.url(&options, &photo.name),
                    src_2x: self.url(&options_2x, &photo.name),
                    options,
                    natural_1x: output_size(photo, variant, 1),
                    natural_2x: output_size(photo, variant, 2),
                    format: variant.format,
                });
            }
        }
        Ok(pictures)
    }

    /// The signed URL of `options` applied to the photo `name`, the source in plain form.
    fn url(&self, options: &str, name: &str) -> String {
        let source = format!("{}{}", self.source_base, name);
        let path = format!("/{options}/plain/{}", escape_plain_source(&source));
        let key = &self.signing_key;
        let signature = ingest::api::imgproxy::sign(&key.key, &key.salt, &path);
        format!(
            "{}/v1/img/{}/{signature}{path}",
            self.api_url.trim_end_matches('/'),
            key.key_id
        )
    }
}

/// The source URL as the `plain` form carries it: percent-encoded except for characters that
/// need no escape in a path (imgproxy's builders escape the same way; `?`, `@`, `%` and spaces
/// must not pass as they are).
fn escape_plain_source(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    for byte in source.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/:".contains(&byte) {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// The output size the kernel gives `variant` of `photo` at `dpr`: `fit` scales the photo into
/// the box, `fill` (no `enlarge`) gives the box clipped to the scaled photo; a side is rounded to
/// the nearest pixel, at least 1.
fn output_size(photo: &Photo, variant: &Variant, dpr: u32) -> (u32, u32) {
    let (sw, sh) = (f64::from(photo.width), f64::from(photo.height));
    let (bw, bh) = (
        f64::from(variant.width * dpr),
        f64::from(variant.height * dpr),
    );
    let px = |v: f64| (v.round() as u32).max(1);
    match variant.resizing {
        Resizing::Fit => {
            let scale = (bw / sw).min(bh / sh).min(1.0);
            (px(sw * scale), px(sh * scale))
        }
        Resizing::Fill => {
            let scale = (bw / sw).max(bh / sh).min(1.0);
            (px(bw).min(px(sw * scale)), px(bh).min(px(sh * scale)))
        }
    }
}

/// The page: one section per photo, one figure per picture.
pub fn html(gallery: &Gallery, pictures: &[Picture]) -> String {
    let mut page = String::from(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>imgpipe gallery</title>\n<style>\n\
         body { font: 15px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }\n\
         section { margin-bottom: 2em; }\n\
         .row { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }\n\
         figure { margin: 0; }\n\
         img { display: block; background: #eee; }\n\
         figcaption { max-width: 320px; font-size: 13px; }\n\
         code { font-size: 12px; color: #555; }\n\
         </style>\n</head>\n<body>\n<h1>imgpipe gallery</h1>\n",
    );
    let _ = writeln!(
        page,
        "<p>Every picture is a signed GET URL of the api at <code>{}</code>, with a 1× and a 2× \
         candidate in <code>srcset</code> (the 2× adds <code>dpr:2</code>); the browser picks one \
         for its screen. Without a format in the URL the api picks one from the browser's \
         <code>Accept</code> header (AVIF, else WebP, else the source's). A reload revalidates \
         or comes from the browser's cache.</p>",
        escape(&gallery.api_url)
    );
    let mut current_photo: Option<&str> = None;
    for picture in pictures {
        if current_photo != Some(picture.photo.as_str()) {
            if current_photo.is_some() {
                page.push_str("</div>\n</section>\n");
            }
            let _ = writeln!(
                page,
                "<section>\n<h2>{}</h2>\n<div class=\"row\">",
                escape(&picture.photo)
            );
            current_photo = Some(&picture.photo);
        }
        let (w1, h1) = picture.natural_1x;
        let (w2, h2) = picture.natural_2x;
        let _ = writeln!(
            page,
            "<figure>\n<img src=\"{src1}\" srcset=\"{src1} 1x, {src2} 2x\" width=\"{w1}\" \
             height=\"{h1}\" alt=\"{alt}\" data-photo=\"{photo}\" data-variant=\"{variant}\" \
             data-natural-1x=\"{w1}x{h1}\" data-natural-2x=\"{w2}x{h2}\" \
             data-format=\"{format}\">\n<figcaption>{caption}<br><code>{options}</code>\
             </figcaption>\n</figure>",
            src1 = escape(&picture.src_1x),
            src2 = escape(&picture.src_2x),
            alt = escape(&format!("{}, {}", picture.photo, picture.caption)),
            photo = escape(&picture.photo),
            variant = picture.variant,
            format = picture.format.as_str(),
            caption = escape(picture.caption),
            options = escape(&picture.options),
        );
    }
    if current_photo.is_some() {
        page.push_str("</div>\n</section>\n");
    }
    page.push_str("</body>\n</html>\n");
    page
}

/// Text and attribute values in HTML.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `imgpipe gallery`: writes the page for `args` and returns its pictures.
pub fn write(args: &GalleryArgs) -> Result<Vec<Picture>, GalleryError> {
    let signing_key = std::fs::read_to_string(&args.signing_key)
        .map_err(|e| e.to_string())
        .and_then(|json| SigningKey::from_admin_answer(&json))
        .map_err(|reason| GalleryError::SigningKey {
            path: args.signing_key.clone(),
            reason,
        })?;
    let names = if args.photo.is_empty() {
        first_photos(&args.photos, 3)?
    } else {
        args.photo.clone()
    };
    let photos = names
        .iter()
        .map(|name| Photo::read(&args.photos, name))
        .collect::<Result<Vec<_>, _>>()?;
    let gallery = Gallery {
        api_url: args.api_url.clone(),
        signing_key,
        source_base: args.source_base.clone(),
    };
    let pictures = gallery.pictures(&photos)?;
    std::fs::write(&args.out, html(&gallery, &pictures)).map_err(|source| GalleryError::Write {
        path: args.out.clone(),
        source,
    })?;
    Ok(pictures)
}

/// The first `count` `.jpg` files of `dir` by name.
fn first_photos(dir: &Path, count: usize) -> Result<Vec<String>, GalleryError> {
    let list = |source| GalleryError::ListPhotos {
        path: dir.to_owned(),
        source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(list)? {
        let name = entry
            .map_err(list)?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".jpg") {
            names.push(name);
        }
    }
    if names.is_empty() {
        return Err(GalleryError::NoPhotos(dir.to_owned()));
    }
    names.sort();
    names.truncate(count);
    Ok(names)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn gallery() -> Gallery {
        Gallery {
            api_url: "http://127.0.0.1:8080/".into(),
            signing_key: SigningKey {
                key_id: "sk_1".into(),
                key: b"key".to_vec(),
                salt: b"salt".to_vec(),
            },
            source_base: "http://127.0.0.1:8070/".into(),
        }
    }

    fn photo(width: u32, height: u32) -> Photo {
        Photo {
            name: "Aqua 1600.jpg".into(),
            width,
            height,
        }
    }

    #[test]
    fn every_variant_has_a_signed_1x_and_2x_url_with_its_expected_sizes() {
        let pictures = gallery().pictures(&[photo(1600, 1000)]).unwrap();
        let summary: Vec<_> = pictures
            .iter()
            .map(|p| (p.variant, p.natural_1x, p.natural_2x, p.format))
            .collect();
        use ExpectedFormat::{Jpeg, Negotiated};
        assert_eq!(
            summary,
            [
                ("fit", (320, 200), (640, 400), Negotiated),
                ("fill-centre", (240, 240), (480, 480), Negotiated),
                ("fill-smart", (240, 240), (480, 480), Negotiated),
                ("fill-focal-point", (240, 240), (480, 480), Negotiated),
                ("fit-jpeg", (320, 200), (640, 400), Jpeg),
            ]
        );
        let smart = &pictures[2];
        let prefix = "http://127.0.0.1:8080/v1/img/sk_1/";
        for (url, options) in [
            (&smart.src_1x, "/rs:fill:240:240/g:sm/"),
            (&smart.src_2x, "/rs:fill:240:240/g:sm/dpr:2/"),
        ] {
            let signed = url.strip_prefix(prefix).unwrap();
            let cut = ingest::api::imgproxy::split(signed).unwrap();
            assert!(cut.signed.starts_with(options), "{url}");
            assert!(
                cut.signed
                    .ends_with("/plain/http://127.0.0.1:8070/Aqua%201600.jpg"),
                "{url}"
            );
            assert!(ingest::api::imgproxy::signature_matches(
                b"key",
                b"salt",
                &cut.signed,
                cut.signature
            ));
        }
        assert!(pictures[4].src_1x.contains("/rs:fit:320:240/f:jpg/plain/"));
    }

    #[test]
    fn fit_rounds_as_the_kernel_and_a_photo_too_small_for_2x_is_refused() {
        // 1000x1500 into 320x240: scale 0.16 → 160x240; 2x: 320x480.
        let pictures = gallery().pictures(&[photo(1000, 1500)]).unwrap();
        assert_eq!(
            (pictures[0].natural_1x, pictures[0].natural_2x),
            ((160, 240), (320, 480))
        );
        // 1333x1000: 320/1333 < 240/1000, so 320x240.06 → 320x240.
        let pictures = gallery().pictures(&[photo(1333, 1000)]).unwrap();
        assert_eq!(pictures[0].natural_1x, (320, 240));
        assert!(matches!(
            gallery().pictures(&[photo(600, 1000)]),
            Err(GalleryError::PhotoTooSmall { .. })
        ));
    }

    #[test]
    fn the_page_escapes_what_it_shows_and_states_what_each_picture_must_be() {
        let gallery = gallery();
        let mut photo = photo(1600, 1000);
        photo.name = "a<b>&\".jpg".into();
        let pictures = gallery.pictures(&[photo]).unwrap();
        let page = html(&gallery, &pictures);
        assert!(
            page.contains("<h2>a&lt;b&gt;&amp;&quot;.jpg</h2>"),
            "{page}"
        );
        assert!(!page.contains("a<b>"));
        assert_eq!(page.matches("<img ").count(), 5);
        assert!(page.contains(
            "data-variant=\"fit\" data-natural-1x=\"320x200\" data-natural-2x=\"640x400\" \
             data-format=\"negotiated\""
        ));
        assert!(page.contains("data-format=\"jpeg\""));
    }
}

//! Rust mirrors of the Avro schemas in `schemas/avro/`. Field names match the schemas exactly;
//! timestamps are epoch milliseconds, durations microseconds, as the schemas' field names say.

use serde::{Deserialize, Serialize};

/// An event type bound to its topic and schema.
pub trait Event: Serialize + for<'de> Deserialize<'de> + Send + Sync {
    /// Base name of the topic this event is written to (before the deployment's namespace).
    const TOPIC: &'static str;
    /// The Avro schema, as registered under `<topic>-value`.
    const SCHEMA: &'static str;
}

/// How the image is fitted into the requested box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Fit {
    /// Fit within the box, keep aspect ratio.
    #[default]
    Inside,
    /// Fill the box, keep aspect ratio, crop the overflow by gravity.
    Cover,
    /// Fit within the box, pad to exactly the box.
    Contain,
    /// Stretch to exactly the box.
    Fill,
    /// Like `Cover`, but without `enlarge` an axis on which the source is smaller than the box
    /// is not padded nor enlarged but kept: the output is the box clipped to the source on each
    /// axis, so it need not have the box's aspect ratio (`Cover` shrinks the box to keep it).
    /// With `enlarge`, the same as `Cover`. imgproxy's `fill` resizing type.
    CoverClip,
    /// `CoverClip` when the source (upright, after EXIF orientation) and the box have the same
    /// orientation, a square counting as landscape; `Inside` otherwise. imgproxy's `auto`
    /// resizing type.
    Auto,
    /// Fit within the box, then pad to exactly the box by gravity; without `enlarge` a smaller
    /// source keeps its size and is padded to the whole box (`Contain` shrinks the box to the
    /// source's scale instead). With one side given, only that side is padded. imgproxy's `fit`
    /// resizing type with `extend`.
    Pad,
}

/// Which part of the image `cover` keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Gravity {
    /// Keep the centre.
    #[default]
    Centre,
    /// Keep the top edge.
    North,
    /// Keep the bottom edge.
    South,
    /// Keep the right edge.
    East,
    /// Keep the left edge.
    West,
    /// Keep the top-right corner.
    NorthEast,
    /// Keep the top-left corner.
    NorthWest,
    /// Keep the bottom-right corner.
    SouthEast,
    /// Keep the bottom-left corner.
    SouthWest,
    /// Keep the most interesting region, chosen as libvips' `attention` does (edges, skin,
    /// saturation) on the shrunk image; imgproxy's `sm`. Places as `Centre` for contain and pad.
    Smart,
    /// Keep [`ResizeParams::focus_point`] as near the crop's centre as the image allows;
    /// imgproxy's `fp`. Places as `Centre` for contain and pad.
    FocusPoint,
}

/// Which frames of an animated input (GIF, WebP) are resized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Frames {
    /// Every frame, into an animated GIF or WebP (a still format gets the first frame).
    #[default]
    All,
    /// The first frame only, as a still.
    First,
}

/// Image formats the pipeline knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ImageFormat {
    /// JPEG (JFIF/EXIF).
    Jpeg,
    /// PNG.
    Png,
    /// WebP.
    Webp,
    /// GIF, still or animated.
    Gif,
    /// AVIF, read and written (decoded by libheif with dav1d, encoded by rav1e).
    Avif,
    /// HEIC (HEIF with HEVC images, as phones write it): an input only. Browsers cannot show
    /// it, so it is never an output: the api refuses it as a requested format, and a HEIC input
    /// with no format named becomes JPEG.
    Heic,
}

impl ImageFormat {
    /// The MIME type.
    pub fn mime(self) -> &'static str {
        match self {
            Self::Jpeg => "image/jpeg",
            Self::Png => "image/png",
            Self::Webp => "image/webp",
            Self::Gif => "image/gif",
            Self::Avif => "image/avif",
            Self::Heic => "image/heic",
        }
    }

    /// The format of an encoded image, from its magic bytes (a client's Content-Type is never
    /// trusted); `None` for anything imgpipe does not read. The api refuses such bodies with 415
    /// before producing, and the resizer checks again before decoding.
    pub fn sniff(bytes: &[u8]) -> Option<Self> {
        match bytes {
            // SOI alone: libjpeg reads files with stray bytes between SOI and the first marker.
            [0xFF, 0xD8, ..] => Some(Self::Jpeg),
            [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, ..] => Some(Self::Png),
            [b'G', b'I', b'F', b'8', b'7' | b'9', b'a', ..] => Some(Self::Gif),
            [
                b'R',
                b'I',
                b'F',
                b'F',
                _,
                _,
                _,
                _,
                b'W',
                b'E',
                b'B',
                b'P',
                ..,
            ] => Some(Self::Webp),
            [_, _, _, _, b'f', b't', b'y', b'p', ..] => Self::sniff_heif(bytes),
            _ => None,
        }
    }

    /// AVIF or HEIC from the `ftyp` box of an ISO-BMFF file: its size, `ftyp`, the major brand,
    /// a minor version, then the compatible brands. The major brand decides when it names one of
    /// them; else the compatible brands do, AVIF first. `mif1`/`msf1` alone (a HEIF whose codec
    /// the brands do not name) is read as HEIC: libheif decodes whatever codec its primary image
    /// has, or the decode fails with `undecodable_image`. Brands of other ISO-BMFF files (MP4's
    /// `isom`, `mp41`, …) are no image.
    fn sniff_heif(bytes: &[u8]) -> Option<Self> {
        const AVIF: [&[u8; 4]; 2] = [b"avif", b"avis"];
        const HEIC: [&[u8; 4]; 8] = [
            b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1",
        ];
        let size = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        let ftyp = bytes.get(8..).unwrap_or_default();
        let ftyp = ftyp.get(..size.saturating_sub(8)).unwrap_or(ftyp);
        let is = |brand: &[u8], wanted: &[&[u8; 4]]| wanted.iter().any(|w| brand == w.as_slice());
        let major = ftyp.get(..4)?;
        // The minor version (bytes 4–8) is a number, not a brand.
        let compatible = || ftyp.get(8..).unwrap_or_default().chunks_exact(4);
        if is(major, &AVIF) {
            Some(Self::Avif)
        } else if is(major, &HEIC[..6]) {
            Some(Self::Heic)
        } else if compatible().any(|b| is(b, &AVIF)) {
            Some(Self::Avif)
        } else if is(major, &HEIC) || compatible().any(|b| is(b, &HEIC)) {
            Some(Self::Heic)
        } else {
            None
        }
    }

    /// The name of a well-known image format that imgpipe does *not* read, from its magic bytes
    /// (`"TIFF"`, `"BMP"`, `"JPEG XL"`), so that a 415 can say what it saw; `None` for a format
    /// [`sniff`](Self::sniff) accepts and for bytes that are no known image.
    pub fn sniff_unsupported(bytes: &[u8]) -> Option<&'static str> {
        match bytes {
            [b'I', b'I', 0x2A, 0x00, ..] | [b'M', b'M', 0x00, 0x2A, ..] => Some("TIFF"),
            // "BM", then a 32-bit file size and two reserved 16-bit zeros.
            [b'B', b'M', _, _, _, _, 0, 0, 0, 0, ..] => Some("BMP"),
            [0xFF, 0x0A, ..] | [0, 0, 0, 0x0C, b'J', b'X', b'L', b' ', ..] => Some("JPEG XL"),
            _ => None,
        }
    }

    /// Whether imgpipe can write this format. HEIC is read only.
    pub fn is_output(self) -> bool {
        self != Self::Heic
    }

    /// Lower-case short name, as used in query strings and usage records.
    pub fn name(self) -> &'static str {
        match self {
            Self::Jpeg => "jpeg",
            Self::Png => "png",
            Self::Webp => "webp",
            Self::Gif => "gif",
            Self::Avif => "avif",
            Self::Heic => "heic",
        }
    }
}

/// The kernel's output revision: bump it with every change that alters the bytes the kernel makes
/// of some input (a decoder, a resampler, an encoder or its settings, a crop rule, a dependency
/// update of one of them), so that the api's `ETag`s of earlier answers stop revalidating. No
/// test pins the bytes: the SIMD paths libjpeg-turbo, libwebp, rav1e and the resampler pick at run
/// time may round differently on another CPU, and a digest of them would fail there.
pub const KERNEL_OUTPUT_REVISION: u32 = 1;

/// What the client asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ResizeParams {
    /// Target width in pixels; `None` keeps the aspect ratio from `height`.
    pub width: Option<i32>,
    /// Target height in pixels; `None` keeps the aspect ratio from `width`.
    pub height: Option<i32>,
    /// Fit mode.
    pub fit: Fit,
    /// Crop anchor for `cover` and `cover_clip`, placement anchor for `contain` and `pad`.
    pub gravity: Gravity,
    /// Output format; `None` keeps the input's.
    pub format: Option<ImageFormat>,
    /// Encoder quality 1–100 (JPEG, lossy WebP, AVIF); `None` for the default.
    pub quality: Option<i32>,
    /// Whether the output may be larger than the input.
    pub enlarge: bool,
    /// WebP output: lossless instead of lossy.
    #[serde(default)]
    pub lossless: bool,
    /// Encoder effort 0 (fastest) to 9 (smallest) for WebP and AVIF; `None` for the default.
    #[serde(default)]
    pub effort: Option<i32>,
    /// Animated input: every frame, or a still of the first.
    #[serde(default)]
    pub frames: Frames,
    /// Colour of padding and of transparency: when set, the output is flattened onto it in
    /// every format (opaque, as imgproxy does with `background`); `None` pads transparent where
    /// the format has alpha and flattens onto white for JPEG.
    #[serde(default)]
    pub background: Option<Rgb>,
    /// With [`Gravity::FocusPoint`]: the point to keep, as fractions of the upright source.
    #[serde(default)]
    pub focus_point: Option<FocusPoint>,
    /// The format negotiated from `Accept`, used only when `format` is `None`.
    #[serde(default)]
    pub auto_format: Option<AutoFormat>,
}

/// A point of the upright source, as fractions 0–1 of its width (from the left) and height (from
/// the top).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FocusPoint {
    /// 0 (left edge) – 1 (right edge).
    pub x: f64,
    /// 0 (top edge) – 1 (bottom edge).
    pub y: f64,
}

// Equality is total here: the api accepts only finite values in 0–1, so no NaN is ever built.
impl Eq for FocusPoint {}

/// What the client's `Accept` allows when the request names no format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AutoFormat {
    /// `image/avif` is accepted.
    pub avif: bool,
    /// `image/webp` is accepted.
    pub webp: bool,
    /// AVIF only when the kernel's cost model puts its encode within this many milliseconds of
    /// one core; otherwise the next accepted format.
    pub avif_budget_ms: i32,
}

/// An sRGB colour, each channel 0–255.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rgb {
    /// Red.
    pub r: i32,
    /// Green.
    pub g: i32,
    /// Blue.
    pub b: i32,
}

/// A resize request on `image.requests`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResizeRequested {
    /// Unique id; the record key.
    pub request_id: String,
    /// Tenant that pays.
    pub tenant_id: String,
    /// API key id used.
    pub key_id: String,
    /// When the api received the request.
    pub received_at_ms: i64,
    /// When the api stops waiting.
    pub deadline_at_ms: i64,
    /// What to do.
    pub params: ResizeParams,
    /// Content-Type the client sent, if any.
    pub content_type: Option<String>,
    /// The image bytes; empty when `source_url` is set.
    #[serde(with = "apache_avro::serde::bytes")]
    pub image: Vec<u8>,
    /// Where the reply goes.
    pub reply_topic: String,
    /// Which partition of `reply_topic`.
    pub reply_partition: i32,
    /// The image by reference (a signed GET): the resizer fetches it; `None` when inline.
    #[serde(default)]
    pub source_url: Option<String>,
}

impl Event for ResizeRequested {
    const TOPIC: &'static str = crate::topics::IMAGE_REQUESTS;
    const SCHEMA: &'static str = include_str!("../avro/resize_requested.avsc");
}

/// A successfully resized image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResizedImage {
    /// Encoded format.
    pub format: ImageFormat,
    /// Width in pixels.
    pub width: i32,
    /// Height in pixels.
    pub height: i32,
    /// Encoded bytes.
    #[serde(with = "apache_avro::serde::bytes")]
    pub bytes: Vec<u8>,
}

/// Why a resize failed, as the client will see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResizeError {
    /// HTTP status.
    pub status: i32,
    /// Stable code.
    pub code: String,
    /// Message safe for the client.
    pub message: String,
}

/// How long each stage took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StageTimings {
    /// The resizer received the record (for a source fetched by URL: its last byte arrived) → its
    /// work started on the CPU pool (the in-process queue; time in Kafka is the api's `handoff`).
    pub queue_us: i64,
    /// Decoding.
    pub decode_us: i64,
    /// Resampling.
    pub resize_us: i64,
    /// Encoding.
    pub encode_us: i64,
    /// Downloading the source named by `source_url` (0 for an image sent in the request). Comes
    /// before `queue` in time: the pool's queue starts once the bytes are in.
    #[serde(default)]
    pub fetch_us: i64,
}

impl StageTimings {
    /// Each stage's name and duration in µs, in pipeline order: the names used by metrics and
    /// the api's `Server-Timing` header. `fetch` only when a source was fetched by URL.
    pub fn stages(&self) -> Vec<(&'static str, i64)> {
        let fetch = (self.fetch_us > 0).then_some(("fetch", self.fetch_us));
        fetch
            .into_iter()
            .chain([
                ("queue", self.queue_us),
                ("decode", self.decode_us),
                ("resize", self.resize_us),
                ("encode", self.encode_us),
            ])
            .collect()
    }
}

/// A reply on `image.results`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResizeResult {
    /// The request answered.
    pub request_id: String,
    /// Its tenant.
    pub tenant_id: String,
    /// When the resizer finished.
    pub completed_at_ms: i64,
    /// The image, on success.
    pub image: Option<ResizedImage>,
    /// The error, on failure.
    pub error: Option<ResizeError>,
    /// Stage durations.
    pub timings: StageTimings,
    /// The origin's validator of a source fetched by URL (its `ETag` as sent, else its
    /// `Last-Modified`); `None` without one or for an inline image.
    #[serde(default)]
    pub source_validator: Option<String>,
}

impl Event for ResizeResult {
    const TOPIC: &'static str = crate::topics::IMAGE_RESULTS;
    const SCHEMA: &'static str = include_str!("../avro/resize_result.avsc");
}

/// Outcomes of usage records that are not error codes (those are the answer's `code`).
pub mod outcomes {
    /// The client was handed its image (written by the api only). Billed as a request, as is
    /// `resized` when the api's record is missing; every other outcome counts as `refused`.
    pub const OK: &str = "ok";
    /// A resizer made the image (written by the resizer); whether the client got it is the api's
    /// record to say, and the usage views prefer the api's record.
    pub const RESIZED: &str = "resized";
    /// The client went away before its answer (written by the api; status 499 as in nginx).
    pub const CLIENT_CLOSED: &str = "client_closed_request";
    /// A signed GET revalidated by its client (`If-None-Match`) whose origin said the source had
    /// not changed: answered 304 by the api with no resize (status 304). Billed as a request.
    pub const NOT_MODIFIED: &str = "not_modified";
}

/// Who wrote a usage record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UsageSource {
    /// The api: what the client got (refusals, answers, a client gone); preferred over the
    /// resizer's record of the same request.
    Api,
    /// A resizer, inside the transaction that writes the reply.
    Resizer,
}

/// One request outcome with every billing dimension, on `usage.events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecorded {
    /// Request id (unique per request; exact queries dedupe by it).
    pub request_id: String,
    /// Tenant; the record key.
    pub tenant_id: String,
    /// API key id.
    pub key_id: String,
    /// When the outcome happened.
    pub event_time_ms: i64,
    /// [`outcomes`] or the stable error code.
    pub outcome: String,
    /// HTTP status of the answer.
    pub status: i32,
    /// Request body size.
    pub bytes_in: i64,
    /// Response image size.
    pub bytes_out: i64,
    /// Input pixels (width × height).
    pub pixels_in: i64,
    /// Output pixels.
    pub pixels_out: i64,
    /// CPU time of decode + resize + encode.
    pub cpu_time_us: i64,
    /// Input format name.
    pub input_format: Option<String>,
    /// Output format name.
    pub output_format: Option<String>,
    /// Latency from receipt to outcome.
    pub latency_us: i64,
    /// Writer.
    pub source: UsageSource,
    /// Host of the source URL of a signed GET; `None` for an inline image.
    #[serde(default)]
    pub source_host: Option<String>,
}

impl Event for UsageRecorded {
    const TOPIC: &'static str = crate::topics::USAGE_EVENTS;
    const SCHEMA: &'static str = include_str!("../avro/usage_recorded.avsc");
}

/// The billing dimension of a source URL ([`UsageRecorded::source_host`]): its host as the URL
/// parser normalises it (lowercase, IPv6 in brackets), with the port when it is not the scheme's
/// default. Never the path or query, which may carry a tenant's secrets. `None` for a string
/// that is not an absolute http or https URL with a host.
pub fn source_host(source_url: &str) -> Option<String> {
    let url = url::Url::parse(source_url).ok()?;
    if !matches!(url.scheme(), "http" | "https") {
        return None;
    }
    let host = url.host_str()?;
    Some(match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    })
}

/// Tenant lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TenantStatus {
    /// May call the api.
    Active,
    /// Refused with 403.
    Suspended,
}

/// A tenant's full state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    /// Id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Status.
    pub status: TenantStatus,
    /// Sustained requests per second.
    pub rate_limit_per_second: i32,
    /// Burst size.
    pub burst: i32,
    /// Creation time.
    pub created_at_ms: i64,
    /// URL prefixes (absolute http(s), normalised) the tenant's signed GET URLs may fetch from;
    /// empty: none. Absent in records written before it existed: read as empty.
    #[serde(default)]
    pub allowed_sources: Vec<String>,
}

/// API key and signing key lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum KeyStatus {
    /// Authenticates.
    Active,
    /// Refused with 401.
    Revoked,
}

/// An API key's full state (hash only, never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    /// Public id, embedded in the key string.
    pub key_id: String,
    /// Owner.
    pub tenant_id: String,
    /// Per-key random salt.
    #[serde(with = "apache_avro::serde::bytes")]
    pub salt: Vec<u8>,
    /// SHA-256(salt || secret).
    #[serde(with = "apache_avro::serde::bytes")]
    pub secret_hash: Vec<u8>,
    /// Status.
    pub status: KeyStatus,
    /// Creation time.
    pub created_at_ms: i64,
}

/// A signing key of signed GET URLs: its id, owner and status only. Its `key` and `salt` are
/// derived from the deployment's signing secret and the key id, never stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKey {
    /// Public id, the first segment of every URL signed with it.
    pub key_id: String,
    /// Owner, billed for every GET.
    pub tenant_id: String,
    /// Status.
    pub status: KeyStatus,
    /// Creation time.
    pub created_at_ms: i64,
}

/// The current state of one identity entity on `identity.changes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityChange {
    /// `tenant:<id>`, `key:<id>` or `signing-key:<id>`; the record key.
    pub entity_id: String,
    /// When it changed.
    pub changed_at_ms: i64,
    /// Set for tenants.
    pub tenant: Option<Tenant>,
    /// Set for API keys.
    pub api_key: Option<ApiKey>,
    /// Set for signing keys. Absent in records written before it existed: read as `None`.
    #[serde(default)]
    pub signing_key: Option<SigningKey>,
}

impl Event for IdentityChange {
    const TOPIC: &'static str = crate::topics::IDENTITY_CHANGES;
    const SCHEMA: &'static str = include_str!("../avro/identity_change.avsc");
}

/// One admin API call, on `identity.audit` (key = tenant id, or empty when none is known).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminAudited {
    /// Unique id (UUIDv7).
    pub audit_id: String,
    /// When the call arrived (ms since the epoch).
    pub at_ms: i64,
    /// `admin:<token fingerprint>` or `anonymous`.
    pub actor: String,
    /// Whether the token was the admin token.
    pub authenticated: bool,
    /// Method and route template.
    pub action: String,
    /// The tenant acted on.
    pub tenant_id: Option<String>,
    /// The API key acted on (public id).
    pub key_id: Option<String>,
    /// HTTP status of the answer.
    pub status: i32,
    /// The peer's address.
    pub remote_addr: String,
    /// The call's request id.
    pub request_id: String,
}

impl Event for AdminAudited {
    const TOPIC: &'static str = crate::topics::IDENTITY_AUDIT;
    const SCHEMA: &'static str = include_str!("../avro/admin_audited.avsc");
}

#[cfg(test)]
pub(crate) mod samples {
    //! One populated value per event, shared by the schema round-trip tests.
    use super::*;

    pub fn request() -> ResizeRequested {
        ResizeRequested {
            request_id: "r-1".into(),
            tenant_id: "t-1".into(),
            key_id: "k-1".into(),
            received_at_ms: 1_700_000_000_000,
            deadline_at_ms: 1_700_000_005_000,
            params: ResizeParams {
                width: Some(512),
                height: None,
                fit: Fit::Cover,
                gravity: Gravity::FocusPoint,
                format: Some(ImageFormat::Webp),
                quality: Some(80),
                enlarge: true,
                lossless: true,
                effort: Some(7),
                frames: Frames::First,
                background: None,
                focus_point: Some(FocusPoint { x: 0.25, y: 0.75 }),
                auto_format: Some(AutoFormat {
                    avif: true,
                    webp: false,
                    avif_budget_ms: 250,
                }),
            },
            content_type: Some("image/jpeg".into()),
            image: vec![0xff, 0xd8, 0xff, 0, 1, 2],
            reply_topic: "image.results".into(),
            reply_partition: 3,
            source_url: None,
        }
    }

    pub fn result() -> ResizeResult {
        ResizeResult {
            request_id: "r-1".into(),
            tenant_id: "t-1".into(),
            completed_at_ms: 1_700_000_000_100,
            image: Some(ResizedImage {
                format: ImageFormat::Png,
                width: 10,
                height: 20,
                bytes: vec![1, 2, 3],
            }),
            error: None,
            timings: StageTimings {
                queue_us: 1,
                decode_us: 2,
                resize_us: 3,
                encode_us: 4,
                fetch_us: 5,
            },
            source_validator: Some("\"v1\"".into()),
        }
    }

    pub fn usage() -> UsageRecorded {
        UsageRecorded {
            request_id: "r-1".into(),
            tenant_id: "t-1".into(),
            key_id: "k-1".into(),
            event_time_ms: 1_700_000_000_100,
            outcome: "ok".into(),
            status: 200,
            bytes_in: 1000,
            bytes_out: 100,
            pixels_in: 1_000_000,
            pixels_out: 10_000,
            cpu_time_us: 5000,
            input_format: Some("jpeg".into()),
            output_format: None,
            latency_us: 12_000,
            source: UsageSource::Resizer,
            source_host: None,
        }
    }

    pub fn identity() -> IdentityChange {
        IdentityChange {
            entity_id: "key:k-1".into(),
            changed_at_ms: 1,
            tenant: None,
            api_key: Some(ApiKey {
                key_id: "k-1".into(),
                tenant_id: "t-1".into(),
                salt: vec![9; 16],
                secret_hash: vec![7; 32],
                status: KeyStatus::Revoked,
                created_at_ms: 0,
            }),
            signing_key: None,
        }
    }

    pub fn identity_tenant() -> IdentityChange {
        IdentityChange {
            entity_id: "tenant:t-1".into(),
            changed_at_ms: 1,
            tenant: Some(Tenant {
                id: "t-1".into(),
                name: "acme".into(),
                status: TenantStatus::Suspended,
                rate_limit_per_second: 5,
                burst: 10,
                created_at_ms: 0,
                allowed_sources: vec!["https://images.example.com/".into()],
            }),
            api_key: None,
            signing_key: None,
        }
    }

    pub fn identity_signing_key() -> IdentityChange {
        IdentityChange {
            entity_id: "signing-key:s-1".into(),
            changed_at_ms: 1,
            tenant: None,
            api_key: None,
            signing_key: Some(SigningKey {
                key_id: "s-1".into(),
                tenant_id: "t-1".into(),
                status: KeyStatus::Active,
                created_at_ms: 0,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_host_is_the_host_and_a_non_default_port() {
        for (url, host) in [
            (
                "https://Images.Example.com/a/b.jpg?sig=secret",
                Some("images.example.com"),
            ),
            (
                "https://images.example.com:443/a.jpg",
                Some("images.example.com"),
            ),
            ("http://127.0.0.1:8070/a.jpg", Some("127.0.0.1:8070")),
            ("http://[::1]:80/a.jpg", Some("[::1]")),
            (
                "http://user:pw@cdn.example.com:8080/",
                Some("cdn.example.com:8080"),
            ),
            (
                "http://images.example.com:80/a.jpg",
                Some("images.example.com"),
            ),
            ("http://[2001:db8::1]:9000/a", Some("[2001:db8::1]:9000")),
            ("ftp://example.com/a", None),
            ("not a url", None),
            ("data:image/png;base64,AAAA", None),
        ] {
            assert_eq!(source_host(url).as_deref(), host, "{url}");
        }
    }
    use apache_avro::reader::datum::GenericDatumReader;
    use apache_avro::writer::datum::GenericDatumWriter;
    use apache_avro::{Schema, from_value};

    /// Each Rust type encodes against its .avsc and decodes back unchanged: the types and the
    /// schemas cannot drift apart without this failing.
    fn round_trip<E: Event + PartialEq + std::fmt::Debug>(event: E) {
        let schema = Schema::parse_str(E::SCHEMA).expect("schema parses");
        let writer = GenericDatumWriter::builder(&schema)
            .build()
            .expect("writer");
        let bytes = writer.write_ser_to_vec(&event).expect("encodes");
        let reader = GenericDatumReader::builder(&schema)
            .build()
            .expect("reader");
        let decoded = reader.read_value(&mut bytes.as_slice()).expect("decodes");
        let back: E = from_value(&decoded).expect("from value");
        assert_eq!(back, event);
    }

    /// An ISO-BMFF `ftyp` box with `major` and `compatible` brands, then the start of `meta`.
    fn ftyp(major: &[u8; 4], compatible: &[&[u8; 4]]) -> Vec<u8> {
        let size = 16 + 4 * compatible.len() as u32;
        let mut b = size.to_be_bytes().to_vec();
        b.extend_from_slice(b"ftyp");
        b.extend_from_slice(major);
        b.extend_from_slice(&[0, 0, 0, 0]);
        for brand in compatible {
            b.extend_from_slice(*brand);
        }
        b.extend_from_slice(b"\0\0\0\0meta");
        b
    }

    #[test]
    fn heic_and_avif_are_read_by_their_ftyp_brands() {
        /// Major brand, compatible brands, what is read.
        type Case = (
            &'static [u8; 4],
            &'static [&'static [u8; 4]],
            Option<ImageFormat>,
        );
        let cases: [Case; 10] = [
            // An iPhone photo: major heic, compatible mif1 and heic.
            (b"heic", &[b"mif1", b"heic"], Some(ImageFormat::Heic)),
            (b"heix", &[b"mif1", b"heix"], Some(ImageFormat::Heic)),
            (b"mif1", &[b"heic"], Some(ImageFormat::Heic)),
            // A generic HEIF: libheif decodes whatever codec its primary image has.
            (b"mif1", &[b"mif1", b"miaf"], Some(ImageFormat::Heic)),
            // What libavif and heif-enc write.
            (
                b"avif",
                &[b"mif1", b"miaf", b"MA1B"],
                Some(ImageFormat::Avif),
            ),
            (b"mif1", &[b"avif", b"miaf"], Some(ImageFormat::Avif)),
            (b"avis", &[b"msf1", b"avis"], Some(ImageFormat::Avif)),
            // The major brand decides over compatible ones.
            (b"heic", &[b"avif"], Some(ImageFormat::Heic)),
            // MP4 and QuickTime are no image.
            (b"isom", &[b"mp41", b"isom"], None),
            (b"qt  ", &[b"qt  "], None),
        ];
        for (major, compatible, expected) in cases {
            let bytes = ftyp(major, compatible);
            assert_eq!(
                ImageFormat::sniff(&bytes),
                expected,
                "{}",
                String::from_utf8_lossy(major)
            );
            assert_eq!(ImageFormat::sniff_unsupported(&bytes), None);
        }
        // The minor version is no brand, and a brand past the box's size is not its own.
        let mut minor = ftyp(b"isom", &[b"mp41"]);
        minor[12..16].copy_from_slice(b"heic");
        assert_eq!(ImageFormat::sniff(&minor), None);
        let mut outside = ftyp(b"isom", &[b"mp41"]);
        outside.extend_from_slice(b"avif");
        assert_eq!(ImageFormat::sniff(&outside), None);
        assert_eq!(
            ImageFormat::sniff(b"\0\0\0\x18ftyp"),
            None,
            "cut in the brand"
        );
        assert!(!ImageFormat::Heic.is_output());
        assert!(ImageFormat::Avif.is_output());
    }

    #[test]
    fn unsupported_formats_are_named_by_their_magic_bytes() {
        assert_eq!(
            ImageFormat::sniff_unsupported(b"II*\0\x08\0\0\0"),
            Some("TIFF")
        );
        assert_eq!(
            ImageFormat::sniff_unsupported(b"MM\0*\0\0\0\x08"),
            Some("TIFF")
        );
        assert_eq!(
            ImageFormat::sniff_unsupported(b"BM\x36\0\x0c\0\0\0\0\0\x36\0"),
            Some("BMP")
        );
        assert_eq!(
            ImageFormat::sniff_unsupported(b"\xff\x0a\xfa"),
            Some("JPEG XL")
        );
        assert_eq!(ImageFormat::sniff_unsupported(b"GIF89a.."), None);
        assert_eq!(ImageFormat::sniff_unsupported(b"<svg"), None);
    }

    #[test]
    fn the_heic_symbol_keeps_both_schemas_backward_compatible() {
        for (name, schema) in [
            ("resize_requested", ResizeRequested::SCHEMA),
            ("resize_result", ResizeResult::SCHEMA),
        ] {
            let before = schema.replace(r#""AVIF", "HEIC"]"#, r#""AVIF"]"#);
            assert_ne!(before, schema, "{name} has the HEIC symbol");
            let before = Schema::parse_str(&before).expect("previous schema parses");
            let now = Schema::parse_str(schema).expect("schema parses");
            apache_avro::schema_compatibility::SchemaCompatibility::can_read(&before, &now)
                .unwrap_or_else(|e| panic!("{name}: the new schema reads the old one's: {e}"));
        }
        // Every format round-trips, HEIC included (never written, but the type is total).
        for format in [ImageFormat::Avif, ImageFormat::Heic] {
            let mut request = samples::request();
            request.params.format = Some(format);
            round_trip(request);
        }
    }

    #[test]
    fn every_fit_round_trips_and_the_new_ones_keep_the_schema_backward_compatible() {
        let fits = [
            Fit::Inside,
            Fit::Cover,
            Fit::Contain,
            Fit::Fill,
            Fit::CoverClip,
            Fit::Auto,
            Fit::Pad,
        ];
        for fit in fits {
            let mut request = samples::request();
            request.params.fit = fit;
            round_trip(request);
        }
        // The schema before `COVER_CLIP`, `AUTO` and `PAD`: the new one must read what it wrote.
        let before = ResizeRequested::SCHEMA
            .replace(r#""FILL", "COVER_CLIP", "AUTO", "PAD"]"#, r#""FILL"]"#);
        assert_ne!(before, ResizeRequested::SCHEMA);
        let before = Schema::parse_str(&before).expect("previous schema parses");
        let now = Schema::parse_str(ResizeRequested::SCHEMA).expect("schema parses");
        apache_avro::schema_compatibility::SchemaCompatibility::can_read(&before, &now)
            .expect("the new schema reads events written with the previous one");
    }

    #[test]
    fn the_fetch_stage_keeps_the_reply_schema_backward_compatible() {
        let field = r#",
        {"name": "fetch_us", "type": "long", "default": 0"#;
        let at = ResizeResult::SCHEMA
            .find(field)
            .expect("the field is in the schema");
        let end = at + ResizeResult::SCHEMA[at..].find('}').unwrap() + 1;
        let before = format!(
            "{}{}",
            &ResizeResult::SCHEMA[..at],
            &ResizeResult::SCHEMA[end..]
        );
        let before = Schema::parse_str(&before).expect("previous schema parses");
        let now = Schema::parse_str(ResizeResult::SCHEMA).expect("schema parses");
        apache_avro::schema_compatibility::SchemaCompatibility::can_read(&before, &now)
            .expect("the new schema reads replies written with the previous one");
        // A reply a resizer of the previous version wrote reads with no fetch stage.
        let mut old = samples::result();
        old.timings.fetch_us = 0;
        let apache_avro::types::Value::Record(mut fields) = apache_avro::to_value(&old).unwrap()
        else {
            panic!("a record");
        };
        for (name, value) in &mut fields {
            if let ("timings", apache_avro::types::Value::Record(stages)) = (name.as_str(), value) {
                stages.retain(|(n, _)| n != "fetch_us");
            }
        }
        let bytes = GenericDatumWriter::builder(&before)
            .build()
            .unwrap()
            .write_value_to_vec(apache_avro::types::Value::Record(fields))
            .expect("encodes with the previous schema");
        let read = GenericDatumReader::builder(&before)
            .reader_schema(&now)
            .build()
            .unwrap()
            .read_value(&mut bytes.as_slice())
            .expect("resolves against the new schema");
        let read: ResizeResult = from_value(&read).unwrap();
        assert_eq!(read, old);
        assert_eq!(read.timings.stages().len(), 4, "no fetch stage");
    }

    #[test]
    fn every_event_round_trips_through_its_schema() {
        round_trip(samples::request());
        round_trip(samples::result());
        round_trip(samples::usage());
        round_trip(AdminAudited {
            audit_id: "01a2".into(),
            at_ms: 1,
            actor: "admin:0123456789ab".into(),
            authenticated: true,
            action: "DELETE /admin/v1/keys/{key_id}".into(),
            tenant_id: Some("t-1".into()),
            key_id: None,
            status: 204,
            remote_addr: "127.0.0.1:5000".into(),
            request_id: "r-1".into(),
        });
        round_trip(samples::identity());
        round_trip(samples::identity_tenant());
        round_trip(samples::identity_signing_key());
        let failed = ResizeResult {
            image: None,
            error: Some(ResizeError {
                status: 422,
                code: "undecodable_image".into(),
                message: "x".into(),
            }),
            ..samples::result()
        };
        round_trip(failed);
    }
}

//! Phones' formats through the real pipeline: a HEIC and an AVIF photo at an origin, fetched by
//! a resizer for a signed GET, decoded with libheif and answered as browsers can show them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

use image::ImageFormat;
use reqwest::StatusCode;

use crate::signed_get::{Origin, Pipeline};

/// 64×48: red, green / blue, white quadrants (see the fixtures' README).
const HEIC: &[u8] = include_bytes!("../../processors/src/kernel/fixtures/quadrants.heic");
const AVIF: &[u8] = include_bytes!("../../processors/src/kernel/fixtures/quadrants.avif");

async fn get(url: &str, accept: &str) -> (String, Vec<u8>) {
    let response = reqwest::Client::new()
        .get(url)
        .header("accept", accept)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = response.bytes().await.unwrap().to_vec();
    assert_eq!(
        status,
        StatusCode::OK,
        "{url}: {}",
        String::from_utf8_lossy(&body)
    );
    (content_type, body)
}

/// The top-left quadrant's centre is red and the bottom-right one's white, within `tolerance`.
fn assert_quadrants(image: &image::DynamicImage, tolerance: i32) {
    let rgb = image.to_rgb8();
    let (w, h) = rgb.dimensions();
    let near = |at: (u32, u32), want: [i32; 3]| {
        let got = rgb.get_pixel(at.0, at.1).0;
        assert!(
            got.iter()
                .zip(want)
                .all(|(&g, w)| (i32::from(g) - w).abs() <= tolerance),
            "{at:?}: {got:?}, want {want:?}"
        );
    };
    near((w / 4, h / 4), [220, 30, 30]);
    near((3 * w / 4, 3 * h / 4), [240, 240, 240]);
}

#[tokio::test]
async fn heic_and_avif_sources_are_resized_into_formats_browsers_show() {
    let pipeline = Pipeline::start("phone_formats").await;
    let heic = Origin::start(HEIC.to_vec()).await;
    let avif = Origin::start(AVIF.to_vec()).await;
    // A tenant (and signing key) per origin: allowed sources are URL prefixes.
    let (_, heic_key) = pipeline
        .tenant_with_signing_key(&format!("http://{}/img/", heic.addr))
        .await;
    let (_, avif_key) = pipeline
        .tenant_with_signing_key(&format!("http://{}/img/", avif.addr))
        .await;
    pipeline.wait_for_signing_key(&heic_key).await;
    pipeline.wait_for_signing_key(&avif_key).await;
    let url = |origin: &Origin| {
        let key = if origin.addr == heic.addr {
            &heic_key
        } else {
            &avif_key
        };
        pipeline.signed_url(key, &format!("/rs:fit:32:32/plain/{}", origin.photo_url()))
    };

    // A browser that takes WebP: the HEIC photo comes as WebP, halved, colours kept.
    let (content_type, body) = get(&url(&heic), "image/webp,image/*").await;
    assert_eq!(content_type, "image/webp");
    let image = image::load_from_memory_with_format(&body, ImageFormat::WebP).unwrap();
    assert_eq!((image.width(), image.height()), (32, 24));
    assert_quadrants(&image, 40);
    // A client that names neither: HEIC, which browsers cannot show, becomes JPEG.
    let (content_type, body) = get(&url(&heic), "image/*").await;
    assert_eq!(content_type, "image/jpeg");
    let image = image::load_from_memory_with_format(&body, ImageFormat::Jpeg).unwrap();
    assert_eq!((image.width(), image.height()), (32, 24));
    assert_quadrants(&image, 40);
    // AVIF stays AVIF when nothing else is asked for.
    let (content_type, body) = get(&url(&avif), "image/*").await;
    assert_eq!(content_type, "image/avif");
    assert!(
        body.len() > 100 && &body[4..8] == b"ftyp",
        "an ISO-BMFF file"
    );
    // Named in the URL: PNG, exactly the size.
    let png = pipeline.signed_url(
        &avif_key,
        &format!("/rs:fit:32:32/plain/{}@png", avif.photo_url()),
    );
    let (content_type, body) = get(&png, "image/*").await;
    assert_eq!(content_type, "image/png");
    let image = image::load_from_memory_with_format(&body, ImageFormat::Png).unwrap();
    assert_eq!((image.width(), image.height()), (32, 24));
    assert_quadrants(&image, 40);
    pipeline.hosted.stop().await;
}

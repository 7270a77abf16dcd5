//! Focus points and smart crops of signed GETs over the real stack, on a fixed image: a flat
//! grey field with a detailed, skin-toned patch at its right end. `g:sm` finds the patch, the
//! same crop every time; `g:fp:x:y` keeps the point asked for.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
use reqwest::StatusCode;

use crate::signed_get::{Origin, Pipeline};
use crate::support;

/// 400×200: grey, with a 60×200 checkerboard of skin tone and dark brown (20 px squares) at the
/// right end: edges, skin and saturation, where libvips' attention looks.
fn patched_field() -> Vec<u8> {
    let image = RgbImage::from_fn(400, 200, |x, y| {
        if x < 340 {
            Rgb([128, 128, 128])
        } else if (x / 20 + y / 20) % 2 == 0 {
            Rgb([224, 172, 140])
        } else {
            Rgb([70, 40, 30])
        }
    });
    support::images::encode(&DynamicImage::ImageRgb8(image), ImageFormat::Png)
}

/// The spread of the luma values of an output: 0 for a flat crop, large when the patch is in it.
fn spread(png: &[u8]) -> u8 {
    let image = support::images::decode(png, ImageFormat::Png).to_luma8();
    let (low, high) = image.pixels().fold((u8::MAX, u8::MIN), |(low, high), p| {
        (low.min(p.0[0]), high.max(p.0[0]))
    });
    high - low
}

async fn fetch(url: &str) -> Vec<u8> {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status();
    let body = response.bytes().await.unwrap().to_vec();
    assert_eq!(
        status,
        StatusCode::OK,
        "{url}: {}",
        String::from_utf8_lossy(&body)
    );
    body
}

#[tokio::test]
async fn smart_crops_find_the_detail_and_focus_points_keep_their_point() {
    let pipeline = Pipeline::start("web_crops").await;
    let origin = Origin::start(patched_field()).await;
    let (_, key) = pipeline
        .tenant_with_signing_key(&format!("http://{}/img/", origin.addr))
        .await;
    pipeline.wait_for_signing_key(&key).await;
    let url = |options: &str| {
        pipeline.signed_url(
            &key,
            &format!(
                "/rs:fill:100:100/{options}/plain/{}@png",
                origin.photo_url()
            ),
        )
    };

    // Centre: the middle 200 px of the source, all grey (the patch is 40 px away: no resampling
    // ringing reaches the crop).
    let centre = fetch(&url("g:ce")).await;
    assert!(spread(&centre) < 8, "centre: {}", spread(&centre));
    // Smart: the patch, and the same bytes every time.
    let smart = fetch(&url("g:sm")).await;
    assert!(
        spread(&smart) > 100,
        "sm missed the patch: {}",
        spread(&smart)
    );
    assert_eq!(fetch(&url("g:sm")).await, smart, "sm is deterministic");
    // Focus points: the left edge is grey, the right edge is the patch; exact and repeatable.
    let left = fetch(&url("g:fp:0:0.5")).await;
    assert!(spread(&left) < 8, "fp:0: {}", spread(&left));
    let right = fetch(&url("g:fp:0.95:0.5")).await;
    assert!(spread(&right) > 100, "fp:0.95: {}", spread(&right));
    assert_eq!(fetch(&url("g:fp:0.95:0.5")).await, right);
    let image = support::images::decode(&right, ImageFormat::Png);
    assert_eq!((image.width(), image.height()), (100, 100));
    pipeline.hosted.stop().await;
}

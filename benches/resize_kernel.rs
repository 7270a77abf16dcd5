//! The resize kernel on real photographs: each 1200–2400 px JPEG → fit inside 512×512, JPEG Q80,
//! on one thread (the kernel never spawns; criterion runs on the calling thread).
//!
//! Photos come from `benches/photos.sh` (Debian photographs, cached, never committed); the
//! directory is `IMGPIPE_PHOTOS_DIR`, else `${IMGPIPE_CACHE_DIR:-$HOME/.cache/imgpipe}/photos`.
//! `benches/vs_libvips.sh` runs this and libvips on the same files and prints the ratio.
//!
//! `resize_kernel_colour` measures the colour conversion on its own: the first photo as it is
//! (untagged, so sRGB) against the same bytes tagged Display P3 (as phones write them), which the
//! kernel converts to sRGB.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)] // tests and benches fail by panicking

use std::path::PathBuf;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use processors::icc_fixtures as icc;
use processors::kernel::{Limits, resize};
use schemas::events::{Fit, ImageFormat, ResizeParams};

fn photos_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("IMGPIPE_PHOTOS_DIR") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("IMGPIPE_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/imgpipe")
        });
    cache.join("photos")
}

fn load_photos() -> Vec<(String, Vec<u8>)> {
    let dir = photos_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut photos: Vec<(String, Vec<u8>)> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("jpg")))
        .filter_map(|p| {
            let name = p.file_stem()?.to_string_lossy().into_owned();
            Some((name, std::fs::read(&p).ok()?))
        })
        .collect();
    photos.sort();
    photos
}

fn bench(c: &mut Criterion) {
    let photos = load_photos();
    if photos.is_empty() {
        eprintln!(
            "resize_kernel: no photos in {}; run benches/photos.sh first (or set IMGPIPE_PHOTOS_DIR). Skipping.",
            photos_dir().display()
        );
        return;
    }
    let params = ResizeParams {
        width: Some(512),
        height: Some(512),
        fit: Fit::Inside,
        format: Some(ImageFormat::Jpeg),
        quality: Some(80),
        ..ResizeParams::default()
    };
    let limits = Limits::default();
    // `IMGPIPE_BENCH_OUT=DIR` keeps each output as DIR/<photo>.jpg, so a script can measure
    // their quality (benches/vs_libvips.sh compares them and libvips' against a reference).
    let out_dir = std::env::var_os("IMGPIPE_BENCH_OUT").map(PathBuf::from);
    for (name, bytes) in &photos {
        let resized = resize(bytes, &params, &limits).unwrap_or_else(|e| panic!("{name}: {e}"));
        if let Some(dir) = &out_dir {
            std::fs::write(dir.join(format!("{name}.jpg")), &resized.bytes).unwrap();
        }
    }

    // One iteration = the whole set, so the mean per image is time / photos.len().
    let mut group = c.benchmark_group("resize_kernel");
    group.throughput(Throughput::Elements(photos.len() as u64));
    group.bench_function(format!("all_{}_photos_to_512_q80", photos.len()), |b| {
        b.iter(|| {
            for (_, bytes) in &photos {
                std::hint::black_box(resize(std::hint::black_box(bytes), &params, &limits).ok());
            }
        })
    });
    group.finish();

    // Separate group so that `vs_libvips.sh`, which reads `resize_kernel/`, is unaffected.
    let (name, plain) = &photos[0];
    let p3 = icc::jpeg_with_icc(plain, &icc::display_p3());
    let mut group = c.benchmark_group("resize_kernel_colour");
    for (label, bytes) in [("untagged", plain), ("display_p3", &p3)] {
        group.bench_function(format!("{name}_{label}"), |b| {
            b.iter(|| {
                std::hint::black_box(resize(std::hint::black_box(bytes), &params, &limits).ok())
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("resize_kernel_per_photo");
    for (name, bytes) in &photos {
        group.bench_function(name.as_str(), |b| {
            b.iter(|| {
                std::hint::black_box(resize(std::hint::black_box(bytes), &params, &limits).ok())
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(4));
    targets = bench
}
criterion_main!(benches);

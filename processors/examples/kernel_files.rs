//! Runs the resize kernel on image files, as the benchmarks need it: one thread, the parameters of
//! a query string, each file `--runs` times. Prints one JSON line per file (mean wall time of a
//! kernel call in ms, output bytes, output size) and writes the last output next to `--out`.
//!
//! Usage: `kernel_files [--runs N] [--out DIR] [--max-frames N] [--max-animation-pixels N]
//! QUERY FILE...`, e.g. `kernel_files --runs 5 'width=512&height=512&format=webp&quality=80' a.jpg`;
//! or `kernel_files --make-gif WIDTH HEIGHT FRAMES FILE` to write a test animation (moving
//! colour bands, every frame different, 40 ms each, looping) for the memory measurement.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::time::Instant;

use processors::kernel::{Limits, resize};
use schemas::events::{Fit, FocusPoint, Frames, Gravity, ImageFormat, ResizeParams};

/// The allocator of the `imgpipe` binary, so the kernel is timed as the resizer runs it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("--make-gif") {
        let v: Vec<String> = args.skip(1).collect();
        let [w, h, frames, file] = v.as_slice() else {
            return Err("--make-gif WIDTH HEIGHT FRAMES FILE".into());
        };
        return make_gif(w.parse()?, h.parse()?, frames.parse()?, file);
    }
    let (mut runs, mut out, mut limits) = (1u32, None::<PathBuf>, Limits::default());
    while let Some(flag) = args.next_if(|a| a.starts_with("--")) {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--runs" => runs = value.parse()?,
            "--out" => out = Some(value.into()),
            "--max-frames" => limits.max_frames = value.parse()?,
            "--max-animation-pixels" => limits.max_animation_pixels = value.parse()?,
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    let params = parse(&args.next().ok_or("a query string is required")?)?;
    for file in args {
        let input = std::fs::read(&file)?;
        let mut last = None;
        let started = Instant::now();
        for _ in 0..runs.max(1) {
            last = Some(resize(&input, &params, &limits)?);
        }
        let mean_ms = started.elapsed().as_secs_f64() * 1e3 / f64::from(runs.max(1));
        let Some(r) = last else { continue };
        if let Some(dir) = &out {
            let stem = PathBuf::from(&file);
            let stem = stem
                .file_stem()
                .map(|s| s.to_string_lossy())
                .unwrap_or_default();
            std::fs::write(dir.join(format!("{stem}.{}", r.format.name())), &r.bytes)?;
        }
        println!(
            "{{\"file\":{file:?},\"ms\":{mean_ms:.3},\"bytes\":{},\"width\":{},\"height\":{},\"format\":\"{}\"}}",
            r.bytes.len(),
            r.width,
            r.height,
            r.format.name()
        );
    }
    Ok(())
}

/// A `w`×`h` animated GIF of `frames` frames, with a 16-colour global palette.
fn make_gif(w: u16, h: u16, frames: u32, file: &str) -> Result<(), Box<dyn std::error::Error>> {
    let palette: Vec<u8> = (0..16u8)
        .flat_map(|i| [i * 16, 255 - i * 16, (i * 40) % 255])
        .collect();
    let mut encoder = gif::Encoder::new(std::fs::File::create(file)?, w, h, &palette)?;
    encoder.set_repeat(gif::Repeat::Infinite)?;
    for f in 0..frames {
        let pixels: Vec<u8> = (0..u32::from(h))
            .flat_map(|y| (0..u32::from(w)).map(move |x| (((y + f) / 8 + x / 32) % 16) as u8))
            .collect();
        let mut frame = gif::Frame::from_indexed_pixels(w, h, pixels, None);
        frame.delay = 4;
        encoder.write_frame(&frame)?;
    }
    Ok(())
}

/// The kernel's parameters from a query string (a subset of the api's parser, without its
/// messages: the api is where clients get those).
fn parse(query: &str) -> Result<ResizeParams, Box<dyn std::error::Error>> {
    let mut p = ResizeParams::default();
    for pair in query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, "true"));
        match k {
            "width" => p.width = Some(v.parse()?),
            "height" => p.height = Some(v.parse()?),
            "quality" => p.quality = Some(v.parse()?),
            "effort" => p.effort = Some(v.parse()?),
            "lossless" => p.lossless = v == "true",
            "enlarge" => p.enlarge = v == "true",
            "fit" => {
                p.fit = match v {
                    "cover" => Fit::Cover,
                    "contain" => Fit::Contain,
                    "fill" => Fit::Fill,
                    _ => Fit::Inside,
                }
            }
            // `gravity=smart` against `gravity=centre` (the default) measures smart crop's cost.
            "gravity" => {
                p.gravity = match v {
                    "smart" => Gravity::Smart,
                    "focus_point" => Gravity::FocusPoint,
                    _ => Gravity::Centre,
                }
            }
            "focus_x" | "focus_y" => {
                let mut point = p.focus_point.unwrap_or(FocusPoint { x: 0.5, y: 0.5 });
                if k == "focus_x" {
                    point.x = v.parse()?;
                } else {
                    point.y = v.parse()?;
                }
                p.focus_point = Some(point);
            }
            "frames" => {
                p.frames = if v == "first" {
                    Frames::First
                } else {
                    Frames::All
                }
            }
            "format" => {
                p.format = Some(match v {
                    "jpeg" => ImageFormat::Jpeg,
                    "png" => ImageFormat::Png,
                    "webp" => ImageFormat::Webp,
                    "gif" => ImageFormat::Gif,
                    "avif" => ImageFormat::Avif,
                    other => return Err(format!("unknown format {other}").into()),
                })
            }
            other => return Err(format!("unknown parameter {other}").into()),
        }
    }
    Ok(p)
}

//! The report's SVG charts, drawn with plotters as plain `<text>` (no font files): the time
//! series of a run and the curve of a sweep.

use plotters::prelude::*;

use crate::results::{Percentiles, Second};
use crate::sweep::SweepResults;

pub type ChartResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub(crate) const OK_COLOR: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
pub(crate) const OFFERED_COLOR: RGBColor = RGBColor(0x9a, 0x9a, 0x9a);
pub(crate) const ERROR_COLOR: RGBColor = RGBColor(0xd6, 0x27, 0x28);
pub(crate) const P50_COLOR: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);
pub(crate) const P99_COLOR: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
pub(crate) const GRID_COLOR: RGBColor = RGBColor(0xee, 0xee, 0xee);
const FONT: &str = "sans-serif";
/// Room above the data, as a multiple of its maximum, so the legend (upper left) covers no line.
const HEADROOM: f64 = 1.5;

/// The time series: ok/s and offered req/s with errors/s marked (top panel), p50 and p99 of
/// each second (bottom panel); x is seconds since the run started.
pub fn timeseries_svg(seconds: &[Second]) -> ChartResult<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 620)).into_drawing_area();
        root.fill(&WHITE)?;
        let (top, bottom) = root.split_vertically(310);
        let t_max = seconds.iter().map(|s| s.t_s).fold(1.0, f64::max);
        let rate_max = seconds
            .iter()
            .map(|s| s.offered.max(s.ok).max(s.errors) as f64)
            .fold(1.0, f64::max)
            * HEADROOM;

        let mut chart = ChartBuilder::on(&top)
            .caption("Throughput per second", (FONT, 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..t_max, 0.0..rate_max)?;
        chart
            .configure_mesh()
            .light_line_style(TRANSPARENT)
            .bold_line_style(GRID_COLOR)
            .x_desc("time since start (s)")
            .y_desc("requests/s")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()?;
        chart
            .draw_series(LineSeries::new(
                seconds.iter().map(|s| (s.t_s, s.offered as f64)),
                OFFERED_COLOR.stroke_width(1),
            ))?
            .label("offered req/s")
            .legend(|(x, y)| {
                PathElement::new([(x, y), (x + 18, y)], OFFERED_COLOR.stroke_width(2))
            });
        chart
            .draw_series(LineSeries::new(
                seconds.iter().map(|s| (s.t_s, s.ok as f64)),
                OK_COLOR.stroke_width(2),
            ))?
            .label("ok/s")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], OK_COLOR.stroke_width(2)));
        chart
            .draw_series(
                seconds
                    .iter()
                    .filter(|s| s.errors > 0)
                    .map(|s| Cross::new((s.t_s, s.errors as f64), 4, ERROR_COLOR.stroke_width(2))),
            )?
            .label("errors/s (only seconds with errors)")
            .legend(|(x, y)| Cross::new((x + 9, y), 4, ERROR_COLOR.stroke_width(2)));
        legend(&mut chart)?;

        let latency_max = seconds.iter().filter_map(|s| s.p99_ms).fold(1.0, f64::max) * HEADROOM;
        let mut chart = ChartBuilder::on(&bottom)
            .caption("Latency of the requests ending in each second", (FONT, 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..t_max, 0.0..latency_max)?;
        chart
            .configure_mesh()
            .light_line_style(TRANSPARENT)
            .bold_line_style(GRID_COLOR)
            .x_desc("time since start (s)")
            .y_desc("ms")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&ms_label)
            .draw()?;
        for (name, color, pick) in [
            (
                "p50",
                P50_COLOR,
                (|s: &Second| s.p50_ms) as fn(&Second) -> Option<f64>,
            ),
            ("p99", P99_COLOR, |s: &Second| s.p99_ms),
        ] {
            chart
                .draw_series(LineSeries::new(
                    seconds.iter().filter_map(|s| Some((s.t_s, pick(s)?))),
                    color.stroke_width(2),
                ))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        legend(&mut chart)?;
        root.present()?;
    }
    Ok(svg)
}

/// Axis labels in ms: whole numbers once the scale is past 10 ms.
fn ms_label(value: &f64) -> String {
    if *value >= 10.0 || *value == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
) -> ChartResult<()>
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(0xcc, 0xcc, 0xcc))
        .label_font((FONT, 13))
        .draw()?;
    Ok(())
}

/// The sweep's curve: p50 and p99 (ms, left axis) and achieved ok/s (right axis) against the
/// offered rate, with the p99 limit as a line and the capacity point circled.
pub fn curve_svg(sweep: &SweepResults) -> ChartResult<String> {
    let limit = sweep.settings.p99_limit_ms;
    // x spans the offered rates swept (not from 0: the steps sit close together).
    let offered = sweep.steps.iter().map(|s| s.offered_per_s);
    let offered_min = offered.clone().fold(f64::INFINITY, f64::min);
    let offered_max = offered.fold(0.0, f64::max);
    let (x_min, x_max) = if offered_min.is_finite() && offered_max > 0.0 {
        (offered_min * 0.9, offered_max * 1.08)
    } else {
        (0.0, 1.0)
    };
    let ms_max = sweep
        .steps
        .iter()
        .filter_map(|s| s.summary.latency_ms.map(|l| l.p99))
        .fold(limit, f64::max)
        * HEADROOM;
    let ok_max = sweep
        .steps
        .iter()
        .map(|s| s.summary.ok_per_s)
        .fold(offered_max, f64::max)
        .max(1.0)
        * HEADROOM;
    let latency = |pick: fn(&Percentiles) -> f64| -> Vec<(f64, f64)> {
        sweep
            .steps
            .iter()
            .filter_map(|s| Some((s.offered_per_s, pick(s.summary.latency_ms.as_ref()?))))
            .collect()
    };
    let achieved: Vec<(f64, f64)> = sweep
        .steps
        .iter()
        .map(|s| (s.offered_per_s, s.summary.ok_per_s))
        .collect();

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 460)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Latency and throughput vs offered load", (FONT, 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .right_y_label_area_size(56)
            .build_cartesian_2d(x_min..x_max, 0.0..ms_max)?
            .set_secondary_coord(x_min..x_max, 0.0..ok_max);
        chart
            .configure_mesh()
            .light_line_style(TRANSPARENT)
            .bold_line_style(GRID_COLOR)
            .x_desc("offered (requests/s)")
            .y_desc("latency (ms)")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&ms_label)
            .draw()?;
        chart
            .configure_secondary_axes()
            .y_desc("achieved ok/s")
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()?;

        chart
            .draw_series(LineSeries::new(
                [(x_min, limit), (x_max, limit)],
                ERROR_COLOR.stroke_width(1),
            ))?
            .label(format!("p99 limit ({limit} ms)"))
            .legend(|(x, y)| Rectangle::new([(x, y - 1), (x + 18, y)], ERROR_COLOR.filled()));
        for (name, color, points) in [
            ("p50", P50_COLOR, latency(|l| l.p50)),
            ("p99", P99_COLOR, latency(|l| l.p99)),
        ] {
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    color.stroke_width(2),
                ))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
        chart
            .draw_secondary_series(LineSeries::new(
                achieved.iter().copied(),
                OK_COLOR.stroke_width(2),
            ))?
            .label("achieved ok/s (right axis)")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], OK_COLOR.stroke_width(2)));
        chart.draw_secondary_series(
            achieved
                .iter()
                .map(|&p| Circle::new(p, 3, OK_COLOR.filled())),
        )?;

        if let Some((step, p99)) = sweep
            .capacity()
            .and_then(|step| Some((step, step.summary.latency_ms?.p99)))
        {
            let point = (step.offered_per_s, p99);
            chart
                .draw_series([Circle::new(point, 9, BLACK.stroke_width(2))])?
                .label("capacity point")
                .legend(|(x, y)| Circle::new((x + 9, y), 5, BLACK.stroke_width(2)));
            chart.draw_series([EmptyElement::at(point)
                + Text::new(
                    format!("capacity {:.0} req/s", step.offered_per_s),
                    (12, -24),
                    (FONT, 14),
                )])?;
        }
        legend(&mut chart)?;
        root.present()?;
    }
    Ok(svg)
}

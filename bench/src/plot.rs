//! PNG plots of results (`report --plots DIR`), drawn with plotters into a bitmap:
//!
//! - `latency-spectrum.png`: every run's latency by percentile, the x axis scaled as
//!   `log10(1 / (1 - p))` so that 90 %, 99 %, 99.9 % … are evenly spaced, as HdrHistogram's
//!   plots do: the tail gets as much room as the median;
//! - `timeline.png`: per second of each run, the requests that ended and their p99 latency;
//! - `<label>-steps.png`, for a scenario run: the spectrum of each of its steps.
//!
//! Text is drawn by ab_glyph from a font compiled into the binary, so no system font library
//! (fontconfig, freetype) is needed, and the plots look the same on every machine.

use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::Context as _;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::result::{RunResult, SpectrumPoint, spectrum};

const SIZE: (u32, u32) = (1200, 700);
const FONT: &str = "sans-serif";

/// Distinct colours for up to eight series, then again.
const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is a valid TrueType file compiled in; registering it cannot fail.
        let _ = plotters::style::register_font(
            FONT,
            FontStyle::Normal,
            epaint_default_fonts::UBUNTU_LIGHT,
        );
    });
}

/// The highest percentile plotted: the last point (100 %) would be infinitely far right.
fn x_of(percentile: f64) -> Option<f64> {
    let rest = 1.0 - percentile / 100.0;
    (rest > 0.0).then(|| (1.0 / rest).log10())
}

/// `2` → `99%`, `3` → `99.9%`.
fn percentile_label(x: f64) -> String {
    let percentile = 100.0 * (1.0 - 10f64.powf(-x));
    let decimals = (x.round() as i64 - 2).max(0) as usize;
    format!("{percentile:.decimals$}%")
}

/// A spectrum as points `(x, latency_ms)`, without the 100 % point.
fn spectrum_points(points: &[SpectrumPoint]) -> Vec<(f64, f64)> {
    points
        .iter()
        .filter_map(|point| x_of(point.percentile).map(|x| (x, point.latency_ms)))
        .collect()
}

/// Writes every plot of `runs` into `dir` (created if missing); returns the files written.
pub fn write(runs: &[RunResult], dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    register_font();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();

    let series: Vec<(String, Vec<(f64, f64)>)> = runs
        .iter()
        .map(|run| (run.label.clone(), spectrum_points(&run.spectrum)))
        .collect();
    let path = dir.join("latency-spectrum.png");
    spectrum_chart(&path, "Latency by percentile", &series)?;
    written.push(path);

    let path = dir.join("timeline.png");
    timeline_chart(&path, runs)?;
    written.push(path);

    for run in runs.iter().filter(|run| !run.steps.is_empty()) {
        let mut series = Vec::new();
        for step in &run.steps {
            let histogram = step
                .histogram
                .decode()
                .map_err(|e| anyhow::anyhow!("step {} of {}: {e}", step.name, run.label))?;
            series.push((step.name.clone(), spectrum_points(&spectrum(&histogram))));
        }
        let path = dir.join(format!("{}-steps.png", file_name(&run.label)));
        spectrum_chart(&path, &format!("{}: latency by step", run.label), &series)?;
        written.push(path);
    }
    Ok(written)
}

/// A label as a file name: letters, digits, `-` and `_`.
fn file_name(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;
type LinearChart<'a> = ChartContext<
    'a,
    BitMapBackend<'a>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// A chart over time with its caption, axes and mesh drawn: both timeline panels.
fn linear_chart<'a>(
    area: &Area<'a>,
    caption: &str,
    y_desc: &str,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
) -> anyhow::Result<LinearChart<'a>> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 26))
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(x, y)
        .map_err(drawing)?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc(y_desc)
        .label_style((FONT, 16))
        .axis_desc_style((FONT, 18))
        .draw()
        .map_err(drawing)?;
    Ok(chart)
}

fn drawing<E: std::fmt::Display>(error: E) -> anyhow::Error {
    anyhow::anyhow!("drawing a plot: {error}")
}

fn spectrum_chart(
    path: &Path,
    title: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> anyhow::Result<()> {
    let x_max = series
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.0))
        .fold(2.0_f64, f64::max)
        .ceil();
    let y_max = series
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.1))
        .fold(0.0_f64, f64::max)
        .max(0.001)
        * 1.05;
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(drawing)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 28))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(drawing)?;
    chart
        .configure_mesh()
        .x_labels(x_max as usize + 1)
        .x_label_formatter(&|x| percentile_label(*x))
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .label_style((FONT, 16))
        .axis_desc_style((FONT, 18))
        .draw()
        .map_err(drawing)?;
    for (index, (name, points)) in series.iter().enumerate() {
        let colour = COLOURS[index % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                colour.stroke_width(2),
            ))
            .map_err(drawing)?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT, 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(drawing)?;
    root.present().map_err(drawing)?;
    Ok(())
}

fn timeline_chart(path: &Path, runs: &[RunResult]) -> anyhow::Result<()> {
    let t_max = runs
        .iter()
        .flat_map(|run| run.timeline.iter().map(|p| p.at_s))
        .fold(1.0_f64, f64::max)
        .ceil();
    let rate_max = runs
        .iter()
        .flat_map(|run| run.timeline.iter().map(|p| p.requests as f64))
        .fold(1.0_f64, f64::max)
        * 1.1;
    let p99_max = runs
        .iter()
        .flat_map(|run| run.timeline.iter().filter_map(|p| p.p99_ms))
        .fold(0.001_f64, f64::max)
        * 1.1;
    let root = BitMapBackend::new(path, (SIZE.0, SIZE.1 + 300)).into_drawing_area();
    root.fill(&WHITE).map_err(drawing)?;
    let (top, bottom) = root.split_vertically((SIZE.1 + 300) / 2);

    let mut throughput = linear_chart(
        &top,
        "Requests per second",
        "requests ended",
        0.0..t_max,
        0.0..rate_max,
    )?;
    let mut latency = linear_chart(
        &bottom,
        "p99 latency per second",
        "p99 (ms)",
        0.0..t_max,
        0.0..p99_max,
    )?;

    for (index, run) in runs.iter().enumerate() {
        let colour = COLOURS[index % COLOURS.len()];
        throughput
            .draw_series(LineSeries::new(
                run.timeline.iter().map(|p| (p.at_s, p.requests as f64)),
                colour.stroke_width(2),
            ))
            .map_err(drawing)?
            .label(&run.label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(2))
            });
        latency
            .draw_series(LineSeries::new(
                run.timeline
                    .iter()
                    .filter_map(|p| p.p99_ms.map(|ms| (p.at_s, ms))),
                colour.stroke_width(2),
            ))
            .map_err(drawing)?
            .label(&run.label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(2))
            });
    }
    for chart in [&mut throughput, &mut latency] {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font((FONT, 16))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(drawing)?;
    }
    root.present().map_err(drawing)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_map_to_evenly_spaced_nines() {
        assert_eq!(x_of(0.0), Some(0.0));
        assert!((x_of(90.0).unwrap() - 1.0).abs() < 1e-9);
        assert!((x_of(99.9).unwrap() - 3.0).abs() < 1e-9);
        assert_eq!(x_of(100.0), None);
        assert_eq!(percentile_label(0.0), "0%");
        assert_eq!(percentile_label(1.0), "90%");
        assert_eq!(percentile_label(2.0), "99%");
        assert_eq!(percentile_label(3.0), "99.9%");
        assert_eq!(percentile_label(5.0), "99.999%");
        assert_eq!(file_name("edge vs/nginx"), "edge_vs_nginx");
    }
}

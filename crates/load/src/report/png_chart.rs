//! The report's charts as PNG files, for a README or a page that does not show SVG: the same
//! charts as `svg.rs` (the time axis in seconds, a linear or logarithmic value axis, lines
//! broken where a second has no value, the run's markers as numbered dashed lines explained in
//! the legend), drawn by `plotters` into a buffer and encoded by `png`.
//!
//! Text needs a font: plotters' `ab_glyph` feature draws with a font given as bytes, and the
//! crate carries a subset of DejaVu Sans (`assets/`, 17 KiB), so no system font, fontconfig or
//! file is read at run time ([decision 0017](../../../../docs/decisions/0017-png-charts.md)).

use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use super::svg::{label, linear_ticks, log_ticks, shorten, Chart, PALETTE};

/// The picture's size in pixels.
pub(crate) const WIDTH: u32 = 1200;
pub(crate) const HEIGHT: u32 = 400;
/// The right-hand column: legend and the markers' meanings.
const LEGEND: u32 = 330;
/// The family every text of a chart is drawn with (registered from the embedded font).
const FAMILY: &str = "sekisho-sans";
const FONT: &[u8] = include_bytes!("../../assets/DejaVuSans-subset.ttf");

/// Registers the embedded font once; whether it could be read.
fn font_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| register_font(FAMILY, FontStyle::Normal, FONT).is_ok())
}

fn colour(index: usize) -> RGBColor {
    let hex = PALETTE[index % PALETTE.len()].trim_start_matches('#');
    let channel = |at: usize| u8::from_str_radix(hex.get(at..at + 2).unwrap_or("00"), 16);
    RGBColor(
        channel(0).unwrap_or(0),
        channel(2).unwrap_or(0),
        channel(4).unwrap_or(0),
    )
}

/// The dashes of the line through `points`: pieces drawn and gaps left alternately, each a
/// fixed share of the plot (`span`: the axes' lengths), whatever the line's direction.
fn dashes(points: &[(f64, f64)], span: (f64, f64)) -> Vec<Vec<(f64, f64)>> {
    const ON: f64 = 0.012;
    const OFF: f64 = 0.008;
    let (width, height) = (span.0.max(f64::EPSILON), span.1.max(f64::EPSILON));
    let mut pieces = Vec::new();
    let mut current: Vec<(f64, f64)> = Vec::new();
    let (mut drawing, mut left) = (true, ON);
    for pair in points.windows(2) {
        let ((x0, y0), (x1, y1)) = (pair[0], pair[1]);
        let length = (((x1 - x0) / width).powi(2) + ((y1 - y0) / height).powi(2)).sqrt();
        let at = |share: f64| (x0 + (x1 - x0) * share, y0 + (y1 - y0) * share);
        let mut done = 0.0;
        while length > 0.0 && done < length {
            let step = left.min(length - done);
            if drawing {
                if current.is_empty() {
                    current.push(at(done / length));
                }
                current.push(at((done + step) / length));
            }
            done += step;
            left -= step;
            if left <= 0.0 {
                if drawing {
                    pieces.push(std::mem::take(&mut current));
                }
                drawing = !drawing;
                left = if drawing { ON } else { OFF };
            }
        }
    }
    if current.len() > 1 {
        pieces.push(current);
    }
    pieces
}

/// Why a chart could not be drawn.
fn failed(error: impl std::fmt::Debug) -> std::io::Error {
    std::io::Error::other(format!("cannot draw the chart: {error:?}"))
}

/// The chart as the bytes of a PNG file of [`WIDTH`] × [`HEIGHT`] pixels.
pub(crate) fn line_chart(chart: &Chart<'_>) -> std::io::Result<Vec<u8>> {
    if !font_ready() {
        return Err(failed("the embedded font cannot be read"));
    }
    let mut pixels = vec![0u8; WIDTH as usize * HEIGHT as usize * 3];
    draw(chart, &mut pixels)?;
    let mut file = Vec::new();
    let mut encoder = png::Encoder::new(&mut file, WIDTH, HEIGHT);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(failed)?;
    writer.write_image_data(&pixels).map_err(failed)?;
    writer.finish().map_err(failed)?;
    Ok(file)
}

fn draw(chart: &Chart<'_>, pixels: &mut [u8]) -> std::io::Result<()> {
    let values = || {
        chart
            .series
            .iter()
            .flat_map(|s| s.points.iter().filter_map(|(_, v)| *v))
            .filter(|v| v.is_finite())
    };
    let max = values().fold(0.0f64, f64::max);
    let min_positive = values().filter(|v| *v > 0.0).fold(f64::INFINITY, f64::min);
    // A logarithmic axis is drawn as a linear one over log10 of the values, its labels the
    // decades: the same scale as the SVG's.
    let ticks = if chart.log {
        log_ticks(
            if min_positive.is_finite() {
                min_positive
            } else {
                1.0
            },
            max,
        )
    } else {
        linear_ticks(max)
    };
    let scale = |value: f64| if chart.log { value.log10() } else { value };
    let y_low = scale(ticks.first().copied().unwrap_or(0.0));
    let y_high = scale(ticks.last().copied().unwrap_or(1.0));
    let x_max = if chart.x_max > 0.0 { chart.x_max } else { 1.0 };
    let to_y = |value: f64| {
        let value = if chart.log {
            value.max(10f64.powf(y_low))
        } else {
            value
        };
        scale(value).clamp(y_low, y_high)
    };

    let root = BitMapBackend::with_buffer(pixels, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(failed)?;
    let (plot_area, legend_area) = root.split_horizontally(WIDTH - LEGEND);
    let mut plot = ChartBuilder::on(&plot_area)
        .caption(&chart.title, (FAMILY, 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_max, y_low..y_high)
        .map_err(failed)?;
    let y_label = |value: &f64| {
        if chart.log {
            // Only the decades are labelled.
            if (value - value.round()).abs() < 1e-6 {
                label(10f64.powf(value.round()))
            } else {
                String::new()
            }
        } else {
            label(*value)
        }
    };
    let x_label = |value: &f64| label(*value);
    plot.configure_mesh()
        .x_desc("seconds")
        .y_desc(chart.y_label)
        .x_labels(linear_ticks(x_max).len().max(2))
        .y_labels(ticks.len().max(2))
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 13))
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(229, 229, 229))
        .draw()
        .map_err(failed)?;

    // Markers: a dashed vertical line each, numbered at the top.
    let grey = RGBColor(85, 85, 85);
    for (index, marker) in chart.markers.iter().enumerate() {
        let at = marker.at_s.clamp(0.0, x_max);
        let pieces = dashes(&[(at, y_low), (at, y_high)], (x_max, y_high - y_low));
        plot.draw_series(
            pieces
                .into_iter()
                .map(|piece| PathElement::new(piece, grey)),
        )
        .map_err(failed)?;
        let row = if index % 2 == 0 { 0.97 } else { 0.91 };
        plot.draw_series(std::iter::once(Text::new(
            format!("{}", index + 1),
            (at, y_low + (y_high - y_low) * row),
            (FAMILY, 12).into_font().color(&grey),
        )))
        .map_err(failed)?;
    }

    // Series: one path per stretch of values (a missing value breaks the line).
    for (index, series) in chart.series.iter().enumerate() {
        let style = ShapeStyle::from(colour(index)).stroke_width(2);
        let mut stretches: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
        for (t, value) in &series.points {
            match value {
                Some(value) if value.is_finite() => {
                    if let Some(stretch) = stretches.last_mut() {
                        stretch.push((t.clamp(0.0, x_max), to_y(*value)));
                    }
                }
                _ => stretches.push(Vec::new()),
            }
        }
        for stretch in stretches.into_iter().filter(|s| !s.is_empty()) {
            if series.dashed {
                let pieces = dashes(&stretch, (x_max, y_high - y_low));
                plot.draw_series(
                    pieces
                        .into_iter()
                        .map(|piece| PathElement::new(piece, style)),
                )
                .map_err(failed)?;
            } else if stretch.len() == 1 {
                plot.draw_series(std::iter::once(Circle::new(stretch[0], 2, style.filled())))
                    .map_err(failed)?;
            } else {
                plot.draw_series(std::iter::once(PathElement::new(stretch, style)))
                    .map_err(failed)?;
            }
        }
    }

    // The legend, then the markers' meanings, in the right-hand column.
    let text = (FAMILY, 13).into_font();
    let mut y = 44;
    for (index, series) in chart.series.iter().enumerate() {
        let style = ShapeStyle::from(colour(index)).stroke_width(3);
        legend_area
            .draw(&PathElement::new(vec![(8, y), (30, y)], style))
            .map_err(failed)?;
        legend_area
            .draw(&Text::new(shorten(&series.name), (36, y - 7), text.clone()))
            .map_err(failed)?;
        y += 20;
    }
    y += 8;
    let small = (FAMILY, 12).into_font().color(&RGBColor(51, 51, 51));
    let rows = ((HEIGHT as i32 - 40 - y) / 16).max(0) as usize;
    for (index, marker) in chart.markers.iter().enumerate().take(rows) {
        let line = if index + 1 == rows && chart.markers.len() > rows {
            "…".to_owned()
        } else {
            format!("{} {}", index + 1, marker.label)
        };
        legend_area
            .draw(&Text::new(shorten(&line), (8, y), small.clone()))
            .map_err(failed)?;
        y += 16;
    }
    root.present().map_err(failed)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::svg::Series;
    use super::super::Marker;
    use super::*;

    #[test]
    fn a_chart_is_a_png_of_its_size_with_text_lines_and_markers() {
        let markers = [Marker {
            at_s: 1.0,
            label: "chaos: 100 ms → 5000 ms".to_owned(),
        }];
        let chart = Chart {
            title: "Latency: GET /api/orders".to_owned(),
            y_label: "ms (log)",
            log: true,
            x_max: 3.0,
            series: vec![Series {
                name: "p99".to_owned(),
                points: vec![
                    (0.5, Some(1.0)),
                    (1.5, None),
                    (2.5, Some(5000.0)),
                    (3.0, Some(2.0)),
                ],
                dashed: false,
            }],
            markers: &markers,
        };
        let file = line_chart(&chart).expect("drawn");
        assert_eq!(&file[..8], b"\x89PNG\r\n\x1a\n");
        let decoder = png::Decoder::new(std::io::Cursor::new(file));
        let mut reader = decoder.read_info().expect("a PNG");
        let mut pixels = vec![0; reader.output_buffer_size().expect("a buffer size")];
        let frame = reader.next_frame(&mut pixels).expect("a frame");
        assert_eq!((frame.width, frame.height), (WIDTH, HEIGHT));
        let pixels = &pixels[..frame.buffer_size()];
        let count = |rgb: [u8; 3]| pixels.chunks(3).filter(|p| *p == rgb).count();
        // The series' colour, the markers' grey, and dark text (title, labels, legend).
        assert!(count([0x1f, 0x77, 0xb4]) > 100, "no line drawn");
        assert!(count([85, 85, 85]) > 50, "no marker drawn");
        let dark = pixels
            .chunks(3)
            .filter(|p| p.iter().all(|c| *c < 40))
            .count();
        assert!(dark > 500, "no text drawn ({dark} dark pixels)");
    }

    #[test]
    fn a_dashed_line_is_pieces_and_gaps_of_the_plot_s_scale() {
        let pieces = dashes(&[(0.0, 0.0), (1.0, 0.0)], (1.0, 1.0));
        // 1 / (0.012 + 0.008) = 50 dashes along the whole width.
        assert_eq!(pieces.len(), 50);
        assert!(pieces.iter().all(|piece| piece.len() >= 2));
        let (start, end) = (pieces[1][0].0, pieces[1].last().expect("end").0);
        assert!((start - 0.02).abs() < 1e-9 && (end - 0.032).abs() < 1e-9);
    }

    #[test]
    fn a_character_outside_the_font_is_drawn_as_nothing_not_an_error() {
        let chart = Chart {
            title: "Latency: GET /注文".to_owned(),
            y_label: "ms",
            log: false,
            x_max: 0.0,
            series: Vec::new(),
            markers: &[],
        };
        assert!(line_chart(&chart).is_ok());
    }
}

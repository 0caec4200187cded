//! Line charts as inline SVG, written by hand: no script, no font file (text is left to the
//! viewer's sans-serif), nothing fetched. A chart has a time axis in seconds, a linear or
//! logarithmic value axis, series with gaps (a second without a value breaks the line), and
//! vertical markers for the run's events.

use std::fmt::Write;

use super::Marker;

/// Text made safe for HTML and SVG.
pub(super) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Colours of the series, in order; markers are drawn in grey.
pub(super) const PALETTE: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 300.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 280.0;
/// Legend entries longer than this are shortened, so they stay inside the picture.
const LEGEND_CHARS: usize = 36;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 40.0;

/// One line of a chart.
#[derive(Debug, Clone)]
pub(crate) struct Series {
    pub name: String,
    /// `(seconds, value)`; `None` breaks the line.
    pub points: Vec<(f64, Option<f64>)>,
    /// Drawn dashed (e.g. the asked rate beside the achieved one).
    pub dashed: bool,
}

/// A chart to draw.
#[derive(Debug, Clone)]
pub(crate) struct Chart<'a> {
    pub title: String,
    pub y_label: &'static str,
    /// A logarithmic value axis (latency that spans 1 ms to 5 s).
    pub log: bool,
    pub x_max: f64,
    pub series: Vec<Series>,
    pub markers: &'a [Marker],
}

/// Round numbers for a linear axis from 0 to at least `max`: the ticks.
pub(super) fn linear_ticks(max: f64) -> Vec<f64> {
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let rough = max / 5.0;
    let magnitude = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|step| *step >= rough)
        .unwrap_or(magnitude * 10.0);
    let count = (max / step).ceil() as usize;
    (0..=count.max(1)).map(|i| i as f64 * step).collect()
}

/// Decades covering `min..max` for a logarithmic axis.
pub(super) fn log_ticks(min: f64, max: f64) -> Vec<f64> {
    let low = min.max(0.001).log10().floor() as i32;
    let high = max.max(min * 10.0).max(0.01).log10().ceil() as i32;
    (low..=high.max(low + 1)).map(|p| 10f64.powi(p)).collect()
}

pub(super) fn label(value: f64) -> String {
    if value >= 1000.0 && value % 1000.0 == 0.0 {
        format!("{}k", value / 1000.0)
    } else if value >= 1.0 || value == 0.0 {
        format!("{value}")
    } else {
        format!("{value:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_owned()
    }
}

/// `name`, cut to `LEGEND_CHARS` characters with an ellipsis.
pub(super) fn shorten(name: &str) -> String {
    if name.chars().count() <= LEGEND_CHARS {
        return name.to_owned();
    }
    let mut short: String = name.chars().take(LEGEND_CHARS - 1).collect();
    short.push('…');
    short
}

/// The chart as an `<svg>` element.
pub(crate) fn line_chart(chart: &Chart<'_>) -> String {
    let values = || {
        chart
            .series
            .iter()
            .flat_map(|s| s.points.iter().filter_map(|(_, v)| *v))
            .filter(|v| v.is_finite())
    };
    let max = values().fold(0.0f64, f64::max);
    let min_positive = values().filter(|v| *v > 0.0).fold(f64::INFINITY, f64::min);
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
    let (y_low, y_high) = (
        ticks.first().copied().unwrap_or(0.0),
        ticks.last().copied().unwrap_or(1.0),
    );
    let x_max = if chart.x_max > 0.0 { chart.x_max } else { 1.0 };
    let plot_width = WIDTH - LEFT - RIGHT;
    let plot_height = HEIGHT - TOP - BOTTOM;
    let x = |t: f64| LEFT + (t / x_max).clamp(0.0, 1.0) * plot_width;
    let y = |v: f64| {
        let share = if chart.log {
            let v = v.max(y_low);
            (v.log10() - y_low.log10()) / (y_high.log10() - y_low.log10())
        } else {
            (v - y_low) / (y_high - y_low)
        };
        TOP + plot_height * (1.0 - share.clamp(0.0, 1.0))
    };

    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="11" role="img"><title>{title}</title><rect width="100%" height="100%" fill="#fff"/><text x="{LEFT}" y="15" font-size="13" font-weight="bold">{title}</text>"##,
        title = escape(&chart.title)
    );
    // Value axis: grid lines and labels.
    for tick in &ticks {
        let at = y(*tick);
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{at:.1}" y2="{at:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_width,
            LEFT - 6.0,
            at + 4.0,
            label(*tick)
        );
    }
    let _ = write!(
        svg,
        r##"<text transform="translate(14 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"##,
        TOP + plot_height / 2.0,
        chart.y_label
    );
    // Time axis.
    for tick in linear_ticks(x_max) {
        if tick > x_max {
            break;
        }
        let at = x(tick);
        let _ = write!(
            svg,
            r##"<line x1="{at:.1}" x2="{at:.1}" y1="{:.1}" y2="{:.1}" stroke="#999"/><text x="{at:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP + plot_height,
            TOP + plot_height + 4.0,
            TOP + plot_height + 16.0,
            label(tick)
        );
    }
    let _ = write!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">seconds</text><rect x="{LEFT}" y="{TOP}" width="{plot_width}" height="{plot_height}" fill="none" stroke="#999"/>"##,
        LEFT + plot_width / 2.0,
        HEIGHT - 6.0
    );
    // Markers: a dashed vertical line each, numbered at the top (two rows, so neighbours do
    // not overwrite each other); the numbers are explained under the legend.
    for (index, marker) in chart.markers.iter().enumerate() {
        let at = x(marker.at_s);
        let _ = write!(
            svg,
            r##"<line x1="{at:.1}" x2="{at:.1}" y1="{TOP}" y2="{:.1}" stroke="#555" stroke-dasharray="4 3"/><text x="{at:.1}" y="{:.1}" fill="#333" font-size="10" text-anchor="middle">{}</text>"##,
            TOP + plot_height,
            TOP - 4.0 - (index % 2) as f64 * 10.0,
            index + 1
        );
    }
    // Series: one path each, broken where a value is missing; the legend on the right.
    for (index, series) in chart.series.iter().enumerate() {
        let colour = PALETTE[index % PALETTE.len()];
        let mut path = String::new();
        let mut pen_down = false;
        for (t, value) in &series.points {
            match value {
                Some(value) if value.is_finite() => {
                    let _ = write!(
                        path,
                        "{}{:.1} {:.1} ",
                        if pen_down { "L" } else { "M" },
                        x(*t),
                        y(*value)
                    );
                    pen_down = true;
                }
                _ => pen_down = false,
            }
        }
        let dash = if series.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        if !path.is_empty() {
            let _ = write!(
                svg,
                r#"<path d="{}" fill="none" stroke="{colour}" stroke-width="1.6"{dash}/>"#,
                path.trim_end()
            );
        }
        let legend_y = TOP + 8.0 + index as f64 * 16.0;
        let legend_x = LEFT + plot_width + 12.0;
        let _ = write!(
            svg,
            r#"<line x1="{legend_x:.1}" x2="{:.1}" y1="{legend_y:.1}" y2="{legend_y:.1}" stroke="{colour}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}">{}</text>"#,
            legend_x + 18.0,
            legend_x + 22.0,
            legend_y + 4.0,
            escape(&shorten(&series.name))
        );
    }
    // The markers' meanings, under the series, as many as fit.
    let first_row = TOP + 8.0 + chart.series.len() as f64 * 16.0 + 8.0;
    let rows = ((TOP + plot_height - first_row) / 13.0).max(0.0) as usize;
    for (index, marker) in chart.markers.iter().enumerate().take(rows) {
        let text = if index + 1 == rows && chart.markers.len() > rows {
            "…".to_owned()
        } else {
            format!("{} {}", index + 1, marker.label)
        };
        let _ = write!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" fill="#333" font-size="10">{}</text>"##,
            LEFT + plot_width + 12.0,
            first_row + index as f64 * 13.0,
            escape(&shorten(&text))
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_values() {
        assert_eq!(linear_ticks(9.0), [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(
            linear_ticks(0.0),
            [0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        );
        assert_eq!(
            log_ticks(0.4, 5000.0),
            [0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0]
        );
    }

    #[test]
    fn a_missing_value_breaks_the_line_and_text_is_escaped() {
        let markers = [Marker {
            at_s: 1.0,
            label: "chaos: 100 ms → 5000 ms <x>".to_owned(),
        }];
        let svg = line_chart(&Chart {
            title: "p99 & co".to_owned(),
            y_label: "ms",
            log: true,
            x_max: 3.0,
            series: vec![Series {
                name: "p99".to_owned(),
                points: vec![
                    (0.0, Some(1.0)),
                    (1.0, None),
                    (2.0, Some(5000.0)),
                    (3.0, Some(2.0)),
                ],
                dashed: false,
            }],
            markers: &markers,
        });
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches(" M").count() + svg.matches("\"M").count(), 2);
        assert!(svg.contains("p99 &amp; co"));
        assert!(svg.contains("&lt;x&gt;"));
        assert!(!svg.contains("<script"));
    }
}

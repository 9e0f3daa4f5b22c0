//! The detail page's chart: duration and size of the recent batches over time, drawn as SVG on the server.

use maud::{Markup, PreEscaped};

use crate::control::BatchRecord;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 72.0;
const TOP: f64 = 26.0;
const BOTTOM: f64 = 36.0;
/// Intervals on the value axes: five, so 1, 2 and 5 times a power of ten divide into round ticks.
const GRID_LINES: u8 = 5;

/// A line through `values` (each 0..=max) across the plot area.
fn polyline(values: &[f64], max: f64, colour: &str, step: bool) -> String {
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let n = values.len().max(2) - 1;
    let x = |i: usize| LEFT + plot_w * i as f64 / n as f64;
    let y = |v: f64| TOP + plot_h - plot_h * (v / max).clamp(0.0, 1.0);
    let mut points = Vec::new();
    for (i, value) in values.iter().enumerate() {
        if step && i > 0 {
            points.push(format!("{:.1},{:.1}", x(i), y(values[i - 1])));
        }
        points.push(format!("{:.1},{:.1}", x(i), y(*value)));
    }
    format!(
        r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
        points.join(" ")
    )
}

/// A "nice" upper bound for an axis (1, 2 or 5 times a power of ten).
fn nice_max(max: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let power = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|bound| *bound >= max)
        .unwrap_or(10.0 * power)
}

/// The chart of `batches` (newest first, as the control store returns them); a note when there are none.
pub fn batch_chart(batches: &[BatchRecord]) -> Markup {
    if batches.is_empty() {
        return maud::html! { p.muted { "No batches recorded yet." } };
    }
    let ordered: Vec<&BatchRecord> = batches.iter().rev().collect();
    let durations: Vec<f64> = ordered.iter().map(|b| f64::from(b.duration_ms)).collect();
    let sizes: Vec<f64> = ordered.iter().map(|b| f64::from(b.batch_size)).collect();
    let max_ms = nice_max(durations.iter().copied().fold(0.0, f64::max));
    let max_size = nice_max(sizes.iter().copied().fold(0.0, f64::max));
    let first = ordered
        .first()
        .map(|b| b.started_at.format("%H:%M:%S").to_string());
    let last = ordered
        .last()
        .map(|b| b.started_at.format("%H:%M:%S").to_string());
    let bottom = HEIGHT - BOTTOM;
    let mut grid = String::new();
    for i in 0..=GRID_LINES {
        let y = TOP + (bottom - TOP) * f64::from(i) / f64::from(GRID_LINES);
        let fraction = 1.0 - f64::from(i) / f64::from(GRID_LINES);
        grid.push_str(&format!(
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{x2}" y2="{y:.1}" stroke="#e0e0e0"/><text x="{lx}" y="{ty:.1}" text-anchor="end" fill="#c62828">{ms}</text><text x="{rx}" y="{ty:.1}" fill="#1565c0">{size}</text>"##,
            x2 = WIDTH - RIGHT,
            lx = LEFT - 6.0,
            rx = WIDTH - RIGHT + 6.0,
            ty = y + 4.0,
            ms = format_axis(max_ms * fraction),
            size = format_axis(max_size * fraction),
        ));
    }
    let svg = format!(
        r##"<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="batch duration and batch size of the last {n} batches" font-family="sans-serif" font-size="11">{grid}{durations}{sizes}<text x="{LEFT}" y="{label_y}" fill="#555">{first}</text><text x="{right_x}" y="{label_y}" text-anchor="end" fill="#555">{last}</text><text x="{mid}" y="{label_y}" text-anchor="middle" fill="#555">last {n} batches (UTC start time)</text><text x="{ms_label_x}" y="12" text-anchor="end" fill="#c62828">ms</text><text x="{size_label_x}" y="12" fill="#1565c0">rows/batch</text></svg>"##,
        n = batches.len(),
        durations = polyline(&durations, max_ms, "#c62828", false),
        sizes = polyline(&sizes, max_size, "#1565c0", true),
        label_y = HEIGHT - 12.0,
        right_x = WIDTH - RIGHT,
        mid = (LEFT + WIDTH - RIGHT) / 2.0,
        size_label_x = WIDTH - RIGHT + 6.0,
        ms_label_x = LEFT - 6.0,
        first = first.unwrap_or_default(),
        last = last.unwrap_or_default(),
    );
    maud::html! {
        (PreEscaped(svg))
        p.legend {
            span.swatch style="background:#c62828" {} " batch duration (ms, left axis) "
            span.swatch style="background:#1565c0" {} " batch size (rows, right axis)"
        }
    }
}

fn format_axis(value: f64) -> String {
    if value >= 1_000_000.0 {
        format!("{:.1}M", value / 1_000_000.0)
    } else if value >= 10_000.0 {
        format!("{:.0}k", value / 1000.0)
    } else {
        format!("{value:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_bounds_round_up_to_one_two_or_five() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(130.0), 200.0);
        assert_eq!(nice_max(4200.0), 5000.0);
    }
}

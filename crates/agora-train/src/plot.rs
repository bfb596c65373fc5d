//! Line charts of training curves (loss against step) as self-contained SVG, written by
//! hand so that `agora runs show` needs no plotting dependency.

use std::fmt::Write as _;

/// One curve: `(x, y)` points in drawing order.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 440.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 44.0;
const BOTTOM: f64 = 56.0;
/// Tableau 10: distinguishable colours, cycled beyond ten series.
const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
    "#bab0ac",
];

/// A chart of `series` with axes, ticks, labels and a legend. Points with a NaN or
/// infinite coordinate are left out; a series with no points left still has its legend
/// entry (marked "no data"), and a chart with no points at all says so.
pub fn line_chart_svg(title: &str, x_label: &str, series: &[Series]) -> String {
    let finite: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|one| one.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect())
        .collect();
    let all = finite.iter().flatten();
    let (x_range, y_range) =
        all.fold((Range::EMPTY, Range::EMPTY), |(xs, ys), &(x, y)| (xs.with(x), ys.with(y)));

    let plot_width = WIDTH - LEFT - RIGHT;
    let plot_height = HEIGHT - TOP - BOTTOM;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="16">{}</text>"#,
        LEFT + plot_width / 2.0,
        escape(title)
    );

    let (x_ticks, x_axis) = ticks(x_range);
    let (y_ticks, y_axis) = ticks(y_range);
    let to_x = |x: f64| LEFT + (x - x_axis.low) / x_axis.span() * plot_width;
    let to_y = |y: f64| TOP + plot_height - (y - y_axis.low) / y_axis.span() * plot_height;

    // Grid lines and tick labels, then the axes over them.
    for tick in &x_ticks {
        let x = to_x(*tick);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.2}" y1="{TOP}" x2="{x:.2}" y2="{:.2}" stroke="#e6e6e6"/><text x="{x:.2}" y="{:.2}" text-anchor="middle">{}</text>"##,
            TOP + plot_height,
            TOP + plot_height + 18.0,
            format_tick(*tick, x_axis.step)
        );
    }
    for tick in &y_ticks {
        let y = to_y(*tick);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.2}" x2="{:.2}" y2="{y:.2}" stroke="#e6e6e6"/><text x="{:.2}" y="{:.2}" text-anchor="end">{}</text>"##,
            LEFT + plot_width,
            LEFT - 6.0,
            y + 4.0,
            format_tick(*tick, y_axis.step)
        );
    }
    let _ = writeln!(
        svg,
        r##"<polyline points="{LEFT},{TOP} {LEFT},{bottom} {right},{bottom}" fill="none" stroke="#333"/>"##,
        bottom = TOP + plot_height,
        right = LEFT + plot_width
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.2}" y="{:.2}" text-anchor="middle">{}</text>"#,
        LEFT + plot_width / 2.0,
        HEIGHT - 14.0,
        escape(x_label)
    );
    if x_range.is_empty() {
        let _ = writeln!(
            svg,
            r##"<text x="{:.2}" y="{:.2}" text-anchor="middle" fill="#888">no data</text>"##,
            LEFT + plot_width / 2.0,
            TOP + plot_height / 2.0
        );
    }

    for (index, (one, points)) in series.iter().zip(&finite).enumerate() {
        let colour = PALETTE[index % PALETTE.len()];
        let coordinates: Vec<String> =
            points.iter().map(|&(x, y)| format!("{:.2},{:.2}", to_x(x), to_y(y))).collect();
        match coordinates.as_slice() {
            [] => {}
            [single] => {
                let (x, y) = single.split_once(',').unwrap_or(("0", "0"));
                let _ = writeln!(svg, r#"<circle cx="{x}" cy="{y}" r="3" fill="{colour}"/>"#);
            }
            _ => {
                let _ = writeln!(
                    svg,
                    r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="1.8"><title>{}</title></polyline>"#,
                    coordinates.join(" "),
                    escape(&one.name)
                );
            }
        }
        let legend_y = TOP + 8.0 + 20.0 * index as f64;
        let legend_x = LEFT + plot_width + 16.0;
        let label = if points.is_empty() { format!("{} (no data)", one.name) } else { one.name.clone() };
        let _ = writeln!(
            svg,
            r#"<line x1="{legend_x:.2}" y1="{legend_y:.2}" x2="{:.2}" y2="{legend_y:.2}" stroke="{colour}" stroke-width="3"/><text x="{:.2}" y="{:.2}">{}</text>"#,
            legend_x + 18.0,
            legend_x + 24.0,
            legend_y + 4.0,
            escape(&label)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// The smallest and largest of some numbers.
#[derive(Debug, Clone, Copy)]
struct Range {
    low: f64,
    high: f64,
}

impl Range {
    const EMPTY: Range = Range { low: f64::INFINITY, high: f64::NEG_INFINITY };

    fn with(self, value: f64) -> Range {
        Range { low: self.low.min(value), high: self.high.max(value) }
    }

    fn is_empty(self) -> bool {
        self.low > self.high
    }
}

/// An axis: its shown range and the step between ticks.
#[derive(Debug, Clone, Copy)]
struct Axis {
    low: f64,
    high: f64,
    step: f64,
}

impl Axis {
    fn span(self) -> f64 {
        self.high - self.low
    }
}

/// About five ticks at round values (1, 2 or 5 times a power of ten) covering `range`.
fn ticks(range: Range) -> (Vec<f64>, Axis) {
    let (low, high) = match range {
        range if range.is_empty() => (0.0, 1.0),
        Range { low, high } if low == high => {
            let pad = if low == 0.0 { 1.0 } else { low.abs() * 0.1 };
            (low - pad, high + pad)
        }
        Range { low, high } => (low, high),
    };
    let raw_step = (high - low) / 5.0;
    let magnitude = 10f64.powf(raw_step.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|factor| factor * magnitude)
        .find(|step| *step >= raw_step)
        .unwrap_or(10.0 * magnitude);
    // The tolerance keeps 1.2 / 0.2 = 5.999... from adding a tick below the data.
    let first = (low / step + 1e-9).floor() * step;
    let last = (high / step - 1e-9).ceil() * step;
    let count = ((last - first) / step).round() as usize;
    let ticks = (0..=count).map(|index| first + step * index as f64).collect();
    (ticks, Axis { low: first, high: last, step })
}

/// A tick value with as many decimals as its step needs; scientific for tiny or huge ones.
fn format_tick(value: f64, step: f64) -> String {
    let value = if value.abs() < step * 1e-9 { 0.0 } else { value };
    if value != 0.0 && (step < 1e-3 || value.abs() >= 1e6) {
        return format!("{value:.1e}");
    }
    let decimals = if step >= 1.0 { 0 } else { (-step.log10()).ceil() as usize };
    format!("{value:.decimals$}")
}

fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            other => escaped.push(other),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str, points: &[(f64, f64)]) -> Series {
        Series { name: name.to_owned(), points: points.to_vec() }
    }

    /// Every opened element is closed, in order (a small check of well-formedness).
    fn assert_well_formed(svg: &str) {
        let mut open: Vec<String> = Vec::new();
        let mut rest = svg;
        while let Some(start) = rest.find('<') {
            let end = rest[start..].find('>').map(|end| start + end).expect("unclosed tag");
            let tag = &rest[start + 1..end];
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(open.pop().as_deref(), Some(name), "mismatched </{name}>");
            } else if !tag.ends_with('/') {
                open.push(tag.split_whitespace().next().unwrap().to_owned());
            }
            rest = &rest[end + 1..];
        }
        assert!(open.is_empty(), "unclosed elements: {open:?}");
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    }

    #[test]
    fn every_series_is_drawn_and_named() {
        let svg = line_chart_svg(
            "loss <train & eval>",
            "step",
            &[
                series("train/loss", &[(0.0, 2.5), (10.0, 1.9), (20.0, 1.2)]),
                series("eval/loss", &[(0.0, 2.6), (20.0, 1.5)]),
            ],
        );
        assert_well_formed(&svg);
        assert_eq!(svg.matches("<polyline points=").count(), 3, "two curves and the axes");
        assert!(svg.contains(">train/loss</text>") && svg.contains(">eval/loss</text>"));
        assert!(svg.contains("loss &lt;train &amp; eval&gt;"));
        assert!(svg.contains(">step</text>"));
        assert!(svg.contains(PALETTE[0]) && svg.contains(PALETTE[1]));
        assert!(svg.contains(">20</text>"), "x ticks reach the last step");
    }

    #[test]
    fn non_finite_points_and_empty_series_are_handled() {
        let svg = line_chart_svg(
            "loss",
            "step",
            &[
                series("a", &[(0.0, 1.0), (1.0, f64::NAN), (2.0, f64::INFINITY), (3.0, 0.5)]),
                series("b", &[]),
                series("c", &[(1.0, 0.75)]),
            ],
        );
        assert_well_formed(&svg);
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        assert!(svg.contains(">b (no data)</text>"));
        assert_eq!(svg.matches("<circle").count(), 1, "a single point is a dot");
        let curve = svg.lines().find(|line| line.contains("<title>a</title>")).unwrap();
        assert_eq!(curve.matches(',').count(), 2, "two finite points of a");
    }

    #[test]
    fn a_chart_without_points_says_so() {
        for series_list in [vec![], vec![series("x", &[(f64::NAN, 1.0)])]] {
            let svg = line_chart_svg("empty", "step", &series_list);
            assert_well_formed(&svg);
            assert!(svg.contains(">no data</text>"));
        }
    }

    fn ticks_of(low: f64, high: f64) -> (Vec<f64>, Axis) {
        ticks(Range { low, high })
    }

    #[test]
    fn ticks_are_round_and_cover_the_data() {
        let (ticks, axis) = ticks(Range { low: 0.13, high: 2.71 });
        assert_eq!(axis.step, 1.0);
        assert_eq!(ticks, [0.0, 1.0, 2.0, 3.0]);
        let (ticks, axis) = ticks_of(1.2, 1.9);
        assert_eq!(axis.step, 0.2);
        assert_eq!(ticks.len(), 5);
        assert!((axis.low - 1.2).abs() < 1e-12 && (axis.high - 2.0).abs() < 1e-12, "{axis:?}");
        assert_eq!(format_tick(axis.low, axis.step), "1.2");
        let (ticks, _) = ticks_of(4.0, 4.0);
        assert!(ticks.first().unwrap() <= &3.6 && ticks.last().unwrap() >= &4.4, "a flat line gets room");
        assert_eq!(format_tick(1.5, 0.5), "1.5");
        assert_eq!(format_tick(2e-5, 1e-5), "2.0e-5");
        assert_eq!(format_tick(300.0, 100.0), "300");
    }
}

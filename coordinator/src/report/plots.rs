//! The report's figures as inline SVG, drawn with plotters' SVG backend: histograms of
//! probabilities, horizontal bars of named counts or means, and a line over time. Text is SVG
//! `<text>` (no fonts are embedded) and the SVG namespace attribute is dropped, which inline SVG
//! in HTML does not need, so the page names no URL at all.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

const WIDTH: u32 = 560;
const HEIGHT: u32 = 260;
const BAR: RGBColor = RGBColor(0x3b, 0x6e, 0xa8);
const ACCENT: RGBColor = RGBColor(0xc0, 0x5a, 0x2b);

/// Draws with `draw` onto a fresh SVG of `height` pixels and returns the SVG text.
fn svg(
    height: u32,
    draw: impl FnOnce(DrawingArea<SVGBackend<'_>, plotters::coord::Shift>) -> DrawResult,
) -> String {
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, (WIDTH, height)).into_drawing_area();
        // A drawing error on an in-memory string means a bug in the figure, not bad data.
        draw(root).expect("a figure draws onto an in-memory SVG");
    }
    text.replace(r#" xmlns="http://www.w3.org/2000/svg""#, "")
}

type DrawResult = Result<(), DrawingAreaErrorKind<std::io::Error>>;

/// A histogram of values in `[0, 1]` in `bins` equal bins, `x_label` naming the value; colour
/// `accent` tells a second series apart.
pub fn histogram(values: &[f64], bins: usize, x_label: &str, accent: bool) -> String {
    let mut counts = vec![0u64; bins];
    for value in values.iter().filter(|v| v.is_finite()) {
        let bin = ((value.clamp(0.0, 1.0) * bins as f64) as usize).min(bins - 1);
        counts[bin] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(0).max(1);
    let colour = if accent { ACCENT } else { BAR };
    svg(HEIGHT, |root| {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(0f64..1f64, 0u64..top + top / 10 + 1)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(WHITE)
            .x_desc(x_label)
            .y_desc("count")
            .x_labels(11)
            .draw()?;
        let width = 1.0 / bins as f64;
        chart.draw_series(counts.iter().enumerate().map(|(bin, &count)| {
            let x0 = bin as f64 * width;
            Rectangle::new(
                [(x0 + 0.002, 0), (x0 + width - 0.002, count)],
                colour.filled(),
            )
        }))?;
        root.present()
    })
}

/// Horizontal bars, one per `(name, value)`, longest scale at `max` (or the largest value),
/// values shown at the bar's end with `format`.
pub fn bars(
    items: &[(String, f64)],
    x_label: &str,
    max: Option<f64>,
    format: fn(f64) -> String,
) -> String {
    let rows = items.len().max(1);
    let height = (44 + 22 * rows as u32).max(190);
    let top = max.unwrap_or_else(|| items.iter().map(|(_, v)| *v).fold(0.0, f64::max));
    let top = if top > 0.0 { top } else { 1.0 };
    let label_width = items
        .iter()
        .map(|(name, _)| name.chars().count())
        .max()
        .unwrap_or(4)
        .min(40) as u32
        * 7
        + 10;
    svg(height, |root| {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(8)
            .x_label_area_size(32)
            .y_label_area_size(label_width)
            .build_cartesian_2d(0f64..top * 1.18, (0..rows as i32).into_segmented())?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .light_line_style(WHITE)
            .y_labels(rows)
            .y_label_formatter(&|y| match y {
                SegmentValue::CenterOf(i) if (*i as usize) < rows => items
                    .get(rows - 1 - *i as usize)
                    .map(|(name, _)| name.chars().take(40).collect())
                    .unwrap_or_default(),
                _ => String::new(),
            })
            .x_desc(x_label)
            .x_labels(6)
            .draw()?;
        chart.draw_series(items.iter().enumerate().map(|(i, (_, value))| {
            let y = (rows - 1 - i) as i32;
            let mut bar = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(y)),
                    (*value, SegmentValue::Exact(y + 1)),
                ],
                BAR.filled(),
            );
            bar.set_margin(3, 3, 0, 0);
            bar
        }))?;
        chart.draw_series(items.iter().enumerate().map(|(i, (_, value))| {
            let y = (rows - 1 - i) as i32;
            Text::new(
                format(*value),
                (*value + top * 0.01, SegmentValue::CenterOf(y)),
                TextStyle::from(("sans-serif", 12).into_font())
                    .pos(Pos::new(HPos::Left, VPos::Center)),
            )
        }))?;
        root.present()
    })
}

/// A line through `points` (x ascending), with its axes named.
pub fn line(points: &[(f64, f64)], x_label: &str, y_label: &str) -> String {
    let x_max = points.last().map_or(1.0, |p| p.0).max(1e-3);
    let y_max = points.iter().map(|p| p.1).fold(0.0, f64::max).max(1.0);
    svg(HEIGHT, |root| {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max * 1.05)?;
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .x_desc(x_label)
            .y_desc(y_label)
            .draw()?;
        chart.draw_series(LineSeries::new(points.iter().copied(), BAR.stroke_width(2)))?;
        root.present()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_svg_without_a_namespace_url() {
        let figures = [
            histogram(&[0.1, 0.5, 0.55, 0.99, 1.0], 20, "p_chosen", false),
            bars(
                &[("harm".into(), 3.0), ("honesty".into(), 1.0)],
                "rounds",
                None,
                |v| format!("{v}"),
            ),
            line(&[(0.0, 0.0), (2.0, 10.0)], "seconds", "samples"),
        ];
        for figure in figures {
            assert!(figure.starts_with("<svg"), "{figure}");
            assert!(!figure.contains("http"), "{figure}");
            assert!(
                figure.contains("<rect") || figure.contains("<polyline"),
                "{figure}"
            );
        }
        assert!(
            bars(&[("harm".into(), 3.0)], "n", None, |v| format!("{v}")).contains(">\nharm\n<")
        );
    }
}

//! Small line charts as inline SVG, drawn on the server (no script, no external asset).

use std::fmt::Write as _;

use super::pages::esc;

const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 140.0;
const PAD: f64 = 24.0;

/// A chart of one or more series of equal length (oldest first), each with its name; the
/// y axis runs from 0 to the largest value, labelled with `unit`.
pub fn lines(title: &str, series: &[(&str, Vec<f64>)], unit: &str) -> String {
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max);
    let top = if max <= 0.0 { 1.0 } else { max };
    let mut svg = format!(
        "<figure class=\"chart\"><figcaption>{}</figcaption><svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"{}\">",
        esc(title),
        esc(title)
    );
    let _ = write!(
        svg,
        "<line class=\"axis\" x1=\"{PAD}\" y1=\"{b}\" x2=\"{WIDTH}\" y2=\"{b}\"/><text class=\"tick\" x=\"2\" y=\"12\">{}{}</text><text class=\"tick\" x=\"2\" y=\"{b}\">0</text>",
        trim(top),
        esc(unit),
        b = HEIGHT - PAD
    );
    for (i, (name, values)) in series.iter().enumerate() {
        let n = values.len().max(2) - 1;
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(x, y)| {
                let px = PAD + (WIDTH - PAD) * x as f64 / n as f64;
                let py = (HEIGHT - PAD) - (HEIGHT - 2.0 * PAD) * (y.max(0.0).min(top) / top);
                format!("{px:.1},{py:.1}")
            })
            .collect();
        let _ = write!(
            svg,
            "<polyline class=\"s{i}\" points=\"{}\"/><text class=\"legend s{i}\" x=\"{}\" y=\"{}\">{}</text>",
            points.join(" "),
            PAD + 90.0 * i as f64,
            HEIGHT - 4.0,
            esc(name)
        );
    }
    svg.push_str("</svg></figure>");
    svg
}

fn trim(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_chart_scales_every_series_to_the_largest_value_and_escapes_names() {
        let svg = super::lines("a<b", &[("x&y", vec![0.0, 5.0, 10.0])], " ms");
        assert!(svg.contains("a&lt;b") && svg.contains("x&amp;y"), "{svg}");
        // 0 at the bottom (116), 10 at the top (24), evenly spaced.
        assert!(
            svg.contains("points=\"24.0,116.0 312.0,70.0 600.0,24.0\""),
            "{svg}"
        );
        assert!(svg.contains(">10 ms<"), "{svg}");
        let flat = super::lines("t", &[("z", vec![0.0; 3])], "");
        assert!(
            flat.contains("24.0,116.0"),
            "an all-zero series sits on the axis: {flat}"
        );
    }
}

//! Minimal SVG charts for the report: lines (optionally log x) and grouped bars, each with an optional
//! horizontal reference line. Hand-written because a plotting crate would be the largest dependency of the
//! suite for four small, static pictures.

use std::fmt::Write;

const W: f64 = 720.0;
const H: f64 = 400.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;

/// Colors for series, in order.
pub const PALETTE: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// One named series of points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A horizontal line across the plot, e.g. an ideal or a goal.
pub struct Reference {
    pub name: String,
    pub y: f64,
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A readable tick label: 1.5k, 2M, 64, 0.25.
pub fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.3}M", v / 1e6)
    } else if a >= 1e3 {
        format!("{:.3}k", v / 1e3)
    } else if a >= 10.0 || a == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
    .replace(".000", "")
}

/// A size in bytes as 64 B, 16 KiB, 1 MiB.
pub fn bytes_label(v: f64) -> String {
    if v >= 1048576.0 {
        format!("{} MiB", v / 1048576.0)
    } else if v >= 1024.0 {
        format!("{} KiB", v / 1024.0)
    } else {
        format!("{v} B")
    }
}

struct Frame {
    svg: String,
    y_max: f64,
}

impl Frame {
    fn new(title: &str, y_label: &str, x_label: &str, y_max: f64) -> Frame {
        let y_max = if y_max.is_finite() && y_max > 0.0 {
            y_max * 1.1
        } else {
            1.0
        };
        let mut svg = String::new();
        let _ = write!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="{W}" height="{H}" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>
<text x="{}" y="{}" text-anchor="middle">{}</text>
<text transform="translate(18,{}) rotate(-90)" text-anchor="middle">{}</text>
"#,
            (LEFT + W - RIGHT) / 2.0,
            escape(title),
            (LEFT + W - RIGHT) / 2.0,
            H - 12.0,
            escape(x_label),
            (TOP + H - BOTTOM) / 2.0,
            escape(y_label),
        );
        for i in 0..=5 {
            let v = y_max * f64::from(i) / 5.0;
            let y = TOP + (H - TOP - BOTTOM) * (1.0 - f64::from(i) / 5.0);
            let _ = writeln!(
                svg,
                r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                W - RIGHT,
                LEFT - 6.0,
                y + 4.0,
                short(v)
            );
        }
        let _ = writeln!(
            svg,
            r##"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="#333"/>"##,
            W - LEFT - RIGHT,
            H - TOP - BOTTOM
        );
        Frame { svg, y_max }
    }

    fn y(&self, v: f64) -> f64 {
        TOP + (H - TOP - BOTTOM) * (1.0 - (v / self.y_max).clamp(0.0, 1.0))
    }

    fn legend(&mut self, index: usize, name: &str, color: &str, dashed: bool) {
        let y = TOP + 10.0 + 20.0 * index as f64;
        let x = W - RIGHT + 12.0;
        let dash = if dashed {
            r#" stroke-dasharray="5,3""#
        } else {
            ""
        };
        let _ = writeln!(
            self.svg,
            r#"<line x1="{x}" x2="{}" y1="{y}" y2="{y}" stroke="{color}" stroke-width="3"{dash}/><text x="{}" y="{}">{}</text>"#,
            x + 20.0,
            x + 26.0,
            y + 4.0,
            escape(name)
        );
    }

    fn reference(&mut self, index: usize, reference: &Reference) {
        let y = self.y(reference.y);
        let _ = writeln!(
            self.svg,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#555" stroke-width="1.5" stroke-dasharray="5,3"/>"##,
            W - RIGHT
        );
        self.legend(index, &reference.name, "#555", true);
    }

    fn finish(mut self) -> String {
        self.svg.push_str("</svg>\n");
        self.svg
    }
}

/// A line chart; `log_x` spaces x by its logarithm and labels ticks with `x_tick`.
pub fn lines(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_x: bool,
    x_tick: fn(f64) -> String,
    reference: Option<&Reference>,
) -> String {
    let all = || series.iter().flat_map(|s| s.points.iter());
    let y_max = all()
        .map(|p| p.1)
        .chain(reference.map(|r| r.y))
        .fold(0.0, f64::max);
    let tx = |x: f64| if log_x { x.max(1e-9).log2() } else { x };
    let x_min = all().map(|p| tx(p.0)).fold(f64::INFINITY, f64::min);
    let x_max = all().map(|p| tx(p.0)).fold(f64::NEG_INFINITY, f64::max);
    let span = if x_max > x_min { x_max - x_min } else { 1.0 };
    let px = |x: f64| LEFT + (W - LEFT - RIGHT) * (tx(x) - x_min) / span;
    let mut frame = Frame::new(title, y_label, x_label, y_max);
    let mut xs: Vec<f64> = all().map(|p| p.0).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    for &x in &xs {
        let _ = writeln!(
            frame.svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            px(x),
            H - BOTTOM + 16.0,
            escape(&x_tick(x))
        );
    }
    for (i, s) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let points: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), frame.y(y)))
            .collect();
        let _ = writeln!(
            frame.svg,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
            points.join(" ")
        );
        for p in &points {
            let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(
                frame.svg,
                r#"<circle cx="{x}" cy="{y}" r="3" fill="{color}"/>"#
            );
        }
        frame.legend(i, &s.name, color, false);
    }
    if let Some(reference) = reference {
        frame.reference(series.len(), reference);
    }
    frame.finish()
}

/// Grouped bars: one group per category, one bar per series (`values[series][category]`).
pub fn bars(
    title: &str,
    x_label: &str,
    y_label: &str,
    categories: &[String],
    series: &[(String, Vec<f64>)],
    reference: Option<&Reference>,
) -> String {
    let y_max = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .chain(reference.map(|r| r.y))
        .fold(0.0, f64::max);
    let mut frame = Frame::new(title, y_label, x_label, y_max);
    let slot = (W - LEFT - RIGHT) / categories.len().max(1) as f64;
    let bar = slot * 0.8 / series.len().max(1) as f64;
    // At most ~16 category labels, so dense histograms stay readable.
    let every = categories.len().div_ceil(16).max(1);
    for (c, name) in categories.iter().enumerate() {
        if c % every == 0 {
            let _ = writeln!(
                frame.svg,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
                LEFT + slot * (c as f64 + 0.5),
                H - BOTTOM + 16.0,
                escape(name)
            );
        }
    }
    for (i, (name, values)) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        for (c, &v) in values.iter().enumerate() {
            let x = LEFT + slot * c as f64 + slot * 0.1 + bar * i as f64;
            let y = frame.y(v);
            let _ = writeln!(
                frame.svg,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{color}"/>"#,
                bar.max(0.5),
                (H - BOTTOM - y).max(0.0)
            );
        }
        frame.legend(i, name, color, false);
    }
    if let Some(reference) = reference {
        frame.reference(series.len(), reference);
    }
    frame.finish()
}

//! The roofline chart of `smepilot plan`: this machine's roofs (DRAM read bandwidth, the
//! vector and matrix peaks) on log-log axes of arithmetic intensity (flops per weight
//! byte) and throughput, with each op shape placed at its predicted throughput and
//! coloured by the mode the planner chose. Plain SVG, no dependencies.

use std::fmt::Write;

use super::profile::MachineProfile;
use super::Mode;

/// One planned product on the chart.
pub struct Point {
    pub label: String,
    /// Flops per byte of weights.
    pub intensity: f64,
    /// Predicted flop/s in the chosen mode.
    pub perf: f64,
    pub mode: Mode,
}

const W: f64 = 960.0;
const H: f64 = 620.0;
const LEFT: f64 = 110.0;
const RIGHT: f64 = 230.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;

pub fn mode_colour(m: Mode) -> &'static str {
    match m {
        Mode::Vector => "#1f77b4",
        Mode::Matrix => "#d62728",
        Mode::Coop => "#2ca02c",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The chart as an SVG document, for `threads` threads.
pub fn roofline_svg(p: &MachineProfile, threads: usize, points: &[Point]) -> String {
    let t = threads.max(1) as f64;
    let bw = p.bandwidth(threads);
    // Horizontal roofs: (label, flop/s, colour, dashed).
    let mut ceilings = vec![
        ("vector fp32 peak".to_string(), p.vec_fp32_peak * t, "#1f77b4", true),
        ("vector int8 peak".to_string(), p.vec_int8_peak * t, "#1f77b4", false),
    ];
    if let Some(m) = &p.matrix {
        let units = p.matrix_drivers(threads) as f64;
        ceilings.push(("matrix bf16 peak".into(), m.bf16_peak * units, "#d62728", true));
        ceilings.push(("matrix bf16 kernel".into(), m.bf16_kernel * units, "#d62728", false));
        ceilings.push(("matrix int8 peak".into(), m.int8_peak * units, "#ff7f0e", true));
        ceilings.push(("matrix int8 kernel".into(), m.int8_kernel * units, "#ff7f0e", false));
        // Coop's roof: the bf16 tile kernels and the other threads' fp32 peak, together at
        // the profile's mixed efficiency.
        let vector_threads = (threads as f64 - units).max(0.0);
        ceilings.push(("matrix + vector".into(), (m.bf16_kernel * units + p.vec_fp32_peak * vector_threads) * p.mixed_efficiency, "#2ca02c", false));
    }
    // Only finite, positive figures can be drawn on log axes.
    ceilings.retain(|c| c.1.is_finite() && c.1 > 0.0);
    let bw = if bw.is_finite() && bw > 0.0 { bw } else { 1e9 };
    let points: Vec<&Point> = points.iter().filter(|q| q.perf.is_finite() && q.perf > 0.0 && q.intensity.is_finite() && q.intensity > 0.0).collect();
    let top_roof = ceilings.iter().map(|c| c.1).fold(bw * 10.0, f64::max);
    let (x0, x1) = (0.1f64.log10(), 10_000f64.log10());
    let lowest = points.iter().map(|q| q.perf).fold(bw * 0.1, f64::min);
    let (y0, y1) = ((lowest / 2.0).log10().floor(), (top_roof * 3.0).log10().ceil());
    let px = |x: f64| LEFT + (x.log10().clamp(x0, x1) - x0) / (x1 - x0) * (W - LEFT - RIGHT);
    let py = |y: f64| H - BOTTOM - (y.log10().clamp(y0, y1) - y0) / (y1 - y0) * (H - TOP - BOTTOM);

    let mut s = String::new();
    let _ = writeln!(s, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(s, r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">"#);
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="{LEFT}" y="22" font-size="14">{} - {} thread(s): roofline and planned matrix products</text>"#, esc(&p.cpu), threads);
    // Grid and axes: decades.
    let mut d = x0.ceil() as i32;
    while d as f64 <= x1 {
        let x = px(10f64.powi(d));
        let _ = writeln!(s, r##"<line class="grid" x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##, H - BOTTOM, H - BOTTOM + 16.0, 10f64.powi(d));
        d += 1;
    }
    let mut d = y0 as i32;
    while d as f64 <= y1 {
        let y = py(10f64.powi(d));
        let _ = writeln!(s, r##"<line class="grid" x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{} GFLOP/s</text>"##, W - RIGHT, LEFT - 4.0, y + 4.0, 10f64.powi(d) / 1e9);
        d += 1;
    }
    let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">arithmetic intensity (flops per weight byte)</text>"#, (LEFT + W - RIGHT) / 2.0, H - 14.0);
    // The DRAM roof: flop/s = bandwidth x intensity, up to the highest ceiling.
    let knee = top_roof / bw;
    let _ = writeln!(
        s,
        r##"<line class="roof" data-roof="dram" x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333" stroke-width="2"/><text x="{:.1}" y="{:.1}" fill="#333">DRAM read {:.1} GB/s</text>"##,
        px(0.1),
        py(bw * 0.1),
        px(knee.min(10_000.0)),
        py(bw * knee.min(10_000.0)),
        px(0.15),
        py(bw * 0.15) - 6.0,
        bw / 1e9
    );
    // Labels at least a line apart: roofs of nearly equal height (a kernel rate equal to
    // another) would print over each other.
    let mut label_y: Vec<(usize, f64)> = ceilings.iter().enumerate().map(|(i, c)| (i, py(c.1) + 4.0)).collect();
    label_y.sort_by(|a, b| a.1.total_cmp(&b.1));
    for i in 1..label_y.len() {
        label_y[i].1 = label_y[i].1.max(label_y[i - 1].1 + 12.0);
    }
    label_y.sort_by_key(|l| l.0);
    for ((label, flops, colour, dashed), (_, ly)) in ceilings.iter().zip(&label_y) {
        let y = py(*flops);
        let dash = if *dashed { r#" stroke-dasharray="6,4""# } else { "" };
        let _ = writeln!(
            s,
            r#"<line class="roof" data-roof="{}" x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{colour}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}" fill="{colour}">{} {:.0} GFLOP/s</text>"#,
            esc(label),
            px(flops / bw),
            W - RIGHT,
            W - RIGHT + 4.0,
            ly,
            esc(label),
            flops / 1e9
        );
    }
    for q in &points {
        let _ = writeln!(
            s,
            r#"<circle class="op" data-mode="{}" cx="{:.1}" cy="{:.1}" r="5" fill="{}" fill-opacity="0.8"><title>{}: {} at {:.1} GFLOP/s</title></circle>"#,
            q.mode.name(),
            px(q.intensity),
            py(q.perf),
            mode_colour(q.mode),
            esc(&q.label),
            q.mode.name(),
            q.perf / 1e9
        );
    }
    // Legend of the modes.
    for (i, m) in Mode::ALL.into_iter().enumerate() {
        let y = TOP + 10.0 + 18.0 * i as f64;
        let _ = writeln!(s, r#"<circle cx="{:.1}" cy="{y:.1}" r="5" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#, LEFT + 14.0, mode_colour(m), LEFT + 24.0, y + 4.0, m.name());
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::super::profile::synthetic;
    use super::*;

    #[test]
    fn the_chart_has_every_roof_and_point() {
        let p = synthetic::amx_like();
        let pts = vec![
            Point { label: "a <1>".into(), intensity: 2.0, perf: 40e9, mode: Mode::Vector },
            Point { label: "b".into(), intensity: 900.0, perf: 800e9, mode: Mode::Matrix },
        ];
        let svg = roofline_svg(&p, 2, &pts);
        assert_eq!(svg.matches(r#"class="op""#).count(), 2);
        assert_eq!(svg.matches(r#"class="roof""#).count(), 8, "DRAM, 2 vector, 4 matrix roofs and coop's");
        assert!(svg.contains("a &lt;1&gt;") && svg.ends_with("</svg>\n"));
        let none = roofline_svg(&synthetic::no_matrix(), 4, &pts);
        assert_eq!(none.matches(r#"class="roof""#).count(), 3);
    }
}

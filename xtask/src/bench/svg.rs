//! The matrix as a chart, written as SVG by hand: one panel per direction ×
//! message size, throughput (median Mbit/s, the min–max of the runs as a
//! bar) against sessions, one line per configuration.

use std::fmt::Write as _;

use super::matrix::PointKey;
use super::report::{panel_title, MatrixRun};

const PANEL_W: f64 = 460.0;
const PANEL_H: f64 = 300.0;
/// Plot area inside a panel.
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 44.0;
/// Above the panels: the title and the legend.
const HEADER: f64 = 66.0;
/// How far apart (px) the configurations' points at one session count are drawn.
const DODGE: f64 = 5.0;
/// One colour per configuration, in order (repeating after eight).
const COLOURS: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

/// Text for XML content and attribute values.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The top of the y axis: the smallest 1, 2 or 5 × 10^k at or above `max`
/// (1 for nothing to show).
pub fn nice_max(max: f64) -> f64 {
    if max.is_nan() || max <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * magnitude).find(|v| *v >= max * (1.0 - 1e-12)).unwrap_or(10.0 * magnitude)
}

/// An axis label: whole numbers without decimals.
fn tick_label(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

pub fn chart(run: &MatrixRun) -> String {
    let plan = &run.plan;
    let cols = plan.lengths.len().max(1);
    let rows = plan.directions.len().max(1);
    let (width, height) = (PANEL_W * cols as f64, HEADER + PANEL_H * rows as f64);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}">"#
    );
    s.push_str(
        "<style>text{font-family:sans-serif;font-size:12px;fill:#222}.title{font-size:15px;font-weight:bold}\
                .axis{stroke:#444;stroke-width:1}.grid{stroke:#ddd;stroke-width:1}.note{fill:#888}</style>\n",
    );
    let _ = writeln!(s, r##"<rect width="{width}" height="{height}" fill="#fff"/>"##);
    let title = format!("mqnet iperf3 matrix, {}: median Mbit/s vs sessions", run.date);
    let subtitle = format!(
        "accelerator {}, vhost {}, {} run(s) × {} s per point; bars: min–max of the runs",
        run.accel,
        if run.vhost { "on" } else { "off" },
        plan.repeat,
        plan.seconds
    );
    let _ = writeln!(s, r#"<text class="title" x="12" y="20">{}</text>"#, escape(&title));
    let _ = writeln!(s, r#"<text x="12" y="38">{}</text>"#, escape(&subtitle));
    s.push_str("<g class=\"legend\">\n<text x=\"12\" y=\"56\">vCPUs/queues:</text>\n");
    for (i, c) in plan.configs.iter().enumerate() {
        let (x, colour) = (104.0 + 72.0 * i as f64, COLOURS[i % COLOURS.len()]);
        let _ = writeln!(
            s,
            r#"<line x1="{x}" y1="52" x2="{}" y2="52" stroke="{colour}" stroke-width="3"/><text class="config" x="{}" y="56">{}</text>"#,
            x + 22.0,
            x + 28.0,
            escape(&c.to_string())
        );
    }
    s.push_str("</g>\n");
    for (row, &direction) in plan.directions.iter().enumerate() {
        for (col, &length) in plan.lengths.iter().enumerate() {
            let (x0, y0) = (PANEL_W * col as f64, HEADER + PANEL_H * row as f64);
            let (px, py, pw, ph) = (x0 + LEFT, y0 + TOP, PANEL_W - LEFT - RIGHT, PANEL_H - TOP - BOTTOM);
            let _ = writeln!(
                s,
                r#"<g class="panel" data-direction="{}" data-length="{}">"#,
                direction.id(),
                escape(&length.id())
            );
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
                x0 + PANEL_W / 2.0,
                y0 + 18.0,
                escape(&panel_title(direction, length))
            );
            let key = |config, sessions| PointKey { config, direction, length, sessions };
            let points = run.panel(direction, length);
            let summaries: Vec<_> = points.iter().filter_map(|p| p.summary()).collect();
            if summaries.is_empty() {
                let why = points
                    .iter()
                    .find_map(|p| p.skipped.as_deref())
                    .map_or("no measurement".to_string(), |r| format!("skipped: {r}"));
                let _ = writeln!(
                    s,
                    r#"<text class="note" x="{}" y="{}" text-anchor="middle">{}</text>"#,
                    px + pw / 2.0,
                    py + ph / 2.0,
                    escape(&why)
                );
                s.push_str("</g>\n");
                continue;
            }
            let top = nice_max(summaries.iter().map(|m| m.mbit_s_max).fold(0.0, f64::max));
            let y_of = |v: f64| py + ph - v / top * ph;
            let n = plan.sessions.len();
            let x_of = |i: usize| px + (i as f64 + 0.5) / n as f64 * pw;
            for k in 0..=5 {
                let v = top * k as f64 / 5.0;
                let y = y_of(v);
                let _ = writeln!(
                    s,
                    r#"<line class="grid" x1="{px}" y1="{y:.1}" x2="{}" y2="{y:.1}"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
                    px + pw,
                    px - 6.0,
                    y + 4.0,
                    tick_label(v)
                );
            }
            let _ = writeln!(
                s,
                r#"<line class="axis" x1="{px}" y1="{py}" x2="{px}" y2="{0}"/><line class="axis" x1="{px}" y1="{0}" x2="{1}" y2="{0}"/>"#,
                py + ph,
                px + pw
            );
            for (i, sessions) in plan.sessions.iter().enumerate() {
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{}" text-anchor="middle">{sessions}</text>"#,
                    x_of(i),
                    py + ph + 16.0
                );
            }
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="middle">sessions (iperf3 -P)</text><text transform="translate({},{}) rotate(-90)" text-anchor="middle">Mbit/s</text>"#,
                px + pw / 2.0,
                py + ph + 34.0,
                x0 + 16.0,
                py + ph / 2.0
            );
            for (ci, &config) in plan.configs.iter().enumerate() {
                let colour = COLOURS[ci % COLOURS.len()];
                let measured: Vec<(usize, _)> = plan
                    .sessions
                    .iter()
                    .enumerate()
                    .filter_map(|(i, &n)| Some((i, run.point(&key(config, n))?.summary()?)))
                    .collect();
                if measured.is_empty() {
                    continue;
                }
                let _ = writeln!(s, r#"<g class="series" data-config="{}">"#, escape(&config.to_string()));
                // Each configuration a few pixels aside, so that the runs'
                // bars at one session count do not hide each other.
                let dodge = (ci as f64 - (plan.configs.len() as f64 - 1.0) / 2.0) * DODGE;
                let x_at = |i: usize| x_of(i) + dodge;
                let line: Vec<String> =
                    measured.iter().map(|(i, m)| format!("{:.1},{:.1}", x_at(*i), y_of(m.mbit_s))).collect();
                let _ = writeln!(
                    s,
                    r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
                    line.join(" ")
                );
                for (i, m) in &measured {
                    let x = x_at(*i);
                    let _ = writeln!(
                        s,
                        r#"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="{colour}" stroke-width="1"/><circle cx="{x:.1}" cy="{:.1}" r="3.5" fill="{colour}"><title>{}: {:.1} Mbit/s</title></circle>"#,
                        y_of(m.mbit_s_min),
                        y_of(m.mbit_s_max),
                        y_of(m.mbit_s),
                        escape(&config.to_string()),
                        m.mbit_s
                    );
                }
                s.push_str("</g>\n");
            }
            s.push_str("</g>\n");
        }
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::tests::fake_run;

    #[test]
    fn axis_tops() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(f64::NAN), 1.0);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(10.0), 10.0);
        assert_eq!(nice_max(123.0), 200.0);
        assert_eq!(nice_max(401.0), 500.0);
        assert_eq!(nice_max(0.03), 0.05);
        assert_eq!((tick_label(200.0), tick_label(0.5)), ("200".to_string(), "0.5".to_string()));
    }

    #[test]
    fn a_well_formed_chart_with_one_series_per_configuration() {
        let run = fake_run();
        let svg = chart(&run);
        let doc = roxmltree::Document::parse(&svg).expect("well-formed XML");
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        assert_eq!(root.tag_name().namespace(), Some("http://www.w3.org/2000/svg"));
        let class = |n: &roxmltree::Node, c: &str| n.attribute("class") == Some(c);
        let panels: Vec<_> = doc.descendants().filter(|n| class(n, "panel")).collect();
        assert_eq!(panels.len(), 2, "one per direction × length");
        let measured = panels.iter().find(|p| p.attribute("data-direction") == Some("host-to-guest")).unwrap();
        let series: Vec<_> = measured.descendants().filter(|n| class(n, "series")).collect();
        let configs: Vec<_> = series.iter().map(|s| s.attribute("data-config").unwrap()).collect();
        assert_eq!(configs, ["2/1", "2/2"]);
        // 2/1 has one measured point (its other failed), 2/2 both.
        let circles = |s: &roxmltree::Node| s.descendants().filter(|n| n.has_tag_name("circle")).count();
        assert_eq!((circles(&series[0]), circles(&series[1])), (1, 2));
        let polyline = series[1].descendants().find(|n| n.has_tag_name("polyline")).unwrap();
        assert_eq!(polyline.attribute("points").unwrap().split(' ').count(), 2);
        // The skipped direction says why, and has no series.
        let skipped = panels.iter().find(|p| p.attribute("data-direction") == Some("guest-initiated")).unwrap();
        assert_eq!(skipped.descendants().filter(|n| class(n, "series")).count(), 0);
        let texts: Vec<&str> = skipped.descendants().filter_map(|n| n.text()).collect();
        assert!(texts.contains(&"skipped: guest has no iperf3 client mode (it ignored iperf-client=)"), "{texts:?}");
        // The legend names every configuration.
        let legend = doc.descendants().find(|n| class(n, "legend")).unwrap();
        let names: Vec<&str> = legend.descendants().filter(|n| class(n, "config")).filter_map(|n| n.text()).collect();
        assert_eq!(names, ["2/1", "2/2"]);
    }

    #[test]
    fn text_is_escaped() {
        let mut run = fake_run();
        run.accel = "kvm <pvm> & \"x\"".into();
        let svg = chart(&run);
        assert!(svg.contains("kvm &lt;pvm&gt; &amp; &quot;x&quot;"));
        roxmltree::Document::parse(&svg).expect("still well-formed");
    }
}

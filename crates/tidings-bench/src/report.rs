//! Output of runs: a Markdown table (readable on a terminal too), the JSON
//! file, and an SVG plot of the latency distributions.

use std::fmt::Write as _;

use crate::{conn::Transport, run::Report};

fn ms(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// Human form of a count per second.
pub(crate) fn per_second(value: f64) -> String {
    if value >= 10_000.0 {
        format!("{:.0}k", value / 1000.0)
    } else {
        format!("{value:.0}")
    }
}

/// One line per report: what ran, throughput, latency percentiles, errors,
/// deliveries and memory.
pub(crate) fn table(reports: &[Report]) -> String {
    let mut out = String::new();
    out.push_str("| scenario | server | protocol | connections | rate/s | throughput/s | p50 ms | p90 ms | p99 ms | max ms | errors | delivered | RSS/conn | server CPU µs/op |\n");
    out.push_str("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in reports {
        let scenario = match (r.group_size, r.transport) {
            (Some(k), _) => format!("{} (K={k})", r.scenario.name()),
            (None, Transport::WebSockets) => r.scenario.name().to_owned(),
            (None, transport) => format!("{} ({})", r.scenario.name(), transport.name()),
        };
        let delivered = match r.expected {
            Some(expected) => format!("{}/{}", r.ops, expected),
            None => "".to_owned(),
        };
        let rss = r
            .rss
            .map(|rss| format!("{:.1} KiB", rss.per_connection_bytes / 1024.0))
            .unwrap_or_default();
        let rate = r.rate.map(|r| format!("{r}")).unwrap_or_default();
        let cpu = r
            .server_cpu_us
            .map(|us| format!("{us:.2}"))
            .unwrap_or_default();
        let lat = &r.latency;
        let latency = if lat.count == 0 {
            ["", "", "", ""].map(str::to_owned)
        } else {
            [lat.p50_ms, lat.p90_ms, lat.p99_ms, lat.max_ms].map(ms)
        };
        let connections = if r.failed_connections > 0 {
            format!("{} (+{} failed)", r.connections, r.failed_connections)
        } else {
            r.connections.to_string()
        };
        let throughput = if r.duration_s > 0.0 {
            per_second(r.throughput)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "| {scenario} | {} | {} | {connections} | {rate} | {throughput} | {} | {} | {} | {} | {} | {delivered} | {rss} | {cpu} |",
            r.server_label(),
            r.protocol,
            latency[0],
            latency[1],
            latency[2],
            latency[3],
            r.errors,
        );
    }
    out
}

/// Latency against percentile (x: 0 to 99.99 on a "nines" scale), one line
/// per report.
pub(crate) fn svg(reports: &[Report], title: &str) -> String {
    const W: f64 = 720.0;
    const H: f64 = 420.0;
    const LEFT: f64 = 60.0;
    const BOTTOM: f64 = 40.0;
    const TOP: f64 = 30.0;
    const RIGHT: f64 = 220.0;
    let colors = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    ];
    // x = -log10(1 - p/100): 0 at p0, 1 at p90, 2 at p99, 3 at p99.9, 4 at p99.99.
    let nines = |p: f64| -(1.0 - (p / 100.0).min(0.9999)).log10();
    let max_ms = reports
        .iter()
        .flat_map(|r| r.distribution.iter().map(|&(_, v)| v))
        .fold(1.0_f64, f64::max);
    let x = |p: f64| LEFT + nines(p) / 4.0 * (W - LEFT - RIGHT);
    let y = |v: f64| H - BOTTOM - v / max_ms * (H - BOTTOM - TOP);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="18" font-size="14">{}</text>"#,
        escape(title)
    );
    for (p, label) in [
        (0.0, "p0"),
        (90.0, "p90"),
        (99.0, "p99"),
        (99.9, "p99.9"),
        (99.99, "p99.99"),
    ] {
        let _ = writeln!(
            out,
            r##"<line x1="{0}" y1="{TOP}" x2="{0}" y2="{1}" stroke="#ddd"/><text x="{0}" y="{2}" text-anchor="middle">{label}</text>"##,
            x(p),
            H - BOTTOM,
            H - BOTTOM + 16.0
        );
    }
    for i in 0..=4 {
        let v = max_ms * i as f64 / 4.0;
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{0}" x2="{1}" y2="{0}" stroke="#eee"/><text x="{2}" y="{3}" text-anchor="end">{4}</text>"##,
            y(v),
            W - RIGHT,
            LEFT - 6.0,
            y(v) + 4.0,
            ms(v)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="14" y="{}" transform="rotate(-90 14 {})">latency (ms)</text>"#,
        H / 2.0,
        H / 2.0
    );
    for (i, r) in reports.iter().enumerate() {
        let color = colors[i % colors.len()];
        let points: Vec<String> = r
            .distribution
            .iter()
            .filter(|(p, _)| *p <= 99.99)
            .map(|&(p, v)| format!("{:.1},{:.1}", x(p), y(v)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        let mut name = format!("{} {} {}", r.scenario.name(), r.server.name(), r.protocol);
        if let Some(rate) = r.rate {
            let _ = write!(name, " {rate}/s");
        }
        let ly = TOP + 10.0 + i as f64 * 18.0;
        let _ = writeln!(
            out,
            r#"<line x1="{0}" y1="{ly}" x2="{1}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{2}" y="{3}">{4}</text>"#,
            W - RIGHT + 10.0,
            W - RIGHT + 30.0,
            W - RIGHT + 36.0,
            ly + 4.0,
            escape(&name)
        );
    }
    out.push_str("</svg>\n");
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

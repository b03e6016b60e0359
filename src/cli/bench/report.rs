//! `--report DIR`: one self-contained HTML page per run (no scripts, no external files) with
//! the settings, the numbers of the summary, and two inline SVG plots: throughput per second
//! over the run, and the latency percentile curve (x: percentile on a "nines" scale, 0 to
//! 99.999%; y: milliseconds).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde_json::Value;

use super::ceiling::Ceiling;
use super::summary::{LatencyMs, Summary, group_digits, human_bytes};

/// Writes the report of `s` into `dir` (created if missing); returns the file's path.
pub fn write(dir: &Path, s: &Summary) -> anyhow::Result<PathBuf> {
    let mut body = String::new();
    let _ = writeln!(body, "<h1>strom bench {}</h1>", s.command);
    body.push_str("<h2>Settings</h2><table>");
    for (k, v) in &s.settings {
        let v = match v {
            Value::String(t) => t.clone(),
            Value::Null => "—".into(),
            other => other.to_string(),
        };
        let _ = write!(body, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v));
    }
    body.push_str("</table><h2>Results</h2><table>");
    let mut row = |k: &str, v: String| {
        let _ = write!(body, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v));
    };
    row("records", s.records.to_string());
    row(
        "throughput",
        format!(
            "{} records/s, {:.1} MB/s of values",
            group_digits(s.records_per_sec()),
            s.bytes_per_sec() / 1e6
        ),
    );
    row("elapsed", format!("{:.3} s", s.elapsed.as_secs_f64()));
    if let Some(LatencyMs {
        kind,
        samples,
        values,
    }) = s.latency_ms()
    {
        let v: Vec<String> = values
            .iter()
            .map(|(k, v)| format!("{} {v:.3}", k.replace('_', ".")))
            .collect();
        row(
            &format!("latency ({}), ms", kind.name()),
            format!("{} ({samples} samples)", v.join(", ")),
        );
    }
    if let Some(d) = s.disk_bytes {
        row("on disk", human_bytes(d));
    }
    for r in &s.resources {
        let u = &r.usage;
        row(
            r.key,
            format!(
                "CPU {:.2} s user + {:.2} s system; RSS {} at the end, {} at most (anonymous: {}, {}) ({})",
                u.user_s,
                u.system_s,
                human_bytes(u.rss),
                human_bytes(u.rss_max),
                human_bytes(u.rss_anon),
                human_bytes(u.rss_anon_max),
                r.what
            ),
        );
    }
    if let Some(f) = s.fractions() {
        for (k, v) in f {
            row(&format!("fraction of {k}"), format!("{:.1}%", v * 100.0));
        }
    }
    for (k, v, _) in &s.extra {
        row(k, v.to_string());
    }
    body.push_str("</table>");
    for n in &s.notes {
        let _ = write!(body, "<p class=note>{}</p>", esc(n));
    }
    let rates = s.timeline.rates();
    if rates.len() >= 2 {
        body.push_str("<h2>Throughput over time</h2>");
        body.push_str(&line_chart(&rates, "seconds", "records/s", &[]));
    }
    if let Some((kind, h)) = &s.latency
        && !h.is_empty()
    {
        let _ = write!(body, "<h2>Latency percentiles ({})</h2>", kind.name());
        body.push_str(&percentile_chart(h));
    }
    if let Some(c) = &s.ceiling {
        body.push_str("<h2>Ceilings</h2>");
        body.push_str(&ceiling_table(c));
    }
    save(dir, s.command, &body)
}

/// Writes the report of a `strom bench ceiling` run.
pub fn write_ceiling(dir: &Path, c: &Ceiling) -> anyhow::Result<PathBuf> {
    let mut body = String::from("<h1>strom bench ceiling</h1>");
    body.push_str(&ceiling_table(c));
    if !c.fsync_ns.is_empty() {
        body.push_str("<h2>fdatasync latency percentiles</h2>");
        body.push_str(&percentile_chart(&c.fsync_ns));
    }
    save(dir, "ceiling", &body)
}

fn ceiling_table(c: &Ceiling) -> String {
    format!(
        "<table><tr><th>loopback TCP</th><td>{:.2} GB/s</td></tr>\
         <tr><th>disk write (then one fdatasync)</th><td>{:.1} MB/s</td></tr>\
         <tr><th>disk, 1 MiB write + fdatasync</th><td>{:.1} MB/s; fdatasync p50 {:.2} ms, p99 {:.2} ms</td></tr>\
         <tr><th>directory</th><td>{}</td></tr><tr><th>bytes per measurement</th><td>{}</td></tr></table>",
        c.tcp_bytes_per_sec / 1e9,
        c.disk_write_bytes_per_sec / 1e6,
        c.disk_fsync_bytes_per_sec / 1e6,
        c.fsync_ns.value_at_quantile(0.5) as f64 / 1e6,
        c.fsync_ns.value_at_quantile(0.99) as f64 / 1e6,
        esc(&c.dir.display().to_string()),
        human_bytes(c.bytes),
    )
}

fn save(dir: &Path, command: &str, body: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let path = dir.join(format!("strom-bench-{command}-{secs}.html"));
    let html = format!(
        "<!doctype html><html><head><meta charset=utf-8><title>strom bench {command}</title>\
         <style>body{{font:14px system-ui,sans-serif;margin:2em;max-width:60em}}\
         table{{border-collapse:collapse}}th,td{{text-align:left;padding:2px 12px 2px 0;vertical-align:top}}\
         th{{font-weight:600}}.note{{color:#a60}}svg{{border:1px solid #ddd}}</style></head>\
         <body>{body}</body></html>\n"
    );
    std::fs::write(&path, html).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The latency curve: x is the number of nines (0 = p0, 1 = p90, ..., 5 = p99.999).
fn percentile_chart(h: &Histogram<u64>) -> String {
    let points: Vec<(f64, f64)> = (0..=50)
        .map(|k| {
            let x = f64::from(k) / 10.0;
            let q = 1.0 - 10f64.powf(-x);
            (x, h.value_at_quantile(q) as f64 / 1e6)
        })
        .collect();
    let ticks: Vec<(f64, String)> = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
        .iter()
        .enumerate()
        .map(|(i, l)| (i as f64, (*l).to_string()))
        .collect();
    line_chart(&points, "percentile", "ms", &ticks)
}

/// An SVG line chart of `points` (x ascending), y from 0; `x_ticks` replaces the numeric x
/// labels when given.
fn line_chart(
    points: &[(f64, f64)],
    x_label: &str,
    y_label: &str,
    x_ticks: &[(f64, String)],
) -> String {
    const W: f64 = 720.0;
    const H: f64 = 300.0;
    const L: f64 = 80.0;
    const R: f64 = 20.0;
    const T: f64 = 15.0;
    const B: f64 = 45.0;
    let x_min = points.first().map_or(0.0, |p| p.0);
    let x_max = points.last().map_or(1.0, |p| p.0).max(x_min + 1e-9);
    let y_max = points.iter().map(|p| p.1).fold(0.0f64, f64::max).max(1e-9) * 1.1;
    let sx = |x: f64| L + (x - x_min) / (x_max - x_min) * (W - L - R);
    let sy = |y: f64| H - B - y / y_max * (H - T - B);
    let mut svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{W}' height='{H}' viewBox='0 0 {W} {H}' font-size='11'>"
    );
    // Axes and grid.
    let _ = write!(
        svg,
        "<line x1='{L}' y1='{}' x2='{}' y2='{}' stroke='#000'/><line x1='{L}' y1='{T}' x2='{L}' y2='{}' stroke='#000'/>",
        H - B,
        W - R,
        H - B,
        H - B
    );
    for i in 0..=5 {
        let y = y_max / 1.1 * f64::from(i) / 5.0;
        let _ = write!(
            svg,
            "<line x1='{L}' y1='{0:.1}' x2='{1}' y2='{0:.1}' stroke='#eee'/><text x='{2}' y='{3:.1}' text-anchor='end'>{4}</text>",
            sy(y),
            W - R,
            L - 6.0,
            sy(y) + 4.0,
            tick_label(y)
        );
    }
    let ticks: Vec<(f64, String)> = if x_ticks.is_empty() {
        (0..=5)
            .map(|i| {
                let x = x_min + (x_max - x_min) * f64::from(i) / 5.0;
                (x, tick_label(x))
            })
            .collect()
    } else {
        x_ticks.to_vec()
    };
    for (x, label) in &ticks {
        let _ = write!(
            svg,
            "<text x='{:.1}' y='{}' text-anchor='middle'>{}</text>",
            sx(*x),
            H - B + 16.0,
            esc(label)
        );
    }
    let _ = write!(
        svg,
        "<text x='{}' y='{}' text-anchor='middle'>{}</text><text x='14' y='{}' text-anchor='middle' transform='rotate(-90 14 {})'>{}</text>",
        (L + W - R) / 2.0,
        H - 8.0,
        esc(x_label),
        (T + H - B) / 2.0,
        (T + H - B) / 2.0,
        esc(y_label)
    );
    let path: Vec<String> = points
        .iter()
        .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
        .collect();
    let _ = write!(
        svg,
        "<polyline fill='none' stroke='#1f77b4' stroke-width='2' points='{}'/></svg>",
        path.join(" ")
    );
    svg
}

fn tick_label(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}K", v / 1e3)
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::bench::measure::{new_histogram, record_ns};

    #[test]
    fn charts_are_svg_and_text_is_escaped() {
        let mut h = new_histogram().unwrap();
        for v in 1..1000u64 {
            record_ns(&mut h, v * 1000);
        }
        let svg = percentile_chart(&h);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("99.999%"));
        assert_eq!(esc("<a&b>"), "&lt;a&amp;b&gt;");
        let flat = line_chart(&[(0.0, 0.0), (1.0, 0.0)], "s", "r", &[]);
        assert!(!flat.contains("NaN"), "{flat}");
    }
}

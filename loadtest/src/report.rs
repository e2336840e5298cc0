//! Results: latency percentiles from the merged HDR histogram, throughput and status
//! counts, as a table for people, JSON for scripts, and an SVG percentile plot.

use crate::client::RunResult;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

/// One run, summarised.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// What was measured ("sms-ingress", "baseline", ...).
    pub label: String,
    /// "closed" or "open".
    pub mode: String,
    /// "h1" or "h2".
    pub protocol: String,
    /// Connections used.
    pub connections: usize,
    /// Offered rate of an open-loop run.
    pub rate: Option<f64>,
    /// Seconds from the first request to the last answer.
    pub elapsed_s: f64,
    /// Requests answered (any status).
    pub answered: u64,
    /// Answers per second.
    pub throughput_rps: f64,
    /// Answers by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests without an answer.
    pub errors: u64,
    /// Answers other than the SPEC's for the request (503 excluded).
    pub unexpected: u64,
    /// Open loop: due but never sent (the run fell too far behind).
    pub unsent: u64,
    /// Percentiles; from the intended send time in open loop.
    pub latency_ms: Latency,
    /// (percentile, ms) points for the plot.
    #[serde(skip)]
    pub curve: Vec<(f64, f64)>,
}

/// How the run was shaped, for the summary's labels.
#[derive(Debug, Clone)]
pub struct Shape {
    pub label: String,
    pub protocol: String,
    pub connections: usize,
    pub rate: Option<f64>,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Percentiles of a histogram of microseconds.
pub fn latency(h: &Histogram<u64>) -> Latency {
    let q = |p: f64| ms(h.value_at_quantile(p));
    Latency {
        p50: q(0.5),
        p90: q(0.9),
        p99: q(0.99),
        p999: q(0.999),
        max: ms(h.max()),
        mean: h.mean() / 1000.0,
    }
}

/// Points of the percentile curve, evenly spaced in "nines" from 0 to 99.999%.
pub fn curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    (0..=200)
        .map(|k| {
            let nines = f64::from(k) / 40.0;
            let q = 1.0 - 10f64.powf(-nines);
            (q * 100.0, ms(h.value_at_quantile(q)))
        })
        .collect()
}

impl Summary {
    /// Summarises a run.
    pub fn new(shape: &Shape, r: &RunResult) -> Summary {
        let h = &r.recorder.latency_us;
        let answered = h.len();
        let secs = r.elapsed.as_secs_f64().max(1e-9);
        Summary {
            label: shape.label.clone(),
            mode: if shape.rate.is_some() {
                "open"
            } else {
                "closed"
            }
            .into(),
            protocol: shape.protocol.clone(),
            connections: shape.connections,
            rate: shape.rate,
            elapsed_s: secs,
            answered,
            throughput_rps: answered as f64 / secs,
            statuses: r.recorder.statuses.clone(),
            errors: r.recorder.errors,
            unexpected: r.unexpected,
            unsent: r.unsent,
            latency_ms: latency(h),
            curve: curve(h),
        }
    }
}

/// The summaries as an aligned text table.
pub fn table(rows: &[Summary]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<12} {:<6} {:<3} {:>5} {:>9} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}  statuses",
        "target",
        "mode",
        "h",
        "conns",
        "answered",
        "req/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms"
    );
    for s in rows {
        let l = &s.latency_ms;
        let statuses: Vec<String> = s.statuses.iter().map(|(c, n)| format!("{c}:{n}")).collect();
        let mut extra = String::new();
        for (name, n) in [
            ("errors", s.errors),
            ("unexpected", s.unexpected),
            ("unsent", s.unsent),
        ] {
            if n > 0 {
                let _ = write!(extra, " {name}={n}");
            }
        }
        let mode = match s.rate {
            Some(r) => format!("{r:.0}/s"),
            None => s.mode.clone(),
        };
        let _ = writeln!(
            out,
            "{:<12} {:<6} {:<3} {:>5} {:>9} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}  {}{extra}",
            s.label, mode, s.protocol, s.connections, s.answered, s.throughput_rps,
            l.p50, l.p90, l.p99, l.p999, l.max, statuses.join(" ")
        );
    }
    out
}

/// A 1-2-5 step that splits `max` into about five intervals.
fn nice_step(max: f64) -> f64 {
    let raw = (max / 5.0).max(1e-6);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

const COLOURS: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

/// Escapes text for SVG.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A latency-by-percentile plot (x in "nines", y linear ms) of every summary.
pub fn svg(rows: &[Summary], title: &str) -> String {
    let (w, h, left, right, top, bottom) = (800.0, 450.0, 70.0, 20.0, 40.0, 60.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let ymax = rows
        .iter()
        .flat_map(|s| s.curve.iter().map(|p| p.1))
        .fold(0.0, f64::max)
        .max(0.001);
    let step = nice_step(ymax);
    let ytop = (ymax / step).ceil() * step;
    let x = |pct: f64| left + pw * (-(1.0 - pct / 100.0).max(1e-5).log10()) / 5.0;
    let y = |v: f64| top + ph * (1.0 - v / ytop);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        w / 2.0,
        esc(title)
    );
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    for k in 0..=((ytop / step).round() as usize) {
        let v = k as f64 * step;
        let (yv, label) = (y(v), format!("{v:.decimals$}"));
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{yv:.1}" y2="{yv:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{label}</text>"##,
            left + pw,
            left - 6.0,
            yv + 4.0
        );
    }
    for (nines, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
        .iter()
        .enumerate()
    {
        let px = left + pw * nines as f64 / 5.0;
        let _ = writeln!(
            s,
            r##"<line x1="{px:.1}" x2="{px:.1}" y1="{top}" y2="{}" stroke="#ddd"/><text x="{px:.1}" y="{}" text-anchor="middle">{label}</text>"##,
            top + ph,
            top + ph + 18.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile</text>"#,
        left + pw / 2.0,
        h - 12.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">latency (ms)</text>"#,
        top + ph / 2.0,
        top + ph / 2.0
    );
    for (i, row) in rows.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points: Vec<String> = row
            .curve
            .iter()
            .map(|(p, v)| format!("{:.1},{:.1}", x(*p), y(*v)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        let ly = top + 16.0 + 18.0 * i as f64;
        let legend = format!(
            "{} ({}, {:.0} req/s, p99 {:.2} ms)",
            row.label,
            row.mode_text(),
            row.throughput_rps,
            row.latency_ms.p99
        );
        let _ = writeln!(
            s,
            r#"<rect x="{}" y="{}" width="14" height="4" fill="{colour}"/><text x="{}" y="{}">{}</text>"#,
            left + 12.0,
            ly - 4.0,
            left + 32.0,
            ly,
            esc(&legend)
        );
    }
    s.push_str("</svg>\n");
    s
}

impl Summary {
    /// "closed, 32 conns" or "open 2000/s, 32 conns".
    fn mode_text(&self) -> String {
        match self.rate {
            Some(r) => format!("open {r:.0}/s, {} {}", self.connections, self.protocol),
            None => format!("closed, {} {}", self.connections, self.protocol),
        }
    }
}

/// The median of some values (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{Live, Recorder};
    use std::time::Duration;

    fn result_with(latencies_us: impl IntoIterator<Item = u64>) -> RunResult {
        let live = Live::default();
        let mut rec = Recorder::default();
        for us in latencies_us {
            rec.record(Ok(200), Duration::from_micros(us), &live);
        }
        rec.record(Ok(403), Duration::from_micros(1), &live);
        rec.record(Err("x".into()), Duration::ZERO, &live);
        RunResult {
            recorder: rec,
            elapsed: Duration::from_secs(2),
            unexpected: 1,
            unsent: 0,
            acked: vec![],
        }
    }

    fn shape() -> Shape {
        Shape {
            label: "sms-ingress".into(),
            protocol: "h1".into(),
            connections: 4,
            rate: None,
        }
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        // 1..=10000 µs, uniformly: p50 = 5 ms, p99 = 9.9 ms, max 10 ms.
        let s = Summary::new(&shape(), &result_with(1..=9999));
        assert_eq!(s.answered, 10_000);
        assert!((s.throughput_rps - 5000.0).abs() < 1e-6);
        let l = s.latency_ms;
        assert!((l.p50 - 5.0).abs() < 0.01, "{l:?}");
        assert!((l.p90 - 9.0).abs() < 0.01, "{l:?}");
        assert!((l.p99 - 9.9).abs() < 0.01, "{l:?}");
        assert!((l.max - 10.0).abs() < 0.01, "{l:?}");
        assert_eq!(s.statuses, BTreeMap::from([(200, 9999), (403, 1)]));
        assert_eq!(s.errors, 1);
        assert!(s
            .curve
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
    }

    #[test]
    fn table_json_and_svg_carry_the_figures() {
        let s = Summary::new(&shape(), &result_with([1000, 2000, 3000]));
        let t = table(std::slice::from_ref(&s));
        assert!(t.lines().next().unwrap().contains("p99.9 ms"));
        assert!(
            t.contains("sms-ingress")
                && t.contains("200:3 403:1")
                && t.contains("errors=1 unexpected=1")
        );
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(j["answered"], 4);
        assert_eq!(j["statuses"]["403"], 1);
        assert_eq!(j["mode"], "closed");
        assert!(j["latency_ms"]["p99"].as_f64().unwrap() >= 2.9);
        assert!(j.get("curve").is_none());
        let mut other = s.clone();
        other.label = "base<line>".into();
        let svg = svg(&[s, other], "t & t");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(
            svg.contains("base&lt;line&gt;") && svg.contains("t &amp; t") && svg.contains("99.9%")
        );
        assert!(
            svg.contains(">3<") && !svg.contains("00000"),
            "axis labels without float noise"
        );
    }

    #[test]
    fn helpers() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(nice_step(10.0), 2.0);
        assert_eq!(nice_step(3.2), 1.0);
        assert_eq!(nice_step(0.9), 0.2);
    }
}

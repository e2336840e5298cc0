//! The sink's own flush time during a run, from the server's `/metrics`: SPEC section 7
//! bounds the open-loop p99 by the bare server's p99 plus the sink's p99 flush (the one
//! sync a durable 200 must wait for), so `ratio --half-rate` reads the histogram
//! `sms_ingress_sink_flush_seconds` before and after each sms-ingress round and takes the
//! p99 of what the round added.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::time::Duration;

/// The flush histogram's cumulative counts by upper bound (seconds), every queue summed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Flushes {
    buckets: Vec<(f64, f64)>,
}

impl Flushes {
    /// Scrapes `http://ADDR/metrics` (plain HTTP, the metrics listener).
    pub fn scrape(addr: &str) -> Result<Flushes> {
        let mut s = std::net::TcpStream::connect(addr)
            .with_context(|| format!("connecting to the metrics listener {addr}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
        let mut text = String::new();
        s.read_to_string(&mut text)
            .with_context(|| format!("reading {addr}/metrics"))?;
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            bail!("{addr}/metrics: no HTTP answer");
        };
        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
            bail!(
                "{addr}/metrics: {}",
                head.lines().next().unwrap_or_default()
            );
        }
        Ok(Flushes::parse(body))
    }

    /// The `sms_ingress_sink_flush_seconds_bucket` lines of an exposition, summed by `le`.
    pub fn parse(exposition: &str) -> Flushes {
        let mut buckets: Vec<(f64, f64)> = Vec::new();
        for line in exposition.lines() {
            let Some(rest) = line.strip_prefix("sms_ingress_sink_flush_seconds_bucket{") else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once("} ") else {
                continue;
            };
            let le = labels
                .split(',')
                .find_map(|l| l.trim().strip_prefix("le=\""))
                .and_then(|v| v.strip_suffix('"'))
                .and_then(|v| match v {
                    "+Inf" => Some(f64::INFINITY),
                    v => v.parse().ok(),
                });
            let (Some(le), Ok(count)) = (le, value.trim().parse::<f64>()) else {
                continue;
            };
            match buckets.iter_mut().find(|(b, _)| *b == le) {
                Some((_, c)) => *c += count,
                None => buckets.push((le, count)),
            }
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Flushes { buckets }
    }

    /// What happened between `before` and this scrape.
    pub fn since(&self, before: &Flushes) -> Flushes {
        let buckets = self
            .buckets
            .iter()
            .map(|&(le, c)| {
                let was = before
                    .buckets
                    .iter()
                    .find(|(b, _)| *b == le)
                    .map_or(0.0, |(_, c)| *c);
                (le, c - was)
            })
            .collect();
        Flushes { buckets }
    }

    /// How many flushes the histogram counts.
    pub fn count(&self) -> f64 {
        self.buckets.last().map_or(0.0, |(_, c)| *c)
    }

    /// The q-quantile in milliseconds, interpolated inside its bucket as Prometheus's
    /// `histogram_quantile` does (the largest finite bound if it falls in `+Inf`); `None`
    /// without flushes.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut prev = (0.0, 0.0);
        for &(le, c) in &self.buckets {
            if c >= rank {
                if le.is_infinite() {
                    return Some(prev.0 * 1000.0);
                }
                let inside = (c - prev.1).max(f64::MIN_POSITIVE);
                return Some((prev.0 + (le - prev.0) * (rank - prev.1) / inside) * 1000.0);
            }
            prev = (le, c);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = "\
# TYPE sms_ingress_sink_flush_seconds histogram
sms_ingress_sink_flush_seconds_bucket{queue=\"o/a\",le=\"0.001\"} 50
sms_ingress_sink_flush_seconds_bucket{queue=\"o/a\",le=\"0.005\"} 90
sms_ingress_sink_flush_seconds_bucket{queue=\"o/a\",le=\"+Inf\"} 100
sms_ingress_sink_flush_seconds_bucket{queue=\"o/b\",le=\"0.001\"} 0
sms_ingress_sink_flush_seconds_bucket{queue=\"o/b\",le=\"0.005\"} 0
sms_ingress_sink_flush_seconds_bucket{queue=\"o/b\",le=\"+Inf\"} 100
sms_ingress_sink_flush_seconds_sum{queue=\"o/a\"} 0.3
";

    #[test]
    fn quantiles_of_what_a_round_added_summed_over_queues() {
        let after = Flushes::parse(SCRAPE);
        assert_eq!(after.count(), 200.0);
        // 50 of 200 under 1 ms, 90 under 5 ms: the median is inside (1, 5] ms.
        let p50 = after.quantile_ms(0.5).unwrap();
        assert!((1.0..=5.0).contains(&p50), "{p50}");
        // The p99 falls in +Inf: the largest finite bound.
        assert_eq!(after.quantile_ms(0.99), Some(5.0));
        let before = Flushes::parse(&SCRAPE.replace("} 100", "} 90"));
        let round = after.since(&before);
        assert_eq!(round.count(), 20.0);
        assert_eq!(Flushes::default().quantile_ms(0.99), None);
    }
}

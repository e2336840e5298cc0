//! `sms-ingress status`: one screen for the person on call — the running server's
//! readiness, snapshot, queues and delivery routes, read from its own metrics listener
//! (the same figures Prometheus and the alerts see).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long the server has to answer.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Why the status could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("metrics listener {addr} not reachable (is the server running?): {source}")]
    Unreachable {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("metrics listener {addr} answered {status:?} to GET /metrics")]
    BadAnswer { addr: SocketAddr, status: String },
}

/// One sample of the exposition: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The address to scrape for a `metrics.listen` (a wildcard address is reached on loopback).
pub fn scrape_addr(listen: SocketAddr) -> SocketAddr {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}

/// `GET /metrics` of the server at `addr`.
pub fn scrape(addr: SocketAddr) -> Result<String, StatusError> {
    let io = |source| StatusError::Unreachable { addr, source };
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(io)?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .map_err(io)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map_err(io)?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or("").to_string();
    if status.split(' ').nth(1) != Some("200") {
        return Err(StatusError::BadAnswer { addr, status });
    }
    Ok(body.to_string())
}

/// The samples of a Prometheus text exposition (comments skipped).
pub fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(p) => p,
            None => continue,
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => (name, labels(rest.trim_end_matches('}'))),
        };
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    out
}

/// `a="x",b="y"` → {a: x, b: y} (values unescaped).
fn labels(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = text;
    while let Some((name, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => {}
                },
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(name.trim_start_matches(',').to_string(), value);
        rest = &after[end..];
    }
    out
}

/// The figures of one screen.
struct View<'a>(&'a [Sample]);

impl View<'_> {
    fn one(&self, name: &str) -> Option<f64> {
        self.0.iter().find(|s| s.name == name).map(|s| s.value)
    }

    /// Per value of `label`: the samples of `name` summed over their other labels.
    fn by(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for s in self.0.iter().filter(|s| s.name == name) {
            if let Some(v) = s.labels.get(label) {
                *out.entry(v.clone()).or_insert(0.0) += s.value;
            }
        }
        out
    }
}

fn bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Whether the server says it is ready (`sms_ingress_ready`).
pub fn ready(samples: &[Sample]) -> bool {
    View(samples).one("sms_ingress_ready") == Some(1.0)
}

/// The screen, as text.
pub fn render(addr: SocketAddr, samples: &[Sample]) -> String {
    let v = View(samples);
    let mut out = String::new();
    let state = if ready(samples) {
        "READY"
    } else {
        "NOT READY (GET /readyz on server.listen says why)"
    };
    let _ = writeln!(out, "sms-ingress (metrics {addr}): {state}");
    if let Some(connected) = v.one("sms_ingress_nats_connected") {
        let _ = writeln!(
            out,
            "nats        {}",
            if connected == 1.0 {
                "connected"
            } else {
                "DISCONNECTED"
            }
        );
    }
    let _ = writeln!(
        out,
        "snapshot    version {}  numbers {}  age {:.1} s",
        v.one("sms_ingress_snapshot_version").unwrap_or(0.0),
        v.one("sms_ingress_snapshot_numbers").unwrap_or(0.0),
        v.one("sms_ingress_snapshot_age_seconds").unwrap_or(0.0),
    );
    if let Some(synced) = v.one("sms_ingress_control_kv_synced") {
        let _ = writeln!(
            out,
            "control kv  {}",
            if synced == 1.0 {
                "synced"
            } else {
                "NOT SYNCED"
            }
        );
    }
    let capacity = v.one("sms_ingress_queue_capacity").unwrap_or(0.0);
    let limit = v.one("sms_ingress_spool_max_queue_bytes").unwrap_or(0.0);
    let depth = v.by("sms_ingress_queue_depth", "queue");
    let spool = v.by("sms_ingress_spool_bytes", "queue");
    let acked = v.by("sms_ingress_acknowledged_total", "queue");
    let mut queues: Vec<&String> = depth.keys().chain(spool.keys()).collect();
    queues.sort();
    queues.dedup();
    let _ = writeln!(
        out,
        "queues      {}",
        if queues.is_empty() {
            "none open yet"
        } else {
            ""
        }
    );
    for q in queues {
        let on_disk = spool.get(q).map_or("-".to_string(), |b| bytes(*b));
        let of = if limit > 0.0 {
            format!(" of {}", bytes(limit))
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "  {q:<32} depth {:>5}/{capacity}  spool {on_disk}{of}  acknowledged {}",
            depth.get(q).copied().unwrap_or(0.0),
            acked.get(q).copied().unwrap_or(0.0),
        );
    }
    let lag = v.by("sms_ingress_delivery_lag_records", "route");
    if !lag.is_empty() {
        let lag_s = v.by("sms_ingress_delivery_lag_seconds", "route");
        let dead = v.by("sms_ingress_delivery_dead_letters_total", "route");
        let _ = writeln!(out, "delivery");
        let mut delivered = BTreeMap::new();
        let mut failed = BTreeMap::new();
        for s in samples
            .iter()
            .filter(|s| s.name == "sms_ingress_delivery_attempts_total")
        {
            if let (Some(route), Some(result)) = (s.labels.get("route"), s.labels.get("result")) {
                let to = if result == "delivered" {
                    &mut delivered
                } else {
                    &mut failed
                };
                *to.entry(route.as_str()).or_insert(0.0) += s.value;
            }
        }
        for (route, records) in &lag {
            let delivered = delivered.get(route.as_str()).copied().unwrap_or(0.0);
            let failed = failed.get(route.as_str()).copied().unwrap_or(0.0);
            let _ = writeln!(
                out,
                "  {route:<32} lag {records} records, {:.1} s  delivered {delivered}  failed attempts {failed}  dead letters {}",
                lag_s.get(route).copied().unwrap_or(0.0),
                dead.get(route).copied().unwrap_or(0.0),
            );
        }
    }
    let statuses = v.by("sms_ingress_requests_total", "status");
    let line: Vec<String> = statuses
        .iter()
        .filter(|(_, n)| **n > 0.0)
        .map(|(s, n)| format!("{s}: {n}"))
        .collect();
    let _ = writeln!(out, "requests    {}", line.join("  "));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_exposition_and_renders_the_screen() {
        let text = "# HELP sms_ingress_ready 1 while /readyz answers 200\n\
            # TYPE sms_ingress_ready gauge\n\
            sms_ingress_ready 1\n\
            sms_ingress_snapshot_version 7\n\
            sms_ingress_queue_capacity 4096\n\
            sms_ingress_spool_max_queue_bytes 4294967296\n\
            sms_ingress_queue_depth{queue=\"org-a/support\"} 3\n\
            sms_ingress_spool_bytes{queue=\"org-a/support\"} 2048\n\
            sms_ingress_delivery_lag_records{route=\"routing\"} 12\n\
            sms_ingress_delivery_attempts_total{route=\"routing\",result=\"delivered\"} 40\n\
            sms_ingress_delivery_attempts_total{route=\"routing\",result=\"timeout\"} 2\n\
            sms_ingress_requests_total{route=\"mo\",status=\"200\"} 40\n\
            sms_ingress_requests_total{route=\"status\",status=\"200\"} 2\n\
            sms_ingress_requests_total{route=\"mo\",status=\"403\"} 1\n\
            sms_ingress_requests_total{route=\"mo\",status=\"503\"} 0\n\
            weird{a=\"x\\\"y\",b=\"z\"} 1\n";
        let samples = parse(text);
        assert!(ready(&samples));
        let weird = samples.iter().find(|s| s.name == "weird").unwrap();
        assert_eq!(weird.labels["a"], "x\"y");
        assert_eq!(weird.labels["b"], "z");
        let screen = render("127.0.0.1:9090".parse().unwrap(), &samples);
        assert!(screen.contains(": READY"), "{screen}");
        assert!(screen.contains("version 7"), "{screen}");
        assert!(
            screen.contains("depth     3/4096  spool 2.0 KiB of 4.0 GiB"),
            "{screen}"
        );
        assert!(screen.contains("lag 12 records"), "{screen}");
        assert!(
            screen.contains("delivered 40  failed attempts 2"),
            "{screen}"
        );
        assert!(screen.contains("200: 42  403: 1\n"), "{screen}");
        assert!(!ready(&parse("sms_ingress_ready 0\n")));
        assert_eq!(
            scrape_addr("0.0.0.0:9090".parse().unwrap()),
            "127.0.0.1:9090".parse().unwrap()
        );
    }
}

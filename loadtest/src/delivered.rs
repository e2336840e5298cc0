//! The routing side of a load test: `sink-server` (the test kit's receiver as a process:
//! it verifies each delivery's Standard Webhooks signature, can fail a share of first
//! attempts or answer late, and logs what it accepted as NDJSON), and the checks on that
//! log: every acknowledged message delivered at least once, each conversation's records
//! first delivered in spool order, and the end-to-end latency (Twilio POST → 2xx at
//! routing) percentiles.

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// One line of the sink-server's log, as the checks need it.
#[derive(Debug, Clone)]
struct Line {
    key: String,
    conversation: (String, String),
    offset: u64,
    latency_ms: i64,
}

/// The acked-file key of a delivery body.
fn key(body: &serde_json::Value) -> Option<String> {
    let sid = body["message_sid"].as_str()?;
    Some(crate::verify::acked_key(
        sid,
        body["message_status"].as_str(),
    ))
}

/// Milliseconds since the epoch of an RFC 3339 time.
fn epoch_ms(rfc3339: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339(rfc3339).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as i64)
}

fn read(path: &Path) -> Result<Vec<Line>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading delivered file {}", path.display()))?;
    // The sink-server may be writing its last line: only complete lines count.
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    let mut out = Vec::new();
    for (i, l) in complete.lines().enumerate().filter(|(_, l)| !l.is_empty()) {
        let v: serde_json::Value = serde_json::from_str(l)
            .with_context(|| format!("{}: line {} is not JSON", path.display(), i + 1))?;
        let body = &v["body"];
        let (Some(key), Some(received)) = (key(body), body["received_at"].as_str()) else {
            continue;
        };
        let kind = body["kind"].as_str().unwrap_or("");
        let ours = body["number"].as_str().unwrap_or("").to_string();
        let customer = if kind == "status" {
            &body["to"]
        } else {
            &body["from"]
        };
        out.push(Line {
            key,
            conversation: (
                format!(
                    "{}/{}/{ours}",
                    body["org"].as_str().unwrap_or(""),
                    body["queue"].as_str().unwrap_or("")
                ),
                customer.as_str().unwrap_or("").to_string(),
            ),
            offset: body["offset"].as_u64().unwrap_or(0),
            latency_ms: v["at_ms"].as_i64().unwrap_or(0) - epoch_ms(received).unwrap_or(0),
        });
    }
    Ok(out)
}

/// What the delivered log says of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub acked: usize,
    pub delivered: usize,
    /// Acknowledged keys never delivered.
    pub lost: usize,
    /// Records first delivered before an earlier record of their conversation.
    pub out_of_order: usize,
    /// Deliveries of a key after its first (at least once: a crash may repeat some).
    pub repeated: usize,
    /// End-to-end latency of first deliveries of acked keys, ms: p50, p90, p99, max.
    pub latency_ms: [u64; 4],
    pub lost_examples: Vec<String>,
}

impl Delivery {
    /// True when every acknowledged message was delivered, in conversation order.
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.out_of_order == 0
    }

    /// The one-line result.
    pub fn line(&self) -> String {
        let [p50, p90, p99, max] = self.latency_ms;
        format!(
            "delivered: lost={} out_of_order={} acked={} delivered={} repeated={} e2e_ms p50={p50} p90={p90} p99={p99} max={max}",
            self.lost, self.out_of_order, self.acked, self.delivered, self.repeated
        )
    }
}

/// Checks the delivered log against the acked keys.
pub fn check(acked: &HashSet<String>, path: &Path) -> Result<Delivery> {
    let lines = read(path)?;
    let mut first: HashMap<&str, &Line> = HashMap::new();
    let mut repeated = 0;
    let mut last_offset: HashMap<&(String, String), u64> = HashMap::new();
    let mut out_of_order = 0;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000, 3).expect("bounds");
    for line in &lines {
        if first.insert(&line.key, line).is_some() {
            repeated += 1;
            continue;
        }
        let last = last_offset.entry(&line.conversation).or_insert(0);
        if line.offset < *last {
            out_of_order += 1;
        }
        *last = (*last).max(line.offset);
        if acked.contains(&line.key) {
            let _ = hist.record(line.latency_ms.clamp(1, 3_600_000) as u64);
        }
    }
    let mut lost: Vec<&String> = acked
        .iter()
        .filter(|k| !first.contains_key(k.as_str()))
        .collect();
    lost.sort();
    let q = |p: f64| {
        if hist.is_empty() {
            0
        } else {
            hist.value_at_quantile(p)
        }
    };
    Ok(Delivery {
        acked: acked.len(),
        delivered: first.len(),
        lost: lost.len(),
        out_of_order,
        repeated,
        latency_ms: [q(0.5), q(0.9), q(0.99), hist.max()],
        lost_examples: lost.iter().take(5).map(|k| k.to_string()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(sid: &str, from: &str, offset: u64, at_ms: i64) -> String {
        serde_json::json!({"webhook_id": format!("msg_{sid}"), "at_ms": at_ms, "body": {
            "message_sid": sid, "kind": "inbound", "org": "o", "queue": "q", "number": "+1",
            "from": from, "offset": offset, "received_at": "2026-12-02T10:00:00.000Z"}})
        .to_string()
    }

    #[test]
    fn losses_order_and_latency() {
        let base = epoch_ms("2026-12-02T10:00:00.000Z").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("delivered.ndjson");
        let text = [
            line("SM1", "+a", 0, base + 10),
            line("SM2", "+b", 100, base + 20),
            line("SM3", "+a", 200, base + 30),
            line("SM1", "+a", 0, base + 40),  // a redelivery
            line("SM5", "+b", 50, base + 50), // before SM2 in the log: out of order
        ]
        .join("\n");
        // The sink-server is still writing a line: it is not read (nor an error).
        let text = format!("{text}\n{{\"webhook_id\":\"msg_SM4\",\"at_ms\":1");
        std::fs::write(&path, text).unwrap();
        let acked: HashSet<String> = ["SM1", "SM2", "SM3", "SM4"].map(String::from).into();
        let d = check(&acked, &path).unwrap();
        assert_eq!(
            (d.lost, d.out_of_order, d.repeated, d.delivered),
            (1, 1, 1, 4)
        );
        assert_eq!(d.lost_examples, ["SM4"]);
        assert_eq!(d.latency_ms[3], 30, "the slowest acked first delivery");
        assert!(!d.ok());
    }
}

//! `verify`: reads every queue's spool and the run's acked keys, and reports what was
//! acknowledged but is not stored (lost) and what is stored more than once (duplicated).

use anyhow::{Context, Result};
use sms_ingress::sink::spool::SpoolReader;
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// The key `run` writes to the acked file for each 200: `SID`, or `SID:status` for a
/// report (one account per plan, so the SID needs no account).
pub fn acked_key(message_sid: &str, message_status: Option<&str>) -> String {
    match message_status {
        Some(status) => format!("{message_sid}:{status}"),
        None => message_sid.to_string(),
    }
}

/// The comparison of acknowledged keys with the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Distinct keys acknowledged with 200 (a retry's 200 counts once).
    pub acked: usize,
    /// Records in the spool, all queues.
    pub stored: usize,
    /// Acknowledged keys with no record.
    pub lost: usize,
    /// Acknowledged keys with more than one record.
    pub duplicated: usize,
    /// A few lost keys, for the operator.
    pub lost_examples: Vec<String>,
    /// A few duplicated keys, for the operator.
    pub duplicated_examples: Vec<String>,
}

impl Verdict {
    /// True when nothing acknowledged was lost or stored twice.
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.duplicated == 0
    }

    /// The one-line result, `lost=N duplicated=M` first.
    pub fn line(&self) -> String {
        format!(
            "lost={} duplicated={} acked={} stored={}",
            self.lost, self.duplicated, self.acked, self.stored
        )
    }
}

const EXAMPLES: usize = 5;

/// Compares acknowledged keys with the keys of the stored records.
pub fn compare(acked: &HashSet<String>, stored: impl IntoIterator<Item = String>) -> Verdict {
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut total = 0;
    for key in stored {
        total += 1;
        if acked.contains(&key) {
            *counts.entry(key).or_default() += 1;
        }
    }
    let mut lost: Vec<&String> = acked.iter().filter(|k| !counts.contains_key(*k)).collect();
    let mut dup: Vec<&String> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(k, _)| k)
        .collect();
    lost.sort();
    dup.sort();
    Verdict {
        acked: acked.len(),
        stored: total,
        lost: lost.len(),
        duplicated: dup.len(),
        lost_examples: lost.iter().take(EXAMPLES).map(|k| k.to_string()).collect(),
        duplicated_examples: dup.iter().take(EXAMPLES).map(|k| k.to_string()).collect(),
    }
}

/// The acked file's keys (one per line; repeats from retries collapse).
pub fn read_acked(path: &Path) -> Result<HashSet<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading acked file {}", path.display()))?;
    Ok(text
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// The dedup key of every record of every queue under the spool root.
pub fn spool_keys(dir: &Path) -> Result<Vec<String>> {
    let mut keys = Vec::new();
    std::fs::read_dir(dir).with_context(|| format!("reading spool dir {}", dir.display()))?;
    for queue in sms_ingress::sink::spool::queues::list(dir) {
        let mut reader =
            SpoolReader::open(dir, &queue).with_context(|| format!("opening queue {queue}"))?;
        while let Some((_, env)) = reader
            .next_record()
            .with_context(|| format!("reading queue {queue}"))?
        {
            keys.push(acked_key(&env.message_sid, env.message_status.as_deref()));
        }
    }
    Ok(keys)
}

/// The dedup key of every envelope in a JetStream stream (all queues), read with the same
/// ordered consumer as `sms-ingress nats tail`.
pub async fn nats_keys(cfg: &sms_ingress::config::NatsConfig) -> Result<Vec<String>> {
    let mut ndjson = Vec::new();
    sms_ingress::sink::nats::tail(cfg, "*", 1, false, &mut ndjson)
        .await
        .with_context(|| format!("reading stream {}", cfg.stream))?;
    let mut keys = Vec::new();
    for line in String::from_utf8_lossy(&ndjson).lines() {
        let v: serde_json::Value = serde_json::from_str(line).context("tail printed a bad line")?;
        let sid = v["message_sid"].as_str().unwrap_or_default();
        keys.push(acked_key(sid, v["message_status"].as_str()));
    }
    Ok(keys)
}

/// Reads both sides and compares them.
pub fn verify(spool_dir: &Path, acked_file: &Path) -> Result<Verdict> {
    let acked = read_acked(acked_file)?;
    Ok(compare(&acked, spool_keys(spool_dir)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sms_ingress::envelope::Envelope;
    use sms_ingress::sink::spool::SpoolWriter;
    use sms_ingress::sink::QueueSink;

    fn envelope(sid: &str, status: Option<&str>) -> Envelope {
        sms_ingress_testkit::fixtures::delivery(sid, status)
    }

    /// Writes a spool over two queues and an acked file, then verifies it.
    fn scenario(stored: &[(&str, &str, Option<&str>)], acked: &[&str]) -> Verdict {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        for queue in ["org/loadtest-0", "org/loadtest-1"] {
            let envs: Vec<Envelope> = stored
                .iter()
                .filter(|(q, _, _)| queue.ends_with(*q))
                .map(|(_, sid, st)| envelope(sid, *st))
                .collect();
            let mut w = SpoolWriter::open(&spool, queue, 1 << 20).unwrap();
            w.write_batch(&envs.iter().collect::<Vec<_>>()).unwrap();
        }
        let acked_file = dir.path().join("acked.txt");
        std::fs::write(&acked_file, acked.join("\n")).unwrap();
        verify(&spool, &acked_file).unwrap()
    }

    #[test]
    fn all_acked_stored_once_is_ok() {
        let v = scenario(
            &[
                ("loadtest-0", "SM1", None),
                ("loadtest-1", "SM2", Some("sent")),
                ("loadtest-1", "SM2", Some("delivered")),
            ],
            // SM1 twice: a retry's 200 counts once.
            &["SM1", "SM2:sent", "SM2:delivered", "SM1"],
        );
        assert!(v.ok(), "{v:?}");
        assert_eq!(v.line(), "lost=0 duplicated=0 acked=3 stored=3");
    }

    #[test]
    fn catches_a_planted_loss() {
        let v = scenario(&[("loadtest-0", "SM1", None)], &["SM1", "SM9"]);
        assert!(!v.ok());
        assert_eq!((v.lost, v.duplicated), (1, 0));
        assert_eq!(v.lost_examples, ["SM9"]);
    }

    #[test]
    fn catches_a_planted_duplicate_across_queues() {
        let v = scenario(
            &[
                ("loadtest-0", "SM1", None),
                ("loadtest-1", "SM1", None),
                ("loadtest-1", "SM2", Some("sent")),
            ],
            &["SM1", "SM2:sent"],
        );
        assert!(!v.ok());
        assert_eq!((v.lost, v.duplicated), (0, 1));
        assert_eq!(v.duplicated_examples, ["SM1"]);
    }

    #[test]
    fn records_not_acked_by_this_run_are_not_judged() {
        // Stored twice but never acknowledged by this run (an earlier run, or a 200 lost in transit).
        let v = scenario(
            &[("loadtest-0", "SM7", None), ("loadtest-0", "SM7", None)],
            &[],
        );
        assert!(v.ok());
        assert_eq!(v.stored, 2);
    }
}

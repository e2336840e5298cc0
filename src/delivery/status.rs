//! What a route reports: per queue its cursor, what waits and what is in flight, the age
//! of its oldest undelivered record, and the route's last error — as metrics, and in
//! `<delivery.dir>/<route>/status.json` for `sms-ingress delivery status`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often the status file is written, at most.
const WRITE_EVERY: Duration = Duration::from_secs(1);

/// One queue of a route, as its worker last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    /// Everything before this offset is delivered (or dead-lettered).
    pub cursor: u64,
    /// Records read and not yet settled.
    pub pending: u64,
    /// Conversations with a record in flight.
    pub in_flight: u64,
    /// Records durable in the spool and not yet read (estimated from their bytes).
    pub unread_records: u64,
    /// Received-at (ms since the epoch) of the oldest record not yet settled.
    pub oldest_ms: Option<i64>,
}

/// The status file's content.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StatusFile {
    pub route: String,
    /// When the server wrote it (RFC 3339).
    pub updated_at: String,
    pub queues: BTreeMap<String, QueueStats>,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
}

/// A route's live status, shared by its queues' workers.
pub struct RouteState {
    path: PathBuf,
    inner: Mutex<Inner>,
    lag_records: metrics::Gauge,
    lag_seconds: metrics::Gauge,
}

struct Inner {
    file: StatusFile,
    written: Option<Instant>,
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

impl RouteState {
    /// The state of route `name`, written to `path`.
    pub fn new(name: &str, path: PathBuf) -> RouteState {
        RouteState {
            path,
            inner: Mutex::new(Inner {
                file: StatusFile {
                    route: name.to_string(),
                    ..StatusFile::default()
                },
                written: None,
            }),
            lag_records: metrics::gauge!("sms_ingress_delivery_lag_records", "route" => name.to_string()),
            lag_seconds: metrics::gauge!("sms_ingress_delivery_lag_seconds", "route" => name.to_string()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How far the route has delivered `queue` (0 until its worker reports).
    pub fn cursor_of(&self, queue: &str) -> u64 {
        self.lock().file.queues.get(queue).map_or(0, |q| q.cursor)
    }

    /// The route's last error, for `delivery status` (never a body or a secret).
    pub fn failed(&self, error: &str) {
        let mut inner = self.lock();
        inner.file.last_error = Some(error.to_string());
        inner.file.last_error_at = Some(now_rfc3339());
    }

    /// A released queue's worker stopped (all delivered): it leaves the status and the
    /// lag gauges; its cursor file stays for when the queue is used again.
    pub fn forget(&self, queue: &str) {
        let mut inner = self.lock();
        inner.file.queues.remove(queue);
        inner.written = None;
        self.refresh(inner);
    }

    /// A queue's worker reports; the gauges follow, and the file at most every second.
    pub fn update(&self, queue: &str, stats: QueueStats) {
        let mut inner = self.lock();
        inner.file.queues.insert(queue.to_string(), stats);
        self.refresh(inner);
    }

    /// Sets the gauges from the queues' stats, and writes the file at most every second.
    fn refresh(&self, mut inner: std::sync::MutexGuard<'_, Inner>) {
        let (records, seconds) = lag(&inner.file);
        self.lag_records.set(records as f64);
        self.lag_seconds.set(seconds);
        if inner.written.is_some_and(|w| w.elapsed() < WRITE_EVERY) {
            return;
        }
        inner.written = Some(Instant::now());
        inner.file.updated_at = now_rfc3339();
        let text = serde_json::to_vec_pretty(&inner.file).expect("status serialises");
        drop(inner);
        // Not synced: a status is a report, rewritten every second.
        let tmp = self.path.with_extension("json.tmp");
        let written = self
            .path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&tmp, text))
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            tracing::warn!(path = %self.path.display(), error = %e, "delivery: status file not written");
        }
    }
}

/// The route's lag: records not yet delivered (all queues), and the age in seconds of the
/// oldest of them.
pub fn lag(file: &StatusFile) -> (u64, f64) {
    let records = file
        .queues
        .values()
        .map(|q| q.pending + q.unread_records)
        .sum();
    let now_ms = crate::telemetry::unix_now() * 1000.0;
    let oldest = file.queues.values().filter_map(|q| q.oldest_ms).min();
    let seconds = oldest.map_or(0.0, |ms| ((now_ms - ms as f64) / 1000.0).max(0.0));
    (records, seconds)
}

//! Retention: a queue's oldest segments are deleted once every consumer of the queue (its
//! delivery routes and consumer groups) has passed their end and they are older than
//! `sink.retain_secs`; a queue with no consumer keeps them for `retain_secs`. The segment
//! being written is never deleted, nor anything after one that must stay, so the log stays
//! one run of offsets. A reader that holds a deleted segment open keeps reading it (the
//! file lives on until closed); one that starts before the first segment is told so.

use super::feed::Feed;
use super::segments::{io_at, list_segments, segment_path, SpoolError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// One segment as retention sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub base: u64,
    /// Seconds since it was last written.
    pub age_secs: u64,
    pub bytes: u64,
}

/// How many of the oldest segments may go: each must be followed by another (the last is
/// being written), end (the next one's base) at or before `passed` (every consumer's
/// position; `None`: the queue has no consumer), and be `retain_secs` old.
pub fn deletable(segments: &[Segment], passed: Option<u64>, retain_secs: u64) -> usize {
    segments
        .windows(2)
        .take_while(|w| {
            let end = w[1].base;
            passed.map_or(true, |p| end <= p) && w[0].age_secs >= retain_secs
        })
        .count()
}

/// The open queues of the spool, by `ORG/QUEUE`, with their feeds.
#[derive(Default)]
pub struct Spools {
    feeds: Mutex<BTreeMap<String, Arc<Feed>>>,
}

impl Spools {
    /// A queue's spool opened.
    pub fn add(&self, queue: &str, feed: Arc<Feed>) {
        self.lock().insert(queue.to_string(), feed);
    }

    /// The open queues and their feeds. A closed queue (released) stays while a consumer
    /// of this process still delivers it, then is forgotten, with its metric series.
    pub fn all(&self) -> Vec<(String, Arc<Feed>)> {
        let mut feeds = self.lock();
        feeds.retain(|queue, feed| {
            let keep = !feed.is_closed() || Arc::strong_count(feed) > 1;
            if !keep {
                crate::telemetry::forget_queue(queue);
            }
            keep
        });
        feeds.iter().map(|(q, f)| (q.clone(), f.clone())).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Feed>>> {
        self.feeds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The queue's segments, oldest first.
fn segments(qdir: &Path) -> Result<Vec<Segment>, SpoolError> {
    let now = SystemTime::now();
    let mut out = Vec::new();
    for base in list_segments(qdir)? {
        let path = segment_path(qdir, base);
        let meta = std::fs::metadata(&path).map_err(io_at(&path))?;
        let age = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .unwrap_or(Duration::ZERO);
        out.push(Segment {
            base,
            age_secs: age.as_secs(),
            bytes: meta.len(),
        });
    }
    Ok(out)
}

/// Deletes what `deletable` allows of one queue; returns (segments, bytes) deleted.
pub fn apply(
    dir: &Path,
    queue: &str,
    passed: Option<u64>,
    retain_secs: u64,
) -> Result<(usize, u64), SpoolError> {
    let qdir: PathBuf = dir.join(queue);
    let segs = segments(&qdir)?;
    let n = deletable(&segs, passed, retain_secs);
    let mut bytes = 0;
    for s in &segs[..n] {
        let path = segment_path(&qdir, s.base);
        std::fs::remove_file(&path).map_err(io_at(&path))?;
        bytes += s.bytes;
    }
    if n > 0 {
        crate::fsutil::sync_dir(&qdir).map_err(io_at(&qdir))?;
    }
    Ok((n, bytes))
}

/// How often retention looks at every queue.
const EVERY: Duration = Duration::from_secs(5);

/// Where every queue's consumers are: `positions(queue)` lists each one's offset (empty:
/// the queue has no consumer).
pub type Positions = Arc<dyn Fn(&str) -> Vec<u64> + Send + Sync>;

/// Runs retention over every open queue, every few seconds, for as long as the process runs.
pub async fn run(spools: Arc<Spools>, dir: PathBuf, retain_secs: u64, positions: Positions) {
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tick.tick().await;
        let (spools, dir, positions) = (spools.clone(), dir.clone(), positions.clone());
        let _ =
            tokio::task::spawn_blocking(move || pass(&spools, &dir, retain_secs, &positions)).await;
    }
}

/// One pass over every queue.
fn pass(spools: &Spools, dir: &Path, retain_secs: u64, positions: &Positions) {
    for (queue, feed) in spools.all() {
        let passed = positions(&queue).into_iter().min();
        match apply(dir, &queue, passed, retain_secs) {
            Ok((0, _)) => {}
            Ok((n, bytes)) => {
                feed.resize(0, bytes);
                metrics::counter!("sms_ingress_spool_segments_deleted_total", "queue" => queue.clone())
                    .increment(n as u64);
                tracing::info!(
                    queue,
                    segments = n,
                    bytes,
                    "spool: retention deleted segments every consumer has passed"
                );
            }
            Err(e) => tracing::warn!(queue, error = %e, "spool: retention pass failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(base: u64, age_secs: u64) -> Segment {
        Segment {
            base,
            age_secs,
            bytes: 100,
        }
    }

    #[test]
    fn passed_and_old_enough_from_the_front_never_the_last() {
        let segs = [seg(0, 100), seg(100, 100), seg(200, 100), seg(300, 0)];
        assert_eq!(
            deletable(&segs, Some(300), 50),
            3,
            "all passed but the last"
        );
        assert_eq!(
            deletable(&segs, Some(1_000), 50),
            3,
            "the last is never deleted"
        );
        assert_eq!(
            deletable(&segs, Some(250), 50),
            2,
            "the third ends past 250"
        );
        assert_eq!(
            deletable(&segs, Some(99), 50),
            0,
            "an undelivered one is kept however old"
        );
        assert_eq!(deletable(&segs, Some(300), 500), 0, "too young");
        assert_eq!(deletable(&segs, None, 50), 3, "no consumer: age alone");
        let young_first = [seg(0, 10), seg(100, 100), seg(200, 0)];
        assert_eq!(
            deletable(&young_first, Some(200), 50),
            0,
            "only a prefix goes"
        );
        assert_eq!(deletable(&[seg(0, 1000)], None, 0), 0);
    }
}

//! A queue's records of the last `window`, read back at start so that deduplication
//! survives a restart (SPEC 2): a Twilio retry of a delivery stored before the restart is
//! still a duplicate. Only segments written to within the window are read (a segment's
//! modification time is its last write), so the cost is the window's records, not the log.

use super::reader::SpoolReader;
use super::segments::{io_at, list_segments, segment_path, SpoolError};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Each record of `queue` received within `window` of now: its dedup key and its age.
pub(crate) fn recent(
    dir: &Path,
    queue: &str,
    window: Duration,
    mut each: impl FnMut(String, Duration),
) -> Result<u64, SpoolError> {
    let qdir = dir.join(queue);
    let now = SystemTime::now();
    let since = now.checked_sub(window).unwrap_or(SystemTime::UNIX_EPOCH);
    let bases = list_segments(&qdir)?;
    let mut start = None;
    for base in &bases {
        let path = segment_path(&qdir, *base);
        let modified = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .map_err(io_at(&path))?;
        if modified >= since {
            start = Some(*base);
            break;
        }
    }
    let Some(start) = start else {
        return Ok(0);
    };
    let mut reader = SpoolReader::open(dir, queue)?;
    reader.seek(start);
    let now_ms = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let window_ms = window.as_millis() as i64;
    let mut kept = 0;
    while let Some((_, envelope)) = reader.next_record()? {
        let age_ms = now_ms.saturating_sub(envelope.received_at_ms).max(0);
        if age_ms < window_ms {
            each(envelope.dedup_key(), Duration::from_millis(age_ms as u64));
            kept += 1;
        }
    }
    Ok(kept)
}

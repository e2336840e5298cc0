//! Pull consumers (`sink.consumer_groups`): each group commits how far it has read a queue,
//! durably, in `<sink.dir>/<org>/<queue>/group.<name>.offset`; `spool tail --group` starts
//! there, and retention keeps every segment a group has not passed.

use super::reader::SpoolReader;
use super::segments::{check_queue, io_at, SpoolError};
use std::path::{Path, PathBuf};

/// The file of a group's committed offset in a queue.
fn path(dir: &Path, queue: &str, group: &str) -> PathBuf {
    dir.join(queue).join(format!("group.{group}.offset"))
}

/// The offset the group has committed for the queue (0: nothing yet).
pub fn committed(dir: &Path, queue: &str, group: &str) -> Result<u64, SpoolError> {
    check_queue(queue)?;
    let p = path(dir, queue, group);
    match std::fs::read_to_string(&p) {
        Ok(text) => text.trim().parse().map_err(|_| SpoolError::BadOffset {
            offset: 0,
            reason: "the group's offset file does not hold a number",
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io_at(&p)(e)),
    }
}

/// Commits that `group` has everything of `queue` before `offset`, durably. An offset that
/// is not a record boundary (or lies past the end) is refused.
pub fn commit(dir: &Path, queue: &str, group: &str, offset: u64) -> Result<(), SpoolError> {
    check_queue(queue)?;
    let mut reader = SpoolReader::open(dir, queue)?;
    let end = reader.end()?;
    if offset > end {
        return Err(SpoolError::BadOffset {
            offset,
            reason: "past the end of the queue",
        });
    }
    if offset < end {
        reader.seek(offset);
        reader.next_record()?; // a record must start there
    }
    let p = path(dir, queue, group);
    crate::fsutil::write_atomic(&p, format!("{offset}\n").as_bytes())
        .map(drop)
        .map_err(io_at(&p))
}

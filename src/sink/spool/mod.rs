//! The spool: the embedded durable sink, and the last step of the request path. A queue's
//! worker appends each batch of envelopes to that queue's log with one `fdatasync`, and
//! only then are the webhooks acknowledged; `spool tail` reads the log back as NDJSON.
//!
//! On disk: `<dir>/<queue>/<20-digit base offset>.log` segments. A record is framed as
//! `u32 LE payload length`, `u32 LE crc32 of the payload`, payload (`Envelope::encode`).
//! An offset is a byte position in the queue's whole log (segment base + position), so it
//! stays valid across segments and restarts.

pub mod feed;
mod frame;
pub mod groups;
pub mod queues;
mod reader;
pub(crate) mod recent;
pub mod retention;
mod segments;
mod writer;

pub use reader::SpoolReader;
pub(crate) use segments::{set_file_mode, SpoolError};
pub use writer::SpoolWriter;

use std::io;
use std::path::Path;
use std::time::Duration;

/// How often `tail --follow` looks for new records.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// Prints the queue's records from `from` (default: the oldest one kept) as NDJSON; with `follow`, keeps polling for new
/// ones forever, else returns how many it printed. Backs `sms-ingress spool tail`.
pub fn tail(
    dir: &Path,
    queue: &str,
    from: Option<u64>,
    follow: bool,
    out: &mut dyn io::Write,
) -> Result<u64, SpoolError> {
    let mut reader = SpoolReader::open(dir, queue)?;
    let from = match from {
        Some(offset) => offset,
        None => reader.start()?,
    };
    reader.seek(from);
    let mut printed = 0;
    loop {
        while let Some((offset, env)) = reader.next_record()? {
            serde_json::to_writer(&mut *out, &env.to_json(offset, reader.position()))
                .map_err(|e| SpoolError::Output(e.into()))?;
            out.write_all(b"\n").map_err(SpoolError::Output)?;
            printed += 1;
        }
        out.flush().map_err(SpoolError::Output)?;
        if !follow {
            return Ok(printed);
        }
        std::thread::sleep(FOLLOW_POLL);
    }
}

#[cfg(test)]
mod tests;

//! The spool's layout on disk: one directory per queue, segment files named by the 20-digit
//! offset of their first record, and the errors that name which file failed.

use crate::envelope::DecodeError;
use crate::sink::SinkError;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const SEGMENT_SUFFIX: &str = ".log";
const SEGMENT_NAME_DIGITS: usize = 20;

/// Why the spool could not store or serve records; each variant names where.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool i/o on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("spool corrupt in {segment} at position {position}")]
    Corrupt { segment: PathBuf, position: u64 },
    #[error("spool record in {segment} at position {position} does not decode: {source}")]
    Decode {
        segment: PathBuf,
        position: u64,
        #[source]
        source: DecodeError,
    },
    #[error("offset {offset} is not a record boundary: {reason}")]
    BadOffset { offset: u64, reason: &'static str },
    #[error("queue name {0:?} cannot be a spool directory")]
    BadQueue(String),
    #[error("encoded envelope of {0} bytes exceeds the spool record limit")]
    RecordTooLarge(usize),
    #[error("writing tail output: {0}")]
    Output(#[source] io::Error),
}

impl From<SpoolError> for SinkError {
    fn from(e: SpoolError) -> SinkError {
        match e {
            SpoolError::Io { .. } => SinkError::Io(Box::new(e)),
            other => SinkError::Unavailable(Box::new(other)),
        }
    }
}

/// Attaches the path to an `io::Error`, so that operators know which file failed.
pub(super) fn io_at(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Rejects queue names that would escape or confuse the spool directory.
/// A queue is `ORG/QUEUE` (`<dir>/<org>/<queue>/`) or one plain name (a dead-letter spool).
pub(super) fn check_queue(queue: &str) -> Result<(), SpoolError> {
    let parts: Vec<&str> = queue.split('/').collect();
    let bad_part = |p: &&str| p.is_empty() || *p == "." || *p == ".." || p.contains(['\\', '\0']);
    if parts.len() > 2 || parts.iter().any(bad_part) {
        return Err(SpoolError::BadQueue(queue.to_owned()));
    }
    Ok(())
}

pub(super) fn segment_path(qdir: &Path, base: u64) -> PathBuf {
    qdir.join(format!("{base:020}{SEGMENT_SUFFIX}"))
}

pub(super) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Base offsets of the queue's segments, ascending; other files are ignored.
pub(super) fn list_segments(qdir: &Path) -> Result<Vec<u64>, SpoolError> {
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(qdir).map_err(io_at(qdir))? {
        let entry = entry.map_err(io_at(qdir))?;
        if let Some(base) = entry.file_name().to_str().and_then(parse_segment_name) {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// Makes a created or removed directory entry durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    crate::fsutil::sync_dir(dir).map_err(io_at(dir))
}

pub(super) fn file_len(file: &File, path: &Path) -> Result<u64, SpoolError> {
    Ok(file.metadata().map_err(io_at(path))?.len())
}

pub(super) fn open_rw(path: &Path, create: bool) -> Result<File, SpoolError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
        .map_err(io_at(path))?;
    if let (true, Some(mode)) = (create, file_mode()) {
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io_at(path))?;
    }
    Ok(file)
}

/// `sink.file_mode`, set once at start (unset: the process's 0600/0700 stand).
static FILE_MODE: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// Sets the mode of the segment files created from now on (`sink.file_mode`).
pub(crate) fn set_file_mode(mode: u32) {
    let _ = FILE_MODE.set(mode);
}

fn file_mode() -> Option<u32> {
    FILE_MODE.get().copied()
}

/// Creates `base/queue` and every directory between; with `sink.file_mode` set, each of
/// them gets that mode plus `x` wherever it has `r`, so the consumer can reach the files.
pub(super) fn create_queue_dir(base: &Path, queue: &str) -> Result<(), SpoolError> {
    let qdir = base.join(queue);
    std::fs::create_dir_all(&qdir).map_err(io_at(&qdir))?;
    if let Some(mode) = file_mode() {
        let dir_mode = mode | ((mode & 0o444) >> 2);
        let mut dir = base.to_path_buf();
        let perms = std::fs::Permissions::from_mode(dir_mode);
        std::fs::set_permissions(&dir, perms.clone()).map_err(io_at(&dir))?;
        for part in queue.split('/') {
            dir.push(part);
            std::fs::set_permissions(&dir, perms.clone()).map_err(io_at(&dir))?;
        }
    }
    Ok(())
}

//! The spool's writer: one queue's appender, owned by that queue's sink worker. Each batch
//! is one `write` and one `fdatasync` (group commit); on failure the segment is cut back to
//! before the batch. Opening recovers a torn tail left by a crash.

use super::feed::{Feed, Record};
use super::frame::{
    frame_payload_in_place, good_frame_follows, read_frame_at, FrameAt, FRAME_HEADER_BYTES,
};
use super::segments::{
    check_queue, create_queue_dir, file_len, io_at, list_segments, open_rw, segment_path, sync_dir,
    SpoolError,
};
use crate::envelope::Envelope;
use crate::sink::{QueueSink, SinkError};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Appends batches to one queue's log; owned by that queue's single sink worker.
pub struct SpoolWriter {
    qdir: PathBuf,
    segment_bytes: u64,
    base: u64,
    path: PathBuf,
    pub(super) file: File,
    /// Bytes of the current segment that are durable and acknowledged.
    len: u64,
    /// A failed batch may have left bytes past `len` that could not be truncated yet.
    pub(super) dirty: bool,
    /// How far ahead of `len` to reserve blocks; 0: never.
    pub(super) preallocate: u64,
    /// End of the current segment's blocks known to be reserved.
    reserved: u64,
    buf: Vec<u8>,
    /// Where each frame of the encoded batch starts in `buf`.
    starts: Vec<usize>,
    /// The queue's feed to this process's consumers, if any.
    feed: Option<Arc<Feed>>,
    #[cfg(test)]
    recovered_torn_bytes: u64,
    batch_size: metrics::Histogram,
    flush_seconds: metrics::Histogram,
}

impl SpoolWriter {
    /// Opens (or creates) the queue's log for appending, truncating a torn tail left by a crash.
    pub fn open(dir: &Path, queue: &str, segment_bytes: u64) -> Result<SpoolWriter, SpoolError> {
        check_queue(queue)?;
        let qdir = dir.join(queue);
        create_queue_dir(dir, queue)?;
        let base = list_segments(&qdir)?.last().copied();
        let (base, path, file) = match base {
            Some(base) => {
                let path = segment_path(&qdir, base);
                let file = open_rw(&path, false)?;
                (base, path, file)
            }
            None => {
                let path = segment_path(&qdir, 0);
                let file = open_rw(&path, true)?;
                sync_dir(&qdir)?;
                (0, path, file)
            }
        };
        let (len, torn) = recover_tail(&file, &path)?;
        if torn > 0 {
            tracing::warn!(queue, segment = %path.display(), torn_bytes = torn, "spool: truncated a torn tail");
            metrics::counter!("sms_ingress_spool_torn_tail_total", "queue" => queue.to_owned())
                .increment(1);
        }
        Ok(SpoolWriter {
            qdir,
            segment_bytes,
            base,
            path,
            file,
            len,
            dirty: false,
            preallocate: 0,
            reserved: len,
            buf: Vec::new(),
            starts: Vec::new(),
            feed: None,
            #[cfg(test)]
            recovered_torn_bytes: torn,
            batch_size: metrics::histogram!("sms_ingress_sink_batch_size", "queue" => queue.to_owned()),
            flush_seconds: metrics::histogram!("sms_ingress_sink_flush_seconds", "queue" => queue.to_owned()),
        })
    }

    /// Reserves disk blocks `bytes` ahead of the writes (within the segment size). An
    /// append into reserved blocks leaves its `fdatasync` only the data and the file size
    /// to commit, not a block allocation: on ext4, while a build was writing, that cut the
    /// sync's p90 from 4.0 to 0.25 ms (docs/PERFORMANCE.md).
    pub(crate) fn with_preallocation(mut self, bytes: u64) -> SpoolWriter {
        self.preallocate = bytes;
        self
    }

    /// Tells this feed about every durable batch from now on.
    pub(crate) fn with_feed(mut self, feed: Arc<Feed>) -> SpoolWriter {
        self.feed = Some(feed);
        self
    }

    /// The bytes of the queue's segments on disk.
    pub(crate) fn disk_bytes(&self) -> Result<u64, SpoolError> {
        let mut total = 0;
        for base in list_segments(&self.qdir)? {
            let path = segment_path(&self.qdir, base);
            total += std::fs::metadata(&path).map_err(io_at(&path))?.len();
        }
        Ok(total)
    }

    /// Bytes cut from the tail at open, so that start-up can report a crash's damage.
    #[cfg(test)]
    pub(crate) fn recovered_torn_bytes(&self) -> u64 {
        self.recovered_torn_bytes
    }

    /// The offset the next record will get, for logs and for consumers to resume from.
    pub(crate) fn next_offset(&self) -> u64 {
        self.base + self.len
    }

    /// Encodes the batch into `self.buf` as consecutive frames.
    fn encode_batch(&mut self, batch: &[&Envelope]) -> Result<(), SpoolError> {
        self.buf.clear();
        self.starts.clear();
        for env in batch {
            let start = self.buf.len();
            self.starts.push(start);
            self.buf.resize(start + FRAME_HEADER_BYTES as usize, 0);
            env.encode(&mut self.buf);
            frame_payload_in_place(&mut self.buf, start)?;
        }
        Ok(())
    }

    /// Removes what a failed batch may have left, before anything else is appended.
    fn clean_failed_batch(&mut self) -> Result<(), SpoolError> {
        if !self.dirty {
            return Ok(());
        }
        self.file.set_len(self.len).map_err(io_at(&self.path))?;
        // Truncating also freed any blocks reserved past `len`.
        self.reserved = self.len;
        self.dirty = false;
        Ok(())
    }

    /// Makes sure blocks up to `end` are reserved, reserving a whole step ahead when not.
    /// Best effort: the size is kept (`FALLOC_FL_KEEP_SIZE`), so readers and recovery see
    /// only written bytes, and a failure (no space, no support) just leaves the write to
    /// allocate as it would have anyway; a file system without support turns it off.
    fn reserve(&mut self, end: u64) {
        if self.preallocate == 0 || end <= self.reserved {
            return;
        }
        let target = (self.len + self.preallocate)
            .min(self.segment_bytes)
            .max(end);
        let (Ok(offset), Ok(length)) = (
            libc::off_t::try_from(self.len),
            libc::off_t::try_from(target - self.len),
        ) else {
            return;
        };
        // SAFETY: fallocate only reads its integer arguments; the descriptor is owned by
        // `self.file`, which outlives the call.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_KEEP_SIZE,
                offset,
                length,
            )
        };
        if rc == 0 {
            self.reserved = target;
            return;
        }
        let err = io::Error::last_os_error();
        if matches!(err.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS)) {
            tracing::info!(segment = %self.path.display(), "spool: the file system cannot reserve blocks; appending without");
            self.preallocate = 0;
        } else {
            tracing::debug!(segment = %self.path.display(), error = %err, "spool: block reservation failed");
        }
    }

    /// Hands back the blocks reserved past the segment's end, once it is finished.
    fn release_reserved(&mut self) {
        if self.reserved > self.len {
            // Truncating to the current size frees blocks reserved past it.
            if let Err(e) = self.file.set_len(self.len) {
                tracing::warn!(segment = %self.path.display(), error = %e, "spool: reserved blocks not released");
            }
        }
        self.reserved = 0;
    }

    /// Starts a new segment named by the current end offset; the directory entry is synced.
    fn rotate(&mut self) -> Result<(), SpoolError> {
        let base = self.next_offset();
        let path = segment_path(&self.qdir, base);
        let file = open_rw(&path, true)?;
        if file_len(&file, &path)? != 0 {
            return Err(SpoolError::Corrupt {
                segment: path,
                position: 0,
            });
        }
        sync_dir(&self.qdir)?;
        tracing::debug!(segment = %path.display(), "spool: rotated");
        self.release_reserved();
        self.base = base;
        self.path = path;
        self.file = file;
        self.len = 0;
        Ok(())
    }

    /// Writes and syncs the encoded batch at the end of the segment.
    fn append(&mut self) -> io::Result<()> {
        self.file.write_all_at(&self.buf, self.len)?;
        self.file.sync_data()
    }

    fn write_encoded(&mut self) -> Result<(), SpoolError> {
        let needs_rotation = self.len > 0 && self.len + self.buf.len() as u64 > self.segment_bytes;
        if needs_rotation {
            self.rotate()?;
        }
        self.reserve(self.len + self.buf.len() as u64);
        if let Err(e) = self.append() {
            self.dirty = true;
            let _ = self.clean_failed_batch();
            return Err(io_at(&self.path)(e));
        }
        self.len += self.buf.len() as u64;
        Ok(())
    }
}

impl SpoolWriter {
    /// Tells the feed that the batch just written is durable, with its records if anyone
    /// listens (only then are the envelopes copied).
    fn feed_batch(&self, batch: &[&Envelope]) {
        let Some(feed) = &self.feed else { return };
        let end = self.next_offset();
        let first = end - self.buf.len() as u64;
        feed.resize(self.buf.len() as u64, 0);
        let records = feed.has_consumers().then(|| {
            let ends = self.starts.iter().skip(1).copied().chain([self.buf.len()]);
            batch
                .iter()
                .zip(self.starts.iter().zip(ends))
                .map(|(env, (start, stop))| Record {
                    offset: first + *start as u64,
                    next_offset: first + stop as u64,
                    envelope: Arc::new((*env).clone()),
                })
                .collect::<Arc<[Record]>>()
        });
        feed.publish(end, records);
    }
}

impl QueueSink for SpoolWriter {
    /// Appends every frame with one write and one `fdatasync`; on failure nothing is acknowledged.
    fn write_batch(&mut self, batch: &[&Envelope]) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.clean_failed_batch()?;
        self.encode_batch(batch)?;
        let started = Instant::now();
        self.write_encoded()?;
        self.batch_size.record(batch.len() as f64);
        self.flush_seconds.record(started.elapsed().as_secs_f64());
        self.feed_batch(batch);
        Ok(())
    }

    fn full_flag(&self) -> Option<Arc<std::sync::atomic::AtomicBool>> {
        self.feed.as_ref().map(|f| f.full_flag())
    }

    /// Clears a failed batch's leftovers and proves the disk takes a synced write again
    /// (a 4 KiB probe file beside the segments, removed afterwards).
    fn check(&mut self) -> Result<(), SinkError> {
        self.clean_failed_batch().map_err(SinkError::from)?;
        let probe = self.qdir.join(".probe");
        let result = std::fs::File::create(&probe).and_then(|mut f| {
            use std::io::Write;
            f.write_all(&[0u8; 4096])?;
            f.sync_data()
        });
        let _ = std::fs::remove_file(&probe);
        result.map_err(SinkError::from)
    }
}

/// Length of the segment's good prefix; refuses damage that good records follow.
fn good_prefix(file: &File, path: &Path) -> Result<(u64, u64), SpoolError> {
    let len = file_len(file, path)?;
    let mut buf = Vec::new();
    let mut pos = 0;
    loop {
        match read_frame_at(file, pos, len, &mut buf).map_err(io_at(path))? {
            FrameAt::Good { len: n } => pos += n,
            FrameAt::End => return Ok((pos, len)),
            FrameAt::Incomplete | FrameAt::Bad => break,
        }
    }
    if good_frame_follows(file, pos, len).map_err(io_at(path))? {
        return Err(SpoolError::Corrupt {
            segment: path.to_path_buf(),
            position: pos,
        });
    }
    Ok((pos, len))
}

/// Truncates a torn tail to the last good frame and syncs; returns (good length, bytes cut).
fn recover_tail(file: &File, path: &Path) -> Result<(u64, u64), SpoolError> {
    let (good, len) = good_prefix(file, path)?;
    if good == len {
        return Ok((len, 0));
    }
    file.set_len(good).map_err(io_at(path))?;
    file.sync_all().map_err(io_at(path))?;
    Ok((good, len - good))
}
/// A writer closes when its queue is released: the blocks reserved past its end are handed
/// back, and its consumers then know the log's end is final.
impl Drop for SpoolWriter {
    fn drop(&mut self) {
        // A released queue keeps no reserved blocks (8 MiB a queue by default).
        self.release_reserved();
        if let Some(feed) = &self.feed {
            feed.close();
        }
    }
}

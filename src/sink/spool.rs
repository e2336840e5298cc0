//! The spool: the embedded durable sink, and the last step of the request path. A queue's
//! worker appends each batch of envelopes to that queue's log with one `fdatasync`, and
//! only then are the webhooks acknowledged; `spool tail` reads the log back as NDJSON.
//!
//! On disk: `<dir>/<queue>/<20-digit base offset>.log` segments. A record is framed as
//! `u32 LE payload length`, `u32 LE crc32 of the payload`, payload (`Envelope::encode`).
//! An offset is a byte position in the queue's whole log (segment base + position), so it
//! stays valid across segments and restarts.

use crate::envelope::{DecodeError, Envelope};
use crate::sink::{QueueSink, SinkError};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Bytes of the frame header before each payload (length, crc32).
pub const FRAME_HEADER_BYTES: u64 = 8;
/// Largest payload accepted; a larger length on disk is corruption, not a record.
pub const MAX_RECORD_BYTES: u32 = 16 * 1024 * 1024;
/// How often `tail --follow` looks for new records.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
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
            SpoolError::Io { ref source, .. } => {
                SinkError::Io(io::Error::new(source.kind(), e.to_string()))
            }
            other => SinkError::Unavailable(other.to_string()),
        }
    }
}

/// Attaches the path to an `io::Error`, so that operators know which file failed.
fn io_at(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What lies at a position of a segment.
#[derive(Debug, PartialEq, Eq)]
enum FrameAt {
    /// A whole frame with a matching checksum, `len` bytes including the header.
    Good { len: u64 },
    /// The frame runs past the end of the file (or the header is cut).
    Incomplete,
    /// An impossible length or a checksum mismatch.
    Bad,
    /// Nothing left.
    End,
}

/// Payload length from a header, if it is a length a record can have.
fn header_len(header: &[u8]) -> Option<(u32, u32)> {
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?);
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    (1..=MAX_RECORD_BYTES).contains(&len).then_some((len, crc))
}

/// Fills the header of the frame at `out[start..]`, whose payload already follows it.
fn frame_payload_in_place(out: &mut [u8], start: usize) -> Result<(), SpoolError> {
    let len = out.len() - start - FRAME_HEADER_BYTES as usize;
    if len > MAX_RECORD_BYTES as usize {
        return Err(SpoolError::RecordTooLarge(len));
    }
    let crc = crc32fast::hash(&out[start + FRAME_HEADER_BYTES as usize..]);
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Reads the frame at `pos` into `buf` (payload only) and classifies it.
fn read_frame_at(file: &File, pos: u64, file_len: u64, buf: &mut Vec<u8>) -> io::Result<FrameAt> {
    if pos >= file_len {
        return Ok(FrameAt::End);
    }
    if file_len - pos < FRAME_HEADER_BYTES {
        return Ok(FrameAt::Incomplete);
    }
    let mut header = [0u8; FRAME_HEADER_BYTES as usize];
    if !read_exact_or_eof(file, &mut header, pos)? {
        return Ok(FrameAt::Incomplete);
    }
    let Some((len, crc)) = header_len(&header) else {
        return Ok(FrameAt::Bad);
    };
    let frame_len = FRAME_HEADER_BYTES + u64::from(len);
    if frame_len > file_len - pos {
        return Ok(FrameAt::Incomplete);
    }
    buf.resize(len as usize, 0);
    if !read_exact_or_eof(file, buf, pos + FRAME_HEADER_BYTES)? {
        return Ok(FrameAt::Incomplete);
    }
    if crc32fast::hash(buf) != crc {
        return Ok(FrameAt::Bad);
    }
    Ok(FrameAt::Good { len: frame_len })
}

/// `read_exact_at` that reports a concurrently shortened file as `false` rather than an error.
fn read_exact_or_eof(file: &File, buf: &mut [u8], pos: u64) -> io::Result<bool> {
    match file.read_exact_at(buf, pos) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether a valid frame starts anywhere in `bytes`: evidence that damage at the start of
/// `bytes` is not a torn tail, because acknowledged records follow it.
fn contains_valid_frame(bytes: &[u8]) -> bool {
    (0..bytes.len()).any(|i| is_valid_frame(&bytes[i..]))
}

fn is_valid_frame(bytes: &[u8]) -> bool {
    let Some(header) = bytes.get(..FRAME_HEADER_BYTES as usize) else {
        return false;
    };
    let Some((len, crc)) = header_len(header) else {
        return false;
    };
    let Some(payload) = bytes[FRAME_HEADER_BYTES as usize..].get(..len as usize) else {
        return false;
    };
    payload[0] == crate::envelope::ENCODING_VERSION && crc32fast::hash(payload) == crc
}

/// Whether a valid frame starts after the damaged frame at `pos` in the segment.
fn good_frame_follows(file: &File, pos: u64, file_len: u64) -> io::Result<bool> {
    let mut rest = vec![0u8; (file_len - pos) as usize];
    if !read_exact_or_eof(file, &mut rest, pos)? {
        return Ok(false);
    }
    Ok(contains_valid_frame(rest.get(1..).unwrap_or_default()))
}

/// Rejects queue names that would escape or confuse the spool directory.
fn check_queue(queue: &str) -> Result<(), SpoolError> {
    let bad =
        queue.is_empty() || queue == "." || queue == ".." || queue.contains(['/', '\\', '\0']);
    if bad {
        return Err(SpoolError::BadQueue(queue.to_owned()));
    }
    Ok(())
}

fn segment_path(qdir: &Path, base: u64) -> PathBuf {
    qdir.join(format!("{base:020}{SEGMENT_SUFFIX}"))
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Base offsets of the queue's segments, ascending; other files are ignored.
fn list_segments(qdir: &Path) -> Result<Vec<u64>, SpoolError> {
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
fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    crate::fsutil::sync_dir(dir).map_err(io_at(dir))
}

fn file_len(file: &File, path: &Path) -> Result<u64, SpoolError> {
    Ok(file.metadata().map_err(io_at(path))?.len())
}

/// Appends batches to one queue's log; owned by that queue's single sink worker.
pub struct SpoolWriter {
    qdir: PathBuf,
    segment_bytes: u64,
    base: u64,
    path: PathBuf,
    file: File,
    /// Bytes of the current segment that are durable and acknowledged.
    len: u64,
    /// A failed batch may have left bytes past `len` that could not be truncated yet.
    dirty: bool,
    /// How far ahead of `len` to reserve blocks; 0: never.
    preallocate: u64,
    /// End of the current segment's blocks known to be reserved.
    reserved: u64,
    buf: Vec<u8>,
    recovered_torn_bytes: u64,
    batch_size: metrics::Histogram,
    flush_seconds: metrics::Histogram,
}

impl SpoolWriter {
    /// Opens (or creates) the queue's log for appending, truncating a torn tail left by a crash.
    pub fn open(dir: &Path, queue: &str, segment_bytes: u64) -> Result<SpoolWriter, SpoolError> {
        check_queue(queue)?;
        let qdir = dir.join(queue);
        std::fs::create_dir_all(&qdir).map_err(io_at(&qdir))?;
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
            recovered_torn_bytes: torn,
            batch_size: metrics::histogram!("sms_ingress_sink_batch_size", "queue" => queue.to_owned()),
            flush_seconds: metrics::histogram!("sms_ingress_sink_flush_seconds", "queue" => queue.to_owned()),
        })
    }

    /// Reserves disk blocks `bytes` ahead of the writes (within the segment size). An
    /// append into reserved blocks leaves its `fdatasync` only the data and the file size
    /// to commit, not a block allocation: on ext4, while a build was writing, that cut the
    /// sync's p90 from 4.0 to 0.25 ms (docs/PERFORMANCE.md).
    pub fn with_preallocation(mut self, bytes: u64) -> SpoolWriter {
        self.preallocate = bytes;
        self
    }

    /// Bytes cut from the tail at open, so that start-up can report a crash's damage.
    pub fn recovered_torn_bytes(&self) -> u64 {
        self.recovered_torn_bytes
    }

    /// The offset the next record will get, for logs and for consumers to resume from.
    pub fn next_offset(&self) -> u64 {
        self.base + self.len
    }

    /// Encodes the batch into `self.buf` as consecutive frames.
    fn encode_batch(&mut self, batch: &[&Envelope]) -> Result<(), SpoolError> {
        self.buf.clear();
        for env in batch {
            let start = self.buf.len();
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
        Ok(())
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
        result.map_err(SinkError::Io)
    }
}

fn open_rw(path: &Path, create: bool) -> Result<File, SpoolError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
        .map_err(io_at(path))
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

/// The segment a reader is positioned in.
struct Segment {
    base: u64,
    path: PathBuf,
    file: File,
}

/// What one read step found.
// Returned once and unpacked at once; boxing the envelope would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Step {
    Record(u64, Envelope),
    Wait,
    Moved,
}

/// Reads a queue's log in order across segments, for `spool tail` and consumers.
pub struct SpoolReader {
    qdir: PathBuf,
    /// Offset of the next record to return (after `seek`, the requested one).
    offset: u64,
    /// `None` until the segment holding `offset` was found and `offset` checked.
    seg: Option<Segment>,
    buf: Vec<u8>,
}

impl SpoolReader {
    /// Opens the queue's spool read-only, positioned at offset 0.
    pub fn open(dir: &Path, queue: &str) -> Result<SpoolReader, SpoolError> {
        check_queue(queue)?;
        let qdir = dir.join(queue);
        std::fs::metadata(&qdir).map_err(io_at(&qdir))?;
        Ok(SpoolReader {
            qdir,
            offset: 0,
            seg: None,
            buf: Vec::new(),
        })
    }

    /// Moves to `offset`; it is checked to be a record boundary by the next `next_record`.
    pub fn seek(&mut self, offset: u64) {
        self.offset = offset;
        self.seg = None;
    }

    /// Where the next record starts: right after the last one returned (its end offset).
    pub fn position(&self) -> u64 {
        self.offset
    }

    /// The next record and its offset, or `None` at the current end (call again later).
    pub fn next_record(&mut self) -> Result<Option<(u64, Envelope)>, SpoolError> {
        loop {
            if self.seg.is_none() && !self.locate()? {
                return Ok(None);
            }
            match self.step()? {
                Step::Record(offset, env) => return Ok(Some((offset, env))),
                Step::Wait => return Ok(None),
                Step::Moved => continue,
            }
        }
    }

    /// Base of the first segment after `base`, which also tells that `base` is not the last.
    fn segment_after(&self, base: u64) -> Result<Option<u64>, SpoolError> {
        Ok(list_segments(&self.qdir)?.into_iter().find(|&b| b > base))
    }

    fn open_segment(&self, base: u64) -> Result<Segment, SpoolError> {
        let path = segment_path(&self.qdir, base);
        let file = File::open(&path).map_err(io_at(&path))?;
        Ok(Segment { base, path, file })
    }

    /// Finds the segment holding `self.offset` and checks it is a frame boundary;
    /// `false` means the offset is not written yet.
    fn locate(&mut self) -> Result<bool, SpoolError> {
        let bases = list_segments(&self.qdir)?;
        let Some(&base) = bases.iter().rev().find(|&&b| b <= self.offset) else {
            if bases.is_empty() {
                return Ok(false);
            }
            return Err(self.bad_offset("before the first segment"));
        };
        let is_last = bases.last() == Some(&base);
        let seg = self.open_segment(base)?;
        if !self.scan_to_offset(&seg, is_last)? {
            return Ok(false);
        }
        self.seg = Some(seg);
        Ok(true)
    }

    fn bad_offset(&self, reason: &'static str) -> SpoolError {
        SpoolError::BadOffset {
            offset: self.offset,
            reason,
        }
    }

    /// Walks frames from the segment start to `self.offset`; `false` means not written yet.
    fn scan_to_offset(&mut self, seg: &Segment, is_last: bool) -> Result<bool, SpoolError> {
        let target = self.offset - seg.base;
        let len = file_len(&seg.file, &seg.path)?;
        let mut pos = 0;
        while pos < target {
            let frame =
                read_frame_at(&seg.file, pos, len, &mut self.buf).map_err(io_at(&seg.path))?;
            match frame {
                FrameAt::Good { len: n } => pos += n,
                FrameAt::End | FrameAt::Incomplete if is_last => return Ok(false),
                FrameAt::End => return Err(self.bad_offset("past the end of its segment")),
                FrameAt::Incomplete | FrameAt::Bad => {
                    return Err(SpoolError::Corrupt {
                        segment: seg.path.clone(),
                        position: pos,
                    })
                }
            }
        }
        if pos != target {
            return Err(self.bad_offset("inside a record"));
        }
        Ok(true)
    }

    /// Reads the frame at `self.offset`, or moves to the next segment at a segment's end.
    fn step(&mut self) -> Result<Step, SpoolError> {
        let seg = self.seg.as_ref().expect("located");
        let pos = self.offset - seg.base;
        let len = file_len(&seg.file, &seg.path)?;
        let frame = read_frame_at(&seg.file, pos, len, &mut self.buf).map_err(io_at(&seg.path))?;
        match frame {
            FrameAt::Good { len: n } => self.decode_current(n),
            FrameAt::End => self.at_segment_end(len),
            FrameAt::Incomplete | FrameAt::Bad => self.at_damage(len),
        }
    }

    fn decode_current(&mut self, frame_len: u64) -> Result<Step, SpoolError> {
        let seg = self.seg.as_ref().expect("located");
        let offset = self.offset;
        let env = Envelope::decode(&self.buf).map_err(|source| SpoolError::Decode {
            segment: seg.path.clone(),
            position: offset - seg.base,
            source,
        })?;
        self.offset += frame_len;
        Ok(Step::Record(offset, env))
    }

    /// At the end of a segment's data: wait if it is the last, else go on to the next one.
    fn at_segment_end(&mut self, seen_len: u64) -> Result<Step, SpoolError> {
        let seg = self.seg.as_ref().expect("located");
        let Some(next) = self.segment_after(seg.base)? else {
            return Ok(Step::Wait);
        };
        // The writer finished this segment before creating the next; re-check its length.
        if file_len(&seg.file, &seg.path)? != seen_len {
            return Ok(Step::Moved);
        }
        let seg = self.open_segment(next)?;
        self.offset = next;
        self.seg = Some(seg);
        Ok(Step::Moved)
    }

    /// A cut or damaged frame: a live writer's or crashed writer's tail in the last
    /// segment (wait), corruption anywhere else.
    fn at_damage(&mut self, seen_len: u64) -> Result<Step, SpoolError> {
        let seg = self.seg.as_ref().expect("located");
        let pos = self.offset - seg.base;
        let corrupt = || SpoolError::Corrupt {
            segment: seg.path.clone(),
            position: pos,
        };
        if self.segment_after(seg.base)?.is_some() {
            return Err(corrupt());
        }
        if good_frame_follows(&seg.file, pos, seen_len).map_err(io_at(&seg.path))? {
            return Err(corrupt());
        }
        Ok(Step::Wait)
    }
}

/// Prints the queue's records from `from` as NDJSON; with `follow`, keeps polling for new
/// ones forever, else returns how many it printed. Backs `sms-ingress spool tail`.
pub fn tail(
    dir: &Path,
    queue: &str,
    from: u64,
    follow: bool,
    out: &mut dyn io::Write,
) -> Result<u64, SpoolError> {
    let mut reader = SpoolReader::open(dir, queue)?;
    reader.seek(from);
    let mut printed = 0;
    loop {
        while let Some((offset, env)) = reader.next_record()? {
            serde_json::to_writer(&mut *out, &env.to_json(offset))
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
mod tests {
    use super::*;
    use crate::envelope::{ComplianceAction, Kind};
    use bytes::Bytes;
    use std::io::Write as _;

    const Q: &str = "q1";

    fn env(i: usize) -> Envelope {
        Envelope {
            kind: if i % 2 == 0 {
                Kind::Inbound
            } else {
                Kind::Status
            },
            received_at_ms: 1_795_716_000_000 + i as i64,
            org: "org-1".into(),
            integration_id: "int-1".into(),
            queue: Q.into(),
            number: "+15550001111".into(),
            from: "+15552223333".into(),
            to: "+15550001111".into(),
            message_sid: format!("SM{i:032}"),
            message_status: (i % 2 == 1).then(|| "delivered".to_owned()),
            account_sid: "AC0123456789abcdef0123456789abcdef".into(),
            compliance: (i % 3 == 0).then_some(ComplianceAction::Help),
            idempotency_token: (i % 4 == 0).then(|| format!("tok-{i}")),
            signature: "c2ln".into(),
            signed_url: "https://sms.example.com/mo".into(),
            body: if i % 5 == 4 {
                Bytes::from(vec![0xff, 0xfe, i as u8])
            } else {
                Bytes::from(format!("Body=message+{i}&To=%2B15550001111"))
            },
        }
    }

    fn write(w: &mut SpoolWriter, range: std::ops::Range<usize>) {
        let envs: Vec<Envelope> = range.map(env).collect();
        let refs: Vec<&Envelope> = envs.iter().collect();
        w.write_batch(&refs).unwrap();
    }

    fn read_all(dir: &Path, from: u64) -> Vec<(u64, Envelope)> {
        let mut r = SpoolReader::open(dir, Q).unwrap();
        r.seek(from);
        let mut out = Vec::new();
        while let Some(rec) = r.next_record().unwrap() {
            out.push(rec);
        }
        out
    }

    fn segments(dir: &Path) -> Vec<PathBuf> {
        let qdir = dir.join(Q);
        list_segments(&qdir)
            .unwrap()
            .into_iter()
            .map(|b| segment_path(&qdir, b))
            .collect()
    }

    fn append_raw(path: &Path, bytes: &[u8]) {
        let mut f = OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(bytes).unwrap();
    }

    fn frame_of(e: &Envelope) -> Vec<u8> {
        let mut buf = vec![0; FRAME_HEADER_BYTES as usize];
        e.encode(&mut buf);
        frame_payload_in_place(&mut buf, 0).unwrap();
        buf
    }

    #[test]
    fn batches_read_back_exactly_with_stable_offsets() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = SpoolWriter::open(tmp.path(), Q, 1 << 20).unwrap();
        assert_eq!(w.next_offset(), 0);
        write(&mut w, 0..3);
        write(&mut w, 3..4);
        w.write_batch(&[]).unwrap();
        let end = w.next_offset();
        drop(w);

        let recs = read_all(tmp.path(), 0);
        assert_eq!(recs.len(), 4);
        for (i, (_, e)) in recs.iter().enumerate() {
            assert_eq!(*e, env(i));
        }
        assert_eq!(recs[0].0, 0);
        assert_eq!(recs[1].0, frame_of(&env(0)).len() as u64);
        // Offsets are stable: seeking to one yields the same record.
        assert_eq!(read_all(tmp.path(), recs[2].0), recs[2..].to_vec());
        assert!(read_all(tmp.path(), end).is_empty());

        // Reopening keeps appending after the last record.
        let mut w = SpoolWriter::open(tmp.path(), Q, 1 << 20).unwrap();
        assert_eq!(w.recovered_torn_bytes(), 0);
        assert_eq!(w.next_offset(), end);
        write(&mut w, 4..5);
        let recs = read_all(tmp.path(), end);
        assert_eq!(recs, vec![(end, env(4))]);
    }

    #[test]
    fn bad_offsets_are_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = SpoolWriter::open(tmp.path(), Q, 1 << 20).unwrap();
        write(&mut w, 0..2);
        let mut r = SpoolReader::open(tmp.path(), Q).unwrap();
        r.seek(3);
        assert!(matches!(
            r.next_record(),
            Err(SpoolError::BadOffset { offset: 3, .. })
        ));
        // Beyond the end waits, and serves the record once it is written there.
        let end = w.next_offset();
        r.seek(end);
        assert!(r.next_record().unwrap().is_none());
        write(&mut w, 2..3);
        assert_eq!(r.next_record().unwrap(), Some((end, env(2))));
        assert!(SpoolReader::open(tmp.path(), "missing").is_err());
        assert!(matches!(
            SpoolWriter::open(tmp.path(), "../x", 1),
            Err(SpoolError::BadQueue(_))
        ));
    }

    #[test]
    fn rotation_makes_segments_that_the_reader_crosses() {
        let tmp = tempfile::tempdir().unwrap();
        let one = frame_of(&env(0)).len() as u64;
        let mut w = SpoolWriter::open(tmp.path(), Q, one * 3).unwrap();
        for i in 0..10 {
            write(&mut w, i * 2..i * 2 + 2);
        }
        // A batch larger than a segment still goes in whole.
        write(&mut w, 20..25);
        drop(w);
        let segs = segments(tmp.path());
        assert!(segs.len() >= 10, "{segs:?}");

        let recs = read_all(tmp.path(), 0);
        let got: Vec<Envelope> = recs.iter().map(|(_, e)| e.clone()).collect();
        assert_eq!(got, (0..25).map(env).collect::<Vec<_>>());
        // Each segment is named by the offset of its first record.
        let qdir = tmp.path().join(Q);
        for base in list_segments(&qdir).unwrap().into_iter().skip(1) {
            assert!(recs.iter().any(|(off, _)| *off == base), "{base}");
        }
        // Seeking into a later segment works too.
        let (mid_off, _) = recs[17].clone();
        assert_eq!(read_all(tmp.path(), mid_off), recs[17..].to_vec());

        let mut w = SpoolWriter::open(tmp.path(), Q, one * 3).unwrap();
        write(&mut w, 25..26);
        assert_eq!(read_all(tmp.path(), 0).len(), 26);
    }

    #[test]
    fn preallocation_reserves_blocks_without_changing_what_readers_see() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let segment = 256 * 1024;
        let mut w = SpoolWriter::open(tmp.path(), Q, segment)
            .unwrap()
            .with_preallocation(1 << 20);
        write(&mut w, 0..3);
        let first = segments(tmp.path()).remove(0);
        let meta = std::fs::metadata(&first).unwrap();
        // The size is what was written; the blocks behind it reach to the segment size
        // (the step is capped there), unless this file system cannot reserve.
        assert_eq!(meta.len(), w.next_offset());
        let reserved = meta.blocks() * 512;
        if w.preallocate > 0 {
            assert!(reserved >= segment, "{reserved} bytes allocated");
        }
        assert_eq!(read_all(tmp.path(), 0).len(), 3);

        // Filling the segment rotates; the finished one gives its unused blocks back.
        let mut next = 3;
        while segments(tmp.path()).len() < 2 {
            assert!(next < 10_000, "never rotated");
            write(&mut w, next..next + 50);
            next += 50;
        }
        let meta = std::fs::metadata(&first).unwrap();
        assert!(
            meta.blocks() * 512 <= meta.len().next_multiple_of(4096) + 4096,
            "{} bytes allocated for {} written",
            meta.blocks() * 512,
            meta.len()
        );
        assert_eq!(read_all(tmp.path(), 0).len(), next);

        // Reopening (as after a restart) finds the same records and appends after them.
        drop(w);
        let mut w = SpoolWriter::open(tmp.path(), Q, segment)
            .unwrap()
            .with_preallocation(1 << 20);
        assert_eq!(w.recovered_torn_bytes(), 0);
        write(&mut w, next..next + 1);
        assert_eq!(read_all(tmp.path(), 0).len(), next + 1);
    }

    /// Writes 3 records, damages the tail with `damage`, then checks that open truncates
    /// to the 3 good records, counts it, and that the log keeps working.
    fn check_torn_tail(damage: impl FnOnce(&Path, u64)) {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = SpoolWriter::open(tmp.path(), Q, 1 << 20).unwrap();
        write(&mut w, 0..2);
        let two = w.next_offset();
        write(&mut w, 2..3);
        let good = w.next_offset();
        drop(w);
        let seg = segments(tmp.path()).pop().unwrap();
        damage(&seg, two);
        let damaged_len = std::fs::metadata(&seg).unwrap().len();
        let expect_good = if damaged_len > good { good } else { two };

        let mut w = SpoolWriter::open(tmp.path(), Q, 1 << 20).unwrap();
        assert_eq!(w.recovered_torn_bytes(), damaged_len - expect_good);
        assert!(w.recovered_torn_bytes() > 0);
        assert_eq!(w.next_offset(), expect_good);
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), expect_good);
        write(&mut w, 10..12);
        drop(w);

        let recs = read_all(tmp.path(), 0);
        let n_good = if expect_good == good { 3 } else { 2 };
        let got: Vec<Envelope> = recs.into_iter().map(|(_, e)| e).collect();
        let want: Vec<Envelope> = (0..n_good).chain(10..12).map(env).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn torn_tail_garbage_is_truncated() {
        check_torn_tail(|seg, _| append_raw(seg, b"\x10\x00\x00\x00garbage-garbage-garbage"));
        check_torn_tail(|seg, _| append_raw(seg, &[0u8; 100]));
        check_torn_tail(|seg, _| append_raw(seg, &[0xffu8; 5]));
    }

    #[test]
    fn torn_tail_cut_mid_frame_is_truncated() {
        for cut in [1, 7, 8, 9, 40] {
            check_torn_tail(|seg, two| {
                let f = OpenOptions::new().write(true).open(seg).unwrap();
                f.set_len(two + cut).unwrap();
            });
        }
    }

    #[test]
    fn torn_tail_bad_crc_in_last_frame_is_truncated() {
        check_torn_tail(|seg, two| {
            let f = OpenOptions::new().read(true).write(true).open(seg).unwrap();
            let mut b = [0u8; 1];
            f.read_exact_at(&mut b, two + 4).unwrap();
            f.write_all_at(&[b[0] ^ 0x01], two + 4).unwrap();
        });
    }

    /// Counts increments of the torn-tail counter, so the test needs no extra crate.
    #[derive(Default)]
    struct TornCounter(std::sync::Arc<std::sync::atomic::AtomicU64>);

    impl metrics::CounterFn for TornCounter {
        fn increment(&self, value: u64) {
            self.0
                .fetch_add(value, std::sync::atomic::Ordering::Relaxed);
        }
        fn absolute(&self, _: u64) {}
    }

    impl metrics::Recorder for TornCounter {
        fn describe_counter(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_gauge(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_histogram(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn register_counter(
            &self,
            key: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Counter {
            let labels: Vec<_> = key.labels().map(|l| (l.key(), l.value())).collect();
            if key.name() != "sms_ingress_spool_torn_tail_total" || labels != [("queue", Q)] {
                return metrics::Counter::noop();
            }
            metrics::Counter::from_arc(std::sync::Arc::new(TornCounter(self.0.clone())))
        }
        fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
            metrics::Gauge::noop()
        }
        fn register_histogram(
            &self,
            _: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Histogram {
            metrics::Histogram::noop()
        }
    }

    #[test]
    fn torn_tail_is_counted_in_metrics() {
        let recorder = TornCounter::default();
        let tmp = tempfile::tempdir().unwrap();
        metrics::with_local_recorder(&recorder, || {
            let mut w = SpoolWriter::open(tmp.path(), Q, 1 << 20).unwrap();
            write(&mut w, 0..1);
            drop(w);
            SpoolWriter::open(tmp.path(), Q, 1 << 20).unwrap();
            append_raw(&segments(tmp.path())[0], b"xx");
            SpoolWriter::open(tmp.path(), Q, 1 << 20).unwrap();
        });
        assert_eq!(recorder.0.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[test]
    fn damage_followed_by_good_records_is_refused_not_truncated() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = SpoolWriter::open(tmp.path(), Q, 1 << 20).unwrap();
        write(&mut w, 0..3);
        drop(w);
        let seg = segments(tmp.path()).pop().unwrap();
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(&[0xff], 20).unwrap();
        let len = std::fs::metadata(&seg).unwrap().len();
        assert!(matches!(
            SpoolWriter::open(tmp.path(), Q, 1 << 20),
            Err(SpoolError::Corrupt { position: 0, .. })
        ));
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), len);
    }

    #[test]
    fn corrupt_frame_in_an_older_segment_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let one = frame_of(&env(0)).len() as u64;
        let mut w = SpoolWriter::open(tmp.path(), Q, one * 3).unwrap();
        for i in 0..9 {
            write(&mut w, i..i + 1);
        }
        drop(w);
        let segs = segments(tmp.path());
        assert!(segs.len() >= 3);
        // Flip a payload byte of the second record of the first segment.
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&segs[0])
            .unwrap();
        let second = frame_of(&env(0)).len() as u64;
        let seg_len = std::fs::metadata(&segs[0]).unwrap().len();
        assert!(
            second + 30 < seg_len,
            "the flipped byte is inside the segment"
        );
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, second + 30).unwrap();
        f.write_all_at(&[b[0] ^ 0xff], second + 30).unwrap();

        let mut r = SpoolReader::open(tmp.path(), Q).unwrap();
        assert_eq!(r.next_record().unwrap().unwrap().1, env(0));
        match r.next_record() {
            Err(SpoolError::Corrupt { segment, position }) => {
                assert_eq!(segment, segs[0]);
                assert_eq!(position, second);
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn reader_waits_at_a_partial_tail_then_reads_it() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = SpoolWriter::open(tmp.path(), Q, 1 << 20).unwrap();
        write(&mut w, 0..1);
        let tail_off = w.next_offset();
        drop(w);
        let seg = segments(tmp.path()).pop().unwrap();
        let frame = frame_of(&env(1));

        let mut r = SpoolReader::open(tmp.path(), Q).unwrap();
        assert_eq!(r.next_record().unwrap(), Some((0, env(0))));
        assert!(r.next_record().unwrap().is_none());
        append_raw(&seg, &frame[..5]);
        assert!(r.next_record().unwrap().is_none());
        append_raw(&seg, &frame[5..30]);
        assert!(r.next_record().unwrap().is_none());
        append_raw(&seg, &frame[30..]);
        assert_eq!(r.next_record().unwrap(), Some((tail_off, env(1))));
        assert!(r.next_record().unwrap().is_none());
    }

    #[test]
    fn failed_append_leaves_no_partial_frame() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = SpoolWriter::open(tmp.path(), Q, 1 << 20).unwrap();
        write(&mut w, 0..1);
        let end = w.next_offset();
        // Simulate a failed batch that left bytes behind; the next batch removes them first.
        w.file.write_all_at(b"partial", end).unwrap();
        w.dirty = true;
        write(&mut w, 1..2);
        let got: Vec<Envelope> = read_all(tmp.path(), 0).into_iter().map(|r| r.1).collect();
        assert_eq!(got, vec![env(0), env(1)]);
    }

    #[test]
    fn tail_prints_ndjson_with_exact_bodies() {
        let tmp = tempfile::tempdir().unwrap();
        let one = frame_of(&env(0)).len() as u64;
        let mut w = SpoolWriter::open(tmp.path(), Q, one * 4).unwrap();
        for i in 0..4 {
            write(&mut w, i * 3..i * 3 + 3);
        }
        drop(w);
        let mut out = Vec::new();
        assert_eq!(tail(tmp.path(), Q, 0, false, &mut out).unwrap(), 12);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 12);
        let mut offsets = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let e = env(i);
            assert_eq!(v["kind"], e.kind.as_str());
            assert_eq!(v["message_sid"], e.message_sid);
            assert_eq!(v["queue"], Q);
            assert!(v["received_at"].as_str().unwrap().ends_with('Z'));
            let body = match v.get("body") {
                Some(b) => b.as_str().unwrap().as_bytes().to_vec(),
                None => {
                    use base64::Engine as _;
                    let b64 = v["body_base64"].as_str().unwrap();
                    base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .unwrap()
                }
            };
            assert_eq!(body, e.body.to_vec());
            offsets.push(v["offset"].as_u64().unwrap());
        }
        // `--from` an offset prints from that record on.
        let mut out = Vec::new();
        assert_eq!(tail(tmp.path(), Q, offsets[5], false, &mut out).unwrap(), 7);
        let first: serde_json::Value =
            serde_json::from_str(String::from_utf8(out).unwrap().lines().next().unwrap()).unwrap();
        assert_eq!(first["offset"], offsets[5]);
    }

    #[test]
    fn oversized_record_is_rejected_before_writing() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = SpoolWriter::open(tmp.path(), Q, 1 << 20).unwrap();
        let mut big = env(0);
        big.body = Bytes::from(vec![b'a'; MAX_RECORD_BYTES as usize + 1]);
        assert!(w.write_batch(&[&env(1), &big]).is_err());
        assert_eq!(w.next_offset(), 0);
        assert!(read_all(tmp.path(), 0).is_empty());
    }
}

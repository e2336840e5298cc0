//! The spool's reader: a queue's log in order across segments, for `spool tail`, replays
//! and consumers. It waits at a live writer's partial tail and reports real damage.

use super::frame::{good_frame_follows, read_frame_at, FrameAt};
use super::segments::{check_queue, file_len, io_at, list_segments, segment_path, SpoolError};
use crate::envelope::Envelope;
use std::fs::File;
use std::path::{Path, PathBuf};

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

    /// The offset of the log's first record still on disk (retention deletes from the front).
    pub fn start(&self) -> Result<u64, SpoolError> {
        Ok(list_segments(&self.qdir)?.first().copied().unwrap_or(0))
    }

    /// The end of the log's last segment (what is written, durable or about to be).
    pub fn end(&self) -> Result<u64, SpoolError> {
        let Some(&base) = list_segments(&self.qdir)?.last() else {
            return Ok(0);
        };
        let path = segment_path(&self.qdir, base);
        Ok(base + std::fs::metadata(&path).map_err(io_at(&path))?.len())
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

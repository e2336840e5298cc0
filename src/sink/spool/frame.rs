//! The record frame: `u32 LE payload length`, `u32 LE crc32 of the payload`, payload. Pure
//! classification of what lies at a position of a segment, and the evidence that tells a
//! torn tail (cut, never acknowledged) from damage that acknowledged records follow.

use super::segments::SpoolError;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Bytes of the frame header before each payload (length, crc32).
pub(crate) const FRAME_HEADER_BYTES: u64 = 8;
/// Largest payload accepted; a larger length on disk is corruption, not a record.
pub(crate) const MAX_RECORD_BYTES: u32 = crate::sink::MAX_RECORD_BYTES as u32;

/// What lies at a position of a segment.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum FrameAt {
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
pub(super) fn header_len(header: &[u8]) -> Option<(u32, u32)> {
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?);
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    (1..=MAX_RECORD_BYTES).contains(&len).then_some((len, crc))
}

/// Fills the header of the frame at `out[start..]`, whose payload already follows it.
pub(super) fn frame_payload_in_place(out: &mut [u8], start: usize) -> Result<(), SpoolError> {
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
pub(super) fn read_frame_at(
    file: &File,
    pos: u64,
    file_len: u64,
    buf: &mut Vec<u8>,
) -> io::Result<FrameAt> {
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
pub(super) fn read_exact_or_eof(file: &File, buf: &mut [u8], pos: u64) -> io::Result<bool> {
    match file.read_exact_at(buf, pos) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether a valid frame starts anywhere in `bytes`: evidence that damage at the start of
/// `bytes` is not a torn tail, because acknowledged records follow it.
pub(super) fn contains_valid_frame(bytes: &[u8]) -> bool {
    (0..bytes.len()).any(|i| is_valid_frame(&bytes[i..]))
}

pub(super) fn is_valid_frame(bytes: &[u8]) -> bool {
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
pub(super) fn good_frame_follows(file: &File, pos: u64, file_len: u64) -> io::Result<bool> {
    let mut rest = vec![0u8; (file_len - pos) as usize];
    if !read_exact_or_eof(file, &mut rest, pos)? {
        return Ok(false);
    }
    Ok(contains_valid_frame(rest.get(1..).unwrap_or_default()))
}

//! The spool's tests: writer and reader together, torn tails, rotation, recovery.

use super::frame::{frame_payload_in_place, FRAME_HEADER_BYTES, MAX_RECORD_BYTES};
use super::segments::{list_segments, segment_path};
use super::*;
use crate::envelope::Envelope;

use crate::sink::QueueSink;
use bytes::Bytes;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const Q: &str = "q1";

fn env(i: usize) -> Envelope {
    crate::fixtures::envelope_n(i)
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
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
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
    assert_eq!(tail(tmp.path(), Q, None, false, &mut out).unwrap(), 12);
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
    assert_eq!(
        tail(tmp.path(), Q, Some(offsets[5]), false, &mut out).unwrap(),
        7
    );
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

#[test]
fn retention_never_races_a_reader_holding_a_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let one = frame_of(&env(0)).len() as u64;
    let mut w = SpoolWriter::open(tmp.path(), Q, one * 3).unwrap();
    for i in 0..4 {
        write(&mut w, i * 3..i * 3 + 3);
    }
    drop(w);
    assert!(segments(tmp.path()).len() >= 4);
    // A reader is inside the first segment when retention deletes every passed segment.
    let mut r = SpoolReader::open(tmp.path(), Q).unwrap();
    r.seek(0);
    let (first, _) = r.next_record().unwrap().unwrap();
    assert_eq!(first, 0);
    let (deleted, _) = super::retention::apply(tmp.path(), Q, Some(u64::MAX), 0).unwrap();
    assert!(deleted >= 3, "{deleted} segments deleted");
    assert!(!segment_path(&tmp.path().join(Q), 0).exists());
    // It still reads the rest of the segment it holds, then goes on with what is left.
    let mut got = vec![first];
    while let Some((offset, _)) = r.next_record().unwrap() {
        got.push(offset);
    }
    assert!(got.len() >= 3, "the held segment stays readable: {got:?}");
    let last = *got.last().unwrap();
    let remaining = read_all(tmp.path(), segments_base(tmp.path()));
    assert_eq!(
        remaining.last().map(|(o, _)| *o),
        Some(last),
        "no record skipped at the end"
    );
}

fn segments_base(dir: &Path) -> u64 {
    list_segments(&dir.join(Q)).unwrap()[0]
}

//! Dead letters: the side branch of the request path after `policy`. A verified webhook that
//! policy drops (integration inactive, number disabled or provisioning) is answered 200 as the
//! seed says, but only once it is durable in its integration's dead-letter spool,
//! `<dead_letters.dir>/<integration id>/`, written through a second `Dispatcher` (the same
//! bounded channel, worker thread and group commit as the queues). At most
//! `dead_letters.max_per_integration` of them wait per integration; beyond that the webhook
//! gets 503, so nothing is dropped unstored.
//!
//! After re-activation an admin replays them into the queues their numbers route to now. A
//! cursor file beside the segments (written atomically and fsynced after each batch's acks)
//! records what was replayed, so a dead letter is not replayed twice by repeated calls or
//! after a restart; the one window left is a crash between a batch's acks and its cursor
//! write, which replays that batch again rather than lose it. A replay stops, leaving the
//! rest for the next call, at a dead letter whose number is not routed yet.

use crate::config::Config;
use crate::cursor::{Cursor, CursorError};
use crate::dispatch::{Dispatcher, QueueHandle, SinkFactory, SubmitError};
use crate::envelope::Envelope;
use crate::inventory::{Inventory, Routing, Snapshot};
use crate::sink::spool::{SpoolError, SpoolReader, SpoolWriter};
use crate::sink::{QueueSink, SinkError};
use serde::Serialize;
use std::collections::HashMap;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Name of the replay cursor beside an integration's segments (the spool ignores other files).
pub(crate) const CURSOR_FILE: &str = "replay-cursor.json";
/// Dead letters read, routed and acknowledged together during a replay.
const REPLAY_BATCH: usize = 256;
/// How long a replay waits for room in a full queue before it stops.
const SUBMIT_PATIENCE: Duration = Duration::from_secs(5);
const SUBMIT_RETRY: Duration = Duration::from_millis(5);

/// Why a dead letter could not be stored or replayed; each variant names one cause.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("integration {0} already has max_per_integration dead letters waiting for replay")]
    Full(Arc<str>),
    #[error("the dead-letter channel of integration {0} is full")]
    QueueFull(Arc<str>),
    #[error("the dead-letter spool of integration {0} did not make the envelope durable")]
    NotDurable(Arc<str>),
    #[error("cannot open the dead-letter spool of integration {id}: {source}")]
    Open {
        id: Arc<str>,
        #[source]
        source: SinkError,
    },
    #[error("reading dead letters: {0}")]
    Read(#[from] SpoolError),
    #[error("replay {0}")]
    Cursor(#[from] CursorError),
    #[error("replay stopped after {replayed} replayed and {skipped} skipped: a queue refused or failed to store a dead letter; call again")]
    Interrupted { replayed: u64, skipped: u64 },
    #[error("a blocking dead-letter task failed")]
    Task,
}

impl DeadLetterError {
    /// The metric reason of a webhook answered 503 because of this error.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            DeadLetterError::Full(_) => "dead_letter_full",
            DeadLetterError::QueueFull(_) => "dead_letter_queue_full",
            _ => "dead_letter_unavailable",
        }
    }
}

/// What one replay call did; `remaining` dead letters still wait.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct ReplayReport {
    pub(crate) replayed: u64,
    pub(crate) skipped: u64,
    pub(crate) remaining: u64,
}

/// One dead letter read back, with the span it occupies in its log.
struct Record {
    start: u64,
    end: u64,
    envelope: Envelope,
}

/// Where a dead letter goes during a replay.
enum Target {
    Queue(Arc<QueueHandle>),
    /// Its number left the integration's inventory: reported, never replayed.
    Skip,
    /// Its number is not routed yet: the replay stops here and keeps it.
    Wait,
}

/// What the rest of a replay does after a batch.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Wait,
    Failed,
}

/// Offsets up to which each dead-letter spool is durable, shared by its sink and its lane.
type DurableEnds = Arc<Mutex<HashMap<String, Arc<AtomicU64>>>>;

/// A dead-letter spool that publishes how far it is durable, so that a replay never reads a
/// record whose batch may still fail and be cut.
struct TrackedSpool {
    writer: SpoolWriter,
    durable_end: Arc<AtomicU64>,
}

impl QueueSink for TrackedSpool {
    fn write_batch(&mut self, batch: &[&Envelope]) -> Result<(), SinkError> {
        self.writer.write_batch(batch)?;
        self.durable_end
            .store(self.writer.next_offset(), Ordering::Release);
        Ok(())
    }
}

fn sink_factory(dir: PathBuf, segment_bytes: u64, ends: DurableEnds) -> SinkFactory {
    Box::new(move |id: &str| {
        let writer = SpoolWriter::open(&dir, id, segment_bytes)?;
        let durable_end = Arc::new(AtomicU64::new(writer.next_offset()));
        lock(&ends).insert(id.to_owned(), durable_end.clone());
        Ok(Box::new(TrackedSpool {
            writer,
            durable_end,
        }) as Box<dyn QueueSink>)
    })
}

/// One integration's dead letters: its spool's channel, the bound, the replay cursor.
struct Lane {
    id: Arc<str>,
    queue: Arc<QueueHandle>,
    durable_end: Arc<AtomicU64>,
    /// Dead letters stored or being stored and not yet replayed.
    pending: AtomicU64,
    cursor_path: PathBuf,
    /// Held for a whole replay, so replays of one integration run one at a time.
    cursor: tokio::sync::Mutex<Cursor>,
}

impl Lane {
    /// Takes one of the `max` places, or refuses when all are taken.
    fn reserve(&self, max: u64) -> Result<(), DeadLetterError> {
        self.pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map(drop)
            .map_err(|_| DeadLetterError::Full(self.id.clone()))
    }

    fn release(&self, n: u64) {
        self.pending.fetch_sub(n, Ordering::AcqRel);
    }

    /// Hands the envelope to the spool's worker and waits for its fdatasync.
    async fn write(&self, envelope: Envelope) -> Result<(), DeadLetterError> {
        let acked = self.queue.try_submit(envelope).map_err(|e| match e {
            SubmitError::Full => DeadLetterError::QueueFull(self.id.clone()),
            SubmitError::Closed | SubmitError::DiskFull => {
                DeadLetterError::NotDurable(self.id.clone())
            }
        })?;
        match acked.await {
            Ok(true) => Ok(()),
            _ => Err(DeadLetterError::NotDurable(self.id.clone())),
        }
    }

    /// Marks spans handled and saves the cursor; the memory copy advances even if the save
    /// fails, so this process never replays them again.
    async fn commit(
        &self,
        cursor: &mut Cursor,
        spans: &[(u64, u64)],
    ) -> Result<(), DeadLetterError> {
        if spans.is_empty() {
            return Ok(());
        }
        cursor.mark(spans);
        self.release(spans.len() as u64);
        let (saved, path) = (cursor.clone(), self.cursor_path.clone());
        blocking(move || Ok(saved.save(&path)?)).await
    }
}

/// The dead-letter spools of every integration, and their replay.
pub struct DeadLetters {
    dir: PathBuf,
    max_pending: u64,
    dispatcher: Dispatcher,
    durable_ends: DurableEnds,
    inventory: Arc<Inventory>,
    lanes: Mutex<HashMap<Arc<str>, Arc<Lane>>>,
}

impl DeadLetters {
    /// Dead letters under `dead_letters.dir`, with the queues' segment size, capacity and batch.
    pub fn new(cfg: &Config, inventory: Arc<Inventory>) -> DeadLetters {
        let dir = cfg.dead_letters.dir.clone();
        let durable_ends = DurableEnds::default();
        let factory = sink_factory(dir.clone(), cfg.sink.segment_bytes, durable_ends.clone());
        DeadLetters {
            dir,
            max_pending: cfg.dead_letters.max_per_integration,
            dispatcher: Dispatcher::new(factory, cfg.queues.capacity, cfg.sink.max_batch),
            durable_ends,
            inventory,
            lanes: Mutex::new(HashMap::new()),
        }
    }

    /// Deletes a deleted integration's dead letters (its spool and replay cursor).
    pub(crate) fn forget(&self, integration_id: &str) {
        lock(&self.lanes).remove(integration_id);
        let dir = self.dir.join(integration_id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => tracing::info!(
                integration = integration_id,
                "dead letters deleted with their integration"
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(integration = integration_id, dir = %dir.display(), error = %e, "dead letters of a deleted integration not deleted")
            }
        }
    }

    /// True when every dead-letter spool took its last batch (for `/readyz`).
    pub(crate) fn healthy(&self) -> bool {
        self.dispatcher.healthy()
    }

    /// Makes a dropped webhook's envelope durable in its integration's spool, within the bound.
    pub(crate) async fn store(self: &Arc<Self>, envelope: Envelope) -> Result<(), DeadLetterError> {
        let lane = self.lane(&envelope.integration_id).await?;
        lane.reserve(self.max_pending)?;
        let result = lane.write(envelope).await;
        if result.is_err() {
            lane.release(1);
        }
        result
    }

    /// Replays an integration's dead letters, in order, into the queues their numbers route to now.
    pub(crate) async fn replay(
        self: &Arc<Self>,
        integration_id: &str,
    ) -> Result<ReplayReport, DeadLetterError> {
        let inventory = Arc::clone(&self.inventory);
        self.replay_with(integration_id, move |e| route_now(&inventory.load(), e))
            .await
    }

    async fn replay_with(
        self: &Arc<Self>,
        integration_id: &str,
        route: impl Fn(&Envelope) -> Target + Sync,
    ) -> Result<ReplayReport, DeadLetterError> {
        if !self.dir.join(integration_id).is_dir() {
            return Ok(ReplayReport::default());
        }
        let lane = self.lane(&Arc::from(integration_id)).await?;
        let mut cursor = lane.cursor.lock().await;
        let mut reader = self.reader_at(&lane.id, cursor.next).await?;
        let mut report = ReplayReport::default();
        loop {
            let batch;
            (reader, batch) =
                read_batch(reader, &cursor, lane.durable_end.load(Ordering::Acquire)).await?;
            if batch.is_empty() {
                break;
            }
            let (spans, flow) = replay_batch(batch, &route, &mut report).await;
            lane.commit(&mut cursor, &spans).await?;
            match flow {
                Flow::Continue => {}
                Flow::Wait => break,
                Flow::Failed => {
                    return Err(DeadLetterError::Interrupted {
                        replayed: report.replayed,
                        skipped: report.skipped,
                    })
                }
            }
        }
        report.remaining = lane.pending.load(Ordering::Acquire);
        // Segments wholly replayed are deleted (never the last, which the writer holds).
        let (dir, id, replayed_to) = (self.dir.clone(), lane.id.clone(), cursor.next);
        let deleted = blocking(move || {
            Ok(crate::sink::spool::retention::apply(
                &dir,
                &id,
                Some(replayed_to),
                0,
            )?)
        })
        .await;
        match deleted {
            Ok((0, _)) => {}
            Ok((segments, bytes)) => {
                tracing::info!(integration = %lane.id, segments, bytes, "dead letters: replayed segments deleted")
            }
            Err(e) => {
                tracing::warn!(integration = %lane.id, error = %e, "dead letters: replayed segments not deleted")
            }
        }
        Ok(report)
    }

    async fn reader_at(&self, id: &str, offset: u64) -> Result<SpoolReader, DeadLetterError> {
        let (dir, id) = (self.dir.clone(), id.to_owned());
        blocking(move || {
            let mut reader = SpoolReader::open(&dir, &id)?;
            reader.seek(offset);
            Ok(reader)
        })
        .await
    }

    /// The integration's lane, opening its spool and counting what waits on first use.
    async fn lane(self: &Arc<Self>, id: &Arc<str>) -> Result<Arc<Lane>, DeadLetterError> {
        if let Some(lane) = lock(&self.lanes).get(id) {
            return Ok(lane.clone());
        }
        let (this, id) = (Arc::clone(self), id.clone());
        blocking(move || this.open_lane(id)).await
    }

    fn open_lane(&self, id: Arc<str>) -> Result<Arc<Lane>, DeadLetterError> {
        let open_err = |source| DeadLetterError::Open {
            id: id.clone(),
            source,
        };
        let queue = self.dispatcher.queue(&id).map_err(open_err)?;
        let durable_end = lock(&self.durable_ends)
            .get(&*id)
            .cloned()
            .ok_or_else(|| open_err(SinkError::Unavailable("spool not registered".into())))?;
        let cursor_path = self.dir.join(&*id).join(CURSOR_FILE);
        let cursor = Cursor::load(&cursor_path)?;
        let pending = count_pending(&self.dir, &id, &cursor)?;
        let lane = Arc::new(Lane {
            id: id.clone(),
            queue,
            durable_end,
            pending: AtomicU64::new(pending),
            cursor_path,
            cursor: tokio::sync::Mutex::new(cursor),
        });
        // A lane opened concurrently and published first wins; this one was never used.
        Ok(lock(&self.lanes).entry(id).or_insert(lane).clone())
    }
}

/// Where a dead letter's number routes in `snapshot`, if it is still this integration's.
fn route_now(snapshot: &Snapshot, envelope: &Envelope) -> Target {
    let Some(entry) = snapshot.lookup(&envelope.number) else {
        return Target::Skip;
    };
    if entry.integration().id != envelope.integration_id {
        return Target::Skip;
    }
    if !entry.integration().active || entry.routing != Routing::Active {
        return Target::Wait;
    }
    Target::Queue(entry.queue().clone())
}

/// Submits a batch in order, then waits for every ack; returns the handled spans.
async fn replay_batch(
    batch: Vec<Record>,
    route: &impl Fn(&Envelope) -> Target,
    report: &mut ReplayReport,
) -> (Vec<(u64, u64)>, Flow) {
    let mut spans = Vec::with_capacity(batch.len());
    let mut acks = Vec::with_capacity(batch.len());
    let mut flow = Flow::Continue;
    let mut skipped = 0;
    for Record {
        start,
        end,
        mut envelope,
    } in batch
    {
        let queue = match route(&envelope) {
            Target::Queue(q) => q,
            Target::Skip => {
                tracing::warn!(integration = %envelope.integration_id, number = %envelope.number, offset = start, "dead letter skipped: its number is no longer in the integration's inventory");
                spans.push((start, end));
                skipped += 1;
                continue;
            }
            Target::Wait => {
                flow = Flow::Wait;
                break;
            }
        };
        envelope.queue = queue.queue().clone();
        match submit(&queue, envelope).await {
            Ok(rx) => acks.push(((start, end), rx)),
            Err(_) => {
                flow = Flow::Failed;
                break;
            }
        }
    }
    let mut replayed = 0;
    for (span, rx) in acks {
        if rx.await == Ok(true) {
            spans.push(span);
            replayed += 1;
        } else {
            flow = Flow::Failed;
        }
    }
    metrics::counter!("sms_ingress_dead_letters_replayed_total").increment(replayed);
    metrics::counter!("sms_ingress_dead_letters_skipped_total").increment(skipped);
    report.replayed += replayed;
    report.skipped += skipped;
    (spans, flow)
}

/// `try_submit`, waiting a little while the queue is full.
async fn submit(
    queue: &QueueHandle,
    envelope: Envelope,
) -> Result<oneshot::Receiver<bool>, SubmitError> {
    let deadline = Instant::now() + SUBMIT_PATIENCE;
    loop {
        match queue.try_submit(envelope.clone()) {
            Err(SubmitError::Full) if Instant::now() < deadline => {
                tokio::time::sleep(SUBMIT_RETRY).await
            }
            other => return other,
        }
    }
}

/// The next records the cursor has not handled, on the blocking pool.
async fn read_batch(
    mut reader: SpoolReader,
    cursor: &Cursor,
    durable_end: u64,
) -> Result<(SpoolReader, Vec<Record>), DeadLetterError> {
    let cursor = cursor.clone();
    blocking(move || {
        let batch = read_records(&mut reader, &cursor, REPLAY_BATCH, durable_end)?;
        Ok((reader, batch))
    })
    .await
}

/// Up to `max` records the cursor has not settled, all wholly before `durable_end`.
fn read_records(
    reader: &mut SpoolReader,
    cursor: &Cursor,
    max: usize,
    durable_end: u64,
) -> Result<Vec<Record>, SpoolError> {
    let mut out = Vec::new();
    while out.len() < max && reader.position() < durable_end {
        let Some((start, envelope)) = reader.next_record()? else {
            break;
        };
        if !cursor.is_done(start) {
            let end = reader.position();
            out.push(Record {
                start,
                end,
                envelope,
            });
        }
    }
    Ok(out)
}

/// How many records of a freshly opened spool the cursor has not handled.
fn count_pending(dir: &Path, id: &str, cursor: &Cursor) -> Result<u64, SpoolError> {
    let mut reader = SpoolReader::open(dir, id)?;
    reader.seek(cursor.next);
    let mut pending = 0;
    loop {
        let batch = read_records(&mut reader, cursor, REPLAY_BATCH, u64::MAX)?;
        if batch.is_empty() {
            return Ok(pending);
        }
        pending += batch.len() as u64;
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, DeadLetterError> + Send + 'static,
) -> Result<T, DeadLetterError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| DeadLetterError::Task)?
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    const INT: &str = "int-00000000000000aa";

    fn env(i: usize) -> Envelope {
        Envelope {
            org: "org-a".into(),
            integration_id: INT.into(),
            queue: "old".into(),
            number: format!("+1555000{i:04}"),
            from: "+15559990000".into(),
            to: format!("+1555000{i:04}"),
            message_sid: format!("SM{i:032}"),
            body: bytes::Bytes::from(format!("Body=m{i}")),
            ..crate::fixtures::envelope()
        }
    }

    fn dead_letters(dir: &Path, max: u64) -> Arc<DeadLetters> {
        let mut cfg = Config::default();
        cfg.dead_letters.dir = dir.to_path_buf();
        cfg.dead_letters.max_per_integration = max;
        Arc::new(DeadLetters::new(&cfg, Arc::new(Inventory::default())))
    }

    /// A destination sink that records message SIDs, or fails while `fail` is set.
    struct Recording {
        sids: Arc<Mutex<Vec<String>>>,
        fail: Arc<AtomicBool>,
    }

    impl QueueSink for Recording {
        fn write_batch(&mut self, batch: &[&Envelope]) -> Result<(), SinkError> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(SinkError::Unavailable("test".into()));
            }
            let mut sids = lock(&self.sids);
            sids.extend(batch.iter().map(|e| e.message_sid.clone()));
            Ok(())
        }
    }

    /// Queues "good" and "bad" (whose sink fails while the flag is set), sharing one SID log.
    struct Destination {
        dispatcher: Dispatcher,
        sids: Arc<Mutex<Vec<String>>>,
        bad_fails: Arc<AtomicBool>,
    }

    impl Destination {
        fn new() -> Destination {
            let sids = Arc::new(Mutex::new(Vec::new()));
            let bad_fails = Arc::new(AtomicBool::new(false));
            let (s, f) = (sids.clone(), bad_fails.clone());
            let factory: SinkFactory = Box::new(move |name| {
                let fail = match name {
                    "bad" => f.clone(),
                    _ => Arc::new(AtomicBool::new(false)),
                };
                Ok(Box::new(Recording {
                    sids: s.clone(),
                    fail,
                }))
            });
            Destination {
                dispatcher: Dispatcher::new(factory, 64, 16),
                sids,
                bad_fails,
            }
        }

        fn sids(&self) -> Vec<String> {
            let mut v = lock(&self.sids).clone();
            v.sort();
            v
        }
    }

    fn sid(i: usize) -> String {
        env(i).message_sid
    }

    async fn store_all(dl: &Arc<DeadLetters>, range: std::ops::Range<usize>) {
        for i in range {
            dl.store(env(i)).await.unwrap();
        }
    }

    #[tokio::test]
    async fn at_most_max_dead_letters_wait_per_integration() {
        let tmp = tempfile::tempdir().unwrap();
        let dl = dead_letters(tmp.path(), 3);
        store_all(&dl, 0..3).await;
        let err = dl.store(env(3)).await.unwrap_err();
        assert_eq!(err.reason(), "dead_letter_full");
        let mut other = env(4);
        other.integration_id = "int-00000000000000bb".into();
        dl.store(other).await.unwrap();

        // The bound counts what waits, across a restart too, and a replay frees places.
        drop(dl);
        let dl = dead_letters(tmp.path(), 3);
        assert!(matches!(
            dl.store(env(5)).await,
            Err(DeadLetterError::Full(_))
        ));
        let dest = Destination::new();
        let good = dest.dispatcher.queue("good").unwrap();
        let report = dl
            .replay_with(INT, |_| Target::Queue(good.clone()))
            .await
            .unwrap();
        assert_eq!(
            report,
            ReplayReport {
                replayed: 3,
                skipped: 0,
                remaining: 0
            }
        );
        store_all(&dl, 6..9).await;
        assert!(dl.store(env(9)).await.is_err());
    }

    #[tokio::test]
    async fn replay_is_at_most_once_across_failures_calls_and_restarts() {
        let tmp = tempfile::tempdir().unwrap();
        let dl = dead_letters(tmp.path(), 100);
        store_all(&dl, 0..6).await;
        let dest = Destination::new();
        let (good, bad) = (
            dest.dispatcher.queue("good").unwrap(),
            dest.dispatcher.queue("bad").unwrap(),
        );
        // Dead letter 2 goes to a queue whose sink fails; the others are stored.
        let route = |e: &Envelope| {
            let q = if e.message_sid == sid(2) { &bad } else { &good };
            Target::Queue(q.clone())
        };
        dest.bad_fails.store(true, Ordering::SeqCst);
        let err = dl.replay_with(INT, route).await.unwrap_err();
        assert!(
            matches!(
                err,
                DeadLetterError::Interrupted {
                    replayed: 5,
                    skipped: 0
                }
            ),
            "{err}"
        );
        let want: Vec<String> = [0, 1, 3, 4, 5].into_iter().map(sid).collect();
        assert_eq!(dest.sids(), want);

        // After a restart only dead letter 2 waits, and only it is replayed.
        drop(dl);
        let dl = dead_letters(tmp.path(), 100);
        dest.bad_fails.store(false, Ordering::SeqCst);
        let report = dl.replay_with(INT, route).await.unwrap();
        assert_eq!(
            report,
            ReplayReport {
                replayed: 1,
                skipped: 0,
                remaining: 0
            }
        );
        let want: Vec<String> = (0..6).map(sid).collect();
        assert_eq!(dest.sids(), want);

        // Again: nothing is replayed twice; new dead letters are.
        assert_eq!(
            dl.replay_with(INT, route).await.unwrap(),
            ReplayReport::default()
        );
        store_all(&dl, 6..7).await;
        assert_eq!(dl.replay_with(INT, route).await.unwrap().replayed, 1);
        assert_eq!(dest.sids().len(), 7);
    }

    #[tokio::test]
    async fn replay_skips_unknown_numbers_and_stops_at_unrouted_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let dl = dead_letters(tmp.path(), 100);
        store_all(&dl, 0..4).await;
        let dest = Destination::new();
        let good = dest.dispatcher.queue("good").unwrap();
        let routed = AtomicBool::new(false);
        let route = |e: &Envelope| match e.message_sid {
            ref s if *s == sid(1) => Target::Skip,
            ref s if *s == sid(2) && !routed.load(Ordering::SeqCst) => Target::Wait,
            _ => Target::Queue(good.clone()),
        };
        let report = dl.replay_with(INT, &route).await.unwrap();
        assert_eq!(
            report,
            ReplayReport {
                replayed: 1,
                skipped: 1,
                remaining: 2
            }
        );
        routed.store(true, Ordering::SeqCst);
        let report = dl.replay_with(INT, &route).await.unwrap();
        assert_eq!(
            report,
            ReplayReport {
                replayed: 2,
                skipped: 0,
                remaining: 0
            }
        );
        assert_eq!(dest.sids(), vec![sid(0), sid(2), sid(3)]);
    }

    #[tokio::test]
    async fn replay_of_an_integration_without_dead_letters_is_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let dl = dead_letters(tmp.path(), 100);
        assert_eq!(dl.replay(INT).await.unwrap(), ReplayReport::default());
        assert!(!tmp.path().join(INT).exists());
        assert!(dl.healthy());
    }
}

//! One route's delivery of one queue: records come from the `Source` in log order, wait in
//! their conversation's queue (`Scheduler`), and are POSTed signed, retried with backoff
//! until a 2xx or `max_attempts` (then kept in the route's dead letters). The cursor —
//! everything before it settled — is saved after the 2xx, batched so one sync covers many.

use super::backoff;
use super::client::{Attempt, Sender, Signed};
use super::schedule::Scheduler;
use super::sign::Secrets;
use super::source::Source;
use super::status::{QueueStats, RouteState};
use crate::cursor::{Cursor, CursorError};
use crate::sink::spool::feed::{Feed, Record};
use crate::sink::spool::SpoolWriter;
use crate::sink::QueueSink;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::task::JoinSet;

/// How often a cursor with settled records is saved, at most (one sync covers them all).
const SAVE_EVERY: Duration = Duration::from_millis(10);
/// Pause before a failed dead-letter write or file read is tried again.
const RETRY_IO: Duration = Duration::from_secs(1);

/// What every queue of one route shares: its endpoint, secrets, policy and dead letters.
pub struct Route {
    pub name: Arc<str>,
    pub secrets: Secrets,
    pub sender: Sender,
    pub concurrency: usize,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub max_attempts: u32,
    /// The route's dead letters (`<delivery.dir>/<route>/dead-letters/`), written by the
    /// server only.
    pub dead_letters: Option<Mutex<SpoolWriter>>,
    /// Where its cursors live: `<delivery.dir>/<route>/cursor/<org>/<queue>.json`.
    pub dir: PathBuf,
    pub state: Arc<RouteState>,
    attempts: [metrics::Counter; 4],
    duration: metrics::Histogram,
    dead_lettered: metrics::Counter,
}

/// How a record left the route.
enum Settled {
    Delivered,
    DeadLettered,
}

impl Route {
    /// A route over these parts; its metrics are registered once here.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        secrets: Secrets,
        sender: Sender,
        concurrency: usize,
        retry_initial: Duration,
        retry_max: Duration,
        max_attempts: u32,
        dead_letters: Option<SpoolWriter>,
        dir: PathBuf,
    ) -> Route {
        let attempt = |result: &'static str| metrics::counter!("sms_ingress_delivery_attempts_total", "route" => name.to_string(), "result" => result);
        Route {
            name: Arc::from(name),
            secrets,
            sender,
            concurrency,
            retry_initial,
            retry_max,
            max_attempts,
            dead_letters: dead_letters.map(Mutex::new),
            state: Arc::new(RouteState::new(name, dir.join("status.json"))),
            dir,
            attempts: ["delivered", "refused", "timeout", "error"].map(attempt),
            duration: metrics::histogram!("sms_ingress_delivery_duration_seconds", "route" => name.to_string()),
            dead_lettered: metrics::counter!("sms_ingress_delivery_dead_letters_total", "route" => name.to_string()),
        }
    }

    /// The cursor file of one of its queues (`ORG/QUEUE`).
    pub fn cursor_path(&self, queue: &str) -> PathBuf {
        self.dir.join("cursor").join(format!("{queue}.json"))
    }

    fn count(&self, attempt: &Attempt) {
        let at = match attempt {
            Attempt::Delivered(_) => 0,
            Attempt::Refused(_) => 1,
            Attempt::TimedOut => 2,
            Attempt::Failed(_) => 3,
        };
        self.attempts[at].increment(1);
    }

    /// `settle`, for a source that only needs to know it is done.
    pub(crate) async fn settle_record(&self, record: &Record) {
        let _ = self.settle(record).await;
    }

    /// Sends one record until routing takes it, or `max_attempts` failures (then it goes
    /// to the dead letters).
    async fn settle(&self, record: &Record) -> Settled {
        match self.deliver(record, self.max_attempts).await {
            Ok(()) => Settled::Delivered,
            Err(_) => {
                self.dead_letter(record).await;
                Settled::DeadLettered
            }
        }
    }

    /// Sends one record until routing takes it (`Ok`), or `give_up` failures (0: never;
    /// `Err` with the last error). The body and `webhook-id` are the same on every
    /// attempt; the timestamp and signature are the attempt's.
    pub(crate) async fn deliver(&self, record: &Record, give_up: u32) -> Result<(), String> {
        let env = &record.envelope;
        let body = Bytes::from(env.to_json_bytes(record.offset, record.next_offset));
        let id = env.webhook_id();
        let mut failures = 0;
        loop {
            let timestamp = unix_secs();
            let signature = self.secrets.sign(&id, timestamp, &body);
            let started = Instant::now();
            let signed = Signed {
                id: &id,
                timestamp,
                signature: &signature,
            };
            let attempt = self.sender.post(body.clone(), &signed).await;
            self.duration.record(started.elapsed().as_secs_f64());
            self.count(&attempt);
            let Some(error) = attempt.error() else {
                return Ok(());
            };
            failures += 1;
            tracing::debug!(route = %self.name, offset = record.offset, failures, error, "delivery attempt failed");
            self.state.failed(&error);
            if give_up > 0 && failures >= give_up {
                return Err(error);
            }
            let pause = backoff::pause(
                failures,
                self.retry_initial,
                self.retry_max,
                backoff::draw(),
            );
            tokio::time::sleep(pause).await;
        }
    }

    /// Makes a record durable in the dead letters before its conversation moves on.
    async fn dead_letter(&self, record: &Record) {
        let Some(dead_letters) = &self.dead_letters else {
            return;
        };
        loop {
            let written = tokio::task::block_in_place(|| {
                let mut writer = dead_letters
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                writer.write_batch(&[&record.envelope])
            });
            match written {
                Ok(()) => {
                    self.dead_lettered.increment(1);
                    tracing::warn!(route = %self.name, offset = record.offset, "delivery: record dead-lettered after max_attempts");
                    return;
                }
                Err(e) => {
                    tracing::error!(route = %self.name, error = %e, "delivery: dead letter not written; retrying");
                    tokio::time::sleep(RETRY_IO).await;
                }
            }
        }
    }
}

/// Seconds since the Unix epoch.
fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The conversation of a record: our number and the customer's, hashed.
fn conversation(record: &Record) -> u64 {
    foldhash::fast::FixedState::default().hash_one(record.envelope.conversation())
}

/// Delivers one queue (`ORG/QUEUE`) of `route` from its saved cursor, until the queue is
/// released and everything it holds is delivered (or for as long as the process runs).
pub async fn run(route: Arc<Route>, spool_dir: PathBuf, queue: String, feed: Arc<Feed>) {
    let path = route.cursor_path(&queue);
    let loaded = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || Cursor::load(&path)).await
    };
    let mut cursor = match loaded {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::error!(route = %route.name, queue, error = %e, "delivery: cursor unreadable; this queue is not delivered");
            route.state.failed(&e.to_string());
            return;
        }
        Err(_) => return,
    };
    tracing::info!(route = %route.name, queue, cursor = cursor.next, "delivery: started");
    let window = (route.concurrency * 64).max(1024);
    let (tx, mut batches) = tokio::sync::mpsc::channel::<Vec<Record>>(2);
    let unread = Arc::new(std::sync::atomic::AtomicU64::new(0));
    tokio::spawn(read(
        Source::new(spool_dir, queue.clone(), cursor.next, &feed),
        tx,
        route.clone(),
        unread.clone(),
    ));
    let mut sched: Scheduler<u64, Record> = Scheduler::new(route.concurrency);
    let mut oldest: BTreeMap<u64, i64> = BTreeMap::new();
    let mut attempts: JoinSet<(u64, Record, Settled)> = JoinSet::new();
    // At most one save at a time, off the loop: attempts go on while it syncs.
    let mut saving: JoinSet<(u64, Result<(), CursorError>)> = JoinSet::new();
    let mut dirty = false;
    let mut saved_at = Instant::now();
    // What the saved cursor says: retention may delete what is before it, never more.
    let mut saved_cursor = cursor.next;
    // Record sizes seen, to estimate how many records the unread bytes hold.
    let (mut seen_bytes, mut seen_records) = (0u64, 0u64);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    // Set once the source has ended (the queue was released, and all of it read).
    let mut read_all = false;
    loop {
        if read_all && sched.pending() == 0 && attempts.is_empty() && !dirty && saving.is_empty() {
            tracing::info!(route = %route.name, queue, cursor = saved_cursor, "delivery: queue released and delivered; stopped");
            route.state.forget(&queue);
            return;
        }
        while let Some((key, record)) = sched.next() {
            let route = route.clone();
            attempts.spawn(async move {
                let settled = route.settle(&record).await;
                (key, record, settled)
            });
        }
        let save_in = SAVE_EVERY.saturating_sub(saved_at.elapsed());
        tokio::select! {
            received = batches.recv(), if !read_all && sched.pending() < window => {
                let Some(records) = received else {
                    read_all = true;
                    continue;
                };
                for record in records {
                    seen_bytes += record.next_offset - record.offset;
                    seen_records += 1;
                    if cursor.is_done(record.offset) {
                        continue; // settled before a restart
                    }
                    oldest.insert(record.offset, record.envelope.received_at_ms);
                    sched.push(conversation(&record), record);
                }
            }
            Some(joined) = attempts.join_next() => {
                let Ok((key, record, _settled)) = joined else { continue };
                sched.settle(&key);
                oldest.remove(&record.offset);
                cursor.mark(&[(record.offset, record.next_offset)]);
                dirty = true;
            }
            _ = tokio::time::sleep(save_in), if dirty && saving.is_empty() => {
                let saved = cursor.clone();
                let path = path.clone();
                saving.spawn_blocking(move || (saved.next, saved.save(&path)));
                dirty = false;
                saved_at = Instant::now();
            }
            Some(joined) = saving.join_next() => {
                match joined {
                    Ok((next, Ok(()))) => saved_cursor = next,
                    Ok((_, Err(e))) => {
                        tracing::error!(route = %route.name, error = %e, "delivery: cursor not saved; retrying");
                        route.state.failed(&e.to_string());
                        dirty = true;
                    }
                    Err(_) => dirty = true,
                }
            }
            _ = tick.tick() => {
                let unread_bytes = unread.load(std::sync::atomic::Ordering::Relaxed);
                route.state.update(&queue, QueueStats {
                    cursor: saved_cursor,
                    pending: sched.pending() as u64,
                    in_flight: sched.in_flight() as u64,
                    unread_records: unread_bytes / (seen_bytes / seen_records.max(1)).max(1),
                    oldest_ms: oldest.values().next().copied(),
                });
            }
        }
    }
}

/// Hands the source's records to the worker, in order, waiting while it is full.
async fn read(
    mut source: Source,
    tx: tokio::sync::mpsc::Sender<Vec<Record>>,
    route: Arc<Route>,
    unread: Arc<std::sync::atomic::AtomicU64>,
) {
    loop {
        unread.store(source.unread_bytes(), std::sync::atomic::Ordering::Relaxed);
        match source.next().await {
            Ok(Some(records)) => {
                if tx.send(records).await.is_err() {
                    return;
                }
            }
            // The queue was released and everything durable is handed out.
            Ok(None) => return,
            Err(e) => {
                tracing::error!(route = %route.name, error = %e, "delivery: spool not readable; retrying");
                route.state.failed(&e.to_string());
                tokio::time::sleep(RETRY_IO).await;
            }
        }
    }
}

//! Dispatch: one bounded lock-free channel and one sink worker thread per queue. The
//! request task `try_send`s and awaits its acknowledgement; the worker drains what is
//! waiting, makes the batch durable with one call (group commit) and answers each request.
//! A queue no snapshot references any more is released: its worker writes what is still
//! queued, then ends, closing its sink (files, feed) and dropping its metric series.

use crate::envelope::Envelope;
use crate::sink::{QueueSink, SinkError};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// How long opening a queue waits for its previous worker (released) to end.
const CLOSE_WAIT: Duration = Duration::from_secs(30);

/// One envelope and the request waiting for its durability. The envelope is boxed so a
/// channel slot is two words: a queue's channel is allocated whole when it opens, and
/// `queues.capacity` slots of a whole envelope each were 1.3 MiB per queue.
pub(crate) struct Job {
    envelope: Box<Envelope>,
    done: oneshot::Sender<bool>,
}

/// Why an envelope could not be handed to its queue; each answers 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("queue is full")]
    Full,
    #[error("queue worker has stopped")]
    Closed,
    #[error("queue holds sink.max_queue_bytes on disk that its consumers have not passed")]
    DiskFull,
}

/// The sending side of one queue, shared by every snapshot entry routed to it.
pub(crate) struct QueueHandle {
    /// `ORG/QUEUE` (or a dead-letter spool's integration id): the key of its sink.
    name: Arc<str>,
    /// The queue's own name, the last part of `name`, as envelopes carry it.
    queue: Arc<str>,
    tx: Sender<Job>,
    healthy: Arc<AtomicBool>,
    /// Set while the queue is over its disk bound (spool only).
    disk_full: Option<Arc<AtomicBool>>,
    /// Registered once, so submitting costs no metric lookup.
    enqueued: metrics::Counter,
}

impl std::fmt::Debug for QueueHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueHandle")
            .field("name", &self.name)
            .finish()
    }
}

impl QueueHandle {
    /// The queue's own name within its org, as envelopes carry it.
    pub(crate) fn queue(&self) -> &Arc<str> {
        &self.queue
    }

    /// Hands an envelope over without blocking; the receiver yields `true` once it is durable.
    pub(crate) fn try_submit(
        &self,
        envelope: Envelope,
    ) -> Result<oneshot::Receiver<bool>, SubmitError> {
        if self
            .disk_full
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
        {
            return Err(SubmitError::DiskFull);
        }
        let (done, rx) = oneshot::channel();
        match self.tx.try_send(Job {
            envelope: Box::new(envelope),
            done,
        }) {
            Ok(()) => {
                self.enqueued.increment(1);
                Ok(rx)
            }
            Err(TrySendError::Full(_)) => Err(SubmitError::Full),
            Err(TrySendError::Disconnected(_)) => Err(SubmitError::Closed),
        }
    }

    /// Whether the last batch of this queue reached its sink.
    pub(crate) fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

/// Opens the sink of a queue by name; the spool opens (and recovers) its log here.
pub type SinkFactory = Box<dyn Fn(&str) -> Result<Box<dyn QueueSink>, SinkError> + Send + Sync>;

/// Tells whether the sink can take a batch right now (a NATS connection), so `/readyz` sees an outage before a webhook fails.
pub(crate) type SinkProbe = Arc<dyn Fn() -> bool + Send + Sync>;

/// The queues: open ones, and released ones whose worker may still be writing.
#[derive(Default)]
struct Queues {
    /// Each with what tells when its worker has ended.
    open: HashMap<String, (Arc<QueueHandle>, mpsc::Receiver<()>)>,
    /// Ends (disconnects) when the released queue's worker has closed its sink.
    closing: HashMap<String, mpsc::Receiver<()>>,
}

/// Owns every queue: creates channel and worker the first time a snapshot routes to a
/// queue, and releases them once nothing references the queue.
pub struct Dispatcher {
    queues: Mutex<Queues>,
    spawner: crate::background::Spawner,
    factory: SinkFactory,
    probe: Option<SinkProbe>,
    capacity: usize,
    max_batch: usize,
}

impl Dispatcher {
    /// A dispatcher whose queues hold `capacity` envelopes and sync at most `max_batch` at once.
    pub fn new(factory: SinkFactory, capacity: usize, max_batch: usize) -> Dispatcher {
        Dispatcher {
            queues: Mutex::default(),
            // Queues are opened by (nicer) control-plane changes; workers must sync at ours.
            spawner: crate::background::Spawner::start("sink-spawner"),
            factory,
            probe: None,
            capacity,
            max_batch,
        }
    }

    /// Adds a sink-wide readiness check to `healthy`, for sinks whose outage is visible without a batch.
    pub(crate) fn with_probe(mut self, probe: SinkProbe) -> Dispatcher {
        self.probe = Some(probe);
        self
    }

    /// The queue's handle, starting its sink and worker on first use (control plane only).
    /// A queue released a moment ago is opened again once its old worker has ended, so
    /// one log never has two writers.
    pub(crate) fn queue(&self, name: &str) -> Result<Arc<QueueHandle>, SinkError> {
        let mut queues = self.lock();
        if let Some((q, _)) = queues.open.get(name) {
            return Ok(q.clone());
        }
        if let Some(closing) = queues.closing.remove(name) {
            if let Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) = closing.recv_timeout(CLOSE_WAIT)
            {
                queues.closing.insert(name.to_string(), closing);
                return Err(SinkError::Unavailable(
                    format!("queue {name} is still closing; try again").into(),
                ));
            }
        }
        let sink = (self.factory)(name)?;
        let (tx, rx) = crossbeam_channel::bounded(self.capacity);
        let healthy = Arc::new(AtomicBool::new(true));
        let handle = Arc::new(QueueHandle {
            name: Arc::from(name),
            queue: Arc::from(name.rsplit('/').next().unwrap_or(name)),
            tx,
            healthy: healthy.clone(),
            disk_full: sink.full_flag(),
            enqueued: metrics::counter!("sms_ingress_enqueued_total", "queue" => name.to_string()),
        });
        let (exited, closing) = mpsc::channel();
        let worker = Worker {
            queue: name.to_string(),
            rx,
            sink,
            healthy,
            max_batch: self.max_batch,
            exited,
        };
        self.spawner
            .spawn(
                format!("sink-{}", name.replace('/', ":")),
                Box::new(move || worker.run()),
            )
            .map_err(SinkError::from)?;
        queues
            .open
            .insert(name.to_string(), (handle.clone(), closing));
        metrics::gauge!("sms_ingress_queues_open").set(queues.open.len() as f64);
        Ok(handle)
    }

    /// Releases every queue nothing references but this dispatcher (no snapshot, no
    /// request, no dead-letter spool) and whose channel is empty: its worker ends once it
    /// has written what it holds. Returns the queues released.
    pub(crate) fn release_unused(&self) -> Vec<String> {
        let mut queues = self.lock();
        let unused: Vec<String> = queues
            .open
            .iter()
            .filter(|(_, (q, _))| Arc::strong_count(q) == 1 && q.tx.is_empty())
            .map(|(name, _)| name.clone())
            .collect();
        // Workers that have ended need no waiting for.
        queues
            .closing
            .retain(|_, c| matches!(c.try_recv(), Err(mpsc::TryRecvError::Empty)));
        for name in &unused {
            let (handle, exited) = queues.open.remove(name).expect("listed");
            // The worker holds the only receiver; dropping the last sender ends it after
            // the envelopes still in the channel (none: it was empty and nobody can send).
            drop(handle);
            queues.closing.insert(name.clone(), exited);
        }
        metrics::gauge!("sms_ingress_queues_open").set(queues.open.len() as f64);
        unused
    }

    /// The number of open queues.
    pub(crate) fn open_queues(&self) -> usize {
        self.lock().open.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// True when the sink probe (if any) passes and every queue's sink took its last batch (for `/readyz`).
    pub(crate) fn healthy(&self) -> bool {
        if let Some(probe) = &self.probe {
            if !probe() {
                return false;
            }
        }
        self.lock().open.values().all(|(q, _)| q.healthy())
    }
}

struct Worker {
    queue: String,
    rx: Receiver<Job>,
    sink: Box<dyn QueueSink>,
    healthy: Arc<AtomicBool>,
    max_batch: usize,
    /// Dropped after the sink: tells a reopening of the queue that this worker is gone.
    exited: mpsc::Sender<()>,
}

impl Worker {
    /// Blocks for the first job, takes whatever else is waiting, syncs once, answers all.
    fn run(mut self) {
        let mut batch: Vec<Job> = Vec::with_capacity(self.max_batch);
        while let Some(first) = self.next_job() {
            batch.push(first);
            while batch.len() < self.max_batch {
                match self.rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.flush(&mut batch);
        }
        // Released: close the sink, then the queue's metric series, then say so.
        let Worker {
            queue,
            sink,
            exited,
            ..
        } = self;
        drop(sink);
        crate::telemetry::forget_queue(&queue);
        tracing::debug!(queue = %queue, "queue worker ended");
        drop(exited);
    }

    /// The next job; while unhealthy, probes the sink every second so health recovers without traffic.
    fn next_job(&mut self) -> Option<Job> {
        loop {
            if self.healthy.load(Ordering::Relaxed) {
                return self.rx.recv().ok();
            }
            match self.rx.recv_timeout(std::time::Duration::from_secs(1)) {
                Ok(job) => return Some(job),
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return None,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    if self.sink.check().is_ok() {
                        self.healthy.store(true, Ordering::Relaxed);
                        tracing::info!(queue = %self.queue, "sink healthy again");
                    }
                }
            }
        }
    }

    fn flush(&mut self, batch: &mut Vec<Job>) {
        let envelopes: Vec<&Envelope> = batch.iter().map(|j| &*j.envelope).collect();
        let result = self.sink.write_batch(&envelopes);
        let ok = result.is_ok();
        if let Err(e) = &result {
            tracing::error!(queue = %self.queue, batch = batch.len(), error = %e, "sink batch failed; answering 503");
        }
        if ok != self.healthy.swap(ok, Ordering::Relaxed) {
            tracing::warn!(queue = %self.queue, healthy = ok, "sink health changed");
        }
        if ok {
            metrics::counter!("sms_ingress_acknowledged_total", "queue" => self.queue.clone())
                .increment(batch.len() as u64);
        }
        metrics::gauge!("sms_ingress_queue_depth", "queue" => self.queue.clone())
            .set(self.rx.len() as f64);
        for job in batch.drain(..) {
            let _ = job.done.send(ok);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::AtomicUsize;

    #[test]
    fn a_channel_slot_is_small() {
        assert!(
            std::mem::size_of::<Job>() <= 16,
            "{}",
            std::mem::size_of::<Job>()
        );
    }

    struct Counting {
        batches: Arc<AtomicUsize>,
        fail: Arc<AtomicBool>,
    }

    impl QueueSink for Counting {
        fn write_batch(&mut self, _batch: &[&Envelope]) -> Result<(), SinkError> {
            std::thread::sleep(std::time::Duration::from_millis(20));
            self.batches.fetch_add(1, Ordering::SeqCst);
            if self.fail.load(Ordering::SeqCst) {
                return Err(SinkError::Unavailable("test".into()));
            }
            Ok(())
        }

        fn check(&mut self) -> Result<(), SinkError> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(SinkError::Unavailable("test".into()));
            }
            Ok(())
        }
    }

    fn env() -> Envelope {
        crate::fixtures::envelope()
    }

    fn dispatcher(capacity: usize) -> (Dispatcher, Arc<AtomicUsize>, Arc<AtomicBool>) {
        let batches = Arc::new(AtomicUsize::new(0));
        let fail = Arc::new(AtomicBool::new(false));
        let (b, f) = (batches.clone(), fail.clone());
        let factory: SinkFactory = Box::new(move |_| {
            Ok(Box::new(Counting {
                batches: b.clone(),
                fail: f.clone(),
            }))
        });
        (Dispatcher::new(factory, capacity, 64), batches, fail)
    }

    /// The nice value of this process's thread named `name` (from /proc). Other tests'
    /// threads come and go meanwhile: one that vanished mid-listing is skipped.
    fn nice_of_thread(name: &str) -> Option<i64> {
        for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
            let dir = entry.path();
            let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
                continue;
            };
            if comm.trim_end() == name {
                let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
                let after_comm = &stat[stat.rfind(')')? + 2..];
                return after_comm.split_whitespace().nth(16)?.parse().ok();
            }
        }
        None
    }

    #[test]
    fn a_queue_opened_by_a_nicer_thread_syncs_at_the_dispatchers_priority() {
        let (d, _, _) = dispatcher(4);
        // SAFETY: getpriority/nice only read or change the calling thread's nice value.
        let ours = unsafe {
            libc::getpriority(
                libc::PRIO_PROCESS,
                libc::syscall(libc::SYS_gettid) as libc::id_t,
            )
        };
        std::thread::scope(|s| {
            s.spawn(|| {
                unsafe { libc::nice(5) };
                d.queue("nicer").unwrap();
            })
            .join()
            .unwrap()
        });
        // The new thread names itself once it runs: wait for it (bounded).
        let mut nice = None;
        for _ in 0..200 {
            nice = nice_of_thread("sink-nicer");
            if nice.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(nice, Some(i64::from(ours)));
    }

    #[tokio::test]
    async fn batches_group_waiting_jobs() {
        let (d, batches, _) = dispatcher(100);
        let q = d.queue("q").unwrap();
        let rxs: Vec<_> = (0..50).map(|_| q.try_submit(env()).unwrap()).collect();
        for rx in rxs {
            assert!(rx.await.unwrap());
        }
        let n = batches.load(Ordering::SeqCst);
        assert!(n < 50, "50 jobs took {n} batches; expected grouping");
        assert!(Arc::ptr_eq(&q, &d.queue("q").unwrap()));
    }

    #[tokio::test]
    async fn an_unreferenced_queue_is_released_after_writing_what_it_holds_and_reopens() {
        let (d, batches, _) = dispatcher(100);
        let q = d.queue("o/q").unwrap();
        let pending: Vec<_> = (0..5).map(|_| q.try_submit(env()).unwrap()).collect();
        assert!(
            d.release_unused().is_empty(),
            "held by a snapshot (here: q)"
        );
        drop(q);
        // Jobs still in the channel keep it: only an empty channel is released.
        let mut released = Vec::new();
        for _ in 0..200 {
            released = d.release_unused();
            if !released.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(released, ["o/q"]);
        for rx in pending {
            assert!(
                rx.await.unwrap(),
                "what was queued is written before the worker ends"
            );
        }
        assert_eq!(d.open_queues(), 0);
        let before = batches.load(Ordering::SeqCst);
        let again = d.queue("o/q").unwrap();
        assert!(again.try_submit(env()).unwrap().await.unwrap());
        assert!(batches.load(Ordering::SeqCst) > before);
        assert_eq!(d.open_queues(), 1);
    }

    #[tokio::test]
    async fn full_queue_refuses() {
        let (d, _, _) = dispatcher(2);
        let q = d.queue("q").unwrap();
        let mut results = Vec::new();
        for _ in 0..10 {
            results.push(q.try_submit(env()));
        }
        assert!(results.iter().any(|r| matches!(r, Err(SubmitError::Full))));
    }

    #[tokio::test]
    async fn failed_batch_answers_false_and_marks_unhealthy() {
        let (d, _, fail) = dispatcher(10);
        fail.store(true, Ordering::SeqCst);
        let q = d.queue("q").unwrap();
        assert!(!q.try_submit(env()).unwrap().await.unwrap());
        assert!(!d.healthy());
        fail.store(false, Ordering::SeqCst);
        assert!(q.try_submit(env()).unwrap().await.unwrap());
        assert!(d.healthy());
    }

    #[tokio::test]
    async fn health_recovers_without_traffic() {
        let (d, _, fail) = dispatcher(10);
        fail.store(true, Ordering::SeqCst);
        let q = d.queue("q").unwrap();
        assert!(!q.try_submit(env()).unwrap().await.unwrap());
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        assert!(!d.healthy(), "still failing: must stay unhealthy");
        fail.store(false, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !d.healthy() {
            assert!(
                std::time::Instant::now() < deadline,
                "health never recovered"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

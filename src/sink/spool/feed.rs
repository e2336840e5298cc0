//! A queue's feed: what its writer tells the consumers in this process (delivery routes)
//! after each durable batch — the batch itself, in memory, so a consumer that keeps up
//! never reads the files, and the durable end, so one that fell behind reads the files no
//! further than what is durable (a batch whose sync fails is cut, and its offsets reused).

use crate::envelope::Envelope;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{broadcast, watch};

/// Batches a slow consumer may fall behind before it reads the files instead.
const BATCHES_BUFFERED: usize = 256;

/// One durable record: where it is in the queue's log, and the envelope.
#[derive(Debug, Clone)]
pub struct Record {
    pub offset: u64,
    pub next_offset: u64,
    pub envelope: Arc<Envelope>,
}

/// The feed of one queue, shared by its writer and its consumers.
#[derive(Debug)]
pub struct Feed {
    batches: broadcast::Sender<Arc<[Record]>>,
    durable: watch::Sender<u64>,
    /// Bytes of the queue's segments on disk (the writer adds, retention subtracts).
    bytes: AtomicU64,
    /// `sink.max_queue_bytes`; 0 is no limit.
    max_bytes: u64,
    /// Set while `bytes` is over `max_bytes`: new webhooks for the queue answer 503.
    full: Arc<AtomicBool>,
    /// `sms_ingress_spool_bytes` of the queue, kept equal to `bytes`.
    gauge: metrics::Gauge,
    /// Set when the writer closed (the queue was released): the durable end is final.
    closed: AtomicBool,
}

impl Feed {
    /// A feed whose queue (`ORG/QUEUE`) ends (durably) at `end` and holds `bytes` on disk.
    pub fn new(queue: &str, end: u64, bytes: u64, max_bytes: u64) -> Feed {
        let (batches, _) = broadcast::channel(BATCHES_BUFFERED);
        let (durable, _) = watch::channel(end);
        let feed = Feed {
            batches,
            durable,
            bytes: AtomicU64::new(bytes),
            max_bytes,
            full: Arc::default(),
            gauge: metrics::gauge!("sms_ingress_spool_bytes", "queue" => queue.to_string()),
            closed: AtomicBool::new(false),
        };
        feed.judge_size();
        feed
    }

    /// Batches from now on, for a consumer.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<[Record]>> {
        self.batches.subscribe()
    }

    /// The durable end of the log, as it moves.
    pub fn durable_end(&self) -> watch::Receiver<u64> {
        self.durable.subscribe()
    }

    /// Whether some consumer listens (if none, a batch is not copied for the feed).
    pub fn has_consumers(&self) -> bool {
        self.batches.receiver_count() > 0
    }

    /// A batch is durable up to `end`: consumers hear of it.
    pub fn publish(&self, end: u64, records: Option<Arc<[Record]>>) {
        self.durable.send_replace(end);
        if let Some(records) = records {
            let _ = self.batches.send(records);
        }
    }

    /// The writer closed: consumers finish at the durable end (woken to see it).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.durable.send_modify(|_| {});
    }

    /// Whether the writer closed, so the durable end will not move again.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The flag new webhooks of the queue are refused by while the queue is over its bound.
    pub fn full_flag(&self) -> Arc<AtomicBool> {
        self.full.clone()
    }

    /// The queue's bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The queue grew (`delta` > 0, a batch) or shrank (retention) by `delta` bytes.
    pub fn resize(&self, grew: u64, shrank: u64) {
        if grew > 0 {
            self.bytes.fetch_add(grew, Ordering::Relaxed);
        }
        if shrank > 0 {
            let _ = self
                .bytes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                    Some(b.saturating_sub(shrank))
                });
        }
        self.judge_size();
    }

    fn judge_size(&self) {
        self.gauge.set(self.bytes() as f64);
        let over = self.max_bytes > 0 && self.bytes() > self.max_bytes;
        if over != self.full.swap(over, Ordering::Relaxed) {
            tracing::warn!(
                bytes = self.bytes(),
                max = self.max_bytes,
                full = over,
                "spool: queue crossed sink.max_queue_bytes"
            );
        }
    }
}

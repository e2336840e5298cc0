//! Sinks: where a queue's envelopes become durable. A sink worker hands each batch to
//! one `QueueSink`, and a request is acknowledged only after `write_batch` returned `Ok`.

pub mod nats;
pub mod spool;

use crate::envelope::Envelope;

/// The largest encoded envelope a sink stores (a spool frame's limit): a webhook whose
/// envelope is larger is refused alone, before it joins (and fails) a batch.
pub(crate) const MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;

/// What an envelope can hold besides the body and the fields decoded from it, apart from
/// its headers and URL: ids, names, the number, framing.
const ENVELOPE_FIXED_BYTES: usize = 2048;

/// The largest `server.max_body_bytes` whose envelopes always fit a record, given the
/// header limit and the public URL: the body, the fields decoded from it (at most the
/// body again), the signature and idempotency headers, the signed URL.
pub(crate) fn max_body_bytes_for(max_header_bytes: usize, public_url: &str) -> usize {
    MAX_RECORD_BYTES.saturating_sub(max_header_bytes + public_url.len() + ENVELOPE_FIXED_BYTES) / 2
}

/// A sink's own error, kept whole as the source.
pub(crate) type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Why a batch is not durable; every envelope of that batch is answered 503.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The disk or the OS refused (the source names the file).
    #[error("sink i/o failed: {0}")]
    Io(#[source] Cause),
    /// The sink cannot take the batch (connection down, record too large, damaged log).
    #[error("sink unavailable: {0}")]
    Unavailable(#[source] Cause),
}

impl From<std::io::Error> for SinkError {
    fn from(e: std::io::Error) -> SinkError {
        SinkError::Io(Box::new(e))
    }
}

/// One queue's durable store, driven by that queue's single worker thread.
pub trait QueueSink: Send {
    /// Makes every envelope of the batch durable in one operation (group commit), or none acknowledged.
    fn write_batch(&mut self, batch: &[&Envelope]) -> Result<(), SinkError>;

    /// Whether a batch could be made durable now; polled while the sink is unhealthy, so
    /// `/readyz` recovers even when no traffic arrives (a load balancer took us out).
    fn check(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Set while the queue is over its disk bound: its webhooks answer 503 before they are
    /// queued (only the spool has one).
    fn full_flag(&self) -> Option<std::sync::Arc<std::sync::atomic::AtomicBool>> {
        None
    }
}

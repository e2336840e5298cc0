//! Sinks: where a queue's envelopes become durable. A sink worker hands each batch to
//! one `QueueSink`, and a request is acknowledged only after `write_batch` returned `Ok`.

pub mod nats;
pub mod spool;

use crate::envelope::Envelope;

/// Why a batch is not durable; every envelope of that batch is answered 503.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink i/o failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("sink unavailable: {0}")]
    Unavailable(String),
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
}

//! Shutdown: one signal every listener and every connection watches. On SIGTERM the
//! listeners stop accepting, each connection finishes its in-flight requests and closes,
//! and start-up waits until all of them have (or the grace period ends).

use std::time::Duration;
use tokio::sync::watch;

/// What a listener or a connection holds: tells it when to stop. While any clone is alive,
/// `ShutdownSignal::wait_closed` waits.
#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// The sending side, held by start-up.
pub struct ShutdownSignal {
    tx: watch::Sender<bool>,
}

/// A shutdown signal and the receiver to hand to every listener.
pub fn channel() -> (ShutdownSignal, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownSignal { tx }, Shutdown { rx })
}

impl ShutdownSignal {
    /// Starts the shutdown: no new connections or requests, in-flight ones finish.
    pub fn begin(&self) {
        let _ = self.tx.send(true);
    }

    /// Waits until every listener and connection has ended (all receivers dropped), or the
    /// deadline; true if they all ended.
    pub async fn wait_closed(&self, deadline: Duration) -> bool {
        tokio::time::timeout(deadline, self.tx.closed())
            .await
            .is_ok()
    }
}

impl Shutdown {
    /// Resolves once the shutdown has begun (never, if the signal was dropped unsent).
    pub async fn signalled(&mut self) {
        while !*self.rx.borrow_and_update() {
            if self.rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Resolves at SIGINT or SIGTERM.
pub async fn terminate_requested() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

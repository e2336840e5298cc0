//! The bucket's watcher: feeds other instances' changes (and echoes of ours) to the store
//! over a channel, and reloads the whole bucket after the watch fails or the connection
//! dropped, saying so first so the store reports not ready meanwhile.

use super::backend::{change_of, KvBackend};
use super::records::Change;
use async_nats::jetstream::kv;
use futures_util::{FutureExt, StreamExt};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

/// Most watch entries folded into one snapshot rebuild.
const MAX_BATCH: usize = 4096;
/// How often the watcher looks at the connection while no entry arrives.
const POLL: Duration = Duration::from_millis(500);
/// Longest pause between two reload attempts while NATS is away.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What the watcher tells the store, in order.
#[derive(Debug)]
pub(crate) enum Event {
    /// Entries that arrived together (other instances' changes, echoes of ours).
    Changes(Vec<Change>),
    /// The watch failed or the connection dropped: refuse changes until `Reloaded`.
    Unsynced,
    /// The whole bucket, loaded again.
    Reloaded(Vec<Change>),
}

/// Starts the thread that watches the bucket and sends what it sees on `events`, and
/// reloads the whole bucket when the watch fails or the connection dropped. It ends when
/// the receiver is dropped.
pub(crate) fn spawn(
    backend: Arc<KvBackend>,
    watch: kv::Watch,
    events: Sender<Event>,
) -> std::io::Result<()> {
    let handle = backend.handle().clone();
    std::thread::Builder::new()
        .name("kv-watch".into())
        .spawn(move || handle.block_on(watch_loop(&backend, watch, &events)))?;
    Ok(())
}

async fn watch_loop(backend: &KvBackend, watch: kv::Watch, events: &Sender<Event>) {
    let mut watch = watch;
    let mut seen = backend.disconnects();
    loop {
        let (healthy, event) = match tokio::time::timeout(POLL, watch.next()).await {
            Ok(Some(Ok(entry))) => (
                true,
                Some(Event::Changes(drain(change_of(entry), &mut watch))),
            ),
            Ok(Some(Err(e))) => {
                tracing::warn!(error = %e, "control: KV watch failed; reloading the bucket");
                (false, None)
            }
            Ok(None) => {
                tracing::warn!("control: KV watch ended; reloading the bucket");
                (false, None)
            }
            Err(_) => (backend.disconnects() == seen, None),
        };
        if let Some(event) = event {
            if events.send(event).is_err() {
                return;
            }
        }
        if !healthy {
            if events.send(Event::Unsynced).is_err() {
                return;
            }
            seen = backend.disconnects();
            let (changes, next) = reload(backend).await;
            if events.send(Event::Reloaded(changes)).is_err() {
                return;
            }
            watch = next;
        }
    }
}

/// The first change and whatever else is already waiting, so a burst is one rebuild.
fn drain(first: Change, watch: &mut kv::Watch) -> Vec<Change> {
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match watch.next().now_or_never() {
            Some(Some(Ok(entry))) => batch.push(change_of(entry)),
            _ => break,
        }
    }
    batch
}

/// Loads the whole bucket again (retrying with backoff while NATS is away); returns it
/// and the watch that continues from there.
async fn reload(backend: &KvBackend) -> (Vec<Change>, kv::Watch) {
    let mut delay = Duration::from_millis(100);
    loop {
        if backend.is_connected() {
            match backend.load().await {
                Ok(loaded) => return loaded,
                Err(e) => tracing::warn!(error = %e, "control: KV reload failed; retrying"),
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_BACKOFF);
    }
}

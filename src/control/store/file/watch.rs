//! External edits of the state file (SPEC section 4): a `notify` watcher on the file's
//! directory (editors and config management replace files by rename) wakes a thread that
//! waits for the edit to settle, then says so on a channel; the store, which owns the
//! file, then syncs with it.

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use std::ffi::OsString;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// Quiet time after the last event before the file is read: long enough for an editor's
/// write-then-rename or a truncate-then-write to finish.
pub(crate) const DEBOUNCE: Duration = Duration::from_millis(150);

/// Longest a stream of events can delay a reload.
pub(crate) const MAX_SETTLE: Duration = Duration::from_secs(2);

/// Why the watcher could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The state file's directory cannot be created.
    #[error("control.state_file directory {path}: {source}")]
    Dir {
        /// The directory.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The OS watch could not be set up (inotify limits, permissions).
    #[error("cannot watch the state file's directory: {0}")]
    Notify(#[from] notify::Error),
    /// The watcher thread could not be started.
    #[error("cannot start the state file watcher thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// A running watcher; dropping it stops the watch and ends its thread.
pub(crate) struct StateWatcher {
    _watcher: notify::RecommendedWatcher,
}

impl std::fmt::Debug for StateWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateWatcher").finish_non_exhaustive()
    }
}

/// Watches `path`; every settled external edit is one `()` on the returned channel.
pub(crate) fn spawn(path: &Path) -> Result<(StateWatcher, Receiver<()>), WatchError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    std::fs::create_dir_all(&dir).map_err(|source| WatchError::Dir {
        path: dir.display().to_string(),
        source,
    })?;
    let name = path.file_name().unwrap_or_default().to_os_string();
    let (tx, rx) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |ev| {
        let _ = tx.send(ev);
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    let (edits, edited) = mpsc::channel();
    std::thread::Builder::new()
        .name("state-watch".into())
        .spawn(move || watch_loop(&rx, &name, &edits))
        .map_err(WatchError::Thread)?;
    tracing::info!(path = %path.display(), "watching the state file for external edits");
    Ok((StateWatcher { _watcher: watcher }, edited))
}

/// Waits for a relevant event, lets the edit settle, reports it; ends when the watcher or
/// the receiver is dropped.
fn watch_loop(rx: &Receiver<notify::Result<Event>>, name: &OsString, edits: &Sender<()>) {
    while let Ok(ev) = rx.recv() {
        if !relevant(&ev, name) {
            continue;
        }
        settle(rx);
        if edits.send(()).is_err() {
            return;
        }
    }
}

/// Drains events until none arrived for `DEBOUNCE` (at most `MAX_SETTLE` in all).
fn settle(rx: &Receiver<notify::Result<Event>>) {
    let start = Instant::now();
    while start.elapsed() < MAX_SETTLE {
        match rx.recv_timeout(DEBOUNCE) {
            Ok(_) => continue,
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Whether an event may have changed the state file's content. Reads (ours included) are
/// not; a watcher error (e.g. an overflowed queue) might hide one, so it counts.
pub(crate) fn relevant(ev: &notify::Result<Event>, name: &OsString) -> bool {
    let ev = match ev {
        Ok(ev) => ev,
        Err(e) => {
            tracing::warn!(error = %e, "state file watcher error; re-reading the file");
            return true;
        }
    };
    let content_may_change = match ev.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    };
    content_may_change
        && ev
            .paths
            .iter()
            .any(|p| p.file_name() == Some(name.as_os_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, ModifyKind, RenameMode};
    use std::path::PathBuf;

    fn event(kind: EventKind, path: &str) -> notify::Result<Event> {
        Ok(Event::new(kind).add_path(PathBuf::from(path)))
    }

    #[test]
    fn only_content_events_on_the_state_file_are_relevant() {
        let name = OsString::from("state.json");
        let rename = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        assert!(relevant(&event(rename, "/d/state.json"), &name));
        assert!(relevant(
            &event(EventKind::Create(CreateKind::File), "/d/state.json"),
            &name
        ));
        let close_write = EventKind::Access(AccessKind::Close(AccessMode::Write));
        assert!(relevant(&event(close_write, "/d/state.json"), &name));
        let open = EventKind::Access(AccessKind::Open(AccessMode::Any));
        assert!(!relevant(&event(open, "/d/state.json"), &name));
        assert!(!relevant(&event(rename, "/d/.state.json.tmp-1"), &name));
        assert!(relevant(&Err(notify::Error::generic("overflow")), &name));
    }
}

//! External edits of the state file (SPEC section 4): a `notify` watcher on the file's
//! directory (editors and config management replace files by rename) wakes a thread that
//! waits for the edit to settle, then asks the store to sync with the file. The pure half
//! lives here too: recognising the store's own writes by content hash (`decide`) and
//! judging an edit whole (`parse_external`) before the store swaps it in or rejects it.

use super::audit::redact_quoted;
use super::store::ControlStore;
use crate::model::state::{State, StateError};
use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use std::ffi::OsString;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Quiet time after the last event before the file is read: long enough for an editor's
/// write-then-rename or a truncate-then-write to finish.
pub const DEBOUNCE: Duration = Duration::from_millis(150);

/// Longest a stream of events can delay a reload.
const MAX_SETTLE: Duration = Duration::from_secs(2);

/// SHA-256 of the file's bytes; `None` when the file does not exist.
pub type Fingerprint = Option<[u8; 32]>;

/// The fingerprint of a file's content (`None` for a missing file).
pub fn fingerprint(bytes: Option<&[u8]>) -> Fingerprint {
    bytes.map(|b| {
        let digest = ring::digest::digest(&ring::digest::SHA256, b);
        digest.as_ref().try_into().expect("SHA-256 is 32 bytes")
    })
}

/// What the store knows of its file: the content it last wrote or adopted, and the last
/// content it rejected (so one bad edit is reported once, not at every event).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileMark {
    /// Fingerprint of the content the serving state came from (or was written as).
    pub known: Fingerprint,
    /// Fingerprint of the last content refused, if it is still what the file holds.
    pub rejected: Option<Fingerprint>,
    /// The file's identity when it last held content judged above: while it still has
    /// it, each admin change skips re-reading and hashing the whole file.
    pub stamp: Option<FileStamp>,
}

impl FileMark {
    /// What the store knows right after writing the file itself.
    pub fn written(known: Fingerprint, stamp: FileStamp) -> FileMark {
        FileMark {
            known,
            rejected: None,
            stamp: Some(stamp),
        }
    }
}

/// Inode, size and modification time of the state file. An edit replaces the inode
/// (editors and `write_atomic` rename) or writes in place, which moves the mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

impl FileStamp {
    /// The stamp of a file's metadata.
    pub fn of(meta: &std::fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }

    /// The stamp of the file at `path` now; `None` if it cannot be read.
    pub fn at(path: &std::path::Path) -> Option<FileStamp> {
        std::fs::metadata(path).ok().map(|m| FileStamp::of(&m))
    }
}

/// What to do about the file's current content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The store wrote or loaded exactly this: nothing to do (echo of our own write).
    Unchanged,
    /// This content was already judged invalid and reported.
    AlreadyRejected,
    /// Someone else changed the file: validate it and swap it in or reject it.
    Reload,
}

/// Compares the file's fingerprint with what the store knows.
pub fn decide(on_disk: Fingerprint, mark: &FileMark) -> Decision {
    if on_disk == mark.known {
        Decision::Unchanged
    } else if mark.rejected == Some(on_disk) {
        Decision::AlreadyRejected
    } else {
        Decision::Reload
    }
}

/// Why an external edit was rejected whole; the previous state keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file was removed; an empty inventory is never adopted by accident.
    #[error("the state file was removed; keeping the last good state")]
    Missing,
    /// The file exists but cannot be read.
    #[error("cannot read the state file: {0}")]
    Read(#[source] std::io::Error),
    /// Not JSON, or not the state schema (message redacted of quoted values).
    #[error("not valid JSON for the state schema: {0}")]
    Parse(String),
    /// Well-formed but breaks an invariant (duplicate number, bad account SID, ...).
    #[error("invalid state: {0}")]
    Invalid(String),
    /// The data plane could not build a snapshot from it (token does not open, queue fails).
    #[error("the data plane refused it: {0}")]
    Publish(String),
    /// Admin changes up to this version are in the journal, not yet in the file the edit
    /// was made on; the file is rewritten with them when changes pause.
    #[error(
        "the file was edited while admin changes up to version {0} were journaled beside it \
         and not yet written into it; edit the file again once it has been rewritten"
    )]
    JournalPending(u64),
}

impl ReloadError {
    /// The machine-readable code for audit lines and logs.
    pub fn code(&self) -> &'static str {
        match self {
            ReloadError::Missing => "file_missing",
            ReloadError::Read(_) => "file_unreadable",
            ReloadError::Parse(_) => "parse_error",
            ReloadError::Invalid(_) => "state_invalid",
            ReloadError::Publish(_) => "publish_failed",
            ReloadError::JournalPending(_) => "journal_pending",
        }
    }

    /// Maps the state module's error for a file that could not be read.
    pub fn from_read(e: StateError) -> Self {
        match e {
            StateError::Read { source, .. } => ReloadError::Read(source),
            other => ReloadError::Read(std::io::Error::other(other.to_string())),
        }
    }
}

/// Parses and validates an edited file whole. The version never goes backwards: an edit
/// that did not bump it still becomes the next version.
pub fn parse_external(bytes: &[u8], current_version: u64) -> Result<State, ReloadError> {
    let mut state: State = serde_json::from_slice(bytes)
        .map_err(|e| ReloadError::Parse(redact_quoted(&e.to_string())))?;
    state.validate().map_err(|e| match e {
        StateError::Invalid(m) => ReloadError::Invalid(m),
        other => ReloadError::Invalid(other.to_string()),
    })?;
    state.version = state.version.max(current_version + 1);
    Ok(state)
}

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
pub struct StateWatcher {
    _watcher: notify::RecommendedWatcher,
}

impl std::fmt::Debug for StateWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateWatcher").finish_non_exhaustive()
    }
}

/// Watches the store's file and syncs the store after each settled external edit.
pub fn spawn(store: Arc<ControlStore>) -> Result<StateWatcher, WatchError> {
    let path = store.path().to_path_buf();
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
    std::thread::Builder::new()
        .name("state-watch".into())
        .spawn(move || watch_loop(&rx, &name, &store))
        .map_err(WatchError::Thread)?;
    tracing::info!(path = %path.display(), "watching the state file for external edits");
    Ok(StateWatcher { _watcher: watcher })
}

/// Waits for a relevant event, lets the edit settle, syncs; ends when the watcher is dropped.
fn watch_loop(rx: &Receiver<notify::Result<Event>>, name: &OsString, store: &ControlStore) {
    while let Ok(ev) = rx.recv() {
        if !relevant(&ev, name) {
            continue;
        }
        settle(rx);
        store.sync_with_file();
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
pub fn relevant(ev: &notify::Result<Event>, name: &OsString) -> bool {
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

    #[test]
    fn decide_recognises_own_writes_and_reported_rejections() {
        let a = fingerprint(Some(b"a"));
        let b = fingerprint(Some(b"b"));
        let mut mark = FileMark {
            known: a,
            rejected: None,
            stamp: None,
        };
        assert_eq!(decide(a, &mark), Decision::Unchanged);
        assert_eq!(decide(b, &mark), Decision::Reload);
        assert_eq!(decide(None, &mark), Decision::Reload, "removal is a change");
        mark.rejected = Some(b);
        assert_eq!(decide(b, &mark), Decision::AlreadyRejected);
        assert_eq!(decide(fingerprint(Some(b"c")), &mark), Decision::Reload);
        let empty = FileMark::default();
        assert_eq!(decide(None, &empty), Decision::Unchanged, "never existed");
        assert_ne!(a, b);
    }

    fn valid_json(version: u64) -> String {
        format!(
            r#"{{"version": {version}, "integrations": [{{"id": "int-1", "org": "org-a",
            "account_sid": "AC{sid}", "auth_token": {{"nonce": "n", "ciphertext": "c"}},
            "status": "active"}}], "numbers": [{{"sender_id": "+14155550100", "type": "local",
            "country": "US", "integration_id": "int-1", "queue": "q", "status": "active"}}]}}"#,
            sid = "a".repeat(32)
        )
    }

    #[test]
    fn parse_external_accepts_whole_and_never_goes_back_in_version() {
        let s = parse_external(valid_json(2).as_bytes(), 9).unwrap();
        assert_eq!((s.version, s.numbers.len()), (10, 1));
        let s = parse_external(valid_json(50).as_bytes(), 9).unwrap();
        assert_eq!(s.version, 50);
    }

    #[test]
    fn parse_external_rejects_with_a_reason_and_no_values() {
        let err = parse_external(b"{ not json", 1).unwrap_err();
        assert_eq!(err.code(), "parse_error");
        let leaky = valid_json(1).replace(
            r#"{"nonce": "n", "ciphertext": "c"}"#,
            r#""plain-secret-token""#,
        );
        let err = parse_external(leaky.as_bytes(), 1).unwrap_err();
        assert_eq!(err.code(), "parse_error");
        assert!(!err.to_string().contains("plain-secret-token"), "{err}");
        let dup = valid_json(1).replace(
            r#""numbers": ["#,
            r#""numbers": [{"sender_id": "+14155550100", "type": "local", "country": "US",
            "integration_id": "int-1", "queue": "q", "status": "active"},"#,
        );
        let err = parse_external(dup.as_bytes(), 1).unwrap_err();
        assert_eq!(err.code(), "state_invalid");
        assert!(err.to_string().contains("appears twice"), "{err}");
        let bad_sid = valid_json(1).replace(&format!("AC{}", "a".repeat(32)), "AC123");
        let err = parse_external(bad_sid.as_bytes(), 1).unwrap_err();
        assert!(err.to_string().contains("account_sid"), "{err}");
    }

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

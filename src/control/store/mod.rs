//! The control plane's owner of the state: every admin change goes through `apply`, which
//! validates the new state whole, prepares the data plane, makes the change durable and
//! only then makes it live. Any failure changes nothing. Two storages sit behind the same
//! API (`Storage`): the state file with its journal (`file`), and for a fleet a NATS KV
//! bucket (`kv`). Their watchers report external changes over channels; the store's own
//! threads apply them. The store knows nothing of HTTP: it answers with `ChangeError`.

mod change;
pub mod file;
pub(crate) mod kv;

pub use change::{Applied, ChangeError, Commit, Publisher, Readiness, StoreError};
pub(crate) use file::ReloadError;

use crate::control::audit::AuditLog;
use crate::model::crypto::MasterKey;
use crate::model::state::{State, StateError};
use change::{count_update, lock, Shared};
use file::FileStore;
use kv::backend::KvBackend;
use kv::records::Change;
use kv::KvStore;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// How long changes must pause before the journal is folded into the state file.
pub(crate) const FOLD_AFTER_IDLE: Duration = Duration::from_secs(10);

/// Where the records live.
enum Storage {
    /// `control.state_file` and its journal (one instance).
    File(FileStore),
    /// A JetStream KV bucket every instance of a fleet watches.
    Kv(KvStore),
}

/// Owns the current state, its storage, the master key and the way to publish changes.
pub struct ControlStore {
    storage: Storage,
    shared: Shared,
    in_flight: Arc<Mutex<HashSet<String>>>,
}

impl std::fmt::Debug for ControlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let storage = match &self.storage {
            Storage::File(file) => format!("file {}", file.path().display()),
            Storage::Kv(kv) => format!("{:?}", kv.backend()),
        };
        f.debug_struct("ControlStore")
            .field("storage", &storage)
            .finish_non_exhaustive()
    }
}

/// Holds a sender ID in the in-flight set until dropped, so slow vendor checks can run
/// without the state lock while a concurrent import of the same number is refused.
#[derive(Debug)]
pub(crate) struct Reservation {
    sender_id: String,
    set: Arc<Mutex<HashSet<String>>>,
}

impl Reservation {
    /// The reserved sender ID.
    #[cfg(test)]
    pub(crate) fn sender_id(&self) -> &str {
        &self.sender_id
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        lock(&self.set).remove(&self.sender_id);
    }
}

/// Why the store could not start following its storage.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// A thread could not be started.
    #[error("cannot start a control-plane thread: {0}")]
    Thread(#[from] std::io::Error),
    /// The state file's directory cannot be watched.
    #[error(transparent)]
    Watch(#[from] file::watch::WatchError),
}

/// A running watch of the state file; dropping it stops the watch.
pub(crate) struct FileWatch {
    _watcher: file::watch::StateWatcher,
}

impl ControlStore {
    fn new(
        storage: impl FnOnce(&Shared) -> Result<Storage, StoreError>,
        shared: Shared,
    ) -> Result<Self, StoreError> {
        Ok(ControlStore {
            storage: storage(&shared)?,
            shared,
            in_flight: Arc::default(),
        })
    }

    /// Loads the state file with its journal (a missing file is an empty state) and
    /// publishes it.
    pub fn open(
        path: impl Into<PathBuf>,
        key: Arc<MasterKey>,
        publisher: Publisher,
    ) -> Result<Self, StoreError> {
        let path = path.into();
        let shared = Shared {
            key,
            publisher,
            audit: AuditLog::disabled(),
        };
        Self::new(|s| FileStore::open(path, s).map(Storage::File), shared)
    }

    /// Serves the records of a KV bucket (`changes`: the whole bucket as `KvBackend::load`
    /// read it) and writes changes back to it; refused records are reported and left out.
    pub(crate) fn open_kv(
        backend: Arc<KvBackend>,
        changes: &[Change],
        key: Arc<MasterKey>,
        publisher: Publisher,
    ) -> Result<Self, StoreError> {
        let shared = Shared {
            key,
            publisher,
            audit: AuditLog::disabled(),
        };
        Self::new(
            |s| KvStore::open(backend, changes, s).map(Storage::Kv),
            shared,
        )
    }

    /// Tells `readiness` when the KV store starts and ends reloading its bucket.
    pub(crate) fn with_readiness(mut self, readiness: Readiness) -> Self {
        if let Storage::Kv(kv) = &mut self.storage {
            kv.set_readiness(readiness);
        }
        self
    }

    /// Journals changes from this inventory size on (file storage; tests use small sizes).
    #[cfg(test)]
    pub(crate) fn with_journal_from(mut self, numbers: usize) -> Self {
        if let Storage::File(file) = &mut self.storage {
            file.set_journal_from(numbers);
        }
        self
    }

    /// Records every change (admin, file and KV) in this audit log from now on.
    pub(crate) fn with_audit(mut self, audit: AuditLog) -> Self {
        self.shared.audit = audit;
        self
    }

    /// The audit log every change is recorded in.
    pub(crate) fn audit(&self) -> &AuditLog {
        &self.shared.audit
    }

    /// The key that seals Auth Tokens.
    pub(crate) fn master_key(&self) -> &Arc<MasterKey> {
        &self.shared.key
    }

    /// A copy of the current state, for reads (the number list is shared, not copied).
    pub fn snapshot(&self) -> State {
        match &self.storage {
            Storage::File(file) => file.state(),
            Storage::Kv(kv) => kv.state(),
        }
    }

    /// The version of the serving state.
    pub(crate) fn version(&self) -> u64 {
        self.snapshot().version
    }

    /// Runs `change` on a copy of the state and, if it succeeds and the result is valid,
    /// publishes, saves and swaps it in; on any error nothing changes anywhere. With KV
    /// storage `change` may run again on refreshed records after a lost compare-and-set.
    pub(crate) fn apply<T, E: From<ChangeError>>(
        &self,
        mut change: impl FnMut(&mut State) -> Result<T, E>,
    ) -> Result<Applied<T>, E> {
        let result = match &self.storage {
            Storage::File(file) => file.apply(&self.shared, |s| change(s)),
            Storage::Kv(kv) => kv.apply(&self.shared, &mut change),
        };
        count_update("admin", result.is_ok());
        result
    }

    /// Brings the store in line with its state file (see `FileStore::sync_with_file`);
    /// `None`: no edit to judge, or the store is not file-backed.
    pub(crate) fn sync_with_file(&self) -> Option<Result<u64, ReloadError>> {
        match &self.storage {
            Storage::File(file) => file.sync_with_file(&self.shared),
            Storage::Kv(_) => None,
        }
    }

    /// Writes journaled changes into the state file once no change came for `idle`.
    pub(crate) fn fold_journal_if_idle(&self, idle: Duration) -> Result<bool, StateError> {
        match &self.storage {
            Storage::File(file) => file.fold_journal_if_idle(idle),
            Storage::Kv(_) => Ok(false),
        }
    }

    /// Starts what keeps the store current with its storage: for the state file, the
    /// journal's fold thread and (if `watch_file`) the watch of external edits; for KV,
    /// the bucket's watcher. Each ends with the store.
    pub(crate) fn spawn_followers(
        self: &Arc<Self>,
        kv_watch: Option<async_nats::jetstream::kv::Watch>,
        watch_file: bool,
    ) -> Result<Option<FileWatch>, FollowError> {
        match (&self.storage, kv_watch) {
            (Storage::Kv(kv), Some(watch)) => {
                let (tx, rx) = std::sync::mpsc::channel();
                kv::watcher::spawn(kv.backend().clone(), watch, tx)?;
                self.follow("kv-ingest", rx, |store, event| store.kv_event(event))?;
                Ok(None)
            }
            (Storage::Kv(_), None) => Ok(None),
            (Storage::File(file), _) => {
                self.spawn_journal_folder()?;
                if !watch_file {
                    return Ok(None);
                }
                let (watcher, rx) = file::watch::spawn(file.path())?;
                self.follow("state-sync", rx, |store, ()| {
                    store.sync_with_file();
                })?;
                Ok(Some(FileWatch { _watcher: watcher }))
            }
        }
    }

    /// A thread that hands each event of `rx` to `apply` while the store lives.
    fn follow<T: Send + 'static>(
        self: &Arc<Self>,
        name: &str,
        rx: std::sync::mpsc::Receiver<T>,
        apply: impl Fn(&ControlStore, T) + Send + 'static,
    ) -> std::io::Result<()> {
        let weak: Weak<ControlStore> = Arc::downgrade(self);
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                for event in rx {
                    let Some(store) = weak.upgrade() else { return };
                    apply(&store, event);
                }
            })
            .map(drop)
    }

    /// One event of the bucket's watcher.
    fn kv_event(&self, event: kv::watcher::Event) {
        let Storage::Kv(kv) = &self.storage else {
            return;
        };
        match event {
            kv::watcher::Event::Changes(changes) => kv.ingest(&self.shared, &changes),
            kv::watcher::Event::Unsynced => kv.unsynced(),
            kv::watcher::Event::Reloaded(changes) => kv.replace(&self.shared, &changes),
        }
    }

    /// Starts the thread that folds the journal once changes pause; it ends with the store.
    fn spawn_journal_folder(self: &Arc<Self>) -> std::io::Result<()> {
        let weak: Weak<ControlStore> = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("journal-fold".into())
            .spawn(move || loop {
                std::thread::sleep(FOLD_AFTER_IDLE / 4);
                let Some(store) = weak.upgrade() else { return };
                if let Err(e) = store.fold_journal_if_idle(FOLD_AFTER_IDLE) {
                    tracing::error!(error = %e, "journal not folded into the state file; retrying");
                }
            })
            .map(drop)
    }

    /// Marks a sender ID as being imported; `None` if an import of it is already under way.
    pub(crate) fn reserve(&self, sender_id: &str) -> Option<Reservation> {
        let mut set = lock(&self.in_flight);
        if !set.insert(sender_id.to_string()) {
            return None;
        }
        Some(Reservation {
            sender_id: sender_id.to_string(),
            set: Arc::clone(&self.in_flight),
        })
    }

    /// The sender IDs whose import is under way.
    pub fn in_flight(&self) -> HashSet<String> {
        lock(&self.in_flight).clone()
    }
}

#[cfg(test)]
mod tests;

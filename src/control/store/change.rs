//! What every storage of the control store shares: the publisher that prepares the data
//! plane for a state, what an accepted change hands back (`Applied`), why a change was
//! refused (`ChangeError`), and the audit log and counters every judged update goes to.

use crate::control::audit::AuditLog;
use crate::inventory::BuildError;
use crate::model::crypto::MasterKey;
use crate::model::state::{State, StateError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Makes a prepared state live in the data plane (the snapshot swap).
pub type Commit = Box<dyn FnOnce() + Send>;

/// Prepares the data plane for a new state (builds its snapshot, opening what it routes
/// to); the closure it returns makes that state live. An error refuses the change.
pub type Publisher = Arc<dyn Fn(&State) -> Result<Commit, BuildError> + Send + Sync>;

/// Told `false` while the KV store reloads its bucket and `true` once it is current again,
/// so `/readyz` is 503 meanwhile.
pub type Readiness = Arc<dyn Fn(bool) + Send + Sync>;

/// An accepted change: what the change returned, and the state version it made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied<T> {
    pub(crate) value: T,
    pub(crate) version: u64,
}

/// Why the store refused a change; nothing changed anywhere. Each variant is one answer
/// of the admin API (`impl From<ChangeError> for ApiError`).
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The change would break a state invariant.
    #[error(transparent)]
    Invalid(#[from] StateError),
    /// The data plane could not prepare the new state.
    #[error("the data plane refused the change: {0}")]
    Refused(#[source] BuildError),
    /// The state file could not be written (details in the log).
    #[error("the state file could not be written")]
    FileNotWritten,
    /// The journal beside the state file could not be written (details in the log).
    #[error("the state journal could not be written")]
    JournalNotWritten,
    /// The KV store is loading its bucket again after losing its watch.
    #[error("the control plane is reloading its KV bucket")]
    Reloading,
    /// The bucket could not be read or written (details in the log).
    #[error("the KV bucket could not be written; retry")]
    KvNotWritten,
    /// Other instances kept winning the compare-and-set on the change's records.
    #[error("the records changed concurrently {0} times in a row; retry")]
    Conflict(u32),
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The state file is unreadable or invalid.
    #[error(transparent)]
    State(#[from] StateError),
    /// The data plane refused the loaded state.
    #[error("data plane refused the state: {0}")]
    Publish(#[source] BuildError),
    /// The bucket's records, taken together, break an invariant.
    #[error("the KV bucket's state is invalid: {0}")]
    Kv(#[source] StateError),
}

/// What both storages use besides their own state: the key, the publisher, the audit log.
pub(crate) struct Shared {
    pub(crate) key: Arc<MasterKey>,
    pub(crate) publisher: Publisher,
    pub(crate) audit: AuditLog,
}

impl Shared {
    /// The data plane's preparation of `state`, as a change's error.
    pub(crate) fn prepare(&self, state: &State) -> Result<Commit, ChangeError> {
        (self.publisher)(state).map_err(ChangeError::Refused)
    }
}

/// Counts one judged control-plane update by where it came from and how it ended.
pub(crate) fn count_update(source: &'static str, accepted: bool) {
    let result = if accepted { "accepted" } else { "rejected" };
    metrics::counter!("sms_ingress_control_updates_total", "source" => source, "result" => result)
        .increment(1);
}

/// A poisoned lock only means a panic elsewhere; the data is still whole (we never
/// mutate in place), so keep serving.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

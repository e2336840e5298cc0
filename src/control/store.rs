//! The control plane's owner of the state: every admin change goes through `apply`,
//! which validates the new state whole, prepares the data plane, writes the state file
//! atomically and only then makes the new state live. Any failure changes nothing.

use super::admin::ApiError;
use super::crypto::MasterKey;
use super::state::{State, StateError};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Prepares the data plane for a new state; the closure it returns makes that state live.
pub type Publisher = Arc<dyn Fn(&State) -> Result<Box<dyn FnOnce() + Send>, String> + Send + Sync>;

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The state file is unreadable or invalid.
    #[error(transparent)]
    State(#[from] StateError),
    /// The data plane refused the loaded state.
    #[error("data plane refused the state: {0}")]
    Publish(String),
}

/// Owns the current state, its file, the master key and the way to publish changes.
pub struct ControlStore {
    state: Mutex<State>,
    path: PathBuf,
    key: Arc<MasterKey>,
    publisher: Publisher,
    in_flight: Arc<Mutex<HashSet<String>>>,
}

impl std::fmt::Debug for ControlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Holds a sender ID in the in-flight set until dropped, so slow vendor checks can run
/// without the state lock while a concurrent import of the same number is refused.
#[derive(Debug)]
pub struct Reservation {
    sender_id: String,
    set: Arc<Mutex<HashSet<String>>>,
}

impl Reservation {
    /// The reserved sender ID.
    pub fn sender_id(&self) -> &str {
        &self.sender_id
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        lock(&self.set).remove(&self.sender_id);
    }
}

/// A poisoned lock only means a panic elsewhere; the data is still whole (we never
/// mutate in place), so keep serving.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ControlStore {
    /// Loads the state file (a missing file is an empty state) and publishes it.
    pub fn open(
        path: impl Into<PathBuf>,
        master_key: Arc<MasterKey>,
        publisher: Publisher,
    ) -> Result<Self, StoreError> {
        let path = path.into();
        let state = State::load(&path)?;
        let commit = publisher(&state).map_err(StoreError::Publish)?;
        commit();
        Ok(ControlStore {
            state: Mutex::new(state),
            path,
            key: master_key,
            publisher,
            in_flight: Arc::default(),
        })
    }

    /// The state file this store writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The key that seals Auth Tokens.
    pub fn master_key(&self) -> &Arc<MasterKey> {
        &self.key
    }

    /// A copy of the current state, for reads.
    pub fn snapshot(&self) -> State {
        lock(&self.state).clone()
    }

    /// Runs `change` on a copy of the state and, if it succeeds and the result is valid,
    /// publishes, saves and swaps it in; on any error nothing changes anywhere.
    pub fn apply<T>(
        &self,
        change: impl FnOnce(&mut State) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let result = self.apply_inner(change);
        let label = if result.is_ok() {
            "accepted"
        } else {
            "rejected"
        };
        metrics::counter!("sms_ingress_control_updates_total", "source" => "admin", "result" => label)
            .increment(1);
        result
    }

    fn apply_inner<T>(
        &self,
        change: impl FnOnce(&mut State) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let mut current = lock(&self.state);
        let mut next = current.clone();
        let out = change(&mut next)?;
        next.version = current.version + 1;
        next.validate().map_err(|e| ApiError::state_invalid(&e))?;
        let commit = (self.publisher)(&next).map_err(|e| ApiError::publish_failed(&e))?;
        if let Err(e) = next.save(&self.path) {
            tracing::error!(error = %e, "state file not written; change dropped");
            return Err(ApiError::internal("the state file could not be written"));
        }
        commit();
        *current = next;
        Ok(out)
    }

    /// Marks a sender ID as being imported; `None` if an import of it is already under way.
    pub fn reserve(&self, sender_id: &str) -> Option<Reservation> {
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
mod tests {
    use super::*;
    use crate::control::crypto::{Sealed, Secret};
    use crate::control::state::{Integration, IntegrationStatus};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn key() -> Arc<MasterKey> {
        Arc::new(MasterKey::from_base64(&MasterKey::generate_base64().unwrap()).unwrap())
    }

    fn integration(id: &str, token: Sealed) -> Integration {
        Integration {
            id: id.into(),
            org: "org-a".into(),
            name: "n".into(),
            notes: String::new(),
            account_sid: format!("AC{}", "b".repeat(32)),
            auth_token: token,
            next_auth_token: None,
            status: IntegrationStatus::Active,
        }
    }

    /// A publisher that records committed versions and can be told to refuse.
    fn recording(refuse: Arc<AtomicUsize>, live: Arc<Mutex<Vec<u64>>>) -> Publisher {
        Arc::new(move |s: &State| {
            if refuse.load(Ordering::SeqCst) > 0 {
                return Err("no".to_string());
            }
            let v = s.version;
            let live = Arc::clone(&live);
            Ok(Box::new(move || live.lock().unwrap().push(v)) as Box<dyn FnOnce() + Send>)
        })
    }

    #[test]
    fn apply_saves_publishes_and_bumps_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let live = Arc::new(Mutex::new(Vec::new()));
        let refuse = Arc::new(AtomicUsize::new(0));
        let k = key();
        let store = ControlStore::open(
            &path,
            Arc::clone(&k),
            recording(refuse.clone(), live.clone()),
        )
        .unwrap();
        assert_eq!(*live.lock().unwrap(), vec![0]);
        let sealed = k.seal(&Secret::new("tok"), "int-1").unwrap();
        store
            .apply(|s| {
                s.integrations.push(integration("int-1", sealed));
                Ok(())
            })
            .unwrap();
        assert_eq!(*live.lock().unwrap(), vec![0, 1]);
        assert_eq!(State::load(&path).unwrap(), store.snapshot());
        assert_eq!(store.snapshot().version, 1);

        // Refused by the publisher: file, memory and data plane unchanged.
        let before = std::fs::read(&path).unwrap();
        refuse.store(1, Ordering::SeqCst);
        let err = store
            .apply(|s| {
                s.integrations.clear();
                Ok(())
            })
            .unwrap_err();
        assert_eq!(err.code(), "publish_failed");
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert_eq!(store.snapshot().integrations.len(), 1);
        assert_eq!(*live.lock().unwrap(), vec![0, 1]);

        // Invalid result: refused before the publisher sees it.
        refuse.store(0, Ordering::SeqCst);
        let err = store
            .apply(|s| {
                let dup = s.integrations[0].clone();
                s.integrations.push(dup);
                Ok(())
            })
            .unwrap_err();
        assert_eq!(err.code(), "state_invalid");
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert_eq!(*live.lock().unwrap(), vec![0, 1]);
    }

    #[test]
    fn reservations_exclude_and_release() {
        let dir = tempfile::tempdir().unwrap();
        let publisher: Publisher = Arc::new(|_| Ok(Box::new(|| {}) as Box<dyn FnOnce() + Send>));
        let store = ControlStore::open(dir.path().join("s.json"), key(), publisher).unwrap();
        let r = store.reserve("+15550001").unwrap();
        assert_eq!(r.sender_id(), "+15550001");
        assert!(store.reserve("+15550001").is_none());
        assert!(store.in_flight().contains("+15550001"));
        drop(r);
        assert!(store.in_flight().is_empty());
        assert!(store.reserve("+15550001").is_some());
    }

    #[test]
    fn open_fails_when_publisher_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let publisher: Publisher = Arc::new(|_| Err("down".into()));
        let err = ControlStore::open(dir.path().join("s.json"), key(), publisher).unwrap_err();
        assert!(matches!(err, StoreError::Publish(_)));
    }
}

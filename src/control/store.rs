//! The control plane's owner of the state: every admin change goes through `apply`,
//! which validates the new state whole, prepares the data plane, writes the state file
//! atomically and only then makes the new state live. Any failure changes nothing.
//! External edits of the file come in through `sync_with_file` (the watcher calls it,
//! and so does `apply` before every change), under the same lock.

use super::admin::ApiError;
use super::audit::{self, AuditLog};
use super::crypto::MasterKey;
use super::state::{write_atomic, State, StateError};
use super::watch::{decide, fingerprint, parse_external, Decision, FileMark, ReloadError};
use std::cell::Cell;
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
    state: Mutex<Current>,
    path: PathBuf,
    key: Arc<MasterKey>,
    publisher: Publisher,
    in_flight: Arc<Mutex<HashSet<String>>>,
    audit: AuditLog,
}

/// The serving state and what the store knows of the file it came from.
struct Current {
    state: State,
    file: FileMark,
}

thread_local! {
    /// The version the last accepted `apply` on this thread produced, for its audit line.
    static LAST_APPLIED: Cell<u64> = const { Cell::new(0) };
}

/// The version this thread's last accepted `apply` produced; admin requests run on one
/// blocking thread each, so this is exactly their change's version.
pub fn last_applied_version() -> u64 {
    LAST_APPLIED.with(Cell::get)
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
        let bytes = State::read_bytes(&path)?;
        let state = match &bytes {
            Some(b) => State::parse(&path, b)?,
            None => State::default(),
        };
        let commit = publisher(&state).map_err(StoreError::Publish)?;
        commit();
        let file = FileMark {
            known: fingerprint(bytes.as_deref()),
            rejected: None,
        };
        Ok(ControlStore {
            state: Mutex::new(Current { state, file }),
            path,
            key: master_key,
            publisher,
            in_flight: Arc::default(),
            audit: AuditLog::disabled(),
        })
    }

    /// Records every change (admin and file) in this audit log from now on.
    pub fn with_audit(mut self, audit: AuditLog) -> Self {
        self.audit = audit;
        self
    }

    /// The audit log every change is recorded in.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// The version of the serving state.
    pub fn version(&self) -> u64 {
        lock(&self.state).state.version
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
        lock(&self.state).state.clone()
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
        // An external edit not yet picked up by the watcher is adopted (or rejected) first,
        // so this change applies on top of it instead of silently overwriting it.
        self.sync_locked(&mut current);
        let mut next = current.state.clone();
        let out = change(&mut next)?;
        next.version = current.state.version + 1;
        next.validate().map_err(|e| ApiError::state_invalid(&e))?;
        let commit = (self.publisher)(&next).map_err(|e| ApiError::publish_failed(&e))?;
        let bytes = next.encode();
        if let Err(e) = write_atomic(&self.path, &bytes) {
            tracing::error!(error = %e, "state file not written; change dropped");
            return Err(ApiError::internal("the state file could not be written"));
        }
        commit();
        current.file = FileMark {
            known: fingerprint(Some(&bytes)),
            rejected: None,
        };
        current.state = next;
        LAST_APPLIED.with(|v| v.set(current.state.version));
        Ok(out)
    }

    /// Brings the store in line with its file: nothing if the file holds what the store
    /// wrote or loaded (or an edit already rejected); else the edit is validated whole and
    /// swapped in, or rejected with a log line, metric and audit line. `None`: no edit.
    pub fn sync_with_file(&self) -> Option<Result<u64, ReloadError>> {
        let mut current = lock(&self.state);
        self.sync_locked(&mut current)
    }

    fn sync_locked(&self, current: &mut Current) -> Option<Result<u64, ReloadError>> {
        let result = match State::read_bytes(&self.path) {
            Err(e) => Err(ReloadError::from_read(e)),
            Ok(bytes) => {
                let on_disk = fingerprint(bytes.as_deref());
                if decide(on_disk, &current.file) != Decision::Reload {
                    return None;
                }
                let result = self.adopt(current, bytes.as_deref());
                match result {
                    Ok(_) => current.file.known = on_disk,
                    Err(_) => current.file.rejected = Some(on_disk),
                }
                result
            }
        };
        self.report_reload(&result, current.state.version);
        Some(result)
    }

    /// Validates and publishes an edited file's content, then makes it the serving state.
    fn adopt(&self, current: &mut Current, bytes: Option<&[u8]>) -> Result<u64, ReloadError> {
        let bytes = bytes.ok_or(ReloadError::Missing)?;
        let next = parse_external(bytes, current.state.version)?;
        let commit = (self.publisher)(&next).map_err(ReloadError::Publish)?;
        commit();
        current.state = next;
        Ok(current.state.version)
    }

    /// One log line, metric, gauge and audit line per judged edit.
    fn report_reload(&self, result: &Result<u64, ReloadError>, version: u64) {
        let path = self.path.display().to_string();
        let outcome = match result {
            Ok(_) => audit::Outcome::Accepted,
            Err(_) => audit::Outcome::Rejected,
        };
        let accepted = outcome == audit::Outcome::Accepted;
        let label = if accepted { "accepted" } else { "rejected" };
        metrics::counter!("sms_ingress_control_updates_total", "source" => "file", "result" => label)
            .increment(1);
        metrics::gauge!("sms_ingress_control_file_reload_success")
            .set(f64::from(u8::from(accepted)));
        metrics::gauge!("sms_ingress_control_file_reload_timestamp_seconds")
            .set(crate::inventory::unix_now());
        let reason = result.as_ref().err().map(ToString::to_string);
        match result {
            Ok(_) => tracing::info!(path, version, "state file edit accepted"),
            Err(e) => tracing::warn!(
                path,
                code = e.code(),
                reason = reason.as_deref().unwrap_or_default(),
                version,
                "state file edit rejected; the previous state keeps serving"
            ),
        }
        self.audit.record(&audit::Entry {
            source: audit::Source::File,
            org: None,
            token_id: None,
            action: "state.reload",
            target: &path,
            result: outcome,
            code: result.as_ref().err().map(ReloadError::code),
            reason: reason.as_deref(),
            state_version: version,
        });
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

    fn number(sender_id: &str) -> crate::control::state::Number {
        use crate::control::state::{Number, NumberStatus, NumberType};
        Number {
            sender_id: sender_id.into(),
            kind: NumberType::Local,
            country: "US".into(),
            integration_id: "int-1".into(),
            queue: "q".into(),
            status: NumberStatus::Active,
            compliance: None,
        }
    }

    #[test]
    fn own_writes_are_not_reloaded_and_external_edits_are_judged_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let live = Arc::new(Mutex::new(Vec::new()));
        let k = key();
        let store = ControlStore::open(
            &path,
            Arc::clone(&k),
            recording(Arc::default(), live.clone()),
        )
        .unwrap();
        assert!(store.sync_with_file().is_none(), "no file, nothing known");
        let sealed = k.seal(&Secret::new("tok"), "int-1").unwrap();
        store
            .apply(|s| {
                s.integrations.push(integration("int-1", sealed));
                Ok(())
            })
            .unwrap();
        assert_eq!(last_applied_version(), 1);
        assert!(store.sync_with_file().is_none(), "the store's own write");

        // A valid edit that did not bump the version still becomes the next one.
        let mut edited = store.snapshot();
        edited.numbers.push(number("+14155550100"));
        edited.save(&path).unwrap();
        assert_eq!(store.sync_with_file().unwrap().unwrap(), 2);
        assert_eq!(store.snapshot().numbers.len(), 1);
        assert_eq!(*live.lock().unwrap(), vec![0, 1, 2]);
        assert!(store.sync_with_file().is_none());

        // A broken edit is rejected once; the previous state keeps serving.
        std::fs::write(&path, b"{ broken").unwrap();
        let err = store.sync_with_file().unwrap().unwrap_err();
        assert_eq!(err.code(), "parse_error");
        assert!(store.sync_with_file().is_none(), "reported once");
        assert_eq!(store.snapshot().version, 2);
        assert_eq!(*live.lock().unwrap(), vec![0, 1, 2]);

        // A removed file is never taken for an empty state.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            store.sync_with_file().unwrap().unwrap_err().code(),
            "file_missing"
        );
        assert_eq!(store.snapshot().numbers.len(), 1);

        // An admin change after a rejected edit works and writes a valid file again.
        store
            .apply(|s| {
                s.integrations[0].name = "renamed".into();
                Ok(())
            })
            .unwrap();
        assert_eq!(State::load(&path).unwrap(), store.snapshot());
        assert_eq!(store.snapshot().version, 3);
    }

    #[test]
    fn apply_adopts_an_edit_the_watcher_has_not_seen_yet() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let k = key();
        let live = Arc::new(Mutex::new(Vec::new()));
        let store = ControlStore::open(
            &path,
            Arc::clone(&k),
            recording(Arc::default(), live.clone()),
        )
        .unwrap();
        let sealed = k.seal(&Secret::new("tok"), "int-1").unwrap();
        let mut edited = State::default();
        edited.integrations.push(integration("int-1", sealed));
        edited.numbers.push(number("+14155550100"));
        edited.save(&path).unwrap();
        store
            .apply(|s| {
                s.numbers.push(number("+14155550101"));
                Ok(())
            })
            .unwrap();
        let state = store.snapshot();
        assert_eq!((state.version, state.numbers.len()), (2, 2));
        assert_eq!(*live.lock().unwrap(), vec![0, 1, 2]);
        assert_eq!(State::load(&path).unwrap(), state);
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

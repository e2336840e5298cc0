//! The control plane's owner of the state: every admin change goes through `apply`,
//! which validates the new state whole, prepares the data plane, writes the state file
//! atomically and only then makes the new state live. Any failure changes nothing.
//! External edits of the file come in through `sync_with_file` (the watcher calls it,
//! and so does `apply` before every change), under the same lock.
//!
//! Two storages sit behind the same API: the state file (`open`), and for a fleet a NATS
//! KV bucket (`open_kv`, see `control::kv`), where `apply` writes only the records the
//! change touched, each with compare-and-set on its revision, refreshes and re-runs the
//! change on a lost compare-and-set (bounded), and the bucket's watcher feeds other
//! instances' changes in through `kv_ingest` / `kv_replace`.

use super::admin::ApiError;
use super::audit::{self, AuditLog};
use super::journal::{self, Journal};
use super::kv::{plan, Change, KvBackend, KvError, Mirror, Tolerated};
use super::watch::{
    decide, fingerprint, parse_external, Decision, FileMark, FileStamp, Fingerprint, ReloadError,
};
use crate::model::crypto::MasterKey;
use crate::model::state::{write_atomic, State, StateError};
use std::cell::Cell;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

/// Prepares the data plane for a new state; the closure it returns makes that state live.
pub type Publisher = Arc<dyn Fn(&State) -> Result<Box<dyn FnOnce() + Send>, String> + Send + Sync>;

/// Told `false` while the KV store reloads its bucket and `true` once it is current again,
/// so `/readyz` is 503 meanwhile.
pub type Readiness = Arc<dyn Fn(bool) + Send + Sync>;

/// Tries of a KV change whose compare-and-set keeps losing before it is answered 409.
pub const CAS_ATTEMPTS: u32 = 10;

/// Inventories of at least this many numbers journal a change instead of rewriting the
/// state file (see `control::journal`); smaller files are rewritten whole, as people
/// read and edit them.
pub const JOURNAL_MIN_NUMBERS: usize = 10_000;

/// A change to more numbers than this (a bulk import) is written into the file whole.
pub const JOURNAL_MAX_NUMBERS: usize = 4_096;

/// How long changes must pause before the journal is folded into the state file.
pub const FOLD_AFTER_IDLE: Duration = Duration::from_secs(10);

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The state file is unreadable or invalid.
    #[error(transparent)]
    State(#[from] StateError),
    /// The data plane refused the loaded state.
    #[error("data plane refused the state: {0}")]
    Publish(String),
    /// The bucket's records, taken together, break an invariant.
    #[error("the KV bucket's state is invalid: {0}")]
    Kv(String),
}

/// Owns the current state, its file, the master key and the way to publish changes.
pub struct ControlStore {
    state: Mutex<Current>,
    path: PathBuf,
    /// The fleet's bucket; `None` for the state file.
    kv: Option<Arc<KvBackend>>,
    key: Arc<MasterKey>,
    publisher: Publisher,
    in_flight: Arc<Mutex<HashSet<String>>>,
    audit: AuditLog,
    readiness: Option<Readiness>,
    /// See `JOURNAL_MIN_NUMBERS`.
    journal_from: usize,
}

/// The serving state and what the store knows of where it came from.
struct Current {
    state: State,
    /// The state file's content the store wrote or adopted (file storage).
    file: FileMark,
    /// The bucket as last seen, which `state` is served from (KV storage).
    mirror: Mirror,
    /// False while the KV store reloads its bucket; changes are refused meanwhile.
    synced: bool,
    /// Changes not yet in the state file (file storage).
    journal: Option<Journal>,
    /// When the last change was accepted, for folding the journal once changes pause.
    last_change: Instant,
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
/// What a prepared file change hands back: the swap to make, and the file's new
/// fingerprint and stamp if it was rewritten (`None`: the change was journaled).
type PreparedChange = (Box<dyn FnOnce() + Send>, Option<(Fingerprint, FileStamp)>);

/// Runs a change's O(state) work (validate, build, encode, write) at a lower priority,
/// so it yields the cores to the webhooks it would otherwise delay.
fn in_background<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    crate::background::run_nicer("control-change", work)
}

/// Counts one judged control-plane update by where it came from and how it ended.
fn count_update(source: &'static str, accepted: bool) {
    let result = if accepted { "accepted" } else { "rejected" };
    metrics::counter!("sms_ingress_control_updates_total", "source" => source, "result" => result)
        .increment(1);
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ControlStore {
    /// Loads the state file with its journal (a missing file is an empty state) and
    /// publishes it.
    pub fn open(
        path: impl Into<PathBuf>,
        master_key: Arc<MasterKey>,
        publisher: Publisher,
    ) -> Result<Self, StoreError> {
        let path = path.into();
        let loaded = journal::load(&path)?;
        let commit = publisher(&loaded.state).map_err(StoreError::Publish)?;
        commit();
        let file = FileMark {
            known: loaded.base,
            rejected: None,
            stamp: None,
        };
        Ok(ControlStore {
            state: Mutex::new(Current {
                state: loaded.state,
                file,
                mirror: Mirror::default(),
                synced: true,
                journal: Some(loaded.journal),
                last_change: Instant::now(),
            }),
            path,
            kv: None,
            key: master_key,
            publisher,
            in_flight: Arc::default(),
            audit: AuditLog::disabled(),
            readiness: None,
            journal_from: JOURNAL_MIN_NUMBERS,
        })
    }

    /// Serves the records of a KV bucket (`changes`: the whole bucket as `KvBackend::load`
    /// read it) and writes changes back to it; refused records are reported and left out.
    pub fn open_kv(
        backend: Arc<KvBackend>,
        changes: &[Change],
        master_key: Arc<MasterKey>,
        publisher: Publisher,
    ) -> Result<Self, StoreError> {
        let store = ControlStore {
            state: Mutex::new(Current {
                state: State::default(),
                file: FileMark::default(),
                mirror: Mirror::default(),
                synced: true,
                journal: None,
                last_change: Instant::now(),
            }),
            path: PathBuf::new(),
            kv: Some(backend),
            key: master_key,
            publisher,
            in_flight: Arc::default(),
            audit: AuditLog::disabled(),
            readiness: None,
            journal_from: JOURNAL_MIN_NUMBERS,
        };
        {
            let mut current = lock(&store.state);
            store.absorb(&mut current.mirror, changes);
            let (state, tolerated) = current.mirror.state();
            report_tolerated(tolerated);
            state
                .validate()
                .map_err(|e| StoreError::Kv(e.to_string()))?;
            let commit = (store.publisher)(&state).map_err(StoreError::Publish)?;
            commit();
            current.state = state;
        }
        Ok(store)
    }

    /// Tells `readiness` when the KV store starts and ends reloading its bucket.
    pub fn with_readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = Some(readiness);
        self
    }

    /// The fleet's bucket, when this store keeps its records in NATS KV.
    pub fn kv_backend(&self) -> Option<&Arc<KvBackend>> {
        self.kv.as_ref()
    }

    /// Journals changes that touch no number from this inventory size on (tests use 0).
    pub fn with_journal_from(mut self, numbers: usize) -> Self {
        self.journal_from = numbers;
        self
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
    /// publishes, saves and swaps it in; on any error nothing changes anywhere. With KV
    /// storage `change` may run again on refreshed records after a lost compare-and-set.
    pub fn apply<T>(
        &self,
        mut change: impl FnMut(&mut State) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let result = match &self.kv {
            Some(kv) => self.apply_kv(kv, &mut change),
            None => self.apply_inner(change),
        };
        count_update("admin", result.is_ok());
        result
    }

    fn apply_inner<T>(
        &self,
        mut change: impl FnMut(&mut State) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let mut current = lock(&self.state);
        // An external edit not yet picked up by the watcher is adopted (or rejected) first,
        // so this change applies on top of it instead of silently overwriting it.
        self.sync_locked(&mut current);
        let mut next = current.state.clone();
        let out = change(&mut next)?;
        next.version = current.state.version + 1;
        // Journaled only on a file that holds what the store knows (not a rejected edit).
        let journaled = next.numbers.len() >= self.journal_from && current.file.rejected.is_none();
        let Current {
            state,
            file,
            journal,
            ..
        } = &mut *current;
        let journal = journal.as_mut().expect("file storage has a journal");
        let base = file.known;
        let (commit, written) = in_background(|| {
            self.prepare_file_change(state, &next, journal, journaled.then_some(base))
        })?;
        commit();
        if let Some((known, stamp)) = written {
            current.file = FileMark::written(known, stamp);
        }
        current.state = next;
        current.last_change = Instant::now();
        LAST_APPLIED.with(|v| v.set(current.state.version));
        Ok(out)
    }

    /// The heavy part of a change: validate, build the snapshot (not yet live), then make
    /// it durable: appended to the journal when `journal_on` names the state file's
    /// fingerprint and the journal takes it, else the whole file is written (and the
    /// journal emptied). Returns the swap to make, and what the file now holds if written.
    fn prepare_file_change(
        &self,
        prev: &State,
        next: &State,
        journal: &mut Journal,
        journal_on: Option<Fingerprint>,
    ) -> Result<PreparedChange, ApiError> {
        next.validate_change(prev)
            .map_err(|e| ApiError::state_invalid(&e))?;
        let commit = (self.publisher)(next).map_err(|e| ApiError::publish_failed(&e))?;
        // The snapshot just built asked for the same delta: this is a lookup.
        let delta = journal_on
            .map(|_| next.numbers.delta_from(&prev.numbers))
            .filter(|d| d.len() <= JOURNAL_MAX_NUMBERS);
        if let (Some(base), Some(delta)) = (journal_on, delta) {
            match journal.append(next, &base, &delta) {
                Ok(true) => return Ok((commit, None)),
                Ok(false) => {} // full: written whole below
                Err(e) => {
                    tracing::error!(error = %e, path = %journal.path().display(),
                        "journal not written; change dropped");
                    return Err(ApiError::internal("the state journal could not be written"));
                }
            }
        }
        let written = self.write_whole(next, journal).map_err(|e| {
            tracing::error!(error = %e, "state file not written; change dropped");
            ApiError::internal("the state file could not be written")
        })?;
        Ok((commit, Some(written)))
    }

    /// Writes the whole state file, then empties the journal it now includes (a journal
    /// left full by a failure here is harmless: its lines are older than the file).
    fn write_whole(
        &self,
        state: &State,
        journal: &mut Journal,
    ) -> Result<(Fingerprint, FileStamp), StateError> {
        let bytes = state.encode();
        let meta = write_atomic(&self.path, &bytes)?;
        if let Err(e) = journal.clear() {
            tracing::warn!(error = %e, path = %journal.path().display(),
                "journal not emptied after the state file was written; its lines are stale");
        }
        Ok((fingerprint(Some(&bytes)), FileStamp::of(&meta)))
    }

    /// Writes journaled changes into the state file, if there are any and no change came
    /// for `idle`; true if it did. The file is then whole again for people to read and
    /// edit. At a million numbers this writes over 100 MB, so it waits for a pause.
    pub fn fold_journal_if_idle(&self, idle: Duration) -> Result<bool, StateError> {
        let mut current = lock(&self.state);
        let pending = current.journal.as_ref().is_some_and(Journal::pending);
        if !pending || current.last_change.elapsed() < idle {
            return Ok(false);
        }
        let Current { state, journal, .. } = &mut *current;
        let journal = journal.as_mut().expect("pending implies a journal");
        let (known, stamp) = in_background(|| self.write_whole(state, journal))?;
        current.file = FileMark::written(known, stamp);
        tracing::info!(version = current.state.version, path = %self.path.display(),
            "journaled changes written into the state file");
        metrics::counter!("sms_ingress_control_journal_folds_total").increment(1);
        Ok(true)
    }

    /// Starts the thread that folds the journal once changes pause; it ends with the store.
    pub fn spawn_journal_folder(store: &Arc<ControlStore>) -> std::io::Result<()> {
        let weak: Weak<ControlStore> = Arc::downgrade(store);
        std::thread::Builder::new()
            .name("journal-fold".into())
            .spawn(move || loop {
                std::thread::sleep(FOLD_AFTER_IDLE / 4);
                let Some(store) = weak.upgrade() else { return };
                if let Err(e) = store.fold_journal_if_idle(FOLD_AFTER_IDLE) {
                    tracing::error!(error = %e, "journal not folded into the state file; retrying");
                }
            })
            .map(|_| ())
    }

    /// Brings the store in line with its file: nothing if the file holds what the store
    /// wrote or loaded (or an edit already rejected); else the edit is validated whole and
    /// swapped in, or rejected with a log line, metric and audit line. `None`: no edit.
    pub fn sync_with_file(&self) -> Option<Result<u64, ReloadError>> {
        if self.kv.is_some() {
            return None;
        }
        let mut current = lock(&self.state);
        self.sync_locked(&mut current)
    }

    fn sync_locked(&self, current: &mut Current) -> Option<Result<u64, ReloadError>> {
        if self.kv.is_some() {
            return None;
        }
        // Taken before reading: if the file changes meanwhile, the next look reads again.
        let stamp = FileStamp::at(&self.path);
        if stamp.is_some() && stamp == current.file.stamp {
            return None;
        }
        let result = match State::read_bytes(&self.path) {
            Err(e) => Err(ReloadError::from_read(e)),
            Ok(bytes) => {
                let on_disk = fingerprint(bytes.as_deref());
                if decide(on_disk, &current.file) != Decision::Reload {
                    current.file.stamp = stamp;
                    return None;
                }
                let pending = current.journal.as_ref().is_some_and(Journal::pending);
                let result = if pending {
                    Err(ReloadError::JournalPending(current.state.version))
                } else {
                    self.adopt(current, bytes.as_deref())
                };
                match result {
                    Ok(_) => current.file.known = on_disk,
                    Err(_) => current.file.rejected = Some(on_disk),
                }
                current.file.stamp = stamp;
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
        current.last_change = Instant::now();
        // Stale lines could outrank a lower version written in the file; drop them.
        if let Some(Err(e)) = current.journal.as_mut().map(Journal::clear) {
            tracing::warn!(error = %e, "journal not emptied after an accepted edit");
        }
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
        count_update("file", accepted);
        metrics::gauge!("sms_ingress_control_file_reload_success")
            .set(f64::from(u8::from(accepted)));
        metrics::gauge!("sms_ingress_control_file_reload_timestamp_seconds")
            .set(crate::telemetry::unix_now());
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

/// KV storage: compare-and-set writes from `apply`, and the watcher's way in.
impl ControlStore {
    /// Runs the change until its writes land, re-running it on refreshed records after a
    /// lost compare-and-set; 409 `conflict` after `CAS_ATTEMPTS` losses in a row.
    fn apply_kv<T>(
        &self,
        kv: &KvBackend,
        change: &mut impl FnMut(&mut State) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        for attempt in 1..=CAS_ATTEMPTS {
            if let Some(out) = self.try_apply_kv(kv, change)? {
                return Ok(out);
            }
            metrics::counter!("sms_ingress_control_kv_cas_conflicts_total").increment(1);
            std::thread::sleep(backoff(attempt));
        }
        Err(ApiError::new(
            http::StatusCode::CONFLICT,
            "conflict",
            format!("the records changed concurrently {CAS_ATTEMPTS} times in a row; retry"),
        ))
    }

    /// One try: `None` when a compare-and-set was lost (the touched keys are re-read first).
    fn try_apply_kv<T>(
        &self,
        kv: &KvBackend,
        change: &mut impl FnMut(&mut State) -> Result<T, ApiError>,
    ) -> Result<Option<T>, ApiError> {
        let mut current = lock(&self.state);
        if !current.synced {
            return Err(unavailable("the control plane is reloading its KV bucket"));
        }
        let mut next = current.state.clone();
        let out = change(&mut next)?;
        next.validate_change(&current.state)
            .map_err(|e| ApiError::state_invalid(&e))?;
        // Proves the data plane can serve the result before anything is written.
        drop((self.publisher)(&next).map_err(|e| ApiError::publish_failed(&e))?);
        let ops = plan(&current.state, &next);
        let written = kv.write(&ops, &mut current.mirror);
        if !ops.is_empty() {
            self.serve_mirror(&mut current);
        }
        match written {
            Ok(_) => {
                LAST_APPLIED.with(|v| v.set(current.state.version));
                Ok(Some(out))
            }
            Err(KvError::Conflict(key)) => {
                tracing::debug!(
                    key,
                    "control: compare-and-set lost; re-reading and re-running"
                );
                let keys: Vec<&str> = ops.iter().map(|o| o.key()).collect();
                let fresh = kv.read(&keys).map_err(|e| kv_failed(&e))?;
                if self.absorb(&mut current.mirror, &fresh) > 0 {
                    self.serve_mirror(&mut current);
                }
                Ok(None)
            }
            Err(e) => Err(kv_failed(&e)),
        }
    }

    /// Applies entries to the mirror, reporting each refused one; how many were new.
    fn absorb(&self, mirror: &mut Mirror, changes: &[Change]) -> usize {
        let mut fresh = 0;
        for change in changes {
            match mirror.apply(change) {
                Ok(new) => fresh += usize::from(new),
                Err(e) => {
                    fresh += 1;
                    self.report_kv(
                        &change.key,
                        Err(&e.to_string()),
                        e.code(),
                        mirror.last_revision(),
                    );
                }
            }
        }
        fresh
    }

    /// Serves the mirror's state if it is valid and the data plane takes it; else the
    /// previous snapshot keeps serving (logged, counted, audited).
    fn serve_mirror(&self, current: &mut Current) -> bool {
        let (next, tolerated) = current.mirror.state();
        report_tolerated(tolerated);
        let prepared = next
            .validate()
            .map_err(|e| ("state_invalid", e.to_string()))
            .and_then(|()| (self.publisher)(&next).map_err(|e| ("publish_failed", e)));
        match prepared {
            Ok(commit) => {
                commit();
                current.state = next;
                true
            }
            Err((code, reason)) => {
                let version = current.state.version;
                self.report_kv("-", Err(&reason), code, version);
                false
            }
        }
    }

    /// The watcher's entries (other instances' changes, and echoes of ours): applied to the
    /// mirror, then the whole state is validated and served, or refused whole.
    pub fn kv_ingest(&self, changes: Vec<Change>) {
        let mut current = lock(&self.state);
        if self.absorb(&mut current.mirror, &changes) == 0 {
            return;
        }
        if self.serve_mirror(&mut current) {
            let version = current.state.version;
            self.report_kv("-", Ok(changes.len()), "ok", version);
        }
    }

    /// The watch failed or the connection dropped: refuse changes and report not ready
    /// until `kv_replace` has loaded the whole bucket again.
    pub fn kv_unsynced(&self) {
        lock(&self.state).synced = false;
        metrics::gauge!("sms_ingress_control_kv_synced").set(0.0);
        if let Some(ready) = &self.readiness {
            ready(false);
        }
    }

    /// The whole bucket, loaded again: it replaces the mirror, is served if valid, and the
    /// store is ready again.
    pub fn kv_replace(&self, changes: Vec<Change>) {
        let mut mirror = Mirror::default();
        self.absorb(&mut mirror, &changes);
        let mut current = lock(&self.state);
        current.mirror = mirror;
        self.serve_mirror(&mut current);
        current.synced = true;
        metrics::counter!("sms_ingress_control_kv_reloads_total").increment(1);
        metrics::gauge!("sms_ingress_control_kv_synced").set(1.0);
        tracing::info!(
            version = current.state.version,
            records = changes.len(),
            "control: KV bucket reloaded whole"
        );
        if let Some(ready) = &self.readiness {
            ready(true);
        }
    }

    /// One log line, metric and (for refusals) audit line per judged KV change.
    fn report_kv(&self, target: &str, result: Result<usize, &str>, code: &str, version: u64) {
        count_update("kv", result.is_ok());
        let reason = match result {
            Ok(entries) => {
                tracing::debug!(entries, version, "control: KV changes applied");
                return;
            }
            Err(reason) => reason,
        };
        tracing::warn!(
            key = target,
            code,
            reason,
            version,
            "control: KV change refused; the previous snapshot keeps serving"
        );
        self.audit.record(&audit::Entry {
            source: audit::Source::Kv,
            org: None,
            token_id: None,
            action: "kv.change",
            target,
            result: audit::Outcome::Rejected,
            code: Some(code),
            reason: Some(reason),
            state_version: version,
        });
    }
}

/// Records left out or changed because writers raced across records (see `kv::Mirror::state`).
fn report_tolerated(t: Tolerated) {
    metrics::gauge!("sms_ingress_control_kv_tolerated", "reason" => "orphan_number")
        .set(t.orphan_numbers as f64);
    metrics::gauge!("sms_ingress_control_kv_tolerated", "reason" => "active_under_inactive")
        .set(t.active_under_inactive as f64);
    if t != Tolerated::default() {
        tracing::warn!(
            orphan_numbers = t.orphan_numbers,
            active_under_inactive = t.active_under_inactive,
            "control: concurrent writers left records that are served tolerantly"
        );
    }
}

/// Pause before re-running a change whose compare-and-set was lost: grows, with jitter so
/// two instances racing on one key do not collide again in lock-step.
fn backoff(attempt: u32) -> Duration {
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() % 10_000_000)
        .unwrap_or(0);
    Duration::from_millis(u64::from(attempt * attempt) * 2)
        + Duration::from_nanos(u64::from(jitter))
}

fn unavailable(message: &str) -> ApiError {
    ApiError::new(
        http::StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        message,
    )
}

/// The bucket could not be read or written; details in the log, not the response.
fn kv_failed(e: &KvError) -> ApiError {
    tracing::error!(error = %e, "control: KV write failed");
    unavailable("the KV bucket could not be written; retry")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::crypto::{Sealed, Secret};
    use crate::model::state::{Integration, IntegrationStatus};
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
        add_integration(&store, &k);
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

    /// Adds integration `int-1` (token sealed under `k`) through `apply`.
    fn add_integration(store: &ControlStore, k: &MasterKey) {
        let sealed = k.seal(&Secret::new("tok"), "int-1").unwrap();
        store
            .apply(|s| {
                s.integrations.push(integration("int-1", sealed.clone()));
                Ok(())
            })
            .unwrap();
    }

    fn number(sender_id: &str) -> crate::model::state::Number {
        crate::model::state::Number::sample(sender_id)
    }

    #[test]
    fn an_edit_written_in_place_after_a_change_is_still_seen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let k = key();
        let store = ControlStore::open(
            &path,
            Arc::clone(&k),
            recording(Arc::default(), Arc::default()),
        )
        .unwrap();
        add_integration(&store, &k);
        // The change recorded the file's stamp, so looking again reads nothing...
        assert!(store.sync_with_file().is_none());
        // ...but an editor writing into the same inode moves its mtime, and is seen.
        std::thread::sleep(Duration::from_millis(30));
        let mut edited = store.snapshot();
        edited.integrations[0].name = "renamed in place".into();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut f, &edited.encode()).unwrap();
        drop(f);
        assert!(store.sync_with_file().unwrap().is_ok());
        assert_eq!(store.snapshot().integrations[0].name, "renamed in place");
        assert!(store.sync_with_file().is_none(), "judged once");
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
        add_integration(&store, &k);
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
    fn small_changes_are_journaled_replayed_and_folded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let jpath = journal::path_for(&path);
        let k = key();
        let live = Arc::new(Mutex::new(Vec::new()));
        let open = || {
            ControlStore::open(
                &path,
                Arc::clone(&k),
                recording(Arc::default(), live.clone()),
            )
            .unwrap()
            .with_journal_from(1)
        };
        let store = open();
        add_integration(&store, &k);
        assert!(
            !jpath.exists(),
            "below the threshold the file is written whole"
        );
        store
            .apply(|s| {
                s.numbers.push(number("+14155550100"));
                Ok(())
            })
            .unwrap();
        let file_before = std::fs::read(&path).unwrap();

        // Integration-only changes: journaled, served, the file untouched.
        for name in ["second", "third"] {
            store
                .apply(|s| {
                    s.integrations[0].name = name.into();
                    Ok(())
                })
                .unwrap();
        }
        assert_eq!(std::fs::read(&path).unwrap(), file_before);
        assert_eq!(*live.lock().unwrap(), vec![0, 1, 2, 3, 4]);
        assert!(
            store.sync_with_file().is_none(),
            "the journal is not an edit"
        );
        let serving = store.snapshot();
        assert_eq!(
            (serving.version, serving.integrations[0].name.as_str()),
            (4, "third")
        );

        // A restart replays the journal on the file.
        drop(store);
        let store = open();
        assert_eq!(store.snapshot(), serving);

        // An edit of the file while changes are journaled would drop them: refused.
        let mut edited = State::load(&path).unwrap();
        edited.integrations[0].notes = "edited".into();
        edited.save(&path).unwrap();
        let err = store.sync_with_file().unwrap().unwrap_err();
        assert_eq!(err.code(), "journal_pending");
        assert_eq!(store.snapshot(), serving);

        // Not folded while changes keep coming; folded once they pause.
        assert!(!store.fold_journal_if_idle(Duration::from_secs(60)).unwrap());
        assert!(store.fold_journal_if_idle(Duration::ZERO).unwrap());
        assert_eq!(State::load(&path).unwrap(), serving);
        assert_eq!(std::fs::metadata(&jpath).unwrap().len(), 0);
        assert!(!store.fold_journal_if_idle(Duration::ZERO).unwrap(), "once");
        assert!(
            store.sync_with_file().is_none(),
            "the fold is the store's own write"
        );

        // With the journal empty, edits are judged as before.
        edited = State::load(&path).unwrap();
        edited.integrations[0].notes = "edited".into();
        edited.save(&path).unwrap();
        assert_eq!(store.sync_with_file().unwrap().unwrap(), 5);

        // A few numbers changed: journaled too, and replayed in order after a restart.
        let file_before = std::fs::read(&path).unwrap();
        store
            .apply(|s| {
                s.integrations[0].name = "fourth".into();
                s.numbers.push(number("+14155550101"));
                s.numbers.push(number("+14155550102"));
                Ok(())
            })
            .unwrap();
        store
            .apply(|s| {
                s.numbers.retain(|n| &*n.sender_id != "+14155550101");
                s.numbers[0].queue = "moved".into();
                Ok(())
            })
            .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), file_before);
        let serving = store.snapshot();
        drop(store);
        let store = open();
        assert_eq!(store.snapshot(), serving);
        let numbers: Vec<_> = serving.numbers.iter().map(|n| &n.sender_id[..]).collect();
        assert_eq!(numbers, ["+14155550100", "+14155550102"]);

        // A bulk change is written whole, and empties the journal.
        store
            .apply(|s| {
                for i in 0..=JOURNAL_MAX_NUMBERS {
                    s.numbers.push(number(&format!("+1415600{i:04}")));
                }
                Ok(())
            })
            .unwrap();
        assert_eq!(std::fs::metadata(&jpath).unwrap().len(), 0);
        assert_eq!(State::load(&path).unwrap(), store.snapshot());
        assert_eq!(store.snapshot().integrations[0].name, "fourth");
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

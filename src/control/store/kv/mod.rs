//! KV storage of the control store (`control.store = "nats_kv"`, see FLEET.md): the same
//! records as the state file, one JetStream KV key per record, that every instance
//! watches and the admin API of any instance writes with compare-and-set. A change writes
//! only the records it touched, each with compare-and-set on its revision; a lost
//! compare-and-set refreshes those records and re-runs the change (bounded). The watcher
//! feeds other instances' changes in as events.

pub(crate) mod backend;
pub(crate) mod records;
pub(crate) mod watcher;

use super::change::{count_update, lock, Applied, ChangeError, Readiness, Shared, StoreError};
use crate::control::audit;
use crate::model::state::{Orphans, State};
use backend::{KvBackend, KvError};
use records::{plan, Change, Mirror, Tolerated};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Tries of a KV change whose compare-and-set keeps losing before it is answered 409.
pub(crate) const CAS_ATTEMPTS: u32 = 10;

/// The bucket, this instance's mirror of it, and the state served from that.
pub(crate) struct KvStore {
    backend: Arc<KvBackend>,
    readiness: Option<Readiness>,
    current: Mutex<Current>,
}

/// The serving state and the bucket as last seen.
struct Current {
    state: State,
    /// The bucket as last seen, which `state` is served from.
    mirror: Mirror,
    /// False while the bucket is reloaded; changes are refused meanwhile.
    synced: bool,
}

impl KvStore {
    /// Serves the records of a bucket (`changes`: the whole bucket as `KvBackend::load`
    /// read it); refused records are reported and left out.
    pub(crate) fn open(
        backend: Arc<KvBackend>,
        changes: &[Change],
        shared: &Shared,
    ) -> Result<KvStore, StoreError> {
        let mut mirror = Mirror::default();
        absorb(shared, &mut mirror, changes);
        let (state, tolerated) = mirror.state();
        report_tolerated(tolerated);
        state
            .validate_with(Orphans::Tolerated)
            .map_err(StoreError::Kv)?;
        let commit = (shared.publisher)(&state).map_err(StoreError::Publish)?;
        commit();
        metrics::gauge!("sms_ingress_control_kv_synced").set(1.0);
        Ok(KvStore {
            backend,
            readiness: None,
            current: Mutex::new(Current {
                state,
                mirror,
                synced: true,
            }),
        })
    }

    /// Tells `readiness` when the store starts and ends reloading its bucket.
    pub(crate) fn set_readiness(&mut self, readiness: Readiness) {
        self.readiness = Some(readiness);
    }

    /// The bucket this store writes.
    pub(crate) fn backend(&self) -> &Arc<KvBackend> {
        &self.backend
    }

    /// A copy of the serving state.
    pub(crate) fn state(&self) -> State {
        lock(&self.current).state.clone()
    }

    /// Runs the change until its writes land, re-running it on refreshed records after a
    /// lost compare-and-set; `Conflict` after `CAS_ATTEMPTS` losses in a row.
    pub(crate) fn apply<T, E: From<ChangeError>>(
        &self,
        shared: &Shared,
        change: &mut impl FnMut(&mut State) -> Result<T, E>,
    ) -> Result<Applied<T>, E> {
        for attempt in 1..=CAS_ATTEMPTS {
            if let Some(applied) = self.try_apply(shared, change)? {
                return Ok(applied);
            }
            metrics::counter!("sms_ingress_control_kv_cas_conflicts_total").increment(1);
            std::thread::sleep(backoff(attempt));
        }
        Err(ChangeError::Conflict(CAS_ATTEMPTS).into())
    }

    /// One try: `None` when a compare-and-set was lost (the touched keys are re-read first).
    fn try_apply<T, E: From<ChangeError>>(
        &self,
        shared: &Shared,
        change: &mut impl FnMut(&mut State) -> Result<T, E>,
    ) -> Result<Option<Applied<T>>, E> {
        let mut current = lock(&self.current);
        if !current.synced {
            return Err(ChangeError::Reloading.into());
        }
        let mut next = current.state.clone();
        let value = change(&mut next)?;
        next.validate_change(&current.state, Orphans::Refused)
            .map_err(ChangeError::from)?;
        // Proves the data plane can serve the result before anything is written.
        drop(shared.prepare(&next)?);
        let ops = plan(&current.state, &next);
        let written = self.backend.write(&ops, &mut current.mirror);
        if !ops.is_empty() {
            serve_mirror(shared, &mut current);
        }
        match written {
            Ok(_) => Ok(Some(Applied {
                value,
                version: current.state.version,
            })),
            Err(KvError::Conflict(key)) => {
                tracing::debug!(
                    key,
                    "control: compare-and-set lost; re-reading and re-running"
                );
                let keys: Vec<&str> = ops.iter().map(|o| o.key()).collect();
                let fresh = self.backend.read(&keys).map_err(|e| kv_failed(&e))?;
                if absorb(shared, &mut current.mirror, &fresh) > 0 {
                    serve_mirror(shared, &mut current);
                }
                Ok(None)
            }
            Err(e) => Err(kv_failed(&e).into()),
        }
    }

    /// The watcher's entries (other instances' changes, and echoes of ours): applied to the
    /// mirror, then the whole state is validated and served, or refused whole.
    pub(crate) fn ingest(&self, shared: &Shared, changes: &[Change]) {
        let mut current = lock(&self.current);
        if absorb(shared, &mut current.mirror, changes) == 0 {
            return;
        }
        if serve_mirror(shared, &mut current) {
            let version = current.state.version;
            report(shared, "-", Ok(changes.len()), "ok", version);
        }
    }

    /// The watch failed or the connection dropped: refuse changes and report not ready
    /// until `replace` has loaded the whole bucket again.
    pub(crate) fn unsynced(&self) {
        lock(&self.current).synced = false;
        metrics::gauge!("sms_ingress_control_kv_synced").set(0.0);
        if let Some(ready) = &self.readiness {
            ready(false);
        }
    }

    /// The whole bucket, loaded again: it replaces the mirror, is served if valid, and the
    /// store is ready again.
    pub(crate) fn replace(&self, shared: &Shared, changes: &[Change]) {
        let mut mirror = Mirror::default();
        absorb(shared, &mut mirror, changes);
        let mut current = lock(&self.current);
        current.mirror = mirror;
        serve_mirror(shared, &mut current);
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
}

/// Applies entries to the mirror, reporting each refused one; how many were new.
fn absorb(shared: &Shared, mirror: &mut Mirror, changes: &[Change]) -> usize {
    let mut fresh = 0;
    for change in changes {
        match mirror.apply(change) {
            Ok(new) => fresh += usize::from(new),
            Err(e) => {
                fresh += 1;
                report(
                    shared,
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
/// previous snapshot keeps serving (logged, counted, audited). The mirror's number map is
/// the state's (shared), so this checks and builds what changed since the serving state.
fn serve_mirror(shared: &Shared, current: &mut Current) -> bool {
    let (next, tolerated) = current.mirror.state();
    report_tolerated(tolerated);
    let prepared = next
        .validate_change(&current.state, Orphans::Tolerated)
        .map_err(|e| ("state_invalid", e.to_string()))
        .and_then(|()| (shared.publisher)(&next).map_err(|e| ("publish_failed", e.to_string())));
    match prepared {
        Ok(commit) => {
            commit();
            current.state = next;
            true
        }
        Err((code, reason)) => {
            let version = current.state.version;
            report(shared, "-", Err(&reason), code, version);
            false
        }
    }
}

/// One log line, metric and (for refusals) audit line per judged KV change.
fn report(shared: &Shared, target: &str, result: Result<usize, &str>, code: &str, version: u64) {
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
    shared.audit.record(&audit::Entry {
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

/// Records not served because writers raced across records (see `Mirror::state`).
fn report_tolerated(t: Tolerated) {
    metrics::gauge!("sms_ingress_control_kv_tolerated", "reason" => "orphan_number")
        .set(t.orphan_numbers as f64);
    if t != Tolerated::default() {
        tracing::warn!(
            orphan_numbers = t.orphan_numbers,
            "control: concurrent writers left numbers whose integration is gone; they are not served"
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

/// The bucket could not be read or written; details in the log, not the response.
fn kv_failed(e: &KvError) -> ChangeError {
    tracing::error!(error = %e, "control: KV write failed");
    ChangeError::KvNotWritten
}

//! File storage of the control store (`control.store = "file"`): the state file, the
//! journal beside it for small changes of a large inventory, and external edits. A change
//! is validated, prepared in the data plane, made durable (journal line or whole file),
//! then made live, all under one lock; an external edit is judged whole under the same
//! lock, so an admin change lands on top of an unseen edit instead of overwriting it.

mod edits;
pub mod journal;
pub(crate) mod watch;

pub(crate) use edits::ReloadError;

use super::change::{count_update, lock, Applied, ChangeError, Commit, Shared, StoreError};
use crate::control::audit;
use crate::model::state::{write_atomic, Orphans, State, StateError};
use edits::{decide, fingerprint, parse_external, Decision, FileMark, FileStamp, Fingerprint};
use journal::Journal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Inventories of at least this many numbers journal a change instead of rewriting the
/// state file (see `journal`); smaller files are rewritten whole, as people read and
/// edit them.
pub(crate) const JOURNAL_MIN_NUMBERS: usize = 10_000;

/// A change to more numbers than this (a bulk import) is written into the file whole.
pub(crate) const JOURNAL_MAX_NUMBERS: usize = 4_096;

/// The state file, its journal, and the state served from them.
pub(crate) struct FileStore {
    path: PathBuf,
    /// See `JOURNAL_MIN_NUMBERS`.
    journal_from: usize,
    current: Mutex<Current>,
}

/// The serving state and what the store knows of where it came from.
struct Current {
    state: State,
    /// The state file's content the store wrote or adopted.
    mark: FileMark,
    /// Changes not yet in the state file.
    journal: Journal,
    /// When the last change was accepted, for folding the journal once changes pause.
    last_change: Instant,
}

/// What a prepared change hands back: the swap to make, and the file's new fingerprint
/// and stamp if it was rewritten (`None`: the change was journaled).
type Prepared = (Commit, Option<(Fingerprint, FileStamp)>);

impl FileStore {
    /// Loads the state file with its journal (a missing file is an empty state) and
    /// publishes it.
    pub(crate) fn open(path: PathBuf, shared: &Shared) -> Result<FileStore, StoreError> {
        // Exported from the start (0 until the first fold), so dashboards see it.
        metrics::counter!("sms_ingress_control_journal_folds_total").increment(0);
        // Taken before reading: if the file changes meanwhile, the first change reads it
        // again; if not, the first change need not read and hash the whole file.
        let stamp = FileStamp::at(&path);
        let loaded = journal::load(&path)?;
        let commit = (shared.publisher)(&loaded.state).map_err(StoreError::Publish)?;
        commit();
        crate::background::release_freed_memory();
        let mark = FileMark {
            known: loaded.base,
            rejected: None,
            stamp,
        };
        Ok(FileStore {
            path,
            journal_from: JOURNAL_MIN_NUMBERS,
            current: Mutex::new(Current {
                state: loaded.state,
                mark,
                journal: loaded.journal,
                last_change: Instant::now(),
            }),
        })
    }

    /// Journals changes from this inventory size on (tests use small sizes).
    #[cfg(test)]
    pub(crate) fn set_journal_from(&mut self, numbers: usize) {
        self.journal_from = numbers;
    }

    /// The state file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// A copy of the serving state (a pointer copy of the number list).
    pub(crate) fn state(&self) -> State {
        lock(&self.current).state.clone()
    }

    /// Runs `change` on a copy of the state; if the result is valid and the data plane
    /// takes it, makes it durable and swaps it in. Any error changes nothing.
    pub(crate) fn apply<T, E: From<ChangeError>>(
        &self,
        shared: &Shared,
        change: impl FnOnce(&mut State) -> Result<T, E>,
    ) -> Result<Applied<T>, E> {
        let mut current = lock(&self.current);
        if FileStamp::at(&self.path) != current.mark.stamp {
            // Someone else touched the file: let them finish writing (the watcher's
            // debounce) before judging it, rather than catch it half-written.
            drop(current);
            wait_until_quiet(&self.path);
            current = lock(&self.current);
        }
        // An external edit not yet picked up by the watcher is adopted (or rejected) first,
        // so this change applies on top of it instead of silently overwriting it.
        self.sync_locked(shared, &mut current);
        let mut next = current.state.clone();
        let value = change(&mut next)?;
        next.version = current.state.version + 1;
        // Journaled only on a file that holds what the store knows (not a rejected edit).
        let journaled = next.numbers.len() >= self.journal_from && current.mark.rejected.is_none();
        let base = current.mark.known;
        let Current { state, journal, .. } = &mut *current;
        let (commit, written) = crate::background::run_nicer("control-change", || {
            self.prepare(shared, state, &next, journal, journaled.then_some(base))
        })?;
        commit();
        if let Some((known, stamp)) = written {
            current.mark = FileMark::written(known, stamp);
        }
        current.state = next;
        current.last_change = Instant::now();
        Ok(Applied {
            value,
            version: current.state.version,
        })
    }

    /// The heavy part of a change: validate, build the snapshot (not yet live), then make
    /// it durable: appended to the journal when `journal_on` names the state file's
    /// fingerprint and the journal takes it, else the whole file is written (and the
    /// journal emptied). Returns the swap to make, and what the file now holds if written.
    fn prepare(
        &self,
        shared: &Shared,
        prev: &State,
        next: &State,
        journal: &mut Journal,
        journal_on: Option<Fingerprint>,
    ) -> Result<Prepared, ChangeError> {
        next.validate_change(prev, Orphans::Refused)?;
        let commit = shared.prepare(next)?;
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
                    return Err(ChangeError::JournalNotWritten);
                }
            }
        }
        let written = self.write_whole(next, journal).map_err(|e| {
            tracing::error!(error = %e, "state file not written; change dropped");
            ChangeError::FileNotWritten
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
    /// edit. At a million numbers this writes over 100 MB, so it waits for a pause, and
    /// it encodes and writes from a copy of the state (a pointer copy) without the lock:
    /// changes go on meanwhile. Only the rename into place is done under the lock, and
    /// only if nothing changed since the copy (else the next pause folds again).
    pub(crate) fn fold_journal_if_idle(&self, idle: Duration) -> Result<bool, StateError> {
        let (state, stamp) = {
            let current = lock(&self.current);
            if !current.journal.pending() || current.last_change.elapsed() < idle {
                return Ok(false);
            }
            (current.state.clone(), current.mark.stamp)
        };
        let written = crate::background::run_nicer("journal-fold", || {
            let bytes = state.encode();
            let staged = crate::fsutil::stage(&self.path, &bytes, "fold");
            (fingerprint(Some(&bytes)), staged)
        });
        let (known, staged) = match written {
            (known, Ok(staged)) => (known, staged),
            (_, Err(source)) => return Err(self.write_error(source)),
        };
        let mut current = lock(&self.current);
        let unchanged = current.state.version == state.version
            && current.journal.pending()
            && FileStamp::at(&self.path) == stamp;
        if !unchanged {
            staged.discard();
            return Ok(false);
        }
        let meta = staged.put_in_place().map_err(|e| self.write_error(e))?;
        if let Err(e) = current.journal.clear() {
            tracing::warn!(error = %e, path = %current.journal.path().display(),
                "journal not emptied after the state file was written; its lines are stale");
        }
        current.mark = FileMark::written(known, FileStamp::of(&meta));
        tracing::info!(version = current.state.version, path = %self.path.display(),
            "journaled changes written into the state file");
        metrics::counter!("sms_ingress_control_journal_folds_total").increment(1);
        drop(current);
        crate::background::release_freed_memory();
        Ok(true)
    }

    fn write_error(&self, source: std::io::Error) -> StateError {
        StateError::Write {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// Brings the store in line with its file: nothing if the file holds what the store
    /// wrote or loaded (or an edit already rejected); else the edit is validated whole and
    /// swapped in, or rejected with a log line, metric and audit line. `None`: no edit.
    pub(crate) fn sync_with_file(&self, shared: &Shared) -> Option<Result<u64, ReloadError>> {
        let mut current = lock(&self.current);
        self.sync_locked(shared, &mut current)
    }

    fn sync_locked(
        &self,
        shared: &Shared,
        current: &mut Current,
    ) -> Option<Result<u64, ReloadError>> {
        // Taken before reading: if the file changes meanwhile, the next look reads again.
        let stamp = FileStamp::at(&self.path);
        if stamp.is_some() && stamp == current.mark.stamp {
            return None;
        }
        let result = match State::read_bytes(&self.path) {
            Err(e) => Err(ReloadError::from_read(e)),
            Ok(bytes) => {
                let on_disk = fingerprint(bytes.as_deref());
                if decide(on_disk, &current.mark) != Decision::Reload {
                    current.mark.stamp = stamp;
                    return None;
                }
                let result = if current.journal.pending() {
                    Err(ReloadError::JournalPending(current.state.version))
                } else {
                    adopt(shared, current, bytes.as_deref())
                };
                match result {
                    Ok(_) => current.mark.known = on_disk,
                    Err(_) => current.mark.rejected = Some(on_disk),
                }
                current.mark.stamp = stamp;
                result
            }
        };
        let kept = match &result {
            Err(ReloadError::Read(_)) | Ok(_) => None,
            Err(_) => self.set_aside(current),
        };
        self.report_reload(shared, &result, current.state.version, kept.as_deref());
        Some(result)
    }

    /// A refused edit is kept as `<state_file>.rejected.<unix time>` — a hard link, so an
    /// editor still writing the file in place writes on into the kept copy — and the state
    /// file is put back at once: the serving state written whole, with any journaled
    /// changes, so neither a later admin write nor a crash loses or is blocked by anything.
    /// Returns the kept copy's path (`None` when the file was removed: nothing to keep).
    fn set_aside(&self, current: &mut Current) -> Option<PathBuf> {
        let kept = match std::fs::symlink_metadata(&self.path) {
            Ok(_) => match keep_rejected(&self.path) {
                Ok(kept) => Some(kept),
                Err(e) => {
                    // Unkept, the edit must stay where it is: the file is not put back.
                    tracing::error!(path = %self.path.display(), error = %e,
                        "a refused state file edit could not be kept aside; the file is left as it is");
                    return None;
                }
            },
            Err(_) => None,
        };
        let folded = current.journal.pending();
        let Current { state, journal, .. } = &mut *current;
        match crate::background::run_nicer("control-change", || self.write_whole(state, journal)) {
            Ok((known, stamp)) => {
                current.mark = FileMark::written(known, stamp);
                if folded {
                    metrics::counter!("sms_ingress_control_journal_folds_total").increment(1);
                }
            }
            Err(e) => tracing::error!(path = %self.path.display(), error = %e,
                "the state file could not be put back after a refused edit"),
        }
        kept
    }

    /// One log line, metric, gauge and audit line per judged edit.
    fn report_reload(
        &self,
        shared: &Shared,
        result: &Result<u64, ReloadError>,
        version: u64,
        kept: Option<&Path>,
    ) {
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
        let reason = result.as_ref().err().map(|e| match kept {
            Some(k) => format!("{e}; the edit is kept as {}", k.display()),
            None => e.to_string(),
        });
        let kept_as = kept.map(|k| k.display().to_string());
        match result {
            Ok(_) => tracing::info!(path, version, "state file edit accepted"),
            Err(e) => tracing::warn!(
                path,
                code = e.code(),
                reason = reason.as_deref().unwrap_or_default(),
                kept_as = kept_as.as_deref().unwrap_or("-"),
                version,
                "state file edit rejected and kept aside; the file is put back and the previous state keeps serving"
            ),
        }
        shared.audit.record(&audit::Entry {
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
}

/// Waits, at most `watch::MAX_SETTLE`, until the file has not been written for
/// `watch::DEBOUNCE`.
fn wait_until_quiet(path: &Path) {
    let deadline = Instant::now() + watch::MAX_SETTLE;
    while Instant::now() < deadline {
        let Some(modified) = std::fs::metadata(path).and_then(|m| m.modified()).ok() else {
            return;
        };
        let age = std::time::SystemTime::now()
            .duration_since(modified)
            .unwrap_or_default();
        if age >= watch::DEBOUNCE {
            return;
        }
        std::thread::sleep(watch::DEBOUNCE - age);
    }
}

/// Links the state file's current inode as `<state_file>.rejected.<unix time>[.<n>]`.
fn keep_rejected(path: &Path) -> std::io::Result<PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for n in 0..1000 {
        let suffix = if n == 0 {
            format!("{name}.rejected.{secs}")
        } else {
            format!("{name}.rejected.{secs}.{n}")
        };
        let kept = path.with_file_name(suffix);
        match std::fs::hard_link(path, &kept) {
            Ok(()) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    crate::fsutil::sync_dir(dir)?;
                }
                return Ok(kept);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other(
        "too many rejected copies this second",
    ))
}

/// Validates and publishes an edited file's content, then makes it the serving state.
fn adopt(shared: &Shared, current: &mut Current, bytes: Option<&[u8]>) -> Result<u64, ReloadError> {
    let bytes = bytes.ok_or(ReloadError::Missing)?;
    let next = parse_external(bytes, current.state.version)?;
    let commit = (shared.publisher)(&next).map_err(ReloadError::Publish)?;
    commit();
    current.state = next;
    current.last_change = Instant::now();
    // Stale lines could outrank a lower version written in the file; drop them.
    if let Err(e) = current.journal.clear() {
        tracing::warn!(error = %e, "journal not emptied after an accepted edit");
    }
    Ok(current.state.version)
}

//! Small changes of a large inventory, appended to a journal beside the state file
//! (`state.json.journal`) instead of rewriting the whole file: at a million numbers the
//! file is over 100 MB, and rewriting it for every token rotation, status change or
//! single import would take seconds of disk time from the spool's fsyncs. Each line holds
//! the complete integration list after one change, the numbers it changed (a
//! `NumberDelta`), the version it made, and the fingerprint of the state file it applies
//! on; loading replays the lines in order on that file. The store folds the journal into
//! the file when changes pause (see `ControlStore::fold_journal_if_idle`).

use super::edits::Fingerprint;
use crate::model::state::{write_atomic, Integration, NumberDelta, State, StateError};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Past this size the journal is replaced by its last line if no line changed numbers
/// (each line holds all integrations); else the state file is written whole instead.
pub(crate) const MAX_BYTES: u64 = 1 << 20;

/// One journaled change, as a line of JSON.
#[derive(Serialize)]
struct Record<'a> {
    version: u64,
    /// SHA-256 (hex) of the state file the change was made on.
    base: String,
    integrations: &'a [Integration],
    #[serde(skip_serializing_if = "no_numbers")]
    numbers: &'a NumberDelta,
}

fn no_numbers(delta: &&NumberDelta) -> bool {
    delta.is_empty()
}

/// One journaled change, as read back.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Replayed {
    version: u64,
    base: String,
    integrations: Vec<Integration>,
    #[serde(default)]
    numbers: NumberDelta,
}

/// The state file and the journal read together, as the store starts from them.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) state: State,
    /// The state file's fingerprint (`None`: no file).
    pub(crate) base: Fingerprint,
    /// The journal, ready to append after its last whole line.
    pub(crate) journal: Journal,
}

/// The journal file and how much of it holds changes.
#[derive(Debug)]
pub(crate) struct Journal {
    path: PathBuf,
    file: Option<File>,
    /// Bytes of whole lines (a torn last line from a crash is cut off before appending).
    len: u64,
    /// Whether some line holds a change the state file lacks.
    pending: bool,
    /// Whether some line changed numbers (then the last line alone is not the journal).
    has_deltas: bool,
}

/// The journal's path for a state file: the same name with `.journal` appended.
pub(crate) fn path_for(state_file: &Path) -> PathBuf {
    let mut name = state_file.as_os_str().to_os_string();
    name.push(".journal");
    PathBuf::from(name)
}

fn hex(fp: &Fingerprint) -> String {
    match fp {
        Some(bytes) => bytes.iter().map(|b| format!("{b:02x}")).collect(),
        None => "none".into(),
    }
}

/// Reads the state file, replays the journal's changes made on exactly that file, and
/// validates the result whole. Lines older than the file (a fold that stopped before
/// emptying the journal) are skipped; newer lines made on another file mean the file was
/// replaced while changes were still journaled, which is refused rather than guessed at.
pub(crate) fn load(state_file: &Path) -> Result<Loaded, StateError> {
    let bytes = State::read_bytes(state_file)?;
    let base = super::edits::fingerprint(bytes.as_deref());
    let mut state: State = match &bytes {
        Some(b) => serde_json::from_slice(b).map_err(|source| StateError::Parse {
            path: state_file.display().to_string(),
            source,
        })?,
        None => State::default(),
    };
    let path = path_for(state_file);
    let journal_bytes = State::read_bytes(&path)?.unwrap_or_default();
    let (mut len, mut pending, mut has_deltas) = (0u64, false, false);
    let base_hex = hex(&base);
    for line in journal_bytes.split_inclusive(|b| *b == b'\n') {
        if !line.ends_with(b"\n") {
            break; // torn by a crash mid-append: never acknowledged
        }
        let record: Replayed =
            serde_json::from_slice(line).map_err(|source| StateError::Parse {
                path: path.display().to_string(),
                source,
            })?;
        len += line.len() as u64;
        if record.version <= state.version && !pending {
            continue;
        }
        if record.base != base_hex {
            return Err(StateError::Invalid(format!(
                "{} holds changes up to version {} made on another version of {}: the state \
                 file was replaced while changes were journaled. Restore the file, or remove \
                 the journal to drop those changes",
                path.display(),
                record.version,
                state_file.display()
            )));
        }
        state.version = record.version;
        state.integrations = record.integrations;
        if !record.numbers.is_empty() {
            record.numbers.apply(&mut state.numbers);
            has_deltas = true;
        }
        pending = true;
    }
    state.validate()?;
    Ok(Loaded {
        state,
        base,
        journal: Journal {
            path,
            file: None,
            len,
            pending,
            has_deltas,
        },
    })
}

/// The state the store would serve from `state_file` and its journal (for tools).
pub fn state_of(state_file: &Path) -> Result<State, StateError> {
    load(state_file).map(|loaded| loaded.state)
}

impl Journal {
    /// Whether the journal holds changes the state file lacks.
    pub(crate) fn pending(&self) -> bool {
        self.pending
    }

    /// The journal's file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `state`'s integrations and the numbers it changed (`delta`), as made on
    /// the file with fingerprint `base`, and syncs: when this returns `Ok(true)` the change
    /// survives a crash. `Ok(false)`: the journal is full; write the state file whole. On
    /// error the journal is cut back to what it held, so a change reported failed is
    /// never replayed.
    pub(crate) fn append(
        &mut self,
        state: &State,
        base: &Fingerprint,
        delta: &NumberDelta,
    ) -> std::io::Result<bool> {
        let mut line = serde_json::to_vec(&Record {
            version: state.version,
            base: hex(base),
            integrations: &state.integrations,
            numbers: delta,
        })
        .map_err(std::io::Error::other)?;
        line.push(b'\n');
        let full = self.len + line.len() as u64 > MAX_BYTES;
        if full && (self.has_deltas || !delta.is_empty()) {
            return Ok(false);
        }
        if full {
            // Every line is whole, so the last one alone is the journal.
            self.file = None;
            write_atomic(&self.path, &line).map_err(|e| match e {
                StateError::Write { source, .. } => source,
                other => std::io::Error::other(other.to_string()),
            })?;
            self.len = line.len() as u64;
            self.pending = true;
            return Ok(true);
        }
        let file = self.file()?;
        let written = file.write_all(&line).and_then(|()| file.sync_data());
        match written {
            Ok(()) => {
                self.len += line.len() as u64;
                self.pending = true;
                self.has_deltas |= !delta.is_empty();
                Ok(true)
            }
            Err(e) => {
                let len = self.len;
                if let Err(cut) = self.file()?.set_len(len) {
                    tracing::error!(error = %cut, "journal: cannot cut back a failed append");
                }
                self.file = None;
                Err(e)
            }
        }
    }

    /// Empties the journal once the state file holds everything in it.
    pub(crate) fn clear(&mut self) -> std::io::Result<()> {
        self.pending = false;
        self.has_deltas = false;
        if self.len == 0 {
            return Ok(());
        }
        let file = self.file()?;
        file.set_len(0)?;
        file.sync_data()?;
        self.len = 0;
        Ok(())
    }

    /// The open file, cut to its whole lines (a crash may have left a torn tail).
    fn file(&mut self) -> std::io::Result<&mut File> {
        if self.file.is_none() {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            if file.metadata()?.len() != self.len {
                file.set_len(self.len)?;
            }
            self.file = Some(file);
        }
        Ok(self.file.as_mut().expect("just opened"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::state::Number;

    fn integration(id: &str, name: &str) -> Integration {
        Integration {
            name: name.into(),
            ..crate::fixtures::integration(id, "org-a")
        }
    }

    /// `state` saved as `state.json` in a fresh directory (kept alive by the guard).
    fn saved(state: &State) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state.json");
        state.save(&file).unwrap();
        (dir, file)
    }

    fn none() -> NumberDelta {
        NumberDelta::default()
    }

    fn base_state() -> State {
        State {
            version: 3,
            integrations: vec![integration("int-1", "first")],
            numbers: Default::default(),
        }
    }

    #[test]
    fn changes_replay_on_their_file_and_a_torn_tail_is_cut() {
        let (_dir, file) = saved(&base_state());
        let mut loaded = load(&file).unwrap();
        assert!(!loaded.journal.pending());
        for (v, name) in [(4, "second"), (5, "third")] {
            let mut s = loaded.state.clone();
            s.version = v;
            s.integrations[0].name = name.into();
            assert!(loaded.journal.append(&s, &loaded.base, &none()).unwrap());
        }
        // A crash mid-append leaves half a line: ignored, then cut before the next append.
        let jpath = path_for(&file);
        let mut f = OpenOptions::new().append(true).open(&jpath).unwrap();
        f.write_all(br#"{"version":6,"base":"#).unwrap();
        drop(f);
        let mut again = load(&file).unwrap();
        assert_eq!(again.state.version, 5);
        assert_eq!(again.state.integrations[0].name, "third");
        assert!(again.journal.pending());
        let mut s = again.state.clone();
        s.version = 6;
        s.integrations[0].name = "fourth".into();
        assert!(again.journal.append(&s, &again.base, &none()).unwrap());
        assert_eq!(load(&file).unwrap().state, s);
        assert!(!std::fs::read_to_string(&jpath)
            .unwrap()
            .contains(r#"base":{"#));

        // Folded: the file holds version 6, the journal is emptied.
        s.save(&file).unwrap();
        again.journal.clear().unwrap();
        assert_eq!(std::fs::metadata(&jpath).unwrap().len(), 0);
        let folded = load(&file).unwrap();
        assert_eq!(folded.state, s);
        assert!(!folded.journal.pending());
    }

    #[test]
    fn stale_lines_are_skipped_and_a_replaced_file_is_refused() {
        let (_dir, file) = saved(&base_state());
        let mut loaded = load(&file).unwrap();
        let mut s = loaded.state.clone();
        s.version = 4;
        s.integrations[0].name = "journaled".into();
        assert!(loaded.journal.append(&s, &loaded.base, &none()).unwrap());

        // The file replaced under pending changes: refused, naming the way out.
        let mut other = base_state();
        other.integrations[0].name = "edited offline".into();
        other.save(&file).unwrap();
        let err = load(&file).unwrap_err().to_string();
        assert!(err.contains("remove the journal"), "{err}");

        // A fold that wrote the file but stopped before emptying the journal: the line
        // is older than the file and skipped.
        s.version = 4;
        s.save(&file).unwrap();
        let after = load(&file).unwrap();
        assert_eq!(after.state, s);
        assert!(!after.journal.pending());
    }

    #[test]
    fn a_full_journal_is_replaced_by_its_last_line() {
        let (_dir, file) = saved(&base_state());
        let mut loaded = load(&file).unwrap();
        let mut s = loaded.state.clone();
        // ~100 KB a line: 25 integrations with the longest notes allowed.
        let first = s.integrations[0].clone();
        s.integrations = (0..25)
            .map(|i| crate::model::state::Integration {
                id: if i == 0 {
                    first.id.clone()
                } else {
                    format!("int-x{i}")
                },
                notes: "x".repeat(crate::model::state::MAX_NOTES_CHARS),
                ..first.clone()
            })
            .collect();
        for v in 4..30 {
            s.version = v;
            assert!(loaded.journal.append(&s, &loaded.base, &none()).unwrap());
        }
        let jlen = std::fs::metadata(path_for(&file)).unwrap().len();
        assert!(jlen <= MAX_BYTES, "{jlen}");
        assert_eq!(load(&file).unwrap().state, s);
    }

    fn num(i: u32) -> Number {
        crate::fixtures::number(&format!("+1415555{i:04}"))
    }

    #[test]
    fn number_changes_replay_in_order_and_a_full_journal_asks_for_a_whole_write() {
        let mut first = base_state();
        first.numbers = (0..3).map(num).collect();
        let (_dir, file) = saved(&first);
        let mut loaded = load(&file).unwrap();

        let mut next = loaded.state.clone();
        next.version = 4;
        next.numbers.retain(|n| n.sender_id != num(1).sender_id);
        next.numbers.insert(num(7));
        let delta = next.numbers.delta_from(&loaded.state.numbers);
        assert!(loaded.journal.append(&next, &loaded.base, &delta).unwrap());
        let prev = next.clone();
        next.version = 5;
        next.numbers.insert(Number {
            queue: "other".into(),
            ..num(0)
        });
        let delta = next.numbers.delta_from(&prev.numbers);
        assert_eq!(delta.changed.len(), 1);
        assert!(loaded.journal.append(&next, &loaded.base, &delta).unwrap());
        let replayed = load(&file).unwrap();
        assert_eq!(replayed.state, next);
        assert!(replayed.journal.has_deltas);

        // Full, with number lines in it: not compacted to the last line; nothing written.
        let mut big = next.clone();
        big.version = 6;
        big.integrations[0].notes = "x".repeat(MAX_BYTES as usize);
        assert!(!loaded.journal.append(&big, &loaded.base, &none()).unwrap());
        assert_eq!(load(&file).unwrap().state, next);
    }

    #[test]
    fn a_corrupt_whole_line_is_an_error() {
        let (_dir, file) = saved(&base_state());
        std::fs::write(path_for(&file), b"not json\n").unwrap();
        assert!(matches!(load(&file), Err(StateError::Parse { .. })));
    }
}

//! A consumer's position in a log whose records are settled out of order: every record
//! before `next` is settled, and so is each span in `done` (start → end offset) past it.
//! Saved atomically (`fsutil::write_atomic`), so a restart resumes exactly there. Backs
//! dead-letter replay and delivery routes alike.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

/// Why a saved cursor could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    #[error("cursor {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cursor {path} does not parse (fix or remove it by hand): {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Everything before `next` is settled, and so is every offset of each span of `done`
/// (start → end, settled past an earlier record still open). Adjacent spans are merged, so
/// `done` holds one entry per run of settled records, not one per record.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Cursor {
    pub next: u64,
    #[serde(default)]
    pub done: BTreeMap<u64, u64>,
}

impl Cursor {
    /// The saved cursor, or the start of the log if none was saved yet.
    pub fn load(path: &Path) -> Result<Cursor, CursorError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| CursorError::Corrupt {
                path: path.to_path_buf(),
                source,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Cursor::default()),
            Err(source) => Err(CursorError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Records settled spans (start, end) and moves `next` over every contiguous one.
    pub fn mark(&mut self, spans: &[(u64, u64)]) {
        for &(start, end) in spans {
            self.merge(start, end);
        }
        while let Some(end) = self.done.remove(&self.next) {
            self.next = end;
        }
    }

    /// Adds one span, joined to a span that ends where it starts and one that starts
    /// where it ends.
    fn merge(&mut self, mut start: u64, mut end: u64) {
        if let Some((&s, &e)) = self.done.range(..=start).next_back() {
            if e == start {
                self.done.remove(&s);
                start = s;
            }
        }
        if let Some(e) = self.done.remove(&end) {
            end = e;
        }
        self.done.insert(start, end);
    }

    /// Whether the record starting at `offset` is settled.
    pub fn is_done(&self, offset: u64) -> bool {
        offset < self.next
            || self
                .done
                .range(..=offset)
                .next_back()
                .is_some_and(|(_, &end)| offset < end)
    }

    /// Replaces the file atomically: temp file, fsync, rename, fsync of the directory.
    pub fn save(&self, path: &Path) -> Result<(), CursorError> {
        let err = |source| CursorError::Io {
            path: path.to_path_buf(),
            source,
        };
        let bytes = serde_json::to_vec(self).map_err(|e| err(e.into()))?;
        crate::fsutil::write_atomic(path, &bytes)
            .map(drop)
            .map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_moves_over_contiguous_spans_and_persists() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("replay-cursor.json");
        assert_eq!(Cursor::load(&path).unwrap(), Cursor::default());
        let mut c = Cursor::default();
        c.mark(&[(20, 30), (30, 45)]);
        assert_eq!(c.next, 0, "a gap before them keeps next");
        assert_eq!(c.done.len(), 1, "adjacent spans are one");
        assert!(c.is_done(20) && c.is_done(30) && !c.is_done(10) && !c.is_done(45));
        c.mark(&[(0, 10)]);
        assert_eq!((c.next, c.done.len()), (10, 1));
        assert!(c.is_done(0) && !c.is_done(10));
        c.save(&path).unwrap();
        assert_eq!(Cursor::load(&path).unwrap(), c);
        c.mark(&[(10, 20)]);
        assert_eq!((c.next, c.done.len()), (45, 0));
        c.save(&path).unwrap();
        assert_eq!(Cursor::load(&path).unwrap(), c);
        assert!(!tmp.path().join("replay-cursor.json.tmp").exists());

        // Settled in any order, the spans stay few and next lands at the end.
        let mut c = Cursor::default();
        let order: Vec<u64> = (0..1000u64).map(|i| (i * 617) % 1000).collect();
        for (n, i) in order.iter().enumerate() {
            c.mark(&[(i * 10, i * 10 + 10)]);
            let settled: std::collections::BTreeSet<u64> = order[..=n].iter().copied().collect();
            if n % 97 == 0 {
                for j in 0..1000 {
                    assert_eq!(
                        c.is_done(j * 10),
                        settled.contains(&j),
                        "record {j} after {n} marks"
                    );
                }
            }
        }
        assert_eq!((c.next, c.done.len()), (10_000, 0));

        std::fs::write(&path, b"{not json").unwrap();
        assert!(matches!(
            Cursor::load(&path),
            Err(CursorError::Corrupt { .. })
        ));
    }
}

//! Telling the store's own writes of the state file from external edits, and judging an
//! edit whole: pure functions over the file's bytes and metadata. The store swaps an
//! accepted edit in or keeps serving the last good state; nothing here does I/O beyond
//! reading a file's metadata.

use crate::control::audit::redact_quoted;
use crate::inventory::BuildError;
use crate::model::state::{State, StateError};

/// SHA-256 of the file's bytes; `None` when the file does not exist.
pub(crate) type Fingerprint = Option<[u8; 32]>;

/// The fingerprint of a file's content (`None` for a missing file).
pub(crate) fn fingerprint(bytes: Option<&[u8]>) -> Fingerprint {
    bytes.map(|b| {
        let digest = ring::digest::digest(&ring::digest::SHA256, b);
        digest.as_ref().try_into().expect("SHA-256 is 32 bytes")
    })
}

/// What the store knows of its file: the content it last wrote or adopted, and the last
/// content it rejected (so one bad edit is reported once, not at every event).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct FileMark {
    /// Fingerprint of the content the serving state came from (or was written as).
    pub(crate) known: Fingerprint,
    /// Fingerprint of the last content refused, if it is still what the file holds.
    pub(crate) rejected: Option<Fingerprint>,
    /// The file's identity when it last held content judged above: while it still has
    /// it, each admin change skips re-reading and hashing the whole file.
    pub(crate) stamp: Option<FileStamp>,
}

impl FileMark {
    /// What the store knows right after writing the file itself.
    pub(crate) fn written(known: Fingerprint, stamp: FileStamp) -> FileMark {
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
pub(crate) struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

impl FileStamp {
    /// The stamp of a file's metadata.
    pub(crate) fn of(meta: &std::fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }

    /// The stamp of the file at `path` now; `None` if it cannot be read.
    pub(crate) fn at(path: &std::path::Path) -> Option<FileStamp> {
        std::fs::metadata(path).ok().map(|m| FileStamp::of(&m))
    }
}

/// What to do about the file's current content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// The store wrote or loaded exactly this: nothing to do (echo of our own write).
    Unchanged,
    /// This content was already judged invalid and reported.
    AlreadyRejected,
    /// Someone else changed the file: validate it and swap it in or reject it.
    Reload,
}

/// Compares the file's fingerprint with what the store knows.
pub(crate) fn decide(on_disk: Fingerprint, mark: &FileMark) -> Decision {
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
    Publish(#[source] BuildError),
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
    pub(crate) fn code(&self) -> &'static str {
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
    pub(crate) fn from_read(e: StateError) -> Self {
        match e {
            StateError::Read { source, .. } => ReloadError::Read(source),
            other => ReloadError::Read(std::io::Error::other(other.to_string())),
        }
    }
}

/// Parses and validates an edited file whole. The version never goes backwards: an edit
/// that did not bump it still becomes the next version.
pub(crate) fn parse_external(bytes: &[u8], current_version: u64) -> Result<State, ReloadError> {
    let mut state: State = serde_json::from_slice(bytes)
        .map_err(|e| ReloadError::Parse(redact_quoted(&e.to_string())))?;
    state.validate().map_err(|e| match e {
        StateError::Invalid(m) => ReloadError::Invalid(m),
        other => ReloadError::Invalid(other.to_string()),
    })?;
    state.version = state.version.max(current_version + 1);
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            err.code(),
            "parse_error",
            "the inventory is a map: refused as it is read"
        );
        assert!(
            err.to_string()
                .contains("number +14155550100 appears twice"),
            "{err}"
        );
        let bad_sid = valid_json(1).replace(&format!("AC{}", "a".repeat(32)), "AC123");
        let err = parse_external(bad_sid.as_bytes(), 1).unwrap_err();
        assert!(err.to_string().contains("account_sid"), "{err}");
    }
}

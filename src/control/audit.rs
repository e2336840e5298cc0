//! The control plane's audit trail: one JSON line per change, admin API (accepted and
//! rejected) and state-file reloads alike, appended to `control.audit_log`. Lines name
//! who (org, token id), what (action, target) and the outcome, never a token or secret.

use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// Where a change came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Source {
    /// The admin API on the Unix socket.
    Admin,
    /// An external edit of the watched state file.
    File,
    /// A record of the fleet's KV bucket, written by another instance or a tool.
    Kv,
}

/// Whether the change became live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Outcome {
    /// Persisted and swapped in.
    Accepted,
    /// Refused; nothing changed anywhere.
    Rejected,
}

/// One audit line before it is stamped with the time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry<'a> {
    /// Admin API or state file.
    pub(crate) source: Source,
    /// The caller's org (admin changes only).
    pub(crate) org: Option<&'a str>,
    /// The caller's token id, never the token (admin changes only).
    pub(crate) token_id: Option<&'a str>,
    /// What was attempted, e.g. `integration.update` or `state.reload`.
    pub(crate) action: &'a str,
    /// The integration id, sender id or file the change is about.
    pub(crate) target: &'a str,
    /// Accepted or rejected.
    pub(crate) result: Outcome,
    /// The machine-readable code of a rejection.
    pub(crate) code: Option<&'a str>,
    /// Why it was rejected; redacted of quoted values before it is written.
    pub(crate) reason: Option<&'a str>,
    /// The state version in force after the change (or still in force after a rejection).
    pub(crate) state_version: u64,
}

/// The serialised shape of a line, fields in the documented order.
#[derive(Serialize)]
struct Line<'a> {
    at: String,
    source: Source,
    org: Option<&'a str>,
    token_id: Option<&'a str>,
    action: &'a str,
    target: &'a str,
    result: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    state_version: u64,
}

/// Why the audit log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The file (or its directory) cannot be created or opened for appending.
    #[error("control.audit_log {path}: cannot open for appending: {source}")]
    Open {
        /// The configured path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The append-only audit file; `disabled()` writes nothing (unit tests, tools).
#[derive(Debug)]
pub(crate) struct AuditLog {
    file: Option<Mutex<File>>,
    path: PathBuf,
    /// Rotate once the file holds this many bytes (0: never).
    max_bytes: u64,
    /// Rotated files kept (`<path>.1` … `<path>.N`).
    keep: usize,
    /// The rate limit of refused-request lines.
    refused: Mutex<RefusedWindow>,
}

/// Refused admin requests (401/403) written per second at most: a flood of bad tokens
/// cannot fill the disk or fsync per request; what is left out is said in one line.
const REFUSED_PER_SECOND: u32 = 10;

/// The current second's count of refused-request lines, and those left out.
#[derive(Debug)]
struct RefusedWindow {
    started: std::time::Instant,
    written: u32,
    left_out: u64,
}

impl Default for RefusedWindow {
    fn default() -> Self {
        RefusedWindow {
            started: std::time::Instant::now(),
            written: 0,
            left_out: 0,
        }
    }
}

/// Opens (creating, owner-only) `path` for appending.
fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// `<path>.n`.
fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

impl AuditLog {
    /// Opens (creating, owner-only) the log for appending; never rotated.
    pub(crate) fn open(path: &Path) -> Result<AuditLog, AuditError> {
        let file = open_append(path).map_err(|source| AuditError::Open {
            path: path.display().to_string(),
            source,
        })?;
        Ok(AuditLog {
            file: Some(Mutex::new(file)),
            path: path.to_path_buf(),
            max_bytes: 0,
            keep: 1,
            refused: Mutex::default(),
        })
    }

    /// Rotates the file once it holds `max_bytes` (0: never), keeping `keep` old files.
    pub(crate) fn with_rotation(mut self, max_bytes: u64, keep: usize) -> AuditLog {
        self.max_bytes = max_bytes;
        self.keep = keep.max(1);
        self
    }

    /// A log that records nothing.
    pub(crate) fn disabled() -> AuditLog {
        AuditLog {
            file: None,
            path: PathBuf::new(),
            max_bytes: 0,
            keep: 1,
            refused: Mutex::default(),
        }
    }

    /// Appends one line in a single `write` and syncs it. A failure is logged and counted
    /// but does not undo the change, which is already live.
    /// A refused admin request (401/403): written unless this second already has
    /// `REFUSED_PER_SECOND` of them; the next line written says how many were left out.
    pub(crate) fn record_refused(&self, entry: &Entry<'_>) {
        let left_out = {
            let mut w = self
                .refused
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if w.started.elapsed() >= std::time::Duration::from_secs(1) {
                w.started = std::time::Instant::now();
                w.written = 0;
            }
            if w.written >= REFUSED_PER_SECOND {
                w.left_out += 1;
                return;
            }
            w.written += 1;
            std::mem::take(&mut w.left_out)
        };
        if left_out > 0 {
            let reason = format!(
                "{left_out} refused requests were not written (over {REFUSED_PER_SECOND} a second)"
            );
            self.record(&Entry {
                source: Source::Admin,
                org: None,
                token_id: None,
                action: "admin.refused_left_out",
                target: "-",
                result: Outcome::Rejected,
                code: Some("rate_limited"),
                reason: Some(&reason),
                state_version: entry.state_version,
            });
        }
        self.record(entry);
    }

    pub(crate) fn record(&self, entry: &Entry<'_>) {
        let Some(file) = &self.file else { return };
        let line = format_line(entry, SystemTime::now());
        let mut f = file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(e) = f.write_all(line.as_bytes()).and_then(|_| f.sync_data()) {
            metrics::counter!("sms_ingress_audit_write_errors_total").increment(1);
            tracing::error!(path = %self.path.display(), error = %e, "audit line not written");
            return;
        }
        if self.max_bytes > 0 && f.metadata().is_ok_and(|m| m.len() >= self.max_bytes) {
            if let Err(e) = self.rotate(&mut f) {
                tracing::error!(path = %self.path.display(), error = %e, "audit log not rotated");
            }
        }
    }

    /// `<path>.N-1` → `.N`, …, `<path>` → `.1`, then a fresh `<path>`.
    fn rotate(&self, f: &mut File) -> std::io::Result<()> {
        for n in (1..self.keep).rev() {
            match std::fs::rename(rotated(&self.path, n), rotated(&self.path, n + 1)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(&self.path, rotated(&self.path, 1))?;
        *f = open_append(&self.path)?;
        tracing::info!(path = %self.path.display(), keep = self.keep, "audit log rotated");
        Ok(())
    }

    /// Opens the path again (after logrotate moved the file away; SIGHUP).
    pub(crate) fn reopen(&self) {
        let Some(file) = &self.file else { return };
        match open_append(&self.path) {
            Ok(new) => {
                *file
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = new;
                tracing::info!(path = %self.path.display(), "audit log reopened");
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "audit log not reopened; still writing the old file");
            }
        }
    }
}

/// The JSON line (with its newline) for an entry at a given time.
pub(crate) fn format_line(entry: &Entry<'_>, at: SystemTime) -> String {
    let line = Line {
        at: humantime::format_rfc3339_millis(at).to_string(),
        source: entry.source,
        org: entry.org,
        token_id: entry.token_id,
        action: entry.action,
        target: entry.target,
        result: entry.result,
        code: entry.code,
        reason: entry.reason.map(redact_quoted),
        state_version: entry.state_version,
    };
    let mut text = serde_json::to_string(&line).expect("audit line serialises");
    text.push('\n');
    text
}

/// Blanks everything between double quotes or backticks: error messages quote the values
/// they refused (serde's `invalid type: string "..."`), and a value may be a token.
pub(crate) fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut open: Option<char> = None;
    for c in message.chars() {
        match open {
            Some(q) if c == q => {
                out.push('…');
                out.push(c);
                open = None;
            }
            Some(_) => {}
            None => {
                out.push(c);
                if c == '"' || c == '`' {
                    open = Some(c);
                }
            }
        }
    }
    if open.is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn entry<'a>() -> Entry<'a> {
        Entry {
            source: Source::Admin,
            org: Some("org-a"),
            token_id: Some("a-admin"),
            action: "integration.update",
            target: "int-1",
            result: Outcome::Rejected,
            code: Some("invalid_request"),
            reason: Some(
                r#"invalid JSON body: invalid type: string "tok-123", expected a boolean"#,
            ),
            state_version: 7,
        }
    }

    #[test]
    fn line_has_every_field_and_no_quoted_value() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let line = format_line(&entry(), at);
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["at"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["source"], "admin");
        assert_eq!(v["org"], "org-a");
        assert_eq!(v["token_id"], "a-admin");
        assert_eq!(v["action"], "integration.update");
        assert_eq!(v["target"], "int-1");
        assert_eq!(v["result"], "rejected");
        assert_eq!(v["code"], "invalid_request");
        assert_eq!(v["state_version"], 7);
        assert!(!line.contains("tok-123"), "{line}");
        assert!(v["reason"].as_str().unwrap().contains("invalid type"));
    }

    #[test]
    fn accepted_file_line_omits_code_and_reason() {
        let e = Entry {
            source: Source::File,
            org: None,
            token_id: None,
            action: "state.reload",
            target: "state.json",
            result: Outcome::Accepted,
            code: None,
            reason: None,
            state_version: 3,
        };
        let v: serde_json::Value =
            serde_json::from_str(&format_line(&e, SystemTime::now())).unwrap();
        assert_eq!(v["source"], "file");
        assert_eq!(v["result"], "accepted");
        assert!(v["org"].is_null() && v["token_id"].is_null());
        assert!(v.get("code").is_none() && v.get("reason").is_none());
    }

    #[test]
    fn redaction() {
        assert_eq!(redact_quoted("a \"b\" c `d` e"), "a \"…\" c `…` e");
        assert_eq!(redact_quoted("unterminated \"secret"), "unterminated \"…");
        assert_eq!(redact_quoted("plain"), "plain");
    }

    #[test]
    fn rotates_by_size_keeping_n_and_reopens() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("audit.log");
        let line_len = format_line(&entry(), SystemTime::now()).len() as u64;
        let log = AuditLog::open(&path)
            .unwrap()
            .with_rotation(line_len * 2, 2);
        for _ in 0..7 {
            log.record(&entry());
        }
        let lines = |p: &Path| std::fs::read_to_string(p).map_or(0, |t| t.lines().count());
        assert_eq!(lines(&rotated(&path, 1)), 2);
        assert_eq!(lines(&rotated(&path, 2)), 2);
        assert!(!rotated(&path, 3).exists(), "only 2 kept");
        assert_eq!(lines(&path), 1, "7 lines: 2 + 2 + 2 (dropped) + 1 current");
        // logrotate moves the file away; SIGHUP reopens the path.
        std::fs::rename(&path, tmp.path().join("moved")).unwrap();
        log.reopen();
        log.record(&entry());
        assert_eq!(lines(&path), 1);
        assert_eq!(lines(&tmp.path().join("moved")), 1);
    }

    #[test]
    fn appends_lines_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/audit.log");
        let log = AuditLog::open(&path).unwrap();
        log.record(&entry());
        drop(log);
        AuditLog::open(&path).unwrap().record(&entry());
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        AuditLog::disabled().record(&entry());
    }
}

//! The control-plane state: organisations' integrations and their imported numbers, as
//! stored in the state file. Validated whole before it is ever served.

use crate::model::crypto::Sealed;
pub use crate::model::numbers::{
    Compliance, Country, KeywordReply, Number, NumberDelta, NumberStatus, NumberType, Numbers,
    SenderId, Text,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// Largest inventory whose state file is written indented.
const PRETTY_MAX_NUMBERS: usize = 10_000;

/// Everything the control plane knows; the state file is this, as JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// Bumped on every accepted change; shown as the snapshot version.
    #[serde(default)]
    pub version: u64,
    #[serde(default)]
    pub integrations: Vec<Integration>,
    #[serde(default)]
    pub numbers: Numbers,
}

/// A tenant's link to one Twilio (sub-)account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Integration {
    pub id: String,
    pub org: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub notes: String,
    pub account_sid: String,
    /// The primary Auth Token, sealed under the master key with the integration id as AAD.
    pub auth_token: Sealed,
    /// A second token accepted while a rotation is under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_auth_token: Option<Sealed>,
    pub status: IntegrationStatus,
    /// Twilio SharedKeys (Webhooks configuration API): at most two, for a rotation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signing_keys: Vec<SigningKey>,
}

/// One Twilio SharedKey: the id Twilio names in `X-Twilio-Webhooks-Signature-Settings`,
/// and the secret, sealed under the master key with `signing_key_aad` as associated data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningKey {
    pub id: String,
    pub secret: Sealed,
}

/// Signing keys an integration may hold: the one in use and the next, for a rotation.
pub const MAX_SIGNING_KEYS: usize = 2;

/// The associated data a signing key's secret is sealed with: bound to its integration
/// and its id, so a sealed secret cannot be moved to another key.
pub fn signing_key_aad(integration_id: &str, key_id: &str) -> String {
    format!("{integration_id}/signing_key/{key_id}")
}

/// A signing key id: 1-64 of `[A-Za-z0-9_.-]` (it travels in a header and the audit log).
pub fn is_signing_key_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Whether an integration's webhooks are routed (`active`) or dropped (`inactive`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntegrationStatus {
    Active,
    Inactive,
}

/// Whether numbers whose integration is gone are an error (a state file, the admin API)
/// or tolerated (the fleet's KV view, where two instances can race across records; such
/// numbers are not served).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Orphans {
    Refused,
    Tolerated,
}

/// Why a state (file or proposed change) was refused; the message names the record.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read state file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("state file {path} is not valid JSON for the state schema: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("invalid state: {0}")]
    Invalid(String),
    #[error("cannot write state file {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// `AC` followed by 32 lowercase or uppercase hex digits.
pub fn is_account_sid(s: &str) -> bool {
    s.len() == 34 && s.starts_with("AC") && s[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// `+` then 8 to 15 digits, the first not 0 (ITU-T E.164).
pub fn is_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// 5 or 6 digits.
pub fn is_short_code(s: &str) -> bool {
    (5..=6).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
}

/// Org names become directory names (`<sink.dir>/<org>/<queue>/`) and NATS subject
/// tokens (`sms.{kind}.{org}.{queue}`): kept as plain as queue names.
pub fn is_org_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What a queue name may be, said in every refusal of one.
pub const QUEUE_NAME_RULE: &str =
    "1-64 characters of a-z, 0-9, '_', '.' and '-', starting with a letter or digit";

/// A queue name a change may use (`[a-z0-9][a-z0-9_.-]{0,63}`): it becomes a directory
/// name, a NATS subject token and a metric label, and is typed on command lines.
pub fn is_queue_name(s: &str) -> bool {
    let b = s.as_bytes();
    let plain = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= 64
        && plain(b[0])
        && b[1..]
            .iter()
            .all(|&c| plain(c) || matches!(c, b'_' | b'.' | b'-'))
}

/// A queue name a stored state may hold: today's rule, or the one before it (upper case
/// and a leading `-` or `_` allowed), so a state written then still loads; changes
/// through the admin API use `is_queue_name`.
pub fn is_stored_queue_name(s: &str) -> bool {
    is_queue_name(s) || (is_org_name(s) && !s.starts_with('.'))
}

/// Replaces `path` with `bytes` atomically (`fsutil::write_atomic`), naming the file in the error.
/// Returns the written file's metadata (taken before the rename, which keeps the inode).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<std::fs::Metadata, StateError> {
    crate::fsutil::write_atomic(path, bytes).map_err(|source| StateError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// The invariants of one integration on its own (the fleet store checks each KV record).
pub fn check_integration(i: &Integration) -> Result<(), StateError> {
    if i.id.is_empty() || i.org.is_empty() {
        return Err(StateError::Invalid(format!(
            "integration {:?}: id and org must be set",
            i.id
        )));
    }
    if !is_org_name(&i.org) {
        return Err(StateError::Invalid(format!(
            "integration {}: org {:?} must be 1-64 of [A-Za-z0-9_-] (it names the org's queue directories and NATS subjects)",
            i.id, i.org
        )));
    }
    if !is_account_sid(&i.account_sid) {
        return Err(StateError::Invalid(format!(
            "integration {}: account_sid {:?} is not AC followed by 32 hex digits",
            i.id, i.account_sid
        )));
    }
    check_text_limits(&i.name, &i.notes)
        .map_err(|m| StateError::Invalid(format!("integration {}: {m}", i.id)))?;
    check_signing_key_ids(&i.signing_keys)
        .map_err(|m| StateError::Invalid(format!("integration {}: {m}", i.id)))?;
    Ok(())
}

/// At most `MAX_SIGNING_KEYS`, each id well-formed and unique; the message says which.
pub fn check_signing_key_ids(keys: &[SigningKey]) -> Result<(), String> {
    if keys.len() > MAX_SIGNING_KEYS {
        return Err(format!(
            "at most {MAX_SIGNING_KEYS} signing_keys (the one in use and the next)"
        ));
    }
    for (n, k) in keys.iter().enumerate() {
        if !is_signing_key_id(&k.id) {
            return Err(format!(
                "signing key id {:?} must be 1-64 of [A-Za-z0-9_.-]",
                k.id
            ));
        }
        if keys[..n].iter().any(|o| o.id == k.id) {
            return Err(format!("signing key id {:?} appears twice", k.id));
        }
    }
    Ok(())
}

/// An integration's `name`, in characters: a tenant names it, so it is bounded.
pub const MAX_NAME_CHARS: usize = 200;
/// An integration's `notes`, in characters.
pub const MAX_NOTES_CHARS: usize = 4000;

/// Whether an integration's name and notes are within their limits; the message says which.
pub fn check_text_limits(name: &str, notes: &str) -> Result<(), String> {
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(format!("name is longer than {MAX_NAME_CHARS} characters"));
    }
    if notes.chars().count() > MAX_NOTES_CHARS {
        return Err(format!(
            "notes are longer than {MAX_NOTES_CHARS} characters"
        ));
    }
    Ok(())
}

/// The invariants of one number on its own: sender ID format, queue name, short-code compliance.
pub fn check_number(n: &Number) -> Result<(), StateError> {
    let bad = |m: String| Err(StateError::Invalid(m));
    let format_ok = match n.kind {
        NumberType::ShortCode => is_short_code(&n.sender_id),
        _ => is_e164(&n.sender_id),
    };
    if !format_ok {
        return bad(format!(
            "number {}: sender_id is not valid for type {:?}",
            n.sender_id, n.kind
        ));
    }
    if !is_stored_queue_name(&n.queue) {
        return bad(format!(
            "number {}: queue {:?} must be {QUEUE_NAME_RULE}",
            n.sender_id, n.queue
        ));
    }
    if n.kind == NumberType::ShortCode && !n.compliance.as_ref().is_some_and(|c| c.is_complete()) {
        return bad(format!(
            "number {}: short code without complete compliance",
            n.sender_id
        ));
    }
    Ok(())
}

impl State {
    /// Reads and validates a state file; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<State, StateError> {
        match Self::read_bytes(path)? {
            Some(bytes) => Self::parse(path, &bytes),
            None => Ok(State::default()),
        }
    }

    /// The file's bytes, or `None` when it does not exist (the store starts empty then).
    pub fn read_bytes(path: &Path) -> Result<Option<Vec<u8>>, StateError> {
        match std::fs::read(path) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Read {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Parses and validates the bytes of a state file (`path` only names it in errors).
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<State, StateError> {
        let state: State = serde_json::from_slice(bytes).map_err(|source| StateError::Parse {
            path: path.display().to_string(),
            source,
        })?;
        state.validate()?;
        Ok(state)
    }

    /// The exact bytes `save` writes, so the store can recognise its own file later.
    pub fn encode(&self) -> Vec<u8> {
        // Pretty for the inventories people read and edit; compact past that, where the
        // file is written by tools and its size is what costs.
        let mut bytes = if self.numbers.len() <= PRETTY_MAX_NUMBERS {
            serde_json::to_vec_pretty(self)
        } else {
            serde_json::to_vec(self)
        }
        .expect("state serialises");
        bytes.push(b'\n');
        bytes
    }

    /// Writes atomically: temp file in the same directory, fsync, rename, fsync the directory.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        write_atomic(path, &self.encode()).map(|_| ())
    }

    /// Checks every invariant the data plane relies on; the first violation is the error.
    /// (A sender ID appears once by construction: the inventory is a map.)
    pub fn validate(&self) -> Result<(), StateError> {
        self.validate_with(Orphans::Refused)
    }

    /// `validate`, with numbers whose integration is gone refused or tolerated.
    pub fn validate_with(&self, orphans: Orphans) -> Result<(), StateError> {
        let integrations = self.check_integrations()?;
        for n in &self.numbers {
            self.check_number_in(n, &integrations, orphans)?;
        }
        Ok(())
    }

    /// `validate` for a state derived from `prev` (itself valid): the integrations are
    /// checked whole (a handful), the numbers only where the two differ (the shards they
    /// do not share), and that no integration with numbers went away from the counts. So
    /// a change costs what it touched, at a million numbers as at ten.
    pub fn validate_change(&self, prev: &State, orphans: Orphans) -> Result<(), StateError> {
        let integrations = self.check_integrations()?;
        let delta = self.numbers.delta_from(&prev.numbers);
        for n in delta.put() {
            self.check_number_in(n, &integrations, orphans)?;
        }
        if orphans == Orphans::Refused {
            if let Some(id) = self
                .numbers
                .integration_ids()
                .find(|id| !integrations.contains_key(&***id))
            {
                return Err(StateError::Invalid(format!(
                    "integration {id} does not exist but {} numbers name it",
                    self.numbers.count_of(id)
                )));
            }
        }
        Ok(())
    }

    /// Each integration's own invariants, and that no id appears twice; their statuses by id.
    fn check_integrations(
        &self,
    ) -> Result<HashMap<&str, IntegrationStatus, foldhash::fast::RandomState>, StateError> {
        let mut ids = HashMap::default();
        for i in &self.integrations {
            check_integration(i)?;
            if ids.insert(i.id.as_str(), i.status).is_some() {
                return Err(StateError::Invalid(format!(
                    "integration id {} appears twice",
                    i.id
                )));
            }
        }
        Ok(ids)
    }

    fn check_number_in(
        &self,
        n: &Number,
        integrations: &HashMap<&str, IntegrationStatus, foldhash::fast::RandomState>,
        orphans: Orphans,
    ) -> Result<(), StateError> {
        if orphans == Orphans::Refused && !integrations.contains_key(&*n.integration_id) {
            return Err(StateError::Invalid(format!(
                "number {}: integration {} does not exist",
                n.sender_id, n.integration_id
            )));
        }
        check_number(n)
    }

    /// `n` as the API shows it: `disabled` while its integration is inactive (the seed's
    /// deactivation), else its own status. Resolved here rather than written into every
    /// number, so (de)activating an integration is one record whatever its size.
    pub fn shown(&self, n: &Number) -> Number {
        let mut shown = n.clone();
        let inactive = self
            .integration(&n.integration_id)
            .is_some_and(|i| i.status == IntegrationStatus::Inactive);
        if inactive && n.status == NumberStatus::Active {
            shown.status = NumberStatus::Disabled;
        }
        shown
    }

    /// The integration with this id, if any.
    pub fn integration(&self, id: &str) -> Option<&Integration> {
        self.integrations.iter().find(|i| i.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> State {
        State {
            version: 1,
            integrations: vec![crate::fixtures::integration("int-1", "org-a")],
            numbers: vec![Number {
                queue: "support".into(),
                ..crate::fixtures::number("+15551230001")
            }]
            .into(),
        }
    }

    #[test]
    fn formats() {
        assert!(is_e164("+15551234567"));
        assert!(!is_e164("15551234567"));
        assert!(!is_e164("+0555123456"));
        assert!(!is_e164("+1555"));
        assert!(!is_e164("+1555123456789012"));
        assert!(is_short_code("12345") && is_short_code("123456"));
        assert!(!is_short_code("1234") && !is_short_code("1234567") && !is_short_code("12a45"));
        assert!(is_account_sid(&format!("AC{}", "0f".repeat(16))));
        assert!(!is_account_sid("AC123"));
    }

    #[test]
    fn validate_catches_each_invariant() {
        assert!(sample().validate().is_ok());
        let mut s = sample();
        s.integrations[0].account_sid = "ACnope".into();
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("account_sid"));
        let mut s = sample();
        s.numbers.insert(Number {
            integration_id: "int-x".into(),
            ..crate::fixtures::number("+15551230002")
        });
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("does not exist"));
        assert!(s.validate_with(Orphans::Tolerated).is_ok());
        let mut s = sample();
        s.numbers.insert(Number {
            queue: "../etc".into(),
            ..crate::fixtures::number("+15551230001")
        });
        assert!(s.validate().unwrap_err().to_string().contains("queue"));
        // Inactive with active numbers is the normal case now: they show disabled.
        let mut s = sample();
        s.integrations[0].status = IntegrationStatus::Inactive;
        assert!(s.validate().is_ok());
        let n = s.numbers.get("+15551230001").unwrap();
        assert_eq!(n.status, NumberStatus::Active);
        assert_eq!(s.shown(n).status, NumberStatus::Disabled);
        s.integrations[0].status = IntegrationStatus::Active;
        assert_eq!(s.shown(n).status, NumberStatus::Active);
    }

    #[test]
    fn validate_change_checks_what_the_change_touched() {
        let prev = sample();
        let mut next = prev.clone();
        next.integrations[0].name = "renamed".into();
        assert!(Numbers::same(&prev.numbers, &next.numbers), "a copy shares");
        assert!(next.validate_change(&prev, Orphans::Refused).is_ok());

        let mut next = prev.clone();
        next.integrations[0].status = IntegrationStatus::Inactive;
        assert!(next.validate_change(&prev, Orphans::Refused).is_ok());

        // The integration renamed away from its numbers.
        let mut next = prev.clone();
        next.integrations[0].id = "int-2".into();
        let err = next
            .validate_change(&prev, Orphans::Refused)
            .unwrap_err()
            .to_string();
        assert!(err.contains("int-1 does not exist but 1 numbers"), "{err}");
        assert!(next.validate_change(&prev, Orphans::Tolerated).is_ok());

        let mut next = prev.clone();
        let dup = next.integrations[0].clone();
        next.integrations.push(dup);
        assert!(next
            .validate_change(&prev, Orphans::Refused)
            .unwrap_err()
            .to_string()
            .contains("twice"));

        // A changed number is checked; the write did not touch `prev`.
        let mut next = prev.clone();
        next.numbers.insert(Number {
            kind: NumberType::ShortCode,
            ..crate::fixtures::number("+15551230009")
        });
        assert_eq!(prev.numbers.len(), 1);
        let err = next
            .validate_change(&prev, Orphans::Refused)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not valid for type ShortCode"), "{err}");
    }

    #[test]
    fn save_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        sample().save(&p).unwrap();
        assert_eq!(State::load(&p).unwrap(), sample());
        assert_eq!(
            State::load(&dir.path().join("missing.json")).unwrap(),
            State::default()
        );
    }

    #[test]
    fn unknown_fields_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        std::fs::write(
            &p,
            br#"{"version":1,"integrations":[],"numbers":[],"extra":1}"#,
        )
        .unwrap();
        assert!(matches!(State::load(&p), Err(StateError::Parse { .. })));
    }
}

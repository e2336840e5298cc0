//! The control-plane state: organisations' integrations and their imported numbers, as
//! stored in the state file. Validated whole before it is ever served.

use crate::model::crypto::Sealed;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

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

/// The number inventory, shared between versions of the state until a change touches a
/// number: copying a state (every admin change and read starts with one) copies a
/// pointer, and a change to integrations alone leaves the numbers, and everything built
/// from them, as they were. Writing through `DerefMut` copies the list first if shared.
#[derive(Debug, Clone, Default)]
pub struct Numbers(Arc<NumberList>);

/// The list, and what is derived from it once per version of it.
#[derive(Debug, Clone, Default)]
struct NumberList {
    list: Vec<Number>,
    /// Numbers per integration id; emptied by every write.
    counts: std::sync::OnceLock<HashMap<String, usize>>,
    /// The delta from the list this one was last compared with (the journal and the
    /// snapshot both need it for one change); emptied by every write.
    delta: std::sync::OnceLock<(std::sync::Weak<NumberList>, Arc<NumberDelta>)>,
}

impl Numbers {
    /// Whether both hold the very same list (no number changed between them).
    pub fn same(a: &Numbers, b: &Numbers) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }

    /// The delta from `prev` to this list (`NumberDelta::between`), computed once for a
    /// given `prev` however many ask, and empty at once for the very same list.
    pub fn delta_from(&self, prev: &Numbers) -> Arc<NumberDelta> {
        if Numbers::same(self, prev) {
            return Arc::default();
        }
        let compute = || Arc::new(NumberDelta::between(&prev.0.list, &self.0.list));
        let (from, delta) = self
            .0
            .delta
            .get_or_init(|| (Arc::downgrade(&prev.0), compute()));
        if std::ptr::eq(from.as_ptr(), Arc::as_ptr(&prev.0)) {
            Arc::clone(delta)
        } else {
            compute()
        }
    }

    /// How many numbers belong to `integration_id`: counted once per version of the
    /// list, so every integration view after a change that touched no number is free.
    pub fn count_of(&self, integration_id: &str) -> usize {
        let counts = self.0.counts.get_or_init(|| {
            let mut counts = HashMap::new();
            for n in &self.0.list {
                *counts.entry(n.integration_id.to_string()).or_insert(0) += 1;
            }
            counts
        });
        counts.get(integration_id).copied().unwrap_or(0)
    }
}

impl std::ops::Deref for Numbers {
    type Target = Vec<Number>;
    fn deref(&self) -> &Vec<Number> {
        &self.0.list
    }
}

impl std::ops::DerefMut for Numbers {
    fn deref_mut(&mut self) -> &mut Vec<Number> {
        let inner = Arc::make_mut(&mut self.0);
        inner.counts = std::sync::OnceLock::new();
        inner.delta = std::sync::OnceLock::new();
        &mut inner.list
    }
}

impl From<Vec<Number>> for Numbers {
    fn from(list: Vec<Number>) -> Self {
        Numbers(Arc::new(NumberList {
            list,
            counts: std::sync::OnceLock::new(),
            delta: std::sync::OnceLock::new(),
        }))
    }
}

/// How one number list became the next: what the journal stores for a change to a few
/// numbers, and what a snapshot lays over the number map it shares with the previous one.
/// Applying it to the old list gives the new one exactly, order included.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumberDelta {
    /// Sender IDs no longer in the list (or removed and appended again, edited).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    /// Numbers edited in place.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<Number>,
    /// Numbers added at the end, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub appended: Vec<Number>,
}

impl NumberDelta {
    /// The delta from `prev` to `next`, in one pass. Changes edit in place, remove, or
    /// append (what the admin API does); anything else still comes out right, only
    /// larger: an out-of-place number is removed and appended again.
    pub fn between(prev: &[Number], next: &[Number]) -> NumberDelta {
        let mut delta = NumberDelta::default();
        let (mut i, mut j) = (0, 0);
        while i < prev.len() && j < next.len() {
            if prev[i].sender_id == next[j].sender_id {
                if prev[i] != next[j] {
                    delta.changed.push(next[j].clone());
                }
                j += 1;
            } else {
                delta.removed.push(prev[i].sender_id.to_string());
            }
            i += 1;
        }
        delta
            .removed
            .extend(prev[i..].iter().map(|n| n.sender_id.to_string()));
        delta.appended.extend_from_slice(&next[j..]);
        delta
    }

    /// How many numbers it touches.
    pub fn len(&self) -> usize {
        self.removed.len() + self.changed.len() + self.appended.len()
    }

    /// True when no number changed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Turns the list the delta was taken from into the one it was taken to.
    pub fn apply(&self, list: &mut Vec<Number>) {
        if !self.removed.is_empty() {
            let removed: HashSet<&str> = self.removed.iter().map(String::as_str).collect();
            list.retain(|n| !removed.contains(&*n.sender_id));
        }
        if !self.changed.is_empty() {
            let changed: HashMap<&str, &Number> =
                self.changed.iter().map(|n| (&*n.sender_id, n)).collect();
            for n in list.iter_mut() {
                if let Some(c) = changed.get(&*n.sender_id) {
                    *n = (*c).clone();
                }
            }
        }
        list.extend_from_slice(&self.appended);
    }
}

impl<'a> IntoIterator for &'a Numbers {
    type Item = &'a Number;
    type IntoIter = std::slice::Iter<'a, Number>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.list.iter()
    }
}

impl FromIterator<Number> for Numbers {
    fn from_iter<I: IntoIterator<Item = Number>>(iter: I) -> Self {
        Numbers::from(iter.into_iter().collect::<Vec<_>>())
    }
}

impl PartialEq for Numbers {
    fn eq(&self, other: &Self) -> bool {
        Numbers::same(self, other) || self.0.list == other.0.list
    }
}

impl Serialize for Numbers {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.list.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Numbers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<Number>::deserialize(d).map(Numbers::from)
    }
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

/// One Twilio sender imported into the SMS number inventory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Number {
    /// E.164 for phone numbers (`+15551234567`), 5–6 digits for short codes.
    pub sender_id: Text,
    #[serde(rename = "type")]
    pub kind: NumberType,
    /// ISO 3166 alpha-2.
    pub country: Text,
    pub integration_id: Text,
    pub queue: Text,
    pub status: NumberStatus,
    /// Boxed: only short codes have it, and every number is copied when the list is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compliance: Option<Box<Compliance>>,
}

/// A number's text fields: copying a number (the whole list is copied when a change
/// first writes to it) bumps reference counts instead of allocating four strings.
pub type Text = Arc<str>;

/// The seed's four sender types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NumberType {
    Local,
    Mobile,
    TollFree,
    ShortCode,
}

/// Lifecycle of an inventory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NumberStatus {
    Provisioning,
    Active,
    Disabled,
}

/// A short code's required interactions (the seed's Help / Opt-out / Re-opt-in tabs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compliance {
    pub help: KeywordReply,
    pub opt_out: KeywordReply,
    pub re_opt_in: KeywordReply,
}

/// Keywords that trigger one compliance action, and the reply sent for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeywordReply {
    pub keywords: Vec<String>,
    pub message: String,
}

impl KeywordReply {
    /// Complete means at least one non-blank keyword and a non-blank message.
    pub fn is_complete(&self) -> bool {
        !self.message.trim().is_empty() && self.keywords.iter().any(|k| !k.trim().is_empty())
    }
}

impl Compliance {
    /// The seed requires all three interactions before a short code can be imported.
    pub fn is_complete(&self) -> bool {
        self.help.is_complete() && self.opt_out.is_complete() && self.re_opt_in.is_complete()
    }
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
    pub fn validate(&self) -> Result<(), StateError> {
        let bad = |m: String| Err(StateError::Invalid(m));
        let mut integrations: HashMap<&str, &Integration, foldhash::fast::RandomState> =
            HashMap::default();
        for i in &self.integrations {
            check_integration(i)?;
            if integrations.insert(&i.id, i).is_some() {
                return bad(format!("integration id {} appears twice", i.id));
            }
        }
        let mut seen: HashSet<&str, foldhash::fast::RandomState> =
            HashSet::with_capacity_and_hasher(self.numbers.len(), Default::default());
        for n in &self.numbers {
            if !seen.insert(&*n.sender_id) {
                return bad(format!("number {} appears twice", n.sender_id));
            }
            let Some(integ) = integrations.get(&*n.integration_id) else {
                return bad(format!(
                    "number {}: integration {} does not exist",
                    n.sender_id, n.integration_id
                ));
            };
            check_number(n)?;
            if integ.status == IntegrationStatus::Inactive && n.status == NumberStatus::Active {
                return bad(format!(
                    "number {} is active but its integration {} is inactive",
                    n.sender_id, integ.id
                ));
            }
        }
        Ok(())
    }

    /// `validate` for a state derived from `prev` (itself valid): when no number changed,
    /// no integration went away and none was deactivated, the numbers still hold every
    /// invariant and only the integrations are checked, so such a change costs the same
    /// at a million numbers as at ten.
    pub fn validate_change(&self, prev: &State) -> Result<(), StateError> {
        if !Numbers::same(&self.numbers, &prev.numbers) {
            return self.validate();
        }
        let mut ids: HashMap<&str, IntegrationStatus, foldhash::fast::RandomState> =
            HashMap::default();
        for i in &self.integrations {
            check_integration(i)?;
            if ids.insert(&i.id, i.status).is_some() {
                return Err(StateError::Invalid(format!(
                    "integration id {} appears twice",
                    i.id
                )));
            }
        }
        let numbers_still_hold = prev
            .integrations
            .iter()
            .all(|p| match ids.get(p.id.as_str()) {
                None => false,
                Some(IntegrationStatus::Inactive) => p.status == IntegrationStatus::Inactive,
                Some(IntegrationStatus::Active) => true,
            });
        if numbers_still_hold {
            Ok(())
        } else {
            self.validate()
        }
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
        let first = s.numbers[0].clone();
        s.numbers.push(first);
        assert!(s.validate().unwrap_err().to_string().contains("twice"));
        let mut s = sample();
        s.integrations[0].account_sid = "ACnope".into();
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("account_sid"));
        let mut s = sample();
        s.numbers[0].integration_id = "int-x".into();
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("does not exist"));
        let mut s = sample();
        s.numbers[0].queue = "../etc".into();
        assert!(s.validate().unwrap_err().to_string().contains("queue"));
        let mut s = sample();
        s.integrations[0].status = IntegrationStatus::Inactive;
        assert!(s.validate().unwrap_err().to_string().contains("inactive"));
    }

    #[test]
    fn validate_change_checks_what_an_integration_change_can_break() {
        let prev = sample();
        let mut next = prev.clone();
        next.integrations[0].name = "renamed".into();
        assert!(Numbers::same(&prev.numbers, &next.numbers), "a copy shares");
        assert!(next.validate_change(&prev).is_ok());

        let mut next = prev.clone();
        next.integrations[0].status = IntegrationStatus::Inactive;
        let err = next.validate_change(&prev).unwrap_err().to_string();
        assert!(err.contains("inactive"), "{err}");

        let mut next = prev.clone();
        next.integrations[0].id = "int-2".into();
        let err = next.validate_change(&prev).unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");

        let mut next = prev.clone();
        let dup = next.integrations[0].clone();
        next.integrations.push(dup);
        assert!(next
            .validate_change(&prev)
            .unwrap_err()
            .to_string()
            .contains("twice"));

        // A number change is validated whole, and the write did not touch `prev`.
        let mut next = prev.clone();
        let first = next.numbers[0].clone();
        next.numbers.push(first);
        assert!(!Numbers::same(&prev.numbers, &next.numbers));
        assert_eq!(prev.numbers.len(), 1);
        assert_eq!(prev.numbers.count_of("int-1"), 1);
        assert!(next
            .validate_change(&prev)
            .unwrap_err()
            .to_string()
            .contains("twice"));
        assert_eq!(
            next.numbers.count_of("int-1"),
            2,
            "the write dropped the count"
        );
        next.numbers.pop();
        assert_eq!(next.numbers.count_of("int-1"), 1);
        assert_eq!(next.numbers.count_of("int-9"), 0);
    }

    #[test]
    fn a_delta_turns_the_old_list_into_the_new_one_exactly() {
        let base = sample().numbers[0].clone();
        let num = |i: u64| Number {
            sender_id: format!("+1555{i:07}").into(),
            ..base.clone()
        };
        // A fixed pseudo-random walk of edits, removals, appends and (rarely) moves.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n.max(1)
        };
        let mut list: Vec<Number> = (0..200).map(num).collect();
        let mut fresh = 1_000;
        for _ in 0..300 {
            let mut next = list.clone();
            for _ in 0..=rnd(4) {
                let at = rnd(next.len() as u64) as usize;
                match rnd(5) {
                    0 if !next.is_empty() => {
                        next.remove(at);
                    }
                    1 if !next.is_empty() => next[at].queue = format!("q{}", rnd(9)).into(),
                    2 if !next.is_empty() => {
                        let moved = next.remove(at);
                        next.insert(rnd(next.len() as u64) as usize, moved);
                    }
                    _ => {
                        fresh += 1;
                        next.push(num(fresh));
                    }
                }
            }
            let delta = NumberDelta::between(&list, &next);
            let mut replayed = list.clone();
            delta.apply(&mut replayed);
            assert_eq!(replayed, next);
            list = next;
        }
        // delta_from is computed once per (list, prev) and dropped by a write.
        let prev = Numbers::from(list.clone());
        let mut next = prev.clone();
        next.push(num(9_999));
        let (a, b) = (next.delta_from(&prev), next.delta_from(&prev));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.appended.len(), 1);
        let other = Numbers::from(list[1..].to_vec());
        let mut replayed = other.to_vec();
        next.delta_from(&other).apply(&mut replayed);
        assert_eq!(
            replayed, *next,
            "another prev: computed for it, not the cached one"
        );
        next.pop();
        assert!(next.delta_from(&prev).is_empty());
        let same = NumberDelta::between(&list, &list);
        assert!(same.is_empty());
        let mut edited = list.clone();
        edited[3].status = NumberStatus::Disabled;
        let one = NumberDelta::between(&list, &edited);
        assert_eq!((one.changed.len(), one.len()), (1, 1));
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

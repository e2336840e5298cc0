//! The bucket's records, pure: one JetStream KV key per record (`integration.<id>`,
//! `number.<sender id>`, escaped to KV key characters), the record codec, the instance's
//! `Mirror` of the bucket and the tolerant view served from it, and the ordered write plan
//! of a change. No I/O: the backend talks to NATS, the store decides.
//!
//! Keys: each id is escaped (`escape`) so that only `[A-Za-z0-9-]` stays as is and any
//! other byte becomes `_XX` (`+` → `_2B`): KV keys allow neither `+` nor `%`. Values: the
//! state file's JSON of that one record; Auth Tokens stay sealed under the fleet's master
//! key.

use crate::model::state::{
    check_integration, check_number, Integration, IntegrationStatus, Number, NumberStatus, Numbers,
    State,
};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};

/// Key prefix of integration records.
pub(crate) const INTEGRATION_PREFIX: &str = "integration.";
/// Key prefix of number records.
pub(crate) const NUMBER_PREFIX: &str = "number.";

/// Escapes an id or sender ID into one KV key token: `[A-Za-z0-9-]` kept, any other byte `_XX`.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("_{b:02X}"));
        }
    }
    out
}

/// Reverses `escape`; `None` for anything `escape` cannot have produced.
pub(crate) fn unescape(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'_' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b if b.is_ascii_alphanumeric() || b == b'-' => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// The key of an integration record.
pub(crate) fn integration_key(id: &str) -> String {
    format!("{INTEGRATION_PREFIX}{}", escape(id))
}

/// The key of a number record.
pub(crate) fn number_key(sender_id: &str) -> String {
    format!("{NUMBER_PREFIX}{}", escape(sender_id))
}

/// What a key names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyName {
    Integration(String),
    Number(String),
}

fn key_name(key: &str) -> Option<KeyName> {
    if let Some(rest) = key.strip_prefix(INTEGRATION_PREFIX) {
        return unescape(rest).map(KeyName::Integration);
    }
    key.strip_prefix(NUMBER_PREFIX)
        .and_then(unescape)
        .map(KeyName::Number)
}

/// Why one KV entry was refused; the key keeps its previous record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Not `integration.<escaped>` or `number.<escaped>`.
    #[error("key {0:?} names no record of this service")]
    UnknownKey(String),
    /// Not the JSON of a record (message redacted of quoted values).
    #[error("key {key}: not valid JSON for the record: {reason}")]
    Json { key: String, reason: String },
    /// The record's id is not the one its key names.
    #[error("key {0}: the record's id does not match the key")]
    KeyMismatch(String),
    /// The record breaks an invariant of its own (account SID, sender ID, queue, compliance).
    #[error("key {key}: {reason}")]
    Invalid { key: String, reason: String },
}

impl RecordError {
    /// The machine-readable code for logs and audit lines.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            RecordError::UnknownKey(_) => "unknown_key",
            RecordError::Json { .. } => "parse_error",
            RecordError::KeyMismatch(_) => "key_mismatch",
            RecordError::Invalid { .. } => "state_invalid",
        }
    }
}

/// One entry of the bucket as seen by a watch or a read: `None` value = deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    /// The KV key.
    pub(crate) key: String,
    /// The entry's revision (its stream sequence).
    pub(crate) revision: u64,
    /// The value of a put; `None` for a delete or purge.
    pub(crate) value: Option<Bytes>,
}

fn parse_json<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, RecordError> {
    serde_json::from_slice(value).map_err(|e| RecordError::Json {
        key: key.to_string(),
        reason: crate::control::audit::redact_quoted(&e.to_string()),
    })
}

fn invalid(key: &str, e: crate::model::state::StateError) -> RecordError {
    RecordError::Invalid {
        key: key.to_string(),
        reason: e.to_string(),
    }
}

/// The bucket as this instance knows it: the last accepted record of every key, and the
/// last revision of every key (refused values and deletes included) for compare-and-set.
#[derive(Debug, Clone, Default)]
pub(crate) struct Mirror {
    integrations: BTreeMap<String, Integration>,
    /// Every accepted number record: the served state's number map itself (shared).
    numbers: Numbers,
    revisions: HashMap<String, u64>,
    last_revision: u64,
}

/// What the served view does not serve because concurrent writers raced across records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tolerated {
    /// Numbers whose integration is gone: not served (webhooks answer as unknown numbers).
    pub(crate) orphan_numbers: usize,
}

impl Mirror {
    /// The revision a compare-and-set on `key` expects; 0 means "never written".
    pub(crate) fn revision(&self, key: &str) -> u64 {
        self.revisions.get(key).copied().unwrap_or(0)
    }

    /// The highest revision applied: the served state's version.
    pub(crate) fn last_revision(&self) -> u64 {
        self.last_revision
    }

    /// Applies one entry. `Ok(false)`: already known (an echo of our own write, or older).
    /// `Err`: the value is refused; its revision is still recorded so an admin can overwrite it.
    pub(crate) fn apply(&mut self, change: &Change) -> Result<bool, RecordError> {
        if self.revision(&change.key) >= change.revision {
            return Ok(false);
        }
        self.revisions.insert(change.key.clone(), change.revision);
        self.last_revision = self.last_revision.max(change.revision);
        let name =
            key_name(&change.key).ok_or_else(|| RecordError::UnknownKey(change.key.clone()))?;
        let Some(value) = &change.value else {
            match name {
                KeyName::Integration(id) => {
                    self.integrations.remove(&id);
                }
                KeyName::Number(sid) => {
                    self.numbers.remove(&sid);
                }
            }
            return Ok(true);
        };
        match name {
            KeyName::Integration(id) => {
                let i: Integration = parse_json(&change.key, value)?;
                if i.id != id {
                    return Err(RecordError::KeyMismatch(change.key.clone()));
                }
                check_integration(&i).map_err(|e| invalid(&change.key, e))?;
                self.integrations.insert(id, i);
            }
            KeyName::Number(sid) => {
                let n: Number = parse_json(&change.key, value)?;
                if *n.sender_id != *sid {
                    return Err(RecordError::KeyMismatch(change.key.clone()));
                }
                check_number(&n).map_err(|e| invalid(&change.key, e))?;
                self.numbers.insert(n);
            }
        }
        Ok(true)
    }

    /// The state to serve: every record. A number whose integration is gone (counted from
    /// the inventory's per-integration counts, not a walk) stays in the map but is not
    /// served: the snapshot finds no integration for it, and the API shows it to no org.
    /// An active number of an inactive integration is served disabled, as everywhere.
    pub(crate) fn state(&self) -> (State, Tolerated) {
        let orphan_numbers = self
            .numbers
            .integration_ids()
            .filter(|id| !self.integrations.contains_key(&***id))
            .map(|id| self.numbers.count_of(id))
            .sum();
        let state = State {
            version: self.last_revision,
            integrations: self.integrations.values().cloned().collect(),
            numbers: self.numbers.clone(),
        };
        (state, Tolerated { orphan_numbers })
    }
}

/// One write of a change: put a record's JSON, or delete a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    /// Create or replace the record under `key` with this JSON.
    Put { key: String, value: Bytes },
    /// Delete `key`.
    Delete { key: String },
}

impl Op {
    /// The key the op writes.
    pub(crate) fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }
}

fn put<T: serde::Serialize>(key: String, record: &T) -> Op {
    let value = serde_json::to_vec(record).expect("records serialise");
    Op::Put {
        key,
        value: Bytes::from(value),
    }
}

/// The writes that turn `old` into `new`, ordered so that every prefix leaves a valid state
/// (if `old` and `new` are): integrations created or ending active first, then numbers
/// deleted or ending not active, then numbers ending active, then integrations ending
/// inactive, then integrations deleted. So a reactivation activates the integration before
/// the numbers it re-enables, and a delete removes the numbers before their integration;
/// a deactivation is the integration's record alone. The numbers come from the delta
/// between the two inventories, so a plan costs what the change touched.
pub(crate) fn plan(old: &State, new: &State) -> Vec<Op> {
    let old_i: HashMap<&str, &Integration> = old
        .integrations
        .iter()
        .map(|i| (i.id.as_str(), i))
        .collect();
    let new_i: HashMap<&str, &Integration> = new
        .integrations
        .iter()
        .map(|i| (i.id.as_str(), i))
        .collect();
    let delta = new.numbers.delta_from(&old.numbers);
    let changed_i: Vec<&Integration> = new
        .integrations
        .iter()
        .filter(|i| old_i.get(i.id.as_str()) != Some(i))
        .collect();
    let changed_n: Vec<&Number> = delta.put().collect();
    let ends_active = |n: &&&Number| n.status == NumberStatus::Active;
    let is_new = |i: &&&Integration| !old_i.contains_key(i.id.as_str());
    let mut ops = Vec::new();
    ops.extend(
        changed_i
            .iter()
            .filter(|i| is_new(i) || i.status == IntegrationStatus::Active)
            .map(|i| put(integration_key(&i.id), *i)),
    );
    ops.extend(delta.removed.iter().map(|id| Op::Delete {
        key: number_key(id),
    }));
    ops.extend(
        changed_n
            .iter()
            .filter(|n| !ends_active(n))
            .map(|n| put(number_key(&n.sender_id), *n)),
    );
    ops.extend(
        changed_n
            .iter()
            .filter(ends_active)
            .map(|n| put(number_key(&n.sender_id), *n)),
    );
    ops.extend(
        changed_i
            .iter()
            .filter(|i| !is_new(i) && i.status == IntegrationStatus::Inactive)
            .map(|i| put(integration_key(&i.id), *i)),
    );
    ops.extend(
        old.integrations
            .iter()
            .filter(|i| !new_i.contains_key(i.id.as_str()))
            .map(|i| Op::Delete {
                key: integration_key(&i.id),
            }),
    );
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::state::NumberType;

    fn integration(id: &str, status: IntegrationStatus) -> Integration {
        Integration {
            status,
            ..crate::fixtures::integration(id, "org-a")
        }
    }

    fn number(sid: &str, integration: &str, status: NumberStatus) -> Number {
        Number {
            sender_id: sid.into(),
            kind: NumberType::Local,
            country: "US".into(),
            integration_id: integration.into(),
            queue: "q".into(),
            status,
            compliance: None,
        }
    }

    #[test]
    fn keys_escape_reversibly_into_kv_key_characters() {
        assert_eq!(number_key("+14155550100"), "number._2B14155550100");
        assert_eq!(number_key("12345"), "number.12345");
        assert_eq!(integration_key("int-0a1b"), "integration.int-0a1b");
        assert_eq!(escape("a.b_c d"), "a_2Eb_5Fc_20d");
        for s in ["+14155550100", "int-0a", "a.b_c d/é", "_", ""] {
            assert_eq!(unescape(&escape(s)).as_deref(), Some(s));
            assert!(escape(s)
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        }
        for bad in ["a+b", "_2", "_zz", "a.b", "%2B"] {
            assert_eq!(unescape(bad), None, "{bad}");
        }
        assert_eq!(
            key_name("number._2B1555"),
            Some(KeyName::Number("+1555".into()))
        );
        assert_eq!(key_name("meta.x"), None);
    }

    fn put_change(key: String, revision: u64, json: &impl serde::Serialize) -> Change {
        Change {
            key,
            revision,
            value: Some(Bytes::from(serde_json::to_vec(json).unwrap())),
        }
    }

    #[test]
    fn mirror_applies_in_revision_order_and_refuses_bad_records() {
        let mut m = Mirror::default();
        let i = integration("int-1", IntegrationStatus::Active);
        assert_eq!(
            m.apply(&put_change(integration_key("int-1"), 1, &i)),
            Ok(true)
        );
        assert_eq!(
            m.apply(&put_change(integration_key("int-1"), 1, &i)),
            Ok(false),
            "echo"
        );
        let n = number("+14155550100", "int-1", NumberStatus::Active);
        assert_eq!(
            m.apply(&put_change(number_key(&n.sender_id), 2, &n)),
            Ok(true)
        );
        let (s, t) = m.state();
        assert_eq!(
            (s.version, s.numbers.len(), t),
            (2, 1, Tolerated::default())
        );
        assert!(s.validate().is_ok());

        // A record under the wrong key, broken JSON, a bad SID: refused, revision kept.
        let err = m
            .apply(&put_change(integration_key("int-2"), 3, &i))
            .unwrap_err();
        assert_eq!(err.code(), "key_mismatch");
        let broken = Change {
            key: integration_key("int-1"),
            revision: 4,
            value: Some(Bytes::from_static(b"{\"id\": \"secret\"")),
        };
        let err = m.apply(&broken).unwrap_err();
        assert_eq!(err.code(), "parse_error");
        assert!(!err.to_string().contains("secret"));
        assert_eq!(m.revision(&integration_key("int-1")), 4);
        assert_eq!(m.state().0.integrations[0], i, "previous record kept");
        let mut bad = i.clone();
        bad.account_sid = "AC1".into();
        let err = m
            .apply(&put_change(integration_key("int-1"), 5, &bad))
            .unwrap_err();
        assert_eq!(err.code(), "state_invalid");
        assert_eq!(
            m.apply(&put_change("other.x".into(), 6, &i))
                .unwrap_err()
                .code(),
            "unknown_key"
        );

        // A delete removes the record and remembers the marker's revision.
        let del = Change {
            key: number_key("+14155550100"),
            revision: 7,
            value: None,
        };
        assert_eq!(m.apply(&del), Ok(true));
        assert!(m.state().0.numbers.is_empty());
        assert_eq!(m.revision(&number_key("+14155550100")), 7);
    }

    #[test]
    fn served_view_tolerates_cross_record_races() {
        let mut m = Mirror::default();
        let inactive = integration("int-1", IntegrationStatus::Inactive);
        m.apply(&put_change(integration_key("int-1"), 1, &inactive))
            .unwrap();
        let racing = number("+14155550100", "int-1", NumberStatus::Active);
        m.apply(&put_change(number_key(&racing.sender_id), 2, &racing))
            .unwrap();
        let orphan = number("+14155550101", "int-gone", NumberStatus::Active);
        m.apply(&put_change(number_key(&orphan.sender_id), 3, &orphan))
            .unwrap();
        let (s, t) = m.state();
        assert_eq!(t, Tolerated { orphan_numbers: 1 });
        // The orphan stays in the map (no walk to drop it) but no org sees or serves it.
        assert_eq!(s.numbers.len(), 2);
        assert!(s.validate().is_err());
        assert!(s
            .validate_with(crate::model::state::Orphans::Tolerated)
            .is_ok());
        let racing = s.numbers.get("+14155550100").unwrap();
        assert_eq!(s.shown(racing).status, NumberStatus::Disabled);
    }

    fn state(integrations: Vec<Integration>, numbers: Vec<Number>) -> State {
        State {
            version: 0,
            integrations,
            numbers: numbers.into(),
        }
    }

    /// Applies the plan's writes one by one and checks every intermediate state.
    fn assert_every_prefix_valid(old: &State, new: &State) -> Vec<String> {
        let ops = plan(old, new);
        let mut m = Mirror::default();
        let mut rev = 0;
        for i in &old.integrations {
            rev += 1;
            m.apply(&put_change(integration_key(&i.id), rev, i))
                .unwrap();
        }
        for n in &old.numbers {
            rev += 1;
            m.apply(&put_change(number_key(&n.sender_id), rev, n))
                .unwrap();
        }
        for op in &ops {
            rev += 1;
            let value = match op {
                Op::Put { value, .. } => Some(value.clone()),
                Op::Delete { .. } => None,
            };
            let change = Change {
                key: op.key().into(),
                revision: rev,
                value,
            };
            m.apply(&change).unwrap();
            let (s, t) = m.state();
            assert_eq!(t, Tolerated::default(), "after {}", op.key());
            s.validate().unwrap();
        }
        let (mut s, _) = m.state();
        s.version = new.version;
        let mut want = new.clone();
        want.integrations.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(s, want);
        ops.iter().map(|o| o.key().to_string()).collect()
    }

    #[test]
    fn plans_keep_every_intermediate_state_valid() {
        let active = integration("int-1", IntegrationStatus::Active);
        let inactive = integration("int-1", IntegrationStatus::Inactive);
        let on = |s| number(s, "int-1", NumberStatus::Active);
        let off = |s| number(s, "int-1", NumberStatus::Disabled);
        let a = "+14155550100";
        let b = "+14155550101";
        let live = state(vec![active.clone()], vec![on(a), on(b)]);
        let dead = state(vec![inactive.clone()], vec![on(a), on(b)]);
        let keys = assert_every_prefix_valid(&live, &dead);
        assert_eq!(
            keys,
            vec![integration_key("int-1")],
            "deactivate: one record"
        );
        let keys = assert_every_prefix_valid(&dead, &live);
        assert_eq!(
            keys,
            vec![integration_key("int-1")],
            "reactivate: one record"
        );
        // Numbers an earlier version's cascade disabled: re-enabled after the integration.
        let legacy = state(vec![inactive.clone()], vec![off(a), off(b)]);
        let keys = assert_every_prefix_valid(&legacy, &live);
        assert_eq!(
            keys[0],
            integration_key("int-1"),
            "reactivate: integration first"
        );
        assert_eq!(keys.len(), 3);
        let keys = assert_every_prefix_valid(&live, &State::default());
        assert_eq!(
            keys.last().unwrap(),
            &integration_key("int-1"),
            "delete: numbers first"
        );
        let keys = assert_every_prefix_valid(&State::default(), &live);
        assert_eq!(
            keys[0],
            integration_key("int-1"),
            "create: integration first"
        );
        let created_inactive = state(vec![inactive], vec![off(a)]);
        assert_every_prefix_valid(&State::default(), &created_inactive);
        let renamed = {
            let mut s = live.clone();
            s.integrations[0].name = "x".into();
            s
        };
        assert_eq!(
            assert_every_prefix_valid(&live, &renamed),
            vec![integration_key("int-1")]
        );
        assert!(plan(&live, &live).is_empty());
    }
}

//! The number records (`Number`, its inline `SenderId` and `Country`) and the inventory
//! that holds them as a persistent map. Numbers are spread by hash over 4,096
//! shards, each an `Arc`'d hash table copied on write: copying the inventory (every
//! change starts with a copy) copies one pointer, a change to k numbers copies at most k
//! shards of about n / 4,096 numbers each, and two versions are compared shard by shard,
//! skipping every shard they still share. So at a million numbers an import, a delete or
//! the delta a journal line and a snapshot need cost the same as at a thousand, and every
//! version of the state, the snapshot serving it and the one before all share one copy
//! of each unchanged number. What the admin API asks of the whole list (numbers and
//! queues per integration) is counted as numbers come and go, and the counts hold the
//! one shared copy of each integration id and queue name (interned).

use serde::{Deserialize, Serialize};
use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash, Hasher as _};
use std::sync::{Arc, OnceLock};

/// One Twilio sender imported into the SMS number inventory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Number {
    /// E.164 for phone numbers (`+15551234567`), 5–6 digits for short codes.
    pub sender_id: SenderId,
    #[serde(rename = "type")]
    pub kind: NumberType,
    /// ISO 3166 alpha-2.
    pub country: Country,
    pub integration_id: Text,
    pub queue: Text,
    /// The number's own status; while its integration is inactive it shows (and is
    /// served) as `disabled` whatever this says (`State::shown`).
    pub status: NumberStatus,
    /// Shared: only short codes have it, and a number is copied with its shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compliance: Option<Arc<Compliance>>,
}

/// A number's integration id and queue: one shared copy per name in the inventory
/// (`Numbers` interns them), so copying a number bumps reference counts.
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

/// log2 of the shard count: at a million numbers a shard holds about 244.
const SHARD_BITS: u32 = 12;
const SHARDS: usize = 1 << SHARD_BITS;

/// A sender ID held inline (E.164 is at most 16 bytes, a short code 6): no allocation,
/// no pointer to follow on a lookup, and 16 bytes to hash. Shorter IDs are padded with
/// NUL bytes, so the byte order is the string order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SenderId([u8; SenderId::MAX_LEN]);

impl SenderId {
    /// The longest sender ID the inventory holds, in bytes.
    pub const MAX_LEN: usize = 16;

    /// `s` as a sender ID; `None` when empty, longer than `MAX_LEN` or holding a NUL
    /// (no valid sender ID is).
    pub fn new(s: &str) -> Option<SenderId> {
        let b = s.as_bytes();
        if b.is_empty() || b.len() > Self::MAX_LEN || b.contains(&0) {
            return None;
        }
        let mut id = [0u8; Self::MAX_LEN];
        id[..b.len()].copy_from_slice(b);
        Some(SenderId(id))
    }

    /// The sender ID as text.
    pub fn as_str(&self) -> &str {
        let len = self.0.iter().position(|&b| b == 0).unwrap_or(Self::MAX_LEN);
        // Built from a whole `&str` and never cut, so always UTF-8.
        std::str::from_utf8(&self.0[..len]).unwrap_or_default()
    }
}

impl std::ops::Deref for SenderId {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

/// For literals in tests and tools; input from outside goes through `SenderId::new`.
impl From<&str> for SenderId {
    fn from(s: &str) -> SenderId {
        SenderId::new(s).unwrap_or_else(|| panic!("{s:?} is not a sender ID"))
    }
}

/// For literals in tests and tools; input from outside goes through `SenderId::new`.
impl From<String> for SenderId {
    fn from(s: String) -> SenderId {
        SenderId::from(s.as_str())
    }
}

impl std::fmt::Display for SenderId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for SenderId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq<str> for SenderId {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl Serialize for SenderId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for SenderId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        SenderId::new(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "sender_id {s:?} must be 1-{} bytes (E.164 or a short code)",
                SenderId::MAX_LEN
            ))
        })
    }
}

/// An ISO 3166 alpha-2 country, held inline.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Country([u8; 2]);

impl Country {
    /// Two ASCII letters, upper-cased; `None` otherwise.
    pub fn new(s: &str) -> Option<Country> {
        match s.as_bytes() {
            [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                Some(Country([a.to_ascii_uppercase(), b.to_ascii_uppercase()]))
            }
            _ => None,
        }
    }

    /// The two letters.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::ops::Deref for Country {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

/// For literals in tests and tools; input from outside goes through `Country::new`.
impl From<&str> for Country {
    fn from(s: &str) -> Country {
        Country::new(s).unwrap_or_else(|| panic!("{s:?} is not an ISO 3166 alpha-2 country"))
    }
}

impl std::fmt::Debug for Country {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Serialize for Country {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Country {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Country::new(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "country {s:?} must be an ISO 3166 alpha-2 code (two letters)"
            ))
        })
    }
}

/// One hash for every inventory in the process (a seed drawn at start), so that two
/// versions put a number in the same shard and can be compared shard by shard. Keys are
/// only ever inserted by the control plane, so a fast seeded hash is enough.
#[derive(Clone, Copy, Default)]
pub struct Hasher;

impl BuildHasher for Hasher {
    type Hasher = foldhash::fast::FoldHasher<'static>;
    fn build_hasher(&self) -> Self::Hasher {
        static SEED: OnceLock<foldhash::fast::FixedState> = OnceLock::new();
        SEED.get_or_init(|| {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u8(0);
            foldhash::fast::FixedState::with_seed(h.finish())
        })
        .build_hasher()
    }
}

/// A number in a shard: hashed and compared by its sender ID alone.
#[derive(Clone)]
struct Entry(Number);

impl Hash for Entry {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.0.sender_id.hash(h)
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.0.sender_id == other.0.sender_id
    }
}

impl Eq for Entry {}

impl Borrow<SenderId> for Entry {
    fn borrow(&self) -> &SenderId {
        &self.0.sender_id
    }
}

type Shard = HashSet<Entry, Hasher>;

/// Which shard holds `id`: bits the shard's own table uses neither for its bucket (low
/// bits) nor for its tags (top 7), so numbers spread evenly inside a shard too.
fn shard_of(id: &SenderId) -> usize {
    ((Hasher.hash_one(id) >> 32) as usize) & (SHARDS - 1)
}

/// How one integration uses the inventory: what the admin API shows and checks without
/// walking the list, and the one shared copy of its id and queue names.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IntegrationUse {
    /// Numbers of the integration.
    pub numbers: usize,
    /// Of those, numbers whose own status is `disabled`.
    pub disabled: usize,
    /// Queue names in use, each with how many numbers route to it.
    queues: Vec<(Text, usize)>,
}

impl IntegrationUse {
    /// The queue names the integration's numbers route to.
    pub fn queues(&self) -> impl Iterator<Item = &Text> {
        self.queues.iter().map(|(q, _)| q)
    }
}

/// The number inventory: a persistent map from sender ID to number (see the module doc).
#[derive(Clone, Default)]
pub struct Numbers {
    /// `None` until the first number: an empty inventory allocates nothing.
    shards: Option<Arc<Vec<Option<Arc<Shard>>>>>,
    len: usize,
    uses: Arc<HashMap<Text, Arc<IntegrationUse>, Hasher>>,
}

/// How one inventory became the next: what the journal stores for a change to a few
/// numbers, what the KV store writes, and what a snapshot and the validation look at.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumberDelta {
    /// Sender IDs no longer in the inventory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<SenderId>,
    /// Numbers whose record changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<Number>,
    /// Numbers new to the inventory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub appended: Vec<Number>,
}

impl NumberDelta {
    /// How many numbers it touches.
    pub fn len(&self) -> usize {
        self.removed.len() + self.changed.len() + self.appended.len()
    }

    /// True when no number changed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every number the delta puts (changed, then new).
    pub fn put(&self) -> impl Iterator<Item = &Number> {
        self.changed.iter().chain(&self.appended)
    }

    /// Turns the inventory the delta was taken from into the one it was taken to.
    pub fn apply(&self, numbers: &mut Numbers) {
        for id in &self.removed {
            numbers.remove_id(id);
        }
        for n in self.put() {
            numbers.insert(n.clone());
        }
    }
}

impl Numbers {
    /// Whether both are the very same version (no number changed between them).
    pub fn same(a: &Numbers, b: &Numbers) -> bool {
        match (&a.shards, &b.shards) {
            (Some(x), Some(y)) => Arc::ptr_eq(x, y),
            (None, None) => true,
            _ => false,
        }
    }

    /// How many numbers there are.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The number with this sender ID.
    pub fn get(&self, sender_id: &str) -> Option<&Number> {
        self.get_id(&SenderId::new(sender_id)?)
    }

    /// The number with this sender ID: one hash, one shard, one probe.
    pub fn get_id(&self, id: &SenderId) -> Option<&Number> {
        let shard = self.shards.as_ref()?[shard_of(id)].as_ref()?;
        shard.get(id).map(|e| &e.0)
    }

    /// Whether the inventory holds this sender ID.
    pub fn contains(&self, sender_id: &str) -> bool {
        self.get(sender_id).is_some()
    }

    /// Every number, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Number> + '_ {
        self.shards
            .iter()
            .flat_map(|s| s.iter())
            .flatten()
            .flat_map(|shard| shard.iter().map(|e| &e.0))
    }

    /// Every number, by sender ID (the order the state file and the API list them in).
    pub fn sorted(&self) -> Vec<&Number> {
        let mut all: Vec<&Number> = self.iter().collect();
        all.sort_unstable_by_key(|n| n.sender_id);
        all
    }

    /// How `integration_id` uses the inventory, if any number belongs to it.
    pub fn use_of(&self, integration_id: &str) -> Option<&IntegrationUse> {
        self.uses.get(integration_id).map(|u| &**u)
    }

    /// How many numbers belong to `integration_id`.
    pub fn count_of(&self, integration_id: &str) -> usize {
        self.use_of(integration_id).map_or(0, |u| u.numbers)
    }

    /// The integration ids that have numbers.
    pub fn integration_ids(&self) -> impl Iterator<Item = &Text> {
        self.uses.keys()
    }

    /// Adds `n`, or replaces the number with its sender ID; returns the one replaced.
    pub fn insert(&mut self, mut n: Number) -> Option<Number> {
        self.intern(&mut n);
        self.count(&n, true);
        let id = n.sender_id;
        let old = self.shard_mut(&id).replace(Entry(n)).map(|e| e.0);
        match &old {
            Some(o) => self.count(o, false),
            None => self.len += 1,
        }
        old
    }

    /// Removes the number with this sender ID; returns it.
    pub fn remove(&mut self, sender_id: &str) -> Option<Number> {
        self.remove_id(&SenderId::new(sender_id)?)
    }

    /// Removes the number with this sender ID; returns it.
    pub fn remove_id(&mut self, id: &SenderId) -> Option<Number> {
        self.get_id(id)?;
        let old = self.shard_mut(id).take(id)?.0;
        self.len -= 1;
        self.count(&old, false);
        Some(old)
    }

    /// Keeps only the numbers `keep` says yes to (a walk of every number).
    pub fn retain(&mut self, mut keep: impl FnMut(&Number) -> bool) {
        let gone: Vec<SenderId> = self
            .iter()
            .filter(|n| !keep(n))
            .map(|n| n.sender_id)
            .collect();
        for id in &gone {
            self.remove_id(id);
        }
    }

    /// Changes every number `pick` says yes to with `edit` (a walk of every number; the
    /// sender ID must stay as it is).
    pub fn edit_where(&mut self, pick: impl Fn(&Number) -> bool, edit: impl Fn(&mut Number)) {
        let picked: Vec<Number> = self.iter().filter(|n| pick(n)).cloned().collect();
        for mut n in picked {
            let id = n.sender_id;
            edit(&mut n);
            debug_assert_eq!(id, n.sender_id, "edit_where must not change a sender ID");
            self.insert(n);
        }
    }

    /// The delta from `prev` to this version: only the shards the two do not share are
    /// compared, so after a change made on a copy of `prev` it costs what the change
    /// touched. Each list is sorted by sender ID.
    pub fn delta_from(&self, prev: &Numbers) -> NumberDelta {
        let mut delta = NumberDelta::default();
        if Numbers::same(self, prev) {
            return delta;
        }
        let empty = Shard::default();
        for i in 0..SHARDS {
            let (a, b) = (prev.shard(i), self.shard(i));
            if let (Some(a), Some(b)) = (a, b) {
                if Arc::ptr_eq(a, b) {
                    continue;
                }
            }
            let (a, b) = (a.map_or(&empty, |s| &**s), b.map_or(&empty, |s| &**s));
            for e in b {
                match a.get(&e.0.sender_id) {
                    None => delta.appended.push(e.0.clone()),
                    Some(o) if o.0 != e.0 => delta.changed.push(e.0.clone()),
                    Some(_) => {}
                }
            }
            delta.removed.extend(
                a.iter()
                    .filter(|e| !b.contains(&e.0.sender_id))
                    .map(|e| e.0.sender_id),
            );
        }
        delta.removed.sort_unstable();
        delta.changed.sort_unstable_by_key(|n| n.sender_id);
        delta.appended.sort_unstable_by_key(|n| n.sender_id);
        delta
    }

    fn shard(&self, i: usize) -> Option<&Arc<Shard>> {
        self.shards.as_ref()?[i].as_ref()
    }

    /// The shard of `id`, copied first if another version shares it.
    fn shard_mut(&mut self, id: &SenderId) -> &mut Shard {
        let shards = self
            .shards
            .get_or_insert_with(|| Arc::new(vec![None; SHARDS]));
        let slot = &mut Arc::make_mut(shards)[shard_of(id)];
        Arc::make_mut(slot.get_or_insert_with(Arc::default))
    }

    /// Points `n`'s integration id and queue at the copies already held, if any.
    fn intern(&self, n: &mut Number) {
        let Some((id, u)) = self.uses.get_key_value(&*n.integration_id) else {
            return;
        };
        n.integration_id = Text::clone(id);
        if let Some((q, _)) = u.queues.iter().find(|(q, _)| **q == *n.queue) {
            n.queue = Text::clone(q);
        }
    }

    /// Counts `n` in (`add`) or out of its integration's use.
    fn count(&mut self, n: &Number, add: bool) {
        let uses = Arc::make_mut(&mut self.uses);
        let u = Arc::make_mut(uses.entry(Text::clone(&n.integration_id)).or_default());
        let step = |c: &mut usize| {
            if add {
                *c += 1
            } else {
                *c -= 1
            }
        };
        step(&mut u.numbers);
        if n.status == NumberStatus::Disabled {
            step(&mut u.disabled);
        }
        match u.queues.iter().position(|(q, _)| **q == *n.queue) {
            Some(at) => {
                step(&mut u.queues[at].1);
                if u.queues[at].1 == 0 {
                    u.queues.swap_remove(at);
                }
            }
            None => u.queues.push((Text::clone(&n.queue), 1)),
        }
        if u.numbers == 0 {
            uses.remove(&*n.integration_id);
        }
    }
}

impl<'a> IntoIterator for &'a Numbers {
    type Item = &'a Number;
    type IntoIter = Box<dyn Iterator<Item = &'a Number> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl std::fmt::Debug for Numbers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.sorted()).finish()
    }
}

impl PartialEq for Numbers {
    fn eq(&self, other: &Self) -> bool {
        Numbers::same(self, other)
            || (self.len == other.len && self.iter().all(|n| other.get_id(&n.sender_id) == Some(n)))
    }
}

impl FromIterator<Number> for Numbers {
    fn from_iter<I: IntoIterator<Item = Number>>(iter: I) -> Self {
        let mut numbers = Numbers::default();
        numbers.extend(iter);
        numbers
    }
}

impl Extend<Number> for Numbers {
    fn extend<I: IntoIterator<Item = Number>>(&mut self, iter: I) {
        for n in iter {
            self.insert(n);
        }
    }
}

impl From<Vec<Number>> for Numbers {
    fn from(list: Vec<Number>) -> Self {
        list.into_iter().collect()
    }
}

impl Serialize for Numbers {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.sorted())
    }
}

impl<'de> Deserialize<'de> for Numbers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct List;
        impl<'de> serde::de::Visitor<'de> for List {
            type Value = Numbers;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of numbers")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Numbers, A::Error> {
                let mut numbers = Numbers::default();
                while let Some(n) = seq.next_element::<Number>()? {
                    let id = n.sender_id;
                    if numbers.insert(n).is_some() {
                        return Err(serde::de::Error::custom(format!(
                            "number {id} appears twice"
                        )));
                    }
                }
                Ok(numbers)
            }
        }
        d.deserialize_seq(List)
    }
}

#[cfg(test)]
mod tests {
    use super::NumberType;
    use super::*;

    fn num(i: u64) -> Number {
        Number {
            sender_id: format!("+1555{i:07}").into(),
            kind: NumberType::Mobile,
            country: "US".into(),
            integration_id: format!("int-{}", i % 3).into(),
            queue: format!("q{}", i % 5).into(),
            status: NumberStatus::Active,
            compliance: None,
        }
    }

    #[test]
    fn sender_ids_and_countries_hold_inline_what_is_valid() {
        let id = SenderId::new("+155512345678901").unwrap();
        assert_eq!(
            (&*id, id.to_string()),
            ("+155512345678901", "+155512345678901".into())
        );
        assert!(SenderId::new("+1555123456789012").is_none(), "17 bytes");
        assert!(SenderId::new("").is_none() && SenderId::new("1\0").is_none());
        assert!(
            SenderId::from("12345") < SenderId::from("123456"),
            "string order"
        );
        assert!(
            SenderId::from("+1999") < SenderId::from("+2"),
            "string order"
        );
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"+155512345678901\"");
        let err = serde_json::from_str::<SenderId>("\"+15551234567890123\"").unwrap_err();
        assert!(err.to_string().contains("1-16 bytes"), "{err}");
        assert_eq!(&*Country::new("us").unwrap(), "US");
        assert!(Country::new("USA").is_none() && Country::new("U1").is_none());
        assert_eq!(
            std::mem::size_of::<Number>(),
            64,
            "a number's record stays compact"
        );
    }

    #[test]
    fn a_change_copies_only_the_shards_it_touches_and_shares_the_rest() {
        let base: Numbers = (0..20_000).map(num).collect();
        let mut next = base.clone();
        assert!(Numbers::same(&base, &next));
        next.insert(Number {
            queue: "moved".into(),
            ..num(7)
        });
        next.remove("+15550000008");
        next.insert(num(99_999));
        let (a, b) = (base.shards.as_ref().unwrap(), next.shards.as_ref().unwrap());
        let copied = a
            .iter()
            .zip(b.iter())
            .filter(|(x, y)| match (x, y) {
                (Some(x), Some(y)) => !Arc::ptr_eq(x, y),
                (None, None) => false,
                _ => true,
            })
            .count();
        assert!((1..=3).contains(&copied), "{copied} shards copied");
        assert_eq!((base.len(), next.len()), (20_000, 20_000));
        assert_eq!(
            &*base.get("+15550000007").unwrap().queue,
            "q2",
            "old as it was"
        );
        assert_eq!(&*next.get("+15550000007").unwrap().queue, "moved");
        assert!(base.contains("+15550000008") && !next.contains("+15550000008"));

        let delta = next.delta_from(&base);
        assert_eq!(delta.removed, vec![SenderId::from("+15550000008")]);
        assert_eq!(delta.changed.len(), 1);
        assert_eq!(delta.appended, vec![num(99_999)]);
        let mut replayed = base.clone();
        delta.apply(&mut replayed);
        assert_eq!(replayed, next);
        assert!(next.delta_from(&next.clone()).is_empty());
    }

    #[test]
    fn counts_follow_every_change_and_share_one_copy_of_each_name() {
        let mut numbers: Numbers = (0..30).map(num).collect();
        assert_eq!(numbers.count_of("int-0"), 10);
        let mut queues: Vec<&str> = numbers
            .use_of("int-0")
            .unwrap()
            .queues()
            .map(|q| &**q)
            .collect();
        queues.sort();
        assert_eq!(queues, ["q0", "q1", "q2", "q3", "q4"]);
        let (a, b) = (
            numbers.get("+15550000000").unwrap(),
            numbers.get("+15550000003").unwrap(),
        );
        assert!(
            Arc::ptr_eq(&a.integration_id, &b.integration_id),
            "interned"
        );
        numbers.edit_where(
            |n| &*n.integration_id == "int-0",
            |n| n.status = NumberStatus::Disabled,
        );
        assert_eq!(numbers.use_of("int-0").unwrap().disabled, 10);
        numbers.retain(|n| &*n.integration_id != "int-0");
        assert_eq!((numbers.count_of("int-0"), numbers.len()), (0, 20));
        assert!(numbers.use_of("int-0").is_none(), "released when unused");
        let mut ids: Vec<&str> = numbers.integration_ids().map(|i| &**i).collect();
        ids.sort();
        assert_eq!(ids, ["int-1", "int-2"]);
    }

    #[test]
    fn a_list_round_trips_sorted_and_a_repeated_number_is_refused() {
        let numbers: Numbers = (0..50).rev().map(num).collect();
        let json = serde_json::to_string(&numbers).unwrap();
        let back: Numbers = serde_json::from_str(&json).unwrap();
        assert_eq!(back, numbers);
        let ids: Vec<String> = back
            .sorted()
            .iter()
            .map(|n| n.sender_id.to_string())
            .collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        let twice = serde_json::to_string(&vec![num(1), num(1)]).unwrap();
        let err = serde_json::from_str::<Numbers>(&twice).unwrap_err();
        assert!(
            err.to_string().contains("+15550000001 appears twice"),
            "{err}"
        );
    }
}

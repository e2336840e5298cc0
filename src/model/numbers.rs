//! The number records (`Number`, its inline `SenderId` and `Country`) and the inventory
//! that holds them as a persistent map. Numbers are spread by hash over 1,024
//! shards, each an `Arc`'d hash table copied on write: copying the inventory (every
//! change starts with a copy) copies one pointer, a change to k numbers copies at most k
//! shards of about n / 1,024 numbers each, and two versions are compared shard by shard,
//! skipping every shard they still share. So at a million numbers an import, a delete or
//! the delta a journal line and a snapshot need cost the same as at a thousand, and every
//! version of the state, the snapshot serving it and the one before all share one copy
//! of each unchanged number. What the admin API asks of the whole list (numbers and
//! queues per integration) is counted as numbers come and go, and the counts hold the
//! one shared copy of each integration id and queue name (interned).

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::hash::BuildHasher;
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

/// log2 of the shard count: at a million numbers a shard holds about 980. Against 4,096
/// shards, the 8 KiB index stays in the nearest cache (lookup_hit at 1M 53-55 ns
/// against 57-60), a change copies a quarter of the index (61 µs against 79-98) and the
/// copied shard (62 KiB) is still nothing beside the change's fdatasync.
const SHARD_BITS: u32 = 10;
const SHARDS: usize = 1 << SHARD_BITS;

/// A sender ID held inline (E.164 is at most 16 bytes, a short code 6): no allocation,
/// no pointer to follow on a lookup, and 16 bytes to hash. Shorter IDs are padded with
/// NUL bytes, so the byte order is the string order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SenderId([u8; SenderId::MAX_LEN]);

/// One 16-byte word, not a length and sixteen bytes.
impl std::hash::Hash for SenderId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u128(u128::from_le_bytes(self.0));
    }
}

impl SenderId {
    /// The longest sender ID the inventory holds, in bytes.
    pub const MAX_LEN: usize = 16;

    /// `s` as a sender ID; `None` when empty, longer than `MAX_LEN` or holding a NUL
    /// (no valid sender ID is). Built in registers and stored with one 16-byte write:
    /// this runs on every webhook, before its lookup reads the ID back whole.
    pub fn new(s: &str) -> Option<SenderId> {
        let b = s.as_bytes();
        let len = b.len();
        if len == 0 || len > Self::MAX_LEN {
            return None;
        }
        let word = if len >= 8 {
            let lo = u64::from_le_bytes(b[..8].try_into().ok()?);
            // The last 8 bytes, shifted so that bytes 8.. land at the bottom.
            let hi = match len {
                8 => 0,
                _ => u64::from_le_bytes(b[len - 8..].try_into().ok()?) >> (8 * (16 - len)),
            };
            u128::from(lo) | u128::from(hi) << 64
        } else {
            b.iter()
                .enumerate()
                .fold(0u128, |w, (i, &c)| w | u128::from(c) << (8 * i))
        };
        // A zero byte among the first `len` (SWAR: a borrow only runs upwards, into
        // the padding, from a byte that really is zero).
        let ones = u128::from_le_bytes([1; 16]);
        let zeros = word.wrapping_sub(ones) & !word & (ones << 7);
        let within = if len == 16 {
            !0
        } else {
            (1u128 << (8 * len)) - 1
        };
        if zeros & within != 0 {
            return None;
        }
        Some(SenderId(word.to_le_bytes()))
    }

    /// The sender ID as text.
    pub fn as_str(&self) -> &str {
        let len = self.0.iter().position(|&b| b == 0).unwrap_or(Self::MAX_LEN);
        // Built from a whole `&str` and never cut, so always UTF-8.
        std::str::from_utf8(&self.0[..len]).unwrap_or_default()
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

impl PartialEq<str> for SenderId {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
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

/// What the inline text types share: read as `&str`, printed and (de)serialised as a
/// string, and a value `new` refuses is an error naming the field and its rule (a panic
/// for `From`, which is for literals in tests and tools).
macro_rules! inline_text {
    ($ty:ident, $field:literal, $rule:literal) => {
        impl std::ops::Deref for $ty {
            type Target = str;
            fn deref(&self) -> &str {
                self.as_str()
            }
        }

        impl From<&str> for $ty {
            fn from(s: &str) -> $ty {
                $ty::new(s).unwrap_or_else(|| panic!(concat!($field, " {:?} ", $rule), s))
            }
        }

        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Debug::fmt(self.as_str(), f)
            }
        }

        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                $ty::new(&s).ok_or_else(|| {
                    serde::de::Error::custom(format!(concat!($field, " {:?} ", $rule), s))
                })
            }
        }
    };
}

inline_text!(
    SenderId,
    "sender_id",
    "must be 1-16 bytes (E.164 or a short code)"
);
inline_text!(
    Country,
    "country",
    "must be an ISO 3166 alpha-2 code (two letters)"
);

/// The hasher of the inventory's maps keyed by names: keys are only ever inserted by the
/// control plane, so a fast seeded hash is enough.
pub type Hasher = foldhash::fast::RandomState;

/// One shard: its numbers packed in a vector, and an open-addressing table (linear
/// probing, at most half full) of 4-byte slots, each a 12-bit tag of the hash and the
/// number's position: a number costs its 64 bytes and 8-16 more, and a lookup reads the
/// shard's header, one slot and the number (the tag rules out almost every other
/// number without reading it). A shard of at most `SCANNED` numbers has no table.
/// Copying a shard is two flat copies.
#[derive(Clone, Default)]
struct Shard {
    numbers: Vec<Number>,
    /// `0`: empty; else `tag << POS_BITS | position + 1`. A power of two long, or empty
    /// (while the shard has held at most `SCANNED` numbers).
    slots: Box<[u32]>,
}

/// Bits of a slot that hold a position (plus one): a shard holds fewer than 2^20 numbers
/// (about four billion in all).
const POS_BITS: u32 = 20;
const POS_MASK: u32 = (1 << POS_BITS) - 1;

/// Every shard of one version, by index: the array sits in the `Arc`'s own allocation,
/// so a lookup follows one pointer to reach its shard's.
type ShardTable = [Option<Arc<Shard>>; SHARDS];

fn empty_table() -> Arc<ShardTable> {
    Arc::new([const { None }; SHARDS])
}

/// The hash of a sender ID: the shard, the home slot and the tag from disjoint bits.
/// The ID's two words folded with the process's keys (foldhash's mixing, without the
/// general `Hasher` path's length prefix and byte loop): this runs on every webhook.
fn hash_of(id: &SenderId) -> u64 {
    static KEYS: OnceLock<[u64; 3]> = OnceLock::new();
    let [k0, k1, k2] = *KEYS.get_or_init(|| {
        let keys = std::collections::hash_map::RandomState::new();
        [0u8, 1, 2].map(|i| keys.hash_one(i))
    });
    let word = u128::from_le_bytes(id.0);
    let folded = folded_multiply(word as u64 ^ k0, (word >> 64) as u64 ^ k1);
    folded_multiply(folded ^ k2, 0x9e37_79b9_7f4a_7c15)
}

/// The 128-bit product of `a` and `b`, its halves xored (foldhash's mixing step).
pub(crate) fn folded_multiply(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    product as u64 ^ (product >> 64) as u64
}

/// Which shard a hash falls in (bits 32-43; the home slot uses the low bits, the tag the
/// top 12).
fn shard_of_hash(hash: u64) -> usize {
    ((hash >> 32) as usize) & (SHARDS - 1)
}

fn shard_of(id: &SenderId) -> usize {
    shard_of_hash(hash_of(id))
}

fn tag_of(hash: u64) -> u32 {
    (hash >> 52) as u32
}

impl Shard {
    fn with_capacity(n: usize) -> Shard {
        Shard {
            numbers: Vec::with_capacity(n),
            slots: match n > SCANNED {
                true => vec![0; table_len(n)].into_boxed_slice(),
                false => Box::default(),
            },
        }
    }

    fn mask(&self) -> usize {
        self.slots.len().wrapping_sub(1)
    }

    /// The slot index and position of `id`, if the shard holds it; a shard without a
    /// table is scanned (the slot index is then meaningless).
    #[inline]
    fn find(&self, hash: u64, id: &SenderId) -> Option<(usize, usize)> {
        if self.slots.is_empty() {
            let at = self.numbers.iter().position(|n| n.sender_id == *id)?;
            return Some((usize::MAX, at));
        }
        let (mask, tag) = (self.mask(), tag_of(hash));
        let mut i = hash as usize & mask;
        loop {
            let slot = self.slots[i];
            if slot == 0 {
                return None;
            }
            let at = (slot & POS_MASK) as usize - 1;
            if slot >> POS_BITS == tag && self.numbers[at].sender_id == *id {
                return Some((i, at));
            }
            i = (i + 1) & mask;
        }
    }

    #[inline]
    fn get(&self, hash: u64, id: &SenderId) -> Option<&Number> {
        self.find(hash, id).map(|(_, at)| &self.numbers[at])
    }

    /// Puts `n` in, replacing the number with its sender ID; returns the one replaced.
    fn replace(&mut self, hash: u64, n: Number) -> Option<Number> {
        if let Some((_, at)) = self.find(hash, &n.sender_id) {
            return Some(std::mem::replace(&mut self.numbers[at], n));
        }
        assert!(
            self.numbers.len() < POS_MASK as usize - 1,
            "a shard of the number inventory is full"
        );
        if self.numbers.len() == self.numbers.capacity() {
            // An eighth more, not twice: a copied shard starts full (a clone's capacity
            // is its length), so doubling left a bulk-imported inventory's shards about
            // half empty (131 live bytes per number at 1M against 73 for a loaded one).
            self.numbers.reserve_exact((self.numbers.len() / 8).max(4));
        }
        self.numbers.push(n);
        if self.numbers.len() * 2 > self.slots.len() && self.numbers.len() > SCANNED {
            self.rehash(table_len(self.numbers.len()));
        } else if !self.slots.is_empty() {
            self.place(hash, self.numbers.len() - 1);
        }
        None
    }

    /// Takes the number with this sender ID out; the last number moves into its place.
    fn take(&mut self, hash: u64, id: &SenderId) -> Option<Number> {
        let (i, at) = self.find(hash, id)?;
        let last = self.numbers.len() - 1;
        if self.slots.is_empty() {
            return Some(self.numbers.swap_remove(at));
        }
        self.vacate(i);
        if at != last {
            let moved = hash_of(&self.numbers[last].sender_id);
            let (j, _) = self
                .find(moved, &self.numbers[last].sender_id)
                .expect("every number has its slot");
            self.slots[j] = tag_of(moved) << POS_BITS | (at as u32 + 1);
        }
        Some(self.numbers.swap_remove(at))
    }

    /// Writes position `at` (hash `hash`) into the first free slot from its home.
    fn place(&mut self, hash: u64, at: usize) {
        let mask = self.mask();
        let mut i = hash as usize & mask;
        while self.slots[i] != 0 {
            i = (i + 1) & mask;
        }
        self.slots[i] = tag_of(hash) << POS_BITS | (at as u32 + 1);
    }

    /// Empties slot `i` and shifts back the slots after it that probed past it, so no
    /// lookup stops early at the hole (backward-shift deletion).
    fn vacate(&mut self, mut hole: usize) {
        let mask = self.mask();
        self.slots[hole] = 0;
        let mut i = hole;
        loop {
            i = (i + 1) & mask;
            let slot = self.slots[i];
            if slot == 0 {
                return;
            }
            let at = (slot & POS_MASK) as usize - 1;
            let home = hash_of(&self.numbers[at].sender_id) as usize & mask;
            // Stays if its home lies cyclically in (hole, i]: the hole is not on its path.
            let stays = if hole <= i {
                hole < home && home <= i
            } else {
                hole < home || home <= i
            };
            if !stays {
                self.slots[hole] = slot;
                self.slots[i] = 0;
                hole = i;
            }
        }
    }

    /// A table of `len` slots holding every number again.
    fn rehash(&mut self, len: usize) {
        self.slots = vec![0; len].into_boxed_slice();
        for at in 0..self.numbers.len() {
            let hash = hash_of(&self.numbers[at].sender_id);
            self.place(hash, at);
        }
    }
}

/// Up to this many numbers a shard has no table and a lookup compares each sender ID:
/// in a small inventory, where a shard holds one or two, that saves a lookup a read.
const SCANNED: usize = 4;

/// Slots for `n` numbers: a power of two, at least twice `n` (and 8).
fn table_len(n: usize) -> usize {
    (n * 2).next_power_of_two().max(8)
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
    shards: Option<Arc<ShardTable>>,
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
    /// An inventory of `list`, each shard sized once for what it holds (a load of a
    /// million numbers leaves no grown-out tables behind); a sender ID listed twice is
    /// returned as the error.
    pub fn from_list(list: Vec<Number>) -> Result<Numbers, SenderId> {
        match Numbers::sized(list) {
            (numbers, None) => Ok(numbers),
            (_, Some(twice)) => Err(twice),
        }
    }

    /// `list`'s inventory (a sender ID listed twice keeps its last number) and the first
    /// sender ID listed twice.
    fn sized(list: Vec<Number>) -> (Numbers, Option<SenderId>) {
        let mut counts = vec![0usize; SHARDS];
        for n in &list {
            counts[shard_of(&n.sender_id)] += 1;
        }
        let mut shards = empty_table();
        let table = Arc::get_mut(&mut shards).expect("just made");
        for (shard, &c) in table.iter_mut().zip(&counts) {
            *shard = (c > 0).then(|| Arc::new(Shard::with_capacity(c)));
        }
        let mut numbers = Numbers {
            shards: Some(shards),
            ..Numbers::default()
        };
        let mut twice = None;
        for n in list {
            let id = n.sender_id;
            if numbers.insert(n).is_some() {
                twice = twice.or(Some(id));
            }
        }
        (numbers, twice)
    }

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
    #[inline]
    pub fn get_id(&self, id: &SenderId) -> Option<&Number> {
        let hash = hash_of(id);
        let shard = self.shards.as_ref()?[shard_of_hash(hash)].as_ref()?;
        shard.get(hash, id)
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
            .flat_map(|shard| shard.numbers.iter())
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
        let hash = hash_of(&id);
        let old = self.shard_mut(hash).replace(hash, n);
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
        let hash = hash_of(id);
        let old = self.shard_mut(hash).take(hash, id)?;
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
            for n in &b.numbers {
                match a.get(hash_of(&n.sender_id), &n.sender_id) {
                    None => delta.appended.push(n.clone()),
                    Some(o) if o != n => delta.changed.push(n.clone()),
                    Some(_) => {}
                }
            }
            delta.removed.extend(
                a.numbers
                    .iter()
                    .filter(|n| b.get(hash_of(&n.sender_id), &n.sender_id).is_none())
                    .map(|n| n.sender_id),
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
    fn shard_mut(&mut self, hash: u64) -> &mut Shard {
        let shards = self.shards.get_or_insert_with(empty_table);
        let slot = &mut Arc::make_mut(shards)[shard_of_hash(hash)];
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

/// A sender ID listed twice keeps its last number.
impl FromIterator<Number> for Numbers {
    fn from_iter<I: IntoIterator<Item = Number>>(iter: I) -> Self {
        Numbers::sized(iter.into_iter().collect()).0
    }
}

impl Extend<Number> for Numbers {
    fn extend<I: IntoIterator<Item = Number>>(&mut self, iter: I) {
        for n in iter {
            self.insert(n);
        }
    }
}

/// A sender ID listed twice keeps its last number.
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
                let mut list = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(n) = seq.next_element::<Number>()? {
                    list.push(n);
                }
                Numbers::from_list(list)
                    .map_err(|id| serde::de::Error::custom(format!("number {id} appears twice")))
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
        for len in 1..=16 {
            let s: String = (0..len).map(|i| char::from(b'1' + (i % 9) as u8)).collect();
            assert_eq!(SenderId::new(&s).unwrap().as_str(), s, "length {len}");
            for at in 0..len {
                let mut with_nul = s.clone().into_bytes();
                with_nul[at] = 0;
                let with_nul = String::from_utf8(with_nul).unwrap();
                assert!(SenderId::new(&with_nul).is_none(), "NUL at {at} of {len}");
            }
        }
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

    /// A fixed pseudo-random sequence: `rnd(n)` is below `n`.
    fn xorshift(mut seed: u64) -> impl FnMut(u64) -> u64 {
        move |n| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        }
    }

    #[test]
    fn a_random_walk_agrees_with_a_plain_map_and_every_delta_replays() {
        // Few shards' worth of numbers, so removals move numbers inside shards often.
        let mut model = std::collections::BTreeMap::new();
        let mut numbers = Numbers::default();
        let mut rnd = xorshift(0x2545_f491_4f6c_dd1du64);
        for step in 0..400 {
            let prev = numbers.clone();
            for _ in 0..=rnd(40) {
                let n = Number {
                    queue: format!("q{}", rnd(3)).into(),
                    ..num(rnd(20_000))
                };
                if rnd(3) == 0 {
                    assert_eq!(numbers.remove_id(&n.sender_id), model.remove(&n.sender_id));
                } else {
                    assert_eq!(numbers.insert(n.clone()), model.insert(n.sender_id, n));
                }
            }
            assert_eq!(numbers.len(), model.len());
            let mut replayed = prev.clone();
            numbers.delta_from(&prev).apply(&mut replayed);
            assert_eq!(replayed, numbers, "step {step}");
        }
        for (id, n) in &model {
            assert_eq!(numbers.get_id(id), Some(n));
        }
        let listed: Vec<SenderId> = numbers.sorted().iter().map(|n| n.sender_id).collect();
        assert_eq!(listed, model.keys().copied().collect::<Vec<_>>());
    }

    #[test]
    fn one_crowded_shard_finds_every_number_through_inserts_and_removals() {
        // Every number in one shard, its table at most half full: long probe runs and
        // many backward shifts, checked against a plain map after each step.
        let mut shard = Shard::default();
        let mut model = std::collections::HashMap::new();
        let mut rnd = xorshift(0x9e37_79b9_7f4a_7c15u64);
        for step in 0..6_000 {
            let n = num(rnd(3_000));
            let hash = hash_of(&n.sender_id);
            if rnd(5) < 2 {
                let taken = shard.take(hash, &n.sender_id).map(|t| t.sender_id);
                assert_eq!(
                    taken,
                    model.remove(&n.sender_id).map(|()| n.sender_id),
                    "step {step}"
                );
            } else {
                let old = shard.replace(hash, n.clone()).map(|o| o.sender_id);
                assert_eq!(old, model.insert(n.sender_id, ()).map(|_| n.sender_id));
            }
            assert_eq!(shard.numbers.len(), model.len());
            assert!(
                shard.numbers.len() * 2 <= shard.slots.len()
                    || shard.slots.is_empty() && shard.numbers.len() <= SCANNED
            );
            if step % 500 == 0 {
                for id in model.keys() {
                    assert!(shard.get(hash_of(id), id).is_some(), "{id} lost at {step}");
                }
            }
        }
        for i in 0..3_000 {
            let id = num(i).sender_id;
            assert_eq!(
                shard.get(hash_of(&id), &id).is_some(),
                model.contains_key(&id)
            );
        }
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

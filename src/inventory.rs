//! The inventory snapshot: an immutable map from our number to everything a webhook needs
//! (org, integration, HMAC keys, queue, status, compliance), swapped whole with `arc-swap`
//! so that a lookup never locks and a control-plane change never stalls a request.

use crate::dispatch::{Dispatcher, QueueHandle};
use crate::model::crypto::{CryptoError, MasterKey};
use crate::model::state::{Integration, IntegrationStatus, Number, NumberStatus, Numbers, State};
use crate::policy::CompiledCompliance;
use crate::sink::SinkError;
use arc_swap::ArcSwap;
use ring::hmac;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

/// An integration as the data plane sees it: keys ready for HMAC, never the token text.
pub(crate) struct IntegrationEntry {
    pub(crate) id: Arc<str>,
    pub(crate) org: Arc<str>,
    pub(crate) account_sid: Box<str>,
    pub(crate) active: bool,
    /// The primary token's key, then the rotation candidate's if one is set.
    pub(crate) keys: Vec<hmac::Key>,
    /// SharedKeys by id (HMAC-SHA256), for requests naming one in their settings header.
    pub(crate) signing_keys: Vec<(Box<str>, hmac::Key)>,
}

/// Whether webhooks for a number are routed or dropped, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Routing {
    Active,
    /// Dropped: the number (or its integration) is disabled.
    Disabled,
    /// Dropped: the import has not finished.
    Provisioning,
}

/// One number's entry as a request uses it; cheap to make (a few `Arc`s).
#[derive(Clone)]
pub struct NumberEntry {
    pub(crate) integration: Arc<IntegrationEntry>,
    pub(crate) queue: Arc<QueueHandle>,
    pub(crate) routing: Routing,
    pub(crate) compliance: Option<Arc<CompiledCompliance>>,
}

/// One immutable version of the inventory.
pub struct Snapshot {
    pub(crate) version: u64,
    pub(crate) built_at: SystemTime,
    /// Rebuilt on every change (a handful of token openings).
    integrations: Vec<Arc<IntegrationEntry>>,
    /// Shared with the previous snapshot when no number changed.
    numbers: Arc<NumberTable>,
}

/// The per-number part of a snapshot, which a change to integrations alone reuses: a
/// number names its integration by position in `integration_ids`, not by pointer.
struct NumberTable {
    /// The state's number list this was built from (shared, so holding it costs nothing).
    source: Numbers,
    /// The integration order the positions in the slots refer to.
    integration_ids: Vec<Box<str>>,
    /// Built whole, then shared by every table derived from this one.
    base: Arc<NumberMap>,
    /// Numbers changed since `base` was built (`None`: removed); looked at first.
    overlay: HashMap<Box<str>, Option<Slot>, foldhash::fast::RandomState>,
}

/// Past this many numbers changed since the last full build, the next change builds the
/// number map whole again (each change copies the overlay).
const OVERLAY_MAX: usize = 16_384;

impl NumberTable {
    fn get(&self, number: &str) -> Option<&Slot> {
        if !self.overlay.is_empty() {
            if let Some(changed) = self.overlay.get(number) {
                return changed.as_ref();
            }
        }
        self.base.get(number)
    }
}

/// What a snapshot stores per number.
#[derive(Clone)]
struct Slot {
    integration: u32,
    queue: Arc<QueueHandle>,
    routing: Routing,
    compliance: Option<Arc<CompiledCompliance>>,
}

/// Lookups run before the signature is checked, but keys are only ever inserted by the
/// control plane, so a fast seeded hash (foldhash) is enough here.
type NumberMap = HashMap<Box<str>, Slot, foldhash::fast::RandomState>;

/// Why a state could not become a snapshot; the change is rejected and the old snapshot serves.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("integration {id}: cannot open its Auth Token: {source}")]
    Token { id: String, source: CryptoError },
    #[error("queue {queue}: cannot open its sink: {source}")]
    Queue { queue: String, source: SinkError },
}

impl Snapshot {
    /// An empty inventory (before the first state is loaded).
    pub(crate) fn empty() -> Snapshot {
        Snapshot {
            version: 0,
            built_at: SystemTime::now(),
            integrations: Vec::new(),
            numbers: Arc::new(NumberTable {
                source: Numbers::default(),
                integration_ids: Vec::new(),
                base: Arc::default(),
                overlay: HashMap::default(),
            }),
        }
    }

    /// Builds from a validated state: opens each token once, resolves each queue once.
    pub fn build(
        state: &State,
        key: &MasterKey,
        dispatcher: &Dispatcher,
    ) -> Result<Snapshot, BuildError> {
        Self::build_after(state, key, dispatcher, None)
    }

    /// `build`, reusing `prev`'s number table when `state` still lists `prev`'s
    /// integrations first, in the same order: as it is when `state` has the very number
    /// list it was built from (a swap then costs the same at a million numbers as at
    /// ten), or with the numbers that changed laid over it (one pass over the lists to
    /// find them) while few have changed since the last full build.
    pub fn build_after(
        state: &State,
        key: &MasterKey,
        dispatcher: &Dispatcher,
        prev: Option<&Snapshot>,
    ) -> Result<Snapshot, BuildError> {
        let integrations = state
            .integrations
            .iter()
            .map(|i| integration_entry(i, key).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let reusable = prev.map(|p| &p.numbers).filter(|t| {
            t.integration_ids.len() <= state.integrations.len()
                && t.integration_ids
                    .iter()
                    .zip(&state.integrations)
                    .all(|(a, b)| **a == *b.id)
        });
        let numbers = match reusable {
            Some(table) if Numbers::same(&table.source, &state.numbers) => Arc::clone(table),
            Some(table) => match overlaid(table, state, dispatcher)? {
                Some(table) => Arc::new(table),
                None => Arc::new(number_table(state, dispatcher)?),
            },
            None => Arc::new(number_table(state, dispatcher)?),
        };
        Ok(Snapshot {
            version: state.version,
            built_at: SystemTime::now(),
            integrations,
            numbers,
        })
    }

    /// The entry of one of our numbers, as Twilio writes it in `To`/`From`.
    pub fn lookup(&self, number: &str) -> Option<NumberEntry> {
        let slot = self.numbers.get(number)?;
        Some(NumberEntry {
            integration: self.integrations[slot.integration as usize].clone(),
            queue: slot.queue.clone(),
            routing: slot.routing,
            compliance: slot.compliance.clone(),
        })
    }

    /// Whether this snapshot serves `other`'s number table (a change to integrations
    /// alone), rather than one built again.
    #[cfg(test)]
    fn shares_numbers_with(&self, other: &Snapshot) -> bool {
        Arc::ptr_eq(&self.numbers, &other.numbers)
    }

    /// Whether this snapshot's number map is `other`'s, with or without changes laid
    /// over it (not built again).
    #[cfg(test)]
    fn shares_number_map_with(&self, other: &Snapshot) -> bool {
        Arc::ptr_eq(&self.numbers.base, &other.numbers.base)
    }

    /// How many numbers are routed by this snapshot.
    pub(crate) fn len(&self) -> usize {
        self.numbers.source.len()
    }
}

/// Opens an integration's tokens into HMAC keys.
fn integration_entry(i: &Integration, key: &MasterKey) -> Result<IntegrationEntry, BuildError> {
    let token_err = |source| BuildError::Token {
        id: i.id.clone(),
        source,
    };
    let mut keys = vec![crate::signature::key(
        key.open(&i.auth_token, &i.id)
            .map_err(token_err)?
            .expose()
            .as_bytes(),
    )];
    if let Some(next) = &i.next_auth_token {
        keys.push(crate::signature::key(
            key.open(next, &i.id)
                .map_err(token_err)?
                .expose()
                .as_bytes(),
        ));
    }
    let mut signing_keys = Vec::with_capacity(i.signing_keys.len());
    for k in &i.signing_keys {
        let aad = crate::model::state::signing_key_aad(&i.id, &k.id);
        let secret = key.open(&k.secret, &aad).map_err(token_err)?;
        signing_keys.push((
            k.id.clone().into_boxed_str(),
            hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes()),
        ));
    }
    Ok(IntegrationEntry {
        id: Arc::from(i.id.as_str()),
        org: Arc::from(i.org.as_str()),
        account_sid: i.account_sid.clone().into_boxed_str(),
        active: i.status == IntegrationStatus::Active,
        keys,
        signing_keys,
    })
}

/// Makes slots for one state: integration positions and queues resolved once each.
struct Slots<'a> {
    positions: HashMap<&'a str, u32>,
    /// By org and queue name.
    queues: HashMap<(&'a str, &'a str), Arc<QueueHandle>>,
    /// Each integration's org, by integration id.
    orgs: HashMap<&'a str, &'a str>,
    dispatcher: &'a Dispatcher,
}

impl<'a> Slots<'a> {
    fn new(state: &'a State, dispatcher: &'a Dispatcher) -> Self {
        Slots {
            positions: state
                .integrations
                .iter()
                .enumerate()
                .map(|(at, i)| (i.id.as_str(), at as u32))
                .collect(),
            queues: HashMap::new(),
            orgs: state
                .integrations
                .iter()
                .map(|i| (i.id.as_str(), i.org.as_str()))
                .collect(),
            dispatcher,
        }
    }

    fn slot(&mut self, n: &'a Number) -> Result<Slot, BuildError> {
        let org = self
            .orgs
            .get(&*n.integration_id)
            .copied()
            .unwrap_or_default();
        let queue = match self.queues.get(&(org, &*n.queue)) {
            Some(q) => q.clone(),
            None => {
                let name = format!("{org}/{}", n.queue);
                let q = self
                    .dispatcher
                    .queue(&name)
                    .map_err(|source| BuildError::Queue {
                        queue: name.clone(),
                        source,
                    })?;
                self.queues.insert((org, &n.queue), q.clone());
                q
            }
        };
        let routing = match n.status {
            NumberStatus::Active => Routing::Active,
            NumberStatus::Disabled => Routing::Disabled,
            NumberStatus::Provisioning => Routing::Provisioning,
        };
        Ok(Slot {
            integration: self.positions[&*n.integration_id],
            queue,
            routing,
            compliance: n
                .compliance
                .as_ref()
                .map(|c| Arc::new(CompiledCompliance::compile(c))),
        })
    }
}

fn integration_ids(state: &State) -> Vec<Box<str>> {
    state
        .integrations
        .iter()
        .map(|i| i.id.clone().into_boxed_str())
        .collect()
}

/// The O(numbers) part of a snapshot: one slot per number.
fn number_table(state: &State, dispatcher: &Dispatcher) -> Result<NumberTable, BuildError> {
    let mut slots = Slots::new(state, dispatcher);
    let mut map = NumberMap::with_capacity_and_hasher(state.numbers.len(), Default::default());
    for n in state.numbers.iter() {
        map.insert(Box::from(&*n.sender_id), slots.slot(n)?);
    }
    Ok(NumberTable {
        source: state.numbers.clone(),
        integration_ids: integration_ids(state),
        base: Arc::new(map),
        overlay: HashMap::default(),
    })
}

/// `table` with the numbers that changed between its list and `state`'s laid over it;
/// `None` when too many have changed since its map was built.
fn overlaid(
    table: &NumberTable,
    state: &State,
    dispatcher: &Dispatcher,
) -> Result<Option<NumberTable>, BuildError> {
    let delta = state.numbers.delta_from(&table.source);
    if table.overlay.len() + delta.len() > OVERLAY_MAX {
        return Ok(None);
    }
    let mut slots = Slots::new(state, dispatcher);
    let mut overlay = table.overlay.clone();
    for removed in &delta.removed {
        overlay.insert(removed.as_str().into(), None);
    }
    for n in delta.changed.iter().chain(&delta.appended) {
        overlay.insert(Box::from(&*n.sender_id), Some(slots.slot(n)?));
    }
    Ok(Some(NumberTable {
        source: state.numbers.clone(),
        integration_ids: integration_ids(state),
        base: Arc::clone(&table.base),
        overlay,
    }))
}

/// The live inventory: readers `load()` without locking, the control plane `publish`es.
pub struct Inventory {
    current: ArcSwap<Snapshot>,
}

impl Default for Inventory {
    fn default() -> Self {
        Inventory {
            current: ArcSwap::from_pointee(Snapshot::empty()),
        }
    }
}

impl Inventory {
    /// The snapshot serving now; hold the guard only while reading.
    pub(crate) fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The snapshot serving now, held for as long as needed (the control plane's view).
    pub(crate) fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Makes a built snapshot live for every following request.
    pub(crate) fn publish(&self, snapshot: Snapshot) {
        let (version, size) = (snapshot.version, snapshot.len());
        retire(self.current.swap(Arc::new(snapshot)));
        metrics::gauge!("sms_ingress_snapshot_version").set(version as f64);
        metrics::gauge!("sms_ingress_snapshot_numbers").set(size as f64);
        metrics::gauge!("sms_ingress_snapshot_loaded_timestamp_seconds")
            .set(crate::telemetry::unix_now());
        tracing::info!(version, numbers = size, "inventory snapshot swapped in");
    }
}

/// How long a replaced snapshot is kept before it is dropped: longer than a request
/// holds one, so the last reference is almost always the retiring thread's own.
const RETIRE_AFTER: std::time::Duration = std::time::Duration::from_millis(250);

/// Drops a replaced snapshot on a short-lived thread at low priority, a little later.
/// Freeing a million-number map or list takes tens of milliseconds, which would
/// otherwise fall on the control thread or, if a request still held the snapshot, on a
/// webhook worker. If no thread can be started, it is dropped here.
fn retire(old: Arc<Snapshot>) {
    if Arc::strong_count(&old) == 1 && old.len() < 10_000 {
        return; // small: dropped here, now
    }
    let spawned = crate::background::spawn_nicer("snapshot-retire", move || {
        std::thread::sleep(RETIRE_AFTER);
        drop(old);
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start a thread to drop the old snapshot");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::SinkFactory;
    use crate::fixtures::NullSink;
    use crate::model::crypto::Secret;
    use crate::model::state::NumberType;

    fn fixture(n: usize) -> (State, MasterKey, Dispatcher) {
        let mk = crate::fixtures::master_key();
        let integ = Integration {
            auth_token: mk.seal(&Secret::new("tok"), "int-1").unwrap(),
            next_auth_token: Some(mk.seal(&Secret::new("tok2"), "int-1").unwrap()),
            ..crate::fixtures::integration("int-1", "org-a")
        };
        let numbers = (0..n)
            .map(|i| Number {
                sender_id: format!("+1555{i:07}").into(),
                kind: NumberType::Mobile,
                country: "US".into(),
                integration_id: "int-1".into(),
                queue: format!("q{}", i % 3).into(),
                status: if i == 0 {
                    NumberStatus::Disabled
                } else {
                    NumberStatus::Active
                },
                compliance: None,
            })
            .collect();
        let state = State {
            version: 7,
            integrations: vec![integ],
            numbers,
        };
        let factory: SinkFactory = Box::new(|_| Ok(Box::new(NullSink)));
        (state, mk, Dispatcher::new(factory, 8, 8))
    }

    #[test]
    fn build_and_lookup() {
        let (state, mk, d) = fixture(10);
        let snap = Snapshot::build(&state, &mk, &d).unwrap();
        assert_eq!((snap.version, snap.len()), (7, 10));
        let e = snap.lookup("+15550000004").unwrap();
        assert_eq!(&**e.queue.queue(), "q1");
        assert_eq!(e.routing, Routing::Active);
        assert_eq!(e.integration.keys.len(), 2);
        assert_eq!(
            snap.lookup("+15550000000").unwrap().routing,
            Routing::Disabled
        );
        assert!(snap.lookup("+15559999999").is_none());
        // the three queues are shared handles, not one per number
        let q = &snap.lookup("+15550000001").unwrap().queue;
        assert!(Arc::ptr_eq(q, &snap.lookup("+15550000004").unwrap().queue));
    }

    #[test]
    fn an_integration_change_reuses_the_number_table() {
        let (mut state, mk, d) = fixture(10);
        let first = Snapshot::build(&state, &mk, &d).unwrap();

        // Token rotated and integration deactivated: numbers untouched, table shared,
        // yet every lookup sees the new integration.
        let mut next = state.clone();
        next.version = 8;
        next.integrations[0].next_auth_token = None;
        next.integrations[0].status = IntegrationStatus::Inactive;
        let second = Snapshot::build_after(&next, &mk, &d, Some(&first)).unwrap();
        assert!(second.shares_numbers_with(&first));
        let e = second.lookup("+15550000004").unwrap();
        assert_eq!((e.integration.keys.len(), e.integration.active), (1, false));
        assert_eq!(
            first.lookup("+15550000004").unwrap().integration.keys.len(),
            2
        );

        // An integration added after the others keeps the positions: still shared.
        let mut added = next.clone();
        let mut other = added.integrations[0].clone();
        other.id = "int-2".into();
        other.auth_token = mk.seal(&Secret::new("tok3"), "int-2").unwrap();
        added.integrations.push(other.clone());
        let third = Snapshot::build_after(&added, &mk, &d, Some(&second)).unwrap();
        assert!(third.shares_numbers_with(&first));

        // Reordered integrations, or a changed number: built again, and correct.
        let mut reordered = next.clone();
        reordered.integrations.insert(0, other);
        let fourth = Snapshot::build_after(&reordered, &mk, &d, Some(&third)).unwrap();
        assert!(!fourth.shares_numbers_with(&third));
        assert_eq!(
            &*fourth.lookup("+15550000004").unwrap().integration.id,
            "int-1"
        );
        state.numbers[4].queue = "q9".into();
        let fifth = Snapshot::build_after(&state, &mk, &d, Some(&first)).unwrap();
        assert!(!fifth.shares_numbers_with(&first));
        assert_eq!(&**fifth.lookup("+15550000004").unwrap().queue.queue(), "q9");
    }

    #[test]
    fn changed_numbers_are_laid_over_the_shared_map_until_there_are_too_many() {
        let (state, mk, d) = fixture(OVERLAY_MAX + 100);
        let first = Snapshot::build(&state, &mk, &d).unwrap();

        // Edit one, remove one, append one: the map is shared, the lookups are new.
        let mut next = state.clone();
        next.numbers[4].queue = "q9".into();
        next.numbers[5].status = NumberStatus::Provisioning;
        next.numbers.retain(|n| &*n.sender_id != "+15550000006");
        let mut added = next.numbers[7].clone();
        added.sender_id = "+15559999999".into();
        next.numbers.push(added);
        let second = Snapshot::build_after(&next, &mk, &d, Some(&first)).unwrap();
        assert!(second.shares_number_map_with(&first));
        assert_eq!(second.len(), OVERLAY_MAX + 100);
        assert_eq!(
            &**second.lookup("+15550000004").unwrap().queue.queue(),
            "q9"
        );
        assert_eq!(
            second.lookup("+15550000005").unwrap().routing,
            Routing::Provisioning
        );
        assert!(second.lookup("+15550000006").is_none());
        assert!(second.lookup("+15559999999").is_some());
        assert_eq!(
            &**second.lookup("+15550000008").unwrap().queue.queue(),
            "q2"
        );
        assert!(
            first.lookup("+15559999999").is_none(),
            "the old one is as it was"
        );

        // Removed then imported again: found again.
        let mut third_state = next.clone();
        let mut back = third_state.numbers[7].clone();
        back.sender_id = "+15550000006".into();
        third_state.numbers.push(back);
        let third = Snapshot::build_after(&third_state, &mk, &d, Some(&second)).unwrap();
        assert!(third.shares_number_map_with(&first));
        assert!(third.lookup("+15550000006").is_some());

        // Too many changed since the full build: built whole again.
        let mut many = third_state.clone();
        for n in many.numbers.iter_mut().take(OVERLAY_MAX) {
            n.queue = "q7".into();
        }
        let fourth = Snapshot::build_after(&many, &mk, &d, Some(&third)).unwrap();
        assert!(!fourth.shares_number_map_with(&first));
        assert_eq!(
            &**fourth.lookup("+15550000001").unwrap().queue.queue(),
            "q7"
        );
        assert!(fourth.lookup("+15550000006").is_some());
        assert_eq!(fourth.len(), third.len());
    }

    #[test]
    fn wrong_master_key_fails_build() {
        let (state, _, d) = fixture(1);
        let other = MasterKey::from_base64(&MasterKey::generate_base64().unwrap()).unwrap();
        assert!(matches!(
            Snapshot::build(&state, &other, &d),
            Err(BuildError::Token { .. })
        ));
    }

    #[test]
    fn a_replaced_large_snapshot_is_dropped_later_off_the_publishing_thread() {
        let (state, mk, d) = fixture(10_000);
        let inv = Inventory::default();
        inv.publish(Snapshot::build(&state, &mk, &d).unwrap());
        let old = Arc::downgrade(&inv.load_full());
        inv.publish(Snapshot::build(&state, &mk, &d).unwrap());
        assert!(old.upgrade().is_some(), "kept a moment");
        let deadline = std::time::Instant::now() + RETIRE_AFTER * 20;
        while old.upgrade().is_some() {
            assert!(std::time::Instant::now() < deadline, "never dropped");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    #[test]
    fn publish_swaps_for_readers() {
        let (state, mk, d) = fixture(3);
        let inv = Inventory::default();
        let before = inv.load();
        inv.publish(Snapshot::build(&state, &mk, &d).unwrap());
        assert_eq!(before.len(), 0);
        assert_eq!(inv.load().len(), 3);
    }
}

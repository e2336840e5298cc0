//! The inventory snapshot: an immutable map from our number to everything a webhook needs
//! (org, integration, HMAC keys, queue, status, compliance), swapped whole with `arc-swap`
//! so that a lookup never locks and a control-plane change never stalls a request.

use crate::dispatch::{Dispatcher, QueueHandle};
use crate::model::crypto::{CryptoError, MasterKey};
use crate::model::numbers::{folded_multiply, Hasher};
use crate::model::state::{
    Integration, IntegrationStatus, Number, NumberDelta, NumberStatus, Numbers, SenderId, State,
    Text,
};
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

/// One number's entry as a request uses it; cheap to make: one `Arc` for integration
/// and queue together, so a lookup and its drop are one atomic add each.
#[derive(Clone)]
pub struct NumberEntry {
    route: Arc<Route>,
    pub(crate) routing: Routing,
    pub(crate) compliance: Option<Arc<CompiledCompliance>>,
}

impl NumberEntry {
    /// The integration the number belongs to (its keys, account and status).
    pub(crate) fn integration(&self) -> &Arc<IntegrationEntry> {
        &self.route.integration
    }

    /// The queue the number's webhooks are written to.
    pub(crate) fn queue(&self) -> &Arc<QueueHandle> {
        &self.route.queue
    }
}

/// One immutable version of the inventory.
pub struct Snapshot {
    pub(crate) version: u64,
    pub(crate) built_at: SystemTime,
    /// By integration id: its entry and its queues, each reused from the previous
    /// snapshot while its record and queue names are unchanged.
    integrations: HashMap<Box<str>, Arc<Routes>, Hasher>,
    /// Every queue a number routes to, by the address of the queue name the numbers
    /// hold: the inventory keeps one copy of each integration's queue names
    /// (`model::numbers` interns them), so an address names one integration's queue and
    /// a lookup hashes a pointer instead of two strings.
    by_queue: ByQueue,
    /// Short codes' compiled keyword replies, shared while no short code changed.
    compliance: Arc<HashMap<SenderId, Arc<CompiledCompliance>, Hasher>>,
    /// The state's own number map, shared with it: a snapshot adds nothing per number.
    numbers: Numbers,
}

/// What an integration's numbers route with: its entry and its queues.
struct Routes {
    /// The record the entry was opened from (to tell whether the next state changed it).
    source: Integration,
    entry: Arc<IntegrationEntry>,
    /// Queue handles by the address of the queue name the numbers hold, with that name
    /// (the inventory's one copy), so the address stays its own while these routes live.
    queues: HashMap<usize, (Text, Arc<QueueHandle>), Hasher>,
}

/// Where a number's webhooks go: its integration and its queue.
struct Route {
    integration: Arc<IntegrationEntry>,
    queue: Arc<QueueHandle>,
}

/// The address a shared name is looked up by.
fn address(name: &Text) -> usize {
    Arc::as_ptr(name).cast::<u8>() as usize
}

/// Routes by the address of the queue name the numbers hold: open addressing (linear
/// probing, at most half full) with one multiply to hash, since addresses are ours and
/// need no seed. A general map's probe was a third of a lookup's time.
#[derive(Default)]
struct ByQueue {
    /// A power of two long, or empty; `None`: a free slot.
    slots: Box<[(usize, Option<Arc<Route>>)]>,
}

impl ByQueue {
    fn new(routes: Vec<(usize, Arc<Route>)>) -> ByQueue {
        if routes.is_empty() {
            return ByQueue::default();
        }
        let len = (routes.len() * 2).next_power_of_two();
        let mut slots: Box<[_]> = (0..len).map(|_| (0, None)).collect();
        for (at, route) in routes {
            let mut i = Self::home(at, len - 1);
            while slots[i].1.is_some() {
                i = (i + 1) & (len - 1);
            }
            slots[i] = (at, Some(route));
        }
        ByQueue { slots }
    }

    /// The product's halves folded, so aligned addresses' zero low bits still spread.
    fn home(at: usize, mask: usize) -> usize {
        folded_multiply(at as u64, 0x9e37_79b9_7f4a_7c15) as usize & mask
    }

    fn get(&self, at: usize) -> Option<&Arc<Route>> {
        let mask = self.slots.len().checked_sub(1)?;
        let mut i = Self::home(at, mask);
        loop {
            match &self.slots[i] {
                (_, None) => return None,
                (a, Some(route)) if *a == at => return Some(route),
                _ => i = (i + 1) & mask,
            }
        }
    }
}

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
            integrations: HashMap::default(),
            by_queue: ByQueue::default(),
            compliance: Arc::default(),
            numbers: Numbers::default(),
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

    /// `build`, reusing what `prev` already holds: the number map is the state's own
    /// (shared, never copied), an integration whose record and queues did not change
    /// keeps its entry and handles, and the short codes' replies are compiled again only
    /// for short codes the change touched. So a swap costs what the change touched plus a
    /// look at each integration, at a million numbers as at ten.
    pub fn build_after(
        state: &State,
        key: &MasterKey,
        dispatcher: &Dispatcher,
        prev: Option<&Snapshot>,
    ) -> Result<Snapshot, BuildError> {
        let mut integrations =
            HashMap::with_capacity_and_hasher(state.integrations.len(), Hasher::default());
        for i in &state.integrations {
            let before = prev.and_then(|p| p.integrations.get(i.id.as_str()));
            let routes = routes(i, &state.numbers, key, dispatcher, before)?;
            integrations.insert(Box::from(i.id.as_str()), routes);
        }
        let by_queue = state
            .numbers
            .integration_ids()
            .filter_map(|id| integrations.get(&**id))
            .flat_map(|r| {
                r.queues.iter().map(|(at, (_, queue))| {
                    let route = Arc::new(Route {
                        integration: Arc::clone(&r.entry),
                        queue: Arc::clone(queue),
                    });
                    (*at, route)
                })
            })
            .collect();
        let by_queue = ByQueue::new(by_queue);
        let compliance = match prev {
            Some(p) => compliance_after(&p.compliance, &state.numbers.delta_from(&p.numbers)),
            None => Arc::new(
                state
                    .numbers
                    .iter()
                    .filter_map(|n| Some((n.sender_id, compile(n)?)))
                    .collect(),
            ),
        };
        Ok(Snapshot {
            version: state.version,
            built_at: SystemTime::now(),
            integrations,
            by_queue,
            compliance,
            numbers: state.numbers.clone(),
        })
    }

    /// The entry of one of our numbers, as Twilio writes it in `To`/`From`: one probe of
    /// the number map, then one of the (small) table of queues by address. A number
    /// whose integration is not in the snapshot (a fleet race) is not served.
    pub fn lookup(&self, number: &str) -> Option<NumberEntry> {
        let id = SenderId::new(number)?;
        let n = self.numbers.get_id(&id)?;
        let route = self.by_queue.get(address(&n.queue))?;
        let compliance = match n.compliance {
            Some(_) => self.compliance.get(&id).cloned(),
            None => None,
        };
        Some(NumberEntry {
            route: Arc::clone(route),
            routing: match n.status {
                NumberStatus::Active => Routing::Active,
                NumberStatus::Disabled => Routing::Disabled,
                NumberStatus::Provisioning => Routing::Provisioning,
            },
            compliance,
        })
    }

    /// Whether this snapshot routes `other`'s integration `id` with the very same entry
    /// and queue handles (nothing about it changed).
    #[cfg(test)]
    fn shares_routes_with(&self, other: &Snapshot, id: &str) -> bool {
        match (self.integrations.get(id), other.integrations.get(id)) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// How many numbers are routed by this snapshot.
    pub(crate) fn len(&self) -> usize {
        self.numbers.len()
    }
}

/// An integration's routes: `before`'s when neither its record nor its queue names (the
/// very same shared copies) changed; else its entry (reused if the record is the same)
/// and a handle per queue (reused where `before` had the name).
fn routes(
    i: &Integration,
    numbers: &Numbers,
    key: &MasterKey,
    dispatcher: &Dispatcher,
    before: Option<&Arc<Routes>>,
) -> Result<Arc<Routes>, BuildError> {
    let names: Vec<Text> = numbers
        .use_of(&i.id)
        .map(|u| u.queues().cloned().collect())
        .unwrap_or_default();
    let same_record = before.filter(|b| b.source == *i);
    if let Some(b) = same_record {
        let same_names = b.queues.len() == names.len()
            && names.iter().all(|q| b.queues.contains_key(&address(q)));
        if same_names {
            return Ok(Arc::clone(b));
        }
    }
    let entry = match same_record {
        Some(b) => Arc::clone(&b.entry),
        None => Arc::new(integration_entry(i, key)?),
    };
    let mut queues = HashMap::with_capacity_and_hasher(names.len(), Hasher::default());
    for q in names {
        // Usually the very same copy of the name; else (its numbers went and came back)
        // the same text.
        let known = before.and_then(|b| {
            b.queues
                .get(&address(&q))
                .or_else(|| b.queues.values().find(|(n, _)| **n == *q))
        });
        let handle = match known {
            Some((_, h)) => Arc::clone(h),
            None => {
                let name = format!("{}/{q}", i.org);
                dispatcher
                    .queue(&name)
                    .map_err(|source| BuildError::Queue {
                        queue: name,
                        source,
                    })?
            }
        };
        queues.insert(address(&q), (q, handle));
    }
    Ok(Arc::new(Routes {
        source: i.clone(),
        entry,
        queues,
    }))
}

/// A short code's compiled replies.
fn compile(n: &Number) -> Option<Arc<CompiledCompliance>> {
    n.compliance
        .as_ref()
        .map(|c| Arc::new(CompiledCompliance::compile(c)))
}

/// `prev`'s compiled replies with the delta's short codes compiled again or dropped;
/// `prev` itself when the delta touched no short code.
fn compliance_after(
    prev: &Arc<HashMap<SenderId, Arc<CompiledCompliance>, Hasher>>,
    delta: &NumberDelta,
) -> Arc<HashMap<SenderId, Arc<CompiledCompliance>, Hasher>> {
    let touched = delta.removed.iter().any(|id| prev.contains_key(id))
        || delta
            .put()
            .any(|n| n.compliance.is_some() || prev.contains_key(&n.sender_id));
    if !touched {
        return Arc::clone(prev);
    }
    let mut map = (**prev).clone();
    for id in &delta.removed {
        map.remove(id);
    }
    for n in delta.put() {
        match compile(n) {
            Some(c) => map.insert(n.sender_id, c),
            None => map.remove(&n.sender_id),
        };
    }
    Arc::new(map)
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
        assert_eq!(&**e.queue().queue(), "q1");
        assert_eq!(e.routing, Routing::Active);
        assert_eq!(e.integration().keys.len(), 2);
        assert_eq!(
            snap.lookup("+15550000000").unwrap().routing,
            Routing::Disabled
        );
        assert!(snap.lookup("+15559999999").is_none());
        // the three queues are shared handles, not one per number
        let q = snap.lookup("+15550000001").unwrap().queue().clone();
        assert!(Arc::ptr_eq(
            &q,
            snap.lookup("+15550000004").unwrap().queue()
        ));
    }

    #[test]
    fn a_change_reuses_what_it_did_not_touch() {
        let (state, mk, d) = fixture(10);
        let first = Snapshot::build(&state, &mk, &d).unwrap();

        // Token rotated and integration deactivated: the entry is new, every lookup sees
        // it, the numbers are the very same map.
        let mut next = state.clone();
        next.version = 8;
        next.integrations[0].next_auth_token = None;
        next.integrations[0].status = IntegrationStatus::Inactive;
        let second = Snapshot::build_after(&next, &mk, &d, Some(&first)).unwrap();
        assert!(Numbers::same(&second.numbers, &first.numbers));
        assert!(!second.shares_routes_with(&first, "int-1"));
        let e = second.lookup("+15550000004").unwrap();
        assert_eq!(
            (e.integration().keys.len(), e.integration().active),
            (1, false)
        );
        assert_eq!(
            e.routing,
            Routing::Active,
            "own status: the data plane drops on `active`"
        );
        assert_eq!(
            first
                .lookup("+15550000004")
                .unwrap()
                .integration()
                .keys
                .len(),
            2
        );
        // The queue handles were kept, not opened again.
        assert!(Arc::ptr_eq(
            first.lookup("+15550000004").unwrap().queue(),
            second.lookup("+15550000004").unwrap().queue()
        ));

        // Another integration added: the first keeps its routes.
        let mut added = next.clone();
        let mut other = added.integrations[0].clone();
        other.id = "int-2".into();
        other.auth_token = mk.seal(&Secret::new("tok3"), "int-2").unwrap();
        added.integrations.insert(0, other);
        let third = Snapshot::build_after(&added, &mk, &d, Some(&second)).unwrap();
        assert!(third.shares_routes_with(&second, "int-1"));
        assert_eq!(
            &*third.lookup("+15550000004").unwrap().integration().id,
            "int-1"
        );

        // A number moved to a new queue: the integration's routes gain it.
        let mut moved = added.clone();
        let n = moved.numbers.get("+15550000004").unwrap().clone();
        moved.numbers.insert(Number {
            queue: "q9".into(),
            ..n
        });
        let fourth = Snapshot::build_after(&moved, &mk, &d, Some(&third)).unwrap();
        assert!(!fourth.shares_routes_with(&third, "int-1"));
        assert_eq!(
            &**fourth.lookup("+15550000004").unwrap().queue().queue(),
            "q9"
        );
        assert_eq!(
            &**third.lookup("+15550000004").unwrap().queue().queue(),
            "q1"
        );
    }

    #[test]
    fn changed_numbers_are_served_at_once_and_the_old_snapshot_stays_as_it_was() {
        let (state, mk, d) = fixture(20_000);
        let first = Snapshot::build(&state, &mk, &d).unwrap();
        let mut next = state.clone();
        let edit = |s: &State, id: &str| s.numbers.get(id).unwrap().clone();
        next.numbers.insert(Number {
            queue: "q9".into(),
            ..edit(&next, "+15550000004")
        });
        next.numbers.insert(Number {
            status: NumberStatus::Provisioning,
            ..edit(&next, "+15550000005")
        });
        next.numbers.remove("+15550000006");
        next.numbers.insert(Number {
            sender_id: "+15559999999".into(),
            ..edit(&next, "+15550000007")
        });
        let second = Snapshot::build_after(&next, &mk, &d, Some(&first)).unwrap();
        assert_eq!(second.len(), 20_000);
        assert_eq!(
            &**second.lookup("+15550000004").unwrap().queue().queue(),
            "q9"
        );
        assert_eq!(
            second.lookup("+15550000005").unwrap().routing,
            Routing::Provisioning
        );
        assert!(second.lookup("+15550000006").is_none());
        assert!(second.lookup("+15559999999").is_some());
        assert!(
            first.lookup("+15559999999").is_none(),
            "the old one is as it was"
        );
        assert!(first.lookup("+15550000006").is_some());
        assert!(
            second.lookup("+1555000000600000000").is_none(),
            "too long: not ours"
        );
    }

    #[test]
    fn short_codes_replies_are_compiled_again_only_when_a_short_code_changed() {
        let (mut state, mk, d) = fixture(3);
        let reply = |k: &str| crate::model::state::KeywordReply {
            keywords: vec![k.into()],
            message: format!("{k} reply"),
        };
        let compliance = Arc::new(crate::model::state::Compliance {
            help: reply("HELP"),
            opt_out: reply("STOP"),
            re_opt_in: reply("START"),
        });
        state.numbers.insert(Number {
            sender_id: "12345".into(),
            kind: NumberType::ShortCode,
            compliance: Some(compliance),
            ..state.numbers.get("+15550000001").unwrap().clone()
        });
        let first = Snapshot::build(&state, &mk, &d).unwrap();
        assert!(first.lookup("12345").unwrap().compliance.is_some());
        assert!(first.lookup("+15550000001").unwrap().compliance.is_none());
        let mut next = state.clone();
        next.numbers.remove("+15550000002");
        let second = Snapshot::build_after(&next, &mk, &d, Some(&first)).unwrap();
        assert!(Arc::ptr_eq(&first.compliance, &second.compliance));
        next.numbers.remove("12345");
        let third = Snapshot::build_after(&next, &mk, &d, Some(&second)).unwrap();
        assert!(third.compliance.is_empty() && third.lookup("12345").is_none());
    }

    #[test]
    fn a_number_whose_integration_is_gone_is_not_served() {
        let (mut state, mk, d) = fixture(3);
        state.integrations.clear();
        let snap = Snapshot::build(&state, &mk, &d).unwrap();
        assert!(snap.lookup("+15550000001").is_none());
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

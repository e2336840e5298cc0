//! The inventory snapshot: an immutable map from our number to everything a webhook needs
//! (org, integration, HMAC keys, queue, status, compliance), swapped whole with `arc-swap`
//! so that a lookup never locks and a control-plane change never stalls a request.

use crate::control::crypto::{CryptoError, MasterKey};
use crate::control::state::{IntegrationStatus, NumberStatus, State};
use crate::dispatch::{Dispatcher, QueueHandle};
use crate::policy::CompiledCompliance;
use crate::sink::SinkError;
use arc_swap::ArcSwap;
use ring::hmac;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

/// An integration as the data plane sees it: keys ready for HMAC, never the token text.
pub struct IntegrationEntry {
    pub id: Arc<str>,
    pub org: Arc<str>,
    pub account_sid: Box<str>,
    pub active: bool,
    /// The primary token's key, then the rotation candidate's if one is set.
    pub keys: Vec<hmac::Key>,
}

/// Whether webhooks for a number are routed or dropped, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    Active,
    /// Dropped: the number (or its integration) is disabled.
    Disabled,
    /// Dropped: the import has not finished.
    Provisioning,
}

/// One number's entry; cheap to clone (a few `Arc`s).
#[derive(Clone)]
pub struct NumberEntry {
    pub integration: Arc<IntegrationEntry>,
    pub queue: Arc<QueueHandle>,
    pub routing: Routing,
    pub compliance: Option<Arc<CompiledCompliance>>,
}

/// One immutable version of the inventory.
pub struct Snapshot {
    pub version: u64,
    pub built_at: SystemTime,
    numbers: NumberMap,
}

/// Lookups run before the signature is checked, but keys are only ever inserted by the
/// control plane, so a fast seeded hash (foldhash) is enough here.
type NumberMap = HashMap<Box<str>, NumberEntry, foldhash::fast::RandomState>;

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
    pub fn empty() -> Snapshot {
        Snapshot {
            version: 0,
            built_at: SystemTime::now(),
            numbers: NumberMap::default(),
        }
    }

    /// Builds from a validated state: opens each token once, resolves each queue once.
    pub fn build(
        state: &State,
        key: &MasterKey,
        dispatcher: &Dispatcher,
    ) -> Result<Snapshot, BuildError> {
        let mut integrations = HashMap::with_capacity(state.integrations.len());
        for i in &state.integrations {
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
            let entry = IntegrationEntry {
                id: Arc::from(i.id.as_str()),
                org: Arc::from(i.org.as_str()),
                account_sid: i.account_sid.clone().into_boxed_str(),
                active: i.status == IntegrationStatus::Active,
                keys,
            };
            integrations.insert(i.id.as_str(), Arc::new(entry));
        }
        let mut queues: HashMap<&str, Arc<QueueHandle>> = HashMap::new();
        let mut numbers =
            NumberMap::with_capacity_and_hasher(state.numbers.len(), Default::default());
        for n in &state.numbers {
            let queue = match queues.get(n.queue.as_str()) {
                Some(q) => q.clone(),
                None => {
                    let q = dispatcher
                        .queue(&n.queue)
                        .map_err(|source| BuildError::Queue {
                            queue: n.queue.clone(),
                            source,
                        })?;
                    queues.insert(&n.queue, q.clone());
                    q
                }
            };
            let routing = match n.status {
                NumberStatus::Active => Routing::Active,
                NumberStatus::Disabled => Routing::Disabled,
                NumberStatus::Provisioning => Routing::Provisioning,
            };
            let entry = NumberEntry {
                integration: integrations[n.integration_id.as_str()].clone(),
                queue,
                routing,
                compliance: n
                    .compliance
                    .as_ref()
                    .map(|c| Arc::new(CompiledCompliance::compile(c))),
            };
            numbers.insert(n.sender_id.clone().into_boxed_str(), entry);
        }
        Ok(Snapshot {
            version: state.version,
            built_at: SystemTime::now(),
            numbers,
        })
    }

    /// The entry of one of our numbers, as Twilio writes it in `To`/`From`.
    pub fn lookup(&self, number: &str) -> Option<&NumberEntry> {
        self.numbers.get(number)
    }

    /// How many numbers are routed by this snapshot.
    pub fn len(&self) -> usize {
        self.numbers.len()
    }

    /// True when no number is in the inventory.
    pub fn is_empty(&self) -> bool {
        self.numbers.is_empty()
    }
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
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// Makes a built snapshot live for every following request.
    pub fn publish(&self, snapshot: Snapshot) {
        let (version, size) = (snapshot.version, snapshot.len());
        self.current.store(Arc::new(snapshot));
        metrics::gauge!("sms_ingress_snapshot_version").set(version as f64);
        metrics::gauge!("sms_ingress_snapshot_numbers").set(size as f64);
        metrics::gauge!("sms_ingress_snapshot_loaded_timestamp_seconds").set(unix_now());
        tracing::info!(version, numbers = size, "inventory snapshot swapped in");
    }
}

/// Seconds since the Unix epoch, for age gauges.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::crypto::Secret;
    use crate::control::state::{Integration, Number, NumberType};
    use crate::dispatch::SinkFactory;
    use crate::envelope::Envelope;
    use crate::sink::QueueSink;

    struct Null;
    impl QueueSink for Null {
        fn write_batch(&mut self, _: &[&Envelope]) -> Result<(), SinkError> {
            Ok(())
        }
    }

    fn fixture(n: usize) -> (State, MasterKey, Dispatcher) {
        let mk = MasterKey::from_base64(&MasterKey::generate_base64().unwrap()).unwrap();
        let integ = Integration {
            id: "int-1".into(),
            org: "org-a".into(),
            name: String::new(),
            notes: String::new(),
            account_sid: format!("AC{}", "b".repeat(32)),
            auth_token: mk.seal(&Secret::new("tok"), "int-1").unwrap(),
            next_auth_token: Some(mk.seal(&Secret::new("tok2"), "int-1").unwrap()),
            status: IntegrationStatus::Active,
        };
        let numbers = (0..n)
            .map(|i| Number {
                sender_id: format!("+1555{i:07}"),
                kind: NumberType::Mobile,
                country: "US".into(),
                integration_id: "int-1".into(),
                queue: format!("q{}", i % 3),
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
        let factory: SinkFactory = Box::new(|_| Ok(Box::new(Null)));
        (state, mk, Dispatcher::new(factory, 8, 8))
    }

    #[test]
    fn build_and_lookup() {
        let (state, mk, d) = fixture(10);
        let snap = Snapshot::build(&state, &mk, &d).unwrap();
        assert_eq!((snap.version, snap.len()), (7, 10));
        let e = snap.lookup("+15550000004").unwrap();
        assert_eq!(&**e.queue.name(), "q1");
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
    fn wrong_master_key_fails_build() {
        let (state, _, d) = fixture(1);
        let other = MasterKey::from_base64(&MasterKey::generate_base64().unwrap()).unwrap();
        assert!(matches!(
            Snapshot::build(&state, &other, &d),
            Err(BuildError::Token { .. })
        ));
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

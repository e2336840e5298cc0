//! The last signature rejections of each integration, so a tenant admin facing Twilio's
//! 11200/57012 can see what we verified against: when, our number, the reason, the URL
//! forms and keys tried, the key the settings header named, whether `AccountSid` matched.
//! Bounded per integration and in integrations; never a token, a key or a body.

use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// Rejections kept per integration (the newest).
pub(crate) const PER_INTEGRATION: usize = 20;
/// Integrations with a ring at once; past it, the one whose last rejection is oldest goes.
const MAX_INTEGRATIONS: usize = 10_000;

/// One rejected signature.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Rejection {
    /// RFC 3339, UTC, milliseconds.
    pub(crate) at: String,
    /// Our number the webhook was for.
    pub(crate) number: String,
    /// `signature_invalid`, `signature_key_unknown`, `signature_algorithm_unsupported`,
    /// `signature_missing` or `account_mismatch`.
    pub(crate) reason: &'static str,
    /// The URL verified against (the public URL and the request's path and query).
    pub(crate) url: String,
    /// Every URL form tried (as configured, port removed or default port added).
    pub(crate) urls_tried: Vec<String>,
    /// The keys tried, by name: `auth_token`, `next_auth_token`, or a SharedKey id.
    pub(crate) keys_tried: Vec<String>,
    /// The key id and algorithm `X-Twilio-Webhooks-Signature-Settings` named, if sent.
    pub(crate) key_named: Option<String>,
    pub(crate) algorithm_named: Option<String>,
    /// Whether the body's `AccountSid` is the integration's.
    pub(crate) account_sid_matched: bool,
}

/// One integration's ring, with the tick of its last rejection.
type Ring = (u64, VecDeque<Rejection>);

/// The rings, by integration id.
#[derive(Default)]
pub(crate) struct Rejections {
    rings: Mutex<HashMap<Arc<str>, Ring>>,
    /// Bumped per rejection, to find the ring rejected longest ago.
    clock: std::sync::atomic::AtomicU64,
}

impl Rejections {
    /// Keeps `r` as the newest rejection of `integration`.
    pub(crate) fn record(&self, integration: &Arc<str>, r: Rejection) {
        let tick = self
            .clock
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut rings = self
            .rings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !rings.contains_key(integration) && rings.len() >= MAX_INTEGRATIONS {
            if let Some(oldest) = rings
                .iter()
                .min_by_key(|(_, (t, _))| *t)
                .map(|(k, _)| k.clone())
            {
                rings.remove(&oldest);
            }
        }
        let (last, ring) = rings.entry(integration.clone()).or_default();
        *last = tick;
        if ring.len() == PER_INTEGRATION {
            ring.pop_front();
        }
        ring.push_back(r);
    }

    /// The integration's rejections, newest first.
    pub(crate) fn of(&self, integration: &str) -> Vec<Rejection> {
        let rings = self
            .rings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        rings
            .get(integration)
            .map(|(_, ring)| ring.iter().rev().cloned().collect())
            .unwrap_or_default()
    }

    /// Drops a deleted integration's ring.
    pub(crate) fn forget(&self, integration: &str) {
        self.rings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(integration);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejection(n: usize) -> Rejection {
        Rejection {
            at: n.to_string(),
            number: "+1".into(),
            reason: "signature_invalid",
            url: "u".into(),
            urls_tried: vec![],
            keys_tried: vec![],
            key_named: None,
            algorithm_named: None,
            account_sid_matched: true,
        }
    }

    #[test]
    fn rings_are_bounded_per_integration_and_newest_first() {
        let r = Rejections::default();
        let a: Arc<str> = Arc::from("a");
        for n in 0..PER_INTEGRATION + 5 {
            r.record(&a, rejection(n));
        }
        let kept = r.of("a");
        assert_eq!(kept.len(), PER_INTEGRATION);
        assert_eq!(kept[0].at, (PER_INTEGRATION + 4).to_string());
        assert!(r.of("b").is_empty());
        r.forget("a");
        assert!(r.of("a").is_empty());
    }
}

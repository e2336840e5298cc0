//! Fixtures built in code: an envelope as a real webhook makes it, a varied series of
//! them, integrations and numbers of the state, a master key, and a sink that keeps
//! nothing. One file serves the service's own unit tests (included with `#[path]`) and,
//! through this crate, the integration tests, benches and the load test; its paths name
//! the service's modules through `crate::`, which this crate re-exports.

use crate::envelope::{ComplianceAction, Envelope, Kind};
use crate::model::crypto::{MasterKey, Sealed};
use crate::model::state::{Integration, IntegrationStatus, Number, NumberStatus, NumberType};
use crate::sink::{QueueSink, SinkError};
use bytes::Bytes;

/// An inbound envelope with every field set the way a real webhook sets it.
pub fn envelope() -> Envelope {
    Envelope {
        kind: Kind::Inbound,
        received_at_ms: 1_795_716_000_123,
        org: "org-1".into(),
        integration_id: "int-1".into(),
        queue: "q1".into(),
        number: "+15550001111".into(),
        from: "+15552223333".into(),
        to: "+15550001111".into(),
        message_sid: "SM0123456789abcdef0123456789abcdef".into(),
        message_status: None,
        account_sid: "AC0123456789abcdef0123456789abcdef".into(),
        compliance: None,
        idempotency_token: None,
        signature: "c2lnbmF0dXJl".into(),
        signed_url: "https://sms.example.com/mo".into(),
        body: Bytes::from_static(b"Body=Hello+%C3%A9&From=%2B15552223333"),
    }
}

/// The delivery of MessageSid `sid`: a report with `status`, else an inbound message.
pub fn delivery(sid: &str, status: Option<&str>) -> Envelope {
    Envelope {
        kind: if status.is_some() {
            Kind::Status
        } else {
            Kind::Inbound
        },
        message_sid: sid.into(),
        message_status: status.map(str::to_string),
        ..envelope()
    }
}

/// The `i`th of a varied series on queue `q1`: kinds, statuses, compliance actions,
/// idempotency tokens and non-UTF-8 bodies alternate with `i`.
pub fn envelope_n(i: usize) -> Envelope {
    Envelope {
        kind: if i % 2 == 0 {
            Kind::Inbound
        } else {
            Kind::Status
        },
        received_at_ms: 1_795_716_000_000 + i as i64,
        message_sid: format!("SM{i:032}"),
        message_status: (i % 2 == 1).then(|| "delivered".to_owned()),
        compliance: (i % 3 == 0).then_some(ComplianceAction::Help),
        idempotency_token: (i % 4 == 0).then(|| format!("tok-{i}")),
        signature: "c2ln".into(),
        body: if i % 5 == 4 {
            Bytes::from(vec![0xff, 0xfe, i as u8])
        } else {
            Bytes::from(format!("Body=message+{i}&To=%2B15550001111"))
        },
        ..envelope()
    }
}

/// A sealed value that is well-formed but opens under no key (for state-shape tests).
pub fn sealed_placeholder() -> Sealed {
    Sealed {
        nonce: "AAAAAAAAAAAAAAAA".into(),
        ciphertext: "AAAA".into(),
    }
}

/// An active integration of `org` (its token a placeholder that opens under no key).
pub fn integration(id: &str, org: &str) -> Integration {
    Integration {
        id: id.into(),
        org: org.into(),
        name: id.into(),
        notes: String::new(),
        account_sid: format!("AC{}", "a".repeat(32)),
        auth_token: sealed_placeholder(),
        next_auth_token: None,
        status: IntegrationStatus::Active,
        signing_keys: Vec::new(),
    }
}

/// An active local US number of integration `int-1` on queue `q`.
pub fn number(sender_id: &str) -> Number {
    Number {
        sender_id: sender_id.into(),
        kind: NumberType::Local,
        country: "US".into(),
        integration_id: "int-1".into(),
        queue: "q".into(),
        status: NumberStatus::Active,
        compliance: None,
    }
}

/// A fresh random master key.
pub fn master_key() -> MasterKey {
    MasterKey::from_base64(&MasterKey::generate_base64().expect("random key"))
        .expect("a generated key parses")
}

/// A sink that acknowledges every batch and keeps nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NullSink;

impl QueueSink for NullSink {
    fn write_batch(&mut self, _: &[&Envelope]) -> Result<(), SinkError> {
        Ok(())
    }
}

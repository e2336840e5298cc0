//! The envelope: what the pipeline hands to a sink for one accepted webhook, carrying the
//! original signed bytes so that a consumer can re-verify it.

use bytes::Bytes;
use std::sync::Arc;

/// Which Twilio webhook produced the envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A mobile-originated message (`/mo`); our number is `To`.
    Inbound,
    /// A delivery report (`/status`); our number is `From`.
    Status,
}

impl Kind {
    /// The name used in subjects, metrics and NDJSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Inbound => "inbound",
            Kind::Status => "status",
        }
    }
}

/// A short-code compliance keyword that matched the whole body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComplianceAction {
    Help,
    OptOut,
    ReOptIn,
}

impl ComplianceAction {
    /// The name used in NDJSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ComplianceAction::Help => "help",
            ComplianceAction::OptOut => "opt_out",
            ComplianceAction::ReOptIn => "re_opt_in",
        }
    }
}

/// One accepted webhook, as a sink stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub kind: Kind,
    /// Milliseconds since the Unix epoch, UTC, when the request was received.
    pub received_at_ms: i64,
    pub org: Arc<str>,
    pub integration_id: Arc<str>,
    pub queue: Arc<str>,
    /// Our number: `To` for inbound, `From` for status.
    pub number: String,
    pub from: String,
    pub to: String,
    pub message_sid: String,
    /// Only set for delivery reports; part of the dedup key.
    pub message_status: Option<String>,
    pub account_sid: String,
    pub compliance: Option<ComplianceAction>,
    /// `I-Twilio-Idempotency-Token`, if Twilio sent one.
    pub idempotency_token: Option<String>,
    /// `X-Twilio-Signature` exactly as received.
    pub signature: String,
    /// The URL whose signature matched.
    pub signed_url: String,
    /// The form body, byte for byte as received.
    pub body: Bytes,
}

impl Envelope {
    /// The key under which retries of the same delivery collapse (`MessageSid`, plus `MessageStatus` for reports).
    pub fn dedup_key(&self) -> String {
        match &self.message_status {
            Some(st) => format!("{}:{}", self.message_sid, st),
            None => self.message_sid.clone(),
        }
    }
}

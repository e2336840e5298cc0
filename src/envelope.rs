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
    /// The key under which retries of the same delivery collapse: `AccountSid`,
    /// `MessageSid`, and `MessageStatus` for reports — scoped by the account, so one
    /// tenant can never suppress another's message by reusing its `MessageSid`.
    pub fn dedup_key(&self) -> String {
        // Pushed, not format!ted: this runs on every webhook.
        let status = self.message_status.as_deref();
        let len = self.account_sid.len() + self.message_sid.len() + status.map_or(0, str::len) + 2;
        let mut key = String::with_capacity(len);
        key.push_str(&self.account_sid);
        key.push(':');
        key.push_str(&self.message_sid);
        if let Some(st) = status {
            key.push(':');
            key.push_str(st);
        }
        key
    }
}

/// The codec version written first in every encoded envelope.
pub const ENCODING_VERSION: u8 = 1;

/// Why bytes are not an encoded envelope; decoding untrusted input returns this, never panics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unsupported envelope encoding version {0}")]
    UnsupportedVersion(u8),
    #[error("unknown envelope kind {0}")]
    BadKind(u8),
    #[error("unknown compliance action {0}")]
    BadCompliance(u8),
    #[error("presence flag of {field} is {value}, expected 0 or 1")]
    BadFlag { field: &'static str, value: u8 },
    #[error("envelope truncated in {field}")]
    Truncated { field: &'static str },
    #[error("{field} is not valid UTF-8")]
    InvalidUtf8 { field: &'static str },
    #[error("{0} trailing bytes after the envelope")]
    TrailingBytes(usize),
}

impl Kind {
    fn to_byte(self) -> u8 {
        match self {
            Kind::Inbound => 0,
            Kind::Status => 1,
        }
    }

    fn from_byte(b: u8) -> Result<Kind, DecodeError> {
        match b {
            0 => Ok(Kind::Inbound),
            1 => Ok(Kind::Status),
            other => Err(DecodeError::BadKind(other)),
        }
    }
}

fn compliance_to_byte(c: Option<ComplianceAction>) -> u8 {
    match c {
        None => 0,
        Some(ComplianceAction::Help) => 1,
        Some(ComplianceAction::OptOut) => 2,
        Some(ComplianceAction::ReOptIn) => 3,
    }
}

fn compliance_from_byte(b: u8) -> Result<Option<ComplianceAction>, DecodeError> {
    match b {
        0 => Ok(None),
        1 => Ok(Some(ComplianceAction::Help)),
        2 => Ok(Some(ComplianceAction::OptOut)),
        3 => Ok(Some(ComplianceAction::ReOptIn)),
        other => Err(DecodeError::BadCompliance(other)),
    }
}

fn put_field(out: &mut Vec<u8>, field: &[u8]) {
    // Fields are bounded by the request size limit; an impossible >4 GiB field encodes an
    // inconsistent length that decode rejects, and the spool's record limit rejects first.
    let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(field);
}

fn put_optional(out: &mut Vec<u8>, field: Option<&str>) {
    match field {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_field(out, s.as_bytes());
        }
    }
}

/// A bounds-checked cursor over untrusted bytes.
struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let (head, rest) = self
            .buf
            .split_at_checked(n)
            .ok_or(DecodeError::Truncated { field })?;
        self.buf = rest;
        Ok(head)
    }

    fn byte(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }

    fn i64_le(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        let raw = self.take(8, field)?;
        Ok(i64::from_le_bytes(raw.try_into().expect("took 8 bytes")))
    }

    fn field(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let raw = self.take(4, field)?;
        let len = u32::from_le_bytes(raw.try_into().expect("took 4 bytes"));
        let len = usize::try_from(len).map_err(|_| DecodeError::Truncated { field })?;
        self.take(len, field)
    }

    fn str(&mut self, field: &'static str) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.field(field)?).map_err(|_| DecodeError::InvalidUtf8 { field })
    }

    fn optional(&mut self, field: &'static str) -> Result<Option<&'a str>, DecodeError> {
        match self.byte(field)? {
            0 => Ok(None),
            1 => self.str(field).map(Some),
            value => Err(DecodeError::BadFlag { field, value }),
        }
    }
}

/// Formats epoch milliseconds as RFC 3339 UTC with milliseconds; `None` outside 1970..=9999.
fn rfc3339_millis(ms: i64) -> Option<String> {
    const MAX_MS: i64 = 253_402_300_800_000 - 1;
    if !(0..=MAX_MS).contains(&ms) {
        return None;
    }
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
    Some(humantime::format_rfc3339_millis(at).to_string())
}

impl Envelope {
    /// Appends the compact binary form a sink stores (see `decode` for the layout).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(ENCODING_VERSION);
        out.push(self.kind.to_byte());
        out.push(compliance_to_byte(self.compliance));
        out.extend_from_slice(&self.received_at_ms.to_le_bytes());
        put_field(out, self.org.as_bytes());
        put_field(out, self.integration_id.as_bytes());
        put_field(out, self.queue.as_bytes());
        put_field(out, self.number.as_bytes());
        put_field(out, self.from.as_bytes());
        put_field(out, self.to.as_bytes());
        put_field(out, self.message_sid.as_bytes());
        put_optional(out, self.message_status.as_deref());
        put_field(out, self.account_sid.as_bytes());
        put_optional(out, self.idempotency_token.as_deref());
        put_field(out, self.signature.as_bytes());
        put_field(out, self.signed_url.as_bytes());
        put_field(out, &self.body);
    }

    /// The length `encode` would write, without writing it (checked against the record
    /// limit before an envelope joins a batch).
    pub fn encoded_len(&self) -> usize {
        let field = |b: &[u8]| 4 + b.len();
        let optional = |v: Option<&str>| 1 + v.map_or(0, |s| field(s.as_bytes()));
        3 + 8
            + [
                self.org.as_bytes(),
                self.integration_id.as_bytes(),
                self.queue.as_bytes(),
                self.number.as_bytes(),
                self.from.as_bytes(),
                self.to.as_bytes(),
                self.message_sid.as_bytes(),
                self.account_sid.as_bytes(),
                self.signature.as_bytes(),
                self.signed_url.as_bytes(),
                &self.body,
            ]
            .iter()
            .map(|b| field(b))
            .sum::<usize>()
            + optional(self.message_status.as_deref())
            + optional(self.idempotency_token.as_deref())
    }

    /// Reads what `encode` wrote, rejecting anything else without panicking.
    ///
    /// Layout: version (1), kind (0 inbound, 1 status), compliance (0 none, 1 help,
    /// 2 opt_out, 3 re_opt_in), i64 LE `received_at_ms`, then u32-LE-length-prefixed
    /// fields org, integration_id, queue, number, from, to, message_sid, message_status
    /// (flag byte 0/1, field only if 1), account_sid, idempotency_token (flag, field),
    /// signature, signed_url, body.
    pub fn decode(buf: &[u8]) -> Result<Envelope, DecodeError> {
        let mut c = Cursor { buf };
        let version = c.byte("version")?;
        if version != ENCODING_VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let kind = Kind::from_byte(c.byte("kind")?)?;
        let compliance = compliance_from_byte(c.byte("compliance")?)?;
        let received_at_ms = c.i64_le("received_at_ms")?;
        let env = Envelope {
            kind,
            received_at_ms,
            org: c.str("org")?.into(),
            integration_id: c.str("integration_id")?.into(),
            queue: c.str("queue")?.into(),
            number: c.str("number")?.to_owned(),
            from: c.str("from")?.to_owned(),
            to: c.str("to")?.to_owned(),
            message_sid: c.str("message_sid")?.to_owned(),
            message_status: c.optional("message_status")?.map(str::to_owned),
            account_sid: c.str("account_sid")?.to_owned(),
            compliance,
            idempotency_token: c.optional("idempotency_token")?.map(str::to_owned),
            signature: c.str("signature")?.to_owned(),
            signed_url: c.str("signed_url")?.to_owned(),
            body: Bytes::copy_from_slice(c.field("body")?),
        };
        if !c.buf.is_empty() {
            return Err(DecodeError::TrailingBytes(c.buf.len()));
        }
        Ok(env)
    }

    /// The JSON object a consumer gets (a `spool tail` line, a delivery's body): where the
    /// record is (`offset`, and `next_offset` to resume after it), the envelope's fields,
    /// and `params`, every form field decoded (name → value, or a list of values for a
    /// repeated name), so a consumer never parses the raw form. `received_at` is null if
    /// the timestamp is outside years 1970..=9999; a non-UTF-8 body goes to `body_base64`
    /// (and `params` is null).
    pub fn to_json(&self, offset: u64, next_offset: u64) -> serde_json::Value {
        serde_json::to_value(self.view(offset, next_offset)).expect("a view serialises")
    }

    /// The same object, serialised straight to bytes (a delivery's body).
    pub fn to_json_bytes(&self, offset: u64, next_offset: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() * 2 + 768);
        serde_json::to_writer(&mut out, &self.view(offset, next_offset))
            .expect("a view serialises");
        out
    }

    fn view(&self, offset: u64, next_offset: u64) -> View<'_> {
        let text = std::str::from_utf8(&self.body).ok();
        View {
            offset,
            next_offset,
            kind: self.kind.as_str(),
            received_at: rfc3339_millis(self.received_at_ms),
            org: &self.org,
            integration_id: &self.integration_id,
            queue: &self.queue,
            number: &self.number,
            from: &self.from,
            to: &self.to,
            message_sid: &self.message_sid,
            message_status: self.message_status.as_deref(),
            account_sid: &self.account_sid,
            compliance_action: self.compliance.map(ComplianceAction::as_str),
            idempotency_token: self.idempotency_token.as_deref(),
            signature: &self.signature,
            signed_url: &self.signed_url,
            body: text,
            body_base64: text.is_none().then(|| {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.encode(&self.body)
            }),
            params: Params(text.and_then(|_| crate::form::Form::parse(&self.body).ok())),
        }
    }

    /// The conversation a record belongs to: our number and the customer's (`From` of an
    /// inbound message, `To` of a delivery report). Delivery keeps its records in order.
    pub fn conversation(&self) -> (&str, &str) {
        let customer = match self.kind {
            Kind::Inbound => &self.from,
            Kind::Status => &self.to,
        };
        (&self.number, customer)
    }

    /// The Standard Webhooks `webhook-id` of this Twilio delivery: the same for every
    /// redelivery and for a Twilio retry stored twice, as it is built from `AccountSid`,
    /// `MessageSid` and, for reports, `MessageStatus` (hashed, so any value is header-safe).
    pub fn webhook_id(&self) -> String {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(self.account_sid.as_bytes());
        ctx.update(b"\0");
        ctx.update(self.message_sid.as_bytes());
        if let Some(status) = &self.message_status {
            ctx.update(b"\0");
            ctx.update(status.as_bytes());
        }
        format!("msg_{}", hex::encode(&ctx.finish().as_ref()[..16]))
    }
}

/// The consumer's view of an envelope (see `Envelope::to_json`), borrowed, in key order.
#[derive(serde::Serialize)]
struct View<'a> {
    account_sid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_base64: Option<String>,
    compliance_action: Option<&'static str>,
    from: &'a str,
    idempotency_token: Option<&'a str>,
    integration_id: &'a str,
    kind: &'static str,
    message_sid: &'a str,
    message_status: Option<&'a str>,
    next_offset: u64,
    number: &'a str,
    offset: u64,
    org: &'a str,
    params: Params<'a>,
    queue: &'a str,
    received_at: Option<String>,
    signature: &'a str,
    signed_url: &'a str,
    to: &'a str,
}

/// A form body's fields as a JSON object: name → value, or a list of values for a
/// repeated name (the form keeps pairs sorted by name, then value); null if not a form.
struct Params<'a>(Option<crate::form::Form<'a>>);

impl serde::Serialize for Params<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let Some(form) = &self.0 else {
            return s.serialize_none();
        };
        let pairs: Vec<(&str, &str)> = form.pairs().collect();
        let mut map = s.serialize_map(None)?;
        let mut i = 0;
        while i < pairs.len() {
            let name = pairs[i].0;
            let run = pairs[i..].iter().take_while(|(n, _)| *n == name).count();
            if run == 1 {
                map.serialize_entry(name, pairs[i].1)?;
            } else {
                let values: Vec<&str> = pairs[i..i + run].iter().map(|(_, v)| *v).collect();
                map.serialize_entry(name, &values)?;
            }
            i += run;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn encoded_len_is_what_encode_writes() {
        for env in [
            crate::fixtures::envelope(),
            Envelope {
                message_status: Some("delivered".into()),
                idempotency_token: Some("tok".into()),
                ..crate::fixtures::envelope_n(7)
            },
        ] {
            let mut out = Vec::new();
            env.encode(&mut out);
            assert_eq!(env.encoded_len(), out.len());
        }
    }

    use super::*;

    fn sample(status: Option<&str>, token: Option<&str>, c: Option<ComplianceAction>) -> Envelope {
        Envelope {
            compliance: c,
            idempotency_token: token.map(Into::into),
            ..crate::fixtures::delivery("SM0123456789abcdef0123456789abcdef", status)
        }
    }

    fn all_variants() -> Vec<Envelope> {
        let mut out = Vec::new();
        for status in [None, Some("delivered"), Some("")] {
            for token in [None, Some("tok-1")] {
                for c in [
                    None,
                    Some(ComplianceAction::Help),
                    Some(ComplianceAction::OptOut),
                    Some(ComplianceAction::ReOptIn),
                ] {
                    out.push(sample(status, token, c));
                }
            }
        }
        out
    }

    fn encoded(env: &Envelope) -> Vec<u8> {
        let mut buf = Vec::new();
        env.encode(&mut buf);
        buf
    }

    #[test]
    fn round_trips_every_optional_set_and_unset() {
        for env in all_variants() {
            assert_eq!(Envelope::decode(&encoded(&env)).unwrap(), env);
        }
        let mut binary = sample(None, None, None);
        binary.body = Bytes::from_static(&[0, 0xff, 0xfe, 10]);
        binary.received_at_ms = -5;
        assert_eq!(Envelope::decode(&encoded(&binary)).unwrap(), binary);
    }

    #[test]
    fn every_truncation_is_an_error() {
        for env in all_variants() {
            let buf = encoded(&env);
            for cut in 0..buf.len() {
                assert!(
                    Envelope::decode(&buf[..cut]).is_err(),
                    "prefix {cut} decoded"
                );
            }
        }
    }

    #[test]
    fn rejects_trailing_bytes_bad_utf8_and_bad_tags() {
        let env = sample(Some("sent"), Some("t"), None);
        let mut buf = encoded(&env);
        buf.push(0);
        assert_eq!(Envelope::decode(&buf), Err(DecodeError::TrailingBytes(1)));

        let mut buf = encoded(&env);
        buf[0] = 2;
        assert_eq!(
            Envelope::decode(&buf),
            Err(DecodeError::UnsupportedVersion(2))
        );
        let mut buf = encoded(&env);
        buf[1] = 7;
        assert_eq!(Envelope::decode(&buf), Err(DecodeError::BadKind(7)));
        let mut buf = encoded(&env);
        buf[2] = 4;
        assert_eq!(Envelope::decode(&buf), Err(DecodeError::BadCompliance(4)));

        // The org field starts after the 11-byte header and its 4-byte length.
        let mut buf = encoded(&env);
        buf[15] = 0xff;
        assert_eq!(
            Envelope::decode(&buf),
            Err(DecodeError::InvalidUtf8 { field: "org" })
        );
    }

    /// A small deterministic generator, so the garbage test needs no extra crate.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let len = (rng.next() % 300) as usize;
            let buf: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if let Ok(env) = Envelope::decode(&buf) {
                let _ = env.to_json(0, 1);
            }
        }
        // Mutations of valid encodings reach deeper into the decoder.
        let base = encoded(&sample(Some("delivered"), Some("tok"), None));
        for _ in 0..20_000 {
            let mut buf = base.clone();
            for _ in 0..=(rng.next() % 4) {
                let i = (rng.next() as usize) % buf.len();
                buf[i] = rng.next() as u8;
            }
            if let Ok(env) = Envelope::decode(&buf) {
                let _ = env.to_json(0, 1);
            }
        }
    }

    #[test]
    fn json_has_the_documented_keys() {
        let env = sample(None, None, Some(ComplianceAction::OptOut));
        let v = env.to_json(42, 99);
        assert_eq!(v["offset"], 42);
        assert_eq!(v["next_offset"], 99);
        assert_eq!(
            v["params"],
            serde_json::json!({"Body": "Hello é", "From": "+15552223333"})
        );
        assert_eq!(v["kind"], "inbound");
        assert_eq!(v["received_at"], "2026-11-26T18:00:00.123Z");
        assert_eq!(v["message_status"], serde_json::Value::Null);
        assert_eq!(v["idempotency_token"], serde_json::Value::Null);
        assert_eq!(v["compliance_action"], "opt_out");
        assert_eq!(v["body"], "Body=Hello+%C3%A9&From=%2B15552223333");
        assert!(v.get("body_base64").is_none());

        let mut bin = sample(Some("failed"), Some("t"), None);
        bin.body = Bytes::from_static(&[0xff, 0x00]);
        bin.received_at_ms = -1;
        let v = bin.to_json(0, 1);
        assert_eq!(v["kind"], "status");
        assert_eq!(v["message_status"], "failed");
        assert_eq!(v["idempotency_token"], "t");
        assert_eq!(v["body_base64"], "/wA=");
        assert!(v.get("body").is_none());
        assert!(v["params"].is_null());
        assert_eq!(v["received_at"], serde_json::Value::Null);
    }

    #[test]
    fn repeated_names_give_a_list_and_keys_are_per_delivery() {
        let mut env = sample(None, None, None);
        env.body = Bytes::from_static(b"Tag=b&Tag=a&MediaUrl0=x&Tag=a");
        assert_eq!(
            env.to_json(0, 1)["params"],
            serde_json::json!({"MediaUrl0": "x", "Tag": ["a", "a", "b"]})
        );
        assert_eq!(env.conversation(), ("+15550001111", "+15552223333"));
        let report = sample(Some("delivered"), None, None);
        assert_eq!(report.conversation(), ("+15550001111", "+15550001111"));

        let id = env.webhook_id();
        assert!(id.starts_with("msg_") && id.len() == 36, "{id}");
        let mut retry = env.clone();
        retry.received_at_ms += 5_000;
        retry.idempotency_token = Some("another attempt".into());
        assert_eq!(
            retry.webhook_id(),
            id,
            "a Twilio retry is the same delivery"
        );
        let mut other_account = env.clone();
        other_account.account_sid = "AC1123456789abcdef0123456789abcdef".into();
        assert_ne!(other_account.webhook_id(), id, "scoped by AccountSid");
        let sent = sample(Some("sent"), None, None);
        assert_ne!(sent.webhook_id(), report.webhook_id(), "one per status");
    }
}

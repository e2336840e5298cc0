//! The workload: Twilio webhooks as Twilio sends them — inbound SMS (GSM-7 and UCS-2,
//! 1–1,600 characters), MMS with up to 10 media, delivery-report sequences — signed with
//! the service's own `signature::compute` over `form::Form`, so signing cannot drift from
//! the verifier; plus configurable shares of bad signatures, unknown numbers, exact
//! retries of earlier deliveries, and of requests signed with a SharedKey (HMAC-SHA256)
//! instead of the Auth Token.

use crate::admin::unknown_number;
use crate::plan::Plan;
use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sms_ingress::form::Form;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Arc;

/// Shares of the request mix, each in 0..=1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mix {
    /// Of new deliveries: MMS (1–10 media).
    pub mms: f64,
    /// Of new deliveries: delivery reports (queued → sent → delivered / undelivered / failed).
    pub status: f64,
    /// Requests signed with a wrong token (403 expected).
    pub bad_signature: f64,
    /// Requests for a number not in the inventory (200, not stored).
    pub unknown_number: f64,
    /// Exact resends of an earlier delivery, as Twilio retries (200, stored once).
    pub retry: f64,
    /// Requests signed with the plan's SharedKey and the settings header naming it.
    pub shared_key: f64,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            mms: 0.1,
            status: 0.3,
            bad_signature: 0.0,
            unknown_number: 0.0,
            retry: 0.0,
            shared_key: 0.0,
        }
    }
}

/// What the service should do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// A new delivery: 200 once durable; the key is its dedup key (sid, or sid:status).
    Stored(String),
    /// A retry of the delivery with this key: 200, stored once in all.
    Duplicate(String),
    /// A wrong signature: 403.
    Forbidden,
    /// A number not in the inventory: 200 empty TwiML, nothing stored.
    Unknown,
}

impl Expect {
    /// The status code the SPEC prescribes for this request.
    pub fn expected_status(&self) -> u16 {
        match self {
            Expect::Forbidden => 403,
            _ => 200,
        }
    }

    /// The key that a 200 acknowledges as durable, if the request can be stored at all.
    pub fn ack_key(&self) -> Option<&str> {
        match self {
            Expect::Stored(k) | Expect::Duplicate(k) => Some(k),
            Expect::Forbidden | Expect::Unknown => None,
        }
    }
}

/// One webhook, ready to send.
#[derive(Debug, Clone)]
pub struct WebhookRequest {
    /// Request path (`/vendors/v1/twilio/{key}/mo` or `/status`).
    pub path: Arc<str>,
    /// The form body.
    pub body: Bytes,
    /// `X-Twilio-Signature`.
    pub signature: String,
    /// `I-Twilio-Idempotency-Token`, the same on a retry.
    pub idempotency_token: String,
    /// `X-Twilio-Webhooks-Signature-Settings`, when a SharedKey signed the request.
    pub signature_settings: Option<Arc<str>>,
    /// What the service should answer.
    pub expect: Expect,
}

/// A message body in the pool, already form-encoded.
#[derive(Debug, Clone)]
pub struct Text {
    /// The text as the handset sent it.
    pub raw: String,
    /// Form-encoded as Twilio posts it.
    pub encoded: String,
    /// `NumSegments`: GSM-7 160/153 septets, UCS-2 70/67 UTF-16 units.
    pub segments: u32,
}

const GSM_WORDS: &[&str] = &[
    "hello",
    "thanks",
    "my",
    "order",
    "is",
    "late",
    "can",
    "you",
    "call",
    "me",
    "back",
    "tomorrow",
    "please",
    "refund",
    "account",
    "number",
    "when",
    "will",
    "it",
    "arrive?",
    "OK",
    "yes",
    "no",
    "the",
    "delivery",
    "@home",
    "£5",
    "ticket",
    "#4711",
    "ASAP!",
    "help",
    "what",
    "time",
    "store",
    "open",
    "today.",
    "Regards,",
    "Anna",
    "(invoice)",
    "100%",
];
const UCS2_WORDS: &[&str] = &[
    "こんにちは",
    "ありがとう",
    "😀",
    "👍",
    "🎉",
    "Grüße",
    "über",
    "ça",
    "niño",
    "привет",
    "你好",
    "🙏",
    "❤️",
    "注文",
    "配達",
    "お願いします",
    "😂",
    "✅",
    "día",
    "спасибо",
];
const MEDIA_TYPES: &[&str] = &[
    "image/jpeg",
    "image/png",
    "image/gif",
    "video/mp4",
    "audio/mpeg",
    "text/vcard",
];

/// Percent-encodes a form value the way Twilio does (`+` for space).
pub fn form_encode(s: &str, out: &mut String) {
    sms_ingress::percent::encode_form(s, out)
}

/// Twilio's segment count for a body: GSM-7 if every char is in the basic set, else UCS-2.
pub fn segments(text: &str) -> u32 {
    let gsm = text.chars().all(is_gsm7);
    let (units, single, multi) = if gsm {
        (text.chars().count(), 160, 153)
    } else {
        (text.encode_utf16().count(), 70, 67)
    };
    if units <= single {
        1
    } else {
        units.div_ceil(multi) as u32
    }
}

/// The GSM 03.38 basic character set (enough of it for generated text).
fn is_gsm7(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || " @£$¥èéùìòÇØøÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ!\"#¤%&'()*+,-./:;<=>?¡ÄÖÑÜ§¿äöñüà\n\r".contains(c)
}

/// A text of exactly `chars` characters from one vocabulary.
fn text_of(rng: &mut SmallRng, chars: usize, ucs2: bool) -> String {
    let words = if ucs2 { UCS2_WORDS } else { GSM_WORDS };
    let mut s = String::new();
    if ucs2 {
        s.push_str(UCS2_WORDS[rng.random_range(0..UCS2_WORDS.len())]);
    }
    while s.chars().count() < chars {
        if !s.is_empty() {
            s.push(' ');
        }
        let pool = if ucs2 && rng.random_bool(0.5) {
            GSM_WORDS
        } else {
            words
        };
        s.push_str(pool[rng.random_range(0..pool.len())]);
    }
    s.chars().take(chars).collect()
}

/// Lengths like real traffic: mostly one segment, some long, a few up to 1,600.
fn text_len(rng: &mut SmallRng) -> usize {
    match rng.random_range(0..100) {
        0..60 => rng.random_range(1..=160),
        60..92 => rng.random_range(161..=918),
        _ => rng.random_range(919..=1600),
    }
}

/// A pool of bodies: a quarter UCS-2 (emoji, CJK, Cyrillic), the rest GSM-7.
pub fn text_pool(seed: u64, n: usize) -> Vec<Text> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let len = text_len(&mut rng);
            let ucs2 = rng.random_bool(0.25);
            let raw = text_of(&mut rng, len, ucs2);
            let mut encoded = String::with_capacity(raw.len() * 3);
            form_encode(&raw, &mut encoded);
            Text {
                segments: segments(&raw),
                raw,
                encoded,
            }
        })
        .collect()
}

/// What every connection's generator shares: the tenant, our numbers, the text pool.
#[derive(Debug)]
pub struct Workload {
    mo_path: Arc<str>,
    status_path: Arc<str>,
    mo_url: String,
    status_url: String,
    token: Vec<u8>,
    shared_key: Option<SharedKey>,
    account_sid: String,
    numbers: Vec<String>,
    texts: Vec<Text>,
    mix: Mix,
}

impl Workload {
    /// The workload of a plan; `seed` picks the text pool.
    pub fn new(plan: &Plan, mix: Mix, seed: u64) -> Workload {
        let base = plan.public_url.trim_end_matches('/');
        let mo_path = format!("/vendors/v1/twilio/{}/mo", plan.region_key);
        let status_path = format!("/vendors/v1/twilio/{}/status", plan.region_key);
        Workload {
            mo_url: format!("{base}{mo_path}"),
            status_url: format!("{base}{status_path}"),
            mo_path: mo_path.into(),
            status_path: status_path.into(),
            token: plan.auth_token.as_bytes().to_vec(),
            shared_key: plan.shared_key.as_ref().map(|k| SharedKey {
                secret: k.secret.as_bytes().to_vec(),
                settings: format!("key={},algorithm=HMAC_SHA256", k.id).into(),
            }),
            account_sid: plan.account_sid.clone(),
            numbers: plan.numbers.clone(),
            texts: text_pool(seed, 512),
            mix,
        }
    }
}

/// The plan's SharedKey, ready to sign with.
#[derive(Debug)]
struct SharedKey {
    secret: Vec<u8>,
    /// The settings header's value naming it.
    settings: Arc<str>,
}

/// One delivery-report sequence still to be reported.
#[derive(Debug)]
struct Sequence {
    sid: String,
    ours: String,
    customer: String,
    steps: VecDeque<(&'static str, Option<u32>)>,
}

/// Which delivery a new request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    Sms,
    Mms,
    Report,
}

/// A per-connection request generator (no shared state on the hot path).
#[derive(Debug)]
pub struct Generator {
    w: Arc<Workload>,
    rng: SmallRng,
    run_id: u32,
    conn: u32,
    seq: u64,
    recent: VecDeque<WebhookRequest>,
    reports: Vec<Sequence>,
}

/// Deliveries remembered per connection for retries.
const RECENT: usize = 32;
/// Delivery-report sequences interleaved per connection.
const OPEN_SEQUENCES: usize = 4;

impl Generator {
    /// The generator of connection `conn` of run `run_id` (which keeps MessageSids unique
    /// across runs, so that no run is answered from the service's dedup memory of another).
    pub fn new(w: Arc<Workload>, seed: u64, run_id: u32, conn: u32) -> Generator {
        Generator {
            w,
            rng: SmallRng::seed_from_u64(seed ^ (u64::from(conn) << 32 | 0x5eed)),
            run_id,
            conn,
            seq: 0,
            recent: VecDeque::with_capacity(RECENT),
            reports: Vec::new(),
        }
    }

    /// The next request of the mix.
    pub fn next_request(&mut self) -> WebhookRequest {
        let mix = self.w.mix;
        if !self.recent.is_empty() && self.rng.random_bool(mix.retry) {
            return self.retry();
        }
        let delivery = self.pick_delivery();
        let fault: f64 = self.rng.random();
        let unknown = fault < mix.unknown_number;
        let bad_sig = !unknown && fault < mix.unknown_number + mix.bad_signature;
        let req = match delivery {
            Delivery::Report => self.report(unknown, bad_sig),
            d => self.inbound(d == Delivery::Mms, unknown, bad_sig),
        };
        if matches!(req.expect, Expect::Stored(_)) {
            if self.recent.len() == RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back(req.clone());
        }
        req
    }

    fn pick_delivery(&mut self) -> Delivery {
        let r: f64 = self.rng.random();
        if r < self.w.mix.status {
            Delivery::Report
        } else if r < self.w.mix.status + self.w.mix.mms {
            Delivery::Mms
        } else {
            Delivery::Sms
        }
    }

    /// An exact resend of a recent delivery (same body, signature and idempotency token).
    fn retry(&mut self) -> WebhookRequest {
        let i = self.rng.random_range(0..self.recent.len());
        let mut req = self.recent[i].clone();
        if let Expect::Stored(key) = req.expect {
            req.expect = Expect::Duplicate(key);
        }
        req
    }

    fn sid(&mut self, prefix: &str) -> String {
        self.seq += 1;
        format!(
            "{prefix}{:08x}{:08x}{:016x}",
            self.run_id, self.conn, self.seq
        )
    }

    fn our_number(&mut self) -> String {
        let n = &self.w.numbers;
        n[self.rng.random_range(0..n.len())].clone()
    }

    fn customer(&mut self) -> String {
        format!("+1628{:07}", self.rng.random_range(2_000_000..10_000_000))
    }

    /// An inbound SMS or MMS (our number is `To`).
    fn inbound(&mut self, mms: bool, unknown: bool, bad_sig: bool) -> WebhookRequest {
        let sid = self.sid(if mms { "MM" } else { "SM" });
        let ours = if unknown {
            unknown_number(self.rng.random())
        } else {
            self.our_number()
        };
        let from = self.customer();
        let media = if mms {
            self.rng.random_range(1..=10)
        } else {
            0
        };
        let body = self.inbound_body(&sid, &ours, &from, media);
        let expect = expectation(unknown, bad_sig, sid);
        self.finish(true, body, expect)
    }

    fn inbound_body(&mut self, sid: &str, to: &str, from: &str, media: usize) -> String {
        let w = Arc::clone(&self.w);
        let text = &w.texts[self.rng.random_range(0..w.texts.len())];
        let mut b = String::with_capacity(600 + text.encoded.len() + media * 200);
        let _ = write!(b, "ToCountry=US&ToState=CA&SmsMessageSid={sid}&NumMedia={media}&ToCity=SAN+FRANCISCO&FromZip=94105&SmsSid={sid}&FromState=CA&SmsStatus=received&FromCity=SAN+FRANCISCO&Body=");
        b.push_str(&text.encoded);
        b.push_str("&FromCountry=US&To=");
        form_encode(to, &mut b);
        if self.rng.random_bool(0.3) {
            let _ = write!(b, "&MessagingServiceSid=MG{:032x}", u128::from(self.conn));
        }
        let _ = write!(
            b,
            "&ToZip=94105&NumSegments={}&MessageSid={sid}&AccountSid={}&From=",
            text.segments, w.account_sid
        );
        form_encode(from, &mut b);
        b.push_str("&ApiVersion=2010-04-01");
        for m in 0..media {
            let ctype = MEDIA_TYPES[self.rng.random_range(0..MEDIA_TYPES.len())];
            b.push_str(&format!("&MediaContentType{m}="));
            form_encode(ctype, &mut b);
            let url = format!(
                "https://api.twilio.com/2010-04-01/Accounts/{}/Messages/{sid}/Media/ME{:030x}{m:02}",
                w.account_sid,
                self.rng.random::<u64>()
            );
            b.push_str(&format!("&MediaUrl{m}="));
            form_encode(&url, &mut b);
        }
        b
    }

    /// The next step of a delivery-report sequence (our number is `From`).
    fn report(&mut self, unknown: bool, bad_sig: bool) -> WebhookRequest {
        if self.reports.len() < OPEN_SEQUENCES {
            let seq = self.new_sequence();
            self.reports.push(seq);
        }
        let i = self.rng.random_range(0..self.reports.len());
        let seq = &mut self.reports[i];
        let (status, error) = seq.steps.pop_front().expect("sequences are never empty");
        let (sid, ours, customer) = (seq.sid.clone(), seq.ours.clone(), seq.customer.clone());
        if seq.steps.is_empty() {
            self.reports.swap_remove(i);
        }
        let ours = if unknown {
            unknown_number(self.rng.random())
        } else {
            ours
        };
        let body = self.report_body(&sid, &ours, &customer, status, error);
        let expect = expectation(
            unknown,
            bad_sig,
            crate::verify::acked_key(&sid, Some(status)),
        );
        self.finish(false, body, expect)
    }

    /// queued → sent → delivered, or an undelivered / failed ending; now and then out of order.
    fn new_sequence(&mut self) -> Sequence {
        let mut steps: VecDeque<(&'static str, Option<u32>)> = match self.rng.random_range(0..10) {
            0 => [("queued", None), ("failed", Some(30003))].into(),
            1 => [
                ("queued", None),
                ("sent", None),
                ("undelivered", Some(30005)),
            ]
            .into(),
            _ => [("queued", None), ("sent", None), ("delivered", None)].into(),
        };
        if self.rng.random_bool(0.1) {
            let n = steps.len();
            steps.swap(n - 1, n - 2);
        }
        Sequence {
            sid: self.sid("SM"),
            ours: self.our_number(),
            customer: self.customer(),
            steps,
        }
    }

    fn report_body(
        &mut self,
        sid: &str,
        ours: &str,
        to: &str,
        status: &str,
        error: Option<u32>,
    ) -> String {
        let mut b = String::with_capacity(300);
        if let Some(code) = error {
            let _ = write!(b, "ErrorCode={code}&");
        }
        let _ = write!(
            b,
            "SmsSid={sid}&SmsStatus={status}&MessageStatus={status}&To="
        );
        form_encode(to, &mut b);
        let _ = write!(
            b,
            "&MessageSid={sid}&AccountSid={}&From=",
            self.w.account_sid
        );
        form_encode(ours, &mut b);
        b.push_str("&ApiVersion=2010-04-01");
        b
    }

    /// Signs the body (or mis-signs it) and wraps it up.
    fn finish(&mut self, mo: bool, body: String, expect: Expect) -> WebhookRequest {
        let (path, url) = if mo {
            (&self.w.mo_path, &self.w.mo_url)
        } else {
            (&self.w.status_path, &self.w.status_url)
        };
        let form = Form::parse(body.as_bytes()).expect("generated bodies are valid forms");
        // Drawn only when the share is set, so runs without it keep their request stream.
        let shared = match &self.w.shared_key {
            Some(k)
                if self.w.mix.shared_key > 0.0 && self.rng.random_bool(self.w.mix.shared_key) =>
            {
                Some(k)
            }
            _ => None,
        };
        let forged = expect == Expect::Forbidden;
        let (signature, signature_settings) = match shared {
            Some(k) => {
                let secret: &[u8] = if forged {
                    b"not-the-shared-key"
                } else {
                    &k.secret
                };
                let sig = sms_ingress::signature::compute_shared(url, &form, secret);
                (sig, Some(Arc::clone(&k.settings)))
            }
            None => {
                let token: &[u8] = if forged {
                    b"not-the-auth-token"
                } else {
                    &self.w.token
                };
                (sms_ingress::signature::compute(url, &form, token), None)
            }
        };
        let idempotency_token = format!("{:032x}-{}", self.rng.random::<u128>(), self.seq);
        WebhookRequest {
            path: Arc::clone(path),
            body: Bytes::from(body),
            signature,
            idempotency_token,
            signature_settings,
            expect,
        }
    }
}

/// The expectation of a new delivery under its fault.
fn expectation(unknown: bool, bad_sig: bool, key: String) -> Expect {
    if unknown {
        Expect::Unknown
    } else if bad_sig {
        Expect::Forbidden
    } else {
        Expect::Stored(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sms_ingress::signature::{key, shared_key, verify, PublicUrl};

    fn plan() -> Plan {
        Plan {
            public_url: "https://sms.loadtest.example".into(),
            region_key: "a906d2848ad146028e8805a8bbaa24d3".into(),
            account_sid: format!("AC{}", "1".repeat(32)),
            auth_token: "the-auth-token".into(),
            integration_id: "int".into(),
            target: "127.0.0.1:1".into(),
            sink_dir: "spool".into(),
            numbers: (0..50).map(crate::admin::number).collect(),
            shared_key: Some(crate::plan::PlanKey {
                id: "loadtest-key".into(),
                secret: "the-shared-key".into(),
            }),
        }
    }

    fn generator(mix: Mix) -> Generator {
        Generator::new(Arc::new(Workload::new(&plan(), mix, 1)), 1, 0xabcd, 3)
    }

    /// Checks a request against the service's own verifier, as the webhook does.
    fn verifies(req: &WebhookRequest) -> bool {
        let bases = PublicUrl::parse(&plan().public_url).unwrap();
        let form = Form::parse(&req.body).unwrap();
        let k = match req.signature_settings.as_deref() {
            Some("key=loadtest-key,algorithm=HMAC_SHA256") => shared_key(b"the-shared-key"),
            Some(other) => panic!("unexpected settings header {other}"),
            None => key(b"the-auth-token"),
        };
        verify(
            bases.bases(),
            &req.path,
            &form,
            &[k],
            req.signature.as_bytes(),
        )
        .is_some()
    }

    #[test]
    fn signatures_verify_with_the_service_verifier() {
        let mix = Mix {
            mms: 0.3,
            status: 0.3,
            bad_signature: 0.2,
            unknown_number: 0.1,
            retry: 0.1,
            shared_key: 0.4,
        };
        let mut g = generator(mix);
        let mut seen = [0usize; 4];
        let mut shared = [0usize; 2];
        for _ in 0..2000 {
            let req = g.next_request();
            let idx = match req.expect {
                Expect::Stored(_) => 0,
                Expect::Duplicate(_) => 1,
                Expect::Forbidden => 2,
                Expect::Unknown => 3,
            };
            seen[idx] += 1;
            shared[usize::from(req.signature_settings.is_some())] += 1;
            assert_eq!(verifies(&req), req.expect != Expect::Forbidden, "{req:?}");
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
        assert!(shared.iter().all(|&n| n > 500), "{shared:?}");
    }

    #[test]
    fn inbound_has_twilios_fields_and_routes_on_to() {
        let mut g = generator(Mix {
            mms: 1.0,
            status: 0.0,
            ..Mix::default()
        });
        let plan = plan();
        for _ in 0..200 {
            let req = g.next_request();
            let form = Form::parse(&req.body).unwrap();
            for f in [
                "MessageSid",
                "SmsSid",
                "SmsMessageSid",
                "AccountSid",
                "From",
                "To",
                "Body",
                "NumMedia",
                "NumSegments",
                "SmsStatus",
                "ApiVersion",
                "FromCountry",
                "ToCity",
            ] {
                assert!(form.get(f).is_some(), "missing {f}");
            }
            assert!(plan.numbers.iter().any(|n| n == form.get("To").unwrap()));
            let media: usize = form.get("NumMedia").unwrap().parse().unwrap();
            assert!((1..=10).contains(&media));
            assert!(form.get(&format!("MediaUrl{}", media - 1)).is_some());
            assert!(form.get(&format!("MediaUrl{media}")).is_none());
            assert!(form.get("MessageSid").unwrap().starts_with("MM"));
            assert_eq!(form.get("MessageSid").unwrap().len(), 34);
            let body = form.get("Body").unwrap();
            assert!((1..=1600).contains(&body.chars().count()));
            assert_eq!(form.get("NumSegments").unwrap(), segments(body).to_string());
        }
    }

    #[test]
    fn reports_route_on_from_and_end_in_a_final_status() {
        let mut g = generator(Mix {
            status: 1.0,
            mms: 0.0,
            ..Mix::default()
        });
        let mut by_sid: std::collections::HashMap<String, Vec<String>> = Default::default();
        for _ in 0..300 {
            let req = g.next_request();
            assert!(req.path.ends_with("/status"));
            let form = Form::parse(&req.body).unwrap();
            assert!(plan()
                .numbers
                .iter()
                .any(|n| n == form.get("From").unwrap()));
            let (sid, st) = (
                form.get("MessageSid").unwrap(),
                form.get("MessageStatus").unwrap(),
            );
            assert_eq!(req.expect, Expect::Stored(format!("{sid}:{st}")));
            by_sid
                .entry(sid.to_string())
                .or_default()
                .push(st.to_string());
        }
        let finished = by_sid
            .values()
            .filter(|v| {
                v.iter()
                    .any(|s| ["delivered", "undelivered", "failed"].contains(&s.as_str()))
            })
            .count();
        assert!(finished > 50);
        assert!(by_sid.values().all(|v| v.len() <= 3));
    }

    #[test]
    fn retries_are_exact_duplicates_of_earlier_deliveries() {
        let mut g = generator(Mix {
            retry: 0.5,
            ..Mix::default()
        });
        let mut sent: Vec<WebhookRequest> = Vec::new();
        for _ in 0..500 {
            let req = g.next_request();
            if let Expect::Duplicate(key) = &req.expect {
                let orig = sent
                    .iter()
                    .find(|o| o.expect == Expect::Stored(key.clone()))
                    .expect("retry of a sent delivery");
                assert_eq!(
                    (&orig.body, &orig.signature, &orig.idempotency_token),
                    (&req.body, &req.signature, &req.idempotency_token)
                );
            }
            sent.push(req);
        }
    }

    #[test]
    fn unknown_numbers_are_not_ours() {
        let mut g = generator(Mix {
            unknown_number: 1.0,
            status: 0.5,
            ..Mix::default()
        });
        for _ in 0..100 {
            let req = g.next_request();
            assert_eq!(req.expect, Expect::Unknown);
            let form = Form::parse(&req.body).unwrap();
            let ours = if req.path.ends_with("/mo") {
                form.get("To")
            } else {
                form.get("From")
            };
            assert!(!plan().numbers.iter().any(|n| Some(n.as_str()) == ours));
        }
    }

    #[test]
    fn segment_counts_follow_the_encodings() {
        assert_eq!(segments("a"), 1);
        assert_eq!(segments(&"a".repeat(160)), 1);
        assert_eq!(segments(&"a".repeat(161)), 2);
        assert_eq!(segments(&"a".repeat(1600)), 11);
        assert_eq!(segments(&"é".repeat(70)), 1, "é is in the GSM-7 basic set");
        assert_eq!(segments(&"こ".repeat(70)), 1);
        assert_eq!(segments(&"こ".repeat(71)), 2);
        assert_eq!(segments("😀"), 1);
        assert_eq!(
            segments(&"😀".repeat(35)),
            1,
            "35 emoji are 70 UTF-16 units"
        );
        assert_eq!(segments(&"😀".repeat(36)), 2);
    }

    #[test]
    fn text_pool_mixes_encodings_and_lengths() {
        let pool = text_pool(9, 512);
        let ucs2 = pool.iter().filter(|t| !t.raw.chars().all(is_gsm7)).count();
        assert!((60..200).contains(&ucs2), "{ucs2}");
        assert!(pool
            .iter()
            .all(|t| (1..=1600).contains(&t.raw.chars().count())));
        assert!(pool.iter().any(|t| t.raw.chars().count() > 918));
        for t in &pool {
            let mut body = String::from("Body=");
            body.push_str(&t.encoded);
            assert_eq!(
                Form::parse(body.as_bytes()).unwrap().get("Body"),
                Some(t.raw.as_str())
            );
        }
    }
}

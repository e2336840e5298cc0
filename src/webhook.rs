//! The webhook service: routes a request and runs SPEC section 2's checks in order —
//! path, method, size, media type, form, inventory, signature, policy — then dispatches the
//! envelope and answers 200 only once its queue's sink (or, for a policy drop, its
//! integration's dead-letter spool) has made it durable.

use crate::deadletter::DeadLetters;
use crate::dispatch::{Dispatcher, SubmitError};
use crate::envelope::{Envelope, Kind};
use crate::form::Form;
use crate::inventory::{Inventory, NumberEntry, Routing};
use crate::policy::{Dedup, EMPTY_TWIML};
use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// Path prefix of both webhook routes.
pub(crate) const WEBHOOK_PREFIX: &str = "/vendors/v1/twilio/";

/// What a request's path asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    Webhook(Kind),
    Healthz,
    Readyz,
    NotFound,
}

impl Route {
    /// Maps a path to a route; a webhook path must carry this region's key.
    pub(crate) fn of(path: &str, region_key: &str) -> Route {
        match path {
            "/healthz" => return Route::Healthz,
            "/readyz" => return Route::Readyz,
            _ => {}
        }
        let Some(rest) = path.strip_prefix(WEBHOOK_PREFIX) else {
            return Route::NotFound;
        };
        match rest.split_once('/') {
            Some((key, "mo")) if key == region_key => Route::Webhook(Kind::Inbound),
            Some((key, "status")) if key == region_key => Route::Webhook(Kind::Status),
            _ => Route::NotFound,
        }
    }

    /// The `route` label of request metrics (bounded set).
    pub(crate) fn label(self) -> &'static str {
        match self {
            Route::Webhook(Kind::Inbound) => "mo",
            Route::Webhook(Kind::Status) => "status",
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::NotFound => "not_found",
        }
    }
}

/// Every answer the pipeline can give, each with one status and one metric reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Accepted(Bytes),
    Duplicate,
    Dropped(&'static str),
    /// Dropped by policy after verification and kept as a dead letter (unless a retry of one kept already).
    DeadLetter {
        reason: &'static str,
        duplicate: bool,
    },
    Rejected(StatusCode, &'static str),
    Unavailable(&'static str),
}

/// Everything the service needs, shared by all connections.
pub(crate) struct Webhook {
    region_key: &'static str,
    url_bases: Vec<String>,
    max_body_bytes: usize,
    /// `limits.max_inflight_body_bytes`, one permit a byte: a body takes its bytes before
    /// it is read and gives them back when the request ends.
    body_budget: tokio::sync::Semaphore,
    retry_after: HeaderValue,
    inventory: Arc<Inventory>,
    dispatcher: Arc<Dispatcher>,
    dedup: Arc<Dedup>,
    dead_letters: Arc<DeadLetters>,
    loaded: AtomicBool,
    metrics: RequestMetrics,
    /// The last signature rejections per integration, for the admin API.
    rejections: Arc<crate::rejections::Rejections>,
}

impl Webhook {
    /// Wires the pipeline; `url_bases` are `server.public_url`'s forms (see `signature::PublicUrl`).
    // One argument per shared part of the pipeline, wired once in `server.rs`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        region_key: &'static str,
        url_bases: Vec<String>,
        max_body_bytes: usize,
        max_inflight_body_bytes: usize,
        retry_after_secs: u32,
        inventory: Arc<Inventory>,
        dispatcher: Arc<Dispatcher>,
        dedup: Arc<Dedup>,
        dead_letters: Arc<DeadLetters>,
    ) -> Webhook {
        Webhook {
            region_key,
            url_bases,
            max_body_bytes,
            body_budget: tokio::sync::Semaphore::new(
                max_inflight_body_bytes.min(tokio::sync::Semaphore::MAX_PERMITS),
            ),
            retry_after: HeaderValue::from(retry_after_secs),
            inventory,
            dispatcher,
            dedup,
            dead_letters,
            loaded: AtomicBool::new(false),
            metrics: RequestMetrics::new(),
            rejections: Arc::default(),
        }
    }

    /// The signature rejections this webhook keeps, shown by the admin API.
    pub(crate) fn rejections(&self) -> Arc<crate::rejections::Rejections> {
        self.rejections.clone()
    }

    /// The `Retry-After` value of every 503.
    pub(crate) fn retry_after(&self) -> HeaderValue {
        self.retry_after.clone()
    }

    /// Marks the first snapshot as loaded, so `/readyz` may answer 200.
    pub(crate) fn set_loaded(&self) {
        self.loaded.store(true, Ordering::Release);
    }

    /// Marks the snapshot as not current (the fleet's KV store is reloading), so `/readyz` is 503.
    pub(crate) fn set_unloaded(&self) {
        self.loaded.store(false, Ordering::Release);
    }

    /// The hyper service function: one request in, one response out, metrics recorded.
    pub(crate) async fn handle<B>(
        self: Arc<Self>,
        req: Request<B>,
    ) -> Result<Response<Full<Bytes>>, Infallible>
    where
        B: http_body::Body + Send,
        B::Data: Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let start = Instant::now();
        let route = Route::of(req.uri().path(), self.region_key);
        let response = match route {
            Route::Healthz => text(StatusCode::OK, "ok"),
            Route::Readyz => match self.unready() {
                None => text(StatusCode::OK, "ready"),
                Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, why),
            },
            Route::NotFound => self.respond(Outcome::Rejected(StatusCode::NOT_FOUND, "not_found")),
            Route::Webhook(kind) => {
                let outcome = self.webhook(kind, req).await;
                self.respond(outcome)
            }
        };
        self.metrics
            .record(route, response.status(), start.elapsed());
        Ok(response)
    }

    /// Why `/readyz` is 503, if it is.
    pub(crate) fn unready(&self) -> Option<&'static str> {
        if !self.loaded.load(Ordering::Acquire) {
            return Some("not ready: no inventory snapshot loaded");
        }
        if !self.dispatcher.healthy() {
            return Some("not ready: a queue's sink failed its last batch");
        }
        if !self.dead_letters.healthy() {
            return Some("not ready: a dead-letter spool failed its last batch");
        }
        None
    }

    /// Runs the checks of SPEC section 2 in order and returns what to answer.
    pub(crate) async fn webhook<B>(&self, kind: Kind, req: Request<B>) -> Outcome
    where
        B: http_body::Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let received_at = SystemTime::now();
        if req.method() != Method::POST {
            return Outcome::Rejected(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
        }
        let length = content_length(&req);
        if length.is_some_and(|n| n > self.max_body_bytes as u64) {
            return Outcome::Rejected(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
        }
        // A chunked body may grow to the limit: budget that much.
        let budgeted = length.map_or(self.max_body_bytes, |n| n as usize);
        let permits = u32::try_from(budgeted).unwrap_or(u32::MAX);
        let Ok(_permit) = self.body_budget.try_acquire_many(permits) else {
            return Outcome::Unavailable("inflight_body_budget");
        };
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, self.max_body_bytes).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return Outcome::Rejected(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
            }
            Err(_) => return Outcome::Rejected(StatusCode::BAD_REQUEST, "body_incomplete"),
        };
        if !is_form_content_type(parts.headers.get(CONTENT_TYPE)) {
            return Outcome::Rejected(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
        }
        let Ok(form) = Form::parse(&body) else {
            return Outcome::Rejected(StatusCode::BAD_REQUEST, "malformed_form");
        };
        let number_field = match kind {
            Kind::Inbound => "To",
            Kind::Status => "From",
        };
        let Some(number) = form.get(number_field).filter(|n| !n.is_empty()) else {
            return Outcome::Rejected(StatusCode::BAD_REQUEST, "number_missing");
        };
        let Some(message_sid) = form.get("MessageSid").filter(|s| !s.is_empty()) else {
            return Outcome::Rejected(StatusCode::BAD_REQUEST, "message_sid_missing");
        };
        let Some(entry) = self.inventory.load().lookup(number) else {
            return Outcome::Dropped("unknown_number");
        };
        let suffix = parts
            .uri
            .path_and_query()
            .map_or(parts.uri.path(), |pq| pq.as_str());
        let settings = parts
            .headers
            .get("x-twilio-webhooks-signature-settings")
            .map(|h| crate::signature::SignatureSettings::parse(h.to_str().unwrap_or_default()));
        let integration = entry.integration();
        let account_sid = form.get("AccountSid").unwrap_or_default();
        let account_matched = account_sid == &*integration.account_sid;
        let refuse = |reason: &'static str, keys_tried: Vec<String>| {
            self.rejections.record(
                &integration.id,
                crate::rejections::Rejection {
                    at: humantime::format_rfc3339_millis(received_at).to_string(),
                    number: number.to_owned(),
                    reason,
                    url: format!(
                        "{}{suffix}",
                        self.url_bases.first().map_or("", String::as_str)
                    ),
                    urls_tried: self
                        .url_bases
                        .iter()
                        .map(|b| format!("{b}{suffix}"))
                        .collect(),
                    keys_tried,
                    key_named: settings.and_then(|s| s.key).map(str::to_owned),
                    algorithm_named: settings.and_then(|s| s.algorithm).map(str::to_owned),
                    account_sid_matched: account_matched,
                },
            );
            Outcome::Rejected(StatusCode::FORBIDDEN, reason)
        };
        let Some(signature) = parts.headers.get("x-twilio-signature") else {
            return refuse("signature_missing", Vec::new());
        };
        // A SharedKey (Twilio's Webhooks configuration API) signs when the settings header
        // names one; else the Auth Tokens with HMAC-SHA1.
        let (keys, shared_key) = match settings {
            None => (&integration.keys[..], None),
            Some(settings) => {
                if !settings.is_hmac_sha256() {
                    return refuse("signature_algorithm_unsupported", Vec::new());
                }
                let named = integration
                    .signing_keys
                    .iter()
                    .find(|(id, _)| Some(&**id) == settings.key);
                let Some((id, key)) = named else {
                    return refuse("signature_key_unknown", Vec::new());
                };
                (std::slice::from_ref(key), Some(&**id))
            }
        };
        // Named only when a request is refused (the diagnostics ring), not on every one.
        let keys_tried = || -> Vec<String> {
            match shared_key {
                Some(id) => vec![id.to_string()],
                None => ["auth_token", "next_auth_token"][..integration.keys.len().min(2)]
                    .iter()
                    .map(|n| n.to_string())
                    .collect(),
            }
        };
        let Some(url_index) =
            crate::signature::verify(&self.url_bases, suffix, &form, keys, signature.as_bytes())
        else {
            return refuse("signature_invalid", keys_tried());
        };
        if !account_matched {
            return refuse("account_mismatch", keys_tried());
        }
        let message_status = match kind {
            Kind::Status => form.get("MessageStatus").map(str::to_owned),
            Kind::Inbound => None,
        };
        let compliance = match (kind, &entry.compliance) {
            (Kind::Inbound, Some(c)) => c.matches(form.get("Body").unwrap_or_default()),
            _ => None,
        };
        let envelope = Envelope {
            kind,
            received_at_ms: unix_ms(received_at),
            org: integration.org.clone(),
            integration_id: integration.id.clone(),
            queue: entry.queue().queue().clone(),
            number: number.to_owned(),
            from: form.get("From").unwrap_or_default().to_owned(),
            to: form.get("To").unwrap_or_default().to_owned(),
            message_sid: message_sid.to_owned(),
            message_status,
            account_sid: account_sid.to_owned(),
            compliance: compliance.as_ref().map(|(a, _)| *a),
            idempotency_token: header_string(&parts.headers, "i-twilio-idempotency-token"),
            signature: String::from_utf8_lossy(signature.as_bytes()).into_owned(),
            signed_url: [self.url_bases[url_index].as_str(), suffix].concat(),
            body: body.clone(),
        };
        if envelope.encoded_len() > crate::sink::MAX_RECORD_BYTES {
            // Alone: in a batch it would fail every envelope with it.
            return Outcome::Rejected(StatusCode::PAYLOAD_TOO_LARGE, "envelope_too_large");
        }
        if let Some(reason) = drop_reason(&entry) {
            return self.dead_letter(reason, envelope).await;
        }
        let dedup_key = envelope.dedup_key();
        if self.dedup.is_duplicate(&dedup_key) {
            return Outcome::Duplicate;
        }
        let acked = match entry.queue().try_submit(envelope) {
            Ok(rx) => rx,
            Err(SubmitError::Full) => return Outcome::Unavailable("queue_full"),
            Err(SubmitError::DiskFull) => return Outcome::Unavailable("queue_disk_full"),
            Err(SubmitError::Closed) => return Outcome::Unavailable("sink_unavailable"),
        };
        if acked.await != Ok(true) {
            return Outcome::Unavailable("sink_unavailable");
        }
        self.dedup.accepted(dedup_key);
        match compliance {
            Some((action, reply)) => {
                metrics::counter!("sms_ingress_compliance_replies_total", "action" => action.as_str()).increment(1);
                Outcome::Accepted(reply)
            }
            None => Outcome::Accepted(Bytes::from_static(EMPTY_TWIML)),
        }
    }

    /// Keeps a policy-dropped envelope as a dead letter; 200 only once it (or an earlier copy) is durable.
    async fn dead_letter(&self, reason: &'static str, envelope: Envelope) -> Outcome {
        let dedup_key = envelope.dedup_key();
        if self.dedup.is_duplicate(&dedup_key) {
            return Outcome::DeadLetter {
                reason,
                duplicate: true,
            };
        }
        if let Err(e) = self.dead_letters.store(envelope).await {
            tracing::warn!(reason, error = %e, "dead letter not stored");
            return Outcome::Unavailable(e.reason());
        }
        self.dedup.accepted(dedup_key);
        Outcome::DeadLetter {
            reason,
            duplicate: false,
        }
    }

    /// Turns an outcome into its response and counts its reason.
    fn respond(&self, outcome: Outcome) -> Response<Full<Bytes>> {
        match outcome {
            Outcome::Accepted(twiml) => twiml_response(twiml),
            Outcome::Duplicate => {
                metrics::counter!("sms_ingress_duplicates_total").increment(1);
                twiml_response(Bytes::from_static(EMPTY_TWIML))
            }
            Outcome::Dropped(reason) => {
                metrics::counter!("sms_ingress_dropped_total", "reason" => reason).increment(1);
                tracing::debug!(reason, "webhook dropped");
                twiml_response(Bytes::from_static(EMPTY_TWIML))
            }
            Outcome::DeadLetter { reason, duplicate } => {
                metrics::counter!("sms_ingress_dropped_total", "reason" => reason).increment(1);
                if duplicate {
                    metrics::counter!("sms_ingress_duplicates_total").increment(1);
                } else {
                    metrics::counter!("sms_ingress_dead_letters_total", "reason" => reason)
                        .increment(1);
                }
                tracing::debug!(reason, duplicate, "webhook dropped and dead-lettered");
                twiml_response(Bytes::from_static(EMPTY_TWIML))
            }
            Outcome::Rejected(status, reason) => {
                metrics::counter!("sms_ingress_rejected_total", "reason" => reason).increment(1);
                tracing::debug!(reason, status = status.as_u16(), "webhook rejected");
                let mut resp = text(status, reason);
                if status == StatusCode::METHOD_NOT_ALLOWED {
                    resp.headers_mut()
                        .insert(ALLOW, HeaderValue::from_static("POST"));
                }
                if status == StatusCode::PAYLOAD_TOO_LARGE {
                    resp.headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                resp
            }
            Outcome::Unavailable(reason) => {
                metrics::counter!("sms_ingress_rejected_total", "reason" => reason).increment(1);
                tracing::warn!(reason, "webhook answered 503");
                let mut resp = text(StatusCode::SERVICE_UNAVAILABLE, reason);
                resp.headers_mut()
                    .insert(RETRY_AFTER, self.retry_after.clone());
                if reason == "inflight_body_budget" {
                    // The body was not read: end the connection rather than drain it.
                    resp.headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                resp
            }
        }
    }
}

/// Routes as metric indices.
const ROUTES: [Route; 5] = [
    Route::Webhook(Kind::Inbound),
    Route::Webhook(Kind::Status),
    Route::Healthz,
    Route::Readyz,
    Route::NotFound,
];
/// The statuses the service answers; others are counted through the registry.
const STATUSES: [u16; 9] = [200, 400, 403, 404, 405, 408, 413, 415, 503];

/// Per-request metrics registered once, so a request costs no registry lookup or label allocation.
struct RequestMetrics {
    requests: Vec<[metrics::Counter; STATUSES.len()]>,
    duration: Vec<metrics::Histogram>,
}

impl RequestMetrics {
    fn new() -> RequestMetrics {
        let requests = ROUTES
            .iter()
            .map(|r| {
                STATUSES.map(|s| {
                    metrics::counter!("sms_ingress_requests_total", "route" => r.label(), "status" => s.to_string())
                })
            })
            .collect();
        let duration = ROUTES
            .iter()
            .map(|r| metrics::histogram!("sms_ingress_request_duration_seconds", "route" => r.label()))
            .collect();
        RequestMetrics { requests, duration }
    }

    fn record(&self, route: Route, status: StatusCode, took: std::time::Duration) {
        let r = ROUTES
            .iter()
            .position(|x| *x == route)
            .unwrap_or(ROUTES.len() - 1);
        match STATUSES.iter().position(|s| *s == status.as_u16()) {
            Some(s) => self.requests[r][s].increment(1),
            None => metrics::counter!(
                "sms_ingress_requests_total", "route" => route.label(), "status" => status.as_u16().to_string()
            )
            .increment(1),
        }
        self.duration[r].record(took.as_secs_f64());
    }
}

/// Why a verified webhook is dropped (answered 200, not routed), if it is.
fn drop_reason(entry: &NumberEntry) -> Option<&'static str> {
    if !entry.integration().active {
        return Some("integration_inactive");
    }
    match entry.routing {
        Routing::Active => None,
        Routing::Disabled => Some("number_disabled"),
        Routing::Provisioning => Some("number_provisioning"),
    }
}

fn content_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `application/x-www-form-urlencoded`, with or without parameters such as `charset`.
fn is_form_content_type(value: Option<&HeaderValue>) -> bool {
    let Some(v) = value.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let media = v.split(';').next().unwrap_or_default().trim();
    media.eq_ignore_ascii_case("application/x-www-form-urlencoded")
}

fn header_string(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn twiml_response(body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/xml; charset=utf-8"),
    );
    resp
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let k = "abc";
        assert_eq!(
            Route::of("/vendors/v1/twilio/abc/mo", k),
            Route::Webhook(Kind::Inbound)
        );
        assert_eq!(
            Route::of("/vendors/v1/twilio/abc/status", k),
            Route::Webhook(Kind::Status)
        );
        assert_eq!(Route::of("/vendors/v1/twilio/xyz/mo", k), Route::NotFound);
        assert_eq!(Route::of("/vendors/v1/twilio/abc/mo/x", k), Route::NotFound);
        assert_eq!(Route::of("/vendors/v1/twilio/abc", k), Route::NotFound);
        assert_eq!(Route::of("/healthz", k), Route::Healthz);
        assert_eq!(Route::of("/", k), Route::NotFound);
    }

    #[test]
    fn content_types() {
        let h = |s: &'static str| Some(HeaderValue::from_static(s));
        assert!(is_form_content_type(
            h("application/x-www-form-urlencoded").as_ref()
        ));
        assert!(is_form_content_type(
            h("Application/X-WWW-Form-Urlencoded; charset=UTF-8").as_ref()
        ));
        assert!(!is_form_content_type(h("application/json").as_ref()));
        assert!(!is_form_content_type(None));
    }
}

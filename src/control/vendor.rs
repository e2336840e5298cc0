//! The vendor checks of the control plane (SPEC section 4): a small Twilio REST client
//! that asks the tenant's own Twilio account whether its credentials work, whether it
//! owns the number being imported, and whether that number's inbound webhook points at
//! this region. `control::admin` runs these between reserving a number and storing it.
//!
//! Credentials go out only to the configured bases (paging links are rebased onto them)
//! in a `Basic` header marked sensitive; neither the token nor a response body is logged.

use crate::config::ControlConfig;
use crate::model::crypto::Secret;
use crate::model::state::NumberType;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION};
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::time::Duration;

/// Most pages followed in one listing, so a misbehaving server cannot keep us looping.
const MAX_PAGES: usize = 20;
/// Page size asked for in listings.
const PAGE_SIZE: u32 = 50;
/// Largest response body read from Twilio.
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// Why a Twilio REST call gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VendorError {
    /// Connecting failed or the call exceeded `control.vendor_timeout_ms`.
    #[error("Twilio could not be reached ({0})")]
    Unreachable(String),
    /// Twilio answered 401: the Account SID / Auth Token pair is wrong.
    #[error("Twilio rejected the Account SID / Auth Token")]
    CredentialsRejected,
    /// Twilio answered a status the check does not expect.
    #[error("Twilio answered HTTP {0}")]
    Unexpected(StatusCode),
    /// The body was not the JSON Twilio documents.
    #[error("Twilio's answer could not be understood ({0})")]
    BadResponse(String),
    /// A configured base URL would send Auth Tokens in clear text off this host.
    #[error(
        "{key} {url:?}: plain http:// only to a loopback host (Auth Tokens are sent); use https://"
    )]
    InsecureBase {
        /// The config key naming the base.
        key: &'static str,
        /// The configured value.
        url: String,
    },
    /// A configured base URL is not an absolute http(s) URL.
    #[error("{key} {url:?} is not an absolute http:// or https:// URL")]
    BadBase {
        /// The config key naming the base.
        key: &'static str,
        /// The configured value.
        url: String,
    },
}

impl VendorError {
    /// The contract's code for this failure: rejected credentials are the tenant's to
    /// fix; an unreachable or confused Twilio is ours to retry.
    pub fn code(&self) -> &'static str {
        match self {
            VendorError::CredentialsRejected => "vendor_credentials_rejected",
            VendorError::Unreachable(_) => "vendor_unreachable",
            VendorError::Unexpected(_) | VendorError::BadResponse(_) => "vendor_error",
            VendorError::BadBase { .. } | VendorError::InsecureBase { .. } => "internal",
        }
    }
}

/// Why a number failed the vendor checks of an import (the seed's last two rows).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportVendorError {
    /// The Twilio (sub-)account has no such number or short code.
    #[error("This phone number cannot be found at the vendor: Twilio account {account_sid} has no {sender_id}.")]
    NumberNotFound {
        /// The integration's account.
        account_sid: String,
        /// The number asked for.
        sender_id: String,
    },
    /// The number's inbound webhook does not reach this region; the text says what to set.
    #[error("{0}")]
    WebhookNotConfigured(String),
    /// Twilio could not answer the question.
    #[error(transparent)]
    Vendor(#[from] VendorError),
}

impl ImportVendorError {
    /// The contract's code for this failure.
    pub fn code(&self) -> &'static str {
        match self {
            ImportVendorError::NumberNotFound { .. } => "number_not_found_at_vendor",
            ImportVendorError::WebhookNotConfigured(_) => "webhook_not_configured",
            ImportVendorError::Vendor(e) => e.code(),
        }
    }
}

/// A configured base URL split so paging links can be rebased onto its origin.
#[derive(Debug, Clone)]
struct Base {
    /// `scheme://authority`.
    origin: String,
    /// `origin` plus the base path, without a trailing slash.
    url: String,
}

impl Base {
    fn parse(key: &'static str, url: &str) -> Result<Base, VendorError> {
        let bad = || VendorError::BadBase {
            key,
            url: url.to_string(),
        };
        let uri: Uri = url.parse().map_err(|_| bad())?;
        let scheme = uri.scheme_str().filter(|s| *s == "http" || *s == "https");
        let (Some(scheme), Some(authority)) = (scheme, uri.authority()) else {
            return Err(bad());
        };
        if uri.query().is_some() {
            return Err(bad());
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if scheme == "http" && !loopback {
            return Err(VendorError::InsecureBase {
                key,
                url: url.to_string(),
            });
        }
        let origin = format!("{scheme}://{authority}");
        let url = format!("{origin}{}", uri.path().trim_end_matches('/'));
        Ok(Base { origin, url })
    }

    /// A paging link (absolute URL or absolute path) moved onto this base's origin, so
    /// credentials never follow a link to another host.
    fn rebase(&self, link: &str) -> Result<String, VendorError> {
        let uri: Uri = link
            .parse()
            .map_err(|_| VendorError::BadResponse("paging link is not a URL".into()))?;
        let path = uri
            .path_and_query()
            .map(|p| p.as_str())
            .filter(|p| p.starts_with('/'))
            .ok_or_else(|| VendorError::BadResponse("paging link has no path".into()))?;
        Ok(format!("{}{path}", self.origin))
    }
}

/// The account, as far as the checks need it (Twilio's body also carries the token: ignored).
#[derive(Debug, Deserialize)]
struct Account {
    sid: String,
}

/// One sender (phone number or short code) as Twilio lists it.
#[derive(Debug, Clone, Deserialize)]
struct Sender {
    sid: String,
    #[serde(default, alias = "short_code")]
    phone_number: Option<String>,
    #[serde(default)]
    sms_url: Option<String>,
    #[serde(default)]
    sms_method: Option<String>,
}

/// A page of the 2010-04-01 API: one list key plus `next_page_uri` (an absolute path).
#[derive(Debug, Deserialize)]
struct LegacyPage {
    #[serde(default, alias = "short_codes")]
    incoming_phone_numbers: Vec<Sender>,
    #[serde(default)]
    next_page_uri: Option<String>,
}

/// One Messaging Service; `use_inbound_webhook_on_number` is the console's
/// "Defer to sender's webhook".
#[derive(Debug, Clone, Deserialize)]
struct Service {
    sid: String,
    #[serde(default)]
    friendly_name: String,
    #[serde(default)]
    use_inbound_webhook_on_number: bool,
}

/// A page of the v1 Messaging API: `services` plus `meta.next_page_url` (absolute URL).
#[derive(Debug, Deserialize)]
struct ServicePage {
    services: Vec<Service>,
    #[serde(default)]
    meta: Meta,
}

#[derive(Debug, Default, Deserialize)]
struct Meta {
    #[serde(default)]
    next_page_url: Option<String>,
}

/// Basic credentials of one call sequence; the header value is marked sensitive.
struct Creds {
    header: HeaderValue,
}

impl Creds {
    fn new(account_sid: &str, token: &Secret) -> Result<Creds, VendorError> {
        let raw = format!("{account_sid}:{}", token.expose());
        let mut header = HeaderValue::try_from(format!("Basic {}", B64.encode(raw)))
            .map_err(|_| VendorError::CredentialsRejected)?;
        header.set_sensitive(true);
        Ok(Creds { header })
    }
}

/// Percent-encodes a query or path value (everything but unreserved characters).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    crate::percent::encode_component(s, &mut out);
    out
}

/// A Twilio SID: two letters and 32 hex digits; anything else never goes into a path.
fn is_sid(s: &str) -> bool {
    s.len() == 34
        && s.as_bytes()[..2].iter().all(u8::is_ascii_alphabetic)
        && s.as_bytes()[2..].iter().all(u8::is_ascii_hexdigit)
}

/// The REST client the admin API uses for vendor checks; one per process, cheap to share.
pub struct TwilioClient {
    http: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    api: Base,
    messaging: Base,
    timeout: Duration,
}

impl std::fmt::Debug for TwilioClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwilioClient")
            .field("api", &self.api.url)
            .field("messaging", &self.messaging.url)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl TwilioClient {
    /// A client for these bases (`https://api.twilio.com`, `https://messaging.twilio.com/v1`
    /// in production; loopback `http://` in tests), each call bounded by `timeout`.
    pub fn new(
        api_base: &str,
        messaging_base: &str,
        timeout: Duration,
    ) -> Result<TwilioClient, VendorError> {
        let api = Base::parse("control.twilio_api_base", api_base)?;
        let messaging = Base::parse("control.twilio_messaging_base", messaging_base)?;
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_connect_timeout(Some(timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| VendorError::Unreachable(format!("TLS set-up failed: {e}")))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);
        Ok(TwilioClient {
            http,
            api,
            messaging,
            timeout,
        })
    }

    /// The client the configuration asks for: `None` when `control.vendor_checks` is off.
    pub(crate) fn from_config(cfg: &ControlConfig) -> Result<Option<TwilioClient>, VendorError> {
        if !cfg.vendor_checks {
            return Ok(None);
        }
        let timeout = Duration::from_millis(cfg.vendor_timeout_ms);
        Self::new(&cfg.twilio_api_base, &cfg.twilio_messaging_base, timeout).map(Some)
    }

    /// Proves the Account SID / Auth Token pair by fetching the account itself.
    pub async fn check_credentials(
        &self,
        account_sid: &str,
        token: &Secret,
    ) -> Result<(), VendorError> {
        let creds = Creds::new(account_sid, token)?;
        let url = format!(
            "{}/2010-04-01/Accounts/{}.json",
            self.api.url,
            encode(account_sid)
        );
        match self.get::<Account>(&creds, &url).await? {
            Some(a) if a.sid == account_sid => Ok(()),
            Some(_) => Err(VendorError::BadResponse("another account answered".into())),
            // The account is not visible with these credentials.
            None => Err(VendorError::CredentialsRejected),
        }
    }

    /// The import's vendor checks, in the seed's order: the (sub-)account has the number,
    /// its SMS webhook is `expected_webhook_url` (HTTP POST), and a Messaging Service it
    /// belongs to defers to that webhook.
    pub async fn check_number(
        &self,
        account_sid: &str,
        token: &Secret,
        sender_id: &str,
        kind: NumberType,
        expected_webhook_url: &str,
    ) -> Result<(), ImportVendorError> {
        let creds = Creds::new(account_sid, token)?;
        let sender = self
            .find_sender(&creds, account_sid, sender_id, kind)
            .await?
            .ok_or_else(|| ImportVendorError::NumberNotFound {
                account_sid: account_sid.to_string(),
                sender_id: sender_id.to_string(),
            })?;
        let service = self.service_of(&creds, &sender, kind).await?;
        judge_webhook(&sender, service.as_ref(), expected_webhook_url)
    }

    /// The account's record of this number or short code, matched exactly.
    async fn find_sender(
        &self,
        creds: &Creds,
        account_sid: &str,
        sender_id: &str,
        kind: NumberType,
    ) -> Result<Option<Sender>, VendorError> {
        let (resource, filter) = match kind {
            NumberType::ShortCode => ("SMS/ShortCodes.json", "ShortCode"),
            _ => ("IncomingPhoneNumbers.json", "PhoneNumber"),
        };
        let mut url = format!(
            "{}/2010-04-01/Accounts/{}/{resource}?{filter}={}&PageSize={PAGE_SIZE}",
            self.api.url,
            encode(account_sid),
            encode(sender_id)
        );
        for _ in 0..MAX_PAGES {
            let Some(page) = self.get::<LegacyPage>(creds, &url).await? else {
                return Ok(None);
            };
            // Twilio's filter matches patterns; only an exact match is this number.
            let found = page
                .incoming_phone_numbers
                .into_iter()
                .find(|s| s.phone_number.as_deref() == Some(sender_id));
            if found.is_some() {
                return Ok(found);
            }
            match page.next_page_uri.filter(|u| !u.is_empty()) {
                Some(next) => url = self.api.rebase(&next)?,
                None => return Ok(None),
            }
        }
        Ok(None)
    }

    /// The Messaging Service the sender belongs to, if any: lists the account's services
    /// and fetches the sender's SID in each one's `PhoneNumbers` (or `ShortCodes`); a 404
    /// means "not a member". A sender belongs to at most one service.
    async fn service_of(
        &self,
        creds: &Creds,
        sender: &Sender,
        kind: NumberType,
    ) -> Result<Option<Service>, VendorError> {
        if !is_sid(&sender.sid) {
            return Err(VendorError::BadResponse("sender has no valid sid".into()));
        }
        let members = match kind {
            NumberType::ShortCode => "ShortCodes",
            _ => "PhoneNumbers",
        };
        let mut url = format!("{}/Services?PageSize={PAGE_SIZE}", self.messaging.url);
        for _ in 0..MAX_PAGES {
            let page = self
                .get::<ServicePage>(creds, &url)
                .await?
                .ok_or(VendorError::Unexpected(StatusCode::NOT_FOUND))?;
            for service in page.services {
                if !is_sid(&service.sid) {
                    return Err(VendorError::BadResponse("service has no valid sid".into()));
                }
                let member = format!(
                    "{}/Services/{}/{members}/{}",
                    self.messaging.url, service.sid, sender.sid
                );
                if self
                    .get::<serde_json::Value>(creds, &member)
                    .await?
                    .is_some()
                {
                    return Ok(Some(service));
                }
            }
            match page.meta.next_page_url.filter(|u| !u.is_empty()) {
                Some(next) => url = self.messaging.rebase(&next)?,
                None => return Ok(None),
            }
        }
        Ok(None)
    }

    /// One authenticated GET: the JSON body on 2xx, `None` on 404, an error otherwise.
    async fn get<T: DeserializeOwned>(
        &self,
        creds: &Creds,
        url: &str,
    ) -> Result<Option<T>, VendorError> {
        let req = Request::builder()
            .method(Method::GET)
            .uri(url)
            .header(AUTHORIZATION, creds.header.clone())
            .header(ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| VendorError::BadResponse(format!("bad request URL: {e}")))?;
        let (status, body) = tokio::time::timeout(self.timeout, self.exchange(req))
            .await
            .map_err(|_| {
                VendorError::Unreachable(format!(
                    "no answer within {} ms",
                    self.timeout.as_millis()
                ))
            })??;
        tracing::debug!(url, status = status.as_u16(), "twilio call");
        match status {
            s if s.is_success() => serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| VendorError::BadResponse(e.to_string())),
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::UNAUTHORIZED => Err(VendorError::CredentialsRejected),
            s => Err(VendorError::Unexpected(s)),
        }
    }

    /// Sends the request and reads the whole body (bounded).
    async fn exchange(
        &self,
        req: Request<Empty<Bytes>>,
    ) -> Result<(StatusCode, Bytes), VendorError> {
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| VendorError::Unreachable(crate::telemetry::error_chain(&e)))?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| VendorError::Unreachable(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok((status, body))
    }
}

/// Whether Twilio will deliver this sender's inbound messages to `expected`: a
/// non-deferring Messaging Service wins over the number's own webhook, so it is named
/// first; a wrong URL or method is named with the exact value to set.
fn judge_webhook(
    sender: &Sender,
    service: Option<&Service>,
    expected: &str,
) -> Result<(), ImportVendorError> {
    // A fragment (`#rc=3&rp=all`: Twilio's connection overrides) tunes Twilio's own
    // retries and is never sent: Twilio calls the URL before it.
    let without_fragment = |u: &str| u.split_once('#').map_or(u, |(url, _)| url).to_string();
    let url_ok = sender.sms_url.as_deref().map(without_fragment) == Some(expected.to_string());
    let method_ok = sender
        .sms_method
        .as_deref()
        .map_or(true, |m| m.eq_ignore_ascii_case("POST"));
    let set_url = format!(
        "set the number's \"A message comes in\" webhook to HTTP POST {expected} (a connection-override fragment such as #rc=3&rp=all may follow it; it is {} {})",
        sender.sms_method.as_deref().unwrap_or("POST"),
        sender
            .sms_url
            .as_deref()
            .filter(|u| !u.is_empty())
            .unwrap_or("unset"),
    );
    if let Some(s) = service.filter(|s| !s.use_inbound_webhook_on_number) {
        let mut msg = format!(
            "The number is in Twilio Messaging Service {} ({}), which sends inbound messages to its own URL: in the service's Integration settings select \"Defer to sender's webhook\"",
            s.sid, s.friendly_name
        );
        if !(url_ok && method_ok) {
            msg.push_str(", and ");
            msg.push_str(&set_url);
        }
        msg.push('.');
        return Err(ImportVendorError::WebhookNotConfigured(msg));
    }
    if url_ok && method_ok {
        return Ok(());
    }
    let mut msg = String::from("The number's SMS webhook in Twilio is not this region's: ");
    msg.push_str(&set_url);
    msg.push('.');
    Err(ImportVendorError::WebhookNotConfigured(msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCT: &str = "AC0123456789abcdef0123456789abcdef";
    const TOKEN: &str = "fake-auth-token-1";

    fn token() -> Secret {
        Secret::new(TOKEN)
    }

    #[test]
    fn bases_and_rebasing() {
        assert!(Base::parse("k", "ftp://x").is_err());
        assert!(Base::parse("k", "/relative").is_err());
        // Plain http only to this host: Auth Tokens travel in the request.
        for insecure in [
            "http://api.twilio.com",
            "http://10.0.0.5:8080",
            "http://[2001:db8::1]",
        ] {
            assert!(
                matches!(
                    Base::parse("k", insecure),
                    Err(VendorError::InsecureBase { .. })
                ),
                "{insecure}"
            );
        }
        for local in [
            "http://127.0.0.1:9999",
            "http://localhost:1/v1",
            "http://[::1]:80",
        ] {
            assert!(Base::parse("k", local).is_ok(), "{local}");
        }
        let b = Base::parse("k", "https://messaging.twilio.com/v1/").unwrap();
        assert_eq!(b.url, "https://messaging.twilio.com/v1");
        assert_eq!(
            b.rebase("https://evil.example/v1/Services?Page=1").unwrap(),
            "https://messaging.twilio.com/v1/Services?Page=1"
        );
        assert_eq!(
            b.rebase("/2010-04-01/Accounts/AC1/x.json?Page=1").unwrap(),
            "https://messaging.twilio.com/2010-04-01/Accounts/AC1/x.json?Page=1"
        );
    }

    #[test]
    fn encoding_and_sids() {
        assert_eq!(encode("+1 415"), "%2B1%20415");
        assert!(is_sid(ACCT));
        assert!(!is_sid("AC../../x"));
    }

    #[test]
    fn credentials_never_print() {
        let c = Creds::new(ACCT, &token()).unwrap();
        assert!(c.header.is_sensitive());
        assert!(!format!("{:?}", c.header).contains(&B64.encode(format!("{ACCT}:{TOKEN}"))));
    }
}

//! A fake of the slice of Twilio's REST API that the import checks call
//! (`control::vendor`), served by hyper from an in-memory model. Tests and the load-test
//! harness (`sms-loadtest fake-twilio`) start it on loopback so that nothing ever calls
//! the real Twilio.
//!
//! Served (GET only, HTTP Basic with an account's SID and Auth Token):
//! `/2010-04-01/Accounts/{sid}.json`, `…/IncomingPhoneNumbers.json[?PhoneNumber=]`,
//! `…/SMS/ShortCodes.json[?ShortCode=]`, and on the same listener the Messaging API under
//! `/v1`: `Services`, `Services/{MG}`, `Services/{MG}/PhoneNumbers[/{PN}]`,
//! `Services/{MG}/ShortCodes[/{SC}]`. Wrong credentials answer 401 (Twilio error 20003),
//! unknown resources 404 (20404). Lookups are hash-map probes, so a model of 1,000,000
//! numbers answers as fast as one of ten.

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};
use sms_ingress::percent;
use sms_ingress::signature::constant_time_eq;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

/// Default page size of listings, as Twilio's.
const DEFAULT_PAGE_SIZE: usize = 50;

/// One phone number or short code of an account.
#[derive(Debug, Clone)]
struct SenderRec {
    sid: u64,
    account_sid: Arc<str>,
    sms_url: Arc<str>,
    sms_method: Arc<str>,
}

/// One Messaging Service and its member senders (sid number → sender id).
#[derive(Debug, Clone)]
struct ServiceRec {
    sid: String,
    account_sid: Arc<str>,
    friendly_name: String,
    use_inbound_webhook_on_number: bool,
    members: HashMap<u64, Arc<str>>,
}

/// Phone numbers or short codes: by sender id, plus each account's in insertion order.
#[derive(Debug, Default)]
struct SenderTable {
    by_id: HashMap<Arc<str>, SenderRec>,
    by_account: HashMap<Arc<str>, Vec<Arc<str>>>,
}

impl SenderTable {
    fn insert(&mut self, id: Arc<str>, rec: SenderRec) {
        let list = self.by_account.entry(rec.account_sid.clone()).or_default();
        if self.by_id.insert(id.clone(), rec).is_none() {
            list.push(id);
        }
    }
}

/// The whole in-memory Twilio.
#[derive(Debug, Default)]
struct Model {
    /// Each account's Auth Tokens: the primary, then a secondary during a rotation.
    accounts: HashMap<String, Vec<String>>,
    numbers: SenderTable,
    short_codes: SenderTable,
    services: HashMap<String, ServiceRec>,
    services_by_account: HashMap<Arc<str>, Vec<String>>,
    next_sid: u64,
    shared: HashMap<String, Arc<str>>,
}

impl Model {
    /// One shared copy of a repeated string (account SIDs, webhook URLs), so a million
    /// numbers do not hold a million copies of the same URL.
    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.shared.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.shared.insert(s.to_string(), a.clone());
        a
    }

    fn new_sender(&mut self, account_sid: &str, sms_url: &str) -> SenderRec {
        self.next_sid += 1;
        SenderRec {
            sid: self.next_sid,
            account_sid: self.intern(account_sid),
            sms_url: self.intern(sms_url),
            sms_method: self.intern("POST"),
        }
    }

    fn sender_mut(&mut self, sender_id: &str) -> Option<&mut SenderRec> {
        if let Some(r) = self.numbers.by_id.get_mut(sender_id) {
            return Some(r);
        }
        self.short_codes.by_id.get_mut(sender_id)
    }
}

/// The fake Twilio: cheap to clone (all clones share one model), safe to change while
/// it serves.
#[derive(Debug, Clone, Default)]
pub struct FakeTwilio {
    model: Arc<RwLock<Model>>,
    delay_ms: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
}

/// Which kind of sender a route serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Number,
    ShortCode,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Number => "PN",
            Kind::ShortCode => "SC",
        }
    }
}

fn sid(prefix: &str, n: u64) -> String {
    format!("{prefix}{n:032x}")
}

fn parse_sid(prefix: &str, s: &str) -> Option<u64> {
    let hex = s.strip_prefix(prefix).filter(|h| h.len() == 32)?;
    u64::from_str_radix(hex, 16).ok()
}

impl FakeTwilio {
    /// An empty Twilio: no accounts, no numbers.
    pub fn new() -> FakeTwilio {
        FakeTwilio::default()
    }

    fn read(&self) -> RwLockReadGuard<'_, Model> {
        self.model.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Model> {
        self.model.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds (or re-keys) an account that authenticates with this Auth Token.
    pub fn add_account(&self, account_sid: &str, auth_token: &str) -> &Self {
        self.write()
            .accounts
            .insert(account_sid.to_string(), vec![auth_token.to_string()]);
        self
    }

    /// Lets the account's REST API accept a secondary Auth Token too, as Twilio does while
    /// a tenant rotates its token in the console (no-op for an unknown account).
    pub fn add_secondary_token(&self, account_sid: &str, auth_token: &str) -> &Self {
        if let Some(tokens) = self.write().accounts.get_mut(account_sid) {
            tokens.truncate(1);
            tokens.push(auth_token.to_string());
        }
        self
    }

    /// Gives the account a phone number whose SMS webhook is `sms_url` (HTTP POST);
    /// returns its `PN…` SID.
    pub fn add_number(&self, account_sid: &str, phone_number: &str, sms_url: &str) -> String {
        let mut m = self.write();
        let rec = m.new_sender(account_sid, sms_url);
        let pn = sid("PN", rec.sid);
        m.numbers.insert(Arc::from(phone_number), rec);
        pn
    }

    /// Gives the account a short code whose SMS webhook is `sms_url`; returns its `SC…` SID.
    pub fn add_short_code(&self, account_sid: &str, short_code: &str, sms_url: &str) -> String {
        let mut m = self.write();
        let rec = m.new_sender(account_sid, sms_url);
        let sc = sid("SC", rec.sid);
        m.short_codes.insert(Arc::from(short_code), rec);
        sc
    }

    /// Changes a number's or short code's SMS webhook, as a tenant would in the console.
    pub fn set_sms_url(&self, sender_id: &str, sms_url: &str) -> &Self {
        let mut m = self.write();
        let url = m.intern(sms_url);
        if let Some(r) = m.sender_mut(sender_id) {
            r.sms_url = url;
        }
        self
    }

    /// Changes the HTTP method of a number's or short code's SMS webhook.
    pub fn set_sms_method(&self, sender_id: &str, method: &str) -> &Self {
        let mut m = self.write();
        let method = m.intern(method);
        if let Some(r) = m.sender_mut(sender_id) {
            r.sms_method = method;
        }
        self
    }

    /// Adds a Messaging Service to the account; `defer` is "Defer to sender's webhook".
    /// Returns its `MG…` SID.
    pub fn add_service(&self, account_sid: &str, friendly_name: &str, defer: bool) -> String {
        let mut m = self.write();
        m.next_sid += 1;
        let mg = sid("MG", m.next_sid);
        let account = m.intern(account_sid);
        m.services_by_account
            .entry(account.clone())
            .or_default()
            .push(mg.clone());
        m.services.insert(
            mg.clone(),
            ServiceRec {
                sid: mg.clone(),
                account_sid: account,
                friendly_name: friendly_name.to_string(),
                use_inbound_webhook_on_number: defer,
                members: HashMap::new(),
            },
        );
        mg
    }

    /// Puts an existing number or short code into a service (no-op if either is unknown).
    pub fn add_to_service(&self, service_sid: &str, sender_id: &str) -> &Self {
        let mut m = self.write();
        let found = m
            .numbers
            .by_id
            .get_key_value(sender_id)
            .or_else(|| m.short_codes.by_id.get_key_value(sender_id))
            .map(|(id, rec)| (rec.sid, id.clone()));
        if let (Some((n, id)), Some(s)) = (found, m.services.get_mut(service_sid)) {
            s.members.insert(n, id);
        }
        self
    }

    /// Switches a service's "Defer to sender's webhook".
    pub fn set_defer(&self, service_sid: &str, defer: bool) -> &Self {
        if let Some(s) = self.write().services.get_mut(service_sid) {
            s.use_inbound_webhook_on_number = defer;
        }
        self
    }

    /// Holds every answer this long, so a test can keep an import in flight.
    pub fn set_delay(&self, delay: Duration) -> &Self {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.delay_ms.store(ms, Ordering::SeqCst);
        self
    }

    /// Requests received so far (answered or still held by the delay).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// Binds `addr` and serves in a spawned task; returns the bound address and the task.
    pub async fn start(
        &self,
        addr: SocketAddr,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        Ok((local, tokio::spawn(self.clone().serve(listener))))
    }

    /// Serves HTTP/1.1 on the listener until the task is dropped or aborted.
    pub async fn serve(self, listener: tokio::net::TcpListener) {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    eprintln!("fake twilio: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let fake = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let fake = fake.clone();
                    async move { Ok::<_, Infallible>(fake.handle(req).await) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    }

    /// Answers one request from the model, after the configured delay.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Full<Bytes>> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let delay = self.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let (status, body) = self.answer(&req);
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut resp = Response::new(Full::new(Bytes::from(bytes)));
        *resp.status_mut() = status;
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        resp
    }

    fn answer<B>(&self, req: &Request<B>) -> (StatusCode, Value) {
        let path = req.uri().path();
        if req.method() != Method::GET {
            return twilio_error(StatusCode::METHOD_NOT_ALLOWED, 20004, "Method not allowed");
        }
        let m = self.read();
        let Some(user) = authenticate(&m, req.headers().get(AUTHORIZATION)) else {
            return twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
        };
        let q = Query::parse(req.uri().query());
        let host = req
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1");
        let ctx = Ctx {
            m: &m,
            user: &user,
            q: &q,
            origin: format!("http://{host}"),
        };
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let found = match segments.as_slice() {
            ["2010-04-01", "Accounts", rest @ ..] => ctx.legacy(rest),
            ["v1", "Services", rest @ ..] => ctx.messaging(rest),
            _ => None,
        };
        found.unwrap_or_else(|| not_found(path))
    }
}

/// The account the Basic credentials prove, if any.
fn authenticate(m: &Model, header: Option<&HeaderValue>) -> Option<String> {
    use base64::Engine;
    let value = header?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, pass) = text.split_once(':')?;
    let tokens = m.accounts.get(user)?;
    let matched = tokens.iter().fold(false, |any, t| {
        any | constant_time_eq(t.as_bytes(), pass.as_bytes())
    });
    matched.then(|| user.to_string())
}

fn twilio_error(status: StatusCode, code: u32, message: &str) -> (StatusCode, Value) {
    let body = json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status.as_u16(),
    });
    (status, body)
}

fn not_found(path: &str) -> (StatusCode, Value) {
    twilio_error(
        StatusCode::NOT_FOUND,
        20404,
        &format!("The requested resource {path} was not found"),
    )
}

/// Query parameters, `%XX`-decoded (a literal `+` stays `+`).
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Query {
        let pairs = q
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (decode(k), decode(v))
            })
            .collect();
        Query(pairs)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn usize(&self, name: &str, default: usize) -> usize {
        self.get(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }
}

/// A query value decoded; a malformed escape leaves the value as sent.
fn decode(s: &str) -> String {
    percent::decode(s, percent::Plus::Literal).unwrap_or_else(|| s.to_string())
}

/// One page of `items`: the slice and the page numbers around it.
struct Paged<'a, T> {
    items: &'a [T],
    page: usize,
    size: usize,
    has_next: bool,
}

fn paginate<'a, T>(all: &'a [T], q: &Query) -> Paged<'a, T> {
    let size = q.usize("PageSize", DEFAULT_PAGE_SIZE).clamp(1, 1000);
    let page = q.usize("Page", 0);
    let start = page.saturating_mul(size).min(all.len());
    let end = start.saturating_add(size).min(all.len());
    Paged {
        items: &all[start..end],
        page,
        size,
        has_next: end < all.len(),
    }
}

/// One request's view of the model.
struct Ctx<'a> {
    m: &'a Model,
    user: &'a str,
    q: &'a Query,
    origin: String,
}

impl Ctx<'_> {
    /// `/2010-04-01/Accounts/...`: only the caller's own account is visible.
    fn legacy(&self, rest: &[&str]) -> Option<(StatusCode, Value)> {
        match rest {
            [file] => {
                let sid = file.strip_suffix(".json")?;
                (sid == self.user).then(|| (StatusCode::OK, self.account_json()))
            }
            [sid, "IncomingPhoneNumbers.json"] if *sid == self.user => {
                Some(self.sender_list(Kind::Number, "PhoneNumber"))
            }
            [sid, "SMS", "ShortCodes.json"] if *sid == self.user => {
                Some(self.sender_list(Kind::ShortCode, "ShortCode"))
            }
            _ => None,
        }
    }

    fn account_json(&self) -> Value {
        json!({
            "sid": self.user,
            "friendly_name": format!("fake account {}", self.user),
            "status": "active",
            "type": "Full",
            "owner_account_sid": self.user,
            "uri": format!("/2010-04-01/Accounts/{}.json", self.user),
        })
    }

    fn table(&self, kind: Kind) -> &SenderTable {
        match kind {
            Kind::Number => &self.m.numbers,
            Kind::ShortCode => &self.m.short_codes,
        }
    }

    /// A filtered lookup is one hash probe; an unfiltered list pages the account's index.
    fn sender_list(&self, kind: Kind, filter: &str) -> (StatusCode, Value) {
        let table = self.table(kind);
        let own = |id: &Arc<str>| {
            table
                .by_id
                .get(id)
                .filter(|r| &*r.account_sid == self.user)
                .map(|r| (id.clone(), r))
        };
        let matches: Vec<Arc<str>> = match self.q.get(filter) {
            Some(v) => own(&Arc::from(v)).map(|(id, _)| id).into_iter().collect(),
            None => table.by_account.get(self.user).cloned().unwrap_or_default(),
        };
        let paged = paginate(&matches, self.q);
        let items: Vec<Value> = paged
            .items
            .iter()
            .filter_map(own)
            .map(|(id, r)| self.sender_json(kind, &id, r))
            .collect();
        let (key, resource) = match kind {
            Kind::Number => ("incoming_phone_numbers", "IncomingPhoneNumbers.json"),
            Kind::ShortCode => ("short_codes", "SMS/ShortCodes.json"),
        };
        let base = format!("/2010-04-01/Accounts/{}/{resource}", self.user);
        let page_uri = |p: usize| {
            let mut uri = format!("{base}?PageSize={}&Page={p}", paged.size);
            if let Some(v) = self.q.get(filter) {
                uri.push_str(&format!("&{filter}={}", v.replace('+', "%2B")));
            }
            uri
        };
        let start = paged.page * paged.size;
        let body = json!({
            key: items,
            "page": paged.page,
            "page_size": paged.size,
            "start": start,
            "end": start + paged.items.len().saturating_sub(1),
            "uri": page_uri(paged.page),
            "first_page_uri": page_uri(0),
            "next_page_uri": paged.has_next.then(|| page_uri(paged.page + 1)),
            "previous_page_uri": (paged.page > 0).then(|| page_uri(paged.page - 1)),
        });
        (StatusCode::OK, body)
    }

    fn sender_json(&self, kind: Kind, id: &str, r: &SenderRec) -> Value {
        let sid = sid(kind.prefix(), r.sid);
        match kind {
            Kind::Number => json!({
                "sid": sid,
                "account_sid": &*r.account_sid,
                "phone_number": id,
                "friendly_name": id,
                "sms_url": &*r.sms_url,
                "sms_method": &*r.sms_method,
                "sms_fallback_url": "",
                "sms_fallback_method": "POST",
                "capabilities": {"voice": true, "sms": true, "mms": true, "fax": false},
                "status": "in-use",
                "api_version": "2010-04-01",
                "uri": format!("/2010-04-01/Accounts/{}/IncomingPhoneNumbers/{sid}.json", r.account_sid),
            }),
            Kind::ShortCode => json!({
                "sid": sid,
                "account_sid": &*r.account_sid,
                "short_code": id,
                "friendly_name": id,
                "sms_url": &*r.sms_url,
                "sms_method": &*r.sms_method,
                "sms_fallback_url": "",
                "sms_fallback_method": "POST",
                "api_version": "2010-04-01",
                "uri": format!("/2010-04-01/Accounts/{}/SMS/ShortCodes/{sid}.json", r.account_sid),
            }),
        }
    }

    /// `/v1/Services...`: only the caller's own services are visible.
    fn messaging(&self, rest: &[&str]) -> Option<(StatusCode, Value)> {
        if rest.is_empty() {
            return Some(self.service_list());
        }
        let service = self
            .m
            .services
            .get(rest[0])
            .filter(|s| &*s.account_sid == self.user)?;
        let kind = |name: &str| match name {
            "PhoneNumbers" => Some(Kind::Number),
            "ShortCodes" => Some(Kind::ShortCode),
            _ => None,
        };
        match rest[1..] {
            [] => Some((StatusCode::OK, self.service_json(service))),
            [list] => Some(self.member_list(service, kind(list)?)),
            [list, member] => {
                let kind = kind(list)?;
                let n = parse_sid(kind.prefix(), member)?;
                let id = service.members.get(&n)?;
                self.table(kind).by_id.get(id)?;
                Some((StatusCode::OK, self.member_json(service, kind, n, id)))
            }
            _ => None,
        }
    }

    fn service_url(&self, sid: &str) -> String {
        format!("{}/v1/Services/{sid}", self.origin)
    }

    fn service_json(&self, s: &ServiceRec) -> Value {
        let url = self.service_url(&s.sid);
        json!({
            "sid": s.sid,
            "account_sid": &*s.account_sid,
            "friendly_name": s.friendly_name,
            "inbound_request_url": "https://service.example/inbound",
            "inbound_method": "POST",
            "use_inbound_webhook_on_number": s.use_inbound_webhook_on_number,
            "url": url,
            "links": {
                "phone_numbers": format!("{url}/PhoneNumbers"),
                "short_codes": format!("{url}/ShortCodes"),
            },
        })
    }

    fn service_list(&self) -> (StatusCode, Value) {
        let sids = self
            .m
            .services_by_account
            .get(self.user)
            .cloned()
            .unwrap_or_default();
        let paged = paginate(&sids, self.q);
        let items: Vec<Value> = paged
            .items
            .iter()
            .filter_map(|sid| self.m.services.get(sid))
            .map(|s| self.service_json(s))
            .collect();
        let base = format!("{}/v1/Services", self.origin);
        (StatusCode::OK, v1_page("services", items, &paged, &base))
    }

    fn member_json(&self, s: &ServiceRec, kind: Kind, n: u64, id: &str) -> Value {
        let sid = sid(kind.prefix(), n);
        let (field, list) = match kind {
            Kind::Number => ("phone_number", "PhoneNumbers"),
            Kind::ShortCode => ("short_code", "ShortCodes"),
        };
        json!({
            "sid": sid,
            "account_sid": &*s.account_sid,
            "service_sid": s.sid,
            field: id,
            "country_code": "US",
            "capabilities": ["SMS", "MMS"],
            "url": format!("{}/{list}/{sid}", self.service_url(&s.sid)),
        })
    }

    fn member_list(&self, s: &ServiceRec, kind: Kind) -> (StatusCode, Value) {
        let mut members: Vec<(u64, Arc<str>)> = s
            .members
            .iter()
            .filter(|(_, id)| self.table(kind).by_id.contains_key(*id))
            .map(|(n, id)| (*n, id.clone()))
            .collect();
        members.sort_unstable_by_key(|(n, _)| *n);
        let paged = paginate(&members, self.q);
        let items: Vec<Value> = paged
            .items
            .iter()
            .map(|(n, id)| self.member_json(s, kind, *n, id))
            .collect();
        let (key, list) = match kind {
            Kind::Number => ("phone_numbers", "PhoneNumbers"),
            Kind::ShortCode => ("short_codes", "ShortCodes"),
        };
        let base = format!("{}/{list}", self.service_url(&s.sid));
        (StatusCode::OK, v1_page(key, items, &paged, &base))
    }
}

/// A v1 listing: the items under `key` and Twilio's `meta` block of absolute URLs.
fn v1_page<T>(key: &str, items: Vec<Value>, paged: &Paged<'_, T>, base: &str) -> Value {
    let url = |p: usize| format!("{base}?PageSize={}&Page={p}", paged.size);
    json!({
        key: items,
        "meta": {
            "page": paged.page,
            "page_size": paged.size,
            "first_page_url": url(0),
            "previous_page_url": (paged.page > 0).then(|| url(paged.page - 1)),
            "url": url(paged.page),
            "next_page_url": paged.has_next.then(|| url(paged.page + 1)),
            "key": key,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    const ACCT: &str = "AC00000000000000000000000000000001";

    fn get(path: &str, user: &str, pass: &str) -> Request<()> {
        use base64::Engine;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        Request::get(path)
            .header(AUTHORIZATION, format!("Basic {auth}"))
            .header(HOST, "127.0.0.1:9")
            .body(())
            .unwrap()
    }

    async fn call(f: &FakeTwilio, req: Request<()>) -> (u16, Value) {
        let resp = f.handle(req).await;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn errors_are_twilio_shaped() {
        let f = FakeTwilio::new();
        f.add_account(ACCT, "tok");
        let (s, b) = call(
            &f,
            get(&format!("/2010-04-01/Accounts/{ACCT}.json"), ACCT, "x"),
        )
        .await;
        assert_eq!(
            (s, b["code"].as_u64(), b["status"].as_u64()),
            (401, Some(20003), Some(401))
        );
        assert_eq!(b["message"], "Authenticate");
        let (s, b) = call(&f, get("/2010-04-01/Nope.json", ACCT, "tok")).await;
        assert_eq!((s, b["code"].as_u64()), (404, Some(20404)));
        let (s, _) = call(
            &f,
            get(&format!("/2010-04-01/Accounts/{ACCT}.json"), ACCT, "tok"),
        )
        .await;
        assert_eq!(s, 200);
    }

    #[tokio::test]
    async fn a_secondary_token_authenticates_too() {
        let f = FakeTwilio::new();
        f.add_account(ACCT, "tok").add_secondary_token(ACCT, "tok2");
        let path = format!("/2010-04-01/Accounts/{ACCT}.json");
        assert_eq!(call(&f, get(&path, ACCT, "tok")).await.0, 200);
        assert_eq!(call(&f, get(&path, ACCT, "tok2")).await.0, 200);
        assert_eq!(call(&f, get(&path, ACCT, "tok3")).await.0, 401);
        f.add_account(ACCT, "tok3");
        assert_eq!(call(&f, get(&path, ACCT, "tok2")).await.0, 401, "re-keyed");
    }

    #[tokio::test]
    async fn lists_number_and_pages() {
        let f = FakeTwilio::new();
        f.add_account(ACCT, "tok");
        for i in 0..3 {
            f.add_number(ACCT, &format!("+1415555010{i}"), "https://x/mo");
        }
        let base = format!("/2010-04-01/Accounts/{ACCT}/IncomingPhoneNumbers.json");
        let (s, b) = call(
            &f,
            get(&format!("{base}?PhoneNumber=%2B14155550101"), ACCT, "tok"),
        )
        .await;
        assert_eq!(s, 200);
        let list = b["incoming_phone_numbers"].as_array().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0]["phone_number"], "+14155550101");
        assert_eq!(list[0]["sms_url"], "https://x/mo");
        assert_eq!(list[0]["account_sid"], ACCT);
        assert_eq!(list[0]["capabilities"]["sms"], true);
        assert!(b["next_page_uri"].is_null());
        let (_, b) = call(&f, get(&format!("{base}?PageSize=2"), ACCT, "tok")).await;
        assert_eq!(b["incoming_phone_numbers"].as_array().unwrap().len(), 2);
        let next = b["next_page_uri"].as_str().unwrap().to_string();
        let (_, b) = call(&f, get(&next, ACCT, "tok")).await;
        assert_eq!(b["incoming_phone_numbers"].as_array().unwrap().len(), 1);
        assert!(b["next_page_uri"].is_null());
    }

    #[tokio::test]
    async fn services_and_members() {
        let f = FakeTwilio::new();
        f.add_account(ACCT, "tok");
        let pn = f.add_number(ACCT, "+14155550100", "https://x/mo");
        let mg = f.add_service(ACCT, "svc", false);
        f.add_to_service(&mg, "+14155550100");
        let (_, b) = call(&f, get("/v1/Services", ACCT, "tok")).await;
        assert_eq!(b["services"][0]["sid"], mg.as_str());
        assert_eq!(b["services"][0]["use_inbound_webhook_on_number"], false);
        assert_eq!(b["meta"]["key"], "services");
        let (s, b) = call(
            &f,
            get(&format!("/v1/Services/{mg}/PhoneNumbers/{pn}"), ACCT, "tok"),
        )
        .await;
        assert_eq!((s, b["phone_number"].as_str()), (200, Some("+14155550100")));
        let (_, b) = call(
            &f,
            get(&format!("/v1/Services/{mg}/PhoneNumbers"), ACCT, "tok"),
        )
        .await;
        assert_eq!(b["phone_numbers"][0]["sid"], pn.as_str());
        let other = sid("PN", 999);
        let (s, _) = call(
            &f,
            get(
                &format!("/v1/Services/{mg}/PhoneNumbers/{other}"),
                ACCT,
                "tok",
            ),
        )
        .await;
        assert_eq!(s, 404);
    }

    #[tokio::test]
    async fn large_model_lookup_is_a_probe() {
        let f = FakeTwilio::new();
        f.add_account(ACCT, "tok");
        for i in 0..200_000u64 {
            f.add_number(ACCT, &format!("+1415{i:07}"), "https://x/mo");
        }
        let path = format!(
            "/2010-04-01/Accounts/{ACCT}/IncomingPhoneNumbers.json?PhoneNumber=%2B14150199999"
        );
        let (s, b) = call(&f, get(&path, ACCT, "tok")).await;
        assert_eq!(s, 200);
        assert_eq!(b["incoming_phone_numbers"].as_array().unwrap().len(), 1);
    }
}

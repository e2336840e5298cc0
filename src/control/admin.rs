//! The admin API (SPEC section 4): HTTP/1.1 + JSON on a Unix socket, served with hyper
//! directly. It authenticates a bearer token, checks the route's permission, and turns
//! each request into one `ControlStore::apply` (writes) or `snapshot` (reads). A token
//! sees its own org only; Auth Tokens go in, are sealed, and never come out.

use super::import::{check_bulk, check_import, ImportError, ImportRequest};
use super::store::ControlStore;
use super::vendor::{ImportVendorError, TwilioClient, VendorError};
use crate::config::{AdminToken, Permission};
use crate::deadletter::{DeadLetterError, DeadLetters};
use crate::model::crypto::{MasterKey, Sealed, Secret};
use crate::model::regions::{Region, REGIONS};
use crate::model::state::{
    Integration, IntegrationStatus, Number, NumberStatus, State, StateError,
};
use crate::signature::constant_time_eq;
use bytes::Bytes;
use http::header::{ALLOW, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Body;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

/// Largest request body the admin API reads.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// An API failure: the HTTP status and the `{"code","message"}` body it becomes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// Any error the contract names.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    /// The HTTP status of the response.
    pub fn status(&self) -> StatusCode {
        self.status
    }
    /// The machine-readable code of the body.
    pub fn code(&self) -> &'static str {
        self.code
    }
    /// The human message of the body.
    pub fn message(&self) -> &str {
        &self.message
    }
    /// A malformed request (bad JSON, bad field value).
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
    /// Missing or unknown; also what another org's objects look like.
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }
    /// Something on our side failed; the details are in the log, not the response.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
    /// The change would break a state invariant.
    pub fn state_invalid(e: &StateError) -> Self {
        Self::new(StatusCode::CONFLICT, "state_invalid", e.to_string())
    }
    /// The data plane refused to prepare the new state.
    pub fn publish_failed(reason: &str) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "publish_failed",
            format!("the data plane refused the change: {reason}"),
        )
    }
    fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or unknown bearer token",
        )
    }
    fn forbidden(p: Permission) -> Self {
        let name = serde_json::to_value(p)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string));
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this token lacks the {} permission",
                name.unwrap_or_default()
            ),
        )
    }
}

impl From<ImportError> for ApiError {
    fn from(e: ImportError) -> Self {
        ApiError::new(e.status(), e.code(), e.to_string())
    }
}

/// Why the admin API could not be built from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// A `token_sha256` is not 64 hex digits.
    #[error("control.admin_tokens: token_sha256 of org {org} is not 64 hex digits")]
    BadTokenHash {
        /// The org of the offending token.
        org: String,
    },
}

/// One configured token, hash decoded.
struct TokenEntry {
    hash: [u8; 32],
    principal: Principal,
}

/// Who is calling: the token's audit name, org and permissions.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Audit name of the token (never the token).
    pub token_id: String,
    /// The only org this token sees.
    pub org: String,
    /// What this token may do.
    pub permissions: HashSet<Permission>,
}

/// The admin API: configured tokens, the store, and the region whose webhook URL it shows.
pub struct AdminApi {
    store: Arc<ControlStore>,
    tokens: arc_swap::ArcSwap<Vec<TokenEntry>>,
    region: &'static Region,
    vendor: Option<Arc<TwilioClient>>,
    dead_letters: Arc<DeadLetters>,
}

/// One operation of the contract, resolved from method and path.
#[derive(Debug, Clone)]
enum Op {
    CreateIntegration,
    ListIntegrations,
    GetIntegration(String),
    PatchIntegration(String),
    DeleteIntegration(String),
    ImportNumber,
    BulkImport,
    ListNumbers,
    DeleteNumber(String),
    Regions,
    ReplayDeadLetters,
}

impl Op {
    /// The permission the route needs; `None` means any valid token.
    fn permission(&self) -> Option<Permission> {
        Some(match self {
            Op::CreateIntegration => Permission::IntegrationAdd,
            Op::ListIntegrations | Op::GetIntegration(_) => Permission::IntegrationView,
            Op::PatchIntegration(_) | Op::ReplayDeadLetters => Permission::IntegrationEdit,
            Op::DeleteIntegration(_) => Permission::IntegrationDelete,
            Op::ImportNumber | Op::BulkImport | Op::ListNumbers | Op::DeleteNumber(_) => {
                Permission::SmsNumberAll
            }
            Op::Regions => return None,
        })
    }

    fn has_body(&self) -> bool {
        matches!(
            self,
            Op::CreateIntegration
                | Op::PatchIntegration(_)
                | Op::ImportNumber
                | Op::BulkImport
                | Op::ReplayDeadLetters
        )
    }
}

/// Resolves a path to its allowed methods and the operation per method.
fn route(method: &Method, path: &str) -> Result<Op, ApiError> {
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route");
    let rest = path.strip_prefix("/api/v1/").ok_or_else(not_found)?;
    let segments: Vec<&str> = rest.split('/').collect();
    let decode = |s: &str| -> Result<String, ApiError> {
        percent_decode(s)
            .filter(|d| !d.is_empty())
            .ok_or_else(|| ApiError::invalid_request("bad percent-encoding in path"))
    };
    let allowed: &[Method] = match segments.as_slice() {
        ["integrations"] => match *method {
            Method::POST => return Ok(Op::CreateIntegration),
            Method::GET => return Ok(Op::ListIntegrations),
            _ => &[Method::GET, Method::POST],
        },
        ["integrations", id] if !id.is_empty() => match *method {
            Method::GET => return Ok(Op::GetIntegration(decode(id)?)),
            Method::PATCH => return Ok(Op::PatchIntegration(decode(id)?)),
            Method::DELETE => return Ok(Op::DeleteIntegration(decode(id)?)),
            _ => &[Method::GET, Method::PATCH, Method::DELETE],
        },
        ["numbers"] => match *method {
            Method::POST => return Ok(Op::ImportNumber),
            Method::GET => return Ok(Op::ListNumbers),
            _ => &[Method::GET, Method::POST],
        },
        ["numbers", "bulk"] if *method == Method::POST => return Ok(Op::BulkImport),
        ["numbers", sid] if !sid.is_empty() => match *method {
            Method::DELETE => return Ok(Op::DeleteNumber(decode(sid)?)),
            _ => &[Method::DELETE],
        },
        ["regions"] => match *method {
            Method::GET => return Ok(Op::Regions),
            _ => &[Method::GET],
        },
        ["dead-letters", "replay"] => match *method {
            Method::POST => return Ok(Op::ReplayDeadLetters),
            _ => &[Method::POST],
        },
        _ => return Err(not_found()),
    };
    let names: Vec<&str> = allowed.iter().map(Method::as_str).collect();
    Err(ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("allowed: {}", names.join(", ")),
    ))
}

/// Decodes `%XX` escapes (`%2B` → `+`); a literal `+` stays `+`. `None` if malformed.
fn percent_decode(s: &str) -> Option<String> {
    crate::percent::decode(s, crate::percent::Plus::Literal)
}

/// The value of one query parameter, percent-decoded.
fn query_param(query: Option<&str>, name: &str) -> Result<Option<String>, ApiError> {
    for pair in query.unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == name {
            return percent_decode(v)
                .map(Some)
                .ok_or_else(|| ApiError::invalid_request("bad percent-encoding in query"));
        }
    }
    Ok(None)
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn error_response(e: &ApiError) -> Response<Full<Bytes>> {
    let mut resp = json_response(e.status, &json!({"code": e.code, "message": e.message}));
    if e.status == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if e.status == StatusCode::METHOD_NOT_ALLOWED {
        let allow = e.message.trim_start_matches("allowed: ");
        if let Ok(v) = HeaderValue::from_str(allow) {
            resp.headers_mut().insert(ALLOW, v);
        }
    }
    resp
}

/// Hashes and principals of the configured tokens.
fn token_entries(tokens: &[AdminToken]) -> Result<Vec<TokenEntry>, AdminError> {
    tokens
        .iter()
        .map(|t| {
            let hash: [u8; 32] = hex::decode(&t.token_sha256)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| AdminError::BadTokenHash { org: t.org.clone() })?;
            let token_id =
                t.id.clone()
                    .unwrap_or_else(|| t.token_sha256[..8].to_ascii_lowercase());
            Ok(TokenEntry {
                hash,
                principal: Principal {
                    token_id,
                    org: t.org.clone(),
                    permissions: t.permissions.iter().copied().collect(),
                },
            })
        })
        .collect()
}

/// What a successful operation answers: a status and, unless 204, a JSON body.
type Reply = (StatusCode, Option<Value>);

impl AdminApi {
    /// Builds the API from the configured tokens; `region` is this instance's region.
    pub fn new(
        store: Arc<ControlStore>,
        tokens: &[AdminToken],
        region: &'static Region,
        dead_letters: Arc<DeadLetters>,
    ) -> Result<Self, AdminError> {
        let tokens = arc_swap::ArcSwap::from_pointee(token_entries(tokens)?);
        Ok(AdminApi {
            store,
            tokens,
            region,
            vendor: None,
            dead_letters,
        })
    }

    /// Turns the Twilio REST checks on (`Some`) or off (`None`, `control.vendor_checks = false`).
    pub fn with_vendor(mut self, vendor: Option<Arc<TwilioClient>>) -> Self {
        self.vendor = vendor;
        self
    }

    /// Replaces the admin tokens (SIGHUP reload); on a bad hash the old tokens stay.
    pub fn set_tokens(&self, tokens: &[AdminToken]) -> Result<(), AdminError> {
        self.tokens.store(Arc::new(token_entries(tokens)?));
        Ok(())
    }

    /// The store behind the API.
    pub fn store(&self) -> &Arc<ControlStore> {
        &self.store
    }

    /// Finds the caller by the SHA-256 of the bearer token, comparing in constant time.
    pub fn authenticate(&self, authorization: Option<&HeaderValue>) -> Option<Principal> {
        let value = authorization?.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        let token = token.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
            return None;
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut found = None;
        for entry in self.tokens.load().iter() {
            let same = constant_time_eq(&entry.hash, digest.as_ref());
            if same && found.is_none() {
                found = Some(entry.principal.clone());
            }
        }
        found
    }

    /// Answers one request; every outcome, errors included, is a JSON response.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        match self.handle_inner(req).await {
            Ok((status, Some(body))) => json_response(status, &body),
            Ok((status, None)) => {
                let mut resp = Response::new(Full::new(Bytes::new()));
                *resp.status_mut() = status;
                resp
            }
            Err(e) => error_response(&e),
        }
    }

    async fn handle_inner<B>(&self, req: Request<B>) -> Result<Reply, ApiError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let who = self
            .authenticate(req.headers().get(AUTHORIZATION))
            .ok_or_else(ApiError::unauthorized)?;
        let op = route(req.method(), req.uri().path())?;
        if let Some(p) = op.permission() {
            if !who.permissions.contains(&p) {
                return Err(ApiError::forbidden(p));
            }
        }
        let query = req.uri().query().map(str::to_string);
        let body = if op.has_body() {
            read_body(
                req,
                if matches!(op, Op::BulkImport) {
                    MAX_BULK_BODY_BYTES
                } else {
                    MAX_BODY_BYTES
                },
            )
            .await?
        } else {
            Bytes::new()
        };
        if matches!(op, Op::ReplayDeadLetters) {
            return self.replay_dead_letters(&who, &body).await;
        }
        let store = Arc::clone(&self.store);
        let region = self.region;
        let vendor = self.vendor.clone();
        let runtime = tokio::runtime::Handle::current();
        // Writes fsync the state file and vendor checks wait on Twilio: keep both off the
        // async workers (a blocking thread may wait on the runtime with `block_on`).
        tokio::task::spawn_blocking(move || {
            let ctx = Ctx {
                store: &store,
                who: &who,
                region,
                vendor: vendor.as_deref(),
                runtime: &runtime,
            };
            ctx.run(op, query.as_deref(), &body)
        })
        .await
        .unwrap_or_else(|_| Err(ApiError::internal("the request handler failed")))
    }
}

/// `POST /api/v1/dead-letters/replay`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayRequest {
    integration_id: String,
}

impl AdminApi {
    /// Replays an active own-org integration's dead letters; async, as it awaits the queues' acks.
    async fn replay_dead_letters(&self, who: &Principal, body: &[u8]) -> Result<Reply, ApiError> {
        let target = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| {
                v.get("integration_id")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "-".into());
        let result = self.replay_checked(who, body).await;
        self.audit_replay(who, &target, &result);
        result
    }

    async fn replay_checked(&self, who: &Principal, body: &[u8]) -> Result<Reply, ApiError> {
        let req: ReplayRequest = parse(body)?;
        let id = req.integration_id;
        let state = self.store.snapshot();
        let integration = state
            .integrations
            .iter()
            .find(|i| i.id == id && i.org == who.org)
            .ok_or_else(|| ApiError::not_found("integration"))?;
        if integration.status != IntegrationStatus::Active {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "integration_inactive",
                "re-activate the integration before replaying its dead letters",
            ));
        }
        let report = self.dead_letters.replay(&id).await.map_err(replay_error)?;
        Ok((StatusCode::OK, Some(json!(report))))
    }

    /// One audit line (and log line) per replay, accepted or refused, like every other change.
    fn audit_replay(&self, who: &Principal, target: &str, result: &Result<Reply, ApiError>) {
        let err = result.as_ref().err();
        let version = self.store.version();
        record_audit(
            &self.store,
            who,
            "dead_letters.replay",
            target,
            result,
            version,
        );
        let outcome = err.map_or("ok", ApiError::code);
        let report = result.as_ref().ok().and_then(|(_, v)| v.clone());
        tracing::info!(org = %who.org, token_id = %who.token_id, action = "dead_letters.replay", target = %target, result = outcome, report = ?report, "admin change");
    }
}

/// Appends one admin change to the audit log; the message is redacted of quoted values.
fn record_audit(
    store: &ControlStore,
    who: &Principal,
    action: &str,
    target: &str,
    result: &Result<Reply, ApiError>,
    state_version: u64,
) {
    use super::audit::{Entry, Outcome, Source};
    let err = result.as_ref().err();
    store.audit().record(&Entry {
        source: Source::Admin,
        org: Some(&who.org),
        token_id: Some(&who.token_id),
        action,
        target,
        result: if err.is_some() {
            Outcome::Rejected
        } else {
            Outcome::Accepted
        },
        code: err.map(ApiError::code),
        reason: err.map(ApiError::message),
        state_version,
    });
}

/// A failed replay: progress so far is kept, so the caller may simply call again.
fn replay_error(e: DeadLetterError) -> ApiError {
    match e {
        DeadLetterError::Interrupted { .. } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "replay_interrupted",
            e.to_string(),
        ),
        e => {
            tracing::error!(error = %e, "dead-letter replay failed");
            ApiError::internal("the dead letters could not be replayed; see the log")
        }
    }
}

/// Reads the whole body, refusing more than `limit` bytes.
async fn read_body<B>(req: Request<B>, limit: usize) -> Result<Bytes, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body exceeds {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(_) => Err(ApiError::invalid_request(
            "the request body could not be read",
        )),
    }
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_request(format!("invalid JSON body: {e}")))
}

/// The JSON shape of an integration: never a token.
#[derive(Serialize)]
struct IntegrationView<'a> {
    id: &'a str,
    org: &'a str,
    name: &'a str,
    notes: &'a str,
    account_sid: &'a str,
    status: IntegrationStatus,
    has_next_auth_token: bool,
    number_count: usize,
}

fn integration_view(state: &State, i: &Integration) -> Value {
    let view = IntegrationView {
        id: &i.id,
        org: &i.org,
        name: &i.name,
        notes: &i.notes,
        account_sid: &i.account_sid,
        status: i.status,
        has_next_auth_token: i.next_auth_token.is_some(),
        number_count: state.numbers.count_of(&i.id),
    };
    serde_json::to_value(view).unwrap_or(Value::Null)
}

/// The JSON shape of a number: the stored record plus its org.
#[derive(Serialize)]
struct NumberView<'a> {
    #[serde(flatten)]
    number: &'a Number,
    org: &'a str,
}

fn number_view(n: &Number, org: &str) -> Value {
    serde_json::to_value(NumberView { number: n, org }).unwrap_or(Value::Null)
}

/// `POST /api/v1/integrations`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateIntegration {
    name: String,
    #[serde(default)]
    notes: String,
    account_sid: String,
    auth_token: String,
    #[serde(default)]
    status: Option<IntegrationStatus>,
}

/// `PATCH /api/v1/integrations/{id}`: absent leaves a field alone, null clears it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchIntegration {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    notes: Option<Option<String>>,
    #[serde(default)]
    auth_token: Option<String>,
    #[serde(default, deserialize_with = "present")]
    next_auth_token: Option<Option<String>>,
    #[serde(default)]
    status: Option<IntegrationStatus>,
    /// Makes the rotation candidate the primary token and clears it.
    #[serde(default)]
    promote_next_auth_token: bool,
}

/// Distinguishes a field given as `null` (`Some(None)`) from an absent one (`None`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// A fresh integration id: `int-` and 16 random hex digits.
fn new_integration_id() -> Result<String, ApiError> {
    use ring::rand::SecureRandom;
    let mut raw = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| ApiError::internal("random generator failed"))?;
    Ok(format!("int-{}", hex::encode(raw)))
}

fn find_own<'a>(
    state: &'a mut State,
    org: &str,
    id: &str,
) -> Result<&'a mut Integration, ApiError> {
    state
        .integrations
        .iter_mut()
        .find(|i| i.id == id && i.org == org)
        .ok_or_else(|| ApiError::not_found("integration"))
}

/// One request's context on the blocking pool.
struct Ctx<'a> {
    store: &'a ControlStore,
    who: &'a Principal,
    region: &'static Region,
    /// The Twilio REST client, when vendor checks are on.
    vendor: Option<&'a TwilioClient>,
    /// Where the vendor checks' futures run while this thread waits.
    runtime: &'a tokio::runtime::Handle,
}

impl Ctx<'_> {
    fn run(&self, op: Op, query: Option<&str>, body: &[u8]) -> Result<Reply, ApiError> {
        match op {
            Op::ListIntegrations => Ok(self.list_integrations()),
            Op::GetIntegration(id) => self.get_integration(&id),
            Op::ListNumbers => self.list_numbers(query),
            Op::Regions => Ok(self.regions()),
            Op::ReplayDeadLetters => Err(ApiError::internal(
                "dead-letter replay is served on the async path",
            )),
            Op::CreateIntegration => self.audited("integration.create", "-", || {
                self.vendor_check_create(body)?;
                self.create_integration(body)
            }),
            Op::PatchIntegration(id) => self.audited(patch_action(body), &id, || {
                self.vendor_check_patch(&id, body)?;
                self.patch_integration(&id, body)
            }),
            Op::DeleteIntegration(id) => {
                self.audited("integration.delete", &id, || self.delete_integration(&id))
            }
            Op::ImportNumber => {
                let sender = import_target(body);
                self.audited("number.import", &sender, || self.import_number(body))
            }
            Op::BulkImport => {
                let count = bulk_target(body);
                self.audited("number.bulk_import", &count, || self.bulk_import(body))
            }
            Op::DeleteNumber(sid) => {
                self.audited("number.delete", &sid, || self.delete_number(&sid))
            }
        }
    }

    /// Runs a change and writes one audit line for it: who, what, and the outcome.
    fn audited(
        &self,
        action: &'static str,
        target: &str,
        f: impl FnOnce() -> Result<Reply, ApiError>,
    ) -> Result<Reply, ApiError> {
        let result = f();
        let target = match &result {
            Ok((_, Some(v))) => v
                .get("id")
                .or_else(|| v.get("sender_id"))
                .and_then(Value::as_str)
                .unwrap_or(target)
                .to_string(),
            _ => target.to_string(),
        };
        let outcome = result.as_ref().map(|_| "ok").unwrap_or_else(|e| e.code());
        self.audit_line(action, &target, &result);
        tracing::info!(
            org = %self.who.org,
            token_id = %self.who.token_id,
            action,
            target = %target,
            result = outcome,
            "admin change"
        );
        result
    }

    /// Appends the change's line to the audit log; the message is redacted of quoted values.
    fn audit_line(&self, action: &str, target: &str, result: &Result<Reply, ApiError>) {
        let version = match result {
            Err(_) => self.store.version(),
            Ok(_) => super::store::last_applied_version(),
        };
        record_audit(self.store, self.who, action, target, result, version);
    }

    fn org(&self) -> &str {
        &self.who.org
    }

    fn seal(&self, token: &str, integration_id: &str) -> Result<Sealed, ApiError> {
        if token.trim().is_empty() {
            return Err(ApiError::invalid_request("auth_token must not be empty"));
        }
        self.store
            .master_key()
            .seal(&Secret::new(token), integration_id)
            .map_err(|_| ApiError::internal("the Auth Token could not be sealed"))
    }

    fn list_integrations(&self) -> Reply {
        let state = self.store.snapshot();
        let list: Vec<Value> = state
            .integrations
            .iter()
            .filter(|i| i.org == self.org())
            .map(|i| integration_view(&state, i))
            .collect();
        (StatusCode::OK, Some(Value::Array(list)))
    }

    fn get_integration(&self, id: &str) -> Result<Reply, ApiError> {
        let mut state = self.store.snapshot();
        let found = find_own(&mut state, self.org(), id)?.clone();
        Ok((StatusCode::OK, Some(integration_view(&state, &found))))
    }

    fn create_integration(&self, body: &[u8]) -> Result<Reply, ApiError> {
        let req: CreateIntegration = parse(body)?;
        if req.name.trim().is_empty() {
            return Err(ApiError::invalid_request("name must not be empty"));
        }
        if !crate::model::state::is_account_sid(&req.account_sid) {
            return Err(ApiError::invalid_request(
                "account_sid must be AC followed by 32 hex digits",
            ));
        }
        let id = new_integration_id()?;
        let auth_token = self.seal(&req.auth_token, &id)?;
        let integration = Integration {
            id: id.clone(),
            org: self.org().to_string(),
            name: req.name,
            notes: req.notes,
            account_sid: req.account_sid,
            auth_token,
            next_auth_token: None,
            status: req.status.unwrap_or(IntegrationStatus::Active),
        };
        let view = self.store.apply(|s| {
            if s.integration(&id).is_some() {
                return Err(ApiError::internal("integration id collision; retry"));
            }
            s.integrations.push(integration.clone());
            let i = s.integration(&id).expect("just inserted");
            Ok(integration_view(s, i))
        })?;
        Ok((StatusCode::CREATED, Some(view)))
    }

    fn patch_integration(&self, id: &str, body: &[u8]) -> Result<Reply, ApiError> {
        let req: PatchIntegration = parse(body)?;
        if req.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
            return Err(ApiError::invalid_request("name must not be empty"));
        }
        let auth_token = req
            .auth_token
            .as_deref()
            .map(|t| self.seal(t, id))
            .transpose()?;
        let next_auth_token = match &req.next_auth_token {
            Some(Some(t)) => Some(Some(self.seal(t, id)?)),
            Some(None) => Some(None),
            None => None,
        };
        if req.promote_next_auth_token && (auth_token.is_some() || next_auth_token.is_some()) {
            return Err(rotation_error(
                "promote_next_auth_token cannot be combined with auth_token or next_auth_token",
            ));
        }
        let view = self.store.apply(|s| {
            let i = find_own(s, self.org(), id)?;
            if req.promote_next_auth_token {
                promote_next_auth_token(i, self.store.master_key())?;
            }
            if let Some(name) = req.name.clone() {
                i.name = name;
            }
            if let Some(notes) = req.notes.clone() {
                i.notes = notes.unwrap_or_default();
            }
            if let Some(sealed) = auth_token.clone() {
                i.auth_token = sealed;
            }
            if let Some(next) = next_auth_token.clone() {
                i.next_auth_token = next;
            }
            if let Some(status) = req.status {
                i.status = status;
                set_number_status(s, id, status);
            }
            let i = s.integration(id).expect("found above");
            Ok(integration_view(s, i))
        })?;
        Ok((StatusCode::OK, Some(view)))
    }

    fn delete_integration(&self, id: &str) -> Result<Reply, ApiError> {
        self.store.apply(|s| {
            find_own(s, self.org(), id)?;
            s.integrations.retain(|i| i.id != id);
            s.numbers.retain(|n| *n.integration_id != *id);
            Ok(())
        })?;
        Ok((StatusCode::NO_CONTENT, None))
    }

    fn import_number(&self, body: &[u8]) -> Result<Reply, ApiError> {
        let req: ImportRequest = parse(body)?;
        let org = self.org();
        // Cheap checks first, against the current state and the imports under way.
        let state = self.store.snapshot();
        check_import(&state, org, &req, &self.store.in_flight())?;
        let _reservation = self
            .store
            .reserve(&req.sender_id)
            .ok_or(ImportError::ProvisioningInProgress)?;
        // The vendor (Twilio REST) checks run here, without the state lock; the local
        // checks run again inside `apply`, against whatever changed meanwhile.
        self.vendor_check_number(&state, &req)?;
        drop(state);
        let number = self.store.apply(|s| {
            let number = check_import(s, org, &req, &HashSet::new())?;
            s.numbers.push(number.clone());
            Ok(number)
        })?;
        Ok((StatusCode::CREATED, Some(number_view(&number, org))))
    }

    fn list_numbers(&self, query: Option<&str>) -> Result<Reply, ApiError> {
        let filter = query_param(query, "integration_id")?;
        let state = self.store.snapshot();
        let own: HashSet<&str> = state
            .integrations
            .iter()
            .filter(|i| i.org == self.org())
            .map(|i| i.id.as_str())
            .collect();
        let list: Vec<Value> = state
            .numbers
            .iter()
            .filter(|n| own.contains(&*n.integration_id))
            .filter(|n| filter.is_none() || filter.as_deref() == Some(&*n.integration_id))
            .map(|n| number_view(n, self.org()))
            .collect();
        Ok((StatusCode::OK, Some(Value::Array(list))))
    }

    fn delete_number(&self, sender_id: &str) -> Result<Reply, ApiError> {
        self.store.apply(|s| {
            let owned = s.numbers.iter().any(|n| {
                *n.sender_id == *sender_id
                    && s.integration(&n.integration_id)
                        .is_some_and(|i| i.org == self.org())
            });
            if !owned {
                return Err(ApiError::not_found("number"));
            }
            s.numbers.retain(|n| *n.sender_id != *sender_id);
            Ok(())
        })?;
        Ok((StatusCode::NO_CONTENT, None))
    }

    fn regions(&self) -> Reply {
        let table: Vec<Value> = REGIONS
            .iter()
            .map(|r| json!({"name": r.name, "host": r.host, "key": r.key, "webhook_url": r.webhook_url()}))
            .collect();
        let body = json!({
            "region": self.region.name,
            "webhook_url": self.region.webhook_url(),
            "regions": table,
        });
        (StatusCode::OK, Some(body))
    }
}

/// The Twilio REST checks (`control::vendor`), run before anything is stored; each is a
/// no-op when vendor checks are off.
impl Ctx<'_> {
    /// Waits on the runtime for one vendor call (this thread is a blocking-pool thread).
    fn wait<T>(&self, call: impl Future<Output = T>) -> T {
        self.runtime.block_on(call)
    }

    /// A new integration's Account SID / Auth Token must be accepted by Twilio; a body the
    /// local validation will refuse is left to it.
    fn vendor_check_create(&self, body: &[u8]) -> Result<(), ApiError> {
        let Some(vendor) = self.vendor else {
            return Ok(());
        };
        let Ok(req) = serde_json::from_slice::<CreateIntegration>(body) else {
            return Ok(());
        };
        let valid = !req.name.trim().is_empty()
            && crate::model::state::is_account_sid(&req.account_sid)
            && !req.auth_token.trim().is_empty();
        if !valid {
            return Ok(());
        }
        let token = Secret::new(req.auth_token);
        Ok(self.wait(vendor.check_credentials(&req.account_sid, &token))?)
    }

    /// Every Auth Token a PATCH sets (primary or next) must be accepted by Twilio for the
    /// integration's account; an unknown integration is left to the handler's 404.
    fn vendor_check_patch(&self, id: &str, body: &[u8]) -> Result<(), ApiError> {
        let Some(vendor) = self.vendor else {
            return Ok(());
        };
        let Ok(req) = serde_json::from_slice::<PatchIntegration>(body) else {
            return Ok(());
        };
        let mut state = self.store.snapshot();
        let Ok(integration) = find_own(&mut state, self.org(), id) else {
            return Ok(());
        };
        let tokens = [req.auth_token, req.next_auth_token.flatten()];
        for token in tokens
            .into_iter()
            .flatten()
            .filter(|t| !t.trim().is_empty())
        {
            let token = Secret::new(token);
            self.wait(vendor.check_credentials(&integration.account_sid, &token))?;
        }
        Ok(())
    }

    /// The import's vendor checks with the integration's primary token, then its next
    /// token if Twilio rejects the primary (a rotation may be under way at Twilio).
    fn vendor_check_number(&self, state: &State, req: &ImportRequest) -> Result<(), ApiError> {
        self.wait(self.vendor_check_number_async(state, req))
    }
}

/// Deactivation disables an integration's numbers; reactivation makes them active again.
fn set_number_status(state: &mut State, integration_id: &str, status: IntegrationStatus) {
    let (from, to) = match status {
        IntegrationStatus::Inactive => (NumberStatus::Active, NumberStatus::Disabled),
        IntegrationStatus::Active => (NumberStatus::Disabled, NumberStatus::Active),
    };
    let affected = |n: &Number| *n.integration_id == *integration_id && n.status == from;
    // Writing copies a shared number list: only when a number really changes.
    if !state.numbers.iter().any(affected) {
        return;
    }
    for n in state.numbers.iter_mut() {
        if affected(n) {
            n.status = to;
        }
    }
}

/// A token rotation request that cannot be carried out (422 `invalid_request`).
fn rotation_error(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
}

/// Ends a rotation: the next token becomes the primary, re-sealed under the integration
/// id with a fresh nonce, and the next slot is cleared.
fn promote_next_auth_token(i: &mut Integration, key: &MasterKey) -> Result<(), ApiError> {
    let next = i
        .next_auth_token
        .take()
        .ok_or_else(|| rotation_error("no next_auth_token is set to promote"))?;
    let sealing_failed = |_| ApiError::internal("the next Auth Token could not be re-sealed");
    let token = key.open(&next, &i.id).map_err(sealing_failed)?;
    i.auth_token = key.seal(&token, &i.id).map_err(sealing_failed)?;
    Ok(())
}

/// Serves the admin API on a Unix socket until `shutdown` resolves, then lets open
/// connections finish their current request.
pub async fn serve(
    listener: tokio::net::UnixListener,
    api: Arc<AdminApi>,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(serve_connection(stream, Arc::clone(&api), stop_rx.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    let _ = stop_tx.send(true);
    while conns.join_next().await.is_some() {}
}

async fn serve_connection(
    stream: tokio::net::UnixStream,
    api: Arc<AdminApi>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let service = hyper::service::service_fn(move |req| {
        let api = Arc::clone(&api);
        async move { Ok::<_, Infallible>(api.handle(req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "admin connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_methods() {
        assert!(matches!(
            route(&Method::GET, "/api/v1/integrations"),
            Ok(Op::ListIntegrations)
        ));
        assert!(matches!(
            route(&Method::DELETE, "/api/v1/numbers/%2B15551230001"),
            Ok(Op::DeleteNumber(s)) if s == "+15551230001"
        ));
        assert!(matches!(
            route(&Method::DELETE, "/api/v1/numbers/+15551230001"),
            Ok(Op::DeleteNumber(s)) if s == "+15551230001"
        ));
        assert_eq!(
            route(&Method::PUT, "/api/v1/integrations")
                .unwrap_err()
                .status(),
            405
        );
        assert_eq!(
            route(&Method::GET, "/api/v1/nope").unwrap_err().status(),
            404
        );
        assert_eq!(
            route(&Method::GET, "/api/v1/integrations/a/b")
                .unwrap_err()
                .status(),
            404
        );
        assert_eq!(
            route(&Method::GET, "/api/v1/integrations/")
                .unwrap_err()
                .status(),
            404
        );
        assert_eq!(
            route(&Method::DELETE, "/api/v1/numbers/%zz")
                .unwrap_err()
                .status(),
            400
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("%2B1%20a").as_deref(), Some("+1 a"));
        assert_eq!(percent_decode("%2").as_deref(), None);
        assert_eq!(percent_decode("%ff").as_deref(), None);
        assert_eq!(
            query_param(Some("a=1&integration_id=int-%41"), "integration_id")
                .unwrap()
                .as_deref(),
            Some("int-A")
        );
        assert_eq!(query_param(None, "x").unwrap(), None);
    }

    #[test]
    fn import_errors_map_to_contract() {
        let e: ApiError = ImportError::NumberUnavailable.into();
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::CONFLICT, "number_unavailable")
        );
    }
}

/// Most numbers in one `POST /api/v1/numbers/bulk`.
pub const MAX_BULK_NUMBERS: usize = 100_000;
/// Body limit of a bulk import (about 300 bytes a number).
pub const MAX_BULK_BODY_BYTES: usize = 32 * 1024 * 1024;
/// Twilio REST checks in flight at once during a bulk import.
const BULK_VENDOR_CONCURRENCY: usize = 32;

/// `POST /api/v1/numbers/bulk`: many imports, all or nothing.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkImport {
    numbers: Vec<ImportRequest>,
}

/// Bulk import: the seed's UI imports one number at a time, but an inventory of thousands
/// (or a load test of a million) needs one state write and one snapshot swap per batch.
impl Ctx<'_> {
    fn bulk_import(&self, body: &[u8]) -> Result<Reply, ApiError> {
        let req: BulkImport = parse(body)?;
        if req.numbers.is_empty() || req.numbers.len() > MAX_BULK_NUMBERS {
            return Err(ApiError::invalid_request(format!(
                "numbers must hold 1 to {MAX_BULK_NUMBERS} imports"
            )));
        }
        let org = self.org();
        let state = self.store.snapshot();
        check_bulk(&state, org, &req.numbers, &self.store.in_flight())
            .map_err(at_index(&req.numbers))?;
        let mut reservations = Vec::with_capacity(req.numbers.len());
        for (i, r) in req.numbers.iter().enumerate() {
            let held = self.store.reserve(&r.sender_id);
            reservations.push(
                held.ok_or_else(|| {
                    at_index(&req.numbers)((i, ImportError::ProvisioningInProgress))
                })?,
            );
        }
        self.vendor_check_all(&state, &req.numbers)?;
        drop(state);
        let imported = self.store.apply(|s| {
            let numbers = check_bulk(s, org, &req.numbers, &HashSet::new())
                .map_err(at_index(&req.numbers))?;
            let n = numbers.len();
            s.numbers.extend(numbers);
            Ok(n)
        })?;
        drop(reservations);
        Ok((
            StatusCode::CREATED,
            Some(serde_json::json!({ "imported": imported })),
        ))
    }

    /// The Twilio checks of every number, `BULK_VENDOR_CONCURRENCY` at a time; the first failure wins.
    fn vendor_check_all(&self, state: &State, reqs: &[ImportRequest]) -> Result<(), ApiError> {
        use futures_util::stream::{self, TryStreamExt};
        if self.vendor.is_none() {
            return Ok(());
        }
        self.wait(async {
            stream::iter(reqs.iter().enumerate().map(Ok::<_, ApiError>))
                .map_ok(|(i, r)| async move {
                    self.vendor_check_number_async(state, r).await.map_err(|e| {
                        ApiError::new(
                            e.status(),
                            e.code(),
                            format!("numbers[{i}] ({}): {}", r.sender_id, e.message()),
                        )
                    })
                })
                .try_buffer_unordered(BULK_VENDOR_CONCURRENCY)
                .try_collect::<Vec<()>>()
                .await
        })?;
        Ok(())
    }

    /// One number's Twilio check, trying the rotation token if Twilio rejects the primary.
    async fn vendor_check_number_async(
        &self,
        state: &State,
        req: &ImportRequest,
    ) -> Result<(), ApiError> {
        let Some(vendor) = self.vendor else {
            return Ok(());
        };
        let integration = req
            .integration_id
            .as_deref()
            .and_then(|id| state.integration(id))
            .ok_or(ImportError::IntegrationMissing)?;
        let open = |sealed: &Sealed| {
            self.store
                .master_key()
                .open(sealed, &integration.id)
                .map_err(|_| ApiError::internal("the stored Auth Token could not be opened"))
        };
        let webhook_url = self.region.webhook_url();
        let primary = open(&integration.auth_token)?;
        let result = vendor
            .check_number(
                &integration.account_sid,
                &primary,
                &req.sender_id,
                req.kind,
                &webhook_url,
            )
            .await;
        let rejected = ImportVendorError::Vendor(VendorError::CredentialsRejected);
        match (&result, &integration.next_auth_token) {
            (Err(e), Some(next)) if *e == rejected => {
                let next = open(next)?;
                Ok(vendor
                    .check_number(
                        &integration.account_sid,
                        &next,
                        &req.sender_id,
                        req.kind,
                        &webhook_url,
                    )
                    .await?)
            }
            _ => Ok(result?),
        }
    }
}

/// Prefixes an import error with the position and sender ID it belongs to.
fn at_index(reqs: &[ImportRequest]) -> impl Fn((usize, ImportError)) -> ApiError + '_ {
    move |(i, e)| {
        let sender = reqs.get(i).map_or("", |r| r.sender_id.as_str());
        ApiError::new(
            e.status(),
            e.code(),
            format!("numbers[{i}] ({sender}): {e}"),
        )
    }
}

/// The audit action of a PATCH, named for what it does (the body's token values are never read here).
fn patch_action(body: &[u8]) -> &'static str {
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
        return "integration.update";
    };
    match fields.get("status").and_then(Value::as_str) {
        Some("inactive") => return "integration.deactivate",
        Some("active") => return "integration.activate",
        _ => {}
    }
    if fields.get("promote_next_auth_token") == Some(&Value::Bool(true)) {
        return "integration.rotate.promote";
    }
    if fields.contains_key("next_auth_token") {
        return "integration.rotate.next_token";
    }
    if fields.contains_key("auth_token") {
        return "integration.token";
    }
    "integration.update"
}

/// The sender ID an import names (a public identifier), for the audit line even when refused.
fn import_target(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.get("sender_id")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .filter(|s| s.len() <= 32 && s.chars().all(|c| c == '+' || c.is_ascii_digit()))
        .unwrap_or_else(|| "-".into())
}

/// How many numbers a bulk import carries, as its audit target.
fn bulk_target(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.get("numbers")
                .and_then(Value::as_array)
                .map(|a| format!("{} numbers", a.len()))
        })
        .unwrap_or_else(|| "-".into())
}

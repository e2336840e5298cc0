//! The admin API (SPEC section 4): HTTP/1.1 + JSON on a Unix socket, served with hyper
//! directly. It authenticates a bearer token, checks the route's permission, parses the
//! body into the operation's typed request, runs the operation (`control::ops`), maps its
//! error to a status, and writes one audit line per change from the typed request and its
//! result. A token sees its own org only; Auth Tokens go in, are sealed, and never come out.

mod auth;
mod error;
mod route;
mod views;

pub(crate) use auth::{AdminError, Principal};
pub use error::ApiError;

use crate::config::AdminToken;
use crate::control::audit::{Entry, Outcome, Source};
use crate::control::import::ImportRequest;
use crate::control::ops::{self, Ctx};
use crate::control::store::{Applied, ControlStore};
use crate::control::vendor::TwilioClient;
use crate::deadletter::DeadLetters;
use crate::model::regions::Region;
use crate::shutdown::Shutdown;
use auth::TokenEntry;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Body;
use route::Route;
use serde::Deserialize;
use serde_json::Value;
use std::convert::Infallible;
use std::sync::Arc;

/// Largest request body the admin API reads (a bulk import may be larger).
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024;

/// The admin API: configured tokens, the store, and the region whose webhook URL it shows.
pub struct AdminApi {
    store: Arc<ControlStore>,
    tokens: arc_swap::ArcSwap<Vec<TokenEntry>>,
    region: &'static Region,
    vendor: Option<Arc<TwilioClient>>,
    dead_letters: Arc<DeadLetters>,
    /// `queues.max_per_org`.
    max_queues_per_org: usize,
    /// The webhook's recent signature rejections.
    rejections: Arc<crate::rejections::Rejections>,
}

/// What a successful request answers: a status and, unless 204, a JSON body.
type Reply = (StatusCode, Option<Value>);

/// An accepted change: its answer, the version it made, and the object it is about.
struct Changed {
    reply: Reply,
    version: u64,
    target: String,
}

impl Changed {
    fn new(status: StatusCode, body: Option<Value>, version: u64, target: &str) -> Changed {
        Changed {
            reply: (status, body),
            version,
            target: target.to_string(),
        }
    }
}

impl AdminApi {
    /// Builds the API from the configured tokens; `region` is this instance's region.
    pub fn new(
        store: Arc<ControlStore>,
        tokens: &[AdminToken],
        region: &'static Region,
        dead_letters: Arc<DeadLetters>,
    ) -> Result<Self, AdminError> {
        let tokens = arc_swap::ArcSwap::from_pointee(auth::token_entries(tokens)?);
        Ok(AdminApi {
            store,
            tokens,
            region,
            vendor: None,
            dead_letters,
            max_queues_per_org: crate::config::QueuesConfig::default().max_per_org,
            rejections: Arc::default(),
        })
    }

    /// Turns the Twilio REST checks on (`Some`) or off (`None`, `control.vendor_checks = false`).
    pub(crate) fn with_vendor(mut self, vendor: Option<Arc<TwilioClient>>) -> Self {
        self.vendor = vendor;
        self
    }

    /// Shows the webhook's signature rejections (`GET …/signature-failures`).
    pub(crate) fn with_rejections(mut self, r: Arc<crate::rejections::Rejections>) -> Self {
        self.rejections = r;
        self
    }

    /// Sets how many queues one org's numbers may use (`queues.max_per_org`).
    pub(crate) fn with_queue_limit(mut self, max_per_org: usize) -> Self {
        self.max_queues_per_org = max_per_org;
        self
    }

    /// Replaces the admin tokens (SIGHUP reload); on a bad hash the old tokens stay.
    pub(crate) fn set_tokens(&self, tokens: &[AdminToken]) -> Result<(), AdminError> {
        self.tokens.store(Arc::new(auth::token_entries(tokens)?));
        Ok(())
    }

    /// The store behind the API.
    pub fn store(&self) -> &Arc<ControlStore> {
        &self.store
    }

    /// Finds the caller by the SHA-256 of the bearer token, comparing in constant time.
    pub(crate) fn authenticate(
        &self,
        authorization: Option<&http::HeaderValue>,
    ) -> Option<Principal> {
        auth::authenticate(&self.tokens.load(), authorization)
    }

    /// Answers one request; every outcome, errors included, is a JSON response.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        match self.handle_inner(req).await {
            Ok((status, Some(body))) => views::json_response(status, &body),
            Ok((status, None)) => views::empty_response(status),
            Err(e) => views::error_response(&e),
        }
    }

    async fn handle_inner<B>(&self, req: Request<B>) -> Result<Reply, ApiError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Some(who) = self.authenticate(req.headers().get(AUTHORIZATION)) else {
            return Err(self.refused(None, &req, ApiError::unauthorized()));
        };
        let route = route::route(req.method(), req.uri().path())?;
        if let Some(p) = route.permission() {
            if !who.permissions.contains(&p) {
                let e = ApiError::forbidden(&auth::permission_name(p));
                return Err(self.refused(Some(&who), &req, e));
            }
        }
        let query = req.uri().query().map(str::to_string);
        let body = match route.body_limit() {
            Some(limit) => read_body(req, limit).await?,
            None => Bytes::new(),
        };
        if matches!(route, Route::ReplayDeadLetters) {
            return self.replay_dead_letters(&who, &body).await;
        }
        let store = Arc::clone(&self.store);
        let region = self.region;
        let vendor = self.vendor.clone();
        let dead_letters = Arc::clone(&self.dead_letters);
        let rejections = Arc::clone(&self.rejections);
        let runtime = tokio::runtime::Handle::current();
        let max_queues_per_org = self.max_queues_per_org;
        // Writes fsync the state file and vendor checks wait on Twilio: keep both off the
        // async workers (a blocking thread may wait on the runtime with `block_on`).
        tokio::task::spawn_blocking(move || {
            let ctx = Ctx {
                store: &store,
                org: &who.org,
                region,
                vendor: vendor.as_deref(),
                runtime: &runtime,
                max_queues_per_org,
            };
            Caller {
                ctx: &ctx,
                who: &who,
                dead_letters: &dead_letters,
                rejections: &rejections,
            }
            .run(route, query.as_deref(), &body)
        })
        .await
        .unwrap_or_else(|_| Err(ApiError::internal("the request handler failed")))
    }

    /// Audits a refused request (401/403): the token id or `unknown`, the method and path,
    /// the reason; rate-limited by the audit log so a flood cannot fill the disk.
    fn refused<B>(&self, who: Option<&Principal>, req: &Request<B>, e: ApiError) -> ApiError {
        let mut target = format!("{} {}", req.method(), req.uri().path());
        if target.len() > 200 {
            let mut cut = 200;
            while !target.is_char_boundary(cut) {
                cut -= 1;
            }
            target.truncate(cut);
        }
        metrics::counter!("sms_ingress_admin_refused_total", "code" => e.code()).increment(1);
        self.store.audit().record_refused(&Entry {
            source: Source::Admin,
            org: who.map(|w| w.org.as_str()),
            token_id: Some(who.map_or("unknown", |w| w.token_id.as_str())),
            action: "admin.refused",
            target: &target,
            result: Outcome::Rejected,
            code: Some(e.code()),
            reason: Some(e.message()),
            state_version: self.store.version(),
        });
        e
    }

    /// Replays an active own-org integration's dead letters; async, as it awaits the
    /// queues' acks. One audit line and one log line, accepted or refused.
    async fn replay_dead_letters(&self, who: &Principal, body: &[u8]) -> Result<Reply, ApiError> {
        let parsed = parse::<ops::dead_letter_replay::ReplayRequest>(body);
        let target = parsed
            .as_ref()
            .map_or("-".to_string(), |r| r.integration_id.clone());
        let result = match parsed {
            Ok(req) => {
                ops::dead_letter_replay::run(&self.store, &self.dead_letters, &who.org, &req)
                    .await
                    .map_err(ApiError::from)
                    .map(|report| (StatusCode::OK, Some(serde_json::json!(report))))
            }
            Err(e) => Err(e),
        };
        let version = self.store.version();
        record_audit(
            &self.store,
            who,
            "dead_letters.replay",
            &target,
            &result,
            version,
        );
        let outcome = result.as_ref().err().map_or("ok", ApiError::code);
        let report = result.as_ref().ok().and_then(|(_, v)| v.clone());
        tracing::info!(org = %who.org, token_id = %who.token_id, action = "dead_letters.replay", target = %target, result = outcome, report = ?report, "admin change");
        result
    }
}

/// One request on the blocking pool: the operation's context and the caller.
struct Caller<'a> {
    ctx: &'a Ctx<'a>,
    who: &'a Principal,
    /// A deleted integration's dead letters are deleted with it.
    dead_letters: &'a DeadLetters,
    /// And its signature rejections.
    rejections: &'a crate::rejections::Rejections,
}

impl Caller<'_> {
    fn run(&self, route: Route, query: Option<&str>, body: &[u8]) -> Result<Reply, ApiError> {
        let ctx = self.ctx;
        match route {
            Route::ListIntegrations => {
                let list = ops::reads::list_integrations(ctx);
                Ok(ok(Value::Array(
                    list.iter().map(views::integration).collect(),
                )))
            }
            Route::GetIntegration(id) => {
                let info = ops::reads::get_integration(ctx, &id)?;
                Ok(ok(views::integration(&info)))
            }
            Route::SignatureFailures(id) => {
                // Another org's integration is 404, like a missing one.
                ops::reads::get_integration(ctx, &id)?;
                let list = self.rejections.of(&id);
                Ok(ok(serde_json::to_value(list).unwrap_or(Value::Null)))
            }
            Route::ListNumbers => {
                let filter = route::query_param(query, "integration_id")?;
                let list = ops::reads::list_numbers(ctx, filter.as_deref());
                let org = ctx.org;
                Ok(ok(Value::Array(
                    list.iter().map(|n| views::number(n, org)).collect(),
                )))
            }
            Route::Regions => Ok(ok(views::regions(ctx.region))),
            Route::ReplayDeadLetters => Err(ApiError::internal(
                "dead-letter replay is served on the async path",
            )),
            Route::CreateIntegration => self.audited("integration.create", "-", || {
                let a = ops::integration_create::run(ctx, parse(body)?)?;
                let id = a.value.integration.id.clone();
                Ok(changed(StatusCode::CREATED, a, views::integration, &id))
            }),
            Route::PatchIntegration(id) => {
                let parsed = parse::<ops::integration_patch::PatchIntegration>(body);
                let action = parsed
                    .as_ref()
                    .map_or(ops::integration_patch::ACTION, |r| r.action());
                self.audited(action, &id, || {
                    let a = ops::integration_patch::run(ctx, &id, parsed?)?;
                    Ok(changed(StatusCode::OK, a, views::integration, &id))
                })
            }
            Route::DeleteIntegration(id) => self.audited("integration.delete", &id, || {
                let a = ops::integration_delete::run(ctx, &id)?;
                // Its dead letters go with it: nothing can replay them any more.
                self.dead_letters.forget(&id);
                self.rejections.forget(&id);
                Ok(Changed::new(StatusCode::NO_CONTENT, None, a.version, &id))
            }),
            Route::ImportNumber => {
                let parsed = parse::<ImportRequest>(body);
                let target = parsed
                    .as_ref()
                    .map_or("-".to_string(), ops::number_import::target);
                self.audited("number.import", &target, || {
                    let a = ops::number_import::run(ctx, parsed?)?;
                    let sender = a.value.sender_id.to_string();
                    let org = ctx.org;
                    Ok(changed(
                        StatusCode::CREATED,
                        a,
                        |n| views::number(n, org),
                        &sender,
                    ))
                })
            }
            Route::BulkImport => {
                let parsed = parse::<ops::number_bulk::BulkImport>(body);
                let target = parsed
                    .as_ref()
                    .map_or("-".to_string(), ops::number_bulk::BulkImport::target);
                self.audited("number.bulk_import", &target, || {
                    let a = ops::number_bulk::run(ctx, parsed?)?;
                    let body = serde_json::json!({ "imported": a.value });
                    Ok(Changed::new(
                        StatusCode::CREATED,
                        Some(body),
                        a.version,
                        &target,
                    ))
                })
            }
            Route::DeleteNumber(sid) => self.audited("number.delete", &sid, || {
                let a = ops::number_delete::run(ctx, &sid)?;
                Ok(Changed::new(StatusCode::NO_CONTENT, None, a.version, &sid))
            }),
        }
    }

    /// Runs a change and writes one audit line for it: who, what, and the outcome.
    fn audited(
        &self,
        action: &'static str,
        target: &str,
        change: impl FnOnce() -> Result<Changed, ApiError>,
    ) -> Result<Reply, ApiError> {
        let (result, version, target) = match change() {
            Ok(c) => (Ok(c.reply), c.version, c.target),
            Err(e) => (Err(e), self.ctx.store.version(), target.to_string()),
        };
        record_audit(self.ctx.store, self.who, action, &target, &result, version);
        let outcome = result.as_ref().map(|_| "ok").unwrap_or_else(|e| e.code());
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
}

/// A 200 with a body.
fn ok(body: Value) -> Reply {
    (StatusCode::OK, Some(body))
}

/// An accepted change answered with `view` of its value.
fn changed<T>(
    status: StatusCode,
    applied: Applied<T>,
    view: impl FnOnce(&T) -> Value,
    target: &str,
) -> Changed {
    Changed::new(status, Some(view(&applied.value)), applied.version, target)
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

/// The typed request of a body.
fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_request(format!("invalid JSON body: {e}")))
}

/// Serves the admin API on a Unix socket until shutdown begins, then lets open
/// connections finish their current request.
pub async fn serve(listener: tokio::net::UnixListener, api: Arc<AdminApi>, shutdown: Shutdown) {
    let accept = crate::accept::Accept {
        name: "admin",
        max_connections: crate::accept::SIDE_MAX_CONNECTIONS,
    };
    crate::accept::serve(listener, accept, shutdown, move |stream, _, shutdown| {
        let api = Arc::clone(&api);
        let service = hyper::service::service_fn(move |req| {
            let api = Arc::clone(&api);
            async move { Ok::<_, Infallible>(api.handle(req).await) }
        });
        crate::accept::serve_http1(stream, service, shutdown)
    })
    .await
}

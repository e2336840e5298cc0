//! The admin API's JSON: what an integration, a number and the regions look like to a
//! tenant admin (never a token), and the response envelope of answers and errors.

use super::error::ApiError;
use crate::control::ops::IntegrationInfo;
use crate::model::regions::{Region, REGIONS};
use crate::model::state::{IntegrationStatus, Number};
use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use serde_json::{json, Value};

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
    /// The SharedKeys' ids; their secrets are never shown.
    signing_keys: Vec<Value>,
    number_count: usize,
}

/// An integration as the API shows it.
pub(super) fn integration(info: &IntegrationInfo) -> Value {
    let i = &info.integration;
    let view = IntegrationView {
        id: &i.id,
        org: &i.org,
        name: &i.name,
        notes: &i.notes,
        account_sid: &i.account_sid,
        status: i.status,
        has_next_auth_token: i.next_auth_token.is_some(),
        signing_keys: i.signing_keys.iter().map(|k| json!({"id": k.id})).collect(),
        number_count: info.number_count,
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

/// A number as the API shows it.
pub(super) fn number(n: &Number, org: &str) -> Value {
    serde_json::to_value(NumberView { number: n, org }).unwrap_or(Value::Null)
}

/// What an admin may add to the URL in Twilio without breaking the import check.
const CONNECTION_OVERRIDES: &str = "Twilio's connection overrides may follow the URL as a fragment (for example #rc=3&rp=all): Twilio never sends it, and the import compares the URL before '#'";

/// This instance's webhook URL (what to set in Twilio, and how), and every region's.
pub(super) fn regions(region: &Region) -> Value {
    let table: Vec<Value> = REGIONS
        .iter()
        .map(|r| json!({"name": r.name, "host": r.host, "key": r.key, "webhook_url": r.webhook_url()}))
        .collect();
    json!({
        "region": region.name,
        "webhook_url": region.webhook_url(),
        "method": "POST",
        "connection_overrides": CONNECTION_OVERRIDES,
        "regions": table,
    })
}

/// A JSON answer.
pub(super) fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// An answer without a body (204).
pub(super) fn empty_response(status: StatusCode) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

/// An error as `{"code","message"}`, with the headers its status calls for.
pub(super) fn error_response(e: &ApiError) -> Response<Full<Bytes>> {
    let mut resp = json_response(
        e.status(),
        &json!({"code": e.code(), "message": e.message()}),
    );
    if e.status() == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if e.status() == StatusCode::METHOD_NOT_ALLOWED {
        let allow = e.message().trim_start_matches("allowed: ");
        if let Ok(v) = HeaderValue::from_str(allow) {
            resp.headers_mut().insert(ALLOW, v);
        }
    }
    resp
}

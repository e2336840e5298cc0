//! The admin API's routes: method and path to one operation of the contract, the
//! permission it needs, and its path and query parameters, percent-decoded.

use super::error::ApiError;
use crate::config::Permission;
use crate::percent::{decode, Plus};
use http::{Method, StatusCode};

/// One operation of the contract, resolved from method and path.
#[derive(Debug, Clone)]
pub(super) enum Route {
    CreateIntegration,
    ListIntegrations,
    GetIntegration(String),
    PatchIntegration(String),
    DeleteIntegration(String),
    SignatureFailures(String),
    ImportNumber,
    BulkImport,
    ListNumbers,
    DeleteNumber(String),
    Regions,
    ReplayDeadLetters,
}

impl Route {
    /// The permission the route needs; `None` means any valid token.
    pub(crate) fn permission(&self) -> Option<Permission> {
        Some(match self {
            Route::CreateIntegration => Permission::IntegrationAdd,
            Route::ListIntegrations | Route::GetIntegration(_) | Route::SignatureFailures(_) => {
                Permission::IntegrationView
            }
            Route::PatchIntegration(_) | Route::ReplayDeadLetters => Permission::IntegrationEdit,
            Route::DeleteIntegration(_) => Permission::IntegrationDelete,
            Route::ImportNumber
            | Route::BulkImport
            | Route::ListNumbers
            | Route::DeleteNumber(_) => Permission::SmsNumberAll,
            Route::Regions => return None,
        })
    }

    /// The largest body the route reads; `None`: it reads none.
    pub(crate) fn body_limit(&self) -> Option<usize> {
        match self {
            Route::BulkImport => Some(crate::control::ops::number_bulk::MAX_BULK_BODY_BYTES),
            Route::CreateIntegration
            | Route::PatchIntegration(_)
            | Route::ImportNumber
            | Route::ReplayDeadLetters => Some(super::MAX_BODY_BYTES),
            _ => None,
        }
    }
}

/// Resolves a path to its allowed methods and the operation per method.
pub(super) fn route(method: &Method, path: &str) -> Result<Route, ApiError> {
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route");
    let rest = path.strip_prefix("/api/v1/").ok_or_else(not_found)?;
    let segments: Vec<&str> = rest.split('/').collect();
    let decode = |s: &str| -> Result<String, ApiError> {
        decode(s, Plus::Literal)
            .filter(|d| !d.is_empty())
            .ok_or_else(|| ApiError::invalid_request("bad percent-encoding in path"))
    };
    let allowed: &[Method] = match segments.as_slice() {
        ["integrations"] => match *method {
            Method::POST => return Ok(Route::CreateIntegration),
            Method::GET => return Ok(Route::ListIntegrations),
            _ => &[Method::GET, Method::POST],
        },
        ["integrations", id] if !id.is_empty() => match *method {
            Method::GET => return Ok(Route::GetIntegration(decode(id)?)),
            Method::PATCH => return Ok(Route::PatchIntegration(decode(id)?)),
            Method::DELETE => return Ok(Route::DeleteIntegration(decode(id)?)),
            _ => &[Method::GET, Method::PATCH, Method::DELETE],
        },
        ["integrations", id, "signature-failures"] if !id.is_empty() => match *method {
            Method::GET => return Ok(Route::SignatureFailures(decode(id)?)),
            _ => &[Method::GET],
        },
        ["numbers"] => match *method {
            Method::POST => return Ok(Route::ImportNumber),
            Method::GET => return Ok(Route::ListNumbers),
            _ => &[Method::GET, Method::POST],
        },
        ["numbers", "bulk"] if *method == Method::POST => return Ok(Route::BulkImport),
        ["numbers", sid] if !sid.is_empty() => match *method {
            Method::DELETE => return Ok(Route::DeleteNumber(decode(sid)?)),
            _ => &[Method::DELETE],
        },
        ["regions"] => match *method {
            Method::GET => return Ok(Route::Regions),
            _ => &[Method::GET],
        },
        ["dead-letters", "replay"] => match *method {
            Method::POST => return Ok(Route::ReplayDeadLetters),
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

/// The value of one query parameter, percent-decoded.
pub(super) fn query_param(query: Option<&str>, name: &str) -> Result<Option<String>, ApiError> {
    for pair in query.unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == name {
            return decode(v, Plus::Literal)
                .map(Some)
                .ok_or_else(|| ApiError::invalid_request("bad percent-encoding in query"));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_methods() {
        assert!(matches!(
            route(&Method::GET, "/api/v1/integrations"),
            Ok(Route::ListIntegrations)
        ));
        assert!(matches!(
            route(&Method::DELETE, "/api/v1/numbers/%2B15551230001"),
            Ok(Route::DeleteNumber(s)) if s == "+15551230001"
        ));
        assert!(matches!(
            route(&Method::DELETE, "/api/v1/numbers/+15551230001"),
            Ok(Route::DeleteNumber(s)) if s == "+15551230001"
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
        assert_eq!(
            query_param(Some("a=1&integration_id=int-%41"), "integration_id")
                .unwrap()
                .as_deref(),
            Some("int-A")
        );
        assert_eq!(query_param(None, "x").unwrap(), None);
    }
}

//! Who is calling: bearer tokens configured by their SHA-256 (never the token), compared
//! in constant time, each with one org and a set of the seed's permissions.

use crate::config::{AdminToken, Permission};
use crate::signature::constant_time_eq;
use http::HeaderValue;
use std::collections::HashSet;

/// Why the tokens could not be taken from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// A `token_sha256` is not 64 hex digits.
    #[error("control.admin_tokens: token_sha256 of org {org} is not 64 hex digits")]
    BadTokenHash {
        /// The org of the offending token.
        org: String,
    },
}

/// Who is calling: the token's audit name, org and permissions.
#[derive(Debug, Clone)]
pub(crate) struct Principal {
    /// Audit name of the token (never the token).
    pub(crate) token_id: String,
    /// The only org this token sees.
    pub(crate) org: String,
    /// What this token may do.
    pub(crate) permissions: HashSet<Permission>,
}

/// One configured token, hash decoded.
pub(super) struct TokenEntry {
    hash: [u8; 32],
    principal: Principal,
}

/// Hashes and principals of the configured tokens.
pub(super) fn token_entries(tokens: &[AdminToken]) -> Result<Vec<TokenEntry>, AdminError> {
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

/// Finds the caller by the SHA-256 of the bearer token, comparing every entry in
/// constant time.
pub(super) fn authenticate(
    tokens: &[TokenEntry],
    authorization: Option<&HeaderValue>,
) -> Option<Principal> {
    let value = authorization?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return None;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut found = None;
    for entry in tokens {
        let same = constant_time_eq(&entry.hash, digest.as_ref());
        if same && found.is_none() {
            found = Some(entry.principal.clone());
        }
    }
    found
}

/// The permission's name as configured (`integration:add`, ...).
pub(super) fn permission_name(p: Permission) -> String {
    serde_json::to_value(p)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

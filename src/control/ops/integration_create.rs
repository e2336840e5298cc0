//! `POST /api/v1/integrations`: a tenant's Twilio (sub-)account, its Auth Token proven with
//! Twilio first (when vendor checks are on), then sealed and stored.

use super::{Ctx, IntegrationInfo, OpError, SigningKeyInput};
use crate::control::store::Applied;
use crate::model::crypto::Secret;
use crate::model::state::{check_text_limits, is_account_sid, Integration, IntegrationStatus};
use serde::Deserialize;

/// The request body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateIntegration {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) notes: String,
    pub(crate) account_sid: String,
    pub(crate) auth_token: String,
    #[serde(default)]
    pub(crate) status: Option<IntegrationStatus>,
    /// Twilio SharedKeys, at most two.
    #[serde(default)]
    pub(crate) signing_keys: Vec<SigningKeyInput>,
}

/// Checks the request, has Twilio accept the credentials, then adds the integration.
pub(crate) fn run(
    ctx: &Ctx<'_>,
    req: CreateIntegration,
) -> Result<Applied<IntegrationInfo>, OpError> {
    let limits = check_text_limits(&req.name, &req.notes);
    let valid_for_twilio = !req.name.trim().is_empty()
        && limits.is_ok()
        && is_account_sid(&req.account_sid)
        && !req.auth_token.trim().is_empty();
    // A request the local checks refuse is left to them (their message is the useful one).
    if let (Some(vendor), true) = (ctx.vendor, valid_for_twilio) {
        let token = Secret::new(req.auth_token.clone());
        ctx.wait(vendor.check_credentials(&req.account_sid, &token))?;
    }
    if req.name.trim().is_empty() {
        return Err(OpError::Invalid("name must not be empty".into()));
    }
    limits.map_err(OpError::Invalid)?;
    if !is_account_sid(&req.account_sid) {
        return Err(OpError::Invalid(
            "account_sid must be AC followed by 32 hex digits".into(),
        ));
    }
    let id = new_integration_id()?;
    let auth_token = ctx.seal(&req.auth_token, &id)?;
    let signing_keys = ctx.seal_signing_keys(&req.signing_keys, &id)?;
    crate::model::state::check_signing_key_ids(&signing_keys).map_err(OpError::Invalid)?;
    let integration = Integration {
        id: id.clone(),
        org: ctx.org.to_string(),
        name: req.name,
        notes: req.notes,
        account_sid: req.account_sid,
        auth_token,
        next_auth_token: None,
        status: req.status.unwrap_or(IntegrationStatus::Active),
        signing_keys,
    };
    ctx.store.apply(|s| {
        if s.integration(&id).is_some() {
            return Err(OpError::Internal("integration id collision; retry"));
        }
        s.integrations.push(integration.clone());
        Ok(IntegrationInfo::of(s, &id).expect("just inserted"))
    })
}

/// A fresh integration id: `int-` and 16 random hex digits.
fn new_integration_id() -> Result<String, OpError> {
    use ring::rand::SecureRandom;
    let mut raw = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| OpError::Internal("random generator failed"))?;
    Ok(format!("int-{}", hex::encode(raw)))
}

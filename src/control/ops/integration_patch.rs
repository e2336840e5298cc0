//! `PATCH /api/v1/integrations/{id}`: name, notes, Auth Token, the rotation token and its
//! promotion, and status. While an integration is inactive its numbers show and are
//! served as disabled (the seed's cascade, resolved at lookup instead of written into
//! each number); re-activating makes them active again.

use super::rotation::{promote_next_auth_token, PROMOTE_WITH_TOKENS};
use super::{find_own, Ctx, IntegrationInfo, OpError, SigningKeyInput};
use crate::control::store::Applied;
use crate::model::crypto::Secret;
use crate::model::state::{IntegrationStatus, NumberStatus, State};
use serde::Deserialize;

/// The request body: an absent field is left alone, `null` clears it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PatchIntegration {
    #[serde(default)]
    pub(crate) name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub(crate) notes: Option<Option<String>>,
    #[serde(default)]
    pub(crate) auth_token: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub(crate) next_auth_token: Option<Option<String>>,
    #[serde(default)]
    pub(crate) status: Option<IntegrationStatus>,
    /// Makes the rotation candidate the primary token and clears it.
    #[serde(default)]
    pub(crate) promote_next_auth_token: bool,
    /// SharedKeys to add and key ids to remove (removals first; at most two remain).
    #[serde(default)]
    pub(crate) signing_keys: Option<SigningKeysPatch>,
}

/// `{"add": [{"id", "secret"}], "remove": ["id"]}`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct SigningKeysPatch {
    pub(crate) add: Vec<SigningKeyInput>,
    pub(crate) remove: Vec<String>,
}

/// The audit action of a patch that did not parse.
pub(crate) const ACTION: &str = "integration.update";

impl PatchIntegration {
    /// The audit action, named for what the patch does (token values are never read here).
    pub(crate) fn action(&self) -> &'static str {
        match self.status {
            Some(IntegrationStatus::Inactive) => return "integration.deactivate",
            Some(IntegrationStatus::Active) => return "integration.activate",
            None => {}
        }
        if self.signing_keys.is_some() {
            return "integration.signing_keys";
        }
        if self.promote_next_auth_token {
            "integration.rotate.promote"
        } else if self.next_auth_token.is_some() {
            "integration.rotate.next_token"
        } else if self.auth_token.is_some() {
            "integration.token"
        } else {
            ACTION
        }
    }
}

/// Distinguishes a field given as `null` (`Some(None)`) from an absent one (`None`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Has Twilio accept every token the patch sets, then applies the patch.
pub(crate) fn run(
    ctx: &Ctx<'_>,
    id: &str,
    req: PatchIntegration,
) -> Result<Applied<IntegrationInfo>, OpError> {
    check_tokens_with_twilio(ctx, id, &req)?;
    if req.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
        return Err(OpError::Invalid("name must not be empty".into()));
    }
    let notes = req.notes.clone().flatten().unwrap_or_default();
    crate::model::state::check_text_limits(req.name.as_deref().unwrap_or(""), &notes)
        .map_err(OpError::Invalid)?;
    let auth_token = req
        .auth_token
        .as_deref()
        .map(|t| ctx.seal(t, id))
        .transpose()?;
    let next_auth_token = match &req.next_auth_token {
        Some(Some(t)) => Some(Some(ctx.seal(t, id)?)),
        Some(None) => Some(None),
        None => None,
    };
    if req.promote_next_auth_token && (auth_token.is_some() || next_auth_token.is_some()) {
        return Err(OpError::Rotation(PROMOTE_WITH_TOKENS));
    }
    let keys_patch = req.signing_keys.as_ref();
    let added = match keys_patch {
        Some(p) => ctx.seal_signing_keys(&p.add, id)?,
        None => Vec::new(),
    };
    ctx.store.apply(|s| {
        let i = find_own(s, ctx.org, id)?;
        if req.promote_next_auth_token {
            promote_next_auth_token(i, ctx.store.master_key())?;
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
        if let Some(p) = keys_patch {
            for gone in &p.remove {
                if !i.signing_keys.iter().any(|k| k.id == *gone) {
                    return Err(OpError::Invalid(format!(
                        "no signing key {gone:?} to remove"
                    )));
                }
            }
            i.signing_keys.retain(|k| !p.remove.contains(&k.id));
            i.signing_keys.extend(added.iter().cloned());
            crate::model::state::check_signing_key_ids(&i.signing_keys)
                .map_err(OpError::Invalid)?;
        }
        if let Some(status) = req.status {
            i.status = status;
            if status == IntegrationStatus::Active {
                enable_disabled_numbers(s, id);
            }
        }
        Ok(IntegrationInfo::of(s, id).expect("found above"))
    })
}

/// Every Auth Token the patch sets (primary or next) must be accepted by Twilio for the
/// integration's account; an unknown integration is left to the change's 404.
fn check_tokens_with_twilio(
    ctx: &Ctx<'_>,
    id: &str,
    req: &PatchIntegration,
) -> Result<(), OpError> {
    let Some(vendor) = ctx.vendor else {
        return Ok(());
    };
    let mut state = ctx.store.snapshot();
    let Ok(integration) = find_own(&mut state, ctx.org, id) else {
        return Ok(());
    };
    let next = req.next_auth_token.clone().flatten();
    let tokens = [req.auth_token.as_deref(), next.as_deref()];
    for token in tokens
        .into_iter()
        .flatten()
        .filter(|t| !t.trim().is_empty())
    {
        let token = Secret::new(token);
        ctx.wait(vendor.check_credentials(&integration.account_sid, &token))?;
    }
    Ok(())
}

/// Reactivation makes the integration's `disabled` numbers active again, as the seed's
/// cascade did. Deactivation writes nothing into the numbers (they show `disabled` while
/// the integration is inactive, `State::shown`), so only numbers disabled by an earlier
/// version's cascade or by hand are left to change, and the counts say when there are
/// none (the usual case: then this is one lookup, not a walk of the inventory).
fn enable_disabled_numbers(state: &mut State, integration_id: &str) {
    if state
        .numbers
        .use_of(integration_id)
        .map_or(true, |u| u.disabled == 0)
    {
        return;
    }
    state.numbers.edit_where(
        |n| *n.integration_id == *integration_id && n.status == NumberStatus::Disabled,
        |n| n.status = NumberStatus::Active,
    );
}

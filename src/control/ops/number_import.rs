//! `POST /api/v1/numbers`: one number into the inventory, with every check of the seed's
//! table in order: the local ones first, then (with the number reserved, without the
//! state lock) Twilio's, then the local ones again inside the change, against whatever
//! changed meanwhile.

use super::{Ctx, OpError};
use crate::control::import::{check_import, ImportError, ImportRequest};
use crate::control::store::Applied;
use crate::control::vendor::{ImportVendorError, VendorError};
use crate::model::state::{Number, State};
use std::collections::HashSet;

/// The audit target of an import: its sender ID when it looks like one (a public
/// identifier), else `-`.
pub(crate) fn target(req: &ImportRequest) -> String {
    let id = &req.sender_id;
    let plain = id.len() <= 32 && id.chars().all(|c| c == '+' || c.is_ascii_digit());
    if plain {
        id.clone()
    } else {
        "-".into()
    }
}

/// Imports one number.
pub(crate) fn run(ctx: &Ctx<'_>, req: ImportRequest) -> Result<Applied<Number>, OpError> {
    // Cheap checks first, against the current state and the imports under way.
    let state = ctx.store.snapshot();
    check_import(
        &state,
        ctx.org,
        &req,
        &ctx.store.in_flight(),
        ctx.max_queues_per_org,
    )?;
    let _reservation = ctx
        .store
        .reserve(&req.sender_id)
        .ok_or(ImportError::ProvisioningInProgress)?;
    if ctx.vendor.is_some() {
        ctx.wait(check_with_twilio(ctx, &state, &req))?;
    }
    drop(state);
    ctx.store.apply(|s| {
        let number = check_import(s, ctx.org, &req, &HashSet::new(), ctx.max_queues_per_org)?;
        let shown = s.shown(&number);
        s.numbers.insert(number);
        Ok(shown)
    })
}

/// One number's Twilio checks with the integration's primary token, then its next token
/// if Twilio rejects the primary (a rotation may be under way at Twilio).
pub(super) async fn check_with_twilio(
    ctx: &Ctx<'_>,
    state: &State,
    req: &ImportRequest,
) -> Result<(), OpError> {
    let Some(vendor) = ctx.vendor else {
        return Ok(());
    };
    let integration = req
        .integration_id
        .as_deref()
        .and_then(|id| state.integration(id))
        .ok_or(ImportError::IntegrationMissing)?;
    let webhook_url = ctx.region.webhook_url();
    let check = |token| {
        vendor.check_number(
            &integration.account_sid,
            token,
            &req.sender_id,
            req.kind,
            &webhook_url,
        )
    };
    let primary = ctx.open(integration, &integration.auth_token)?;
    let result = check(&primary).await;
    let rejected = ImportVendorError::Vendor(VendorError::CredentialsRejected);
    match (&result, &integration.next_auth_token) {
        (Err(e), Some(next)) if *e == rejected => {
            let next = ctx.open(integration, next)?;
            Ok(check(&next).await?)
        }
        _ => Ok(result?),
    }
}

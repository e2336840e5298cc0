//! The admin API's reads: an org's integrations and numbers, from one copy of the state.

use super::{find_own, Ctx, IntegrationInfo, OpError};
use crate::model::state::Number;
use std::collections::HashSet;

/// The org's integrations, in state order.
pub(crate) fn list_integrations(ctx: &Ctx<'_>) -> Vec<IntegrationInfo> {
    let state = ctx.store.snapshot();
    state
        .integrations
        .iter()
        .filter(|i| i.org == ctx.org)
        .filter_map(|i| IntegrationInfo::of(&state, &i.id))
        .collect()
}

/// The org's integration `id`.
pub(crate) fn get_integration(ctx: &Ctx<'_>, id: &str) -> Result<IntegrationInfo, OpError> {
    let mut state = ctx.store.snapshot();
    find_own(&mut state, ctx.org, id)?;
    Ok(IntegrationInfo::of(&state, id).expect("found above"))
}

/// The org's numbers by sender ID, of one integration when `integration_id` is given,
/// each with the status it shows (`disabled` while its integration is inactive).
pub(crate) fn list_numbers(ctx: &Ctx<'_>, integration_id: Option<&str>) -> Vec<Number> {
    let state = ctx.store.snapshot();
    let own: HashSet<&str> = state
        .integrations
        .iter()
        .filter(|i| i.org == ctx.org)
        .map(|i| i.id.as_str())
        .collect();
    let mut list: Vec<&Number> = state
        .numbers
        .iter()
        .filter(|n| own.contains(&*n.integration_id))
        .filter(|n| integration_id.map_or(true, |id| id == &*n.integration_id))
        .collect();
    list.sort_unstable_by_key(|n| n.sender_id);
    list.into_iter().map(|n| state.shown(n)).collect()
}

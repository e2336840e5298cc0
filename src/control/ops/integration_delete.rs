//! `DELETE /api/v1/integrations/{id}`: the integration and all its numbers leave the
//! inventory (nothing changes in Twilio).

use super::{find_own, Ctx, OpError};
use crate::control::store::Applied;

/// Removes the org's integration `id` and its numbers.
pub(crate) fn run(ctx: &Ctx<'_>, id: &str) -> Result<Applied<()>, OpError> {
    ctx.store.apply(|s| {
        find_own(s, ctx.org, id)?;
        s.integrations.retain(|i| i.id != id);
        if s.numbers.count_of(id) > 0 {
            s.numbers.retain(|n| *n.integration_id != *id);
        }
        Ok(())
    })
}

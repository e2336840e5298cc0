//! `DELETE /api/v1/numbers/{sender_id}`: one number leaves the org's inventory.

use super::{Ctx, OpError};
use crate::control::store::Applied;

/// Removes the org's number `sender_id`; another org's is not found.
pub(crate) fn run(ctx: &Ctx<'_>, sender_id: &str) -> Result<Applied<()>, OpError> {
    ctx.store.apply(|s| {
        let owned = s.numbers.get(sender_id).is_some_and(|n| {
            s.integration(&n.integration_id)
                .is_some_and(|i| i.org == ctx.org)
        });
        if !owned {
            return Err(OpError::NotFound("number"));
        }
        s.numbers.remove(sender_id);
        Ok(())
    })
}

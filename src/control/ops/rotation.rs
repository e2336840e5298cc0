//! Auth Token rotation: while Twilio moves to a new token, `next_auth_token` verifies
//! alongside the primary; promoting it makes it the primary (re-sealed with a fresh
//! nonce) and the old token stops verifying.

use super::OpError;
use crate::model::crypto::MasterKey;
use crate::model::state::Integration;

/// Ends a rotation: the next token becomes the primary, re-sealed under the integration
/// id with a fresh nonce, and the next slot is cleared.
pub(crate) fn promote_next_auth_token(i: &mut Integration, key: &MasterKey) -> Result<(), OpError> {
    let next = i
        .next_auth_token
        .take()
        .ok_or(OpError::Rotation("no next_auth_token is set to promote"))?;
    let sealing_failed = |_| OpError::Internal("the next Auth Token could not be re-sealed");
    let token = key.open(&next, &i.id).map_err(sealing_failed)?;
    i.auth_token = key.seal(&token, &i.id).map_err(sealing_failed)?;
    Ok(())
}

/// A promotion asked for together with new token values is refused whole.
pub(crate) const PROMOTE_WITH_TOKENS: &str =
    "promote_next_auth_token cannot be combined with auth_token or next_auth_token";

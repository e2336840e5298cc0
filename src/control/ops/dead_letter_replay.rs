//! `POST /api/v1/dead-letters/replay`: an active integration's dead letters, in order,
//! into the queues their numbers route to now (see `deadletter`).

use super::OpError;
use crate::control::store::ControlStore;
use crate::deadletter::{DeadLetters, ReplayReport};
use crate::model::state::IntegrationStatus;
use serde::Deserialize;

/// The request body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplayRequest {
    pub(crate) integration_id: String,
}

/// Replays the org's integration's dead letters; it must be active again first.
pub(crate) async fn run(
    store: &ControlStore,
    dead_letters: &std::sync::Arc<DeadLetters>,
    org: &str,
    req: &ReplayRequest,
) -> Result<ReplayReport, OpError> {
    let id = &req.integration_id;
    let state = store.snapshot();
    let integration = state
        .integrations
        .iter()
        .find(|i| i.id == *id && i.org == org)
        .ok_or(OpError::NotFound("integration"))?;
    if integration.status != IntegrationStatus::Active {
        return Err(OpError::IntegrationInactive);
    }
    Ok(dead_letters.replay(id).await?)
}

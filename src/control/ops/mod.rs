//! The admin API's operations, one file each: every one takes its typed request, checks
//! it, runs the Twilio checks it needs and applies one change through the store, and
//! answers with a typed value or an `OpError`. No HTTP here: `control::admin` routes,
//! authenticates, maps `OpError` to a status and writes the audit line.

pub(crate) mod dead_letter_replay;
pub(crate) mod integration_create;
pub(crate) mod integration_delete;
pub(crate) mod integration_patch;
pub(crate) mod number_bulk;
pub(crate) mod number_delete;
pub(crate) mod number_import;
pub(crate) mod reads;
pub(crate) mod rotation;

use crate::control::import::ImportError;
use crate::control::store::{ChangeError, ControlStore};
use crate::control::vendor::{ImportVendorError, TwilioClient, VendorError};
use crate::deadletter::DeadLetterError;
use crate::model::crypto::{Sealed, Secret};
use crate::model::regions::Region;
use crate::model::state::{Integration, SigningKey, State};
use std::future::Future;

/// Why an operation was refused; each variant is one answer of the admin API.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// A malformed request (bad JSON, a field value out of bounds).
    #[error("{0}")]
    Invalid(String),
    /// Missing, or another org's (which looks the same).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A token rotation step that cannot be carried out now.
    #[error("{0}")]
    Rotation(&'static str),
    /// A number import check of the seed's table.
    #[error(transparent)]
    Import(#[from] ImportError),
    /// One import of a bulk request failed; the error says why.
    #[error("numbers[{index}] ({sender_id}): {error}")]
    At {
        index: usize,
        sender_id: String,
        error: Box<OpError>,
    },
    /// Twilio refused the credentials or could not answer.
    #[error(transparent)]
    Vendor(#[from] VendorError),
    /// The number failed Twilio's checks (not there, webhook elsewhere).
    #[error(transparent)]
    VendorImport(#[from] ImportVendorError),
    /// The store refused the change.
    #[error(transparent)]
    Change(#[from] ChangeError),
    /// Dead letters wait for an integration that is not active.
    #[error("re-activate the integration before replaying its dead letters")]
    IntegrationInactive,
    /// A replay stopped or failed.
    #[error(transparent)]
    Replay(#[from] DeadLetterError),
    /// Something on our side failed; the details are in the log.
    #[error("{0}")]
    Internal(&'static str),
}

/// What an operation runs with: the store, the caller's org, the region, Twilio.
pub(crate) struct Ctx<'a> {
    pub(crate) store: &'a ControlStore,
    /// The only org the caller sees.
    pub(crate) org: &'a str,
    pub(crate) region: &'static Region,
    /// The Twilio REST client, when vendor checks are on.
    pub(crate) vendor: Option<&'a TwilioClient>,
    /// Where the vendor checks' futures run while this (blocking-pool) thread waits.
    pub(crate) runtime: &'a tokio::runtime::Handle,
    /// `queues.max_per_org`: the queues one org's numbers may use.
    pub(crate) max_queues_per_org: usize,
}

impl Ctx<'_> {
    /// Waits on the runtime for one vendor call (this thread is a blocking-pool thread).
    fn wait<T>(&self, call: impl Future<Output = T>) -> T {
        self.runtime.block_on(call)
    }

    /// Seals SharedKeys for `integration_id`; an empty secret or a bad id is refused.
    fn seal_signing_keys(
        &self,
        keys: &[SigningKeyInput],
        integration_id: &str,
    ) -> Result<Vec<SigningKey>, OpError> {
        keys.iter()
            .map(|k| {
                if !crate::model::state::is_signing_key_id(&k.id) {
                    return Err(OpError::Invalid(format!(
                        "signing key id {:?} must be 1-64 of [A-Za-z0-9_.-]",
                        k.id
                    )));
                }
                if k.secret.trim().is_empty() {
                    return Err(OpError::Invalid(
                        "a signing key's secret must not be empty".into(),
                    ));
                }
                let aad = crate::model::state::signing_key_aad(integration_id, &k.id);
                let secret = self
                    .store
                    .master_key()
                    .seal(&Secret::new(&k.secret), &aad)
                    .map_err(|_| OpError::Internal("the signing key could not be sealed"))?;
                Ok(SigningKey {
                    id: k.id.clone(),
                    secret,
                })
            })
            .collect()
    }

    /// Seals an Auth Token under the integration id; an empty token is refused.
    fn seal(&self, token: &str, integration_id: &str) -> Result<Sealed, OpError> {
        if token.trim().is_empty() {
            return Err(OpError::Invalid("auth_token must not be empty".into()));
        }
        self.store
            .master_key()
            .seal(&Secret::new(token), integration_id)
            .map_err(|_| OpError::Internal("the Auth Token could not be sealed"))
    }

    /// Opens a stored token of `integration` for a Twilio call.
    fn open(&self, integration: &Integration, sealed: &Sealed) -> Result<Secret, OpError> {
        self.store
            .master_key()
            .open(sealed, &integration.id)
            .map_err(|_| OpError::Internal("the stored Auth Token could not be opened"))
    }
}

/// An integration as the API shows it: the record and how many numbers it has.
#[derive(Debug, Clone)]
pub(crate) struct IntegrationInfo {
    pub(crate) integration: Integration,
    pub(crate) number_count: usize,
}

impl IntegrationInfo {
    /// The integration `id` of `state`, with its number count.
    fn of(state: &State, id: &str) -> Option<IntegrationInfo> {
        let integration = state.integration(id)?.clone();
        Some(IntegrationInfo {
            number_count: state.numbers.count_of(id),
            integration,
        })
    }
}

/// A SharedKey as an admin gives it: the id Twilio names, and the secret (write-only).
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SigningKeyInput {
    pub(crate) id: String,
    pub(crate) secret: String,
}

/// This org's integration `id`; another org's is not found, exactly like a missing one.
fn find_own<'a>(state: &'a mut State, org: &str, id: &str) -> Result<&'a mut Integration, OpError> {
    state
        .integrations
        .iter_mut()
        .find(|i| i.id == id && i.org == org)
        .ok_or(OpError::NotFound("integration"))
}

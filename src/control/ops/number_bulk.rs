//! `POST /api/v1/numbers/bulk`: many imports, all or nothing. The seed's UI imports one
//! number at a time, but an inventory of thousands (or a load test of a million) needs one
//! state write and one snapshot swap per batch.

use super::number_import::check_with_twilio;
use super::{Ctx, OpError};
use crate::control::import::{check_bulk, ImportError, ImportRequest};
use crate::control::store::Applied;
use crate::model::state::State;
use serde::Deserialize;
use std::collections::HashSet;

/// Most numbers in one request.
pub(crate) const MAX_BULK_NUMBERS: usize = 100_000;
/// Body limit of a bulk import (about 300 bytes a number).
pub(crate) const MAX_BULK_BODY_BYTES: usize = 32 * 1024 * 1024;
/// Twilio REST checks in flight at once during a bulk import.
const BULK_VENDOR_CONCURRENCY: usize = 32;

/// The request body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BulkImport {
    pub(crate) numbers: Vec<ImportRequest>,
}

impl BulkImport {
    /// The audit target: how many numbers the request carries.
    pub(crate) fn target(&self) -> String {
        format!("{} numbers", self.numbers.len())
    }
}

/// Checks every import (locally, then with Twilio), then adds them all in one change;
/// answers how many were imported.
pub(crate) fn run(ctx: &Ctx<'_>, req: BulkImport) -> Result<Applied<usize>, OpError> {
    let reqs = &req.numbers;
    if reqs.is_empty() || reqs.len() > MAX_BULK_NUMBERS {
        return Err(OpError::Invalid(format!(
            "numbers must hold 1 to {MAX_BULK_NUMBERS} imports"
        )));
    }
    let state = ctx.store.snapshot();
    check_bulk(
        &state,
        ctx.org,
        reqs,
        &ctx.store.in_flight(),
        ctx.max_queues_per_org,
    )
    .map_err(at_index(reqs))?;
    let mut reservations = Vec::with_capacity(reqs.len());
    for (i, r) in reqs.iter().enumerate() {
        let held = ctx.store.reserve(&r.sender_id);
        reservations
            .push(held.ok_or_else(|| at_index(reqs)((i, ImportError::ProvisioningInProgress)))?);
    }
    check_all_with_twilio(ctx, &state, reqs)?;
    drop(state);
    let imported = ctx.store.apply(|s| -> Result<_, OpError> {
        let numbers = check_bulk(s, ctx.org, reqs, &HashSet::new(), ctx.max_queues_per_org)
            .map_err(at_index(reqs))?;
        let n = numbers.len();
        s.numbers.extend(numbers);
        Ok(n)
    })?;
    drop(reservations);
    Ok(imported)
}

/// The Twilio checks of every number, `BULK_VENDOR_CONCURRENCY` at a time; the first failure wins.
fn check_all_with_twilio(
    ctx: &Ctx<'_>,
    state: &State,
    reqs: &[ImportRequest],
) -> Result<(), OpError> {
    use futures_util::stream::{self, TryStreamExt};
    if ctx.vendor.is_none() {
        return Ok(());
    }
    ctx.wait(async {
        stream::iter(reqs.iter().enumerate().map(Ok::<_, OpError>))
            .map_ok(|(index, r)| async move {
                check_with_twilio(ctx, state, r)
                    .await
                    .map_err(|e| at(index, reqs, e))
            })
            .try_buffer_unordered(BULK_VENDOR_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await
    })?;
    Ok(())
}

/// Names the position and sender ID an error belongs to.
fn at(index: usize, reqs: &[ImportRequest], error: OpError) -> OpError {
    OpError::At {
        index,
        sender_id: reqs
            .get(index)
            .map_or("", |r| r.sender_id.as_str())
            .to_string(),
        error: Box::new(error),
    }
}

/// `at` for the local checks' (position, error).
fn at_index(reqs: &[ImportRequest]) -> impl Fn((usize, ImportError)) -> OpError + '_ {
    move |(index, error)| at(index, reqs, error.into())
}

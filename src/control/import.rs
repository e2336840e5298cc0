//! The local checks of a number import (SPEC section 4, the seed's error table): pure
//! functions over the current state, run before a number enters the inventory. The
//! vendor checks (Twilio REST) come after these and live elsewhere.

use crate::model::state::{
    self, Compliance, Country, KeywordReply, Number, NumberStatus, NumberType, SenderId, State,
};
use http::StatusCode;
use phonenumber::metadata::DATABASE;
use serde::Deserialize;
use std::collections::HashSet;
use std::sync::Arc;

/// Loads the phone-number metadata the country checks read (tens of milliseconds, once),
/// on a low-priority thread at start, so the first import does not wait for it.
pub(crate) fn warm_up() {
    let loaded = crate::background::spawn_nicer("phone-metadata", || {
        let _ = DATABASE.by_id("US");
    });
    if let Err(e) = loaded {
        tracing::debug!(error = %e, "phone-number metadata is loaded by the first import instead");
    }
}

/// Queue used when an import names none.
pub(crate) const DEFAULT_QUEUE: &str = "default";

/// The body of `POST /api/v1/numbers`: one number to import.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImportRequest {
    /// E.164 for phone types, 5–6 digits for short codes.
    pub(crate) sender_id: String,
    /// The seed's sender type.
    #[serde(rename = "type")]
    pub(crate) kind: NumberType,
    /// ISO 3166 alpha-2; derived from the number for phone types when omitted.
    #[serde(default)]
    pub(crate) country: Option<String>,
    /// The org's integration (Twilio account) the number belongs to.
    #[serde(default)]
    pub(crate) integration_id: Option<String>,
    /// Destination queue; `default` when omitted.
    #[serde(default)]
    pub(crate) queue: Option<String>,
    /// Required interactions; only kept for short codes.
    #[serde(default)]
    pub(crate) compliance: Option<ComplianceDraft>,
}

/// Compliance as submitted: parts may be missing so that the gap is reported as
/// `compliance_incomplete`, not as a malformed body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ComplianceDraft {
    /// The Help tab.
    pub(crate) help: KeywordDraft,
    /// The Opt-out tab.
    pub(crate) opt_out: KeywordDraft,
    /// The Re-opt-in tab.
    pub(crate) re_opt_in: KeywordDraft,
}

/// One compliance tab as submitted; blank keywords are dropped.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct KeywordDraft {
    /// Keywords that trigger the action.
    pub(crate) keywords: Vec<String>,
    /// Reply sent for the action.
    pub(crate) message: String,
}

impl KeywordDraft {
    fn finish(&self) -> KeywordReply {
        KeywordReply {
            keywords: self
                .keywords
                .iter()
                .map(|k| k.trim().to_string())
                .filter(|k| !k.is_empty())
                .collect(),
            message: self.message.trim().to_string(),
        }
    }
}

impl ComplianceDraft {
    /// The stored form, trimmed; completeness is judged by `Compliance::is_complete`.
    pub(crate) fn finish(&self) -> Compliance {
        Compliance {
            help: self.help.finish(),
            opt_out: self.opt_out.finish(),
            re_opt_in: self.re_opt_in.finish(),
        }
    }
}

/// Why an import was refused; each variant is one row of the seed's error table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    /// The request itself is malformed (e.g. a bad queue name).
    #[error("{0}")]
    InvalidRequest(String),
    /// No integration, or not one of this org's.
    #[error("Check the BYO sender ID integration.")]
    IntegrationMissing,
    /// A short code lacks keywords or a message for help, opt-out or re-opt-in.
    #[error("Complete the required compliance keywords and messages for the sender ID (help, opt-out and re-opt-in).")]
    ComplianceIncomplete,
    /// Phone number not E.164, or short code not 5–6 digits.
    #[error("Check the sender ID type: phone numbers must be in E.164 format, short codes must be 5 to 6 digits.")]
    SenderIdInvalid,
    /// The number's calling code does not belong to the country (or the country is unknown).
    #[error("Check the sender ID's country code.")]
    CountryMismatch,
    /// Already being imported, or already in this org's inventory.
    #[error("A provisioning action is already in progress for this phone number address.")]
    ProvisioningInProgress,
    /// The org uses `queues.max_per_org` queues already and the import names another.
    #[error("This org uses {max} queues already (queues.max_per_org); use one of them, or delete the numbers of a queue you no longer need.")]
    QueueLimit { max: usize },
    /// Already in another org's inventory.
    #[error("This phone number address is not available for provisioning. Choose another phone number address and try again.")]
    NumberUnavailable,
}

impl ImportError {
    /// The stable machine-readable code of the API's error body.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            ImportError::InvalidRequest(_) => "invalid_request",
            ImportError::IntegrationMissing => "integration_missing",
            ImportError::ComplianceIncomplete => "compliance_incomplete",
            ImportError::SenderIdInvalid => "sender_id_invalid",
            ImportError::CountryMismatch => "country_mismatch",
            ImportError::ProvisioningInProgress => "provisioning_in_progress",
            ImportError::NumberUnavailable => "number_unavailable",
            ImportError::QueueLimit { .. } => "queue_limit",
        }
    }

    /// The HTTP status the admin API answers with.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ImportError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            ImportError::ProvisioningInProgress | ImportError::NumberUnavailable => {
                StatusCode::CONFLICT
            }
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }
}

/// Runs every local import check in the seed's order and returns the number to insert.
///
/// `in_flight` holds sender IDs whose import is under way elsewhere (not this one's).
pub(crate) fn check_import(
    state: &State,
    org: &str,
    req: &ImportRequest,
    in_flight: &HashSet<String>,
    max_queues: usize,
) -> Result<Number, ImportError> {
    let mut queues = QueueBudget::of(state, org, max_queues);
    check_one(
        state,
        org,
        req,
        in_flight,
        |sid| owner(state, sid),
        &mut queues,
    )
}

/// The org holding `sender_id`, if any. A number whose integration is gone (a fleet race
/// left it behind) is no one's: an import may take its place.
fn owner<'s>(state: &'s State, sender_id: &str) -> Option<&'s str> {
    let existing = state.numbers.get(sender_id)?;
    state
        .integration(&existing.integration_id)
        .map(|i| i.org.as_str())
}

/// The queues an org uses, against `queues.max_per_org`: a queue is what a tenant names,
/// and each costs a worker, files and metric series while numbers use it.
struct QueueBudget<'s> {
    used: HashSet<&'s str>,
    max: usize,
}

impl<'s> QueueBudget<'s> {
    /// From the inventory's counts: a look at each of the org's integrations, not a walk
    /// of the numbers.
    fn of(state: &'s State, org: &str, max: usize) -> QueueBudget<'s> {
        let used = state
            .integrations
            .iter()
            .filter(|i| i.org == org)
            .filter_map(|i| state.numbers.use_of(&i.id))
            .flat_map(|u| u.queues().map(|q| &**q))
            .collect();
        QueueBudget { used, max }
    }

    /// Takes `queue` into use, unless it is a new one past the limit.
    fn take(&mut self, queue: &'s str) -> Result<(), ImportError> {
        if !self.used.contains(queue) {
            if self.used.len() >= self.max {
                return Err(ImportError::QueueLimit { max: self.max });
            }
            self.used.insert(queue);
        }
        Ok(())
    }
}

/// Checks many imports as one: each against the state and the numbers before it in the
/// list. The error carries the failing position.
pub(crate) fn check_bulk<'s>(
    state: &'s State,
    org: &str,
    reqs: &'s [ImportRequest],
    in_flight: &HashSet<String>,
    max_queues: usize,
) -> Result<Vec<Number>, (usize, ImportError)> {
    let mut queues = QueueBudget::of(state, org, max_queues);
    let mut earlier: HashSet<&str> = HashSet::with_capacity(reqs.len());
    let mut out = Vec::with_capacity(reqs.len());
    for (i, req) in reqs.iter().enumerate() {
        let owner_of = |sid: &str| match earlier.contains(sid) {
            true => Some(org),
            false => owner(state, sid),
        };
        let number =
            check_one(state, org, req, in_flight, owner_of, &mut queues).map_err(|e| (i, e))?;
        earlier.insert(req.sender_id.as_str());
        out.push(number);
    }
    Ok(out)
}

/// The checks of SPEC section 4 for one number; `owner_of` tells which org holds a sender ID.
fn check_one<'s, 'q>(
    state: &State,
    org: &str,
    req: &'q ImportRequest,
    in_flight: &HashSet<String>,
    owner_of: impl Fn(&str) -> Option<&'s str>,
    queues: &mut QueueBudget<'q>,
) -> Result<Number, ImportError> {
    let queue = req.queue.as_deref().unwrap_or(DEFAULT_QUEUE);
    if !state::is_queue_name(queue) {
        return Err(ImportError::InvalidRequest(format!(
            "queue {queue:?}: a queue name is {}",
            state::QUEUE_NAME_RULE
        )));
    }
    let integration = req
        .integration_id
        .as_deref()
        .and_then(|id| state.integration(id))
        .filter(|i| i.org == org)
        .ok_or(ImportError::IntegrationMissing)?;
    let compliance = check_compliance(req)?;
    check_format(req.kind, &req.sender_id)?;
    let country = check_country(req)?;
    if in_flight.contains(&req.sender_id) {
        return Err(ImportError::ProvisioningInProgress);
    }
    if let Some(owner) = owner_of(&req.sender_id) {
        return Err(if owner == org {
            ImportError::ProvisioningInProgress
        } else {
            ImportError::NumberUnavailable
        });
    }
    queues.take(queue)?;
    // Checked above: E.164 (at most 16 bytes) or a short code; an ISO alpha-2 region.
    let sender_id = SenderId::new(&req.sender_id).ok_or(ImportError::SenderIdInvalid)?;
    let country = Country::new(&country).ok_or(ImportError::CountryMismatch)?;
    // Its own status: while the integration is inactive it shows `disabled` (State::shown).
    Ok(Number {
        sender_id,
        kind: req.kind,
        country,
        integration_id: integration.id.as_str().into(),
        queue: queue.into(),
        status: NumberStatus::Active,
        compliance: compliance.map(Arc::new),
    })
}

/// Short codes need all three interactions; other types carry none.
fn check_compliance(req: &ImportRequest) -> Result<Option<Compliance>, ImportError> {
    if req.kind != NumberType::ShortCode {
        return Ok(None);
    }
    let compliance = req
        .compliance
        .as_ref()
        .map(ComplianceDraft::finish)
        .filter(Compliance::is_complete)
        .ok_or(ImportError::ComplianceIncomplete)?;
    Ok(Some(compliance))
}

fn check_format(kind: NumberType, sender_id: &str) -> Result<(), ImportError> {
    let ok = match kind {
        NumberType::ShortCode => state::is_short_code(sender_id),
        _ => state::is_e164(sender_id),
    };
    ok.then_some(()).ok_or(ImportError::SenderIdInvalid)
}

/// The country to store: checked against the number's calling code, or derived from it.
fn check_country(req: &ImportRequest) -> Result<String, ImportError> {
    let given = req
        .country
        .as_deref()
        .map(|c| c.trim().to_ascii_uppercase());
    if req.kind == NumberType::ShortCode {
        let country = given.ok_or(ImportError::CountryMismatch)?;
        return known_country_code(&country)
            .map(|_| country)
            .ok_or(ImportError::CountryMismatch);
    }
    let code = calling_code(&req.sender_id).ok_or(ImportError::CountryMismatch)?;
    match given {
        Some(country) if known_country_code(&country) == Some(code) => Ok(country),
        Some(_) => Err(ImportError::CountryMismatch),
        None => derive_country(&req.sender_id, code).ok_or(ImportError::CountryMismatch),
    }
}

/// The calling code of an ISO alpha-2 region in the phone-number metadata.
fn known_country_code(country: &str) -> Option<u16> {
    if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
        return None;
    }
    DATABASE.by_id(country).map(|m| m.country_code())
}

/// The number's country calling code, if the metadata knows it.
fn calling_code(sender_id: &str) -> Option<u16> {
    let number = phonenumber::parse(None, sender_id).ok()?;
    let code = number.code().value();
    DATABASE.region(&code).map(|_| code)
}

/// The region the number belongs to, else the main region of its calling code.
fn derive_country(sender_id: &str, code: u16) -> Option<String> {
    let number = phonenumber::parse(None, sender_id).ok()?;
    if let Some(meta) = number.metadata(&DATABASE) {
        let id = meta.id();
        if id.len() == 2 {
            return Some(id.to_string());
        }
    }
    let regions = DATABASE.by_code(&code)?;
    regions
        .iter()
        .find(|m| m.is_main_country_for_code())
        .or(regions.first())
        .map(|m| m.id().to_string())
        .filter(|id| id.len() == 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::state::Integration;
    use crate::model::state::IntegrationStatus;

    fn integration(id: &str, org: &str, status: IntegrationStatus) -> Integration {
        Integration {
            status,
            ..crate::fixtures::integration(id, org)
        }
    }

    fn state() -> State {
        State {
            version: 1,
            integrations: vec![
                integration("int-a", "org-a", IntegrationStatus::Active),
                integration("int-off", "org-a", IntegrationStatus::Inactive),
                integration("int-b", "org-b", IntegrationStatus::Active),
            ],
            numbers: vec![
                Number {
                    sender_id: "+15550000001".into(),
                    kind: NumberType::Local,
                    country: "US".into(),
                    integration_id: "int-a".into(),
                    queue: "default".into(),
                    status: NumberStatus::Active,
                    compliance: None,
                },
                Number {
                    sender_id: "+15550000002".into(),
                    kind: NumberType::Local,
                    country: "US".into(),
                    integration_id: "int-b".into(),
                    queue: "default".into(),
                    status: NumberStatus::Active,
                    compliance: None,
                },
            ]
            .into(),
        }
    }

    fn req(sender_id: &str, kind: NumberType, country: Option<&str>) -> ImportRequest {
        ImportRequest {
            sender_id: sender_id.into(),
            kind,
            country: country.map(Into::into),
            integration_id: Some("int-a".into()),
            queue: None,
            compliance: None,
        }
    }

    fn tab(k: &str) -> KeywordDraft {
        KeywordDraft {
            keywords: vec![k.into()],
            message: format!("{k} reply"),
        }
    }

    fn full_compliance() -> ComplianceDraft {
        ComplianceDraft {
            help: tab("HELP"),
            opt_out: tab("STOP"),
            re_opt_in: tab("START"),
        }
    }

    fn check(r: &ImportRequest) -> Result<Number, ImportError> {
        check_import(&state(), "org-a", r, &HashSet::new(), 100)
    }

    fn code(r: &ImportRequest) -> &'static str {
        check(r).unwrap_err().code()
    }

    #[test]
    fn phone_number_succeeds_with_defaults() {
        let n = check(&req("+14155550100", NumberType::Local, Some("US"))).unwrap();
        assert_eq!(&*n.queue, "default");
        assert_eq!(&*n.country, "US");
        assert_eq!(n.status, NumberStatus::Active);
        assert_eq!(&*n.integration_id, "int-a");
        assert!(n.compliance.is_none());
    }

    #[test]
    fn inactive_integration_imports_shown_disabled() {
        let mut r = req("+14155550100", NumberType::Mobile, None);
        r.integration_id = Some("int-off".into());
        let n = check(&r).unwrap();
        // Its own status is active; it shows (and is served) disabled while the
        // integration is inactive, and active once it is re-activated.
        assert_eq!(n.status, NumberStatus::Active);
        assert_eq!(state().shown(&n).status, NumberStatus::Disabled);
    }

    #[test]
    fn integration_missing() {
        let mut r = req("+14155550100", NumberType::Local, None);
        r.integration_id = None;
        assert_eq!(code(&r), "integration_missing");
        r.integration_id = Some("int-b".into());
        assert_eq!(code(&r), "integration_missing", "another org's integration");
        r.integration_id = Some("int-nope".into());
        assert_eq!(code(&r), "integration_missing");
    }

    #[test]
    fn compliance_incomplete() {
        let mut r = req("12345", NumberType::ShortCode, Some("US"));
        assert_eq!(code(&r), "compliance_incomplete");
        let mut c = full_compliance();
        c.opt_out.message = "  ".into();
        r.compliance = Some(c);
        assert_eq!(code(&r), "compliance_incomplete");
        let mut c = full_compliance();
        c.re_opt_in.keywords = vec![" ".into()];
        r.compliance = Some(c);
        assert_eq!(code(&r), "compliance_incomplete");
        assert_eq!(ImportError::ComplianceIncomplete.status(), 422);
    }

    #[test]
    fn sender_id_invalid() {
        assert_eq!(
            code(&req("14155550100", NumberType::Local, None)),
            "sender_id_invalid"
        );
        assert_eq!(
            code(&req("+1415", NumberType::TollFree, None)),
            "sender_id_invalid"
        );
        let mut r = req("1234", NumberType::ShortCode, Some("US"));
        r.compliance = Some(full_compliance());
        assert_eq!(code(&r), "sender_id_invalid");
        r.sender_id = "1234567".into();
        assert_eq!(code(&r), "sender_id_invalid");
    }

    #[test]
    fn country_checks() {
        assert_eq!(
            code(&req("+447700900123", NumberType::Mobile, Some("US"))),
            "country_mismatch"
        );
        assert!(check(&req("+447700900123", NumberType::Mobile, Some("GB"))).is_ok());
        assert!(check(&req("+14165550100", NumberType::Local, Some("CA"))).is_ok());
        assert!(check(&req("+14165550100", NumberType::Local, Some("US"))).is_ok());
        assert!(check(&req("+14165550100", NumberType::Local, Some("us"))).is_ok());
        assert_eq!(
            code(&req("+14165550100", NumberType::Local, Some("XX"))),
            "country_mismatch"
        );
        assert_eq!(
            code(&req("+14165550100", NumberType::Local, Some("USA"))),
            "country_mismatch"
        );
    }

    #[test]
    fn country_derived_from_number() {
        let n = check(&req("+447700900123", NumberType::Mobile, None)).unwrap();
        assert_eq!(&*n.country, "GB");
        let n = check(&req("+81312345678", NumberType::Local, None)).unwrap();
        assert_eq!(&*n.country, "JP");
        let n = check(&req("+18005550100", NumberType::TollFree, None)).unwrap();
        assert_eq!(&*n.country, "US");
    }

    #[test]
    fn short_code_success_and_country_rules() {
        let mut r = req("123456", NumberType::ShortCode, Some("GB"));
        r.compliance = Some(full_compliance());
        r.queue = Some("sales".into());
        let n = check(&r).unwrap();
        assert_eq!(&*n.country, "GB");
        assert_eq!(&*n.queue, "sales");
        assert!(n.compliance.unwrap().is_complete());
        r.country = None;
        assert_eq!(code(&r), "country_mismatch");
        r.country = Some("ZZ".into());
        assert_eq!(code(&r), "country_mismatch");
    }

    #[test]
    fn provisioning_in_progress_and_unavailable() {
        let r = req("+14155550100", NumberType::Local, None);
        let busy: HashSet<String> = ["+14155550100".to_string()].into();
        let e = check_import(&state(), "org-a", &r, &busy, 100).unwrap_err();
        assert_eq!(e.code(), "provisioning_in_progress");
        assert_eq!(e.status(), 409);
        let own = req("+15550000001", NumberType::Local, Some("US"));
        assert_eq!(code(&own), "provisioning_in_progress");
        let other = req("+15550000002", NumberType::Local, Some("US"));
        assert_eq!(code(&other), "number_unavailable");
        assert_eq!(ImportError::NumberUnavailable.status(), 409);
    }

    #[test]
    fn bad_queue_is_invalid_request() {
        let mut r = req("+14155550100", NumberType::Local, None);
        r.queue = Some("../etc".into());
        let e = check(&r).unwrap_err();
        assert_eq!(
            (e.code(), e.status()),
            ("invalid_request", StatusCode::BAD_REQUEST)
        );
    }

    #[test]
    fn earlier_check_wins() {
        // No integration and a bad format: integration first.
        let mut r = req("nope", NumberType::Local, Some("US"));
        r.integration_id = None;
        assert_eq!(code(&r), "integration_missing");
        // Short code without compliance and a bad format: compliance first.
        assert_eq!(
            code(&req("12", NumberType::ShortCode, Some("US"))),
            "compliance_incomplete"
        );
        // Bad format and a wrong country: format first.
        assert_eq!(
            code(&req("+44", NumberType::Local, Some("US"))),
            "sender_id_invalid"
        );
        // Wrong country on a number owned by another org: country first.
        assert_eq!(
            code(&req("+15550000002", NumberType::Local, Some("GB"))),
            "country_mismatch"
        );
        // In flight and owned by another org: in progress first.
        let r = req("+15550000002", NumberType::Local, Some("US"));
        let busy: HashSet<String> = ["+15550000002".to_string()].into();
        let e = check_import(&state(), "org-a", &r, &busy, 100).unwrap_err();
        assert_eq!(e.code(), "provisioning_in_progress");
    }

    #[test]
    fn request_parses_from_json() {
        let r: ImportRequest = serde_json::from_str(
            r#"{"sender_id":"12345","type":"short_code","country":"US","integration_id":"int-a",
                "compliance":{"help":{"keywords":["HELP"],"message":"m"}}}"#,
        )
        .unwrap();
        assert_eq!(r.kind, NumberType::ShortCode);
        assert_eq!(code(&r), "compliance_incomplete");
        assert!(
            serde_json::from_str::<ImportRequest>(r#"{"sender_id":"1","type":"fax"}"#).is_err()
        );
    }
}

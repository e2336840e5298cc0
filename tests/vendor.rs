//! The import checks end to end with vendor checks on: the real binary on loopback, its
//! admin socket, and the test kit's fake Twilio (`sms_ingress_testkit::FakeTwilio`) in this
//! process standing in for Twilio's REST API. Every code of SPEC section 4's table.

use crate::support::*;
use serde_json::{json, Value};
use sms_ingress_testkit::FakeTwilio;
use std::time::{Duration, Instant};

const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "twilio-auth-token-a";
const ACCOUNT_B: &str = "ACfedcba9876543210fedcba9876543210";
const TOKEN_B: &str = "twilio-auth-token-b";
const CUSTOMER: &str = "+14155559999";

/// This region's webhook URL (the config says us-east-1).
fn hook() -> String {
    sms_ingress::model::regions::by_name("us-east-1")
        .unwrap()
        .webhook_url()
}

/// A fake Twilio serving on loopback from its own runtime while the test runs.
struct Twilio {
    fake: FakeTwilio,
    base: String,
    _rt: tokio::runtime::Runtime,
}

impl Twilio {
    fn start() -> Twilio {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let fake = FakeTwilio::new();
        fake.add_account(ACCOUNT, TOKEN);
        fake.add_account(ACCOUNT_B, TOKEN_B);
        let (addr, _task) = rt
            .block_on(fake.start("127.0.0.1:0".parse().unwrap()))
            .unwrap();
        Twilio {
            fake,
            base: format!("http://{addr}"),
            _rt: rt,
        }
    }
}

/// A fake Twilio and a server whose vendor checks call it.
fn start() -> (Twilio, TestServer) {
    start_with("")
}

fn start_with(control_extra: &str) -> (Twilio, TestServer) {
    let twilio = Twilio::start();
    let server = TestServer::start(Options {
        twilio_base: Some(twilio.base.clone()),
        control_extra: control_extra.to_string(),
        ..Options::default()
    });
    (twilio, server)
}

fn create_integration(s: &TestServer, admin: &str, account: &str, token: &str) -> Response {
    let body = json!({"name": "byo", "account_sid": account, "auth_token": token});
    s.admin("POST", "/api/v1/integrations", admin, Some(&body))
}

/// Creates an integration of org-a on ACCOUNT; returns its id.
fn integration_a(s: &TestServer) -> String {
    let r = create_integration(s, ADMIN_TOKEN, ACCOUNT, TOKEN);
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_string()
}

fn import(s: &TestServer, admin: &str, body: &Value) -> Response {
    s.admin("POST", "/api/v1/numbers", admin, Some(body))
}

fn phone(integration: &str, sender_id: &str, kind: &str, country: &str) -> Value {
    json!({"sender_id": sender_id, "type": kind, "country": country, "integration_id": integration})
}

fn compliance() -> Value {
    json!({
        "help": {"keywords": ["HELP"], "message": "Reply STOP to stop."},
        "opt_out": {"keywords": ["STOP"], "message": "You are unsubscribed."},
        "re_opt_in": {"keywords": ["START"], "message": "You are subscribed again."}
    })
}

/// Asserts an error response's status and contract code; returns its message.
fn expect_error(r: &Response, status: u16, code: &str) -> String {
    assert_eq!(r.status, status, "{}", r.text());
    let body = r.json();
    assert_eq!(body["code"], code, "{body}");
    body["message"].as_str().unwrap().to_string()
}

fn numbers(s: &TestServer) -> Vec<Value> {
    let r = s.admin("GET", "/api/v1/numbers", ADMIN_TOKEN, None);
    assert_eq!(r.status, 200);
    r.json().as_array().unwrap().clone()
}

#[test]
fn local_checks_answer_in_spec_order_without_asking_twilio() {
    let (t, s) = start();
    let id = integration_a(&s);
    t.fake.add_number(ACCOUNT, "+14155550100", &hook());
    let before = t.fake.requests();

    let mut body = phone(&id, "+14155550100", "local", "US");
    body["integration_id"] = json!("int-nope");
    expect_error(&import(&s, ADMIN_TOKEN, &body), 422, "integration_missing");
    body.as_object_mut().unwrap().remove("integration_id");
    expect_error(&import(&s, ADMIN_TOKEN, &body), 422, "integration_missing");

    let short =
        json!({"sender_id": "12345", "type": "short_code", "country": "US", "integration_id": id});
    expect_error(
        &import(&s, ADMIN_TOKEN, &short),
        422,
        "compliance_incomplete",
    );

    let bad = phone(&id, "14155550100", "local", "US");
    expect_error(&import(&s, ADMIN_TOKEN, &bad), 422, "sender_id_invalid");
    let mut short = short.clone();
    short["sender_id"] = json!("1234");
    short["compliance"] = compliance();
    expect_error(&import(&s, ADMIN_TOKEN, &short), 422, "sender_id_invalid");

    let wrong_country = phone(&id, "+14155550100", "local", "GB");
    expect_error(
        &import(&s, ADMIN_TOKEN, &wrong_country),
        422,
        "country_mismatch",
    );

    assert_eq!(
        t.fake.requests(),
        before,
        "no Twilio call for a local failure"
    );
    assert!(numbers(&s).is_empty());
}

#[test]
fn number_of_another_org_is_unavailable() {
    let (t, s) = start();
    let id_a = integration_a(&s);
    let r = create_integration(&s, OTHER_ORG_TOKEN, ACCOUNT_B, TOKEN_B);
    assert_eq!(r.status, 201, "{}", r.text());
    let id_b = r.json()["id"].as_str().unwrap().to_string();
    t.fake.add_number(ACCOUNT_B, "+14155550100", &hook());
    let r = import(
        &s,
        OTHER_ORG_TOKEN,
        &phone(&id_b, "+14155550100", "local", "US"),
    );
    assert_eq!(r.status, 201, "{}", r.text());

    let r = import(
        &s,
        ADMIN_TOKEN,
        &phone(&id_a, "+14155550100", "local", "US"),
    );
    expect_error(&r, 409, "number_unavailable");
    // Org-b importing its own number again: already provisioned.
    let r = import(
        &s,
        OTHER_ORG_TOKEN,
        &phone(&id_b, "+14155550100", "local", "US"),
    );
    expect_error(&r, 409, "provisioning_in_progress");
}

#[test]
fn number_missing_from_the_twilio_account_is_not_found_at_vendor() {
    let (t, s) = start();
    let id = integration_a(&s);
    // Twilio has it, but in another (sub-)account.
    t.fake.add_number(ACCOUNT_B, "+14155550100", &hook());
    let r = import(&s, ADMIN_TOKEN, &phone(&id, "+14155550100", "local", "US"));
    let msg = expect_error(&r, 422, "number_not_found_at_vendor");
    assert!(msg.contains(ACCOUNT), "{msg}");
    let mut short = phone(&id, "54321", "short_code", "US");
    short["compliance"] = compliance();
    expect_error(
        &import(&s, ADMIN_TOKEN, &short),
        422,
        "number_not_found_at_vendor",
    );
    assert!(numbers(&s).is_empty());
}

#[test]
fn wrong_sms_url_is_webhook_not_configured_until_fixed() {
    let (t, s) = start();
    let id = integration_a(&s);
    t.fake
        .add_number(ACCOUNT, "+14155550100", "https://old.example/sms");
    let body = phone(&id, "+14155550100", "local", "US");
    let msg = expect_error(
        &import(&s, ADMIN_TOKEN, &body),
        422,
        "webhook_not_configured",
    );
    assert!(msg.contains(&hook()), "names the exact URL to set: {msg}");
    assert!(numbers(&s).is_empty());

    t.fake.set_sms_url("+14155550100", &hook());
    let r = import(&s, ADMIN_TOKEN, &body);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(numbers(&s).len(), 1);
}

#[test]
fn an_sms_url_with_a_connection_override_fragment_imports() {
    let (t, s) = start();
    let id = integration_a(&s);
    // Twilio's documented way to tune its own retries; the fragment is never sent.
    t.fake
        .add_number(ACCOUNT, "+14155550100", &format!("{}#rc=3&rp=all", hook()));
    let r = import(&s, ADMIN_TOKEN, &phone(&id, "+14155550100", "local", "US"));
    assert_eq!(r.status, 201, "{}", r.text());
    // The fragment does not make another URL right.
    t.fake
        .add_number(ACCOUNT, "+14155550101", "https://old.example/sms#rc=3");
    let msg = expect_error(
        &import(&s, ADMIN_TOKEN, &phone(&id, "+14155550101", "local", "US")),
        422,
        "webhook_not_configured",
    );
    assert!(msg.contains("#rc=3&rp=all may follow"), "{msg}");
}

#[test]
fn messaging_service_must_defer_to_the_senders_webhook() {
    let (t, s) = start();
    let id = integration_a(&s);
    t.fake.add_number(ACCOUNT, "+14155550100", &hook());
    let service = t.fake.add_service(ACCOUNT, "US 10DLC", false);
    t.fake.add_to_service(&service, "+14155550100");
    let body = phone(&id, "+14155550100", "local", "US");
    let msg = expect_error(
        &import(&s, ADMIN_TOKEN, &body),
        422,
        "webhook_not_configured",
    );
    assert!(msg.contains("Defer to sender's webhook"), "{msg}");
    assert!(msg.contains(&service), "{msg}");

    t.fake.set_defer(&service, true);
    let r = import(&s, ADMIN_TOKEN, &body);
    assert_eq!(r.status, 201, "{}", r.text());
}

#[test]
fn second_import_while_the_first_is_at_twilio_is_in_progress() {
    let (t, s) = start();
    let id = integration_a(&s);
    t.fake.add_number(ACCOUNT, "+14155550100", &hook());
    let body = phone(&id, "+14155550100", "local", "US");
    let before = t.fake.requests();
    t.fake.set_delay(Duration::from_millis(1500));
    let s = std::sync::Arc::new(s);
    let first = {
        let (s, body) = (s.clone(), body.clone());
        std::thread::spawn(move || import(&s, ADMIN_TOKEN, &body))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.fake.requests() == before {
        assert!(
            Instant::now() < deadline,
            "the first import never reached Twilio"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let asked = t.fake.requests();
    let r = import(&s, ADMIN_TOKEN, &body);
    expect_error(&r, 409, "provisioning_in_progress");
    assert_eq!(
        t.fake.requests(),
        asked,
        "the second import did not call Twilio"
    );
    t.fake.set_delay(Duration::ZERO);
    let r = first.join().unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    // Done: the number is provisioned, so the same import again is refused for that.
    expect_error(
        &import(&s, ADMIN_TOKEN, &body),
        409,
        "provisioning_in_progress",
    );
}

#[test]
fn every_type_imports_when_twilio_is_set_up() {
    let (t, s) = start();
    let id = integration_a(&s);
    t.fake.add_number(ACCOUNT, "+14155550100", &hook());
    t.fake.add_number(ACCOUNT, "+447700900123", &hook());
    t.fake.add_number(ACCOUNT, "+18005550100", &hook());
    t.fake.add_short_code(ACCOUNT, "12345", &hook());
    t.fake.add_number(ACCOUNT, "+14155550101", &hook());
    let service = t.fake.add_service(ACCOUNT, "deferring", true);
    t.fake.add_to_service(&service, "+14155550101");

    let mut short = phone(&id, "12345", "short_code", "US");
    short["compliance"] = compliance();
    for body in [
        phone(&id, "+14155550100", "local", "US"),
        phone(&id, "+447700900123", "mobile", "GB"),
        phone(&id, "+18005550100", "toll_free", "US"),
        short,
        phone(&id, "+14155550101", "local", "US"),
    ] {
        let r = import(&s, ADMIN_TOKEN, &body);
        assert_eq!(r.status, 201, "{body}: {}", r.text());
        assert_eq!(r.json()["status"], "active");
    }
    assert_eq!(numbers(&s).len(), 5);
}

#[test]
fn wrong_credentials_are_rejected_before_anything_is_stored() {
    let (_t, s) = start();
    let r = create_integration(&s, ADMIN_TOKEN, ACCOUNT, "not-the-token");
    let msg = expect_error(&r, 422, "vendor_credentials_rejected");
    assert!(msg.contains("Account SID / Auth Token"), "{msg}");
    let unknown = format!("AC{}", "9".repeat(32));
    let r = create_integration(&s, ADMIN_TOKEN, &unknown, TOKEN);
    expect_error(&r, 422, "vendor_credentials_rejected");
    let list = s.admin("GET", "/api/v1/integrations", ADMIN_TOKEN, None);
    assert_eq!(list.json(), json!([]));

    let id = integration_a(&s);
    let path = format!("/api/v1/integrations/{id}");
    for patch in [
        json!({"auth_token": "wrong"}),
        json!({"next_auth_token": "wrong"}),
    ] {
        let r = s.admin("PATCH", &path, ADMIN_TOKEN, Some(&patch));
        expect_error(&r, 422, "vendor_credentials_rejected");
    }
    let r = s.admin("GET", &path, ADMIN_TOKEN, None);
    assert_eq!(r.json()["has_next_auth_token"], false);
    let r = s.admin(
        "PATCH",
        &path,
        ADMIN_TOKEN,
        Some(&json!({"auth_token": TOKEN})),
    );
    assert_eq!(r.status, 200, "{}", r.text());

    let mut s = s;
    for line in s.logs() {
        assert!(!line.contains(TOKEN), "token logged: {line}");
        assert!(!line.contains("not-the-token"), "token logged: {line}");
    }
}

#[test]
fn unreachable_twilio_is_a_clear_503_and_changes_nothing() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let s = TestServer::start(Options {
        twilio_base: Some(base),
        ..Options::default()
    });
    let r = create_integration(&s, ADMIN_TOKEN, ACCOUNT, TOKEN);
    let msg = expect_error(&r, 503, "vendor_unreachable");
    assert!(msg.contains("Twilio could not be reached"), "{msg}");
    let list = s.admin("GET", "/api/v1/integrations", ADMIN_TOKEN, None);
    assert_eq!(list.json(), json!([]));
}

#[test]
fn twilio_too_slow_during_import_is_unreachable_and_releases_the_number() {
    let (t, s) = start_with("vendor_timeout_ms = 300");
    let id = integration_a(&s);
    t.fake.add_number(ACCOUNT, "+14155550100", &hook());
    let body = phone(&id, "+14155550100", "local", "US");
    t.fake.set_delay(Duration::from_millis(1000));
    expect_error(&import(&s, ADMIN_TOKEN, &body), 503, "vendor_unreachable");
    t.fake.set_delay(Duration::ZERO);
    let r = import(&s, ADMIN_TOKEN, &body);
    assert_eq!(r.status, 201, "the reservation was released: {}", r.text());
}

#[test]
fn imported_number_accepts_a_signed_webhook() {
    let (t, s) = start();
    let id = integration_a(&s);
    t.fake.add_number(ACCOUNT, "+14155550100", &hook());
    let mut body = phone(&id, "+14155550100", "local", "US");
    body["queue"] = json!("vendor");
    let r = import(&s, ADMIN_TOKEN, &body);
    assert_eq!(r.status, 201, "{}", r.text());

    let form = inbound_body(
        "+14155550100",
        CUSTOMER,
        ACCOUNT,
        "SM000000000000000000000000000000aa",
        "hello",
    );
    let r = s.post_signed("mo", &form, TOKEN);
    assert_eq!(r.status, 200, "{}", r.text());
    let records = s.spool_tail("vendor");
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["integration_id"], id.as_str());
}

//! The Twilio REST client of the import checks against the test kit's fake Twilio on
//! loopback: credentials, numbers and short codes, webhooks, Messaging Services, paging,
//! timeouts.

use http::StatusCode;
use sms_ingress::control::vendor::{ImportVendorError, TwilioClient, VendorError};
use sms_ingress::model::crypto::Secret;
use sms_ingress::model::state::NumberType;
use sms_ingress_testkit::FakeTwilio;
use std::time::Duration;

const ACCT: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "fake-auth-token-1";
const HOOK: &str =
    "https://byosms.mypurecloud.com/vendors/v1/twilio/a906d2848ad146028e8805a8bbaa24d3/mo";

struct Setup {
    fake: FakeTwilio,
    client: TwilioClient,
    _server: tokio::task::JoinHandle<()>,
}

async fn setup(timeout: Duration) -> Setup {
    let fake = FakeTwilio::new();
    fake.add_account(ACCT, TOKEN);
    let (addr, server) = fake.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = format!("http://{addr}");
    let client = TwilioClient::new(&base, &format!("{base}/v1"), timeout).unwrap();
    Setup {
        fake,
        client,
        _server: server,
    }
}

fn token() -> Secret {
    Secret::new(TOKEN)
}

async fn check(s: &Setup, sender: &str, kind: NumberType) -> Result<(), ImportVendorError> {
    s.client
        .check_number(ACCT, &token(), sender, kind, HOOK)
        .await
}

#[tokio::test]
async fn credentials_accepted_and_rejected() {
    let s = setup(Duration::from_secs(5)).await;
    s.client.check_credentials(ACCT, &token()).await.unwrap();
    let wrong = s.client.check_credentials(ACCT, &Secret::new("nope")).await;
    assert_eq!(wrong, Err(VendorError::CredentialsRejected));
    let other = format!("AC{}", "f".repeat(32));
    let unknown = s.client.check_credentials(&other, &token()).await;
    assert_eq!(unknown, Err(VendorError::CredentialsRejected));
}

#[tokio::test]
async fn numbers_and_short_codes() {
    let s = setup(Duration::from_secs(5)).await;
    s.fake.add_number(ACCT, "+14155550100", HOOK);
    s.fake.add_short_code(ACCT, "12345", HOOK);
    check(&s, "+14155550100", NumberType::Local).await.unwrap();
    check(&s, "12345", NumberType::ShortCode).await.unwrap();
    let missing = check(&s, "+14155550199", NumberType::Mobile)
        .await
        .unwrap_err();
    assert_eq!(missing.code(), "number_not_found_at_vendor");
    // A phone number is not a short code and vice versa.
    let e = check(&s, "12345", NumberType::Local).await.unwrap_err();
    assert_eq!(e.code(), "number_not_found_at_vendor");
}

#[tokio::test]
async fn number_of_another_account_is_not_found() {
    let s = setup(Duration::from_secs(5)).await;
    let other = format!("AC{}", "e".repeat(32));
    s.fake.add_account(&other, "other-token");
    s.fake.add_number(&other, "+14155550100", HOOK);
    let e = check(&s, "+14155550100", NumberType::Local)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "number_not_found_at_vendor");
}

#[tokio::test]
async fn wrong_webhook_names_the_url_to_set() {
    let s = setup(Duration::from_secs(5)).await;
    s.fake
        .add_number(ACCT, "+14155550100", "https://example.com/old");
    let e = check(&s, "+14155550100", NumberType::Local)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "webhook_not_configured");
    assert!(e.to_string().contains(HOOK), "{e}");
    assert!(e.to_string().contains("https://example.com/old"), "{e}");
    s.fake.set_sms_url("+14155550100", HOOK);
    check(&s, "+14155550100", NumberType::Local).await.unwrap();
    s.fake.set_sms_method("+14155550100", "GET");
    let e = check(&s, "+14155550100", NumberType::Local)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "webhook_not_configured");
}

#[tokio::test]
async fn messaging_service_must_defer() {
    let s = setup(Duration::from_secs(5)).await;
    s.fake.add_number(ACCT, "+14155550100", HOOK);
    s.fake.add_number(ACCT, "+14155550101", HOOK);
    // Another service first, so membership is really looked up per service.
    let other = s.fake.add_service(ACCT, "other", true);
    s.fake.add_to_service(&other, "+14155550101");
    let svc = s.fake.add_service(ACCT, "10DLC", false);
    s.fake.add_to_service(&svc, "+14155550100");
    let e = check(&s, "+14155550100", NumberType::Local)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "webhook_not_configured");
    assert!(e.to_string().contains("Defer to sender's webhook"), "{e}");
    assert!(e.to_string().contains(&svc), "{e}");
    s.fake.set_defer(&svc, true);
    check(&s, "+14155550100", NumberType::Local).await.unwrap();
    check(&s, "+14155550101", NumberType::Local).await.unwrap();
}

#[tokio::test]
async fn services_are_paged() {
    let s = setup(Duration::from_secs(5)).await;
    s.fake.add_number(ACCT, "+14155550100", HOOK);
    // The client asks for pages of 50: one page and part of the next.
    for i in 0..55 {
        s.fake.add_service(ACCT, &format!("s{i}"), true);
    }
    let last = s.fake.add_service(ACCT, "last", false);
    s.fake.add_to_service(&last, "+14155550100");
    let e = check(&s, "+14155550100", NumberType::Local)
        .await
        .unwrap_err();
    assert!(e.to_string().contains(&last), "{e}");
}

#[tokio::test]
async fn unreachable_and_timeout() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let base = format!("http://{addr}");
    let client = TwilioClient::new(&base, &base, Duration::from_secs(2)).unwrap();
    let e = client.check_credentials(ACCT, &token()).await.unwrap_err();
    assert!(matches!(e, VendorError::Unreachable(_)), "{e:?}");
    assert_eq!(e.code(), "vendor_unreachable");
    let api = sms_ingress::control::admin::ApiError::from(e.clone());
    assert_eq!(api.status(), StatusCode::SERVICE_UNAVAILABLE);

    let s = setup(Duration::from_millis(100)).await;
    s.fake.set_delay(Duration::from_millis(1000));
    let e = s
        .client
        .check_credentials(ACCT, &token())
        .await
        .unwrap_err();
    assert!(matches!(e, VendorError::Unreachable(_)), "{e:?}");
}

#[tokio::test]
async fn wrong_token_at_import_is_credentials_rejected() {
    let s = setup(Duration::from_secs(5)).await;
    s.fake.add_number(ACCT, "+14155550100", HOOK);
    let e = s
        .client
        .check_number(
            ACCT,
            &Secret::new("bad"),
            "+14155550100",
            NumberType::Local,
            HOOK,
        )
        .await
        .unwrap_err();
    let api: sms_ingress::control::admin::ApiError = e.into();
    assert_eq!(
        (api.status(), api.code()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "vendor_credentials_rejected"
        )
    );
}

//! The admin API's JSON bodies, end to end through `AdminApi::handle`: any body on any
//! write route is a JSON answer, never a panic; the state stays valid.
#![no_main]
use bytes::Bytes;
use http_body_util::Full;
use libfuzzer_sys::fuzz_target;
use sms_ingress::config::{AdminToken, Config, Permission};
use sms_ingress::control::admin::AdminApi;
use sms_ingress::model::crypto::MasterKey;
use sms_ingress::control::store::{ControlStore, Publisher};
use sms_ingress::deadletter::DeadLetters;
use sms_ingress::inventory::Inventory;
use std::sync::{Arc, OnceLock};

const TOKEN: &str = "fuzz-admin";
const ROUTES: [(&str, &str); 6] = [
    ("POST", "/api/v1/integrations"),
    ("PATCH", "/api/v1/integrations/int-0000000000000001"),
    ("POST", "/api/v1/numbers"),
    ("POST", "/api/v1/numbers/bulk"),
    ("POST", "/api/v1/dead-letters/replay"),
    ("DELETE", "/api/v1/numbers/%2B14155550100"),
];

struct Harness {
    runtime: tokio::runtime::Runtime,
    api: AdminApi,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let mut cfg = Config::default();
        cfg.dead_letters.dir = dir.join("dead-letters");
        cfg.control.audit_log = dir.join("audit.log");
        let key = Arc::new(MasterKey::from_base64(&MasterKey::generate_base64().unwrap()).unwrap());
        let publisher: Publisher = Arc::new(|_| Ok(Box::new(|| {})));
        let store = Arc::new(ControlStore::open(dir.join("state.json"), key, publisher).unwrap());
        let hash = ring::digest::digest(&ring::digest::SHA256, TOKEN.as_bytes());
        let token = AdminToken {
            id: Some("fuzz".into()),
            org: "org-a".into(),
            token_sha256: hash.as_ref().iter().map(|b| format!("{b:02x}")).collect(),
            permissions: vec![
                Permission::IntegrationAdd,
                Permission::IntegrationView,
                Permission::IntegrationEdit,
                Permission::IntegrationDelete,
                Permission::SmsNumberAll,
            ],
        };
        let dead_letters = Arc::new(DeadLetters::new(&cfg, Arc::new(Inventory::default())));
        let region = sms_ingress::model::regions::by_name("us-east-1").unwrap();
        let api = AdminApi::new(store, &[token], region, dead_letters).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        Harness { runtime, api }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    let (method, path) = ROUTES[which as usize % ROUTES.len()];
    let h = harness();
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap();
    let resp = h.runtime.block_on(h.api.handle(req));
    assert!(resp.status().as_u16() < 500 || resp.status().as_u16() == 503 || resp.status().as_u16() == 501,
        "server error {}", resp.status());
    assert!(h.api.store().snapshot().validate().is_ok());
});

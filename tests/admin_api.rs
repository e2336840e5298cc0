//! The admin API end to end: a real Unix socket, a real state file, a recording publisher.

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use sms_ingress::config::{AdminToken, Permission};
use sms_ingress::control::admin::{serve, AdminApi};
use sms_ingress::control::store::{ControlStore, Publisher};
use sms_ingress::deadletter::DeadLetters;
use sms_ingress::model::crypto::MasterKey;
use sms_ingress::model::state::State;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

const ADMIN_A: &str = "admin-token-org-a";
const VIEW_A: &str = "view-token-org-a";
const ADMIN_B: &str = "admin-token-org-b";
const AUTH_TOKEN: &str = "SECRET-twilio-auth-token-0123456789";
const NEXT_TOKEN: &str = "NEXT-twilio-auth-token-9876543210";

fn sha256_hex(s: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, s.as_bytes()))
}

fn token(id: &str, org: &str, secret: &str, permissions: Vec<Permission>) -> AdminToken {
    AdminToken {
        id: Some(id.into()),
        org: org.into(),
        token_sha256: sha256_hex(secret),
        permissions,
    }
}

/// Dead letters under `dir`, routed through an empty inventory (this harness publishes no snapshot).
fn dead_letters(dir: &std::path::Path) -> Arc<DeadLetters> {
    let mut cfg = sms_ingress::config::Config::default();
    cfg.dead_letters.dir = dir.join("dead-letters");
    Arc::new(DeadLetters::new(&cfg, Arc::default()))
}

fn all_permissions() -> Vec<Permission> {
    vec![
        Permission::IntegrationAdd,
        Permission::IntegrationView,
        Permission::IntegrationEdit,
        Permission::IntegrationDelete,
        Permission::SmsNumberAll,
    ]
}

struct Harness {
    _dir: tempfile::TempDir,
    state_file: PathBuf,
    sock: PathBuf,
    store: Arc<ControlStore>,
    key: Arc<MasterKey>,
    /// States made live, in order.
    live: Arc<Mutex<Vec<State>>>,
    refuse: Arc<AtomicBool>,
    stop: Option<sms_ingress::shutdown::ShutdownSignal>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Harness {
    async fn start() -> Harness {
        Harness::start_with(|_| State::default()).await
    }

    /// Starts on the state file `initial` writes (given the harness's master key).
    async fn start_with(initial: impl FnOnce(&MasterKey) -> State) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let state_file = dir.path().join("state.json");
        let sock = dir.path().join("admin.sock");
        let key = Arc::new(MasterKey::from_base64(&MasterKey::generate_base64().unwrap()).unwrap());
        let initial = initial(&key);
        if initial != State::default() {
            initial.save(&state_file).unwrap();
        }
        let live = Arc::new(Mutex::new(Vec::new()));
        let refuse = Arc::new(AtomicBool::new(false));
        let publisher: Publisher = {
            let (live, refuse, file) = (live.clone(), refuse.clone(), state_file.clone());
            Arc::new(move |s: &State| {
                if refuse.load(Ordering::SeqCst) {
                    return Err(sms_ingress::inventory::BuildError::Queue {
                        queue: "q".into(),
                        source: sms_ingress::sink::SinkError::Unavailable(
                            "data plane is refusing".into(),
                        ),
                    });
                }
                // Prepared before the file is written.
                let on_disk = State::load(&file).map(|d| d.version).unwrap_or(0);
                assert!(s.version == 0 || on_disk < s.version);
                let (live, s) = (live.clone(), s.clone());
                Ok(Box::new(move || live.lock().unwrap().push(s)) as Box<dyn FnOnce() + Send>)
            })
        };
        let store = Arc::new(ControlStore::open(&state_file, key.clone(), publisher).unwrap());
        let tokens = vec![
            token("a-admin", "org-a", ADMIN_A, all_permissions()),
            token("a-view", "org-a", VIEW_A, vec![Permission::IntegrationView]),
            token("b-admin", "org-b", ADMIN_B, all_permissions()),
        ];
        let region = sms_ingress::model::regions::by_name("eu-west-1").unwrap();
        let api = Arc::new(
            AdminApi::new(store.clone(), &tokens, region, dead_letters(dir.path())).unwrap(),
        );
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let (stop, shutdown) = sms_ingress::shutdown::channel();
        let server = tokio::spawn(serve(listener, api, shutdown));
        Harness {
            _dir: dir,
            state_file,
            sock,
            store,
            key,
            live,
            refuse,
            stop: Some(stop),
            server: Some(server),
        }
    }

    async fn raw(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Bytes,
    ) -> (StatusCode, String) {
        let stream = tokio::net::UnixStream::connect(&self.sock).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("content-type", "application/json");
        if let Some(t) = bearer {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = sender
            .send_request(req.body(Full::new(body)).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        bearer: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let (status, text) = self.raw(method, path, Some(bearer), body).await;
        assert!(
            !text.contains(AUTH_TOKEN) && !text.contains(NEXT_TOKEN),
            "token leaked: {text}"
        );
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
        };
        (status, value)
    }

    async fn create_integration(&self, bearer: &str, name: &str) -> String {
        let (status, body) = self
            .call(
                Method::POST,
                "/api/v1/integrations",
                bearer,
                Some(json!({"name": name, "notes": "n", "account_sid": format!("AC{}", "1f".repeat(16)), "auth_token": AUTH_TOKEN})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().unwrap().to_string()
    }

    fn file_text(&self) -> String {
        std::fs::read_to_string(&self.state_file).unwrap_or_default()
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().begin();
        self.server.take().unwrap().await.unwrap();
    }
}

fn compliance() -> Value {
    json!({
        "help": {"keywords": ["HELP"], "message": "Reply STOP to stop."},
        "opt_out": {"keywords": ["STOP"], "message": "You are unsubscribed."},
        "re_opt_in": {"keywords": ["START"], "message": "You are subscribed again."},
    })
}

/// Deactivation writes the integration's record alone: its numbers keep their own status
/// in the state and show `disabled` while it is inactive. Reactivation also re-enables
/// numbers an earlier version's cascade wrote `disabled` (a state file from before).
#[tokio::test]
async fn status_is_data_and_a_reactivation_reenables_numbers_an_old_cascade_disabled() {
    use sms_ingress::model::state::{IntegrationStatus, Number, NumberStatus, Numbers};
    use sms_ingress_testkit::fixtures;
    let h = Harness::start_with(|key| State {
        version: 0,
        integrations: vec![sms_ingress::model::state::Integration {
            status: IntegrationStatus::Inactive,
            auth_token: key
                .seal(
                    &sms_ingress::model::crypto::Secret::new(AUTH_TOKEN),
                    "int-1",
                )
                .unwrap(),
            ..fixtures::integration("int-1", "org-a")
        }],
        numbers: ["+14155550100", "+14155550101"]
            .into_iter()
            .map(|s| Number {
                status: NumberStatus::Disabled,
                ..fixtures::number(s)
            })
            .collect(),
    })
    .await;
    let (_, numbers) = h.call(Method::GET, "/api/v1/numbers", ADMIN_A, None).await;
    assert_eq!(statuses(&numbers), vec!["disabled"; 2]);
    // Re-activating enables them; deactivating again shows them disabled.
    for (to, shown) in [("active", "active"), ("inactive", "disabled")] {
        let path = "/api/v1/integrations/int-1";
        let (status, _) = h
            .call(Method::PATCH, path, ADMIN_A, Some(json!({ "status": to })))
            .await;
        assert_eq!(status, StatusCode::OK);
        let (_, numbers) = h.call(Method::GET, "/api/v1/numbers", ADMIN_A, None).await;
        assert_eq!(statuses(&numbers), vec![shown; 2]);
    }
    let live = h.live.lock().unwrap().clone();
    let (before, after) = (&live[live.len() - 2], &live[live.len() - 1]);
    assert_eq!(after.integrations[0].status, IntegrationStatus::Inactive);
    assert!(
        Numbers::same(&before.numbers, &after.numbers),
        "a deactivation touches no number"
    );
    let on_disk = State::load(&h.state_file).unwrap();
    assert_eq!(on_disk.integrations[0].status, IntegrationStatus::Inactive);
    assert!(on_disk
        .numbers
        .iter()
        .all(|n| n.status == NumberStatus::Active));
}

fn statuses(numbers: &Value) -> Vec<String> {
    numbers
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["status"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn full_lifecycle() {
    let h = Harness::start().await;
    let id = h.create_integration(ADMIN_A, "main").await;
    assert!(id.starts_with("int-") && id.len() == 20);

    let imports = [
        json!({"sender_id": "+14155550100", "type": "local", "integration_id": id, "queue": "sales"}),
        json!({"sender_id": "+447700900123", "type": "mobile", "country": "GB", "integration_id": id}),
        json!({"sender_id": "+18005550100", "type": "toll_free", "integration_id": id}),
        json!({"sender_id": "54321", "type": "short_code", "country": "US", "integration_id": id, "compliance": compliance()}),
    ];
    for body in imports {
        let (status, n) = h
            .call(Method::POST, "/api/v1/numbers", ADMIN_A, Some(body))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{n}");
        assert_eq!(n["org"], "org-a");
        assert_eq!(n["status"], "active");
    }
    // Published before the answer: the last live state already holds the fourth number.
    assert_eq!(h.live.lock().unwrap().last().unwrap().numbers.len(), 4);

    let (_, numbers) = h.call(Method::GET, "/api/v1/numbers", ADMIN_A, None).await;
    assert_eq!(numbers.as_array().unwrap().len(), 4);
    assert_eq!(numbers[0]["queue"], "sales");
    assert_eq!(numbers[0]["country"], "US");
    assert_eq!(numbers[2]["queue"], "default");
    let path = format!("/api/v1/numbers?integration_id={id}");
    let (_, filtered) = h.call(Method::GET, &path, ADMIN_A, None).await;
    assert_eq!(filtered.as_array().unwrap().len(), 4);

    let (_, list) = h
        .call(Method::GET, "/api/v1/integrations", ADMIN_A, None)
        .await;
    assert_eq!(list[0]["number_count"], 4);
    assert_eq!(list[0]["status"], "active");

    let ipath = format!("/api/v1/integrations/{id}");
    let (status, view) = h
        .call(
            Method::PATCH,
            &ipath,
            ADMIN_A,
            Some(json!({"status": "inactive", "name": "renamed"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(
        (view["status"].as_str(), view["name"].as_str()),
        (Some("inactive"), Some("renamed"))
    );
    let (_, numbers) = h.call(Method::GET, "/api/v1/numbers", ADMIN_A, None).await;
    assert_eq!(statuses(&numbers), vec!["disabled"; 4]);

    // Importing under an inactive integration yields a disabled number.
    let body = json!({"sender_id": "+14155550101", "type": "local", "integration_id": id});
    let (_, n) = h
        .call(Method::POST, "/api/v1/numbers", ADMIN_A, Some(body))
        .await;
    assert_eq!(n["status"], "disabled");

    h.call(
        Method::PATCH,
        &ipath,
        ADMIN_A,
        Some(json!({"status": "active"})),
    )
    .await;
    let (_, numbers) = h.call(Method::GET, "/api/v1/numbers", ADMIN_A, None).await;
    assert_eq!(statuses(&numbers), vec!["active"; 5]);

    let (status, _) = h
        .call(
            Method::DELETE,
            "/api/v1/numbers/%2B14155550101",
            ADMIN_A,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = h
        .call(
            Method::DELETE,
            "/api/v1/numbers/%2B14155550101",
            ADMIN_A,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, _) = h.call(Method::DELETE, &ipath, ADMIN_A, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, numbers) = h.call(Method::GET, "/api/v1/numbers", ADMIN_A, None).await;
    assert_eq!(numbers, json!([]));
    let (status, _) = h.call(Method::GET, &ipath, ADMIN_A, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let on_disk = State::load(&h.state_file).unwrap();
    assert!(on_disk.integrations.is_empty() && on_disk.numbers.is_empty());
    assert_eq!(on_disk, h.store.snapshot());
    assert_eq!(&on_disk, h.live.lock().unwrap().last().unwrap());
    h.stop().await;
}

#[tokio::test]
async fn tokens_never_leave_sealed() {
    let h = Harness::start().await;
    let id = h.create_integration(ADMIN_A, "main").await;
    let ipath = format!("/api/v1/integrations/{id}");
    let (status, view) = h
        .call(
            Method::PATCH,
            &ipath,
            ADMIN_A,
            Some(json!({"next_auth_token": NEXT_TOKEN})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["has_next_auth_token"], true);
    assert!(view.get("auth_token").is_none() && view.get("next_auth_token").is_none());
    h.call(Method::GET, &ipath, ADMIN_A, None).await;
    h.call(Method::GET, "/api/v1/integrations", ADMIN_A, None)
        .await;

    let text = h.file_text();
    assert!(!text.contains(AUTH_TOKEN) && !text.contains(NEXT_TOKEN));
    let state = State::load(&h.state_file).unwrap();
    let i = state.integration(&id).unwrap();
    assert_eq!(h.key.open(&i.auth_token, &id).unwrap().expose(), AUTH_TOKEN);
    let next = i.next_auth_token.as_ref().unwrap();
    assert_eq!(h.key.open(next, &id).unwrap().expose(), NEXT_TOKEN);

    let (_, view) = h
        .call(
            Method::PATCH,
            &ipath,
            ADMIN_A,
            Some(json!({"next_auth_token": null})),
        )
        .await;
    assert_eq!(view["has_next_auth_token"], false);
    h.stop().await;
}

#[tokio::test]
async fn authentication_permissions_and_org_isolation() {
    let h = Harness::start().await;
    let (status, body) = h
        .raw(Method::GET, "/api/v1/integrations", None, Bytes::new())
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["code"],
        "unauthorized"
    );
    let (status, _) = h
        .call(Method::GET, "/api/v1/integrations", "wrong", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = h.call(Method::GET, "/api/v1/regions", "wrong", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let id = h.create_integration(ADMIN_A, "a").await;
    let body = json!({"sender_id": "+14155550100", "type": "local", "integration_id": id});
    h.call(Method::POST, "/api/v1/numbers", ADMIN_A, Some(body))
        .await;

    // View-only token: reads integrations, nothing else.
    let (status, list) = h
        .call(Method::GET, "/api/v1/integrations", VIEW_A, None)
        .await;
    assert_eq!(
        (status, list.as_array().unwrap().len()),
        (StatusCode::OK, 1)
    );
    let (status, e) = h
        .call(
            Method::POST,
            "/api/v1/integrations",
            VIEW_A,
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(
        (status, e["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    let ipath = format!("/api/v1/integrations/{id}");
    for (m, p) in [
        (Method::PATCH, ipath.as_str()),
        (Method::DELETE, ipath.as_str()),
        (Method::GET, "/api/v1/numbers"),
        (Method::POST, "/api/v1/dead-letters/replay"),
    ] {
        let (status, _) = h.call(m, p, VIEW_A, Some(json!({}))).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{p}");
    }
    let (status, regions) = h.call(Method::GET, "/api/v1/regions", VIEW_A, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(regions["region"], "eu-west-1");
    assert_eq!(
        regions["webhook_url"],
        "https://byosms.mypurecloud.ie/vendors/v1/twilio/a123cbc6467b48ccbdccc3e03fd30f4d/mo"
    );
    assert_eq!(regions["regions"].as_array().unwrap().len(), 14);
    assert_eq!(regions["method"], "POST");
    assert!(regions["connection_overrides"]
        .as_str()
        .unwrap()
        .contains("the URL before '#'"));

    // Org B sees none of org A's objects.
    let (_, list) = h
        .call(Method::GET, "/api/v1/integrations", ADMIN_B, None)
        .await;
    assert_eq!(list, json!([]));
    let (_, list) = h.call(Method::GET, "/api/v1/numbers", ADMIN_B, None).await;
    assert_eq!(list, json!([]));
    for (m, body) in [
        (Method::GET, None),
        (Method::PATCH, Some(json!({"name": "x"}))),
        (Method::DELETE, None),
    ] {
        let (status, e) = h.call(m, &ipath, ADMIN_B, body).await;
        assert_eq!(
            (status, e["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found"))
        );
    }
    let (status, _) = h
        .call(
            Method::DELETE,
            "/api/v1/numbers/%2B14155550100",
            ADMIN_B,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Org B cannot import under org A's integration, nor take org A's number.
    let body = json!({"sender_id": "+14155550199", "type": "local", "integration_id": id});
    let (status, e) = h
        .call(Method::POST, "/api/v1/numbers", ADMIN_B, Some(body))
        .await;
    assert_eq!(
        (status, e["code"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("integration_missing")
        )
    );
    let id_b = h.create_integration(ADMIN_B, "b").await;
    let body = json!({"sender_id": "+14155550100", "type": "local", "integration_id": id_b});
    let (status, e) = h
        .call(Method::POST, "/api/v1/numbers", ADMIN_B, Some(body))
        .await;
    assert_eq!(
        (status, e["code"].as_str()),
        (StatusCode::CONFLICT, Some("number_unavailable"))
    );
    // Org A re-submitting its own number.
    let body = json!({"sender_id": "+14155550100", "type": "local", "integration_id": id});
    let (status, e) = h
        .call(Method::POST, "/api/v1/numbers", ADMIN_A, Some(body))
        .await;
    assert_eq!(
        (status, e["code"].as_str()),
        (StatusCode::CONFLICT, Some("provisioning_in_progress"))
    );
    // The state still holds org A's integration and number intact.
    assert_eq!(h.store.snapshot().numbers.len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn rejected_change_leaves_everything_untouched() {
    let h = Harness::start().await;
    let id = h.create_integration(ADMIN_A, "a").await;
    let before = std::fs::read(&h.state_file).unwrap();
    let live_before = h.live.lock().unwrap().len();
    let snapshot_before = h.store.snapshot();

    h.refuse.store(true, Ordering::SeqCst);
    let ipath = format!("/api/v1/integrations/{id}");
    let (status, e) = h
        .call(
            Method::PATCH,
            &ipath,
            ADMIN_A,
            Some(json!({"status": "inactive"})),
        )
        .await;
    assert_eq!(
        (status, e["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("publish_failed"))
    );
    let body = json!({"sender_id": "+14155550100", "type": "local", "integration_id": id});
    let (status, _) = h
        .call(Method::POST, "/api/v1/numbers", ADMIN_A, Some(body.clone()))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _) = h.call(Method::DELETE, &ipath, ADMIN_A, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    assert_eq!(std::fs::read(&h.state_file).unwrap(), before);
    assert_eq!(h.live.lock().unwrap().len(), live_before);
    assert_eq!(h.store.snapshot(), snapshot_before);
    assert!(h.store.in_flight().is_empty(), "reservation released");

    // The refused import can be retried once the data plane accepts again.
    h.refuse.store(false, Ordering::SeqCst);
    let (status, _) = h
        .call(Method::POST, "/api/v1/numbers", ADMIN_A, Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    h.stop().await;
}

#[tokio::test]
async fn malformed_requests_get_json_errors() {
    let h = Harness::start().await;
    let cases: Vec<(Method, &str, Bytes, StatusCode, &str)> = vec![
        (Method::GET, "/api/v1/nope", Bytes::new(), StatusCode::NOT_FOUND, "not_found"),
        (Method::GET, "/other", Bytes::new(), StatusCode::NOT_FOUND, "not_found"),
        (Method::PUT, "/api/v1/numbers", Bytes::new(), StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        (Method::POST, "/api/v1/integrations", Bytes::from("{not json"), StatusCode::BAD_REQUEST, "invalid_request"),
        (Method::POST, "/api/v1/numbers", Bytes::from("[]"), StatusCode::BAD_REQUEST, "invalid_request"),
        (
            Method::POST,
            "/api/v1/integrations",
            Bytes::from(json!({"name": "x", "account_sid": "AC12", "auth_token": "t"}).to_string()),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/api/v1/integrations",
            Bytes::from(json!({"name": "x", "account_sid": format!("AC{}", "0".repeat(32)), "auth_token": ""}).to_string()),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/api/v1/numbers",
            Bytes::from(json!({"sender_id": "+14155550100", "type": "local"}).to_string()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "integration_missing",
        ),
        (Method::POST, "/api/v1/integrations", Bytes::from(vec![b' '; 70 * 1024]), StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        (Method::POST, "/api/v1/dead-letters/replay", Bytes::from("{}"), StatusCode::BAD_REQUEST, "invalid_request"),
        (Method::DELETE, "/api/v1/numbers/%E0%A4", Bytes::new(), StatusCode::BAD_REQUEST, "invalid_request"),
    ];
    for (method, path, body, want_status, want_code) in cases {
        let (status, text) = h.raw(method.clone(), path, Some(ADMIN_A), body).await;
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text}"));
        assert_eq!(
            (status, v["code"].as_str()),
            (want_status, Some(want_code)),
            "{method} {path}: {text}"
        );
        assert!(v["message"].is_string());
    }
    assert!(!h.state_file.exists(), "no change was written");
    h.stop().await;
}

#[tokio::test]
async fn handle_is_callable_without_a_socket() {
    let h = Harness::start().await;
    let tokens = vec![token("a", "org-a", ADMIN_A, all_permissions())];
    let region = sms_ingress::model::regions::by_name("us-east-1").unwrap();
    let api = AdminApi::new(
        h.store.clone(),
        &tokens,
        region,
        dead_letters(h._dir.path()),
    )
    .unwrap();
    let req = Request::builder()
        .method(Method::GET)
        .uri("/api/v1/regions")
        .header("authorization", format!("Bearer {ADMIN_A}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = api.handle(req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["region"], "us-east-1");
    h.stop().await;
}

#[tokio::test]
async fn dead_letter_replay_checks_permission_org_and_status() {
    let h = Harness::start().await;
    let id = h.create_integration(ADMIN_A, "main").await;
    let path = "/api/v1/dead-letters/replay";
    let body = json!({"integration_id": id});

    let (status, _) = h.call(Method::POST, path, VIEW_A, Some(body.clone())).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, v) = h
        .call(Method::POST, path, ADMIN_B, Some(body.clone()))
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (status, v) = h
        .call(Method::POST, path, ADMIN_A, Some(json!({"id": id})))
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );

    let inactive = json!({"status": "inactive"});
    let (status, _) = h
        .call(
            Method::PATCH,
            &format!("/api/v1/integrations/{id}"),
            ADMIN_A,
            Some(inactive),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, v) = h
        .call(Method::POST, path, ADMIN_A, Some(body.clone()))
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("integration_inactive"))
    );

    let active = json!({"status": "active"});
    h.call(
        Method::PATCH,
        &format!("/api/v1/integrations/{id}"),
        ADMIN_A,
        Some(active),
    )
    .await;
    let (status, v) = h.call(Method::POST, path, ADMIN_A, Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v, json!({"replayed": 0, "skipped": 0, "remaining": 0}));
    h.stop().await;
}

#[tokio::test]
async fn names_and_notes_are_bounded() {
    let h = Harness::start().await;
    let sid = format!("AC{}", "2e".repeat(16));
    let long_name = "n".repeat(201);
    let (status, body) = h
        .call(
            Method::POST,
            "/api/v1/integrations",
            ADMIN_A,
            Some(json!({"name": long_name, "account_sid": sid, "auth_token": AUTH_TOKEN})),
        )
        .await;
    assert_eq!(status.as_u16() / 100, 4, "{body}");
    assert!(body.to_string().contains("200 characters"), "{body}");
    let id = h.create_integration(ADMIN_A, &"é".repeat(200)).await;
    let before = h.file_text();
    let (status, body) = h
        .call(
            Method::PATCH,
            &format!("/api/v1/integrations/{id}"),
            ADMIN_A,
            Some(json!({"notes": "x".repeat(4001)})),
        )
        .await;
    assert_eq!(status.as_u16() / 100, 4, "{body}");
    assert!(body.to_string().contains("4000 characters"), "{body}");
    assert_eq!(
        h.file_text(),
        before,
        "a refused change leaves the state untouched"
    );
    h.stop().await;
}

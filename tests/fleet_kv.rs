//! End-to-end: a fleet of two real `sms-ingress` processes with `control.store = "nats_kv"`
//! sharing one KV bucket on a nats-server (JetStream) that each test starts on its own
//! loopback port and temporary store. Changes made through one instance's admin API are
//! served by the other; concurrent edits through both land; an instance started late
//! serves the bucket before `/readyz` is 200; a restarted nats-server is recovered from.

use crate::support::nats::Nats;
use crate::support::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const TOKEN: &str = "twilio-auth-token-1";
const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const OURS: &str = "+14155550100";
const CUSTOMER: &str = "+14155559999";
/// How long a change may take to reach the other instance.
const PROPAGATION: Duration = Duration::from_secs(5);

/// Config of an instance on the bucket; spool sink under its own temporary directory.
fn kv_options(nats_url: &str) -> Options {
    Options {
        control_extra: format!(
            "store = \"nats_kv\"\nnats_kv = {{ servers = [\"{nats_url}\"], bucket = \"fleet_test\", connect_timeout_ms = 3000, request_timeout_ms = 3000 }}\n"
        ),
        ..Options::default()
    }
}

/// Starts an instance on the bucket; `key_from` shares another instance's master key, as
/// every instance of a fleet must.
fn instance(nats: &Nats, key_from: Option<&TestServer>) -> TestServer {
    let dir: PathBuf = tempfile::tempdir().unwrap().keep();
    let config = write_config(&dir, &kv_options(&nats.url()));
    if let Some(other) = key_from {
        std::fs::copy(other.dir.join("master.key"), dir.join("master.key")).unwrap();
    }
    TestServer::start_in(dir, config)
}

/// A nats-server and two instances A and B sharing its bucket and one master key.
fn fleet() -> (Nats, TestServer, TestServer) {
    let nats = Nats::start();
    let a = instance(&nats, None);
    let b = instance(&nats, Some(&a));
    (nats, a, b)
}

fn readyz(s: &TestServer) -> u16 {
    s.request("GET", "/readyz", &[], b"").status
}

/// Polls `f` every 50 ms until it holds or `limit` passes.
fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

fn get(s: &TestServer, path: &str) -> Value {
    let r = s.admin("GET", path, ADMIN_TOKEN, None);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// The sender IDs in `s`'s inventory for org-a.
fn numbers(s: &TestServer) -> Vec<String> {
    let list = get(s, "/api/v1/numbers");
    let mut ids: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["sender_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn number(sender_id: &str, integration_id: &str) -> Value {
    json!({"sender_id": sender_id, "type": "local", "country": "US", "queue": "support",
           "integration_id": integration_id})
}

fn create_integration(s: &TestServer) -> String {
    let body = json!({"name": "fleet", "account_sid": ACCOUNT, "auth_token": TOKEN});
    let r = s.admin("POST", "/api/v1/integrations", ADMIN_TOKEN, Some(&body));
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_string()
}

fn sid(n: usize) -> String {
    format!("SM{n:032x}")
}

fn inbound(to: &str, n: usize) -> String {
    inbound_body(to, CUSTOMER, ACCOUNT, &sid(n), "hello fleet")
}

/// Waits (bounded) until `s` lists `sender_id`; returns how long it took.
fn wait_for_number(s: &TestServer, sender_id: &str) -> Duration {
    let started = Instant::now();
    assert!(
        wait_until(PROPAGATION, || numbers(s).iter().any(|n| n == sender_id)),
        "{sender_id} did not reach the other instance within {PROPAGATION:?}"
    );
    started.elapsed()
}

#[test]
fn a_number_imported_on_one_instance_is_served_by_the_other() {
    let (nats, a, b) = fleet();
    let id = setup_number(&a, ACCOUNT, TOKEN, number(OURS, "-"));
    let took = wait_for_number(&b, OURS);
    eprintln!("propagation A -> B: {took:?}");
    let r = b.post_signed("mo", &inbound(OURS, 1), TOKEN);
    assert_eq!(r.status, 200, "{}", r.text());
    let spooled = b.spool_tail("support");
    assert_eq!(spooled.len(), 1, "{spooled:?}");
    assert_eq!(spooled[0]["integration_id"], id.as_str());
    assert!(
        a.spool_tail("support").is_empty(),
        "only B took the webhook"
    );
    let view = get(&b, &format!("/api/v1/integrations/{id}"));
    assert_eq!(view["number_count"], 1);

    // The bucket holds one record per key, `+` escaped, the Auth Token sealed.
    let (integration, number) = read_bucket(
        &nats.url(),
        &[&format!("integration.{id}"), "number._2B14155550100"],
    );
    let integration: Value = serde_json::from_slice(&integration).unwrap();
    assert_eq!(integration["id"], id.as_str());
    assert!(integration["auth_token"]["ciphertext"].is_string());
    assert!(
        !integration.to_string().contains(TOKEN),
        "no plaintext token in KV"
    );
    let number: Value = serde_json::from_slice(&number).unwrap();
    assert_eq!(
        (number["sender_id"].as_str(), number["status"].as_str()),
        (Some(OURS), Some("active"))
    );
}

#[test]
fn a_shared_key_added_on_one_instance_verifies_on_the_other_and_is_sealed_in_kv() {
    const SECRET: &str = "fleet-shared-key-secret-0123";
    let (nats, a, b) = fleet();
    let id = setup_number(&a, ACCOUNT, TOKEN, number(OURS, "-"));
    wait_for_number(&b, OURS);
    let add = json!({"signing_keys": {"add": [{"id": "KS1", "secret": SECRET}]}});
    let r = a.admin(
        "PATCH",
        &format!("/api/v1/integrations/{id}"),
        ADMIN_TOKEN,
        Some(&add),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let body = inbound(OURS, 7);
    let settings = Some("key=KS1,algorithm=HMAC_SHA256");
    assert!(
        wait_until(PROPAGATION, || {
            crate::shared_key::post_shared(&b, &body, SECRET, settings).status == 200
        }),
        "B never verified the SharedKey added on A"
    );
    assert_eq!(b.spool_tail("support").len(), 1);

    // The bucket's integration record holds the key's id and its secret sealed.
    let (integration, _) = read_bucket(
        &nats.url(),
        &[&format!("integration.{id}"), "number._2B14155550100"],
    );
    let integration: Value = serde_json::from_slice(&integration).unwrap();
    assert_eq!(integration["signing_keys"][0]["id"], "KS1", "{integration}");
    assert!(integration["signing_keys"][0]["secret"]["ciphertext"].is_string());
    assert!(
        !integration.to_string().contains(SECRET),
        "no plaintext SharedKey in KV"
    );
}

/// The values of two keys of the bucket, read directly with a NATS client.
fn read_bucket(url: &str, keys: &[&str; 2]) -> (Vec<u8>, Vec<u8>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let kv = async_nats::jetstream::new(client)
            .get_key_value("fleet_test")
            .await
            .unwrap();
        let mut values = Vec::new();
        for key in keys {
            values.push(kv.get(*key).await.unwrap().expect(key).to_vec());
        }
        (values.remove(0), values.remove(0))
    })
}

#[test]
fn concurrent_edits_through_both_instances_all_land() {
    let (_nats, a, b) = fleet();
    let id = create_integration(&a);
    let path = format!("/api/v1/integrations/{id}");
    assert!(wait_until(PROPAGATION, || b
        .admin("GET", &path, ADMIN_TOKEN, None)
        .status
        == 200));
    const EDITS: usize = 15;
    let started = Instant::now();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for n in 0..EDITS {
                let r = a.admin(
                    "PATCH",
                    &path,
                    ADMIN_TOKEN,
                    Some(&json!({"name": format!("name-{n}")})),
                );
                assert_eq!(r.status, 200, "A: {}", r.text());
            }
        });
        scope.spawn(|| {
            for n in 0..EDITS {
                let r = b.admin(
                    "PATCH",
                    &path,
                    ADMIN_TOKEN,
                    Some(&json!({"notes": format!("notes-{n}")})),
                );
                assert_eq!(r.status, 200, "B: {}", r.text());
            }
        });
    });
    let conflicts = |s: &TestServer| s.metric("sms_ingress_control_kv_cas_conflicts_total");
    eprintln!(
        "{} concurrent patches: {:?}, compare-and-set conflicts re-run: A {} B {}",
        2 * EDITS,
        started.elapsed(),
        conflicts(&a),
        conflicts(&b)
    );
    let last = (
        format!("name-{}", EDITS - 1),
        format!("notes-{}", EDITS - 1),
    );
    for s in [&a, &b] {
        let landed = wait_until(PROPAGATION, || {
            let v = get(s, &path);
            (v["name"].as_str(), v["notes"].as_str()) == (Some(&last.0), Some(&last.1))
        });
        assert!(landed, "lost update: {}", get(s, &path));
    }

    // A and B import different numbers at the same time: all of them end up everywhere.
    let mine = |base: usize| -> Vec<String> {
        (0..6).map(|k| format!("+1415555{:04}", base + k)).collect()
    };
    let (on_a, on_b) = (mine(1000), mine(2000));
    let started = Instant::now();
    std::thread::scope(|scope| {
        for (s, list) in [(&a, &on_a), (&b, &on_b)] {
            let id = &id;
            scope.spawn(move || {
                for n in list {
                    let r = s.admin("POST", "/api/v1/numbers", ADMIN_TOKEN, Some(&number(n, id)));
                    assert_eq!(r.status, 201, "{n}: {}", r.text());
                }
            });
        }
    });
    eprintln!("12 concurrent imports: {:?}", started.elapsed());
    let mut all: Vec<String> = on_a.iter().chain(&on_b).cloned().collect();
    all.sort();
    for s in [&a, &b] {
        assert!(
            wait_until(PROPAGATION, || numbers(s) == all),
            "inventory {:?}",
            numbers(s)
        );
    }
    assert_eq!(get(&a, &path)["number_count"], 12);
}

#[test]
fn a_deactivation_on_one_instance_drops_webhooks_on_the_other() {
    let (_nats, a, b) = fleet();
    let id = setup_number(&a, ACCOUNT, TOKEN, number(OURS, "-"));
    wait_for_number(&b, OURS);
    let path = format!("/api/v1/integrations/{id}");
    let r = a.admin(
        "PATCH",
        &path,
        ADMIN_TOKEN,
        Some(&json!({"status": "inactive"})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let disabled = wait_until(PROPAGATION, || {
        let list = get(&b, "/api/v1/numbers");
        get(&b, &path)["status"] == "inactive" && list[0]["status"] == "disabled"
    });
    assert!(disabled, "{}", get(&b, "/api/v1/numbers"));
    let r = b.post_signed("mo", &inbound(OURS, 7), TOKEN);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(b.spool_tail("support").is_empty(), "dropped, not enqueued");
    assert_eq!(
        b.dead_letter_tail(&id).len(),
        1,
        "kept as a dead letter on B"
    );

    // Re-activation on B reaches A, whose webhooks are routed again.
    let r = b.admin(
        "PATCH",
        &path,
        ADMIN_TOKEN,
        Some(&json!({"status": "active"})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(wait_until(PROPAGATION, || get(&a, "/api/v1/numbers")[0]
        ["status"]
        == "active"));
    assert_eq!(a.post_signed("mo", &inbound(OURS, 8), TOKEN).status, 200);
    assert_eq!(a.spool_tail("support").len(), 1);
}

#[test]
fn an_instance_started_on_a_filled_bucket_serves_it_once_ready() {
    let nats = Nats::start();
    let a = instance(&nats, None);
    let id = setup_number(&a, ACCOUNT, TOKEN, number(OURS, "-"));
    let started = Instant::now();
    let b = instance(&nats, Some(&a));
    eprintln!("B started on a filled bucket in {:?}", started.elapsed());
    assert_eq!(readyz(&b), 200);
    // No polling: the bucket was loaded before the listener served anything.
    assert_eq!(numbers(&b), vec![OURS.to_string()]);
    let r = b.post_signed("mo", &inbound(OURS, 1), TOKEN);
    assert_eq!(r.status, 200, "{}", r.text());
    let spooled = b.spool_tail("support");
    assert_eq!(spooled.len(), 1);
    assert_eq!(spooled[0]["integration_id"], id.as_str());
}

#[test]
fn instances_recover_the_watch_after_nats_restarts() {
    let (mut nats, a, b) = fleet();
    let id = setup_number(&a, ACCOUNT, TOKEN, number(OURS, "-"));
    wait_for_number(&b, OURS);
    nats.stop();
    for s in [&a, &b] {
        assert!(
            wait_until(Duration::from_secs(10), || readyz(s) == 503),
            "/readyz stayed 200 without NATS"
        );
        // The last snapshot keeps serving meanwhile (spool sink).
        assert_eq!(s.post_signed("mo", &inbound(OURS, 1), TOKEN).status, 200);
    }
    let r = a.admin(
        "POST",
        "/api/v1/numbers",
        ADMIN_TOKEN,
        Some(&number("+14155550101", &id)),
    );
    assert_eq!(r.status, 503, "no write without the bucket: {}", r.text());

    let down = Instant::now();
    nats.spawn();
    for s in [&a, &b] {
        assert!(
            wait_until(Duration::from_secs(20), || readyz(s) == 200),
            "/readyz did not recover"
        );
    }
    eprintln!("both ready again {:?} after the restart", down.elapsed());
    // A change after the recovery reaches both instances.
    let later = "+14155550102";
    let r = b.admin(
        "POST",
        "/api/v1/numbers",
        ADMIN_TOKEN,
        Some(&number(later, &id)),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    wait_for_number(&a, later);
    let r = a.post_signed("mo", &inbound(later, 2), TOKEN);
    assert_eq!(r.status, 200, "{}", r.text());
    let spooled = a.spool_tail("support");
    assert!(spooled.iter().any(|e| e["to"] == later), "{spooled:?}");
}

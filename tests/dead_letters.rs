//! Dead letters end to end: webhooks for an inactive integration are answered 200 only once
//! durable in its dead-letter spool, bounded, and replayed exactly once after re-activation,
//! across `kill -9` and restarts.

use crate::support::*;
use serde_json::{json, Value};

const TOKEN: &str = "twilio-auth-token-1";
const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const OURS: &str = "+14155550100";
const CUSTOMER: &str = "+14155559999";
const EMPTY: &str = r#"<?xml version="1.0" encoding="UTF-8"?><Response/>"#;
const REPLAY: &str = "/api/v1/dead-letters/replay";

fn server_with_number(opts: Options) -> (TestServer, String) {
    let s = TestServer::start(opts);
    let number = json!({"sender_id": OURS, "type": "local", "country": "US", "queue": "support"});
    let id = setup_number(&s, ACCOUNT, TOKEN, number);
    (s, id)
}

fn set_status(s: &TestServer, id: &str, status: &str) {
    let path = format!("/api/v1/integrations/{id}");
    let r = s.admin(
        "PATCH",
        &path,
        ADMIN_TOKEN,
        Some(&json!({"status": status})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

fn replay(s: &TestServer, id: &str) -> (u16, Value) {
    let r = s.admin(
        "POST",
        REPLAY,
        ADMIN_TOKEN,
        Some(&json!({"integration_id": id})),
    );
    (r.status, r.json())
}

fn sid(i: u32) -> String {
    format!("SM{i:032}")
}

fn inbound(i: u32) -> String {
    inbound_body(OURS, CUSTOMER, ACCOUNT, &sid(i), &format!("message {i} ✓"))
}

/// Posts a signed inbound webhook and expects 200 with empty TwiML.
fn post_ok(s: &TestServer, body: &str) {
    let r = s.post_signed("mo", body, TOKEN);
    assert_eq!((r.status, r.text()), (200, EMPTY.to_string()));
}

fn sids(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| r["message_sid"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn dead_letters_are_kept_while_inactive_and_replayed_exactly_once() {
    let (s, id) = server_with_number(Options::default());
    set_status(&s, &id, "inactive");
    let report = status_body(OURS, CUSTOMER, ACCOUNT, &sid(3), "delivered");
    post_ok(&s, &inbound(1));
    post_ok(&s, &inbound(2));
    post_ok(&s, &inbound(1)); // Twilio's retry: not stored twice
    let r = s.post_signed("status", &report, TOKEN);
    assert_eq!(r.status, 200);

    assert!(
        s.spool_tail("support").is_empty(),
        "nothing reached the queue"
    );
    let dead = s.dead_letter_tail(&id);
    assert_eq!(sids(&dead), [sid(1), sid(2), sid(3)]);
    assert_eq!(dead[0]["body"], inbound(1).as_str(), "original bytes kept");
    assert_eq!(dead[0]["integration_id"], id.as_str());
    assert_eq!(dead[2]["kind"], "status");
    let dropped = r#"sms_ingress_dropped_total{reason="integration_inactive"}"#;
    assert_eq!(s.metric(dropped), 4.0);
    let kept = r#"sms_ingress_dead_letters_total{reason="integration_inactive"}"#;
    assert_eq!(s.metric(kept), 3.0);
    assert_eq!(s.metric("sms_ingress_duplicates_total"), 1.0);

    let (status, body) = replay(&s, &id);
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("integration_inactive"))
    );

    set_status(&s, &id, "active");
    let (status, body) = replay(&s, &id);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"replayed": 3, "skipped": 0, "remaining": 0}));
    let queued = s.spool_tail("support");
    assert_eq!(sids(&queued), [sid(1), sid(2), sid(3)]);
    assert_eq!(queued[0]["body"], inbound(1).as_str());
    assert_eq!(queued[0]["signature"], dead[0]["signature"]);
    assert_eq!(queued[0]["queue"], "support");

    // Replaying again stores nothing twice; a Twilio retry now is still a duplicate.
    let (status, body) = replay(&s, &id);
    assert_eq!(
        (status, body),
        (200, json!({"replayed": 0, "skipped": 0, "remaining": 0}))
    );
    post_ok(&s, &inbound(2));
    assert_eq!(s.spool_tail("support").len(), 3);
}

#[test]
fn dead_letters_survive_kill_9_and_are_replayed_once_across_restarts() {
    let (s, id) = server_with_number(Options::default());
    set_status(&s, &id, "inactive");
    for i in 1..=3 {
        post_ok(&s, &inbound(i));
    }
    let s = s.restart();
    assert_eq!(s.dead_letter_tail(&id).len(), 3);
    set_status(&s, &id, "active");
    let (status, body) = replay(&s, &id);
    assert_eq!(
        (status, body),
        (200, json!({"replayed": 3, "skipped": 0, "remaining": 0}))
    );

    let s = s.restart();
    let (status, body) = replay(&s, &id);
    assert_eq!(
        (status, body),
        (200, json!({"replayed": 0, "skipped": 0, "remaining": 0}))
    );
    assert_eq!(sids(&s.spool_tail("support")), [sid(1), sid(2), sid(3)]);
}

#[test]
fn over_the_bound_webhooks_get_503_with_retry_after() {
    let (s, id) = server_with_number(Options {
        dead_letter_max: 2,
        ..Options::default()
    });
    set_status(&s, &id, "inactive");
    post_ok(&s, &inbound(1));
    post_ok(&s, &inbound(2));
    let r = s.post_signed("mo", &inbound(3), TOKEN);
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("7"));
    let full = r#"sms_ingress_rejected_total{reason="dead_letter_full"}"#;
    assert_eq!(s.metric(full), 1.0);
    assert_eq!(s.dead_letter_tail(&id).len(), 2);

    // A replay frees the places; Twilio's retry of the refused one is then kept.
    set_status(&s, &id, "active");
    assert_eq!(replay(&s, &id).1["replayed"], 2);
    set_status(&s, &id, "inactive");
    post_ok(&s, &inbound(3));
    assert_eq!(sids(&s.dead_letter_tail(&id)), [sid(1), sid(2), sid(3)]);
}

#[test]
fn replay_skips_dead_letters_of_numbers_no_longer_in_the_inventory() {
    let (s, id) = server_with_number(Options::default());
    set_status(&s, &id, "inactive");
    post_ok(&s, &inbound(1));
    let r = s.admin(
        "DELETE",
        "/api/v1/numbers/%2B14155550100",
        ADMIN_TOKEN,
        None,
    );
    assert_eq!(r.status, 204, "{}", r.text());
    set_status(&s, &id, "active");
    let (status, body) = replay(&s, &id);
    assert_eq!(
        (status, body),
        (200, json!({"replayed": 0, "skipped": 1, "remaining": 0}))
    );
    assert!(s.spool_tail("support").is_empty());
    let (_, body) = replay(&s, &id);
    assert_eq!(
        body["skipped"], 0,
        "a skipped dead letter is not reconsidered"
    );
}

#[test]
fn replayed_dead_letter_segments_are_deleted_but_never_the_live_one() {
    let dir = tempfile::tempdir().unwrap().keep();
    let opts = Options {
        sink_toml: Some(format!(
            "[sink]\nkind = \"spool\"\ndir = \"{}/spool\"\nsegment_bytes = 4096\n",
            dir.display()
        )),
        ..Options::default()
    };
    let config = write_config(&dir, &opts);
    let s = TestServer::start_in(dir, config);
    let number = json!({"sender_id": OURS, "type": "local", "country": "US", "queue": "support"});
    let id = setup_number(&s, ACCOUNT, TOKEN, number);
    set_status(&s, &id, "inactive");
    for i in 1..=20 {
        post_ok(&s, &inbound(i));
    }
    let dl_dir = s.dir.join("dead-letters").join(&id);
    let segments = |d: &std::path::Path| {
        std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
            .count()
    };
    let before = segments(&dl_dir);
    assert!(before >= 3, "{before} segments");
    set_status(&s, &id, "active");
    let (status, body) = replay(&s, &id);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["replayed"], 20);
    assert_eq!(segments(&dl_dir), 1, "only the live segment is left");
    assert_eq!(s.spool_tail("support").len(), 20);
    // The spool keeps taking dead letters afterwards.
    set_status(&s, &id, "inactive");
    post_ok(&s, &inbound(21));
    assert_eq!(sids(&s.dead_letter_tail(&id)).last(), Some(&sid(21)));
    set_status(&s, &id, "active");
    let (_, body) = replay(&s, &id);
    assert_eq!(body["replayed"], 1);
}

#[test]
fn an_integrations_dead_letters_are_deleted_with_it() {
    let (s, id) = server_with_number(Options::default());
    set_status(&s, &id, "inactive");
    post_ok(&s, &inbound(1));
    let dl_dir = s.dir.join("dead-letters").join(&id);
    assert!(dl_dir.is_dir());
    let r = s.admin(
        "DELETE",
        &format!("/api/v1/integrations/{id}"),
        ADMIN_TOKEN,
        None,
    );
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(!dl_dir.exists(), "dead letters left behind");
    let (status, body) = replay(&s, &id);
    assert_eq!(status, 404, "{body}");
}

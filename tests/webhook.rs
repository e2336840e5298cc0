//! End-to-end: the real binary on ephemeral loopback ports, driven over HTTP and the admin
//! socket, checked through the spool (via `spool tail`) and `/metrics`.

use crate::support::*;
use serde_json::json;

const TOKEN: &str = "twilio-auth-token-1";
const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const OURS: &str = "+14155550100";
const CUSTOMER: &str = "+14155559999";
const EMPTY: &str = r#"<?xml version="1.0" encoding="UTF-8"?><Response/>"#;

/// A server with one active integration of org-a and one number routed to queue "support".
fn server_with_number(opts: Options) -> (TestServer, String) {
    let s = TestServer::start(opts);
    let number = json!({"sender_id": OURS, "type": "local", "country": "US", "queue": "support"});
    let id = setup_number(&s, ACCOUNT, TOKEN, number);
    (s, id)
}

fn inbound(sid: &str, text: &str) -> String {
    inbound_body(OURS, CUSTOMER, ACCOUNT, sid, text)
}

#[test]
fn accepted_webhook_is_spooled_exactly_once() {
    let (s, id) = server_with_number(Options::default());
    let body = inbound(
        "SM00000000000000000000000000000001",
        "Hello 👋 wörld & more",
    );
    let r = s.post_signed("mo", &body, TOKEN);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), EMPTY);
    assert!(r.header("content-type").unwrap().starts_with("text/xml"));

    // Twilio retries the same delivery: 200 again, stored once.
    let r = s.post_signed("mo", &body, TOKEN);
    assert_eq!((r.status, r.text()), (200, EMPTY.to_string()));

    let records = s.spool_tail("support");
    assert_eq!(records.len(), 1, "{records:?}");
    let rec = &records[0];
    assert_eq!(rec["kind"], "inbound");
    assert_eq!(rec["body"], body.as_str(), "original bytes kept exactly");
    assert_eq!(rec["org"], "org-a");
    assert_eq!(rec["integration_id"], id.as_str());
    assert_eq!(rec["queue"], "support");
    assert_eq!(rec["number"], OURS);
    assert_eq!(rec["from"], CUSTOMER);
    assert_eq!(rec["message_sid"], "SM00000000000000000000000000000001");
    assert_eq!(rec["account_sid"], ACCOUNT);
    let url = format!("{PUBLIC_URL}{}", TestServer::webhook_path("mo"));
    assert_eq!(rec["signed_url"], url.as_str());
    assert_eq!(
        rec["signature"],
        sign(&TestServer::webhook_path("mo"), &body, TOKEN).as_str()
    );
    assert!(rec["received_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(s.metric("sms_ingress_duplicates_total"), 1.0);
    assert_eq!(
        s.metric(r#"sms_ingress_acknowledged_total{queue="org-a/support"}"#),
        1.0
    );
}

#[test]
fn delivery_reports_route_on_from_and_dedup_per_status() {
    let (s, _) = server_with_number(Options::default());
    let sid = "SM00000000000000000000000000000002";
    for st in ["sent", "delivered", "delivered"] {
        let body = status_body(OURS, CUSTOMER, ACCOUNT, sid, st);
        assert_eq!(s.post_signed("status", &body, TOKEN).status, 200);
    }
    let records = s.spool_tail("support");
    let statuses: Vec<_> = records
        .iter()
        .map(|r| r["message_status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["sent", "delivered"]);
    assert!(records
        .iter()
        .all(|r| r["kind"] == "status" && r["number"] == OURS));
}

#[test]
fn bad_signatures_are_403_and_store_nothing() {
    let (s, _) = server_with_number(Options::default());
    let path = TestServer::webhook_path("mo");
    let body = inbound("SM00000000000000000000000000000003", "hi");
    let good = sign(&path, &body, TOKEN);

    let tampered = body.replace("Body=hi", "Body=ho");
    assert_eq!(
        s.post(&path, &tampered, &[("X-Twilio-Signature", &good)])
            .status,
        403
    );
    assert_eq!(s.post_signed("mo", &body, "some-other-token").status, 403);
    assert_eq!(s.post(&path, &body, &[]).status, 403);
    let other_account = inbound_body(
        OURS,
        CUSTOMER,
        "AC99999999999999999999999999999999",
        "SM4",
        "hi",
    );
    assert_eq!(s.post_signed("mo", &other_account, TOKEN).status, 403);

    assert!(s.spool_tail("support").is_empty());
    assert_eq!(
        s.metric(r#"sms_ingress_rejected_total{reason="signature_invalid"}"#),
        2.0
    );
    assert_eq!(
        s.metric(r#"sms_ingress_rejected_total{reason="signature_missing"}"#),
        1.0
    );
    assert_eq!(
        s.metric(r#"sms_ingress_rejected_total{reason="account_mismatch"}"#),
        1.0
    );
    // the signature computed over the URL with the default port is accepted too
    let with_port = {
        let form = sms_ingress::form::Form::parse(body.as_bytes()).unwrap();
        sms_ingress::signature::compute(&format!("{PUBLIC_URL}:443{path}"), &form, TOKEN.as_bytes())
    };
    assert_eq!(
        s.post(&path, &body, &[("X-Twilio-Signature", &with_port)])
            .status,
        200
    );
}

#[test]
fn status_codes_in_spec_order() {
    let (s, _) = server_with_number(Options::default());
    let mo = TestServer::webhook_path("mo");
    let body = inbound("SM00000000000000000000000000000005", "hi");
    // unknown number: 200 empty TwiML, counted, nothing stored
    let unknown = inbound_body("+14155550199", CUSTOMER, ACCOUNT, "SM6", "hi");
    let r = s.post_signed("mo", &unknown, TOKEN);
    assert_eq!((r.status, r.text()), (200, EMPTY.to_string()));
    assert_eq!(
        s.metric(r#"sms_ingress_dropped_total{reason="unknown_number"}"#),
        1.0
    );
    // wrong region key, unknown path
    let wrong_region = "/vendors/v1/twilio/b1adfe3a944c428bbc65d953bb8629b2/mo";
    assert_eq!(s.post(wrong_region, &body, &[]).status, 404);
    assert_eq!(s.post("/nope", &body, &[]).status, 404);
    // method
    let r = s.request("GET", &mo, &[], b"");
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
    // oversize (max_body_bytes = 4096 in tests), declared and chunked
    let big = format!("{body}&Pad={}", "x".repeat(5000));
    assert_eq!(s.post(&mo, &big, &[]).status, 413);
    // media type
    let r = s.request(
        "POST",
        &mo,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 415);
    // malformed form, missing our number
    assert_eq!(s.post(&mo, "To=%zz&MessageSid=SM1", &[]).status, 400);
    assert_eq!(s.post(&mo, "From=%2B1&MessageSid=SM1", &[]).status, 400);
    assert!(s.spool_tail("support").is_empty());
    // health
    assert_eq!(s.request("GET", "/healthz", &[], b"").status, 200);
    assert_eq!(s.request("GET", "/readyz", &[], b"").status, 200);
    assert!(s
        .metrics()
        .contains("sms_ingress_requests_total{route=\"mo\",status=\"413\"}"));
}

#[test]
fn oversize_chunked_body_is_refused_while_streaming() {
    let (s, _) = server_with_number(Options::default());
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n",
        TestServer::webhook_path("mo")
    );
    c.write_all(head.as_bytes()).unwrap();
    let chunk = "a".repeat(1000);
    for _ in 0..6 {
        if c.write_all(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes())
            .is_err()
        {
            break;
        }
    }
    let mut buf = [0u8; 64];
    let n = c.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 413"));
}

#[test]
fn admin_status_change_applies_to_the_next_webhook() {
    let (s, id) = server_with_number(Options::default());
    let path = format!("/api/v1/integrations/{id}");
    let r = s.admin(
        "PATCH",
        &path,
        ADMIN_TOKEN,
        Some(&json!({"status": "inactive"})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = s.post_signed(
        "mo",
        &inbound("SM00000000000000000000000000000007", "dropped"),
        TOKEN,
    );
    assert_eq!((r.status, r.text()), (200, EMPTY.to_string()));
    assert_eq!(
        s.metric(r#"sms_ingress_dropped_total{reason="integration_inactive"}"#),
        1.0
    );
    assert!(s.spool_tail("support").is_empty());

    let r = s.admin(
        "PATCH",
        &path,
        ADMIN_TOKEN,
        Some(&json!({"status": "active"})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = s.post_signed(
        "mo",
        &inbound("SM00000000000000000000000000000008", "routed"),
        TOKEN,
    );
    assert_eq!(r.status, 200);
    assert_eq!(s.spool_tail("support").len(), 1);

    // deleting the integration removes the number: webhooks become unknown
    assert_eq!(s.admin("DELETE", &path, ADMIN_TOKEN, None).status, 204);
    let r = s.post_signed(
        "mo",
        &inbound("SM00000000000000000000000000000009", "gone"),
        TOKEN,
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        s.metric(r#"sms_ingress_dropped_total{reason="unknown_number"}"#),
        1.0
    );
    assert_eq!(s.spool_tail("support").len(), 1);
}

#[test]
fn short_code_keyword_gets_its_reply_and_is_still_enqueued() {
    let (s, id) = server_with_number(Options::default());
    let kw = |k: &str, m: &str| json!({"keywords": [k], "message": m});
    let r = s.admin(
        "POST",
        "/api/v1/numbers",
        ADMIN_TOKEN,
        Some(&json!({
            "sender_id": "55555", "type": "short_code", "country": "US", "integration_id": id, "queue": "sc",
            "compliance": {"help": kw("HELP", "Reply STOP to stop"), "opt_out": kw("STOP", "You are unsubscribed & done"), "re_opt_in": kw("START", "Welcome back")}
        })),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let body = inbound_body(
        "55555",
        CUSTOMER,
        ACCOUNT,
        "SM0000000000000000000000000000000a",
        " stop ",
    );
    let r = s.post_signed("mo", &body, TOKEN);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.text(),
        r#"<?xml version="1.0" encoding="UTF-8"?><Response><Message>You are unsubscribed &amp; done</Message></Response>"#
    );
    let body = inbound_body(
        "55555",
        CUSTOMER,
        ACCOUNT,
        "SM0000000000000000000000000000000b",
        "stop please",
    );
    assert_eq!(s.post_signed("mo", &body, TOKEN).text(), EMPTY);
    let records = s.spool_tail("sc");
    let actions: Vec<_> = records
        .iter()
        .map(|r| r["compliance_action"].clone())
        .collect();
    assert_eq!(actions, [json!("opt_out"), json!(null)]);
}

#[test]
fn full_queue_answers_503_with_retry_after_and_loses_no_ack() {
    let (s, _) = server_with_number(Options {
        queue_capacity: 1,
        max_batch: 1,
        ..Options::default()
    });
    let s = std::sync::Arc::new(s);
    let mut acked = Vec::new();
    let mut saw_503 = false;
    for round in 0..5 {
        let handles: Vec<_> = (0..64)
            .map(|i| {
                let s = s.clone();
                std::thread::spawn(move || {
                    let sid = format!("SM{round:02}{i:030}");
                    let r = s.post_signed("mo", &inbound(&sid, "burst"), TOKEN);
                    (sid, r.status, r.header("retry-after").map(str::to_owned))
                })
            })
            .collect();
        for h in handles {
            let (sid, status, retry) = h.join().unwrap();
            match status {
                200 => acked.push(sid),
                503 => {
                    assert_eq!(retry.as_deref(), Some("7"));
                    saw_503 = true;
                }
                other => panic!("unexpected status {other}"),
            }
        }
        if saw_503 {
            break;
        }
    }
    assert!(
        saw_503,
        "a queue of capacity 1 never filled under 64 concurrent posts"
    );
    assert!(s.metric(r#"sms_ingress_rejected_total{reason="queue_full"}"#) >= 1.0);
    let stored: std::collections::HashSet<String> = s
        .spool_tail("support")
        .iter()
        .map(|r| r["message_sid"].as_str().unwrap().to_string())
        .collect();
    for sid in &acked {
        assert!(stored.contains(sid), "acknowledged {sid} not in spool");
    }
}

#[test]
fn secrets_and_bodies_never_logged() {
    let (mut s, _) = server_with_number(Options::default());
    let secret_text = "my-very-private-message-text";
    assert_eq!(
        s.post_signed(
            "mo",
            &inbound("SM0000000000000000000000000000000c", secret_text),
            TOKEN
        )
        .status,
        200
    );
    assert_eq!(
        s.post_signed(
            "mo",
            &inbound("SM0000000000000000000000000000000d", secret_text),
            "wrong"
        )
        .status,
        403
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    let logs = s.logs().join("\n");
    assert!(logs.contains("sms-ingress serving"));
    assert!(!logs.contains(TOKEN), "auth token in logs");
    assert!(!logs.contains(secret_text), "message body in logs");
    let state = std::fs::read_to_string(s.dir.join("state.json")).unwrap();
    assert!(
        !state.contains(TOKEN),
        "auth token in clear in the state file"
    );
}

#[test]
fn another_tenant_reusing_a_message_sid_never_suppresses_ours() {
    let (s, _) = server_with_number(Options::default());
    // Org B: its own Twilio account and number, signing correctly for them.
    let (b_account, b_token, b_number) = (
        "AC11111111111111111111111111111111",
        "token-b",
        "+14155550177",
    );
    let r = s.admin(
        "POST",
        "/api/v1/integrations",
        OTHER_ORG_TOKEN,
        Some(&json!({"name": "b", "account_sid": b_account, "auth_token": b_token})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let b_id = r.json()["id"].as_str().unwrap().to_string();
    let number = json!({"sender_id": b_number, "type": "local", "country": "US", "queue": "support", "integration_id": b_id});
    let r = s.admin("POST", "/api/v1/numbers", OTHER_ORG_TOKEN, Some(&number));
    assert_eq!(r.status, 201, "{}", r.text());

    let sid = "SM0000000000000000000000000000cafe";
    let theirs = inbound_body(b_number, CUSTOMER, b_account, sid, "first, from org b");
    assert_eq!(s.post_signed("mo", &theirs, b_token).status, 200);
    let ours = inbound(sid, "ours, same MessageSid");
    assert_eq!(s.post_signed("mo", &ours, TOKEN).status, 200);
    let a = s.spool_tail("org-a/support");
    assert_eq!(a.len(), 1, "org a's message is stored: {a:?}");
    assert_eq!(a[0]["params"]["Body"], "ours, same MessageSid");
    assert_eq!(s.spool_tail("org-b/support").len(), 1);
    // A real retry of ours is still a duplicate.
    assert_eq!(s.post_signed("mo", &ours, TOKEN).status, 200);
    assert_eq!(s.spool_tail("org-a/support").len(), 1);
    assert_eq!(s.metric("sms_ingress_duplicates_total"), 1.0);
}

#[test]
fn a_retry_after_a_restart_is_still_a_duplicate() {
    let (s, _) = server_with_number(Options::default());
    let body = inbound("SM0000000000000000000000000000beef", "before the restart");
    assert_eq!(s.post_signed("mo", &body, TOKEN).status, 200);
    let report = status_body(
        OURS,
        CUSTOMER,
        ACCOUNT,
        "SM0000000000000000000000000000beef",
        "delivered",
    );
    assert_eq!(s.post_signed("status", &report, TOKEN).status, 200);
    let s = s.restart(); // kill -9, then start on the same directory
    assert_eq!(s.post_signed("mo", &body, TOKEN).status, 200);
    assert_eq!(s.post_signed("status", &report, TOKEN).status, 200);
    assert_eq!(s.spool_tail("support").len(), 2, "each stored once");
    assert_eq!(s.metric("sms_ingress_duplicates_total"), 2.0);
    // A new delivery still goes in.
    let next = inbound("SM0000000000000000000000000000bee2", "after");
    assert_eq!(s.post_signed("mo", &next, TOKEN).status, 200);
    assert_eq!(s.spool_tail("support").len(), 3);
}

#[test]
fn the_signature_tool_takes_the_token_from_a_file_or_the_environment() {
    use std::process::Command;
    let path = TestServer::webhook_path("mo");
    let url = format!("{PUBLIC_URL}{path}");
    let body = inbound("SM00000000000000000000000000000042", "hi");
    let expected = sign(&path, &body, TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let run = |args: &[&str], env: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sms-ingress"));
        cmd.args(["signature", "compute", "--url", &url])
            .args(args)
            .env_remove("SMS_INGRESS_TWILIO_TOKEN");
        if let Some(t) = env {
            cmd.env("SMS_INGRESS_TWILIO_TOKEN", t);
        }
        let out = output_with_stdin(&mut cmd, body.as_bytes());
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let file_arg = file.to_str().unwrap();
    assert_eq!(run(&["--token-file", file_arg], None).1, expected);
    assert_eq!(run(&[], Some(TOKEN)).1, expected);
    assert_eq!(
        run(&["--token", TOKEN], Some("other")).1,
        expected,
        "the flag wins"
    );
    let (code, _, err) = run(&[], None);
    assert_ne!(code, Some(0));
    assert!(err.contains("--token-file"), "{err}");
}

#[test]
fn an_identical_pair_sent_twice_verifies_as_twilio_python_signs_it() {
    let (s, _) = server_with_number(Options::default());
    let once = format!(
        "{}&Tag=a",
        inbound("SM00000000000000000000000000000a1a", "tags")
    );
    let twice = format!("{once}&Tag=a");
    let path = TestServer::webhook_path("mo");
    // twilio-python (and Node, PHP) sign each name's distinct values once.
    let python = sign(&path, &once, TOKEN);
    let r = s.post(&path, &twice, &[("X-Twilio-Signature", python.as_str())]);
    assert_eq!(r.status, 200, "{}", r.text());
    // Signed over every pair, as twilio-ruby does, it verifies too.
    let every = sign(&path, &twice, TOKEN);
    let twice2 = twice.replace(
        "SM00000000000000000000000000000a1a",
        "SM00000000000000000000000000000a1b",
    );
    let every2 = sign(&path, &twice2, TOKEN);
    assert_ne!(every, python);
    let r = s.post(&path, &twice2, &[("X-Twilio-Signature", every2.as_str())]);
    assert_eq!(r.status, 200, "{}", r.text());
}

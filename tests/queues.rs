//! Queues belong to an org (SPEC 3): two orgs' `support` queues are two spools; a plain
//! queue name resolves only when one org has it; a spool from before orgs moves into its
//! org's directory at start, or the start is refused with the way out.

use crate::support::*;
use serde_json::{json, Value};
use std::process::Command;

const TOKEN_A: &str = "twilio-auth-token-a";
const ACCOUNT_A: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN_B: &str = "twilio-auth-token-b";
const ACCOUNT_B: &str = "ACfedcba9876543210fedcba9876543210";
const CUSTOMER: &str = "+14155559999";

/// An integration of the token's org with one number on `queue`.
fn number_of(s: &TestServer, admin: &str, account: &str, token: &str, ours: &str, queue: &str) {
    let r = s.admin(
        "POST",
        "/api/v1/integrations",
        admin,
        Some(&json!({"name": "t", "account_sid": account, "auth_token": token})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let n = json!({"sender_id": ours, "type": "local", "country": "US", "queue": queue, "integration_id": id});
    let r = s.admin("POST", "/api/v1/numbers", admin, Some(&n));
    assert_eq!(r.status, 201, "{}", r.text());
}

fn tail(s: &TestServer, queue: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sms-ingress"))
        .args(["spool", "tail", "--queue", queue, "--config"])
        .arg(&s.config)
        .output()
        .unwrap()
}

fn lines(out: &std::process::Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn two_orgs_queues_of_one_name_are_two_spools_and_a_plain_name_must_be_unique() {
    let s = TestServer::start(Options::default());
    number_of(
        &s,
        ADMIN_TOKEN,
        ACCOUNT_A,
        TOKEN_A,
        "+14155550100",
        "support",
    );
    number_of(
        &s,
        OTHER_ORG_TOKEN,
        ACCOUNT_B,
        TOKEN_B,
        "+14155550200",
        "support",
    );
    number_of(&s, ADMIN_TOKEN, ACCOUNT_A, TOKEN_A, "+14155550101", "sales");
    let sid_a = "SM0000000000000000000000000000000a";
    let body_a = inbound_body("+14155550100", CUSTOMER, ACCOUNT_A, sid_a, "hi a");
    assert_eq!(s.post_signed("mo", &body_a, TOKEN_A).status, 200);
    let body_b = inbound_body(
        "+14155550200",
        CUSTOMER,
        ACCOUNT_B,
        "SM0000000000000000000000000000000b",
        "hi b",
    );
    assert_eq!(s.post_signed("mo", &body_b, TOKEN_B).status, 200);
    assert!(s.dir.join("spool/org-a/support").is_dir());
    assert!(s.dir.join("spool/org-b/support").is_dir());

    let out = tail(&s, "support");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("org-a/support, org-b/support"), "{err}");

    let a = lines(&tail(&s, "org-a/support"));
    assert_eq!(a.len(), 1);
    assert_eq!(
        (a[0]["org"].as_str(), a[0]["queue"].as_str()),
        (Some("org-a"), Some("support"))
    );
    assert_eq!(a[0]["message_sid"], sid_a);
    // The consumer's view: where it is, where to resume, every field decoded.
    assert_eq!(a[0]["offset"], 0);
    assert!(a[0]["next_offset"].as_u64().unwrap() > 0);
    assert_eq!(a[0]["params"]["Body"], "hi a");
    assert_eq!(a[0]["params"]["From"], CUSTOMER);
    let b = lines(&tail(&s, "org-b/support"));
    assert_eq!(b[0]["org"], "org-b");
    assert!(lines(&tail(&s, "sales")).is_empty(), "one org has it");
    assert_eq!(
        s.metric(r#"sms_ingress_acknowledged_total{queue="org-b/support"}"#),
        1.0
    );
}

#[test]
fn a_spool_from_before_orgs_moves_to_its_org_or_the_start_is_refused() {
    let mut s = TestServer::start(Options::default());
    number_of(
        &s,
        ADMIN_TOKEN,
        ACCOUNT_A,
        TOKEN_A,
        "+14155550100",
        "support",
    );
    number_of(
        &s,
        OTHER_ORG_TOKEN,
        ACCOUNT_B,
        TOKEN_B,
        "+14155550200",
        "support",
    );
    number_of(&s, ADMIN_TOKEN, ACCOUNT_A, TOKEN_A, "+14155550101", "sales");
    let body = inbound_body(
        "+14155550101",
        CUSTOMER,
        ACCOUNT_A,
        "SM00000000000000000000000000000001",
        "to sales",
    );
    assert_eq!(s.post_signed("mo", &body, TOKEN_A).status, 200);
    s.kill9();
    let spool = s.dir.join("spool");
    // As an older version laid them out: <sink.dir>/<queue>/.
    std::fs::rename(spool.join("org-a/sales"), spool.join("sales")).unwrap();
    let s = s.restart();
    assert!(!spool.join("sales").exists(), "moved back into its org");
    let recs = lines(&tail(&s, "org-a/sales"));
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["params"]["Body"], "to sales");

    // Two orgs use "support": the start is refused, naming the directory and the fix.
    let (dir, config) = (s.dir.clone(), s.config.clone());
    drop(s);
    std::fs::create_dir_all(spool.join("org-b/support")).unwrap();
    std::fs::rename(spool.join("org-b/support"), spool.join("support")).unwrap();
    if !spool
        .join("support")
        .read_dir()
        .unwrap()
        .any(|e| e.unwrap().path().extension().is_some_and(|x| x == "log"))
    {
        std::fs::write(spool.join("support").join(format!("{:020}.log", 0)), b"").unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_sms-ingress"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&spool.join("support").display().to_string()),
        "{err}"
    );
    assert!(err.contains("org-a, org-b") && err.contains("mv "), "{err}");
    assert!(dir.join("spool/support").exists(), "left as it was");
}

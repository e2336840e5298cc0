//! SIGHUP: the config's reloadable parts (admin tokens, log level, state file) change live;
//! a broken file changes nothing.

use crate::support::*;
use std::time::{Duration, Instant};

fn hup(s: &TestServer) {
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &s.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

/// Polls the regions endpoint with `token` until it answers `want` (bounded).
fn wait_status(s: &TestServer, token: &str, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = s.admin("GET", "/api/v1/regions", token, None).status;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "token still answers {got}, expected {want}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sighup_swaps_admin_tokens_and_rejects_a_broken_config() {
    let mut s = TestServer::start(Options::default());
    wait_status(&s, ADMIN_TOKEN, 200);
    let original = std::fs::read_to_string(&s.config).unwrap();

    // a broken file: the running config stays
    std::fs::write(&s.config, "[server\nbroken").unwrap();
    hup(&s);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s
        .logs()
        .iter()
        .any(|l| l.contains("SIGHUP: config rejected"))
    {
        assert!(Instant::now() < deadline, "no rejection logged");
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_status(&s, ADMIN_TOKEN, 200);

    // a new token for org-a replaces the old one
    let rotated = original.replace(&sha256_hex(ADMIN_TOKEN), &sha256_hex("rotated-admin-token"));
    std::fs::write(&s.config, rotated).unwrap();
    hup(&s);
    wait_status(&s, "rotated-admin-token", 200);
    wait_status(&s, ADMIN_TOKEN, 401);
    assert!(s
        .logs()
        .iter()
        .any(|l| l.contains("SIGHUP: config reloaded")));
    assert!(s.metric(r#"sms_ingress_config_reloads_total{result="rejected"}"#) >= 1.0);
}

#[test]
fn sighup_reopens_the_audit_log_after_logrotate_moved_it() {
    let mut s = TestServer::start(Options::default());
    let audit = s.dir.join("audit.log");
    let create = |s: &TestServer, name: &str, sid: &str| {
        let r = s.admin(
            "POST",
            "/api/v1/integrations",
            ADMIN_TOKEN,
            Some(&serde_json::json!({"name": name, "account_sid": sid, "auth_token": "t"})),
        );
        assert_eq!(r.status, 201, "{}", r.text());
    };
    create(&s, "before", &format!("AC{}", "1".repeat(32)));
    let moved = s.dir.join("audit.log.moved");
    std::fs::rename(&audit, &moved).unwrap();
    hup(&s);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.logs().iter().any(|l| l.contains("audit log reopened")) {
        assert!(Instant::now() < deadline, "audit log not reopened");
        std::thread::sleep(Duration::from_millis(50));
    }
    create(&s, "after", &format!("AC{}", "2".repeat(32)));
    let old = std::fs::read_to_string(&moved).unwrap();
    let new = std::fs::read_to_string(&audit).unwrap();
    assert_eq!(old.lines().count(), 1, "{old}");
    assert_eq!(new.lines().count(), 1, "{new}");
    assert!(new.contains("integration.create"), "{new}");
}

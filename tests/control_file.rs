//! The control plane end to end on the real binary: external edits of the watched state
//! file (accepted whole or rejected whole), Auth Token rotation, and the audit log.

use crate::support::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

const TOKEN: &str = "twilio-primary-token-0001";
const NEXT: &str = "twilio-next-token-0002";
const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const OURS: &str = "+14155550100";
const SECOND: &str = "+14155550101";
const THIRD: &str = "+14155550102";
const CUSTOMER: &str = "+14155559999";

/// A server with one integration of org-a (primary token `TOKEN`) and `OURS` on queue "support".
fn server() -> (TestServer, String) {
    let s = TestServer::start(Options::default());
    let number = json!({"sender_id": OURS, "type": "local", "country": "US", "queue": "support"});
    let id = setup_number(&s, ACCOUNT, TOKEN, number);
    (s, id)
}

/// Polls `f` every 50 ms for up to 5 s.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

/// The control-plane counter for one source and result (label order independent).
fn updates(s: &TestServer, source: &str, result: &str) -> f64 {
    let (src, res) = (
        format!("source=\"{source}\""),
        format!("result=\"{result}\""),
    );
    s.metrics()
        .lines()
        .find(|l| {
            l.starts_with("sms_ingress_control_updates_total{")
                && l.contains(&src)
                && l.contains(&res)
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn state_path(s: &TestServer) -> std::path::PathBuf {
    s.dir.join("state.json")
}

fn read_state(s: &TestServer) -> Value {
    serde_json::from_slice(&std::fs::read(state_path(s)).unwrap()).unwrap()
}

/// Replaces the state file the way editors and config management do: temp file, rename.
fn replace_file(path: &Path, bytes: &[u8]) {
    let tmp = path.with_file_name("state.json.edit");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The current file with one more number of the same integration.
fn with_number(s: &TestServer, sender_id: &str) -> Value {
    let mut state = read_state(s);
    let mut n = state["numbers"][0].clone();
    n["sender_id"] = json!(sender_id);
    state["numbers"].as_array_mut().unwrap().push(n);
    state
}

/// Sends a signed inbound message to `to`; returns the status.
fn inbound(s: &TestServer, to: &str, sid: &str, token: &str) -> u16 {
    let body = inbound_body(to, CUSTOMER, ACCOUNT, sid, "hi");
    s.post_signed("mo", &body, token).status
}

fn spooled_for(s: &TestServer, number: &str) -> usize {
    s.spool_tail("support")
        .iter()
        .filter(|r| r["number"] == number)
        .count()
}

/// The `state.json.rejected.*` copies of refused edits.
fn kept_edits(s: &TestServer) -> Vec<std::path::PathBuf> {
    let mut kept: Vec<_> = std::fs::read_dir(&s.dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains("state.json.rejected."))
        .collect();
    kept.sort();
    kept
}

fn patch(s: &TestServer, id: &str, body: Value) -> Response {
    let path = format!("/api/v1/integrations/{id}");
    s.admin("PATCH", &path, ADMIN_TOKEN, Some(&body))
}

#[test]
fn valid_external_edits_go_live_by_rename_and_in_place() {
    let (s, _) = server();
    assert_eq!(updates(&s, "admin", "accepted"), 2.0);

    let edited = with_number(&s, SECOND);
    replace_file(&state_path(&s), edited.to_string().as_bytes());
    eventually("the renamed edit to be accepted", || {
        updates(&s, "file", "accepted") == 1.0
    });
    assert_eq!(
        inbound(&s, SECOND, "SM10000000000000000000000000000001", TOKEN),
        200
    );
    assert_eq!(spooled_for(&s, SECOND), 1);

    let edited = with_number(&s, THIRD);
    std::fs::write(state_path(&s), serde_json::to_vec_pretty(&edited).unwrap()).unwrap();
    eventually("the in-place edit to be accepted", || {
        updates(&s, "file", "accepted") == 2.0
    });
    assert_eq!(
        inbound(&s, THIRD, "SM10000000000000000000000000000002", TOKEN),
        200
    );
    assert_eq!(spooled_for(&s, THIRD), 1);
    assert_eq!(
        inbound(&s, OURS, "SM10000000000000000000000000000003", TOKEN),
        200
    );
    assert_eq!(spooled_for(&s, OURS), 1);

    // The store's own writes are never taken for external edits.
    assert_eq!(updates(&s, "file", "rejected"), 0.0);
    assert_eq!(updates(&s, "file", "accepted"), 2.0);
    assert_eq!(s.metric("sms_ingress_control_file_reload_success"), 1.0);
}

#[test]
fn broken_edits_are_rejected_whole_and_the_old_snapshot_serves() {
    let (mut s, id) = server();
    let good = read_state(&s);
    let mut duplicate = with_number(&s, OURS);
    duplicate["numbers"][1]["queue"] = json!("elsewhere");
    let mut bad_sid = good.clone();
    bad_sid["integrations"][0]["account_sid"] = json!("AC-not-a-sid");
    let broken: [(&str, Vec<u8>, &str); 3] = [
        ("bad JSON", b"{ \"version\": 3, ".to_vec(), "not valid JSON"),
        (
            "duplicate number",
            duplicate.to_string().into_bytes(),
            "appears twice",
        ),
        (
            "bad account SID",
            bad_sid.to_string().into_bytes(),
            "account_sid",
        ),
    ];
    for (i, (what, bytes, reason)) in broken.iter().enumerate() {
        replace_file(&state_path(&s), bytes);
        let want = (i + 1) as f64;
        eventually(what, || updates(&s, "file", "rejected") == want);
        eventually("the rejection's log line", || {
            s.logs()
                .iter()
                .any(|l| l.contains("state file edit rejected") && l.contains(reason))
        });
        assert_eq!(s.metric("sms_ingress_control_file_reload_success"), 0.0);
        let sid = format!("SM2000000000000000000000000000000{i}");
        assert_eq!(inbound(&s, OURS, &sid, TOKEN), 200, "{what}");
        assert_eq!(spooled_for(&s, OURS), i + 1, "{what}");
        // Kept aside, and the file put back.
        assert_eq!(kept_edits(&s).len(), i + 1, "{what}");
        assert!(kept_edits(&s)
            .iter()
            .any(|k| std::fs::read(k).unwrap() == *bytes));
        assert_eq!(
            read_state(&s)["integrations"],
            good["integrations"],
            "{what}"
        );
    }
    assert_eq!(updates(&s, "file", "accepted"), 0.0);

    // An admin change still works and replaces the broken file with a valid one.
    let r = patch(&s, &id, json!({"name": "after the broken edits"}));
    assert_eq!(r.status, 200, "{}", r.text());
    let state = sms_ingress::model::state::State::load(&state_path(&s)).unwrap();
    assert_eq!(state.integrations[0].name, "after the broken edits");
    assert_eq!(state.integrations[0].account_sid, ACCOUNT);
    assert_eq!(state.numbers.len(), 1);
    assert_eq!(
        inbound(&s, OURS, "SM30000000000000000000000000000001", TOKEN),
        200
    );
    assert_eq!(spooled_for(&s, OURS), 4);
}

#[test]
fn token_rotation_accepts_both_until_promoted() {
    let (s, id) = server();
    let r = patch(&s, &id, json!({"next_auth_token": NEXT}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["has_next_auth_token"], true);
    assert_eq!(
        inbound(&s, OURS, "SM40000000000000000000000000000001", TOKEN),
        200
    );
    assert_eq!(
        inbound(&s, OURS, "SM40000000000000000000000000000002", NEXT),
        200
    );
    assert_eq!(spooled_for(&s, OURS), 2);

    let r = patch(&s, &id, json!({"promote_next_auth_token": true}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["has_next_auth_token"], false);
    let view = s.admin(
        "GET",
        &format!("/api/v1/integrations/{id}"),
        ADMIN_TOKEN,
        None,
    );
    assert_eq!(view.json()["has_next_auth_token"], false);
    assert_eq!(
        inbound(&s, OURS, "SM40000000000000000000000000000003", NEXT),
        200
    );
    assert_eq!(
        inbound(&s, OURS, "SM40000000000000000000000000000004", TOKEN),
        403
    );

    // Nothing left to promote; a promotion cannot be mixed with setting tokens.
    let r = patch(&s, &id, json!({"promote_next_auth_token": true}));
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (422, json!("invalid_request"))
    );
    let r = patch(
        &s,
        &id,
        json!({"promote_next_auth_token": true, "next_auth_token": TOKEN}),
    );
    assert_eq!(r.status, 422, "{}", r.text());

    // A candidate set then cleared: only the primary (now NEXT) verifies.
    assert_eq!(
        patch(&s, &id, json!({"next_auth_token": TOKEN})).status,
        200
    );
    assert_eq!(
        inbound(&s, OURS, "SM40000000000000000000000000000005", TOKEN),
        200
    );
    let r = patch(&s, &id, json!({"next_auth_token": null}));
    assert_eq!(r.json()["has_next_auth_token"], false);
    assert_eq!(
        inbound(&s, OURS, "SM40000000000000000000000000000006", TOKEN),
        403
    );
    assert_eq!(
        inbound(&s, OURS, "SM40000000000000000000000000000007", NEXT),
        200
    );

    // The promoted token survives a restart (sealed for this integration).
    let s = s.restart();
    assert_eq!(
        inbound(&s, OURS, "SM40000000000000000000000000000008", NEXT),
        200
    );
    let file = std::fs::read_to_string(state_path(&s)).unwrap();
    assert!(!file.contains(TOKEN) && !file.contains(NEXT));
}

#[test]
fn audit_log_has_one_line_per_change_and_no_token() {
    let (s, id) = server(); // integration.create + number.import
    assert_eq!(patch(&s, &id, json!({"next_auth_token": NEXT})).status, 200);
    assert_eq!(
        patch(&s, &id, json!({"promote_next_auth_token": true})).status,
        200
    );
    assert_eq!(
        patch(&s, &id, json!({"promote_next_auth_token": true})).status,
        422
    );
    // A token in a field of the wrong type: rejected, and its value is not echoed.
    let r = patch(&s, &id, json!({"promote_next_auth_token": TOKEN}));
    assert_eq!(r.status, 400, "{}", r.text());
    let r = s.admin("DELETE", "/api/v1/numbers/+14155550199", ADMIN_TOKEN, None);
    assert_eq!(r.status, 404);
    replace_file(
        &state_path(&s),
        with_number(&s, SECOND).to_string().as_bytes(),
    );
    eventually("the file edit", || updates(&s, "file", "accepted") == 1.0);

    let text = std::fs::read_to_string(s.dir.join("audit.log")).unwrap();
    assert!(!text.contains(TOKEN) && !text.contains(NEXT), "{text}");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary: Vec<(String, String, String)> = lines
        .iter()
        .map(|l| {
            let f = |k: &str| l[k].as_str().unwrap_or_default().to_string();
            (f("source"), f("action"), f("result"))
        })
        .collect();
    let want = [
        ("admin", "integration.create", "accepted"),
        ("admin", "number.import", "accepted"),
        ("admin", "integration.rotate.next_token", "accepted"),
        ("admin", "integration.rotate.promote", "accepted"),
        ("admin", "integration.rotate.promote", "rejected"),
        ("admin", "integration.update", "rejected"),
        ("admin", "number.delete", "rejected"),
        ("file", "state.reload", "accepted"),
    ];
    let want: Vec<(String, String, String)> = want
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    assert_eq!(summary, want, "{text}");

    for l in &lines[..7] {
        assert_eq!(l["org"], "org-a");
        assert_eq!(l["token_id"], "a-admin");
        assert!(l["at"].as_str().unwrap().ends_with('Z'));
        assert!(l["state_version"].is_u64());
    }
    assert_eq!(lines[0]["target"], id.as_str());
    assert_eq!(lines[1]["target"], OURS);
    assert_eq!(lines[2]["target"], id.as_str());
    let versions: Vec<u64> = lines[..4]
        .iter()
        .map(|l| l["state_version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2, 3, 4]);
    assert_eq!(lines[4]["code"], "invalid_request");
    assert_eq!(lines[4]["state_version"], 4);
    assert_eq!(lines[5]["code"], "invalid_request");
    assert_eq!(lines[6]["code"], "not_found");
    assert!(lines[..4].iter().all(|l| l.get("code").is_none()));
    let file = &lines[7];
    assert!(file["org"].is_null() && file["token_id"].is_null());
    assert_eq!(file["state_version"], 5);
    assert!(file["target"].as_str().unwrap().ends_with("state.json"));
}

/// Imports `count` more numbers of integration `id` in one bulk request.
fn bulk_import(s: &TestServer, id: &str, count: usize) {
    let numbers: Vec<Value> = (0..count)
        .map(|i| {
            json!({"sender_id": format!("+1415600{i:04}"), "type": "local", "country": "US",
                   "integration_id": id, "queue": "support"})
        })
        .collect();
    let r = s.admin(
        "POST",
        "/api/v1/numbers/bulk",
        ADMIN_TOKEN,
        Some(&json!({ "numbers": numbers })),
    );
    assert_eq!(r.status, 201, "{}", r.text());
}

#[test]
fn a_large_inventory_journals_small_changes_that_survive_kill9_and_fold_in() {
    let (s, id) = server();
    bulk_import(&s, &id, 10_000);
    let file_before = std::fs::read(state_path(&s)).unwrap();
    let journal = s.dir.join("state.json.journal");

    // A rotation at 10,001 numbers: journaled, live at once, the big file untouched.
    let r = patch(&s, &id, json!({"next_auth_token": NEXT}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["number_count"], 10_001);
    assert_eq!(std::fs::read(state_path(&s)).unwrap(), file_before);
    let journaled = std::fs::read_to_string(&journal).unwrap();
    assert!(journaled.contains("next_auth_token") && !journaled.contains(NEXT));
    assert_eq!(
        inbound(&s, OURS, "SM50000000000000000000000000000001", NEXT),
        200
    );

    // One number deleted, one imported: journaled as well.
    let gone = "/api/v1/numbers/%2B14156000005";
    assert_eq!(s.admin("DELETE", gone, ADMIN_TOKEN, None).status, 204);
    let new = json!({"sender_id": "+14157000001", "type": "local", "country": "US",
                     "integration_id": id, "queue": "support"});
    let r = s.admin("POST", "/api/v1/numbers", ADMIN_TOKEN, Some(&new));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(std::fs::read(state_path(&s)).unwrap(), file_before);
    let listed = |s: &TestServer, sender_id: &str| {
        let r = s.admin("GET", "/api/v1/numbers", ADMIN_TOKEN, None);
        let list = r.json();
        list.as_array()
            .unwrap()
            .iter()
            .any(|n| n["sender_id"] == sender_id)
    };

    // kill -9 and restart: the journal is replayed on the file.
    let mut s = s;
    s.kill9();
    let s = s.restart();
    assert_eq!(
        inbound(&s, OURS, "SM50000000000000000000000000000002", NEXT),
        200
    );
    assert!(!listed(&s, "+14156000005") && listed(&s, "+14157000001"));
    assert!(listed(&s, "+14156000006"));

    // An edit of the file while the rotation is only journaled would drop it: rejected,
    // kept aside, and the file put back at once with the journaled changes written in.
    let rejected = updates(&s, "file", "rejected");
    let mut edited = read_state(&s);
    edited["integrations"][0]["name"] = json!("edited over the journal");
    replace_file(&state_path(&s), edited.to_string().as_bytes());
    eventually("the edit to be rejected", || {
        updates(&s, "file", "rejected") > rejected
    });
    let kept = kept_edits(&s);
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(std::fs::read_to_string(&kept[0])
        .unwrap()
        .contains("edited over the journal"));
    let state = read_state(&s);
    assert!(state["integrations"][0]["next_auth_token"].is_object());
    assert_eq!(state["integrations"][0]["name"], "test");
    assert_eq!(std::fs::metadata(&journal).unwrap().len(), 0);
    assert_eq!(
        inbound(&s, OURS, "SM50000000000000000000000000000003", NEXT),
        200
    );

    // kill -9 right after the rejection: the start is clean and serves the journaled state.
    let mut s = s;
    s.kill9();
    let s = s.restart();
    assert_eq!(
        inbound(&s, OURS, "SM50000000000000000000000000000004", NEXT),
        200
    );
    assert!(!listed(&s, "+14156000005") && listed(&s, "+14157000001"));

    // Ten seconds after the last change the journal is written into the file.
    let gone = "/api/v1/numbers/%2B14156000006";
    assert_eq!(s.admin("DELETE", gone, ADMIN_TOKEN, None).status, 204);
    assert!(std::fs::metadata(&journal).unwrap().len() > 0, "journaled");
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.metric("sms_ingress_control_journal_folds_total") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the journal was not folded in 30 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let state = read_state(&s);
    let numbers = state["numbers"].as_array().unwrap();
    assert_eq!(numbers.len(), 10_000);
    assert!(numbers.iter().any(|n| n["sender_id"] == "+14157000001"));
    assert!(!numbers.iter().any(|n| n["sender_id"] == "+14156000006"));
    assert_eq!(std::fs::metadata(&journal).unwrap().len(), 0);
    let s = s.restart();
    assert_eq!(
        inbound(&s, OURS, "SM50000000000000000000000000000005", NEXT),
        200
    );
}

#[test]
fn a_half_written_in_place_edit_is_kept_whole_aside_and_never_lost() {
    use std::io::Write;
    let (s, id) = server();
    let mut edited = read_state(&s);
    edited["integrations"][0]["name"] = json!("edited in place");
    let text = serde_json::to_string_pretty(&edited).unwrap();
    let (first, rest) = text.split_at(text.len() / 2);
    // An editor writes half the file in place, then stalls past the watcher's debounce.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(state_path(&s))
        .unwrap();
    f.write_all(first.as_bytes()).unwrap();
    f.flush().unwrap();
    eventually("the half-written file to be rejected", || {
        updates(&s, "file", "rejected") >= 1.0
    });
    // An admin change meanwhile lands on the served state, not on the half file.
    let r = patch(&s, &id, json!({"notes": "admin change"}));
    assert_eq!(r.status, 200, "{}", r.text());
    // The editor finishes: its writes go into the kept copy, which ends up whole.
    f.write_all(rest.as_bytes()).unwrap();
    drop(f);
    let kept = kept_edits(&s);
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(std::fs::read_to_string(&kept[0]).unwrap(), text);
    let mut s = s;
    assert!(s
        .logs()
        .iter()
        .any(|l| l.contains("kept aside") && l.contains(&*kept[0].to_string_lossy())));
    let state = read_state(&s);
    assert_eq!(state["integrations"][0]["name"], "test");
    assert_eq!(state["integrations"][0]["notes"], "admin change");
    // The operator applies the kept edit on purpose: accepted.
    let mut fixed: Value = serde_json::from_str(&text).unwrap();
    fixed["integrations"][0]["notes"] = json!("admin change");
    let accepted = updates(&s, "file", "accepted");
    replace_file(&state_path(&s), fixed.to_string().as_bytes());
    eventually("the fixed edit to be accepted", || {
        updates(&s, "file", "accepted") > accepted
    });
    assert_eq!(
        s.admin(
            "GET",
            &format!("/api/v1/integrations/{id}"),
            ADMIN_TOKEN,
            None
        )
        .json()["name"],
        "edited in place"
    );
}

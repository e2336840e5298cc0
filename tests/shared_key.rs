//! SharedKey signatures (SPEC 2 and 4; Twilio's Webhooks configuration API): an
//! integration's `signing_keys`, the settings header naming one, HMAC-SHA256 over the same
//! string, each refusal its own reason, and the secrets never shown or stored in clear.

use crate::support::*;
use serde_json::json;
use sms_ingress::form::Form;
use sms_ingress::signature::compute_shared;

const TOKEN: &str = "twilio-auth-token-sk";
const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const OURS: &str = "+14155550100";
const SECRET_1: &str = "shared-secret-one-0123456789";
const SECRET_2: &str = "shared-secret-two-0123456789";
const SETTINGS: &str = "X-Twilio-Webhooks-Signature-Settings";

fn body(sid: &str) -> String {
    inbound_body(
        OURS,
        "+14155559999",
        ACCOUNT,
        sid,
        "signed with a shared key",
    )
}

/// Posts `body` signed with `secret` (HMAC-SHA256) and the settings header `settings`.
pub(crate) fn post_shared(
    s: &TestServer,
    body: &str,
    secret: &str,
    settings: Option<&str>,
) -> Response {
    let path = TestServer::webhook_path("mo");
    let form = Form::parse(body.as_bytes()).unwrap();
    let sig = compute_shared(&format!("{PUBLIC_URL}{path}"), &form, secret.as_bytes());
    let mut headers = vec![("X-Twilio-Signature", sig.as_str())];
    if let Some(v) = settings {
        headers.push((SETTINGS, v));
    }
    s.post(&path, body, &headers)
}

fn patch(s: &TestServer, id: &str, body: serde_json::Value) -> Response {
    s.admin(
        "PATCH",
        &format!("/api/v1/integrations/{id}"),
        ADMIN_TOKEN,
        Some(&body),
    )
}

/// An integration with the SharedKey `KS1` and our number on `support`; its id.
fn integration_with_key(s: &TestServer) -> String {
    let r = s.admin(
        "POST",
        "/api/v1/integrations",
        ADMIN_TOKEN,
        Some(
            &json!({"name": "sk", "account_sid": ACCOUNT, "auth_token": TOKEN,
                     "signing_keys": [{"id": "KS1", "secret": SECRET_1}]}),
        ),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["signing_keys"], json!([{"id": "KS1"}]));
    let id = r.json()["id"].as_str().unwrap().to_string();
    let n = json!({"sender_id": OURS, "type": "local", "country": "US", "queue": "support", "integration_id": id});
    let r = s.admin("POST", "/api/v1/numbers", ADMIN_TOKEN, Some(&n));
    assert_eq!(r.status, 201, "{}", r.text());
    id
}

#[test]
fn shared_key_signatures_verify_rotate_and_refuse_each_with_its_reason() {
    let mut s = TestServer::start(Options::default());
    let id = integration_with_key(&s);

    // Accepted and stored, with parameters in any order and spaces around them.
    let r = post_shared(
        &s,
        &body("SMsk1"),
        SECRET_1,
        Some(" algorithm=HMAC_SHA256 , key=KS1"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.spool_tail("org-a/support").len(), 1);

    // Rotation: a second key; both verify; a third is refused.
    let r = patch(
        &s,
        &id,
        json!({"signing_keys": {"add": [{"id": "KS2", "secret": SECRET_2}]}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["signing_keys"],
        json!([{"id": "KS1"}, {"id": "KS2"}])
    );
    let both = [
        ("SMsk2", SECRET_1, "key=KS1,algorithm=HMAC_SHA256"),
        ("SMsk3", SECRET_2, "key=KS2,algorithm=HMAC_SHA256"),
    ];
    for (sid, secret, settings) in both {
        assert_eq!(
            post_shared(&s, &body(sid), secret, Some(settings)).status,
            200,
            "{sid}"
        );
    }
    let r = patch(
        &s,
        &id,
        json!({"signing_keys": {"add": [{"id": "KS3", "secret": "x"}]}}),
    );
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (400, Some("invalid_request")),
        "{}",
        r.text()
    );
    assert!(r.text().contains("at most 2"), "{}", r.text());
    let r = patch(&s, &id, json!({"signing_keys": {"remove": ["KS1"]}}));
    assert_eq!(r.status, 200, "{}", r.text());

    let refusals = [
        // The removed key: unknown.
        (
            post_shared(
                &s,
                &body("SMsk4"),
                SECRET_1,
                Some("key=KS1,algorithm=HMAC_SHA256"),
            ),
            "signature_key_unknown",
        ),
        (
            post_shared(
                &s,
                &body("SMsk5"),
                SECRET_2,
                Some("key=KS2,algorithm=HMAC_SHA512"),
            ),
            "signature_algorithm_unsupported",
        ),
        // A SHA-256 signature without the header: checked as an Auth Token's SHA-1.
        (
            post_shared(&s, &body("SMsk6"), SECRET_2, None),
            "signature_invalid",
        ),
    ];
    for (r, reason) in refusals {
        assert_eq!((r.status, r.text()), (403, reason.to_string()));
    }
    // A SHA-1 Auth Token signature with the header: checked as the named key's SHA-256.
    let path = TestServer::webhook_path("mo");
    let sha1 = sign(&path, &body("SMsk7"), TOKEN);
    let r = s.post(
        &path,
        &body("SMsk7"),
        &[
            ("X-Twilio-Signature", sha1.as_str()),
            (SETTINGS, "key=KS2,algorithm=HMAC_SHA256"),
        ],
    );
    assert_eq!((r.status, r.text()), (403, "signature_invalid".to_string()));
    // Without the header the Auth Token still signs.
    assert_eq!(s.post_signed("mo", &body("SMsk8"), TOKEN).status, 200);
    assert_eq!(s.spool_tail("org-a/support").len(), 4);

    // The secrets are nowhere: API answers, the state file, the audit log, the logs.
    let listed = s
        .admin("GET", "/api/v1/integrations", ADMIN_TOKEN, None)
        .text();
    let state = std::fs::read_to_string(s.dir.join("state.json")).unwrap();
    let audit = std::fs::read_to_string(s.dir.join("audit.log")).unwrap();
    assert!(state.contains("\"signing_keys\"") && state.contains("KS2"));
    let logs = s.logs().join("\n");
    for secret in [SECRET_1, SECRET_2] {
        for (what, text) in [
            ("API", &listed),
            ("state file", &state),
            ("audit log", &audit),
            ("logs", &logs),
        ] {
            assert!(!text.contains(secret), "a signing secret in the {what}");
        }
    }
    // And they survive a restart (sealed in the state file).
    let s = s.restart();
    assert_eq!(
        post_shared(
            &s,
            &body("SMsk9"),
            SECRET_2,
            Some("key=KS2,algorithm=HMAC_SHA256")
        )
        .status,
        200
    );
}

#[test]
fn the_signature_tool_computes_and_verifies_shared_key_signatures() {
    use std::process::Command;
    let url = "https://user:pass@sms.test.example:8443/mo";
    let b = body("SMcli");
    // `sms-ingress signature <verb> --url URL --token SECRET_1 <rest>`, body on stdin.
    let run = |verb: &str, rest: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sms-ingress"));
        cmd.args(["signature", verb, "--url", url, "--token", SECRET_1])
            .args(rest)
            .env_remove("SMS_INGRESS_TWILIO_TOKEN");
        let out = output_with_stdin(&mut cmd, b.as_bytes());
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let form = Form::parse(b.as_bytes()).unwrap();
    let expected = compute_shared(url, &form, SECRET_1.as_bytes());
    let (code, out) = run("compute", &["--shared-key"]);
    assert_eq!((code, out.trim()), (Some(0), expected.as_str()));
    let (_, same) = run("compute", &["--algorithm", "HMAC_SHA256"]);
    assert_eq!(same.trim(), expected);
    // Signed over the URL without its port: verify says which form matched.
    let no_port = compute_shared(
        "https://user:pass@sms.test.example/mo",
        &form,
        SECRET_1.as_bytes(),
    );
    let (code, out) = run("verify", &["--shared-key", "--signature", &no_port]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("over https://user:pass@sms.test.example/mo"),
        "{out}"
    );
    // The SharedKey's signature is not an Auth Token's, and an unknown algorithm is refused.
    let (code, out) = run("verify", &["--signature", &expected]);
    assert_eq!(code, Some(1), "{out}");
    let (code, _) = run("compute", &["--algorithm", "MD5"]);
    assert_ne!(code, Some(0));
}

#[test]
fn signature_failures_show_what_was_verified_bounded_and_to_the_own_org_only() {
    let s = TestServer::start(Options::default());
    let id = integration_with_key(&s);
    let path = TestServer::webhook_path("mo");
    let failures_for = |token: &str| {
        let path = format!("/api/v1/integrations/{id}/signature-failures");
        s.admin("GET", &path, token, None)
    };
    let failures = || {
        let r = failures_for(ADMIN_TOKEN);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json().as_array().unwrap().clone()
    };
    assert!(failures().is_empty());
    // A forged Auth Token signature, then a SharedKey request naming an unknown key.
    let forged = sign(&path, &body("SMf1"), "not-the-token");
    assert_eq!(
        s.post(
            &path,
            &body("SMf1"),
            &[("X-Twilio-Signature", forged.as_str())]
        )
        .status,
        403
    );
    assert_eq!(
        post_shared(
            &s,
            &body("SMf2"),
            SECRET_1,
            Some("key=KS9,algorithm=HMAC_SHA256")
        )
        .status,
        403
    );
    let list = failures();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["reason"], "signature_key_unknown");
    assert_eq!(list[0]["key_named"], "KS9");
    assert_eq!(list[0]["algorithm_named"], "HMAC_SHA256");
    assert_eq!(list[1]["reason"], "signature_invalid");
    assert_eq!(list[1]["number"], OURS);
    assert_eq!(list[1]["keys_tried"], json!(["auth_token"]));
    assert_eq!(list[1]["url"], format!("{PUBLIC_URL}{path}"));
    assert_eq!(
        list[1]["urls_tried"],
        json!([
            format!("{PUBLIC_URL}{path}"),
            format!("{PUBLIC_URL}:443{path}")
        ])
    );
    assert_eq!(list[1]["account_sid_matched"], true);
    let text = serde_json::to_string(&list).unwrap();
    for secret in [TOKEN, SECRET_1, "signed with a shared key", forged.as_str()] {
        assert!(!text.contains(secret), "{secret} in the diagnostics");
    }
    // Bounded, newest first; another org sees a 404.
    for i in 0..25 {
        let b = body(&format!("SMf{}", 10 + i));
        assert_eq!(
            s.post(&path, &b, &[("X-Twilio-Signature", "AAAA")]).status,
            403
        );
    }
    assert_eq!(failures().len(), 20);
    let other = failures_for(OTHER_ORG_TOKEN);
    assert_eq!(other.status, 404, "{}", other.text());
}

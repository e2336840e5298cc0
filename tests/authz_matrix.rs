//! Authorization matrix of the admin API: every endpoint × every permission × own org and
//! another org, plus missing and wrong tokens, against the real binary.

use crate::support::*;
use serde_json::{json, Value};

const PERMS: [&str; 5] = [
    "integration:add",
    "integration:view",
    "integration:edit",
    "integration:delete",
    "sms_number:all",
];

fn token_for(perm: &str) -> String {
    format!("only-{}", perm.replace(':', "-"))
}

/// Extra `[[control.admin_tokens]]` tables: one org-a token per single permission.
fn single_permission_tokens() -> String {
    PERMS
        .iter()
        .map(|p| {
            format!(
                "\n[[control.admin_tokens]]\nid = \"{id}\"\norg = \"org-a\"\ntoken_sha256 = \"{h}\"\npermissions = [\"{p}\"]\n",
                id = token_for(p),
                h = sha256_hex(&token_for(p)),
            )
        })
        .collect()
}

/// One endpoint: method, path for a fixture, body, the permission it needs (None = any valid token).
struct Endpoint {
    name: &'static str,
    method: &'static str,
    path: fn(&Fixture) -> String,
    body: fn(&Fixture) -> Option<Value>,
    needs: Option<&'static str>,
    /// Whether it names one of org-a's objects (another org must get 404, or 422 for an import).
    targets_object: bool,
}

struct Fixture {
    integration: String,
    number: String,
}

fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint {
            name: "create integration",
            method: "POST",
            path: |_| "/api/v1/integrations".into(),
            body: |_| {
                Some(
                    json!({"name": "m", "account_sid": format!("AC{}", "c".repeat(32)), "auth_token": "t"}),
                )
            },
            needs: Some("integration:add"),
            targets_object: false,
        },
        Endpoint {
            name: "list integrations",
            method: "GET",
            path: |_| "/api/v1/integrations".into(),
            body: |_| None,
            needs: Some("integration:view"),
            targets_object: false,
        },
        Endpoint {
            name: "get integration",
            method: "GET",
            path: |f| format!("/api/v1/integrations/{}", f.integration),
            body: |_| None,
            needs: Some("integration:view"),
            targets_object: true,
        },
        Endpoint {
            name: "patch integration",
            method: "PATCH",
            path: |f| format!("/api/v1/integrations/{}", f.integration),
            body: |_| Some(json!({"notes": "changed"})),
            needs: Some("integration:edit"),
            targets_object: true,
        },
        Endpoint {
            name: "delete integration",
            method: "DELETE",
            path: |f| format!("/api/v1/integrations/{}", f.integration),
            body: |_| None,
            needs: Some("integration:delete"),
            targets_object: true,
        },
        Endpoint {
            name: "import number",
            method: "POST",
            path: |_| "/api/v1/numbers".into(),
            body: |f| {
                Some(
                    json!({"sender_id": f.number.replace("+1415555", "+1415666"), "type": "local", "country": "US", "integration_id": f.integration}),
                )
            },
            needs: Some("sms_number:all"),
            targets_object: true,
        },
        Endpoint {
            name: "list numbers",
            method: "GET",
            path: |_| "/api/v1/numbers".into(),
            body: |_| None,
            needs: Some("sms_number:all"),
            targets_object: false,
        },
        Endpoint {
            name: "delete number",
            method: "DELETE",
            path: |f| format!("/api/v1/numbers/{}", f.number.replace('+', "%2B")),
            body: |_| None,
            needs: Some("sms_number:all"),
            targets_object: true,
        },
        Endpoint {
            name: "replay dead letters",
            method: "POST",
            path: |_| "/api/v1/dead-letters/replay".into(),
            body: |f| Some(json!({"integration_id": f.integration})),
            needs: Some("integration:edit"),
            targets_object: true,
        },
        Endpoint {
            name: "regions",
            method: "GET",
            path: |_| "/api/v1/regions".into(),
            body: |_| None,
            needs: None,
            targets_object: false,
        },
    ]
}

fn fixture(s: &TestServer, n: usize) -> Fixture {
    let number = format!("+1415555{n:04}");
    let integration = setup_number(
        s,
        &format!("AC{}", "d".repeat(32)),
        "tok",
        json!({"sender_id": number, "type": "local", "country": "US", "queue": "q"}),
    );
    Fixture {
        integration,
        number,
    }
}

/// Both the integration and the number of a fixture still exist (seen by the all-permission token).
fn intact(s: &TestServer, f: &Fixture) -> bool {
    let i = s.admin(
        "GET",
        &format!("/api/v1/integrations/{}", f.integration),
        ADMIN_TOKEN,
        None,
    );
    let numbers = s.admin("GET", "/api/v1/numbers", ADMIN_TOKEN, None).json();
    let has_number = numbers
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["sender_id"] == f.number.as_str());
    i.status == 200 && has_number && i.json()["notes"] != "changed"
}

#[test]
fn every_endpoint_by_every_permission_and_org() {
    let s = TestServer::start(Options {
        extra: single_permission_tokens(),
        ..Options::default()
    });
    let mut n = 0;
    let mut failures = Vec::new();
    for e in endpoints() {
        // missing and wrong tokens: 401, nothing changes
        for token in ["", "not-a-token"] {
            n += 1;
            let f = fixture(&s, n);
            let r = s.admin(e.method, &(e.path)(&f), token, (e.body)(&f).as_ref());
            if r.status != 401 || !intact(&s, &f) {
                failures.push(format!(
                    "{} with token {token:?}: {} {}",
                    e.name,
                    r.status,
                    r.text()
                ));
            }
        }
        // each single permission of the same org
        for perm in PERMS {
            n += 1;
            let f = fixture(&s, n);
            let r = s.admin(
                e.method,
                &(e.path)(&f),
                &token_for(perm),
                (e.body)(&f).as_ref(),
            );
            let allowed = e.needs.is_none_or(|p| p == perm);
            let ok = if allowed {
                r.status < 400
            } else {
                r.status == 403 && r.json()["code"] == "forbidden" && intact(&s, &f)
            };
            if !ok {
                failures.push(format!(
                    "{} by {perm} (allowed={allowed}): {} {}",
                    e.name,
                    r.status,
                    r.text()
                ));
            }
        }
        // another org with every permission: org-a's objects are 404 and untouched; lists hide them
        n += 1;
        let f = fixture(&s, n);
        let r = s.admin(
            e.method,
            &(e.path)(&f),
            OTHER_ORG_TOKEN,
            (e.body)(&f).as_ref(),
        );
        // SPEC section 4: importing into another org's integration is `integration_missing`
        let hidden = if e.name == "import number" { 422 } else { 404 };
        let ok = if e.targets_object {
            r.status == hidden && intact(&s, &f)
        } else if e.method == "GET" && e.needs.is_some() {
            r.status == 200 && !r.text().contains(&f.integration) && !r.text().contains(&f.number)
        } else {
            r.status < 400 && intact(&s, &f)
        };
        if !ok {
            failures.push(format!("{} by org-b: {} {}", e.name, r.status, r.text()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} cells failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

//! Conformance with Twilio's official helper libraries: every signature test vector of
//! twilio-python, -node, -go, -java, -ruby, -php and -csharp (their unit tests, at the
//! commits recorded per vector in tests/fixtures/twilio_signature_vectors.json), run
//! through our verifier: it must judge each vector as the library that wrote it does
//! (positive ones, and the negative ones: wrong token, tampered params, bad bodySHA256).

use crate::support::enc;
use serde_json::Value;
use sms_ingress::form::Form;
use sms_ingress::signature::{body_sha256_matches, key, url_variants, verify};

fn vectors() -> Vec<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/twilio_signature_vectors.json"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["vectors"].as_array().unwrap().clone()
}

/// Whether our verifier accepts the vector.
fn accepted(v: &Value) -> bool {
    let url = v["url"].as_str().unwrap();
    let body: String = v["params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{}={}",
                enc(p[0].as_str().unwrap()),
                enc(p[1].as_str().unwrap())
            )
        })
        .collect::<Vec<_>>()
        .join("&");
    let form = Form::parse(body.as_bytes()).unwrap();
    if let Some(json) = v["body"].as_str() {
        if !body_sha256_matches(url, json.as_bytes()) {
            return false;
        }
    }
    let Ok(urls) = url_variants(url) else {
        return false;
    };
    let token = v["token"].as_str().unwrap();
    let sig = v["signature"].as_str().unwrap();
    verify(&urls, "", &form, &[key(token.as_bytes())], sig.as_bytes()).is_some()
}

#[test]
fn every_official_library_vector_is_judged_as_its_library_does() {
    let vectors = vectors();
    assert!(vectors.len() >= 100, "{} vectors", vectors.len());
    let mut wrong = Vec::new();
    for v in &vectors {
        let id = v["id"].as_str().unwrap();
        assert!(
            v["source"]["commit"]
                .as_str()
                .is_some_and(|c| c.len() == 40),
            "{id}"
        );
        let ours = accepted(v);
        let theirs = v["library_expects"].as_bool().unwrap();
        if ours != theirs {
            wrong.push(format!("{id} ours {ours} library {theirs}: {}", v["note"]));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {}:\n{}",
        wrong.len(),
        vectors.len(),
        wrong.join("\n")
    );
}

//! Signature canonicalisation: any URL and body, never a panic; a computed signature verifies.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sms_ingress::form::Form;
use sms_ingress::signature;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (url, body) = data.split_at(split);
    let Ok(url) = std::str::from_utf8(url) else { return };
    let body = body.get(1..).unwrap_or_default();
    let Ok(urls) = signature::url_variants(url) else { return };
    let Ok(form) = Form::parse(body) else { return };
    let key = signature::key(b"fuzz-token");
    let sig = signature::compute(&urls[0], &form, b"fuzz-token");
    assert_eq!(signature::verify(&urls, "", &form, &[key], sig.as_bytes()), Some(0));
    let _ = signature::verify(&urls, "", &form, &[signature::key(b"x")], body);
});

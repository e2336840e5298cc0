//! The form parser never panics, and what it accepts can be signed.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sms_ingress::form::Form;

fuzz_target!(|data: &[u8]| {
    if let Ok(form) = Form::parse(data) {
        let _ = form.get("To");
        let signed = sms_ingress::signature::signed_string("https://h/p", &form);
        assert!(signed.starts_with("https://h/p"));
        let _ = sms_ingress::signature::compute("https://h/p", &form, b"token");
    }
});

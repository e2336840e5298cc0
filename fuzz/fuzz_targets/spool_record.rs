//! The spool record decoder never panics, and what it decodes re-encodes to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sms_ingress::envelope::Envelope;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = Envelope::decode(data) {
        let mut out = Vec::new();
        env.encode(&mut out);
        assert_eq!(out, data);
        let _ = env.to_json(0);
    }
});

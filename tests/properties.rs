//! Property tests: form decoding, signing/verification symmetry, and spool framing round trips.

use bytes::Bytes;
use proptest::prelude::*;
use sms_ingress::envelope::{ComplianceAction, Envelope, Kind};
use sms_ingress::form::Form;
use sms_ingress::signature;
use sms_ingress::sink::spool::{SpoolReader, SpoolWriter};
use sms_ingress::sink::QueueSink;

/// Percent-encodes every byte outside the unreserved set, spaces as `+` (as Twilio does).
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn body_of(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(n, v)| format!("{}={}", encode(n), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(("[A-Za-z][A-Za-z0-9]{0,12}", any::<String>()), 0..12)
}

fn envelope() -> impl Strategy<Value = Envelope> {
    (
        (
            any::<bool>(),
            0u8..4,
            any::<i64>(),
            "[a-z0-9-]{1,12}",
            "[+0-9]{1,16}",
            any::<String>(),
        ),
        (
            any::<String>(),
            "SM[0-9a-f]{32}",
            proptest::option::of("[a-z]{1,12}"),
            proptest::option::of(any::<String>()),
        ),
        (
            any::<String>(),
            any::<String>(),
            prop::collection::vec(any::<u8>(), 0..2048),
        ),
    )
        .prop_map(
            |((status, c, at, org, number, from), (to, sid, st, idem), (sig, url, body))| {
                Envelope {
                    kind: if status { Kind::Status } else { Kind::Inbound },
                    received_at_ms: at,
                    org: org.as_str().into(),
                    integration_id: format!("int-{org}").as_str().into(),
                    queue: "q".into(),
                    number,
                    from,
                    to,
                    message_sid: sid,
                    message_status: st,
                    account_sid: "AC".into(),
                    compliance: [
                        None,
                        Some(ComplianceAction::Help),
                        Some(ComplianceAction::OptOut),
                        Some(ComplianceAction::ReOptIn),
                    ][c as usize],
                    idempotency_token: idem,
                    signature: sig,
                    signed_url: url,
                    body: Bytes::from(body),
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn form_decodes_what_was_encoded(pairs in pairs()) {
        let body = body_of(&pairs);
        let form = Form::parse(body.as_bytes()).unwrap();
        let got: Vec<(String, String)> = form.pairs().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        let mut want = pairs;
        want.sort();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn form_parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Form::parse(&bytes);
    }

    #[test]
    fn signature_verifies_exactly_what_was_signed(
        pairs in pairs(), token in "[A-Za-z0-9]{8,40}", path in "/[a-z0-9/]{0,30}", flip in any::<prop::sample::Index>()
    ) {
        let body = body_of(&pairs);
        let form = Form::parse(body.as_bytes()).unwrap();
        let bases = vec!["https://example.test".to_string(), "https://example.test:443".to_string()];
        let url = format!("{}{path}", bases[0]);
        let sig = signature::compute(&url, &form, token.as_bytes());
        let keys = [signature::key(token.as_bytes())];
        prop_assert_eq!(signature::verify(&bases, &path, &form, &keys, sig.as_bytes()), Some(0));
        // any change to the signed content is refused
        let mut tampered = body.clone().into_bytes();
        if !tampered.is_empty() {
            let i = flip.index(tampered.len());
            tampered[i] = if tampered[i] == b'Z' { b'Y' } else { b'Z' };
            if let Ok(t) = Form::parse(&tampered) {
                if signature::signed_string(&url, &t) != signature::signed_string(&url, &form) {
                    prop_assert_eq!(signature::verify(&bases, &path, &t, &keys, sig.as_bytes()), None);
                }
            }
        }
        let wrong = [signature::key(format!("{token}x").as_bytes())];
        prop_assert_eq!(signature::verify(&bases, &path, &form, &wrong, sig.as_bytes()), None);
    }

    /// Both schemes against a second computation: the string built by hand from the
    /// generated pairs (sorted by name, then value), MACed with ring's one-shot API.
    #[test]
    fn signatures_equal_an_independent_computation_for_both_algorithms(
        pairs in pairs(),
        secret in "[ -~]{1,40}",
        url in "https?://[a-z]{1,10}\\.test(:[0-9]{1,5})?(/[a-z0-9._~-]{0,12}){0,3}(\\?[a-z]{1,5}=[a-z0-9%]{0,8})?",
    ) {
        use base64::Engine as _;
        let body = body_of(&pairs);
        let form = Form::parse(body.as_bytes()).unwrap();
        let mut sorted = pairs.clone();
        sorted.sort();
        let mut signed = url.clone();
        for (n, v) in &sorted {
            signed.push_str(n);
            signed.push_str(v);
        }
        let by_hand = |alg| {
            let key = ring::hmac::Key::new(alg, secret.as_bytes());
            base64::engine::general_purpose::STANDARD.encode(ring::hmac::sign(&key, signed.as_bytes()))
        };
        prop_assert_eq!(signature::signed_string(&url, &form), signed.clone());
        prop_assert_eq!(
            signature::compute(&url, &form, secret.as_bytes()),
            by_hand(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY)
        );
        prop_assert_eq!(
            signature::compute_shared(&url, &form, secret.as_bytes()),
            by_hand(ring::hmac::HMAC_SHA256)
        );
    }

    #[test]
    fn envelope_codec_round_trips(env in envelope()) {
        let mut buf = Vec::new();
        env.encode(&mut buf);
        prop_assert_eq!(Envelope::decode(&buf).unwrap(), env);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn spool_frames_round_trip_across_segments(batches in prop::collection::vec(prop::collection::vec(envelope(), 1..6), 1..6)) {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SpoolWriter::open(dir.path(), "q", 4096).unwrap();
        for b in &batches {
            let refs: Vec<&Envelope> = b.iter().collect();
            w.write_batch(&refs).unwrap();
        }
        drop(w);
        let mut r = SpoolReader::open(dir.path(), "q").unwrap();
        let mut got = Vec::new();
        while let Some((_, env)) = r.next_record().unwrap() {
            got.push(env);
        }
        let want: Vec<Envelope> = batches.into_iter().flatten().collect();
        prop_assert_eq!(got, want);
    }
}

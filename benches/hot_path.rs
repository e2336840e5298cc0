//! Criterion micro-benchmarks of the webhook hot path, step by step: form parse, signature
//! verify, snapshot lookup (1k and 1M numbers) and build (1M), envelope encode, and the
//! spool's group commit (append + fdatasync, in a temporary directory). Not run in CI.
//!
//! `cargo bench --bench hot_path` (add `-- lookup` to run one group).

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sms_ingress::dispatch::{Dispatcher, SinkFactory};
use sms_ingress::envelope::Envelope;
use sms_ingress::form::Form;
use sms_ingress::inventory::Snapshot;
use sms_ingress::model::crypto::{MasterKey, Secret};
use sms_ingress::model::state::{Integration, Number, NumberStatus, NumberType, Orphans, State};
use sms_ingress::signature::{self, PublicUrl};
use sms_ingress::sink::spool::SpoolWriter;
use sms_ingress::sink::QueueSink;
use sms_ingress_testkit::{fixtures, NullSink};
use std::time::Duration;

const PUBLIC_URL: &str = "https://byosms.mypurecloud.com";
const PATH: &str = "/vendors/v1/twilio/a906d2848ad146028e8805a8bbaa24d3/mo";
const TOKEN: &[u8] = b"0123456789abcdef0123456789abcdef";
const SHARED_KEY: &[u8] = b"a-shared-key-of-the-webhooks-configuration-api";
const SETTINGS: &str = "key=key-1, algorithm=HMAC_SHA256";

/// A typical inbound SMS body (~700 bytes, UTF-8 text), as Twilio posts it.
fn inbound_body() -> String {
    let text = "Hello+there%21+My+order+%234711+has+not+arrived+yet%2C+can+you+call+me+back+tomorrow+morning%3F+Thanks+%F0%9F%99%8F+%E3%81%82%E3%82%8A%E3%81%8C%E3%81%A8%E3%81%86";
    format!(
        "ToCountry=US&ToState=CA&SmsMessageSid=SM0123456789abcdef0123456789abcdef&NumMedia=0&ToCity=SAN+FRANCISCO&FromZip=94105&SmsSid=SM0123456789abcdef0123456789abcdef&FromState=CA&SmsStatus=received&FromCity=SAN+FRANCISCO&Body={text}&FromCountry=US&To=%2B14152000000&MessagingServiceSid=MG0123456789abcdef0123456789abcdef&ToZip=94105&NumSegments=2&MessageSid=SM0123456789abcdef0123456789abcdef&AccountSid=AC0123456789abcdef0123456789abcdef&From=%2B16282000000&ApiVersion=2010-04-01"
    )
}

fn form_parse(c: &mut Criterion) {
    let body = inbound_body();
    let mut g = c.benchmark_group("form");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("parse_inbound", |b| {
        b.iter(|| Form::parse(black_box(body.as_bytes())).unwrap())
    });
    g.finish();
}

fn signature_verify(c: &mut Criterion) {
    let body = inbound_body();
    let form = Form::parse(body.as_bytes()).unwrap();
    let bases = PublicUrl::parse(PUBLIC_URL).unwrap();
    let sig = signature::compute(&format!("{PUBLIC_URL}{PATH}"), &form, TOKEN);
    // The service also tries the URL with ":443": the worst case is a match on the second base.
    let sig_443 = signature::compute(&format!("{PUBLIC_URL}:443{PATH}"), &form, TOKEN);
    let keys = [signature::key(TOKEN)];
    let mut g = c.benchmark_group("signature");
    g.bench_function("verify_first_base", |b| {
        b.iter(|| {
            signature::verify(bases.bases(), PATH, black_box(&form), &keys, sig.as_bytes()).unwrap()
        })
    });
    g.bench_function("verify_second_base", |b| {
        b.iter(|| {
            signature::verify(
                bases.bases(),
                PATH,
                black_box(&form),
                &keys,
                sig_443.as_bytes(),
            )
            .unwrap()
        })
    });
    // A SharedKey (SPEC 2): the settings header parsed, the key picked, one HMAC-SHA256.
    let shared = [signature::shared_key(SHARED_KEY)];
    let sig_shared = signature::compute_shared(&format!("{PUBLIC_URL}{PATH}"), &form, SHARED_KEY);
    g.bench_function("verify_shared_key", |b| {
        b.iter(|| {
            let settings = signature::SignatureSettings::parse(black_box(SETTINGS));
            assert!(settings.is_hmac_sha256() && settings.key == Some("key-1"));
            signature::verify(
                bases.bases(),
                PATH,
                black_box(&form),
                &shared,
                sig_shared.as_bytes(),
            )
            .unwrap()
        })
    });
    // A forged request against an integration in a token rotation: every base and key.
    let rotating = [
        signature::key(TOKEN),
        signature::key(b"the-next-auth-token"),
    ];
    let forged = signature::compute(&format!("{PUBLIC_URL}{PATH}"), &form, b"forged");
    g.bench_function("reject_forged_two_tokens", |b| {
        b.iter(|| {
            assert!(signature::verify(
                bases.bases(),
                PATH,
                black_box(&form),
                &rotating,
                forged.as_bytes()
            )
            .is_none())
        })
    });
    g.bench_function("parse_and_verify", |b| {
        b.iter(|| {
            let form = Form::parse(black_box(body.as_bytes())).unwrap();
            signature::verify(bases.bases(), PATH, &form, &keys, sig.as_bytes()).unwrap()
        })
    });
    g.finish();
}

/// A state of one integration and `n` numbers over 4 queues, its key and a dispatcher.
fn state(n: usize) -> (State, MasterKey, Dispatcher) {
    let mk = fixtures::master_key();
    let integration = Integration {
        auth_token: mk.seal(&Secret::new("tok"), "int-1").unwrap(),
        ..fixtures::integration("int-1", "org-a")
    };
    let numbers = (0..n)
        .map(|i| Number {
            sender_id: number(i).into(),
            kind: NumberType::Local,
            country: "US".into(),
            integration_id: "int-1".into(),
            queue: format!("q{}", i % 4).into(),
            status: NumberStatus::Active,
            compliance: None,
        })
        .collect();
    let state = State {
        version: 1,
        integrations: vec![integration],
        numbers,
    };
    let factory: SinkFactory = Box::new(|_| Ok(Box::new(NullSink)));
    (state, mk, Dispatcher::new(factory, 1024, 1024))
}

fn number(i: usize) -> String {
    format!("+1415{:07}", 2_000_000 + i)
}

fn snapshot(c: &mut Criterion) {
    let mut g = c.benchmark_group("snapshot");
    for n in [1_000, 1_000_000] {
        let (st, mk, d) = state(n);
        let snap = Snapshot::build(&st, &mk, &d).unwrap();
        // A fixed, scattered sequence of hits (an LCG over the numbers), and a miss.
        let probes: Vec<String> = (0..4096u64)
            .map(|i| number((i.wrapping_mul(2_654_435_761) % n as u64) as usize))
            .collect();
        let mut i = 0;
        g.bench_function(format!("lookup_hit_{n}"), |b| {
            b.iter(|| {
                i = (i + 1) % probes.len();
                snap.lookup(black_box(&probes[i])).is_some()
            })
        });
        g.bench_function(format!("lookup_miss_{n}"), |b| {
            b.iter(|| snap.lookup(black_box("+14159000001")).is_none())
        });
    }
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    let (st, mk, d) = state(1_000_000);
    g.bench_function("build_1000000", |b| {
        b.iter(|| Snapshot::build(black_box(&st), &mk, &d).unwrap())
    });
    // What the control plane does for a change that touches no number (the swap every
    // 100 ms of the SPEC's target): copy the state, edit an integration, validate the
    // change, build the next snapshot from the serving one.
    let serving = Snapshot::build(&st, &mk, &d).unwrap();
    let mut n = 0u64;
    g.sample_size(50).measurement_time(Duration::from_secs(5));
    g.bench_function("integration_change_1000000", |b| {
        b.iter(|| {
            n += 1;
            let mut next = st.clone();
            next.integrations[0].notes = format!("change {n}");
            next.validate_change(&st, Orphans::Refused).unwrap();
            Snapshot::build_after(black_box(&next), &mk, &d, Some(&serving)).unwrap()
        })
    });
    // The same for a change to one number: its shard is copied on write, the change
    // validated and compared with the serving version shard by shard (see
    // benches/inventory.rs for imports, deletes and status changes at three sizes).
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function("number_change_1000000", |b| {
        b.iter(|| {
            n += 1;
            let mut next = st.clone();
            let one = next.numbers.get(&number(500_000)).unwrap().clone();
            next.numbers.insert(Number {
                queue: format!("q{}", n % 4).into(),
                ..one
            });
            next.validate_change(&st, Orphans::Refused).unwrap();
            Snapshot::build_after(black_box(&next), &mk, &d, Some(&serving)).unwrap()
        })
    });
    g.finish();
}

/// An envelope of the bench's body, as the webhook builds it.
fn envelope() -> Envelope {
    Envelope {
        org: "org-a".into(),
        queue: "q0".into(),
        number: "+14152000000".into(),
        from: "+16282000000".into(),
        to: "+14152000000".into(),
        idempotency_token: Some("0123456789abcdef0123456789abcdef-1".into()),
        signature: "0/KCTR6DLpKmkAf8muzZqo1nDgQ=".into(),
        signed_url: format!("{PUBLIC_URL}{PATH}"),
        body: Bytes::from(inbound_body()),
        ..fixtures::envelope()
    }
}

fn envelope_encode(c: &mut Criterion) {
    let env = envelope();
    let mut buf = Vec::with_capacity(4096);
    c.bench_function("envelope/encode", |b| {
        b.iter(|| {
            buf.clear();
            black_box(&env).encode(&mut buf);
            buf.len()
        })
    });
}

fn spool_group_commit(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("spool");
    for batch in [1usize, 64] {
        let mut w = SpoolWriter::open(dir.path(), &format!("b{batch}"), 64 << 20).unwrap();
        let envs: Vec<Envelope> = (0..batch).map(|_| envelope()).collect();
        let refs: Vec<&Envelope> = envs.iter().collect();
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("append_sync_batch_{batch}"), |b| {
            b.iter_batched(
                || (),
                |_| w.write_batch(&refs).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    form_parse,
    signature_verify,
    snapshot,
    envelope_encode,
    spool_group_commit
);
criterion_main!(benches);

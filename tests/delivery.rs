//! Push delivery to routing (SPEC 3b) on the real binary, with the test kit's receiver on
//! loopback as routing: failed first attempts and timeouts, a routing outage, `kill -9`
//! during delivery, dead letters and their replay, retention, `max_queue_bytes`, pull
//! consumer groups, and an independent Standard Webhooks verifier (Python's library).

use crate::support::*;
use serde_json::{json, Value};
use sms_ingress_testkit::receiver::{new_secret, Receiver};
use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) const TOKEN: &str = "twilio-auth-token-1";
pub(super) const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
pub(super) const OURS: &str = "+14155550100";

/// Routing on loopback, served from its own runtime while the test runs.
pub(super) struct Routing {
    pub(super) rx: Arc<Receiver>,
    url: String,
    secret: String,
    _rt: tokio::runtime::Runtime,
}

impl Routing {
    pub(super) fn start() -> Routing {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let secret = new_secret();
        let rx = Receiver::new(&secret, None).unwrap();
        let addr = rt
            .block_on(rx.start("127.0.0.1:0".parse().unwrap()))
            .unwrap();
        Routing {
            rx,
            url: format!("http://{addr}/sms"),
            secret,
            _rt: rt,
        }
    }
}

/// Knobs of the route and the spool.
pub(super) struct Setup {
    pub(super) route: String,
    /// Keys added to the spool's `[sink]` section.
    pub(super) sink: String,
    /// A whole `[sink]` section instead (the NATS sink).
    pub(super) sink_section: Option<String>,
    /// Keys added to `[control]` (the KV store).
    pub(super) control: String,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            route: "timeout_ms = 400\nretry_initial_ms = 20\nretry_max_ms = 200\n".into(),
            sink: String::new(),
            sink_section: None,
            control: String::new(),
        }
    }
}

/// A server whose queue org-a/support is delivered to `routing`; one number on it.
pub(super) fn server(routing: &Routing, setup: Setup) -> TestServer {
    let dir = tempfile::tempdir().unwrap().keep();
    std::fs::write(dir.join("route.key"), format!("{}\n", routing.secret)).unwrap();
    let opts = Options {
        sink_toml: Some(setup.sink_section.unwrap_or(format!(
            "[sink]\nkind = \"spool\"\ndir = \"{d}/spool\"\n{extra}",
            d = dir.display(),
            extra = setup.sink
        ))),
        extra: format!(
            "[delivery]\ndir = \"{d}/delivery\"\n\n[[delivery.routes]]\nname = \"routing\"\nqueue = \"org-a/support\"\nurl = \"{url}\"\nsecret_file = \"{d}/route.key\"\n{route}",
            d = dir.display(),
            url = routing.url,
            route = setup.route,
        ),
        control_extra: setup.control,
        ..Options::default()
    };
    let config = write_config(&dir, &opts);
    let s = TestServer::start_in(dir, config);
    let number = json!({"sender_id": OURS, "type": "local", "country": "US", "queue": "support"});
    setup_number(&s, ACCOUNT, TOKEN, number);
    s
}

fn sid(n: usize) -> String {
    format!("SM{n:032}")
}

/// Customer of message `n`: three conversations.
fn customer(n: usize) -> String {
    format!("+1415555990{}", n % 3)
}

pub(super) fn send(s: &TestServer, n: usize) -> u16 {
    let body = inbound_body(
        OURS,
        &customer(n),
        ACCOUNT,
        &sid(n),
        &format!("message {n}"),
    );
    s.post_signed("mo", &body, TOKEN).status
}

/// Waits (bounded) until `done` holds.
pub(super) fn eventually(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The message SIDs delivered, per conversation, in the order routing accepted them.
fn by_conversation(routing: &Routing) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for d in routing.rx.delivered() {
        let from = d.body["from"].as_str().unwrap().to_string();
        out.entry(from)
            .or_default()
            .push(d.body["message_sid"].as_str().unwrap().to_string());
    }
    out
}

/// Every message of `sent` delivered in order per conversation (repeats allowed only
/// when `repeats`).
fn assert_delivered_in_order(routing: &Routing, sent: &[usize], repeats: bool) {
    let got = by_conversation(routing);
    for c in 0..3 {
        let want: Vec<String> = sent
            .iter()
            .filter(|n| *n % 3 == c)
            .map(|n| sid(*n))
            .collect();
        let mut seen = got.get(&customer(c)).cloned().unwrap_or_default();
        if repeats {
            seen.dedup(); // a redelivery repeats the record it resumed at, in place
            let mut kept = Vec::new();
            for s in seen {
                if !kept.contains(&s) {
                    kept.push(s);
                }
            }
            seen = kept;
        }
        assert_eq!(seen, want, "conversation {c}");
    }
}

#[test]
fn failed_first_attempts_and_timeouts_deliver_everything_once_in_order() {
    let routing = Routing::start();
    let b = &routing.rx.behaviour;
    b.fail_first_per_mille.store(300, Ordering::SeqCst);
    b.hold_first_per_mille.store(100, Ordering::SeqCst);
    b.hold_ms.store(800, Ordering::SeqCst);
    let s = server(&routing, Setup::default());
    let sent: Vec<usize> = (0..30).collect();
    for n in &sent {
        assert_eq!(send(&s, *n), 200);
    }
    eventually("every message delivered", Duration::from_secs(30), || {
        routing.rx.delivered().len() >= sent.len()
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(routing.rx.delivered().len(), sent.len(), "each once");
    assert_delivered_in_order(&routing, &sent, false);
    assert_eq!(routing.rx.bad_signatures(), 0);
    assert!(
        routing.rx.requests() > sent.len() as u64,
        "some first attempts failed"
    );
    // The body is the consumer's view: decoded params, offsets, the webhook-id stable.
    let d = &routing.rx.delivered()[0];
    assert_eq!(
        d.body["params"]["Body"].as_str().unwrap().split(' ').next(),
        Some("message")
    );
    assert!(d.body["next_offset"].as_u64().unwrap() > d.body["offset"].as_u64().unwrap());
    assert!(d.webhook_id.starts_with("msg_"));
    assert!(
        s.metric(r#"sms_ingress_delivery_attempts_total{route="routing",result="refused"}"#) >= 1.0
    );
    assert!(
        s.metric(r#"sms_ingress_delivery_attempts_total{route="routing",result="timeout"}"#) >= 1.0
    );
    assert_eq!(
        s.metric(r#"sms_ingress_delivery_attempts_total{route="routing",result="delivered"}"#),
        sent.len() as f64
    );
    eventually("lag back to zero", Duration::from_secs(5), || {
        s.metric(r#"sms_ingress_delivery_lag_records{route="routing"}"#) == 0.0
    });
}

#[test]
fn a_routing_outage_never_stops_ingestion_and_the_lag_drains() {
    let routing = Routing::start();
    let s = server(&routing, Setup::default());
    routing.rx.behaviour.down.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let mut sent = Vec::new();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(5) {
        assert_eq!(
            send(&s, n),
            200,
            "Twilio gets its 200 while routing is down"
        );
        sent.push(n);
        n += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let ready = s.request("GET", "/readyz", &[], b"");
    assert_eq!(ready.status, 200, "readiness is not delivery's");
    assert!(routing.rx.delivered().is_empty());
    // Metrics, `delivery status` and `spool tail` agree on what waits.
    eventually(
        "the lag metric counts every record",
        Duration::from_secs(3),
        || s.metric(r#"sms_ingress_delivery_lag_records{route="routing"}"#) == sent.len() as f64,
    );
    let out = s.cli(&["delivery", "status", "--json"]);
    let status: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(status["queues"][0]["lag_records"], sent.len(), "{status}");
    assert_eq!(status["queues"][0]["cursor"], 0, "{status}");
    let lines = s.spool_tail("org-a/support");
    assert_eq!(lines.len(), sent.len(), "spool tail shows them all");
    let end = lines.last().unwrap()["next_offset"].as_f64().unwrap();
    eventually(
        "spool_bytes covers every record",
        Duration::from_secs(8),
        || s.metric(r#"sms_ingress_spool_bytes{queue="org-a/support"}"#) >= end,
    );
    routing.rx.behaviour.down.store(false, Ordering::SeqCst);
    eventually("the lag drained", Duration::from_secs(20), || {
        routing.rx.delivered().len() >= sent.len()
    });
    assert_delivered_in_order(&routing, &sent, false);
    eventually("lag gauges at zero", Duration::from_secs(5), || {
        s.metric(r#"sms_ingress_delivery_lag_records{route="routing"}"#) == 0.0
            && s.metric(r#"sms_ingress_delivery_lag_seconds{route="routing"}"#) == 0.0
    });
    // The operator's view agrees: nothing behind.
    let out = s.cli(&["delivery", "status", "--json"]);
    let status: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(status["queues"][0]["queue"], "org-a/support");
    assert_eq!(status["queues"][0]["lag_records"], 0);
    assert_eq!(status["dead_letters"], 0);
    assert!(
        status["last_error"].as_str().unwrap().contains("503"),
        "{status}"
    );
}

#[test]
fn kill_9_during_delivery_leaves_nothing_acknowledged_undelivered() {
    let routing = Routing::start();
    routing.rx.behaviour.latency_ms.store(20, Ordering::SeqCst);
    let s = server(&routing, Setup::default());
    let sent: Vec<usize> = (0..40).collect();
    for n in &sent {
        assert_eq!(send(&s, *n), 200);
    }
    eventually("delivery under way", Duration::from_secs(10), || {
        routing.rx.delivered().len() >= 5
    });
    let s = s.restart(); // kill -9, then start on the same directory
    eventually(
        "every acknowledged message delivered",
        Duration::from_secs(30),
        || {
            let got = by_conversation(&routing);
            sent.iter()
                .all(|n| got.get(&customer(*n)).is_some_and(|l| l.contains(&sid(*n))))
        },
    );
    // At least once: a record may come again after the crash, with the same webhook-id,
    // and conversations stay in order.
    assert_delivered_in_order(&routing, &sent, true);
    let mut ids: HashMap<String, String> = HashMap::new();
    for d in routing.rx.delivered() {
        let sid = d.body["message_sid"].as_str().unwrap().to_string();
        let id = ids.entry(sid).or_insert_with(|| d.webhook_id.clone());
        assert_eq!(*id, d.webhook_id, "a redelivery keeps its webhook-id");
    }
    drop(s);
}

#[test]
fn after_max_attempts_records_are_dead_letters_and_replay_delivers_each_once() {
    let routing = Routing::start();
    let setup = Setup {
        route: "timeout_ms = 300\nretry_initial_ms = 10\nretry_max_ms = 20\nmax_attempts = 2\n"
            .into(),
        ..Setup::default()
    };
    let s = server(&routing, setup);
    routing.rx.behaviour.down.store(true, Ordering::SeqCst);
    for n in 0..4 {
        assert_eq!(send(&s, n), 200);
    }
    eventually("four dead letters", Duration::from_secs(10), || {
        s.metric(r#"sms_ingress_delivery_dead_letters_total{route="routing"}"#) == 4.0
    });
    let status = s.cli(&["delivery", "status"]);
    assert!(status.contains("dead letters: 4"), "{status}");
    // The conversation moved on: a new message is delivered once routing is back.
    routing.rx.behaviour.down.store(false, Ordering::SeqCst);
    assert_eq!(send(&s, 4), 200);
    eventually("the new message", Duration::from_secs(10), || {
        routing.rx.delivered().len() == 1
    });
    let report: Value =
        serde_json::from_str(s.cli(&["delivery", "replay", "--route", "routing"]).trim()).unwrap();
    assert_eq!(
        (report["delivered"].as_u64(), report["remaining"].as_u64()),
        (Some(4), Some(0))
    );
    assert_eq!(routing.rx.delivered().len(), 5);
    let again: Value =
        serde_json::from_str(s.cli(&["delivery", "replay", "--route", "routing"]).trim()).unwrap();
    assert_eq!(again["delivered"], 0, "each dead letter at most once");
    assert_eq!(routing.rx.delivered().len(), 5);
    assert!(s.cli(&["delivery", "status"]).contains("dead letters: 0"));
}

/// Segment files of org-a/support.
fn segments(s: &TestServer) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(s.dir.join("spool/org-a/support"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".log"))
        .collect();
    names.sort();
    names
}

#[test]
fn retention_deletes_delivered_segments_and_keeps_an_undelivered_one_however_old() {
    let routing = Routing::start();
    let setup = Setup {
        sink: "segment_bytes = 4096\nretain_secs = 0\n".into(),
        ..Setup::default()
    };
    let s = server(&routing, setup);
    routing.rx.behaviour.down.store(true, Ordering::SeqCst);
    for n in 0..30 {
        assert_eq!(send(&s, n), 200);
    }
    assert!(segments(&s).len() >= 4, "{:?}", segments(&s));
    // Undelivered: kept, however old (retain_secs = 0) and however many passes.
    std::thread::sleep(Duration::from_secs(6));
    let before = segments(&s);
    assert_eq!(before[0], format!("{:020}.log", 0), "nothing deleted");
    routing.rx.behaviour.down.store(false, Ordering::SeqCst);
    eventually("delivered", Duration::from_secs(20), || {
        routing.rx.delivered().len() == 30
    });
    eventually(
        "delivered segments deleted",
        Duration::from_secs(15),
        || segments(&s).len() == 1,
    );
    assert!(s.metric(r#"sms_ingress_spool_segments_deleted_total{queue="org-a/support"}"#) >= 3.0);
    // The segment being written stays, and new messages still flow.
    assert_eq!(send(&s, 30), 200);
    eventually("the next one", Duration::from_secs(10), || {
        routing.rx.delivered().len() == 31
    });
}

#[test]
fn a_queue_over_max_queue_bytes_answers_503_alone_until_routing_catches_up() {
    let routing = Routing::start();
    let setup = Setup {
        sink: "segment_bytes = 4096\nretain_secs = 0\nmax_queue_bytes = 12000\n".into(),
        ..Setup::default()
    };
    let s = server(&routing, setup);
    // Another queue of the org, not routed and not bounded by this one.
    let other =
        json!({"sender_id": "+14155550111", "type": "local", "country": "US", "queue": "other"});
    let id = s
        .admin("GET", "/api/v1/integrations", ADMIN_TOKEN, None)
        .json()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut other = other;
    other["integration_id"] = json!(id);
    assert_eq!(
        s.admin("POST", "/api/v1/numbers", ADMIN_TOKEN, Some(&other))
            .status,
        201
    );
    routing.rx.behaviour.down.store(true, Ordering::SeqCst);
    let mut n = 0;
    let full = loop {
        let status = send(&s, n);
        n += 1;
        if status == 503 {
            break n;
        }
        assert_eq!(status, 200);
        assert!(n < 200, "never refused");
    };
    assert!(s.metric(r#"sms_ingress_rejected_total{reason="queue_disk_full"}"#) >= 1.0);
    let body = inbound_body(
        "+14155550111",
        "+14155558888",
        ACCOUNT,
        &sid(9_999),
        "other queue",
    );
    assert_eq!(
        s.post_signed("mo", &body, TOKEN).status,
        200,
        "the other queue still takes messages"
    );
    assert_eq!(s.request("GET", "/readyz", &[], b"").status, 200);
    routing.rx.behaviour.down.store(false, Ordering::SeqCst);
    eventually(
        "the queue takes messages again",
        Duration::from_secs(30),
        || send(&s, 100_000 + n) == 200,
    );
    assert!(routing.rx.delivered().len() >= full - 1);
}

#[test]
fn consumer_groups_start_at_their_committed_offset() {
    let routing = Routing::start();
    let setup = Setup {
        sink: "[[sink.consumer_groups]]\nname = \"analytics\"\nqueue = \"org-a/support\"\n".into(),
        ..Setup::default()
    };
    let s = server(&routing, setup);
    for n in 0..3 {
        assert_eq!(send(&s, n), 200);
    }
    let tail = || {
        s.cli_json_lines(&[
            "spool",
            "tail",
            "--queue",
            "support",
            "--group",
            "analytics",
        ])
    };
    let commit = |offset: &str| {
        s.cli_output(&[
            "spool",
            "commit",
            "--queue",
            "support",
            "--group",
            "analytics",
            "--offset",
            offset,
        ])
    };
    let all = tail();
    assert_eq!(all.len(), 3, "nothing committed: from the start");
    let after_first = all[0]["next_offset"].as_u64().unwrap().to_string();
    succeeded(commit(&after_first), "spool commit");
    let rest = tail();
    assert_eq!(rest.len(), 2);
    assert_eq!(rest[0]["message_sid"], sid(1));
    // An offset inside a record is refused, and the commit stays as it was.
    let inside = (all[0]["next_offset"].as_u64().unwrap() + 3).to_string();
    let out = commit(&inside);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a record boundary"));
    assert_eq!(tail().len(), 2);
}

#[test]
fn deliveries_verify_with_the_standard_webhooks_python_library() {
    let check = Command::new("python3")
        .args(["-c", "import standardwebhooks"])
        .status();
    assert!(
        check.is_ok_and(|s| s.success()),
        "python3 with the standardwebhooks package is needed: pip install standardwebhooks (.ci/run installs it)"
    );
    let routing = Routing::start();
    let s = server(&routing, Setup::default());
    for n in 0..5 {
        assert_eq!(send(&s, n), 200);
    }
    eventually("delivered", Duration::from_secs(10), || {
        routing.rx.delivered().len() == 5
    });
    let cases: Vec<Value> = routing
        .rx
        .delivered()
        .iter()
        .map(|d| json!({"body": d.raw, "headers": {"webhook-id": d.webhook_id, "webhook-timestamp": d.timestamp, "webhook-signature": d.signature}}))
        .collect();
    let file = s.dir.join("deliveries.json");
    std::fs::write(&file, serde_json::to_vec(&cases).unwrap()).unwrap();
    let script = r#"
import json, sys
from standardwebhooks import Webhook
secret, path = sys.argv[1], sys.argv[2]
wh = Webhook(secret)
cases = json.load(open(path))
for c in cases:
    payload = wh.verify(c["body"], c["headers"])
    assert payload["message_sid"].startswith("SM"), payload
tampered = dict(cases[0]["headers"])
try:
    wh.verify(cases[0]["body"].replace("message", "massage"), tampered)
    sys.exit("a tampered body verified")
except Exception:
    pass
print(len(cases))
"#;
    let out = Command::new("python3")
        .args(["-c", script, &routing.secret])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "5");
}

#[test]
fn with_the_nats_sink_a_durable_consumer_delivers_and_acks_after_the_2xx() {
    let nats = crate::support::nats::Nats::start();
    let routing = Routing::start();
    routing
        .rx
        .behaviour
        .fail_first_per_mille
        .store(300, Ordering::SeqCst);
    let setup = Setup {
        sink_section: Some(format!(
            "[sink]\nkind = \"nats\"\n\n[sink.nats]\nservers = [\"{}\"]\nstream = \"SMSDELIVERY\"\n",
            nats.url()
        )),
        ..Setup::default()
    };
    let s = server(&routing, setup);
    let sent: Vec<usize> = (0..20).collect();
    for n in &sent {
        assert_eq!(send(&s, *n), 200);
    }
    eventually("every message delivered", Duration::from_secs(30), || {
        routing.rx.delivered().len() >= sent.len()
    });
    assert_delivered_in_order(&routing, &sent, false);
    assert_eq!(routing.rx.bad_signatures(), 0);
    eventually(
        "nothing pending or unacknowledged",
        Duration::from_secs(10),
        || s.metric(r#"sms_ingress_delivery_lag_records{route="routing"}"#) == 0.0,
    );
    // Acknowledged after the 2xx: a restart does not deliver them again.
    let s = s.restart();
    for n in 20..22 {
        assert_eq!(send(&s, n), 200);
    }
    eventually("the new ones", Duration::from_secs(20), || {
        routing.rx.delivered().len() >= 22
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        routing.rx.delivered().len(),
        22,
        "acknowledged ones were not redelivered"
    );
}

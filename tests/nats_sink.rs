//! End-to-end: the real binary with `sink.kind = "nats"` against a nats-server (JetStream)
//! that each test starts on its own loopback port and temporary store, and can stop and
//! restart on the same port and store. Envelopes are read back with an async-nats
//! ordered consumer and decoded.

use crate::support::nats::*;
use crate::support::*;
use serde_json::json;
use sms_ingress::envelope::Envelope;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "twilio-auth-token-1";
const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const OURS: &str = "+14155550100";
const CUSTOMER: &str = "+14155559999";
const STREAM: &str = "SMS";

/// The `[sink]` section of an sms-ingress publishing to `servers`.
fn nats_sink_toml(servers: &[String], replicas: usize) -> String {
    let servers: Vec<String> = servers.iter().map(|s| format!("{s:?}")).collect();
    format!(
        "[sink]\nkind = \"nats\"\nmax_batch = 64\n\n[sink.nats]\nservers = [{}]\nstream = \"{STREAM}\"\nreplicas = {replicas}\npublish_timeout_ms = 2000\nconnect_timeout_ms = 3000\n",
        servers.join(", ")
    )
}

fn nats_options(servers: &[String], replicas: usize) -> Options {
    Options {
        sink_toml: Some(nats_sink_toml(servers, replicas)),
        ..Options::default()
    }
}

/// An sms-ingress on the NATS sink with one number of org-a routed to queue "support".
fn server_on(servers: &[String], replicas: usize) -> TestServer {
    let s = TestServer::start(nats_options(servers, replicas));
    let number = json!({"sender_id": OURS, "type": "local", "country": "US", "queue": "support"});
    setup_number(&s, ACCOUNT, TOKEN, number);
    s
}

fn sid(n: usize) -> String {
    format!("SM{n:032x}")
}

fn inbound(sid: &str, text: &str) -> String {
    inbound_body(OURS, CUSTOMER, ACCOUNT, sid, text)
}

/// One stored message: subject, `Nats-Msg-Id`, `Sms-Org` and the decoded envelope.
#[derive(Debug)]
struct Stored {
    subject: String,
    msg_id: String,
    org: String,
    env: Envelope,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The stream's info, retried (bounded) while a cluster elects a new leader.
async fn stream_info(js: &async_nats::jetstream::Context) -> async_nats::jetstream::stream::Info {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = match js.get_stream(STREAM).await {
            Ok(mut stream) => stream.info().await.cloned().map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match info {
            Ok(info) => return info,
            Err(e) if Instant::now() < deadline => {
                eprintln!("stream info not available yet: {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("stream info: {e}"),
        }
    }
}

/// Every message of the stream, in order, through an ordered pull consumer; retried
/// whole (bounded) while a cluster is still electing leaders after a node died.
fn read_stream(url: &str) -> Vec<Stored> {
    runtime().block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(10))
            .build(client);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match read_stream_once(&js).await {
                Ok(stored) => return stored,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("stream not readable yet: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => panic!("reading the stream: {e}"),
            }
        }
    })
}

async fn read_stream_once(js: &async_nats::jetstream::Context) -> Result<Vec<Stored>, String> {
    use futures_util::StreamExt;
    let count = stream_info(js).await.state.messages as usize;
    if count == 0 {
        return Ok(Vec::new());
    }
    let stream = js.get_stream(STREAM).await.map_err(|e| e.to_string())?;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: "sms.>".into(),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    while out.len() < count {
        let next = tokio::time::timeout(Duration::from_secs(10), messages.next());
        let message = match next.await {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(None) => return Err("consumer ended".into()),
            Err(_) => return Err("no message within 10 s".into()),
        };
        let headers = message.headers.clone().unwrap_or_default();
        let text = |v: Option<&async_nats::HeaderValue>| {
            v.map(|v| v.as_str().to_string()).unwrap_or_default()
        };
        out.push(Stored {
            subject: message.subject.to_string(),
            // The standard name: a `&str` lookup would not find async-nats' typed key.
            msg_id: text(headers.get(async_nats::header::NATS_MESSAGE_ID)),
            org: text(headers.get("Sms-Org")),
            env: Envelope::decode(&message.payload).unwrap(),
        });
    }
    Ok(out)
}

/// The name of the node leading the stream (`n0`..`n2` in the cluster test).
fn stream_leader(url: &str) -> String {
    runtime().block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let info = stream_info(&js).await;
        info.cluster.and_then(|c| c.leader).expect("stream leader")
    })
}

/// `GET /readyz` status.
fn readyz(s: &TestServer) -> u16 {
    s.request("GET", "/readyz", &[], b"").status
}

/// Polls `f` every 100 ms until it holds or `limit` passes.
fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn accepted_webhooks_are_in_the_stream_exactly_once() {
    let nats = Nats::start();
    let s = server_on(&[nats.url()], 1);
    assert_eq!(readyz(&s), 200);
    let bodies: Vec<String> = (1..=3)
        .map(|n| inbound(&sid(n), &format!("hello {n} & ünïcode")))
        .collect();
    for body in &bodies {
        assert_eq!(s.post_signed("mo", body, TOKEN).status, 200);
    }
    let report = status_body(OURS, CUSTOMER, ACCOUNT, &sid(1), "delivered");
    assert_eq!(s.post_signed("status", &report, TOKEN).status, 200);
    // A retry of the first message: answered 200, not stored again.
    assert_eq!(s.post_signed("mo", &bodies[0], TOKEN).status, 200);

    let stored = read_stream(&nats.url());
    assert_eq!(stored.len(), 4, "{stored:#?}");
    for (n, rec) in stored.iter().take(3).enumerate() {
        assert_eq!(rec.subject, "sms.inbound.org-a.support");
        assert_eq!(rec.msg_id, format!("inbound:{ACCOUNT}:{}", sid(n + 1)));
        assert_eq!(rec.org, "org-a");
        assert_eq!(rec.env.body, bodies[n].as_bytes(), "original bytes kept");
        assert_eq!(rec.env.message_sid, sid(n + 1));
    }
    assert_eq!(stored[3].subject, "sms.status.org-a.support");
    assert_eq!(
        stored[3].msg_id,
        format!("status:{ACCOUNT}:{}:delivered", sid(1))
    );
    assert_eq!(stored[3].env.message_status.as_deref(), Some("delivered"));
    assert!(s
        .metrics()
        .contains(r#"sms_ingress_sink_batch_size_count{queue="org-a/support"}"#));

    // The operator's read path prints the same envelopes as NDJSON.
    let lines = s.cli_json_lines(&["nats", "tail", "--queue", "support"]);
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0]["offset"], 1);
    assert_eq!(lines[0]["body"], bodies[0].as_str());
    assert_eq!(lines[3]["kind"], "status");
}

#[test]
fn a_retry_sent_to_two_instances_is_stored_once() {
    let nats = Nats::start();
    let a = server_on(&[nats.url()], 1);
    let b = server_on(&[nats.url()], 1);
    let body = inbound(&sid(7), "same delivery, two instances");
    assert_eq!(a.post_signed("mo", &body, TOKEN).status, 200);
    assert_eq!(b.post_signed("mo", &body, TOKEN).status, 200);
    let stored = read_stream(&nats.url());
    assert_eq!(stored.len(), 1, "{stored:#?}");
    assert_eq!(stored[0].msg_id, format!("inbound:{ACCOUNT}:{}", sid(7)));
    assert_eq!(
        b.metric(r#"sms_ingress_nats_duplicate_acks_total{queue="org-a/support"}"#),
        1.0
    );
}

#[test]
fn incompatible_stream_fails_start_up_with_a_clear_message() {
    let nats = Nats::start();
    runtime().block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        js.create_stream(async_nats::jetstream::stream::Config {
            name: STREAM.into(),
            subjects: vec!["other.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    });
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &nats_options(&[nats.url()], 1));
    let (code, stderr) = run_serve(&config, Duration::from_secs(20));
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("stream SMS exists but cannot be used")
            && stderr.contains("do not cover \"sms.>\""),
        "{stderr}"
    );
}

#[test]
fn unreachable_nats_at_start_fails_start_up() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &nats_options(&[format!("nats://127.0.0.1:{port}")], 1),
    );
    let (code, stderr) = run_serve(&config, Duration::from_secs(20));
    assert_ne!(code, Some(0));
    assert!(stderr.contains("cannot connect to NATS"), "{stderr}");
}

/// Runs `serve` and expects it to exit within `limit`; returns exit code and stderr.
fn run_serve(config: &Path, limit: Duration) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sms-ingress"))
        .args(["serve", "--config"])
        .arg(config)
        .env_remove("SMS_INGRESS_MASTER_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let exited = wait_until(limit, || child.try_wait().unwrap().is_some());
    if !exited {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(exited, "serve did not exit; stderr:\n{stderr}");
    (status.code(), stderr)
}

/// Posts unique inbound webhooks until told to stop; records (sid, status) of each.
struct Poster {
    results: Arc<Mutex<Vec<(String, u16)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Poster {
    fn start(s: Arc<TestServer>, first: usize) -> Poster {
        let results = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, st) = (results.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut n = first;
            while !st.load(Ordering::SeqCst) && n < first + 100_000 {
                let id = sid(n);
                let status = s
                    .post_signed("mo", &inbound(&id, "under load"), TOKEN)
                    .status;
                r.lock().unwrap().push((id, status));
                n += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Poster {
            results,
            stop,
            thread: Some(thread),
        }
    }

    fn count(&self, status: u16) -> usize {
        let results = self.results.lock().unwrap();
        results.iter().filter(|(_, s)| *s == status).count()
    }

    fn finish(mut self) -> Vec<(String, u16)> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        std::mem::take(&mut *self.results.lock().unwrap())
    }
}

/// Every acknowledged webhook is stored, and nothing is stored twice.
fn assert_no_ack_lost(results: &[(String, u16)], stored: &[Stored]) {
    let mut ids: Vec<&str> = stored.iter().map(|r| r.env.message_sid.as_str()).collect();
    ids.sort_unstable();
    let before = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), before, "an envelope was stored twice");
    let lost: Vec<&str> = results
        .iter()
        .filter(|(sid, status)| *status == 200 && ids.binary_search(&sid.as_str()).is_err())
        .map(|(sid, _)| sid.as_str())
        .collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
    let other: Vec<_> = results
        .iter()
        .filter(|(_, s)| *s != 200 && *s != 503)
        .collect();
    assert!(other.is_empty(), "unexpected statuses: {other:?}");
}

#[test]
fn nats_outage_answers_503_then_recovers_without_losing_an_ack() {
    let mut nats = Nats::start();
    let s = Arc::new(server_on(&[nats.url()], 1));
    let poster = Poster::start(s.clone(), 1);
    assert!(wait_until(Duration::from_secs(30), || poster.count(200) >= 20));

    nats.stop();
    assert!(
        wait_until(Duration::from_secs(15), || readyz(&s) == 503),
        "/readyz stayed 200 while NATS was down"
    );
    assert!(
        wait_until(Duration::from_secs(15), || poster.count(503) >= 5),
        "no 503 while NATS was down"
    );
    let acked_before_restart = poster.count(200);

    nats.spawn();
    assert!(
        wait_until(Duration::from_secs(30), || poster.count(200)
            >= acked_before_restart + 20),
        "webhooks not accepted again after NATS came back"
    );
    assert!(wait_until(Duration::from_secs(10), || readyz(&s) == 200));
    let results = poster.finish();
    assert_no_ack_lost(&results, &read_stream(&nats.url()));
}

/// Three JetStream nodes routed to each other on loopback.
fn start_cluster() -> Vec<Nats> {
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let routes: Vec<String> = ports
        .iter()
        .map(|(_, c)| format!("nats://127.0.0.1:{c}"))
        .collect();
    ports
        .iter()
        .enumerate()
        .map(|(i, (port, cluster))| {
            let args = vec![
                "-n".to_string(),
                format!("n{i}"),
                "--cluster_name".into(),
                "sms-test".into(),
                "--cluster".into(),
                format!("nats://127.0.0.1:{cluster}"),
                "--routes".into(),
                routes.join(","),
            ];
            Nats::start_with(*port, args)
        })
        .collect()
}

/// Creates the R3 stream as sms-ingress would, retrying (bounded) until the cluster has a
/// JetStream meta leader.
fn create_r3_stream(url: &str) {
    let cfg = sms_ingress::config::NatsConfig {
        stream: STREAM.into(),
        replicas: 3,
        ..Default::default()
    };
    let config = sms_ingress::sink::nats::stream_config(&cfg);
    runtime().block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match js.create_stream(config.clone()).await {
                Ok(_) => return,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("cluster not ready yet: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => panic!("R3 stream not created within 60 s: {e}"),
            }
        }
    });
}

#[test]
fn r3_cluster_node_killed_under_load_loses_no_ack() {
    let mut cluster = start_cluster();
    let urls: Vec<String> = cluster.iter().map(Nats::url).collect();
    create_r3_stream(&urls[0]);
    let s = Arc::new(server_on(&urls, 3));
    let poster = Poster::start(s.clone(), 1);
    assert!(wait_until(Duration::from_secs(30), || poster.count(200) >= 30));

    // Kill the node that leads the stream, the one every acknowledgement depended on.
    let leader = stream_leader(&urls[0]);
    let index: usize = leader.trim_start_matches('n').parse().unwrap();
    cluster[index].kill9();
    let acked_at_kill = poster.count(200);
    assert!(
        wait_until(Duration::from_secs(60), || poster.count(200)
            >= acked_at_kill + 30),
        "webhooks not accepted again after losing one of three nodes"
    );
    let results = poster.finish();
    let survivor = &urls[(index + 1) % 3];
    assert_no_ack_lost(&results, &read_stream(survivor));
}

//! `sms-loadtest verify --nats-config` against a real JetStream stream: every acknowledged
//! key found → exit 0; a planted loss → exit 1 with `lost=1`.

use crate::nats;
use sms_ingress::config::NatsConfig;
use sms_ingress::envelope::Envelope;
use sms_ingress::sink::nats::NatsConnection;
use sms_ingress::sink::QueueSink;
use std::process::Command;

fn envelope(sid: &str, status: Option<&str>) -> Envelope {
    Envelope {
        queue: "q1".into(),
        ..sms_ingress_testkit::fixtures::delivery(sid, status)
    }
}

fn verify(config: &std::path::Path, acked: &std::path::Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sms-loadtest"))
        .args(["verify", "--nats-config"])
        .arg(config)
        .arg("--acked")
        .arg(acked)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn verify_reads_the_stream() {
    let server = nats::Nats::start();
    let cfg = NatsConfig {
        servers: vec![server.url()],
        stream: "SMSVERIFY".into(),
        ..NatsConfig::default()
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let conn = runtime.block_on(async {
        let conn = NatsConnection::connect(&cfg).await.unwrap();
        conn.ensure_stream(&cfg).await.unwrap();
        conn
    });
    let envs = [
        envelope("SM1", None),
        envelope("SM2", Some("delivered")),
        envelope("SM3", None),
    ];
    let mut sink = conn.queue_sink("q1");
    let refs: Vec<&Envelope> = envs.iter().collect();
    // The sink blocks on the runtime from its own (non-runtime) thread, as the queue worker does.
    let _guard = runtime.enter();
    std::thread::scope(|s| s.spawn(|| sink.write_batch(&refs).unwrap()).join().unwrap());

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[sink]\nkind = \"nats\"\n\n[sink.nats]\nservers = [\"{}\"]\nstream = \"SMSVERIFY\"\n",
            server.url()
        ),
    )
    .unwrap();
    let acked = dir.path().join("acked.txt");
    std::fs::write(&acked, "SM1\nSM2:delivered\nSM3\n").unwrap();
    let (ok, out) = verify(&config, &acked);
    assert!(ok, "{out}");
    assert!(out.contains("lost=0 duplicated=0"), "{out}");

    std::fs::write(&acked, "SM1\nSM2:delivered\nSM3\nSM4\n").unwrap();
    let (ok, out) = verify(&config, &acked);
    assert!(!ok, "a planted loss passed: {out}");
    assert!(out.contains("lost=1"), "{out}");
}

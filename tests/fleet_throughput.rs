//! A bounded, repeatable measurement for docs/FLEET.md (ignored by default): signed
//! webhooks per second and their latency through one instance, first with the spool sink,
//! then with the NATS sink (R1 stream on a local nats-server), both with the KV control
//! plane. The load generator runs in this process on the same machine, over keep-alive
//! HTTP/1.1 connections, so the figures are for this machine as a whole, not the service
//! alone. Run it in release mode:
//!
//! `CARGO_TARGET_DIR=/work/target-kv cargo test --release --test fleet_throughput -- --ignored --nocapture`
//!
//! Knobs: `FLEET_BENCH_SECS` (default 5) per sink, `FLEET_BENCH_CONNECTIONS` (default 32).

use crate::support::nats::Nats;
use crate::support::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const TOKEN: &str = "twilio-auth-token-1";
const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const OURS: &str = "+14155550100";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// An instance on the KV control plane with the given `[sink]` (None: spool), logging at info.
fn instance(nats: &Nats, sink_toml: Option<String>) -> TestServer {
    let dir: PathBuf = tempfile::tempdir().unwrap().keep();
    let url = nats.url();
    let opts = Options {
        control_extra: format!(
            "store = \"nats_kv\"\nnats_kv = {{ servers = [\"{url}\"], bucket = \"bench\" }}\n"
        ),
        sink_toml,
        ..Options::default()
    };
    let config = write_config(&dir, &opts);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("level = \"debug\"", "level = \"info\""),
    )
    .unwrap();
    TestServer::start_in(dir, config)
}

/// One keep-alive request/response; the status code.
fn exchange_keep_alive(stream: &mut TcpStream, request: &[u8], buf: &mut Vec<u8>) -> u16 {
    stream.write_all(request).unwrap();
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
        let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0);
        if buf.len() >= head_end + 4 + length {
            return head[9..12].parse().unwrap();
        }
    }
}

/// Drives `connections` keep-alive clients for `secs`; (accepted per second, p50, p99).
fn drive(s: &TestServer, connections: usize, secs: u64) -> (f64, Duration, Duration) {
    let path = TestServer::webhook_path("mo");
    let counter = AtomicUsize::new(0);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut latencies: Vec<Duration> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..connections)
            .map(|_| {
                let (path, counter) = (&path, &counter);
                scope.spawn(move || {
                    let mut stream = TcpStream::connect(s.addr).unwrap();
                    stream.set_nodelay(true).unwrap();
                    let mut buf = Vec::new();
                    let mut mine = Vec::new();
                    while Instant::now() < deadline {
                        let n = counter.fetch_add(1, Ordering::Relaxed);
                        let body = inbound_body(OURS, "+14155559999", ACCOUNT, &format!("SM{n:032x}"), "load");
                        let sig = sign(path, &body, TOKEN);
                        let request = format!(
                            "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/x-www-form-urlencoded\r\nX-Twilio-Signature: {sig}\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        let t = Instant::now();
                        let status = exchange_keep_alive(&mut stream, request.as_bytes(), &mut buf);
                        assert_eq!(status, 200);
                        mine.push(t.elapsed());
                    }
                    mine
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    (latencies.len() as f64 / elapsed, pct(0.50), pct(0.99))
}

#[test]
#[ignore = "a measurement for docs/FLEET.md; run in release with --ignored --nocapture"]
fn webhooks_per_second_spool_vs_nats_sink() {
    let secs = env_or("FLEET_BENCH_SECS", 5);
    let connections = env_or("FLEET_BENCH_CONNECTIONS", 32) as usize;
    let nats = Nats::start();
    let nats_sink = format!(
        "[sink]\nkind = \"nats\"\n\n[sink.nats]\nservers = [\"{}\"]\nstream = \"SMS\"\nreplicas = 1\n",
        nats.url()
    );
    for (name, sink) in [("spool", None), ("nats R1", Some(nats_sink))] {
        let s = instance(&nats, sink);
        let id = setup_number(
            &s,
            ACCOUNT,
            TOKEN,
            json!({"sender_id": OURS, "type": "local", "country": "US", "queue": "support"}),
        );
        drive(&s, 4, 1); // warm-up
        let (rate, p50, p99) = drive(&s, connections, secs);
        println!(
            "sink {name:8} {connections} connections {secs} s: {rate:8.0} webhooks/s accepted, p50 {:.2} ms, p99 {:.2} ms",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
        // Empty the bucket: the next instance has its own master key.
        let r = s.admin(
            "DELETE",
            &format!("/api/v1/integrations/{id}"),
            ADMIN_TOKEN,
            None,
        );
        assert_eq!(r.status, 204, "{}", r.text());
    }
}

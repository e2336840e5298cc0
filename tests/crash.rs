//! Crash test: a stream of webhooks, `kill -9` mid-stream, restart; every request that got
//! a 200 must be in the spool, exactly once, and the torn tail (if any) never served.

use crate::support::*;
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "crash-token";
const ACCOUNT: &str = "ACfedcba9876543210fedcba9876543210";
const OURS: &str = "+442071838750";

#[test]
fn kill9_mid_stream_loses_no_acknowledged_webhook() {
    let mut s = TestServer::start(Options::default());
    let number = json!({"sender_id": OURS, "type": "mobile", "country": "GB", "queue": "crash"});
    setup_number(&s, ACCOUNT, TOKEN, number);

    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let addr = s.addr;
    let senders: Vec<_> = (0..8)
        .map(|t| {
            let (acked, stop) = (acked.clone(), stop.clone());
            std::thread::spawn(move || {
                let path = TestServer::webhook_path("mo");
                let deadline = Instant::now() + Duration::from_secs(30);
                for i in 0..100_000u32 {
                    if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                        break;
                    }
                    let sid = format!("SM{t:02}{i:030}");
                    let body = inbound_body(OURS, "+447700900123", ACCOUNT, &sid, &"x".repeat(200));
                    let sig = sign(&path, &body, TOKEN);
                    let Ok(stream) = std::net::TcpStream::connect(addr) else {
                        break;
                    };
                    let headers = [
                        ("Content-Type", "application/x-www-form-urlencoded"),
                        ("X-Twilio-Signature", sig.as_str()),
                    ];
                    let resp = std::panic::catch_unwind(|| {
                        exchange(stream, "POST", &path, &headers, body.as_bytes())
                    });
                    match resp {
                        Ok(r) if r.status == 200 => acked.lock().unwrap().push(sid),
                        _ => break, // connection cut by the kill
                    }
                }
            })
        })
        .collect();

    // let a few hundred acknowledgements through, then kill -9 while requests are in flight
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < 300 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    s.kill9();
    stop.store(true, Ordering::Relaxed);
    for h in senders {
        h.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 300,
        "only {} acknowledged before the kill",
        acked.len()
    );

    let s = s.restart();
    let records = s.spool_tail("crash");
    let mut count: HashMap<String, usize> = HashMap::new();
    for r in &records {
        *count
            .entry(r["message_sid"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let lost: Vec<_> = acked
        .iter()
        .filter(|sid| !count.contains_key(*sid))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged webhooks lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    let duplicated: Vec<_> = count.iter().filter(|(_, &n)| n > 1).collect();
    assert!(
        duplicated.is_empty(),
        "records stored twice: {duplicated:?}"
    );
    eprintln!(
        "crash test: {} acknowledged, {} in spool after restart (the rest were in flight)",
        acked.len(),
        records.len()
    );
    // the restarted server keeps accepting on the recovered log
    let body = inbound_body(
        OURS,
        "+447700900123",
        ACCOUNT,
        "SMafterrestart000000000000000000",
        "hi",
    );
    assert_eq!(s.post_signed("mo", &body, TOKEN).status, 200);
    assert_eq!(s.spool_tail("crash").len(), records.len() + 1);
}

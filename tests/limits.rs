//! Connection-level limits and graceful shutdown, provoked by raw TCP clients on loopback
//! against the real binary. Every wait is bounded.

use crate::support::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const TOKEN: &str = "limits-token";
const ACCOUNT: &str = "AC11111111111111111111111111111111";
const OURS: &str = "+14155550111";

fn tight() -> Options {
    Options {
        extra: "[limits]\nmax_connections = 4\nheader_read_timeout_ms = 300\nrequest_timeout_ms = 400\n\
                idle_timeout_ms = 500\nmax_header_bytes = 4096\nshutdown_grace_ms = 5000\n"
            .into(),
        ..Options::default()
    }
}

/// Reads until EOF or error; how long it took and what came back.
fn read_until_closed(c: &mut TcpStream, limit: Duration) -> (Duration, Vec<u8>) {
    c.set_read_timeout(Some(limit)).unwrap();
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return (start.elapsed(), out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
        if start.elapsed() > limit {
            return (start.elapsed(), out);
        }
    }
}

#[test]
fn slowloris_head_is_cut_after_header_read_timeout() {
    let s = TestServer::start(tight());
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.write_all(b"POST /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    let (took, _) = read_until_closed(&mut c, Duration::from_secs(10));
    assert!(
        took < Duration::from_secs(5),
        "slow head held the connection for {took:?}"
    );
}

#[test]
fn silent_and_idle_connections_are_closed() {
    let s = TestServer::start(tight());
    // never sends a byte
    let mut silent = TcpStream::connect(s.addr).unwrap();
    let (took, _) = read_until_closed(&mut silent, Duration::from_secs(10));
    assert!(
        took < Duration::from_secs(5),
        "silent connection held for {took:?}"
    );
    // one request, then idle on keep-alive
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (took, got) = read_until_closed(&mut c, Duration::from_secs(10));
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    assert!(
        took < Duration::from_secs(5),
        "idle keep-alive connection held for {took:?}"
    );
    assert!(s.metric(r#"sms_ingress_connection_timeouts_total{kind="idle"}"#) >= 1.0);
}

#[test]
fn connections_beyond_the_maximum_are_refused() {
    let s = TestServer::start(tight());
    let held: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(s.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let mut extra = TcpStream::connect(s.addr).unwrap();
    let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let (_, got) = read_until_closed(&mut extra, Duration::from_secs(5));
    assert!(
        got.is_empty(),
        "fifth connection was served: {:?}",
        String::from_utf8_lossy(&got)
    );
    drop(held);
    // once the held ones are gone (idle timeout or close), new connections are served again
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = std::panic::catch_unwind(|| s.request("GET", "/healthz", &[], b"").status);
        if r.ok() == Some(200) {
            break;
        }
        assert!(Instant::now() < deadline, "server never accepted again");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(s.metric(r#"sms_ingress_connections_rejected_total{reason="max_connections"}"#) >= 1.0);
}

#[test]
fn oversized_head_is_refused() {
    let s = TestServer::start(tight());
    let mut c = TcpStream::connect(s.addr).unwrap();
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let _ = c.write_all(head.as_bytes());
    let (_, got) = read_until_closed(&mut c, Duration::from_secs(5));
    let text = String::from_utf8_lossy(&got);
    assert!(
        !text.starts_with("HTTP/1.1 200"),
        "oversized head served: {text}"
    );
}

#[test]
fn slow_body_gets_503_after_request_timeout() {
    let s = TestServer::start(tight());
    let mut c = TcpStream::connect(s.addr).unwrap();
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nTo=",
        TestServer::webhook_path("mo")
    );
    c.write_all(head.as_bytes()).unwrap();
    let (took, got) = read_until_closed(&mut c, Duration::from_secs(10));
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 7"),
        "{text}"
    );
    assert!(took < Duration::from_secs(5));
}

#[test]
fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let mut s = TestServer::start(tight());
    setup_number(
        &s,
        ACCOUNT,
        TOKEN,
        json!({"sender_id": OURS, "type": "local", "country": "US", "queue": "drain"}),
    );
    let addr = s.addr;
    let senders: Vec<_> = (0..3)
        .map(|t| {
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                let path = TestServer::webhook_path("mo");
                for i in 0..100_000u32 {
                    let sid = format!("SM{t:02}{i:030}");
                    let body = inbound_body(OURS, "+14155559999", ACCOUNT, &sid, "drain");
                    let sig = sign(&path, &body, TOKEN);
                    let Ok(stream) = TcpStream::connect(addr) else {
                        break;
                    };
                    let headers = [
                        ("Content-Type", "application/x-www-form-urlencoded"),
                        ("X-Twilio-Signature", sig.as_str()),
                    ];
                    match std::panic::catch_unwind(|| {
                        exchange(stream, "POST", &path, &headers, body.as_bytes())
                    }) {
                        Ok(r) if r.status == 200 => acked.push(sid),
                        _ => break,
                    }
                }
                acked
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let status = std::process::Command::new("kill")
        .args(["-TERM", &s.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = s
        .wait_exit(Duration::from_secs(10))
        .expect("server did not exit within 10 s of SIGTERM");
    assert!(exit.success(), "exit status {exit:?}");
    let acked: Vec<String> = senders
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert!(!acked.is_empty());
    assert!(s.logs().iter().any(|l| l.contains("draining connections")));
    let s = s.restart();
    let stored: std::collections::HashSet<String> = s
        .spool_tail("drain")
        .iter()
        .map(|r| r["message_sid"].as_str().unwrap().to_string())
        .collect();
    let lost = acked.iter().filter(|sid| !stored.contains(*sid)).count();
    assert_eq!(
        lost,
        0,
        "{lost} of {} acknowledged webhooks lost across SIGTERM",
        acked.len()
    );
}

/// The server's HTTP/2 SETTINGS, read with a raw prior-knowledge handshake.
fn h2_server_settings(addr: std::net::SocketAddr) -> Vec<(u16, u32)> {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    c.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap(); // empty SETTINGS
    let mut head = [0u8; 9];
    c.read_exact(&mut head).unwrap();
    assert_eq!(head[3], 4, "first server frame is not SETTINGS");
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    c.read_exact(&mut payload).unwrap();
    payload
        .chunks(6)
        .map(|e| {
            (
                u16::from_be_bytes([e[0], e[1]]),
                u32::from_be_bytes([e[2], e[3], e[4], e[5]]),
            )
        })
        .collect()
}

#[test]
fn h2_limits_are_advertised_to_every_client() {
    let opts = Options {
        extra: "[limits]\nh2_max_concurrent_streams = 7\nmax_header_bytes = 4096\n".into(),
        ..Options::default()
    };
    let s = TestServer::start(opts);
    let settings = h2_server_settings(s.addr);
    // SETTINGS_MAX_CONCURRENT_STREAMS (0x3) and SETTINGS_MAX_HEADER_LIST_SIZE (0x6)
    assert!(settings.contains(&(3, 7)), "{settings:?}");
    assert!(settings.contains(&(6, 4096)), "{settings:?}");
}

#[test]
fn a_second_instance_on_the_same_admin_socket_refuses_to_start() {
    let first = TestServer::start(Options::default());
    let err = serve_refuses(&first.config, Duration::from_secs(10));
    assert!(err.contains("another sms-ingress instance"), "{err}");
    // The first one is untouched and still serves.
    assert_eq!(first.request("GET", "/readyz", &[], b"").status, 200);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&first.admin_socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "admin socket mode {mode:o}");
}

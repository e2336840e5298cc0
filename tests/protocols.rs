//! Wire protocols of the webhook listener, against the real binary on loopback: HTTP/2 with
//! prior knowledge on a plain listener, TLS with ALPN `h2` and `http/1.1`, no plaintext on a
//! TLS listener, and `check-config` on the TLS settings.

use crate::support::*;
use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

const TOKEN: &str = "twilio-auth-token-1";
const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const OURS: &str = "+14155550100";
const CUSTOMER: &str = "+14155559999";
const EMPTY: &str = r#"<?xml version="1.0" encoding="UTF-8"?><Response/>"#;
/// Upper bound on every network exchange of a test.
const LIMIT: Duration = Duration::from_secs(30);

/// Adds one active integration of org-a and routes OURS to queue "support".
fn add_number(s: &TestServer) {
    let number = json!({"sender_id": OURS, "type": "local", "country": "US", "queue": "support"});
    setup_number(s, ACCOUNT, TOKEN, number);
}

/// Runs `fut` on a fresh runtime, failing the test if it takes longer than LIMIT.
fn block_on<F: Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            tokio::time::timeout(LIMIT, fut)
                .await
                .expect("network exchange timed out")
        })
}

/// A signed inbound webhook for `sid` to `uri` (a path, or an absolute URI for HTTP/2).
fn signed_webhook(uri: &str, sid: &str) -> Request<Full<Bytes>> {
    let path = TestServer::webhook_path("mo");
    let body = inbound_body(OURS, CUSTOMER, ACCOUNT, sid, "hello over the wire");
    let sig = sign(&path, &body, TOKEN);
    Request::post(format!("{uri}{path}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", sig)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn get(uri: &str) -> Request<Full<Bytes>> {
    Request::get(uri).body(Full::new(Bytes::new())).unwrap()
}

/// Status, version and whole body of a response.
async fn read(resp: Response<Incoming>) -> (StatusCode, Version, String) {
    let (status, version) = (resp.status(), resp.version());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, version, String::from_utf8_lossy(&body).into_owned())
}

/// A directory holding a self-signed certificate for `localhost` (cert.pem, key.pem) and a
/// server config that serves TLS with them. Returns the directory, the config and the cert.
fn tls_setup() -> (PathBuf, PathBuf, CertificateDer<'static>) {
    let dir = tempfile::tempdir().unwrap().keep();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, ck.cert.pem()).unwrap();
    std::fs::write(&key_path, ck.signing_key.serialize_pem()).unwrap();
    let config = write_config(&dir, &Options::default());
    set_tls(&config, &cert_path, &key_path);
    (dir, config, ck.cert.der().clone())
}

/// Rewrites `config` so that `[server]` has tls_cert / tls_key (replacing earlier ones).
fn set_tls(config: &Path, cert: &Path, key: &Path) {
    let text = std::fs::read_to_string(config).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with("tls_cert =") || line.starts_with("tls_key =") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if line.trim() == "[server]" {
            out.push_str(&format!(
                "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
                cert.display(),
                key.display()
            ));
        }
    }
    assert!(out.contains("tls_cert ="), "no [server] table in {out}");
    std::fs::write(config, out).unwrap();
}

/// A TLS client that trusts only `cert` and offers `alpn`, TLS 1.2/1.3 on the ring provider.
fn connector(cert: &CertificateDer<'static>, alpn: &[&[u8]]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

/// Connects over TLS to `addr` as `localhost`; returns the stream and the negotiated ALPN.
async fn tls_connect(addr: SocketAddr, connector: &TlsConnector) -> (TlsStream<TcpStream>, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let alpn = tls
        .get_ref()
        .1
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    (tls, alpn)
}

fn check_config(config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sms-ingress"))
        .args(["check-config", "--config"])
        .arg(config)
        .env_remove("SMS_INGRESS_MASTER_KEY")
        .env_remove("SMS_INGRESS_CONFIG")
        .output()
        .unwrap()
}

#[test]
fn h2c_prior_knowledge_serves_webhooks_and_health() {
    let s = TestServer::start(Options::default());
    add_number(&s);
    let base = format!("http://{}", s.addr);
    block_on(async {
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http::<Full<Bytes>>();
        let sid = "SM00000000000000000000000000000h2c";
        let resp = client.request(signed_webhook(&base, sid)).await.unwrap();
        let (status, version, body) = read(resp).await;
        assert_eq!((status, version), (StatusCode::OK, Version::HTTP_2));
        assert_eq!(body, EMPTY);

        let resp = client
            .request(get(&format!("{base}/healthz")))
            .await
            .unwrap();
        let (status, version, _) = read(resp).await;
        assert_eq!((status, version), (StatusCode::OK, Version::HTTP_2));
    });
    let records = s.spool_tail("support");
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(
        records[0]["message_sid"],
        "SM00000000000000000000000000000h2c"
    );
}

#[test]
fn tls_alpn_h2_and_http11_both_serve_webhooks() {
    let (dir, config, cert) = tls_setup();
    let s = TestServer::start_in(dir, config);
    add_number(&s);
    let addr = s.addr;
    block_on(async {
        // ALPN offers h2 first: h2 is chosen and used.
        let (tls, alpn) = tls_connect(addr, &connector(&cert, &[b"h2", b"http/1.1"])).await;
        assert_eq!(alpn, "h2");
        let (mut h2, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        // Two streams multiplexed on the one connection.
        let webhook = h2.send_request(signed_webhook(
            "https://localhost",
            "SM000000000000000000000000000tlsh2",
        ));
        let health = h2.send_request(get("https://localhost/healthz"));
        let (webhook, health) = tokio::join!(webhook, health);
        let (status, version, body) = read(webhook.unwrap()).await;
        assert_eq!((status, version), (StatusCode::OK, Version::HTTP_2));
        assert_eq!(body, EMPTY);
        assert_eq!(read(health.unwrap()).await.0, StatusCode::OK);

        // ALPN offers only http/1.1: HTTP/1.1 is used.
        let (tls, alpn) = tls_connect(addr, &connector(&cert, &[b"http/1.1"])).await;
        assert_eq!(alpn, "http/1.1");
        let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = signed_webhook("", "SM000000000000000000000000000tlsh1");
        req.headers_mut()
            .insert("host", http::HeaderValue::from_static("localhost"));
        let (status, version, body) = read(h1.send_request(req).await.unwrap()).await;
        assert_eq!((status, version), (StatusCode::OK, Version::HTTP_11));
        assert_eq!(body, EMPTY);
    });
    let sids: Vec<_> = s
        .spool_tail("support")
        .iter()
        .map(|r| r["message_sid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        sids,
        [
            "SM000000000000000000000000000tlsh2",
            "SM000000000000000000000000000tlsh1"
        ]
    );
}

#[test]
fn tls_listener_never_serves_plaintext() {
    let (dir, config, cert) = tls_setup();
    let s = TestServer::start_in(dir, config);
    let addr = s.addr;
    block_on(async {
        let probes: [&[u8]; 2] = [
            b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            // HTTP/2 connection preface, as an h2c client with prior knowledge sends it
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
        ];
        for probe in probes {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            // The server may close before the whole probe is written: that is a refusal too.
            let _ = tcp.write_all(probe).await;
            let mut raw = Vec::new();
            // Ends with EOF or a reset once the server gives up on the handshake.
            let _ = tcp.read_to_end(&mut raw).await;
            assert!(
                !raw.windows(5).any(|w| w == b"HTTP/"),
                "plaintext answered on the TLS port: {:?}",
                String::from_utf8_lossy(&raw)
            );
            // A TLS record (an alert) or nothing at all.
            if let Some(&first) = raw.first() {
                assert_eq!(first, 0x15, "not a TLS alert: {raw:02x?}");
            }
        }

        // The listener survives the probes and still serves TLS.
        let (tls, alpn) = tls_connect(addr, &connector(&cert, &[b"http/1.1"])).await;
        assert_eq!(alpn, "http/1.1");
        let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = get("/healthz");
        req.headers_mut()
            .insert("host", http::HeaderValue::from_static("localhost"));
        let (status, _, _) = read(h1.send_request(req).await.unwrap()).await;
        assert_eq!(status, StatusCode::OK);
    });
}

#[test]
fn check_config_validates_tls_files() {
    let (dir, config, _) = tls_setup();
    let out = check_config(&config);
    assert!(
        out.status.success(),
        "check-config failed on a good TLS config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("config OK"));

    let cert = dir.join("cert.pem");
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "this is not a private key\n").unwrap();
    set_tls(&config, &cert, &garbage);
    let out = check_config(&config);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "garbage key accepted: {err}");
    assert!(
        err.contains("server.tls_key") && err.contains(&garbage.display().to_string()),
        "message does not name the key file: {err}"
    );

    // A well-formed key that does not belong to the certificate.
    let other = dir.join("other-key.pem");
    let pair = rcgen::KeyPair::generate().unwrap();
    std::fs::write(&other, pair.serialize_pem()).unwrap();
    set_tls(&config, &cert, &other);
    let out = check_config(&config);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "mismatched key accepted: {err}");
    assert!(
        err.contains("server.tls_cert / server.tls_key"),
        "message does not name the pair: {err}"
    );

    // And the server refuses to start on the garbage key, with the same reason.
    set_tls(&config, &cert, &garbage);
    let err = serve_refuses(&config, Duration::from_secs(20));
    assert!(err.contains("server.tls_key"), "{err}");
}

#[test]
fn check_config_refuses_a_body_limit_whose_envelopes_cannot_fit_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &Options::default());
    let text = std::fs::read_to_string(&config).unwrap();
    for (limit, ok) in [("16777216", false), ("8388608", false), ("4194304", true)] {
        std::fs::write(
            &config,
            text.replace(
                "max_body_bytes = 4096",
                &format!("max_body_bytes = {limit}"),
            ),
        )
        .unwrap();
        let out = check_config(&config);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), ok, "max_body_bytes = {limit}: {err}");
        if !ok {
            assert!(
                err.contains("server.max_body_bytes") && err.contains("record limit"),
                "{err}"
            );
        }
    }
}

//! A routing endpoint for tests and the load test (`sms-loadtest sink-server`): accepts
//! deliveries, verifies their Standard Webhooks signature (its own implementation, over
//! `ring`), can fail a share of first attempts, answer late, or be down, and records every
//! delivery it accepted (in memory, and optionally as NDJSON lines in a file).

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use std::collections::HashSet;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// One accepted delivery.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub webhook_id: String,
    pub body: serde_json::Value,
    /// The body as sent and the signature headers, for an independent verifier.
    pub raw: String,
    pub timestamp: String,
    pub signature: String,
    /// Milliseconds since the epoch when it was accepted.
    pub at_ms: i64,
}

/// How the endpoint behaves; change it while it runs.
#[derive(Debug, Default)]
pub struct Behaviour {
    /// Answer 503 to every request (routing is down).
    pub down: AtomicBool,
    /// Per mille of first attempts (per `webhook-id`) answered 503.
    pub fail_first_per_mille: AtomicU64,
    /// Per mille of first attempts held longer than `hold_ms` (the route times out).
    pub hold_first_per_mille: AtomicU64,
    pub hold_ms: AtomicU64,
    /// Latency added to every answer, in milliseconds.
    pub latency_ms: AtomicU64,
}

/// The endpoint's shared state.
pub struct Receiver {
    keys: Vec<ring::hmac::Key>,
    pub behaviour: Behaviour,
    delivered: Mutex<Vec<Delivered>>,
    seen: Mutex<HashSet<String>>,
    requests: AtomicU64,
    accepted: AtomicU64,
    bad_signatures: AtomicU64,
    /// With a log, deliveries go there only (a load test's millions stay out of memory).
    log: Option<Mutex<std::io::BufWriter<std::fs::File>>>,
}

/// The key bytes of one `whsec_…` secret.
fn secret_key(secret: &str) -> Option<ring::hmac::Key> {
    let b64 = secret.trim().strip_prefix("whsec_")?;
    let bytes = STANDARD
        .decode(b64)
        .or_else(|_| STANDARD_NO_PAD.decode(b64))
        .ok()?;
    Some(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes))
}

/// A fresh `whsec_` secret of 32 random bytes.
pub fn new_secret() -> String {
    use ring::rand::SecureRandom;
    let mut raw = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut raw)
        .expect("random");
    format!("whsec_{}", STANDARD.encode(raw))
}

/// A cheap per-mille draw from a `webhook-id` (the same id always draws the same).
fn per_mille(id: &str, salt: u8) -> u64 {
    let d = ring::digest::digest(&ring::digest::SHA256, format!("{salt}{id}").as_bytes());
    u64::from(u16::from_le_bytes([d.as_ref()[0], d.as_ref()[1]])) % 1000
}

impl Receiver {
    /// An endpoint that accepts signatures of any of `secrets` (one `whsec_…` a line),
    /// logging accepted deliveries to `log` if given.
    pub fn new(secrets: &str, log: Option<&std::path::Path>) -> std::io::Result<Arc<Receiver>> {
        let keys: Vec<_> = secrets.lines().filter_map(secret_key).collect();
        if keys.is_empty() {
            return Err(std::io::Error::other("no whsec_ secret given"));
        }
        let log = log
            .map(|p| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
            })
            .transpose()?
            .map(|f| Mutex::new(std::io::BufWriter::new(f)));
        Ok(Arc::new(Receiver {
            keys,
            behaviour: Behaviour::default(),
            delivered: Mutex::default(),
            seen: Mutex::default(),
            requests: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            bad_signatures: AtomicU64::new(0),
            log,
        }))
    }

    /// Binds `addr` and serves in a spawned task; returns the bound address.
    pub async fn start(self: &Arc<Self>, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        if self.log.is_some() {
            let me = self.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if let Some(log) = &me.log {
                        let _ = log.lock().unwrap().flush();
                    }
                }
            });
        }
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let me = me.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let me = me.clone();
                        async move { Ok::<_, std::convert::Infallible>(me.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(local)
    }

    /// Deliveries accepted so far (kept in memory or logged).
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Every delivery accepted so far, in the order they were accepted (none are kept
    /// when they go to a log).
    pub fn delivered(&self) -> Vec<Delivered> {
        self.delivered.lock().unwrap().clone()
    }

    /// Requests received, accepted or not.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// Requests whose signature did not verify (answered 401).
    pub fn bad_signatures(&self) -> u64 {
        self.bad_signatures.load(Ordering::SeqCst)
    }

    /// Whether one of the `v1,` signatures is `id.timestamp.body` under one of the keys.
    fn verify(&self, id: &str, timestamp: &str, signatures: &str, body: &[u8]) -> bool {
        let signed = [id.as_bytes(), b".", timestamp.as_bytes(), b".", body].concat();
        signatures.split(' ').any(|s| {
            let Some(b64) = s.strip_prefix("v1,") else {
                return false;
            };
            let Ok(tag) = STANDARD.decode(b64) else {
                return false;
            };
            self.keys
                .iter()
                .any(|k| ring::hmac::verify(k, &signed, &tag).is_ok())
        })
    }

    async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let header = |n: &str| {
            req.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let (id, timestamp, signature) = (
            header("webhook-id"),
            header("webhook-timestamp"),
            header("webhook-signature"),
        );
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return answer(StatusCode::BAD_REQUEST),
        };
        let b = &self.behaviour;
        let latency = b.latency_ms.load(Ordering::Relaxed);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        if !self.verify(&id, &timestamp, &signature, &body) {
            self.bad_signatures.fetch_add(1, Ordering::SeqCst);
            return answer(StatusCode::UNAUTHORIZED);
        }
        if b.down.load(Ordering::Relaxed) {
            return answer(StatusCode::SERVICE_UNAVAILABLE);
        }
        let shaky = b.fail_first_per_mille.load(Ordering::Relaxed) > 0
            || b.hold_first_per_mille.load(Ordering::Relaxed) > 0;
        let first = shaky && self.seen.lock().unwrap().insert(id.clone());
        if first && per_mille(&id, 1) < b.fail_first_per_mille.load(Ordering::Relaxed) {
            return answer(StatusCode::SERVICE_UNAVAILABLE);
        }
        if first && per_mille(&id, 2) < b.hold_first_per_mille.load(Ordering::Relaxed) {
            let hold = b.hold_ms.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(hold)).await;
            return answer(StatusCode::SERVICE_UNAVAILABLE);
        }
        let at_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        if let Some(log) = &self.log {
            // The body is the route's JSON as sent (its signature verified): logged as is.
            if body.first() != Some(&b'{') {
                return answer(StatusCode::BAD_REQUEST);
            }
            self.accepted.fetch_add(1, Ordering::SeqCst);
            let mut log = log.lock().unwrap();
            let _ = write!(log, "{{\"webhook_id\":{id:?},\"at_ms\":{at_ms},\"body\":");
            let _ = log.write_all(&body);
            let _ = log.write_all(b"}\n");
            return answer(StatusCode::NO_CONTENT);
        }
        let Ok(json) = serde_json::from_slice::<serde_json::Value>(&body) else {
            return answer(StatusCode::BAD_REQUEST);
        };
        self.accepted.fetch_add(1, Ordering::SeqCst);
        self.delivered.lock().unwrap().push(Delivered {
            webhook_id: id,
            body: json,
            raw: String::from_utf8_lossy(&body).into_owned(),
            timestamp,
            signature,
            at_ms,
        });
        answer(StatusCode::NO_CONTENT)
    }
}

fn answer(status: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

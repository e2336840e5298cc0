//! `setup`: creates one integration and N numbers through the admin API on its Unix
//! socket, with several connections importing at once, and writes the plan.
//!
//! Numbers go in through `POST /api/v1/numbers/bulk`, `BULK` at a time: each request is
//! one state write and one snapshot swap on the service, so a million numbers take a few
//! dozen requests instead of a million (see docs/PERFORMANCE.md).

use crate::plan::{Plan, PlanKey};
use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// First line number of the imported range: `+1415` then `FIRST_LINE + i` (7 digits).
pub const FIRST_LINE: u64 = 2_000_000;
/// Most numbers `setup` can name in its range.
pub const MAX_NUMBERS: usize = 7_000_000;

/// Our i-th number: `+1 415 200 0000` onwards, valid E.164 in the US calling code.
pub fn number(i: usize) -> String {
    format!("+1415{:07}", FIRST_LINE + i as u64)
}

/// A number in the same area that `setup` never imports (for the unknown-number share).
pub fn unknown_number(i: u64) -> String {
    format!("+1415{:07}", 9_000_000 + i % 1_000_000)
}

/// What `setup` is asked to do.
#[derive(Debug, Clone)]
pub struct SetupOptions {
    /// The admin API's Unix socket.
    pub socket: PathBuf,
    /// Bearer token with `integration:add` and `sms_number:all`.
    pub admin_token: String,
    /// How many numbers to import.
    pub numbers: usize,
    /// Numbers are spread round-robin over this many queues (`loadtest-0`, ...).
    pub queues: usize,
    /// Imports in flight at once (one connection each).
    pub concurrency: usize,
    /// Copied into the plan.
    pub public_url: String,
    /// Copied into the plan.
    pub region_key: String,
    /// Copied into the plan.
    pub target: String,
    /// Copied into the plan.
    pub sink_dir: PathBuf,
    /// Also give the integration a SharedKey (for `run --shared-key-share`).
    pub shared_key: bool,
}

/// The id of the SharedKey `setup --shared-key` creates.
pub const SHARED_KEY_ID: &str = "loadtest-key";

/// One admin API connection (HTTP/1.1 over the Unix socket, kept alive).
pub struct AdminClient {
    sender: SendRequest<Full<Bytes>>,
    token: String,
}

impl AdminClient {
    /// Connects to the admin socket.
    pub async fn connect(socket: &Path, token: &str) -> Result<AdminClient> {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .with_context(|| format!("connecting to admin socket {}", socket.display()))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(AdminClient {
            sender,
            token: token.to_string(),
        })
    }

    /// Sends one JSON request and returns the status and the JSON answer.
    pub async fn call(
        &mut self,
        method: &str,
        path: &str,
        body: &Value,
    ) -> Result<(StatusCode, Value)> {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))?;
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, value))
    }
}

/// Random-looking hex for test credentials; not a secret of anyone but this run.
fn random_hex(rng: &mut impl rand::RngCore, n: usize) -> String {
    (0..n)
        .map(|_| format!("{:x}", rng.next_u32() % 16))
        .collect()
}

/// A fresh account SID and Auth Token for the load-test integration.
pub fn credentials(seed: u64) -> (String, String) {
    use rand::SeedableRng;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    (
        format!("AC{}", random_hex(&mut rng, 32)),
        random_hex(&mut rng, 32),
    )
}

/// A SharedKey for the load-test integration, from the same seed as its credentials.
pub fn shared_key(seed: u64) -> PlanKey {
    use rand::SeedableRng;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed ^ 0x5ba2_ed0e_u64);
    PlanKey {
        id: SHARED_KEY_ID.into(),
        secret: random_hex(&mut rng, 64),
    }
}

/// Creates the integration, imports the numbers, and returns the plan (not yet written).
pub async fn setup(opts: &SetupOptions, seed: u64) -> Result<Plan> {
    if opts.numbers > MAX_NUMBERS {
        bail!("--numbers may be at most {MAX_NUMBERS}");
    }
    let (account_sid, auth_token) = credentials(seed);
    let mut admin = AdminClient::connect(&opts.socket, &opts.admin_token).await?;
    let shared_key = opts.shared_key.then(|| shared_key(seed));
    let mut body =
        json!({"name": "sms-loadtest", "account_sid": account_sid, "auth_token": auth_token});
    if let Some(k) = &shared_key {
        body["signing_keys"] = json!([{"id": k.id, "secret": k.secret}]);
    }
    let (status, answer) = admin.call("POST", "/api/v1/integrations", &body).await?;
    if status != StatusCode::CREATED {
        bail!("creating the integration: {status} {answer}");
    }
    let integration_id = answer["id"]
        .as_str()
        .ok_or_else(|| anyhow!("integration answer has no id: {answer}"))?
        .to_string();
    // With `control.vendor_checks = true` the service asks Twilio's REST API whether each
    // number exists in this account with this region's webhook URL: run the target against
    // `sms-loadtest fake-twilio --account SID:TOKEN --range +14152000000:N:SID` with the
    // plan's credentials (`--seed` makes them repeatable). setup does not start it itself.
    import_all(opts, &integration_id).await?;
    Ok(Plan {
        public_url: opts.public_url.clone(),
        region_key: opts.region_key.clone(),
        account_sid,
        auth_token,
        integration_id,
        target: opts.target.clone(),
        sink_dir: opts.sink_dir.clone(),
        numbers: (0..opts.numbers).map(number).collect(),
        shared_key,
    })
}

/// The import request body of the i-th number.
fn import_body(i: usize, integration_id: &str, queues: usize) -> Value {
    json!({
        "sender_id": number(i),
        "type": "local",
        "country": "US",
        "integration_id": integration_id,
        "queue": format!("loadtest-{}", i % queues.max(1)),
    })
}

/// Shared progress of the import workers.
struct Progress {
    next: AtomicUsize,
    done: AtomicUsize,
    failed: AtomicBool,
}

/// Imports every number with `concurrency` connections; stops at the first refusal.
async fn import_all(opts: &SetupOptions, integration_id: &str) -> Result<()> {
    let started = Instant::now();
    let progress = Arc::new(Progress {
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        failed: AtomicBool::new(false),
    });
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..opts.concurrency.max(1) {
        let (opts, id, progress) = (opts.clone(), integration_id.to_string(), progress.clone());
        workers.spawn(async move { import_worker(&opts, &id, &progress).await });
    }
    let ticker = tokio::spawn(report_progress(progress.clone(), opts.numbers, started));
    let mut first_error = None;
    while let Some(joined) = workers.join_next().await {
        if let Err(e) = joined.map_err(anyhow::Error::from).and_then(|r| r) {
            first_error.get_or_insert(e);
        }
    }
    ticker.abort();
    if let Some(e) = first_error {
        return Err(e);
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "setup: imported {} numbers in {secs:.2} s ({:.0} imports/s, {} connections)",
        opts.numbers,
        opts.numbers as f64 / secs.max(1e-9),
        opts.concurrency.max(1)
    );
    Ok(())
}

/// Numbers per bulk import request.
pub const BULK: usize = 50_000;

/// One connection importing the next unclaimed chunk of numbers until none is left.
async fn import_worker(opts: &SetupOptions, integration_id: &str, p: &Progress) -> Result<()> {
    let mut admin = AdminClient::connect(&opts.socket, &opts.admin_token).await?;
    loop {
        let start = p.next.fetch_add(BULK, Ordering::Relaxed);
        if start >= opts.numbers || p.failed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let end = (start + BULK).min(opts.numbers);
        let numbers: Vec<Value> = (start..end)
            .map(|i| import_body(i, integration_id, opts.queues))
            .collect();
        let body = json!({ "numbers": numbers });
        let (status, answer) = admin.call("POST", "/api/v1/numbers/bulk", &body).await?;
        if status != StatusCode::CREATED {
            p.failed.store(true, Ordering::Relaxed);
            bail!(
                "importing {}..{}: {status} {answer} (setup needs an inventory without these numbers: start from an empty data directory)",
                number(start),
                number(end - 1)
            );
        }
        p.done.fetch_add(end - start, Ordering::Relaxed);
    }
}

/// Prints the import progress to stderr once per second.
async fn report_progress(p: Arc<Progress>, total: usize, started: Instant) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let done = p.done.load(Ordering::Relaxed);
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "setup: {done}/{total} imported, {secs:.0} s, {:.0}/s",
            done as f64 / secs
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_e164_and_distinct_from_unknown() {
        assert_eq!(number(0), "+14152000000");
        assert_eq!(number(MAX_NUMBERS - 1), "+14158999999");
        assert!(sms_ingress::model::state::is_e164(&number(12_345)));
        assert_eq!(unknown_number(3), "+14159000003");
        assert!(unknown_number(u64::MAX) > number(MAX_NUMBERS - 1));
    }

    #[test]
    fn credentials_look_like_twilio() {
        let (sid, token) = credentials(7);
        assert!(sms_ingress::model::state::is_account_sid(&sid), "{sid}");
        assert_eq!(token.len(), 32);
        assert_ne!(credentials(8).0, sid);
        let key = shared_key(7);
        assert!(sms_ingress::model::state::is_signing_key_id(&key.id));
        assert_eq!(key.secret.len(), 64);
        assert_ne!(key.secret, token);
        assert_eq!(shared_key(7), key);
    }
}

//! The client: one task per connection (HTTP/1.1 or h2 prior knowledge, hyper's client
//! connection API, the connection driven inside the same task), each sending the
//! generator's webhooks as paced by `schedule`, plus the once-a-second progress line.

use crate::schedule::{drive, Exchange, Live, Mode, Pace, Recorder, Schedule};
use crate::workload::{Generator, WebhookRequest, Workload};
use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::time::{Duration, Instant};

/// Which HTTP version a run speaks (h2 without TLS, by prior knowledge).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive.
    H1,
    /// HTTP/2 (h2c prior knowledge), one stream at a time per connection.
    H2,
}

/// How one run is shaped.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// `host:port` to connect to.
    pub target: String,
    /// HTTP/1.1 or h2.
    pub protocol: Protocol,
    /// Connections, each with one request in flight.
    pub connections: usize,
    /// How long requests are started (closed) or scheduled (open).
    pub duration: Duration,
    /// Open loop at this many requests per second; closed loop when `None`.
    pub rate: Option<f64>,
    /// Stop after this many requests, if set.
    pub limit: Option<u64>,
    /// Seed of the generators (reproducible runs).
    pub seed: u64,
    /// Distinct for every run: part of each MessageSid.
    pub run_id: u32,
    /// Longest wait for one answer before it counts as an error.
    pub timeout: Duration,
    /// Print the progress line to stderr once a second.
    pub progress: bool,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// Latencies and statuses of every connection.
    pub recorder: Recorder,
    /// From the first request to the last answer.
    pub elapsed: Duration,
    /// Answers other than the SPEC's for the request (503 back-pressure excluded).
    pub unexpected: u64,
    /// Open loop: requests due that were never sent because the run fell too far behind.
    pub unsent: u64,
    /// Dedup keys (MessageSid, or MessageSid:MessageStatus) that got 200 for a storable request.
    pub acked: Vec<String>,
}

type Driver = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

/// The request half of a connection.
enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// An open connection: its request half and the future that drives its I/O.
struct Conn {
    sender: Sender,
    driver: Driver,
}

/// Opens a TCP connection (no Nagle) and runs the HTTP handshake.
async fn connect(target: &str, protocol: Protocol) -> Result<Conn, String> {
    let stream = tokio::net::TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect {target}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let io = TokioIo::new(stream);
    let err = |e: hyper::Error| format!("handshake: {e}");
    Ok(match protocol {
        Protocol::H1 => {
            let (s, c) = http1::handshake(io).await.map_err(err)?;
            Conn {
                sender: Sender::H1(s),
                driver: Box::pin(c),
            }
        }
        Protocol::H2 => {
            let (s, c) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(err)?;
            Conn {
                sender: Sender::H2(s),
                driver: Box::pin(c),
            }
        }
    })
}

/// The HTTP request Twilio would send for a webhook.
fn build(req: &WebhookRequest, target: &str, protocol: Protocol) -> Request<Full<Bytes>> {
    let uri = match protocol {
        Protocol::H1 => req.path.to_string(),
        Protocol::H2 => format!("http://{target}{}", req.path),
    };
    let mut b = Request::post(uri)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", &req.signature)
        .header("i-twilio-idempotency-token", &req.idempotency_token)
        .header("user-agent", "TwilioProxy/1.1");
    if let Some(settings) = &req.signature_settings {
        b = b.header("x-twilio-webhooks-signature-settings", settings.as_ref());
    }
    if protocol == Protocol::H1 {
        b = b.header("host", target);
    }
    b.body(Full::new(req.body.clone()))
        .expect("valid request parts")
}

/// Sends one request on a connection and reads the whole answer.
async fn send_on(sender: &mut Sender, request: Request<Full<Bytes>>) -> Result<u16, String> {
    let resp = match sender {
        Sender::H1(s) => {
            s.ready().await.map_err(|e| e.to_string())?;
            s.send_request(request).await
        }
        Sender::H2(s) => {
            s.ready().await.map_err(|e| e.to_string())?;
            s.send_request(request).await
        }
    }
    .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(status)
}

/// One connection of a run, with its own generator and findings.
pub struct HttpConn {
    target: String,
    protocol: Protocol,
    conn: Option<Conn>,
    gen: Generator,
    timeout: Duration,
    unexpected: u64,
    acked: Vec<String>,
}

impl HttpConn {
    /// Connects now, so that an unreachable target fails the run before it starts.
    pub async fn open(opts: &RunOptions, gen: Generator) -> Result<HttpConn> {
        let conn = connect(&opts.target, opts.protocol)
            .await
            .map_err(anyhow::Error::msg)
            .with_context(|| {
                format!(
                    "is sms-ingress (or the baseline) listening on {}?",
                    opts.target
                )
            })?;
        Ok(HttpConn {
            target: opts.target.clone(),
            protocol: opts.protocol,
            conn: Some(conn),
            gen,
            timeout: opts.timeout,
            unexpected: 0,
            acked: Vec::new(),
        })
    }

    /// Sends on the open connection (reconnecting if it was closed), driving its I/O meanwhile.
    async fn send(&mut self, req: &WebhookRequest) -> Result<u16, String> {
        if self.conn.is_none() {
            self.conn = Some(connect(&self.target, self.protocol).await?);
        }
        let request = build(req, &self.target, self.protocol);
        let r = {
            let Conn { sender, driver } = self.conn.as_mut().expect("connected above");
            let send = send_on(sender, request);
            tokio::pin!(send);
            tokio::select! {
                biased;
                r = &mut send => return r,
                _ = driver => {}
            }
            // The connection ended; an answer may still be buffered.
            send.await
        };
        self.conn = None;
        r
    }

    /// Checks the answer against the SPEC and remembers acknowledged keys.
    fn judge(&mut self, req: &WebhookRequest, status: u16) {
        if status == 200 {
            if let Some(key) = req.expect.ack_key() {
                self.acked.push(key.to_string());
            }
        }
        if status != req.expect.expected_status() && status != 503 {
            self.unexpected += 1;
        }
    }
}

impl Exchange for HttpConn {
    async fn exchange(&mut self) -> Result<u16, String> {
        let req = self.gen.next_request();
        let outcome = match tokio::time::timeout(self.timeout, self.send(&req)).await {
            Ok(r) => r,
            Err(_) => Err("timed out".to_string()),
        };
        match outcome {
            Ok(status) => self.judge(&req, status),
            Err(_) => self.conn = None,
        }
        outcome
    }
}

/// Prints answered/ok/errors and the last second's rate to stderr once a second.
async fn progress(live: Arc<Live>, start: Instant) {
    let mut tick = tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    let mut last = 0;
    loop {
        tick.tick().await;
        let answered = live.answered.load(Ordering::Relaxed);
        eprintln!(
            "[{:>4.0}s] answered={answered} ({}/s) ok={} errors={}",
            start.elapsed().as_secs_f64(),
            answered - last,
            live.ok.load(Ordering::Relaxed),
            live.errors.load(Ordering::Relaxed),
        );
        last = answered;
    }
}

/// How long an open-loop run that fell behind keeps sending after its end.
const GIVE_UP_AFTER: Duration = Duration::from_secs(2);

/// Runs the load: opens every connection, paces them, and merges what they measured.
pub async fn run(opts: &RunOptions, workload: Arc<Workload>) -> Result<RunResult> {
    let mut conns = Vec::with_capacity(opts.connections);
    for c in 0..opts.connections.max(1) {
        let gen = Generator::new(workload.clone(), opts.seed, opts.run_id, c as u32);
        conns.push(HttpConn::open(opts, gen).await?);
    }
    let live = Arc::new(Live::default());
    let start = Instant::now();
    let mode = match opts.rate {
        Some(rate) => Mode::Open(Schedule::new(start, rate)),
        None => Mode::Closed,
    };
    let pace = Pace {
        mode,
        end: start + opts.duration,
        give_up: start + opts.duration + GIVE_UP_AFTER,
        limit: opts.limit,
        counter: Arc::default(),
    };
    let ticker = opts
        .progress
        .then(|| tokio::spawn(progress(live.clone(), start)));
    let mut tasks = tokio::task::JoinSet::new();
    for mut conn in conns {
        let (pace, live) = (pace.clone(), live.clone());
        tasks.spawn(async move {
            let mut rec = Recorder::default();
            drive(&mut conn, &pace, &mut rec, &live).await;
            (rec, conn.unexpected, conn.acked)
        });
    }
    let mut result = RunResult {
        recorder: Recorder::default(),
        elapsed: Duration::ZERO,
        unexpected: 0,
        unsent: 0,
        acked: Vec::new(),
    };
    while let Some(joined) = tasks.join_next().await {
        let (rec, unexpected, acked) = joined.context("a connection task panicked")?;
        result.recorder.merge(&rec);
        result.unexpected += unexpected;
        result.acked.extend(acked);
    }
    result.elapsed = start.elapsed();
    if let Some(t) = ticker {
        t.abort();
    }
    if let Mode::Open(schedule) = mode {
        let due = schedule
            .due_before(pace.end)
            .min(opts.limit.unwrap_or(u64::MAX));
        result.unsent = due.saturating_sub(result.recorder.attempted());
    }
    Ok(result)
}

/// Appends acknowledged keys to the acked file, one per line.
pub fn append_acked(path: &std::path::Path, keys: &[String]) -> Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening acked file {}", path.display()))?;
    let mut w = std::io::BufWriter::new(f);
    for k in keys {
        writeln!(w, "{k}")?;
    }
    w.flush()?;
    Ok(())
}

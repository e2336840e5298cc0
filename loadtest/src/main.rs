//! The `sms-loadtest` command line: `setup`, `run`, `verify`, `baseline-server`, `ratio`,
//! `fake-twilio`, `sink-server`. Each subcommand is a thin shell over the library's modules (`fake-twilio`
//! over the test kit's `FakeTwilio`, its flags in `fake.rs`).

mod fake;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use sms_loadtest::client::{self, Protocol, RunOptions, RunResult};
use sms_loadtest::flush::Flushes;
use sms_loadtest::plan::Plan;
use sms_loadtest::report::{self, Shape, Summary};
use sms_loadtest::workload::{Mix, Workload};
use sms_loadtest::{admin, baseline, verify};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "sms-loadtest",
    version,
    about = "Drives sms-ingress like Twilio and checks nothing acknowledged was lost"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create an integration and N numbers through the admin API, and write the plan.
    Setup(SetupArgs),
    /// Send signed webhooks (closed loop, or open loop with --rate) and report latency.
    Run(RunArgs),
    /// Compare the spool with the keys a run got 200 for: lost=N duplicated=M.
    Verify(VerifyArgs),
    /// A bare hyper server answering the same TwiML: the physical-limit reference.
    BaselineServer(BaselineArgs),
    /// The same closed-loop load against the baseline and sms-ingress: throughput ratio.
    Ratio(RatioArgs),
    /// An in-memory Twilio REST API seeded from flags, for vendor checks without Twilio
    /// (docs/ADMIN.md); runs until Ctrl-C.
    FakeTwilio(fake::FakeTwilioArgs),
    /// A routing endpoint for delivery routes: verifies each delivery's Standard Webhooks
    /// signature, can fail a share of first attempts or add latency, and logs what it
    /// accepted (for `verify --delivered` and `run --delivered`); runs until Ctrl-C.
    SinkServer(SinkServerArgs),
}

#[derive(Args)]
struct SinkServerArgs {
    /// Address to listen on (port 0 picks one; the URL to configure is printed).
    #[arg(long, default_value = "127.0.0.1:18400")]
    listen: std::net::SocketAddr,
    /// The route's secret file (whsec_…, one or two lines).
    #[arg(long)]
    secret_file: PathBuf,
    /// Append every accepted delivery here as NDJSON.
    #[arg(long, default_value = "data/loadtest/delivered.ndjson")]
    out: PathBuf,
    /// Share of first attempts (per webhook-id) answered 503.
    #[arg(long, default_value_t = 0.0)]
    fail_first: f64,
    /// Share of first attempts held --hold-ms and then answered 503 (the route times out).
    #[arg(long, default_value_t = 0.0)]
    hold_first: f64,
    #[arg(long, default_value_t = 10_000)]
    hold_ms: u64,
    /// Milliseconds added to every answer.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

#[derive(Args)]
struct SetupArgs {
    /// The sms-ingress config (admin socket, public_url, region, listen, sink.dir).
    #[arg(long)]
    config: PathBuf,
    /// Admin API bearer token with integration:add and sms_number:all.
    #[arg(long, env = "SMS_LOADTEST_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
    /// Numbers to import.
    #[arg(long, default_value_t = 1000)]
    numbers: usize,
    /// Queues the numbers are spread over (loadtest-0, loadtest-1, ...).
    #[arg(long, default_value_t = 1)]
    queues: usize,
    /// Imports in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Where to write the plan.
    #[arg(long, default_value = "data/loadtest/plan.json")]
    plan: PathBuf,
    /// Seed of the generated account SID and Auth Token (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Also give the integration a SharedKey (id `loadtest-key`, secret in the plan), so
    /// that `run --shared-key-share` can sign as Twilio's Webhooks configuration API does.
    #[arg(long)]
    shared_key: bool,
}

#[derive(Args, Clone)]
struct LoadArgs {
    /// The plan written by `setup`.
    #[arg(long, default_value = "data/loadtest/plan.json")]
    plan: PathBuf,
    /// host:port to connect to (default: the plan's, i.e. the config's server.listen).
    #[arg(long)]
    target: Option<String>,
    /// h1 (HTTP/1.1 keep-alive) or h2 (prior knowledge).
    #[arg(long, value_enum, default_value = "h1")]
    protocol: Protocol,
    /// Connections, one request in flight each.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Seconds to send for.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many requests.
    #[arg(long)]
    requests: Option<u64>,
    /// Share of MMS among new deliveries.
    #[arg(long, default_value_t = 0.1)]
    mms: f64,
    /// Share of delivery reports among new deliveries.
    #[arg(long, default_value_t = 0.3)]
    status: f64,
    /// Share of requests with a wrong signature (403 expected).
    #[arg(long, default_value_t = 0.0)]
    bad_signature: f64,
    /// Share of requests for numbers not in the inventory (200, not stored).
    #[arg(long, default_value_t = 0.0)]
    unknown_number: f64,
    /// Share of exact retries of earlier deliveries (200, stored once).
    #[arg(long, default_value_t = 0.0)]
    retry: f64,
    /// Share of requests signed with the plan's SharedKey (HMAC-SHA256, with
    /// `X-Twilio-Webhooks-Signature-Settings`) instead of the Auth Token; needs
    /// `setup --shared-key`.
    #[arg(long, default_value_t = 0.0)]
    shared_key_share: f64,
    /// Seed of the generators.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seconds to wait for one answer.
    #[arg(long, default_value_t = 20.0)]
    timeout: f64,
    /// Tokio worker threads of the load generator (it shares the machine with the server).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Write the latency-percentile plot to this SVG file.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Where to record the keys that got 200 (default: acked.txt beside the plan).
    #[arg(long)]
    acked: Option<PathBuf>,
    /// No progress line on stderr.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// Open loop at this many requests per second (latency from each intended send time).
    #[arg(long)]
    rate: Option<f64>,
    /// Name in the report.
    #[arg(long, default_value = "sms-ingress")]
    label: String,
    /// The sink-server's log: after the run, wait for every acked message to be delivered
    /// (at most --delivery-wait seconds), then report end-to-end latency percentiles.
    #[arg(long)]
    delivered: Option<PathBuf>,
    #[arg(long, default_value_t = 60.0)]
    delivery_wait: f64,
}

#[derive(Args)]
struct VerifyArgs {
    /// The plan (its sink_dir is the spool root).
    #[arg(long, default_value = "data/loadtest/plan.json")]
    plan: PathBuf,
    /// Spool root, instead of the plan's.
    #[arg(long)]
    spool: Option<PathBuf>,
    /// The run's acked file (default: acked.txt beside the plan).
    #[arg(long)]
    acked: Option<PathBuf>,
    /// Read the JetStream stream of this sms-ingress config (`sink.kind = "nats"`) instead of a spool.
    #[arg(long)]
    nats_config: Option<PathBuf>,
    /// Also check the sink-server's log: every acked message delivered at least once,
    /// conversation order kept; prints end-to-end latency percentiles.
    #[arg(long)]
    delivered: Option<PathBuf>,
}

#[derive(Args)]
struct BaselineArgs {
    /// Address to listen on (port 0 picks one; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:18081")]
    listen: std::net::SocketAddr,
    /// Tokio worker threads (sms-ingress uses one per core).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args)]
struct RatioArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// Alternating baseline / sms-ingress rounds; medians are compared.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// An already running baseline server (default: start one on an ephemeral port).
    #[arg(long)]
    baseline: Option<String>,
    /// Then the same number of open-loop rounds at half of sms-ingress's median throughput
    /// (SPEC section 7's latency point), alternating baseline / sms-ingress, comparing p99.
    #[arg(long)]
    half_rate: bool,
    /// With --half-rate: this open-loop rate instead of half the measured throughput.
    #[arg(long, requires = "half_rate")]
    rate: Option<f64>,
    /// With --half-rate: sms-ingress's metrics listener, read before and after each of
    /// its open-loop rounds for the sink's own flush p99 (the config's metrics.listen).
    #[arg(long, default_value = "127.0.0.1:18090")]
    metrics: String,
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sms-loadtest: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> Result<ExitCode> {
    match Cli::parse().command {
        Cmd::Setup(a) => runtime(2)?.block_on(setup(a)),
        Cmd::Run(a) => runtime(a.load.threads)?.block_on(run(a)),
        Cmd::Verify(a) => verify_cmd(a),
        Cmd::BaselineServer(a) => baseline_server(a),
        Cmd::Ratio(a) => runtime(a.load.threads)?.block_on(ratio(a)),
        Cmd::FakeTwilio(a) => {
            runtime(2)?.block_on(fake::run(a))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::SinkServer(a) => runtime(a.threads)?.block_on(sink_server(a)),
    }
}

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?)
}

async fn setup(a: SetupArgs) -> Result<ExitCode> {
    let cfg = sms_ingress::config::Config::load(&a.config)?;
    let opts = admin::SetupOptions {
        socket: cfg.control.admin_socket.clone(),
        admin_token: a.admin_token,
        numbers: a.numbers,
        queues: a.queues,
        concurrency: a.concurrency,
        public_url: cfg.server.public_url.clone(),
        region_key: cfg.region().key.to_string(),
        target: cfg.server.listen.to_string(),
        sink_dir: cfg.sink.dir.clone(),
        shared_key: a.shared_key,
    };
    if a.numbers == 0 {
        bail!("--numbers must be at least 1");
    }
    let plan = admin::setup(&opts, a.seed.unwrap_or_else(clock_seed)).await?;
    plan.write(&a.plan)?;
    eprintln!("setup: plan written to {}", a.plan.display());
    Ok(ExitCode::SUCCESS)
}

/// A seed and run id that differ between runs.
fn clock_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(std::process::id()) << 40)
}

impl LoadArgs {
    fn mix(&self) -> Result<Mix> {
        let mix = Mix {
            mms: self.mms,
            status: self.status,
            bad_signature: self.bad_signature,
            unknown_number: self.unknown_number,
            retry: self.retry,
            shared_key: self.shared_key_share,
        };
        let shares = [
            mix.mms,
            mix.status,
            mix.bad_signature,
            mix.unknown_number,
            mix.retry,
            mix.shared_key,
        ];
        if shares.iter().any(|s| !(0.0..=1.0).contains(s)) {
            bail!("every share (--mms, --status, --bad-signature, --unknown-number, --retry, --shared-key-share) is between 0 and 1");
        }
        if mix.mms + mix.status > 1.0 || mix.bad_signature + mix.unknown_number > 1.0 {
            bail!(
                "--mms + --status, and --bad-signature + --unknown-number, must each be at most 1"
            );
        }
        Ok(mix)
    }

    fn options(&self, plan: &Plan, target: Option<&str>, rate: Option<f64>) -> Result<RunOptions> {
        if self.duration <= 0.0 || self.timeout <= 0.0 {
            bail!("--duration and --timeout must be positive");
        }
        if rate.is_some_and(|r| r <= 0.0 || !r.is_finite()) {
            bail!("--rate must be a positive number of requests per second");
        }
        Ok(RunOptions {
            target: target
                .map(str::to_string)
                .or_else(|| self.target.clone())
                .unwrap_or_else(|| plan.target.clone()),
            protocol: self.protocol,
            connections: self.connections.max(1),
            duration: Duration::from_secs_f64(self.duration),
            rate,
            limit: self.requests,
            seed: self.seed,
            run_id: clock_seed() as u32,
            timeout: Duration::from_secs_f64(self.timeout),
            progress: !self.quiet,
        })
    }

    fn acked_path(&self) -> PathBuf {
        self.acked
            .clone()
            .unwrap_or_else(|| beside(&self.plan, "acked.txt"))
    }

    fn workload(&self, plan: &Plan) -> Result<Arc<Workload>> {
        if plan.numbers.is_empty() {
            bail!("the plan has no numbers");
        }
        let mix = self.mix()?;
        if mix.shared_key > 0.0 && plan.shared_key.is_none() {
            bail!(
                "--shared-key-share needs a plan with a SharedKey: run `sms-loadtest setup --shared-key`"
            );
        }
        Ok(Arc::new(Workload::new(plan, mix, self.seed)))
    }
}

/// A file in the plan's directory.
fn beside(plan: &Path, name: &str) -> PathBuf {
    plan.parent().unwrap_or(Path::new(".")).join(name)
}

fn shape(label: &str, o: &RunOptions) -> Shape {
    Shape {
        label: label.to_string(),
        protocol: format!("{:?}", o.protocol).to_lowercase(),
        connections: o.connections,
        rate: o.rate,
    }
}

async fn run(a: RunArgs) -> Result<ExitCode> {
    let plan = Plan::read(&a.load.plan)?;
    let opts = a.load.options(&plan, None, a.rate)?;
    let acked_path = a.load.acked_path();
    let _ = std::fs::remove_file(&acked_path);
    let result = client::run(&opts, a.load.workload(&plan)?).await?;
    client::append_acked(&acked_path, &result.acked)?;
    let summary = Summary::new(&shape(&a.label, &opts), &result);
    if let Some(path) = &a.load.plot {
        write_plot(
            path,
            std::slice::from_ref(&summary),
            &format!("{} latency by percentile", a.label),
        )?;
    }
    let delivery = match &a.delivered {
        Some(path) => Some(wait_delivered(path, &acked_path, a.delivery_wait).await?),
        None => None,
    };
    if a.load.json {
        let mut v = serde_json::to_value(&summary)?;
        v["acked"] = result.acked.len().into();
        v["acked_file"] = acked_path.display().to_string().into();
        if let Some(d) = &delivery {
            v["delivery"] = serde_json::json!({"lost": d.lost, "out_of_order": d.out_of_order,
                "delivered": d.delivered, "e2e_ms": {"p50": d.latency_ms[0], "p90": d.latency_ms[1],
                "p99": d.latency_ms[2], "max": d.latency_ms[3]}});
        }
        println!("{v}");
    } else {
        if let Some(d) = &delivery {
            println!("{}", d.line());
        }
        print!("{}", report::table(std::slice::from_ref(&summary)));
        println!(
            "acked {} keys -> {}",
            result.acked.len(),
            acked_path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits (bounded) until the delivered log holds every acked key, then checks it.
async fn wait_delivered(
    path: &Path,
    acked: &Path,
    wait: f64,
) -> Result<sms_loadtest::delivered::Delivery> {
    let acked = verify::read_acked(acked)?;
    let deadline = std::time::Instant::now() + Duration::from_secs_f64(wait.max(0.0));
    loop {
        let d = sms_loadtest::delivered::check(&acked, path)?;
        if d.lost == 0 || std::time::Instant::now() >= deadline {
            return Ok(d);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `sink-server`: the test kit's receiver on `--listen`, logging to `--out`.
async fn sink_server(a: SinkServerArgs) -> Result<ExitCode> {
    use std::sync::atomic::Ordering;
    let secrets = std::fs::read_to_string(&a.secret_file)
        .with_context(|| format!("reading {}", a.secret_file.display()))?;
    if let Some(dir) = a.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let rx = sms_ingress_testkit::receiver::Receiver::new(&secrets, Some(&a.out))
        .with_context(|| format!("{}: no whsec_ secret", a.secret_file.display()))?;
    let per_mille = |share: f64| (share.clamp(0.0, 1.0) * 1000.0).round() as u64;
    let b = &rx.behaviour;
    b.fail_first_per_mille
        .store(per_mille(a.fail_first), Ordering::SeqCst);
    b.hold_first_per_mille
        .store(per_mille(a.hold_first), Ordering::SeqCst);
    b.hold_ms.store(a.hold_ms, Ordering::SeqCst);
    b.latency_ms.store(a.latency_ms, Ordering::SeqCst);
    let addr = rx.start(a.listen).await?;
    println!(
        "sink-server listening: url = \"http://{addr}/sms\"  (log: {})",
        a.out.display()
    );
    use std::io::Write;
    std::io::stdout().flush()?;
    tokio::signal::ctrl_c().await?;
    eprintln!(
        "sink-server: {} requests, {} delivered, {} bad signatures",
        rx.requests(),
        rx.accepted(),
        rx.bad_signatures()
    );
    Ok(ExitCode::SUCCESS)
}

fn write_plot(path: &Path, rows: &[Summary], title: &str) -> Result<()> {
    std::fs::write(path, report::svg(rows, title))
        .with_context(|| format!("writing plot {}", path.display()))
}

fn verify_cmd(a: VerifyArgs) -> Result<ExitCode> {
    let acked = a
        .acked
        .clone()
        .unwrap_or_else(|| beside(&a.plan, "acked.txt"));
    let v = match &a.nats_config {
        Some(path) => {
            let cfg = sms_ingress::config::Config::load(path)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let stored = runtime.block_on(verify::nats_keys(&cfg.sink.nats))?;
            verify::compare(&verify::read_acked(&acked)?, stored)
        }
        None => {
            let spool = match a.spool {
                Some(s) => s,
                None => Plan::read(&a.plan)?.sink_dir,
            };
            verify::verify(&spool, &acked)?
        }
    };
    println!("{}", v.line());
    for k in &v.lost_examples {
        println!("lost: {k}");
    }
    for k in &v.duplicated_examples {
        println!("duplicated: {k}");
    }
    let delivered_ok = match &a.delivered {
        Some(path) => {
            let d = sms_loadtest::delivered::check(&verify::read_acked(&acked)?, path)?;
            println!("{}", d.line());
            for k in &d.lost_examples {
                println!("undelivered: {k}");
            }
            d.ok()
        }
        None => true,
    };
    Ok(if v.ok() && delivered_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn baseline_server(a: BaselineArgs) -> Result<ExitCode> {
    let threads = a.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    runtime(threads)?.block_on(async {
        let (listener, addr) = baseline::bind(a.listen)
            .await
            .with_context(|| format!("binding {}", a.listen))?;
        println!("baseline-server listening on {addr}");
        use std::io::Write;
        std::io::stdout().flush()?;
        baseline::serve(listener).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// A baseline server child process, killed when dropped.
struct BaselineChild(Child);

impl Drop for BaselineChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `sms-loadtest baseline-server` on an ephemeral port and returns its address.
fn start_baseline() -> Result<(BaselineChild, String)> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(["baseline-server", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the baseline server")?;
    let stdout = child.stdout.take().expect("piped");
    let child = BaselineChild(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_string();
    if addr.is_empty() {
        bail!("the baseline server did not say where it listens");
    }
    Ok((child, addr))
}

async fn ratio(a: RatioArgs) -> Result<ExitCode> {
    let plan = Plan::read(&a.load.plan)?;
    let (_child, base_addr) = match &a.baseline {
        Some(addr) => (None, addr.clone()),
        None => {
            let (c, addr) = start_baseline()?;
            (Some(c), addr)
        }
    };
    let workload = a.load.workload(&plan)?;
    let mut base_opts = a.load.options(&plan, Some(&base_addr), None)?;
    let mut ingress_opts = a.load.options(&plan, None, None)?;
    let acked_path = a.load.acked_path();
    let _ = std::fs::remove_file(&acked_path);
    let (mut rows, mut base_rps, mut ingress_rps) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=a.rounds.max(1) {
        // New MessageSids every round: a repeat would be answered from the dedup memory.
        base_opts.run_id = base_opts.run_id.wrapping_add(2);
        ingress_opts.run_id = base_opts.run_id.wrapping_add(1);
        eprintln!("ratio: round {round}: baseline at {base_addr}");
        let b = client::run(&base_opts, workload.clone()).await?;
        let b = Summary::new(&shape(&format!("baseline#{round}"), &base_opts), &b);
        eprintln!(
            "ratio: round {round}: sms-ingress at {}",
            ingress_opts.target
        );
        let r: RunResult = client::run(&ingress_opts, workload.clone()).await?;
        client::append_acked(&acked_path, &r.acked)?;
        let r = Summary::new(&shape(&format!("ingress#{round}"), &ingress_opts), &r);
        base_rps.push(b.throughput_rps);
        ingress_rps.push(r.throughput_rps);
        rows.push(b);
        rows.push(r);
    }
    let (bm, im) = (report::median(&base_rps), report::median(&ingress_rps));
    let ratio = im / bm.max(1e-9);
    let open = if a.half_rate {
        let rate = a.rate.unwrap_or(im / 2.0);
        let mut last_run = ingress_opts.run_id;
        base_opts = a.load.options(&plan, Some(&base_addr), Some(rate))?;
        ingress_opts = a.load.options(&plan, None, Some(rate))?;
        let (mut base_p99, mut ingress_p99, mut flush_p99) = (Vec::new(), Vec::new(), Vec::new());
        for round in 1..=a.rounds.max(1) {
            base_opts.run_id = last_run.wrapping_add(1);
            ingress_opts.run_id = last_run.wrapping_add(2);
            last_run = ingress_opts.run_id;
            eprintln!("ratio: open-loop round {round} at {rate:.0}/s: baseline");
            let b = client::run(&base_opts, workload.clone()).await?;
            let b = Summary::new(&shape(&format!("baseline@{round}"), &base_opts), &b);
            eprintln!("ratio: open-loop round {round} at {rate:.0}/s: sms-ingress");
            let before = Flushes::scrape(&a.metrics);
            let r = client::run(&ingress_opts, workload.clone()).await?;
            match before.and_then(|b| Ok(Flushes::scrape(&a.metrics)?.since(&b))) {
                Ok(round) => flush_p99.extend(round.quantile_ms(0.99)),
                Err(e) => eprintln!("ratio: no sink flush p99 for this round: {e:#}"),
            }
            client::append_acked(&acked_path, &r.acked)?;
            let r = Summary::new(&shape(&format!("ingress@{round}"), &ingress_opts), &r);
            base_p99.push(b.latency_ms.p99);
            ingress_p99.push(r.latency_ms.p99);
            rows.push(b);
            rows.push(r);
        }
        let flush = (!flush_p99.is_empty()).then(|| report::median(&flush_p99));
        Some((
            rate,
            report::median(&base_p99),
            report::median(&ingress_p99),
            flush,
        ))
    } else {
        None
    };
    if let Some(path) = &a.load.plot {
        let n = rows.len();
        write_plot(
            path,
            &rows[n - 2..],
            if open.is_some() {
                "open loop at half rate: baseline vs sms-ingress (last round)"
            } else {
                "closed loop: baseline vs sms-ingress (last round)"
            },
        )?;
    }
    if a.load.json {
        let v = serde_json::json!({
            "rounds": rows,
            "baseline_rps_median": bm,
            "ingress_rps_median": im,
            "ratio": ratio,
            "open_loop": open.map(|(rate, b, i, f)| serde_json::json!({
                "rate": rate, "baseline_p99_ms_median": b, "ingress_p99_ms_median": i,
                "sink_flush_p99_ms_median": f,
                "latency_target_met": f.map(|f| i <= b + f),
            })),
            "acked_file": acked_path.display().to_string(),
        });
        println!("{v}");
    } else {
        print!("{}", report::table(&rows));
        println!("median req/s: baseline {bm:.0}, sms-ingress {im:.0}; ratio {ratio:.3} (SPEC 7: at least 0.9)");
        if let Some((rate, b, i, f)) = open {
            let verdict = match f {
                Some(f) => format!(
                    "sink flush p99 {f:.2} ms; SPEC 7 (at most {:.2} ms): {}",
                    b + f,
                    if i <= b + f { "met" } else { "not met" }
                ),
                None => format!(
                    "sink flush p99 unknown (no flushes read from {})",
                    a.metrics
                ),
            };
            println!("median p99 at {rate:.0}/s open loop: baseline {b:.2} ms, sms-ingress {i:.2} ms; {verdict}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

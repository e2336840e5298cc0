//! The `sms-ingress` command: the server and the operator tools around it.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use sms_ingress::config::Config;
use sms_ingress::form::Form;
use sms_ingress::model::crypto::MasterKey;
use sms_ingress::signature;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc: the request path allocates small short-lived buffers from many threads, where
/// glibc's allocator showed as the largest single cost in profiles (docs/PERFORMANCE.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sms-ingress",
    version,
    about = "Twilio SMS webhook ingress: verify, route, durably hand off"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct ConfigArg {
    /// Path of the TOML configuration file.
    #[arg(
        long,
        env = "SMS_INGRESS_CONFIG",
        default_value = "/etc/sms-ingress/sms-ingress.toml"
    )]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the webhook, metrics and admin listeners.
    Serve(ConfigArg),
    /// Validate the config, master key and state file, then exit.
    CheckConfig(ConfigArg),
    /// One screen for the person on call: readiness, snapshot, queues, delivery routes
    /// (read from the running server's metrics listener). Exit 0 ready, 1 not ready,
    /// 2 not reachable.
    Status(ConfigArg),
    /// Print a new random master key (base64 of 32 bytes) for control.master_key_file.
    Keygen,
    /// Read a queue's spool.
    Spool {
        #[command(subcommand)]
        command: SpoolCommand,
    },
    /// Push delivery to routing: its state, and replay of its dead letters.
    Delivery {
        #[command(subcommand)]
        command: DeliveryCommand,
    },
    /// Read a queue from the NATS sink's JetStream stream.
    Nats {
        #[command(subcommand)]
        command: NatsCommand,
    },
    /// Compute or check X-Twilio-Signature values by hand.
    Signature {
        #[command(subcommand)]
        command: SignatureCommand,
    },
}

#[derive(Subcommand)]
enum SpoolCommand {
    /// Print a queue's records as NDJSON, one per line.
    Tail {
        #[command(flatten)]
        config: ConfigArg,
        /// Queue: ORG/QUEUE, or QUEUE when one org has a queue of that name.
        #[arg(long)]
        queue: String,
        /// Keep waiting for new records.
        #[arg(long)]
        follow: bool,
        /// Byte offset of the first record to print (from a previous line's `offset`);
        /// default: the oldest record retention has kept.
        #[arg(long)]
        from: Option<u64>,
        /// Spool directory; defaults to the config's sink.dir.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Start at this consumer group's committed offset (instead of --from).
        #[arg(long, conflicts_with = "from")]
        group: Option<String>,
    },
    /// Commit (durably) that a consumer group has every record of a queue before OFFSET.
    Commit {
        #[command(flatten)]
        config: ConfigArg,
        /// Queue: ORG/QUEUE, or QUEUE when one org has a queue of that name.
        #[arg(long)]
        queue: String,
        /// The group (one of sink.consumer_groups).
        #[arg(long)]
        group: String,
        /// A record boundary: a line's `next_offset` (or `offset`).
        #[arg(long)]
        offset: u64,
        /// Spool directory; defaults to the config's sink.dir.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DeliveryCommand {
    /// Per route and queue: the cursor, the lag in records and seconds, what is in flight,
    /// the dead letters and the last error.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// One JSON object per route instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Delivers a route's dead letters again, each at most once over all replays.
    Replay {
        #[command(flatten)]
        config: ConfigArg,
        /// The route (a delivery.routes name).
        #[arg(long)]
        route: String,
    },
}

#[derive(Subcommand)]
enum NatsCommand {
    /// Print a queue's envelopes from the stream as NDJSON, like `spool tail` (`offset` is the stream sequence).
    Tail {
        #[command(flatten)]
        config: ConfigArg,
        /// Queue: ORG/QUEUE (ORG/* for all of an org's), or QUEUE when one org of the state file has it.
        #[arg(long)]
        queue: String,
        /// Keep waiting for new envelopes.
        #[arg(long)]
        follow: bool,
        /// Stream sequence of the first envelope to print (a previous line's `offset` + 1).
        #[arg(long, default_value_t = 1)]
        from: u64,
    },
}

/// Where the Auth Token comes from: a file or the environment keep it out of `ps`.
#[derive(Args)]
struct TokenArg {
    /// The Auth Token itself (visible to anyone who can run `ps`: prefer --token-file or
    /// SMS_INGRESS_TWILIO_TOKEN).
    #[arg(long, conflicts_with = "token_file")]
    token: Option<String>,
    /// A file holding the Auth Token (its first line).
    #[arg(long)]
    token_file: Option<PathBuf>,
}

impl TokenArg {
    /// --token, else --token-file, else SMS_INGRESS_TWILIO_TOKEN.
    fn token(self) -> anyhow::Result<String> {
        if let Some(t) = self.token {
            return Ok(t);
        }
        if let Some(path) = self.token_file {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("--token-file {}", path.display()))?;
            let token = text.lines().next().unwrap_or("").trim().to_string();
            anyhow::ensure!(!token.is_empty(), "--token-file {}: empty", path.display());
            return Ok(token);
        }
        match std::env::var("SMS_INGRESS_TWILIO_TOKEN") {
            Ok(t) if !t.is_empty() => Ok(t),
            _ => anyhow::bail!(
                "no Auth Token: give --token-file FILE, set SMS_INGRESS_TWILIO_TOKEN, or --token TOKEN (visible in ps)"
            ),
        }
    }
}

#[derive(Subcommand)]
enum SignatureCommand {
    /// Print the signature Twilio would send for the form body on stdin.
    Compute {
        #[arg(long)]
        url: String,
        #[command(flatten)]
        token: TokenArg,
        #[command(flatten)]
        scheme: SchemeArg,
    },
    /// Exit 0 if the signature matches the form body on stdin, 1 if not; prints the signed
    /// string and the URL form that matched.
    Verify {
        #[arg(long)]
        url: String,
        #[command(flatten)]
        token: TokenArg,
        #[command(flatten)]
        scheme: SchemeArg,
        #[arg(long)]
        signature: String,
    },
}

/// Which key signs: an Auth Token (HMAC-SHA1), or a SharedKey of Twilio's Webhooks
/// configuration API (HMAC-SHA256, what `X-Twilio-Webhooks-Signature-Settings` names).
#[derive(clap::Args)]
struct SchemeArg {
    /// The secret given (--token, --token-file or SMS_INGRESS_TWILIO_TOKEN) is a SharedKey:
    /// the same as --algorithm HMAC_SHA256.
    #[arg(long)]
    shared_key: bool,
    /// HMAC_SHA1 (Auth Token, the default) or HMAC_SHA256 (SharedKey).
    #[arg(long, default_value = "HMAC_SHA1")]
    algorithm: String,
}

impl SchemeArg {
    /// The HMAC key of `secret` under the chosen algorithm.
    fn key(&self, secret: &[u8]) -> anyhow::Result<ring::hmac::Key> {
        let sha256 = self.shared_key || self.algorithm.eq_ignore_ascii_case("HMAC_SHA256");
        if !sha256 && !self.algorithm.eq_ignore_ascii_case("HMAC_SHA1") {
            anyhow::bail!("--algorithm must be HMAC_SHA1 or HMAC_SHA256");
        }
        Ok(if sha256 {
            signature::shared_key(secret)
        } else {
            signature::key(secret)
        })
    }
}

fn main() -> ExitCode {
    // Files and directories this process creates are its own: state, journal, spool,
    // dead letters, cursors and the audit log hold message bodies or tenants' records
    // (`sink.file_mode` opens the spool to a consumer's group).
    // SAFETY: umask swaps the process's file-creation mask; nothing else runs yet.
    unsafe { libc::umask(0o077) };
    // Before any thread starts: the key leaves the environment.
    sms_ingress::model::crypto::MasterKey::take_from_env();
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sms-ingress: {}", error_chain(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes, skipping a cause its parent's message already quotes.
fn error_chain(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(c) => {
            let cfg = Config::load(&c.config)?;
            let log_reload = sms_ingress::telemetry::init_logs(&cfg.log);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(sms_ingress::server::run(cfg, c.config, log_reload))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig(c) => {
            let cfg = Config::load(&c.config)?;
            println!("{}", sms_ingress::server::check(&cfg)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen => {
            // `keygen > master.key`: the shell made the file under its umask; make it the
            // owner's alone, as `serve` requires of a key file.
            use std::os::fd::AsRawFd;
            let stdout = std::io::stdout();
            // SAFETY: fstat fills the struct it is given; fchmod changes stdout's mode.
            unsafe {
                let mut st: libc::stat = std::mem::zeroed();
                if libc::fstat(stdout.as_raw_fd(), &mut st) == 0
                    && st.st_mode & libc::S_IFMT == libc::S_IFREG
                {
                    libc::fchmod(stdout.as_raw_fd(), 0o600);
                }
            }
            println!("{}", MasterKey::generate_base64()?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Spool {
            command:
                SpoolCommand::Tail {
                    config,
                    queue,
                    follow,
                    from,
                    dir,
                    group,
                },
        } => {
            let dir = spool_dir(dir, &config)?;
            let queue = sms_ingress::sink::spool::queues::resolve(&dir, &queue)?;
            let from = match group {
                Some(g) => Some(sms_ingress::sink::spool::groups::committed(
                    &dir, &queue, &g,
                )?),
                None => from,
            };
            let mut out = std::io::stdout().lock();
            sms_ingress::sink::spool::tail(&dir, &queue, from, follow, &mut out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Spool {
            command:
                SpoolCommand::Commit {
                    config,
                    queue,
                    group,
                    offset,
                    dir,
                },
        } => {
            let dir = spool_dir(dir, &config)?;
            let queue = sms_ingress::sink::spool::queues::resolve(&dir, &queue)?;
            sms_ingress::sink::spool::groups::commit(&dir, &queue, &group, offset)?;
            println!("group {group} committed {queue} up to offset {offset}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Status(config) => {
            let cfg = Config::load(&config.config)?;
            let addr = sms_ingress::status::scrape_addr(cfg.metrics.listen);
            match sms_ingress::status::scrape(addr) {
                Ok(text) => {
                    let samples = sms_ingress::status::parse(&text);
                    print!("{}", sms_ingress::status::render(addr, &samples));
                    Ok(if sms_ingress::status::ready(&samples) {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    })
                }
                Err(e) => {
                    eprintln!("sms-ingress status: {e}");
                    Ok(ExitCode::from(2))
                }
            }
        }
        Command::Delivery {
            command: DeliveryCommand::Status { config, json },
        } => {
            let cfg = Config::load(&config.config)?;
            let reports = sms_ingress::delivery::replay::status(&cfg)?;
            if json {
                for r in &reports {
                    println!("{}", serde_json::to_string(r)?);
                }
            } else {
                print!("{}", sms_ingress::delivery::replay::render(&reports));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Delivery {
            command: DeliveryCommand::Replay { config, route },
        } => {
            let cfg = Config::load(&config.config)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            let report = runtime.block_on(sms_ingress::delivery::replay::replay(&cfg, &route))?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(if report.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Nats {
            command:
                NatsCommand::Tail {
                    config,
                    queue,
                    follow,
                    from,
                },
        } => {
            let cfg = Config::load(&config.config)?;
            let queue = org_queue(&cfg, &queue)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let mut out = std::io::stdout().lock();
            runtime.block_on(sms_ingress::sink::nats::tail(
                &cfg.sink.nats,
                &queue,
                from,
                follow,
                &mut out,
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Signature { command } => signature_tool(command),
    }
}

/// `--dir`, else the config's `sink.dir`.
fn spool_dir(dir: Option<PathBuf>, config: &ConfigArg) -> anyhow::Result<PathBuf> {
    Ok(match dir {
        Some(d) => d,
        None => Config::load(&config.config)?.sink.dir,
    })
}

/// `ORG/QUEUE` as given, or a plain `QUEUE` resolved to the one org of the state file whose
/// numbers use it.
fn org_queue(cfg: &Config, queue: &str) -> anyhow::Result<String> {
    if queue.contains('/') || queue == "*" {
        return Ok(queue.to_string());
    }
    let state = sms_ingress::control::store::file::journal::state_of(&cfg.control.state_file)?;
    let mut orgs: Vec<&str> = state
        .numbers
        .iter()
        .filter(|n| &*n.queue == queue)
        .filter_map(|n| state.integration(&n.integration_id))
        .map(|i| i.org.as_str())
        .collect();
    orgs.sort_unstable();
    orgs.dedup();
    match orgs.as_slice() {
        [org] => Ok(format!("{org}/{queue}")),
        [] => anyhow::bail!("no org's numbers use queue {queue:?}; name it ORG/QUEUE"),
        many => anyhow::bail!(
            "queue {queue:?} is ambiguous: {}; name it ORG/QUEUE",
            many.iter()
                .map(|o| format!("{o}/{queue}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn signature_tool(command: SignatureCommand) -> anyhow::Result<ExitCode> {
    let mut body = Vec::new();
    std::io::stdin()
        .read_to_end(&mut body)
        .context("reading the form body from stdin")?;
    let trimmed = body.strip_suffix(b"\n").unwrap_or(&body);
    let form = Form::parse(trimmed).context("stdin is not a form-encoded body")?;
    match command {
        SignatureCommand::Compute { url, token, scheme } => {
            let key = scheme.key(token.token()?.as_bytes())?;
            println!("{}", signature::sign_with(&key, &url, &form));
            Ok(ExitCode::SUCCESS)
        }
        SignatureCommand::Verify {
            url,
            token,
            scheme,
            signature: sig,
        } => {
            let key = scheme.key(token.token()?.as_bytes())?;
            let urls = signature::url_variants(&url).context("--url")?;
            let keys = [key];
            let matched = signature::verify(&urls, "", &form, &keys, sig.as_bytes());
            println!("signed string: {}", signature::signed_string(&url, &form));
            match matched {
                Some(i) => {
                    println!(
                        "valid (candidate {} of {}: over {})",
                        i + 1,
                        urls.len(),
                        urls[i]
                    );
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    println!("invalid; tried {} URL forms, expected:", urls.len());
                    for u in &urls {
                        println!("  {}  over {u}", signature::sign_with(&keys[0], u, &form));
                    }
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}

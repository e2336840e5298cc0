//! Configuration: one TOML file, one serde tree, defaults in one place. Every key is
//! documented in `config/example.toml`.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub metrics: MetricsConfig,
    pub control: ControlConfig,
    pub sink: SinkConfig,
    pub delivery: DeliveryConfig,
    pub dead_letters: DeadLetterConfig,
    pub queues: QueuesConfig,
    pub policy: PolicyConfig,
    pub limits: LimitsConfig,
    pub log: LogConfig,
}

/// The webhook listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Scheme, host and optional port Twilio calls; the signed URL is rebuilt from it.
    pub public_url: String,
    /// Region name from SPEC section 6; its key is the only one served.
    pub region: String,
    pub max_body_bytes: usize,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Seconds in the `Retry-After` of a 503.
    pub retry_after_secs: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".parse().unwrap(),
            public_url: "http://127.0.0.1:8080".into(),
            region: "us-east-1".into(),
            max_body_bytes: 64 * 1024,
            tls_cert: None,
            tls_key: None,
            retry_after_secs: 5,
        }
    }
}

/// The Prometheus listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: "127.0.0.1:9090".parse().unwrap(),
        }
    }
}

/// The control plane: state file, admin socket, secrets and admin tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    pub state_file: PathBuf,
    pub admin_socket: PathBuf,
    /// File holding base64 of 32 random bytes; `SMS_INGRESS_MASTER_KEY` overrides it.
    pub master_key_file: Option<PathBuf>,
    pub twilio_api_base: String,
    /// Base of Twilio's Messaging Services API (checked for "defer to sender's webhook").
    pub twilio_messaging_base: String,
    /// Run the Twilio REST checks at import and at credential changes.
    pub vendor_checks: bool,
    /// Time limit of one Twilio REST call, in milliseconds.
    pub vendor_timeout_ms: u64,
    /// JSON-lines audit log of every control-plane change.
    pub audit_log: PathBuf,
    /// Size at which the audit log is rotated (`.1`, `.2`, …); 0: never (logrotate, with
    /// SIGHUP to reopen).
    pub audit_max_bytes: u64,
    /// Rotated audit logs kept.
    pub audit_keep: usize,
    /// Watch the state file and swap in valid external edits.
    pub watch_state_file: bool,
    pub admin_tokens: Vec<AdminToken>,
    /// Where integrations and numbers live: the state file, or a NATS KV bucket for a fleet.
    pub store: StoreKind,
    /// The fleet's bucket, used when `store = "nats_kv"`.
    pub nats_kv: NatsKvConfig,
}

/// Storage of the control plane's records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// `control.state_file`, watched for external edits (one instance).
    #[default]
    File,
    /// A JetStream KV bucket every instance of a fleet watches and writes with compare-and-set.
    NatsKv,
}

/// `[control.nats_kv]`: the KV bucket shared by a fleet's control planes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsKvConfig {
    /// Server URLs; the client picks one and reconnects to any of them.
    pub servers: Vec<String>,
    /// Bucket name; created at start if missing.
    pub bucket: String,
    /// Replicas of a created bucket (1, or 3/5 in a cluster).
    pub replicas: usize,
    /// Milliseconds allowed for the connection at start.
    pub connect_timeout_ms: u64,
    /// Milliseconds one KV request (read, compare-and-set write) may take.
    pub request_timeout_ms: u64,
    /// NATS `.creds` file (user JWT and nkey seed); unset connects without credentials.
    pub credentials_file: Option<PathBuf>,
}

impl Default for NatsKvConfig {
    fn default() -> Self {
        NatsKvConfig {
            servers: vec!["nats://127.0.0.1:4222".into()],
            bucket: "sms_ingress_state".into(),
            replicas: 1,
            connect_timeout_ms: 5000,
            request_timeout_ms: 5000,
            credentials_file: None,
        }
    }
}

impl NatsKvConfig {
    /// The first key that cannot work, with the fix; checked only when the store is `nats_kv`.
    fn problem(&self) -> Option<(&'static str, String)> {
        if self.servers.is_empty() || self.servers.iter().any(|s| s.trim().is_empty()) {
            return Some((
                "control.nats_kv.servers",
                "list at least one URL such as \"nats://127.0.0.1:4222\"".into(),
            ));
        }
        if !crate::nats::valid_bucket_name(&self.bucket) {
            return Some((
                "control.nats_kv.bucket",
                "must be 1-64 of [A-Za-z0-9_-]".into(),
            ));
        }
        if !(1..=5).contains(&self.replicas) {
            return Some(("control.nats_kv.replicas", "must be between 1 and 5".into()));
        }
        if self.connect_timeout_ms == 0 {
            return Some((
                "control.nats_kv.connect_timeout_ms",
                "must be at least 1".into(),
            ));
        }
        if self.request_timeout_ms == 0 {
            return Some((
                "control.nats_kv.request_timeout_ms",
                "must be at least 1".into(),
            ));
        }
        None
    }
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            state_file: "data/state.json".into(),
            admin_socket: "data/admin.sock".into(),
            master_key_file: Some("data/master.key".into()),
            twilio_api_base: "https://api.twilio.com".into(),
            twilio_messaging_base: "https://messaging.twilio.com/v1".into(),
            vendor_checks: true,
            vendor_timeout_ms: 5000,
            audit_log: "data/audit.log".into(),
            audit_max_bytes: 100 * 1024 * 1024,
            audit_keep: 5,
            watch_state_file: true,
            admin_tokens: Vec::new(),
            store: StoreKind::File,
            nats_kv: NatsKvConfig::default(),
        }
    }
}

/// One bearer token of the admin API: its org, its hash, what it may do.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminToken {
    /// A name for audit lines; defaults to the first 8 hex digits of the hash.
    #[serde(default)]
    pub id: Option<String>,
    pub org: String,
    /// Hex SHA-256 of the bearer token; the token itself is never configured.
    pub token_sha256: String,
    pub permissions: Vec<Permission>,
}

/// The seed's admin permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
pub enum Permission {
    #[serde(rename = "integration:add")]
    IntegrationAdd,
    #[serde(rename = "integration:view")]
    IntegrationView,
    #[serde(rename = "integration:edit")]
    IntegrationEdit,
    #[serde(rename = "integration:delete")]
    IntegrationDelete,
    #[serde(rename = "sms_number:all")]
    SmsNumberAll,
}

/// Where accepted envelopes are made durable.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// `spool` (embedded default).
    pub kind: SinkKind,
    /// Spool root; one sub-directory per queue.
    pub dir: PathBuf,
    /// A segment file is closed and a new one started past this size.
    pub segment_bytes: u64,
    /// Disk blocks reserved ahead of the spool's writes (`fallocate`, size unchanged), so a
    /// batch's `fdatasync` need not also commit a block allocation; 0 turns it off.
    pub preallocate_bytes: u64,
    /// Most envelopes made durable by one fdatasync.
    pub max_batch: usize,
    /// Seconds a segment is kept once every route and group of its queue has passed it (a
    /// queue with neither keeps its segments this long).
    pub retain_secs: u64,
    /// Bytes a queue's segments may hold on disk before its webhooks answer 503
    /// (`queue_disk_full`) until its consumers catch up; 0 is no limit.
    pub max_queue_bytes: u64,
    /// Pull consumers: each commits how far it has read a queue (`spool commit`), and a
    /// segment is kept until every group of its queue has passed it.
    pub consumer_groups: Vec<ConsumerGroupConfig>,
    /// Mode of the spool's segment files (directories get `x` where `r` is), for a
    /// consumer that runs as another user in the service's group, e.g. `0o640`; unset,
    /// every file the service creates is 0600 and every directory 0700.
    pub file_mode: Option<u32>,
    /// The JetStream sink, used when `kind = "nats"`.
    pub nats: NatsConfig,
}

/// `[[sink.consumer_groups]]`: one pull consumer of a queue.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerGroupConfig {
    /// The group's name, in `spool tail --group` and `spool commit --group`.
    pub name: String,
    /// `ORG/QUEUE`, `ORG/*` for every queue of an org, or a plain `QUEUE` one org has.
    pub queue: String,
}

/// `[delivery]`: push delivery of every queue's records to routing (SPEC 3b).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Each route's cursors, status and dead letters live under `<dir>/<route>/`.
    pub dir: PathBuf,
    pub routes: Vec<RouteConfig>,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            dir: "data/delivery".into(),
            routes: Vec::new(),
        }
    }
}

/// `[[delivery.routes]]`: one queue's (or one org's queues') records to one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The route's name: its cursor, its metrics label.
    pub name: String,
    /// `ORG/QUEUE`, `ORG/*` for all of an org's queues, or a plain `QUEUE` one org has.
    pub queue: String,
    /// The `http://` or `https://` endpoint of routing.
    pub url: String,
    /// A file of one Standard Webhooks secret (`whsec_…`); a second line holds the
    /// previous one during a rotation.
    pub secret_file: PathBuf,
    /// One attempt's limit in milliseconds; a timeout is a failed attempt.
    #[serde(default = "RouteConfig::default_timeout_ms")]
    pub timeout_ms: u64,
    /// Conversations in flight at once.
    #[serde(default = "RouteConfig::default_concurrency")]
    pub concurrency: usize,
    /// Backoff between attempts of one record, from this...
    #[serde(default = "RouteConfig::default_retry_initial_ms")]
    pub retry_initial_ms: u64,
    /// ...up to this (exponential, full jitter).
    #[serde(default = "RouteConfig::default_retry_max_ms")]
    pub retry_max_ms: u64,
    /// 0: retry until it succeeds; N: after N failures the record goes to the route's
    /// dead letters and its conversation moves on.
    #[serde(default)]
    pub max_attempts: u32,
}

impl RouteConfig {
    fn default_timeout_ms() -> u64 {
        5000
    }
    fn default_concurrency() -> usize {
        16
    }
    fn default_retry_initial_ms() -> u64 {
        500
    }
    fn default_retry_max_ms() -> u64 {
        60_000
    }

    /// The first key that cannot work, with the fix.
    fn problem(&self) -> Option<(&'static str, String)> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !name_ok {
            return Some(("delivery.routes.name", "must be 1-64 of [a-z0-9_-]".into()));
        }
        if let Err(e) = QueueSelector::parse(&self.queue) {
            return Some(("delivery.routes.queue", format!("route {}: {e}", self.name)));
        }
        let url_ok = (self.url.starts_with("http://") || self.url.starts_with("https://"))
            && self
                .url
                .parse::<http::Uri>()
                .is_ok_and(|u| u.host().is_some());
        if !url_ok {
            return Some((
                "delivery.routes.url",
                format!(
                    "route {}: must be an absolute http:// or https:// URL",
                    self.name
                ),
            ));
        }
        if self.timeout_ms == 0 || self.retry_initial_ms == 0 {
            return Some((
                "delivery.routes.timeout_ms",
                format!(
                    "route {}: timeout_ms and retry_initial_ms must be at least 1",
                    self.name
                ),
            ));
        }
        if !(1..=4096).contains(&self.concurrency) {
            return Some((
                "delivery.routes.concurrency",
                format!("route {}: must be between 1 and 4096", self.name),
            ));
        }
        if self.retry_max_ms < self.retry_initial_ms {
            return Some((
                "delivery.routes.retry_max_ms",
                format!("route {}: must not be below retry_initial_ms", self.name),
            ));
        }
        None
    }
}

/// Which queues a route or group consumes, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueSelector {
    /// `ORG/QUEUE`.
    Queue { org: String, queue: String },
    /// `ORG/*`: every queue of the org, present and future.
    Org(String),
    /// `QUEUE`: the one org that has it (resolved at start).
    Plain(String),
}

impl QueueSelector {
    /// Parses `ORG/QUEUE`, `ORG/*` or `QUEUE`.
    pub fn parse(s: &str) -> Result<QueueSelector, String> {
        use crate::model::state::{is_org_name, is_stored_queue_name};
        let bad = || format!("{s:?} is not ORG/QUEUE, ORG/* or QUEUE (names of [A-Za-z0-9_-])");
        match s.split_once('/') {
            None if is_stored_queue_name(s) => Ok(QueueSelector::Plain(s.to_string())),
            Some((org, "*")) if is_org_name(org) => Ok(QueueSelector::Org(org.to_string())),
            Some((org, queue)) if is_org_name(org) && is_stored_queue_name(queue) => {
                Ok(QueueSelector::Queue {
                    org: org.to_string(),
                    queue: queue.to_string(),
                })
            }
            _ => Err(bad()),
        }
    }

    /// Whether the queue `ORG/QUEUE` (full name) is one of those selected.
    pub fn selects(&self, full: &str) -> bool {
        full.split_once('/')
            .is_some_and(|(org, queue)| self.matches(org, queue))
    }

    /// Whether the queue `org/queue` is one of those selected (a plain name is resolved first).
    pub fn matches(&self, org: &str, queue: &str) -> bool {
        match self {
            QueueSelector::Queue { org: o, queue: q } => o == org && q == queue,
            QueueSelector::Org(o) => o == org,
            QueueSelector::Plain(_) => false,
        }
    }
}

/// Sink implementations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    Spool,
    /// JetStream, shared by a fleet of instances.
    Nats,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            kind: SinkKind::Spool,
            dir: "data/spool".into(),
            segment_bytes: 64 * 1024 * 1024,
            preallocate_bytes: 8 * 1024 * 1024,
            max_batch: 1024,
            retain_secs: 7 * 24 * 3600,
            max_queue_bytes: 4 << 30,
            consumer_groups: Vec::new(),
            file_mode: None,
            nats: NatsConfig::default(),
        }
    }
}

/// `[sink.nats]`: the JetStream stream every instance of a fleet publishes to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URLs; the client picks one and reconnects to any of them.
    pub servers: Vec<String>,
    /// JetStream stream name; created at start if missing, else checked.
    pub stream: String,
    /// Subjects of the stream when it is created; they must cover `sms.>`.
    pub subjects: Vec<String>,
    /// Replicas of a created stream (1, or 3/5 in a cluster); an existing one needs at least this many.
    pub replicas: usize,
    /// Seconds a message is kept in a created stream; 0 keeps it until other limits apply.
    pub max_age_secs: u64,
    /// Seconds JetStream drops a repeated `Nats-Msg-Id` (the fleet-wide retry dedup).
    pub duplicate_window_secs: u64,
    /// Milliseconds a batch may wait for all its publish acks before it answers 503.
    pub publish_timeout_ms: u64,
    /// Milliseconds allowed for the connection at start.
    pub connect_timeout_ms: u64,
    /// NATS `.creds` file (user JWT and nkey seed); unset connects without credentials.
    pub credentials_file: Option<PathBuf>,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            servers: vec!["nats://127.0.0.1:4222".into()],
            stream: "SMS".into(),
            subjects: vec!["sms.>".into()],
            replicas: 1,
            max_age_secs: 7 * 24 * 3600,
            duplicate_window_secs: 600,
            publish_timeout_ms: 5000,
            connect_timeout_ms: 5000,
            credentials_file: None,
        }
    }
}

impl NatsConfig {
    /// The first key that cannot work, with the fix; checked only when the sink is `nats`.
    fn problem(&self) -> Option<(&'static str, String)> {
        use crate::nats::{subjects_cover, valid_stream_name, SUBJECT_ROOT};
        if self.servers.is_empty() || self.servers.iter().any(|s| s.trim().is_empty()) {
            return Some((
                "sink.nats.servers",
                "list at least one URL such as \"nats://127.0.0.1:4222\"".into(),
            ));
        }
        if !valid_stream_name(&self.stream) {
            return Some((
                "sink.nats.stream",
                "must be 1-255 characters without spaces, '.', '*', '>', '/' or '\\'".into(),
            ));
        }
        if !subjects_cover(&self.subjects, SUBJECT_ROOT) {
            return Some((
                "sink.nats.subjects",
                format!("must cover {SUBJECT_ROOT:?}, where envelopes are published"),
            ));
        }
        if !(1..=5).contains(&self.replicas) {
            return Some(("sink.nats.replicas", "must be between 1 and 5".into()));
        }
        if self.duplicate_window_secs == 0 {
            return Some((
                "sink.nats.duplicate_window_secs",
                "must be at least 1".into(),
            ));
        }
        if self.max_age_secs != 0 && self.duplicate_window_secs > self.max_age_secs {
            return Some((
                "sink.nats.duplicate_window_secs",
                "must not exceed sink.nats.max_age_secs".into(),
            ));
        }
        if self.publish_timeout_ms == 0 {
            return Some(("sink.nats.publish_timeout_ms", "must be at least 1".into()));
        }
        if self.connect_timeout_ms == 0 {
            return Some(("sink.nats.connect_timeout_ms", "must be at least 1".into()));
        }
        None
    }
}

/// Webhooks dropped for an inactive integration or a disabled number, kept for replay.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLetterConfig {
    /// Root directory: one spool per integration.
    pub dir: PathBuf,
    /// Most dead letters kept per integration; beyond it webhooks get 503 (nothing is dropped unstored).
    pub max_per_integration: u64,
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        DeadLetterConfig {
            dir: "data/dead-letters".into(),
            max_per_integration: 100_000,
        }
    }
}

/// The per-queue channels between request tasks and sink workers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueuesConfig {
    /// Envelopes waiting per queue before webhooks get 503.
    pub capacity: usize,
    /// Queues one org's numbers may use: each costs a worker thread, files and metric
    /// series, and tenants name them (an import naming one more is 422 `queue_limit`).
    pub max_per_org: usize,
}

impl Default for QueuesConfig {
    fn default() -> Self {
        QueuesConfig {
            capacity: 4096,
            max_per_org: 100,
        }
    }
}

/// Tenant policy applied after verification.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Seconds an accepted delivery is remembered to suppress Twilio's retries.
    pub dedup_window_secs: u64,
    /// Upper bound on remembered deliveries; the oldest go first.
    pub dedup_max_entries: usize,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            dedup_window_secs: 600,
            dedup_max_entries: 1_000_000,
        }
    }
}

/// Connection-level limits of the webhook listener; each counted when it fires.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Connections served at once; further ones are closed at accept.
    pub max_connections: usize,
    /// Time a client has to send a complete HTTP/1 request head (slowloris).
    pub header_read_timeout_ms: u64,
    /// Time from request head to response; past it the answer is 503 + Retry-After.
    pub request_timeout_ms: u64,
    /// A connection with no bytes read or written for this long is closed.
    pub idle_timeout_ms: u64,
    /// Time a client has to finish the TLS handshake.
    pub tls_handshake_timeout_ms: u64,
    /// Largest HTTP/1 request head, and HTTP/2 header list, in bytes.
    pub max_header_bytes: usize,
    /// HTTP/2 streams open at once per connection.
    pub h2_max_concurrent_streams: u32,
    /// On SIGTERM/SIGINT: time allowed for in-flight requests and sinks to finish.
    pub shutdown_grace_ms: u64,
    /// Webhook body bytes being read or waiting for durability, all connections together:
    /// bodies are read before their signature can be checked, so a flood of unsigned
    /// ones is bounded here (a request past it is 503 before its body is read).
    pub max_inflight_body_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 10_000,
            header_read_timeout_ms: 10_000,
            request_timeout_ms: 14_000,
            idle_timeout_ms: 60_000,
            tls_handshake_timeout_ms: 10_000,
            max_header_bytes: 16 * 1024,
            h2_max_concurrent_streams: 256,
            shutdown_grace_ms: 10_000,
            max_inflight_body_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Log output.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `json` (one object a line) or `text`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `sms_ingress=debug`; `RUST_LOG` overrides.
    pub level: String,
}

/// Log encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Json,
    Text,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Json,
            level: "info".into(),
        }
    }
}

/// Why a configuration cannot be used; the message names the key and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config {path}: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    #[error("config key {key}: {problem}")]
    Invalid { key: &'static str, problem: String },
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let cfg: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what serde cannot: cross-key rules and value ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, problem: &str| {
            Err(ConfigError::Invalid {
                key,
                problem: problem.to_string(),
            })
        };
        if crate::model::regions::by_name(&self.server.region).is_none() {
            let names: Vec<_> = crate::model::regions::REGIONS
                .iter()
                .map(|r| r.name)
                .collect();
            return invalid(
                "server.region",
                &format!("unknown region; one of {}", names.join(", ")),
            );
        }
        if let Err(e) = crate::signature::PublicUrl::parse(&self.server.public_url) {
            return invalid("server.public_url", &e.to_string());
        }
        if self.server.max_body_bytes < 1024 || self.server.max_body_bytes > 16 * 1024 * 1024 {
            return invalid("server.max_body_bytes", "must be between 1024 and 16777216");
        }
        if self.server.tls_cert.is_some() != self.server.tls_key.is_some() {
            return invalid(
                "server.tls_cert",
                "set both server.tls_cert and server.tls_key, or neither",
            );
        }
        if self.queues.capacity == 0 {
            return invalid("queues.capacity", "must be at least 1");
        }
        if self.limits.max_inflight_body_bytes < self.server.max_body_bytes {
            return invalid(
                "limits.max_inflight_body_bytes",
                "must be at least server.max_body_bytes (else no body fits)",
            );
        }
        if self.queues.max_per_org == 0 {
            return invalid("queues.max_per_org", "must be at least 1");
        }
        let l = &self.limits;
        let timeouts = [
            ("limits.header_read_timeout_ms", l.header_read_timeout_ms),
            ("limits.request_timeout_ms", l.request_timeout_ms),
            ("limits.idle_timeout_ms", l.idle_timeout_ms),
            (
                "limits.tls_handshake_timeout_ms",
                l.tls_handshake_timeout_ms,
            ),
        ];
        if let Some((key, _)) = timeouts.iter().find(|(_, v)| *v == 0) {
            return invalid(key, "must be at least 1 (milliseconds)");
        }
        if l.max_connections == 0 || l.h2_max_concurrent_streams == 0 {
            return invalid(
                "limits.max_connections",
                "max_connections and h2_max_concurrent_streams must be at least 1",
            );
        }
        if l.max_header_bytes < 1024 {
            return invalid("limits.max_header_bytes", "must be at least 1024");
        }
        if self.control.audit_keep == 0 || self.control.audit_keep > 1000 {
            return invalid("control.audit_keep", "must be between 1 and 1000");
        }
        if self.control.vendor_timeout_ms == 0 {
            return invalid("control.vendor_timeout_ms", "must be at least 1");
        }
        if self.sink.max_batch == 0 {
            return invalid("sink.max_batch", "must be at least 1");
        }
        if self.dead_letters.max_per_integration == 0 {
            return invalid("dead_letters.max_per_integration", "must be at least 1");
        }
        if self.sink.segment_bytes < 4096 {
            return invalid("sink.segment_bytes", "must be at least 4096");
        }
        if let Some(mode) = self.sink.file_mode {
            if mode & !0o666 != 0 || mode & 0o600 != 0o600 || mode & 0o002 != 0 {
                return invalid(
                    "sink.file_mode",
                    "must give the owner read and write, others no write, and no one execute \
                     (an octal TOML integer such as 0o640)",
                );
            }
        }
        if self.sink.kind == SinkKind::Nats {
            if let Some((key, problem)) = self.sink.nats.problem() {
                return invalid(key, &problem);
            }
        }
        if self.control.store == StoreKind::NatsKv {
            if let Some((key, problem)) = self.control.nats_kv.problem() {
                return invalid(key, &problem);
            }
        }
        let mut names = std::collections::HashSet::new();
        for r in &self.delivery.routes {
            if let Some((key, problem)) = r.problem() {
                return invalid(key, &problem);
            }
            if !names.insert(&r.name) {
                return invalid(
                    "delivery.routes.name",
                    &format!("{} is given twice", r.name),
                );
            }
        }
        let mut groups = std::collections::HashSet::new();
        for g in &self.sink.consumer_groups {
            let ok = crate::model::state::is_stored_queue_name(&g.name);
            if !ok {
                return invalid("sink.consumer_groups.name", "must be 1-64 of [A-Za-z0-9_-]");
            }
            if let Err(e) = QueueSelector::parse(&g.queue) {
                return invalid(
                    "sink.consumer_groups.queue",
                    &format!("group {}: {e}", g.name),
                );
            }
            if !groups.insert((&g.name, &g.queue)) {
                return invalid(
                    "sink.consumer_groups",
                    &format!("group {} is given twice", g.name),
                );
            }
        }
        for t in &self.control.admin_tokens {
            let ok =
                t.token_sha256.len() == 64 && t.token_sha256.bytes().all(|b| b.is_ascii_hexdigit());
            if !ok {
                return invalid(
                    "control.admin_tokens.token_sha256",
                    "must be 64 hex digits: printf %s \"$TOKEN\" | sha256sum",
                );
            }
            if !crate::model::state::is_org_name(&t.org) {
                return invalid(
                    "control.admin_tokens.org",
                    "must be 1-64 of [A-Za-z0-9_-] (it names the org's queues)",
                );
            }
        }
        Ok(())
    }

    /// The configured region (validated at load).
    pub fn region(&self) -> &'static crate::model::regions::Region {
        crate::model::regions::by_name(&self.server.region).expect("validated region")
    }
}

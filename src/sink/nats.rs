//! The NATS sink: the fleet's alternative to the spool, and the last step of the request
//! path when `sink.kind = "nats"`. A queue's worker publishes its batch to JetStream on
//! `sms.{kind}.{org}.{queue}` with every publish in flight at once, then waits for every
//! publish ack; only then are the webhooks acknowledged. `Nats-Msg-Id` carries the
//! envelope's dedup key, so a Twilio retry that lands on another instance of the fleet is
//! stored once (within the stream's duplicate window). `nats tail` reads a queue back as
//! the same NDJSON as `spool tail`.
//!
//! The worker is an OS thread, not a runtime thread: it drives the publishes with
//! `Handle::block_on` on the server's runtime, where the client's connection task runs.

use crate::config::NatsConfig;
use crate::envelope::{DecodeError, Envelope, Kind};
use crate::nats::{subjects_cover, SUBJECT_ROOT};
use crate::sink::{QueueSink, SinkError};
use async_nats::connection::State;
use async_nats::jetstream::{self, context::PublishError, stream};
use async_nats::Subject;
use bytes::Bytes;
use futures_util::StreamExt;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Handle;

/// Header naming the envelope's org, for consumers that route without decoding.
pub(crate) const HEADER_ORG: &str = "Sms-Org";
/// Header naming the envelope's queue.
pub(crate) const HEADER_QUEUE: &str = "Sms-Queue";
/// Header naming the envelope's kind (`inbound` or `status`).
pub(crate) const HEADER_KIND: &str = "Sms-Kind";
/// Header naming the integration the webhook was verified with.
pub(crate) const HEADER_INTEGRATION: &str = "Sms-Integration";

/// Why the NATS sink could not start, store or read; each variant says what to look at.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error(transparent)]
    Connect(#[from] crate::nats::ConnectError),
    #[error("JetStream stream {stream}: {detail}")]
    Stream { stream: String, detail: String },
    #[error("JetStream stream {stream} exists but cannot be used: {problem}; fix the stream (nats stream edit/info) or set sink.nats.stream to another name")]
    Incompatible { stream: String, problem: String },
    #[error("NATS connection is down; nothing published")]
    Disconnected,
    #[error("publish to {subject} failed: {source}")]
    Publish {
        subject: Subject,
        #[source]
        source: PublishError,
    },
    #[error("publish ack came from stream {got:?}, expected {expected:?}")]
    WrongStream { got: String, expected: String },
    #[error(
        "publish acks of the batch did not all arrive within {0:?} (sink.nats.publish_timeout_ms)"
    )]
    Timeout(Duration),
    #[error("reading stream {stream}: {detail}")]
    Read { stream: String, detail: String },
    #[error("message {sequence} of stream {stream} is not an envelope: {source}")]
    Decode {
        stream: String,
        sequence: u64,
        #[source]
        source: DecodeError,
    },
    #[error("writing tail output: {0}")]
    Output(#[source] std::io::Error),
}

impl From<NatsError> for SinkError {
    fn from(e: NatsError) -> SinkError {
        SinkError::Unavailable(Box::new(e))
    }
}

/// The subject of a queue's envelopes of one kind.
pub(crate) fn subject(kind: Kind, queue: &str) -> String {
    format!("sms.{}.{}", kind.as_str(), tokens(queue))
}

/// The subject tokens of `ORG/QUEUE` (`ORG.QUEUE`; `*` stays a wildcard). A `.` in a
/// queue name would split its token, so it is written `~` (no queue or org name has one).
fn tokens(queue: &str) -> String {
    queue.replace('.', "~").replace('/', ".")
}

/// The subjects of a queue's envelopes of both kinds: `ORG/QUEUE`, `ORG/*`, or `*` (all).
pub(crate) fn filter(queue: &str) -> String {
    match queue {
        "*" => SUBJECT_ROOT.to_string(),
        q => format!("sms.*.{}", tokens(q)),
    }
}

/// The stream's replica count as a gauge, and a warning below 3: with fewer, a 200 is
/// only as durable as one or two servers' disks (docs/FLEET.md, "Durability").
fn report_replicas(stream: &str, replicas: usize) {
    metrics::gauge!("sms_ingress_nats_stream_replicas").set(replicas as f64);
    if replicas < 3 {
        tracing::warn!(
            stream,
            replicas,
            "nats: the stream has fewer than 3 replicas; a server's loss or a power cut can lose acknowledged messages (docs/FLEET.md)"
        );
    }
}

pub(crate) fn message_id(env: &Envelope) -> String {
    format!("{}:{}", env.kind.as_str(), env.dedup_key())
}

/// What a stream created by this service looks like.
pub fn stream_config(cfg: &NatsConfig) -> stream::Config {
    stream::Config {
        name: cfg.stream.clone(),
        subjects: cfg.subjects.clone(),
        num_replicas: cfg.replicas,
        max_age: Duration::from_secs(cfg.max_age_secs),
        duplicate_window: Duration::from_secs(cfg.duplicate_window_secs),
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        description: Some("sms-ingress envelopes (sms.{kind}.{org}.{queue})".into()),
        ..Default::default()
    }
}

/// Why an existing stream cannot hold acknowledged envelopes as configured, if it cannot.
pub(crate) fn incompatibility(existing: &stream::Config, cfg: &NatsConfig) -> Option<String> {
    let want_window = Duration::from_secs(cfg.duplicate_window_secs);
    if !subjects_cover(&existing.subjects, SUBJECT_ROOT) {
        return Some(format!(
            "its subjects {:?} do not cover {SUBJECT_ROOT:?}",
            existing.subjects
        ));
    }
    if existing.mirror.is_some() {
        return Some("it is a mirror, which takes no publishes".into());
    }
    if existing.sealed {
        return Some("it is sealed".into());
    }
    if existing.no_ack {
        return Some("no_ack is set, so publishes are never acknowledged".into());
    }
    if existing.storage != stream::StorageType::File {
        return Some("memory storage does not survive a restart of nats-server".into());
    }
    if existing.num_replicas < cfg.replicas {
        return Some(format!(
            "{} replicas, fewer than sink.nats.replicas = {}",
            existing.num_replicas, cfg.replicas
        ));
    }
    if existing.duplicate_window < want_window {
        return Some(format!(
            "duplicate_window {:?} is shorter than sink.nats.duplicate_window_secs = {}; retries would be stored twice",
            existing.duplicate_window, cfg.duplicate_window_secs
        ));
    }
    None
}

/// The connected client and the checked stream, shared by every queue's sink.
#[derive(Clone)]
pub struct NatsConnection {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: Arc<str>,
    publish_timeout: Duration,
    handle: Handle,
}

impl NatsConnection {
    /// Connects (must run inside the server's runtime); reconnection afterwards is automatic and unbounded.
    pub async fn connect(cfg: &NatsConfig) -> Result<NatsConnection, NatsError> {
        let endpoint = crate::nats::Endpoint {
            section: "sink.nats",
            servers: &cfg.servers,
            credentials_file: cfg.credentials_file.as_deref(),
            connect_timeout: Duration::from_millis(cfg.connect_timeout_ms),
            request_timeout: Duration::from_millis(cfg.publish_timeout_ms),
            client_name: "sms-ingress",
            log_prefix: "nats",
            while_disconnected: "webhooks answer 503 until reconnected",
        };
        let (client, _) = crate::nats::connect(&endpoint).await?;
        let publish_timeout = Duration::from_millis(cfg.publish_timeout_ms);
        let js = jetstream::ContextBuilder::new()
            .timeout(publish_timeout)
            .build(client.clone());
        Ok(NatsConnection {
            client,
            js,
            stream: Arc::from(cfg.stream.as_str()),
            publish_timeout,
            handle: Handle::current(),
        })
    }

    /// Creates the stream if it is missing, else checks that it can hold what is acknowledged.
    pub async fn ensure_stream(&self, cfg: &NatsConfig) -> Result<(), NatsError> {
        let existing = match self.js.get_stream(&cfg.stream).await {
            Ok(stream) => stream,
            Err(e) if stream_not_found(&e) => return self.create_stream(cfg).await,
            Err(e) => return Err(self.stream_error(e)),
        };
        self.check_stream(&existing.cached_info().config, cfg)
    }

    /// Creates the stream; if another instance created it meanwhile, checks that one instead.
    async fn create_stream(&self, cfg: &NatsConfig) -> Result<(), NatsError> {
        let created = self.js.create_stream(stream_config(cfg)).await;
        let Err(create_error) = created else {
            tracing::info!(stream = %self.stream, subjects = ?cfg.subjects, replicas = cfg.replicas, "nats: created stream");
            report_replicas(&self.stream, cfg.replicas);
            return Ok(());
        };
        match self.js.get_stream(&cfg.stream).await {
            Ok(existing) => self.check_stream(&existing.cached_info().config, cfg),
            Err(_) => Err(self.stream_error(create_error)),
        }
    }

    fn check_stream(&self, existing: &stream::Config, cfg: &NatsConfig) -> Result<(), NatsError> {
        if let Some(problem) = incompatibility(existing, cfg) {
            return Err(NatsError::Incompatible {
                stream: cfg.stream.clone(),
                problem,
            });
        }
        tracing::info!(stream = %self.stream, subjects = ?existing.subjects, replicas = existing.num_replicas, "nats: using existing stream");
        report_replicas(&self.stream, existing.num_replicas);
        Ok(())
    }

    fn stream_error(&self, e: impl std::fmt::Display) -> NatsError {
        NatsError::Stream {
            stream: self.stream.to_string(),
            detail: e.to_string(),
        }
    }

    /// The JetStream context, for consumers of the stream in this process.
    pub(crate) fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Whether the client is connected right now (the `/readyz` probe).
    pub(crate) fn is_connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// The sink of one queue; cheap, no I/O.
    pub fn queue_sink(&self, queue: &str) -> NatsQueueSink {
        NatsQueueSink {
            conn: self.clone(),
            subjects: [
                Subject::from(subject(Kind::Inbound, queue)),
                Subject::from(subject(Kind::Status, queue)),
            ],
            batch_size: metrics::histogram!("sms_ingress_sink_batch_size", "queue" => queue.to_owned()),
            flush_seconds: metrics::histogram!("sms_ingress_sink_flush_seconds", "queue" => queue.to_owned()),
            duplicates: metrics::counter!("sms_ingress_nats_duplicate_acks_total", "queue" => queue.to_owned()),
        }
    }

    /// Publishes every message, then awaits every ack; all within the publish timeout.
    async fn publish_all(
        &self,
        messages: Vec<(Subject, jetstream::message::PublishMessage)>,
    ) -> Result<u64, NatsError> {
        let all = async {
            let mut acks = Vec::with_capacity(messages.len());
            for (subject, message) in messages {
                match self.js.send_publish(subject.clone(), message).await {
                    Ok(ack) => acks.push((subject, ack)),
                    Err(source) => return Err(NatsError::Publish { subject, source }),
                }
            }
            let mut duplicates = 0;
            for (subject, ack) in acks {
                let ack = ack
                    .await
                    .map_err(|source| NatsError::Publish { subject, source })?;
                if *ack.stream != *self.stream {
                    return Err(NatsError::WrongStream {
                        got: ack.stream,
                        expected: self.stream.to_string(),
                    });
                }
                duplicates += u64::from(ack.duplicate);
            }
            Ok(duplicates)
        };
        tokio::time::timeout(self.publish_timeout, all)
            .await
            .map_err(|_| NatsError::Timeout(self.publish_timeout))?
    }
}

fn stream_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(err)
        if err.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// One queue's publisher, driven by that queue's worker thread.
pub struct NatsQueueSink {
    conn: NatsConnection,
    /// `sms.inbound.{queue}`, `sms.status.{queue}`.
    subjects: [Subject; 2],
    batch_size: metrics::Histogram,
    flush_seconds: metrics::Histogram,
    duplicates: metrics::Counter,
}

impl NatsQueueSink {
    /// The message of one envelope: encoded payload, dedup id and informative headers.
    fn message(&self, env: &Envelope) -> (Subject, jetstream::message::PublishMessage) {
        let mut payload = Vec::with_capacity(env.body.len() + 512);
        env.encode(&mut payload);
        let subject = match env.kind {
            Kind::Inbound => self.subjects[0].clone(),
            Kind::Status => self.subjects[1].clone(),
        };
        let message = jetstream::message::PublishMessage::build()
            .payload(Bytes::from(payload))
            .message_id(message_id(env))
            .header(HEADER_KIND, env.kind.as_str())
            .header(HEADER_ORG, &*env.org)
            .header(HEADER_QUEUE, &*env.queue)
            .header(HEADER_INTEGRATION, &*env.integration_id);
        (subject, message)
    }
}

impl QueueSink for NatsQueueSink {
    /// Publishes the whole batch pipelined; `Ok` only when every publish ack (or duplicate ack) came back.
    fn write_batch(&mut self, batch: &[&Envelope]) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        if !self.conn.is_connected() {
            return Err(NatsError::Disconnected.into());
        }
        let messages = batch.iter().map(|env| self.message(env)).collect();
        let started = Instant::now();
        let duplicates = self.conn.handle.block_on(self.conn.publish_all(messages))?;
        self.batch_size.record(batch.len() as f64);
        self.flush_seconds.record(started.elapsed().as_secs_f64());
        self.duplicates.increment(duplicates);
        Ok(())
    }

    /// Healthy again as soon as the client has reconnected.
    fn check(&mut self) -> Result<(), SinkError> {
        if self.conn.is_connected() {
            Ok(())
        } else {
            Err(SinkError::Unavailable("nats: not connected".into()))
        }
    }
}

/// Prints a queue's envelopes as NDJSON (`offset` = stream sequence) from sequence `from`
/// (1 = the start); without `follow`, stops at the last message present. Returns how many.
pub async fn tail(
    cfg: &NatsConfig,
    queue: &str,
    from: u64,
    follow: bool,
    out: &mut impl Write,
) -> Result<u64, NatsError> {
    let conn = NatsConnection::connect(cfg).await?;
    let read_error = |e: &dyn std::fmt::Display| NatsError::Read {
        stream: cfg.stream.clone(),
        detail: e.to_string(),
    };
    let stream = conn
        .js
        .get_stream(&cfg.stream)
        .await
        .map_err(|e| read_error(&e))?;
    let mut consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: filter(queue),
            deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from.max(1),
            },
            ..Default::default()
        })
        .await
        .map_err(|e| read_error(&e))?;
    let pending = consumer
        .info()
        .await
        .map_err(|e| read_error(&e))?
        .num_pending;
    if pending == 0 && !follow {
        return Ok(0);
    }
    let mut messages = consumer.messages().await.map_err(|e| read_error(&e))?;
    let mut printed = 0;
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| read_error(&e))?;
        let info = message.info().map_err(|e| read_error(&e))?;
        let (sequence, left) = (info.stream_sequence, info.pending);
        let env = Envelope::decode(&message.payload).map_err(|source| NatsError::Decode {
            stream: cfg.stream.clone(),
            sequence,
            source,
        })?;
        writeln!(out, "{}", env.to_json(sequence, sequence + 1)).map_err(NatsError::Output)?;
        out.flush().map_err(NatsError::Output)?;
        printed += 1;
        if left == 0 && !follow {
            break;
        }
    }
    Ok(printed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_stream_is_compatible_and_changes_are_named() {
        let cfg = NatsConfig::default();
        let good = stream_config(&cfg);
        assert_eq!(incompatibility(&good, &cfg), None);
        type Change = fn(&mut stream::Config);
        let cases: [(&str, Change); 6] = [
            ("do not cover", |c| {
                c.subjects = vec!["sms.inbound.>".into()]
            }),
            ("sealed", |c| c.sealed = true),
            ("no_ack", |c| c.no_ack = true),
            ("memory", |c| c.storage = stream::StorageType::Memory),
            ("duplicate_window", |c| {
                c.duplicate_window = Duration::from_secs(120)
            }),
            ("mirror", |c| c.mirror = Some(Default::default())),
        ];
        for (needle, change) in cases {
            let mut c = good.clone();
            change(&mut c);
            let problem = incompatibility(&c, &cfg).expect(needle);
            assert!(problem.contains(needle), "{problem}");
        }
        let r3 = NatsConfig {
            replicas: 3,
            ..NatsConfig::default()
        };
        assert!(incompatibility(&good, &r3).unwrap().contains("replicas"));
        let mut wide = good.clone();
        wide.subjects = vec![">".into()];
        wide.duplicate_window = Duration::from_secs(3600);
        assert_eq!(incompatibility(&wide, &cfg), None);
    }

    #[test]
    fn message_ids_keep_kinds_apart() {
        let mut env = Envelope {
            message_sid: "SM1".into(),
            account_sid: "AC1".into(),
            ..crate::fixtures::envelope()
        };
        assert_eq!(message_id(&env), "inbound:AC1:SM1");
        let other_tenant = Envelope {
            account_sid: "AC2".into(),
            ..env.clone()
        };
        assert_ne!(
            message_id(&other_tenant),
            message_id(&env),
            "scoped by account"
        );
        env.kind = Kind::Status;
        env.message_status = Some("delivered".into());
        assert_eq!(message_id(&env), "status:AC1:SM1:delivered");
        assert_eq!(
            subject(Kind::Status, "org-a/support"),
            "sms.status.org-a.support"
        );
        assert_eq!(filter("org-a/*"), "sms.*.org-a.*");
        assert_eq!(filter("*"), "sms.>");
    }
}

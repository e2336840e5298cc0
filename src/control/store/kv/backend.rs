//! The bucket over NATS: connect, open (or create) the bucket, load it whole through a
//! watch that stays open, compare-and-set writes, and reads after a lost compare-and-set.

use super::records::{Change, Mirror, Op};
use crate::config::NatsKvConfig;
use async_nats::jetstream::{self, context::PublishErrorKind, kv};
use bytes::Bytes;
use futures_util::StreamExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Handle;

/// Why the bucket could not be reached, loaded or written; each says what to look at.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The connection could not be made (credentials, addresses, no server answering).
    #[error(transparent)]
    Connect(#[from] crate::nats::ConnectError),
    /// The bucket can neither be found nor created.
    #[error("KV bucket {bucket}: {detail}")]
    Bucket { bucket: String, detail: String },
    /// Reading the bucket (whole, or some keys) failed.
    #[error("loading KV bucket {bucket}: {detail}")]
    Load { bucket: String, detail: String },
    /// Someone else wrote the key since this instance last saw it.
    #[error("key {0} changed concurrently (compare-and-set lost)")]
    Conflict(String),
    /// A write failed for another reason than a lost compare-and-set.
    #[error("writing key {key}: {detail}")]
    Write { key: String, detail: String },
    /// NATS did not answer in time.
    #[error("KV request did not complete within {0:?} (control.nats_kv.request_timeout_ms)")]
    Timeout(Duration),
}

/// The connected client and the bucket; shared by the store (writes) and the watcher.
pub(crate) struct KvBackend {
    client: async_nats::Client,
    js: jetstream::Context,
    store: kv::Store,
    bucket: String,
    timeout: Duration,
    handle: Handle,
    /// Bumped at every disconnect; the watcher reloads the bucket when it moved.
    disconnects: Arc<AtomicU64>,
}

impl std::fmt::Debug for KvBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvBackend")
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

impl KvBackend {
    /// Connects and opens (or creates) the bucket; must run inside the server's runtime.
    pub(crate) async fn connect(cfg: &NatsKvConfig) -> Result<KvBackend, KvError> {
        let endpoint = crate::nats::Endpoint {
            section: "control.nats_kv",
            servers: &cfg.servers,
            credentials_file: cfg.credentials_file.as_deref(),
            connect_timeout: Duration::from_millis(cfg.connect_timeout_ms),
            request_timeout: Duration::from_millis(cfg.request_timeout_ms),
            client_name: "sms-ingress-control",
            log_prefix: "control nats",
            while_disconnected: "the bucket is reloaded whole after reconnecting",
        };
        let (client, disconnects) = crate::nats::connect(&endpoint).await?;
        let timeout = Duration::from_millis(cfg.request_timeout_ms);
        let js = jetstream::ContextBuilder::new()
            .timeout(timeout)
            .build(client.clone());
        let store = open_bucket(&js, cfg).await?;
        Ok(KvBackend {
            client,
            js,
            store,
            bucket: cfg.bucket.clone(),
            timeout,
            handle: Handle::current(),
            disconnects,
        })
    }

    /// Whether the client is connected right now.
    pub(crate) fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn load_error(&self, e: impl std::fmt::Display) -> KvError {
        KvError::Load {
            bucket: self.bucket.clone(),
            detail: e.to_string(),
        }
    }

    /// Reads the whole bucket (the last entry of every key, deletes included) through a
    /// watch that then stays open for what comes next.
    pub(crate) async fn load(&self) -> Result<(Vec<Change>, kv::Watch), KvError> {
        let mut stream = self.store.stream.clone();
        let present = stream
            .info()
            .await
            .map_err(|e| self.load_error(e))?
            .state
            .messages;
        let mut watch = self
            .store
            .watch_with_history(">")
            .await
            .map_err(|e| self.load_error(e))?;
        let changes = match present {
            0 => Vec::new(),
            _ => self.read_until_current(&mut watch).await?,
        };
        Ok((changes, watch))
    }

    /// Entries of a watch with history until the one the bucket had last when it began.
    async fn read_until_current(&self, watch: &mut kv::Watch) -> Result<Vec<Change>, KvError> {
        let mut changes = Vec::new();
        loop {
            let entry = tokio::time::timeout(self.timeout, watch.next())
                .await
                .map_err(|_| KvError::Timeout(self.timeout))?
                .ok_or_else(|| self.load_error("the watch ended during the load"))?
                .map_err(|e| self.load_error(e))?;
            let caught_up = entry.delta == 0;
            changes.push(change_of(entry));
            if caught_up {
                return Ok(changes);
            }
        }
    }

    /// Runs the writes in order, each a compare-and-set on the key's revision in `mirror`,
    /// recording each accepted write in `mirror`. Stops at the first failure (earlier writes
    /// stay: the plan keeps every prefix valid). Blocking: call from a blocking thread.
    pub(crate) fn write(&self, ops: &[Op], mirror: &mut Mirror) -> Result<u64, KvError> {
        let mut last = mirror.last_revision();
        for op in ops {
            let expected = mirror.revision(op.key());
            let revision = self.block_on(self.write_one(op, expected))?;
            let value = match op {
                Op::Put { value, .. } => Some(value.clone()),
                Op::Delete { .. } => None,
            };
            let change = Change {
                key: op.key().to_string(),
                revision,
                value,
            };
            // Our own record passed validation before it was written.
            let _ = mirror.apply(&change);
            last = revision;
        }
        Ok(last)
    }

    async fn write_one(&self, op: &Op, expected: u64) -> Result<u64, KvError> {
        let key = op.key();
        let subject = format!("{}{key}", self.store.prefix);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            async_nats::HeaderValue::from(expected),
        );
        let payload = match op {
            Op::Put { value, .. } => value.clone(),
            Op::Delete { .. } => {
                headers.insert("KV-Operation", "DEL");
                Bytes::new()
            }
        };
        let write_error = |detail: String| KvError::Write {
            key: key.to_string(),
            detail,
        };
        let ack = self
            .js
            .publish_with_headers(subject, headers, payload)
            .await
            .map_err(|e| write_error(e.to_string()))?
            .await;
        match ack {
            Ok(ack) => Ok(ack.sequence),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                Err(KvError::Conflict(key.to_string()))
            }
            Err(e) => Err(write_error(e.to_string())),
        }
    }

    /// Reads the current entry of each key (after a lost compare-and-set). Blocking.
    pub(crate) fn read(&self, keys: &[&str]) -> Result<Vec<Change>, KvError> {
        self.block_on(async {
            let mut out = Vec::with_capacity(keys.len());
            for key in keys {
                let entry = self
                    .store
                    .entry(key.to_string())
                    .await
                    .map_err(|e| self.load_error(e))?;
                out.extend(entry.map(change_of));
            }
            Ok(out)
        })
    }

    /// Runs one request on the server's runtime from a blocking thread, bounded.
    fn block_on<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, KvError>>,
    ) -> Result<T, KvError> {
        self.handle
            .block_on(async { tokio::time::timeout(self.timeout, f).await })
            .map_err(|_| KvError::Timeout(self.timeout))?
    }

    /// The runtime the client's connection task runs on.
    pub(super) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// How often the connection dropped so far.
    pub(super) fn disconnects(&self) -> u64 {
        self.disconnects.load(Ordering::SeqCst)
    }
}

/// The bucket, created if missing (another instance creating it at the same time is fine).
async fn open_bucket(js: &jetstream::Context, cfg: &NatsKvConfig) -> Result<kv::Store, KvError> {
    let bucket_error = |detail: String| KvError::Bucket {
        bucket: cfg.bucket.clone(),
        detail,
    };
    if let Ok(store) = js.get_key_value(&cfg.bucket).await {
        tracing::info!(bucket = %cfg.bucket, "control: using existing KV bucket");
        return Ok(store);
    }
    // The stream a KV bucket is, created directly: the client's `create_key_value` first
    // asks for account info in a shape nats-server 2.9 does not answer with.
    match js.create_stream(bucket_stream(cfg)).await {
        Ok(_) => {
            tracing::info!(bucket = %cfg.bucket, replicas = cfg.replicas, "control: created KV bucket")
        }
        Err(e) => {
            tracing::debug!(error = %e, "control: bucket not created; maybe another instance did")
        }
    }
    js.get_key_value(&cfg.bucket)
        .await
        .map_err(|e| bucket_error(e.to_string()))
}

/// The stream behind the bucket, as the NATS KV conventions define it (history 1).
pub(crate) fn bucket_stream(cfg: &NatsKvConfig) -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: format!("KV_{}", cfg.bucket),
        description: Some(
            "sms-ingress control plane (integration.<id>, number.<sender id>)".into(),
        ),
        subjects: vec![format!("$KV.{}.>", cfg.bucket)],
        max_messages_per_subject: 1,
        max_messages: -1,
        max_bytes: -1,
        max_message_size: -1,
        storage: jetstream::stream::StorageType::File,
        num_replicas: cfg.replicas,
        allow_rollup: true,
        deny_delete: true,
        deny_purge: false,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    }
}

/// One entry of a watch or read, as the records know it.
pub(super) fn change_of(e: kv::Entry) -> Change {
    let value = (e.operation == kv::Operation::Put).then_some(e.value);
    Change {
        key: e.key,
        revision: e.revision,
        value,
    }
}

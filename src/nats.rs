//! NATS for the fleet: the one way this process connects (the JetStream sink and the KV
//! control store each hold a connection made here), and NATS's naming rules, which the
//! configuration checks before anything connects.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Every subject this service publishes to lies under it; the sink's stream must cover it.
pub(crate) const SUBJECT_ROOT: &str = "sms.>";

/// Whether `pattern` matches every subject that `subject` (which may hold wildcards) matches.
pub(crate) fn subject_covers(pattern: &str, subject: &str) -> bool {
    let (mut p, mut s) = (pattern.split('.'), subject.split('.'));
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some(_), Some(">")) => return false,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether any of the stream's subjects covers `subject`.
pub(crate) fn subjects_cover(patterns: &[String], subject: &str) -> bool {
    patterns.iter().any(|p| subject_covers(p, subject))
}

/// JetStream's rule for stream names (they become tokens of API subjects).
pub(crate) fn valid_stream_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
}

/// JetStream's rule for bucket names, kept stricter: 1-64 of `[A-Za-z0-9_-]`.
pub(crate) fn valid_bucket_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What a connection needs, from one config section (`sink.nats` or `control.nats_kv`).
pub(crate) struct Endpoint<'a> {
    /// The config section the keys below live in, named in every error.
    pub(crate) section: &'static str,
    pub(crate) servers: &'a [String],
    pub(crate) credentials_file: Option<&'a Path>,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    /// The client name the server shows.
    pub(crate) client_name: &'static str,
    /// What connection events are logged as (`nats`, `control nats`).
    pub(crate) log_prefix: &'static str,
    /// What the disconnected log line adds: what this connection's user sees meanwhile.
    pub(crate) while_disconnected: &'static str,
}

/// Why a connection could not be made; each names its config key.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{section}.credentials_file {path}: {source}")]
    Credentials {
        section: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{section}.servers: {server:?} is not a NATS server address")]
    BadServer {
        section: &'static str,
        server: String,
    },
    #[error("cannot connect to NATS at {servers} ({section}.servers): {source}")]
    Connect {
        section: &'static str,
        servers: String,
        #[source]
        source: async_nats::ConnectError,
    },
}

/// Connects (inside the runtime that then drives the client); reconnection afterwards is
/// automatic and unbounded. Returns the client and a counter bumped at every disconnect.
pub(crate) async fn connect(
    ep: &Endpoint<'_>,
) -> Result<(async_nats::Client, Arc<AtomicU64>), ConnectError> {
    let servers = ep
        .servers
        .iter()
        .map(|s| {
            s.parse().map_err(|_| ConnectError::BadServer {
                section: ep.section,
                server: s.clone(),
            })
        })
        .collect::<Result<Vec<async_nats::ServerAddr>, _>>()?;
    let disconnects = Arc::new(AtomicU64::new(0));
    let counter = disconnects.clone();
    let (label, note) = (ep.log_prefix, ep.while_disconnected);
    let mut options = async_nats::ConnectOptions::new()
        .name(ep.client_name)
        .connection_timeout(ep.connect_timeout)
        .request_timeout(Some(ep.request_timeout))
        .event_callback(move |event| {
            let counter = counter.clone();
            async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("{label}: connected"),
                    async_nats::Event::Disconnected => {
                        counter.fetch_add(1, Ordering::SeqCst);
                        tracing::warn!("{label}: disconnected; {note}")
                    }
                    other => tracing::warn!(event = %other, "{label}: connection event"),
                }
            }
        });
    if let Some(path) = ep.credentials_file {
        options =
            options
                .credentials_file(path)
                .await
                .map_err(|source| ConnectError::Credentials {
                    section: ep.section,
                    path: path.display().to_string(),
                    source,
                })?;
    }
    let client = options
        .connect(servers)
        .await
        .map_err(|source| ConnectError::Connect {
            section: ep.section,
            servers: ep.servers.join(","),
            source,
        })?;
    Ok((client, disconnects))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_coverage_follows_nats_wildcards() {
        assert!(subject_covers("sms.>", "sms.>"));
        assert!(subject_covers(">", "sms.>"));
        assert!(subject_covers("*.>", "sms.>"));
        assert!(subject_covers("sms.>", "sms.inbound.q"));
        assert!(subject_covers("sms.*.q", "sms.inbound.q"));
        assert!(!subject_covers("sms.*", "sms.>"));
        assert!(!subject_covers("sms.*.*", "sms.>"));
        assert!(!subject_covers("sms.inbound.>", "sms.>"));
        assert!(!subject_covers("other.>", "sms.>"));
        assert!(!subject_covers("sms", "sms.>"));
        assert!(!subject_covers("sms.inbound", "sms.inbound.q"));
        assert!(subjects_cover(
            &["x.y".into(), "sms.>".into()],
            SUBJECT_ROOT
        ));
        assert!(!subjects_cover(&[], SUBJECT_ROOT));
    }

    #[test]
    fn stream_names_follow_jetstream_rules() {
        assert!(valid_stream_name("SMS"));
        assert!(valid_stream_name("sms-ingress_eu"));
        for bad in ["", "a.b", "a b", "a*", "a>", "a/b", "a\\b"] {
            assert!(!valid_stream_name(bad), "{bad:?}");
        }
        assert!(valid_bucket_name("sms_ingress_state"));
        assert!(!valid_bucket_name("a.b") && !valid_bucket_name(""));
    }
}

//! Telemetry: the Prometheus recorder every module's `metrics::` calls feed, its own
//! `/metrics` listener, and the log subscriber.

use crate::config::{LogConfig, LogFormat};
use crate::shutdown::Shutdown;
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use std::sync::Arc;
use tokio::net::TcpListener;

mod series;

pub(crate) use series::{forget_queue, Scrape};

/// Latency buckets in seconds: fine around the 5 ms p99 target, up to Twilio's 15 s timeout.
const SECONDS_BUCKETS: &[f64] = &[
    0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 15.0,
];
/// Batch-size buckets (envelopes per fdatasync).
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Seconds since the Unix epoch, for age and timestamp gauges.
pub(crate) fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// An error and its causes on one line (hyper's top-level message alone says little).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// The bucket settings every registry (global, and each queue's) is built with.
fn builder() -> anyhow::Result<PrometheusBuilder> {
    Ok(PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("seconds".into()), SECONDS_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full("sms_ingress_sink_batch_size".into()),
            BATCH_BUCKETS,
        )?)
}

/// Installs the global recorder; call once, before any metric is recorded.
pub(crate) fn install_recorder() -> anyhow::Result<Scrape> {
    let scrape = series::Recorders::install(builder)?;
    describe();
    Ok(scrape)
}

/// What a metric is, for its HELP line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric the service exports, with its HELP text: one list, so none goes
/// undescribed (a test checks the source names no other) and tools can name them all.
pub(crate) const METRICS: &[(MetricKind, &str, &str)] = {
    use MetricKind::{Counter as C, Gauge as G, Histogram as H};
    &[
        (C, "sms_ingress_requests_total", "HTTP requests by route and status"),
        (H, "sms_ingress_request_duration_seconds", "Time from request head to response"),
        (C, "sms_ingress_rejected_total", "Webhooks answered 4xx/503, by reason"),
        (C, "sms_ingress_dropped_total", "Webhooks answered 200 but not routed, by reason"),
        (C, "sms_ingress_dead_letters_total", "Webhooks kept as dead letters (integration inactive, number disabled), by reason"),
        (C, "sms_ingress_dead_letters_replayed_total", "Dead letters replayed into their queue"),
        (C, "sms_ingress_dead_letters_skipped_total", "Dead letters a replay skipped (number gone or still disabled)"),
        (C, "sms_ingress_duplicates_total", "Retries of already durable deliveries"),
        (G, "sms_ingress_dedup_entries", "Deliveries remembered for duplicate detection"),
        (C, "sms_ingress_compliance_replies_total", "Short-code keyword replies by action"),
        (C, "sms_ingress_enqueued_total", "Envelopes handed to a queue"),
        (C, "sms_ingress_acknowledged_total", "Envelopes made durable by the sink"),
        (G, "sms_ingress_queue_depth", "Envelopes waiting in a queue after its last batch"),
        (G, "sms_ingress_queues_open", "Queues with a worker; a queue no number uses any more is released"),
        (G, "sms_ingress_queue_capacity", "Envelopes a queue holds before answering 503 (queues.capacity)"),
        (H, "sms_ingress_sink_flush_seconds", "Time to write and fdatasync one batch"),
        (H, "sms_ingress_sink_batch_size", "Envelopes per group commit"),
        (C, "sms_ingress_spool_torn_tail_total", "Torn spool tails truncated at start (a crash mid-write)"),
        (G, "sms_ingress_spool_bytes", "Bytes of the queue's spool segments on disk"),
        (G, "sms_ingress_spool_max_queue_bytes", "Bytes a queue's spool may hold before 503 queue_disk_full (sink.max_queue_bytes; 0: no limit)"),
        (C, "sms_ingress_spool_segments_deleted_total", "Spool segments deleted by retention (delivered, committed and older than retain_secs)"),
        (C, "sms_ingress_nats_duplicate_acks_total", "Publishes JetStream acknowledged as duplicates (stored once)"),
        (G, "sms_ingress_nats_connected", "1 while the NATS sink's connection is up"),
        (G, "sms_ingress_nats_stream_replicas", "Replicas of the NATS sink's stream (fewer than 3 is warned at start)"),
        (G, "sms_ingress_ready", "1 while /readyz answers 200"),
        (G, "sms_ingress_snapshot_version", "Version of the serving inventory snapshot"),
        (G, "sms_ingress_snapshot_numbers", "Numbers in the serving inventory snapshot"),
        (G, "sms_ingress_snapshot_age_seconds", "Seconds since the serving snapshot was swapped in"),
        (G, "sms_ingress_snapshot_loaded_timestamp_seconds", "Unix time the serving snapshot was swapped in"),
        (C, "sms_ingress_control_updates_total", "Control-plane changes by source and result"),
        (C, "sms_ingress_control_journal_folds_total", "Times journaled control-plane changes were written into the state file"),
        (G, "sms_ingress_control_file_reload_success", "1 if the last state-file reload was accepted"),
        (G, "sms_ingress_control_file_reload_timestamp_seconds", "Unix time of the last state-file reload attempt"),
        (C, "sms_ingress_control_kv_cas_conflicts_total", "KV compare-and-set conflicts re-run"),
        (C, "sms_ingress_control_kv_reloads_total", "Full reloads of the KV bucket (start, reconnect)"),
        (G, "sms_ingress_control_kv_synced", "1 while the KV watch is caught up with the bucket"),
        (G, "sms_ingress_control_kv_tolerated", "Records served despite a cross-record race, by reason"),
        (C, "sms_ingress_admin_refused_total", "Admin API requests refused for a missing or unknown token (401) or a permission (403), by code"),
        (C, "sms_ingress_audit_write_errors_total", "Audit lines that could not be written"),
        (C, "sms_ingress_config_reloads_total", "SIGHUP config reloads by result"),
        (G, "sms_ingress_connections_active", "Open webhook connections"),
        (C, "sms_ingress_connections_rejected_total", "Connections closed at accept, by reason"),
        (C, "sms_ingress_accept_errors_total", "accept() errors, by listener"),
        (C, "sms_ingress_connection_errors_total", "Webhook connections ended by an error, by kind"),
        (C, "sms_ingress_connection_timeouts_total", "Webhook connections closed by a timeout, by kind"),
        (C, "sms_ingress_tls_handshake_errors_total", "TLS handshakes failed or timed out, by reason"),
        (C, "sms_ingress_delivery_attempts_total", "Delivery attempts to routing, by route and result (delivered, refused, timeout, error)"),
        (G, "sms_ingress_delivery_lag_records", "Records durable and not yet delivered by the route"),
        (G, "sms_ingress_delivery_lag_seconds", "Age of the route's oldest undelivered record"),
        (H, "sms_ingress_delivery_duration_seconds", "One delivery attempt: request sent to answer read"),
        (C, "sms_ingress_delivery_dead_letters_total", "Records the route gave up on after max_attempts (kept for delivery replay)"),
    ]
};

/// HELP lines for every metric.
fn describe() {
    for &(kind, name, help) in METRICS {
        match kind {
            MetricKind::Counter => metrics::describe_counter!(name, help),
            MetricKind::Gauge => metrics::describe_gauge!(name, help),
            MetricKind::Histogram => metrics::describe_histogram!(name, help),
        }
    }
}

/// Serves `GET /metrics` on its own listener until shutdown, keeping the recorder's
/// histograms drained; `before_scrape` sets the gauges read at scrape time.
pub(crate) async fn serve_metrics(
    listener: TcpListener,
    handle: Scrape,
    before_scrape: Arc<dyn Fn() + Send + Sync>,
    shutdown: Shutdown,
) {
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let accept = crate::accept::Accept {
        name: "metrics",
        max_connections: crate::accept::SIDE_MAX_CONNECTIONS,
    };
    crate::accept::serve(listener, accept, shutdown, move |stream, _, shutdown| {
        let (handle, before_scrape) = (handle.clone(), before_scrape.clone());
        let service =
            hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let response = scrape(&req, &handle, &*before_scrape);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
        crate::accept::serve_http1(stream, service, shutdown)
    })
    .await
}

/// The answer to one request of the metrics listener.
fn scrape(
    req: &http::Request<hyper::body::Incoming>,
    handle: &Scrape,
    before_scrape: &dyn Fn(),
) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        let mut r = Response::new(Full::new(Bytes::from_static(b"not found")));
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    }
    before_scrape();
    let mut r = Response::new(Full::new(Bytes::from(handle.render())));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

/// Changes the log filter of the running process (SIGHUP reload).
pub(crate) type LogReload = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Starts structured logging; `RUST_LOG` overrides `log.level`. Returns how to change the level later.
pub fn init_logs(cfg: &LogConfig) -> LogReload {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{fmt, reload, EnvFilter, Layer};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.level));
    let (filter, handle) = reload::Layer::new(filter);
    let base = fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let output = match cfg.format {
        LogFormat::Json => base.json().flatten_event(true).boxed(),
        LogFormat::Text => base.boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .try_init();
    Box::new(move |level| {
        let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `"sms_ingress_…"` string in the service's source but this list's own file:
    /// the metric names it sets (and the default KV bucket's name, which is not one).
    fn names_in_source() -> std::collections::BTreeSet<String> {
        fn walk(dir: &std::path::Path, out: &mut std::collections::BTreeSet<String>) {
            for entry in std::fs::read_dir(dir).unwrap().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs")
                    && !path.ends_with("src/telemetry/mod.rs")
                {
                    let text = std::fs::read_to_string(&path).unwrap();
                    for part in text.split("\"sms_ingress_").skip(1) {
                        let name: String = part
                            .chars()
                            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                            .collect();
                        if part[name.len()..].starts_with('"') {
                            out.insert(format!("sms_ingress_{name}"));
                        }
                    }
                }
            }
        }
        let mut out = std::collections::BTreeSet::new();
        walk(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut out,
        );
        out.remove("sms_ingress_state");
        out
    }

    #[test]
    fn every_metric_the_source_names_has_help_text() {
        let described: std::collections::BTreeSet<String> =
            METRICS.iter().map(|(_, n, _)| n.to_string()).collect();
        let used = names_in_source();
        let missing: Vec<_> = used.difference(&described).collect();
        assert!(missing.is_empty(), "metrics without HELP text: {missing:?}");
        let unused: Vec<_> = described.difference(&used).collect();
        assert!(unused.is_empty(), "described but never set: {unused:?}");
        assert!(METRICS.iter().all(|(_, _, help)| !help.is_empty()));
    }
}

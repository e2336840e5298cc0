//! Telemetry: the Prometheus recorder every module's `metrics::` calls feed, its own
//! `/metrics` listener, and the log subscriber.

use crate::config::{LogConfig, LogFormat};
use crate::shutdown::Shutdown;
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::Arc;
use tokio::net::TcpListener;

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

/// Installs the global recorder; call once, before any metric is recorded.
pub(crate) fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("seconds".into()), SECONDS_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full("sms_ingress_sink_batch_size".into()),
            BATCH_BUCKETS,
        )?
        .install_recorder()?;
    describe();
    Ok(handle)
}

/// HELP lines for the metrics SPEC section 5 names.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "sms_ingress_requests_total",
        "HTTP requests by route and status"
    );
    describe_counter!(
        "sms_ingress_rejected_total",
        "Webhooks answered 4xx/503, by reason"
    );
    describe_counter!(
        "sms_ingress_dropped_total",
        "Webhooks answered 200 but not routed, by reason"
    );
    describe_counter!(
        "sms_ingress_duplicates_total",
        "Retries of already durable deliveries"
    );
    describe_counter!("sms_ingress_enqueued_total", "Envelopes handed to a queue");
    describe_counter!(
        "sms_ingress_acknowledged_total",
        "Envelopes made durable by the sink"
    );
    describe_counter!(
        "sms_ingress_compliance_replies_total",
        "Short-code keyword replies by action"
    );
    describe_counter!(
        "sms_ingress_control_updates_total",
        "Control-plane changes by source and result"
    );
    describe_counter!(
        "sms_ingress_control_journal_folds_total",
        "Times journaled control-plane changes were written into the state file"
    );
    describe_gauge!(
        "sms_ingress_queue_depth",
        "Envelopes waiting in a queue after its last batch"
    );
    describe_gauge!(
        "sms_ingress_snapshot_version",
        "Version of the serving inventory snapshot"
    );
    describe_gauge!(
        "sms_ingress_snapshot_numbers",
        "Numbers in the serving inventory snapshot"
    );
    describe_gauge!(
        "sms_ingress_snapshot_age_seconds",
        "Seconds since the serving snapshot was swapped in"
    );
    describe_histogram!(
        "sms_ingress_request_duration_seconds",
        "Time from request head to response"
    );
    describe_histogram!(
        "sms_ingress_sink_flush_seconds",
        "Time to write and fdatasync one batch"
    );
    describe_histogram!("sms_ingress_sink_batch_size", "Envelopes per group commit");
    describe_counter!(
        "sms_ingress_delivery_attempts_total",
        "Delivery attempts to routing, by route and result (delivered, refused, timeout, error)"
    );
    describe_gauge!(
        "sms_ingress_delivery_lag_records",
        "Records durable and not yet delivered by the route"
    );
    describe_gauge!(
        "sms_ingress_delivery_lag_seconds",
        "Age of the route's oldest undelivered record"
    );
    describe_histogram!(
        "sms_ingress_delivery_duration_seconds",
        "One delivery attempt: request sent to answer read"
    );
    describe_counter!(
        "sms_ingress_delivery_dead_letters_total",
        "Records the route gave up on after max_attempts (kept for delivery replay)"
    );
    describe_gauge!(
        "sms_ingress_spool_bytes",
        "Bytes of the queue's spool segments on disk"
    );
    describe_counter!(
        "sms_ingress_spool_segments_deleted_total",
        "Spool segments deleted by retention (delivered, committed and older than retain_secs)"
    );
}

/// Serves `GET /metrics` on its own listener until shutdown, keeping the recorder's
/// histograms drained.
pub(crate) async fn serve_metrics(
    listener: TcpListener,
    handle: PrometheusHandle,
    loaded_at: Arc<dyn Fn() -> f64 + Send + Sync>,
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
        max_connections: usize::MAX,
    };
    crate::accept::serve(listener, accept, shutdown, move |stream, _, shutdown| {
        let (handle, loaded_at) = (handle.clone(), loaded_at.clone());
        let service =
            hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let response = scrape(&req, &handle, &*loaded_at);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
        crate::accept::serve_http1(stream, service, shutdown)
    })
    .await
}

/// The answer to one request of the metrics listener.
fn scrape(
    req: &http::Request<hyper::body::Incoming>,
    handle: &PrometheusHandle,
    loaded_at: &dyn Fn() -> f64,
) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        let mut r = Response::new(Full::new(Bytes::from_static(b"not found")));
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    }
    metrics::gauge!("sms_ingress_snapshot_age_seconds").set(unix_now() - loaded_at());
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

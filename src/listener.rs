//! The listener: accepts TCP connections, terminates TLS with rustls when configured (ALPN
//! h2 and http/1.1), and serves HTTP/1.1 or HTTP/2 on each with hyper — the first step of
//! the request path. It also enforces the connection-level limits (`[limits]`) and drains
//! connections gracefully on shutdown (accepting itself is `accept`'s).

use crate::config::LimitsConfig;
use crate::shutdown::Shutdown;
use crate::webhook::Webhook;
use anyhow::Context;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Builds the TLS acceptor from PEM files: TLS 1.2 and 1.3 only, rustls defaults, h2 preferred.
pub(crate) fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("server.tls_cert {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("server.tls_cert {}: bad PEM", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("server.tls_key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("server.tls_cert / server.tls_key do not form a usable pair")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Everything a connection task needs, shared.
struct Shared {
    webhook: Arc<Webhook>,
    tls: Option<TlsAcceptor>,
    limits: LimitsConfig,
    epoch: Instant,
}

/// Accepts webhook connections until shutdown begins, one task per connection.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    webhook: Arc<Webhook>,
    limits: LimitsConfig,
    shutdown: Shutdown,
) {
    let accept = crate::accept::Accept {
        name: "webhook",
        max_connections: limits.max_connections,
    };
    let shared = Arc::new(Shared {
        webhook,
        tls,
        limits,
        epoch: Instant::now(),
    });
    crate::accept::serve(listener, accept, shutdown, move |stream, peer, shutdown| {
        let shared = shared.clone();
        async move {
            let _ = stream.set_nodelay(true);
            metrics::gauge!("sms_ingress_connections_active").increment(1.0);
            accept_one(stream, peer, &shared, shutdown).await;
            metrics::gauge!("sms_ingress_connections_active").decrement(1.0);
        }
    })
    .await
}

/// Completes TLS (bounded in time) if configured, then serves the connection.
async fn accept_one(
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    shared: &Shared,
    shutdown: Shutdown,
) {
    let Some(acceptor) = &shared.tls else {
        return serve_connection(stream, shared, Protocol::Detect, shutdown).await;
    };
    let handshake = Duration::from_millis(shared.limits.tls_handshake_timeout_ms);
    match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
        Ok(Ok(tls_stream)) => {
            let protocol = match tls_stream.get_ref().1.alpn_protocol() {
                Some(b"h2") => Protocol::Http2,
                Some(_) => Protocol::Http1,
                None => Protocol::Detect,
            };
            serve_connection(tls_stream, shared, protocol, shutdown).await
        }
        Ok(Err(e)) => {
            metrics::counter!("sms_ingress_tls_handshake_errors_total", "reason" => "failed")
                .increment(1);
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
        }
        Err(_) => {
            metrics::counter!("sms_ingress_tls_handshake_errors_total", "reason" => "timeout")
                .increment(1);
            tracing::debug!(%peer, "TLS handshake timed out");
        }
    }
}

/// Which HTTP version a connection speaks: fixed by ALPN under TLS, else by its preface.
#[derive(Clone, Copy)]
enum Protocol {
    Http1,
    Http2,
    Detect,
}

/// Serves one connection until it ends, goes idle, or draining finishes it.
async fn serve_connection<S>(stream: S, shared: &Shared, protocol: Protocol, mut shutdown: Shutdown)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let last_activity = Arc::new(AtomicU64::new(shared.epoch.elapsed().as_millis() as u64));
    let io = Tracked {
        inner: stream,
        last: last_activity.clone(),
        epoch: shared.epoch,
    };
    let (webhook, request_timeout) = (
        shared.webhook.clone(),
        Duration::from_millis(shared.limits.request_timeout_ms),
    );
    let service = hyper::service::service_fn(move |req| {
        let webhook = webhook.clone();
        async move {
            match tokio::time::timeout(request_timeout, webhook.clone().handle(req)).await {
                Ok(resp) => resp,
                Err(_) => Ok(request_timed_out(&webhook)),
            }
        }
    });
    let builder = http_builder(&shared.limits, protocol);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let idle = Duration::from_millis(shared.limits.idle_timeout_ms);
    let mut tick = tokio::time::interval(
        idle.min(Duration::from_secs(1))
            .max(Duration::from_millis(50)),
    );
    let mut closing_since: Option<Instant> = None;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    let kind = connection_error_kind(e.as_ref());
                    metrics::counter!("sms_ingress_connection_errors_total", "kind" => kind).increment(1);
                    tracing::debug!(error = %e, kind, "connection ended with an error");
                }
                return;
            }
            _ = shutdown.signalled(), if closing_since.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing_since = Some(Instant::now());
            }
            _ = tick.tick() => {
                let quiet = shared.epoch.elapsed().saturating_sub(Duration::from_millis(last_activity.load(Ordering::Relaxed)));
                match closing_since {
                    None if quiet >= idle => {
                        metrics::counter!("sms_ingress_connection_timeouts_total", "kind" => "idle").increment(1);
                        conn.as_mut().graceful_shutdown();
                        closing_since = Some(Instant::now());
                    }
                    Some(since) if since.elapsed() >= idle.max(request_timeout) => {
                        metrics::counter!("sms_ingress_connection_timeouts_total", "kind" => "close").increment(1);
                        return; // a peer that neither reads nor closes: drop it
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Names why hyper ended a connection, so the limits it enforces itself are counted too.
fn connection_error_kind(e: &(dyn std::error::Error + 'static)) -> &'static str {
    let Some(h) = e.downcast_ref::<hyper::Error>() else {
        return "other";
    };
    if h.is_timeout() {
        "header_read_timeout"
    } else if h.is_parse_too_large() {
        "header_too_large"
    } else if h.is_parse() {
        "malformed_request"
    } else if h.is_incomplete_message() || h.is_closed() {
        "closed_early"
    } else {
        "other"
    }
}

/// hyper's connection builder with the configured limits.
fn http_builder(limits: &LimitsConfig, protocol: Protocol) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms))
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(limits.max_header_bytes as u32)
        .max_send_buf_size(64 * 1024);
    match protocol {
        Protocol::Http1 => builder.http1_only(),
        Protocol::Http2 => builder.http2_only(),
        Protocol::Detect => builder,
    }
}

fn request_timed_out(webhook: &Webhook) -> Response<Full<Bytes>> {
    metrics::counter!("sms_ingress_rejected_total", "reason" => "request_timeout").increment(1);
    let mut resp = Response::new(Full::new(Bytes::from_static(b"request_timeout")));
    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    resp.headers_mut()
        .insert(http::header::RETRY_AFTER, webhook.retry_after());
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// An I/O stream that records when bytes last moved, for the idle timeout.
struct Tracked<S> {
    inner: S,
    last: Arc<AtomicU64>,
    epoch: Instant,
}

impl<S> Tracked<S> {
    fn touch(&self) {
        self.last
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

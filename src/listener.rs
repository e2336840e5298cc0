//! The listener: accepts TCP connections, terminates TLS with rustls when configured (ALPN
//! h2 and http/1.1), and serves HTTP/1.1 or HTTP/2 on each with hyper — the first step of
//! the request path.

use crate::webhook::Webhook;
use anyhow::Context;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Builds the TLS acceptor from PEM files: TLS 1.2 and 1.3 only, rustls defaults, h2 preferred.
pub fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
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

/// Accepts connections forever, one task per connection.
pub async fn serve(listener: TcpListener, tls: Option<TlsAcceptor>, webhook: Arc<Webhook>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                metrics::counter!("sms_ingress_accept_errors_total").increment(1);
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (tls, webhook) = (tls.clone(), webhook.clone());
        tokio::spawn(async move {
            let Some(acceptor) = tls else {
                return serve_connection(stream, webhook, Protocol::Detect).await;
            };
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls_stream)) => {
                    let protocol = match tls_stream.get_ref().1.alpn_protocol() {
                        Some(b"h2") => Protocol::Http2,
                        Some(_) => Protocol::Http1,
                        None => Protocol::Detect,
                    };
                    serve_connection(tls_stream, webhook, protocol).await
                }
                Ok(Err(e)) => {
                    metrics::counter!("sms_ingress_tls_handshake_errors_total", "reason" => "failed").increment(1);
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    metrics::counter!("sms_ingress_tls_handshake_errors_total", "reason" => "timeout").increment(1);
                    tracing::debug!(%peer, "TLS handshake timed out");
                }
            }
        });
    }
}

/// How long a client may take to complete the TLS handshake before it is dropped.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Which HTTP version a connection speaks: fixed by ALPN under TLS, else by its preface.
#[derive(Clone, Copy)]
enum Protocol {
    Http1,
    Http2,
    Detect,
}

/// Serves one connection, HTTP/1.1 or HTTP/2.
async fn serve_connection<S>(stream: S, webhook: Arc<Webhook>, protocol: Protocol)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| webhook.clone().handle(req));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A timer turns on hyper's HTTP/1 header read timeout (30 s), so a client that never
    // finishes its request head cannot hold a connection forever.
    builder.http1().timer(TokioTimer::new());
    let builder = match protocol {
        Protocol::Http1 => builder.http1_only(),
        Protocol::Http2 => builder.http2_only(),
        Protocol::Detect => builder,
    };
    if let Err(e) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

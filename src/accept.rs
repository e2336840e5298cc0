//! The one accept loop of every listener (webhooks, metrics, admin socket): accepts until
//! shutdown, caps the connections served at once, backs off on accept errors (a process
//! out of file descriptors must not spin a core) and counts them, and serves each
//! connection on its own task with a clone of the shutdown signal.

use crate::shutdown::Shutdown;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Pause after a failed accept: 1 ms, doubling on each further failure up to 1 s, back
/// to 1 ms after a success (out of file descriptors, the loop must not spin a core).
const BACKOFF_FIRST: Duration = Duration::from_millis(1);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A side listener (metrics, admin): connections served at once, and the time a client
/// has to send a request head.
pub(crate) const SIDE_MAX_CONNECTIONS: usize = 128;
const SIDE_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The next pause after `current` (doubling, capped).
fn next_backoff(current: Duration) -> Duration {
    (current * 2).min(BACKOFF_MAX)
}

/// A listening socket (TCP or Unix).
pub(crate) trait Listener: Send + 'static {
    /// An accepted connection.
    type Io: Send + 'static;
    /// The peer's address.
    type Addr: Send + 'static;
    /// Polls for the next connection.
    fn poll_accept(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<(Self::Io, Self::Addr)>>;
}

impl Listener for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;
    fn poll_accept(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<(Self::Io, Self::Addr)>> {
        tokio::net::TcpListener::poll_accept(self, cx)
    }
}

impl Listener for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    type Addr = tokio::net::unix::SocketAddr;
    fn poll_accept(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<(Self::Io, Self::Addr)>> {
        tokio::net::UnixListener::poll_accept(self, cx)
    }
}

/// How one listener accepts.
pub(crate) struct Accept {
    /// The `listener` label of its metrics (`webhook`, `metrics`, `admin`).
    pub(crate) name: &'static str,
    /// Connections served at once; further ones are closed at accept and counted.
    pub(crate) max_connections: usize,
}

/// Accepts until shutdown begins, each connection served by `serve` on its own task.
pub(crate) async fn serve<L, F, Fut>(
    mut listener: L,
    accept: Accept,
    mut shutdown: Shutdown,
    serve: F,
) where
    L: Listener,
    F: Fn(L::Io, L::Addr, Shutdown) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(
        accept.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let errors = metrics::counter!("sms_ingress_accept_errors_total", "listener" => accept.name);
    let mut backoff = BACKOFF_FIRST;
    loop {
        let accepted = tokio::select! {
            a = std::future::poll_fn(|cx| listener.poll_accept(cx)) => a,
            _ = shutdown.signalled() => return,
        };
        let (io, peer) = match accepted {
            Ok(conn) => {
                backoff = BACKOFF_FIRST;
                conn
            }
            Err(e) => {
                if backoff == BACKOFF_FIRST {
                    tracing::warn!(listener = accept.name, error = %e, "accept failed; backing off");
                }
                errors.increment(1);
                let pause = backoff;
                backoff = next_backoff(backoff);
                tokio::select! {
                    _ = tokio::time::sleep(pause) => continue,
                    _ = shutdown.signalled() => return,
                }
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!("sms_ingress_connections_rejected_total", "reason" => "max_connections").increment(1);
            drop(io);
            continue;
        };
        let conn = serve(io, peer, shutdown.clone());
        tokio::spawn(async move {
            conn.await;
            drop(permit);
        });
    }
}

/// Serves one HTTP/1.1 connection (metrics, admin) until it ends, a request head taking
/// at most 10 s; once shutdown begins, its in-flight request finishes and it closes.
pub(crate) async fn serve_http1<I, S, B>(io: I, service: S, mut shutdown: Shutdown)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(SIDE_HEADER_READ_TIMEOUT)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.signalled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_1ms_to_1s() {
        let mut b = BACKOFF_FIRST;
        let mut seen = vec![b];
        for _ in 0..12 {
            b = next_backoff(b);
            seen.push(b);
        }
        assert_eq!(seen[1], Duration::from_millis(2));
        assert_eq!(seen[10], Duration::from_millis(1000), "{seen:?}");
        assert!(seen.iter().all(|d| *d <= BACKOFF_MAX));
    }
}

//! The baseline: a bare hyper server (HTTP/1.1 and h2 prior knowledge) that reads the body
//! and answers the same TwiML as sms-ingress, with no parsing, verification or disk. It
//! is the physical limit of this machine's loopback, runtime and load generator, which
//! the service's throughput is compared with (SPEC section 7).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;

/// The empty TwiML sms-ingress answers for an accepted webhook.
pub const TWIML: &str = r#"<?xml version="1.0" encoding="UTF-8"?><Response/>"#;

/// Reads the whole body, then answers 200 TwiML.
async fn answer(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let _ = req.into_body().collect().await;
    let mut resp = Response::new(Full::new(Bytes::from_static(TWIML.as_bytes())));
    resp.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("text/xml"),
    );
    Ok(resp)
}

/// Binds `addr` and returns the listener with its real address (port 0 picks one).
pub async fn bind(addr: SocketAddr) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Serves until the process ends: one task per connection, HTTP/1.1 or h2.
pub async fn serve(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(answer);
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{run, Protocol, RunOptions};
    use crate::workload::{Mix, Workload};
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn answers_twiml_over_h1_and_h2() {
        let (listener, addr) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        tokio::spawn(serve(listener));
        let plan = crate::plan::Plan {
            public_url: "http://x".into(),
            region_key: "k".into(),
            account_sid: format!("AC{}", "0".repeat(32)),
            auth_token: "t".into(),
            integration_id: "i".into(),
            target: addr.to_string(),
            sink_dir: "s".into(),
            numbers: vec!["+14152000000".into()],
            shared_key: None,
        };
        let workload = Arc::new(Workload::new(&plan, Mix::default(), 1));
        for protocol in [Protocol::H1, Protocol::H2] {
            let opts = RunOptions {
                target: addr.to_string(),
                protocol,
                connections: 2,
                duration: Duration::from_secs(5),
                rate: None,
                limit: Some(50),
                seed: 1,
                run_id: protocol as u32,
                timeout: Duration::from_secs(5),
                progress: false,
            };
            let r = run(&opts, workload.clone()).await.unwrap();
            assert_eq!(r.recorder.statuses.get(&200), Some(&50), "{protocol:?}");
            assert_eq!((r.recorder.errors, r.unexpected), (0, 0));
        }
    }
}

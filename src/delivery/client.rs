//! One route's HTTP client: pooled keep-alive HTTP/1.1 connections to routing (`https://`
//! with rustls and the webpki roots), one POST per attempt, bounded by `timeout_ms`.

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// Most of an answer's body read (and thrown away) so the connection can be reused.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// Any 2xx within the timeout.
    Delivered(StatusCode),
    /// Routing answered something else.
    Refused(StatusCode),
    /// No answer within `timeout_ms`.
    TimedOut,
    /// The connection could not be made or broke.
    Failed(String),
}

impl Attempt {
    /// What went wrong, for `delivery status`; `None` when delivered.
    pub fn error(&self) -> Option<String> {
        match self {
            Attempt::Delivered(_) => None,
            Attempt::Refused(s) => Some(format!("routing answered {s}")),
            Attempt::TimedOut => Some("no answer within timeout_ms".into()),
            Attempt::Failed(why) => Some(why.clone()),
        }
    }
}

/// The pooled client of one route.
#[derive(Clone)]
pub struct Sender {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    url: Uri,
    timeout: Duration,
}

/// The headers of one attempt (Standard Webhooks).
pub struct Signed<'a> {
    pub id: &'a str,
    pub timestamp: u64,
    pub signature: &'a str,
}

impl Sender {
    /// A client for `url`, keeping up to `idle` connections open for reuse.
    pub fn new(url: Uri, timeout: Duration, idle: usize) -> Result<Sender, String> {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| format!("TLS set-up failed: {e}"))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(idle)
            .build(https);
        Ok(Sender { http, url, timeout })
    }

    /// One POST of `body`, signed; its outcome.
    pub async fn post(&self, body: Bytes, signed: &Signed<'_>) -> Attempt {
        let header = |v: &str| HeaderValue::from_str(v).map_err(|e| e.to_string());
        let built = (|| -> Result<Request<Full<Bytes>>, String> {
            Request::post(self.url.clone())
                .header(http::header::CONTENT_TYPE, "application/json")
                .header(http::header::USER_AGENT, "sms-ingress")
                .header("webhook-id", header(signed.id)?)
                .header("webhook-timestamp", signed.timestamp)
                .header("webhook-signature", header(signed.signature)?)
                .body(Full::new(body))
                .map_err(|e| e.to_string())
        })();
        let req = match built {
            Ok(req) => req,
            Err(e) => return Attempt::Failed(e),
        };
        let exchange = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| crate::telemetry::error_chain(&e))?;
            let status = resp.status();
            // Read the answer so the connection goes back to the pool.
            let _ = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await;
            Ok::<_, String>(status)
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => Attempt::TimedOut,
            Ok(Err(e)) => Attempt::Failed(e),
            Ok(Ok(s)) if s.is_success() => Attempt::Delivered(s),
            Ok(Ok(s)) => Attempt::Refused(s),
        }
    }
}

//! Delivery to routing (SPEC 3b): every durable record of a queue pushed to the endpoint
//! of each route of that queue — signed (Standard Webhooks), in order per conversation,
//! retried with backoff, its cursor durable after the 2xx, dead-lettered after
//! `max_attempts`. A route is one `Route` (endpoint, secrets, policy, dead letters) and one
//! worker per queue it selects, started when the queue's spool opens. Ingestion never
//! waits for routing: the spool absorbs an outage.

pub(crate) mod backoff;
pub(crate) mod client;
pub(crate) mod nats;
pub mod replay;
pub(crate) mod route;
pub(crate) mod schedule;
pub mod sign;
pub(crate) mod source;
pub mod status;

use crate::config::{Config, QueueSelector, RouteConfig};
use crate::sink::spool::feed::Feed;
use crate::sink::spool::queues::{self, QueueNameError};
use crate::sink::spool::{SpoolError, SpoolWriter};
use route::Route;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why the delivery routes could not start; each names its route and key.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("delivery.routes {route}: secret_file {source}")]
    Secret {
        route: String,
        #[source]
        source: sign::SecretError,
    },
    #[error("delivery.routes {route}: url: {why}")]
    Url { route: String, why: String },
    #[error("delivery.routes {route}: dead letters: {source}")]
    DeadLetters {
        route: String,
        #[source]
        source: SpoolError,
    },
    #[error("delivery.routes {route}: queue: {source}")]
    Queue {
        route: String,
        #[source]
        source: QueueNameError,
    },
}

/// A route's name and one queue it delivers (`ORG/QUEUE`).
type RouteQueue = (Arc<str>, String);

/// The routes of this process, and the workers started for them.
pub struct Delivery {
    routes: Vec<(QueueSelector, Arc<Route>)>,
    spool_dir: PathBuf,
    handle: tokio::runtime::Handle,
    started: Mutex<HashMap<RouteQueue, tokio::task::JoinHandle<()>>>,
}

/// A plain `QUEUE` as the one org of the spool that has it.
pub(crate) fn resolved(
    selector: QueueSelector,
    spool_dir: &Path,
) -> Result<QueueSelector, QueueNameError> {
    let QueueSelector::Plain(name) = selector else {
        return Ok(selector);
    };
    let full = queues::resolve(spool_dir, &name)?;
    Ok(QueueSelector::parse(&full).unwrap_or(QueueSelector::Plain(name)))
}

/// The spool of a route's dead letters, under `<delivery.dir>/<route>/`.
pub(crate) const DEAD_LETTERS: &str = "dead-letters";

/// One configured route, ready to deliver; the server writes its dead letters, a tool
/// (`delivery replay`) only reads them.
pub(crate) fn open_route(
    r: &RouteConfig,
    delivery_dir: &Path,
    with_dead_letters: bool,
) -> Result<Route, DeliveryError> {
    let secrets = sign::Secrets::load(&r.secret_file).map_err(|source| DeliveryError::Secret {
        route: r.name.clone(),
        source,
    })?;
    let url_err = |why: String| DeliveryError::Url {
        route: r.name.clone(),
        why,
    };
    let url: http::Uri = r
        .url
        .parse()
        .map_err(|e: http::uri::InvalidUri| url_err(e.to_string()))?;
    let sender = client::Sender::new(url, Duration::from_millis(r.timeout_ms), r.concurrency)
        .map_err(url_err)?;
    let dir = delivery_dir.join(&r.name);
    let dead_letters = match with_dead_letters {
        false => None,
        true => Some(
            SpoolWriter::open(&dir, DEAD_LETTERS, 64 << 20).map_err(|source| {
                DeliveryError::DeadLetters {
                    route: r.name.clone(),
                    source,
                }
            })?,
        ),
    };
    Ok(Route::new(
        &r.name,
        secrets,
        sender,
        r.concurrency,
        Duration::from_millis(r.retry_initial_ms),
        Duration::from_millis(r.retry_max_ms),
        r.max_attempts,
        dead_letters,
        dir,
    ))
}

impl Delivery {
    /// The configured routes (secrets read, clients built, dead-letter spools opened);
    /// `None` when there are none. Workers start as the queues' spools open (`attach`).
    pub fn from_config(cfg: &Config) -> Result<Option<Arc<Delivery>>, DeliveryError> {
        if cfg.delivery.routes.is_empty() {
            return Ok(None);
        }
        let mut routes = Vec::new();
        for r in &cfg.delivery.routes {
            let mut selector = QueueSelector::parse(&r.queue).expect("validated at load");
            if cfg.sink.kind == crate::config::SinkKind::Spool {
                selector =
                    resolved(selector, &cfg.sink.dir).map_err(|source| DeliveryError::Queue {
                        route: r.name.clone(),
                        source,
                    })?;
            }
            routes.push((selector, Arc::new(open_route(r, &cfg.delivery.dir, true)?)));
        }
        Ok(Some(Arc::new(Delivery {
            routes,
            spool_dir: cfg.sink.dir.clone(),
            handle: tokio::runtime::Handle::current(),
            started: Mutex::default(),
        })))
    }

    /// A queue's spool is open (`ORG/QUEUE`): every route that selects it starts delivering
    /// it from its cursor, fed by `feed` — after the route's worker for the queue's previous
    /// opening (released since) has finished, so one queue has one worker per route.
    pub fn attach(&self, queue: &str, feed: &Arc<Feed>) {
        let mut started = self
            .started
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        started.retain(|_, worker| !worker.is_finished());
        for (selector, route) in &self.routes {
            if !selector.selects(queue) {
                continue;
            }
            let key = (route.name.clone(), queue.to_string());
            let previous = started.remove(&key);
            let run = route::run(
                route.clone(),
                self.spool_dir.clone(),
                queue.to_string(),
                feed.clone(),
            );
            let worker = self.handle.spawn(async move {
                if let Some(previous) = previous {
                    let _ = previous.await;
                }
                run.await
            });
            started.insert(key, worker);
        }
    }

    /// With `sink.kind = "nats"`: every route consumes the stream through its durable
    /// JetStream consumer.
    pub fn start_nats(&self, js: &async_nats::jetstream::Context, stream: &str) {
        for (selector, route) in &self.routes {
            self.handle.spawn(nats::run(
                route.clone(),
                js.clone(),
                stream.to_string(),
                selector.clone(),
            ));
        }
    }

    /// The positions every route has delivered `queue` up to (for retention).
    pub fn positions(&self, queue: &str) -> Vec<u64> {
        self.routes
            .iter()
            .filter(|(s, _)| s.selects(queue))
            .map(|(_, r)| r.state.cursor_of(queue))
            .collect()
    }
}

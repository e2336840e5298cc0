//! A route with `sink.kind = "nats"`: the records come from the JetStream stream through a
//! durable pull consumer named after the route, which the fleet shares: JetStream hands
//! each message to one instance, and it is acknowledged only after routing's 2xx (or once
//! dead-lettered). An instance that dies leaves its unacknowledged messages to be
//! redelivered, after `ack_wait`, to another. Within one instance the same per-conversation
//! scheduler as the spool's applies; across instances there is no order (docs/FLEET.md).

use super::route::Route;
use super::schedule::Scheduler;
use super::status::QueueStats;
use crate::config::QueueSelector;
use crate::envelope::Envelope;
use crate::sink::spool::feed::Record;
use async_nats::jetstream::{self, consumer::pull, AckKind};
use futures_util::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

/// How long JetStream waits for an ack before it hands a message to another instance;
/// a record being retried is kept by a progress ack every third of it.
const ACK_WAIT: Duration = Duration::from_secs(30);

/// The subjects of a selector, or why it cannot be consumed from the stream.
fn filter(selector: &QueueSelector) -> Result<String, String> {
    match selector {
        QueueSelector::Queue { org, queue } => Ok(format!("sms.*.{org}.{queue}")),
        QueueSelector::Org(org) => Ok(format!("sms.*.{org}.*")),
        QueueSelector::Plain(q) => Err(format!(
            "queue {q:?}: with sink.kind = \"nats\" name it ORG/QUEUE or ORG/*"
        )),
    }
}

/// Delivers the route's records from the stream for as long as the process runs,
/// reconnecting its consumer after an error.
pub async fn run(
    route: Arc<Route>,
    js: jetstream::Context,
    stream: String,
    selector: QueueSelector,
) {
    let subject = match filter(&selector) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(route = %route.name, error = e, "delivery: route not started");
            route.state.failed(&e);
            return;
        }
    };
    loop {
        if let Err(e) = consume(&route, &js, &stream, &subject).await {
            tracing::warn!(route = %route.name, error = %e, "delivery: JetStream consumer failed; retrying");
            route.state.failed(&e);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One run of the route's durable consumer, until it fails.
async fn consume(
    route: &Arc<Route>,
    js: &jetstream::Context,
    stream: &str,
    subject: &str,
) -> Result<(), String> {
    let stream = js.get_stream(stream).await.map_err(|e| e.to_string())?;
    let window = (route.concurrency * 64).max(1024);
    let mut consumer: jetstream::consumer::Consumer<pull::Config> = stream
        .get_or_create_consumer(
            &route.name,
            pull::Config {
                durable_name: Some(route.name.to_string()),
                filter_subject: subject.to_string(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                max_ack_pending: window as i64,
                description: Some(format!("sms-ingress delivery route {}", route.name)),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    let mut sched: Scheduler<u64, Record> = Scheduler::new(route.concurrency);
    let mut held: HashMap<u64, jetstream::Message> = HashMap::new();
    let mut oldest: BTreeMap<u64, i64> = BTreeMap::new();
    let mut attempts: JoinSet<(u64, u64)> = JoinSet::new();
    let mut progress = tokio::time::interval(ACK_WAIT / 3);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut unread = 0;
    loop {
        while let Some((key, record)) = sched.next() {
            let route = route.clone();
            attempts.spawn(async move {
                route.settle_record(&record).await;
                (key, record.offset)
            });
        }
        tokio::select! {
            next = messages.next(), if sched.pending() < window => {
                let message = match next {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("the consumer's message stream ended".into()),
                };
                let info = message.info().map_err(|e| e.to_string())?;
                let seq = info.stream_sequence;
                match Envelope::decode(&message.payload) {
                    Ok(env) => {
                        let record = Record { offset: seq, next_offset: seq + 1, envelope: Arc::new(env) };
                        oldest.insert(seq, record.envelope.received_at_ms);
                        let key = foldhash::fast::FixedState::default().hash_one(record.envelope.conversation());
                        held.insert(seq, message);
                        sched.push(key, record);
                    }
                    Err(e) => {
                        // Not an envelope: nothing to deliver; acknowledged so it is not redelivered.
                        tracing::warn!(route = %route.name, seq, error = %e, "delivery: stream message is not an envelope; skipped");
                        let _ = message.ack().await;
                    }
                }
            }
            Some(joined) = attempts.join_next() => {
                let Ok((key, seq)) = joined else { continue };
                sched.settle(&key);
                oldest.remove(&seq);
                if let Some(message) = held.remove(&seq) {
                    message.double_ack().await.map_err(|e| e.to_string())?;
                }
            }
            _ = progress.tick() => {
                for message in held.values() {
                    let _ = message.ack_with(AckKind::Progress).await;
                }
            }
            _ = tick.tick() => {
                if let Ok(info) = consumer.info().await {
                    unread = info.num_pending;
                }
                route.state.update("stream", QueueStats {
                    cursor: 0,
                    pending: sched.pending() as u64,
                    in_flight: sched.in_flight() as u64,
                    unread_records: unread,
                    oldest_ms: oldest.values().next().copied(),
                });
            }
        }
    }
}

//! sms-ingress: receives Twilio SMS webhooks, verifies them, makes each durable before
//! Twilio gets its 200, and hands it on to routing.
//!
//! The request path: `listener` → `webhook` → `form` → `inventory` (the number's entry)
//! → `signature` → `policy` (drops, dedup, compliance; `deadletter` keeps what it drops)
//! → `dispatch` → `sink` (`spool` or `nats`), and back with a single return, the ack.
//! `control` changes the inventory: the admin API (`control::admin`) runs the operations
//! (`control::ops`) through the store (`control::store`), which publishes snapshots built
//! from the shared `model`. `server` wires it all at start-up; `accept` and `shutdown`
//! serve every listener; `config`, `telemetry`, `nats`, `fsutil`, `percent`,
//! `fdbudget` and `background` are the infrastructure underneath.
//!
//! Everything is `pub(crate)` unless the binary (`main.rs`), the test kit, the
//! integration tests, the benches, the fuzz targets or the load test need it. That public
//! surface is: the model (`model`), the envelope and its codec (`envelope`), form parsing
//! and signatures (`form`, `signature`, `percent`), the configuration (`config`), the
//! sinks a test writes or reads directly (`sink::{QueueSink, SinkError}`, `sink::spool`,
//! `sink::nats`), the snapshot and dispatcher the benches drive (`inventory`, `dispatch`),
//! the admin API, store and Twilio client the API tests and fuzz targets start
//! (`control::{admin, store, vendor}`, `deadletter::DeadLetters`), `shutdown`, and the
//! binary's entry points (`server::{run, check}`, `telemetry::init_logs`, `status`).

// The request path.
pub mod deadletter;
pub mod dispatch;
pub mod envelope;
pub mod form;
pub mod inventory;
pub(crate) mod listener;
pub(crate) mod policy;
pub(crate) mod rejections;
pub mod signature;
pub mod sink;
pub(crate) mod webhook;

// The control plane and the model it shares with the data plane.
pub mod control;
pub mod model;

// Start-up and infrastructure.
pub(crate) mod accept;
pub(crate) mod background;
pub mod config;
pub(crate) mod cursor;
pub mod delivery;
pub(crate) mod fdbudget;
pub(crate) mod fsutil;
pub mod nats;
pub mod percent;
pub mod server;
pub mod shutdown;
pub mod status;
pub mod telemetry;

/// The test kit's fixtures, shared with the service's own unit tests.
#[cfg(test)]
#[path = "../testkit/src/fixtures.rs"]
pub(crate) mod fixtures;

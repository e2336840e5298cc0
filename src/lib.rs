//! sms-ingress: receives Twilio SMS webhooks, verifies them, and hands them durably to routing.
//!
//! The modules follow the request path: `listener` → `webhook` → `form` → `signature` →
//! `inventory` → `policy` → `dispatch` → `sink`; `control` changes the inventory.

pub(crate) mod accept;
pub(crate) mod background;
pub mod config;
pub mod control;
pub mod deadletter;
pub mod dispatch;
pub mod envelope;
pub mod form;
pub(crate) mod fsutil;
pub mod inventory;
pub mod listener;
pub mod model;
pub mod nats;
pub mod percent;
pub mod policy;
pub mod server;
pub mod shutdown;
pub mod signature;
pub mod sink;
pub mod telemetry;
pub mod webhook;

/// The test kit's fixtures, shared with the service's own unit tests.
#[cfg(test)]
#[path = "../testkit/src/fixtures.rs"]
pub(crate) mod fixtures;

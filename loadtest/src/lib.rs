//! sms-loadtest: drives sms-ingress the way Twilio does and checks that nothing it
//! acknowledged was lost or stored twice.
//!
//! The modules follow one load test: `plan` (what `setup` wrote) → `admin` (the setup
//! through the admin API) → `workload` (signed Twilio webhooks) → `schedule` (closed and
//! open loop pacing) → `client` (one task per HTTP/1.1 or h2 connection) → `report`
//! (HDR percentiles, table, JSON, SVG) → `verify` (the spool against the acked sids) →
//! `delivered` (what routing received: the sink-server and its log's checks); `flush`
//! (the sink's own flush time during a round, from the server's metrics);
//! `baseline` is the bare hyper server the service is compared with.

pub mod admin;
pub mod baseline;
pub mod client;
pub mod delivered;
pub mod flush;
pub mod plan;
pub mod report;
pub mod schedule;
pub mod verify;
pub mod workload;

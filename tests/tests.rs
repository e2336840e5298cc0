//! The integration tests, one binary (every extra test binary links the whole crate again
//! on 2 cores): a module per area. Most start the real `sms-ingress` binary on ephemeral
//! loopback ports with a temporary data directory (`support`).

mod support;

mod admin_api;
mod authz_matrix;
mod control_file;
mod crash;
mod dead_letters;
mod delivery;
mod disk_faults;
mod fleet_kv;
mod fleet_throughput;
mod hostile;
mod limits;
mod nats_sink;
mod operations;
mod properties;
mod protocols;
mod queues;
mod reload;
mod shared_key;
mod twilio_vectors;
mod vendor;
mod vendor_client;
mod webhook;

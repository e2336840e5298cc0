//! The load test's integration tests, one binary: the harness against a real server
//! (`smoke`) and `verify` against a real JetStream stream (`nats_verify`).

#[path = "../../tests/support/nats.rs"]
#[allow(dead_code)]
mod nats;

mod nats_verify;
mod smoke;

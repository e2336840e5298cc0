//! The test kit of sms-ingress: what tests, benches, fuzz targets and the load test need
//! beside the service's public surface, and what the service binary must never carry —
//! the fake Twilio REST API and the fixtures.

pub mod fake_twilio;
pub mod fixtures;
pub mod receiver;

pub use fake_twilio::FakeTwilio;
pub use fixtures::NullSink;

// `fixtures` names the service's modules through `crate::`, as it does inside the service.
use sms_ingress::{envelope, model, sink};

//! The control plane: integrations and numbers, persisted and swapped into the data plane.

pub mod admin;
pub mod audit;
pub mod import;
pub mod journal;
pub mod kv;
pub mod store;
pub mod vendor;
pub mod watch;

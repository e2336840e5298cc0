//! The control plane: integrations and numbers, persisted and swapped into the data plane.

pub mod admin;
pub mod audit;
pub mod import;
pub mod ops;
pub mod store;
pub mod vendor;

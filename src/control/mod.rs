//! The control plane: integrations and numbers, persisted and swapped into the data plane.

pub mod admin;
pub(crate) mod audit;
pub(crate) mod import;
pub(crate) mod ops;
pub mod store;
pub mod vendor;

//! The control plane: integrations and numbers, persisted and swapped into the data plane.

pub mod crypto;
pub mod state;

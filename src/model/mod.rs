//! The model both planes share: the state's records (integrations, numbers), the sealing
//! of their secrets, and the regions. The data plane builds its snapshot from these
//! without importing the control plane that changes them.

pub mod crypto;
pub mod numbers;
pub mod regions;
pub mod state;

//! sms-ingress: receives Twilio SMS webhooks, verifies them, and hands them durably to routing.
//!
//! The modules follow the request path: `listener` → `webhook` → `form` → `signature` →
//! `inventory` → `policy` → `dispatch` → `sink`; `control` changes the inventory.

pub mod config;
pub mod control;
pub mod envelope;
pub mod regions;
pub mod signature;
pub mod sink;

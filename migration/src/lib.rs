//! tern migration core.
#![forbid(unsafe_code)]
pub mod dirty;
pub mod uri;
pub mod protocol;
pub mod receiver;
pub mod sender;
pub mod transport;
pub mod stats;
pub mod controller;
pub mod throttle;
pub mod sim;
pub mod predict;

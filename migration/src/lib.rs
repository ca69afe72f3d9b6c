//! tern migration core.
#![forbid(unsafe_code)]
pub mod controller;
pub mod dirty;
pub mod predict;
pub mod protocol;
pub mod receiver;
pub mod sender;
pub mod sim;
pub mod stats;
pub mod stream_input;
pub mod thread_cpu;
pub mod throttle;
pub mod transport;
pub mod uri;

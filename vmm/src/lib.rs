//! tern: a small KVM virtual machine monitor whose live migration converges for
//! busy guests. This crate holds the VM lifecycle, vCPUs, guest memory, the API
//! and the I/O side of migration; `tern` (main.rs) is its command line.

pub mod api;
pub mod api_handler;
pub mod arch;
pub mod builder;
pub mod cli;
pub mod config;
pub mod console;
pub mod device_manager;
pub mod event_loop;
pub mod exit;
pub mod logger;
pub mod machine;
pub mod migrate;
pub mod progress;
pub mod runner;
pub mod terminal;
pub mod virtio_slots;
pub mod vstate;

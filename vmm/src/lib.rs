//! tern: a small KVM virtual machine monitor whose live migration converges for
//! busy guests. This crate holds the VM lifecycle, vCPUs, guest memory, the API
//! and the I/O side of migration; `tern` (main.rs) is its command line.

pub mod api;
pub mod arch;
pub mod builder;
pub mod cli;
pub mod config;
pub mod console;
pub mod exit;
pub mod vstate;

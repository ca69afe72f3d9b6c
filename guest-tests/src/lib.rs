//! tern's host-side scenario runner: starts a source and a destination VMM
//! (tern or QEMU), runs the ring-3 test guest's workload, migrates it with a
//! scenario's limits (optionally over a shaped link between two network
//! namespaces), collects the migration's statistics and every guest line,
//! verifies the guest's memory afterwards, and reports (JSON, a table, an
//! SVG timeline). Also the benchmarks (boot time, memory overhead,
//! migration cost, send rate vs loopback). See docs/harness.md.

pub mod analysis;
pub mod artifacts;
pub mod bench;
pub mod console;
pub mod error;
pub mod interrupt;
pub mod link;
pub mod process;
pub mod qemu;
pub mod report;
pub mod run;
pub mod scenario;
pub mod tern;
pub mod verifier;
pub mod vmm;
pub mod workdir;
pub mod workload;

pub use error::{Error, Result};

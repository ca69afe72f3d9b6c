//! Benchmarks: they print tables and never pass or fail. Targets are
//! judged by eye in docs/harness.md.

pub mod boot;
pub mod disk;
pub mod iperf;
pub mod loopback;
pub mod memory;
pub mod migrate;
pub mod send_rate;
pub mod stats;

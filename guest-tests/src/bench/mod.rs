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

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::report;
use crate::run::RunResult;

/// Where the benchmarks keep the record of a run that failed its checks: a
/// bench prints only the verdict, and a failure seen once must be readable
/// later.
pub const FAILED_RUNS_DIR: &str = "tern-results/bench-failures";

/// Keeps run `r` (`report::write_run`: the JSON with every console line and
/// both VMMs' logs, the timeline, the summary) in a directory of its own under
/// `root` ([`FAILED_RUNS_DIR`] for the benchmarks), and says where, for the
/// bench's note.
pub fn keep_failed_run(root: &Path, r: &RunResult) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = root.join(format!(
        "{}-{}-{}",
        r.started_unix_s,
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    match report::write_run(&dir, r) {
        Ok(_) => format!("run kept in {}", dir.display()),
        Err(e) => format!("the run could not be kept: {e}"),
    }
}

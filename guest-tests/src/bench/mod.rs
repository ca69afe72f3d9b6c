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

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::Result;
use crate::report;
use crate::run::RunResult;

/// Where the benchmarks keep the record of a run that failed its checks: a
/// bench prints only the verdict, and a failure seen once must be readable
/// later.
pub const FAILED_RUNS_DIR: &str = "tern-results/bench-failures";

/// Keeps run `r` (`report::write_run`: the JSON with every console line and
/// both VMMs' logs, the timeline, the summary) in a directory of its own under
/// `root`, and returns that directory.
pub fn keep_failed_run(root: &Path, r: &RunResult) -> Result<PathBuf> {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = root.join(format!(
        "{}-{}-{}",
        r.started_unix_s,
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    report::write_run(&dir, r)?;
    Ok(dir)
}

/// Keeps a failed run under [`FAILED_RUNS_DIR`] and says where, for a bench's
/// note.
fn kept(r: &RunResult) -> String {
    match keep_failed_run(Path::new(FAILED_RUNS_DIR), r) {
        Ok(dir) => format!("run kept in {}", dir.display()),
        Err(e) => format!("the run could not be kept: {e}"),
    }
}

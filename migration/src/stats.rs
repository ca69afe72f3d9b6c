//! The statistics of a migration: what `GET /migration`, `tern migrate --json`
//! and the scenario runner read. Times are milliseconds, rates bytes/second.

use serde::{Deserialize, Serialize};

/// Where a migration is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationPhase {
    /// None has run.
    #[default]
    None,
    /// Connecting and handshaking.
    Setup,
    /// Pre-copy rounds while the guest runs.
    Active,
    /// The guest is paused for the final copy.
    Switchover,
    /// The guest runs on the destination.
    Completed,
    /// Failed; the guest runs on the source.
    Failed,
    /// Cancelled; the guest runs on the source.
    Cancelled,
    /// Stopped by policy (no convergence, timeout, max iterations); the guest runs on the source.
    Aborted,
}

impl MigrationPhase {
    /// Whether the migration has ended.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            MigrationPhase::Completed
                | MigrationPhase::Failed
                | MigrationPhase::Cancelled
                | MigrationPhase::Aborted
        )
    }
}

/// Device drain statistics (the non-blocking quiesce inside pre-copy rounds).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DrainStats {
    /// Quiesce attempts.
    pub attempts: u32,
    /// Attempts answered Busy (EBUSY).
    pub busy: u32,
    /// Largest number of requests in flight seen by a Busy answer.
    pub max_in_flight: u32,
    /// Length of each quiesce window (quiesce requested → resumed or switched over), ms.
    pub windows_ms: Vec<f64>,
    /// The queue-depth limit applied near switchover, if any.
    pub queue_depth_limit: Option<u16>,
}

/// One sample of the migration's progress, for plots.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProgressPoint {
    /// Time since the start, ms.
    pub t_ms: f64,
    /// Round.
    pub round: u32,
    /// Dirty bytes still to send.
    pub remaining_bytes: u64,
    /// Transfer rate estimate.
    pub transfer_bytes_per_sec: f64,
    /// Dirty rate estimate.
    pub dirty_bytes_per_sec: f64,
    /// Throttle per vCPU, percent.
    pub throttle_pct: Vec<f64>,
    /// Expected downtime now, ms.
    pub expected_downtime_ms: Option<f64>,
}

/// Everything reported about a migration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MigrationStats {
    /// Phase.
    pub phase: MigrationPhase,
    /// Destination URI.
    pub to: String,
    /// Why it failed, was cancelled or aborted.
    pub error: Option<String>,
    /// Time from start to the end (or now), ms.
    pub total_ms: f64,
    /// Connect + handshake + dirty-log start, ms.
    pub setup_ms: f64,
    /// Source pause → destination says resumed, ms (final when completed).
    pub downtime_ms: Option<f64>,
    /// Source pause → the source has sent everything (memory and guest state, before the
    /// destination restores and resumes), ms: where QEMU's reported downtime ends.
    pub downtime_sent_ms: Option<f64>,
    /// Expected downtime per the latest estimate, ms.
    pub expected_downtime_ms: Option<f64>,
    /// Expected downtime announced before a forced switchover, ms.
    pub forced_expected_downtime_ms: Option<f64>,
    /// Rounds started (0 = the bulk pass).
    pub rounds: u32,
    /// Bytes written to the stream.
    pub bytes_sent: u64,
    /// Pages sent with data.
    pub data_pages: u64,
    /// Pages sent as zero markers.
    pub zero_pages: u64,
    /// Dirty bytes still to send.
    pub remaining_bytes: u64,
    /// Transfer rate estimate.
    pub transfer_bytes_per_sec: f64,
    /// Dirty rate estimate.
    pub dirty_bytes_per_sec: f64,
    /// Current throttle per vCPU, percent.
    pub throttle_pct: Vec<f64>,
    /// The controller's latest reasoning, for people.
    pub reason: String,
    /// Dirty tracking used (`ring` or `bitmap`).
    pub dirty_tracking: String,
    /// Longest time the loop held the vCPUs outside the switchover (ms): the
    /// guest stall the migration itself caused.
    pub max_precopy_stall_ms: f64,
    /// Device drain.
    pub drain: DrainStats,
    /// CPU the source's migration threads used, when it ended (None while
    /// running, or where the host cannot tell).
    pub cpu_ms: Option<MigrationCpu>,
    /// Progress over time.
    pub history: Vec<ProgressPoint>,
}

/// CPU time the source spent on a migration, ms. The thread that reads the
/// destination's few answers only waits and is not counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MigrationCpu {
    /// The migration loop, which does all of the sending: harvesting dirty
    /// pages, looking at each page (zero? its checksum), writing to the
    /// socket (for TCP, most of the kernel's sending work), the controller,
    /// the switchover.
    pub loop_ms: f64,
}

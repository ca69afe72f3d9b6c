//! What one simulated migration produced.

use std::time::Duration;

use serde::Serialize;

use crate::controller::StopReason;

/// How the simulated migration ended.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    /// Switched over within the policy's downtime limit.
    Converged,
    /// Stop-and-copy forced although the limit could not be met.
    Forced {
        /// Why.
        reason: StopReason,
    },
    /// Stopped; the guest keeps running on the source.
    Aborted {
        /// Why.
        reason: StopReason,
    },
    /// Still iterating when the simulation's time limit (or round limit) was reached: what a
    /// policy without a stop condition does with a guest that cannot converge.
    GaveUp,
}

impl Outcome {
    /// A short word for tables.
    pub fn word(&self) -> &'static str {
        match self {
            Outcome::Converged => "ok",
            Outcome::Forced { .. } => "forced",
            Outcome::Aborted { .. } => "aborted",
            Outcome::GaveUp => "never",
        }
    }
}

/// One round, for the throttle-over-time trace.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RoundRecord {
    /// Round index (0 = bulk pass).
    pub round: u32,
    /// Time since the start when the round began, seconds.
    pub start_secs: f64,
    /// Round duration, seconds.
    pub duration_secs: f64,
    /// Bytes sent in the round.
    pub sent_bytes: u64,
    /// Dirty bytes left at its end (the next round's set).
    pub remaining_bytes: u64,
    /// Throttle averaged over time and over vCPUs.
    pub mean_throttle: f64,
    /// Highest throttle any vCPU had in the round.
    pub max_throttle: f64,
    /// vCPUs throttled at some point in the round.
    pub throttled_vcpus: usize,
}

/// One simulated migration.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimResult {
    /// Policy name.
    pub policy: String,
    /// How it ended.
    pub outcome: Outcome,
    /// From the start until the guest runs on the destination (downtime included), or until
    /// the abort / the time limit.
    pub total_time: Duration,
    /// Simulated pause at switchover; `None` when the guest never stopped.
    pub downtime: Option<Duration>,
    /// What the policy expected the downtime to be when it decided.
    pub expected_downtime: Option<Duration>,
    /// Rounds started, the bulk pass included.
    pub rounds: u32,
    /// Bytes sent, final copy included.
    pub bytes_sent: u64,
    /// Guest CPU lost to throttling, vCPU-seconds (only CPU the vCPU wanted counts).
    pub throttle_cpu_lost_vcpu_secs: f64,
    /// Throttling plus the switchover pause, vCPU-seconds.
    pub cpu_lost_vcpu_secs: f64,
    /// Share of the CPU the guest wanted during the migration that it got, 0..=1.
    pub work_retained: f64,
    /// Throttle averaged over time and over all vCPUs.
    pub mean_throttle: f64,
    /// Highest throttle any vCPU had.
    pub max_throttle: f64,
    /// Per round.
    pub trace: Vec<RoundRecord>,
}

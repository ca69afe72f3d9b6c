//! The JSON shapes of the API.

use serde::{Deserialize, Serialize};

/// `PUT /migration`: where to and with which limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateRequest {
    /// Destination URI (`tcp:HOST:PORT` or `unix:PATH`).
    pub to: String,
    /// Largest acceptable pause of the guest at switchover, in ms.
    #[serde(default = "default_max_downtime_ms")]
    pub max_downtime_ms: u64,
    /// Send-rate cap in bytes per second (none when absent).
    #[serde(default)]
    pub max_bandwidth_bytes_per_sec: Option<u64>,
    /// Give up (per `on_no_converge`) after this many seconds.
    #[serde(default)]
    pub timeout_s: Option<f64>,
    /// Give up (per `on_no_converge`) after this many rounds.
    #[serde(default)]
    pub max_iterations: Option<u32>,
    /// 0 = guest performance first, 1 = migration time first.
    #[serde(default = "default_aggression")]
    pub aggression: f64,
    /// Largest vCPU throttle, in percent.
    #[serde(default = "default_max_throttle_pct")]
    pub max_throttle_pct: f64,
    /// What to do when the migration cannot converge: `abort` or `force`.
    #[serde(default = "default_on_no_converge")]
    pub on_no_converge: String,
    /// Disable the vCPU throttle entirely (plain pre-copy, for comparisons).
    #[serde(default)]
    pub no_throttle: bool,
    /// Longest pause a throttle sleep may give a vCPU, in ms (none: the duty
    /// cycle stretches its period up to 1 s at 99 % to keep throttling accurate).
    #[serde(default)]
    pub max_stall_ms: Option<u64>,
    /// Longest a drain window stays open while devices are busy, in ms (none:
    /// [`crate::device_manager::QUIESCE_WINDOW`]).
    #[serde(default)]
    pub drain_window_ms: Option<u64>,
}

fn default_max_downtime_ms() -> u64 {
    300
}
fn default_aggression() -> f64 {
    0.5
}
fn default_max_throttle_pct() -> f64 {
    99.0
}
fn default_on_no_converge() -> String {
    "abort".into()
}

/// `PUT /migration/estimate`: sample the guest without migrating.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EstimateRequest {
    /// How long to sample dirty rates.
    #[serde(default = "default_sample_s")]
    pub sample_s: f64,
    /// Link bandwidth to assume, bytes per second (default: measured loopback
    /// copy rate capped by `max_bandwidth_bytes_per_sec`).
    #[serde(default)]
    pub bandwidth_bytes_per_sec: Option<u64>,
    /// Largest acceptable pause, ms.
    #[serde(default = "default_max_downtime_ms")]
    pub max_downtime_ms: u64,
    /// Largest vCPU throttle, in percent.
    #[serde(default = "default_max_throttle_pct")]
    pub max_throttle_pct: f64,
}

fn default_sample_s() -> f64 {
    3.0
}

/// `PUT /vm/throttle`: set vCPU throttles directly, in percent (0–99).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleRequest {
    /// One value per vCPU, or a single value for all.
    pub percent: Vec<f64>,
    /// Duty-cycle period, ms (1–1000; default 10).
    #[serde(default)]
    pub period_ms: Option<f64>,
}

/// `PUT /devices/{id}/fault`: the block backend's fault-injection hook.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRequest {
    /// Added latency per request, ms (0 = none).
    #[serde(default)]
    pub delay_ms: u64,
    /// Hold every request until released.
    #[serde(default)]
    pub hold: bool,
}

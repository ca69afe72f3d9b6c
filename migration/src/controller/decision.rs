//! What the controller tells the migration loop: throttles, the next action, and the estimates
//! behind them (also what `GET /migration` reports).

use std::fmt;
use std::time::Duration;

use serde::{Serialize, Serializer};

/// Why the controller gave up on a converging live migration.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum StopReason {
    /// Even at `max_throttle` the guest dirties memory at ≥ 97 % of the transfer rate, so the
    /// remaining set cannot shrink to what `max_downtime` allows.
    NoConvergence {
        /// Lower bound on the dirty rate at maximum throttle, bytes per second.
        floor_bytes_per_sec: f64,
        /// Transfer rate it was compared with, bytes per second.
        transfer_bytes_per_sec: f64,
    },
    /// `max_iterations` rounds completed without meeting `max_downtime`.
    MaxIterations {
        /// Rounds completed, the bulk pass included.
        rounds: u32,
    },
    /// `timeout` passed without meeting `max_downtime`.
    Timeout {
        /// Time since the migration started.
        #[serde(serialize_with = "ser_ms")]
        elapsed: Duration,
    },
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::NoConvergence { floor_bytes_per_sec, transfer_bytes_per_sec } => write!(
                f,
                "no convergence: at maximum throttle the guest still dirties ≥ {} against a transfer rate of {}",
                Rate(*floor_bytes_per_sec),
                Rate(*transfer_bytes_per_sec)
            ),
            StopReason::MaxIterations { rounds } => write!(f, "max iterations: {rounds} rounds without meeting max_downtime"),
            StopReason::Timeout { elapsed } => write!(f, "timeout after {:.1} s without meeting max_downtime", elapsed.as_secs_f64()),
        }
    }
}

/// What the migration loop does next.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// Run another round (or keep going with this one); devices run normally (resume their I/O
    /// if an earlier `Quiesce` stopped it).
    Continue,
    /// Keep iterating, and have devices quiesce (`try_quiesce`, never blocking) now: the
    /// switchover is expected within about two rounds, or is due but devices are still busy.
    Quiesce,
    /// Stop the guest and copy the rest: the expected downtime is within `max_downtime`.
    Switchover {
        /// Remaining dirty bytes at the transfer rate, plus the state allowance.
        #[serde(serialize_with = "ser_ms")]
        expected_downtime: Duration,
    },
    /// Stop throttling and keep the guest running on the source.
    Abort {
        /// Why.
        reason: StopReason,
    },
    /// Stop-and-copy now although `max_downtime` cannot be met (`on_no_converge = force`).
    Force {
        /// Why.
        reason: StopReason,
        /// Downtime to expect, reported before the guest is paused; `None` when no transfer rate
        /// was ever measured.
        #[serde(serialize_with = "ser_opt_ms")]
        expected_downtime: Option<Duration>,
    },
}

impl Action {
    /// Whether the migration's live phase is over (switchover, abort or force).
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Action::Switchover { .. } | Action::Abort { .. } | Action::Force { .. }
        )
    }
}

/// How a vCPU's dirty rate responds to throttling, as measured so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scaling {
    /// Not yet measured at two different throttles (presumed proportional).
    Unknown,
    /// Falls with CPU share (elasticity ≥ 0.5): throttling works.
    Proportional,
    /// Barely falls with CPU share ("burst"): throttling costs CPU for little gain.
    Inelastic,
}

/// Per-vCPU estimates.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VcpuEstimate {
    /// Current dirty rate, bytes per second; `None` without attribution (dirty bitmap).
    pub dirty_bytes_per_sec: Option<f64>,
    /// Rate it would have unthrottled, bytes per second; `None` without attribution.
    pub unthrottled_dirty_bytes_per_sec: Option<f64>,
    /// Fitted `β` in `rate = unthrottled · share^β`; `None` without attribution.
    pub cpu_elasticity: Option<f64>,
    /// `cpu_elasticity` as a verdict.
    pub scaling: Scaling,
}

/// The controller's current view.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Estimates {
    /// Averaged transfer rate (capped by `max_bandwidth`), bytes per second.
    pub transfer_bytes_per_sec: Option<f64>,
    /// Averaged total dirty rate (dirty-set growth), bytes per second.
    pub dirty_bytes_per_sec: Option<f64>,
    /// Dirty rate the decided throttles should give, bytes per second.
    pub planned_dirty_bytes_per_sec: Option<f64>,
    /// Dirty rate the controller aims for (margin and escalation applied), bytes per second.
    pub target_dirty_bytes_per_sec: Option<f64>,
    /// Dirty rate no vCPU throttle slows (the VMM's own writes), bytes per second.
    pub unattributed_dirty_bytes_per_sec: Option<f64>,
    /// One entry per vCPU.
    pub vcpus: Vec<VcpuEstimate>,
    /// Bytes still to send.
    pub remaining_bytes: u64,
    /// Remaining bytes at the transfer rate plus the state allowance; `None` before any rate.
    #[serde(serialize_with = "ser_opt_ms")]
    pub expected_downtime: Option<Duration>,
    /// Rounds that did not shrink the set enough (each tightened the target).
    pub escalations: u32,
    /// Whether this round throttles suspected "burst" vCPUs at maximum to measure them.
    pub probing: bool,
    /// One line for humans on why the decision is what it is.
    pub reason: String,
}

/// The controller's answer to one observation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Decision {
    /// Throttle fraction per vCPU for the time until the next observation, `0.0..=max_throttle`.
    /// Always all zero with a terminal action, so nothing stays throttled if the final phase
    /// fails and the guest resumes on the source.
    pub throttle_fractions: Vec<f64>,
    /// What to do next.
    pub action: Action,
    /// The numbers behind it.
    pub estimates: Estimates,
}

impl Decision {
    /// Before the first observation: no throttle, continue.
    pub fn initial(vcpus: usize) -> Decision {
        Decision {
            throttle_fractions: vec![0.0; vcpus],
            action: Action::Continue,
            estimates: Estimates {
                reason: "bulk pass: no throttle".to_string(),
                ..Estimates::default()
            },
        }
    }
}

/// A rate for humans: `1.25 GB/s`.
#[derive(Clone, Copy, Debug)]
pub struct Rate(pub f64);

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/s", Bytes(self.0))
    }
}

/// A byte count for humans, decimal units: `3.4 GB`.
#[derive(Clone, Copy, Debug)]
pub struct Bytes(pub f64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if !b.is_finite() {
            return write!(f, "∞ B");
        }
        let (v, unit) = if b.abs() >= 1e12 {
            (b / 1e12, "TB")
        } else if b.abs() >= 1e9 {
            (b / 1e9, "GB")
        } else if b.abs() >= 1e6 {
            (b / 1e6, "MB")
        } else if b.abs() >= 1e3 {
            (b / 1e3, "kB")
        } else {
            (b, "B")
        };
        if unit == "B" || v.abs() >= 100.0 {
            write!(f, "{v:.0} {unit}")
        } else {
            write!(f, "{v:.2} {unit}")
        }
    }
}

fn ser_ms<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

fn ser_opt_ms<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => ser_ms(d, s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(Bytes(1.25e9).to_string(), "1.25 GB");
        assert_eq!(Bytes(999.0).to_string(), "999 B");
        assert_eq!(Bytes(250e6).to_string(), "250 MB");
        assert_eq!(Rate(f64::INFINITY).to_string(), "∞ B/s");
    }

    #[test]
    fn decisions_serialize_with_milliseconds() {
        let d = Decision {
            action: Action::Force {
                reason: StopReason::Timeout {
                    elapsed: Duration::from_secs(2),
                },
                expected_downtime: Some(Duration::from_millis(1500)),
            },
            ..Decision::initial(2)
        };
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["action"]["action"], "force");
        assert_eq!(json["action"]["expected_downtime"], 1500.0);
        assert_eq!(json["action"]["reason"]["kind"], "timeout");
        assert_eq!(json["action"]["reason"]["elapsed"], 2000.0);
        assert!(d.action.is_terminal());
        assert!(!Action::Quiesce.is_terminal());
    }
}

//! The controller's knobs (`tern migrate --max-downtime … --on-no-converge …`), their
//! defaults and validation.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Default `max_downtime`: QEMU's `downtime-limit` and Cloud Hypervisor's `downtime_ms` default.
pub const DEFAULT_MAX_DOWNTIME: Duration = Duration::from_millis(300);
/// Default aggression: the middle, whose margin equals QEMU's 50 % trigger threshold.
pub const DEFAULT_AGGRESSION: f64 = 0.5;
/// Default `max_throttle`, as QEMU's `max-cpu-throttle`.
pub const DEFAULT_MAX_THROTTLE: f64 = 0.99;
/// Default IIR weight of the old value. Rounds are few (tens), so the average must follow a
/// change within two or three rounds; QEMU's RFC suggested 0.99 for per-packet samples.
pub const DEFAULT_AVERAGING_ALPHA: f64 = 0.5;
/// Default time allowed at switchover for vCPU and device state (plus the final sync and the
/// destination's resume). Cloud Hypervisor measured ~5 ms for idle VMs; device drain and a
/// busy destination cost more, so 10 % of the default downtime is reserved.
pub const DEFAULT_STATE_TRANSFER_ALLOWANCE: Duration = Duration::from_millis(30);
/// Largest vCPU count accepted (KVM's `KVM_MAX_VCPUS` on x86 is 4096).
pub const MAX_VCPUS: usize = 4096;

/// What to do when the migration cannot converge, hits `max_iterations` or `timeout`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnNoConverge {
    /// Stop throttling and keep the guest running on the source (the default: nothing is
    /// frozen and nothing is lost; the operator decides what next).
    #[default]
    Abort,
    /// Stop-and-copy now, accepting a downtime above `max_downtime`; the controller reports
    /// the expected downtime before the VMM pauses the guest.
    Force,
}

impl fmt::Display for OnNoConverge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OnNoConverge::Abort => "abort",
            OnNoConverge::Force => "force",
        })
    }
}

/// `--on-no-converge` was neither `abort` nor `force`.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("unknown on-no-converge value {0:?} (expected \"abort\" or \"force\")")]
pub struct ParseOnNoConvergeError(pub String);

impl FromStr for OnNoConverge {
    type Err = ParseOnNoConvergeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "abort" => Ok(OnNoConverge::Abort),
            "force" => Ok(OnNoConverge::Force),
            other => Err(ParseOnNoConvergeError(other.to_string())),
        }
    }
}

/// Everything the controller needs to know before the first round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ControllerConfig {
    /// Number of vCPUs; decisions carry one throttle fraction per vCPU.
    pub vcpus: usize,
    /// Longest acceptable pause at switchover (memory still dirty plus the state allowance).
    pub max_downtime: Duration,
    /// Rate limit the sender applies, if any. Caps the transfer-rate estimate and stands in for
    /// it before the first measurement.
    pub max_bandwidth_bytes_per_sec: Option<u64>,
    /// Give up (per `on_no_converge`) once this much time has passed since the start.
    pub timeout: Option<Duration>,
    /// Give up (per `on_no_converge`) after this many completed rounds, the bulk pass included.
    pub max_iterations: Option<u32>,
    /// 0.0 = guest performance first (least throttle that still makes progress) … 1.0 = migration
    /// time first (finish as fast as possible, up to pausing the dirtying vCPUs). See
    /// [`super::Policy`] for exactly what it changes.
    pub aggression: f64,
    /// Highest throttle fraction any vCPU gets, `0.0..=0.99`.
    pub max_throttle: f64,
    /// What to do when convergence is impossible or a limit is hit.
    pub on_no_converge: OnNoConverge,
    /// IIR weight α of the old value in `new = α·old + (1 − α)·sample`, `0.0..1.0`.
    pub averaging_alpha: f64,
    /// Time reserved at switchover for vCPU and device state, added to the memory copy time.
    pub state_transfer_allowance: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            vcpus: 1,
            max_downtime: DEFAULT_MAX_DOWNTIME,
            max_bandwidth_bytes_per_sec: None,
            timeout: None,
            max_iterations: None,
            aggression: DEFAULT_AGGRESSION,
            max_throttle: DEFAULT_MAX_THROTTLE,
            on_no_converge: OnNoConverge::Abort,
            averaging_alpha: DEFAULT_AVERAGING_ALPHA,
            state_transfer_allowance: DEFAULT_STATE_TRANSFER_ALLOWANCE,
        }
    }
}

impl ControllerConfig {
    /// The defaults for a guest with `vcpus` vCPUs.
    pub fn new(vcpus: usize) -> Self {
        ControllerConfig {
            vcpus,
            ..ControllerConfig::default()
        }
    }

    /// Checks every field; the controller is built only from a valid config.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vcpus == 0 {
            return Err(ConfigError::NoVcpus);
        }
        if self.vcpus > MAX_VCPUS {
            return Err(ConfigError::TooManyVcpus(self.vcpus));
        }
        if self.max_downtime.is_zero() {
            return Err(ConfigError::ZeroMaxDowntime);
        }
        if self.state_transfer_allowance >= self.max_downtime {
            return Err(ConfigError::AllowanceNotBelowDowntime {
                allowance: self.state_transfer_allowance,
                max_downtime: self.max_downtime,
            });
        }
        if self.max_bandwidth_bytes_per_sec == Some(0) {
            return Err(ConfigError::ZeroBandwidth);
        }
        if self.timeout == Some(Duration::ZERO) {
            return Err(ConfigError::ZeroTimeout);
        }
        if self.max_iterations == Some(0) {
            return Err(ConfigError::ZeroIterations);
        }
        if !(0.0..=1.0).contains(&self.aggression) {
            return Err(ConfigError::Aggression(self.aggression));
        }
        if !(0.0..=crate::throttle::MAX_FRACTION).contains(&self.max_throttle) {
            return Err(ConfigError::MaxThrottle(self.max_throttle));
        }
        if !(0.0..1.0).contains(&self.averaging_alpha) {
            return Err(ConfigError::Alpha(self.averaging_alpha));
        }
        Ok(())
    }
}

/// A [`ControllerConfig`] field is out of range.
#[derive(Clone, Debug, Error, PartialEq)]
pub enum ConfigError {
    /// `vcpus` was 0.
    #[error("vcpus must be at least 1")]
    NoVcpus,
    /// `vcpus` above [`MAX_VCPUS`].
    #[error("vcpus {0} exceeds the supported maximum of {MAX_VCPUS}")]
    TooManyVcpus(usize),
    /// `max_downtime` was zero.
    #[error("max_downtime must be greater than zero")]
    ZeroMaxDowntime,
    /// The state allowance alone would use up the downtime budget.
    #[error("state_transfer_allowance ({allowance:?}) must be shorter than max_downtime ({max_downtime:?})")]
    AllowanceNotBelowDowntime {
        /// The configured allowance.
        allowance: Duration,
        /// The configured downtime limit.
        max_downtime: Duration,
    },
    /// `max_bandwidth` was 0 bytes/s.
    #[error("max_bandwidth must be greater than zero")]
    ZeroBandwidth,
    /// `timeout` was zero.
    #[error("timeout must be greater than zero")]
    ZeroTimeout,
    /// `max_iterations` was 0.
    #[error("max_iterations must be at least 1")]
    ZeroIterations,
    /// `aggression` outside `0.0..=1.0` (or NaN).
    #[error("aggression must be within 0.0..=1.0, got {0}")]
    Aggression(f64),
    /// `max_throttle` outside `0.0..=0.99` (or NaN).
    #[error("max_throttle must be within 0.0..=0.99, got {0}")]
    MaxThrottle(f64),
    /// `averaging_alpha` outside `0.0..1.0` (or NaN).
    #[error("averaging_alpha must be within 0.0..1.0, got {0}")]
    Alpha(f64),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = ControllerConfig::new(8);
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.max_downtime, Duration::from_millis(300));
        assert_eq!(c.max_throttle, 0.99);
        assert_eq!(c.on_no_converge, OnNoConverge::Abort);
    }

    #[test]
    fn every_bad_field_is_named() {
        let ok = ControllerConfig::new(2);
        let cases: Vec<(ControllerConfig, ConfigError)> = vec![
            (
                ControllerConfig {
                    vcpus: 0,
                    ..ok.clone()
                },
                ConfigError::NoVcpus,
            ),
            (
                ControllerConfig {
                    vcpus: MAX_VCPUS + 1,
                    ..ok.clone()
                },
                ConfigError::TooManyVcpus(MAX_VCPUS + 1),
            ),
            (
                ControllerConfig {
                    max_downtime: Duration::ZERO,
                    ..ok.clone()
                },
                ConfigError::ZeroMaxDowntime,
            ),
            (
                ControllerConfig {
                    state_transfer_allowance: Duration::from_millis(300),
                    ..ok.clone()
                },
                ConfigError::AllowanceNotBelowDowntime {
                    allowance: Duration::from_millis(300),
                    max_downtime: Duration::from_millis(300),
                },
            ),
            (
                ControllerConfig {
                    max_bandwidth_bytes_per_sec: Some(0),
                    ..ok.clone()
                },
                ConfigError::ZeroBandwidth,
            ),
            (
                ControllerConfig {
                    timeout: Some(Duration::ZERO),
                    ..ok.clone()
                },
                ConfigError::ZeroTimeout,
            ),
            (
                ControllerConfig {
                    max_iterations: Some(0),
                    ..ok.clone()
                },
                ConfigError::ZeroIterations,
            ),
            (
                ControllerConfig {
                    aggression: 1.5,
                    ..ok.clone()
                },
                ConfigError::Aggression(1.5),
            ),
            (
                ControllerConfig {
                    max_throttle: 1.0,
                    ..ok.clone()
                },
                ConfigError::MaxThrottle(1.0),
            ),
            (
                ControllerConfig {
                    averaging_alpha: 1.0,
                    ..ok.clone()
                },
                ConfigError::Alpha(1.0),
            ),
        ];
        for (config, expected) in cases {
            assert_eq!(config.validate(), Err(expected));
        }
    }

    #[test]
    fn nan_is_rejected() {
        let c = ControllerConfig {
            aggression: f64::NAN,
            ..ControllerConfig::new(1)
        };
        assert!(matches!(c.validate(), Err(ConfigError::Aggression(_))));
        let c = ControllerConfig {
            max_throttle: f64::NAN,
            ..ControllerConfig::new(1)
        };
        assert!(matches!(c.validate(), Err(ConfigError::MaxThrottle(_))));
        let c = ControllerConfig {
            averaging_alpha: f64::NAN,
            ..ControllerConfig::new(1)
        };
        assert!(matches!(c.validate(), Err(ConfigError::Alpha(_))));
    }

    #[test]
    fn on_no_converge_parses() {
        assert_eq!("abort".parse::<OnNoConverge>(), Ok(OnNoConverge::Abort));
        assert_eq!("force".parse::<OnNoConverge>(), Ok(OnNoConverge::Force));
        assert!("pause".parse::<OnNoConverge>().is_err());
        assert_eq!(OnNoConverge::Force.to_string(), "force");
    }
}

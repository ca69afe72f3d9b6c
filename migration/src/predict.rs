//! `tern migrate --estimate`: predicts a migration per aggression level from a few seconds of
//! measurements, by running the simulator with tern's own controller on a model fitted to them.
//!
//! What the VMM measures (dirty logging on, no migration, for a few seconds):
//! - per vCPU, the pages it newly dirtied in short windows (harvest every ~100 ms) as a rate:
//!   with windows that short almost every write is to a page not yet dirty, so this is the
//!   raw write rate `w`;
//! - per vCPU, the distinct pages it dirtied over the whole window `W` (one harvest at the end,
//!   or the union of the short ones): `D`;
//! - the guest's non-zero bytes (a scan, or the balloon's statistics) and the link rate.
//!
//! The working set follows from the saturation law the simulator uses,
//! `D = ws·(1 − e^(−w·W/ws))`, solved for `ws`. A vCPU that dirtied only distinct pages
//! (`D ≈ w·W`) gives no upper bound; it is then assumed to write over all non-zero memory,
//! the pessimistic reading. Writes are assumed proportional to CPU time and uniform over the set;
//! a "burst" workload is not visible without throttled samples, so the live controller (which
//! detects it) can end a migration the prediction called feasible.

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use thiserror::Error;

use crate::controller::{Bytes, ConfigError, ControllerConfig};
use crate::sim::{
    simulate, CpuScaling, GuestModel, Link, Outcome, SimOptions, Tern, VcpuWorkload, WritePattern,
};

/// Aggression levels `tern migrate --estimate` shows by default.
pub const DEFAULT_AGGRESSIONS: [f64; 5] = [0.0, 0.25, 0.5, 0.75, 1.0];

/// How long a predicted migration may iterate before it is reported as never converging,
/// when the config sets no timeout.
pub const PREDICTION_HORIZON: Duration = Duration::from_secs(24 * 3600);

/// One vCPU's measurements.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct VcpuSample {
    /// Newly dirtied bytes per second over short (~100 ms) harvest windows: the write rate.
    pub dirty_bytes_per_sec: f64,
    /// Distinct bytes dirtied over the whole sampling window.
    pub distinct_bytes: u64,
    /// Share of the CPU the vCPU used while sampled (1.0 when unknown).
    pub busy_fraction: f64,
}

/// A guest as measured before migrating.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GuestMeasurements {
    /// Guest memory, bytes.
    pub memory_bytes: u64,
    /// Bytes of memory that are not zero pages.
    pub nonzero_bytes: u64,
    /// Page size, bytes.
    pub page_size: u64,
    /// Length of the sampling window.
    pub window: Duration,
    /// One entry per vCPU (dirty ring), or a single entry for the whole guest (bitmap: no
    /// attribution), which is then spread evenly over `config.vcpus`.
    pub vcpus: Vec<VcpuSample>,
    /// Link rate: measured, or `max_bandwidth`, whichever is lower; bytes per second.
    pub link_bytes_per_sec: f64,
    /// Per-round dead time on the link (one round trip, the dirty-log sync).
    pub link_latency: Duration,
    /// Time to send vCPU and device state and resume at switchover.
    pub state_transfer: Duration,
}

/// The measurements cannot be used.
#[derive(Clone, Debug, Error, PartialEq)]
pub enum PredictError {
    /// `memory_bytes` was 0.
    #[error("memory_bytes must be greater than zero")]
    NoMemory,
    /// `nonzero_bytes` above `memory_bytes`.
    #[error("nonzero_bytes ({nonzero}) exceeds memory_bytes ({memory})")]
    NonzeroExceedsMemory {
        /// Measured non-zero bytes.
        nonzero: u64,
        /// Guest memory.
        memory: u64,
    },
    /// `page_size` was 0.
    #[error("page_size must be greater than zero")]
    ZeroPageSize,
    /// `window` was zero.
    #[error("the sampling window must be longer than zero")]
    ZeroWindow,
    /// The link rate is not a positive finite number.
    #[error("link rate must be a positive number of bytes per second, got {0}")]
    Link(f64),
    /// Neither one sample per vCPU nor one for the whole guest.
    #[error("expected {expected} per-vCPU samples or 1 for the whole guest, got {got}")]
    VcpuCount {
        /// `config.vcpus`.
        expected: usize,
        /// Samples given.
        got: usize,
    },
    /// A sample has a negative or non-finite rate or busy fraction.
    #[error("vCPU sample {0} has a negative or non-finite rate or busy fraction")]
    BadSample(usize),
    /// An aggression level outside 0..=1.
    #[error("aggression must be within 0.0..=1.0, got {0}")]
    Aggression(f64),
    /// The controller config is invalid.
    #[error("invalid controller config")]
    Config(#[from] ConfigError),
}

/// The prediction for one aggression level.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PredictionRow {
    /// Aggression simulated.
    pub aggression: f64,
    /// How the simulated migration ends.
    pub outcome: Outcome,
    /// Total time (until the guest runs on the destination, or the abort).
    pub total_time: Duration,
    /// Pause at switchover.
    pub downtime: Option<Duration>,
    /// Rounds, bulk pass included.
    pub rounds: u32,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Throttle averaged over time and vCPUs.
    pub mean_throttle: f64,
    /// Highest throttle.
    pub max_throttle: f64,
    /// Guest CPU lost to throttling and downtime, vCPU-seconds.
    pub cpu_lost_vcpu_secs: f64,
}

/// Predictions per aggression level.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Prediction {
    /// Working set inferred per vCPU, bytes (after spreading a whole-guest sample).
    pub working_set_bytes: Vec<u64>,
    /// One row per aggression level, in the order asked.
    pub rows: Vec<PredictionRow>,
}

/// Working set from the write rate `w` (bytes/s), the window `secs` and the distinct bytes `d`
/// seen in it, capped at `cap`.
fn working_set(w: f64, secs: f64, d: f64, cap: f64) -> f64 {
    let writes = w * secs;
    if d <= 0.0 || writes <= 0.0 {
        return d.max(0.0).min(cap);
    }
    let distinct = |ws: f64| ws * -(-writes / ws).exp_m1();
    if d >= writes * 0.999 || distinct(cap) < d {
        return cap.max(d.min(cap));
    }
    // distinct() increases with ws, from ~d-ish at ws = d to `writes` as ws → ∞: bisect.
    let (mut lo, mut hi) = (d, cap);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if distinct(mid) < d {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

/// Builds the simulator's guest from measurements.
pub fn guest_model(
    m: &GuestMeasurements,
    vcpus: usize,
) -> Result<(GuestModel, bool), PredictError> {
    if m.memory_bytes == 0 {
        return Err(PredictError::NoMemory);
    }
    if m.nonzero_bytes > m.memory_bytes {
        return Err(PredictError::NonzeroExceedsMemory {
            nonzero: m.nonzero_bytes,
            memory: m.memory_bytes,
        });
    }
    if m.page_size == 0 {
        return Err(PredictError::ZeroPageSize);
    }
    if m.window.is_zero() {
        return Err(PredictError::ZeroWindow);
    }
    if !(m.link_bytes_per_sec.is_finite() && m.link_bytes_per_sec > 0.0) {
        return Err(PredictError::Link(m.link_bytes_per_sec));
    }
    let attributed = match m.vcpus.len() {
        n if n == vcpus => true,
        1 => false,
        got => {
            return Err(PredictError::VcpuCount {
                expected: vcpus,
                got,
            })
        }
    };
    for (i, s) in m.vcpus.iter().enumerate() {
        let ok = |x: f64| x.is_finite() && x >= 0.0;
        if !ok(s.dirty_bytes_per_sec) || !ok(s.busy_fraction) {
            return Err(PredictError::BadSample(i));
        }
    }
    let secs = m.window.as_secs_f64();
    let cap = m.nonzero_bytes.max(m.page_size) as f64;
    let workload = |s: &VcpuSample, share: f64| VcpuWorkload {
        busy_fraction: s.busy_fraction.min(1.0),
        write_bytes_per_sec: s.dirty_bytes_per_sec * share,
        working_set_bytes: working_set(
            s.dirty_bytes_per_sec * share,
            secs,
            s.distinct_bytes as f64 * share,
            cap * share,
        ) as u64,
        scaling: CpuScaling::Linear,
        pattern: WritePattern::Uniform,
    };
    let workloads = if attributed {
        m.vcpus.iter().map(|s| workload(s, 1.0)).collect()
    } else {
        let share = 1.0 / vcpus.max(1) as f64;
        vec![workload(&m.vcpus[0], share); vcpus]
    };
    let guest = GuestModel {
        memory_bytes: m.memory_bytes,
        page_size: m.page_size,
        zero_fraction: 1.0 - m.nonzero_bytes as f64 / m.memory_bytes as f64,
        vcpus: workloads,
        state_transfer: m.state_transfer,
    };
    Ok((guest, attributed))
}

/// Simulates the migration of the measured guest with `config` at each of `aggressions`.
pub fn predict(
    m: &GuestMeasurements,
    config: &ControllerConfig,
    aggressions: &[f64],
) -> Result<Prediction, PredictError> {
    config.validate()?;
    if let Some(&a) = aggressions.iter().find(|a| !(0.0..=1.0).contains(*a)) {
        return Err(PredictError::Aggression(a));
    }
    let (guest, attributed) = guest_model(m, config.vcpus)?;
    let link = Link {
        bytes_per_sec: m.link_bytes_per_sec,
        latency: m.link_latency,
    };
    let options = SimOptions {
        attribution: attributed,
        time_limit: config.timeout.unwrap_or(PREDICTION_HORIZON),
        ..SimOptions::default()
    };
    let mut rows = Vec::with_capacity(aggressions.len());
    for &aggression in aggressions {
        let mut tern = Tern::new(ControllerConfig {
            aggression,
            ..config.clone()
        })?;
        let r = simulate(&guest, &link, &mut tern, &options);
        rows.push(PredictionRow {
            aggression,
            outcome: r.outcome,
            total_time: r.total_time,
            downtime: r.downtime,
            rounds: r.rounds,
            bytes_sent: r.bytes_sent,
            mean_throttle: r.mean_throttle,
            max_throttle: r.max_throttle,
            cpu_lost_vcpu_secs: r.cpu_lost_vcpu_secs,
        });
    }
    Ok(Prediction {
        working_set_bytes: guest.vcpus.iter().map(|v| v.working_set_bytes).collect(),
        rows,
    })
}

fn human(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 3600.0 {
        format!("{:.1} h", s / 3600.0)
    } else if s >= 1.0 {
        format!("{s:.1} s")
    } else {
        format!("{:.0} ms", s * 1000.0)
    }
}

impl fmt::Display for Prediction {
    /// The table `tern migrate --estimate` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:>10}  {:<9}  {:>8}  {:>8}  {:>6}  {:>10}  {:>8}  {:>7}  {:>14}",
            "aggression",
            "result",
            "total",
            "downtime",
            "rounds",
            "sent",
            "mean thr",
            "max thr",
            "CPU lost vCPU·s"
        )?;
        for r in &self.rows {
            writeln!(
                f,
                "{:>10.2}  {:<9}  {:>8}  {:>8}  {:>6}  {:>10}  {:>7.1}%  {:>6.0}%  {:>14.1}",
                r.aggression,
                r.outcome.word(),
                human(r.total_time),
                r.downtime.map_or("-".to_string(), human),
                r.rounds,
                Bytes(r.bytes_sent as f64).to_string(),
                r.mean_throttle * 100.0,
                r.max_throttle * 100.0,
                r.cpu_lost_vcpu_secs
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn measured(vcpus: Vec<VcpuSample>) -> GuestMeasurements {
        GuestMeasurements {
            memory_bytes: 16 * GIB,
            nonzero_bytes: 8 * GIB,
            page_size: 4096,
            window: Duration::from_secs(5),
            vcpus,
            link_bytes_per_sec: 1.25e9,
            link_latency: Duration::from_micros(200),
            state_transfer: Duration::from_millis(15),
        }
    }

    fn sample(rate: f64, distinct: u64) -> VcpuSample {
        VcpuSample {
            dirty_bytes_per_sec: rate,
            distinct_bytes: distinct,
            busy_fraction: 1.0,
        }
    }

    #[test]
    fn working_set_inverts_the_saturation_law() {
        let ws: f64 = 1e9;
        let (w, secs): (f64, f64) = (1e9, 5.0);
        let d = ws * (1.0 - (-w * secs / ws).exp());
        assert!((working_set(w, secs, d, 1e12) - ws).abs() / ws < 1e-6);
        // Only distinct pages: assume the writes spread over everything.
        assert_eq!(working_set(1e6, 5.0, 5e6, 8e9), 8e9);
        assert_eq!(working_set(0.0, 5.0, 0.0, 8e9), 0.0);
    }

    #[test]
    fn idle_guest_predicts_a_plain_copy() {
        let m = measured(vec![sample(1e6, 4_000_000), sample(0.0, 0)]);
        let p = predict(&m, &ControllerConfig::new(2), &DEFAULT_AGGRESSIONS).unwrap();
        assert_eq!(p.rows.len(), 5);
        for r in &p.rows {
            assert_eq!(r.outcome, Outcome::Converged, "{p}");
            assert_eq!(r.max_throttle, 0.0);
            let t = r.total_time.as_secs_f64();
            assert!((6.0..8.0).contains(&t), "8 GiB at 1.25 GB/s: {t}");
        }
    }

    #[test]
    fn busy_guest_shows_the_aggression_trade() {
        // One vCPU writing 2 GB/s, 3 GB distinct in 5 s; one computing.
        let m = measured(vec![
            sample(2e9, 3_000_000_000),
            VcpuSample {
                busy_fraction: 1.0,
                ..sample(0.0, 0)
            },
        ]);
        let p = predict(&m, &ControllerConfig::new(2), &[0.0, 1.0]).unwrap();
        let (gentle, fast) = (&p.rows[0], &p.rows[1]);
        assert_eq!(gentle.outcome, Outcome::Converged, "{p}");
        assert_eq!(fast.outcome, Outcome::Converged, "{p}");
        assert!(fast.total_time <= gentle.total_time, "{p}");
        assert!(fast.max_throttle >= gentle.max_throttle, "{p}");
        assert!(p.working_set_bytes[0] > 3_000_000_000 && p.working_set_bytes[1] == 0);
        let text = p.to_string();
        assert!(
            text.lines().count() == 3 && text.contains("aggression"),
            "{text}"
        );
    }

    #[test]
    fn whole_guest_sample_is_spread_over_vcpus() {
        let m = measured(vec![sample(4e8, 1_000_000_000)]);
        let (guest, attributed) = guest_model(&m, 4).unwrap();
        assert!(!attributed);
        assert_eq!(guest.vcpus.len(), 4);
        assert!((guest.vcpus[0].write_bytes_per_sec - 1e8).abs() < 1.0);
    }

    #[test]
    fn bad_measurements_are_named() {
        let ok = measured(vec![sample(1e6, 1_000_000)]);
        let config = ControllerConfig::new(2);
        let cases = [
            (
                GuestMeasurements {
                    memory_bytes: 0,
                    ..ok.clone()
                },
                PredictError::NoMemory,
            ),
            (
                GuestMeasurements {
                    nonzero_bytes: 32 * GIB,
                    ..ok.clone()
                },
                PredictError::NonzeroExceedsMemory {
                    nonzero: 32 * GIB,
                    memory: 16 * GIB,
                },
            ),
            (
                GuestMeasurements {
                    page_size: 0,
                    ..ok.clone()
                },
                PredictError::ZeroPageSize,
            ),
            (
                GuestMeasurements {
                    window: Duration::ZERO,
                    ..ok.clone()
                },
                PredictError::ZeroWindow,
            ),
            (
                GuestMeasurements {
                    vcpus: vec![sample(1.0, 1); 3],
                    ..ok.clone()
                },
                PredictError::VcpuCount {
                    expected: 2,
                    got: 3,
                },
            ),
            (
                GuestMeasurements {
                    vcpus: vec![sample(f64::NAN, 1)],
                    ..ok.clone()
                },
                PredictError::BadSample(0),
            ),
        ];
        for (m, e) in cases {
            assert_eq!(predict(&m, &config, &[0.5]), Err(e));
        }
        let m = GuestMeasurements {
            link_bytes_per_sec: 0.0,
            ..ok.clone()
        };
        assert!(matches!(
            predict(&m, &config, &[0.5]),
            Err(PredictError::Link(_))
        ));
        assert_eq!(
            predict(&ok, &config, &[1.5]),
            Err(PredictError::Aggression(1.5))
        );
        assert!(matches!(
            predict(&ok, &ControllerConfig::new(0), &[0.5]),
            Err(PredictError::Config(_))
        ));
    }
}

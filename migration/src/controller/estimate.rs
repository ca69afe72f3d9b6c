//! Running estimates: IIR averaging, the per-round rate samples, and each dirtier's model
//! `rate(share) = unthrottled · share^elasticity`.
//!
//! A dirtier is one vCPU (with a dirty ring), all vCPUs together (bitmap: no attribution), or
//! the writes no vCPU accounts for (tern's own device DMA, which no throttle slows).
//!
//! The unthrottled rate is inferred from the rate at the CPU share the vCPU actually ran with:
//! `rate / share` for a workload that dirties in proportion to CPU time (elasticity 1). Whether
//! that holds is measured, not assumed: once a dirtier has run at two clearly different shares,
//! the elasticity is fitted from the two rates (`ln(r₂/r₁) / ln(s₂/s₁)`, clamped to 0..=1). A
//! "burst" workload that dirties a fixed amount per CPU slice shows an elasticity near 0.

use super::allocate::DirtierCurve;
use super::observation::Clean;

/// Elasticity below which a dirtier is called inelastic ("burst": throttling barely slows it).
pub const INELASTIC_BELOW: f64 = 0.5;
/// Two CPU shares must differ by at least this factor before an elasticity is fitted from them:
/// closer shares make the fit mostly noise.
const MIN_SHARE_RATIO: f64 = 1.25;
/// Two samples must cover intervals within this factor of each other: the distinct pages a
/// workload dirties saturate with time (its working set), so the rate over a long interval is
/// lower than over a short one at the same CPU share; comparing them would read that as
/// "throttling does not help".
const MAX_INTERVAL_RATIO: f64 = 2.0;
/// How many earlier round samples are kept to find one to fit against.
const HISTORY: usize = 4;
/// A refit that moves the elasticity by more than this restarts the unthrottled average, so
/// samples inferred under the old elasticity do not linger.
const REFIT_RESET: f64 = 0.2;
/// Smallest CPU share used in divisions (a paused vCPU has share 0).
const MIN_SHARE: f64 = 1e-3;
/// A round sample over at least this long counts fully; a shorter one in proportion, and is
/// neither fitted against nor trusted alone. A round of 50 µs in which a vCPU wrote one page
/// says "80 MB/s" and knows almost nothing: such rounds come when little is left to send (a
/// few pages while a device is being drained), and taking them at face value once set a 99 %
/// throttle, a one-second sleep, on a vCPU dirtying under 1 MB/s.
pub(crate) const FULL_WEIGHT_SECS: f64 = 0.02;

/// How much of a full sample a sample over `secs` counts for (0..=1).
fn sample_weight(secs: f64) -> f64 {
    if secs.is_finite() && secs > 0.0 {
        (secs / FULL_WEIGHT_SECS).min(1.0)
    } else {
        0.0
    }
}

/// An IIR running average: `new = α·old + (1 − α)·sample`; the first sample is taken as is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Iir {
    alpha: f64,
    value: Option<f64>,
}

impl Iir {
    /// An empty average with weight `alpha` of the old value (clamped to `0.0..=0.999`; NaN → 0.5).
    pub fn new(alpha: f64) -> Self {
        let alpha = if alpha.is_nan() {
            0.5
        } else {
            alpha.clamp(0.0, 0.999)
        };
        Iir { alpha, value: None }
    }

    /// Folds in a sample and returns the new average. Non-finite or negative samples are ignored.
    pub fn update(&mut self, sample: f64) -> Option<f64> {
        if sample.is_finite() && sample >= 0.0 {
            self.value = Some(self.peek(sample, 1.0));
        }
        self.value
    }

    /// Folds in a sample that counts for `weight` (0..=1) of a full one: a sample measured over
    /// a short time moves the average only a little. Non-finite or negative samples are ignored.
    pub fn update_weighted(&mut self, sample: f64, weight: f64) -> Option<f64> {
        if sample.is_finite() && sample >= 0.0 {
            self.value = Some(self.peek(sample, weight));
        }
        self.value
    }

    /// What the average would be if `sample` counted with `weight` (0..=1) of a full sample,
    /// without changing it. Used for a round still in progress.
    pub fn peek(&self, sample: f64, weight: f64) -> f64 {
        let weight = if weight.is_nan() {
            0.0
        } else {
            weight.clamp(0.0, 1.0)
        };
        match self.value {
            None => sample,
            Some(old) => {
                let w = (1.0 - self.alpha) * weight;
                old * (1.0 - w) + sample * w
            }
        }
    }

    /// Replaces the average by `sample` (ignored when not finite and non-negative).
    pub fn reset(&mut self, sample: f64) {
        if sample.is_finite() && sample >= 0.0 {
            self.value = Some(sample);
        }
    }

    /// The current average, if any sample was seen.
    pub fn value(&self) -> Option<f64> {
        self.value
    }
}

/// A dirty rate measured at a CPU share.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct RateSample {
    /// Time-averaged CPU share `1 − p` during the sample.
    pub share: f64,
    /// Dirty-set growth over the sample, bytes per second.
    pub bytes_per_sec: f64,
    /// Length of the sample, seconds.
    pub secs: f64,
}

/// One dirtier's model.
#[derive(Clone, Debug)]
pub(crate) struct DirtierModel {
    unthrottled: Iir,
    elasticity: f64,
    fitted: bool,
    /// Elasticity is not fitted but fixed (writes no throttle can slow).
    fixed: bool,
    last: Option<RateSample>,
    /// Earlier completed rounds, newest first.
    history: Vec<RateSample>,
    /// Lowest CPU share any completed round ran at.
    min_share_seen: f64,
    provisional: Option<f64>,
}

impl DirtierModel {
    /// A dirtier presumed proportional to CPU time until measured otherwise.
    pub fn new(alpha: f64) -> Self {
        DirtierModel {
            unthrottled: Iir::new(alpha),
            elasticity: 1.0,
            fitted: false,
            fixed: false,
            last: None,
            history: Vec::new(),
            min_share_seen: 1.0,
            provisional: None,
        }
    }

    /// A dirtier no vCPU throttle slows (elasticity fixed at 0).
    pub fn unthrottleable(alpha: f64) -> Self {
        DirtierModel {
            elasticity: 0.0,
            fixed: true,
            ..DirtierModel::new(alpha)
        }
    }

    /// Commits the sample of a completed round: refits the elasticity against the newest
    /// earlier round at a clearly different CPU share and a comparable length, then updates the
    /// unthrottled average.
    pub fn commit_round(&mut self, s: RateSample) {
        let share = s.share.max(MIN_SHARE);
        let anchor = self.history.iter().copied().find(|a| {
            ratio(share, a.share.max(MIN_SHARE)) >= MIN_SHARE_RATIO
                && a.secs >= FULL_WEIGHT_SECS
                && s.secs >= FULL_WEIGHT_SECS
                && ratio(s.secs, a.secs) <= MAX_INTERVAL_RATIO
        });
        let mut restart = false;
        if let (false, Some(anchor)) = (self.fixed, anchor) {
            if s.bytes_per_sec > 0.0 && anchor.bytes_per_sec > 0.0 {
                let anchor_share = anchor.share.max(MIN_SHARE);
                let beta = ((s.bytes_per_sec / anchor.bytes_per_sec).ln()
                    / (share / anchor_share).ln())
                .clamp(0.0, 1.0);
                if beta.is_finite() {
                    restart = !self.fitted || (beta - self.elasticity).abs() > REFIT_RESET;
                    self.elasticity = beta;
                    self.fitted = true;
                }
            }
        }
        let sample = s.bytes_per_sec / share.powf(self.elasticity);
        if restart {
            self.unthrottled.reset(sample);
        } else {
            self.unthrottled
                .update_weighted(sample, sample_weight(s.secs));
        }
        self.min_share_seen = self.min_share_seen.min(share);
        self.history.insert(0, s);
        self.history.truncate(HISTORY);
        self.last = Some(s);
        self.provisional = None;
    }

    /// Replaces the unthrottled average by the last round's sample alone, if that is higher:
    /// after a stuck round the average has proven too optimistic, and lagging behind a rising
    /// rate is what kept the throttle too low.
    pub fn trust_latest(&mut self) {
        if self.fixed {
            return;
        }
        if let Some(last) = self.last.filter(|l| l.secs >= FULL_WEIGHT_SECS) {
            let sample = last.bytes_per_sec / last.share.max(MIN_SHARE).powf(self.elasticity);
            if self.unthrottled.value().is_none_or(|v| sample > v) {
                self.unthrottled.reset(sample);
            }
        }
    }

    /// Blends the round in progress into a provisional estimate, weighted by how much of the
    /// round has passed (`weight` 0..=1), so a throttle set mid-round follows the workload
    /// without the first seconds of a round (when every write is new) dominating.
    pub fn observe_partial(&mut self, s: RateSample, weight: f64) {
        let sample = s.bytes_per_sec / s.share.max(MIN_SHARE).powf(self.elasticity);
        if sample.is_finite() && sample >= 0.0 {
            self.provisional = Some(self.unthrottled.peek(sample, weight));
        }
    }

    /// The rate this dirtier would have at full CPU share, bytes per second.
    pub fn unthrottled(&self) -> Option<f64> {
        self.provisional.or(self.unthrottled.value())
    }

    /// The fitted (or presumed) elasticity.
    pub fn elasticity(&self) -> f64 {
        self.elasticity
    }

    /// Whether the elasticity was measured rather than presumed.
    pub fn fitted(&self) -> bool {
        self.fitted || self.fixed
    }

    /// Measured as barely slowed by throttling.
    pub fn inelastic(&self) -> bool {
        self.fitted() && self.elasticity < INELASTIC_BELOW
    }

    /// The last completed round's sample.
    pub fn last(&self) -> Option<RateSample> {
        self.last
    }

    /// The curve to allocate throttles with, through the last round's sample. The elasticity
    /// it uses is never below [`INELASTIC_BELOW`]: a fit near 0 is a local slope between two
    /// shares (often two shares at which a working set was saturated anyway), and extrapolating
    /// it to full CPU share would tell the allocator to release the throttle entirely. An
    /// inelastic fit not yet checked at `min_share` counts as proportional (1.0) until a round
    /// at maximum throttle confirms it. Workloads that no throttle tames are the verdict's job,
    /// not the allocator's.
    pub fn allocation_curve(&self, min_share: f64) -> DirtierCurve {
        let Some(last) = self.last.filter(|_| !self.fixed) else {
            return self.curve();
        };
        let beta = if self.inelastic() && self.min_share_seen > min_share + 0.005 {
            1.0
        } else {
            self.elasticity.max(INELASTIC_BELOW)
        };
        if beta == self.elasticity {
            return self.curve();
        }
        DirtierCurve {
            unthrottled_bytes_per_sec: last.bytes_per_sec / last.share.max(MIN_SHARE).powf(beta),
            elasticity: beta,
        }
    }

    /// The rate curve as fitted.
    pub fn curve(&self) -> DirtierCurve {
        DirtierCurve {
            unthrottled_bytes_per_sec: self.unthrottled().unwrap_or(0.0),
            elasticity: self.elasticity,
        }
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if a > b {
        a / b
    } else {
        b / a
    }
}

/// Sums one round's observations, so round-level samples cover the whole round even when the
/// loop observed several times inside it.
#[derive(Clone, Debug, Default)]
pub(crate) struct RoundAccumulator {
    round: Option<u32>,
    secs: f64,
    total_bytes: f64,
    unattributed_bytes: f64,
    vcpu_bytes: Vec<f64>,
    vcpu_share_secs: Vec<f64>,
    attributed: bool,
    finished: bool,
}

/// A round's rate samples.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RoundSamples {
    pub secs: f64,
    pub total: RateSample,
    /// Per-vCPU samples when every observation of the round was attributed.
    pub vcpus: Option<Vec<RateSample>>,
    pub unattributed_bytes_per_sec: f64,
}

impl RoundAccumulator {
    /// Adds an observation; an observation from another round, or any after [`Self::finish`],
    /// restarts the sums.
    pub fn add(&mut self, c: &Clean) {
        if self.finished || self.round != Some(c.round) {
            *self = RoundAccumulator {
                round: Some(c.round),
                vcpu_bytes: vec![0.0; c.vcpu_shares.len()],
                vcpu_share_secs: vec![0.0; c.vcpu_shares.len()],
                attributed: true,
                ..RoundAccumulator::default()
            };
        }
        let dt = if c.interval_secs.is_finite() {
            c.interval_secs.max(0.0)
        } else {
            0.0
        };
        self.secs += dt;
        self.total_bytes += c.dirtied_bytes;
        self.unattributed_bytes += c.unattributed_bytes;
        match &c.vcpu_dirtied_bytes {
            Some(v) => {
                for (acc, b) in self.vcpu_bytes.iter_mut().zip(v) {
                    *acc += b;
                }
            }
            None => self.attributed = false,
        }
        for (acc, s) in self.vcpu_share_secs.iter_mut().zip(&c.vcpu_shares) {
            *acc += s * dt;
        }
    }

    /// The samples of everything added since the round started; `None` before any time passed.
    pub fn samples(&self) -> Option<RoundSamples> {
        if self.secs <= 0.0 {
            return None;
        }
        let shares: Vec<f64> = self
            .vcpu_share_secs
            .iter()
            .map(|s| (s / self.secs).clamp(0.0, 1.0))
            .collect();
        let mean_share = if shares.is_empty() {
            1.0
        } else {
            shares.iter().sum::<f64>() / shares.len() as f64
        };
        let vcpus = self.attributed.then(|| {
            shares
                .iter()
                .zip(&self.vcpu_bytes)
                .map(|(&share, &b)| RateSample {
                    share,
                    bytes_per_sec: b / self.secs,
                    secs: self.secs,
                })
                .collect()
        });
        Some(RoundSamples {
            secs: self.secs,
            total: RateSample {
                share: mean_share,
                bytes_per_sec: self.total_bytes / self.secs,
                secs: self.secs,
            },
            vcpus,
            unattributed_bytes_per_sec: self.unattributed_bytes / self.secs,
        })
    }

    /// The samples of the whole round, which is then closed.
    pub fn finish(&mut self) -> Option<RoundSamples> {
        self.finished = true;
        self.samples()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iir_takes_first_sample_then_blends() {
        let mut a = Iir::new(0.75);
        assert_eq!(a.value(), None);
        assert_eq!(a.update(100.0), Some(100.0));
        assert_eq!(a.update(200.0), Some(125.0));
        assert_eq!(a.update(f64::NAN), Some(125.0));
        assert_eq!(a.update(-1.0), Some(125.0));
        assert_eq!(a.peek(225.0, 0.5), 137.5);
        assert_eq!(a.value(), Some(125.0));
    }

    #[test]
    fn iir_with_zero_alpha_follows_samples() {
        let mut a = Iir::new(0.0);
        a.update(5.0);
        assert_eq!(a.update(7.0), Some(7.0));
    }

    #[test]
    fn proportional_workload_keeps_elasticity_one() {
        let mut m = DirtierModel::new(0.5);
        m.commit_round(RateSample {
            share: 1.0,
            bytes_per_sec: 1000.0,
            secs: 1.0,
        });
        m.commit_round(RateSample {
            share: 0.5,
            bytes_per_sec: 500.0,
            secs: 1.0,
        });
        assert!((m.elasticity() - 1.0).abs() < 1e-9);
        assert!(!m.inelastic());
        assert!((m.unthrottled().unwrap() - 1000.0).abs() < 1e-6);
    }

    #[test]
    fn burst_workload_is_recognised_after_two_shares() {
        let mut m = DirtierModel::new(0.5);
        m.commit_round(RateSample {
            share: 1.0,
            bytes_per_sec: 1000.0,
            secs: 1.0,
        });
        assert!(!m.inelastic());
        m.commit_round(RateSample {
            share: 0.4,
            bytes_per_sec: 1000.0,
            secs: 1.0,
        });
        assert!(m.inelastic());
        assert_eq!(m.elasticity(), 0.0);
        // The unthrottled estimate restarted from the new fit: 1000 at any share.
        assert!((m.unthrottled().unwrap() - 1000.0).abs() < 1e-6);
    }

    #[test]
    fn unconfirmed_inelastic_fit_is_allocated_as_proportional() {
        let mut m = DirtierModel::new(0.5);
        m.commit_round(RateSample {
            share: 1.0,
            bytes_per_sec: 1000.0,
            secs: 1.0,
        });
        m.commit_round(RateSample {
            share: 0.5,
            bytes_per_sec: 1000.0,
            secs: 1.0,
        });
        assert!(m.inelastic());
        let c = m.allocation_curve(0.01);
        assert_eq!((c.unthrottled_bytes_per_sec, c.elasticity), (2000.0, 1.0));
        // Measured at maximum throttle: the fit is trusted, but never below 0.5 for allocation.
        m.commit_round(RateSample {
            share: 0.01,
            bytes_per_sec: 1000.0,
            secs: 1.0,
        });
        assert_eq!(m.elasticity(), 0.0);
        let c = m.allocation_curve(0.01);
        assert_eq!(c.elasticity, 0.5);
        assert!((c.unthrottled_bytes_per_sec - 10_000.0).abs() < 1e-6);
    }

    #[test]
    fn trusting_the_latest_sample_only_raises_the_estimate() {
        let mut m = DirtierModel::new(0.5);
        m.commit_round(RateSample {
            share: 1.0,
            bytes_per_sec: 100.0,
            secs: 1.0,
        });
        m.commit_round(RateSample {
            share: 1.0,
            bytes_per_sec: 300.0,
            secs: 1.0,
        });
        assert_eq!(m.unthrottled(), Some(200.0));
        m.trust_latest();
        assert_eq!(m.unthrottled(), Some(300.0));
        m.commit_round(RateSample {
            share: 1.0,
            bytes_per_sec: 100.0,
            secs: 1.0,
        });
        m.trust_latest();
        assert_eq!(m.unthrottled(), Some(200.0));
    }

    #[test]
    fn a_round_of_microseconds_barely_moves_the_estimate_and_is_not_trusted_alone() {
        let mut m = DirtierModel::new(0.5);
        // 20 ms rounds at 800 kB/s, then a 50 µs round with one page: "82 MB/s".
        m.commit_round(RateSample {
            share: 1.0,
            bytes_per_sec: 800e3,
            secs: 0.02,
        });
        m.commit_round(RateSample {
            share: 1.0,
            bytes_per_sec: 4096.0 / 50e-6,
            secs: 50e-6,
        });
        let after = m.unthrottled().unwrap();
        assert!(after < 1e6, "a 50 µs sample moved the estimate to {after}");
        m.trust_latest();
        assert_eq!(m.unthrottled(), Some(after));
        // Nor does a short round at another share fit an elasticity.
        m.commit_round(RateSample {
            share: 0.5,
            bytes_per_sec: 4096.0 / 50e-6,
            secs: 50e-6,
        });
        assert!(!m.fitted());
    }

    #[test]
    fn close_shares_do_not_fit() {
        let mut m = DirtierModel::new(0.5);
        m.commit_round(RateSample {
            share: 1.0,
            bytes_per_sec: 1000.0,
            secs: 1.0,
        });
        m.commit_round(RateSample {
            share: 0.9,
            bytes_per_sec: 1000.0,
            secs: 1.0,
        });
        assert!(!m.fitted());
    }

    #[test]
    fn rounds_of_very_different_length_do_not_fit() {
        // A long bulk pass saturates the working set: its rate is low because of its length,
        // not because of the throttle.
        let mut m = DirtierModel::new(0.5);
        m.commit_round(RateSample {
            share: 1.0,
            bytes_per_sec: 100.0,
            secs: 100.0,
        });
        m.commit_round(RateSample {
            share: 0.5,
            bytes_per_sec: 1000.0,
            secs: 5.0,
        });
        assert!(!m.fitted());
        // A later round of comparable length fits against the newest matching one.
        m.commit_round(RateSample {
            share: 0.25,
            bytes_per_sec: 500.0,
            secs: 4.0,
        });
        assert!(m.fitted());
        assert!((m.elasticity() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn unthrottleable_is_inelastic_from_the_start() {
        let mut m = DirtierModel::unthrottleable(0.5);
        m.commit_round(RateSample {
            share: 0.1,
            bytes_per_sec: 50.0,
            secs: 1.0,
        });
        assert!(m.inelastic());
        assert_eq!(m.unthrottled(), Some(50.0));
    }

    #[test]
    fn partial_round_is_weighted() {
        let mut m = DirtierModel::new(0.0);
        m.commit_round(RateSample {
            share: 1.0,
            bytes_per_sec: 100.0,
            secs: 1.0,
        });
        m.observe_partial(
            RateSample {
                share: 1.0,
                bytes_per_sec: 300.0,
                secs: 1.0,
            },
            0.5,
        );
        assert_eq!(m.unthrottled(), Some(200.0));
        m.commit_round(RateSample {
            share: 1.0,
            bytes_per_sec: 300.0,
            secs: 1.0,
        });
        assert_eq!(m.unthrottled(), Some(300.0));
    }

    #[test]
    fn paused_share_does_not_divide_by_zero() {
        let mut m = DirtierModel::new(0.5);
        m.commit_round(RateSample {
            share: 0.0,
            bytes_per_sec: 10.0,
            secs: 1.0,
        });
        assert!(m.unthrottled().unwrap().is_finite());
    }
}

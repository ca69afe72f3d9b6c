//! Judging convergence from completed rounds: is the remaining set shrinking, and can it
//! shrink at all within `max_throttle`?
//!
//! The impossibility test needs no model of the workload. A dirtier's rate as a function of its
//! CPU share is concave through the origin for every workload we know of (proportional writers,
//! working sets that saturate, fixed bursts per slice: all are minimums or saturations of linear
//! functions). For a concave `r(s)` with `r(0) = 0`, `r(s)/s` falls as `s` grows, so the rate at
//! the minimum share is at least the linear extrapolation: `r(s_min) ≥ r(s)·s_min/s`. The sum of
//! those extrapolations (plus writes no throttle slows) is a **lower bound** on the dirty rate
//! at maximum throttle. If even that bound is ≥ 97 % of the transfer rate, the next round's set
//! is ≥ 97 % of this one's however hard we throttle: the migration cannot converge, and it is
//! proven, not guessed. Measured at maximum throttle (the probe round) the bound is the rate
//! itself, which is how a "burst" workload is confirmed.
//!
//! The bound is taken over whole rounds only: a round's growth over its full duration is what
//! the next round has to send, and the next round is shorter when the set shrinks, which only
//! raises the rate (fewer of its writes land on pages already dirty).

use super::estimate::{DirtierModel, RateSample};
use super::policy::{Policy, NO_CONVERGENCE_SHRINK};

/// How a completed round changed the remaining set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct RoundProgress {
    /// `1 − remaining/previous remaining` (negative when the set grew).
    pub shrink: f64,
    /// The set shrank by less than half the policy's margin: more rounds will not make the
    /// switchover cheaper, so it may take the whole downtime limit.
    pub stalled: bool,
    /// Stalled with a remaining set that does not fit the downtime budget: the throttle must
    /// escalate.
    pub stuck: bool,
}

/// Remaining set at the end of each round, and how many rounds were stuck.
#[derive(Clone, Debug, Default)]
pub(crate) struct Progress {
    previous_bytes: Option<f64>,
    stuck_rounds: u32,
}

impl Progress {
    /// Records the remaining set at the end of a round; `None` for the first round (the bulk
    /// pass has nothing to compare with).
    ///
    /// A round whose remaining set already fits the downtime budget (`within_budget`) is never
    /// stuck, only stalled: what holds the switchover back then is not memory (busy devices, or
    /// an aim below the limit), and throttling the guest harder would not help.
    pub fn record(
        &mut self,
        remaining_bytes: f64,
        policy: &Policy,
        within_budget: bool,
    ) -> Option<RoundProgress> {
        let result = self.previous_bytes.map(|prev| {
            let shrink = if prev > 0.0 {
                1.0 - remaining_bytes / prev
            } else if remaining_bytes > 0.0 {
                -1.0
            } else {
                1.0
            };
            let stalled = shrink < policy.stuck_below_shrink();
            RoundProgress {
                shrink,
                stalled,
                stuck: stalled && !within_budget,
            }
        });
        if result.is_some_and(|p| p.stuck) {
            self.stuck_rounds = self.stuck_rounds.saturating_add(1);
        }
        self.previous_bytes = Some(remaining_bytes);
        result
    }

    /// Stuck rounds so far; each one escalates the throttle.
    pub fn stuck_rounds(&self) -> u32 {
        self.stuck_rounds
    }
}

/// Lower bound on the total dirty rate at CPU share `min_share`, from one round's samples plus
/// the rate no throttle slows (see the module docs).
pub(crate) fn floor_lower_bound(
    samples: &[RateSample],
    unthrottleable_bytes_per_sec: f64,
    min_share: f64,
) -> f64 {
    let min_share = min_share.clamp(0.0, 1.0);
    let throttleable: f64 = samples
        .iter()
        .map(|s| {
            let share = s.share.clamp(0.0, 1.0);
            if share <= min_share {
                s.bytes_per_sec
            } else {
                s.bytes_per_sec * min_share / share
            }
        })
        .filter(|r| r.is_finite())
        .sum();
    throttleable + unthrottleable_bytes_per_sec.max(0.0)
}

/// Whether a dirty rate (at maximum throttle) leaves too little of the link to shrink the set.
pub(crate) fn cannot_shrink(floor_bytes_per_sec: f64, transfer_bytes_per_sec: f64) -> bool {
    floor_bytes_per_sec >= (1.0 - NO_CONVERGENCE_SHRINK) * transfer_bytes_per_sec
}

/// Dirtiers worth a probe round at maximum throttle: measured as barely slowed by throttling,
/// dirtying noticeably (≥ 1 % of the link), and not yet measured at maximum throttle.
pub(crate) fn probe_candidates(
    models: &[DirtierModel],
    min_share: f64,
    transfer_bytes_per_sec: f64,
) -> Vec<usize> {
    models
        .iter()
        .enumerate()
        .filter(|(_, m)| {
            m.inelastic()
                && m.last().is_some_and(|s| {
                    s.share > min_share + 0.005 && s.bytes_per_sec >= 0.01 * transfer_bytes_per_sec
                })
        })
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_round_has_no_progress_verdict() {
        let policy = Policy::for_aggression(0.5);
        let mut p = Progress::default();
        assert_eq!(p.record(100.0, &policy, false), None);
        let r = p.record(90.0, &policy, false).unwrap();
        assert!((r.shrink - 0.1).abs() < 1e-12);
        assert!(r.stuck, "10 % < 25 % (half the 50 % margin)");
        let r = p.record(40.0, &policy, false).unwrap();
        assert!(!r.stuck);
        assert_eq!(p.stuck_rounds(), 1);
        let r = p.record(80.0, &policy, false).unwrap();
        assert!(r.shrink < 0.0 && r.stuck);
        assert_eq!(p.stuck_rounds(), 2);
    }

    #[test]
    fn lower_bound_extrapolates_linearly() {
        let s = [
            RateSample {
                share: 1.0,
                bytes_per_sec: 1000.0,
                secs: 1.0,
            },
            RateSample {
                share: 0.5,
                bytes_per_sec: 100.0,
                secs: 1.0,
            },
            RateSample {
                share: 0.0,
                bytes_per_sec: 3.0,
                secs: 1.0,
            },
        ];
        let lb = floor_lower_bound(&s, 7.0, 0.01);
        assert!((lb - (10.0 + 2.0 + 3.0 + 7.0)).abs() < 1e-9);
        assert!(cannot_shrink(lb, 20.0));
        assert!(!cannot_shrink(lb, 30.0));
    }

    #[test]
    fn probe_picks_only_unprobed_inelastic_dirtiers() {
        let mut burst = DirtierModel::new(0.5);
        burst.commit_round(RateSample {
            share: 1.0,
            bytes_per_sec: 500.0,
            secs: 1.0,
        });
        burst.commit_round(RateSample {
            share: 0.5,
            bytes_per_sec: 500.0,
            secs: 1.0,
        });
        let mut linear = DirtierModel::new(0.5);
        linear.commit_round(RateSample {
            share: 1.0,
            bytes_per_sec: 500.0,
            secs: 1.0,
        });
        linear.commit_round(RateSample {
            share: 0.5,
            bytes_per_sec: 250.0,
            secs: 1.0,
        });
        let mut probed = burst.clone();
        probed.commit_round(RateSample {
            share: 0.01,
            bytes_per_sec: 500.0,
            secs: 1.0,
        });
        let models = [burst, linear, probed];
        assert_eq!(probe_candidates(&models, 0.01, 1000.0), vec![0]);
    }
}

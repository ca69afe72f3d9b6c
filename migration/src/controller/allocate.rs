//! Throttle allocation: given each dirtier's rate curve and a target total dirty rate, choose
//! per-vCPU throttle fractions.
//!
//! tern uses **water-filling** ([`water_fill`]): every dirtier's rate is capped at a common level
//! `L`, `pᵢ = max(0, 1 − (L/uᵢ)^(1/βᵢ))` (for a proportional dirtier, β = 1: `1 − L/uᵢ`), with
//! `L` chosen so the capped rates sum to the target. A vCPU dirtying less than `L` (an idle one
//! in particular) is not throttled at all; the heavier a vCPU dirties, the more it is throttled.
//!
//! [`greedy`] (throttle the dirtier that gives the most rate per CPU lost first, to the maximum,
//! then the next) loses less CPU in total for proportional dirtiers, and [`uniform`] (one
//! fraction for every vCPU, what QEMU's auto-converge does) is the baseline. Both exist for
//! comparison; `docs/convergence.md` has the numbers and the reasons for water-filling.

use serde::Serialize;

/// Below this a computed throttle is dropped to 0: a 0.5 % throttle costs a kick per period
/// and changes nothing measurable.
pub const MIN_USEFUL_THROTTLE: f64 = 0.01;

/// A dirtier's rate as a function of its CPU share `s = 1 − p`: `u · s^β`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct DirtierCurve {
    /// Rate at full CPU share, bytes per second.
    pub unthrottled_bytes_per_sec: f64,
    /// How the rate scales with CPU share: 1 = proportional, 0 = not at all.
    pub elasticity: f64,
}

impl DirtierCurve {
    fn u(&self) -> f64 {
        let u = self.unthrottled_bytes_per_sec;
        if u.is_finite() && u > 0.0 {
            u
        } else {
            0.0
        }
    }

    fn beta(&self) -> f64 {
        if self.elasticity.is_nan() {
            1.0
        } else {
            self.elasticity.clamp(0.0, 1.0)
        }
    }

    /// Rate at CPU share `share` (clamped to 0..=1).
    pub fn rate_at(&self, share: f64) -> f64 {
        let share = if share.is_nan() {
            1.0
        } else {
            share.clamp(0.0, 1.0)
        };
        let beta = self.beta();
        if beta == 0.0 {
            return self.u();
        }
        self.u() * share.powf(beta)
    }

    /// The CPU share at which the rate is `rate`, within `min_share..=1`.
    pub fn share_for(&self, rate: f64, min_share: f64) -> f64 {
        let u = self.u();
        let beta = self.beta();
        if u == 0.0 || rate >= u || beta < 1e-6 || rate.is_nan() {
            return 1.0;
        }
        (rate.max(0.0) / u).powf(1.0 / beta).clamp(min_share, 1.0)
    }
}

/// Throttle fractions for a set of dirtiers.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Allocation {
    /// One throttle fraction per dirtier, `0.0..=max_throttle`.
    pub throttle_fractions: Vec<f64>,
    /// Total rate the curves predict at these throttles, bytes per second.
    pub planned_bytes_per_sec: f64,
    /// Whether the planned rate is within the target.
    pub meets_target: bool,
}

impl Allocation {
    /// CPU share given up, summed over dirtiers (vCPU-seconds lost per second).
    pub fn cpu_lost(&self) -> f64 {
        self.throttle_fractions.iter().sum()
    }

    /// Highest throttle fraction.
    pub fn max_throttle(&self) -> f64 {
        self.throttle_fractions.iter().copied().fold(0.0, f64::max)
    }
}

fn clean_max_throttle(max_throttle: f64) -> f64 {
    if max_throttle.is_nan() {
        0.0
    } else {
        max_throttle.clamp(0.0, crate::throttle::MAX_FRACTION)
    }
}

fn clean_target(target: f64) -> f64 {
    if target.is_nan() {
        0.0
    } else {
        target.max(0.0)
    }
}

fn finish(curves: &[DirtierCurve], shares: Vec<f64>, target: f64) -> Allocation {
    let planned: f64 = curves.iter().zip(&shares).map(|(c, &s)| c.rate_at(s)).sum();
    let throttle_fractions = shares
        .iter()
        .map(|s| {
            let p = ((1.0 - s) * 1000.0).round() / 1000.0;
            if p < MIN_USEFUL_THROTTLE {
                0.0
            } else {
                p
            }
        })
        .collect();
    Allocation {
        throttle_fractions,
        planned_bytes_per_sec: planned,
        meets_target: planned <= target * (1.0 + 1e-9),
    }
}

/// Water-filling: cap every dirtier at a common rate level, the highest level whose capped
/// rates sum to at most `target_bytes_per_sec`; no throttle above `max_throttle`.
pub fn water_fill(
    curves: &[DirtierCurve],
    target_bytes_per_sec: f64,
    max_throttle: f64,
) -> Allocation {
    let target = clean_target(target_bytes_per_sec);
    let min_share = 1.0 - clean_max_throttle(max_throttle);
    let floors: Vec<f64> = curves.iter().map(|c| c.rate_at(min_share)).collect();
    let capped = |level: f64| -> f64 {
        curves
            .iter()
            .zip(&floors)
            .map(|(c, &f)| level.clamp(f, c.rate_at(1.0).max(f)))
            .sum::<f64>()
    };
    let top = curves.iter().map(|c| c.rate_at(1.0)).fold(0.0, f64::max);
    let level = if capped(top) <= target {
        top
    } else {
        // capped() is continuous and non-decreasing in the level: bisect.
        let (mut lo, mut hi) = (0.0, top);
        for _ in 0..100 {
            let mid = 0.5 * (lo + hi);
            if capped(mid) <= target {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo
    };
    let shares = curves
        .iter()
        .map(|c| c.share_for(level, min_share))
        .collect();
    finish(curves, shares, target)
}

/// Greedy: throttle the dirtier with the most rate removed per CPU share given up first, up to
/// `max_throttle`, then the next, until the target is met. Least total CPU lost for proportional
/// dirtiers; for comparison only.
pub fn greedy(curves: &[DirtierCurve], target_bytes_per_sec: f64, max_throttle: f64) -> Allocation {
    let target = clean_target(target_bytes_per_sec);
    let min_share = 1.0 - clean_max_throttle(max_throttle);
    let mut shares = vec![1.0; curves.len()];
    let mut order: Vec<usize> = (0..curves.len()).collect();
    // Rate removed per CPU share lost when going from share 1 to min_share.
    let gain =
        |c: &DirtierCurve| (c.rate_at(1.0) - c.rate_at(min_share)) / (1.0 - min_share).max(1e-9);
    order.sort_by(|&a, &b| {
        gain(&curves[b])
            .total_cmp(&gain(&curves[a]))
            .then(a.cmp(&b))
    });
    let mut total: f64 = curves.iter().map(|c| c.rate_at(1.0)).sum();
    for i in order {
        if total <= target {
            break;
        }
        let c = &curves[i];
        let full = c.rate_at(1.0);
        let floor = c.rate_at(min_share);
        let wanted = (full - (total - target)).max(floor);
        shares[i] = c.share_for(wanted, min_share);
        total -= full - c.rate_at(shares[i]);
    }
    finish(curves, shares, target)
}

/// Uniform: one throttle fraction for every dirtier, the least that meets the target.
pub fn uniform(
    curves: &[DirtierCurve],
    target_bytes_per_sec: f64,
    max_throttle: f64,
) -> Allocation {
    let target = clean_target(target_bytes_per_sec);
    let min_share = 1.0 - clean_max_throttle(max_throttle);
    let total = |s: f64| curves.iter().map(|c| c.rate_at(s)).sum::<f64>();
    let share = if total(1.0) <= target {
        1.0
    } else if total(min_share) > target {
        min_share
    } else {
        let (mut lo, mut hi) = (min_share, 1.0);
        for _ in 0..100 {
            let mid = 0.5 * (lo + hi);
            if total(mid) <= target {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo
    };
    finish(curves, vec![share; curves.len()], target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lin(u: f64) -> DirtierCurve {
        DirtierCurve {
            unthrottled_bytes_per_sec: u,
            elasticity: 1.0,
        }
    }

    #[test]
    fn ample_target_means_no_throttle() {
        let a = water_fill(&[lin(10.0), lin(5.0)], 100.0, 0.99);
        assert_eq!(a.throttle_fractions, vec![0.0, 0.0]);
        assert!(a.meets_target);
    }

    #[test]
    fn water_fill_caps_heavy_dirtiers_at_a_common_level() {
        // 10 + 5 + 0 with target 6: level 3 → p = 0.7, 0.4, idle untouched.
        let a = water_fill(&[lin(10.0), lin(5.0), lin(0.0)], 6.0, 0.99);
        assert_eq!(a.throttle_fractions, vec![0.7, 0.4, 0.0]);
        assert!((a.planned_bytes_per_sec - 6.0).abs() < 1e-3);
        assert!(a.meets_target);
    }

    #[test]
    fn water_fill_leaves_light_dirtier_alone() {
        // 10 + 1 with target 5: level 4 → only the heavy one is throttled.
        let a = water_fill(&[lin(10.0), lin(1.0)], 5.0, 0.99);
        assert_eq!(a.throttle_fractions, vec![0.6, 0.0]);
    }

    #[test]
    fn greedy_loses_less_cpu_but_throttles_harder() {
        let curves = [lin(10.0), lin(5.0)];
        let w = water_fill(&curves, 6.0, 0.99);
        let g = greedy(&curves, 6.0, 0.99);
        assert_eq!(g.throttle_fractions, vec![0.9, 0.0]);
        assert!(g.cpu_lost() < w.cpu_lost());
        assert!(g.max_throttle() > w.max_throttle());
        let u = uniform(&curves, 6.0, 0.99);
        assert_eq!(u.throttle_fractions, vec![0.6, 0.6]);
        assert!(u.cpu_lost() > w.cpu_lost());
    }

    #[test]
    fn max_throttle_bounds_every_allocation() {
        let curves = [lin(1000.0), lin(10.0)];
        for a in [
            water_fill(&curves, 1.0, 0.5),
            greedy(&curves, 1.0, 0.5),
            uniform(&curves, 1.0, 0.5),
        ] {
            assert!(a.max_throttle() <= 0.5, "{a:?}");
            assert!(!a.meets_target);
        }
        let a = water_fill(&curves, 1.0, 7.0);
        assert!(a.max_throttle() <= 0.99);
    }

    #[test]
    fn inelastic_dirtier_is_not_throttled_for_nothing() {
        let burst = DirtierCurve {
            unthrottled_bytes_per_sec: 10.0,
            elasticity: 0.0,
        };
        let a = water_fill(&[burst, lin(10.0)], 12.0, 0.99);
        assert_eq!(a.throttle_fractions[0], 0.0);
        assert!((a.throttle_fractions[1] - 0.8).abs() < 1e-9);
    }

    #[test]
    fn garbage_in_is_harmless() {
        let curves = [
            DirtierCurve {
                unthrottled_bytes_per_sec: f64::NAN,
                elasticity: f64::NAN,
            },
            DirtierCurve {
                unthrottled_bytes_per_sec: f64::INFINITY,
                elasticity: -3.0,
            },
            lin(-5.0),
        ];
        for a in [
            water_fill(&curves, f64::NAN, f64::NAN),
            greedy(&curves, -1.0, 2.0),
            uniform(&curves, f64::INFINITY, 0.5),
            water_fill(&[], 1.0, 0.99),
        ] {
            assert!(
                a.throttle_fractions
                    .iter()
                    .all(|p| (0.0..=0.99).contains(p)),
                "{a:?}"
            );
            assert!(a.planned_bytes_per_sec.is_finite());
        }
    }
}

//! What `aggression` (0.0 = guest performance first … 1.0 = migration time first) changes.
//!
//! Everything aggression does is in [`Policy`]; the rest of the controller only reads it:
//!
//! | aggression | margin | dirty-rate target | escalation per stuck round | switchover aimed at |
//! |---|---|---|---|---|
//! | 0.0  | 10 % | 90 % of the link | × 0.70 | 50 % of `max_downtime` |
//! | 0.25 | 30 % | 70 % | × 0.59 | 62.5 % |
//! | 0.5  | 50 % | 50 % (QEMU's 50 % trigger) | × 0.475 | 75 % |
//! | 0.75 | 70 % | 30 % | × 0.36 | 87.5 % |
//! | 1.0  | 90 % | 10 % | × 0.25 | 100 % |
//!
//! - **Margin** `m = 0.1 + 0.8·a`: the fraction of the transfer rate kept free to shrink the
//!   remaining set. Throttling starts only when the dirty rate exceeds `(1 − m)` of the transfer
//!   rate, and then aims at exactly that, so each round's set is about `(1 − m)` of the last.
//!   At 0 the set must still shrink by ~10 % a round ("least throttle that still makes
//!   progress"); at 1 dirtying vCPUs are cut to a tenth of the link, close to a pause.
//! - **Escalation step** `g = 0.7 − 0.45·a`: each completed round that shrinks the set by less
//!   than half the margin multiplies the dirty-rate target by `g` (cumulative, never undone),
//!   so a model that is too optimistic is overridden in a few rounds at 1 and more gently at 0.
//! - **Switchover target** `(0.5 + 0.5·a)·max_downtime`: while rounds still make progress the
//!   controller keeps iterating until the expected downtime is below this; a stalled round (or
//!   quiesced devices) accepts anything up to `max_downtime`. Guest-first waits for a shorter
//!   pause; time-first switches as soon as the limit allows.
//!
//! Not changed by aggression: `max_throttle` (a hard bound), the no-convergence test (the set
//! must shrink by at least [`NO_CONVERGENCE_SHRINK`] (3 %) a round at maximum throttle) and the
//! one-round probe at maximum throttle that confirms a "burst" workload.

use serde::Serialize;

/// At maximum throttle the remaining set must shrink by at least this fraction per round, or
/// the migration is declared unable to converge: the dirty rate is ≥ 97 % of the link, i.e. it
/// "exceeds the bandwidth" up to measurement noise. (Shrinking 3 % a round still converges, in
/// ~150 rounds per 100× of set size, at maximum throttle all along; the `timeout` is the knob
/// for users who would rather not wait that long.)
pub const NO_CONVERGENCE_SHRINK: f64 = 0.03;

/// The aggression-dependent constants.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Policy {
    /// The aggression this was derived from, 0..=1.
    pub aggression: f64,
    /// Fraction of the transfer rate reserved for shrinking the set.
    pub margin: f64,
    /// Factor applied to the dirty-rate target per stuck round.
    pub escalation_step: f64,
    /// Fraction of `max_downtime` aimed for while rounds still make progress.
    pub switchover_fraction: f64,
}

impl Policy {
    /// The policy for `aggression` (clamped to 0..=1; NaN is the default 0.5).
    pub fn for_aggression(aggression: f64) -> Policy {
        let a = if aggression.is_nan() {
            0.5
        } else {
            aggression.clamp(0.0, 1.0)
        };
        Policy {
            aggression: a,
            margin: 0.1 + 0.8 * a,
            escalation_step: 0.7 - 0.45 * a,
            switchover_fraction: 0.5 + 0.5 * a,
        }
    }

    /// A completed round is stuck when the set shrank by less than half the margin.
    pub fn stuck_below_shrink(&self) -> f64 {
        self.margin / 2.0
    }

    /// The dirty-rate target after `escalations` stuck rounds, for transfer rate `bytes_per_sec`.
    pub fn target_dirty_rate(&self, bytes_per_sec: f64, escalations: u32) -> f64 {
        let base = (1.0 - self.margin) * bytes_per_sec.max(0.0);
        base * self.escalation_step.powi(escalations.min(1000) as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_of_the_scale() {
        let p0 = Policy::for_aggression(0.0);
        assert!((p0.margin - 0.1).abs() < 1e-12);
        assert!((p0.escalation_step - 0.7).abs() < 1e-12);
        assert!((p0.switchover_fraction - 0.5).abs() < 1e-12);
        let p1 = Policy::for_aggression(1.0);
        assert!((p1.margin - 0.9).abs() < 1e-12);
        assert!((p1.escalation_step - 0.25).abs() < 1e-12);
        assert!((p1.switchover_fraction - 1.0).abs() < 1e-12);
    }

    #[test]
    fn more_aggression_is_more_of_everything() {
        let mut prev = Policy::for_aggression(0.0);
        for i in 1..=10 {
            let p = Policy::for_aggression(i as f64 / 10.0);
            assert!(p.margin > prev.margin);
            assert!(p.escalation_step < prev.escalation_step);
            assert!(p.switchover_fraction > prev.switchover_fraction);
            assert!(p.target_dirty_rate(100.0, 1) < prev.target_dirty_rate(100.0, 1));
            prev = p;
        }
    }

    #[test]
    fn escalation_compounds_and_survives_garbage() {
        let p = Policy::for_aggression(0.5);
        assert!((p.target_dirty_rate(100.0, 0) - 50.0).abs() < 1e-9);
        assert!((p.target_dirty_rate(100.0, 2) - 50.0 * 0.475 * 0.475).abs() < 1e-9);
        assert_eq!(p.target_dirty_rate(-5.0, 0), 0.0);
        assert!(p.target_dirty_rate(100.0, u32::MAX) >= 0.0);
        assert_eq!(
            Policy::for_aggression(f64::NAN),
            Policy::for_aggression(0.5)
        );
    }
}

//! Duty-cycle maths for throttling one vCPU: how long to run, how long to sleep.
//!
//! A throttle fraction `p` means the vCPU may use only `1 − p` of wall-clock time. The vCPU
//! loop runs the guest for [`DutyCycle::run`], then sleeps for [`DutyCycle::sleep`] (or, better,
//! for [`DutyCycle::sleep_after`] the run slice it actually got, since `KVM_RUN` returns late
//! when an exit is slow or the kick arrives late).
//!
//! Why these numbers:
//! - The default period is 10 ms, as QEMU's `cpu-throttle` uses: short enough that a throttled
//!   guest sees a slow CPU rather than a stall (a 10 ms gap is below most guest watchdogs and
//!   network timeouts), long enough that the kick and re-entry overhead (tens of µs) stays small.
//! - At high throttle the run slice would shrink below what is useful (at 99 % of 10 ms it would
//!   be 100 µs, mostly spent on exit/entry). So the run slice never drops below
//!   [`MIN_RUN_SLICE`] (10 ms); the period is lengthened instead (99 % → 10 ms run, 990 ms
//!   sleep).
//! - A sleep that overruns (timer slack, a late wake-up: 35–100 µs measured here on an idle
//!   host, up to ~0.9 ms on a busy one) is off time the guest did not owe; [`OversleepDebt`]
//!   takes it off the next sleeps.
//! - The sleep compensating an overshooting run slice is capped at [`MAX_SLEEP`]: a vCPU that
//!   ran 5 s in one `KVM_RUN` at 99 % would otherwise owe 495 s of sleep, which is exactly the
//!   frozen guest tern exists to avoid. Forgiving the excess costs only throttle accuracy.

use std::time::Duration;

/// Default duty-cycle period.
pub const DEFAULT_PERIOD: Duration = Duration::from_millis(10);

/// Shortest run slice the duty cycle hands out; the period is lengthened to keep it.
///
/// Measured from inside a guest (the test guest's stall meter, `busy_pct`): every
/// resumption after a throttle sleep costs the vCPU roughly 0.5–1 ms before it makes
/// progress again (cold caches and TLB; on kvm_pvm also shadow-paging work), so 1 ms
/// slices left a guest throttled to 90 % with under 2 % of the CPU instead of 10 %, and
/// 5 ms slices cost ~3 points at 50 %. With slices of at least 10 ms the guest-measured
/// share stays within 1–2 points of 1 − p from 10 % to 99 % (QEMU likewise stretches its
/// period to 1 s at 99 %).
pub const MIN_RUN_SLICE: Duration = Duration::from_millis(10);

/// Shortest run slice [`DutyCycle::bounded`] hands out when a stall bound forces the period
/// shorter than [`MIN_RUN_SLICE`] allows.
pub const MIN_BOUNDED_RUN_SLICE: Duration = Duration::from_micros(500);

/// Highest throttle fraction honoured. 1.0 would be a pause, which is not a throttle.
pub const MAX_FRACTION: f64 = 0.99;

/// Longest single sleep [`DutyCycle::sleep_after`] returns.
pub const MAX_SLEEP: Duration = Duration::from_secs(1);

/// Clamps a throttle fraction to `0.0..=MAX_FRACTION`; NaN and negatives mean "no throttle".
pub fn clamp_fraction(fraction: f64) -> f64 {
    if fraction.is_nan() || fraction <= 0.0 {
        0.0
    } else {
        fraction.min(MAX_FRACTION)
    }
}

/// Converts seconds to a `Duration`, saturating instead of panicking (NaN and negatives → 0).
pub(crate) fn secs_to_duration(secs: f64) -> Duration {
    if secs.is_nan() || secs <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
}

/// How much of each period one vCPU runs and sleeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DutyCycle {
    run: Duration,
    sleep: Duration,
    max_sleep: Duration,
}

impl DutyCycle {
    /// No throttle: run a whole default period, never sleep.
    pub const UNTHROTTLED: DutyCycle = DutyCycle {
        run: DEFAULT_PERIOD,
        sleep: Duration::ZERO,
        max_sleep: MAX_SLEEP,
    };

    /// The duty cycle for throttle `fraction` (clamped by [`clamp_fraction`]) and a nominal
    /// `period`. A period shorter than [`MIN_RUN_SLICE`] is raised to it. When `(1 − p)·period`
    /// would be shorter than [`MIN_RUN_SLICE`], the run slice is kept at that minimum and the
    /// period grows to `MIN_RUN_SLICE / (1 − p)`, so the fraction is still honoured.
    pub fn new(fraction: f64, period: Duration) -> DutyCycle {
        let p = clamp_fraction(fraction);
        let period = period.max(MIN_RUN_SLICE);
        if p == 0.0 {
            return DutyCycle {
                run: period,
                sleep: Duration::ZERO,
                max_sleep: MAX_SLEEP,
            };
        }
        let share = 1.0 - p;
        let mut run = secs_to_duration(period.as_secs_f64() * share);
        let mut period = period;
        if run < MIN_RUN_SLICE {
            run = MIN_RUN_SLICE;
            period = secs_to_duration(MIN_RUN_SLICE.as_secs_f64() / share);
        }
        DutyCycle {
            run,
            sleep: period.saturating_sub(run),
            max_sleep: MAX_SLEEP,
        }
    }

    /// Like [`DutyCycle::new`], but no sleep is longer than `max_sleep` (the
    /// `--max-stall` a user allows the guest to see). Where the stretched period
    /// would sleep longer, the sleep is cut to `max_sleep` and the run slice
    /// shrinks with it to keep the fraction (`max_sleep·(1 − p)/p`), down to
    /// [`MIN_BOUNDED_RUN_SLICE`]; below that the fraction gives way. Short run
    /// slices cost the guest some of its share in re-entry overhead (see
    /// [`MIN_RUN_SLICE`]): the guest then gets a little less CPU than `1 − p`,
    /// which throttles more, never less.
    pub fn bounded(fraction: f64, period: Duration, max_sleep: Duration) -> DutyCycle {
        let mut cycle = DutyCycle::new(fraction, period);
        let max_sleep = max_sleep.clamp(MIN_BOUNDED_RUN_SLICE, MAX_SLEEP);
        cycle.max_sleep = max_sleep;
        if cycle.sleep > max_sleep {
            let p = clamp_fraction(fraction);
            cycle.sleep = max_sleep;
            cycle.run = secs_to_duration(max_sleep.as_secs_f64() * (1.0 - p) / p)
                .max(MIN_BOUNDED_RUN_SLICE);
        }
        cycle
    }

    #[cfg(test)]
    fn with_max_sleep_for_test(mut self, max_sleep: Duration) -> DutyCycle {
        self.max_sleep = max_sleep;
        self
    }

    /// The duty cycle for `fraction` with [`DEFAULT_PERIOD`].
    pub fn with_default_period(fraction: f64) -> DutyCycle {
        DutyCycle::new(fraction, DEFAULT_PERIOD)
    }

    /// How long the vCPU runs per period.
    pub fn run(&self) -> Duration {
        self.run
    }

    /// How long the vCPU sleeps per period when its run slice was exactly [`DutyCycle::run`].
    pub fn sleep(&self) -> Duration {
        self.sleep
    }

    /// Run plus sleep.
    pub fn period(&self) -> Duration {
        self.run.saturating_add(self.sleep)
    }

    /// Whether the vCPU never sleeps.
    pub fn is_unthrottled(&self) -> bool {
        self.sleep.is_zero()
    }

    /// The throttle fraction this duty cycle actually implements (sleep / period).
    pub fn fraction(&self) -> f64 {
        let period = self.period().as_secs_f64();
        if period <= 0.0 {
            0.0
        } else {
            self.sleep.as_secs_f64() / period
        }
    }

    /// Run slices per second: how often a throttled vCPU gets the CPU back.
    pub fn slices_per_sec(&self) -> f64 {
        let period = self.period().as_secs_f64();
        if period <= 0.0 {
            0.0
        } else {
            1.0 / period
        }
    }

    /// The sleep owed after a run slice of `actual_run`: `actual_run · p/(1 − p)`, so the
    /// fraction holds even when `KVM_RUN` overshot the planned slice, capped at [`MAX_SLEEP`].
    pub fn sleep_after(&self, actual_run: Duration) -> Duration {
        compensated_sleep(actual_run, self.fraction()).min(self.max_sleep)
    }
}

/// Off time a vCPU took beyond what its duty cycle asked for: a sleep that
/// overran its deadline (timer slack, a late wake-up on a busy host). Paid back
/// by shortening the next sleeps, so that over many periods the guest gets
/// `1 − p` of the time, not `1 − p` minus the host's wake-up latency. A
/// 0.5 ms overrun per 10 ms sleep is 2.5 points of CPU share at 50 %.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OversleepDebt {
    owed: Duration,
}

impl OversleepDebt {
    /// The sleep to ask for when the duty cycle wants `wanted`: shortened by
    /// what is owed, down to none.
    pub fn sleep_for(&mut self, wanted: Duration) -> Duration {
        let repaid = self.owed.min(wanted);
        self.owed -= repaid;
        wanted - repaid
    }

    /// Records a sleep that was asked for `asked` and took `took`. An overrun
    /// is owed, up to `cap` (one period: a vCPU thread descheduled for long
    /// does not earn a long unthrottled run); a sleep cut short by a pause or
    /// stop request owes nothing.
    pub fn record(&mut self, asked: Duration, took: Duration, cap: Duration) {
        self.owed = self
            .owed
            .saturating_add(took.saturating_sub(asked))
            .min(cap);
    }

    /// What is owed now.
    pub fn owed(&self) -> Duration {
        self.owed
    }
}

/// The sleep that keeps throttle `fraction` after running for `actual_run`:
/// `actual_run · p/(1 − p)`, capped at [`MAX_SLEEP`]. Pure; never panics.
pub fn compensated_sleep(actual_run: Duration, fraction: f64) -> Duration {
    let p = clamp_fraction(fraction);
    if p == 0.0 {
        return Duration::ZERO;
    }
    secs_to_duration(actual_run.as_secs_f64() * p / (1.0 - p)).min(MAX_SLEEP)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn close(a: Duration, b: Duration) -> bool {
        a.abs_diff(b) <= Duration::from_micros(1)
    }

    #[test]
    fn a_steady_oversleep_is_paid_back_so_the_off_time_is_what_was_wanted() {
        let mut debt = OversleepDebt::default();
        let wanted = ms(10);
        let late = Duration::from_micros(700);
        let mut off = Duration::ZERO;
        for _ in 0..100 {
            let asked = debt.sleep_for(wanted);
            let took = asked + late; // the host always wakes the thread late
            debt.record(asked, took, ms(20));
            off += took;
        }
        // 100 periods off for 100 × 10 ms plus the one overrun still owed.
        assert_eq!(off, ms(1000) + late);
        assert_eq!(debt.owed(), late);
    }

    #[test]
    fn debt_larger_than_a_sleep_is_carried_and_capped() {
        let mut debt = OversleepDebt::default();
        // One long descheduling: owed only up to the cap.
        debt.record(ms(1), ms(500), ms(11));
        assert_eq!(debt.owed(), ms(11));
        // Short sleeps are skipped entirely while the debt lasts.
        assert_eq!(debt.sleep_for(ms(4)), Duration::ZERO);
        assert_eq!(debt.owed(), ms(7));
        assert_eq!(debt.sleep_for(ms(4)), Duration::ZERO);
        assert_eq!(debt.sleep_for(ms(4)), ms(1));
        assert_eq!(debt.owed(), Duration::ZERO);
        // A sleep cut short (pause, stop) owes nothing.
        debt.record(ms(10), ms(2), ms(11));
        assert_eq!(debt.owed(), Duration::ZERO);
    }

    #[test]
    fn zero_fraction_never_sleeps() {
        let d = DutyCycle::new(0.0, DEFAULT_PERIOD);
        assert_eq!(d.run(), DEFAULT_PERIOD);
        assert_eq!(d.sleep(), Duration::ZERO);
        assert!(d.is_unthrottled());
        assert_eq!(d.fraction(), 0.0);
    }

    #[test]
    fn moderate_fraction_splits_the_period() {
        let d = DutyCycle::new(0.3, ms(100));
        assert!(close(d.run(), ms(70)), "{d:?}");
        assert!(close(d.sleep(), ms(30)), "{d:?}");
        assert!(close(d.period(), ms(100)));
        assert!((d.fraction() - 0.3).abs() < 1e-6);
        // With the default period the run slice is raised to the minimum.
        let d = DutyCycle::new(0.3, DEFAULT_PERIOD);
        assert_eq!(d.run(), MIN_RUN_SLICE);
        assert!((d.fraction() - 0.3).abs() < 1e-6);
    }

    #[test]
    fn high_fraction_keeps_the_minimum_run_slice() {
        let d = DutyCycle::new(0.99, DEFAULT_PERIOD);
        assert_eq!(d.run(), MIN_RUN_SLICE);
        assert!(close(d.sleep(), ms(990)), "{d:?}");
        assert!((d.fraction() - 0.99).abs() < 1e-6);
        assert!((d.slices_per_sec() - 1.0).abs() < 1e-6);
        // 95 %: 0.5 ms would be too short, so a 10 ms run and a 190 ms sleep.
        let d = DutyCycle::new(0.95, DEFAULT_PERIOD);
        assert_eq!(d.run(), MIN_RUN_SLICE);
        assert!(close(d.sleep(), ms(190)), "{d:?}");
    }

    #[test]
    fn fraction_is_clamped_and_nan_is_unthrottled() {
        assert_eq!(
            DutyCycle::new(1.0, DEFAULT_PERIOD),
            DutyCycle::new(MAX_FRACTION, DEFAULT_PERIOD)
        );
        assert_eq!(
            DutyCycle::new(7.0, DEFAULT_PERIOD),
            DutyCycle::new(MAX_FRACTION, DEFAULT_PERIOD)
        );
        assert!(DutyCycle::new(f64::NAN, DEFAULT_PERIOD).is_unthrottled());
        assert!(DutyCycle::new(-0.5, DEFAULT_PERIOD).is_unthrottled());
        assert!(DutyCycle::new(f64::INFINITY, DEFAULT_PERIOD).sleep() > Duration::ZERO);
    }

    #[test]
    fn tiny_period_is_raised_to_minimum_run_slice() {
        let d = DutyCycle::new(0.5, Duration::ZERO);
        assert_eq!(d.run(), MIN_RUN_SLICE);
        assert!(close(d.sleep(), MIN_RUN_SLICE));
        let d = DutyCycle::new(0.0, Duration::ZERO);
        assert_eq!(d.run(), MIN_RUN_SLICE);
    }

    #[test]
    fn huge_period_does_not_overflow() {
        let d = DutyCycle::new(0.5, Duration::MAX);
        assert!(d.run() > Duration::ZERO);
        assert!(d.period() <= Duration::MAX);
    }

    #[test]
    fn compensation_scales_with_actual_run() {
        // 50 %: sleep as long as we ran.
        assert!(close(compensated_sleep(ms(4), 0.5), ms(4)));
        // 80 %: a 2 ms overshoot to 4 ms owes 16 ms.
        assert!(close(compensated_sleep(ms(4), 0.8), ms(16)));
        let d = DutyCycle::new(0.8, DEFAULT_PERIOD);
        assert!(close(d.sleep_after(d.run()), d.sleep()));
        assert_eq!(compensated_sleep(ms(4), 0.0), Duration::ZERO);
        assert_eq!(compensated_sleep(Duration::ZERO, 0.9), Duration::ZERO);
    }

    #[test]
    fn compensation_is_capped() {
        assert_eq!(compensated_sleep(Duration::from_secs(5), 0.99), MAX_SLEEP);
        assert_eq!(compensated_sleep(Duration::MAX, 0.99), MAX_SLEEP);
        assert_eq!(compensated_sleep(ms(5), f64::NAN), Duration::ZERO);
    }

    #[test]
    fn secs_to_duration_saturates() {
        assert_eq!(secs_to_duration(f64::NAN), Duration::ZERO);
        assert_eq!(secs_to_duration(-1.0), Duration::ZERO);
        assert_eq!(secs_to_duration(f64::INFINITY), Duration::MAX);
        assert_eq!(secs_to_duration(1e30), Duration::MAX);
        assert_eq!(secs_to_duration(1.5), Duration::from_millis(1500));
    }

    #[test]
    fn a_stall_bound_shortens_the_period_and_keeps_the_fraction() {
        let d = DutyCycle::bounded(0.99, DEFAULT_PERIOD, ms(50));
        assert_eq!(d.sleep(), ms(50));
        assert!((d.fraction() - 0.99).abs() < 0.001, "{d:?}");
        assert!(d.sleep_after(ms(30)) <= ms(50));
        // Below the bound nothing changes.
        let d = DutyCycle::bounded(0.5, DEFAULT_PERIOD, ms(50));
        assert_eq!(
            d,
            DutyCycle::new(0.5, DEFAULT_PERIOD).with_max_sleep_for_test(ms(50))
        );
    }

    #[test]
    fn a_tiny_stall_bound_gives_way_on_the_fraction_not_the_bound() {
        let d = DutyCycle::bounded(0.99, DEFAULT_PERIOD, ms(1));
        assert_eq!(d.sleep(), ms(1));
        assert_eq!(d.run(), MIN_BOUNDED_RUN_SLICE);
        assert!(d.fraction() < 0.99);
        assert!(d.sleep_after(Duration::from_secs(5)) <= ms(1));
    }
}

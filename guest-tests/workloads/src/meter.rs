//! The stall meter: per worker, per interval, how much work the loop did,
//! the longest gap between two iterations, the time the CPU did not run, and
//! whether the clocks stayed continuous.
//!
//! CPU share (`busy_pct`) is measured as the fraction of the interval in
//! which the loop made progress: every gap between two iterations longer
//! than `tern.gap_us` is time the vCPU was not running (descheduled,
//! throttled, paused), everything else is time it ran. An iteration is tens
//! of nanoseconds (hundreds with a page write), a throttle's sleeps are
//! milliseconds, so the split is sharp and needs no reference. The other
//! measure, work per interval against a baseline taken at start
//! (`rate_pct`), also moves with cache and memory-bandwidth effects, host
//! contention and dirty-logging faults that slow the loop without stopping
//! it, so `busy_pct` is the one to check a duty-cycle throttle against;
//! `rate_pct` answers "how much work did the guest keep doing".
//!
//! Time the worker spends on its own business (printing its tick line,
//! polling for commands, parked for a verify) is excluded from both. Time
//! it chose to halt (`tern.idle=halt`) counts as time it ran, as it had
//! the CPU whenever it wanted it: of a halt only a late wake, past the
//! deadline it set, is a stall.

use crate::clock::{ClockCheck, ClockPair};
use crate::event::{Baseline, Tick};
use crate::page::PAGE_SIZE;

/// Meter settings, in TSC ticks.
#[derive(Clone, Copy, Debug)]
pub struct MeterConfig {
    pub tsc_hz: u64,
    pub interval: u64,
    pub gap_threshold: u64,
    /// How much (non-excluded) run time the baseline averages over; 0: none.
    pub baseline: u64,
}

impl MeterConfig {
    pub fn new(tsc_hz: u64, tick_ms: u32, gap_us: u32, baseline_ms: u32) -> Self {
        let ticks_per_ms = tsc_hz / 1000;
        MeterConfig {
            tsc_hz,
            interval: (ticks_per_ms * u64::from(tick_ms)).max(1),
            gap_threshold: crate::clock::us_to_ticks(gap_us.into(), tsc_hz),
            baseline: ticks_per_ms * u64::from(baseline_ms),
        }
    }
}

enum BaselineState {
    Off,
    Measuring { work: u64, ticks: u64 },
    Known { work: u64, ticks: u64 },
}

pub struct StallMeter {
    cfg: MeterConfig,
    cpu: u32,
    start: u64,
    last: u64,
    work: u64,
    pages: u64,
    max_gap: u64,
    stalled: u64,
    excluded: u64,
    seq: u64,
    clock: ClockCheck,
    baseline: BaselineState,
}

impl StallMeter {
    /// A meter whose first interval starts at `now`, with the clocks read
    /// then (`clock`).
    pub fn new(cpu: u32, cfg: MeterConfig, now: u64, clock: Option<ClockPair>) -> Self {
        let mut check = ClockCheck::default();
        check.sample_pair(now, clock, cfg.tsc_hz);
        let baseline = if cfg.baseline == 0 {
            BaselineState::Off
        } else {
            BaselineState::Measuring { work: 0, ticks: 0 }
        };
        StallMeter {
            cfg,
            cpu,
            start: now,
            last: now,
            work: 0,
            pages: 0,
            max_gap: 0,
            stalled: 0,
            excluded: 0,
            seq: 0,
            clock: check,
            baseline,
        }
    }

    /// One loop iteration at `now`.
    #[inline]
    pub fn iteration(&mut self, now: u64) {
        let gap = now.saturating_sub(self.last);
        self.max_gap = self.max_gap.max(gap);
        if gap > self.cfg.gap_threshold {
            self.stalled += gap;
        }
        self.last = now;
        self.work += 1;
    }

    #[inline]
    pub fn page_dirtied(&mut self) {
        self.pages += 1;
    }

    #[inline]
    pub fn tick_due(&self, now: u64) -> bool {
        now.saturating_sub(self.start) >= self.cfg.interval
    }

    /// When the current interval is due to end.
    #[inline]
    pub fn tick_at(&self) -> u64 {
        self.start.saturating_add(self.cfg.interval)
    }

    /// The worker halted to wake at `deadline` and woke at `woke`: the time
    /// it meant to halt counts as run time; a late wake shows as the gap from
    /// `deadline` to the next iteration.
    pub fn halted(&mut self, deadline: u64, woke: u64) {
        self.last = self.last.max(woke.min(deadline));
    }

    /// The worker was busy with its own overhead from `from` to `to`.
    pub fn exclude(&mut self, from: u64, to: u64) {
        self.excluded += to.saturating_sub(from);
        self.last = self.last.max(to);
    }

    /// Closes the interval at `now` and starts the next one. Also returns
    /// the baseline when this interval completed it.
    ///
    /// The loop calls this right after an iteration, so a gap that spans the
    /// nominal end of the interval lies wholly inside it (the interval just
    /// ends later): nothing is split between intervals. A gap still open at
    /// `now` counts as if an iteration happened then. `clock` is both clocks
    /// read together for the continuity check (`Platform::clock_pair`).
    pub fn finish(&mut self, now: u64, clock: Option<ClockPair>) -> (Tick, Option<Baseline>) {
        let trailing = now.saturating_sub(self.last);
        self.max_gap = self.max_gap.max(trailing);
        if trailing > self.cfg.gap_threshold {
            self.stalled += trailing;
        }
        let hz = self.cfg.tsc_hz;
        let us = |ticks| crate::clock::ticks_to_us(ticks, hz);
        let interval = now.saturating_sub(self.start);
        let excluded = self.excluded.min(interval);
        let measured = interval - excluded;
        let stalled = self.stalled.min(measured);
        let verdict = self.clock.sample_pair(now, clock, hz);
        let busy_x100 = (measured > 0)
            .then(|| ((u128::from(measured - stalled) * 10_000) / u128::from(measured)) as u64);

        let mut completed = None;
        let rate_x100 = match &mut self.baseline {
            BaselineState::Off => None,
            BaselineState::Measuring { work, ticks } => {
                *work += self.work;
                *ticks += measured;
                if *ticks >= self.cfg.baseline && *work > 0 {
                    let work_per_s =
                        (u128::from(*work) * u128::from(hz) / u128::from(*ticks)) as u64;
                    completed = Some(Baseline {
                        cpu: self.cpu,
                        work_per_s,
                    });
                    self.baseline = BaselineState::Known {
                        work: *work,
                        ticks: *ticks,
                    };
                }
                None
            }
            BaselineState::Known { work, ticks } => (measured > 0).then(|| {
                let num = u128::from(self.work) * u128::from(*ticks) * 10_000;
                (num / (u128::from(measured) * u128::from(*work))) as u64
            }),
        };

        let tick = Tick {
            cpu: self.cpu,
            seq: self.seq,
            tsc: now,
            clock_ns: clock.map(|c| c.ns),
            interval_us: us(interval),
            work: self.work,
            pages: self.pages,
            dirty_mib_s_x100: if interval == 0 {
                0
            } else {
                (u128::from(self.pages) * PAGE_SIZE as u128 * 100 * u128::from(hz)
                    / (u128::from(interval) << 20)) as u64
            },
            max_gap_us: us(self.max_gap),
            stalled_us: us(stalled),
            excluded_us: us(excluded),
            busy_x100,
            rate_x100,
            clock: verdict.status,
            drift_us: verdict.drift_ns.map(|d| d / 1000),
        };
        self.seq += 1;
        self.start = now;
        self.last = self.last.max(now);
        self.work = 0;
        self.pages = 0;
        self.max_gap = 0;
        self.stalled = 0;
        self.excluded = 0;
        (tick, completed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ClockStatus;

    // A 1 MHz "TSC": one tick per µs.
    const HZ: u64 = 1_000_000;

    /// Both clocks read at TSC `tsc`, the second showing `ns`.
    fn at(tsc: u64, ns: u64) -> Option<ClockPair> {
        Some(ClockPair { tsc, ns })
    }

    fn meter(baseline_ms: u32) -> StallMeter {
        StallMeter::new(0, MeterConfig::new(HZ, 100, 50, baseline_ms), 0, at(0, 0))
    }

    /// Iterates every `step` µs over [from, to), except inside `holes`.
    fn run(m: &mut StallMeter, from: u64, to: u64, step: u64, holes: &[(u64, u64)]) {
        let mut t = from;
        while t < to {
            if let Some(&(_, end)) = holes.iter().find(|&&(a, b)| t >= a && t < b) {
                t = end;
                continue;
            }
            m.iteration(t);
            t += step;
        }
    }

    #[test]
    fn an_unthrottled_interval_is_fully_busy() {
        let mut m = meter(0);
        run(&mut m, 1, 100_000, 1, &[]);
        let (t, b) = m.finish(100_000, at(100_000, 100_000_000));
        assert_eq!(b, None);
        assert_eq!(
            (t.work, t.max_gap_us, t.stalled_us, t.busy_x100),
            (99_999, 1, 0, Some(10_000))
        );
        assert_eq!(
            (t.rate_x100, t.clock, t.drift_us),
            (None, ClockStatus::Ok, Some(0))
        );
    }

    #[test]
    fn a_duty_cycle_shows_as_its_share() {
        // 30 % throttle with a 10 ms period: 3 ms off in every 10 ms.
        let mut m = meter(0);
        let holes: Vec<(u64, u64)> = (0..10)
            .map(|i| (i * 10_000 + 7_000, i * 10_000 + 10_000))
            .collect();
        run(&mut m, 0, 100_000, 1, &holes);
        let (t, _) = m.finish(100_000, None);
        assert_eq!(t.max_gap_us, 3_001);
        // Ten 3 ms holes (plus the µs of the iteration before each).
        let busy = t.busy_x100.unwrap();
        assert!((6_990..=7_010).contains(&busy), "busy {busy}");
    }

    #[test]
    fn own_overhead_is_excluded() {
        let mut m = meter(0);
        run(&mut m, 0, 50_000, 1, &[]);
        // 20 ms printing: excluded, not a stall.
        m.exclude(50_000, 70_000);
        run(&mut m, 70_000, 100_000, 1, &[]);
        let (t, _) = m.finish(100_000, None);
        assert_eq!(
            (t.excluded_us, t.stalled_us, t.busy_x100),
            (20_000, 0, Some(10_000))
        );
        assert!(t.max_gap_us <= 1);
    }

    #[test]
    fn a_halt_counts_only_its_late_wake() {
        let mut m = meter(0);
        run(&mut m, 0, 10_000, 1, &[]);
        assert_eq!(m.tick_at(), 100_000);
        // Halts for 20 ms and wakes on time: not a stall.
        m.halted(30_000, 30_000);
        run(&mut m, 30_000, 40_000, 1, &[]);
        // Halts for 20 ms and wakes 5 ms late (the vCPU was paused).
        m.halted(60_000, 65_000);
        run(&mut m, 65_000, 70_000, 1, &[]);
        // Wakes early (a spurious interrupt).
        m.halted(90_000, 80_000);
        run(&mut m, 80_000, 100_000, 1, &[]);
        let (t, _) = m.finish(100_000, None);
        assert_eq!((t.excluded_us, t.max_gap_us), (0, 5_000));
        assert_eq!(t.stalled_us, 5_000);
        assert_eq!(t.busy_x100, Some(9_500));
    }

    #[test]
    fn baseline_then_relative_rate() {
        let mut m = meter(200);
        run(&mut m, 0, 100_000, 1, &[]);
        assert_eq!(m.finish(100_000, None).1, None);
        run(&mut m, 100_000, 200_000, 1, &[]);
        let (t, b) = m.finish(200_000, None);
        assert_eq!(
            b,
            Some(Baseline {
                cpu: 0,
                work_per_s: 1_000_000
            })
        );
        assert_eq!(t.rate_x100, None);
        // Half the iterations per µs: 50 %.
        run(&mut m, 200_000, 300_000, 2, &[]);
        let (t, _) = m.finish(300_000, None);
        assert_eq!(t.rate_x100, Some(5_000));
        assert_eq!(t.busy_x100, Some(10_000), "slower is not stalled");
    }

    #[test]
    fn dirty_rate_and_clock_jump() {
        let mut m = meter(0);
        for _ in 0..2560 {
            m.page_dirtied(); // 10 MiB in 100 ms
        }
        let (t, _) = m.finish(100_000, at(100_000, 150_000_000));
        assert_eq!(t.dirty_mib_s_x100, 10_000);
        assert_eq!(t.clock, ClockStatus::Jump);
        assert_eq!(t.drift_us, Some(50_000));
    }
}

//! Time: TSC conversions, the kvmclock (pvclock) formula, and the clock
//! continuity check the stall meter runs at every tick.

use crate::names::named_enum;

/// `ticks` of a `hz` clock in microseconds.
pub fn ticks_to_us(ticks: u64, hz: u64) -> u64 {
    (u128::from(ticks) * 1_000_000 / u128::from(hz.max(1))) as u64
}

/// `us` microseconds in ticks of a `hz` clock.
pub fn us_to_ticks(us: u64, hz: u64) -> u64 {
    (u128::from(us) * u128::from(hz) / 1_000_000) as u64
}

/// One consistent read of a vCPU's `pvclock_vcpu_time_info` (the kvmclock
/// area KVM keeps up to date).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pvclock {
    pub tsc_timestamp: u64,
    pub system_time: u64,
    pub tsc_to_system_mul: u32,
    pub tsc_shift: i8,
}

impl Pvclock {
    /// Nanoseconds of kvmclock at TSC value `tsc` (KVM's formula: scale the
    /// TSC delta by 2^shift, then multiply by mul / 2^32).
    pub fn ns_at(&self, tsc: u64) -> u64 {
        let delta = tsc.saturating_sub(self.tsc_timestamp);
        let shifted = match self.tsc_shift {
            s if s >= 0 => delta << s,
            s => delta >> -s,
        };
        let scaled = (u128::from(shifted) * u128::from(self.tsc_to_system_mul)) >> 32;
        self.system_time.wrapping_add(scaled as u64)
    }

    /// The TSC frequency this scaling implies.
    pub fn tsc_hz(&self) -> u64 {
        let hz = (1_000_000_000u128 << 32) / u128::from(self.tsc_to_system_mul.max(1));
        let hz = match self.tsc_shift {
            s if s >= 0 => hz >> s,
            s => hz << -s,
        };
        hz as u64
    }
}

/// The TSC and the second clock at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockPair {
    /// The TSC when the clock was read: the middle of the two reads around it.
    pub tsc: u64,
    /// The second clock, in ns.
    pub ns: u64,
}

/// Two TSC reads around a clock read further apart than this did not see
/// one instant: the CPU was stopped or interrupted between them.
pub const PAIR_MAX_SPREAD_US: u64 = 20;
/// Attempts at a pair that tight before the tightest one is taken (a clock
/// read may itself take longer, say a system call on an emulated ring 0).
pub const PAIR_ATTEMPTS: usize = 4;

/// Reads `clock` between two reads of `tsc` (a `hz` counter) until the two
/// TSC reads are at most [`PAIR_MAX_SPREAD_US`] apart, at most
/// [`PAIR_ATTEMPTS`] times, keeping the tightest; None when there is no
/// second clock.
///
/// The continuity check compares how far each clock moved between two
/// samples, so each sample must read both at one instant. If the CPU stops
/// between the reads (a migration's switchover, the host descheduling the
/// vCPU), one reading includes the stop and the other does not, and the
/// check sees the clocks part by the stop's length in one interval and
/// meet again in the next: a migration that stopped the guest for 1.9 ms
/// between a TSC read and a `CLOCK_MONOTONIC` read was once reported as the
/// clock 1.9 ms behind the TSC.
pub fn read_pair(
    tsc: impl Fn() -> u64,
    clock: impl Fn() -> Option<u64>,
    hz: u64,
) -> Option<ClockPair> {
    let max_spread = us_to_ticks(PAIR_MAX_SPREAD_US, hz);
    let mut tightest: Option<(u64, ClockPair)> = None;
    for _ in 0..PAIR_ATTEMPTS {
        let before = tsc();
        let ns = clock()?;
        let spread = tsc().saturating_sub(before);
        let pair = ClockPair {
            tsc: before + spread / 2,
            ns,
        };
        if tightest.is_none_or(|(s, _)| spread < s) {
            tightest = Some((spread, pair));
        }
        if spread <= max_spread {
            break;
        }
    }
    tightest.map(|(_, pair)| pair)
}

named_enum! {
    /// How the two clocks behaved over a stall-meter interval.
    pub enum ClockStatus {
        Ok = "ok",
        /// The TSC went backwards.
        TscBackwards = "tsc_backwards",
        /// The second clock (kvmclock, or CLOCK_MONOTONIC for the Linux
        /// program) went backwards.
        ClockBackwards = "clock_backwards",
        /// Both went forwards but disagree by more than 1 ms and 1 %: one
        /// of them jumped.
        Jump = "jump",
    }
}

/// The verdict on one interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockVerdict {
    pub status: ClockStatus,
    /// Second clock's advance minus the TSC's, in ns (None: no second clock).
    pub drift_ns: Option<i64>,
}

/// Compares consecutive (TSC, second clock) samples.
#[derive(Default)]
pub struct ClockCheck {
    prev: Option<(u64, Option<u64>)>,
}

impl ClockCheck {
    /// Samples `pair` (both clocks at one instant), or with no second clock
    /// the TSC at `now`.
    pub fn sample_pair(&mut self, now: u64, pair: Option<ClockPair>, tsc_hz: u64) -> ClockVerdict {
        match pair {
            Some(p) => self.sample(p.tsc, Some(p.ns), tsc_hz),
            None => self.sample(now, None, tsc_hz),
        }
    }

    pub fn sample(&mut self, tsc: u64, clock_ns: Option<u64>, tsc_hz: u64) -> ClockVerdict {
        let prev = self.prev.replace((tsc, clock_ns));
        let ok = ClockVerdict {
            status: ClockStatus::Ok,
            drift_ns: None,
        };
        let Some((prev_tsc, prev_ns)) = prev else {
            return ok;
        };
        if tsc < prev_tsc {
            return ClockVerdict {
                status: ClockStatus::TscBackwards,
                ..ok
            };
        }
        let (Some(ns), Some(prev_ns)) = (clock_ns, prev_ns) else {
            return ok;
        };
        if ns < prev_ns {
            return ClockVerdict {
                status: ClockStatus::ClockBackwards,
                ..ok
            };
        }
        let tsc_ns =
            (u128::from(tsc - prev_tsc) * 1_000_000_000 / u128::from(tsc_hz.max(1))) as i64;
        let drift = (ns - prev_ns) as i64 - tsc_ns;
        let tolerance = (tsc_ns / 100).max(1_000_000);
        let status = if drift.abs() > tolerance {
            ClockStatus::Jump
        } else {
            ClockStatus::Ok
        };
        ClockVerdict {
            status,
            drift_ns: Some(drift),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // What KVM computes for a 2.5 GHz TSC: ns = tsc * 0.4.
    const PV: Pvclock = Pvclock {
        tsc_timestamp: 1000,
        system_time: 5_000,
        tsc_to_system_mul: 0xcccc_cccd,
        tsc_shift: -1,
    };

    #[test]
    fn pvclock_formula() {
        assert_eq!(PV.ns_at(1000), 5_000);
        assert_eq!(PV.ns_at(1000 + 2_500_000_000), 5_000 + 1_000_000_000);
        assert_eq!(
            PV.ns_at(0),
            5_000,
            "a TSC before the timestamp does not go back"
        );
        let hz = PV.tsc_hz();
        assert!((2_499_999_000..=2_500_001_000).contains(&hz), "{hz}");
        let slow = Pvclock {
            tsc_shift: 2,
            tsc_to_system_mul: 0x8000_0000,
            ..PV
        }; // 0.5 GHz
        assert_eq!(slow.ns_at(1000 + 500), 5_000 + 1000);
        assert_eq!(slow.tsc_hz(), 500_000_000);
    }

    #[test]
    fn conversions() {
        assert_eq!(ticks_to_us(2_500_000_000, 2_500_000_000), 1_000_000);
        assert_eq!(us_to_ticks(50, 2_000_000_000), 100_000);
        assert_eq!(
            ticks_to_us(5, 0),
            5_000_000,
            "a zero rate does not divide by zero"
        );
    }

    #[test]
    fn a_pair_is_read_again_when_the_cpu_stopped_between_its_reads() {
        use core::cell::Cell;
        // 1 tick = 1 ns. The TSC and the clock run together (clock = TSC + 7);
        // each read takes 1 µs, and the CPU stops for 2 ms inside the first
        // attempt.
        let hz = 1_000_000_000;
        let now = Cell::new(1_000_000u64);
        let reads = Cell::new(0);
        let tsc = || {
            now.set(now.get() + 1_000);
            now.get()
        };
        let clock = || {
            reads.set(reads.get() + 1);
            if reads.get() == 1 {
                now.set(now.get() + 2_000_000);
            }
            now.set(now.get() + 1_000);
            Some(now.get() + 7)
        };
        let pair = read_pair(tsc, clock, hz).unwrap();
        assert_eq!(reads.get(), 2, "read again after the stop");
        assert_eq!(pair.ns - pair.tsc, 7, "{pair:?}");

        // A clock that is always slow to read: the tightest of the attempts.
        let reads = Cell::new(0u64);
        let slow = || {
            reads.set(reads.get() + 1);
            // 100 µs, except the third read: 50 µs.
            now.set(now.get() + if reads.get() == 3 { 50_000 } else { 100_000 });
            Some(now.get())
        };
        let pair = read_pair(tsc, slow, hz).unwrap();
        assert_eq!(reads.get() as usize, PAIR_ATTEMPTS);
        // Its clock was read 50 µs after the first TSC read; the pair's TSC is
        // the middle of the attempt's 51 µs.
        assert_eq!(pair.ns - pair.tsc, 50_000 - 25_500, "the tightest attempt");

        // No second clock: no pair, and no retries.
        let reads = Cell::new(0);
        let none = || {
            reads.set(reads.get() + 1);
            None
        };
        assert_eq!(read_pair(tsc, none, hz), None);
        assert_eq!(reads.get(), 1);
    }

    #[test]
    fn a_stop_inside_a_sample_no_longer_looks_like_a_jump() {
        // What the stall meter used to do: the TSC read at the top of its
        // loop, the clock later; a 2 ms stop between them parts the clocks
        // by 2 ms in one interval and the next.
        let hz = 1_000_000_000;
        let mut torn = ClockCheck::default();
        torn.sample(0, Some(0), hz);
        let v1 = torn.sample(100_000_000, Some(102_000_000), hz);
        let v2 = torn.sample(200_000_000, Some(200_000_000), hz);
        assert_eq!(
            (v1.status, v1.drift_ns),
            (ClockStatus::Jump, Some(2_000_000))
        );
        assert_eq!(
            (v2.status, v2.drift_ns),
            (ClockStatus::Jump, Some(-2_000_000))
        );
        // Paired reads put the stop between samples, where both clocks see it.
        let mut paired = ClockCheck::default();
        paired.sample(0, Some(0), hz);
        let v1 = paired.sample(102_000_000, Some(102_000_000), hz);
        let v2 = paired.sample(200_000_000, Some(200_000_000), hz);
        assert_eq!((v1.status, v2.status), (ClockStatus::Ok, ClockStatus::Ok));
    }

    #[test]
    fn continuity() {
        let hz = 1_000_000_000; // 1 tick = 1 ns
        let mut c = ClockCheck::default();
        assert_eq!(c.sample(0, Some(0), hz).status, ClockStatus::Ok);
        let v = c.sample(100_000_000, Some(100_000_500), hz);
        assert_eq!((v.status, v.drift_ns), (ClockStatus::Ok, Some(500)));
        assert_eq!(
            c.sample(200_000_000, Some(250_000_000), hz).status,
            ClockStatus::Jump
        );
        assert_eq!(
            c.sample(300_000_000, Some(240_000_000), hz).status,
            ClockStatus::ClockBackwards
        );
        assert_eq!(
            c.sample(100, Some(400_000_000), hz).status,
            ClockStatus::TscBackwards
        );
        assert_eq!(
            c.sample(100_000_100, None, hz),
            ClockVerdict {
                status: ClockStatus::Ok,
                drift_ns: None
            }
        );
    }
}

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

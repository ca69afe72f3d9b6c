//! The guest model: memory, zero pages, and how each vCPU dirties memory.
//!
//! Everything is analytic, so a round of a 1 TiB guest costs a few floating-point operations
//! per vCPU, not a walk over 268 million pages:
//! - a vCPU **writes** pages at a rate that depends on its throttle ([`CpuScaling`]);
//! - writes land on its own **working set** (working sets of different vCPUs are disjoint), so
//!   the **distinct** pages dirtied after `W` bytes of writes saturate ([`WritePattern`]):
//!   uniformly `ws·(1 − e^(−W/ws))`; hot/cold 90/10 is the sum of that over a hot tenth taking
//!   90 % of the writes and the cold rest taking 10 %.

use std::time::Duration;

use crate::throttle::DutyCycle;

/// How a vCPU's write rate responds to its CPU share.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CpuScaling {
    /// Writes in proportion to CPU time: `rate · (1 − p)`.
    Linear,
    /// Writes a fixed amount per CPU slice, however short the slice (a job woken every tick
    /// that rewrites a buffer; QEMU's "600 MB in 50 ms" report): `bytes_per_slice · slices/s`,
    /// where slices/s is 100 (10 ms ticks) unthrottled and the duty cycle's rate when throttled.
    /// Throttling only helps once it stretches the period (above 90 %).
    Burst {
        /// Bytes written per run slice.
        bytes_per_slice: u64,
    },
}

/// Where a vCPU's writes land within its working set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WritePattern {
    /// Every page of the working set equally likely.
    Uniform,
    /// A hot part of the set takes most writes.
    HotCold {
        /// Fraction of the working set that is hot (0.1 for 90/10).
        hot_set_fraction: f64,
        /// Fraction of writes that go to the hot part (0.9 for 90/10).
        hot_write_fraction: f64,
    },
}

impl WritePattern {
    /// The 90/10 hot/cold pattern.
    pub const HOT_COLD_90_10: WritePattern = WritePattern::HotCold {
        hot_set_fraction: 0.1,
        hot_write_fraction: 0.9,
    };
}

/// One vCPU's workload.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VcpuWorkload {
    /// Share of the CPU the vCPU wants (1.0 = always runnable); what throttling can take away.
    pub busy_fraction: f64,
    /// Page writes per second at full CPU share, in bytes (pages/s × page size).
    pub write_bytes_per_sec: f64,
    /// Bytes of memory the writes land on.
    pub working_set_bytes: u64,
    /// How writes scale with CPU share.
    pub scaling: CpuScaling,
    /// How writes spread over the working set.
    pub pattern: WritePattern,
}

/// Fraction `1 − e^(−x)` without cancellation for small `x`.
fn saturation(x: f64) -> f64 {
    if x.is_nan() || x <= 0.0 {
        0.0
    } else {
        -(-x).exp_m1()
    }
}

impl VcpuWorkload {
    /// A vCPU that neither computes nor writes.
    pub const IDLE: VcpuWorkload = VcpuWorkload {
        busy_fraction: 0.0,
        write_bytes_per_sec: 0.0,
        working_set_bytes: 0,
        scaling: CpuScaling::Linear,
        pattern: WritePattern::Uniform,
    };

    /// A vCPU that computes (`busy_fraction` of the CPU) without writing memory.
    pub fn compute(busy_fraction: f64) -> VcpuWorkload {
        VcpuWorkload {
            busy_fraction,
            ..VcpuWorkload::IDLE
        }
    }

    /// Write rate (bytes/s of pages written) at throttle fraction `throttle`.
    pub fn write_rate(&self, throttle: f64) -> f64 {
        let p = if throttle.is_nan() {
            0.0
        } else {
            throttle.clamp(0.0, 1.0)
        };
        if p >= 1.0 {
            return 0.0;
        }
        let rate = self.write_bytes_per_sec.max(0.0);
        match self.scaling {
            CpuScaling::Linear => rate * (1.0 - p),
            CpuScaling::Burst { bytes_per_slice } => {
                let slices = if p == 0.0 {
                    DutyCycle::UNTHROTTLED.slices_per_sec()
                } else {
                    DutyCycle::with_default_period(p).slices_per_sec()
                };
                bytes_per_slice as f64 * slices
            }
        }
    }

    /// Distinct bytes dirtied after `written` bytes of page writes since the dirty log was
    /// harvested.
    pub fn distinct_bytes(&self, written: f64) -> f64 {
        let ws = self.working_set_bytes as f64;
        if ws <= 0.0 || written.is_nan() || written <= 0.0 {
            return 0.0;
        }
        match self.pattern {
            WritePattern::Uniform => ws * saturation(written / ws),
            WritePattern::HotCold {
                hot_set_fraction,
                hot_write_fraction,
            } => {
                let h = hot_set_fraction.clamp(0.0, 1.0);
                let w = hot_write_fraction.clamp(0.0, 1.0);
                let hot = ws * h;
                let cold = ws - hot;
                let part = |size: f64, writes: f64| {
                    if size > 0.0 {
                        size * saturation(writes / size)
                    } else {
                        0.0
                    }
                };
                part(hot, written * w) + part(cold, written * (1.0 - w))
            }
        }
    }
}

/// A guest to migrate.
#[derive(Clone, Debug, PartialEq)]
pub struct GuestModel {
    /// Guest memory, bytes.
    pub memory_bytes: u64,
    /// Page size, bytes.
    pub page_size: u64,
    /// Fraction of memory that is zero pages at the start (sent as a header only in round 0).
    pub zero_fraction: f64,
    /// One workload per vCPU.
    pub vcpus: Vec<VcpuWorkload>,
    /// Time to send vCPU and device state and resume on the destination at switchover.
    pub state_transfer: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn vcpu(scaling: CpuScaling, pattern: WritePattern) -> VcpuWorkload {
        VcpuWorkload {
            busy_fraction: 1.0,
            write_bytes_per_sec: 1e9,
            working_set_bytes: GIB,
            scaling,
            pattern,
        }
    }

    #[test]
    fn linear_scales_with_share() {
        let v = vcpu(CpuScaling::Linear, WritePattern::Uniform);
        assert_eq!(v.write_rate(0.0), 1e9);
        assert!((v.write_rate(0.75) - 2.5e8).abs() < 1.0);
        assert_eq!(v.write_rate(1.0), 0.0);
        assert_eq!(v.write_rate(f64::NAN), 1e9);
    }

    #[test]
    fn burst_follows_the_slice_rate() {
        let v = vcpu(
            CpuScaling::Burst {
                bytes_per_slice: 1 << 20,
            },
            WritePattern::Uniform,
        );
        let full = v.write_rate(0.0);
        assert!((full - 100.0 * (1 << 20) as f64).abs() < 1.0);
        // With 10 ms minimum slices the period stretches as soon as the
        // vCPU is throttled: a burst writer loses a slice's worth per period.
        assert!((v.write_rate(0.5) - full / 2.0).abs() < 1.0);
        assert!((v.write_rate(0.9) - full / 10.0).abs() < 1.0);
        assert!((v.write_rate(0.99) - full / 100.0).abs() < 1.0);
    }

    #[test]
    fn uniform_saturates_at_the_working_set() {
        let v = vcpu(CpuScaling::Linear, WritePattern::Uniform);
        let ws = GIB as f64;
        assert!(
            (v.distinct_bytes(1.0) - 1.0).abs() < 1e-6,
            "first writes are all distinct"
        );
        assert!((v.distinct_bytes(ws) - ws * (1.0 - (-1.0f64).exp())).abs() < 1.0);
        assert!(v.distinct_bytes(100.0 * ws) <= ws);
        assert_eq!(v.distinct_bytes(-5.0), 0.0);
    }

    #[test]
    fn hot_cold_fills_the_hot_tenth_first() {
        let v = vcpu(CpuScaling::Linear, WritePattern::HOT_COLD_90_10);
        let ws = GIB as f64;
        let d = v.distinct_bytes(ws);
        // The hot tenth is saturated, the cold rest barely touched.
        assert!(d > 0.1 * ws * 0.99 && d < 0.3 * ws, "{d}");
        assert!(v.distinct_bytes(1000.0 * ws) <= ws);
        let uniform = vcpu(CpuScaling::Linear, WritePattern::Uniform);
        assert!(d < uniform.distinct_bytes(ws));
    }
}

//! The standard workloads `tern-sim` tabulates, scaled to a guest size.
//!
//! vCPUs scale with memory (one per 4 GiB, 2..=64): 16 for 64 GiB, 64 for 256 GiB and 1 TiB.
//! 30 % of memory starts as zero pages. Switchover state takes 10 ms plus 0.2 ms per vCPU.

use std::time::Duration;

use super::guest::{CpuScaling, GuestModel, VcpuWorkload, WritePattern};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A named workload shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Every vCPU mostly idle, a trickle of writes.
    Idle,
    /// Half the vCPUs serve requests (hot/cold 90/10 writes), half do light work.
    Web,
    /// Two vCPUs stream writes over 8 GiB each; every other vCPU computes without writing
    /// (what QEMU's dirty-limit paper measured with `dhry2reg`).
    Analytics,
    /// `stress -m 4 --vm-bytes 256M`: four vCPUs rewriting 256 MiB each at memory speed.
    MemStress,
    /// QEMU's report: one vCPU touching 600 MB per 50 ms of CPU (12 GB/s) over 4 GiB.
    Qemu600,
    /// Two vCPUs rewriting 1 GiB per CPU slice, whatever the slice length.
    Burst,
}

impl Workload {
    /// All workloads, in table order.
    pub const ALL: [Workload; 6] = [
        Workload::Idle,
        Workload::Web,
        Workload::Analytics,
        Workload::MemStress,
        Workload::Qemu600,
        Workload::Burst,
    ];

    /// Short name.
    pub fn name(&self) -> &'static str {
        match self {
            Workload::Idle => "idle",
            Workload::Web => "web",
            Workload::Analytics => "analytics",
            Workload::MemStress => "memstress",
            Workload::Qemu600 => "qemu-600mb",
            Workload::Burst => "burst",
        }
    }

    /// One line for humans.
    pub fn description(&self) -> &'static str {
        match self {
            Workload::Idle => "all vCPUs 5 % busy, 1 MB/s of writes each over 64 MiB",
            Workload::Web => "half the vCPUs 60 % busy writing 300 MB/s hot/cold 90/10 over 2 GiB each; the rest 30 % busy, 20 MB/s over 512 MiB",
            Workload::Analytics => "2 vCPUs writing 1.5 GB/s over 8 GiB each; all others 100 % busy computing without writes",
            Workload::MemStress => "4 vCPUs writing 4 GB/s over 256 MiB each (stress -m 4 --vm-bytes 256M); others idle",
            Workload::Qemu600 => "1 vCPU writing 12 GB/s of CPU time (600 MB per 50 ms) over 4 GiB; others idle",
            Workload::Burst => "2 vCPUs 20 % busy rewriting 1 GiB per CPU slice; others 50 % busy computing",
        }
    }

    /// The guest of `memory_bytes` running this workload.
    pub fn guest(&self, memory_bytes: u64) -> GuestModel {
        let n = vcpus_for(memory_bytes);
        let vcpus = (0..n).map(|i| self.vcpu(i, n)).collect();
        GuestModel {
            memory_bytes,
            page_size: 4096,
            zero_fraction: 0.3,
            vcpus,
            state_transfer: Duration::from_micros(10_000 + 200 * n as u64),
        }
    }

    fn vcpu(&self, i: usize, n: usize) -> VcpuWorkload {
        let linear = |busy: f64, rate: f64, ws: u64, pattern: WritePattern| VcpuWorkload {
            busy_fraction: busy,
            write_bytes_per_sec: rate,
            working_set_bytes: ws,
            scaling: CpuScaling::Linear,
            pattern,
        };
        match self {
            Workload::Idle => linear(0.05, 1e6, 64 * MIB, WritePattern::Uniform),
            Workload::Web if i < n / 2 => linear(0.6, 300e6, 2 * GIB, WritePattern::HOT_COLD_90_10),
            Workload::Web => linear(0.3, 20e6, 512 * MIB, WritePattern::Uniform),
            Workload::Analytics if i < 2 => linear(1.0, 1.5e9, 8 * GIB, WritePattern::Uniform),
            Workload::Analytics => VcpuWorkload::compute(1.0),
            Workload::MemStress if i < 4 => linear(1.0, 4e9, 256 * MIB, WritePattern::Uniform),
            Workload::MemStress => VcpuWorkload::compute(0.02),
            Workload::Qemu600 if i == 0 => linear(1.0, 12e9, 4 * GIB, WritePattern::Uniform),
            Workload::Qemu600 => VcpuWorkload::compute(0.02),
            Workload::Burst if i < 2 => VcpuWorkload {
                busy_fraction: 0.2,
                write_bytes_per_sec: 0.0,
                working_set_bytes: GIB,
                scaling: CpuScaling::Burst {
                    bytes_per_slice: GIB,
                },
                pattern: WritePattern::Uniform,
            },
            Workload::Burst => VcpuWorkload::compute(0.5),
        }
    }
}

/// vCPUs for a guest of `memory_bytes`: one per 4 GiB, between 2 and 64.
pub fn vcpus_for(memory_bytes: u64) -> usize {
    ((memory_bytes / (4 * GIB)) as usize).clamp(2, 64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guests_scale_with_memory() {
        assert_eq!(vcpus_for(64 * GIB), 16);
        assert_eq!(vcpus_for(1024 * GIB), 64);
        assert_eq!(vcpus_for(GIB), 2);
        for w in Workload::ALL {
            let g = w.guest(64 * GIB);
            assert_eq!(g.vcpus.len(), 16);
            assert!(!w.name().is_empty() && !w.description().is_empty());
        }
    }
}

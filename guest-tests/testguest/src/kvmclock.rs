//! kvmclock: a per-vCPU `pvclock_vcpu_time_info` that KVM keeps up to date,
//! registered with MSR_KVM_SYSTEM_TIME_NEW when CPUID offers it. Reading it
//! is plain memory plus `rdtsc`, so it is cheap from ring 3.

use core::cell::UnsafeCell;
use core::sync::atomic::{fence, Ordering::Acquire};

use tern_workloads::clock::Pvclock;

use crate::boot::{service, MAX_CPUS};
use crate::cpu::{cpuid, rdtsc};

const KVM_CPUID_SIGNATURE: u32 = 0x4000_0000;
const KVM_CPUID_FEATURES: u32 = 0x4000_0001;
const KVM_FEATURE_CLOCKSOURCE2: u32 = 1 << 3;

/// One vCPU's area: `u32 version, u32 pad, u64 tsc_timestamp, u64
/// system_time, u32 tsc_to_system_mul, i8 tsc_shift, u8 flags, u8 pad[2]`.
/// 32-byte aligned, so it never crosses a page.
#[repr(C, align(32))]
struct Area(UnsafeCell<[u8; 32]>);

// SAFETY: each area is written by KVM for one vCPU and only read (volatile,
// under the version protocol) by the guest.
unsafe impl Sync for Area {}

static AREAS: [Area; MAX_CPUS] = [const { Area(UnsafeCell::new([0; 32])) }; MAX_CPUS];

/// Whether the hypervisor is KVM and offers the kvmclock MSRs.
pub fn available() -> bool {
    let sig = cpuid(KVM_CPUID_SIGNATURE);
    let name = [sig.ebx, sig.ecx, sig.edx];
    let kvm = *b"KVMKVMKVM\0\0\0";
    let expected =
        [0, 4, 8].map(|i| u32::from_le_bytes([kvm[i], kvm[i + 1], kvm[i + 2], kvm[i + 3]]));
    if name != expected || sig.eax < KVM_CPUID_FEATURES {
        return false;
    }
    cpuid(KVM_CPUID_FEATURES).eax & KVM_FEATURE_CLOCKSOURCE2 != 0
}

/// Registers `cpu`'s area; must run on that CPU.
pub fn enable(cpu: usize) {
    service::enable_kvmclock(AREAS[cpu].0.get() as u64);
}

fn read_field<const N: usize>(base: *const u8, offset: usize) -> [u8; N] {
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        // SAFETY: offset + N <= 32 for every caller; volatile because KVM
        // writes the area behind the compiler's back.
        *b = unsafe { base.add(offset + i).read_volatile() };
    }
    out
}

/// A consistent snapshot of `cpu`'s area and the TSC, or `None` if KVM has
/// not filled it in (yet).
pub fn read(cpu: usize) -> Option<(Pvclock, u64)> {
    let base = AREAS.get(cpu)?.0.get() as *const u8;
    loop {
        let version = u32::from_le_bytes(read_field(base, 0));
        if version == 0 {
            return None;
        }
        if version & 1 != 0 {
            continue; // KVM is mid-update
        }
        fence(Acquire);
        let clock = Pvclock {
            tsc_timestamp: u64::from_le_bytes(read_field(base, 8)),
            system_time: u64::from_le_bytes(read_field(base, 16)),
            tsc_to_system_mul: u32::from_le_bytes(read_field(base, 24)),
            tsc_shift: i8::from_le_bytes(read_field(base, 28)),
        };
        let tsc = rdtsc();
        fence(Acquire);
        if u32::from_le_bytes(read_field(base, 0)) == version {
            return Some((clock, tsc));
        }
    }
}

/// kvmclock now, in ns, as seen on `cpu` (call it on that CPU).
pub fn now_ns(cpu: usize) -> Option<u64> {
    read(cpu).map(|(clock, tsc)| clock.ns_at(tsc))
}

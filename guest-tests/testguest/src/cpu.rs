//! Unprivileged CPU instructions the guest uses from ring 3.

use core::arch::x86_64::{__cpuid, _rdtsc, CpuidResult};

pub fn cpuid(leaf: u32) -> CpuidResult {
    __cpuid(leaf)
}

pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no side effects (CR4.TSD is clear, so ring 3 may use it).
    unsafe { _rdtsc() }
}

/// This CPU's initial APIC ID.
pub fn apic_id() -> u8 {
    (cpuid(1).ebx >> 24) as u8
}

/// Busy-waits until the TSC reaches `deadline`.
pub fn spin_until(deadline: u64) {
    while rdtsc() < deadline {
        core::hint::spin_loop();
    }
}

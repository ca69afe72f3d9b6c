//! CPU facts and instructions the guest uses from ring 3.

use core::arch::x86_64::{_rdtsc, CpuidResult};

use crate::boot::service;

/// The guest's CPUID (through ring 0; see [`service::cpuid`]).
pub fn cpuid(leaf: u32) -> CpuidResult {
    service::cpuid(leaf)
}

pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no side effects (CR4.TSD is clear, so ring 3 may use it).
    unsafe { _rdtsc() }
}

/// This CPU's local APIC ID, from the (xAPIC) ID register: cheap, and
/// unlike ring-3 cpuid on kvm_pvm, the guest's own.
pub fn apic_id() -> u8 {
    const LAPIC_ID: u64 = 0xfee0_0020;
    // SAFETY: the local APIC page is identity mapped and user accessible;
    // reading its ID register has no side effects.
    (unsafe { (LAPIC_ID as *const u32).read_volatile() } >> 24) as u8
}

/// Busy-waits until the TSC reaches `deadline`.
pub fn spin_until(deadline: u64) {
    while rdtsc() < deadline {
        core::hint::spin_loop();
    }
}

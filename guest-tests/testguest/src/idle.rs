//! Halting a CPU until a TSC deadline (`tern.idle=halt`): the local APIC
//! timer, in TSC-deadline mode, ends a `hlt` in the idle service (boot/
//! traps.s `idle_until`). A halted vCPU leaves the host's CPU to others,
//! which on a host with few cores is what an idle guest should do; the
//! stall meter still sees a pause of the VM as a late wake.
//!
//! Ring 3 enables the APIC and sets the timer's mode once per CPU through
//! the identity-mapped xAPIC page; ring 0 only writes the deadline MSR and
//! halts. The deadline MSR and the APIC state are part of the vCPU state a
//! migration carries, so a CPU halted at the switchover wakes on the
//! destination.

use core::sync::atomic::{AtomicBool, Ordering::Relaxed};

use crate::boot::{service, MAX_CPUS, SPURIOUS_VECTOR, TIMER_VECTOR};
use crate::cpu;

const LAPIC_SVR: u64 = 0xfee0_00f0;
const LAPIC_LVT_TIMER: u64 = 0xfee0_0320;
const SVR_APIC_ENABLED: u32 = 1 << 8;
const LVT_TIMER_TSC_DEADLINE: u32 = 0b10 << 17;
const CPUID1_ECX_TSC_DEADLINE: u32 = 1 << 24;

/// Per CPU: its timer is set up.
static TIMER_READY: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

/// Whether the (virtual) CPU has a TSC-deadline timer.
pub fn available() -> bool {
    cpu::cpuid(1).ecx & CPUID1_ECX_TSC_DEADLINE != 0
}

/// Halts CPU `cpu` (the caller) until the TSC reaches `deadline` or an
/// interrupt comes first. Call only where [`available`] said yes.
pub fn halt_until(cpu: usize, deadline: u64) {
    let Some(ready) = TIMER_READY.get(cpu) else {
        cpu::spin_until(deadline);
        return;
    };
    if !ready.load(Relaxed) {
        lapic_write(LAPIC_SVR, SVR_APIC_ENABLED | u32::from(SPURIOUS_VECTOR));
        lapic_write(
            LAPIC_LVT_TIMER,
            LVT_TIMER_TSC_DEADLINE | u32::from(TIMER_VECTOR),
        );
        ready.store(true, Relaxed);
    }
    // A zero deadline would disarm the timer and halt for good.
    service::idle_until(deadline.max(1));
}

fn lapic_write(reg: u64, value: u32) {
    // SAFETY: the xAPIC registers are identity mapped and user accessible;
    // these writes enable this CPU's APIC and set its timer's vector and
    // mode, nothing else.
    unsafe { (reg as *mut u32).write_volatile(value) }
}

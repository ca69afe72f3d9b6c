//! The test guest as a [`Platform`] for the shared workload loop.

use tern_workloads::platform::Platform;

use crate::boot::service;
use crate::cpu::{self, rdtsc};
use crate::{console, idle, kvmclock};

pub struct GuestPlatform {
    pub tsc_hz: u64,
    pub boot_tsc: u64,
    /// Whether every CPU registered a kvmclock area.
    pub kvmclock: bool,
    /// Whether CPUs can halt until a deadline (a TSC-deadline APIC timer).
    pub halt_timer: bool,
}

impl Platform for GuestPlatform {
    fn tsc(&self) -> u64 {
        rdtsc()
    }

    fn tsc_hz(&self) -> u64 {
        self.tsc_hz
    }

    fn boot_tsc(&self) -> u64 {
        self.boot_tsc
    }

    fn clock_ns(&self, cpu: usize) -> Option<u64> {
        self.kvmclock.then(|| kvmclock::now_ns(cpu)).flatten()
    }

    fn write_line(&self, line: &str) {
        console::write_line(line);
    }

    fn read_input(&self, buf: &mut [u8]) -> usize {
        console::read_input(buf)
    }

    fn reboot(&self) -> ! {
        reboot(self.tsc_hz)
    }

    fn idle_until(&self, cpu: usize, deadline: u64) {
        if self.halt_timer {
            idle::halt_until(cpu, deadline);
        } else {
            cpu::spin_until(deadline);
        }
    }

    fn fault(&self) {
        // Just past the identity map (512 GiB): not present, so a page fault.
        const UNMAPPED: u64 = 512 << 30;
        // SAFETY: the read faults before it returns anything; the exception
        // path reports it and stops this CPU.
        unsafe { core::ptr::read_volatile(UNMAPPED as *const u64) };
    }
}

/// i8042 reset (0xfe to port 0x64): tern and most PC VMMs end or reset the
/// VM on it. QEMU microvm has no i8042, so after 100 ms a triple fault
/// follows.
pub fn reboot(tsc_hz: u64) -> ! {
    service::port_write(0x64, 0xfe);
    cpu::spin_until(rdtsc() + tsc_hz.max(1_000_000_000) / 10);
    service::triple_fault()
}

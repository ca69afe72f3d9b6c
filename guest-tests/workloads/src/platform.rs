//! What a workload needs from where it runs: the ring-3 test guest (TSC,
//! kvmclock, 16550 through service calls) or a Linux process (TSC,
//! CLOCK_MONOTONIC, stdout/stdin).

use crate::clock::{read_pair, ClockPair};

pub trait Platform: Sync {
    /// The cycle counter all loop timing uses (the TSC).
    fn tsc(&self) -> u64;
    /// Its frequency.
    fn tsc_hz(&self) -> u64;
    /// TSC value when the guest (or program) started.
    fn boot_tsc(&self) -> u64;
    /// The second clock for continuity checks, read on `cpu`, in ns.
    fn clock_ns(&self, cpu: usize) -> Option<u64>;
    /// The TSC and the second clock at one instant ([`read_pair`]); None
    /// without a second clock.
    fn clock_pair(&self, cpu: usize) -> Option<ClockPair> {
        read_pair(|| self.tsc(), || self.clock_ns(cpu), self.tsc_hz())
    }
    /// Writes one whole line (ending in `\n`) without interleaving with the
    /// other CPUs' lines.
    fn write_line(&self, line: &str);
    /// Copies input bytes that are already waiting into `buf`; never blocks.
    fn read_input(&self, buf: &mut [u8]) -> usize;
    /// Resets the VM (or ends the program).
    fn reboot(&self) -> !;
    /// Waits on `cpu` until about `deadline` (TSC) without using the host's
    /// CPU where the platform can (the test guest halts until its local APIC
    /// timer fires); it may return early, or late if the CPU was not run.
    /// By default it spins.
    fn idle_until(&self, cpu: usize, deadline: u64) {
        let _ = cpu;
        while self.tsc() < deadline {
            core::hint::spin_loop();
        }
    }
    /// Takes a CPU exception on purpose (the `fault` command); returns only
    /// where that is not possible.
    fn fault(&self);
}

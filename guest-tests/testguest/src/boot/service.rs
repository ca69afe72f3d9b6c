//! Service calls: the few privileged operations ring 3 asks ring 0 for.
//!
//! A call is a `ud2` with [`SERVICE_MAGIC`] in `%r11`; the #UD handler
//! (traps.s `invalid_opcode`) performs it and returns past the `ud2`.
//! (kvm_pvm raises #UD for `int n` from ring 3 and breaks `syscall`, but
//! delivers exceptions faithfully.) Each call costs one exception round trip
//! and a handful of emulated ring-0 instructions.

use core::arch::asm;

pub const PORT_WRITE_BYTES: u32 = 1;
pub const PORT_READ: u32 = 2;
pub const PORT_WRITE: u32 = 3;
pub const CPUID: u32 = 4;
pub const ENABLE_KVMCLOCK: u32 = 5;
pub const HALT: u32 = 6;
pub const TRIPLE_FAULT: u32 = 7;
pub const IDLE_UNTIL: u32 = 8;
/// Marks a `ud2` as a service call rather than a fault.
pub const SERVICE_MAGIC: u64 = 0x7465_726e_5356_4321;

fn call(service: u32, a0: u64, a1: u64, a2: u64) -> u32 {
    let result: u32;
    // SAFETY: the #UD handler recognises the magic, runs on this CPU's IST
    // stack (not ours), touches only the registers declared clobbered here,
    // reads only memory we pass it and writes only the buffer of `cpuid`,
    // and iretq's past the ud2.
    unsafe {
        asm!(
            "ud2",
            in("r11") SERVICE_MAGIC,
            inout("eax") service => result,
            in("rdi") a0,
            inout("rsi") a1 => _,
            inout("rdx") a2 => _,
            lateout("ecx") _,
            lateout("r8") _,
            options(nostack),
        );
    }
    result
}

/// Writes `bytes` to I/O port `port` with one `rep outsb`.
pub fn port_write_bytes(port: u16, bytes: &[u8]) {
    call(
        PORT_WRITE_BYTES,
        port.into(),
        bytes.as_ptr() as u64,
        bytes.len() as u64,
    );
}

/// Reads one byte from I/O port `port`.
pub fn port_read(port: u16) -> u8 {
    call(PORT_READ, port.into(), 0, 0) as u8
}

/// Writes one byte to I/O port `port`.
pub fn port_write(port: u16, value: u8) {
    call(PORT_WRITE, port.into(), value.into(), 0);
}

/// `cpuid` as the hypervisor defines it for this guest (executed in ring 0:
/// on kvm_pvm, ring 3 would see the host CPU's values).
pub fn cpuid(leaf: u32) -> core::arch::x86_64::CpuidResult {
    let mut regs = [0u32; 4];
    call(CPUID, leaf.into(), 0, regs.as_mut_ptr() as u64);
    core::arch::x86_64::CpuidResult {
        eax: regs[0],
        ebx: regs[1],
        ecx: regs[2],
        edx: regs[3],
    }
}

/// Registers this CPU's kvmclock area at `paddr` (32-byte aligned, identity
/// mapped) with MSR_KVM_SYSTEM_TIME_NEW.
pub fn enable_kvmclock(paddr: u64) {
    call(ENABLE_KVMCLOCK, paddr | 1, 0, 0);
}

/// Arms this CPU's TSC-deadline timer for `deadline` (non-zero) and halts
/// until an interrupt; see [`crate::idle`].
pub fn idle_until(deadline: u64) {
    call(IDLE_UNTIL, deadline, 0, 0);
}

/// Stops this CPU for good (cli; hlt).
pub fn halt() -> ! {
    call(HALT, 0, 0, 0);
    unreachable_halt()
}

/// Resets the VM through a triple fault.
pub fn triple_fault() -> ! {
    call(TRIPLE_FAULT, 0, 0, 0);
    unreachable_halt()
}

/// The services above do not return; if ring 0 ever did, spin rather than
/// run off the end.
fn unreachable_halt() -> ! {
    loop {
        core::hint::spin_loop();
    }
}

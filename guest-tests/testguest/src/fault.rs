//! Reporting CPU exceptions and panics. traps.s hands every exception to
//! [`fault_reporter`] in ring 3 on the faulting CPU's IST stack; it prints
//! an `error` event and stops that CPU. The other CPUs carry on (the
//! controller notices a worker that no longer pauses).

use tern_workloads::event::{self, ErrorEvent, ErrorKind, Fault};
use tern_workloads::line::LineBuf;
use tern_workloads::run::MAX_LINE;

use crate::boot::service;
use crate::{console, smp};

/// What fault_common (traps.s) saved: CR2, the vector, the error code (0
/// when the CPU pushes none), then the CPU's own exception frame.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FaultRecord {
    cr2: u64,
    vector: u64,
    error_code: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

const VECTOR_NAMES: [&str; 22] = [
    "divide error",
    "debug",
    "NMI",
    "breakpoint",
    "overflow",
    "BOUND range exceeded",
    "invalid opcode",
    "device not available",
    "double fault",
    "coprocessor segment overrun",
    "invalid TSS",
    "segment not present",
    "stack-segment fault",
    "general protection",
    "page fault",
    "reserved",
    "x87 floating-point error",
    "alignment check",
    "machine check",
    "SIMD floating-point error",
    "virtualization exception",
    "control protection",
];

fn print(event: &ErrorEvent<'_>) {
    let mut line = LineBuf::<MAX_LINE>::new();
    if event::write_line(&mut line, event).is_ok() {
        console::write_line_after_fault(line.as_str());
    }
}

/// Ring-3 entry from traps.s `fault_common`.
pub extern "C" fn fault_reporter(record: *const FaultRecord) -> ! {
    // SAFETY: traps.s passes the record it built at the top of this CPU's
    // IST stack. Copy it first: the next service call (a #UD on the same
    // stack) overwrites it.
    let r = unsafe { record.read_volatile() };
    let name = VECTOR_NAMES
        .get(r.vector as usize)
        .copied()
        .unwrap_or("reserved");
    let fault = Fault {
        cpu: smp::current_cpu().map_or(u32::MAX, |c| c as u32),
        vector: r.vector as u8,
        error_code: r.error_code,
        rip: r.rip,
        cs: r.cs,
        rsp: r.rsp,
        cr2: r.cr2,
    };
    let ring = r.cs & 3;
    let message = format_args!("{name} in ring {ring}; this CPU has stopped");
    print(&ErrorEvent {
        kind: ErrorKind::Exception,
        message: &message,
        fault: Some(fault),
    });
    service::halt()
}

/// A Rust panic: report it and stop this CPU.
pub fn panicked(info: &core::panic::PanicInfo<'_>) -> ! {
    let cpu = smp::current_cpu().map_or(u32::MAX, |c| c as u32);
    let message = format_args!("CPU {cpu}: {info}");
    print(&ErrorEvent {
        kind: ErrorKind::Panic,
        message: &message,
        fault: None,
    });
    service::halt()
}

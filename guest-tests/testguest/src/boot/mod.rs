//! The ring-0 part of the test guest (assembly) and the constants it shares
//! with the ring-3 Rust code.
//!
//! Boot: `tern_pvh_entry32` (PVH, 32-bit, paging off) → long mode on a static
//! identity map → `iretq` to [`crate::bsp_main`] in ring 3 with IOPL 3 and
//! interrupts off. APs take the same path from a real-mode trampoline to
//! [`crate::smp::ap_main`]. After that, ring 0 runs only for exceptions (to
//! hand a [`crate::fault::FaultRecord`] to the ring-3 reporter) and for the
//! services in [`service`].

use core::arch::global_asm;

pub mod service;

/// GDT selectors (see data.s).
pub const KERNEL_CS64: u16 = 0x08;
pub const KERNEL_DS: u16 = 0x10;
pub const USER_DS: u16 = 0x18 | 3;
pub const USER_CS: u16 = 0x20 | 3;
pub const KERNEL_CS32: u16 = 0x28;
/// Selector of CPU 0's TSS descriptor; CPU n's is 16 bytes further per n.
pub const TSS0_SELECTOR: u16 = 0x30;

/// Most CPUs the guest brings up (GDT TSS slots, per-CPU tables).
pub const MAX_CPUS: usize = 64;

/// Per-CPU stacks. IST1 serves every exception, including the service call
/// (a `ud2`) and then the ring-3 fault reporter; RSP0 is required by the TSS
/// but unused; the user stack holds all the Rust code.
pub const RSP0_SIZE: usize = 4096;
pub const IST_SIZE: usize = 16384;
pub const USER_STACK_SIZE: usize = 256 * 1024;

const CR4_PAE: u32 = 1 << 5;
const CR4_OSFXSR: u32 = 1 << 9;
const CR4_OSXMMEXCPT: u32 = 1 << 10;
const CR0_PE: u32 = 1 << 0;
const CR0_MP: u32 = 1 << 1;
const CR0_EM: u32 = 1 << 2;
const CR0_TS: u32 = 1 << 3;
const CR0_NE: u32 = 1 << 5;
const CR0_WP: u32 = 1 << 16;
const CR0_NW: u32 = 1 << 29;
const CR0_CD: u32 = 1 << 30;
const CR0_PG: u32 = 1 << 31;
/// RFLAGS in ring 3: IOPL 3, interrupts disabled (bit 1 is always set).
const RFLAGS_RING3: u64 = (3 << 12) | (1 << 1);
/// Present 64-bit available TSS, limit 103 (no I/O bitmap).
pub const TSS_DESCRIPTOR_TYPE_LIMIT: u64 = (0x89 << 40) | 103;
/// Gate bits 32-47: present interrupt gate (type 0xE), DPL 0, IST 1.
const GATE_EXCEPTION: u32 = (0x8e << 8) | 1;
/// Gate bits 32-47: present interrupt gate, DPL 0, no IST (the current stack).
const GATE_INTERRUPT: u32 = 0x8e << 8;
const STUB_SIZE: usize = 16;
/// IDT entries: the 32 exceptions and the idle service's two interrupts.
const IDT_VECTORS: usize = 48;
/// The local APIC timer's vector (idle.rs programs it).
pub const TIMER_VECTOR: u8 = 32;
/// The local APIC's spurious-interrupt vector.
pub const SPURIOUS_VECTOR: u8 = 47;
const _: () =
    assert!((SPURIOUS_VECTOR as usize) < IDT_VECTORS && (TIMER_VECTOR as usize) < IDT_VECTORS);
/// xAPIC end-of-interrupt register (identity mapped).
const LAPIC_EOI: u32 = 0xfee0_00b0;
const MSR_TSC_DEADLINE: u32 = 0x6e0;
/// Page-table entry flags: present, writable, user.
pub const PT_TABLE: u64 = 0x7;
/// PD entry flags for a 2 MiB page: present, writable, user, large.
pub const PT_LARGE_PAGE: u64 = 0x87;
const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;

global_asm!(
    include_str!("entry.s"),
    include_str!("traps.s"),
    include_str!("trampoline.s"),
    include_str!("data.s"),
    KERNEL_CS64 = const KERNEL_CS64,
    KERNEL_DS = const KERNEL_DS,
    USER_DS = const USER_DS,
    USER_CS = const USER_CS,
    KERNEL_CS32 = const KERNEL_CS32,
    TSS0_SELECTOR = const TSS0_SELECTOR,
    MAX_CPUS = const MAX_CPUS,
    RSP0_SIZE = const RSP0_SIZE,
    IST_SIZE = const IST_SIZE,
    USER_STACK_SIZE = const USER_STACK_SIZE,
    CR4_SET = const CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT,
    CR0_CLEAR = const !(CR0_EM | CR0_TS | CR0_NW | CR0_CD),
    CR0_SET = const CR0_PE | CR0_MP | CR0_NE | CR0_WP | CR0_PG,
    RFLAGS_RING3 = const RFLAGS_RING3,
    TSS_DESCRIPTOR_TYPE_LIMIT = const TSS_DESCRIPTOR_TYPE_LIMIT,
    GATE_EXCEPTION = const GATE_EXCEPTION,
    GATE_INTERRUPT = const GATE_INTERRUPT,
    IDT_VECTORS = const IDT_VECTORS,
    TIMER_VECTOR = const TIMER_VECTOR,
    SPURIOUS_VECTOR = const SPURIOUS_VECTOR,
    LAPIC_EOI = const LAPIC_EOI,
    MSR_TSC_DEADLINE = const MSR_TSC_DEADLINE,
    SERVICE_MAGIC = const service::SERVICE_MAGIC,
    STUB_SIZE = const STUB_SIZE,
    PT_TABLE = const PT_TABLE,
    PT_LARGE_PAGE = const PT_LARGE_PAGE,
    MSR_KVM_SYSTEM_TIME_NEW = const MSR_KVM_SYSTEM_TIME_NEW,
    SERVICE_PORT_WRITE_BYTES = const service::PORT_WRITE_BYTES,
    SERVICE_PORT_READ = const service::PORT_READ,
    SERVICE_PORT_WRITE = const service::PORT_WRITE,
    SERVICE_CPUID = const service::CPUID,
    SERVICE_ENABLE_KVMCLOCK = const service::ENABLE_KVMCLOCK,
    SERVICE_HALT = const service::HALT,
    SERVICE_IDLE_UNTIL = const service::IDLE_UNTIL,
    SERVICE_TRIPLE_FAULT = const service::TRIPLE_FAULT,
    bsp_main = sym crate::bsp_main,
    fault_reporter = sym crate::fault::fault_reporter,
    options(att_syntax)
);

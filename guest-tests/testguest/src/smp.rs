//! Finding and starting the other CPUs.
//!
//! The CPU count comes from the MP table (the same table Linux uses without
//! ACPI; tern and QEMU microvm both write one). Without an MP table the guest
//! probes: it starts APIC IDs 0, 1, 2, ... (skipping its own) one by one
//! and stops at the first that does not check in within a second.
//!
//! Each AP gets INIT-SIPI-SIPI through the local APIC (xAPIC MMIO, which
//! ring 3 can reach through the user-accessible identity map), runs the
//! real-mode trampoline (trampoline.s) and the shared long-mode path
//! (entry.s) to `ap_main` in ring 3, with the stacks and TSS this module
//! prepared in `tern_ap_boot`. APs start one at a time, so one mailbox does.
//! An AP that checked in waits until the BSP gives it a role.

use core::sync::atomic::{
    AtomicBool, AtomicPtr, AtomicU8,
    Ordering::{Acquire, Relaxed, Release},
};

use tern_workloads::bootdata::mptable::{self, MpCpus};
use tern_workloads::event::CpuSource;

use crate::boot::{
    service, IST_SIZE, MAX_CPUS, RSP0_SIZE, TSS0_SELECTOR, TSS_DESCRIPTOR_TYPE_LIMIT,
    USER_STACK_SIZE,
};
use crate::cpu::{self, rdtsc};
use crate::heap::Heap;
use crate::{kvmclock, phys, GuestRun};

extern "C" {
    static mut tern_ap_boot: [u64; 5];
    static mut tern_gdt_tss: [u64; 2 * MAX_CPUS];
    static tern_ap_trampoline: u8;
    static tern_ap_trampoline_end: u8;
}

/// Where APs start: SIPI vector 0x08 (a page below 1 MiB that no VMM we
/// know of uses once the guest has read its boot data).
const TRAMPOLINE_PADDR: u64 = 0x8000;
const LAPIC: u64 = 0xfee0_0000;
const LAPIC_ICR_LOW: u64 = LAPIC + 0x300;
const LAPIC_ICR_HIGH: u64 = LAPIC + 0x310;
const ICR_PENDING: u32 = 1 << 12;
const ICR_INIT_ASSERT: u32 = 0x4500;
const ICR_STARTUP: u32 = 0x4600;
/// How long an AP gets to check in after its second SIPI.
const CHECK_IN_MS: u64 = 1000;

/// The CPUs to use: APIC IDs, the BSP first.
pub struct Cpus {
    pub apic_ids: [u8; MAX_CPUS],
    pub count: usize,
    pub source: CpuSource,
    /// A problem with the MP table that made the guest probe instead.
    pub mp_error: Option<mptable::MpError>,
}

/// What an AP does once it has checked in.
const ROLE_WAIT: u8 = 0;
const ROLE_HALT: u8 = 1;
const ROLE_WORK: u8 = 2;

struct Slot {
    apic_id: AtomicU8,
    online: AtomicBool,
    role: AtomicU8,
}

static SLOTS: [Slot; MAX_CPUS] = [const {
    Slot {
        apic_id: AtomicU8::new(0xff),
        online: AtomicBool::new(false),
        role: AtomicU8::new(ROLE_WAIT),
    }
}; MAX_CPUS];
static RUN: AtomicPtr<GuestRun> = AtomicPtr::new(core::ptr::null_mut());
static KVMCLOCK: AtomicBool = AtomicBool::new(false);

/// The CPU index of the CPU executing this (for fault reports).
pub fn current_cpu() -> Option<usize> {
    let id = cpu::apic_id();
    SLOTS.iter().position(|s| s.apic_id.load(Relaxed) == id)
}

fn mp_table() -> Result<Option<MpCpus>, mptable::MpError> {
    let ebda = phys::read_u16(0x40e).unwrap_or(0);
    let base_kib = phys::read_u16(0x413).unwrap_or(0);
    for (start, len) in mptable::search_ranges(ebda, base_kib) {
        let mut chunk = [0u8; 1024];
        for at in (start..start + len as u64).step_by(chunk.len()) {
            let n = chunk.len().min((start + len as u64 - at) as usize);
            if phys::read(at, &mut chunk[..n]).is_none() {
                continue;
            }
            let Some((_, table)) = mptable::find_floating_pointer(&chunk[..n]) else {
                continue;
            };
            let mut head = [0u8; 8];
            phys::read(table.into(), &mut head).ok_or(mptable::MpError::Truncated)?;
            let len = mptable::table_length(&head).ok_or(mptable::MpError::BadSignature)?;
            let mut bytes = [0u8; 8192];
            let bytes = bytes.get_mut(..len).ok_or(mptable::MpError::Truncated)?;
            phys::read(table.into(), bytes).ok_or(mptable::MpError::Truncated)?;
            return mptable::parse_table(bytes).map(Some);
        }
    }
    Ok(None)
}

/// The CPUs to bring up: from the MP table, capped at `limit`.
pub fn discover(limit: usize) -> Cpus {
    let bsp = cpu::apic_id();
    let mut cpus = Cpus {
        apic_ids: [0; MAX_CPUS],
        count: 1,
        source: CpuSource::Probe,
        mp_error: None,
    };
    cpus.apic_ids[0] = bsp;
    match mp_table() {
        Ok(Some(mp)) => {
            cpus.source = CpuSource::MpTable;
            for &id in mp
                .ids()
                .iter()
                .filter(|&&id| id != bsp)
                .take(limit.saturating_sub(1))
            {
                cpus.apic_ids[cpus.count] = id;
                cpus.count += 1;
            }
        }
        Ok(None) => {}
        Err(e) => cpus.mp_error = Some(e),
    }
    cpus
}

fn lapic_write(reg: u64, value: u32) {
    // SAFETY: the xAPIC registers are identity mapped (user accessible);
    // writing the ICR sends the IPI we ask for and nothing else.
    unsafe { (reg as *mut u32).write_volatile(value) }
}

fn lapic_read(reg: u64) -> u32 {
    // SAFETY: as lapic_write; reading the ICR has no side effects.
    unsafe { (reg as *const u32).read_volatile() }
}

fn send_ipi(apic_id: u8, command: u32) {
    lapic_write(LAPIC_ICR_HIGH, u32::from(apic_id) << 24);
    lapic_write(LAPIC_ICR_LOW, command);
    while lapic_read(LAPIC_ICR_LOW) & ICR_PENDING != 0 {
        core::hint::spin_loop();
    }
}

fn copy_trampoline() {
    let start = &raw const tern_ap_trampoline;
    let end = &raw const tern_ap_trampoline_end;
    let len = end as usize - start as usize;
    // SAFETY: the trampoline is `len` bytes of our image; TRAMPOLINE_PADDR
    // is identity-mapped low RAM that nothing uses after boot data was read.
    unsafe { core::ptr::copy_nonoverlapping(start, TRAMPOLINE_PADDR as *mut u8, len) };
}

/// Writes CPU `cpu`'s TSS (from the heap) and its GDT descriptor.
fn prepare_tss(cpu: usize, heap: &mut Heap) -> Option<u64> {
    let ist_top = heap.stack(IST_SIZE as u64)?;
    let rsp0_top = heap.stack(RSP0_SIZE as u64)?;
    let tss = heap.zeroed(128)?;
    // SAFETY: `tss` is 128 fresh bytes; the fields are at their x86-64 TSS
    // offsets (RSP0 at 4, IST1 at 36, I/O map base at 102: no bitmap).
    unsafe {
        ((tss + 4) as *mut u64).write_unaligned(rsp0_top);
        ((tss + 36) as *mut u64).write_unaligned(ist_top);
        ((tss + 102) as *mut u16).write_unaligned(104);
    }
    let low = TSS_DESCRIPTOR_TYPE_LIMIT | ((tss & 0xff_ffff) << 16) | (((tss >> 24) & 0xff) << 56);
    let gdt = &raw mut tern_gdt_tss;
    // SAFETY: slot `cpu` of the GDT's TSS area belongs to this CPU, which
    // is not running yet.
    unsafe {
        (*gdt)[2 * cpu] = low;
        (*gdt)[2 * cpu + 1] = tss >> 32;
    }
    Some(rsp0_top)
}

/// Starts one AP as CPU `cpu`; returns whether it checked in.
fn start_one(cpu: usize, apic_id: u8, heap: &mut Heap, tsc_hz: u64) -> bool {
    let (Some(rsp0_top), Some(user_top)) =
        (prepare_tss(cpu, heap), heap.stack(USER_STACK_SIZE as u64))
    else {
        return false;
    };
    let mailbox = [
        rsp0_top,
        user_top - 8,
        ap_main as *const () as u64,
        cpu as u64,
        u64::from(TSS0_SELECTOR) + 16 * cpu as u64,
    ];
    let boot = &raw mut tern_ap_boot;
    // SAFETY: no AP is between its SIPI and its check-in (we start them one
    // at a time), so nobody reads the mailbox while we write it.
    unsafe { (*boot) = mailbox };
    SLOTS[cpu].apic_id.store(apic_id, Relaxed);
    let ms = tsc_hz / 1000;
    send_ipi(apic_id, ICR_INIT_ASSERT);
    cpu::spin_until(rdtsc() + 10 * ms);
    let vector = (TRAMPOLINE_PADDR >> 12) as u32;
    // The second SIPI only matters if the first was lost.
    for wait_ms in [1, CHECK_IN_MS] {
        send_ipi(apic_id, ICR_STARTUP | vector);
        let deadline = rdtsc() + wait_ms * ms;
        while rdtsc() < deadline {
            if SLOTS[cpu].online.load(Acquire) {
                return true;
            }
            core::hint::spin_loop();
        }
    }
    SLOTS[cpu].apic_id.store(0xff, Relaxed);
    false
}

/// Starts the APs of `cpus` (or probes, without an MP table); returns how
/// many CPUs are online, the BSP included. They wait for [`release`].
pub fn start_aps(
    cpus: &mut Cpus,
    limit: usize,
    heap: &mut Heap,
    tsc_hz: u64,
    kvmclock: bool,
) -> usize {
    KVMCLOCK.store(kvmclock, Relaxed);
    SLOTS[0].apic_id.store(cpus.apic_ids[0], Relaxed);
    SLOTS[0].online.store(true, Relaxed);
    copy_trampoline();
    if cpus.source == CpuSource::MpTable {
        let mut online = 1;
        for i in 1..cpus.count {
            if start_one(online, cpus.apic_ids[i], heap, tsc_hz) {
                cpus.apic_ids[online] = cpus.apic_ids[i];
                online += 1;
            }
        }
        cpus.count = online;
    } else {
        let bsp = cpus.apic_ids[0];
        for id in (0..=u8::MAX).filter(|&id| id != bsp) {
            if cpus.count >= limit.min(MAX_CPUS) || !start_one(cpus.count, id, heap, tsc_hz) {
                break;
            }
            cpus.apic_ids[cpus.count] = id;
            cpus.count += 1;
        }
    }
    cpus.count
}

/// Gives every online AP its role: those in `busy` run `run`'s worker
/// loop, the others halt.
pub fn release(run: &'static GuestRun, busy: tern_workloads::params::CpuSet) {
    RUN.store(run as *const GuestRun as *mut GuestRun, Release);
    for (cpu, slot) in SLOTS.iter().enumerate().skip(1) {
        slot.role.store(
            if busy.contains(cpu) {
                ROLE_WORK
            } else {
                ROLE_HALT
            },
            Release,
        );
    }
}

/// Stops every online AP (the guest could not start its workload).
pub fn halt_all() {
    for slot in SLOTS.iter().skip(1) {
        slot.role.store(ROLE_HALT, Release);
    }
}

/// Ring-3 entry of an AP (entry.s `ap_long_mode`), with its CPU index.
extern "C" fn ap_main(cpu: usize) -> ! {
    if KVMCLOCK.load(Relaxed) {
        kvmclock::enable(cpu);
    }
    let slot = &SLOTS[cpu];
    slot.online.store(true, Release);
    loop {
        match slot.role.load(Acquire) {
            ROLE_WAIT => core::hint::spin_loop(),
            ROLE_WORK => {
                let run = RUN.load(Acquire);
                // SAFETY: `release` stored a pointer to a heap-allocated Run
                // that is never freed, before it set our role.
                if let Some(run) = unsafe { run.as_ref() } {
                    run.worker(cpu);
                }
                service::halt()
            }
            _ => service::halt(),
        }
    }
}

// The MP table parser keeps at least as many CPUs as the guest can run.
const _: () = assert!(MAX_CPUS <= mptable::MAX_CPUS);

//! Initial vCPU register state for the two boot paths tern supports:
//! the Linux 64-bit boot protocol (bzImage, plain ELF vmlinux) and the PVH
//! boot ABI (32-bit protected mode, paging off, `ebx` = `hvm_start_info`).

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::layout::{
    BOOT_GDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START, PVH_INFO_START,
    ZERO_PAGE_START,
};

/// Errors setting up the boot-time guest structures.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// Writing the GDT or the page tables into guest memory failed.
    #[error("cannot write the boot {what} into guest memory")]
    GuestWrite {
        /// Which structure.
        what: &'static str,
        /// The vm-memory error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// How the boot vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// 64-bit long mode with identity paging, `rsi` = boot_params (Linux boot protocol).
    Linux64,
    /// 32-bit protected mode, paging off, `rbx` = hvm_start_info (PVH).
    Pvh32,
}

// Boot GDT: selectors are index * 8.
const GDT_CODE64: u16 = 1;
const GDT_DATA: u16 = 2;
const GDT_TSS: u16 = 3;
const GDT_CODE32: u16 = 4;

// Descriptor flag words (type/S/DPL/P in the low byte, AVL/L/DB/G in the high nibble).
const FLAGS_CODE64: u16 = 0xa09b;
const FLAGS_DATA: u16 = 0xc093;
const FLAGS_TSS: u16 = 0x808b;
const FLAGS_CODE32: u16 = 0xc09b;

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    (((base as u64) & 0xff00_0000) << 32)
        | (((flags as u64) & 0x0000_f0ff) << 40)
        | (((limit as u64) & 0x000f_0000) << 32)
        | (((base as u64) & 0x00ff_ffff) << 16)
        | ((limit as u64) & 0x0000_ffff)
}

fn segment(index: u16, flags: u16, base: u32, limit: u32) -> kvm_segment {
    let entry = gdt_entry(flags, base, limit);
    let granularity = ((entry >> 55) & 1) as u8;
    let raw_limit = (((entry >> 32) & 0x000f_0000) | (entry & 0xffff)) as u32;
    kvm_segment {
        base: base as u64,
        limit: if granularity == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granularity,
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: 0,
    }
}

/// Writes the boot GDT (and, for 64-bit entry, identity page tables for the
/// first GiB) into guest memory and returns the special registers to load.
pub fn boot_sregs<M: GuestMemoryBackend>(
    mem: &M,
    mode: EntryMode,
    mut sregs: kvm_sregs,
) -> Result<kvm_sregs, RegsError> {
    let gdt = [
        0u64,
        gdt_entry(FLAGS_CODE64, 0, 0xfffff),
        gdt_entry(FLAGS_DATA, 0, 0xfffff),
        gdt_entry(FLAGS_TSS, 0, 0xfffff),
        gdt_entry(FLAGS_CODE32, 0, 0xfffff),
    ];
    for (i, entry) in gdt.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + 8 * i as u64))
            .map_err(|source| RegsError::GuestWrite {
                what: "GDT",
                source,
            })?;
    }
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;

    let data = segment(GDT_DATA, FLAGS_DATA, 0, 0xfffff);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(GDT_TSS, FLAGS_TSS, 0, 0xfffff);

    match mode {
        EntryMode::Linux64 => {
            sregs.cs = segment(GDT_CODE64, FLAGS_CODE64, 0, 0xfffff);
            write_identity_page_tables(mem)?;
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        EntryMode::Pvh32 => {
            sregs.cs = segment(GDT_CODE32, FLAGS_CODE32, 0, 0xfffff);
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    Ok(sregs)
}

/// Identity-maps the first GiB with 2 MiB pages: enough for the kernel's own
/// early page-table setup.
fn write_identity_page_tables<M: GuestMemoryBackend>(mem: &M) -> Result<(), RegsError> {
    let wr = |val: u64, addr: u64| {
        mem.write_obj(val, GuestAddress(addr))
            .map_err(|source| RegsError::GuestWrite {
                what: "page tables",
                source,
            })
    };
    wr(PDPTE_START | 0x03, PML4_START)?;
    wr(PDE_START | 0x03, PDPTE_START)?;
    for i in 0..512u64 {
        wr((i << 21) | 0x83, PDE_START + i * 8)?;
    }
    Ok(())
}

/// General-purpose registers of the boot vCPU.
pub fn boot_regs(mode: EntryMode, entry: u64) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        ..Default::default()
    };
    match mode {
        EntryMode::Linux64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
        EntryMode::Pvh32 => {
            regs.rbx = PVH_INFO_START;
            // The PVH ABI promises no stack; a usable one costs nothing and
            // keeps a guest that pushes early from triple-faulting.
            regs.rsp = BOOT_STACK_POINTER;
        }
    }
    regs
}

/// The x87/SSE state at reset, as firmware leaves it.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn gdt_entries_decode_to_flat_segments() {
        let cs = segment(GDT_CODE64, FLAGS_CODE64, 0, 0xfffff);
        assert_eq!((cs.l, cs.db, cs.g, cs.present, cs.s), (1, 0, 1, 1, 1));
        assert_eq!(cs.limit, 0xffff_ffff);
        assert_eq!(cs.selector, 8);
        let cs32 = segment(GDT_CODE32, FLAGS_CODE32, 0, 0xfffff);
        assert_eq!((cs32.l, cs32.db, cs32.type_), (0, 1, 0xb));
        let tss = segment(GDT_TSS, FLAGS_TSS, 0, 0xfffff);
        assert_eq!(tss.type_, 0xb);
    }

    #[test]
    fn linux64_enables_long_mode_with_identity_paging() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let s = boot_sregs(&mem, EntryMode::Linux64, kvm_sregs::default()).unwrap();
        assert_ne!(s.efer & EFER_LMA, 0);
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        let pde1: u64 = mem.read_obj(GuestAddress(PDE_START + 8)).unwrap();
        assert_eq!(pde1, (1 << 21) | 0x83);
    }

    #[test]
    fn pvh_starts_in_flat_protected_mode_without_paging() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let s = boot_sregs(&mem, EntryMode::Pvh32, kvm_sregs::default()).unwrap();
        assert_eq!(s.cr0 & X86_CR0_PG, 0);
        assert_eq!(s.cs.db, 1);
        assert_eq!(s.efer, 0);
        assert_eq!(boot_regs(EntryMode::Pvh32, 0x100000).rbx, PVH_INFO_START);
    }
}

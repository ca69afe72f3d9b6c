//! The guest physical address map tern gives an x86_64 guest.
//!
//! ```text
//! 0x0000_0500  GDT used for the 64-bit and 32-bit (PVH) boot paths
//! 0x0000_6000  hvm_start_info + PVH memory map (PVH boot)
//! 0x0000_7000  boot_params, the "zero page" (Linux boot protocol)
//! 0x0000_8ff0  initial stack pointer (grows down)
//! 0x0000_9000  identity page tables for the 64-bit boot path (PML4, PDPT, PD)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  MP table (floating pointer + configuration table), reserved in e820
//! 0x0010_0000  high memory: the kernel is loaded here or above
//! 0xc000_0000  32-bit MMIO hole: virtio-mmio windows, IOAPIC, LAPIC
//! 0x1_0000_0000  RAM above 4 GiB when the guest has more than 3 GiB
//! ```

/// Where the boot GDT lives.
pub const BOOT_GDT_START: u64 = 0x500;
/// Address of the PVH `hvm_start_info` structure.
pub const PVH_INFO_START: u64 = 0x6000;
/// Address of the PVH memory map, right after `hvm_start_info`.
pub const PVH_MEMMAP_START: u64 = 0x6040;
/// Maximum number of PVH memory map entries that fit before the zero page.
pub const PVH_MEMMAP_MAX_ENTRIES: usize = ((ZERO_PAGE_START - PVH_MEMMAP_START) / 24) as usize;
/// Address of the Linux `boot_params` ("zero page").
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page-map level 4 table of the boot identity mapping.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table of the boot identity mapping.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory of the boot identity mapping (first 1 GiB in 2 MiB pages).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line tern writes (Linux x86 COMMAND_LINE_SIZE).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area, where the MP table goes.
pub const EBDA_START: u64 = 0x9fc00;
/// End of conventional memory.
pub const LOW_RAM_END: u64 = 0xa0000;
/// First byte of high memory (1 MiB).
pub const HIGH_RAM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole; RAM stops here and resumes at 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// First virtio-mmio window.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// Size of one virtio-mmio window.
pub const VIRTIO_MMIO_WINDOW: u64 = 0x1000;
/// Number of virtio-mmio windows tern hands out.
pub const VIRTIO_MMIO_MAX_DEVICES: u64 = 16;
/// IOAPIC registers.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC registers.
pub const LAPIC_START: u64 = 0xfee0_0000;
/// The TSS region KVM wants on Intel hosts (three pages below the BIOS area).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// The identity-map page KVM wants on Intel hosts (right below the TSS).
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;
/// First legacy IRQ line usable by virtio devices (0–4 are timer, keyboard, cascade, serial).
pub const FIRST_DEVICE_IRQ: u32 = 5;
/// Last IRQ line routed through the IOAPIC.
pub const LAST_DEVICE_IRQ: u32 = 23;
/// IRQ of the 16550 serial port at 0x3f8.
pub const SERIAL_IRQ: u32 = 4;
/// I/O port base of the first serial port.
pub const SERIAL_PORT: u16 = 0x3f8;
/// The i8042 controller's data and command ports.
pub const I8042_DATA_PORT: u16 = 0x60;

// The boot structures do not overlap (checked when compiling).
const _: () = {
    assert!(PVH_MEMMAP_START + (PVH_MEMMAP_MAX_ENTRIES as u64) * 24 <= ZERO_PAGE_START);
    assert!(ZERO_PAGE_START + 0x1000 <= BOOT_STACK_POINTER);
    assert!(PDE_START + 0x1000 <= CMDLINE_START);
    assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
};

/// The RAM ranges of a guest with `mem_bytes` of memory: below the MMIO hole and,
/// for large guests, above 4 GiB.
pub fn ram_ranges(mem_bytes: u64) -> Vec<(u64, u64)> {
    if mem_bytes <= MMIO_HOLE_START {
        vec![(0, mem_bytes)]
    } else {
        vec![
            (0, MMIO_HOLE_START),
            (MMIO_HOLE_END, mem_bytes - MMIO_HOLE_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_range() {
        assert_eq!(ram_ranges(512 << 20), vec![(0, 512 << 20)]);
    }

    #[test]
    fn large_guest_skips_the_mmio_hole() {
        let r = ram_ranges(4 << 30);
        assert_eq!(r, vec![(0, MMIO_HOLE_START), (MMIO_HOLE_END, 1 << 30)]);
        assert_eq!(r.iter().map(|x| x.1).sum::<u64>(), 4 << 30);
    }
}

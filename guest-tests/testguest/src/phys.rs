//! Reads of guest-physical memory that the VMM or firmware filled in (start
//! info, memory map, command line, MP table). The first 4 GiB are identity
//! mapped, so a physical address is a pointer; reads are confined to the
//! RAM/ROM area below the 32-bit MMIO hole, so a bad pointer from outside can
//! at worst read garbage, never poke a device.

/// Highest address (exclusive) firmware data is read from.
const READABLE_END: u64 = 0xc000_0000;

/// Copies `buf.len()` bytes from physical address `paddr`; `None` if the
/// range is not readable (address 0 included: Rust forbids null pointers).
pub fn read(paddr: u64, buf: &mut [u8]) -> Option<()> {
    let end = paddr.checked_add(buf.len() as u64)?;
    if paddr == 0 || end > READABLE_END {
        return None;
    }
    // SAFETY: [paddr, end) lies in the identity-mapped first 3 GiB, which is
    // RAM or firmware ROM (reads have no side effects), and does not overlap
    // `buf`, which is on our stack or in our image.
    unsafe { core::ptr::copy_nonoverlapping(paddr as *const u8, buf.as_mut_ptr(), buf.len()) };
    Some(())
}

/// A little-endian u16 at `paddr`.
pub fn read_u16(paddr: u64) -> Option<u16> {
    let mut b = [0u8; 2];
    read(paddr, &mut b)?;
    Some(u16::from_le_bytes(b))
}

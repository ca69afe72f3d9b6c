//! What a VMM hands a PVH guest, parsed from bytes: the `hvm_start_info`
//! block and its memory map ([`pvh`]), the MP table ([`mptable`]), and the
//! guest's own memory plan built from them ([`layout`]). Pure functions over
//! byte slices, so they are tested here; the test guest only does the
//! physical-memory reads.

pub mod layout;
pub mod mptable;
pub mod pvh;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

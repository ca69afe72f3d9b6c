//! The Intel MultiProcessor Specification 1.4 table, as far as a guest needs
//! it to find its CPUs: a 16-byte floating pointer (`_MP_`) in the EBDA, the
//! last KiB of base memory or the BIOS ROM, pointing at a configuration
//! table (`PCMP`) whose processor entries name each CPU's local APIC ID.

use super::{u16_at, u32_at};

/// Most CPUs a table may list here (the guest's own limit).
pub const MAX_CPUS: usize = 64;

/// Where to look for the floating pointer: (start, length) ranges. The first
/// two come from the BIOS data area (EBDA segment at 0x40e, base memory
/// size in KiB at 0x413), read by the caller.
pub fn search_ranges(ebda_segment: u16, base_kib: u16) -> [(u64, usize); 4] {
    let ebda = u64::from(ebda_segment) << 4;
    let base_top = u64::from(base_kib) * 1024;
    [
        (ebda, if ebda != 0 { 1024 } else { 0 }),
        (
            base_top.saturating_sub(1024),
            if base_kib != 0 { 1024 } else { 0 },
        ),
        // No BIOS data area (tern, Firecracker): the conventional spot.
        (0x9fc00, 1024),
        (0xf0000, 0x10000),
    ]
}

/// The offset of a valid floating pointer in `region` (16-byte aligned
/// signature, checksum of its `length * 16` bytes zero), and the physical
/// address of the configuration table it names.
pub fn find_floating_pointer(region: &[u8]) -> Option<(usize, u32)> {
    (0..region.len().saturating_sub(15))
        .step_by(16)
        .find_map(|at| {
            let fp = &region[at..at + 16];
            if &fp[0..4] != b"_MP_" {
                return None;
            }
            let len = usize::from(fp[8]) * 16;
            let bytes = region.get(at..at + len)?;
            if len == 0 || checksum(bytes) != 0 {
                return None;
            }
            let table = u32_at(fp, 4)?;
            // A zero pointer means a "default configuration" (feature byte 1),
            // which describes exactly 2 CPUs with APIC IDs 0 and 1; no VMM uses it.
            (table != 0).then_some((at, table))
        })
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

/// Length of the configuration table whose first 8 bytes are `head`.
pub fn table_length(head: &[u8]) -> Option<usize> {
    (head.get(0..4)? == b"PCMP").then_some(())?;
    let len = usize::from(u16_at(head, 4)?);
    (len >= 44).then_some(len)
}

/// The CPUs of a configuration table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MpCpus {
    /// APIC IDs of the enabled processors, the BSP first.
    pub apic_ids: [u8; MAX_CPUS],
    pub count: usize,
    /// Enabled processors that did not fit in `apic_ids`.
    pub dropped: usize,
}

impl MpCpus {
    pub fn ids(&self) -> &[u8] {
        &self.apic_ids[..self.count]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MpError {
    BadSignature,
    BadChecksum,
    Truncated,
    UnknownEntry(u8),
    NoBsp,
}

impl core::fmt::Display for MpError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MpError::BadSignature => f.write_str("MP configuration table has no PCMP signature"),
            MpError::BadChecksum => f.write_str("MP configuration table checksum is wrong"),
            MpError::Truncated => f.write_str("MP configuration table entries run past its length"),
            MpError::UnknownEntry(t) => {
                write!(f, "MP configuration table has an entry of unknown type {t}")
            }
            MpError::NoBsp => f.write_str("MP configuration table lists no enabled boot processor"),
        }
    }
}

/// Parses a whole configuration table (`table_length` bytes). Entries are
/// walked up to the table's length, as Linux does, not by its entry count:
/// QEMU's qboot writes a count of 0.
pub fn parse_table(table: &[u8]) -> Result<MpCpus, MpError> {
    let len = table_length(table).ok_or(MpError::BadSignature)?;
    let table = table.get(..len).ok_or(MpError::Truncated)?;
    if checksum(table) != 0 {
        return Err(MpError::BadChecksum);
    }
    let mut cpus = MpCpus {
        apic_ids: [0; MAX_CPUS],
        count: 0,
        dropped: 0,
    };
    let mut bsp = None;
    let mut at = 44;
    while at < table.len() {
        let kind = table[at];
        let size = match kind {
            0 => 20,
            1..=4 => 8,
            other => return Err(MpError::UnknownEntry(other)),
        };
        let entry = table.get(at..at + size).ok_or(MpError::Truncated)?;
        const ENABLED: u8 = 1;
        const BOOT_PROCESSOR: u8 = 2;
        if kind == 0 && entry[3] & ENABLED != 0 {
            if entry[3] & BOOT_PROCESSOR != 0 && bsp.is_none() {
                bsp = Some(entry[1]);
            } else if cpus.count + 1 < MAX_CPUS {
                cpus.count += 1;
                cpus.apic_ids[cpus.count] = entry[1];
            } else {
                cpus.dropped += 1;
            }
        }
        at += size;
    }
    cpus.apic_ids[0] = bsp.ok_or(MpError::NoBsp)?;
    cpus.count += 1;
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix(bytes: &mut [u8], at: usize) {
        bytes[at] = 0;
        bytes[at] = 0u8.wrapping_sub(checksum(bytes));
    }

    /// A table like tern's vmm/src/arch/mptable.rs writes: CPUs (the first
    /// the BSP), a bus, an IOAPIC, an interrupt entry.
    fn table(cpus: &[(u8, u8)]) -> Vec<u8> {
        let mut entries = Vec::new();
        for &(id, flags) in cpus {
            entries.extend_from_slice(&[0, id, 0x14, flags]);
            entries.extend_from_slice(&[0; 16]);
        }
        entries.extend_from_slice(&[1, 0, b'I', b'S', b'A', b' ', b' ', b' ']);
        entries.extend_from_slice(&[2, 9, 0x14, 1, 0, 0, 0xc0, 0xfe]);
        entries.extend_from_slice(&[3, 0, 0, 0, 0, 4, 9, 4]);
        let mut t = b"PCMP".to_vec();
        t.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
        t.extend_from_slice(&[4, 0]);
        t.extend_from_slice(&[0; 26]);
        t.extend_from_slice(&((cpus.len() + 3) as u16).to_le_bytes());
        t.extend_from_slice(&[0; 8]);
        t.extend_from_slice(&entries);
        fix(&mut t, 7);
        t
    }

    #[test]
    fn finds_the_floating_pointer() {
        let mut region = vec![0u8; 1024];
        region[0x40..0x44].copy_from_slice(b"_MP_"); // bad checksum: skipped
        region[0x48] = 1;
        let fp = &mut region[0x100..0x110];
        fp[0..4].copy_from_slice(b"_MP_");
        fp[4..8].copy_from_slice(&0x9fc10u32.to_le_bytes());
        fp[8] = 1;
        fp[9] = 4;
        fix(fp, 10);
        assert_eq!(find_floating_pointer(&region), Some((0x100, 0x9fc10)));
        assert_eq!(find_floating_pointer(&region[..0x100]), None);
        assert_eq!(find_floating_pointer(&[]), None);
    }

    #[test]
    fn lists_enabled_cpus_bsp_first() {
        let t = table(&[(1, 1), (0, 3), (2, 0), (3, 1)]);
        assert_eq!(table_length(&t[..8]), Some(t.len()));
        let cpus = parse_table(&t).unwrap();
        assert_eq!(cpus.ids(), &[0, 1, 3]);
        assert_eq!(cpus.dropped, 0);
    }

    #[test]
    fn entry_count_is_not_trusted() {
        // qboot (QEMU microvm's firmware) leaves the count at 0.
        let mut t = table(&[(0, 3), (1, 1)]);
        t[34..36].copy_from_slice(&[0, 0]);
        fix(&mut t, 7);
        assert_eq!(parse_table(&t).unwrap().ids(), &[0, 1]);
    }

    #[test]
    fn rejects_malformed_tables() {
        let mut t = table(&[(0, 3)]);
        assert_eq!(parse_table(&t[..t.len() - 1]), Err(MpError::Truncated));
        t[50] ^= 1;
        assert_eq!(parse_table(&t), Err(MpError::BadChecksum));
        assert_eq!(parse_table(b"PCMQ"), Err(MpError::BadSignature));
        assert_eq!(parse_table(&table(&[(0, 1)])), Err(MpError::NoBsp));
        let mut odd = table(&[(0, 3)]);
        odd[44 + 20] = 9;
        fix(&mut odd, 7);
        assert_eq!(parse_table(&odd), Err(MpError::UnknownEntry(9)));
        // The length ends inside an entry.
        let mut cut = table(&[(0, 3)]);
        let len = cut.len() - 4;
        cut[4..6].copy_from_slice(&(len as u16).to_le_bytes());
        cut.truncate(len);
        fix(&mut cut, 7);
        assert_eq!(parse_table(&cut), Err(MpError::Truncated));
    }

    #[test]
    fn too_many_cpus_are_counted_not_kept() {
        let ids: Vec<(u8, u8)> = (0..70).map(|i| (i, if i == 0 { 3 } else { 1 })).collect();
        let cpus = parse_table(&table(&ids)).unwrap();
        assert_eq!((cpus.count, cpus.dropped), (MAX_CPUS, 6));
    }

    #[test]
    fn search_ranges_follow_the_bios_data_area() {
        let r = search_ranges(0x9fc0, 639);
        assert_eq!(r[0], (0x9fc00, 1024));
        assert_eq!(r[1], (639 * 1024 - 1024, 1024));
        assert_eq!(search_ranges(0, 0)[0].1, 0);
    }
}

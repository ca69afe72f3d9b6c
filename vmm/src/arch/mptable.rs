//! The Intel MultiProcessor Specification 1.4 table: how a kernel without ACPI
//! learns its CPUs, its IOAPIC and how legacy IRQs are routed.
//!
//! The table is built as plain little-endian bytes (no packed structs, no unsafe):
//! a 16-byte floating pointer followed by the configuration table.

use super::layout::{IOAPIC_START, LAPIC_START, LAST_DEVICE_IRQ};

/// Errors building the MP table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MpTableError {
    /// More vCPUs than the MP table's 8-bit APIC IDs can name (the IOAPIC takes one too).
    #[error("{0} vCPUs do not fit in an MP table (at most 254)")]
    TooManyCpus(u8),
}

const MPC_SPEC_REV: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const MP_IRQ_INT: u8 = 0;
const MP_IRQ_NMI: u8 = 1;
const MP_IRQ_EXTINT: u8 = 3;
// CPU feature values reported for every processor entry: family 6, with the
// "FPU" and "APIC" feature flags, as the spec's examples do.
const CPU_STEPPING: u32 = 0x600;
const CPU_FEATURE_APIC: u32 = 0x200;
const CPU_FEATURE_FPU: u32 = 0x001;

fn checksum_fix(bytes: &[u8]) -> u8 {
    let sum = bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b));
    0u8.wrapping_sub(sum)
}

/// Builds the MP floating pointer and configuration table for `num_cpus` vCPUs,
/// to be written at guest physical address `base`. Returns the bytes.
pub fn build(base: u64, num_cpus: u8) -> Result<Vec<u8>, MpTableError> {
    if num_cpus == 0 || num_cpus > 254 {
        return Err(MpTableError::TooManyCpus(num_cpus));
    }
    let ioapic_id = num_cpus; // APIC IDs 0..num_cpus-1 are the vCPUs.
    let table_addr = base + 16;

    let mut entries: Vec<u8> = Vec::new();
    let mut entry_count: u16 = 0;
    for cpu in 0..num_cpus {
        let mut flags = CPU_ENABLED;
        if cpu == 0 {
            flags |= CPU_BOOTPROCESSOR;
        }
        entries.extend_from_slice(&[0, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_STEPPING.to_le_bytes());
        entries.extend_from_slice(&(CPU_FEATURE_APIC | CPU_FEATURE_FPU).to_le_bytes());
        entries.extend_from_slice(&[0u8; 8]);
        entry_count += 1;
    }
    // Bus 0 is ISA.
    entries.extend_from_slice(&[1, 0]);
    entries.extend_from_slice(b"ISA   ");
    entry_count += 1;
    // The IOAPIC.
    entries.extend_from_slice(&[2, ioapic_id, APIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    entry_count += 1;
    // ISA IRQ i goes to IOAPIC pin i, with the bus's default polarity and trigger.
    for irq in 0..=LAST_DEVICE_IRQ as u8 {
        entries.extend_from_slice(&[3, MP_IRQ_INT, 0, 0, 0, irq, ioapic_id, irq]);
        entry_count += 1;
    }
    // Local interrupts: ExtINT on LINT0 and NMI on LINT1 of every LAPIC.
    entries.extend_from_slice(&[4, MP_IRQ_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, MP_IRQ_NMI, 0, 0, 0, 0, 0xff, 1]);
    entry_count += 2;

    let table_len = 44 + entries.len();
    let mut table: Vec<u8> = Vec::with_capacity(table_len);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&(table_len as u16).to_le_bytes());
    table.push(MPC_SPEC_REV);
    table.push(0); // checksum, fixed below
    table.extend_from_slice(b"TERN    ");
    table.extend_from_slice(b"TERNVMM     ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&entry_count.to_le_bytes());
    table.extend_from_slice(&(LAPIC_START as u32).to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes()); // extended table length + checksum + reserved
    table.extend_from_slice(&entries);
    table[7] = checksum_fix(&table);

    let mut fp: Vec<u8> = Vec::with_capacity(16 + table.len());
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&(table_addr as u32).to_le_bytes());
    fp.push(1); // length in 16-byte paragraphs
    fp.push(MPC_SPEC_REV);
    fp.push(0); // checksum, fixed below
    fp.extend_from_slice(&[0u8; 5]); // feature bytes: 0 = a configuration table is present
    fp[10] = checksum_fix(&fp);
    fp.extend_from_slice(&table);
    Ok(fp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    #[test]
    fn checksums_and_counts_are_right() {
        for cpus in [1u8, 2, 64, 254] {
            let t = build(0x9fc00, cpus).unwrap();
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(sum(&t[0..16]), 0, "floating pointer checksum");
            let table = &t[16..];
            assert_eq!(&table[0..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0, "table checksum");
            let count = u16::from_le_bytes([table[34], table[35]]);
            assert_eq!(count as usize, cpus as usize + 2 + 24 + 2);
            // Exactly one boot processor, and it is APIC ID 0.
            let cpu_entries = &table[44..44 + 20 * cpus as usize];
            let bsps: Vec<u8> = cpu_entries
                .chunks(20)
                .filter(|e| e[3] & CPU_BOOTPROCESSOR != 0)
                .map(|e| e[1])
                .collect();
            assert_eq!(bsps, vec![0]);
        }
    }

    #[test]
    fn pointer_names_the_table() {
        let t = build(0x9fc00, 2).unwrap();
        assert_eq!(u32::from_le_bytes([t[4], t[5], t[6], t[7]]), 0x9fc10);
    }

    #[test]
    fn rejects_impossible_cpu_counts() {
        assert_eq!(build(0, 0), Err(MpTableError::TooManyCpus(0)));
        assert_eq!(build(0, 255), Err(MpTableError::TooManyCpus(255)));
    }
}

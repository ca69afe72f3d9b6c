//! Model-specific registers: the values a vCPU boots with, and the list of
//! MSRs whose values a migration must carry.

use kvm_bindings::{kvm_msr_entry, Msrs};

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// The guest's time-stamp counter.
pub const MSR_IA32_TSC: u32 = 0x10;
/// The TSC deadline timer; must be restored after the TSC.
pub const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

const MISC_ENABLE_FAST_STRING: u64 = 1;
const MTRR_ENABLE: u64 = 1 << 11;
const MTRR_MEM_TYPE_WB: u64 = 6;

/// The MSR values every vCPU starts with.
pub fn boot_msrs() -> Msrs {
    let entries: Vec<kvm_msr_entry> = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_MEM_TYPE_WB),
    ]
    .iter()
    .map(|&(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect();
    // The list is a fixed, small constant: it always fits a FAM wrapper.
    Msrs::from_entries(&entries).unwrap_or_else(|_| Msrs::new(0).expect("empty MSR list"))
}

/// Orders the MSR indices to save so that the TSC comes before the TSC deadline
/// (KVM interprets the deadline relative to the TSC when it is restored).
pub fn migration_order(mut indices: Vec<u32>) -> Vec<u32> {
    indices.sort_by_key(|&i| match i {
        MSR_IA32_TSC => 0,
        MSR_IA32_TSC_DEADLINE => 2,
        _ => 1,
    });
    indices
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_msrs_enable_mtrrs_write_back() {
        let m = boot_msrs();
        let def = m
            .as_slice()
            .iter()
            .find(|e| e.index == MSR_MTRR_DEF_TYPE)
            .unwrap();
        assert_eq!(def.data, 0x806);
    }

    #[test]
    fn tsc_restored_before_deadline() {
        let o = migration_order(vec![MSR_IA32_TSC_DEADLINE, 0x174, MSR_IA32_TSC]);
        assert_eq!(o, vec![MSR_IA32_TSC, 0x174, MSR_IA32_TSC_DEADLINE]);
    }
}

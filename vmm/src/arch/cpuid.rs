//! The CPUID a vCPU sees: KVM's supported list, with the topology leaves made
//! consistent with the vCPU's APIC ID and the VM's CPU count.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 1;
const LEAF_CACHE_PARAMS: u32 = 4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;

/// Level types of the extended topology leaves.
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Bits needed to number `count` items.
fn id_bits(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

/// Adjusts `cpuid` (KVM's supported entries) for vCPU `apic_id` of `cpu_count`:
/// one socket, `cpu_count` cores, one thread per core.
pub fn for_vcpu(cpuid: &CpuId, apic_id: u8, cpu_count: u8) -> CpuId {
    let mut out = cpuid.clone();
    let count = u32::from(cpu_count);
    let apic = u32::from(apic_id);
    for e in out.as_mut_slice().iter_mut() {
        patch_entry(e, apic, count);
    }
    out
}

fn patch_entry(e: &mut kvm_cpuid_entry2, apic: u32, count: u32) {
    match e.function {
        LEAF_FEATURES => {
            e.ebx = (e.ebx & 0x0000_ffff) | (apic << 24) | (count.max(1) << 16);
            e.ecx |= ECX_HYPERVISOR;
            if count > 1 {
                e.edx |= EDX_HTT;
            } else {
                e.edx &= !EDX_HTT;
            }
        }
        LEAF_CACHE_PARAMS => {
            // Cores per package - 1 in EAX[31:26]; threads sharing the cache in EAX[25:14].
            let cores_minus_one = count.saturating_sub(1).min(63);
            e.eax = (e.eax & 0x0000_3fff) | (cores_minus_one << 26);
            let level = (e.eax >> 5) & 0x7;
            let sharing = if level >= 3 {
                count.saturating_sub(1)
            } else {
                0
            };
            e.eax = (e.eax & !(0xfff << 14)) | ((sharing & 0xfff) << 14);
        }
        LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
            e.edx = apic;
            match e.index {
                0 => {
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = (LEVEL_TYPE_SMT << 8) | e.index;
                }
                1 => {
                    e.eax = id_bits(count);
                    e.ebx = count;
                    e.ecx = (LEVEL_TYPE_CORE << 8) | e.index;
                }
                _ => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = e.index;
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn topology_names_the_apic_id_and_core_count() {
        let base = CpuId::from_entries(&[entry(1, 0), entry(0xb, 0), entry(0xb, 1)]).unwrap();
        let c = for_vcpu(&base, 3, 4);
        let e = c.as_slice();
        assert_eq!(e[0].ebx >> 24, 3);
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_eq!(e[1].edx, 3);
        assert_eq!(e[2].ebx, 4);
        assert_eq!(e[2].eax, 2);
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(3), 2);
        assert_eq!(id_bits(4), 2);
        assert_eq!(id_bits(5), 3);
    }
}

//! The TSC frequency, which every interval and rate is measured in: from
//! kvmclock's scale when there is one, else from CPUID.

use crate::cpu::cpuid;

/// `(hz, where it came from)`.
pub fn tsc_hz(kvmclock_cpu0: Option<u64>) -> Option<(u64, &'static str)> {
    if let Some(hz) = kvmclock_cpu0 {
        return Some((hz, "kvmclock"));
    }
    // Leaves are only read when the maximum leaf covers them.
    let hv_max = cpuid(0x4000_0000).eax;
    if (0x4000_0010..0x4000_0100).contains(&hv_max) {
        let khz = cpuid(0x4000_0010).eax; // VMware/KVM timing leaf
        if khz != 0 {
            return Some((u64::from(khz) * 1000, "cpuid 0x40000010"));
        }
    }
    let max = cpuid(0).eax;
    if max >= 0x15 {
        let l = cpuid(0x15);
        if l.eax != 0 && l.ebx != 0 && l.ecx != 0 {
            return Some((
                u64::from(l.ecx) * u64::from(l.ebx) / u64::from(l.eax),
                "cpuid 0x15",
            ));
        }
    }
    if max >= 0x16 {
        let mhz = cpuid(0x16).eax & 0xffff;
        if mhz != 0 {
            return Some((u64::from(mhz) * 1_000_000, "cpuid 0x16"));
        }
    }
    None
}

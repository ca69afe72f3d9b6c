//! x86_64 specifics: the guest address map, boot protocols, CPUID, MSRs, MP table.

pub mod boot;
pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;

//! KVM state: the host, the VM, guest memory, vCPUs and dirty tracking.

pub mod dirty_log;
pub mod dirty_tracker;
pub mod fault_stats;
pub mod kvm;
pub mod kvmclock;
pub mod memory;
pub mod populated;
pub mod vcpu;
pub mod vm;

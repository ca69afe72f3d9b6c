//! QEMU (microvm machine, KVM), driven through QMP.

pub mod driver;
pub mod qmp;

pub use driver::Qemu;

//! The simulator: drives a [`ConvergencePolicy`] (tern's own [`crate::controller::Controller`],
//! or a model of QEMU) with a guest and link model, analytically per round, so a 1 TiB guest
//! takes milliseconds. `tern-sim` tabulates it; [`crate::predict`] runs it on measured guests.

mod guest;
mod link;
mod policy;
mod qemu;
mod result;
mod runner;
mod scenario;

pub use guest::{CpuScaling, GuestModel, VcpuWorkload, WritePattern};
pub use link::Link;
pub use policy::{ConvergencePolicy, Tern, TERN_INTERIM};
pub use qemu::QemuModel;
pub use result::{Outcome, RoundRecord, SimResult};
pub use runner::{simulate, SimOptions, ZERO_PAGE_WIRE_BYTES};
pub use scenario::{vcpus_for, Workload};

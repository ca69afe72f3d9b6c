//! A running VM: memory, KVM state, vCPU threads, devices, and its lifecycle.
//! The API and the migration worker act on it through `Arc<Machine>`.

use std::sync::{Arc, Mutex};

use kvm_bindings::CpuId;

use crate::config::VmConfig;
use crate::device_manager::DeviceManager;
use crate::exit::ExitNotifier;
use crate::vstate::dirty_tracker::DirtyTracker;
use crate::vstate::memory::GuestMemoryMmap;
use crate::vstate::vcpu::{
    IoHandler, Target, VcpuContext, VcpuControl, VcpuError, Vcpus, PAUSE_TIMEOUT,
};
use crate::vstate::vm::Vm;

/// Where the VM is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Lifecycle {
    /// Waiting for an incoming migration.
    Incoming,
    /// vCPUs running.
    Running,
    /// vCPUs parked at the user's request.
    Paused,
    /// Stopped; the process is ending.
    Stopped,
}

/// Why a lifecycle request was refused.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The request does not fit the current state.
    #[error("the VM is {0:?}")]
    WrongState(Lifecycle),
    /// A migration owns the vCPUs.
    #[error("a migration is in progress")]
    Migrating,
    /// Driving the vCPUs failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
}

/// A VM and everything that runs it.
pub struct Machine {
    /// The configuration it was built from.
    pub config: VmConfig,
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The KVM VM.
    pub vm: Arc<Vm>,
    /// Dirty tracking.
    pub dirty: Arc<DirtyTracker>,
    /// vCPU control blocks.
    pub controls: Vec<Arc<VcpuControl>>,
    /// vCPU threads (None before they start).
    pub vcpus: Mutex<Option<Vcpus>>,
    /// Devices.
    pub devices: Arc<DeviceManager>,
    /// Where the end of the VM is announced.
    pub exit: Arc<ExitNotifier>,
    /// KVM's supported CPUID.
    pub cpuid: CpuId,
    /// MSRs a migration saves.
    pub msr_indices: Vec<u32>,
    /// XSAVE area size in bytes.
    pub xsave_bytes: usize,
    /// Whether the host is kvm_pvm.
    pub host_is_pvm: bool,
    lifecycle: Mutex<Lifecycle>,
    migrating: std::sync::atomic::AtomicBool,
}

impl Machine {
    /// Assembles a machine from the builder's parts (without the vCPU fds,
    /// which `start_vcpus` takes).
    pub fn new(
        config: VmConfig,
        parts: crate::builder::MachineParts,
        devices: Arc<DeviceManager>,
        exit: Arc<ExitNotifier>,
        host_is_pvm: bool,
        lifecycle: Lifecycle,
    ) -> Self {
        Machine {
            config,
            mem: parts.mem,
            vm: parts.vm,
            dirty: parts.dirty,
            controls: parts.controls,
            vcpus: Mutex::new(None),
            devices,
            exit,
            cpuid: parts.cpuid,
            msr_indices: parts.msr_indices,
            xsave_bytes: parts.xsave_bytes,
            host_is_pvm,
            lifecycle: Mutex::new(lifecycle),
            migrating: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Starts one thread per vCPU fd, beginning in `target`.
    pub fn start_vcpus(
        &self,
        fds: Vec<kvm_ioctls::VcpuFd>,
        target: Target,
    ) -> Result<(), VcpuError> {
        let io: Arc<dyn IoHandler> = self.devices.clone();
        let ctx = Arc::new(VcpuContext {
            vm: self.vm.clone(),
            io,
            exit: self.exit.clone(),
            dirty: self.dirty.clone(),
            controls: self.controls.clone(),
            msr_indices: self.msr_indices.clone(),
            xsave_bytes: self.xsave_bytes,
        });
        let v = Vcpus::spawn(fds, ctx, target)?;
        *self.vcpus.lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
        self.set_lifecycle(if target == Target::Run {
            Lifecycle::Running
        } else {
            Lifecycle::Paused
        });
        Ok(())
    }

    /// The current lifecycle state.
    pub fn lifecycle(&self) -> Lifecycle {
        *self.lifecycle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the lifecycle state.
    pub fn set_lifecycle(&self, l: Lifecycle) {
        *self.lifecycle.lock().unwrap_or_else(|e| e.into_inner()) = l;
    }

    /// Whether a migration owns the vCPUs.
    pub fn is_migrating(&self) -> bool {
        self.migrating.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Marks a migration as started (false if one already runs).
    pub fn begin_migration(&self) -> bool {
        !self
            .migrating
            .swap(true, std::sync::atomic::Ordering::AcqRel)
    }

    /// Marks the migration as over.
    pub fn end_migration(&self) {
        self.migrating
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// Runs `f` on the vCPU threads, if they exist.
    pub fn with_vcpus<R>(&self, f: impl FnOnce(&Vcpus) -> R) -> Option<R> {
        let guard = self.vcpus.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().map(f)
    }

    /// Pauses every vCPU (returns once all are parked).
    pub fn pause(&self) -> Result<std::time::Duration, LifecycleError> {
        if self.is_migrating() {
            return Err(LifecycleError::Migrating);
        }
        let mut l = self.lifecycle.lock().unwrap_or_else(|e| e.into_inner());
        match *l {
            Lifecycle::Running | Lifecycle::Paused => {}
            other => return Err(LifecycleError::WrongState(other)),
        }
        let took = self
            .with_vcpus(|v| v.pause(PAUSE_TIMEOUT))
            .ok_or(LifecycleError::WrongState(*l))??;
        *l = Lifecycle::Paused;
        Ok(took)
    }

    /// Resumes the vCPUs.
    pub fn resume(&self) -> Result<(), LifecycleError> {
        if self.is_migrating() {
            return Err(LifecycleError::Migrating);
        }
        let mut l = self.lifecycle.lock().unwrap_or_else(|e| e.into_inner());
        match *l {
            Lifecycle::Running | Lifecycle::Paused => {}
            other => return Err(LifecycleError::WrongState(other)),
        }
        self.with_vcpus(|v| v.resume());
        *l = Lifecycle::Running;
        Ok(())
    }

    /// Stops and joins the vCPU threads.
    pub fn stop_vcpus(&self) {
        let taken = self.vcpus.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut v) = taken {
            v.shutdown();
        }
        self.set_lifecycle(Lifecycle::Stopped);
    }
}

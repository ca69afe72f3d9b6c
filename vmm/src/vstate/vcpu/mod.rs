//! vCPUs: one thread each, running `KVM_RUN` and dispatching exits, with a
//! control block through which tern pauses, resumes, throttles and saves them.

mod control;
pub mod duty_cycle;
mod kick;
mod run;
pub mod state;
mod timer;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::VcpuFd;
use vmm_sys_util::signal::Killable;

pub use control::{Target, VcpuCommand, VcpuControl, VcpuCounters, VcpuReply, MAX_THROTTLE};
pub use state::VcpuState;

use super::dirty_tracker::DirtyTracker;
use super::vm::Vm;
use crate::exit::ExitNotifier;

/// Where vCPU threads send port and memory-mapped I/O.
pub trait IoHandler: Send + Sync {
    /// An `in` from `port`; fill `data`.
    fn pio_read(&self, port: u16, data: &mut [u8]);
    /// An `out` to `port`.
    fn pio_write(&self, port: u16, data: &[u8]);
    /// A read of unbacked guest physical memory at `addr`; fill `data`.
    fn mmio_read(&self, addr: u64, data: &mut [u8]);
    /// A write to unbacked guest physical memory at `addr`.
    fn mmio_write(&self, addr: u64, data: &[u8]);
}

/// Errors driving the vCPUs.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// The kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
    /// A vCPU thread could not be started.
    #[error("cannot start the thread of vCPU {id}")]
    Spawn {
        /// vCPU index.
        id: u8,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A vCPU did not stop within the deadline.
    #[error("vCPU {id} did not stop within {timeout:?}")]
    PauseTimeout {
        /// vCPU index.
        id: u8,
        /// How long we waited.
        timeout: Duration,
    },
    /// The vCPU has exited (the guest stopped, or it failed).
    #[error("vCPU {id} is no longer running")]
    Exited {
        /// vCPU index.
        id: u8,
    },
    /// A command run on the vCPU thread failed.
    #[error("vCPU {id}: {message}")]
    Command {
        /// vCPU index.
        id: u8,
        /// What failed.
        message: String,
    },
}

/// What every vCPU thread shares.
pub struct VcpuContext {
    /// The VM.
    pub vm: Arc<Vm>,
    /// Device dispatch.
    pub io: Arc<dyn IoHandler>,
    /// Where a vCPU reports that the guest stopped.
    pub exit: Arc<ExitNotifier>,
    /// Dirty tracking (for dirty-ring-full exits).
    pub dirty: Arc<DirtyTracker>,
    /// Every vCPU's control block, by index.
    pub controls: Vec<Arc<VcpuControl>>,
    /// MSRs saved for migration.
    pub msr_indices: Vec<u32>,
    /// Size of the XSAVE area in bytes.
    pub xsave_bytes: usize,
}

/// A running vCPU thread.
pub struct VcpuHandle {
    id: u8,
    control: Arc<VcpuControl>,
    thread: Option<JoinHandle<()>>,
}

impl VcpuHandle {
    /// The vCPU index.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// The vCPU's control block.
    pub fn control(&self) -> &Arc<VcpuControl> {
        &self.control
    }

    /// Makes the thread look at its control block soon.
    fn kick(&self) {
        self.control.set_kick_pending();
        if let Some(t) = &self.thread {
            // The thread may have exited already; then there is nothing to kick.
            let _ = t.kill(kick::kick_signal());
        }
    }

    fn set_target(&self, target: Target) {
        let mut st = self.control.lock();
        if st.target == Target::Exit {
            return;
        }
        st.target = target;
        drop(st);
        self.control.notify();
        self.kick();
    }

    fn wait_parked(&self, deadline: Instant, timeout: Duration) -> Result<(), VcpuError> {
        let mut st = self.control.lock();
        loop {
            if st.exited {
                return Err(VcpuError::Exited { id: self.id });
            }
            if st.parked {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(VcpuError::PauseTimeout {
                    id: self.id,
                    timeout,
                });
            }
            st = self.control.wait_timeout(st, deadline - now);
        }
    }

    fn command(&self, cmd: VcpuCommand, timeout: Duration) -> Result<VcpuReply, VcpuError> {
        let mut st = self.control.lock();
        if !st.parked {
            return Err(VcpuError::Command {
                id: self.id,
                message: "not paused".into(),
            });
        }
        st.reply = None;
        st.command = Some(cmd);
        self.control.notify();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(reply) = st.reply.take() {
                return Ok(reply);
            }
            if st.exited {
                return Err(VcpuError::Exited { id: self.id });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(VcpuError::PauseTimeout {
                    id: self.id,
                    timeout,
                });
            }
            st = self.control.wait_timeout(st, deadline - now);
        }
    }
}

/// All vCPU threads of the VM.
pub struct Vcpus {
    handles: Vec<VcpuHandle>,
}

/// How long pausing may take before it is an error.
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);

impl Vcpus {
    /// Starts one thread per vCPU fd, each beginning in `start`.
    pub fn spawn(
        fds: Vec<VcpuFd>,
        ctx: Arc<VcpuContext>,
        start: Target,
    ) -> Result<Self, VcpuError> {
        kick::install_handler().map_err(VcpuError::Signal)?;
        let mut handles = Vec::with_capacity(fds.len());
        for (i, fd) in fds.into_iter().enumerate() {
            let id = i as u8;
            let control = ctx.controls[i].clone();
            control.lock().target = start;
            let thread_ctx = ctx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("tern-vcpu-{id}"))
                .spawn(move || run::vcpu_loop(fd, id, thread_ctx))
                .map_err(|source| VcpuError::Spawn { id, source })?;
            handles.push(VcpuHandle {
                id,
                control,
                thread: Some(thread),
            });
        }
        Ok(Vcpus { handles })
    }

    /// The vCPU handles, by index.
    pub fn handles(&self) -> &[VcpuHandle] {
        &self.handles
    }

    /// Takes every vCPU out of `KVM_RUN` and returns once all are parked, or
    /// fails after `timeout`. Returns how long it took.
    pub fn pause(&self, timeout: Duration) -> Result<Duration, VcpuError> {
        let start = Instant::now();
        for h in &self.handles {
            h.set_target(Target::Pause);
        }
        let deadline = start + timeout;
        for h in &self.handles {
            h.wait_parked(deadline, timeout)?;
        }
        Ok(start.elapsed())
    }

    /// Lets every vCPU run again.
    pub fn resume(&self) {
        for h in &self.handles {
            h.set_target(Target::Run);
        }
    }

    /// Whether every vCPU is parked.
    pub fn all_parked(&self) -> bool {
        self.handles.iter().all(|h| h.control.lock().parked)
    }

    /// Saves every vCPU's state. All must be paused.
    pub fn save(&self) -> Result<Vec<VcpuState>, VcpuError> {
        self.handles
            .iter()
            .map(|h| match h.command(VcpuCommand::Save, PAUSE_TIMEOUT)? {
                VcpuReply::Saved(s) => Ok(*s),
                VcpuReply::Failed(message) => Err(VcpuError::Command { id: h.id, message }),
                VcpuReply::Restored => Err(VcpuError::Command {
                    id: h.id,
                    message: "unexpected reply".into(),
                }),
            })
            .collect()
    }

    /// Sets vCPU `id`'s throttle fraction (clamped to [0, 0.99]).
    pub fn set_throttle(&self, id: usize, fraction: f64) {
        if let Some(h) = self.handles.get(id) {
            h.control.set_throttle(fraction);
            // Wake a vCPU sleeping in a long throttle period so a lower
            // throttle takes effect at once.
            h.control.notify();
        }
    }

    /// Stops every vCPU thread and waits for them.
    pub fn shutdown(&mut self) {
        for h in &self.handles {
            h.set_target(Target::Exit);
        }
        for h in &mut self.handles {
            if let Some(t) = h.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Vcpus {
    fn drop(&mut self) {
        self.shutdown();
    }
}

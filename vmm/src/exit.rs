//! Why the VM stopped, and how tern's process ends because of it.

use std::sync::Mutex;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The reason tern's VM stopped running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest asked for a reset (i8042 reset, KVM reset event).
    GuestReset,
    /// A vCPU triple-faulted (what `reboot=t` does, or a guest crash): a reset.
    GuestTripleFault {
        /// vCPU index.
        vcpu: u8,
    },
    /// The guest powered off or shut down.
    GuestShutdown,
    /// The guest kernel panicked; the text is its panic message.
    GuestPanic(String),
    /// KVM stopped a vCPU with an internal error (e.g. an instruction it cannot emulate).
    KvmInternalError {
        /// vCPU index.
        vcpu: u8,
        /// KVM's suberror (1 = emulation failure).
        suberror: u32,
        /// Guest RIP when it happened, when known.
        rip: Option<u64>,
        /// Extra words KVM reported.
        data: Vec<u64>,
    },
    /// A vCPU failed in a way that is not the guest's doing.
    VcpuFailed {
        /// vCPU index.
        vcpu: u8,
        /// What happened.
        error: String,
    },
    /// Shut down through the API.
    ApiShutdown,
    /// The guest now runs on a migration destination.
    MigratedAway,
}

impl ExitReason {
    /// The process exit status for this reason: 0 for orderly ends, 2 for a
    /// guest panic, 3 for KVM or vCPU failures.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::GuestReset
            | ExitReason::GuestTripleFault { .. }
            | ExitReason::GuestShutdown
            | ExitReason::ApiShutdown
            | ExitReason::MigratedAway => 0,
            ExitReason::GuestPanic(_) => 2,
            ExitReason::KvmInternalError { .. } | ExitReason::VcpuFailed { .. } => 3,
        }
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::GuestReset => write!(f, "the guest reset itself"),
            ExitReason::GuestTripleFault { vcpu } => {
                write!(f, "the guest reset itself (triple fault on vCPU {vcpu})")
            }
            ExitReason::GuestShutdown => write!(f, "the guest shut down"),
            ExitReason::GuestPanic(msg) => write!(f, "guest kernel panic: {msg}"),
            ExitReason::KvmInternalError {
                vcpu,
                suberror,
                rip,
                data,
            } => {
                let what = match suberror {
                    1 => "emulation failure (an instruction KVM cannot emulate)",
                    2 => "simultaneous exceptions",
                    3 => "delivery event failure",
                    _ => "internal error",
                };
                write!(
                    f,
                    "KVM internal error on vCPU {vcpu}: {what} (suberror {suberror}"
                )?;
                if let Some(rip) = rip {
                    write!(f, ", rip {rip:#x}")?;
                }
                if !data.is_empty() {
                    write!(f, ", data {data:x?}")?;
                }
                write!(f, ")")
            }
            ExitReason::VcpuFailed { vcpu, error } => write!(f, "vCPU {vcpu} failed: {error}"),
            ExitReason::ApiShutdown => write!(f, "shut down through the API"),
            ExitReason::MigratedAway => write!(f, "the guest migrated to the destination"),
        }
    }
}

/// Collects the first exit reason and wakes the event loop.
pub struct ExitNotifier {
    reason: Mutex<Option<ExitReason>>,
    evt: EventFd,
}

impl ExitNotifier {
    /// A notifier with its own eventfd.
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitNotifier {
            reason: Mutex::new(None),
            evt: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Records `reason` unless one was recorded already, and wakes the loop.
    pub fn exit(&self, reason: ExitReason) {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            *r = Some(reason);
        }
        drop(r);
        // A full eventfd counter still wakes the loop; nothing to do on error.
        let _ = self.evt.write(1);
    }

    /// The recorded reason, if any.
    pub fn reason(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The eventfd the event loop waits on.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

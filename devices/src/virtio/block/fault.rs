//! Fault injection for block requests: a latency added to every request, or a hold that keeps
//! requests in flight until released. Controlled at run time from any thread (the vmm's API,
//! tests); the worker threads consult it before each request's I/O.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The injected fault.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockFault {
    /// Added before every request's I/O.
    pub latency: Duration,
    /// Requests wait (in flight) until this is cleared.
    pub hold: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<(BlockFault, bool /* shutting down */)>,
    changed: Condvar,
    waiting: AtomicU32,
}

/// A handle on a block device's fault hook; cheap to clone and share.
#[derive(Clone, Default)]
pub struct BlockFaultHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for BlockFaultHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockFaultHandle")
            .field("fault", &self.get())
            .field("waiting", &self.waiting())
            .finish()
    }
}

impl BlockFaultHandle {
    fn lock(&self) -> MutexGuard<'_, (BlockFault, bool)> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the fault; waiting requests re-evaluate it at once.
    pub fn set(&self, fault: BlockFault) {
        self.lock().0 = fault;
        self.shared.changed.notify_all();
    }

    /// The current fault.
    pub fn get(&self) -> BlockFault {
        self.lock().0
    }

    /// Adds `latency` to every request.
    pub fn set_latency(&self, latency: Duration) {
        let hold = self.get().hold;
        self.set(BlockFault { latency, hold });
    }

    /// Holds every request before its I/O until [`BlockFaultHandle::release`].
    pub fn hold(&self) {
        let latency = self.get().latency;
        self.set(BlockFault {
            latency,
            hold: true,
        });
    }

    /// Lets held requests go.
    pub fn release(&self) {
        let latency = self.get().latency;
        self.set(BlockFault {
            latency,
            hold: false,
        });
    }

    /// Requests currently waiting in the hook (held or delayed).
    pub fn waiting(&self) -> u32 {
        self.shared.waiting.load(Ordering::SeqCst)
    }

    /// Called by a worker before a request's I/O: waits out the hold and the latency.
    /// Returns false when the device is shutting down (the I/O must not happen).
    pub(super) fn gate(&self) -> bool {
        let mut guard = self.lock();
        if !guard.0.hold && guard.0.latency.is_zero() {
            return !guard.1;
        }
        self.shared.waiting.fetch_add(1, Ordering::SeqCst);
        let start = Instant::now();
        loop {
            let (fault, shutdown) = *guard;
            if shutdown {
                break;
            }
            if fault.hold {
                guard = self
                    .shared
                    .changed
                    .wait(guard)
                    .unwrap_or_else(|e| e.into_inner());
                continue;
            }
            let elapsed = start.elapsed();
            if elapsed >= fault.latency {
                break;
            }
            guard = self
                .shared
                .changed
                .wait_timeout(guard, fault.latency - elapsed)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
        !guard.1
    }

    /// Wakes every waiting worker for good (device teardown).
    pub(super) fn shutdown(&self) {
        self.lock().1 = true;
        self.shared.changed.notify_all();
    }
}

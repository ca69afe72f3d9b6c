//! A per-thread POSIX timer that delivers the kick signal to its own vCPU
//! thread: how a throttled vCPU is made to leave `KVM_RUN` when its run slice
//! of the duty cycle is used up.

use std::time::Duration;

use super::kick::kick_signal;

/// Errors creating or arming the timer.
#[derive(Debug, thiserror::Error)]
#[error("vCPU throttle timer: {0}")]
pub struct TimerError(#[source] std::io::Error);

/// A one-shot CLOCK_MONOTONIC timer signalling the thread that created it.
pub struct ThreadTimer {
    id: libc::timer_t,
}

impl ThreadTimer {
    /// Creates a disarmed timer aimed at the calling thread.
    pub fn for_current_thread() -> Result<Self, TimerError> {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::c_int;
        // SAFETY: sigevent is plain data; zeroed is a valid starting value.
        let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
        sev.sigev_notify = libc::SIGEV_THREAD_ID;
        sev.sigev_signo = kick_signal();
        sev.sigev_notify_thread_id = tid;
        let mut id: libc::timer_t = std::ptr::null_mut();
        // SAFETY: valid pointers to a filled sigevent and an out timer id.
        if unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut id) } != 0 {
            return Err(TimerError(std::io::Error::last_os_error()));
        }
        Ok(ThreadTimer { id })
    }

    /// Fires once after `after` (a zero duration disarms).
    pub fn arm(&self, after: Duration) -> Result<(), TimerError> {
        let mut after = after;
        if after.is_zero() {
            // A zero it_value disarms the timer; fire "immediately" instead.
            after = Duration::from_nanos(1);
        }
        self.set(after)
    }

    /// Cancels a pending expiry.
    pub fn disarm(&self) -> Result<(), TimerError> {
        self.set(Duration::ZERO)
    }

    fn set(&self, after: Duration) -> Result<(), TimerError> {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: after.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: `id` is a live timer created in `for_current_thread`.
        if unsafe { libc::timer_settime(self.id, 0, &spec, std::ptr::null_mut()) } != 0 {
            return Err(TimerError(std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

impl Drop for ThreadTimer {
    fn drop(&mut self) {
        // SAFETY: deleting the timer this struct created, exactly once.
        unsafe { libc::timer_delete(self.id) };
    }
}

//! Getting a vCPU thread out of `KVM_RUN` promptly and without races.
//!
//! Each vCPU thread publishes a pointer to its `kvm_run` page in a
//! thread-local. The kick signal's handler sets `immediate_exit = 1` through
//! it, so a kick that lands after the thread last checked its requests but
//! before it entered `KVM_RUN` still makes `KVM_RUN` return at once (`EINTR`);
//! one that lands inside `KVM_RUN` interrupts it. The throttle timer uses the
//! same signal.

use std::cell::Cell;
use std::sync::Once;

use kvm_bindings::kvm_run;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

thread_local! {
    static KVM_RUN_PAGE: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The real-time signal that kicks vCPU threads.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // `try_with`: never panic in a signal handler, even while the thread's
    // locals are being torn down.
    let _ = KVM_RUN_PAGE.try_with(|page| {
        let run = page.get();
        if !run.is_null() {
            // SAFETY: the pointer is this thread's own kvm_run mapping, published by
            // `publish_run_page` and withdrawn before the mapping goes away. A
            // volatile byte store is async-signal-safe.
            unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
        }
    });
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
}

/// Installs the kick handler (once per process).
pub fn install_handler() -> Result<(), vmm_sys_util::errno::Error> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_signal_handler(kick_signal(), on_kick);
    });
    result
}

/// Makes kicks to the calling thread set `immediate_exit` on `run`.
/// Pass null before the vCPU fd (and so the mapping) is dropped.
pub fn publish_run_page(run: *mut kvm_run) {
    KVM_RUN_PAGE.with(|page| page.set(run));
}

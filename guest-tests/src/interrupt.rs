//! Ctrl-C, SIGTERM and SIGHUP: the first one sets a flag that every wait in
//! the runner checks, so the run unwinds and its guards stop the VMMs and
//! delete the namespaces; a second one ends the runner at once (the VMMs
//! still die with it: they are started with a parent-death signal).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

fn flag() -> &'static Arc<AtomicBool> {
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// Installs the handlers (idempotent).
pub fn install() -> Result<()> {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    if INSTALLED.get().is_some() {
        return Ok(());
    }
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    for signal in [SIGINT, SIGTERM, SIGHUP] {
        // A second signal while the flag is already set exits with 130.
        signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(flag()))
            .map_err(|e| Error::io("installing a signal handler", e))?;
        signal_hook::flag::register(signal, Arc::clone(flag()))
            .map_err(|e| Error::io("installing a signal handler", e))?;
    }
    let _ = INSTALLED.set(());
    Ok(())
}

/// Whether a signal arrived.
pub fn requested() -> bool {
    flag().load(Ordering::SeqCst)
}

/// `Err(Interrupted)` once a signal arrived.
pub fn check() -> Result<()> {
    if requested() {
        Err(Error::Interrupted)
    } else {
        Ok(())
    }
}

/// Sleeps `d`, waking early (with `Err(Interrupted)`) on a signal.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check()?;
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(20)));
    }
}

//! How the controller (CPU 0) and the other workers agree on what to do:
//! start together after filling, park for a verify or a corruption, stop.
//! Workers look at one atomic per iteration; everything else is rare.

use core::sync::atomic::{
    AtomicU32, AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};

const FILLING: u32 = 0;
const RUN: u32 = 1;
const PAUSE: u32 = 2;
const STOP: u32 = 3;

/// What a worker should do after [`Coordinator::park`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    Continue,
    Stop,
}

pub struct Coordinator {
    state: AtomicU32,
    /// Workers besides the controller that take part.
    workers: AtomicU32,
    parked: AtomicU32,
    filled: AtomicU32,
    dirtied: AtomicU64,
}

impl Coordinator {
    /// A coordinator expecting `workers` workers besides the controller.
    pub const fn new(workers: u32) -> Self {
        Coordinator {
            state: AtomicU32::new(FILLING),
            workers: AtomicU32::new(workers),
            parked: AtomicU32::new(0),
            filled: AtomicU32::new(0),
            dirtied: AtomicU64::new(0),
        }
    }

    /// A worker that was expected will never come (its CPU did not start).
    pub fn worker_lost(&self) {
        self.workers.fetch_sub(1, Relaxed);
    }

    pub fn workers(&self) -> u32 {
        self.workers.load(Relaxed)
    }

    /// Worker side: its slice is filled; waits until the run starts.
    pub fn filled_and_wait(&self) -> Next {
        self.filled.fetch_add(1, Release);
        loop {
            match self.state.load(Acquire) {
                FILLING => core::hint::spin_loop(),
                STOP => return Next::Stop,
                _ => return Next::Continue,
            }
        }
    }

    /// Controller side: whether every worker has filled its slice.
    pub fn all_filled(&self) -> bool {
        self.filled.load(Acquire) >= self.workers()
    }

    /// Controller side: starts the run.
    pub fn start(&self) {
        self.state.store(RUN, Release);
    }

    /// Worker side, once per iteration: whether the controller wants
    /// something (then call [`Coordinator::park`]).
    #[inline]
    pub fn state_changed(&self) -> bool {
        self.state.load(Relaxed) != RUN
    }

    /// Worker side: parks as long as the controller asks; says what next.
    #[cold]
    pub fn park(&self) -> Next {
        self.parked.fetch_add(1, Release);
        loop {
            match self.state.load(Acquire) {
                PAUSE => core::hint::spin_loop(),
                STOP => return Next::Stop, // stays counted as parked
                _ => break,
            }
        }
        self.parked.fetch_sub(1, Release);
        Next::Continue
    }

    /// Controller side: asks every worker to park and waits until they have,
    /// or until `give_up()` says so (then returns false, still pausing).
    pub fn pause_all(&self, give_up: impl FnMut() -> bool) -> bool {
        self.state.store(PAUSE, Release);
        self.wait_parked(give_up)
    }

    pub fn resume_all(&self) {
        self.state.store(RUN, Release);
    }

    /// Controller side: stops every worker for good (they stay parked).
    pub fn stop_all(&self, give_up: impl FnMut() -> bool) -> bool {
        self.state.store(STOP, Release);
        self.wait_parked(give_up)
    }

    fn wait_parked(&self, mut give_up: impl FnMut() -> bool) -> bool {
        while self.parked.load(Acquire) < self.workers() {
            if give_up() {
                return false;
            }
            core::hint::spin_loop();
        }
        true
    }

    /// Adds to the run's dirtied-page total.
    pub fn count_dirtied(&self, pages: u64) {
        self.dirtied.fetch_add(pages, Relaxed);
    }

    pub fn dirtied(&self) -> u64 {
        self.dirtied.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn workers_park_and_resume_and_stop() {
        let c = Coordinator::new(2);
        let iterations: Vec<AtomicU64> = (0..2).map(|_| AtomicU64::new(0)).collect();
        let stopped = AtomicBool::new(false);
        std::thread::scope(|s| {
            for it in &iterations {
                let c = &c;
                s.spawn(move || {
                    assert_eq!(c.filled_and_wait(), Next::Continue);
                    loop {
                        it.fetch_add(1, Relaxed);
                        if c.state_changed() && c.park() == Next::Stop {
                            return;
                        }
                    }
                });
            }
            while !c.all_filled() {
                std::hint::spin_loop();
            }
            c.start();
            assert!(c.pause_all(|| false));
            let frozen: Vec<u64> = iterations.iter().map(|i| i.load(Relaxed)).collect();
            std::thread::sleep(std::time::Duration::from_millis(5));
            assert_eq!(
                frozen,
                iterations
                    .iter()
                    .map(|i| i.load(Relaxed))
                    .collect::<Vec<_>>(),
                "parked workers do not run"
            );
            c.resume_all();
            while iterations
                .iter()
                .zip(&frozen)
                .any(|(i, f)| i.load(Relaxed) <= *f)
            {
                std::hint::spin_loop();
            }
            assert!(c.stop_all(|| false));
            stopped.store(true, Relaxed);
        });
        assert!(stopped.load(Relaxed));
    }

    #[test]
    fn giving_up_and_lost_workers() {
        let c = Coordinator::new(1);
        c.start();
        let mut tries = 0;
        assert!(!c.pause_all(|| {
            tries += 1;
            tries > 3
        }));
        c.worker_lost();
        assert_eq!(c.workers(), 0);
        assert!(c.pause_all(|| true), "nobody left to wait for");
        assert!(c.all_filled());
    }
}

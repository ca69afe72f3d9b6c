//! The workload loop every CPU (or thread) runs, and the controller's
//! command handling on CPU 0. Platform-independent: the test guest and the
//! Linux program only supply a [`Platform`] and the memory.
//!
//! Each loop iteration: read the TSC, account the iteration in the stall
//! meter, do one fixed unit of work, dirty one page if the rate allows,
//! and every `tick_ms` print a tick; CPU 0 also polls for commands every
//! `poll_ms`.

use crate::command::Command;
use crate::coord::{Coordinator, Next};
use crate::dirtier::{self, Dirtier};
use crate::event::{
    self, Corrupted, Done, ErrorEvent, ErrorKind, EventBody, Rebooting, Started, Verified,
};
use crate::line::LineBuf;
use crate::memory::{GenTable, PageSet};
use crate::meter::{MeterConfig, StallMeter};
use crate::pacer::Pacer;
use crate::params::{Config, CpuSet, IdleMode, Rate};
use crate::platform::Platform;
use crate::poller::CommandPoller;
use crate::verify::verify;

/// Longest an event line may be.
pub const MAX_LINE: usize = 1024;
/// How long the controller waits for workers to park before giving up.
const PARK_TIMEOUT_S: u64 = 10;

/// Writes one event line on `platform`.
pub fn emit<P: Platform + ?Sized, E: EventBody>(platform: &P, event: &E) {
    let mut line = LineBuf::<MAX_LINE>::new();
    if event::write_line(&mut line, event).is_ok() {
        platform.write_line(line.as_str());
    } else {
        line.clear();
        let message = format_args!("a {} event did not fit in {MAX_LINE} bytes", E::NAME);
        let _ = event::write_line(
            &mut line,
            &ErrorEvent {
                kind: ErrorKind::Worker,
                message: &message,
                fault: None,
            },
        );
        platform.write_line(line.as_str());
    }
}

/// Writes an error event.
pub fn emit_error<P: Platform + ?Sized>(
    platform: &P,
    kind: ErrorKind,
    message: core::fmt::Arguments<'_>,
) {
    emit(
        platform,
        &ErrorEvent {
            kind,
            message: &message,
            fault: None,
        },
    );
}

/// The longest a CPU halts at once with `tern.idle=halt`, so that a worker
/// still notices a pause or stop request promptly.
const MAX_HALT_MS: u64 = 10;

/// One fixed unit of CPU work per iteration: 16 dependent multiply-adds
/// (a few ns), so that work counts compare across runs.
#[inline]
fn work_unit(acc: &mut u64) {
    let mut x = *acc;
    for _ in 0..16 {
        x = x
            .wrapping_mul(0x5851_f42d_4c95_7f2d)
            .wrapping_add(0x1405_7b7e_f767_814f);
    }
    *acc = core::hint::black_box(x);
}

/// Everything the CPUs share for one run.
pub struct Run<'a, P: Platform> {
    pub platform: &'a P,
    pub config: Config,
    pub pages: PageSet<'a>,
    pub table: GenTable<'a>,
    pub coord: &'a Coordinator,
    /// CPUs that dirty memory (each owns a slice of `pages`).
    pub busy: CpuSet,
}

enum AfterCommand {
    Continue,
    Stopped,
}

impl<'a, P: Platform> Run<'a, P> {
    fn hz(&self) -> u64 {
        self.platform.tsc_hz()
    }

    fn slice(&self, cpu: usize) -> Option<core::ops::Range<usize>> {
        let rank = self.busy.rank(cpu)?;
        Some(dirtier::slice_of(self.pages.len(), self.busy.count(), rank))
    }

    fn dirtier(&self, cpu: usize, now: u64) -> Option<Dirtier> {
        let slice = self.slice(cpu)?;
        let pacer = match self.config.rate {
            Rate::Max => None,
            Rate::MibPerSec(0) => return None,
            Rate::MibPerSec(mib) => Some(Pacer::new(
                u64::from(mib) * 256,
                self.busy.count() as u64,
                self.hz(),
                now,
            )),
        };
        Some(Dirtier::new(
            slice,
            self.config.pattern,
            self.config.seed,
            pacer,
        ))
    }

    fn fill(&self, cpu: usize) {
        if let Some(slice) = self.slice(cpu) {
            dirtier::fill(&self.pages, &self.table, slice);
        }
    }

    fn meter(&self, cpu: usize, now: u64) -> StallMeter {
        let c = &self.config;
        let cfg = MeterConfig::new(self.hz(), c.tick_ms, c.gap_us, c.baseline_ms);
        StallMeter::new(cpu as u32, cfg, now, self.platform.clock_pair(cpu))
    }

    /// A CPU other than the controller: fill, run until stopped, return.
    pub fn worker(&self, cpu: usize) {
        self.fill(cpu);
        if self.coord.filled_and_wait() == Next::Stop {
            return;
        }
        self.work(cpu, None);
    }

    /// CPU 0 when it drives a device itself: lets the other CPUs' stall
    /// meters start (their working set is empty), then returns.
    pub fn start_meters(&self) {
        while !self.coord.all_filled() {
            core::hint::spin_loop();
        }
        self.coord.start();
    }

    /// CPU 0: fill, start everybody, run and serve commands. Only `reboot`
    /// ends it.
    pub fn controller(&self, cpu: usize) -> ! {
        let begin = self.platform.tsc();
        self.fill(cpu);
        while !self.coord.all_filled() {
            core::hint::spin_loop();
        }
        let fill_ms = crate::clock::ticks_to_us(self.platform.tsc() - begin, self.hz()) / 1000;
        emit(
            self.platform,
            &Started {
                pages: self.pages.len() as u64,
                fill_ms,
            },
        );
        self.coord.start();
        let mut commands = CommandPoller::new(self.hz(), self.config.poll_ms);
        self.work(cpu, Some(&mut commands));
        self.serve_stopped(&mut commands)
    }

    /// The measured loop; returns when stopped.
    fn work(&self, cpu: usize, mut control: Option<&mut CommandPoller>) {
        let p = self.platform;
        let start = p.tsc();
        let mut meter = self.meter(cpu, start);
        let mut dirtier = self.dirtier(cpu, start);
        let mut acc = cpu as u64;
        // Pages dirtied and not yet added to the run's total, which `done`
        // reports: flushed at every tick and before anything can stop us.
        let mut unflushed = 0;
        loop {
            let now = p.tsc();
            meter.iteration(now);
            work_unit(&mut acc);
            if let Some(d) = dirtier.as_mut() {
                if d.step(now, &self.pages, &self.table) {
                    meter.page_dirtied();
                    unflushed += 1;
                }
            }
            if meter.tick_due(now) {
                self.coord.count_dirtied(core::mem::take(&mut unflushed));
                let (tick, baseline) = meter.finish(now, p.clock_pair(cpu));
                emit(p, &tick);
                if let Some(b) = baseline {
                    emit(p, &b);
                }
                meter.exclude(now, p.tsc());
            }
            match control.as_deref_mut() {
                Some(c) if c.due(now) => {
                    self.coord.count_dirtied(core::mem::take(&mut unflushed));
                    let mut stopped = false;
                    c.poll(p, |command| {
                        stopped |= matches!(self.execute(command), AfterCommand::Stopped)
                    });
                    meter.exclude(now, p.tsc());
                    if stopped {
                        return;
                    }
                }
                Some(_) => {}
                None => {
                    if self.coord.state_changed() {
                        self.coord.count_dirtied(core::mem::take(&mut unflushed));
                        let next = self.coord.park();
                        meter.exclude(now, p.tsc());
                        if next == Next::Stop {
                            return;
                        }
                    }
                }
            }
            if dirtier.is_none() && self.config.idle == IdleMode::Halt {
                let now = p.tsc();
                let poll = control.as_deref().map_or(u64::MAX, CommandPoller::next_due);
                let deadline = meter
                    .tick_at()
                    .min(poll)
                    .min(now.saturating_add(MAX_HALT_MS * (self.hz() / 1000)));
                if deadline > now {
                    p.idle_until(cpu, deadline);
                    meter.halted(deadline, p.tsc());
                }
            }
        }
    }

    /// After `stop`: commands only, polled every `poll_ms`.
    fn serve_stopped(&self, commands: &mut CommandPoller) -> ! {
        loop {
            if commands.due(self.platform.tsc()) {
                commands.poll(self.platform, |command| {
                    self.execute(command);
                });
            }
            core::hint::spin_loop();
        }
    }

    fn park_timeout(&self) -> impl FnMut() -> bool + '_ {
        let deadline = self.platform.tsc() + PARK_TIMEOUT_S * self.hz();
        move || self.platform.tsc() > deadline
    }

    fn execute(&self, command: Command) -> AfterCommand {
        let p = self.platform;
        match command {
            Command::Verify => {
                let begin = p.tsc();
                if !self.coord.pause_all(self.park_timeout()) {
                    self.coord.resume_all();
                    emit_error(
                        p,
                        ErrorKind::Worker,
                        format_args!("workers did not pause within {PARK_TIMEOUT_S} s; no verify"),
                    );
                    return AfterCommand::Continue;
                }
                let report = verify(&self.pages, &self.table);
                let elapsed_us = crate::clock::ticks_to_us(p.tsc() - begin, self.hz());
                self.coord.resume_all();
                emit(p, &Verified { report, elapsed_us });
            }
            Command::Corrupt { page, how } => {
                if page >= self.pages.len() as u64 || self.table.expected(page as usize) == 0 {
                    let pages = self.pages.len();
                    emit_error(p, ErrorKind::Command, format_args!("corrupt: page {page} is not a written page (working set: {pages} pages)"));
                    return AfterCommand::Continue;
                }
                if !self.coord.pause_all(self.park_timeout()) {
                    self.coord.resume_all();
                    emit_error(
                        p,
                        ErrorKind::Worker,
                        format_args!(
                            "workers did not pause within {PARK_TIMEOUT_S} s; not corrupted"
                        ),
                    );
                    return AfterCommand::Continue;
                }
                self.table.freeze(page as usize);
                self.pages.page(page as usize).corrupt(page, how);
                self.coord.resume_all();
                emit(p, &Corrupted { page, how });
            }
            Command::Stop => {
                if !self.coord.stop_all(self.park_timeout()) {
                    emit_error(
                        p,
                        ErrorKind::Worker,
                        format_args!("workers did not stop within {PARK_TIMEOUT_S} s"),
                    );
                }
                let report = verify(&self.pages, &self.table);
                let uptime_ms = crate::clock::ticks_to_us(p.tsc() - p.boot_tsc(), self.hz()) / 1000;
                emit(
                    p,
                    &Done {
                        report,
                        dirtied: self.coord.dirtied(),
                        uptime_ms,
                    },
                );
                return AfterCommand::Stopped;
            }
            Command::Fault => {
                p.fault();
                emit_error(
                    p,
                    ErrorKind::Command,
                    format_args!("fault: this platform cannot take a CPU exception on purpose"),
                );
            }
            Command::Reboot => {
                emit(p, &Rebooting);
                p.reboot();
            }
        }
        AfterCommand::Continue
    }
}

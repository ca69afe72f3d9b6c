//! The request engine of the disk workload: keeps up to `qd` requests in
//! flight until `total` are done (or a deadline passes, or the host says
//! `stop`), printing a `disk_tick` every `tick_ms` and serving commands.

use core::sync::atomic::AtomicU64;

use crate::clock::ticks_to_us;
use crate::command::Command;
use crate::event::{DiskPhase, DiskTick, ErrorKind};
use crate::platform::Platform;
use crate::poller::CommandPoller;
use crate::run::{emit, emit_error};
use crate::virtio::blk::{BlkStatus, BlockDevice, BlockOp};
use crate::virtio::queue::MAX_SIZE;

/// What one request is: operation, first sector, bytes.
pub type Request = (BlockOp, u64, usize);

/// What a pump did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pumped {
    /// Requests handed to the device (all of them completed).
    pub issued: u64,
    pub bytes: u64,
    pub errors: u64,
    /// TSC ticks from start to the last completion.
    pub elapsed: u64,
    pub max_latency: u64,
    /// It ended early because the host asked to stop.
    pub stopped: bool,
}

impl Pumped {
    pub fn elapsed_us(&self, hz: u64) -> u64 {
        ticks_to_us(self.elapsed, hz)
    }

    /// MiB/s in hundredths.
    pub fn mib_s_x100(&self, hz: u64) -> u64 {
        rate_x100(self.bytes, self.elapsed, hz) >> 20
    }

    pub fn iops(&self, hz: u64) -> u64 {
        rate_x100(self.issued, self.elapsed, hz) / 100
    }
}

/// `count` per second over `ticks`, times 100.
fn rate_x100(count: u64, ticks: u64, hz: u64) -> u64 {
    if ticks == 0 {
        return 0;
    }
    (u128::from(count) * 100 * u128::from(hz) / u128::from(ticks)) as u64
}

/// Per-interval counters behind `disk_tick`.
#[derive(Default)]
struct Interval {
    start: u64,
    requests: u64,
    bytes: u64,
    errors: u64,
    max_latency: u64,
}

/// Shared state of the pumps of one disk run.
pub struct Engine<'a, P: Platform> {
    pub platform: &'a P,
    pub commands: CommandPoller,
    pub tick_interval: u64,
    pub tick_seq: u64,
    /// The host said `stop` (during any pump); stoppable pumps end early
    /// until the caller clears it.
    pub stop_requested: bool,
    /// The current `disk_tick` interval. It spans pumps, so ticks keep their
    /// period when passes are shorter than it.
    interval: Interval,
}

impl<'a, P: Platform> Engine<'a, P> {
    pub fn new(platform: &'a P, commands: CommandPoller, tick_interval: u64) -> Self {
        Engine {
            platform,
            commands,
            tick_interval,
            tick_seq: 0,
            stop_requested: false,
            interval: Interval {
                start: platform.tsc(),
                ..Interval::default()
            },
        }
    }

    /// Runs requests `0..total` (stopping early at `deadline`, or on `stop`
    /// if `stoppable`) with at most `qd` in flight. `issue(i, buffer)` describes request `i`
    /// (filling the slot's buffer for a write); `complete(i, buffer, status)`
    /// sees it done.
    #[allow(clippy::too_many_arguments)]
    pub fn pump<D: BlockDevice>(
        &mut self,
        dev: &mut D,
        phase: DiskPhase,
        qd: usize,
        total: u64,
        deadline: Option<u64>,
        stoppable: bool,
        mut issue: impl FnMut(u64, &[AtomicU64]) -> Request,
        mut complete: impl FnMut(u64, &[AtomicU64], BlkStatus),
    ) -> Pumped {
        let p = self.platform;
        let slots = qd.min(dev.slots()).clamp(1, MAX_SIZE);
        let mut free: [u16; MAX_SIZE] = core::array::from_fn(|i| i as u16);
        let mut free_count = slots;
        let mut request_of = [0u64; MAX_SIZE];
        let mut started_at = [0u64; MAX_SIZE];
        let mut bytes_of = [0usize; MAX_SIZE];
        let begin = p.tsc();
        let mut out = Pumped::default();
        let mut last_completion = begin;
        loop {
            let now = p.tsc();
            out.stopped = stoppable && self.stop_requested;
            let may_issue = !out.stopped && out.issued < total && deadline.is_none_or(|d| now < d);
            if !may_issue && free_count == slots {
                break;
            }
            let mut submitted = false;
            while may_issue && free_count > 0 && out.issued < total {
                let slot = usize::from(free[free_count - 1]);
                let (op, sector, bytes) = issue(out.issued, dev.data(slot));
                let i = out.issued;
                out.issued += 1;
                match dev.submit(slot, op, sector, bytes) {
                    Ok(()) => {
                        free_count -= 1;
                        request_of[slot] = i;
                        started_at[slot] = now;
                        bytes_of[slot] = bytes;
                        submitted = true;
                    }
                    Err(e) => {
                        out.errors += 1;
                        self.interval.errors += 1;
                        if out.errors == 1 {
                            emit_error(p, ErrorKind::Disk, format_args!("{phase}: request {i} ({op:?} at sector {sector}, {bytes} bytes) refused: {e:?}"));
                        }
                    }
                }
            }
            if submitted {
                dev.kick();
            }
            while let Some(c) = dev.poll() {
                let done = p.tsc();
                let latency = done.saturating_sub(started_at[c.slot]);
                out.max_latency = out.max_latency.max(latency);
                self.interval.max_latency = self.interval.max_latency.max(latency);
                last_completion = done;
                complete(request_of[c.slot], dev.data(c.slot), c.status);
                self.interval.requests += 1;
                if c.status == BlkStatus::Ok {
                    out.bytes += bytes_of[c.slot] as u64;
                    self.interval.bytes += bytes_of[c.slot] as u64;
                } else {
                    out.errors += 1;
                    self.interval.errors += 1;
                }
                free[free_count] = c.slot as u16;
                free_count += 1;
            }
            let now = p.tsc();
            if now - self.interval.start >= self.tick_interval {
                self.tick(phase, now, (slots - free_count) as u32);
            }
            if self.commands.due(now) {
                let mut stop = false;
                self.commands.poll(p, |command| match command {
                    Command::Stop => stop = true,
                    Command::Reboot => p.reboot(),
                    Command::Fault => p.fault(),
                    other => emit_error(
                        p,
                        ErrorKind::Command,
                        format_args!("{other}: the disk is busy ({phase}); send stop first"),
                    ),
                });
                self.stop_requested |= stop;
            }
        }
        out.elapsed = last_completion.saturating_sub(begin);
        out
    }

    fn tick(&mut self, phase: DiskPhase, now: u64, in_flight: u32) {
        let hz = self.platform.tsc_hz();
        let interval = &self.interval;
        let ticks = now - interval.start;
        emit(
            self.platform,
            &DiskTick {
                seq: self.tick_seq,
                phase,
                requests: interval.requests,
                bytes: interval.bytes,
                mib_s_x100: rate_x100(interval.bytes, ticks, hz) >> 20,
                iops: rate_x100(interval.requests, ticks, hz) / 100,
                in_flight,
                max_latency_us: ticks_to_us(interval.max_latency, hz),
                errors: interval.errors,
            },
        );
        self.tick_seq += 1;
        self.interval = Interval {
            start: self.platform.tsc(),
            ..Interval::default()
        };
    }
}

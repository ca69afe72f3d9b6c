//! The net workload (`tern.test=net`), over any [`FrameDevice`]: sends
//! `tern.frames` probe frames per second of `tern.frame_bytes` bytes,
//! numbered from 0, to the broadcast address; counts the ones a peer echoes
//! back (returned, reordered, duplicated, round-trip times) and the peer's
//! own frames (and the gaps in their numbering). Prints a `net_tick` every
//! `tick_ms`; `stop` ends the sending, waits half a second for stragglers
//! and prints `net_done` with what never came back.

pub mod frame;
pub mod window;

use crate::clock::ticks_to_us;
use crate::command::Command;
use crate::event::{ErrorKind, NetCounts, NetDone, NetTick};
use crate::pacer::Pacer;
use crate::page::mix;
use crate::params::Config;
use crate::platform::Platform;
use crate::poller::CommandPoller;
use crate::run::{emit, emit_error};
use crate::virtio::net::{FrameDevice, MAX_FRAME};

use frame::{FrameError, Kind, Payload, BROADCAST};
use window::{Seen, SeqWindow};

/// How long `stop` waits for frames still on their way back.
const DRAIN_MS: u64 = 500;

pub struct NetRun<'a, P: Platform, D: FrameDevice> {
    p: &'a P,
    config: Config,
    dev: D,
    run_id: u64,
    counts: NetCounts,
    returned: SeqWindow,
    peer_next: Option<u64>,
    commands: CommandPoller,
    tick_seq: u64,
    rtt_max: u64,
    rtt_sum: u64,
    rtt_count: u64,
}

impl<'a, P: Platform, D: FrameDevice> NetRun<'a, P, D> {
    pub fn new(p: &'a P, config: Config, dev: D) -> Self {
        NetRun {
            p,
            config,
            dev,
            run_id: mix(p.boot_tsc() ^ mix(config.seed ^ u64::from_be_bytes(*b"\0\0\0\0\0net"))),
            counts: NetCounts::default(),
            returned: SeqWindow::new(),
            peer_next: None,
            commands: CommandPoller::new(p.tsc_hz(), config.poll_ms),
            tick_seq: 0,
            rtt_max: 0,
            rtt_sum: 0,
            rtt_count: 0,
        }
    }

    pub fn counts(&self) -> NetCounts {
        self.counts
    }

    /// Sends and receives until `stop`, then serves commands until `reboot`.
    pub fn run(mut self) -> ! {
        self.exchange();
        loop {
            if self.receive() {
                self.dev.flush();
            }
            if self.commands.due(self.p.tsc()) {
                let p = self.p;
                let mut stop = false;
                self.commands.poll(p, |c| match c {
                    Command::Stop => stop = true,
                    Command::Reboot => p.reboot(),
                    Command::Fault => p.fault(),
                    other => emit_error(
                        p,
                        ErrorKind::Command,
                        format_args!("{other}: the net workload only answers stop, reboot, fault"),
                    ),
                });
                if stop {
                    self.done();
                }
            }
        }
    }

    /// Sends at the configured rate and counts what comes back, until the
    /// host says `stop`; then drains and prints `net_done`.
    pub fn exchange(&mut self) {
        let p = self.p;
        let hz = p.tsc_hz();
        let start = p.tsc();
        let mut pacer =
            (self.config.frames > 0).then(|| Pacer::new(self.config.frames.into(), 1, hz, start));
        let tick = hz / 1000 * u64::from(self.config.tick_ms);
        let mut next_tick = start + tick;
        let mut frame = [0u8; MAX_FRAME];
        let mac = self.dev.mac();
        let mut stop_at: Option<u64> = None;
        loop {
            let now = p.tsc();
            let mut dirty = false;
            if stop_at.is_none() && pacer.as_mut().is_some_and(|pc| pc.take(now)) {
                let payload = Payload {
                    run_id: self.run_id,
                    seq: self.counts.sent,
                    kind: Kind::Probe,
                    sent_tsc: now,
                };
                let len = frame::build(
                    &mut frame,
                    self.config.frame_bytes as usize,
                    BROADCAST,
                    mac,
                    &payload,
                );
                if self.dev.send(&frame[..len]) {
                    self.counts.sent += 1;
                    dirty = true;
                } else {
                    self.counts.tx_full += 1;
                }
            }
            dirty |= self.receive();
            if dirty {
                self.dev.flush();
            }
            if now >= next_tick {
                self.tick();
                next_tick = now + tick;
            }
            if self.commands.due(now) {
                let mut stop = false;
                self.commands.poll(p, |c| match c {
                    Command::Stop => stop = true,
                    Command::Reboot => p.reboot(),
                    Command::Fault => p.fault(),
                    other => emit_error(
                        p,
                        ErrorKind::Command,
                        format_args!("{other}: the net workload only answers stop, reboot, fault"),
                    ),
                });
                if stop && stop_at.is_none() {
                    stop_at = Some(now + hz / 1000 * DRAIN_MS);
                }
            }
            if stop_at.is_some_and(|s| now >= s) {
                self.done();
                return;
            }
        }
    }

    fn done(&mut self) {
        let lost = self.counts.sent.saturating_sub(self.counts.returned);
        emit(
            self.p,
            &NetDone {
                counts: self.counts,
                lost,
            },
        );
    }

    fn tick(&mut self) {
        let hz = self.p.tsc_hz();
        let (max, avg) = match self.rtt_count {
            0 => (None, None),
            n => (
                Some(ticks_to_us(self.rtt_max, hz)),
                Some(ticks_to_us(self.rtt_sum / n, hz)),
            ),
        };
        let outstanding = self.counts.sent.saturating_sub(self.counts.returned);
        emit(
            self.p,
            &NetTick {
                seq: self.tick_seq,
                counts: self.counts,
                outstanding,
                rtt_max_us: max,
                rtt_avg_us: avg,
            },
        );
        self.tick_seq += 1;
        (self.rtt_max, self.rtt_sum, self.rtt_count) = (0, 0, 0);
    }

    /// Takes in every waiting frame; returns whether any arrived (their
    /// buffers then need handing back to the device).
    fn receive(&mut self) -> bool {
        let mut buf = [0u8; MAX_FRAME];
        let mut any = false;
        while let Some(len) = self.dev.recv(&mut buf) {
            any = true;
            let now = self.p.tsc();
            match frame::parse(&buf[..len]) {
                Ok(f)
                    if f.kind == Kind::Probe
                        && f.run_id == self.run_id
                        && f.seq < self.counts.sent =>
                {
                    match self.returned.see(f.seq) {
                        Seen::New { late } => {
                            self.counts.returned += 1;
                            self.counts.reordered += u64::from(late);
                            let rtt = now.saturating_sub(f.sent_tsc);
                            self.rtt_max = self.rtt_max.max(rtt);
                            self.rtt_sum += rtt;
                            self.rtt_count += 1;
                        }
                        Seen::Duplicate => self.counts.duplicates += 1,
                        Seen::TooOld => self.counts.reordered += 1,
                    }
                }
                Ok(f) if f.kind == Kind::Peer => {
                    self.counts.from_peer += 1;
                    match self.peer_next {
                        Some(next) if f.seq > next => self.counts.peer_gaps += f.seq - next,
                        _ => {}
                    }
                    self.peer_next = Some(self.peer_next.map_or(f.seq + 1, |n| n.max(f.seq + 1)));
                }
                // Our own broadcasts coming back unechoed, other runs'
                // frames, damaged frames, other protocols.
                Ok(_) | Err(FrameError::Foreign | FrameError::Short | FrameError::BadChecksum) => {
                    self.counts.foreign += 1
                }
            }
        }
        any
    }
}

#[cfg(test)]
mod tests;

//! The disk workload (`tern.test=disk`), over any [`BlockDevice`].
//!
//! - `write` mode: `tern.passes` passes over blocks `1..=blocks`, each
//!   block written as a self-checking 4 KiB block of the pass's generation
//!   ([`format`]) at queue depth `tern.qd`. Every acknowledged write is
//!   remembered (one generation per block); a pass ends, or a `stop` ends
//!   it early after the requests in flight complete, with a flush, the
//!   header block (block 0: run id, generation, how far the pass got) and a
//!   second flush, so a later boot can verify from the disk alone.
//! - `verify` mode: reads the header and checks every block against it.
//! - `bench` mode: sequential 1 MiB writes and reads, random 4 KiB reads and
//!   writes, each for `tern.bench_ms`, at `tern.qd`.
//!
//! Then it serves commands: `verify` (against this boot's writes, or the
//! header if it wrote nothing), `corrupt page=N` (damages block N on the
//! disk behind the workload's back), `stop`, `reboot`.

pub mod format;
mod pump;

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use crate::clock::ticks_to_us;
use crate::command::Command;
use crate::event::{
    Corrupted, DiskBench, DiskInfo, DiskPhase, DiskVerified, DiskWritten, ErrorKind, VerifySource,
};
use crate::page::{mix, Corruption};
use crate::params::{Config, DiskMode};
use crate::platform::Platform;
use crate::poller::CommandPoller;
use crate::rng::Rng;
use crate::run::{emit, emit_error};
use crate::verify::VerifyReport;
use crate::virtio::blk::{BlkStatus, BlockDevice, BlockOp, SECTOR};

use format::{Header, BLOCK_BYTES};
pub use pump::Pumped;
use pump::{Engine, Request};

const SECTORS_PER_BLOCK: u64 = BLOCK_BYTES as u64 / SECTOR;

/// Data blocks the workload uses on a disk of `sectors`: `disk_mib` worth
/// (0: all of it), after the header block.
pub fn blocks_for(sectors: u64, disk_mib: u32) -> u64 {
    let on_disk = (sectors / SECTORS_PER_BLOCK).saturating_sub(1);
    match disk_mib {
        0 => on_disk,
        mib => on_disk.min(u64::from(mib) * (1 << 20) / BLOCK_BYTES as u64),
    }
}

/// The bytes per slot a mode needs: 1 MiB requests for the benchmark,
/// single blocks otherwise.
pub fn slot_bytes_for(mode: DiskMode) -> usize {
    match mode {
        DiskMode::Bench => 1 << 20,
        DiskMode::Write | DiskMode::Verify => BLOCK_BYTES,
    }
}

pub struct DiskRun<'a, P: Platform, D: BlockDevice> {
    engine: Engine<'a, P>,
    config: Config,
    dev: D,
    /// Generation of each data block's last acknowledged write in this boot
    /// (index = block - 1; 0: not written).
    table: &'a [AtomicU32],
    blocks: u64,
    run_id: u64,
    /// The last pass this boot started (0: none).
    generation: u32,
    last_written: Option<DiskWritten>,
}

impl<'a, P: Platform, D: BlockDevice> DiskRun<'a, P, D> {
    /// `table` needs one entry per data block ([`blocks_for`]).
    pub fn new(platform: &'a P, config: Config, dev: D, table: &'a [AtomicU32]) -> Self {
        let blocks = blocks_for(dev.sectors(), config.disk_mib).min(table.len() as u64);
        let hz = platform.tsc_hz();
        DiskRun {
            engine: Engine::new(
                platform,
                CommandPoller::new(hz, config.poll_ms),
                hz / 1000 * u64::from(config.tick_ms),
            ),
            config,
            run_id: mix(platform.boot_tsc() ^ mix(config.seed)),
            dev,
            table,
            blocks,
            generation: 0,
            last_written: None,
        }
    }

    fn p(&self) -> &'a P {
        self.engine.platform
    }

    fn qd(&self) -> usize {
        self.config.qd as usize
    }

    /// What the `disk` event says.
    pub fn info(&self, base: u64, queue_size: u16) -> DiskInfo {
        DiskInfo {
            base,
            sectors: self.dev.sectors(),
            read_only: self.dev.read_only(),
            flush: self.dev.has_flush(),
            queue_size,
            slots: self.dev.slots().min(self.qd()) as u32,
            slot_bytes: self.dev.slot_bytes() as u32,
            blocks: self.blocks,
        }
    }

    /// Runs the configured mode, then serves commands until `reboot`.
    pub fn run(mut self) -> ! {
        self.start();
        loop {
            let p = self.p();
            if self.engine.commands.due(p.tsc()) {
                let mut commands = [None; 8];
                let mut n = 0;
                self.engine.commands.poll(p, |c| {
                    if n < commands.len() {
                        commands[n] = Some(c);
                        n += 1;
                    }
                });
                for command in commands.into_iter().flatten() {
                    self.execute(command);
                }
            }
            core::hint::spin_loop();
        }
    }

    /// The configured mode: write passes, a verify from the disk, or the
    /// benchmark.
    pub fn start(&mut self) {
        match self.config.disk_mode {
            DiskMode::Write => {
                let passes = self.config.passes;
                // A stop seen during a pass (its header included) ends the
                // passes; that pass's `disk_written` says `stopped`.
                while (passes == 0 || self.generation < passes) && !self.engine.stop_requested {
                    self.write_pass();
                }
            }
            DiskMode::Verify => self.verify_from_disk(),
            DiskMode::Bench => self.bench(),
        }
        // A stop that came during the mode has been acted on.
        self.engine.stop_requested = false;
    }

    /// Runs one host command.
    pub fn execute(&mut self, command: Command) {
        let p = self.p();
        match command {
            Command::Verify if self.generation > 0 => self.verify_memory(),
            Command::Verify => self.verify_from_disk(),
            Command::Corrupt { page, how } => self.corrupt(page, how),
            Command::Stop => match self.last_written {
                Some(w) => emit(p, &DiskWritten { stopped: true, ..w }),
                None => emit_error(
                    p,
                    ErrorKind::Disk,
                    format_args!("stop: nothing was written in this boot"),
                ),
            },
            Command::Reboot => p.reboot(),
            Command::Fault => p.fault(),
        }
    }

    /// One request, synchronously (header, flush, corruption).
    fn single(
        &mut self,
        phase: DiskPhase,
        request: Request,
        fill: impl FnOnce(&[AtomicU64]),
    ) -> (Pumped, BlkStatus) {
        let mut fill = Some(fill);
        let mut status = BlkStatus::Other(0xff);
        let pumped = self.engine.pump(
            &mut self.dev,
            phase,
            1,
            1,
            None,
            false,
            |_, data| {
                if let Some(f) = fill.take() {
                    f(data);
                }
                request
            },
            |_, _, s| status = s,
        );
        (pumped, status)
    }

    fn flush(&mut self) -> bool {
        if !self.dev.has_flush() {
            return true;
        }
        let (_, status) = self.single(DiskPhase::Write, (BlockOp::Flush, 0, 0), |_| {});
        status == BlkStatus::Ok
    }

    /// One write pass (the next generation), then flush, header, flush.
    fn write_pass(&mut self) -> Pumped {
        self.generation += 1;
        let (generation, run_id, table, p) = (self.generation, self.run_id, self.table, self.p());
        let qd = self.qd();
        let mut first_error = true;
        let pumped = self.engine.pump(
            &mut self.dev,
            DiskPhase::Write,
            qd,
            self.blocks,
            None,
            true,
            |i, data| {
                format::fill_block(data, run_id, i + 1, generation);
                (BlockOp::Write, (i + 1) * SECTORS_PER_BLOCK, BLOCK_BYTES)
            },
            |i, _, status| {
                if status == BlkStatus::Ok {
                    table[i as usize].store(generation, Relaxed);
                } else if core::mem::take(&mut first_error) {
                    emit_error(
                        p,
                        ErrorKind::Disk,
                        format_args!("write of block {} failed: status {}", i + 1, status.name()),
                    );
                }
            },
        );
        let cursor = 1 + pumped.issued;
        let mut errors = pumped.errors;
        let header = Header {
            run_id,
            blocks: self.blocks,
            generation,
            cursor,
            errors,
        };
        let durable = self.flush()
            && {
                let (_, status) =
                    self.single(DiskPhase::Write, (BlockOp::Write, 0, BLOCK_BYTES), |data| {
                        header.write(data)
                    });
                status == BlkStatus::Ok
            }
            && self.flush();
        if !durable {
            errors += 1;
            emit_error(
                p,
                ErrorKind::Disk,
                format_args!("the header of pass {generation} did not reach the disk"),
            );
        }
        let hz = p.tsc_hz();
        let written = DiskWritten {
            generation,
            blocks: pumped.issued,
            cursor,
            complete: pumped.issued == self.blocks,
            stopped: self.engine.stop_requested,
            errors,
            elapsed_ms: pumped.elapsed_us(hz) / 1000,
            mib_s_x100: pumped.mib_s_x100(hz),
        };
        emit(p, &written);
        self.last_written = Some(written);
        pumped
    }

    /// Reads blocks `1..=blocks` and checks them against `expected(block)`
    /// (0: skip), for run `run_id`.
    fn check_blocks(
        &mut self,
        blocks: u64,
        run_id: u64,
        expected: impl Fn(u64) -> u32,
    ) -> (VerifyReport, Pumped) {
        let mut report = VerifyReport::default();
        let p = self.p();
        let qd = self.qd();
        let mut first_error = true;
        let pumped = self.engine.pump(
            &mut self.dev,
            DiskPhase::Verify,
            qd,
            blocks,
            None,
            false,
            |i, _| (BlockOp::Read, (i + 1) * SECTORS_PER_BLOCK, BLOCK_BYTES),
            |i, data, status| {
                let block = i + 1;
                let want = expected(block);
                if want == 0 {
                    return;
                }
                if status != BlkStatus::Ok {
                    if core::mem::take(&mut first_error) {
                        emit_error(
                            p,
                            ErrorKind::Disk,
                            format_args!("read of block {block} failed: status {}", status.name()),
                        );
                    }
                    return;
                }
                report.record(block, want, format::check_block(data, run_id, block, want));
            },
        );
        (report, pumped)
    }

    fn verify_memory(&mut self) {
        let table = self.table;
        let (report, pumped) = self.check_blocks(self.blocks, self.run_id, |b| {
            table[(b - 1) as usize].load(Relaxed)
        });
        self.report(
            VerifySource::Memory,
            self.run_id,
            self.generation,
            report,
            pumped,
        );
    }

    fn verify_from_disk(&mut self) {
        let mut found = None;
        let (_, status) = self.single(DiskPhase::Verify, (BlockOp::Read, 0, BLOCK_BYTES), |_| {});
        if status == BlkStatus::Ok {
            // Slot 0 served the single request; its buffer holds block 0.
            found = Header::read(self.dev.data(0));
        }
        let Some(h) = found else {
            emit_error(
                self.p(),
                ErrorKind::Disk,
                format_args!(
                    "no tern disk header on block 0 (read status {}): nothing to verify",
                    status.name()
                ),
            );
            return;
        };
        let blocks = h.blocks.min(blocks_for(self.dev.sectors(), 0));
        let (report, pumped) = self.check_blocks(blocks, h.run_id, |b| h.expected(b));
        self.report(VerifySource::Disk, h.run_id, h.generation, report, pumped);
    }

    fn report(
        &self,
        source: VerifySource,
        run_id: u64,
        generation: u32,
        report: VerifyReport,
        pumped: Pumped,
    ) {
        let hz = self.p().tsc_hz();
        emit(
            self.p(),
            &DiskVerified {
                source,
                run_id,
                generation,
                report,
                elapsed_us: pumped.elapsed_us(hz),
                mib_s_x100: pumped.mib_s_x100(hz),
            },
        );
    }

    /// Overwrites block `block` on the disk without telling the table.
    fn corrupt(&mut self, block: u64, how: Corruption) {
        let p = self.p();
        let generation = match block
            .checked_sub(1)
            .and_then(|i| self.table.get(i as usize))
        {
            Some(g) if g.load(Relaxed) != 0 => g.load(Relaxed),
            _ => {
                emit_error(
                    p,
                    ErrorKind::Command,
                    format_args!("corrupt: block {block} was not written in this boot"),
                );
                return;
            }
        };
        let run_id = self.run_id;
        let fill = |data: &[AtomicU64]| match how {
            Corruption::Zero => data.iter().for_each(|w| w.store(0, Relaxed)),
            Corruption::Stale => format::fill_block(data, run_id, block, generation - 1),
            Corruption::Misplaced => format::fill_block(data, run_id, block + 1, generation),
            Corruption::Torn => {
                format::fill_sectors(data, run_id, block, generation, 0..4);
                format::fill_sectors(data, run_id, block, generation.wrapping_add(1), 4..8);
            }
        };
        let (_, status) = self.single(
            DiskPhase::Write,
            (BlockOp::Write, block * SECTORS_PER_BLOCK, BLOCK_BYTES),
            fill,
        );
        if status == BlkStatus::Ok && self.flush() {
            emit(p, &Corrupted { page: block, how });
        } else {
            emit_error(
                p,
                ErrorKind::Disk,
                format_args!(
                    "corrupt: the write of block {block} failed: status {}",
                    status.name()
                ),
            );
        }
    }

    /// Throughput: sequential big requests, then random 4 KiB ones, each
    /// phase for `bench_ms`, over the workload's area.
    fn bench(&mut self) {
        let p = self.p();
        let hz = p.tsc_hz();
        let qd = self.qd();
        let area = self.blocks * SECTORS_PER_BLOCK; // sectors
        let big = (self.dev.slot_bytes() as u64 / SECTOR).min(area).max(1);
        let phases = [
            (DiskPhase::SeqWrite, BlockOp::Write, big),
            (DiskPhase::SeqRead, BlockOp::Read, big),
            (DiskPhase::RandRead, BlockOp::Read, SECTORS_PER_BLOCK),
            (DiskPhase::RandWrite, BlockOp::Write, SECTORS_PER_BLOCK),
        ];
        let mut rng = Rng::new(self.config.seed, 7);
        for (phase, op, sectors) in phases {
            let requests_in_area = (area / sectors).max(1);
            let random = matches!(phase, DiskPhase::RandRead | DiskPhase::RandWrite);
            let deadline = p.tsc() + hz / 1000 * u64::from(self.config.bench_ms);
            let mut first_error = true;
            let pumped = self.engine.pump(
                &mut self.dev,
                phase,
                qd,
                u64::MAX,
                Some(deadline),
                true,
                |i, _| {
                    let n = if random {
                        rng.below(requests_in_area)
                    } else {
                        i % requests_in_area
                    };
                    (
                        op,
                        SECTORS_PER_BLOCK + n * sectors,
                        (sectors * SECTOR) as usize,
                    )
                },
                |_, _, status| {
                    if status != BlkStatus::Ok && core::mem::take(&mut first_error) {
                        emit_error(
                            p,
                            ErrorKind::Disk,
                            format_args!("{phase}: request failed: status {}", status.name()),
                        );
                    }
                },
            );
            emit(
                p,
                &DiskBench {
                    phase,
                    qd: qd.min(self.dev.slots()) as u32,
                    request_bytes: sectors * SECTOR,
                    requests: pumped.issued,
                    bytes: pumped.bytes,
                    elapsed_us: pumped.elapsed_us(hz),
                    mib_s_x100: pumped.mib_s_x100(hz),
                    iops: pumped.iops(hz),
                    max_latency_us: ticks_to_us(pumped.max_latency, hz),
                    errors: pumped.errors,
                },
            );
            if pumped.stopped {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests;

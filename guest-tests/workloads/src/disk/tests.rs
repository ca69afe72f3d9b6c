use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use super::*;
use crate::event::Event;
use crate::page::Reason;
use crate::testutil::TestPlatform;
use crate::virtio::blk::{Completion, SubmitError};

/// A RAM disk that completes requests in reverse order of submission, a
/// few at a time, like a device with requests in flight.
struct MemDisk<'d> {
    words: &'d [AtomicU64],
    slot_bytes: usize,
    buffers: Vec<Vec<AtomicU64>>,
    queued: Vec<(usize, BlockOp, u64, usize)>,
    done: Vec<Completion>,
    read_only: bool,
}

impl<'d> MemDisk<'d> {
    fn new(words: &'d [AtomicU64], slots: usize, slot_bytes: usize) -> Self {
        let buffers = (0..slots)
            .map(|_| (0..slot_bytes / 8).map(|_| AtomicU64::new(0)).collect())
            .collect();
        MemDisk {
            words,
            slot_bytes,
            buffers,
            queued: Vec::new(),
            done: Vec::new(),
            read_only: false,
        }
    }
}

impl BlockDevice for MemDisk<'_> {
    fn sectors(&self) -> u64 {
        self.words.len() as u64 / 64
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn has_flush(&self) -> bool {
        true
    }
    fn slots(&self) -> usize {
        self.buffers.len()
    }
    fn slot_bytes(&self) -> usize {
        self.slot_bytes
    }
    fn data(&self, slot: usize) -> &[AtomicU64] {
        &self.buffers[slot]
    }
    fn submit(
        &mut self,
        slot: usize,
        op: BlockOp,
        sector: u64,
        bytes: usize,
    ) -> Result<(), SubmitError> {
        if sector * 64 + bytes as u64 / 8 > self.words.len() as u64 {
            return Err(SubmitError::BadRange);
        }
        self.queued.push((slot, op, sector, bytes));
        Ok(())
    }
    fn kick(&mut self) {
        for (slot, op, sector, bytes) in self.queued.drain(..).rev() {
            let disk = &self.words[(sector * 64) as usize..][..bytes / 8];
            let buf = &self.buffers[slot];
            let status = match op {
                BlockOp::Write if self.read_only => BlkStatus::IoErr,
                BlockOp::Write => {
                    disk.iter()
                        .zip(buf.iter())
                        .for_each(|(d, b)| d.store(b.load(Relaxed), Relaxed));
                    BlkStatus::Ok
                }
                BlockOp::Read => {
                    disk.iter()
                        .zip(buf.iter())
                        .for_each(|(d, b)| b.store(d.load(Relaxed), Relaxed));
                    BlkStatus::Ok
                }
                BlockOp::Flush => BlkStatus::Ok,
            };
            self.done.push(Completion { slot, status });
        }
    }
    fn poll(&mut self) -> Option<Completion> {
        self.done.pop()
    }
}

fn config(extra: &str) -> Config {
    Config::parse(&format!("tern.test=disk tern.qd=4 tern.disk_mib=1 {extra}")).unwrap()
}

const DISK_WORDS: usize = 2 << 20 >> 3; // 2 MiB

fn table() -> Vec<AtomicU32> {
    (0..1024).map(|_| AtomicU32::new(0)).collect()
}

fn blank_disk() -> Vec<AtomicU64> {
    (0..DISK_WORDS).map(|_| AtomicU64::new(0)).collect()
}

/// The `disk_verify` among `events`.
fn verified(events: Vec<Event>) -> DiskVerified {
    events
        .into_iter()
        .find_map(|e| {
            if let Event::DiskVerify(v) = e {
                Some(v)
            } else {
                None
            }
        })
        .expect("a disk_verify event")
}

/// What a fresh boot in verify mode finds on `disk`.
fn verify_after_reboot(disk: &[AtomicU64]) -> DiskVerified {
    let p = TestPlatform::new(1000);
    let t = table();
    let mut after = DiskRun::new(
        &p,
        config("tern.disk_mode=verify"),
        MemDisk::new(disk, 4, 4096),
        &t,
    );
    after.start();
    verified(p.take_events())
}

#[test]
fn writes_verify_from_memory_and_from_the_disk_alone() {
    let disk = blank_disk();
    let p = TestPlatform::new(1000);
    let t = table();
    let mut run = DiskRun::new(
        &p,
        config("tern.passes=2"),
        MemDisk::new(&disk, 4, 4096),
        &t,
    );
    assert_eq!(run.info(0, 8).blocks, 256, "1 MiB of 4 KiB blocks");
    run.start();
    let written: Vec<DiskWritten> = p
        .take_events()
        .into_iter()
        .filter_map(|e| {
            if let Event::DiskWritten(w) = e {
                Some(w)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(written.len(), 2);
    assert_eq!(
        (
            written[1].generation,
            written[1].blocks,
            written[1].cursor,
            written[1].complete,
            written[1].errors
        ),
        (2, 256, 257, true, 0)
    );

    run.execute(Command::Verify);
    let v = verified(p.take_events());
    assert_eq!(
        (v.source, v.report.pages, v.report.ok(), v.generation),
        (VerifySource::Memory, 256, true, 2)
    );

    run.execute(Command::Corrupt {
        page: 17,
        how: Corruption::Torn,
    });
    run.execute(Command::Verify);
    let events = p.take_events();
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::Corrupted(c) if c.page == 17)));
    let v = verified(events);
    let bad = v.report.first_bad.unwrap();
    assert_eq!(
        (v.report.bad, bad.page, bad.damage.reason, bad.damage.line),
        (1, 17, Reason::Torn, Some(4))
    );

    // "Reboot": a new run that only has the disk.
    let v = verify_after_reboot(&disk);
    assert_eq!(
        (v.source, v.generation, v.report.pages, v.report.bad),
        (VerifySource::Disk, 2, 256, 1)
    );
    assert_eq!(v.report.first_bad.unwrap().page, 17);
}

#[test]
fn stop_mid_pass_leaves_a_header_that_verifies() {
    let disk = blank_disk();
    // 0.1 ms per TSC read and a 1 ms poll: the stop is seen early in the
    // second pass.
    let p = TestPlatform::new(100_000);
    let t = table();
    let mut run = DiskRun::new(
        &p,
        config("tern.passes=0 tern.poll_ms=1"),
        MemDisk::new(&disk, 4, 4096),
        &t,
    );
    assert!(!run.write_pass().stopped);
    p.send("stop");
    assert!(run.write_pass().stopped);
    let w = run.last_written.unwrap();
    assert_eq!(w.generation, 2);
    assert!(!w.complete && w.stopped && w.cursor < 257, "{w:?}");
    // With passes left, a stopped run starts no other.
    run.start();
    assert_eq!(run.last_written.unwrap().generation, 2);

    let v = verify_after_reboot(&disk);
    assert!(v.report.ok(), "{v:?}");
    assert_eq!(
        v.report.pages, 256,
        "blocks before the cursor at 2, the rest at 1"
    );
}

#[test]
fn a_read_only_disk_reports_its_failed_writes() {
    let disk = blank_disk();
    let p = TestPlatform::new(1000);
    let t = table();
    let mut dev = MemDisk::new(&disk, 4, 4096);
    dev.read_only = true;
    let mut run = DiskRun::new(&p, config(""), dev, &t);
    run.start();
    let events = p.take_events();
    let errors: Vec<&str> = events
        .iter()
        .filter_map(|e| {
            if let Event::Error(e) = e {
                Some(e.message.as_str())
            } else {
                None
            }
        })
        .collect();
    assert!(
        errors
            .iter()
            .any(|m| m.contains("write of block") && m.contains("ioerr")),
        "{errors:?}"
    );
    let Some(Event::DiskWritten(w)) = events.iter().find(|e| matches!(e, Event::DiskWritten(_)))
    else {
        panic!()
    };
    assert_eq!(w.errors, 256 + 1, "every block and the header");
    // Nothing was acknowledged, so nothing is expected.
    run.execute(Command::Verify);
    let v = verified(p.take_events());
    assert_eq!(v.report.pages, 0);
}

#[test]
fn verify_without_a_header_is_an_error() {
    let disk = blank_disk();
    let p = TestPlatform::new(1000);
    let t = table();
    let mut run = DiskRun::new(
        &p,
        config("tern.disk_mode=verify"),
        MemDisk::new(&disk, 4, 4096),
        &t,
    );
    run.start();
    let events = p.take_events();
    assert!(events.iter().any(|e| matches!(e, Event::Error(e) if e.kind == "disk" && e.message.contains("no tern disk header"))));
    assert!(!events.iter().any(|e| matches!(e, Event::DiskVerify(_))));
}

#[test]
fn bench_reports_every_phase() {
    let disk = blank_disk();
    let p = TestPlatform::new(10_000);
    let t = table();
    let mut run = DiskRun::new(
        &p,
        config("tern.disk_mode=bench tern.bench_ms=2"),
        MemDisk::new(&disk, 4, 64 << 10),
        &t,
    );
    run.start();
    let benches: Vec<DiskBench> = p
        .take_events()
        .into_iter()
        .filter_map(|e| {
            if let Event::DiskBench(b) = e {
                Some(b)
            } else {
                None
            }
        })
        .collect();
    let phases: Vec<DiskPhase> = benches.iter().map(|b| b.phase).collect();
    assert_eq!(
        phases,
        [
            DiskPhase::SeqWrite,
            DiskPhase::SeqRead,
            DiskPhase::RandRead,
            DiskPhase::RandWrite
        ]
    );
    assert_eq!(
        (benches[0].request_bytes, benches[2].request_bytes),
        (64 << 10, 4096)
    );
    assert!(
        benches
            .iter()
            .all(|b| b.requests > 0 && b.errors == 0 && b.bytes == b.requests * b.request_bytes),
        "{benches:?}"
    );
}

#[test]
fn area_sizes() {
    assert_eq!(blocks_for(131072, 0), 16383);
    assert_eq!(blocks_for(131072, 16), 4096);
    assert_eq!(blocks_for(131072, 1024), 16383);
    assert_eq!(blocks_for(7, 0), 0);
}

/// `disk_tick` keeps its period when each pass is shorter than it (a fast
/// disk): the interval spans passes instead of restarting with each.
#[test]
fn ticks_keep_their_period_across_short_passes() {
    use crate::platform::Platform;
    let disk = blank_disk();
    let p = TestPlatform::new(1000);
    let t = table();
    let mut run = DiskRun::new(
        &p,
        config("tern.passes=40 tern.tick_ms=1"),
        MemDisk::new(&disk, 4, 4096),
        &t,
    );
    let begin = p.tsc();
    run.start();
    let elapsed = p.tsc() - begin;
    let events = p.take_events();
    let passes = events
        .iter()
        .filter(|e| matches!(e, Event::DiskWritten(_)))
        .count();
    let ticks = events
        .iter()
        .filter(|e| matches!(e, Event::DiskTick(_)))
        .count() as u64;
    let period = p.tsc_hz() / 1000;
    assert_eq!(passes, 40);
    assert!(
        elapsed / (passes as u64) < period,
        "a pass must be shorter than a tick for this test"
    );
    assert!(
        ticks + 1 >= elapsed / period,
        "{ticks} ticks in {} periods",
        elapsed / period
    );
}

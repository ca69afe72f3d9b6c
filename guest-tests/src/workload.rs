//! How the runner talks to each of the test guest's workloads: what marks
//! the steady state, what counts as a tick, and how to ask for the final
//! check.
//!
//! | workload        | set up            | ticks        | check                         |
//! |-----------------|-------------------|--------------|-------------------------------|
//! | `idle`, `dirtier` | `started`, `baseline` | `tick` (per vCPU) | `verify` → `verify` (pages) |
//! | `disk`          | `disk`            | `disk_tick`  | `stop` → `disk_written`, then `verify` → `disk_verify` (blocks) |
//!
//! For the disk workload a tick's "work" is the bytes it wrote and its
//! "gap" is its longest request latency, so the same analysis gives the
//! disk throughput retained and the longest I/O stall.

use std::time::Duration;

use tern_workloads::command::Command as GuestCommand;
use tern_workloads::event::{Event, Tick};

use crate::analysis::{Side, TickAt};
use crate::console::GuestLine;
use crate::error::{Error, Result};
use crate::verifier::VerifySummary;
use crate::vmm::VmmProcess;

const SETUP_TIMEOUT: Duration = Duration::from_secs(120);
const TICK_TIMEOUT: Duration = Duration::from_secs(15);
const VERIFY_TIMEOUT: Duration = Duration::from_secs(120);

/// Which protocol the guest speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadKind {
    /// `idle` and `dirtier`: stall-meter ticks, a memory working set.
    Memory,
    /// `disk`: virtio-blk writes, disk ticks, a block working set.
    Disk,
}

impl WorkloadKind {
    /// From `tern.test`.
    pub fn of(test: &str) -> WorkloadKind {
        if test == "disk" {
            WorkloadKind::Disk
        } else {
            WorkloadKind::Memory
        }
    }

    /// Waits until the workload runs; returns the size of what the final
    /// check must cover (pages, or blocks).
    pub fn wait_running(self, vm: &mut VmmProcess) -> Result<u64> {
        match self {
            WorkloadKind::Memory => {
                let pages =
                    vm.console
                        .wait_event("the started event", SETUP_TIMEOUT, |e| match e {
                            Event::Started(s) => Some(s.pages),
                            _ => None,
                        })?;
                vm.console
                    .wait_event("the baseline event", TICK_TIMEOUT, |e| {
                        matches!(e, Event::Baseline(_)).then_some(())
                    })?;
                Ok(pages)
            }
            WorkloadKind::Disk => {
                vm.console
                    .wait_event("the disk event", SETUP_TIMEOUT, |e| match e {
                        Event::Disk(d) => Some(d.blocks),
                        _ => None,
                    })
            }
        }
    }

    /// Waits for `n` ticks (of the lowest-numbered vCPU that ticks; for the
    /// disk, disk ticks or finished passes).
    pub fn wait_ticks(self, vm: &mut VmmProcess, n: u32) -> Result<()> {
        let mut cpu = None;
        for _ in 0..n {
            vm.console
                .wait_event("a tick", TICK_TIMEOUT, |e| match (self, e) {
                    (WorkloadKind::Memory, Event::Tick(t))
                        if *cpu.get_or_insert(t.cpu) == t.cpu =>
                    {
                        Some(())
                    }
                    // A pass shorter than a tick prints no disk_tick, only its
                    // disk_written: either shows the disk is being written.
                    (WorkloadKind::Disk, Event::DiskTick(_) | Event::DiskWritten(_)) => Some(()),
                    _ => None,
                })?;
        }
        Ok(())
    }

    /// The ticks among `lines`, as analysis samples.
    pub fn ticks(self, lines: &[GuestLine], side: Side, tick_ms: u64) -> Vec<TickAt> {
        lines
            .iter()
            .filter_map(|l| {
                let tick = match (self, l.event()?) {
                    (WorkloadKind::Memory, Event::Tick(t)) => *t,
                    (WorkloadKind::Disk, Event::DiskTick(d)) => Tick {
                        cpu: 0,
                        seq: d.seq,
                        tsc: 0,
                        clock_ns: None,
                        interval_us: tick_ms * 1000,
                        work: d.bytes,
                        pages: 0,
                        dirty_mib_s_x100: 0,
                        max_gap_us: d.max_latency_us,
                        stalled_us: 0,
                        excluded_us: 0,
                        busy_x100: None,
                        rate_x100: None,
                        clock: tern_workloads::clock::ClockStatus::Ok,
                        drift_us: None,
                    },
                    _ => return None,
                };
                Some(TickAt {
                    at_ms: l.at_ms,
                    side,
                    tick,
                })
            })
            .collect()
    }

    /// The final check on `vm`: the guest's own verification of every page
    /// (or block) it wrote. `before_check` runs once the workload is ready
    /// for it (the disk workload stopped writing), e.g. to damage something
    /// on purpose.
    pub fn check(
        self,
        vm: &mut VmmProcess,
        side: Side,
        before_check: impl FnOnce(&mut VmmProcess) -> Result<()>,
    ) -> Result<VerifySummary> {
        vm.console.skip_to_end();
        if self == WorkloadKind::Disk {
            vm.send_line(&GuestCommand::Stop.to_string())?;
            vm.console
                .wait_event("the disk_written event after stop", VERIFY_TIMEOUT, |e| {
                    matches!(e, Event::DiskWritten(w) if w.stopped).then_some(())
                })?;
        }
        before_check(vm)?;
        vm.console.skip_to_end();
        vm.send_line(&GuestCommand::Verify.to_string())?;
        match self {
            WorkloadKind::Memory => {
                vm.console
                    .wait_event("the verify event", VERIFY_TIMEOUT, |e| match e {
                        Event::Verify(v) => {
                            Some(VerifySummary::from_report(side, &v.report, v.elapsed_us))
                        }
                        _ => None,
                    })
            }
            WorkloadKind::Disk => {
                vm.console
                    .wait_event("the disk_verify event", VERIFY_TIMEOUT, |e| match e {
                        Event::DiskVerify(v) => {
                            Some(VerifySummary::from_report(side, &v.report, v.elapsed_us))
                        }
                        _ => None,
                    })
            }
        }
    }
}

/// Damages block `block` of the disk image at `path` from the host (every
/// byte of it flipped), behind the guest's back.
pub fn corrupt_disk_block(path: &std::path::Path, block: u64) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let what = || format!("corrupting block {block} of {}", path.display());
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(what(), e))?;
    let mut data = vec![0u8; 4096];
    f.read_exact_at(&mut data, block * 4096)
        .map_err(|e| Error::io(what(), e))?;
    for b in &mut data {
        *b = !*b;
    }
    f.write_all_at(&data, block * 4096)
        .and_then(|()| f.sync_data())
        .map_err(|e| Error::io(what(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disk_block_is_flipped_in_place() {
        let dir = crate::workdir::WorkDir::create("corrupt-test").unwrap();
        let p = dir.path().join("disk.img");
        std::fs::write(&p, vec![0x0fu8; 4 * 4096]).unwrap();
        corrupt_disk_block(&p, 2).unwrap();
        let data = std::fs::read(&p).unwrap();
        assert!(data[..2 * 4096].iter().all(|&b| b == 0x0f));
        assert!(data[2 * 4096..3 * 4096].iter().all(|&b| b == 0xf0));
        assert!(data[3 * 4096..].iter().all(|&b| b == 0x0f));
        assert!(corrupt_disk_block(&p, 9).is_err());
        assert_eq!(WorkloadKind::of("disk"), WorkloadKind::Disk);
        assert_eq!(WorkloadKind::of("dirtier"), WorkloadKind::Memory);
    }
}

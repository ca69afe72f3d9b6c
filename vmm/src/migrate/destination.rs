//! The destination side: `tern run --incoming`. Implements the receiver's
//! `DestinationHost` on a freshly built (not booted) machine.

use std::sync::Arc;
use std::time::Duration;

use kvm_ioctls::VcpuFd;
use migration::protocol::messages::{zero_map_has, Hello, PAGE_SIZE};
use migration::receiver::DestinationHost;
use vm_memory::{Bytes, GuestAddress};

use super::guest_state::GuestState;
use super::source::hello;
use crate::arch::{cpuid, msr};
use crate::machine::Machine;
use crate::vstate::kvmclock::{self, realtime_ns};
use crate::vstate::memory::MemSlot;
use crate::vstate::vcpu::{state, Target};

/// Longest gap between save and restore the clocks are advanced by; beyond
/// it the hosts' clocks are not trusted to agree.
const MAX_CLOCK_ADVANCE: Duration = Duration::from_secs(60);

/// A machine waiting for its guest.
pub struct TernDestination {
    machine: Arc<Machine>,
    fds: Option<Vec<VcpuFd>>,
    /// Per region: pages that hold data from the stream (the rest are still
    /// untouched zero memory, so a zero marker needs no write).
    written: Vec<Vec<u64>>,
}

impl TernDestination {
    /// Wraps a machine built with the same configuration as the source's.
    pub fn new(machine: Arc<Machine>, fds: Vec<VcpuFd>) -> Self {
        let written = machine
            .dirty
            .slots()
            .iter()
            .map(|s| vec![0u64; s.pages().div_ceil(64) as usize])
            .collect();
        TernDestination {
            machine,
            fds: Some(fds),
            written,
        }
    }
}

/// Delays before each announcement of the guest on its networks after it
/// resumed here (QEMU's default schedule: five rounds over half a second, in
/// case the first frames are lost or a switch is slow to learn).
const ANNOUNCE_DELAYS_MS: [u64; 5] = [0, 50, 100, 150, 200];

/// Announces the guest's NICs from a thread of its own, on the schedule above.
fn announce_guest(machine: &Arc<Machine>) {
    let devices = machine.devices.clone();
    let spawned = std::thread::Builder::new()
        .name("tern-announce".into())
        .spawn(move || {
            for ms in ANNOUNCE_DELAYS_MS {
                std::thread::sleep(Duration::from_millis(ms));
                devices.announce_nics();
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot start announcing the guest on its networks: {e}");
    }
}

fn mismatch(what: &str, ours: impl std::fmt::Debug, theirs: impl std::fmt::Debug) -> String {
    format!("configuration mismatch: the source has {what} {theirs:?}, this tern has {ours:?}")
}

impl TernDestination {
    /// The slot of `region`, if pages `first_page..first_page + count` lie in it.
    fn slot_range(&self, region: u32, first_page: u64, count: u32) -> Result<MemSlot, String> {
        let slots = self.machine.dirty.slots();
        let slot = *slots.get(region as usize).ok_or_else(|| {
            format!(
                "page run for memory region {region} (there are {})",
                slots.len()
            )
        })?;
        let end = first_page.saturating_add(u64::from(count));
        if end > slot.pages() {
            return Err(format!(
                "page run {first_page}..{end} beyond region {region} ({} pages)",
                slot.pages()
            ));
        }
        Ok(slot)
    }

    /// Sets the kvmclock: the saved clock advanced by as far as vCPU 0's TSC
    /// has moved on since it was saved, so that the two clocks stay in step
    /// however long the restore took (see `kvmclock`), tied to the real time
    /// that TSC was read at so that nothing between the read and the setting
    /// (a preempted thread) leaves the clock behind its TSC. Without a saved
    /// TSC (`saved_tsc`: value and kHz), the saved clock advanced by the real
    /// time since `saved_at`.
    fn set_clock(
        &self,
        saved: u64,
        saved_tsc: Option<(u64, u32)>,
        saved_at: u64,
    ) -> Result<(), String> {
        let vm = &self.machine.vm;
        let set = |clock, at| vm.set_clock_ns_as_of(clock, at).map_err(|e| e.to_string());
        let Some((saved_tsc, khz)) = saved_tsc else {
            return set(saved, saved_at);
        };
        let fd = self
            .fds
            .as_ref()
            .and_then(|f| f.first())
            .ok_or("no vCPUs to read the TSC of")?;
        let (tsc_now, read_at) = kvmclock::tsc_at_realtime(
            || state::read_msr(fd, 0, msr::MSR_IA32_TSC).map_err(|e| e.to_string()),
            realtime_ns,
        )?;
        let clock = kvmclock::clock_at(saved, saved_tsc, tsc_now, khz);
        set(clock, read_at)?;
        // How far the guest's TSC is from the saved one carried on by the real
        // time since: what setting it missed.
        let due = saved_tsc.wrapping_add(kvmclock::ns_to_tsc_ticks(
            read_at.saturating_sub(saved_at),
            khz,
        ));
        let behind_us =
            i128::from(due.wrapping_sub(tsc_now) as i64) * 1000 / i128::from(khz.max(1));
        log::debug!(
            "restore: kvmclock {clock} ns as of TSC {tsc_now}: saved {saved} ns at TSC {saved_tsc} \
             ({khz} kHz; {} us of real time since the save; set {} us after the TSC read)",
            read_at.saturating_sub(saved_at) / 1000,
            realtime_ns().saturating_sub(read_at) / 1000
        );
        log::debug!("restore: guest TSC {behind_us} us behind real time");
        Ok(())
    }
}

/// The pages of the run `first_page..first_page + count` that `zero_map` marks zero (bit `i` for
/// page `first_page + i`) and `written` says hold data, in order; their `written` bits are
/// cleared. Walks the set bits of `written` only, so an idle guest's runs of zero markers cost
/// a few words each rather than a test per page. `written` must cover the run.
fn take_written_zero_pages(
    written: &mut [u64],
    first_page: u64,
    count: u32,
    zero_map: &[u8],
) -> Vec<u64> {
    let end = first_page + u64::from(count);
    let mut pages = Vec::new();
    let first_word = (first_page / 64) as usize;
    let words = &mut written[first_word..end.div_ceil(64) as usize];
    for (n, word) in words.iter_mut().enumerate() {
        let mut bits = *word;
        while bits != 0 {
            let bit = u64::from(bits.trailing_zeros());
            bits &= bits - 1;
            let page = (first_word + n) as u64 * 64 + bit;
            if page < first_page || page >= end {
                continue;
            }
            if zero_map_has(zero_map, (page - first_page) as u32) {
                *word &= !(1 << bit);
                pages.push(page);
            }
        }
    }
    pages
}

impl DestinationHost for TernDestination {
    fn check(&mut self, theirs: &Hello) -> Result<(), String> {
        let ours = hello(&self.machine);
        if ours.vcpus != theirs.vcpus {
            return Err(mismatch("vCPUs", ours.vcpus, theirs.vcpus));
        }
        if ours.memory != theirs.memory {
            let total = |h: &Hello| h.memory.iter().map(|m| m.size).sum::<u64>();
            return Err(mismatch("memory bytes", total(&ours), total(theirs)));
        }
        if ours.devices.len() != theirs.devices.len() {
            let kinds = |h: &Hello| h.devices.iter().map(|d| d.id.clone()).collect::<Vec<_>>();
            return Err(mismatch("devices", kinds(&ours), kinds(theirs)));
        }
        for (o, t) in ours.devices.iter().zip(&theirs.devices) {
            let mut o = o.clone();
            let mut t = t.clone();
            if o.kind == "virtio-net" && self.machine.devices.mac_from_stream(&o.id) {
                // No MAC configured here: the NIC takes the source's.
                o.settings.retain(|(k, _)| k != "mac");
                t.settings.retain(|(k, _)| k != "mac");
            }
            if o != t {
                return Err(format!(
                    "configuration mismatch: source device {} ({}) {:?} differs from this tern's {} ({}) {:?}",
                    t.id, t.kind, t.settings, o.id, o.kind, o.settings
                ));
            }
        }
        Ok(())
    }

    fn page_data(&mut self, region: u32, first_page: u64, count: u32) -> Result<&mut [u8], String> {
        let slot = self.slot_range(region, first_page, count)?;
        let written = &mut self.written[region as usize];
        for page in first_page..first_page + u64::from(count) {
            written[(page / 64) as usize] |= 1 << (page % 64);
        }
        let len = count as usize * PAGE_SIZE;
        let host = slot.host_addr + first_page * PAGE_SIZE as u64;
        // SAFETY: `slot_range` checked that the pages lie inside the slot, a live mapping of
        // guest memory that `self.machine` owns and keeps for longer than this borrow of
        // `self`. Nothing else touches guest memory before `resume`: the vCPUs have not run
        // and no device is activated before `restore`, and the receiver holds this slice only
        // while it reads the stream into it.
        Ok(unsafe { std::slice::from_raw_parts_mut(host as *mut u8, len) })
    }

    fn zero_pages(
        &mut self,
        region: u32,
        first_page: u64,
        count: u32,
        zero_map: &[u8],
    ) -> Result<(), String> {
        let slot = self.slot_range(region, first_page, count)?;
        let written = &mut self.written[region as usize];
        let zero = [0u8; PAGE_SIZE];
        for page in take_written_zero_pages(written, first_page, count, zero_map) {
            let addr = GuestAddress(slot.guest_addr + page * PAGE_SIZE as u64);
            self.machine
                .mem
                .write_slice(&zero, addr)
                .map_err(|e| format!("zeroing guest page {:#x}: {e}", addr.0))?;
        }
        Ok(())
    }

    fn restore(&mut self, blob: &[u8]) -> Result<(), String> {
        let gs = GuestState::decode(blob)?;
        let fds = self.fds.as_ref().ok_or("vCPUs already started")?;
        if gs.vcpus.len() != fds.len() {
            return Err(format!(
                "state for {} vCPUs, this VM has {}",
                gs.vcpus.len(),
                fds.len()
            ));
        }
        // When vCPU 0's saved TSC was current, in real time; a save longer ago
        // than MAX_CLOCK_ADVANCE counts as that long ago.
        let saved_at = gs
            .saved_at_realtime_ns
            .max(realtime_ns().saturating_sub(MAX_CLOCK_ADVANCE.as_nanos() as u64));
        self.machine
            .vm
            .restore_state(&gs.vm)
            .map_err(|e| e.to_string())?;
        self.machine
            .devices
            .restore_states(&self.machine.vm.fd, &self.machine.mem, &gs.devices)?;
        // vCPU 0's saved TSC and its rate, which the clock is computed from.
        let first_tsc = gs
            .vcpus
            .first()
            .and_then(|v| Some((v.msr(msr::MSR_IA32_TSC)?, v.tsc_khz?)));
        let count = fds.len() as u8;
        for (i, (fd, vs)) in fds.iter().zip(gs.vcpus).enumerate() {
            let id = i as u8;
            fd.set_cpuid2(&cpuid::for_vcpu(&self.machine.cpuid, id, count))
                .map_err(|e| format!("vCPU {id}: cannot set CPUID: {e}"))?;
            let mut vs = vs;
            // The TSC moves on with real time too. KVM takes the value as of
            // the ioctl that sets it, so it is advanced up to now, vCPU by vCPU.
            if let Some(khz) = vs.tsc_khz {
                let since = realtime_ns().saturating_sub(saved_at);
                let ticks = kvmclock::ns_to_tsc_ticks(since, khz);
                for m in vs.msrs.iter_mut().filter(|m| m.0 == msr::MSR_IA32_TSC) {
                    m.1 = m.1.wrapping_add(ticks);
                }
            }
            state::restore(fd, id, &vs).map_err(|e| e.to_string())?;
        }
        self.set_clock(gs.vm.clock.clock, first_tsc, saved_at)
    }

    fn resume(&mut self) -> Result<(), String> {
        let fds = self.fds.take().ok_or("vCPUs already started")?;
        self.machine
            .start_vcpus(fds, Target::Run)
            .map_err(|e| format!("cannot start the vCPUs: {e}"))?;
        announce_guest(&self.machine);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::take_written_zero_pages;

    /// The zero map of a run of `count` pages with the listed pages (run-relative) zero.
    fn zero_map(count: u32, zero: &[u32]) -> Vec<u8> {
        let mut map = vec![0u8; count.div_ceil(8) as usize];
        for &i in zero {
            map[(i / 8) as usize] |= 1 << (i % 8);
        }
        map
    }

    #[test]
    fn only_zero_marked_pages_that_hold_data_are_zeroed() {
        // Pages 3, 70, 100 and 130 hold data; a run of 100 pages from 40 marks 41, 70, 100 and
        // 130 zero: 41 never held data, 3 is outside the run.
        let mut written = vec![0u64; 3];
        for page in [3u64, 70, 100, 130] {
            written[(page / 64) as usize] |= 1 << (page % 64);
        }
        let map = zero_map(100, &[1, 30, 60, 90]);
        assert_eq!(
            take_written_zero_pages(&mut written, 40, 100, &map),
            vec![70, 100, 130]
        );
        // Their bits are cleared, the rest kept; a second pass finds nothing.
        assert_eq!(written, vec![1 << 3, 0, 0]);
        assert!(take_written_zero_pages(&mut written, 40, 100, &map).is_empty());
    }

    #[test]
    fn pages_outside_the_run_or_with_data_in_the_run_are_kept() {
        let mut written = vec![u64::MAX; 4];
        // A run of 8 pages from 62 (crossing a word), pages 62, 64 and 69 zero.
        let map = zero_map(8, &[0, 2, 7]);
        assert_eq!(
            take_written_zero_pages(&mut written, 62, 8, &map),
            vec![62, 64, 69]
        );
        assert_eq!(written[0], !(1 << 62));
        assert_eq!(written[1], !1 & !(1 << 5));
        assert_eq!((written[2], written[3]), (u64::MAX, u64::MAX));
    }
}

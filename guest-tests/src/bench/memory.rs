//! The VMM's own memory: resident set minus the guest memory it touched.
//!
//! The guest's share is the resident part of the mapping(s) the size of
//! guest RAM (tern maps RAM below 3 GiB as one region; QEMU as one RAM
//! block) in `/proc/PID/smaps`; everything else resident is the VMM's.

use std::time::Duration;

use tern_workloads::event::Event;

use crate::artifacts;
use crate::bench::stats::Spread;
use crate::console::RunClock;
use crate::error::{Error, Result};
use crate::report::table::Table;
use crate::vmm::{Hypervisor, VmSpec};
use crate::workdir::WorkDir;

/// Resident memory of a process split into guest RAM and the rest, KiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resident {
    pub total_kib: u64,
    pub guest_kib: u64,
}

impl Resident {
    pub fn overhead_kib(&self) -> u64 {
        self.total_kib.saturating_sub(self.guest_kib)
    }
}

/// Splits the mappings in `smaps` text: those the size of guest RAM (up
/// to 4 MiB more: QEMU over-allocates its RAM block for alignment) count
/// as guest RAM.
pub fn split_smaps(smaps: &str, guest_kib: u64) -> Resident {
    let (mut total, mut guest) = (0, 0);
    let mut size = None;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        match (
            words.next(),
            words.next().and_then(|v| v.parse::<u64>().ok()),
        ) {
            (Some("Size:"), Some(kib)) => size = Some(kib),
            (Some("Rss:"), Some(kib)) => {
                total += kib;
                if size.is_some_and(|s| (guest_kib..=guest_kib + 4096).contains(&s)) {
                    guest += kib;
                }
            }
            _ => {}
        }
    }
    Resident {
        total_kib: total,
        guest_kib: guest,
    }
}

/// Reads `/proc/PID/smaps`.
pub fn resident(pid: u32, guest_mib: u64) -> Result<Resident> {
    let path = format!("/proc/{pid}/smaps");
    let text =
        std::fs::read_to_string(&path).map_err(|e| Error::io(format!("reading {path}"), e))?;
    Ok(split_smaps(&text, guest_mib * 1024))
}

/// Runs the benchmark for each VMM; the table as text.
pub fn run_for(vmms: &[&dyn Hypervisor], runs: usize) -> Result<String> {
    artifacts::require_kvm()?;
    let images = artifacts::guest_images()?;
    let dir = WorkDir::create("memory")?;
    let cases = [
        ("idle, 1 GiB", "tern.test=idle", 1024u64),
        (
            "dirtier 256 MiB set, 1 GiB",
            "tern.test=dirtier tern.ws=256 tern.rate=20",
            1024,
        ),
    ];
    let mut table = Table::new([
        "guest",
        "vmm",
        "ok",
        "RSS MiB",
        "guest touched MiB",
        "VMM overhead MiB (min–max)",
    ]);
    for (name, cmdline, mem) in cases {
        for hv in vmms {
            let vm = VmSpec {
                kernel: images.testguest.clone(),
                initrd: None,
                cmdline: cmdline.into(),
                cpus: 1,
                memory_mib: mem,
                disk: None,
            };
            let mut samples: Vec<Resident> = Vec::new();
            let mut failures = Vec::new();
            for _ in 0..runs {
                let mut p = hv.start_source(&vm, None, dir.path(), RunClock::start())?;
                let measured = (|| -> Result<Resident> {
                    let t = Duration::from_secs(20);
                    p.console.wait_event("started", t, |e| {
                        matches!(e, Event::Started(_)).then_some(())
                    })?;
                    for _ in 0..5 {
                        p.console
                            .wait_event("tick", t, |e| matches!(e, Event::Tick(_)).then_some(()))?;
                    }
                    resident(p.pid(), mem)
                })();
                hv.stop(&mut p);
                match measured {
                    Ok(r) => samples.push(r),
                    Err(Error::Interrupted) => return Err(Error::Interrupted),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            let mib = |f: &dyn Fn(&Resident) -> u64| -> Option<Spread> {
                Spread::of(
                    &samples
                        .iter()
                        .map(|r| f(r) as f64 / 1024.0)
                        .collect::<Vec<_>>(),
                )
            };
            let show = |s: Option<Spread>, full: bool| {
                s.map_or("-".into(), |s| {
                    if full {
                        s.show(1)
                    } else {
                        format!("{:.1}", s.median)
                    }
                })
            };
            table.row([
                name.to_string(),
                hv.kind().label().to_string(),
                format!("{}/{runs}", samples.len()),
                show(mib(&|r| r.total_kib), false),
                show(mib(&|r| r.guest_kib), false),
                show(mib(&|r| r.overhead_kib()), true),
            ]);
            for f in failures {
                table.row([format!("  failed: {f}")]);
            }
        }
    }
    Ok(table.render())
}

/// tern, with QEMU as the reference when it is installed.
pub fn run(tern: &dyn Hypervisor, runs: usize) -> Result<String> {
    match artifacts::qemu_binary() {
        Ok(binary) => {
            let qemu = crate::qemu::Qemu {
                binary,
                cpu_model: crate::qemu::driver::DEFAULT_CPU_MODEL.into(),
                variant: crate::vmm::VmmKind::Qemu,
            };
            run_for(&[tern, &qemu], runs)
        }
        Err(_) => run_for(&[tern], runs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_mappings_are_told_apart() {
        let smaps = "7f00-7f10 rw-p 00000000 00:00 0\nSize:            1048576 kB\nRss:               65536 kB\n\
                     5500-5600 r-xp 00000000 08:01 12 /usr/bin/tern\nSize:               2048 kB\nRss:                1500 kB\n\
                     7e00-7e01 rw-p 00000000 00:00 0 [heap]\nSize:                512 kB\nRss:                 300 kB\n";
        let r = split_smaps(smaps, 1024 * 1024);
        assert_eq!(
            r,
            Resident {
                total_kib: 67336,
                guest_kib: 65536
            }
        );
        assert_eq!(r.overhead_kib(), 1800);
    }
}

//! Boot time, tern vs QEMU microvm on the same images: host time from
//! spawning the VMM to
//!
//! - the test guest's `ready` line (PVH ELF, 1 vCPU, 256 MiB), and
//! - Linux's "Run /init as init process" (PVH vmlinux + the busybox
//!   initramfs, 1 vCPU, 512 MiB; on this host Linux panics or hangs in user
//!   space after it, so that line is the end).
//!
//! A boot that fails is counted, not retried.

use std::path::Path;
use std::time::Duration;

use tern_workloads::event::Event;

use crate::artifacts::{self, GuestImages};
use crate::bench::stats::Spread;
use crate::console::RunClock;
use crate::error::Result;
use crate::report::table::{ratio, Table};
use crate::vmm::{Hypervisor, VmSpec, VmmProcess};
use crate::workdir::WorkDir;

/// The line that ends a Linux boot here.
pub const LINUX_INIT_LINE: &str = "Run /init as init process";

/// Linux's command line for both VMMs.
pub const LINUX_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

/// What tern itself appends for a Linux guest on a kvm_pvm host (its
/// `--pvm-workarounds auto`); QEMU gets the same so both boot the same
/// command line. Keep in sync with vmm/src/config.rs `PVM_CMDLINE`.
pub const KVM_PVM_CMDLINE: &str =
    "noxsave nofsgsbase clearcpuid=cx16,popcnt,smap,smep,rdrand,rdseed,serialize,invpcid,pcid,rdpid";

/// What to boot and when it counts as booted.
pub struct BootTarget {
    pub name: &'static str,
    pub vm: VmSpec,
    /// A console line containing this ends the boot (None: the test
    /// guest's `ready` event).
    pub until_line: Option<&'static str>,
    pub timeout: Duration,
}

/// The two targets for `images`; `qemu` gets the kvm_pvm workarounds that
/// tern adds by itself.
pub fn targets(images: &GuestImages, qemu: bool) -> Vec<BootTarget> {
    let mut cmdline = LINUX_CMDLINE.to_string();
    if qemu && artifacts::host_is_kvm_pvm() {
        cmdline = format!("{cmdline} {KVM_PVM_CMDLINE}");
    }
    vec![
        BootTarget {
            name: "test guest → ready",
            vm: VmSpec {
                kernel: images.testguest.clone(),
                initrd: None,
                cmdline: "tern.test=idle".into(),
                cpus: 1,
                memory_mib: 256,
                disk: None,
            },
            until_line: None,
            timeout: Duration::from_secs(20),
        },
        BootTarget {
            name: "Linux → Run /init",
            vm: VmSpec {
                kernel: images.vmlinux.clone(),
                initrd: Some(images.initramfs.clone()),
                cmdline,
                cpus: 1,
                memory_mib: 512,
                disk: None,
            },
            until_line: Some(LINUX_INIT_LINE),
            timeout: Duration::from_secs(60),
        },
    ]
}

/// One boot: ms from spawn to the line, or why not.
pub fn boot_once(
    hv: &dyn Hypervisor,
    t: &BootTarget,
    dir: &Path,
) -> Result<std::result::Result<(f64, VmmProcess), String>> {
    let clock = RunClock::start();
    let spawned = clock.now_ms();
    let mut vm = hv.start_source(&t.vm, None, dir, clock)?;
    let waited = match t.until_line {
        Some(needle) => vm.console.wait_for(needle, t.timeout, |l| {
            l.text.contains(needle).then_some(l.at_ms)
        }),
        None => vm
            .console
            .wait_for("ready", t.timeout, |l| match l.event() {
                Some(Event::Ready(_)) => Some(l.at_ms),
                _ => None,
            }),
    };
    match waited {
        Ok(at) => Ok(Ok((at - spawned, vm))),
        Err(crate::Error::Interrupted) => Err(crate::Error::Interrupted),
        Err(e) => {
            let tail = vm.stderr().tail(2);
            hv.stop(&mut vm);
            Ok(Err(format!(
                "{e}{}",
                if tail.is_empty() {
                    String::new()
                } else {
                    format!(" ({tail})")
                }
            )))
        }
    }
}

/// Runs the benchmark; the table as text.
pub fn run(tern: &dyn Hypervisor, qemu: &dyn Hypervisor, runs: usize) -> Result<String> {
    artifacts::require_kvm()?;
    let images = artifacts::guest_images()?;
    let dir = WorkDir::create("boot")?;
    let mut table = Table::new([
        "boot",
        "vmm",
        "ok",
        "median ms",
        "min ms",
        "max ms",
        "tern/qemu",
    ]);
    let mut failures = Vec::new();
    for index in 0..2 {
        let mut medians = Vec::new();
        for hv in [tern, qemu] {
            let target = targets(&images, hv.kind().is_qemu()).remove(index);
            let mut times = Vec::new();
            for _ in 0..runs {
                match boot_once(hv, &target, dir.path())? {
                    Ok((ms, mut vm)) => {
                        times.push(ms);
                        hv.stop(&mut vm);
                    }
                    Err(why) => {
                        failures.push(format!("{} {}: {why}", hv.kind().label(), target.name))
                    }
                }
            }
            let s = Spread::of(&times);
            medians.push(s.map(|s| s.median));
            table.row([
                target.name.to_string(),
                hv.kind().label().to_string(),
                format!("{}/{runs}", times.len()),
                s.map_or("-".into(), |s| format!("{:.1}", s.median)),
                s.map_or("-".into(), |s| format!("{:.1}", s.min)),
                s.map_or("-".into(), |s| format!("{:.1}", s.max)),
                if hv.kind().is_qemu() {
                    ratio(medians[0], medians[1])
                } else {
                    String::new()
                },
            ]);
        }
    }
    let mut out = table.render();
    for f in failures {
        out.push_str(&format!("failed: {f}\n"));
    }
    Ok(out)
}

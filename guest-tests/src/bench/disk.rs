//! virtio-blk throughput, tern vs QEMU microvm (`virtio-blk-device`): the
//! test guest's disk benchmark (`tern.disk_mode=bench`) at queue depth 32 on
//! the same image file, prefilled so neither VMM reads holes: sequential
//! 1 MiB writes and reads (MiB/s), random 4 KiB reads and writes (IOPS), each
//! phase for a fixed time. Median of `runs` boots per VMM, with ratios.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use tern_workloads::event::{DiskBench, DiskPhase, Event};

use crate::artifacts;
use crate::bench::stats::Spread;
use crate::console::RunClock;
use crate::error::{Error, Result};
use crate::report::table::{ratio, Table};
use crate::vmm::{Hypervisor, VmSpec};
use crate::workdir::WorkDir;

/// The image: 256 MiB of data blocks after the header block.
const DISK_MIB: u64 = 256;
/// How long each phase runs in the guest.
const PHASE_MS: u32 = 2000;
const PHASES: [DiskPhase; 4] = [
    DiskPhase::SeqWrite,
    DiskPhase::SeqRead,
    DiskPhase::RandRead,
    DiskPhase::RandWrite,
];

/// Writes a non-zero image of `DISK_MIB` + 1 MiB at `path`.
fn prefill(path: &Path) -> Result<()> {
    let mut f = std::fs::File::create(path).map_err(|e| Error::io("creating the image", e))?;
    let chunk = vec![0xa5u8; 1 << 20];
    for _ in 0..=DISK_MIB {
        f.write_all(&chunk)
            .map_err(|e| Error::io("filling the image", e))?;
    }
    f.sync_all().map_err(|e| Error::io("syncing the image", e))
}

/// One boot: the four phases' results, in order.
fn bench_once(hv: &dyn Hypervisor, image: &Path, dir: &Path) -> Result<Vec<DiskBench>> {
    let images = artifacts::guest_images()?;
    let spec = VmSpec {
        kernel: images.testguest.clone(),
        initrd: None,
        cmdline: format!(
            "tern.test=disk tern.disk_mode=bench tern.qd=32 tern.disk_mib={DISK_MIB} \
             tern.bench_ms={PHASE_MS}"
        ),
        cpus: 1,
        memory_mib: 256,
        disk: Some(image.to_path_buf()),
    };
    let mut vm = hv.start_source(&spec, None, dir, RunClock::start())?;
    let timeout = Duration::from_millis(u64::from(PHASE_MS) * 3 + 30_000);
    let mut out = Vec::new();
    for phase in PHASES {
        let got = vm
            .console
            .wait_for(&format!("disk_bench {phase}"), timeout, |l| {
                match l.event() {
                    Some(Event::DiskBench(b)) if b.phase == phase => Some(*b),
                    _ => None,
                }
            });
        match got {
            Ok(b) => out.push(b),
            Err(e) => {
                hv.stop(&mut vm);
                return Err(e);
            }
        }
    }
    hv.stop(&mut vm);
    Ok(out)
}

/// The phase's figure of merit: MiB/s for sequential, IOPS for random.
fn merit(b: &DiskBench) -> f64 {
    match b.phase {
        DiskPhase::SeqWrite | DiskPhase::SeqRead => b.mib_s_x100 as f64 / 100.0,
        _ => b.iops as f64,
    }
}

/// Runs the benchmark; the table as text.
pub fn run(tern: &dyn Hypervisor, qemu: &dyn Hypervisor, runs: usize) -> Result<String> {
    artifacts::require_kvm()?;
    let dir = WorkDir::create("bench-disk")?;
    let image = dir.path().join("disk.img");
    prefill(&image)?;
    let mut notes = Vec::new();
    // Per VMM, per phase: the samples.
    let mut samples: Vec<Vec<Vec<f64>>> = Vec::new();
    let mut errors = Vec::new();
    for hv in [tern, qemu] {
        let mut per_phase = vec![Vec::new(); PHASES.len()];
        let mut errs = 0u64;
        for _ in 0..runs {
            match bench_once(hv, &image, dir.path()) {
                Ok(results) => {
                    for (i, b) in results.iter().enumerate() {
                        per_phase[i].push(merit(b));
                        errs += b.errors;
                    }
                }
                Err(Error::Interrupted) => return Err(Error::Interrupted),
                Err(e) => notes.push(format!("{}: {e}", hv.kind().label())),
            }
        }
        samples.push(per_phase);
        errors.push(errs);
    }
    let mut table = Table::new(["phase", "unit", "tern", "qemu", "tern/qemu"]);
    for (i, phase) in PHASES.iter().enumerate() {
        let unit = if i < 2 {
            "MiB/s (1 MiB)"
        } else {
            "IOPS (4 KiB)"
        };
        let t = Spread::of(&samples[0][i]);
        let q = Spread::of(&samples[1][i]);
        let show = |s: &Option<Spread>| s.map_or("-".into(), |s| s.show(0));
        table.row([
            phase.to_string(),
            unit.to_string(),
            show(&t),
            show(&q),
            ratio(t.map(|s| s.median), q.map(|s| s.median)),
        ]);
    }
    let mut out = format!(
        "virtio-blk, test guest at queue depth 32, {DISK_MIB} MiB prefilled image, \
         {PHASE_MS} ms per phase, median (min–max) of {runs} boots\n"
    );
    out.push_str(&table.render());
    out.push_str(&format!(
        "request errors: tern {}, qemu {}\n",
        errors[0], errors[1]
    ));
    for n in notes {
        out.push_str(&format!("note: {n}\n"));
    }
    Ok(out)
}

//! Scenarios of the disk workload (virtio-blk): checked writes, verify,
//! corruption found, reboot and verify from the disk alone, a read-only disk,
//! the benchmark, and writes in flight across a live migration.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tern_workloads::command::Command as GuestCommand;
use tern_workloads::event::{DiskVerified, DiskWritten, Event, VerifySource};
use tern_workloads::page::{Corruption, Reason};

use crate::vm::{free_port, migration_summary, Options, Result, Vm, VmSpec};

fn image(o: &Options, name: &str, mib: u64) -> Result<PathBuf> {
    let path = o.dir.join(name);
    let f = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.set_len(mib << 20).map_err(|e| e.to_string())?;
    Ok(path)
}

fn drive(path: &Path, read_only: bool) -> Vec<String> {
    let ro = if read_only { ",readonly=on" } else { "" };
    vec![
        "-drive".into(),
        format!("file={},format=raw,if=none,id=d0{ro}", path.display()),
        "-device".into(),
        "virtio-blk-device,drive=d0".into(),
    ]
}

fn boot(
    o: &Options,
    name: &'static str,
    args: &[&str],
    extra: &[String],
    incoming: Option<u16>,
) -> Result<Vm> {
    let vm = Vm::spawn(
        o,
        VmSpec {
            name,
            append: o.append(&[&["tern.test=disk"], args].concat()),
            extra,
            incoming,
        },
    )?;
    if incoming.is_none() {
        vm.ready()?;
        let info = vm.next("disk", |_, e| {
            if let Event::Disk(d) = e {
                Some(*d)
            } else {
                None
            }
        })?;
        println!("[{name}] {info:?}");
    }
    Ok(vm)
}

fn written(vm: &Vm) -> Result<DiskWritten> {
    vm.next("disk_written", |_, e| {
        if let Event::DiskWritten(w) = e {
            Some(*w)
        } else {
            None
        }
    })
}

fn disk_verify(vm: &mut Vm) -> Result<DiskVerified> {
    vm.send(GuestCommand::Verify)?;
    vm.next("disk_verify", |_, e| {
        if let Event::DiskVerify(v) = e {
            Some(*v)
        } else {
            None
        }
    })
}

/// Boots in verify mode on `dev`: what the disk alone says.
fn verify_after_reboot(o: &Options, dev: &[String]) -> Result<(Vm, DiskVerified)> {
    let vm = boot(
        o,
        "verify-after-reboot",
        &["tern.disk_mode=verify"],
        dev,
        None,
    )?;
    let v = vm.next("disk_verify", |_, e| {
        if let Event::DiskVerify(v) = e {
            Some(*v)
        } else {
            None
        }
    })?;
    Ok((vm, v))
}

fn reboot(vm: &mut Vm) -> Result<()> {
    vm.send(GuestCommand::Reboot)?;
    vm.wait_exit()
}

pub fn disk(o: &Options) -> Result<()> {
    let img = image(o, "disk.img", 256)?;
    let dev = drive(&img, false);

    let mut vm = boot(o, "write", &["tern.disk_mib=128"], &dev, None)?;
    let w = written(&vm)?;
    println!(
        "write pass: {} blocks in {} ms, {:.1} MiB/s, errors {}",
        w.blocks,
        w.elapsed_ms,
        w.mib_s_x100 as f64 / 100.0,
        w.errors
    );
    if !w.complete || w.errors != 0 {
        return Err(format!("write pass failed: {w:?}"));
    }
    let v = disk_verify(&mut vm)?;
    println!(
        "verify: ok={} blocks={} at {:.1} MiB/s",
        v.report.ok(),
        v.report.pages,
        v.mib_s_x100 as f64 / 100.0
    );
    if !v.report.ok() || v.report.pages != w.blocks {
        return Err(format!("verify failed: {v:?}"));
    }
    vm.send(GuestCommand::Corrupt {
        page: 100,
        how: Corruption::Torn,
    })?;
    vm.next("corrupted", |_, e| {
        matches!(e, Event::Corrupted(c) if c.page == 100).then_some(())
    })?;
    let v = disk_verify(&mut vm)?;
    let bad = v
        .report
        .first_bad
        .ok_or("verify passed over a torn block")?;
    println!("after tearing block 100: {bad:?}");
    if bad.page != 100 || bad.damage.reason != Reason::Torn {
        return Err(format!("verify did not name block 100 as torn: {v:?}"));
    }
    reboot(&mut vm)?;

    let (mut after, v) = verify_after_reboot(o, &dev)?;
    println!(
        "after reboot, from the disk alone: source={} ok={} blocks={} bad={} first={:?}",
        v.source,
        v.report.ok(),
        v.report.pages,
        v.report.bad,
        v.report.first_bad.map(|b| (b.page, b.damage.reason))
    );
    if v.source != VerifySource::Disk
        || v.report.pages != w.blocks
        || v.report.bad != 1
        || v.report.first_bad.map(|b| b.page) != Some(100)
    {
        return Err(format!("verify after reboot: {v:?}"));
    }
    reboot(&mut after)?;

    let ro = drive(&img, true);
    let vm = boot(o, "read-only", &["tern.disk_mib=1"], &ro, None)?;
    let e = vm.next("a write error", |_, e| {
        if let Event::Error(e) = e {
            Some(e.clone())
        } else {
            None
        }
    })?;
    println!("read-only disk: {} error: {}", e.kind, e.message);
    if e.kind != "disk" || !e.message.contains("write of block") {
        return Err(format!("expected a failed write, got {e:?}"));
    }
    // More errors follow (the header); the pass's summary ends them.
    let w = loop {
        let next = vm.next("disk_written", |_, e| match e {
            Event::DiskWritten(w) => Some(Some(*w)),
            Event::Error(_) => Some(None),
            _ => None,
        })?;
        if let Some(w) = next {
            break w;
        }
    };
    println!(
        "read-only disk: {} of {} writes failed",
        w.errors,
        w.blocks + 1
    );
    if w.errors == 0 {
        return Err(format!("writes to a read-only disk succeeded: {w:?}"));
    }
    drop(vm);

    let bench_ms = (o.seconds * 1000).to_string();
    let vm = boot(
        o,
        "bench",
        &[
            "tern.disk_mode=bench",
            "tern.disk_mib=256",
            &format!("tern.bench_ms={bench_ms}"),
        ],
        &dev,
        None,
    )?;
    for _ in 0..4 {
        let b = vm.next("disk_bench", |_, e| {
            if let Event::DiskBench(b) = e {
                Some(*b)
            } else {
                None
            }
        })?;
        println!(
            "bench {:>10}: {:>8} B x QD{}: {:>9.1} MiB/s {:>7} IOPS, max latency {} us, errors {}",
            b.phase.name(),
            b.request_bytes,
            b.qd,
            b.mib_s_x100 as f64 / 100.0,
            b.iops,
            b.max_latency_us,
            b.errors
        );
    }
    Ok(())
}

/// Blocks written continuously while the VM migrates: every acknowledged
/// write must be on the disk afterwards.
pub fn disk_migrate(o: &Options) -> Result<()> {
    let img = image(o, "shared.img", 128)?;
    let dev = drive(&img, false);
    let src = boot(
        o,
        "source",
        &["tern.disk_mib=64", "tern.passes=0"],
        &dev,
        None,
    )?;
    written(&src)?; // a first full pass
    let port = free_port()?;
    let mut dst = boot(
        o,
        "destination",
        &["tern.disk_mib=64", "tern.passes=0"],
        &dev,
        Some(port),
    )?;
    dst.qmp()?;
    let (info, during) = src.qmp()?.migrate(port, &src)?;
    println!(
        "migration with writes in flight: {}",
        migration_summary(&info)
    );
    let before = during.iter().rev().find_map(|(at, e)| {
        if let Event::DiskTick(t) = e {
            Some((*at, *t))
        } else {
            None
        }
    });
    let (first_at, first) = dst.next("I/O on the destination", |at, e| {
        if let Event::DiskTick(t) = e {
            Some((at, *t))
        } else {
            None
        }
    })?;
    println!(
        "destination: first disk tick {:.0} ms after the source's last; its slowest request took {} us, {} in flight",
        before.map_or(0.0, |(at, _)| (first_at - at).as_secs_f64() * 1e3),
        first.max_latency_us,
        first.in_flight
    );
    std::thread::sleep(Duration::from_millis(500));
    dst.send(GuestCommand::Stop)?;
    let w = dst.next("the stopped pass", |_, e| match e {
        Event::DiskWritten(w) if w.stopped => Some(*w),
        _ => None,
    })?;
    println!(
        "stopped on the destination: pass {} cursor {} errors {}",
        w.generation, w.cursor, w.errors
    );
    let v = disk_verify(&mut dst)?;
    println!(
        "verify on the destination (every acknowledged write): ok={} blocks={} bad={}",
        v.report.ok(),
        v.report.pages,
        v.report.bad
    );
    if !v.report.ok() || w.errors != 0 {
        return Err(format!("writes were lost across the migration: {v:?}"));
    }
    reboot(&mut dst)?;
    drop(src);
    let begin = Instant::now();
    let (_after, v) = verify_after_reboot(o, &dev)?;
    println!(
        "and from the disk alone after a reboot: ok={} blocks={} ({:.1} s)",
        v.report.ok(),
        v.report.pages,
        begin.elapsed().as_secs_f64()
    );
    if !v.report.ok() {
        return Err(format!("verify after reboot: {v:?}"));
    }
    Ok(())
}

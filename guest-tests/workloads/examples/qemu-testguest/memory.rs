//! Scenarios of the memory workloads: smoke, live migration, dirty logging,
//! exceptions.

use std::time::{Duration, Instant};

use tern_workloads::command::Command as GuestCommand;
use tern_workloads::event::{Event, Tick};
use tern_workloads::page::{Corruption, Reason};

use crate::vm::{free_port, migration_summary, Options, Result, Vm, VmSpec};

fn guest(o: &Options, name: &'static str, incoming: Option<u16>) -> Result<Vm> {
    Vm::spawn(
        o,
        VmSpec {
            name,
            append: o.append(&[]),
            extra: &[],
            incoming,
        },
    )
}

/// Per-CPU means over `ticks`: work rate, dirty rate, CPU share, worst gap.
pub fn summarize(label: &str, ticks: &[(Instant, Tick)]) {
    let cpus = ticks.iter().map(|(_, t)| t.cpu).max().map_or(0, |m| m + 1);
    for cpu in 0..cpus {
        let mine: Vec<&Tick> = ticks
            .iter()
            .map(|(_, t)| t)
            .filter(|t| t.cpu == cpu)
            .collect();
        if mine.is_empty() {
            continue;
        }
        let us: u64 = mine.iter().map(|t| t.interval_us).sum();
        let work: u64 = mine.iter().map(|t| t.work).sum();
        let pages: u64 = mine.iter().map(|t| t.pages).sum();
        let busy =
            mine.iter().filter_map(|t| t.busy_x100).sum::<u64>() as f64 / mine.len() as f64 / 100.0;
        let max_gap = mine.iter().map(|t| t.max_gap_us).max().unwrap_or(0);
        println!(
            "  {label} cpu{cpu}: {} ticks, work {:.2} M/s, dirty {:.0} MiB/s, busy {busy:.1} %, max gap {max_gap} us",
            mine.len(),
            work as f64 / us as f64,
            pages as f64 * 4096.0 / (1 << 20) as f64 / (us as f64 / 1e6),
        );
    }
}

pub fn smoke(o: &Options) -> Result<()> {
    let mut vm = guest(o, "guest", None)?;
    let (to_ready, r) = vm.ready()?;
    println!(
        "ready {:.0} ms after QEMU start (guest boot {} us): {r:?}",
        to_ready.as_secs_f64() * 1e3,
        r.boot_us
    );
    if r.cpus != o.smp {
        return Err(format!("guest found {} CPUs, QEMU has {}", r.cpus, o.smp));
    }
    let pages = vm.started()?;
    summarize("run", &vm.ticks_for(Duration::from_secs(o.seconds))?);
    let v = vm.verify()?;
    println!(
        "verify: ok={} pages={} in {} us",
        v.report.ok(),
        v.report.pages,
        v.elapsed_us
    );
    if !v.report.ok() || v.report.pages != pages {
        return Err(format!("verify failed: {v:?}"));
    }
    if pages > 0 {
        let page = pages / 2 + 1;
        for (at, how) in [(page, Corruption::Torn), (page + 1, Corruption::Stale)] {
            vm.send(GuestCommand::Corrupt { page: at, how })?;
            vm.next("corrupted", |_, e| {
                matches!(e, Event::Corrupted(c) if c.page == at).then_some(())
            })?;
        }
        let v = vm.verify()?;
        let bad = v
            .report
            .first_bad
            .ok_or("verify passed over corrupted pages")?;
        println!(
            "after corrupting pages {page} (torn) and {} (stale): {bad:?}, bad={}",
            page + 1,
            v.report.bad
        );
        if bad.page != page || bad.damage.reason != Reason::Torn || v.report.bad != 2 {
            return Err(format!("verify did not name page {page} as torn: {v:?}"));
        }
    }
    vm.send(GuestCommand::Stop)?;
    let done = vm.next("done", |_, e| {
        if let Event::Done(d) = e {
            Some(*d)
        } else {
            None
        }
    })?;
    println!(
        "done: bad={} dirtied={} pages uptime={} ms",
        done.report.bad, done.dirtied, done.uptime_ms
    );
    vm.send(GuestCommand::Reboot)?;
    vm.next("rebooting", |_, e| {
        matches!(e, Event::Rebooting).then_some(())
    })?;
    vm.wait_exit()?;
    println!("reboot ended the VM");
    Ok(())
}

pub fn migrate(o: &Options) -> Result<()> {
    let src = guest(o, "source", None)?;
    src.ready()?;
    src.started()?;
    src.next("baseline", |_, e| {
        matches!(e, Event::Baseline(_)).then_some(())
    })?;
    summarize(
        "before (no dirty logging)",
        &src.ticks_for(Duration::from_secs(o.seconds))?,
    );

    let port = free_port()?;
    let mut dst = guest(o, "destination", Some(port))?;
    dst.qmp()?; // listening once QMP answers
    let begin = Instant::now();
    let (info, events) = src.qmp()?.migrate(port, &src)?;
    let during: Vec<(Instant, Tick)> = events
        .into_iter()
        .filter_map(|(at, e)| {
            if let Event::Tick(t) = e {
                Some((at, t))
            } else {
                None
            }
        })
        .collect();
    for (at, t) in &during {
        println!(
            "    {:6.0} ms cpu{} dirty {:>8.2} MiB/s busy {:>6.2} % max gap {:>6} us",
            (*at - begin).as_secs_f64() * 1e3,
            t.cpu,
            t.dirty_mib_s_x100 as f64 / 100.0,
            t.busy_x100.unwrap_or(0) as f64 / 100.0,
            t.max_gap_us
        );
    }
    summarize("during migration (dirty logging)", &during);
    println!("migration: {}", migration_summary(&info));

    let last_source_tick = during.last().map(|(at, _)| *at);
    let (first_at, first) = dst.next("a tick on the destination", |at, e| {
        if let Event::Tick(t) = e {
            Some((at, *t))
        } else {
            None
        }
    })?;
    let after = dst.ticks_for(Duration::from_secs(1))?;
    let worst = std::iter::once(&first)
        .chain(after.iter().map(|(_, t)| t))
        .max_by_key(|t| t.max_gap_us)
        .expect("one tick");
    println!(
        "destination: first tick {:.0} ms (host time) after the source's last; guest saw: max gap {} us, stalled {} us, interval {} us, clock {} (drift {:?} us)",
        last_source_tick.map_or(0.0, |l| (first_at - l).as_secs_f64() * 1e3),
        worst.max_gap_us,
        worst.stalled_us,
        worst.interval_us,
        worst.clock,
        worst.drift_us,
    );
    summarize("after migration", &after);
    let v = dst.verify()?;
    println!(
        "verify on the destination: ok={} pages={} bad={} in {} us",
        v.report.ok(),
        v.report.pages,
        v.report.bad,
        v.elapsed_us
    );
    if !v.report.ok() {
        return Err(format!("destination verify failed: {v:?}"));
    }
    dst.send(GuestCommand::Stop)?;
    let done = dst.next("done", |_, e| {
        if let Event::Done(d) = e {
            Some(*d)
        } else {
            None
        }
    })?;
    if done.report.bad != 0 {
        return Err(format!("final verify failed: {done:?}"));
    }
    println!(
        "done on the destination: ok, {} pages dirtied in all",
        done.dirtied
    );
    Ok(())
}

pub fn dirty_log(o: &Options) -> Result<()> {
    let vm = guest(o, "guest", None)?;
    vm.ready()?;
    vm.started()?;
    vm.next("baseline", |_, e| {
        matches!(e, Event::Baseline(_)).then_some(())
    })?;
    summarize(
        "without dirty logging",
        &vm.ticks_for(Duration::from_secs(o.seconds))?,
    );
    let mut qmp = vm.qmp()?;
    qmp.execute(
        "calc-dirty-rate",
        &format!(r#"{{"calc-time":{},"mode":"dirty-bitmap"}}"#, o.seconds),
    )?;
    summarize(
        "with dirty logging",
        &vm.ticks_for(Duration::from_secs(o.seconds))?,
    );
    std::thread::sleep(Duration::from_millis(500));
    let rate = qmp.execute("query-dirty-rate", "{}")?;
    println!(
        "QEMU's own measurement: {} MiB/s",
        crate::vm::number(&rate, &["dirty-rate"]).unwrap_or(0)
    );
    Ok(())
}

pub fn fault(o: &Options) -> Result<()> {
    let mut vm = guest(o, "guest", None)?;
    vm.ready()?;
    vm.started()?;
    vm.send(GuestCommand::Fault)?;
    let e = vm.next("the exception", |_, e| {
        if let Event::Error(e) = e {
            Some(e.clone())
        } else {
            None
        }
    })?;
    println!("{}: {}: {:?}", e.kind, e.message, e.fault);
    match e.fault {
        Some(f)
            if e.kind == "exception" && f.vector == 14 && f.cr2 == 512 << 30 && f.cs & 3 == 3 =>
        {
            Ok(())
        }
        _ => Err(format!(
            "expected a ring-3 page fault at 512 GiB, got {e:?}"
        )),
    }
}

//! Live migration between two tern processes with real guests: the guest
//! keeps running, its memory verifies on the destination, its clocks move on
//! by about the downtime, and the source exits.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::Value;

const DIRTIER: &str = "tern.test=dirtier tern.ws=64 tern.rate=20";

/// How the destination is started.
#[derive(Clone, Copy, PartialEq)]
enum Destination {
    Plain,
    /// `--prefault`: all guest memory backed before the stream arrives.
    Prefaulted,
}

/// Migrates a test guest with `mem_mib` of memory running `cmdline` over
/// `uri` and checks everything the guest can tell about it. Returns the
/// migration statistics.
fn migrate_and_check(
    uri: &str,
    cmdline: &str,
    mem_mib: u64,
    migrate_args: &[&str],
    destination: Destination,
) -> Value {
    let mem = &format!("{mem_mib}M");
    let dir = scratch_dir("mig");
    let src_api = dir.join("src.sock");
    let vm = boot_testguest(1, mem, cmdline, Some(&src_api), &[]);
    vm.wait_event("tick", 5, Duration::from_secs(10));
    let src = Running {
        vm,
        api: src_api,
        cmdline,
        mem_mib,
    };
    let (mut dst, stats) = hop_and_check(src, uri, migrate_args, destination, dir.join("dst.sock"));

    // Memory: every page the guest wrote is there, current and whole.
    assert_verified(&verify(&mut dst.vm));
    // The console still takes input and the guest still answers.
    dst.vm.send("verify");
    stats
}

/// A test guest in a tern that serves its API on `api`.
struct Running<'a> {
    vm: TernVm,
    api: PathBuf,
    /// The guest's command line.
    cmdline: &'a str,
    mem_mib: u64,
}

/// Migrates the guest in `src` to a new destination listening on `uri`
/// (serving its API on `dst_api`) and checks what the guest shows of the
/// switchover: the source exits, ticks go on with none repeated, the clocks
/// continue. Returns the guest, now in the destination, and the migration
/// statistics.
fn hop_and_check<'a>(
    src: Running<'a>,
    uri: &str,
    migrate_args: &[&str],
    destination: Destination,
    dst_api: PathBuf,
) -> (Running<'a>, Value) {
    let Running {
        vm: mut src,
        api: src_api,
        cmdline,
        mem_mib,
    } = src;
    let mem = &format!("{mem_mib}M");
    let mut dst = match destination {
        Destination::Plain => start_destination(uri, 1, mem, Some(&dst_api), &[]),
        Destination::Prefaulted => {
            let dst = start_destination(uri, 1, mem, Some(&dst_api), &["--prefault"]);
            // Listening means the guest memory is already backed.
            let rss_mib = dst.rss_kib() / 1024;
            assert!(
                rss_mib >= mem_mib,
                "--prefault destination holds {rss_mib} MiB for a {mem_mib} MiB guest"
            );
            dst
        }
    };

    // The source lets go of the guest and exits cleanly.
    let stats = migrate_to_completion(&mut src, &src_api, uri, migrate_args);
    assert!(
        src.stderr().contains("migrated to the destination"),
        "{}",
        src.stderr()
    );
    let downtime_ms = stats["downtime_ms"].as_f64().expect("downtime reported");
    let sent_ms = stats["downtime_sent_ms"]
        .as_f64()
        .expect("time to everything sent reported");
    assert!(
        sent_ms > 0.0 && sent_ms <= downtime_ms,
        "everything sent after {sent_ms} ms of a {downtime_ms} ms downtime"
    );

    // The guest runs on the destination: its ticks go on, none repeated.
    // A tick line the switchover cut in two reads whole on neither side, so
    // the first whole one may be one further on.
    let last_src_tick = src.events("tick").last().cloned().expect("source ticks");
    let first = dst.wait_event("tick", 0, Duration::from_secs(10));
    let (last_seq, first_seq) = (
        last_src_tick["seq"].as_u64().unwrap(),
        first["seq"].as_u64().unwrap(),
    );
    assert!(
        first_seq == last_seq + 1 || first_seq == last_seq + 2,
        "the source's last tick was {last_seq}, the destination's first {first_seq}"
    );
    dst.wait_event("tick", 5, Duration::from_secs(10));
    assert!(dst.running(), "{}", dst.stderr());

    // Clocks: continuous, moved on by about the downtime; no jump, no stall.
    // Every tick the destination printed, the first (across the switchover)
    // above all; a failure shows what each side did with the clock.
    let clock_lines = |stderr: String| -> String {
        stderr
            .lines()
            .filter(|l| l.contains("kvmclock"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    for t in dst.events("tick") {
        assert_eq!(
            t["clock"],
            "ok",
            "clock discontinuity after migration: {t}\nsource: {}\ndestination: {}\n{stats}",
            clock_lines(src.stderr()),
            clock_lines(dst.stderr())
        );
    }
    let src_ns = last_src_tick["clock_ns"].as_u64().unwrap();
    let dst_ns = first["clock_ns"].as_u64().unwrap();
    assert!(
        dst_ns > src_ns,
        "the guest clock went back: {src_ns} -> {dst_ns}"
    );
    let gap_ms = (dst_ns - src_ns) as f64 / 1e6;
    // One tick interval, plus the downtime, plus the last source tick that the
    // source printed before pausing; anything far beyond is a stall or a jump.
    assert!(
        gap_ms < 100.0 + downtime_ms + 250.0,
        "clock gap {gap_ms} ms for a {downtime_ms} ms downtime"
    );
    let stall_ms = first["max_gap_us"].as_f64().unwrap_or(0.0) / 1e3;
    assert!(
        stall_ms < downtime_ms + 250.0,
        "the guest saw a {stall_ms} ms stall for a {downtime_ms} ms downtime"
    );

    // The guest's TSC on the destination is vCPU 0's saved one carried on by
    // the real time since (the destination reads it back after the restore).
    // Each side ties its TSC read to real time within 50 us, so more than
    // 100 us apart is a save or restore that let time slip (before the source
    // tied its read, it was 37-319 us).
    let behind_us = tsc_behind_us(&dst.stderr());
    assert!(
        behind_us.abs() <= 100,
        "the guest's TSC is {behind_us} us behind real time on the destination"
    );

    if cmdline.contains("tern.idle=halt") {
        // A halting CPU counts a handful of wakes per tick, a spinning one
        // millions of iterations: it halted on both sides, so its timer
        // fires on the destination too.
        for (side, ticks) in [
            ("source", src.events("tick")),
            ("destination", dst.events("tick")),
        ] {
            let t = ticks.last().expect("ticks");
            assert!(
                t["work"].as_u64().unwrap() < 1000,
                "the {side}'s vCPU did not halt: {t}"
            );
        }
    }
    let guest = Running {
        vm: dst,
        api: dst_api,
        cmdline,
        mem_mib,
    };
    (guest, stats)
}

/// What the destination's debug log says of the guest's TSC after the
/// restore: how far behind vCPU 0's saved TSC carried on by real time (us).
fn tsc_behind_us(stderr: &str) -> i64 {
    let line = stderr
        .lines()
        .find(|l| l.contains("restore: guest TSC"))
        .unwrap_or_else(|| panic!("the destination did not report its guest's TSC:\n{stderr}"));
    line.split("restore: guest TSC ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unreadable TSC report: {line}"))
}

#[test]
fn idle_guest_migrates_over_tcp() {
    let _g = serial();
    let uri = format!("tcp:127.0.0.1:{}", free_port());
    // Idle as an idle guest is: its vCPU halts until its local APIC timer
    // (TSC-deadline mode) fires for the next tick or command poll. A vCPU
    // halted at the switchover must wake on the destination: the LAPIC, the
    // deadline MSR and the halted MP state all travel.
    let stats = migrate_and_check(
        &uri,
        "tern.test=dirtier tern.ws=16 tern.rate=0 tern.idle=halt",
        256,
        &[],
        Destination::Plain,
    );
    // Mostly zero memory travels as markers.
    assert!(
        stats["zero_pages"].as_u64().unwrap() > stats["data_pages"].as_u64().unwrap(),
        "{stats}"
    );
    // The source says what the migration cost it.
    assert!(
        stats["cpu_ms"]["loop_ms"]
            .as_f64()
            .is_some_and(|ms| ms > 0.0),
        "{stats}"
    );
}

#[test]
fn busy_guest_migrates_over_unix_socket_to_a_prefaulted_destination() {
    let _g = serial();
    let dir = scratch_dir("unix");
    let uri = format!("unix:{}", dir.join("mig.sock").display());
    let stats = migrate_and_check(&uri, DIRTIER, 256, &[], Destination::Prefaulted);
    assert!(
        stats["downtime_ms"].as_f64().unwrap() <= 300.0 * 1.1,
        "{stats}"
    );
}

#[test]
fn busy_guest_migrates_over_a_capped_link() {
    let _g = serial();
    let uri = format!("tcp:127.0.0.1:{}", free_port());
    // 64 MiB of live data through a 48 MiB/s cap, guest dirtying 20 MiB/s:
    // several rounds, all within the downtime limit.
    let stats = migrate_and_check(
        &uri,
        DIRTIER,
        256,
        &["--max-bandwidth", "48M", "--max-downtime", "200"],
        Destination::Plain,
    );
    assert!(stats["rounds"].as_u64().unwrap() >= 2, "{stats}");
    assert!(
        stats["downtime_ms"].as_f64().unwrap() <= 200.0 * 1.1,
        "{stats}"
    );
}

/// A destination is a source like any other: the busy guest moves on three
/// times, each time from the tern that received it, alternately over TCP and
/// a Unix socket, the last time to a prefaulted destination; every
/// switchover is checked, and the memory verifies at the end.
#[test]
fn busy_guest_migrates_on_from_each_destination() {
    let _g = serial();
    let dir = scratch_dir("hops");
    let api = dir.join("api.0.sock");
    let vm = boot_testguest(1, "256M", DIRTIER, Some(&api), &[]);
    vm.wait_event("tick", 5, Duration::from_secs(10));
    let mut guest = Running {
        vm,
        api,
        cmdline: DIRTIER,
        mem_mib: 256,
    };
    for hop in 1..=3 {
        let uri = if hop % 2 == 1 {
            format!("tcp:127.0.0.1:{}", free_port())
        } else {
            format!("unix:{}", dir.join(format!("mig.{hop}.sock")).display())
        };
        let destination = if hop == 3 {
            Destination::Prefaulted
        } else {
            Destination::Plain
        };
        let api = dir.join(format!("api.{hop}.sock"));
        let (moved, stats) = hop_and_check(guest, &uri, &[], destination, api);
        eprintln!(
            "migration {hop}: {} ms total, {} ms downtime, {} rounds",
            stats["total_ms"], stats["downtime_ms"], stats["rounds"]
        );
        assert!(
            stats["downtime_ms"].as_f64().unwrap() <= 300.0 * 1.1,
            "migration {hop}: {stats}"
        );
        guest = moved;
    }
    assert_verified(&verify(&mut guest.vm));
}

/// Linux with user space (on kvm_pvm through the guest kernel's patch 0003):
/// the dirtier as a Linux process (anonymous memory, `CLOCK_MONOTONIC`),
/// migrated while it writes, then on again from that destination (a restored
/// kernel's timers, interrupt controllers and clocks must save as well as a
/// booted one's); each hop checked as the test guest's are (`hop_and_check`:
/// ticks go on, the clock continuous, the TSC carried on by real time — Linux
/// runs its clock on the `tsc` clocksource), and on the last destination the
/// process verifies every page it wrote.
#[test]
fn linux_with_a_dirtying_process_migrates_and_the_process_verifies_its_memory() {
    let _g = serial();
    let dir = scratch_dir("linux");
    let cmdline = "console=ttyS0 reboot=k panic=1 tern.test=dirtier tern.ws=16 tern.rate=5";
    let api = dir.join("api.0.sock");
    let vm = start_linux(
        None,
        Some("initramfs"),
        &["--api-socket", api.to_str().unwrap(), "--cmdline", cmdline],
    );
    let ready = vm.wait_event("ready", 0, LINUX_BOOT);
    assert_eq!(
        ready["clock"], "monotonic",
        "not the Linux program: {ready}"
    );
    vm.wait_event("tick", 5, Duration::from_secs(30));
    let mut guest = Running {
        vm,
        api,
        cmdline,
        mem_mib: 256,
    };
    for hop in 1..=2 {
        let uri = format!("unix:{}", dir.join(format!("mig.{hop}.sock")).display());
        let next_api = dir.join(format!("api.{hop}.sock"));
        let (moved, stats) = hop_and_check(guest, &uri, &[], Destination::Plain, next_api);
        eprintln!(
            "Linux guest migration {hop}: {} ms total, {} ms downtime, {} rounds",
            stats["total_ms"], stats["downtime_ms"], stats["rounds"]
        );
        guest = moved;
    }
    assert_verified(&verify(&mut guest.vm));
}

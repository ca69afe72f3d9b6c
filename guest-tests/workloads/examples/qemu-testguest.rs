//! Runs the ring-3 test guest under QEMU (microvm, KVM) and checks it end to
//! end, printing what it measured. Needs qemu-system-x86_64 and /dev/kvm.
//!
//! ```text
//! cargo run --release -p tern-workloads --example qemu-testguest -- [options] SCENARIO [tern.k=v ...]
//!   smoke      ready, ticks, verify, corrupt + verify names the page, stop, reboot
//!   migrate    live-migrate (QMP migrate to a second QEMU with -incoming), then
//!              verify on the destination; reports downtime and the guest's stall
//!   dirty-log  dirty rate with and without KVM dirty logging (QMP calc-dirty-rate)
//!   fault      the `fault` command: a ring-3 page fault comes back as an error event
//! options: --kernel PATH (default: resources/build-testguest.sh), --smp N (1),
//!          --mem SIZE (512M), --cpu MODEL (host,-arch-capabilities), --seconds S (3)
//! ```
//!
//! The guest speaks the tern-guest protocol on its serial port (stdio here);
//! events are read with `tern_workloads::event::parse_line`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use tern_workloads::command::Command as GuestCommand;
use tern_workloads::event::{parse_line, Event, Ready, Tick};
use tern_workloads::json_read::{self, Value};
use tern_workloads::page::{Corruption, Reason};

type Result<T> = std::result::Result<T, String>;

/// Longest wait for any one event: beyond this the guest is hung.
const HANG_GUARD: Duration = Duration::from_secs(90);

struct Options {
    kernel: PathBuf,
    smp: u32,
    mem: String,
    cpu: String,
    seconds: u64,
    scenario: String,
    guest_args: Vec<String>,
}

fn parse_options() -> Result<Options> {
    let mut o = Options {
        kernel: PathBuf::new(),
        smp: 1,
        mem: "512M".into(),
        cpu: "host,-arch-capabilities".into(),
        seconds: 3,
        scenario: String::new(),
        guest_args: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--kernel" => o.kernel = value("--kernel")?.into(),
            "--smp" => o.smp = value("--smp")?.parse().map_err(|e| format!("--smp: {e}"))?,
            "--mem" => o.mem = value("--mem")?,
            "--cpu" => o.cpu = value("--cpu")?,
            "--seconds" => {
                o.seconds = value("--seconds")?
                    .parse()
                    .map_err(|e| format!("--seconds: {e}"))?
            }
            s if s.starts_with("tern.") => o.guest_args.push(s.to_string()),
            s if o.scenario.is_empty() => o.scenario = s.to_string(),
            s => return Err(format!("unexpected argument {s:?}")),
        }
    }
    if o.kernel.as_os_str().is_empty() {
        o.kernel = build_testguest()?;
    }
    Ok(o)
}

fn build_testguest() -> Result<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../resources/build-testguest.sh");
    let out = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("{}: {e}", script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("testguest="))
        .map(PathBuf::from)
        .ok_or(format!("{} printed no testguest= line", script.display()))
}

/// One QEMU process running the test guest.
struct Vm {
    name: &'static str,
    child: Child,
    stdin: ChildStdin,
    events: Receiver<(Instant, Event)>,
    spawned: Instant,
    qmp_path: PathBuf,
}

impl Vm {
    fn spawn(name: &'static str, o: &Options, dir: &Path, incoming: Option<u16>) -> Result<Vm> {
        let qmp_path = dir.join(format!("{name}.qmp"));
        let append = o.guest_args.join(" ");
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-M",
            "microvm,acpi=off",
            "-enable-kvm",
            "-cpu",
            &o.cpu,
            "-m",
            &o.mem,
        ])
        .args([
            "-smp",
            &o.smp.to_string(),
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "stdio",
        ])
        .args(["-no-reboot", "-kernel"])
        .arg(&o.kernel)
        .args(["-append", &append, "-qmp"])
        .arg(format!("unix:{},server=on,wait=off", qmp_path.display()));
        if let Some(port) = incoming {
            cmd.args(["-incoming", &format!("tcp:127.0.0.1:{port}")]);
        }
        let spawned = Instant::now();
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("qemu: {e}"))?;
        let stdout = child.stdout.take().expect("piped");
        let stdin = child.stdin.take().expect("piped");
        let (tx, events) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                match parse_line(&line) {
                    Some(Ok(event)) => {
                        if tx.send((Instant::now(), event)).is_err() {
                            return;
                        }
                    }
                    Some(Err(e)) => eprintln!("[{name}] unreadable event ({e}): {line}"),
                    None => eprintln!("[{name}] {line}"),
                }
            }
        });
        Ok(Vm {
            name,
            child,
            stdin,
            events,
            spawned,
            qmp_path,
        })
    }

    /// The next event `pick` accepts; the events skipped are passed to `seen`.
    fn next<T>(&self, what: &str, mut pick: impl FnMut(Instant, &Event) -> Option<T>) -> Result<T> {
        loop {
            match self.events.recv_timeout(HANG_GUARD) {
                Ok((at, Event::Error(e))) if pick(at, &Event::Error(e.clone())).is_none() => {
                    return Err(format!(
                        "{}: guest error while waiting for {what}: {} ({})",
                        self.name, e.message, e.kind
                    ))
                }
                Ok((at, event)) => {
                    if let Some(t) = pick(at, &event) {
                        return Ok(t);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!("{}: no {what} within {HANG_GUARD:?}", self.name))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!("{}: QEMU exited before {what}", self.name))
                }
            }
        }
    }

    fn send(&mut self, command: GuestCommand) -> Result<()> {
        writeln!(self.stdin, "{command}").map_err(|e| format!("{}: {e}", self.name))
    }

    /// Ticks for `d` of wall time.
    fn ticks_for(&self, d: Duration) -> Result<Vec<(Instant, Tick)>> {
        let end = Instant::now() + d;
        let mut ticks = Vec::new();
        while Instant::now() < end {
            match self
                .events
                .recv_timeout(end.saturating_duration_since(Instant::now()))
            {
                Ok((at, Event::Tick(t))) => ticks.push((at, t)),
                Ok((_, Event::Error(e))) => {
                    return Err(format!("{}: guest error: {}", self.name, e.message))
                }
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!("{}: QEMU exited", self.name))
                }
            }
        }
        Ok(ticks)
    }

    fn qmp(&self) -> Result<Qmp> {
        Qmp::connect(&self.qmp_path)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A QMP connection (JSON lines over a Unix socket).
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    fn connect(path: &Path) -> Result<Qmp> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("QMP {}: {e}", path.display()))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        qmp.read_reply()?; // greeting
        qmp.execute("qmp_capabilities", "{}")?;
        Ok(qmp)
    }

    fn read_reply(&mut self) -> Result<Value> {
        loop {
            let mut line = String::new();
            if self
                .reader
                .read_line(&mut line)
                .map_err(|e| e.to_string())?
                == 0
            {
                return Err("QMP connection closed".into());
            }
            let v = json_read::parse(&line).map_err(|e| format!("QMP: {e}: {line}"))?;
            if v.get("event").is_none() {
                return Ok(v);
            }
        }
    }

    fn execute(&mut self, command: &str, arguments: &str) -> Result<Value> {
        writeln!(
            self.writer,
            r#"{{"execute":"{command}","arguments":{arguments}}}"#
        )
        .map_err(|e| e.to_string())?;
        let reply = self.read_reply()?;
        if let Some(e) = reply.get("error") {
            return Err(format!("QMP {command}: {e:?}"));
        }
        reply
            .get("return")
            .cloned()
            .ok_or(format!("QMP {command}: no return"))
    }
}

fn ready(vm: &Vm) -> Result<(Duration, Ready)> {
    vm.next("ready", |at, e| match e {
        Event::Ready(r) => Some((at - vm.spawned, *r)),
        _ => None,
    })
}

fn started(vm: &Vm) -> Result<u64> {
    vm.next("started", |_, e| match e {
        Event::Started(s) => Some(s.pages),
        _ => None,
    })
}

fn verify(vm: &mut Vm) -> Result<tern_workloads::event::Verified> {
    vm.send(GuestCommand::Verify)?;
    vm.next("verify", |_, e| match e {
        Event::Verify(v) => Some(*v),
        _ => None,
    })
}

/// Per-CPU means over `ticks`: (work/s, dirty MiB/s, busy %).
fn summarize(label: &str, ticks: &[(Instant, Tick)]) {
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

fn smoke(o: &Options, dir: &Path) -> Result<()> {
    let mut vm = Vm::spawn("guest", o, dir, None)?;
    let (to_ready, r) = ready(&vm)?;
    println!(
        "ready {:.0} ms after QEMU start (guest boot {} us): {r:?}",
        to_ready.as_secs_f64() * 1e3,
        r.boot_us
    );
    if r.cpus != o.smp {
        return Err(format!("guest found {} CPUs, QEMU has {}", r.cpus, o.smp));
    }
    let pages = started(&vm)?;
    summarize("run", &vm.ticks_for(Duration::from_secs(o.seconds))?);
    let v = verify(&mut vm)?;
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
        for how in [Corruption::Torn, Corruption::Stale] {
            let page = if how == Corruption::Torn {
                page
            } else {
                page + 1
            };
            vm.send(GuestCommand::Corrupt { page, how })?;
            vm.next("corrupted", |_, e| {
                matches!(e, Event::Corrupted(c) if c.page == page).then_some(())
            })?;
        }
        let v = verify(&mut vm)?;
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
    let done = vm.next("done", |_, e| match e {
        Event::Done(d) => Some(*d),
        _ => None,
    })?;
    println!(
        "done: bad={} dirtied={} pages uptime={} ms",
        done.report.bad, done.dirtied, done.uptime_ms
    );
    vm.send(GuestCommand::Reboot)?;
    vm.next("rebooting", |_, e| {
        matches!(e, Event::Rebooting).then_some(())
    })?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while vm.child.try_wait().map_err(|e| e.to_string())?.is_none() {
        if Instant::now() > deadline {
            return Err("QEMU did not exit after reboot".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("reboot ended the VM");
    Ok(())
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn number(v: &Value, path: &[&str]) -> Option<u64> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_u64()
}

fn migrate(o: &Options, dir: &Path) -> Result<()> {
    let src = Vm::spawn("source", o, dir, None)?;
    ready(&src)?;
    started(&src)?;
    src.next("baseline", |_, e| {
        matches!(e, Event::Baseline(_)).then_some(())
    })?;
    summarize(
        "before (no dirty logging)",
        &src.ticks_for(Duration::from_secs(o.seconds))?,
    );

    let port = free_port()?;
    let mut dst = Vm::spawn("destination", o, dir, Some(port))?;
    let mut qmp = src.qmp()?;
    dst.qmp()?; // the destination is listening once QMP answers
    qmp.execute(
        "migrate-set-parameters",
        r#"{"max-bandwidth":4294967296,"downtime-limit":300}"#,
    )?;
    qmp.execute("migrate", &format!(r#"{{"uri":"tcp:127.0.0.1:{port}"}}"#))?;
    let begin = Instant::now();
    let mut during = Vec::new();
    let info = loop {
        while let Ok((at, e)) = src.events.try_recv() {
            if let Event::Tick(t) = e {
                during.push((at, t));
            }
        }
        let info = qmp.execute("query-migrate", "{}")?;
        match info.get("status").and_then(Value::as_str) {
            Some("completed") => break info,
            Some("failed") | Some("cancelled") => {
                return Err(format!("migration failed: {info:?}"))
            }
            _ if begin.elapsed() > HANG_GUARD => return Err("migration did not complete".into()),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let last_source_tick = during.last().map(|(at, _)| *at);
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
    println!(
        "migration: total {} ms, downtime {} ms, setup {} ms, {} MiB transferred, {} dirty syncs",
        number(&info, &["total-time"]).unwrap_or(0),
        number(&info, &["downtime"]).unwrap_or(0),
        number(&info, &["setup-time"]).unwrap_or(0),
        number(&info, &["ram", "transferred"]).unwrap_or(0) >> 20,
        number(&info, &["ram", "dirty-sync-count"]).unwrap_or(0),
    );

    let (first_at, first) = dst.next("a tick on the destination", |at, e| match e {
        Event::Tick(t) => Some((at, *t)),
        _ => None,
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
    let v = verify(&mut dst)?;
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
    let done = dst.next("done", |_, e| match e {
        Event::Done(d) => Some(*d),
        _ => None,
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

fn dirty_log(o: &Options, dir: &Path) -> Result<()> {
    let vm = Vm::spawn("guest", o, dir, None)?;
    ready(&vm)?;
    started(&vm)?;
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
    let during = vm.ticks_for(Duration::from_secs(o.seconds))?;
    summarize("with dirty logging", &during);
    std::thread::sleep(Duration::from_millis(500));
    let rate = qmp.execute("query-dirty-rate", "{}")?;
    println!(
        "QEMU's own measurement: {} MiB/s ({:?})",
        number(&rate, &["dirty-rate"]).unwrap_or(0),
        rate.get("status")
    );
    summarize("after", &vm.ticks_for(Duration::from_secs(1))?);
    Ok(())
}

fn fault(o: &Options, dir: &Path) -> Result<()> {
    let mut vm = Vm::spawn("guest", o, dir, None)?;
    ready(&vm)?;
    started(&vm)?;
    vm.send(GuestCommand::Fault)?;
    let e = vm.next("the exception", |_, e| match e {
        Event::Error(e) => Some(e.clone()),
        _ => None,
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

fn main() {
    let result = parse_options().and_then(|o| {
        let dir = std::env::temp_dir().join(format!("qemu-testguest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        println!(
            "kernel {} smp {} mem {} args {:?}",
            o.kernel.display(),
            o.smp,
            o.mem,
            o.guest_args
        );
        let r = match o.scenario.as_str() {
            "smoke" => smoke(&o, &dir),
            "migrate" => migrate(&o, &dir),
            "dirty-log" => dirty_log(&o, &dir),
            "fault" => fault(&o, &dir),
            s => Err(format!(
                "unknown scenario {s:?} (smoke, migrate, dirty-log, fault)"
            )),
        };
        let _ = std::fs::remove_dir_all(&dir);
        r
    });
    match result {
        Ok(()) => println!("PASS"),
        Err(e) => {
            println!("FAIL: {e}");
            std::process::exit(1);
        }
    }
}

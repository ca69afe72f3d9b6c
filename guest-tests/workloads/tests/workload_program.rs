//! Runs the `tern-workload` program as a normal process: the same events and
//! commands the test guest speaks, end to end.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use tern_workloads::command::Command as GuestCommand;
use tern_workloads::event::{parse_line, CpuSource, Event, MemSource};
use tern_workloads::page::{Corruption, Reason};
use tern_workloads::params::CpuSet;

/// How long to wait for an event before declaring the program hung (a
/// guard against hanging the test run, not a performance expectation).
const HANG_GUARD: Duration = Duration::from_secs(120);

struct Program {
    child: Child,
    stdin: ChildStdin,
    events: Receiver<Event>,
}

/// A failing test must not leave the program spinning on every CPU.
impl Drop for Program {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Program {
    fn start(args: &[&str]) -> Program {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tern-workload"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn tern-workload");
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take().unwrap();
        let (tx, events) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let line = line.expect("stdout is text");
                let event =
                    parse_line(&line).unwrap_or_else(|| panic!("not an event line: {line:?}"));
                if tx
                    .send(event.unwrap_or_else(|e| panic!("bad event {line:?}: {e}")))
                    .is_err()
                {
                    return;
                }
            }
        });
        Program {
            child,
            stdin,
            events,
        }
    }

    /// The next event `pick` accepts (skipping ticks and the like).
    fn next<T>(&self, what: &str, mut pick: impl FnMut(Event) -> Option<T>) -> T {
        loop {
            let event = self
                .events
                .recv_timeout(HANG_GUARD)
                .unwrap_or_else(|_| panic!("no {what} event"));
            if let Some(t) = pick(event) {
                return t;
            }
        }
    }

    fn send(&mut self, command: GuestCommand) {
        writeln!(self.stdin, "{command}").expect("write command");
    }
}

#[test]
fn dirties_verifies_detects_corruption_and_stops() {
    let mut p = Program::start(&[
        "--ws=8",
        "--threads=2",
        "--tick_ms=50",
        "--baseline_ms=100",
        "--pattern=random",
    ]);
    let ready = p.next("ready", |e| match e {
        Event::Ready(r) => Some(r),
        _ => None,
    });
    assert_eq!(
        (ready.cpus, ready.cpus_source, ready.mem_source),
        (2, CpuSource::Threads, MemSource::Host)
    );
    assert_eq!((ready.busy, ready.ws_mib), (CpuSet(0b11), 8));
    let started = p.next("started", |e| match e {
        Event::Started(s) => Some(s),
        _ => None,
    });
    assert_eq!(started.pages, 8 * 256);

    // Both workers tick and dirty pages; the baseline arrives.
    let mut ticking = [false; 2];
    p.next("ticks with pages from both workers", |e| {
        if let Event::Tick(t) = e {
            assert!(t.busy_x100.is_some_and(|b| b <= 10_000));
            ticking[t.cpu as usize] |= t.pages > 0 && t.work >= t.pages;
        }
        ticking.iter().all(|&t| t).then_some(())
    });
    p.next("baseline", |e| {
        matches!(e, Event::Baseline(_)).then_some(())
    });

    p.send(GuestCommand::Verify);
    let v = p.next("verify", |e| match e {
        Event::Verify(v) => Some(v),
        _ => None,
    });
    assert!(v.report.ok(), "{v:?}");
    assert_eq!(v.report.pages, 8 * 256);

    p.send(GuestCommand::Corrupt {
        page: 1000,
        how: Corruption::Zero,
    });
    p.next("corrupted", |e| {
        matches!(e, Event::Corrupted(c) if c.page == 1000).then_some(())
    });
    p.send(GuestCommand::Verify);
    let v = p.next("verify", |e| match e {
        Event::Verify(v) => Some(v),
        _ => None,
    });
    let bad = v.report.first_bad.expect("the corrupted page is found");
    assert_eq!(
        (v.report.bad, bad.page, bad.damage.reason),
        (1, 1000, Reason::Zeroed)
    );

    p.send(GuestCommand::Stop);
    let done = p.next("done", |e| match e {
        Event::Done(d) => Some(d),
        _ => None,
    });
    assert_eq!(
        (done.report.bad, done.report.first_bad.map(|b| b.page)),
        (1, Some(1000))
    );
    assert!(done.dirtied > 0);

    p.send(GuestCommand::Reboot);
    p.next("rebooting", |e| matches!(e, Event::Rebooting).then_some(()));
    assert!(p.child.wait().expect("wait").success());
}

#[test]
fn bad_parameters_and_commands_are_reported() {
    let mut p = Program::start(&["--ws=lots"]);
    let err = p.next("error", |e| match e {
        Event::Error(e) => Some(e),
        _ => None,
    });
    assert_eq!(
        (err.kind.as_str(), err.message.as_str()),
        ("param", "tern.ws=lots: not a number")
    );
    assert_eq!(p.child.wait().expect("wait").code(), Some(2));

    let mut p = Program::start(&["--test=idle", "--tick_ms=20"]);
    let ready = p.next("ready", |e| match e {
        Event::Ready(r) => Some(r),
        _ => None,
    });
    // Idle: every CPU runs the stall meter; nothing is dirtied.
    assert_eq!(
        (ready.busy, ready.ws_mib),
        (CpuSet::all_below(ready.cpus as usize), 0)
    );
    writeln!(p.stdin, "dance").unwrap();
    let err = p.next("error", |e| match e {
        Event::Error(e) => Some(e),
        _ => None,
    });
    assert_eq!(err.kind, "command");
    p.send(GuestCommand::Corrupt {
        page: 0,
        how: Corruption::Torn,
    });
    p.next("error about the page", |e| {
        matches!(e, Event::Error(e) if e.message.contains("page 0")).then_some(())
    });
    p.send(GuestCommand::Verify);
    let v = p.next("verify", |e| match e {
        Event::Verify(v) => Some(v),
        _ => None,
    });
    assert!(v.report.ok() && v.report.pages == 0);
    p.send(GuestCommand::Reboot);
    assert!(p.child.wait().expect("wait").success());
}

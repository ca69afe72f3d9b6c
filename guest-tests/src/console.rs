//! A VMM's serial console as seen by the runner: every line, timestamped on
//! arrival against the run's clock, and the `tern-guest:` events in it.
//!
//! A reader thread turns the VMM's stdout into lines (bytes that are not
//! UTF-8 are replaced, never fatal); the runner pulls them into the
//! [`Console`], which keeps them all (for the result) and lets a step wait
//! for the next line it cares about.

use std::io::{BufRead, BufReader, Read};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde::Serialize;
use tern_workloads::event::{parse_line, Event};

use crate::error::{Error, Result};
use crate::interrupt;

/// The run's time origin: every timestamp is milliseconds since it.
#[derive(Clone, Copy, Debug)]
pub struct RunClock {
    t0: Instant,
}

impl RunClock {
    pub fn start() -> RunClock {
        RunClock { t0: Instant::now() }
    }

    pub fn ms_at(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.t0).as_secs_f64() * 1e3
    }

    pub fn now_ms(&self) -> f64 {
        self.ms_at(Instant::now())
    }
}

/// One line the VMM wrote, as it arrived.
struct RawLine {
    at: Instant,
    text: String,
    /// Ended with a newline (false only for the last bytes before EOF).
    complete: bool,
}

/// What a console line is.
#[derive(Clone, Debug, PartialEq)]
pub enum Parsed {
    /// Not a `tern-guest:` line (kernel messages, VMM output).
    Other,
    Event(Event),
    /// A `tern-guest:` line that does not read as an event.
    Unreadable(String),
}

/// One console line.
#[derive(Clone, Debug)]
pub struct GuestLine {
    /// Milliseconds since the run started.
    pub at_ms: f64,
    pub text: String,
    pub parsed: Parsed,
    /// False for the last bytes before the output ended without a newline:
    /// a line cut by a switchover (continued on the destination's console)
    /// or by the runner stopping the VMM.
    pub complete: bool,
}

impl GuestLine {
    fn new(at_ms: f64, text: String, complete: bool) -> GuestLine {
        let parsed = match parse_line(&text) {
            None => Parsed::Other,
            Some(Ok(e)) => Parsed::Event(e),
            Some(Err(e)) => Parsed::Unreadable(e.to_string()),
        };
        GuestLine {
            at_ms,
            text,
            parsed,
            complete,
        }
    }

    pub fn event(&self) -> Option<&Event> {
        match &self.parsed {
            Parsed::Event(e) => Some(e),
            _ => None,
        }
    }
}

/// A console line for the result JSON.
#[derive(Clone, Debug, Serialize)]
pub struct LoggedLine {
    pub at_ms: f64,
    /// `source` or `destination`.
    pub vm: String,
    pub text: String,
}

/// The console of one VMM.
pub struct Console {
    vm: String,
    clock: RunClock,
    rx: Receiver<RawLine>,
    lines: Vec<GuestLine>,
    /// Index of the first line the next wait looks at.
    cursor: usize,
    closed: bool,
    /// The unfinished last line of the source, to join with this console's
    /// first line (a line cut by the switchover).
    carry: Option<String>,
    /// The unfinished last line of this console at EOF.
    unfinished: Option<String>,
}

impl Console {
    /// Starts reading `out` (the VMM's stdout).
    pub fn start<R: Read + Send + 'static>(vm: &str, clock: RunClock, out: R) -> Console {
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(out);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        let complete = buf.last() == Some(&b'\n');
                        let text = String::from_utf8_lossy(&buf)
                            .trim_end_matches(['\n', '\r'])
                            .to_string();
                        let line = RawLine {
                            at: Instant::now(),
                            text,
                            complete,
                        };
                        if tx.send(line).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Console {
            vm: vm.to_string(),
            clock,
            rx,
            lines: Vec::new(),
            cursor: 0,
            closed: false,
            carry: None,
            unfinished: None,
        }
    }

    pub fn vm(&self) -> &str {
        &self.vm
    }

    /// Moves the line a switchover cut in two — this console's unfinished
    /// last line, once its VMM closed its output — to the start of `next`,
    /// the console that continues it, where it is joined to the first line
    /// and read once, whole. It leaves this console: the bytes before the
    /// cut can be a whole event on their own (cut just before the newline),
    /// which must not be read on both sides. Nothing moves when there is no
    /// such line or `next` has already delivered a line (the continuation
    /// would be lost in it).
    pub fn hand_over_unfinished(&mut self, next: &mut Console) {
        if !next.lines.is_empty() {
            return;
        }
        let Some(fragment) = self.unfinished.take() else {
            return;
        };
        if self.lines.last().is_some_and(|l| !l.complete) {
            self.lines.pop();
            self.cursor = self.cursor.min(self.lines.len());
        }
        next.carry = Some(fragment);
    }

    fn ingest(&mut self, raw: RawLine) {
        let mut text = raw.text;
        if let Some(prefix) = self.carry.take() {
            text.insert_str(0, &prefix);
        }
        if !raw.complete {
            // Output ended mid-line: keep it aside in case another console
            // continues it, and record it as is.
            self.unfinished = Some(text.clone());
        }
        let at_ms = self.clock.ms_at(raw.at);
        self.lines.push(GuestLine::new(at_ms, text, raw.complete));
    }

    /// Takes in every line that has arrived, without waiting.
    pub fn pump(&mut self) {
        while let Ok(raw) = self.rx.try_recv() {
            self.ingest(raw);
        }
    }

    /// Waits for the output to end (the VMM exited), up to `d`.
    pub fn drain_until_closed(&mut self, d: Duration) -> Result<bool> {
        let end = Instant::now() + d;
        while !self.closed {
            interrupt::check()?;
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            match self.rx.recv_timeout(left.min(Duration::from_millis(50))) {
                Ok(raw) => self.ingest(raw),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => self.closed = true,
            }
        }
        Ok(true)
    }

    /// Every line so far.
    pub fn lines(&self) -> &[GuestLine] {
        &self.lines
    }

    /// Index of the next line a wait will look at.
    pub fn position(&self) -> usize {
        self.cursor
    }

    /// Skips every line received so far.
    pub fn skip_to_end(&mut self) {
        self.pump();
        self.cursor = self.lines.len();
    }

    /// Waits up to `timeout` for the next line that `pick` accepts and
    /// returns what `pick` made of it. An `error` event that `pick` does
    /// not accept ends the wait with [`Error::Guest`]; so does the console
    /// closing (the VMM exited).
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pick: impl FnMut(&GuestLine) -> Option<T>,
    ) -> Result<T> {
        let end = Instant::now() + timeout;
        loop {
            while self.cursor < self.lines.len() {
                let line = &self.lines[self.cursor];
                self.cursor += 1;
                if let Some(t) = pick(line) {
                    return Ok(t);
                }
                if let Some(Event::Error(e)) = line.event() {
                    return Err(Error::Guest {
                        vm: self.vm.clone(),
                        message: format!(
                            "error event while waiting for {what}: {} ({})",
                            e.message, e.kind
                        ),
                    });
                }
            }
            if self.closed {
                return Err(Error::vm(
                    &self.vm,
                    format!("console closed (VMM exited) while waiting for {what}"),
                ));
            }
            interrupt::check()?;
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout {
                    vm: self.vm.clone(),
                    what: what.to_string(),
                    seconds: timeout.as_secs_f64(),
                });
            }
            match self.rx.recv_timeout(left.min(Duration::from_millis(50))) {
                Ok(raw) => self.ingest(raw),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => self.closed = true,
            }
        }
    }

    /// Waits for the next event `pick` accepts (see [`Console::wait_for`]).
    pub fn wait_event<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pick: impl FnMut(&Event) -> Option<T>,
    ) -> Result<T> {
        self.wait_for(what, timeout, |l| l.event().and_then(&mut pick))
    }

    /// The lines for the result JSON.
    pub fn logged(&self, from: usize) -> Vec<LoggedLine> {
        self.lines[from.min(self.lines.len())..]
            .iter()
            .map(|l| LoggedLine {
                at_ms: l.at_ms,
                vm: self.vm.clone(),
                text: l.text.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_timestamped_and_split_lines_join() {
        let clock = RunClock::start();
        let src = b"booting\ntern-guest: {\"event\":\"started\",\"pages\":3,\"fill_ms\":1}\ntern-guest: {\"event\":\"sta".to_vec();
        let mut a = Console::start("source", clock, std::io::Cursor::new(src));
        let pages = a
            .wait_event("started", Duration::from_secs(5), |e| match e {
                Event::Started(s) => Some(s.pages),
                _ => None,
            })
            .unwrap();
        assert_eq!(pages, 3);
        assert!(a.drain_until_closed(Duration::from_secs(5)).unwrap());
        assert!(matches!(a.lines()[2].parsed, Parsed::Unreadable(_)));
        assert!(!a.lines()[2].complete && a.lines()[1].complete);
        let dst = b"rted\",\"pages\":4,\"fill_ms\":2}\n\xff\xfe garbage\n".to_vec();
        let mut b = Console::start("destination", clock, std::io::Cursor::new(dst));
        a.hand_over_unfinished(&mut b);
        assert_eq!(a.lines().len(), 2, "the cut line left the source");
        let pages = b
            .wait_event("started", Duration::from_secs(5), |e| match e {
                Event::Started(s) => Some(s.pages),
                _ => None,
            })
            .unwrap();
        assert_eq!(pages, 4);
        let err = b
            .wait_event("ready", Duration::from_secs(5), |_| Some(()))
            .unwrap_err();
        assert!(matches!(err, Error::Vm { .. }), "{err}");
        assert_eq!(b.lines()[1].parsed, Parsed::Other);
        assert!(b.lines().iter().all(|l| l.at_ms >= 0.0));
    }

    /// A tick line in the guest's own format.
    fn tick_line(seq: u64) -> String {
        format!(
            "tern-guest: {{\"event\":\"tick\",\"cpu\":0,\"seq\":{seq},\"tsc\":1,\"clock_ns\":1,\
             \"interval_us\":1,\"work\":1,\"pages\":0,\"dirty_mib_s\":0.00,\"max_gap_us\":1,\
             \"stalled_us\":0,\"excluded_us\":0,\"busy_pct\":99.00,\"rate_pct\":null,\"clock\":\"ok\",\
             \"drift_us\":0}}"
        )
    }

    fn closed(vm: &str, clock: RunClock, out: String) -> Console {
        let mut c = Console::start(vm, clock, std::io::Cursor::new(out.into_bytes()));
        assert!(c.drain_until_closed(Duration::from_secs(5)).unwrap());
        c
    }

    fn seqs(c: &Console, side: crate::analysis::Side) -> Vec<u64> {
        crate::analysis::ticks(c.lines(), side)
            .iter()
            .map(|t| t.tick.seq)
            .collect()
    }

    /// The switchover can pause the guest between the last byte of a line
    /// and its newline (each byte is its own exit): the source's last bytes
    /// are then a whole event. It is read once, on the destination that
    /// wrote the newline — a `bench send-rate` run once failed its verdict
    /// with "tick 49 after tick 49 across the switchover" this way.
    #[test]
    fn a_line_cut_just_before_its_newline_is_read_once() {
        use crate::analysis::Side;
        let clock = RunClock::start();
        let mut a = closed(
            "source",
            clock,
            format!("{}\n{}", tick_line(48), tick_line(49)),
        );
        let mut b = Console::start(
            "destination",
            clock,
            std::io::Cursor::new(format!("\n{}\n", tick_line(50)).into_bytes()),
        );
        a.hand_over_unfinished(&mut b);
        assert!(b.drain_until_closed(Duration::from_secs(5)).unwrap());
        assert_eq!(seqs(&a, Side::Source), [48]);
        assert_eq!(seqs(&b, Side::Destination), [49, 50]);
        assert!(b.lines().iter().all(|l| l.complete));
    }

    /// When the destination has already delivered a line, the cut line stays
    /// where it was (joining it to a later line would make a wrong one).
    #[test]
    fn a_cut_line_stays_when_the_next_console_has_started() {
        let clock = RunClock::start();
        let mut a = closed(
            "source",
            clock,
            format!("{}\ntern-guest: {{\"ev", tick_line(1)),
        );
        let mut b = closed(
            "destination",
            clock,
            format!("ent\":1}}\n{}\n", tick_line(2)),
        );
        a.hand_over_unfinished(&mut b);
        assert_eq!(a.lines().len(), 2);
        assert!(!a.lines()[1].complete);
        assert_eq!(b.lines()[0].text, "ent\":1}");
    }

    #[test]
    fn an_error_event_ends_a_wait() {
        let out = b"tern-guest: {\"event\":\"error\",\"kind\":\"param\",\"message\":\"tern.test=disk: must be one of idle, dirtier\"}\n".to_vec();
        let mut c = Console::start("source", RunClock::start(), std::io::Cursor::new(out));
        let err = c
            .wait_event("ready", Duration::from_secs(5), |e| {
                matches!(e, Event::Ready(_)).then_some(())
            })
            .unwrap_err();
        assert!(err.to_string().contains("tern.test=disk"), "{err}");
    }
}

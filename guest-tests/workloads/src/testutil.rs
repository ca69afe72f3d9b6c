//! A platform for host tests: a TSC that advances on every read, output
//! captured as parsed events, input fed by the test.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use crate::event::{parse_line, Event};
use crate::platform::Platform;

pub struct TestPlatform {
    tsc: AtomicU64,
    /// TSC ticks each read advances.
    pub step: u64,
    pub lines: Mutex<Vec<String>>,
    pub input: Mutex<VecDeque<u8>>,
    /// Lines that arrive once the TSC passes their time.
    scheduled: Mutex<Vec<(u64, String)>>,
}

pub const HZ: u64 = 1_000_000_000;

impl TestPlatform {
    pub fn new(step: u64) -> Self {
        TestPlatform {
            tsc: AtomicU64::new(1),
            step,
            lines: Mutex::new(Vec::new()),
            input: Mutex::new(VecDeque::new()),
            scheduled: Mutex::new(Vec::new()),
        }
    }

    /// `line` arrives when the TSC reaches `tsc`.
    pub fn send_at(&self, tsc: u64, line: &str) {
        self.scheduled.lock().unwrap().push((tsc, line.to_string()));
    }

    pub fn send(&self, line: &str) {
        self.input
            .lock()
            .unwrap()
            .extend(line.bytes().chain([b'\n']));
    }

    /// Every event printed so far (and forgets them).
    pub fn take_events(&self) -> Vec<Event> {
        let lines = std::mem::take(&mut *self.lines.lock().unwrap());
        lines
            .iter()
            .map(|l| {
                parse_line(l)
                    .expect("an event line")
                    .expect("a valid event")
            })
            .collect()
    }
}

impl Platform for TestPlatform {
    fn tsc(&self) -> u64 {
        self.tsc.fetch_add(self.step, Relaxed)
    }
    fn tsc_hz(&self) -> u64 {
        HZ
    }
    fn boot_tsc(&self) -> u64 {
        0
    }
    fn clock_ns(&self, _: usize) -> Option<u64> {
        None
    }
    fn write_line(&self, line: &str) {
        self.lines.lock().unwrap().push(line.to_string());
    }
    fn read_input(&self, buf: &mut [u8]) -> usize {
        let now = self.tsc.load(Relaxed);
        self.scheduled.lock().unwrap().retain(|(at, line)| {
            if *at <= now {
                self.send(line);
            }
            *at > now
        });
        let mut input = self.input.lock().unwrap();
        let n = buf.len().min(input.len());
        for (b, v) in buf.iter_mut().zip(input.drain(..n)) {
            *b = v;
        }
        n
    }
    fn reboot(&self) -> ! {
        panic!("reboot in a test");
    }
    fn fault(&self) {}
}

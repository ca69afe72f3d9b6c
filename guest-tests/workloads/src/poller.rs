//! Reading host commands: every `poll_ms`, whatever input is waiting is
//! assembled into lines and parsed; bad lines are answered with an error
//! event. (Each poll is a trip through ring 0 on the test guest, so it is
//! rationed rather than done every loop iteration.)

use crate::command::Command;
use crate::event::ErrorKind;
use crate::line::{Input, LineReader};
use crate::platform::Platform;
use crate::run::emit_error;

pub struct CommandPoller {
    input: LineReader<128>,
    next_poll: u64,
    interval: u64,
}

impl CommandPoller {
    /// Polls every `poll_ms` of a `tsc_hz` TSC; the first poll is due at once.
    pub fn new(tsc_hz: u64, poll_ms: u32) -> CommandPoller {
        CommandPoller {
            input: LineReader::new(),
            next_poll: 0,
            interval: tsc_hz / 1000 * u64::from(poll_ms),
        }
    }

    #[inline]
    pub fn due(&self, now: u64) -> bool {
        now >= self.next_poll
    }

    /// When the next poll is due.
    #[inline]
    pub fn next_due(&self) -> u64 {
        self.next_poll
    }

    /// Reads the waiting input and calls `handle` for each complete command.
    pub fn poll<P: Platform + ?Sized>(&mut self, platform: &P, mut handle: impl FnMut(Command)) {
        let mut bytes = [0u8; 64];
        loop {
            let n = platform.read_input(&mut bytes);
            for &b in &bytes[..n] {
                match self.input.push(b) {
                    Input::Pending => {}
                    Input::Rejected => emit_error(
                        platform,
                        ErrorKind::Command,
                        format_args!("command line too long or not UTF-8"),
                    ),
                    Input::Line(line) => match Command::parse(line) {
                        Ok(command) => handle(command),
                        Err(e) => emit_error(platform, ErrorKind::Command, format_args!("{e}")),
                    },
                }
            }
            if n < bytes.len() {
                break;
            }
        }
        self.next_poll = platform.tsc() + self.interval;
    }
}

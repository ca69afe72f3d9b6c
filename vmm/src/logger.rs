//! The `log` backend of the `tern` binary: one line per record on stderr,
//! `tern: warning: ...`, at the level `TERN_LOG` names (error, warn, info,
//! debug, trace; default warn). When stderr is a terminal (possibly in raw
//! mode for the console) lines end in CR LF so they stay readable.

use std::io::{IsTerminal, Write};

use log::{Level, LevelFilter, Log, Metadata, Record};

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            Level::Error => "error",
            Level::Warn => "warning",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        };
        let end = if std::io::stderr().is_terminal() {
            "\r\n"
        } else {
            "\n"
        };
        let line = format!("tern: {level}: {}{end}", record.args());
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

/// Installs the logger (once; later calls do nothing).
pub fn init() {
    let level = std::env::var("TERN_LOG")
        .ok()
        .and_then(|v| v.parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::Warn);
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

//! A QMP client: JSON lines over a Unix socket. Events are skipped; every
//! read has a timeout so a hung QEMU cannot hang the runner.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::interrupt;

/// One QMP session (capabilities negotiated).
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

fn err(command: &str, message: impl Into<String>) -> Error {
    Error::Qmp {
        command: command.into(),
        message: message.into(),
    }
}

impl Qmp {
    /// Connects (retrying for up to `wait`: QEMU creates the socket as it
    /// starts) and negotiates capabilities.
    pub fn connect(path: &Path, wait: Duration) -> Result<Qmp> {
        let end = Instant::now() + wait;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() > end => {
                    return Err(err("connect", format!("{}: {e}", path.display())))
                }
                Err(_) => interrupt::sleep(Duration::from_millis(10))?,
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| err("connect", e.to_string()))?;
        let writer = stream
            .try_clone()
            .map_err(|e| err("connect", e.to_string()))?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = qmp.read_message("greeting")?;
        if greeting.get("QMP").is_none() {
            return Err(err("greeting", format!("not a QMP greeting: {greeting}")));
        }
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    fn read_message(&mut self, command: &str) -> Result<Value> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| err(command, format!("reading: {e}")))?;
        if n == 0 {
            return Err(err(command, "QEMU closed the QMP connection"));
        }
        serde_json::from_str(&line).map_err(|e| err(command, format!("{e}: {}", line.trim())))
    }

    /// Runs `command`; its `return` value, or the QMP error as an error.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value> {
        let msg = json!({ "execute": command, "arguments": arguments });
        writeln!(self.writer, "{msg}").map_err(|e| err(command, format!("sending: {e}")))?;
        loop {
            let reply = self.read_message(command)?;
            if reply.get("event").is_some() {
                continue;
            }
            if let Some(e) = reply.get("error") {
                let class = e.get("class").and_then(Value::as_str).unwrap_or("?");
                let desc = e.get("desc").and_then(Value::as_str).unwrap_or("?");
                return Err(err(command, format!("{class}: {desc}")));
            }
            return reply
                .get("return")
                .cloned()
                .ok_or_else(|| err(command, format!("no return in {reply}")));
        }
    }
}

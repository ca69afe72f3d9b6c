//! The guest's serial console on tern's stdout, watched for a Linux panic so
//! that the reset which follows `panic=N` ends tern with a panic status, not
//! as an orderly reboot.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

/// The marker Linux prints when it panics.
const PANIC_MARKER: &[u8] = b"Kernel panic - not syncing: ";

/// A `Write` that forwards to `inner` and remembers the first panic line.
pub struct ConsoleOutput<W: Write> {
    inner: W,
    line: Vec<u8>,
    panic: Arc<Mutex<Option<String>>>,
}

impl<W: Write> ConsoleOutput<W> {
    /// Wraps `inner`; the panic text (if any) appears in `panic`.
    pub fn new(inner: W, panic: Arc<Mutex<Option<String>>>) -> Self {
        ConsoleOutput {
            inner,
            line: Vec::with_capacity(256),
            panic,
        }
    }

    fn scan(&mut self, buf: &[u8]) {
        for &b in buf {
            if b == b'\n' {
                if let Some(pos) = find(&self.line, PANIC_MARKER) {
                    let msg = String::from_utf8_lossy(&self.line[pos + PANIC_MARKER.len()..])
                        .trim_end()
                        .to_string();
                    let mut p = self.panic.lock().unwrap_or_else(|e| e.into_inner());
                    p.get_or_insert(msg);
                }
                self.line.clear();
            } else if self.line.len() < 1024 {
                self.line.push(b);
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl<W: Write> Write for ConsoleOutput<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.scan(buf);
        // The console must never stop the guest: a closed stdout loses output only.
        match self.inner.write_all(buf) {
            Ok(()) | Err(_) => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = self.inner.flush();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_a_panic_split_across_writes() {
        let panic = Arc::new(Mutex::new(None));
        let mut c = ConsoleOutput::new(Vec::new(), panic.clone());
        c.write_all(b"[ 29.97] Kernel panic - not sy").unwrap();
        c.write_all(b"ncing: VFS: Unable to mount root fs\r\n[ 30.0] Rebooting\n")
            .unwrap();
        assert_eq!(
            panic.lock().unwrap().as_deref(),
            Some("VFS: Unable to mount root fs")
        );
        assert!(c.inner.starts_with(b"[ 29.97] Kernel panic"));
    }

    #[test]
    fn ordinary_output_is_not_a_panic() {
        let panic = Arc::new(Mutex::new(None));
        let mut c = ConsoleOutput::new(Vec::new(), panic.clone());
        c.write_all(b"tern-guest: {\"event\":\"ready\"}\npanic=1 on the cmdline\n")
            .unwrap();
        assert!(panic.lock().unwrap().is_none());
    }
}

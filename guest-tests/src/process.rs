//! Child processes the runner starts (VMMs, `tern migrate`, `ip`, `tc`):
//! always reaped. Each child gets its own process group (so a Ctrl-C reaches
//! only the runner, which then stops it in order) and a parent-death signal
//! (so it dies with the runner even if the runner is killed outright).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::interrupt;

/// A program and its arguments, optionally run inside a network namespace
/// (`ip netns exec NS program args...`).
#[derive(Clone, Debug, Serialize)]
pub struct CommandSpec {
    pub program: String,
    pub args: Vec<String>,
    /// Network namespace to run in.
    pub netns: Option<String>,
}

impl CommandSpec {
    pub fn new(program: impl Into<String>) -> Self {
        CommandSpec {
            program: program.into(),
            args: Vec::new(),
            netns: None,
        }
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn in_netns(mut self, netns: Option<&str>) -> Self {
        self.netns = netns.map(str::to_string);
        self
    }

    /// The command line as a shell would show it (for reports).
    pub fn display(&self) -> String {
        let quote = |s: &str| {
            if s.is_empty() || s.contains(|c: char| c.is_whitespace() || "\"'$\\".contains(c)) {
                format!("'{}'", s.replace('\'', "'\\''"))
            } else {
                s.to_string()
            }
        };
        let mut words: Vec<String> = Vec::new();
        if let Some(ns) = &self.netns {
            words.extend(["ip", "netns", "exec", ns.as_str()].map(String::from));
        }
        words.push(quote(&self.program));
        words.extend(self.args.iter().map(|a| quote(a)));
        words.join(" ")
    }

    /// The `std::process::Command` for this spec, prepared as described in
    /// the module docs.
    pub fn command(&self) -> Command {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.program);
                c
            }
            None => Command::new(&self.program),
        };
        cmd.args(&self.args);
        cmd.process_group(0);
        // SAFETY: the closure runs in the child between fork and exec and
        // only calls prctl(2), which is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }
}

/// A running child that is stopped and reaped when dropped.
#[derive(Debug)]
pub struct Guarded {
    label: String,
    child: Child,
    status: Option<ExitStatus>,
}

impl Guarded {
    /// Spawns `cmd` (already configured with its stdio).
    pub fn spawn(label: impl Into<String>, mut cmd: Command) -> Result<Guarded> {
        let label = label.into();
        let child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("starting {label} ({:?})", cmd.get_program()), e))?;
        Ok(Guarded {
            label,
            child,
            status: None,
        })
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The exit status, if it has exited (reaping it).
    pub fn try_status(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .map_err(|e| Error::io(format!("waiting for {}", self.label), e))?;
        }
        Ok(self.status)
    }

    /// Waits up to `d` for it to exit (interruptible).
    pub fn wait_for(&mut self, d: Duration) -> Result<Option<ExitStatus>> {
        let end = Instant::now() + d;
        loop {
            if let Some(s) = self.try_status()? {
                return Ok(Some(s));
            }
            if Instant::now() >= end {
                return Ok(None);
            }
            interrupt::sleep(Duration::from_millis(10))?;
        }
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL; always reaps.
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Ok(Some(s)) = self.try_status() {
            return Some(s);
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own unreaped child's pid.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let end = Instant::now() + grace;
        while Instant::now() < end {
            if let Ok(Some(s)) = self.try_status() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let status = self.child.wait().ok();
        self.status = status;
        status
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.terminate(Duration::from_millis(500));
    }
}

/// Reads a pipe to its end on a thread.
pub struct Collected {
    handle: Option<JoinHandle<Vec<u8>>>,
}

impl Collected {
    pub fn start<R: Read + Send + 'static>(mut r: R) -> Collected {
        Collected {
            handle: Some(std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = r.read_to_end(&mut buf);
                buf
            })),
        }
    }

    /// Everything read (waits for the writer to close the pipe).
    pub fn finish(mut self) -> String {
        let bytes = self
            .handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Lines of a pipe, collected on a thread as they come.
#[derive(Clone, Default)]
pub struct LineLog {
    lines: Arc<Mutex<Vec<String>>>,
}

impl LineLog {
    pub fn start<R: Read + Send + 'static>(r: R) -> LineLog {
        let log = LineLog::default();
        let lines = Arc::clone(&log.lines);
        std::thread::spawn(move || {
            let mut reader = std::io::BufReader::new(r);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match std::io::BufRead::read_until(&mut reader, b'\n', &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&buf).trim_end().to_string();
                        if let Ok(mut l) = lines.lock() {
                            l.push(text);
                        }
                    }
                }
            }
        });
        log
    }

    pub fn snapshot(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn contains(&self, needle: &str) -> bool {
        self.lines
            .lock()
            .map(|l| l.iter().any(|s| s.contains(needle)))
            .unwrap_or(false)
    }

    /// The last `n` lines, joined (for error messages).
    pub fn tail(&self, n: usize) -> String {
        let l = self.snapshot();
        l[l.len().saturating_sub(n)..].join(" | ")
    }
}

/// Runs a short helper command to completion and returns its stdout;
/// a non-zero exit is an [`Error::Command`] carrying its stderr.
pub fn run_checked(spec: &CommandSpec) -> Result<String> {
    let mut cmd = spec.command();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = cmd
        .output()
        .map_err(|e| Error::io(format!("running `{}`", spec.display()), e))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Command {
            command: spec.display(),
            status: out.status.to_string(),
            output: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

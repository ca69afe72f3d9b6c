//! Running QEMU (microvm, KVM) with the test guest, talking to it over its
//! serial port and to QEMU over QMP.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use tern_workloads::command::Command as GuestCommand;
use tern_workloads::event::{parse_line, Event, Ready, Tick, Verified};
use tern_workloads::json_read::{self, Value};

pub type Result<T> = std::result::Result<T, String>;

/// Longest wait for any one event: beyond this the guest is hung.
pub const HANG_GUARD: Duration = Duration::from_secs(90);

pub struct Options {
    pub kernel: PathBuf,
    pub smp: u32,
    pub mem: String,
    pub cpu: String,
    pub seconds: u64,
    pub scenario: String,
    pub guest_args: Vec<String>,
    /// Where scratch files (QMP sockets, disk images) go.
    pub dir: PathBuf,
}

impl Options {
    pub fn parse() -> Result<Options> {
        let mut o = Options {
            kernel: PathBuf::new(),
            smp: 1,
            mem: "512M".into(),
            cpu: "host,-arch-capabilities".into(),
            seconds: 3,
            scenario: String::new(),
            guest_args: Vec::new(),
            dir: std::env::temp_dir().join(format!("qemu-testguest-{}", std::process::id())),
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

    /// The guest arguments plus `extra` (later ones win in the guest).
    pub fn append(&self, extra: &[&str]) -> String {
        self.guest_args
            .iter()
            .map(String::as_str)
            .chain(extra.iter().copied())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn build_testguest() -> Result<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../resources/build-testguest.sh");
    let out = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("{}: {e}", script.display()))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("testguest="))
        .map(PathBuf::from)
        .ok_or(format!("{} printed no testguest= line", script.display()))
}

/// What to start.
pub struct VmSpec<'a> {
    pub name: &'static str,
    /// The kernel command line.
    pub append: String,
    /// More QEMU arguments (devices).
    pub extra: &'a [String],
    /// Wait for an incoming migration on this port.
    pub incoming: Option<u16>,
}

/// One QEMU process running the test guest.
pub struct Vm {
    pub name: &'static str,
    pub child: Child,
    stdin: ChildStdin,
    pub events: Receiver<(Instant, Event)>,
    pub spawned: Instant,
    qmp_path: PathBuf,
}

impl Vm {
    pub fn spawn(o: &Options, spec: VmSpec<'_>) -> Result<Vm> {
        let name = spec.name;
        let qmp_path = o.dir.join(format!("{name}.qmp"));
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-M",
            "microvm,acpi=off",
            "-enable-kvm",
            "-cpu",
            &o.cpu,
            "-m",
            &o.mem,
            "-smp",
            &o.smp.to_string(),
        ])
        .args([
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
        ])
        // Named threads ("CPU 0/KVM"), so the share scenario finds the vCPU.
        .args(["-name", &format!("{name},debug-threads=on")])
        // Modern virtio-mmio devices (version 2), as tern has; QEMU's default is legacy.
        .args(["-global", "virtio-mmio.force-legacy=false", "-kernel"])
        .arg(&o.kernel)
        .args(["-append", &spec.append, "-qmp"])
        .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
        .args(spec.extra);
        if let Some(port) = spec.incoming {
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

    /// The next event `pick` accepts. An error event nobody asked for fails
    /// the wait.
    pub fn next<T>(
        &self,
        what: &str,
        mut pick: impl FnMut(Instant, &Event) -> Option<T>,
    ) -> Result<T> {
        loop {
            match self.events.recv_timeout(HANG_GUARD) {
                Ok((at, event)) => {
                    if let Some(t) = pick(at, &event) {
                        return Ok(t);
                    }
                    if let Event::Error(e) = event {
                        return Err(format!(
                            "{}: guest error while waiting for {what}: {} ({})",
                            self.name, e.message, e.kind
                        ));
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

    pub fn send(&mut self, command: GuestCommand) -> Result<()> {
        writeln!(self.stdin, "{command}").map_err(|e| format!("{}: {e}", self.name))
    }

    /// Every event for `d` of wall time.
    pub fn events_for(&self, d: Duration) -> Result<Vec<(Instant, Event)>> {
        let end = Instant::now() + d;
        let mut out = Vec::new();
        while Instant::now() < end {
            match self
                .events
                .recv_timeout(end.saturating_duration_since(Instant::now()))
            {
                Ok((_, Event::Error(e))) => {
                    return Err(format!("{}: guest error: {}", self.name, e.message))
                }
                Ok(e) => out.push(e),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!("{}: QEMU exited", self.name))
                }
            }
        }
        Ok(out)
    }

    /// Ticks for `d` of wall time.
    pub fn ticks_for(&self, d: Duration) -> Result<Vec<(Instant, Tick)>> {
        Ok(self
            .events_for(d)?
            .into_iter()
            .filter_map(|(at, e)| {
                if let Event::Tick(t) = e {
                    Some((at, t))
                } else {
                    None
                }
            })
            .collect())
    }

    pub fn ready(&self) -> Result<(Duration, Ready)> {
        self.next("ready", |at, e| match e {
            Event::Ready(r) => Some((at - self.spawned, *r)),
            _ => None,
        })
    }

    pub fn started(&self) -> Result<u64> {
        self.next("started", |_, e| match e {
            Event::Started(s) => Some(s.pages),
            _ => None,
        })
    }

    pub fn verify(&mut self) -> Result<Verified> {
        self.send(GuestCommand::Verify)?;
        self.next("verify", |_, e| match e {
            Event::Verify(v) => Some(*v),
            _ => None,
        })
    }

    /// Waits (up to 10 s) for QEMU to exit.
    pub fn wait_exit(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().map_err(|e| e.to_string())?.is_none() {
            if Instant::now() > deadline {
                return Err(format!("{}: QEMU did not exit", self.name));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    pub fn qmp(&self) -> Result<Qmp> {
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
pub struct Qmp {
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

    pub fn execute(&mut self, command: &str, arguments: &str) -> Result<Value> {
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

    /// Starts a migration to `port` on this host and waits for it to end;
    /// returns `query-migrate`'s final answer and every event `source`
    /// printed meanwhile.
    pub fn migrate(&mut self, port: u16, source: &Vm) -> Result<(Value, Vec<(Instant, Event)>)> {
        self.execute(
            "migrate-set-parameters",
            r#"{"max-bandwidth":4294967296,"downtime-limit":300}"#,
        )?;
        self.execute("migrate", &format!(r#"{{"uri":"tcp:127.0.0.1:{port}"}}"#))?;
        let begin = Instant::now();
        let mut during = Vec::new();
        loop {
            during.extend(source.events.try_iter());
            let info = self.execute("query-migrate", "{}")?;
            match info.get("status").and_then(Value::as_str) {
                Some("completed") => return Ok((info, during)),
                Some("failed") | Some("cancelled") => {
                    return Err(format!("migration failed: {info:?}"))
                }
                _ if begin.elapsed() > HANG_GUARD => {
                    return Err("migration did not complete".into())
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// `v.path[0].path[1]...` as a number.
pub fn number(v: &Value, path: &[&str]) -> Option<u64> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_u64()
}

/// A one-line summary of a finished migration.
pub fn migration_summary(info: &Value) -> String {
    format!(
        "total {} ms, downtime {} ms, setup {} ms, {} MiB transferred, {} dirty syncs",
        number(info, &["total-time"]).unwrap_or(0),
        number(info, &["downtime"]).unwrap_or(0),
        number(info, &["setup-time"]).unwrap_or(0),
        number(info, &["ram", "transferred"]).unwrap_or(0) >> 20,
        number(info, &["ram", "dirty-sync-count"]).unwrap_or(0),
    )
}

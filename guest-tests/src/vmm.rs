//! What the runner needs from a VMM, whichever it is: start a source and a
//! destination, migrate, stop. [`crate::tern`] and [`crate::qemu`]
//! implement it; the migration's statistics come back in one shape,
//! [`MigrationOutcome`], so the two can be compared column by column.

use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Stdio};
use std::time::Duration;

use serde::Serialize;

use crate::console::{Console, RunClock};
use crate::error::{Error, Result};
use crate::process::{CommandSpec, Guarded, LineLog};
use crate::scenario::Scenario;

/// Which VMM (and, for QEMU, which convergence mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmmKind {
    Tern,
    /// QEMU without auto-converge: plain pre-copy.
    Qemu,
    /// QEMU with auto-converge (cpu-throttle-initial/increment/tailslow).
    QemuAutoConverge,
    /// QEMU with a per-vCPU dirty limit (set-vcpu-dirty-limit, dirty ring).
    QemuDirtyLimit,
}

impl VmmKind {
    /// Short name for tables and file names.
    pub fn label(self) -> &'static str {
        match self {
            VmmKind::Tern => "tern",
            VmmKind::Qemu => "qemu",
            VmmKind::QemuAutoConverge => "qemu-autoconverge",
            VmmKind::QemuDirtyLimit => "qemu-dirtylimit",
        }
    }

    pub fn is_qemu(self) -> bool {
        self != VmmKind::Tern
    }

    /// The QEMU variants, in the order they are reported.
    pub const QEMU_VARIANTS: [VmmKind; 3] = [
        VmmKind::Qemu,
        VmmKind::QemuAutoConverge,
        VmmKind::QemuDirtyLimit,
    ];

    pub fn from_label(s: &str) -> Option<VmmKind> {
        [VmmKind::Tern]
            .into_iter()
            .chain(Self::QEMU_VARIANTS)
            .find(|k| k.label() == s)
    }
}

/// The machine to start.
#[derive(Clone, Debug, Serialize)]
pub struct VmSpec {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub disk: Option<PathBuf>,
}

/// Where a destination listens (`tcp:HOST:PORT`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    pub fn uri(&self) -> String {
        format!("tcp:{}:{}", self.host, self.port)
    }

    /// A free loopback port (bound, then released for the destination).
    pub fn free_loopback() -> Result<Endpoint> {
        let l = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| Error::io("finding a free port", e))?;
        let port = l
            .local_addr()
            .map_err(|e| Error::io("finding a free port", e))?
            .port();
        Ok(Endpoint {
            host: "127.0.0.1".into(),
            port,
        })
    }
}

/// How the migration ended.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum MigrationStatus {
    /// The guest runs on the destination.
    Completed,
    /// Not converged within the budget (QEMU: cancelled by the runner; tern:
    /// aborted by its own `--timeout`); the guest still runs on the source.
    DidNotConverge { after_s: f64, reason: String },
    /// It failed; where the guest runs is in `reason`.
    Failed { reason: String },
}

impl MigrationStatus {
    pub fn completed(&self) -> bool {
        matches!(self, MigrationStatus::Completed)
    }

    /// For tables.
    pub fn short(&self) -> String {
        match self {
            MigrationStatus::Completed => "completed".into(),
            MigrationStatus::DidNotConverge { after_s, .. } => {
                format!("did not converge in {after_s:.0} s")
            }
            MigrationStatus::Failed { .. } => "FAILED".into(),
        }
    }
}

/// One sample of the migration's progress (from the VMM's own statistics).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ProgressSample {
    /// Since the migration was started, ms.
    pub t_ms: f64,
    /// Dirty bytes still to send.
    pub remaining_bytes: Option<u64>,
    pub transfer_bytes_per_sec: Option<f64>,
    /// The VMM's estimate of the guest's dirty rate.
    pub dirty_bytes_per_sec: Option<f64>,
    /// Throttle per vCPU, percent (QEMU: the same for all).
    pub throttle_pct: Vec<f64>,
}

/// A migration's statistics, the same for every VMM.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MigrationOutcome {
    #[serde(flatten)]
    pub status: MigrationStatus,
    /// When the runner started it, ms on the run clock.
    pub started_at_ms: f64,
    /// When the runner saw it end, ms on the run clock.
    pub ended_at_ms: f64,
    /// The VMM's own total time, ms.
    pub total_ms: Option<f64>,
    pub setup_ms: Option<f64>,
    /// The VMM's own downtime (guest paused), ms.
    pub downtime_ms: Option<f64>,
    /// Guest paused until the source had sent everything, ms: QEMU's downtime measure (for
    /// QEMU the same as `downtime_ms`; tern's own runs on until the destination resumed).
    pub downtime_sent_ms: Option<f64>,
    pub bytes_sent: Option<u64>,
    /// tern: rounds; QEMU: dirty-sync-count.
    pub rounds: Option<u64>,
    pub data_pages: Option<u64>,
    pub zero_pages: Option<u64>,
    /// Highest throttle applied to any vCPU, percent.
    pub max_throttle_pct: Option<f64>,
    pub progress: Vec<ProgressSample>,
    /// Anything worth knowing that has no column.
    pub notes: Vec<String>,
    /// The VMM's final statistics as it gave them.
    pub vmm_stats: serde_json::Value,
}

impl MigrationOutcome {
    /// An outcome with only a status (and times).
    pub fn bare(status: MigrationStatus, started_at_ms: f64, ended_at_ms: f64) -> Self {
        MigrationOutcome {
            status,
            started_at_ms,
            ended_at_ms,
            total_ms: None,
            setup_ms: None,
            downtime_ms: None,
            downtime_sent_ms: None,
            bytes_sent: None,
            rounds: None,
            data_pages: None,
            zero_pages: None,
            max_throttle_pct: None,
            progress: Vec::new(),
            notes: Vec::new(),
            vmm_stats: serde_json::Value::Null,
        }
    }
}

/// A running VMM: the process, its console, its stderr, its control socket.
pub struct VmmProcess {
    /// `source` or `destination` (or a benchmark's name).
    pub role: String,
    pub kind: VmmKind,
    pub console: Console,
    /// The API (tern) or QMP (QEMU) socket.
    pub control: PathBuf,
    pub command: CommandSpec,
    stdin: Option<ChildStdin>,
    stderr: LineLog,
    process: Guarded,
}

impl VmmProcess {
    /// Starts `command` with its stdin, stdout (the console) and stderr piped.
    pub fn spawn(
        role: &str,
        kind: VmmKind,
        command: CommandSpec,
        control: PathBuf,
        clock: RunClock,
    ) -> Result<VmmProcess> {
        let mut cmd = command.command();
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let label = format!("{} {role}", kind.label());
        let mut process = Guarded::spawn(&label, cmd)?;
        let child = process.child_mut();
        let (Some(stdout), Some(stderr), stdin) =
            (child.stdout.take(), child.stderr.take(), child.stdin.take())
        else {
            return Err(Error::vm(&label, "stdio pipes missing"));
        };
        Ok(VmmProcess {
            role: role.into(),
            kind,
            console: Console::start(role, clock, stdout),
            control,
            command,
            stdin,
            stderr: LineLog::start(stderr),
            process,
        })
    }

    pub fn label(&self) -> &str {
        self.process.label()
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Sends one line to the guest's serial input.
    pub fn send_line(&mut self, line: &str) -> Result<()> {
        use std::io::Write;
        let label = self.process.label().to_string();
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| Error::vm(&label, "serial input already closed"))?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(|e| Error::io(format!("{label}: writing {line:?} to the serial input"), e))
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> Result<bool> {
        Ok(self.process.try_status()?.is_none())
    }

    /// Waits up to `d` for the process to exit; its exit status as text.
    pub fn wait_exit(&mut self, d: Duration) -> Result<Option<String>> {
        Ok(self.process.wait_for(d)?.map(|s| s.to_string()))
    }

    /// Stops the process (SIGTERM, then SIGKILL after `grace`).
    pub fn kill(&mut self, grace: Duration) -> Option<String> {
        self.stdin = None;
        self.process.terminate(grace).map(|s| s.to_string())
    }

    pub fn stderr(&self) -> &LineLog {
        &self.stderr
    }

    /// An [`Error::Vm`] with the tail of the VMM's stderr appended.
    pub fn failure(&self, message: impl std::fmt::Display) -> Error {
        let tail = self.stderr.tail(4);
        Error::vm(
            self.process.label(),
            if tail.is_empty() {
                message.to_string()
            } else {
                format!("{message} (stderr: {tail})")
            },
        )
    }
}

/// A VMM the runner can drive.
pub trait Hypervisor {
    fn kind(&self) -> VmmKind;

    /// Boots `vm` and returns at once (the caller waits for the guest).
    fn start_source(
        &self,
        vm: &VmSpec,
        netns: Option<&str>,
        dir: &Path,
        clock: RunClock,
    ) -> Result<VmmProcess>;

    /// Starts a destination waiting on `listen`; returns once it listens.
    fn start_destination(
        &self,
        vm: &VmSpec,
        listen: &Endpoint,
        netns: Option<&str>,
        dir: &Path,
        clock: RunClock,
    ) -> Result<VmmProcess>;

    /// Migrates `source` to `to` with the scenario's limits; returns when it
    /// has ended one way or the other (not converging is an outcome).
    fn migrate(
        &self,
        source: &mut VmmProcess,
        destination: &mut VmmProcess,
        to: &Endpoint,
        scenario: &Scenario,
        clock: RunClock,
    ) -> Result<MigrationOutcome>;

    /// Stops a VMM the polite way (API or QMP), then by signal.
    fn stop(&self, vm: &mut VmmProcess);

    /// Ends the source after a completed migration; a note if it did not
    /// end the way this VMM should.
    fn finish_source(&self, source: &mut VmmProcess) -> Result<Option<String>> {
        self.stop(source);
        Ok(None)
    }

    /// The VMM process's resident set, KiB (for the memory-overhead
    /// benchmark).
    fn rss_kib(&self, vm: &VmmProcess) -> Option<u64> {
        rss_kib_of(vm.pid())
    }
}

/// VmRSS of a process, KiB (through `ip netns exec` the pid is the VMM's
/// own: ip execs it).
pub fn rss_kib_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip() {
        for k in [VmmKind::Tern].into_iter().chain(VmmKind::QEMU_VARIANTS) {
            assert_eq!(VmmKind::from_label(k.label()), Some(k));
        }
        assert_eq!(
            MigrationStatus::DidNotConverge {
                after_s: 60.0,
                reason: String::new()
            }
            .short(),
            "did not converge in 60 s"
        );
        assert!(rss_kib_of(std::process::id()).unwrap() > 0);
    }
}

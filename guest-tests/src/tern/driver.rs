//! tern as the runner drives it: `tern run` for source and destination,
//! `tern migrate --json` for the migration, the API for shutdown and
//! cancel.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::console::RunClock;
use crate::error::{Error, Result};
use crate::interrupt;
use crate::process::{Collected, CommandSpec, Guarded};
use crate::scenario::Scenario;
use crate::tern::{api, stats};
use crate::vmm::{
    Endpoint, Hypervisor, MigrationOutcome, MigrationStatus, VmSpec, VmmKind, VmmProcess,
};

/// What tern prints on stderr once its destination listens.
const LISTENING: &str = "waiting for an incoming migration";

/// How long past the scenario's budget `tern migrate` may take before the
/// runner cancels it (tern enforces the budget itself with `--timeout`).
const MIGRATE_GRACE: Duration = Duration::from_secs(60);

/// Drives the tern binary at `binary`.
#[derive(Clone, Debug)]
pub struct Tern {
    pub binary: PathBuf,
    /// Start destinations with `--prefault` (all guest memory backed before
    /// the stream arrives, so a migration pays no first-touch faults there).
    pub prefault_destination: bool,
}

impl Tern {
    /// tern as users run it, from `binary`.
    pub fn new(binary: PathBuf) -> Self {
        Tern {
            binary,
            prefault_destination: false,
        }
    }

    fn machine_args(vm: &VmSpec, api_socket: &Path) -> Vec<String> {
        let mut args = vec![
            "--cpus".to_string(),
            vm.cpus.to_string(),
            "--memory".into(),
            format!("{}M", vm.memory_mib),
            "--api-socket".into(),
            api_socket.display().to_string(),
        ];
        if let Some(d) = &vm.disk {
            args.push("--disk".into());
            args.push(d.display().to_string());
        }
        args
    }

    fn socket(dir: &Path, role: &str) -> Result<PathBuf> {
        let p = dir.join(format!("tern-{role}.sock"));
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("removing {}", p.display()), e)),
        }
        Ok(p)
    }

    /// The `tern migrate` command for `scenario`.
    pub fn migrate_command(
        &self,
        api_socket: &Path,
        to: &Endpoint,
        scenario: &Scenario,
    ) -> CommandSpec {
        let l = &scenario.limits;
        let mut c = CommandSpec::new(self.binary.display().to_string())
            .arg("migrate")
            .arg("--api-socket")
            .arg(api_socket.display().to_string())
            .arg("--to")
            .arg(to.uri())
            .arg("--max-downtime")
            .arg(l.max_downtime_ms.to_string())
            .arg("--timeout")
            .arg(format!("{}", l.budget_s))
            .arg("--on-no-converge")
            .arg("abort")
            .arg("--json");
        if let Some(b) = scenario.bandwidth_cap() {
            c = c.arg("--max-bandwidth").arg(b.to_string());
        }
        if let Some(a) = l.aggression {
            c = c.arg("--aggression").arg(a.to_string());
        }
        if let Some(t) = l.max_throttle_pct {
            c = c.arg("--max-throttle").arg(t.to_string());
        }
        if l.no_throttle {
            c = c.arg("--no-throttle");
        }
        c
    }
}

impl Hypervisor for Tern {
    fn kind(&self) -> VmmKind {
        VmmKind::Tern
    }

    fn start_source(
        &self,
        vm: &VmSpec,
        netns: Option<&str>,
        dir: &Path,
        clock: RunClock,
    ) -> Result<VmmProcess> {
        let socket = Self::socket(dir, "source")?;
        let mut spec = CommandSpec::new(self.binary.display().to_string())
            .arg("run")
            .arg("--kernel")
            .arg(vm.kernel.display().to_string());
        if let Some(i) = &vm.initrd {
            spec = spec.arg("--initrd").arg(i.display().to_string());
        }
        let spec = spec
            .arg("--cmdline")
            .arg(vm.cmdline.clone())
            .args(Self::machine_args(vm, &socket))
            .in_netns(netns);
        VmmProcess::spawn("source", VmmKind::Tern, spec, socket, clock)
    }

    fn start_destination(
        &self,
        vm: &VmSpec,
        listen: &Endpoint,
        netns: Option<&str>,
        dir: &Path,
        clock: RunClock,
    ) -> Result<VmmProcess> {
        let socket = Self::socket(dir, "destination")?;
        let mut spec = CommandSpec::new(self.binary.display().to_string())
            .arg("run")
            .arg("--incoming")
            .arg(listen.uri());
        if self.prefault_destination {
            spec = spec.arg("--prefault");
        }
        let spec = spec.args(Self::machine_args(vm, &socket)).in_netns(netns);
        let mut dst = VmmProcess::spawn("destination", VmmKind::Tern, spec, socket, clock)?;
        // Backing all guest memory first takes its time on a nested host.
        let within = Duration::from_secs(if self.prefault_destination { 120 } else { 15 });
        let end = Instant::now() + within;
        while !dst.stderr().contains(LISTENING) {
            if !dst.running()? {
                return Err(dst.failure("exited before listening"));
            }
            if Instant::now() > end {
                return Err(dst.failure(format!(
                    "did not say {LISTENING:?} within {} s",
                    within.as_secs()
                )));
            }
            interrupt::sleep(Duration::from_millis(10))?;
        }
        Ok(dst)
    }

    fn migrate(
        &self,
        source: &mut VmmProcess,
        _destination: &mut VmmProcess,
        to: &Endpoint,
        scenario: &Scenario,
        clock: RunClock,
    ) -> Result<MigrationOutcome> {
        let spec = self.migrate_command(&source.control, to, scenario);
        let mut cmd = spec.command();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started_at_ms = clock.now_ms();
        let mut child = Guarded::spawn("tern migrate", cmd)?;
        let stdout = child.child_mut().stdout.take().map(Collected::start);
        let stderr = child.child_mut().stderr.take().map(Collected::start);
        let limit = Duration::from_secs_f64(scenario.limits.budget_s) + MIGRATE_GRACE;
        let status = match child.wait_for(limit) {
            Ok(s) => s,
            Err(e) => {
                // Interrupted: cancel before the guards kill everything.
                let _ = api::request(&source.control, "DELETE", "/migration", None);
                return Err(e);
            }
        };
        let ended_at_ms = clock.now_ms();
        let Some(status) = status else {
            let cancel = api::request(&source.control, "DELETE", "/migration", None);
            child.terminate(Duration::from_secs(2));
            let mut o = MigrationOutcome::bare(
                MigrationStatus::Failed {
                    reason: format!(
                        "`{}` did not return within {} s (budget + {} s); cancelled: {:?}",
                        spec.display(),
                        limit.as_secs(),
                        MIGRATE_GRACE.as_secs(),
                        cancel.map(|r| r.status)
                    ),
                },
                started_at_ms,
                ended_at_ms,
            );
            if let Ok(v) = api::call(&source.control, "GET", "/migration", None) {
                o.vmm_stats = v;
            }
            return Ok(o);
        };
        let out = stdout.map(Collected::finish).unwrap_or_default();
        let err = stderr.map(Collected::finish).unwrap_or_default();
        let mut outcome = stats::outcome(
            &out,
            status.success(),
            scenario.limits.budget_s,
            started_at_ms,
            ended_at_ms,
        );
        if !err.trim().is_empty() {
            outcome
                .notes
                .push(format!("tern migrate stderr: {}", err.trim()));
        }
        outcome.notes.push(format!("command: {}", spec.display()));
        Ok(outcome)
    }

    /// tern's source exits by itself (status 0) once the guest runs on
    /// the destination.
    fn finish_source(&self, source: &mut VmmProcess) -> Result<Option<String>> {
        match source.wait_exit(Duration::from_secs(10))? {
            Some(status) if status == "exit status: 0" => Ok(None),
            Some(status) => Ok(Some(format!(
                "source tern ended with {status} after the migration"
            ))),
            None => {
                self.stop(source);
                Ok(Some(
                    "source tern did not exit within 10 s after the migration".into(),
                ))
            }
        }
    }

    fn stop(&self, vm: &mut VmmProcess) {
        if vm.running().unwrap_or(false) {
            let _ = api::request(&vm.control, "PUT", "/vm/shutdown", None);
            let _ = vm.wait_exit(Duration::from_secs(5));
        }
        vm.kill(Duration::from_secs(1));
    }
}

//! QEMU as the runner drives it: `-M microvm`, KVM, the guest's serial on
//! stdio, QMP on a Unix socket; `-incoming` on the destination; QMP
//! `migrate` with the scenario's limits mapped onto QEMU's parameters.
//!
//! | scenario            | QEMU                                                    |
//! |---------------------|---------------------------------------------------------|
//! | max downtime        | `downtime-limit`                                        |
//! | max bandwidth       | `max-bandwidth` (none: 100 GiB/s; QEMU's own default is 128 MiB/s) |
//! | auto-converge       | capability `auto-converge`, `cpu-throttle-initial`, `-increment`, `-tailslow`, `max-cpu-throttle` |
//! | dirty limit         | `set-vcpu-dirty-limit` at the start (QEMU 7.2 has no dirty-limit migration capability), `-accel kvm,dirty-ring-size=4096` |
//! | budget              | `migrate_cancel` after it: "did not converge"           |

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::console::RunClock;
use crate::error::{Error, Result};
use crate::interrupt;
use crate::process::CommandSpec;
use crate::qemu::qmp::Qmp;
use crate::scenario::Scenario;
use crate::vmm::{
    Endpoint, Hypervisor, MigrationOutcome, MigrationStatus, ProgressSample, VmSpec, VmmKind,
    VmmProcess,
};

/// `-cpu` that works on this host's kvm_pvm (`host` alone fails with
/// "failed to set MSR 0x10a", and so does `max`).
pub const DEFAULT_CPU_MODEL: &str = "host,-arch-capabilities";

/// `max-bandwidth` when the scenario sets no cap.
const UNLIMITED_BANDWIDTH: u64 = 100 << 30;

/// How often `query-migrate` is sampled.
const POLL: Duration = Duration::from_millis(100);

/// Drives `qemu-system-x86_64` in one of its convergence modes.
#[derive(Clone, Debug)]
pub struct Qemu {
    pub binary: PathBuf,
    pub cpu_model: String,
    pub variant: VmmKind,
}

fn number(v: &Value, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_f64()
}

fn integer(v: &Value, path: &[&str]) -> Option<u64> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_u64()
}

/// One `query-migrate` answer as a progress sample.
pub fn progress_sample(info: &Value, t_ms: f64, cpus: u32) -> ProgressSample {
    let page = number(info, &["ram", "page-size"]).unwrap_or(4096.0);
    ProgressSample {
        t_ms,
        remaining_bytes: integer(info, &["ram", "remaining"]),
        transfer_bytes_per_sec: number(info, &["ram", "mbps"]).map(|m| m * 1e6 / 8.0),
        dirty_bytes_per_sec: number(info, &["ram", "dirty-pages-rate"]).map(|r| r * page),
        throttle_pct: number(info, &["cpu-throttle-percentage"])
            .map(|p| vec![p; cpus as usize])
            .unwrap_or_default(),
    }
}

/// The statistics of a final `query-migrate`.
pub fn fill_outcome(o: &mut MigrationOutcome, info: &Value) {
    o.total_ms = number(info, &["total-time"]);
    o.setup_ms = number(info, &["setup-time"]);
    o.downtime_ms = number(info, &["downtime"]);
    o.downtime_sent_ms = o.downtime_ms;
    o.bytes_sent = integer(info, &["ram", "transferred"]);
    o.rounds = integer(info, &["ram", "dirty-sync-count"]);
    o.data_pages = integer(info, &["ram", "normal"]);
    o.zero_pages = integer(info, &["ram", "duplicate"]);
    o.vmm_stats = info.clone();
}

impl Qemu {
    fn spec(&self, vm: &VmSpec, qmp: &Path, incoming: Option<&Endpoint>) -> CommandSpec {
        let accel = if self.variant == VmmKind::QemuDirtyLimit {
            "kvm,dirty-ring-size=4096"
        } else {
            "kvm"
        };
        let mut c = CommandSpec::new(self.binary.display().to_string())
            .args([
                "-M",
                "microvm,acpi=off",
                "-accel",
                accel,
                "-cpu",
                &self.cpu_model,
            ])
            .args([
                "-smp",
                &vm.cpus.to_string(),
                "-m",
                &format!("{}M", vm.memory_mib),
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
            .arg("-kernel")
            .arg(vm.kernel.display().to_string());
        if let Some(i) = &vm.initrd {
            c = c.arg("-initrd").arg(i.display().to_string());
        }
        c = c
            .arg("-append")
            .arg(vm.cmdline.clone())
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()));
        if let Some(d) = &vm.disk {
            // microvm's virtio-mmio is legacy (version 1) unless told
            // otherwise; the test guest and tern speak virtio 1.x only.
            c = c
                .args(["-global", "virtio-mmio.force-legacy=false"])
                .arg("-drive")
                .arg(format!("file={},format=raw,if=none,id=disk0", d.display()))
                .args(["-device", "virtio-blk-device,drive=disk0"]);
        }
        if let Some(e) = incoming {
            c = c.arg("-incoming").arg(e.uri());
        }
        c
    }

    fn socket(dir: &Path, role: &str) -> PathBuf {
        let p = dir.join(format!("qemu-{role}.qmp"));
        let _ = std::fs::remove_file(&p);
        p
    }

    fn configure(&self, qmp: &mut Qmp, scenario: &Scenario) -> Result<()> {
        if self.variant == VmmKind::QemuAutoConverge {
            qmp.execute(
                "migrate-set-capabilities",
                json!({"capabilities": [{"capability": "auto-converge", "state": true}]}),
            )?;
        }
        let q = &scenario.qemu;
        qmp.execute(
            "migrate-set-parameters",
            json!({
                "downtime-limit": scenario.limits.max_downtime_ms,
                "max-bandwidth": scenario.bandwidth_cap().unwrap_or(UNLIMITED_BANDWIDTH),
                "cpu-throttle-initial": q.throttle_initial,
                "cpu-throttle-increment": q.throttle_increment,
                "cpu-throttle-tailslow": q.tailslow,
                "max-cpu-throttle": q.max_throttle,
            }),
        )?;
        if self.variant == VmmKind::QemuDirtyLimit {
            qmp.execute(
                "set-vcpu-dirty-limit",
                json!({"dirty-rate": scenario.qemu_dirty_limit()}),
            )?;
        }
        Ok(())
    }
}

impl Hypervisor for Qemu {
    fn kind(&self) -> VmmKind {
        self.variant
    }

    fn start_source(
        &self,
        vm: &VmSpec,
        netns: Option<&str>,
        dir: &Path,
        clock: RunClock,
    ) -> Result<VmmProcess> {
        let qmp = Self::socket(dir, "source");
        let spec = self.spec(vm, &qmp, None).in_netns(netns);
        VmmProcess::spawn("source", self.variant, spec, qmp, clock)
    }

    fn start_destination(
        &self,
        vm: &VmSpec,
        listen: &Endpoint,
        netns: Option<&str>,
        dir: &Path,
        clock: RunClock,
    ) -> Result<VmmProcess> {
        let qmp = Self::socket(dir, "destination");
        let spec = self.spec(vm, &qmp, Some(listen)).in_netns(netns);
        let mut dst = VmmProcess::spawn("destination", self.variant, spec, qmp, clock)?;
        // QEMU sets up -incoming before its main loop, and QMP answers only
        // from the main loop: an answer means it listens.
        let status = Qmp::connect(&dst.control, Duration::from_secs(15))
            .and_then(|mut q| q.execute("query-status", json!({})));
        match status {
            Ok(s) if s.get("status").and_then(Value::as_str) == Some("inmigrate") => Ok(dst),
            Ok(s) => Err(dst.failure(format!("destination not in state inmigrate: {s}"))),
            Err(e) => {
                let _ = dst.wait_exit(Duration::from_millis(200));
                Err(dst.failure(e))
            }
        }
    }

    fn migrate(
        &self,
        source: &mut VmmProcess,
        _destination: &mut VmmProcess,
        to: &Endpoint,
        scenario: &Scenario,
        clock: RunClock,
    ) -> Result<MigrationOutcome> {
        let mut qmp = Qmp::connect(&source.control, Duration::from_secs(5))?;
        self.configure(&mut qmp, scenario)?;
        let started_at_ms = clock.now_ms();
        let begin = Instant::now();
        qmp.execute("migrate", json!({"uri": to.uri()}))?;
        let budget = Duration::from_secs_f64(scenario.limits.budget_s);
        let mut progress = Vec::new();
        let mut cancelled_at: Option<f64> = None;
        // The last answer with RAM statistics (a cancelled migration's
        // final answer has none).
        let mut last_with_ram: Option<Value> = None;
        let info = loop {
            if let Err(e) = interrupt::check() {
                let _ = qmp.execute("migrate_cancel", json!({}));
                return Err(e);
            }
            let info = qmp.execute("query-migrate", json!({}))?;
            let t_ms = begin.elapsed().as_secs_f64() * 1e3;
            let status = info.get("status").and_then(Value::as_str).unwrap_or("");
            if info.get("ram").is_some() {
                progress.push(progress_sample(&info, t_ms, scenario.cpus));
                last_with_ram = Some(info.clone());
            }
            match status {
                "completed" | "failed" | "cancelled" => break info,
                _ => {}
            }
            if cancelled_at.is_none() && begin.elapsed() > budget {
                qmp.execute("migrate_cancel", json!({}))?;
                cancelled_at = Some(t_ms / 1e3);
            }
            if cancelled_at.is_some_and(|c| begin.elapsed().as_secs_f64() > c + 30.0) {
                return Err(Error::Qmp {
                    command: "migrate_cancel".into(),
                    message: format!("still {status:?} 30 s after the cancel"),
                });
            }
            interrupt::sleep(POLL)?;
        };
        let ended_at_ms = clock.now_ms();
        let status = match info.get("status").and_then(Value::as_str) {
            Some("completed") => MigrationStatus::Completed,
            Some("cancelled") => MigrationStatus::DidNotConverge {
                after_s: cancelled_at.unwrap_or(scenario.limits.budget_s),
                reason: format!(
                    "did not converge in {:.0} s; migrate_cancel: the guest keeps running on the source",
                    scenario.limits.budget_s
                ),
            },
            _ => MigrationStatus::Failed {
                reason: info
                    .get("error-desc")
                    .and_then(Value::as_str)
                    .unwrap_or("status failed, no error-desc")
                    .to_string(),
            },
        };
        let mut outcome = MigrationOutcome::bare(status, started_at_ms, ended_at_ms);
        match (&outcome.status, last_with_ram) {
            (MigrationStatus::DidNotConverge { after_s, .. }, Some(last)) => {
                // What it had done until the cancel.
                let after_s = *after_s;
                fill_outcome(&mut outcome, &last);
                outcome.total_ms = Some(after_s * 1e3);
                outcome.downtime_ms = None;
                outcome.downtime_sent_ms = None;
                outcome.vmm_stats = json!({ "final": info, "last_before_cancel": last });
            }
            _ => fill_outcome(&mut outcome, &info),
        }
        outcome.max_throttle_pct = progress
            .iter()
            .flat_map(|p: &ProgressSample| p.throttle_pct.iter().copied())
            .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.max(t))));
        outcome.progress = progress;
        if self.variant == VmmKind::QemuDirtyLimit {
            outcome.notes.push(format!(
                "set-vcpu-dirty-limit {} MB/s per vCPU from the start",
                scenario.qemu_dirty_limit()
            ));
            let _ = qmp.execute("cancel-vcpu-dirty-limit", json!({}));
        }
        if let Some(v) = number(&info, &["cpu-throttle-percentage"]) {
            outcome
                .notes
                .push(format!("final cpu-throttle-percentage {v}"));
        }
        Ok(outcome)
    }

    fn stop(&self, vm: &mut VmmProcess) {
        if vm.running().unwrap_or(false) {
            if let Ok(mut q) = Qmp::connect(&vm.control, Duration::from_secs(1)) {
                let _ = q.execute("quit", json!({}));
            }
            let _ = vm.wait_exit(Duration::from_secs(5));
        }
        vm.kill(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_migrate_maps_onto_the_common_shape() {
        let info = json!({"status":"completed","total-time":1234,"downtime":12,"setup-time":3,
            "cpu-throttle-percentage":30,
            "ram":{"transferred":1000,"remaining":0,"mbps":800.0,"dirty-pages-rate":256,"page-size":4096,
                   "normal":200,"duplicate":50000,"dirty-sync-count":7}});
        let p = progress_sample(&info, 5.0, 2);
        assert_eq!(p.transfer_bytes_per_sec, Some(1e8));
        assert_eq!(p.dirty_bytes_per_sec, Some(1048576.0));
        assert_eq!(p.throttle_pct, vec![30.0, 30.0]);
        let mut o = MigrationOutcome::bare(MigrationStatus::Completed, 0.0, 1.0);
        fill_outcome(&mut o, &info);
        assert_eq!(
            (o.total_ms, o.downtime_ms, o.rounds),
            (Some(1234.0), Some(12.0), Some(7))
        );
        assert_eq!(
            (o.data_pages, o.zero_pages, o.bytes_sent),
            (Some(200), Some(50000), Some(1000))
        );
        let bare = progress_sample(&json!({"status":"setup"}), 0.0, 1);
        assert_eq!(bare.remaining_bytes, None);
    }
}

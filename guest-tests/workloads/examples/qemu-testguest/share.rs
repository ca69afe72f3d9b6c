//! How exact the guest's CPU share (`busy_pct`) is: compared, window by
//! window, with the host's own account of the time the vCPU thread ran
//! (`/proc/PID/task/TID/schedstat`), unthrottled and under CFS bandwidth
//! quotas that impose a duty cycle (cgroup v1 or v2, when writable). The
//! host's account covers every reason the vCPU did not run (throttle, other
//! processes), so the comparison holds on a busy host too.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::vm::{Options, Result, Vm, VmSpec};

/// Period of the imposed duty cycle (tern's default duty-cycle period).
const PERIOD_US: u64 = 10_000;
/// Allowed difference between guest and host, in points of percent.
const TOLERANCE: f64 = 2.0;

/// The thread of vCPU 0 of QEMU process `pid`.
fn vcpu_thread(pid: u32) -> Result<u32> {
    let dir = format!("/proc/{pid}/task");
    for entry in std::fs::read_dir(&dir).map_err(|e| format!("{dir}: {e}"))? {
        let entry = entry.map_err(|e| e.to_string())?;
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() == "CPU 0/KVM" {
            return entry
                .file_name()
                .to_string_lossy()
                .parse()
                .map_err(|_| "bad tid".to_string());
        }
    }
    Err(format!("no 'CPU 0/KVM' thread in {dir}"))
}

/// Nanoseconds thread `tid` has run.
fn run_ns(pid: u32, tid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/task/{tid}/schedstat");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or(format!("{path}: {text:?}"))
}

/// A CPU cgroup holding the QEMU process, to set a bandwidth quota on.
struct Cgroup {
    dir: PathBuf,
    v2: bool,
}

impl Cgroup {
    fn create(pid: u32) -> Option<Cgroup> {
        let name = format!("tern-share-{}", std::process::id());
        let v1 = PathBuf::from("/sys/fs/cgroup/cpu").join(&name);
        let v2 = PathBuf::from("/sys/fs/cgroup").join(&name);
        let (dir, is_v2) = if PathBuf::from("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").exists() {
            (v1, false)
        } else {
            (v2, true)
        };
        std::fs::create_dir(&dir).ok()?;
        let cg = Cgroup { dir, v2: is_v2 };
        std::fs::write(cg.dir.join("cgroup.procs"), pid.to_string()).ok()?;
        Some(cg)
    }

    /// Lets the group run `percent` of every period (None: no limit).
    fn limit(&self, percent: Option<u64>) -> Result<()> {
        let quota = percent.map(|p| PERIOD_US * p / 100);
        let write = |file: &str, value: String| {
            std::fs::write(self.dir.join(file), value).map_err(|e| format!("{file}: {e}"))
        };
        if self.v2 {
            write(
                "cpu.max",
                format!(
                    "{} {PERIOD_US}",
                    quota.map_or("max".to_string(), |q| q.to_string())
                ),
            )
        } else {
            write("cpu.cfs_period_us", PERIOD_US.to_string())?;
            write(
                "cpu.cfs_quota_us",
                quota.map_or("-1".to_string(), |q| q.to_string()),
            )
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = self.limit(None);
        // The process must leave before the group can go: back to the root.
        let root = self.dir.parent().map(|p| p.join("cgroup.procs"));
        if let (Some(root), Ok(procs)) =
            (root, std::fs::read_to_string(self.dir.join("cgroup.procs")))
        {
            for pid in procs.lines() {
                let _ = std::fs::write(&root, pid);
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

pub fn share(o: &Options) -> Result<()> {
    let append = o.append(&["tern.test=idle", "tern.tick_ms=100"]);
    let vm = Vm::spawn(
        o,
        VmSpec {
            name: "guest",
            append,
            extra: &[],
            incoming: None,
        },
    )?;
    vm.ready()?;
    vm.started()?;
    let pid = vm.child.id();
    let tid = vcpu_thread(pid)?;
    let cgroup = Cgroup::create(pid);
    if cgroup.is_none() {
        println!("(no writable CPU cgroup: measuring without an imposed duty cycle)");
    }
    let phases: &[Option<u64>] = if cgroup.is_some() {
        &[None, Some(70), Some(40), Some(90)]
    } else {
        &[None, None]
    };
    let mut worst: f64 = 0.0;
    for &quota in phases {
        if let Some(cg) = &cgroup {
            cg.limit(quota)?;
        }
        std::thread::sleep(Duration::from_millis(300));
        let _ = vm.events.try_iter().count();
        let (t0, r0) = (Instant::now(), run_ns(pid, tid)?);
        let ticks = vm.ticks_for(Duration::from_secs(o.seconds))?;
        let (t1, r1) = (Instant::now(), run_ns(pid, tid)?);
        let host = (r1 - r0) as f64 / (t1 - t0).as_nanos() as f64 * 100.0;
        let busy: Vec<f64> = ticks
            .iter()
            .filter_map(|(_, t)| t.busy_x100)
            .map(|b| b as f64 / 100.0)
            .collect();
        let guest = busy.iter().sum::<f64>() / busy.len().max(1) as f64;
        worst = worst.max((guest - host).abs());
        println!(
            "quota {:>4}: host says the vCPU ran {host:6.2} %, the guest measured {guest:6.2} % over {} ticks (difference {:+.2})",
            quota.map_or("none".to_string(), |q| format!("{q} %")),
            busy.len(),
            guest - host
        );
    }
    if worst > TOLERANCE {
        return Err(format!("the guest's share differs from the host's by {worst:.2} points (more than {TOLERANCE})"));
    }
    Ok(())
}

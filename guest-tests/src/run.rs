//! One scenario on one VMM, start to finish:
//!
//! 1. (shaped link) create the namespaces and the veth pair;
//! 2. boot the source, wait for `ready` (a boot that fails is retried once,
//!    and the failure is kept in the result), then `started`;
//! 3. start the destination (listening);
//! 4. wait for the steady state (the guest's `baseline` event and a few
//!    ticks), then measure the pre-migration window;
//! 5. migrate with the scenario's limits;
//! 6. collect the destination's ticks, send `verify` there (or on the
//!    source, if the guest stayed there), stop everything;
//! 7. analyse the ticks, judge the evidence, return the [`RunResult`].
//!
//! Every process and namespace is owned by a guard, so an error or Ctrl-C at
//! any step stops the VMMs and deletes the namespaces.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use tern_workloads::command::Command as GuestCommand;
use tern_workloads::event::Event;

use crate::analysis::{self, GuestMetrics, GuestPoint, Side};
use crate::artifacts::GuestImages;
use crate::console::{LoggedLine, RunClock};
use crate::error::{Error, Result};
use crate::link::{LinkShape, ShapedLink};
use crate::scenario::Scenario;
use crate::verifier::{self, Verdict, VerifySummary};
use crate::vmm::{Endpoint, Hypervisor, MigrationOutcome, VmSpec, VmmKind, VmmProcess};
use crate::workload::WorkloadKind;

/// The port a destination listens on inside its own namespace.
const NETNS_PORT: u16 = 4444;

const READY_TIMEOUT: Duration = Duration::from_secs(20);
const VERIFY_TIMEOUT: Duration = Duration::from_secs(60);

/// How the source's boot went.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BootRecord {
    /// 1, or 2 after a retry.
    pub attempts: u32,
    /// Why the first attempt failed, if it did.
    pub first_failure: Option<String>,
    /// Host time from spawning the VMM to the `ready` line, ms.
    pub to_ready_ms: Option<f64>,
    /// The guest's own count from its first instruction to `ready`, µs.
    pub guest_boot_us: Option<u64>,
    /// vCPUs the guest found.
    pub guest_cpus: Option<u32>,
}

/// The link a run used.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LinkRecord {
    pub shape: LinkShape,
    pub source_netns: String,
    pub destination_netns: String,
    /// `tc -s qdisc show` after the migration.
    pub qdisc_after: Option<String>,
}

/// The machine the run was on.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HostRecord {
    pub kernel: String,
    pub cpu_model: String,
    pub cpus: usize,
    pub kvm_pvm: bool,
}

impl HostRecord {
    pub fn probe() -> HostRecord {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        HostRecord {
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| {
                    l.strip_prefix("model name")?
                        .split_once(':')
                        .map(|(_, v)| v.trim().to_string())
                })
                .unwrap_or_default(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kvm_pvm: crate::artifacts::host_is_kvm_pvm(),
        }
    }
}

/// Everything one run produced.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    pub scenario: Scenario,
    pub vmm: VmmKind,
    /// Seconds since the Unix epoch at the start.
    pub started_unix_s: u64,
    pub host: HostRecord,
    pub guest_cmdline: String,
    pub source_command: String,
    pub destination_command: String,
    pub link: Option<LinkRecord>,
    pub boot: BootRecord,
    /// When the pre-migration window began, ms on the run clock.
    pub baseline_from_ms: f64,
    pub migration: MigrationOutcome,
    pub guest: GuestMetrics,
    pub verdict: Verdict,
    pub timeline: Vec<GuestPoint>,
    /// Every console line of both VMMs (source until it stopped, then the
    /// destination).
    pub console: Vec<LoggedLine>,
    pub source_stderr: Vec<String>,
    pub destination_stderr: Vec<String>,
}

/// Damage done on purpose before the final verify, to prove the verifier
/// can fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injection {
    /// `corrupt page=N` to the guest, wherever it runs after the migration.
    CorruptPage(u64),
    /// Flip every byte of disk block N in the disk image, from the host,
    /// after the guest stopped writing and before it verifies.
    CorruptDiskBlock(u64),
}

/// Where a run keeps its sockets and disk images, and what it injects.
pub struct RunContext<'a> {
    pub images: &'a GuestImages,
    pub work_dir: &'a Path,
    pub injection: Option<Injection>,
}

/// Applies `injection` to the guest on `vm` (or to its disk image) and
/// waits for its answer.
fn inject(vm: &mut VmmProcess, injection: Injection, disk: Option<&Path>) -> Result<()> {
    match injection {
        Injection::CorruptDiskBlock(block) => {
            let disk = disk.ok_or_else(|| {
                Error::Scenario("CorruptDiskBlock needs a scenario with a disk".into())
            })?;
            crate::workload::corrupt_disk_block(disk, block)
        }
        Injection::CorruptPage(page) => {
            vm.console.skip_to_end();
            let how = tern_workloads::page::Corruption::Torn;
            vm.send_line(&GuestCommand::Corrupt { page, how }.to_string())?;
            vm.console
                .wait_event("the corrupted event", VERIFY_TIMEOUT, |e| {
                    matches!(e, Event::Corrupted(c) if c.page == page).then_some(())
                })
        }
    }
}

fn wait_ready(vm: &mut VmmProcess, spawned_ms: f64) -> Result<BootRecord> {
    let (at_ms, ready) =
        vm.console
            .wait_for("the ready event", READY_TIMEOUT, |l| match l.event() {
                Some(Event::Ready(r)) => Some((l.at_ms, *r)),
                _ => None,
            })?;
    Ok(BootRecord {
        attempts: 1,
        first_failure: None,
        to_ready_ms: Some(at_ms - spawned_ms),
        guest_boot_us: Some(ready.boot_us),
        guest_cpus: Some(ready.cpus),
    })
}

/// Whether a failed boot is worth a retry: not when the guest itself said
/// what is wrong with its parameters.
fn retryable(e: &Error) -> bool {
    !matches!(e, Error::Guest { message, .. } if message.contains("(param)"))
        && !matches!(e, Error::Interrupted)
}

/// Boots the source, retrying once; returns the VMM (guest ready).
pub fn boot_with_retry(
    hv: &dyn Hypervisor,
    vm: &VmSpec,
    netns: Option<&str>,
    dir: &Path,
    clock: RunClock,
) -> Result<(VmmProcess, BootRecord)> {
    let attempt = || -> Result<(VmmProcess, BootRecord)> {
        let spawned = clock.now_ms();
        let mut p = hv.start_source(vm, netns, dir, clock)?;
        match wait_ready(&mut p, spawned) {
            Ok(b) => Ok((p, b)),
            Err(e) => {
                hv.stop(&mut p);
                let tail = p.stderr().tail(3);
                Err(match e {
                    _ if tail.is_empty() => e,
                    Error::Vm { message, .. } => {
                        Error::vm(p.label(), format!("{message} (stderr: {tail})"))
                    }
                    e => Error::vm(p.label(), format!("{e} (stderr: {tail})")),
                })
            }
        }
    };
    match attempt() {
        Ok(r) => Ok(r),
        Err(first) if retryable(&first) => match attempt() {
            Ok((p, mut b)) => {
                b.attempts = 2;
                b.first_failure = Some(first.to_string());
                Ok((p, b))
            }
            Err(retry) => Err(Error::Boot {
                vm: format!("{} source", hv.kind().label()),
                first: first.to_string(),
                retry: retry.to_string(),
            }),
        },
        Err(first) => Err(first),
    }
}

/// Collects console lines for `d` (ticks keep coming).
fn collect_for(vm: &mut VmmProcess, d: Duration) -> Result<()> {
    crate::interrupt::sleep(d)?;
    vm.console.pump();
    Ok(())
}

/// A sparse disk image of `size_mib`.
fn make_disk(dir: &Path, size_mib: u64) -> Result<PathBuf> {
    let p = dir.join("disk.img");
    let f =
        std::fs::File::create(&p).map_err(|e| Error::io(format!("creating {}", p.display()), e))?;
    f.set_len(size_mib << 20)
        .map_err(|e| Error::io(format!("sizing {}", p.display()), e))?;
    Ok(p)
}

/// Runs `scenario` on `hv`.
pub fn run_scenario(
    hv: &dyn Hypervisor,
    scenario: &Scenario,
    ctx: &RunContext<'_>,
) -> Result<RunResult> {
    crate::interrupt::check()?;
    let clock = RunClock::start();
    let started_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let link = scenario.link.map(ShapedLink::create).transpose()?;
    let (src_ns, dst_ns) = match &link {
        Some(l) => (
            Some(l.source_netns().to_string()),
            Some(l.destination_netns().to_string()),
        ),
        None => (None, None),
    };
    let endpoint = match &link {
        Some(l) => Endpoint {
            host: l.destination_addr().to_string(),
            port: NETNS_PORT,
        },
        None => Endpoint::free_loopback()?,
    };
    let disk = scenario
        .disk
        .as_ref()
        .map(|d| make_disk(ctx.work_dir, d.size_mib))
        .transpose()?;
    let vm = VmSpec {
        kernel: ctx.images.testguest.clone(),
        initrd: None,
        cmdline: scenario.guest.cmdline(),
        cpus: scenario.cpus,
        memory_mib: scenario.memory_mib,
        disk,
    };

    let workload = WorkloadKind::of(&scenario.guest.test);
    let (mut src, boot) = boot_with_retry(hv, &vm, src_ns.as_deref(), ctx.work_dir, clock)?;
    let expected_pages = workload.wait_running(&mut src)?;
    let mut dst = hv.start_destination(&vm, &endpoint, dst_ns.as_deref(), ctx.work_dir, clock)?;
    workload.wait_ticks(&mut src, scenario.warmup_ticks)?;
    let baseline_from_ms = clock.now_ms();
    collect_for(&mut src, Duration::from_secs_f64(scenario.baseline_s))?;

    let mut migration = hv.migrate(&mut src, &mut dst, &endpoint, scenario, clock)?;
    let vm_disk = vm.disk.as_deref();
    let completed = migration.status.completed();

    // After the migration, a guest that does not answer is a finding of
    // the run (with everything collected so far), not an abort.
    let after = |vm: &mut VmmProcess, side: Side| -> Result<VerifySummary> {
        workload.wait_ticks(vm, 1)?;
        collect_for(vm, Duration::from_secs_f64(scenario.after_s))?;
        workload.check(vm, side, |vm| match ctx.injection {
            Some(i) => inject(vm, i, vm_disk),
            None => Ok(()),
        })
    };
    let checked = if completed {
        // The source has handed over: let it finish (tern exits by itself;
        // QEMU is told to quit), read its last lines, and join a line the
        // switchover cut in two.
        if let Some(note) = hv.finish_source(&mut src)? {
            migration.notes.push(note);
        }
        src.console.drain_until_closed(Duration::from_secs(5))?;
        src.console.hand_over_unfinished(&mut dst.console);
        after(&mut dst, Side::Destination)
    } else {
        after(&mut src, Side::Source)
    };
    let (verify, run_problems) = match checked {
        Ok(v) => (Some(v), Vec::new()),
        Err(Error::Interrupted) => return Err(Error::Interrupted),
        Err(e) => (None, vec![format!("after the migration: {e}")]),
    };
    hv.stop(&mut dst);
    hv.stop(&mut src);
    src.console.pump();
    dst.console.pump();

    let link_record = link.as_ref().map(|l| LinkRecord {
        shape: l.shape(),
        source_netns: l.source_netns().into(),
        destination_netns: l.destination_netns().into(),
        qdisc_after: l.qdisc_stats(),
    });
    drop(link);

    let tick_ms = scenario
        .guest
        .extra
        .get("tick_ms")
        .and_then(|t| t.parse().ok())
        .unwrap_or(100);
    let src_ticks = workload.ticks(src.console.lines(), Side::Source, tick_ms);
    let dst_ticks = workload.ticks(dst.console.lines(), Side::Destination, tick_ms);
    let migration_end = migration.ended_at_ms;
    let (guest, timeline) = analysis::analyse(
        &src_ticks,
        &dst_ticks,
        baseline_from_ms,
        migration.started_at_ms,
        migration_end,
    );
    // Lines after the verify command are the runner's own doing; the
    // verifier looks at everything.
    let verdict = verifier::judge(&verifier::Evidence {
        source_lines: src.console.lines(),
        destination_lines: dst.console.lines(),
        source_ticks: &src_ticks,
        destination_ticks: &dst_ticks,
        expected_pages: Some(expected_pages),
        verify,
        run_problems,
    });
    let mut console = src.console.logged(0);
    console.extend(dst.console.logged(0));
    Ok(RunResult {
        scenario: scenario.clone(),
        vmm: hv.kind(),
        started_unix_s,
        host: HostRecord::probe(),
        guest_cmdline: vm.cmdline.clone(),
        source_command: src.command.display(),
        destination_command: dst.command.display(),
        link: link_record,
        boot,
        baseline_from_ms,
        migration,
        guest,
        verdict,
        timeline,
        console,
        source_stderr: src.stderr().snapshot(),
        destination_stderr: dst.stderr().snapshot(),
    })
}

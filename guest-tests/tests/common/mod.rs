//! What the end-to-end tests share. They need /dev/kvm, QEMU, root (for
//! network namespaces) and the guest images, and fail loudly without them:
//! run them with `cargo test -p tern-guest-tests -- --test-threads=1`.
#![allow(dead_code)]

use tern_guest_tests::artifacts::{self, GuestImages};
use tern_guest_tests::qemu::{driver::DEFAULT_CPU_MODEL, Qemu};
use tern_guest_tests::run::{run_scenario, Injection, RunContext, RunResult};
use tern_guest_tests::scenario::Scenario;
use tern_guest_tests::vmm::{Hypervisor, VmmKind};
use tern_guest_tests::workdir::WorkDir;

/// Tests that boot guests run one at a time, whatever `--test-threads`
/// says: on a 2-core machine parallel VMs only make each other late.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Small and short: seconds per scenario. The full sizes are for the
/// benchmark modes and the docs.
pub const SHORT: [&str; 6] = [
    "memory=256",
    "baseline=0.5",
    "after=0.5",
    "warmup=3",
    "budget=8",
    "link=24",
];

pub fn images() -> GuestImages {
    artifacts::require_kvm().expect("these tests need /dev/kvm");
    artifacts::guest_images().expect("guest images (resources/build-guest.sh)")
}

pub fn qemu(variant: VmmKind) -> Qemu {
    Qemu {
        binary: artifacts::qemu_binary().expect("these tests need qemu-system-x86_64"),
        cpu_model: DEFAULT_CPU_MODEL.into(),
        variant,
    }
}

/// Runs `name` with the short settings, a shaped link only if the scenario
/// has one, then `extra` overrides.
pub fn run(
    hv: &dyn Hypervisor,
    name: &str,
    extra: &[&str],
    injection: Option<Injection>,
) -> RunResult {
    let images = images();
    let base = Scenario::build(name, &[]).expect("scenario");
    let overrides: Vec<String> = SHORT
        .iter()
        .filter(|o| base.link.is_some() || !o.starts_with("link="))
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
    let scenario = Scenario::build(name, &overrides).expect("overrides");
    let dir = WorkDir::create("test").expect("work dir");
    let ctx = RunContext {
        images: &images,
        work_dir: dir.path(),
        injection,
    };
    let r = run_scenario(hv, &scenario, &ctx)
        .unwrap_or_else(|e| panic!("{name} on {}: {e}", hv.kind().label()));
    // Every run must be reportable.
    let out = WorkDir::create("test-report").expect("report dir");
    tern_guest_tests::report::write_run(out.path(), &r).expect("report");
    r
}

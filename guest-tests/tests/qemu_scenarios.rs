//! Every scenario the test guest can run today, end to end under QEMU,
//! small and short: the migration ends (completed, or not converged within
//! the budget, which is a result) and the guest verifies clean wherever it
//! runs afterwards. No timing is asserted; speed is for the benchmarks.

mod common;

use tern_guest_tests::vmm::{MigrationStatus, VmmKind};

fn check(kind: VmmKind, name: &str, extra: &[&str]) {
    let r = common::run(&common::qemu(kind), name, extra, None);
    assert!(
        !matches!(r.migration.status, MigrationStatus::Failed { .. }),
        "{name} on {}: {:?}",
        kind.label(),
        r.migration.status
    );
    assert!(
        r.verdict.passed,
        "{name} on {}: {:?}",
        kind.label(),
        r.verdict.findings
    );
    assert!(
        r.guest.ticks_before > 0 && r.guest.ticks_during > 0,
        "{name}: {:?}",
        r.guest
    );
    assert!(r.guest.baseline_work_per_s.is_some_and(|w| w > 0.0));
    if r.migration.status.completed() {
        assert!(r.migration.bytes_sent.is_some_and(|b| b > 0));
        assert!(r.guest.max_stall_us.is_some());
    }
}

#[test]
fn idle() {
    check(VmmKind::Qemu, "idle", &[]);
}

#[test]
fn dirty_low() {
    check(VmmKind::Qemu, "dirty-low", &["ws=32"]);
}

#[test]
fn dirty_2x_link() {
    check(VmmKind::Qemu, "dirty-2x-link", &["ws=32", "rate=48"]);
}

#[test]
fn hot_cold_with_auto_converge() {
    check(VmmKind::QemuAutoConverge, "hot-cold", &["ws=32"]);
}

#[test]
fn one_busy_vcpu() {
    check(VmmKind::Qemu, "one-busy-vcpu", &["ws=32"]);
}

#[test]
fn burst_with_a_dirty_limit() {
    check(VmmKind::QemuDirtyLimit, "burst", &["ws=32"]);
}

#[test]
fn disk_qd32() {
    check(VmmKind::Qemu, "disk-qd32", &["disk=64"]);
}

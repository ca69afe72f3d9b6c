//! The same end-to-end runs under tern (1 vCPU: multi-vCPU boot under tern
//! is still being fixed). The tern binary is the release build if there is
//! one, else the debug build `cargo test --workspace` makes for tern-vmm's
//! own tests (see `artifacts::tern_binary`).

mod common;

use tern_guest_tests::artifacts;
use tern_guest_tests::run::Injection;
use tern_guest_tests::tern::Tern;
use tern_guest_tests::vmm::MigrationStatus;

fn tern() -> Tern {
    Tern::new(artifacts::tern_binary(None).expect("a tern binary (cargo build -p tern-vmm)"))
}

#[test]
fn dirty_low_migrates_and_verifies() {
    let r = common::run(&tern(), "dirty-low", &["ws=16"], None);
    assert!(r.migration.status.completed(), "{:?}", r.migration.status);
    assert!(r.verdict.passed, "{:?}", r.verdict.findings);
    assert_eq!(r.verdict.verify.as_ref().map(|v| v.pages), Some(16 * 256));
    assert!(r.migration.downtime_ms.is_some() && r.migration.bytes_sent.is_some());
}

#[test]
fn a_page_corrupted_after_a_tern_migration_is_named() {
    let page = 1500;
    let r = common::run(
        &tern(),
        "dirty-low",
        &["ws=16"],
        Some(Injection::CorruptPage(page)),
    );
    assert!(r.migration.status.completed(), "{:?}", r.migration.status);
    assert!(!r.verdict.passed);
    let verify = r.verdict.verify.as_ref().expect("a verify answer");
    assert_eq!(verify.first_bad_page, Some(page), "{verify:?}");
}

#[test]
fn dirty_rate_above_a_shaped_link() {
    let r = common::run(
        &tern(),
        "dirty-2x-link",
        &["ws=32", "rate=48", "budget=20"],
        None,
    );
    assert!(
        !matches!(r.migration.status, MigrationStatus::Failed { .. }),
        "{:?}",
        r.migration.status
    );
    assert!(r.verdict.passed, "{:?}", r.verdict.findings);
}

#[test]
fn disk_qd32() {
    let r = common::run(&tern(), "disk-qd32", &["disk=64"], None);
    assert!(r.migration.status.completed(), "{:?}", r.migration.status);
    assert!(r.verdict.passed, "{:?}", r.verdict.findings);
}

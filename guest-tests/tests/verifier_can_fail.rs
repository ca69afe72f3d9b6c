//! The verifier can fail: a page corrupted on purpose after the migration
//! (`corrupt page=N` on the destination) is named by the verdict.

mod common;

use tern_guest_tests::run::Injection;
use tern_guest_tests::verifier::FindingKind;
use tern_guest_tests::vmm::VmmKind;

#[test]
fn a_page_corrupted_after_migration_is_named() {
    let page = 2053;
    let r = common::run(
        &common::qemu(VmmKind::Qemu),
        "dirty-low",
        &["ws=16"],
        Some(Injection::CorruptPage(page)),
    );
    assert!(r.migration.status.completed(), "{:?}", r.migration.status);
    let v = &r.verdict;
    assert!(!v.passed, "the verdict passed over a corrupted page: {v:?}");
    let verify = v.verify.as_ref().expect("a verify answer");
    assert_eq!(verify.first_bad_page, Some(page), "{verify:?}");
    assert_eq!(verify.bad, 1, "{verify:?}");
    assert_eq!(verify.first_bad_reason.as_deref(), Some("torn"));
    let finding = v
        .findings
        .iter()
        .find(|f| f.kind == FindingKind::BadPages)
        .expect("a bad-pages finding");
    assert!(
        finding.message.contains(&format!("page {page} (torn)")),
        "{}",
        finding.message
    );
}

#[test]
fn the_same_run_without_damage_passes() {
    let r = common::run(&common::qemu(VmmKind::Qemu), "dirty-low", &["ws=16"], None);
    assert!(r.migration.status.completed(), "{:?}", r.migration.status);
    assert!(r.verdict.passed, "{:?}", r.verdict);
    assert_eq!(r.verdict.verify.as_ref().map(|v| v.pages), Some(16 * 256));
}

//! The verifier can fail: a page corrupted on purpose after the migration
//! (`corrupt page=N` on the destination) is named by the verdict.

mod common;

use tern_guest_tests::bench::keep_failed_run;
use tern_guest_tests::run::Injection;
use tern_guest_tests::verifier::FindingKind;
use tern_guest_tests::vmm::VmmKind;
use tern_guest_tests::workdir::WorkDir;

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
    // A bench keeps such a run, with the verdict in it.
    let root = WorkDir::create("kept").expect("work dir");
    let dir = keep_failed_run(root.path(), &r).expect("the run kept");
    let json = std::fs::read_to_string(dir.join("dirty-low-qemu.json")).expect("the kept record");
    assert!(json.contains(&format!("page {page} (torn)")), "{json}");
}

#[test]
fn the_same_run_without_damage_passes() {
    let r = common::run(&common::qemu(VmmKind::Qemu), "dirty-low", &["ws=16"], None);
    assert!(r.migration.status.completed(), "{:?}", r.migration.status);
    assert!(r.verdict.passed, "{:?}", r.verdict);
    assert_eq!(r.verdict.verify.as_ref().map(|v| v.pages), Some(16 * 256));
}

#[test]
fn a_disk_block_corrupted_in_the_image_is_named() {
    // The guest writes checked blocks during the migration; after it stops
    // on the destination, the host flips block 77 in the image file, then
    // the guest verifies every block it wrote.
    let block = 77;
    let r = common::run(
        &common::qemu(VmmKind::Qemu),
        "disk-qd32",
        &["disk=64"],
        Some(Injection::CorruptDiskBlock(block)),
    );
    assert!(r.migration.status.completed(), "{:?}", r.migration.status);
    let verify = r.verdict.verify.as_ref().expect("a disk_verify answer");
    assert!(!r.verdict.passed, "{:?}", r.verdict);
    assert_eq!(verify.first_bad_page, Some(block), "{verify:?}");
    assert_eq!(verify.bad, 1, "{verify:?}");
}

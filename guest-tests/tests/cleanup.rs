//! Nothing is left behind: a shaped link's namespaces go with it, and a
//! runner stopped with Ctrl-C in the middle of a migration leaves no VMM,
//! no namespace and no work directory.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tern_guest_tests::link::{LinkShape, ShapedLink};

/// Tests here run one at a time (they count processes and namespaces).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn namespaces() -> String {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .chars()
            .all(|c| c.is_ascii_digit())
        {
            continue;
        }
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                found.push(cmd);
            }
        }
    }
    found
}

#[test]
fn a_shaped_link_is_removed_with_its_guard() {
    let _one_at_a_time = serial();
    let link = ShapedLink::create(LinkShape::mib_per_sec(8.0)).expect("needs root and iproute2");
    let (a, b) = (
        link.source_netns().to_string(),
        link.destination_netns().to_string(),
    );
    let list = namespaces();
    assert!(list.contains(&a) && list.contains(&b), "{list}");
    assert!(link.qdisc_stats().expect("tc").contains("tbf"));
    drop(link);
    let list = namespaces();
    assert!(!list.contains(&a) && !list.contains(&b), "{list}");
}

#[test]
fn ctrl_c_mid_migration_leaves_nothing() {
    let _one_at_a_time = serial();
    tern_guest_tests::artifacts::require_kvm().expect("needs /dev/kvm");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tern-runner"))
        .args([
            "scenario",
            "dirty-2x-link",
            "--vmm",
            "qemu",
            "--qemu-variants",
            "default",
        ])
        .args([
            "--set",
            "ws=32",
            "--set",
            "memory=256",
            "--set",
            "budget=60",
            "--set",
            "baseline=0.5",
        ])
        .args([
            "--out",
            &std::env::temp_dir()
                .join("tern-cleanup-test")
                .display()
                .to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tern-runner");
    let pid = child.id();
    let tag = format!("tern-runner-{pid}-");
    let ns_tag = format!("tern-run-{pid}-");
    // Wait until both VMMs run (their sockets are in the runner's work dir).
    let end = Instant::now() + Duration::from_secs(60);
    while processes_mentioning(&tag)
        .iter()
        .filter(|c| c.contains("qemu"))
        .count()
        < 2
    {
        assert!(Instant::now() < end, "the runner never started two QEMUs");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the runner ended early"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(namespaces().contains(&ns_tag));
    std::thread::sleep(Duration::from_secs(2)); // into the migration
                                                // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let end = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "the runner did not end after SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::io::read_to_string(child.stderr.take().unwrap()).unwrap_or_default();
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_eq!(processes_mentioning(&tag), Vec::<String>::new());
    assert!(!namespaces().contains(&ns_tag), "{}", namespaces());
    let leftovers: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&tag))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

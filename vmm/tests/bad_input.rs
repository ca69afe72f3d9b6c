//! Bad input to `tern run` and the client commands: one clear line naming the
//! problem, a non-zero exit, no panic, nothing left behind.

mod common;

use std::process::Command;

use common::*;

fn run_tern(args: &[&str]) -> (i32, String) {
    let out = Command::new(tern())
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (out.status.code().unwrap_or(-1), stderr)
}

fn expect_error(args: &[&str], needles: &[&str]) {
    let (code, stderr) = run_tern(args);
    assert_ne!(code, 0, "tern {args:?} succeeded");
    assert!(
        !stderr.contains("panicked"),
        "tern {args:?} panicked:\n{stderr}"
    );
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("tern: error:"))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "expected one error line for {args:?}, got:\n{stderr}"
    );
    for n in needles {
        assert!(
            errors[0].contains(n),
            "error for {args:?} does not mention {n:?}: {}",
            errors[0]
        );
    }
}

#[test]
fn bad_run_arguments_are_named() {
    let dir = scratch_dir("badinput");
    let vmlinux = artifact("vmlinux");
    let k = vmlinux.to_str().unwrap();
    let unreadable = dir.join("unreadable");
    std::fs::write(&unreadable, b"x").unwrap();
    let not_a_kernel = dir.join("not-a-kernel");
    std::fs::write(&not_a_kernel, vec![0x42u8; 8192]).unwrap();
    let existing = dir.join("taken.sock");
    std::fs::write(&existing, b"").unwrap();

    expect_error(
        &["run", "--kernel", "/nonexistent/vmlinux"],
        &["--kernel", "/nonexistent/vmlinux"],
    );
    expect_error(
        &["run", "--kernel", not_a_kernel.to_str().unwrap()],
        &["not a kernel", "not-a-kernel"],
    );
    expect_error(
        &["run", "--kernel", k, "--memory", "0"],
        &["--memory", "too small"],
    );
    expect_error(
        &["run", "--kernel", k, "--memory", "abc"],
        &["--memory", "'abc'"],
    );
    expect_error(
        &["run", "--kernel", k, "--memory", "100T"],
        &["--memory", "more than this host"],
    );
    expect_error(&["run", "--kernel", k, "--cpus", "0"], &["--cpus"]);
    expect_error(
        &[
            "run",
            "--kernel",
            k,
            "--api-socket",
            existing.to_str().unwrap(),
        ],
        &["--api-socket", "already exists"],
    );
    expect_error(
        &["run", "--kernel", k, "--disk", "/nonexistent.img"],
        &["--disk", "/nonexistent.img"],
    );
    expect_error(
        &["run", "--kernel", k, "--initrd", "/nonexistent.cpio"],
        &["--initrd"],
    );
    expect_error(
        &["run", "--kernel", k, "--incoming", "http://x"],
        &["--incoming", "tcp:HOST:PORT"],
    );
    expect_error(
        &["run", "--kernel", k, "--net", "mac=52:54:00:00:00:01"],
        &["--net", "tap=NAME"],
    );
    // The existing file was not removed, nothing else was created.
    assert!(existing.exists());
    let mut left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    left.sort();
    assert_eq!(left, vec!["not-a-kernel", "taken.sock", "unreadable"]);

    // Unreadable for a non-root user; root reads anything, so only check the mode path when not root.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&unreadable, std::fs::Permissions::from_mode(0o000)).unwrap();
        expect_error(
            &["run", "--kernel", unreadable.to_str().unwrap()],
            &["--kernel", "unreadable"],
        );
    }
}

#[test]
fn missing_kvm_is_named() {
    // A private mount namespace where /dev/kvm does not exist, and one where
    // it is not a KVM device: tern must say so, not crash.
    let vmlinux = artifact("vmlinux");
    let t = tern();
    for (setup, needle) in [
        ("mount -t tmpfs none /dev", "cannot open /dev/kvm"),
        (
            "touch /tmp/tern-not-kvm && mount --bind /tmp/tern-not-kvm /dev/kvm",
            "not a KVM device",
        ),
    ] {
        let script = format!(
            "{setup} && exec {} run --kernel {}",
            t.display(),
            vmlinux.display()
        );
        let out = Command::new("unshare")
            .args(["--mount", "sh", "-c", &script])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(needle), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn clients_name_a_dead_socket() {
    let dir = scratch_dir("client");
    let sock = dir.join("nobody.sock");
    for cmd in [
        "status",
        "pause",
        "resume",
        "shutdown",
        "migrate-status",
        "migrate-cancel",
    ] {
        expect_error(
            &[cmd, "--api-socket", sock.to_str().unwrap()],
            &["nobody.sock"],
        );
    }
    expect_error(
        &[
            "migrate",
            "--api-socket",
            sock.to_str().unwrap(),
            "--to",
            "tcp:127.0.0.1:1",
        ],
        &["nobody.sock"],
    );
    expect_error(
        &[
            "migrate",
            "--api-socket",
            sock.to_str().unwrap(),
            "--to",
            "x",
            "--max-bandwidth",
            "fast",
        ],
        &["--max-bandwidth"],
    );
}

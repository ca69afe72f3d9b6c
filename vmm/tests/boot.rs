//! Booting real guests under tern: Linux (PVH vmlinux) to its init, the
//! ring-3 test guest to its ready line, pause/resume, reboot, and KVM errors.

mod common;

use std::time::Duration;

use common::*;

fn linux_boots(cpus: u32) {
    let _g = serial();
    let cpus_s = cpus.to_string();
    let vm = start_linux(None, Some("initramfs_live"), &["--cpus", &cpus_s]);
    let up = vm.wait_for("smp: Brought up", LINUX_BOOT);
    let expect = if cpus == 1 {
        "1 CPU".to_string()
    } else {
        format!("{cpus} CPUs")
    };
    assert!(up.contains(&expect), "{up}");
    vm.wait_for("Serial: 8250/16550 driver", LINUX_BOOT);
    vm.wait_for("Run /init as init process", LINUX_BOOT);
    if cpus > 1 {
        assert!(
            vm.lines()
                .iter()
                .any(|l| l.contains(&format!("Total of {cpus} processors activated"))),
            "not every CPU was activated"
        );
    }
}

#[test]
fn linux_reaches_init_with_one_vcpu() {
    linux_boots(1);
}

#[test]
fn linux_reaches_init_with_two_vcpus() {
    linux_boots(2);
}

/// Linux user space: busybox's `/init` (a shell script: mounts, reads
/// `/proc`, forks `cat`, `basename`, ...) makes its system calls, starts 40
/// short-lived processes that must all run clean, prints its ready line and
/// reboots, which ends tern with exit 0. On kvm_pvm every user-mode `syscall`
/// used to fault (the guest kernel's patch 0003 runs it from that fault), and
/// a process moved between vCPUs could lose a write (tern then holds user
/// space on vCPU 0 with `isolcpus=`; this checks the guest did so).
#[test]
fn linux_user_space_runs_its_init_and_a_reboot_ends_tern() {
    let _g = serial();
    let cmdline = "console=ttyS0 reboot=k panic=1 tern.execs=40";
    let mut vm = start_linux(
        None,
        Some("initramfs"),
        &["--cpus", "2", "--cmdline", cmdline],
    );
    vm.wait_for("GUEST-READY", LINUX_BOOT);
    let status = vm.wait_exit(LINUX_BOOT);
    let lines = vm.lines();
    let all = lines.join("\n");
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("segfault") || l.contains("Kernel panic")),
        "{all}"
    );
    assert!(
        lines.iter().any(|l| l.contains("EXECS ok=40 of 40")),
        "{all}"
    );
    // The guest keeps user space where tern's command line says.
    let isolated = lines
        .iter()
        .any(|l| l.contains("Kernel command line:") && l.contains("isolcpus=1"));
    let expect = if isolated {
        "user space runs on CPUs 0"
    } else {
        "user space runs on CPUs 0-1"
    };
    assert!(
        lines.iter().any(|l| l.trim_end() == expect),
        "want '{expect}'\n{all}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("reboot: Restarting system")),
        "{all}"
    );
    assert_eq!(status.code(), Some(0), "{}", vm.stderr());
}

fn testguest_ready(cpus: u32) {
    let _g = serial();
    let vm = boot_testguest(cpus, "256M", "tern.test=idle", None, &[]);
    let ready = vm.wait_event("ready", 0, Duration::from_secs(10));
    assert_eq!(ready["cpus"], cpus, "{ready}");
    // Every vCPU ticks.
    for cpu in 0..cpus {
        vm.wait_console(
            &format!("a tick from vCPU {cpu}"),
            Duration::from_secs(10),
            |lines| {
                parse_events(lines, "tick")
                    .into_iter()
                    .find(|t| t["cpu"] == cpu)
            },
        );
    }
}

#[test]
fn test_guest_ready_with_one_vcpu() {
    testguest_ready(1);
}

#[test]
fn test_guest_ready_with_two_vcpus() {
    testguest_ready(2);
}

#[test]
fn pause_stops_the_guest_and_resume_restarts_it() {
    let _g = serial();
    let dir = scratch_dir("pause");
    let api = dir.join("api.sock");
    let vm = boot_testguest(
        1,
        "256M",
        "tern.test=dirtier tern.ws=8 tern.rate=max",
        Some(&api),
        &[],
    );
    vm.wait_event("tick", 3, Duration::from_secs(10));

    let out = std::process::Command::new(tern())
        .args(["pause", "--api-socket", api.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tern pause: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state = vm.api("GET", "/vm", None).unwrap();
    assert_eq!(state["state"], "paused");
    // A tick line may have been in flight; after that, nothing moves.
    std::thread::sleep(Duration::from_millis(300));
    let before = vm.events("tick").len();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        vm.events("tick").len(),
        before,
        "the guest kept running while paused"
    );

    vm.api("PUT", "/vm/resume", None).unwrap();
    vm.wait_event("tick", before + 3, Duration::from_secs(10));
    let last = vm.events("tick").last().cloned().unwrap();
    assert!(last["work"].as_u64().unwrap() > 0, "{last}");
}

#[test]
fn guest_reboot_ends_tern_cleanly() {
    let _g = serial();
    let mut vm = boot_testguest(1, "128M", "tern.test=idle", None, &[]);
    vm.send("reboot");
    let status = vm.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", vm.stderr());
    assert!(vm.stderr().contains("reset"), "{}", vm.stderr());
}

#[test]
fn linux_panic_ends_tern_with_a_panic_status() {
    let _g = serial();
    // No root filesystem and no initramfs: Linux panics at the end of its boot.
    let vmlinux = artifact("vmlinux");
    let mut vm = TernVm::start(&["--kernel", vmlinux.to_str().unwrap(), "--memory", "128M"]);
    let status = vm.wait_exit(LINUX_BOOT);
    assert_eq!(status.code(), Some(2), "{}", vm.stderr());
    assert!(
        vm.stderr()
            .contains("guest kernel panic: VFS: Unable to mount root fs"),
        "{}",
        vm.stderr()
    );
}

#[test]
fn kvm_internal_error_is_named() {
    let _g = serial();
    let vmlinux = artifact("vmlinux");
    let mut vm = TernVm::start(&[
        "--kernel",
        vmlinux.to_str().unwrap(),
        "--memory",
        "128M",
        "--pvm-workarounds",
        "off",
    ]);
    if !std::path::Path::new("/sys/module/kvm_pvm").exists() {
        // On VMX/SVM hosts the workarounds are not needed: Linux boots without them.
        vm.wait_for("Run /init as init process", LINUX_BOOT);
        let cmdline = vm.wait_for("Command line:", LINUX_BOOT);
        assert!(!cmdline.contains("noxsave"), "{cmdline}");
        return;
    }
    // On kvm_pvm the emulator meets an instruction it cannot run (XRSTOR,
    // CMPXCHG16B...), and tern must say so and fail.
    let status = vm.wait_exit(LINUX_BOOT);
    assert_eq!(status.code(), Some(3), "{}", vm.stderr());
    assert!(
        vm.stderr().contains("KVM internal error on vCPU"),
        "{}",
        vm.stderr()
    );
    assert!(vm.stderr().contains("emulation failure"), "{}", vm.stderr());
}

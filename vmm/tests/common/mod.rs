//! Shared helpers for tests that boot real guests under tern: guest artifacts,
//! a `tern run` process with its console, the API, and guest events.
//!
//! Tests that boot guests take `serial()` first: the machine has 2 cores and
//! guests are timing-sensitive, so they run one at a time whatever the
//! harness's thread count. A missing /dev/kvm or artifact is a loud failure.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Serialises tests that run VMs.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Fails loudly when KVM is missing: these tests never skip.
pub fn require_kvm() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "/dev/kvm is missing: tern's integration tests boot real guests and need KVM"
    );
}

/// The guest artifacts, built (or found in the cache) by resources/build-guest.sh.
pub fn artifacts() -> &'static HashMap<String, PathBuf> {
    static A: OnceLock<HashMap<String, PathBuf>> = OnceLock::new();
    A.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_path_buf();
        let out = Command::new(root.join("resources/build-guest.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("cannot run resources/build-guest.sh");
        assert!(
            out.status.success(),
            "resources/build-guest.sh failed: guest artifacts are required"
        );
        let map: HashMap<String, PathBuf> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), PathBuf::from(v)))
            .collect();
        for k in [
            "kernel",
            "vmlinux",
            "initramfs",
            "initramfs_live",
            "testguest",
        ] {
            let p = map
                .get(k)
                .unwrap_or_else(|| panic!("build-guest.sh printed no {k}="));
            assert!(p.exists(), "{k}={} does not exist", p.display());
        }
        map
    })
}

/// Path of artifact `name`.
pub fn artifact(name: &str) -> PathBuf {
    artifacts()[name].clone()
}

/// The tern binary under test.
pub fn tern() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tern"))
}

/// How long Linux may take to boot on a kvm_pvm host: its init comes after
/// 20–60 s (ring 0 is emulated), and a loaded host doubles that.
pub const LINUX_BOOT: Duration = Duration::from_secs(300);

/// Starts `tern run` on the guest Linux kernel (PVH vmlinux) with 256 MiB,
/// the initramfs artifact named `initramfs` if any, and `extra` arguments,
/// inside network namespace `netns` if given.
pub fn start_linux(netns: Option<&str>, initramfs: Option<&str>, extra: &[&str]) -> TernVm {
    let vmlinux = artifact("vmlinux").display().to_string();
    let mut args: Vec<String> = vec!["--kernel".into(), vmlinux, "--memory".into(), "256M".into()];
    if let Some(name) = initramfs {
        args.push("--initrd".into());
        args.push(artifact(name).display().to_string());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    TernVm::start_in(netns, &argv)
}

/// A fresh private directory for sockets and disks.
pub fn scratch_dir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("tern-test-{}-{tag}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[derive(Default)]
struct Console {
    lines: Vec<String>,
    closed: bool,
}

/// A running `tern run` and what it printed.
pub struct TernVm {
    child: Child,
    stdin: Option<ChildStdin>,
    console: Arc<(Mutex<Console>, Condvar)>,
    stderr: Arc<Mutex<String>>,
    /// The API socket, if one was asked for.
    pub api: Option<PathBuf>,
}

impl TernVm {
    /// Sends `signal` (a `kill` name: "STOP", "CONT", …) to the process.
    pub fn signal(&self, signal: &str) {
        let ok = std::process::Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{signal} {}", self.child.id());
    }

    /// The process's resident memory, KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("tern's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc status")
    }

    /// Starts `tern run ARGS`.
    pub fn start(args: &[&str]) -> TernVm {
        Self::start_in(None, args)
    }

    /// Starts `tern run ARGS` inside network namespace `netns` (`ip netns
    /// exec`, which execs tern: the child is tern itself), or here.
    pub fn start_in(netns: Option<&str>, args: &[&str]) -> TernVm {
        require_kvm();
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(tern());
                c
            }
            None => Command::new(tern()),
        };
        // Debug lines (switchover steps, the clock carried and set) go into
        // the captured stderr that failure messages show; TERN_LOG overrides.
        if std::env::var_os("TERN_LOG").is_none() {
            cmd.env("TERN_LOG", "debug");
        }
        let mut child = cmd
            .arg("run")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start tern");
        let console = Arc::new((Mutex::new(Console::default()), Condvar::new()));
        let out = child.stdout.take().unwrap();
        let c = console.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let (m, cv) = &*c;
                m.lock().unwrap().lines.push(line);
                cv.notify_all();
            }
            let (m, cv) = &*c;
            m.lock().unwrap().closed = true;
            cv.notify_all();
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let err = child.stderr.take().unwrap();
        let s = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let mut s = s.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let api = args
            .iter()
            .position(|a| *a == "--api-socket")
            .map(|i| PathBuf::from(args[i + 1]));
        TernVm {
            stdin: child.stdin.take(),
            child,
            console,
            stderr,
            api,
        }
    }

    /// Waits until `f` finds something in the console so far; returns it.
    /// Panics with the console's tail on timeout or if tern exits first.
    pub fn wait_console<R>(
        &self,
        what: &str,
        timeout: Duration,
        f: impl Fn(&[String]) -> Option<R>,
    ) -> R {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.console;
        let mut c = m.lock().unwrap();
        loop {
            if let Some(r) = f(&c.lines) {
                return r;
            }
            let now = Instant::now();
            if c.closed || now >= deadline {
                let tail: Vec<_> = c.lines.iter().rev().take(15).rev().cloned().collect();
                panic!(
                    "waiting for {what}: {}\n--- console tail:\n{}\n--- stderr:\n{}",
                    if c.closed {
                        "tern's console closed"
                    } else {
                        "timed out"
                    },
                    tail.join("\n"),
                    self.stderr.lock().unwrap()
                );
            }
            c = cv.wait_timeout(c, deadline - now).unwrap().0;
        }
    }

    /// Waits for a console line satisfying `f`.
    pub fn wait_line(&self, what: &str, timeout: Duration, f: impl Fn(&str) -> bool) -> String {
        self.wait_console(what, timeout, |lines| lines.iter().find(|l| f(l)).cloned())
    }

    /// Waits for a console line containing `needle`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        self.wait_line(needle, timeout, |l| l.contains(needle))
    }

    /// Waits for the `nth` (from 0) guest event named `event`.
    pub fn wait_event(&self, event: &str, nth: usize, timeout: Duration) -> Value {
        self.wait_console(&format!("guest event {event} #{nth}"), timeout, |lines| {
            parse_events(lines, event).into_iter().nth(nth)
        })
    }

    /// Every `tern-guest:` event named `event` so far.
    pub fn events(&self, event: &str) -> Vec<Value> {
        parse_events(&self.console.0.lock().unwrap().lines, event)
    }

    /// Number of console lines so far.
    pub fn line_count(&self) -> usize {
        self.console.0.lock().unwrap().lines.len()
    }

    /// All console lines.
    pub fn lines(&self) -> Vec<String> {
        self.console.0.lock().unwrap().lines.clone()
    }

    /// Sends a line to the guest's serial input.
    pub fn send(&mut self, line: &str) {
        let s = self.stdin.as_mut().expect("stdin closed");
        writeln!(s, "{line}").unwrap();
        s.flush().unwrap();
    }

    /// What tern printed on stderr.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for tern to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                // Let the reader threads drain.
                std::thread::sleep(Duration::from_millis(50));
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "tern did not exit within {timeout:?}\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills tern (SIGKILL), as a crash would.
    pub fn wait_exit_or_kill(&mut self) -> Option<ExitStatus> {
        let _ = self.child.kill();
        self.child.wait().ok()
    }

    /// Calls the API.
    pub fn api(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let sock = self.api.as_ref().expect("started without --api-socket");
        vmm::api::client::call(sock, method, path, body.as_ref()).map_err(|e| e.to_string())
    }

    /// Whether tern is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for TernVm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Boots the ring-3 test guest with `cmdline`, retrying a failed early boot once.
pub fn boot_testguest(
    cpus: u32,
    mem: &str,
    cmdline: &str,
    api: Option<&Path>,
    extra: &[&str],
) -> TernVm {
    boot_testguest_in(None, cpus, mem, cmdline, api, extra)
}

/// As `boot_testguest`, with tern inside network namespace `netns`.
pub fn boot_testguest_in(
    netns: Option<&str>,
    cpus: u32,
    mem: &str,
    cmdline: &str,
    api: Option<&Path>,
    extra: &[&str],
) -> TernVm {
    let guest = artifact("testguest");
    let cpus = cpus.to_string();
    let mut args: Vec<String> = vec![
        "--kernel".into(),
        guest.display().to_string(),
        "--cpus".into(),
        cpus,
        "--memory".into(),
        mem.into(),
        "--cmdline".into(),
        cmdline.into(),
    ];
    if let Some(a) = api {
        args.push("--api-socket".into());
        args.push(a.display().to_string());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let vm = TernVm::start_in(netns, &argv);
    vm.wait_event("ready", 0, Duration::from_secs(30));
    vm
}

/// The `tern-guest:` events named `event` (all events when `event` is empty) in `lines`.
pub fn parse_events(lines: &[String], event: &str) -> Vec<Value> {
    lines
        .iter()
        .filter_map(|l| l.split_once("tern-guest: ").map(|x| x.1))
        .filter_map(|j| serde_json::from_str::<Value>(j.trim()).ok())
        .filter(|v| event.is_empty() || v["event"] == event)
        .collect()
}

/// Starts `tern run --incoming URI` and waits until it listens.
pub fn start_destination(
    uri: &str,
    cpus: u32,
    mem: &str,
    api: Option<&Path>,
    extra: &[&str],
) -> TernVm {
    start_destination_in(None, uri, cpus, mem, api, extra)
}

/// As `start_destination`, with tern inside network namespace `netns`.
pub fn start_destination_in(
    netns: Option<&str>,
    uri: &str,
    cpus: u32,
    mem: &str,
    api: Option<&Path>,
    extra: &[&str],
) -> TernVm {
    let cpus = cpus.to_string();
    let mut args: Vec<String> = vec![
        "--incoming".into(),
        uri.into(),
        "--cpus".into(),
        cpus,
        "--memory".into(),
        mem.into(),
    ];
    if let Some(a) = api {
        args.push("--api-socket".into());
        args.push(a.display().to_string());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let vm = TernVm::start_in(netns, &argv);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !vm.stderr().contains("waiting for an incoming migration") {
        assert!(
            Instant::now() < deadline,
            "destination did not start listening:\n{}",
            vm.stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    vm
}

/// Runs `tern migrate --json` against `src_api`; returns the exit code and the statistics.
pub fn migrate(src_api: &Path, to: &str, extra: &[&str]) -> (i32, Value, String) {
    let out = Command::new(tern())
        .args([
            "migrate",
            "--api-socket",
            src_api.to_str().unwrap(),
            "--to",
            to,
            "--json",
        ])
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let stats = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), stats, stderr)
}

/// Migrates the guest in `src` (whose API socket is `src_api`) to `to` and
/// asserts that the migration completed and the source then exited cleanly;
/// returns the statistics.
pub fn migrate_to_completion(src: &mut TernVm, src_api: &Path, to: &str, extra: &[&str]) -> Value {
    let (code, stats, stderr) = migrate(src_api, to, extra);
    assert_eq!(
        code,
        0,
        "migration failed: {stderr}\n{stats}\nsource: {}",
        src.stderr()
    );
    assert_eq!(stats["phase"], "completed", "{stats}");
    let status = src.wait_exit(Duration::from_secs(10));
    assert_eq!(
        status.code(),
        Some(0),
        "the source did not exit cleanly: {}",
        src.stderr()
    );
    stats
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Asks the guest to verify every page and returns the verify event.
pub fn verify(vm: &mut TernVm) -> Value {
    let n = vm.events("verify").len();
    vm.send("verify");
    vm.wait_event("verify", n, Duration::from_secs(30))
}

/// Asserts the guest's memory verified, naming the first bad page otherwise.
pub fn assert_verified(v: &Value) {
    assert_eq!(v["ok"], true, "guest memory did not verify: {v}");
}

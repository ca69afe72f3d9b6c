//! virtio-blk and virtio-net under real guests: Linux mounting its root from
//! a virtio disk and getting a DHCP lease over a tap, the ring-3 test guest
//! writing and verifying checked blocks across a reboot, a read-only disk,
//! frames exchanged with a peer on the tap, and live migrations with disk
//! writes and network traffic running.
//!
//! Every namespace, tap, bridge, dnsmasq, peer and temporary file lives in a
//! guard whose `Drop` removes it, so a failing test cleans up too.

mod common;

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tern_workloads::disk::format::{check_block, Header, BLOCK_BYTES, BLOCK_WORDS};
use tern_workloads::netload::frame::{self, Kind, Payload};

// ---------------------------------------------------------------- guards

/// Runs `cmd`; panics with its output if it fails. Returns stdout.
fn run(cmd: &[&str]) -> String {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A private directory, removed with everything in it on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        Scratch(scratch_dir(tag))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A network namespace of this test, deleted on drop (its taps and bridges
/// go with it). Drop every process running inside it first.
struct NetNs {
    name: String,
}

impl NetNs {
    fn new(tag: &str) -> NetNs {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "tern-devtest-{}-{tag}{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        run(&["ip", "netns", "add", &name]);
        let ns = NetNs { name };
        // No IPv6 chatter (router solicitations, MLD) on the guest's link:
        // every frame the guest sees is then its peer's.
        for key in [
            "net.ipv6.conf.all.disable_ipv6",
            "net.ipv6.conf.default.disable_ipv6",
        ] {
            ns.exec(&["sysctl", "-q", "-w", &format!("{key}=1")]);
        }
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn name(&self) -> Option<&str> {
        Some(&self.name)
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut cmd = vec!["ip", "-n", &self.name];
        cmd.extend_from_slice(args);
        run(&cmd)
    }

    fn exec(&self, args: &[&str]) -> String {
        let mut cmd = vec!["ip", "netns", "exec", &self.name];
        cmd.extend_from_slice(args);
        run(&cmd)
    }

    /// Whether `ip` answers a ping from inside the namespace, in up to ten tries (a live Linux's
    /// ring 0 is emulated here and the host is shared).
    fn answers_ping(&self, ip: &str) -> bool {
        (0..10).any(|_| {
            Command::new("ip")
                .args([
                    "netns", "exec", &self.name, "ping", "-c", "1", "-W", "5", ip,
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
    }

    /// A persistent tap, up (no carrier until tern attaches to it).
    fn tap(&self, name: &str) {
        self.ip(&["tuntap", "add", name, "mode", "tap"]);
        self.ip(&["link", "set", name, "up"]);
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A helper process, killed on drop.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// dnsmasq serving DHCP on `tap` (which has 10.0.2.1/24) inside `ns`.
fn dnsmasq(ns: &NetNs, tap: &str, dir: &Scratch) -> ChildGuard {
    let log = dir.path("dnsmasq.log");
    let leases = dir.path("leases");
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "dnsmasq",
            "--no-daemon",
            "--conf-file=/dev/null",
        ])
        .arg(format!("--interface={tap}"))
        .args([
            "--bind-interfaces",
            "--dhcp-range=10.0.2.15,10.0.2.50,1h",
            "--no-resolv",
            "--no-hosts",
            "--port=0",
        ])
        .arg(format!("--dhcp-leasefile={}", leases.display()))
        .stdout(Stdio::null())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .expect("cannot start dnsmasq");
    let mut guard = ChildGuard(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("DHCP, sockets bound exclusively") {
            return guard;
        }
        if let Some(status) = guard.0.try_wait().unwrap() {
            panic!("dnsmasq exited ({status}):\n{text}");
        }
        assert!(Instant::now() < deadline, "dnsmasq did not start:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------- the net peer

const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
const PEER_RUN_ID: u64 = 42;
const PEER_FRAME_BYTES: usize = 100;

/// What the peer saw and did.
#[derive(Default, Clone)]
struct PeerReport {
    /// Probes received intact, and how many distinct sequence numbers.
    probes: u64,
    distinct: u64,
    /// Probes received twice.
    duplicates: u64,
    /// tern frames (EtherType 0x88b5) that failed their checksum or were short.
    damaged: u64,
    /// Probes echoed back.
    echoed: u64,
    /// The peer's own frames sent.
    own_sent: u64,
    /// Sends that failed.
    send_errors: u64,
    /// The guest's MAC (the probes' source).
    guest_mac: Option<[u8; 6]>,
    /// Frames the kernel dropped because the peer's socket was full
    /// (PACKET_STATISTICS): host-side loss, not the VMM's.
    socket_drops: u64,
    /// Probe numbers seen.
    seen: HashSet<u64>,
}

impl std::fmt::Debug for PeerReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "peer: {} probes ({} distinct, {} twice, {} damaged), {} echoed, {} own frames, {} send errors, {} dropped by the host socket",
            self.probes, self.distinct, self.duplicates, self.damaged, self.echoed, self.own_sent, self.send_errors, self.socket_drops
        )
    }
}

impl PeerReport {
    /// The probe numbers below `sent` the peer never saw, as ranges.
    fn missing(&self, sent: u64) -> Vec<std::ops::Range<u64>> {
        let mut out: Vec<std::ops::Range<u64>> = Vec::new();
        for seq in (0..sent).filter(|s| !self.seen.contains(s)) {
            match out.last_mut() {
                Some(r) if r.end == seq => r.end += 1,
                _ => out.push(seq..seq + 1),
            }
        }
        out
    }
}

/// A program on the host side of the guest's link (a thread in the test's
/// namespace, on an AF_PACKET socket bound to `ifname`): echoes every probe
/// after checking it, and sends its own numbered frames, unicast to the
/// guest, `own_rate` per second.
struct Peer {
    stop: Arc<AtomicBool>,
    quiet: Arc<AtomicBool>,
    thread: Option<JoinHandle<PeerReport>>,
}

/// An AF_PACKET socket for EtherType 0x88b5 on `ifname`, in the calling thread's namespace.
fn packet_socket(ifname: &str) -> Result<i32, String> {
    let proto = frame::ETHERTYPE.to_be();
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    if fd < 0 {
        return Err(format!(
            "socket(AF_PACKET): {}",
            std::io::Error::last_os_error()
        ));
    }
    let cname = std::ffi::CString::new(ifname).unwrap();
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if index == 0 {
        return Err(format!(
            "no interface {ifname}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: sockaddr_ll is plain data; all-zero is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = index as i32;
    // SAFETY: `sll` is a valid sockaddr_ll that lives across the call.
    let r = unsafe {
        libc::bind(
            fd,
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if r < 0 {
        return Err(format!(
            "bind to {ifname}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // Room for a second of frames even if this thread is descheduled a while.
    let size: libc::c_int = 8 << 20;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
        // SAFETY: one int option that lives across the call.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
    }
    Ok(fd)
}

fn enter_netns(ns: &str) -> Result<(), String> {
    let f = File::open(format!("/var/run/netns/{ns}")).map_err(|e| format!("netns {ns}: {e}"))?;
    // SAFETY: setns(2) on an open namespace file; it affects this thread only.
    let r = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
    if r < 0 {
        return Err(format!("setns {ns}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

impl Peer {
    fn start(ns: &NetNs, ifname: &str, own_rate: u64) -> Peer {
        let stop = Arc::new(AtomicBool::new(false));
        let quiet = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (ns, ifname) = (ns.name.clone(), ifname.to_string());
        let (s, q) = (stop.clone(), quiet.clone());
        let thread = std::thread::spawn(move || {
            let fd = match enter_netns(&ns).and_then(|()| packet_socket(&ifname)) {
                Ok(fd) => fd,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return PeerReport::default();
                }
            };
            let _ = ready_tx.send(Ok(()));
            let mut report = peer_loop(fd, &s, &q, own_rate);
            report.socket_drops = packet_drops(fd);
            // SAFETY: our socket, closed once.
            unsafe { libc::close(fd) };
            report
        });
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("the peer cannot start: {e}"),
            Err(_) => panic!("the peer thread died"),
        }
        Peer {
            stop,
            quiet,
            thread: Some(thread),
        }
    }

    /// Stops sending its own frames (echoes go on).
    fn quiet(&self) {
        self.quiet.store(true, Ordering::Relaxed);
    }

    fn finish(mut self) -> PeerReport {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .unwrap()
            .join()
            .expect("the peer panicked")
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Frames the kernel dropped on the socket since the last call.
fn packet_drops(fd: i32) -> u64 {
    let mut st = libc::tpacket_stats {
        tp_packets: 0,
        tp_drops: 0,
    };
    let mut len = std::mem::size_of::<libc::tpacket_stats>() as u32;
    // SAFETY: PACKET_STATISTICS fills a tpacket_stats of `len` bytes.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut st as *mut libc::tpacket_stats).cast(),
            &mut len,
        )
    };
    if r < 0 {
        0
    } else {
        u64::from(st.tp_drops)
    }
}

fn peer_loop(fd: i32, stop: &AtomicBool, quiet: &AtomicBool, own_rate: u64) -> PeerReport {
    let mut r = PeerReport::default();
    let mut buf = [0u8; 2048];
    let start = Instant::now();
    let mut own_start: Option<Instant> = None;
    let send = |frame: &[u8], r: &mut PeerReport| {
        // SAFETY: `frame` is valid for its length; the socket is bound to the link.
        let n = unsafe { libc::send(fd, frame.as_ptr().cast(), frame.len(), 0) };
        n == frame.len() as isize || {
            r.send_errors += 1;
            false
        }
    };
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, 1) };
        loop {
            // SAFETY: sockaddr_ll is plain data; all-zero is valid.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: `buf` and `from` are valid for the lengths given.
            let n = unsafe {
                libc::recvfrom(
                    fd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    &mut from as *mut libc::sockaddr_ll as *mut libc::sockaddr,
                    &mut len,
                )
            };
            if n <= 0 {
                break;
            }
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let frame = &mut buf[..n as usize];
            match frame::parse(frame) {
                Ok(p) if p.kind == Kind::Probe => {
                    r.probes += 1;
                    if r.seen.insert(p.seq) {
                        r.distinct += 1;
                    } else {
                        r.duplicates += 1;
                    }
                    let mut mac = [0u8; 6];
                    mac.copy_from_slice(&frame[6..12]);
                    r.guest_mac.get_or_insert(mac);
                    frame::echo(frame, PEER_MAC);
                    if send(frame, &mut r) {
                        r.echoed += 1;
                    }
                }
                Ok(_) => {}
                Err(frame::FrameError::Foreign) => {}
                Err(_) => r.damaged += 1,
            }
        }
        // Own frames, once the guest's MAC is known (unicast: they follow
        // the guest's port on a bridge).
        if let (Some(mac), true) = (r.guest_mac, own_rate > 0 && !quiet.load(Ordering::Relaxed)) {
            let t0 = *own_start.get_or_insert_with(Instant::now);
            let due = t0.elapsed().as_millis() as u64 * own_rate / 1000;
            while r.own_sent < due {
                let mut own = [0u8; PEER_FRAME_BYTES];
                let p = Payload {
                    run_id: PEER_RUN_ID,
                    seq: r.own_sent,
                    kind: Kind::Peer,
                    sent_tsc: start.elapsed().as_nanos() as u64,
                };
                let n = frame::build(&mut own, PEER_FRAME_BYTES, mac, PEER_MAC, &p);
                send(&own[..n], &mut r);
                // Numbers are used even if the send failed: the guest counts the gap.
                r.own_sent += 1;
            }
        }
    }
    r
}

// ---------------------------------------------------------------- disk images

/// Reads `path`'s test-guest disk (header, then every block it names) and
/// checks it from the host; returns the header and the damaged blocks.
fn check_image_from_host(path: &Path) -> (Header, Vec<(u64, String)>) {
    let mut f = File::open(path).unwrap();
    let words: Vec<AtomicU64> = (0..BLOCK_WORDS).map(|_| AtomicU64::new(0)).collect();
    let mut bytes = vec![0u8; BLOCK_BYTES];
    let mut load = |f: &mut File, block: u64, words: &[AtomicU64]| {
        f.seek(SeekFrom::Start(block * BLOCK_BYTES as u64)).unwrap();
        f.read_exact(&mut bytes).unwrap();
        for (w, b) in words.iter().zip(bytes.chunks_exact(8)) {
            w.store(u64::from_le_bytes(b.try_into().unwrap()), Ordering::Relaxed);
        }
    };
    load(&mut f, 0, &words);
    let header = Header::read(&words)
        .unwrap_or_else(|| panic!("{}: no test-guest disk header on block 0", path.display()));
    let mut bad = Vec::new();
    for block in 1..=header.blocks {
        load(&mut f, block, &words);
        if let Err(d) = check_block(&words, header.run_id, block, header.expected(block)) {
            bad.push((block, format!("{d:?}")));
        }
    }
    (header, bad)
}

/// A sparse image of `mib` MiB.
fn sparse_image(path: &Path, mib: u64) {
    File::create(path).unwrap().set_len(mib << 20).unwrap();
}

/// An ext4 image whose /init is the live init (no system calls, so Linux
/// stays up on kvm_pvm).
fn linux_root_image(dir: &Scratch) -> PathBuf {
    let root = dir.path("root");
    std::fs::create_dir_all(root.join("dev")).unwrap();
    std::fs::copy(artifact("liveinit"), root.join("init")).unwrap();
    let img = dir.path("root.ext4");
    sparse_image(&img, 32);
    run(&[
        "mkfs.ext4",
        "-q",
        "-F",
        "-d",
        root.to_str().unwrap(),
        img.to_str().unwrap(),
    ]);
    img
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no number {key} in {v}"))
}

// ---------------------------------------------------------------- Linux

const LINUX_MAC: &str = "52:54:00:12:34:56";
const LINUX_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 root=/dev/vda rootfstype=ext4 rw init=/init";

/// One boot for both devices: the root file system comes from virtio-blk,
/// the address from dnsmasq over virtio-net, and the live Linux answers ping.
#[test]
fn linux_mounts_its_root_from_virtio_blk_and_gets_a_dhcp_lease_over_virtio_net() {
    let _g = serial();
    let dir = Scratch::new("linux-rw");
    let img = linux_root_image(&dir);
    let ns = NetNs::new("lx");
    ns.tap("tap0");
    ns.ip(&["addr", "add", "10.0.2.1/24", "dev", "tap0"]);
    let _dnsmasq = dnsmasq(&ns, "tap0", &dir);

    let disk = img.to_str().unwrap();
    let net = format!("tap=tap0,mac={LINUX_MAC}");
    let cmdline = format!("{LINUX_CMDLINE} ip=dhcp");
    let mut vm = start_linux(
        ns.name(),
        None,
        &["--disk", disk, "--net", &net, "--cmdline", &cmdline],
    );
    // Both devices probed: the disk with the image's size, the NIC as eth0
    // with the MAC tern put in its config space (virtio_net prints nothing
    // when it registers; the DHCP exchange below is the proof it works).
    let vda = vm.wait_for("virtio_blk virtio0: [vda]", LINUX_BOOT);
    assert!(vda.contains("65536 512-byte logical blocks"), "{vda}");
    vm.wait_for("IP-Config: Complete:", LINUX_BOOT);
    let lease = vm.wait_for("device=eth0, hwaddr=", LINUX_BOOT);
    assert!(lease.contains(&format!("hwaddr={LINUX_MAC}")), "{lease}");
    let ip = lease
        .split("ipaddr=")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or_else(|| panic!("no address in {lease}"))
        .to_string();
    assert!(ip.starts_with("10.0.2."), "{lease}");
    vm.wait_for("EXT4-fs (vda): mounted filesystem", LINUX_BOOT);
    let mounted = vm.wait_for("VFS: Mounted root (ext4 filesystem)", LINUX_BOOT);
    assert!(
        !mounted.contains("readonly"),
        "a read-write disk was mounted read-only: {mounted}"
    );
    vm.wait_for("Run /init as init process", LINUX_BOOT);

    // dnsmasq handed out that address to that MAC.
    let leases = std::fs::read_to_string(dir.path("leases")).unwrap_or_default();
    assert!(
        leases
            .lines()
            .any(|l| l.contains(LINUX_MAC) && l.contains(&ip)),
        "dnsmasq's leases do not show {LINUX_MAC} at {ip}:\n{leases}"
    );
    // The live Linux answers ping on that address (a few tries: its ring 0
    // is emulated and the host is shared).
    assert!(ns.answers_ping(&ip), "Linux at {ip} does not answer ping");
    assert!(vm.running(), "{}", vm.stderr());
}

/// Live Linux (its init never makes a system call) with a static address on
/// virtio-net, pinged from the host every 100 ms while it migrates to a
/// second tern on another tap of the same bridge: it keeps answering, from
/// the destination once the source has gone (the destination announces the
/// guest's MAC, so the bridge forwards to the new tap at once).
#[test]
fn live_linux_keeps_answering_ping_across_a_live_migration() {
    let _g = serial();
    let dir = Scratch::new("linux-ping");
    let ns = NetNs::new("lp");
    ns.ip(&["link", "add", "br0", "type", "bridge"]);
    ns.ip(&["addr", "add", "10.0.3.1/24", "dev", "br0"]);
    ns.ip(&["link", "set", "br0", "up"]);
    for tap in ["tap0", "tap1"] {
        ns.tap(tap);
        ns.ip(&["link", "set", tap, "master", "br0"]);
    }
    let guest_ip = "10.0.3.2";
    let cmdline =
        format!("console=ttyS0 reboot=k panic=1 ip={guest_ip}::10.0.3.1:255.255.255.0::eth0:off");
    let api = dir.path("src.sock");
    let net = format!("tap=tap0,mac={LINUX_MAC}");
    let mut src = start_linux(
        ns.name(),
        Some("initramfs_live"),
        &[
            "--net",
            &net,
            "--cmdline",
            &cmdline,
            "--api-socket",
            api.to_str().unwrap(),
        ],
    );
    src.wait_for("Run /init as init process", LINUX_BOOT);
    assert!(
        ns.answers_ping(guest_ip),
        "Linux at {guest_ip} does not answer ping"
    );

    let uri = format!("unix:{}", dir.path("mig.sock").display());
    let mut dst = start_destination_in(ns.name(), &uri, 1, "256M", None, &["--net", "tap=tap1"]);
    let ping_log = dir.path("ping.txt");
    let ping = ChildGuard(
        Command::new("ip")
            .args([
                "netns", "exec", &ns.name, "ping", "-D", "-i", "0.1", "-W", "2", guest_ip,
            ])
            .stdout(File::create(&ping_log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_secs(2));
    // A capped link, so the migration lasts a few seconds of pings.
    let (code, stats, stderr) = migrate(&api, &uri, &["--max-bandwidth", "8M"]);
    assert_eq!(code, 0, "{stderr}\n{stats}");
    let migrated_at = now_unix_s();
    // A NIC has nothing to drain: it serves the guest until the pause.
    assert_eq!(stats["drain"]["attempts"], 0, "{stats}");
    assert_eq!(src.wait_exit(Duration::from_secs(20)).code(), Some(0));
    std::thread::sleep(Duration::from_secs(3));
    drop(ping);

    // (send time, seq, rtt ms) of every reply.
    let replies: Vec<(f64, u64, f64)> = std::fs::read_to_string(&ping_log)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let t: f64 = l.strip_prefix('[')?.split(']').next()?.parse().ok()?;
            let seq = l
                .split("icmp_seq=")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()?;
            let ms: f64 = l.split("time=").nth(1)?.split(' ').next()?.parse().ok()?;
            Some((t - ms / 1e3, seq, ms))
        })
        .collect();
    let rtts: Vec<f64> = replies.iter().map(|r| r.2).collect();
    let longest_gap = replies
        .windows(2)
        .map(|w| w[1].1 - w[0].1 - 1)
        .max()
        .unwrap_or(0);
    let after = replies.iter().filter(|r| r.0 > migrated_at).count();
    eprintln!(
        "ping: {} replies, RTT min/avg/max {:.1}/{:.1}/{:.1} ms, longest run lost {longest_gap}, \
         {after} answered after the migration; migration {} ms, downtime {} ms",
        replies.len(),
        rtts.iter().cloned().fold(f64::MAX, f64::min),
        rtts.iter().sum::<f64>() / rtts.len().max(1) as f64,
        rtts.iter().cloned().fold(0.0, f64::max),
        stats["total_ms"],
        stats["downtime_ms"]
    );
    // Three seconds after the source exited: only the destination can answer.
    assert!(after >= 15, "{after} replies after the migration");
    // No outage beyond the switchover (300 ms at most: three pings).
    assert!(longest_gap <= 3, "{longest_gap} pings in a row unanswered");
    assert!(dst.running(), "{}", dst.stderr());
}

fn now_unix_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A `readonly=on` disk: Linux mounts its root read-only although asked for
/// `rw`, and the image is not changed by a single byte.
#[test]
fn linux_mounts_a_readonly_disk_read_only() {
    let _g = serial();
    let dir = Scratch::new("linux-ro");
    let img = linux_root_image(&dir);
    let before = std::fs::read(&img).unwrap();
    let disk = format!("{},readonly=on", img.display());
    let mut vm = start_linux(None, None, &["--disk", &disk, "--cmdline", LINUX_CMDLINE]);
    vm.wait_for("virtio_blk virtio0: [vda]", LINUX_BOOT);
    vm.wait_for("EXT4-fs (vda): mounted filesystem", LINUX_BOOT);
    let mounted = vm.wait_for("VFS: Mounted root (ext4 filesystem)", LINUX_BOOT);
    assert!(mounted.contains("readonly"), "{mounted}");
    vm.wait_for("Run /init as init process", LINUX_BOOT);
    assert!(vm.running(), "{}", vm.stderr());
    vm.wait_exit_or_kill();
    assert!(
        std::fs::read(&img).unwrap() == before,
        "the read-only image changed"
    );
}

// ---------------------------------------------------------------- test guest: disk

/// 256 MiB of 4 KiB blocks: 65536 data blocks after the header block.
const DISK_MIB: u64 = 256;
const DISK_BLOCKS: u64 = DISK_MIB * 256;
const WRITE_256: &str = "tern.test=disk tern.disk_mib=256 tern.qd=32";
const DISK_IO: Duration = Duration::from_secs(180);

/// Boots the test guest on `img` to verify it from the disk alone; returns the `disk_verify`.
fn verify_after_reboot(img: &Path) -> Value {
    let disk = img.display().to_string();
    let mut vm = boot_testguest(
        1,
        "256M",
        "tern.test=disk tern.disk_mode=verify tern.qd=32",
        None,
        &["--disk", &disk],
    );
    let v = vm.wait_event("disk_verify", 0, DISK_IO);
    vm.send("reboot");
    let status = vm.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", vm.stderr());
    v
}

#[test]
fn test_guest_writes_256_mib_at_qd32_and_verifies_every_block_after_a_reboot() {
    let _g = serial();
    let dir = Scratch::new("disk");
    let img = dir.path("disk.img");
    sparse_image(&img, DISK_MIB + 4);
    let disk = img.display().to_string();

    // Boot 1: one write pass over 256 MiB at queue depth 32.
    let mut vm = boot_testguest(
        1,
        "256M",
        &format!("{WRITE_256} tern.passes=1"),
        None,
        &["--disk", &disk],
    );
    let info = vm.wait_event("disk", 0, Duration::from_secs(10));
    assert_eq!(info["read_only"], false, "{info}");
    assert_eq!(
        u(&info, "slots"),
        32,
        "the guest does not keep 32 requests in flight: {info}"
    );
    assert_eq!(u(&info, "blocks"), DISK_BLOCKS, "{info}");
    let w = vm.wait_event("disk_written", 0, DISK_IO);
    assert_eq!(w["complete"], true, "{w}");
    assert_eq!(u(&w, "blocks"), DISK_BLOCKS, "{w}");
    assert_eq!(u(&w, "errors"), 0, "{w}");
    let deepest = vm
        .events("disk_tick")
        .iter()
        .map(|t| u(t, "in_flight"))
        .max()
        .unwrap_or(0);
    assert!(
        deepest > 1 && deepest <= 32,
        "requests in flight at the ticks: at most {deepest}"
    );
    assert!(vm.events("error").is_empty(), "{:?}", vm.events("error"));
    vm.send("reboot");
    assert_eq!(
        vm.wait_exit(Duration::from_secs(20)).code(),
        Some(0),
        "{}",
        vm.stderr()
    );
    drop(vm);

    // The host reads the image: every block of the pass is there, whole.
    let (header, bad) = check_image_from_host(&img);
    assert_eq!(
        (header.blocks, header.generation, header.cursor),
        (DISK_BLOCKS, 1, DISK_BLOCKS + 1),
        "{header:?}"
    );
    assert!(
        bad.is_empty(),
        "{} blocks damaged on the image, first {:?}",
        bad.len(),
        bad.first()
    );

    // Boot 2 (a new tern process, same image): every block read back and checked.
    let v = verify_after_reboot(&img);
    assert_eq!(v["source"], "disk", "{v}");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!((u(&v, "blocks"), u(&v, "bad")), (DISK_BLOCKS, 0), "{v}");
    assert_eq!(v["run_id"], format!("{:#x}", header.run_id), "{v}");

    // The check can fail: one flipped byte in block 4242, sector 5, is named.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    let at = 4242 * BLOCK_BYTES as u64 + 5 * 512 + 100;
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[!b[0]]).unwrap();
    drop(f);
    let v = verify_after_reboot(&img);
    assert_eq!(v["ok"], false, "a corrupted block went unnoticed: {v}");
    assert_eq!(u(&v, "bad"), 1, "{v}");
    assert_eq!(u(&v["first_bad"], "block"), 4242, "{v}");
}

#[test]
fn readonly_disk_fails_every_test_guest_write_with_an_error_status() {
    let _g = serial();
    let dir = Scratch::new("disk-ro");
    let img = dir.path("ro.img");
    let content: Vec<u8> = (0..16u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(&img, &content).unwrap();
    let disk = format!("{},readonly=on", img.display());

    let mut vm = boot_testguest(
        1,
        "256M",
        "tern.test=disk tern.disk_mib=8 tern.qd=32 tern.passes=1",
        None,
        &["--disk", &disk],
    );
    let info = vm.wait_event("disk", 0, Duration::from_secs(10));
    assert_eq!(
        info["read_only"], true,
        "the guest was not told the disk is read-only: {info}"
    );
    let w = vm.wait_event("disk_written", 0, DISK_IO);
    let blocks = u(&info, "blocks");
    assert_eq!(blocks, 2048, "{info}");
    // Every data write and the header write failed, and the guest said so.
    assert_eq!(u(&w, "errors"), blocks + 1, "{w}");
    let errors = vm.events("error");
    assert!(
        errors.iter().any(|e| e["kind"] == "disk" && e["message"] == "write of block 1 failed: status ioerr"),
        "{errors:?}"
    );
    vm.send("reboot");
    assert_eq!(
        vm.wait_exit(Duration::from_secs(20)).code(),
        Some(0),
        "{}",
        vm.stderr()
    );
    assert!(
        std::fs::read(&img).unwrap() == content,
        "the read-only image changed"
    );
}

// ---------------------------------------------------------------- test guest: net

const FRAME_BYTES: u64 = 1514;
const TEN_MIB: u64 = 10 << 20;

fn last_net_tick(vm: &TernVm) -> Option<Value> {
    vm.events("net_tick").last().cloned()
}

/// Waits until the guest has had `at_least` of its probes echoed back.
fn wait_returned(vm: &TernVm, at_least: u64, what: &str, timeout: Duration) {
    vm.wait_console(what, timeout, |lines| {
        parse_events(lines, "net_tick")
            .into_iter()
            .find(|t| u(t, "returned") >= at_least)
    });
}

/// Quiets the peer (its own frames end first, so the guest has them all when it stops), then
/// sends `stop`; returns the guest's `net_done` and the peer's report.
fn net_stop(vm: &mut TernVm, peer: Peer) -> (Value, PeerReport) {
    peer.quiet();
    std::thread::sleep(Duration::from_millis(100));
    vm.send("stop");
    let done = vm.wait_event("net_done", 0, Duration::from_secs(30));
    (done, peer.finish())
}

#[test]
fn test_guest_exchanges_10_mib_of_frames_with_a_peer_on_the_tap() {
    let _g = serial();
    let ns = NetNs::new("net");
    ns.tap("tap0");
    let peer = Peer::start(&ns, "tap0", 100);
    let cmdline =
        format!("tern.test=net tern.frames=2000 tern.frame_bytes={FRAME_BYTES} tern.tick_ms=250");
    let mut vm = boot_testguest_in(ns.name(), 1, "256M", &cmdline, None, &["--net", "tap=tap0"]);
    let info = vm.wait_event("net", 0, Duration::from_secs(10));
    assert_eq!(u(&info, "frame_bytes"), FRAME_BYTES, "{info}");

    // Until 10 MiB of probes went out and came back.
    let want = TEN_MIB.div_ceil(FRAME_BYTES);
    wait_returned(
        &vm,
        want,
        "10 MiB of frames echoed",
        Duration::from_secs(120),
    );
    let (done, report) = net_stop(&mut vm, peer);
    let sent = u(&done, "sent");
    eprintln!(
        "net_done: {done}\n{report:?}; missing {:?}",
        report.missing(sent)
    );

    assert!(sent * FRAME_BYTES >= TEN_MIB, "{done}");
    assert_eq!(
        u(&done, "lost"),
        0,
        "{done}\n{report:?}\ntern's stderr:\n{}",
        vm.stderr()
    );
    assert_eq!(u(&done, "returned"), sent, "{done}");
    for k in ["duplicates", "reordered", "foreign", "peer_gaps"] {
        assert_eq!(u(&done, k), 0, "{k}: {done}");
    }
    // The peer checked every probe: all intact, each once.
    assert_eq!(
        (
            report.probes,
            report.distinct,
            report.damaged,
            report.duplicates
        ),
        (sent, sent, 0, 0),
        "{report:?}"
    );
    assert_eq!((report.echoed, report.send_errors), (sent, 0), "{report:?}");
    // And the guest got every frame the peer sent on its own.
    assert!(report.own_sent > 0, "{report:?}");
    assert_eq!(u(&done, "from_peer"), report.own_sent, "{done} {report:?}");
    assert_eq!(
        report.guest_mac.map(|m| m
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")),
        info["mac"].as_str().map(String::from)
    );
}

// ---------------------------------------------------------------- live migration

/// Checks a completed migration's drain record: with a disk (`drained`) the
/// controller went through the per-round drain; with only a NIC it never did
/// (a NIC serves the guest until the pause).
fn check_drain(stats: &Value, drained: bool) {
    let drain = &stats["drain"];
    let mut brief = stats.clone();
    if let Some(o) = brief.as_object_mut() {
        o.remove("history");
    }
    eprintln!("migration stats (without history): {brief}");
    eprintln!(
        "migration: {} ms total, {} ms downtime, {} rounds; drain {drain}",
        stats["total_ms"], stats["downtime_ms"], stats["rounds"]
    );
    assert_eq!(stats["phase"], "completed", "{stats}");
    if !drained {
        assert_eq!(u(drain, "attempts"), 0, "{stats}");
        assert!(
            drain["windows_ms"].as_array().unwrap().is_empty(),
            "{stats}"
        );
    } else if stats["forced_expected_downtime_ms"].is_null() {
        // Not forced: the controller went through a quiesce first, and the
        // drain says so (attempts, each Busy answer counted as EBUSY).
        let attempts = u(drain, "attempts");
        assert!(
            attempts >= 1,
            "a migration with virtio devices switched over without a quiesce attempt: {drain}"
        );
        assert!(u(drain, "busy") <= attempts, "{drain}");
        assert!(
            !drain["windows_ms"].as_array().unwrap().is_empty(),
            "{stats}"
        );
        assert_eq!(drain["queue_depth_limit"], 1, "{stats}");
    }
}

#[test]
fn disk_writes_at_qd32_survive_a_live_migration() {
    disk_writes_survive_migrations("mig-disk", 1);
}

/// A destination is a source like any other: the guest moves on twice more,
/// each time from the tern that received it, its virtio-blk queue restored
/// and saved again with 32 writes in flight.
#[test]
fn disk_writes_survive_three_migrations_in_a_row() {
    disk_writes_survive_migrations("mig-disk3", 3);
}

/// Boots the test guest writing its disk at queue depth 32, migrates it
/// `hops` times (each destination the next source, all on one disk image),
/// then has the last one stop and read back every block.
fn disk_writes_survive_migrations(tag: &str, hops: usize) {
    let _g = serial();
    let dir = Scratch::new(tag);
    let img = dir.path("disk.img");
    sparse_image(&img, DISK_MIB + 4);
    let disk = img.display().to_string();
    let mut api = dir.path("api.0.sock");

    // Write passes until `stop`, 32 requests in flight.
    let mut src = boot_testguest(
        1,
        "256M",
        &format!("{WRITE_256} tern.passes=0"),
        Some(&api),
        &["--disk", &disk],
    );
    src.wait_event("disk_tick", 10, Duration::from_secs(30));
    for hop in 1..=hops {
        let uri = format!("unix:{}", dir.path(&format!("mig.{hop}.sock")).display());
        let next_api = dir.path(&format!("api.{hop}.sock"));
        let dst = start_destination(&uri, 1, "256M", Some(&next_api), &["--disk", &disk]);
        let stats = migrate_to_completion(&mut src, &api, &uri, &[]);
        eprintln!("migration {hop}: source stderr:\n{}", src.stderr());
        check_drain(&stats, true);
        let src_ticks = src.events("disk_tick");
        assert!(
            src_ticks.iter().all(|t| u(t, "errors") == 0),
            "write errors before migration {hop}"
        );
        let src_requests: u64 = src_ticks.iter().map(|t| u(t, "requests")).sum();

        // The writes go on on the destination.
        dst.wait_event("disk_tick", 10, Duration::from_secs(30));
        let dst_ticks = dst.events("disk_tick");
        let dst_requests: u64 = dst_ticks.iter().map(|t| u(t, "requests")).sum();
        assert!(
            dst_requests > 0,
            "no writes completed after migration {hop}"
        );
        let stall = dst_ticks
            .iter()
            .map(|t| u(t, "max_latency_us"))
            .max()
            .unwrap_or(0);
        eprintln!("migration {hop}: {src_requests} writes before, {dst_requests} so far after; slowest request {stall} us");
        src = dst;
        api = next_api;
    }
    let mut dst = src;

    // Stop (in-flight requests complete, flush, header, flush), then read
    // back every block against the acknowledged writes of this boot:
    // a lost write reads as stale, a torn one as torn.
    dst.send("stop");
    let written = dst.wait_console("disk_written stopped", DISK_IO, |lines| {
        parse_events(lines, "disk_written")
            .into_iter()
            .find(|w| w["stopped"] == true)
    });
    assert_eq!(u(&written, "errors"), 0, "{written}");
    dst.send("verify");
    let v = dst.wait_event("disk_verify", 0, DISK_IO);
    assert_eq!(v["source"], "memory", "{v}");
    assert_eq!(
        v["ok"], true,
        "acknowledged writes lost or damaged across the migration: {v}"
    );
    assert_eq!(u(&v, "bad"), 0, "{v}");
    assert_eq!(u(&v, "blocks"), DISK_BLOCKS, "{v}");
    assert!(dst.events("error").is_empty(), "{:?}", dst.events("error"));
    dst.send("reboot");
    assert_eq!(
        dst.wait_exit(Duration::from_secs(20)).code(),
        Some(0),
        "{}",
        dst.stderr()
    );
    drop(dst);

    // From the disk alone: the host's check and a rebooted guest's.
    let (header, bad) = check_image_from_host(&img);
    assert!(
        bad.is_empty(),
        "{} blocks damaged on the image, first {:?}",
        bad.len(),
        bad.first()
    );
    let v2 = verify_after_reboot(&img);
    assert_eq!(
        (v2["ok"].clone(), u(&v2, "bad")),
        (Value::Bool(true), 0),
        "{v2}"
    );
    assert_eq!(v2["run_id"], v["run_id"], "{v2}");
    assert_eq!(u(&v2, "generation"), u64::from(header.generation), "{v2}");
}

#[test]
fn network_traffic_continues_across_a_live_migration() {
    let _g = serial();
    let dir = Scratch::new("mig-net");
    let src_api = dir.path("src.sock");
    let uri = format!("unix:{}", dir.path("mig.sock").display());
    // A single-queue tap can be opened once: source and destination each get
    // one, bridged, with the peer on the bridge. The taps are isolated from
    // each other (they reach only the bridge itself): otherwise the guest's
    // broadcasts on the source's tap would queue up in the destination's tap
    // (open, not yet read) and reach the guest again after the switchover.
    let ns = NetNs::new("mig");
    // No multicast snooping: the bridge would join the all-snoopers group
    // and send the guest IGMP reports.
    ns.ip(&[
        "link",
        "add",
        "br0",
        "type",
        "bridge",
        "mcast_snooping",
        "0",
    ]);
    for tap in ["tap0", "tap1"] {
        ns.tap(tap);
        ns.ip(&["link", "set", tap, "master", "br0"]);
        ns.exec(&["bridge", "link", "set", "dev", tap, "isolated", "on"]);
    }
    ns.ip(&["link", "set", "br0", "up"]);
    let peer = Peer::start(&ns, "br0", 100);

    let cmdline = "tern.test=net tern.frames=1000 tern.frame_bytes=512 tern.tick_ms=250";
    let mut src = boot_testguest_in(
        ns.name(),
        1,
        "256M",
        cmdline,
        Some(&src_api),
        &["--net", "tap=tap0"],
    );
    wait_returned(
        &src,
        1000,
        "frames echoed before the migration",
        Duration::from_secs(30),
    );
    let mut dst = start_destination_in(ns.name(), &uri, 1, "256M", None, &["--net", "tap=tap1"]);
    let stats = migrate_to_completion(&mut src, &src_api, &uri, &[]);
    eprintln!("source stderr:\n{}", src.stderr());
    check_drain(&stats, false);
    let before = last_net_tick(&src).expect("net ticks on the source");

    // Frames continue on the destination: 2000 more probes come back.
    let target = u(&before, "returned") + 2000;
    wait_returned(
        &dst,
        target,
        "frames echoed after the migration",
        Duration::from_secs(60),
    );
    let (done, report) = net_stop(&mut dst, peer);
    let lost = u(&done, "lost");
    let ticks: Vec<(&str, Value)> = src
        .events("net_tick")
        .into_iter()
        .map(|t| ("source", t))
        .chain(
            dst.events("net_tick")
                .into_iter()
                .map(|t| ("destination", t)),
        )
        .collect();
    if let Some(i) = ticks.iter().position(|(_, t)| u(t, "foreign") > 0) {
        for (at, t) in &ticks[i.saturating_sub(2)..=i] {
            eprintln!("{at} tick: {t}");
        }
    }
    eprintln!(
        "net_done: {done}\n{report:?}; missing {:?}\nlost across the migration: {lost} of {} probes; peer frames missed: {}",
        report.missing(u(&done, "sent")),
        u(&done, "sent"),
        u(&done, "peer_gaps")
    );
    // Loss is counted, not forbidden; but nothing arrives twice, out of
    // order or damaged, and both ends agree on what went where.
    assert_eq!(lost, u(&done, "sent") - u(&done, "returned"), "{done}");
    assert!(u(&done, "returned") <= report.distinct, "{done} {report:?}");
    for k in ["duplicates", "reordered", "foreign"] {
        assert_eq!(u(&done, k), 0, "{k}: {done}");
    }
    assert_eq!((report.damaged, report.duplicates), (0, 0), "{report:?}");
    assert!(
        u(&done, "from_peer") + u(&done, "peer_gaps") <= report.own_sent,
        "{done} {report:?}"
    );
    assert!(dst.running(), "{}", dst.stderr());
    eprintln!("destination stderr:\n{}", dst.stderr());
}

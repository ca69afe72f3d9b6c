//! The net device driven through its transport and a real event loop: on a datagram socket
//! pair (frame boundaries like a tap) for most tests, and on a real tap in a network namespace
//! the test creates.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::sync::MutexGuard;

use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS};
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::quiesce::{Quiesce, QuiesceStatus};
use crate::state::Persist;
use crate::test_utils::*;
use crate::virtio::mmio::{MmioTransportArgs, MmioTransportState};
use crate::virtio::{MmioTransport, COMMON_FEATURES};
use crate::GuestMemoryMmap;

const FEATURES: u64 = COMMON_FEATURES | (1 << VIRTIO_NET_F_MAC) | (1 << VIRTIO_NET_F_STATUS);
const MAC: [u8; 6] = [0x02, 0x74, 0x65, 0x72, 0x6e, 0x01];

struct Dgram(UnixDatagram);

impl AsRawFd for Dgram {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl NetBackend for Dgram {
    fn recv_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.recv(buf)
    }
    fn send_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        self.0.send(frame)
    }
}

fn config() -> NetConfig {
    NetConfig {
        id: "net0".into(),
        tap: "unused".into(),
        mac: Some(MAC),
    }
}

const RX_BUF: u64 = 0x100_0000;
const TX_BUF: u64 = 0x200_0000;

struct Setup<B: NetBackend + 'static> {
    h: Harness<Net<B>>,
}

impl<B: NetBackend + 'static> Setup<B> {
    fn new(mem: &GuestMemoryMmap, rx: &GuestQueue, tx: &GuestQueue, net: Net<B>) -> Self {
        let t = MmioTransport::new(net, mem.clone()).unwrap();
        let h = Harness::new(t);
        bring_up(&mut h.t.lock().unwrap(), &[rx, tx], FEATURES);
        assert!(h.t.lock().unwrap().is_activated());
        Setup { h }
    }

    fn t(&self) -> MutexGuard<'_, MmioTransport<Net<B>>> {
        self.h.t.lock().unwrap()
    }

    fn kick(&self, queue: usize) {
        self.t().queue_evts()[queue].write(1).unwrap();
    }

    fn wait_used(&mut self, q: &mut GuestQueue) -> (u16, u32) {
        let mut got = None;
        self.h.run_until(|_| {
            got = got.or_else(|| q.next_used());
            got.is_some()
        });
        got.unwrap()
    }
}

fn pair_setup<'a>(
    mem: &'a GuestMemoryMmap,
) -> (GuestQueue<'a>, GuestQueue<'a>, UnixDatagram, Setup<Dgram>) {
    let (ours, theirs) = UnixDatagram::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let rx = GuestQueue::new(mem, 0x10000, 16);
    let tx = GuestQueue::new(mem, 0x20000, 16);
    let net = Net::with_backend(config(), Dgram(ours)).unwrap();
    let s = Setup::new(mem, &rx, &tx, net);
    (rx, tx, theirs, s)
}

/// A frame as the guest sends it: a header with junk flags, then `payload`.
fn guest_frame(mem: &GuestMemoryMmap, addr: u64, payload: &[u8]) -> u32 {
    let mut f = vec![0x5au8; VNET_HDR_LEN];
    f.extend_from_slice(payload);
    mem.write_slice(&f, GuestAddress(addr)).unwrap();
    f.len() as u32
}

fn host_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x33u8; VNET_HDR_LEN];
    f.extend_from_slice(payload);
    f
}

#[test]
fn tx_and_rx_with_clean_headers() {
    let mem = guest_memory();
    let (mut rx, mut tx, peer, mut s) = pair_setup(&mem);

    // TX: the header reaching the backend is clean.
    let len = guest_frame(&mem, TX_BUF, b"hello from the guest");
    tx.add(&[(TX_BUF, 8, false), (TX_BUF + 8, len - 8, false)]);
    s.kick(TX_QUEUE);
    assert_eq!(s.wait_used(&mut tx).1, 0);
    let mut buf = [0u8; 128];
    let n = peer.recv(&mut buf).unwrap();
    assert_eq!(&buf[..VNET_HDR_LEN], &[0; VNET_HDR_LEN]);
    assert_eq!(&buf[VNET_HDR_LEN..n], b"hello from the guest");

    // RX: the frame lands in guest memory (dirty), num_buffers 1, no flags.
    clear_dirty(&mem);
    rx.add(&[(RX_BUF, 2048, true)]);
    s.kick(RX_QUEUE);
    peer.send(&host_frame(b"hello from the host")).unwrap();
    let (_, len) = s.wait_used(&mut rx);
    assert_eq!(len as usize, VNET_HDR_LEN + 19);
    let mut got = vec![0u8; len as usize];
    mem.read_slice(&mut got, GuestAddress(RX_BUF)).unwrap();
    assert_eq!(&got[..10], &[0; 10]);
    assert_eq!(&got[10..12], &[1, 0]);
    assert_eq!(&got[VNET_HDR_LEN..], b"hello from the host");
    assert!(is_dirty(&mem, RX_BUF, 64), "net rx not in the dirty bitmap");

    // MAC and link status in config space.
    let mut cfg = [0u8; 8];
    crate::bus::BusDevice::read(&mut *s.t(), 0x100, &mut cfg);
    assert_eq!(&cfg[..6], &MAC);
    assert_eq!(cfg[6], 1);
}

#[test]
fn rx_waits_for_buffers_and_reads_one_frame_ahead() {
    let mem = guest_memory();
    let (mut rx, _tx, peer, mut s) = pair_setup(&mem);
    for i in 0..3u8 {
        peer.send(&host_frame(&[i; 100])).unwrap();
    }
    // No rx buffer: one frame is read and waits; the rest stay in the backend.
    s.h.run_until(|h| h.t.lock().unwrap().device().rx_pending > 0);
    s.h.poll();
    assert_eq!(s.t().try_quiesce(), QuiesceStatus::Busy { in_flight: 1 });
    s.t().resume_io();

    for i in 0..3u8 {
        rx.add(&[(RX_BUF + u64::from(i) * 0x1000, 2048, true)]);
        s.kick(RX_QUEUE);
        let (_, len) = s.wait_used(&mut rx);
        assert_eq!(len as usize, VNET_HDR_LEN + 100);
        let mut b = [0u8; 1];
        let at = RX_BUF + u64::from(i) * 0x1000 + VNET_HDR_LEN as u64;
        mem.read_slice(&mut b, GuestAddress(at)).unwrap();
        assert_eq!(b[0], i, "frames arrive in order");
    }
    assert_eq!(s.t().try_quiesce(), QuiesceStatus::Quiesced);
}

#[test]
fn quiesce_holds_tx_until_resume() {
    let mem = guest_memory();
    let (_rx, mut tx, peer, mut s) = pair_setup(&mem);
    peer.set_nonblocking(true).unwrap();
    assert_eq!(s.t().try_quiesce(), QuiesceStatus::Quiesced);
    let len = guest_frame(&mem, TX_BUF, b"queued while quiesced");
    tx.add(&[(TX_BUF, len, false)]);
    s.kick(TX_QUEUE);
    s.h.poll();
    assert!(tx.next_used().is_none());
    assert!(peer.recv(&mut [0u8; 64]).is_err());
    s.t().resume_io();
    assert_eq!(s.wait_used(&mut tx).1, 0);
    let mut buf = [0u8; 64];
    let n = peer.recv(&mut buf).unwrap();
    assert_eq!(&buf[VNET_HDR_LEN..n], b"queued while quiesced");
}

#[test]
fn malformed_chains_are_dropped_and_the_device_goes_on() {
    let mem = guest_memory();
    let (mut rx, mut tx, peer, mut s) = pair_setup(&mem);
    peer.set_nonblocking(true).unwrap();
    // TX: a device-writable buffer, a chain too short for a header, one outside memory.
    let len = guest_frame(&mem, TX_BUF, b"x");
    tx.add(&[(TX_BUF, len, true)]);
    tx.add(&[(TX_BUF, 4, false)]);
    tx.add(&[(1 << 40, 64, false)]);
    s.kick(TX_QUEUE);
    for _ in 0..3 {
        assert_eq!(s.wait_used(&mut tx).1, 0);
    }
    assert!(peer.recv(&mut [0u8; 64]).is_err(), "nothing was sent");

    // RX: a device-readable buffer and a buffer too small are used empty.
    rx.add(&[(RX_BUF, 2048, false)]);
    s.kick(RX_QUEUE);
    peer.send(&host_frame(&[7; 100])).unwrap();
    assert_eq!(s.wait_used(&mut rx).1, 0);
    // The frame waited for a usable buffer; one too small drops it.
    rx.add(&[(RX_BUF, 16, true)]);
    s.kick(RX_QUEUE);
    assert_eq!(s.wait_used(&mut rx).1, 0);
    assert_eq!(s.t().device().rx_pending, 0);
    // Still working.
    rx.add(&[(RX_BUF, 2048, true)]);
    s.kick(RX_QUEUE);
    peer.send(&host_frame(&[8; 10])).unwrap();
    assert_eq!(s.wait_used(&mut rx).1 as usize, VNET_HDR_LEN + 10);
}

#[test]
fn restore_delivers_the_pending_frame() {
    let mem = guest_memory();
    let (mut rx, _tx, peer, s) = pair_setup(&mem);
    peer.send(&host_frame(b"in flight at save time")).unwrap();
    let mut s = s;
    s.h.run_until(|h| h.t.lock().unwrap().device().rx_pending > 0);
    let state = s.t().save();
    assert!(!state.device.pending_rx_frame.is_empty());
    let json = serde_json::to_string(&state).unwrap();
    let state: MmioTransportState<NetState> = serde_json::from_str(&json).unwrap();
    drop(s);

    let (ours, _theirs) = UnixDatagram::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let args = MmioTransportArgs {
        mem: mem.clone(),
        device: NetArgs {
            config: config(),
            backend: Dgram(ours),
        },
    };
    let restored = MmioTransport::<Net<Dgram>>::restore(args, &state).unwrap();
    assert_eq!(restored.save(), state);
    let mut d = Harness::new(restored);
    rx.add(&[(RX_BUF, 2048, true)]);
    d.t.lock().unwrap().queue_evts()[RX_QUEUE].write(1).unwrap();
    d.run_until(|_| rx.next_used().is_some());
    let mut b = vec![0u8; 22];
    mem.read_slice(&mut b, GuestAddress(RX_BUF + VNET_HDR_LEN as u64))
        .unwrap();
    assert_eq!(&b, b"in flight at save time");

    // Untrusted states.
    let bad_frame = NetState {
        pending_rx_frame: vec![0; 3],
        ..state.device.clone()
    };
    let (ours, _t) = UnixDatagram::pair().unwrap();
    let args = NetArgs {
        config: config(),
        backend: Dgram(ours),
    };
    assert!(matches!(
        Net::restore(args, &bad_frame),
        Err(NetError::PendingFrame(3))
    ));
    let other_mac = NetState {
        mac: [2, 0, 0, 0, 0, 9],
        ..state.device.clone()
    };
    let (ours, _t) = UnixDatagram::pair().unwrap();
    let args = NetArgs {
        config: config(),
        backend: Dgram(ours),
    };
    assert!(matches!(
        Net::restore(args, &other_mac),
        Err(NetError::Mismatch(_))
    ));
}

#[test]
fn random_macs_are_local_unicast() {
    let mac = random_mac().unwrap();
    assert_eq!(mac[0] & 0x03, 0x02);
    assert!(matches!(Tap::open(""), Err(NetError::TapName(_))));
    assert!(matches!(
        Tap::open("a-name-far-too-long"),
        Err(NetError::TapName(_))
    ));
}

/// A network namespace for one test, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(name: &str) -> Self {
        let _ = Command::new("ip").args(["netns", "del", name]).status();
        ip(&["netns", "add", name]);
        Netns(name.to_string())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn arp_request(sender_ip: [u8; 4], target_ip: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&[0x08, 0x06]);
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&sender_ip);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target_ip);
    f
}

/// A real tap moved into a namespace this test owns: the guest's ARP request reaches the
/// namespace's kernel and its reply comes back into an rx buffer.
#[test]
fn real_tap_in_a_namespace_answers_arp() {
    let ns = Netns::new(&format!("tern-net-{}", std::process::id()));
    let name = format!("terntap{}", std::process::id() % 100_000);
    let net = Net::new(NetConfig {
        id: "net0".into(),
        tap: name.clone(),
        mac: Some(MAC),
    })
    .unwrap();
    assert_eq!(net.backend().name(), name);
    ip(&["link", "set", &name, "netns", &ns.0]);
    ip(&["-n", &ns.0, "addr", "add", "192.168.251.1/24", "dev", &name]);
    ip(&["-n", &ns.0, "link", "set", &name, "up"]);

    let mem = guest_memory();
    let mut rx = GuestQueue::new(&mem, 0x10000, 16);
    let mut tx = GuestQueue::new(&mem, 0x20000, 16);
    let mut s = Setup::new(&mem, &rx, &tx, net);
    let mut bufs = std::collections::HashMap::new();
    for i in 0..8 {
        let addr = RX_BUF + i * 0x1000;
        bufs.insert(rx.add(&[(addr, 2048, true)]), addr);
    }
    s.kick(RX_QUEUE);

    let len = guest_frame(
        &mem,
        TX_BUF,
        &arp_request([192, 168, 251, 2], [192, 168, 251, 1]),
    );
    tx.add(&[(TX_BUF, len, false)]);
    s.kick(TX_QUEUE);
    s.wait_used(&mut tx);

    // The namespace may also send its own chatter (IPv6 solicitations); find the ARP reply.
    let mut reply = None;
    s.h.run_until(|_| {
        while let Some((head, len)) = rx.next_used() {
            let mut f = vec![0u8; len as usize];
            let addr = bufs.remove(&head).unwrap();
            mem.read_slice(&mut f, GuestAddress(addr)).unwrap();
            let eth = &f[VNET_HDR_LEN..];
            if eth.len() >= 42 && eth[12..14] == [0x08, 0x06] && eth[20..22] == [0, 2] {
                reply = Some(eth.to_vec());
            }
            bufs.insert(rx.add(&[(addr, 2048, true)]), addr);
        }
        reply.is_some()
    });
    let reply = reply.unwrap();
    assert_eq!(&reply[0..6], &MAC, "addressed to the guest");
    assert_eq!(
        &reply[28..32],
        &[192, 168, 251, 1],
        "from the namespace's address"
    );
    assert_eq!(&reply[32..38], &MAC);
}

#[test]
fn announce_sends_a_rarp_from_the_guest_mac_with_a_clean_header() {
    let mem = guest_memory();
    let (_rx, _tx, peer, s) = pair_setup(&mem);
    let mac = s.t().device().mac();
    s.t().device_mut().announce().unwrap();
    let mut buf = [0u8; 128];
    let n = peer.recv(&mut buf).unwrap();
    assert_eq!(n, VNET_HDR_LEN + 60);
    assert_eq!(&buf[..VNET_HDR_LEN], &[0; VNET_HDR_LEN]);
    assert_eq!(
        &buf[VNET_HDR_LEN..n],
        &crate::virtio::net::rarp_announcement(mac)
    );
}

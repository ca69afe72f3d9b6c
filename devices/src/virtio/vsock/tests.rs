//! The vsock device driven as a guest driver would (virtio-queue mock rings, real event loop)
//! against host programs on Unix sockets.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use super::packet::*;
use super::*;
use crate::quiesce::{Quiesce, QuiesceStatus};
use crate::state::Persist;
use crate::test_utils::*;
use crate::virtio::mmio::{MmioTransportArgs, MmioTransportState};
use crate::virtio::{MmioTransport, COMMON_FEATURES};
use crate::GuestMemoryMmap;

const GUEST_CID: u64 = 3;
const GUEST_BUF: u32 = 256 * 1024;
const RX_BUF_LEN: u32 = 4096 + HDR_LEN as u32;
const TX_BUF_LEN: u64 = 0x2000;

/// A fresh socket path in a directory removed when the returned guard drops.
fn uds_path() -> (TempDir, PathBuf) {
    let dir = TempDir::new();
    let path = dir.path.join("vsock");
    (dir, path)
}

fn pattern_a(i: usize) -> u8 {
    (i % 251) as u8
}

fn pattern_b(i: usize) -> u8 {
    (i * 7 % 253) as u8
}

/// The guest's side of one connection.
#[derive(Default)]
struct GuestConn {
    port: u32,
    host_port: u32,
    dev_buf_alloc: u32,
    dev_fwd_cnt: u32,
    tx_cnt: u32,
    fwd_cnt: u32,
    fwd_cnt_sent: u32,
}

impl GuestConn {
    fn credit(&self) -> u32 {
        self.dev_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.dev_fwd_cnt))
    }

    fn update(&mut self, h: &Header) {
        self.dev_buf_alloc = h.buf_alloc;
        self.dev_fwd_cnt = h.fwd_cnt;
    }

    fn header(&self, op: u16, len: u32) -> Header {
        Header {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port: self.port,
            dst_port: self.host_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: GUEST_BUF,
            fwd_cnt: self.fwd_cnt,
        }
    }
}

/// A guest driver: three queues and buffers in guest memory.
struct Guest<'a> {
    mem: &'a GuestMemoryMmap,
    rx: GuestQueue<'a>,
    tx: GuestQueue<'a>,
    ev: GuestQueue<'a>,
    h: Harness<Vsock>,
    rx_bufs: HashMap<u16, u64>,
    rx_free: Vec<u64>,
    tx_bufs: HashMap<u16, u64>,
    tx_free: Vec<u64>,
    events: Vec<u32>,
    /// Rx buffers the device gave back empty.
    empty_rx: usize,
}

impl<'a> Guest<'a> {
    fn new(mem: &'a GuestMemoryMmap, vsock: Vsock) -> Self {
        let rx = GuestQueue::new(mem, 0x10000, 256);
        let tx = GuestQueue::new(mem, 0x20000, 256);
        let mut ev = GuestQueue::new(mem, 0x30000, 16);
        let t = MmioTransport::new(vsock, mem.clone()).unwrap();
        let h = Harness::new(t);
        bring_up(&mut h.t.lock().unwrap(), &[&rx, &tx, &ev], COMMON_FEATURES);
        assert!(h.t.lock().unwrap().is_activated());
        ev.add(&[(0x80_0000, 4, true)]);
        Guest {
            mem,
            rx,
            tx,
            ev,
            h,
            rx_bufs: HashMap::new(),
            rx_free: (0..128).map(|i| 0x100_0000 + i * 0x2000).collect(),
            tx_bufs: HashMap::new(),
            tx_free: (0..128).map(|i| 0x400_0000 + i * TX_BUF_LEN).collect(),
            events: Vec::new(),
            empty_rx: 0,
        }
    }

    fn kick(&self, queue: usize) {
        self.h.t.lock().unwrap().queue_evts()[queue]
            .write(1)
            .unwrap();
    }

    /// Keeps every free rx buffer posted.
    fn post_rx(&mut self) {
        let mut added = false;
        while let Some(addr) = self.rx_free.pop() {
            let head = self.rx.add(&[(addr, RX_BUF_LEN, true)]);
            self.rx_bufs.insert(head, addr);
            added = true;
        }
        if added {
            self.kick(RX_QUEUE);
        }
    }

    /// Queues a packet (header and payload in separate descriptors); false if out of buffers.
    fn send(&mut self, h: Header, payload: &[u8]) -> bool {
        let Some(addr) = self.tx_free.pop() else {
            return false;
        };
        self.mem
            .write_slice(&h.encode(), GuestAddress(addr))
            .unwrap();
        let mut bufs = vec![(addr, HDR_LEN as u32, false)];
        if !payload.is_empty() {
            let at = addr + HDR_LEN as u64;
            self.mem.write_slice(payload, GuestAddress(at)).unwrap();
            bufs.push((at, payload.len() as u32, false));
        }
        let head = self.tx.add(&bufs);
        self.tx_bufs.insert(head, addr);
        true
    }

    fn flush_tx(&mut self) {
        self.kick(TX_QUEUE);
    }

    /// Returns finished tx buffers and collects received packets.
    fn poll(&mut self, wait_ms: i32) -> Vec<(Header, Vec<u8>)> {
        self.h.em.run_with_timeout(wait_ms).unwrap();
        while let Some((head, _)) = self.tx.next_used() {
            self.tx_free.push(self.tx_bufs.remove(&head).unwrap());
        }
        while let Some((_, len)) = self.ev.next_used() {
            assert_eq!(len, 4);
            self.events
                .push(self.mem.read_obj(GuestAddress(0x80_0000)).unwrap());
        }
        let mut got = Vec::new();
        while let Some((head, len)) = self.rx.next_used() {
            let addr = self.rx_bufs.remove(&head).unwrap();
            self.rx_free.push(addr);
            if len == 0 {
                self.empty_rx += 1;
                continue;
            }
            assert!(len as usize >= HDR_LEN, "rx packet of {len} bytes");
            let mut raw = [0u8; HDR_LEN];
            self.mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
            let h = Header::decode(&raw);
            assert_eq!(h.len as usize, len as usize - HDR_LEN);
            assert_eq!((h.src_cid, h.dst_cid), (HOST_CID, GUEST_CID));
            let mut payload = vec![0u8; h.len as usize];
            let at = GuestAddress(addr + HDR_LEN as u64);
            self.mem.read_slice(&mut payload, at).unwrap();
            got.push((h, payload));
        }
        self.post_rx();
        got
    }

    /// Polls until a packet with `op` arrives; returns it (others are dropped).
    fn wait_for(&mut self, op: u16) -> (Header, Vec<u8>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for (h, p) in self.poll(50) {
                if h.op == op {
                    return (h, p);
                }
            }
            assert!(Instant::now() < deadline, "no packet with op {op}");
        }
    }
}

fn vsock(path: &std::path::Path) -> Vsock {
    Vsock::new(VsockConfig {
        cid: GUEST_CID,
        uds_path: path.to_path_buf(),
    })
    .unwrap()
}

/// The guest connects to a host program listening on `PATH_5000`; 10 MiB go each way at once,
/// every byte checked on both sides.
#[test]
fn ten_mib_both_ways_with_credit() {
    const TOTAL: usize = 10 << 20;
    let (_dir, path) = uds_path();
    let listener = UnixListener::bind(format!("{}_5000", path.display())).unwrap();
    let host = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut writer = stream.try_clone().unwrap();
        let w = thread::spawn(move || {
            let data: Vec<u8> = (0..TOTAL).map(pattern_b).collect();
            writer.write_all(&data).unwrap();
        });
        let mut got = vec![0u8; TOTAL];
        stream.read_exact(&mut got).unwrap();
        let bad = got.iter().enumerate().position(|(i, &b)| b != pattern_a(i));
        w.join().unwrap();
        // After the guest's shutdown the device closes the socket.
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).unwrap();
        (bad, rest.len())
    });

    let mem = guest_memory();
    let mut g = Guest::new(&mem, vsock(&path));
    g.post_rx();
    let mut c = GuestConn {
        port: 1234,
        host_port: 5000,
        ..Default::default()
    };
    assert!(g.send(c.header(OP_REQUEST, 0), &[]));
    g.flush_tx();
    let (h, _) = g.wait_for(OP_RESPONSE);
    c.update(&h);
    assert_eq!(h.buf_alloc, CONN_BUF_ALLOC);

    let (mut sent, mut received) = (0usize, 0usize);
    let deadline = Instant::now() + Duration::from_secs(120);
    while sent < TOTAL || received < TOTAL {
        assert!(
            Instant::now() < deadline,
            "stalled: sent {sent} received {received}"
        );
        let mut queued = false;
        while sent < TOTAL && c.credit() > 0 {
            let n = (TOTAL - sent).min(4096).min(c.credit() as usize);
            let chunk: Vec<u8> = (sent..sent + n).map(pattern_a).collect();
            if !g.send(c.header(OP_RW, n as u32), &chunk) {
                break;
            }
            sent += n;
            c.tx_cnt = c.tx_cnt.wrapping_add(n as u32);
            queued = true;
        }
        for (h, payload) in g.poll(if queued { 0 } else { 20 }) {
            c.update(&h);
            match h.op {
                OP_RW => {
                    for (i, &b) in payload.iter().enumerate() {
                        assert_eq!(b, pattern_b(received + i), "byte {}", received + i);
                    }
                    received += payload.len();
                    c.fwd_cnt = c.fwd_cnt.wrapping_add(payload.len() as u32);
                }
                OP_CREDIT_UPDATE => {}
                OP_CREDIT_REQUEST => c.fwd_cnt_sent = c.fwd_cnt.wrapping_sub(GUEST_BUF),
                op => panic!("unexpected op {op}"),
            }
        }
        // Tell the device about consumed data before it runs out of credit.
        if c.fwd_cnt.wrapping_sub(c.fwd_cnt_sent) >= GUEST_BUF / 4
            && g.send(c.header(OP_CREDIT_UPDATE, 0), &[])
        {
            c.fwd_cnt_sent = c.fwd_cnt;
            queued = true;
        }
        if queued {
            g.flush_tx();
        }
    }

    // Orderly close: the guest shuts down both ways, the device answers RST.
    let mut bye = c.header(OP_SHUTDOWN, 0);
    bye.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    assert!(g.send(bye, &[]));
    g.flush_tx();
    g.wait_for(OP_RST);
    let (bad, trailing) = host.join().unwrap();
    assert_eq!(bad, None, "host saw a wrong byte");
    assert_eq!(trailing, 0);
    assert_eq!(g.h.t.lock().unwrap().device().connections(), 0);
}

/// Host data beyond the guest's credit waits; the device asks for credit once and resumes when
/// the guest answers.
#[test]
fn host_data_waits_for_guest_credit() {
    const TOTAL: usize = GUEST_BUF as usize + 50_000;
    let (_dir, path) = uds_path();
    let listener = UnixListener::bind(format!("{}_5004", path.display())).unwrap();
    let host = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let data: Vec<u8> = (0..TOTAL).map(pattern_b).collect();
        s.write_all(&data).unwrap();
        s
    });
    let mem = guest_memory();
    let mut g = Guest::new(&mem, vsock(&path));
    g.post_rx();
    let mut c = GuestConn {
        port: 12,
        host_port: 5004,
        ..Default::default()
    };
    assert!(g.send(c.header(OP_REQUEST, 0), &[]));
    g.flush_tx();
    g.wait_for(OP_RESPONSE);
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut asked = false;
    while !asked {
        for (h, p) in g.poll(20) {
            match h.op {
                OP_RW => received.extend_from_slice(&p),
                OP_CREDIT_REQUEST => asked = true,
                _ => {}
            }
        }
        assert!(Instant::now() < deadline, "no credit request");
    }
    assert_eq!(
        received.len(),
        GUEST_BUF as usize,
        "exactly the credit was used"
    );
    c.fwd_cnt = received.len() as u32;
    assert!(g.send(c.header(OP_CREDIT_UPDATE, 0), &[]));
    g.flush_tx();
    while received.len() < TOTAL {
        for (h, p) in g.poll(20) {
            if h.op == OP_RW {
                received.extend_from_slice(&p);
            }
        }
        assert!(Instant::now() < deadline, "stalled at {}", received.len());
    }
    assert!(received.iter().enumerate().all(|(i, &b)| b == pattern_b(i)));
    drop(host.join().unwrap());
}

/// A host program connects to `PATH` with `CONNECT 6000`; the guest accepts.
#[test]
fn host_initiated_connection() {
    let (_dir, path) = uds_path();
    let mem = guest_memory();
    let mut g = Guest::new(&mem, vsock(&path));
    g.post_rx();
    let host_path = path.clone();
    let host = thread::spawn(move || {
        let mut s = UnixStream::connect(&host_path).unwrap();
        s.write_all(b"CONNECT 6000\n").unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        s.write_all(b"ping").unwrap();
        let mut pong = [0u8; 4];
        r.read_exact(&mut pong).unwrap();
        (line, pong)
    });
    let (req, _) = g.wait_for(OP_REQUEST);
    assert_eq!(req.dst_port, 6000);
    let mut c = GuestConn {
        port: 6000,
        host_port: req.src_port,
        ..Default::default()
    };
    c.update(&req);
    assert!(g.send(c.header(OP_RESPONSE, 0), &[]));
    g.flush_tx();
    let (h, data) = g.wait_for(OP_RW);
    assert_eq!(data, b"ping");
    c.update(&h);
    c.fwd_cnt = 4;
    assert!(g.send(c.header(OP_RW, 4), b"pong"));
    g.flush_tx();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !host.is_finished() {
        g.poll(20);
        assert!(Instant::now() < deadline);
    }
    let (line, pong) = host.join().unwrap();
    assert_eq!(line, format!("OK {}\n", req.src_port));
    assert_eq!(&pong, b"pong");
}

#[test]
fn bad_packets_get_rst_and_the_device_goes_on() {
    let (_dir, path) = uds_path();
    let mem = guest_memory();
    let mut g = Guest::new(&mem, vsock(&path));
    g.post_rx();
    let c = GuestConn {
        port: 7,
        host_port: 4242,
        ..Default::default()
    };
    // Nobody listens on PATH_4242.
    assert!(g.send(c.header(OP_REQUEST, 0), &[]));
    // Data for a connection that does not exist.
    assert!(g.send(c.header(OP_RW, 3), b"abc"));
    // Wrong source CID, wrong type.
    let mut h = c.header(OP_RW, 0);
    h.src_cid = 99;
    assert!(g.send(h, &[]));
    let mut h = c.header(OP_REQUEST, 0);
    h.type_ = 2;
    assert!(g.send(h, &[]));
    // A length beyond the buffers.
    assert!(g.send(c.header(OP_RW, 4000), b"short"));
    g.flush_tx();
    let mut rsts = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while rsts < 5 {
        rsts += g.poll(20).iter().filter(|(h, _)| h.op == OP_RST).count();
        assert!(Instant::now() < deadline, "only {rsts} RSTs");
    }
    // Chains that are not packets at all: used, nothing answered.
    let addr = g.tx_free.pop().unwrap();
    let head = g.tx.add(&[(addr, HDR_LEN as u32, true)]);
    g.tx_bufs.insert(head, addr);
    let head = g.tx.add(&[(addr, 10, false)]);
    g.tx_bufs.insert(head, addr);
    g.tx.add_raw(300, &[]); // a head beyond the queue
    g.flush_tx();
    for _ in 0..10 {
        assert!(g.poll(10).is_empty());
    }
    // Still working: a real connection succeeds.
    let _l = UnixListener::bind(format!("{}_4243", path.display())).unwrap();
    let c = GuestConn {
        port: 8,
        host_port: 4243,
        ..Default::default()
    };
    assert!(g.send(c.header(OP_REQUEST, 0), &[]));
    g.flush_tx();
    g.wait_for(OP_RESPONSE);
}

/// Rx buffers that cannot hold a packet are given back empty; the packet goes to the next
/// good buffer.
#[test]
fn unusable_rx_buffers_are_skipped() {
    let (_dir, path) = uds_path();
    let mem = guest_memory();
    let mut g = Guest::new(&mem, vsock(&path));
    for (len, writable) in [(HDR_LEN as u32, true), (RX_BUF_LEN, false), (10, true)] {
        let addr = g.rx_free.pop().unwrap();
        let head = g.rx.add(&[(addr, len, writable)]);
        g.rx_bufs.insert(head, addr);
    }
    let c = GuestConn {
        port: 13,
        host_port: 4244, // nobody listens: the answer is an RST
        ..Default::default()
    };
    assert!(g.send(c.header(OP_REQUEST, 0), &[]));
    g.flush_tx();
    // (Polling also posts good buffers, which the RST then goes to.)
    let deadline = Instant::now() + Duration::from_secs(30);
    let rst = loop {
        if let Some((h, _)) = g.poll(5).into_iter().find(|(h, _)| h.op == OP_RST) {
            break h;
        }
        assert!(Instant::now() < deadline, "no RST");
    };
    assert_eq!(g.empty_rx, 3);
    assert_eq!((rst.src_port, rst.dst_port), (4244, 13));
}

/// Guest data the host does not read piles up in the device: quiesce reports it until the host
/// drains it; tx is not taken while quiescing.
#[test]
fn quiesce_waits_for_the_host_to_take_guest_data() {
    let (_dir, path) = uds_path();
    let listener = UnixListener::bind(format!("{}_5001", path.display())).unwrap();
    let mem = guest_memory();
    let mut g = Guest::new(&mem, vsock(&path));
    g.post_rx();
    let mut c = GuestConn {
        port: 9,
        host_port: 5001,
        ..Default::default()
    };
    assert!(g.send(c.header(OP_REQUEST, 0), &[]));
    g.flush_tx();
    let (h, _) = g.wait_for(OP_RESPONSE);
    c.update(&h);
    let (mut host, _) = listener.accept().unwrap();

    // Fill the whole credit while the host reads nothing.
    let mut sent = 0usize;
    while c.credit() > 0 {
        let n = (c.credit() as usize).min(4096);
        let chunk: Vec<u8> = (sent..sent + n).map(pattern_a).collect();
        while !g.send(c.header(OP_RW, n as u32), &chunk) {
            g.flush_tx();
            g.poll(10);
        }
        sent += n;
        c.tx_cnt = c.tx_cnt.wrapping_add(n as u32);
    }
    g.flush_tx();
    while !g.tx_bufs.is_empty() {
        g.poll(10);
    }
    let status = g.h.t.lock().unwrap().try_quiesce();
    assert_eq!(status, QuiesceStatus::Busy { in_flight: 1 });

    // New guest packets wait while quiescing.
    assert!(g.send(c.header(OP_CREDIT_REQUEST, 0), &[]));
    g.flush_tx();
    g.poll(10);
    assert_eq!(g.tx_bufs.len(), 1);

    let mut got = vec![0u8; sent];
    let reader = thread::spawn(move || {
        host.read_exact(&mut got).unwrap();
        got
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !g.h.t.lock().unwrap().try_quiesce().is_quiesced() {
        g.poll(10);
        assert!(Instant::now() < deadline, "never quiesced");
    }
    let got = reader.join().unwrap();
    assert!(got.iter().enumerate().all(|(i, &b)| b == pattern_a(i)));

    g.h.t.lock().unwrap().resume_io();
    g.wait_for(OP_CREDIT_UPDATE);
    assert!(g.tx_bufs.is_empty());
}

/// Save with a live connection, restore elsewhere: the guest is told to reset its transport
/// and the connection; the device keeps working on the same queues.
#[test]
fn restore_resets_connections_and_keeps_working() {
    let (_dir, path) = uds_path();
    let _listener = UnixListener::bind(format!("{}_5002", path.display())).unwrap();
    let mem = guest_memory();
    let mut g = Guest::new(&mem, vsock(&path));
    g.post_rx();
    let c = GuestConn {
        port: 10,
        host_port: 5002,
        ..Default::default()
    };
    assert!(g.send(c.header(OP_REQUEST, 0), &[]));
    g.flush_tx();
    g.wait_for(OP_RESPONSE);
    let state = g.h.t.lock().unwrap().save();
    assert_eq!(state.device.connections.len(), 1);
    let json = serde_json::to_string(&state).unwrap();
    let state: MmioTransportState<VsockState> = serde_json::from_str(&json).unwrap();

    let (_dest_dir, dest_path) = uds_path();
    let args = MmioTransportArgs {
        mem: mem.clone(),
        device: VsockConfig {
            cid: GUEST_CID,
            uds_path: dest_path.clone(),
        },
    };
    let restored = MmioTransport::<Vsock>::restore(args, &state).unwrap();
    assert_eq!(restored.save(), state);
    g.h = Harness::new(restored);
    let (rst, _) = g.wait_for(OP_RST);
    assert_eq!((rst.src_port, rst.dst_port), (5002, 10));
    let deadline = Instant::now() + Duration::from_secs(30);
    while g.events.is_empty() {
        g.poll(10);
        assert!(Instant::now() < deadline);
    }
    assert_eq!(g.events, vec![EVENT_TRANSPORT_RESET]);
    assert_eq!(g.h.t.lock().unwrap().device().connections(), 0);

    let _l2 = UnixListener::bind(format!("{}_5003", dest_path.display())).unwrap();
    let c = GuestConn {
        port: 11,
        host_port: 5003,
        ..Default::default()
    };
    assert!(g.send(c.header(OP_REQUEST, 0), &[]));
    g.flush_tx();
    g.wait_for(OP_RESPONSE);

    // Untrusted states.
    let scratch = TempDir::new();
    let cfg = |cid| VsockConfig {
        cid,
        uds_path: scratch.path.join(format!("v{cid}")),
    };
    assert!(matches!(
        Vsock::restore(cfg(4), &state.device),
        Err(VsockError::CidMismatch { .. })
    ));
    let mut dup = state.device.clone();
    dup.connections.push(dup.connections[0].clone());
    assert!(matches!(
        Vsock::restore(cfg(GUEST_CID), &dup),
        Err(VsockError::Connections(_))
    ));
    assert!(matches!(
        Vsock::new(cfg(2)),
        Err(VsockError::ReservedCid(2))
    ));
}

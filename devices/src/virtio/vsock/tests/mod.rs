//! The vsock device driven as a guest driver would (virtio-queue mock rings, real event loop)
//! against host programs on Unix sockets.

mod driver;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::thread;
use std::time::{Duration, Instant};

use driver::*;

use super::packet::*;
use super::*;
use crate::quiesce::{Quiesce, QuiesceStatus};
use crate::state::Persist;
use crate::test_utils::*;
use crate::virtio::mmio::{MmioTransportArgs, MmioTransportState};
use crate::virtio::MmioTransport;

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

    // A second device cannot take a live path; a migration destination (local migration) can.
    let same = VsockConfig {
        cid: GUEST_CID,
        uds_path: path.clone(),
    };
    assert!(matches!(
        Vsock::new(same.clone()),
        Err(VsockError::Listen { .. })
    ));
    let dest_path = path.clone();
    let args = MmioTransportArgs {
        mem: mem.clone(),
        device: same,
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

//! The net workload (virtio-net) against a peer on the host: QEMU's
//! `-netdev socket,udp=` carries each frame as a UDP datagram, and a thread
//! here echoes the guest's probes and sends numbered frames of its own.

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_workloads::command::Command as GuestCommand;
use tern_workloads::event::Event;
use tern_workloads::netload::frame::{self, Kind, Payload, BROADCAST};

use crate::vm::{Options, Result, Vm, VmSpec};

const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
/// Frames per second the peer sends on its own.
const PEER_RATE: u64 = 100;

/// Echoes probes and sends its own frames until `stop`; returns how many
/// frames it echoed and sent.
fn peer(socket: UdpSocket, qemu: std::net::SocketAddr, stop: Arc<AtomicBool>) -> (u64, u64) {
    socket
        .set_read_timeout(Some(Duration::from_millis(1)))
        .expect("timeout");
    let (mut echoed, mut sent) = (0, 0);
    let start = Instant::now();
    let mut buf = [0u8; 2048];
    while !stop.load(Relaxed) {
        if let Ok(n) = socket.recv(&mut buf) {
            if matches!(frame::parse(&buf[..n]), Ok(p) if p.kind == Kind::Probe) {
                frame::echo(&mut buf[..n], PEER_MAC);
                if socket.send_to(&buf[..n], qemu).is_ok() {
                    echoed += 1;
                }
            }
        }
        while sent < start.elapsed().as_millis() as u64 * PEER_RATE / 1000 {
            let mut own = [0u8; 100];
            let n = frame::build(
                &mut own,
                100,
                BROADCAST,
                PEER_MAC,
                &Payload {
                    run_id: 42,
                    seq: sent,
                    kind: Kind::Peer,
                    sent_tsc: 0,
                },
            );
            let _ = socket.send_to(&own[..n], qemu);
            sent += 1;
        }
    }
    (echoed, sent)
}

pub fn net(o: &Options) -> Result<()> {
    let socket = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let peer_port = socket.local_addr().map_err(|e| e.to_string())?.port();
    let qemu_port = UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let extra: Vec<String> = [
        "-netdev",
        &format!("socket,id=n0,udp=127.0.0.1:{peer_port},localaddr=127.0.0.1:{qemu_port}"),
        "-device",
        "virtio-net-device,netdev=n0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let qemu_addr = format!("127.0.0.1:{qemu_port}").parse().expect("address");
    let peer_thread = {
        let stop = stop.clone();
        std::thread::spawn(move || peer(socket, qemu_addr, stop))
    };

    let append = o.append(&["tern.test=net", "tern.frames=2000", "tern.tick_ms=500"]);
    let mut vm = Vm::spawn(
        o,
        VmSpec {
            name: "guest",
            append,
            extra: &extra,
            incoming: None,
        },
    )?;
    vm.ready()?;
    let info = vm.next("net", |_, e| {
        if let Event::Net(n) = e {
            Some(*n)
        } else {
            None
        }
    })?;
    println!("{info:?}");
    for (_, e) in vm.events_for(Duration::from_secs(o.seconds))? {
        if let Event::NetTick(t) = e {
            println!(
                "  tick {}: sent {} returned {} outstanding {} reordered {} from peer {} rtt avg {:?} max {:?} us",
                t.seq, t.counts.sent, t.counts.returned, t.outstanding, t.counts.reordered, t.counts.from_peer, t.rtt_avg_us, t.rtt_max_us
            );
        }
    }
    vm.send(GuestCommand::Stop)?;
    let done = vm.next("net_done", |_, e| {
        if let Event::NetDone(d) = e {
            Some(*d)
        } else {
            None
        }
    })?;
    stop.store(true, Relaxed);
    let (echoed, peer_sent) = peer_thread.join().map_err(|_| "the peer thread panicked")?;
    println!("net_done: {done:?}; the peer echoed {echoed} and sent {peer_sent} of its own");
    let c = done.counts;
    if done.lost != 0
        || c.duplicates != 0
        || c.returned == 0
        || c.from_peer == 0
        || c.peer_gaps != 0
    {
        return Err(format!(
            "frames lost or mangled on a loopback link: {done:?}"
        ));
    }
    Ok(())
}

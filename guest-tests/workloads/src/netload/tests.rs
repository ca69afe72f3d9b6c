use std::collections::VecDeque;

use super::*;
use crate::event::Event;
use crate::testutil::TestPlatform;

/// A peer behind a wire: echoes probes after `delay` more have been sent
/// (so a few are always in flight), drops every `drop_every`-th, holds every
/// `hold_every`-th back until the next one has gone (reordering), and sends
/// one of its own frames per `peer_every` probes, skipping a number in five.
#[derive(Default)]
struct Reflector {
    wire: VecDeque<Vec<u8>>,
    back: VecDeque<Vec<u8>>,
    held: Option<Vec<u8>>,
    delay: usize,
    drop_every: u64,
    hold_every: u64,
    peer_every: u64,
    full: bool,
    probes: u64,
    dropped: u64,
    released_late: u64,
    peer_seq: u64,
    peer_gaps_made: u64,
}

impl Reflector {
    fn take_probe(&mut self, mut f: Vec<u8>) {
        self.probes += 1;
        if self.peer_every > 0 && self.probes % self.peer_every == 0 {
            let mut own = vec![0u8; 80];
            frame::build(
                &mut own,
                80,
                BROADCAST,
                [2, 0, 0, 0, 0, 0x99],
                &Payload {
                    run_id: 1,
                    seq: self.peer_seq,
                    kind: Kind::Peer,
                    sent_tsc: 0,
                },
            );
            self.back.push_back(own);
            let skip = self.peer_seq % 5 == 4;
            self.peer_seq += if skip { 2 } else { 1 };
            self.peer_gaps_made += u64::from(skip && self.peer_seq > 0);
        }
        if self.drop_every > 0 && self.probes % self.drop_every == 0 {
            self.dropped += 1;
            return;
        }
        frame::echo(&mut f, [2, 0, 0, 0, 0, 0x99]);
        if self.hold_every > 0 && self.probes % self.hold_every == 0 && self.held.is_none() {
            self.held = Some(f);
            return;
        }
        self.back.push_back(f);
        if let Some(late) = self.held.take() {
            self.back.push_back(late);
            self.released_late += 1;
        }
    }
}

impl FrameDevice for Reflector {
    fn mac(&self) -> [u8; 6] {
        [2, 0, 0, 0, 0, 0x10]
    }
    fn send(&mut self, frame: &[u8]) -> bool {
        if self.full {
            return false;
        }
        self.wire.push_back(frame.to_vec());
        while self.wire.len() > self.delay {
            let f = self.wire.pop_front().unwrap();
            self.take_probe(f);
        }
        true
    }
    fn recv(&mut self, buf: &mut [u8]) -> Option<usize> {
        let f = self.back.pop_front()?;
        buf[..f.len()].copy_from_slice(&f);
        Some(f.len())
    }
    fn flush(&mut self) {}
}

/// Runs the exchange for `ms` of (fake) time, then `stop`.
fn run(dev: Reflector, ms: u64) -> (NetRun<'static, TestPlatform, Reflector>, Vec<Event>) {
    // 10 µs per TSC read, 20 000 frames/s: one frame every few reads.
    let p: &'static TestPlatform = Box::leak(Box::new(TestPlatform::new(10_000)));
    let config =
        Config::parse("tern.test=net tern.frames=20000 tern.frame_bytes=100 tern.poll_ms=1")
            .unwrap();
    p.send_at(ms * 1_000_000, "stop");
    let mut net = NetRun::new(p, config, dev);
    net.exchange();
    let events = p.take_events();
    (net, events)
}

#[test]
fn a_clean_peer_returns_everything_but_what_is_in_flight() {
    let (net, events) = run(
        Reflector {
            delay: 3,
            ..Default::default()
        },
        20,
    );
    let c = net.counts();
    assert!(c.sent > 100, "{c:?}");
    assert_eq!(
        (c.returned, c.reordered, c.duplicates, c.foreign, c.tx_full),
        (c.sent - 3, 0, 0, 0, 0),
        "{c:?}"
    );
    let Some(Event::NetDone(done)) = events.iter().rev().find(|e| matches!(e, Event::NetDone(_)))
    else {
        panic!("{events:?}")
    };
    assert_eq!((done.lost, done.counts), (3, c));
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::NetTick(t) if t.rtt_max_us.is_some() && t.outstanding == 3)));
}

#[test]
fn loss_reordering_and_peer_frames_are_counted() {
    let dev = Reflector {
        delay: 2,
        drop_every: 10,
        hold_every: 4,
        peer_every: 7,
        ..Default::default()
    };
    let (net, _) = run(dev, 50);
    let (c, r) = (net.counts(), &net.dev);
    let in_flight = r.wire.len() as u64 + u64::from(r.held.is_some());
    assert_eq!(c.returned, c.sent - r.dropped - in_flight, "{c:?}");
    assert_eq!(c.reordered, r.released_late, "{c:?}");
    assert!(c.reordered > 10);
    assert_eq!(
        (c.from_peer, c.peer_gaps),
        (r.probes / 7, r.peer_gaps_made),
        "{c:?}"
    );
    assert_eq!(c.duplicates, 0);
}

#[test]
fn a_full_transmit_queue_is_counted_not_hidden() {
    let (net, _) = run(
        Reflector {
            full: true,
            ..Default::default()
        },
        5,
    );
    let c = net.counts();
    assert_eq!(c.sent, 0);
    assert!(c.tx_full > 0);
}

//! Source and destination sessions talking over a real socket pair: the full
//! two-phase end, and each way a migration is refused or fails.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::Duration;

use migration::protocol::frame::{FrameReader, FrameWriter};
use migration::protocol::messages::{
    encode_dest, encode_run_header, kind, page_crc, DestMessage, DeviceSummary, Hello, MemoryRange,
    MAX_RUN_PAGES, PAGE_SIZE,
};
use migration::receiver::{receive, DestinationHost, ReceiveError};
use migration::sender::{SendError, SourceSession};
use migration::transport::Stream;

const T: Duration = Duration::from_secs(5);

#[derive(Default)]
struct FakeGuest {
    /// Per region, its memory so far (grown as pages arrive).
    mem: std::collections::HashMap<u32, Vec<u8>>,
    refuse: Option<String>,
    restored: Option<Vec<u8>>,
    resumed: bool,
    fail_restore: bool,
}

impl FakeGuest {
    /// Region `region`'s memory, at least `len` bytes of it.
    fn region(&mut self, region: u32, len: usize) -> &mut Vec<u8> {
        let mem = self.mem.entry(region).or_default();
        if mem.len() < len {
            mem.resize(len, 0xcc); // not zero: a zero marker must really zero
        }
        mem
    }

    fn page(&self, region: u32, page: u64) -> &[u8] {
        let at = page as usize * PAGE_SIZE;
        &self.mem[&region][at..at + PAGE_SIZE]
    }
}

impl DestinationHost for FakeGuest {
    fn check(&mut self, hello: &Hello) -> Result<(), String> {
        match &self.refuse {
            Some(r) => Err(r.clone()),
            None if hello.vcpus != 2 => Err(format!("{} vCPUs, this VM has 2", hello.vcpus)),
            None => Ok(()),
        }
    }
    fn page_data(&mut self, region: u32, first_page: u64, count: u32) -> Result<&mut [u8], String> {
        let (from, to) = (
            first_page as usize * PAGE_SIZE,
            (first_page as usize + count as usize) * PAGE_SIZE,
        );
        let mem = self.region(region, to);
        Ok(&mut mem[from..to])
    }
    fn zero_pages(
        &mut self,
        region: u32,
        first_page: u64,
        count: u32,
        zero_map: &[u8],
    ) -> Result<(), String> {
        let end = (first_page as usize + count as usize) * PAGE_SIZE;
        let mem = self.region(region, end);
        for i in (0..count).filter(|i| zero_map[(i / 8) as usize] & (1 << (i % 8)) != 0) {
            let at = (first_page as usize + i as usize) * PAGE_SIZE;
            mem[at..at + PAGE_SIZE].fill(0);
        }
        Ok(())
    }
    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        if self.fail_restore {
            return Err("device state invalid".into());
        }
        self.restored = Some(state.to_vec());
        Ok(())
    }
    fn resume(&mut self) -> Result<(), String> {
        self.resumed = true;
        Ok(())
    }
}

fn hello(vcpus: u32) -> Hello {
    Hello {
        tern_version: "test".into(),
        page_size: 4096,
        memory: vec![MemoryRange {
            guest_addr: 0,
            size: 1 << 20,
        }],
        vcpus,
        devices: vec![DeviceSummary {
            kind: "serial".into(),
            id: "com1".into(),
            settings: vec![],
        }],
    }
}

fn destination(
    mut guest: FakeGuest,
    sock: UnixStream,
) -> thread::JoinHandle<(FakeGuest, Result<(), String>)> {
    thread::spawn(move || {
        let r = receive(&sock, &sock, &mut guest)
            .map(|_| ())
            .map_err(|e| e.to_string());
        (guest, r)
    })
}

fn session(sock: &UnixStream, h: &Hello) -> Result<SourceSession, SendError> {
    SourceSession::start(Stream::Unix(sock.try_clone().unwrap()), h, T)
}

/// Ends the round, sends `state`, completes and commits; returns the
/// destination's guest once it says it resumed.
fn finish(
    mut s: SourceSession,
    dst: thread::JoinHandle<(FakeGuest, Result<(), String>)>,
    state: &[u8],
) -> FakeGuest {
    s.end_round(1).unwrap();
    s.send_state(state).unwrap();
    s.complete(T).unwrap();
    s.commit(T).unwrap();
    let (g, r) = dst.join().unwrap();
    r.unwrap();
    g
}

#[test]
fn full_migration_moves_pages_and_state() {
    let (a, b) = UnixStream::pair().unwrap();
    let dst = destination(FakeGuest::default(), b);
    let mut s = session(&a, &hello(2)).unwrap();
    let mut pages = vec![0u8; 3 * PAGE_SIZE];
    pages[10] = 1;
    pages[2 * PAGE_SIZE + 5] = 7;
    let c = s.send_run(0, 4, &pages).unwrap();
    assert_eq!((c.data, c.zero), (2, 1));
    s.end_round(0).unwrap();
    // The destination has read the round: every byte before its end is in.
    s.await_round(0, T).unwrap();
    let g = finish(s, dst, b"vcpu+devices");
    assert!(g.resumed);
    assert_eq!(g.restored.as_deref(), Some(&b"vcpu+devices"[..]));
    assert_eq!(g.page(0, 4)[10], 1);
    assert!(g.page(0, 5).iter().all(|&b| b == 0));
    assert_eq!(g.page(0, 6)[5], 7);
}

#[test]
fn a_run_of_no_pages_or_too_many_is_refused_before_anything_is_sent() {
    let (a, b) = UnixStream::pair().unwrap();
    let dst = destination(FakeGuest::default(), b);
    let mut s = session(&a, &hello(2)).unwrap();
    for count in [0, MAX_RUN_PAGES + 1] {
        let e = s.begin_run(0, 0, count).unwrap_err();
        assert!(e.to_string().contains("pages"), "{e}");
    }
    // Nothing reached the stream: the session goes on.
    assert_eq!(s.send_run(0, 2, &[3; PAGE_SIZE]).unwrap().data, 1);
    let g = finish(s, dst, b"state");
    assert_eq!(g.page(0, 2)[4095], 3);
}

#[test]
fn pages_known_to_be_zero_go_as_markers_whatever_their_bytes() {
    let (a, b) = UnixStream::pair().unwrap();
    let dst = destination(FakeGuest::default(), b);
    let mut s = session(&a, &hello(2)).unwrap();
    // Page 1's bytes are garbage (never read: the caller knows it is zero).
    let mut pages = vec![0u8; 3 * PAGE_SIZE];
    pages[5] = 1;
    pages[PAGE_SIZE..2 * PAGE_SIZE].fill(0xee);
    pages[2 * PAGE_SIZE] = 2;
    let c = s.send_run_skipping(0, 8, &pages, &[0b010]).unwrap();
    assert_eq!((c.data, c.zero), (2, 1));
    let g = finish(s, dst, b"state");
    assert_eq!(g.page(0, 8)[5], 1);
    assert!(g.page(0, 9).iter().all(|&b| b == 0));
    assert_eq!(g.page(0, 10)[0], 2);
}

#[test]
fn configuration_mismatch_is_refused_with_the_reason() {
    let (a, b) = UnixStream::pair().unwrap();
    let dst = destination(FakeGuest::default(), b);
    let e = session(&a, &hello(4)).err().unwrap();
    assert!(
        matches!(&e, SendError::Refused(r) if r.contains("4 vCPUs")),
        "{e}"
    );
    let (g, r) = dst.join().unwrap();
    assert!(!g.resumed);
    assert!(r.unwrap_err().contains("refused"));
}

#[test]
fn version_mismatch_is_refused() {
    let (a, b) = UnixStream::pair().unwrap();
    let dst = destination(FakeGuest::default(), b);
    let e = SourceSession::start_with_version(Stream::Unix(a), &hello(2), T, 99)
        .err()
        .unwrap();
    assert!(e.to_string().contains("version"), "{e}");
    let (g, r) = dst.join().unwrap();
    assert!(!g.resumed);
    assert!(r.unwrap_err().contains("speaks 2, the peer 99"));
}

#[test]
fn garbage_is_not_a_tern_stream() {
    let (a, b) = UnixStream::pair().unwrap();
    let dst = destination(FakeGuest::default(), b);
    let mut w = FrameWriter::new(&a);
    w.write_frame(kind::HELLO, &[b"GET / HTTP/1.1"]).unwrap();
    w.flush().unwrap();
    let (g, r) = dst.join().unwrap();
    assert!(!g.resumed);
    assert!(r.unwrap_err().contains("not a tern migration stream"));
}

#[test]
fn a_page_run_with_a_corrupt_control_part_fails_the_migration_at_once() {
    let (a, b) = UnixStream::pair().unwrap();
    let dst = destination(FakeGuest::default(), b);
    let _s = session(&a, &hello(2)).unwrap();
    // A run of one data page, a bit of its page checksum flipped on the way.
    let page = [0x5a; PAGE_SIZE];
    let mut payload = Vec::new();
    encode_run_header(0, 3, 1, &[0], &mut payload);
    payload.extend_from_slice(&page_crc(&page).to_le_bytes());
    let mut w = FrameWriter::new(Vec::new());
    w.write_frame(kind::PAGES, &[&payload]).unwrap();
    w.flush().unwrap();
    let mut bytes = w.get_mut().clone();
    let at = bytes.len() - 4 - 2; // inside the page checksum
    bytes[at] ^= 0x10;
    bytes.extend_from_slice(&page);
    (&a).write_all(&bytes).unwrap();
    let (g, r) = dst.join().unwrap();
    let err = r.unwrap_err();
    assert!(err.contains("checksum mismatch"), "{err}");
    assert!(!g.resumed && g.restored.is_none());
}

/// Sends one data page at `page` whose checksum is `said`'s but whose bytes
/// are `sent` (as when the guest writes a page between its checksum and its
/// send, or the stream damages it).
fn send_changed_page(s: &mut SourceSession, page: u64, said: &[u8], sent: &[u8]) {
    let mut run = s.begin_run(0, page, 1).unwrap();
    run.push_data(page_crc(said));
    s.send_run_with(run, |stream, prefix, _| {
        stream.write_all(prefix)?;
        stream.write_all(sent)
    })
    .unwrap();
}

#[test]
fn a_page_that_arrives_damaged_and_again_intact_is_taken() {
    let (a, b) = UnixStream::pair().unwrap();
    let dst = destination(FakeGuest::default(), b);
    let mut s = session(&a, &hello(2)).unwrap();
    let (old, new) = ([1u8; PAGE_SIZE], [2u8; PAGE_SIZE]);
    send_changed_page(&mut s, 5, &old, &new);
    send_changed_page(&mut s, 6, &old, &new);
    s.end_round(1).unwrap();
    // Dirtied by the write that damaged it: sent again in a later round.
    s.send_run(0, 5, &new).unwrap();
    // Or it became zero since.
    s.send_run(0, 6, &[0; PAGE_SIZE]).unwrap();
    let g = finish(s, dst, b"state");
    assert!(g.resumed);
    assert!(g.page(0, 5).iter().all(|&b| b == 2));
    assert!(g.page(0, 6).iter().all(|&b| b == 0));
}

#[test]
fn a_page_still_damaged_at_complete_fails_the_migration_before_restoring() {
    let (a, b) = UnixStream::pair().unwrap();
    let dst = destination(FakeGuest::default(), b);
    let mut s = session(&a, &hello(2)).unwrap();
    let (old, new) = ([1u8; PAGE_SIZE], [2u8; PAGE_SIZE]);
    s.send_run(0, 2, &old).unwrap();
    send_changed_page(&mut s, 9, &old, &new);
    send_changed_page(&mut s, 7, &old, &new);
    s.send_run(0, 9, &new).unwrap(); // page 9 mended, page 7 not
    s.end_round(1).unwrap();
    s.send_state(b"state").unwrap();
    let e = s.complete(T).unwrap_err();
    let (g, r) = dst.join().unwrap();
    assert!(!g.resumed && g.restored.is_none());
    let err = r.unwrap_err();
    assert!(
        err.contains("1 guest page(s) failed their checksum and were never sent again")
            && err.contains("page 7 of memory region 0"),
        "{err}"
    );
    assert!(
        matches!(&e, SendError::DestinationFailed(m) if m.contains("page 7 of memory region 0")),
        "{e}"
    );
}

#[test]
fn source_vanishing_before_commit_never_runs_the_guest() {
    let (a, b) = UnixStream::pair().unwrap();
    let dst = destination(FakeGuest::default(), b);
    let mut s = session(&a, &hello(2)).unwrap();
    s.send_run(0, 0, &[1u8; PAGE_SIZE]).unwrap();
    s.send_state(b"x").unwrap();
    s.complete(T).unwrap();
    drop(s);
    drop(a);
    let (g, r) = dst.join().unwrap();
    assert!(!g.resumed, "a destination must not run without Commit");
    assert!(r.unwrap_err().contains("closed"));
}

#[test]
fn a_destination_that_stops_reading_fails_the_session_after_the_write_timeout() {
    let (a, b) = UnixStream::pair().unwrap();
    // Answers the handshake, then reads nothing more (keeps the socket open).
    let dst = thread::spawn(move || {
        let mut r = FrameReader::new(&b, kind::from_source);
        assert_eq!(r.read_frame().unwrap().kind, kind::HELLO);
        let mut w = FrameWriter::new(&b);
        let (k, p) = encode_dest(&DestMessage::Accept {
            tern_version: "test".into(),
        });
        w.write_frame(k, &[&p]).unwrap();
        w.flush().unwrap();
        thread::sleep(Duration::from_secs(3));
        drop(b);
    });
    let stream = Stream::Unix(a.try_clone().unwrap());
    stream
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut s = SourceSession::start(stream, &hello(2), T).unwrap();
    let pages = vec![7u8; MAX_RUN_PAGES as usize * PAGE_SIZE];
    let started = std::time::Instant::now();
    let e = loop {
        if let Err(e) = s.send_run(0, 0, &pages) {
            break e;
        }
        assert!(started.elapsed() < T, "the writes never stalled");
    };
    assert!(
        matches!(e, SendError::Stalled(t) if t == Duration::from_millis(200)),
        "{e}"
    );
    assert!(e.to_string().contains("stopped reading"), "{e}");
    // Nor does it acknowledge a round (the stalled write is tried again first).
    let e = s.await_round(0, Duration::from_millis(100)).unwrap_err();
    assert!(
        matches!(e, SendError::Timeout(..) | SendError::Stalled(..)),
        "{e}"
    );
    drop(s);
    dst.join().unwrap();
}

#[test]
fn abandon_discards() {
    let (a, b) = UnixStream::pair().unwrap();
    let dst = destination(FakeGuest::default(), b);
    let mut s = session(&a, &hello(2)).unwrap();
    s.abandon("cancelled by the user");
    let (g, r) = dst.join().unwrap();
    assert!(!g.resumed);
    assert!(r.unwrap_err().contains("cancelled by the user"));
}

#[test]
fn destination_failure_reaches_the_source() {
    let (a, b) = UnixStream::pair().unwrap();
    let guest = FakeGuest {
        fail_restore: true,
        ..Default::default()
    };
    let dst = destination(guest, b);
    let mut s = session(&a, &hello(2)).unwrap();
    s.send_state(b"x").unwrap();
    let e = s.complete(T).unwrap_err();
    assert!(
        matches!(&e, SendError::DestinationFailed(m) if m.contains("device state invalid")),
        "{e}"
    );
    let (g, _) = dst.join().unwrap();
    assert!(!g.resumed);
}

#[test]
fn out_of_order_messages_are_rejected() {
    let (a, b) = UnixStream::pair().unwrap();
    let dst = destination(FakeGuest::default(), b);
    let mut s = session(&a, &hello(2)).unwrap();
    // Commit before Complete.
    let e = s.commit(T).unwrap_err();
    assert!(
        matches!(e, SendError::DestinationFailed(ref m) if m.contains("unexpected Commit")),
        "{e}"
    );
    let (g, r) = dst.join().unwrap();
    assert!(!g.resumed);
    assert!(r.is_err());
    let _ = ReceiveError::Abandoned(String::new());
}

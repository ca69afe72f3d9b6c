//! Source and destination sessions talking over a real socket pair: the full
//! two-phase end, and each way a migration is refused or fails.

use std::os::unix::net::UnixStream;
use std::thread;
use std::time::Duration;

use migration::protocol::frame::FrameWriter;
use migration::protocol::messages::{kind, DeviceSummary, Hello, MemoryRange, PageRun, PAGE_SIZE};
use migration::receiver::{receive, DestinationHost, ReceiveError};
use migration::sender::{SendError, SourceSession};
use migration::transport::Stream;

const T: Duration = Duration::from_secs(5);

#[derive(Default)]
struct FakeGuest {
    pages: std::collections::HashMap<(u32, u64), Vec<u8>>,
    refuse: Option<String>,
    restored: Option<Vec<u8>>,
    resumed: bool,
    fail_restore: bool,
}

impl DestinationHost for FakeGuest {
    fn check(&mut self, hello: &Hello) -> Result<(), String> {
        match &self.refuse {
            Some(r) => Err(r.clone()),
            None if hello.vcpus != 2 => Err(format!("{} vCPUs, this VM has 2", hello.vcpus)),
            None => Ok(()),
        }
    }
    fn write_pages(&mut self, run: &PageRun<'_>) -> Result<(), String> {
        let mut data = run.data.chunks_exact(PAGE_SIZE);
        for i in 0..run.count {
            let page = if run.is_zero(i) {
                vec![0; PAGE_SIZE]
            } else {
                data.next().unwrap().to_vec()
            };
            self.pages
                .insert((run.region, run.first_page + u64::from(i)), page);
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
    s.end_round(1).unwrap();
    s.send_state(b"vcpu+devices").unwrap();
    s.complete(T).unwrap();
    s.commit(T).unwrap();
    let (g, r) = dst.join().unwrap();
    r.unwrap();
    assert!(g.resumed);
    assert_eq!(g.restored.as_deref(), Some(&b"vcpu+devices"[..]));
    assert_eq!(g.pages[&(0, 4)][10], 1);
    assert!(g.pages[&(0, 5)].iter().all(|&b| b == 0));
    assert_eq!(g.pages[&(0, 6)][5], 7);
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
    s.end_round(1).unwrap();
    s.send_state(b"state").unwrap();
    s.complete(T).unwrap();
    s.commit(T).unwrap();
    let (g, r) = dst.join().unwrap();
    r.unwrap();
    assert_eq!(g.pages[&(0, 8)][5], 1);
    assert!(g.pages[&(0, 9)].iter().all(|&b| b == 0));
    assert_eq!(g.pages[&(0, 10)][0], 2);
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
    assert!(r.unwrap_err().contains("speaks 1, the peer 99"));
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

//! Structure-aware receiver fuzzing: the input describes a session (handshake
//! variant, page runs and round ends, guest state, how it ends) that is built
//! as a *valid* stream with tern's own encoders, then a few edits are applied
//! to its frames (byte flips with or without a fixed-up checksum, changed
//! lengths and kinds, dropped, duplicated, swapped and inserted frames, flips
//! in a run's page data, a cut). A run may be sent with a page changed after
//! its checksum and then again intact, as a running guest makes a source do.
//! Unedited valid sessions must resume; every stream must agree with the
//! model of PROTOCOL.md (`tern_fuzz::check_receive`).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use migration::protocol::messages::{kind, PROTOCOL_VERSION};
use tern_fuzz::{
    abandon_payload, check_receive, guest_state_blob, hello, hello_payload, peak_heap,
    receive_heap_bound, round_end_payload, CountingAlloc, RawFrame, REGIONS, VCPUS,
};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

#[derive(Arbitrary, Debug)]
enum HelloSpec {
    Valid,
    Version(u32),
    PageSize(u32),
    Vcpus(u32),
    MemorySize(u8, u64),
    DropDevice(u8),
    Setting(u8, String),
    TernVersion(String),
}

#[derive(Arbitrary, Debug)]
struct RunSpec {
    region: u8,
    first_page: u16,
    count: u8,
    zeros: u64,
    fill: u8,
    /// Sent first with this data byte changed after its checksum (the page
    /// arrives damaged), then again intact.
    changed: Option<u16>,
    round_end: Option<u32>,
}

#[derive(Arbitrary, Debug)]
struct StateSpec {
    vcpu_delta: u8,
    msrs: Vec<(u32, u64)>,
    xsave_words: u8,
    fifo: Vec<u8>,
    virtio: bool,
    saved_at: u64,
}

#[derive(Arbitrary, Debug)]
enum EndSpec {
    Full,
    NoCommit,
    NoComplete,
    NoState,
    AbandonBeforeState(String),
    AbandonAtEnd(String),
    StateTwice,
    TrailingAfterCommit(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Edit {
    /// XOR a byte of frame `frame` (header and payload counted together).
    Xor {
        frame: u8,
        pos: u16,
        val: u8,
        fix_crc: bool,
    },
    /// Overwrite 4 bytes with a little-endian u32.
    SetU32 {
        frame: u8,
        pos: u16,
        val: u32,
        fix_crc: bool,
    },
    /// Change the payload length (truncate or extend with a byte), fixing the header.
    Resize {
        frame: u8,
        len: u16,
        byte: u8,
        fix_len: bool,
    },
    Kind {
        frame: u8,
        kind: u16,
    },
    Drop {
        frame: u8,
    },
    Dup {
        frame: u8,
    },
    Swap {
        a: u8,
        b: u8,
    },
    Insert {
        frame: u8,
        kind: u8,
        payload: Vec<u8>,
    },
    /// XOR a byte of the page data after frame `frame`, if it has any.
    XorData {
        frame: u8,
        pos: u32,
        val: u8,
    },
    Cut {
        at: u32,
    },
}

#[derive(Arbitrary, Debug)]
struct SessionSpec {
    hello: HelloSpec,
    runs: Vec<RunSpec>,
    state: StateSpec,
    end: EndSpec,
    edits: Vec<Edit>,
}

fn build(spec: &SessionSpec) -> (Vec<u8>, bool) {
    let mut valid = true;
    let mut h = hello();
    let mut version = PROTOCOL_VERSION;
    match &spec.hello {
        HelloSpec::Valid => {}
        HelloSpec::Version(v) => version = *v,
        HelloSpec::PageSize(p) => h.page_size = *p,
        HelloSpec::Vcpus(v) => h.vcpus = *v,
        HelloSpec::MemorySize(i, s) => {
            let n = h.memory.len();
            h.memory[*i as usize % n].size = *s;
        }
        HelloSpec::DropDevice(i) => {
            let n = h.devices.len();
            h.devices.remove(*i as usize % n);
        }
        HelloSpec::Setting(i, v) => {
            let n = h.devices.len();
            h.devices[*i as usize % n]
                .settings
                .push(("x".into(), v.clone()));
        }
        HelloSpec::TernVersion(v) => h.tern_version = v.clone(),
    }
    valid &= h == hello() || matches!(spec.hello, HelloSpec::TernVersion(_));
    valid &= version == PROTOCOL_VERSION;

    let mut frames = vec![RawFrame::new(kind::HELLO, hello_payload(&h, version))];
    for r in spec.runs.iter().take(24) {
        // Mostly inside the layout; sometimes one region past it or beyond its end.
        let region = r.region as usize % (REGIONS.len() + 1);
        let pages = REGIONS.get(region).map_or(8, |r| r.1);
        let count = (u64::from(r.count) % pages.min(256)) + 1;
        let first = u64::from(r.first_page) % (pages + 2);
        valid &= region < REGIONS.len() && first + count <= pages;
        let zero: Vec<bool> = (0..count).map(|i| r.zeros >> (i % 64) & 1 == 1).collect();
        let run = RawFrame::run(region as u32, first, &zero, r.fill);
        if let Some(at) = r.changed.filter(|_| !run.after.is_empty()) {
            let mut damaged = run.clone();
            let n = damaged.after.len();
            damaged.after[usize::from(at) % n] ^= 0x01;
            frames.push(damaged);
        }
        frames.push(run);
        if let Some(round) = r.round_end {
            frames.push(RawFrame::new(kind::ROUND_END, round_end_payload(round)));
        }
    }
    let s = &spec.state;
    let vcpus = match s.vcpu_delta {
        0..=250 => VCPUS as usize,
        d => (d - 250) as usize % 4,
    };
    valid &= vcpus == VCPUS as usize;
    let msrs: Vec<_> = s.msrs.iter().take(64).copied().collect();
    let fifo: Vec<u8> = s.fifo.iter().take(64).copied().collect();
    let state = guest_state_blob(
        vcpus,
        &msrs,
        usize::from(s.xsave_words),
        &fifo,
        s.virtio,
        s.saved_at,
    );
    let abandon = |r: &str| RawFrame::new(kind::ABANDON, abandon_payload(r));
    match &spec.end {
        EndSpec::AbandonBeforeState(r) => {
            frames.push(abandon(r));
            valid = false;
        }
        EndSpec::NoState => valid = false,
        _ => frames.push(RawFrame::new(kind::STATE, state.clone())),
    }
    match &spec.end {
        EndSpec::Full | EndSpec::TrailingAfterCommit(_) => {
            frames.push(RawFrame::new(kind::COMPLETE, vec![]));
            frames.push(RawFrame::new(kind::COMMIT, vec![]));
        }
        EndSpec::NoCommit => {
            frames.push(RawFrame::new(kind::COMPLETE, vec![]));
            valid = false;
        }
        EndSpec::NoComplete | EndSpec::AbandonBeforeState(_) => valid = false,
        EndSpec::NoState => {
            frames.push(RawFrame::new(kind::COMPLETE, vec![]));
            frames.push(RawFrame::new(kind::COMMIT, vec![]));
        }
        EndSpec::AbandonAtEnd(r) => {
            frames.push(RawFrame::new(kind::COMPLETE, vec![]));
            frames.push(abandon(r));
            valid = false;
        }
        EndSpec::StateTwice => {
            frames.push(RawFrame::new(kind::STATE, state));
            frames.push(RawFrame::new(kind::COMPLETE, vec![]));
            frames.push(RawFrame::new(kind::COMMIT, vec![]));
            valid = false;
        }
    }

    let edits = &spec.edits[..spec.edits.len().min(4)];
    for e in edits {
        if frames.is_empty() {
            break;
        }
        let n = frames.len();
        match e {
            Edit::Xor {
                frame,
                pos,
                val,
                fix_crc,
            } => patch(
                &mut frames[*frame as usize % n],
                *pos,
                &[*val],
                true,
                *fix_crc,
            ),
            Edit::SetU32 {
                frame,
                pos,
                val,
                fix_crc,
            } => patch(
                &mut frames[*frame as usize % n],
                *pos,
                &val.to_le_bytes(),
                false,
                *fix_crc,
            ),
            Edit::Resize {
                frame,
                len,
                byte,
                fix_len,
            } => {
                let f = &mut frames[*frame as usize % n];
                f.payload.resize(usize::from(*len), *byte);
                if *fix_len {
                    f.header[4..8].copy_from_slice(&(f.payload.len() as u32).to_le_bytes());
                }
            }
            Edit::Kind { frame, kind } => {
                frames[*frame as usize % n].header[0..2].copy_from_slice(&kind.to_le_bytes());
            }
            Edit::Drop { frame } => {
                frames.remove(*frame as usize % n);
            }
            Edit::Dup { frame } => {
                let f = frames[*frame as usize % n].clone();
                frames.insert(*frame as usize % n, f);
            }
            Edit::Swap { a, b } => frames.swap(*a as usize % n, *b as usize % n),
            Edit::Insert {
                frame,
                kind,
                payload,
            } => {
                frames.insert(
                    *frame as usize % (n + 1),
                    RawFrame::new(u16::from(*kind % 9), payload.clone()),
                );
            }
            Edit::XorData { frame, pos, val } => {
                let after = &mut frames[*frame as usize % n].after;
                if !after.is_empty() {
                    let at = *pos as usize % after.len();
                    after[at] ^= val;
                }
            }
            Edit::Cut { .. } => {}
        }
    }
    let mut out = Vec::new();
    for f in &frames {
        f.write(&mut out);
    }
    if let EndSpec::TrailingAfterCommit(t) = &spec.end {
        out.extend_from_slice(t);
    }
    for e in edits {
        if let Edit::Cut { at } = e {
            out.truncate(*at as usize % (out.len() + 1));
        }
    }
    (out, valid && edits.is_empty())
}

/// Writes `bytes` (or XORs them in) at `pos` of the frame's header+payload;
/// with `fix_crc` false the frame keeps the checksum it had before.
fn patch(f: &mut RawFrame, pos: u16, bytes: &[u8], xor: bool, fix_crc: bool) {
    if !fix_crc && f.crc.is_none() {
        f.crc = Some(f.right_crc());
    }
    let total = 8 + f.payload.len();
    let pos = usize::from(pos) % total;
    for (i, b) in bytes.iter().enumerate() {
        let p = pos + i;
        let slot = if p < 8 {
            &mut f.header[p]
        } else if p < total {
            &mut f.payload[p - 8]
        } else {
            break;
        };
        *slot = if xor { *slot ^ b } else { *b };
    }
    if fix_crc {
        f.crc = None;
    }
}

fuzz_target!(|spec: SessionSpec| {
    let (stream, valid) = build(&spec);
    let (result, peak) = peak_heap(|| check_receive(&stream));
    assert!(
        peak <= receive_heap_bound(stream.len()),
        "{peak} heap bytes for {} stream bytes",
        stream.len()
    );
    if valid {
        // A session built valid and left unedited must go through.
        if let Err(e) = result {
            panic!("a valid session failed: {e}");
        }
    }
});

//! Shared pieces of tern's migration fuzz targets:
//!
//! * [`MemHost`]: an in-memory `DestinationHost` with the same bounds and the
//!   same write logic as tern's real one (`vmm::migrate::destination`), over a
//!   fixed small memory layout, whose `restore` decodes the state blob with
//!   `vmm::migrate::guest_state::GuestState::decode`;
//! * [`reference`]: an independent model of `migration/PROTOCOL.md` that says,
//!   for any byte stream, whether it is a complete valid session and what the
//!   guest memory must then hold;
//! * [`check_receive`]: runs `migration::receiver::receive` on a stream and
//!   compares it with the model (never resumes unless the model says the
//!   session was complete and valid, and then with the same memory, counts
//!   and byte offset; the answers sent back decode and follow the protocol);
//! * [`CountingAlloc`]: a global allocator that records the peak of live heap
//!   bytes, so a target can assert memory stays bounded;
//! * builders for valid streams ([`valid_session`], [`RawFrame`]) for the
//!   seeds and the structure-aware target.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use migration::protocol::frame::{FrameReader, FrameWriter, MAX_PAYLOAD};
use migration::protocol::messages::{
    decode_dest, encode_abandon, encode_hello_with_version, encode_round_end, encode_run_header,
    kind, DestMessage, DeviceSummary, Hello, MemoryRange, PageRun, MAX_RUN_PAGES, PAGE_CRC,
    PAGE_SIZE, PROTOCOL_VERSION,
};
use migration::protocol::ProtocolError;
use migration::receiver::{receive, DestinationHost, ReceiveError, ReceiveReport};

// ---------------------------------------------------------------------------
// Allocation accounting
// ---------------------------------------------------------------------------

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting live bytes and their peak.
pub struct CountingAlloc;

// SAFETY: forwards every call unchanged to `System`; only counts sizes.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            note_alloc(l.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            note_alloc(l.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            LIVE.fetch_sub(l.size(), Ordering::Relaxed);
            note_alloc(new);
        }
        q
    }
}

fn note_alloc(n: usize) {
    let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

/// Runs `f` and returns its result and the most heap bytes that were live at
/// once during it, above what was live before.
pub fn peak_heap<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let r = f();
    (r, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

/// Heap a whole receive may use: one frame payload buffer (at most
/// `MAX_PAYLOAD`, allocated once the header's length passed its checks), the
/// saved state blob (at most `MAX_PAYLOAD`), the test host's guest memory and
/// the model's copy of it, and what postcard decodes (bounded by the input).
pub fn receive_heap_bound(input_len: usize) -> usize {
    2 * MAX_PAYLOAD as usize + 4 * guest_bytes() + 4 * input_len + (1 << 20)
}

// ---------------------------------------------------------------------------
// The destination's configuration
// ---------------------------------------------------------------------------

/// Memory regions (KVM slots) of the test machine: (guest address, pages).
pub const REGIONS: [(u64, u64); 2] = [(0, 32), (0x10_0000, 16)];
/// vCPUs of the test machine.
pub const VCPUS: u32 = 2;

fn guest_bytes() -> usize {
    REGIONS.iter().map(|r| r.1 as usize * PAGE_SIZE).sum()
}

/// The devices of the test machine, as its handshake describes them.
pub fn devices() -> Vec<DeviceSummary> {
    vec![
        DeviceSummary {
            kind: "serial".into(),
            id: "com1".into(),
            settings: vec![],
        },
        DeviceSummary {
            kind: "virtio-blk".into(),
            id: "blk0".into(),
            settings: vec![
                ("readonly".into(), "false".into()),
                ("capacity".into(), "2048".into()),
            ],
        },
    ]
}

/// The Hello a source with the same configuration sends.
pub fn hello() -> Hello {
    Hello {
        tern_version: "0.1.0".into(),
        page_size: PAGE_SIZE as u32,
        memory: REGIONS
            .iter()
            .map(|&(guest_addr, pages)| MemoryRange {
                guest_addr,
                size: pages * PAGE_SIZE as u64,
            })
            .collect(),
        vcpus: VCPUS,
        devices: devices(),
    }
}

/// Whether a handshake body matches this machine (what tern's `check` compares).
fn config_matches(h: &Hello) -> bool {
    let ours = hello();
    h.vcpus == ours.vcpus && h.memory == ours.memory && h.devices == ours.devices
}

// ---------------------------------------------------------------------------
// The in-memory destination
// ---------------------------------------------------------------------------

/// Where the host is in the session (the receiver must call it in order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostPhase {
    /// Nothing accepted yet.
    Fresh,
    /// Configuration accepted: memory may be written.
    Checked,
    /// State restored.
    Restored,
    /// Running.
    Resumed,
}

/// tern's destination, in memory.
pub struct MemHost {
    /// Guest memory per region, allocated on first write.
    pub mem: Vec<Vec<u8>>,
    /// Per region: pages that hold data from the stream (as tern keeps).
    written: Vec<Vec<u64>>,
    /// Progress.
    pub phase: HostPhase,
    /// How often each callback ran.
    pub calls: [u32; 4],
}

impl Default for MemHost {
    fn default() -> Self {
        MemHost {
            mem: REGIONS.iter().map(|_| Vec::new()).collect(),
            written: REGIONS
                .iter()
                .map(|r| vec![0u64; r.1.div_ceil(64) as usize])
                .collect(),
            phase: HostPhase::Fresh,
            calls: [0; 4],
        }
    }
}

impl MemHost {
    /// Region `r`'s memory as the guest would see it.
    pub fn region(&self, r: usize) -> Vec<u8> {
        let mut m = self.mem[r].clone();
        m.resize(REGIONS[r].1 as usize * PAGE_SIZE, 0);
        m
    }
}

/// Checks everything `decode_run` promises about a run.
pub fn assert_run_invariants(run: &PageRun<'_>) {
    assert!(
        run.count >= 1 && run.count <= MAX_RUN_PAGES,
        "run of {} pages",
        run.count
    );
    assert_eq!(
        run.zero_map.len(),
        run.count.div_ceil(8) as usize,
        "zero map length"
    );
    let zeros = (0..run.count).filter(|&i| run.is_zero(i)).count();
    assert_eq!(
        run.page_crcs.len(),
        (run.count as usize - zeros) * PAGE_CRC,
        "page checksums"
    );
    assert_eq!(run.data_pages() as usize, run.count as usize - zeros);
    for bit in run.count..(run.zero_map.len() as u32 * 8) {
        assert_eq!(
            run.zero_map[(bit / 8) as usize] & (1 << (bit % 8)),
            0,
            "stray zero-map bit {bit}"
        );
    }
}

impl MemHost {
    /// Checks the phase and that pages `first_page..first_page + count` lie in `region` (the
    /// same bounds as `vmm::migrate::destination::TernDestination`); returns the region's
    /// index and the end page, with its memory allocated.
    fn check_pages(
        &mut self,
        region: u32,
        first_page: u64,
        count: u32,
    ) -> Result<(usize, u64), String> {
        assert_eq!(
            self.phase,
            HostPhase::Checked,
            "pages outside the memory phase"
        );
        assert!(count >= 1 && count <= MAX_RUN_PAGES, "run of {count} pages");
        let (_, pages) = *REGIONS.get(region as usize).ok_or_else(|| {
            format!(
                "page run for memory region {region} (there are {})",
                REGIONS.len()
            )
        })?;
        let end = first_page.checked_add(u64::from(count)).unwrap_or(u64::MAX);
        if end > pages {
            return Err(format!(
                "page run {first_page}..{end} beyond region {region}"
            ));
        }
        let r = region as usize;
        if self.mem[r].is_empty() {
            self.mem[r] = vec![0u8; pages as usize * PAGE_SIZE];
        }
        Ok((r, end))
    }
}

impl DestinationHost for MemHost {
    fn check(&mut self, theirs: &Hello) -> Result<(), String> {
        self.calls[0] += 1;
        assert_eq!(self.phase, HostPhase::Fresh, "check after the handshake");
        assert_eq!(
            theirs.page_size as usize, PAGE_SIZE,
            "check asked about a foreign page size"
        );
        if !config_matches(theirs) {
            return Err("configuration mismatch".into());
        }
        self.phase = HostPhase::Checked;
        Ok(())
    }

    fn page_data(&mut self, region: u32, first_page: u64, count: u32) -> Result<&mut [u8], String> {
        self.calls[1] += 1;
        let (r, end) = self.check_pages(region, first_page, count)?;
        let written = &mut self.written[r];
        for page in first_page..end {
            written[(page / 64) as usize] |= 1 << (page % 64);
        }
        let (from, to) = (first_page as usize * PAGE_SIZE, end as usize * PAGE_SIZE);
        Ok(&mut self.mem[r][from..to])
    }

    fn zero_pages(
        &mut self,
        region: u32,
        first_page: u64,
        count: u32,
        zero_map: &[u8],
    ) -> Result<(), String> {
        self.calls[1] += 1;
        assert_eq!(
            zero_map.len(),
            count.div_ceil(8) as usize,
            "zero map length"
        );
        let (r, _) = self.check_pages(region, first_page, count)?;
        for i in (0..count).filter(|i| zero_map[(i / 8) as usize] & (1 << (i % 8)) != 0) {
            let page = first_page + u64::from(i);
            let (word, bit) = ((page / 64) as usize, 1u64 << (page % 64));
            if self.written[r][word] & bit == 0 {
                continue;
            }
            self.written[r][word] &= !bit;
            let at = page as usize * PAGE_SIZE;
            self.mem[r][at..at + PAGE_SIZE].fill(0);
        }
        Ok(())
    }

    fn restore(&mut self, blob: &[u8]) -> Result<(), String> {
        self.calls[2] += 1;
        assert_eq!(
            self.phase,
            HostPhase::Checked,
            "restore outside the memory phase"
        );
        let gs = vmm::migrate::guest_state::GuestState::decode(blob)?;
        if gs.vcpus.len() != VCPUS as usize {
            return Err(format!(
                "state for {} vCPUs, this VM has {VCPUS}",
                gs.vcpus.len()
            ));
        }
        self.phase = HostPhase::Restored;
        Ok(())
    }

    fn resume(&mut self) -> Result<(), String> {
        self.calls[3] += 1;
        assert_eq!(
            self.phase,
            HostPhase::Restored,
            "resume before the state was restored"
        );
        self.phase = HostPhase::Resumed;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------

/// How the model says a stream ends.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A complete, valid session: the guest runs.
    Resumed {
        /// Byte offset just past Commit.
        end: u64,
        /// Largest round number ended.
        rounds: u32,
        /// Data pages received.
        data_pages: u64,
        /// Zero markers received.
        zero_pages: u64,
        /// Pages that arrived damaged and later intact.
        mended: u64,
    },
    /// The destination refuses the handshake (answers Refuse).
    Refused,
    /// The destination fails (answers Error).
    Failed(&'static str),
}

/// What the model computed.
pub struct Model {
    /// The outcome.
    pub verdict: Verdict,
    /// The handshake was accepted (an Accept was sent).
    pub accepted: bool,
    /// The state was restored (a Ready was sent).
    pub ready: bool,
    /// RoundReceived answers sent (one per RoundEnd read while receiving memory).
    pub rounds_acknowledged: usize,
    /// Guest memory per region.
    pub mem: Vec<Vec<u8>>,
}

enum Msg<'a> {
    Hello {
        version: u32,
        body: Option<Hello>,
    },
    Pages {
        region: u32,
        first: u64,
        count: u32,
        zero: Vec<bool>,
        crcs: Vec<u32>,
    },
    RoundEnd(u32),
    State(&'a [u8]),
    Complete,
    Commit,
    Abandon,
}

/// Decodes one message as the specification describes it, independently of
/// `migration::protocol::messages`.
fn model_decode(kind: u16, p: &[u8]) -> Result<Msg<'_>, &'static str> {
    match kind {
        1 => {
            if p.len() < 8 || &p[..4] != b"TERN" {
                return Err("not tern");
            }
            let version = u32::from_le_bytes([p[4], p[5], p[6], p[7]]);
            let body = if version == PROTOCOL_VERSION {
                Some(postcard::from_bytes::<Hello>(&p[8..]).map_err(|_| "bad hello body")?)
            } else {
                None
            };
            Ok(Msg::Hello { version, body })
        }
        2 => {
            if p.len() < 16 {
                return Err("short run");
            }
            let region = u32::from_le_bytes(p[0..4].try_into().unwrap());
            let count = u32::from_le_bytes(p[4..8].try_into().unwrap());
            let first = u64::from_le_bytes(p[8..16].try_into().unwrap());
            if !(1..=256).contains(&count) {
                return Err("bad count");
            }
            let map_len = (count as usize + 7) / 8;
            if p.len() < 16 + map_len {
                return Err("short map");
            }
            let map = &p[16..16 + map_len];
            let mut zero = Vec::with_capacity(count as usize);
            for bit in 0..map_len * 8 {
                let set = map[bit / 8] >> (bit % 8) & 1 == 1;
                if bit < count as usize {
                    zero.push(set);
                } else if set {
                    return Err("stray bits");
                }
            }
            let sums = &p[16 + map_len..];
            if sums.len() != zero.iter().filter(|z| !**z).count() * 4 {
                return Err("checksums length");
            }
            let crcs = sums
                .chunks(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            Ok(Msg::Pages {
                region,
                first,
                count,
                zero,
                crcs,
            })
        }
        3 => postcard::from_bytes::<u32>(p)
            .map(Msg::RoundEnd)
            .map_err(|_| "bad round"),
        4 => Ok(Msg::State(p)),
        5 if p.is_empty() => Ok(Msg::Complete),
        6 if p.is_empty() => Ok(Msg::Commit),
        5 | 6 => Err("payload on an empty message"),
        7 => postcard::from_bytes::<String>(p)
            .map(|_| Msg::Abandon)
            .map_err(|_| "bad abandon"),
        _ => Err("unknown kind"),
    }
}

/// Runs the specification's destination state machine over `input`.
pub fn reference(input: &[u8]) -> Model {
    #[derive(PartialEq, Clone, Copy)]
    enum S {
        AwaitHello,
        Memory,
        StateReceived,
        Ready,
    }
    let mut m = Model {
        verdict: Verdict::Failed("unset"),
        accepted: false,
        ready: false,
        rounds_acknowledged: 0,
        mem: REGIONS
            .iter()
            .map(|r| vec![0u8; r.1 as usize * PAGE_SIZE])
            .collect(),
    };
    let (mut rounds, mut data_pages, mut zero_pages) = (0u32, 0u64, 0u64);
    // Pages whose last copy failed its checksum, and how many were mended.
    let mut damaged = std::collections::HashSet::new();
    let mut mended = 0u64;
    let mut state = S::AwaitHello;
    let mut blob: &[u8] = &[];
    let mut at = 0usize;
    let fail = |m: &mut Model, why| {
        m.verdict = Verdict::Failed(why);
    };
    loop {
        let rest = &input[at..];
        if rest.len() < 8 {
            return {
                fail(
                    &mut m,
                    if rest.is_empty() {
                        "closed"
                    } else {
                        "truncated header"
                    },
                );
                m
            };
        }
        let kind = u16::from_le_bytes([rest[0], rest[1]]);
        let flags = u16::from_le_bytes([rest[2], rest[3]]);
        let len = u32::from_le_bytes(rest[4..8].try_into().unwrap()) as usize;
        if !(1..=7).contains(&kind) || flags != 0 || len > 4 << 20 {
            fail(&mut m, "bad header");
            return m;
        }
        if rest.len() < 8 + len + 4 {
            fail(&mut m, "truncated frame");
            return m;
        }
        let crc = crc32fast::hash(&rest[..8 + len]);
        if crc.to_le_bytes() != rest[8 + len..12 + len] {
            fail(&mut m, "checksum");
            return m;
        }
        at += 12 + len;
        let msg = match model_decode(kind, &rest[8..8 + len]) {
            Ok(msg) => msg,
            Err(why) => {
                fail(&mut m, why);
                return m;
            }
        };
        match (state, msg) {
            (S::AwaitHello, Msg::Hello { version, body }) => {
                let Some(h) = body.filter(|_| version == PROTOCOL_VERSION) else {
                    m.verdict = Verdict::Refused;
                    return m;
                };
                if h.page_size != 4096 || !config_matches(&h) {
                    m.verdict = Verdict::Refused;
                    return m;
                }
                m.accepted = true;
                state = S::Memory;
            }
            (
                S::Memory,
                Msg::Pages {
                    region,
                    first,
                    count,
                    zero,
                    crcs,
                },
            ) => {
                let Some(&(_, pages)) = REGIONS.get(region as usize) else {
                    fail(&mut m, "no such region");
                    return m;
                };
                if first >= pages || pages - first < u64::from(count) {
                    fail(&mut m, "run beyond region");
                    return m;
                }
                // The data pages follow the frame, unframed.
                let data_len = crcs.len() * 4096;
                if input.len() - at < data_len {
                    fail(&mut m, "truncated page data");
                    return m;
                }
                let mut data = input[at..at + data_len].chunks(4096);
                at += data_len;
                let mut crcs = crcs.iter();
                for (i, z) in zero.iter().enumerate() {
                    let index = (region, first + i as u64);
                    let at = (first as usize + i) * 4096;
                    let page = &mut m.mem[region as usize][at..at + 4096];
                    let intact = if *z {
                        page.fill(0);
                        zero_pages += 1;
                        true
                    } else {
                        // Written even when damaged: the guest never runs with it.
                        page.copy_from_slice(data.next().unwrap());
                        data_pages += 1;
                        crc32fast::hash(page) == *crcs.next().unwrap()
                    };
                    if intact {
                        mended += u64::from(damaged.remove(&index));
                    } else {
                        damaged.insert(index);
                    }
                }
            }
            (S::Memory, Msg::RoundEnd(r)) => {
                rounds = rounds.max(r);
                m.rounds_acknowledged += 1;
            }
            (S::Memory, Msg::State(b)) => {
                blob = b;
                state = S::StateReceived;
            }
            (S::StateReceived, Msg::Complete) => {
                if !damaged.is_empty() {
                    fail(&mut m, "damaged pages never sent again");
                    return m;
                }
                match vmm::migrate::guest_state::GuestState::decode(blob) {
                    Ok(gs) if gs.vcpus.len() == VCPUS as usize => {}
                    _ => {
                        fail(&mut m, "restore");
                        return m;
                    }
                }
                m.ready = true;
                state = S::Ready;
            }
            (S::Ready, Msg::Commit) => {
                m.verdict = Verdict::Resumed {
                    end: at as u64,
                    rounds,
                    data_pages,
                    zero_pages,
                    mended,
                };
                return m;
            }
            (_, Msg::Abandon) => {
                fail(&mut m, "abandoned");
                return m;
            }
            _ => {
                fail(&mut m, "out of order");
                return m;
            }
        }
    }
}

/// Feeds `input` to `migration::receiver::receive` with a [`MemHost`] and
/// checks the outcome against [`reference`]. Panics on any disagreement.
pub fn check_receive(input: &[u8]) -> Result<ReceiveReport, ReceiveError> {
    let mut host = MemHost::default();
    let mut answers = Vec::new();
    let result = receive(input, &mut answers, &mut host);
    let model = reference(input);

    // The guest runs exactly when the stream was a complete valid session.
    let resumed = host.phase == HostPhase::Resumed;
    assert_eq!(
        resumed,
        result.is_ok(),
        "resumed={resumed} but receive returned {result:?}"
    );
    match (&result, &model.verdict) {
        (
            Ok(report),
            Verdict::Resumed {
                end,
                rounds,
                data_pages,
                zero_pages,
                mended,
            },
        ) => {
            assert_eq!(
                (
                    report.bytes,
                    report.rounds,
                    report.data_pages,
                    report.zero_pages,
                    report.pages_resent_damaged
                ),
                (*end, *rounds, *data_pages, *zero_pages, *mended),
                "report differs from the model"
            );
            for r in 0..REGIONS.len() {
                assert!(
                    host.region(r) == model.mem[r],
                    "guest memory of region {r} differs from the model"
                );
            }
        }
        (Err(e), Verdict::Refused) => {
            assert!(
                matches!(
                    e,
                    ReceiveError::Refused(_)
                        | ReceiveError::Protocol(ProtocolError::VersionMismatch { .. })
                ),
                "model refuses, receiver: {e}"
            );
        }
        (Err(e), Verdict::Failed(why)) => {
            assert!(
                !matches!(
                    e,
                    ReceiveError::Refused(_)
                        | ReceiveError::Protocol(ProtocolError::VersionMismatch { .. })
                ),
                "model fails ({why}), receiver refuses: {e}"
            );
        }
        (r, v) => panic!("receiver: {r:?}, model: {v:?}"),
    }
    assert_eq!(
        host.phase != HostPhase::Fresh,
        model.accepted,
        "handshake accepted differs from the model"
    );
    assert_eq!(
        matches!(host.phase, HostPhase::Restored | HostPhase::Resumed),
        model.ready,
        "restore differs from the model"
    );
    assert!(
        host.calls.iter().skip(2).all(|&c| c <= 1),
        "restore or resume called twice: {:?}",
        host.calls
    );

    // What went back to the source: Accept? RoundReceived per round, Ready?, then Resumed,
    // Refuse or Error.
    let mut r = FrameReader::new(&answers[..], kind::from_destination);
    let mut got = Vec::new();
    loop {
        match r.read_frame() {
            Ok(f) => got.push(
                decode_dest(f.kind, &f.payload).expect("the destination's answer does not decode"),
            ),
            Err(ProtocolError::PeerClosed) => break,
            Err(e) => panic!("the destination's answers do not frame: {e}"),
        }
    }
    let mut expect = Vec::new();
    if model.accepted {
        expect.push("accept");
    }
    expect.extend(std::iter::repeat_n("round", model.rounds_acknowledged));
    if model.ready {
        expect.push("ready");
    }
    expect.push(match model.verdict {
        Verdict::Resumed { .. } => "resumed",
        Verdict::Refused => "refuse",
        Verdict::Failed(_) => "error",
    });
    let names: Vec<&str> = got
        .iter()
        .map(|m| match m {
            DestMessage::Accept { .. } => "accept",
            DestMessage::Refuse(_) => "refuse",
            DestMessage::Ready => "ready",
            DestMessage::Resumed => "resumed",
            DestMessage::Error(_) => "error",
            DestMessage::RoundReceived(_) => "round",
        })
        .collect();
    assert_eq!(names, expect, "answers differ from the protocol");
    result
}

// ---------------------------------------------------------------------------
// Building streams
// ---------------------------------------------------------------------------

/// Guest state with `vcpus` vCPUs, as tern's source would encode it.
pub fn guest_state_blob(
    vcpus: usize,
    msrs: &[(u32, u64)],
    xsave_words: usize,
    fifo: &[u8],
    virtio: bool,
    saved_at: u64,
) -> Vec<u8> {
    use devices::legacy::serial::SerialState;
    use devices::state::QueueStateSer;
    use devices::virtio::block::BlockState;
    use devices::virtio::mmio::MmioTransportState;
    use vmm::device_manager::DevicesState;
    use vmm::migrate::guest_state::GuestState;
    use vmm::virtio_slots::VirtioState;
    use vmm::vstate::vcpu::state::VcpuState;
    use vmm::vstate::vm::VmState;

    let vcpu = |id: usize| VcpuState {
        id: id as u8,
        regs: kvm_bindings::kvm_regs {
            rip: 0x10_0000 + id as u64,
            rflags: 2,
            ..Default::default()
        },
        sregs: Default::default(),
        xsave: (0..xsave_words as u32).collect(),
        xcrs: Default::default(),
        debugregs: Default::default(),
        lapic: Default::default(),
        mp_state: Default::default(),
        events: Default::default(),
        msrs: msrs.to_vec(),
        tsc_khz: Some(2_000_000),
        tsc_read_at_realtime_ns: None,
    };
    let gs = GuestState {
        vcpus: (0..vcpus).map(vcpu).collect(),
        vm: VmState {
            irqchips: vec![Default::default(); 3],
            pit: Default::default(),
            clock: Default::default(),
        },
        devices: DevicesState {
            serial: SerialState {
                line_control: 3,
                in_buffer: fifo.to_vec(),
                ..Default::default()
            },
            virtio: if virtio {
                vec![(
                    "blk0".into(),
                    VirtioState::Block(MmioTransportState {
                        status: 15,
                        acked_features: 1 << 32,
                        device_features_sel: 0,
                        driver_features_sel: 0,
                        queue_select: 0,
                        interrupt_status: 0,
                        config_generation: 0,
                        queue_config_error: false,
                        queues: vec![QueueStateSer {
                            max_size: 256,
                            size: 256,
                            ready: true,
                            desc_table: 0x1000,
                            avail_ring: 0x2000,
                            used_ring: 0x3000,
                            ..Default::default()
                        }],
                        device: BlockState {
                            id: "blk0".into(),
                            readonly: false,
                            capacity_sectors: 2048,
                            in_flight: vec![1, 2],
                        },
                    }),
                )]
            } else {
                vec![]
            },
        },
        saved_at_realtime_ns: saved_at,
    };
    gs.encode().expect("encodable")
}

/// One frame to be written: header fields, payload, an optional fixed
/// checksum (None: computed when written), and what follows it outside the
/// frame (a page run's data pages).
#[derive(Clone, Debug)]
pub struct RawFrame {
    /// The 8 header bytes (kind, flags, len).
    pub header: [u8; 8],
    /// The payload.
    pub payload: Vec<u8>,
    /// Checksum to write instead of the right one.
    pub crc: Option<u32>,
    /// Bytes after the frame.
    pub after: Vec<u8>,
}

impl RawFrame {
    /// A correct frame.
    pub fn new(kind: u16, payload: Vec<u8>) -> Self {
        let mut header = [0u8; 8];
        header[0..2].copy_from_slice(&kind.to_le_bytes());
        header[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        RawFrame {
            header,
            payload,
            crc: None,
            after: Vec::new(),
        }
    }

    /// A correct page run frame with its data pages after it (see [`run_payload`]).
    pub fn run(region: u32, first_page: u64, zero: &[bool], fill: u8) -> Self {
        let (payload, data) = run_payload(region, first_page, zero, fill);
        RawFrame {
            after: data,
            ..RawFrame::new(kind::PAGES, payload)
        }
    }

    /// The checksum over what the frame holds now.
    pub fn right_crc(&self) -> u32 {
        let mut h = crc32fast::Hasher::new();
        h.update(&self.header);
        h.update(&self.payload);
        h.finalize()
    }

    /// Appends the frame's bytes.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.header);
        out.extend_from_slice(&self.payload);
        out.extend_from_slice(&self.crc.unwrap_or_else(|| self.right_crc()).to_le_bytes());
        out.extend_from_slice(&self.after);
    }
}

/// The payload of a page run's frame, and the data pages that follow it:
/// `zero[i]` marks page i a zero page; data pages are filled from `fill`.
pub fn run_payload(region: u32, first_page: u64, zero: &[bool], fill: u8) -> (Vec<u8>, Vec<u8>) {
    let count = zero.len() as u32;
    let mut map = vec![0u8; zero.len().div_ceil(8)];
    for (i, z) in zero.iter().enumerate() {
        if *z {
            map[i / 8] |= 1 << (i % 8);
        }
    }
    let mut p = Vec::new();
    encode_run_header(region, first_page, count, &map, &mut p);
    let mut data = Vec::new();
    for (i, z) in zero.iter().enumerate() {
        if !z {
            let start = data.len();
            data.resize(start + PAGE_SIZE, 0);
            for (j, b) in data[start..].iter_mut().enumerate() {
                *b = fill.wrapping_add((j / 64) as u8).wrapping_mul(i as u8 | 1);
            }
            data[start] = data[start].max(1);
            p.extend_from_slice(&crc32fast::hash(&data[start..]).to_le_bytes());
        }
    }
    (p, data)
}

/// Hello payload for `h` claiming protocol `version`.
pub fn hello_payload(h: &Hello, version: u32) -> Vec<u8> {
    encode_hello_with_version(h, version)
}

/// RoundEnd payload.
pub fn round_end_payload(round: u32) -> Vec<u8> {
    encode_round_end(round)
}

/// Abandon payload.
pub fn abandon_payload(reason: &str) -> Vec<u8> {
    encode_abandon(reason)
}

/// One message of a stream: kind, payload, and the bytes that follow its
/// frame (a page run's data pages; empty for the others).
pub type Message = (u16, Vec<u8>, Vec<u8>);

/// Encodes messages with tern's own `FrameWriter` (the same bytes a real
/// source gathers: a unit test in `protocol::frame` holds the two equal).
pub fn write_with_frame_writer(messages: &[Message]) -> Vec<u8> {
    let mut w = FrameWriter::new(Vec::new());
    for (k, p, after) in messages {
        w.write_frame(*k, &[p]).expect("in-memory write");
        w.flush().expect("in-memory write");
        w.get_mut().extend_from_slice(after);
    }
    w.flush().expect("in-memory write");
    w.get_mut().clone()
}

/// A valid session: Hello, runs (region, first page, zero map, fill) each
/// optionally followed by a RoundEnd, State, Complete, Commit.
pub fn valid_session(
    runs: &[(u32, u64, Vec<bool>, u8, Option<u32>)],
    state: Vec<u8>,
) -> Vec<Message> {
    let mut f = vec![(
        kind::HELLO,
        hello_payload(&hello(), PROTOCOL_VERSION),
        vec![],
    )];
    for (region, first, zero, fill, round) in runs {
        let (payload, data) = run_payload(*region, *first, zero, *fill);
        f.push((kind::PAGES, payload, data));
        if let Some(r) = round {
            f.push((kind::ROUND_END, round_end_payload(*r), vec![]));
        }
    }
    f.push((kind::STATE, state, vec![]));
    f.push((kind::COMPLETE, vec![], vec![]));
    f.push((kind::COMMIT, vec![], vec![]));
    f
}

/// A valid guest state for this machine.
pub fn default_state() -> Vec<u8> {
    guest_state_blob(
        VCPUS as usize,
        &[(0x10, 12345), (0x4b56_4d01, 0x7000)],
        16,
        b"hi",
        true,
        1_700_000_000_000_000_000,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_session_resumes_and_agrees_with_the_model() {
        let runs = vec![
            (0, 0, vec![false, true, false], 7, Some(1)),
            (1, 15, vec![false], 9, None),
            (0, 0, vec![true, true, true], 0, Some(2)),
        ];
        let s = write_with_frame_writer(&valid_session(&runs, default_state()));
        let report = check_receive(&s).unwrap();
        assert_eq!(
            (report.rounds, report.data_pages, report.zero_pages),
            (2, 3, 4)
        );
        // Every prefix fails, and agrees with the model.
        for cut in 0..s.len() {
            assert!(check_receive(&s[..cut]).is_err());
        }
    }

    #[test]
    fn a_damaged_page_fails_unless_it_arrives_again_intact() {
        let runs = vec![(0, 4, vec![false, false], 7, Some(1))];
        let mut session = valid_session(&runs, default_state());
        // The second page's data changed after its checksum.
        session[1].2[PAGE_SIZE + 9] ^= 1;
        let s = write_with_frame_writer(&session);
        let e = check_receive(&s).unwrap_err();
        assert!(
            matches!(
                e,
                ReceiveError::DamagedPages {
                    count: 1,
                    page: 5,
                    ..
                }
            ),
            "{e}"
        );
        // Sent again (as its dirtying write makes the source do): taken.
        let (payload, data) = run_payload(0, 5, &[false], 3);
        session.insert(3, (kind::PAGES, payload, data));
        let s = write_with_frame_writer(&session);
        let report = check_receive(&s).unwrap();
        assert_eq!(report.pages_resent_damaged, 1);
    }
}

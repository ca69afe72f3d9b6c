//! Arbitrary bytes through the source-side `FrameReader` and `decode_source`
//! on every frame that reads, until an error. Checks the reader against the
//! framing in PROTOCOL.md (offsets, lengths, checksums) and that every decoded
//! message re-encodes to something that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use migration::protocol::frame::{FrameReader, HEADER_LEN, MAX_PAYLOAD};
use migration::protocol::messages::{
    decode_source, encode_hello_with_version, encode_round_end, encode_run_header, kind,
    SourceMessage, PROTOCOL_VERSION,
};
use migration::protocol::ProtocolError;
use tern_fuzz::{assert_run_invariants, peak_heap, CountingAlloc};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn check(data: &[u8]) {
    let mut r = FrameReader::new(data, kind::from_source);
    let mut payload = Vec::new();
    loop {
        let start = r.offset() as usize;
        match r.read_frame_into(&mut payload) {
            Ok(k) => {
                assert!(kind::from_source(k));
                assert!(payload.len() <= MAX_PAYLOAD as usize);
                let end = start + HEADER_LEN + payload.len() + 4;
                assert_eq!(r.offset() as usize, end, "offset after a frame");
                // The frame as read is the bytes of the stream.
                assert_eq!(&data[start + HEADER_LEN..end - 4], &payload[..]);
                assert_eq!(u16::from_le_bytes([data[start], data[start + 1]]), k);
                assert_eq!(&data[start + 2..start + 4], &[0, 0]);
                assert_eq!(
                    crc32fast::hash(&data[start..end - 4]).to_le_bytes(),
                    data[end - 4..end]
                );
                if let Ok(m) = decode_source(k, &payload) {
                    roundtrip(k, &payload, m);
                }
            }
            Err(e) => {
                let rest = data.len() - start;
                match e {
                    ProtocolError::PeerClosed => assert_eq!(rest, 0),
                    ProtocolError::Truncated { offset, .. } => {
                        assert!(rest > 0);
                        assert!(
                            offset as usize <= data.len() && offset as usize >= start,
                            "{offset}"
                        );
                    }
                    ProtocolError::Corrupt { offset, .. } => assert_eq!(offset as usize, start),
                    other => panic!("unexpected reader error {other:?}"),
                }
                assert!(r.offset() as usize <= data.len());
                break;
            }
        }
    }
}

fn roundtrip(k: u16, payload: &[u8], m: SourceMessage<'_>) {
    match m {
        SourceMessage::Hello { version, hello } => {
            assert_eq!(k, kind::HELLO);
            assert_eq!(&payload[..4], b"TERN");
            assert_eq!(hello.is_some(), version == PROTOCOL_VERSION);
            if let Some(h) = hello {
                let again = encode_hello_with_version(&h, version);
                assert_eq!(
                    decode_source(k, &again).unwrap(),
                    SourceMessage::Hello {
                        version,
                        hello: Some(h)
                    }
                );
            }
        }
        SourceMessage::Pages(run) => {
            assert_run_invariants(&run);
            let mut again = Vec::new();
            encode_run_header(
                run.region,
                run.first_page,
                run.count,
                run.zero_map,
                &mut again,
            );
            again.extend_from_slice(run.page_crcs);
            // A run's control part has one encoding only.
            assert_eq!(again, payload);
        }
        SourceMessage::RoundEnd { round } => {
            let again = encode_round_end(round);
            assert_eq!(
                decode_source(k, &again).unwrap(),
                SourceMessage::RoundEnd { round }
            );
        }
        SourceMessage::State(s) => assert_eq!(s, payload),
        SourceMessage::Complete | SourceMessage::Commit => assert!(payload.is_empty()),
        SourceMessage::Abandon(reason) => {
            let again = migration::protocol::messages::encode_abandon(&reason);
            assert_eq!(
                decode_source(k, &again).unwrap(),
                SourceMessage::Abandon(reason)
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let ((), peak) = peak_heap(|| check(data));
    // One payload buffer (at most MAX_PAYLOAD) plus what postcard decodes.
    let bound = MAX_PAYLOAD as usize + 4 * data.len() + (64 << 10);
    assert!(
        peak <= bound,
        "{peak} heap bytes for {} input bytes",
        data.len()
    );
});

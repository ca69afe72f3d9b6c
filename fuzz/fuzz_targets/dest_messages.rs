//! `decode_dest` on an arbitrary (kind, payload): a message that decodes is
//! of the kind its frame names and re-encodes to the same message. The same
//! bytes also go through the destination-side `FrameReader`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use migration::protocol::frame::FrameReader;
use migration::protocol::messages::{decode_dest, encode_dest, kind};

fuzz_target!(|data: &[u8]| {
    if data.len() >= 2 {
        let k = u16::from_le_bytes([data[0], data[1]]);
        if let Ok(m) = decode_dest(k, &data[2..]) {
            let (k2, p) = encode_dest(&m);
            assert_eq!(k2, k, "{m:?} decoded from a kind-{k} frame");
            assert!(kind::from_destination(k));
            assert_eq!(decode_dest(k2, &p).unwrap(), m);
        }
    }
    // As a stream of destination frames (what a source reads).
    let mut r = FrameReader::new(data, kind::from_destination);
    while let Ok(f) = r.read_frame() {
        assert!(kind::from_destination(f.kind));
        if let Ok(m) = decode_dest(f.kind, &f.payload) {
            assert_eq!(encode_dest(&m).0, f.kind);
        }
    }
});

//! `GuestState::decode` on arbitrary bytes (no /dev/kvm needed): never
//! panics, the heap the decode takes stays proportionate to the input, and a
//! decoded state re-encodes stably.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_fuzz::{peak_heap, CountingAlloc};
use vmm::migrate::guest_state::GuestState;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fuzz_target!(|data: &[u8]| {
    let (decoded, peak) = peak_heap(|| GuestState::decode(data));
    // At most MAX_VCPUS vCPUs of ~2 KiB of fixed-size KVM structures (each
    // decodable from one byte), then a small multiple of the input.
    let bound = 64 * data.len() + (1 << 20);
    assert!(
        peak <= bound,
        "decoding {} input bytes took {peak} heap bytes",
        data.len()
    );
    if let Ok(gs) = decoded {
        let a = gs.encode().expect("a decoded state encodes");
        let b = GuestState::decode(&a)
            .expect("an encoded state decodes")
            .encode()
            .unwrap();
        assert_eq!(a, b, "encode(decode(encode(x))) != encode(x)");
    }
});

//! Arbitrary bytes as a whole incoming stream to `migration::receiver::receive`
//! with an in-memory destination that has tern's bounds. Checks: no panic,
//! bounded heap, and the guest resumes exactly when the independent model of
//! PROTOCOL.md says the stream was a complete, valid session, with the same
//! memory contents, counts and end offset; the answers follow the protocol.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_fuzz::{check_receive, peak_heap, receive_heap_bound, CountingAlloc};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fuzz_target!(|data: &[u8]| {
    let (_, peak) = peak_heap(|| check_receive(data));
    assert!(
        peak <= receive_heap_bound(data.len()),
        "{peak} heap bytes for {} input bytes",
        data.len()
    );
});

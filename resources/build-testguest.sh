#!/usr/bin/env bash
# Builds the ring-3 test guest (a PVH ELF) and the two Linux guest programs,
# cached by their inputs; prints
#   testguest=PATH  (guest-tests/testguest: boot with tern run --kernel PATH)
#   liveinit=PATH   (tern-live-init: a Linux /init that makes no system call)
#   workload=PATH   (tern-workload: the workloads as a static Linux program)
# Cargo's own build directories live in the cache too, so a fresh clone
# rebuilds incrementally.
source "$(dirname "$0")/lib.sh"

need_cmd cargo "cargo (rustup: https://rustup.rs)"
need_cmd cc "gcc"

guest="$TERN_ROOT/guest-tests/testguest"
workloads="$TERN_ROOT/guest-tests/workloads"
# Everything the three binaries are built from (not the tests or examples).
mapfile -t inputs < <(find "$guest/src" "$workloads/src" "$guest/Cargo.toml" "$guest/Cargo.lock" \
    "$guest/build.rs" "$guest/testguest.ld" "$guest/.cargo/config.toml" "$workloads/Cargo.toml" \
    -type f | LC_ALL=C sort)
key=$( { inputs_key "$TERN_RESOURCES/build-testguest.sh" "${inputs[@]}"; rustc -V; } | sha256sum | cut -c1-16)
out="$TERN_CACHE_DIR/testguest-$key"

if [ ! -f "$out/tern-testguest" ] || [ ! -f "$out/tern-live-init" ] || [ ! -f "$out/tern-workload" ]; then
    log "building the test guest $key"
    # The freestanding binaries take their rustflags from guest-tests/testguest/.cargo/config.toml,
    # which cargo only reads when run from that directory; RUSTFLAGS would override it.
    unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS
    (cd "$guest" && CARGO_TARGET_DIR="$TERN_CACHE_DIR/cargo-testguest" nice -n 10 cargo build --release --locked)
    # tern-workload is a std program: statically linked glibc.
    (cd "$TERN_ROOT" && CARGO_TARGET_DIR="$TERN_CACHE_DIR/cargo-workload" \
        RUSTFLAGS="-C target-feature=+crt-static" \
        nice -n 10 cargo build --release -p tern-workloads --bin tern-workload)
    stage="$TERN_CACHE_DIR/testguest-$key.work"
    rm -rf "$stage"
    mkdir -p "$stage"
    cp "$TERN_CACHE_DIR/cargo-testguest/release/tern-testguest" "$TERN_CACHE_DIR/cargo-testguest/release/tern-live-init" \
        "$TERN_CACHE_DIR/cargo-workload/release/tern-workload" "$stage/"
    publish "$stage" "$out"
    log "test guest ready in $out"
fi

echo "testguest=$out/tern-testguest"
echo "liveinit=$out/tern-live-init"
echo "workload=$out/tern-workload"

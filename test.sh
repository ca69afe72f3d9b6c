#!/usr/bin/env bash
# tern's whole test suite: formatting, lints, unit tests, and integration tests
# that boot and migrate real guests under KVM (they need /dev/kvm and root).
# Installs missing Debian packages and builds the guest artifacts first
# (cached in ~/.cache/tern, so a second run does not rebuild them).
set -euo pipefail
cd "$(dirname "$0")"
stage() { printf '\n=== %s (%s)\n' "$1" "$(date +%T)"; }

stage "system packages"
tools/install-deps.sh
[ -e /dev/kvm ] || { echo "error: /dev/kvm is missing; tern's tests boot real guests" >&2; exit 1; }

stage "guest artifacts"
resources/build-guest.sh

stage "format"
cargo fmt --all -- --check

stage "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

stage "fuzz targets (build and model tests; fuzzing itself: fuzz/README.md)"
# Not a workspace member (cargo-fuzz builds it with its own flags), so it is
# built here, or it would rot unseen.
(cd fuzz && cargo fmt -- --check && cargo build --locked --all-targets && cargo test --locked)

stage "tests"
# Tests that boot guests serialise themselves; the rest run in parallel.
cargo test --workspace --locked --no-fail-fast

stage "done"

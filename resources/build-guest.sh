#!/usr/bin/env bash
# Builds every guest artifact that is missing (cached outside the checkout, in
# $TERN_CACHE_DIR, keyed by inputs) and prints one NAME=PATH line each:
#   kernel= vmlinux= initramfs= initramfs_live= testguest= liveinit= workload=
source "$(dirname "$0")/lib.sh"
"$TERN_RESOURCES/build-kernel.sh"
"$TERN_RESOURCES/build-testguest.sh"
"$TERN_RESOURCES/build-initramfs.sh"

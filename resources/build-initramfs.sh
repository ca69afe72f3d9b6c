#!/usr/bin/env bash
# Builds the two uncompressed initramfs images, cached by inputs. Needs the
# Linux programs from build-testguest.sh. Prints
#   initramfs=PATH       busybox + tern-workload (hosts where user space runs)
#   initramfs_live=PATH  /init = tern-live-init, no system calls (kvm_pvm hosts)
source "$(dirname "$0")/lib.sh"

busybox=${BUSYBOX:-/bin/busybox}
[ -x "$busybox" ] || die "busybox not found at $busybox: apt-get install -y busybox-static"
file -L "$busybox" 2>/dev/null | grep -q "statically linked" || log "warning: $busybox may not be static"
need_cmd python3 python3

eval "$("$TERN_RESOURCES/build-testguest.sh" | grep -E '^(liveinit|workload)=')"
[ -f "${liveinit:-}" ] && [ -f "${workload:-}" ] || die "build-testguest.sh did not print liveinit= and workload="

build() { # name spec
    local name=$1 spec=$2
    local key
    key=$(inputs_key "$TERN_RESOURCES/build-initramfs.sh" "$TERN_RESOURCES/mkcpio.py" "$spec" \
        "$TERN_RESOURCES/initramfs/init" "$busybox" "$liveinit" "$workload")
    local out="$TERN_CACHE_DIR/initramfs-$name-$key.cpio"
    if [ ! -f "$out" ]; then
        local tmp
        tmp=$(mktemp)
        sed -e "s#@BUSYBOX@#$busybox#" -e "s#@WORKLOAD@#$workload#" -e "s#@LIVEINIT@#$liveinit#" \
            -e "s#@INIT@#$TERN_RESOURCES/initramfs/init#" "$spec" >"$tmp"
        python3 "$TERN_RESOURCES/mkcpio.py" "$tmp" "$out"
        rm -f "$tmp"
        log "initramfs $name ready in $out"
    fi
    echo "$out"
}

echo "initramfs=$(build busybox "$TERN_RESOURCES/initramfs/busybox.spec")"
echo "initramfs_live=$(build live "$TERN_RESOURCES/initramfs/live.spec")"

#!/usr/bin/env bash
# Builds the tern guest kernel from Debian's linux-source-6.1: tinyconfig plus
# kernel/tern-x86_64.config, with the kernel/patches/ applied (they are needed
# on kvm_pvm hosts and harmless elsewhere). Cached by inputs; prints
#   kernel=PATH   (bzImage)
#   vmlinux=PATH  (ELF with a PVH entry note)
source "$(dirname "$0")/lib.sh"

SRC_TARBALL=/usr/src/linux-source-6.1.tar.xz
[ -f "$SRC_TARBALL" ] || die "$SRC_TARBALL missing: apt-get install -y linux-source-6.1"
for c in make gcc flex bison bc; do need_cmd "$c" "build-essential flex bison bc"; done
[ -f /usr/include/libelf.h ] || die "libelf headers missing: apt-get install -y libelf-dev"
[ -f /usr/include/openssl/ssl.h ] || die "openssl headers missing: apt-get install -y libssl-dev"

src_version=$(dpkg-query -W -f='${Version}' linux-source-6.1 2>/dev/null || stat -c %s "$SRC_TARBALL")
key=$( { inputs_key "$TERN_RESOURCES/build-kernel.sh" "$TERN_RESOURCES/kernel/tern-x86_64.config" \
            "$TERN_RESOURCES"/kernel/patches/*.patch; echo "$src_version"; } | sha256sum | cut -c1-16)
out="$TERN_CACHE_DIR/kernel-$key"

if [ ! -f "$out/vmlinux" ] || [ ! -f "$out/bzImage" ]; then
    log "building guest kernel $key (linux-source $src_version); about 5 minutes on 2 cores"
    work="$TERN_CACHE_DIR/kernel-$key.work"
    rm -rf "$work"
    mkdir -p "$work"
    tar -C "$work" -xf "$SRC_TARBALL"
    tree="$work/linux-source-6.1"
    for p in "$TERN_RESOURCES"/kernel/patches/*.patch; do
        patch -s -d "$tree" -p1 <"$p"
    done
    mk() { nice -n 10 make -s -C "$tree" ARCH=x86_64 O="$work/build" "$@"; }
    mk tinyconfig >/dev/null
    (cd "$tree" && ARCH=x86_64 scripts/kconfig/merge_config.sh -n -O "$work/build" \
        "$work/build/.config" "$TERN_RESOURCES/kernel/tern-x86_64.config" >"$work/merge.log")
    # Every fragment line must have survived the merge.
    missing=0
    while IFS= read -r line; do
        case "$line" in
        CONFIG_*=*)
            grep -qx "$line" "$work/build/.config" || { log "config: '$line' did not take"; missing=1; } ;;
        "# CONFIG_"*" is not set")
            sym=${line#"# "}; sym=${sym%" is not set"}
            grep -q "^$sym=" "$work/build/.config" && { log "config: $sym should be off"; missing=1; } ;;
        esac
    done <"$TERN_RESOURCES/kernel/tern-x86_64.config"
    [ "$missing" -eq 0 ] || die "the config fragment did not apply cleanly"
    mk -j"$(nproc)" bzImage
    stage="$work/out"
    mkdir -p "$stage"
    cp "$work/build/vmlinux" "$stage/vmlinux"
    cp "$work/build/arch/x86/boot/bzImage" "$stage/bzImage"
    cp "$work/build/.config" "$stage/config"
    cp "$work/build/System.map" "$stage/System.map"
    publish "$stage" "$out"
    rm -rf "$work"
    log "kernel ready in $out"
fi

echo "kernel=$out/bzImage"
echo "vmlinux=$out/vmlinux"

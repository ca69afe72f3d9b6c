#!/usr/bin/env bash
# The guest's stall when a busy guest migrates while its disk is slow, tern
# against QEMU.
#
# Both VMMs run the same 2-vCPU test guest: vCPU 0 writes checked 4 KiB blocks
# at queue depth 32 without end, vCPU 1 runs the stall meter (its longest gap
# between iterations, guest time). The disk is made slow the same way for
# both, every request delayed by D ms:
#   tern: the block fault hook, PUT /devices/blk0/fault {"delay_ms": D}
#   QEMU: the drive on QEMU's null-co driver with latency-ns = D ms (QEMU's
#         throttle filter would not do: QEMU lifts throttling while it drains
#         at switchover, and this host has no dm-delay)
# and the guest migrates to a local second instance. Prints per VMM the
# longest stall the guest saw during the migration, the VMM's total time and
# downtime. Never fails on the numbers.
#
#   tools/slow-disk-switchover.sh [--delay-ms D]   (root, /dev/kvm, qemu-system-x86_64)
set -euo pipefail
cd "$(dirname "$0")/.."
delay=1000
[ "${1:-}" = "--delay-ms" ] && delay=$2
tern=$PWD/target/release/tern
[ -x "$tern" ] || { echo "error: build tern first: cargo build --release -p tern-vmm" >&2; exit 1; }
command -v qemu-system-x86_64 >/dev/null || { echo "error: qemu-system-x86_64 is not installed" >&2; exit 1; }
eval "$(resources/build-guest.sh | grep -E '^testguest=')"
work=$(mktemp -d /tmp/tern-slowdisk.XXXXXX)
trap 'pkill -P $$ 2>/dev/null || true; sleep 0.5; rm -rf "$work"' EXIT
truncate -s 128M "$work/disk.img"
cmdline="tern.test=disk tern.qd=32 tern.disk_mib=64 tern.passes=0"

wait_for() { # FILE PATTERN SECONDS
  for _ in $(seq $(( $3 * 10 ))); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "error: '$2' did not appear in $1 within $3 s" >&2; tail -5 "$1" >&2; return 1
}

# worst_stall FILE...: the longest max_gap_us in the stall meter's ticks, ms,
# from the tick before MARK (a line the script appends when the migration starts).
worst_stall() {
  python3 - "$@" <<'PY'
import json, sys
worst = 0
for path in sys.argv[1:]:
    seen_mark = path.endswith(".dst.log")
    for line in open(path, errors="replace"):
        if "MIGRATION-START" in line:
            seen_mark = True
            continue
        if not seen_mark or '"event":"tick"' not in line:
            continue
        try:
            e = json.loads(line[line.index("{"):])
        except ValueError:
            continue
        worst = max(worst, e.get("max_gap_us", 0))
print(f"{worst / 1000:.1f}")
PY
}

qmp() { python3 "$PWD/tools/qmp.py" "$@"; }

declare -A result

# tern
"$tern" run --kernel "$testguest" --cpus 2 --memory 256M --disk "$work/disk.img" \
  --api-socket "$work/src.sock" --cmdline "$cmdline" </dev/null >"$work/tern.src.log" 2>&1 &
wait_for "$work/tern.src.log" '"event":"disk_tick"' 30
"$tern" run --incoming "unix:$work/mig.sock" --cpus 2 --memory 256M --disk "$work/disk.img" \
  </dev/null >"$work/tern.dst.log" 2>&1 &
wait_for "$work/tern.dst.log" "waiting for an incoming" 10
curl -s --unix-socket "$work/src.sock" -X PUT -H 'Content-Type: application/json' \
  -d "{\"delay_ms\": $delay}" http://localhost/devices/blk0/fault >/dev/null
sleep 2
echo MIGRATION-START >>"$work/tern.src.log"
"$tern" migrate --api-socket "$work/src.sock" --to "unix:$work/mig.sock" --json >"$work/tern.json" || true
sleep 2
result[tern]="$(worst_stall "$work/tern.src.log" "$work/tern.dst.log") ms guest stall; $(python3 -c "import json;d=json.load(open('$work/tern.json'));print(f\"{d['phase']}, {d['total_ms']:.0f} ms total, {d['downtime_ms'] or 0:.1f} ms downtime, drain {d['drain']['attempts']} attempts / {d['drain']['busy']} busy\")")"
pkill -P $$ -x tern || true
sleep 1

# QEMU
drive() {
  echo "-blockdev driver=null-co,node-name=n0,size=$((128 << 20)),latency-ns=$((delay * 1000000)) -device virtio-blk-device,drive=n0"
}
q=(qemu-system-x86_64 -M microvm,acpi=off -accel kvm -cpu host,-arch-capabilities -smp 2 -m 256M
  -display none -monitor none -serial stdio -no-reboot -global virtio-mmio.force-legacy=false
  -kernel "$testguest" -append "$cmdline")
# shellcheck disable=SC2046
"${q[@]}" $(drive) -qmp "unix:$work/q-src.qmp,server=on,wait=off" </dev/null >"$work/qemu.src.log" 2>&1 &
wait_for "$work/qemu.src.log" '"event":"disk_tick"' 30
# shellcheck disable=SC2046
"${q[@]}" $(drive) -qmp "unix:$work/q-dst.qmp,server=on,wait=off" -incoming tcp:127.0.0.1:4461 \
  </dev/null >"$work/qemu.dst.log" 2>&1 &
sleep 2
echo MIGRATION-START >>"$work/qemu.src.log"
qmp "$work/q-src.qmp" '{"execute":"migrate","arguments":{"uri":"tcp:127.0.0.1:4461"}}' >/dev/null
st=""
for _ in $(seq 1200); do
  st=$(qmp "$work/q-src.qmp" '{"execute":"query-migrate"}')
  case "$st" in *'"completed"'*|*'"failed"'*|*'"cancelled"'*) break ;; esac
  sleep 0.05
done
sleep 2
result[qemu]="$(worst_stall "$work/qemu.src.log" "$work/qemu.dst.log") ms guest stall; $(python3 -c "import json,sys;d=json.loads(sys.argv[1])['return'];print(f\"{d['status']}, {d.get('total-time',0)} ms total, {d.get('downtime',0)} ms downtime\")" "$st")"
qmp "$work/q-src.qmp" '{"execute":"quit"}' >/dev/null 2>&1 || true
qmp "$work/q-dst.qmp" '{"execute":"quit"}' >/dev/null 2>&1 || true

echo "busy disk (queue depth 32), every request delayed $delay ms, migrating (max downtime 300 ms for both)"
for v in tern qemu; do printf '%-5s %s\n' "$v" "${result[$v]}"; done

#!/usr/bin/env bash
# Ping RTT of a live Linux guest while it migrates, tern against QEMU.
#
# Both VMMs boot the same kernel and the "live" initramfs (an init that never
# makes a system call and dirties a few MiB/s) with a static address on
# virtio-net, on a bridge inside a private network namespace. The host pings
# the guest every 50 ms from before the migration until after it; the guest
# moves to a second instance of the same VMM on a second tap of the bridge, at
# the same bandwidth cap. Prints, per VMM: the replies whose request went out
# during the migration (min/avg/max RTT, lost), the same before it, and the
# migration's own total time and downtime. Never fails on the numbers.
#
#   tools/ping-during-migration.sh [--cap MiB/s] [--interval s]
#   (root, /dev/kvm, qemu-system-x86_64; defaults: 8 MiB/s, a ping every 0.1 s)
#
# Linux's ring 0 is emulated on kvm_pvm hosts, so every RTT here includes a
# slow guest kernel (~18 ms); compare the VMMs with each other, not with a
# real host.
set -euo pipefail
cd "$(dirname "$0")/.."
cap=8 interval=0.1
while [ $# -gt 0 ]; do
  case $1 in
    --cap) cap=$2; shift 2 ;;
    --interval) interval=$2; shift 2 ;;
    *) echo "usage: $0 [--cap MiB/s] [--interval s]" >&2; exit 2 ;;
  esac
done
tern=$PWD/target/release/tern
[ -x "$tern" ] || { echo "error: build tern first: cargo build --release -p tern-vmm" >&2; exit 1; }
command -v qemu-system-x86_64 >/dev/null || { echo "error: qemu-system-x86_64 is not installed" >&2; exit 1; }
eval "$(resources/build-guest.sh | grep -E '^(vmlinux|initramfs_live)=')"

ns=tern-ping-$$
work=$(mktemp -d /tmp/tern-ping.XXXXXX)
cleanup() {
  ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
  sleep 0.5
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
in_ns() { ip netns exec "$ns" "$@"; }
ip netns add "$ns"
in_ns sh -c 'ip link set lo up; ip link add br0 type bridge; ip addr add 10.0.3.1/24 dev br0
  ip link set br0 up
  for t in tap0 tap1; do ip tuntap add $t mode tap; ip link set $t master br0; ip link set $t up; done'
guest_ip=10.0.3.2
cmdline="console=ttyS0 reboot=k panic=1 ip=$guest_ip::10.0.3.1:255.255.255.0::eth0:off"
mac=52:54:00:00:03:02
# On kvm_pvm, tern appends these itself (--pvm-workarounds auto, see
# vmm/src/config.rs PVM_CMDLINE); QEMU gets them by hand.
qemu_cmdline=$cmdline
if [ -d /sys/module/kvm_pvm ]; then
  qemu_cmdline+=" noxsave nofsgsbase clearcpuid=cx16,popcnt,smap,smep,rdrand,rdseed,serialize,invpcid,pcid,rdpid"
fi

qmp() { python3 "$PWD/tools/qmp.py" "$@"; }

wait_for() { # FILE PATTERN SECONDS
  for _ in $(seq "$3"); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 1; done
  echo "error: '$2' did not appear in $1 within $3 s" >&2; tail -5 "$1" >&2; return 1
}

# Starts pinging; the caller stops it. Lines carry -D timestamps.
start_ping() { in_ns ping -D -i "$interval" -W 2 "$guest_ip" >"$work/$1.ping" 2>&1 & echo $!; }

# summary NAME T0 T1: RTTs of requests sent in [T0, T1) (Unix seconds) and losses.
summary() {
  python3 - "$work/$1.ping" "$2" "$3" "$interval" <<'PY'
import re, sys
path, t0, t1, step = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
rtt = {}
first = None
for line in open(path):
    m = re.match(r"\[(\d+\.\d+)\].*icmp_seq=(\d+).*time=([\d.]+) ms", line)
    if m:
        t, seq, ms = float(m[1]), int(m[2]), float(m[3])
        rtt[seq] = (t - ms / 1e3, ms)
if not rtt:
    print("no replies at all"); sys.exit()
# Sequence numbers go out every `step` seconds from the first.
s0, (ts0, _) = min(rtt.items())
send = lambda seq: ts0 + (seq - s0) * step
seqs = [q for q in range(s0, max(rtt) + 1) if t0 <= send(q) < t1]
got = [rtt[q][1] for q in seqs if q in rtt]
lost = len(seqs) - len(got)
if got:
    print(f"{min(got):7.2f} {sum(got)/len(got):7.2f} {max(got):7.2f}  {len(got):4d} replies, {lost} lost")
else:
    print(f"no replies among {len(seqs)} requests")
PY
}

declare -A result
# windows VMM T0 T1: the replies before, during and after the migration [T0, T1).
windows() {
  result[$1_before]=$(summary "$1" 0 "$2")
  result[$1_during]=$(summary "$1" "$2" "$3")
  result[$1_after]=$(summary "$1" "$3" 1e12)
}
run_tern() {
  in_ns "$tern" run --kernel "$vmlinux" --initrd "$initramfs_live" --memory 256M \
    --net "tap=tap0,mac=$mac" --api-socket "$work/src.sock" --cmdline "$cmdline" \
    </dev/null >"$work/tern-src.log" 2>&1 &
  wait_for "$work/tern-src.log" "Run /init" 240
  in_ns "$tern" run --incoming tcp:127.0.0.1:4450 --memory 256M --net tap=tap1 \
    </dev/null >"$work/tern-dst.log" 2>&1 &
  sleep 3
  local ping; ping=$(start_ping tern)
  sleep 3
  local t0 t1; t0=$(date +%s.%N)
  in_ns "$tern" migrate --api-socket "$work/src.sock" --to tcp:127.0.0.1:4450 \
    --max-bandwidth "${cap}M" --json >"$work/tern.json"
  t1=$(date +%s.%N)
  sleep 3
  kill "$ping"
  windows tern "$t0" "$t1"
  result[tern_mig]=$(python3 -c "import json;d=json.load(open('$work/tern.json'));print(f\"{d['phase']}, {d['total_ms']:.0f} ms total, {d['downtime_ms']:.1f} ms downtime\")")
  in_ns pkill -x tern || true
  sleep 1
}

run_qemu() {
  local q=(qemu-system-x86_64 -M microvm,acpi=off -accel kvm -cpu host,-arch-capabilities -m 256M
    -display none -monitor none -serial stdio -no-reboot -global virtio-mmio.force-legacy=false)
  in_ns "${q[@]}" -kernel "$vmlinux" -initrd "$initramfs_live" -append "$qemu_cmdline" \
    -netdev tap,id=n0,ifname=tap0,script=no,downscript=no -device "virtio-net-device,netdev=n0,mac=$mac" \
    -qmp "unix:$work/q-src.qmp,server=on,wait=off" </dev/null >"$work/qemu-src.log" 2>&1 &
  wait_for "$work/qemu-src.log" "Run /init" 240
  in_ns "${q[@]}" -kernel "$vmlinux" -initrd "$initramfs_live" -append "$qemu_cmdline" \
    -netdev tap,id=n0,ifname=tap1,script=no,downscript=no -device "virtio-net-device,netdev=n0,mac=$mac" \
    -qmp "unix:$work/q-dst.qmp,server=on,wait=off" -incoming tcp:127.0.0.1:4451 \
    </dev/null >"$work/qemu-dst.log" 2>&1 &
  sleep 3
  local ping; ping=$(start_ping qemu)
  sleep 3
  local t0 t1; t0=$(date +%s.%N)
  qmp "$work/q-src.qmp" \
    "{\"execute\":\"migrate-set-parameters\",\"arguments\":{\"max-bandwidth\":$((cap << 20))}}" \
    '{"execute":"migrate","arguments":{"uri":"tcp:127.0.0.1:4451"}}' >/dev/null
  local st
  for _ in $(seq 600); do
    st=$(qmp "$work/q-src.qmp" '{"execute":"query-migrate"}')
    case "$st" in *'"completed"'*|*'"failed"'*|*'"cancelled"'*) break ;; esac
    sleep 0.05
  done
  t1=$(date +%s.%N)
  sleep 3
  kill "$ping"
  windows qemu "$t0" "$t1"
  result[qemu_mig]=$(python3 -c "import json,sys;d=json.loads(sys.argv[1])['return'];print(f\"{d['status']}, {d.get('total-time',0)} ms total, {d.get('downtime',0)} ms downtime\")" "$st")
  qmp "$work/q-src.qmp" '{"execute":"quit"}' >/dev/null 2>&1 || true
  qmp "$work/q-dst.qmp" '{"execute":"quit"}' >/dev/null 2>&1 || true
  sleep 1
}

run_tern
run_qemu
echo "live Linux (256 MiB, init dirtying a few MiB/s), ping every $interval s, link cap $cap MiB/s"
printf '%-6s %-8s %7s %7s %7s  %s\n' vmm window "min ms" "avg ms" "max ms" ""
for v in tern qemu; do
  for w in before during after; do
    printf '%-6s %-8s %s\n' "$v" "$w" "${result[${v}_$w]}"
  done
  printf '%-6s %-8s %s\n' "$v" migration "${result[${v}_mig]}"
done

#!/usr/bin/env bash
# Migrates one guest many times in a row between local tern instances,
# each destination the next source, and checks every switchover.
#
# The guest (the ring-3 test guest's dirtier, halting between ticks) fills its
# working set, then ticks; with --disk, it writes checked blocks to a virtio-blk
# disk instead, 32 requests in flight, so every switchover lands on in-flight
# I/O; with --linux, the guest is Linux (the guest kernel and the busybox
# initramfs) and the dirtier a Linux process, so a real kernel's timers,
# interrupt controllers and clocks cross every switchover.
# Each hop starts a destination, waits a random 0.2-0.7 s (so switchovers land
# anywhere in the guest's tick cycle, mid-line included), migrates over a Unix
# socket and waits for the source to exit.
# At the end the last tern's guest verifies every page it wrote (with --disk:
# stops, verifies every block against the writes it saw acknowledged, and a
# fresh guest verifies the image once more from the disk alone). Checked:
#   - every migration completed and every source exited cleanly;
#   - each vCPU's ticks (with --disk, the disk writer's ticks, each with no
#     write error) run on with none lost or repeated across all hops
#     (a console line a switchover cut in two is joined, as the runner does),
#     and every tick found the guest's two clocks (the TSC, and kvmclock or
#     Linux's CLOCK_MONOTONIC) in step over its interval;
#   - with --linux, no kernel message of trouble (a stall, lockup, warning,
#     clocksource or timer complaint) once the guest has started ticking;
#   - with --check-sent, every page matched what was last sent at each
#     switchover (TERN_DEBUG_CHECK_SENT=1; it lengthens the downtime);
#   - the final memory (or disk) verification.
# Prints one line per hop and a summary; exits 1 on any failure, keeping the
# work directory (consoles, logs, statistics) and printing where it is.
#
#   tools/migrate-in-a-row.sh [--hops N] [--memory MiB] [--ws MiB] [--rate MiB/s]
#                             [--tick-ms MS] [--cpus N] [--prefault] [--check-sent]
#                             [--disk MiB | --linux]
#   (root, /dev/kvm; defaults: 50 hops, 256 MiB, ws 128, rate 0, 10 ms ticks, 1 vCPU,
#    the ring-3 test guest, no disk; Linux takes about a minute to boot on kvm_pvm)
set -euo pipefail
cd "$(dirname "$0")/.."
hops=50 mem=256 ws=128 rate=0 tick=10 cpus=1 prefault="" check_sent="" disk_mib="" linux=""
while [ $# -gt 0 ]; do
  case $1 in
    --hops) hops=$2; shift 2 ;;
    --memory) mem=$2; shift 2 ;;
    --ws) ws=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --tick-ms) tick=$2; shift 2 ;;
    --cpus) cpus=$2; shift 2 ;;
    --prefault) prefault=--prefault; shift ;;
    --check-sent) check_sent=1; shift ;;
    --disk) disk_mib=$2; shift 2 ;;
    --linux) linux=1; shift ;;
    *) echo "usage: $0 [--hops N] [--memory MiB] [--ws MiB] [--rate MiB/s] [--tick-ms MS] [--cpus N] [--prefault] [--check-sent] [--disk MiB | --linux]" >&2; exit 2 ;;
  esac
done
[ -n "$disk_mib" ] && [ -n "$linux" ] && { echo "error: --disk and --linux do not go together (the disk writer runs in the ring-3 test guest)" >&2; exit 2; }
tern=$PWD/target/release/tern
[ -x "$tern" ] || { echo "error: build tern first: cargo build --release -p tern-vmm" >&2; exit 1; }
[ -e /dev/kvm ] || { echo "error: /dev/kvm is missing" >&2; exit 1; }
eval "$(resources/build-guest.sh | grep -E '^(testguest|vmlinux|initramfs)=')"

work=$(mktemp -d /tmp/tern-in-a-row.XXXXXX)
failed=1
cleanup() {
  pkill -f -- "--api-socket $work/" 2>/dev/null || true
  if [ "$failed" = 0 ]; then rm -rf "$work"; else echo "kept: $work" >&2; fi
}
trap cleanup EXIT
export TERN_LOG=debug
[ -n "$check_sent" ] && export TERN_DEBUG_CHECK_SENT=1

# Every tern reads the guest's serial input from its own FIFO, held open here
# (read-write, so neither side blocks) for the final `verify`.
start_tern() { # INDEX ARGS...
  local i=$1; shift
  mkfifo "$work/in.$i"
  exec {fd}<>"$work/in.$i"
  eval "in_fd_$i=$fd"
  "$tern" run "$@" --api-socket "$work/api.$i" <"$work/in.$i" >"$work/out.$i" 2>"$work/err.$i" &
  eval "pid_$i=$!"
}
wait_for() { # FILE PATTERN SECONDS
  local end=$((SECONDS + $3))
  until grep -q "$2" "$1" 2>/dev/null; do
    [ $SECONDS -lt $end ] || { echo "error: '$2' did not appear in $1 within $3 s" >&2; tail -5 "$1" >&2; exit 1; }
    sleep 0.05
  done
}
# Has tern INDEX's guest reboot, which must end that tern cleanly.
reboot_tern() { # INDEX NAME
  local fd=in_fd_$1 pid=pid_$1
  echo reboot >&"${!fd}"
  wait "${!pid}" || { echo "$2 exited with an error:" >&2; tail -5 "$work/err.$1" >&2; exit 1; }
}

# The ring-3 test guest's dirtier unless --disk or --linux says otherwise.
devices=() tick_event=tick boot=(--kernel "$testguest") boot_s=120
cmdline="tern.test=dirtier tern.ws=$ws tern.rate=$rate tern.pattern=seq tern.idle=halt tern.tick_ms=$tick"
if [ -n "$disk_mib" ]; then
  # A sparse image every tern opens (the destination's disk is the source's
  # file, as on shared storage); a few MiB beyond the written blocks.
  truncate -s "$((disk_mib + 4))M" "$work/disk.img"
  devices=(--disk "$work/disk.img")
  cmdline="tern.test=disk tern.disk_mib=$disk_mib tern.qd=32 tern.passes=0 tern.idle=halt tern.tick_ms=$tick"
  tick_event=disk_tick
elif [ -n "$linux" ]; then
  cmdline="console=ttyS0 reboot=k panic=1 tern.test=dirtier tern.ws=$ws tern.rate=$rate tern.pattern=seq tern.tick_ms=$tick"
  boot=(--kernel "$vmlinux" --initrd "$initramfs")
  boot_s=300
fi
start_tern 0 "${boot[@]}" --cpus "$cpus" --memory "${mem}M" --cmdline "$cmdline" "${devices[@]}"
wait_for "$work/out.0" "\"event\":\"$tick_event\"" "$boot_s"

for i in $(seq 1 "$hops"); do
  prev=$((i - 1))
  start_tern "$i" --incoming "unix:$work/mig.$i" --cpus "$cpus" --memory "${mem}M" $prefault "${devices[@]}"
  wait_for "$work/err.$i" "waiting for an incoming migration" 60
  sleep "$(awk -v s="$RANDOM" 'BEGIN { srand(s); printf "%.3f", 0.2 + rand() * 0.5 }')"
  if ! "$tern" migrate --api-socket "$work/api.$prev" --to "unix:$work/mig.$i" --json \
      >"$work/mig.$i.json" 2>"$work/migerr.$i"; then
    echo "hop $i: the migration failed:" >&2; cat "$work/migerr.$i" >&2; exit 1
  fi
  pid=pid_$prev
  if ! wait "${!pid}"; then echo "hop $i: the source exited with an error:" >&2; tail -5 "$work/err.$prev" >&2; exit 1; fi
  fd_var=in_fd_$prev
  fd_num=${!fd_var}
  exec {fd_num}>&-   # that tern is gone: its input FIFO is not needed
  python3 - "$work/mig.$i.json" "$i" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"hop {sys.argv[2]}: {d['phase']}, {d['total_ms']:.0f} ms total, {d['downtime_ms']:.1f} ms downtime, {d['rounds']} rounds")
PY
done
last=$hops

# The final verification, on the last tern's guest.
wait_for "$work/out.$last" "\"event\":\"$tick_event\"" 30
fd=in_fd_$last
if [ -n "$disk_mib" ]; then
  # Stop writing (requests in flight complete, the disk is flushed), check
  # every block against the acknowledged writes, then end the guest.
  echo stop >&"${!fd}"
  wait_for "$work/out.$last" '"event":"disk_written".*"stopped":true' 120
  echo verify >&"${!fd}"
  wait_for "$work/out.$last" '"event":"disk_verify"' 120
  reboot_tern "$last" "the last tern"
  # The image alone, read by a fresh guest against its own header.
  reread=$((hops + 1))
  start_tern "$reread" --kernel "$testguest" --memory 256M --cmdline "tern.test=disk tern.disk_mode=verify tern.qd=32" "${devices[@]}"
  wait_for "$work/out.$reread" '"event":"disk_verify"' 120
  reboot_tern "$reread" "the verifying tern"
else
  echo verify >&"${!fd}"
  wait_for "$work/out.$last" '"event":"verify"' 120
fi

python3 - "$work" "$hops" "$check_sent" "$disk_mib" "$tick_event" <<'PY'
import json, re, statistics, sys
work, hops, check_sent, disk_mib, tick_event = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4], sys.argv[5]
tick_prefix = f'tern-guest: {{"event":"{tick_event}",'
# Kernel messages that mean a timer, clock or CPU went wrong.
kernel_line = re.compile(r'^\[\s*\d+\.\d+\] ')
trouble = re.compile(r'BUG|WARNING|Oops|Call Trace|(?i:stall|lockup|blocked for more than|watchdog|clocksource|hrtimer|timed out|unstable)')
kernel_after_boot = 0
problems, cuts, before_newline = [], 0, 0
last = {}   # cpu -> (seq, console index)
carry = ""
for i in range(hops + 1):
    text = carry + open(f"{work}/out.{i}", errors="replace").read()
    lines = text.split("\n")
    carry = lines.pop()          # "" when the output ended with a newline
    if carry and i < hops:
        cuts += 1
        before_newline += carry.rstrip("\r").endswith("}")
    for line in lines:
        line = line.rstrip("\r")    # a Linux console ends its lines with \r\n
        if line.count("tern-guest: ") > 1 or ("tern-guest: " in line and not line.startswith("tern-guest: ")):
            problems.append(f"garbled line on tern {i}: {line[:120]}")
            continue
        if kernel_line.match(line) and last:
            kernel_after_boot += 1
            if trouble.search(line):
                problems.append(f"kernel trouble on tern {i}: {line[:160]}")
        if not line.startswith(tick_prefix):
            continue
        try:
            t = json.loads(line.split("tern-guest: ", 1)[1])
        except ValueError:
            t = {}
        if "seq" not in t:
            problems.append(f"unreadable tick on tern {i}: {line[:120]}")
            continue
        # The disk writer is one, and its ticks name no vCPU.
        cpu, seq = t.get("cpu", 0), t["seq"]
        if t.get("errors", 0) != 0:
            problems.append(f"write errors on tern {i}: {line[:160]}")
        if t.get("clock", "ok") != "ok":
            problems.append(f"cpu {cpu}: tick {seq} on tern {i} found the clocks apart ({t['clock']}): {line[:200]}")
        if cpu in last and seq != last[cpu][0] + 1:
            where = f"across switchover {i}" if last[cpu][1] != i else f"on tern {i}"
            problems.append(f"cpu {cpu}: tick {seq} after tick {last[cpu][0]} {where}")
        last[cpu] = (seq, i)
    if i < hops and check_sent:
        err = open(f"{work}/err.{i}", errors="replace").read()
        if "every page matches what was sent" not in err:
            bad = [l for l in err.splitlines() if "TERN_DEBUG_CHECK_SENT" in l]
            problems.append(f"switchover {i + 1}: {bad[0] if bad else 'no page check reported'}")
def events(i, name):
    return [json.loads(l.split("tern-guest: ", 1)[1]) for l in open(f"{work}/out.{i}", errors="replace")
            if l.startswith(f'tern-guest: {{"event":"{name}"')]
if disk_mib:
    blocks = int(disk_mib) * 256
    stopped = [w for w in events(hops, "disk_written") if w.get("stopped")]
    if not stopped or stopped[-1].get("errors") != 0:
        problems.append(f"the writer did not stop cleanly: {stopped[-1] if stopped else 'no answer'}")
    verified = []
    for where, i in (("the last guest, against its acknowledged writes", hops),
                     ("a fresh guest, from the image alone", hops + 1)):
        v = events(i, "disk_verify")
        ok = bool(v) and v[-1].get("ok") is True and v[-1].get("bad") == 0 and v[-1].get("blocks") == blocks
        if not ok:
            problems.append(f"disk did not verify ({where}): {v[-1] if v else 'no answer'}")
        verified.append(ok)
    verdict = f"{blocks} blocks verified twice" if all(verified) else "NOT verified"
else:
    verify = events(hops, "verify")
    if not verify or verify[-1].get("ok") is not True:
        problems.append(f"memory did not verify: {verify[-1] if verify else 'no answer'}")
    verdict = "verified" if verify and verify[-1].get("ok") is True else "NOT verified"
stats = [json.load(open(f"{work}/mig.{i}.json")) for i in range(1, hops + 1)]
def spread(key):
    v = [s[key] for s in stats]
    return f"median {statistics.median(v):.1f}, max {max(v):.1f}"
print(f"{hops} migrations: total ms {spread('total_ms')}; downtime ms {spread('downtime_ms')}")
print(f"console lines cut by a switchover: {cuts} ({before_newline} just before the newline)")
print(f"ticks: {'the disk writer' if disk_mib else f'{len(last)} vCPU(s)'}, last tick {max(s for s, _ in last.values()) if last else '-'}")
if kernel_after_boot:
    print(f"kernel messages after the first tick: {kernel_after_boot}")
print(f"pages checked against what was sent: {'yes, every switchover' if check_sent else 'no (--check-sent)'}")
print(f"{'disk' if disk_mib else 'memory'}: {verdict}")
for p in problems:
    print(f"FAIL: {p}")
sys.exit(1 if problems else 0)
PY
failed=0

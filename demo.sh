#!/usr/bin/env bash
# tern demo: live-migrate a busy guest between two local tern instances.
#
# Builds tern and the guest artifacts if they are missing (cached in
# ~/.cache/tern), boots the ring-3 test guest with 2 vCPUs (vCPU 0 dirties
# 96 MiB/s of random pages, vCPU 1 only measures stalls), starts a destination
# tern, and migrates over a link capped at 48 MiB/s: the dirty rate is twice
# the link's, so tern throttles vCPU 0 (and only it) until the migration
# converges within the 300 ms downtime limit. Then the guest checks every page
# of its memory on the destination.
set -euo pipefail
cd "$(dirname "$0")"
say() { printf '\033[1m== %s\033[0m\n' "$*"; }

if [ "$(id -u)" = 0 ]; then tools/install-deps.sh; fi
[ -e /dev/kvm ] || { echo "error: /dev/kvm is missing: tern needs KVM" >&2; exit 1; }
say "building tern"
cargo build --release -q -p tern-vmm
tern=$PWD/target/release/tern
say "guest artifacts (built once, then cached)"
eval "$(resources/build-guest.sh | grep -E '^testguest=')"

work=$(mktemp -d /tmp/tern-demo.XXXXXX)
cleanup() {
    [ -n "${feed:-}" ] && kill "$feed" 2>/dev/null
    pkill -P $$ -x tern 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mkfifo "$work/guest.in"
sleep infinity >"$work/guest.in" & feed=$!

say "source: booting the busy guest (2 vCPUs, 512 MiB)"
"$tern" run --kernel "$testguest" --cpus 2 --memory 512M --api-socket "$work/src.sock" \
    --cmdline "tern.test=dirtier tern.ws=128 tern.rate=96 tern.pattern=random tern.busy=0" \
    <"$work/guest.in" >"$work/source.log" 2>"$work/source.err" &
for _ in $(seq 100); do grep -q '"event":"tick"' "$work/source.log" 2>/dev/null && break; sleep 0.1; done
grep -m1 '"event":"ready"' "$work/source.log" | cut -c1-160
say "destination: waiting for the guest"
mkfifo "$work/dst.in"
sleep infinity >"$work/dst.in" & feed2=$!
"$tern" run --incoming "unix:$work/migration.sock" --cpus 2 --memory 512M \
    <"$work/dst.in" >"$work/destination.log" 2>"$work/destination.err" &
for _ in $(seq 50); do [ -S "$work/migration.sock" ] && break; sleep 0.1; done

say "what would it cost? (tern migrate --estimate, 2 s of sampling)"
"$tern" migrate --api-socket "$work/src.sock" --estimate --sample 2 --max-bandwidth 48M

say "migrating: guest dirtying 96 MiB/s, link 48 MiB/s, max downtime 300 ms"
"$tern" migrate --api-socket "$work/src.sock" --to "unix:$work/migration.sock" \
    --max-bandwidth 48M --max-downtime 300

say "on the destination: the guest keeps running and checks its memory"
sleep 1
echo verify >"$work/dst.in"
for _ in $(seq 100); do grep -q '"event":"verify"' "$work/destination.log" && break; sleep 0.1; done
grep -m1 '"event":"verify"' "$work/destination.log" | cut -c1-160
python3 - "$work/destination.log" <<'PY'
import json, sys
ticks = [json.loads(l.split("tern-guest: ", 1)[1]) for l in open(sys.argv[1])
         if "tern-guest: {" in l and '"event":"tick"' in l and l.strip().endswith("}")]
if ticks:
    # The switchover falls in the first tick interval of each vCPU on the destination.
    worst = max(t["max_gap_us"] for t in ticks[:4]) / 1000
    print(f"longest pause the guest itself measured across the switchover: {worst:.1f} ms")
PY
kill "$feed2" 2>/dev/null || true
say "done (logs were in $work)"

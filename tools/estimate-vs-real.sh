#!/usr/bin/env bash
# The estimate's prediction against the real migration, for three guests.
#
# For each scenario: boot the test guest, run `tern migrate --estimate` (the
# aggression-0.5 row), then migrate for real with the same limits to a local
# destination, and print predicted vs measured total time and downtime with
# the error. Prints a table; never fails on the numbers.
#
#   tools/estimate-vs-real.sh        (needs target/release/tern and /dev/kvm)
set -euo pipefail
cd "$(dirname "$0")/.."
tern=$PWD/target/release/tern
eval "$(resources/build-guest.sh | grep -E '^testguest=')"
work=$(mktemp -d /tmp/tern-est.XXXXXX)
trap 'pkill -P $$ -x tern 2>/dev/null || true; rm -rf "$work"' EXIT

# name | cpus | memory | guest command line | link cap
scenarios=(
  "idle-1g|1|1G|tern.test=idle|200M"
  "dirty-below-link|1|1G|tern.test=dirtier tern.ws=256 tern.rate=20 tern.pattern=seq|100M"
  "dirty-2x-link-2vcpu|2|512M|tern.test=dirtier tern.ws=128 tern.rate=96 tern.pattern=random tern.busy=0|48M"
)
printf '%-20s  %9s  %9s  %7s  %11s  %11s\n' scenario "pred s" "real s" "err %" "pred dt ms" "real dt ms"
for s in "${scenarios[@]}"; do
  IFS='|' read -r name cpus mem cmdline link <<<"$s"
  rm -f "$work"/*.sock
  "$tern" run --kernel "$testguest" --cpus "$cpus" --memory "$mem" --api-socket "$work/src.sock" \
      --cmdline "$cmdline" </dev/null >"$work/$name.src.log" 2>&1 &
  for _ in $(seq 100); do grep -q '"event":"tick"' "$work/$name.src.log" 2>/dev/null && break; sleep 0.1; done
  sleep 1
  "$tern" run --incoming "unix:$work/mig.sock" --cpus "$cpus" --memory "$mem" \
      </dev/null >"$work/$name.dst.log" 2>&1 &
  for _ in $(seq 50); do [ -S "$work/mig.sock" ] && break; sleep 0.1; done
  "$tern" migrate --api-socket "$work/src.sock" --estimate --sample 2 --max-bandwidth "$link" --json >"$work/$name.est.json"
  "$tern" migrate --api-socket "$work/src.sock" --to "unix:$work/mig.sock" --max-bandwidth "$link" --json >"$work/$name.mig.json" || true
  python3 - "$name" "$work/$name.est.json" "$work/$name.mig.json" <<'PY'
import json, sys
name, est, mig = sys.argv[1], json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
row = min(est["levels"], key=lambda r: abs(r["aggression"] - 0.5)) if "levels" in est else None
if row is None:
    rows = [v for v in est.values() if isinstance(v, list) and v and isinstance(v[0], dict) and "aggression" in v[0]]
    row = min(rows[0], key=lambda r: abs(r["aggression"] - 0.5))
pt, pd = row["total_s"], row.get("downtime_ms") or float("nan")
rt, rd = mig.get("total_ms", float("nan")) / 1e3, mig.get("downtime_ms") or float("nan")
print(f"{name:<20}  {pt:9.2f}  {rt:9.2f}  {100*(pt-rt)/rt:+7.1f}  {pd:11.1f}  {rd:11.1f}   ({mig.get('phase')})")
PY
  curl -s --unix-socket "$work/src.sock" -X PUT http://x/vm/shutdown >/dev/null 2>&1 || true
  pkill -P $$ -x tern 2>/dev/null || true
  sleep 1
done

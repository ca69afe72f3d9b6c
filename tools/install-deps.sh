#!/usr/bin/env bash
# Installs the Debian packages tern's builds, tests and benchmarks need (iperf3: the send-rate
# benchmark's outside reference), if any is missing.
set -euo pipefail
pkgs=(linux-source-6.1 bc flex bison libelf-dev libssl-dev cpio busybox-static qemu-system-x86
      dnsmasq-base iproute2 iputils-ping e2fsprogs python3 curl iperf3)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "[deps] installing: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

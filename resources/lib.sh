# Shared helpers for the resources/ build scripts. Sourced, not run.
#
# Artifacts are cached outside the checkout, in $TERN_CACHE_DIR (default
# ${XDG_CACHE_HOME:-$HOME/.cache}/tern), one directory per artifact named by the
# sha256 of every input that goes into it. A fresh clone finds them there; a
# changed input gives a new key, so it is rebuilt.

set -euo pipefail

TERN_RESOURCES=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TERN_ROOT=$(cd "$TERN_RESOURCES/.." && pwd)
TERN_CACHE_DIR=${TERN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tern}
mkdir -p "$TERN_CACHE_DIR"

log() { echo "[resources] $*" >&2; }
die() { echo "[resources] error: $*" >&2; exit 1; }

# inputs_key FILE... : one sha256 over the names and contents of the given files.
inputs_key() {
    local f
    for f in "$@"; do
        [ -e "$f" ] || die "input $f is missing"
        printf '%s\n' "${f#"$TERN_ROOT"/}"
        sha256sum <"$f"
    done | sha256sum | cut -c1-16
}

# need_cmd CMD PACKAGE : fail with the Debian package to install when CMD is absent.
need_cmd() {
    command -v "$1" >/dev/null 2>&1 || die "'$1' not found: apt-get install -y $2"
}

# publish TMPDIR FINALDIR : atomically move a finished build into the cache.
publish() {
    local tmp=$1 final=$2
    rm -rf "$final"
    mv "$tmp" "$final"
}
